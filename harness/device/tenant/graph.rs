//! The [`Tenant`] backend over Microsoft Graph.
//!
//! Every operation is first described as a [`GraphCall`] (method, API version, path,
//! query, body, and the permission it needs); [`GraphTenant`] sends it and the dry-run
//! prints it, so the two can never disagree about what a run does.
//!
//! Sending: 429 honours Retry-After, transient failures (5xx, refused connections,
//! timeouts) back off exponentially, both bounded by [`RetryPolicy`]; a 401 fetches a
//! fresh token once. What is left is classified where it is understood: 401/403/400/404
//! are the inventory's or the tenant's configuration (`Config`), a tenant that does not
//! answer is `Infrastructure`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

pub use super::call::{ApiVersion, GraphCall, NotFound};
use super::token::TokenSource;
use super::{DeploymentProfile, Poll, check_serial};
use crate::device::{AutopilotIdentity, DeviceError, DeviceResult, Tenant};
use crate::model::inventory::TenantConfig;

/// Bounds on retries and waiting.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// A Retry-After longer than this is not waited out: the call fails instead.
    pub max_retry_after: Duration,
    /// Timeout of one request (connect, send, receive).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(16));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Parses a Retry-After header: delay seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    let wait = when.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Sends the request `build` makes, again on 429 and on transient failures, within
/// `policy`. Returns the first response that is neither (any other status, for the
/// caller to classify), or an `Infrastructure` error once retries run out. Unless
/// `repeatable`, a 5xx or a timeout ends the attempts: the request may have succeeded.
pub(crate) async fn send_retrying(
    policy: &RetryPolicy,
    what: &str,
    url: &str,
    repeatable: bool,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> DeviceResult<reqwest::Response> {
    let attempts = policy.attempts.max(1);
    let mut last_problem = String::new();
    let mut last_code = None;
    for attempt in 0..attempts {
        // `unsure`: the request may have reached the service and been carried out.
        let (wait, unsure) = match build().timeout(policy.request_timeout).send().await {
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                last_code = Some("HTTP 429".to_string());
                last_problem = "throttled (429)".to_string();
                match retry_after {
                    Some(wait) if wait > policy.max_retry_after => {
                        return Err(DeviceError::infrastructure(format!(
                            "{what}: Graph throttles this app for {}s, longer than the {}s aplab waits",
                            wait.as_secs(),
                            policy.max_retry_after.as_secs()
                        ))
                        .with_hint("too many Graph calls from this app: run fewer devices at once, or retry later")
                        .with_code("HTTP 429"));
                    }
                    Some(wait) => (wait, false),
                    None => (policy.backoff(attempt), false),
                }
            }
            Ok(response) if response.status().is_server_error() => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let (code, message) = graph_error(&body);
                last_code = Some(format!("HTTP {}", status.as_u16()));
                last_problem = format!("HTTP {} {code} {message}", status.as_u16())
                    .trim()
                    .to_string();
                (policy.backoff(attempt), true)
            }
            Ok(response) => return Ok(response),
            Err(e) => {
                last_problem = if e.is_timeout() {
                    format!(
                        "no answer within {}",
                        humantime::format_duration(policy.request_timeout)
                    )
                } else if e.is_connect() {
                    format!("cannot connect ({})", root_cause(&e))
                } else {
                    format!("request failed ({})", root_cause(&e))
                };
                last_code = None;
                (policy.backoff(attempt), !e.is_connect())
            }
        };
        if unsure && !repeatable {
            return Err(DeviceError::infrastructure(format!(
                "{what}: {last_problem} ({url}); not sent again, as it may have been carried out"
            ))
            .with_hint("look in Intune whether it took effect before trying again")
            .with_code(last_code.unwrap_or_else(|| "no answer".into())));
        }
        if attempt + 1 < attempts {
            // Visible at info: a retry that succeeds should still be seen, not eaten.
            tracing::info!(what, problem = %last_problem, wait_ms = wait.as_millis() as u64, "retrying Graph request");
            tokio::time::sleep(wait).await;
        }
    }
    let mut error = DeviceError::infrastructure(format!(
        "{what}: {last_problem} after {attempts} attempts ({url})"
    ))
    .with_hint(
        "the tenant did not answer: check the lab host's network and proxy, the configured \
         graph_url/login_url, and the Microsoft 365 service health",
    );
    if let Some(code) = last_code {
        error = error.with_code(code);
    }
    Err(error)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Graph's `{error:{code,message}}`, as far as it can be read.
