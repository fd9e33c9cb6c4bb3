//! A step's attempts: each bounded by the step's timeout and the phase deadline, retried
//! with doubling backoff when its failure class is one the step retries on.
//!
//! Peer tools let a timeout silently eat the remaining retries; here the result always
//! says how many attempts were made of how many, and what stopped them.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use crate::model::duration::format_duration;
use crate::model::scenario::{Action, Expect, FailureClass, Source, Step};

use super::events::{EventKind, StepStatus, StopReason};
use super::outcome::{CaseState, StepResult};
use super::step::{self, Done, Failure, StepCtx};
use super::{CaseRun, LabTime};

/// Runs `step` until it passes, fails for good, runs out of attempts or time, or the run
/// is cancelled. `phase_deadline` bounds every attempt and every backoff.
pub(crate) async fn run_step(
    run: &CaseRun<'_>,
    state: &mut CaseState,
    phase: &str,
    step: &Step,
    phase_deadline: Option<LabTime>,
) -> StepResult {
    let clock = &run.clock;
    let started = clock.now();
    let allowed = step.retry.attempts.max(1);
    let mut made = 0u32;
    let mut timed_out = 0u32;
    let mut captures = BTreeMap::new();

    let (status, stopped_by) = loop {
        if run.cancel.is_cancelled() {
            break (StepStatus::Interrupted, Some(StopReason::Interrupted));
        }
        let now = clock.now();
        if phase_deadline.is_some_and(|d| now >= d) {
            let status = failed(
                Failure::new(
                    FailureClass::Timeout,
                    "the phase timeout was reached before the step could start",
                ),
                made,
                allowed,
                Some(StopReason::PhaseTimeout),
            );
            break (status, Some(StopReason::PhaseTimeout));
        }
        made += 1;
        run.emit(
            Some(phase),
            Some(&step.name),
            EventKind::StepStarted {
                attempt: made,
                attempts_allowed: allowed,
                what: step::describe(run, &step.action),
                origin: step::origin(step),
                block: step.origin.block.clone(),
            },
        );
        let budget = super::clock::at_least_wall(
            clock.as_ref(),
            step::budget(run, step),
            super::clock::MIN_ATTEMPT_WALL,
        );
        let step_deadline = now.saturating_add(budget);
        let (deadline, phase_cuts) = match phase_deadline {
            Some(p) if p < step_deadline => (p, true),
            _ => (step_deadline, false),
        };
        let ctx = StepCtx {
            run,
            phase,
            step,
            deadline,
        };
        let outcome = tokio::select! {
            biased;
            _ = run.cancel.cancelled() => None,
            result = AssertUnwindSafe(step::attempt(&ctx, state, &step.action)).catch_unwind() => {
                Some(result.unwrap_or_else(|panic| Err(bug(panic))))
            }
            _ = clock.sleep_until(deadline) => Some(Err(deadline_failure(&ctx, now, phase_cuts))),
        };
        let failure = match outcome {
            None => break (StepStatus::Interrupted, Some(StopReason::Interrupted)),
            Some(Ok(Done::Passed(found))) => {
                captures = found;
                break (StepStatus::Passed, None);
            }
            Some(Ok(Done::Skipped(reason))) => break (StepStatus::Skipped { reason }, None),
            Some(Err(f)) => f,
        };
        // A failure outcome's captures (its `code`, the `elapsed` time on a failure
        // screen) belong in the report as much as a success's do.
        captures = failure.captures.clone();
        let hit_deadline = clock.now() >= deadline;
        if failure.class == FailureClass::Timeout || hit_deadline {
            timed_out += 1;
        }
        if phase_cuts && hit_deadline {
            let stop = (made < allowed).then_some(StopReason::PhaseTimeout);
            break (failed(failure, made, allowed, stop), stop);
        }
        if made >= allowed {
            break (failed(failure, made, allowed, None), None);
        }
        if !step.retry.on.contains(&failure.class) {
            let stop = Some(StopReason::NotRetryable);
            break (failed(failure, made, allowed, stop), stop);
        }
        let backoff = backoff(step.retry.backoff, made);
        let next = clock.now().saturating_add(backoff);
        if phase_deadline.is_some_and(|d| next >= d) {
            let stop = Some(StopReason::PhaseTimeout);
            break (failed(failure, made, allowed, stop), stop);
        }
        run.emit(
            Some(phase),
            Some(&step.name),
            EventKind::StepRetried {
                attempt: made,
                next_in: backoff,
                after_class: failure.class,
                message: failure.message.clone(),
            },
        );
        tokio::select! {
            biased;
            _ = run.cancel.cancelled() => {
                break (StepStatus::Interrupted, Some(StopReason::Interrupted));
            }
            _ = clock.sleep_until(next) => {}
        }
    };

    let elapsed = clock.now().saturating_sub(started);
    run.emit(
        Some(phase),
        Some(&step.name),
        EventKind::StepFinished {
            status: status.clone(),
            attempts: made,
            attempts_allowed: allowed,
            elapsed,
            timed_out_attempts: timed_out,
            stopped_by,
            captures: captures.clone(),
        },
    );
    StepResult {
        name: step.name.clone(),
        status,
        attempts: made,
        attempts_allowed: allowed,
        timed_out_attempts: timed_out,
        stopped_by,
        elapsed,
        captures,
        continue_on_failure: step.continue_on_failure,
    }
}

