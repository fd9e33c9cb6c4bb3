//! The virtual lab answers the clients a lab engineer would point at it: `curl` on the
//! Redfish BMC, the PiKVM API and the tenant's token endpoint, and a terminal (`socat`)
//! on a device's serial PTY. (OpenSSH's `ssh` and `tpm2_getcap` are in sim_ssh.rs and
//! sim_swtpm.rs.)

mod lab_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::TestLab;

fn port_of(inventory: &str, needle: &str) -> u16 {
    let at = inventory
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in the inventory"));
    inventory[at + needle.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_and_socat_drive_a_virtual_device() {
    let lab = TestLab::shipped(|t| t);
    let _running = lab.start_lab();
    let inventory = std::fs::read_to_string(&lab.inventory).unwrap();
    let redfish = port_of(&inventory, "redfish: { url: http://127.0.0.1:");
    let kvm = port_of(&inventory, "pikvm: { url: http://127.0.0.1:");
    let tenant = port_of(&inventory, "graph_url: http://127.0.0.1:");

    // A terminal on pc01's serial PTY, reading before the device is powered.
    let pty = lab.path("lab-state/devices/pc01/console");
    let mut socat = Command::new("socat")
        .args([
            "-u",
            &format!("FILE:{},raw,echo=0", pty.display()),
            "STDOUT",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is installed");

    // Redfish: off, reset On, read back On.
    let system = format!("http://127.0.0.1:{redfish}/redfish/v1/Systems/pc01");
    assert!(curl(&[&system]).contains(r#""PowerState":"Off""#));
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"ResetType":"On"}"#,
        &format!("{system}/Actions/ComputerSystem.Reset"),
    ]);
    assert!(curl(&[&system]).contains(r#""PowerState":"On""#));

    // The console shows the boot and the first OOBE screen to socat.
    let mut seen = Vec::new();
    let mut stdout = socat.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).contains("OOBE: screen=region") {
                break;
            }
        }
        seen
    });
    let seen = reader.join().unwrap();
    let _ = socat.kill();
    let _ = socat.wait();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("BIOS: Dell Inc. Latitude 7440"), "{text}");
    assert!(text.contains("OOBE: screen=region"), "{text}");

    // PiKVM: refused without credentials, OCR text of the region screen with them.
    let password = std::fs::read_to_string(lab.path("lab-state/secrets/pikvm")).unwrap();
    let ocr = format!("http://127.0.0.1:{kvm}/pc01/api/streamer/snapshot?ocr=1");
    let refused = curl(&["-o", "/dev/null", "-w", "%{http_code}", &ocr]);
    assert_eq!(refused, "401");
    let screen = curl(&[
        "-H",
        "X-KVMD-User: admin",
        "-H",
        &format!("X-KVMD-Passwd: {}", password.trim()),
        &ocr,
    ]);
    assert!(screen.to_lowercase().contains("region"), "{screen}");

    // The tenant's token endpoint: client credentials as Entra takes them.
    let secret =
        std::fs::read_to_string(lab.path("lab-state/secrets/contoso-client-secret")).unwrap();
    let token = curl(&[
        "-d",
        "client_id=0b7e6d3c-5a4f-4f21-8e9a-1c2d3e4f5a6b",
        "--data-urlencode",
        &format!("client_secret={}", secret.trim()),
        "--data-urlencode",
        &format!("scope=http://127.0.0.1:{tenant}/.default"),
        "-d",
        "grant_type=client_credentials",
        &format!(
            "http://127.0.0.1:{tenant}/6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11/oauth2/v2.0/token"
        ),
    ]);
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_in"].as_u64().unwrap() > 0);
    let bearer = token["access_token"].as_str().unwrap();
    let identities = curl(&[
        "-H",
        &format!("Authorization: Bearer {bearer}"),
        &format!(
            "http://127.0.0.1:{tenant}/beta/deviceManagement/windowsAutopilotDeviceIdentities?$filter=contains(serialNumber,'5CG1234AB1')"
        ),
    ]);
    assert!(
        identities.contains(r#""serialNumber":"5CG1234AB1""#),
        "{identities}"
    );
}
