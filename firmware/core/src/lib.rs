//! The sans-I/O session core of the relaybox media relay. It owns the session
//! table keyed by call-id, MediaProxy's offer/answer bookkeeping (the
//! caller/callee CSeq pair), the allocation of relay port pairs from
//! `port_range`, latching with RTP-bleed protection, the forwarding decision
//! for every datagram, stream timeouts and the per-session statistics. It is a
//! plain deterministic state machine: requests, datagrams and the current time
//! (`now`, Unix milliseconds) come in as arguments; verdicts, port open/close
//! requests, expiry reports and latches worth a log line come out
//! ([`Verdict`], [`Event`]). It must not
//! touch sockets, clocks, threads, async runtimes, the kernel (conntrack) or
//! any wire format: the daemon does the I/O and `relaybox-proto` owns the
//! codecs. No input can make it panic.
#![forbid(unsafe_code)]

mod address;
mod ports;
mod session;
mod snapshot;
mod table;

use std::net::{IpAddr, SocketAddr};

use relaybox_proto::SessionStats;

/// The `ipnet` version used by [`CoreConfig::routable_private_ranges`].
pub use ipnet;
pub use session::Side;
pub use snapshot::{ClockMark, Snapshot, SnapshotCache, SnapshotError};
pub use table::SessionTable;

/// Unix time, or a duration, in milliseconds.
pub type Millis = u64;

/// Settings of the session core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// `[start, end)`. Each stream side takes an even RTP port `p` and `p + 1`
    /// for RTCP; an odd `start` is rounded up and port 0 is never used.
    pub port_range: (u16, u16),
    /// How long a stream may carry no packet before it times out.
    pub stream_timeout: Millis,
    /// The same for a stream on hold.
    pub on_hold_timeout: Millis,
    /// Private announced addresses in these ranges are reachable as they
    /// are: latching requires the announced IP there (as for a public
    /// address), and they may be sent to before they are learned.
    pub routable_private_ranges: Vec<ipnet::IpNet>,
    /// How long a leg whose party is behind NAT refuses sources that no
    /// rule vouches for (see [`LatchRule`]), counted from the first such
    /// datagram; after it, the next datagram from any source latches
    /// ([`LatchRule::Fallback`]). 0: any source latches at once
    /// (MediaProxy's behaviour, open to RTP bleed).
    pub latching_window: Millis,
    /// Signaling IPs in these ranges belong to proxies in front of the
    /// phones, not to the phones' NAT: they never vouch for a media source.
    pub signaling_proxies: Vec<ipnet::IpNet>,
    pub max_sessions: usize,
    /// Most media items in one update (streams per session).
    pub max_streams: usize,
    /// Hand latched streams to the kernel: emit [`Event::FlowUp`] and
    /// [`Event::FlowDown`]. Off for the userspace datapath.
    pub kernel_flows: bool,
    /// Tell the daemon the verdict of each latched port ahead of time:
    /// emit [`Event::RouteUp`] and [`Event::RouteDown`], so that it can
    /// forward a latched party's datagrams without asking (see [`Route`])
    /// and report them with [`SessionTable::forwarded`].
    pub forwarding_entries: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            port_range: (40000, 60000),
            stream_timeout: 90_000,
            on_hold_timeout: 7_200_000,
            routable_private_ranges: Vec::new(),
            latching_window: 3_000,
            signaling_proxies: Vec::new(),
            max_sessions: 10_000,
            max_streams: 16,
            kernel_flows: false,
            forwarding_entries: false,
        }
    }
}

/// Something the daemon must do, collected with [`SessionTable::poll_event`].
// Unboxed on purpose: the daemon takes the stats by value, and events are
// few (one per port pair or session), so the size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Bind UDP sockets on the even port `p` and on `p + 1`.
    OpenPorts(u16),
    /// Release the sockets of `p` and `p + 1`.
    ClosePorts(u16),
    /// The session ended by itself (its streams timed out) or by
    /// [`SessionTable::expire_all`]; it is gone from the table.
    Expired(SessionStats),
    /// Both sides of a stream's RTP (or RTCP) are latched and the stream is
    /// active: the kernel may forward this flow from now on.
    FlowUp(Flow),
    /// The flow ended (stream ended or on hold, an endpoint moved, session
    /// removed): remove it from the kernel. Its counters are final as last
    /// fed with [`SessionTable::set_flow_counters`].
    FlowDown(FlowId),
    /// A leg latched in a way the operator should hear about: a
    /// [`LatchRule::Fallback`] (nothing acceptable arrived within the
    /// learning window), or a latch moved to a new source (a phone's NAT
    /// mapping changed). Ordinary first latches are not reported.
    Latched(Latch),
    /// With [`CoreConfig::forwarding_entries`]: the verdict for datagrams
    /// from a latched party on `route.port` is fixed until the next
    /// [`Event::RouteUp`] or [`Event::RouteDown`] for that port (it
    /// replaces any earlier route of the port).
    RouteUp(Route),
    /// The route of this port is no longer the core's verdict: its
    /// datagrams go through [`SessionTable::on_packet`] again. Queued
    /// before the port's [`Event::ClosePorts`] when its stream ends.
    RouteDown(u16),
}

