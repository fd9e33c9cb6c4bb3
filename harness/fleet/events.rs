//! What the fleet runner tells reporters (terminal progress, reports). It never formats
//! output itself.

use serde::Serialize;

use crate::store::Millis;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum FleetEvent {
    RunStarted {
        run_id: String,
        cases: usize,
        devices: usize,
        resumed: bool,
    },
    /// A device was leased for a case.
    Leased { case_id: String, device_id: String },
    /// The device is busy elsewhere or its lease is held by another runner.
    WaitingForDevice {
        case_id: String,
        device_id: String,
        holder: String,
    },
    PhaseStarted {
        case_id: String,
        device_id: String,
        phase: String,
    },
    PhaseFinished {
        case_id: String,
        device_id: String,
        phase: String,
        outcome: String,
    },
    /// The device is parked for the gap the process demands; `until` is wall-clock.
    Parked {
        case_id: String,
        device_id: String,
        next_phase: String,
        until: Millis,
    },
    /// A parked wait whose end had already passed when the runner came back.
    ParkedWaitOverdue {
        case_id: String,
        device_id: String,
        late_by_ms: i64,
    },
    /// The case moved to another device after an infrastructure failure.
    MovedToDevice {
        case_id: String,
        from: String,
        to: String,
        reason: String,
    },
    /// The device failed its health check and is left out of scheduling.
    DeviceMarkedBad { device_id: String, reason: String },
    CaseFinished {
        case_id: String,
        device_id: String,
        status: String,
        class: Option<String>,
        message: Option<String>,
    },
    RunFinished {
        run_id: String,
        passed: usize,
        failed: usize,
        skipped: usize,
        interrupted: bool,
    },
}
