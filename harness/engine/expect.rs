//! Waiting for one of several outcomes on the console or the screen. The first outcome
//! whose pattern matches decides the step; its verdict says whether that is a pass (a
//! negative scenario expects the failure screen) or a failure of some class.

use std::collections::BTreeMap;

use regex::Regex;

use crate::device::DeviceError;
use crate::model::inventory::Capability;
use crate::model::scenario::{Expect, FailureClass, Outcome, Pattern, Source, Verdict};

use super::clock::{backoff, poll_interval};
use super::events::EventKind;
use super::step::{Attempt, Done, Failure, StepCtx};

pub(crate) async fn expect(ctx: &StepCtx<'_, '_>, e: &Expect) -> Attempt {
    if e.any_of.is_empty() {
        return Err(Failure::config(format!(
            "step `{}` waits for no outcome; give it at least one under `any_of`",
            ctx.step.name
        )));
    }
    let patterns = patterns(ctx, &e.any_of)?;
    match e.source {
        Source::Console => on_console(ctx, e, &patterns).await,
        Source::Screen => on_screen(ctx, e, &patterns).await,
    }
}

/// The outcomes' patterns as regexes: literal text is rendered, then escaped.
fn patterns(ctx: &StepCtx<'_, '_>, outcomes: &[Outcome]) -> Result<Vec<Regex>, Failure> {
    outcomes
        .iter()
        .map(|o| {
            let source = match &o.pattern {
                Pattern::Text(t) => regex::escape(&ctx.render(t)?),
                Pattern::Regex(r) => r.clone(),
            };
            Regex::new(&source).map_err(|err| {
                Failure::config(format!(
                    "outcome `{}` has an invalid regular expression: {err}",
                    o.name
                ))
            })
        })
        .collect()
}

async fn on_console(ctx: &StepCtx<'_, '_>, e: &Expect, patterns: &[Regex]) -> Attempt {
    let console = ctx
        .run
        .handle
        .console
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Console))?;
    let found = console.expect(patterns, ctx.remaining_wall()).await;
    let found = match found {
        Ok(m) => m,
        Err(err) if err.class == FailureClass::Timeout => {
            let tail = String::from_utf8_lossy(&console.tail(400)).into_owned();
            return Err(none_appeared(
                e,
                "console",
                &format!("last console output: {tail:?}"),
                err,
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let Some(outcome) = e.any_of.get(found.pattern) else {
        return Err(Failure::new(
            FailureClass::Harness,
            format!(
                "the console reported a match for pattern {} of {}",
                found.pattern,
                e.any_of.len()
            ),
        ));
    };
    decide(
        ctx,
        e.source,
        outcome,
        found.text,
        found.captures.into_iter().collect(),
    )
}

/// Reads the screen every `screen_poll` (less often as a long wait goes on, see
/// [`backoff`]) until an outcome's pattern matches or the attempt's deadline passes. A
/// failed read is remembered and polling goes on: a KVM that hiccups once must not fail
/// the step, one that never answers must say so.
async fn on_screen(ctx: &StepCtx<'_, '_>, e: &Expect, patterns: &[Regex]) -> Attempt {
    let screen = ctx
        .run
        .handle
        .screen
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Screen))?;
    let clock = &ctx.run.clock;
    let mut last_title: Option<String> = None;
    let mut last_error: Option<DeviceError>;
    let started = clock.now();
    loop {
        match screen.text().await {
            Ok(text) => {
                last_error = None;
                let title = title(&text);
                if last_title.as_deref() != Some(title.as_str()) {
                    ctx.emit(EventKind::DeviceStateSeen {
                        what: "screen title".into(),
                        value: title.clone(),
                    });
                    last_title = Some(title);
                }
                for (outcome, pattern) in e.any_of.iter().zip(patterns) {
                    if let Some(caps) = pattern.captures(&text) {
                        let captures = pattern
                            .capture_names()
                            .flatten()
                            .filter_map(|n| {
                                caps.name(n)
                                    .map(|m| (n.to_string(), m.as_str().to_string()))
                            })
                            .collect();
                        let matched = caps.get(0).map(|m| m.as_str()).unwrap_or_default();
                        return decide(ctx, e.source, outcome, matched.to_string(), captures);
                    }
                }
            }
            Err(err) => last_error = Some(err),
        }
        let now = clock.now();
        if now >= ctx.deadline {
            break;
        }
        let lab = backoff(ctx.run.options.screen_poll, now.saturating_sub(started));
        let poll = poll_interval(clock.as_ref(), lab);
        clock.sleep_until((now + poll).min(ctx.deadline)).await;
    }
    match last_error {
        // The screen could not be read at all at the end: that is the KVM, not the device.
        Some(err) => Err(err.into()),
        None => Err(none_appeared(
            e,
            "screen",
            &format!("last screen title: {:?}", last_title.unwrap_or_default()),
            DeviceError::timeout(""),
        )),
    }
}

/// The first non-empty line of the screen's text: enough to follow the flow's progress.
fn title(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

fn none_appeared(e: &Expect, source: &str, seen: &str, err: DeviceError) -> Failure {
    let names: Vec<&str> = e.any_of.iter().map(|o| o.name.as_str()).collect();
    let mut message = format!(
        "none of the outcomes ({}) appeared on the {source} in time; {seen}",
        names.join(", ")
    );
    if !err.message.is_empty() {
        message = format!("{message} ({})", err.message);
    }
    Failure {
        class: FailureClass::Timeout,
        message,
        hint: err.hint,
        code: None,
        captures: BTreeMap::new(),
    }
}

/// A pattern matched: record it, then let the outcome's verdict decide.
fn decide(
    ctx: &StepCtx<'_, '_>,
    source: Source,
    outcome: &Outcome,
    text: String,
    captures: BTreeMap<String, String>,
) -> Attempt {
    let passed = outcome.verdict == Verdict::Pass;
    ctx.emit(EventKind::PatternMatched {
        source,
        outcome: outcome.name.clone(),
        passed,
        text: text.clone(),
        captures: captures.clone(),
    });
    match outcome.verdict {
        Verdict::Pass => Ok(Done::Passed(captures)),
        Verdict::Fail(class) => Err(Failure {
            class,
            message: format!("outcome `{}` appeared: {text:?}", outcome.name),
            hint: None,
            code: captures.get("code").cloned(),
            captures,
        }),
    }
}
