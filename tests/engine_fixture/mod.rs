//! Small in-test devices for the engine's own tests: each capability trait implemented by
//! a script on the test's clock (tokio's paused time), so every test is deterministic.
//! End-to-end runs against the virtual lab live elsewhere.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use aplab::device::*;
use aplab::engine::{self, CaseRun, Clock, Event, EventKind, EventSink, RunOptions, WallClock};
use aplab::model::inventory::*;
use aplab::model::scenario::*;

// ---------------------------------------------------------------- scenario building

pub fn origin() -> Origin {
    Origin {
        file: PathBuf::from("scenarios/test.yaml"),
        line: 7,
        column: 5,
        block: None,
        used_at: None,
    }
}

pub fn step(name: &str, action: Action) -> Step {
    Step {
        name: name.to_string(),
        origin: origin(),
        timeout: None,
        retry: Retry::default(),
        when: BTreeMap::new(),
        continue_on_failure: false,
        action,
    }
}

pub fn phase(name: &str, steps: Vec<Step>) -> Phase {
    Phase {
        name: name.to_string(),
        gap: None,
        timeout: None,
        expect_duration: None,
        steps,
    }
}

pub fn scenario(phases: Vec<Phase>) -> Scenario {
    Scenario {
        name: "preprovision".into(),
        description: String::new(),
        source: PathBuf::from("scenarios/test.yaml"),
        kind: ScenarioKind::Test,
        priority: 0,
        requires: Vec::new(),
        matrix: BTreeMap::new(),
        vars: BTreeMap::new(),
        phases,
        retry_on_other_device: false,
    }
}

pub fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn outcome(name: &str, regex: &str, verdict: Verdict) -> Outcome {
    Outcome {
        name: name.into(),
        pattern: Pattern::Regex(regex.into()),
        verdict,
    }
}

pub fn expect(source: Source, any_of: Vec<Outcome>) -> Action {
    Action::Expect(Expect { source, any_of })
}

pub fn device() -> Device {
    Device {
        id: "pc01".into(),
        serial: "SN-0001".into(),
        manufacturer: "Contoso".into(),
        model: "Lab 1".into(),
        windows: Windows {
            edition: Edition::Enterprise,
            version: 11,
            build: None,
        },
        tpm: Some(ExpectedTpm {
            family: "2.0".into(),
            manufacturer: "IFX".into(),
            firmware: Some("7.85".into()),
            ek_ca_bundle: None,
        }),
        tags: BTreeMap::new(),
        power: Some(PowerConn::Pdudaemon {
            url: "http://127.0.0.1:16421".into(),
            pdu: "lab-local".into(),
            port: 1,
        }),
        console: Some(ConsoleConn::Tcp {
            host: "127.0.0.1".into(),
            port: 7001,
        }),
        keyboard: None,
        screen: None,
        shell: Some(ShellConn {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "lab".into(),
            key_file: PathBuf::from("/lab/keys/pc01"),
            known_hosts: PathBuf::from("/lab/known_hosts"),
            host_key_policy: HostKeyPolicy::Strict,
            flavor: ShellFlavor::Powershell,
        }),
        tpm_access: None,
        tenant: Some("contoso".into()),
        health_scenario: None,
        sim: None,
    }
}

// ---------------------------------------------------------------- events

/// Collects every event.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    pub fn kinds(&self) -> Vec<EventKind> {
        self.all().into_iter().map(|e| e.kind).collect()
    }
    pub fn json(&self) -> String {
        serde_json::to_string(&self.all()).unwrap()
    }
}

// ---------------------------------------------------------------- running

/// Everything a test needs to build a [`CaseRun`].
pub struct Bench {
    pub scenario: Scenario,
    pub device: Device,
    pub handle: DeviceHandle,
    pub clock: Arc<dyn Clock>,
    pub events: Arc<Recorder>,
    pub options: RunOptions,
    pub cancel: tokio_util::sync::CancellationToken,
    pub case: Case,
    pub tenant: Option<TenantConfig>,
    pub qr: Option<engine::QrDecoder>,
}

