//! Wall-clock milliseconds that never jump: a Unix timestamp taken once at
//! start, advanced by the monotonic clock. The session core gets its time
//! from here and from nowhere else.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: u64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let base_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { base_unix_ms, base: Instant::now() }
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }

    /// The `Instant` at which the clock will read `unix_ms`.
    pub fn instant_at(&self, unix_ms: u64) -> Instant {
        self.base + std::time::Duration::from_millis(unix_ms.saturating_sub(self.base_unix_ms))
    }

    /// How far the system's wall clock has moved from this clock since it
    /// started, in whole seconds: non-zero after the clock was set (a box
    /// without an RTC that learned the time over NTP after we started).
    pub fn wall_step_secs(&self) -> i64 {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        (real - self.now_ms() as i64) / 1000
    }

    /// Moves a Unix time of this clock (`start_time` of a report) onto the
    /// system's wall clock when that was stepped by a second or more.
    pub fn wall_secs(&self, secs: u64) -> u64 {
        secs.saturating_add_signed(self.wall_step_secs())
    }

    pub fn uptime_secs(&self) -> u64 {
        self.base.elapsed().as_secs()
    }
}

#[cfg(test)]
mod wall_tests {
    use super::*;

    #[test]
    fn report_times_follow_a_wall_clock_set_after_the_start() {
        // As if the relay started at 1970-01-01 00:00:10 (no RTC) and NTP
        // then set the system clock to today.
        let clock = Clock { base_unix_ms: 10_000, base: Instant::now() };
        let today = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let answered = clock.now_ms() / 1000 + 3; // a call answered 3 s later, on our clock
        let reported = clock.wall_secs(answered);
        assert!(reported.abs_diff(today + 3) <= 1, "{reported} vs {}", today + 3);
        // A clock that started right is left alone.
        let right = Clock::new();
        assert_eq!(right.wall_secs(1_700_000_000), 1_700_000_000);
    }
}
