//! Redfish power against a small BMC written for the test (axum): the requests it gets
//! are checked, and its state machine passes through `PoweringOn`/`PoweringOff`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aplab::device::power::Settle;
use aplab::device::power::redfish::RedfishPower;
use aplab::device::{FailureClass, Power, PowerState, ReadBack};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Bmc {
    state: &'static str,
    /// Polls left in the transition before `target` shows.
    transition: u32,
    target: &'static str,
    /// The BMC accepts actions but its state never follows.
    stuck: bool,
    /// Answer 500 to everything.
    broken: bool,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Bmc>>;

async fn system(
    State(bmc): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let mut bmc = bmc.lock().unwrap();
    bmc.requests.push(format!("GET {id} {}", auth(&headers)));
    if bmc.broken {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "BMC busy"})),
        );
    }
    if bmc.transition > 0 {
        bmc.transition -= 1;
        let passing = if bmc.target == "On" {
            "PoweringOn"
        } else {
            "PoweringOff"
        };
        return (
            StatusCode::OK,
            Json(json!({"Id": id, "PowerState": passing})),
        );
    }
    if !bmc.stuck {
        bmc.state = bmc.target;
    }
    (
        StatusCode::OK,
        Json(json!({"Id": id, "PowerState": bmc.state})),
    )
}

async fn reset(
    State(bmc): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let mut bmc = bmc.lock().unwrap();
    let kind = body["ResetType"].as_str().unwrap_or("?").to_string();
    bmc.requests
        .push(format!("POST {id} {kind} {}", auth(&headers)));
    if bmc.broken {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    bmc.target = match kind.as_str() {
        "On" | "ForceRestart" => "On",
        "ForceOff" => "Off",
        _ => return StatusCode::BAD_REQUEST,
    };
    bmc.transition = 2;
    StatusCode::NO_CONTENT
}

fn auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no-auth")
        .to_string()
}

async fn start(bmc: Bmc) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(bmc));
    let app = axum::Router::new()
        .route("/redfish/v1/Systems/{id}", get(system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

fn quick() -> Settle {
    Settle {
        within: Duration::from_secs(2),
        every: Duration::from_millis(10),
    }
}

fn power(url: &str) -> RedfishPower {
    RedfishPower::new(url, "1", Some("admin".into()), Some("pw".into()), true)
        .unwrap()
        .with_settle(quick())
}

#[tokio::test]
async fn actions_are_read_back_through_transitions() {
    let (url, bmc) = start(Bmc {
        state: "Off",
        target: "Off",
        ..Bmc::default()
    })
    .await;
    let power = power(&url);
    assert_eq!(
        power.state().await.unwrap(),
        ReadBack::Confirmed(PowerState::Off)
    );
    assert_eq!(
        power.on().await.unwrap(),
        ReadBack::Confirmed(PowerState::On)
    );
    assert_eq!(
        power.cycle().await.unwrap(),
        ReadBack::Confirmed(PowerState::On)
    );
    assert_eq!(
        power.off().await.unwrap(),
        ReadBack::Confirmed(PowerState::Off)
    );
    let requests = bmc.lock().unwrap().requests.clone();
    // Basic auth of admin:pw.
    let auth = "Basic YWRtaW46cHc=";
    let posts: Vec<&String> = requests.iter().filter(|r| r.starts_with("POST")).collect();
    assert_eq!(
        posts,
        [
            &format!("POST 1 On {auth}"),
            &format!("POST 1 ForceRestart {auth}"),
            &format!("POST 1 ForceOff {auth}")
        ]
    );
    // The first read, then per action two reads in transition and one of the new state.
    let gets = requests.iter().filter(|r| r.starts_with("GET")).count();
    assert_eq!(gets, 1 + 3 * 3);
}

#[tokio::test]
async fn a_bmc_that_never_gets_there_is_infrastructure() {
    let (url, _bmc) = start(Bmc {
        state: "On",
        target: "On",
        stuck: true,
        ..Bmc::default()
    })
    .await;
    let err = power(&url).off().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(
        err.message,
        format!("power state did not change to Off within 2s (check the BMC at {url})")
    );
}

#[tokio::test]
async fn controller_errors_are_infrastructure_with_a_hint() {
    let (url, _bmc) = start(Bmc {
        broken: true,
        ..Bmc::default()
    })
    .await;
    let err = power(&url).on().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(err.code.as_deref(), Some("HTTP 500"));
    assert!(
        err.hint
            .unwrap()
            .contains(&format!("check the BMC at {url}"))
    );

    // Nothing listening: refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = power(&closed).state().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(err.hint.unwrap().contains("check the BMC"));
}
