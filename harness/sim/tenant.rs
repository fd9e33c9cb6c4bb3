//! The virtual lab's tenant: a Graph-style HTTP server (token endpoint, Autopilot
//! identities, deployment profiles, Intune records) over one [`TenantState`], which the
//! simulated devices also reach through [`TenantView`] when they enroll.
//!
//! Seeded from the validated inventory: every device with a tenant becomes an Autopilot
//! identity if its `sim.registered` says so. Two deployment profiles, chosen by group tag:
//! `entra` (Entra join) and `hybrid` (hybrid join); a tag change leaves the assignment
//! `pending` for [`Settings::assignment_delay`] of lab time. Token lifetimes and
//! compliance re-evaluation run in lab time; Retry-After is wall time, because it is the
//! harness's HTTP client that must wait it out.
//!
//! Test controls (on [`SimTenant`]): expire every token, throttle or fail the next N
//! requests, revoke a permission, read counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Form, OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::clock::{LabClock, LabTime};
use crate::model::inventory::{Credential, Fault, Inventory, SecretRef, SimDevice};

// ---- The device side's view of the tenant (a copy of sim/enrollment.rs's contract) ----

/// How the device joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Entra,
    Hybrid,
}

/// What the device downloads when it enrolls: the configuration screen's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub ztd_id: String,
    pub profile_name: String,
    pub organization: String,
    pub assigned_user: Option<String>,
    pub join: JoinKind,
    pub esp_enabled: bool,
}

/// An enrollment refused, with the code Windows shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollError {
    pub code: String,
    pub message: String,
}

/// The tenant as a simulated device reaches it.
pub trait TenantView: Send {
    /// The technician flow asks to enroll (pre-provisioning).
    fn begin_enrollment(&mut self, serial: &str, now: LabTime) -> Result<Enrollment, EnrollError>;
    /// The profile the device would download, if any (no side effects).
    fn profile_for(&self, serial: &str) -> Option<Enrollment>;
    fn technician_completed(&mut self, serial: &str, now: LabTime);
    fn user_flow_started(&mut self, serial: &str, now: LabTime);
    fn user_flow_completed(&mut self, serial: &str, now: LabTime);
}

// ---- State ----

/// Application permissions a sim app is granted by default.
pub const ALL_PERMISSIONS: [&str; 2] = [
    "DeviceManagementServiceConfig.ReadWrite.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];

const ENTRA_PROFILE: &str = "Contoso Entra Pre-provisioning";
const HYBRID_PROFILE: &str = "Contoso Hybrid Pre-provisioning";
const NO_ID: &str = "00000000-0000-0000-0000-000000000000";

/// Timing and paging of the sim tenant.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of an access token (lab time); `expires_in` says so.
    pub token_lifetime: Duration,
    /// From a group tag change until the profile shows `assignedInSync` (lab time).
    pub assignment_delay: Duration,
    /// From the end of the user flow until compliance is `compliant` again (lab time).
    pub compliance_delay: Duration,
    /// Retry-After sent with a 429 (wall time, whole seconds).
    pub retry_after: Duration,
    /// Items per page of a collection (`@odata.nextLink` beyond).
    pub page_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime: Duration::from_secs(3600),
            assignment_delay: Duration::from_secs(5 * 60),
            compliance_delay: Duration::from_secs(15 * 60),
            retry_after: Duration::from_secs(1),
            page_size: 100,
        }
    }
}

/// What an app proves itself with.
#[derive(Debug, Clone)]
pub enum AppCredential {
    Secret(String),
    /// The PEM certificate uploaded to the app: client assertions must be signed by its
    /// key and name it in `x5t#S256`.
    Certificate(String),
}

/// One app registration the tenant accepts.
#[derive(Debug, Clone)]
pub struct App {
    /// The inventory's name of this tenant credential set.
    pub tenant: String,
    pub tenant_id: String,
    pub client_id: String,
    pub credential: AppCredential,
    pub organization: String,
    /// Display name of the Entra profile (the inventory's expected profile, if given).
    pub entra_profile: String,
}

