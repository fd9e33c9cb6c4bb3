//! `aplab lab up`: runs the virtual lab from an inventory until SIGTERM or Ctrl-C, so the
//! harness (or a person with `screen`, `curl`, `socat`) can be pointed at it. Prints every
//! endpoint, as text or `--json`. Everything it writes lives under the state dir.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};
use serde_json::json;

use super::exit;
use crate::sim::clock::LabClock;
use crate::sim::enrollment::TenantView;
use crate::sim::lab::{Lab, LabHandle, ensure_secrets};
use crate::sim::snapshot::ShellTarget;
use crate::sim::ssh::{SshEndpoint, prepare_lab_shells};
use crate::sim::swtpm::{self, EkCertificate, Swtpm, SwtpmDevice, TpmCas};
use crate::sim::tenant::{Settings, SimTenant, TenantState};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start the virtual lab and keep it running until SIGTERM or Ctrl-C.
    Up {
        /// The lab inventory (must have a `lab.virtual` block).
        #[arg(
            long,
            short,
            env = "APLAB_INVENTORY",
            default_value = "lab-inventory.yaml"
        )]
        inventory: PathBuf,
        /// Print the endpoints as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LabArgs) -> ExitCode {
    match args.command {
        LabCommand::Up { inventory, json } => up(inventory, json),
    }
}

fn up(path: PathBuf, as_json: bool) -> ExitCode {
    let inventory = match crate::model::load_inventory(&path) {
        Ok(inv) => inv,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    let Some(virtual_lab) = inventory.lab.virtual_lab.clone() else {
        eprintln!(
            "error: {} describes a hardware lab (no `lab.virtual` block); `aplab lab up` starts only the virtual lab",
            path.display()
        );
        return ExitCode::from(exit::BAD_INPUT);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
    };
    runtime.block_on(async move {
        // Secrets first: the tenant reads the client secret the lab generates.
        if let Err(e) = ensure_secrets(&inventory) {
            eprintln!("error: {e}");
            return ExitCode::from(exit::INFRASTRUCTURE);
        }
        let clock = Arc::new(LabClock::new(virtual_lab.time_scale));
        let state = match TenantState::from_inventory(&inventory, Settings::default()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: tenant: {e}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        };
        let tenant = SimTenant::new(state, Arc::clone(&clock));
        let server = match &virtual_lab.tenant {
            Some(ep) => {
                let addr = format!("{}:{}", ep.host, ep.port);
                let Ok(addr) = addr.parse() else {
                    eprintln!("error: tenant endpoint {addr} is not an IP address and port");
                    return ExitCode::from(exit::BAD_INPUT);
                };
                match tenant.serve(addr).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!(
                            "error: cannot listen on {addr} for the tenant: {e} (is another lab running?)"
                        );
                        return ExitCode::from(exit::INFRASTRUCTURE);
                    }
                }
            }
            None => None,
        };
        let view: Arc<Mutex<dyn TenantView>> = Arc::new(Mutex::new(tenant));
        let lab = match Lab::start_with_clock(&inventory, clock, view).await {
            Ok(lab) => lab,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        };
        let (shells, tpms) = match start_shells_and_tpms(&inventory, &lab).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("error: {e}");
                lab.shutdown().await;
                return ExitCode::from(exit::INFRASTRUCTURE);
            }
        };
        let tenant_url = server.as_ref().map(|s| s.url());
        if as_json {
            let doc = json!({
                "lab": inventory.lab.name,
                "state_dir": lab.state_dir(),
                "time_scale": virtual_lab.time_scale,
                "tenant": tenant_url,
                "devices": lab.devices().keys().collect::<Vec<_>>(),
                "endpoints": lab.endpoints(),
                "ssh": shells.iter().map(|(id, port, _)| json!({"device": id, "address": format!("127.0.0.1:{port}")})).collect::<Vec<_>>(),
                "tpm": tpms.iter().map(|(id, t)| json!({"device": id, "tcti": t.tcti()})).collect::<Vec<_>>(),
            });
            println!("{doc}");
        } else {
            println!(
                "virtual lab {:?}: {} devices, time x{}, state in {}",
                inventory.lab.name,
                lab.devices().len(),
                virtual_lab.time_scale,
                lab.state_dir().display()
            );
            if let Some(url) = &tenant_url {
                println!("  {:<8} {:<24} {url}", "-", "tenant (Graph + token)");
            }
            for e in lab.endpoints() {
                println!(
                    "  {:<8} {:<24} {}",
                    e.device.as_deref().unwrap_or("-"),
                    e.kind,
                    e.address
                );
            }
            for (id, port, _) in &shells {
                println!("  {id:<8} {:<24} 127.0.0.1:{port}", "shell (SSH)");
            }
            for (id, t) in &tpms {
                println!("  {id:<8} {:<24} {}", "TPM (swtpm)", t.tcti());
            }
            println!("running; stop with Ctrl-C or SIGTERM");
        }
        let stopped = wait_for_stop().await;
        for (_, _, shell) in shells {
            shell.shutdown().await;
        }
        for (_, tpm) in tpms {
            tpm.shutdown();
        }
        lab.shutdown().await;
        drop(server);
        match stopped {
            Ok(()) => ExitCode::from(exit::PASSED),
            Err(e) => {
                eprintln!("error: cannot wait for signals: {e}");
                ExitCode::from(exit::INFRASTRUCTURE)
            }
        }
    })
}

async fn wait_for_stop() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

type Shells = Vec<(String, u16, SshEndpoint)>;
type Tpms = Vec<(String, Swtpm)>;

/// Each device's SSH server (answering from the device's own state) and swtpm.
async fn start_shells_and_tpms(
    inventory: &crate::model::inventory::Inventory,
    lab: &LabHandle,
) -> Result<(Shells, Tpms), String> {
    let mut shells = Vec::new();
    for plan in prepare_lab_shells(inventory).map_err(|e| e.to_string())? {
        let id = plan.device.id.clone();
        let port = plan.device.port;
        let Some(device) = lab.device(&id) else {
            continue;
        };
        let target: Arc<dyn ShellTarget> = Arc::clone(device) as Arc<dyn ShellTarget>;
        shells.push((id, port, plan.start(target)));
    }
    let mut tpm_devices: Vec<SwtpmDevice> = Vec::new();
    for d in &inventory.devices {
        if let Some(tpm) = SwtpmDevice::from_inventory(inventory, d, EkCertificate::LabCa) {
            tpm_devices.push(tpm.map_err(|e| e.to_string())?);
        }
    }
    let mut tpms = Vec::new();
    if let (false, Some(cas)) = (tpm_devices.is_empty(), TpmCas::from_inventory(inventory)) {
        swtpm::provision_all(&tpm_devices, &cas)
            .await
            .map_err(|e| e.to_string())?;
        for d in &tpm_devices {
            tpms.push((d.id.clone(), Swtpm::start(d).map_err(|e| e.to_string())?));
        }
    }
    Ok((shells, tpms))
}
