//! How media moves. The session table decides *where* each packet goes; a
//! `Datapath` owns the sockets and kernel flows that carry it.
//! [`UserspaceDatapath`] binds a UDP socket per relay port and forwards each
//! datagram itself; `super::kernel::KernelDatapath` wraps it and hands
//! latched flows to conntrack.
//!
//! The userspace forwarder is a fixed set of I/O threads (`[Relay]
//! io_threads`, one per CPU by default), each with its own level-triggered
//! epoll set holding its share of the ports, and one receive buffer per
//! thread: memory does not grow with a task and a buffer per port. Each
//! port has a slot (socket, route, counters) in a table made once for the
//! whole `port_range`. A datagram from the party a port is latched to is
//! forwarded by the port's [`Route`], the core's verdict announced ahead
//! (`Event::RouteUp`), and only counted in the slot; everything else (the
//! first packets, other sources, STUN) goes through the session table, which
//! stays the only place that decides. The relay hands the counts to the
//! table (`SessionTable::forwarded`) before it reads or ends a stream.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use relaybox_core::{Flow, FlowCounters, FlowId, Millis, Route, Verdict};
use rustix::event::epoll;

use super::Relay;

/// Largest datagram relayed: any UDP datagram, forwarded whole as the
/// kernel datapath does (a T.38 or video packet may exceed 2 KiB). Received
/// into one buffer per I/O thread, not one per socket.
const MAX_DATAGRAM: usize = 65_535;

/// Readiness events taken from the kernel in one `epoll_wait`.
const EVENTS: usize = 256;

/// How often an idle I/O thread looks whether the datapath is gone.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// The media path behind the session table.
pub(crate) trait Datapath: Send + Sync {
    /// `userspace` or `kernel`, for logs, `summary` and the status page.
    fn name(&self) -> &'static str;
    /// Start receiving on the even port `port` (RTP) and `port + 1` (RTCP).
    fn open_ports(&self, port: u16) -> io::Result<()>;
    /// Stop receiving on `port` and `port + 1`.
    fn close_ports(&self, port: u16);
    /// Forward the datagrams `route` covers on `port` without the session
    /// table from now on (`None`: no more). Returns what the replaced route
    /// forwarded and was not taken yet.
    fn set_route(&self, port: u16, route: Option<Route>) -> Forwarded;
    /// What was forwarded by route on `port` since the last time, taken.
    fn take_forwarded(&self, port: u16) -> Forwarded;
    /// The same for every port that forwarded something.
    fn take_all_forwarded(&self) -> Vec<(u16, Forwarded)>;
    /// Forward this flow without userspace from now on (kernel datapath).
    /// False when it stays in userspace.
    fn flow_up(&self, _flow: &Flow) -> bool {
        false
    }
    /// Stop forwarding this flow in the kernel.
    fn flow_down(&self, _id: FlowId) {}
    /// What the kernel forwarded on a flow so far.
    fn flow_counters(&self, _id: FlowId) -> Option<FlowCounters> {
        None
    }
    /// After a restart: take over these flows, installed by the previous
    /// process, and delete any other entry of ours. Returns the flows that
    /// are no longer there (the kernel timed them out meanwhile).
    fn adopt_flows(&self, flows: &[Flow]) -> Vec<FlowId> {
        flows.iter().map(|f| f.id).collect()
    }
    /// The relay exits: remove what was installed outside the process.
    fn shutdown(&self) {}
}

/// Datagrams forwarded by a port's route and not yet counted by the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forwarded {
    pub packets: u64,
    pub bytes: u64,
    /// When the last one arrived (the table's clock).
    pub last: Millis,
}

/// One relay port: its socket while a stream holds it, the route the core
/// announced for it, and what that route forwarded.
#[derive(Default)]
struct Slot {
    socket: Option<UdpSocket>,
    route: Option<Route>,
    forwarded: Forwarded,
}

