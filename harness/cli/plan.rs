//! `aplab plan`: which scenario case runs on which device, its phases and gaps, and how
//! long it is expected to take.
//!
//! A phase's duration is its `expect_duration:` when given; otherwise the sum of its
//! steps' timeouts (a step without one counts a default for its kind: see
//! [`step_estimate`]), capped by the phase `timeout:`. That sum is an upper bound. A gap
//! counts its minimum. Durations are lab time; in the virtual lab the wall time is the
//! lab time divided by the time scale.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::model::inventory::Inventory;
use crate::model::scenario::{Action, Phase, PowerAction, Scenario, Step, TenantOp, Wait};
use crate::model::{self, Problems, applies, match_device};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files or directories.
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
    /// Print the plan as JSON (field names are stable; see docs/scenario-language.md).
    #[arg(long)]
    pub json: bool,
}

/// The plan as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub lab: String,
    /// 1.0 for a physical lab.
    pub time_scale: f64,
    pub scenarios: Vec<ScenarioPlan>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioPlan {
    pub name: String,
    pub file: PathBuf,
    pub kind: String,
    pub priority: i32,
    pub cases: Vec<CasePlan>,
}

#[derive(Debug, Serialize)]
pub struct CasePlan {
    /// Matrix values of the case (empty without a matrix).
    pub matrix: std::collections::BTreeMap<String, String>,
    /// Devices the case may run on.
    pub devices: Vec<String>,
    /// Devices it may not run on, with the reason.
    pub excluded: Vec<Excluded>,
    pub phases: Vec<PhasePlan>,
    /// Phases plus minimum gaps, lab time, seconds.
    pub total_secs: u64,
    /// `total_secs` divided by the time scale.
    pub wall_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct Excluded {
    pub device: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PhasePlan {
    pub name: String,
    /// Minimum gap before the phase (seconds), if it has one.
    pub gap_min_secs: Option<u64>,
    pub gap_max_secs: Option<u64>,
    /// Number of steps that run in this case.
    pub steps: usize,
    pub estimate_secs: u64,
    /// `expect_duration` or `step timeouts`.
    pub estimate_basis: String,
}

/// A step's share of a phase estimate: its timeout, or a default for its kind.
pub fn step_estimate(step: &Step) -> Duration {
    if let Some(t) = step.timeout {
        return t;
    }
    let secs = |s: u64| Duration::from_secs(s);
    match &step.action {
        Action::Power(PowerAction::Expect(_)) | Action::Power(_) => secs(60),
        Action::Keys(_) | Action::Text { .. } => secs(30),
        Action::Expect(_) => secs(600),
        Action::ScreenCheck(_) => secs(60),
        Action::Shell(_) | Action::Tpm(_) => secs(120),
        Action::Tenant(TenantOp::WaitProfileAssigned { deadline })
        | Action::Tenant(TenantOp::Compliance { deadline, .. }) => *deadline,
        Action::Tenant(_) => secs(60),
        Action::Wait(Wait::Fixed(d)) => *d,
        Action::Wait(Wait::Until { deadline, .. }) => *deadline,
        Action::Collect(_) => secs(300),
    }
}

fn phase_plan(phase: &Phase, case: &model::scenario::Case) -> PhasePlan {
    let steps: Vec<&Step> = phase
        .steps
        .iter()
        .filter(|s| applies(&s.when, case))
        .collect();
    let (estimate, basis) = match phase.expect_duration {
        Some(d) => (d, "expect_duration"),
        None => {
            let sum: Duration = steps.iter().map(|s| step_estimate(s)).sum();
            (phase.timeout.map_or(sum, |t| sum.min(t)), "step timeouts")
        }
    };
    PhasePlan {
        name: phase.name.clone(),
        gap_min_secs: phase.gap.as_ref().map(|g| g.min.as_secs()),
        gap_max_secs: phase.gap.as_ref().and_then(|g| g.max.map(|m| m.as_secs())),
        steps: steps.len(),
        estimate_secs: estimate.as_secs(),
        estimate_basis: basis.to_string(),
    }
}

/// Builds the plan for validated scenarios and inventory.
pub fn build(scenarios: &[Scenario], inventory: &Inventory) -> Plan {
    let time_scale = inventory
        .lab
        .virtual_lab
        .as_ref()
        .map_or(1.0, |v| v.time_scale);
    let mut out = Vec::new();
    for s in scenarios {
        let mut cases = Vec::new();
        for case in s.cases() {
            let mut devices = Vec::new();
            let mut excluded = Vec::new();
            for d in &inventory.devices {
                match match_device(s, &case, d) {
                    Ok(()) => devices.push(d.id.clone()),
                    Err(reason) => excluded.push(Excluded {
                        device: d.id.clone(),
                        reason,
                    }),
                }
            }
            let phases: Vec<PhasePlan> = s.phases.iter().map(|p| phase_plan(p, &case)).collect();
            let total: u64 = phases
                .iter()
                .map(|p| p.estimate_secs + p.gap_min_secs.unwrap_or(0))
                .sum();
            cases.push(CasePlan {
                matrix: case,
                devices,
                excluded,
                phases,
                total_secs: total,
                wall_secs: (total as f64 / time_scale).ceil() as u64,
            });
        }
        out.push(ScenarioPlan {
            name: s.name.clone(),
            file: s.source.clone(),
            kind: format!("{:?}", s.kind).to_lowercase(),
            priority: s.priority,
            cases,
        });
    }
    Plan {
        lab: inventory.lab.name.clone(),
        time_scale,
        scenarios: out,
    }
}

/// `180d`, `2h 50m`, `45m`: days at most (humantime would say `5months 27days`).
fn secs(total: u64) -> String {
    let parts = [
        (total / 86_400, "d"),
        (total / 3600 % 24, "h"),
        (total / 60 % 60, "m"),
        (total % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if shown.is_empty() {
        "0s".to_string()
    } else {
        shown.join(" ")
    }
}

/// The plan as a lab engineer reads it.
pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(out, "lab {}", plan.lab);
    if plan.time_scale != 1.0 {
        let _ = write!(
            out,
            " (virtual, time scale {}: durations are lab time)",
            plan.time_scale
        );
    }
    out.push('\n');
    for s in &plan.scenarios {
        let _ = writeln!(out, "\n{} [{}] {}", s.name, s.kind, s.file.display());
        for c in &s.cases {
            let label = if c.matrix.is_empty() {
                "(no matrix)".to_string()
            } else {
                c.matrix
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let devices = if c.devices.is_empty() {
                "NO DEVICE".to_string()
            } else {
                c.devices.join(", ")
            };
            let _ = writeln!(out, "  case {label}: on {devices}");
            for p in &c.phases {
                if let Some(min) = p.gap_min_secs {
                    let max = p.gap_max_secs.map_or("no limit".to_string(), secs);
                    let _ = writeln!(out, "    gap    {} .. {}", secs(min), max);
                }
                let _ = writeln!(
                    out,
                    "    phase  {:<12} {:>3} steps  ~{} ({})",
                    p.name,
                    p.steps,
                    secs(p.estimate_secs),
                    p.estimate_basis
                );
            }
            let wall = if plan.time_scale != 1.0 {
                format!(", {} wall", secs(c.wall_secs))
            } else {
                String::new()
            };
            let _ = writeln!(out, "    total  ~{}{wall}", secs(c.total_secs));
        }
    }
    out
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
    if !problems.has_errors() && !problems.items.is_empty() {
        eprint!("{problems}");
    }
    let Some(inventory) = inventory.filter(|_| !problems.has_errors()) else {
        eprint!("{problems}");
        eprintln!("\nplan: fix these first (`aplab validate` lists them too)");
        return ExitCode::from(exit::BAD_INPUT);
    };
    let plan = build(&loaded.scenarios, &inventory);
    if args.json {
        match serde_json::to_string_pretty(&plan) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("plan: cannot write JSON: {e}");
                return ExitCode::from(exit::FAILED);
            }
        }
    } else {
        print!("{}", render_text(&plan));
    }
    ExitCode::from(exit::PASSED)
}
