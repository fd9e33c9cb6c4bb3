//! The process's rules, enforced by the simulated devices themselves: the 90-minute and
//! 6-month gaps, re-running the technician flow, Home edition, ESP disabled, wlidsvc,
//! hybrid join with and without a domain controller.

mod sim_support;

use aplab::model::inventory::Edition;
use aplab::sim::enrollment::JoinKind;
use sim_support::*;

fn entra(t: &mut TestTenant) {
    t.register("SNpc01", JoinKind::Entra, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flow_sooner_than_90_minutes_fails_with_the_token_error() {
    // Scale 600: 90 minutes of lab time are 9 s of wall time, ample for the quick path.
    let (rig, console, mut kb) = one_device(600.0, DeviceOpts::default(), entra).await;
    technician_success(&rig, &mut kb, "pc01").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    entra_sign_in(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0xCAA5001C"), "{screen}");
    assert!(screen.contains("less than 90 minutes"), "{screen}");
    let text = console
        .wait_for("AUTOPILOT: userflow result=failure code=0xCAA5001C")
        .await;
    assert!(text.contains("ESP: AccountSetup: AccountPolicies failed 0xCAA5001C"));
    // Waiting out the 90 minutes and pressing Retry (focused) gets through.
    rig.age("pc01", "2h").await;
    kb.tap(0, hid::ENTER);
    console.wait_for("AUTOPILOT: userflow result=success").await;
    rig.wait_screen("pc01", "Signed in: alice@contoso.lab")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flow_after_more_than_six_months_fails_ime_detection() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    technician_success(&rig, &mut kb, "pc01").await;
    rig.age("pc01", "200d").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    entra_sign_in(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0x87D1041C"), "{screen}");
    let text = console.wait_for("detection state: NotComputed").await;
    assert!(
        text.contains("[Win32App][DetectionActionHandler] Detection for policy with id: ztd-SNpc01-0001 resulted in action status: Failed"),
        "{text}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flow_between_90_minutes_and_6_months_succeeds() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    technician_success(&rig, &mut kb, "pc01").await;
    rig.age("pc01", "150d").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    entra_sign_in(&rig, &mut kb, "pc01").await;
    console.wait_for("AUTOPILOT: userflow result=success").await;
    rig.wait_screen("pc01", "Signed in: alice@contoso.lab")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_the_technician_flow_is_blocked_until_the_record_is_deleted() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    technician_success(&rig, &mut kb, "pc01").await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0x80180014"), "{screen}");
    assert!(
        screen.contains("Registering your device for mobile management"),
        "{screen}"
    );
    console
        .wait_for("ESP: DevicePreparation: RegisteringMdm failed 0x80180014")
        .await;
    // The admin deletes the Intune record; Retry (focused) now enrolls.
    rig.tenant
        .lock()
        .unwrap()
        .records
        .get_mut("SNpc01")
        .unwrap()
        .enrolled = false;
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "pre-provisioning succeeded").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_edition_fails_enrollment_0x80180022() {
    let opts = DeviceOpts {
        edition: Edition::Home,
        ..DeviceOpts::default()
    };
    let (rig, console, mut kb) = one_device(3000.0, opts, entra).await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0x80180022"), "{screen}");
    assert!(
        screen.contains("Windows Autopilot pre-provisioning failed"),
        "{screen}"
    );
    console
        .wait_for("AUTOPILOT: preprovision result=failure code=0x80180022")
        .await;
    // The tenant was never asked: the device refused before enrolling.
    assert!(!rig.tenant.lock().unwrap().records["SNpc01"].enrolled);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esp_disabled_offers_reseal_before_apps_finish() {
    let (rig, console, mut kb) = one_device(600.0, DeviceOpts::default(), |t| {
        t.register("SNpc01", JoinKind::Entra, None);
        t.records.get_mut("SNpc01").unwrap().enrollment.esp_enabled = false;
    })
    .await;
    provision_win11(&rig, &mut kb, "pc01").await;
    rig.wait_screen("pc01", "pre-provisioning succeeded").await;
    let snap = rig.snapshot("pc01").await;
    assert_eq!(snap["apps_pending"], true, "{snap}");
    let text = console
        .wait_for("AUTOPILOT: preprovision result=success")
        .await;
    assert!(!text.contains("DeviceSetup: Apps done"), "{text}");
    // Reseal now: the apps never finish.
    kb.tap(0, hid::ENTER);
    rig.wait_power("pc01", "Off").await;
    assert_eq!(rig.snapshot("pc01").await["apps_pending"], true);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wlidsvc_disabled_asks_for_a_local_account() {
    let mut opts = DeviceOpts::default();
    opts.sim.wlidsvc_disabled = true;
    let (rig, console, mut kb) = one_device(3000.0, opts, entra).await;
    technician_success(&rig, &mut kb, "pc01").await;
    assert_eq!(rig.snapshot("pc01").await["wlidsvc_disabled"], true);
    rig.age("pc01", "2h").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    let screen = rig
        .wait_screen("pc01", "Who's going to use this device?")
        .await;
    assert!(!screen.contains("work or school account"), "{screen}");
    console
        .wait_for("AUTH: wlidsvc disabled, Entra sign-in unavailable")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_join_reboots_then_signs_in_with_active_directory() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), |t| {
        t.register("SNpc01", JoinKind::Hybrid, None);
    })
    .await;
    technician_success(&rig, &mut kb, "pc01").await;
    let text = console.text();
    assert!(
        rig.snapshot("pc01").await["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == 107),
        "offline domain join event 107 recorded; console:\n{text}"
    );
    rig.age("pc01", "2h").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    console
        .wait_for("POWER: restarting reason=hybrid-join")
        .await;
    rig.wait_screen("pc01", "Sign in with your Active Directory account")
        .await;
    kb.type_text("CONTOSO\\alice");
    kb.tap(0, hid::TAB);
    kb.type_text(&rig.secret("alice-ad-password"));
    kb.tap(0, hid::ENTER);
    console.wait_for("AUTOPILOT: userflow result=success").await;
    let snap = rig.snapshot("pc01").await;
    assert_eq!(snap["domain_joined"], true, "{snap}");
    assert_eq!(snap["azure_ad_joined"], true, "{snap}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_join_without_a_domain_controller_fails_0x80070774() {
    let mut opts = DeviceOpts::default();
    opts.sim.domain_reachable = false;
    let (rig, console, mut kb) = one_device(3000.0, opts, |t| {
        t.register("SNpc01", JoinKind::Hybrid, None);
    })
    .await;
    // The technician flow does not need the domain: the reboot is postponed.
    technician_success(&rig, &mut kb, "pc01").await;
    rig.age("pc01", "2h").await;
    user_flow_to_sign_in(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0x80070774"), "{screen}");
    console
        .wait_for("ESP: DevicePreparation: JoiningNetwork failed 0x80070774")
        .await;
    rig.stop().await;
}
