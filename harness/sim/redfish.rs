//! A Redfish BMC for the lab's devices: one HTTP server, one `ComputerSystem` per device
//! (the inventory's `system` id). `PowerState` reads back; `ComputerSystem.Reset` takes
//! `On`, `ForceOff`, `GracefulShutdown`, `ForceRestart`, `PowerCycle`. While the
//! `PowerControllerFails` fault lasts, every request about that system answers 500.
//! When the inventory gives the BMC a user and password, requests about the system need
//! them as HTTP Basic auth (401 otherwise), as on a real BMC.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::device::Device;

/// One system on the BMC, with the credentials it expects (if any).
pub struct System {
    pub device: Arc<Device>,
    pub credentials: Option<(String, String)>,
}

/// System id -> system.
pub type Systems = Arc<BTreeMap<String, System>>;

pub const RESET_TYPES: [&str; 5] = [
    "On",
    "ForceOff",
    "GracefulShutdown",
    "ForceRestart",
    "PowerCycle",
];

pub fn router(systems: Systems) -> Router {
    Router::new()
        .route("/redfish/v1", get(root))
        .route("/redfish/v1/", get(root))
        .route("/redfish/v1/Systems", get(collection))
        .route("/redfish/v1/Systems/{id}", get(system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .with_state(systems)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": format!("Base.1.8.{code}"),
            "message": message,
        }
    });
    (status, Json(body)).into_response()
}

fn authorized(system: &System, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some((user, password)) = &system.credentials else {
        return true;
    };
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{user}:{password}").as_bytes()
}

fn lookup(systems: &Systems, id: &str, headers: &HeaderMap) -> Result<Arc<Device>, Box<Response>> {
    let system = systems.get(id).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            &format!("no system {id:?} on this BMC"),
        ))
    })?;
    if !authorized(system, headers) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "InsufficientPrivilege",
            "Authentication failed: check the BMC user and password in the inventory",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"Redfish\""),
        );
        return Err(Box::new(response));
    }
    let device = Arc::clone(&system.device);
    if device.power_request_fails() {
        return Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The BMC could not complete the request.",
        )));
    }
    Ok(device)
}

async fn root() -> Json<Value> {
    Json(json!({
        "@odata.id": "/redfish/v1",
        "Id": "RootService",
        "Name": "aplab virtual BMC",
        "RedfishVersion": "1.15.0",
        "Systems": { "@odata.id": "/redfish/v1/Systems" },
    }))
}

async fn collection(State(systems): State<Systems>) -> Json<Value> {
    let members: Vec<Value> = systems
        .keys()
        .map(|id| json!({ "@odata.id": format!("/redfish/v1/Systems/{id}") }))
        .collect();
    Json(json!({
        "@odata.id": "/redfish/v1/Systems",
        "Name": "Computer System Collection",
        "Members@odata.count": members.len(),
        "Members": members,
    }))
}

async fn system(
    State(systems): State<Systems>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let device = match lookup(&systems, &id, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let spec = device.spec();
    let state = if device.powered() { "On" } else { "Off" };
    Json(json!({
        "@odata.id": format!("/redfish/v1/Systems/{id}"),
        "Id": id,
        "Name": spec.id,
        "Manufacturer": spec.manufacturer,
        "Model": spec.model,
        "SerialNumber": spec.serial,
        "PowerState": state,
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        }
    }))
    .into_response()
}

async fn reset(
    State(systems): State<Systems>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let device = match lookup(&systems, &id, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let kind = body
        .as_ref()
        .and_then(|b| b.get("ResetType"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match kind {
        "On" => device.power_on(),
        "ForceOff" => device.power_off(),
        "GracefulShutdown" => device.shutdown(),
        "ForceRestart" => device.reset(),
        "PowerCycle" => {
            device.power_off();
            device.power_on();
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "ActionParameterNotSupported",
                &format!(
                    "ResetType {other:?} is not supported; use one of {}",
                    RESET_TYPES.join(", ")
                ),
            );
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
