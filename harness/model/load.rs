//! Loading the lab engineer's files: reading them, then the checks that need scenarios
//! and inventory together (a step needs a capability a matching device lacks, a template
//! that does not render for a device, a secret a device's tenant does not have).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::inventory::{Capability, Inventory};
use super::node::{self, Node};
use super::problems::{Problems, SourceFile, Span};
use super::read_scenario::{self, Block, ReadScenario};
use super::scenario::{Case, Scenario, TpmCheck};
use super::selector::{applies, match_facts};
use super::template::{case_context, secret_ref};
use super::{read_inventory, scenario::Template};

/// Files larger than this are refused before parsing (a scenario is a few kilobytes).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

fn read_file(path: &Path, what: &str, p: &mut Problems) -> Option<Arc<SourceFile>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            p.file_error(
                path,
                format!("{what} is larger than 4 MiB"),
                "is this the right file?",
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            p.file_error(
                path,
                format!("cannot read {what}: {e}"),
                "check the path (relative paths start from the current directory)",
            );
            return None;
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Some(SourceFile::new(path, text)),
            Err(_) => {
                p.file_error(
                    path,
                    format!("{what} is not UTF-8 text"),
                    "save it as UTF-8",
                );
                None
            }
        },
        Err(e) => {
            p.file_error(
                path,
                format!("cannot read {what}: {e}"),
                "check the path and its permissions",
            );
            None
        }
    }
}

/// Reads text as an inventory (for tests and fuzzing: no file needed).
pub fn inventory_from_str(path: &Path, text: &str) -> (Option<Inventory>, Problems) {
    let mut p = Problems::new();
    let file = SourceFile::new(path, text.to_string());
    let inv = node::parse(&file, &mut p).and_then(|root| read_inventory::read(&root, path, &mut p));
    p.sort();
    if p.has_errors() { (None, p) } else { (inv, p) }
}

/// Reads and checks the lab inventory.
pub fn load_inventory(path: &Path) -> Result<Inventory, Problems> {
    let mut p = Problems::new();
    let Some(file) = read_file(path, "the inventory", &mut p) else {
        return Err(p);
    };
    match inventory_from_str(path, &file.text) {
        (Some(inv), _) => Ok(inv),
        (None, problems) => Err(problems),
    }
}

/// The outcome of loading scenarios: what could be read and every problem found
/// (warnings included, which do not make the load fail).
pub struct Loaded {
    pub scenarios: Vec<Scenario>,
    pub problems: Problems,
}

/// Reads scenarios from files and directories. A directory contributes its `*.yaml`
/// files; its `blocks/` subdirectory holds reusable blocks, not scenarios. Blocks are also
/// looked up beside a scenario file given by name (`<its directory>/blocks/`).
pub fn load_scenarios(paths: &[PathBuf], inventory: &Inventory) -> Result<Vec<Scenario>, Problems> {
    let loaded = check_scenarios(paths, Some(inventory));
    if loaded.problems.has_errors() {
        Err(loaded.problems)
    } else {
        Ok(loaded.scenarios)
    }
}

fn yaml_files(dir: &Path, p: &mut Problems) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            files
        }
        Err(e) => {
            p.file_error(dir, format!("cannot list directory: {e}"), "check the path");
            Vec::new()
        }
    }
}

/// Like [`load_scenarios`] but keeps going: with no inventory (it failed to load), only
/// the checks that need none are made.
pub fn check_scenarios(paths: &[PathBuf], inventory: Option<&Inventory>) -> Loaded {
    let mut p = Problems::new();
    let mut scenario_files: Vec<PathBuf> = Vec::new();
    let mut block_dirs: Vec<PathBuf> = Vec::new();
    for path in paths {
        if path.is_dir() {
            let files = yaml_files(path, &mut p);
            if files.is_empty() {
                p.file_error(
                    path,
                    "no scenario files (*.yaml) in this directory",
                    "give a directory of scenarios or scenario files",
                );
            }
            scenario_files.extend(files);
            block_dirs.push(path.join("blocks"));
        } else if path.exists() {
            scenario_files.push(path.clone());
            block_dirs.push(path.parent().unwrap_or(Path::new("")).join("blocks"));
        } else {
            p.file_error(
                path,
                "no such file or directory",
                "give scenario files or a directory of them",
            );
        }
    }
    // A file named on its own and through its directory is read once.
    scenario_files.sort();
    scenario_files.dedup();
    block_dirs.sort();
    block_dirs.dedup();
    let mut block_files: Vec<PathBuf> = Vec::new();
    for dir in block_dirs.iter().filter(|d| d.is_dir()) {
        block_files.extend(yaml_files(dir, &mut p));
    }

    let mut sources = Vec::new();
    for path in block_files.iter().chain(scenario_files.iter()) {
        if let Some(file) = read_file(path, "the scenario", &mut p) {
            sources.push((file, block_files.contains(path)));
        }
    }
    check_sources(sources, inventory, p)
}

