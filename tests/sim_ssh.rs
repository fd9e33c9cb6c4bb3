//! The simulated device's SSH endpoint, driven by OpenSSH's own `ssh`, `sftp` and `scp`
//! clients with strict host-key checking against the known_hosts file the lab writes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aplab::sim::snapshot::{JoinKind, ShellTarget, TpmSnapshot, WinEvent, WindowsSnapshot};
use aplab::sim::ssh::{self, ShellDevice, SshEndpoint};

/// The device side of the test: a snapshot the test changes (what simdev's device does
/// for real).
/// The device side as the SSH server sees it; `.1` counts factory resets asked of it;
/// with `.2` set, a factory reset takes the device down at once (as a real reset does a
/// moment later).
struct FakeDevice(
    Mutex<WindowsSnapshot>,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicBool,
);

impl ShellTarget for FakeDevice {
    fn snapshot(&self) -> WindowsSnapshot {
        self.0.lock().unwrap().clone()
    }
    fn factory_reset(&self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.2.load(std::sync::atomic::Ordering::SeqCst) {
            self.0.lock().unwrap().powered = false;
        }
    }
}

impl FakeDevice {
    fn change(&self, f: impl FnOnce(&mut WindowsSnapshot)) {
        f(&mut self.0.lock().unwrap());
    }
}

