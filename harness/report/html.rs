//! `report.html` for engineers: one self-contained file (inline CSS, screenshots as
//! `data:` URIs, no scripts, no external fetches) that opens from `file://` on a laptop.
//!
//! Order of the page: the run at a glance (scenario x model), then failures with class,
//! code, cause and remedy, then a timeline per device (phases and the gaps between
//! them), the history against earlier runs, and every case in detail.

use base64::Engine as _;
use serde::Serialize;

use super::ReportError;
use super::summary::{ArtifactRef, CaseSummary, RunSummary};

const TEMPLATE: &str = include_str!("templates/report.html.tera");

/// Screenshots up to this size are embedded; larger ones are linked.
const EMBED_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Serialize)]
struct Page<'a> {
    run: &'a RunSummary,
    failed: Vec<CaseView<'a>>,
    others: Vec<CaseView<'a>>,
    timelines: Vec<DeviceTimeline>,
}

#[derive(Serialize)]
struct CaseView<'a> {
    case: &'a CaseSummary,
    screenshots: Vec<Shot>,
    files: Vec<&'a ArtifactRef>,
}

#[derive(Serialize)]
struct Shot {
    label: String,
    /// A `data:` URI, or a relative link when too large to embed.
    src: String,
    embedded: bool,
}

#[derive(Serialize)]
struct DeviceTimeline {
    device: String,
    model: String,
    /// Lab seconds the longest case on the device took (the scale of its rows).
    span: String,
    rows: Vec<TimelineRow>,
}

#[derive(Serialize)]
struct TimelineRow {
    case_id: String,
    status: String,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct Bar {
    /// `phase`, `gap`.
    kind: String,
    /// The phase's status, for its colour.
    status: String,
    label: String,
    left: String,
    width: String,
}

pub fn render(summary: &RunSummary) -> Result<String, ReportError> {
    let page = Page {
        run: summary,
        failed: summary
            .cases
            .iter()
            .filter(|c| c.status == "failed")
            .map(case_view)
            .collect(),
        others: summary
            .cases
            .iter()
            .filter(|c| c.status != "failed")
            .map(case_view)
            .collect(),
        timelines: timelines(summary),
    };
    let context = tera::Context::from_serialize(&page)
        .map_err(|e| ReportError::Harness(format!("report context: {e}")))?;
    let mut tera = tera::Tera::default();
    tera.add_raw_template("report.html", TEMPLATE)
        .map_err(|e| ReportError::Harness(format!("report template: {e:?}")))?;
    tera.autoescape_on(vec![".html"]);
    tera.render("report.html", &context)
        .map_err(|e| ReportError::Harness(format!("report template: {e:?}")))
}

fn case_view(case: &CaseSummary) -> CaseView<'_> {
    let mut screenshots = Vec::new();
    let mut files = Vec::new();
    for a in &case.artifacts {
        let lower = a.path.to_ascii_lowercase();
        let mime = if lower.ends_with(".png") {
            Some("image/png")
        } else if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
            Some("image/jpeg")
        } else {
            None
        };
        match mime {
            Some(mime) => {
                let label = match (&a.phase, &a.step) {
                    (Some(p), Some(s)) => format!("{p} / {s}"),
                    _ => a.path.clone(),
                };
                let embedded = (a.bytes <= EMBED_MAX_BYTES)
                    .then(|| std::fs::read(&a.abs_path).ok())
                    .flatten()
                    .filter(|b| b.len() as u64 <= EMBED_MAX_BYTES);
                screenshots.push(match embedded {
                    Some(bytes) => Shot {
                        label,
                        src: format!(
                            "data:{mime};base64,{}",
                            base64::engine::general_purpose::STANDARD.encode(bytes)
                        ),
                        embedded: true,
                    },
                    None => Shot {
                        label,
                        src: link(&a.path),
                        embedded: false,
                    },
                });
            }
            None => files.push(a),
        }
    }
    CaseView {
        case,
        screenshots,
        files,
    }
}

/// A link from report.html: relative paths stay relative, absolute ones become file://.
fn link(path: &str) -> String {
    if path.starts_with('/') {
        format!("file://{path}")
    } else {
        path.to_string()
    }
}

fn timelines(summary: &RunSummary) -> Vec<DeviceTimeline> {
    let mut devices: Vec<(&str, &str)> = summary
        .cases
        .iter()
        .map(|c| (c.device.id.as_str(), c.device.model.as_str()))
        .collect();
    devices.sort();
    devices.dedup();
    devices
        .into_iter()
        .map(|(device, model)| {
            let cases: Vec<&CaseSummary> = summary
                .cases
                .iter()
                .filter(|c| c.device.id == device)
                .collect();
            let span = cases
                .iter()
                .map(|c| c.duration_s)
                .fold(0.0_f64, f64::max)
                .max(1.0);
            let pct = |s: f64| format!("{:.2}%", (s / span * 100.0).clamp(0.0, 100.0));
            let rows = cases
                .iter()
                .map(|c| {
                    let mut bars = Vec::new();
                    let mut previous_end: Option<f64> = None;
                    for p in &c.phases {
                        let (Some(start), end) = (p.start_s, p.end_s) else {
                            continue;
                        };
                        let end = end.unwrap_or(c.duration_s).max(start);
                        if let Some(prev) = previous_end
                            && start > prev
                        {
                            let demanded = p
                                .gap_min_s
                                .map(|m| format!(", at least {} demanded", human(m)))
                                .unwrap_or_default();
                            bars.push(Bar {
                                kind: "gap".into(),
                                status: "gap".into(),
                                label: format!("gap {}{demanded}", human(start - prev)),
                                left: pct(prev),
                                width: pct(start - prev),
                            });
                        }
                        bars.push(Bar {
                            kind: "phase".into(),
                            status: p.status.clone(),
                            label: format!("{} ({}, {})", p.name, p.status, human(end - start)),
                            left: pct(start),
                            width: pct((end - start).max(span / 400.0)),
                        });
                        previous_end = Some(end);
                    }
                    TimelineRow {
                        case_id: c.case_id.clone(),
                        status: c.status.clone(),
                        bars,
                    }
                })
                .collect();
            DeviceTimeline {
                device: device.to_string(),
                model: model.to_string(),
                span: human(span),
                rows,
            }
        })
        .collect()
}

/// Lab seconds as `1h 32m`, `4m 10s`, `12s`.
fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(5400.0), "1h 30m");
        assert_eq!(human(250.0), "4m 10s");
        assert_eq!(human(12.4), "12s");
        assert_eq!(human(200.0 * 86400.0), "200d 0h");
    }
}
