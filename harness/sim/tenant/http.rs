//! The tenant over HTTP: the token endpoint and the Graph API, answering as Graph does
//! (`{error:{code,message}}`, 401 without a valid token, 403 without the permission,
//! 429 with Retry-After).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Form, OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{App, AppCredential, Identity, JoinKind, ManagedDevice, SimTenant, TenantState, guid};
use crate::sim::clock::LabTime;

/// The token endpoint and the Graph API (`/v1.0` and `/beta` share handlers; a handler
/// that differs by version looks at the path).
pub(super) fn router(sim: SimTenant) -> Router {
    let graph = Router::new()
        .route(
            "/deviceManagement/windowsAutopilotDeviceIdentities",
            get(list_identities),
        )
        .route(
            "/deviceManagement/windowsAutopilotDeviceIdentities/{id}",
            get(get_identity),
        )
        .route(
            "/deviceManagement/windowsAutopilotDeviceIdentities/{id}/{action}",
            post(identity_action).get(identity_relation),
        )
        .route(
            "/deviceManagement/managedDevices/{id}",
            get(get_managed_device).delete(delete_managed_device),
        )
        .route(
            "/deviceManagement/importedWindowsAutopilotDeviceIdentities/import",
            post(import_identities),
        )
        .route(
            "/deviceManagement/importedWindowsAutopilotDeviceIdentities/{id}",
            get(get_import),
        );
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .nest("/v1.0", graph.clone())
        .nest("/beta", graph)
        .fallback(|| async { GraphFault::bad_request("Invalid version or resource") })
        .with_state(sim)
}

/// A Graph error answer: `{error:{code,message}}`, with Retry-After on a 429.
#[derive(Debug)]
struct GraphFault {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl GraphFault {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphFault {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFound", message)
    }

    fn no_segment(segment: &str) -> Self {
        Self::bad_request(format!("Resource not found for the segment '{segment}'."))
    }
}

impl IntoResponse for GraphFault {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message,
            "innerError": {"date": jiff::Timestamp::now().to_string()}}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

type GraphResult<T> = Result<T, GraphFault>;

fn login_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (status, Json(body)).into_response()
}

/// The host (and port) the client addressed, as URLs it sees must name it.
fn request_host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
}

/// The URL the client posted to, as the `aud` of its client assertion must name it.
fn token_url(headers: &HeaderMap, tenant_id: &str) -> String {
    format!(
        "http://{}/{tenant_id}/oauth2/v2.0/token",
        request_host(headers)
    )
}

/// Checks a client secret, or a client assertion against the app's certificate, as
/// Entra does; the error is the AADSTS description.
fn check_credential(
    app: &App,
    form: &HashMap<String, String>,
    audience: &str,
) -> Result<(), String> {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    match &app.credential {
        AppCredential::Secret(secret) if field("client_secret") == secret => Ok(()),
        AppCredential::Secret(_) => Err(format!(
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the \
             request is the client secret value, not the client secret ID, for a secret added \
             to app '{}'.",
            app.client_id
        )),
        AppCredential::Certificate(certificate) => {
            let refused = |why: &str| {
                Err(format!(
                    "AADSTS700027: Client assertion failed signature validation. ({why})"
                ))
            };
            if field("client_assertion_type")
                != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            {
                return Err(format!(
                    "AADSTS7000218: The request body must contain the following parameter: \
                     'client_assertion' or 'client_secret' (app '{}').",
                    app.client_id
                ));
            }
            let assertion = field("client_assertion");
            let Ok(header) = jsonwebtoken::decode_header(assertion) else {
                return refused("not a JWT");
            };
            let thumbprint = pem::parse(certificate).ok().map(|p| {
                use base64::Engine;
                use sha2::Digest;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(p.contents()))
            });
            if header.x5t_s256.is_none() || header.x5t_s256 != thumbprint {
                return refused("the certificate named by x5t#S256 is not registered");
            }
            let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(certificate.as_bytes()) else {
                return refused("the registered certificate has no RSA key");
            };
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[audience]);
            validation.set_issuer(&[app.client_id.as_str()]);
            validation.sub = Some(app.client_id.clone());
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
                Ok(_) => Ok(()),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature
                    | jsonwebtoken::errors::ErrorKind::ImmatureSignature => Err(
                        "AADSTS700024: Client assertion is not within its valid time range."
                            .to_string(),
                    ),
                    _ => refused(&e.to_string()),
                },
            }
        }
    }
}

