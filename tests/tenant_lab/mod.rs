//! A virtual tenant for the tenant tests: the sim's Graph-style server on 127.0.0.1 (free
//! port), seeded from an inventory built here, and a Graph backend configured for it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aplab::device::tenant::{GraphTenant, RetryPolicy};
use aplab::model::inventory::{
    Credential, Device, Edition, Endpoint, Fault, Inventory, Lab, SecretRef, SimDevice,
    TenantConfig, TenantUser, VirtualLab, Windows,
};
use aplab::sim::clock::LabClock;
use aplab::sim::tenant::{Settings, SimTenant, TenantServer};

pub const SECRET: &str = "lab-secret-Zq8~do-not-print";
pub const TENANT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
pub const USER: &str = "alice@contoso.test";

pub fn device(id: &str, serial: &str) -> Device {
    Device {
        id: id.into(),
        serial: serial.into(),
        manufacturer: "Lenovo".into(),
        model: "ThinkPad T14".into(),
        windows: Windows {
            edition: Edition::Pro,
            version: 11,
            build: None,
        },
        tpm: None,
        tags: BTreeMap::new(),
        power: None,
        console: None,
        keyboard: None,
        screen: None,
        shell: None,
        tpm_access: None,
        tenant: Some("lab".into()),
        health_scenario: None,
        sim: Some(SimDevice {
            registered: true,
            allow_preprovisioning: true,
            ..SimDevice::default()
        }),
    }
}

pub fn with_sim(mut d: Device, change: impl FnOnce(&mut SimDevice)) -> Device {
    change(d.sim.as_mut().expect("test devices have a sim block"));
    d
}

pub fn throttled(d: Device, requests: u32) -> Device {
    with_sim(d, |s| s.faults.push(Fault::GraphThrottle { requests }))
}

pub fn tagged(mut d: Device, group_tag: &str) -> Device {
    d.tags.insert("group_tag".into(), group_tag.into());
    d
}

pub struct TestLab {
    pub sim: SimTenant,
    pub server: TenantServer,
    pub config: TenantConfig,
    pub inventory: Inventory,
    dir: tempfile::TempDir,
}

/// Retries short enough for tests, long enough for a loaded machine.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
    }
}

impl TestLab {
    pub async fn start(devices: Vec<Device>, scale: f64, settings: Settings) -> TestLab {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
        Self::start_with(
            dir,
            devices,
            scale,
            settings,
            Credential::ClientSecret(SecretRef::File(secret_file)),
        )
        .await
    }

    /// A lab whose app proves itself with a certificate (files made by `certificate_pair`).
    pub async fn start_with_certificate(devices: Vec<Device>) -> TestLab {
        let dir = tempfile::tempdir().expect("temp dir");
        let (certificate, key) = certificate_pair(dir.path(), "registered");
        let credential = Credential::Certificate {
            certificate,
            key: SecretRef::File(key),
        };
        Self::start_with(dir, devices, 1.0, Settings::default(), credential).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        devices: Vec<Device>,
        scale: f64,
        settings: Settings,
        credential: Credential,
    ) -> TestLab {
        let mut config = TenantConfig {
            name: "lab".into(),
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            credential,
            graph_url: String::new(),
            login_url: String::new(),
            users: BTreeMap::from([(
                "default".to_string(),
                TenantUser {
                    upn: USER.into(),
                    password: None,
                    ad_account: None,
                    ad_password: None,
                },
            )]),
            organization: Some("Contoso Lab".into()),
            profile: None,
        };
        let mut inventory = Inventory {
            source: dir.path().join("lab-inventory.yaml"),
            lab: Lab {
                name: "test".into(),
                ledger: dir.path().join("ledger.sqlite"),
                reports: dir.path().join("reports"),
                virtual_lab: Some(VirtualLab {
                    time_scale: scale,
                    state_dir: dir.path().join("state"),
                    control: None,
                    tenant: Some(Endpoint {
                        host: "127.0.0.1".into(),
                        port: 0,
                    }),
                    tpm_ca_dir: None,
                }),
            },
            tenants: BTreeMap::from([("lab".to_string(), config.clone())]),
            devices,
        };
        let clock = Arc::new(LabClock::new(scale));
        let (sim, server) = SimTenant::start(&inventory, clock, settings)
            .await
            .expect("start the virtual tenant");
        config.graph_url = server.url();
        config.login_url = server.url();
        inventory.tenants.insert("lab".into(), config.clone());
        TestLab {
            sim,
            server,
            config,
            inventory,
            dir,
        }
    }

    pub fn graph(&self) -> GraphTenant {
        GraphTenant::with_policy(&self.config, fast_policy()).expect("graph backend")
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A config whose secret file holds `secret`.
    pub fn config_with_secret(&self, secret: &str) -> TenantConfig {
        let path = self.dir.path().join("other-secret");
        std::fs::write(&path, secret).expect("write secret");
        let mut config = self.config.clone();
        config.credential = Credential::ClientSecret(SecretRef::File(path));
        config
    }
}

/// An RSA key and a self-signed certificate for it, made by the openssl CLI:
/// `(certificate.pem, key.pem)` in `dir`, named after `name`.
pub fn certificate_pair(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let certificate = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN=aplab-{name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl CLI is needed for certificate tests: run `make deps` (Debian package openssl)");
    assert!(
        status.success(),
        "openssl could not make a test certificate"
    );
    (certificate, key)
}
