//! The lab engineer's two files as plain data: the lab inventory and the scenarios.
//!
//! Parsing is in two stages (as probe-rs does for its target definitions): YAML is read
//! into raw, span-carrying structs, then checked and converted into the validated types
//! of [`inventory`] and [`scenario`]. Every later layer sees only validated types, so a
//! device is never powered on the strength of a file with a mistake in it.
//! No I/O beyond reading the files, no tokio.

pub mod duration;
pub mod inventory;
pub mod scenario;

pub use duration::parse_duration;
