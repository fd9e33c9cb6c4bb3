//! The bench commands (`aplab power|console|keys|screen|tpm`) through the real binary on
//! a relocated copy of the shipped virtual lab, started as `aplab lab up` in the
//! background as an engineer would.

mod lab_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab_support::TestLab;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a bench command, requiring exit 0; returns its stdout.
fn ok(lab: &TestLab, args: &[&str]) -> String {
    let out = lab.aplab(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "aplab {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// Polls `check` until it holds or `deadline` passes.
fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<String>) -> String {
    let end = Instant::now() + deadline;
    loop {
        let seen = check();
        if let Some(s) = &seen
            && !s.is_empty()
        {
            return s.clone();
        }
        assert!(Instant::now() < end, "{what} within {deadline:?}");
        // A polling interval, not synchronisation: the deadline decides.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_engineer_drives_pc01_by_hand() {
    // pc03 loses its keyboard so the missing-capability message can be checked.
    let lab = TestLab::shipped(|yaml| {
        yaml.lines()
            .filter(|l| !(l.contains("keyboard:") && l.contains("/pc03")))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let _lab_process = lab.start_lab();

    // Power, read back from the Redfish controller.
    assert!(
        ok(&lab, &["power", "pc01", "state"]).contains("pc01: power off"),
        "pc01 starts powered off"
    );
    assert!(ok(&lab, &["power", "pc01", "on"]).contains("pc01: power on"));
    assert!(ok(&lab, &["power", "pc01", "state"]).contains("pc01: power on"));

    // The console with a piped stdin: boot lines arrive until the first OOBE screen;
    // closing stdin ends the session cleanly.
    let mut console = lab
        .command(&["console", "pc01"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aplab console");
    let stdout = console.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut console = Killed(console);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen
        .iter()
        .any(|l: &String| l.contains("OOBE: screen=region"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                panic!("no `OOBE: screen=region` on pc01's console within 60 s; saw:\n{seen:#?}")
            }
        }
    }
    drop(console.0.stdin.take());
    let status = wait_for(
        "console exits once stdin closes",
        Duration::from_secs(30),
        || {
            console
                .0
                .try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{:?}", s.code()))
        },
    );
    assert_eq!(status, "Some(0)", "console exit code once stdin closed");

    // Keys and screen: Windows key five times opens "What would you like to do?".
    assert!(ok(&lab, &["keys", "pc01", "MetaLeft*5"]).contains("pressed MetaLeft*5"));
    let screen = wait_for(
        "the screen shows \"What would you like to do?\"",
        Duration::from_secs(30),
        || {
            let s = ok(&lab, &["screen", "pc01"]);
            s.contains("What would you like to do?").then_some(s)
        },
    );
    assert!(screen.contains("What would you like to do?"));
    let png = lab.path("pc01.png");
    ok(
        &lab,
        &["screen", "pc01", "--snapshot", png.to_str().unwrap()],
    );
    let bytes = std::fs::read(&png).expect("the snapshot file");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 100,
        "the snapshot is not a PNG ({} bytes)",
        bytes.len()
    );

    // The TPM is an swtpm: it reports itself as IBM, TPM 2.0.
    let tpm = ok(&lab, &["tpm", "pc01"]);
    assert!(
        tpm.contains("family 2.0") && tpm.contains("manufacturer IBM"),
        "{tpm}"
    );

    let checked = ok(&lab, &["tpm", "pc01", "--ek", "--attest"]);
    assert!(
        checked.contains("EK certificate: valid")
            && checked.contains("attestation: quote over a fresh nonce verified"),
        "{checked}"
    );
    assert!(ok(&lab, &["screen", "pc01", "--qr"]).contains("no QR code on screen"));
    assert!(ok(&lab, &["keys", "pc01", "--text", "abc"]).contains("typed 3 characters"));

    // Bad input: exit 2 with a message that says what to fix.
    let out = lab.aplab(&["power", "pc1", "state"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no device `pc1`"), "{stderr}");
    assert!(stderr.contains("did you mean `pc01`?"), "{stderr}");

    let out = lab.aplab(&["keys", "pc03", "Enter"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pc03 has no keyboard connection in"),
        "{stderr}"
    );

    let out = lab.aplab(&["keys", "pc01", "Entr"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `Enter`?"), "{stderr}");
}

#[test]
fn bench_commands_say_how_to_start_a_lab_that_is_not_running() {
    let lab = TestLab::shipped(|yaml| yaml);
    for args in [
        &["power", "pc01", "state"][..],
        &["console", "pc01"],
        &["screen", "pc01"],
    ] {
        let out = lab.aplab(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "aplab {args:?}: {stderr}");
        assert!(
            stderr.contains("the virtual lab is not running")
                && stderr.contains("start it with `aplab lab up"),
            "aplab {args:?}: {stderr}"
        );
    }
}

fn pdudaemon_binary() -> std::path::PathBuf {
    let path = std::env::var_os("APLAB_PDUDAEMON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/pdudaemon-venv/bin/pdudaemon")
        });
    assert!(
        path.exists(),
        "pdudaemon not found at {} (set APLAB_PDUDAEMON, or run `make test`, which installs it)",
        path.display()
    );
    path
}

#[test]
fn power_through_pdudaemon_says_the_state_cannot_be_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outlet_log = dir.path().join("outlet.log");
    let config = serde_json::json!({
        "daemon": {"hostname": "127.0.0.1", "port": port, "listener": "http"},
        "pdus": {"lab-local": {"driver": "localcmdline",
            "cmd_on": format!("echo port %s ON >> {}", outlet_log.display()),
            "cmd_off": format!("echo port %s OFF >> {}", outlet_log.display())}}
    });
    let conf = dir.path().join("pdudaemon.conf");
    std::fs::write(&conf, config.to_string()).unwrap();
    let _pdudaemon = Killed(
        std::process::Command::new(pdudaemon_binary())
            .arg("--conf")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pdudaemon"),
    );
    wait_for("pdudaemon listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| "up".to_string())
    });
    // A hardware inventory: no virtual lab, one bench device on a PDU outlet.
    let inventory = dir.path().join("lab-inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "lab: {{ name: bench, ledger: {0}/ledger.sqlite, reports: {0}/reports }}\n\
             devices:\n\
             \x20 - id: bench1\n\
             \x20   serial: B-1\n\
             \x20   manufacturer: Dell Inc.\n\
             \x20   model: OptiPlex 7010\n\
             \x20   windows: {{ edition: pro, version: 11 }}\n\
             \x20   power: {{ pdudaemon: {{ url: \"http://127.0.0.1:{port}\", pdu: lab-local, port: 3 }} }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let aplab = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aplab"))
            .args(args)
            .arg("--inventory")
            .arg(&inventory)
            .output()
            .expect("run aplab")
    };
    let out = aplab(&["power", "bench1", "on"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("bench1: power on requested; the power controller cannot report the state"),
        "{stdout}"
    );
    wait_for("the outlet went on", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&outlet_log).unwrap_or_default();
        (log.trim() == "port 3 ON").then_some(log)
    });
    let out = aplab(&["power", "bench1", "state"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("bench1: the power controller cannot report the state"),
        "{stdout}"
    );
}
