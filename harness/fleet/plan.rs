//! From scenarios and inventory to jobs: every scenario x matrix case on every matching
//! device, narrowed by the command line's filters.

use std::time::Duration;

use super::{Job, PhasePlan};
use crate::model::inventory::{Device, Inventory};
use crate::model::match_device;
use crate::model::scenario::{Case, Scenario, ScenarioKind};

/// What `aplab run` was asked to run. Empty lists mean "all".
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Filters {
    /// Scenario names.
    pub scenarios: Vec<String>,
    /// Device ids.
    pub devices: Vec<String>,
    /// `key=value` over device tags (`site=lab-a`), or a bare tag name that must be set.
    pub tags: Vec<String>,
    /// `axis=value` over matrix cases (`join=entra`).
    pub matrix: Vec<String>,
    /// Leave out health-check scenarios (they run by default, first on each device).
    pub no_health: bool,
}

/// A case no device could take, and why (reported, never silently dropped).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unplaced {
    pub scenario: String,
    pub case: Case,
    /// Per device considered: why it does not match.
    pub reasons: Vec<(String, String)>,
}

/// The jobs to run and the cases nothing could run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub unplaced: Vec<Unplaced>,
}

impl Filters {
    fn device_selected(&self, device: &Device) -> bool {
        (self.devices.is_empty() || self.devices.contains(&device.id))
            && self.tags.iter().all(|t| match t.split_once('=') {
                Some((k, v)) => device
                    .tags
                    .get(k)
                    .is_some_and(|have| have.eq_ignore_ascii_case(v)),
                None => device.tags.contains_key(t.as_str()),
            })
    }

    fn case_selected(&self, case: &Case) -> bool {
        self.matrix.iter().all(|m| match m.split_once('=') {
            Some((k, v)) => case.get(k).is_none_or(|have| have == v),
            None => true,
        })
    }

    fn scenario_selected(&self, scenario: &Scenario) -> bool {
        let named = self.scenarios.is_empty() || self.scenarios.contains(&scenario.name);
        named && !(self.no_health && scenario.kind == ScenarioKind::Health)
    }
}

/// Expands scenarios into jobs on the devices that match them.
pub fn plan(scenarios: &[Scenario], inventory: &Inventory, filters: &Filters) -> Plan {
    let mut plan = Plan::default();
    let devices: Vec<&Device> = inventory
        .devices
        .iter()
        .filter(|d| filters.device_selected(d))
        .collect();
    for scenario in scenarios.iter().filter(|s| filters.scenario_selected(s)) {
        for case in scenario
            .cases()
            .into_iter()
            .filter(|c| filters.case_selected(c))
        {
            let mut matching = Vec::new();
            let mut reasons = Vec::new();
            for device in &devices {
                match match_device(scenario, &case, device) {
                    Ok(()) => matching.push(device.id.clone()),
                    Err(why) => reasons.push((device.id.clone(), why)),
                }
            }
            if matching.is_empty() {
                plan.unplaced.push(Unplaced {
                    scenario: scenario.name.clone(),
                    case: case.clone(),
                    reasons,
                });
                continue;
            }
            for device in &matching {
                let alternatives = if scenario.retry_on_other_device {
                    matching.iter().filter(|d| *d != device).cloned().collect()
                } else {
                    Vec::new()
                };
                plan.jobs.push(Job {
                    case_id: Job::case_id_for(&scenario.name, &case, device),
                    scenario: scenario.name.clone(),
                    case: case.clone(),
                    device_id: device.clone(),
                    priority: scenario.priority,
                    health: scenario.kind == ScenarioKind::Health,
                    phases: phase_plans(scenario),
                    alternatives,
                });
            }
        }
    }
    plan
}

fn phase_plans(scenario: &Scenario) -> Vec<PhasePlan> {
    scenario
        .phases
        .iter()
        .map(|p| PhasePlan {
            name: p.name.clone(),
            gap: p.gap.clone(),
            // The engineer's estimate if given, else the phase deadline: an upper bound
            // still orders devices sensibly.
            estimate: p
                .expect_duration
                .or(p.timeout)
                .unwrap_or(Duration::from_secs(600)),
        })
        .collect()
}
