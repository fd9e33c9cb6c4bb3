//! The `Shell` capability: run a command on the device and fetch files from it.
//!
//! `ssh.rs` is the only transport (OpenSSH Server on the Windows images, sshd
//! elsewhere); `quote.rs` holds the quoting rules of each remote shell flavour.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::device::{CommandOutput, DeviceResult, Shell};

pub mod quote;
pub mod ssh;

pub use ssh::{SshSettings, SshShell};

/// A shared shell is a shell: the device handle and the `Get-Tpm` TPM backend
/// ([`crate::device::tpm::ShellTpm`]) use one SSH session between them.
#[async_trait]
impl<S: Shell + ?Sized> Shell for Arc<S> {
    async fn run(
        &self,
        program: &str,
        args: &[String],
        timeout: Duration,
    ) -> DeviceResult<CommandOutput> {
        (**self).run(program, args, timeout).await
    }

    async fn fetch(
        &self,
        remote: &str,
        local: &Path,
        max_bytes: u64,
        timeout: Duration,
    ) -> DeviceResult<u64> {
        (**self).fetch(remote, local, max_bytes, timeout).await
    }
}
