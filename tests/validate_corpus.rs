//! The malformed-input corpus: every file under tests/corpus/ must make `aplab validate`
//! exit 2 and print exactly the text in the `.expected` file beside it (file:line:col,
//! message, source line, caret, hint).
//!
//! - `tests/corpus/scenarios/X.yaml` is validated against `lab-inventory.yaml`, or against
//!   `X.inventory.yaml` when that exists (for checks that need an unusual device).
//! - `tests/corpus/inventory/X.yaml` is validated as the inventory, with
//!   `scenarios/health-check.yaml` as the scenario.
//!
//! After changing a message on purpose, `APLAB_BLESS=1 cargo test --test validate_corpus`
//! rewrites the `.expected` files; review the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.ends_with(".yaml") && !name.ends_with(".inventory.yaml")
        })
        .collect();
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// Runs validate and compares; returns a description of the mismatch, if any.
fn check(file: &Path, args: &[String]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_aplab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("APLAB_INVENTORY")
        .output()
        .expect("run aplab");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let expected_path = file.with_extension("expected");
    if std::env::var_os("APLAB_BLESS").is_some() {
        std::fs::write(&expected_path, &stderr).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!("exit code {:?}, expected 2", out.status.code()));
    }
    if stderr != expected {
        problems.push(format!(
            "stderr differs.\n--- expected\n{expected}\n--- actual\n{stderr}"
        ));
    }
    if !out.stdout.is_empty() {
        problems.push(format!(
            "stdout not empty: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    (!problems.is_empty()).then(|| format!("{}: {}", relative(file), problems.join("; ")))
}

#[test]
fn every_malformed_file_gives_exit_2_and_the_exact_messages() {
    let mut failures = Vec::new();
    let scenarios = corpus("scenarios");
    let inventories = corpus("inventory");
    assert!(
        scenarios.len() + inventories.len() >= 40,
        "the corpus must hold at least 40 files"
    );
    for file in &scenarios {
        let own = file.with_extension("inventory.yaml");
        let inventory = if own.exists() {
            relative(&own)
        } else {
            "lab-inventory.yaml".to_string()
        };
        let args = vec![
            "validate".to_string(),
            relative(file),
            "--inventory".to_string(),
            inventory,
        ];
        failures.extend(check(file, &args));
    }
    for file in &inventories {
        let args = vec![
            "validate".to_string(),
            "scenarios/health-check.yaml".to_string(),
            "--inventory".to_string(),
            relative(file),
        ];
        failures.extend(check(file, &args));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
