//! A run compared with earlier runs in the ledger: what newly fails, what got fixed,
//! what is flaky (passed on retry, or alternating across runs), and the pass rate per
//! device model.
//!
//! Cases are matched across runs by their ledger case id (`scenario[matrix]@device`):
//! the same scenario case on the same device.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::inventory::Device;
use crate::store::{CaseRecord, CaseStatus, Ledger, LedgerResult, RunRecord};

/// Device id -> model.
pub type Models = BTreeMap<String, String>;

pub fn models_from_devices(devices: &[Device]) -> Models {
    devices
        .iter()
        .map(|d| (d.id.clone(), d.model.clone()))
        .collect()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    pub run_id: String,
    /// The earlier runs compared with, most recent first.
    pub earlier_runs: Vec<String>,
    /// Failed now; passed (or absent) in the latest earlier run that had the case.
    pub new_failures: Vec<CaseChange>,
    /// Passed now; failed in the latest earlier run that had the case.
    pub fixed: Vec<CaseChange>,
    /// Failed now and in the latest earlier run that had the case.
    pub still_failing: Vec<CaseChange>,
    pub flaky: Vec<FlakyCase>,
    pub pass_rate_by_model: Vec<ModelRate>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseChange {
    pub case_id: String,
    pub model: String,
    /// The earlier run compared with (`None`: the case is new).
    pub since_run: Option<String>,
    pub class: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlakyCase {
    pub case_id: String,
    pub model: String,
    /// `passed on retry (step ...)` or `alternating across runs: P F P`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRate {
    pub model: String,
    /// This run.
    pub passed: usize,
    pub failed: usize,
    /// This run and the earlier runs compared with.
    pub window_passed: usize,
    pub window_failed: usize,
    /// This run's pass rate, percent (0 when nothing finished).
    pub rate: f64,
    pub window_rate: f64,
}

/// Compares `run_id` with up to `depth` runs that started before it.
pub fn compare(
    ledger: &dyn Ledger,
    run_id: &str,
    models: &Models,
    depth: usize,
) -> LedgerResult<History> {
    let run = ledger.run(run_id)?;
    let current = ledger.cases(run_id)?;
    let earlier: Vec<RunRecord> = ledger
        .recent_runs(depth.saturating_add(64).max(256))?
        .into_iter()
        .filter(|r| r.id != run.id && r.started_at <= run.started_at)
        .take(depth)
        .collect();
    let mut earlier_cases: Vec<(String, Vec<CaseRecord>)> = Vec::new();
    for r in &earlier {
        earlier_cases.push((r.id.clone(), ledger.cases(&r.id)?));
    }
    let model_of = |device: &str| {
        models
            .get(device)
            .cloned()
            .unwrap_or_else(|| "unknown model".to_string())
    };

    let mut history = History {
        run_id: run.id.clone(),
        earlier_runs: earlier.iter().map(|r| r.id.clone()).collect(),
        ..Default::default()
    };
    for case in &current {
        let previous = earlier_cases.iter().find_map(|(run, cases)| {
            cases
                .iter()
                .find(|c| c.case_id == case.case_id && c.status.is_done())
                .map(|c| (run.clone(), c))
        });
        let change = |since: Option<String>| CaseChange {
            case_id: case.case_id.clone(),
            model: model_of(&case.device_id),
            since_run: since,
            class: case.class.clone(),
            message: case.message.clone(),
        };
        match (case.status, previous) {
            (CaseStatus::Failed, Some((run, prev))) if prev.status == CaseStatus::Failed => {
                history.still_failing.push(change(Some(run)))
            }
            (CaseStatus::Failed, Some((run, _))) => history.new_failures.push(change(Some(run))),
            (CaseStatus::Failed, None) => history.new_failures.push(change(None)),
            (CaseStatus::Passed, Some((run, prev))) if prev.status == CaseStatus::Failed => {
                history.fixed.push(CaseChange {
                    class: prev.class.clone(),
                    message: prev.message.clone(),
                    ..change(Some(run))
                })
            }
            _ => {}
        }

        // Flaky within this run: a step failed, then passed on a later attempt.
        if case.status == CaseStatus::Passed {
            let steps = ledger.steps(run_id, &case.case_id)?;
            let retried = steps.iter().find(|s| {
                s.status == "passed"
                    && steps.iter().any(|f| {
                        f.phase == s.phase
                            && f.step == s.step
                            && f.status == "failed"
                            && f.attempt < s.attempt
                    })
            });
            if let Some(s) = retried {
                history.flaky.push(FlakyCase {
                    case_id: case.case_id.clone(),
                    model: model_of(&case.device_id),
                    reason: format!(
                        "passed on retry (step {} / {}, attempt {})",
                        s.phase, s.step, s.attempt
                    ),
                });
                continue;
            }
        }
        // Flaky across runs: the outcome flipped at least twice in the window.
        let mut outcomes: Vec<bool> = earlier_cases
            .iter()
            .rev()
            .filter_map(|(_, cases)| {
                cases
                    .iter()
                    .find(|c| c.case_id == case.case_id)
                    .and_then(|c| outcome(c.status))
            })
            .collect();
        if let Some(now) = outcome(case.status) {
            outcomes.push(now);
        }
        let flips = outcomes.windows(2).filter(|w| w[0] != w[1]).count();
        if flips >= 2 {
            let pattern: Vec<&str> = outcomes
                .iter()
                .map(|p| if *p { "P" } else { "F" })
                .collect();
            history.flaky.push(FlakyCase {
                case_id: case.case_id.clone(),
                model: model_of(&case.device_id),
                reason: format!(
                    "alternating across runs (oldest first): {}",
                    pattern.join(" ")
                ),
            });
        }
    }

    let mut rates: BTreeMap<String, ModelRate> = BTreeMap::new();
    let mut count = |cases: &[CaseRecord], this_run: bool| {
        for c in cases {
            let Some(passed) = outcome(c.status) else {
                continue;
            };
            let model = model_of(&c.device_id);
            let rate = rates.entry(model.clone()).or_insert_with(|| ModelRate {
                model,
                passed: 0,
                failed: 0,
                window_passed: 0,
                window_failed: 0,
                rate: 0.0,
                window_rate: 0.0,
            });
            if passed {
                rate.window_passed += 1;
                rate.passed += usize::from(this_run);
            } else {
                rate.window_failed += 1;
                rate.failed += usize::from(this_run);
            }
        }
    };
    count(&current, true);
    for (_, cases) in &earlier_cases {
        count(cases, false);
    }
    let percent = |p: usize, f: usize| {
        if p + f == 0 {
            0.0
        } else {
            (p as f64 * 1000.0 / (p + f) as f64).round() / 10.0
        }
    };
    history.pass_rate_by_model = rates
        .into_values()
        .map(|mut r| {
            r.rate = percent(r.passed, r.failed);
            r.window_rate = percent(r.window_passed, r.window_failed);
            r
        })
        .collect();
    Ok(history)
}

fn outcome(status: CaseStatus) -> Option<bool> {
    match status {
        CaseStatus::Passed => Some(true),
        CaseStatus::Failed => Some(false),
        _ => None,
    }
}

/// The history as text for the terminal (`aplab history`).
pub fn render_text(h: &History) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "run {} compared with {} earlier run(s){}\n",
        h.run_id,
        h.earlier_runs.len(),
        if h.earlier_runs.is_empty() {
            String::new()
        } else {
            format!(": {}", h.earlier_runs.join(", "))
        }
    ));
    let section = |out: &mut String, title: &str, items: Vec<String>| {
        out.push_str(&format!("\n{title} ({})\n", items.len()));
        if items.is_empty() {
            out.push_str("  none\n");
        }
        for i in items {
            out.push_str(&format!("  {i}\n"));
        }
    };
    let change = |c: &CaseChange| {
        let since = c
            .since_run
            .as_deref()
            .map(|r| format!(" (since {r})"))
            .unwrap_or_else(|| " (new case)".into());
        let why = match (&c.class, &c.message) {
            (Some(class), Some(m)) => format!(": {class}: {m}"),
            (Some(class), None) => format!(": {class}"),
            _ => String::new(),
        };
        format!("{} [{}]{since}{why}", c.case_id, c.model)
    };
    section(
        &mut out,
        "new failures",
        h.new_failures.iter().map(change).collect(),
    );
    section(&mut out, "fixed", h.fixed.iter().map(change).collect());
    section(
        &mut out,
        "still failing",
        h.still_failing.iter().map(change).collect(),
    );
    section(
        &mut out,
        "flaky",
        h.flaky
            .iter()
            .map(|f| format!("{} [{}]: {}", f.case_id, f.model, f.reason))
            .collect(),
    );
    section(
        &mut out,
        "pass rate per model (this run; whole window)",
        h.pass_rate_by_model
            .iter()
            .map(|r| {
                format!(
                    "{}: {}% ({}/{}); {}% ({}/{})",
                    r.model,
                    r.rate,
                    r.passed,
                    r.passed + r.failed,
                    r.window_rate,
                    r.window_passed,
                    r.window_passed + r.window_failed
                )
            })
            .collect(),
    );
    out
}
