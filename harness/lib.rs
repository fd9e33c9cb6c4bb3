//! aplab: a hardware-lab test harness and fleet runner for Windows Autopilot
//! pre-provisioned deployment.
//!
//! Map of the crate (arrows point the way calls go):
//!
//! ```text
//! main.rs (CLI) -> fleet -> engine -> device (capability traits) -> transports
//!                    |        `-- events --> report (JUnit, HTML, JSON, terminal)
//!                    `-- store (run ledger: leases, parked waits, device lifecycle)
//! model: scenarios and inventory as validated plain data, used by every layer.
//! sim:   the virtual lab; shares no code path with the engine.
//! ```

pub mod cli;
pub mod device;
pub mod engine;
pub mod fleet;
pub mod model;
pub mod report;
pub mod sim;
pub mod store;
