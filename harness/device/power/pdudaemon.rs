//! Power through pdudaemon's HTTP listener. pdudaemon queues the request and reports
//! nothing about the outlet afterwards, so no state is ever read back.

use std::time::Duration;

use async_trait::async_trait;

use super::{excerpt, http_error};
use crate::device::{DeviceResult, Power, ReadBack};

const NO_READ_BACK: &str = "pdudaemon cannot report outlet state";

pub struct PdudaemonPower {
    client: reqwest::Client,
    url: String,
    pdu: String,
    port: u32,
    reboot_delay: Option<Duration>,
}

impl PdudaemonPower {
    pub fn new(url: &str, pdu: &str, port: u32) -> DeviceResult<Self> {
        let client = crate::device::http::client(crate::device::http::ClientKind {
            verify_tls: true,
            connect_timeout: None,
        })?;
        Ok(PdudaemonPower {
            client,
            url: url.trim_end_matches('/').to_string(),
            pdu: pdu.to_string(),
            port,
            reboot_delay: None,
        })
    }

    /// Seconds between off and on for `cycle` (pdudaemon's own default otherwise).
    pub fn with_reboot_delay(mut self, delay: Duration) -> Self {
        self.reboot_delay = Some(delay);
        self
    }

    async fn control(&self, action: &str) -> DeviceResult<ReadBack> {
        let mut query = vec![
            ("hostname", self.pdu.clone()),
            ("port", self.port.to_string()),
        ];
        if action == "reboot"
            && let Some(delay) = self.reboot_delay
        {
            query.push(("delay", delay.as_secs().to_string()));
        }
        let what = format!("pdudaemon {action} of {} port {}", self.pdu, self.port);
        let hint = format!(
            "check that pdudaemon runs at {} and knows the PDU `{}`",
            self.url, self.pdu
        );
        let response = self
            .client
            .get(format!("{}/power/control/{action}", self.url))
            .query(&query)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| http_error(&what, None, &e.to_string(), hint.clone()))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(http_error(&what, Some(status), &excerpt(&body), hint));
        }
        Ok(ReadBack::Unavailable(NO_READ_BACK.into()))
    }
}

#[async_trait]
impl Power for PdudaemonPower {
    async fn on(&self) -> DeviceResult<ReadBack> {
        self.control("on").await
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        self.control("off").await
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        self.control("reboot").await
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        Ok(ReadBack::Unavailable(NO_READ_BACK.into()))
    }
}
