//! The run as one data model: what `summary.json` holds, and what the JUnit and HTML
//! reports render. Built from the ledger's records, the per-case events ([`super::case`]),
//! console logs, collected diagnostics ([`super::artifacts`]) and the inventory's device
//! facts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::case::case_summary;
use super::history::History;
use super::rundir::RunDir;
use super::signatures::Diagnosis;
use super::{ReportError, RunInput};
use crate::model::inventory::Device;

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

pub(super) fn millis_to_rfc3339(ms: i64) -> String {
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

pub(super) fn device_facts(device_id: &str, device: Option<&Device>) -> DeviceFacts {
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
