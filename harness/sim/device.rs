//! One simulated Windows PC: power, boot, OOBE screens, the technician flow (pre-
//! provisioning) and the user flow, with the process's rules enforced by the device's own
//! state: the 90-minute and 6-month gaps, Home edition, a disabled ESP profile, wlidsvc,
//! domain controller reachability, and the faults injected from the inventory or the
//! control endpoint.
//!
//! Timed work (boot, ESP steps, shutdown) runs as one tokio task per device at most (the
//! device's current "job"); powering off aborts it. Nothing runs for an idle device.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;

use super::clock::{LabClock, LabTime};
use super::enrollment::{Enrollment, JoinKind, TenantView, WindowsSnapshot};
use super::keys::Key;
use super::oobe::{Control, Screen, ScreenId};
use super::profile::{EspStep, Profile};
use super::render::{Tint, View};
use crate::model::inventory::{self, Edition, Fault};

/// The user flow may start this long after the technician flow at the earliest.
pub const TOKEN_GAP: Duration = Duration::from_secs(90 * 60);
/// After this long, IME certificates have expired (detection `NotComputed`).
pub const IME_LIMIT: Duration = Duration::from_secs(183 * 86400);

/// Code shown when the user flow starts too soon after the technician flow: the token
/// broker cannot get a user token for a device token that is not yet usable.
pub const TOKEN_FAILURE: &str = "0xCAA5001C";
/// Code shown when IME detection of a Win32 app ends `NotComputed` (app not detected).
pub const IME_NOT_COMPUTED: &str = "0x87D1041C";

const AUTOPILOT: &str = "Microsoft-Windows-ModernDeployment-Diagnostics-Provider/Autopilot";
const MDM: &str = "Microsoft-Windows-DeviceManagement-Enterprise-Diagnostics-Provider/Admin";
const UDR: &str = "Microsoft-Windows-User Device Registration/Admin";
const SHELL: &str = "Microsoft-Windows-Shell-Core/Operational";

/// A tenant user the device accepts at sign-in (secrets read by the lab at start).
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub upn: String,
    pub password: String,
    pub ad_account: Option<String>,
    pub ad_password: Option<String>,
}

/// What the device needs to know besides the inventory entry.
#[derive(Clone)]
pub struct Wiring {
    pub clock: Arc<LabClock>,
    pub tenant: Arc<Mutex<dyn TenantView>>,
    pub tenant_id: Option<String>,
    pub accounts: Vec<Account>,
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Off,
    Booting,
    On,
    ShuttingDown,
    Rebooting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Technician,
    User,
}

/// What survives a power cycle: the disk.
#[derive(Debug, Clone, Default)]
struct Disk {
    /// Resealed after pre-provisioning: the next boot starts the user flow.
    resealed: bool,
    at_desktop: bool,
    enrollment: Option<Enrollment>,
    azure_ad_joined: bool,
    domain_joined: bool,
    technician_completed_at: Option<LabTime>,
    user_flow_completed_at: Option<LabTime>,
    wlidsvc_disabled: bool,
    signed_in_user: Option<String>,
    apps_pending: bool,
    events: Vec<(u32, String, String, LabTime)>,
    last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct Failure {
    flow: Flow,
    step: EspStep,
    code: String,
    message: String,
}

#[derive(Debug, Clone, Default)]
struct Esp {
    running: Option<EspStep>,
    done: Vec<EspStep>,
    failed: Option<EspStep>,
    started_at: LabTime,
    user_flow: bool,
}

struct State {
    power: Power,
    /// Lab time of the last power-on (console timestamps count from here).
    powered_at: LabTime,
    booted_at: Option<LabTime>,
    screen: Screen,
    /// Windows key presses in a row on the first OOBE screen.
    win_presses: u32,
    disk: Disk,
    esp: Esp,
    /// What the configuration screen shows (`profile_for`, re-read by Refresh).
    shown_profile: Option<Enrollment>,
    failure: Option<Failure>,
    technician_started_at: LabTime,
    /// The upn typed on the first sign-in page.
    pending_upn: Option<String>,
    /// Rules decided when the user flow starts.
    token_too_fresh: bool,
    ime_expired: bool,
    faults: Vec<Fault>,
    attestation_failures_left: u32,
    power_failures_left: u32,
    job: Option<tokio::task::AbortHandle>,
}

/// A simulated PC.
pub struct Device {
    pub id: String,
    spec: inventory::Device,
    profile: Profile,
    wiring: Wiring,
    console: broadcast::Sender<Arc<str>>,
    state: Mutex<State>,
}

impl Device {
    pub fn new(spec: &inventory::Device, wiring: Wiring) -> Arc<Device> {
        let sim = spec.sim.clone().unwrap_or_default();
        let profile = Profile::named(
            sim.profile
                .as_deref()
                .unwrap_or(&spec.model.to_lowercase().replace(' ', "-")),
        );
        let (console, _) = broadcast::channel(64);
        let device = Device {
            id: spec.id.clone(),
            spec: spec.clone(),
            profile,
            wiring,
            console,
            state: Mutex::new(State {
                power: Power::Off,
                powered_at: Duration::ZERO,
                booted_at: None,
                screen: Screen::passive(ScreenId::Off),
                win_presses: 0,
                disk: Disk::default(),
                esp: Esp::default(),
                shown_profile: None,
                failure: None,
                technician_started_at: Duration::ZERO,
                pending_upn: None,
                token_too_fresh: false,
                ime_expired: false,
                faults: Vec::new(),
                attestation_failures_left: 0,
                power_failures_left: 0,
                job: None,
            }),
        };
        {
            let mut st = device.lock();
            for fault in sim.faults {
                Self::add_fault(&mut st, fault);
            }
        }
        Arc::new(device)
    }

    pub fn serial(&self) -> &str {
        &self.spec.serial
    }

    pub fn spec(&self) -> &inventory::Device {
        &self.spec
    }

