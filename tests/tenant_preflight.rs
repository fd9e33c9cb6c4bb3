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
    let lab = TestLab::start(
        vec![device("a", "AAA001"), device("b", "BBB001")],
        1.0,
        Settings::default(),
    )
    .await;
    let mut view = lab.sim.clone();
    view.technician_completed("BBB001", lab.sim.clock().now());
    let graph = lab.graph();

    lab.sim
        .revoke_permission("DeviceManagementManagedDevices.ReadWrite.All");
    let problems = preflight(&graph, &targets(&lab), None).await;
    assert!(
        of(&problems, "a").is_empty(),
        "no record, nothing to read: {problems:#?}"
    );
    let b = of(&problems, "b");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].class, FailureClass::Config);
    assert!(
        b[0].message
            .contains("DeviceManagementManagedDevices.Read.All"),
        "{}",
        b[0].message
    );

    lab.sim
        .revoke_permission("DeviceManagementServiceConfig.ReadWrite.All");
    let problems = preflight(&graph, &targets(&lab), None).await;
    assert_eq!(problems.len(), 2);
    for p in &problems {
        assert_eq!(p.code.as_deref(), Some("HTTP 403 Forbidden"));
        assert!(
            p.message.contains("DeviceManagementServiceConfig.Read.All"),
            "{}",
            p.message
        );
    }
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
