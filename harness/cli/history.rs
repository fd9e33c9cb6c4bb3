//! `aplab history`: a run compared with earlier runs in the ledger.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::exit;
use crate::report::Redactor;
use crate::report::history::{self, Models};
use crate::report::summary::RunSummary;
use crate::store::Ledger;
use crate::store::sqlite::SqliteLedger;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The run to look at (default: the most recent run in the ledger).
    #[arg(long)]
    pub run: Option<String>,
    /// The run ledger (SQLite file).
    #[arg(long, default_value = "lab-state/ledger.sqlite")]
    pub ledger: PathBuf,
    /// Where run directories are; device models are read from their summary.json.
    #[arg(long, default_value = "reports")]
    pub reports: PathBuf,
    /// How many earlier runs to compare with.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Print the comparison as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: HistoryArgs) -> ExitCode {
    if !args.ledger.exists() {
        eprintln!(
            "error: no run ledger at {} (pass --ledger, or run `aplab run` first)",
            args.ledger.display()
        );
        return ExitCode::from(exit::BAD_INPUT);
    }
    let ledger = match SqliteLedger::open(&args.ledger) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    let run_id = match args.run {
        Some(r) => r,
        None => match ledger.recent_runs(1) {
            Ok(runs) if !runs.is_empty() => runs[0].id.clone(),
            Ok(_) => {
                eprintln!(
                    "error: the ledger {} holds no runs yet",
                    args.ledger.display()
                );
                return ExitCode::from(exit::BAD_INPUT);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        },
    };
    let models = models_from_reports(&args.reports);
    match history::compare(&ledger, &run_id, &models, args.depth) {
        Ok(h) => {
            // The ledger's messages come from devices; scrub credential shapes (this
            // command has no secret values to scrub by name).
            let redactor = Redactor::default();
            if args.json {
                match serde_json::to_string_pretty(&h) {
                    Ok(s) => println!("{}", redactor.redact(&s)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(exit::INFRASTRUCTURE);
                    }
                }
            } else {
                print!("{}", redactor.redact(&history::render_text(&h)));
            }
            ExitCode::from(exit::PASSED)
        }
        Err(crate::store::LedgerError::UnknownRun(r)) => {
            eprintln!(
                "error: run {r} is not in the ledger {} (leave out --run for the latest)",
                args.ledger.display()
            );
            ExitCode::from(exit::BAD_INPUT)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::INFRASTRUCTURE)
        }
    }
}

/// Device models as each run's summary.json recorded them (the inventory of that day).
/// Devices no report names show up as "unknown model".
fn models_from_reports(reports: &Path) -> Models {
    let mut models = Models::new();
    let Ok(entries) = std::fs::read_dir(reports) else {
        return models;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("summary.json")) else {
            continue;
        };
        if let Ok(summary) = serde_json::from_str::<RunSummary>(&text) {
            for case in summary.cases {
                models.insert(case.device.id, case.device.model);
            }
        }
    }
    models
}
