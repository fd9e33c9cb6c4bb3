//! Reading the inventory and the ledger for commands that need them, with the user-facing
//! error when that fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::inventory::Inventory;
use crate::store::sqlite::SqliteLedger;

/// The default inventory, relative to the working directory.
pub const DEFAULT_INVENTORY: &str = "lab-inventory.yaml";

/// Loads the inventory, printing every problem (exit code 2 on failure).
pub fn inventory(path: &Path) -> Result<Inventory, u8> {
    crate::model::load_inventory(path).map_err(|problems| {
        eprint!("{problems}");
        super::exit::BAD_INPUT
    })
}

/// Opens the ledger the inventory names (exit code 3 on failure: local lab state).
pub fn ledger(inventory: &Inventory) -> Result<Arc<SqliteLedger>, u8> {
    SqliteLedger::open(&inventory.lab.ledger)
        .map(Arc::new)
        .map_err(|e| {
            eprintln!("error: {e}");
            super::exit::INFRASTRUCTURE
        })
}

pub fn inventory_arg(path: &Option<PathBuf>) -> PathBuf {
    path.clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INVENTORY))
}
