//! Tenant operations (Intune via Graph) for the device's Autopilot identity, found by the
//! device's serial number.

use std::time::Duration;

use crate::device::AutopilotIdentity;
use crate::model::duration::format_duration;
use crate::model::inventory::Capability;
use crate::model::scenario::{FailureClass, ResetMethod, TenantOp};

use super::clock::{backoff, poll_interval};
use super::events::EventKind;
use super::outcome::CaseState;
use super::step::{Attempt, Done, Failure, StepCtx};

/// Profile assignment states that mean "assigned" (the `Unkown` typo is Graph's).
const ASSIGNED: [&str; 3] = [
    "assignedInSync",
    "assignedOutOfSync",
    "assignedUnkownSyncState",
];

pub(crate) async fn run(ctx: &StepCtx<'_, '_>, state: &mut CaseState, op: &TenantOp) -> Attempt {
    let tenant = ctx
        .run
        .handle
        .tenant
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Tenant))?;
    let serial = &ctx.run.device.serial;
    match op {
        TenantOp::ResetRecord { method } => {
            let identity = tenant.identity(serial).await?;
            match method {
                ResetMethod::Delete if has_managed_device(&identity) => {
                    tenant
                        .delete_managed_device(&identity.managed_device_id)
                        .await?
                }
                // Nothing to delete: the record may still block re-enrollment.
                ResetMethod::Delete | ResetMethod::AllowNextEnrollment => {
                    tenant.allow_next_enrollment(&identity.id).await?
                }
            }
            Ok(Done::passed())
        }
        TenantOp::SetGroupTag { tag } => {
            let tag = ctx.render(tag)?;
            let identity = tenant.identity(serial).await?;
            tenant.set_group_tag(&identity.id, &tag).await?;
            Ok(Done::passed())
        }
        TenantOp::AssignUser { user } => {
            let user = ctx.render(user)?;
            let upn = user_upn(ctx, &user);
            let identity = tenant.identity(serial).await?;
            tenant.assign_user(&identity.id, &upn).await?;
            Ok(Done::passed())
        }
        TenantOp::UnassignUser => {
            let identity = tenant.identity(serial).await?;
            tenant.unassign_user(&identity.id).await?;
            Ok(Done::passed())
        }
        TenantOp::WaitProfileAssigned { deadline } => {
            let seen = poll(ctx, *deadline, "profile assignment", || async {
                let identity = tenant.identity(serial).await?;
                let status = identity.deployment_profile_assignment_status;
                let done = ASSIGNED.iter().any(|a| a.eq_ignore_ascii_case(&status));
                Ok((status, done))
            })
            .await?;
            match seen {
                Polled::Done => Ok(Done::passed()),
                Polled::GaveUp(status) => Err(Failure::new(
                    FailureClass::Timeout,
                    format!(
                        "the deployment profile is still not assigned after {} (status {status:?})",
                        format_duration(*deadline)
                    ),
                )
                .with_hint(
                    "check the Autopilot profile's group assignment and the device's group tag",
                )),
            }
        }
        TenantOp::Compliance { expect, deadline } => {
            let seen = poll(ctx, *deadline, "compliance state", || async {
                let identity = tenant.identity(serial).await?;
                if !has_managed_device(&identity) {
                    return Ok(("(not enrolled)".to_string(), false));
                }
                let state = tenant.compliance(&identity.managed_device_id).await?;
                let done = one_of(&state, expect);
                Ok((state, done))
            })
            .await?;
            match seen {
                Polled::Done => Ok(Done::passed()),
                Polled::GaveUp(state) => Err(Failure::product(format!(
                    "complianceState is {state:?} after {}, expected one of {expect:?}",
                    format_duration(*deadline)
                ))
                .with_hint("compliance resets during the user flow; allow time to re-evaluate")),
            }
        }
        TenantOp::MatchQr => {
            let Some(qr) = &state.last_qr else {
                return Err(Failure::config(
                    "no QR code was read earlier in this case; put a screen check with `qr:` before `match-qr`",
                ));
            };
            let identity = tenant.identity(serial).await?;
            match qr.get("ZtdId") {
                Some(id) if id.eq_ignore_ascii_case(&identity.id) => Ok(Done::passed()),
                Some(id) => Err(Failure::product(format!(
                    "the QR code's ZtdId {id:?} is not the Autopilot identity's id {:?}",
                    identity.id
                ))),
                None => Err(Failure::product("the QR code's payload has no ZtdId")),
            }
        }
        TenantOp::EnrollmentState { expect } => {
            let identity = tenant.identity(serial).await?;
            ctx.emit(EventKind::DeviceStateSeen {
                what: "enrollment state".into(),
                value: identity.enrollment_state.clone(),
            });
            if one_of(&identity.enrollment_state, expect) {
                Ok(Done::passed())
            } else {
                Err(Failure::product(format!(
                    "enrollmentState is {:?}, expected one of {expect:?}",
                    identity.enrollment_state
                )))
            }
        }
    }
}

/// Graph reports "no managed device" as an empty or all-zero id.
fn has_managed_device(identity: &AutopilotIdentity) -> bool {
    let id = identity.managed_device_id.trim();
    !id.is_empty() && id.chars().any(|c| c != '0' && c != '-')
}

fn one_of(value: &str, expect: &[String]) -> bool {
    expect.iter().any(|e| e.eq_ignore_ascii_case(value.trim()))
}

/// A user given by the name the tenant config knows it by (`default`) becomes its UPN.
fn user_upn(ctx: &StepCtx<'_, '_>, user: &str) -> String {
    ctx.run
        .tenant
        .and_then(|t| t.users.get(user))
        .map(|u| u.upn.clone())
        .unwrap_or_else(|| user.to_string())
}

enum Polled {
    Done,
    GaveUp(String),
}

/// Asks `read` every `tenant_poll` (less often as a long wait goes on) until it says
/// done or `deadline` passes. Each new value is reported as a `DeviceStateSeen`. Errors
/// end the poll (the retry policy decides about them); a 429 is the tenant backend's to
/// wait out.
async fn poll<F, Fut>(
    ctx: &StepCtx<'_, '_>,
    deadline: Duration,
    what: &str,
    mut read: F,
) -> Result<Polled, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(String, bool), crate::device::DeviceError>>,
{
    let clock = &ctx.run.clock;
    let until = (clock.now() + deadline).min(ctx.deadline);
    let mut last: Option<String> = None;
    let started = clock.now();
    loop {
        let (value, done) = read().await?;
        if last.as_deref() != Some(value.as_str()) {
            ctx.emit(EventKind::DeviceStateSeen {
                what: what.to_string(),
                value: value.clone(),
            });
        }
        if done {
            return Ok(Polled::Done);
        }
        last = Some(value);
        let now = clock.now();
        if now >= until {
            return Ok(Polled::GaveUp(last.unwrap_or_default()));
        }
        let lab = backoff(ctx.run.options.tenant_poll, now.saturating_sub(started));
        let every = poll_interval(clock.as_ref(), lab);
        clock.sleep_until((now + every).min(until)).await;
    }
}
