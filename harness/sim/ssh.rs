//! The SSH server of a simulated Windows device: what a lab image with OpenSSH Server and
//! PowerShell as the default shell offers. One listener per device on 127.0.0.1 at the
//! device's `shell.port`; public-key auth only, for one user and the lab's client key; a
//! host key generated once per device and kept in the lab state dir, so the lab's
//! `known_hosts` stays valid across lab restarts.
//!
//! While the device is off or not booted (or, with the `SshRefusedDuringReboot` fault,
//! while it reboots) the listener is closed, so clients get "connection refused" as from
//! a real PC; open sessions are dropped when the device goes down. `exec` requests run
//! through [`crate::sim::windows::run_command`]; the `sftp` subsystem serves the files
//! those commands wrote (the diagnostics zip), mapped through [`WinPath`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use russh_sftp::protocol::{Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status};
use russh_sftp::protocol::{StatusCode, Version};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::inventory::{self, Fault};
use crate::sim::snapshot::{ShellTarget, WindowsSnapshot};
use crate::sim::windows::{self, HOME, WinPath};
/// How often the listener looks at the device's power and boot state.
const STATE_POLL: Duration = Duration::from_millis(100);
/// How long a session of a device that went down may take to send what it had queued.
const DRAIN: Duration = Duration::from_secs(5);

/// One device's SSH endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellDevice {
    pub id: String,
    pub port: u16,
    /// The only account that may log in (the inventory's `shell.ssh.user`).
    pub user: String,
    /// Fault `SshRefusedDuringReboot`: refuse connections while the device reboots.
    pub refuse_during_reboot: bool,
}

impl ShellDevice {
    /// The SSH settings of an inventory device that has a shell; `None` otherwise.
    pub fn from_inventory(device: &inventory::Device) -> Option<ShellDevice> {
        let shell = device.shell.as_ref()?;
        let refuse_during_reboot = device
            .sim
            .as_ref()
            .is_some_and(|s| s.faults.contains(&Fault::SshRefusedDuringReboot));
        Some(ShellDevice {
            id: device.id.clone(),
            port: shell.port,
            user: shell.user.clone(),
            refuse_during_reboot,
        })
    }

    /// SSH answers: the device is on, Windows has booted, and no fault blocks it.
    pub fn reachable(&self, s: &WindowsSnapshot) -> bool {
        s.powered && s.booted && !(self.refuse_during_reboot && s.rebooting)
    }
}