/// Scenario and block texts checked without touching the disk (for tests and fuzzing):
/// `(path, text, in_blocks_dir)`.
pub fn scenarios_from_str(
    files: &[(PathBuf, String, bool)],
    inventory: Option<&Inventory>,
) -> Loaded {
    let sources = files
        .iter()
        .map(|(path, text, in_blocks)| (SourceFile::new(path, text.clone()), *in_blocks))
        .collect();
    check_sources(sources, inventory, Problems::new())
}

fn check_sources(
    sources: Vec<(Arc<SourceFile>, bool)>,
    inventory: Option<&Inventory>,
    mut p: Problems,
) -> Loaded {
    let mut blocks: HashMap<String, Block> = HashMap::new();
    let mut roots: Vec<Node> = Vec::new();
    for (file, in_blocks_dir) in &sources {
        let Some(root) = node::parse(file, &mut p) else {
            continue;
        };
        if read_scenario::is_block(&root) {
            if let Some(block) = read_scenario::read_block(&root, &mut p) {
                if let Some(first) = blocks.get(&block.name) {
                    let where_ = format!(
                        "{}:{}",
                        first.name_span.file.path.display(),
                        first.name_span.line
                    );
                    p.error(
                        &block.name_span,
                        format!("block `{}` is defined twice", block.name),
                    )
                    .hint(format!("the other one is at {where_}"));
                } else {
                    blocks.insert(block.name.clone(), block);
                }
            }
        } else if *in_blocks_dir {
            p.error(
                &root.span,
                "a file in blocks/ must start with `block: NAME`",
            )
            .hint("blocks/ holds reusable step blocks; put scenarios one directory up");
        } else {
            roots.push(root);
        }
    }
    check_roots(&roots, &blocks, inventory, p)
}

/// Blocks read once, to check many scenario texts against (tools, fuzzing).
pub struct BlockSet(HashMap<String, Block>);

/// Reads block files given as `(path, text)`.
pub fn blocks_from_str(files: &[(PathBuf, String)]) -> (BlockSet, Problems) {
    let mut p = Problems::new();
    let mut blocks = HashMap::new();
    for (path, text) in files {
        let file = SourceFile::new(path, text.clone());
        if let Some(block) =
            node::parse(&file, &mut p).and_then(|root| read_scenario::read_block(&root, &mut p))
        {
            blocks.insert(block.name.clone(), block);
        }
    }
    (BlockSet(blocks), p)
}

/// Checks one scenario text against already-read blocks.
pub fn scenario_from_str(
    path: &Path,
    text: &str,
    blocks: &BlockSet,
    inventory: Option<&Inventory>,
) -> Loaded {
    let mut p = Problems::new();
    let file = SourceFile::new(path, text.to_string());
    let roots: Vec<Node> = node::parse(&file, &mut p).into_iter().collect();
    check_roots(&roots, &blocks.0, inventory, p)
}

fn check_roots(
    roots: &[Node],
    blocks: &HashMap<String, Block>,
    inventory: Option<&Inventory>,
    mut p: Problems,
) -> Loaded {
    let mut scenarios = Vec::new();
    let mut names: HashMap<String, Span> = HashMap::new();
    for root in roots {
        let errors_before = p.error_count();
        let Some(read) = read_scenario::read(root, blocks, &mut p) else {
            continue;
        };
        if let Some(first) = names.get(&read.scenario.name) {
            let where_ = format!("{}:{}", first.file.path.display(), first.line);
            p.error(
                &read.name_span,
                format!("scenario name `{}` is used twice", read.scenario.name),
            )
            .hint(format!("the other one is at {where_}"));
        } else {
            names.insert(read.scenario.name.clone(), read.name_span.clone());
        }
        // A scenario with mistakes of its own is not checked against devices: the
        // results would only repeat those mistakes.
        if let Some(inv) = inventory
            && p.error_count() == errors_before
        {
            cross_check(&read, inv, &mut p);
        }
        scenarios.push(read.scenario);
    }
    p.sort();
    Loaded {
        scenarios,
        problems: p,
    }
}

fn case_label(case: &Case) -> String {
    if case.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = case.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", parts.join(", "))
}

fn device_list(ids: &[&str]) -> String {
    if ids.len() <= 3 {
        ids.join(", ")
    } else {
        format!("{} and {} more", ids[..3].join(", "), ids.len() - 3)
    }
}