#[derive(Debug, Clone)]
struct Identity {
    id: String,
    tenant: String,
    serial: String,
    model: String,
    manufacturer: String,
    group_tag: String,
    tag_changed_at: Option<LabTime>,
    enrollment_state: &'static str,
    user: Option<(String, String)>,
    managed_device_id: Option<String>,
    aad_device_id: Option<String>,
    /// Enrolled through pre-provisioning and not yet unblocked (0x80180014).
    blocked: bool,
    allow_preprovisioning: bool,
    esp_enabled: bool,
    /// GraphThrottle fault: this many requests about this device answer 429.
    throttle: u32,
}

#[derive(Debug, Clone)]
struct ManagedDevice {
    serial: String,
    compliance: &'static str,
    /// Compliance turns `compliant` at this lab time (re-evaluation after the user flow).
    compliant_at: Option<LabTime>,
}

/// Counters a test reads to prove what happened on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub tokens_issued: u64,
    pub token_refusals: u64,
    pub graph_requests: u64,
    pub throttled: u64,
    /// Requests that came back inside a Retry-After window.
    pub early_retries: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub failed: u64,
}

/// The tenant's data and rules.
#[derive(Debug)]
pub struct TenantState {
    apps: Vec<App>,
    settings: Settings,
    identities: BTreeMap<String, Identity>,
    managed: BTreeMap<String, ManagedDevice>,
    /// Devices the inventory lists as not registered, by serial, as they will be once
    /// their hardware hash is imported.
    unregistered: BTreeMap<String, Identity>,
    /// Hardware hash imports by id: their `state`, `complete` once read back.
    imports: BTreeMap<String, Value>,
    /// Known users by UPN (from the inventory); empty = accept any UPN.
    users: BTreeSet<String>,
    tokens: HashMap<String, (String, LabTime)>,
    permissions: BTreeSet<String>,
    throttle_next: u32,
    fail_next: (u32, u16),
    throttled_until: Option<Instant>,
    next_id: u64,
    stats: Stats,
}

fn guid(kind: u32, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-4000-8000-{n:012x}",
        0x5a1a_b000u32 + kind,
        kind
    )
}

fn read_secret(secret: &SecretRef) -> Result<String, String> {
    match secret {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| {
            format!("environment variable {name} (the tenant's client secret) is not set")
        }),
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("cannot read the client secret file {}: {e}", path.display())),
    }
}

impl TenantState {
    pub fn new(apps: Vec<App>, settings: Settings) -> Self {
        TenantState {
            apps,
            settings,
            identities: BTreeMap::new(),
            managed: BTreeMap::new(),
            unregistered: BTreeMap::new(),
            imports: BTreeMap::new(),
            users: BTreeSet::new(),
            tokens: HashMap::new(),
            permissions: ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
            throttle_next: 0,
            fail_next: (0, 503),
            throttled_until: None,
            next_id: 1,
            stats: Stats::default(),
        }
    }

