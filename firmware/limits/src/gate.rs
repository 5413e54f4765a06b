//! Connection caps per listener and per source.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Throttle, WARN_PERIOD};

/// Where a connection comes from, for the per-source cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 ones included), or the /64
    /// network of an IPv6 address: one host usually has a whole /64 to
    /// pick addresses from.
    Ip(IpAddr),
    /// The user id of a UNIX socket peer.
    Uid(u32),
    /// A peer whose credentials could not be read; all such peers share
    /// one count.
    Unknown,
}

impl Source {
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                Source::Ip(IpAddr::V6(Ipv6Addr::from(segments)))
            }
            v4 => Source::Ip(v4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(net)) => write!(f, "{net}/64"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Uid(uid) => write!(f, "uid {uid}"),
            Source::Unknown => f.write_str("peers of unknown identity"),
        }
    }
}

/// A listener's caps, and the settings that set them (named in the log
/// line of a refusal, so that the operator knows what to raise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once, authenticated or not.
    pub total: usize,
    /// Most connections open at once from one [`Source`].
    pub per_source: usize,
    pub total_setting: &'static str,
    pub per_source_setting: &'static str,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the listener holds {limit} connections, its limit ({setting})")]
    Total { limit: usize, setting: &'static str },
    #[error("{limit} connections from the same source are open, the limit per source ({setting})")]
    PerSource { limit: usize, setting: &'static str },
}

/// Counts one listener's open connections, in total and per source, and
/// refuses those beyond its [`ConnectionLimits`]. An [`Admission`] holds a
/// place until it is dropped (when the connection's task ends).
#[derive(Debug)]
pub struct Gate {
    listener: &'static str,
    limits: ConnectionLimits,
    state: Mutex<State>,
    refusals: Throttle,
    /// Connections refused so far (for metrics).
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    by_source: HashMap<Source, usize>,
}

/// One admitted connection's place in its [`Gate`].
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    source: Source,
}

impl Admission {
    pub fn source(&self) -> Source {
        self.source
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(n) = state.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.by_source.remove(&self.source);
            }
        }
    }
}

impl Gate {
    /// `listener` names the listener in log lines ("management port").
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate {
            listener,
            limits,
            state: Mutex::new(State::default()),
            refusals: Throttle::new(WARN_PERIOD),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// The name given at [`Gate::new`].
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Connections refused since the gate was made (either cap).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now from `source`.
    pub fn open_from(&self, source: Source) -> usize {
        self.lock().by_source.get(&source).copied().unwrap_or(0)
    }

    /// A place for one more connection from `source`, or why not.
    pub fn try_admit(self: &Arc<Self>, source: Source) -> Result<Admission, Refusal> {
        let mut state = self.lock();
        let from_source = state.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.per_source {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerSource { limit: self.limits.per_source, setting: self.limits.per_source_setting });
        }
        if state.open >= self.limits.total {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total { limit: self.limits.total, setting: self.limits.total_setting });
        }
        state.open += 1;
        *state.by_source.entry(source).or_insert(0) += 1;
        Ok(Admission { gate: self.clone(), source })
    }

    /// [`try_admit`](Self::try_admit); a refusal is logged (a WARN naming
    /// `peer`, at most every [`WARN_PERIOD`], with how many more were
    /// refused in between) and the caller just closes the connection.
    pub fn admit(self: &Arc<Self>, source: Source, peer: &dyn fmt::Display) -> Option<Admission> {
        match self.try_admit(source) {
            Ok(admission) => Some(admission),
            Err(refusal) => {
                if let Some(held_back) = self.refusals.ready() {
                    let more = if held_back > 0 {
                        format!(" ({held_back} more refused since the last such line)")
                    } else {
                        String::new()
                    };
                    tracing::warn!(
                        listener = self.listener,
                        peer = %peer,
                        "{}: connection from {peer} refused: {refusal}{more}",
                        self.listener
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_source: usize) -> Arc<Gate> {
        Gate::new("test", ConnectionLimits { total, per_source, total_setting: "t", per_source_setting: "p" })
    }

    #[test]
    fn caps_per_source_and_in_total_and_places_come_back() {
        let g = gate(3, 2);
        let a = Source::from_ip("192.0.2.1".parse().unwrap());
        let b = Source::from_ip("192.0.2.2".parse().unwrap());
        let c = Source::Uid(7);
        let a1 = g.try_admit(a).unwrap();
        let _a2 = g.try_admit(a).unwrap();
        assert_eq!(g.try_admit(a).unwrap_err(), Refusal::PerSource { limit: 2, setting: "p" });
        let _b1 = g.try_admit(b).unwrap();
        assert_eq!(g.try_admit(c).unwrap_err(), Refusal::Total { limit: 3, setting: "t" });
        assert_eq!((g.open(), g.open_from(a)), (3, 2));
        assert_eq!(g.refused(), 2, "both refusals counted");
        drop(a1);
        assert_eq!((g.open(), g.open_from(a)), (2, 1));
        let c1 = g.try_admit(c).unwrap();
        assert_eq!(c1.source(), c);
        drop(c1);
        assert_eq!(g.open_from(c), 0);
        assert!(!g.lock().by_source.contains_key(&c), "no entry left for a source that went");
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        let one = Source::from_ip("2001:db8:1:2:aaaa::1".parse().unwrap());
        let other = Source::from_ip("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(one, other);
        assert_eq!(one.to_string(), "2001:db8:1:2::/64");
        assert_ne!(one, Source::from_ip("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(Source::from_ip("::ffff:192.0.2.1".parse().unwrap()), Source::from_ip("192.0.2.1".parse().unwrap()));
        assert_eq!(Source::from_ip("192.0.2.1".parse().unwrap()).to_string(), "192.0.2.1");
    }
}
