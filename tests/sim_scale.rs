//! One lab process holds 200 devices, each with its own PTY console, CH9329 PTY, PiKVM
//! prefix and Redfish system, all powered on at once.

mod sim_support;

use std::time::Instant;

use sim_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_in_one_lab() {
    let names: Vec<String> = (1..=200).map(|i| format!("pc{i:03}")).collect();
    let devices = names
        .iter()
        .map(|id| (id.as_str(), DeviceOpts::default()))
        .collect();
    let rig = Rig::start(3000.0, devices, |_| {}).await;
    for id in &names {
        assert_eq!(rig.redfish_reset(id, "On").await, 204, "{id}");
    }
    // Every device boots to the first OOBE screen (read back over the control endpoint).
    let start = Instant::now();
    loop {
        let list: serde_json::Value = rig
            .http
            .get(rig.control("/devices"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = list["devices"].as_array().unwrap();
        assert_eq!(list.len(), 200);
        if list.iter().all(|d| d["screen"] == "region") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "not all devices booted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Spot-check the last device through its own PTYs and KVM.
    let console = ConsoleReader::open(&rig.path("devices/pc200/console"));
    let mut kb = Ch9329::open(&rig.path("devices/pc200/ch9329"));
    kb.windows_x5();
    rig.wait_screen("pc200", "What would you like to do?").await;
    console.wait_for("OOBE: screen=what-to-do").await;
    assert!(rig.path("devices/pc001/console").exists());
    rig.stop().await;
}
