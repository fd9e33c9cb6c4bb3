//! TPM
