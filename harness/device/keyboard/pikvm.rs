//! The PiKVM keyboard: `send_key` events for key presses, `print` for text.

use async_trait::async_trait;
use reqwest::Method;

use super::{modifier_name, stroke, text_strokes};
use crate::device::pikvm::PikvmSession;
use crate::device::{DeviceResult, Keyboard};
use crate::model::scenario::KeyPress;

pub struct PikvmKeyboard {
    kvm: PikvmSession,
}

impl PikvmKeyboard {
    pub fn new(kvm: PikvmSession) -> Self {
        PikvmKeyboard { kvm }
    }

    async fn key(&self, name: &str, down: bool) -> DeviceResult<()> {
        // Names are checked against the key table first, so they are plain identifiers.
        let path = format!("/api/hid/events/send_key?key={name}&state={down}");
        self.kvm
            .call_json(Method::POST, &path, None)
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Keyboard for PikvmKeyboard {
    async fn press(&self, press: &KeyPress) -> DeviceResult<()> {
        // Validates every name and gives modifiers their canonical W3C names.
        stroke(press)?;
        let modifiers: Vec<&str> = press
            .modifiers
            .iter()
            .filter_map(|m| modifier_name(m))
            .collect();
        let key = modifier_name(&press.key).unwrap_or(&press.key);
        for _ in 0..press.times {
            for m in &modifiers {
                self.key(m, true).await?;
            }
            self.key(key, true).await?;
            self.key(key, false).await?;
            for m in modifiers.iter().rev() {
                self.key(m, false).await?;
            }
        }
        Ok(())
    }

    async fn type_text(&self, text: &str) -> DeviceResult<()> {
        // kvmd silently skips characters its keymap lacks; refuse them up front instead.
        text_strokes(text)?;
        // `limit=0` lifts kvmd's default cap on the text length.
        self.kvm
            .call_json(
                Method::POST,
                "/api/hid/print?limit=0",
                Some(text.to_string()),
            )
            .await
            .map(|_| ())
    }
}
