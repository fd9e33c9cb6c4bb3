//! Any bytes as an inventory: never a panic, and problems always print.
#![no_main]

use std::path::Path;

use aplab_fuzz::model::inventory_from_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (inventory, problems) = inventory_from_str(Path::new("fuzz.yaml"), text);
    let _ = problems.to_string();
    // A loaded inventory must also serialise (other layers log it as JSON).
    if let Some(inv) = inventory {
        let _ = serde_json::to_string(&inv);
    }
});
