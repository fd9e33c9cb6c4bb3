//! The model's public API on the shipped files: what other layers get from
//! `load_inventory` / `load_scenarios`, and `aplab validate` passing on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aplab::model::inventory::*;
use aplab::model::scenario::*;
use aplab::model::{
    case_context, inventory_from_str, load_inventory, load_scenarios, match_device, secret_ref,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> (Inventory, Vec<Scenario>) {
    let inv = load_inventory(&root().join("lab-inventory.yaml")).unwrap_or_else(|p| panic!("{p}"));
    let scenarios =
        load_scenarios(&[root().join("scenarios")], &inv).unwrap_or_else(|p| panic!("{p}"));
    (inv, scenarios)
}

fn scenario<'a>(all: &'a [Scenario], name: &str) -> &'a Scenario {
    all.iter().find(|s| s.name == name).expect(name)
}

fn case(pairs: &[(&str, &str)]) -> Case {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn validate_passes_on_the_shipped_files_with_a_one_line_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_aplab"))
        .arg("validate")
        .current_dir(root())
        .env_remove("APLAB_INVENTORY")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 8 scenarios (15 cases), 7 devices in lab-inventory.yaml\n"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn templates_are_merged_into_devices() {
    let (inv, _) = shipped();
    let base = std::path::absolute(root()).unwrap();
    let pc01 = inv.device("pc01").unwrap();
    assert_eq!(pc01.manufacturer, "Dell Inc.");
    assert_eq!(pc01.windows.edition, Edition::Enterprise);
    assert_eq!(pc01.windows.version, 11);
    assert_eq!(pc01.tenant.as_deref(), Some("contoso"));
    assert_eq!(
        pc01.tags.get("domain-reachable").map(String::as_str),
        Some("true")
    );
    assert_eq!(pc01.tags.get("site").map(String::as_str), Some("lab-a"));
    let shell = pc01.shell.as_ref().unwrap();
    assert_eq!(
        (shell.host.as_str(), shell.port, shell.user.as_str()),
        ("127.0.0.1", 17401, "labadmin")
    );
    assert_eq!(shell.key_file, base.join("lab-state/keys/aplab_ed25519"));
    assert_eq!(shell.host_key_policy, HostKeyPolicy::Strict);
    assert_eq!(shell.flavor, ShellFlavor::Powershell);
    let sim = pc01.sim.as_ref().unwrap();
    assert_eq!(sim.profile.as_deref(), Some("latitude-7440"));
    assert!(sim.domain_reachable && sim.registered && sim.allow_preprovisioning);
    assert!(!sim.esp_disabled && !sim.wlidsvc_disabled && sim.faults.is_empty());
    match pc01.power.as_ref().unwrap() {
        PowerConn::Redfish {
            url,
            system,
            verify_tls,
            ..
        } => {
            assert_eq!(
                (url.as_str(), system.as_str(), *verify_tls),
                ("http://127.0.0.1:17200", "pc01", true)
            );
        }
        other => panic!("pc01 power: {other:?}"),
    }
    match pc01.tpm_access.as_ref().unwrap() {
        TpmConn::Tcti(t) => assert_eq!(t, "swtpm:host=127.0.0.1,port=17501"),
        other => panic!("{other:?}"),
    }
    let pc03 = inv.device("pc03").unwrap();
    assert!(matches!(
        pc03.console,
        Some(ConsoleConn::Tcp { port: 17603, .. })
    ));
    assert!(matches!(pc03.keyboard, Some(KeyboardConn::Pikvm(_))));
    assert_eq!(inv.device("pc07").unwrap().windows.edition, Edition::Home);
    let virt = inv.lab.virtual_lab.as_ref().unwrap();
    assert_eq!(virt.time_scale, 600.0);
    assert_eq!(
        virt.control,
        Some(Endpoint {
            host: "127.0.0.1".into(),
            port: 17099
        })
    );
    assert_eq!(inv.lab.ledger, base.join("lab-state/ledger.sqlite"));
}

#[test]
fn faults_and_sim_defaults_are_read_as_documented() {
    let text = r#"
lab: { name: l, ledger: l.sqlite }
devices:
  - id: d1
    serial: S1
    manufacturer: M
    model: X
    windows: { edition: pro, version: 10 }
    sim:
      esp_disabled: true
      faults:
        - { attestation: timeout }
        - { attestation: { intermittent: 2 } }
        - { slow_esp: 3 }
        - { serial_drop: { after: 10m, down: 30s } }
        - { ssh_refused_during_reboot: true }
        - { power_fails: 2 }
        - { clock_skew: 2h }
        - { graph_throttle: 3 }
"#;
    let (inv, problems) = inventory_from_str(Path::new("inline.yaml"), text);
    let inv = inv.unwrap_or_else(|| panic!("{problems}"));
    let sim = inv.devices[0].sim.as_ref().unwrap();
    assert!(
        sim.esp_disabled && sim.registered && sim.allow_preprovisioning && !sim.domain_reachable
    );
    assert_eq!(
        sim.faults,
        vec![
            Fault::AttestationTimeout,
            Fault::AttestationIntermittent { failures: 2 },
            Fault::SlowEsp { factor: 3.0 },
            Fault::SerialDrop {
                after: Duration::from_secs(600),
                down: Duration::from_secs(30)
            },
            Fault::SshRefusedDuringReboot,
            Fault::PowerControllerFails { requests: 2 },
            Fault::ClockSkew {
                skew: Duration::from_secs(7200)
            },
            Fault::GraphThrottle { requests: 3 },
        ]
    );
}

