//! A realistic run, written through the run directory API and the SQLite ledger, turned
//! into reports, and the reports read back the way their readers read them: junit.xml
//! with Python's junitparser (as CI plugins do), report.html in headless Chromium.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aplab::engine::events::{CaseVerdict, Event, EventKind, PhaseStatus, StepStatus};
use aplab::model::inventory::{Device, Edition, ExpectedTpm, Windows};
use aplab::model::scenario::{FailureClass, Source};
use aplab::report::{Redactor, RunDir, RunInput, SignatureBook, write_reports};
use aplab::store::sqlite::SqliteLedger;
use aplab::store::{CaseRecord, CaseStatus, Ledger, RunStatus, StepRecord};
use serde_json::Value;

const CLIENT_SECRET: &str = "Zq8~client.SECRET/value+42";
const USER_PASSWORD: &str = "P@ss<w0rd>&\"quoted\"";
const KVM_PASSWORD: &str = "kvm-admin-hunter22";
const SECRETS: [&str; 3] = [CLIENT_SECRET, USER_PASSWORD, KVM_PASSWORD];

const T0_MS: i64 = 1_795_000_000_000;

fn device(id: &str, serial: &str, model: &str, tpm_maker: &str, firmware: &str) -> Device {
    Device {
        id: id.into(),
        serial: serial.into(),
        manufacturer: "Contoso Hardware".into(),
        model: model.into(),
        windows: Windows {
            edition: Edition::Pro,
            version: 11,
            build: Some("22631.4460".into()),
        },
        tpm: Some(ExpectedTpm {
            family: "2.0".into(),
            manufacturer: tpm_maker.into(),
            firmware: Some(firmware.into()),
            ek_ca_bundle: None,
        }),
        tags: BTreeMap::new(),
        power: None,
        console: None,
        keyboard: None,
        screen: None,
        shell: None,
        tpm_access: None,
        tenant: Some("contoso".into()),
        health_scenario: None,
        sim: None,
    }
}

/// Writes one case's events through the run directory, on a lab clock that starts at
/// `start` seconds after T0 (wall clock and lab clock move together here).
struct CaseWriter<'a> {
    dir: &'a RunDir,
    case_id: String,
    device: String,
    case: String,
    t: f64,
}

impl CaseWriter<'_> {
    fn at(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(T0_MS + (self.t * 1000.0) as i64).unwrap()
    }
    fn emit(&mut self, phase: Option<&str>, step: Option<&str>, advance: f64, kind: EventKind) {
        self.t += advance;
        let event = Event {
            at: self.at(),
            lab_time: Duration::from_secs_f64(self.t),
            device: self.device.clone(),
            case: self.case.clone(),
            phase: phase.map(str::to_string),
            step: step.map(str::to_string),
            kind,
        };
        self.dir.append_event(&self.case_id, &event).unwrap();
    }
    fn step(
        &mut self,
        phase: &str,
        step: &str,
        what: &str,
        took: f64,
        status: StepStatus,
        captures: &[(&str, &str)],
    ) {
        self.emit(
            Some(phase),
            Some(step),
            1.0,
            EventKind::StepStarted {
                attempt: 1,
                attempts_allowed: 1,
                what: what.into(),
                origin: "scenarios/preprovision.yaml:12:7".into(),
                block: None,
            },
        );
        self.emit(
            Some(phase),
            Some(step),
            took,
            EventKind::StepFinished {
                status,
                attempts: 1,
                attempts_allowed: 1,
                elapsed: Duration::from_secs_f64(took),
                timed_out_attempts: 0,
                stopped_by: None,
                captures: captures
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
    }
    fn phase_start(&mut self, phase: &str, gap: Option<f64>) {
        if let Some(min) = gap {
            self.emit(
                Some(phase),
                None,
                0.0,
                EventKind::GapStarted {
                    min: Duration::from_secs_f64(min),
                },
            );
        }
        self.emit(
            Some(phase),
            None,
            gap.map(|_| 0.0).unwrap_or(0.5),
            EventKind::PhaseStarted {
                timeout: Some(Duration::from_secs(4 * 3600)),
            },
        );
    }
    fn phase_end(&mut self, phase: &str, status: PhaseStatus, elapsed: f64) {
        self.emit(
            Some(phase),
            None,
            1.0,
            EventKind::PhaseFinished {
                status,
                elapsed: Duration::from_secs_f64(elapsed),
            },
        );
    }
}

fn png_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 8, 6);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..8 * 6).flat_map(|i| [200, (i * 5) as u8, 40]).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

fn case_record(run: &str, scenario: &str, device: &str, status: CaseStatus) -> CaseRecord {
    let matrix: BTreeMap<String, String> = [("join".to_string(), "entra".to_string())].into();
    CaseRecord {
        run_id: run.into(),
        case_id: format!("{scenario}[join=entra]@{device}"),
        scenario: scenario.into(),
        matrix: serde_json::to_string(&matrix).unwrap(),
        device_id: device.into(),
        status,
        next_phase: 0,
        class: None,
        message: None,
        started_at: None,
        finished_at: None,
    }
}

