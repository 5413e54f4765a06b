//! The file-descriptor limit (RLIMIT_NOFILE) and what the settings need.

use std::fmt::Write as _;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// A process's descriptor limit; `u64::MAX` stands for "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current limit.
pub fn nofile() -> NofileLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    NofileLimit { soft: current.unwrap_or(u64::MAX), hard: maximum.unwrap_or(u64::MAX) }
}

/// Raises the soft limit to the hard one (allowed to any process; the
/// default soft limit of 1024 is there for programs that still use
/// `select`). Returns the limit before and after.
pub fn raise_nofile() -> std::io::Result<(NofileLimit, NofileLimit)> {
    let before = nofile();
    if before.soft < before.hard {
        let hard = (before.hard != u64::MAX).then_some(before.hard);
        match setrlimit(Resource::Nofile, Rlimit { current: hard, maximum: hard }) {
            Ok(()) => {}
            // An unlimited hard limit: the kernel caps the soft one at
            // fs.nr_open, which a process cannot read without /proc.
            Err(_) if hard.is_none() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((before, nofile()))
}

/// The descriptors a daemon's settings can make it hold at once, item by
/// item, each named after the settings that decide it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorBudget {
    items: Vec<(String, u64)>,
}

/// The settings need more descriptors than the limit allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the settings can need {needed} file descriptors at once, more than the limit of {limit} (RLIMIT_NOFILE): \
     {items}. Lower these settings, or raise the hard limit before the daemon starts \
     (ulimit -n {needed} in the script that starts it, LimitNOFILE={needed} under systemd)"
)]
pub struct BudgetError {
    pub needed: u64,
    pub limit: u64,
    /// The budget's items, as in the message.
    pub items: String,
}

impl DescriptorBudget {
    pub fn new() -> Self {
        DescriptorBudget::default()
    }

    /// `count` descriptors for `what` (which names the settings).
    pub fn add(mut self, what: impl Into<String>, count: u64) -> Self {
        self.items.push((what.into(), count));
        self
    }

    pub fn total(&self) -> u64 {
        self.items.iter().fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
    }

    /// The items as "n for what, m for what".
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, (what, n)) in self.items.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{n} for {what}");
        }
        out
    }

    pub fn check(&self, limit: u64) -> Result<(), BudgetError> {
        let needed = self.total();
        if needed <= limit {
            return Ok(());
        }
        Err(BudgetError { needed, limit, items: self.describe() })
    }
}

/// At a daemon's start: raises the soft limit to the hard one, logs both
/// and what the settings need, and checks that it fits.
pub fn raise_and_check(daemon: &str, budget: &DescriptorBudget) -> Result<NofileLimit, BudgetError> {
    let limit = match raise_nofile() {
        Ok((before, after)) => {
            let shown = |n: u64| if n == u64::MAX { "unlimited".to_string() } else { n.to_string() };
            tracing::info!(
                soft = %shown(after.soft),
                hard = %shown(after.hard),
                needed = budget.total(),
                "{daemon}: file descriptor limit {} (raised from {}); the settings need up to {} ({})",
                shown(after.soft),
                shown(before.soft),
                budget.total(),
                budget.describe()
            );
            after
        }
        Err(e) => {
            let now = nofile();
            tracing::warn!("{daemon}: could not raise the file descriptor limit from {}: {e}", now.soft);
            now
        }
    };
    budget.check(limit.soft)?;
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_every_item_and_the_limit() {
        let budget =
            DescriptorBudget::new().add("media ports ([Relay] port_range 40000:60000)", 20_000).add("margin", 64);
        assert_eq!(budget.total(), 20_064);
        assert!(budget.check(20_064).is_ok());
        let e = budget.check(4096).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("20064 file descriptors"), "{text}");
        assert!(text.contains("limit of 4096"), "{text}");
        assert!(text.contains("20000 for media ports ([Relay] port_range 40000:60000), 64 for margin"), "{text}");
        assert!(text.contains("ulimit -n 20064"), "{text}");
    }

    #[test]
    fn the_soft_limit_can_be_read() {
        let now = nofile();
        assert!(now.soft <= now.hard);
        assert!(now.soft >= 3);
    }
}