/// A forwarding entry: the core's verdict, computed ahead, for every
/// datagram that arrives on `port` from the party latched there, as long
/// as the stream stays as it is. [`SessionTable::on_packet`] would answer
/// `Forward { via_port, to }` for such a datagram and change nothing but
/// counters and the stream's activity time, which the daemon hands back
/// with [`SessionTable::forwarded`]. STUN is not covered (it is not
/// media): [`matches`](Self::matches) says which datagrams are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The relay port the datagram arrives on (even RTP, odd RTCP).
    pub port: u16,
    /// The latched party: the only source the route is for.
    pub from: SocketAddr,
    pub via_port: u16,
    pub to: SocketAddr,
}

impl Route {
    /// True when `packet` from `src` gets this route's verdict.
    pub fn matches(&self, src: SocketAddr, packet: &[u8]) -> bool {
        src == self.from && !session::is_stun(packet)
    }
}

/// Why a source may latch a leg. Ranked by [`rank`](Self::rank): a latched
/// leg moves to a new source whose rule ranks at least as high as its
/// latch's (a NAT rebind), never to a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LatchRule {
    /// No rule vouched for any RTP source within the learning window; the
    /// first datagram after it latched (rank 0). RTCP from that IP follows.
    Fallback,
    /// The party is behind NAT and the source's IP is the one its SIP
    /// messages came from (`signaling_ip`; rank 1).
    SignalingIp,
    /// RTCP of a party behind NAT from the IP its RTP is latched to (rank 1).
    RtpPeer,
    /// The IP announced in the SDP, another port (rank 2).
    AnnouncedIp,
    /// Exactly the announced address (RTCP: its port + 1; rank 3).
    Announced,
}

impl LatchRule {
    pub fn rank(self) -> u8 {
        match self {
            LatchRule::Fallback => 0,
            LatchRule::SignalingIp | LatchRule::RtpPeer => 1,
            LatchRule::AnnouncedIp => 2,
            LatchRule::Announced => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LatchRule::Fallback => "fallback",
            LatchRule::SignalingIp => "signaling IP",
            LatchRule::RtpPeer => "RTP peer's IP",
            LatchRule::AnnouncedIp => "announced IP",
            LatchRule::Announced => "announced address",
        }
    }
}

/// See [`Event::Latched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latch {
    pub call_id: String,
    pub side: Side,
    pub rtcp: bool,
    /// The source the leg is latched to now.
    pub source: SocketAddr,
    /// The source it was latched to before (a move), if any.
    pub previous: Option<SocketAddr>,
    pub rule: LatchRule,
    /// What vouches for sources: the party's announced address (for RTCP
    /// its port + 1) and its signaling IP.
    pub announced: SocketAddr,
    pub signaling_ip: Option<IpAddr>,
}

/// Names one kernel flow for its whole life; never reused by a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct FlowId(pub u64);

/// A stream's RTP or RTCP flow between two latched parties. Packets from
/// `caller` arrive at `caller_local:caller_port` and leave from
/// `callee_local:callee_port` to `callee`; the reverse for the callee's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub id: FlowId,
    /// The relay address the caller was told to send to (the reply to the
    /// callee's SDP). With `auto_detect_interfaces` the two sides differ;
    /// behind `advertised_ip` it is not a local address, and the daemon
    /// uses its own.
    pub caller_local: IpAddr,
    /// The relay address the callee was told to send to (the reply to the
    /// caller's SDP).
    pub callee_local: IpAddr,
    pub caller: SocketAddr,
    pub caller_port: u16,
    pub callee_port: u16,
    pub callee: SocketAddr,
    pub rtcp: bool,
}

/// What the kernel forwarded on one flow, per sending party, as absolute
/// totals since the flow went up. Bytes are UDP payload bytes, as the
/// userspace path counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FlowCounters {
    pub caller_packets: u64,
    pub caller_bytes: u64,
    pub callee_packets: u64,
    pub callee_bytes: u64,
}

/// Media relayed since the table was made (or restored), userspace and
/// kernel together: UDP payload bytes, as the statistics count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relayed {
    pub packets: u64,
    pub bytes: u64,
}

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the same bytes out of our local port `via_port` to `to`.
    Forward {
        via_port: u16,
        to: SocketAddr,
    },
    Drop(DropReason),
}

/// Why a datagram is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No live stream owns this port.
    UnknownPort,
    /// The sender is accepted but the other side's address is not known yet
    /// (not learned, and its announced address is private or missing).
    NotLatched,
    /// The sending side has not announced any SDP yet, so its source cannot
    /// be checked.
    NoRemoteSdp,
    /// RTP bleed: no rule vouches for the source (see [`LatchRule`]) and
    /// it may not fall back: the learning window is open, the party is not
    /// behind NAT, it is RTCP (which follows its RTP) or STUN (which never
    /// latches). Neither latched nor forwarded; counted in `bleed_drops`.
    Bleed,
    /// The side is latched to another address.
    WrongSource,
    /// The other side announced it does not want to receive
    /// (`0.0.0.0`, `sendonly` or `inactive`).
    OnHold,
}

/// Why an `update` or `remove` failed. A failed call leaves the table as it
/// was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("too many sessions")]
    TooManySessions,
    #[error("too many streams in one session")]
    TooManyStreams,
    #[error("no free ports left in the port range")]
    NoFreePorts,
    #[error("unknown session")]
    UnknownSession,
    #[error("media type of an answer does not match the offer")]
    MediaTypeMismatch,
    /// The tags do not belong to the session's dialog (a call-id collision
    /// or a stray request).
    #[error("from/to tags do not match the session")]
    TagMismatch,
}
