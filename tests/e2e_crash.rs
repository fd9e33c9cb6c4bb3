//! Crash safety through the real binary on a relocated copy of the shipped virtual lab
//! (issue #5): a runner killed with SIGKILL at random moments of a multi-device run is
//! finished by `aplab resume` with the verdicts of an uninterrupted run, no finished case
//! re-run, no gap shortened and no device driven by two runners at once; Ctrl-C stops
//! gracefully; two runners started together on one ledger wait for each other.
//!
//! The lab runs as its own process started by the test (`aplab lab up`), and the runners
//! use it with `--no-lab`: a SIGKILLed runner cannot stop a lab it started, and resume
//! must meet the same devices (the 90-minute rule lives in their state: a user flow
//! started too soon after the technician flow fails with 0xCAA5001C).

mod lab_support;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lab_support::TestLab;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

/// Three devices, one case each: technician flow, a 90-minute gap, user flow.
const SELECTION: &[&str] = &[
    "preprovision-e2e",
    "--matrix",
    "join=entra",
    "--device",
    "pc01",
    "--device",
    "pc02",
    "--device",
    "pc05",
];

/// The lab's time scale (lab-inventory.yaml): 600 lab seconds per wall second.
const TIME_SCALE: i64 = 600;
/// The process's minimum gap between the technician and the user flow, in wall ms.
const MIN_GAP_WALL_MS: i64 = 90 * 60 * 1000 / TIME_SCALE;

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Polls until the child exits; its exit status, or None at the deadline.
fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A runner process, killed on drop if the test fails before it ends. Its stderr is read
/// all along (a full pipe would stall it).
struct Runner {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Runner {
    fn spawn(lab: &TestLab, args: &[&str]) -> Runner {
        let mut child = lab
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aplab");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        });
        Runner {
            child,
            stderr: Some(stderr),
        }
    }

