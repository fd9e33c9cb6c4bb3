//! The run directory: where one run's results land, and the only thing reporters read
//! besides the ledger (reporters never call a device, as in nextest's runner/reporter
//! split).
//!
//! ```text
//! reports/<run-id>/
//!   summary.json            the run as data (what the HTML and JUnit are made from)
//!   junit.xml               for CI servers (Jenkins, GitLab, GitHub annotations)
//!   report.html             for engineers; self-contained, opens from file://
//!   evidence/<device>.json  per-device certification evidence for OEM hand-over
//!   evidence/<device>.zip   the device's artifacts, capped
//!   cases/<case-slug>/
//!     events.jsonl          one engine::events::Event per line, secrets scrubbed
//!     console.log           the device's console during the case
//!     artifacts/            screenshots, diagnostics zip, dsregcmd.txt, ...
//! ```
//!
//! Case ids and device ids come from scenarios and devices, so they are turned into
//! slugs that cannot leave the run directory (no `/`, no `..`, no NUL or control
//! characters, bounded length); a slug that had to change carries a short hash of the
//! original so two different ids never share a directory.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ReportError;
use super::redact::Redactor;
use crate::engine::events::Event;

/// Longest slug kept before a hash is appended (file names stay far below 255 bytes).
const SLUG_MAX: usize = 80;

/// One run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    run_id: String,
    redactor: Redactor,
}

impl RunDir {
    /// Creates (or reopens) `reports/<run-id>/`. Everything written through it is
    /// scrubbed with `redactor`.
    pub fn create(reports: &Path, run_id: &str, redactor: Redactor) -> Result<RunDir, ReportError> {
        let root = reports.join(slug(run_id));
        fs::create_dir_all(root.join("cases")).map_err(|e| ReportError::io(&root, e))?;
        Ok(RunDir {
            root,
            run_id: run_id.to_string(),
            redactor,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn summary_path(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn junit_path(&self) -> PathBuf {
        self.root.join("junit.xml")
    }

    pub fn html_path(&self) -> PathBuf {
        self.root.join("report.html")
    }

    pub fn evidence_dir(&self) -> PathBuf {
        self.root.join("evidence")
    }

    /// `cases/<slug>/` of a case (ledger case id, `scenario[axis=value]@device`), created
    /// with its `artifacts/` directory.
    pub fn case_dir(&self, case_id: &str) -> Result<PathBuf, ReportError> {
        let dir = self.case_path(case_id);
        fs::create_dir_all(dir.join("artifacts")).map_err(|e| ReportError::io(&dir, e))?;
        Ok(dir)
    }

    /// `cases/<slug>/` without creating it.
    pub fn case_path(&self, case_id: &str) -> PathBuf {
        self.root.join("cases").join(slug(case_id))
    }

    /// Where the engine saves a case's artifacts (give it as the device handle's
    /// `artifacts`).
    pub fn artifacts_dir(&self, case_id: &str) -> Result<PathBuf, ReportError> {
        Ok(self.case_dir(case_id)?.join("artifacts"))
    }

    /// Where a case's console log goes (give it to the console reader).
    pub fn console_log(&self, case_id: &str) -> Result<PathBuf, ReportError> {
        Ok(self.case_dir(case_id)?.join("console.log"))
    }

    pub fn events_path(&self, case_id: &str) -> PathBuf {
        self.case_path(case_id).join("events.jsonl")
    }

    /// Appends one event to the case's `events.jsonl`, secrets scrubbed. Opens the file
    /// for this one event; a case's sink ([`CaseEvents`]) keeps it open instead.
    pub fn append_event(&self, case_id: &str, event: &Event) -> Result<(), ReportError> {
        let mut file = self.open_events(case_id)?;
        self.write_event(&mut file, &self.events_path(case_id), event)
    }

    fn open_events(&self, case_id: &str) -> Result<fs::File, ReportError> {
        let path = self.case_dir(case_id)?.join("events.jsonl");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ReportError::io(&path, e))
    }

    /// One event as one JSON line, written with a single `write` so a crash leaves at
    /// most a torn last line (which the reader skips and counts).
    fn write_event(
        &self,
        file: &mut fs::File,
        path: &Path,
        event: &Event,
    ) -> Result<(), ReportError> {
        let line = serde_json::to_string(event)
            .map_err(|e| ReportError::Harness(format!("cannot serialize an event: {e}")))?;
        let mut line = self.redactor.redact(&line).into_owned();
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(|e| ReportError::io(path, e))
    }

    /// Writes (replaces) the case's console log from bytes, secrets scrubbed.
    pub fn save_console(&self, case_id: &str, bytes: &[u8]) -> Result<PathBuf, ReportError> {
        let path = self.console_log(case_id)?;
        fs::write(&path, self.redactor.redact_bytes(bytes))
            .map_err(|e| ReportError::io(&path, e))?;
        Ok(path)
    }

    /// Reads a case's events back. Lines that do not parse (a run killed mid-write, an
    /// event kind from a newer aplab) are skipped and counted, never fatal.
    pub fn read_events(&self, case_id: &str) -> Result<(Vec<RecordedEvent>, usize), ReportError> {
        let path = self.events_path(case_id);
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(ReportError::io(&path, e)),
        };
        let mut events = Vec::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<RecordedEvent>(line) {
                Ok(e) => events.push(e),
                Err(_) => bad += 1,
            }
        }
        Ok((events, bad))
    }
}

/// The engine's event sink for one case: every event goes to the case's `events.jsonl`
/// as it happens, so a crash loses nothing that was already reported. The file is opened
/// at the first event and kept open (a flow emits over a hundred events; opening the file
/// and checking its directory for each one took five system calls per event and a few
/// percent of the harness's CPU in the fleet benchmark); after a write error it is opened
/// afresh at the next event.
#[derive(Debug)]
pub struct CaseEvents {
    dir: RunDir,
    case_id: String,
    file: std::sync::Mutex<Option<fs::File>>,
}

impl CaseEvents {
    pub fn new(dir: RunDir, case_id: impl Into<String>) -> CaseEvents {
        CaseEvents {
            dir,
            case_id: case_id.into(),
            file: std::sync::Mutex::new(None),
        }
    }

