//! `aplab run` and `aplab resume`: plan cases onto devices, start the virtual lab when
//! the inventory describes one, drive the fleet, and write the reports.
//!
//! With no arguments every scenario case runs on every matching device (the nightly
//! suite). `aplab run SCENARIO --device ID --keep-on-failure -v` is the engineer's
//! reproduction mode. Ctrl-C once stops gracefully (steps stop, leases are released,
//! reports are written); twice aborts at once.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::engine::{Clock, Event, EventKind, RunOptions, ScaledClock, StepStatus, WallClock};
use crate::fleet::drive::EngineRunner;
use crate::fleet::plan::{Filters, plan};
use crate::fleet::{Fleet, FleetEvent, FleetOptions, RunSummary, TimeScale};
use crate::model::inventory::{Inventory, KeyboardConn, PowerConn, ScreenConn, SecretRef};
use crate::model::scenario::Scenario;
use crate::report::progress::Progress;
use crate::report::redact::Redactor;
use crate::report::rundir::RunDir;
use crate::report::signatures::SignatureBook;
use crate::report::{EvidenceLimits, RunInput, write_reports};
use crate::store::{Ledger, RunStatus};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario names to run (default: all under --scenarios).
    pub scenario: Vec<String>,
    /// Only these devices (repeatable).
    #[arg(long = "device", short = 'd')]
    pub devices: Vec<String>,
    /// Only devices with this tag, `key=value` or a bare tag name (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only matrix cases with `axis=value` (repeatable).
    #[arg(long = "matrix")]
    pub matrix: Vec<String>,
    /// Leave out health checks.
    #[arg(long)]
    pub no_health: bool,
    /// Plan and pre-flight, print the Graph calls the tenant steps would make (secrets
    /// redacted), and stop: nothing is powered, nothing is written to the tenant.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub settings: RunSettings,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The run to finish (default: the latest unfinished one).
    pub run: Option<String>,
    #[command(flatten)]
    pub settings: RunSettings,
}

/// How a run or resume is carried out (shared by both commands).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct RunSettings {
    /// The lab inventory.
    #[arg(long, short)]
    pub inventory: Option<PathBuf>,
    /// Where scenarios are.
    #[arg(long, default_value = "scenarios")]
    pub scenarios: Vec<PathBuf>,
    /// Stop at the first failed step and leave the device as it is; print how to attach.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// At most this many phases running at once (parked devices do not count).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Do not start the virtual lab (use one already running with `aplab lab up`).
    #[arg(long)]
    pub no_lab: bool,
    /// Do not check the devices against their tenant before the run.
    #[arg(long)]
    #[serde(default)]
    pub no_preflight: bool,
}

/// What a run was asked to do, stored in the ledger so `resume` can rebuild it.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    inventory: PathBuf,
    scenarios: Vec<PathBuf>,
    filters: Filters,
    keep_on_failure: bool,
}

pub fn run(args: RunArgs) -> u8 {
    let filters = Filters {
        scenarios: args.scenario,
        devices: args.devices,
        tags: args.tags,
        matrix: args.matrix,
        no_health: args.no_health,
    };
    execute(args.settings, filters, None, args.dry_run)
}

pub fn resume(args: ResumeArgs) -> u8 {
    let inventory_path = super::inputs::inventory_arg(&args.settings.inventory);
    let inventory = match super::inputs::inventory(&inventory_path) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let ledger = match super::inputs::ledger(&inventory) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let record = match &args.run {
        Some(id) => ledger.run(id),
        None => match ledger.recent_runs(50) {
            Ok(runs) => runs
                .into_iter()
                .find(|r| r.status != RunStatus::Finished)
                .ok_or_else(|| {
                    crate::store::LedgerError::UnknownRun(
                        "(none unfinished; `aplab status` lists runs)".into(),
                    )
                }),
            Err(e) => Err(e),
        },
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::BAD_INPUT;
        }
    };
    let request: Request = match serde_json::from_str(&record.request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: run {} cannot be resumed: its stored request does not parse ({e})",
                record.id
            );
            return exit::BAD_INPUT;
        }
    };
    let mut settings = args.settings;
    settings.inventory = Some(request.inventory);
    settings.scenarios = request.scenarios;
    settings.keep_on_failure |= request.keep_on_failure;
    execute(settings, request.filters, Some(record.id), false)
}

