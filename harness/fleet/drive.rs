//! The production [`PhaseRunner`]: builds the device's backends from the inventory and
//! lets the engine run the phase, with its events going to the case's event log, the
//! ledger's step results and the terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Job, PhaseOutcome, PhaseRunner};
use crate::device::build::{ControllerLocks, Wiring, build};
use crate::engine::{
    CaseRun, CaseState, Clock, Event, EventKind, EventSink, PhaseSelection, PhaseStatus, QrDecoder,
    RunOptions, StepStatus,
};
use crate::model::inventory::Inventory;
use crate::model::scenario::{FailureClass, Scenario};
use crate::report::rundir::{CaseEvents, RunDir};
use crate::store::{Ledger, StepRecord};

/// Runs phases on real (or virtual-lab) devices through the engine.
pub struct EngineRunner {
    pub inventory: Arc<Inventory>,
    pub scenarios: HashMap<String, Arc<Scenario>>,
    pub run_dir: Arc<RunDir>,
    pub ledger: Arc<dyn Ledger>,
    pub clock: Arc<dyn Clock>,
    pub options: RunOptions,
    pub locks: ControllerLocks,
    /// Engine events, for the terminal.
    pub progress: Option<mpsc::UnboundedSender<Event>>,
    /// What crosses phases of one case (e.g. the QR payload), by case id.
    states: Mutex<HashMap<String, CaseState>>,
}

impl EngineRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inventory: Arc<Inventory>,
        scenarios: &[Scenario],
        run_dir: Arc<RunDir>,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        options: RunOptions,
        progress: Option<mpsc::UnboundedSender<Event>>,
    ) -> Self {
        EngineRunner {
            inventory,
            scenarios: scenarios
                .iter()
                .map(|s| (s.name.clone(), Arc::new(s.clone())))
                .collect(),
            run_dir,
            ledger,
            clock,
            options,
            locks: ControllerLocks::default(),
            progress,
            states: Mutex::new(HashMap::new()),
        }
    }
}

fn qr_decoder() -> QrDecoder {
    Arc::new(|png: &[u8]| {
        crate::device::screen::qr::decode(png)
            .map_err(|e| e.message)?
            .into_iter()
            .next()
            .ok_or_else(|| "no QR code on the screen".to_string())
    })
}

#[async_trait]
impl PhaseRunner for EngineRunner {
    async fn run_phase(
        &self,
        job: &Job,
        index: usize,
        device_id: &str,
        cancel: CancellationToken,
    ) -> PhaseOutcome {
        let harness = |message: String| PhaseOutcome::Failed {
            class: FailureClass::Harness,
            message,
        };
        let Some(scenario) = self.scenarios.get(&job.scenario) else {
            return harness(format!("scenario {} is not loaded", job.scenario));
        };
        let Some(device) = self.inventory.device(device_id) else {
            return harness(format!("device {device_id} is not in the inventory"));
        };
        let Some(phase) = scenario.phases.get(index) else {
            return harness(format!("scenario {} has no phase {index}", scenario.name));
        };
        let case_dir = match self.run_dir.case_dir(&job.case_id) {
            Ok(dir) => dir,
            Err(e) => {
                return PhaseOutcome::Failed {
                    class: FailureClass::Infrastructure,
                    message: e.to_string(),
                };
            }
        };
        let sink = Arc::new(RunSink {
            events: CaseEvents::new((*self.run_dir).clone(), job.case_id.clone()),
            run_dir: self.run_dir.clone(),
            case_id: job.case_id.clone(),
            ledger: self.ledger.clone(),
            progress: self.progress.clone(),
            started: Mutex::new(HashMap::new()),
        });
        // Backends are built per phase: a phase may run in another process than the
        // last one (after a resume), and a parked device holds no connections.
        let handle = match build(device, &self.inventory, &Wiring { case_dir }, &self.locks) {
            Ok(h) => h,
            Err(e) => {
                let message = match &e.hint {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message.clone(),
                };
                return PhaseOutcome::Failed {
                    class: e.class,
                    message,
                };
            }
        };
        let tenant = device
            .tenant
            .as_ref()
            .and_then(|t| self.inventory.tenants.get(t));
        let mut options = self.options.clone();
        options.phases = PhaseSelection::Named(vec![phase.name.clone()]);
        let run = CaseRun {
            scenario,
            case: job.case.clone(),
            device,
            tenant,
            handle: &handle,
            clock: self.clock.clone(),
            events: sink,
            options,
            cancel,
            qr_decoder: Some(qr_decoder()),
        };
        if index == 0 {
            crate::engine::start_case(&run);
        }
        let mut state = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.case_id)
            .unwrap_or_default();
        let result = match crate::engine::run_phase(&run, &mut state, &phase.name).await {
            Ok(result) => result,
            Err(e) => return harness(e.to_string()),
        };
        let last = index + 1 == scenario.phases.len();
        let outcome = match &result.status {
            PhaseStatus::Passed => PhaseOutcome::Passed,
            PhaseStatus::Interrupted => PhaseOutcome::Interrupted,
            PhaseStatus::Failed { .. } | PhaseStatus::Kept { .. } => {
                let (class, message) = result
                    .failure()
                    .unwrap_or((FailureClass::Harness, "phase failed".into()));
                PhaseOutcome::Failed { class, message }
            }
        };
        if last || !matches!(outcome, PhaseOutcome::Passed) {
            if !matches!(outcome, PhaseOutcome::Interrupted) {
                crate::engine::finish_case(&run, vec![result]);
            }
        } else {
            self.states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.case_id.clone(), state);
        }
        outcome
    }
}

