//! Any bytes as a scenario, with the shipped blocks and inventory: never a panic, and
//! problems always print. Cross-checks (templates rendered for devices, secrets,
//! capabilities) run too, since the shipped inventory loads. Blocks and inventory are
//! read once; each input is one scenario file.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use aplab_fuzz::model::inventory::Inventory;
use aplab_fuzz::model::{BlockSet, blocks_from_str, inventory_from_str, scenario_from_str};
use libfuzzer_sys::fuzz_target;

static INVENTORY: LazyLock<Inventory> = LazyLock::new(|| {
    let text = include_str!("../../lab-inventory.yaml");
    inventory_from_str(&PathBuf::from("lab-inventory.yaml"), text)
        .0
        .expect("the shipped inventory loads")
});

static BLOCKS: LazyLock<BlockSet> = LazyLock::new(|| {
    let files = [
        (
            "blocks/power-on-to-oobe.yaml",
            include_str!("../../scenarios/blocks/power-on-to-oobe.yaml"),
        ),
        (
            "blocks/technician-flow.yaml",
            include_str!("../../scenarios/blocks/technician-flow.yaml"),
        ),
        (
            "blocks/user-flow.yaml",
            include_str!("../../scenarios/blocks/user-flow.yaml"),
        ),
    ];
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    let (blocks, problems) = blocks_from_str(&files);
    assert!(!problems.has_errors(), "{problems}");
    blocks
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = scenario_from_str(Path::new("fuzz.yaml"), text, &BLOCKS, Some(&INVENTORY));
    let _ = loaded.problems.to_string();
    for s in &loaded.scenarios {
        let _ = s.cases();
    }
});
