//! What each action does and how its result is classified: negative outcomes, screen
//! polling, screen fields and QR, shell `Key : Value` checks, TPM, power read-back,
//! tenant operations, `when` and `continue_on_failure`.

mod engine_fixture;

use std::collections::BTreeMap;
use std::sync::Arc;

use aplab::device::*;
use aplab::engine::{self, CaseState, CaseVerdict, EventKind, PhaseStatus, StepStatus};
use aplab::model::scenario::*;
use engine_fixture::*;

fn failure_message(status: &StepStatus) -> (FailureClass, String) {
    match status {
        StepStatus::Failed { class, message, .. } => (*class, message.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn negative_scenario_passes_on_the_expected_failure_screen() {
    // The profile disallows pre-provisioning: the red screen with 0x80180005 is the pass.
    let wait = step(
        "red screen",
        expect(
            Source::Console,
            vec![
                outcome(
                    "green",
                    "Provisioning succeeded",
                    Verdict::Fail(FailureClass::Product),
                ),
                outcome("red", r"error (?P<code>0x[0-9A-F]{8})", Verdict::Pass),
            ],
        ),
    );
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![wait])]));
    let console = ScriptedConsole::new(
        bench.clock.clone(),
        &[(secs(40), "Pre-provisioning failed: error 0x80180005")],
        "/nonexistent".into(),
    );
    bench.handle.console = Some(Box::new(console));

    let result = engine::run_case(bench.run()).await;

    assert_eq!(result.verdict, CaseVerdict::Passed);
    assert_eq!(result.phases[0].steps[0].captures["code"], "0x80180005");
    let matched = bench.events.kinds().into_iter().find_map(|k| match k {
        EventKind::PatternMatched {
            outcome,
            passed,
            captures,
            source,
            ..
        } => Some((outcome, passed, captures, source)),
        _ => None,
    });
    let (outcome, passed, captures, source) = matched.expect("a PatternMatched event");
    assert_eq!(
        (outcome.as_str(), passed, source),
        ("red", true, Source::Console)
    );
    assert_eq!(captures["code"], "0x80180005");
}

#[tokio::test(start_paused = true)]
async fn screen_is_polled_until_an_outcome_shows_and_titles_are_reported() {
    let wait = step(
        "success screen",
        expect(
            Source::Screen,
            vec![
                outcome(
                    "success",
                    r"(?s)All set.*Elapsed time: (?P<elapsed>\S+)",
                    Verdict::Pass,
                ),
                outcome(
                    "failure",
                    r"error (?P<code>0x[0-9A-F]{8})",
                    Verdict::Fail(FailureClass::Product),
                ),
            ],
        ),
    );
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![wait])]));
    bench.options.screen_poll = secs(10);
    let screen = Arc::new(ScriptedScreen::new(
        bench.clock.clone(),
        &[
            (secs(0), "Securing your hardware\n0% complete"),
            (mins(2), "Joining your organization's network"),
            (
                mins(5),
                "\nAll set\nProfile: Contoso\nElapsed time: 00:05:00\n",
            ),
        ],
    ));
    bench.handle.screen = Some(Box::new(ArcScreen(screen.clone())));

    let result = engine::run_case(bench.run()).await;

    assert_eq!(result.verdict, CaseVerdict::Passed);
    let s = &result.phases[0].steps[0];
    assert_eq!(s.captures["elapsed"], "00:05:00");
    // Read every 10 s for the first two minutes (13 reads), then every twelfth of the
    // time waited so far: the success screen (up at 5:00) is seen within a twelfth of
    // the wait, after 25 reads instead of 31 at a fixed interval; never a busy loop.
    assert!(
        s.elapsed >= mins(5) && s.elapsed <= mins(5) + mins(5) / 12,
        "seen after {:?}",
        s.elapsed
    );
    assert_eq!(*screen.reads.lock().unwrap(), 25);
    let titles: Vec<String> = bench
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::DeviceStateSeen { what, value } if what == "screen title" => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(
        titles,
        [
            "Securing your hardware",
            "Joining your organization's network",
            "All set"
        ]
    );
}

