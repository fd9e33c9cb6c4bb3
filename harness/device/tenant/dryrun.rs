//! Dry-run: a [`Tenant`] that prints the Graph calls a run would make (method, URL,
//! body) and sends none. The token request is shown once, with the client secret and the
//! bearer token replaced by `<redacted>`; the secret is not even read.
//!
//! Answers are placeholders (an identity whose id names the serial, compliance
//! `unknown`) so that a scenario can walk through its steps and show every call.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::call::GraphCall;
use super::token::{scope, token_url};
use super::{DeploymentProfile, check_serial};
use crate::device::{AutopilotIdentity, DeviceError, DeviceResult, Tenant};
use crate::model::inventory::{Credential, TenantConfig};

const REDACTED: &str = "<redacted>";

pub struct DryRunTenant {
    config: TenantConfig,
    out: Mutex<Box<dyn Write + Send>>,
    token_shown: AtomicBool,
}

impl DryRunTenant {
    /// Prints to `out`.
    pub fn new(config: &TenantConfig, out: Box<dyn Write + Send>) -> Self {
        DryRunTenant {
            config: config.clone(),
            out: Mutex::new(out),
            token_shown: AtomicBool::new(false),
        }
    }

    pub fn to_stdout(config: &TenantConfig) -> Self {
        Self::new(config, Box::new(std::io::stdout()))
    }

    fn print(&self, text: &str) -> DeviceResult<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| DeviceError::harness(format!("cannot print the dry-run: {e}")))
    }

    /// Shows the call (and, the first time, the token request before it).
    fn show(&self, call: &GraphCall) -> DeviceResult<()> {
        let mut text = String::new();
        if !self.token_shown.swap(true, Ordering::Relaxed) {
            let credential = match &self.config.credential {
                Credential::ClientSecret(_) => format!("client_secret={REDACTED}"),
                Credential::Certificate { .. } => format!(
                    "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={REDACTED}"
                ),
            };
            text.push_str(&format!(
                "POST {}\n  form: client_id={}&{credential}&scope={}&grant_type=client_credentials\n",
                token_url(&self.config),
                self.config.client_id,
                scope(&self.config),
            ));
        }
        let url = call.url(&self.config.graph_url)?;
        text.push_str(&format!(
            "{} {url}\n  # {} (needs {})\n  Authorization: Bearer {REDACTED}\n",
            call.method, call.what, call.permission
        ));
        // The query once more, unescaped, for the reader.
        for (key, value) in &call.query {
            text.push_str(&format!("  {key}: {value}\n"));
        }
        if let Some(body) = &call.body {
            text.push_str(&format!("  body: {body}\n"));
        }
        self.print(&text)
    }
}

#[async_trait]
impl Tenant for DryRunTenant {
    async fn identity(&self, serial: &str) -> DeviceResult<AutopilotIdentity> {
        check_serial(serial)?;
        self.show(&GraphCall::find_identity(serial))?;
        Ok(AutopilotIdentity {
            id: format!("ztdid-of-{}", serial.trim()),
            serial_number: serial.trim().to_string(),
            enrollment_state: "unknown".into(),
            deployment_profile_assignment_status: "assignedInSync".into(),
            user_principal_name: String::new(),
            managed_device_id: format!("managed-device-of-{}", serial.trim()),
            group_tag: String::new(),
        })
    }

    async fn delete_managed_device(&self, managed_device_id: &str) -> DeviceResult<()> {
        self.show(&GraphCall::delete_managed_device(managed_device_id))
    }

    async fn allow_next_enrollment(&self, identity_id: &str) -> DeviceResult<()> {
        self.show(&GraphCall::allow_next_enrollment(identity_id))
    }

    async fn set_group_tag(&self, identity_id: &str, group_tag: &str) -> DeviceResult<()> {
        self.show(&GraphCall::set_group_tag(identity_id, group_tag))
    }

    async fn assign_user(&self, identity_id: &str, upn: &str) -> DeviceResult<()> {
        self.show(&GraphCall::assign_user(identity_id, upn))
    }

    async fn unassign_user(&self, identity_id: &str) -> DeviceResult<()> {
        self.show(&GraphCall::unassign_user(identity_id))
    }

    async fn compliance(&self, managed_device_id: &str) -> DeviceResult<String> {
        self.show(&GraphCall::compliance(managed_device_id))?;
        Ok("unknown".into())
    }

    async fn import_identity(
        &self,
        serial: &str,
        hardware_hash: &str,
        group_tag: &str,
        _poll: super::Poll,
    ) -> DeviceResult<String> {
        check_serial(serial)?;
        super::graph::check_hardware_hash(hardware_hash)?;
        self.show(&GraphCall::import_identity(
            serial,
            hardware_hash,
            group_tag,
        ))?;
        Ok(format!("ztdid-of-{}", serial.trim()))
    }

    async fn deployment_profile(
        &self,
        identity_id: &str,
    ) -> DeviceResult<Option<DeploymentProfile>> {
        self.show(&GraphCall::deployment_profile(identity_id))?;
        Ok(Some(DeploymentProfile {
            id: "profile-placeholder".into(),
            display_name: self.config.profile.clone().unwrap_or_default(),
            join: "entra".into(),
            allows_preprovisioning: true,
        }))
    }
}
