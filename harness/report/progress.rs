//! Live progress for a person at a terminal: one line per device with its case, phase,
//! step, and the countdown of a parked wait. When stderr is not a terminal (CI, a log
//! file), plain timestamped lines instead, one per event, so nothing is lost to redraws.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::fleet::{FleetEvent, TimeScale};
use crate::model::duration::format_duration;
use crate::store::{Millis, now_millis};

enum Output {
    /// Redrawn lines, one per device.
    Live {
        multi: MultiProgress,
        bars: BTreeMap<String, ProgressBar>,
    },
    /// Append-only timestamped lines.
    Plain(Box<dyn Write + Send>),
}

/// Shows fleet progress. Feed it every event; call `tick()` about once a second so
/// countdowns move.
pub struct Progress {
    out: Output,
    scale: TimeScale,
    /// device -> (what it waits for, wall-clock end)
    parked: BTreeMap<String, (String, Millis)>,
    /// device -> case it is on
    cases: BTreeMap<String, String>,
}

impl Progress {
    /// Live lines on a terminal, plain lines otherwise.
    pub fn stderr(scale: TimeScale) -> Progress {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            Progress::with(
                Output::Live {
                    multi,
                    bars: BTreeMap::new(),
                },
                scale,
            )
        } else {
            Progress::plain(Box::new(std::io::stderr()), scale)
        }
    }

    /// Plain timestamped lines to `out`.
    pub fn plain(out: Box<dyn Write + Send>, scale: TimeScale) -> Progress {
        Progress::with(Output::Plain(out), scale)
    }

    fn with(out: Output, scale: TimeScale) -> Progress {
        Progress {
            out,
            scale,
            parked: BTreeMap::new(),
            cases: BTreeMap::new(),
        }
    }

    pub fn fleet(&mut self, event: &FleetEvent) {
        match event {
            FleetEvent::RunStarted {
                run_id,
                cases,
                devices,
                resumed,
            } => {
                let verb = if *resumed { "resuming" } else { "starting" };
                self.note(&format!(
                    "{verb} run {run_id}: {cases} cases on {devices} devices"
                ));
            }
            FleetEvent::Leased { case_id, device_id } => {
                self.cases.insert(device_id.clone(), case_id.clone());
                self.device(device_id, &format!("{case_id}: device leased"));
            }
            FleetEvent::WaitingForDevice {
                case_id,
                device_id,
                holder,
            } => {
                self.device(
                    device_id,
                    &format!("{case_id}: waiting, device leased by {holder}"),
                );
            }
            FleetEvent::PhaseStarted {
                case_id,
                device_id,
                phase,
            } => {
                self.parked.remove(device_id);
                self.device(device_id, &format!("{case_id}: {phase} flow running"));
            }
            FleetEvent::PhaseFinished {
                case_id,
                device_id,
                phase,
                outcome,
            } => {
                self.device(device_id, &format!("{case_id}: {phase} flow {outcome}"));
            }
            FleetEvent::Parked {
                case_id,
                device_id,
                next_phase,
                until,
            } => {
                self.parked.insert(
                    device_id.clone(),
                    (
                        format!("{case_id}: parked before {next_phase} flow"),
                        *until,
                    ),
                );
                let left = self.countdown(*until);
                self.device(
                    device_id,
                    &format!("{case_id}: parked before {next_phase} flow, {left} left"),
                );
            }
            FleetEvent::ParkedWaitOverdue {
                case_id,
                device_id,
                late_by_ms,
            } => {
                let late = format_duration(Duration::from_millis((*late_by_ms).max(0) as u64));
                self.device(
                    device_id,
                    &format!("{case_id}: gap already over when the runner came back ({late} late)"),
                );
            }
            FleetEvent::MovedToDevice {
                case_id,
                from,
                to,
                reason,
            } => {
                self.device(from, &format!("{case_id}: moved to {to} after: {reason}"));
            }
            FleetEvent::DeviceMarkedBad { device_id, reason } => {
                self.device(device_id, &format!("marked bad: {reason}"));
            }
            FleetEvent::CaseFinished {
                case_id,
                device_id,
                status,
                class,
                message,
            } => {
                self.parked.remove(device_id);
                let why = match (class, message) {
                    (Some(c), Some(m)) => format!(" [{c}] {m}"),
                    (None, Some(m)) => format!(" {m}"),
                    _ => String::new(),
                };
                self.device(device_id, &format!("{case_id}: {status}{why}"));
                if let Output::Live { multi, .. } = &self.out {
                    let _ = multi.println(format!("{device_id:<8} {case_id}: {status}{why}"));
                }
            }
            FleetEvent::RunFinished {
                run_id,
                passed,
                failed,
                skipped,
                interrupted,
            } => {
                let how = if *interrupted {
                    "interrupted"
                } else {
                    "finished"
                };
                self.note(&format!(
                    "run {run_id} {how}: {passed} passed, {failed} failed, {skipped} skipped"
                ));
            }
        }
    }

    /// A step-level line for a device (from the engine's events).
    pub fn step(&mut self, device: &str, text: &str) {
        let case = self.cases.get(device).cloned().unwrap_or_default();
        self.device(device, &format!("{case}: {text}"));
    }

    /// Moves the countdowns of parked devices (live output only; plain output has
    /// printed the end time already).
    pub fn tick(&mut self) {
        let Output::Live { bars, .. } = &self.out else {
            return;
        };
        for (device, (what, until)) in &self.parked {
            if let Some(bar) = bars.get(device) {
                bar.set_message(format!("{what}, {} left", self.countdown(*until)));
            }
        }
    }

    /// Time left of a parked wait, in process time (what the scenario says: `1h 30m`).
    fn countdown(&self, until: Millis) -> String {
        let wall = Duration::from_millis((until - now_millis()).max(0) as u64);
        let process = wall.mul_f64(self.scale.0.max(1.0));
        format_duration(process)
    }

    fn device(&mut self, device: &str, text: &str) {
        match &mut self.out {
            Output::Live { multi, bars } => {
                let bar = bars.entry(device.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:<8} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(device.to_string());
                    bar.enable_steady_tick(Duration::from_millis(250));
                    bar
                });
                bar.set_message(text.to_string());
            }
            Output::Plain(out) => {
                let _ = writeln!(
                    out,
                    "{} {device:<8} {text}",
                    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
                );
            }
        }
    }

    fn note(&mut self, text: &str) {
        match &mut self.out {
            Output::Live { multi, .. } => {
                let _ = multi.println(text);
            }
            Output::Plain(out) => {
                let _ = writeln!(
                    out,
                    "{} {text}",
                    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_carry_a_timestamp_the_device_and_a_countdown_in_process_time() {
        let sink = Sink::default();
        let mut p = Progress::plain(Box::new(sink.clone()), TimeScale(600.0));
        p.fleet(&FleetEvent::Leased {
            case_id: "e2e[join=entra]@pc01".into(),
            device_id: "pc01".into(),
        });
        // 9 s of wall time at scale 600 is the 90-minute gap.
        p.fleet(&FleetEvent::Parked {
            case_id: "e2e[join=entra]@pc01".into(),
            device_id: "pc01".into(),
            next_phase: "user".into(),
            until: now_millis() + 9_000,
        });
        p.step("pc01", "step 'Provision' attempt 2/3");
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].ends_with("pc01     e2e[join=entra]@pc01: device leased"),
            "{text}"
        );
        // Rounded down by a few ms of test time: 1h 29m 5xs .. 1h 30m.
        assert!(
            lines[1].contains("parked before user flow, 1h 29m")
                || lines[1].contains(", 1h 30m left"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("e2e[join=entra]@pc01: step 'Provision' attempt 2/3"),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.len() > 20 && l.as_bytes()[4] == b'-' && l.contains('T'))
        );
    }
}
