//! The TCTI TPM backend against swtpm provisioned by swtpm_setup with its own local CA.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aplab::device::tpm::TctiTpm;
use aplab::device::{EkCertificate, FailureClass, Tpm};

/// A provisioned swtpm listening on free ports; shut down and killed on drop.
struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    ctrl: u16,
    child: Child,
}

impl Swtpm {
    /// Provisions a TPM 2.0 state (with an EK certificate from a fresh local CA when
    /// `ek_cert`) and serves it.
    fn start(ek_cert: bool) -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\n\
                 create_certs_tool_config = {d}/swtpm-localca.conf\n\
                 create_certs_tool_options = {d}/swtpm-localca.options\n\
                 active_pcr_banks = sha256\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("swtpm-localca.conf"),
            format!(
                "statedir = {d}/localca\nsigningkey = {d}/localca/signkey.pem\n\
                 issuercert = {d}/localca/issuercert.pem\ncertserial = {d}/localca/certserial\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("swtpm-localca.options"),
            "--platform-manufacturer Lab\n--platform-version 2.1\n--platform-model virtual\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let mut setup = Command::new("swtpm_setup");
        setup
            .args(["--tpm2", "--tpmstate"])
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(dir.path().join("swtpm_setup.conf"))
            .args(["--create-spk", "--overwrite"]);
        if ek_cert {
            setup.args(["--create-ek-cert", "--create-platform-cert"]);
        }
        let out = setup
            .output()
            .expect("run swtpm_setup (install swtpm-tools: make deps)");
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // libtss2's swtpm TCTI talks to the control channel on the next port up. A free
        // port can be taken by a test running alongside before swtpm binds it: swtpm then
        // exits ("Address already in use") and is started again on other ports.
        let start_on = |port: u16, ctrl: u16| {
            Command::new("swtpm")
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .arg("--tpmstate")
                .arg(format!("dir={d}/state"))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .spawn()
                .expect("start swtpm (install swtpm: make deps)")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        'start: loop {
            assert!(
                Instant::now() < deadline,
                "swtpm exited at start for 30 s (see its messages above)"
            );
            let (port, ctrl) = free_port_pair();
            let mut child = start_on(port, ctrl);
            // Probe the control port first: the server port serves one client at a time.
            for p in [ctrl, port] {
                while TcpStream::connect(("127.0.0.1", p)).is_err() {
                    if child.try_wait().unwrap().is_some() {
                        continue 'start;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "swtpm did not listen on {p} in 30 s"
                    );
                    std::thread::yield_now();
                }
            }
            break Swtpm {
                dir,
                port,
                ctrl,
                child,
            };
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The local CA's root and issuing certificates, as a lab would configure them.
    fn ca_bundle(&self) -> PathBuf {
        let ca = self.dir.path().join("localca");
        let mut pem = std::fs::read(ca.join("swtpm-localca-rootca-cert.pem")).unwrap();
        pem.extend(std::fs::read(ca.join("issuercert.pem")).unwrap());
        let path = self.dir.path().join("ca-bundle.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A CA that copies the subject names of the real ones but has its own keys: only
    /// a signature check can tell it apart.
    fn impostor_bundle(&self) -> PathBuf {
        use openssl::asn1::Asn1Time;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::extension::BasicConstraints;
        use openssl::x509::{X509, X509Builder};

        let ca = self.dir.path().join("localca");
        let mut pem = Vec::new();
        for file in ["swtpm-localca-rootca-cert.pem", "issuercert.pem"] {
            let real = X509::from_pem(&std::fs::read(ca.join(file)).unwrap()).unwrap();
            let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let mut fake = X509Builder::new().unwrap();
            fake.set_version(2).unwrap();
            fake.set_subject_name(real.subject_name()).unwrap();
            fake.set_issuer_name(real.subject_name()).unwrap();
            fake.set_pubkey(&key).unwrap();
            fake.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            fake.set_not_after(&Asn1Time::days_from_now(365).unwrap())
                .unwrap();
            fake.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            fake.sign(&key, MessageDigest::sha256()).unwrap();
            pem.extend(fake.build().to_pem().unwrap());
        }
        let path = self.dir.path().join("impostor-bundle.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // A clean shutdown first (swtpm saves its state), then make sure it is gone.
        let _ = Command::new("swtpm_ioctl")
            .args(["--tcp", &format!("127.0.0.1:{}", self.ctrl), "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free ports.
fn free_port_pair() -> (u16, u16) {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return (port, port + 1);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn facts_report_family_manufacturer_firmware_and_vendor() {
    let swtpm = Swtpm::start(false);
    let facts = TctiTpm::new(swtpm.tcti()).facts().await.unwrap();
    assert_eq!(facts.family, "2.0");
    assert_eq!(facts.manufacturer, "IBM");
    assert!(facts.vendor.starts_with("SW"), "{facts:?}");
    let (major, minor) = facts.firmware.split_once('.').expect("major.minor");
    assert!(
        major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
        "{facts:?}"
    );
}

#[tokio::test]
async fn the_ek_certificate_chains_to_the_lab_ca() {
    let swtpm = Swtpm::start(true);
    let tpm = TctiTpm::new(swtpm.tcti());
    match tpm.ek_certificate(Some(&swtpm.ca_bundle())).await.unwrap() {
        EkCertificate::Valid { issuer } => assert!(issuer.contains("CN="), "{issuer}"),
        other => panic!("expected Valid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tpm_without_an_ek_certificate_reports_missing() {
    let swtpm = Swtpm::start(false);
    let tpm = TctiTpm::new(swtpm.tcti());
    let bundle = swtpm.dir.path().join("unused.pem");
    // Any readable bundle will do: there is nothing to check it against.
    let other = Swtpm::start(true);
    std::fs::copy(other.ca_bundle(), &bundle).unwrap();
    assert_eq!(
        tpm.ek_certificate(Some(&bundle)).await.unwrap(),
        EkCertificate::Missing
    );
    assert_eq!(
        tpm.ek_certificate(None).await.unwrap(),
        EkCertificate::Missing
    );
}

#[tokio::test]
async fn an_ek_certificate_from_another_ca_with_the_same_names_is_untrusted() {
    let swtpm = Swtpm::start(true);
    let tpm = TctiTpm::new(swtpm.tcti());
    match tpm
        .ek_certificate(Some(&swtpm.impostor_bundle()))
        .await
        .unwrap()
    {
        EkCertificate::Untrusted { issuer, reason } => {
            assert!(issuer.contains("CN="), "{issuer}");
            // OpenSSL found the issuer by name and then failed the signature.
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("expected Untrusted, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreadable_ca_bundle_is_a_config_error() {
    let swtpm = Swtpm::start(true);
    let tpm = TctiTpm::new(swtpm.tcti());
    let err = tpm
        .ek_certificate(Some(&swtpm.dir.path().join("no-such-bundle.pem")))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    let not_pem = swtpm.dir.path().join("swtpm_setup.conf");
    let err = tpm.ek_certificate(Some(&not_pem)).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config, "{}", err.message);
}

#[tokio::test]
async fn attestation_over_a_fresh_nonce_verifies() {
    let swtpm = Swtpm::start(true);
    let tpm = TctiTpm::new(swtpm.tcti());
    tpm.attest().await.unwrap();
    // Keys are flushed after each attestation: the TPM's few object slots do not fill up.
    for _ in 0..4 {
        tpm.attest().await.unwrap();
    }
}

#[tokio::test]
async fn a_tpm_that_does_not_answer_is_an_infrastructure_failure() {
    let port = free_port(); // nothing listens there
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = TctiTpm::new(tcti.clone()).facts().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure, "{}", err.message);
    assert!(err.hint.unwrap_or_default().contains(&tcti));
}

/// Three operations at once on one device, from two handles, all succeed: each waits
/// for the device's lock (swtpm would also queue a second client by itself; the lock is
/// what keeps an exclusive `/dev/tpm0` from failing the second opener, and makes the
/// operation timeout count the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_device_are_serialised() {
    let swtpm = Swtpm::start(true);
    // Two handles on the same TCTI, as two steps of one device could hold.
    let a: Arc<dyn Tpm> = Arc::new(TctiTpm::new(swtpm.tcti()));
    let b: Arc<dyn Tpm> = Arc::new(TctiTpm::new(swtpm.tcti()));
    let bundle = swtpm.ca_bundle();
    let attest = tokio::spawn({
        let a = a.clone();
        async move { a.attest().await }
    });
    let facts = tokio::spawn({
        let b = b.clone();
        async move { b.facts().await }
    });
    let ek = tokio::spawn(async move { a.ek_certificate(Some(&bundle)).await });
    attest.await.unwrap().unwrap();
    assert_eq!(facts.await.unwrap().unwrap().manufacturer, "IBM");
    assert!(matches!(
        ek.await.unwrap().unwrap(),
        EkCertificate::Valid { .. }
    ));
}

/// The verifier itself: a genuine quote passes; the same quote presented for another
/// nonce, or with another quote's signature, is refused.
#[tokio::test]
async fn a_quote_with_the_wrong_nonce_or_signature_is_refused() {
    use std::str::FromStr;
    use tss_esapi::abstraction::{ak, ek};
    use tss_esapi::interface_types::algorithm::{
        AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
    };
    use tss_esapi::structures::{Data, PcrSelectionListBuilder, PcrSlot, SignatureScheme};

    use aplab::device::tpm::tss::verify_quote;

    let swtpm = Swtpm::start(false);
    let tcti = swtpm.tcti();
    let (public, first, second) = tokio::task::spawn_blocking(move || {
        let mut context =
            tss_esapi::Context::new(tss_esapi::TctiNameConf::from_str(&tcti).unwrap()).unwrap();
        let ek = ek::create_ek_object(&mut context, AsymmetricAlgorithm::Rsa, None).unwrap();
        let created = ak::create_ak(
            &mut context,
            ek,
            HashingAlgorithm::Sha256,
            SignatureSchemeAlgorithm::RsaSsa,
            None,
            None,
        )
        .unwrap();
        let public = created.out_public.clone();
        let handle = ak::load_ak(
            &mut context,
            ek,
            None,
            created.out_private,
            created.out_public,
        )
        .unwrap();
        let mut quote = |nonce: &[u8]| {
            let pcrs = PcrSelectionListBuilder::new()
                .with_selection(HashingAlgorithm::Sha256, &[PcrSlot::Slot0])
                .build()
                .unwrap();
            let data = Data::try_from(nonce.to_vec()).unwrap();
            context
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(handle, data, SignatureScheme::Null, pcrs)
                })
                .unwrap()
        };
        let first = quote(b"nonce-one-0123456789abcdef");
        let second = quote(b"nonce-two-0123456789abcdef");
        context.flush_context(handle.into()).unwrap();
        context.flush_context(ek.into()).unwrap();
        (public, first, second)
    })
    .await
    .unwrap();

    verify_quote(&public, &first.0, &first.1, b"nonce-one-0123456789abcdef").unwrap();
    let err = verify_quote(&public, &first.0, &first.1, b"nonce-two-0123456789abcdef").unwrap_err();
    assert_eq!(err.class, FailureClass::Product);
    assert!(err.message.contains("nonce"), "{}", err.message);
    let err =
        verify_quote(&public, &first.0, &second.1, b"nonce-one-0123456789abcdef").unwrap_err();
    assert_eq!(err.class, FailureClass::Product);
    assert!(err.message.contains("signature"), "{}", err.message);
}

/// swtpm serves one client at a time: while another client holds it, an operation
/// fails as a timeout that says so, and the backend works again once it is released.
#[tokio::test]
async fn a_tpm_held_by_another_client_times_out_then_recovers() {
    let swtpm = Swtpm::start(false);
    let other_client = TcpStream::connect(("127.0.0.1", swtpm.port)).unwrap();
    let tpm = TctiTpm::new(swtpm.tcti()).with_timeout(Duration::from_secs(2));
    let err = tpm.facts().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout, "{}", err.message);
    assert!(
        err.hint
            .unwrap_or_default()
            .contains("one client at a time")
    );

    drop(other_client);
    let tpm = TctiTpm::new(swtpm.tcti()).with_timeout(Duration::from_secs(60));
    assert_eq!(tpm.facts().await.unwrap().manufacturer, "IBM");
}
