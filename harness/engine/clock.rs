//! The engine's time. Every timeout, backoff, poll interval and wait in a scenario is
//! written in lab time; the clock turns lab time into waiting. On hardware lab time is
//! the wall clock; in the virtual lab it runs `scale` times faster, so a 90-minute wait
//! at scale 600 takes 9 seconds of wall time.
//!
//! Both clocks sit on tokio's timer, so tests with paused tokio time are deterministic.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// Lab time, counted from when the clock was made.
pub type LabTime = Duration;

#[async_trait]
pub trait Clock: Send + Sync {
    /// Lab time since the clock was made. Never goes backwards.
    fn now(&self) -> LabTime;
    /// Returns once `now() >= at`.
    async fn sleep_until(&self, at: LabTime);
    /// Wall time that `lab` takes to pass; used for timeouts handed to backends, which
    /// count wall time.
    fn wall(&self, lab: Duration) -> Duration;

    /// Sleeps for a lab-time duration.
    async fn sleep(&self, lab: Duration) {
        let at = self.now() + lab;
        self.sleep_until(at).await
    }
}

/// The wall clock (a hardware lab).
#[derive(Debug)]
pub struct WallClock {
    origin: Instant,
}

impl WallClock {
    pub fn new() -> Self {
        WallClock {
            origin: Instant::now(),
        }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Clock for WallClock {
    fn now(&self) -> LabTime {
        self.origin.elapsed()
    }

    async fn sleep_until(&self, at: LabTime) {
        match self.origin.checked_add(at) {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // Further away than the platform can count: that is never.
            None => std::future::pending().await,
        }
    }

    fn wall(&self, lab: Duration) -> Duration {
        lab
    }
}

/// Lab time running `scale` times faster than the wall clock (the virtual lab).
#[derive(Debug)]
pub struct ScaledClock {
    origin: Instant,
    scale: f64,
}

impl ScaledClock {
    /// A scale that is not a positive finite number falls back to 1 (real time): a
    /// nonsense scale must not turn every timeout into zero or forever.
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        ScaledClock {
            origin: Instant::now(),
            scale,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }
}

#[async_trait]
impl Clock for ScaledClock {
    fn now(&self) -> LabTime {
        self.origin.elapsed().mul_f64(self.scale)
    }

    async fn sleep_until(&self, at: LabTime) {
        // Float rounding can leave `now()` a hair short of `at` after one sleep, so sleep
        // again; the 1 ms floor keeps that from spinning.
        loop {
            let now = self.now();
            if now >= at {
                return;
            }
            let wall = self.wall(at - now).max(Duration::from_millis(1));
            tokio::time::sleep(wall).await;
        }
    }

    fn wall(&self, lab: Duration) -> Duration {
        lab.div_f64(self.scale)
    }
}

/// The shortest wall time between two reads of a device while polling. At scale 600 a
/// 5-second lab poll would hit a KVM's OCR every 8 ms; this keeps it reasonable.
pub const MIN_POLL_WALL: Duration = Duration::from_millis(100);

/// A poll interval of `lab`, stretched so it lasts at least [`MIN_POLL_WALL`] of wall time.
pub fn poll_interval(clock: &dyn Clock, lab: Duration) -> Duration {
    if clock.wall(lab) >= MIN_POLL_WALL {
        return lab;
    }
    // Measured over a long span so nanosecond rounding does not show; whole milliseconds.
    const SPAN: f64 = 1_000_000.0;
    let wall_per_span = clock.wall(Duration::from_secs_f64(SPAN)).as_secs_f64();
    if wall_per_span <= 0.0 {
        return lab;
    }
    let millis = (MIN_POLL_WALL.as_secs_f64() * SPAN / wall_per_span * 1000.0).round();
    if millis.is_finite() && millis < u64::MAX as f64 {
        Duration::from_millis(millis as u64)
    } else {
        lab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_stretched_to_the_wall_floor_only_when_needed() {
        let wall = WallClock::new();
        assert_eq!(
            poll_interval(&wall, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(poll_interval(&wall, Duration::ZERO), MIN_POLL_WALL);
        let scaled = ScaledClock::new(600.0);
        // 5 lab seconds are 8.3 ms of wall time: stretched to 100 ms = 60 lab seconds.
        assert_eq!(
            poll_interval(&scaled, Duration::from_secs(5)),
            Duration::from_secs(60)
        );
        assert_eq!(
            poll_interval(&scaled, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
    }
}