fn execute(settings: RunSettings, filters: Filters, resume: Option<String>, dry_run: bool) -> u8 {
    let inventory_path = super::inputs::inventory_arg(&settings.inventory);
    let inventory = match super::inputs::inventory(&inventory_path) {
        Ok(i) => Arc::new(i),
        Err(code) => return code,
    };
    let scenarios = match crate::model::load_scenarios(&settings.scenarios, &inventory) {
        Ok(s) => s,
        Err(problems) => {
            eprint!("{problems}");
            return exit::BAD_INPUT;
        }
    };
    let planned = plan(&scenarios, &inventory, &filters);
    for u in &planned.unplaced {
        let why: Vec<String> = u.reasons.iter().map(|(d, r)| format!("{d}: {r}")).collect();
        eprintln!(
            "note: {} {:?} runs on no device ({})",
            u.scenario,
            u.case,
            why.join("; ")
        );
    }
    if planned.jobs.is_empty() {
        eprintln!(
            "error: nothing to run: no scenario case matches a selected device (see `aplab plan`)"
        );
        return exit::BAD_INPUT;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INFRASTRUCTURE;
        }
    };
    // The virtual lab runs as its own process: the harness reaches it only through the
    // protocols it uses on hardware. A dry-run without pre-flight talks to nothing.
    let needs_lab = !(dry_run && settings.no_preflight);
    let _lab = match (&inventory.lab.virtual_lab, settings.no_lab || !needs_lab) {
        (Some(_), false) => match VirtualLabProcess::start(&inventory_path, &inventory) {
            Ok(lab) => lab,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INFRASTRUCTURE;
            }
        },
        _ => None,
    };
    // Before anything is powered: are the devices ready in their tenant?
    let verdict = if settings.no_preflight {
        super::preflight::Verdict::default()
    } else {
        runtime.block_on(super::preflight::check(
            &inventory,
            &scenarios,
            &planned.jobs,
        ))
    };
    if let Some(code) = verdict.stop {
        return code;
    }
    let nothing_left = planned
        .jobs
        .iter()
        .all(|j| verdict.skip.contains_key(&j.case_id));
    if dry_run {
        let shown = runtime.block_on(super::preflight::dry_run(
            &inventory,
            &scenarios,
            &planned.jobs,
            &verdict.skip,
        ));
        return match shown {
            Ok(()) if nothing_left => exit::BAD_INPUT,
            Ok(()) => exit::PASSED,
            Err(e) => {
                eprintln!("error: cannot print the dry-run: {e}");
                exit::INFRASTRUCTURE
            }
        };
    }
    if nothing_left {
        eprintln!("error: pre-flight leaves nothing that can run; nothing was powered");
        return exit::BAD_INPUT;
    }
    let request = Request {
        inventory: inventory_path.clone(),
        scenarios: settings.scenarios.clone(),
        filters,
        keep_on_failure: settings.keep_on_failure,
    };
    runtime.block_on(drive(
        inventory,
        scenarios,
        planned.jobs,
        settings,
        request,
        resume,
        verdict.skip,
    ))
}

