//! The run ledger on a real SQLite file: leases are exclusive across connections (as
//! across runner processes), stale leases expire by themselves, parked waits and device
//! lifecycle survive reopening the file.

use std::sync::{Arc, Barrier};

use aplab::store::sqlite::SqliteLedger;
use aplab::store::*;

fn lease(device: &str, owner: &str, now: Millis, ttl: Millis) -> Lease {
    Lease {
        device_id: device.into(),
        owner: owner.into(),
        run_id: "run-1".into(),
        case_id: format!("case@{device}"),
        acquired_at: now,
        expires_at: now + ttl,
    }
}

#[test]
fn racing_connections_never_lease_one_device_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    SqliteLedger::open(&path)
        .unwrap()
        .create_run("run-1", "{}", 0)
        .unwrap();

    let runners = 4;
    let devices: Vec<String> = (0..25).map(|i| format!("pc{i:02}")).collect();
    let barrier = Arc::new(Barrier::new(runners));
    let handles: Vec<_> = (0..runners)
        .map(|r| {
            let (path, devices, barrier) = (path.clone(), devices.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each runner has its own connection, as a separate process would.
                let ledger = SqliteLedger::open(&path).unwrap();
                barrier.wait();
                devices
                    .iter()
                    .filter(|d| {
                        ledger
                            .try_lease(&lease(d, &format!("runner-{r}"), 1_000, 60_000), 1_000)
                            .unwrap()
                    })
                    .count()
            })
        })
        .collect();
    let won: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let ledger = SqliteLedger::open(&path).unwrap();
    let history = ledger.lease_history("run-1").unwrap();
    assert_eq!(
        won,
        devices.len(),
        "every device leased by exactly one runner"
    );
    assert_eq!(history.len(), devices.len());
    let mut leased: Vec<_> = history.iter().map(|l| l.device_id.clone()).collect();
    leased.sort();
    leased.dedup();
    assert_eq!(
        leased.len(),
        devices.len(),
        "no device appears twice in the lease log"
    );
}

#[test]
fn a_stale_lease_expires_by_itself_and_a_live_one_holds() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap();
    assert!(
        ledger
            .try_lease(&lease("pc01", "crashed-runner", 0, 30_000), 0)
            .unwrap()
    );
    // Still valid: another runner is refused.
    assert!(
        !ledger
            .try_lease(&lease("pc01", "new-runner", 10_000, 30_000), 10_000)
            .unwrap()
    );
    // The crashed runner stopped heart-beating; past expiry the device is free again.
    assert!(
        ledger
            .try_lease(&lease("pc01", "new-runner", 30_000, 30_000), 30_000)
            .unwrap()
    );
    let live = ledger.leases(30_001).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].owner, "new-runner");

    // A heartbeat extends only the owner's leases.
    assert_eq!(ledger.heartbeat("new-runner", 90_000).unwrap(), 1);
    assert_eq!(ledger.heartbeat("crashed-runner", 90_000).unwrap(), 0);
    assert!(
        !ledger
            .try_lease(&lease("pc01", "third", 70_000, 30_000), 70_000)
            .unwrap()
    );
    ledger.release("pc01", "new-runner").unwrap();
    assert!(
        ledger
            .try_lease(&lease("pc01", "third", 70_000, 30_000), 70_000)
            .unwrap()
    );
}

#[test]
fn cases_parked_waits_and_lifecycle_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    {
        let ledger = SqliteLedger::open(&path).unwrap();
        ledger
            .create_run("r1", r#"{"scenarios":["e2e"]}"#, 5)
            .unwrap();
        let case = CaseRecord {
            run_id: "r1".into(),
            case_id: "e2e[join=entra]@pc01".into(),
            scenario: "e2e".into(),
            matrix: r#"{"join":"entra"}"#.into(),
            device_id: "pc01".into(),
            status: CaseStatus::Parked,
            next_phase: 1,
            class: None,
            message: None,
            started_at: Some(10),
            finished_at: None,
        };
        ledger.add_cases(std::slice::from_ref(&case)).unwrap();
        // Adding the same case again (a resumed run re-planning) keeps its progress.
        ledger
            .add_cases(&[CaseRecord {
                status: CaseStatus::Pending,
                next_phase: 0,
                ..case.clone()
            }])
            .unwrap();
        ledger
            .park(&ParkedWait {
                run_id: "r1".into(),
                case_id: case.case_id.clone(),
                device_id: "pc01".into(),
                next_phase: 1,
                not_before: 5_400_010,
                not_after: Some(15_552_000_010),
            })
            .unwrap();
        ledger
            .record_lifecycle(&LifecycleEvent {
                device_id: "pc01".into(),
                kind: "resealed".into(),
                at: 10,
                run_id: "r1".into(),
                detail: "profile=Contoso Entra".into(),
            })
            .unwrap();
    }
    let ledger = SqliteLedger::open(&path).unwrap();
    let cases = ledger.cases("r1").unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].status, CaseStatus::Parked);
    assert_eq!(cases[0].next_phase, 1);
    let parked = ledger.parked("r1").unwrap();
    assert_eq!(
        parked[0].not_before, 5_400_010,
        "the gap's end is stored as an instant, never shortened"
    );
    let resealed = ledger.last_lifecycle("pc01", "resealed").unwrap().unwrap();
    assert_eq!(resealed.detail, "profile=Contoso Entra");
    assert!(ledger.last_lifecycle("pc02", "resealed").unwrap().is_none());
    ledger.unpark("r1", &cases[0].case_id).unwrap();
    assert!(ledger.parked("r1").unwrap().is_empty());
    assert!(matches!(
        ledger.run("nope"),
        Err(LedgerError::UnknownRun(_))
    ));
}

#[test]
fn health_is_recorded_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("l.sqlite")).unwrap();
    assert!(ledger.health("pc01").unwrap().is_none());
    let bad = DeviceHealth {
        device_id: "pc01".into(),
        health: Health::Bad,
        checked_at: 1,
        run_id: "r1".into(),
        reason: "console silent after power on".into(),
    };
    ledger.set_health(&bad).unwrap();
    assert_eq!(ledger.health("pc01").unwrap().unwrap(), bad);
    ledger
        .set_health(&DeviceHealth {
            health: Health::Good,
            checked_at: 2,
            ..bad.clone()
        })
        .unwrap();
    assert_eq!(ledger.health("pc01").unwrap().unwrap().health, Health::Good);
}

#[test]
fn a_file_that_is_not_a_ledger_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "this is not a database, just some text that is long enough",
    )
    .unwrap();
    let err = SqliteLedger::open(&path)
        .err()
        .expect("garbage file must be refused");
    let text = err.to_string();
    assert!(text.contains("notes.txt"), "{text}");
    assert!(text.contains("check the disk"), "{text}");
}

/// Runners started at the same moment open a new ledger together (one of them sets up the
/// file while the others wait); none of them is told "database is locked". Each round
/// uses a fresh file, so the race of creating it is run again.
#[test]
fn runners_opening_a_new_ledger_at_once_all_get_it() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join(format!("lab-state/ledger-{round}.sqlite")));
        let start = Arc::new(Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    SqliteLedger::open(&path).map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            let opened = opener.join().unwrap();
            assert!(opened.is_ok(), "round {round}: {:?}", opened.err());
        }
    }
}
