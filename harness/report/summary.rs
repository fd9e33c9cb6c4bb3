//! The run as one data model: what `summary.json` holds, and what the JUnit and HTML
//! reports render. Built from the ledger's records, the per-case events, console logs,
//! collected diagnostics and the inventory's device facts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::console;
use super::history::History;
use super::rundir::{
    RecordedEvent, RecordedKind, RecordedPhaseStatus, RecordedStepStatus, RecordedVerdict, RunDir,
    slug,
};
use super::signatures::{Diagnosis, FailureFacts};
use super::{ReportError, RunInput};
use crate::model::inventory::Device;
use crate::store::{CaseRecord, CaseStatus, StepRecord};

/// Console lines shown around a failure.
const EXCERPT_LINES: usize = 40;
/// Most text read from one diagnostic file (or archive entry) for signature matching.
const DIAGNOSTIC_TEXT_MAX: u64 = 2 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub lab: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub generated_at: String,
    pub totals: Totals,
    /// Pass/fail by scenario x model.
    pub grid: Vec<GridRow>,
    pub models: Vec<String>,
    /// Failed cases first, then the rest, each group by case id.
    pub cases: Vec<CaseSummary>,
    pub history: Option<History>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Pending, running or parked (the run is not over for them).
    pub unfinished: usize,
    /// Passed, but only after a retry.
    pub flaky: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridRow {
    pub scenario: String,
    /// One cell per entry of [`RunSummary::models`].
    pub cells: Vec<GridCell>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GridCell {
    pub model: String,
    pub passed: usize,
    pub failed: usize,
    pub flaky: usize,
    pub other: usize,
    /// `pass`, `fail`, `flaky`, `other` or `none` (no case of that pair).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseSummary {
    pub case_id: String,
    pub slug: String,
    pub scenario: String,
    pub matrix: BTreeMap<String, String>,
    pub device: DeviceFacts,
    /// `passed`, `failed`, `skipped`, `pending`, `running`, `parked`.
    pub status: String,
    pub flaky: bool,
    /// `entra`, `hybrid` (matrix axis `join`, or what dsregcmd showed).
    pub join: Option<String>,
    /// Elapsed time the technician flow's success (or failure) screen showed.
    pub technician_elapsed: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Lab seconds from the first to the last event.
    pub duration_s: f64,
    pub phases: Vec<PhaseSummary>,
    /// Every failed step, the one that failed the case first.
    pub failures: Vec<FailureSummary>,
    /// `cases/<slug>/console.log`, relative to the run directory, when present.
    pub console_log: Option<String>,
    pub artifacts: Vec<ArtifactRef>,
    /// How to reach a device kept on failure.
    pub kept: Vec<String>,
    pub tolerated_failures: usize,
    /// Event lines that could not be read.
    pub unreadable_events: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceFacts {
    pub id: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub windows_edition: String,
    pub windows_version: String,
    pub windows_build: String,
    /// As the TPM reported itself during the run (inventory expectation as fallback).
    pub tpm_family: String,
    pub tpm_manufacturer: String,
    pub tpm_firmware: String,
    pub tpm_ek_issuer: String,
    /// Whether the TPM facts were read from the device (`true`) or only expected.
    pub tpm_seen: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    /// `passed`, `failed`, `kept`, `interrupted`, `running`, `not-run`.
    pub status: String,
    pub class: Option<String>,
    /// Lab seconds since the case's first event.
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub elapsed_s: Option<f64>,
    /// The gap the scenario demands before this phase.
    pub gap_min_s: Option<f64>,
    /// The measured wait between the previous phase's end and this phase's start (the
    /// gap the runner enforced, when the engine's clock restarted in between).
    pub gap_before_s: Option<f64>,
    pub steps: Vec<StepSummary>,
    /// The engine's clock restarted (another process) between the previous phase and
    /// this one, so lab times cannot measure the gap.
    #[serde(skip)]
    pub clock_restarted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    pub what: String,
    pub origin: String,
    /// An assertion (expect, screen check, shell, TPM, tenant): a JUnit test case.
    pub check: bool,
    /// `passed`, `failed`, `skipped`, `interrupted`, `running`.
    pub status: String,
    pub attempts: u32,
    pub attempts_allowed: u32,
    pub start_s: Option<f64>,
    pub elapsed_s: f64,
    pub class: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub hint: Option<String>,
    pub captures: BTreeMap<String, String>,
    /// Failed attempts that were retried.
    pub retries: Vec<RetrySummary>,
    /// For a failed step: the signature verdict.
    pub diagnosis: Option<Diagnosis>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrySummary {
    pub attempt: u32,
    pub class: String,
    pub message: String,
    pub diagnosis: Diagnosis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureSummary {
    pub phase: String,
    pub step: String,
    pub class: String,
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
    pub diagnosis: Diagnosis,
    /// The console around the failure, cleaned (no control characters).
    pub console_excerpt: Option<String>,
    /// The failure failed the case (others were tolerated or came first in a retry).
    pub fatal: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub kind: String,
    /// Relative to the run directory when inside it, else absolute.
    pub path: String,
    pub abs_path: PathBuf,
    pub bytes: u64,
    pub truncated: bool,
    pub phase: Option<String>,
    pub step: Option<String>,
}

/// Builds the summary of a run.
pub fn build(run_dir: &RunDir, input: &RunInput) -> Result<RunSummary, ReportError> {
    let mut warnings = Vec::new();
    let mut cases = Vec::new();
    for record in &input.cases {
        let (events, bad) = run_dir.read_events(&record.case_id)?;
        if bad > 0 {
            warnings.push(format!(
                "{}: {bad} event line(s) in events.jsonl could not be read",
                record.case_id
            ));
        }
        let device = input.devices.iter().find(|d| d.id == record.device_id);
        let steps = input
            .steps
            .get(&record.case_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut case = case_summary(
            run_dir,
            input,
            record,
            device,
            &events,
            steps,
            &mut warnings,
        );
        case.unreadable_events = bad;
        cases.push(case);
    }
    cases.sort_by(|a, b| {
        (a.status != "failed")
            .cmp(&(b.status != "failed"))
            .then_with(|| a.case_id.cmp(&b.case_id))
    });
    let totals = Totals {
        cases: cases.len(),
        passed: cases.iter().filter(|c| c.status == "passed").count(),
        failed: cases.iter().filter(|c| c.status == "failed").count(),
        skipped: cases.iter().filter(|c| c.status == "skipped").count(),
        unfinished: cases
            .iter()
            .filter(|c| !["passed", "failed", "skipped"].contains(&c.status.as_str()))
            .count(),
        flaky: cases.iter().filter(|c| c.flaky).count(),
    };
    let (grid, models) = grid(&cases);
    Ok(RunSummary {
        run_id: input.run.id.clone(),
        lab: input.lab.clone(),
        status: input.run.status.as_str().to_string(),
        started_at: Some(millis_to_rfc3339(input.run.started_at)),
        finished_at: input.run.finished_at.map(millis_to_rfc3339),
        generated_at: jiff::Timestamp::now().to_string(),
        totals,
        grid,
        models,
        cases,
        history: input.history.clone(),
        warnings,
    })
}

fn millis_to_rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn grid(cases: &[CaseSummary]) -> (Vec<GridRow>, Vec<String>) {
    let mut models: Vec<String> = cases.iter().map(|c| c.device.model.clone()).collect();
    models.sort();
    models.dedup();
    let mut scenarios: Vec<String> = cases.iter().map(|c| c.scenario.clone()).collect();
    scenarios.sort();
    scenarios.dedup();
    let rows = scenarios
        .into_iter()
        .map(|scenario| {
            let cells = models
                .iter()
                .map(|model| {
                    let mut cell = GridCell {
                        model: model.clone(),
                        ..Default::default()
                    };
                    for c in cases
                        .iter()
                        .filter(|c| c.scenario == scenario && &c.device.model == model)
                    {
                        match c.status.as_str() {
                            "passed" if c.flaky => cell.flaky += 1,
                            "passed" => cell.passed += 1,
                            "failed" => cell.failed += 1,
                            _ => cell.other += 1,
                        }
                    }
                    cell.state = if cell.failed > 0 {
                        "fail"
                    } else if cell.flaky > 0 {
                        "flaky"
                    } else if cell.passed > 0 {
                        "pass"
                    } else if cell.other > 0 {
                        "other"
                    } else {
                        "none"
                    }
                    .to_string();
                    cell
                })
                .collect();
            GridRow { scenario, cells }
        })
        .collect();
    (rows, models)
}

fn device_facts(device_id: &str, device: Option<&Device>) -> DeviceFacts {
    match device {
        Some(d) => DeviceFacts {
            id: d.id.clone(),
            serial: d.serial.clone(),
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            windows_edition: d.windows.edition.as_str().to_string(),
            windows_version: d.windows.version.to_string(),
            windows_build: d.windows.build.clone().unwrap_or_default(),
            tpm_family: d.tpm.as_ref().map(|t| t.family.clone()).unwrap_or_default(),
            tpm_manufacturer: d
                .tpm
                .as_ref()
                .map(|t| t.manufacturer.clone())
                .unwrap_or_default(),
            tpm_firmware: d
                .tpm
                .as_ref()
                .and_then(|t| t.firmware.clone())
                .unwrap_or_default(),
            tpm_ek_issuer: String::new(),
            tpm_seen: false,
        },
        None => DeviceFacts {
            id: device_id.to_string(),
            model: "unknown model".to_string(),
            ..Default::default()
        },
    }
}

/// Texts a signature can look at, gathered once per case.
#[derive(Default)]
struct CaseTexts {
    console_raw: Vec<u8>,
    console: String,
    screen: String,
    events: String,
    diagnostics: String,
}

#[allow(clippy::too_many_arguments)]
fn case_summary(
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
                        diagnosis: Diagnosis {
                            signature: None,
                            title: String::new(),
                            cause: String::new(),
                            remedy: String::new(),
                            class: None,
                            reference: None,
                            matched_on: None,
                        },
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

/// A path as a link from the run directory: relative when inside it.
pub fn relative(root: &Path, path: &Path) -> String {
    let root_abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let path_abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match path_abs.strip_prefix(&root_abs) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

fn add_unannounced_artifacts(run_dir: &RunDir, dir: &Path, artifacts: &mut Vec<ArtifactRef>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = relative(run_dir.root(), &path);
            if artifacts.iter().any(|a| a.path == rel) {
                continue;
            }
            artifacts.push(ArtifactRef {
                kind: kind_from_name(&path).to_string(),
                path: rel,
                abs_path: path,
                bytes: meta.len(),
                truncated: false,
                phase: None,
                step: None,
            });
        }
    }
}

fn kind_from_name(path: &Path) -> &'static str {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".png") || name.ends_with(".jpg") || name.ends_with(".jpeg") {
        "screenshot"
    } else if name.ends_with(".zip") || name.ends_with(".cab") {
        "mdm-diagnostics"
    } else if name.contains("dsregcmd") {
        "dsregcmd"
    } else {
        "file"
    }
}

/// Whether a file is text a signature can read (by extension).
pub fn is_text_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        ".txt", ".log", ".xml", ".json", ".reg", ".csv", ".html", ".htm", ".ps1", ".out", ".ini",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// The text of a case's diagnostics (text files and text entries of archives), capped.
fn diagnostics_text(artifacts: &[ArtifactRef], warnings: &mut Vec<String>) -> String {
    let mut out = String::new();
    for a in artifacts {
        let name = a.abs_path.to_string_lossy().to_string();
        if is_text_name(&name) {
            match console::read_tail(&a.abs_path, DIAGNOSTIC_TEXT_MAX) {
                Ok(bytes) => {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    out.push('\n');
                }
                Err(e) => warnings.push(format!("cannot read {name}: {e}")),
            }
        } else if name.to_ascii_lowercase().ends_with(".zip")
            && let Err(e) = zip_text(&a.abs_path, &mut out)
        {
            warnings.push(format!("cannot read the archive {name}: {e}"));
        }
    }
    out
}

fn zip_text(path: &Path, out: &mut String) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        if !entry.is_file() || !is_text_name(entry.name()) {
            continue;
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(DIAGNOSTIC_TEXT_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        out.push_str(&decode_text(&bytes));
        out.push('\n');
    }
    Ok(())
}

/// Windows tools write UTF-16LE (with a BOM) as often as UTF-8.
pub fn decode_text(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
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

    #[test]
    fn utf16_diagnostics_are_read() {
        let bytes: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("NotComputed".encode_utf16().flat_map(|u| u.to_le_bytes()))
            .collect();
        assert_eq!(decode_text(&bytes), "NotComputed");
    }
}
