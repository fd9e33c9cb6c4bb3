//! The run ledger: runs, cases, step results, device leases, parked waits and each
//! device's lifecycle across runs.
//!
//! Behind one trait so a server database can serve a fleet shared by several lab hosts
//! later; the embedded default is SQLite in one file ([`sqlite::SqliteLedger`]).
//! Times are wall-clock Unix milliseconds: a parked wait must survive a runner restart,
//! so it is stored as the instant it may end, never as "time left".

pub mod sqlite;

use serde::Serialize;

/// Wall-clock Unix time in milliseconds.
pub type Millis = i64;

/// Current wall-clock time in Unix milliseconds.
pub fn now_millis() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// A ledger failure. The ledger is local state: failures here are `infrastructure` for
/// the run (disk full, file locked by something that is not aplab, corrupted file).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("run ledger {path}: {source} (check the disk and that the file is an aplab ledger)")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("run {0} is not in the ledger (see `aplab status` for known runs)")]
    UnknownRun(String),
    #[error("case {0} is not in the ledger")]
    UnknownCase(String),
}

pub type LedgerResult<T> = Result<T, LedgerError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Finished,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> RunStatus {
        match s {
            "finished" => RunStatus::Finished,
            "interrupted" => RunStatus::Interrupted,
            _ => RunStatus::Running,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub status: RunStatus,
    /// What the run was asked to do (filters, inventory), as JSON, so `resume` can
    /// rebuild it.
    pub request: String,
}

/// Where a case stands. A case goes pending -> running -> (parked -> running)* -> done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Pending,
    Running,
    /// Between phases: the device stays leased while the gap runs.
    Parked,
    Passed,
    Failed,
    /// The case could not be run (no matching device, config error).
    Skipped,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Pending => "pending",
            CaseStatus::Running => "running",
            CaseStatus::Parked => "parked",
            CaseStatus::Passed => "passed",
            CaseStatus::Failed => "failed",
            CaseStatus::Skipped => "skipped",
        }
    }
    fn parse(s: &str) -> CaseStatus {
        match s {
            "running" => CaseStatus::Running,
            "parked" => CaseStatus::Parked,
            "passed" => CaseStatus::Passed,
            "failed" => CaseStatus::Failed,
            "skipped" => CaseStatus::Skipped,
            _ => CaseStatus::Pending,
        }
    }
    pub fn is_done(self) -> bool {
        matches!(
            self,
            CaseStatus::Passed | CaseStatus::Failed | CaseStatus::Skipped
        )
    }
}

/// One scenario case on one device within a run.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRecord {
    pub run_id: String,
    /// `scenario[axis=value,...]@device`, unique within the run.
    pub case_id: String,
    pub scenario: String,
    /// Matrix values as JSON.
    pub matrix: String,
    pub device_id: String,
    pub status: CaseStatus,
    /// Index of the next phase to run.
    pub next_phase: u32,
    /// Failure class of the failed step, when failed.
    pub class: Option<String>,
    pub message: Option<String>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// One attempt of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub run_id: String,
    pub case_id: String,
    pub phase: String,
    pub step: String,
    pub attempt: u32,
    /// `passed`, `failed`, `skipped`.
    pub status: String,
    pub class: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub started_at: Millis,
    pub elapsed_ms: i64,
}

/// Who holds a device, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub device_id: String,
    /// The runner holding it (`host:pid:nonce`).
    pub owner: String,
    pub run_id: String,
    pub case_id: String,
    pub acquired_at: Millis,
    /// Past this instant without a heartbeat the lease is stale and expires by itself.
    pub expires_at: Millis,
}

/// A device parked between phases: it may continue at `not_before`, and must by
/// `not_after` (the process's 6-month limit), both wall-clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedWait {
    pub run_id: String,
    pub case_id: String,
    pub device_id: String,
    pub next_phase: u32,
    pub not_before: Millis,
    pub not_after: Option<Millis>,
}

/// Something that happened to a device that later runs must know about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleEvent {
    pub device_id: String,
    /// `resealed` (technician flow done), `user-flow-done`, `record-reset`, ...
    pub kind: String,
    pub at: Millis,
    pub run_id: String,
    /// e.g. the Autopilot profile and join type.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Good,
    Bad,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Good => "good",
            Health::Bad => "bad",
        }
    }
    fn parse(s: &str) -> Health {
        match s {
            "good" => Health::Good,
            "bad" => Health::Bad,
            _ => Health::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceHealth {
    pub device_id: String,
    pub health: Health,
    pub checked_at: Millis,
    pub run_id: String,
    pub reason: String,
}

/// The run ledger. Every method is one transaction: a runner killed at any moment leaves
/// the ledger at a boundary between two of them.
pub trait Ledger: Send + Sync {
    fn create_run(&self, id: &str, request: &str, at: Millis) -> LedgerResult<()>;
    fn run(&self, id: &str) -> LedgerResult<RunRecord>;
    /// Most recent first.
    fn recent_runs(&self, limit: usize) -> LedgerResult<Vec<RunRecord>>;
    fn finish_run(&self, id: &str, status: RunStatus, at: Millis) -> LedgerResult<()>;

    /// Adds cases to a run; a case already present is left as it is (so resume can
    /// re-plan without losing progress).
    fn add_cases(&self, cases: &[CaseRecord]) -> LedgerResult<()>;
    fn cases(&self, run_id: &str) -> LedgerResult<Vec<CaseRecord>>;
    fn update_case(&self, case: &CaseRecord) -> LedgerResult<()>;
    /// Updates a case and sets (or clears) its parked wait in one transaction, so a crash
    /// can never leave a parked case without the instant its gap ends.
    fn advance_case(&self, case: &CaseRecord, park: Option<&ParkedWait>) -> LedgerResult<()>;
    fn record_step(&self, step: &StepRecord) -> LedgerResult<()>;
    fn steps(&self, run_id: &str, case_id: &str) -> LedgerResult<Vec<StepRecord>>;

    /// Takes the device's lease for `owner` if it is free or its lease has expired.
    /// Atomic across processes: two runners never both get it.
    fn try_lease(&self, lease: &Lease, now: Millis) -> LedgerResult<bool>;
    /// Extends leases held by `owner` to `expires_at`; returns how many.
    fn heartbeat(&self, owner: &str, expires_at: Millis) -> LedgerResult<usize>;
    fn release(&self, device_id: &str, owner: &str) -> LedgerResult<()>;
    /// Leases still valid at `now`.
    fn leases(&self, now: Millis) -> LedgerResult<Vec<Lease>>;
    /// Every lease ever taken in a run (for checking that no device was leased twice).
    fn lease_history(&self, run_id: &str) -> LedgerResult<Vec<Lease>>;

    fn park(&self, wait: &ParkedWait) -> LedgerResult<()>;
    fn unpark(&self, run_id: &str, case_id: &str) -> LedgerResult<()>;
    fn parked(&self, run_id: &str) -> LedgerResult<Vec<ParkedWait>>;

    fn record_lifecycle(&self, event: &LifecycleEvent) -> LedgerResult<()>;
    /// The latest event of `kind` for a device.
    fn last_lifecycle(&self, device_id: &str, kind: &str) -> LedgerResult<Option<LifecycleEvent>>;

    fn set_health(&self, health: &DeviceHealth) -> LedgerResult<()>;
    fn health(&self, device_id: &str) -> LedgerResult<Option<DeviceHealth>>;
}
