//! The Graph backend against the virtual tenant, over HTTP on 127.0.0.1: every
//! operation, throttling, token expiry, permission and credential errors, outages, and
//! the re-enrollment block.

mod tenant_lab;

use std::time::{Duration, Instant};

use aplab::device::tenant::graph::GraphCall;
use aplab::device::tenant::{
    GraphTenant, Poll, Unblock, settle_compliance, unblock_reenrollment, wait_profile_assigned,
};
use aplab::device::{FailureClass, Tenant};
use aplab::model::inventory::{Credential, SecretRef};
use aplab::sim::tenant::{JoinKind, Settings, TenantView};
use tenant_lab::*;

fn poll() -> Poll {
    Poll::new(Duration::from_millis(25), Duration::from_secs(30))
}

#[tokio::test]
async fn every_operation_works_over_http() {
    // 600x: five lab minutes of profile assignment are half a wall second.
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 600.0, Settings::default()).await;
    let graph = lab.graph();

    let identity = graph.identity("PF1ABC").await.expect("identity");
    assert_eq!(identity.serial_number, "PF1ABC");
    assert_eq!(identity.id, lab.sim.state().ztd_id("PF1ABC").unwrap());
    assert_eq!(
        identity.deployment_profile_assignment_status,
        "assignedInSync"
    );
    assert_eq!(identity.enrollment_state, "notContacted");
    assert_eq!(
        identity.managed_device_id, "",
        "the all-zero GUID means no record"
    );
    assert_eq!(identity.group_tag, "entra");
    let profile = graph
        .deployment_profile(&identity.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.join, "entra");
    assert_eq!(profile.display_name, "Contoso Entra Pre-provisioning");
    assert!(profile.allows_preprovisioning);

    // Group tag: the hybrid profile is pending, then assigned some lab minutes later.
    graph.set_group_tag(&identity.id, "hybrid").await.unwrap();
    let tagged = graph.identity("PF1ABC").await.unwrap();
    assert_eq!(tagged.group_tag, "hybrid");
    assert_eq!(tagged.deployment_profile_assignment_status, "pending");
    let lab_before = lab.sim.clock().now();
    let assigned = wait_profile_assigned(&graph, "PF1ABC", poll())
        .await
        .unwrap();
    assert_eq!(
        assigned.deployment_profile_assignment_status,
        "assignedInSync"
    );
    assert!(lab.sim.clock().now() - lab_before >= Duration::from_secs(4 * 60));
    let profile = graph
        .deployment_profile(&identity.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.join, "hybrid");
    let mut view = lab.sim.clone();
    assert_eq!(view.profile_for("PF1ABC").unwrap().join, JoinKind::Hybrid);

    // User assignment shows in the identity and on the device's configuration screen.
    graph.assign_user(&identity.id, USER).await.unwrap();
    assert_eq!(
        graph.identity("PF1ABC").await.unwrap().user_principal_name,
        USER
    );
    assert_eq!(
        view.profile_for("PF1ABC").unwrap().assigned_user.as_deref(),
        Some(USER)
    );
    graph.unassign_user(&identity.id).await.unwrap();
    assert_eq!(
        graph.identity("PF1ABC").await.unwrap().user_principal_name,
        ""
    );
    let unknown_user = graph
        .assign_user(&identity.id, "mallory@elsewhere.test")
        .await;
    assert_eq!(unknown_user.unwrap_err().class, FailureClass::Config);

    // Technician flow: enrolled, an Intune record, compliant.
    graph.set_group_tag(&identity.id, "entra").await.unwrap();
    wait_profile_assigned(&graph, "PF1ABC", poll())
        .await
        .unwrap();
    let now = lab.sim.clock().now();
    let enrollment = view.begin_enrollment("PF1ABC", now).expect("enrollment");
    assert_eq!(enrollment.ztd_id, identity.id);
    assert_eq!(enrollment.organization, "Contoso Lab");
    view.technician_completed("PF1ABC", now);
    let enrolled = graph.identity("PF1ABC").await.unwrap();
    assert_eq!(enrolled.enrollment_state, "enrolled");
    assert!(!enrolled.managed_device_id.is_empty());
    assert_eq!(
        graph.compliance(&enrolled.managed_device_id).await.unwrap(),
        "compliant"
    );

    // User flow: compliance resets, then settles some lab minutes after the flow ends.
    view.user_flow_started("PF1ABC", lab.sim.clock().now());
    assert_eq!(
        graph.compliance(&enrolled.managed_device_id).await.unwrap(),
        "noncompliant"
    );
    let finished = lab.sim.clock().now();
    view.user_flow_completed("PF1ABC", finished);
    let settled = settle_compliance(&graph, &enrolled.managed_device_id, "compliant", 2, poll())
        .await
        .unwrap();
    assert_eq!(settled, "compliant");
    assert!(lab.sim.clock().now() - finished >= Duration::from_secs(15 * 60));

    // Deleting the record: gone, and a second delete is no error (already absent).
    graph
        .delete_managed_device(&enrolled.managed_device_id)
        .await
        .unwrap();
    let deleted = graph.identity("PF1ABC").await.unwrap();
    assert_eq!(deleted.managed_device_id, "");
    graph
        .delete_managed_device(&enrolled.managed_device_id)
        .await
        .unwrap();
    let gone = graph
        .compliance(&enrolled.managed_device_id)
        .await
        .unwrap_err();
    assert_eq!(gone.class, FailureClass::Config);
    assert!(gone.hint.unwrap().contains("not enrolled"));
}

