//! `aplab lab up`: runs the virtual lab from an inventory until SIGTERM or Ctrl-C, so the
//! harness (or a person with `screen`, `curl`, `socat`, `ssh`) can be pointed at it.
//! Prints every endpoint, as text or `--json`. Everything it writes lives under the state
//! dir; on the way out it stops every server, swtpm and PTY it started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::exit;
use crate::model::inventory::Inventory;
use crate::sim::clock::LabClock;
use crate::sim::enrollment::TenantView;
use crate::sim::lab::{Lab, LabHandle, ensure_secrets};
use crate::sim::snapshot::ShellTarget;
use crate::sim::ssh::{SshEndpoint, prepare_lab_shells};
use crate::sim::swtpm::{self, EkCertificate, Swtpm, SwtpmDevice, TpmCas};
use crate::sim::tenant::{Settings, SimTenant, TenantServer, TenantState};

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
        let running = match RunningLab::start(&inventory).await {
            Ok(r) => r,
            Err((code, message)) => {
                eprintln!("error: {message}");
                return ExitCode::from(code);
            }
        };
        if as_json {
            println!("{}", running.describe());
        } else {
            print!("{}", running.describe_text());
            println!("running; stop with Ctrl-C or SIGTERM");
        }
        let stopped = wait_for_stop().await;
        running.shutdown().await;
        match stopped {
            Ok(()) => ExitCode::from(exit::PASSED),
            Err(e) => {
                eprintln!("error: cannot wait for signals: {e}");
                ExitCode::from(exit::INFRASTRUCTURE)
            }
        }
    })
}

/// Everything `lab up` runs: the devices and their endpoints, the tenant, the SSH
/// servers and the swtpms.
pub struct RunningLab {
    name: String,
    time_scale: f64,
    lab: LabHandle,
    tenant: Option<TenantServer>,
    shells: Vec<(String, u16, SshEndpoint)>,
    tpms: Vec<(String, Swtpm)>,
}

impl RunningLab {
    /// Starts the whole virtual lab; on error, the exit code and what to check.
    pub async fn start(inventory: &Inventory) -> Result<RunningLab, (u8, String)> {
        let infra = |m: String| (exit::INFRASTRUCTURE, m);
        let Some(virtual_lab) = inventory.lab.virtual_lab.clone() else {
            return Err((
                exit::BAD_INPUT,
                format!(
                    "{} describes a hardware lab (no `lab.virtual` block); `aplab lab up` starts only the virtual lab",
                    inventory.source.display()
                ),
            ));
        };
        // Secrets first: the tenant reads the client secret the lab generates.
        ensure_secrets(inventory).map_err(|e| infra(e.to_string()))?;
        let clock = Arc::new(LabClock::new(virtual_lab.time_scale));
        let state = TenantState::from_inventory(inventory, Settings::default())
            .map_err(|e| (exit::BAD_INPUT, format!("tenant: {e}")))?;
        let tenant = SimTenant::new(state, Arc::clone(&clock));
        let server = match &virtual_lab.tenant {
            Some(ep) => {
                let text = format!("{}:{}", ep.host, ep.port);
                let addr = text.parse().map_err(|_| {
                    (
                        exit::BAD_INPUT,
                        format!("tenant endpoint {text} is not an IP address and port"),
                    )
                })?;
                Some(tenant.serve(addr).await.map_err(|e| {
                    infra(format!(
                        "cannot listen on {text} for the tenant: {e} (is another lab running?)"
                    ))
                })?)
            }
            None => None,
        };
        let view: Arc<Mutex<dyn TenantView>> = Arc::new(Mutex::new(tenant));
        let lab = Lab::start_with_clock(inventory, clock, view)
            .await
            .map_err(|e| infra(e.to_string()))?;
        let mut running = RunningLab {
            name: inventory.lab.name.clone(),
            time_scale: virtual_lab.time_scale,
            lab,
            tenant: server,
            shells: Vec::new(),
            tpms: Vec::new(),
        };
        if let Err(e) = running.start_shells_and_tpms(inventory).await {
            running.shutdown().await;
            return Err(infra(e));
        }
        Ok(running)
    }

