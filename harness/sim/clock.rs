//! Lab time. The virtual lab runs `scale` times faster than the wall clock; every device
//! duration and every timing rule (the 90-minute gap, the 6-month limit) is measured in
//! lab time, so they all stay consistent with each other at any scale.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in lab time: how long since the lab's epoch (Unix epoch, in lab time).
pub type LabTime = Duration;

/// The lab's clock. `now()` starts at the wall clock's Unix time when the lab starts and
/// then advances `scale` times faster; `advance()` (test-only control endpoint) jumps
/// ahead, e.g. to age a device past six months.
#[derive(Debug)]
pub struct LabClock {
    scale: f64,
    started_wall: Instant,
    started_lab: LabTime,
    skipped: Mutex<Duration>,
}

impl LabClock {
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        LabClock {
            scale,
            started_wall: Instant::now(),
            started_lab: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            skipped: Mutex::new(Duration::ZERO),
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The current lab time.
    pub fn now(&self) -> LabTime {
        let elapsed = self.started_wall.elapsed().mul_f64(self.scale);
        self.started_lab + elapsed + *self.skipped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jumps lab time forward (test-only control).
    pub fn advance(&self, by: Duration) {
        *self.skipped.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// How long to wait on the wall clock for `lab` to pass in lab time.
    pub fn wall(&self, lab: Duration) -> Duration {
        lab.div_f64(self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_time_runs_faster_and_can_jump() {
        let clock = LabClock::new(600.0);
        assert_eq!(
            clock.wall(Duration::from_secs(90 * 60)),
            Duration::from_secs(9)
        );
        let before = clock.now();
        clock.advance(Duration::from_secs(86400));
        assert!(clock.now() >= before + Duration::from_secs(86400));
    }

    #[test]
    fn nonsense_scale_falls_back_to_real_time() {
        assert_eq!(LabClock::new(0.0).scale(), 1.0);
        assert_eq!(LabClock::new(f64::NAN).scale(), 1.0);
    }
}
