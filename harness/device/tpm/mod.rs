//! The `Tpm` capability: what the device's TPM says about itself, whether its EK
//! certificate chains to a trusted CA, and whether it can attest.
//!
//! `tss.rs` talks TPM 2.0 through a TCTI (swtpm, mssim, `/dev/tpmrm0` on the lab host);
//! `shell.rs` reads `Get-Tpm` over the device's shell for Windows devices whose TPM the
//! lab cannot reach directly.

pub mod shell;
pub mod tss;

pub use shell::ShellTpm;
pub use tss::TctiTpm;
