//! The HTTP clients of the lab's controllers (PiKVM, Redfish, pdudaemon, the tenant),
//! shared by every device in the process.
//!
//! A `reqwest::Client` holds a TLS context (the system's root certificates) and a
//! connection pool. Building one per backend per device cost about a megabyte and a
//! few milliseconds of CPU per device (bench/fleet), and gave every device its own
//! pool although they all talk to the same KVM, BMC and tenant. A client is an `Arc`
//! inside, so backends clone the shared one and set their timeout per request.

use std::sync::Mutex;
use std::time::Duration;

use super::{DeviceError, DeviceResult};

/// What a client is built with: the settings that reqwest fixes per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKind {
    /// Check the server's TLS certificate (off for a PiKVM's self-signed one).
    pub verify_tls: bool,
    /// How long connecting may take (the tenant's retry policy sets it).
    pub connect_timeout: Option<Duration>,
}

static CLIENTS: Mutex<Vec<(ClientKind, reqwest::Client)>> = Mutex::new(Vec::new());

/// The process's client of this kind, built at first use.
pub fn client(kind: ClientKind) -> DeviceResult<reqwest::Client> {
    // A poisoned lock only means another thread panicked while holding it; the list of
    // built clients is still whole.
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = clients.iter().find(|(k, _)| *k == kind) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(!kind.verify_tls)
        .user_agent(concat!("aplab/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = kind.connect_timeout {
        builder = builder.connect_timeout(t);
    }
    let c = builder
        .build()
        .map_err(|e| DeviceError::harness(format!("cannot build an HTTP client: {e}")))?;
    clients.push((kind, c.clone()));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_kind() {
        let kind = ClientKind {
            verify_tls: false,
            connect_timeout: Some(Duration::from_millis(1234)),
        };
        client(kind).unwrap();
        client(kind).unwrap();
        let other = ClientKind {
            verify_tls: true,
            connect_timeout: Some(Duration::from_millis(1234)),
        };
        client(other).unwrap();
        let clients = CLIENTS.lock().unwrap();
        assert_eq!(clients.iter().filter(|(k, _)| *k == kind).count(), 1);
        assert_eq!(clients.iter().filter(|(k, _)| *k == other).count(), 1);
    }
}