    /// Appends one event, secrets scrubbed.
    pub fn append(&self, event: &Event) -> Result<(), ReportError> {
        // A poisoned lock means a panic mid-write; the file handle itself is still good.
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let file = match slot.as_mut() {
            Some(file) => file,
            None => slot.insert(self.dir.open_events(&self.case_id)?),
        };
        let written = self
            .dir
            .write_event(file, &self.dir.events_path(&self.case_id), event);
        if written.is_err() {
            *slot = None;
        }
        written
    }
}

impl crate::engine::events::EventSink for CaseEvents {
    fn emit(&self, event: Event) {
        // A full disk must not stop the device's run; the report will lack the event and
        // the log says why.
        if let Err(e) = self.append(&event) {
            tracing::warn!(case = %self.case_id, "event not recorded: {e}");
        }
    }
}

/// A name from a scenario or a device as a file name that stays inside its directory.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(SLUG_MAX));
    let mut changed = false;
    for c in name.chars() {
        let mapped = match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '@' => c,
            '=' => '-',
            '[' | ',' => '_',
            ']' => continue,
            _ => {
                changed = true;
                '_'
            }
        };
        if mapped == '_' && out.ends_with('_') {
            changed = true;
            continue;
        }
        out.push(mapped);
    }
    let trimmed = out.trim_matches('_');
    if trimmed.len() != out.len() {
        changed = true;
    }
    let mut out: String = trimmed.chars().take(SLUG_MAX).collect();
    if out.len() < trimmed.len() {
        changed = true;
    }
    if out.is_empty() {
        out.push_str("unnamed");
        changed = true;
    }
    if changed {
        out.push_str(&format!("-{:08x}", fnv1a(name.as_bytes()) as u32));
    }
    out
}