pub(crate) fn graph_error(body: &str) -> (String, String) {
    #[derive(Deserialize, Default)]
    struct Outer {
        #[serde(default)]
        error: Inner,
    }
    #[derive(Deserialize, Default)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let outer: Outer = serde_json::from_str(body).unwrap_or_default();
    (outer.error.code, outer.error.message)
}

/// The Autopilot identity as Graph returns it (only the fields aplab reads).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GraphIdentity {
    id: String,
    serial_number: Option<String>,
    enrollment_state: Option<String>,
    deployment_profile_assignment_status: Option<String>,
    user_principal_name: Option<String>,
    managed_device_id: Option<String>,
    group_tag: Option<String>,
}

const NO_ID: &str = "00000000-0000-0000-0000-000000000000";

impl From<GraphIdentity> for AutopilotIdentity {
    fn from(g: GraphIdentity) -> Self {
        let managed = g.managed_device_id.unwrap_or_default();
        AutopilotIdentity {
            id: g.id,
            serial_number: g.serial_number.unwrap_or_default(),
            enrollment_state: g.enrollment_state.unwrap_or_default(),
            deployment_profile_assignment_status: g
                .deployment_profile_assignment_status
                .unwrap_or_default(),
            user_principal_name: g.user_principal_name.unwrap_or_default(),
            // Graph spells "no Intune record" as the all-zero GUID.
            managed_device_id: if managed == NO_ID {
                String::new()
            } else {
                managed
            },
            group_tag: g.group_tag.unwrap_or_default(),
        }
    }
}

/// Refuses a hardware hash that is not padded base64 (Graph would reject the import).
pub(crate) fn check_hardware_hash(hardware_hash: &str) -> DeviceResult<()> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(hardware_hash.trim());
    if hardware_hash.trim().is_empty() || decoded.is_err() {
        return Err(
            DeviceError::config("the hardware hash is not base64").with_hint(
                "give the Hardware Hash column of Get-WindowsAutopilotInfo's CSV, unchanged",
            ),
        );
    }
    Ok(())
}

/// An import that ended in error, with the service's reason.
fn import_refused(serial: &str, state: &Value) -> DeviceError {
    let code = state["deviceErrorCode"].as_i64().unwrap_or_default();
    let name = state["deviceErrorName"].as_str().unwrap_or_default();
    let hint = match code {
        806 => "the device is already registered: delete the old registration first",
        808 => "the device is registered in another tenant: that tenant must deregister it",
        _ => "check the hardware hash (captured on this device, unchanged) and the serial",
    };
    DeviceError::config(format!(
        "the hardware hash import of {serial} failed: {name} ({code})"
    ))
    .with_hint(hint)
    .with_code(code.to_string())
}

/// Picks the identity whose serial is exactly `serial` from a `contains` result.
pub(crate) fn pick_identity(
    serial: &str,
    found: Vec<AutopilotIdentity>,
) -> DeviceResult<AutopilotIdentity> {
    let wanted = serial.trim();
    let mut exact: Vec<AutopilotIdentity> = found
        .into_iter()
        .filter(|i| i.serial_number.trim().eq_ignore_ascii_case(wanted))
        .collect();
    match exact.len() {
        0 => Err(DeviceError::config(format!(
            "no Autopilot identity with serial {wanted} in the tenant"
        ))
        .with_hint(
            "import the device's hardware hash (Get-WindowsAutopilotInfo, or the OEM's \
             registration) and wait for the import to complete",
        )
        .with_code("not registered")),
        1 => Ok(exact.remove(0)),
        n => Err(DeviceError::config(format!(
            "{n} Autopilot identities carry serial {wanted}: {}",
            exact
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint("delete the stale registrations in Intune so one remains")),
    }
}

/// The Graph backend of one tenant credential set.
pub struct GraphTenant {
    name: String,
    client_id: String,
    graph_url: String,
    http: reqwest::Client,
    tokens: TokenSource,
    policy: RetryPolicy,
}

impl std::fmt::Debug for GraphTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTenant")
            .field("name", &self.name)
            .field("graph_url", &self.graph_url)
            .finish_non_exhaustive()
    }
}

