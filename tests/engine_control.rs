//! Run control and reporting: keep-on-failure, Ctrl-C, secrets, the scaled clock, the
//! event stream's content, and diagnostics that cannot hang a run.

mod engine_fixture;

use std::sync::Arc;
use std::time::Duration;

use aplab::engine::{
    self, CaseVerdict, Clock, EventKind, PhaseSelection, PhaseStatus, ScaledClock, StepStatus,
};
use aplab::model::scenario::*;
use engine_fixture::*;

#[tokio::test(start_paused = true)]
async fn keep_on_failure_stops_at_the_failed_step_and_says_how_to_attach() {
    let steps = vec![
        step(
            "joined",
            Action::Shell(ShellStep {
                program: "dsregcmd".into(),
                args: vec![Template("/status".into())],
                exit: Some(0),
                expect: [("AzureAdJoined".to_string(), Template("YES".into()))].into(),
                stdout_matches: vec![],
            }),
        ),
        step("power off", Action::Power(PowerAction::Off)),
        step("diagnostics", Action::Collect(vec![Diagnostic::Dsregcmd])),
    ];
    let mut bench = Bench::new(scenario(vec![
        phase("user", steps),
        phase(
            "cleanup",
            vec![step("off", Action::Power(PowerAction::Off))],
        ),
    ]));
    bench.options.keep_on_failure = true;
    let shell =
        ScriptedShell::new(bench.clock.clone()).answer("dsregcmd", 0, "AzureAdJoined : NO\n");
    bench.handle.shell = Some(Box::new(shell));
    let power = Arc::new(ScriptedPower::new(PowerReadBack::Honest, 0));
    bench.handle.power = Some(Box::new(ArcPower(power.clone())));

    let result = engine::run_case(bench.run()).await;

    assert!(result.kept);
    assert_eq!(
        result.phases[0].status,
        PhaseStatus::Kept {
            step: "joined".into(),
            class: FailureClass::Product
        }
    );
    // Nothing touched the device after the failure: no power, no diagnostics, no
    // further phase.
    assert!(power.calls.lock().unwrap().is_empty());
    assert_eq!(result.phases.len(), 1);
    for s in &result.phases[0].steps[1..] {
        assert_eq!(
            s.status,
            StepStatus::Skipped {
                reason: "the device is kept at the failed step".into()
            }
        );
    }
    let routes = bench
        .events
        .all()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::KeptOnFailure { how_to_attach } => Some((e.step, how_to_attach)),
            _ => None,
        })
        .expect("a KeptOnFailure event");
    assert_eq!(routes.0.as_deref(), Some("joined"));
    let shell = routes.1.iter().find(|r| r.capability == "shell").unwrap();
    assert_eq!(
        shell.command.as_deref(),
        Some("ssh -i /lab/keys/pc01 -o UserKnownHostsFile=/lab/known_hosts -p 2222 lab@127.0.0.1")
    );
    let console = routes.1.iter().find(|r| r.capability == "console").unwrap();
    assert_eq!(
        (console.transport.as_str(), console.address.as_str()),
        ("tcp", "127.0.0.1:7001")
    );
    assert!(matches!(
        result.verdict,
        CaseVerdict::Failed {
            class: FailureClass::Product,
            ..
        }
    ));
}

struct ArcPower(Arc<ScriptedPower>);

