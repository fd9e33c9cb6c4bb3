//! The fleet runner's own logic over a real SQLite ledger: gaps parked and never
//! shortened (also across a resume), finished cases never re-run, infrastructure
//! failures moved to another device, health checks, and two runners sharing a ledger
//! never driving one device at once. The phase runner here records what it is asked to
//! do; the virtual lab end-to-end tests drive real devices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aplab::fleet::*;
use aplab::model::scenario::{Case, FailureClass, Gap};
use aplab::store::sqlite::SqliteLedger;
use aplab::store::*;
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lab time runs 60 000x faster: a 90-minute gap is 90 ms of wall time.
const SCALE: TimeScale = TimeScale(60_000.0);

/// One phase run: (case, phase index, device, start, end, outcome).
type Call = (String, usize, String, Instant, Instant, PhaseOutcome);

#[derive(Default)]
struct Recorder {
    /// (case, phase index, device, start, end, outcome)
    calls: Mutex<Vec<Call>>,
    /// device -> phases running on it right now
    busy: Mutex<HashMap<String, usize>>,
    max_busy: Mutex<usize>,
    /// (case_id, phase) -> outcome to give (default Passed)
    script: Mutex<HashMap<(String, usize, String), PhaseOutcome>>,
    /// Cancel this token when this (case, phase) starts, to simulate Ctrl-C.
    interrupt_at: Mutex<Option<((String, usize), CancellationToken)>>,
    phase_time: Duration,
}

#[async_trait]
impl PhaseRunner for Recorder {
    async fn run_phase(
        &self,
        job: &Job,
        index: usize,
        device: &str,
        cancel: CancellationToken,
    ) -> PhaseOutcome {
        let start = Instant::now();
        {
            let mut busy = self.busy.lock().unwrap();
            let n = busy.entry(device.to_string()).or_default();
            *n += 1;
            let mut max = self.max_busy.lock().unwrap();
            *max = (*max).max(*n);
        }
        if let Some(((case, phase), token)) = self.interrupt_at.lock().unwrap().clone()
            && case == job.case_id
            && phase == index
        {
            token.cancel();
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => PhaseOutcome::Interrupted,
            _ = tokio::time::sleep(self.phase_time) => self
                .script
                .lock()
                .unwrap()
                .get(&(job.case_id.clone(), index, device.to_string()))
                .cloned()
                .unwrap_or(PhaseOutcome::Passed),
        };
        *self.busy.lock().unwrap().get_mut(device).unwrap() -= 1;
        self.calls.lock().unwrap().push((
            job.case_id.clone(),
            index,
            device.into(),
            start,
            Instant::now(),
            outcome.clone(),
        ));
        outcome
    }
}

fn e2e_job(device: &str, join: &str) -> Job {
    let case: Case = [("join".to_string(), join.to_string())].into();
    Job {
        case_id: Job::case_id_for("e2e", &case, device),
        scenario: "e2e".into(),
        case,
        device_id: device.into(),
        priority: 0,
        health: false,
        phases: vec![
            PhasePlan {
                name: "technician".into(),
                gap: None,
                estimate: Duration::from_secs(2700),
            },
            PhasePlan {
                name: "user".into(),
                gap: Some(Gap {
                    min: Duration::from_secs(90 * 60),
                    max: Some(Duration::from_secs(180 * 86400)),
                }),
                estimate: Duration::from_secs(1200),
            },
        ],
        alternatives: vec![],
    }
}

fn fleet(
    ledger: &Arc<SqliteLedger>,
    rec: &Arc<Recorder>,
    run: &str,
) -> (Fleet, mpsc::UnboundedReceiver<FleetEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = FleetOptions::new(run, SCALE);
    opts.lease_ttl = Duration::from_secs(30);
    (Fleet::new(ledger.clone(), rec.clone(), opts, tx), rx)
}

