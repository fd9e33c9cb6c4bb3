//! The SSH shell backend against a real OpenSSH sshd on 127.0.0.1.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aplab::device::shell::{SshSettings, SshShell};
use aplab::device::{FailureClass, Shell};
use aplab::model::inventory::{HostKeyPolicy, ShellConn, ShellFlavor};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch directory with a client key, two host keys and an sshd that can be
/// (re)started with either of them on one port. Everything it started dies on drop.
struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    sshd: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["id_ed25519", "host_a", "host_b"] {
            keygen(&d.join(name));
        }
        std::fs::create_dir(d.join("authorized_keys")).unwrap();
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys/root")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        Lab {
            dir,
            port: free_port(),
            sshd: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts sshd with the named host key and waits until it accepts connections.
    fn start(&mut self, host_key: &str) {
        let d = self.dir.path();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/{host_key}\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys/%u\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nSubsystem sftp internal-sftp\n",
            port = self.port,
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/sshd (install openssh-server: make deps)");
        self.sshd = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on port {} within 30 s; see {}",
                self.port,
                d.join("sshd.log").display()
            );
            std::thread::yield_now();
        }
    }

    /// Kills sshd and every session process it forked, as a device reboot would.
    fn stop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            for pid in descendants(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// known_hosts with the named host key for this sshd.
    fn known_hosts_with(&self, host_key: &str) -> PathBuf {
        let public = std::fs::read_to_string(self.path(&format!("{host_key}.pub"))).unwrap();
        let path = self.path("known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {public}", self.port)).unwrap();
        path
    }

    fn conn(&self, policy: HostKeyPolicy) -> ShellConn {
        ShellConn {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            key_file: self.path("id_ed25519"),
            known_hosts: self.path("known_hosts"),
            host_key_policy: policy,
            flavor: ShellFlavor::Posix,
        }
    }

    /// A running sshd with host key A that known_hosts trusts, and a shell to it.
    fn trusted() -> (Lab, SshShell) {
        let mut lab = Lab::new();
        lab.start("host_a");
        lab.known_hosts_with("host_a");
        let shell = SshShell::new(lab.conn(HostKeyPolicy::Strict));
        (lab, shell)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("run ssh-keygen (install openssh-client: make deps)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every process below `root`, found through each process's parent in /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The field after the command name (which may hold spaces) is the state, then ppid.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn exec_reports_exit_status_and_separates_stderr() {
    let (_lab, shell) = Lab::trusted();
    let out = shell
        .run(
            "sh",
            &strings(&["-c", "echo to-out; echo to-err >&2; exit 3"]),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, "to-out\n");
    assert_eq!(out.stderr, "to-err\n");

    // The session is reused for the next command.
    let out = shell.run("true", &[], TIMEOUT).await.unwrap();
    assert_eq!((out.status, out.stdout.as_str()), (0, ""));
}

#[tokio::test]
async fn large_output_on_both_streams_does_not_stall() {
    let (_lab, shell) = Lab::trusted();
    // 4 MiB on stderr before anything on stdout: more than a channel window.
    let script =
        "head -c 4194304 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero | tr '\\0' o";
    let out = shell
        .run("sh", &strings(&["-c", script]), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(out.stderr.len(), 4_194_304);
    assert_eq!(out.stdout.len(), 3_000_000);
}

#[tokio::test]
async fn hostile_arguments_arrive_as_one_literal_argument_each() {
    let (lab, shell) = Lab::trusted();
    let canary = |n: u32| lab.path(&format!("pwned{n}")).display().to_string();
    let hostile = vec![
        format!("; touch {}", canary(1)),
        format!("$(touch {})", canary(2)),
        format!("`touch {}`", canary(3)),
        format!("'; touch {}; '", canary(4)),
        format!("\ntouch {}\n", canary(5)),
        format!("\" && touch {} && \"", canary(6)),
        format!("| touch {}", canary(7)),
        format!("\\'$(touch {})\\'", canary(8)),
        "a b\tc".to_string(),
        "*".to_string(),
        "~".to_string(),
        "$HOME".to_string(),
        String::new(),
        "ünïcødé ‘quoted’".to_string(),
        "-n".to_string(),
    ];
    let mut args = vec!["<<%s>>".to_string()];
    args.extend(hostile.iter().cloned());
    let out = shell.run("printf", &args, TIMEOUT).await.unwrap();
    assert_eq!(out.status, 0, "stderr: {}", out.stderr);
    let expected: String = hostile.iter().map(|a| format!("<<{a}>>")).collect();
    assert_eq!(out.stdout, expected);
    for n in 1..=8 {
        assert!(
            !Path::new(&canary(n)).exists(),
            "argument {n} ran a command on the device"
        );
    }
    // The program name is quoted too.
    let out = shell
        .run(&format!("true; touch {}", canary(9)), &[], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        out.status, 127,
        "a program with that odd name does not exist"
    );
    assert!(!Path::new(&canary(9)).exists());
}

#[tokio::test]
async fn nul_in_an_argument_is_refused_before_anything_runs() {
    let (_lab, shell) = Lab::trusted();
    let err = shell
        .run("echo", &strings(&["a\0rm -rf /"]), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.message.contains("NUL"), "{}", err.message);
}

#[tokio::test]
async fn fetch_copies_a_file_and_refuses_more_than_the_cap() {
    let (lab, shell) = Lab::trusted();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let remote = lab.path("remote.bin");
    std::fs::write(&remote, &content).unwrap();
    std::fs::create_dir(lab.path("artifacts")).unwrap();
    let local = lab.path("artifacts/copy.bin");

    let n = shell
        .fetch(remote.to_str().unwrap(), &local, 1 << 20, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(n, content.len() as u64);
    assert_eq!(std::fs::read(&local).unwrap(), content);

    // Known size over the cap: refused, and the earlier copy does not survive.
    let err = shell
        .fetch(remote.to_str().unwrap(), &local, 1000, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.message.contains("1000 bytes"), "{}", err.message);
    assert!(!local.exists(), "a refused fetch must leave no file");

    // /proc files report size 0, so only the streaming cap can catch this one.
    let err = shell
        .fetch("/proc/cpuinfo", &local, 100, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config, "{}", err.message);
    assert!(err.message.contains("cap of 100 bytes"), "{}", err.message);
    assert!(!local.exists(), "a partial file must be deleted");

    let err = shell
        .fetch(
            lab.path("missing.log").to_str().unwrap(),
            &local,
            100,
            TIMEOUT,
        )
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Product);
    assert!(err.message.contains("does not exist"), "{}", err.message);

    // The session survives all of that.
    assert_eq!(shell.run("true", &[], TIMEOUT).await.unwrap().status, 0);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_with_a_clear_message() {
    let mut lab = Lab::new();
    lab.start("host_b");
    let known_hosts = lab.known_hosts_with("host_a");
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::TrustOnFirstUse] {
        let shell = SshShell::new(lab.conn(policy));
        let err = shell.run("true", &[], TIMEOUT).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Config);
        let entry = format!("[127.0.0.1]:{}", lab.port);
        assert!(
            err.message
                .contains(&format!("host key for {entry} has CHANGED")),
            "{}",
            err.message
        );
        let hint = err.hint.unwrap_or_default();
        assert!(hint.contains(&format!("-R '{entry}'")), "{hint}");
        assert!(hint.contains(&known_hosts.display().to_string()), "{hint}");
    }
}

#[tokio::test]
async fn an_unknown_host_is_refused_when_strict_and_recorded_on_first_use() {
    let mut lab = Lab::new();
    lab.start("host_a");
    let known_hosts = lab.path("known_hosts");

    let strict = SshShell::new(lab.conn(HostKeyPolicy::Strict));
    let err = strict.run("true", &[], TIMEOUT).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.message.contains("is not in"), "{}", err.message);
    assert!(err.hint.unwrap_or_default().contains("ssh-keyscan"));
    assert!(!known_hosts.exists(), "strict mode must not record keys");

    let tofu = SshShell::new(lab.conn(HostKeyPolicy::TrustOnFirstUse));
    assert_eq!(tofu.run("true", &[], TIMEOUT).await.unwrap().status, 0);
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", lab.port)),
        "{recorded}"
    );

    // The recorded entry is now trusted under strict checking too.
    let strict = SshShell::new(lab.conn(HostKeyPolicy::Strict));
    assert_eq!(strict.run("true", &[], TIMEOUT).await.unwrap().status, 0);
}

