//! Power controllers: Redfish BMCs, pdudaemon, PiKVM ATX, and plain commands.
//!
//! Where a controller can report state, the state is read back after each action and
//! polled until it matches (bounded by [`Settle`]); a controller that accepts an action
//! but never gets there is an infrastructure failure. Where it cannot (pdudaemon, a
//! command without a state command), the backend says so with
//! [`ReadBack::Unavailable`](super::ReadBack::Unavailable).

pub mod command;
pub mod pdudaemon;
pub mod pikvm;
pub mod redfish;

use std::future::Future;
use std::time::Duration;

use super::{DeviceError, DeviceResult, Power, PowerState, ReadBack};
use crate::model::inventory::PowerConn;

/// Builds the power controller an inventory entry describes; `resolved_password` is the
/// password its `SecretRef` resolved to (Redfish, PiKVM).
pub fn from_inventory(
    conn: &PowerConn,
    resolved_password: Option<String>,
) -> DeviceResult<Box<dyn Power>> {
    Ok(match conn {
        PowerConn::Redfish {
            url,
            system,
            user,
            verify_tls,
            ..
        } => Box::new(redfish::RedfishPower::new(
            url,
            system,
            user.clone(),
            resolved_password,
            *verify_tls,
        )?),
        PowerConn::Pdudaemon { url, pdu, port } => {
            Box::new(pdudaemon::PdudaemonPower::new(url, pdu, *port)?)
        }
        PowerConn::Pikvm(kvm) => Box::new(pikvm::PikvmPower::new(
            crate::device::pikvm::PikvmSession::from_inventory(kvm, resolved_password)?,
        )),
        PowerConn::Command {
            on,
            off,
            cycle,
            state,
        } => Box::new(command::CommandPower::new(
            on.clone(),
            off.clone(),
            cycle.clone(),
            state.clone(),
        )),
    })
}

/// How long a controller may take to reach a state, and how often it is asked.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    pub within: Duration,
    pub every: Duration,
}

impl Default for Settle {
    fn default() -> Self {
        Settle {
            within: Duration::from_secs(30),
            every: Duration::from_secs(1),
        }
    }
}

pub(crate) fn state_name(state: PowerState) -> &'static str {
    match state {
        PowerState::On => "On",
        PowerState::Off => "Off",
    }
}

/// Polls `read` until it reports `want`, or fails naming the controller to check.
/// `read` returns `None` while the controller reports a transitional state.
pub(crate) async fn settle<F, Fut>(
    want: PowerState,
    settle: Settle,
    controller: &str,
    mut read: F,
) -> DeviceResult<ReadBack>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = DeviceResult<Option<PowerState>>>,
{
    let deadline = tokio::time::Instant::now() + settle.within;
    loop {
        if read().await? == Some(want) {
            return Ok(ReadBack::Confirmed(want));
        }
        if tokio::time::Instant::now() + settle.every > deadline {
            return Err(DeviceError::infrastructure(format!(
                "power state did not change to {} within {}s (check the {controller})",
                state_name(want),
                settle.within.as_secs_f64()
            ))
            .with_hint(format!(
                "check the {controller}: it accepted the request but the state did not follow"
            )));
        }
        tokio::time::sleep(settle.every).await;
    }
}

/// Maps a failed HTTP exchange with a controller to a failure with a hint.
pub(crate) fn http_error(
    what: &str,
    status: Option<reqwest::StatusCode>,
    detail: &str,
    hint: String,
) -> DeviceError {
    match status {
        Some(s) if matches!(s.as_u16(), 401 | 403) => DeviceError::config(format!(
            "{what}: the controller refused the credentials (HTTP {})",
            s.as_u16()
        ))
        .with_code(format!("HTTP {}", s.as_u16()))
        .with_hint("check the user and password in the inventory"),
        Some(s) => DeviceError::infrastructure(format!("{what}: HTTP {} {detail}", s.as_u16()))
            .with_code(format!("HTTP {}", s.as_u16()))
            .with_hint(hint),
        None => DeviceError::infrastructure(format!("{what}: {detail}")).with_hint(hint),
    }
}

/// A short, single-line excerpt of a response body for messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}