fn add_case(ledger: &SqliteLedger, mut case: CaseRecord, at: i64) {
    case.started_at = Some(at);
    case.finished_at = Some(at + 60_000);
    let stored = CaseRecord {
        status: CaseStatus::Pending,
        ..case.clone()
    };
    ledger.add_cases(&[stored]).unwrap();
    ledger.update_case(&case).unwrap();
}

fn step_record(
    run: &str,
    case_id: &str,
    phase: &str,
    step: &str,
    attempt: u32,
    failure: Option<(&str, Option<&str>, &str)>,
) -> StepRecord {
    StepRecord {
        run_id: run.into(),
        case_id: case_id.into(),
        phase: phase.into(),
        step: step.into(),
        attempt,
        status: if failure.is_some() {
            "failed"
        } else {
            "passed"
        }
        .into(),
        class: failure.map(|f| f.0.to_string()),
        code: failure.and_then(|f| f.1.map(str::to_string)),
        message: failure.map(|f| f.2.to_string()),
        started_at: T0_MS,
        elapsed_ms: 1000,
    }
}

/// Two earlier runs and the current one, in a ledger on disk.
fn ledger_with_history(path: &Path) -> SqliteLedger {
    let ledger = SqliteLedger::open(path).unwrap();
    // run-1: pc01 failed, pc02 passed, pc03 passed, health@pc04 passed
    // run-2: pc01 passed, pc02 passed, pc03 failed, health@pc04 failed
    // run-3: pc01 passed after a retry, pc02 failed (new), pc03 failed (still),
    //        health@pc04 passed (fixed, and alternating P F P)
    let plan: [(&str, [CaseStatus; 4]); 3] = [
        (
            "run-1",
            [
                CaseStatus::Failed,
                CaseStatus::Passed,
                CaseStatus::Passed,
                CaseStatus::Passed,
            ],
        ),
        (
            "run-2",
            [
                CaseStatus::Passed,
                CaseStatus::Passed,
                CaseStatus::Failed,
                CaseStatus::Failed,
            ],
        ),
        (
            "run-3",
            [
                CaseStatus::Passed,
                CaseStatus::Failed,
                CaseStatus::Failed,
                CaseStatus::Passed,
            ],
        ),
    ];
    for (i, (run, statuses)) in plan.iter().enumerate() {
        let at = T0_MS - (2 - i as i64) * 86_400_000;
        ledger.create_run(run, "{}", at).unwrap();
        let ids = [
            ("preprovision", "pc01"),
            ("preprovision", "pc02"),
            ("preprovision", "pc03"),
            ("health", "pc04"),
        ];
        for ((scenario, dev), status) in ids.iter().zip(statuses) {
            let mut case = case_record(run, scenario, dev, *status);
            if *status == CaseStatus::Failed {
                case.class = Some("product".into());
                case.message = Some(format!("failed in {run}"));
            }
            add_case(&ledger, case, at);
        }
        ledger
            .finish_run(run, RunStatus::Finished, at + 3_600_000)
            .unwrap();
    }
    // The current run's step records.
    let r = "run-3";
    let pc01 = "preprovision[join=entra]@pc01";
    ledger
        .record_step(&step_record(
            r,
            pc01,
            "technician",
            "wait for the success screen",
            1,
            Some(("timeout", None, "no outcome within 45m")),
        ))
        .unwrap();
    ledger
        .record_step(&step_record(
            r,
            pc01,
            "technician",
            "wait for the success screen",
            2,
            None,
        ))
        .unwrap();
    let pc02 = "preprovision[join=entra]@pc02";
    ledger
        .record_step(&step_record(
            r,
            pc02,
            "technician",
            "wait for the success screen",
            1,
            Some((
                "product",
                Some("0x80180014"),
                "the failure screen showed 0x80180014",
            )),
        ))
        .unwrap();
    let mut pc02_case = case_record(r, "preprovision", "pc02", CaseStatus::Failed);
    pc02_case.class = Some("product".into());
    // A secret that slipped into a ledger message must not reach the reports either.
    pc02_case.message = Some(format!(
        "the failure screen showed 0x80180014 (typed {USER_PASSWORD})"
    ));
    pc02_case.started_at = Some(T0_MS);
    pc02_case.finished_at = Some(T0_MS + 60_000);
    ledger.update_case(&pc02_case).unwrap();
    let mut pc03_case = case_record(r, "preprovision", "pc03", CaseStatus::Failed);
    pc03_case.class = Some("product".into());
    pc03_case.message = Some("sign-in failed".into());
    pc03_case.started_at = Some(T0_MS);
    pc03_case.finished_at = Some(T0_MS + 60_000);
    ledger.update_case(&pc03_case).unwrap();
    ledger
}