/// Lets a test keep a handle on a screen the engine owns.
struct ArcScreen(Arc<ScriptedScreen>);

#[async_trait::async_trait]
impl Screen for ArcScreen {
    async fn text(&self) -> DeviceResult<String> {
        self.0.text().await
    }
    async fn snapshot(&self) -> DeviceResult<Vec<u8>> {
        self.0.snapshot().await
    }
}

#[tokio::test(start_paused = true)]
async fn screen_that_never_shows_an_outcome_is_a_timeout_naming_the_last_title() {
    let mut wait = step(
        "success screen",
        expect(
            Source::Screen,
            vec![outcome("success", "All set", Verdict::Pass)],
        ),
    );
    wait.timeout = Some(mins(20));
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![wait])]));
    bench.handle.screen = Some(Box::new(ScriptedScreen::new(
        bench.clock.clone(),
        &[(secs(0), "Securing your hardware")],
    )));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Timeout);
    assert!(
        message.contains("none of the outcomes (success)"),
        "{message}"
    );
    assert!(message.contains("Securing your hardware"), "{message}");
}

fn contoso_identity() -> AutopilotIdentity {
    AutopilotIdentity {
        id: "ztd-1234".into(),
        serial_number: "SN-0001".into(),
        enrollment_state: "enrolled".into(),
        deployment_profile_assignment_status: "pending".into(),
        user_principal_name: String::new(),
        managed_device_id: "00000000-0000-0000-0000-000000000000".into(),
        group_tag: String::new(),
    }
}

fn screen_check(fields: &[(&str, &str)], qr: &[(&str, &str)]) -> Action {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Template(v.to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    Action::ScreenCheck(ScreenCheck {
        fields: map(fields),
        qr: map(qr),
    })
}

const CONFIG_SCREEN: &str = "Windows Autopilot Configuration\n\
    Profile: Contoso Entra Pre-provisioning\n\
    Organization: Contoso Lab\n\
    User: alice@contoso.lab\n";

#[tokio::test(start_paused = true)]
async fn screen_fields_and_qr_are_checked_and_the_qr_is_matched_in_the_tenant() {
    let steps = vec![
        step(
            "configuration screen",
            screen_check(
                &[
                    ("profile", "Contoso Entra Pre-provisioning"),
                    ("ORGANIZATION", "{{ matrix.org }}"),
                    ("user", "alice@contoso.lab"),
                ],
                &[("ZtdId", "ztd-1234")],
            ),
        ),
        step("qr is this device", Action::Tenant(TenantOp::MatchQr)),
    ];
    let mut bench = Bench::new(scenario(vec![phase("technician", steps)]));
    bench.case.insert("org".into(), "Contoso Lab".into());
    bench.handle.screen = Some(Box::new(ScriptedScreen::new(
        bench.clock.clone(),
        &[(secs(0), CONFIG_SCREEN)],
    )));
    bench.handle.tenant = Some(Box::new(ScriptedTenant::new(contoso_identity())));
    bench.qr = Some(Arc::new(|png: &[u8]| {
        assert_eq!(png, b"\x89PNG fake");
        Ok(r#"{"ZtdId":"ztd-1234","Version":1}"#.to_string())
    }));

    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed, "{result:#?}");

    // A wrong organization and a QR code for another device are product failures that
    // say what was expected and what was seen.
    // The field check goes on to the QR check (`continue_on_failure`), which uses the QR
    // code read while checking the fields.
    let mut fields = step(
        "configuration screen",
        screen_check(&[("organization", "Fabrikam"), ("group", "x")], &[]),
    );
    fields.continue_on_failure = true;
    let steps = vec![
        fields,
        step("qr is this device", Action::Tenant(TenantOp::MatchQr)),
    ];
    let mut bench = Bench::new(scenario(vec![phase("technician", steps)]));
    bench.handle.screen = Some(Box::new(ScriptedScreen::new(
        bench.clock.clone(),
        &[(secs(0), CONFIG_SCREEN)],
    )));
    bench.handle.tenant = Some(Box::new(ScriptedTenant::new(contoso_identity())));
    bench.qr = Some(Arc::new(|_: &[u8]| {
        Ok(r#"{"ZtdId":"ztd-9999"}"#.to_string())
    }));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "the screen does not show what was expected: no `group:` field on the screen; \
         organization shows \"Contoso Lab\", expected \"Fabrikam\""
    );
    let (class, message) = failure_message(&result.phases[0].steps[1].status);
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "the QR code's ZtdId \"ztd-9999\" is not the Autopilot identity's id \"ztd-1234\""
    );
}