async fn token(
    State(sim): State<SimTenant>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let now = sim.clock.now();
    let mut state = sim.state();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let refusal = if field("grant_type") != "client_credentials" {
        Some((
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        ))
    } else if !field("scope").ends_with("/.default") {
        Some((
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows \
             must have a scope value with /.default suffixed to the resource identifier.",
        ))
    } else {
        None
    };
    if let Some((status, error, description)) = refusal {
        state.stats.token_refusals += 1;
        return login_error(status, error, description);
    }
    let in_tenant: Vec<&App> = state
        .apps
        .iter()
        .filter(|a| a.tenant_id == tenant_id)
        .collect();
    let outcome = if in_tenant.is_empty() {
        Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("AADSTS90002: Tenant '{tenant_id}' not found."),
        ))
    } else {
        match in_tenant.iter().find(|a| a.client_id == field("client_id")) {
            None => Err((
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                format!(
                    "AADSTS700016: Application with identifier '{}' was not found in the \
                     directory '{tenant_id}'.",
                    field("client_id")
                ),
            )),
            Some(app) => match check_credential(app, &form, &token_url(&headers, &tenant_id)) {
                Ok(()) => Ok(app.tenant.clone()),
                Err(description) => Err((StatusCode::UNAUTHORIZED, "invalid_client", description)),
            },
        }
    };
    match outcome {
        Err((status, error, description)) => {
            state.stats.token_refusals += 1;
            login_error(status, error, &description)
        }
        Ok(tenant) => {
            let lifetime = state.settings.token_lifetime;
            // Shaped like Entra's app-only tokens: a JWT whose `roles` are the granted
            // permissions (signed with a throwaway key; only this server checks tokens,
            // by lookup).
            let claims = json!({
                "aud": format!("http://{}", request_host(&headers)),
                "iss": format!("https://sts.windows.net/{tenant_id}/"),
                "tid": tenant_id,
                "appid": field("client_id"),
                "roles": state.permissions.iter().collect::<Vec<_>>(),
                "iat": now.as_secs(),
                "exp": (now + lifetime).as_secs(),
                "jti": format!("{:032x}", rand::random::<u128>()),
            });
            let key = jsonwebtoken::EncodingKey::from_secret(&rand::random::<[u8; 32]>());
            let value = match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            {
                Ok(jwt) => jwt,
                Err(_) => format!("simtoken-{:032x}", rand::random::<u128>()),
            };
            state.tokens.insert(value.clone(), (tenant, now + lifetime));
            state.stats.tokens_issued += 1;
            Json(
                json!({"token_type": "Bearer", "expires_in": lifetime.as_secs(),
                "ext_expires_in": lifetime.as_secs(), "access_token": value}),
            )
            .into_response()
        }
    }
}

const READ_IDENTITIES: &[&str] = &[
    "DeviceManagementServiceConfig.Read.All",
    "DeviceManagementServiceConfig.ReadWrite.All",
];
const WRITE_IDENTITIES: &[&str] = &["DeviceManagementServiceConfig.ReadWrite.All"];
const READ_DEVICES: &[&str] = &[
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];
const WRITE_DEVICES: &[&str] = &["DeviceManagementManagedDevices.ReadWrite.All"];

