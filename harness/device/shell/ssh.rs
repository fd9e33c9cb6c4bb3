//! The `Shell` capability over SSH (libssh2 through the `ssh2` crate).
//!
//! ssh2 is blocking, so every operation runs on tokio's blocking pool. One session per
//! device is kept and reused behind a mutex (which also serialises commands to the
//! device); when it turns out dead (the device rebooted) it is replaced by a new
//! connection, tried a bounded number of times. A command is only retried when its
//! channel could not be opened, i.e. before it was sent: a command is never run twice.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ssh2::{
    BlockDirections, Channel, CheckResult, HashType, HostKeyType, KnownHostFileKind, Session, Sftp,
};

use super::quote::command_line;
use crate::device::{CommandOutput, DeviceError, DeviceResult, Shell};
use crate::model::inventory::{HostKeyPolicy, ShellConn};

/// How hard to try to (re)connect.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Budget for TCP connect, SSH handshake and authentication, each.
    pub connect_timeout: Duration,
    /// Connection attempts before giving up (a rebooting device refuses for a while).
    pub connect_attempts: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            connect_timeout: Duration::from_secs(15),
            connect_attempts: 3,
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Output kept per stream; a runaway command must not exhaust the harness's memory.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// A device's SSH shell.
pub struct SshShell {
    target: Arc<Target>,
    link: Arc<Mutex<Option<Link>>>,
}

struct Target {
    conn: ShellConn,
    settings: SshSettings,
}

/// A live, authenticated session and the socket under it (polled while reading).
struct Link {
    session: Session,
    socket: TcpStream,
}

impl SshShell {
    pub fn new(conn: ShellConn) -> Self {
        Self::with_settings(conn, SshSettings::default())
    }

    pub fn with_settings(conn: ShellConn, settings: SshSettings) -> Self {
        SshShell {
            target: Arc::new(Target { conn, settings }),
            link: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `work` on the blocking pool with this device's session slot locked.
    async fn blocking<T, F>(&self, work: F) -> DeviceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Target, &mut Option<Link>) -> DeviceResult<T> + Send + 'static,
    {
        let target = self.target.clone();
        let link = self.link.clone();
        tokio::task::spawn_blocking(move || {
            // A panic elsewhere while holding the lock leaves at worst a dead session,
            // which the next operation replaces.
            let mut slot = link.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&target, &mut slot)
        })
        .await
        .map_err(|e| DeviceError::harness(format!("SSH worker thread failed: {e}")))?
    }
}

#[async_trait]
impl Shell for SshShell {
    async fn run(
        &self,
        program: &str,
        args: &[String],
        timeout: Duration,
    ) -> DeviceResult<CommandOutput> {
        let line = command_line(self.target.conn.flavor, program, args)?;
        let program = program.to_string();
        self.blocking(move |target, slot| target.exec(slot, &program, &line, timeout))
            .await
    }

    async fn fetch(
        &self,
        remote: &str,
        local: &Path,
        max_bytes: u64,
        timeout: Duration,
    ) -> DeviceResult<u64> {
        let remote = remote.to_string();
        let local = local.to_path_buf();
        self.blocking(move |target, slot| target.fetch(slot, &remote, &local, max_bytes, timeout))
            .await
    }
}

impl Target {
    /// `host:port` as OpenSSH writes it in known_hosts (`[host]:port` unless port 22).
    fn host_entry(&self) -> String {
        if self.conn.port == 22 {
            self.conn.host.clone()
        } else {
            format!("[{}]:{}", self.conn.host, self.conn.port)
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.conn.host, self.conn.port)
    }

