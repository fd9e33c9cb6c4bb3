//! The seams between a simulated device and the rest of the virtual lab: what the device
//! asks the tenant (`TenantView`), and what the device shows about itself to the SSH
//! server and swtpm (`WindowsSnapshot`). The tenant (sim/tenant.rs) implements
//! `TenantView`; the SSH server (sim/windows.rs) answers `dsregcmd /status`, `Get-Tpm` and
//! friends from a `WindowsSnapshot`.

use serde::Serialize;

use super::clock::LabTime;

/// How the device joins, decided by the tenant (from the Autopilot profile / group tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JoinKind {
    /// Microsoft Entra join.
    Entra,
    /// Microsoft Entra hybrid join (on-premises Active Directory + Entra registration).
    Hybrid,
}

/// What the tenant hands a device that starts (or looks up) its enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrollment {
    /// The Autopilot identity id (the ZtdId), carried in the configuration screen's QR.
    pub ztd_id: String,
    pub profile_name: String,
    pub organization: String,
    pub assigned_user: Option<String>,
    pub join: JoinKind,
    /// An ESP profile is targeted to the device and enabled.
    pub esp_enabled: bool,
}

/// Why the tenant refused an enrollment, as the device shows it (`0x80180014`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollError {
    pub code: String,
    pub message: String,
}

/// The tenant as a device sees it. Every call is what the real device would do over the
/// network during OOBE; the tenant keeps the records (enrollment state, timestamps,
/// compliance) that Graph later shows the harness.
pub trait TenantView: Send {
    /// "Provision" pressed (technician flow) or MDM enrollment in the user flow: the
    /// device enrolls. Refused with the code the device shows on its red screen.
    fn begin_enrollment(&mut self, serial: &str, now: LabTime) -> Result<Enrollment, EnrollError>;
    /// What the configuration screen shows; "Refresh" reads it again.
    fn profile_for(&self, serial: &str) -> Option<Enrollment>;
    /// The technician flow reached its success screen.
    fn technician_completed(&mut self, serial: &str, now: LabTime);
    /// The end user started the user flow (compliance resets here).
    fn user_flow_started(&mut self, serial: &str, now: LabTime);
    /// The end user reached the desktop.
    fn user_flow_completed(&mut self, serial: &str, now: LabTime);
}

/// One Windows event log record: (event id, channel, message, when).
pub type EventRecord = (u32, String, String, LabTime);

/// Everything the device's Windows would report about itself, at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct WindowsSnapshot {
    pub device_id: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub powered: bool,
    /// Windows is up and its SSH server would answer.
    pub booted: bool,
    /// The device is between a shutdown and the next boot (SSH refuses or times out).
    pub rebooting: bool,
    /// The `SshRefusedDuringReboot` fault is active: refuse (rather than time out)
    /// connections while `rebooting`.
    pub ssh_refused_during_reboot: bool,
    /// `home`, `pro`, `enterprise`, `education`.
    pub edition: String,
    /// 10 or 11.
    pub version: u8,
    pub build: Option<String>,
    pub join: Option<JoinKind>,
    pub azure_ad_joined: bool,
    pub domain_joined: bool,
    pub tenant_id: Option<String>,
    pub ztd_id: Option<String>,
    pub profile_name: Option<String>,
    pub organization: Option<String>,
    /// Which screen OOBE shows (`region`, `configuration`, `esp`, `success`, ...).
    pub screen: String,
    /// ESP phase and step, e.g. `DevicePreparation/SecuringHardware`, `done`, `none`.
    pub esp_phase: String,
    pub last_error: Option<String>,
    pub events: Vec<EventRecord>,
    pub technician_completed_at: Option<LabTime>,
    pub user_flow_completed_at: Option<LabTime>,
    pub wlidsvc_disabled: bool,
    /// Signed-in user on the desktop, if any.
    pub signed_in_user: Option<String>,
    /// Device-targeted apps still installing (ESP disabled lets Reseal come early).
    pub apps_pending: bool,
    /// The tenant's domain (from its users' UPNs), once the device is enrolled.
    pub tenant_domain: Option<String>,
    /// Lab time of the snapshot.
    pub now: LabTime,
}
