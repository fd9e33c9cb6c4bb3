//! The shipped virtual lab, relocated for a test: every port in `lab-inventory.yaml`
//! replaced by a free one on 127.0.0.1, every `lab-state`/`reports` path moved into a
//! temporary directory, and the shipped scenarios used as they are. Tests then drive it
//! with the real `aplab` binary, exactly as `make demo` does.
//!
//! Use from a test file with `mod lab_support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A relocated copy of the shipped lab.
pub struct TestLab {
    pub dir: tempfile::TempDir,
    pub inventory: PathBuf,
}

impl TestLab {
    /// The shipped inventory with fresh ports and paths. `edit` may change the YAML text
    /// further (e.g. add faults) before it is written.
    pub fn shipped(edit: impl FnOnce(String) -> String) -> TestLab {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("lab-inventory.yaml"))
            .expect("read lab-inventory.yaml");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = relocate(&text, dir.path());
        let inventory = dir.path().join("lab-inventory.yaml");
        std::fs::write(&inventory, edit(text)).expect("write inventory");
        TestLab { dir, inventory }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `aplab ARGS --inventory <this lab>` from the repository root (so `scenarios/`
    /// is the shipped one) and returns its output.
    pub fn aplab(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run aplab")
    }

    /// The command, for tests that need to spawn and signal it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aplab"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .arg("--inventory")
            .arg(&self.inventory)
            .env_remove("APLAB_INVENTORY");
        cmd
    }

    /// Starts `aplab lab up` for this lab as its own process (as a lab host runs it) and
    /// returns once every endpoint listens. The lab stops when the guard is dropped.
    pub fn start_lab(&self) -> LabProcess {
        use std::io::BufRead;
        let mut child = self
            .command(&["lab", "up", "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start aplab lab up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut guard = LabProcess { child };
        match rx.recv_timeout(std::time::Duration::from_secs(180)) {
            Ok(line) if line.trim_start().starts_with('{') => guard,
            other => {
                guard.stop();
                panic!("the virtual lab did not come up: {other:?}");
            }
        }
    }

    /// The reports directory of this lab.
    pub fn reports(&self) -> PathBuf {
        self.path("reports")
    }

    /// The one run directory under reports/ (panics unless exactly one).
    pub fn only_run_dir(&self) -> PathBuf {
        let runs: Vec<PathBuf> = std::fs::read_dir(self.reports())
            .expect("reports dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(runs.len(), 1, "expected one run directory, found {runs:?}");
        runs.into_iter().next().unwrap()
    }
}

/// Rewrites ports and lab paths of the shipped inventory.
pub fn relocate(text: &str, dir: &Path) -> String {
    // swtpm needs two consecutive ports (server P, control P+1): find every port the
    // inventory names, and give a TCTI port a free pair.
    let port_re = regex::Regex::new(r"\b(17\d\d\d)\b").unwrap();
    let tcti_re = regex::Regex::new(r"port=(17\d\d\d)").unwrap();
    let tcti_ports: Vec<u16> = tcti_re
        .captures_iter(text)
        .map(|c| c[1].parse().unwrap())
        .collect();
    let mut map: BTreeMap<u16, u16> = BTreeMap::new();
    let mut held = Vec::new();
    for c in port_re.captures_iter(text) {
        let old: u16 = c[1].parse().unwrap();
        if map.contains_key(&old) {
            continue;
        }
        let new = if tcti_ports.contains(&old) {
            free_pair(&mut held)
        } else {
            free_port(&mut held)
        };
        map.insert(old, new);
    }
    drop(held);
    let text = port_re.replace_all(text, |c: &regex::Captures| {
        map[&c[1].parse::<u16>().unwrap()].to_string()
    });
    let state = dir.join("lab-state");
    let reports = dir.join("reports");
    text.replace("lab-state", &state.display().to_string())
        .replace(
            "reports: reports",
            &format!("reports: {}", reports.display()),
        )
}

/// A free port, kept bound (in `held`) until all are chosen so none is handed out twice.
fn free_port(held: &mut Vec<TcpListener>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = l.local_addr().unwrap().port();
    held.push(l);
    port
}

/// A free port P whose P+1 is free too.
fn free_pair(held: &mut Vec<TcpListener>) -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = first.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        if let Ok(second) = TcpListener::bind(("127.0.0.1", port + 1)) {
            held.push(first);
            held.push(second);
            return port;
        }
    }
}

/// A running `aplab lab up`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct LabProcess {
    child: std::process::Child,
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
