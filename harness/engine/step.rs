//! One attempt of one step: what each action does to the device, and how its result is
//! classified. Deadlines and retries are the caller's ([`super::retry`]); an action only
//! uses the deadline to tell backends how long they may take and to stop its own polls.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::device::{DeviceError, ReadBack};
use crate::model::inventory::Capability;
use crate::model::scenario::{
    Action, FailureClass, PowerAction, PowerState, ResetMethod, Step, Template, TenantOp, TpmCheck,
    Wait,
};

use super::events::EventKind;
use super::outcome::CaseState;
use super::{CaseRun, LabTime, collect, expect, render, screen, shell, tenant, tpm};

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub class: FailureClass,
    pub message: String,
    pub hint: Option<String>,
    pub code: Option<String>,
    /// Named captures of a failure outcome (`code`, `elapsed`), for the report.
    pub captures: BTreeMap<String, String>,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
            hint: None,
            code: None,
            captures: BTreeMap::new(),
        }
    }
    pub fn product(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Product, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Config, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        Failure {
            class: e.class,
            message: e.message,
            hint: e.hint,
            code: e.code,
            captures: BTreeMap::new(),
        }
    }
}

/// How an attempt ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Done {
    /// With the named captures it found.
    Passed(BTreeMap<String, String>),
    /// Nothing could be checked; says why.
    Skipped(String),
}

impl Done {
    pub fn passed() -> Self {
        Done::Passed(BTreeMap::new())
    }
}

pub(crate) type Attempt = Result<Done, Failure>;

/// The step being tried, with its attempt's deadline.
pub(crate) struct StepCtx<'r, 'a> {
    pub run: &'r CaseRun<'a>,
    pub phase: &'r str,
    pub step: &'r Step,
    /// When this attempt must be over (lab time).
    pub deadline: LabTime,
}

impl StepCtx<'_, '_> {
    pub fn emit(&self, kind: EventKind) {
        self.run.emit(Some(self.phase), Some(&self.step.name), kind);
    }

    /// Lab time left in this attempt.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.run.clock.now())
    }

    /// Wall time left, for backends that count wall time.
    pub fn remaining_wall(&self) -> Duration {
        self.run.clock.wall(self.remaining())
    }

    pub fn render(&self, template: &Template) -> Result<String, Failure> {
        render::render(self.run, template).map_err(|e| {
            Failure::config(e).with_hint(format!(
                "check the templates of step `{}` ({})",
                self.step.name,
                origin(self.step)
            ))
        })
    }

    /// A capability the action needs but the device handle lacks.
    pub fn missing(&self, cap: Capability) -> Failure {
        Failure::config(format!(
            "device `{}` has no {} connection, but step `{}` needs one",
            self.run.device.id,
            cap.name(),
            self.step.name
        ))
        .with_hint(format!(
            "add `{}` to the device in the inventory, or run the scenario on a device that has it",
            cap.name()
        ))
    }
}

/// `file:line:column` of a step.
pub(crate) fn origin(step: &Step) -> String {
    format!(
        "{}:{}:{}",
        step.origin.file.display(),
        step.origin.line,
        step.origin.column
    )
}

/// Runs one attempt of `action`.
pub(crate) async fn attempt(
    ctx: &StepCtx<'_, '_>,
    state: &mut CaseState,
    action: &Action,
) -> Attempt {
    match action {
        Action::Power(p) => power(ctx, *p).await,
        Action::Keys(keys) => {
            let keyboard = ctx
                .run
                .handle
                .keyboard
                .as_deref()
                .ok_or_else(|| ctx.missing(Capability::Keyboard))?;
            for key in keys {
                keyboard.press(key).await?;
            }
            Ok(Done::passed())
        }
        Action::Text { text, secret } => type_text(ctx, text, *secret).await,
        Action::Expect(e) => expect::expect(ctx, e).await,
        Action::ScreenCheck(check) => screen::check(ctx, state, check).await,
        Action::Shell(s) => shell::run(ctx, s).await,
        Action::Tpm(checks) => tpm::check(ctx, checks).await,
        Action::Tenant(op) => tenant::run(ctx, state, op).await,
        Action::Wait(Wait::Fixed(d)) => {
            ctx.run.clock.sleep(*d).await;
            Ok(Done::passed())
        }
        Action::Wait(Wait::Until {
            check,
            deadline,
            interval,
        }) => wait_until(ctx, state, check, *deadline, *interval).await,
        Action::Collect(items) => collect::collect(ctx, items).await,
    }
}