    /// Each device's SSH server (answering from the device's own state) and swtpm.
    async fn start_shells_and_tpms(&mut self, inventory: &Inventory) -> Result<(), String> {
        for plan in prepare_lab_shells(inventory).map_err(|e| e.to_string())? {
            let id = plan.device.id.clone();
            let port = plan.device.port;
            let Some(device) = self.lab.device(&id) else {
                continue;
            };
            let target: Arc<dyn ShellTarget> = Arc::new(Arc::clone(device));
            self.shells.push((id, port, plan.start(target)));
        }
        let mut tpm_devices: Vec<SwtpmDevice> = Vec::new();
        for d in &inventory.devices {
            if let Some(tpm) = SwtpmDevice::from_inventory(inventory, d, EkCertificate::LabCa) {
                tpm_devices.push(tpm.map_err(|e| e.to_string())?);
            }
        }
        if tpm_devices.is_empty() {
            return Ok(());
        }
        let Some(cas) = TpmCas::from_inventory(inventory) else {
            return Ok(());
        };
        swtpm::provision_all(&tpm_devices, &cas)
            .await
            .map_err(|e| e.to_string())?;
        for d in &tpm_devices {
            let tpm = Swtpm::start(d).map_err(|e| e.to_string())?;
            self.tpms.push((d.id.clone(), tpm));
        }
        Ok(())
    }

    /// Every endpoint as one JSON document.
    pub fn describe(&self) -> Value {
        json!({
            "lab": self.name,
            "state_dir": self.lab.state_dir(),
            "time_scale": self.time_scale,
            "tenant": self.tenant.as_ref().map(|s| s.url()),
            "devices": self.lab.devices().keys().collect::<Vec<_>>(),
            "endpoints": self.lab.endpoints(),
            "ssh": self.shells.iter()
                .map(|(id, port, _)| json!({ "device": id, "address": format!("127.0.0.1:{port}") }))
                .collect::<Vec<_>>(),
            "tpm": self.tpms.iter()
                .map(|(id, t)| json!({ "device": id, "tcti": t.tcti() }))
                .collect::<Vec<_>>(),
        })
    }

    /// Every endpoint, one per line.
    pub fn describe_text(&self) -> String {
        let mut out = format!(
            "virtual lab {:?}: {} devices, time x{}, state in {}\n",
            self.name,
            self.lab.devices().len(),
            self.time_scale,
            self.lab.state_dir().display()
        );
        let mut row = |device: &str, kind: &str, address: &str| {
            out.push_str(&format!("  {device:<8} {kind:<24} {address}\n"));
        };
        if let Some(t) = &self.tenant {
            row("-", "tenant (Graph + token)", &t.url());
        }
        for e in self.lab.endpoints() {
            row(e.device.as_deref().unwrap_or("-"), &e.kind, &e.address);
        }
        for (id, port, _) in &self.shells {
            row(id, "shell (SSH)", &format!("127.0.0.1:{port}"));
        }
        for (id, t) in &self.tpms {
            row(id, "TPM (swtpm)", &t.tcti());
        }
        out
    }

    /// Stops everything, SSH and TPMs first (they look at the devices), the tenant last.
    pub async fn shutdown(self) {
        for (_, _, shell) in self.shells {
            shell.shutdown().await;
        }
        for (_, tpm) in self.tpms {
            tpm.shutdown();
        }
        self.lab.shutdown().await;
        drop(self.tenant);
    }
}

