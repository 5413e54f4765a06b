//! The relay's only door to the kernel's connection tracking (ctnetlink over
//! a `NETLINK_NETFILTER` socket from `netlink-sys`). It owns the ctnetlink
//! wire format for what relaybox needs, and nothing more: create a UDP entry
//! whose original tuple is `caller → relay:A` with destination NAT to the
//! callee and source NAT to `relay:B` (so the kernel translates and forwards
//! both directions), delete it, read its per-direction packet and byte
//! counters, dump the entries carrying relaybox's mark, and receive DESTROY
//! events with their final counters. It knows nothing of sessions, SIP or
//! ports policy; the [`FlowTable`] trait is the seam the relay talks to, and
//! [`MemoryFlowTable`] is the test double. [`nft`] programs, over the same
//! kind of socket, the small nftables table that turns the conntrack and NAT
//! hooks on (no `nft` program needed). It must not read sysctls, run
//! programs or touch sockets other than its netlink ones. No unsafe code
//! here: the socket calls are `netlink-sys`'s.
#![forbid(unsafe_code)]

pub mod firewall;
mod memory;
pub mod nft;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

pub use memory::MemoryFlowTable;
use wire::Message;

/// One direction of a UDP connection as the kernel keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A relayed UDP flow. Packets `caller → relay_caller_side` leave as
/// `relay_callee_side → callee`; packets `callee → relay_callee_side` leave
/// as `relay_caller_side → caller`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    pub caller: SocketAddr,
    pub relay_caller_side: SocketAddr,
    pub relay_callee_side: SocketAddr,
    pub callee: SocketAddr,
    /// The entry's first timeout; each packet then re-arms the kernel's UDP
    /// timeouts (`nf_conntrack_udp_timeout{,_stream}`).
    pub timeout_secs: u32,
    /// The conntrack mark that says "relaybox made this".
    pub mark: u32,
}

impl FlowSpec {
    /// The original-direction tuple: as the caller's packets arrive.
    pub fn orig(&self) -> Tuple {
        Tuple { src: self.caller, dst: self.relay_caller_side }
    }

    /// The reply-direction tuple: as the callee's packets arrive.
    pub fn reply(&self) -> Tuple {
        Tuple { src: self.callee, dst: self.relay_callee_side }
    }

    fn check(&self) -> Result<(), Error> {
        let v4 = self.caller.is_ipv4();
        let same = [self.relay_caller_side, self.relay_callee_side, self.callee].iter().all(|a| a.is_ipv4() == v4);
        if same {
            Ok(())
        } else {
            Err(Error::Invalid("a flow cannot mix IPv4 and IPv6 addresses"))
        }
    }
}

/// Per-direction counters (need `net.netfilter.nf_conntrack_acct=1`).
/// Bytes are IP-level: headers included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// A UDP conntrack entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    /// With NAT applied: `callee → relay_callee_side` for our flows.
    pub reply: Tuple,
    pub mark: u32,
    pub id: Option<u32>,
    /// `IPS_*` bits.
    pub status: u32,
    /// Seconds left, when reported.
    pub timeout: Option<u32>,
    pub counters: Counters,
}

/// What went wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EEXIST: an entry with one of the tuples exists.
    #[error("a conntrack entry with this tuple exists")]
    Exists,
    /// ENOENT.
    #[error("no such conntrack entry")]
    NotFound,
    /// EPERM/EACCES: the process lacks CAP_NET_ADMIN in its network namespace.
    #[error("not permitted (ctnetlink needs CAP_NET_ADMIN)")]
    Permission,
    /// The kernel lacks a part (conntrack, NAT for this family, ...).
    #[error("not supported by this kernel: {0}")]
    NotSupported(io::Error),
    /// EAGAIN: the kernel just loaded a module (NAT); ask again.
    #[error("the kernel asks to try again (module loading)")]
    TryAgain,
    /// ENOBUFS on the event socket: events were lost; resynchronise with a dump.
    #[error("conntrack events were lost (receive buffer overrun)")]
    EventsLost,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("the kernel refused: {0}")]
    Kernel(io::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("unexpected netlink reply: {0}")]
    Malformed(&'static str),
}

/// The kernel flows the relay installs, behind one small trait so that the
/// relay can be tested without a kernel.
pub trait FlowTable: Send + Sync {
    /// Installs a flow; [`Error::Exists`] if either tuple is taken.
    fn create(&self, flow: &FlowSpec) -> Result<(), Error>;
    /// Deletes the entry that has `tuple` in either direction.
    fn delete(&self, tuple: &Tuple) -> Result<(), Error>;
    /// The entry that has `tuple` in either direction.
    fn get(&self, tuple: &Tuple) -> Result<Entry, Error>;
    /// Every entry carrying `mark`.
    fn dump(&self, mark: u32) -> Result<Vec<Entry>, Error>;

