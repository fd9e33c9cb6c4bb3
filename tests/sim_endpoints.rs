//! The lab's endpoints at the protocol level: CH9329 frames and error replies, PiKVM
//! auth, keys, text and snapshots, Redfish reset types, the control endpoint, keyboard
//! navigation quirks, a Windows 10 device driven only through PiKVM with a TCP console,
//! and a clean shutdown.

mod sim_support;

use std::io::Read;

use aplab::sim::enrollment::JoinKind;
use serde_json::json;
use sim_support::*;

fn entra(t: &mut TestTenant) {
    t.register("SNpc01", JoinKind::Entra, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ch9329_answers_like_the_chip() {
    let (rig, _console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    // GET_INFO while the PC is off: USB not enumerated.
    let info = kb.exchange(&ch9329_frame(0x01, &[]));
    assert_eq!(&info[..5], &[0x57, 0xAB, 0x00, 0x81, 0x08]);
    assert_eq!(info[6], 0, "USB not enumerated while off");
    // A corrupted checksum: error reply cmd|0xC0 with status 0xE4.
    let mut bad = ch9329_frame(0x02, &[0x08, 0, 0, 0, 0, 0, 0, 0]);
    *bad.last_mut().unwrap() = bad.last().unwrap().wrapping_add(1);
    assert_eq!(
        kb.exchange(&bad),
        vec![0x57, 0xAB, 0x00, 0xC2, 0x01, 0xE4, 0xA9]
    );
    // An unknown command: status 0xE3.
    let unknown = kb.exchange(&ch9329_frame(0x0F, &[]));
    assert_eq!(unknown[3], 0xCF);
    assert_eq!(unknown[5], 0xE3);
    // A keyboard report of the wrong length: status 0xE5.
    assert_eq!(kb.exchange(&ch9329_frame(0x02, &[0, 0, 4]))[5], 0xE5);
    // Garbage before a header is skipped.
    let mut noisy = vec![0x00, 0xFF, 0x57];
    noisy.extend(ch9329_frame(0x02, &[0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        kb.exchange(&noisy),
        vec![0x57, 0xAB, 0x00, 0x82, 0x01, 0x00, 0x85]
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_do_what_oobe_would_do() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_screen("pc01", "Let's start with region").await;
    // Typing a letter on the region list jumps to it; arrows move the selection.
    kb.type_text("g");
    rig.wait_screen("pc01", "(*) Germany").await;
    kb.tap(0, hid::UP);
    rig.wait_screen("pc01", "(*) United Kingdom").await;
    // Four Windows presses then something else: the count starts again.
    for _ in 0..4 {
        kb.tap(hid::LEFT_GUI, 0);
    }
    kb.tap(0, hid::DOWN);
    kb.tap(hid::LEFT_GUI, 0);
    let screen = rig.wait_screen("pc01", "(*) Germany").await;
    assert!(screen.contains("Let's start with region"), "{screen}");
    // Five in a row open the dialog; Escape closes it.
    kb.windows_x5();
    rig.wait_screen("pc01", "What would you like to do?").await;
    kb.tap(0, hid::ESCAPE);
    rig.wait_screen("pc01", "Let's start with region").await;
    // The provisioning-package option leads elsewhere; Cancel comes back.
    kb.windows_x5();
    rig.wait_screen("pc01", "What would you like to do?").await;
    kb.tap(0, hid::DOWN);
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "Insert removable media").await;
    kb.tap(0, hid::ENTER); // Cancel
    rig.wait_screen("pc01", "Let's start with region").await;
    // Past the first screen, the Windows key does nothing.
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "right keyboard layout").await;
    kb.windows_x5();
    kb.tap(0, hid::TAB); // focus to Yes
    kb.tap(0, hid::ENTER);
    rig.wait_screen("pc01", "second keyboard layout").await;
    let text = console.wait_for("OOBE: screen=second-keyboard").await;
    assert_eq!(text.matches("OOBE: windows key x5").count(), 2, "{text}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows10_through_pikvm_only_with_a_tcp_console() {
    let port = free_port();
    let opts = DeviceOpts {
        version: 10,
        pikvm_keyboard: true,
        tcp_console: Some(port),
        ..DeviceOpts::default()
    };
    let mut ztd = String::new();
    let rig = Rig::start(3000.0, vec![("pc01", opts)], |t| {
        ztd = t.register("SNpc01", JoinKind::Entra, None);
    })
    .await;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // ATX power through the KVM.
    let r = rig
        .kvm_post("pc01", "/api/atx/power?action=on")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let atx: serde_json::Value = rig
        .kvm_get("pc01", "/api/atx")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(atx["result"]["leds"]["power"], true, "{atx}");
    rig.wait_screen("pc01", "Let's start with region").await;
    for _ in 0..5 {
        for state in ["true", "false"] {
            let r = rig
                .kvm_post(
                    "pc01",
                    &format!("/api/hid/events/send_key?key=MetaLeft&state={state}"),
                )
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    }
    let what = rig.wait_screen("pc01", "What would you like to do?").await;
    assert!(
        what.contains("( ) Windows Autopilot provisioning"),
        "{what}"
    );
    assert!(what.contains("[ Continue ]"), "{what}");
    rig.key("pc01", "ArrowDown").await;
    rig.key("pc01", "Enter").await; // Continue: straight to the configuration screen
    rig.wait_screen("pc01", "Windows Autopilot Configuration")
        .await;
    rig.key("pc01", "Enter").await; // Provision
    let success = rig.wait_screen("pc01", "pre-provisioning succeeded").await;
    assert!(
        success.contains("Profile: Contoso Pre-provisioning"),
        "{success}"
    );
    // Windows 10 shows the QR code on the success screen too.
    let png = rig
        .kvm_get("pc01", "/api/streamer/snapshot")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png[..]));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * 3]);
    let grids = img.detect_grids();
    let payload: serde_json::Value = serde_json::from_str(&grids[0].decode().unwrap().1).unwrap();
    assert_eq!(payload["ZtdId"], ztd.as_str());
    rig.key("pc01", "Enter").await; // Reseal
    rig.wait_power("pc01", "Off").await;
    let text = tokio::task::spawn_blocking(move || {
        let mut s = stream;
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("POWER: off") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    })
    .await
    .unwrap();
    assert!(text.contains("WINDOWS: Windows 10 enterprise"), "{text}");
    assert!(
        text.contains("AUTOPILOT: preprovision result=success"),
        "{text}"
    );
    assert!(
        text.contains("POWER: shutting down reason=reseal"),
        "{text}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows10_failure_screen_offers_view_diagnostics() {
    let opts = DeviceOpts {
        version: 10,
        pikvm_keyboard: true,
        ..DeviceOpts::default()
    };
    let rig = Rig::start(3000.0, vec![("pc01", opts)], |_| {}).await;
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_screen("pc01", "Let's start with region").await;
    for _ in 0..5 {
        rig.key("pc01", "MetaLeft").await;
    }
    rig.wait_screen("pc01", "What would you like to do?").await;
    rig.key("pc01", "ArrowDown").await;
    rig.key("pc01", "Enter").await;
    // Not registered: nothing to show, and enrollment is refused.
    let config = rig
        .wait_screen("pc01", "Windows Autopilot Configuration")
        .await;
    assert!(config.contains("Profile: Not available"), "{config}");
    rig.key("pc01", "Enter").await;
    let failure = rig.wait_screen("pc01", "Error code:").await;
    assert!(failure.contains("Error code: 0x80180005"), "{failure}");
    assert!(
        failure.contains("[ View diagnostics ]  [ Reset ]  [ Retry ]"),
        "{failure}"
    );
    // Shift+Tab twice from Retry reaches View diagnostics.
    for _ in 0..2 {
        rig.key("pc01", "ShiftLeft").await;
        let r = rig
            .kvm_post("pc01", "/api/hid/events/send_key?key=ShiftLeft&state=true")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        rig.key("pc01", "Tab").await;
        let r = rig
            .kvm_post("pc01", "/api/hid/events/send_key?key=ShiftLeft&state=false")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    rig.key("pc01", "Enter").await;
    let diag = rig.wait_screen("pc01", "Diagnostics").await;
    assert!(diag.contains("Event 807"), "{diag}");
    // Reset wipes the device and restarts OOBE.
    rig.key("pc01", "Escape").await;
    rig.wait_screen("pc01", "pre-provisioning failed").await;
    rig.key("pc01", "ArrowLeft").await; // Retry -> Reset
    rig.key("pc01", "Enter").await;
    rig.wait_screen("pc01", "Let's start with region").await;
    assert_eq!(
        rig.snapshot("pc01").await["last_error"],
        serde_json::Value::Null
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pikvm_checks_credentials_and_reports_no_signal() {
    let (rig, _console, _kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    let url = format!(
        "http://127.0.0.1:{}/pc01/api/streamer/snapshot?ocr=1",
        rig.ports.pikvm
    );
    let r = rig
        .http
        .get(&url)
        .header("X-KVMD-User", "admin")
        .header("X-KVMD-Passwd", "not-the-password")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(rig.http.get(&url).send().await.unwrap().status(), 401);
    // Off: no video signal.
    let r = rig
        .kvm_get("pc01", "/api/streamer/snapshot")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = rig
        .kvm_post("pc01", "/api/hid/events/send_key?key=NoSuchKey")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = rig
        .kvm_post("pc01", "/api/atx/power?action=explode")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = rig.kvm_get("nope", "/api/atx").send().await.unwrap();
    assert_eq!(r.status(), 404);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pikvm_print_types_into_the_focused_box() {
    let opts = DeviceOpts {
        pikvm_keyboard: true,
        ..DeviceOpts::default()
    };
    let rig = Rig::start(3000.0, vec![("pc01", opts)], entra).await;
    let console = ConsoleReader::open(&rig.path("devices/pc01/console"));
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_screen("pc01", "Let's start with region").await;
    for _ in 0..3 {
        rig.key("pc01", "Enter").await;
    }
    rig.wait_screen("pc01", "connect you to a network").await;
    rig.key("pc01", "Enter").await;
    rig.wait_screen("pc01", "Sign in with your work or school account")
        .await;
    rig.print("pc01", "Alice@Contoso.lab\n").await;
    let screen = rig.wait_screen("pc01", "Enter password").await;
    assert!(screen.contains("Alice@Contoso.lab"), "{screen}");
    rig.print("pc01", "nope").await;
    let screen = rig.wait_screen("pc01", "Password: ****").await;
    assert!(!screen.contains("nope"), "secrets are masked: {screen}");
    rig.key("pc01", "Enter").await;
    rig.wait_screen("pc01", "Your account or password is incorrect")
        .await;
    console
        .wait_for("AUTH: entra sign-in failed user=Alice@Contoso.lab")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_reset_types_and_power_state() {
    let (rig, console, _kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    let base = format!("http://127.0.0.1:{}/redfish/v1", rig.ports.redfish);
    let systems: serde_json::Value = rig
        .http
        .get(format!("{base}/Systems"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        systems["Members"][0]["@odata.id"],
        "/redfish/v1/Systems/pc01"
    );
    assert_eq!(rig.redfish_reset("pc01", "Explode").await, 400);
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_power("pc01", "On").await;
    rig.wait_screen("pc01", "Let's start with region").await;
    assert_eq!(rig.redfish_reset("pc01", "ForceRestart").await, 204);
    rig.wait_screen("pc01", "Let's start with region").await;
    assert_eq!(rig.redfish_reset("pc01", "GracefulShutdown").await, 204);
    rig.wait_power("pc01", "Off").await;
    console
        .wait_for("POWER: shutting down reason=shutdown")
        .await;
    assert_eq!(rig.redfish_reset("pc01", "PowerCycle").await, 204);
    rig.wait_power("pc01", "On").await;
    assert_eq!(rig.redfish_reset("pc01", "ForceOff").await, 204);
    assert_eq!(rig.power_state("pc01").await.1.as_deref(), Some("Off"));
    let r = rig
        .http
        .get(format!("{base}/Systems/pc99"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoint_refuses_nonsense() {
    let (rig, _console, _kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    let post = |path: &str| rig.http.post(rig.control(path));
    // Nothing to age before a technician flow.
    assert_eq!(
        post("/devices/pc01/age?by=2h")
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        post("/devices/pc01/age?by=90")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("/devices/pc99/age?by=2h")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = post("/devices/pc01/faults")
        .json(&json!({"kind": "gremlins"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/devices/pc01/faults")
        .json(&json!({"kind": "slow_esp", "factor": -1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    rig.inject("pc01", json!({"kind": "ssh_refused_during_reboot"}))
        .await;
    let snap = rig.snapshot("pc01").await;
    assert_eq!(snap["ssh_refused_during_reboot"], true);
    let r = rig
        .http
        .delete(rig.control("/devices/pc01/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        rig.snapshot("pc01").await["ssh_refused_during_reboot"],
        false
    );
    let before: serde_json::Value = rig
        .http
        .get(rig.control("/clock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        post("/clock/advance?by=1d").send().await.unwrap().status(),
        204
    );
    let after: serde_json::Value = rig
        .http
        .get(rig.control("/clock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(after["now_secs"].as_f64().unwrap() - before["now_secs"].as_f64().unwrap() >= 86400.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_tracks_booting_and_rebooting_for_the_ssh_server() {
    // Real time: boot takes 75 lab seconds, long enough to observe.
    let (rig, _console, _kb) = one_device(10.0, DeviceOpts::default(), entra).await;
    let snap = rig.snapshot("pc01").await;
    assert_eq!(
        (snap["powered"].as_bool(), snap["booted"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    let snap = rig.snapshot("pc01").await;
    assert_eq!(snap["powered"], true);
    assert_eq!(snap["booted"], false);
    assert_eq!(snap["rebooting"], true);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_only_the_state_dir_and_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let rig = Rig::start(
        3000.0,
        vec![
            ("pc01", DeviceOpts::default()),
            ("pc02", DeviceOpts::default()),
        ],
        entra,
    )
    .await;
    let link = rig.path("devices/pc02/console");
    assert!(std::fs::symlink_metadata(&link).is_ok());
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.starts_with("/dev/pts"), "{}", target.display());
    let mode = std::fs::metadata(rig.path("secrets/alice-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let password = rig.secret("pikvm");
    assert!(password.len() >= 20);
    let dir = rig.dir.path().to_path_buf();
    let ports = (rig.ports.pikvm, rig.ports.redfish, rig.ports.control);
    let Rig {
        lab, dir: tempdir, ..
    } = rig;
    lab.unwrap().shutdown().await;
    assert!(std::fs::symlink_metadata(dir.join("devices/pc02/console")).is_err());
    assert!(std::fs::symlink_metadata(dir.join("devices/pc01/ch9329")).is_err());
    for port in [ports.0, ports.1, ports.2] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} released"
        );
    }
    drop(tempdir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rereads_the_profile_and_atx_click_powers() {
    let opts = DeviceOpts {
        version: 10,
        pikvm_keyboard: true,
        ..DeviceOpts::default()
    };
    let rig = Rig::start(3000.0, vec![("pc01", opts)], entra).await;
    let r = rig
        .kvm_post("pc01", "/api/atx/click?button=power")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    rig.wait_screen("pc01", "Let's start with region").await;
    for _ in 0..5 {
        rig.key("pc01", "MetaLeft").await;
    }
    rig.wait_screen("pc01", "What would you like to do?").await;
    rig.key("pc01", "ArrowDown").await;
    rig.key("pc01", "Enter").await;
    let config = rig
        .wait_screen("pc01", "Windows Autopilot Configuration")
        .await;
    assert!(config.contains("User: None"), "{config}");
    // The admin assigns a user in Intune; Refresh (Shift+Tab from Provision) shows it.
    rig.tenant
        .lock()
        .unwrap()
        .records
        .get_mut("SNpc01")
        .unwrap()
        .enrollment
        .assigned_user = Some("alice@contoso.lab".into());
    rig.key("pc01", "ArrowLeft").await;
    rig.key("pc01", "Enter").await;
    rig.wait_screen("pc01", "User: alice@contoso.lab").await;
    // A long press on power cuts it.
    let r = rig
        .kvm_post("pc01", "/api/atx/click?button=power_long")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    rig.wait_power("pc01", "Off").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_checks_basic_auth_when_the_inventory_gives_credentials() {
    let opts = DeviceOpts {
        redfish_auth: true,
        ..DeviceOpts::default()
    };
    let rig = Rig::start(3000.0, vec![("pc01", opts)], entra).await;
    let url = format!(
        "http://127.0.0.1:{}/redfish/v1/Systems/pc01",
        rig.ports.redfish
    );
    let r = rig.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = rig
        .http
        .get(&url)
        .basic_auth("root", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let password = rig.secret("bmc");
    let r = rig
        .http
        .post(format!("{url}/Actions/ComputerSystem.Reset"))
        .basic_auth("root", Some(&password))
        .json(&json!({"ResetType": "On"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let body: serde_json::Value = rig
        .http
        .get(&url)
        .basic_auth("root", Some(&password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["PowerState"], "On");
    rig.stop().await;
}
