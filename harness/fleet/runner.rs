//! The run loop: a task per device works through that device's jobs in order; a job's
//! phases run one after another with the device parked (leased, no thread held) for
//! the gap between them. Every transition is written to the ledger first.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{FleetEvent, Job, PhaseOutcome, SharedRunner, TimeScale};
use crate::model::scenario::FailureClass;
use crate::store::{
    CaseRecord, CaseStatus, DeviceHealth, Health, Lease, Ledger, LedgerResult, LifecycleEvent,
    Millis, ParkedWait, RunStatus, StepRecord, now_millis,
};

/// The lifecycle event recorded when a technician phase passes (the device is resealed).
pub const RESEALED: &str = "resealed";
/// The lifecycle event recorded when a user phase passes: the device is no longer a
/// resealed device waiting for its user.
pub const USER_FLOW_DONE: &str = "user-flow-done";

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub run_id: String,
    /// This runner's identity in leases: `host:pid:nonce`.
    pub owner: String,
    /// A lease not renewed for this long expires by itself.
    pub lease_ttl: Duration,
    pub time_scale: TimeScale,
    /// Phases running at once across the fleet (parked devices do not count).
    pub max_active: Option<usize>,
    /// Cases decided impossible before anything runs (pre-flight found their device
    /// unusable): case id -> why. They are recorded as skipped (class `config`) with the
    /// reason, in the ledger and the reports, and never leased.
    pub skip: BTreeMap<String, String>,
}

impl FleetOptions {
    pub fn new(run_id: impl Into<String>, time_scale: TimeScale) -> Self {
        FleetOptions {
            run_id: run_id.into(),
            owner: owner_id(),
            lease_ttl: Duration::from_secs(60),
            time_scale,
            max_active: None,
            skip: BTreeMap::new(),
        }
    }
}

/// `host:pid:nonce`: the host and pid let a runner on the same host see at once that a
/// lease's holder is gone; the nonce tells two runs of one pid apart.
pub fn owner_id() -> String {
    format!(
        "{}:{}:{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
}

/// True when `owner` names a process on this host that no longer exists.
fn holder_is_dead(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host), Some(pid)) = (
        parts.next(),
        parts.next().and_then(|p| p.parse::<i32>().ok()),
    ) else {
        return false;
    };
    if hostname() != host || pid == std::process::id() as i32 {
        return false;
    }
    // Signal 0 checks existence without touching the process.
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Cases left unfinished by an interruption (resume finishes them).
    pub unfinished: usize,
    /// Failed cases by class.
    pub classes: BTreeMap<String, usize>,
}

pub struct Fleet {
    ledger: Arc<dyn Ledger>,
    runner: SharedRunner,
    opts: FleetOptions,
    events: mpsc::UnboundedSender<FleetEvent>,
    active: Option<Arc<Semaphore>>,
}

