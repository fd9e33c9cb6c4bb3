//! The validated scenario: what to do to a device, phase by phase, step by step.
//! Reusable blocks (`use:`) are already expanded here; each step remembers where it came
//! from so a failure points at the scenario line and the block line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::inventory::Capability;

/// A scenario as read from `scenarios/NAME.yaml`, blocks expanded, matrix not yet expanded.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub source: PathBuf,
    pub kind: ScenarioKind,
    /// Higher runs first when devices are scarce.
    pub priority: i32,
    /// Selectors over device facts and tags; all must hold.
    pub requires: Vec<Requirement>,
    /// Matrix axes, e.g. `join: [entra, hybrid]`; the cases are the cross product.
    pub matrix: BTreeMap<String, Vec<String>>,
    /// Scenario variables (templates), rendered per case.
    pub vars: BTreeMap<String, Template>,
    pub phases: Vec<Phase>,
    /// A case that hit an infrastructure failure may be retried on another matching device.
    pub retry_on_other_device: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioKind {
    /// An ordinary test.
    Test,
    /// A device health check (LAVA-style): failing it marks the device bad.
    Health,
}

/// One condition over a device fact, optionally only for some matrix cases.
#[derive(Debug, Clone, Serialize)]
pub struct Requirement {
    /// Fact name as [`crate::model::inventory::Device::fact`] knows it.
    pub fact: String,
    pub test: FactTest,
    /// Applies only to matrix cases with these values, e.g. `join: hybrid`.
    pub when: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub enum FactTest {
    /// The fact equals one of these (case-insensitive).
    OneOf(Vec<String>),
    /// The fact equals none of these.
    NoneOf(Vec<String>),
    /// The fact is present (true) or absent (false).
    Present(bool),
}

/// One matrix case: axis -> value.
pub type Case = BTreeMap<String, String>;

/// A phase of the process (technician flow, user flow, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    /// The gap the process demands before this phase starts, counted from the end of the
    /// previous phase. The device is parked (still leased) while it runs.
    pub gap: Option<Gap>,
    /// Deadline for the whole phase.
    pub timeout: Option<Duration>,
    /// How long the phase usually takes (for `aplab plan`); not a deadline.
    pub expect_duration: Option<Duration>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    /// At least this long (90m for the token refresh).
    pub min: Duration,
    /// At most this long (180d for IME certificates).
    pub max: Option<Duration>,
}

/// A string that may hold tera expressions over `device`, `tenant`, `matrix`, `vars`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Template(pub String);

/// Where a step was written, for messages.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    /// The block it was expanded from, if any.
    pub block: Option<String>,
    /// Where that block was used (`use:` in the scenario), if it came from a block.
    pub used_at: Option<Box<Origin>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Human-readable name, unique within the phase.
    pub name: String,
    pub origin: Origin,
    pub timeout: Option<Duration>,
    pub retry: Retry,
    /// Run only for matrix cases with these values.
    pub when: BTreeMap<String, String>,
    /// A failure of this step is recorded but does not stop the phase.
    pub continue_on_failure: bool,
    pub action: Action,
}

/// How often and how a failed step is tried again.
#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    /// Total attempts including the first (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Only failures of these classes are retried.
    pub on: Vec<FailureClass>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            backoff: Duration::from_secs(5),
            on: vec![FailureClass::Infrastructure, FailureClass::Timeout],
        }
    }
}

/// Why a step failed. Decides the exit code, the report and whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// The device or the flow failed (a failure screen with a code, a false assertion).
    Product,
    /// Lab equipment failed: power, console, keyboard, network.
    Infrastructure,
    /// The device stopped progressing.
    Timeout,
    /// The scenario or inventory asks for something impossible.
    Config,
    /// aplab itself is wrong.
    Harness,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Product => "product",
            FailureClass::Infrastructure => "infrastructure",
            FailureClass::Timeout => "timeout",
            FailureClass::Config => "config",
            FailureClass::Harness => "harness",
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, Serialize)]
pub enum Action {
    Power(PowerAction),
    /// Key presses, e.g. the Windows key five times.
    Keys(Vec<KeyPress>),
    /// Typed text (rendered from a template). `secret` keeps it out of every log.
    Text {
        text: Template,
        secret: bool,
    },
    /// Wait for one of several outcomes on the console or the screen.
    Expect(Expect),
    /// Check fields shown on the screen and the QR code's payload.
    ScreenCheck(ScreenCheck),
    /// Run a command over the shell and check what it says.
    Shell(ShellStep),
    /// Check the TPM.
    Tpm(Vec<TpmCheck>),
    /// An operation or expectation on the tenant (Intune via Graph).
    Tenant(TenantOp),
    Wait(Wait),
    /// Collect diagnostics into the run directory.
    Collect(Vec<Diagnostic>),
}