/// What went wrong setting up a device's SSH endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SshSetupError {
    #[error("cannot {action} {path}: {source} (check that the lab state dir is writable)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable OpenSSH private key: {message} (delete it and the lab makes a new one)"
    )]
    BadKey { path: PathBuf, message: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshSetupError {
    let path = path.to_path_buf();
    move |source| SshSetupError::Io {
        action,
        path,
        source,
    }
}

/// Where a device keeps its SSH state under the lab state dir.
pub fn device_dir(state_dir: &Path, device_id: &str) -> PathBuf {
    state_dir.join("devices").join(device_id)
}

/// The directory the device's commands write into and SFTP serves from.
pub fn files_dir(state_dir: &Path, device_id: &str) -> PathBuf {
    device_dir(state_dir, device_id).join("files")
}

/// Loads the Ed25519 key at `path`, or makes one (and its `.pub`) if there is none.
pub fn load_or_create_key(path: &Path, comment: &str) -> Result<PrivateKey, SshSetupError> {
    if path.exists() {
        return PrivateKey::read_openssh_file(path).map_err(|e| SshSetupError::BadKey {
            path: path.to_path_buf(),
            message: e.to_string(),
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SshSetupError::BadKey {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_private(path, text.as_bytes()).map_err(io_error("write", path))?;
    let public = public_line(key.public_key());
    // OpenSSH keeps the public half next to the key, with `.pub` appended.
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    std::fs::write(&pub_path, format!("{public}\n")).map_err(io_error("write", &pub_path))?;
    Ok(key)
}

/// Writes a private key readable by its owner only (OpenSSH refuses looser modes).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn public_line(key: &PublicKey) -> String {
    key.to_openssh().unwrap_or_default()
}

/// The device's host key, made on first use and kept under the state dir.
pub fn host_key(state_dir: &Path, device_id: &str) -> Result<PrivateKey, SshSetupError> {
    load_or_create_key(
        &device_dir(state_dir, device_id).join("ssh_host_ed25519_key"),
        &format!("{device_id} host key"),
    )
}

/// Prepares what the inventory points the harness at: the lab client key pair at
/// `key_file` (made if missing) and `known_hosts` listing every device's host key as
/// `[127.0.0.1]:PORT ssh-ed25519 ...`. Returns the client public key the devices accept.
pub fn write_client_wiring(
    state_dir: &Path,
    key_file: &Path,
    known_hosts: &Path,
    devices: &[ShellDevice],
) -> Result<PublicKey, SshSetupError> {
    let client = load_or_create_key(key_file, "aplab lab client")?;
    let mut lines = String::new();
    for device in devices {
        let key = host_key(state_dir, &device.id)?;
        let mut public = key.public_key().clone();
        public.set_comment("");
        lines.push_str(&format!(
            "[127.0.0.1]:{} {}\n",
            device.port,
            public_line(&public).trim_end()
        ));
    }
    if let Some(parent) = known_hosts.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    std::fs::write(known_hosts, lines).map_err(io_error("write", known_hosts))?;
    Ok(client.public_key().clone())
}

/// A path from the inventory, taken relative to the inventory file when it is relative.
pub fn inventory_path(inventory: &inventory::Inventory, path: &Path) -> PathBuf {
    match inventory.source.parent() {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    }
}

/// One device's SSH endpoint, ready to start once its device exists.
pub struct ShellPlan {
    pub device: ShellDevice,
    pub host_key: PrivateKey,
    pub authorized: PublicKey,
    pub files_dir: PathBuf,
}

impl ShellPlan {
    pub fn start(self, target: Arc<dyn ShellTarget>) -> SshEndpoint {
        SshEndpoint::start(
            self.device,
            target,
            self.host_key,
            self.authorized,
            self.files_dir,
        )
    }
}

/// Prepares the SSH side of every simulated device in a virtual-lab inventory: host keys,
/// the client key pair and known_hosts at the paths the inventory gives (see
/// [`write_client_wiring`]). Devices without a shell, and labs that are not virtual, get
/// nothing.
pub fn prepare_lab_shells(
    inventory: &inventory::Inventory,
) -> Result<Vec<ShellPlan>, SshSetupError> {
    let Some(lab) = &inventory.lab.virtual_lab else {
        return Ok(Vec::new());
    };
    let state_dir = inventory_path(inventory, &lab.state_dir);
    // Devices sharing a client key and known_hosts file are wired together.
    let mut groups: Vec<((PathBuf, PathBuf), Vec<ShellDevice>)> = Vec::new();
    for device in inventory.devices.iter().filter(|d| d.sim.is_some()) {
        let (Some(conn), Some(shell)) = (&device.shell, ShellDevice::from_inventory(device)) else {
            continue;
        };
        let wiring = (
            inventory_path(inventory, &conn.key_file),
            inventory_path(inventory, &conn.known_hosts),
        );
        match groups.iter_mut().find(|(w, _)| *w == wiring) {
            Some((_, devices)) => devices.push(shell),
            None => groups.push((wiring, vec![shell])),
        }
    }
    let mut plans = Vec::new();
    for ((key_file, known_hosts), devices) in groups {
        let authorized = write_client_wiring(&state_dir, &key_file, &known_hosts, &devices)?;
        for device in devices {
            plans.push(ShellPlan {
                host_key: host_key(&state_dir, &device.id)?,
                files_dir: files_dir(&state_dir, &device.id),
                authorized: authorized.clone(),
                device,
            });
        }
    }
    Ok(plans)
}

/// Everything a connection needs to know about its device.
struct DeviceContext {
    device: ShellDevice,
    target: Arc<dyn ShellTarget>,
    authorized: PublicKey,
    files_dir: PathBuf,
    config: Arc<russh::server::Config>,
}

impl DeviceContext {
    fn reachable(&self) -> bool {
        self.device.reachable(&self.target.snapshot())
    }
}

/// A running SSH endpoint. Dropping it stops the listener and ends open sessions.
pub struct SshEndpoint {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SshEndpoint {
    /// Starts the device's listener task. The port is bound whenever the device is
    /// reachable; a port that cannot be bound is logged and retried.
    pub fn start(
        device: ShellDevice,
        target: Arc<dyn ShellTarget>,
        host_key: PrivateKey,
        authorized: PublicKey,
        files_dir: PathBuf,
    ) -> SshEndpoint {
        let config = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(200),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            inactivity_timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let context = Arc::new(DeviceContext {
            device,
            target,
            authorized,
            files_dir,
            config: Arc::new(config),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(listen(context, stopped));
        SshEndpoint {
            stop,
            task: Some(task),
        }
    }

    /// Stops the listener, ends every session, and waits for the listener to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SshEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The listener loop: binds the port while the device is reachable, closes it (and ends
/// sessions) while it is not.
async fn listen(context: Arc<DeviceContext>, mut stopped: watch::Receiver<bool>) {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, context.device.port));
    let mut listener: Option<TcpListener> = None;
    // Bumped each time the device goes down; sessions end when it changes.
    let (down, _) = watch::channel(0u64);
    let mut bind_error_logged = false;
    loop {
        if *stopped.borrow() {
            break;
        }
        let reachable = context.reachable();
        if !reachable && listener.is_some() {
            listener = None;
            down.send_modify(|n| *n += 1);
        }
        if reachable && listener.is_none() {
            match TcpListener::bind(address).await {
                Ok(l) => {
                    listener = Some(l);
                    bind_error_logged = false;
                }
                Err(e) if !bind_error_logged => {
                    tracing::warn!(
                        device = %context.device.id,
                        "SSH endpoint cannot listen on {address}: {e} (check that no other process uses the port)"
                    );
                    bind_error_logged = true;
                }
                Err(_) => {}
            }
        }
        let Some(active) = &listener else {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = tokio::time::sleep(STATE_POLL) => {}
            }
            continue;
        };
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(STATE_POLL) => {}
            accepted = active.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !context.reachable() {
                    // Went down between polls: drop this one; the next turn closes the port.
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(context.clone(), stream, down.subscribe()));
            }
        }
    }
    down.send_modify(|n| *n += 1);
}

async fn serve_connection(
    context: Arc<DeviceContext>,
    stream: tokio::net::TcpStream,
    mut down: watch::Receiver<u64>,
) {
    down.mark_unchanged();
    let connection = Connection {
        context: context.clone(),
        channels: HashMap::new(),
        file_channels: Vec::new(),
    };
    let session = match russh::server::run_stream(context.config.clone(), stream, connection).await
    {
        Ok(session) => session,
        Err(e) => {
            tracing::debug!(device = %context.device.id, "SSH handshake failed: {e}");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => {
            if let Err(e) = result {
                tracing::debug!(device = %context.device.id, "SSH session ended: {e}");
            }
            return;
        }
        _ = down.changed() => {}
    }
    // The device went down. What sshd had already written still reaches the client, as
    // a machine's TCP stack delivers it while Windows shuts down: the session keeps
    // running until it has sent the disconnect, which goes out after any answer still
    // queued (e.g. the exit status of `systemreset -factoryreset`, whose reset is what
    // took the device down). Dropping the session here lost that answer under load, and
    // the client, seeing a dead link, reset Windows a second time.
    tokio::spawn(async move {
        let _ = handle
            .disconnect(
                Disconnect::ByApplication,
                "device went down".into(),
                "en".into(),
            )
            .await;
    });
    if tokio::time::timeout(DRAIN, &mut session).await.is_err() {
        tracing::debug!(device = %context.device.id, "SSH session did not end within {DRAIN:?} of the device going down");
    }
}

/// A legacy scp download: `scp -f PATH` (`-pf` also asks for the file's times), what
/// `scp -O` and libssh2's scp_recv run on the device.
struct ScpDownload {
    path: String,
    with_times: bool,
}

/// The scp download a command asks for, or `None` for any other command.
fn scp_download(command: &str) -> Option<ScpDownload> {
    let words: Vec<String> = windows::split_command_line(command)
        .ok()?
        .into_iter()
        .filter_map(|w| match w {
            windows::Word::Text(t) => Some(t),
            windows::Word::Pipe => None,
        })
        .collect();
    let (program, args) = words.split_first()?;
    let program = program.to_ascii_lowercase();
    if program != "scp" && program != "scp.exe" {
        return None;
    }
    let flags: String = args
        .iter()
        .filter(|a| a.starts_with('-') && !a.starts_with("--"))
        .flat_map(|a| a.chars().skip(1))
        .collect();
    if !flags.contains('f') {
        return None;
    }
    let path = args.iter().rev().find(|a| !a.starts_with('-')).cloned()?;
    Some(ScpDownload {
        path,
        with_times: flags.contains('p'),
    })
}

/// A file of the device: generated from its state (the IME logs) or written by a command.
fn device_file(
    target: &dyn ShellTarget,
    files_dir: &Path,
    path: &WinPath,
) -> Result<Vec<u8>, StatusCode> {
    if let Some(bytes) = windows::generated_file(&target.snapshot(), path) {
        return Ok(bytes);
    }
    let local = path.local(files_dir);
    match std::fs::symlink_metadata(&local) {
        Ok(meta) if meta.is_file() => std::fs::read(&local).map_err(|_| StatusCode::Failure),
        Ok(_) => Err(StatusCode::PermissionDenied),
        Err(_) => Err(StatusCode::NoSuchFile),
    }
}

/// One client connection.
struct Connection {
    context: Arc<DeviceContext>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Channels running the sftp subsystem: they end when the client sends EOF.
    file_channels: Vec<ChannelId>,
}

impl Connection {
    fn allowed(&self, user: &str, key: &PublicKey) -> Auth {
        if user == self.context.device.user && key.key_data() == self.context.authorized.key_data()
        {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl Connection {
    /// Answers `scp -f PATH` in the scp protocol's source role, on its own task: the
    /// client acknowledges each step with a zero byte before the next may be sent.
    fn send_by_scp(
        &mut self,
        channel: ChannelId,
        download: ScpDownload,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let raw = download.path.as_str();
        let Some(open) = self.channels.remove(&channel) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let file = WinPath::parse(raw)
            .ok_or(StatusCode::NoSuchFile)
            .and_then(|path| {
                device_file(self.context.target.as_ref(), &self.context.files_dir, &path)
                    .map(|bytes| (path, bytes))
            });
        let mtime = file
            .as_ref()
            .ok()
            .and_then(|(path, _)| std::fs::metadata(path.local(&self.context.files_dir)).ok())
            .and_then(|m| m.modified().ok())
            .unwrap_or_else(std::time::SystemTime::now)
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let times = download.with_times.then_some(mtime);
        tokio::spawn(async move {
            let mut open = open;
            let code = scp_exchange(&mut open, file, times, &download.path)
                .await
                .unwrap_or(1);
            let _ = open.exit_status(code).await;
            let _ = open.eof().await;
            let _ = open.close().await;
        });
        Ok(())
    }
}

/// Waits for the client's zero-byte acknowledgement. After the last file a client may
/// instead just send EOF (libssh2's scp_recv does), which ends the exchange as well.
async fn scp_ack(channel: &mut Channel<Msg>, last: bool) -> Result<(), russh::Error> {
    while let Some(message) = channel.wait().await {
        match message {
            russh::ChannelMsg::Data { data } => {
                return match data.first() {
                    Some(0) => Ok(()),
                    _ => Err(russh::Error::Disconnect),
                };
            }
            russh::ChannelMsg::Eof if last => return Ok(()),
            _ => {}
        }
    }
    Err(russh::Error::Disconnect)
}

/// The exchange itself; returns the exit status to report.
async fn scp_exchange(
    channel: &mut Channel<Msg>,
    file: Result<(WinPath, Vec<u8>), StatusCode>,
    times: Option<u64>,
    raw: &str,
) -> Result<u32, russh::Error> {
    scp_ack(channel, false).await?;
    let Ok((path, bytes)) = file else {
        let message = format!("\u{1}scp: {raw}: No such file or directory\n");
        channel.data(message.as_bytes()).await?;
        return Ok(1);
    };
    if let Some(mtime) = times {
        let line = format!("T{mtime} 0 {mtime} 0\n");
        channel.data(line.as_bytes()).await?;
        scp_ack(channel, false).await?;
    }
    let name = path.display();
    let name = name.rsplit('\\').next().unwrap_or("file").to_string();
    let header = format!("C0644 {} {name}\n", bytes.len());
    channel.data(header.as_bytes()).await?;
    scp_ack(channel, false).await?;
    channel.data(&bytes[..]).await?;
    channel.data(&[0u8][..]).await?;
    scp_ack(channel, true).await?;
    Ok(0)
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.allowed(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.allowed(user, key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        if let Some(download) = scp_download(&command) {
            return self.send_by_scp(channel, download, session);
        }
        let snapshot = self.context.target.snapshot();
        let files_dir = self.context.files_dir.clone();
        let command_for_effect = command.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            windows::run_command(&snapshot, &command, &files_dir)
        })
        .await
        .unwrap_or_else(|_| (1, String::new(), "the command crashed\r\n".to_string()));
        session.channel_success(channel)?;
        if !out.is_empty() {
            session.data(channel, out.into_bytes())?;
        }
        if !err.is_empty() {
            session.extended_data(channel, 1, err.into_bytes())?;
        }
        session.exit_status_request(channel, u32::try_from(code).unwrap_or(1))?;
        session.eof(channel)?;
        session.close(channel)?;
        self.channels.remove(&channel);
        // The command has answered; now the device acts on it (and may go down).
        if code == 0
            && windows::effect_of(&command_for_effect) == Some(windows::Effect::FactoryReset)
        {
            self.context.target.factory_reset();
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.extended_data(
            channel,
            1,
            b"This lab device runs one command per connection: ssh HOST 'command'\r\n".to_vec(),
        )?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The client is done with its file transfer: end the subsystem as sshd does, with
        // an exit status (scp and sftp report failure without one).
        if let Some(at) = self.file_channels.iter().position(|c| *c == channel) {
            self.file_channels.swap_remove(at);
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match (name, self.channels.remove(&channel)) {
            ("sftp", Some(open)) => {
                session.channel_success(channel)?;
                let sftp = FileService {
                    target: self.context.target.clone(),
                    files_dir: self.context.files_dir.clone(),
                    open: HashMap::new(),
                    next_handle: 0,
                };
                self.file_channels.push(channel);
                russh_sftp::server::run(open.into_stream(), sftp).await;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }
}

/// The `sftp` subsystem: read-only access to the device's files (what its commands
/// wrote, plus the logs it generates), by Windows path.
struct FileService {
    target: Arc<dyn ShellTarget>,
    files_dir: PathBuf,
    /// Open files by handle; the lab's files are small, so they are read whole.
    open: HashMap<String, Vec<u8>>,
    next_handle: u64,
}

fn status(id: u32, code: StatusCode, message: &str) -> Status {
    Status {
        id,
        status_code: code,
        error_message: message.to_string(),
        language_tag: "en-US".to_string(),
    }
}

impl FileService {
    fn path(&self, raw: &str) -> Result<WinPath, StatusCode> {
        let raw = if raw.is_empty() || raw == "." {
            HOME
        } else {
            raw
        };
        WinPath::parse(raw).ok_or(StatusCode::NoSuchFile)
    }

    fn content(&self, path: &WinPath) -> Result<Vec<u8>, StatusCode> {
        device_file(self.target.as_ref(), &self.files_dir, path)
    }

    fn attributes(&self, path: &WinPath) -> Result<FileAttributes, StatusCode> {
        if let Some(bytes) = windows::generated_file(&self.target.snapshot(), path) {
            return Ok(FileAttributes {
                size: Some(bytes.len() as u64),
                permissions: Some(0o100644),
                ..Default::default()
            });
        }
        let meta = std::fs::symlink_metadata(path.local(&self.files_dir))
            .map_err(|_| StatusCode::NoSuchFile)?;
        Ok(FileAttributes {
            size: Some(meta.len()),
            permissions: Some(if meta.is_dir() { 0o40755 } else { 0o100644 }),
            mtime: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| u32::try_from(d.as_secs()).ok()),
            ..Default::default()
        })
    }
}

impl russh_sftp::server::Handler for FileService {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path)?;
        Ok(Name {
            id,
            files: vec![File::dummy(path.sftp())],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path)?;
        Ok(Attrs {
            id,
            attrs: self.attributes(&path)?,
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        if pflags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        ) {
            return Err(StatusCode::PermissionDenied);
        }
        let path = self.path(&filename)?;
        let content = self.content(&path)?;
        self.next_handle += 1;
        let handle = format!("h{}", self.next_handle);
        self.open.insert(handle.clone(), content);
        Ok(Handle { id, handle })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let content = self.open.get(&handle).ok_or(StatusCode::Failure)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= content.len() {
            return Err(StatusCode::Eof);
        }
        let end = content.len().min(start.saturating_add(len as usize));
        Ok(Data {
            id,
            data: content[start..end].to_vec(),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let content = self.open.get(&handle).ok_or(StatusCode::Failure)?;
        let attrs = FileAttributes {
            size: Some(content.len() as u64),
            permissions: Some(0o100644),
            ..Default::default()
        };
        Ok(Attrs { id, attrs })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.open.remove(&handle);
        Ok(status(id, StatusCode::Ok, "Ok"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::*;
    use std::collections::BTreeMap;

    fn device(id: &str, port: Option<u16>, faults: Vec<Fault>) -> Device {
        Device {
            id: id.into(),
            serial: format!("SN-{id}"),
            manufacturer: "Dell Inc.".into(),
            model: "Latitude 7440".into(),
            windows: Windows {
                edition: Edition::Enterprise,
                version: 11,
                build: None,
            },
            tpm: None,
            tags: BTreeMap::new(),
            power: None,
            console: None,
            keyboard: None,
            screen: None,
            shell: port.map(|port| ShellConn {
                host: "127.0.0.1".into(),
                port,
                user: "labadmin".into(),
                key_file: "lab-state/keys/aplab_ed25519".into(),
                known_hosts: "lab-state/known_hosts".into(),
                host_key_policy: HostKeyPolicy::Strict,
                flavor: ShellFlavor::Powershell,
            }),
            tpm_access: None,
            tenant: None,
            health_scenario: None,
            sim: Some(SimDevice {
                faults,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_inventory_wires_every_simulated_shell() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory {
            source: dir.path().join("lab-inventory.yaml"),
            lab: Lab {
                name: "virtual-lab".into(),
                ledger: "lab-state/ledger.sqlite".into(),
                reports: "reports".into(),
                virtual_lab: Some(VirtualLab {
                    time_scale: 600.0,
                    state_dir: "lab-state".into(),
                    control: None,
                    tenant: None,
                    tpm_ca_dir: None,
                }),
            },
            tenants: BTreeMap::new(),
            devices: vec![
                device("pc01", Some(17401), vec![]),
                device("pc02", Some(17402), vec![Fault::SshRefusedDuringReboot]),
                device("pc03", None, vec![]),
            ],
        };
        let plans = prepare_lab_shells(&inventory).unwrap();
        let ids: Vec<&str> = plans.iter().map(|p| p.device.id.as_str()).collect();
        assert_eq!(ids, ["pc01", "pc02"]);
        assert!(!plans[0].device.refuse_during_reboot);
        assert!(plans[1].device.refuse_during_reboot);
        let state = dir.path().join("lab-state");
        assert!(state.join("keys/aplab_ed25519").is_file());
        assert!(state.join("keys/aplab_ed25519.pub").is_file());
        let known = std::fs::read_to_string(state.join("known_hosts")).unwrap();
        assert!(known.contains("[127.0.0.1]:17402 ssh-ed25519 "), "{known}");
        assert_eq!(plans[1].files_dir, state.join("devices/pc02/files"));
        // Host keys are stable: preparing again gives the same keys.
        let again = prepare_lab_shells(&inventory).unwrap();
        assert_eq!(
            again[0].host_key.public_key().key_data(),
            plans[0].host_key.public_key().key_data()
        );
    }
}
