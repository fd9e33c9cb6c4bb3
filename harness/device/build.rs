//! From an inventory entry to a [`DeviceHandle`]: one backend per capability, secrets
//! resolved at the last moment, and power requests to a shared controller (a PDU, a KVM
//! switch) sent one at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{DeviceError, DeviceHandle, DeviceResult, Power, ReadBack};
use crate::model::inventory::{
    Device, Inventory, KeyboardConn, PowerConn, ScreenConn, SecretRef, TpmConn,
};

/// One lock per power controller, shared by every device behind it.
#[derive(Default, Clone)]
pub struct ControllerLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ControllerLocks {
    fn lock_for(&self, controller: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(controller.to_string()).or_default().clone()
    }
}

/// A power controller that serves one request at a time across all its outlets.
struct OneAtATime {
    inner: Box<dyn Power>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[async_trait]
impl Power for OneAtATime {
    async fn on(&self) -> DeviceResult<ReadBack> {
        let _turn = self.lock.lock().await;
        self.inner.on().await
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        let _turn = self.lock.lock().await;
        self.inner.off().await
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        let _turn = self.lock.lock().await;
        self.inner.cycle().await
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        let _turn = self.lock.lock().await;
        self.inner.state().await
    }
}

/// Where a device's run output goes.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The case's directory: console log and artifacts land under it.
    pub case_dir: PathBuf,
}

impl Wiring {
    pub fn console_log(&self) -> PathBuf {
        self.case_dir.join("console.log")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.case_dir.join("artifacts")
    }
}

/// Reads a secret the inventory refers to. Its error names the reference, never a value.
pub fn secret(secret: &SecretRef) -> DeviceResult<String> {
    secret
        .resolve(Path::new(""))
        .map_err(|e| DeviceError::config(e).with_hint("check the inventory's secret references"))
}

fn password(secret_ref: Option<&SecretRef>) -> DeviceResult<Option<String>> {
    secret_ref.map(secret).transpose()
}

/// Builds the backends of `device`. Must run inside a tokio runtime (the console reader
/// is a task).
pub fn build(
    device: &Device,
    inventory: &Inventory,
    wiring: &Wiring,
    locks: &ControllerLocks,
) -> DeviceResult<DeviceHandle> {
    let mut handle = DeviceHandle {
        id: device.id.clone(),
        artifacts: wiring.artifacts(),
        ..Default::default()
    };
    if let Some(conn) = &device.power {
        let pw = match conn {
            PowerConn::Redfish { password: p, .. } => password(p.as_ref())?,
            PowerConn::Pikvm(kvm) => Some(secret(&kvm.password)?),
            PowerConn::Pdudaemon { .. } | PowerConn::Command { .. } => None,
        };
        let inner = super::power::from_inventory(conn, pw)?;
        handle.power = Some(Box::new(OneAtATime {
            inner,
            lock: locks.lock_for(&conn.controller()),
        }));
    }
    if let Some(conn) = &device.console {
        handle.console = Some(super::console::from_inventory(conn, wiring.console_log())?);
    }
    if let Some(conn) = &device.keyboard {
        let pw = match conn {
            KeyboardConn::Pikvm(kvm) => Some(secret(&kvm.password)?),
            KeyboardConn::Ch9329 { .. } => None,
        };
        handle.keyboard = Some(super::keyboard::from_inventory(conn, pw)?);
    }
    if let Some(conn) = &device.screen {
        let ScreenConn::Pikvm(kvm) = conn;
        handle.screen = Some(super::screen::from_inventory(
            conn,
            Some(secret(&kvm.password)?),
        )?);
    }
    let shell: Option<Arc<super::shell::ssh::SshShell>> = device
        .shell
        .as_ref()
        .map(|conn| Arc::new(super::shell::ssh::SshShell::new(conn.clone())));
    if let Some(shell) = &shell {
        handle.shell = Some(Box::new(shell.clone()));
    }
    match &device.tpm_access {
        Some(TpmConn::Tcti(tcti)) => {
            handle.tpm = Some(Box::new(super::tpm::tss::TctiTpm::new(tcti.clone())))
        }
        Some(TpmConn::Shell) => {
            let Some(shell) = &shell else {
                return Err(DeviceError::config(format!(
                    "device {} reads its TPM through the shell but has no shell connection",
                    device.id
                ))
                .with_hint("add a `shell:` block or give `tpm_access: {tcti: ...}`"));
            };
            handle.tpm = Some(Box::new(super::tpm::shell::ShellTpm::new(shell.clone())));
        }
        None => {}
    }
    if let Some(name) = &device.tenant {
        let Some(config) = inventory.tenants.get(name) else {
            return Err(DeviceError::config(format!(
                "device {} names tenant `{name}`, which the inventory lacks",
                device.id
            )));
        };
        handle.tenant = Some(Box::new(super::tenant::graph::GraphTenant::new(config)?));
    }
    Ok(handle)
}
