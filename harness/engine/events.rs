//! What the engine reports while it runs. Reporters (terminal, JUnit, HTML, JSON) see
//! nothing else, so every fact a report shows is carried here; the engine never formats
//! output. Secrets never enter an event: they are redacted where they are produced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::model::scenario::{FailureClass, Source};

/// One thing that happened, with where and when.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Wall-clock time the event was made.
    pub at: jiff::Timestamp,
    /// Lab time on the engine's clock (seconds since the clock started).
    #[serde(serialize_with = "seconds")]
    pub lab_time: Duration,
    pub device: String,
    /// Scenario name plus matrix values, e.g. `preprovision[join=entra]`.
    pub case: String,
    pub phase: Option<String>,
    pub step: Option<String>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    CaseStarted {
        scenario: String,
        matrix: BTreeMap<String, String>,
        phases: Vec<String>,
    },
    PhaseStarted {
        #[serde(serialize_with = "opt_seconds")]
        timeout: Option<Duration>,
    },
    /// The caller asked the engine to wait out a phase's gap before starting it.
    GapStarted {
        #[serde(serialize_with = "seconds")]
        min: Duration,
    },
    StepStarted {
        attempt: u32,
        attempts_allowed: u32,
        /// What the step does, in a few words (never a secret).
        what: String,
        /// `file:line:column` of the step in the scenario.
        origin: String,
        block: Option<String>,
    },
    PatternMatched {
        source: Source,
        /// The outcome's name (`success`, `failure`, ...).
        outcome: String,
        passed: bool,
        text: String,
        captures: BTreeMap<String, String>,
    },
    /// Something read from the device: power state, screen title, join state, TPM facts.
    DeviceStateSeen {
        what: String,
        value: String,
    },
    StepRetried {
        /// The attempt that failed.
        attempt: u32,
        #[serde(serialize_with = "seconds")]
        next_in: Duration,
        after_class: FailureClass,
        message: String,
    },
    StepFinished {
        status: StepStatus,
        attempts: u32,
        attempts_allowed: u32,
        #[serde(serialize_with = "seconds")]
        elapsed: Duration,
        /// How many attempts ran into their deadline.
        timed_out_attempts: u32,
        /// Why no further attempt was made although some were left.
        stopped_by: Option<StopReason>,
        /// Everything named capture groups found, e.g. `elapsed`, `code`.
        captures: BTreeMap<String, String>,
    },
    ArtifactSaved {
        kind: String,
        path: PathBuf,
        bytes: u64,
        /// The artifact was cut at its size cap.
        truncated: bool,
    },
    /// A diagnostic could not be collected; the run goes on.
    ArtifactFailed {
        kind: String,
        message: String,
    },
    PowerReadBackUnavailable {
        reason: String,
    },
    /// Keep-on-failure: the device was left as it is; how to get at it.
    KeptOnFailure {
        how_to_attach: Vec<AttachRoute>,
    },
    PhaseFinished {
        status: PhaseStatus,
        #[serde(serialize_with = "seconds")]
        elapsed: Duration,
    },
    CaseFinished {
        verdict: CaseVerdict,
        /// Failed steps marked `continue_on_failure`.
        tolerated_failures: usize,
    },
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed {
        class: FailureClass,
        /// Error code the device or service showed (`0x80180014`, HTTP 403).
        code: Option<String>,
        message: String,
        /// What to check.
        hint: Option<String>,
    },
    Skipped {
        reason: String,
    },
    Interrupted,
}

impl StepStatus {
    pub fn failure_class(&self) -> Option<FailureClass> {
        match self {
            StepStatus::Failed { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// Why attempts stopped while some were still allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    PhaseTimeout,
    Interrupted,
    /// The failure's class is not in the step's `retry.on`.
    NotRetryable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PhaseStatus {
    Passed,
    Failed {
        step: String,
        class: FailureClass,
    },
    /// The device was left at the failed step (keep-on-failure).
    Kept {
        step: String,
        class: FailureClass,
    },
    Interrupted,
}

/// The case's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum CaseVerdict {
    Passed,
    Failed {
        class: FailureClass,
        phase: String,
        step: String,
        code: Option<String>,
        message: String,
    },
    Interrupted,
}

impl CaseVerdict {
    pub fn passed(&self) -> bool {
        matches!(self, CaseVerdict::Passed)
    }
}

/// One way to reach a device kept on failure, e.g. the shell over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachRoute {
    /// `console`, `shell`, `screen`, `power`.
    pub capability: String,
    /// Transport, e.g. `serial`, `tcp`, `rfc2217`, `ssh`, `pikvm`, `redfish`.
    pub transport: String,
    /// Where: a device path, `host:port` or URL.
    pub address: String,
    /// A command that attaches, when there is a usual one (e.g. `ssh -p 22 ...`).
    pub command: Option<String>,
}

/// Where events go. A channel sender is one; tests may collect into a Vec.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<Event> {
    fn emit(&self, event: Event) {
        // Nobody listening is not the engine's problem: the run goes on.
        let _ = self.send(event);
    }
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