#[tokio::test]
async fn the_session_is_reestablished_after_sshd_restarts() {
    let (mut lab, shell) = Lab::trusted();
    let first = shell
        .run("sh", &strings(&["-c", "echo $PPID"]), TIMEOUT)
        .await
        .unwrap();
    lab.stop();
    lab.start("host_a");
    let second = shell
        .run("sh", &strings(&["-c", "echo $PPID"]), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(second.status, 0);
    assert_ne!(
        first.stdout, second.stdout,
        "the second command ran in a new SSH session"
    );
}

#[tokio::test]
async fn a_command_killed_by_a_signal_says_so() {
    let (_lab, shell) = Lab::trusted();
    let out = shell
        .run("sh", &strings(&["-c", "kill -9 $$"]), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status, -1);
    assert!(
        out.stderr.contains("killed by signal KILL"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_command_that_never_stops_printing_still_times_out() {
    let (_lab, shell) = Lab::trusted();
    let err = shell
        .run("yes", &[], Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout, "{}", err.message);
}

#[tokio::test]
async fn a_refused_connection_is_an_infrastructure_failure() {
    let lab = Lab::new(); // nothing listens on lab.port
    lab.known_hosts_with("host_a");
    let settings = SshSettings {
        connect_timeout: Duration::from_secs(5),
        connect_attempts: 2,
        retry_backoff: Duration::from_millis(10),
    };
    let shell = SshShell::with_settings(lab.conn(HostKeyPolicy::Strict), settings);
    let err = shell.run("true", &[], TIMEOUT).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message.contains(&format!("127.0.0.1:{}", lab.port)),
        "{}",
        err.message
    );
    assert!(err.hint.unwrap_or_default().contains("sshd"));
}

#[tokio::test]
async fn a_command_that_overruns_its_timeout_fails_as_timeout_and_the_shell_recovers() {
    let (lab, shell) = Lab::trusted();
    let pid_file = lab.path("sleeper.pid");
    let script = format!("echo $$ > '{}'; exec sleep 60", pid_file.display());
    let err = shell
        .run("sh", &strings(&["-c", &script]), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout);
    assert!(err.message.contains("`sh`"), "{}", err.message);
    assert_eq!(shell.run("true", &[], TIMEOUT).await.unwrap().status, 0);
    // Without a PTY, sshd leaves a command running when its session goes; end ours.
    let deadline = Instant::now() + TIMEOUT;
    let pid: i32 = loop {
        // The shell may start late on a loaded machine; the pid is then written late.
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the sleeper never started");
        std::thread::yield_now();
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A device still booting (its port accepts and drops the connection) is retried, and
/// reached once sshd is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_comes_up_during_the_retries_is_reached() {
    let (mut lab, _) = Lab::trusted();
    lab.stop();
    let booting = TcpListener::bind(("127.0.0.1", lab.port)).unwrap();
    let settings = SshSettings {
        connect_timeout: Duration::from_secs(10),
        connect_attempts: 6,
        retry_backoff: Duration::from_millis(500),
    };
    let shell = SshShell::with_settings(lab.conn(HostKeyPolicy::Strict), settings);
    let command = tokio::spawn(async move { shell.run("true", &[], TIMEOUT).await });
    // The first attempt reaches the "booting" device, which hangs up on it.
    let (first_attempt, _) = tokio::task::spawn_blocking(move || booting.accept())
        .await
        .unwrap()
        .unwrap();
    drop(first_attempt);
    lab.start("host_a");
    let out = command.await.unwrap().unwrap();
    assert_eq!(out.status, 0);
}
