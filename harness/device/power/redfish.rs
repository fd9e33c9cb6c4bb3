//! Power through a Redfish BMC: `ComputerSystem.Reset`, then `PowerState` read back.

use async_trait::async_trait;
use serde_json::json;

use super::{Settle, excerpt, http_error, settle};
use crate::device::{DeviceError, DeviceResult, Power, PowerState, ReadBack};

pub struct RedfishPower {
    client: reqwest::Client,
    url: String,
    system: String,
    user: Option<String>,
    password: Option<String>,
    settle: Settle,
}

impl RedfishPower {
    pub fn new(
        url: &str,
        system: &str,
        user: Option<String>,
        password: Option<String>,
        verify_tls: bool,
    ) -> DeviceResult<Self> {
        let client = crate::device::http::client(crate::device::http::ClientKind {
            verify_tls,
            connect_timeout: None,
        })?;
        Ok(RedfishPower {
            client,
            url: url.trim_end_matches('/').to_string(),
            system: system.to_string(),
            user,
            password,
            settle: Settle::default(),
        })
    }

    pub fn with_settle(mut self, settle: Settle) -> Self {
        self.settle = settle;
        self
    }

    fn system_url(&self) -> String {
        format!("{}/redfish/v1/Systems/{}", self.url, self.system)
    }

    fn hint(&self) -> String {
        format!("check the BMC at {} (reachable, Redfish enabled)", self.url)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, url)
            .timeout(std::time::Duration::from_secs(30));
        match &self.user {
            Some(user) => request.basic_auth(user, self.password.as_ref()),
            None => request,
        }
    }

    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> DeviceResult<Vec<u8>> {
        let response = request
            .send()
            .await
            .map_err(|e| http_error(what, None, &e.to_string(), self.hint()))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default().to_vec();
        if status.is_success() {
            Ok(body)
        } else {
            Err(http_error(what, Some(status), &excerpt(&body), self.hint()))
        }
    }

    /// The state the BMC reports; `None` while it is in transition (`PoweringOn`...).
    async fn read_state(&self) -> DeviceResult<Option<PowerState>> {
        let what = format!("reading the power state of Redfish system {}", self.system);
        let body = self
            .send(
                &what,
                self.request(reqwest::Method::GET, &self.system_url()),
            )
            .await?;
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            DeviceError::infrastructure(format!("{what}: the BMC did not answer JSON: {e}"))
                .with_hint(self.hint())
        })?;
        match value.get("PowerState").and_then(|s| s.as_str()) {
            Some("On") => Ok(Some(PowerState::On)),
            Some("Off") => Ok(Some(PowerState::Off)),
            Some(_) => Ok(None),
            None => Err(DeviceError::infrastructure(format!(
                "{what}: the BMC's answer has no PowerState"
            ))
            .with_hint(self.hint())),
        }
    }

    async fn reset(&self, reset_type: &str, want: PowerState) -> DeviceResult<ReadBack> {
        let url = format!("{}/Actions/ComputerSystem.Reset", self.system_url());
        let what = format!("Redfish reset {reset_type} of system {}", self.system);
        self.send(
            &what,
            self.request(reqwest::Method::POST, &url)
                .json(&json!({ "ResetType": reset_type })),
        )
        .await?;
        settle(want, self.settle, &format!("BMC at {}", self.url), || {
            self.read_state()
        })
        .await
    }
}

#[async_trait]
impl Power for RedfishPower {
    async fn on(&self) -> DeviceResult<ReadBack> {
        self.reset("On", PowerState::On).await
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        self.reset("ForceOff", PowerState::Off).await
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        self.reset("ForceRestart", PowerState::On).await
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        Ok(match self.read_state().await? {
            Some(state) => ReadBack::Confirmed(state),
            None => ReadBack::Unavailable("the BMC reports a power transition".into()),
        })
    }
}
