//! `aplab history` against a ledger on disk: new failures, fixed, flaky (on retry and
//! alternating), pass rate per model, and the errors a user sees.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aplab::model::inventory::{Device, Edition, Windows};
use aplab::report::{Redactor, RunDir, RunInput, SignatureBook, write_reports};
use aplab::store::sqlite::SqliteLedger;
use aplab::store::{CaseRecord, CaseStatus, Ledger, RunStatus, StepRecord};
use serde_json::Value;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_795_000_000_000;

fn device(id: &str, model: &str) -> Device {
    Device {
        id: id.into(),
        serial: format!("SN-{id}"),
        manufacturer: "Fabrikam".into(),
        model: model.into(),
        windows: Windows {
            edition: Edition::Enterprise,
            version: 10,
            build: None,
        },
        tpm: None,
        tags: BTreeMap::new(),
        power: None,
        console: None,
        keyboard: None,
        screen: None,
        shell: None,
        tpm_access: None,
        tenant: None,
        health_scenario: None,
        sim: None,
    }
}

/// Cases a, b, c, d on devices d1 (model X) and d2 (model Y) over three runs.
fn ledger(path: &Path) -> SqliteLedger {
    let l = SqliteLedger::open(path).unwrap();
    use CaseStatus::{Failed as F, Passed as P};
    let runs = [
        ("r1", [P, F, P, F]),
        ("r2", [P, P, F, F]),
        ("r3", [F, P, P, P]),
    ];
    let cases = [("a", "d1"), ("b", "d1"), ("c", "d2"), ("d", "d2")];
    for (i, (run, statuses)) in runs.iter().enumerate() {
        let at = T0 + i as i64 * DAY;
        l.create_run(run, "{}", at).unwrap();
        for ((scenario, dev), status) in cases.iter().zip(statuses) {
            let record = CaseRecord {
                run_id: run.to_string(),
                case_id: format!("{scenario}@{dev}"),
                scenario: scenario.to_string(),
                matrix: "{}".into(),
                device_id: dev.to_string(),
                status: *status,
                next_phase: 1,
                class: (*status == F).then(|| "product".to_string()),
                message: (*status == F).then(|| format!("{scenario} failed in {run}")),
                started_at: Some(at),
                finished_at: Some(at + 1000),
            };
            l.add_cases(&[record]).unwrap();
        }
        l.finish_run(run, RunStatus::Finished, at + 2000).unwrap();
    }
    // In r3, case d passed only on its second attempt.
    for (attempt, status) in [(1, "failed"), (2, "passed")] {
        l.record_step(&StepRecord {
            run_id: "r3".into(),
            case_id: "d@d2".into(),
            phase: "technician".into(),
            step: "wait for the success screen".into(),
            attempt,
            status: status.into(),
            class: (status == "failed").then(|| "timeout".into()),
            code: None,
            message: None,
            started_at: T0,
            elapsed_ms: 10,
        })
        .unwrap();
    }
    l
}

fn aplab(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aplab"))
        .args(args)
        .env("APLAB_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn history_compares_the_latest_run_with_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ledger.sqlite");
    let l = ledger(&db);
    // The latest run's report records the device models the history groups by.
    let reports = tmp.path().join("reports");
    let devices = [device("d1", "Model X"), device("d2", "Model Y")];
    let input =
        RunInput::from_ledger(&l, "r3", "lab", &devices, SignatureBook::builtin(), 10).unwrap();
    let dir = RunDir::create(&reports, "r3", Redactor::default()).unwrap();
    write_reports(&dir, &input).unwrap();

    let (code, out, err) = aplab(&[
        "history",
        "--ledger",
        db.to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("run r3 compared with 2 earlier run(s): r2, r1\n"),
        "{out}"
    );
    let section = |title: &str| -> String {
        let start = out
            .find(&format!("\n{title} ("))
            .unwrap_or_else(|| panic!("{title}: {out}"));
        let rest = &out[start + 1..];
        let end = rest[1..].find("\n\n").map(|e| e + 1).unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let new = section("new failures");
    assert!(
        new.contains("a@d1 [Model X] (since r2): product: a failed in r3"),
        "{new}"
    );
    let fixed = section("fixed");
    assert!(
        fixed.contains("c@d2 [Model Y] (since r2): product: c failed in r2"),
        "{fixed}"
    );
    assert!(fixed.contains("d@d2"), "{fixed}");
    assert!(!fixed.contains("b@d1"), "b passed in r2 already: {fixed}");
    let flaky = section("flaky");
    assert!(!flaky.contains("b@d1"), "one flip is not flaky: {flaky}");
    assert!(
        flaky.contains("c@d2 [Model Y]: alternating across runs (oldest first): P F P"),
        "{flaky}"
    );
    assert!(
        flaky.contains("d@d2 [Model Y]: passed on retry (step technician / wait for the success screen, attempt 2)"),
        "{flaky}"
    );
    let rates = section("pass rate per model (this run; whole window)");
    assert!(rates.contains("Model X: 50% (1/2); 66.7% (4/6)"), "{rates}");
    assert!(rates.contains("Model Y: 100% (2/2); 50% (3/6)"), "{rates}");

    // An earlier run compared with the one before it, as JSON.
    let (code, out, err) = aplab(&[
        "history",
        "--run",
        "r2",
        "--json",
        "--ledger",
        db.to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["earlier_runs"], serde_json::json!(["r1"]));
    assert_eq!(h["fixed"][0]["case_id"], "b@d1");
    assert_eq!(h["new_failures"][0]["case_id"], "c@d2");
    assert_eq!(h["still_failing"][0]["case_id"], "d@d2");
}

#[test]
fn history_says_what_is_wrong_with_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ledger.sqlite");
    ledger(&db);
    let (code, _, err) = aplab(&["history", "--run", "r9", "--ledger", db.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("run r9 is not in the ledger") && err.contains("leave out --run"),
        "{err}"
    );
    let missing = tmp.path().join("nope.sqlite");
    let (code, _, err) = aplab(&["history", "--ledger", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no run ledger at") && err.contains("--ledger"),
        "{err}"
    );
    assert!(!missing.exists(), "looking must not create a ledger");
}
