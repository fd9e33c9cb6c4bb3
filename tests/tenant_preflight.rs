//! Pre-flight against the virtual tenant, and the dry-run that prints Graph calls
//! without sending them.

mod tenant_lab;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aplab::device::tenant::preflight::{Problem, Target, preflight};
use aplab::device::tenant::{DryRunTenant, Poll, Unblock, unblock_reenrollment};
use aplab::device::{FailureClass, Tenant};
use aplab::sim::tenant::{Settings, TenantView};
use tenant_lab::*;

fn targets(lab: &TestLab) -> Vec<Target> {
    lab.inventory.devices.iter().map(Target::from).collect()
}

fn of<'a>(problems: &'a [Problem], device: &str) -> Vec<&'a Problem> {
    problems.iter().filter(|p| p.device == device).collect()
}

#[tokio::test]
async fn preflight_reports_each_devices_problems() {
    let devices = vec![
        device("good", "GOOD01"),
        with_sim(device("unreg", "UNREG1"), |s| s.registered = false),
        with_sim(device("nowg", "NOWG01"), |s| {
            s.allow_preprovisioning = false
        }),
        tagged(device("kiosk", "KIOSK1"), "kiosk"),
        tagged(device("hyb", "HYB001"), "hybrid"),
        device("placeholder", "To be filled by O.E.M."),
        device("used", "USED01"),
    ];
    let lab = TestLab::start(devices, 1.0, Settings::default()).await;
    let mut view = lab.sim.clone();
    view.technician_completed("USED01", lab.sim.clock().now());
    let graph = lab.graph();

    let problems = preflight(
        &graph,
        &targets(&lab),
        Some("Contoso Entra Pre-provisioning"),
    )
    .await;

    assert!(of(&problems, "good").is_empty(), "{problems:#?}");
    let unreg = of(&problems, "unreg");
    assert_eq!(unreg.len(), 1);
    assert!(unreg[0].blocking && unreg[0].class == FailureClass::Config);
    assert!(unreg[0].hint.as_deref().unwrap().contains("hardware hash"));
    let nowg = of(&problems, "nowg");
    assert_eq!(nowg.len(), 1);
    assert_eq!(nowg[0].code.as_deref(), Some("0x80180005"));
    let kiosk = of(&problems, "kiosk");
    assert_eq!(kiosk.len(), 1);
    assert_eq!(kiosk[0].code.as_deref(), Some("notAssigned"));
    let hyb = of(&problems, "hyb");
    assert_eq!(hyb.len(), 1);
    assert!(
        hyb[0].message.contains("Contoso Hybrid Pre-provisioning"),
        "{}",
        hyb[0].message
    );
    let placeholder = of(&problems, "placeholder");
    assert_eq!(placeholder.len(), 1);
    assert!(placeholder[0].message.contains("placeholder"));
    let used = of(&problems, "used");
    assert_eq!(used.len(), 1);
    assert!(!used[0].blocking, "a warning: a reset step can clear it");
    assert_eq!(used[0].code.as_deref(), Some("0x80180014"));

    // Cleared by deleting the record: the same pre-flight is then quiet about it.
    unblock_reenrollment(&graph, "USED01", Unblock::DeleteRecord)
        .await
        .unwrap();
    let again = preflight(&graph, &targets(&lab), None).await;
    assert!(of(&again, "used").is_empty(), "{again:#?}");
}

#[tokio::test]
async fn preflight_names_missing_permissions() {
    let devices = vec![device("a", "AAA001"), device("b", "BBB001")];
    let lab = TestLab::start(devices, 1.0, Settings::default()).await;
    let mut view = lab.sim.clone();
    view.technician_completed("BBB001", lab.sim.clock().now());

    // Managed devices: the token's roles warn on every device; reading b's record 403s.
    lab.sim
        .revoke_permission("DeviceManagementManagedDevices.ReadWrite.All");
    let problems = preflight(&lab.graph(), &targets(&lab), None).await;
    let a = of(&problems, "a");
    assert_eq!(a.len(), 1, "{problems:#?}");
    assert!(!a[0].blocking);
    assert!(
        a[0].message
            .contains("DeviceManagementManagedDevices.ReadWrite.All")
    );
    let b = of(&problems, "b");
    assert_eq!(b.len(), 2, "{problems:#?}");
    let read = b.iter().find(|p| p.blocking).expect("the 403 on the read");
    assert_eq!(read.code.as_deref(), Some("HTTP 403 Forbidden"));
    assert!(
        read.message
            .contains("DeviceManagementManagedDevices.Read.All"),
        "{}",
        read.message
    );

    // No service-config permission at all: every device's lookup is refused.
    lab.sim
        .revoke_permission("DeviceManagementServiceConfig.ReadWrite.All");
    let problems = preflight(&lab.graph(), &targets(&lab), None).await;
    for device in ["a", "b"] {
        let found = of(&problems, device);
        assert_eq!(
            found.iter().filter(|p| !p.blocking).count(),
            2,
            "{problems:#?}"
        );
        let refused: Vec<_> = found.iter().filter(|p| p.blocking).collect();
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0]
                .message
                .contains("DeviceManagementServiceConfig.Read.All")
        );
    }
}

