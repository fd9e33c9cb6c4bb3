//! The nightly suite on a relocated copy of the shipped virtual lab, through the real
//! binary: every case passes, reports are written, and a second night on the same
//! devices passes too (the technician flow resets each device's tenant record first;
//! the devices refuse a re-enrollment with 0x80180014 otherwise).

mod lab_support;

use lab_support::TestLab;

const NIGHTLY: &[&str] = &[
    "health-check",
    "preprovision-e2e",
    "tpm-attestation",
    "negative-home-edition",
];

#[test]
fn the_nightly_suite_passes_twice_in_a_row_and_writes_reports() {
    let lab = TestLab::shipped(|t| t);
    for night in 1..=2 {
        let mut args = vec!["run"];
        args.extend_from_slice(NIGHTLY);
        let out = lab.aplab(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "night {night} failed:\n{stderr}"
        );
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.contains(" passed, "))
            .unwrap_or_default()
            .to_string();
        assert!(
            last.ends_with("0 failed, 0 skipped"),
            "night {night}: {last}"
        );
        let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
        // 7 health checks, 12 end-to-end cases (entra and hybrid on every device of the
        // right Windows version), 2 TPM attestations, 1 Home-edition refusal.
        assert_eq!(passed, 22, "night {night}: {last}");
    }
    let runs: Vec<_> = std::fs::read_dir(lab.reports())
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(runs.len(), 2);
    for run in runs {
        for file in ["junit.xml", "report.html", "summary.json"] {
            let path = run.path().join(file);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 500, "{} is missing or empty", path.display());
        }
    }
}