    fn sim(&self) -> inventory::SimDevice {
        self.spec.sim.clone().unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> LabTime {
        self.wiring.clock.now()
    }

    async fn wait(&self, lab: Duration) {
        tokio::time::sleep(self.wiring.clock.wall(lab)).await;
    }

    // ----- faults and the control endpoint -------------------------------------------

    fn add_fault(st: &mut State, fault: Fault) {
        match &fault {
            Fault::AttestationIntermittent { failures } => st.attestation_failures_left = *failures,
            Fault::PowerControllerFails { requests } => st.power_failures_left = *requests,
            _ => {}
        }
        st.faults.push(fault);
    }

    pub fn inject(&self, fault: Fault) {
        Self::add_fault(&mut self.lock(), fault);
    }

    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.attestation_failures_left = 0;
        st.power_failures_left = 0;
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    /// Moves the technician flow's completion back in time (test-only "age").
    pub fn age(&self, by: Duration) -> bool {
        let mut st = self.lock();
        match st.disk.technician_completed_at.as_mut() {
            Some(at) => {
                *at = at.saturating_sub(by);
                true
            }
            None => false,
        }
    }

    /// One request reached the device's power controller; `true` if the controller
    /// fails it (the `PowerControllerFails` fault), which consumes one failure.
    pub fn power_request_fails(&self) -> bool {
        let mut st = self.lock();
        if st.power_failures_left > 0 {
            st.power_failures_left -= 1;
            true
        } else {
            false
        }
    }

    // ----- console -------------------------------------------------------------------

    /// A new reader of the serial console (each line ends with CR LF).
    pub fn console(&self) -> broadcast::Receiver<Arc<str>> {
        self.console.subscribe()
    }

    /// Whether the serial link carries bytes right now (the `SerialDrop` fault cuts it).
    pub fn serial_up(&self) -> bool {
        Self::link_up(&self.lock(), self.now())
    }

    fn link_up(st: &State, now: LabTime) -> bool {
        let Some(booted) = st.booted_at else {
            return true;
        };
        !st.faults.iter().any(|f| match f {
            Fault::SerialDrop { after, down } => {
                let from = booted + *after;
                now >= from && now < from + *down
            }
            _ => false,
        })
    }

    /// Prints one console line, stamped with lab seconds since power-on.
    fn say(&self, st: &State, text: &str) {
        let now = self.now();
        if !Self::link_up(st, now) {
            return;
        }
        let since = now.saturating_sub(st.powered_at).as_secs_f64();
        let line: Arc<str> = format!("[{since:>8.3}] {text}\r\n").into();
        let _ = self.console.send(line);
    }

    fn event(&self, st: &mut State, id: u32, channel: &str, message: impl Into<String>) {
        let now = self.now();
        let events = &mut st.disk.events;
        if events.len() >= 500 {
            events.remove(0);
        }
        events.push((id, channel.to_string(), message.into(), now));
    }

    // ----- power ---------------------------------------------------------------------

    pub fn powered(&self) -> bool {
        self.lock().power != Power::Off
    }

    /// Presses power / Redfish `On`: boots if off, nothing otherwise.
    pub fn power_on(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.power == Power::Off {
            self.boot(&mut st, None);
        }
    }

    /// Pulls the plug (`ForceOff`, `off_hard`).
    pub fn power_off(&self) {
        let mut st = self.lock();
        self.cut_power(&mut st);
    }

    /// Asks Windows to shut down (`GracefulShutdown`, ATX `off`).
    pub fn shutdown(self: &Arc<Self>) {
        let mut st = self.lock();
        if matches!(st.power, Power::On | Power::Booting) {
            self.start_shutdown(&mut st, "shutdown");
        }
    }

    /// `systemreset -factoryreset` from Windows: the disk is wiped (enrollment, join,
    /// ESP), Windows restarts into OOBE. Only a running Windows can do it.
    pub fn factory_reset(self: &Arc<Self>) {
        let mut st = self.lock();
        if !matches!(st.power, Power::On) {
            return;
        }
        self.say(&st, "OOBE: reset this PC");
        st.disk = Disk::default();
        st.failure = None;
        st.esp = Esp::default();
        self.start_shutdown_then_boot(&mut st);
    }

    /// Reset button / `ForceRestart`: off and straight back on.
    pub fn reset(self: &Arc<Self>) {
        let mut st = self.lock();
        self.cut_power(&mut st);
        self.boot(&mut st, None);
    }

    fn cut_power(&self, st: &mut State) {
        if let Some(job) = st.job.take() {
            job.abort();
        }
        if st.esp.running.is_some() && !st.esp.user_flow {
            // Power lost during pre-provisioning: the ESP starts over at the next OOBE.
            st.esp = Esp::default();
        }
        st.power = Power::Off;
        st.booted_at = None;
        st.screen = Screen::passive(ScreenId::Off);
        st.win_presses = 0;
    }

    fn start_job<F>(&self, st: &mut State, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(old) = st.job.take() {
            old.abort();
        }
        st.job = Some(self.wiring.runtime.spawn(job).abort_handle());
    }

    /// Boots; `then` is the screen after boot (default: decided by the disk).
    fn boot(self: &Arc<Self>, st: &mut State, then: Option<ScreenId>) {
        st.power = Power::Booting;
        st.powered_at = self.now();
        st.booted_at = None;
        st.screen = Screen::passive(ScreenId::Booting);
        let w = &self.spec.windows;
        self.say(
            st,
            &format!(
                "BIOS: {} {} serial={}",
                self.spec.manufacturer, self.spec.model, self.spec.serial
            ),
        );
        self.say(st, "BOOT: Windows Boot Manager");
        let version = format!(
            "WINDOWS: Windows {} {} build {} starting",
            w.version,
            w.edition.as_str(),
            w.build.as_deref().unwrap_or("unknown")
        );
        let me = Arc::clone(self);
        self.start_job(st, async move {
            me.wait(me.profile.boot).await;
            let mut st = me.lock();
            st.power = Power::On;
            st.booted_at = Some(me.now());
            me.say(&st, &version);
            me.say(&st, "AGENT: lab agent started, sshd listening");
            let next = then.unwrap_or(if st.disk.at_desktop {
                ScreenId::Desktop
            } else {
                ScreenId::Region
            });
            me.show(&mut st, next);
            st.job = None;
        });
    }

    fn start_shutdown(self: &Arc<Self>, st: &mut State, reason: &str) {
        st.power = Power::ShuttingDown;
        st.screen = Screen::passive(ScreenId::ShuttingDown);
        self.say(st, &format!("POWER: shutting down reason={reason}"));
        let me = Arc::clone(self);
        self.start_job(st, async move {
            me.wait(me.profile.shutdown).await;
            let mut st = me.lock();
            me.say(&st, "POWER: off");
            st.job = None;
            me.cut_power(&mut st);
        });
    }

    // ----- screens -------------------------------------------------------------------

    pub fn screen(&self) -> ScreenId {
        self.lock().screen.id
    }

    fn win11(&self) -> bool {
        self.spec.windows.version >= 11
    }

    fn show(&self, st: &mut State, id: ScreenId) {
        use Control::Button;
        let screen = match id {
            ScreenId::Region => Screen::new(
                id,
                vec![
                    Screen::list(&[
                        "United States",
                        "United Kingdom",
                        "Germany",
                        "France",
                        "Netherlands",
                    ]),
                    Button("Yes"),
                ],
                Some("Yes"),
            ),
            ScreenId::Keyboard => Screen::new(
                id,
                vec![
                    Screen::list(&["US", "United Kingdom", "German", "French"]),
                    Button("Yes"),
                ],
                Some("Yes"),
            ),
            ScreenId::SecondKeyboard => {
                Screen::new(id, vec![Button("Add layout"), Button("Skip")], None)
                    .focus_button("Skip")
            }
            ScreenId::Network => Screen::new(
                id,
                vec![Screen::list(&["Ethernet (Connected)"]), Button("Next")],
                Some("Next"),
            ),
            ScreenId::WhatToDo => {
                let (options, go): (&[&str], _) = if self.win11() {
                    (
                        &[
                            "Pre-provision with Windows Autopilot",
                            "Install provisioning package",
                        ],
                        "Next",
                    )
                } else {
                    (
                        &[
                            "Install provisioning package",
                            "Windows Autopilot provisioning",
                        ],
                        "Continue",
                    )
                };
                Screen::new(
                    id,
                    vec![Screen::list(options), Button(go), Button("Cancel")],
                    Some(go),
                )
            }
            ScreenId::PreProvision => {
                Screen::new(id, vec![Button("Back"), Button("Next")], None).focus_button("Next")
            }
            ScreenId::ProvisioningPackage => Screen::new(id, vec![Button("Cancel")], None),
            ScreenId::Configuration => Screen::new(
                id,
                vec![Button("Refresh"), Button("Provision"), Button("Cancel")],
                None,
            )
            .focus_button("Provision"),
            ScreenId::Success => Screen::new(id, vec![Button("Reseal")], None),
            ScreenId::Failure => {
                let buttons = if self.win11() {
                    vec![Button("Reset"), Button("Retry")]
                } else {
                    vec![Button("View diagnostics"), Button("Reset"), Button("Retry")]
                };
                Screen::new(id, buttons, None).focus_button("Retry")
            }
            ScreenId::Diagnostics => {
                Screen::new(id, vec![Button("Export logs"), Button("Close")], None)
            }
            ScreenId::EntraSignIn => Screen::new(
                id,
                vec![
                    Screen::text("Email, phone, or Skype", false),
                    Button("Next"),
                ],
                Some("Next"),
            ),
            ScreenId::EntraPassword => Screen::new(
                id,
                vec![
                    Screen::text("Password", true),
                    Button("Back"),
                    Button("Sign in"),
                ],
                Some("Sign in"),
            ),
            ScreenId::LocalAccount => Screen::new(
                id,
                vec![Screen::text("User name", false), Button("Next")],
                Some("Next"),
            ),
            ScreenId::AdSignIn => Screen::new(
                id,
                vec![
                    Screen::text("User name", false),
                    Screen::text("Password", true),
                    Button("Sign in"),
                ],
                Some("Sign in"),
            ),
            other => Screen::passive(other),
        };
        st.screen = screen;
        self.say(st, &format!("OOBE: screen={}", id.name()));
    }

    /// One key press from the keyboard (CH9329 or PiKVM).
    pub fn press(self: &Arc<Self>, key: Key) {
        let mut st = self.lock();
        if st.power != Power::On {
            // No OS to receive it: firmware and shutdown screens ignore typing.
            return;
        }
        let id = st.screen.id;
        if key == Key::Windows {
            if id == ScreenId::Region {
                st.win_presses += 1;
                if st.win_presses >= 5 {
                    st.win_presses = 0;
                    self.say(&st, "OOBE: windows key x5");
                    self.show(&mut st, ScreenId::WhatToDo);
                }
            }
            return;
        }
        st.win_presses = 0;
        match (id, key) {
            (ScreenId::Failure, Key::CtrlShiftD) if self.win11() => {
                self.show(&mut st, ScreenId::Diagnostics);
                return;
            }
            (ScreenId::WhatToDo, Key::Escape) => {
                self.show(&mut st, ScreenId::Region);
                return;
            }
            (ScreenId::Diagnostics, Key::Escape) => {
                self.show(&mut st, ScreenId::Failure);
                return;
            }
            _ => {}
        }
        if let Some(button) = st.screen.press(key) {
            self.say(&st, &format!("OOBE: screen={} pressed={button}", id.name()));
            self.activate(&mut st, button);
        }
    }

    fn activate(self: &Arc<Self>, st: &mut State, button: &'static str) {
        use ScreenId::*;
        match (st.screen.id, button) {
            (Region, "Yes") => self.show(st, Keyboard),
            (Keyboard, "Yes") => self.show(st, SecondKeyboard),
            (SecondKeyboard, "Add layout") => self.show(st, Keyboard),
            (SecondKeyboard, "Skip") => self.show(st, Network),
            (Network, "Next") => self.start_user_flow(st),
            (WhatToDo, "Cancel") => self.show(st, Region),
            (WhatToDo, "Next" | "Continue") => {
                let choice = st.screen.selected().unwrap_or_default().to_string();
                if choice.contains("Autopilot") {
                    if self.win11() {
                        self.show(st, PreProvision);
                    } else {
                        self.show_configuration(st);
                    }
                } else {
                    self.show(st, ProvisioningPackage);
                }
            }
            (PreProvision, "Back") => self.show(st, WhatToDo),
            (PreProvision, "Next") => self.show_configuration(st),
            (ProvisioningPackage, "Cancel") => self.show(st, Region),
            (Configuration, "Refresh") => self.show_configuration(st),
            (Configuration, "Cancel") => self.show(st, Region),
            (Configuration, "Provision") => {
                st.technician_started_at = self.now();
                self.start_esp(st, Flow::Technician);
            }
            (Success, "Reseal") => {
                st.disk.resealed = true;
                self.say(st, "AUTOPILOT: reseal");
                self.start_shutdown(st, "reseal");
            }
            (Failure, "Retry") => {
                let (flow, step) = st
                    .failure
                    .as_ref()
                    .map_or((Flow::Technician, EspStep::SecuringHardware), |f| {
                        (f.flow, f.step)
                    });
                match flow {
                    Flow::Technician => {
                        st.technician_started_at = self.now();
                        self.start_esp(st, flow);
                    }
                    // The hybrid domain check happens before the reboot: start over there.
                    Flow::User if step == EspStep::JoiningNetwork => self.start_user_flow(st),
                    Flow::User => {
                        // A later attempt is judged on the time of that attempt.
                        self.decide_timing_rules(st);
                        self.start_esp(st, flow);
                    }
                }
            }
            (Failure, "Reset") => {
                self.say(st, "OOBE: reset this PC");
                st.disk = Disk::default();
                st.failure = None;
                st.esp = self::Esp::default();
                // Reset reinstalls Windows and restarts OOBE.
                self.start_shutdown_then_boot(st);
            }
            (Failure, "View diagnostics") => self.show(st, Diagnostics),
            (Diagnostics, "Close") => self.show(st, Failure),
            (Diagnostics, "Export logs") => {
                st.screen.message = Some("Logs exported to D:\\MDMDiagReport.zip".to_string());
                self.say(st, "DIAG: exported MDMDiagReport.zip");
            }
            (EntraSignIn, "Next") => {
                let upn = st
                    .screen
                    .value("Email, phone, or Skype")
                    .unwrap_or("")
                    .trim();
                if upn.contains('@') {
                    st.pending_upn = Some(upn.to_string());
                    self.show(st, EntraPassword);
                } else {
                    st.screen.message =
                        Some("Enter a valid email address, phone number, or Skype name.".into());
                }
            }
            (EntraPassword, "Back") => self.show(st, EntraSignIn),
            (EntraPassword, "Sign in") => {
                let upn = st.pending_upn.clone().unwrap_or_default();
                let password = st.screen.value("Password").unwrap_or("");
                let ok = self
                    .wiring
                    .accounts
                    .iter()
                    .any(|a| a.upn.eq_ignore_ascii_case(&upn) && a.password == password);
                if ok {
                    st.disk.signed_in_user = Some(upn.clone());
                    self.say(st, &format!("AUTH: entra sign-in ok user={upn}"));
                    self.start_esp(st, Flow::User);
                } else {
                    self.say(st, &format!("AUTH: entra sign-in failed user={upn}"));
                    st.screen.message = Some(
                        "Your account or password is incorrect. If you don't remember your password, reset it now."
                            .into(),
                    );
                }
            }
            (LocalAccount, "Next") => {
                let name = st
                    .screen
                    .value("User name")
                    .unwrap_or("")
                    .trim()
                    .to_string();
                if name.is_empty() {
                    st.screen.message = Some("Enter a user name.".into());
                } else {
                    st.disk.signed_in_user = Some(format!(".\\{name}"));
                    st.disk.at_desktop = true;
                    self.say(st, &format!("AUTH: local account created user={name}"));
                    self.show(st, Desktop);
                }
            }
            (AdSignIn, "Sign in") => {
                let user = st
                    .screen
                    .value("User name")
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let password = st.screen.value("Password").unwrap_or("").to_string();
                if !self.sim().domain_reachable {
                    self.say(st, "AUTH: domain controller unreachable");
                    st.screen.message = Some(
                        "We can't sign you in with this credential because your domain isn't available. Make sure your device is connected to your organization's network and try again."
                            .into(),
                    );
                    return;
                }
                let ok = self.wiring.accounts.iter().any(|a| {
                    a.ad_account
                        .as_deref()
                        .is_some_and(|acct| acct.eq_ignore_ascii_case(&user))
                        && a.ad_password.as_deref() == Some(password.as_str())
                });
                if ok {
                    st.disk.signed_in_user = Some(user.clone());
                    self.say(
                        st,
                        &format!("AUTH: active directory sign-in ok user={user}"),
                    );
                    self.start_esp(st, Flow::User);
                } else {
                    self.say(
                        st,
                        &format!("AUTH: active directory sign-in failed user={user}"),
                    );
                    st.screen.message = Some("The user name or password is incorrect.".into());
                }
            }
            _ => {}
        }
    }

    fn start_shutdown_then_boot(self: &Arc<Self>, st: &mut State) {
        st.power = Power::Rebooting;
        st.screen = Screen::passive(ScreenId::ShuttingDown);
        self.say(st, "POWER: restarting");
        let me = Arc::clone(self);
        self.start_job(st, async move {
            me.wait(me.profile.shutdown).await;
            let mut st = me.lock();
            st.job = None;
            me.boot(&mut st, None);
        });
    }

    fn show_configuration(&self, st: &mut State) {
        let profile = self
            .wiring
            .tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .profile_for(&self.spec.serial);
        match &profile {
            Some(p) => {
                self.event(st, 153, AUTOPILOT, "Autopilot profile available");
                self.event(
                    st,
                    161,
                    AUTOPILOT,
                    format!("Autopilot profile downloaded: {}", p.profile_name),
                );
                self.say(
                    st,
                    &format!("AUTOPILOT: profile={:?} ztdid={}", p.profile_name, p.ztd_id),
                );
            }
            None => {
                self.event(st, 807, AUTOPILOT, "Device is not registered for Autopilot");
                self.say(st, "AUTOPILOT: no profile (device not registered)");
            }
        }
        st.shown_profile = profile;
        self.show(st, ScreenId::Configuration);
    }

    // ----- the user flow -------------------------------------------------------------

    fn start_user_flow(self: &Arc<Self>, st: &mut State) {
        let now = self.now();
        let serial = self.spec.serial.clone();
        self.wiring
            .tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .user_flow_started(&serial, now);
        let since = self.decide_timing_rules(st);
        self.say(
            st,
            &format!(
                "OOBE: user flow start since_technician={}",
                since.map_or("never".to_string(), |d| format!("{}s", d.as_secs()))
            ),
        );
        let join = st
            .disk
            .enrollment
            .as_ref()
            .map(|e| e.join)
            .unwrap_or(JoinKind::Entra);
        match join {
            JoinKind::Hybrid => {
                if !self.sim().domain_reachable {
                    // The offline domain join needs a domain controller before the reboot.
                    self.event(st, 304, UDR, "Hybrid registration failed: domain not found");
                    self.fail(
                        st,
                        Flow::User,
                        EspStep::JoiningNetwork,
                        "0x80070774",
                        "The specified domain either does not exist or could not be contacted.",
                    );
                    return;
                }
                // Hybrid join reboots before Active Directory sign-in.
                st.power = Power::Rebooting;
                st.screen = Screen::passive(ScreenId::ShuttingDown);
                self.say(st, "POWER: restarting reason=hybrid-join");
                let me = Arc::clone(self);
                self.start_job(st, async move {
                    me.wait(me.profile.shutdown).await;
                    let mut st = me.lock();
                    st.job = None;
                    st.disk.domain_joined = true;
                    me.boot(&mut st, Some(ScreenId::AdSignIn));
                });
            }
            JoinKind::Entra => {
                if st.disk.wlidsvc_disabled {
                    self.say(st, "AUTH: wlidsvc disabled, Entra sign-in unavailable");
                    self.show(st, ScreenId::LocalAccount);
                } else {
                    self.show(st, ScreenId::EntraSignIn);
                }
            }
        }
    }

    /// The two timing rules are facts about this device's history, decided when the user
    /// flow starts: returns how long ago the technician flow finished.
    fn decide_timing_rules(&self, st: &mut State) -> Option<Duration> {
        let now = self.now();
        let since = st
            .disk
            .technician_completed_at
            .map(|at| now.saturating_sub(at));
        st.token_too_fresh = since.is_some_and(|gap| gap < TOKEN_GAP);
        st.ime_expired = since.is_some_and(|gap| gap > IME_LIMIT);
        since
    }

    // ----- ESP -----------------------------------------------------------------------

    fn start_esp(self: &Arc<Self>, st: &mut State, flow: Flow) {
        st.failure = None;
        st.esp = Esp {
            running: None,
            done: Vec::new(),
            failed: None,
            started_at: self.now(),
            user_flow: flow == Flow::User,
        };
        self.show(st, ScreenId::Esp);
        let me = Arc::clone(self);
        self.start_job(st, async move { me.run_esp(flow).await });
    }

    fn steps(flow: Flow) -> Vec<EspStep> {
        let mut steps = EspStep::TECHNICIAN.to_vec();
        if flow == Flow::User {
            steps.extend([EspStep::AccountPolicies, EspStep::AccountApps]);
        }
        steps
    }

    async fn run_esp(self: Arc<Self>, flow: Flow) {
        for step in Self::steps(flow) {
            let planned = {
                let mut st = self.lock();
                st.esp.running = Some(step);
                self.say(
                    &st,
                    &format!("ESP: {}: {} start", step.phase(), step.name()),
                );
                self.plan(&st, flow, step)
            };
            let outcome = match planned {
                Plan::Attest => self.attest(flow).await,
                Plan::Run { time, then } => {
                    self.wait(time).await;
                    then
                }
            };
            let mut st = self.lock();
            let outcome = outcome.and_then(|()| self.complete(&mut st, flow, step));
            if let Err((code, message)) = outcome {
                self.fail(&mut st, flow, step, &code, &message);
                st.job = None;
                return;
            }
            st.esp.done.push(step);
            st.esp.running = None;
            self.say(&st, &format!("ESP: {}: {} done", step.phase(), step.name()));
            // ESP disabled: the success screen (Reseal) comes once the device is
            // enrolled, while device setup goes on behind it.
            if flow == Flow::Technician && step == EspStep::PreparingMdm && !self.esp_enabled(&st) {
                st.disk.apps_pending = true;
                self.succeed_technician(&mut st);
            }
        }
        let mut st = self.lock();
        st.job = None;
        st.disk.apps_pending = false;
        match flow {
            Flow::Technician if st.screen.id == ScreenId::Esp => self.succeed_technician(&mut st),
            Flow::Technician => self.say(&st, "ESP: DeviceSetup: background work finished"),
            Flow::User => self.succeed_user(&mut st),
        }
    }

    fn esp_enabled(&self, st: &State) -> bool {
        !self.sim().esp_disabled && st.disk.enrollment.as_ref().is_none_or(|e| e.esp_enabled)
    }

    /// How a step will go, decided from the device's state when it starts.
    fn plan(&self, st: &State, flow: Flow, step: EspStep) -> Plan {
        if step == EspStep::SecuringHardware {
            return Plan::Attest;
        }
        let slow = st
            .faults
            .iter()
            .find_map(|f| match f {
                Fault::SlowEsp { factor } if *factor > 0.0 && factor.is_finite() => Some(*factor),
                _ => None,
            })
            .unwrap_or(1.0);
        let mut time = self.profile.step(step).mul_f64(slow);
        if flow == Flow::User && step.phase() == "DevicePreparation" {
            // Device phases re-run quickly in the user flow: most is already in place.
            time /= 4;
        }
        let skewed = st
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ClockSkew { .. }));
        let deadline = st.esp.started_at + self.profile.esp_timeout;
        let now = self.now();
        let timeout = (
            "0x800705B4".to_string(),
            "The Enrollment Status Page timed out (the installation took longer than allowed)."
                .to_string(),
        );
        // A skewed clock makes certificate validation fail until the ESP gives up.
        if skewed && step == EspStep::Certificates {
            // What a skewed clock looks like from inside: every certificate is "not yet
            // valid" (or expired), so the step retries until the ESP gives up.
            self.say(
                st,
                "ESP: DeviceSetup: Certificates: certificate not yet valid (device clock is out of sync)",
            );
        }
        if skewed && step == EspStep::Certificates || now + time > deadline {
            return Plan::Run {
                time: deadline.saturating_sub(now),
                then: Err(timeout),
            };
        }
        Plan::Run { time, then: Ok(()) }
    }