#[tokio::test]
async fn preflight_finds_a_missing_write_permission_before_any_write() {
    let lab = TestLab::start(vec![device("a", "AAA001")], 1.0, Settings::default()).await;
    lab.sim
        .grant_permission("DeviceManagementServiceConfig.Read.All");
    lab.sim
        .revoke_permission("DeviceManagementServiceConfig.ReadWrite.All");
    let graph = lab.graph();
    let granted = graph
        .granted_permissions()
        .await
        .unwrap()
        .expect("a JWT with roles");
    assert!(granted.contains(&"DeviceManagementServiceConfig.Read.All".to_string()));

    let problems = preflight(&graph, &targets(&lab), None).await;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(!problems[0].blocking);
    assert!(
        problems[0]
            .message
            .contains("DeviceManagementServiceConfig.ReadWrite.All")
    );
    assert!(problems[0].message.contains("set group tags"));
    assert_eq!(lab.sim.stats().forbidden, 0, "found without a refused call");
}

#[tokio::test]
async fn preflight_reports_an_outage_once_per_device_without_retrying_each() {
    let devices = vec![
        device("a", "AAA001"),
        device("b", "BBB001"),
        device("c", "CCC001"),
    ];
    let lab = TestLab::start(devices, 1.0, Settings::default()).await;
    let graph = lab.graph();
    lab.sim.fail_next(1000, 503);
    let problems = preflight(&graph, &targets(&lab), None).await;
    assert_eq!(problems.len(), 3);
    assert!(
        problems
            .iter()
            .all(|p| p.class == FailureClass::Infrastructure && p.blocking)
    );
    assert_eq!(
        lab.sim.stats().failed,
        4,
        "only the first device's bounded attempts"
    );
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn dry_run_prints_calls_with_secrets_redacted_and_sends_none() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let out = Captured::default();
    let dry = DryRunTenant::new(&lab.config, Box::new(out.clone()));

    let identity = dry.identity("PF1ABC").await.unwrap();
    dry.set_group_tag(&identity.id, "hybrid").await.unwrap();
    dry.assign_user(&identity.id, USER).await.unwrap();
    dry.unassign_user(&identity.id).await.unwrap();
    dry.allow_next_enrollment(&identity.id).await.unwrap();
    dry.delete_managed_device(&identity.managed_device_id)
        .await
        .unwrap();
    dry.compliance(&identity.managed_device_id).await.unwrap();
    let poll = Poll::new(Duration::from_millis(10), Duration::from_secs(1));
    dry.import_identity("PF1ABC", "T0E=", "entra", poll)
        .await
        .unwrap();
    let problems = preflight(&dry, &targets(&lab), None).await;
    assert!(problems.iter().all(|p| !p.blocking), "{problems:#?}");

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let base = lab.server.url();
    assert!(!text.contains(SECRET), "the secret leaked:\n{text}");
    assert_eq!(
        text.matches("/oauth2/v2.0/token").count(),
        1,
        "token request shown once:\n{text}"
    );
    assert!(
        text.contains(&format!("POST {base}/{TENANT_ID}/oauth2/v2.0/token")),
        "{text}"
    );
    assert!(
        text.contains(&format!("client_id={CLIENT_ID}&client_secret=<redacted>")),
        "{text}"
    );
    assert!(text.contains("Authorization: Bearer <redacted>"));
    assert!(text.contains(&format!(
        "GET {base}/beta/deviceManagement/windowsAutopilotDeviceIdentities?"
    )));
    assert!(
        text.contains("$filter: contains(serialNumber,'PF1ABC')"),
        "{text}"
    );
    assert!(text.contains(&format!("POST {base}/v1.0/deviceManagement/windowsAutopilotDeviceIdentities/{}/updateDeviceProperties", identity.id)));
    assert!(text.contains(r#"body: {"groupTag":"hybrid"}"#), "{text}");
    assert!(
        text.contains(r#""userPrincipalName":"alice@contoso.test""#),
        "{text}"
    );
    assert!(text.contains("/beta/deviceManagement/windowsAutopilotDeviceIdentities/ztdid-of-PF1ABC/allowNextEnrollment"));
    assert!(text.contains(&format!(
        "DELETE {base}/v1.0/deviceManagement/managedDevices/"
    )));
    assert!(text.contains("needs DeviceManagementManagedDevices.ReadWrite.All"));
    assert!(text.contains(&format!(
        "POST {base}/v1.0/deviceManagement/importedWindowsAutopilotDeviceIdentities/import"
    )));
    assert!(text.contains(r#""hardwareIdentifier":"T0E=""#), "{text}");

    let stats = lab.sim.stats();
    assert_eq!(
        (stats.tokens_issued, stats.graph_requests),
        (0, 0),
        "dry-run sent nothing"
    );
    let graph = lab.graph();
    assert!(!format!("{graph:?}").contains(SECRET));
}

#[tokio::test]
async fn preflight_against_an_unreachable_tenant_reports_every_device() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let lab = TestLab::start(
        vec![device("a", "AAA001"), device("b", "BBB001")],
        1.0,
        Settings::default(),
    )
    .await;
    let mut config = lab.config.clone();
    config.login_url = format!("http://127.0.0.1:{port}");
    let graph = aplab::device::tenant::GraphTenant::with_policy(&config, fast_policy()).unwrap();
    let problems = preflight(&graph, &targets(&lab), None).await;
    assert_eq!(problems.len(), 2, "{problems:#?}");
    for p in &problems {
        assert_eq!(p.class, FailureClass::Infrastructure);
        assert!(p.blocking);
        assert!(p.message.contains("cannot connect"), "{}", p.message);
    }
}