fn booted_device() -> WindowsSnapshot {
    WindowsSnapshot {
        device_id: "pc01".into(),
        serial: "5CG1234AB1".into(),
        powered: true,
        booted: true,
        edition: "enterprise".into(),
        version: 11,
        build: "22631".into(),
        esp_phase: "oobe".into(),
        now: Duration::from_secs(1_795_000_000),
        tpm: TpmSnapshot {
            present: true,
            ready: true,
            enabled: true,
            activated: true,
            owned: true,
            manufacturer_id_txt: "NTC".into(),
            manufacturer_version: "7.2.3.1".into(),
            family: "2.0".into(),
            locked_out: false,
        },
        ..Default::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Lab {
    _dir: tempfile::TempDir,
    state: PathBuf,
    key_file: PathBuf,
    known_hosts: PathBuf,
    port: u16,
    device: Arc<FakeDevice>,
    endpoint: Option<SshEndpoint>,
    shell: ShellDevice,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab-state");
        let port = free_port();
        let shell = ShellDevice {
            id: "pc01".into(),
            port,
            user: "labadmin".into(),
            refuse_during_reboot: true,
        };
        let mut lab = Lab {
            key_file: state.join("keys").join("aplab_ed25519"),
            known_hosts: state.join("known_hosts"),
            state,
            _dir: dir,
            port,
            device: Arc::new(FakeDevice(
                Mutex::new(booted_device()),
                Default::default(),
                Default::default(),
            )),
            endpoint: None,
            shell,
        };
        lab.start();
        lab
    }

    /// (Re)starts the endpoint the way `lab up` does: wiring first, then the listener.
    fn start(&mut self) {
        let client = ssh::write_client_wiring(
            &self.state,
            &self.key_file,
            &self.known_hosts,
            std::slice::from_ref(&self.shell),
        )
        .unwrap();
        let host_key = ssh::host_key(&self.state, "pc01").unwrap();
        self.endpoint = Some(SshEndpoint::start(
            self.shell.clone(),
            self.device.clone(),
            host_key,
            client,
            ssh::files_dir(&self.state, "pc01"),
        ));
    }

    fn ssh_options(&self, key: &Path) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &key.display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "ConnectTimeout=20",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn ssh_with(&self, key: &Path, command: &str) -> Output {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(self.ssh_options(key))
            .args(["-p", &self.port.to_string(), "labadmin@127.0.0.1", command])
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("ssh did not finish within 60 s")
            .expect("run ssh (install openssh-client)")
    }

    async fn ssh(&self, command: &str) -> Output {
        self.ssh_with(&self.key_file, command).await
    }

    /// Runs `command` until `done` accepts the result (the listener follows the device's
    /// state within a poll interval), with a 30 s deadline.
    async fn ssh_until(&self, command: &str, done: impl Fn(&Output) -> bool) -> Output {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ssh(command).await;
            if done(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within 30 s; last result: {:?} {} {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::task::yield_now().await;
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

fn refused(out: &Output) -> bool {
    !out.status.success() && text(&out.stderr).contains("Connection refused")
}

const DSREG: &str = "& 'dsregcmd' '/status'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsregcmd_over_ssh_follows_the_join_state() {
    let lab = Lab::new();
    let out = lab.ssh_until(DSREG, |o| o.status.success()).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("             AzureAdJoined : NO\n"),
        "{stdout}"
    );
    assert!(stdout.contains("              DomainJoined : NO\n"));

    lab.device.change(|s| {
        s.join = Some(JoinKind::Entra);
        s.azure_ad_joined = true;
        s.tenant_id = Some("6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11".into());
    });
    let stdout = text(&lab.ssh(DSREG).await.stdout);
    assert!(
        stdout.contains("             AzureAdJoined : YES\n"),
        "{stdout}"
    );
    assert!(stdout.contains("              DomainJoined : NO\n"));
    assert!(stdout.contains("                  TenantId : 6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11\n"));

    lab.device.change(|s| {
        s.join = Some(JoinKind::Hybrid);
        s.domain_joined = true;
    });
    let stdout = text(&lab.ssh(DSREG).await.stdout);
    assert!(
        stdout.contains("             AzureAdJoined : YES\n"),
        "{stdout}"
    );
    assert!(stdout.contains("              DomainJoined : YES\n"));

    // A factory reset answers first (exit 0 reaches the client), then the device acts.
    let out = lab.ssh("& 'systemreset' '-factoryreset'").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Resetting this PC"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lab.device.1.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the device never got the reset"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(lab.device.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        lab.ssh("systemreset").await.status.code(),
        Some(1),
        "only -factoryreset is supported"
    );

    // Exit status and stderr come through as the device produced them.
    let out = lab.ssh("Get-Frobnicator -All").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("'Get-Frobnicator' is not recognized"));
}

/// The reset takes the device down at once, and the client still gets the command's
/// answer: the session sends what it had queued before the connection ends (as a real
/// machine's TCP stack does). A lost answer made the harness reset Windows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_takes_the_device_down_still_answers() {
    let lab = Lab::new();
    lab.device
        .2
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let out = lab.ssh("systemreset -factoryreset").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Resetting this PC"));
    assert_eq!(lab.device.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    // And the device is really down now: the next connection is refused.
    lab.ssh_until("hostname", refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_is_refused_while_the_device_is_down_and_the_host_key_survives_restarts() {
    let mut lab = Lab::new();
    lab.ssh_until("hostname", |o| o.status.success()).await;

    lab.device.change(|s| s.powered = false);
    lab.ssh_until("hostname", refused).await;

    lab.device.change(|s| {
        s.powered = true;
        s.booted = true;
    });
    let out = lab.ssh_until("hostname", |o| o.status.success()).await;
    assert_eq!(text(&out.stdout), "DESKTOP-5CG1234\n");

    // With the SshRefusedDuringReboot fault, a reboot refuses connections too.
    lab.device.change(|s| s.rebooting = true);
    lab.ssh_until("hostname", refused).await;
    lab.device.change(|s| s.rebooting = false);
    lab.ssh_until("hostname", |o| o.status.success()).await;

    // A lab restart keeps the host key: strict checking still passes.
    lab.endpoint.take().unwrap().shutdown().await;
    lab.ssh_until("hostname", refused).await;
    lab.start();
    lab.ssh_until("hostname", |o| o.status.success()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_device_does_not_know_is_refused() {
    let lab = Lab::new();
    lab.ssh_until("hostname", |o| o.status.success()).await;
    let stranger = lab.state.join("stranger_ed25519");
    ssh::load_or_create_key(&stranger, "stranger").unwrap();
    let out = lab.ssh_with(&stranger, "hostname").await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diagnostics_zip_can_be_fetched_by_sftp_and_scp() {
    let lab = Lab::new();
    lab.device.change(|s| {
        s.last_error = Some("0x800705B4".into());
        s.events.push(WinEvent {
            id: 171,
            channel: "Microsoft-Windows-ModernDeployment-Diagnostics-Provider/Autopilot".into(),
            message: "AutopilotManager failed during device enrollment phase DeviceEnrollment"
                .into(),
            at: Duration::from_secs(1_795_000_100),
        });
    });
    let out = lab
        .ssh_until(
            r#"& 'mdmdiagnosticstool.exe' '-area' 'DeviceEnrollment;DeviceProvisioning;Autopilot;TPM' '-zip' 'C:\Users\labadmin\Desktop\diag.zip'"#,
            |o| o.status.success(),
        )
        .await;
    assert!(text(&out.stdout).contains(r"C:\Users\labadmin\Desktop\diag.zip"));

    let local = lab.state.join("fetched-sftp.zip");
    let batch = lab.state.join("sftp-batch");
    std::fs::write(
        &batch,
        format!(
            "get /C:/Users/labadmin/Desktop/diag.zip {}\n",
            local.display()
        ),
    )
    .unwrap();
    let mut sftp = tokio::process::Command::new("sftp");
    sftp.args(lab.ssh_options(&lab.key_file))
        .args(["-P", &lab.port.to_string(), "-b"])
        .arg(&batch)
        .arg("labadmin@127.0.0.1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), sftp.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));

    let listing = std::process::Command::new("unzip")
        .arg("-l")
        .arg(&local)
        .output()
        .expect("run unzip");
    let listing = text(&listing.stdout);
    for name in [
        "MDMDiagReport.xml",
        "MDMDiagHtmlReport.html",
        "MdmDiagReport_RegistryDump.reg",
        "Microsoft-Windows-ModernDeployment-Diagnostics-Provider-Autopilot.evtx",
    ] {
        assert!(listing.contains(name), "{name} missing from\n{listing}");
    }
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&local).unwrap()).unwrap();
    let mut report = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("MDMDiagReport.xml").unwrap(),
        &mut report,
    )
    .unwrap();
    assert!(report.contains("<Error>0x800705B4</Error>"));
    assert!(report.contains("AutopilotManager failed"));

    // scp over the SFTP protocol, with the Windows path as given to the tool.
    let scp_local = lab.state.join("fetched-scp.zip");
    let mut scp = tokio::process::Command::new("scp");
    scp.arg("-s")
        .args(lab.ssh_options(&lab.key_file))
        .args(["-P", &lab.port.to_string()])
        .arg("labadmin@127.0.0.1:C:/Users/labadmin/Desktop/diag.zip")
        .arg(&scp_local)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), scp.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "scp: {} {}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(&scp_local).unwrap(),
        std::fs::read(&local).unwrap()
    );

    // The legacy scp protocol (`scp -O`, libssh2's scp_recv) gets the same file.
    let legacy_local = lab.state.join("fetched-legacy.zip");
    let mut scp = tokio::process::Command::new("scp");
    scp.arg("-O")
        .args(lab.ssh_options(&lab.key_file))
        .args(["-P", &lab.port.to_string()])
        .arg("labadmin@127.0.0.1:C:/Users/labadmin/Desktop/diag.zip")
        .arg(&legacy_local)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), scp.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "scp -O: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&legacy_local).unwrap(),
        std::fs::read(&local).unwrap()
    );

    // Nothing outside the device's files can be fetched.
    std::fs::write(&batch, "get /C:/../../../../known_hosts\n").unwrap();
    let mut sftp = tokio::process::Command::new("sftp");
    sftp.args(lab.ssh_options(&lab.key_file))
        .args(["-P", &lab.port.to_string(), "-b"])
        .arg(&batch)
        .arg("labadmin@127.0.0.1")
        .current_dir(&lab.state)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), sftp.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn known_hosts_lists_every_device_with_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<ShellDevice> = [("pc01", 17401), ("pc02", 17402)]
        .iter()
        .map(|(id, port)| ShellDevice {
            id: id.to_string(),
            port: *port,
            user: "labadmin".into(),
            refuse_during_reboot: false,
        })
        .collect();
    let key_file = dir.path().join("keys/aplab_ed25519");
    let known_hosts = dir.path().join("known_hosts");
    let client = ssh::write_client_wiring(dir.path(), &key_file, &known_hosts, &devices).unwrap();
    let written = std::fs::read_to_string(&known_hosts).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("[127.0.0.1]:17401 ssh-ed25519 "));
    assert!(lines[1].starts_with("[127.0.0.1]:17402 ssh-ed25519 "));
    assert_ne!(
        lines[0][18..],
        lines[1][18..],
        "each device has its own host key"
    );
    let public = std::fs::read_to_string(dir.path().join("keys/aplab_ed25519.pub")).unwrap();
    assert_eq!(public.trim_end(), client.to_openssh().unwrap());
    // Wiring again (a lab restart) keeps every key.
    ssh::write_client_wiring(dir.path(), &key_file, &known_hosts, &devices).unwrap();
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), written);
}