#[tokio::test(start_paused = true)]
async fn match_qr_without_an_earlier_qr_is_a_config_error_and_state_crosses_phases() {
    // Technician phase reads the QR; the user phase, run separately (as the fleet does
    // after parking the device), matches it using the saved case state.
    let technician = phase(
        "technician",
        vec![step(
            "config screen",
            screen_check(&[], &[("ZtdId", "ztd-1234")]),
        )],
    );
    let user = phase(
        "user",
        vec![step("qr matches", Action::Tenant(TenantOp::MatchQr))],
    );
    let mut bench = Bench::new(scenario(vec![technician, user]));
    bench.handle.screen = Some(Box::new(ScriptedScreen::new(bench.clock.clone(), &[])));
    bench.handle.tenant = Some(Box::new(ScriptedTenant::new(contoso_identity())));
    bench.qr = Some(Arc::new(|_: &[u8]| {
        Ok(r#"{"ZtdId":"ztd-1234"}"#.to_string())
    }));

    let run = bench.run();
    let mut fresh = CaseState::default();
    let result = engine::run_phase(&run, &mut fresh, "user").await.unwrap();
    let (class, message) = failure_message(&result.steps[0].status);
    assert_eq!(class, FailureClass::Config);
    assert!(message.contains("no QR code was read earlier"), "{message}");

    let mut state = CaseState::default();
    let t = engine::run_phase(&run, &mut state, "technician")
        .await
        .unwrap();
    assert_eq!(t.status, PhaseStatus::Passed);
    let saved = serde_json::to_string(&state).unwrap();
    let mut restored: CaseState = serde_json::from_str(&saved).unwrap();
    let u = engine::run_phase(&run, &mut restored, "user")
        .await
        .unwrap();
    assert_eq!(u.status, PhaseStatus::Passed);

    let err = engine::run_phase(&run, &mut restored, "cleanup")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "scenario `preprovision` has no phase `cleanup`; it has: technician, user"
    );
}

fn dsregcmd_step(expect: &[(&str, &str)]) -> Action {
    Action::Shell(ShellStep {
        program: "dsregcmd".into(),
        args: vec![Template("/status".into())],
        exit: Some(0),
        expect: expect
            .iter()
            .map(|(k, v)| (k.to_string(), Template(v.to_string())))
            .collect(),
        stdout_matches: vec![r"TenantId : \S+".into()],
    })
}

const DSREGCMD: &str = "\
+----------------------------------------------------------------------+
| Device State                                                         |
+----------------------------------------------------------------------+

             AzureAdJoined : YES
          EnterpriseJoined : NO
              DomainJoined : NO
                  TenantId : 7d5c1f2a
";

