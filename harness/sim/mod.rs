//! The virtual lab: simulated Windows PCs going through OOBE and Autopilot
//! pre-provisioning, reachable only through the protocols a real lab uses (PTY serial,
//! CH9329 frames, a PiKVM-style API, Redfish, SSH, swtpm, a Graph-style tenant).
//!
//! It shares no code path with the engine: the harness drives it exactly as it drives
//! hardware and cannot tell the difference.

pub mod clock;
pub mod snapshot;
pub mod ssh;
pub mod swtpm;
pub mod tenant;
pub mod windows;
