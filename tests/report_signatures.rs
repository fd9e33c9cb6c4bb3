//! Every kind of failure the lab knows (the domain's table and the lab's own faults)
//! maps to the right signature, cause and remedy, given the facts as aplab's engine and
//! device backends report them.

use std::time::Duration;

use aplab::report::SignatureBook;
use aplab::report::signatures::FailureFacts;

struct Known {
    /// What the failure is (the sim fault or the domain table row).
    fault: &'static str,
    facts: FailureFacts,
    signature: &'static str,
    cause: &'static str,
    remedy: &'static str,
}

fn product(code: &str, message: &str, screen: &str) -> FailureFacts {
    FailureFacts {
        class: "product".into(),
        code: Some(code.into()),
        phase: "technician".into(),
        message: message.into(),
        screen: screen.into(),
        ..Default::default()
    }
}

fn infra(class: &str, code: Option<&str>, message: &str) -> FailureFacts {
    FailureFacts {
        class: class.into(),
        code: code.map(str::to_string),
        phase: "technician".into(),
        message: message.into(),
        ..Default::default()
    }
}

fn red_screen(code: &str) -> FailureFacts {
    product(
        code,
        &format!("outcome `failure` appeared: \"Something went wrong. {code}\""),
        &format!("Pre-provisioning failed\nError code {code}\nView diagnostics"),
    )
}

