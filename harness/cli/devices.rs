//! `aplab devices`: every device of the inventory with how it is reached, its health,
//! who holds it and when it was last resealed.

use std::path::PathBuf;

use serde::Serialize;

use crate::model::inventory::{Capability, ConsoleConn, Device, KeyboardConn, PowerConn, TpmConn};
use crate::store::{Ledger, now_millis};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lab inventory.
    #[arg(long, short)]
    pub inventory: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub model: String,
    pub windows: String,
    pub tpm: String,
    /// capability -> backend, e.g. `power: redfish`.
    pub connections: Vec<(String, String)>,
    pub health: String,
    pub lease: Option<String>,
    pub last_resealed: Option<String>,
}

pub fn run(args: Args) -> u8 {
    let inventory = match super::inputs::inventory(&super::inputs::inventory_arg(&args.inventory)) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let ledger = match super::inputs::ledger(&inventory) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let rows = match rows(&inventory.devices, ledger.as_ref()) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {e}");
            return super::exit::INFRASTRUCTURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return super::exit::PASSED;
    }
    println!(
        "{:<10} {:<22} {:<16} {:<14} {:<8} {:<28} CONNECTIONS",
        "DEVICE", "MODEL", "WINDOWS", "TPM", "HEALTH", "LEASE"
    );
    for r in &rows {
        let conns: Vec<String> = r
            .connections
            .iter()
            .map(|(c, b)| format!("{c}:{b}"))
            .collect();
        println!(
            "{:<10} {:<22} {:<16} {:<14} {:<8} {:<28} {}",
            r.id,
            r.model,
            r.windows,
            r.tpm,
            r.health,
            r.lease.as_deref().unwrap_or("-"),
            conns.join(" ")
        );
    }
    super::exit::PASSED
}

pub fn rows(
    devices: &[Device],
    ledger: &dyn Ledger,
) -> Result<Vec<DeviceRow>, crate::store::LedgerError> {
    let leases = ledger.leases(now_millis())?;
    devices
        .iter()
        .map(|d| {
            let health = ledger
                .health(&d.id)?
                .map_or("unknown".to_string(), |h| h.health.as_str().to_string());
            let lease = leases
                .iter()
                .find(|l| l.device_id == d.id)
                .map(|l| format!("{} ({})", l.case_id, l.owner));
            let last_resealed = ledger
                .last_lifecycle(&d.id, crate::fleet::runner::RESEALED)?
                .map(|e| format!("{} by run {}", timestamp(e.at), e.run_id));
            Ok(DeviceRow {
                id: d.id.clone(),
                model: d.model.clone(),
                windows: format!("{} {}", d.windows.version, d.windows.edition.as_str()),
                tpm: d
                    .tpm
                    .as_ref()
                    .map_or("-".into(), |t| format!("{} {}", t.family, t.manufacturer)),
                connections: connections(d),
                health,
                lease,
                last_resealed,
            })
        })
        .collect()
}

/// Which backend serves each capability of a device.
pub fn connections(d: &Device) -> Vec<(String, String)> {
    Capability::ALL
        .into_iter()
        .filter(|c| d.has(*c))
        .map(|c| {
            let backend = match c {
                Capability::Power => match d.power.as_ref() {
                    Some(PowerConn::Redfish { .. }) => "redfish",
                    Some(PowerConn::Pdudaemon { .. }) => "pdudaemon",
                    Some(PowerConn::Pikvm(_)) => "pikvm",
                    Some(PowerConn::Command { .. }) | None => "command",
                },
                Capability::Console => match d.console.as_ref() {
                    Some(ConsoleConn::Serial { .. }) => "serial",
                    Some(ConsoleConn::Tcp { .. }) => "tcp",
                    Some(ConsoleConn::Rfc2217 { .. }) | None => "rfc2217",
                },
                Capability::Keyboard => match d.keyboard.as_ref() {
                    Some(KeyboardConn::Ch9329 { .. }) => "ch9329",
                    Some(KeyboardConn::Pikvm(_)) | None => "pikvm",
                },
                Capability::Screen => "pikvm",
                Capability::Shell => "ssh",
                Capability::Tpm => match d.tpm_access.as_ref() {
                    Some(TpmConn::Tcti(_)) => "tcti",
                    Some(TpmConn::Shell) | None => "shell",
                },
                Capability::Tenant => "graph",
            };
            (c.name().to_string(), backend.to_string())
        })
        .collect()
}

pub fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| ms.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}