async fn drive(
    inventory: Arc<Inventory>,
    scenarios: Vec<Scenario>,
    jobs: Vec<crate::fleet::Job>,
    settings: RunSettings,
    request: Request,
    resume: Option<String>,
    skip: std::collections::BTreeMap<String, String>,
) -> u8 {
    let ledger = match super::inputs::ledger(&inventory) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let run_id = resume.clone().unwrap_or_else(new_run_id);
    let redactor = match secrets(&inventory) {
        Ok(values) => Redactor::new(values),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::BAD_INPUT;
        }
    };
    let run_dir = match RunDir::create(&inventory.lab.reports, &run_id, redactor) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INFRASTRUCTURE;
        }
    };
    let scale = inventory
        .lab
        .virtual_lab
        .as_ref()
        .map_or(1.0, |v| v.time_scale);
    let (fleet_tx, mut fleet_rx) = mpsc::unbounded_channel::<FleetEvent>();
    let (engine_tx, mut engine_rx) = mpsc::unbounded_channel::<Event>();
    let options = RunOptions {
        keep_on_failure: settings.keep_on_failure,
        ..RunOptions::default()
    };
    let runner = Arc::new(EngineRunner::new(
        inventory.clone(),
        &scenarios,
        run_dir.clone(),
        ledger.clone(),
        clock_for(scale),
        options,
        Some(engine_tx),
    ));
    let mut opts = FleetOptions::new(run_id.clone(), TimeScale(scale));
    opts.max_active = settings.jobs;
    opts.skip = skip;
    let fleet = Fleet::new(ledger.clone(), runner, opts, fleet_tx);

    let cancel = CancellationToken::new();
    tokio::spawn(interrupt_on_ctrl_c(cancel.clone()));
    let progress = tokio::spawn(async move {
        let mut progress = Progress::stderr(TimeScale(scale));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                e = fleet_rx.recv() => match e {
                    Some(e) => progress.fleet(&e),
                    None => break,
                },
                Some(e) = engine_rx.recv() => show_engine_event(&mut progress, &e),
                _ = tick.tick() => progress.tick(),
            }
        }
        while let Ok(e) = engine_rx.try_recv() {
            show_engine_event(&mut progress, &e);
        }
    });

    let request_json = serde_json::to_string(&request).unwrap_or_else(|_| "{}".into());
    let outcome = match &resume {
        Some(_) => fleet.resume(jobs, cancel.clone()).await,
        None => fleet.run(jobs, &request_json, cancel.clone()).await,
    };
    drop(fleet);
    let _ = progress.await;
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INFRASTRUCTURE;
        }
    };

    // Reports are written whatever happened, interrupted runs included.
    let input = RunInput::from_ledger(
        ledger.as_ref(),
        &run_id,
        &inventory.lab.name,
        &inventory.devices,
        SignatureBook::builtin(),
        10,
    );
    match input.and_then(|mut input| {
        input.evidence = EvidenceLimits::default();
        write_reports(&run_dir, &input)
    }) {
        Ok(written) => {
            for w in &written.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("reports: {}", written.html.display());
            eprintln!("         {}", written.junit.display());
        }
        Err(e) => eprintln!(
            "error: reports could not be written: {e} (the ledger and the run directory keep everything)"
        ),
    }
    exit_code(&summary, cancel.is_cancelled(), &run_id)
}

fn exit_code(summary: &RunSummary, interrupted: bool, run_id: &str) -> u8 {
    eprintln!(
        "{} passed, {} failed, {} skipped{}",
        summary.passed,
        summary.failed,
        summary.skipped,
        if summary.unfinished > 0 {
            format!(", {} unfinished", summary.unfinished)
        } else {
            String::new()
        }
    );
    if interrupted && summary.unfinished > 0 {
        eprintln!("interrupted: finish it with `aplab resume {run_id}`");
        return exit::INTERRUPTED;
    }
    let has = |class: &str| summary.classes.contains_key(class);
    if has("infrastructure") {
        exit::INFRASTRUCTURE
    } else if has("config") {
        exit::BAD_INPUT
    } else if summary.failed > 0 {
        exit::FAILED
    } else {
        exit::PASSED
    }
}

fn show_engine_event(progress: &mut Progress, e: &Event) {
    let phase = e.phase.as_deref().unwrap_or("");
    let step = e.step.as_deref().unwrap_or("");
    let text = match &e.kind {
        EventKind::StepStarted {
            attempt,
            attempts_allowed,
            what,
            ..
        } => {
            if *attempts_allowed > 1 {
                format!("{phase}: {step}: {what} (attempt {attempt}/{attempts_allowed})")
            } else {
                format!("{phase}: {step}: {what}")
            }
        }
        EventKind::StepRetried {
            attempt,
            after_class,
            message,
            ..
        } => {
            format!(
                "{phase}: {step}: attempt {attempt} failed ({}): {message}; retrying",
                after_class.as_str()
            )
        }
        EventKind::StepFinished {
            status:
                StepStatus::Failed {
                    class,
                    code,
                    message,
                    hint,
                },
            ..
        } => {
            let code = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
            let hint = hint
                .as_deref()
                .map(|h| format!(" (check: {h})"))
                .unwrap_or_default();
            format!(
                "{phase}: {step}: FAILED [{}]{code} {message}{hint}",
                class.as_str()
            )
        }
        EventKind::KeptOnFailure { how_to_attach } => {
            let mut lines = vec![format!(
                "device {} kept as it failed; attach with:",
                e.device
            )];
            for r in how_to_attach {
                let how = r.command.clone().unwrap_or_else(|| r.address.clone());
                lines.push(format!("    {:<8} {how}", r.capability));
            }
            lines.join("\n")
        }
        _ => return,
    };
    progress.step(&e.device, &text);
}