impl TenantState {
    fn throttled(&mut self, now: Instant) -> GraphFault {
        self.stats.throttled += 1;
        let wait = self.settings.retry_after;
        self.throttled_until = Some(now + wait);
        let mut fault = GraphFault::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests from this application; retry after the given delay",
        );
        fault.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        fault
    }

    /// A 429 for a request inside the current throttling window: Retry-After is what is
    /// left of it.
    fn still_throttled(&mut self, left: Duration) -> GraphFault {
        self.stats.throttled += 1;
        let mut fault = GraphFault::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests from this application; retry after the given delay",
        );
        fault.retry_after = Some(left.as_secs() + u64::from(left.subsec_nanos() > 0));
        fault
    }

    /// Outage, authentication, throttling and permission, in that order. `permissions`:
    /// any one of them allows the request. Returns the caller's tenant.
    fn pass(
        &mut self,
        headers: &HeaderMap,
        permissions: &[&str],
        now: LabTime,
    ) -> GraphResult<String> {
        self.stats.graph_requests += 1;
        if self.fail_next.0 > 0 {
            self.fail_next.0 -= 1;
            self.stats.failed += 1;
            let status =
                StatusCode::from_u16(self.fail_next.1).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(GraphFault::new(
                status,
                "ServiceUnavailable",
                "The service is temporarily unavailable",
            ));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let tenant = match self.tokens.get(bearer) {
            _ if bearer.is_empty() => Err("Access token is empty."),
            None => Err("Invalid JWT token. The token is not issued by this tenant."),
            Some((_, expiry)) if now >= *expiry => {
                Err("Lifetime validation failed, the token is expired.")
            }
            Some((tenant, _)) => Ok(tenant.clone()),
        };
        let tenant = tenant.map_err(|message| {
            self.stats.unauthorized += 1;
            GraphFault::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            )
        })?;
        let wall = Instant::now();
        if let Some(until) = self.throttled_until.filter(|until| wall < *until) {
            // A request inside the window is refused for the rest of it, without
            // extending it: other clients that honour Retry-After must get through
            // when it ends (extending it on every early request starves them all).
            self.stats.early_retries += 1;
            return Err(self.still_throttled(until - wall));
        }
        if self.throttle_next > 0 {
            self.throttle_next -= 1;
            return Err(self.throttled(wall));
        }
        if !permissions.iter().any(|p| self.permissions.contains(*p)) {
            self.stats.forbidden += 1;
            return Err(GraphFault::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "Application is not authorized to perform this operation. Application must \
                     have one of the following scopes: {}",
                    permissions.join(", ")
                ),
            ));
        }
        Ok(tenant)
    }

    /// The GraphThrottle fault of the device this request is about.
    fn device_throttle(&mut self, identity_id: &str) -> GraphResult<()> {
        let Some(identity) = self.identities.get_mut(identity_id) else {
            return Ok(());
        };
        if identity.throttle == 0 {
            return Ok(());
        }
        identity.throttle -= 1;
        Err(self.throttled(Instant::now()))
    }

    /// The identity `id` in `tenant`, or Graph's 404.
    fn identity_in(&self, tenant: &str, id: &str) -> GraphResult<&Identity> {
        self.identities
            .get(id)
            .filter(|i| i.tenant == tenant)
            .ok_or_else(|| {
                GraphFault::not_found(format!("windowsAutopilotDeviceIdentity {id} not found"))
            })
    }

    /// The Intune record `id` in `tenant`, or Graph's 404.
    fn record_in(&self, tenant: &str, id: &str) -> GraphResult<&ManagedDevice> {
        self.managed
            .get(id)
            .filter(|r| {
                self.by_serial(&r.serial)
                    .is_some_and(|i| i.tenant == tenant)
            })
            .ok_or_else(|| GraphFault::not_found(format!("managedDevice {id} not found")))
    }

    /// The identity whose Intune record is `record_id`.
    fn identity_of_record(&self, record_id: &str) -> Option<String> {
        self.identities
            .values()
            .find(|i| i.managed_device_id.as_deref() == Some(record_id))
            .map(|i| i.id.clone())
    }
}

fn is_beta(uri: &OriginalUri) -> bool {
    uri.path().starts_with("/beta/")
}

/// The serial in `contains(serialNumber,'X')`, unescaped; or Graph's 400.
fn serial_filter(filter: &str) -> GraphResult<String> {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\s*contains\(\s*serialNumber\s*,\s*'((?:[^']|'')*)'\s*\)\s*$")
            .expect("a valid pattern")
    });
    if let Some(captures) = PATTERN.captures(filter) {
        return Ok(captures[1].replace("''", "'"));
    }
    Err(GraphFault::bad_request(if filter.contains(" eq ") {
        "Filter on serialNumber with operator 'eq' is not supported. Use contains(serialNumber,'value')."
    } else {
        "Invalid filter clause"
    }))
}

async fn list_identities(
    State(sim): State<SimTenant>,
    uri: OriginalUri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult<Response> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, READ_IDENTITIES, now)?;
    let wanted = match query.get("$filter") {
        Some(filter) => Some(serial_filter(filter)?.to_ascii_lowercase()),
        None => None,
    };
    let matching: Vec<String> = state
        .identities
        .values()
        .filter(|i| i.tenant == tenant)
        .filter(|i| {
            wanted
                .as_ref()
                .is_none_or(|w| i.serial.to_ascii_lowercase().contains(w))
        })
        .map(|i| i.id.clone())
        .collect();
    for id in &matching {
        state.device_throttle(id)?;
    }
    let skip: usize = query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let page_size = state.settings.page_size.max(1);
    let beta = is_beta(&uri);
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(page_size)
        .filter_map(|id| state.identities.get(id))
        .map(|i| state.identity_json(i, beta, now))
        .collect();
    let mut body = json!({"value": page});
    if skip + page_size < matching.len() {
        let host = request_host(&headers);
        let mut next = reqwest::Url::parse(&format!("http://{host}{}", uri.path()))
            .map_err(|e| GraphFault::bad_request(format!("bad Host header: {e}")))?;
        {
            let mut pairs = next.query_pairs_mut();
            if let Some(filter) = query.get("$filter") {
                pairs.append_pair("$filter", filter);
            }
            pairs.append_pair("$skiptoken", &(skip + page_size).to_string());
        }
        body["@odata.nextLink"] = json!(next.as_str());
    }
    Ok(Json(body).into_response())
}