async fn wait_for_stop() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The shipped inventory's shape, two devices, free ports, a tempdir state dir.
    fn inventory(dir: &std::path::Path) -> (Inventory, [u16; 7]) {
        let p: [u16; 7] = std::array::from_fn(|_| free_port());
        let [control, tenant, redfish, kvm, ssh1, ssh2, tpm] = p;
        let yaml = format!(
            r#"
lab:
  name: up-test
  ledger: state/ledger.sqlite
  reports: reports
  virtual:
    time_scale: 600
    state_dir: state
    control: 127.0.0.1:{control}
    tenant: 127.0.0.1:{tenant}
    tpm_ca: state/tpm-ca
tenants:
  contoso:
    tenant_id: 6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11
    client_id: 0b7e6d3c-5a4f-4f21-8e9a-1c2d3e4f5a6b
    client_secret: {{ file: state/secrets/client-secret }}
    graph_url: http://127.0.0.1:{tenant}
    login_url: http://127.0.0.1:{tenant}
    users:
      default:
        upn: alice@contoso.lab
        password: {{ file: state/secrets/alice-password }}
templates:
  pc:
    tenant: contoso
    manufacturer: Dell Inc.
    model: Latitude 7440
    windows: {{ edition: enterprise, version: 11, build: "22631" }}
    tpm: {{ family: "2.0", manufacturer: NTC }}
    shell:
      ssh:
        host: 127.0.0.1
        user: labadmin
        key_file: state/keys/aplab_ed25519
        known_hosts: state/known_hosts
        host_key_policy: strict
    sim: {{ profile: latitude-7440, domain_reachable: true }}
devices:
  - id: pc01
    extends: pc
    serial: SN01
    power: {{ redfish: {{ url: http://127.0.0.1:{redfish}, system: pc01 }} }}
    console: {{ serial: {{ device: state/devices/pc01/console, baud: 115200 }} }}
    keyboard: {{ ch9329: {{ device: state/devices/pc01/ch9329, baud: 9600 }} }}
    screen: {{ pikvm: {{ url: http://127.0.0.1:{kvm}/pc01, user: admin, password: {{ file: state/secrets/pikvm }} }} }}
    shell: {{ ssh: {{ port: {ssh1} }} }}
    tpm_access: {{ tcti: "swtpm:host=127.0.0.1,port={tpm}" }}
  - id: pc02
    extends: pc
    serial: SN02
    power: {{ pikvm: {{ url: http://127.0.0.1:{kvm}/pc02, user: admin, password: {{ file: state/secrets/pikvm }} }} }}
    screen: {{ pikvm: {{ url: http://127.0.0.1:{kvm}/pc02, user: admin, password: {{ file: state/secrets/pikvm }} }} }}
    shell: {{ ssh: {{ port: {ssh2} }} }}
"#
        );
        let path = dir.join("lab-inventory.yaml");
        std::fs::write(&path, &yaml).unwrap();
        (
            crate::model::load_inventory(&path).unwrap_or_else(|p| panic!("{p}")),
            p,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lab_up_starts_every_endpoint_and_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let (inv, [control, tenant, redfish, kvm, ssh1, _ssh2, tpm]) = inventory(dir.path());
        let running = RunningLab::start(&inv)
            .await
            .unwrap_or_else(|(_, m)| panic!("{m}"));
        let doc = running.describe();
        assert_eq!(doc["devices"], json!(["pc01", "pc02"]));
        assert_eq!(
            doc["tpm"][0]["tcti"],
            format!("swtpm:host=127.0.0.1,port={tpm}")
        );
        assert_eq!(doc["ssh"].as_array().unwrap().len(), 2);
        let text = running.describe_text();
        for needle in [
            format!("http://127.0.0.1:{tenant}"),
            format!("http://127.0.0.1:{redfish}/redfish/v1/Systems/pc01"),
            format!("http://127.0.0.1:{kvm}/pc02"),
            format!("http://127.0.0.1:{control}"),
            format!("127.0.0.1:{ssh1}"),
        ] {
            assert!(text.contains(&needle), "{needle} missing:\n{text}");
        }
        let state = dir.path().join("state");
        assert!(state.join("secrets/client-secret").exists());
        assert!(state.join("devices/pc01/console").exists());
        // Power pc01 on: its SSH port answers once Windows is up.
        let http = reqwest::Client::new();
        let r = http
            .post(format!(
                "http://127.0.0.1:{redfish}/redfish/v1/Systems/pc01/Actions/ComputerSystem.Reset"
            ))
            .json(&json!({"ResetType": "On"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", ssh1))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "SSH never answered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", tpm))
                .await
                .is_ok()
        );
        running.shutdown().await;
        assert!(!state.join("devices/pc01/console").exists());
        // The tenant server stops its task on drop, asynchronously: wait for the ports.
        let start = std::time::Instant::now();
        for (name, port) in [
            ("control", control),
            ("tenant", tenant),
            ("redfish", redfish),
            ("pikvm", kvm),
            ("ssh", ssh1),
            ("swtpm", tpm),
        ] {
            while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(10),
                    "{name} port {port} still held after shutdown"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}
