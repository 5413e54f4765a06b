//! [`MemoryFlowTable`]: the kernel's conntrack table as a list, with the
//! kernel's rules for tuple clashes, for tests of code above [`FlowTable`].

use std::sync::Mutex;

use crate::{Counters, Entry, Error, FlowSpec, FlowTable, Tuple};

/// An in-memory [`FlowTable`]. Counters are whatever a test sets with
/// [`MemoryFlowTable::set_counters`].
#[derive(Debug, Default)]
pub struct MemoryFlowTable {
    entries: Mutex<Vec<Entry>>,
}

impl MemoryFlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry as the kernel would for a packet nobody planned for
    /// (no NAT, no mark): the race the relay must handle.
    pub fn insert_plain(&self, orig: Tuple) {
        let reply = Tuple { src: orig.dst, dst: orig.src };
        self.lock().push(Entry {
            orig,
            reply,
            mark: 0,
            id: None,
            status: 0,
            timeout: None,
            counters: Counters::default(),
        });
    }

    /// Sets the counters of the entry holding `tuple`; false if none does.
    pub fn set_counters(&self, tuple: &Tuple, counters: Counters) -> bool {
        let mut entries = self.lock();
        let found = entries.iter_mut().find(|e| matches(e, tuple));
        found.map(|e| e.counters = counters).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn matches(e: &Entry, tuple: &Tuple) -> bool {
    e.orig == *tuple || e.reply == *tuple
}

impl FlowTable for MemoryFlowTable {
    fn create(&self, flow: &FlowSpec) -> Result<(), Error> {
        flow.check()?;
        let mut entries = self.lock();
        // The kernel keys both directions: a clash on either is EEXIST.
        if entries.iter().any(|e| matches(e, &flow.orig()) || matches(e, &flow.reply())) {
            return Err(Error::Exists);
        }
        entries.push(Entry {
            orig: flow.orig(),
            reply: flow.reply(),
            mark: flow.mark,
            id: None,
            status: 0,
            timeout: Some(flow.timeout_secs),
            counters: Counters::default(),
        });
        Ok(())
    }

    fn delete(&self, tuple: &Tuple) -> Result<(), Error> {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| !matches(e, tuple));
        if entries.len() == before {
            Err(Error::NotFound)
        } else {
            Ok(())
        }
    }

    fn get(&self, tuple: &Tuple) -> Result<Entry, Error> {
        self.lock().iter().find(|e| matches(e, tuple)).cloned().ok_or(Error::NotFound)
    }

    fn dump(&self, mark: u32) -> Result<Vec<Entry>, Error> {
        Ok(self.lock().iter().filter(|e| e.mark == mark).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes_like_the_kernel() {
        let flow = FlowSpec {
            caller: "192.0.2.10:4000".parse().unwrap(),
            relay_caller_side: "198.51.100.1:40000".parse().unwrap(),
            relay_callee_side: "198.51.100.1:40002".parse().unwrap(),
            callee: "203.0.113.20:5000".parse().unwrap(),
            timeout_secs: 60,
            mark: 7,
        };
        let t = MemoryFlowTable::new();
        // The callee's first packet made a plain entry for callee → relay:B.
        t.insert_plain(flow.reply());
        assert!(matches!(t.create(&flow), Err(Error::Exists)));
        t.delete(&flow.reply()).unwrap();
        t.create(&flow).unwrap();
        assert_eq!(t.dump(7).unwrap().len(), 1);
        assert!(t.set_counters(&flow.reply(), Counters { orig_packets: 3, ..Counters::default() }));
        assert_eq!(t.counters(&flow.orig()).unwrap().orig_packets, 3);
        t.delete(&flow.orig()).unwrap();
        assert!(matches!(t.delete(&flow.orig()), Err(Error::NotFound)));
        assert!(t.is_empty());
        let mixed = FlowSpec { callee: "[2001:db8::1]:5000".parse().unwrap(), ..flow };
        assert!(matches!(t.create(&mixed), Err(Error::Invalid(_))));
    }
}
