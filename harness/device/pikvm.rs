//! The PiKVM HTTP API, shared by the PiKVM keyboard, power (ATX) and screen backends.
//!
//! Every request carries `X-KVMD-User` / `X-KVMD-Passwd`; answers are mapped to failure
//! classes here once: refused credentials are a config problem, anything else that
//! keeps the request from working is lab infrastructure.

use std::time::Duration;

use super::{DeviceError, DeviceResult};
use crate::model::inventory::PikvmConn;

/// How long one PiKVM request may take (a snapshot with OCR takes a few seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated session with one PiKVM.
#[derive(Clone)]
pub struct PikvmSession {
    client: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl PikvmSession {
    /// `url` is the KVM's base URL (a path prefix is kept: `http://lab/pc01`).
    pub fn new(url: &str, user: &str, password: String, verify_tls: bool) -> DeviceResult<Self> {
        let client = super::http::client(super::http::ClientKind {
            verify_tls,
            connect_timeout: None,
        })?;
        Ok(PikvmSession {
            client,
            url: url.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password,
        })
    }

    /// From an inventory entry and the password its `SecretRef` resolved to.
    pub fn from_inventory(conn: &PikvmConn, password: Option<String>) -> DeviceResult<Self> {
        let password = password.ok_or_else(|| {
            DeviceError::config(format!(
                "no password resolved for the PiKVM at {}",
                conn.url
            ))
            .with_hint("check the PiKVM password reference in the inventory")
        })?;
        Self::new(&conn.url, &conn.user, password, conn.verify_tls)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request to `path` (with its query) and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> DeviceResult<bytes::Bytes> {
        let url = format!("{}{}", self.url, path);
        let mut request = self
            .client
            .request(method, &url)
            .timeout(REQUEST_TIMEOUT)
            .header("X-KVMD-User", &self.user)
            .header("X-KVMD-Passwd", &self.password);
        if let Some(body) = body {
            request = request.header("Content-Type", "text/plain").body(body);
        }
        let what = path.split('?').next().unwrap_or(path);
        let response = request.send().await.map_err(|e| {
            DeviceError::infrastructure(format!("PiKVM request {what} failed: {e}"))
                .with_hint(format!("check that the PiKVM at {} is reachable", self.url))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            DeviceError::infrastructure(format!("PiKVM answer to {what} was cut off: {e}"))
                .with_hint(format!("check the network to the PiKVM at {}", self.url))
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let code = format!("HTTP {}", status.as_u16());
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let error = if matches!(status.as_u16(), 401 | 403) {
            DeviceError::config(format!("the PiKVM at {} refused the credentials", self.url))
                .with_hint(format!(
                    "check the user `{}` and password for this PiKVM",
                    self.user
                ))
        } else {
            DeviceError::infrastructure(format!("PiKVM {what} answered {code}: {excerpt}"))
                .with_hint(format!("check the PiKVM at {} (kvmd running?)", self.url))
        };
        Err(error.with_code(code))
    }

    /// `call` for endpoints that answer `{"ok": true, "result": ...}`; returns `result`.
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> DeviceResult<serde_json::Value> {
        let bytes = self.call(method, path, body).await?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            DeviceError::infrastructure(format!("PiKVM {path} did not answer JSON: {e}"))
                .with_hint(format!("check that {} is a PiKVM (kvmd)", self.url))
        })?;
        if value.get("ok") != Some(&serde_json::Value::Bool(true)) {
            return Err(DeviceError::infrastructure(format!(
                "PiKVM {path} answered not ok: {value}"
            ))
            .with_hint(format!("check the PiKVM at {}", self.url)));
        }
        Ok(value
            .get_mut("result")
            .map(serde_json::Value::take)
            .unwrap_or_default())
    }
}
