//! The console through ser2net 4.3, in raw TCP and in telnet RFC 2217 mode, with a PTY
//! (joined by socat to the test's "device end") behind it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aplab::device::console::tcp::{TcpLink, TelnetLink};
use aplab::device::console::{ConsoleLink, ConsoleSettings, LinkConsole, replay};
use aplab::device::{Console, FailureClass};
use regex::Regex;
use tokio::io::AsyncWriteExt;

const DEADLINE: Duration = Duration::from_secs(30);

/// A child process stopped (SIGTERM, then SIGKILL) on drop.
struct Proc(Child);

impl Proc {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() {
            if start.elapsed() > DEADLINE {
                let _ = self.0.kill();
                let _ = self.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A device end (`dut`) joined to the PTY ser2net serves (`serial`). The returned file
/// holds `serial` open, so socat outlives a ser2net restart (a PTY whose other side
/// closes ends socat).
fn pty_link(dir: &Path) -> (Proc, PathBuf, std::fs::File) {
    let dut = dir.join("dut");
    let serial = dir.join("serial");
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", dut.display()))
        .arg(format!("pty,raw,echo=0,link={}", serial.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat runs (apt-get install socat)");
    let socat = Proc(child);
    wait_until("socat made its PTYs", || dut.exists() && serial.exists());
    use std::os::unix::fs::OpenOptionsExt;
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(&serial)
        .unwrap();
    (socat, dut, hold)
}

/// ser2net serving `dir/serial` on `port` with the given accepter (`tcp` or
/// `telnet(rfc2217),tcp`).
fn ser2net(dir: &Path, accepter: &str, port: u16) -> Proc {
    let config = dir.join("ser2net.yaml");
    std::fs::write(
        &config,
        format!(
            "%YAML 1.1\n---\nconnection: &dut\n  accepter: {accepter},127.0.0.1,{port}\n  \
             connector: serialdev,{},115200n81,local\n  options:\n    kickolduser: true\n",
            dir.join("serial").display()
        ),
    )
    .unwrap();
    let child = Command::new("ser2net")
        .args(["-n", "-u", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ser2net runs (apt-get install ser2net)");
    Proc(child)
}

fn device(dut: &Path) -> Box<dyn serialport::SerialPort> {
    serialport::new(dut.to_string_lossy(), 115_200)
        .timeout(DEADLINE)
        .open()
        .expect("open the device end")
}

fn read_exact_blocking(dev: &mut dyn serialport::SerialPort, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    dev.read_exact(&mut buf).unwrap();
    buf
}

fn settings() -> ConsoleSettings {
    ConsoleSettings {
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..ConsoleSettings::default()
    }
}

fn re(p: &str) -> Regex {
    Regex::new(p).unwrap()
}

/// The link came back after it was lost (the first connect may also be a "back").
fn back_after_loss(log: &str) -> bool {
    log.split_once("link lost at")
        .is_some_and(|(_, after)| after.contains("link back at"))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The device says `line` until the console hears it.
async fn hear(console: &LinkConsole, dev: &mut Box<dyn serialport::SerialPort>, line: &str) {
    let start = Instant::now();
    let pattern = [re(line)];
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the console never heard {line:?}:\n{}",
            read_log(console.log_path())
        );
        dev.write_all(format!("{line}\n").as_bytes()).unwrap();
        if console
            .expect(&pattern, Duration::from_millis(300))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// Round trip through ser2net both ways (including 0xFF bytes), then a ser2net restart
/// that the console rides out.
async fn round_trip_and_restart(accepter: &str, link: impl Fn(u16) -> Box<dyn ConsoleLink>) {
    let dir = tempfile::tempdir().unwrap();
    let (_socat, dut, _hold) = pty_link(dir.path());
    let port = free_port();
    let mut server = ser2net(dir.path(), accepter, port);
    let console =
        LinkConsole::open(link(port), dir.path().join("console.log"), settings()).unwrap();
    let mut dev = device(&dut);
    // A freshly started ser2net sometimes resets its first connection; the console
    // reconnects on its own, so the device keeps talking until it is heard.
    hear(&console, &mut dev, "ready").await;
    console.mark();

    // Harness -> device.
    console.send(b"\xffhello\r\n").await.unwrap();
    let (got, mut dev) = tokio::task::spawn_blocking(move || {
        let got = read_exact_blocking(dev.as_mut(), 8);
        (got, dev)
    })
    .await
    .unwrap();
    assert_eq!(got, b"\xffhello\r\n");

    // Device -> harness, with the telnet escape byte in the data.
    let sent: &[u8] = b"Autopilot \xff\xff step 1\r\nlogin: ";
    dev.write_all(sent).unwrap();
    let m = console
        .expect(&[re("step (?P<n>\\d)")], DEADLINE)
        .await
        .unwrap();
    assert_eq!(m.captures, vec![("n".into(), "1".into())]);
    console.expect(&[re("login: $")], DEADLINE).await.unwrap();
    let log = console.log_path().to_path_buf();
    wait_until("the log holds every byte", || {
        replay(&read_log(&log)).is_some_and(|b| b.ends_with(sent))
    });

    // ser2net goes away and comes back on the same port.
    server.stop();
    wait_until("the drop was logged", || {
        read_log(&log).contains("link lost at")
    });
    let err = console
        .expect(&[re("back")], Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure, "{err:?}");
    assert!(
        err.hint.as_deref().unwrap().contains(&format!(
            "ser2net (or the console server) runs at 127.0.0.1:{port}"
        )),
        "{err:?}"
    );
    let _server = ser2net(dir.path(), accepter, port);
    wait_until("the link came back", || back_after_loss(&read_log(&log)));
    hear(&console, &mut dev, "we are back").await;
    console.wait_connected(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_through_ser2net() {
    round_trip_and_restart("tcp", |port| Box::new(TcpLink::new("127.0.0.1", port))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2217_through_ser2net() {
    round_trip_and_restart("telnet(rfc2217),tcp", |port| {
        Box::new(TelnetLink::new("127.0.0.1", port, 115_200))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2217_sets_the_baud_rate_on_ser2net() {
    let dir = tempfile::tempdir().unwrap();
    let (_socat, dut, _hold) = pty_link(dir.path());
    let port = free_port();
    let _server = ser2net(dir.path(), "telnet(rfc2217),tcp", port);
    let link = TelnetLink::new("127.0.0.1", port, 57_600);
    let mut dev = serialport::new(dut.to_string_lossy(), 115_200)
        .timeout(Duration::from_millis(500))
        .open()
        .unwrap();
    let start = Instant::now();
    // Until ser2net listens (and past a reset first connection), try again.
    let _stream = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "no data ever went through ser2net"
        );
        let Ok(mut stream) = link.connect().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Data flows at once; nothing waits for options ser2net never finishes on a PTY.
        stream.write_all(b"ping").await.unwrap();
        let (got, back) = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 4];
            let got = dev.read_exact(&mut buf).map(|_| buf);
            (got, dev)
        })
        .await
        .unwrap();
        dev = back;
        if let Ok(got) = got {
            assert_eq!(&got, b"ping");
            break stream;
        }
    };
    wait_until("ser2net confirmed the baud rate", || {
        link.confirmed_baud().is_some()
    });
    assert_eq!(link.confirmed_baud(), Some(57_600));
}
