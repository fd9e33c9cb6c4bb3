//! The TPM of a simulated device: a real swtpm (TPM 2.0) per device, provisioned once
//! with `swtpm_setup` (EK, EK certificate from the lab CA, platform certificate, SRK) and
//! served with `swtpm socket` on 127.0.0.1 at the port in the device's TCTI string
//! (`swtpm:host=127.0.0.1,port=P`, control channel on P+1).
//!
//! The lab CA is swtpm's own `swtpm_localca`, created on first use in the lab's tpm-ca
//! dir; `ca-bundle.pem` there (root + issuing certificate) is what `openssl verify
//! -CAfile` needs. Test and fault variants: a TPM with no EK certificate, and one whose EK
//! certificate comes from a different CA the lab does not trust.
//!
//! Limitation: swtpm reports itself as manufacturer "IBM", firmware of swtpm's own
//! version, whatever the inventory says the device's TPM is. What the TCTI reports is
//! swtpm's facts; what `Get-Tpm` reports over SSH is the inventory's expected facts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::inventory::{self, Inventory};

/// Which EK certificate the device's TPM holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EkCertificate {
    /// Signed by the lab CA (the normal case).
    #[default]
    LabCa,
    /// No EK certificate in NV (a firmware TPM that would fetch it online).
    Missing,
    /// Signed by a CA the lab does not trust.
    Untrusted,
}

impl EkCertificate {
    fn name(self) -> &'static str {
        match self {
            EkCertificate::LabCa => "lab-ca",
            EkCertificate::Missing => "no-ek-cert",
            EkCertificate::Untrusted => "untrusted-ca",
        }
    }
}

