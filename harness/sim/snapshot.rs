//! What a simulated Windows device shows about itself, as one consistent picture taken at
//! one instant. The SSH endpoint asks the device for a snapshot on every command, so a
//! command's answer never mixes two device states.
//!
//! The device state machine (`sim::device`) implements [`ShellTarget`]; the shell side
//! (`sim::ssh`, `sim::windows`) only reads snapshots and never changes the device.

use crate::sim::clock::LabTime;

/// How the device joined the organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Microsoft Entra joined (cloud only).
    Entra,
    /// Microsoft Entra hybrid joined (Active Directory domain and Entra).
    Hybrid,
}

/// One entry of a Windows event log channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinEvent {
    pub id: u32,
    /// Full channel name, e.g.
    /// `Microsoft-Windows-ModernDeployment-Diagnostics-Provider/Autopilot`.
    pub channel: String,
    pub message: String,
    pub at: LabTime,
}

/// The TPM as Windows reports it (`Get-Tpm`): the facts the inventory expects the device
/// to have, which may differ from the swtpm that stands in for it on the TCTI side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TpmSnapshot {
    pub present: bool,
    pub ready: bool,
    pub enabled: bool,
    pub activated: bool,
    pub owned: bool,
    /// Four-letter (or shorter) vendor id, e.g. `NTC`, `IFX`, `STM`.
    pub manufacturer_id_txt: String,
    /// Firmware version, e.g. `7.2.3.1`.
    pub manufacturer_version: String,
    /// "2.0" or "1.2".
    pub family: String,
    pub locked_out: bool,
}

/// Everything a lab can learn about a Windows device over its shell.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowsSnapshot {
    pub device_id: String,
    pub serial: String,
    pub powered: bool,
    /// Windows is up and its SSH server reachable.
    pub booted: bool,
    /// The device is between shutdown and the next boot of a restart.
    pub rebooting: bool,
    /// `home`, `pro`, `enterprise`, `education`.
    pub edition: String,
    /// 10 or 11.
    pub version: u8,
    pub build: String,
    pub join: Option<JoinKind>,
    pub azure_ad_joined: bool,
    pub domain_joined: bool,
    pub tenant_id: Option<String>,
    /// e.g. `contoso.onmicrosoft.com`, once the Autopilot profile is downloaded.
    pub tenant_domain: Option<String>,
    /// The Entra device object id, when the tenant assigned one.
    pub entra_device_id: Option<String>,
    /// The Autopilot identity id (ZtdId).
    pub ztd_id: Option<String>,
    /// Autopilot deployment profile name, once downloaded.
    pub profile_name: Option<String>,
    /// Where the Enrollment Status Page is, e.g. `device-preparation`, `device-setup`,
    /// `account-setup`, `complete`, `failed` (free text shown in diagnostics).
    pub esp_phase: String,
    /// The last error the device hit, e.g. `0x800705B4` or `NotComputed`.
    pub last_error: Option<String>,
    pub events: Vec<WinEvent>,
    pub technician_completed_at: Option<LabTime>,
    /// The lab time of the snapshot (timestamps of generated logs).
    pub now: LabTime,
    pub wlidsvc_disabled: bool,
    pub tpm: TpmSnapshot,
}

impl WindowsSnapshot {
    /// The computer name Windows gives itself out of the box.
    pub fn computer_name(&self) -> String {
        let tail: String = self
            .serial
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let tail = if tail.is_empty() {
            "LAB".to_string()
        } else {
            tail
        };
        let name = format!("DESKTOP-{tail}");
        // NetBIOS names stop at 15 characters.
        name.chars().take(15).collect()
    }
}

/// A device the shell can look at.
pub trait ShellTarget: Send + Sync {
    fn snapshot(&self) -> WindowsSnapshot;
}