async fn get_identity(
    State(sim): State<SimTenant>,
    uri: OriginalUri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult<Response> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, READ_IDENTITIES, now)?;
    state.device_throttle(&id)?;
    let identity = state.identity_in(&tenant, &id)?;
    Ok(Json(state.identity_json(identity, is_beta(&uri), now)).into_response())
}

async fn identity_relation(
    State(sim): State<SimTenant>,
    headers: HeaderMap,
    Path((id, relation)): Path<(String, String)>,
) -> GraphResult<Response> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, READ_IDENTITIES, now)?;
    if relation != "deploymentProfile" {
        return Err(GraphFault::no_segment(&relation));
    }
    state.device_throttle(&id)?;
    let identity = state.identity_in(&tenant, &id)?;
    let assigned = state.assignment_status(identity, now) == "assignedInSync";
    let Some((name, join)) = state.profile_of(identity).filter(|_| assigned) else {
        return Err(GraphFault::not_found(
            "No deployment profile is assigned to this device",
        ));
    };
    let (odata_type, profile_id) = match join {
        JoinKind::Entra => (
            "#microsoft.graph.azureADWindowsAutopilotDeploymentProfile",
            guid(9, 1),
        ),
        JoinKind::Hybrid => (
            "#microsoft.graph.activeDirectoryWindowsAutopilotDeploymentProfile",
            guid(9, 2),
        ),
    };
    Ok(Json(json!({
        "@odata.type": odata_type,
        "id": profile_id,
        "displayName": name,
        "language": "os-default",
        "deviceType": "windowsPc",
        "enableWhiteGlove": identity.allow_preprovisioning,
        "deviceNameTemplate": "",
    }))
    .into_response())
}

async fn identity_action(
    State(sim): State<SimTenant>,
    uri: OriginalUri,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> GraphResult<StatusCode> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, WRITE_IDENTITIES, now)?;
    let everywhere = [
        "assignUserToDevice",
        "unassignUserFromDevice",
        "updateDeviceProperties",
    ];
    let beta_only = action == "allowNextEnrollment";
    if !(everywhere.contains(&action.as_str()) || (beta_only && is_beta(&uri))) {
        return Err(GraphFault::no_segment(&action));
    }
    state.device_throttle(&id)?;
    state.identity_in(&tenant, &id)?;
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| GraphFault::bad_request(format!("Invalid request body: {e}")))?
    };
    let text = |k: &str| input.get(k).and_then(Value::as_str).map(str::to_string);
    let known_users = state.users.clone();
    let identity = state
        .identities
        .get_mut(&id)
        .ok_or_else(|| GraphFault::not_found("not found"))?;
    match action.as_str() {
        "assignUserToDevice" => {
            let upn = text("userPrincipalName").unwrap_or_default();
            if !upn.contains('@') {
                return Err(GraphFault::bad_request(
                    "userPrincipalName is required and must be a UPN",
                ));
            }
            if !known_users.is_empty() && !known_users.contains(&upn.to_ascii_lowercase()) {
                return Err(GraphFault::bad_request(format!(
                    "User '{upn}' was not found in the directory"
                )));
            }
            identity.user = Some((upn, text("addressableUserName").unwrap_or_default()));
        }
        "unassignUserFromDevice" => identity.user = None,
        "updateDeviceProperties" => {
            if let Some(tag) = text("groupTag")
                && tag != identity.group_tag
            {
                identity.group_tag = tag;
                identity.tag_changed_at = Some(now);
            }
            if let Some(upn) = text("userPrincipalName") {
                let addressable = text("addressableUserName").unwrap_or_default();
                identity.user = (!upn.is_empty()).then_some((upn, addressable));
            }
        }
        // allowNextEnrollment
        _ => identity.blocked = false,
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn get_managed_device(
    State(sim): State<SimTenant>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult<Response> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, READ_DEVICES, now)?;
    if let Some(identity) = state.identity_of_record(&id) {
        state.device_throttle(&identity)?;
    }
    let record = state.record_in(&tenant, &id)?;
    Ok(Json(json!({
        "id": id,
        "serialNumber": record.serial,
        "complianceState": state.compliance_of(record, now),
        "managementAgent": "mdm",
        "operatingSystem": "Windows",
    }))
    .into_response())
}

