//! The tenant side of a device: its Autopilot identity, deployment profile, Intune record
//! and compliance, reached through Microsoft Graph.
//!
//! - `call.rs`: each Graph call as data (method, URL, body, permission needed).
//! - `graph.rs`: the [`Tenant`](crate::device::Tenant) backend over Graph (HTTP).
//! - `token.rs`: OAuth2 client-credentials tokens, cached and refreshed.
//! - `preflight.rs`: checks a set of devices against the tenant before any is powered.
//! - `dryrun.rs`: prints the Graph calls a run would make, secrets redacted, sending none.
//!
//! This file holds what every backend shares: the serial checks, the waits that poll the
//! tenant until it settles, and matching the configuration screen's QR code.

pub mod call;
pub mod dryrun;
pub mod graph;
pub mod preflight;
pub mod token;

use std::time::Duration;

use crate::device::{AutopilotIdentity, DeviceError, DeviceResult, Tenant};
use crate::model::inventory::TenantConfig;

pub use dryrun::DryRunTenant;
pub use graph::{GraphTenant, RetryPolicy};

/// The tenant backend for a credential set: Graph, or the dry-run that only prints.
pub fn connect(config: &TenantConfig, dry_run: bool) -> DeviceResult<Box<dyn Tenant>> {
    if dry_run {
        Ok(Box::new(DryRunTenant::to_stdout(config)))
    } else {
        Ok(Box::new(GraphTenant::new(config)?))
    }
}

/// Firmware placeholders OEMs leave in the SMBIOS serial field. A lookup by such a
/// "serial" would match unrelated devices (`contains` filter), so it is refused.
const PLACEHOLDER_SERIALS: &[&str] = &[
    "default string",
    "to be filled by o.e.m.",
    "to be filled by oem",
    "system serial number",
    "not specified",
    "not applicable",
    "none",
    "n/a",
    "0",
    "00000000",
    "0123456789",
    "123456789",
    "chassis serial number",
    "invalid",
];

/// Refuses empty and placeholder serial numbers with a `Config` error.
pub fn check_serial(serial: &str) -> DeviceResult<()> {
    let trimmed = serial.trim();
    if trimmed.is_empty() {
        return Err(DeviceError::config("the device has no serial number")
            .with_hint("set `serial` for this device in the inventory"));
    }
    let lower = trimmed.to_ascii_lowercase();
    let all_zero = lower.chars().all(|c| c == '0');
    if all_zero || PLACEHOLDER_SERIALS.contains(&lower.as_str()) {
        return Err(DeviceError::config(format!(
            "serial number \"{trimmed}\" is a firmware placeholder, not a real serial"
        ))
        .with_hint(
            "the OEM left the SMBIOS serial unset; Autopilot cannot tell this device apart. \
             Have the serial programmed (OEM tool) and re-import the hardware hash",
        ));
    }
    Ok(())
}

/// The Autopilot deployment profile assigned to a device (the part a harness checks).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeploymentProfile {
    pub id: String,
    pub display_name: String,
    /// `entra` or `hybrid` (from the profile's `@odata.type`), else the type as given.
    pub join: String,
    /// `enableWhiteGlove`: without it the technician flow ends red with 0x80180005.
    pub allows_preprovisioning: bool,
}

impl DeploymentProfile {
    /// Reads a beta `windowsAutopilotDeploymentProfile`.
    pub fn from_graph(value: &serde_json::Value) -> Option<Self> {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or("");
        let odata_type = text("@odata.type");
        let join = if odata_type.contains("activeDirectoryWindowsAutopilot") {
            "hybrid".to_string()
        } else if odata_type.contains("azureADWindowsAutopilot") {
            "entra".to_string()
        } else {
            odata_type
                .trim_start_matches("#microsoft.graph.")
                .to_string()
        };
        Some(DeploymentProfile {
            id: value.get("id")?.as_str()?.to_string(),
            display_name: text("displayName").to_string(),
            join,
            allows_preprovisioning: value
                .get("enableWhiteGlove")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        })
    }
}

/// How to clear the re-enrollment block a pre-provisioned device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unblock {
    /// Delete the Intune record (`DELETE managedDevices/{id}`).
    DeleteRecord,
    /// Keep the record, allow one more enrollment (beta `allowNextEnrollment`).
    AllowNextEnrollment,
}

/// Makes the device ready for another technician flow (else 0x80180014). Returns the
/// identity as read before the reset.
pub async fn unblock_reenrollment(
    tenant: &dyn Tenant,
    serial: &str,
    how: Unblock,
) -> DeviceResult<AutopilotIdentity> {
    let identity = tenant.identity(serial).await?;
    match how {
        Unblock::DeleteRecord => {
            tenant
                .delete_managed_device(&identity.managed_device_id)
                .await?
        }
        Unblock::AllowNextEnrollment => tenant.allow_next_enrollment(&identity.id).await?,
    }
    Ok(identity)
}

/// Deployment profile assignment states in which the device gets its profile at OOBE.
/// (`assignedUnkownSyncState` is Graph's own spelling.)
pub const ASSIGNED_STATES: &[&str] = &[
    "assignedInSync",
    "assignedOutOfSync",
    "assignedUnkownSyncState",
];