    /// TPM attestation ("Securing your hardware"), attempt by attempt.
    async fn attest(&self, flow: Flow) -> Result<(), (String, String)> {
        let tpm_ok = self.spec.tpm.as_ref().is_some_and(|t| t.family == "2.0");
        let attempts = self.profile.attestation_attempts.max(1);
        let time = if flow == Flow::User {
            self.profile.attestation / 4
        } else {
            self.profile.attestation
        };
        for attempt in 1..=attempts {
            let hangs = {
                let st = self.lock();
                !tpm_ok
                    || st
                        .faults
                        .iter()
                        .any(|f| matches!(f, Fault::AttestationTimeout))
            };
            if hangs {
                self.wait(self.profile.attestation_timeout).await;
                let mut st = self.lock();
                self.event(
                    &mut st,
                    171,
                    AUTOPILOT,
                    "TPM identity confirmation failed: timeout",
                );
                return Err(("0x800705B4".into(), "TPM attestation timed out.".into()));
            }
            self.wait(time).await;
            let mut st = self.lock();
            if st.attestation_failures_left > 0 {
                st.attestation_failures_left -= 1;
                self.event(&mut st, 172, AUTOPILOT, "TPM identity confirmation failed");
                self.say(
                    &st,
                    &format!("ESP: DevicePreparation: SecuringHardware attempt {attempt} failed 0x81039001"),
                );
                continue;
            }
            return Ok(());
        }
        Err((
            "0x81039001".into(),
            "TPM attestation failed: retries exceeded.".into(),
        ))
    }