/// The ports of the range and the I/O threads' epoll sets, shared with
/// the threads.
struct Ports {
    /// The port of `slots[0]`.
    first: u16,
    slots: Box<[Mutex<Slot>]>,
    /// Media sockets open.
    open: AtomicUsize,
    /// One epoll set per I/O thread; a pair's two ports go to the same one.
    polls: Vec<OwnedFd>,
    /// Sockets bound to an IPv6 address (`::` takes IPv4 too): IPv4 peers
    /// are written in their IPv4-mapped form.
    v6: bool,
    relay: Weak<Relay>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ports {
    fn slot(&self, port: u16) -> Option<&Mutex<Slot>> {
        self.slots.get(usize::from(port.checked_sub(self.first)?))
    }

    fn poll_of(&self, port: u16) -> Option<&OwnedFd> {
        let n = self.polls.len().max(1);
        self.polls.get(usize::from(port / 2) % n)
    }

    /// One datagram waiting on `port`: by its route when the route covers
    /// it, else through the session table; then sent on.
    fn receive(&self, port: u16, buf: &mut [u8], relay: &Relay) {
        let Some(slot) = self.slot(port) else { return };
        let (n, src, routed) = {
            let mut slot = lock(slot);
            let Some(socket) = slot.socket.as_ref() else { return };
            let (n, src) = match socket.recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(port, "receive error: {e}");
                    return;
                }
            };
            // A dual-stack socket sees IPv4 peers as IPv4-mapped IPv6
            // addresses: the table works with plain IPv4 ones.
            let src = SocketAddr::new(src.ip().to_canonical(), src.port());
            let routed = slot.route.filter(|r| r.matches(src, &buf[..n]));
            if routed.is_some() {
                let f = &mut slot.forwarded;
                f.packets += 1;
                f.bytes += n as u64;
                f.last = relay.clock.now_ms();
            }
            (n, src, routed)
        };
        relay.userspace_packets.fetch_add(1, Ordering::Relaxed);
        let packet = &buf[..n];
        let (via_port, to) = match routed {
            Some(route) => (route.via_port, route.to),
            None => match relay.datagram(port, src, packet) {
                Verdict::Forward { via_port, to } => (via_port, to),
                Verdict::Drop(reason) => {
                    tracing::trace!(port, src = %src, "dropped: {reason:?}");
                    return;
                }
            },
        };
        self.send(via_port, to, packet);
    }

    /// Sends `packet` out of our port `via_port` (a datagram that cannot go
    /// at once is dropped, as a full queue in the kernel would).
    fn send(&self, via_port: u16, to: SocketAddr, packet: &[u8]) {
        let to = match to {
            SocketAddr::V4(v4) if self.v6 => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            to => to,
        };
        let Some(slot) = self.slot(via_port) else { return };
        let slot = lock(slot);
        let Some(socket) = slot.socket.as_ref() else { return };
        if let Err(e) = socket.send_to(packet, to) {
            tracing::debug!(port = via_port, to = %to, "send error: {e}");
        }
    }
}

/// One I/O thread: waits on its epoll set and takes one datagram from each
/// ready socket per round (level-triggered: a socket with more is ready
/// again at once, and no call is spent to find it empty).
fn run_io(ports: Arc<Ports>, index: usize) {
    let Some(poll) = ports.polls.get(index) else { return };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
    let idle = rustix::time::Timespec { tv_sec: IDLE_WAKE.as_secs() as i64, tv_nsec: IDLE_WAKE.subsec_nanos() as i64 };
    while !ports.stop.load(Ordering::Relaxed) {
        events.clear();
        match epoll::wait(poll, rustix::buffer::spare_capacity(&mut events), Some(&idle)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!(thread = index, "epoll_wait: {e}; this I/O thread stops");
                return;
            }
        }
        if events.is_empty() {
            continue;
        }
        let Some(relay) = ports.relay.upgrade() else {
            if ports.stop.load(Ordering::Relaxed) {
                return;
            }
            // A datapath without a relay (tests): nothing to forward with.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        for event in &events {
            let port = event.data.u64() as u16;
            ports.receive(port, &mut buf, &relay);
        }
    }
}

pub(crate) struct UserspaceDatapath {
    bind_ip: IpAddr,
    ports: Arc<Ports>,
    /// Descriptors media sockets leave to the rest of the relay.
    reserve: u64,
}

impl UserspaceDatapath {
    /// A datapath without ports: [`with_ports`](Self::with_ports) gives it
    /// the range and its I/O threads.
    pub fn new(bind_ip: IpAddr, relay: Weak<Relay>) -> Self {
        let ports = Ports {
            first: 0,
            slots: Box::new([]),
            open: AtomicUsize::new(0),
            polls: Vec::new(),
            v6: bind_ip.is_ipv6(),
            relay,
            stop: AtomicBool::new(false),
        };
        UserspaceDatapath { bind_ip, ports: Arc::new(ports), reserve: 0 }
    }

