//! Power through a real pdudaemon (from PyPI) driving its localcmdline driver, which
//! appends to a file what a PDU would do.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aplab::device::power::pdudaemon::PdudaemonPower;
use aplab::device::{FailureClass, Power, ReadBack};

const DEADLINE: Duration = Duration::from_secs(30);

fn pdudaemon_binary() -> PathBuf {
    let path = std::env::var_os("APLAB_PDUDAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/pdudaemon-venv/bin/pdudaemon")
        });
    assert!(
        path.exists(),
        "pdudaemon not found at {} (set APLAB_PDUDAEMON, or run `make test`, which installs it)",
        path.display()
    );
    path
}

/// pdudaemon on a free port with one localcmdline PDU `lab-local`; killed on drop.
struct Pdudaemon {
    child: Child,
    url: String,
    power_log: PathBuf,
}

impl Pdudaemon {
    fn start(dir: &Path) -> Pdudaemon {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let power_log = dir.join("power.log");
        let config = serde_json::json!({
            "daemon": {"hostname": "127.0.0.1", "port": port, "logging_level": "DEBUG", "listener": "http"},
            "pdus": {"lab-local": {"driver": "localcmdline",
                "cmd_on": format!("echo port %s ON >> {}", power_log.display()),
                "cmd_off": format!("echo port %s OFF >> {}", power_log.display())}}
        });
        let conf = dir.join("pdudaemon.conf");
        std::fs::write(&conf, config.to_string()).unwrap();
        let child = Command::new(pdudaemon_binary())
            .arg("--conf")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pdudaemon starts");
        let daemon = Pdudaemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            power_log,
        };
        wait_until("pdudaemon listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.power_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Pdudaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_off_cycle_reach_the_outlet_and_state_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let pdu = Pdudaemon::start(dir.path());
    let power = PdudaemonPower::new(&pdu.url, "lab-local", 3)
        .unwrap()
        .with_reboot_delay(Duration::from_secs(1));
    let unavailable = ReadBack::Unavailable("pdudaemon cannot report outlet state".into());

    assert_eq!(power.off().await.unwrap(), unavailable);
    wait_until("the outlet went off", || pdu.lines().len() == 1);
    assert_eq!(power.on().await.unwrap(), unavailable);
    wait_until("the outlet went on", || pdu.lines().len() == 2);
    assert_eq!(power.cycle().await.unwrap(), unavailable);
    wait_until("the outlet cycled", || pdu.lines().len() == 4);
    assert_eq!(
        pdu.lines(),
        ["port 3 OFF", "port 3 ON", "port 3 OFF", "port 3 ON"]
    );
    assert_eq!(power.state().await.unwrap(), unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pdu_is_an_infrastructure_failure() {
    let dir = tempfile::tempdir().unwrap();
    let pdu = Pdudaemon::start(dir.path());
    let power = PdudaemonPower::new(&pdu.url, "no-such-pdu", 1).unwrap();
    let err = power.on().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(err.code.as_deref(), Some("HTTP 500"));
    assert!(err.hint.unwrap().contains("knows the PDU `no-such-pdu`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pdudaemon_is_an_infrastructure_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut pdu = Pdudaemon::start(dir.path());
    let _ = pdu.child.kill();
    let _ = pdu.child.wait();
    let power = PdudaemonPower::new(&pdu.url, "lab-local", 1).unwrap();
    let err = power.off().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.hint
            .unwrap()
            .contains(&format!("check that pdudaemon runs at {}", pdu.url))
    );
}
