//! The test-only control endpoint (127.0.0.1): read a device's state, age it, move the
//! lab clock, inject and clear faults at runtime. The harness never uses it; tests and
//! demos do, to reach the rules that take months of lab time.
//!
//! - `GET  /devices` ids and screens; `GET /devices/{id}` the Windows snapshot + faults
//! - `GET  /devices/{id}/screen` the screen as OCR text
//! - `POST /devices/{id}/age?by=7d` moves the technician flow's completion back
//! - `POST /clock/advance?by=2h` jumps lab time forward
//! - `POST /devices/{id}/faults` body e.g. `{"kind":"slow_esp","factor":3}`;
//!   `DELETE /devices/{id}/faults` clears them

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::clock::LabClock;
use super::device::Device;
use super::render;
use crate::model::inventory::Fault;
use crate::model::parse_duration;

#[derive(Clone)]
pub struct Control {
    pub devices: Arc<BTreeMap<String, Arc<Device>>>,
    pub clock: Arc<LabClock>,
}

pub fn router(control: Control) -> Router {
    Router::new()
        .route("/devices", get(list))
        .route("/devices/{id}", get(show))
        .route("/devices/{id}/screen", get(screen))
        .route("/devices/{id}/age", post(age))
        .route("/devices/{id}/faults", post(inject).delete(clear))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .with_state(control)
}

/// A fault as the control endpoint takes it (durations written as in the inventory).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    AttestationTimeout,
    AttestationIntermittent { failures: u32 },
    SlowEsp { factor: f64 },
    SerialDrop { after: String, down: String },
    SshRefusedDuringReboot,
    PowerControllerFails { requests: u32 },
    ClockSkew { skew: String },
    GraphThrottle { requests: u32 },
}

impl FaultSpec {
    pub fn into_fault(self) -> Result<Fault, String> {
        Ok(match self {
            FaultSpec::AttestationTimeout => Fault::AttestationTimeout,
            FaultSpec::AttestationIntermittent { failures } => {
                Fault::AttestationIntermittent { failures }
            }
            FaultSpec::SlowEsp { factor } if factor.is_finite() && factor > 0.0 => {
                Fault::SlowEsp { factor }
            }
            FaultSpec::SlowEsp { factor } => {
                return Err(format!(
                    "slow_esp factor must be a positive number, not {factor}"
                ));
            }
            FaultSpec::SerialDrop { after, down } => Fault::SerialDrop {
                after: parse_duration(&after)?,
                down: parse_duration(&down)?,
            },
            FaultSpec::SshRefusedDuringReboot => Fault::SshRefusedDuringReboot,
            FaultSpec::PowerControllerFails { requests } => {
                Fault::PowerControllerFails { requests }
            }
            FaultSpec::ClockSkew { skew } => Fault::ClockSkew {
                skew: parse_duration(&skew)?,
            },
            FaultSpec::GraphThrottle { requests } => Fault::GraphThrottle { requests },
        })
    }
}

fn bad(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn find(c: &Control, id: &str) -> Result<Arc<Device>, Box<Response>> {
    c.devices.get(id).cloned().ok_or_else(|| {
        Box::new(bad(
            StatusCode::NOT_FOUND,
            format!("no device {id:?} in this lab"),
        ))
    })
}

#[derive(Deserialize)]
struct By {
    by: Option<String>,
}

fn parse_by(q: &By) -> Result<Duration, Box<Response>> {
    let text = q.by.as_deref().unwrap_or("");
    parse_duration(text).map_err(|e| Box::new(bad(StatusCode::BAD_REQUEST, format!("by: {e}"))))
}

async fn list(State(c): State<Control>) -> Response {
    let devices: Vec<_> = c
        .devices
        .values()
        .map(|d| json!({ "id": d.id, "screen": d.screen().name(), "powered": d.powered() }))
        .collect();
    Json(json!({ "devices": devices })).into_response()
}

async fn show(State(c): State<Control>, Path(id): Path<String>) -> Response {
    match find(&c, &id) {
        Ok(d) => Json(json!({
            "snapshot": d.windows_snapshot(),
            "faults": d.faults(),
            "serial_up": d.serial_up(),
        }))
        .into_response(),
        Err(r) => *r,
    }
}

async fn screen(State(c): State<Control>, Path(id): Path<String>) -> Response {
    match find(&c, &id) {
        Ok(d) => render::text(&d.view()).into_response(),
        Err(r) => *r,
    }
}

async fn age(State(c): State<Control>, Path(id): Path<String>, Query(q): Query<By>) -> Response {
    let device = match find(&c, &id) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let by = match parse_by(&q) {
        Ok(by) => by,
        Err(r) => return *r,
    };
    if device.age(by) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        bad(
            StatusCode::CONFLICT,
            format!("{id} has not completed a technician flow yet; nothing to age"),
        )
    }
}

async fn clock(State(c): State<Control>) -> Response {
    Json(json!({ "now_secs": c.clock.now().as_secs_f64(), "scale": c.clock.scale() }))
        .into_response()
}

async fn advance(State(c): State<Control>, Query(q): Query<By>) -> Response {
    match parse_by(&q) {
        Ok(by) => {
            c.clock.advance(by);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

async fn inject(
    State(c): State<Control>,
    Path(id): Path<String>,
    body: Result<Json<FaultSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let device = match find(&c, &id) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("fault: {e}")),
    };
    match spec.into_fault() {
        Ok(fault) => {
            device.inject(fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

async fn clear(State(c): State<Control>, Path(id): Path<String>) -> Response {
    match find(&c, &id) {
        Ok(d) => {
            d.clear_faults();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}
