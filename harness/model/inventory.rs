//! The validated lab inventory: lab-wide settings, tenants and devices, with device
//! templates (`extends`) already resolved. Produced by the inventory parser; every field
//! here has been checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The whole lab: settings, tenant credential sets and devices.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// The file the inventory was read from (for messages and relative paths).
    pub source: PathBuf,
    pub lab: Lab,
    /// Tenant credential sets by name; devices refer to one by name.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Devices in file order, templates resolved.
    pub devices: Vec<Device>,
}

impl Inventory {
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// Lab-wide settings.
#[derive(Debug, Clone, Serialize)]
pub struct Lab {
    pub name: String,
    /// The run ledger (SQLite file).
    pub ledger: PathBuf,
    /// Where run directories are written.
    pub reports: PathBuf,
    /// Present when the lab is the virtual lab (simulated devices).
    pub virtual_lab: Option<VirtualLab>,
}

/// Settings of the virtual lab.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualLab {
    /// How many times faster than the wall clock the lab runs (1.0 = real time).
    /// Applied to every device duration and every timing rule alike.
    pub time_scale: f64,
    /// Where the lab keeps its state (PTY links, keys, swtpm state, logs).
    pub state_dir: PathBuf,
    /// Test-only control endpoint (age a device, inject a fault), 127.0.0.1 only.
    pub control: Option<Endpoint>,
    /// The Graph-style tenant the virtual lab serves.
    pub tenant: Option<Endpoint>,
    /// Lab CA that signs simulated EK certificates.
    pub tpm_ca_dir: Option<PathBuf>,
}

/// A host and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// A secret given by reference, never inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecretRef {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline stripped).
    File(PathBuf),
}

