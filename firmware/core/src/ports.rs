//! The pool of relay port pairs: even RTP port `p` plus `p + 1` for RTCP.
//! Free pairs are handed out from the front and returned to the back, so a
//! released pair is not reused at once. The owner table makes a double hand
//! out or a double release impossible.

use std::collections::VecDeque;

use crate::session::Side;
use crate::Event;

/// Who holds a port pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortOwner {
    pub session: u64,
    pub stream: u32,
    pub side: Side,
}

#[derive(Debug, Clone)]
pub(crate) struct PortPool {
    /// The first even port of the range (never 0).
    first: u32,
    free: VecDeque<u16>,
    /// Pairs the daemon could not bind, out of rotation until
    /// [`unpark`](Self::unpark) (the next update): one update never gets
    /// the same busy pair twice, so moving a busy pair always ends.
    parked: Vec<u16>,
    /// One slot per pair of the range.
    owners: Vec<Option<PortOwner>>,
    in_use: usize,
}

impl PortPool {
    pub fn new((start, end): (u16, u16)) -> Self {
        let mut first = u32::from(start).max(2);
        first += first & 1;
        let end = u32::from(end);
        let mut free = VecDeque::new();
        let mut p = first;
        while p + 1 < end {
            if let Ok(port) = u16::try_from(p) {
                free.push_back(port);
            }
            p += 2;
        }
        let owners = vec![None; free.len()];
        PortPool { first, free, parked: Vec::new(), owners, in_use: 0 }
    }

    fn slot(&self, port: u16) -> Option<usize> {
        let port = u32::from(port);
        if port < self.first || port & 1 == 1 {
            return None;
        }
        let index = usize::try_from((port - self.first) / 2).ok()?;
        (index < self.owners.len()).then_some(index)
    }

    pub fn owner(&self, port: u16) -> Option<PortOwner> {
        self.slot(port).and_then(|i| self.owners.get(i).copied().flatten())
    }

    /// Pairs not held (parked ones included: they are tried again later).
    pub fn free_pairs(&self) -> usize {
        self.free.len() + self.parked.len()
    }

    pub fn pairs_in_use(&self) -> usize {
        self.in_use
    }

    /// Hands out the pair at the front of the free list.
    pub fn allocate(&mut self, owner: PortOwner, events: &mut VecDeque<Event>) -> Option<u16> {
        while let Some(port) = self.free.pop_front() {
            let Some(slot) = self.slot(port).and_then(|i| self.owners.get_mut(i)) else { continue };
            if slot.is_some() {
                // Cannot happen: a held pair is never on the free list. Drop
                // the stale entry rather than hand the pair out twice.
                continue;
            }
            *slot = Some(owner);
            self.in_use += 1;
            events.push_back(Event::OpenPorts(port));
            return Some(port);
        }
        None
    }

    /// The free pairs, front first (for a snapshot).
    pub fn free_order(&self) -> Vec<u16> {
        self.free.iter().chain(&self.parked).copied().collect()
    }

    /// Restoring: takes a specific pair for `owner`, as [`allocate`](Self::allocate)
    /// would. False if it is outside the range or already held.
    pub fn claim(&mut self, port: u16, owner: PortOwner, events: &mut VecDeque<Event>) -> bool {
        let Some(slot) = self.slot(port).and_then(|i| self.owners.get_mut(i)) else { return false };
        if slot.is_some() {
            return false;
        }
        *slot = Some(owner);
        self.in_use += 1;
        events.push_back(Event::OpenPorts(port));
        true
    }

    /// Restoring, after every [`claim`](Self::claim): the free list in the
    /// saved order, then any pair of the range the saved list lacks.
    pub fn reorder_free(&mut self, saved: &[u16]) {
        let mut listed = vec![false; self.owners.len()];
        let mut free = VecDeque::with_capacity(self.free.len());
        let natural: Vec<u16> = self.free.drain(..).collect();
        for &port in saved.iter().chain(natural.iter()) {
            let Some(i) = self.slot(port) else { continue };
            if self.owners[i].is_none() && !listed[i] {
                listed[i] = true;
                free.push_back(port);
            }
        }
        self.free = free;
    }

    /// The daemon could not bind the held pair `port` (another program on
    /// the host has one of its ports): its owner gets the pair at the front
    /// of the free list instead, and `port` is parked, then goes to the back
    /// of the free list at [`unpark`](Self::unpark). None (and nothing
    /// changes) when `port` is not held or no other pair is free.
    pub fn reassign(&mut self, port: u16, events: &mut VecDeque<Event>) -> Option<(PortOwner, u16)> {
        let owner = self.owner(port)?;
        let new = self.allocate(owner, events)?;
        let slot = self.slot(port).and_then(|i| self.owners.get_mut(i))?;
        *slot = None;
        self.in_use = self.in_use.saturating_sub(1);
        self.parked.push(port);
        events.push_back(Event::ClosePorts(port));
        Some((owner, new))
    }

    /// Puts the parked pairs back at the end of the free list.
    pub fn unpark(&mut self) {
        self.free.extend(self.parked.drain(..));
    }

