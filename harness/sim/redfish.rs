//! A Redfish BMC for the lab's devices: one HTTP server, one `ComputerSystem` per device
//! (the inventory's `system` id). `PowerState` reads back; `ComputerSystem.Reset` takes
//! `On`, `ForceOff`, `GracefulShutdown`, `ForceRestart`, `PowerCycle`. While the
//! `PowerControllerFails` fault lasts, every request about that system answers 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::device::Device;

/// System id -> device.
pub type Systems = Arc<BTreeMap<String, Arc<Device>>>;

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

fn lookup(systems: &Systems, id: &str) -> Result<Arc<Device>, Box<Response>> {
    let device = systems.get(id).cloned().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            &format!("no system {id:?} on this BMC"),
        ))
    })?;
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

async fn system(State(systems): State<Systems>, Path(id): Path<String>) -> Response {
    let device = match lookup(&systems, &id) {
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
    body: Option<Json<Value>>,
) -> Response {
    let device = match lookup(&systems, &id) {
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