#[tokio::test]
async fn compliance_that_never_settles_times_out() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    let mut view = lab.sim.clone();
    let now = lab.sim.clock().now();
    view.technician_completed("PF1ABC", now);
    view.user_flow_started("PF1ABC", now);
    let record = graph.identity("PF1ABC").await.unwrap().managed_device_id;
    let short = Poll::new(Duration::from_millis(20), Duration::from_millis(200));
    let err = settle_compliance(&graph, &record, "compliant", 1, short)
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout);
    assert_eq!(err.code.as_deref(), Some("noncompliant"));
}

#[tokio::test]
async fn serials_are_found_by_contains_across_pages() {
    let settings = Settings {
        page_size: 1,
        ..Settings::default()
    };
    let devices = vec![
        device("a", "PC-10"),
        device("b", "PC-1"),
        device("c", "PC-100"),
        device("d", "O'Neil-7"),
    ];
    let lab = TestLab::start(devices, 1.0, settings).await;
    let graph = lab.graph();
    let found = graph.identity("PC-1").await.unwrap();
    assert_eq!(found.serial_number, "PC-1");
    assert_eq!(
        lab.sim.stats().graph_requests,
        3,
        "three pages of one item each"
    );
    assert_eq!(
        graph.identity("O'Neil-7").await.unwrap().serial_number,
        "O'Neil-7"
    );
}

#[tokio::test]
async fn unknown_and_placeholder_serials_are_config_errors() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    let missing = graph.identity("NOSUCH99").await.unwrap_err();
    assert_eq!(missing.class, FailureClass::Config);
    assert!(missing.hint.unwrap().contains("hardware hash"));

    let before = lab.sim.stats().graph_requests;
    for placeholder in [
        "Default string",
        "To be filled by O.E.M.",
        "0",
        "System Serial Number",
    ] {
        let err = graph.identity(placeholder).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Config, "{placeholder}");
        assert!(err.message.contains("placeholder"), "{}", err.message);
    }
    assert_eq!(
        lab.sim.stats().graph_requests,
        before,
        "refused before any call"
    );
}

