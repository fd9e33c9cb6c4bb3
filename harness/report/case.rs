//! One case's story, told from its events: phases, steps, retries, what the device
//! showed, and every failure diagnosed against the signatures. A case whose events were
//! lost is told from the ledger's step records instead.

use std::collections::BTreeMap;

use super::RunInput;
use super::artifacts::{add_unannounced_artifacts, diagnostics_text, relative};
use super::console;
use super::rundir::{
    RecordedEvent, RecordedKind, RecordedPhaseStatus, RecordedStepStatus, RecordedVerdict, RunDir,
    slug,
};
use super::signatures::{Diagnosis, FailureFacts};
use super::summary::{
    ArtifactRef, CaseSummary, FailureSummary, PhaseSummary, RetrySummary, StepSummary,
    device_facts, millis_to_rfc3339,
};
use crate::model::inventory::Device;
use crate::store::{CaseRecord, CaseStatus, StepRecord};

/// Console lines shown around a failure.
const EXCERPT_LINES: usize = 40;

/// Texts a signature can look at, gathered once per case.
#[derive(Default)]
struct CaseTexts {
    console_raw: Vec<u8>,
    console: String,
    screen: String,
    events: String,
    diagnostics: String,
}

pub(super) fn case_summary(
    run_dir: &RunDir,
    input: &RunInput,
    record: &CaseRecord,
    device: Option<&Device>,
    events: &[RecordedEvent],
    steps: &[StepRecord],
    warnings: &mut Vec<String>,
) -> CaseSummary {
    let mut facts = device_facts(&record.device_id, device);
    let matrix: BTreeMap<String, String> = serde_json::from_str(&record.matrix).unwrap_or_default();
    let case_dir = run_dir.case_path(&record.case_id);
    let mut texts = CaseTexts::default();

    let console_path = case_dir.join("console.log");
    let console_log = if console_path.exists() {
        match console::read_tail(&console_path, console::MATCH_WINDOW_BYTES) {
            Ok(bytes) => {
                texts.console = console::clean(&bytes);
                texts.console_raw = bytes;
            }
            Err(e) => warnings.push(format!("{}: {e}", console_path.display())),
        }
        Some(relative(run_dir.root(), &console_path))
    } else {
        None
    };

    let (times, restarts) = lab_times(events);
    let mut restarted_since_phase_end = false;
    let mut phases: Vec<PhaseSummary> = Vec::new();
    let mut artifacts = Vec::new();
    let mut kept = Vec::new();
    let mut tolerated = 0;
    let mut verdict: Option<RecordedVerdict> = None;
    let mut technician_elapsed = None;
    let mut join_seen: BTreeMap<String, String> = BTreeMap::new();

    for ((event, t), restart) in events.iter().zip(times.iter().copied()).zip(restarts) {
        restarted_since_phase_end |= restart;
        let phase_name = event.phase.clone().unwrap_or_default();
        let phase = |phases: &mut Vec<PhaseSummary>| -> usize {
            match phases.iter().position(|p| p.name == phase_name) {
                Some(i) => i,
                None => {
                    phases.push(PhaseSummary {
                        name: phase_name.clone(),
                        status: "running".into(),
                        class: None,
                        start_s: None,
                        end_s: None,
                        elapsed_s: None,
                        gap_min_s: None,
                        gap_before_s: None,
                        steps: Vec::new(),
                        clock_restarted: false,
                    });
                    phases.len() - 1
                }
            }
        };
        let step_of = |phases: &mut Vec<PhaseSummary>| -> Option<(usize, usize)> {
            let name = event.step.clone()?;
            let p = phase(phases);
            let steps = &mut phases[p].steps;
            let s = match steps.iter().position(|s| s.name == name) {
                Some(s) => s,
                None => {
                    steps.push(StepSummary {
                        name,
                        what: String::new(),
                        origin: String::new(),
                        check: false,
                        status: "running".into(),
                        attempts: 0,
                        attempts_allowed: 1,
                        start_s: Some(t),
                        elapsed_s: 0.0,
                        class: None,
                        code: None,
                        message: None,
                        hint: None,
                        captures: BTreeMap::new(),
                        retries: Vec::new(),
                        diagnosis: None,
                        finished_at: None,
                    });
                    steps.len() - 1
                }
            };
            Some((p, s))
        };
        match &event.kind {
            RecordedKind::CaseStarted { phases: names, .. } => {
                for n in names {
                    if !phases.iter().any(|p| &p.name == n) {
                        phases.push(PhaseSummary {
                            name: n.clone(),
                            status: "not-run".into(),
                            class: None,
                            start_s: None,
                            end_s: None,
                            elapsed_s: None,
                            gap_min_s: None,
                            gap_before_s: None,
                            steps: Vec::new(),
                            clock_restarted: false,
                        });
                    }
                }
            }
            RecordedKind::GapStarted { min } => {
                let p = phase(&mut phases);
                phases[p].gap_min_s = Some(*min);
            }
            RecordedKind::PhaseStarted { .. } => {
                let p = phase(&mut phases);
                phases[p].clock_restarted = restarted_since_phase_end;
                phases[p].start_s = Some(t);
                phases[p].status = "running".into();
            }
            RecordedKind::PhaseFinished { status, elapsed } => {
                restarted_since_phase_end = false;
                let p = phase(&mut phases);
                phases[p].end_s = Some(t);
                phases[p].elapsed_s = Some(*elapsed);
                let (word, class) = match status {
                    RecordedPhaseStatus::Passed => ("passed", None),
                    RecordedPhaseStatus::Failed { class, .. } => ("failed", Some(class.clone())),
                    RecordedPhaseStatus::Kept { class, .. } => ("kept", Some(class.clone())),
                    RecordedPhaseStatus::Interrupted => ("interrupted", None),
                };
                phases[p].status = word.into();
                phases[p].class = class;
            }
            RecordedKind::StepStarted {
                attempt,
                attempts_allowed,
                what,
                origin,
                ..
            } => {
                if let Some((p, s)) = step_of(&mut phases) {
                    let step = &mut phases[p].steps[s];
                    step.attempts = *attempt;
                    step.attempts_allowed = *attempts_allowed;
                    step.what = what.clone();
                    step.origin = origin.clone();
                    step.check = is_check(what);
                }
            }
            RecordedKind::StepRetried {
                attempt,
                after_class,
                message,
                ..
            } => {
                if let Some((p, s)) = step_of(&mut phases) {
                    phases[p].steps[s].retries.push(RetrySummary {
                        attempt: *attempt,
                        class: after_class.clone(),
                        message: message.clone(),
                        // Filled in once all texts are known (see `failures`).
                        diagnosis: unknown_placeholder(),
                    });
                }
                texts.events.push_str(&format!("retry: {message}\n"));
            }
            RecordedKind::StepFinished {
                status,
                attempts,
                attempts_allowed,
                elapsed,
                captures,
                ..
            } => {
                if let Some((p, s)) = step_of(&mut phases) {
                    let step = &mut phases[p].steps[s];
                    step.attempts = *attempts;
                    step.attempts_allowed = (*attempts_allowed).max(*attempts);
                    step.elapsed_s = *elapsed;
                    step.captures.extend(captures.clone());
                    step.finished_at = Some(event.at.to_string());
                    match status {
                        RecordedStepStatus::Passed => step.status = "passed".into(),
                        RecordedStepStatus::Failed {
                            class,
                            code,
                            message,
                            hint,
                        } => {
                            step.status = "failed".into();
                            step.class = Some(class.clone());
                            step.code = code.clone();
                            step.message = Some(message.clone());
                            step.hint = hint.clone();
                            step.check = true;
                            texts.events.push_str(&format!("failed: {message}\n"));
                        }
                        RecordedStepStatus::Skipped { reason } => {
                            step.status = "skipped".into();
                            step.message = Some(reason.clone());
                        }
                        RecordedStepStatus::Interrupted => step.status = "interrupted".into(),
                    }
                }
                if let Some(elapsed) = captures.get("elapsed") {
                    technician_elapsed.get_or_insert_with(|| elapsed.clone());
                }
            }
            RecordedKind::PatternMatched {
                source,
                text,
                captures,
                ..
            } => {
                if source == "screen" {
                    texts.screen.push_str(text);
                    texts.screen.push('\n');
                }
                texts.events.push_str(&format!("{source}: {text}\n"));
                if let Some(elapsed) = captures.get("elapsed") {
                    technician_elapsed.get_or_insert_with(|| elapsed.clone());
                }
            }
            RecordedKind::DeviceStateSeen { what, value } => {
                texts.events.push_str(&format!("{what}: {value}\n"));
                if what.starts_with("screen") {
                    texts.screen.push_str(value);
                    texts.screen.push('\n');
                }
                let key = what.to_ascii_lowercase();
                match key.as_str() {
                    "tpm family" => (facts.tpm_family, facts.tpm_seen) = (value.clone(), true),
                    "tpm manufacturer" | "manufactureridtxt" => {
                        (facts.tpm_manufacturer, facts.tpm_seen) = (value.clone(), true)
                    }
                    "tpm firmware" | "manufacturerversion" => {
                        (facts.tpm_firmware, facts.tpm_seen) = (value.clone(), true)
                    }
                    "tpm ek certificate issuer" => facts.tpm_ek_issuer = value.clone(),
                    "azureadjoined" | "domainjoined" | "enterprisejoined" => {
                        join_seen.insert(key, value.to_ascii_uppercase());
                    }
                    _ => {}
                }
            }
            RecordedKind::ArtifactSaved {
                kind,
                path,
                bytes,
                truncated,
            } => {
                artifacts.push(ArtifactRef {
                    kind: kind.clone(),
                    path: relative(run_dir.root(), path),
                    abs_path: path.clone(),
                    bytes: *bytes,
                    truncated: *truncated,
                    phase: event.phase.clone(),
                    step: event.step.clone(),
                });
            }
            RecordedKind::ArtifactFailed { kind, message } => {
                texts
                    .events
                    .push_str(&format!("diagnostic {kind} not collected: {message}\n"));
            }
            RecordedKind::PowerReadBackUnavailable { reason } => {
                texts
                    .events
                    .push_str(&format!("power read-back unavailable: {reason}\n"));
            }
            RecordedKind::KeptOnFailure { how_to_attach } => {
                for route in how_to_attach {
                    let get = |k: &str| route.get(k).and_then(|v| v.as_str()).unwrap_or("");
                    let command = get("command");
                    kept.push(if command.is_empty() {
                        format!(
                            "{} over {}: {}",
                            get("capability"),
                            get("transport"),
                            get("address")
                        )
                    } else {
                        format!("{} over {}: {command}", get("capability"), get("transport"))
                    });
                }
            }
            RecordedKind::CaseFinished {
                verdict: v,
                tolerated_failures,
            } => {
                verdict = Some(v.clone());
                tolerated = *tolerated_failures;
            }
            RecordedKind::Other => {}
        }
    }

    if events.is_empty() {
        phases = phases_from_ledger(steps);
    }
    // Artifacts the events did not announce (copied in by the fleet, say) still count.
    add_unannounced_artifacts(run_dir, &case_dir.join("artifacts"), &mut artifacts);
    texts.diagnostics = diagnostics_text(&artifacts, warnings);

    // Measured gaps between phases, on the lab clock.
    let mut previous_end: Option<f64> = None;
    for phase in &mut phases {
        if let (Some(end), Some(start)) = (previous_end, phase.start_s) {
            phase.gap_before_s = if phase.clock_restarted {
                phase.gap_min_s
            } else {
                Some((start - end).max(0.0))
            };
        }
        if phase.end_s.is_some() {
            previous_end = phase.end_s;
        }
    }

    let status = record.status.as_str().to_string();
    let failures = failures(input, record, &mut phases, verdict.as_ref(), &texts, events);
    let flaky = record.status == CaseStatus::Passed
        && phases
            .iter()
            .flat_map(|p| &p.steps)
            .any(|s| s.status == "passed" && !s.retries.is_empty());

    let join = matrix.get("join").cloned().or_else(|| {
        let yes = |k: &str| join_seen.get(k).is_some_and(|v| v == "YES");
        match (yes("azureadjoined"), yes("domainjoined")) {
            (true, true) => Some("hybrid".into()),
            (true, false) => Some("entra".into()),
            (false, true) => Some("domain".into()),
            _ => None,
        }
    });

    CaseSummary {
        case_id: record.case_id.clone(),
        slug: slug(&record.case_id),
        scenario: record.scenario.clone(),
        matrix,
        device: facts,
        status,
        flaky,
        join,
        technician_elapsed,
        started_at: record
            .started_at
            .map(millis_to_rfc3339)
            .or_else(|| events.first().map(|e| e.at.to_string())),
        finished_at: record
            .finished_at
            .map(millis_to_rfc3339)
            .or_else(|| events.last().map(|e| e.at.to_string())),
        duration_s: times.last().copied().unwrap_or(0.0),
        phases,
        failures,
        console_log,
        artifacts,
        kept,
        tolerated_failures: tolerated,
        unreadable_events: 0,
    }
}