    /// What finishing a step does to the device (joins, enrollment, detection).
    fn complete(&self, st: &mut State, flow: Flow, step: EspStep) -> Result<(), (String, String)> {
        let now = self.now();
        let serial = self.spec.serial.clone();
        match (flow, step) {
            (Flow::Technician, EspStep::JoiningNetwork) => {
                let shown = st.shown_profile.clone();
                match shown.as_ref().map(|p| p.join) {
                    Some(JoinKind::Hybrid) => {
                        if shown.as_ref().is_some_and(|p| p.assigned_user.is_some()) {
                            return Err((
                                "0x80070774".into(),
                                "Hybrid join does not support an assigned user.".into(),
                            ));
                        }
                        // Offline domain join: the blob is applied now, the domain is
                        // contacted only after the end user's reboot.
                        self.event(st, 107, MDM, "Offline domain join blob applied");
                    }
                    _ => st.disk.azure_ad_joined = true,
                }
            }
            (Flow::Technician, EspStep::RegisteringMdm) => {
                if self.spec.windows.edition == Edition::Home {
                    return Err((
                        "0x80180022".into(),
                        "MDM enrollment is not supported on this edition of Windows (Home).".into(),
                    ));
                }
                let enrolled = self
                    .wiring
                    .tenant
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .begin_enrollment(&serial, now);
                match enrolled {
                    Ok(e) => {
                        self.event(st, 72, MDM, "MDM enrollment succeeded");
                        if e.join == JoinKind::Hybrid {
                            self.event(st, 306, UDR, "Hybrid Azure AD join registration queued");
                        }
                        st.disk.enrollment = Some(e);
                    }
                    Err(e) => {
                        self.event(st, 72, MDM, format!("MDM enrollment failed: {}", e.code));
                        return Err((e.code, e.message));
                    }
                }
            }
            (Flow::Technician, EspStep::PreparingMdm) => {
                self.event(st, 1905, MDM, "IME install started");
                self.event(st, 1906, MDM, "IME install succeeded");
                if self.sim().wlidsvc_disabled {
                    st.disk.wlidsvc_disabled = true;
                }
            }
            (Flow::User, EspStep::Apps) if st.ime_expired => {
                let id = st
                    .disk
                    .enrollment
                    .as_ref()
                    .map_or("00000000".to_string(), |e| e.ztd_id.clone());
                self.say(
                    st,
                    &format!("IME: [Win32App][DetectionActionHandler] Detection for policy with id: {id} resulted in action status: Failed and detection state: NotComputed"),
                );
                return Err((
                    IME_NOT_COMPUTED.into(),
                    "App detection failed (NotComputed): IME certificates expired more than 6 months after pre-provisioning.".into(),
                ));
            }
            (Flow::User, EspStep::AccountPolicies) if st.token_too_fresh => {
                return Err((
                    TOKEN_FAILURE.into(),
                    "Token broker operation failed: the device token is not usable yet (user flow started less than 90 minutes after pre-provisioning).".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn fail(&self, st: &mut State, flow: Flow, step: EspStep, code: &str, message: &str) {
        st.esp.running = None;
        st.esp.failed = Some(step);
        st.disk.last_error = Some(code.to_string());
        self.say(
            st,
            &format!("ESP: {}: {} failed {code}", step.phase(), step.name()),
        );
        let elapsed = self.elapsed(st, flow);
        let which = match flow {
            Flow::Technician => "preprovision",
            Flow::User => "userflow",
        };
        self.say(
            st,
            &format!("AUTOPILOT: {which} result=failure code={code} elapsed={elapsed}"),
        );
        self.event(
            st,
            62407,
            SHELL,
            format!("CommercialOOBE_ESPProgress_Failure {code}"),
        );
        st.failure = Some(Failure {
            flow,
            step,
            code: code.to_string(),
            message: message.to_string(),
        });
        self.show(st, ScreenId::Failure);
    }

    fn elapsed(&self, st: &State, flow: Flow) -> String {
        let from = match flow {
            Flow::Technician => st.technician_started_at,
            Flow::User => st.esp.started_at,
        };
        let secs = self.now().saturating_sub(from).as_secs();
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }

    fn succeed_technician(&self, st: &mut State) {
        let now = self.now();
        st.disk.technician_completed_at = Some(now);
        st.disk.last_error = None;
        self.wiring
            .tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .technician_completed(&self.spec.serial, now);
        self.event(
            st,
            62407,
            SHELL,
            "CommercialOOBE_ESPProgress_WhiteGlove_Success",
        );
        let elapsed = self.elapsed(st, Flow::Technician);
        self.say(
            st,
            &format!("AUTOPILOT: preprovision result=success elapsed={elapsed}"),
        );
        st.esp.running = None;
        self.show(st, ScreenId::Success);
        // The elapsed time on the success screen is frozen at this moment.
        st.screen.message = Some(format!("Elapsed time: {elapsed}"));
    }

    fn succeed_user(&self, st: &mut State) {
        let now = self.now();
        st.disk.at_desktop = true;
        st.disk.user_flow_completed_at = Some(now);
        st.disk.last_error = None;
        self.wiring
            .tenant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .user_flow_completed(&self.spec.serial, now);
        let elapsed = self.elapsed(st, Flow::User);
        self.say(
            st,
            &format!("AUTOPILOT: userflow result=success elapsed={elapsed}"),
        );
        self.show(st, ScreenId::Desktop);
    }

    // ----- what the outside sees -----------------------------------------------------

    /// The screen as PiKVM would capture it.
    pub fn view(&self) -> View {
        let st = self.lock();
        let screen = &st.screen;
        let profile_lines = |p: Option<&Enrollment>| -> Vec<String> {
            match p {
                Some(p) => vec![
                    format!("Profile: {}", p.profile_name),
                    format!("Organization: {}", p.organization),
                    format!(
                        "User: {}",
                        p.assigned_user.clone().unwrap_or_else(|| "None".into())
                    ),
                ],
                None => vec![
                    "Profile: Not available".into(),
                    "Organization: Not available".into(),
                    "User: None".into(),
                ],
            }
        };
        let qr_for = |p: Option<&Enrollment>| {
            p.map(|p| {
                serde_json::json!({ "ZtdId": p.ztd_id, "SerialNumber": self.spec.serial })
                    .to_string()
            })
        };
        let mut view = match screen.id {
            ScreenId::Off => View::new(Tint::Black, "No signal"),
            ScreenId::Booting => {
                View::new(Tint::Black, self.spec.manufacturer.clone()).line("Just a moment...")
            }
            ScreenId::ShuttingDown => View::new(Tint::Black, "Shutting down"),
            ScreenId::Region => View::new(
                Tint::Oobe,
                "Let's start with region. Is this the right one?",
            ),
            ScreenId::Keyboard => View::new(
                Tint::Oobe,
                "Is this the right keyboard layout or input method?",
            ),
            ScreenId::SecondKeyboard => {
                View::new(Tint::Oobe, "Want to add a second keyboard layout?")
            }
            ScreenId::Network => View::new(Tint::Oobe, "Let's connect you to a network"),
            ScreenId::WhatToDo => View::new(Tint::Oobe, "What would you like to do?"),
            ScreenId::PreProvision => View::new(Tint::Oobe, "Pre-provision with Windows Autopilot")
                .line("Your device will be set up with your organization's apps and policies.")
                .line("Make sure it stays connected to power and the network."),
            ScreenId::ProvisioningPackage => View::new(Tint::Oobe, "Provision this device")
                .line("Insert removable media that contains a provisioning package."),
            ScreenId::Configuration => {
                let p = st.shown_profile.as_ref();
                let mut v = View::new(Tint::Oobe, "Windows Autopilot Configuration");
                v.lines = profile_lines(p);
                v.qr = qr_for(p);
                v
            }
            ScreenId::Esp => self.esp_view(&st),
            ScreenId::Success => {
                let p = st.disk.enrollment.as_ref().or(st.shown_profile.as_ref());
                let mut v = View::new(Tint::Green, "Windows Autopilot pre-provisioning succeeded");
                v.lines = profile_lines(p);
                if !self.win11() {
                    v.qr = qr_for(p);
                }
                v
            }
            ScreenId::Failure | ScreenId::Diagnostics => {
                let f = st.failure.clone();
                let tech = f.as_ref().is_none_or(|f| f.flow == Flow::Technician);
                let title = if screen.id == ScreenId::Diagnostics {
                    "Diagnostics"
                } else if tech {
                    "Windows Autopilot pre-provisioning failed"
                } else {
                    "Something went wrong. Setup could not be completed."
                };
                let mut v = View::new(Tint::Red, title);
                if tech {
                    v.lines =
                        profile_lines(st.disk.enrollment.as_ref().or(st.shown_profile.as_ref()));
                }
                if let Some(f) = &f {
                    v.lines.push(format!("Step: {}", f.step.label()));
                    v.lines.push(format!("Error code: {}", f.code));
                    v.lines.push(f.message.clone());
                }
                if screen.id == ScreenId::Diagnostics {
                    for (id, channel, message, _) in st.disk.events.iter().rev().take(8) {
                        let short = channel.rsplit('-').next().unwrap_or(channel);
                        v.lines.push(format!("Event {id} {short}: {message}"));
                    }
                } else if self.win11() {
                    v.lines.push("Press Ctrl+Shift+D for diagnostics.".into());
                }
                v
            }
            ScreenId::EntraSignIn => {
                let org = self.organization(&st);
                View::new(Tint::Oobe, format!("Welcome to {org}!"))
                    .line("Sign in with your work or school account.")
            }
            ScreenId::EntraPassword => {
                let org = self.organization(&st);
                View::new(Tint::Oobe, "Enter password")
                    .line(org.clone())
                    .line(st.pending_upn.clone().unwrap_or_default())
            }
            ScreenId::LocalAccount => View::new(Tint::Oobe, "Who's going to use this device?"),
            ScreenId::AdSignIn => {
                View::new(Tint::Oobe, "Sign in").line("Sign in with your Active Directory account.")
            }
            ScreenId::Desktop => View::new(Tint::Desktop, "Desktop").line(format!(
                "Signed in: {}",
                st.disk.signed_in_user.clone().unwrap_or_default()
            )),
        };
        view = view.with_screen(screen);
        view
    }

    fn organization(&self, st: &State) -> String {
        st.disk
            .enrollment
            .as_ref()
            .or(st.shown_profile.as_ref())
            .map_or("your organization".to_string(), |e| e.organization.clone())
    }

    fn esp_view(&self, st: &State) -> View {
        let title = if st.esp.user_flow {
            "Setting up your device for work"
        } else {
            "Windows Autopilot pre-provisioning"
        };
        let mut v = View::new(Tint::Oobe, title);
        let flow = if st.esp.user_flow {
            Flow::User
        } else {
            Flow::Technician
        };
        let mut phase = "";
        for step in Self::steps(flow) {
            if step.phase() != phase {
                phase = step.phase();
                v.lines.push(match phase {
                    "DevicePreparation" => "Device preparation".to_string(),
                    "DeviceSetup" => "Device setup".to_string(),
                    _ => "Account setup".to_string(),
                });
            }
            let status = if st.esp.done.contains(&step) {
                "Complete"
            } else if st.esp.running == Some(step) {
                "Working on it..."
            } else if st.esp.failed == Some(step) {
                "Failed"
            } else {
                "Waiting"
            };
            v.lines.push(format!("  {} ({status})", step.label()));
        }
        v
    }

    pub fn windows_snapshot(&self) -> WindowsSnapshot {
        let st = self.lock();
        let enrollment = st.disk.enrollment.as_ref();
        let esp_phase = match (st.esp.running, st.esp.failed) {
            (Some(step), _) => format!("{}/{}", step.phase(), step.name()),
            (None, Some(step)) => format!("{}/{} failed", step.phase(), step.name()),
            (None, None) if st.disk.at_desktop => "done".into(),
            (None, None) if st.disk.technician_completed_at.is_some() => "done".into(),
            _ => "none".into(),
        };
        WindowsSnapshot {
            device_id: self.id.clone(),
            serial: self.spec.serial.clone(),
            manufacturer: self.spec.manufacturer.clone(),
            model: self.spec.model.clone(),
            powered: st.power != Power::Off,
            booted: st.power == Power::On,
            // Powered but Windows not up: between a shutdown and the next boot.
            rebooting: matches!(
                st.power,
                Power::Rebooting | Power::Booting | Power::ShuttingDown
            ),
            ssh_refused_during_reboot: st
                .faults
                .iter()
                .any(|f| matches!(f, Fault::SshRefusedDuringReboot)),
            edition: self.spec.windows.edition.as_str().to_string(),
            version: self.spec.windows.version,
            build: self.spec.windows.build.clone(),
            join: enrollment.map(|e| e.join),
            azure_ad_joined: st.disk.azure_ad_joined
                || (st.disk.domain_joined && enrollment.is_some()),
            domain_joined: st.disk.domain_joined,
            tenant_id: enrollment.and(self.wiring.tenant_id.clone()),
            ztd_id: enrollment.map(|e| e.ztd_id.clone()),
            profile_name: enrollment.map(|e| e.profile_name.clone()),
            organization: enrollment.map(|e| e.organization.clone()),
            screen: st.screen.id.name().to_string(),
            esp_phase,
            last_error: st.disk.last_error.clone(),
            events: st.disk.events.clone(),
            technician_completed_at: st.disk.technician_completed_at,
            user_flow_completed_at: st.disk.user_flow_completed_at,
            wlidsvc_disabled: st.disk.wlidsvc_disabled,
            signed_in_user: st.disk.signed_in_user.clone(),
            apps_pending: st.disk.apps_pending,
            tenant_domain: enrollment.and_then(|_| {
                self.wiring
                    .accounts
                    .iter()
                    .find_map(|a| a.upn.split_once('@').map(|(_, d)| d.to_string()))
            }),
            now: self.now(),
        }
    }
}

enum Plan {
    /// TPM attestation, attempt by attempt.
    Attest,
    /// Wait, then finish with this outcome.
    Run {
        time: Duration,
        then: Result<(), (String, String)>,
    },
}