/// The console of pc02: everything a misbehaving device sends, with the failure in the
/// middle and lines after it that the excerpt must not show.
fn nasty_console() -> Vec<u8> {
    let line = |secs: i64, bytes: &[u8]| {
        let t = jiff::Timestamp::from_millisecond(T0_MS + secs * 1000).unwrap();
        let mut l = format!("{t:.3} | ").into_bytes();
        l.extend_from_slice(bytes);
        l.push(b'\n');
        l
    };
    let mut out = Vec::new();
    out.extend(line(1, b"\x1b[2J\x1b[HWindows Boot Manager\x00\x07"));
    out.extend(line(2, b"BIOS says \xff\xfe\xfd and \x01\x02\x03\x7f"));
    out.extend(line(
        3,
        "OOBE noncharacters \u{FFFE}\u{FFFF} here".as_bytes(),
    ));
    out.extend(line(
        4,
        format!("typed password: {USER_PASSWORD}").as_bytes(),
    ));
    out.extend(line(
        5,
        format!("POST /token client_secret={CLIENT_SECRET}").as_bytes(),
    ));
    out.extend(line(6, b"\x1b[31mEnrollment failed: 0x80180014\x1b[0m\r"));
    out.extend(line(900, b"LINE AFTER THE FAILURE"));
    out
}

struct Run {
    _tmp: tempfile::TempDir,
    dir: RunDir,
    input: RunInput,
}

