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

use serde_json::{Value, json};

use super::clock::{LabClock, LabTime};

mod http;
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

    /// Grants a Graph application permission to every app (tokens issued from now on
    /// carry it in `roles`).
    pub fn grant_permission(&self, permission: &str) {
        self.state().permissions.insert(permission.to_string());
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
        let app = http::router(self.clone());
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
}
