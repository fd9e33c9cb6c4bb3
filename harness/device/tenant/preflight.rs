//! Pre-flight: checks a set of devices against the tenant before any of them is
//! powered, so that a run does not spend an hour to learn the hardware hash was never
//! imported. For each device: a real serial, registered, a deployment profile assigned
//! that allows pre-provisioning (and is the one expected), not blocked for re-enrollment;
//! for the tenant: it answers, and the app's credentials carry the permissions (a 403 on
//! a read names a missing read permission; the token's `roles`, when it is a JWT as
//! Entra's are, name a missing write permission before anything is written).

use serde::Serialize;

use super::{ASSIGNED_STATES, check_serial};
use crate::device::{DeviceError, FailureClass, Tenant};
use crate::model::inventory::Device;

/// A device to check.
#[derive(Debug, Clone)]
pub struct Target {
    pub device: String,
    pub serial: String,
}

impl From<&Device> for Target {
    fn from(d: &Device) -> Self {
        Target {
            device: d.id.clone(),
            serial: d.serial.clone(),
        }
    }
}

/// One thing wrong with one device.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub device: String,
    pub serial: String,
    pub class: FailureClass,
    pub message: String,
    pub hint: Option<String>,
    pub code: Option<String>,
    /// The technician flow cannot succeed until this is fixed (else: a warning).
    pub blocking: bool,
}

impl Problem {
    fn new(target: &Target, error: DeviceError, blocking: bool) -> Self {
        Problem {
            device: target.device.clone(),
            serial: target.serial.clone(),
            class: error.class,
            message: error.message,
            hint: error.hint,
            code: error.code,
            blocking,
        }
    }
}

/// The permissions a full run uses: what each is for.
pub const NEEDED_PERMISSIONS: [(&str, &str); 2] = [
    (
        "DeviceManagementServiceConfig.ReadWrite.All",
        "set group tags, assign users, unblock re-enrollment, import hardware hashes",
    ),
    (
        "DeviceManagementManagedDevices.ReadWrite.All",
        "read compliance, delete the Intune record before a technician flow is re-run",
    ),
];

/// Checks `targets` against one tenant. Returns every problem found, in target order;
/// empty means all clear. If the tenant does not answer, each remaining device gets that
/// one problem rather than waiting for the same timeout again. A permission the token
/// shows missing is a warning on every device (only the steps that need it will fail).
pub async fn preflight(
    tenant: &dyn Tenant,
    targets: &[Target],
    expected_profile: Option<&str>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut outage: Option<DeviceError> = None;
    let missing = match tenant.granted_permissions().await {
        Ok(Some(roles)) => NEEDED_PERMISSIONS
            .iter()
            .filter(|(needed, _)| !roles.iter().any(|r| r == needed))
            .map(|(needed, why)| {
                DeviceError::config(format!(
                    "the app lacks the Graph permission {needed}: it cannot {why}"
                ))
                .with_hint(format!(
                    "grant the application permission {needed} in Entra ID and grant admin consent"
                ))
                .with_code("HTTP 403")
            })
            .collect(),
        // Unknown (opaque token): the first write names a missing permission.
        Ok(None) => Vec::new(),
        // The tenant does not answer: no device check would fare better.
        Err(error) if error.class == FailureClass::Infrastructure => {
            outage = Some(error);
            Vec::new()
        }
        // Bad credentials and the like: reported through the device checks below.
        Err(_) => Vec::new(),
    };
    for target in targets {
        for error in &missing {
            problems.push(Problem::new(target, error.clone(), false));
        }
        if let Some(error) = &outage {
            problems.push(Problem::new(target, error.clone(), true));
            continue;
        }
        match check_device(tenant, target, expected_profile).await {
            Ok(found) => problems.extend(found),
            Err(error) if error.class == FailureClass::Infrastructure => {
                problems.push(Problem::new(target, error.clone(), true));
                outage = Some(error);
            }
            Err(error) => problems.push(Problem::new(target, error, true)),
        }
    }
    problems
}

/// The problems of one device; `Err` for the one that stops its checks.
async fn check_device(
    tenant: &dyn Tenant,
    target: &Target,
    expected_profile: Option<&str>,
) -> Result<Vec<Problem>, DeviceError> {
    check_serial(&target.serial)?;
    let identity = tenant.identity(&target.serial).await?;
    let mut problems = Vec::new();

    let status = identity.deployment_profile_assignment_status.as_str();
    if !ASSIGNED_STATES.contains(&status) {
        problems.push(Problem::new(
            target,
            DeviceError::config(format!(
                "no deployment profile is assigned yet (assignment status \"{status}\")"
            ))
            .with_hint("check the group tag and the profile's group assignment; after a change, wait for it to show assigned")
            .with_code(status.to_string()),
            true,
        ));
    }

    match tenant.deployment_profile(&identity.id).await {
        Ok(Some(profile)) => {
            if !profile.allows_preprovisioning {
                problems.push(Problem::new(
                    target,
                    DeviceError::config(format!(
                        "deployment profile \"{}\" does not allow pre-provisioning",
                        profile.display_name
                    ))
                    .with_hint("turn on \"Allow pre-provisioned deployment\" in the profile, or the technician flow ends red with 0x80180005")
                    .with_code("0x80180005"),
                    true,
                ));
            }
            if let Some(expected) = expected_profile
                && profile.display_name != expected
            {
                problems.push(Problem::new(
                    target,
                    DeviceError::config(format!(
                        "deployment profile is \"{}\", the inventory expects \"{expected}\"",
                        profile.display_name
                    ))
                    .with_hint(
                        "check the device's group tag, or the tenant's `profile` in the inventory",
                    ),
                    true,
                ));
            }
        }
        // Reported above through the assignment status.
        Ok(None) => {}
        Err(error) if error.class == FailureClass::Harness => {
            problems.push(Problem::new(target, error, false));
        }
        Err(error) => return Err(error),
    }

    if !identity.managed_device_id.is_empty() {
        // Reading the record proves the managed-devices permission.
        tenant.compliance(&identity.managed_device_id).await?;
        if identity.enrollment_state == "enrolled" {
            problems.push(Problem::new(
                target,
                DeviceError::config(format!(
                    "the device is already enrolled (Intune record {}): another technician flow \
                     fails with 0x80180014",
                    identity.managed_device_id
                ))
                .with_hint("delete the Intune record or call allowNextEnrollment before re-running the technician flow (a scenario's reset step does it)")
                .with_code("0x80180014"),
                false,
            ));
        }
    }
    Ok(problems)
}