    /// Seeds the tenant from the inventory: its credential sets become app registrations
    /// (secrets read from their references), its devices with a tenant become identities.
    pub fn from_inventory(inventory: &Inventory, settings: Settings) -> Result<Self, String> {
        let mut apps = Vec::new();
        let mut users = BTreeSet::new();
        for (name, config) in &inventory.tenants {
            let credential = match &config.credential {
                Credential::ClientSecret(secret) => AppCredential::Secret(
                    read_secret(secret).map_err(|e| format!("virtual tenant {name}: {e}"))?,
                ),
                Credential::Certificate { certificate, .. } => AppCredential::Certificate(
                    std::fs::read_to_string(certificate).map_err(|e| {
                        format!(
                            "virtual tenant {name}: cannot read certificate {}: {e}",
                            certificate.display()
                        )
                    })?,
                ),
            };
            users.extend(config.users.values().map(|u| u.upn.to_ascii_lowercase()));
            apps.push(App {
                tenant: name.clone(),
                tenant_id: config.tenant_id.clone(),
                client_id: config.client_id.clone(),
                credential,
                organization: config
                    .organization
                    .clone()
                    .unwrap_or_else(|| "Contoso".into()),
                entra_profile: config
                    .profile
                    .clone()
                    .unwrap_or_else(|| ENTRA_PROFILE.into()),
            });
        }
        let mut state = TenantState::new(apps, settings);
        state.users = users;
        for device in &inventory.devices {
            let Some(tenant) = &device.tenant else {
                continue;
            };
            let sim = device.sim.clone().unwrap_or(SimDevice {
                registered: true,
                allow_preprovisioning: true,
                ..SimDevice::default()
            });
            let group_tag = ["group_tag", "group-tag", "groupTag"]
                .iter()
                .find_map(|k| device.tags.get(*k).cloned())
                .unwrap_or_else(|| "entra".into());
            let throttle = sim
                .faults
                .iter()
                .map(|f| match f {
                    Fault::GraphThrottle { requests } => *requests,
                    _ => 0,
                })
                .sum();
            let id = state.register(
                tenant,
                &device.serial,
                &device.model,
                &device.manufacturer,
                &group_tag,
            );
            let Some(mut identity) = state.identities.remove(&id) else {
                continue;
            };
            identity.allow_preprovisioning = sim.allow_preprovisioning;
            identity.esp_enabled = !sim.esp_disabled;
            identity.throttle = throttle;
            if sim.registered {
                state.identities.insert(id, identity);
            } else {
                state.unregistered.insert(device.serial.clone(), identity);
            }
        }
        Ok(state)
    }

    /// Registers a device (as a hardware hash import would); returns its ZtdId. The
    /// profile is assigned from the start (the lab begins settled).
    pub fn register(
        &mut self,
        tenant: &str,
        serial: &str,
        model: &str,
        manufacturer: &str,
        group_tag: &str,
    ) -> String {
        let id = self.new_id(1);
        self.unregistered.remove(serial);
        self.identities.insert(
            id.clone(),
            Identity {
                id: id.clone(),
                tenant: tenant.to_string(),
                serial: serial.to_string(),
                model: model.to_string(),
                manufacturer: manufacturer.to_string(),
                group_tag: group_tag.to_string(),
                tag_changed_at: None,
                enrollment_state: "notContacted",
                user: None,
                managed_device_id: None,
                aad_device_id: None,
                blocked: false,
                allow_preprovisioning: true,
                esp_enabled: true,
                throttle: 0,
            },
        );
        id
    }

    fn new_id(&mut self, kind: u32) -> String {
        self.next_id += 1;
        guid(kind, self.next_id)
    }

    fn by_serial(&self, serial: &str) -> Option<&Identity> {
        self.identities
            .values()
            .find(|i| i.serial.eq_ignore_ascii_case(serial.trim()))
    }

    fn by_serial_mut(&mut self, serial: &str) -> Option<&mut Identity> {
        self.identities
            .values_mut()
            .find(|i| i.serial.eq_ignore_ascii_case(serial.trim()))
    }

