//! A PiKVM-compatible HTTP API in front of the lab's devices: one server, one path
//! prefix per device (`/pc03/api/...`), then the real kvmd paths: ATX power, HID key
//! events and text, and the streamer snapshot (PNG, or OCR text with `?ocr=1`). Requests
//! authenticate with `X-KVMD-User` / `X-KVMD-Passwd`, answers use kvmd's
//! `{"ok": ..., "result": ...}` envelope.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::device::Device;
use super::keys;
use super::render;

/// One device behind the KVM, with the credentials its KVM expects.
pub struct Kvm {
    pub device: Arc<Device>,
    pub user: String,
    pub password: String,
}

#[derive(Clone)]
pub struct Kvms {
    by_prefix: Arc<BTreeMap<String, Kvm>>,
    /// Modifier keys held down through `send_key`, per device.
    held: Arc<Mutex<HashMap<String, u8>>>,
}

impl Kvms {
    pub fn new(by_prefix: BTreeMap<String, Kvm>) -> Self {
        Kvms {
            by_prefix: Arc::new(by_prefix),
            held: Arc::default(),
        }
    }
}

pub fn router(kvms: Kvms) -> Router {
    Router::new()
        .route("/{kvm}/api/atx", get(atx_state))
        .route("/{kvm}/api/atx/power", post(atx_power))
        .route("/{kvm}/api/atx/click", post(atx_click))
        .route("/{kvm}/api/hid", get(hid_state))
        .route("/{kvm}/api/hid/events/send_key", post(send_key))
        .route("/{kvm}/api/hid/print", post(print))
        .route("/{kvm}/api/streamer/snapshot", get(snapshot))
        .with_state(kvms)
}

fn fail(status: StatusCode, error: &str, message: &str) -> Response {
    let body = json!({ "ok": false, "result": { "error": error, "error_msg": message } });
    (status, Json(body)).into_response()
}

fn ok(result: Value) -> Response {
    Json(json!({ "ok": true, "result": result })).into_response()
}

/// The device behind `prefix`, if the request carries its credentials.
fn authorize<'a>(
    kvms: &'a Kvms,
    prefix: &str,
    headers: &HeaderMap,
) -> Result<&'a Kvm, Box<Response>> {
    let kvm = kvms.by_prefix.get(prefix).ok_or_else(|| {
        Box::new(fail(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("no KVM at /{prefix}"),
        ))
    })?;
    let user = headers.get("X-KVMD-User").and_then(|v| v.to_str().ok());
    let password = headers.get("X-KVMD-Passwd").and_then(|v| v.to_str().ok());
    if user != Some(kvm.user.as_str()) || password != Some(kvm.password.as_str()) {
        return Err(Box::new(fail(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Unauthorized: check X-KVMD-User and X-KVMD-Passwd",
        )));
    }
    Ok(kvm)
}

/// ATX requests go through the KVM's power controller, which may be failing.
fn atx_device<'a>(
    kvms: &'a Kvms,
    prefix: &str,
    headers: &HeaderMap,
) -> Result<&'a Kvm, Box<Response>> {
    let kvm = authorize(kvms, prefix, headers)?;
    if kvm.device.power_request_fails() {
        return Err(Box::new(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "AtxOperationError",
            "ATX operation failed",
        )));
    }
    Ok(kvm)
}

async fn atx_state(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    headers: HeaderMap,
) -> Response {
    match atx_device(&kvms, &prefix, &headers) {
        Ok(kvm) => {
            let on = kvm.device.powered();
            ok(json!({ "enabled": true, "busy": false, "leds": { "power": on, "hdd": on } }))
        }
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct PowerQuery {
    action: Option<String>,
}

async fn atx_power(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    Query(q): Query<PowerQuery>,
    headers: HeaderMap,
) -> Response {
    let kvm = match atx_device(&kvms, &prefix, &headers) {
        Ok(kvm) => kvm,
        Err(r) => return *r,
    };
    let d = &kvm.device;
    match q.action.as_deref().unwrap_or("") {
        "on" => d.power_on(),
        "off" => d.shutdown(),
        "off_hard" => d.power_off(),
        "reset_hard" => d.reset(),
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("Invalid ATX power action {other:?}; use on, off, off_hard or reset_hard"),
            );
        }
    }
    ok(json!({}))
}

#[derive(Deserialize)]
struct ClickQuery {
    button: Option<String>,
}

async fn atx_click(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    Query(q): Query<ClickQuery>,
    headers: HeaderMap,
) -> Response {
    let kvm = match atx_device(&kvms, &prefix, &headers) {
        Ok(kvm) => kvm,
        Err(r) => return *r,
    };
    let d = &kvm.device;
    match q.button.as_deref().unwrap_or("") {
        "power" if d.powered() => d.shutdown(),
        "power" => d.power_on(),
        "power_long" => d.power_off(),
        "reset" => d.reset(),
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("Invalid ATX button {other:?}; use power, power_long or reset"),
            );
        }
    }
    ok(json!({}))
}

async fn hid_state(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    headers: HeaderMap,
) -> Response {
    match authorize(&kvms, &prefix, &headers) {
        Ok(kvm) => {
            let online = kvm.device.powered();
            ok(json!({ "online": online, "keyboard": { "online": online } }))
        }
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
    state: Option<String>,
}

async fn send_key(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    let kvm = match authorize(&kvms, &prefix, &headers) {
        Ok(kvm) => kvm,
        Err(r) => return *r,
    };
    let name = q.key.unwrap_or_default();
    let Some(usage) = keys::pikvm_usage(&name) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            &format!("Invalid key {name:?}"),
        );
    };
    // Without `state`, kvmd presses and releases.
    let press = match q.state.as_deref() {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("Invalid state {other:?}; use true or false"),
            );
        }
    };
    let mut held = kvms.held.lock().unwrap_or_else(|e| e.into_inner());
    let mods = held.entry(prefix).or_default();
    let bit = keys::modifier_bit(usage);
    let key = keys::from_hid(usage, *mods);
    match (press, bit) {
        (Some(true), Some(bit)) => {
            let newly = *mods & bit == 0;
            *mods |= bit;
            if newly && key == keys::Key::Windows {
                kvm.device.press(key);
            }
        }
        (Some(false), Some(bit)) => *mods &= !bit,
        (None, Some(_)) => {
            if key == keys::Key::Windows {
                kvm.device.press(key);
            }
        }
        (Some(true) | None, None) => kvm.device.press(key),
        (Some(false), None) => {}
    }
    ok(json!({}))
}

async fn print(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kvm = match authorize(&kvms, &prefix, &headers) {
        Ok(kvm) => kvm,
        Err(r) => return *r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "The text to print is not UTF-8",
        );
    };
    for c in text.chars() {
        kvm.device.press(keys::from_text(c));
    }
    ok(json!({}))
}

#[derive(Deserialize)]
struct SnapshotQuery {
    ocr: Option<String>,
}

async fn snapshot(
    State(kvms): State<Kvms>,
    Path(prefix): Path<String>,
    Query(q): Query<SnapshotQuery>,
    headers: HeaderMap,
) -> Response {
    let kvm = match authorize(&kvms, &prefix, &headers) {
        Ok(kvm) => kvm,
        Err(r) => return *r,
    };
    if !kvm.device.powered() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "UnavailableError",
            "Service Unavailable: no video signal (is the PC powered on?)",
        );
    }
    let view = kvm.device.view();
    if matches!(q.ocr.as_deref(), Some("1" | "true")) {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            render::text(&view),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "image/png")], render::png(&view)).into_response()
}