#[tokio::test]
async fn eq_filters_are_refused_as_graph_does() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    let mut call = GraphCall::find_identity("PF1ABC");
    call.query = vec![("$filter".into(), "serialNumber eq 'PF1ABC'".into())];
    let err = graph.send(&call).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(err.code.as_deref(), Some("HTTP 400 BadRequest"));
    assert!(
        err.message.contains("'eq' is not supported"),
        "{}",
        err.message
    );

    // allowNextEnrollment exists only in beta.
    let identity = graph.identity("PF1ABC").await.unwrap();
    let mut v1 = GraphCall::allow_next_enrollment(&identity.id);
    v1.version = aplab::device::tenant::graph::ApiVersion::V1;
    let err = graph.send(&v1).await.unwrap_err();
    assert!(
        err.message.contains("allowNextEnrollment"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn throttling_waits_out_retry_after() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    graph.identity("PF1ABC").await.unwrap(); // token in hand
    lab.sim.throttle_next(2);
    let started = Instant::now();
    let identity = graph
        .identity("PF1ABC")
        .await
        .expect("succeeds after the throttle");
    let elapsed = started.elapsed();
    assert_eq!(identity.serial_number, "PF1ABC");
    let stats = lab.sim.stats();
    assert_eq!(stats.throttled, 2);
    assert_eq!(stats.early_retries, 0, "every retry waited for Retry-After");
    // Two Retry-After: 1 waits; the fast policy's own backoff (20 ms) would be far less.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_throttled_device_is_served_after_its_429s() {
    let lab = TestLab::start(
        vec![throttled(device("pc01", "PF1ABC"), 1)],
        1.0,
        Settings::default(),
    )
    .await;
    let graph = lab.graph();
    let started = Instant::now();
    graph.identity("PF1ABC").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stats = lab.sim.stats();
    assert_eq!((stats.throttled, stats.early_retries), (1, 0));
}

#[tokio::test]
async fn a_retry_after_beyond_the_bound_fails_as_infrastructure() {
    let settings = Settings {
        retry_after: Duration::from_secs(600),
        ..Settings::default()
    };
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, settings).await;
    let graph = lab.graph();
    lab.sim.throttle_next(1);
    let started = Instant::now();
    let err = graph.identity("PF1ABC").await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(err.code.as_deref(), Some("HTTP 429"));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "did not wait 600 s"
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    graph.identity("PF1ABC").await.unwrap();
    assert_eq!(graph.tokens_fetched(), 1);
    lab.sim.expire_tokens();
    graph
        .identity("PF1ABC")
        .await
        .expect("works with a fresh token");
    assert_eq!(graph.tokens_fetched(), 2);
    let stats = lab.sim.stats();
    assert_eq!(stats.tokens_issued, 2, "a second token was fetched");
    assert_eq!(stats.unauthorized, 1, "one 401, then the fresh token");
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    // Six-second tokens: the backend refreshes at 4.5 s, well before the tenant would say 401
    // (the margin absorbs a slow request on a loaded machine).
    let settings = Settings {
        token_lifetime: Duration::from_secs(6),
        ..Settings::default()
    };
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, settings).await;
    let graph = lab.graph();
    let deadline = Instant::now() + Duration::from_secs(30);
    while graph.tokens_fetched() < 2 {
        assert!(Instant::now() < deadline, "no refresh within 30 s");
        graph.identity("PF1ABC").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lab.sim.stats().unauthorized, 0, "refreshed before expiry");
}

#[tokio::test]
async fn wrong_credentials_are_config_errors() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let bad_secret =
        GraphTenant::with_policy(&lab.config_with_secret("wrong"), fast_policy()).unwrap();
    let err = bad_secret.identity("PF1ABC").await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(err.code.as_deref(), Some("invalid_client"));
    assert!(err.hint.as_deref().unwrap().contains("client secret"));
    assert!(!format!("{err:?}").contains(SECRET));

    let mut other_tenant = lab.config.clone();
    other_tenant.tenant_id = "99999999-0000-0000-0000-000000000000".into();
    let err = GraphTenant::with_policy(&other_tenant, fast_policy())
        .unwrap()
        .identity("PF1ABC")
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert!(err.hint.unwrap().contains("tenant_id"));
    assert_eq!(lab.sim.stats().tokens_issued, 0);
}

