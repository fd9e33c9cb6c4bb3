//! Shared rig for the virtual-lab tests: an inventory built in Rust, an in-memory tenant
//! (the real one is sim/tenant.rs), and raw-protocol clients: the serial console read
//! from its PTY, CH9329 frames written to the keyboard PTY, PiKVM / Redfish / control
//! over HTTP. Everything binds 127.0.0.1 on free ports and lives in a tempdir.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aplab::model::inventory::*;
use aplab::sim::clock::LabTime;
use aplab::sim::enrollment::{EnrollError, Enrollment, JoinKind, TenantView};
use aplab::sim::lab::{Lab, LabHandle};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- an in-memory tenant ----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Record {
    pub enrollment: Enrollment,
    /// The Intune record exists (not deleted, not unblocked).
    pub enrolled: bool,
    pub allow_preprovisioning: bool,
    pub technician_completed_at: Option<LabTime>,
    pub user_flow_started_at: Option<LabTime>,
    pub user_flow_completed_at: Option<LabTime>,
}

#[derive(Debug, Default)]
pub struct TestTenant {
    pub records: HashMap<String, Record>,
}

impl TestTenant {
    pub fn register(&mut self, serial: &str, join: JoinKind, user: Option<&str>) -> String {
        let ztd_id = format!("ztd-{serial}-0001");
        self.records.insert(
            serial.to_string(),
            Record {
                enrollment: Enrollment {
                    ztd_id: ztd_id.clone(),
                    profile_name: "Contoso Pre-provisioning".into(),
                    organization: "Contoso Lab".into(),
                    assigned_user: user.map(str::to_string),
                    join,
                    esp_enabled: true,
                },
                enrolled: false,
                allow_preprovisioning: true,
                technician_completed_at: None,
                user_flow_started_at: None,
                user_flow_completed_at: None,
            },
        );
        ztd_id
    }
}

impl TenantView for TestTenant {
    fn begin_enrollment(&mut self, serial: &str, _now: LabTime) -> Result<Enrollment, EnrollError> {
        let Some(r) = self.records.get_mut(serial) else {
            return Err(EnrollError {
                code: "0x80180005".into(),
                message: "device not registered".into(),
            });
        };
        if !r.allow_preprovisioning {
            return Err(EnrollError {
                code: "0x80180005".into(),
                message: "profile does not allow pre-provisioning".into(),
            });
        }
        if r.enrolled {
            return Err(EnrollError {
                code: "0x80180014".into(),
                message: "enrollment blocked".into(),
            });
        }
        r.enrolled = true;
        Ok(r.enrollment.clone())
    }
    fn profile_for(&self, serial: &str) -> Option<Enrollment> {
        self.records.get(serial).map(|r| r.enrollment.clone())
    }
    fn technician_completed(&mut self, serial: &str, now: LabTime) {
        if let Some(r) = self.records.get_mut(serial) {
            r.technician_completed_at = Some(now);
        }
    }
    fn user_flow_started(&mut self, serial: &str, now: LabTime) {
        if let Some(r) = self.records.get_mut(serial) {
            r.user_flow_started_at = Some(now);
        }
    }
    fn user_flow_completed(&mut self, serial: &str, now: LabTime) {
        if let Some(r) = self.records.get_mut(serial) {
            r.user_flow_completed_at = Some(now);
        }
    }
}

// ----- inventory ----------------------------------------------------------------------

pub struct Ports {
    pub control: u16,
    pub redfish: u16,
    pub pikvm: u16,
}

pub struct DeviceOpts {
    pub version: u8,
    pub edition: Edition,
    pub sim: SimDevice,
    /// Raw TCP console on this port instead of a PTY.
    pub tcp_console: Option<u16>,
    /// Keyboard through PiKVM instead of CH9329.
    pub pikvm_keyboard: bool,
    pub tpm_family: Option<&'static str>,
    /// The BMC wants user `root` and the password in `secrets/bmc`.
    pub redfish_auth: bool,
}

impl Default for DeviceOpts {
    fn default() -> Self {
        DeviceOpts {
            version: 11,
            edition: Edition::Enterprise,
            sim: SimDevice {
                profile: Some("latitude-7440".into()),
                domain_reachable: true,
                allow_preprovisioning: true,
                registered: true,
                ..SimDevice::default()
            },
            tcp_console: None,
            pikvm_keyboard: false,
            tpm_family: Some("2.0"),
            redfish_auth: false,
        }
    }
}

