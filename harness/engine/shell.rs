//! Running a command on the device and checking what it says: exit status, `Key : Value`
//! lines (dsregcmd's join state), and regexes over stdout.

use regex::Regex;

use crate::model::inventory::Capability;
use crate::model::scenario::ShellStep;

use super::events::EventKind;
use super::keyed;
use super::step::{Attempt, Done, Failure, StepCtx};

pub(crate) async fn run(ctx: &StepCtx<'_, '_>, s: &ShellStep) -> Attempt {
    let shell = ctx
        .run
        .handle
        .shell
        .as_deref()
        .ok_or_else(|| ctx.missing(Capability::Shell))?;
    let args = s
        .args
        .iter()
        .map(|a| ctx.render(a))
        .collect::<Result<Vec<_>, _>>()?;
    // Compile first: a bad regex is the scenario's fault, found before touching the device.
    let regexes = s
        .stdout_matches
        .iter()
        .map(|r| {
            Regex::new(r).map_err(|e| {
                Failure::config(format!("`stdout_matches` regex {r:?} is invalid: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = shell.run(&s.program, &args, ctx.remaining_wall()).await?;

    let mut problems = Vec::new();
    if let Some(want) = s.exit
        && out.status != want
    {
        problems.push(format!("exit status is {}, expected {want}", out.status));
    }
    if !s.expect.is_empty() {
        let fields = keyed::parse(&out.stdout);
        for (key, expected) in &s.expect {
            let expected = ctx.render(expected)?;
            match keyed::get(&fields, key) {
                Some(seen) => {
                    ctx.emit(EventKind::DeviceStateSeen {
                        what: key.clone(),
                        value: seen.to_string(),
                    });
                    if !seen.eq_ignore_ascii_case(expected.trim()) {
                        problems.push(format!("{key} is {seen:?}, expected {expected:?}"));
                    }
                }
                None => problems.push(format!("{key} is not in the output")),
            }
        }
    }
    for re in &regexes {
        if !re.is_match(&out.stdout) {
            problems.push(format!("stdout does not match /{re}/"));
        }
    }
    if problems.is_empty() {
        return Ok(Done::passed());
    }
    let mut message = format!("`{}`: {}", s.program, problems.join("; "));
    let stderr = out.stderr.trim();
    if !stderr.is_empty() {
        let cut: String = stderr.chars().take(300).collect();
        message = format!("{message}; stderr: {cut:?}");
    }
    Err(Failure::product(message))
}