fn known() -> Vec<Known> {
    vec![
        Known {
            fault: "AttestationTimeout",
            facts: product(
                "0x800705B4",
                "outcome `failure` appeared: \"Securing your hardware (0x800705b4)\"",
                "Securing your hardware\nFailed",
            ),
            signature: "tpm-attestation-timeout",
            cause: "no usable TPM 2.0",
            remedy: "physical device with TPM 2.0",
        },
        Known {
            fault: "0x801C03EA",
            facts: red_screen("0x801C03EA"),
            signature: "mdm-registration-attestation-failed",
            cause: "two Autopilot profiles",
            remedy: "Update the TPM firmware",
        },
        Known {
            fault: "AttestationIntermittent",
            facts: red_screen("0x81039001"),
            signature: "attestation-retries-exceeded",
            cause: "ran out of retries",
            remedy: "Retry",
        },
        Known {
            fault: "0x81039023",
            facts: red_screen("0x81039023"),
            signature: "attestation-os-bug-win11",
            cause: "Windows 11 defect",
            remedy: "Windows update",
        },
        Known {
            fault: "0x81039024",
            facts: red_screen("0x81039024"),
            signature: "tpm-firmware-vulnerable",
            cause: "known vulnerability",
            remedy: "Update the TPM firmware",
        },
        Known {
            fault: "0x80070490",
            facts: red_screen("0x80070490"),
            signature: "amd-ftpm-issue",
            cause: "AMD firmware TPM",
            remedy: "AMD firmware",
        },
        Known {
            fault: "device reused",
            // Lower-case, as a capture from the screen may give it.
            facts: red_screen("0x80180014"),
            signature: "enrollment-blocked-reused-device",
            cause: "cannot re-enroll",
            remedy: "allowNextEnrollment",
        },
        Known {
            fault: "0x801C03F3",
            facts: red_screen("0x801c03f3"),
            signature: "entra-device-deleted",
            cause: "Entra object was deleted",
            remedy: "register its hardware",
        },
        Known {
            fault: "profile without pre-provisioning",
            facts: red_screen("0x80180005"),
            signature: "profile-disallows-preprovisioning",
            cause: "does not allow pre-provisioned",
            remedy: "Allow pre-provisioned deployment",
        },
        Known {
            fault: "hybrid DC unreachable",
            facts: FailureFacts {
                phase: "technician".into(),
                ..product(
                    "0x80070774",
                    "outcome `failure` appeared: \"Joining your organization's network 0x80070774\"",
                    "",
                )
            },
            signature: "hybrid-dc-unreachable",
            cause: "domain controller is unreachable",
            remedy: "domain controller reachable",
        },
        Known {
            fault: "0x80180018",
            facts: red_screen("0x80180018"),
            signature: "license-or-device-limit",
            cause: "no Intune license",
            remedy: "license",
        },
        Known {
            fault: "Windows Home",
            facts: red_screen("0x80180022"),
            signature: "windows-home-edition",
            cause: "Windows Home",
            remedy: "Pro, Enterprise or Education",
        },
        Known {
            fault: "0xC1036501",
            facts: red_screen("0xC1036501"),
            signature: "several-mdm-configurations",
            cause: "More than one MDM configuration",
            remedy: "single MDM configuration",
        },
        Known {
            fault: "ClockSkew",
            facts: FailureFacts {
                class: "timeout".into(),
                phase: "technician".into(),
                message: "none of the outcomes (success, failure) appeared on the screen: the step \
                          did not finish within its timeout of 2h"
                    .into(),
                screen: "Device setup\nSecurity policies (Working on it...)".into(),
                diagnostics: "w32tm: The computer did not resync because no time data was \
                              available; certificate is not yet valid"
                    .into(),
                ..Default::default()
            },
            signature: "esp-timeout-clock-skew",
            cause: "clock is off",
            remedy: "Resynchronise the device's time",
        },
        Known {
            fault: "SlowEsp",
            facts: FailureFacts {
                class: "timeout".into(),
                phase: "technician".into(),
                message: "none of the outcomes (success, failure) appeared on the screen: the phase \
                          timeout was reached after 1h 30m of this attempt"
                    .into(),
                events: "screen title: Account setup\n".into(),
                ..Default::default()
            },
            signature: "esp-timeout",
            cause: "Enrollment Status Page did not finish",
            remedy: "compliance policy to devices",
        },
        Known {
            fault: "Infineon attestation timeout",
            facts: FailureFacts {
                class: "product".into(),
                phase: "technician".into(),
                message: "outcome `failure` appeared: \"TPM attestation timed out\"".into(),
                ..Default::default()
            },
            signature: "infineon-attestation-timeout",
            cause: "Infineon",
            remedy: "TPM firmware update",
        },
        Known {
            fault: "user flow after 6 months",
            facts: FailureFacts {
                class: "product".into(),
                phase: "user".into(),
                message: "the Win32 app check failed".into(),
                diagnostics: "<![LOG[[Win32App][DetectionActionHandler] Detection for policy with id: \
                              8c1a resulted in action status: Failed and detection state: NotComputed]LOG]!>"
                    .into(),
                gap_before: Some(Duration::from_secs(200 * 86400)),
                ..Default::default()
            },
            signature: "ime-certificates-expired",
            cause: "more than 6 months",
            remedy: "Run the technician flow again",
        },
        Known {
            fault: "user flow < 90 minutes after the technician flow",
            facts: FailureFacts {
                class: "product".into(),
                phase: "user".into(),
                message: "outcome `sign-in error` appeared: \"We couldn't sign you in; token expired\""
                    .into(),
                gap_before: Some(Duration::from_secs(20 * 60)),
                ..Default::default()
            },
            signature: "user-flow-too-soon",
            cause: "less than 90 minutes",
            remedy: "Wait at least 90 minutes",
        },
        Known {
            fault: "wlidsvc disabled",
            facts: FailureFacts {
                class: "product".into(),
                phase: "user".into(),
                message: "outcome `local account` appeared: \"Who's going to use this device?\""
                    .into(),
                screen: "Who's going to use this device?".into(),
                gap_before: Some(Duration::from_secs(3 * 3600)),
                ..Default::default()
            },
            signature: "wlidsvc-disabled-local-account",
            cause: "wlidsvc",
            remedy: "Do not disable wlidsvc",
        },
        Known {
            fault: "PowerControllerFails",
            facts: infra(
                "infrastructure",
                None,
                "pdudaemon at http://127.0.0.1:16421: power on failed: HTTP 500 (pdu lab-local port 1)",
            ),
            signature: "power-controller-failed",
            cause: "power controller",
            remedy: "pdudaemon",
        },
        Known {
            fault: "SerialDrop",
            facts: infra(
                "timeout",
                None,
                "none of the outcomes (prompt) appeared on the console in time; nothing seen \
                 (console link tcp 127.0.0.1:7001 lost at 2026-11-26T03:41:13.002Z and not back \
                 within 30s: end of stream)",
            ),
            signature: "serial-link-lost",
            cause: "serial console link dropped",
            remedy: "ser2net",
        },
        Known {
            fault: "SshRefusedDuringReboot",
            facts: infra(
                "infrastructure",
                None,
                "cannot reach sshd at 127.0.0.1:2222: Connection refused (os error 111)",
            ),
            signature: "ssh-refused",
            cause: "sshd on the device refused",
            remedy: "OpenSSH Server runs",
        },
        Known {
            fault: "GraphThrottle",
            facts: infra(
                "infrastructure",
                Some("HTTP 429"),
                "look up the Autopilot identity: Graph throttles this app for 120s, longer than \
                 the 60s aplab waits",
            ),
            signature: "graph-throttled",
            cause: "429 Too Many Requests",
            remedy: "Retry-After",
        },
        Known {
            fault: "Graph 403",
            facts: infra(
                "config",
                Some("HTTP 403 Authorization_RequestDenied"),
                "delete the Intune record: the app lacks the Graph permission \
                 DeviceManagementManagedDevices.ReadWrite.All (Insufficient privileges)",
            ),
            signature: "graph-forbidden",
            cause: "lacks the Graph application permission",
            remedy: "grant admin consent",
        },
        // The device itself shows 0x800705B4 when its ESP times out after attestation
        // (the virtual lab's ClockSkew and SlowEsp faults; tests/e2e_faults.rs).
        Known {
            fault: "ClockSkew (red screen)",
            facts: FailureFacts {
                console: "ESP: DeviceSetup: Certificates: certificate not yet valid (device clock \
                          is out of sync)\nESP: DeviceSetup: Certificates failed 0x800705B4"
                    .into(),
                ..red_screen("0x800705B4")
            },
            signature: "esp-timeout-shown-clock-skew",
            cause: "clock is off",
            remedy: "Resynchronise",
        },
        Known {
            fault: "SlowEsp (red screen)",
            facts: FailureFacts {
                console: "ESP: DeviceSetup: Apps failed 0x800705B4".into(),
                ..red_screen("0x800705B4")
            },
            signature: "esp-timeout-shown",
            cause: "ran past its timeout",
            remedy: "ESP tracking registry key",
        },
        Known {
            fault: "registered: false",
            facts: FailureFacts {
                class: "config".into(),
                code: Some("not registered".into()),
                phase: "technician".into(),
                message: "no Autopilot identity with serial PF4ABC0D5 in the tenant".into(),
                ..Default::default()
            },
            signature: "device-not-registered",
            cause: "hardware hash was never imported",
            remedy: "Import the hardware hash",
        },
    ]
}

