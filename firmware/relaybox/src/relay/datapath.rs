//! How media moves. The session table decides *where* each packet goes; a
//! `Datapath` owns the sockets and kernel flows that carry it.
//! [`UserspaceDatapath`] binds a UDP socket per relay port and forwards each
//! datagram itself; `super::kernel::KernelDatapath` wraps it and hands
//! latched flows to conntrack.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use relaybox_core::{Flow, FlowCounters, FlowId, Verdict};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::Relay;

/// Largest datagram relayed: any UDP datagram, forwarded whole as the
/// kernel datapath does (a T.38 or video packet may exceed 2 KiB). Received
/// into one buffer per runtime thread, not one per socket.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams taken from one socket before the task yields.
const BURST: usize = 64;

std::thread_local! {
    static DATAGRAM: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// The media path behind the session table.
pub(crate) trait Datapath: Send + Sync {
    /// `userspace` or `kernel`, for logs, `summary` and the status page.
    fn name(&self) -> &'static str;
    /// Start receiving on the even port `port` (RTP) and `port + 1` (RTCP).
    fn open_ports(&self, port: u16) -> io::Result<()>;
    /// Stop receiving on `port` and `port + 1`.
    fn close_ports(&self, port: u16);
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

struct Bound {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

pub(crate) struct UserspaceDatapath {
    bind_ip: IpAddr,
    relay: Weak<Relay>,
    sockets: Arc<Mutex<HashMap<u16, Bound>>>,
    /// Descriptors media sockets leave to the rest of the relay.
    reserve: u64,
}

impl UserspaceDatapath {
    pub fn new(bind_ip: IpAddr, relay: Weak<Relay>) -> Self {
        UserspaceDatapath { bind_ip, relay, sockets: Arc::new(Mutex::new(HashMap::new())), reserve: 0 }
    }

    /// Media sockets leave `reserve` descriptors of the limit to the rest.
    pub fn with_reserve(mut self, reserve: u64) -> Self {
        self.reserve = reserve;
        self
    }

    fn bind(&self, port: u16) -> io::Result<Arc<UdpSocket>> {
        let std = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, port))?;
        std.set_nonblocking(true)?;
        Ok(Arc::new(UdpSocket::from_std(std)?))
    }

    fn socket(sockets: &Mutex<HashMap<u16, Bound>>, port: u16) -> Option<Arc<UdpSocket>> {
        sockets.lock().unwrap_or_else(|e| e.into_inner()).get(&port).map(|b| b.socket.clone())
    }
}

async fn receive(relay: Weak<Relay>, sockets: Arc<Mutex<HashMap<u16, Bound>>>, port: u16, socket: Arc<UdpSocket>) {
    // A dual-stack socket (bound to `::`) sees IPv4 peers as IPv4-mapped
    // IPv6 addresses: the table works with plain IPv4 ones, and sending to
    // an IPv4 address from such a socket needs the mapped form again.
    let v6_socket = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        if let Err(e) = socket.readable().await {
            tracing::debug!(port, "receive error: {e}");
            continue;
        }
        // The datagrams waiting (a burst at most, then the other tasks get
        // their turn), each into this thread's buffer: nothing awaits while
        // it is borrowed, and a send that would block drops the datagram,
        // as a full queue in the kernel would.
        let more = DATAGRAM.with_borrow_mut(|buf| {
            for _ in 0..BURST {
                let (n, src) = match socket.try_recv_from(buf) {
                    Ok((n, src)) => (n, SocketAddr::new(src.ip().to_canonical(), src.port())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
                    Err(e) => {
                        tracing::debug!(port, "receive error: {e}");
                        continue;
                    }
                };
                forward(&relay, &sockets, port, v6_socket, src, &buf[..n])?;
            }
            Some(true)
        });
        match more {
            None => return,
            Some(true) => tokio::task::yield_now().await,
            Some(false) => {}
        }
    }
}

/// One datagram received on `port`: through the session table, then sent
/// on. None when the relay is gone.
fn forward(
    relay: &Weak<Relay>,
    sockets: &Mutex<HashMap<u16, Bound>>,
    port: u16,
    v6_socket: bool,
    src: SocketAddr,
    packet: &[u8],
) -> Option<()> {
    let relay = relay.upgrade()?;
    relay.userspace_packets.fetch_add(1, Ordering::Relaxed);
    let now = relay.clock.now_ms();
    let (verdict, expired) = {
        let mut table = relay.table();
        let verdict = table.on_packet(port, src, packet, now);
        // A latching packet may hand the flow to the kernel.
        (verdict, relay.apply_events(&mut table))
    };
    relay.report_expired(expired);
    match verdict {
        Verdict::Forward { via_port, to } => {
            let to = match to {
                SocketAddr::V4(v4) if v6_socket => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
                to => to,
            };
            let Some(out) = UserspaceDatapath::socket(sockets, via_port) else { return Some(()) };
            if let Err(e) = out.try_send_to(packet, to) {
                tracing::debug!(port = via_port, to = %to, "send error: {e}");
            }
        }
        Verdict::Drop(reason) => tracing::trace!(port, src = %src, "dropped: {reason:?}"),
    }
    Some(())
}

impl Datapath for UserspaceDatapath {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn open_ports(&self, port: u16) -> io::Result<()> {
        // Media sockets never take the descriptors reserved for the links,
        // the control socket and the snapshot, even when the limit was
        // lowered (prlimit) or other descriptors are open since the start.
        let open = self.sockets.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
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
        let mut map = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for (p, socket) in [(port, rtp), (port + 1, rtcp)] {
            let task = tokio::spawn(receive(self.relay.clone(), self.sockets.clone(), p, socket.clone()));
            if let Some(old) = map.insert(p, Bound { socket, task }) {
                old.task.abort();
            }
        }
        Ok(())
    }

    fn close_ports(&self, port: u16) {
        let mut map = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for p in [port, port + 1] {
            if let Some(b) = map.remove(&p) {
                b.task.abort();
            }
        }
    }
}