    fn app_of(&self, tenant: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.tenant == tenant)
    }

    /// The profile a group tag selects: (display name, join).
    fn profile_of(&self, identity: &Identity) -> Option<(String, JoinKind)> {
        match identity.group_tag.to_ascii_lowercase().as_str() {
            "entra" => Some((
                self.app_of(&identity.tenant)
                    .map(|a| a.entra_profile.clone())
                    .unwrap_or_else(|| ENTRA_PROFILE.into()),
                JoinKind::Entra,
            )),
            "hybrid" => Some((HYBRID_PROFILE.into(), JoinKind::Hybrid)),
            _ => None,
        }
    }

    fn assignment_status(&self, identity: &Identity, now: LabTime) -> &'static str {
        if self.profile_of(identity).is_none() {
            "notAssigned"
        } else if identity
            .tag_changed_at
            .is_some_and(|at| now < at + self.settings.assignment_delay)
        {
            "pending"
        } else {
            "assignedInSync"
        }
    }

    fn compliance_of(&self, record: &ManagedDevice, now: LabTime) -> &'static str {
        match record.compliant_at {
            Some(at) if now >= at => "compliant",
            _ => record.compliance,
        }
    }

    fn identity_json(&self, identity: &Identity, beta: bool, now: LabTime) -> Value {
        let mut value = json!({
            "id": identity.id,
            "serialNumber": identity.serial,
            "model": identity.model,
            "manufacturer": identity.manufacturer,
            "groupTag": identity.group_tag,
            "enrollmentState": identity.enrollment_state,
            "userPrincipalName": identity.user.as_ref().map(|u| u.0.as_str()).unwrap_or(""),
            "addressableUserName": identity.user.as_ref().map(|u| u.1.as_str()).unwrap_or(""),
            "managedDeviceId": identity.managed_device_id.as_deref().unwrap_or(NO_ID),
            "azureActiveDirectoryDeviceId": identity.aad_device_id.as_deref().unwrap_or(NO_ID),
            "purchaseOrderIdentifier": "",
            "productKey": "",
        });
        if beta {
            value["deploymentProfileAssignmentStatus"] =
                json!(self.assignment_status(identity, now));
        }
        value
    }

    fn enrollment_of(&self, identity: &Identity) -> Option<Enrollment> {
        let (profile_name, join) = self.profile_of(identity)?;
        Some(Enrollment {
            ztd_id: identity.id.clone(),
            profile_name,
            organization: self
                .app_of(&identity.tenant)
                .map(|a| a.organization.clone())
                .unwrap_or_else(|| "Contoso".into()),
            assigned_user: identity.user.as_ref().map(|u| u.0.clone()),
            join,
            esp_enabled: identity.esp_enabled,
        })
    }

    /// The ZtdId of a registered serial (for tests and the lab's own checks).
    pub fn ztd_id(&self, serial: &str) -> Option<String> {
        self.by_serial(serial).map(|i| i.id.clone())
    }

    /// The compliance state of the serial's Intune record, if it has one.
    pub fn compliance(&self, serial: &str, now: LabTime) -> Option<&'static str> {
        let id = self.by_serial(serial)?.managed_device_id.as_ref()?;
        self.managed.get(id).map(|r| self.compliance_of(r, now))
    }
}

impl TenantView for TenantState {
    fn begin_enrollment(&mut self, serial: &str, now: LabTime) -> Result<Enrollment, EnrollError> {
        let Some(identity) = self.by_serial(serial) else {
            return Err(EnrollError {
                code: "807".into(),
                message: "ZtdDeviceIsNotRegistered: this device is not registered for Windows \
                          Autopilot (event 807)"
                    .into(),
            });
        };
        if self.assignment_status(identity, now) != "assignedInSync" {
            return Err(EnrollError {
                code: "809".into(),
                message: "no Windows Autopilot profile is assigned to this device (event 809)"
                    .into(),
            });
        }
        if !identity.allow_preprovisioning {
            return Err(EnrollError {
                code: "0x80180005".into(),
                message: "the Autopilot profile does not allow pre-provisioning".into(),
            });
        }
        if identity.blocked {
            return Err(EnrollError {
                code: "0x80180014".into(),
                message: "enrollment is blocked: this device was already pre-provisioned; \
                          delete its Intune record or allow the next enrollment"
                    .into(),
            });
        }
        self.enrollment_of(identity).ok_or_else(|| EnrollError {
            code: "809".into(),
            message: "no Windows Autopilot profile is assigned to this device (event 809)".into(),
        })
    }

    fn profile_for(&self, serial: &str) -> Option<Enrollment> {
        self.enrollment_of(self.by_serial(serial)?)
    }