/// The checks that need the inventory, per matrix case.
fn cross_check(read: &ReadScenario, inv: &Inventory, p: &mut Problems) {
    let s = &read.scenario;
    for case in s.cases() {
        let label = case_label(&case);
        let matching: Vec<&super::inventory::Device> = inv
            .devices
            .iter()
            .filter(|d| match_facts(s, &case, d).is_ok())
            .collect();
        if matching.is_empty() {
            let reasons: Vec<String> = inv
                .devices
                .iter()
                .take(3)
                .filter_map(|d| {
                    match_facts(s, &case, d)
                        .err()
                        .map(|e| format!("{}: {e}", d.id))
                })
                .collect();
            let problem = p.warning(
                &read.requires_span,
                format!(
                    "no device in the inventory matches scenario `{}`{label}",
                    s.name
                ),
            );
            if reasons.is_empty() {
                problem.hint("the inventory has no devices");
            } else {
                problem.hint(reasons.join("; "));
            }
            continue;
        }
        // Capabilities the case's steps need, reported once per step and capability.
        for (phase, spans) in s.phases.iter().zip(&read.step_spans) {
            for (step, span) in phase.steps.iter().zip(spans) {
                if !applies(&step.when, &case) {
                    continue;
                }
                for cap in step.action.needs() {
                    let lacking: Vec<&str> = matching
                        .iter()
                        .filter(|d| !d.has(cap))
                        .map(|d| d.id.as_str())
                        .collect();
                    if lacking.is_empty() {
                        continue;
                    }
                    let block = if cap == Capability::Tenant {
                        "tenant"
                    } else {
                        cap.name()
                    };
                    p.error(
                        span,
                        format!(
                            "step `{}` needs a {} connection, but {} (matching this scenario{label}) has no `{block}:`",
                            step.name,
                            cap.name(),
                            device_list(&lacking)
                        ),
                    )
                    .hint(format!(
                        "add `{block}:` to those devices, or require it: `- {{ fact: has.{}, is: \"true\" }}`",
                        cap.name()
                    ));
                }
            }
        }
        for (check, span, when) in &read.tpm_checks {
            if !applies(when, &case) {
                continue;
            }
            let lacking: Vec<&str> = matching
                .iter()
                .filter(|d| match check {
                    TpmCheck::Manufacturer => d.tpm.is_none(),
                    TpmCheck::Firmware => d.tpm.as_ref().is_none_or(|t| t.firmware.is_none()),
                    _ => d.tpm.as_ref().is_none_or(|t| t.ek_ca_bundle.is_none()),
                })
                .map(|d| d.id.as_str())
                .collect();
            if !lacking.is_empty() {
                let key = match check {
                    TpmCheck::Manufacturer => "tpm.manufacturer",
                    TpmCheck::Firmware => "tpm.firmware",
                    _ => "tpm.ek_ca",
                };
                p.error(
                    span,
                    format!(
                        "this TPM check compares with `{key}`, which {} do not give",
                        device_list(&lacking)
                    ),
                )
                .hint(format!("add `{key}` to those devices in the inventory"));
            }
        }
        for site in read
            .secrets
            .iter()
            .filter(|site| applies(&site.when, &case))
        {
            // One problem per distinct reason, naming the devices it hits.
            let mut reasons: Vec<(String, Vec<&str>)> = Vec::new();
            for d in &matching {
                if let Err(e) = secret_ref(&site.template.0, d, inv) {
                    match reasons.iter_mut().find(|(r, _)| *r == e) {
                        Some((_, ids)) => ids.push(&d.id),
                        None => reasons.push((e, vec![&d.id])),
                    }
                }
            }
            for (reason, ids) in reasons {
                p.error(&site.span, format!("{reason} (devices {})", device_list(&ids)))
                    .hint("secrets come from the device's tenant in the inventory (`tenants: NAME: users:`)");
            }
        }
        // Templates are rendered for the first matching device: they see the same
        // variables on every device of the case, only the values differ.
        let device = matching[0];
        let tenant = device.tenant.as_ref().and_then(|t| inv.tenants.get(t));
        let ctx = case_context(device, tenant, &case, &s.vars);
        let vars_ctx = {
            let mut c = ctx.clone();
            c.remove("vars");
            c
        };
        for site in read
            .templates
            .iter()
            .filter(|site| applies(&site.when, &case))
        {
            let is_var = s.vars.values().any(|v: &Template| *v == site.template);
            let result = if is_var {
                site.template.render(&vars_ctx)
            } else {
                site.template.render(&ctx)
            };
            if let Err(e) = result {
                p.error(
                    &site.span,
                    format!(
                        "template does not render for device {}{label}: {e}",
                        device.id
                    ),
                )
                .hint("variables: device.*, tenant.* (tenant.users.<name>.upn), matrix.*, vars.*");
            }
        }
    }
}
