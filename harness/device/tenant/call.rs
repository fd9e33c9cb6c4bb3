//! Graph calls as data: what aplab asks of the tenant (method, API version, path, query,
//! body, and the permission it needs), built once and then sent by the Graph backend or
//! printed by the dry-run.

use reqwest::Method;
use serde_json::{Value, json};

use crate::device::{DeviceError, DeviceResult};

/// Graph API version of a call. `deploymentProfileAssignmentStatus`, `deploymentProfile`
/// and `allowNextEnrollment` exist only in beta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn segment(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

/// What a 404 means for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// The Autopilot identity does not exist (`Config`, import the hardware hash).
    Identity,
    /// The Intune record does not exist (`Config`, the device is not enrolled).
    ManagedDevice,
    /// The thing is already gone or absent; that is the answer.
    Absent,
}

const SERVICE_CONFIG_READ: &str = "DeviceManagementServiceConfig.Read.All";
const SERVICE_CONFIG_WRITE: &str = "DeviceManagementServiceConfig.ReadWrite.All";
const MANAGED_DEVICES_READ: &str = "DeviceManagementManagedDevices.Read.All";
const MANAGED_DEVICES_WRITE: &str = "DeviceManagementManagedDevices.ReadWrite.All";

const IDENTITIES: &str = "deviceManagement/windowsAutopilotDeviceIdentities";

/// One Graph request, described before it is sent (or printed by the dry-run).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphCall {
    pub method: Method,
    pub version: ApiVersion,
    /// Path segments under the version, unescaped.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    /// The application permission the call needs (named when Graph answers 403).
    pub permission: &'static str,
    pub not_found: NotFound,
    /// What the call is for, in the lab's words, for messages.
    pub what: String,
    /// Sending it twice does no harm. A call that is not (an import) is sent again only
    /// when it surely did not arrive (refused connection, 429), never after a 5xx or a
    /// timeout, which may hide a success.
    pub repeatable: bool,
}

impl GraphCall {
    fn new(method: Method, version: ApiVersion, path: &str, what: String) -> Self {
        GraphCall {
            method,
            version,
            segments: path.split('/').map(str::to_string).collect(),
            query: Vec::new(),
            body: None,
            permission: SERVICE_CONFIG_READ,
            not_found: NotFound::Identity,
            what,
            repeatable: true,
        }
    }

    fn identity_action(id: &str, action: &str, version: ApiVersion, what: String) -> Self {
        let mut call = GraphCall::new(Method::POST, version, IDENTITIES, what);
        call.segments.push(id.to_string());
        call.segments.push(action.to_string());
        call.permission = SERVICE_CONFIG_WRITE;
        call
    }

    /// `GET beta/.../windowsAutopilotDeviceIdentities?$filter=contains(serialNumber,'X')`.
    /// `contains`, because the service rejects `eq` on serialNumber; beta, because only
    /// beta has deploymentProfileAssignmentStatus.
    pub fn find_identity(serial: &str) -> Self {
        let mut call = GraphCall::new(
            Method::GET,
            ApiVersion::Beta,
            IDENTITIES,
            format!("find the Autopilot identity of serial {serial}"),
        );
        let quoted = serial.trim().replace('\'', "''");
        call.query.push((
            "$filter".into(),
            format!("contains(serialNumber,'{quoted}')"),
        ));
        call
    }

    pub fn deployment_profile(identity_id: &str) -> Self {
        let mut call = GraphCall::new(
            Method::GET,
            ApiVersion::Beta,
            IDENTITIES,
            format!("read the deployment profile of Autopilot identity {identity_id}"),
        );
        call.segments.push(identity_id.to_string());
        call.segments.push("deploymentProfile".into());
        call.not_found = NotFound::Absent;
        call
    }

    pub fn assign_user(identity_id: &str, upn: &str) -> Self {
        let mut call = GraphCall::identity_action(
            identity_id,
            "assignUserToDevice",
            ApiVersion::V1,
            format!("assign {upn} to Autopilot identity {identity_id}"),
        );
        // The greeting name OOBE shows; the UPN's local part is what Intune's own
        // portal suggests.
        let addressable = upn.split('@').next().unwrap_or(upn);
        call.body = Some(json!({"userPrincipalName": upn, "addressableUserName": addressable}));
        call
    }

