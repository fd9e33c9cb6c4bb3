//! `aplab status`: current and recent runs, then the devices with health, lease and
//! lifecycle state.

use std::path::PathBuf;

use crate::fleet::runner::summarize;
use crate::store::{Ledger, RunStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lab inventory.
    #[arg(long, short)]
    pub inventory: Option<PathBuf>,
    /// How many recent runs to show.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> u8 {
    let inventory = match super::inputs::inventory(&super::inputs::inventory_arg(&args.inventory)) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let ledger = match super::inputs::ledger(&inventory) {
        Ok(l) => l,
        Err(code) => return code,
    };
    match show(&inventory, ledger.as_ref(), args.runs, args.json) {
        Ok(()) => super::exit::PASSED,
        Err(e) => {
            eprintln!("error: {e}");
            super::exit::INFRASTRUCTURE
        }
    }
}

fn show(
    inventory: &crate::model::inventory::Inventory,
    ledger: &dyn Ledger,
    runs: usize,
    json: bool,
) -> Result<(), crate::store::LedgerError> {
    let recent = ledger.recent_runs(runs)?;
    let devices = super::devices::rows(&inventory.devices, ledger)?;
    if json {
        let runs: Vec<_> = recent
            .iter()
            .map(|r| {
                let cases = ledger.cases(&r.id).unwrap_or_default();
                let parked = ledger.parked(&r.id).unwrap_or_default();
                serde_json::json!({ "run": r, "summary": summarize(&cases), "parked": parked })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "runs": runs, "devices": devices }))
                .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "lab {} (ledger {})",
        inventory.lab.name,
        inventory.lab.ledger.display()
    );
    if recent.is_empty() {
        println!("no runs yet; start one with `aplab run`");
    }
    for r in &recent {
        let s = summarize(&ledger.cases(&r.id)?);
        let hint = if r.status != RunStatus::Finished && s.unfinished > 0 {
            format!("  (finish it with `aplab resume {}`)", r.id)
        } else {
            String::new()
        };
        println!(
            "run {}  {}  {:<11} {} passed, {} failed, {} skipped, {} unfinished{hint}",
            r.id,
            super::devices::timestamp(r.started_at),
            r.status.as_str(),
            s.passed,
            s.failed,
            s.skipped,
            s.unfinished
        );
        for w in ledger.parked(&r.id)? {
            println!(
                "    parked {} on {} until {}",
                w.case_id,
                w.device_id,
                super::devices::timestamp(w.not_before)
            );
        }
    }
    println!();
    println!(
        "{:<10} {:<8} {:<40} LAST RESEALED",
        "DEVICE", "HEALTH", "LEASE"
    );
    for d in devices {
        println!(
            "{:<10} {:<8} {:<40} {}",
            d.id,
            d.health,
            d.lease.as_deref().unwrap_or("-"),
            d.last_resealed.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