#[test]
fn problems_print_file_line_col_source_caret_and_hint() {
    let text = "lab: { name: l, ledger: l.sqlite }\ndevices:\n  - id: d1\n    modle: X\n";
    let (inv, problems) = inventory_from_str(Path::new("inv.yaml"), text);
    assert!(inv.is_none());
    let shown = problems.to_string();
    assert!(
        shown.contains("inv.yaml:4:5: unknown key `modle` in a device\n  |\n4 |     modle: X\n  |     ^^^^^\n  = hint: did you mean `model`?\n"),
        "{shown}"
    );
    assert!(
        shown.contains("inv.yaml:3:5: device `d1` is missing `serial:`"),
        "{shown}"
    );
}

#[test]
fn blocks_expand_with_their_origin_and_use_site() {
    let (_, all) = shipped();
    let e2e = scenario(&all, "preprovision-e2e");
    assert_eq!(e2e.phases.len(), 2);
    let gap = e2e.phases[1].gap.as_ref().unwrap();
    assert_eq!(gap.min, Duration::from_secs(90 * 60));
    assert_eq!(gap.max, Some(Duration::from_secs(180 * 86_400)));
    assert_eq!(
        e2e.phases[0].expect_duration,
        Some(Duration::from_secs(45 * 60))
    );

    let tech = &e2e.phases[0].steps;
    let reset = &tech[0];
    assert!(matches!(
        reset.action,
        Action::Tenant(TenantOp::ResetRecord {
            method: ResetMethod::Delete
        })
    ));
    assert_eq!(reset.origin.block.as_deref(), Some("technician-flow"));
    assert!(
        reset
            .origin
            .file
            .ends_with("scenarios/blocks/technician-flow.yaml")
    );
    let used = reset.origin.used_at.as_ref().unwrap();
    assert!(used.file.ends_with("scenarios/preprovision-e2e.yaml"));
    assert_eq!(used.line, 21);

    // A block used inside a block remembers both places.
    let power_on = tech.iter().find(|s| s.name == "power on").unwrap();
    assert_eq!(power_on.origin.block.as_deref(), Some("factory-reset"));
    let inner = power_on.origin.used_at.as_ref().unwrap();
    assert_eq!(inner.block.as_deref(), Some("technician-flow"));
    assert!(
        inner
            .used_at
            .as_ref()
            .unwrap()
            .file
            .ends_with("scenarios/preprovision-e2e.yaml")
    );
    assert_eq!(power_on.retry.attempts, 3);
    assert_eq!(power_on.retry.on, vec![FailureClass::Infrastructure]);

    let keys = tech
        .iter()
        .find(|s| s.name == "open the provisioning menu")
        .unwrap();
    match &keys.action {
        Action::Keys(k) => assert_eq!(
            k,
            &vec![KeyPress {
                key: "MetaLeft".into(),
                modifiers: vec![],
                times: 5
            }]
        ),
        other => panic!("{other:?}"),
    }
    let win10 = tech
        .iter()
        .find(|s| s.name == "select it and press Continue")
        .unwrap();
    assert_eq!(win10.when, case(&[("windows", "10")]));

    let result = tech
        .iter()
        .find(|s| s.name == "provisioning succeeds")
        .unwrap();
    match &result.action {
        Action::Expect(e) => {
            assert_eq!(e.source, Source::Screen);
            assert_eq!(e.any_of[0].name, "success");
            assert_eq!(e.any_of[0].verdict, Verdict::Pass);
            assert!(
                matches!(&e.any_of[1].pattern, Pattern::Regex(r) if r == "(?P<code>0x[0-9A-F]{8})")
            );
            assert_eq!(e.any_of[1].verdict, Verdict::Fail(FailureClass::Product));
        }
        other => panic!("{other:?}"),
    }
    // Disabled steps of the block (the expected-failure path) are not there.
    assert!(
        !tech
            .iter()
            .any(|s| s.name == "provisioning fails with the expected code")
    );

    let user = &e2e.phases[1].steps;
    let password = user.iter().find(|s| s.name == "type the password").unwrap();
    match &password.action {
        Action::Text { text, secret } => {
            assert!(*secret);
            assert_eq!(
                text.secret_names(),
                vec!["tenant.users.default.password".to_string()]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(password.when, case(&[("join", "entra")]));
    let hybrid = user
        .iter()
        .find(|s| s.name == "join state (hybrid)")
        .unwrap();
    match &hybrid.action {
        Action::Shell(s) => {
            assert_eq!(s.program, "dsregcmd");
            assert_eq!(s.args, vec![Template("/status".into())]);
            assert_eq!(s.exit, Some(0));
            assert_eq!(s.expect.get("DomainJoined"), Some(&Template("YES".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn negative_scenarios_expect_the_failure_codes() {
    let (_, all) = shipped();
    let rerun = scenario(&all, "negative-rerun-without-reset");
    let again = &rerun.phases[1].steps;
    assert!(
        !again
            .iter()
            .any(|s| matches!(s.action, Action::Tenant(TenantOp::ResetRecord { .. })))
    );
    let expect = again
        .iter()
        .find(|s| s.name == "provisioning fails with the expected code")
        .unwrap();
    match &expect.action {
        Action::Expect(e) => {
            assert!(
                matches!(&e.any_of[0].pattern, Pattern::Regex(r) if r == "(?P<code>0x80180014)")
            );
            assert_eq!(e.any_of[0].verdict, Verdict::Pass);
            assert_eq!(e.any_of[1].verdict, Verdict::Fail(FailureClass::Product));
        }
        other => panic!("{other:?}"),
    }
    let soon = scenario(&all, "negative-user-too-soon");
    assert_eq!(
        soon.phases[1].gap.as_ref().unwrap().min,
        Duration::from_secs(600)
    );
    let home = scenario(&all, "negative-home-edition");
    assert!(home.phases[0].steps.iter().any(|s| matches!(&s.action,
        Action::Expect(e) if matches!(&e.any_of[0].pattern, Pattern::Regex(r) if r.contains("0x80180022")))));
}

#[test]
fn match_device_names_the_failing_requirement_or_capability() {
    let (inv, all) = shipped();
    let home = scenario(&all, "negative-home-edition");
    let c = case(&[("join", "entra"), ("windows", "11")]);
    assert!(match_device(home, &c, inv.device("pc07").unwrap()).is_ok());
    let err = match_device(home, &c, inv.device("pc01").unwrap()).unwrap_err();
    assert_eq!(
        err,
        "windows.edition is `enterprise`, the scenario needs `home`"
    );

    let e2e = scenario(&all, "preprovision-e2e");
    let win10 = case(&[("join", "hybrid"), ("windows", "10")]);
    assert!(match_device(e2e, &win10, inv.device("pc03").unwrap()).is_ok());
    let err = match_device(e2e, &win10, inv.device("pc01").unwrap()).unwrap_err();
    assert_eq!(err, "windows.version is `11`, the scenario needs `10`");

    let mut no_screen = inv.device("pc03").unwrap().clone();
    no_screen.screen = None;
    let err = match_device(e2e, &win10, &no_screen).unwrap_err();
    assert!(
        err.starts_with("has no screen connection, needed by step `menu shown`"),
        "{err}"
    );

    let mut no_dc = inv.device("pc03").unwrap().clone();
    no_dc.tags.remove("domain-reachable");
    let err = match_device(e2e, &win10, &no_dc).unwrap_err();
    assert_eq!(
        err,
        "tags.domain-reachable is absent, the scenario needs `true`"
    );
    let entra10 = case(&[("join", "entra"), ("windows", "10")]);
    assert!(match_device(e2e, &entra10, &no_dc).is_ok());
}

#[test]
fn case_context_renders_device_tenant_matrix_and_vars_but_no_secret() {
    let (inv, _) = shipped();
    let d = inv.device("pc05").unwrap();
    let tenant = inv.tenants.get("contoso");
    let mut vars = BTreeMap::new();
    vars.insert(
        "who".to_string(),
        Template("{{ tenant.users.default.upn }} on {{ device.id }}".into()),
    );
    let c = case(&[("join", "hybrid")]);
    let ctx = case_context(d, tenant, &c, &vars);
    let t = Template(
        "{{ vars.who }} {{ matrix.join }} {{ device.windows.edition }} {{ device.tags['domain-reachable'] }} {{ tenant.organization }}".into(),
    );
    assert_eq!(
        t.render(&ctx).unwrap(),
        "alice@contoso.lab on pc05 hybrid education true Contoso Lab"
    );
    let json = ctx.into_json().to_string();
    assert!(
        !json.contains("alice-password") && !json.contains("secrets"),
        "{json}"
    );

    let secret = Template::secret("tenant.users.default.password");
    assert!(secret.render(&case_context(d, tenant, &c, &vars)).is_err());
    match secret_ref("tenant.users.default.password", d, &inv).unwrap() {
        SecretRef::File(p) => assert!(p.ends_with("lab-state/secrets/alice-password")),
        other => panic!("{other:?}"),
    }
    assert!(
        secret_ref("tenant.users.bob.password", d, &inv)
            .unwrap_err()
            .contains("no user `bob`")
    );
}

#[test]
fn a_single_scenario_file_finds_the_blocks_beside_it() {
    let inv = load_inventory(&root().join("lab-inventory.yaml")).unwrap();
    let one: Vec<PathBuf> = vec![root().join("scenarios/technician-flow.yaml")];
    let loaded = load_scenarios(&one, &inv).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].cases().len(), 4);
}
