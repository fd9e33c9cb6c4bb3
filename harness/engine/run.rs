//! The phase and step loop.

use std::time::Duration;

use crate::model::scenario::{Action, Case, FailureClass, Phase, Scenario};

use super::events::{CaseVerdict, Event, EventKind, PhaseStatus, StepStatus};
use super::outcome::{CaseResult, CaseState, PhaseResult, StepResult};
use super::{CaseRun, PhaseSelection, attach, retry};

/// A phase name the scenario does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scenario `{scenario}` has no phase `{phase}`; it has: {known}")]
pub struct UnknownPhase {
    pub scenario: String,
    pub phase: String,
    pub known: String,
}

/// The case's name in reports: `scenario[axis=value,...]`, or the scenario's name alone
/// when it has no matrix.
pub fn case_id(scenario: &Scenario, case: &Case) -> String {
    if case.is_empty() {
        return scenario.name.clone();
    }
    let values: Vec<String> = case.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}[{}]", scenario.name, values.join(","))
}

impl CaseRun<'_> {
    pub(crate) fn emit(&self, phase: Option<&str>, step: Option<&str>, kind: EventKind) {
        self.events.emit(Event {
            at: jiff::Timestamp::now(),
            lab_time: self.clock.now(),
            device: self.device.id.clone(),
            case: case_id(self.scenario, &self.case),
            phase: phase.map(str::to_string),
            step: step.map(str::to_string),
            kind,
        });
    }

    /// The phases [`run_case`] runs, in scenario order.
    fn selected_phases(&self) -> Result<Vec<&Phase>, UnknownPhase> {
        match &self.options.phases {
            PhaseSelection::All => Ok(self.scenario.phases.iter().collect()),
            PhaseSelection::Named(names) => {
                for name in names {
                    self.phase(name)?;
                }
                Ok(self
                    .scenario
                    .phases
                    .iter()
                    .filter(|p| names.contains(&p.name))
                    .collect())
            }
        }
    }

    fn phase(&self, name: &str) -> Result<&Phase, UnknownPhase> {
        self.scenario
            .phases
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| UnknownPhase {
                scenario: self.scenario.name.clone(),
                phase: name.to_string(),
                known: self
                    .scenario
                    .phases
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Runs the selected phases of the case. Between phases it waits out each phase's
/// minimum gap on the clock; callers that park the device instead use [`run_phase`].
pub async fn run_case(run: CaseRun<'_>) -> CaseResult {
    let mut state = CaseState::default();
    let phases = match run.selected_phases() {
        Ok(p) => p,
        Err(e) => {
            start_case(&run);
            let verdict = CaseVerdict::Failed {
                class: FailureClass::Config,
                phase: e.phase.clone(),
                step: String::new(),
                code: None,
                message: e.to_string(),
            };
            run.emit(
                None,
                None,
                EventKind::CaseFinished {
                    verdict: verdict.clone(),
                    tolerated_failures: 0,
                },
            );
            return CaseResult {
                case: case_id(run.scenario, &run.case),
                device: run.device.id.clone(),
                verdict,
                phases: Vec::new(),
                kept: false,
                tolerated_failures: 0,
            };
        }
    };
    start_case(&run);
    let mut results: Vec<PhaseResult> = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        if i > 0
            && let Some(gap) = &phase.gap
        {
            run.emit(
                Some(&phase.name),
                None,
                EventKind::GapStarted { min: gap.min },
            );
            let interrupted = tokio::select! {
                biased;
                _ = run.cancel.cancelled() => true,
                _ = run.clock.sleep(gap.min) => false,
            };
            if interrupted {
                results.push(PhaseResult {
                    name: phase.name.clone(),
                    status: PhaseStatus::Interrupted,
                    steps: Vec::new(),
                    elapsed: Duration::ZERO,
                });
                break;
            }
        }
        let result = run_phase_checked(&run, &mut state, phase).await;
        let stop = !matches!(result.status, PhaseStatus::Passed);
        results.push(result);
        if stop {
            break;
        }
    }
    finish_case(&run, results)
}

/// Emits `CaseStarted`. [`run_case`] does this itself; a caller running phases one by
/// one calls it before the first.
pub fn start_case(run: &CaseRun<'_>) {
    let phases = match &run.options.phases {
        PhaseSelection::All => run.scenario.phases.iter().map(|p| p.name.clone()).collect(),
        PhaseSelection::Named(names) => names.clone(),
    };
    run.emit(
        None,
        None,
        EventKind::CaseStarted {
            scenario: run.scenario.name.clone(),
            matrix: run.case.clone(),
            phases,
        },
    );
}

/// Decides the verdict from the phases run and emits `CaseFinished`.
pub fn finish_case(run: &CaseRun<'_>, phases: Vec<PhaseResult>) -> CaseResult {
    let mut verdict = CaseVerdict::Passed;
    let mut kept = false;
    let mut tolerated = 0;
    'phases: for phase in &phases {
        for step in &phase.steps {
            if let StepStatus::Failed {
                class,
                code,
                message,
                ..
            } = &step.status
            {
                if step.continue_on_failure {
                    tolerated += 1;
                } else if verdict.passed() {
                    verdict = CaseVerdict::Failed {
                        class: *class,
                        phase: phase.name.clone(),
                        step: step.name.clone(),
                        code: code.clone(),
                        message: message.clone(),
                    };
                }
            }
        }
        match phase.status {
            PhaseStatus::Interrupted => {
                if verdict.passed() {
                    verdict = CaseVerdict::Interrupted;
                }
                break 'phases;
            }
            PhaseStatus::Kept { .. } => kept = true,
            _ => {}
        }
    }
    run.emit(
        None,
        None,
        EventKind::CaseFinished {
            verdict: verdict.clone(),
            tolerated_failures: tolerated,
        },
    );
    CaseResult {
        case: case_id(run.scenario, &run.case),
        device: run.device.id.clone(),
        verdict,
        phases,
        kept,
        tolerated_failures: tolerated,
    }
}

