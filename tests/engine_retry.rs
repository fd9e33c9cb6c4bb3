//! Timeouts versus retries: attempts, backoff, and what the result says when a deadline
//! cuts them short. All on tokio's paused clock.

mod engine_fixture;

use std::sync::Arc;

use aplab::engine::{self, CaseVerdict, EventKind, StepStatus, StopReason};
use aplab::model::scenario::*;
use engine_fixture::*;

fn console_bench(scenario: Scenario, lines: &[(std::time::Duration, &str)]) -> Bench {
    let mut bench = Bench::new(scenario);
    let console = ScriptedConsole::new(bench.clock.clone(), lines, "/nonexistent".into());
    bench.handle.console = Some(Box::new(console));
    bench
}

#[tokio::test(start_paused = true)]
async fn infrastructure_failures_are_retried_with_doubling_backoff() {
    let mut power_on = step("power on", Action::Power(PowerAction::On));
    power_on.retry = Retry {
        attempts: 4,
        backoff: secs(5),
        on: vec![FailureClass::Infrastructure],
    };
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![power_on])]));
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::Honest, 2)));

    let result = engine::run_case(bench.run()).await;

    assert_eq!(result.verdict, CaseVerdict::Passed);
    let step = &result.phases[0].steps[0];
    assert_eq!(step.status, StepStatus::Passed);
    assert_eq!((step.attempts, step.attempts_allowed), (3, 4));
    let retries: Vec<(u32, std::time::Duration, FailureClass)> = bench
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::StepRetried {
                attempt,
                next_in,
                after_class,
                ..
            } => Some((attempt, next_in, after_class)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![
            (1, secs(5), FailureClass::Infrastructure),
            (2, secs(10), FailureClass::Infrastructure),
        ]
    );
    // The waits happened on the clock: 5 s + 10 s of backoff.
    assert_eq!(step.elapsed, secs(15));
}

