//! The PiKVM's video capture: `GET /api/streamer/snapshot` for the picture, with
//! `ocr=1` for the text on it.

use async_trait::async_trait;
use reqwest::Method;

use crate::device::pikvm::PikvmSession;
use crate::device::{DeviceResult, Screen};

pub struct PikvmScreen {
    kvm: PikvmSession,
}

impl PikvmScreen {
    pub fn new(kvm: PikvmSession) -> Self {
        PikvmScreen { kvm }
    }
}

#[async_trait]
impl Screen for PikvmScreen {
    async fn text(&self) -> DeviceResult<String> {
        let body = self
            .kvm
            .call(Method::GET, "/api/streamer/snapshot?ocr=1", None)
            .await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn snapshot(&self) -> DeviceResult<Vec<u8>> {
        let body = self
            .kvm
            .call(Method::GET, "/api/streamer/snapshot", None)
            .await?;
        Ok(body.to_vec())
    }
}
