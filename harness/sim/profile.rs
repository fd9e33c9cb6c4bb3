//! Behaviour profiles: how long each part of OOBE and ESP takes on a given model, in lab
//! time. Figures are in the range lab engineers report for real hardware (a technician
//! flow of 35-55 minutes); they only need to be plausible and to differ per model.

use std::time::Duration;

/// One step of the Enrollment Status Page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspStep {
    SecuringHardware,
    JoiningNetwork,
    RegisteringMdm,
    PreparingMdm,
    SecurityPolicies,
    Certificates,
    NetworkConnections,
    Apps,
    /// Account setup (user flow only).
    AccountPolicies,
    AccountApps,
}

impl EspStep {
    pub fn phase(self) -> &'static str {
        use EspStep::*;
        match self {
            SecuringHardware | JoiningNetwork | RegisteringMdm | PreparingMdm => {
                "DevicePreparation"
            }
            SecurityPolicies | Certificates | NetworkConnections | Apps => "DeviceSetup",
            AccountPolicies | AccountApps => "AccountSetup",
        }
    }

    /// The name printed on the console (`ESP: DevicePreparation: SecuringHardware start`).
    pub fn name(self) -> &'static str {
        use EspStep::*;
        match self {
            SecuringHardware => "SecuringHardware",
            JoiningNetwork => "JoiningNetwork",
            RegisteringMdm => "RegisteringMdm",
            PreparingMdm => "PreparingMdm",
            SecurityPolicies => "SecurityPolicies",
            Certificates => "Certificates",
            NetworkConnections => "NetworkConnections",
            Apps => "Apps",
            AccountPolicies => "AccountPolicies",
            AccountApps => "AccountApps",
        }
    }

    /// The wording on the ESP screen.
    pub fn label(self) -> &'static str {
        use EspStep::*;
        match self {
            SecuringHardware => "Securing your hardware",
            JoiningNetwork => "Joining your organization's network",
            RegisteringMdm => "Registering your device for mobile management",
            PreparingMdm => "Preparing your device for mobile management",
            SecurityPolicies => "Security policies",
            Certificates => "Certificates",
            NetworkConnections => "Network connections",
            Apps => "Apps",
            AccountPolicies => "Security policies (account)",
            AccountApps => "Apps (account)",
        }
    }

    pub const TECHNICIAN: [EspStep; 8] = [
        EspStep::SecuringHardware,
        EspStep::JoiningNetwork,
        EspStep::RegisteringMdm,
        EspStep::PreparingMdm,
        EspStep::SecurityPolicies,
        EspStep::Certificates,
        EspStep::NetworkConnections,
        EspStep::Apps,
    ];
}

/// Durations of one model, lab time.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Firmware + Windows boot to the first OOBE screen.
    pub boot: Duration,
    /// Shutdown before a reboot.
    pub shutdown: Duration,
    /// One TPM attestation attempt.
    pub attestation: Duration,
    /// How many attestation attempts before `0x81039001`.
    pub attestation_attempts: u32,
    /// How long a hanging attestation runs before `0x800705B4`.
    pub attestation_timeout: Duration,
    pub join: Duration,
    pub mdm: Duration,
    pub ime: Duration,
    pub policies: Duration,
    pub certificates: Duration,
    pub network: Duration,
    pub apps: Duration,
    /// ESP gives up after this long (the ESP profile's timeout).
    pub esp_timeout: Duration,
    /// Account setup in the user flow.
    pub account: Duration,
    /// The TPM the model ships with, as `Get-Tpm` shows it: manufacturer id text and
    /// firmware version. A device whose TPM is an swtpm reports the swtpm instead.
    pub tpm_manufacturer: &'static str,
    pub tpm_firmware: &'static str,
}

/// What an swtpm (libtpms) reports about itself: manufacturer `IBM`, firmware
/// 0x20191023.0x00163636 (shown as `8217.4131` by TPM2_GetCapability's two words).
pub const SWTPM_MANUFACTURER: &str = "IBM";
pub const SWTPM_FIRMWARE: &str = "8217.4131";

const fn m(minutes: u64) -> Duration {
    Duration::from_secs(minutes * 60)
}

const fn s(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

impl Profile {
    /// The profile named in the inventory (`sim.profile`), or one derived from the model.
    pub fn named(name: &str) -> Profile {
        let base = Profile {
            name: name.to_string(),
            boot: s(75),
            shutdown: s(20),
            attestation: m(3),
            attestation_attempts: 3,
            attestation_timeout: m(20),
            join: m(2),
            mdm: s(90),
            ime: m(4),
            policies: m(5),
            certificates: m(3),
            network: m(1),
            apps: m(22),
            esp_timeout: m(60),
            account: m(6),
            // Dell Latitude: Nuvoton discrete TPM.
            tpm_manufacturer: "NTC",
            tpm_firmware: "7.2.3.1",
        };
        match name {
            // Windows 10 HP with a discrete Infineon TPM: slower attestation and apps.
            "elitebook-840" => Profile {
                boot: s(95),
                attestation: m(5),
                apps: m(28),
                esp_timeout: m(75),
                tpm_manufacturer: "IFX",
                tpm_firmware: "7.85",
                ..base
            },
            // Fast NVMe, Windows 11 24H2.
            "thinkpad-t14" => Profile {
                boot: s(55),
                attestation: m(2),
                ime: m(3),
                apps: m(17),
                tpm_manufacturer: "STM",
                tpm_firmware: "1.769",
                ..base
            },
            // Consumer laptop with an AMD firmware TPM (the Home edition device).
            "aspire-5" => Profile {
                boot: s(110),
                tpm_manufacturer: "AMD",
                tpm_firmware: "3.87",
                ..base
            },
            _ => base,
        }
    }

    pub fn step(&self, step: EspStep) -> Duration {
        use EspStep::*;
        match step {
            SecuringHardware => self.attestation,
            JoiningNetwork => self.join,
            RegisteringMdm => self.mdm,
            PreparingMdm => self.ime,
            SecurityPolicies => self.policies,
            Certificates => self.certificates,
            NetworkConnections => self.network,
            Apps => self.apps,
            AccountPolicies => self.account / 3,
            AccountApps => self.account - self.account / 3,
        }
    }
}