/// The harness's own client library (libssh2 through the ssh2 crate) gets the same
/// answers: strict known_hosts check, key auth, exec with exit status, SFTP and scp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libssh2_runs_commands_and_fetches_files() {
    let lab = Lab::new();
    lab.ssh_until(
        r"& 'mdmdiagnosticstool.exe' '-area' 'Autopilot' '-zip' 'C:\Users\labadmin\diag.zip'",
        |o| o.status.success(),
    )
    .await;
    let port = lab.port;
    let key_file = lab.key_file.clone();
    let known_hosts = lab.known_hosts.clone();
    let expected_zip =
        std::fs::read(ssh::files_dir(&lab.state, "pc01").join("C/Users/labadmin/diag.zip"))
            .unwrap();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut session = ssh2::Session::new().unwrap();
        session.set_tcp_stream(tcp);
        session.set_timeout(30_000);
        session.handshake().unwrap();

        let mut known = session.known_hosts().unwrap();
        known
            .read_file(&known_hosts, ssh2::KnownHostFileKind::OpenSSH)
            .unwrap();
        let (host_key, _) = session.host_key().unwrap();
        assert!(matches!(
            known.check_port("127.0.0.1", port, host_key),
            ssh2::CheckResult::Match
        ));

        session
            .userauth_pubkey_file("labadmin", None, &key_file, None)
            .unwrap();
        assert!(session.authenticated());

        let mut channel = session.channel_session().unwrap();
        channel.exec("& 'Get-Tpm'").unwrap();
        let mut out = String::new();
        channel.read_to_string(&mut out).unwrap();
        channel.wait_close().unwrap();
        assert_eq!(channel.exit_status().unwrap(), 0);
        assert!(out.contains("ManufacturerIdTxt         : NTC\r\n"), "{out}");

        let mut channel = session.channel_session().unwrap();
        channel.exec("& 'Get-Nothing'").unwrap();
        let mut err = String::new();
        channel.stderr().read_to_string(&mut err).unwrap();
        channel.wait_close().unwrap();
        assert_eq!(channel.exit_status().unwrap(), 1);
        assert!(err.contains("is not recognized"), "{err}");

        let sftp = session.sftp().unwrap();
        let mut file = sftp.open(Path::new("/C:/Users/labadmin/diag.zip")).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, expected_zip);
        drop(file);
        drop(sftp);

        let (mut remote, stat) = session
            .scp_recv(Path::new("C:/Users/labadmin/diag.zip"))
            .unwrap();
        assert_eq!(stat.size(), expected_zip.len() as u64);
        let mut bytes = Vec::new();
        remote.read_to_end(&mut bytes).unwrap();
        remote.send_eof().unwrap();
        remote.wait_eof().unwrap();
        remote.close().unwrap();
        remote.wait_close().unwrap();
        assert_eq!(bytes, expected_zip);
    })
    .await
    .unwrap();
}
