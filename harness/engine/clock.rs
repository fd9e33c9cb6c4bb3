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

/// The shortest wall time an attempt gets. Transports (SSH, HTTP, a serial link) run
/// at wall speed whatever the lab's time scale: at scale 600 a 2-minute step would leave
/// 200 ms for an SSH handshake, and the step would fail for the lab's speed, not the
/// device's. Only scaled clocks are affected; on the wall clock every step timeout that
/// is longer than this stays as written.
pub const MIN_ATTEMPT_WALL: Duration = Duration::from_secs(10);

/// The shortest wall time a phase gets, for the same reason: a phase is many attempts,
/// each of which may spend seconds of wall time on transports.
pub const MIN_PHASE_WALL: Duration = Duration::from_secs(90);

/// How much slower a long wait polls: never more than this long between two reads.
pub const MAX_POLL: Duration = Duration::from_secs(30);

/// The poll interval after `waited` of a wait that polls every `base`: `base` for the
/// first twelve reads, then a twelfth of the time waited so far, at most [`MAX_POLL`]
/// (or `base` if that is longer). A 40-minute ESP is then read about 100 times instead
/// of 480, and what the device shows is still seen within a twelfth of the time waited
/// (30 s at most). Every read of a screen is an OCR on the KVM (seconds of CPU on a
/// Raspberry Pi); every read of the tenant counts against Graph's throttling.
pub fn backoff(base: Duration, waited: Duration) -> Duration {
    (waited / 12).clamp(base, MAX_POLL.max(base))
}

/// A poll interval of `lab`, stretched so it lasts at least [`MIN_POLL_WALL`] of wall time.
pub fn poll_interval(clock: &dyn Clock, lab: Duration) -> Duration {
    at_least_wall(clock, lab, MIN_POLL_WALL)
}

/// `lab`, stretched so it lasts at least `min_wall` of wall time on this clock.
pub fn at_least_wall(clock: &dyn Clock, lab: Duration, min_wall: Duration) -> Duration {
    if clock.wall(lab) >= min_wall {
        return lab;
    }
    // Measured over a long span so nanosecond rounding does not show; whole milliseconds.
    const SPAN: f64 = 1_000_000.0;
    let wall_per_span = clock.wall(Duration::from_secs_f64(SPAN)).as_secs_f64();
    if wall_per_span <= 0.0 {
        return lab;
    }
    let millis = (min_wall.as_secs_f64() * SPAN / wall_per_span * 1000.0).round();
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
    fn long_waits_poll_less_often_up_to_a_cap() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, Duration::ZERO), base);
        assert_eq!(backoff(base, Duration::from_secs(60)), base);
        assert_eq!(
            backoff(base, Duration::from_secs(120)),
            Duration::from_secs(10)
        );
        assert_eq!(backoff(base, Duration::from_secs(3600)), MAX_POLL);
        // A base longer than the cap is kept as the user set it.
        let slow = Duration::from_secs(45);
        assert_eq!(backoff(slow, Duration::from_secs(3600)), slow);
        // Forty minutes of waiting: about a hundred reads, not 480.
        let (mut waited, mut reads) = (Duration::ZERO, 0);
        while waited < Duration::from_secs(40 * 60) {
            waited += backoff(base, waited);
            reads += 1;
        }
        assert!((80..=120).contains(&reads), "{reads} reads");
    }

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