#[tokio::test(start_paused = true)]
async fn shell_key_value_expectations_show_expected_and_seen() {
    let steps = vec![
        step(
            "entra joined",
            dsregcmd_step(&[("AzureAdJoined", "YES"), ("DomainJoined", "NO")]),
        ),
        step(
            "hybrid joined",
            dsregcmd_step(&[("AzureAdJoined", "YES"), ("DomainJoined", "YES")]),
        ),
    ];
    let mut bench = Bench::new(scenario(vec![phase("user", steps)]));
    let shell = ScriptedShell::new(bench.clock.clone()).answer("dsregcmd", 0, DSREGCMD);
    bench.handle.shell = Some(Box::new(shell));
    let result = engine::run_case(bench.run()).await;

    assert_eq!(result.phases[0].steps[0].status, StepStatus::Passed);
    let (class, message) = failure_message(&result.phases[0].steps[1].status);
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "`dsregcmd`: DomainJoined is \"NO\", expected \"YES\""
    );
    let seen: Vec<(String, String)> = bench
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::DeviceStateSeen { what, value } => Some((what, value)),
            _ => None,
        })
        .collect();
    assert!(
        seen.contains(&("AzureAdJoined".into(), "YES".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("DomainJoined".into(), "NO".into())),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tpm_without_ek_certificate_is_a_product_failure_with_a_hint() {
    let check = step(
        "tpm",
        Action::Tpm(vec![
            TpmCheck::Family,
            TpmCheck::Manufacturer,
            TpmCheck::Firmware,
            TpmCheck::EkCertificate,
            TpmCheck::Attestation,
        ]),
    );
    let facts = TpmFacts {
        family: "2.0".into(),
        manufacturer: "IFX".into(),
        firmware: "7.85".into(),
        vendor: "SLB9670".into(),
    };
    let mut bench = Bench::new(scenario(vec![phase("preflight", vec![check.clone()])]));
    bench.handle.tpm = Some(Box::new(ScriptedTpm {
        facts: facts.clone(),
        ek: EkCertificate::Valid {
            issuer: "Infineon OPTIGA(TM) RSA Manufacturing CA 003".into(),
        },
    }));
    assert_eq!(
        engine::run_case(bench.run()).await.verdict,
        CaseVerdict::Passed
    );

    let mut bench = Bench::new(scenario(vec![phase("preflight", vec![check.clone()])]));
    bench.handle.tpm = Some(Box::new(ScriptedTpm {
        facts: facts.clone(),
        ek: EkCertificate::Missing,
    }));
    let result = engine::run_case(bench.run()).await;
    let StepStatus::Failed {
        class,
        message,
        hint,
        ..
    } = &result.phases[0].steps[0].status
    else {
        panic!()
    };
    assert_eq!(*class, FailureClass::Product);
    assert_eq!(
        message,
        "the TPM holds no EK certificate in NV; attestation will fail"
    );
    assert!(hint.as_deref().unwrap().contains("TPM vendor's URLs"));

    // A TPM from another vendor than the inventory says.
    let mut bench = Bench::new(scenario(vec![phase("preflight", vec![check])]));
    bench.handle.tpm = Some(Box::new(ScriptedTpm {
        facts: TpmFacts {
            manufacturer: "NTC".into(),
            ..facts
        },
        ek: EkCertificate::Missing,
    }));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "the TPM's manufacturer is \"NTC\", the inventory expects \"IFX\""
    );
}

#[tokio::test(start_paused = true)]
async fn power_read_back_decides_infrastructure_failures() {
    // A controller that claims off after `on`: the lab's fault, not the device's.
    let mut bench = Bench::new(scenario(vec![phase(
        "technician",
        vec![step("on", Action::Power(PowerAction::On))],
    )]));
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::StuckOff, 0)));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Infrastructure);
    assert_eq!(
        message,
        "after power on the controller reports the device off, expected on"
    );

    // A controller that cannot read back: the action passes, and the event says so; an
    // explicit state check is skipped with the reason rather than passed.
    let mut bench = Bench::new(scenario(vec![phase(
        "technician",
        vec![
            step("on", Action::Power(PowerAction::On)),
            step("is on", Action::Power(PowerAction::Expect(PowerState::On))),
        ],
    )]));
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::Unavailable, 0)));
    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed);
    assert_eq!(result.phases[0].steps[0].status, StepStatus::Passed);
    assert!(matches!(
        &result.phases[0].steps[1].status,
        StepStatus::Skipped { reason } if reason.contains("cannot read the state back")
    ));
    let unavailable = bench
        .events
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, EventKind::PowerReadBackUnavailable { reason } if reason == "pdudaemon cannot read outlet state"))
        .count();
    assert_eq!(unavailable, 2);

    // An honest controller: the state is seen.
    let mut bench = Bench::new(scenario(vec![phase(
        "technician",
        vec![step("cycle", Action::Power(PowerAction::Cycle))],
    )]));
    bench.handle.power = Some(Box::new(ScriptedPower::new(PowerReadBack::Honest, 0)));
    assert_eq!(
        engine::run_case(bench.run()).await.verdict,
        CaseVerdict::Passed
    );
    assert!(bench.events.kinds().iter().any(|k| matches!(
        k,
        EventKind::DeviceStateSeen { what, value } if what == "power" && value == "on"
    )));
}