/// Lab time of each event, from the case's first event. The engine's clock restarts when
/// a later phase runs in another process (after a restart or a parked gap); the wall
/// clock bridges such a jump so the timeline keeps going forward.
fn lab_times(events: &[RecordedEvent]) -> (Vec<f64>, Vec<bool>) {
    let mut out = Vec::with_capacity(events.len());
    let mut restarts = Vec::with_capacity(events.len());
    let mut offset = 0.0;
    let mut last: Option<(f64, jiff::Timestamp)> = None;
    let base = events.first().map(|e| e.lab_time).unwrap_or(0.0);
    for e in events {
        let mut t = e.lab_time - base + offset;
        let mut restart = false;
        if let Some((prev, prev_at)) = last
            && t < prev
        {
            let wall = (e.at - prev_at)
                .total(jiff::Unit::Second)
                .unwrap_or(0.0)
                .max(0.0);
            offset += prev - t + wall;
            t = prev + wall;
            restart = true;
        }
        out.push(t);
        restarts.push(restart);
        last = Some((t, e.at));
    }
    (out, restarts)
}

/// What `what` says about a step: expect, screen check, shell, TPM and tenant steps (and
/// waits until a condition) are assertions; power, keys, typing, fixed waits and
/// collecting diagnostics are actions.
fn is_check(what: &str) -> bool {
    [
        "wait on the ",
        "check the ",
        "run `",
        "tenant:",
        "wait up to ",
    ]
    .iter()
    .any(|p| what.starts_with(p))
}