/// A tenant (Intune / Graph) credential set.
#[derive(Debug, Clone, Serialize)]
pub struct TenantConfig {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
    /// Graph base URL, e.g. `https://graph.microsoft.com`.
    pub graph_url: String,
    /// Login base URL, e.g. `https://login.microsoftonline.com`.
    pub login_url: String,
    /// Named users scenarios can refer to (e.g. `default`), with their sign-in secrets.
    pub users: BTreeMap<String, TenantUser>,
    /// Organization name shown on the configuration screen.
    pub organization: Option<String>,
    /// Autopilot profile name expected on the configuration screen.
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Credential {
    ClientSecret(SecretRef),
    Certificate {
        certificate: PathBuf,
        key: SecretRef,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantUser {
    pub upn: String,
    pub password: Option<SecretRef>,
    /// Active Directory account for hybrid join, e.g. `CORP\\alice`.
    pub ad_account: Option<String>,
    pub ad_password: Option<SecretRef>,
}

/// One device under test.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub windows: Windows,
    /// The TPM the device is expected to have.
    pub tpm: Option<ExpectedTpm>,
    /// Free-form facts: site, rack, segment, domain-reachable, ...
    pub tags: BTreeMap<String, String>,
    pub power: Option<PowerConn>,
    pub console: Option<ConsoleConn>,
    pub keyboard: Option<KeyboardConn>,
    pub screen: Option<ScreenConn>,
    pub shell: Option<ShellConn>,
    pub tpm_access: Option<TpmConn>,
    /// Name of the tenant credential set in [`Inventory::tenants`].
    pub tenant: Option<String>,
    /// Health-check scenario for this device, when it differs from the lab default.
    pub health_scenario: Option<String>,
    /// Behaviour of the simulated device (virtual lab only).
    pub sim: Option<SimDevice>,
}

impl Device {
    /// The value of a fact a selector can name: `id`, `serial`, `manufacturer`, `model`,
    /// `windows.edition`, `windows.version`, `windows.build`, `tpm.family`,
    /// `tpm.manufacturer`, `tpm.firmware`, `tpm.access`, `tags.<name>`, `has.<capability>`.
    pub fn fact(&self, name: &str) -> Option<String> {
        match name {
            "id" => Some(self.id.clone()),
            "serial" => Some(self.serial.clone()),
            "manufacturer" => Some(self.manufacturer.clone()),
            "model" => Some(self.model.clone()),
            "windows.edition" => Some(self.windows.edition.as_str().to_string()),
            "windows.version" => Some(self.windows.version.to_string()),
            "windows.build" => self.windows.build.clone(),
            "tpm.family" => self.tpm.as_ref().map(|t| t.family.clone()),
            "tpm.manufacturer" => self.tpm.as_ref().map(|t| t.manufacturer.clone()),
            "tpm.firmware" => self.tpm.as_ref().and_then(|t| t.firmware.clone()),
            // How the harness reaches the TPM: `tcti` (EK and attestation checks) or `shell`.
            "tpm.access" => self.tpm_access.as_ref().map(|t| match t {
                TpmConn::Tcti(_) => "tcti".to_string(),
                TpmConn::Shell => "shell".to_string(),
            }),
            "tenant" => self.tenant.clone(),
            other => {
                if let Some(tag) = other.strip_prefix("tags.") {
                    self.tags.get(tag).cloned()
                } else if let Some(cap) = other.strip_prefix("has.") {
                    Capability::from_name(cap).map(|c| self.has(c).to_string())
                } else {
                    None
                }
            }
        }
    }

    pub fn has(&self, cap: Capability) -> bool {
        match cap {
            Capability::Power => self.power.is_some(),
            Capability::Console => self.console.is_some(),
            Capability::Keyboard => self.keyboard.is_some(),
            Capability::Screen => self.screen.is_some(),
            Capability::Shell => self.shell.is_some(),
            Capability::Tpm => self.tpm_access.is_some(),
            Capability::Tenant => self.tenant.is_some(),
        }
    }
}

/// What a device can be driven through; a step needs one or more of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Power,
    Console,
    Keyboard,
    Screen,
    Shell,
    Tpm,
    Tenant,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Power,
        Capability::Console,
        Capability::Keyboard,
        Capability::Screen,
        Capability::Shell,
        Capability::Tpm,
        Capability::Tenant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Console => "console",
            Capability::Keyboard => "keyboard",
            Capability::Screen => "screen",
            Capability::Shell => "shell",
            Capability::Tpm => "tpm",
            Capability::Tenant => "tenant",
        }
    }

    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Windows {
    pub edition: Edition,
    /// 10 or 11: decides the wording of the pre-provisioning screens.
    pub version: u8,
    pub build: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    Home,
    Pro,
    Enterprise,
    Education,
}

impl Edition {
    pub const ALL: [Edition; 4] = [
        Edition::Home,
        Edition::Pro,
        Edition::Enterprise,
        Edition::Education,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Edition::Home => "home",
            Edition::Pro => "pro",
            Edition::Enterprise => "enterprise",
            Edition::Education => "education",
        }
    }

    pub fn from_name(name: &str) -> Option<Edition> {
        Edition::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// TPM facts the device is expected to show.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectedTpm {
    /// "2.0" (or "1.2" for a device that should be refused).
    pub family: String,
    /// Four-letter manufacturer id as the TPM reports it, e.g. `IFX`, `NTC`, `STM`, `IBM`.
    pub manufacturer: String,
    pub firmware: Option<String>,
    /// CA bundle the EK certificate must chain to.
    pub ek_ca_bundle: Option<PathBuf>,
}

/// Credentials and address of a PiKVM (or compatible) IP-KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PikvmConn {
    /// Base URL, e.g. `https://kvm-07.lab` or `http://127.0.0.1:18100/pc01`.
    pub url: String,
    pub user: String,
    pub password: SecretRef,
    /// Verify the KVM's TLS certificate (PiKVMs ship self-signed ones).
    pub verify_tls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum PowerConn {
    Redfish {
        /// Base URL of the BMC, e.g. `https://bmc-07.lab`.
        url: String,
        /// System id under `/redfish/v1/Systems/`.
        system: String,
        user: Option<String>,
        password: Option<SecretRef>,
        verify_tls: bool,
    },
    Pdudaemon {
        /// pdudaemon's HTTP listener, e.g. `http://127.0.0.1:16421`.
        url: String,
        /// PDU hostname as configured in pdudaemon.
        pdu: String,
        /// Outlet number.
        port: u32,
    },
    Pikvm(PikvmConn),
    /// Shell commands run on the lab host, as LAVA does it.
    Command {
        on: String,
        off: String,
        cycle: Option<String>,
        /// Prints `on` or `off`; without it, state cannot be read back.
        state: Option<String>,
    },
}

