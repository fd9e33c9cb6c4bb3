//! The screen: what a PiKVM captures, as text (OCR) and as a snapshot, and the QR code
//! on it (Windows shows one with the device's details during pre-provisioning).

pub mod pikvm;
pub mod qr;

use super::{DeviceResult, Screen};
use crate::model::inventory::ScreenConn;

/// Builds the screen an inventory entry describes; `resolved_password` is the PiKVM
/// password its `SecretRef` resolved to.
pub fn from_inventory(
    conn: &ScreenConn,
    resolved_password: Option<String>,
) -> DeviceResult<Box<dyn Screen>> {
    Ok(match conn {
        ScreenConn::Pikvm(kvm) => Box::new(pikvm::PikvmScreen::new(
            crate::device::pikvm::PikvmSession::from_inventory(kvm, resolved_password)?,
        )),
    })
}

/// The payloads of the QR codes on screen now (empty when there is none).
pub async fn qr_codes(screen: &dyn Screen) -> DeviceResult<Vec<String>> {
    qr::decode(&screen.snapshot().await?)
}
