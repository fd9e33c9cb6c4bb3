//! The `Get-Tpm` TPM backend's behaviour that does not need a Windows device: what it
//! refuses to do, and how a shell failure reaches the caller.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use aplab::device::shell::{SshSettings, SshShell};
use aplab::device::tpm::ShellTpm;
use aplab::device::{FailureClass, Shell, Tpm};
use aplab::model::inventory::{HostKeyPolicy, ShellConn, ShellFlavor};

/// An SSH shell to a port where nothing listens (a device that is off).
fn shell_to_nowhere(dir: &std::path::Path) -> Arc<dyn Shell> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = dir.join("id_ed25519");
    std::fs::write(&key, "not used: the connection is refused first").unwrap();
    let conn = ShellConn {
        host: "127.0.0.1".into(),
        port,
        user: "Administrator".into(),
        key_file: key,
        known_hosts: dir.join("known_hosts"),
        host_key_policy: HostKeyPolicy::Strict,
        flavor: ShellFlavor::Powershell,
    };
    let settings = SshSettings {
        connect_timeout: Duration::from_secs(5),
        connect_attempts: 1,
        retry_backoff: Duration::from_millis(10),
    };
    Arc::new(SshShell::with_settings(conn, settings))
}

#[tokio::test]
async fn ek_certificate_and_attestation_say_they_need_tcti_access() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = ShellTpm::new(shell_to_nowhere(dir.path()));
    let err = tpm.ek_certificate(None).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.message.contains("TCTI"), "{}", err.message);
    let err = tpm.attest().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.message.contains("TCTI"), "{}", err.message);
}

#[tokio::test]
async fn facts_from_a_device_that_is_off_fail_as_infrastructure() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = ShellTpm::new(shell_to_nowhere(dir.path()));
    let err = tpm.facts().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure, "{}", err.message);
    assert!(err.hint.unwrap_or_default().contains("sshd"));
}
