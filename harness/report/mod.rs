//! Reporters: subscribers to the engine's and the fleet's event streams (terminal
//! progress, JUnit, HTML, JSON), and reports that CI servers and engineers both read,
//! made from the run directory and the ledger. A reporter never calls a device.
//!
//! - [`progress`]: the live terminal view of a run.
//! - [`rundir`]: the run directory layout and the API the fleet writes through.
//! - [`summary`]: the run as one data model (`summary.json`), built from the ledger's
//!   records, the per-case events, console logs and inventory facts. JUnit and HTML are
//!   both renderings of it, so they never disagree. [`case`] tells one case from its
//!   events; [`artifacts`] finds its files and reads its diagnostics; [`console`]
//!   cleans device text for XML and HTML.
//! - [`junit`]: `junit.xml` for CI servers; [`html`]: `report.html` for engineers.
//! - [`signatures`]: known failures (`signatures/known-failures.yaml`) matched against
//!   every failure; [`history`]: this run against earlier ones; [`evidence`]: per-device
//!   certification evidence for OEM hand-over; [`redact`]: secrets never reach a file.

pub mod artifacts;
pub mod case;
pub mod console;
pub mod evidence;
pub mod history;
pub mod html;
pub mod junit;
pub mod progress;
pub mod redact;
pub mod rundir;
pub mod signatures;
pub mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::inventory::Device;
use crate::store::{CaseRecord, Ledger, LedgerError, RunRecord, StepRecord};

pub use evidence::EvidenceLimits;
pub use history::History;
pub use redact::Redactor;
pub use rundir::{CaseEvents, RunDir};
pub use signatures::{Diagnosis, SignatureBook};
pub use summary::RunSummary;

/// A report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "{path}: {source} (check that the reports directory is writable and the disk has space)"
    )]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signature file {origin}: {message}")]
    Signatures { origin: String, message: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0} (this is a bug in aplab's reports)")]
    Harness(String),
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ReportError {
        ReportError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Everything a report is made from besides the run directory. Plain data: the lead
/// fills it from the ledger and the inventory (or uses [`RunInput::from_ledger`]).
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The lab's name (inventory `lab.name`).
    pub lab: String,
    pub run: RunRecord,
    pub cases: Vec<CaseRecord>,
    /// Step records (one per attempt) by ledger case id.
    pub steps: BTreeMap<String, Vec<StepRecord>>,
    /// Inventory devices (facts for properties, models for the at-a-glance grid).
    pub devices: Vec<Device>,
    /// This run compared with earlier runs, when known.
    pub history: Option<History>,
    pub signatures: SignatureBook,
    pub evidence: EvidenceLimits,
}

impl RunInput {
    /// Reads the run, its cases and steps, and its history (against up to
    /// `history_depth` earlier runs) from the ledger.
    pub fn from_ledger(
        ledger: &dyn Ledger,
        run_id: &str,
        lab: &str,
        devices: &[Device],
        signatures: SignatureBook,
        history_depth: usize,
    ) -> Result<RunInput, ReportError> {
        let run = ledger.run(run_id)?;
        let cases = ledger.cases(run_id)?;
        let mut steps = BTreeMap::new();
        for case in &cases {
            steps.insert(case.case_id.clone(), ledger.steps(run_id, &case.case_id)?);
        }
        let models = history::models_from_devices(devices);
        let history = history::compare(ledger, run_id, &models, history_depth)?;
        Ok(RunInput {
            lab: lab.to_string(),
            run,
            cases,
            steps,
            devices: devices.to_vec(),
            history: Some(history),
            signatures,
            evidence: EvidenceLimits::default(),
        })
    }
}

/// The files [`write_reports`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub summary: PathBuf,
    pub junit: PathBuf,
    pub html: PathBuf,
    pub evidence: Vec<PathBuf>,
    /// Things that went wrong without stopping the reports (an unreadable artifact, an
    /// event line that did not parse); each also appears in the report.
    pub warnings: Vec<String>,
}

/// Writes `summary.json`, `junit.xml`, `report.html` and `evidence/` into the run
/// directory. Secrets are scrubbed from the case files (console logs, text artifacts,
/// diagnostics archives) first, then from everything written.
pub fn write_reports(run_dir: &RunDir, input: &RunInput) -> Result<Written, ReportError> {
    let scrub_warnings = evidence::scrub_case_files(run_dir, &input.cases);
    let mut summary = summary::build(run_dir, input)?;
    // Shown in the report too: a file that could not be scrubbed may hold a secret.
    summary.warnings.extend(scrub_warnings);
    let warnings = summary.warnings.clone();
    let redactor = run_dir.redactor();
    let write = |path: PathBuf, text: &str| -> Result<PathBuf, ReportError> {
        let text = redactor.redact(text);
        std::fs::write(&path, text.as_bytes()).map_err(|e| ReportError::io(&path, e))?;
        Ok(path)
    };
    let evidence = evidence::write(run_dir, &summary, &input.evidence)?;
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| ReportError::Harness(format!("cannot serialize the summary: {e}")))?;
    let summary_path = write(run_dir.summary_path(), &json)?;
    let junit = write(run_dir.junit_path(), &junit::render(run_dir, &summary)?)?;
    let html = write(run_dir.html_path(), &html::render(&summary)?)?;
    Ok(Written {
        summary: summary_path,
        junit,
        html,
        evidence,
        warnings,
    })
}