/// FNV-1a: a stable hash (unlike std's, it is the same on every run and machine).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An engine event as read back from `events.jsonl`. The engine's `Event` is made to be
/// written; this is its reading side, tolerant of fields and kinds it does not know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub at: jiff::Timestamp,
    /// Seconds on the engine's lab clock.
    pub lab_time: f64,
    pub device: String,
    pub case: String,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    pub kind: RecordedKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RecordedKind {
    CaseStarted {
        scenario: String,
        #[serde(default)]
        matrix: BTreeMap<String, String>,
        #[serde(default)]
        phases: Vec<String>,
    },
    PhaseStarted {
        #[serde(default)]
        timeout: Option<f64>,
    },
    GapStarted {
        min: f64,
    },
    StepStarted {
        attempt: u32,
        attempts_allowed: u32,
        what: String,
        #[serde(default)]
        origin: String,
        #[serde(default)]
        block: Option<String>,
    },
    PatternMatched {
        source: String,
        outcome: String,
        passed: bool,
        #[serde(default)]
        text: String,
        #[serde(default)]
        captures: BTreeMap<String, String>,
    },
    DeviceStateSeen {
        what: String,
        value: String,
    },
    StepRetried {
        attempt: u32,
        #[serde(default)]
        next_in: f64,
        after_class: String,
        message: String,
    },
    StepFinished {
        status: RecordedStepStatus,
        attempts: u32,
        #[serde(default)]
        attempts_allowed: u32,
        elapsed: f64,
        #[serde(default)]
        timed_out_attempts: u32,
        #[serde(default)]
        stopped_by: Option<String>,
        #[serde(default)]
        captures: BTreeMap<String, String>,
    },
    ArtifactSaved {
        kind: String,
        path: PathBuf,
        bytes: u64,
        #[serde(default)]
        truncated: bool,
    },
    ArtifactFailed {
        kind: String,
        message: String,
    },
    PowerReadBackUnavailable {
        reason: String,
    },
    KeptOnFailure {
        #[serde(default)]
        how_to_attach: Vec<serde_json::Value>,
    },
    PhaseFinished {
        status: RecordedPhaseStatus,
        elapsed: f64,
    },
    CaseFinished {
        verdict: RecordedVerdict,
        #[serde(default)]
        tolerated_failures: usize,
    },
    /// An event kind this aplab does not know.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordedStepStatus {
    Passed,
    Failed {
        class: String,
        #[serde(default)]
        code: Option<String>,
        message: String,
        #[serde(default)]
        hint: Option<String>,
    },
    Skipped {
        #[serde(default)]
        reason: String,
    },
    Interrupted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordedPhaseStatus {
    Passed,
    Failed { step: String, class: String },
    Kept { step: String, class: String },
    Interrupted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum RecordedVerdict {
    Passed,
    Failed {
        class: String,
        phase: String,
        step: String,
        #[serde(default)]
        code: Option<String>,
        message: String,
    },
    Interrupted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_never_leave_the_directory() {
        let hostile = [
            "..",
            ".",
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "nul\0byte",
            "bell\x07\x1b[31m",
            "",
            "/",
            "C:\\Windows",
            "ünïcødé…",
            &"x".repeat(5000),
        ];
        for name in hostile {
            let s = slug(name);
            assert!(
                !s.is_empty() && s.len() <= SLUG_MAX + 9,
                "{name:?} -> {s:?}"
            );
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_@".contains(c)),
                "{name:?} -> {s:?}"
            );
            assert_ne!(s, "..");
            let p = Path::new("/run").join(&s);
            assert_eq!(p.parent(), Some(Path::new("/run")), "{name:?} -> {s:?}");
        }
    }

    /// Every kind of engine event, written the engine's way, reads back as the same kind
    /// (catches the two sides drifting apart).
    #[test]
    fn every_engine_event_reads_back() {
        use crate::engine::events::{
            AttachRoute, CaseVerdict, EventKind, EventSink, PhaseStatus, StepStatus, StopReason,
        };
        use crate::model::scenario::{FailureClass, Source};
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path(), "r1", Redactor::new(["s3cret-pass"])).unwrap();
        let sink = CaseEvents::new(dir.clone(), "c@d");
        let kinds = vec![
            EventKind::CaseStarted {
                scenario: "s".into(),
                matrix: [("join".to_string(), "entra".to_string())].into(),
                phases: vec!["technician".into()],
            },
            EventKind::PhaseStarted { timeout: None },
            EventKind::GapStarted {
                min: Duration::from_secs(5400),
            },
            EventKind::StepStarted {
                attempt: 1,
                attempts_allowed: 2,
                what: "wait on the screen for success".into(),
                origin: "f.yaml:1:1".into(),
                block: None,
            },
            EventKind::PatternMatched {
                source: Source::Screen,
                outcome: "success".into(),
                passed: true,
                text: "typed s3cret-pass".into(),
                captures: BTreeMap::new(),
            },
            EventKind::DeviceStateSeen {
                what: "tpm family".into(),
                value: "2.0".into(),
            },
            EventKind::StepRetried {
                attempt: 1,
                next_in: Duration::from_secs(5),
                after_class: FailureClass::Timeout,
                message: "m".into(),
            },
            EventKind::StepFinished {
                status: StepStatus::Failed {
                    class: FailureClass::Product,
                    code: Some("0x80180014".into()),
                    message: "m".into(),
                    hint: None,
                },
                attempts: 2,
                attempts_allowed: 2,
                elapsed: Duration::from_millis(1500),
                timed_out_attempts: 1,
                stopped_by: Some(StopReason::NotRetryable),
                captures: BTreeMap::new(),
            },
            EventKind::ArtifactSaved {
                kind: "screenshot".into(),
                path: "/x.png".into(),
                bytes: 3,
                truncated: false,
            },
            EventKind::ArtifactFailed {
                kind: "dsregcmd".into(),
                message: "m".into(),
            },
            EventKind::PowerReadBackUnavailable { reason: "r".into() },
            EventKind::KeptOnFailure {
                how_to_attach: vec![AttachRoute {
                    capability: "shell".into(),
                    transport: "ssh".into(),
                    address: "127.0.0.1:22".into(),
                    command: None,
                }],
            },
            EventKind::PhaseFinished {
                status: PhaseStatus::Kept {
                    step: "s".into(),
                    class: FailureClass::Product,
                },
                elapsed: Duration::from_secs(1),
            },
            EventKind::CaseFinished {
                verdict: CaseVerdict::Failed {
                    class: FailureClass::Product,
                    phase: "p".into(),
                    step: "s".into(),
                    code: None,
                    message: "m".into(),
                },
                tolerated_failures: 0,
            },
        ];
        let count = kinds.len();
        for kind in kinds {
            sink.emit(Event {
                at: jiff::Timestamp::now(),
                lab_time: Duration::from_secs(1),
                device: "d".into(),
                case: "s".into(),
                phase: Some("technician".into()),
                step: None,
                kind,
            });
        }
        let (events, bad) = dir.read_events("c@d").unwrap();
        assert_eq!((events.len(), bad), (count, 0));
        assert!(
            !events.iter().any(|e| matches!(e.kind, RecordedKind::Other)),
            "{events:?}"
        );
        let text = std::fs::read_to_string(dir.events_path("c@d")).unwrap();
        assert!(!text.contains("s3cret-pass") && text.contains("typed [redacted]"));
        assert!(matches!(
            &events[7].kind,
            RecordedKind::StepFinished { status: RecordedStepStatus::Failed { code: Some(c), .. }, elapsed, .. }
                if c == "0x80180014" && *elapsed == 1.5
        ));
    }

    #[test]
    fn hostile_case_ids_stay_inside_the_run_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path(), "../../escape", Redactor::default()).unwrap();
        assert!(dir.root().starts_with(tmp.path()));
        for id in ["../../../etc/x", "/abs/path", "a\0b", "..", "\u{1b}[2J"] {
            let case = dir.case_dir(id).unwrap();
            assert_eq!(case.parent().unwrap(), dir.root().join("cases"), "{id:?}");
        }
    }

    #[test]
    fn slugs_are_readable_and_distinct() {
        assert_eq!(
            slug("preprovision[join=entra]@pc01"),
            "preprovision_join-entra@pc01"
        );
        assert_ne!(slug("a/b"), slug("a_b"));
        assert_ne!(slug("a/b"), slug("a:b"));
        assert_ne!(slug(&"y".repeat(300)), slug(&"y".repeat(301)));
        assert_eq!(slug("x/y"), slug("x/y"));
    }
}
