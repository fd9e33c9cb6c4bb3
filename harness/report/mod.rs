//! Reporters: subscribers to the engine's and the fleet's event streams (terminal
//! progress, JUnit, HTML, JSON). A reporter never calls a device.

pub mod progress;
