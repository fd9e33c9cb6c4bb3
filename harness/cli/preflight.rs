//! The tenant side of `aplab run`, before any device is powered: the pre-flight of the
//! planned devices against their tenant, and `--dry-run`'s listing of the Graph calls the
//! planned cases' tenant steps would make.
//!
//! Which cases pre-flight guards: those whose scenario has a tenant step (for the
//! case's matrix values). A blocking problem on a device (not registered, no profile,
//! the profile does not allow pre-provisioning, a placeholder serial) makes those cases
//! impossible: they are recorded as skipped with the problem as the reason; the
//! device's other cases (a TPM check, say) still run. A missing Graph permission fails
//! the whole run (exit 2), and so does a tenant that does not answer (exit 3): both
//! are the lab's to fix, not one device's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use crate::device::Tenant;
use crate::device::tenant::preflight::{Problem, Target, preflight};
use crate::device::tenant::{self, DryRunTenant};
use crate::fleet::Job;
use crate::model::case_context;
use crate::model::inventory::{Device, Inventory, TenantConfig};
use crate::model::scenario::{Action, Case, FailureClass, ResetMethod, Scenario, Step, TenantOp};

/// What pre-flight decided for the run.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Case id -> why it cannot run.
    pub skip: BTreeMap<String, String>,
    /// The run must not start: exit with this code (2 config, 3 infrastructure).
    pub stop: Option<u8>,
}

/// The tenant steps of one case, in order (a step's `when` decides for this case).
fn tenant_steps<'a>(scenario: &'a Scenario, case: &Case) -> Vec<(&'a str, &'a Step, &'a TenantOp)> {
    let mut steps = Vec::new();
    for phase in &scenario.phases {
        for step in &phase.steps {
            let applies = step.when.iter().all(|(k, v)| case.get(k) == Some(v));
            if let (true, Action::Tenant(op)) = (applies, &step.action) {
                steps.push((phase.name.as_str(), step, op));
            }
        }
    }
    steps
}

fn scenario_of<'a>(scenarios: &'a [Scenario], job: &Job) -> Option<&'a Scenario> {
    scenarios.iter().find(|s| s.name == job.scenario)
}

fn device_of<'a>(inventory: &'a Inventory, id: &str) -> Option<&'a Device> {
    inventory.devices.iter().find(|d| d.id == id)
}

/// Checks every planned device whose cases use its tenant, prints the problems per
/// device (stderr), and decides which cases to skip or whether to stop.
pub async fn check(inventory: &Inventory, scenarios: &[Scenario], jobs: &[Job]) -> Verdict {
    // Tenant -> device -> the cases there that use the tenant.
    let mut uses: BTreeMap<&str, BTreeMap<&str, Vec<&Job>>> = BTreeMap::new();
    let mut waits_for_profile: BTreeSet<&str> = BTreeSet::new();
    for job in jobs {
        let (Some(scenario), Some(device)) = (
            scenario_of(scenarios, job),
            device_of(inventory, &job.device_id),
        ) else {
            continue;
        };
        let Some(tenant) = device.tenant.as_deref() else {
            continue;
        };
        let steps = tenant_steps(scenario, &job.case);
        if steps.is_empty() {
            continue;
        }
        if steps
            .iter()
            .any(|(_, _, op)| matches!(op, TenantOp::WaitProfileAssigned { .. }))
            && steps
                .iter()
                .any(|(_, _, op)| matches!(op, TenantOp::SetGroupTag { .. }))
        {
            waits_for_profile.insert(device.id.as_str());
        }
        uses.entry(tenant)
            .or_default()
            .entry(device.id.as_str())
            .or_default()
            .push(job);
    }

    let mut verdict = Verdict::default();
    for (tenant_name, devices) in &uses {
        let Some(config) = inventory.tenants.get(*tenant_name) else {
            eprintln!("pre-flight: tenant `{tenant_name}` is not defined in the inventory");
            verdict.stop = Some(super::exit::BAD_INPUT);
            continue;
        };
        let backend = match tenant::connect(config, false) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("pre-flight: tenant {tenant_name}: {e}");
                verdict.stop = Some(super::exit::BAD_INPUT);
                continue;
            }
        };
        // Credentials that do not work fail every device alike: one message, no run.
        match backend.granted_permissions().await {
            Err(e) if e.class == FailureClass::Config => {
                eprintln!("pre-flight: tenant {tenant_name}: the credentials do not work: {e}");
                if let Some(hint) = &e.hint {
                    eprintln!("    check: {hint}");
                }
                verdict.stop = Some(super::exit::BAD_INPUT);
                continue;
            }
            // A tenant that does not answer is reported per device below.
            _ => {}
        }
        let targets: Vec<Target> = devices
            .keys()
            .filter_map(|id| device_of(inventory, id))
            .map(Target::from)
            .collect();
        eprintln!(
            "pre-flight: checking {} device(s) against tenant {tenant_name}",
            targets.len()
        );
        let problems = preflight(backend.as_ref(), &targets, config.profile.as_deref()).await;
        for mut problem in problems {
            // The scenario itself waits for the assignment: "pending" is not yet a fault.
            // The scenario sets the group tag and waits for the assignment itself: a
            // "pending" assignment, or another profile than expected (the group tag left
            // by an earlier case), is what its own steps change.
            if waits_for_profile.contains(problem.device.as_str())
                && (problem.code.as_deref() == Some("pending")
                    || problem.message.contains("the inventory expects"))
            {
                problem.blocking = false;
            }
            print_problem(tenant_name, &problem);
            if problem
                .code
                .as_deref()
                .is_some_and(|c| c.starts_with("HTTP 403"))
            {
                verdict.stop = Some(super::exit::BAD_INPUT);
            } else if problem.class == FailureClass::Infrastructure {
                verdict.stop.get_or_insert(super::exit::INFRASTRUCTURE);
            } else if problem.blocking {
                let reason = format!(
                    "pre-flight: {}: {}{}",
                    problem.device,
                    problem.message,
                    problem
                        .hint
                        .as_deref()
                        .map(|h| format!(" (check: {h})"))
                        .unwrap_or_default()
                );
                for job in devices.get(problem.device.as_str()).into_iter().flatten() {
                    verdict
                        .skip
                        .entry(job.case_id.clone())
                        .or_insert_with(|| reason.clone());
                }
            }
        }
    }
    match verdict.stop {
        Some(code) if code == super::exit::INFRASTRUCTURE => eprintln!(
            "pre-flight: the tenant did not answer; nothing was powered (check the network and the tenant's URLs, then run again)"
        ),
        Some(_) => eprintln!(
            "pre-flight: fix the problems above (or run with --no-preflight); nothing was powered"
        ),
        None if !verdict.skip.is_empty() => {
            eprintln!(
                "pre-flight: {} case(s) cannot run and will be recorded as skipped:",
                verdict.skip.len()
            );
            for case_id in verdict.skip.keys() {
                eprintln!("    {case_id}");
            }
        }
        None => {}
    }
    verdict
}

