//! The simulated device's TPM: a real swtpm provisioned from the lab CA, read with
//! tpm2-tools over the TCTI string and checked with openssl, as a lab checks a real TPM.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aplab::sim::swtpm::{self, EkCertificate, Swtpm, SwtpmDevice, TpmCas};

/// A port P with P+1 free too (swtpm's command and control ports).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX - 1 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

fn tpm2(tool: &str, tpm: &Swtpm, args: &[&str], dir: &Path) -> Output {
    Command::new(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (install tpm2-tools): {e}"))
}

/// Reads the RSA EK certificate from NV and converts it to PEM; `None` if there is none.
fn ek_certificate(tpm: &Swtpm, dir: &Path) -> Option<std::path::PathBuf> {
    let der = dir.join("ek.der");
    let out = tpm2(
        "tpm2_nvread",
        tpm,
        &["0x01c00002", "-o", der.to_str().unwrap()],
        dir,
    );
    if !out.status.success() {
        return None;
    }
    let pem = dir.join("ek.pem");
    let status = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .status()
        .expect("run openssl");
    assert!(
        status.success(),
        "the EK certificate in NV is not DER X.509"
    );
    Some(pem)
}

fn verifies(ca_bundle: &Path, cert: &Path) -> bool {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca_bundle)
        .arg(cert)
        .output()
        .expect("run openssl")
        .status
        .success()
}

/// A running swtpm (a zombie left by `mem::forget` has an empty command line).
fn serves_tpm(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_tpms_hold_ek_certificates_from_the_lab_ca() {
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab-state");
    let cas = TpmCas::new(&lab.join("tpm-ca"));
    let variants = [
        EkCertificate::LabCa,
        EkCertificate::LabCa,
        EkCertificate::LabCa,
        EkCertificate::LabCa,
        EkCertificate::Missing,
        EkCertificate::Untrusted,
    ];
    let devices: Vec<SwtpmDevice> = variants
        .iter()
        .enumerate()
        .map(|(i, ek)| {
            let tcti = format!("swtpm:host=127.0.0.1,port={}", free_port_pair());
            SwtpmDevice::new(&lab, &format!("pc0{}", i + 1), &tcti, *ek).unwrap()
        })
        .collect();

    let started = Instant::now();
    swtpm::provision_all(&devices, &cas).await.unwrap();
    let took = started.elapsed();
    eprintln!("provisioned 6 swtpm devices in {took:?}");
    assert!(
        took < Duration::from_secs(120),
        "provisioning took {took:?}"
    );
    assert!(devices.iter().all(SwtpmDevice::is_provisioned));
    // State is reused: a second provisioning does nothing.
    assert!(!swtpm::provision(&devices[0], &cas).await.unwrap());

    let start = |d: &SwtpmDevice| {
        let d = d.clone();
        async move {
            tokio::task::spawn_blocking(move || Swtpm::start(&d))
                .await
                .unwrap()
        }
    };
    let trusted = start(&devices[0]).await.unwrap();
    let missing = start(&devices[4]).await.unwrap();
    let untrusted = start(&devices[5]).await.unwrap();

    let out = tpm2("tpm2_getcap", &trusted, &["properties-fixed"], dir.path());
    let caps = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(caps.contains("TPM2_PT_FAMILY_INDICATOR"), "{caps}");
    assert!(caps.contains("value: \"2.0\""));
    assert!(caps.contains("value: \"IBM\""), "swtpm reports IBM: {caps}");

    let work = dir.path().join("trusted");
    std::fs::create_dir_all(&work).unwrap();
    let cert = ek_certificate(&trusted, &work).expect("an EK certificate in NV 0x01c00002");
    assert!(verifies(&cas.trusted.bundle(), &cert));
    let first_cert = std::fs::read(&cert).unwrap();

    let work = dir.path().join("untrusted");
    std::fs::create_dir_all(&work).unwrap();
    let cert = ek_certificate(&untrusted, &work).expect("an EK certificate in NV");
    assert!(
        !verifies(&cas.trusted.bundle(), &cert),
        "a foreign CA's EK must not verify"
    );
    assert!(verifies(&cas.untrusted.bundle(), &cert));

    let work = dir.path().join("missing");
    std::fs::create_dir_all(&work).unwrap();
    assert!(ek_certificate(&missing, &work).is_none());

    // Clean shutdown saves state; a restart serves the same EK certificate.
    let pid = trusted.pid().unwrap();
    tokio::task::spawn_blocking(move || trusted.shutdown())
        .await
        .unwrap();
    assert!(!process_alive(pid), "swtpm {pid} still runs after shutdown");
    let again = start(&devices[0]).await.unwrap();
    let work = dir.path().join("again");
    std::fs::create_dir_all(&work).unwrap();
    let cert = ek_certificate(&again, &work).unwrap();
    assert_eq!(std::fs::read(cert).unwrap(), first_cert);

    // A lab that crashed left its swtpm running: the next start stops it and takes over.
    let stale = again.pid().unwrap();
    std::mem::forget(again);
    let again = start(&devices[0]).await.unwrap();
    assert!(!serves_tpm(stale), "the stale swtpm {stale} still runs");
    let work = dir.path().join("after-crash");
    std::fs::create_dir_all(&work).unwrap();
    assert_eq!(
        std::fs::read(ek_certificate(&again, &work).unwrap()).unwrap(),
        first_cert
    );

    // Dropping kills the process.
    let pids: Vec<u32> = [&again, &missing, &untrusted]
        .iter()
        .filter_map(|t| t.pid())
        .collect();
    drop((again, missing, untrusted));
    for pid in pids {
        assert!(!process_alive(pid), "swtpm {pid} still runs after drop");
    }
}

#[test]
fn a_bad_tcti_string_is_refused_with_the_expected_form() {
    let err = SwtpmDevice::new(
        Path::new("/tmp"),
        "pc01",
        "swtpm:host=10.1.1.1,port=2321",
        EkCertificate::LabCa,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TCTI string \"swtpm:host=10.1.1.1,port=2321\" is not `swtpm:host=127.0.0.1,port=P` with a port below 65535"
    );
}
