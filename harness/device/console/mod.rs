//! The console: one always-on reader per device over a link that may drop.
//!
//! A tokio task reads the link for as long as the [`LinkConsole`] lives. Every chunk goes
//! (a) into the log file, timestamped, whether or not a step waits, and (b) into a
//! bounded matching window that [`Console::expect`] scans. When the link drops (EOF or
//! an error) the reader reopens it with capped exponential backoff and writes the gap
//! into the log; an `expect` keeps waiting across the gap until its deadline.
//!
//! # Log format
//!
//! One line per device line, prefixed with the UTC time its first byte arrived:
//!
//! ```text
//! 2026-11-26T03:41:12.345Z | Booting Windows Boot Manager
//! 2026-11-26T03:41:13.002Z # --- link lost at 2026-11-26T03:41:13.002Z: end of stream ---
//! ```
//!
//! ` | ` lines carry device bytes, ` # ` lines are the harness's own notes, so a device
//! cannot forge a note. Device bytes are escaped losslessly: `\\` for a backslash, `\r`,
//! `\t`, `\xNN` for other control bytes and for bytes that are not UTF-8, `\u{NN}` for
//! C1 control characters; everything else is written as is. A line that ends in a single
//! unescaped `\` had no newline there (a prompt flushed after a pause, or a line longer
//! than [`ConsoleSettings::max_line`]) and continues on the next ` | ` line.
//! [`replay`] turns a log back into the exact bytes received.
//!
//! # Matching
//!
//! Patterns match within one line (a trailing `\r` is dropped). Each `expect` examines
//! every complete line once and re-examines only the current partial line, which is
//! bounded by `max_line`, so its cost is linear in the bytes received. Unmatched history
//! is bounded too (`history` bytes): older lines stay in the log but are no longer
//! matched, which keeps a long-silent step from rescanning megabytes.

pub mod serial;
pub mod tcp;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Console, ConsoleMatch, DeviceError, DeviceResult};
use crate::model::inventory::ConsoleConn;

/// The longest a single `send` may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to a console: a serial port, a TCP socket, a telnet session.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkStream for T {}

/// Something that can (re)open a console stream.
#[async_trait]
pub trait ConsoleLink: Send + Sync + 'static {
    async fn connect(&self) -> io::Result<Box<dyn LinkStream>>;
    /// Where the link goes, for the log and messages ("serial /dev/ttyUSB0").
    fn describe(&self) -> String;
    /// What the lab engineer should check when the link is down.
    fn hint(&self) -> String;
}

/// Tunables of a console; the defaults suit real labs.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// First reconnect delay; doubled after every failed attempt.
    pub backoff_first: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Unmatched bytes kept for matching; older lines are only in the log.
    pub history: usize,
    /// Longest line matched or logged as one piece; longer lines are cut.
    pub max_line: usize,
    /// A partial line (a prompt) is written to the log after this much silence.
    pub partial_flush: Duration,
    /// Bytes kept for [`Console::tail`].
    pub tail: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            history: 1 << 20,
            max_line: 4096,
            partial_flush: Duration::from_millis(200),
            tail: 64 << 10,
        }
    }
}

/// Builds the console an inventory entry describes, logging to `log_path`.
/// Must be called inside a tokio runtime (the reader is a task).
pub fn from_inventory(conn: &ConsoleConn, log_path: PathBuf) -> DeviceResult<Box<dyn Console>> {
    let link: Box<dyn ConsoleLink> = match conn {
        ConsoleConn::Serial { device, baud } => Box::new(serial::SerialLink::new(device, *baud)),
        ConsoleConn::Tcp { host, port } => Box::new(tcp::TcpLink::new(host, *port)),
        ConsoleConn::Rfc2217 { host, port, baud } => {
            Box::new(tcp::TelnetLink::new(host, *port, *baud))
        }
    };
    Ok(Box::new(LinkConsole::open(
        link,
        log_path,
        ConsoleSettings::default(),
    )?))
}

/// A console over a [`ConsoleLink`], with its always-on reader task.
pub struct LinkConsole {
    shared: Arc<Shared>,
    log_path: PathBuf,
    reader: JoinHandle<()>,
}

struct Shared {
    link: Box<dyn ConsoleLink>,
    state: Mutex<StreamState>,
    /// The write half of the current connection; `None` while the link is down.
    writer: tokio::sync::Mutex<Option<WriteHalf<Box<dyn LinkStream>>>>,
    /// Bumped whenever bytes arrive or the link changes state.
    changed: watch::Sender<u64>,
}

