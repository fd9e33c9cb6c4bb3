//! PiKVM ATX power against a small kvmd-like server (axum) with a power LED that
//! follows the buttons, or does not (wiring unplugged).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aplab::device::pikvm::PikvmSession;
use aplab::device::power::Settle;
use aplab::device::power::pikvm::PikvmPower;
use aplab::device::{FailureClass, Power, PowerState, ReadBack};
use axum::extract::{Query, State};
use axum::routing::{get, post};
use serde_json::json;

#[derive(Default)]
struct Atx {
    led: bool,
    /// The LED ignores the buttons (ATX cable unplugged).
    unplugged: bool,
    actions: Vec<String>,
}

type Shared = Arc<Mutex<Atx>>;

async fn start(atx: Atx) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(atx));
    let app = axum::Router::new()
        .route(
            "/api/atx",
            get(|State(atx): State<Shared>| async move {
                let led = atx.lock().unwrap().led;
                axum::Json(json!({"ok": true, "result": {"enabled": true, "leds": {"power": led, "hdd": false}}}))
            }),
        )
        .route(
            "/api/atx/power",
            post(
                |State(atx): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let mut atx = atx.lock().unwrap();
                    let action = q.get("action").cloned().unwrap_or_default();
                    atx.actions.push(action.clone());
                    if !atx.unplugged {
                        atx.led = action != "off_hard";
                    }
                    axum::Json(json!({"ok": true, "result": {}}))
                },
            ),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

fn power(url: &str) -> PikvmPower {
    PikvmPower::new(PikvmSession::new(url, "admin", "pw".into(), true).unwrap()).with_settle(
        Settle {
            within: Duration::from_secs(1),
            every: Duration::from_millis(10),
        },
    )
}

#[tokio::test]
async fn buttons_are_pressed_and_the_led_read_back() {
    let (url, atx) = start(Atx::default()).await;
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
    assert_eq!(
        atx.lock().unwrap().actions,
        ["on", "reset_hard", "off_hard"]
    );
}

#[tokio::test]
async fn a_led_that_does_not_follow_is_infrastructure() {
    let (url, _atx) = start(Atx {
        led: true,
        unplugged: true,
        ..Atx::default()
    })
    .await;
    let err = power(&url).off().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message
            .starts_with("power state did not change to Off within 1s"),
        "{}",
        err.message
    );
    assert!(err.message.contains("PiKVM ATX wiring"));
}
