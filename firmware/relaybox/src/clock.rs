//! Wall-clock milliseconds that never jump: a Unix timestamp taken once at
//! start, advanced by the monotonic clock. The session core gets its time
//! from here and from nowhere else.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use relaybox_core::ClockMark;

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

    /// A clock that continues the timescale of the one that took `mark`
    /// (the previous relay's, before a SIGUSR1 restart), so the times in the
    /// sessions it saved still mean what they meant, even if the wall clock
    /// was set in between. Falls back to [`new`](Self::new) when the mark is
    /// from another boot or the boot clock cannot be read.
    pub fn resume(mark: Option<ClockMark>) -> Self {
        let now = BootClock::read();
        match (mark, now) {
            (Some(mark), Some(now)) if mark.boot_id == now.boot_id && now.since_boot_ms >= mark.since_boot_ms => {
                Clock { base_unix_ms: mark.at + (now.since_boot_ms - mark.since_boot_ms), base: Instant::now() }
            }
            _ => Clock::new(),
        }
    }

    /// Where this clock stands against the boot clock, for a snapshot; a mark
    /// with a zero boot id (no /proc) is never resumed.
    pub fn mark(&self) -> ClockMark {
        let boot = BootClock::read().unwrap_or(BootClock { boot_id: [0; 16], since_boot_ms: 0 });
        ClockMark { at: self.now_ms(), boot_id: boot.boot_id, since_boot_ms: boot.since_boot_ms }
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
    pub fn wall_secs(&self, secs: f64) -> f64 {
        secs + self.wall_step_secs() as f64
    }

    pub fn uptime_secs(&self) -> u64 {
        self.base.elapsed().as_secs()
    }
}

/// This boot and the time since it (CLOCK_BOOTTIME: counts suspend, never
/// set).
struct BootClock {
    boot_id: [u8; 16],
    since_boot_ms: u64,
}

impl BootClock {
    fn read() -> Option<Self> {
        // The boot id cannot change under a running process: read it once.
        static BOOT_ID: std::sync::OnceLock<Option<[u8; 16]>> = std::sync::OnceLock::new();
        let boot_id = (*BOOT_ID.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            parse_uuid(text.trim()).filter(|id| *id != [0; 16])
        }))?;
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let since_boot_ms = u64::try_from(t.tv_sec).ok()? * 1000 + u64::try_from(t.tv_nsec).ok()? / 1_000_000;
        Some(BootClock { boot_id, since_boot_ms })
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as 16 bytes.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
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
        let answered = (clock.now_ms() / 1000 + 3) as f64; // a call answered 3 s later, on our clock
        let reported = clock.wall_secs(answered);
        assert!((reported - (today + 3) as f64).abs() <= 1.0, "{reported} vs {}", today + 3);
        // A clock that started right is left alone.
        let right = Clock::new();
        assert_eq!(right.wall_secs(1_700_000_000.5), 1_700_000_000.5);
    }

    #[test]
    fn a_restarted_relay_continues_the_previous_timescale_after_the_wall_clock_was_set() {
        // The previous relay started in 1970 (no RTC) and saved its
        // sessions at its 00:01:40; NTP set the wall clock since.
        let old = Clock { base_unix_ms: 90_000, base: Instant::now() };
        let mark = ClockMark { at: 100_000, ..old.mark() };
        assert_ne!(mark.boot_id, [0; 16], "this test needs /proc/sys/kernel/random/boot_id");
        let resumed = Clock::resume(Some(mark));
        // Same timescale: the sessions' times stay fresh ...
        assert!((100_000..100_000 + 2_000).contains(&resumed.now_ms()), "{}", resumed.now_ms());
        // ... and reports still carry today's wall time.
        let today = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((resumed.wall_secs((resumed.now_ms() / 1000) as f64) - today as f64).abs() <= 1.0);
        // A mark of another boot (or without one) starts on the wall clock.
        for other in [Some(ClockMark { boot_id: [9; 16], ..mark }), None] {
            assert!(Clock::resume(other).now_ms().abs_diff(today * 1000) < 2_000);
        }
        // A mark from later in this boot than now is another boot too.
        let future = ClockMark { since_boot_ms: mark.since_boot_ms + 10_000_000, ..mark };
        assert!(Clock::resume(Some(future)).now_ms().abs_diff(today * 1000) < 2_000);
    }

    #[test]
    fn boot_ids_parse_as_uuids() {
        let id = parse_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        assert_eq!(id[0], 0x0f);
        assert_eq!(id[15], 0xf0);
        assert_eq!(parse_uuid("0f1e2d3c"), None);
        assert_eq!(parse_uuid("zz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), None);
    }
}