fn recorder(phase_ms: u64) -> Arc<Recorder> {
    Arc::new(Recorder {
        phase_time: Duration::from_millis(phase_ms),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_between_phases_is_honoured_and_devices_run_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap());
    let rec = recorder(5);
    let (fleet, _rx) = fleet(&ledger, &rec, "run-a");
    let jobs = vec![
        e2e_job("pc01", "entra"),
        e2e_job("pc01", "hybrid"),
        e2e_job("pc02", "entra"),
    ];
    let summary = fleet
        .run(jobs, "{}", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (summary.passed, summary.failed, summary.unfinished),
        (3, 0, 0)
    );

    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6, "two phases for each of three cases");
    for case in [
        "e2e[join=entra]@pc01",
        "e2e[join=hybrid]@pc01",
        "e2e[join=entra]@pc02",
    ] {
        let tech = calls.iter().find(|c| c.0 == case && c.1 == 0).unwrap();
        let user = calls.iter().find(|c| c.0 == case && c.1 == 1).unwrap();
        let gap = user.3.duration_since(tech.4);
        assert!(
            gap >= Duration::from_millis(90),
            "{case}: gap of {gap:?} is shorter than 90 lab-minutes"
        );
    }
    assert_eq!(
        *rec.max_busy.lock().unwrap(),
        1,
        "one phase per device at a time"
    );
    // pc01 and pc02 overlapped: the fleet does not run devices one after another.
    let pc02_start = calls
        .iter()
        .filter(|c| c.2 == "pc02")
        .map(|c| c.3)
        .min()
        .unwrap();
    let pc01_end = calls
        .iter()
        .filter(|c| c.2 == "pc01")
        .map(|c| c.4)
        .max()
        .unwrap();
    assert!(pc02_start < pc01_end);
    let reseal = ledger.last_lifecycle("pc01", "resealed").unwrap().unwrap();
    assert_eq!(reseal.run_id, "run-a");
    assert!(
        ledger.leases(now_millis()).unwrap().is_empty(),
        "every lease released at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_run_resumes_without_rerunning_or_shortening() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap());
    let rec = recorder(5);
    let cancel = CancellationToken::new();
    // Ctrl-C arrives while pc02's technician phase runs; pc01 has finished its own by
    // then or is parked.
    *rec.interrupt_at.lock().unwrap() = Some((("e2e[join=entra]@pc02".into(), 0), cancel.clone()));
    let (first, _rx) = fleet(&ledger, &rec, "run-b");
    let summary = first
        .run(
            vec![e2e_job("pc01", "entra"), e2e_job("pc02", "entra")],
            "{}",
            cancel,
        )
        .await
        .unwrap();
    assert!(summary.unfinished >= 1);
    assert_eq!(ledger.run("run-b").unwrap().status, RunStatus::Interrupted);
    let before: Vec<_> = rec.calls.lock().unwrap().clone();

    *rec.interrupt_at.lock().unwrap() = None;
    let (second, _rx2) = fleet(&ledger, &rec, "run-b");
    let summary = second
        .resume(
            vec![e2e_job("pc01", "entra"), e2e_job("pc02", "entra")],
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((summary.passed, summary.unfinished), (2, 0));

    let calls = rec.calls.lock().unwrap().clone();
    let after = &calls[before.len()..];
    // Phases that passed before the interruption are not run again.
    assert!(before.iter().any(|c| c.5 == PhaseOutcome::Interrupted));
    for done in before.iter().filter(|c| c.5 == PhaseOutcome::Passed) {
        assert!(
            !after.iter().any(|c| c.0 == done.0 && c.1 == done.1),
            "{} phase {} ran again after resume",
            done.0,
            done.1
        );
    }
    // Every user phase started at least 90 lab-minutes after its technician phase ended.
    for case in ["e2e[join=entra]@pc01", "e2e[join=entra]@pc02"] {
        let tech_end = calls
            .iter()
            .filter(|c| c.0 == case && c.1 == 0 && c.5 == PhaseOutcome::Passed)
            .map(|c| c.4)
            .max()
            .unwrap();
        let user = calls.iter().find(|c| c.0 == case && c.1 == 1).unwrap();
        assert!(
            user.3.duration_since(tech_end) >= Duration::from_millis(90),
            "{case}: gap shortened"
        );
    }
    assert_eq!(ledger.run("run-b").unwrap().status, RunStatus::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_failure_moves_the_case_to_another_device_product_failure_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap());
    let rec = recorder(1);
    let mut moving = e2e_job("pc01", "entra");
    moving.alternatives = vec!["pc09".into()];
    let mut failing = e2e_job("pc02", "entra");
    failing.alternatives = vec!["pc08".into()];
    rec.script.lock().unwrap().insert(
        (moving.case_id.clone(), 0, "pc01".into()),
        PhaseOutcome::Failed {
            class: FailureClass::Infrastructure,
            message: "console link down".into(),
        },
    );
    rec.script.lock().unwrap().insert(
        (failing.case_id.clone(), 1, "pc02".into()),
        PhaseOutcome::Failed {
            class: FailureClass::Product,
            message: "0x80180014".into(),
        },
    );
    let (fleet, mut rx) = fleet(&ledger, &rec, "run-c");
    let summary = fleet
        .run(
            vec![moving.clone(), failing.clone()],
            "{}",
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((summary.passed, summary.failed), (1, 1));
    assert_eq!(summary.classes.get("product"), Some(&1));

    let cases = ledger.cases("run-c").unwrap();
    let moved = cases.iter().find(|c| c.case_id == moving.case_id).unwrap();
    assert_eq!(
        (moved.status, moved.device_id.as_str()),
        (CaseStatus::Passed, "pc09")
    );
    let failed = cases.iter().find(|c| c.case_id == failing.case_id).unwrap();
    assert_eq!(
        (failed.status, failed.class.as_deref()),
        (CaseStatus::Failed, Some("product"))
    );
    assert!(
        !rec.calls.lock().unwrap().iter().any(|c| c.2 == "pc08"),
        "a product failure is not moved"
    );
    let mut saw_move = false;
    while let Ok(e) = rx.try_recv() {
        if let FleetEvent::MovedToDevice {
            from, to, reason, ..
        } = e
        {
            assert_eq!(
                (from.as_str(), to.as_str(), reason.as_str()),
                ("pc01", "pc09", "console link down")
            );
            saw_move = true;
        }
    }
    assert!(saw_move);
}

fn health_job(device: &str) -> Job {
    let case = Case::new();
    Job {
        case_id: Job::case_id_for("health-check", &case, device),
        scenario: "health-check".into(),
        case,
        device_id: device.into(),
        priority: 0,
        health: true,
        phases: vec![PhasePlan {
            name: "health".into(),
            gap: None,
            estimate: Duration::from_secs(60),
        }],
        alternatives: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_failing_its_health_check_is_left_out_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap());
    let rec = recorder(1);
    rec.script.lock().unwrap().insert(
        ("health-check@pc03".into(), 0, "pc03".into()),
        PhaseOutcome::Failed {
            class: FailureClass::Infrastructure,
            message: "no boot lines on the console".into(),
        },
    );
    let (fleet1, _rx) = fleet(&ledger, &rec, "run-d1");
    // The e2e job is listed first; the health check still runs before it.
    let s = fleet1
        .run(
            vec![e2e_job("pc03", "entra"), health_job("pc03")],
            "{}",
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((s.failed, s.skipped, s.passed), (1, 1, 0));
    assert_eq!(ledger.health("pc03").unwrap().unwrap().health, Health::Bad);
    let skipped = ledger
        .cases("run-d1")
        .unwrap()
        .into_iter()
        .find(|c| c.scenario == "e2e")
        .unwrap();
    assert!(
        skipped
            .message
            .unwrap()
            .contains("no boot lines on the console")
    );

    // Repaired: the next run's health check passes and the device is used again.
    rec.script.lock().unwrap().clear();
    let (fleet2, _rx) = fleet(&ledger, &rec, "run-d2");
    let s = fleet2
        .run(
            vec![e2e_job("pc03", "entra"), health_job("pc03")],
            "{}",
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((s.failed, s.skipped, s.passed), (0, 0, 2));
    assert_eq!(ledger.health("pc03").unwrap().unwrap().health, Health::Good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_ledger_never_drive_a_device_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let rec = recorder(3);
    let jobs = |_: &str| vec![e2e_job("pc01", "entra"), e2e_job("pc02", "entra")];
    // Two runners, each with its own connection, as two processes would have.
    let (a, _rxa) = fleet(
        &Arc::new(SqliteLedger::open(&path).unwrap()),
        &rec,
        "run-e1",
    );
    let (b, _rxb) = fleet(
        &Arc::new(SqliteLedger::open(&path).unwrap()),
        &rec,
        "run-e2",
    );
    let (ra, rb) = tokio::join!(
        a.run(jobs("a"), "{}", CancellationToken::new()),
        b.run(jobs("b"), "{}", CancellationToken::new())
    );
    assert_eq!(ra.unwrap().passed + rb.unwrap().passed, 4);
    assert_eq!(
        *rec.max_busy.lock().unwrap(),
        1,
        "a device ran phases for two runners at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_flow_only_case_needs_a_reseal_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap());
    let rec = recorder(1);
    let mut user_only = e2e_job("pc05", "entra");
    user_only.scenario = "user-flow".into();
    user_only.case_id = "user-flow[join=entra]@pc05".into();
    user_only.phases.remove(0);
    let (f, _rx) = fleet(&ledger, &rec, "run-f1");
    let s = f
        .run(vec![user_only.clone()], "{}", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.skipped, 1);
    let msg = ledger.cases("run-f1").unwrap()[0].message.clone().unwrap();
    assert_eq!(
        msg,
        "device pc05 has no reseal on record; run the technician flow on it first"
    );

    // After a technician flow, the user flow waits out the rest of the 90 minutes.
    let (f, _rx) = fleet(&ledger, &rec, "run-f2");
    let mut tech_only = e2e_job("pc05", "entra");
    tech_only.phases.truncate(1);
    f.run(vec![tech_only], "{}", CancellationToken::new())
        .await
        .unwrap();
    let resealed_at = ledger
        .last_lifecycle("pc05", "resealed")
        .unwrap()
        .unwrap()
        .at;
    let (f, _rx) = fleet(&ledger, &rec, "run-f3");
    let s = f
        .run(vec![user_only], "{}", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.passed, 1);
    let started = ledger.cases("run-f3").unwrap()[0].started_at.unwrap();
    assert!(
        started - resealed_at >= 90,
        "user flow began {} ms after reseal",
        started - resealed_at
    );
}