impl Bench {
    pub fn new(scenario: Scenario) -> Self {
        Bench {
            scenario,
            device: device(),
            handle: DeviceHandle {
                id: "pc01".into(),
                ..Default::default()
            },
            clock: Arc::new(WallClock::new()),
            events: Arc::new(Recorder::default()),
            options: RunOptions::default(),
            cancel: tokio_util::sync::CancellationToken::new(),
            case: Case::new(),
            tenant: None,
            qr: None,
        }
    }

    pub fn run(&self) -> CaseRun<'_> {
        CaseRun {
            scenario: &self.scenario,
            case: self.case.clone(),
            device: &self.device,
            tenant: self.tenant.as_ref(),
            handle: &self.handle,
            clock: self.clock.clone(),
            events: self.events.clone(),
            options: self.options.clone(),
            cancel: self.cancel.clone(),
            qr_decoder: self.qr.clone(),
        }
    }
}

// ---------------------------------------------------------------- console

/// A console whose device prints `lines` at given lab times on the test clock.
pub struct ScriptedConsole {
    clock: Arc<dyn Clock>,
    lines: Vec<(Duration, String)>,
    /// Bytes of the script already consumed by matches.
    consumed: Mutex<usize>,
    log: PathBuf,
}

impl ScriptedConsole {
    pub fn new(clock: Arc<dyn Clock>, lines: &[(Duration, &str)], log: PathBuf) -> Self {
        ScriptedConsole {
            clock,
            lines: lines.iter().map(|(t, l)| (*t, format!("{l}\n"))).collect(),
            consumed: Mutex::new(0),
            log,
        }
    }

    fn received(&self) -> String {
        let now = self.clock.now();
        self.lines
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, l)| l.as_str())
            .collect()
    }
}

#[async_trait]
impl Console for ScriptedConsole {
    async fn expect(
        &self,
        patterns: &[regex::Regex],
        timeout: Duration,
    ) -> DeviceResult<ConsoleMatch> {
        let until = self.clock.now() + timeout;
        loop {
            let text = self.received();
            let from = *self.consumed.lock().unwrap();
            let window = &text[from.min(text.len())..];
            let best = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.captures(window).map(|c| (i, p, c)))
                .min_by_key(|(_, _, c)| c.get(0).unwrap().end());
            if let Some((i, p, caps)) = best {
                let m = caps.get(0).unwrap();
                let captures = p
                    .capture_names()
                    .flatten()
                    .filter_map(|n| {
                        caps.name(n)
                            .map(|v| (n.to_string(), v.as_str().to_string()))
                    })
                    .collect();
                let end = from + m.end();
                *self.consumed.lock().unwrap() = end;
                return Ok(ConsoleMatch {
                    pattern: i,
                    text: m.as_str().to_string(),
                    captures,
                    offset: end as u64,
                });
            }
            let now = self.clock.now();
            let next = self.lines.iter().map(|(t, _)| *t).find(|t| *t > now);
            match next {
                Some(t) if t <= until => self.clock.sleep_until(t).await,
                _ => {
                    self.clock.sleep_until(until).await;
                    return Err(DeviceError::timeout("no pattern matched on the console"));
                }
            }
        }
    }
    fn mark(&self) {
        *self.consumed.lock().unwrap() = self.received().len();
    }
    async fn send(&self, _bytes: &[u8]) -> DeviceResult<()> {
        Ok(())
    }
    fn log_path(&self) -> &Path {
        &self.log
    }
    fn tail(&self, max_bytes: usize) -> Vec<u8> {
        let text = self.received().into_bytes();
        text[text.len().saturating_sub(max_bytes)..].to_vec()
    }
}

// ---------------------------------------------------------------- screen

/// A screen showing `texts` from given lab times on; the last one shown stays.
pub struct ScriptedScreen {
    pub clock: Arc<dyn Clock>,
    pub texts: Vec<(Duration, String)>,
    pub png: Vec<u8>,
    pub reads: Mutex<u32>,
}

impl ScriptedScreen {
    pub fn new(clock: Arc<dyn Clock>, texts: &[(Duration, &str)]) -> Self {
        ScriptedScreen {
            clock,
            texts: texts.iter().map(|(t, s)| (*t, s.to_string())).collect(),
            png: b"\x89PNG fake".to_vec(),
            reads: Mutex::new(0),
        }
    }
}

