//! The PiKVM keyboard against a small kvmd-like server (axum) that records requests.

use std::sync::{Arc, Mutex};

use aplab::device::keyboard::pikvm::PikvmKeyboard;
use aplab::device::pikvm::PikvmSession;
use aplab::device::{FailureClass, KeyPress, Keyboard};
use axum::http::{HeaderMap, Method, StatusCode, Uri};

type Log = Arc<Mutex<Vec<String>>>;

/// Answers like kvmd: 403 without the right credentials, `{"ok": true}` otherwise.
async fn start() -> (String, Log) {
    let log: Log = Arc::default();
    let recorded = log.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            let log = recorded.clone();
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
                if header("X-KVMD-User") != "admin" || header("X-KVMD-Passwd") != "s3cret" {
                    return (StatusCode::FORBIDDEN, "{\"ok\": false}".to_string());
                }
                log.lock()
                    .unwrap()
                    .push(format!("{method} {uri} {body}").trim_end().to_string());
                (StatusCode::OK, "{\"ok\": true, \"result\": {}}".to_string())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kvm", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

fn keyboard(url: &str, password: &str) -> PikvmKeyboard {
    PikvmKeyboard::new(PikvmSession::new(url, "admin", password.into(), true).unwrap())
}

fn press(key: &str, modifiers: &[&str], times: u32) -> KeyPress {
    KeyPress {
        key: key.into(),
        modifiers: modifiers.iter().map(|m| m.to_string()).collect(),
        times,
    }
}

#[tokio::test]
async fn keys_are_pressed_and_released_in_order() {
    let (url, log) = start().await;
    let kb = keyboard(&url, "s3cret");
    kb.press(&press("Delete", &["Ctrl", "AltLeft"], 1))
        .await
        .unwrap();
    kb.press(&press("MetaLeft", &[], 2)).await.unwrap();
    let key = |k: &str, s: bool| format!("POST /kvm/api/hid/events/send_key?key={k}&state={s}");
    let expected = [
        key("ControlLeft", true),
        key("AltLeft", true),
        key("Delete", true),
        key("Delete", false),
        key("AltLeft", false),
        key("ControlLeft", false),
        key("MetaLeft", true),
        key("MetaLeft", false),
        key("MetaLeft", true),
        key("MetaLeft", false),
    ];
    assert_eq!(*log.lock().unwrap(), expected);
}

#[tokio::test]
async fn text_goes_through_print() {
    let (url, log) = start().await;
    keyboard(&url, "s3cret")
        .type_text("Passw0rd!")
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["POST /kvm/api/hid/print?limit=0 Passw0rd!"]
    );
    let err = keyboard(&url, "s3cret")
        .type_text("naïve")
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "nothing typed when a character cannot be"
    );
}

#[tokio::test]
async fn refused_credentials_are_a_config_error() {
    let (url, _log) = start().await;
    let err = keyboard(&url, "wrong")
        .press(&press("Enter", &[], 1))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(err.code.as_deref(), Some("HTTP 403"));
    assert!(err.hint.unwrap().contains("user `admin`"));
}

#[test]
fn the_inventory_needs_a_resolved_password() {
    use aplab::model::inventory::{KeyboardConn, PikvmConn, SecretRef};
    let conn = KeyboardConn::Pikvm(PikvmConn {
        url: "http://127.0.0.1:9".into(),
        user: "admin".into(),
        password: SecretRef::Env("KVM_PASSWORD".into()),
        verify_tls: false,
    });
    let err = aplab::device::keyboard::from_inventory(&conn, None)
        .err()
        .unwrap();
    assert_eq!(err.class, FailureClass::Config);
    assert!(
        err.message
            .contains("no password resolved for the PiKVM at http://127.0.0.1:9")
    );
    assert!(aplab::device::keyboard::from_inventory(&conn, Some("pw".into())).is_ok());
}
