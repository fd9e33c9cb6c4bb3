//! Which devices a scenario case may run on: its requirements over device facts, and the
//! capabilities its steps need.

use super::inventory::Device;
use super::scenario::{Case, FactTest, Requirement, Scenario, Step};

/// True when a `when:` (matrix values) holds for this case.
pub fn applies(when: &std::collections::BTreeMap<String, String>, case: &Case) -> bool {
    when.iter()
        .all(|(axis, value)| case.get(axis) == Some(value))
}

/// Checks one requirement; the error says what the device has instead.
pub fn check_requirement(req: &Requirement, device: &Device) -> Result<(), String> {
    let fact = device.fact(&req.fact);
    let shown = fact
        .as_deref()
        .map_or("absent".to_string(), |f| format!("`{f}`"));
    let eq = |v: &String| fact.as_deref().is_some_and(|f| f.eq_ignore_ascii_case(v));
    match &req.test {
        FactTest::OneOf(values) if values.iter().any(eq) => Ok(()),
        FactTest::OneOf(values) if values.len() == 1 => Err(format!(
            "{} is {shown}, the scenario needs `{}`",
            req.fact, values[0]
        )),
        FactTest::OneOf(values) => Err(format!(
            "{} is {shown}, the scenario needs one of {}",
            req.fact,
            values.join(", ")
        )),
        FactTest::NoneOf(values) => match values.iter().find(|v| eq(v)) {
            Some(v) => Err(format!(
                "{} is `{v}`, which the scenario excludes",
                req.fact
            )),
            None => Ok(()),
        },
        FactTest::Present(want) if fact.is_some() == *want => Ok(()),
        FactTest::Present(true) => Err(format!("{} is absent, the scenario needs it", req.fact)),
        FactTest::Present(false) => Err(format!(
            "{} is {shown}, the scenario needs it absent",
            req.fact
        )),
    }
}

/// The requirements of the scenario that hold for this case, checked on the device.
pub fn match_facts(scenario: &Scenario, case: &Case, device: &Device) -> Result<(), String> {
    for req in scenario.requires.iter().filter(|r| applies(&r.when, case)) {
        check_requirement(req, device)?;
    }
    Ok(())
}

/// The steps that run for this case, with their phase names.
pub fn case_steps<'a>(
    scenario: &'a Scenario,
    case: &'a Case,
) -> impl Iterator<Item = (&'a str, &'a Step)> {
    scenario.phases.iter().flat_map(move |phase| {
        phase
            .steps
            .iter()
            .filter(move |s| applies(&s.when, case))
            .map(move |s| (phase.name.as_str(), s))
    })
}

/// Whether `device` can run this case of `scenario`: every requirement that applies to the
/// case holds, and the device has every capability the case's steps need. The error
/// names the first requirement or capability that fails.
pub fn match_device(scenario: &Scenario, case: &Case, device: &Device) -> Result<(), String> {
    match_facts(scenario, case, device)?;
    for (phase, step) in case_steps(scenario, case) {
        for cap in step.action.needs() {
            if !device.has(cap) {
                return Err(format!(
                    "has no {} connection, needed by step `{}` (phase {phase})",
                    cap.name(),
                    step.name
                ));
            }
        }
    }
    Ok(())
}