/// Phases and steps from the ledger alone (a case whose events are missing).
fn phases_from_ledger(steps: &[StepRecord]) -> Vec<PhaseSummary> {
    let mut phases: Vec<PhaseSummary> = Vec::new();
    for r in steps {
        let p = match phases.iter().position(|p| p.name == r.phase) {
            Some(p) => p,
            None => {
                phases.push(PhaseSummary {
                    name: r.phase.clone(),
                    status: "passed".into(),
                    class: None,
                    start_s: None,
                    end_s: None,
                    elapsed_s: None,
                    gap_min_s: None,
                    gap_before_s: None,
                    steps: Vec::new(),
                    clock_restarted: false,
                });
                phases.len() - 1
            }
        };
        let phase = &mut phases[p];
        let s = match phase.steps.iter().position(|s| s.name == r.step) {
            Some(s) => s,
            None => {
                phase.steps.push(StepSummary {
                    name: r.step.clone(),
                    what: String::new(),
                    origin: String::new(),
                    check: true,
                    status: r.status.clone(),
                    attempts: 0,
                    attempts_allowed: 1,
                    start_s: None,
                    elapsed_s: 0.0,
                    class: None,
                    code: None,
                    message: None,
                    hint: None,
                    captures: BTreeMap::new(),
                    retries: Vec::new(),
                    diagnosis: None,
                    finished_at: None,
                });
                phase.steps.len() - 1
            }
        };
        let step = &mut phase.steps[s];
        if step.status == "failed" && r.attempt > step.attempts {
            step.retries.push(RetrySummary {
                attempt: step.attempts,
                class: step.class.clone().unwrap_or_default(),
                message: step.message.clone().unwrap_or_default(),
                diagnosis: unknown_placeholder(),
            });
        }
        step.attempts = step.attempts.max(r.attempt);
        step.attempts_allowed = step.attempts_allowed.max(r.attempt);
        step.status = r.status.clone();
        step.class = r.class.clone();
        step.code = r.code.clone();
        step.message = r.message.clone();
        step.elapsed_s += r.elapsed_ms as f64 / 1000.0;
        if r.status == "failed" {
            phase.status = "failed".into();
            phase.class = r.class.clone();
        }
    }
    phases
}