struct StreamState {
    window: Window,
    tail: Tail,
    link: LinkStatus,
    /// Why the log could not be written, if it could not.
    log_error: Option<String>,
}

#[derive(Debug, Clone)]
enum LinkStatus {
    Connecting,
    Up,
    Down { at: Timestamp, reason: String },
}

impl LinkConsole {
    /// Creates (or appends to) the log and starts the reader.
    pub fn open(
        link: Box<dyn ConsoleLink>,
        log_path: PathBuf,
        settings: ConsoleSettings,
    ) -> DeviceResult<Self> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| log_open_error(&log_path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| log_open_error(&log_path, e))?;
        let shared = Arc::new(Shared {
            link,
            state: Mutex::new(StreamState {
                window: Window::new(settings.history, settings.max_line),
                tail: Tail::new(settings.tail),
                link: LinkStatus::Connecting,
                log_error: None,
            }),
            writer: tokio::sync::Mutex::new(None),
            changed: watch::Sender::new(0),
        });
        let log = LogWriter::new(file, settings.max_line);
        let reader = tokio::spawn(read_forever(shared.clone(), log, settings));
        Ok(LinkConsole {
            shared,
            log_path,
            reader,
        })
    }

    /// Waits until the link is up, or fails like `expect` would.
    pub async fn wait_connected(&self, timeout: Duration) -> DeviceResult<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if matches!(self.shared.lock().link, LinkStatus::Up) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(reader_gone()),
                Err(_) => return self.link_down_error(timeout).map_or(Ok(()), Err),
            }
        }
    }

    fn link_down_error(&self, timeout: Duration) -> Option<DeviceError> {
        let status = self.shared.lock().link.clone();
        let link = self.shared.link.describe();
        let message = match status {
            LinkStatus::Up => return None,
            LinkStatus::Connecting => {
                format!("console link {link} could not be opened within {timeout:?}")
            }
            LinkStatus::Down { at, reason } => format!(
                "console link {link} lost at {at:.3} and not back within {timeout:?}: {reason}"
            ),
        };
        Some(DeviceError::infrastructure(message).with_hint(self.shared.link.hint()))
    }
}

fn log_open_error(path: &Path, e: io::Error) -> DeviceError {
    DeviceError::harness(format!("cannot write console log {}: {e}", path.display()))
        .with_hint("check that the run directory is writable and the disk is not full")
}

fn reader_gone() -> DeviceError {
    DeviceError::harness("the console reader stopped")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_link(&self, status: LinkStatus) {
        self.lock().link = status;
        self.changed.send_modify(|v| *v += 1);
    }
}

impl Drop for LinkConsole {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[async_trait]
impl Console for LinkConsole {
    async fn expect(
        &self,
        patterns: &[regex::Regex],
        timeout: Duration,
    ) -> DeviceResult<ConsoleMatch> {
        if patterns.is_empty() {
            return Err(DeviceError::harness(
                "console expect called with no pattern",
            ));
        }
        let compiled = compile(patterns)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        let mut cursor = 0u64;
        loop {
            changes.borrow_and_update();
            {
                let mut state = self.shared.lock();
                if let Some(error) = &state.log_error {
                    return Err(DeviceError::harness(format!(
                        "cannot write console log {}: {error}",
                        self.log_path.display()
                    ))
                    .with_hint("check that the disk is not full"));
                }
                if let Some(found) = state.window.scan(&compiled, &mut cursor) {
                    return Ok(found);
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(reader_gone()),
                Err(_) => {
                    if let Some(down) = self.link_down_error(timeout) {
                        return Err(down);
                    }
                    let wanted: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
                    return Err(DeviceError::timeout(format!(
                        "none of {wanted:?} appeared on the console within {timeout:?}"
                    ))
                    .with_hint(format!(
                        "the console log {} shows what the device printed",
                        self.log_path.display()
                    )));
                }
            }
        }
    }

    fn mark(&self) {
        self.shared.lock().window.mark();
    }

    async fn send(&self, bytes: &[u8]) -> DeviceResult<()> {
        let mut writer = self.shared.writer.lock().await;
        let link = self.shared.link.describe();
        let Some(w) = writer.as_mut() else {
            return Err(
                DeviceError::infrastructure(format!("console link {link} is down"))
                    .with_hint(self.shared.link.hint()),
            );
        };
        // Bounded, so a wedged port (flow control held off) cannot stall the reader,
        // which needs this lock to record a drop.
        let write = async {
            w.write_all(bytes).await?;
            w.flush().await
        };
        let result = match tokio::time::timeout(SEND_TIMEOUT, write).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the link took more than {SEND_TIMEOUT:?}"),
            )),
        };
        result.map_err(|e| {
            DeviceError::infrastructure(format!("cannot send to console {link}: {e}"))
                .with_hint(self.shared.link.hint())
        })
    }

    fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn tail(&self, max_bytes: usize) -> Vec<u8> {
        self.shared.lock().tail.last(max_bytes)
    }
}