#[tokio::test]
async fn a_missing_permission_is_named() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    let mut view = lab.sim.clone();
    view.technician_completed("PF1ABC", lab.sim.clock().now());
    let record = graph.identity("PF1ABC").await.unwrap().managed_device_id;

    lab.sim
        .revoke_permission("DeviceManagementManagedDevices.ReadWrite.All");
    let err = graph.delete_managed_device(&record).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(err.code.as_deref(), Some("HTTP 403 Forbidden"));
    assert!(
        err.message
            .contains("DeviceManagementManagedDevices.ReadWrite.All"),
        "{}",
        err.message
    );
    assert!(err.hint.unwrap().contains("admin consent"));

    lab.sim
        .revoke_permission("DeviceManagementServiceConfig.ReadWrite.All");
    let err = graph.set_group_tag("any", "entra").await.unwrap_err();
    assert!(
        err.message
            .contains("DeviceManagementServiceConfig.ReadWrite.All"),
        "{}",
        err.message
    );
    let err = graph.identity("PF1ABC").await.unwrap_err();
    assert!(
        err.message
            .contains("DeviceManagementServiceConfig.Read.All"),
        "{}",
        err.message
    );
    assert_eq!(lab.sim.stats().forbidden, 3);
}

#[tokio::test]
async fn an_outage_is_infrastructure_after_bounded_retries() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    graph.identity("PF1ABC").await.unwrap();

    lab.sim.fail_next(2, 503);
    graph
        .identity("PF1ABC")
        .await
        .expect("a short outage is ridden out");

    lab.sim.fail_next(1000, 503);
    let err = graph.identity("PF1ABC").await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(err.code.as_deref(), Some("HTTP 503"));
    assert!(err.message.contains("after 4 attempts"), "{}", err.message);
    assert_eq!(
        lab.sim.stats().failed,
        2 + 4,
        "bounded: 4 attempts, no more"
    );
}

#[tokio::test]
async fn an_unreachable_tenant_is_infrastructure() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let mut config = lab.config.clone();
    config.login_url = format!("http://127.0.0.1:{port}");
    config.graph_url = format!("http://127.0.0.1:{port}");
    let err = GraphTenant::with_policy(&config, fast_policy())
        .unwrap()
        .identity("PF1ABC")
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(err.message.contains("cannot connect"), "{}", err.message);
    assert!(err.hint.unwrap().contains(&format!("127.0.0.1:{port}")));
}

#[tokio::test]
async fn re_enrollment_is_blocked_until_the_record_is_deleted_or_unblocked() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let graph = lab.graph();
    let mut view = lab.sim.clone();
    let now = || lab.sim.clock().now();

    view.begin_enrollment("PF1ABC", now())
        .expect("first technician flow");
    view.technician_completed("PF1ABC", now());
    let blocked = view.begin_enrollment("PF1ABC", now()).unwrap_err();
    assert_eq!(blocked.code, "0x80180014");

    let before = unblock_reenrollment(&graph, "PF1ABC", Unblock::DeleteRecord)
        .await
        .unwrap();
    assert!(!before.managed_device_id.is_empty());
    assert_eq!(
        graph.identity("PF1ABC").await.unwrap().managed_device_id,
        ""
    );
    view.begin_enrollment("PF1ABC", now())
        .expect("enrolls after the record is deleted");
    view.technician_completed("PF1ABC", now());
    assert_eq!(
        view.begin_enrollment("PF1ABC", now()).unwrap_err().code,
        "0x80180014"
    );

    unblock_reenrollment(&graph, "PF1ABC", Unblock::AllowNextEnrollment)
        .await
        .unwrap();
    assert_eq!(
        graph.identity("PF1ABC").await.unwrap().enrollment_state,
        "enrolled",
        "record kept"
    );
    view.begin_enrollment("PF1ABC", now())
        .expect("enrolls after allowNextEnrollment");
}

