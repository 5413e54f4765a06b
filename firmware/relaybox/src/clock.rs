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

    pub fn uptime_secs(&self) -> u64 {
        self.base.elapsed().as_secs()
    }
}