#[async_trait]
impl Screen for ScriptedScreen {
    async fn text(&self) -> DeviceResult<String> {
        *self.reads.lock().unwrap() += 1;
        let now = self.clock.now();
        Ok(self
            .texts
            .iter()
            .rfind(|(t, _)| *t <= now)
            .map(|(_, s)| s.clone())
            .unwrap_or_default())
    }
    async fn snapshot(&self) -> DeviceResult<Vec<u8>> {
        Ok(self.png.clone())
    }
}

// ---------------------------------------------------------------- keyboard

/// Records what was pressed and typed; can be told to fail typing, quoting the text as a
/// careless backend might.
#[derive(Default)]
pub struct RecordingKeyboard {
    pub log: Mutex<Vec<String>>,
    pub fail_typing: bool,
}

#[async_trait]
impl Keyboard for RecordingKeyboard {
    async fn press(&self, key: &KeyPress) -> DeviceResult<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("press {} x{}", key.key, key.times));
        Ok(())
    }
    async fn type_text(&self, text: &str) -> DeviceResult<()> {
        if self.fail_typing {
            return Err(DeviceError::infrastructure(format!(
                "CH9329 did not acknowledge while typing {text:?}"
            ))
            .with_hint(format!(
                "unplug and replug the injector; it stopped at {text}"
            )));
        }
        self.log.lock().unwrap().push(format!("type {text}"));
        Ok(())
    }
}

// ---------------------------------------------------------------- power