#[async_trait::async_trait]
impl aplab::device::Power for ArcPower {
    async fn on(&self) -> aplab::device::DeviceResult<aplab::device::ReadBack> {
        self.0.on().await
    }
    async fn off(&self) -> aplab::device::DeviceResult<aplab::device::ReadBack> {
        self.0.off().await
    }
    async fn cycle(&self) -> aplab::device::DeviceResult<aplab::device::ReadBack> {
        self.0.cycle().await
    }
    async fn state(&self) -> aplab::device::DeviceResult<aplab::device::ReadBack> {
        self.0.state().await
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_a_long_step_promptly_and_says_interrupted() {
    let steps = vec![
        step(
            "token refresh",
            Action::Wait(Wait::Fixed(Duration::from_secs(90 * 60))),
        ),
        step("after", Action::Power(PowerAction::On)),
    ];
    let bench = Bench::new(scenario(vec![
        phase("technician", steps),
        phase("user", vec![step("on", Action::Power(PowerAction::On))]),
    ]));
    let cancel = bench.cancel.clone();
    let clock = bench.clock.clone();
    let run = bench.run();
    let (result, ()) = tokio::join!(engine::run_case(run), async {
        clock.sleep(secs(30)).await;
        cancel.cancel();
    });

    assert_eq!(result.verdict, CaseVerdict::Interrupted);
    assert_eq!(result.phases.len(), 1);
    assert_eq!(result.phases[0].status, PhaseStatus::Interrupted);
    let steps = &result.phases[0].steps;
    assert_eq!(steps[0].status, StepStatus::Interrupted);
    // Stopped at the moment of Ctrl-C, not at the end of the 90-minute wait.
    assert_eq!(steps[0].elapsed, secs(30));
    assert!(matches!(steps[1].status, StepStatus::Skipped { .. }));
    let finished = bench.events.kinds().into_iter().last().unwrap();
    assert!(matches!(
        finished,
        EventKind::CaseFinished {
            verdict: CaseVerdict::Interrupted,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn secret_text_never_appears_in_any_event() {
    const SECRET: &str = "Hunter2-Pa55word!";
    let typed = step(
        "password",
        Action::Text {
            text: Template("{{ matrix.pw }}".into()),
            secret: true,
        },
    );
    let mut bench = Bench::new(scenario(vec![phase("user", vec![typed.clone()])]));
    bench.case.insert("pw".into(), SECRET.into());
    let keyboard = Arc::new(RecordingKeyboard::default());
    bench.handle.keyboard = Some(Box::new(ArcKeyboard(keyboard.clone())));
    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.phases[0].status, PhaseStatus::Passed);
    // It was typed...
    assert_eq!(*keyboard.log.lock().unwrap(), [format!("type {SECRET}")]);

    // ...and a backend that quotes what it failed to type is redacted at the source.
    let mut bench = Bench::new(scenario(vec![phase("user", vec![typed])]));
    bench.case.insert("pw".into(), SECRET.into());
    bench.handle.keyboard = Some(Box::new(RecordingKeyboard {
        fail_typing: true,
        ..Default::default()
    }));
    let result = engine::run_case(bench.run()).await;
    let StepStatus::Failed {
        class,
        message,
        hint,
        ..
    } = &result.phases[0].steps[0].status
    else {
        panic!("{:?}", result.phases[0].steps[0].status)
    };
    assert_eq!(*class, FailureClass::Infrastructure);
    assert_eq!(
        message,
        "CH9329 did not acknowledge while typing \"[redacted]\""
    );
    assert_eq!(
        hint.as_deref(),
        Some("unplug and replug the injector; it stopped at [redacted]")
    );
    // The secret is part of the case's matrix in this test, so strip the two events
    // that echo the matrix by design before looking for it anywhere else.
    let events: Vec<_> = bench
        .events
        .all()
        .into_iter()
        .filter(|e| !matches!(e.kind, EventKind::CaseStarted { .. }))
        .map(|mut e| {
            e.case = String::new();
            e
        })
        .collect();
    let json = serde_json::to_string(&events).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    assert!(json.contains("type secret text"), "{json}");
    assert!(json.contains("[redacted]"), "{json}");
}

struct ArcKeyboard(Arc<RecordingKeyboard>);

#[async_trait::async_trait]
impl aplab::device::Keyboard for ArcKeyboard {
    async fn press(&self, key: &KeyPress) -> aplab::device::DeviceResult<()> {
        self.0.press(key).await
    }
    async fn type_text(&self, text: &str) -> aplab::device::DeviceResult<()> {
        self.0.type_text(text).await
    }
}

#[tokio::test(start_paused = true)]
async fn scaled_clock_turns_ninety_lab_minutes_into_nine_wall_seconds() {
    let clock = ScaledClock::new(600.0);
    let wall = tokio::time::Instant::now();
    clock.sleep(Duration::from_secs(90 * 60)).await;
    assert_eq!(wall.elapsed(), Duration::from_secs(9));
    assert!(clock.now() >= Duration::from_secs(90 * 60));
    assert_eq!(
        clock.wall(Duration::from_secs(30 * 60)),
        Duration::from_secs(3)
    );

    // The engine waits on it too: a 90-minute gap and a 30-minute step at scale 600.
    let mut user = phase(
        "user",
        vec![step("settle", Action::Wait(Wait::Fixed(mins(30))))],
    );
    user.gap = Some(Gap {
        min: mins(90),
        max: None,
    });
    let mut bench = Bench::new(scenario(vec![
        phase(
            "technician",
            vec![step("noop", Action::Wait(Wait::Fixed(secs(0))))],
        ),
        user,
    ]));
    bench.clock = Arc::new(ScaledClock::new(600.0));
    let wall = tokio::time::Instant::now();
    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed);
    assert_eq!(wall.elapsed(), Duration::from_secs(12));
    assert_eq!(result.phases[1].steps[0].elapsed, mins(30));
    assert!(bench.events.kinds().iter().any(|k| matches!(
        k, EventKind::GapStarted { min } if *min == mins(90)
    )));

    // Nonsense scales fall back to real time instead of dividing by zero.
    assert_eq!(ScaledClock::new(0.0).scale(), 1.0);
    assert_eq!(ScaledClock::new(f64::INFINITY).scale(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn events_carry_what_reports_need_in_order() {
    let mut success = step(
        "success",
        expect(
            Source::Console,
            vec![outcome(
                "success",
                r"succeeded in (?P<elapsed>\d+:\d+:\d+)",
                Verdict::Pass,
            )],
        ),
    );
    // Longer than the 30-minute default.
    success.timeout = Some(mins(60));
    let steps = vec![step("power on", Action::Power(PowerAction::On)), success];
    let mut s = scenario(vec![phase("technician", steps), phase("user", vec![])]);
    s.matrix.insert("join".into(), vec!["entra".into()]);
    let mut bench = Bench::new(s);
    bench.case.insert("join".into(), "entra".into());
    bench.options.phases = PhaseSelection::Named(vec!["technician".into()]);
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::Honest, 0)));
    bench.handle.console = Some(Box::new(ScriptedConsole::new(
        bench.clock.clone(),
        &[(mins(47), "Pre-provisioning succeeded in 00:47:00")],
        "/nonexistent".into(),
    )));

    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.case, "preprovision[join=entra]");
    assert_eq!(result.phases.len(), 1, "only the named phase runs");

    let events = bench.events.all();
    for e in &events {
        assert_eq!(e.device, "pc01");
        assert_eq!(e.case, "preprovision[join=entra]");
    }
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            let json = serde_json::to_value(&e.kind).unwrap();
            json["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "case_started",
            "phase_started",
            "step_started",
            "device_state_seen",
            "step_finished",
            "step_started",
            "pattern_matched",
            "step_finished",
            "phase_finished",
            "case_finished"
        ]
    );
    let finished = serde_json::to_value(&events[7]).unwrap();
    assert_eq!(finished["phase"], "technician");
    assert_eq!(finished["step"], "success");
    assert_eq!(finished["kind"]["status"]["status"], "passed");
    assert_eq!(finished["kind"]["captures"]["elapsed"], "00:47:00");
    assert_eq!(finished["kind"]["elapsed"], 47.0 * 60.0);
    assert_eq!(finished["lab_time"], 47.0 * 60.0);
    let started = serde_json::to_value(&events[2]).unwrap();
    assert_eq!(started["kind"]["what"], "power on");
    assert_eq!(started["kind"]["origin"], "scenarios/test.yaml:7:5");
    assert_eq!(started["kind"]["attempt"], 1);
}

#[tokio::test(start_paused = true)]
async fn diagnostics_are_capped_bounded_in_time_and_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let console_log = dir.path().join("console-source.log");
    std::fs::write(&console_log, "x".repeat(100) + "END OF LOG").unwrap();
    let collect = step(
        "diagnostics",
        Action::Collect(vec![
            Diagnostic::MdmDiagnostics,
            Diagnostic::Dsregcmd,
            Diagnostic::GetTpm,
            Diagnostic::Console,
            Diagnostic::Screenshot,
        ]),
    );
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![collect])]));
    bench.handle.artifacts = dir.path().join("artifacts");
    bench.options.diagnostics.text_max_bytes = 20;
    bench.options.diagnostics.timeout = mins(2);
    let mut shell = ScriptedShell::new(bench.clock.clone())
        .answer("mdmdiagnosticstool.exe", 0, "")
        .answer("dsregcmd", 0, "AzureAdJoined : YES\n");
    shell.fetched = b"PK\x03\x04zip".to_vec();
    shell.hang = vec!["Get-Tpm".into()];
    bench.handle.shell = Some(Box::new(shell));
    bench.handle.console = Some(Box::new(ScriptedConsole::new(
        bench.clock.clone(),
        &[],
        console_log,
    )));

    let result = engine::run_case(bench.run()).await;

    // Collecting never fails the step, whatever went wrong.
    assert_eq!(result.verdict, CaseVerdict::Passed);
    let mut saved = Vec::new();
    let mut failed = Vec::new();
    for k in bench.events.kinds() {
        match k {
            EventKind::ArtifactSaved {
                kind,
                path,
                bytes,
                truncated,
            } => saved.push((kind, path, bytes, truncated)),
            EventKind::ArtifactFailed { kind, message } => failed.push((kind, message)),
            _ => {}
        }
    }
    let base = dir.path().join("artifacts/technician/diagnostics");
    assert_eq!(
        saved,
        [
            (
                "mdm-diagnostics".to_string(),
                base.join("mdmdiagnostics.zip"),
                7,
                false
            ),
            ("dsregcmd".to_string(), base.join("dsregcmd.txt"), 20, false),
            ("console".to_string(), base.join("console.log"), 20, true),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(base.join("console.log")).unwrap(),
        "xxxxxxxxxxEND OF LOG"
    );
    assert_eq!(
        failed,
        [
            ("get-tpm".to_string(), "gave up after 2m".to_string()),
            (
                "screenshot".to_string(),
                "the device has no screen connection".to_string()
            ),
        ]
    );
    // The hanging command cost its timeout and no more.
    assert_eq!(result.phases[0].steps[0].elapsed, mins(2));
}