    fn technician_completed(&mut self, serial: &str, _now: LabTime) {
        let record_id = self.new_id(2);
        let aad_id = self.new_id(3);
        let Some(identity) = self.by_serial_mut(serial) else {
            return;
        };
        let old = identity.managed_device_id.replace(record_id.clone());
        identity.aad_device_id.get_or_insert(aad_id);
        identity.enrollment_state = "enrolled";
        identity.blocked = true;
        let serial = identity.serial.clone();
        if let Some(old) = old {
            self.managed.remove(&old);
        }
        self.managed.insert(
            record_id,
            ManagedDevice {
                serial,
                compliance: "compliant",
                compliant_at: None,
            },
        );
    }

    fn user_flow_started(&mut self, serial: &str, _now: LabTime) {
        if let Some(record) = self.record_of_mut(serial) {
            record.compliance = "noncompliant";
            record.compliant_at = None;
        }
    }

    fn user_flow_completed(&mut self, serial: &str, now: LabTime) {
        let delay = self.settings.compliance_delay;
        if let Some(record) = self.record_of_mut(serial) {
            record.compliant_at = Some(now + delay);
        }
    }
}

impl TenantState {
    fn record_of_mut(&mut self, serial: &str) -> Option<&mut ManagedDevice> {
        let id = self.by_serial(serial)?.managed_device_id.clone()?;
        self.managed.get_mut(&id)
    }
}

// ---- The shared handle, the server and its test controls ----

/// The tenant shared by the HTTP server, the simulated devices and the tests.
#[derive(Clone)]
pub struct SimTenant {
    state: Arc<Mutex<TenantState>>,
    clock: Arc<LabClock>,
}

impl SimTenant {
    pub fn new(state: TenantState, clock: Arc<LabClock>) -> Self {
        SimTenant {
            state: Arc::new(Mutex::new(state)),
            clock,
        }
    }

    /// Locks the state (a panicked holder does not wedge the lab).
    pub fn state(&self) -> MutexGuard<'_, TenantState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &LabClock {
        &self.clock
    }

    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Every issued token expires now (the next Graph call gets 401).
    pub fn expire_tokens(&self) {
        let now = self.clock.now();
        for (_, expiry) in self.state().tokens.values_mut() {
            *expiry = now;
        }
    }

    /// The next `n` Graph requests answer 429 with Retry-After.
    pub fn throttle_next(&self, n: u32) {
        self.state().throttle_next = n;
    }

    /// The next `n` Graph requests answer `status` (a 5xx outage).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.state().fail_next = (n, status);
    }

    /// Takes a Graph application permission away from every app.
    pub fn revoke_permission(&self, permission: &str) {
        self.state().permissions.remove(permission);
    }

    pub fn settings_mut(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.state().settings);
    }

    /// Seeds the tenant from the inventory and serves it where the inventory says
    /// (`lab.virtual_lab.tenant`, on 127.0.0.1 only).
    pub async fn start(
        inventory: &Inventory,
        clock: Arc<LabClock>,
        settings: Settings,
    ) -> Result<(SimTenant, TenantServer), String> {
        let endpoint = inventory
            .lab
            .virtual_lab
            .as_ref()
            .and_then(|v| v.tenant.as_ref())
            .ok_or("the inventory has no lab.virtual_lab.tenant endpoint")?;
        if endpoint.host != "127.0.0.1" && endpoint.host != "localhost" {
            return Err(format!(
                "the virtual tenant listens on 127.0.0.1 only, not {}",
                endpoint.host
            ));
        }
        let sim = SimTenant::new(TenantState::from_inventory(inventory, settings)?, clock);
        let addr = SocketAddr::from(([127, 0, 0, 1], endpoint.port));
        let server = sim.serve(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for the virtual tenant: {e} (is the port in use?)")
        })?;
        Ok((sim, server))
    }

    /// Serves the Graph-style API and the token endpoint on `addr` (127.0.0.1:0 in tests).
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<TenantServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
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
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .nest("/v1.0", graph.clone())
            .nest("/beta", graph)
            .fallback(|| async { GraphFault::bad_request("Invalid version or resource") })
            .with_state(self.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(TenantServer {
            addr,
            stop: Some(stop),
            task,
        })
    }
}