/// A power controller: fails its first `failures` requests, then works; reads back as
/// `read_back` says.
pub struct ScriptedPower {
    pub state: Mutex<PowerState>,
    pub failures: Mutex<u32>,
    pub read_back: PowerReadBack,
    pub calls: Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
pub enum PowerReadBack {
    Honest,
    /// Always says off (a dead outlet).
    StuckOff,
    Unavailable,
}

impl ScriptedPower {
    pub fn new(read_back: PowerReadBack, failures: u32) -> Self {
        ScriptedPower {
            state: Mutex::new(PowerState::Off),
            failures: Mutex::new(failures),
            read_back,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn act(&self, name: &str, to: Option<PowerState>) -> DeviceResult<ReadBack> {
        self.calls.lock().unwrap().push(name.to_string());
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(DeviceError::infrastructure("PDU answered HTTP 500")
                .with_hint("check that pdudaemon runs on 127.0.0.1:16421"));
        }
        if let Some(to) = to {
            *self.state.lock().unwrap() = to;
        }
        Ok(match self.read_back {
            PowerReadBack::Honest => ReadBack::Confirmed(*self.state.lock().unwrap()),
            PowerReadBack::StuckOff => ReadBack::Confirmed(PowerState::Off),
            PowerReadBack::Unavailable => {
                ReadBack::Unavailable("pdudaemon cannot read outlet state".into())
            }
        })
    }
}

#[async_trait]
impl Power for ScriptedPower {
    async fn on(&self) -> DeviceResult<ReadBack> {
        self.act("on", Some(PowerState::On))
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        self.act("off", Some(PowerState::Off))
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        self.act("cycle", Some(PowerState::On))
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        self.act("state", None)
    }
}

// ---------------------------------------------------------------- shell

/// Answers commands by program name; unknown programs exit 1. `hang` programs never
/// answer. Fetch writes `fetched` to the local path.
pub struct ScriptedShell {
    pub clock: Arc<dyn Clock>,
    pub answers: BTreeMap<String, CommandOutput>,
    pub hang: Vec<String>,
    pub fetched: Vec<u8>,
    pub runs: Mutex<Vec<(String, Vec<String>)>>,
}

impl ScriptedShell {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        ScriptedShell {
            clock,
            answers: BTreeMap::new(),
            hang: Vec::new(),
            fetched: Vec::new(),
            runs: Mutex::new(Vec::new()),
        }
    }
    pub fn answer(mut self, program: &str, status: i32, stdout: &str) -> Self {
        self.answers.insert(
            program.to_string(),
            CommandOutput {
                status,
                stdout: stdout.to_string(),
                stderr: String::new(),
            },
        );
        self
    }
}

#[async_trait]
impl Shell for ScriptedShell {
    async fn run(
        &self,
        program: &str,
        args: &[String],
        _timeout: Duration,
    ) -> DeviceResult<CommandOutput> {
        self.runs
            .lock()
            .unwrap()
            .push((program.to_string(), args.to_vec()));
        if self.hang.iter().any(|h| h == program) {
            std::future::pending::<()>().await;
        }
        Ok(self.answers.get(program).cloned().unwrap_or(CommandOutput {
            status: 1,
            stdout: String::new(),
            stderr: format!("{program}: not recognized"),
        }))
    }
    async fn fetch(
        &self,
        _remote: &str,
        local: &Path,
        max_bytes: u64,
        _timeout: Duration,
    ) -> DeviceResult<u64> {
        if self.fetched.len() as u64 > max_bytes {
            return Err(DeviceError::infrastructure("file over the size cap"));
        }
        std::fs::write(local, &self.fetched)
            .map_err(|e| DeviceError::harness(format!("cannot write: {e}")))?;
        Ok(self.fetched.len() as u64)
    }
}

// ---------------------------------------------------------------- tpm

pub struct ScriptedTpm {
    pub facts: TpmFacts,
    pub ek: EkCertificate,
}

#[async_trait]
impl Tpm for ScriptedTpm {
    async fn facts(&self) -> DeviceResult<TpmFacts> {
        Ok(self.facts.clone())
    }
    async fn ek_certificate(&self, _ca: Option<&Path>) -> DeviceResult<EkCertificate> {
        Ok(self.ek.clone())
    }
    async fn attest(&self) -> DeviceResult<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------- tenant

/// A tenant with one identity; profile assignment states come from a queue (the last
/// one stays); every call is logged.
pub struct ScriptedTenant {
    pub identity: Mutex<AutopilotIdentity>,
    pub assignment: Mutex<VecDeque<String>>,
    pub compliance: Mutex<VecDeque<String>>,
    pub calls: Mutex<Vec<String>>,
}

impl ScriptedTenant {
    pub fn new(identity: AutopilotIdentity) -> Self {
        ScriptedTenant {
            identity: Mutex::new(identity),
            assignment: Mutex::new(VecDeque::new()),
            compliance: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
        }
    }
    fn next(queue: &Mutex<VecDeque<String>>) -> Option<String> {
        let mut q = queue.lock().unwrap();
        if q.len() > 1 {
            q.pop_front()
        } else {
            q.front().cloned()
        }
    }
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait]
impl Tenant for ScriptedTenant {
    async fn identity(&self, serial: &str) -> DeviceResult<AutopilotIdentity> {
        let mut id = self.identity.lock().unwrap().clone();
        if id.serial_number != serial {
            return Err(DeviceError::product(format!(
                "no Autopilot identity for serial {serial}"
            )));
        }
        if let Some(s) = Self::next(&self.assignment) {
            id.deployment_profile_assignment_status = s;
        }
        Ok(id)
    }
    async fn delete_managed_device(&self, id: &str) -> DeviceResult<()> {
        self.log(format!("delete {id}"));
        Ok(())
    }
    async fn allow_next_enrollment(&self, id: &str) -> DeviceResult<()> {
        self.log(format!("allow {id}"));
        Ok(())
    }
    async fn set_group_tag(&self, id: &str, tag: &str) -> DeviceResult<()> {
        self.log(format!("tag {id} {tag}"));
        Ok(())
    }
    async fn assign_user(&self, id: &str, upn: &str) -> DeviceResult<()> {
        self.log(format!("assign {id} {upn}"));
        Ok(())
    }
    async fn unassign_user(&self, id: &str) -> DeviceResult<()> {
        self.log(format!("unassign {id}"));
        Ok(())
    }
    async fn compliance(&self, _managed: &str) -> DeviceResult<String> {
        Ok(Self::next(&self.compliance).unwrap_or_else(|| "unknown".into()))
    }
}