    pub fn unassign_user(identity_id: &str) -> Self {
        GraphCall::identity_action(
            identity_id,
            "unassignUserFromDevice",
            ApiVersion::V1,
            format!("unassign the user of Autopilot identity {identity_id}"),
        )
    }

    pub fn set_group_tag(identity_id: &str, group_tag: &str) -> Self {
        let mut call = GraphCall::identity_action(
            identity_id,
            "updateDeviceProperties",
            ApiVersion::V1,
            format!("set group tag \"{group_tag}\" on Autopilot identity {identity_id}"),
        );
        call.body = Some(json!({"groupTag": group_tag}));
        call
    }

    pub fn allow_next_enrollment(identity_id: &str) -> Self {
        GraphCall::identity_action(
            identity_id,
            "allowNextEnrollment",
            ApiVersion::Beta,
            format!("unblock re-enrollment of Autopilot identity {identity_id}"),
        )
    }

    pub fn delete_managed_device(managed_device_id: &str) -> Self {
        let mut call = GraphCall::new(
            Method::DELETE,
            ApiVersion::V1,
            "deviceManagement/managedDevices",
            format!("delete the Intune record {managed_device_id}"),
        );
        call.segments.push(managed_device_id.to_string());
        call.permission = MANAGED_DEVICES_WRITE;
        call.not_found = NotFound::Absent;
        call
    }

    pub fn compliance(managed_device_id: &str) -> Self {
        let mut call = GraphCall::new(
            Method::GET,
            ApiVersion::V1,
            "deviceManagement/managedDevices",
            format!("read the compliance of Intune record {managed_device_id}"),
        );
        call.segments.push(managed_device_id.to_string());
        call.query
            .push(("$select".into(), "id,complianceState".into()));
        call.permission = MANAGED_DEVICES_READ;
        call.not_found = NotFound::ManagedDevice;
        call
    }

    /// `POST importedWindowsAutopilotDeviceIdentities/import`: one device's hardware hash.
    pub fn import_identity(serial: &str, hardware_hash: &str, group_tag: &str) -> Self {
        let mut call = GraphCall::new(
            Method::POST,
            ApiVersion::V1,
            "deviceManagement/importedWindowsAutopilotDeviceIdentities/import",
            format!("import the hardware hash of serial {serial}"),
        );
        call.body = Some(json!({"importedWindowsAutopilotDeviceIdentities": [{
            "serialNumber": serial.trim(),
            "hardwareIdentifier": hardware_hash.trim(),
            "groupTag": group_tag,
            "assignedUserPrincipalName": "",
        }]}));
        call.permission = SERVICE_CONFIG_WRITE;
        call.repeatable = false;
        call
    }

    /// `GET importedWindowsAutopilotDeviceIdentities/{id}`: how an import is going.
    pub fn import_status(import_id: &str) -> Self {
        let mut call = GraphCall::new(
            Method::GET,
            ApiVersion::V1,
            "deviceManagement/importedWindowsAutopilotDeviceIdentities",
            format!("read the state of hardware hash import {import_id}"),
        );
        call.segments.push(import_id.to_string());
        call
    }

    /// The full URL under `graph_url`, path segments and query escaped.
    pub fn url(&self, graph_url: &str) -> DeviceResult<reqwest::Url> {
        let base = format!(
            "{}/{}/",
            graph_url.trim_end_matches('/'),
            self.version.segment()
        );
        let mut url = reqwest::Url::parse(&base).map_err(|e| {
            DeviceError::config(format!("graph_url \"{graph_url}\" is not a URL: {e}"))
                .with_hint("e.g. https://graph.microsoft.com (or the sovereign cloud's Graph host)")
        })?;
        url.path_segments_mut()
            .map_err(|_| {
                DeviceError::config(format!("graph_url \"{graph_url}\" cannot have a path"))
            })?
            .pop_if_empty()
            .extend(&self.segments);
        if !self.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        Ok(url)
    }
}