    /// One slot per port of `[start, end)`, and `threads` I/O threads
    /// (at least one) that receive on them.
    pub fn with_ports(mut self, (start, end): (u16, u16), threads: usize) -> io::Result<Self> {
        let count = usize::from(end.saturating_sub(start)) + 1;
        let mut polls = Vec::new();
        for _ in 0..threads.max(1) {
            polls.push(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        }
        let ports = Ports {
            first: start,
            slots: (0..count).map(|_| Mutex::new(Slot::default())).collect(),
            open: AtomicUsize::new(0),
            polls,
            v6: self.bind_ip.is_ipv6(),
            relay: self.ports.relay.clone(),
            stop: AtomicBool::new(false),
        };
        self.ports = Arc::new(ports);
        for index in 0..self.ports.polls.len() {
            let ports = self.ports.clone();
            std::thread::Builder::new().name(format!("relay-io-{index}")).spawn(move || run_io(ports, index))?;
        }
        Ok(self)
    }

    /// Media sockets leave `reserve` descriptors of the limit to the rest.
    pub fn with_reserve(mut self, reserve: u64) -> Self {
        self.reserve = reserve;
        self
    }

    /// A non-blocking UDP socket bound to `port`: made non-blocking (and
    /// close-on-exec) by `socket(2)` itself, two system calls in all, on
    /// the path every call's setup waits on.
    fn bind(&self, port: u16) -> io::Result<UdpSocket> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let family = if self.bind_ip.is_ipv6() { AddressFamily::INET6 } else { AddressFamily::INET };
        let fd =
            rustix::net::socket_with(family, SocketType::DGRAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&fd, &SocketAddr::new(self.bind_ip, port))?;
        Ok(UdpSocket::from(fd))
    }

    /// Puts `socket` in its slot and in its thread's epoll set.
    fn attach(&self, port: u16, socket: UdpSocket) -> io::Result<()> {
        let (Some(slot), Some(poll)) = (self.ports.slot(port), self.ports.poll_of(port)) else {
            return Err(io::Error::other(format!("port {port} is outside the relay's port range")));
        };
        let mut slot = lock(slot);
        epoll::add(poll, socket.as_fd(), epoll::EventData::new_u64(u64::from(port)), epoll::EventFlags::IN)?;
        if slot.socket.replace(socket).is_none() {
            self.ports.open.fetch_add(1, Ordering::Relaxed);
        }
        slot.route = None;
        slot.forwarded = Forwarded::default();
        Ok(())
    }
}

impl Drop for UserspaceDatapath {
    fn drop(&mut self) {
        self.ports.stop.store(true, Ordering::Relaxed);
    }
}

impl Datapath for UserspaceDatapath {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn open_ports(&self, port: u16) -> io::Result<()> {
        // Media sockets never take the descriptors reserved for the links,
        // the control socket and the snapshot, even when the limit was
        // lowered (prlimit) or other descriptors are open since the start.
        let open = self.ports.open.load(Ordering::Relaxed) as u64;
        let limit = relaybox_limits::nofile().soft;
        if open + 2 + self.reserve > limit {
            return Err(io::Error::other(format!(
                "out of file descriptors for media: {open} media sockets open, {} kept for the rest of the relay, \
                 limit {limit}",
                self.reserve
            )));
        }
        let rtp = self.bind(port)?;
        let rtcp = self.bind(port + 1)?;
        self.attach(port, rtp)?;
        if let Err(e) = self.attach(port + 1, rtcp) {
            self.close_ports(port);
            return Err(e);
        }
        Ok(())
    }

    fn close_ports(&self, port: u16) {
        for p in [port, port + 1] {
            let Some(slot) = self.ports.slot(p) else { continue };
            let mut slot = lock(slot);
            // Closing the socket takes it out of its epoll set.
            if slot.socket.take().is_some() {
                self.ports.open.fetch_sub(1, Ordering::Relaxed);
            }
            slot.route = None;
            slot.forwarded = Forwarded::default();
        }
    }

    fn set_route(&self, port: u16, route: Option<Route>) -> Forwarded {
        let Some(slot) = self.ports.slot(port) else { return Forwarded::default() };
        let mut slot = lock(slot);
        slot.route = route;
        std::mem::take(&mut slot.forwarded)
    }

    fn take_forwarded(&self, port: u16) -> Forwarded {
        match self.ports.slot(port) {
            Some(slot) => std::mem::take(&mut lock(slot).forwarded),
            None => Forwarded::default(),
        }
    }

    fn take_all_forwarded(&self) -> Vec<(u16, Forwarded)> {
        let mut out = Vec::new();
        for (i, slot) in self.ports.slots.iter().enumerate() {
            let mut slot = lock(slot);
            if slot.forwarded.packets > 0 {
                out.push((self.ports.first.wrapping_add(i as u16), std::mem::take(&mut slot.forwarded)));
            }
        }
        out
    }
}