/// How long one attempt may take when the step gives no timeout: the default, plus the
/// time the action waits by its nature.
pub(crate) fn budget(run: &CaseRun<'_>, step: &Step) -> Duration {
    if let Some(t) = step.timeout {
        return t;
    }
    let default = run.options.default_step_timeout;
    let natural = match &step.action {
        Action::Wait(Wait::Fixed(d)) => *d,
        Action::Wait(Wait::Until { deadline, .. }) => *deadline,
        Action::Tenant(TenantOp::WaitProfileAssigned { deadline })
        | Action::Tenant(TenantOp::Compliance { deadline, .. }) => *deadline,
        Action::Collect(items) => run.options.diagnostics.timeout * items.len() as u32,
        _ => Duration::ZERO,
    };
    default.saturating_add(natural)
}

/// A short description of what a step does, for `StepStarted`. Never holds a secret.
/// What a step does, in a line for people (progress, event log), its templates rendered
/// for this case (see [`render::shown`]).
pub(crate) fn describe(run: &CaseRun<'_>, action: &Action) -> String {
    match action {
        Action::Power(p) => format!("power {}", power_word(*p)),
        Action::Keys(keys) => {
            let keys: Vec<String> = keys
                .iter()
                .map(|k| {
                    let mut name = k.modifiers.clone();
                    name.push(k.key.clone());
                    let name = name.join("+");
                    if k.times > 1 {
                        format!("{name} x{}", k.times)
                    } else {
                        name
                    }
                })
                .collect();
            format!("press {}", keys.join(", "))
        }
        Action::Text { text, secret } => {
            if *secret {
                "type secret text".to_string()
            } else {
                format!("type `{}`", render::shown(run, text))
            }
        }
        Action::Expect(e) => {
            let names: Vec<&str> = e.any_of.iter().map(|o| o.name.as_str()).collect();
            format!(
                "wait on the {} for {}",
                source_word(e.source),
                names.join(" | ")
            )
        }
        Action::ScreenCheck(_) => "check the screen's fields".to_string(),
        Action::Shell(s) => {
            let mut line = s.program.clone();
            for a in &s.args {
                line.push(' ');
                line.push_str(&render::shown(run, a));
            }
            format!("run `{line}`")
        }
        Action::Tpm(checks) => {
            let names: Vec<&str> = checks.iter().map(tpm_word).collect();
            format!("check the TPM: {}", names.join(", "))
        }
        Action::Tenant(op) => format!("tenant: {}", tenant_words(run, op)),
        Action::Wait(Wait::Fixed(d)) => {
            format!("wait {}", crate::model::duration::format_duration(*d))
        }
        Action::Wait(Wait::Until {
            check, deadline, ..
        }) => format!(
            "wait up to {} until: {}",
            crate::model::duration::format_duration(*deadline),
            describe(run, check)
        ),
        Action::Collect(items) => {
            let names: Vec<&str> = items.iter().map(|d| collect::kind(*d)).collect();
            format!("collect {}", names.join(", "))
        }
    }
}

fn tpm_word(check: &TpmCheck) -> &'static str {
    match check {
        TpmCheck::Family => "family",
        TpmCheck::Manufacturer => "manufacturer",
        TpmCheck::Firmware => "firmware",
        TpmCheck::EkCertificate => "EK certificate",
        TpmCheck::Attestation => "attestation",
    }
}

fn tenant_words(run: &CaseRun<'_>, op: &TenantOp) -> String {
    match op {
        TenantOp::ResetRecord { method } => match method {
            ResetMethod::Delete => "delete the Intune record".into(),
            ResetMethod::AllowNextEnrollment => "allow the next enrollment".into(),
        },
        TenantOp::WaitProfileAssigned { deadline } => format!(
            "wait up to {} for the profile assignment",
            crate::model::duration::format_duration(*deadline)
        ),
        TenantOp::SetGroupTag { tag } => format!("set group tag `{}`", render::shown(run, tag)),
        TenantOp::AssignUser { user } => format!("assign user `{}`", render::shown(run, user)),
        TenantOp::UnassignUser => "unassign the user".into(),
        TenantOp::Compliance { expect, deadline } => format!(
            "wait up to {} for compliance {}",
            crate::model::duration::format_duration(*deadline),
            expect.join(" | ")
        ),
        TenantOp::MatchQr => "the QR code is this device".into(),
        TenantOp::EnrollmentState { expect } => {
            format!("enrollment state {}", expect.join(" | "))
        }
    }
}