fn build_run() -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = ledger_with_history(&tmp.path().join("ledger.sqlite"));
    let redactor = Redactor::new(SECRETS);
    let dir = RunDir::create(&tmp.path().join("reports"), "run-3", redactor).unwrap();

    // pc01: passes; the success screen needed a second attempt (flaky).
    let mut w = CaseWriter {
        dir: &dir,
        case_id: "preprovision[join=entra]@pc01".into(),
        device: "pc01".into(),
        case: "preprovision[join=entra]".into(),
        t: 0.0,
    };
    w.emit(
        None,
        None,
        0.0,
        EventKind::CaseStarted {
            scenario: "preprovision".into(),
            matrix: [("join".to_string(), "entra".to_string())].into(),
            phases: vec!["technician".into(), "user".into()],
        },
    );
    w.phase_start("technician", None);
    w.step(
        "technician",
        "power on",
        "power on",
        2.0,
        StepStatus::Passed,
        &[],
    );
    w.step(
        "technician",
        "open the provisioning menu",
        "press MetaLeft x5",
        1.0,
        StepStatus::Passed,
        &[],
    );
    w.emit(
        Some("technician"),
        Some("tpm facts"),
        1.0,
        EventKind::StepStarted {
            attempt: 1,
            attempts_allowed: 1,
            what: "check the TPM ([Family, Manufacturer, Firmware])".into(),
            origin: "scenarios/preprovision.yaml:20:7".into(),
            block: None,
        },
    );
    for (what, value) in [
        ("tpm family", "2.0"),
        ("tpm manufacturer", "IFX"),
        ("tpm firmware", "7.85.4555.0"),
    ] {
        w.emit(
            Some("technician"),
            Some("tpm facts"),
            0.1,
            EventKind::DeviceStateSeen {
                what: what.into(),
                value: value.into(),
            },
        );
    }
    w.emit(
        Some("technician"),
        Some("tpm facts"),
        0.1,
        EventKind::DeviceStateSeen {
            what: "tpm ek certificate issuer".into(),
            value: "CN=Infineon OPTIGA(TM) TPM 2.0 RSA CA 042".into(),
        },
    );
    w.emit(
        Some("technician"),
        Some("tpm facts"),
        0.5,
        EventKind::StepFinished {
            status: StepStatus::Passed,
            attempts: 1,
            attempts_allowed: 1,
            elapsed: Duration::from_secs(1),
            timed_out_attempts: 0,
            stopped_by: None,
            captures: BTreeMap::new(),
        },
    );
    // The retried step.
    let s = Some("wait for the success screen");
    w.emit(
        Some("technician"),
        s,
        1.0,
        EventKind::StepStarted {
            attempt: 1,
            attempts_allowed: 2,
            what: "wait on the screen for success | failure".into(),
            origin: "scenarios/preprovision.yaml:31:7".into(),
            block: Some("provision".into()),
        },
    );
    w.emit(
        Some("technician"),
        s,
        2700.0,
        EventKind::StepRetried {
            attempt: 1,
            next_in: Duration::from_secs(30),
            after_class: FailureClass::Timeout,
            message: format!("no outcome within 45m (KVM login {KVM_PASSWORD} ok)"),
        },
    );
    w.emit(
        Some("technician"),
        s,
        30.0,
        EventKind::StepStarted {
            attempt: 2,
            attempts_allowed: 2,
            what: "wait on the screen for success | failure".into(),
            origin: "scenarios/preprovision.yaml:31:7".into(),
            block: Some("provision".into()),
        },
    );
    let captures: BTreeMap<String, String> =
        [("elapsed".to_string(), "00:41:12".to_string())].into();
    w.emit(
        Some("technician"),
        s,
        600.0,
        EventKind::PatternMatched {
            source: Source::Screen,
            outcome: "success".into(),
            passed: true,
            text: "Pre-provisioning complete. Elapsed time 00:41:12 Reseal".into(),
            captures: captures.clone(),
        },
    );
    w.emit(
        Some("technician"),
        s,
        0.5,
        EventKind::StepFinished {
            status: StepStatus::Passed,
            attempts: 2,
            attempts_allowed: 2,
            elapsed: Duration::from_secs(3330),
            timed_out_attempts: 1,
            stopped_by: None,
            captures,
        },
    );
    let shot = dir
        .artifacts_dir(&w.case_id)
        .unwrap()
        .join("technician-success.png");
    std::fs::write(&shot, png_bytes()).unwrap();
    w.emit(
        Some("technician"),
        Some("screenshot"),
        1.0,
        EventKind::ArtifactSaved {
            kind: "screenshot".into(),
            path: shot.clone(),
            bytes: std::fs::metadata(&shot).unwrap().len(),
            truncated: false,
        },
    );
    w.phase_end("technician", PhaseStatus::Passed, 3400.0);
    w.t += 5400.0; // the 90-minute gap
    w.phase_start("user", Some(5400.0));
    w.step(
        "user",
        "sign in",
        "type secret text",
        5.0,
        StepStatus::Passed,
        &[],
    );
    w.emit(
        Some("user"),
        Some("joined to entra"),
        1.0,
        EventKind::StepStarted {
            attempt: 1,
            attempts_allowed: 1,
            what: "run `dsregcmd /status`".into(),
            origin: "scenarios/preprovision.yaml:50:7".into(),
            block: None,
        },
    );
    w.emit(
        Some("user"),
        Some("joined to entra"),
        2.0,
        EventKind::DeviceStateSeen {
            what: "AzureAdJoined".into(),
            value: "YES".into(),
        },
    );
    w.emit(
        Some("user"),
        Some("joined to entra"),
        0.5,
        EventKind::StepFinished {
            status: StepStatus::Passed,
            attempts: 1,
            attempts_allowed: 1,
            elapsed: Duration::from_secs(3),
            timed_out_attempts: 0,
            stopped_by: None,
            captures: BTreeMap::new(),
        },
    );
    // A `continue_on_failure` check that failed: tolerated, the case still passes.
    w.step(
        "user",
        "compliance reported",
        "tenant: ExpectCompliance",
        4.0,
        StepStatus::Failed {
            class: FailureClass::Product,
            code: None,
            message: "complianceState is noncompliant, expected compliant".into(),
            hint: None,
        },
        &[],
    );
    w.phase_end("user", PhaseStatus::Passed, 900.0);
    w.emit(
        None,
        None,
        0.1,
        EventKind::CaseFinished {
            verdict: CaseVerdict::Passed,
            tolerated_failures: 1,
        },
    );

    // pc02: the technician flow ends on the red screen with 0x80180014.
    let mut w = CaseWriter {
        dir: &dir,
        case_id: "preprovision[join=entra]@pc02".into(),
        device: "pc02".into(),
        case: "preprovision[join=entra]".into(),
        t: 0.0,
    };
    w.emit(
        None,
        None,
        0.0,
        EventKind::CaseStarted {
            scenario: "preprovision".into(),
            matrix: [("join".to_string(), "entra".to_string())].into(),
            phases: vec!["technician".into(), "user".into()],
        },
    );
    w.phase_start("technician", None);
    w.step(
        "technician",
        "power on",
        "power on",
        2.0,
        StepStatus::Passed,
        &[],
    );
    let s = Some("wait for the success screen");
    w.emit(
        Some("technician"),
        s,
        1.0,
        EventKind::StepStarted {
            attempt: 1,
            attempts_allowed: 1,
            what: "wait on the screen for success | failure".into(),
            origin: "scenarios/preprovision.yaml:31:7".into(),
            block: Some("provision".into()),
        },
    );
    let captures: BTreeMap<String, String> = [
        ("code".to_string(), "0x80180014".to_string()),
        ("elapsed".to_string(), "00:12:03".to_string()),
    ]
    .into();
    w.emit(
        Some("technician"),
        s,
        2.0,
        EventKind::PatternMatched {
            source: Source::Screen,
            outcome: "failure".into(),
            passed: false,
            text: "Something went wrong. Error: 0x80180014 Elapsed 00:12:03".into(),
            captures: captures.clone(),
        },
    );
    w.emit(
        Some("technician"),
        s,
        0.5,
        EventKind::StepFinished {
            status: StepStatus::Failed {
                class: FailureClass::Product,
                code: Some("0x80180014".into()),
                message: "the failure screen showed 0x80180014".into(),
                hint: Some("see the screenshot and the diagnostics".into()),
            },
            attempts: 1,
            attempts_allowed: 1,
            elapsed: Duration::from_secs(3),
            timed_out_attempts: 0,
            stopped_by: None,
            captures,
        },
    );
    let arts = dir
        .artifacts_dir(&w.case_id)
        .unwrap()
        .join("technician")
        .join("collect");
    std::fs::create_dir_all(&arts).unwrap();
    let shot = arts.join("screen.png");
    std::fs::write(&shot, png_bytes()).unwrap();
    let dsreg = arts.join("dsregcmd.txt");
    std::fs::write(
        &dsreg,
        format!("AzureAdJoined : NO\nDomainJoined : NO\nlast typed: {USER_PASSWORD}\n"),
    )
    .unwrap();
    let diag = arts.join("mdm-diagnostics.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&diag).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("MDMDiagReport.xml", o).unwrap();
        z.write_all(format!("<Report><Enrollment>0x80180014</Enrollment><Secret>{CLIENT_SECRET}</Secret></Report>").as_bytes()).unwrap();
        z.start_file("evtx/autopilot.evtx", o).unwrap();
        z.write_all(&[0u8, 1, 2, 3]).unwrap();
        z.finish().unwrap();
    }
    for (kind, path) in [
        ("screenshot", &shot),
        ("dsregcmd", &dsreg),
        ("mdm-diagnostics", &diag),
    ] {
        w.emit(
            Some("technician"),
            Some("collect diagnostics"),
            1.0,
            EventKind::ArtifactSaved {
                kind: kind.into(),
                path: path.clone(),
                bytes: std::fs::metadata(path).unwrap().len(),
                truncated: false,
            },
        );
    }
    w.phase_end(
        "technician",
        PhaseStatus::Failed {
            step: "wait for the success screen".into(),
            class: FailureClass::Product,
        },
        9.0,
    );
    w.emit(
        None,
        None,
        0.1,
        EventKind::CaseFinished {
            verdict: CaseVerdict::Failed {
                class: FailureClass::Product,
                phase: "technician".into(),
                step: "wait for the success screen".into(),
                code: Some("0x80180014".into()),
                message: "the failure screen showed 0x80180014".into(),
            },
            tolerated_failures: 0,
        },
    );
    // The console backend writes its log where the run directory says; it is not
    // scrubbed on the way in (a raw log), so write_reports must scrub it.
    std::fs::write(dir.console_log(&w.case_id).unwrap(), nasty_console()).unwrap();

    // pc03: the user flow started 30 minutes after the technician flow; sign-in fails.
    let mut w = CaseWriter {
        dir: &dir,
        case_id: "preprovision[join=entra]@pc03".into(),
        device: "pc03".into(),
        case: "preprovision[join=entra]".into(),
        t: 0.0,
    };
    w.emit(
        None,
        None,
        0.0,
        EventKind::CaseStarted {
            scenario: "preprovision".into(),
            matrix: [("join".to_string(), "entra".to_string())].into(),
            phases: vec!["technician".into(), "user".into()],
        },
    );
    w.phase_start("technician", None);
    w.step(
        "technician",
        "wait for the success screen",
        "wait on the screen for success | failure",
        2400.0,
        StepStatus::Passed,
        &[("elapsed", "00:40:00")],
    );
    w.phase_end("technician", PhaseStatus::Passed, 2402.0);
    w.t += 1800.0;
    w.phase_start("user", Some(1800.0));
    // Tried twice; failed both times (rerun entries in JUnit).
    let s = Some("sign in accepted");
    for attempt in 1..=2 {
        w.emit(
            Some("user"),
            s,
            1.0,
            EventKind::StepStarted {
                attempt,
                attempts_allowed: 2,
                what: "wait on the screen for desktop | sign-in error".into(),
                origin: "scenarios/preprovision.yaml:44:7".into(),
                block: None,
            },
        );
        if attempt == 1 {
            w.emit(
                Some("user"),
                s,
                30.0,
                EventKind::StepRetried {
                    attempt,
                    next_in: Duration::from_secs(10),
                    after_class: FailureClass::Product,
                    message: "the screen showed sign-in error".into(),
                },
            );
        }
    }
    w.emit(
        Some("user"),
        s,
        30.0,
        EventKind::StepFinished {
            status: StepStatus::Failed {
                class: FailureClass::Product,
                code: None,
                message: "the screen showed sign-in error: token could not be validated".into(),
                hint: None,
            },
            attempts: 2,
            attempts_allowed: 2,
            elapsed: Duration::from_secs(60),
            timed_out_attempts: 0,
            stopped_by: None,
            captures: BTreeMap::new(),
        },
    );
    w.phase_end(
        "user",
        PhaseStatus::Failed {
            step: "sign in accepted".into(),
            class: FailureClass::Product,
        },
        62.0,
    );
    w.emit(
        None,
        None,
        0.1,
        EventKind::CaseFinished {
            verdict: CaseVerdict::Failed {
                class: FailureClass::Product,
                phase: "user".into(),
                step: "sign in accepted".into(),
                code: None,
                message: "sign-in failed".into(),
            },
            tolerated_failures: 0,
        },
    );

    // health@pc04: events lost (the runner died); only the ledger knows it passed.
    let devices = vec![
        device("pc01", "SN-0001", "Latitude 7440", "IFX", "7.85"),
        device("pc02", "SN-0002", "Latitude 7440", "NTC", "7.2.3.1"),
        device("pc03", "SN-0003", "Surface Laptop 6", "STM", "1.769"),
        device("pc04", "SN-0004", "Surface Laptop 6", "STM", "1.769"),
    ];
    let input = RunInput::from_ledger(
        &ledger,
        "run-3",
        "test-lab",
        &devices,
        SignatureBook::builtin(),
        10,
    )
    .unwrap();
    Run {
        _tmp: tmp,
        dir,
        input,
    }
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = manifest().join(".cache/pytools-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `make test` (scripts/install-test-tools creates it)",
        p.display()
    );
    p
}