impl GraphTenant {
    pub fn new(config: &TenantConfig) -> DeviceResult<Self> {
        Self::with_policy(config, RetryPolicy::default())
    }

    pub fn with_policy(config: &TenantConfig, policy: RetryPolicy) -> DeviceResult<Self> {
        // Check the URLs now: a typo should fail before any device is touched.
        GraphCall::compliance("x").url(&config.graph_url)?;
        reqwest::Url::parse(&super::token::token_url(config)).map_err(|e| {
            DeviceError::config(format!(
                "login_url \"{}\" is not a URL: {e}",
                config.login_url
            ))
            .with_hint(
                "e.g. https://login.microsoftonline.com (or the sovereign cloud's login host)",
            )
        })?;
        let http = crate::device::http::client(crate::device::http::ClientKind {
            verify_tls: true,
            connect_timeout: Some(policy.connect_timeout),
        })?;
        Ok(GraphTenant {
            name: config.name.clone(),
            client_id: config.client_id.clone(),
            graph_url: config.graph_url.clone(),
            tokens: TokenSource::new(http.clone(), config, policy),
            http,
            policy,
        })
    }

    /// How many tokens were fetched so far (a refresh is a second fetch).
    pub fn tokens_fetched(&self) -> u64 {
        self.tokens.fetched()
    }

    /// Sends a call; returns the JSON answer (None for an empty 2xx or an `Absent` 404).
    pub async fn send(&self, call: &GraphCall) -> DeviceResult<Option<Value>> {
        let url = call.url(&self.graph_url)?;
        self.send_url(call, url).await
    }