#[tokio::test(start_paused = true)]
async fn tenant_ops_reset_tag_and_wait_for_the_profile() {
    let steps = vec![
        step(
            "reset",
            Action::Tenant(TenantOp::ResetRecord {
                method: ResetMethod::Delete,
            }),
        ),
        step(
            "tag",
            Action::Tenant(TenantOp::SetGroupTag {
                tag: Template("{{ matrix.join }}-lab".into()),
            }),
        ),
        step(
            "assign",
            Action::Tenant(TenantOp::AssignUser {
                user: Template("default".into()),
            }),
        ),
        step(
            "profile",
            Action::Tenant(TenantOp::WaitProfileAssigned { deadline: mins(30) }),
        ),
    ];
    let mut bench = Bench::new(scenario(vec![phase("prepare", steps)]));
    bench.case.insert("join".into(), "entra".into());
    bench.options.tenant_poll = mins(1);
    let tenant = Arc::new(ScriptedTenant::new(contoso_identity()));
    // Each identity read takes the next status: the first three are the reads of the
    // reset, tag and assign steps; the profile step then polls four times.
    *tenant.assignment.lock().unwrap() = [
        "notAssigned",
        "notAssigned",
        "notAssigned",
        "notAssigned",
        "pending",
        "pending",
        "assignedUnkownSyncState",
    ]
    .map(String::from)
    .into();
    bench.handle.tenant = Some(Box::new(ArcTenant(tenant.clone())));
    bench.tenant = Some(tenant_config());

    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed, "{result:#?}");
    // No managed device (all-zero id): allowNextEnrollment instead of a delete.
    assert_eq!(
        *tenant.calls.lock().unwrap(),
        [
            "allow ztd-1234",
            "tag ztd-1234 entra-lab",
            "assign ztd-1234 alice@contoso.lab"
        ]
    );
    // Three polls a minute apart before the assignment showed up.
    assert_eq!(result.phases[0].steps[3].elapsed, mins(3));

    // A profile that never gets assigned: a timeout naming the last status.
    let mut bench = Bench::new(scenario(vec![phase(
        "prepare",
        vec![step(
            "profile",
            Action::Tenant(TenantOp::WaitProfileAssigned { deadline: mins(10) }),
        )],
    )]));
    let tenant = ScriptedTenant::new(contoso_identity());
    *tenant.assignment.lock().unwrap() = ["notAssigned".to_string()].into();
    bench.handle.tenant = Some(Box::new(tenant));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Timeout);
    assert_eq!(
        message,
        "the deployment profile is still not assigned after 10m (status \"notAssigned\")"
    );
    assert_eq!(result.phases[0].steps[0].elapsed, mins(10));
}

struct ArcTenant(Arc<ScriptedTenant>);

#[async_trait::async_trait]
impl Tenant for ArcTenant {
    async fn identity(&self, serial: &str) -> DeviceResult<AutopilotIdentity> {
        self.0.identity(serial).await
    }
    async fn delete_managed_device(&self, id: &str) -> DeviceResult<()> {
        self.0.delete_managed_device(id).await
    }
    async fn allow_next_enrollment(&self, id: &str) -> DeviceResult<()> {
        self.0.allow_next_enrollment(id).await
    }
    async fn set_group_tag(&self, id: &str, tag: &str) -> DeviceResult<()> {
        self.0.set_group_tag(id, tag).await
    }
    async fn assign_user(&self, id: &str, upn: &str) -> DeviceResult<()> {
        self.0.assign_user(id, upn).await
    }
    async fn unassign_user(&self, id: &str) -> DeviceResult<()> {
        self.0.unassign_user(id).await
    }
    async fn compliance(&self, managed: &str) -> DeviceResult<String> {
        self.0.compliance(managed).await
    }
}

