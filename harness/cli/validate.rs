//! `aplab validate`: check scenarios and inventory together, print every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::model::{self, Problems};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files or directories (a directory's `blocks/` holds reusable blocks).
    #[arg(default_value = "scenarios")]
    pub paths: Vec<PathBuf>,
    /// The lab inventory.
    #[arg(
        long,
        short,
        default_value = "lab-inventory.yaml",
        env = "APLAB_INVENTORY"
    )]
    pub inventory: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    let mut problems = Problems::new();
    let inventory = match model::load_inventory(&args.inventory) {
        Ok(inv) => Some(inv),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let loaded = model::check_scenarios(&args.paths, inventory.as_ref());
    problems.extend(loaded.problems);
    if !problems.items.is_empty() {
        eprint!("{problems}");
    }
    let errors = problems.error_count();
    let warnings = problems.warning_count();
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    if errors > 0 {
        eprintln!(
            "\nvalidate: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        return ExitCode::from(exit::BAD_INPUT);
    }
    let cases: usize = loaded.scenarios.iter().map(|s| s.cases().len()).sum();
    let devices = inventory.as_ref().map_or(0, |i| i.devices.len());
    println!(
        "ok: {} ({}), {} in {}{}",
        plural(loaded.scenarios.len(), "scenario"),
        plural(cases, "case"),
        plural(devices, "device"),
        args.inventory.display(),
        if warnings > 0 {
            format!(", {}", plural(warnings, "warning"))
        } else {
            String::new()
        }
    );
    ExitCode::from(exit::PASSED)
}
