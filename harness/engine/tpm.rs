//! Checking the TPM against what the inventory expects of it: Autopilot pre-provisioning
//! needs TPM 2.0 with an EK certificate and working attestation.

use crate::device::EkCertificate;
use crate::model::inventory::{Capability, ExpectedTpm};
use crate::model::scenario::TpmCheck;

use super::events::EventKind;
use super::step::{Attempt, Done, Failure, StepCtx};

pub(crate) async fn check(ctx: &StepCtx<'_, '_>, checks: &[TpmCheck]) -> Attempt {
    let tpm = ctx
        .run
        .handle
        .tpm
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Tpm))?;
    let expected = ctx.run.device.tpm.as_ref();
    let needs_facts = checks.iter().any(|c| {
        matches!(
            c,
            TpmCheck::Family | TpmCheck::Manufacturer | TpmCheck::Firmware
        )
    });
    let facts = if needs_facts {
        let facts = tpm.facts().await?;
        for (what, value) in [
            ("tpm family", &facts.family),
            ("tpm manufacturer", &facts.manufacturer),
            ("tpm firmware", &facts.firmware),
        ] {
            ctx.emit(EventKind::DeviceStateSeen {
                what: what.into(),
                value: value.clone(),
            });
        }
        Some(facts)
    } else {
        None
    };

    for c in checks {
        match (c, &facts) {
            (TpmCheck::Family, Some(f)) => {
                if f.family.trim() != "2.0" {
                    return Err(Failure::product(format!(
                        "the TPM is family {:?}; Autopilot pre-provisioning needs TPM 2.0",
                        f.family
                    )));
                }
            }
            (TpmCheck::Manufacturer, Some(f)) => {
                let want = &expecting(ctx, expected, "manufacturer")?.manufacturer;
                if !f.manufacturer.trim().eq_ignore_ascii_case(want.trim()) {
                    return Err(Failure::product(format!(
                        "the TPM's manufacturer is {:?}, the inventory expects {want:?}",
                        f.manufacturer
                    )));
                }
            }
            (TpmCheck::Firmware, Some(f)) => {
                let Some(want) = &expecting(ctx, expected, "firmware")?.firmware else {
                    return Err(no_expectation(ctx, "firmware"));
                };
                if f.firmware.trim() != want.trim() {
                    return Err(Failure::product(format!(
                        "the TPM's firmware is {:?}, the inventory expects {want:?}",
                        f.firmware
                    )));
                }
            }
            (TpmCheck::EkCertificate, _) => {
                let bundle = expected.and_then(|t| t.ek_ca_bundle.as_deref());
                match tpm.ek_certificate(bundle).await? {
                    EkCertificate::Valid { issuer } => ctx.emit(EventKind::DeviceStateSeen {
                        what: "tpm ek certificate issuer".into(),
                        value: issuer,
                    }),
                    EkCertificate::Missing => {
                        return Err(Failure::product(
                            "the TPM holds no EK certificate in NV; attestation will fail",
                        )
                        .with_hint(
                            "firmware TPMs fetch the EK certificate online: check that the device reaches the TPM vendor's URLs",
                        ));
                    }
                    EkCertificate::Untrusted { issuer, reason } => {
                        return Err(Failure::product(format!(
                            "the TPM's EK certificate (issuer {issuer:?}) does not chain to the CA bundle: {reason}"
                        ))
                        .with_hint("check the device's `tpm.ek_ca_bundle` in the inventory"));
                    }
                }
            }
            (TpmCheck::Attestation, _) => tpm.attest().await?,
            // Facts were read above for every check that needs them.
            (_, None) => unreachable_facts()?,
        }
    }
    Ok(Done::passed())
}

fn expecting<'t>(
    ctx: &StepCtx<'_, '_>,
    expected: Option<&'t ExpectedTpm>,
    what: &str,
) -> Result<&'t ExpectedTpm, Failure> {
    expected.ok_or_else(|| no_expectation(ctx, what))
}

fn no_expectation(ctx: &StepCtx<'_, '_>, what: &str) -> Failure {
    Failure::config(format!(
        "step `{}` checks the TPM {what}, but device `{}` gives no `tpm.{what}` in the inventory",
        ctx.step.name, ctx.run.device.id
    ))
}

fn unreachable_facts() -> Result<(), Failure> {
    Err(Failure::new(
        crate::model::scenario::FailureClass::Harness,
        "TPM facts were not read before checking them",
    ))
}