fn tenant_config() -> aplab::model::inventory::TenantConfig {
    use aplab::model::inventory::*;
    TenantConfig {
        name: "contoso".into(),
        tenant_id: "7d5c1f2a".into(),
        client_id: "app".into(),
        credential: Credential::ClientSecret(SecretRef::Env("APLAB_SECRET".into())),
        graph_url: "http://127.0.0.1:1".into(),
        login_url: "http://127.0.0.1:1".into(),
        users: [(
            "default".to_string(),
            TenantUser {
                upn: "alice@contoso.lab".into(),
                password: None,
                ad_account: None,
                ad_password: None,
            },
        )]
        .into(),
        organization: Some("Contoso Lab".into()),
        profile: None,
    }
}

#[tokio::test(start_paused = true)]
async fn when_filters_continue_on_failure_and_diagnostics_after_a_failure() {
    let mut hybrid_only = step("hybrid only", Action::Wait(Wait::Fixed(mins(1))));
    hybrid_only.when.insert("join".into(), "hybrid".into());
    let mut flaky = step("compliance", dsregcmd_step(&[("AzureAdJoined", "NO")]));
    flaky.continue_on_failure = true;
    let broken = step("joined", dsregcmd_step(&[("DomainJoined", "YES")]));
    let after = step("not run", Action::Wait(Wait::Fixed(mins(1))));
    let diagnostics = step("diagnostics", Action::Collect(vec![Diagnostic::Dsregcmd]));
    let steps = vec![hybrid_only, flaky, broken, after, diagnostics];
    let dir = tempfile::tempdir().unwrap();
    let mut bench = Bench::new(scenario(vec![phase("user", steps)]));
    bench.case.insert("join".into(), "entra".into());
    bench.handle.artifacts = dir.path().to_path_buf();
    let shell = ScriptedShell::new(bench.clock.clone()).answer("dsregcmd", 0, DSREGCMD);
    bench.handle.shell = Some(Box::new(shell));

    let result = engine::run_case(bench.run()).await;
    let steps = &result.phases[0].steps;
    assert!(
        matches!(&steps[0].status, StepStatus::Skipped { reason } if reason == "only for join=hybrid")
    );
    assert_eq!(steps[1].status.failure_class(), Some(FailureClass::Product));
    assert_eq!(steps[2].status.failure_class(), Some(FailureClass::Product));
    assert!(
        matches!(&steps[3].status, StepStatus::Skipped { reason } if reason == "step `joined` failed")
    );
    assert_eq!(steps[4].status, StepStatus::Passed);
    assert_eq!(result.tolerated_failures, 1);
    assert!(matches!(
        &result.verdict,
        CaseVerdict::Failed { step, class: FailureClass::Product, .. } if step == "joined"
    ));
    // The phase's stopping failure is the first non-tolerated one.
    let (class, message) = result.phases[0].failure().unwrap();
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "step `joined`: `dsregcmd`: DomainJoined is \"NO\", expected \"YES\""
    );
    let saved = dir.path().join("user/diagnostics/dsregcmd.txt");
    assert_eq!(std::fs::read_to_string(saved).unwrap(), DSREGCMD);
}

