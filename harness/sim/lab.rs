//! Starting and stopping the virtual lab from a validated inventory: one simulated PC per
//! inventory device, each behind the endpoints the inventory names (PTY and TCP
//! consoles, CH9329 PTYs, a PiKVM server, a Redfish server, the control endpoint). Many
//! devices share one process and one tokio runtime: per device there is state, a few
//! small tasks for its ports, and at most one timer task while it is busy.
//!
//! Everything the lab writes goes under the state dir: PTY links, secrets generated at
//! first start. Shutdown removes the links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::clock::LabClock;
use super::control::{self, Control};
use super::device::{Account, Device, Wiring};
use super::enrollment::TenantView;
use super::pikvm::{self, Kvm, Kvms};
use super::pty::Pty;
use super::redfish;
use super::{ch9329, serial};
use crate::model::inventory::{
    ConsoleConn, Inventory, KeyboardConn, PikvmConn, PowerConn, ScreenConn, SecretRef,
};

/// Why the lab could not start. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the inventory {0} has no `lab.virtual` block; `aplab lab up` needs the virtual lab's settings"
    )]
    NotVirtual(PathBuf),
    #[error("cannot create {path}: {source} (check that the state dir is writable)")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {what}: {message}")]
    Secret { what: String, message: String },
    #[error(
        "device {device}: cannot open a PTY for {path}: {source} (check /dev/pts and the open-files limit)"
    )]
    Pty {
        device: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {address} for {what}: {source} (is another lab or service using that port?)"
    )]
    Listen {
        what: String,
        address: String,
        source: std::io::Error,
    },
    #[error("device {device}: {message}")]
    Endpoint { device: String, message: String },
}

/// One endpoint the lab serves, for `aplab lab up` to print.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointInfo {
    pub device: Option<String>,
    pub kind: String,
    pub address: String,
}

/// The running lab. Dropping it without [`LabHandle::shutdown`] also stops the servers
/// (their tasks end with the runtime) but `shutdown` waits for a clean stop.
pub struct LabHandle {
    devices: Arc<BTreeMap<String, Arc<Device>>>,
    clock: Arc<LabClock>,
    endpoints: Vec<EndpointInfo>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    state_dir: PathBuf,
}

impl LabHandle {
    pub fn devices(&self) -> &BTreeMap<String, Arc<Device>> {
        &self.devices
    }

    pub fn device(&self, id: &str) -> Option<&Arc<Device>> {
        self.devices.get(id)
    }

    pub fn clock(&self) -> &Arc<LabClock> {
        &self.clock
    }