fn compile(patterns: &[regex::Regex]) -> DeviceResult<Vec<regex::bytes::Regex>> {
    patterns
        .iter()
        .map(|p| {
            regex::bytes::Regex::new(p.as_str())
                .map_err(|e| DeviceError::config(format!("console pattern {:?}: {e}", p.as_str())))
        })
        .collect()
}

/// The reader task: connect, pump, note the gap, reconnect with backoff; forever.
async fn read_forever(shared: Arc<Shared>, mut log: LogWriter, settings: ConsoleSettings) {
    let mut delay = settings.backoff_first;
    // When the link went down and the wall-clock time for the log, while it is down.
    let mut lost: Option<(Instant, Timestamp)> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match shared.link.connect().await {
            Ok(stream) => {
                // Writable and marked up before the note, so whoever reads the note
                // can use the link.
                let (mut reader, writer) = tokio::io::split(stream);
                *shared.writer.lock().await = Some(writer);
                shared.set_link(LinkStatus::Up);
                let now = Timestamp::now();
                match lost.take() {
                    Some((since, _)) => log.note(
                        now,
                        &format!(
                            "--- link back at {now:.3} after {:.1}s ---",
                            since.elapsed().as_secs_f64()
                        ),
                    ),
                    None => log.note(now, &format!("--- link up: {} ---", shared.link.describe())),
                }
                record_log_result(&shared, &mut log);
                let opened = Instant::now();
                let reason = pump(&shared, &mut reader, &mut log, &settings, &mut buf).await;
                *shared.writer.lock().await = None;
                let now = Timestamp::now();
                log.note(now, &format!("--- link lost at {now:.3}: {reason} ---"));
                record_log_result(&shared, &mut log);
                lost = Some((Instant::now(), now));
                shared.set_link(LinkStatus::Down { at: now, reason });
                // A link that drops at once (ser2net accepting, then closing) must not
                // spin; one that lived a while is retried at once.
                if opened.elapsed() >= settings.backoff_max {
                    delay = settings.backoff_first;
                    continue;
                }
            }
            Err(e) => {
                let now = Timestamp::now();
                let reason = format!("cannot open {}: {e}", shared.link.describe());
                // Note the first failure only; the retries would flood the log.
                if lost.is_none() {
                    log.note(now, &format!("--- link down at {now:.3}: {reason} ---"));
                    record_log_result(&shared, &mut log);
                    lost = Some((Instant::now(), now));
                }
                let at = lost.map(|(_, at)| at).unwrap_or(now);
                shared.set_link(LinkStatus::Down { at, reason });
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.backoff_max);
    }
}

/// Reads until the link ends; returns why it ended.
async fn pump(
    shared: &Shared,
    reader: &mut (impl AsyncRead + Unpin),
    log: &mut LogWriter,
    settings: &ConsoleSettings,
    buf: &mut [u8],
) -> String {
    loop {
        let read = if log.has_partial() {
            match tokio::time::timeout(settings.partial_flush, reader.read(buf)).await {
                Ok(read) => read,
                Err(_) => {
                    log.flush_partial();
                    record_log_result(shared, log);
                    continue;
                }
            }
        } else {
            reader.read(buf).await
        };
        let n = match read {
            Ok(0) => return "end of stream".to_string(),
            Ok(n) => n,
            Err(e) => return e.to_string(),
        };
        let bytes = &buf[..n];
        log.bytes(Timestamp::now(), bytes);
        log.flush();
        {
            let mut state = shared.lock();
            state.window.push(bytes);
            state.tail.push(bytes);
            if let Some(e) = log.error.take() {
                state.log_error.get_or_insert(e);
            }
        }
        shared.changed.send_modify(|v| *v += 1);
    }
}

fn record_log_result(shared: &Shared, log: &mut LogWriter) {
    log.flush();
    if let Some(e) = log.error.take() {
        shared.lock().log_error.get_or_insert(e);
    }
}

/// The unmatched bytes, from the last match (or mark) on, bounded.
#[derive(Debug)]
pub struct Window {
    /// `buf[0]` is at stream offset `start`.
    buf: Vec<u8>,
    start: u64,
    history: usize,
    max_line: usize,
}

impl Window {
    pub fn new(history: usize, max_line: usize) -> Self {
        Window {
            buf: Vec::new(),
            start: 0,
            history: history.max(max_line),
            max_line: max_line.max(1),
        }
    }

