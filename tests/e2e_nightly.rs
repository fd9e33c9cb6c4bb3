//! The nightly suite on a relocated copy of the shipped virtual lab, through the real
//! binary, with the lab up the whole time as a lab host keeps it (so the devices and the
//! tenant remember every night): every case passes, reports are written and read by a CI server's JUnit
//! parser, no secret of the lab appears in any file of a run, a second night on the same
//! devices passes too (the technician flow resets each device's tenant record first;
//! the devices refuse a re-enrollment with 0x80180014 otherwise), and the standalone
//! technician-flow and user-flow scenarios follow each other on one device.

mod lab_support;

use std::path::{Path, PathBuf};

use lab_support::TestLab;

const NIGHTLY: &[&str] = &[
    "health-check",
    "preprovision-e2e",
    "tpm-attestation",
    "negative-home-edition",
];

/// The last `N passed, N failed, N skipped` line of a run's stderr.
fn summary_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_default()
        .to_string()
}

fn run_ok(lab: &TestLab, args: &[&str]) -> String {
    let out = lab.aplab(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "aplab {args:?} failed:\n{stderr}"
    );
    summary_line(&stderr)
}

#[test]
fn the_nightly_suite_passes_twice_in_a_row_and_writes_reports() {
    let lab = TestLab::shipped(|t| t);
    let _running = lab.start_lab();
    for night in 1..=2 {
        let mut args = vec!["run", "--no-lab"];
        args.extend_from_slice(NIGHTLY);
        let last = run_ok(&lab, &args);
        // 7 health checks, 12 end-to-end cases (entra and hybrid on every device of the
        // right Windows version), 2 TPM attestations, 1 Home-edition refusal.
        assert_eq!(last, "22 passed, 0 failed, 0 skipped", "night {night}");
    }

    // The standalone flows: the user flow waits out the rest of the 90 minutes after
    // the technician flow's reseal (the device itself fails it if it starts sooner).
    let one = [
        "--device",
        "pc05",
        "--matrix",
        "join=hybrid",
        "--no-health",
        "--no-lab",
    ];
    let last = run_ok(&lab, &[&["run", "technician-flow"][..], &one[..]].concat());
    assert_eq!(last, "1 passed, 0 failed, 0 skipped");
    let last = run_ok(&lab, &[&["run", "user-flow"][..], &one[..]].concat());
    assert_eq!(last, "1 passed, 0 failed, 0 skipped");

    let runs: Vec<PathBuf> = std::fs::read_dir(lab.reports())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(runs.len(), 4);
    for run in &runs {
        for file in ["junit.xml", "report.html", "summary.json"] {
            let path = run.join(file);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 500, "{} is missing or empty", path.display());
        }
    }
    junit_reads_back_in_junitparser(&runs);
    no_secret_in_any_file(&lab, &runs);
}

/// Python's junitparser, as CI servers' plugins read JUnit, takes every run's file.
fn junit_reads_back_in_junitparser(runs: &[PathBuf]) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/pytools-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test`",
        python.display()
    );
    let script = r#"
import sys
from junitparser import JUnitXml
suites = tests = failures = 0
for path in sys.argv[1:]:
    xml = JUnitXml.fromfile(path)
    for suite in xml:
        suites += 1
        for case in suite:
            tests += 1
            failures += sum(1 for r in case.result if r.__class__.__name__ in ("Failure", "Error"))
print(suites, tests, failures)
"#;
    let files: Vec<PathBuf> = runs.iter().map(|r| r.join("junit.xml")).collect();
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "junitparser refused a file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<usize> = stdout
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    // A suite per case: 22 + 22 + 1 + 1; testcases per phase and check; none failed.
    assert_eq!(counts[0], 46, "{stdout}");
    assert!(counts[1] > counts[0], "{stdout}");
    assert_eq!(counts[2], 0, "{stdout}");
}

/// The lab's secrets (tenant client secret, user passwords, KVM password) are typed and
/// sent during the runs; none may be written anywhere in a run directory.
fn no_secret_in_any_file(lab: &TestLab, runs: &[PathBuf]) {
    let secrets: Vec<String> = std::fs::read_dir(lab.path("lab-state/secrets"))
        .expect("the lab writes its secrets under lab-state/secrets")
        .filter_map(|e| e.ok())
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim_end()
                .to_string()
        })
        .filter(|s| s.len() >= 8)
        .collect();
    assert!(
        secrets.len() >= 3,
        "expected the lab's secrets, found {}",
        secrets.len()
    );
    let mut files = Vec::new();
    for run in runs {
        walk(run, &mut files);
    }
    assert!(files.len() > 50);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let mut texts = vec![String::from_utf8_lossy(&bytes).into_owned()];
        if file.extension().is_some_and(|e| e == "zip") {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).unwrap();
                let mut inner = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut inner).unwrap();
                texts.push(String::from_utf8_lossy(&inner).into_owned());
            }
        }
        for secret in &secrets {
            assert!(
                !texts.iter().any(|t| t.contains(secret.as_str())),
                "a secret appears in {}",
                file.display()
            );
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}