impl TenantView for SimTenant {
    fn begin_enrollment(&mut self, serial: &str, now: LabTime) -> Result<Enrollment, EnrollError> {
        self.state().begin_enrollment(serial, now)
    }
    fn profile_for(&self, serial: &str) -> Option<Enrollment> {
        self.state().profile_for(serial)
    }
    fn technician_completed(&mut self, serial: &str, now: LabTime) {
        self.state().technician_completed(serial, now)
    }
    fn user_flow_started(&mut self, serial: &str, now: LabTime) {
        self.state().user_flow_started(serial, now)
    }
    fn user_flow_completed(&mut self, serial: &str, now: LabTime) {
        self.state().user_flow_completed(serial, now)
    }
}

/// A running tenant server; stops when dropped.
pub struct TenantServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TenantServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to use as both `graph_url` and `login_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TenantServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

// ---- HTTP ----

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

/// The URL the client posted to, as the `aud` of its client assertion must name it.
fn token_url(headers: &HeaderMap, tenant_id: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}/{tenant_id}/oauth2/v2.0/token")
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
            let value = format!("simtoken-{:032x}", rand::random::<u128>());
            let lifetime = state.settings.token_lifetime;
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
        if self.throttled_until.is_some_and(|until| wall < until) {
            self.stats.early_retries += 1;
            return Err(self.throttled(wall));
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
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
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

    fn lab() -> TenantState {
        let app = App {
            tenant: "lab".into(),
            tenant_id: "t1".into(),
            client_id: "c1".into(),
            credential: AppCredential::Secret("s".into()),
            organization: "Contoso".into(),
            entra_profile: ENTRA_PROFILE.into(),
        };
        let mut state = TenantState::new(vec![app], Settings::default());
        state.register("lab", "PF1", "ThinkPad", "Lenovo", "entra");
        state
    }

    #[test]
    fn re_enrollment_is_blocked_until_unblocked() {
        let mut state = lab();
        let t = Duration::from_secs(1_000_000);
        let first = state.begin_enrollment("PF1", t).unwrap();
        assert_eq!(first.join, JoinKind::Entra);
        state.technician_completed("PF1", t);
        assert_eq!(
            state.begin_enrollment("PF1", t).unwrap_err().code,
            "0x80180014"
        );
        let id = state.ztd_id("PF1").unwrap();
        state.identities.get_mut(&id).unwrap().blocked = false;
        assert!(state.begin_enrollment("PF1", t).is_ok());
    }

    #[test]
    fn compliance_resets_in_the_user_flow_and_settles_later() {
        let mut state = lab();
        let t = Duration::from_secs(1_000_000);
        state.technician_completed("PF1", t);
        assert_eq!(state.compliance("PF1", t), Some("compliant"));
        state.user_flow_started("PF1", t);
        assert_eq!(state.compliance("PF1", t), Some("noncompliant"));
        state.user_flow_completed("PF1", t);
        let delay = state.settings.compliance_delay;
        assert_eq!(
            state.compliance("PF1", t + delay - Duration::from_secs(1)),
            Some("noncompliant")
        );
        assert_eq!(state.compliance("PF1", t + delay), Some("compliant"));
    }

    #[test]
    fn unregistered_and_unassigned_devices_are_refused() {
        let mut state = lab();
        let t = Duration::from_secs(1_000_000);
        assert_eq!(state.begin_enrollment("NOPE", t).unwrap_err().code, "807");
        let id = state.ztd_id("PF1").unwrap();
        state.identities.get_mut(&id).unwrap().group_tag = "kiosk".into();
        assert_eq!(state.begin_enrollment("PF1", t).unwrap_err().code, "809");
        let identity = state.identities.get_mut(&id).unwrap();
        identity.group_tag = "hybrid".into();
        identity.allow_preprovisioning = false;
        assert_eq!(
            state.begin_enrollment("PF1", t).unwrap_err().code,
            "0x80180005"
        );
        assert_eq!(state.profile_for("PF1").unwrap().join, JoinKind::Hybrid);
    }

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