    /// Bytes received so far (stream offset of the next byte).
    pub fn received(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim lazily, to half the slack, so trimming costs O(1) per byte.
        if self.buf.len() > 2 * self.history {
            let mut cut = self.buf.len() - self.history;
            // Keep whole lines: cut after a newline when there is one nearby.
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[cut..]) {
                cut += nl + 1;
            }
            self.buf.drain(..cut);
            self.start += cut as u64;
        }
    }

    /// Forgets everything received so far.
    pub fn mark(&mut self) {
        self.start += self.buf.len() as u64;
        self.buf.clear();
    }

    /// Scans lines from `cursor` (a stream offset kept by the caller between calls) for
    /// the earliest match of any pattern. On a match, consumes the window up to the end
    /// of the match. Complete lines are examined once; the partial line again each time.
    pub fn scan(
        &mut self,
        patterns: &[regex::bytes::Regex],
        cursor: &mut u64,
    ) -> Option<ConsoleMatch> {
        let mut pos = cursor.saturating_sub(self.start).min(self.buf.len() as u64) as usize;
        loop {
            let rest = &self.buf[pos..];
            let (len, next) = match memchr::memchr(b'\n', rest) {
                Some(nl) if nl <= self.max_line => (nl, Some(pos + nl + 1)),
                _ if rest.len() >= self.max_line => (self.max_line, Some(pos + self.max_line)),
                _ => (rest.len(), None),
            };
            let mut line = &rest[..len];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if let Some(found) = earliest(patterns, line) {
                let end = pos + found.end;
                let matched = ConsoleMatch {
                    pattern: found.pattern,
                    text: String::from_utf8_lossy(&line[found.start..found.end]).into_owned(),
                    captures: found.captures,
                    offset: self.start + end as u64,
                };
                self.buf.drain(..end);
                self.start += end as u64;
                *cursor = self.start;
                return Some(matched);
            }
            match next {
                Some(next) => {
                    pos = next;
                    *cursor = self.start + pos as u64;
                }
                None => return None,
            }
        }
    }
}

struct Found {
    pattern: usize,
    start: usize,
    end: usize,
    captures: Vec<(String, String)>,
}

/// The match that ends first in `line` (lowest pattern index on a tie).
fn earliest(patterns: &[regex::bytes::Regex], line: &[u8]) -> Option<Found> {
    let mut best: Option<(usize, regex::bytes::Captures<'_>)> = None;
    for (i, re) in patterns.iter().enumerate() {
        if let Some(caps) = re.captures(line) {
            let end = caps.get(0).map_or(0, |m| m.end());
            if best
                .as_ref()
                .is_none_or(|(_, b)| end < b.get(0).map_or(0, |m| m.end()))
            {
                best = Some((i, caps));
            }
        }
    }
    let (i, caps) = best?;
    let whole = caps.get(0)?;
    let captures = patterns[i]
        .capture_names()
        .flatten()
        .filter_map(|name| {
            caps.name(name).map(|m| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(m.as_bytes()).into_owned(),
                )
            })
        })
        .collect();
    Some(Found {
        pattern: i,
        start: whole.start(),
        end: whole.end(),
        captures,
    })
}

/// The last bytes received, for report excerpts.
struct Tail {
    buf: Vec<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Tail {
            buf: Vec::new(),
            cap,
        }
    }
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
    }
    fn last(&self, max: usize) -> Vec<u8> {
        let n = max.min(self.cap).min(self.buf.len());
        self.buf[self.buf.len() - n..].to_vec()
    }
}

/// Bytes of log lines gathered before one write to the file.
const LOG_BUFFER: usize = 16 << 10;

/// Writes the timestamped, escaped log (format in the module docs).
struct LogWriter {
    file: BufWriter<File>,
    partial: Vec<u8>,
    partial_since: Timestamp,
    max_line: usize,
    error: Option<String>,
}

impl LogWriter {
    fn new(file: File, max_line: usize) -> Self {
        LogWriter {
            // Flushed after every read, so it holds at most one read's lines; 256 KiB
            // per console showed as the largest allocation with 500 devices (bench/fleet).
            file: BufWriter::with_capacity(LOG_BUFFER, file),
            partial: Vec::new(),
            partial_since: Timestamp::UNIX_EPOCH,
            max_line: max_line.max(1),
            error: None,
        }
    }

    fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    fn bytes(&mut self, now: Timestamp, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.partial.is_empty() {
                self.partial_since = now;
            }
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    self.partial.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    self.write_partial(false);
                }
                None => {
                    self.partial.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
            if self.partial.len() >= self.max_line {
                self.write_partial(true);
            }
        }
    }

    /// Writes a partial line (a prompt) with the continuation mark.
    fn flush_partial(&mut self) {
        if self.has_partial() {
            self.write_partial(true);
        }
    }

    fn write_partial(&mut self, continues: bool) {
        let mut line = Vec::with_capacity(self.partial.len() + 40);
        let _ = write!(line, "{:.3} | ", self.partial_since);
        escape_into(&mut line, &self.partial);
        if continues {
            line.push(b'\\');
        }
        line.push(b'\n');
        self.partial.clear();
        self.write(&line);
    }

    /// A harness note; a pending partial line is written first so order is kept.
    fn note(&mut self, now: Timestamp, text: &str) {
        self.flush_partial();
        let line = format!("{now:.3} # {text}\n");
        self.write(line.as_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.file.write_all(bytes) {
            self.error.get_or_insert(e.to_string());
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.file.flush() {
            self.error.get_or_insert(e.to_string());
        }
    }
}

/// Escapes one line of device bytes for the log (lossless; see the module docs).
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fast path: printable ASCII without backslashes, the common case.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        out.extend_from_slice(bytes);
        return;
    }
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Undoes [`escape_into`] for one logged line (without its prefix).
/// Returns `None` when the text is not something `escape_into` writes.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        match chars.next()? {
            '\\' => out.push(b'\\'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The exact device bytes a console log records (harness notes skipped).
/// Returns `None` for a line that is not in the log format.
pub fn replay(log: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for line in log.lines() {
        let (_, rest) = line.split_once(' ')?;
        if rest.starts_with("# ") {
            continue;
        }
        let body = rest.strip_prefix("| ")?;
        // A single trailing backslash (after pairs) marks a line without a newline.
        let trailing = body.len() - body.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            out.extend(unescape(&body[..body.len() - 1])?);
        } else {
            out.extend(unescape(body)?);
            out.push(b'\n');
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> regex::bytes::Regex {
        regex::bytes::Regex::new(p).unwrap()
    }

    #[test]
    fn escape_round_trips_every_byte() {
        let all: Vec<u8> = (0u8..=255).filter(|&b| b != b'\n').collect();
        let mut line = Vec::new();
        escape_into(&mut line, &all);
        let text = String::from_utf8(line).unwrap();
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert_eq!(unescape(&text).unwrap(), all);
        let mut c1 = Vec::new();
        escape_into(&mut c1, "a\u{85}é\\".as_bytes());
        assert_eq!(String::from_utf8(c1).unwrap(), "a\\u{85}é\\\\");
    }

    #[test]
    fn window_matches_each_line_once_and_consumes() {
        let mut w = Window::new(1 << 20, 64);
        let mut cursor = 0;
        w.push(b"one\r\ntwo\nlogin: ");
        let pats = [re("^two$"), re("login: $")];
        let m = w.scan(&pats, &mut cursor).unwrap();
        assert_eq!((m.pattern, m.text.as_str(), m.offset), (0, "two", 8));
        let m = w.scan(&pats, &mut cursor).unwrap();
        assert_eq!((m.pattern, m.offset), (1, 16));
        assert!(w.scan(&pats, &mut cursor).is_none());
        // Named captures come back by name.
        w.push(b"error 0x80180014 here\n");
        let m = w
            .scan(&[re(r"error (?P<code>0x[0-9a-f]+)")], &mut cursor)
            .unwrap();
        assert_eq!(m.captures, vec![("code".into(), "0x80180014".into())]);
    }

    #[test]
    fn window_mark_and_history_bound() {
        let mut w = Window::new(100, 16);
        let mut cursor = 0;
        w.push(b"ready\n");
        w.mark();
        assert!(w.scan(&[re("ready")], &mut cursor).is_none());
        for _ in 0..100 {
            w.push(b"noise noise\n");
        }
        assert!(w.buf.len() <= 200, "history is bounded");
        assert_eq!(w.received(), 6 + 1200);
        // A long line without newline is cut at max_line and still matched.
        w.push(&[b'x'; 40]);
        assert!(w.scan(&[re("^x{16}$")], &mut cursor).is_some());
    }

    #[test]
    fn replay_handles_partial_lines_and_notes() {
        let log = "2026-11-26T03:41:12.345Z | login: \\\n\
                   2026-11-26T03:41:12.600Z # --- link lost ---\n\
                   2026-11-26T03:41:13.000Z | root\\\\\n";
        assert_eq!(replay(log).unwrap(), b"login: root\\\n");
        assert!(replay("garbage").is_none());
    }
}