#[test]
fn every_known_failure_maps_to_its_signature_cause_and_remedy() {
    let book = SignatureBook::builtin();
    let mut wrong = Vec::new();
    for k in known() {
        let d = book.diagnose(&k.facts);
        if d.signature.as_deref() != Some(k.signature)
            || !d.cause.contains(k.cause)
            || !d.remedy.contains(k.remedy)
            || d.reference
                .as_deref()
                .is_none_or(|r| !r.starts_with("https://"))
        {
            wrong.push(format!(
                "{}: expected {} ({:?} / {:?}), got {:?}: {} / {}",
                k.fault, k.signature, k.cause, k.remedy, d.signature, d.cause, d.remedy
            ));
        }
    }
    assert!(wrong.is_empty(), "misdiagnosed:\n{}", wrong.join("\n"));
}

#[test]
fn every_signature_in_the_file_is_exercised() {
    let book = SignatureBook::builtin();
    let tested: Vec<&str> = known().iter().map(|k| k.signature).collect();
    for sig in book.signatures() {
        assert!(
            tested.contains(&sig.id.as_str()),
            "signature {} has no case in this test",
            sig.id
        );
    }
}

#[test]
fn a_code_on_screen_beats_a_vaguer_signature() {
    // A short gap and a sign-in word, but the screen shows a known code: the code wins.
    let facts = FailureFacts {
        class: "product".into(),
        code: Some("0x80180014".into()),
        phase: "user".into(),
        message: "sign-in failed".into(),
        gap_before: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let d = SignatureBook::builtin().diagnose(&facts);
    assert_eq!(
        d.signature.as_deref(),
        Some("enrollment-blocked-reused-device")
    );
}

#[test]
fn what_the_failure_says_outweighs_what_was_around_it() {
    // A shell step timed out because sshd refused, while the screen showed an ESP page.
    let facts = FailureFacts {
        class: "timeout".into(),
        message: "cannot reach sshd at 127.0.0.1:2222: Connection refused (os error 111)".into(),
        screen: "Device setup\nApps (Working on it...)".into(),
        ..Default::default()
    };
    let d = SignatureBook::builtin().diagnose(&facts);
    assert_eq!(d.signature.as_deref(), Some("ssh-refused"), "{d:?}");
}

#[test]
fn an_infrastructure_signature_never_explains_a_product_failure() {
    // "refused" in a product failure's text is not the lab's SSH being down.
    let facts = FailureFacts {
        class: "product".into(),
        message: "ssh: the device refused the policy".into(),
        ..Default::default()
    };
    let d = SignatureBook::builtin().diagnose(&facts);
    assert!(!d.known(), "{d:?}");
    assert!(
        d.cause
            .starts_with("no known signature matches; product failure")
    );
}

#[test]
fn an_override_file_replaces_the_builtin_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.yaml");
    std::fs::write(
        &path,
        "signatures:\n  - id: lab-fan\n    title: Fan failure\n    patterns: ['(?i)fan stopped']\n    \
         class: infrastructure\n    cause: The bench fan stopped.\n    remedy: Replace the fan.\n    \
         reference: https://example.invalid/fan\n",
    )
    .unwrap();
    let book = SignatureBook::load_or_builtin(Some(&path)).unwrap();
    assert_eq!(book.signatures().len(), 1);
    let d = book.diagnose(&FailureFacts {
        class: "infrastructure".into(),
        console: "12:00 FAN STOPPED".into(),
        ..Default::default()
    });
    assert_eq!(d.signature.as_deref(), Some("lab-fan"));
    assert_eq!(d.matched_on.as_deref(), Some("pattern in the console"));
    // 0x80180014 is unknown to this list.
    assert!(!book.diagnose(&red_screen_like()).known());
    let missing = SignatureBook::load_or_builtin(Some(&dir.path().join("nope.yaml"))).unwrap_err();
    assert!(missing.to_string().contains("nope.yaml"), "{missing}");
}

fn red_screen_like() -> FailureFacts {
    FailureFacts {
        class: "product".into(),
        code: Some("0x80180014".into()),
        ..Default::default()
    }
}