impl Fleet {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        runner: SharedRunner,
        opts: FleetOptions,
        events: mpsc::UnboundedSender<FleetEvent>,
    ) -> Self {
        let active = opts.max_active.map(|n| Arc::new(Semaphore::new(n.max(1))));
        Fleet {
            ledger,
            runner,
            opts,
            events,
            active,
        }
    }

    /// Starts a new run of `jobs`. `request` (JSON) is stored so the run can be resumed.
    pub async fn run(
        &self,
        jobs: Vec<Job>,
        request: &str,
        cancel: CancellationToken,
    ) -> LedgerResult<RunSummary> {
        self.ledger
            .create_run(&self.opts.run_id, request, now_millis())?;
        self.execute(jobs, false, cancel).await
    }

    /// Finishes a run after a crash or an interruption: finished cases are kept, parked
    /// waits keep their end instant, a case cut off in its first phase runs that phase
    /// again, and one cut off in a later phase starts again from its first phase.
    pub async fn resume(
        &self,
        jobs: Vec<Job>,
        cancel: CancellationToken,
    ) -> LedgerResult<RunSummary> {
        self.ledger.run(&self.opts.run_id)?;
        self.execute(jobs, true, cancel).await
    }

    async fn execute(
        &self,
        jobs: Vec<Job>,
        resumed: bool,
        cancel: CancellationToken,
    ) -> LedgerResult<RunSummary> {
        let run_id = &self.opts.run_id;
        let pending: Vec<CaseRecord> = jobs.iter().map(|j| new_case(run_id, j)).collect();
        self.ledger.add_cases(&pending)?;
        let known: BTreeMap<String, CaseRecord> = self
            .ledger
            .cases(run_id)?
            .into_iter()
            .map(|c| (c.case_id.clone(), c))
            .collect();

        // One queue per device, heaviest first: with a limit on active phases, the
        // devices with the longest chains start first, which keeps the makespan near its
        // lower bound (the longest chain any single device must do).
        let mut queues: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            queues.entry(job.device_id.clone()).or_default().push(job);
        }
        let mut queues: Vec<(String, Vec<Job>)> = queues.into_iter().collect();
        for (_, q) in &mut queues {
            // Health checks first, then by priority; stable otherwise (file order).
            q.sort_by_key(|j| (!is_health(j), -j.priority));
        }
        queues.sort_by_key(|(_, q)| std::cmp::Reverse(q.iter().map(Job::length).sum::<Duration>()));

        let _ = self.events.send(FleetEvent::RunStarted {
            run_id: run_id.clone(),
            cases: known.len(),
            devices: queues.len(),
            resumed,
        });

        let mut known = known;
        for (case_id, reason) in &self.opts.skip {
            if let Some(record) = known.get_mut(case_id)
                && !record.status.is_done()
            {
                // A step record carries the reason into the reports (which tell a case
                // without events from its step records).
                self.ledger.record_step(&StepRecord {
                    run_id: run_id.clone(),
                    case_id: case_id.clone(),
                    phase: "pre-flight".into(),
                    step: "tenant pre-flight".into(),
                    attempt: 1,
                    status: "skipped".into(),
                    class: Some(FailureClass::Config.as_str().into()),
                    code: None,
                    message: Some(reason.clone()),
                    started_at: now_millis(),
                    elapsed_ms: 0,
                })?;
                self.finish(
                    record.clone(),
                    CaseStatus::Skipped,
                    Some(FailureClass::Config),
                    Some(reason.clone()),
                )?;
                record.status = CaseStatus::Skipped;
            }
        }

        let heartbeat = self.spawn_heartbeat();
        let known = Arc::new(known);
        let mut tasks = tokio::task::JoinSet::new();
        for (device, queue) in queues {
            let this = self.clone_parts();
            let (known, cancel) = (known.clone(), cancel.clone());
            tasks.spawn(async move { this.device_queue(device, queue, &known, cancel).await });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(panic) => std::panic::resume_unwind(panic.into_panic()),
            }
        }
        heartbeat.abort();
        if let Some(e) = first_error {
            return Err(e);
        }

        let summary = summarize(&self.ledger.cases(run_id)?);
        let interrupted = cancel.is_cancelled() && summary.unfinished > 0;
        let status = if interrupted {
            RunStatus::Interrupted
        } else {
            RunStatus::Finished
        };
        self.ledger.finish_run(run_id, status, now_millis())?;
        let _ = self.events.send(FleetEvent::RunFinished {
            run_id: run_id.clone(),
            passed: summary.passed,
            failed: summary.failed,
            skipped: summary.skipped,
            interrupted,
        });
        Ok(summary)
    }

    fn clone_parts(&self) -> Fleet {
        Fleet {
            ledger: self.ledger.clone(),
            runner: self.runner.clone(),
            opts: self.opts.clone(),
            events: self.events.clone(),
            active: self.active.clone(),
        }
    }

    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let (ledger, owner, ttl) = (
            self.ledger.clone(),
            self.opts.owner.clone(),
            self.opts.lease_ttl,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tick.tick().await;
                let until = now_millis() + ttl.as_millis() as Millis;
                let ledger = ledger.clone();
                let owner = owner.clone();
                // A failed heartbeat is retried at the next tick; the lease only lapses
                // after a whole TTL without one.
                let _ = tokio::task::spawn_blocking(move || ledger.heartbeat(&owner, until)).await;
            }
        })
    }

    async fn device_queue(
        &self,
        device: String,
        queue: Vec<Job>,
        known: &BTreeMap<String, CaseRecord>,
        cancel: CancellationToken,
    ) -> LedgerResult<()> {
        for job in queue {
            if cancel.is_cancelled() {
                break;
            }
            let Some(mut record) = known.get(&job.case_id).cloned() else {
                continue;
            };
            if record.status.is_done() {
                continue;
            }
            if record.status == CaseStatus::Running && record.next_phase > 0 {
                // A later phase was cut off (crash or Ctrl-C) mid-way: the device is now
                // somewhere inside that phase (e.g. at the desktop after half a user
                // flow), a state the phase cannot start from again. The case starts over
                // from its first phase, which begins with a factory reset.
                record.next_phase = 0;
                record.status = CaseStatus::Pending;
                self.ledger.advance_case(&record, None)?;
            }
            if let Some(bad) = self.bad_health(&device, &job)? {
                self.finish(record, CaseStatus::Skipped, None, Some(bad))?;
                continue;
            }
            self.run_job(&job, record, &cancel).await?;
        }
        Ok(())
    }

    /// Why a device may not take a job, when it is marked bad (health checks themselves
    /// always run, so a repaired device comes back into service).
    fn bad_health(&self, device: &str, job: &Job) -> LedgerResult<Option<String>> {
        if is_health(job) {
            return Ok(None);
        }
        Ok(self
            .ledger
            .health(device)?
            .filter(|h| h.health == Health::Bad)
            .map(|h| {
                format!(
                    "device {device} is marked bad since its health check failed: {} (run {})",
                    h.reason, h.run_id
                )
            }))
    }

    async fn run_job(
        &self,
        job: &Job,
        mut record: CaseRecord,
        cancel: &CancellationToken,
    ) -> LedgerResult<()> {
        let mut devices: Vec<String> = std::iter::once(record.device_id.clone()).collect();
        devices.extend(
            job.alternatives
                .iter()
                .filter(|d| **d != record.device_id)
                .cloned(),
        );
        let mut tried = HashSet::new();

        while let Some(device) = devices.iter().find(|d| !tried.contains(*d)).cloned() {
            tried.insert(device.clone());
            if device != record.device_id {
                let _ = self.events.send(FleetEvent::MovedToDevice {
                    case_id: job.case_id.clone(),
                    from: record.device_id.clone(),
                    to: device.clone(),
                    reason: record.message.clone().unwrap_or_default(),
                });
                record.device_id = device.clone();
                record.next_phase = 0;
                record.status = CaseStatus::Pending;
                self.ledger.advance_case(&record, None)?;
            }
            if !self.lease(job, &device, cancel).await? {
                return Ok(()); // interrupted while waiting for the device
            }
            let outcome = self.run_phases(job, &mut record, &device, cancel).await;
            self.ledger.release(&device, &self.opts.owner)?;
            match outcome? {
                Some((FailureClass::Infrastructure, message)) if tried.len() < devices.len() => {
                    // Lab equipment failed, not the product: another device may do it.
                    record.message = Some(message);
                    continue;
                }
                Some((class, message)) => {
                    return self.finish(record, CaseStatus::Failed, Some(class), Some(message));
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Waits until the device's lease is ours. Returns false if interrupted first.
    async fn lease(
        &self,
        job: &Job,
        device: &str,
        cancel: &CancellationToken,
    ) -> LedgerResult<bool> {
        let mut delay = Duration::from_millis(50);
        let mut told = false;
        loop {
            let now = now_millis();
            let lease = Lease {
                device_id: device.to_string(),
                owner: self.opts.owner.clone(),
                run_id: self.opts.run_id.clone(),
                case_id: job.case_id.clone(),
                acquired_at: now,
                expires_at: now + self.opts.lease_ttl.as_millis() as Millis,
            };
            if self.ledger.try_lease(&lease, now)? {
                let _ = self.events.send(FleetEvent::Leased {
                    case_id: job.case_id.clone(),
                    device_id: device.into(),
                });
                return Ok(true);
            }
            let holder = self
                .ledger
                .leases(now)?
                .into_iter()
                .find(|l| l.device_id == device);
            if let Some(h) = &holder {
                if h.owner == self.opts.owner {
                    // Our own lease from before a resume in this process: take it over.
                    self.ledger.release(device, &h.owner)?;
                    continue;
                }
                if holder_is_dead(&h.owner) {
                    // Its runner is gone (e.g. killed): no need to wait for expiry.
                    self.ledger.release(device, &h.owner)?;
                    continue;
                }
                if !told {
                    let _ = self.events.send(FleetEvent::WaitingForDevice {
                        case_id: job.case_id.clone(),
                        device_id: device.into(),
                        holder: h.owner.clone(),
                    });
                    told = true;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs the job's remaining phases on `device`. A failed phase is returned (class and
    /// message) for the caller to finish the case or move it; everything else is
    /// finished here.
    async fn run_phases(
        &self,
        job: &Job,
        record: &mut CaseRecord,
        device: &str,
        cancel: &CancellationToken,
    ) -> LedgerResult<Option<(FailureClass, String)>> {
        let scale = self.opts.time_scale;
        while (record.next_phase as usize) < job.phases.len() {
            let index = record.next_phase as usize;
            let phase = &job.phases[index];

            // The gap before this phase: from the ledger when parked (it survives a
            // restart), from the device's last reseal when the scenario starts with a
            // gap (a user-flow-only scenario).
            let wait = if record.status == CaseStatus::Parked {
                self.ledger
                    .parked(&record.run_id)?
                    .into_iter()
                    .find(|w| w.case_id == record.case_id)
            } else if index == 0 && phase.gap.is_some() {
                match self.gap_since_reseal(job, record, device)? {
                    Ok(w) => Some(w),
                    Err(reason) => {
                        self.finish(
                            record.clone(),
                            CaseStatus::Skipped,
                            Some(FailureClass::Config),
                            Some(reason),
                        )?;
                        return Ok(None);
                    }
                }
            } else {
                None
            };
            if let Some(w) = wait
                && !self
                    .wait_parked(job, record, &w, &phase.name, cancel)
                    .await?
            {
                return Ok(None);
            }

            record.status = CaseStatus::Running;
            record.started_at = record.started_at.or(Some(now_millis()));
            self.ledger.advance_case(record, None)?;
            let _ = self.events.send(FleetEvent::PhaseStarted {
                case_id: job.case_id.clone(),
                device_id: device.into(),
                phase: phase.name.clone(),
            });
            let permit = match &self.active {
                Some(s) => Some(
                    s.clone()
                        .acquire_owned()
                        .await
                        .expect("semaphore never closed"),
                ),
                None => None,
            };
            let outcome = self
                .runner
                .run_phase(job, index, device, cancel.child_token())
                .await;
            drop(permit);
            let _ = self.events.send(FleetEvent::PhaseFinished {
                case_id: job.case_id.clone(),
                device_id: device.into(),
                phase: phase.name.clone(),
                outcome: match &outcome {
                    PhaseOutcome::Passed => "passed".into(),
                    PhaseOutcome::Failed { class, .. } => format!("failed ({})", class.as_str()),
                    PhaseOutcome::Interrupted => "interrupted".into(),
                },
            });

            match outcome {
                PhaseOutcome::Interrupted => return Ok(None), // stays Running: see device_queue
                PhaseOutcome::Failed { class, message } => {
                    if is_health(job) {
                        self.set_health(device, Health::Bad, &message)?;
                    }
                    record.device_id = device.to_string();
                    return Ok(Some((class, message)));
                }
                PhaseOutcome::Passed => {
                    let ended = now_millis();
                    let lifecycle = match phase.name.as_str() {
                        "technician" => Some(RESEALED),
                        "user" => Some(USER_FLOW_DONE),
                        _ => None,
                    };
                    if let Some(kind) = lifecycle {
                        self.ledger.record_lifecycle(&LifecycleEvent {
                            device_id: device.into(),
                            kind: kind.into(),
                            at: ended,
                            run_id: record.run_id.clone(),
                            detail: format!("{} {}", job.scenario, case_label(job)),
                        })?;
                    }
                    record.next_phase += 1;
                    let Some(next) = job.phases.get(record.next_phase as usize) else {
                        break;
                    };
                    match &next.gap {
                        Some(gap) => {
                            let park = ParkedWait {
                                run_id: record.run_id.clone(),
                                case_id: record.case_id.clone(),
                                device_id: device.into(),
                                next_phase: record.next_phase,
                                not_before: ended + millis(scale.wall(gap.min)),
                                not_after: gap.max.map(|m| ended + millis(scale.wall(m))),
                            };
                            record.status = CaseStatus::Parked;
                            self.ledger.advance_case(record, Some(&park))?;
                        }
                        None => {
                            record.status = CaseStatus::Running;
                            self.ledger.advance_case(record, None)?;
                        }
                    }
                }
            }
        }
        if is_health(job) {
            self.set_health(device, Health::Good, "health check passed")?;
        }
        record.device_id = device.to_string();
        self.finish(record.clone(), CaseStatus::Passed, None, None)?;
        Ok(None)
    }

    /// For a scenario whose first phase has a gap: the gap counts from the device's last
    /// reseal on record. Err says why the case cannot run.
    fn gap_since_reseal(
        &self,
        job: &Job,
        record: &CaseRecord,
        device: &str,
    ) -> LedgerResult<Result<ParkedWait, String>> {
        let gap = job.phases[0].gap.as_ref().expect("checked by caller");
        let Some(resealed) = self.ledger.last_lifecycle(device, RESEALED)? else {
            return Ok(Err(format!(
                "device {device} has no reseal on record; run the technician flow on it first"
            )));
        };
        if let Some(used) = self.ledger.last_lifecycle(device, USER_FLOW_DONE)?
            && used.at >= resealed.at
        {
            return Ok(Err(format!(
                "device {device} went through a user flow (run {}) after its last reseal; run the technician flow on it first",
                used.run_id
            )));
        }
        let scale = self.opts.time_scale;
        let not_after = gap.max.map(|m| resealed.at + millis(scale.wall(m)));
        if let Some(limit) = not_after
            && now_millis() > limit
        {
            return Ok(Err(format!(
                "device {device} was resealed too long ago (run {}); the user flow must start within {}",
                resealed.run_id,
                crate::model::duration::format_duration(gap.max.unwrap_or_default())
            )));
        }
        Ok(Ok(ParkedWait {
            run_id: record.run_id.clone(),
            case_id: record.case_id.clone(),
            device_id: device.into(),
            next_phase: 0,
            not_before: resealed.at + millis(scale.wall(gap.min)),
            not_after,
        }))
    }

    /// Sleeps until the parked wait may end (no thread held). False if interrupted.
    async fn wait_parked(
        &self,
        job: &Job,
        record: &CaseRecord,
        wait: &ParkedWait,
        next_phase: &str,
        cancel: &CancellationToken,
    ) -> LedgerResult<bool> {
        let now = now_millis();
        if now >= wait.not_before {
            if now - wait.not_before > 1000 {
                let _ = self.events.send(FleetEvent::ParkedWaitOverdue {
                    case_id: record.case_id.clone(),
                    device_id: wait.device_id.clone(),
                    late_by_ms: now - wait.not_before,
                });
            }
            return Ok(true);
        }
        let _ = self.events.send(FleetEvent::Parked {
            case_id: job.case_id.clone(),
            device_id: wait.device_id.clone(),
            next_phase: next_phase.into(),
            until: wait.not_before,
        });
        // Sleep in slices against the wall clock, so a suspended host or a coarse timer
        // can only make the wait longer, never shorter.
        loop {
            let left = wait.not_before - now_millis();
            if left <= 0 {
                return Ok(true);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
            }
        }
    }

    fn finish(
        &self,
        mut record: CaseRecord,
        status: CaseStatus,
        class: Option<FailureClass>,
        message: Option<String>,
    ) -> LedgerResult<()> {
        record.status = status;
        record.class = class.map(|c| c.as_str().to_string());
        record.message = message.clone();
        record.finished_at = Some(now_millis());
        self.ledger.advance_case(&record, None)?;
        let _ = self.events.send(FleetEvent::CaseFinished {
            case_id: record.case_id.clone(),
            device_id: record.device_id.clone(),
            status: status.as_str().into(),
            class: record.class.clone(),
            message,
        });
        Ok(())
    }

    fn set_health(&self, device: &str, health: Health, reason: &str) -> LedgerResult<()> {
        if health == Health::Bad {
            let _ = self.events.send(FleetEvent::DeviceMarkedBad {
                device_id: device.into(),
                reason: reason.into(),
            });
        }
        self.ledger.set_health(&DeviceHealth {
            device_id: device.into(),
            health,
            checked_at: now_millis(),
            run_id: self.opts.run_id.clone(),
            reason: reason.into(),
        })
    }
}

fn is_health(job: &Job) -> bool {
    job.health
}

fn case_label(job: &Job) -> String {
    job.case
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

fn new_case(run_id: &str, job: &Job) -> CaseRecord {
    CaseRecord {
        run_id: run_id.into(),
        case_id: job.case_id.clone(),
        scenario: job.scenario.clone(),
        matrix: serde_json::to_string(&job.case).unwrap_or_else(|_| "{}".into()),
        device_id: job.device_id.clone(),
        status: CaseStatus::Pending,
        next_phase: 0,
        class: None,
        message: None,
        started_at: None,
        finished_at: None,
    }
}

/// Counts cases by outcome.
pub fn summarize(cases: &[CaseRecord]) -> RunSummary {
    let mut s = RunSummary::default();
    for c in cases {
        match c.status {
            CaseStatus::Passed => s.passed += 1,
            CaseStatus::Failed => {
                s.failed += 1;
                *s.classes
                    .entry(c.class.clone().unwrap_or_else(|| "unknown".into()))
                    .or_default() += 1;
            }
            CaseStatus::Skipped => s.skipped += 1,
            _ => s.unfinished += 1,
        }
    }
    s
}