fn chromium() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("chromium");
        if p.exists() {
            return p;
        }
    }
    panic!("chromium is not installed: run `make test` (scripts/install-test-tools installs it)");
}

const JUNIT_READER: &str = r#"
import json, sys
from junitparser import JUnitXml
xml = JUnitXml.fromfile(sys.argv[1])
out = []
for suite in xml:
    props = {}
    for p in suite.properties():
        props.setdefault(p.name, p.value)
    cases = []
    for case in suite:
        results = [{"tag": r._tag, "type": r.type, "message": r.message} for r in case.result]
        extra = [child.tag for child in case._elem if child.tag in ("flakyFailure", "rerunFailure", "flakyError", "rerunError")]
        cases.append({"name": case.name, "classname": case.classname, "results": results,
                      "reruns": extra, "system_out": case.system_out or ""})
    out.append({"name": suite.name, "tests": suite.tests, "failures": suite.failures,
                "props": props, "cases": cases})
print(json.dumps(out))
"#;

#[test]
fn junit_xml_reads_back_in_junitparser() {
    let run = build_run();
    let written = write_reports(&run.dir, &run.input).unwrap();
    let out = Command::new(python())
        .arg("-c")
        .arg(JUNIT_READER)
        .arg(&written.junit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "junitparser could not read junit.xml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suites: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = suites.iter().map(|s| s["name"].as_str().unwrap()).collect();
    // A suite per case; failed ones first.
    assert_eq!(
        names,
        [
            "preprovision[join=entra]@pc02",
            "preprovision[join=entra]@pc03",
            "health[join=entra]@pc04",
            "preprovision[join=entra]@pc01",
        ]
    );
    let suite = |name: &str| suites.iter().find(|s| s["name"] == name).unwrap();

    // pc02: properties and the failure with its class, code and known cause.
    let pc02 = suite("preprovision[join=entra]@pc02");
    let props = &pc02["props"];
    assert_eq!(props["device_id"], "pc02");
    assert_eq!(props["serial"], "SN-0002");
    assert_eq!(props["model"], "Latitude 7440");
    assert_eq!(props["tpm_manufacturer"], "NTC");
    assert_eq!(props["tpm_firmware"], "7.2.3.1");
    assert_eq!(props["windows_build"], "22631.4460");
    assert_eq!(props["join_type"], "entra");
    assert_eq!(props["technician_elapsed"], "00:12:03");
    assert_eq!(props["run_id"], "run-3");
    let cases = pc02["cases"].as_array().unwrap();
    let case_names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        case_names,
        [
            "phase technician",
            "technician / wait for the success screen",
            "phase user"
        ],
        "a test case per phase and per check; power on is an action, not a check"
    );
    let failed = &cases[1];
    assert_eq!(failed["results"][0]["tag"], "failure");
    assert_eq!(failed["results"][0]["type"], "product");
    let message = failed["results"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("0x80180014: Enrollment blocked"),
        "{message}"
    );
    let out = failed["system_out"].as_str().unwrap();
    assert!(out.contains("Enrollment failed: 0x80180014"), "{out}");
    assert!(!out.contains("LINE AFTER THE FAILURE"), "{out}");
    assert!(out.contains("[[ATTACHMENT|/"), "{out}");
    assert!(out.contains("dsregcmd.txt]]"), "{out}");
    assert!(out.contains("screen.png]]"), "{out}");
    assert_eq!(cases[2]["results"][0]["tag"], "skipped");

    // pc01: the TPM as it reported itself, the flaky step, passing overall.
    let pc01 = suite("preprovision[join=entra]@pc01");
    assert_eq!(pc01["props"]["tpm_manufacturer"], "IFX");
    assert_eq!(pc01["props"]["tpm_firmware"], "7.85.4555.0");
    assert_eq!(pc01["props"]["technician_elapsed"], "00:41:12");
    assert_eq!(pc01["failures"], 0);
    let flaky = pc01["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "technician / wait for the success screen")
        .unwrap();
    assert_eq!(flaky["results"].as_array().unwrap().len(), 0, "it passed");
    assert_eq!(flaky["reruns"][0], "flakyFailure");
    let names: Vec<&str> = pc01["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"technician / tpm facts"), "{names:?}");
    assert!(names.contains(&"user / joined to entra"), "{names:?}");
    assert!(
        !names.contains(&"user / sign in"),
        "typing is not a check: {names:?}"
    );
    let tolerated = pc01["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "user / compliance reported")
        .unwrap();
    assert_eq!(tolerated["results"][0]["tag"], "skipped");
    assert_eq!(tolerated["results"][0]["type"], "tolerated");
    assert!(
        tolerated["results"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("tolerated failure (product): no known signature matches"),
        "{tolerated}"
    );

    // pc03: the known cause is the too-short gap.
    let pc03 = suite("preprovision[join=entra]@pc03");
    let fail = pc03["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "user / sign in accepted")
        .unwrap();
    let message = fail["results"][0]["message"].as_str().unwrap();
    assert!(message.contains("less than 90 minutes"), "{message}");
    assert_eq!(fail["reruns"], serde_json::json!(["rerunFailure"]));

    // pc04: no events, the ledger's steps are all there is; still a suite.
    assert_eq!(suite("health[join=entra]@pc04")["failures"], 0);

    // The raw XML carries no control characters or noncharacters at all.
    let xml = std::fs::read_to_string(&written.junit).unwrap();
    assert!(
        !xml.chars()
            .any(|c| (c.is_control() && !"\n\r\t".contains(c))
                || c == '\u{FFFE}'
                || c == '\u{FFFF}'),
        "junit.xml carries characters XML forbids"
    );
}

#[test]
fn report_html_opens_in_headless_chromium_failures_first() {
    let run = build_run();
    let written = write_reports(&run.dir, &run.input).unwrap();
    let html = std::fs::read_to_string(&written.html).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("src=\"https:"),
        "report.html must not fetch anything"
    );
    let artifacts = manifest().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", written.html.canonicalize().unwrap().display());
    let base = |extra: &[&str]| {
        let mut c = Command::new("timeout");
        c.arg("120").arg(chromium()).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,2000",
        ]);
        c.arg(format!("--user-data-dir={}", profile.path().display()));
        c.args(extra);
        c.arg(&url);
        c
    };
    // Kept for a human to look at after the test.
    for p in [&written.junit, &written.summary, &written.html] {
        std::fs::copy(
            p,
            artifacts.join(format!(
                "report-run-{}",
                p.file_name().unwrap().to_string_lossy()
            )),
        )
        .unwrap();
    }
    let shot = artifacts.join("report-run.png");
    let _ = std::fs::remove_file(&shot);
    let out = base(&[&format!("--screenshot={}", shot.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot looks empty"
    );

    let out = base(&["--dump-dom"]).output().unwrap();
    assert!(out.status.success(), "chromium --dump-dom failed");
    let dom = String::from_utf8_lossy(&out.stdout);
    let pos = |needle: &str| {
        dom.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in the rendered page"))
    };
    // The order of the page: at a glance, failures, timeline, history, all cases.
    assert!(pos("id=\"glance\"") < pos("id=\"failures\""));
    assert!(pos("id=\"failures\"") < pos("id=\"timeline\""));
    assert!(pos("id=\"timeline\"") < pos("id=\"history\""));
    assert!(pos("id=\"history\"") < pos("id=\"cases\""));
    // Failures first: the failed cases' details come before the passed ones'.
    let failed = pos("id=\"case-preprovision_join-entra@pc02\"");
    let passed = pos("id=\"case-preprovision_join-entra@pc01\"");
    assert!(failed < passed);
    let failures = &dom[pos("id=\"failures\"")..pos("id=\"timeline\"")];
    for needle in [
        "0x80180014",
        "Enrollment blocked (device reused after pre-provisioning)",
        "allowNextEnrollment",
        "Enrollment failed: 0x80180014",
        "data:image/png;base64,",
        "User flow started less than 90 minutes after the technician flow",
    ] {
        assert!(
            failures.contains(needle),
            "{needle:?} not in the failures section"
        );
    }
    assert!(
        !failures.contains("preprovision[join=entra]@pc01"),
        "a passed case among failures"
    );
    let timeline = &dom[pos("id=\"timeline\"")..pos("id=\"history\"")];
    assert!(
        timeline.contains("gap 1h 30m, at least 1h 30m demanded"),
        "{timeline}"
    );
    assert!(timeline.contains("gap 30m 0s, at least 30m 0s demanded"));
    let history = &dom[pos("id=\"history\"")..pos("id=\"cases\"")];
    for needle in ["run-2, run-1", "passed on retry", "alternating across runs"] {
        assert!(
            history.contains(needle),
            "{needle:?} not in the history section"
        );
    }
}

#[test]
fn every_failure_is_diagnosed_and_the_summary_says_so() {
    let run = build_run();
    let written = write_reports(&run.dir, &run.input).unwrap();
    let summary: Value = serde_json::from_slice(&std::fs::read(&written.summary).unwrap()).unwrap();
    assert_eq!(summary["totals"]["failed"], 2);
    assert_eq!(summary["totals"]["passed"], 2);
    assert_eq!(summary["totals"]["flaky"], 1);
    let cases = summary["cases"].as_array().unwrap();
    let pc02 = &cases[0];
    assert_eq!(pc02["case_id"], "preprovision[join=entra]@pc02");
    let f = &pc02["failures"][0];
    assert_eq!(
        f["diagnosis"]["signature"],
        "enrollment-blocked-reused-device"
    );
    assert_eq!(f["diagnosis"]["matched_on"], "code 0x80180014");
    assert_eq!(f["fatal"], true);
    let pc03 = &cases[1];
    assert_eq!(
        pc03["failures"][0]["diagnosis"]["signature"],
        "user-flow-too-soon"
    );
    assert_eq!(pc03["phases"][1]["gap_before_s"], 1800.0);
    // The retried attempt on pc01 is diagnosed too.
    let pc01 = cases
        .iter()
        .find(|c| c["case_id"] == "preprovision[join=entra]@pc01")
        .unwrap();
    let retry = &pc01["phases"][0]["steps"][3]["retries"][0];
    assert_eq!(retry["class"], "timeout");
    assert!(
        retry["diagnosis"]["cause"]
            .as_str()
            .unwrap()
            .starts_with("no known signature matches")
    );

    // Evidence for the OEM: TPM facts as seen, elapsed time, diagnostics, an archive.
    let ev: Value =
        serde_json::from_slice(&std::fs::read(run.dir.evidence_dir().join("pc01.json")).unwrap())
            .unwrap();
    assert_eq!(ev["device"]["tpm_manufacturer"], "IFX");
    assert_eq!(ev["device"]["tpm_seen"], true);
    assert_eq!(
        ev["device"]["tpm_ek_issuer"],
        "CN=Infineon OPTIGA(TM) TPM 2.0 RSA CA 042"
    );
    assert_eq!(ev["cases"][0]["technician_elapsed"], "00:41:12");
    let ev2: Value =
        serde_json::from_slice(&std::fs::read(run.dir.evidence_dir().join("pc02.json")).unwrap())
            .unwrap();
    let diags: Vec<&str> = ev2["cases"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        diags.iter().any(|d| d.ends_with("mdm-diagnostics.zip")),
        "{diags:?}"
    );
    let mut zip =
        zip::ZipArchive::new(std::fs::File::open(run.dir.evidence_dir().join("pc02.zip")).unwrap())
            .unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("console.log")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("dsregcmd.txt")),
        "{names:?}"
    );
}

#[test]
fn evidence_archives_respect_their_caps() {
    let mut run = build_run();
    run.input.evidence.file_max_bytes = 200;
    write_reports(&run.dir, &run.input).unwrap();
    let ev: Value =
        serde_json::from_slice(&std::fs::read(run.dir.evidence_dir().join("pc02.json")).unwrap())
            .unwrap();
    let omitted = ev["omitted"].as_array().unwrap();
    assert!(
        omitted
            .iter()
            .any(|o| o["path"].as_str().unwrap().ends_with("console.log")
                && o["reason"].as_str().unwrap().contains("per-file cap")),
        "{omitted:?}"
    );
    let archived = ev["archived"].as_array().unwrap();
    assert!(
        archived
            .iter()
            .all(|a| !a.as_str().unwrap().ends_with("console.log"))
    );
}

/// Every file in the run directory, and every entry of every archive in it.
fn all_contents(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            if p.extension().is_some_and(|x| x == "zip") {
                let mut z = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
                for i in 0..z.len() {
                    let mut entry = z.by_index(i).unwrap();
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content).unwrap();
                    out.push((format!("{}!{}", p.display(), entry.name()), content));
                }
            }
            out.push((p.display().to_string(), bytes));
        }
    }
    out
}