#[tokio::test]
async fn enrollment_refusals_carry_the_windows_codes() {
    let devices = vec![
        with_sim(device("unreg", "UNREG1"), |s| s.registered = false),
        with_sim(device("nowg", "NOWG1"), |s| s.allow_preprovisioning = false),
        tagged(device("kiosk", "KIOSK1"), "kiosk"),
    ];
    let lab = TestLab::start(devices, 1.0, Settings::default()).await;
    let mut view = lab.sim.clone();
    let now = lab.sim.clock().now();
    assert_eq!(
        view.begin_enrollment("UNREG1", now).unwrap_err().code,
        "807"
    );
    assert_eq!(
        view.begin_enrollment("NOWG1", now).unwrap_err().code,
        "0x80180005"
    );
    assert_eq!(
        view.begin_enrollment("KIOSK1", now).unwrap_err().code,
        "809"
    );
}

#[tokio::test]
async fn a_certificate_credential_signs_a_client_assertion() {
    let lab = TestLab::start_with_certificate(vec![device("pc01", "PF1ABC")]).await;
    let graph = lab.graph();
    assert_eq!(
        graph.identity("PF1ABC").await.unwrap().serial_number,
        "PF1ABC"
    );
    assert_eq!(lab.sim.stats().tokens_issued, 1);

    // A key that does not belong to the registered certificate is refused.
    let (_, other_key) = certificate_pair(lab.dir(), "stranger");
    let mut wrong = lab.config.clone();
    if let Credential::Certificate { key, .. } = &mut wrong.credential {
        *key = SecretRef::File(other_key);
    }
    let err = GraphTenant::with_policy(&wrong, fast_policy())
        .unwrap()
        .identity("PF1ABC")
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
    assert_eq!(err.code.as_deref(), Some("invalid_client"));
    assert!(err.message.contains("AADSTS700027"), "{}", err.message);
    assert!(err.hint.unwrap().contains("certificate"));

    // Another certificate (its own key) is not the registered one either.
    let (other_cert, other_key) = certificate_pair(lab.dir(), "impostor");
    wrong.credential = Credential::Certificate {
        certificate: other_cert,
        key: SecretRef::File(other_key),
    };
    let err = GraphTenant::with_policy(&wrong, fast_policy())
        .unwrap()
        .identity("PF1ABC")
        .await
        .unwrap_err();
    assert!(err.message.contains("x5t#S256"), "{}", err.message);
    assert_eq!(lab.sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn an_imported_hardware_hash_registers_the_device() {
    let unregistered = with_sim(device("pc09", "NEW0009"), |s| s.registered = false);
    let lab = TestLab::start(
        vec![unregistered, device("pc01", "PF1ABC")],
        600.0,
        Settings::default(),
    )
    .await;
    let graph = lab.graph();
    let mut view = lab.sim.clone();
    assert_eq!(
        view.begin_enrollment("NEW0009", lab.sim.clock().now())
            .unwrap_err()
            .code,
        "807"
    );
    assert_eq!(
        graph.identity("NEW0009").await.unwrap_err().class,
        FailureClass::Config
    );

    // A hash that is not base64 is refused before any call.
    let before = lab.sim.stats().graph_requests;
    let bad = graph
        .import_identity("NEW0009", "not base64!", "entra", poll())
        .await;
    assert_eq!(bad.unwrap_err().class, FailureClass::Config);
    assert_eq!(lab.sim.stats().graph_requests, before);

    // The import answers pending, then complete; the profile is assigned minutes later.
    let hash = "T0EzIGhhcmR3YXJlIGhhc2g=";
    let ztd_id = graph
        .import_identity("NEW0009", hash, "entra", poll())
        .await
        .unwrap();
    let identity = graph.identity("NEW0009").await.unwrap();
    assert_eq!(identity.id, ztd_id);
    assert_eq!(identity.deployment_profile_assignment_status, "pending");
    wait_profile_assigned(&graph, "NEW0009", poll())
        .await
        .unwrap();
    let enrollment = view
        .begin_enrollment("NEW0009", lab.sim.clock().now())
        .unwrap();
    assert_eq!(enrollment.ztd_id, ztd_id);

    // Importing a registered device again fails with the service's reason.
    let again = graph
        .import_identity("PF1ABC", hash, "entra", poll())
        .await
        .unwrap_err();
    assert_eq!(again.class, FailureClass::Config);
    assert_eq!(again.code.as_deref(), Some("806"));
    assert!(
        again.message.contains("ZtdDeviceAlreadyAssigned"),
        "{}",
        again.message
    );
}

#[tokio::test]
async fn the_sim_tenant_answers_as_graph_does() {
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let http = reqwest::Client::new();
    let base = lab.server.url();
    let url = format!("{base}/beta/deviceManagement/windowsAutopilotDeviceIdentities");

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");

    let token: serde_json::Value = http
        .post(format!("{base}/{TENANT_ID}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", &format!("{base}/.default")),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    let bearer = token["access_token"].as_str().unwrap().to_string();

    let beta: serde_json::Value = http
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        beta["value"][0]["deploymentProfileAssignmentStatus"],
        "assignedInSync"
    );
    assert_eq!(
        beta["value"][0]["managedDeviceId"],
        "00000000-0000-0000-0000-000000000000"
    );
    let v1_url = url.replace("/beta/", "/v1.0/");
    let v1: serde_json::Value = http
        .get(&v1_url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v1["value"][0]
            .get("deploymentProfileAssignmentStatus")
            .is_none(),
        "beta only"
    );

    lab.sim.throttle_next(1);
    let throttled = http.get(&url).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
}

#[tokio::test]
async fn a_tenant_that_never_answers_times_out_as_infrastructure() {
    // Accepts connections and reads, but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let lab = TestLab::start(vec![device("pc01", "PF1ABC")], 1.0, Settings::default()).await;
    let mut config = lab.config.clone();
    config.login_url = format!("http://{addr}");
    let policy = aplab::device::tenant::RetryPolicy {
        request_timeout: Duration::from_millis(300),
        ..fast_policy()
    };
    let started = Instant::now();
    let err = GraphTenant::with_policy(&config, policy)
        .unwrap()
        .identity("PF1ABC")
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message.contains("no answer within 300ms"),
        "{}",
        err.message
    );
    assert!(err.message.contains("after 4 attempts"), "{}", err.message);
    assert!(started.elapsed() >= Duration::from_millis(4 * 300));
    silent.abort();
}

#[tokio::test]
async fn an_import_is_not_sent_again_after_a_server_error() {
    let unregistered = with_sim(device("pc09", "NEW0009"), |s| s.registered = false);
    let lab = TestLab::start(vec![unregistered], 1.0, Settings::default()).await;
    let graph = lab.graph();
    graph.identity("NEW0009").await.unwrap_err(); // token in hand
    lab.sim.fail_next(5, 503);
    let err = graph
        .import_identity("NEW0009", "T0EzIGhhc2g=", "entra", poll())
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(err.message.contains("not sent again"), "{}", err.message);
    assert_eq!(lab.sim.stats().failed, 1, "one attempt only");
    // A repeatable read in the same outage is retried.
    lab.sim.fail_next(2, 503);
    let not_registered = graph.identity("NEW0009").await.unwrap_err();
    assert_eq!(
        not_registered.class,
        FailureClass::Config,
        "answered after retries"
    );
    assert_eq!(lab.sim.stats().failed, 3);
}