async fn delete_managed_device(
    State(sim): State<SimTenant>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult<StatusCode> {
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, WRITE_DEVICES, now)?;
    let identity = state.identity_of_record(&id);
    if let Some(identity) = &identity {
        state.device_throttle(identity)?;
    }
    state.record_in(&tenant, &id)?;
    state.managed.remove(&id);
    if let Some(identity) = identity.and_then(|i| state.identities.get_mut(&i)) {
        identity.managed_device_id = None;
        identity.enrollment_state = "notContacted";
        identity.blocked = false;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `importedWindowsAutopilotDeviceIdentities/import`: registers each device (a new
/// identity whose profile assignment is `pending` for a while, as after a real import).
/// The import answers `pending`; reading it back shows `complete`.
/// The hardware hash must be padded base64; a serial already registered is refused with
/// 806 (ZtdDeviceAlreadyAssigned).
async fn import_identities(
    State(sim): State<SimTenant>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> GraphResult<Response> {
    use base64::Engine;
    let now = sim.clock.now();
    let mut state = sim.state();
    let tenant = state.pass(&headers, WRITE_IDENTITIES, now)?;
    let input: Value = serde_json::from_slice(&body)
        .map_err(|e| GraphFault::bad_request(format!("Invalid request body: {e}")))?;
    let items = input
        .get("importedWindowsAutopilotDeviceIdentities")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GraphFault::bad_request("importedWindowsAutopilotDeviceIdentities is required")
        })?;
    let mut results = Vec::new();
    for item in items {
        let text = |k: &str| {
            item.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let serial = text("serialNumber");
        let hash = text("hardwareIdentifier");
        let import_id = state.new_id(4);
        let hash_ok = !hash.is_empty()
            && base64::engine::general_purpose::STANDARD
                .decode(hash.as_bytes())
                .is_ok();
        let (status, code, name, registration) = if serial.trim().is_empty() || !hash_ok {
            ("error", 0, "InvalidHardwareHash", String::new())
        } else if state.by_serial(&serial).is_some() {
            ("error", 806, "ZtdDeviceAlreadyAssigned", String::new())
        } else {
            // A device the inventory knows keeps its sim flags; another one is generic.
            let known = state.unregistered.remove(&serial);
            let id = state.register(&tenant, &serial, "Virtual PC", "aplab", "");
            if let Some(identity) = state.identities.get_mut(&id) {
                if let Some(known) = known {
                    *identity = Identity {
                        id: id.clone(),
                        tenant: tenant.clone(),
                        ..known
                    };
                }
                identity.group_tag = text("groupTag");
                // Profile assignment takes a while after an import.
                identity.tag_changed_at = Some(now);
                let upn = text("assignedUserPrincipalName");
                identity.user = (!upn.is_empty()).then(|| (upn, String::new()));
            }
            ("pending", 0, "", id)
        };
        let entry = json!({
            "id": import_id,
            "serialNumber": serial,
            "groupTag": text("groupTag"),
            "assignedUserPrincipalName": text("assignedUserPrincipalName"),
            "state": {
                "deviceImportStatus": status,
                "deviceRegistrationId": registration,
                "deviceErrorCode": code,
                "deviceErrorName": name,
            },
        });
        state.imports.insert(import_id, entry.clone());
        results.push(entry);
    }
    Ok(Json(json!({"value": results})).into_response())
}

async fn get_import(
    State(sim): State<SimTenant>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult<Response> {
    let now = sim.clock.now();
    let mut state = sim.state();
    state.pass(&headers, READ_IDENTITIES, now)?;
    let entry = state.imports.get_mut(&id).ok_or_else(|| {
        GraphFault::not_found(format!(
            "importedWindowsAutopilotDeviceIdentity {id} not found"
        ))
    })?;
    if entry["state"]["deviceImportStatus"] == "pending" {
        entry["state"]["deviceImportStatus"] = json!("complete");
    }
    Ok(Json(entry.clone()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_filters_follow_graph() {
        assert_eq!(
            serial_filter("contains(serialNumber,'O''B 1')").unwrap(),
            "O'B 1"
        );
        let refused = serial_filter("serialNumber eq 'PF1'").unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.message.contains("'eq' is not supported"));
    }
}