/// The wait before attempt `failed + 1`: `base`, doubled for each further attempt.
pub(crate) fn backoff(base: Duration, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings)
}

/// The final status of a failed step. When attempts were left, the message says how many
/// were made and what stopped the rest.
fn failed(f: Failure, made: u32, allowed: u32, stop: Option<StopReason>) -> StepStatus {
    let mut message = f.message;
    if allowed > 1 || stop == Some(StopReason::PhaseTimeout) {
        let why = match stop {
            Some(StopReason::PhaseTimeout) => "; phase timeout reached",
            Some(StopReason::NotRetryable) => "; this failure class is not retried",
            Some(StopReason::Interrupted) => "; interrupted",
            None => "",
        };
        message = format!("{message} ({made} of {allowed} attempts made{why})");
    }
    StepStatus::Failed {
        class: f.class,
        code: f.code,
        message,
        hint: f.hint,
    }
}

/// The failure of an attempt that ran into its deadline.
fn deadline_failure(ctx: &StepCtx<'_, '_>, started: LabTime, phase_cuts: bool) -> Failure {
    let took = format_duration(ctx.deadline.saturating_sub(started));
    let mut message = if phase_cuts {
        format!("the phase timeout was reached after {took} of this attempt")
    } else {
        format!("the step did not finish within its timeout of {took}")
    };
    let mut hint = None;
    match &ctx.step.action {
        Action::Expect(Expect { source, any_of }) => {
            let names: Vec<&str> = any_of.iter().map(|o| o.name.as_str()).collect();
            message = format!(
                "none of the outcomes ({}) appeared on the {}: {message}",
                names.join(", "),
                step::source_word(*source)
            );
            if *source == Source::Console
                && let Some(console) = ctx.run.handle.console.as_deref()
            {
                let tail = String::from_utf8_lossy(&console.tail(400)).into_owned();
                message = format!("{message}; last console output: {tail:?}");
            }
        }
        Action::Shell(_) => {
            hint = Some("check that the device is up and its SSH server answers".to_string());
        }
        _ => {}
    }
    Failure {
        class: FailureClass::Timeout,
        message,
        hint,
        code: None,
        captures: BTreeMap::new(),
    }
}

/// A panic in a step (ours or a backend's) is aplab's bug: the case fails with class
/// `harness` instead of taking the whole fleet down.
fn bug(panic: Box<dyn std::any::Any + Send>) -> Failure {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Failure::new(
        FailureClass::Harness,
        format!("aplab hit a bug while running this step: {what}"),
    )
    .with_hint("this is not the device's fault; please report it with the run directory")
}