#[test]
fn no_secret_reaches_any_file_of_the_run_directory() {
    let run = build_run();
    write_reports(&run.dir, &run.input).unwrap();
    let files = all_contents(run.dir.root());
    assert!(
        files.len() >= 15,
        "expected a full run directory, got {}",
        files.len()
    );
    for secret in SECRETS {
        let spellings = [
            secret.to_string(),
            serde_json::to_string(secret)
                .unwrap()
                .trim_matches('"')
                .to_string(),
            tera::escape_html(secret),
            secret
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;"),
        ];
        for (name, bytes) in &files {
            for s in &spellings {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{name} contains the secret (as {s:?})"
                );
            }
        }
    }
    // The scrubbed places say so, so an engineer knows something was there.
    let console = std::fs::read(
        run.dir
            .case_path("preprovision[join=entra]@pc02")
            .join("console.log"),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&console).contains("typed password: [redacted]"));
}

#[test]
fn unreadable_event_lines_are_reported_not_fatal() {
    let run = build_run();
    let path = run.dir.events_path("preprovision[join=entra]@pc01");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"truncated\": \n\xff\xfe not json\n")
        .unwrap();
    let written = write_reports(&run.dir, &run.input).unwrap();
    assert!(
        written
            .warnings
            .iter()
            .any(|w| w.contains("2 event line(s)")),
        "{:?}",
        written.warnings
    );
}

