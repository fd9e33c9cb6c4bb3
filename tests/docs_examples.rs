//! Every fenced YAML example in docs/scenario-language.md and docs/inventory.md is
//! validated, so the reference cannot drift from the code. The fence's info string says
//! what the example is:
//!
//! - `yaml scenario`: a whole scenario file (the shipped blocks, and the docs' own
//!   blocks, are available to it);
//! - `yaml steps`: a list of steps, put under one phase of a scenario with the matrix
//!   `join: [entra, hybrid]`, `windows: ["10", "11"]`;
//! - `yaml block`: a block file, checked by a scenario that uses it with its defaults;
//! - `yaml inventory`: a whole inventory;
//! - `yaml devices`: devices appended to the shipped inventory.
//!
//! All are checked against the shipped `lab-inventory.yaml`, and must give no problem at
//! all (not even a warning).

use std::path::{Path, PathBuf};

use aplab::model::read_scenario::ACTION_KEYS;
use aplab::model::{check_scenarios, inventory_from_str, load_inventory};

struct Example {
    doc: &'static str,
    line: usize,
    kind: String,
    text: String,
}

fn examples(doc: &'static str) -> Vec<Example> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    let mut current: Option<Example> = None;
    for (i, line) in text.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```yaml") {
                    current = Some(Example {
                        doc,
                        line: i + 1,
                        kind: info.trim().to_string(),
                        text: String::new(),
                    });
                }
            }
            Some(ex) => {
                if line.starts_with("```") {
                    out.push(current.take().unwrap());
                } else {
                    ex.text.push_str(line);
                    ex.text.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "{doc}: unclosed code fence");
    out
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch scenario directory with the shipped blocks and the docs' blocks.
fn scenario_dir(doc_blocks: &[&Example]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir(&blocks).unwrap();
    for entry in std::fs::read_dir(root().join("scenarios/blocks")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, blocks.join(path.file_name().unwrap())).unwrap();
    }
    for (i, b) in doc_blocks.iter().enumerate() {
        std::fs::write(blocks.join(format!("docs-block-{i}.yaml")), &b.text).unwrap();
    }
    dir
}

fn check_scenario_text(ex: &Example, text: &str, doc_blocks: &[&Example]) -> Option<String> {
    let inv = load_inventory(&root().join("lab-inventory.yaml")).unwrap();
    let dir = scenario_dir(doc_blocks);
    let file = dir.path().join("example.yaml");
    std::fs::write(&file, text).unwrap();
    let loaded = check_scenarios(&[file], Some(&inv));
    if loaded.problems.items.is_empty() && loaded.scenarios.len() == 1 {
        None
    } else {
        Some(format!(
            "{}:{} ({}):\n{}\n{}",
            ex.doc, ex.line, ex.kind, text, loaded.problems
        ))
    }
}

#[test]
fn every_yaml_example_in_the_docs_validates() {
    let all: Vec<Example> = examples("docs/scenario-language.md")
        .into_iter()
        .chain(examples("docs/inventory.md"))
        .collect();
    assert!(all.len() >= 25, "only {} examples found", all.len());
    let doc_blocks: Vec<&Example> = all.iter().filter(|e| e.kind == "block").collect();
    let shipped_inventory = std::fs::read_to_string(root().join("lab-inventory.yaml")).unwrap();
    let mut failures = Vec::new();
    for ex in &all {
        let failure = match ex.kind.as_str() {
            "scenario" => check_scenario_text(ex, &ex.text, &doc_blocks),
            "steps" => {
                let text = format!(
                    "name: docs-example\nmatrix:\n  join: [entra, hybrid]\n  windows: [\"10\", \"11\"]\nphases:\n  - name: technician\n    steps:\n{}",
                    indent(&ex.text, 6)
                );
                check_scenario_text(ex, &text, &doc_blocks)
            }
            "block" => {
                let name = ex
                    .text
                    .lines()
                    .find_map(|l| l.strip_prefix("block: "))
                    .expect("a block example starts with `block: NAME`");
                let text = format!(
                    "name: docs-example\nphases:\n  - name: technician\n    steps:\n      - use: {name}\n"
                );
                check_scenario_text(ex, &text, &doc_blocks)
            }
            "inventory" | "devices" => {
                let text = if ex.kind == "devices" {
                    format!("{}\n{}", shipped_inventory, indent(&ex.text, 2))
                } else {
                    ex.text.clone()
                };
                let (inv, problems) = inventory_from_str(&root().join("docs-example.yaml"), &text);
                (inv.is_none() || !problems.items.is_empty())
                    .then(|| format!("{}:{} ({}):\n{problems}", ex.doc, ex.line, ex.kind))
            }
            other => Some(format!(
                "{}:{}: unknown example kind `{other}` (use scenario, steps, block, inventory or devices)",
                ex.doc, ex.line
            )),
        };
        failures.extend(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_docs_show_every_step_kind_and_every_fault() {
    let all: Vec<Example> = examples("docs/scenario-language.md")
        .into_iter()
        .chain(examples("docs/inventory.md"))
        .collect();
    let text: String = all.iter().map(|e| e.text.as_str()).collect();
    for key in ACTION_KEYS {
        assert!(
            text.contains(&format!("{key}:")),
            "no example of the `{key}` step"
        );
    }
    for fault in aplab::model::read_inventory::FAULT_KINDS {
        assert!(
            text.contains(&format!("{fault}:")),
            "no example of the `{fault}` fault"
        );
    }
    for kind in [
        "redfish:",
        "pdudaemon:",
        "pikvm:",
        "command:",
        "serial:",
        "tcp:",
        "rfc2217:",
        "ch9329:",
        "ssh:",
        "tcti:",
    ] {
        assert!(text.contains(kind), "no example of `{kind}`");
    }
}