    async fn send_url(&self, call: &GraphCall, url: reqwest::Url) -> DeviceResult<Option<Value>> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.token().await?;
            let response = send_retrying(
                &self.policy,
                &call.what,
                url.as_str(),
                call.repeatable,
                || {
                    let request = self
                        .http
                        .request(call.method.clone(), url.clone())
                        .bearer_auth(&token);
                    match &call.body {
                        Some(body) => request.json(body),
                        None if call.method == Method::POST => {
                            request.header(reqwest::header::CONTENT_LENGTH, "0")
                        }
                        None => request,
                    }
                },
            )
            .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // Expired or revoked before we thought: one fresh token, one more try.
                tracing::debug!(what = %call.what, "Graph answered 401; fetching a new token");
                self.tokens.reject(&token).await;
                refreshed = true;
                continue;
            }
            let body = response.text().await.map_err(|e| {
                DeviceError::infrastructure(format!(
                    "{}: the answer broke off ({})",
                    call.what,
                    root_cause(&e)
                ))
            })?;
            if status.is_success() {
                if body.trim().is_empty() {
                    return Ok(None);
                }
                return serde_json::from_str(&body).map(Some).map_err(|e| {
                    DeviceError::infrastructure(format!(
                        "{}: the answer is not JSON ({e})",
                        call.what
                    ))
                    .with_hint(format!(
                        "check graph_url ({}) points at Microsoft Graph",
                        self.graph_url
                    ))
                });
            }
            return self.refused(call, status, &body);
        }
    }

    fn refused(
        &self,
        call: &GraphCall,
        status: StatusCode,
        body: &str,
    ) -> DeviceResult<Option<Value>> {
        let (code, message) = graph_error(body);
        let detail = if message.is_empty() {
            code.clone()
        } else {
            message
        };
        let http = format!("HTTP {}", status.as_u16());
        let error = match status {
            StatusCode::UNAUTHORIZED => DeviceError::config(format!(
                "{}: Graph rejects the app's token even after a refresh ({detail})",
                call.what
            ))
            .with_hint(format!(
                "check that app {} belongs to tenant {} and that admin consent was granted",
                self.client_id, self.name
            )),
            StatusCode::FORBIDDEN => DeviceError::config(format!(
                "{}: the app lacks the Graph permission {} ({detail})",
                call.what, call.permission
            ))
            .with_hint(format!(
                "grant the application permission {} to app {} in Entra ID (API permissions) \
                 and grant admin consent",
                call.permission, self.client_id
            )),
            StatusCode::NOT_FOUND => match call.not_found {
                NotFound::Absent => return Ok(None),
                NotFound::Identity => DeviceError::config(format!(
                    "{}: no such Autopilot identity ({detail})",
                    call.what
                ))
                .with_hint("import the device's hardware hash, then look the identity up again by serial"),
                NotFound::ManagedDevice => DeviceError::config(format!(
                    "{}: no such Intune record ({detail})",
                    call.what
                ))
                .with_hint("the device is not enrolled, or its record was deleted: run the technician flow first"),
            },
            s if s.is_client_error() => DeviceError::config(format!(
                "{}: Graph refused the request: {detail}",
                call.what
            ))
            .with_hint("check the values the scenario or inventory gives (UPN, group tag, ids)"),
            _ => DeviceError::harness(format!(
                "{}: unexpected answer {http}: {detail}",
                call.what
            )),
        };
        let code = if code.is_empty() {
            http
        } else {
            format!("{http} {code}")
        };
        Err(error.with_code(code))
    }

    async fn list_identities(&self, call: &GraphCall) -> DeviceResult<Vec<AutopilotIdentity>> {
        let mut found = Vec::new();
        let mut url = call.url(&self.graph_url)?;
        // Bounded: a filter on one serial yields a handful of results.
        for _ in 0..20 {
            let Some(page) = self.send_url(call, url.clone()).await? else {
                break;
            };
            if let Some(items) = page.get("value").and_then(Value::as_array) {
                for item in items {
                    if let Ok(identity) = serde_json::from_value::<GraphIdentity>(item.clone()) {
                        found.push(identity.into());
                    }
                }
            }
            let next = page.get("@odata.nextLink").and_then(Value::as_str);
            match next.and_then(|n| reqwest::Url::parse(n).ok()) {
                // The token goes only to the Graph host we were configured with.
                Some(next) if next.origin() == url.origin() => url = next,
                _ => break,
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Tenant for GraphTenant {
    async fn identity(&self, serial: &str) -> DeviceResult<AutopilotIdentity> {
        check_serial(serial)?;
        let found = self
            .list_identities(&GraphCall::find_identity(serial))
            .await?;
        pick_identity(serial, found)
    }

    async fn delete_managed_device(&self, managed_device_id: &str) -> DeviceResult<()> {
        if managed_device_id.is_empty() || managed_device_id == NO_ID {
            return Ok(());
        }
        self.send(&GraphCall::delete_managed_device(managed_device_id))
            .await
            .map(drop)
    }

    async fn allow_next_enrollment(&self, identity_id: &str) -> DeviceResult<()> {
        self.send(&GraphCall::allow_next_enrollment(identity_id))
            .await
            .map(drop)
    }

    async fn set_group_tag(&self, identity_id: &str, group_tag: &str) -> DeviceResult<()> {
        self.send(&GraphCall::set_group_tag(identity_id, group_tag))
            .await
            .map(drop)
    }

    async fn assign_user(&self, identity_id: &str, upn: &str) -> DeviceResult<()> {
        self.send(&GraphCall::assign_user(identity_id, upn))
            .await
            .map(drop)
    }

    async fn unassign_user(&self, identity_id: &str) -> DeviceResult<()> {
        self.send(&GraphCall::unassign_user(identity_id))
            .await
            .map(drop)
    }

    async fn compliance(&self, managed_device_id: &str) -> DeviceResult<String> {
        let answer = self.send(&GraphCall::compliance(managed_device_id)).await?;
        answer
            .as_ref()
            .and_then(|v| v.get("complianceState"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                DeviceError::infrastructure(format!(
                    "Intune record {managed_device_id} has no complianceState"
                ))
            })
    }

    async fn deployment_profile(
        &self,
        identity_id: &str,
    ) -> DeviceResult<Option<DeploymentProfile>> {
        let answer = self
            .send(&GraphCall::deployment_profile(identity_id))
            .await?;
        Ok(answer.as_ref().and_then(DeploymentProfile::from_graph))
    }

    async fn granted_permissions(&self) -> DeviceResult<Option<Vec<String>>> {
        Ok(super::token::token_roles(&self.tokens.token().await?))
    }

    async fn import_identity(
        &self,
        serial: &str,
        hardware_hash: &str,
        group_tag: &str,
        poll: Poll,
    ) -> DeviceResult<String> {
        check_serial(serial)?;
        check_hardware_hash(hardware_hash)?;
        let answer = self
            .send(&GraphCall::import_identity(
                serial,
                hardware_hash,
                group_tag,
            ))
            .await?;
        let mut import = answer
            .as_ref()
            .and_then(|v| v.get("value"))
            .and_then(Value::as_array)
            .and_then(|items| items.first())
            .cloned()
            .ok_or_else(|| {
                DeviceError::infrastructure(format!(
                    "the import of {serial} returned no import record"
                ))
            })?;
        let import_id = import["id"].as_str().unwrap_or_default().to_string();
        let started = tokio::time::Instant::now();
        loop {
            let state = &import["state"];
            match state["deviceImportStatus"].as_str().unwrap_or("unknown") {
                "complete" => {
                    let id = state["deviceRegistrationId"].as_str().unwrap_or_default();
                    return Ok(if id.is_empty() {
                        import_id
                    } else {
                        id.to_string()
                    });
                }
                "error" | "partial" => return Err(import_refused(serial, state)),
                status if started.elapsed() >= poll.deadline => {
                    return Err(DeviceError::timeout(format!(
                        "the hardware hash import of {serial} is still \"{status}\" after {}",
                        humantime::format_duration(poll.deadline)
                    ))
                    .with_hint("imports can take several minutes; look at Intune > Devices > Windows enrollment > Devices"));
                }
                _ => {}
            }
            tokio::time::sleep(poll.interval).await;
            import = self
                .send(&GraphCall::import_status(&import_id))
                .await?
                .unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_filter_uses_contains_and_escapes_quotes() {
        let call = GraphCall::find_identity("O'Brien 1");
        let url = call.url("https://graph.microsoft.us/").unwrap();
        assert!(url.as_str().starts_with(
            "https://graph.microsoft.us/beta/deviceManagement/windowsAutopilotDeviceIdentities?"
        ));
        let (key, value) = url.query_pairs().next().unwrap();
        assert_eq!(key, "$filter");
        assert_eq!(value, "contains(serialNumber,'O''Brien 1')");
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        let url = GraphCall::compliance("../../me")
            .url("https://graph.microsoft.com")
            .unwrap();
        assert_eq!(
            url.path(),
            "/v1.0/deviceManagement/managedDevices/..%2F..%2Fme"
        );
    }

    #[test]
    fn bad_urls_are_config_errors() {
        let mut config = TenantConfig {
            name: "t".into(),
            tenant_id: "tid".into(),
            client_id: "cid".into(),
            credential: crate::model::inventory::Credential::ClientSecret(
                crate::model::inventory::SecretRef::Env("X".into()),
            ),
            graph_url: "graph.microsoft.com".into(),
            login_url: "https://login.microsoftonline.com".into(),
            users: Default::default(),
            organization: None,
            profile: None,
        };
        let err = GraphTenant::new(&config).unwrap_err();
        assert!(err.message.contains("graph_url"), "{}", err.message);
        config.graph_url = "https://graph.microsoft.com".into();
        config.login_url = "login".into();
        let err = GraphTenant::new(&config).unwrap_err();
        assert!(err.message.contains("login_url"), "{}", err.message);
        config.login_url = "https://login.microsoftonline.us".into();
        assert!(GraphTenant::new(&config).is_ok());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(0), Duration::from_millis(500));
        assert_eq!(policy.backoff(2), Duration::from_secs(2));
        assert_eq!(policy.backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn exact_serial_wins_over_contains_matches() {
        let ids = vec![
            AutopilotIdentity {
                id: "a".into(),
                serial_number: "PF12".into(),
                ..Default::default()
            },
            AutopilotIdentity {
                id: "b".into(),
                serial_number: "pf1".into(),
                ..Default::default()
            },
        ];
        assert_eq!(pick_identity("PF1", ids.clone()).unwrap().id, "b");
        let err = pick_identity("PF9", ids).unwrap_err();
        assert!(err.hint.unwrap().contains("hardware hash"));
    }
}