#[test]
fn a_run_with_nothing_finished_still_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&tmp.path().join("ledger.sqlite")).unwrap();
    ledger.create_run("empty", "{}", T0_MS).unwrap();
    let dir = RunDir::create(&tmp.path().join("reports"), "empty", Redactor::default()).unwrap();
    let input =
        RunInput::from_ledger(&ledger, "empty", "lab", &[], SignatureBook::builtin(), 5).unwrap();
    let written = write_reports(&dir, &input).unwrap();
    let html = std::fs::read_to_string(&written.html).unwrap();
    assert!(html.contains("No case failed."));
    let xml = std::fs::read_to_string(&written.junit).unwrap();
    assert!(xml.contains("tests=\"0\""), "{xml}");

    // A case still pending on an unknown device: listed, not failed, model unknown.
    ledger
        .add_cases(&[case_record(
            "empty",
            "preprovision",
            "ghost",
            CaseStatus::Pending,
        )])
        .unwrap();
    let input =
        RunInput::from_ledger(&ledger, "empty", "lab", &[], SignatureBook::builtin(), 5).unwrap();
    let written = write_reports(&dir, &input).unwrap();
    let summary: Value = serde_json::from_slice(&std::fs::read(&written.summary).unwrap()).unwrap();
    assert_eq!(summary["totals"]["unfinished"], 1);
    assert_eq!(summary["cases"][0]["device"]["model"], "unknown model");
    assert_eq!(summary["grid"][0]["cells"][0]["state"], "other");
}