    fn counters(&self, tuple: &Tuple) -> Result<Counters, Error> {
        self.get(tuple).map(|e| e.counters)
    }
}

const RECV_BUFFER: usize = 64 * 1024;

/// ctnetlink requests over one netlink socket, one request at a time.
pub struct Conntrack {
    socket: Mutex<Socket>,
    seq: AtomicU32,
}

impl Conntrack {
    /// Opens the socket. Fails with [`Error::NotSupported`] when the kernel
    /// has no netfilter netlink.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| match e.raw_os_error() {
            Some(errno) => wire::errno_error(errno),
            None => Error::Io(e),
        })?;
        socket.bind_auto()?;
        Ok(Conntrack { socket: Mutex::new(socket), seq: AtomicU32::new(1) })
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends one request and collects the entries of its answer until the
    /// acknowledgement (or `NLMSG_DONE` for a dump).
    fn transact(&self, seq: u32, request: &[u8], is_dump: bool) -> Result<Vec<Entry>, Error> {
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        socket.send(request, 0)?;
        let mut entries = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        // Bounded: a dump of a full table is a few thousand datagrams.
        for _ in 0..1_000_000 {
            buf.clear();
            socket.recv(&mut buf, 0)?;
            for message in wire::parse(&buf) {
                match message {
                    Message::Ack { seq: s, .. } | Message::Done { seq: s } | Message::Entry { seq: s, .. }
                        if s != seq =>
                    {
                        // A late answer to an earlier request: not ours.
                        continue;
                    }
                    Message::Ack { errno: 0, .. } if !is_dump => return Ok(entries),
                    Message::Ack { errno: 0, .. } => {}
                    Message::Ack { errno, .. } => return Err(wire::errno_error(errno)),
                    Message::Done { .. } => return Ok(entries),
                    Message::Entry { entry: Some(e), .. } => entries.push(e),
                    Message::Entry { entry: None, .. } | Message::Other => {}
                }
            }
        }
        Err(Error::Malformed("no end of answer"))
    }
}

impl FlowTable for Conntrack {
    fn create(&self, flow: &FlowSpec) -> Result<(), Error> {
        flow.check()?;
        let mut last = Error::TryAgain;
        // EAGAIN comes once while the kernel loads nf_nat; try a few times.
        for _ in 0..3 {
            let seq = self.next_seq();
            match self.transact(seq, &wire::new_flow(seq, flow), false) {
                Ok(_) => return Ok(()),
                Err(Error::TryAgain) => last = Error::TryAgain,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn delete(&self, tuple: &Tuple) -> Result<(), Error> {
        let seq = self.next_seq();
        self.transact(seq, &wire::delete(seq, tuple), false).map(drop)
    }

    fn get(&self, tuple: &Tuple) -> Result<Entry, Error> {
        let seq = self.next_seq();
        self.transact(seq, &wire::get(seq, tuple), false)?.into_iter().next().ok_or(Error::NotFound)
    }

    fn dump(&self, mark: u32) -> Result<Vec<Entry>, Error> {
        let seq = self.next_seq();
        let mut entries = self.transact(seq, &wire::dump(seq, mark), true)?;
        // Old kernels ignore the mark filter.
        entries.retain(|e| e.mark == mark);
        Ok(entries)
    }
}

/// DESTROY events of conntrack entries (timeouts, deletions), each with its
/// final counters when accounting is on.
pub struct DestroyEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl DestroyEvents {
    /// Subscribes to the conntrack DESTROY multicast group.
    pub fn subscribe() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(wire::NFNLGRP_CONNTRACK_DESTROY).map_err(|e| match e.raw_os_error() {
            Some(errno) => wire::errno_error(errno),
            None => Error::Io(e),
        })?;
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(DestroyEvents { socket, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    /// Blocks until the next datagram and returns the destroyed entries in
    /// it (possibly none). [`Error::EventsLost`] means some were dropped.
    pub fn recv(&mut self) -> Result<Vec<Entry>, Error> {
        self.buf.clear();
        if let Err(e) = self.socket.recv(&mut self.buf, 0) {
            return Err(match e.raw_os_error() {
                Some(wire::libc_errno::ENOBUFS) => Error::EventsLost,
                _ => Error::Io(e),
            });
        }
        Ok(wire::parse(&self.buf)
            .into_iter()
            .filter_map(|m| match m {
                Message::Entry { msg: wire::IPCTNL_MSG_CT_DELETE, entry, .. } => entry,
                _ => None,
            })
            .collect())
    }
}