/// How often and how long to poll the tenant while waiting for it to settle.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub interval: Duration,
    pub deadline: Duration,
}

impl Poll {
    pub fn new(interval: Duration, deadline: Duration) -> Self {
        Poll { interval, deadline }
    }
}

/// Waits until the device's deployment profile is assigned (profile assignment can take
/// minutes after an import or a group tag change). Returns the identity as last read.
pub async fn wait_profile_assigned(
    tenant: &dyn Tenant,
    serial: &str,
    poll: Poll,
) -> DeviceResult<AutopilotIdentity> {
    let started = tokio::time::Instant::now();
    loop {
        let identity = tenant.identity(serial).await?;
        let status = identity.deployment_profile_assignment_status.as_str();
        if ASSIGNED_STATES.contains(&status) {
            return Ok(identity);
        }
        if started.elapsed() >= poll.deadline {
            let error = if status == "notAssigned" || status == "failed" {
                DeviceError::config(format!(
                    "no Autopilot deployment profile is assigned to {serial} (status {status})"
                ))
                .with_hint(
                    "check the device's group tag and that a profile targets its group \
                     (Intune > Devices > Windows > Enrollment > Deployment profiles)",
                )
            } else {
                DeviceError::timeout(format!(
                    "profile assignment for {serial} still \"{status}\" after {}",
                    humantime::format_duration(poll.deadline)
                ))
                .with_hint("Intune can take a while after an import or a group tag change; allow a longer deadline")
            };
            return Err(error.with_code(status.to_string()));
        }
        tokio::time::sleep(poll.interval).await;
    }
}

/// Polls `complianceState` until it equals `expected` on `stable_reads` consecutive reads,
/// or the deadline passes. Compliance resets when the user flow starts and is
/// re-evaluated some minutes later, so a single read proves little.
pub async fn settle_compliance(
    tenant: &dyn Tenant,
    managed_device_id: &str,
    expected: &str,
    stable_reads: u32,
    poll: Poll,
) -> DeviceResult<String> {
    let started = tokio::time::Instant::now();
    let needed = stable_reads.max(1);
    let mut streak = 0;
    loop {
        let last = tenant.compliance(managed_device_id).await?;
        streak = if last == expected { streak + 1 } else { 0 };
        if streak >= needed {
            return Ok(last);
        }
        if started.elapsed() >= poll.deadline {
            return Err(DeviceError::timeout(format!(
                "compliance of managed device {managed_device_id} is \"{last}\", expected \
                 \"{expected}\" after {}",
                humantime::format_duration(poll.deadline)
            ))
            .with_hint(
                "compliance is re-evaluated some time after the user flow; check the \
                 compliance policies assigned to the device and allow a longer deadline",
            )
            .with_code(last));
        }
        tokio::time::sleep(poll.interval).await;
    }
}

/// The ZtdId carried by the QR code on the configuration screen (a JSON object; the key
/// is matched without regard to case).
pub fn qr_ztd_id(payload: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(payload.trim()).ok()?;
    value
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("ztdid"))
        .and_then(|(_, v)| v.as_str())
        .map(|s| s.trim().to_string())
}

/// Checks that the QR code shown on the device names this Autopilot identity.
pub fn check_qr_matches(payload: &str, identity: &AutopilotIdentity) -> DeviceResult<()> {
    let Some(ztd_id) = qr_ztd_id(payload) else {
        return Err(DeviceError::product(
            "the QR code on the configuration screen carries no ZtdId",
        )
        .with_hint("check the screen capture; the payload should be JSON with a ZtdId"));
    };
    if ztd_id.eq_ignore_ascii_case(&identity.id) {
        Ok(())
    } else {
        Err(DeviceError::product(format!(
            "the QR code names Autopilot identity {ztd_id}, but the tenant has {} for serial {}",
            identity.id, identity.serial_number
        ))
        .with_hint("the device downloaded another registration's profile: check for duplicate hardware hash imports"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FailureClass;

    #[test]
    fn placeholder_serials_are_refused() {
        for bad in [
            "Default string",
            "To be filled by O.E.M.",
            "0",
            "System Serial Number",
            " ",
            "0000",
        ] {
            let err = check_serial(bad).unwrap_err();
            assert_eq!(err.class, FailureClass::Config, "{bad}");
        }
        assert!(check_serial("PF3ABC12").is_ok());
        assert!(check_serial("5CG0123XYZ").is_ok());
    }

    #[test]
    fn qr_code_ztd_id_is_matched() {
        let identity = AutopilotIdentity {
            id: "3f9e1d2c-0000-4000-8000-000000000001".into(),
            serial_number: "PF1".into(),
            ..Default::default()
        };
        let good = r#"{"ZtdId":"3F9E1D2C-0000-4000-8000-000000000001","TenantId":"t"}"#;
        assert!(check_qr_matches(good, &identity).is_ok());
        let other = r#"{"ztdid":"aaaa"}"#;
        assert_eq!(
            check_qr_matches(other, &identity).unwrap_err().class,
            FailureClass::Product
        );
        assert!(check_qr_matches("not json", &identity).is_err());
        assert_eq!(qr_ztd_id(r#"{"ZtdId": 5}"#), None);
    }
}
