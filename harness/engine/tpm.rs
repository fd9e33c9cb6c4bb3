//! Checking the TPM against what the inventory expects of it: Autopilot pre-provisioning
//! needs TPM 2.0 with an EK certificate and working attestation.

use crate::device::{EkCertificate, Tpm, TpmFacts};
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
    // Read once, when the first check that needs them comes.
    let mut facts: Option<TpmFacts> = None;
    for c in checks {
        match c {
            TpmCheck::Family | TpmCheck::Manufacturer | TpmCheck::Firmware => {
                let f = match facts.take() {
                    Some(f) => f,
                    None => read_facts(ctx, tpm).await?,
                };
                compare(ctx, c, &f, expected)?;
                facts = Some(f);
            }
            TpmCheck::EkCertificate => {
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
            TpmCheck::Attestation => tpm.attest().await?,
        }
    }
    Ok(Done::passed())
}

async fn read_facts(ctx: &StepCtx<'_, '_>, tpm: &dyn Tpm) -> Result<TpmFacts, Failure> {
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
    Ok(facts)
}

/// One fact check against the inventory's expectation.
fn compare(
    ctx: &StepCtx<'_, '_>,
    check: &TpmCheck,
    f: &TpmFacts,
    expected: Option<&ExpectedTpm>,
) -> Result<(), Failure> {
    let need = |what: &str| expected.ok_or_else(|| no_expectation(ctx, what));
    match check {
        TpmCheck::Family if f.family.trim() != "2.0" => Err(Failure::product(format!(
            "the TPM is family {:?}; Autopilot pre-provisioning needs TPM 2.0",
            f.family
        ))),
        TpmCheck::Manufacturer => {
            let want = &need("manufacturer")?.manufacturer;
            if f.manufacturer.trim().eq_ignore_ascii_case(want.trim()) {
                Ok(())
            } else {
                Err(Failure::product(format!(
                    "the TPM's manufacturer is {:?}, the inventory expects {want:?}",
                    f.manufacturer
                )))
            }
        }
        TpmCheck::Firmware => {
            let Some(want) = &need("firmware")?.firmware else {
                return Err(no_expectation(ctx, "firmware"));
            };
            if f.firmware.trim() == want.trim() {
                Ok(())
            } else {
                Err(Failure::product(format!(
                    "the TPM's firmware is {:?}, the inventory expects {want:?}",
                    f.firmware
                )))
            }
        }
        _ => Ok(()),
    }
}

fn no_expectation(ctx: &StepCtx<'_, '_>, what: &str) -> Failure {
    Failure::config(format!(
        "step `{}` checks the TPM {what}, but device `{}` gives no `tpm.{what}` in the inventory",
        ctx.step.name, ctx.run.device.id
    ))
}
