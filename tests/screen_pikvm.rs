//! The PiKVM screen against a small kvmd-like server (axum) serving a PNG snapshot with
//! a QR code on it (made with the `qrcode` crate), and OCR text.

use std::collections::HashMap;

use aplab::device::pikvm::PikvmSession;
use aplab::device::screen::pikvm::PikvmScreen;
use aplab::device::screen::{qr, qr_codes};
use aplab::device::{FailureClass, Screen};
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

const OCR: &str = "Windows Autopilot\nContoso\nProfile: Kiosk\n";
const PAYLOAD: &str = "SN=PF3X9Q2;MODEL=ThinkPad T14;TENANT=contoso";

/// A PNG of `payload` as a QR code: 8 px modules, a 4-module quiet zone, on a wider
/// "screen", in RGB or grey.
fn qr_png(payload: &str, rgb: bool) -> Vec<u8> {
    let code = qrcode::QrCode::new(payload.as_bytes()).unwrap();
    let modules = code.width();
    let colors = code.to_colors();
    let (scale, quiet, margin) = (8, 4, 40);
    let side = (modules + 2 * quiet) * scale;
    let (w, h) = (side + 2 * margin, side + margin);
    let mut grey = vec![255u8; w * h];
    for y in 0..modules {
        for x in 0..modules {
            if colors[y * modules + x] == qrcode::Color::Dark {
                for dy in 0..scale {
                    let row = margin / 2 + (quiet + y) * scale + dy;
                    let col = margin + (quiet + x) * scale;
                    grey[row * w + col..row * w + col + scale].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
    encoder.set_depth(png::BitDepth::Eight);
    if rgb {
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
        writer.write_image_data(&data).unwrap();
    } else {
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&grey).unwrap();
    }
    out
}

async fn start(snapshot: Vec<u8>) -> String {
    let app = axum::Router::new().route(
        "/api/streamer/snapshot",
        get(
            move |Query(q): Query<HashMap<String, String>>, headers: HeaderMap| {
                let snapshot = snapshot.clone();
                async move {
                    if headers.get("X-KVMD-Passwd").and_then(|v| v.to_str().ok()) != Some("pw") {
                        return (StatusCode::FORBIDDEN, Vec::new());
                    }
                    if q.get("ocr").map(String::as_str) == Some("1") {
                        (StatusCode::OK, OCR.as_bytes().to_vec())
                    } else {
                        (StatusCode::OK, snapshot)
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn screen(url: &str, password: &str) -> PikvmScreen {
    PikvmScreen::new(PikvmSession::new(url, "admin", password.into(), true).unwrap())
}

#[tokio::test]
async fn text_snapshot_and_qr_code() {
    let png = qr_png(PAYLOAD, true);
    let url = start(png.clone()).await;
    let screen = screen(&url, "pw");
    assert_eq!(screen.text().await.unwrap(), OCR);
    assert_eq!(screen.snapshot().await.unwrap(), png);
    assert_eq!(qr_codes(&screen).await.unwrap(), [PAYLOAD]);
}

#[test]
fn qr_decoding_handles_grey_and_blank_and_refuses_non_png() {
    assert_eq!(qr::decode(&qr_png("hello", false)).unwrap(), ["hello"]);
    // A blank screen has no QR code: an empty answer, not an error.
    let mut blank = Vec::new();
    let mut encoder = png::Encoder::new(&mut blank, 64, 48);
    encoder.set_color(png::ColorType::Grayscale);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[255u8; 64 * 48]).unwrap();
    writer.finish().unwrap();
    assert!(qr::decode(&blank).unwrap().is_empty());
    let err = qr::decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message.contains("a JPEG that does not decode"),
        "{}",
        err.message
    );
    let err = qr::decode(b"<html>502 Bad Gateway</html>").unwrap_err();
    assert!(
        err.message
            .contains("neither PNG nor JPEG (28 bytes, starting 3c 68 74 6d"),
        "{}",
        err.message
    );
    assert!(qr::decode(b"").is_err());
}

#[tokio::test]
async fn refused_credentials_are_a_config_error() {
    let url = start(Vec::new()).await;
    let err = screen(&url, "nope").snapshot().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
}
