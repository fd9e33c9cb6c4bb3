//! The lab engineer's two files as plain data: the lab inventory and the scenarios.
//!
//! Parsing is in two stages (as probe-rs does for its target definitions): YAML is read
//! into a tree of span-carrying nodes ([`node`]), then checked and converted into the
//! validated types of [`inventory`] and [`scenario`], collecting every problem on the way
//! ([`problems`]). Every later layer sees only validated types, so a device is never
//! powered on the strength of a file with a mistake in it.
//! No I/O beyond reading the files, no tokio.

pub mod duration;
pub mod inventory;
pub mod keys;
pub mod load;
pub mod node;
pub mod problems;
pub mod read;
pub mod read_inventory;
pub mod read_scenario;
pub mod scenario;
pub mod selector;
pub mod template;

pub use duration::parse_duration;
pub use load::{
    BlockSet, Loaded, blocks_from_str, check_scenarios, inventory_from_str, load_inventory,
    load_scenarios, scenario_from_str, scenarios_from_str,
};
pub use problems::{Problem, Problems, Severity};
pub use read_scenario::{MAX_GAP, MIN_GAP};
pub use scenario::Template;
pub use selector::{applies, match_device};
pub use template::{case_context, secret_ref, tenant_secret_ref};
