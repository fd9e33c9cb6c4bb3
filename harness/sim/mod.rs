//! The virtual lab: simulated Windows PCs going through OOBE and Autopilot
//! pre-provisioning, reachable only through the protocols a real lab uses (PTY serial,
//! CH9329 frames, a PiKVM-style API, Redfish, SSH, swtpm, a Graph-style tenant).
//!
//! It shares no code path with the engine: the harness drives it exactly as it drives
//! hardware and cannot tell the difference.
//!
//! Map: `lab` starts everything from a validated inventory; each `device` is a state
//! machine (power, `oobe` screens, ESP steps timed by `profile` in lab time from
//! `clock`); the endpoints are `serial` (PTY + raw TCP console), `ch9329` (keyboard
//! frames on a PTY), `pikvm` and `redfish` (HTTP), and `control` (test-only). `render`
//! turns a screen into OCR text and a PNG; `enrollment` is the seam to the tenant and
//! to the SSH server.

pub mod ch9329;
pub mod clock;
pub mod control;
pub mod device;
pub mod device_shell;
pub mod enrollment;
pub mod keys;
pub mod lab;
pub mod oobe;
pub mod pikvm;
pub mod profile;
pub mod pty;
pub mod redfish;
pub mod render;
pub mod serial;
pub mod snapshot;
pub mod ssh;
pub mod swtpm;
pub mod tenant;
pub mod windows;
