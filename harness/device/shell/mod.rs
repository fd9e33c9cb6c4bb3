//! The `Shell` capability: run a command on the device and fetch files from it.
//!
//! `ssh.rs` is the only transport (OpenSSH Server on the Windows images, sshd
//! elsewhere); `quote.rs` holds the quoting rules of each remote shell flavour.

pub mod quote;
pub mod ssh;

pub use ssh::{SshSettings, SshShell};
