//! Every fault the virtual lab can inject, through the real binary on a relocated copy
//! of the shipped lab. Each test puts a different fault on each device and runs once over
//! all of them, then reads back each case's `events.jsonl` (class and code of the failed
//! step, on which device) and the run's `summary.json` (the signature the report shows).
//!
//! What must come out: faults of the lab's own equipment (power controller, serial link,
//! SSH, Graph throttling) are retried away, or end as `infrastructure`, never `product`;
//! faults of the device and the process end as `product` with the code the device shows,
//! matched to the right known-failure signature; a device that offers no way forward
//! (wlidsvc off: a local account instead of the Entra sign-in) is a product failure too.

mod lab_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lab_support::TestLab;
use serde_json::Value;

/// Adds a `sim:` block to one device of the shipped inventory (merged key by key with
/// its template's `sim:`).
fn with_sim(text: String, device: &str, sim: &str) -> String {
    let line = format!("  - id: {device}\n");
    assert!(text.contains(&line), "no device {device} in the inventory");
    text.replace(&line, &format!("{line}    sim: {sim}\n"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// How one case ended, from its events and the run's summary.
#[derive(Debug)]
struct Case {
    status: String,
    /// `step_finished` events with status failed: (device, class, code).
    failed_steps: Vec<(String, String, Option<String>)>,
    /// `step_retried` events: (device, step, class).
    retried: Vec<(String, String, String)>,
    /// Captures of matched patterns, e.g. the `code` an expected failure showed.
    captured_codes: Vec<String>,
    /// The case's fatal failure in summary.json: (class, code, signature id).
    fatal: Option<(String, Option<String>, Option<String>)>,
    /// The title of that failure's signature.
    fatal_title: Option<String>,
    console: String,
}

/// The run directory's cases, by slug (`scenario_axis-value_...@device`).
struct Run {
    exit: Option<i32>,
    dir: PathBuf,
    cases: BTreeMap<String, Case>,
}

impl Run {
    fn case(&self, slug: &str) -> &Case {
        self.cases.get(slug).unwrap_or_else(|| {
            panic!(
                "no case {slug} in {} (cases: {:?})",
                self.dir.display(),
                self.cases.keys().collect::<Vec<_>>()
            )
        })
    }

    /// The case failed on `device` with this class, code and signature, in the events
    /// and in the summary alike; no other step of it failed.
    fn assert_failed(&self, slug: &str, device: &str, class: &str, code: Option<&str>, sig: &str) {
        let case = self.case(slug);
        let want = (
            device.to_string(),
            class.to_string(),
            code.map(str::to_string),
        );
        assert_eq!(case.status, "failed", "{slug}: {case:#?}");
        assert_eq!(
            case.failed_steps,
            vec![want],
            "{slug}: failed steps in events.jsonl"
        );
        assert_eq!(
            case.fatal,
            Some((
                class.to_string(),
                code.map(str::to_string),
                Some(sig.to_string())
            )),
            "{slug}: the failure in summary.json"
        );
    }

    fn assert_passed(&self, slug: &str) {
        let case = self.case(slug);
        assert_eq!(case.status, "passed", "{slug}: {case:#?}");
        assert!(case.failed_steps.is_empty(), "{slug}: {case:#?}");
    }

    /// No failure anywhere in the run is classed `product` unless `allowed` names its case.
    fn assert_no_other_product_failures(&self, allowed: &[&str]) {
        for (slug, case) in &self.cases {
            if allowed.contains(&slug.as_str()) {
                continue;
            }
            for (device, class, code) in &case.failed_steps {
                assert_ne!(
                    class, "product",
                    "{slug} on {device}: product failure {code:?}"
                );
            }
        }
    }
}

fn run(lab: &TestLab, args: &[&str]) -> Run {
    let out = lab.aplab(args);
    let dir = lab.only_run_dir();
    let summary: Value =
        serde_json::from_str(&read(&dir.join("summary.json"))).expect("summary.json");
    let mut cases = BTreeMap::new();
    for case in summary["cases"].as_array().expect("cases in summary.json") {
        let slug = case["slug"].as_str().expect("slug").to_string();
        let case_dir = dir.join("cases").join(&slug);
        let events: Vec<Value> = read(&case_dir.join("events.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event per line"))
            .collect();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let failed_steps = events
            .iter()
            .filter(|e| e["kind"]["event"] == "step_finished")
            .filter(|e| e["kind"]["status"]["status"] == "failed")
            .map(|e| {
                let s = &e["kind"]["status"];
                (
                    text(&e["device"]),
                    text(&s["class"]),
                    s["code"].as_str().map(str::to_string),
                )
            })
            .collect();
        let retried = events
            .iter()
            .filter(|e| e["kind"]["event"] == "step_retried")
            .map(|e| {
                (
                    text(&e["device"]),
                    text(&e["step"]),
                    text(&e["kind"]["after_class"]),
                )
            })
            .collect();
        let captured_codes = events
            .iter()
            .filter(|e| e["kind"]["event"] == "pattern_matched")
            .filter_map(|e| e["kind"]["captures"]["code"].as_str().map(str::to_string))
            .collect();
        let fatal = case["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["fatal"] == true)
            .map(|f| {
                (
                    text(&f["class"]),
                    f["code"].as_str().map(str::to_string),
                    f["diagnosis"]["signature"].as_str().map(str::to_string),
                )
            });
        let fatal_title = case["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["fatal"] == true)
            .and_then(|f| f["diagnosis"]["title"].as_str().map(str::to_string));
        let console = std::fs::read_to_string(case_dir.join("console.log")).unwrap_or_default();
        cases.insert(
            slug,
            Case {
                status: text(&case["status"]),
                failed_steps,
                retried,
                captured_codes,
                fatal,
                fatal_title,
                console,
            },
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = Run {
        exit: out.status.code(),
        dir,
        cases,
    };
    for (slug, case) in &run.cases {
        eprintln!(
            "{slug}: {} {:?} {:?} retried={:?}",
            case.status, case.failed_steps, case.fatal, case.retried
        );
    }
    assert!(!run.cases.is_empty(), "the run planned no cases:\n{stderr}");
    run
}

/// The HTML report names the signature of every failure (the `signatures` expected
/// among them), and the JUnit report gives its title.
fn assert_reports_name(run: &Run, signatures: &[&str]) {
    let junit = read(&run.dir.join("junit.xml"));
    let html = read(&run.dir.join("report.html"));
    let mut named = Vec::new();
    for (slug, case) in &run.cases {
        let Some((_, _, Some(sig))) = &case.fatal else {
            continue;
        };
        let title = case.fatal_title.as_deref().unwrap_or_default();
        assert!(
            html.contains(sig.as_str()),
            "report.html does not name {sig} ({slug})"
        );
        assert!(junit.contains(title), "junit.xml lacks `{title}` ({slug})");
        named.push(sig.as_str());
    }
    for sig in signatures {
        assert!(named.contains(sig), "no failure was matched to {sig}");
    }
}

#[test]
fn technician_flow_faults_end_in_the_right_class_code_and_signature() {
    let lab = TestLab::shipped(|t| {
        let t = with_sim(t, "pc01", "{ faults: [ { attestation: timeout } ] }");
        // More failures than one run's attempts (3): the device gives up with 0x81039001.
        let t = with_sim(
            t,
            "pc02",
            "{ faults: [ { attestation: { intermittent: 5 } } ] }",
        );
        // pc03's console is a TCP console: its clients are disconnected while it is down.
        let t = with_sim(
            t,
            "pc03",
            "{ faults: [ { serial_drop: { after: 1m, down: 2m } } ] }",
        );
        let t = with_sim(t, "pc04", "{ registered: false }");
        let t = with_sim(t, "pc05", "{ faults: [ { clock_skew: 2h } ] }");
        // 50 times slower: Device setup runs past the ESP timeout.
        let t = with_sim(t, "pc06", "{ faults: [ { slow_esp: 50 } ] }");
        // Windows Home (refused, 0x80180022) behind a failing Redfish and a throttled Graph.
        with_sim(
            t,
            "pc07",
            "{ faults: [ { power_fails: 2 }, { graph_throttle: 3 } ] }",
        )
    });
    let run = run(
        &lab,
        &[
            "run",
            "technician-flow",
            "negative-home-edition",
            "--matrix",
            "join=entra",
            "--no-health",
            // The devices and the tenant enforce these rules themselves; the pre-flight
            // would skip the unregistered and disallowed devices before they are powered.
            "--no-preflight",
        ],
    );
    // Product failures alone would exit 1; a configuration failure (pc04) takes
    // precedence: exit code 2.
    assert_eq!(
        run.exit,
        Some(2),
        "exit code of a run with a configuration failure"
    );

    let tf = |device: &str, windows: &str| {
        format!("technician-flow_join-entra_windows-{windows}@{device}")
    };
    run.assert_failed(
        &tf("pc01", "11"),
        "pc01",
        "product",
        Some("0x800705B4"),
        "tpm-attestation-timeout",
    );
    run.assert_failed(
        &tf("pc02", "11"),
        "pc02",
        "product",
        Some("0x81039001"),
        "attestation-retries-exceeded",
    );
    let pc02 = &run.case(&tf("pc02", "11")).console;
    for attempt in 1..=3 {
        let line = format!("SecuringHardware attempt {attempt} failed 0x81039001");
        assert!(pc02.contains(&line), "pc02's console lacks `{line}`");
    }
    run.assert_failed(
        &tf("pc05", "11"),
        "pc05",
        "product",
        Some("0x800705B4"),
        "esp-timeout-shown-clock-skew",
    );
    run.assert_failed(
        &tf("pc06", "11"),
        "pc06",
        "product",
        Some("0x800705B4"),
        "esp-timeout-shown",
    );
    // The console link drops (the reader notes it) and comes back: the case passes.
    run.assert_passed(&tf("pc03", "10"));
    assert!(
        run.case(&tf("pc03", "10"))
            .console
            .contains("--- link lost at"),
        "pc03's serial drop never fired"
    );
    // Not registered: the tenant has no Autopilot identity for it, a configuration
    // problem of the lab's tenant (found before the device is touched).
    run.assert_failed(
        &tf("pc04", "10"),
        "pc04",
        "config",
        Some("not registered"),
        "device-not-registered",
    );
    let home = run.case("negative-home-edition_join-entra_windows-11@pc07");
    assert_eq!(home.status, "passed", "{home:#?}");
    assert_eq!(home.captured_codes, vec!["0x80180022".to_string()]);
    assert!(
        home.retried
            .contains(&("pc07".into(), "power on".into(), "infrastructure".into())),
        "the Redfish failures were retried as infrastructure: {:?}",
        home.retried
    );
    run.assert_no_other_product_failures(&[
        &tf("pc01", "11"),
        &tf("pc02", "11"),
        &tf("pc05", "11"),
        &tf("pc06", "11"),
    ]);
    assert_reports_name(
        &run,
        &[
            "tpm-attestation-timeout",
            "attestation-retries-exceeded",
            "esp-timeout-shown-clock-skew",
            "esp-timeout-shown",
            "device-not-registered",
        ],
    );
}

/// Scenarios that break the process's rules but expect success, so the run shows the
/// failure, its class, code and signature (the shipped negative scenarios pass instead).
const RULE_BREAKERS: &[(&str, &str)] = &[
    (
        "fault-user-too-soon.yaml",
        r#"name: fault-user-too-soon
description: The user flow only 10 minutes after the technician flow.
requires: [{ fact: id, is: pc02 }]
matrix: { join: [entra], windows: ["11"] }
phases:
  - name: technician
    timeout: 3h
    steps: [{ use: technician-flow }]
  - name: user
    gap: { min: 10m, allow_short: true }
    timeout: 3h
    steps: [{ use: user-flow }]
"#,
    ),
    (
        "fault-rerun-without-reset.yaml",
        r#"name: fault-rerun-without-reset
description: The technician flow twice, the Intune record kept in between.
requires: [{ fact: id, is: pc05 }]
matrix: { join: [entra], windows: ["11"] }
phases:
  - name: technician
    timeout: 3h
    steps: [{ use: technician-flow }]
  - name: technician-again
    timeout: 3h
    steps: [{ use: technician-flow, with: { reset_record: false } }]
"#,
    ),
];

#[test]
fn user_flow_and_process_faults_end_in_the_right_class_code_and_signature() {
    let lab = TestLab::shipped(|t| {
        let t = with_sim(t, "pc01", "{ domain_reachable: false }");
        // PiKVM's ATX power fails twice, then the user flow offers a local account.
        let t = with_sim(
            t,
            "pc03",
            "{ wlidsvc_disabled: true, faults: [ { power_fails: 2 } ] }",
        );
        let t = with_sim(t, "pc04", "{ allow_preprovisioning: false }");
        let t = with_sim(
            t,
            "pc05",
            "{ faults: [ { ssh_refused_during_reboot: true } ] }",
        );
        // One failed attestation attempt (retried by the device) and a slightly slow ESP.
        with_sim(
            t,
            "pc06",
            "{ faults: [ { attestation: { intermittent: 1 } }, { slow_esp: 1.2 } ] }",
        )
    });
    let extra = lab.path("extra-scenarios");
    std::fs::create_dir_all(&extra).unwrap();
    for (file, text) in RULE_BREAKERS {
        std::fs::write(extra.join(file), text).unwrap();
    }
    let extra = extra.display().to_string();
    let run = run(
        &lab,
        &[
            "run",
            "preprovision-e2e",
            "fault-user-too-soon",
            "fault-rerun-without-reset",
            "--scenarios",
            "scenarios",
            "--scenarios",
            &extra,
            "--no-health",
            // The devices and the tenant enforce these rules themselves; the pre-flight
            // would skip the unregistered and disallowed devices before they are powered.
            "--no-preflight",
        ],
    );
    assert_eq!(run.exit, Some(1), "product failures make exit code 1");
    let e2e = |join: &str, windows: &str, device: &str| {
        format!("preprovision-e2e_join-{join}_windows-{windows}@{device}")
    };
    run.assert_failed(
        &e2e("hybrid", "11", "pc01"),
        "pc01",
        "product",
        Some("0x80070774"),
        "hybrid-dc-unreachable",
    );
    run.assert_passed(&e2e("entra", "11", "pc01"));
    run.assert_failed(
        &e2e("entra", "10", "pc03"),
        "pc03",
        "product",
        None,
        "wlidsvc-disabled-local-account",
    );
    run.assert_passed(&e2e("hybrid", "10", "pc03"));
    for join in ["entra", "hybrid"] {
        run.assert_failed(
            &e2e(join, "10", "pc04"),
            "pc04",
            "product",
            Some("0x80180005"),
            "profile-disallows-preprovisioning",
        );
    }
    for device in ["pc02", "pc05", "pc06"] {
        run.assert_passed(&e2e("entra", "11", device));
        run.assert_passed(&e2e("hybrid", "11", device));
    }
    run.assert_failed(
        "fault-user-too-soon_join-entra_windows-11@pc02",
        "pc02",
        "product",
        Some("0xCAA5001C"),
        "user-flow-too-soon",
    );
    run.assert_failed(
        "fault-rerun-without-reset_join-entra_windows-11@pc05",
        "pc05",
        "product",
        Some("0x80180014"),
        "enrollment-blocked-reused-device",
    );
    run.assert_no_other_product_failures(&[
        &e2e("hybrid", "11", "pc01"),
        &e2e("entra", "10", "pc03"),
        &e2e("entra", "10", "pc04"),
        &e2e("hybrid", "10", "pc04"),
        "fault-user-too-soon_join-entra_windows-11@pc02",
        "fault-rerun-without-reset_join-entra_windows-11@pc05",
    ]);
    // PiKVM's ATX power failed twice on pc03 and was retried as infrastructure.
    let pc03_retries: Vec<_> = run
        .cases
        .values()
        .flat_map(|c| c.retried.iter())
        .filter(|(device, _, _)| device == "pc03")
        .collect();
    assert!(
        pc03_retries
            .iter()
            .any(|(_, step, class)| step == "power on" && class == "infrastructure"),
        "pc03's power failures were not retried as infrastructure: {pc03_retries:?}"
    );
    // pc06's first attestation attempt failed and the device's own retry succeeded.
    let pc06_console: String = run
        .cases
        .iter()
        .filter(|(slug, _)| slug.ends_with("@pc06"))
        .map(|(_, c)| c.console.as_str())
        .collect();
    assert!(
        pc06_console.contains("SecuringHardware attempt 1 failed 0x81039001"),
        "pc06's intermittent attestation fault never fired"
    );
    assert_reports_name(
        &run,
        &[
            "hybrid-dc-unreachable",
            "wlidsvc-disabled-local-account",
            "profile-disallows-preprovisioning",
            "user-flow-too-soon",
            "enrollment-blocked-reused-device",
        ],
    );
}