/// Where a case's engine events go: its event log in the run directory, step results in
/// the ledger, and the terminal.
struct RunSink {
    events: CaseEvents,
    run_dir: Arc<RunDir>,
    case_id: String,
    ledger: Arc<dyn Ledger>,
    progress: Option<mpsc::UnboundedSender<Event>>,
    /// step -> when its current attempt started (ms)
    started: Mutex<HashMap<String, i64>>,
}

impl EventSink for RunSink {
    fn emit(&self, event: Event) {
        // The event log is the record reports are built from; a write failure is logged
        // and the run goes on (the ledger still has the step results).
        if let Err(e) = self.events.append(&event) {
            tracing::warn!("cannot write the event log of {}: {e}", self.case_id);
        }
        let at = event.at.as_millisecond();
        let step = event.step.clone().unwrap_or_default();
        let phase = event.phase.clone().unwrap_or_default();
        let record = |attempt: u32,
                      status: &str,
                      class: Option<FailureClass>,
                      code: Option<String>,
                      message: Option<String>| {
            let started = self
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&step)
                .copied()
                .unwrap_or(at);
            StepRecord {
                run_id: self.run_dir.run_id().to_string(),
                case_id: self.case_id.clone(),
                phase: phase.clone(),
                step: step.clone(),
                attempt,
                status: status.into(),
                class: class.map(|c| c.as_str().to_string()),
                code,
                message: message.map(|m| self.run_dir.redactor().redact(&m).into_owned()),
                started_at: started,
                elapsed_ms: at - started,
            }
        };
        let step_record = match &event.kind {
            EventKind::StepStarted { .. } => {
                self.started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(step.clone(), at);
                None
            }
            EventKind::StepRetried {
                attempt,
                after_class,
                message,
                ..
            } => Some(record(
                *attempt,
                "failed",
                Some(*after_class),
                None,
                Some(message.clone()),
            )),
            EventKind::StepFinished {
                status, attempts, ..
            } => Some(match status {
                StepStatus::Passed => record(*attempts, "passed", None, None, None),
                StepStatus::Failed {
                    class,
                    code,
                    message,
                    ..
                } => record(
                    *attempts,
                    "failed",
                    Some(*class),
                    code.clone(),
                    Some(message.clone()),
                ),
                StepStatus::Skipped { reason } => {
                    record(*attempts, "skipped", None, None, Some(reason.clone()))
                }
                StepStatus::Interrupted => record(*attempts, "interrupted", None, None, None),
            }),
            _ => None,
        };
        if let Some(r) = step_record
            && let Err(e) = self.ledger.record_step(&r)
        {
            tracing::warn!(
                "cannot record step {} of {} in the ledger: {e}",
                r.step,
                self.case_id
            );
        }
        if let Some(tx) = &self.progress {
            let _ = tx.send(event);
        }
    }
}
