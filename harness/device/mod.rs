//! What aplab can do to a device: one trait per capability, as labgrid's protocols.
//!
//! Each backend is one module implementing one trait over one transport
//! (`power/redfish.rs`, `console/serial.rs`, `shell/ssh.rs`, ...). Adding a backend is one
//! file plus one inventory variant. The engine holds `Box<dyn Trait>` and never knows
//! which backend it talks to. Every error carries a [`FailureClass`] chosen where the
//! failure is understood (a refused TCP connection is `infrastructure`, a failure screen
//! is `product`), and a hint that tells the lab engineer what to check.

pub mod build;
pub mod console;
pub mod http;
pub mod keyboard;
pub mod pikvm;
pub mod power;
pub mod screen;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

pub mod tenant;

pub use crate::model::scenario::{FailureClass, KeyPress, PowerState};

/// A failure talking to a device or to lab equipment.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    pub class: FailureClass,
    pub message: String,
    /// What the lab engineer should check ("check the serial cable", ...).
    pub hint: Option<String>,
    /// An error code the device or service showed (e.g. `0x80180014`, HTTP 403).
    pub code: Option<String>,
}

impl DeviceError {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        DeviceError {
            class,
            message: message.into(),
            hint: None,
            code: None,
        }
    }
    pub fn infrastructure(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Infrastructure, message)
    }
    pub fn product(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Product, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Timeout, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Config, message)
    }
    pub fn harness(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Harness, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// What a power controller could tell about the state after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    /// The controller reported this state after the action.
    Confirmed(PowerState),
    /// The controller cannot report state (pdudaemon, a plain command); says why.
    Unavailable(String),
}

#[async_trait]
pub trait Power: Send + Sync {
    async fn on(&self) -> DeviceResult<ReadBack>;
    async fn off(&self) -> DeviceResult<ReadBack>;
    /// Off then on (or the controller's own reset).
    async fn cycle(&self) -> DeviceResult<ReadBack>;
    /// The current state, or `Unavailable` when the controller cannot tell.
    async fn state(&self) -> DeviceResult<ReadBack>;
}

/// Where a pattern matched on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleMatch {
    /// Index of the pattern that matched.
    pub pattern: usize,
    /// The matched text.
    pub text: String,
    /// Named capture groups (e.g. `code`).
    pub captures: Vec<(String, String)>,
    /// Byte offset of the match end in the console stream since the console was opened.
    pub offset: u64,
}

/// A serial console with one always-on reader: every byte is logged with a timestamp
/// whether or not a step waits, and a dropped link is reopened with backoff.
#[async_trait]
pub trait Console: Send + Sync {
    /// Waits until one of `patterns` matches text received after the last match (or
    /// after `mark()`), or `timeout` passes. Cost is linear in the bytes received.
    async fn expect(
        &self,
        patterns: &[regex::Regex],
        timeout: Duration,
    ) -> DeviceResult<ConsoleMatch>;
    /// Forgets everything received so far for matching purposes (it stays in the log).
    fn mark(&self);
    /// Sends bytes to the device.
    async fn send(&self, bytes: &[u8]) -> DeviceResult<()>;
    /// The timestamped log of everything received.
    fn log_path(&self) -> &Path;
    /// The last `max_bytes` received, for report excerpts.
    fn tail(&self, max_bytes: usize) -> Vec<u8>;
}

#[async_trait]
pub trait Keyboard: Send + Sync {
    /// Presses and releases a key (with modifiers held), `times` times.
    async fn press(&self, key: &KeyPress) -> DeviceResult<()>;
    /// Types text as a US keyboard would.
    async fn type_text(&self, text: &str) -> DeviceResult<()>;
}

#[async_trait]
pub trait Screen: Send + Sync {
    /// The text on screen (OCR).
    async fn text(&self) -> DeviceResult<String>;
    /// A PNG snapshot of the screen.
    async fn snapshot(&self) -> DeviceResult<Vec<u8>>;
}

/// Output of a command run over the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[async_trait]
pub trait Shell: Send + Sync {
    /// Runs `program` with `args`, each quoted for the remote shell so that no argument
    /// can become more than one argument or a second command.
    async fn run(
        &self,
        program: &str,
        args: &[String],
        timeout: Duration,
    ) -> DeviceResult<CommandOutput>;
    /// Copies a remote file to `local`, refusing more than `max_bytes`.
    async fn fetch(
        &self,
        remote: &str,
        local: &Path,
        max_bytes: u64,
        timeout: Duration,
    ) -> DeviceResult<u64>;
}

