//! Checking what the configuration and result screens show: the `Label: value` fields
//! (profile, organization, user) and the QR code's JSON payload (with the ZtdId).

use std::collections::BTreeMap;

use crate::model::inventory::Capability;
use crate::model::scenario::{FailureClass, ScreenCheck};

use super::events::EventKind;
use super::keyed;
use super::outcome::CaseState;
use super::step::{Attempt, Done, Failure, StepCtx};

pub(crate) async fn check(
    ctx: &StepCtx<'_, '_>,
    state: &mut CaseState,
    check: &ScreenCheck,
) -> Attempt {
    let screen = ctx
        .run
        .handle
        .screen
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Screen))?;
    let mut problems = Vec::new();

    if !check.fields.is_empty() {
        let text = screen.text().await?;
        let seen = keyed::parse(&text);
        for (label, expected) in &check.fields {
            let expected = ctx.render(expected)?;
            match keyed::get(&seen, label) {
                Some(value) => {
                    ctx.emit(EventKind::DeviceStateSeen {
                        what: format!("screen {}", label.to_lowercase()),
                        value: value.to_string(),
                    });
                    if value != expected.trim() {
                        problems.push(format!("{label} shows {value:?}, expected {expected:?}"));
                    }
                }
                None => problems.push(format!("no `{label}:` field on the screen")),
            }
        }
    }

    // The QR code is read whenever a decoder is there, so a later `match-qr` step can use
    // it; only a check that asks for QR keys fails when it cannot be read.
    let wants_qr = !check.qr.is_empty();
    match (&ctx.run.qr_decoder, wants_qr) {
        (None, true) => {
            return Err(Failure::new(
                FailureClass::Harness,
                "this aplab build has no QR decoder wired into the engine",
            ));
        }
        (None, false) => {}
        (Some(decode), _) => match read_qr(ctx, decode).await {
            Ok(payload) => {
                for (key, expected) in &check.qr {
                    let expected = ctx.render(expected)?;
                    match payload.get(key) {
                        Some(value) if value == expected.trim() => {}
                        Some(value) => problems.push(format!(
                            "QR code's {key} is {value:?}, expected {expected:?}"
                        )),
                        None => problems.push(format!("QR code's payload has no `{key}`")),
                    }
                }
                state.last_qr = Some(payload);
            }
            Err(e) if wants_qr => return Err(e),
            Err(_) => {}
        },
    }

    if problems.is_empty() {
        Ok(Done::passed())
    } else {
        Err(Failure::product(format!(
            "the screen does not show what was expected: {}",
            problems.join("; ")
        )))
    }
}

/// The QR payload on screen as key -> value (JSON values other than strings as JSON).
async fn read_qr(
    ctx: &StepCtx<'_, '_>,
    decode: &super::QrDecoder,
) -> Result<BTreeMap<String, String>, Failure> {
    let screen = ctx
        .run
        .handle
        .screen
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Screen))?;
    let png = screen.snapshot().await?;
    let text = decode(&png).map_err(|e| {
        Failure::product(format!("no readable QR code on the screen: {e}"))
            .with_hint("Windows 11 shows no QR code on the success screen; check the step's screen")
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Failure::product(format!("the QR code does not carry JSON ({e}): {text:?}"))
    })?;
    let serde_json::Value::Object(map) = json else {
        return Err(Failure::product(format!(
            "the QR code's JSON is not an object: {text:?}"
        )));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}