pub fn inventory(
    dir: &Path,
    scale: f64,
    ports: &Ports,
    devices: Vec<(String, DeviceOpts)>,
) -> Inventory {
    let secret = |name: &str| SecretRef::File(dir.join("secrets").join(name));
    let pikvm = |id: &str| PikvmConn {
        url: format!("http://127.0.0.1:{}/{id}", ports.pikvm),
        user: "admin".into(),
        password: secret("pikvm"),
        verify_tls: false,
    };
    let mut users = BTreeMap::new();
    users.insert(
        "default".to_string(),
        TenantUser {
            upn: "alice@contoso.lab".into(),
            password: Some(secret("alice-password")),
            ad_account: Some("CONTOSO\\alice".into()),
            ad_password: Some(secret("alice-ad-password")),
        },
    );
    let mut tenants = BTreeMap::new();
    tenants.insert(
        "contoso".to_string(),
        TenantConfig {
            name: "contoso".into(),
            tenant_id: "6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11".into(),
            client_id: "client".into(),
            credential: Credential::ClientSecret(secret("contoso-client-secret")),
            graph_url: "http://127.0.0.1:1".into(),
            login_url: "http://127.0.0.1:1".into(),
            users,
            organization: Some("Contoso Lab".into()),
            profile: Some("Contoso Pre-provisioning".into()),
        },
    );
    let devices = devices
        .into_iter()
        .map(|(id, o)| Device {
            serial: format!("SN{id}"),
            manufacturer: "Dell Inc.".into(),
            model: "Latitude 7440".into(),
            windows: Windows {
                edition: o.edition,
                version: o.version,
                build: Some("22631".into()),
            },
            tpm: o.tpm_family.map(|family| ExpectedTpm {
                family: family.into(),
                manufacturer: "NTC".into(),
                firmware: None,
                ek_ca_bundle: None,
            }),
            tags: BTreeMap::new(),
            power: Some(PowerConn::Redfish {
                url: format!("http://127.0.0.1:{}", ports.redfish),
                system: id.clone(),
                user: o.redfish_auth.then(|| "root".to_string()),
                password: o.redfish_auth.then(|| secret("bmc")),
                verify_tls: false,
            }),
            console: Some(match o.tcp_console {
                Some(port) => ConsoleConn::Tcp {
                    host: "127.0.0.1".into(),
                    port,
                },
                None => ConsoleConn::Serial {
                    device: dir.join("devices").join(&id).join("console"),
                    baud: 115200,
                },
            }),
            keyboard: Some(if o.pikvm_keyboard {
                KeyboardConn::Pikvm(pikvm(&id))
            } else {
                KeyboardConn::Ch9329 {
                    device: dir.join("devices").join(&id).join("ch9329"),
                    baud: 9600,
                    address: 0,
                }
            }),
            screen: Some(ScreenConn::Pikvm(pikvm(&id))),
            shell: None,
            tpm_access: None,
            tenant: Some("contoso".into()),
            health_scenario: None,
            sim: Some(o.sim),
            id,
        })
        .collect();
    Inventory {
        source: dir.join("lab-inventory.yaml"),
        lab: aplab::model::inventory::Lab {
            name: "test-lab".into(),
            ledger: dir.join("ledger.sqlite"),
            reports: dir.join("reports"),
            virtual_lab: Some(VirtualLab {
                time_scale: scale,
                state_dir: dir.to_path_buf(),
                control: Some(Endpoint {
                    host: "127.0.0.1".into(),
                    port: ports.control,
                }),
                tenant: None,
                tpm_ca_dir: None,
            }),
        },
        tenants,
        devices,
    }
}

// ----- the rig ------------------------------------------------------------------------

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub lab: Option<LabHandle>,
    pub tenant: Arc<Mutex<TestTenant>>,
    pub ports: Ports,
    pub http: reqwest::Client,
    pub pikvm_password: String,
}