    pub fn endpoints(&self) -> &[EndpointInfo] {
        &self.endpoints
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stops every server and port, powers every device off, removes the PTY links.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for device in self.devices.values() {
            device.power_off();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

pub struct Lab;

impl Lab {
    /// Starts the lab with its own clock. Must run inside a tokio runtime.
    pub async fn start(
        inventory: &Inventory,
        tenant: Arc<Mutex<dyn TenantView>>,
    ) -> Result<LabHandle, LabError> {
        let scale = inventory
            .lab
            .virtual_lab
            .as_ref()
            .map_or(1.0, |v| v.time_scale);
        Self::start_with_clock(inventory, Arc::new(LabClock::new(scale)), tenant).await
    }

    /// Starts the lab on a clock it shares with the tenant (so both see the same lab time).
    pub async fn start_with_clock(
        inventory: &Inventory,
        clock: Arc<LabClock>,
        tenant: Arc<Mutex<dyn TenantView>>,
    ) -> Result<LabHandle, LabError> {
        ensure_secrets(inventory)?;
        let base = inventory
            .source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let virtual_lab = inventory
            .lab
            .virtual_lab
            .as_ref()
            .ok_or_else(|| LabError::NotVirtual(inventory.source.clone()))?;
        let state_dir = resolve(&virtual_lab.state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|source| LabError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let secrets = Secrets {
            state_dir: state_dir.clone(),
            resolve: &resolve,
        };
        let runtime = tokio::runtime::Handle::current();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();

        // Accounts each tenant's users sign in with.
        let mut accounts: BTreeMap<String, Vec<Account>> = BTreeMap::new();
        for (name, t) in &inventory.tenants {
            let mut list = Vec::new();
            if let crate::model::inventory::Credential::ClientSecret(s) = &t.credential {
                secrets.value(s, &format!("tenant {name} client secret"))?;
            }
            for (user_name, u) in &t.users {
                let what = format!("tenant {name} user {user_name}");
                let password = match &u.password {
                    Some(s) => secrets.value(s, &format!("{what} password"))?,
                    None => String::new(),
                };
                let ad_password = match &u.ad_password {
                    Some(s) => Some(secrets.value(s, &format!("{what} AD password"))?),
                    None => None,
                };
                list.push(Account {
                    upn: u.upn.clone(),
                    password,
                    ad_account: u.ad_account.clone(),
                    ad_password,
                });
            }
            accounts.insert(name.clone(), list);
        }

        let mut devices = BTreeMap::new();
        let mut kvm_servers: BTreeMap<String, BTreeMap<String, Kvm>> = BTreeMap::new();
        let mut redfish_servers: BTreeMap<String, BTreeMap<String, redfish::System>> =
            BTreeMap::new();
        for spec in &inventory.devices {
            let tenant_cfg = spec.tenant.as_ref().and_then(|t| inventory.tenants.get(t));
            let wiring = Wiring {
                clock: Arc::clone(&clock),
                tenant: Arc::clone(&tenant),
                tenant_id: tenant_cfg.map(|t| t.tenant_id.clone()),
                accounts: spec
                    .tenant
                    .as_ref()
                    .and_then(|t| accounts.get(t).cloned())
                    .unwrap_or_default(),
                runtime: runtime.clone(),
            };
            let device = Device::new(spec, wiring);
            let id = spec.id.clone();
            let endpoint_err = |message: String| LabError::Endpoint {
                device: id.clone(),
                message,
            };

            match &spec.console {
                Some(ConsoleConn::Serial { device: path, .. }) => {
                    let link = resolve(path);
                    let pty = Pty::open(&link).map_err(|source| LabError::Pty {
                        device: id.clone(),
                        path: link.clone(),
                        source,
                    })?;
                    endpoints.push(EndpointInfo {
                        device: Some(id.clone()),
                        kind: "console (serial PTY)".into(),
                        address: link.display().to_string(),
                    });
                    tasks.push(tokio::spawn(serial::serve_pty(
                        Arc::clone(&device),
                        pty,
                        stop_rx.clone(),
                    )));
                }
                Some(ConsoleConn::Tcp { host, port }) => {
                    let listener = listen(host, *port, &format!("{id} console")).await?;
                    endpoints.push(EndpointInfo {
                        device: Some(id.clone()),
                        kind: "console (raw TCP)".into(),
                        address: format!("{host}:{port}"),
                    });
                    tasks.push(tokio::spawn(serial::serve_tcp(
                        Arc::clone(&device),
                        listener,
                        stop_rx.clone(),
                    )));
                }
                Some(ConsoleConn::Rfc2217 { host, port, .. }) => {
                    return Err(endpoint_err(format!(
                        "the virtual lab serves raw TCP and PTY consoles, not RFC 2217 ({host}:{port}); use `console: {{ tcp: ... }}`"
                    )));
                }
                None => {}
            }
            match &spec.keyboard {
                Some(KeyboardConn::Ch9329 {
                    device: path,
                    address,
                    ..
                }) => {
                    let link = resolve(path);
                    let pty = Pty::open(&link).map_err(|source| LabError::Pty {
                        device: id.clone(),
                        path: link.clone(),
                        source,
                    })?;
                    endpoints.push(EndpointInfo {
                        device: Some(id.clone()),
                        kind: "keyboard (CH9329 PTY)".into(),
                        address: link.display().to_string(),
                    });
                    tasks.push(tokio::spawn(ch9329::serve(
                        Arc::clone(&device),
                        pty,
                        *address,
                        stop_rx.clone(),
                    )));
                }
                Some(KeyboardConn::Pikvm(k)) => {
                    add_kvm(&mut kvm_servers, k, &device, &secrets).map_err(endpoint_err)?
                }
                None => {}
            }
            if let Some(ScreenConn::Pikvm(k)) = &spec.screen {
                add_kvm(&mut kvm_servers, k, &device, &secrets).map_err(endpoint_err)?;
            }
            match &spec.power {
                Some(PowerConn::Pikvm(k)) => {
                    add_kvm(&mut kvm_servers, k, &device, &secrets).map_err(endpoint_err)?
                }
                Some(PowerConn::Redfish {
                    url,
                    system,
                    user,
                    password,
                    ..
                }) => {
                    let (authority, _) = split_url(url).map_err(endpoint_err)?;
                    let credentials = match (user, password) {
                        (Some(user), Some(secret)) => Some((
                            user.clone(),
                            secrets.value(secret, &format!("Redfish password for {id}"))?,
                        )),
                        _ => None,
                    };
                    redfish_servers.entry(authority).or_default().insert(
                        system.clone(),
                        redfish::System {
                            device: Arc::clone(&device),
                            credentials,
                        },
                    );
                }
                Some(other) => {
                    return Err(endpoint_err(format!(
                        "the virtual lab serves Redfish and PiKVM power, not {}",
                        other.controller()
                    )));
                }
                None => {}
            }
            devices.insert(id, device);
        }
        let devices = Arc::new(devices);

        for (authority, kvms) in kvm_servers {
            let listener = listen_authority(&authority, "PiKVM API").await?;
            for prefix in kvms.keys() {
                endpoints.push(EndpointInfo {
                    device: Some(prefix.clone()),
                    kind: "PiKVM".into(),
                    address: format!("http://{authority}/{prefix}"),
                });
            }
            tasks.push(serve_http(
                listener,
                pikvm::router(Kvms::new(kvms)),
                stop_rx.clone(),
            ));
        }
        for (authority, systems) in redfish_servers {
            let listener = listen_authority(&authority, "Redfish").await?;
            for system in systems.keys() {
                endpoints.push(EndpointInfo {
                    device: Some(system.clone()),
                    kind: "Redfish".into(),
                    address: format!("http://{authority}/redfish/v1/Systems/{system}"),
                });
            }
            tasks.push(serve_http(
                listener,
                redfish::router(Arc::new(systems)),
                stop_rx.clone(),
            ));
        }
        if let Some(c) = &virtual_lab.control {
            let listener = listen(&c.host, c.port, "control endpoint").await?;
            endpoints.push(EndpointInfo {
                device: None,
                kind: "control (test-only)".into(),
                address: format!("http://{}:{}", c.host, c.port),
            });
            let router = control::router(Control {
                devices: Arc::clone(&devices),
                clock: Arc::clone(&clock),
            });
            tasks.push(serve_http(listener, router, stop_rx.clone()));
        }
        Ok(LabHandle {
            devices,
            clock,
            endpoints,
            stop,
            tasks,
            state_dir,
        })
    }
}

/// Creates, with random values, every file secret under the state dir that does not exist
/// yet (the lab's first start), so the tenant and the harness can read them.
pub fn ensure_secrets(inventory: &Inventory) -> Result<(), LabError> {
    let base = inventory
        .source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let Some(virtual_lab) = &inventory.lab.virtual_lab else {
        return Err(LabError::NotVirtual(inventory.source.clone()));
    };
    let secrets = Secrets {
        state_dir: resolve(&virtual_lab.state_dir),
        resolve: &resolve,
    };
    let mut refs: Vec<(String, &SecretRef)> = Vec::new();
    for (name, t) in &inventory.tenants {
        match &t.credential {
            crate::model::inventory::Credential::ClientSecret(s) => {
                refs.push((format!("tenant {name} client secret"), s))
            }
            crate::model::inventory::Credential::Certificate { key, .. } => {
                refs.push((format!("tenant {name} certificate key"), key))
            }
        }
        for (user, u) in &t.users {
            for s in [&u.password, &u.ad_password].into_iter().flatten() {
                refs.push((format!("tenant {name} user {user} password"), s));
            }
        }
    }
    for d in &inventory.devices {
        let kvms = [
            match &d.power {
                Some(PowerConn::Pikvm(k)) => Some(k),
                _ => None,
            },
            match &d.keyboard {
                Some(KeyboardConn::Pikvm(k)) => Some(k),
                _ => None,
            },
            match &d.screen {
                Some(ScreenConn::Pikvm(k)) => Some(k),
                None => None,
            },
        ];
        for k in kvms.into_iter().flatten() {
            refs.push((format!("PiKVM password for {}", d.id), &k.password));
        }
        if let Some(PowerConn::Redfish {
            password: Some(s), ..
        }) = &d.power
        {
            refs.push((format!("Redfish password for {}", d.id), s));
        }
    }
    for (what, secret) in refs {
        if matches!(secret, SecretRef::File(_)) {
            secrets.value(secret, &what)?;
        }
    }
    Ok(())
}

/// Reads secrets; a file secret under the state dir that does not exist yet is created
/// with a random value (first start of the lab).
struct Secrets<'a> {
    state_dir: PathBuf,
    resolve: &'a dyn Fn(&Path) -> PathBuf,
}

impl Secrets<'_> {
    fn value(&self, secret: &SecretRef, what: &str) -> Result<String, LabError> {
        let err = |message: String| LabError::Secret {
            what: what.to_string(),
            message,
        };
        match secret {
            SecretRef::Env(var) => std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set"))),
            SecretRef::File(path) => {
                let path = (self.resolve)(path);
                if !path.exists() && path.starts_with(&self.state_dir) {
                    generate(&path).map_err(|e| {
                        err(format!(
                            "cannot create {}: {e} (check permissions)",
                            path.display()
                        ))
                    })?;
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                Ok(text.trim_end_matches(['\n', '\r']).to_string())
            }
        }
    }
}

fn generate(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let value: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{value}")
}

fn add_kvm(
    servers: &mut BTreeMap<String, BTreeMap<String, Kvm>>,
    conn: &PikvmConn,
    device: &Arc<Device>,
    secrets: &Secrets<'_>,
) -> Result<(), String> {
    let (authority, prefix) = split_url(&conn.url)?;
    if prefix.is_empty() || prefix.contains('/') {
        return Err(format!(
            "PiKVM url {} must be http://host:port/<one path segment> in the virtual lab",
            conn.url
        ));
    }
    let password = secrets
        .value(&conn.password, &format!("PiKVM password for {}", device.id))
        .map_err(|e| e.to_string())?;
    servers.entry(authority).or_default().insert(
        prefix,
        Kvm {
            device: Arc::clone(device),
            user: conn.user.clone(),
            password,
        },
    );
    Ok(())
}

/// `http://127.0.0.1:17300/pc03` -> (`127.0.0.1:17300`, `pc03`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad url {url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "{url}: the virtual lab serves plain http on 127.0.0.1"
        ));
    }
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url} has no port"))?;
    let prefix = parsed.path().trim_matches('/').to_string();
    Ok((format!("{host}:{port}"), prefix))
}

async fn listen(host: &str, port: u16, what: &str) -> Result<TcpListener, LabError> {
    listen_authority(&format!("{host}:{port}"), what).await
}

async fn listen_authority(authority: &str, what: &str) -> Result<TcpListener, LabError> {
    let err = |source| LabError::Listen {
        what: what.to_string(),
        address: authority.to_string(),
        source,
    };
    let addr: SocketAddr = match authority.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(authority)
            .await
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("host does not resolve")))?,
    };
    TcpListener::bind(addr).await.map_err(err)
}

fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
    })
}