impl Action {
    /// The capabilities a device needs for this action.
    pub fn needs(&self) -> Vec<Capability> {
        match self {
            Action::Power(_) => vec![Capability::Power],
            Action::Keys(_) | Action::Text { .. } => vec![Capability::Keyboard],
            Action::Expect(e) => vec![e.source.capability()],
            Action::ScreenCheck(_) => vec![Capability::Screen],
            Action::Shell(_) => vec![Capability::Shell],
            Action::Tpm(_) => vec![Capability::Tpm],
            Action::Tenant(_) => vec![Capability::Tenant],
            Action::Wait(Wait::Fixed(_)) => vec![],
            Action::Wait(Wait::Until { check, .. }) => check.needs(),
            Action::Collect(items) => {
                let mut caps: Vec<Capability> = items.iter().filter_map(|d| d.needs()).collect();
                caps.sort();
                caps.dedup();
                caps
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    /// Read the state back and require it to be this.
    Expect(PowerState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

/// One key (PiKVM / W3C `KeyboardEvent.code` names: `MetaLeft`, `Enter`, `Tab`,
/// `ArrowDown`, `KeyA`, `F10`, ...), held with modifiers, pressed `times` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyPress {
    pub key: String,
    pub modifiers: Vec<String>,
    pub times: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Console,
    Screen,
}

impl Source {
    pub fn capability(self) -> Capability {
        match self {
            Source::Console => Capability::Console,
            Source::Screen => Capability::Screen,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Expect {
    pub source: Source,
    /// The first outcome whose pattern matches decides the step.
    pub any_of: Vec<Outcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// e.g. `success`, `failure`.
    pub name: String,
    pub pattern: Pattern,
    /// What this outcome means for the step.
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub enum Pattern {
    /// Literal text (template rendered first).
    Text(Template),
    /// A regular expression; named groups become captures (e.g. `code`).
    Regex(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Pass,
    Fail(FailureClass),
}

#[derive(Debug, Clone, Serialize)]
pub struct ScreenCheck {
    /// Field label as shown (`profile`, `organization`, `user`) -> expected value.
    pub fields: BTreeMap<String, Template>,
    /// Keys of the QR payload (JSON) -> expected value, e.g. `ZtdId`.
    pub qr: BTreeMap<String, Template>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShellStep {
    /// Program to run; never a template, so variables cannot change what runs.
    pub program: String,
    /// Arguments; each is one argument after rendering, quoted for the remote shell.
    pub args: Vec<Template>,
    /// Expected exit status (None = any).
    pub exit: Option<i32>,
    /// `Key : Value` lines of the output (dsregcmd style) that must match.
    pub expect: BTreeMap<String, Template>,
    /// Regexes stdout must match.
    pub stdout_matches: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TpmCheck {
    /// TPM family 2.0.
    Family,
    /// Manufacturer matches the inventory's expectation.
    Manufacturer,
    /// Firmware matches the inventory's expectation.
    Firmware,
    /// EK certificate present in NV and chaining to the configured CA.
    EkCertificate,
    /// An AK is created and a quote over a fresh nonce verifies.
    Attestation,
}

#[derive(Debug, Clone, Serialize)]
pub enum TenantOp {
    /// Delete the managed-device record or allow next enrollment, so pre-provisioning
    /// can run again on this device.
    ResetRecord {
        method: ResetMethod,
    },
    /// Wait until the deployment profile is assigned.
    WaitProfileAssigned {
        deadline: Duration,
    },
    /// Set the group tag (which decides the Autopilot profile, e.g. Entra or hybrid join).
    SetGroupTag {
        tag: Template,
    },
    AssignUser {
        user: Template,
    },
    UnassignUser,
    /// Wait for complianceState to settle, then require one of these states.
    Compliance {
        expect: Vec<String>,
        deadline: Duration,
    },
    /// The QR code's ZtdId equals the Autopilot identity's id.
    MatchQr,
    /// The identity's enrollment state is one of these.
    EnrollmentState {
        expect: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetMethod {
    Delete,
    AllowNextEnrollment,
}

#[derive(Debug, Clone, Serialize)]
pub enum Wait {
    Fixed(Duration),
    /// Repeat `check` every `interval` until it passes or `deadline` passes.
    Until {
        check: Box<Action>,
        deadline: Duration,
        interval: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Diagnostic {
    /// `mdmdiagnosticstool -zip` fetched over SFTP.
    MdmDiagnostics,
    Dsregcmd,
    GetTpm,
    /// Autopilot-related event channels.
    EventLogs,
    Console,
    Screenshot,
}

impl Diagnostic {
    pub fn needs(self) -> Option<Capability> {
        match self {
            Diagnostic::MdmDiagnostics
            | Diagnostic::Dsregcmd
            | Diagnostic::GetTpm
            | Diagnostic::EventLogs => Some(Capability::Shell),
            Diagnostic::Console => Some(Capability::Console),
            Diagnostic::Screenshot => Some(Capability::Screen),
        }
    }
}

impl Scenario {
    /// All matrix cases (the cross product of the axes, in axis order). One empty case
    /// when there is no matrix.
    pub fn cases(&self) -> Vec<Case> {
        let mut cases = vec![Case::new()];
        for (axis, values) in &self.matrix {
            let mut next = Vec::with_capacity(cases.len() * values.len());
            for case in &cases {
                for value in values {
                    let mut c = case.clone();
                    c.insert(axis.clone(), value.clone());
                    next.push(c);
                }
            }
            cases = next;
        }
        cases
    }
}
