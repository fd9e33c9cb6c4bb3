//! What a run produced: per step, per phase, per case. The same facts as the events,
//! gathered for callers that want the result rather than the stream (the fleet runner,
//! the ledger).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::scenario::FailureClass;

use super::events::{CaseVerdict, PhaseStatus, StepStatus, StopReason};

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub attempts_allowed: u32,
    pub timed_out_attempts: u32,
    pub stopped_by: Option<StopReason>,
    pub elapsed: Duration,
    pub captures: BTreeMap<String, String>,
    /// The step's failure does not fail the phase.
    pub continue_on_failure: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub status: PhaseStatus,
    pub steps: Vec<StepResult>,
    pub elapsed: Duration,
}

impl PhaseResult {
    /// The failure that stopped the phase: its class and a message naming the step.
    /// `None` when the phase passed (tolerated failures do not count) or was interrupted.
    pub fn failure(&self) -> Option<(FailureClass, String)> {
        let step = match &self.status {
            PhaseStatus::Failed { step, .. } | PhaseStatus::Kept { step, .. } => step,
            PhaseStatus::Passed | PhaseStatus::Interrupted => return None,
        };
        self.steps
            .iter()
            .find(|s| &s.name == step)
            .and_then(|s| match &s.status {
                StepStatus::Failed { class, message, .. } => {
                    Some((*class, format!("step `{}`: {message}", s.name)))
                }
                _ => None,
            })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// `scenario[axis=value,...]`.
    pub case: String,
    pub device: String,
    pub verdict: CaseVerdict,
    pub phases: Vec<PhaseResult>,
    /// The device was left at a failed step (keep-on-failure).
    pub kept: bool,
    /// Failed steps marked `continue_on_failure`.
    pub tolerated_failures: usize,
}

/// Facts one step learns and a later step (maybe in a later phase, maybe in another
/// process after a restart) needs. The fleet runner stores it with the parked case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseState {
    /// The payload of the last QR code a screen check read, key -> value.
    pub last_qr: Option<BTreeMap<String, String>>,
}
