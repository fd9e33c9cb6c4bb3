//! The console over real PTYs: socat links a "device end" PTY (the test) to a "console
//! end" PTY (the harness). A link drop is socat going away and coming back.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aplab::device::console::serial::SerialLink;
use aplab::device::console::{ConsoleSettings, LinkConsole, replay};
use aplab::device::{Console, FailureClass};
use regex::Regex;

const DEADLINE: Duration = Duration::from_secs(30);

/// socat joining two PTYs at `dir/dut` and `dir/console`; stopped on drop.
struct PtyLink {
    child: Child,
    dut: PathBuf,
}

impl PtyLink {
    fn start(dir: &Path) -> PtyLink {
        let dut = dir.join("dut");
        let console = dir.join("console");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dut.display()))
            .arg(format!("pty,raw,echo=0,link={}", console.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (apt-get install socat)");
        let link = PtyLink { child, dut };
        wait_until("socat created both PTY links", || {
            link.dut.exists() && console.exists()
        });
        link
    }

    /// The device side, as the device would write and read it.
    fn device(&self) -> Box<dyn serialport::SerialPort> {
        serialport::new(self.dut.to_string_lossy(), 115_200)
            .timeout(DEADLINE)
            .open()
            .expect("open the device end of the PTY link")
    }

    /// Stops socat the way an unplugged adapter looks: the console end goes away.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The link came back after it was lost (the first connect may also be a "back").
fn back_after_loss(log: &str) -> bool {
    log.split_once("link lost at")
        .is_some_and(|(_, after)| after.contains("link back at"))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn quick_settings() -> ConsoleSettings {
    ConsoleSettings {
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ConsoleSettings::default()
    }
}

fn open_console(dir: &Path) -> LinkConsole {
    LinkConsole::open(
        Box::new(SerialLink::new(dir.join("console"), 115_200)),
        dir.join("logs/console.log"),
        quick_settings(),
    )
    .unwrap()
}

fn re(p: &str) -> Regex {
    Regex::new(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_is_logged_losslessly_and_matched() {
    let dir = tempfile::tempdir().unwrap();
    let _link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    let mut device = _link.device();
    // Control bytes, an escape sequence, invalid UTF-8 and a prompt without newline.
    let sent: &[u8] =
        b"BdsDxe: loading Boot0001\r\n\x1b[2J\x00\xff\xfe caf\xc3\xa9 \\ \x07\nlogin: ";
    device.write_all(sent).unwrap();

    let m = console
        .expect(&[re("never"), re(r"loading (?P<entry>Boot\d+)")], DEADLINE)
        .await
        .unwrap();
    assert_eq!(m.pattern, 1);
    assert_eq!(m.captures, vec![("entry".into(), "Boot0001".into())]);
    assert_eq!(m.offset, 24);
    let m = console.expect(&[re("login: $")], DEADLINE).await.unwrap();
    assert_eq!(m.offset, sent.len() as u64);
    assert_eq!(console.tail(7), b"login: ");

    // The log gets the prompt after a pause, and replays to exactly what was sent.
    let log = console.log_path().to_path_buf();
    wait_until("the prompt reached the log", || {
        replay(&read_log(&log)).is_some_and(|b| b == sent)
    });
    let text = read_log(&log);
    let line = text.lines().find(|l| l.contains("loading")).unwrap();
    let stamp =
        Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \| BdsDxe: loading Boot0001\\r$");
    assert!(stamp.unwrap().is_match(line), "log line: {line}");
    assert!(text.contains(r"\x1b[2J\x00\xff\xfe café \\ \x07"), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("# --- link up: serial")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_forgets_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    let mut device = link.device();
    device.write_all(b"Press any key\n").unwrap();
    console.expect(&[re("^Press")], DEADLINE).await.unwrap();
    device.write_all(b"ready 1\n").unwrap();
    wait_until("ready 1 arrived", || {
        console.tail(64).ends_with(b"ready 1\n")
    });
    console.mark();
    device.write_all(b"ready 2\n").unwrap();
    let m = console.expect(&[re(r"ready \d")], DEADLINE).await.unwrap();
    assert_eq!(m.text, "ready 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    let mut device = link.device();
    console.send(b"shutdown /r\r\n\xff").await.unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 14];
        device.read_exact(&mut buf).unwrap();
        buf
    })
    .await
    .unwrap();
    assert_eq!(&got, b"shutdown /r\r\n\xff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_waits_across_a_link_drop_and_the_gap_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    link.device().write_all(b"before the drop\n").unwrap();
    console.expect(&[re("before")], DEADLINE).await.unwrap();

    let log = console.log_path().to_path_buf();
    let after = [re("after the drop")];
    let waiting = console.expect(&after, DEADLINE);
    let device_side = async {
        link.stop();
        wait_until("the drop was logged", || {
            read_log(&log).contains("link lost at")
        });
        let link = PtyLink::start(dir.path());
        wait_until("the link came back", || back_after_loss(&read_log(&log)));
        link.device().write_all(b"after the drop\n").unwrap();
        link
    };
    let (found, _link) = tokio::join!(waiting, device_side);
    assert_eq!(found.unwrap().text, "after the drop");
    let text = read_log(&log);
    let gap = Regex::new(r"Z # --- link back at \S+Z after \d+\.\ds ---").unwrap();
    assert!(gap.is_match(&text), "{text}");
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            ["before", "lost", "back", "after the drop"]
                .into_iter()
                .find(|w| l.contains(w))
        })
        .collect();
    assert_eq!(order, ["before", "lost", "back", "after the drop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_stays_down_is_an_infrastructure_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    link.stop();
    let log = console.log_path().to_path_buf();
    wait_until("the drop was logged", || {
        read_log(&log).contains("link lost at")
    });
    let err = console
        .expect(&[re("login")], Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure, "{err:?}");
    assert!(err.message.contains("not back within"), "{}", err.message);
    assert!(err.hint.unwrap().contains("check the USB serial adapter"));
    let err = console.send(b"x").await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_on_a_live_link_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let _link = PtyLink::start(dir.path());
    let console = open_console(dir.path());
    console.wait_connected(DEADLINE).await.unwrap();
    let err = console
        .expect(&[re("Windows Setup")], Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout, "{err:?}");
    assert!(err.message.contains("Windows Setup"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_adapter_is_reported_not_hung_on() {
    let dir = tempfile::tempdir().unwrap();
    let console = open_console(dir.path());
    let err = console
        .expect(&[re("x")], Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message.contains("cannot open serial"),
        "{}",
        err.message
    );
    let log = read_log(console.log_path());
    assert_eq!(
        log.matches("link down at").count(),
        1,
        "one note, not one per retry: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_builds_a_serial_console() {
    let dir = tempfile::tempdir().unwrap();
    let link = PtyLink::start(dir.path());
    let conn = aplab::model::inventory::ConsoleConn::Serial {
        device: dir.path().join("console"),
        baud: 115_200,
    };
    let log = dir.path().join("run/pc01/console.log");
    let console = aplab::device::console::from_inventory(&conn, log.clone()).unwrap();
    assert_eq!(console.log_path(), log);
    let mut device = link.device();
    // The reader may still be opening the port: keep greeting until it is heard.
    let greeting = [re("hello from pc01")];
    let start = Instant::now();
    let found = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the console never heard the device"
        );
        device.write_all(b"hello from pc01\n").unwrap();
        match console.expect(&greeting, Duration::from_millis(200)).await {
            Ok(found) => break found,
            Err(e) => assert!(log.exists(), "{e:?}"),
        }
    };
    assert_eq!(found.text, "hello from pc01");
}