impl PowerConn {
    /// Name of the controller for per-controller request limits (a PDU or KVM serves
    /// one request at a time).
    pub fn controller(&self) -> String {
        match self {
            PowerConn::Redfish { url, .. } => format!("redfish:{url}"),
            PowerConn::Pdudaemon { url, pdu, .. } => format!("pdudaemon:{url}/{pdu}"),
            PowerConn::Pikvm(k) => format!("pikvm:{}", k.url),
            PowerConn::Command { .. } => "command".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum ConsoleConn {
    /// Local serial device (USB adapter or PTY).
    Serial { device: PathBuf, baud: u32 },
    /// Raw TCP (e.g. ser2net `tcp` accepter).
    Tcp { host: String, port: u16 },
    /// Telnet with RFC 2217 (e.g. ser2net `telnet(rfc2217)`).
    Rfc2217 { host: String, port: u16, baud: u32 },
}

#[derive(Debug, Clone, Serialize)]
pub enum KeyboardConn {
    /// CH9329 serial-to-USB-HID chip.
    Ch9329 {
        device: PathBuf,
        baud: u32,
        address: u8,
    },
    Pikvm(PikvmConn),
}

#[derive(Debug, Clone, Serialize)]
pub enum ScreenConn {
    Pikvm(PikvmConn),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The host key must already be in known_hosts (the default).
    Strict,
    /// Accept and record an unknown key; a changed key is still refused.
    TrustOnFirstUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShellConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_file: PathBuf,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    /// The remote shell's quoting rules (Windows lab images run PowerShell).
    pub flavor: ShellFlavor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShellFlavor {
    Powershell,
    Posix,
}

#[derive(Debug, Clone, Serialize)]
pub enum TpmConn {
    /// A TCTI string for tss-esapi, e.g. `swtpm:host=127.0.0.1,port=2321`.
    Tcti(String),
    /// Read TPM facts through the shell (`Get-Tpm`) on a Windows device.
    Shell,
}

/// How a simulated device behaves (virtual lab only). Faults come from here and act on
/// the device's state; the harness never sees this block.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimDevice {
    /// Behaviour profile (durations of ESP phases etc.), by model name.
    pub profile: Option<String>,
    /// Domain controller reachable from this device (hybrid join needs it).
    pub domain_reachable: bool,
    /// The tenant's ESP profile targeted to this device is disabled.
    pub esp_disabled: bool,
    /// The Autopilot profile allows pre-provisioning (false -> 0x80180005).
    pub allow_preprovisioning: bool,
    /// The device is registered in the tenant (hardware hash imported).
    pub registered: bool,
    /// wlidsvc gets disabled during the technician flow.
    pub wlidsvc_disabled: bool,
    pub faults: Vec<Fault>,
}

/// A fault injected on a simulated device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Fault {
    /// TPM attestation never completes (0x800705B4).
    AttestationTimeout,
    /// TPM attestation fails this many times, then succeeds (0x81039001 when retries run out).
    AttestationIntermittent { failures: u32 },
    /// ESP phases take this many times longer.
    SlowEsp { factor: f64 },
    /// The serial link drops `after` boot for `down` (lab time).
    SerialDrop { after: Duration, down: Duration },
    /// SSH refuses connections while the device reboots.
    SshRefusedDuringReboot,
    /// The power controller fails this many requests (HTTP 500), then works.
    PowerControllerFails { requests: u32 },
    /// The device clock is off by this much (ESP times out).
    ClockSkew { skew: Duration },
    /// The tenant answers 429 with Retry-After this many times.
    GraphThrottle { requests: u32 },
}
