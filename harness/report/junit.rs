//! `junit.xml` for CI servers.
//!
//! One `<testsuite>` per scenario case on a device; one `<testcase>` per phase and per
//! check that matters (expect, screen check, shell, TPM and tenant assertions, and any
//! step that failed). The failure's `type` is the failure class, its message the code and
//! the known cause. Retried steps carry `flakyFailure` (passed in the end) or
//! `rerunFailure` (failed in the end) entries. Console excerpts and attachments (in the
//! Jenkins `[[ATTACHMENT|/abs/path]]` convention) go into `system-out`. Console text is
//! cleaned before it goes in: quick-junit strips C0 control characters but lets U+FFFE
//! and U+FFFF through, which no XML parser accepts.

use std::time::Duration;

use quick_junit::{
    FlakyOrRerun, NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};

use super::ReportError;
use super::console::clean;
use super::rundir::RunDir;
use super::summary::{CaseSummary, FailureSummary, PhaseSummary, RunSummary, StepSummary};

/// Renders the run as JUnit XML.
pub fn render(run_dir: &RunDir, summary: &RunSummary) -> Result<String, ReportError> {
    let mut report = Report::new(format!("aplab run {} ({})", summary.run_id, summary.lab));
    for case in &summary.cases {
        report.add_test_suite(suite(run_dir, summary, case));
    }
    report
        .to_string()
        .map_err(|e| ReportError::Harness(format!("cannot write JUnit XML: {e}")))
}

/// Text safe for XML: device text can carry anything.
fn x(text: &str) -> String {
    clean(text.as_bytes())
}

fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s)
    } else {
        Duration::ZERO
    }
}

fn suite(run_dir: &RunDir, summary: &RunSummary, case: &CaseSummary) -> TestSuite {
    let mut suite = TestSuite::new(x(&case.case_id));
    suite.set_time(secs(case.duration_s));
    let d = &case.device;
    let mut props: Vec<(&str, String)> = vec![
        ("run_id", summary.run_id.clone()),
        ("lab", summary.lab.clone()),
        ("scenario", case.scenario.clone()),
        ("device_id", d.id.clone()),
        ("serial", d.serial.clone()),
        ("manufacturer", d.manufacturer.clone()),
        ("model", d.model.clone()),
        ("windows_edition", d.windows_edition.clone()),
        ("windows_version", d.windows_version.clone()),
        ("windows_build", d.windows_build.clone()),
        ("tpm_family", d.tpm_family.clone()),
        ("tpm_manufacturer", d.tpm_manufacturer.clone()),
        ("tpm_firmware", d.tpm_firmware.clone()),
        ("join_type", case.join.clone().unwrap_or_default()),
        (
            "technician_elapsed",
            case.technician_elapsed.clone().unwrap_or_default(),
        ),
        ("status", case.status.clone()),
    ];
    if !d.tpm_ek_issuer.is_empty() {
        props.push(("tpm_ek_issuer", d.tpm_ek_issuer.clone()));
    }
    for (k, v) in &case.matrix {
        props.push(("matrix", format!("{k}={v}")));
    }
    for (name, value) in props {
        if !value.is_empty() {
            suite.add_property(Property::new(name, x(&value)));
        }
    }

    let classname = x(&case.case_id);
    for phase in &case.phases {
        suite.add_test_case(phase_case(&classname, case, phase));
        for step in phase.steps.iter().filter(|s| s.check) {
            suite.add_test_case(step_case(run_dir, &classname, case, phase, step));
        }
    }
    // A failed case without phases on record still shows up as failed in CI.
    if case.phases.is_empty()
        && let Some(f) = case.failures.first()
    {
        let mut tc = TestCase::new("case", failure_status(f, &[]));
        tc.set_classname(classname.clone());
        tc.set_system_out(failure_out(run_dir, case, f));
        suite.add_test_case(tc);
    }
    let mut out = String::new();
    if let Some(log) = &case.console_log {
        out.push_str(&attachment(run_dir, log));
    }
    if !out.is_empty() {
        suite.set_system_out(out);
    }
    suite
}

fn phase_case(classname: &str, case: &CaseSummary, phase: &PhaseSummary) -> TestCase {
    let failure = case
        .failures
        .iter()
        .find(|f| f.phase == phase.name && f.fatal)
        .or_else(|| case.failures.iter().find(|f| f.phase == phase.name));
    let status = match (phase.status.as_str(), failure) {
        ("passed", _) => TestCaseStatus::success(),
        ("failed" | "kept", Some(f)) => failure_status(f, &[]),
        ("failed" | "kept", None) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type(phase.class.clone().unwrap_or_else(|| "product".into()));
            s.set_message(format!("phase {} failed", phase.name));
            s
        }
        ("not-run", _) => {
            let mut s = TestCaseStatus::skipped();
            s.set_message("not run (an earlier phase failed, or the run stopped)");
            s
        }
        (other, _) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_type(other.to_string());
            s.set_message(format!("phase {} did not finish: {other}", phase.name));
            s
        }
    };
    let mut tc = TestCase::new(x(&format!("phase {}", phase.name)), status);
    tc.set_classname(classname.to_string());
    if let Some(e) = phase.elapsed_s {
        tc.set_time(secs(e));
    }
    if let Some(gap) = phase.gap_before_s {
        tc.add_property(Property::new("gap_before_s", format!("{gap:.0}")));
    }
    if let Some(f) = failure {
        // The details (console, attachments) are on the step's test case.
        tc.set_system_out(format!(
            "failed at step {}: {}\ncause: {}\n",
            x(&f.step),
            x(&f.message),
            x(&f.diagnosis.cause)
        ));
    }
    tc
}