/// What went wrong provisioning or running a device's swtpm.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error("cannot {action} {path}: {source} (check that the lab state dir is writable)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source} (install swtpm and swtpm-tools: `make test` does it)")]
    Missing {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("swtpm_setup failed for {device} (exit {status}): {output}")]
    Setup {
        device: String,
        status: String,
        output: String,
    },
    #[error("TCTI string {0:?} is not `swtpm:host=127.0.0.1,port=P` with a port below 65535")]
    BadTcti(String),
    #[error("swtpm for {device} did not listen on 127.0.0.1:{port} within {seconds} s (see {log})")]
    NotListening {
        device: String,
        port: u16,
        seconds: u64,
        log: PathBuf,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SwtpmError {
    let path = path.to_path_buf();
    move |source| SwtpmError::Io {
        action,
        path,
        source,
    }
}

/// Reads the port out of `swtpm:host=127.0.0.1,port=P` (the control channel is P+1).
pub fn tcti_port(tcti: &str) -> Result<u16, SwtpmError> {
    let bad = || SwtpmError::BadTcti(tcti.to_string());
    let config = tcti.strip_prefix("swtpm:").ok_or_else(bad)?;
    let mut port = None;
    for pair in config.split(',') {
        match pair.split_once('=') {
            Some(("host", host)) if host == "127.0.0.1" || host == "localhost" => {}
            Some(("port", p)) => port = Some(p.parse::<u16>().map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    port.filter(|p| *p < u16::MAX && *p > 0).ok_or_else(bad)
}

/// A certificate authority made by `swtpm_localca`, in its own directory.
#[derive(Debug, Clone)]
pub struct LabCa {
    dir: PathBuf,
}

impl LabCa {
    /// The CA in `dir`; nothing is created until a device is provisioned.
    pub fn new(dir: impl Into<PathBuf>) -> LabCa {
        LabCa { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate that signs EK certificates (an intermediate under the root).
    pub fn issuer_certificate(&self) -> PathBuf {
        self.dir.join("issuercert.pem")
    }

    /// Root and issuing certificate in one file: what `openssl verify -CAfile` needs.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca-bundle.pem")
    }

    /// Writes the swtpm_setup and swtpm_localca configuration into the CA dir.
    fn write_config(&self) -> Result<PathBuf, SwtpmError> {
        std::fs::create_dir_all(&self.dir).map_err(io_error("create directory", &self.dir))?;
        let dir = self.dir.display();
        let files = [
            (
                "swtpm-localca.conf",
                format!(
                    "statedir = {dir}\nsigningkey = {dir}/signkey.pem\nissuercert = {dir}/issuercert.pem\ncertserial = {dir}/certserial\n"
                ),
            ),
            (
                "swtpm-localca.options",
                "--platform-manufacturer Lab\n--platform-version 2.1\n--platform-model virtual\n"
                    .to_string(),
            ),
            (
                "swtpm_setup.conf",
                format!(
                    "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {dir}/swtpm-localca.conf\ncreate_certs_tool_options = {dir}/swtpm-localca.options\nactive_pcr_banks = sha256\n"
                ),
            ),
        ];
        for (name, text) in files {
            let path = self.dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text).map_err(io_error("write", &path))?;
            }
        }
        Ok(self.dir.join("swtpm_setup.conf"))
    }

    /// Writes `ca-bundle.pem` once the CA exists.
    fn write_bundle(&self) -> Result<(), SwtpmError> {
        let root = self.dir.join("swtpm-localca-rootca-cert.pem");
        let issuer = self.issuer_certificate();
        let mut bundle = std::fs::read_to_string(&root).map_err(io_error("read", &root))?;
        bundle.push_str(&std::fs::read_to_string(&issuer).map_err(io_error("read", &issuer))?);
        let path = self.bundle();
        if std::fs::read_to_string(&path).ok() != Some(bundle.clone()) {
            std::fs::write(&path, bundle).map_err(io_error("write", &path))?;
        }
        Ok(())
    }
}

/// One device's TPM: where its state lives, its port, which EK certificate it holds.
#[derive(Debug, Clone)]
pub struct SwtpmDevice {
    pub id: String,
    /// The device's swtpm state directory.
    pub state_dir: PathBuf,
    /// The TPM command port (the control channel is `port + 1`).
    pub port: u16,
    pub ek: EkCertificate,
}

impl SwtpmDevice {
    /// The device's TPM from its TCTI string, with state under the lab state dir.
    pub fn new(
        lab_state: &Path,
        id: &str,
        tcti: &str,
        ek: EkCertificate,
    ) -> Result<SwtpmDevice, SwtpmError> {
        Ok(SwtpmDevice {
            id: id.to_string(),
            state_dir: lab_state.join("devices").join(id).join("tpm"),
            port: tcti_port(tcti)?,
            ek,
        })
    }

    /// The TPM of an inventory device reached through a swtpm TCTI string; `None` when
    /// the device has no such TPM or the lab is not virtual.
    pub fn from_inventory(
        inventory: &Inventory,
        device: &inventory::Device,
        ek: EkCertificate,
    ) -> Option<Result<SwtpmDevice, SwtpmError>> {
        let lab = inventory.lab.virtual_lab.as_ref()?;
        let Some(inventory::TpmConn::Tcti(tcti)) = &device.tpm_access else {
            return None;
        };
        let state = crate::sim::ssh::inventory_path(inventory, &lab.state_dir);
        Some(SwtpmDevice::new(&state, &device.id, tcti, ek))
    }

    fn marker(&self) -> PathBuf {
        self.state_dir.join("provisioned")
    }

    /// Whether the state was already made for this EK variant (then it is reused).
    pub fn is_provisioned(&self) -> bool {
        std::fs::read_to_string(self.marker()).ok().as_deref() == Some(self.ek.name())
            && self.state_dir.join("tpm2-00.permall").exists()
    }
}

/// The CAs a lab provisions TPMs from.
#[derive(Debug, Clone)]
pub struct TpmCas {
    /// The lab CA (the inventory's tpm_ca dir).
    pub trusted: LabCa,
    /// The CA for the "untrusted EK" variant.
    pub untrusted: LabCa,
}

impl TpmCas {
    /// The lab's CAs: the inventory's `tpm_ca` dir, or `<state_dir>/tpm-ca`.
    pub fn from_inventory(inventory: &Inventory) -> Option<TpmCas> {
        let lab = inventory.lab.virtual_lab.as_ref()?;
        let dir = lab
            .tpm_ca_dir
            .clone()
            .unwrap_or_else(|| lab.state_dir.join("tpm-ca"));
        Some(TpmCas::new(&crate::sim::ssh::inventory_path(
            inventory, &dir,
        )))
    }

    /// The lab CA in `dir`; the untrusted one beside it in `<dir>-untrusted`.
    pub fn new(dir: &Path) -> TpmCas {
        let mut other = dir.as_os_str().to_owned();
        other.push("-untrusted");
        TpmCas {
            trusted: LabCa::new(dir),
            untrusted: LabCa::new(PathBuf::from(other)),
        }
    }
}

/// Provisions the device's TPM state with `swtpm_setup`, unless it was done before for
/// the same EK variant. Returns whether it ran.
pub async fn provision(device: &SwtpmDevice, cas: &TpmCas) -> Result<bool, SwtpmError> {
    if device.is_provisioned() {
        return Ok(false);
    }
    let ca = match device.ek {
        EkCertificate::Untrusted => &cas.untrusted,
        _ => &cas.trusted,
    };
    let config = ca.write_config()?;
    std::fs::create_dir_all(&device.state_dir)
        .map_err(io_error("create directory", &device.state_dir))?;
    let mut command = tokio::process::Command::new("swtpm_setup");
    command
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(&device.state_dir)
        .arg("--config")
        .arg(&config)
        .args(["--create-platform-cert", "--create-spk", "--overwrite"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if device.ek != EkCertificate::Missing {
        command.arg("--create-ek-cert");
    }
    let output = command
        .output()
        .await
        .map_err(|source| SwtpmError::Missing {
            program: "swtpm_setup",
            source,
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        return Err(SwtpmError::Setup {
            device: device.id.clone(),
            status: output.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    if device.ek != EkCertificate::Missing {
        ca.write_bundle()?;
    }
    let marker = device.marker();
    std::fs::write(&marker, device.ek.name()).map_err(io_error("write", &marker))?;
    Ok(true)
}

/// Provisions several devices at once (swtpm_localca serialises CA access itself).
pub async fn provision_all(devices: &[SwtpmDevice], cas: &TpmCas) -> Result<(), SwtpmError> {
    // The first CA use creates the CA; do one device per CA first so the rest only sign.
    let mut rest: Vec<&SwtpmDevice> = Vec::new();
    let mut first_per_ca = Vec::new();
    for device in devices {
        let untrusted = device.ek == EkCertificate::Untrusted;
        if device.ek != EkCertificate::Missing && !first_per_ca.contains(&untrusted) {
            first_per_ca.push(untrusted);
            provision(device, cas).await?;
        } else {
            rest.push(device);
        }
    }
    let results = futures::future::join_all(rest.iter().map(|d| provision(d, cas))).await;
    results.into_iter().try_for_each(|r| r.map(|_| ()))
}

/// A running `swtpm socket`. Shut down with [`Swtpm::shutdown`]; dropping it kills it.
#[derive(Debug)]
pub struct Swtpm {
    device: String,
    port: u16,
    child: Option<Child>,
    pid_file: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on the device's state and waits until its control port answers.
    ///
    /// An swtpm still serving this device's state from an earlier lab run that did not
    /// shut down (its pid is in `swtpm.pid`) is stopped first: it would hold the ports.
    pub fn start(device: &SwtpmDevice) -> Result<Swtpm, SwtpmError> {
        stop_stale(device);
        let log = device.state_dir.join("swtpm.log");
        let stderr = std::fs::File::create(&log).map_err(io_error("create", &log))?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", device.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                device.port + 1
            ))
            .arg("--tpmstate")
            .arg(format!("dir={}", device.state_dir.display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| SwtpmError::Missing {
                program: "swtpm",
                source,
            })?;
        let pid_file = device.state_dir.join("swtpm.pid");
        let _ = std::fs::write(&pid_file, child.id().to_string());
        let mut swtpm = Swtpm {
            device: device.id.clone(),
            port: device.port,
            child: Some(child),
            pid_file,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Exit first: a port answering for another process does not count.
            let exited = swtpm
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if !exited && std::net::TcpStream::connect(("127.0.0.1", device.port + 1)).is_ok() {
                return Ok(swtpm);
            }
            if exited || Instant::now() > deadline {
                swtpm.kill();
                return Err(SwtpmError::NotListening {
                    device: device.id.clone(),
                    port: device.port,
                    seconds: 30,
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI string a TSS uses to reach this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks swtpm to save its state and exit (`swtpm_ioctl -s`); kills it if it has not
    /// exited within 10 s.
    pub fn shutdown(mut self) {
        let asked = Command::new("swtpm_ioctl")
            .arg("--tcp")
            .arg(format!("127.0.0.1:{}", self.port + 1))
            .arg("-s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if let Some(child) = self.child.as_mut()
            && asked
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    let _ = std::fs::remove_file(&self.pid_file);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(device = %self.device, "swtpm did not exit after swtpm_ioctl -s; killing it");
        }
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// Whether `pid` is a live swtpm serving `state_dir` (checked through its command line,
/// so a reused pid is never mistaken for it).
fn serves_state(pid: i32, state_dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("swtpm") && cmdline.contains(&*state_dir.to_string_lossy())
    })
}

/// Stops an swtpm left running on this device's state by an earlier lab run.
fn stop_stale(device: &SwtpmDevice) {
    let pid_file = device.state_dir.join("swtpm.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    if serves_state(pid, &device.state_dir) {
        tracing::warn!(device = %device.id, pid, "stopping an swtpm left running by an earlier lab run");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while serves_state(pid, &device.state_dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(&pid_file);
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_port_reads_the_inventory_form() {
        assert_eq!(tcti_port("swtpm:host=127.0.0.1,port=17501").unwrap(), 17501);
        for bad in [
            "mssim:host=127.0.0.1,port=1",
            "swtpm:host=10.0.0.1,port=1",
            "swtpm:port=65535",
            "swtpm:port=x",
            "swtpm:host=127.0.0.1",
            "",
        ] {
            assert!(tcti_port(bad).is_err(), "{bad}");
        }
    }
}