    /// Returns a pair to the back of the free list; a pair that is not held
    /// is ignored.
    pub fn release(&mut self, port: u16, events: &mut VecDeque<Event>) {
        let Some(slot) = self.slot(port).and_then(|i| self.owners.get_mut(i)) else { return };
        if slot.take().is_some() {
            self.in_use = self.in_use.saturating_sub(1);
            self.free.push_back(port);
            events.push_back(Event::ClosePorts(port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> PortOwner {
        PortOwner { session: 1, stream: 0, side: Side::Caller }
    }

    #[test]
    fn range_bounds_and_parity() {
        assert_eq!(PortPool::new((40000, 40008)).free_pairs(), 4);
        assert_eq!(PortPool::new((40001, 40008)).free_pairs(), 3);
        assert_eq!(PortPool::new((40000, 40007)).free_pairs(), 3);
        assert_eq!(PortPool::new((0, 8)).free_pairs(), 3, "port 0 is never handed out");
        assert_eq!(PortPool::new((60000, 40000)).free_pairs(), 0);
        assert_eq!(PortPool::new((65534, 65535)).free_pairs(), 0);
        let full = PortPool::new((0, 65535));
        assert_eq!(full.free_pairs(), 32766);
    }

    #[test]
    fn claims_and_saved_order() {
        let mut ev = VecDeque::new();
        let mut pool = PortPool::new((40000, 40008));
        assert!(pool.claim(40002, owner(), &mut ev));
        assert!(!pool.claim(40002, owner(), &mut ev), "held");
        assert!(!pool.claim(40003, owner(), &mut ev), "odd");
        assert!(!pool.claim(50000, owner(), &mut ev), "outside");
        pool.reorder_free(&[40006, 40002, 40006, 39998]);
        assert_eq!(pool.free_order(), vec![40006, 40000, 40004]);
        assert_eq!(pool.pairs_in_use(), 1);
        assert_eq!(ev.into_iter().collect::<Vec<_>>(), vec![Event::OpenPorts(40002)]);
    }

    #[test]
    fn fifo_reuse_and_no_double_release() {
        let mut ev = VecDeque::new();
        let mut pool = PortPool::new((40000, 40006));
        let a = pool.allocate(owner(), &mut ev).unwrap();
        assert_eq!(a, 40000);
        pool.release(a, &mut ev);
        pool.release(a, &mut ev);
        assert_eq!(pool.free_pairs(), 3, "double release ignored");
        assert_eq!(pool.allocate(owner(), &mut ev), Some(40002));
        assert_eq!(pool.allocate(owner(), &mut ev), Some(40004));
        assert_eq!(pool.allocate(owner(), &mut ev), Some(40000), "released pair comes back last");
        assert_eq!(pool.allocate(owner(), &mut ev), None);
        assert_eq!(pool.pairs_in_use(), 3);
        assert_eq!(
            ev.iter().cloned().collect::<Vec<_>>(),
            vec![
                Event::OpenPorts(40000),
                Event::ClosePorts(40000),
                Event::OpenPorts(40002),
                Event::OpenPorts(40004),
                Event::OpenPorts(40000)
            ]
        );
        assert_eq!(pool.owner(40002), Some(owner()));
        assert_eq!(pool.owner(40003), None, "owner lookup takes the even port");
        assert_eq!(pool.owner(50000), None);
        pool.release(50000, &mut ev);
        pool.release(1, &mut ev);
        assert_eq!(pool.pairs_in_use(), 3);
    }

    #[test]
    fn a_pair_that_cannot_be_bound_is_swapped_for_the_next_free_one() {
        let mut pool = PortPool::new((40000, 40006));
        let mut ev = VecDeque::new();
        let a = pool.allocate(owner(), &mut ev).unwrap();
        ev.clear();
        assert_eq!(pool.reassign(a, &mut ev), Some((owner(), 40002)));
        assert_eq!(ev.drain(..).collect::<Vec<_>>(), [Event::OpenPorts(40002), Event::ClosePorts(40000)]);
        assert_eq!(pool.owner(40000), None);
        assert_eq!(pool.owner(40002), Some(owner()));
        assert_eq!(pool.pairs_in_use(), 1);
        assert_eq!(pool.free_pairs(), 2, "the parked pair counts as free");
        // Until unparked, the busy pair is not handed out again: moving
        // 40002 (busy too) gets 40004, and then there is nothing to move to.
        assert_eq!(pool.reassign(40002, &mut ev), Some((owner(), 40004)));
        ev.clear();
        assert_eq!(pool.reassign(40004, &mut ev), None, "no free pair left");
        assert!(ev.is_empty());
        assert_eq!(pool.owner(40004), Some(owner()));
        assert_eq!(pool.reassign(40000, &mut ev), None, "not held");
        // Unparked, they come back last, in the order they were parked.
        assert_eq!(pool.free_order(), [40000, 40002]);
        pool.unpark();
        assert_eq!(pool.allocate(owner(), &mut ev), Some(40000));
        assert_eq!(pool.allocate(owner(), &mut ev), Some(40002));
        assert_eq!(pool.allocate(owner(), &mut ev), None);
    }
}
