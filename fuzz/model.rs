//! The exact model code of aplab, compiled into the fuzz crate.
#[path = "../harness/model/mod.rs"]
pub mod model;