pub(crate) fn source_word(source: crate::model::scenario::Source) -> &'static str {
    match source {
        crate::model::scenario::Source::Console => "console",
        crate::model::scenario::Source::Screen => "screen",
    }
}

fn power_word(p: PowerAction) -> &'static str {
    match p {
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Expect(PowerState::On) => "expect on",
        PowerAction::Expect(PowerState::Off) => "expect off",
    }
}

fn state_word(s: PowerState) -> &'static str {
    match s {
        PowerState::On => "on",
        PowerState::Off => "off",
    }
}

async fn power(ctx: &StepCtx<'_, '_>, action: PowerAction) -> Attempt {
    let power = ctx
        .run
        .handle
        .power
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Power))?;
    let (read_back, target) = match action {
        PowerAction::On => (power.on().await?, PowerState::On),
        PowerAction::Off => (power.off().await?, PowerState::Off),
        PowerAction::Cycle => (power.cycle().await?, PowerState::On),
        PowerAction::Expect(want) => {
            return match power.state().await? {
                ReadBack::Confirmed(seen) => {
                    ctx.emit(EventKind::DeviceStateSeen {
                        what: "power".into(),
                        value: state_word(seen).into(),
                    });
                    if seen == want {
                        Ok(Done::passed())
                    } else {
                        Err(Failure::product(format!(
                            "the device is {}, expected {}",
                            state_word(seen),
                            state_word(want)
                        )))
                    }
                }
                ReadBack::Unavailable(reason) => {
                    ctx.emit(EventKind::PowerReadBackUnavailable {
                        reason: reason.clone(),
                    });
                    Ok(Done::Skipped(format!(
                        "cannot check that the device is {}: the power controller cannot read the state back ({reason})",
                        state_word(want)
                    )))
                }
            };
        }
    };
    match read_back {
        ReadBack::Confirmed(seen) => {
            ctx.emit(EventKind::DeviceStateSeen {
                what: "power".into(),
                value: state_word(seen).into(),
            });
            if seen == target {
                Ok(Done::passed())
            } else {
                Err(Failure::new(
                    FailureClass::Infrastructure,
                    format!(
                        "after power {} the controller reports the device {}, expected {}",
                        power_word(action),
                        state_word(seen),
                        state_word(target)
                    ),
                )
                .with_hint("check the outlet or BMC wiring and that the device's power supply is connected"))
            }
        }
        ReadBack::Unavailable(reason) => {
            // The action was taken; only its effect cannot be confirmed. Say so.
            ctx.emit(EventKind::PowerReadBackUnavailable { reason });
            Ok(Done::passed())
        }
    }
}

async fn type_text(ctx: &StepCtx<'_, '_>, text: &Template, secret: bool) -> Attempt {
    let keyboard = ctx
        .run
        .handle
        .keyboard
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Keyboard))?;
    let value = ctx.render(text)?;
    match keyboard.type_text(&value).await {
        Ok(()) => Ok(Done::passed()),
        Err(e) => {
            let mut failure = Failure::from(e);
            if secret {
                // A backend may quote what it failed to type; the secret stops here.
                failure.message = redact(&failure.message, &value);
                failure.hint = failure.hint.map(|h| redact(&h, &value));
            }
            Err(failure)
        }
    }
}

/// Replaces every occurrence of `secret` in `text`.
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
    }
}

async fn wait_until(
    ctx: &StepCtx<'_, '_>,
    state: &mut CaseState,
    check: &Action,
    deadline: Duration,
    interval: Duration,
) -> Attempt {
    let clock = &ctx.run.clock;
    let until = clock.now() + deadline;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let inner = StepCtx {
            run: ctx.run,
            phase: ctx.phase,
            step: ctx.step,
            deadline: until.min(ctx.deadline),
        };
        let last = match Box::pin(attempt(&inner, state, check)).await {
            Ok(done) => return Ok(done),
            // Waiting longer cannot fix a mistake in the scenario or in aplab.
            Err(f) if matches!(f.class, FailureClass::Config | FailureClass::Harness) => {
                return Err(f);
            }
            Err(f) => f,
        };
        let next = clock.now() + interval;
        if next >= until {
            return Err(Failure {
                class: FailureClass::Timeout,
                message: format!(
                    "still not passing after {} ({tries} checks); last check: {}",
                    crate::model::duration::format_duration(deadline),
                    last.message
                ),
                hint: last.hint,
                code: last.code,
                captures: last.captures,
            });
        }
        clock.sleep_until(next).await;
    }
}
