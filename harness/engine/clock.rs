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