/// What the TPM says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct TpmFacts {
    /// "2.0"
    pub family: String,
    /// Four-letter manufacturer id, e.g. `IBM`, `IFX`, `NTC`.
    pub manufacturer: String,
    /// Firmware version, e.g. `7.85`.
    pub firmware: String,
    pub vendor: String,
}

/// Result of checking the EK certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkCertificate {
    /// Present and chains to the CA bundle; the subject/issuer for the evidence.
    Valid { issuer: String },
    /// No EK certificate in NV.
    Missing,
    /// Present but does not chain to the CA bundle.
    Untrusted { issuer: String, reason: String },
}

#[async_trait]
pub trait Tpm: Send + Sync {
    async fn facts(&self) -> DeviceResult<TpmFacts>;
    /// Checks the EK certificate in NV against the CA bundle (if given).
    async fn ek_certificate(&self, ca_bundle: Option<&Path>) -> DeviceResult<EkCertificate>;
    /// Creates an AK and verifies a quote over a fresh nonce.
    async fn attest(&self) -> DeviceResult<()>;
}

/// The device's Autopilot identity in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct AutopilotIdentity {
    /// The ZtdId.
    pub id: String,
    pub serial_number: String,
    pub enrollment_state: String,
    pub deployment_profile_assignment_status: String,
    pub user_principal_name: String,
    pub managed_device_id: String,
    pub group_tag: String,
}

#[async_trait]
pub trait Tenant: Send + Sync {
    /// Finds the Autopilot identity by serial number.
    async fn identity(&self, serial: &str) -> DeviceResult<AutopilotIdentity>;
    /// Deletes the managed-device record of this identity (if any).
    async fn delete_managed_device(&self, managed_device_id: &str) -> DeviceResult<()>;
    /// Unblocks re-enrollment (beta `allowNextEnrollment`).
    async fn allow_next_enrollment(&self, identity_id: &str) -> DeviceResult<()>;
    /// Sets the group tag (`updateDeviceProperties`), which selects the deployment profile.
    async fn set_group_tag(&self, identity_id: &str, group_tag: &str) -> DeviceResult<()>;
    async fn assign_user(&self, identity_id: &str, upn: &str) -> DeviceResult<()>;
    async fn unassign_user(&self, identity_id: &str) -> DeviceResult<()>;
    /// The managed device's complianceState.
    async fn compliance(&self, managed_device_id: &str) -> DeviceResult<String>;
    /// The deployment profile assigned to this identity, `None` if none is (beta
    /// `deploymentProfile`). Backends that cannot tell keep this default.
    async fn deployment_profile(
        &self,
        identity_id: &str,
    ) -> DeviceResult<Option<tenant::DeploymentProfile>> {
        Err(DeviceError::harness(format!(
            "this tenant backend cannot read the deployment profile of {identity_id}"
        )))
    }
    /// The Graph application permissions the credentials carry, if the backend can tell
    /// (from the token's `roles` claim); `None` when it cannot.
    async fn granted_permissions(&self) -> DeviceResult<Option<Vec<String>>> {
        Ok(None)
    }
    /// Registers a device by its hardware hash (base64, as Get-WindowsAutopilotInfo
    /// writes it) and waits, within `poll`, until the import completes. Returns the new
    /// identity's id (ZtdId). Backends that cannot import keep this default.
    async fn import_identity(
        &self,
        serial: &str,
        hardware_hash: &str,
        group_tag: &str,
        poll: tenant::Poll,
    ) -> DeviceResult<String> {
        let _ = (hardware_hash, group_tag, poll);
        Err(DeviceError::harness(format!(
            "this tenant backend cannot import the hardware hash of {serial}"
        )))
    }
}

/// A device's capabilities as backends, built from its inventory entry.
/// Optional capabilities are `Option`s, as in probe-rs.
#[derive(Default)]
pub struct DeviceHandle {
    pub id: String,
    pub power: Option<Box<dyn Power>>,
    pub console: Option<Box<dyn Console>>,
    pub keyboard: Option<Box<dyn Keyboard>>,
    pub screen: Option<Box<dyn Screen>>,
    pub shell: Option<Box<dyn Shell>>,
    pub tpm: Option<Box<dyn Tpm>>,
    pub tenant: Option<Box<dyn Tenant>>,
    /// Where the device's artifacts go.
    pub artifacts: PathBuf,
}

pub mod shell;
pub mod tpm;
