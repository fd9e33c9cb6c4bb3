//! The two flows end to end, by raw protocol only: Redfish power, CH9329 frames on a PTY,
//! PiKVM keys / text / snapshots, the serial console on a PTY. Lab time runs fast
//! (scale 3000: 40 minutes of ESP pass in under a second).

mod sim_support;

use aplab::sim::enrollment::JoinKind;
use sim_support::*;

fn qr_payload(png_bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * 3]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the screen");
    grids[0].decode().unwrap().1
}

/// Drives a Windows 11 device from power-on to the configuration screen with CH9329.
async fn to_configuration_win11(rig: &Rig, kb: &mut Ch9329, id: &str) -> String {
    assert_eq!(rig.redfish_reset(id, "On").await, 204);
    rig.wait_screen(id, "Let's start with region").await;
    kb.windows_x5();
    let what = rig.wait_screen(id, "What would you like to do?").await;
    assert!(
        what.contains("(*) Pre-provision with Windows Autopilot"),
        "{what}"
    );
    kb.tap(0, hid::ENTER); // Next
    rig.wait_screen(id, "Pre-provision with Windows Autopilot")
        .await;
    kb.tap(0, hid::ENTER); // Next (focus starts on Next)
    rig.wait_screen(id, "Windows Autopilot Configuration").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_then_user_flow_entra_by_raw_protocols() {
    let mut ztd = String::new();
    let rig = Rig::start(3000.0, vec![("pc01", DeviceOpts::default())], |t| {
        ztd = t.register("SNpc01", JoinKind::Entra, Some("alice@contoso.lab"));
    })
    .await;
    let console = ConsoleReader::open(&rig.path("devices/pc01/console"));
    let mut kb = Ch9329::open(&rig.path("devices/pc01/ch9329"));

    assert_eq!(rig.power_state("pc01").await.1.as_deref(), Some("Off"));
    let config = to_configuration_win11(&rig, &mut kb, "pc01").await;
    assert!(
        config.contains("Profile: Contoso Pre-provisioning"),
        "{config}"
    );
    assert!(config.contains("Organization: Contoso Lab"), "{config}");
    assert!(config.contains("User: alice@contoso.lab"), "{config}");
    assert!(config.contains("[ Refresh ]  [ Provision ]"), "{config}");
    let png = rig
        .kvm_get("pc01", "/api/streamer/snapshot")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let qr: serde_json::Value = serde_json::from_str(&qr_payload(&png)).unwrap();
    assert_eq!(qr["ZtdId"], ztd.as_str());

    kb.tap(0, hid::ENTER); // Provision
    let text = console
        .wait_for("AUTOPILOT: preprovision result=success")
        .await;
    // Every ESP step of the technician flow, in order, and no account setup.
    let mut at = 0;
    for step in [
        "DevicePreparation: SecuringHardware start",
        "DevicePreparation: SecuringHardware done",
        "DevicePreparation: JoiningNetwork done",
        "DevicePreparation: RegisteringMdm done",
        "DevicePreparation: PreparingMdm done",
        "DeviceSetup: SecurityPolicies done",
        "DeviceSetup: Certificates done",
        "DeviceSetup: NetworkConnections done",
        "DeviceSetup: Apps done",
        "AUTOPILOT: preprovision result=success",
    ] {
        let found = text[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step} missing:\n{text}"));
        at += found;
    }
    assert!(!text.contains("AccountSetup"));
    // Latitude profile: 3+2+1.5+4+5+3+1+22 = 41.5 minutes of lab time.
    let line = text.lines().find(|l| l.contains("result=success")).unwrap();
    let secs = elapsed_secs(line);
    assert!(
        (2490..2490 + 600).contains(&secs),
        "elapsed {secs}s in {line}"
    );
    assert!(
        text.contains("] OOBE: screen=region"),
        "timestamped lines:\n{text}"
    );

    let success = rig.wait_screen("pc01", "pre-provisioning succeeded").await;
    assert!(success.contains("Elapsed time: "), "{success}");
    assert!(success.contains("[ Reseal ]"), "{success}");
    // Windows 11 shows no QR code on the success screen.
    kb.tap(0, hid::ENTER); // Reseal
    rig.wait_power("pc01", "Off").await;
    {
        let t = rig.tenant.lock().unwrap();
        assert!(t.records["SNpc01"].technician_completed_at.is_some());
    }

    // The end user unboxes it two hours later.
    rig.age("pc01", "2h").await;
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_screen("pc01", "Let's start with region").await;
    kb.tap(0, hid::ENTER); // region: Yes
    rig.wait_screen("pc01", "right keyboard layout").await;
    kb.tap(0, hid::ENTER); // keyboard: Yes
    rig.wait_screen("pc01", "second keyboard layout").await;
    kb.tap(0, hid::ENTER); // Skip
    rig.wait_screen("pc01", "connect you to a network").await;
    kb.tap(0, hid::ENTER); // Next
    let sign_in = rig.wait_screen("pc01", "Welcome to Contoso Lab!").await;
    assert!(sign_in.contains("Email, phone, or Skype:"), "{sign_in}");
    kb.type_text("alice@contoso.lab");
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "Enter password").await;
    // A wrong password keeps the user on the page.
    kb.type_text("wrong");
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "Your account or password is incorrect")
        .await;
    for _ in 0..5 {
        kb.tap(0, 0x2A); // Backspace
    }
    let password = rig.secret("alice-password");
    kb.type_text(&password);
    kb.tap(0, hid::ENTER);
    let text = console.wait_for("AUTOPILOT: userflow result=success").await;
    assert!(text.contains("AccountSetup: AccountApps done"), "{text}");
    let desktop = rig.wait_screen("pc01", "Desktop").await;
    assert!(
        desktop.contains("Signed in: alice@contoso.lab"),
        "{desktop}"
    );
    let snap = rig.snapshot("pc01").await;
    assert_eq!(snap["azure_ad_joined"], true);
    assert_eq!(snap["ztd_id"], ztd.as_str());
    {
        let t = rig.tenant.lock().unwrap();
        let r = &t.records["SNpc01"];
        assert!(r.user_flow_started_at.is_some() && r.user_flow_completed_at.is_some());
    }
    drop(console);
    drop(kb);
    rig.stop().await;
}
