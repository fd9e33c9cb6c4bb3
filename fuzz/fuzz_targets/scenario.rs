//! Any bytes as a scenario, with the shipped blocks and inventory: never a panic, and
//! problems always print. Cross-checks (templates rendered for devices, secrets,
//! capabilities) run too, since the shipped inventory loads.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use aplab_fuzz::model::inventory::Inventory;
use aplab_fuzz::model::{inventory_from_str, scenarios_from_str};
use libfuzzer_sys::fuzz_target;

static INVENTORY: LazyLock<Inventory> = LazyLock::new(|| {
    let text = include_str!("../../lab-inventory.yaml");
    inventory_from_str(&PathBuf::from("lab-inventory.yaml"), text)
        .0
        .expect("the shipped inventory loads")
});

const BLOCKS: [(&str, &str); 3] = [
    ("blocks/power-on-to-oobe.yaml", include_str!("../../scenarios/blocks/power-on-to-oobe.yaml")),
    ("blocks/technician-flow.yaml", include_str!("../../scenarios/blocks/technician-flow.yaml")),
    ("blocks/user-flow.yaml", include_str!("../../scenarios/blocks/user-flow.yaml")),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut files: Vec<(PathBuf, String, bool)> = BLOCKS
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string(), true))
        .collect();
    files.push((PathBuf::from("fuzz.yaml"), text.to_string(), false));
    let loaded = scenarios_from_str(&files, Some(&INVENTORY));
    let _ = loaded.problems.to_string();
    for s in &loaded.scenarios {
        let _ = s.cases();
    }
});