fn step_case(
    run_dir: &RunDir,
    classname: &str,
    case: &CaseSummary,
    phase: &PhaseSummary,
    step: &StepSummary,
) -> TestCase {
    let reruns: Vec<TestRerun> = step
        .retries
        .iter()
        .map(|r| {
            let mut rerun = TestRerun::new(NonSuccessKind::Failure);
            rerun.set_type(r.class.clone());
            rerun.set_message(x(&format!("attempt {}: {}", r.attempt, r.message)));
            rerun.set_description(x(&format!("{}; {}", r.diagnosis.title, r.diagnosis.cause)));
            rerun
        })
        .collect();
    let failure = case
        .failures
        .iter()
        .find(|f| f.phase == phase.name && f.step == step.name);
    let status = match (step.status.as_str(), failure) {
        ("passed", _) => TestCaseStatus::Success { flaky_runs: reruns },
        // A `continue_on_failure` step: the scenario says its failure does not fail the
        // case, so CI must not go red for it; it stays visible as skipped, with the cause.
        ("failed", Some(f)) if !f.fatal && phase.status == "passed" => {
            let mut s = TestCaseStatus::skipped();
            s.set_type("tolerated");
            s.set_message(x(&format!(
                "tolerated failure ({}{}): {}",
                f.class,
                f.code
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default(),
                f.diagnosis.cause
            )));
            s
        }
        ("failed", Some(f)) => failure_status(f, &reruns),
        ("skipped", _) => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(x(step.message.as_deref().unwrap_or("skipped")));
            s
        }
        (other, _) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_type(other.to_string());
            s.set_message(format!("step did not finish: {other}"));
            s
        }
    };
    let mut tc = TestCase::new(x(&format!("{} / {}", phase.name, step.name)), status);
    tc.set_classname(classname.to_string());
    tc.set_time(secs(step.elapsed_s));
    for (k, v) in &step.captures {
        tc.add_property(Property::new(x(&format!("capture.{k}")), x(v)));
    }
    if !step.origin.is_empty() {
        tc.add_property(Property::new("origin", x(&step.origin)));
    }
    let mut out = String::new();
    if !step.what.is_empty() {
        out.push_str(&format!("{}\n", x(&step.what)));
    }
    if let Some(f) = failure {
        out.push_str(&failure_out(run_dir, case, f));
    } else if step.status == "passed" && !step.retries.is_empty() {
        out.push_str(&format!(
            "passed on attempt {} of {}\n",
            step.attempts, step.attempts_allowed
        ));
    }
    if !out.is_empty() {
        tc.set_system_out(out);
    }
    tc
}

fn failure_status(f: &FailureSummary, reruns: &[TestRerun]) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
    s.set_type(f.class.clone());
    let code = f.code.as_deref().unwrap_or("no code");
    let cause = if f.diagnosis.known() {
        format!("{}: {}", f.diagnosis.title, f.diagnosis.cause)
    } else {
        f.diagnosis.cause.clone()
    };
    s.set_message(x(&format!("{code}: {cause}")));
    let mut description = format!("{}\n", f.message);
    if let Some(h) = &f.hint {
        description.push_str(&format!("check: {h}\n"));
    }
    description.push_str(&format!("remedy: {}\n", f.diagnosis.remedy));
    if let Some(r) = &f.diagnosis.reference {
        description.push_str(&format!("reference: {r}\n"));
    }
    s.set_description(x(&description));
    if !reruns.is_empty() {
        s.add_reruns(reruns.iter().cloned());
        s.set_rerun_kind(FlakyOrRerun::Rerun);
    }
    s
}

/// `system-out` of a failure: what failed, the console around it, the attachments.
fn failure_out(run_dir: &RunDir, case: &CaseSummary, f: &FailureSummary) -> String {
    let mut out = format!(
        "{} failure{} in {} / {}: {}\n",
        f.class,
        f.code
            .as_deref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default(),
        f.phase,
        f.step,
        x(&f.message)
    );
    out.push_str(&format!(
        "cause: {}\nremedy: {}\n",
        x(&f.diagnosis.cause),
        x(&f.diagnosis.remedy)
    ));
    if let Some(excerpt) = &f.console_excerpt {
        out.push_str("--- console ---\n");
        out.push_str(excerpt);
        out.push_str("\n--- end of console ---\n");
    }
    for a in &case.artifacts {
        out.push_str(&attachment(run_dir, &a.path));
    }
    if let Some(log) = &case.console_log {
        out.push_str(&attachment(run_dir, log));
    }
    out
}

/// The Jenkins junit-attachments plugin's convention: an absolute path in system-out.
fn attachment(run_dir: &RunDir, path: &str) -> String {
    let p = std::path::Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        run_dir.root().join(p)
    };
    let abs = std::fs::canonicalize(&abs).unwrap_or(abs);
    format!("[[ATTACHMENT|{}]]\n", x(&abs.to_string_lossy()))
}
