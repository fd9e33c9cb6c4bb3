//! The fleet runner: many devices at once, one case per device at a time, leases in the
//! ledger, long waits parked without holding a thread, crash-safe resume.
//!
//! The runner knows jobs (a scenario case bound to a device) and phases; how a phase
//! is carried out on a device is the [`PhaseRunner`]'s business (the engine, in
//! production). Every state change goes to the ledger before the runner acts on it,
//! so `kill -9` at any moment leaves a ledger that `resume` can finish from.

pub mod drive;
pub mod events;
pub mod plan;
pub mod runner;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::scenario::{Case, FailureClass, Gap};

pub use events::FleetEvent;
pub use runner::{Fleet, FleetOptions, RunSummary};

/// A scenario case bound to a device.
#[derive(Debug, Clone)]
pub struct Job {
    /// `scenario[axis=value,...]@device`, unique within a run.
    pub case_id: String,
    pub scenario: String,
    pub case: Case,
    pub device_id: String,
    pub priority: i32,
    /// A health check: failing it marks the device bad; it runs before other jobs.
    pub health: bool,
    pub phases: Vec<PhasePlan>,
    /// Other devices this case may move to after an infrastructure failure
    /// (empty unless the scenario allows it).
    pub alternatives: Vec<String>,
}

/// What the runner needs to know of a phase.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    pub name: String,
    /// The gap before this phase, in process time (lab time on the virtual lab).
    pub gap: Option<Gap>,
    /// How long the phase is expected to take, for ordering and progress.
    pub estimate: Duration,
}

impl Job {
    /// The work this job keeps its device busy for, gaps included.
    pub fn length(&self) -> Duration {
        self.phases
            .iter()
            .map(|p| p.estimate + p.gap.as_ref().map_or(Duration::ZERO, |g| g.min))
            .sum()
    }

    pub fn case_id_for(scenario: &str, case: &Case, device_id: &str) -> String {
        if case.is_empty() {
            format!("{scenario}@{device_id}")
        } else {
            let axes: Vec<String> = case.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{scenario}[{}]@{device_id}", axes.join(","))
        }
    }
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseOutcome {
    Passed,
    Failed {
        class: FailureClass,
        message: String,
    },
    /// Stopped by Ctrl-C: the case is neither passed nor failed and resumes later.
    Interrupted,
}

/// Carries out one phase of a job on its device (the engine, in production).
#[async_trait]
pub trait PhaseRunner: Send + Sync {
    /// Runs phase `index` of `job` on `device_id` (which differs from `job.device_id`
    /// when the case moved to another device).
    async fn run_phase(
        &self,
        job: &Job,
        index: usize,
        device_id: &str,
        cancel: CancellationToken,
    ) -> PhaseOutcome;
}

/// Converts process time (lab time on the virtual lab) into wall time: on a virtual
/// lab running `scale` times faster, a 90-minute gap is 90/scale minutes of wall time.
#[derive(Debug, Clone, Copy)]
pub struct TimeScale(pub f64);

impl TimeScale {
    pub fn wall(self, process: Duration) -> Duration {
        if self.0.is_finite() && self.0 > 0.0 {
            process.div_f64(self.0)
        } else {
            process
        }
    }
}

pub type SharedRunner = Arc<dyn PhaseRunner>;
