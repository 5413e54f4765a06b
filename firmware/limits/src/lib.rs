//! relaybox-limits owns what every relaybox listener uses to hold up against
//! a hostile peer, and the file-descriptor budget of a daemon:
//! - [`Gate`]: a cap on the connections a listener holds, in total and per
//!   source (an IPv4 address, an IPv6 /64, the uid of a UNIX socket peer),
//!   with a rate-limited log line naming the refused peer and the setting;
//! - [`AcceptErrors`]: what an accept loop does with an error (out of
//!   descriptors, say): a WARN at most every few seconds with a count, a
//!   pause that grows while the errors last, and never the end of the loop;
//! - [`Throttle`]: "log this at most once per period, with how many were
//!   left out";
//! - RLIMIT_NOFILE ([`raise_nofile`], [`DescriptorBudget`]): the soft limit
//!   raised to the hard one at start, and the descriptors the settings can
//!   need checked against it, so that a daemon refuses at start, naming the
//!   settings, rather than failing at its busiest moment.
//!
//! It knows nothing of the protocols spoken on the connections, of TLS or of
//! the settings' file; timeouts before and after authentication are the
//! protocol's business and stay with each listener.

#![forbid(unsafe_code)]

mod accept;
mod gate;
mod nofile;
mod throttle;

pub use accept::{is_exhaustion, next_tcp, AcceptErrors};
pub use gate::{Admission, ConnectionLimits, Gate, Refusal, Source};
pub use nofile::{nofile, raise_and_check, raise_nofile, BudgetError, DescriptorBudget, NofileLimit};
pub use throttle::Throttle;

/// How often a repeated warning (refused connections, accept errors) may be
/// logged; the lines in between are counted and the count goes in the next.
pub const WARN_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);
