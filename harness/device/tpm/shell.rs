//! The `Tpm` capability through the device's own shell: `Get-Tpm` on Windows.
//!
//! Used when the lab has no TCTI path to the TPM (a physical Windows device). Get-Tpm
//! reports presence, readiness, manufacturer and firmware; it cannot hand out the EK
//! certificate chain or a quote the lab could verify, so those need TCTI access.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::device::{DeviceError, DeviceResult, EkCertificate, Shell, Tpm, TpmFacts};

/// A TPM read through `Get-Tpm` over a device's shell (PowerShell flavour).
pub struct ShellTpm {
    shell: Arc<dyn Shell>,
    timeout: Duration,
}

impl ShellTpm {
    pub fn new(shell: Arc<dyn Shell>) -> Self {
        ShellTpm {
            shell,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

fn needs_tcti(what: &str) -> DeviceError {
    DeviceError::config(format!(
        "{what} needs direct TPM access through a TCTI; Get-Tpm over the shell cannot provide it"
    ))
    .with_hint(
        "give the device `tpm_access: tcti` in the inventory, or drop this check from the scenario",
    )
}

#[async_trait]
impl Tpm for ShellTpm {
    async fn facts(&self) -> DeviceResult<TpmFacts> {
        let out = self.shell.run("Get-Tpm", &[], self.timeout).await?;
        if out.status != 0 {
            return Err(DeviceError::config(format!(
                "Get-Tpm failed on the device (exit status {}): {}",
                out.status,
                out.stderr.trim()
            ))
            .with_hint(
                "Get-Tpm needs an administrator account; check the shell user in the inventory",
            ));
        }
        facts_from_get_tpm(&out.stdout)
    }

    async fn ek_certificate(&self, _ca_bundle: Option<&Path>) -> DeviceResult<EkCertificate> {
        Err(needs_tcti("checking the EK certificate chain"))
    }

    async fn attest(&self) -> DeviceResult<()> {
        Err(needs_tcti("verifying a TPM quote"))
    }
}

/// Parses `Get-Tpm`'s list output (`Name : Value` lines; a long value continues on
/// indented lines) into its fields.
pub fn parse_get_tpm(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        let continues = line.starts_with(' ') || line.starts_with('\t');
        match line.split_once(':') {
            Some((name, value)) if !continues && !name.trim().is_empty() => {
                let name = name.trim().to_string();
                fields.insert(name.clone(), value.trim().to_string());
                last = Some(name);
            }
            _ if continues && !line.trim().is_empty() => {
                if let Some(value) = last.as_ref().and_then(|n| fields.get_mut(n)) {
                    value.push_str(line.trim());
                }
            }
            _ => last = None,
        }
    }
    fields
}

/// The facts in `Get-Tpm` output.
///
/// - manufacturer: `ManufacturerIdTxt`, else the four characters packed in `ManufacturerId`;
/// - firmware: the first two parts of `ManufacturerVersion` (`7.85.4555.0` -> `7.85`),
///   the same major.minor the TCTI backend reads from FIRMWARE_VERSION_1;
/// - family: `2.0` when `ManufacturerVersionFull20` holds a version (Windows shows
///   "Not Supported" there for a TPM 1.2), else `1.2`;
/// - vendor: not shown by Get-Tpm, left empty.
pub fn facts_from_get_tpm(text: &str) -> DeviceResult<TpmFacts> {
    let fields = parse_get_tpm(text);
    let present = fields.get("TpmPresent").ok_or_else(|| {
        DeviceError::config(
            "Get-Tpm output has no TpmPresent field; is the device's shell PowerShell on Windows?",
        )
        .with_hint("check the shell flavour of the device in the inventory")
    })?;
    if !present.eq_ignore_ascii_case("true") {
        return Err(DeviceError::product(
            "the device reports no TPM (Get-Tpm: TpmPresent is False)",
        )
        .with_hint("check that the TPM is enabled in the firmware settings"));
    }
    if fields
        .get("TpmReady")
        .is_some_and(|ready| !ready.eq_ignore_ascii_case("true"))
    {
        tracing::warn!("Get-Tpm reports the TPM is not ready; attestation will fail until it is");
    }
    let manufacturer = match fields.get("ManufacturerIdTxt").filter(|t| !t.is_empty()) {
        Some(text) => text.trim().to_string(),
        None => fields
            .get("ManufacturerId")
            .and_then(|id| id.parse::<u32>().ok())
            .map(|id| {
                id.to_be_bytes()
                    .iter()
                    .filter(|b| b.is_ascii_graphic())
                    .map(|b| char::from(*b))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let firmware = fields
        .get("ManufacturerVersion")
        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."))
        .unwrap_or_default();
    let family = match fields.get("ManufacturerVersionFull20") {
        Some(v) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) => "2.0",
        _ => "1.2",
    };
    Ok(TpmFacts {
        family: family.to_string(),
        manufacturer,
        firmware,
        vendor: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scenario::FailureClass;

    /// Get-Tpm on a Windows 11 laptop with an Infineon TPM (blank lines as PowerShell
    /// prints them around the list).
    const INFINEON: &str = "\r\n\r\nTpmPresent                : True\r\nTpmReady                  : True\r\nTpmEnabled                : True\r\nTpmActivated              : True\r\nTpmOwned                  : True\r\nRestartPending            : False\r\nManufacturerId            : 1229346816\r\nManufacturerIdTxt         : IFX\r\nManufacturerVersion       : 7.85.4555.0\r\nManufacturerVersionFull20 : 7.85.4555.0\r\n\r\nManagedAuthLevel          : Full\r\nOwnerAuth                 :\r\nOwnerClearDisabled        : False\r\nAutoProvisioning          : Enabled\r\nLockedOut                 : False\r\nLockoutHealTime           : 2 hours\r\nLockoutCount              : 0\r\nLockoutMax                : 31\r\nSelfTest                  : {}\r\n\r\n\r\n";

    #[test]
    fn parses_a_real_get_tpm_listing() {
        let fields = parse_get_tpm(INFINEON);
        assert_eq!(fields["TpmReady"], "True");
        assert_eq!(fields["ManufacturerIdTxt"], "IFX");
        assert_eq!(fields["OwnerAuth"], "");
        assert_eq!(fields["LockoutHealTime"], "2 hours");
        assert_eq!(fields.len(), 19);
        let facts = facts_from_get_tpm(INFINEON).unwrap();
        assert_eq!(
            facts,
            TpmFacts {
                family: "2.0".into(),
                manufacturer: "IFX".into(),
                firmware: "7.85".into(),
                vendor: String::new(),
            }
        );
    }

    #[test]
    fn manufacturer_falls_back_to_the_numeric_id() {
        let text = INFINEON.replace("ManufacturerIdTxt         : IFX\r\n", "");
        assert_eq!(facts_from_get_tpm(&text).unwrap().manufacturer, "IFX");
    }

    #[test]
    fn a_tpm_12_is_reported_as_family_12() {
        let text = INFINEON.replace(
            "ManufacturerVersionFull20 : 7.85.4555.0",
            "ManufacturerVersionFull20 : Not Supported",
        );
        assert_eq!(facts_from_get_tpm(&text).unwrap().family, "1.2");
    }

    #[test]
    fn continuation_lines_join_the_value() {
        let fields = parse_get_tpm("TpmPresent : True\nSelfTest   : {1, 2,\n              3}\n");
        assert_eq!(fields["SelfTest"], "{1, 2,3}");
    }

    #[test]
    fn no_tpm_is_a_product_failure() {
        let err = facts_from_get_tpm("TpmPresent : False\nTpmReady : False\n").unwrap_err();
        assert_eq!(err.class, FailureClass::Product);
    }

    #[test]
    fn output_that_is_not_get_tpm_is_a_config_error() {
        let err = facts_from_get_tpm("bash: Get-Tpm: command not found\n").unwrap_err();
        assert_eq!(err.class, FailureClass::Config);
        let err = facts_from_get_tpm("").unwrap_err();
        assert_eq!(err.class, FailureClass::Config);
    }
}
