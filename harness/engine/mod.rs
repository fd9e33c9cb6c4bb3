//! The engine: runs one scenario case on one device, phase by phase, step by step.
//!
//! It owns the timing rules (per-attempt step timeouts, phase deadlines, retries with
//! doubling backoff that say when a deadline cut them short), classifies every failure
//! (product, infrastructure, timeout, config, harness), and reports everything as
//! [`events::Event`]s. It never prints: reporters subscribe to the events.
//!
//! The fleet runner runs a scenario's phases separately (technician phase, park the
//! device for the gap, user phase, maybe in another process), so [`run_phase`] stands on
//! its own and the state that crosses phases ([`CaseState`]) can be saved and restored.
//! [`run_case`] runs the selected phases in one go and waits out gaps on the clock.

pub mod clock;
pub mod events;
pub mod keyed;
pub mod outcome;

mod attach;
mod collect;
mod expect;
mod render;
mod retry;
mod run;
mod screen;
mod shell;
mod step;
mod tenant;
mod tpm;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::device::DeviceHandle;
use crate::model::inventory::{Device, TenantConfig};
use crate::model::scenario::{Case, Scenario};

pub use clock::{Clock, LabTime, ScaledClock, WallClock};
pub use events::{
    AttachRoute, CaseVerdict, Event, EventKind, EventSink, PhaseStatus, StepStatus, StopReason,
};
pub use outcome::{CaseResult, CaseState, PhaseResult, StepResult};
pub use run::{UnknownPhase, case_id, finish_case, run_case, run_phase, start_case};

/// Decodes the QR code in a PNG screenshot to its text payload.
pub type QrDecoder = Arc<dyn Fn(&[u8]) -> Result<String, String> + Send + Sync>;

/// Everything needed to run one case on one device.
pub struct CaseRun<'a> {
    pub scenario: &'a Scenario,
    /// The matrix values of this case.
    pub case: Case,
    pub device: &'a Device,
    pub tenant: Option<&'a TenantConfig>,
    pub handle: &'a DeviceHandle,
    pub clock: Arc<dyn Clock>,
    pub events: Arc<dyn EventSink>,
    pub options: RunOptions,
    /// Cancelled on Ctrl-C: the running step stops at once and the result says
    /// `Interrupted`.
    pub cancel: CancellationToken,
    /// Reads the QR code on a screenshot (screen checks with `qr:` need it).
    pub qr_decoder: Option<QrDecoder>,
}

/// Which phases [`run_case`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PhaseSelection {
    #[default]
    All,
    /// These phases, in scenario order.
    Named(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop at the first failed step and leave the device as it is (no further steps, no
    /// diagnostics); a `KeptOnFailure` event says how to attach to it.
    pub keep_on_failure: bool,
    pub phases: PhaseSelection,
    /// Per-attempt timeout of a step that gives none. Steps that wait by nature (a fixed
    /// wait, a wait-until, a tenant wait) get their own wait on top of this.
    pub default_step_timeout: Duration,
    /// How often the screen is read while waiting for a pattern on it (lab time).
    pub screen_poll: Duration,
    /// How often the tenant is asked while waiting for a state (lab time).
    pub tenant_poll: Duration,
    pub diagnostics: DiagnosticLimits,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            keep_on_failure: false,
            phases: PhaseSelection::All,
            default_step_timeout: Duration::from_secs(30 * 60),
            screen_poll: Duration::from_secs(5),
            tenant_poll: Duration::from_secs(30),
            diagnostics: DiagnosticLimits::default(),
        }
    }
}

/// Bounds on collecting diagnostics, so a broken device cannot hang or flood a run.
#[derive(Debug, Clone)]
pub struct DiagnosticLimits {
    /// Per diagnostic (lab time).
    pub timeout: Duration,
    /// Cap for text output (command output, console log excerpt).
    pub text_max_bytes: u64,
    /// Cap for files fetched from the device and screenshots.
    pub file_max_bytes: u64,
}

impl Default for DiagnosticLimits {
    fn default() -> Self {
        DiagnosticLimits {
            timeout: Duration::from_secs(10 * 60),
            text_max_bytes: 4 * 1024 * 1024,
            file_max_bytes: 256 * 1024 * 1024,
        }
    }
}
