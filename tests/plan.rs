//! `aplab plan` on the shipped files: the JSON form (stable field names) and the text.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn plan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aplab"))
        .arg("plan")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env_remove("APLAB_INVENTORY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn scenario<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name} in the plan"))
}

#[test]
fn json_plan_lists_cases_devices_phases_gaps_and_durations() {
    let (code, stdout, stderr) = plan(&["--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["lab"], "virtual-lab");
    assert_eq!(plan["time_scale"], 600.0);
    assert_eq!(plan["scenarios"].as_array().unwrap().len(), 8);

    let e2e = scenario(&plan, "preprovision-e2e");
    assert_eq!(e2e["kind"], "test");
    assert_eq!(e2e["priority"], 20);
    assert_eq!(e2e["file"], "scenarios/preprovision-e2e.yaml");
    let cases = e2e["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    let hybrid10 = cases
        .iter()
        .find(|c| c["matrix"]["join"] == "hybrid" && c["matrix"]["windows"] == "10")
        .unwrap();
    assert_eq!(hybrid10["devices"], serde_json::json!(["pc03", "pc04"]));
    let excluded = hybrid10["excluded"].as_array().unwrap();
    assert_eq!(excluded.len(), 5);
    let pc07 = excluded.iter().find(|e| e["device"] == "pc07").unwrap();
    assert_eq!(
        pc07["reason"],
        "windows.edition is `home`, the scenario needs one of pro, enterprise, education"
    );
    let phases = hybrid10["phases"].as_array().unwrap();
    assert_eq!(phases[0]["name"], "technician");
    assert_eq!(phases[0]["gap_min_secs"], Value::Null);
    assert_eq!(phases[0]["estimate_secs"], 45 * 60);
    assert_eq!(phases[0]["estimate_basis"], "expect_duration");
    assert_eq!(phases[1]["name"], "user");
    assert_eq!(phases[1]["gap_min_secs"], 90 * 60);
    assert_eq!(phases[1]["gap_max_secs"], 180 * 86_400);
    // 45m technician + 90m gap + 35m user, and that divided by the time scale.
    assert_eq!(hybrid10["total_secs"], 170 * 60);
    assert_eq!(hybrid10["wall_secs"], 17);

    let home = scenario(&plan, "negative-home-edition");
    assert_eq!(home["cases"][0]["devices"], serde_json::json!(["pc07"]));

    // Without expect_duration the estimate is the sum of step timeouts.
    let health = scenario(&plan, "health-check");
    assert_eq!(health["kind"], "health");
    let phase = &health["cases"][0]["phases"][0];
    assert_eq!(phase["estimate_basis"], "step timeouts");
    assert_eq!(phase["steps"], 6);
    // power cycle 2m + console 10m + tpm 5m + tenant 2m + power off 1m (default) + read back 1m
    assert_eq!(phase["estimate_secs"], 21 * 60);
}

#[test]
fn text_plan_shows_each_case_on_its_devices() {
    let (code, stdout, stderr) = plan(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("lab virtual-lab (virtual, time scale 600: durations are lab time)\n")
    );
    assert!(stdout.contains(
        "  case join=entra, windows=10: on pc03, pc04\n    phase  technician    18 steps  ~45m (expect_duration)\n    gap    1h 30m .. 180d\n"
    ), "{stdout}");
    assert!(
        stdout.contains("    total  ~2h 50m, 17s wall\n"),
        "{stdout}"
    );
}

#[test]
fn plan_refuses_bad_input_with_exit_2() {
    let (code, stdout, stderr) = plan(&["tests/corpus/scenarios/power-typo.yaml"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with(
            "tests/corpus/scenarios/power-typo.yaml:5:16: `of` is not a valid `power`"
        ),
        "{stderr}"
    );
}