fn unknown_placeholder() -> Diagnosis {
    Diagnosis {
        signature: None,
        title: String::new(),
        cause: String::new(),
        remedy: String::new(),
        class: None,
        reference: None,
        matched_on: None,
    }
}

/// Diagnoses every failed step and every retried attempt; returns the failures, the one
/// that failed the case first.
fn failures(
    input: &RunInput,
    record: &CaseRecord,
    phases: &mut [PhaseSummary],
    verdict: Option<&RecordedVerdict>,
    texts: &CaseTexts,
    events: &[RecordedEvent],
) -> Vec<FailureSummary> {
    let fatal_step = match verdict {
        Some(RecordedVerdict::Failed { phase, step, .. }) => Some((phase.clone(), step.clone())),
        _ => None,
    };
    let mut out = Vec::new();
    for phase in phases.iter_mut() {
        let gap = phase
            .gap_before_s
            .map(|s| std::time::Duration::from_secs_f64(s.max(0.0)));
        for step in &mut phase.steps {
            if step.status != "failed" && step.retries.is_empty() {
                continue;
            }
            let base = FailureFacts {
                phase: phase.name.clone(),
                console: texts.console.clone(),
                screen: texts.screen.clone(),
                events: texts.events.clone(),
                diagnostics: texts.diagnostics.clone(),
                gap_before: gap,
                ..Default::default()
            };
            for retry in &mut step.retries {
                retry.diagnosis = input.signatures.diagnose(&FailureFacts {
                    class: retry.class.clone(),
                    message: retry.message.clone(),
                    ..base.clone()
                });
            }
            if step.status != "failed" {
                continue;
            }
            let class = step.class.clone().unwrap_or_else(|| "product".into());
            let message = step.message.clone().unwrap_or_default();
            let diagnosis = input.signatures.diagnose(&FailureFacts {
                class: class.clone(),
                code: step.code.clone(),
                message: format!("{message}\n{}", step.hint.clone().unwrap_or_default()),
                ..base
            });
            step.diagnosis = Some(diagnosis.clone());
            let until = step
                .finished_at
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let console_excerpt = (!texts.console_raw.is_empty())
                .then(|| console::excerpt(&texts.console_raw, until, EXCERPT_LINES));
            let fatal = fatal_step
                .as_ref()
                .is_some_and(|(p, s)| p == &phase.name && s == &step.name);
            out.push(FailureSummary {
                phase: phase.name.clone(),
                step: step.name.clone(),
                class,
                code: step.code.clone(),
                message,
                hint: step.hint.clone(),
                diagnosis,
                console_excerpt,
                fatal,
            });
        }
    }
    // A failed case whose failure no step shows (a crash between phases, a skipped case):
    // the ledger's word is all there is.
    if out.is_empty() && record.status == CaseStatus::Failed {
        let class = record.class.clone().unwrap_or_else(|| "harness".into());
        let message = record
            .message
            .clone()
            .unwrap_or_else(|| "the case failed without a failed step on record".into());
        let code = match verdict {
            Some(RecordedVerdict::Failed { code, .. }) => code.clone(),
            _ => None,
        };
        let diagnosis = input.signatures.diagnose(&FailureFacts {
            class: class.clone(),
            code: code.clone(),
            message: message.clone(),
            console: texts.console.clone(),
            screen: texts.screen.clone(),
            events: texts.events.clone(),
            diagnostics: texts.diagnostics.clone(),
            ..Default::default()
        });
        let until = events.last().map(|e| e.at);
        out.push(FailureSummary {
            phase: String::new(),
            step: String::new(),
            class,
            code,
            message,
            hint: None,
            diagnosis,
            console_excerpt: (!texts.console_raw.is_empty())
                .then(|| console::excerpt(&texts.console_raw, until, EXCERPT_LINES)),
            fatal: true,
        });
    }
    if !out.iter().any(|f| f.fatal)
        && let Some(last) = out.last_mut()
    {
        last.fatal = record.status == CaseStatus::Failed;
    }
    out.sort_by_key(|f| !f.fatal);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_the_assertions() {
        assert!(is_check("wait on the screen for success | failure"));
        assert!(is_check("check the screen's fields"));
        assert!(is_check("run `dsregcmd /status`"));
        assert!(is_check("check the TPM ([Family])"));
        assert!(is_check("tenant: ExpectEnrollment"));
        assert!(!is_check("power on"));
        assert!(!is_check("press MetaLeft x5"));
        assert!(!is_check("collect [Dsregcmd]"));
        assert!(!is_check("wait 90m"));
    }

    #[test]
    fn a_restarted_engine_clock_keeps_the_timeline_going_forward() {
        let event = |lab_time: f64, wall: &str| RecordedEvent {
            at: wall.parse().unwrap(),
            lab_time,
            device: "d".into(),
            case: "c".into(),
            phase: None,
            step: None,
            kind: RecordedKind::Other,
        };
        let events = [
            event(100.0, "2026-11-26T03:00:00Z"),
            event(3500.0, "2026-11-26T03:56:40Z"),
            // Another process (the user flow after a parked gap) starts its clock at 0.
            event(0.0, "2026-11-26T03:56:49Z"),
            event(60.0, "2026-11-26T03:57:49Z"),
        ];
        let (times, restarts) = lab_times(&events);
        assert_eq!(times, [0.0, 3400.0, 3409.0, 3469.0]);
        assert_eq!(restarts, [false, false, true, false]);
    }
}