fn print_problem(tenant: &str, p: &Problem) {
    let what = if p.blocking { "blocking" } else { "warning" };
    let code = p
        .code
        .as_deref()
        .map(|c| format!(", code {c}"))
        .unwrap_or_default();
    eprintln!(
        "pre-flight: {what}: {}: {} (tenant {tenant}, serial {}, {}{code})",
        p.device,
        p.message,
        p.serial,
        p.class.as_str()
    );
    if let Some(hint) = &p.hint {
        eprintln!("    check: {hint}");
    }
}

/// Prints, per planned case on a device with a tenant, the Graph calls its tenant steps
/// would make, through [`DryRunTenant`] (secrets redacted, nothing sent). Each tenant
/// operation is shown once, as its first attempt: waits show one poll, and the answers
/// are the dry-run's placeholders.
pub async fn dry_run(
    inventory: &Inventory,
    scenarios: &[Scenario],
    jobs: &[Job],
    skip: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    // The dry-run backend prints to stdout too; each header is flushed before its calls.
    let mut out = std::io::stdout();
    // One dry-run backend per tenant, so the token request shows once per tenant.
    let mut backends: BTreeMap<&str, DryRunTenant> = BTreeMap::new();
    for job in jobs {
        let (Some(scenario), Some(device)) = (
            scenario_of(scenarios, job),
            device_of(inventory, &job.device_id),
        ) else {
            continue;
        };
        let config = device
            .tenant
            .as_deref()
            .and_then(|name| inventory.tenants.get(name));
        let steps = tenant_steps(scenario, &job.case);
        if let Some(reason) = skip.get(&job.case_id) {
            writeln!(out, "# {}: skipped ({reason})\n", job.case_id)?;
            continue;
        }
        let (Some(config), false) = (config, steps.is_empty()) else {
            writeln!(out, "# {}: no tenant steps\n", job.case_id)?;
            continue;
        };
        writeln!(out, "# {} (tenant {})", job.case_id, config.name)?;
        out.flush()?;
        let backend = backends
            .entry(config.name.as_str())
            .or_insert_with(|| DryRunTenant::to_stdout(config));
        for (phase, step, op) in steps {
            writeln!(out, "## {phase} / {}", step.name)?;
            out.flush()?;
            if let Err(e) = show_op(backend, device, config, scenario, &job.case, op).await {
                writeln!(out, "  (not shown: {e})")?;
            }
        }
        writeln!(out)?;
    }
    out.flush()
}

/// Makes the calls the engine's tenant step makes for `op` (harness/engine/tenant.rs),
/// once, against the dry-run backend.
async fn show_op(
    tenant: &dyn Tenant,
    device: &Device,
    config: &TenantConfig,
    scenario: &Scenario,
    case: &Case,
    op: &TenantOp,
) -> Result<(), String> {
    let render = |template: &crate::model::scenario::Template| {
        let ctx = case_context(device, Some(config), case, &scenario.vars);
        template.render_with_secrets(&ctx, &|_| Ok("<redacted>".to_string()))
    };
    let identity = tenant
        .identity(&device.serial)
        .await
        .map_err(|e| e.to_string())?;
    let done = match op {
        TenantOp::ResetRecord {
            method: ResetMethod::Delete,
        } => {
            tenant
                .delete_managed_device(&identity.managed_device_id)
                .await
        }
        TenantOp::ResetRecord {
            method: ResetMethod::AllowNextEnrollment,
        } => tenant.allow_next_enrollment(&identity.id).await,
        TenantOp::SetGroupTag { tag } => {
            let tag = render(tag)?;
            tenant.set_group_tag(&identity.id, &tag).await
        }
        TenantOp::AssignUser { user } => {
            let user = render(user)?;
            let upn = config
                .users
                .get(&user)
                .map_or(user.clone(), |u| u.upn.clone());
            tenant.assign_user(&identity.id, &upn).await
        }
        TenantOp::UnassignUser => tenant.unassign_user(&identity.id).await,
        TenantOp::Compliance { .. } => tenant
            .compliance(&identity.managed_device_id)
            .await
            .map(|_| ()),
        // These only read the identity (above), repeatedly for a wait.
        TenantOp::WaitProfileAssigned { .. }
        | TenantOp::MatchQr
        | TenantOp::EnrollmentState { .. } => Ok(()),
    };
    done.map_err(|e| e.to_string())
}