impl Rig {
    pub async fn start(
        scale: f64,
        devices: Vec<(&str, DeviceOpts)>,
        register: impl FnOnce(&mut TestTenant),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports {
            control: free_port(),
            redfish: free_port(),
            pikvm: free_port(),
        };
        let devices = devices
            .into_iter()
            .map(|(id, o)| (id.to_string(), o))
            .collect();
        let inv = inventory(dir.path(), scale, &ports, devices);
        let tenant = Arc::new(Mutex::new(TestTenant::default()));
        register(&mut tenant.lock().unwrap());
        let view: Arc<Mutex<dyn TenantView>> = tenant.clone();
        let lab = Lab::start(&inv, view).await.expect("lab starts");
        let pikvm_password = std::fs::read_to_string(dir.path().join("secrets/pikvm"))
            .unwrap()
            .trim()
            .to_string();
        Rig {
            dir,
            lab: Some(lab),
            tenant,
            ports,
            http: reqwest::Client::new(),
            pikvm_password,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("secrets/{name}")))
            .unwrap()
            .trim()
            .to_string()
    }

    pub async fn stop(mut self) {
        if let Some(lab) = self.lab.take() {
            lab.shutdown().await;
        }
    }

    // --- PiKVM ---
    fn kvm(&self, id: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}/{id}{path}", self.ports.pikvm)
    }

    pub fn kvm_post(&self, id: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.kvm(id, path))
            .header("X-KVMD-User", "admin")
            .header("X-KVMD-Passwd", &self.pikvm_password)
    }

    pub fn kvm_get(&self, id: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.kvm(id, path))
            .header("X-KVMD-User", "admin")
            .header("X-KVMD-Passwd", &self.pikvm_password)
    }

    /// The screen as PiKVM OCR text ("" while there is no signal).
    pub async fn ocr(&self, id: &str) -> String {
        let r = self
            .kvm_get(id, "/api/streamer/snapshot?ocr=1")
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            return String::new();
        }
        assert!(r.status().is_success(), "snapshot: {}", r.status());
        r.text().await.unwrap()
    }

    /// Polls OCR until the screen contains `text`.
    pub async fn wait_screen(&self, id: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.ocr(id).await;
            if screen.contains(text) {
                return screen;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{id}: screen never showed {text:?}; last screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn key(&self, id: &str, name: &str) {
        let r = self
            .kvm_post(id, &format!("/api/hid/events/send_key?key={name}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "send_key {name}: {}", r.status());
    }

    pub async fn print(&self, id: &str, text: &str) {
        let r = self
            .kvm_post(id, "/api/hid/print")
            .body(text.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "print: {}", r.status());
    }

    // --- Redfish ---
    pub async fn redfish_reset(&self, id: &str, kind: &str) -> reqwest::StatusCode {
        self.http
            .post(format!(
                "http://127.0.0.1:{}/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
                self.ports.redfish
            ))
            .json(&serde_json::json!({ "ResetType": kind }))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn power_state(&self, id: &str) -> (reqwest::StatusCode, Option<String>) {
        let r = self
            .http
            .get(format!(
                "http://127.0.0.1:{}/redfish/v1/Systems/{id}",
                self.ports.redfish
            ))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (
            status,
            body.get("PowerState")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        )
    }

    pub async fn wait_power(&self, id: &str, want: &str) {
        let start = Instant::now();
        loop {
            if self.power_state(id).await.1.as_deref() == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{id} never reached PowerState {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // --- control ---
    pub fn control(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.control)
    }

    pub async fn snapshot(&self, id: &str) -> serde_json::Value {
        self.http
            .get(self.control(&format!("/devices/{id}")))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["snapshot"]
            .clone()
    }

    pub async fn age(&self, id: &str, by: &str) {
        let r = self
            .http
            .post(self.control(&format!("/devices/{id}/age?by={by}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "age {id}");
    }

    pub async fn inject(&self, id: &str, fault: serde_json::Value) {
        let r = self
            .http
            .post(self.control(&format!("/devices/{id}/faults")))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "inject {fault}");
    }
}

// ----- serial console on the PTY --------------------------------------------------------

/// Reads a console PTY in a background thread into a transcript.
pub struct ConsoleReader {
    text: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsoleReader {
    pub fn open(path: &Path) -> ConsoleReader {
        let mut port = serialport::new(path.to_string_lossy(), 115200)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let text = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (text.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                match port.read(&mut buf) {
                    Ok(n) => t
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        });
        ConsoleReader {
            text,
            stop,
            thread: Some(thread),
        }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "console never printed {needle:?}; transcript:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ConsoleReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ----- CH9329 keyboard on the PTY -----------------------------------------------------

pub struct Ch9329 {
    port: serialport::TTYPort,
}

pub fn ch9329_frame(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x57, 0xAB, 0x00, cmd, data.len() as u8];
    f.extend_from_slice(data);
    let sum = f.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.push(sum);
    f
}

/// HID usage ids used by the tests.
pub mod hid {
    pub const ENTER: u8 = 0x28;
    pub const TAB: u8 = 0x2B;
    pub const DOWN: u8 = 0x51;
    pub const UP: u8 = 0x52;
    pub const ESCAPE: u8 = 0x29;
    pub const LEFT_GUI: u8 = 0x08;
    pub const LEFT_SHIFT: u8 = 0x02;
}

impl Ch9329 {
    pub fn open(path: &Path) -> Ch9329 {
        let port = serialport::new(path.to_string_lossy(), 9600)
            .timeout(Duration::from_secs(5))
            .open_native()
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Ch9329 { port }
    }

    /// Sends raw bytes and reads one reply frame.
    pub fn exchange(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.port.write_all(bytes).unwrap();
        let mut head = [0u8; 5];
        self.port.read_exact(&mut head).unwrap();
        let mut rest = vec![0u8; head[4] as usize + 1];
        self.port.read_exact(&mut rest).unwrap();
        let mut reply = head.to_vec();
        reply.extend_from_slice(&rest);
        reply
    }

    /// Sends one keyboard report and checks the chip acknowledged it.
    pub fn report(&mut self, modifiers: u8, key: u8) {
        let reply = self.exchange(&ch9329_frame(0x02, &[modifiers, 0, key, 0, 0, 0, 0, 0]));
        assert_eq!(
            reply,
            vec![0x57, 0xAB, 0x00, 0x82, 0x01, 0x00, 0x85],
            "CH9329 ack"
        );
    }

    /// Press and release.
    pub fn tap(&mut self, modifiers: u8, key: u8) {
        self.report(modifiers, key);
        self.report(0, 0);
    }

    pub fn windows_x5(&mut self) {
        for _ in 0..5 {
            self.tap(hid::LEFT_GUI, 0);
        }
    }

    /// Types lowercase letters, digits, '@' and '.' (US layout).
    pub fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            let (m, k) = match c {
                'a'..='z' => (0, 0x04 + (c as u8 - b'a')),
                'A'..='Z' => (hid::LEFT_SHIFT, 0x04 + (c as u8 - b'A')),
                '1'..='9' => (0, 0x1E + (c as u8 - b'1')),
                '0' => (0, 0x27),
                '@' => (hid::LEFT_SHIFT, 0x1F),
                '.' => (0, 0x37),
                '\\' => (0, 0x31),
                _ => panic!("type_text: no key for {c:?}"),
            };
            self.tap(m, k);
        }
    }
}

// ----- flows ----------------------------------------------------------------------------

/// Windows 11, CH9329: power on, Windows key x5, pre-provision, Next, Next, Provision.
pub async fn provision_win11(rig: &Rig, kb: &mut Ch9329, id: &str) {
    if rig.power_state(id).await.1.as_deref() != Some("On") {
        assert_eq!(rig.redfish_reset(id, "On").await, 204);
    }
    rig.wait_screen(id, "Let's start with region").await;
    kb.windows_x5();
    rig.wait_screen(id, "What would you like to do?").await;
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "Pre-provision with Windows Autopilot")
        .await;
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "Windows Autopilot Configuration").await;
    kb.tap(0, hid::ENTER);
}

/// The technician flow to its success screen, then Reseal, waiting for power off.
pub async fn technician_success(rig: &Rig, kb: &mut Ch9329, id: &str) {
    provision_win11(rig, kb, id).await;
    rig.wait_screen(id, "pre-provisioning succeeded").await;
    kb.tap(0, hid::ENTER);
    rig.wait_power(id, "Off").await;
}

/// The user flow's first screens (region, keyboard, skip, network).
pub async fn user_flow_to_sign_in(rig: &Rig, kb: &mut Ch9329, id: &str) {
    assert_eq!(rig.redfish_reset(id, "On").await, 204);
    rig.wait_screen(id, "Let's start with region").await;
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "right keyboard layout").await;
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "second keyboard layout").await;
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "connect you to a network").await;
    kb.tap(0, hid::ENTER);
}

/// Entra sign-in with alice's real password.
pub async fn entra_sign_in(rig: &Rig, kb: &mut Ch9329, id: &str) {
    rig.wait_screen(id, "Sign in with your work or school account")
        .await;
    kb.type_text("alice@contoso.lab");
    kb.tap(0, hid::ENTER);
    rig.wait_screen(id, "Enter password").await;
    kb.type_text(&rig.secret("alice-password"));
    kb.tap(0, hid::ENTER);
}

/// One device with a PTY console and a CH9329 keyboard, plus the rig.
pub async fn one_device(
    scale: f64,
    opts: DeviceOpts,
    register: impl FnOnce(&mut TestTenant),
) -> (Rig, ConsoleReader, Ch9329) {
    let rig = Rig::start(scale, vec![("pc01", opts)], register).await;
    let console = ConsoleReader::open(&rig.path("devices/pc01/console"));
    let kb = Ch9329::open(&rig.path("devices/pc01/ch9329"));
    (rig, console, kb)
}

/// Lab seconds of the `elapsed=HH:MM:SS` field of a console line.
pub fn elapsed_secs(line: &str) -> u64 {
    let at = line.find("elapsed=").expect("elapsed= field") + "elapsed=".len();
    let parts: Vec<u64> = line[at..at + 8]
        .split(':')
        .map(|p| p.parse().expect("HH:MM:SS"))
        .collect();
    parts[0] * 3600 + parts[1] * 60 + parts[2]
}