#[tokio::test(start_paused = true)]
async fn wait_until_repeats_a_check_and_reports_the_last_failure_at_its_deadline() {
    let until = |deadline| {
        step(
            "user assigned",
            Action::Wait(Wait::Until {
                check: Box::new(screen_check(&[("user", "alice@contoso.lab")], &[])),
                deadline,
                interval: mins(1),
            }),
        )
    };
    let screen = |clock| {
        ScriptedScreen::new(
            clock,
            &[
                (secs(0), "Profile: Contoso\nUser:\n"),
                (mins(5), "Profile: Contoso\nUser: alice@contoso.lab\n"),
            ],
        )
    };
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![until(mins(10))])]));
    bench.handle.screen = Some(Box::new(screen(bench.clock.clone())));
    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed);
    assert_eq!(result.phases[0].steps[0].elapsed, mins(5));

    let mut bench = Bench::new(scenario(vec![phase("technician", vec![until(mins(3))])]));
    bench.handle.screen = Some(Box::new(screen(bench.clock.clone())));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Timeout);
    assert_eq!(
        message,
        "still not passing after 3m (3 checks); last check: the screen does not show what \
         was expected: user shows \"\", expected \"alice@contoso.lab\""
    );
}

struct PanickingScreen;

#[async_trait::async_trait]
impl Screen for PanickingScreen {
    async fn text(&self) -> DeviceResult<String> {
        panic!("index out of bounds in the OCR parser")
    }
    async fn snapshot(&self) -> DeviceResult<Vec<u8>> {
        Ok(Vec::new())
    }
}