/// First Ctrl-C: stop gracefully. Second: abort now. One listener serves both, so a
/// second Ctrl-C that comes right after the first is never lost (a fresh listener only
/// sees signals that arrive after it is made).
async fn interrupt_on_ctrl_c(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
        tracing::warn!("cannot listen for Ctrl-C; stop the run with `kill` and `aplab resume`");
        return;
    };
    if interrupts.recv().await.is_none() {
        return;
    }
    eprintln!(
        "\nstopping: steps stop, leases are released, reports are written (Ctrl-C again to abort now)"
    );
    cancel.cancel();
    if interrupts.recv().await.is_some() {
        eprintln!("aborted; finish the run later with `aplab resume`");
        std::process::exit(i32::from(exit::INTERRUPTED));
    }
}

/// The engine's clock: lab time on a virtual lab, the wall clock on hardware.
fn clock_for(scale: f64) -> Arc<dyn Clock> {
    if scale == 1.0 {
        Arc::new(WallClock::new())
    } else {
        Arc::new(ScaledClock::new(scale))
    }
}

fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"),
        rand::random::<u16>()
    )
}

/// Every secret value the inventory refers to that can be read now, for redaction.
fn secrets(inventory: &Inventory) -> Result<Vec<String>, String> {
    let mut refs: Vec<&SecretRef> = Vec::new();
    for t in inventory.tenants.values() {
        match &t.credential {
            crate::model::inventory::Credential::ClientSecret(s) => refs.push(s),
            crate::model::inventory::Credential::Certificate { key, .. } => refs.push(key),
        }
        for u in t.users.values() {
            refs.extend(u.password.iter());
            refs.extend(u.ad_password.iter());
        }
    }
    for d in &inventory.devices {
        match &d.power {
            Some(PowerConn::Redfish {
                password: Some(p), ..
            }) => refs.push(p),
            Some(PowerConn::Pikvm(k)) => refs.push(&k.password),
            _ => {}
        }
        if let Some(KeyboardConn::Pikvm(k)) = &d.keyboard {
            refs.push(&k.password);
        }
        if let Some(ScreenConn::Pikvm(k)) = &d.screen {
            refs.push(&k.password);
        }
    }
    // A secret that cannot be read yet fails later, at the step that needs it, with a
    // message naming the reference; redaction takes what exists.
    Ok(refs
        .into_iter()
        .filter_map(|r| r.resolve(Path::new("")).ok())
        .filter(|v| !v.is_empty())
        .collect())
}

/// The virtual lab as a child process (`aplab lab up`), stopped when dropped.
pub struct VirtualLabProcess {
    child: Child,
}

impl VirtualLabProcess {
    /// Starts the lab unless one already answers on the inventory's control endpoint.
    pub fn start(
        inventory_path: &Path,
        inventory: &Inventory,
    ) -> Result<Option<VirtualLabProcess>, String> {
        let virtual_lab = inventory
            .lab
            .virtual_lab
            .as_ref()
            .ok_or("the inventory describes no virtual lab")?;
        if let Some(control) = &virtual_lab.control
            && std::net::TcpStream::connect((control.host.as_str(), control.port)).is_ok()
        {
            eprintln!(
                "using the virtual lab already running (control on {}:{})",
                control.host, control.port
            );
            return Ok(None);
        }
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the aplab executable: {e}"))?;
        let mut command = Command::new(exe);
        command
            .args(["lab", "up", "--json", "--inventory"])
            .arg(inventory_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // This run's lab ends with the run even when the runner dies without stopping it
        // (a second Ctrl-C aborts at once, `kill -9`): no orphan keeps the lab's ports.
        // The kernel signals the lab when the thread that started it exits; that is the
        // main thread, which lives as long as the run.
        // SAFETY: between fork and exec the closure makes one prctl system call, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM))
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the virtual lab: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("cannot read the virtual lab's output")?;
        // The lab prints one JSON line once every endpoint listens.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut lab = VirtualLabProcess { child };
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if line.trim_start().starts_with('{') {
                    eprintln!("virtual lab up ({} devices)", inventory.devices.len());
                    return Ok(Some(lab));
                }
                return Err(
                    "the virtual lab stopped before it was ready (its errors are above)".into(),
                );
            }
            if let Ok(Some(status)) = lab.child.try_wait() {
                return Err(format!(
                    "the virtual lab exited with {status} before it was ready (its errors are above)"
                ));
            }
            if Instant::now() > deadline {
                lab.stop();
                return Err("the virtual lab was not ready within 180 s".into());
            }
        }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VirtualLabProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
