//! Faults on demand, from the inventory's `sim.faults` or injected through the control
//! endpoint, acting on the device's state: TPM attestation, slow ESP, clock skew, a
//! failing power controller, a serial link that drops and comes back.

mod sim_support;

use std::io::Read;
use std::time::{Duration, Instant};

use aplab::model::inventory::Fault;
use aplab::sim::enrollment::JoinKind;
use serde_json::json;
use sim_support::*;

fn entra(t: &mut TestTenant) {
    t.register("SNpc01", JoinKind::Entra, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_timeout_fails_securing_hardware_0x800705b4() {
    let mut opts = DeviceOpts::default();
    opts.sim.faults = vec![Fault::AttestationTimeout];
    // Scale 600: the 20-minute hang lasts 2 s, long enough to watch the ESP screen.
    let (rig, console, mut kb) = one_device(600.0, opts, entra).await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let esp = rig
        .wait_screen("pc01", "Securing your hardware (Working on it...)")
        .await;
    assert!(esp.contains("Windows Autopilot pre-provisioning"), "{esp}");
    assert!(esp.contains("Device preparation"), "{esp}");
    assert!(esp.contains("  Apps (Waiting)"), "{esp}");
    assert!(!esp.contains("Account setup"), "{esp}");
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Step: Securing your hardware"), "{screen}");
    assert!(screen.contains("Error code: 0x800705B4"), "{screen}");
    assert!(screen.contains("[ Reset ]  [ Retry ]"), "{screen}");
    let text = console
        .wait_for("ESP: DevicePreparation: SecuringHardware failed 0x800705B4")
        .await;
    // It hung for the attestation timeout (20 lab minutes), not a moment.
    let line = text.lines().find(|l| l.contains("result=failure")).unwrap();
    let secs = elapsed_secs(line);
    assert!((20 * 60..35 * 60).contains(&secs), "{line}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_tpm_2_hangs_attestation_too() {
    let opts = DeviceOpts {
        tpm_family: Some("1.2"),
        ..DeviceOpts::default()
    };
    let (rig, console, mut kb) = one_device(3000.0, opts, entra).await;
    provision_win11(&rig, &mut kb, "pc01").await;
    console
        .wait_for("ESP: DevicePreparation: SecuringHardware failed 0x800705B4")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermittent_attestation_retries_then_succeeds() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    rig.inject(
        "pc01",
        json!({"kind": "attestation_intermittent", "failures": 2}),
    )
    .await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let text = console
        .wait_for("AUTOPILOT: preprovision result=success")
        .await;
    assert!(
        text.contains("SecuringHardware attempt 1 failed 0x81039001"),
        "{text}"
    );
    assert!(
        text.contains("SecuringHardware attempt 2 failed 0x81039001"),
        "{text}"
    );
    assert!(!text.contains("attempt 3 failed"), "{text}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_retries_exceeded_fails_0x81039001_and_retry_recovers() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    rig.inject(
        "pc01",
        json!({"kind": "attestation_intermittent", "failures": 3}),
    )
    .await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Error code: 0x81039001"), "{screen}");
    // Windows 11 hides diagnostics behind Ctrl+Shift+D.
    assert!(screen.contains("Press Ctrl+Shift+D"), "{screen}");
    kb.tap(0x01 | 0x02, 0x07); // Ctrl+Shift+D
    let diag = rig.wait_screen("pc01", "Diagnostics").await;
    assert!(diag.contains("Event 172"), "{diag}");
    assert!(diag.contains("[ Export logs ]"), "{diag}");
    kb.tap(0, hid::ESCAPE);
    rig.wait_screen("pc01", "pre-provisioning failed").await;
    // The TPM's trouble was transient: Retry (focused) goes through.
    kb.tap(0, hid::ENTER);
    let text = console
        .wait_for("AUTOPILOT: preprovision result=success")
        .await;
    assert!(text.contains("attempt 3 failed"), "{text}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_makes_the_esp_time_out() {
    let mut opts = DeviceOpts::default();
    opts.sim.faults = vec![Fault::ClockSkew {
        skew: Duration::from_secs(3600),
    }];
    let (rig, console, mut kb) = one_device(3000.0, opts, entra).await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let screen = rig.wait_screen("pc01", "Error code:").await;
    assert!(screen.contains("Step: Certificates"), "{screen}");
    assert!(screen.contains("Error code: 0x800705B4"), "{screen}");
    assert!(screen.contains("timed out"), "{screen}");
    let text = console
        .wait_for("ESP: DeviceSetup: Certificates failed 0x800705B4")
        .await;
    // The ESP gave up at its 60-minute timeout.
    let line = text.lines().find(|l| l.contains("result=failure")).unwrap();
    assert!(
        line.contains("elapsed=01:0") || line.contains("elapsed=00:59"),
        "{line}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_esp_runs_longer_and_times_out_when_too_slow() {
    let (rig, console, mut kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    rig.inject("pc01", json!({"kind": "slow_esp", "factor": 3.0}))
        .await;
    provision_win11(&rig, &mut kb, "pc01").await;
    let text = console
        .wait_for("AUTOPILOT: preprovision result=failure code=0x800705B4")
        .await;
    // Three times slower, the apps no longer fit in the hour.
    assert!(
        text.contains("DeviceSetup: Apps failed 0x800705B4"),
        "{text}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_controller_fails_n_requests_then_works() {
    let (rig, _console, _kb) = one_device(3000.0, DeviceOpts::default(), entra).await;
    rig.inject(
        "pc01",
        json!({"kind": "power_controller_fails", "requests": 3}),
    )
    .await;
    assert_eq!(rig.power_state("pc01").await.0, 500);
    assert_eq!(rig.redfish_reset("pc01", "On").await, 500);
    let atx = rig.kvm_get("pc01", "/api/atx").send().await.unwrap();
    assert_eq!(atx.status(), 500);
    // The failed request did nothing; the next ones work.
    assert_eq!(rig.power_state("pc01").await.1.as_deref(), Some("Off"));
    assert_eq!(rig.redfish_reset("pc01", "On").await, 204);
    rig.wait_power("pc01", "On").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_link_drops_and_comes_back() {
    let port = free_port();
    let mut opts = DeviceOpts {
        tcp_console: Some(port),
        ..DeviceOpts::default()
    };
    // Down from 5 to 20 lab minutes after boot: in the middle of the ESP.
    opts.sim.faults = vec![Fault::SerialDrop {
        after: Duration::from_secs(5 * 60),
        down: Duration::from_secs(15 * 60),
    }];
    // Scale 600: the OOBE navigation takes well under 5 lab minutes.
    let rig = Rig::start(600.0, vec![("pc01", opts)], entra).await;
    let mut kb = Ch9329::open(&rig.path("devices/pc01/ch9329"));
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = first.read_to_string(&mut text);
        text
    });
    provision_win11(&rig, &mut kb, "pc01").await;
    // The first connection is closed when the link drops.
    let before = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(before.contains("OOBE: screen=region"), "{before}");
    assert!(!before.contains("result=success"), "{before}");
    // Reconnect until the link is back, then read to the end of the flow.
    let after = tokio::task::spawn_blocking(move || reconnect_until_success(port))
        .await
        .unwrap();
    assert!(after.contains("AUTOPILOT: preprovision result=success"));
    // Lines printed while the link was down are lost.
    let all = format!("{before}{after}");
    let lost = [
        "SecuringHardware done",
        "JoiningNetwork done",
        "RegisteringMdm done",
        "PreparingMdm done",
        "SecurityPolicies done",
        "Certificates done",
        "NetworkConnections done",
    ]
    .iter()
    .filter(|l| !all.contains(*l))
    .count();
    assert!(lost > 0, "some lines are lost during the drop:\n{all}");
    rig.stop().await;
}

fn reconnect_until_success(port: u16) -> String {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "serial link never came back");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
            if text.contains("result=success") {
                break;
            }
        }
        if text.contains("result=success") {
            return text;
        }
        // Refused while down: poll again shortly (bounded by the deadline above).
        std::thread::sleep(Duration::from_millis(20));
    }
}