#[tokio::test(start_paused = true)]
async fn scenario_mistakes_are_config_and_our_bugs_are_harness() {
    let bad_regex = step(
        "bad regex",
        expect(
            Source::Console,
            vec![outcome("x", "(unclosed", Verdict::Pass)],
        ),
    );
    let no_keyboard = step(
        "keys",
        Action::Keys(vec![KeyPress {
            key: "MetaLeft".into(),
            modifiers: vec![],
            times: 5,
        }]),
    );
    let panics = step("screen", screen_check(&[("profile", "x")], &[]));
    let mut steps = vec![bad_regex, no_keyboard, panics];
    for s in &mut steps {
        s.continue_on_failure = true;
    }
    let mut bench = Bench::new(scenario(vec![phase("technician", steps)]));
    bench.handle.console = Some(Box::new(ScriptedConsole::new(
        bench.clock.clone(),
        &[],
        "/nonexistent".into(),
    )));
    bench.handle.keyboard = None;
    bench.handle.screen = Some(Box::new(PanickingScreen));
    let result = engine::run_case(bench.run()).await;
    let steps = &result.phases[0].steps;

    let (class, message) = failure_message(&steps[0].status);
    assert_eq!(class, FailureClass::Config);
    assert!(
        message.starts_with("outcome `x` has an invalid regular expression"),
        "{message}"
    );

    let StepStatus::Failed {
        class,
        message,
        hint,
        ..
    } = &steps[1].status
    else {
        panic!()
    };
    assert_eq!(*class, FailureClass::Config);
    assert_eq!(
        message,
        "device `pc01` has no keyboard connection, but step `keys` needs one"
    );
    assert_eq!(
        hint.as_deref(),
        Some(
            "add `keyboard` to the device in the inventory, or run the scenario on a device that has it"
        )
    );

    let (class, message) = failure_message(&steps[2].status);
    assert_eq!(class, FailureClass::Harness);
    assert_eq!(
        message,
        "aplab hit a bug while running this step: index out of bounds in the OCR parser"
    );
    assert_eq!(result.tolerated_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn a_template_mistake_is_a_config_failure_pointing_at_the_step() {
    let typed = step(
        "tag",
        Action::Text {
            text: Template("{{ matrix.nope }}".into()),
            secret: false,
        },
    );
    let mut bench = Bench::new(scenario(vec![phase("technician", vec![typed])]));
    bench.handle.keyboard = Some(Box::new(RecordingKeyboard::default()));
    let result = engine::run_case(bench.run()).await;
    let StepStatus::Failed {
        class,
        message,
        hint,
        ..
    } = &result.phases[0].steps[0].status
    else {
        panic!("{:?}", result.phases[0].steps[0].status)
    };
    assert_eq!(*class, FailureClass::Config);
    assert!(
        message.starts_with("cannot render `{{ matrix.nope }}`"),
        "{message}"
    );
    assert_eq!(
        hint.as_deref(),
        Some("check the templates of step `tag` (scenarios/test.yaml:7:5)")
    );
}

#[tokio::test(start_paused = true)]
async fn enrolled_device_record_is_deleted_and_compliance_is_awaited() {
    let steps = vec![
        step(
            "state",
            Action::Tenant(TenantOp::EnrollmentState {
                expect: vec!["enrolled".into()],
            }),
        ),
        step(
            "reset",
            Action::Tenant(TenantOp::ResetRecord {
                method: ResetMethod::Delete,
            }),
        ),
        step(
            "compliant",
            Action::Tenant(TenantOp::Compliance {
                expect: vec!["compliant".into(), "inGracePeriod".into()],
                deadline: mins(20),
            }),
        ),
    ];
    let mut bench = Bench::new(scenario(vec![phase("user", steps)]));
    bench.options.tenant_poll = mins(5);
    let tenant = Arc::new(ScriptedTenant::new(AutopilotIdentity {
        managed_device_id: "md-42".into(),
        ..contoso_identity()
    }));
    *tenant.compliance.lock().unwrap() = ["unknown", "noncompliant", "compliant"]
        .map(String::from)
        .into();
    bench.handle.tenant = Some(Box::new(ArcTenant(tenant.clone())));
    let result = engine::run_case(bench.run()).await;
    assert_eq!(result.verdict, CaseVerdict::Passed, "{result:#?}");
    assert_eq!(*tenant.calls.lock().unwrap(), ["delete md-42"]);
    assert_eq!(result.phases[0].steps[2].elapsed, mins(10));

    // Compliance that settles on the wrong state is a product failure at the deadline.
    let mut bench = Bench::new(scenario(vec![phase(
        "user",
        vec![step(
            "compliant",
            Action::Tenant(TenantOp::Compliance {
                expect: vec!["compliant".into()],
                deadline: mins(20),
            }),
        )],
    )]));
    bench.options.tenant_poll = mins(5);
    let tenant = ScriptedTenant::new(AutopilotIdentity {
        managed_device_id: "md-42".into(),
        ..contoso_identity()
    });
    *tenant.compliance.lock().unwrap() = ["noncompliant".to_string()].into();
    bench.handle.tenant = Some(Box::new(tenant));
    let result = engine::run_case(bench.run()).await;
    let (class, message) = failure_message(&result.phases[0].steps[0].status);
    assert_eq!(class, FailureClass::Product);
    assert_eq!(
        message,
        "complianceState is \"noncompliant\" after 20m, expected one of [\"compliant\"]"
    );
}

/// Progress lines and the event log show a step's templates rendered for the case, but
/// a template that calls `secret()` only as written.
#[tokio::test(start_paused = true)]
async fn step_descriptions_render_templates_but_never_secrets() {
    let steps = vec![
        step(
            "tag",
            Action::Tenant(TenantOp::SetGroupTag {
                tag: Template("{{ matrix.join }}-{{ device.id }}".into()),
            }),
        ),
        step(
            "password",
            Action::Text {
                text: Template("{{ secret(name=\"user-password\") }}".into()),
                secret: false,
            },
        ),
    ];
    let mut bench = Bench::new(scenario(vec![phase("technician", steps)]));
    bench.case.insert("join".into(), "hybrid".into());
    let tenant = Arc::new(ScriptedTenant::new(contoso_identity()));
    bench.handle.tenant = Some(Box::new(ArcTenant(tenant)));
    bench.handle.keyboard = Some(Box::new(RecordingKeyboard::default()));
    engine::run_case(bench.run()).await;
    let described: Vec<String> = bench
        .events
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::StepStarted { what, .. } => Some(what),
            _ => None,
        })
        .collect();
    assert_eq!(described[0], "tenant: set group tag `hybrid-pc01`");
    assert_eq!(
        described.last().unwrap(),
        "type `{{ secret(name=\"user-password\") }}`"
    );
}