/// Runs one phase by name. The gap before it is the caller's business.
pub async fn run_phase(
    run: &CaseRun<'_>,
    state: &mut CaseState,
    phase: &str,
) -> Result<PhaseResult, UnknownPhase> {
    let phase = run.phase(phase)?;
    Ok(run_phase_checked(run, state, phase).await)
}

async fn run_phase_checked(run: &CaseRun<'_>, state: &mut CaseState, phase: &Phase) -> PhaseResult {
    let clock = &run.clock;
    let started = clock.now();
    let deadline = phase.timeout.map(|t| started.saturating_add(t));
    run.emit(
        Some(&phase.name),
        None,
        EventKind::PhaseStarted {
            timeout: phase.timeout,
        },
    );
    let mut steps: Vec<StepResult> = Vec::new();
    // The first failure that stops the phase: step name and class.
    let mut failed: Option<(String, FailureClass)> = None;
    let mut status = None;

    for step in &phase.steps {
        let skip = if status.is_some() {
            // Kept on failure or interrupted: nothing more runs.
            Some(match status {
                Some(PhaseStatus::Interrupted) => "the run was interrupted".to_string(),
                _ => "the device is kept at the failed step".to_string(),
            })
        } else if let Some(reason) = not_for_case(&step.when, &run.case) {
            Some(reason)
        } else if let Some((name, _)) = &failed {
            // After a failure only diagnostics run: they are what explains it.
            (!matches!(step.action, Action::Collect(_))).then(|| format!("step `{name}` failed"))
        } else {
            None
        };
        if let Some(reason) = skip {
            steps.push(skipped(run, &phase.name, step, reason));
            continue;
        }
        // Diagnostics after a failure are not bound by the phase deadline: a timed-out
        // phase is exactly when they are needed. Each has its own timeout.
        let step_deadline = if failed.is_some() { None } else { deadline };
        let result = retry::run_step(run, state, &phase.name, step, step_deadline).await;
        match &result.status {
            StepStatus::Interrupted => status = Some(PhaseStatus::Interrupted),
            StepStatus::Failed { class, .. } if !step.continue_on_failure && failed.is_none() => {
                failed = Some((step.name.clone(), *class));
                if run.options.keep_on_failure {
                    run.emit(
                        Some(&phase.name),
                        Some(&step.name),
                        EventKind::KeptOnFailure {
                            how_to_attach: attach::routes(run.device),
                        },
                    );
                    status = Some(PhaseStatus::Kept {
                        step: step.name.clone(),
                        class: *class,
                    });
                }
            }
            _ => {}
        }
        steps.push(result);
    }

    let status = status.unwrap_or(match failed {
        Some((step, class)) => PhaseStatus::Failed { step, class },
        None => PhaseStatus::Passed,
    });
    let elapsed = clock.now().saturating_sub(started);
    run.emit(
        Some(&phase.name),
        None,
        EventKind::PhaseFinished {
            status: status.clone(),
            elapsed,
        },
    );
    PhaseResult {
        name: phase.name.clone(),
        status,
        steps,
        elapsed,
    }
}

/// Why a step with a `when` filter does not run for this case, if it does not.
fn not_for_case(when: &std::collections::BTreeMap<String, String>, case: &Case) -> Option<String> {
    let mismatch: Vec<String> = when
        .iter()
        .filter(|(axis, value)| case.get(*axis) != Some(*value))
        .map(|(axis, value)| format!("{axis}={value}"))
        .collect();
    (!mismatch.is_empty()).then(|| format!("only for {}", mismatch.join(", ")))
}

fn skipped(
    run: &CaseRun<'_>,
    phase: &str,
    step: &crate::model::scenario::Step,
    reason: String,
) -> StepResult {
    let status = StepStatus::Skipped { reason };
    run.emit(
        Some(phase),
        Some(&step.name),
        EventKind::StepFinished {
            status: status.clone(),
            attempts: 0,
            attempts_allowed: step.retry.attempts.max(1),
            elapsed: Duration::ZERO,
            timed_out_attempts: 0,
            stopped_by: None,
            captures: Default::default(),
        },
    );
    StepResult {
        name: step.name.clone(),
        status,
        attempts: 0,
        attempts_allowed: step.retry.attempts.max(1),
        timed_out_attempts: 0,
        stopped_by: None,
        elapsed: Duration::ZERO,
        captures: Default::default(),
        continue_on_failure: step.continue_on_failure,
    }
}
