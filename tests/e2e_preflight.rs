//! `aplab run`'s tenant pre-flight and `--dry-run`, through the real binary on a
//! relocated copy of the shipped virtual lab: an unregistered device's cases are skipped
//! with the reason (the others run and pass); a dry-run prints the Graph calls with the
//! client secret redacted and powers nothing; a profile without pre-provisioning stops a
//! run that has nothing else to do, with exit 2.

mod lab_support;

use lab_support::TestLab;

/// The shipped lab with `sim` settings added to one device.
fn lab_with(serial: &str, sim: &str) -> TestLab {
    let (serial, sim) = (serial.to_string(), sim.to_string());
    TestLab::shipped(move |text| {
        let line = format!("    serial: {serial}\n");
        assert!(
            text.contains(&line),
            "the shipped lab has no device {serial}"
        );
        text.replace(&line, &format!("{line}    sim: {sim}\n"))
    })
}

#[test]
fn an_unregistered_device_has_its_cases_skipped_and_the_others_pass() {
    let lab = lab_with("5CG1234AB2", "{ registered: false }");
    let out = lab.aplab(&[
        "run",
        "technician-flow",
        "--matrix",
        "join=entra",
        "--device",
        "pc01",
        "--device",
        "pc02",
        "--no-health",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let problem = stderr
        .lines()
        .find(|l| l.starts_with("pre-flight: blocking: pc02:"))
        .unwrap_or_else(|| panic!("no pre-flight problem for pc02:\n{stderr}"));
    assert!(
        problem.contains("no Autopilot identity with serial 5CG1234AB2"),
        "{problem}"
    );
    assert!(
        stderr.contains("import the device's hardware hash"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pre-flight: blocking: pc01"),
        "pc01 is registered:\n{stderr}"
    );
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_default();
    assert_eq!(last, "1 passed, 0 failed, 1 skipped", "{stderr}");

    // The skip and its reason reach the reports.
    let junit = std::fs::read_to_string(lab.only_run_dir().join("junit.xml")).unwrap();
    let suite = junit
        .split("<testsuite ")
        .find(|s| s.starts_with(r#"name="technician-flow[join=entra,windows=11]@pc02""#))
        .unwrap_or_default();
    let skipped = suite.split("</testsuite>").next().unwrap_or_default();
    assert!(
        skipped.contains("<skipped") && skipped.contains("no Autopilot identity with serial"),
        "junit.xml does not record pc02's case as skipped with the reason:\n{junit}"
    );
}

/// The device's Redfish `PowerState`, from the relocated inventory's BMC URL.
fn power_state(lab: &TestLab, device: &str) -> String {
    let text = std::fs::read_to_string(&lab.inventory).unwrap();
    let re = regex::Regex::new(&format!(
        r"redfish: \{{ url: (http://127\.0\.0\.1:\d+), system: {device} \}}"
    ))
    .unwrap();
    let base = re.captures(&text).expect("device has a Redfish BMC")[1].to_string();
    let url = format!("{base}/redfish/v1/Systems/{device}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body: serde_json::Value = runtime.block_on(async {
        reqwest::get(&url)
            .await
            .expect("Redfish answers")
            .json()
            .await
            .expect("Redfish answers JSON")
    });
    body["PowerState"].as_str().unwrap_or_default().to_string()
}

#[test]
fn dry_run_prints_the_graph_calls_redacts_the_secret_and_powers_nothing() {
    let lab = TestLab::shipped(|t| t);
    let _up = lab.start_lab();
    let secret = std::fs::read_to_string(lab.path("lab-state/secrets/contoso-client-secret"))
        .expect("lab up wrote the tenant's client secret");
    let secret = secret.trim();
    assert!(secret.len() >= 8, "secret too short to test: {secret:?}");
    assert_eq!(power_state(&lab, "pc01"), "Off");

    let out = lab.aplab(&[
        "run",
        "technician-flow",
        "--matrix",
        "join=entra",
        "--device",
        "pc01",
        "--dry-run",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
    assert!(
        stderr.contains("pre-flight: checking 1 device(s) against tenant contoso"),
        "{stderr}"
    );
    // The token request once, secret redacted; then the technician flow's tenant steps:
    // reset the record, set the group tag, wait for the profile.
    assert_eq!(stdout.matches("oauth2/v2.0/token").count(), 1, "{stdout}");
    assert!(stdout.contains("client_secret=<redacted>"), "{stdout}");
    assert!(
        stdout.contains("# technician-flow[join=entra,windows=11]@pc01 (tenant contoso)"),
        "{stdout}"
    );
    for expected in [
        "$filter: contains(serialNumber,'5CG1234AB1')",
        "DELETE ",
        "/deviceManagement/managedDevices/",
        "/updateDeviceProperties",
        r#"body: {"groupTag":"entra"}"#,
        "Authorization: Bearer <redacted>",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // Nothing was powered, and no run was recorded.
    assert_eq!(power_state(&lab, "pc01"), "Off");
    assert!(
        !lab.reports().exists() || std::fs::read_dir(lab.reports()).unwrap().next().is_none(),
        "a dry-run wrote a run directory"
    );

    // Credentials that no longer work (the tenant keeps the secret it was given): the
    // run stops with exit 2 before anything is powered, and says what to check.
    let secret_file = lab.path("lab-state/secrets/contoso-client-secret");
    std::fs::write(&secret_file, "not-the-secret-0000").unwrap();
    let out = lab.aplab(&[
        "run",
        "technician-flow",
        "--matrix",
        "join=entra",
        "--device",
        "pc01",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pre-flight: tenant contoso: the credentials do not work"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret-0000"), "{stderr}");
    assert_eq!(power_state(&lab, "pc01"), "Off");
}

#[test]
fn a_profile_without_pre_provisioning_leaves_nothing_to_run_exit_2() {
    let lab = lab_with("5CG1234AB1", "{ allow_preprovisioning: false }");
    // The dry-run starts the virtual lab itself (for the pre-flight) and stops it.
    let out = lab.aplab(&[
        "run",
        "technician-flow",
        "--matrix",
        "join=entra",
        "--device",
        "pc01",
        "--dry-run",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let problem = stderr
        .lines()
        .find(|l| l.starts_with("pre-flight: blocking: pc01:"))
        .unwrap_or_else(|| panic!("no pre-flight problem for pc01:\n{stderr}"));
    assert!(
        problem.contains("does not allow pre-provisioning") && problem.contains("0x80180005"),
        "{problem}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped (pre-flight: pc01:"), "{stdout}");
}