#[tokio::test(start_paused = true)]
async fn phase_timeout_cutting_retries_says_so() {
    let mut wait = step(
        "wait for the success screen",
        expect(
            Source::Console,
            vec![outcome("success", "PROVISIONING OK", Verdict::Pass)],
        ),
    );
    wait.timeout = Some(mins(10));
    wait.retry = Retry {
        attempts: 3,
        backoff: mins(1),
        on: vec![FailureClass::Timeout],
    };
    let mut technician = phase("technician", vec![wait]);
    technician.timeout = Some(mins(15));
    let bench = console_bench(scenario(vec![technician]), &[(secs(1), "booting")]);

    let result = engine::run_case(bench.run()).await;

    let step = &result.phases[0].steps[0];
    assert_eq!(step.attempts, 2);
    assert_eq!(step.timed_out_attempts, 2);
    assert_eq!(step.stopped_by, Some(StopReason::PhaseTimeout));
    let StepStatus::Failed { class, message, .. } = &step.status else {
        panic!("expected a failure, got {:?}", step.status);
    };
    assert_eq!(*class, FailureClass::Timeout);
    assert!(
        message.contains("(2 of 3 attempts made; phase timeout reached)"),
        "{message}"
    );
    assert!(
        message.contains("last console output: \"booting\\n\""),
        "{message}"
    );
    // Attempt 1: 10 min, backoff 1 min, attempt 2 cut at the 15-minute phase deadline.
    assert_eq!(result.phases[0].elapsed, mins(15));
    assert!(matches!(
        result.verdict,
        CaseVerdict::Failed {
            class: FailureClass::Timeout,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn backoff_that_would_cross_the_phase_deadline_is_not_started() {
    let mut on = step("power on", Action::Power(PowerAction::On));
    on.retry = Retry {
        attempts: 3,
        backoff: mins(10),
        on: vec![FailureClass::Infrastructure],
    };
    let mut technician = phase("technician", vec![on]);
    technician.timeout = Some(mins(5));
    let mut bench = Bench::new(scenario(vec![technician]));
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::Honest, 5)));

    let result = engine::run_case(bench.run()).await;

    let step = &result.phases[0].steps[0];
    assert_eq!(step.attempts, 1);
    assert_eq!(step.stopped_by, Some(StopReason::PhaseTimeout));
    let StepStatus::Failed {
        class,
        message,
        hint,
        ..
    } = &step.status
    else {
        panic!("{:?}", step.status)
    };
    assert_eq!(*class, FailureClass::Infrastructure);
    assert_eq!(
        message,
        "PDU answered HTTP 500 (1 of 3 attempts made; phase timeout reached)"
    );
    assert_eq!(
        hint.as_deref(),
        Some("check that pdudaemon runs on 127.0.0.1:16421")
    );
    // No retry was announced, no time was spent waiting for one.
    assert!(
        !bench
            .events
            .kinds()
            .iter()
            .any(|k| matches!(k, EventKind::StepRetried { .. }))
    );
    assert_eq!(step.elapsed, secs(0));
}

#[tokio::test(start_paused = true)]
async fn product_failures_are_not_retried_unless_asked() {
    let failure_screen = vec![
        outcome("success", "Provisioning succeeded", Verdict::Pass),
        outcome(
            "failure",
            r"Provisioning failed.*code (?P<code>0x[0-9A-F]{8})",
            Verdict::Fail(FailureClass::Product),
        ),
    ];
    let mut wait = step("result", expect(Source::Console, failure_screen.clone()));
    wait.retry.attempts = 3;
    let lines = [(mins(3), "Provisioning failed with error code 0x80180014")];
    let bench = console_bench(scenario(vec![phase("technician", vec![wait])]), &lines);

    let result = engine::run_case(bench.run()).await;

    let first = &result.phases[0].steps[0];
    assert_eq!(first.attempts, 1);
    assert_eq!(first.stopped_by, Some(StopReason::NotRetryable));
    assert_eq!(
        first.captures.get("code").map(String::as_str),
        Some("0x80180014")
    );
    let CaseVerdict::Failed {
        class,
        code,
        message,
        step: name,
        ..
    } = &result.verdict
    else {
        panic!("{:?}", result.verdict)
    };
    assert_eq!(*class, FailureClass::Product);
    assert_eq!(code.as_deref(), Some("0x80180014"));
    assert_eq!(name, "result");
    assert!(
        message.starts_with("outcome `failure` appeared"),
        "{message}"
    );
    assert!(message.ends_with("(1 of 3 attempts made; this failure class is not retried)"));

    // The same step told to retry product failures does so; the second attempt sees
    // nothing new and times out, and timeouts are not in its `retry.on`.
    let mut wait = step("result", expect(Source::Console, failure_screen));
    wait.retry = Retry {
        attempts: 3,
        backoff: secs(1),
        on: vec![FailureClass::Product],
    };
    wait.timeout = Some(mins(5));
    let bench = console_bench(scenario(vec![phase("technician", vec![wait])]), &lines);
    let result = engine::run_case(bench.run()).await;
    let again = &result.phases[0].steps[0];
    assert_eq!(again.attempts, 2);
    assert_eq!(again.timed_out_attempts, 1);
    assert_eq!(again.stopped_by, Some(StopReason::NotRetryable));
    assert_eq!(again.status.failure_class(), Some(FailureClass::Timeout));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_counted_and_the_next_one_can_pass() {
    let mut wait = step(
        "desktop",
        expect(
            Source::Console,
            vec![outcome("desktop", "DESKTOP READY", Verdict::Pass)],
        ),
    );
    wait.timeout = Some(mins(10));
    wait.retry = Retry {
        attempts: 2,
        backoff: mins(1),
        on: vec![FailureClass::Timeout],
    };
    let bench = console_bench(
        scenario(vec![phase("user", vec![wait])]),
        &[(mins(12), "DESKTOP READY")],
    );
    let result = engine::run_case(bench.run()).await;
    let step = &result.phases[0].steps[0];
    assert_eq!(step.status, StepStatus::Passed);
    assert_eq!((step.attempts, step.timed_out_attempts), (2, 1));
    assert_eq!(step.elapsed, mins(12));
    let finished = bench.events.kinds().into_iter().find_map(|k| match k {
        EventKind::StepFinished {
            attempts,
            timed_out_attempts,
            ..
        } => Some((attempts, timed_out_attempts)),
        _ => None,
    });
    assert_eq!(finished, Some((2, 1)));
}

#[test]
fn clock_trait_objects_are_shareable() {
    // The engine takes `Arc<dyn Clock>`; both clocks must fit.
    let _: Vec<Arc<dyn engine::Clock>> = vec![
        Arc::new(engine::WallClock::new()),
        Arc::new(engine::ScaledClock::new(600.0)),
    ];
}