    /// Waits (generously) for the runner to end; its exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = wait_exit(&mut self.child, Duration::from_secs(300))
            .expect("the runner did not finish within 300 s");
        let text = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.code(), text)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(SELECTION.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--no-lab".into());
    args
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The lab's run ledger, opened read-mostly next to the runners writing it.
fn ledger(lab: &TestLab) -> Connection {
    let conn = Connection::open(lab.path("lab-state/ledger.sqlite")).expect("open the ledger");
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Case {
    status: String,
    finished_at: Option<i64>,
}

/// Every run in the ledger, oldest first (none while the first runner is still creating
/// the ledger's tables).
fn runs(conn: &Connection) -> Vec<(String, String)> {
    let Ok(mut stmt) = conn.prepare("SELECT id, status FROM runs ORDER BY started_at, id") else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn run_status(conn: &Connection, run: &str) -> String {
    conn.query_row("SELECT status FROM runs WHERE id = ?1", [run], |r| r.get(0))
        .unwrap()
}

fn cases(conn: &Connection, run: &str) -> BTreeMap<String, Case> {
    let mut stmt = conn
        .prepare("SELECT case_id, status, finished_at FROM cases WHERE run_id = ?1")
        .unwrap();
    stmt.query_map([run], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Case {
                status: r.get(1)?,
                finished_at: r.get(2)?,
            },
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// `status@next_phase` of every case, for the test's log.
fn where_cases_stand(conn: &Connection, run: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT status, next_phase FROM cases WHERE run_id = ?1 ORDER BY case_id")
        .unwrap();
    stmt.query_map([run], |r| {
        Ok(format!(
            "{}@{}",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn verdicts(conn: &Connection, run: &str) -> BTreeMap<String, String> {
    cases(conn, run)
        .into_iter()
        .map(|(id, c)| (id, c.status))
        .collect()
}

#[derive(Debug)]
struct Step {
    run: String,
    case: String,
    phase: String,
    step: String,
    start: i64,
    end: i64,
}

fn steps(conn: &Connection) -> Vec<Step> {
    let mut stmt = conn
        .prepare(
            "SELECT run_id, case_id, phase, step, started_at, elapsed_ms FROM steps
             ORDER BY started_at",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let start: i64 = r.get(4)?;
        Ok(Step {
            run: r.get(0)?,
            case: r.get(1)?,
            phase: r.get(2)?,
            step: r.get(3)?,
            start,
            end: start + r.get::<_, i64>(5)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn step_count(conn: &Connection, run: &str) -> usize {
    conn.query_row("SELECT COUNT(*) FROM steps WHERE run_id = ?1", [run], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap_or(0) as usize
}

/// `scenario[...]@device` -> device.
fn device_of(case_id: &str) -> &str {
    case_id.rsplit('@').next().unwrap_or(case_id)
}

/// (run id, case id)
type RunCase = (String, String);

/// No device was driven by two cases (of any run, any runner) at overlapping times:
/// every step on a device ends before the next one starts. A step of a killed runner
/// never reached the ledger, and the killed process drives nothing after its death.
fn assert_no_device_driven_twice(conn: &Connection) {
    // Per device, the latest end of each (run, case) seen so far.
    let mut ends: BTreeMap<String, BTreeMap<RunCase, (i64, String)>> = BTreeMap::new();
    for s in steps(conn) {
        let seen = ends.entry(device_of(&s.case).to_string()).or_default();
        let me = (s.run.clone(), s.case.clone());
        for (other, (end, what)) in seen.iter() {
            // Steps of one case nest (a `use:` block spans its children); steps of two
            // cases on one device may not overlap.
            if *other != me {
                assert!(
                    s.start >= *end,
                    "device {} driven twice at once: {}/{} {} ended at {end}, but {}/{} {}:{} started at {}",
                    device_of(&s.case),
                    other.0,
                    other.1,
                    what,
                    s.run,
                    s.case,
                    s.phase,
                    s.step,
                    s.start
                );
            }
        }
        let entry = seen.entry(me).or_insert((s.end, String::new()));
        if s.end >= entry.0 {
            *entry = (s.end, format!("{}:{}", s.phase, s.step));
        }
    }
}

/// No device leased to two owners at once within `run`: the lease log's acquisitions of
/// a device by different owners are ordered, and one owner's lease was taken over only
/// once its holder was dead (the killed runner's pid no longer exists).
fn assert_no_double_lease(conn: &Connection, run: &str, killed_owners: &[String]) {
    let mut stmt = conn
        .prepare(
            "SELECT device_id, owner, case_id, acquired_at FROM lease_log WHERE run_id = ?1
             ORDER BY device_id, acquired_at",
        )
        .unwrap();
    let log: Vec<(String, String, String, i64)> = stmt
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!log.is_empty(), "run {run} leased nothing");
    for pair in log.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 != b.0 || a.1 == b.1 {
            continue;
        }
        // A device changed hands: the earlier holder must be a runner this test killed
        // (or one that had finished that case; then it released it first).
        assert!(
            killed_owners.iter().any(|k| a.1.starts_with(k.as_str()))
                || released_before(conn, run, &a.2, b.3),
            "device {} leased by {} and then by {} while the first holder lived and had not finished {}",
            a.0,
            a.1,
            b.1,
            a.2
        );
    }
}

/// True when the case had finished (and so released its device) by `at`.
fn released_before(conn: &Connection, run: &str, case: &str, at: i64) -> bool {
    conn.query_row(
        "SELECT finished_at FROM cases WHERE run_id = ?1 AND case_id = ?2",
        [run, case],
        |r| r.get::<_, Option<i64>>(0),
    )
    .ok()
    .flatten()
    .is_some_and(|f| f <= at)
}

/// Every user step of `run` started at least the minimum gap after the technician flow
/// before it ended (the devices enforce it too; this reads the ledger). A case cut off
/// in its user flow runs its technician flow again, so each user step is measured from
/// the latest technician step that ended before it.
fn assert_gaps_kept(conn: &Connection, run: &str) {
    let all = steps(conn);
    let mut checked = 0;
    for case in cases(conn, run).keys() {
        let mine: Vec<&Step> = all
            .iter()
            .filter(|s| s.run == run && &s.case == case)
            .collect();
        for user in mine.iter().filter(|s| s.phase == "user") {
            let tech_end = mine
                .iter()
                .filter(|s| s.phase == "technician" && s.end <= user.start)
                .map(|s| s.end)
                .max();
            let Some(t) = tech_end else {
                panic!(
                    "{case}: user step {} ran before any technician step",
                    user.step
                );
            };
            assert!(
                user.start - t >= MIN_GAP_WALL_MS,
                "{case}: user step {} started {} ms after the technician flow (at least {MIN_GAP_WALL_MS} ms)",
                user.step,
                user.start - t
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "run {run}: no user step in the ledger");
}

/// Polls `cond` until true or the deadline.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn owner_prefix(child: &Child) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}:{}:", child.id())
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_the_verdicts_of_an_uninterrupted_run() {
    let lab = TestLab::shipped(|t| t);
    let _lab_process = lab.start_lab();

    // The reference: the same selection, uninterrupted.
    let started = Instant::now();
    let (code, stderr) = Runner::spawn(&lab, &as_strs(&run_args(&[]))).finish();
    let baseline_wall = started.elapsed();
    assert_eq!(code, Some(0), "uninterrupted run failed:\n{stderr}");
    let conn = ledger(&lab);
    let baseline_run = runs(&conn).last().expect("the baseline run").0.clone();
    let expected = verdicts(&conn, &baseline_run);
    assert_eq!(expected.len(), 3, "{expected:?}");
    assert!(expected.values().all(|s| s == "passed"), "{expected:?}");
    let baseline_steps = step_count(&conn, &baseline_run);
    eprintln!("uninterrupted run: {baseline_wall:?}, {baseline_steps} step records");

    for seed in [7u64, 1234, 987_654] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // The kill point: after a random number of step records (somewhere from the
        // first technician steps to the last user steps), plus up to 1.5 s more, so the
        // kill lands mid-step as well as between steps and inside parked gaps.
        let after_steps = rng.random_range(1..baseline_steps.saturating_sub(2).max(2));
        let extra = Duration::from_millis(rng.random_range(0..1500));

        let runs_before = runs(&conn).len();
        let started = Instant::now();
        let mut runner = Runner::spawn(&lab, &as_strs(&run_args(&[])));
        let owner = owner_prefix(&runner.child);
        wait_for("the run to start", Duration::from_secs(120), || {
            runs(&conn).len() > runs_before
        });
        let run = runs(&conn).last().unwrap().0.clone();
        wait_for(
            &format!("{after_steps} step records in {run}"),
            Duration::from_secs(300),
            || {
                step_count(&conn, &run) >= after_steps
                    || runner.child.try_wait().is_ok_and(|s| s.is_some())
            },
        );
        std::thread::sleep(extra); // the random kill point itself, not a synchronisation
        runner.child.kill().expect("SIGKILL the runner");
        let _ = runner.child.wait();
        let killed_at = jiff::Timestamp::now().as_millisecond();
        let before_resume = cases(&conn, &run);
        let done_before: BTreeMap<String, Case> = before_resume
            .iter()
            .filter(|(_, c)| matches!(c.status.as_str(), "passed" | "failed" | "skipped"))
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        eprintln!(
            "seed {seed}: killed {run} after {:?} ({} step records; cases at the kill: {:?})",
            started.elapsed(),
            step_count(&conn, &run),
            where_cases_stand(&conn, &run)
        );

        if run_status(&conn, &run) != "finished" {
            let (code, stderr) = Runner::spawn(&lab, &["resume", "--no-lab"]).finish();
            assert_eq!(code, Some(0), "seed {seed}: resume failed:\n{stderr}");
        }
        eprintln!(
            "seed {seed}: run and resume took {:?} in all",
            started.elapsed()
        );

        assert_eq!(run_status(&conn, &run), "finished", "seed {seed}");
        assert_eq!(verdicts(&conn, &run), expected, "seed {seed}: verdicts");
        // No finished case re-run: its record and its steps are as they were.
        let after = cases(&conn, &run);
        for (case, before) in &done_before {
            assert_eq!(&after[case], before, "seed {seed}: {case} was run again");
            assert!(
                !steps(&conn)
                    .iter()
                    .any(|s| s.run == run && &s.case == case && s.start >= killed_at),
                "seed {seed}: {case} finished before the kill but has steps after it"
            );
        }
        assert_gaps_kept(&conn, &run);
        assert_no_double_lease(&conn, &run, &[owner]);
        assert_no_device_driven_twice(&conn);
        let held: i64 = conn
            .query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0))
            .unwrap();
        assert_eq!(held, 0, "seed {seed}: leases left held after the run");
    }
}

#[test]
fn ctrl_c_once_stops_gracefully_and_resume_finishes_the_run() {
    let lab = TestLab::shipped(|t| t);
    let _lab_process = lab.start_lab();

    let started = Instant::now();
    let runner = Runner::spawn(&lab, &as_strs(&run_args(&[])));
    // Interrupt once the technician flows are under way (some steps recorded).
    wait_for("the ledger", Duration::from_secs(120), || {
        lab.path("lab-state/ledger.sqlite").exists()
    });
    let conn = ledger(&lab);
    wait_for("a run in the ledger", Duration::from_secs(120), || {
        !runs(&conn).is_empty()
    });
    let run = runs(&conn)[0].0.clone();
    wait_for("the first steps", Duration::from_secs(300), || {
        step_count(&conn, &run) >= 3
    });
    signal(&runner.child, nix::sys::signal::Signal::SIGINT);
    let (code, stderr) = runner.finish();
    eprintln!("interrupted run took {:?}", started.elapsed());
    assert_eq!(code, Some(130), "Ctrl-C once must exit 130:\n{stderr}");
    assert!(
        stderr.contains(&format!("aplab resume {run}")),
        "no hint how to resume:\n{stderr}"
    );
    assert_eq!(run_status(&conn, &run), "interrupted");
    let report = lab.reports().join(&run).join("report.html");
    assert!(
        std::fs::metadata(&report).is_ok_and(|m| m.len() > 500),
        "{} missing after Ctrl-C",
        report.display()
    );
    let held: i64 = conn
        .query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(held, 0, "an interrupted runner left leases held");
    let unfinished = cases(&conn, &run)
        .values()
        .filter(|c| c.finished_at.is_none())
        .count();
    assert!(unfinished > 0, "Ctrl-C came after the run finished");

    let started = Instant::now();
    let (code, stderr) = Runner::spawn(&lab, &["resume", "--no-lab"]).finish();
    eprintln!("resume took {:?}", started.elapsed());
    assert_eq!(code, Some(0), "resume failed:\n{stderr}");
    assert_eq!(run_status(&conn, &run), "finished");
    assert!(
        verdicts(&conn, &run).values().all(|s| s == "passed"),
        "{:?}",
        verdicts(&conn, &run)
    );
    assert_eq!(verdicts(&conn, &run).len(), 3);
    assert_gaps_kept(&conn, &run);
    assert_no_device_driven_twice(&conn);
}

#[test]
fn two_runners_started_at_once_never_drive_one_device_together() {
    let lab = TestLab::shipped(|t| t);
    let _lab_process = lab.start_lab();

    // Overlapping selections: pc02 is in both.
    let first = [
        "run",
        "preprovision-e2e",
        "--matrix",
        "join=entra",
        "--device",
        "pc01",
        "--device",
        "pc02",
        "--no-lab",
    ];
    let second = [
        "run",
        "preprovision-e2e",
        "--matrix",
        "join=entra",
        "--device",
        "pc02",
        "--device",
        "pc05",
        "--no-lab",
    ];
    let started = Instant::now();
    let a = Runner::spawn(&lab, &first);
    let b = Runner::spawn(&lab, &second);
    let (code_a, stderr_a) = a.finish();
    let (code_b, stderr_b) = b.finish();
    eprintln!("two runners took {:?}", started.elapsed());
    assert_eq!(code_a, Some(0), "first runner:\n{stderr_a}");
    assert_eq!(code_b, Some(0), "second runner:\n{stderr_b}");

    let conn = ledger(&lab);
    let all = runs(&conn);
    assert_eq!(all.len(), 2, "{all:?}");
    for (run, status) in &all {
        assert_eq!(status, "finished");
        let v = verdicts(&conn, run);
        assert_eq!(v.len(), 2, "{run}: {v:?}");
        assert!(v.values().all(|s| s == "passed"), "{run}: {v:?}");
        assert_gaps_kept(&conn, run);
    }
    // pc02 ran in both runs, one after the other.
    let pc02_runs: std::collections::BTreeSet<String> = steps(&conn)
        .into_iter()
        .filter(|s| device_of(&s.case) == "pc02")
        .map(|s| s.run)
        .collect();
    assert_eq!(pc02_runs.len(), 2, "pc02 did not run in both runs");
    assert_no_device_driven_twice(&conn);
}