    fn exec(
        &self,
        slot: &mut Option<Link>,
        program: &str,
        line: &str,
        timeout: Duration,
    ) -> DeviceResult<CommandOutput> {
        let deadline = Instant::now() + timeout;
        let (mut channel, session, socket) = self.open_channel(slot)?;
        let result = self.exec_on(
            &mut channel,
            &session,
            &socket,
            program,
            line,
            deadline,
            timeout,
        );
        if result.is_err() {
            // The session's state is unknown after a failure mid-command; start afresh.
            *slot = None;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_on(
        &self,
        channel: &mut Channel,
        session: &Session,
        socket: &TcpStream,
        program: &str,
        line: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> DeviceResult<CommandOutput> {
        let timed_out = || {
            DeviceError::timeout(format!(
                "`{program}` did not finish within {} on {}",
                humantime::format_duration(timeout),
                self.address()
            ))
            .with_hint(
                "the command may hang on the device; raise the step's timeout if it is just slow",
            )
        };
        let lost = |e: &dyn std::fmt::Display| {
            DeviceError::infrastructure(format!(
                "SSH connection to {} broke while running `{program}`: {e}",
                self.address()
            ))
            .with_hint("check that the device did not reboot or lose its network")
        };
        session.set_blocking(true);
        session.set_timeout(remaining_ms(deadline).ok_or_else(timed_out)?);
        channel.exec(line).map_err(|e| {
            if is_timeout(&e) {
                timed_out()
            } else {
                lost(&e)
            }
        })?;

        // Read stdout and stderr together without blocking on either, so a command
        // filling one stream while we wait on the other cannot stall.
        session.set_blocking(false);
        let mut stdout = Output::default();
        let mut stderr = Output::default();
        let mut buf = vec![0u8; 32 * 1024];
        while !(stdout.done && stderr.done) {
            // Checked on every round: a command that never stops printing must end too.
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            let mut progressed = false;
            for (stream_id, output) in [(0, &mut stdout), (1, &mut stderr)] {
                if output.done {
                    continue;
                }
                match channel.stream(stream_id).read(&mut buf) {
                    Ok(0) => output.done = true,
                    Ok(n) => {
                        output.push(&buf[..n]);
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(lost(&e)),
                }
            }
            if !progressed {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .ok_or_else(timed_out)?;
                wait_socket(socket, session, left.min(Duration::from_secs(1)))
                    .map_err(|e| lost(&e))?;
            }
        }
        session.set_blocking(true);
        session.set_timeout(remaining_ms(deadline).ok_or_else(timed_out)?);
        channel.wait_close().map_err(|e| {
            if is_timeout(&e) {
                timed_out()
            } else {
                lost(&e)
            }
        })?;
        let mut status = channel.exit_status().map_err(|e| lost(&e))?;
        let mut stderr = stderr.into_string();
        if let Ok(signal) = channel.exit_signal()
            && let Some(name) = signal.exit_signal
        {
            // sshd reports no exit status for a killed command; make that visible.
            status = -1;
            stderr.push_str(&format!(
                "\n[aplab: `{program}` was killed by signal {name}]"
            ));
        }
        Ok(CommandOutput {
            status,
            stdout: stdout.into_string(),
            stderr,
        })
    }

    fn fetch(
        &self,
        slot: &mut Option<Link>,
        remote: &str,
        local: &Path,
        max_bytes: u64,
        timeout: Duration,
    ) -> DeviceResult<u64> {
        if remote.is_empty() || remote.contains('\0') {
            return Err(DeviceError::config(format!(
                "remote path {remote:?} to fetch is empty or contains a NUL byte"
            )));
        }
        match local.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
            _ => {
                return Err(DeviceError::config(format!(
                    "cannot fetch {remote} to {}: its directory does not exist",
                    local.display()
                )));
            }
        }
        let deadline = Instant::now() + timeout;
        let (sftp, session) = self.open_sftp(slot, deadline)?;
        let result = self.fetch_with(&sftp, &session, remote, local, max_bytes, deadline, timeout);
        if let Err(e) = &result {
            // Never leave a truncated file that a later step could mistake for the real one.
            let _ = std::fs::remove_file(local);
            if matches!(
                e.class,
                crate::device::FailureClass::Timeout | crate::device::FailureClass::Infrastructure
            ) {
                *slot = None;
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_with(
        &self,
        sftp: &Sftp,
        session: &Session,
        remote: &str,
        local: &Path,
        max_bytes: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> DeviceResult<u64> {
        let timed_out = || {
            DeviceError::timeout(format!(
                "fetching {remote} from {} did not finish within {}",
                self.address(),
                humantime::format_duration(timeout)
            ))
        };
        let too_big = |size: u64| {
            DeviceError::config(format!(
                "remote file {remote} on {} is larger than the cap of {max_bytes} bytes{}; nothing was kept",
                self.address(),
                if size > max_bytes {
                    format!(" ({size} bytes)")
                } else {
                    String::new()
                }
            ))
            .with_hint("raise the fetch's size cap if the file is legitimately this large")
        };
        let failed = |e: ssh2::Error| {
            if is_timeout(&e) {
                return timed_out();
            }
            match e.code() {
                // LIBSSH2_FX_NO_SUCH_FILE, LIBSSH2_FX_NO_SUCH_PATH
                ssh2::ErrorCode::SFTP(2) | ssh2::ErrorCode::SFTP(10) => DeviceError::product(
                    format!("remote file {remote} does not exist on {}", self.address()),
                )
                .with_hint("check the path (on Windows, SFTP paths look like /C:/Windows/...)"),
                _ => DeviceError::infrastructure(format!(
                    "SFTP fetch of {remote} from {} failed: {e}",
                    self.address()
                )),
            }
        };
        session.set_timeout(remaining_ms(deadline).ok_or_else(timed_out)?);
        let mut source = sftp.open(Path::new(remote)).map_err(failed)?;
        // Refuse early when the size is known; the read loop below enforces the cap anyway
        // (the file may grow, and not every server reports a size).
        if let Some(size) = source.stat().map_err(failed)?.size
            && size > max_bytes
        {
            return Err(too_big(size));
        }
        let mut target = create_local(local)?;
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            session.set_timeout(remaining_ms(deadline).ok_or_else(timed_out)?);
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::TimedOut => return Err(timed_out()),
                Err(e) => {
                    return Err(DeviceError::infrastructure(format!(
                        "SFTP read of {remote} from {} failed: {e}",
                        self.address()
                    )));
                }
            };
            total += n as u64;
            if total > max_bytes {
                return Err(too_big(0));
            }
            target.write_all(&buf[..n]).map_err(|e| {
                DeviceError::harness(format!("cannot write {}: {e}", local.display()))
                    .with_hint("check free space and permissions of the artifacts directory")
            })?;
        }
        target
            .sync_all()
            .map_err(|e| DeviceError::harness(format!("cannot write {}: {e}", local.display())))?;
        Ok(total)
    }

    /// A channel on the kept session, or on a fresh one when the kept one is dead.
    fn open_channel(&self, slot: &mut Option<Link>) -> DeviceResult<(Channel, Session, TcpStream)> {
        let handles = |link: &Link| -> DeviceResult<(Session, TcpStream)> {
            let socket = link.socket.try_clone().map_err(|e| {
                DeviceError::harness(format!("cannot duplicate the SSH socket: {e}"))
            })?;
            Ok((link.session.clone(), socket))
        };
        if let Some(link) = slot.as_ref() {
            link.session.set_blocking(true);
            link.session
                .set_timeout(millis(self.settings.connect_timeout));
            match link.session.channel_session() {
                Ok(channel) => {
                    let (session, socket) = handles(link)?;
                    return Ok((channel, session, socket));
                }
                Err(e) => {
                    tracing::info!(host = %self.address(), "SSH session is dead ({e}); reconnecting");
                    *slot = None;
                }
            }
        }
        let link = self.connect_with_retry()?;
        let channel = link.session.channel_session().map_err(|e| {
            DeviceError::infrastructure(format!(
                "sshd at {} refused a session channel: {e}",
                self.address()
            ))
            .with_hint("check sshd's MaxSessions and logs on the device")
        })?;
        let (session, socket) = handles(&link)?;
        *slot = Some(link);
        Ok((channel, session, socket))
    }

    /// The SFTP subsystem on the kept session, or on a fresh one when it is dead.
    fn open_sftp(
        &self,
        slot: &mut Option<Link>,
        deadline: Instant,
    ) -> DeviceResult<(Sftp, Session)> {
        if let Some(link) = slot.as_ref() {
            link.session.set_blocking(true);
            link.session
                .set_timeout(millis(self.settings.connect_timeout));
            match link.session.sftp() {
                Ok(sftp) => return Ok((sftp, link.session.clone())),
                Err(e) => {
                    tracing::info!(host = %self.address(), "SSH session is dead ({e}); reconnecting");
                    *slot = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(DeviceError::timeout(format!(
                "no time left to open SFTP on {}",
                self.address()
            )));
        }
        let link = self.connect_with_retry()?;
        let sftp = link.session.sftp().map_err(|e| {
            DeviceError::config(format!(
                "sshd at {} does not offer SFTP: {e}",
                self.address()
            ))
            .with_hint("enable the sftp subsystem in the device's sshd_config")
        })?;
        let session = link.session.clone();
        *slot = Some(link);
        Ok((sftp, session))
    }

    /// Connects, retrying only failures that a booting device explains (refused, reset,
    /// timed out); a wrong host key or key file fails at once.
    fn connect_with_retry(&self) -> DeviceResult<Link> {
        let attempts = self.settings.connect_attempts.max(1);
        let mut pause = self.settings.retry_backoff;
        let mut attempt = 1;
        loop {
            match self.connect() {
                Ok(link) => return Ok(link),
                Err(e)
                    if attempt < attempts
                        && matches!(
                            e.class,
                            crate::device::FailureClass::Infrastructure
                                | crate::device::FailureClass::Timeout
                        ) =>
                {
                    tracing::info!(host = %self.address(), attempt, "SSH connect failed: {e}; retrying");
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connect(&self) -> DeviceResult<Link> {
        let conn = &self.conn;
        if !conn.key_file.is_file() {
            return Err(DeviceError::config(format!(
                "SSH key file {} does not exist",
                conn.key_file.display()
            ))
            .with_hint("check key_file in the device's shell entry in the inventory"));
        }
        let timeout = self.settings.connect_timeout;
        let unreachable = |e: &dyn std::fmt::Display| {
            DeviceError::infrastructure(format!("cannot reach sshd at {}: {e}", self.address()))
                .with_hint("check the device is booted and sshd/OpenSSH Server runs on it")
        };
        let addrs: Vec<SocketAddr> = (conn.host.as_str(), conn.port)
            .to_socket_addrs()
            .map_err(|e| {
                DeviceError::config(format!("cannot resolve SSH host {}: {e}", conn.host))
                    .with_hint("check host in the device's shell entry in the inventory")
            })?
            .collect();
        let mut last = None;
        let mut socket = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let socket = match socket {
            Some(s) => s,
            None => {
                let e = last
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no address".into());
                return Err(unreachable(&e));
            }
        };
        let _ = socket.set_nodelay(true);
        let mut session = Session::new()
            .map_err(|e| DeviceError::harness(format!("cannot create an SSH session: {e}")))?;
        session.set_tcp_stream(socket.try_clone().map_err(|e| unreachable(&e))?);
        session.set_timeout(millis(timeout));
        session.handshake().map_err(|e| {
            if is_timeout(&e) {
                DeviceError::timeout(format!(
                    "SSH handshake with {} did not finish within {}",
                    self.address(),
                    humantime::format_duration(timeout)
                ))
                .with_hint("check the device is booted and sshd/OpenSSH Server runs on it")
            } else {
                unreachable(&format!("SSH handshake failed: {e}"))
            }
        })?;
        self.check_host_key(&session)?;
        session
            .userauth_pubkey_file(&conn.user, None, &conn.key_file, None)
            .map_err(|e| {
                if is_timeout(&e) {
                    DeviceError::timeout(format!(
                        "SSH authentication with {} did not finish within {}",
                        self.address(),
                        humantime::format_duration(timeout)
                    ))
                } else {
                    DeviceError::config(format!(
                        "public-key authentication as {} at {} with {} failed: {e}",
                        conn.user,
                        self.address(),
                        conn.key_file.display()
                    ))
                    .with_hint(format!(
                        "check that the public half of {} is in {}'s authorized_keys on the device",
                        conn.key_file.display(),
                        conn.user
                    ))
                }
            })?;
        Ok(Link { session, socket })
    }

    /// OpenSSH's StrictHostKeyChecking: a known key must match; an unknown one is
    /// refused, or recorded when the inventory allows trust on first use.
    fn check_host_key(&self, session: &Session) -> DeviceResult<()> {
        let conn = &self.conn;
        let path = &conn.known_hosts;
        let entry = self.host_entry();
        let (key, key_type) = session.host_key().ok_or_else(|| {
            DeviceError::infrastructure(format!("sshd at {} sent no host key", self.address()))
        })?;
        let fingerprint = session
            .host_key_hash(HashType::Sha256)
            .map(|h| {
                format!(
                    "SHA256:{}",
                    openssl::base64::encode_block(h).trim_end_matches('=')
                )
            })
            .unwrap_or_else(|| "(unknown)".into());
        let mut known = session.known_hosts().map_err(|e| {
            DeviceError::harness(format!("cannot set up known_hosts checking: {e}"))
        })?;
        if path.exists() {
            known
                .read_file(path, KnownHostFileKind::OpenSSH)
                .map_err(|e| {
                    DeviceError::config(format!("cannot read known_hosts {}: {e}", path.display()))
                        .with_hint(
                            "check the file's format (one OpenSSH known_hosts entry per line)",
                        )
                })?;
        }
        match known.check_port(&conn.host, conn.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(DeviceError::config(format!(
                "host key for {entry} has CHANGED (now {fingerprint}); it differs from the one in {}",
                path.display()
            ))
            .with_hint(format!(
                "if the device was reinstalled, remove the old key from {} (ssh-keygen -f '{}' -R '{entry}'); otherwise someone may be intercepting the connection",
                path.display(),
                path.display()
            ))),
            CheckResult::NotFound if conn.host_key_policy == HostKeyPolicy::TrustOnFirstUse => {
                let name = key_type_name(key_type).ok_or_else(|| {
                    DeviceError::config(format!("sshd at {entry} offers an unknown host key type"))
                })?;
                let line = format!("{entry} {name} {}\n", openssl::base64::encode_block(key));
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()).map(|_| f))
                    .map_err(|e| {
                        DeviceError::config(format!(
                            "cannot record the host key of {entry} in {}: {e}",
                            path.display()
                        ))
                    })?;
                let _ = file.flush();
                tracing::warn!(host = %entry, %fingerprint, known_hosts = %path.display(),
                    "trusting unknown SSH host key on first use");
                Ok(())
            }
            CheckResult::NotFound => Err(DeviceError::config(format!(
                "host key for {entry} ({fingerprint}) is not in {} and the host key policy is strict",
                path.display()
            ))
            .with_hint(format!(
                "check the fingerprint on the device, then add it (ssh-keyscan -p {} {} >> '{}'), or set host_key_policy: trust-on-first-use for this device",
                conn.port,
                conn.host,
                path.display()
            ))),
            CheckResult::Failure => Err(DeviceError::harness(format!(
                "checking the host key of {entry} against {} failed",
                path.display()
            ))),
        }
    }
}

/// One stream's bytes, capped at [`MAX_OUTPUT`].
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    truncated: bool,
    done: bool,
}

impl Output {
    fn push(&mut self, data: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }

    fn into_string(self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated {
            text.push_str("\n[aplab: output truncated]");
        }
        text
    }
}

/// Creates the caller's exact local path; refuses to follow a symlink planted there.
fn create_local(local: &Path) -> DeviceResult<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(local)
        .map_err(|e| {
            DeviceError::harness(format!("cannot create {}: {e}", local.display()))
                .with_hint("check the artifacts directory exists and is writable")
        })
}

/// Waits until the socket is ready in the direction libssh2 is blocked on.
fn wait_socket(socket: &TcpStream, session: &Session, wait: Duration) -> std::io::Result<()> {
    let flags = match session.block_directions() {
        BlockDirections::Outbound => PollFlags::POLLOUT,
        BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
        BlockDirections::Inbound | BlockDirections::None => PollFlags::POLLIN,
    };
    let mut fds = [PollFd::new(socket.as_fd(), flags)];
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn is_timeout(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(-9)
}

/// Milliseconds until `deadline` (at least 1, since 0 means "no timeout" to libssh2),
/// or `None` when it has passed.
fn remaining_ms(deadline: Instant) -> Option<u32> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(millis(left))
}

fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

fn key_type_name(key_type: HostKeyType) -> Option<&'static str> {
    Some(match key_type {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => return None,
    })
}
