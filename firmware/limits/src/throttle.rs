//! Rate limiting for log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets an event through at most once per period and counts the ones it
/// holds back, so that an attack makes a few log lines, not millions.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Throttle { period, state: Mutex::new(State::default()) }
    }

    /// `Some(n)` when the event may be logged now, `n` being how many were
    /// held back since the last one that was; `None` when it must not.
    pub fn ready(&self) -> Option<u64> {
        self.ready_at(Instant::now())
    }

    fn ready_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period_with_the_count_of_the_rest() {
        let t = Throttle::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(t.ready_at(start), Some(0));
        for ms in [1, 100, 4999] {
            assert_eq!(t.ready_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.ready_at(start + Duration::from_secs(5)), Some(3));
        assert_eq!(t.ready_at(start + Duration::from_secs(6)), None);
        assert_eq!(t.ready_at(start + Duration::from_secs(11)), Some(1));
    }
}
