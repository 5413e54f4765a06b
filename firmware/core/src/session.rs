//! One call: its streams, each with a caller-facing and a callee-facing leg,
//! the offer/answer state, and the statistics it reports.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use relaybox_proto::{MediaItem, MediaType, SessionStats, StreamStats, StreamStatus};
use serde::{Deserialize, Serialize};

use crate::ports::PortPool;
use crate::{CoreConfig, Event, FlowCounters, FlowId, LatchRule, Millis};

/// A party of the call. The caller is the side with the session's from_tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the relay knows about one party of one stream, and the relay port
/// pair that faces that party.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Leg {
    /// Our even port facing this party; 0 when the stream was never relayed.
    pub port: u16,
    /// The RTP address the party announced in its last SDP.
    pub sdp: Option<SocketAddr>,
    /// The party's last SDP said: do not send to me.
    pub hold: bool,
    pub ice: bool,
    pub rtp_peer: Option<SocketAddr>,
    pub rtcp_peer: Option<SocketAddr>,
    pub codec: Option<String>,
    /// Forwarded bytes and packets received from this party.
    pub bytes: u64,
    pub packets: u64,
    /// The rule each latch was made by: `[RTP, RTCP]`, set with the peer.
    pub latched_by: [Option<LatchRule>; 2],
    /// `[RTP, RTCP]`: the last source a rule vouched for that sent STUN
    /// while the port was not latched. STUN never latches, but ICE checks
    /// through the relay candidate need their answers back: packets for
    /// this party go here while nothing is latched.
    pub stun_peers: [Option<SocketAddr>; 2],
    /// When the first datagram from a source no rule vouches for arrived,
    /// since the party's SDP address last changed: the learning window
    /// counts from here.
    pub window_opened: Option<Millis>,
    /// `[RTP, RTCP]`: the route last announced for this leg's port
    /// ([`Event::RouteUp`]); not saved, a restored table announces anew.
    #[serde(skip)]
    pub routes: [Option<crate::Route>; 2],
}

impl Leg {
    fn reset_latch(&mut self) {
        self.rtp_peer = None;
        self.rtcp_peer = None;
        self.latched_by = [None, None];
        self.stun_peers = [None, None];
        self.window_opened = None;
    }

    /// The latched peer of RTP (`index` 0) or RTCP (1).
    pub fn peer(&self, index: usize) -> Option<SocketAddr> {
        if index == 0 {
            self.rtp_peer
        } else {
            self.rtcp_peer
        }
    }

    pub fn set_peer(&mut self, index: usize, peer: SocketAddr, rule: LatchRule) {
        if index == 0 {
            self.rtp_peer = Some(peer);
        } else {
            self.rtcp_peer = Some(peer);
        }
        if let Some(slot) = self.latched_by.get_mut(index) {
            *slot = Some(rule);
        }
    }

    /// Forgets the RTCP latch (its kernel flow ended; it is learned anew).
    pub fn reset_rtcp(&mut self) {
        self.rtcp_peer = None;
        self.latched_by[1] = None;
    }

    /// Where packets for this party's RTP (0) or RTCP (1) go when it is
    /// known: its latch, else a source that sent vouched-for STUN.
    pub fn destination(&self, index: usize) -> Option<SocketAddr> {
        self.peer(index).or_else(|| self.stun_peers.get(index).copied().flatten())
    }
}

/// A flow the kernel forwards, with what it counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KernelFlow {
    pub id: FlowId,
    pub caller: SocketAddr,
    pub callee: SocketAddr,
    /// The relay addresses the entry was made with.
    pub locals: SideAddrs,
    pub counters: FlowCounters,
    /// The daemon could not hand it to the kernel: userspace forwards it
    /// and times it out, and it is not offered again until it changes.
    pub refused: bool,
}

impl KernelFlow {
    /// Forwarded by the kernel (announced and not refused).
    pub fn in_kernel(&self) -> bool {
        !self.refused
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stream {
    pub id: u32,
    #[serde(with = "media_type_name")]
    pub media_type: MediaType,
    pub status: StreamStatus,
    pub created_at: Millis,
    pub answered_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// Creation, the last accepted media packet (STUN is not media), the
    /// last SDP address change or the last resume from hold: the timeout
    /// counts from here.
    pub last_activity: Millis,
    /// The first media packet (not STUN): a stream of ICE parties without
    /// one ends as `unselected ICE candidate`.
    pub first_media_at: Option<Millis>,
    /// The timeout applied when the stream timed out, else 0.
    pub timeout_wait: Millis,
    pub caller: Leg,
    pub callee: Leg,
    /// The kernel flows of this stream: `[RTP, RTCP]`.
    pub flows: [Option<KernelFlow>; 2],
}

impl Stream {
    pub fn new(id: u32, media_type: MediaType, now: Millis) -> Self {
        Stream {
            id,
            media_type,
            status: StreamStatus::Active,
            created_at: now,
            answered_at: None,
            ended_at: None,
            last_activity: now,
            first_media_at: None,
            timeout_wait: 0,
            caller: Leg::default(),
            callee: Leg::default(),
            flows: [None, None],
        }
    }

    /// A stream that is rejected from the start (port 0 in an offer).
    pub fn rejected(id: u32, media_type: MediaType, now: Millis) -> Self {
        let mut s = Stream::new(id, media_type, now);
        s.status = StreamStatus::Rejected;
        s.ended_at = Some(now);
        s
    }

    pub fn is_live(&self) -> bool {
        matches!(self.status, StreamStatus::Active | StreamStatus::OnHold)
    }

    pub fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }

    pub fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Caller => &mut self.caller,
            Side::Callee => &mut self.callee,
        }
    }

    /// The port the other party of `sender` sends to, 0 when not relayed.
    pub fn reply_port(&self, sender: Side) -> u16 {
        if self.is_live() {
            self.leg(sender.other()).port
        } else {
            0
        }
    }

    /// Takes in the SDP of one party for this stream (port not 0).
    pub fn apply_sdp(&mut self, side: Side, item: &MediaItem, now: Millis) {
        let leg = self.leg_mut(side);
        leg.hold = item.is_hold();
        leg.ice = item.ice;
        let mut moved = false;
        // 0.0.0.0 only means hold; the party keeps its address.
        if !item.ip.is_unspecified() {
            let addr = SocketAddr::new(item.ip, item.port);
            if leg.sdp != Some(addr) {
                leg.sdp = Some(addr);
                leg.reset_latch();
                moved = true;
            }
        }
        if moved {
            self.last_activity = self.last_activity.max(now);
        }
        self.refresh_hold(now);
    }

    fn refresh_hold(&mut self, now: Millis) {
        if !self.is_live() {
            return;
        }
        let held = self.caller.hold || self.callee.hold;
        let status = if held { StreamStatus::OnHold } else { StreamStatus::Active };
        if self.status == StreamStatus::OnHold && status == StreamStatus::Active {
            // Resumed: the normal timeout counts from now, not from the
            // last packet before the hold.
            self.last_activity = self.last_activity.max(now);
        }
        self.status = status;
    }

    fn timeout(&self, config: &CoreConfig) -> Millis {
        if self.status == StreamStatus::OnHold {
            config.on_hold_timeout
        } else {
            config.stream_timeout
        }
    }

    /// When a live stream times out. Not while the kernel forwards its RTP:
    /// then the kernel's UDP timeout ends it ([`Event::FlowDown`] after a
    /// DESTROY event).
    pub fn deadline(&self, config: &CoreConfig) -> Option<Millis> {
        (self.is_live() && !self.flows[0].as_ref().is_some_and(KernelFlow::in_kernel))
            .then(|| self.last_activity.saturating_add(self.timeout(config)))
    }

    /// The flow `[RTP, RTCP][index]` should have now: both parties latched,
    /// the stream active (not on hold) and relayed.
    pub fn wanted_flow(&self, index: usize) -> Option<(SocketAddr, SocketAddr)> {
        if self.status != StreamStatus::Active || self.caller.port == 0 || self.callee.port == 0 {
            return None;
        }
        let peer = |leg: &Leg| if index == 0 { leg.rtp_peer } else { leg.rtcp_peer };
        Some((peer(&self.caller)?, peer(&self.callee)?))
    }

    /// Ends a kernel flow: its counters become the legs' own.
    pub fn drop_flow(&mut self, index: usize) -> Option<FlowId> {
        let flow = self.flows.get_mut(index)?.take()?;
        let c = flow.counters;
        self.caller.packets = self.caller.packets.saturating_add(c.caller_packets);
        self.caller.bytes = self.caller.bytes.saturating_add(c.caller_bytes);
        self.callee.packets = self.callee.packets.saturating_add(c.callee_packets);
        self.callee.bytes = self.callee.bytes.saturating_add(c.callee_bytes);
        Some(flow.id)
    }

    /// Packets and bytes per party, including what live kernel flows counted.
    fn totals(&self) -> FlowCounters {
        let mut t = FlowCounters {
            caller_packets: self.caller.packets,
            caller_bytes: self.caller.bytes,
            callee_packets: self.callee.packets,
            callee_bytes: self.callee.bytes,
        };
        for c in self.flows.iter().flatten().map(|f| f.counters) {
            t.caller_packets = t.caller_packets.saturating_add(c.caller_packets);
            t.caller_bytes = t.caller_bytes.saturating_add(c.caller_bytes);
            t.callee_packets = t.callee_packets.saturating_add(c.callee_packets);
            t.callee_bytes = t.callee_bytes.saturating_add(c.callee_bytes);
        }
        t
    }

    /// Times the stream out if its deadline has passed. True if it did.
    pub fn check_timeout(
        &mut self,
        config: &CoreConfig,
        now: Millis,
        pool: &mut PortPool,
        events: &mut VecDeque<Event>,
    ) -> bool {
        match self.deadline(config) {
            Some(deadline) if deadline <= now => {}
            _ => return false,
        }
        let wait = self.timeout(config);
        let status = if self.status == StreamStatus::OnHold {
            StreamStatus::OnHoldTimeout
        } else if self.caller.ice && self.callee.ice && self.first_media_at.is_none() {
            StreamStatus::UnselectedIceCandidate
        } else {
            StreamStatus::NoTrafficTimeout
        };
        self.timeout_wait = wait;
        // The media stopped at the last activity; the wait is not billed.
        let ended = self.last_activity.min(now);
        self.end(status, ended, pool, events);
        true
    }

    /// Ends a live stream and releases its ports.
    pub fn end(&mut self, status: StreamStatus, at: Millis, pool: &mut PortPool, events: &mut VecDeque<Event>) {
        if !self.is_live() {
            return;
        }
        self.status = status;
        self.ended_at = Some(at);
        // The daemon stops forwarding on its own before the ports go.
        for leg in [&mut self.caller, &mut self.callee] {
            for route in leg.routes.iter_mut().filter_map(Option::take) {
                events.push_back(Event::RouteDown(route.port));
            }
        }
        for port in [self.caller.port, self.callee.port] {
            if port != 0 {
                pool.release(port, events);
            }
        }
    }

    pub fn ended_by_timeout(&self) -> bool {
        self.status.is_timeout() || self.status == StreamStatus::UnselectedIceCandidate
    }

    /// Learns the codec of one side from its first RTP packet.
    pub fn note_codec(&mut self, side: Side, packet: &[u8]) {
        let is_image = self.media_type == MediaType::Image;
        let leg = self.leg_mut(side);
        if leg.codec.is_none() {
            leg.codec = if is_image { Some("T38".to_string()) } else { rtp_codec(packet) };
        }
    }

    /// `locals`: the relay address each side was told to send to;
    /// `duration`: the session's so far, the `end_time` of a stream that
    /// has not ended (MediaProxy's convention; a rejected stream ends
    /// where it starts).
    pub fn stats(&self, locals: SideAddrs, session_start: Option<Millis>, duration: u64) -> StreamStats {
        let relative = |t: Millis| session_start.map(|s| t.saturating_sub(s) / 1000);
        let start_time = self.answered_at.and_then(relative);
        let end_time = match (self.status, self.ended_at) {
            (StreamStatus::Rejected, _) => start_time,
            (_, Some(end)) => relative(end).map(|e| e.min(duration)),
            (_, None) => start_time.map(|_| duration),
        };
        let local = |leg: &Leg, ip: IpAddr| {
            if leg.port == 0 {
                "Unknown".to_string()
            } else {
                SocketAddr::new(ip, leg.port).to_string()
            }
        };
        let remote = |leg: &Leg| leg.rtp_peer.map_or_else(|| "Unknown".to_string(), |a| a.to_string());
        let codec = |leg: &Leg| leg.codec.clone().unwrap_or_else(|| "Unknown".to_string());
        let totals = self.totals();
        StreamStats {
            media_type: self.media_type.as_str().to_string(),
            status: self.status,
            timeout_wait: self.timeout_wait / 1000,
            caller_codec: codec(&self.caller),
            callee_codec: codec(&self.callee),
            start_time,
            end_time,
            post_dial_delay: self.first_media_at.map(|t| t.saturating_sub(self.created_at) as f64 / 1000.0),
            caller_bytes: totals.caller_bytes,
            callee_bytes: totals.callee_bytes,
            caller_packets: totals.caller_packets,
            callee_packets: totals.callee_packets,
            caller_local: local(&self.caller, locals.caller),
            callee_local: local(&self.callee, locals.callee),
            caller_remote: remote(&self.caller),
            callee_remote: remote(&self.callee),
        }
    }
}

/// `MediaType` saved by its SDP name (the proto type has no serde).
pub(crate) mod media_type_name {
    use relaybox_proto::MediaType;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &MediaType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MediaType, D::Error> {
        let name = String::deserialize(d)?;
        MediaType::parse(&name).ok_or_else(|| D::Error::custom("unknown media type"))
    }
}

/// A STUN message (RFC 5389): the two top bits zero, the magic cookie at
/// bytes 4..8, and a length that is a multiple of 4 and matches the
/// datagram. ICE connectivity checks and consent refreshes are STUN; RTP
/// (version 2) and RTCP never look like it.
pub(crate) fn is_stun(packet: &[u8]) -> bool {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    let (Some(&first), Some(length), Some(cookie)) = (packet.first(), packet.get(2..4), packet.get(4..8)) else {
        return false;
    };
    let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
    first & 0xc0 == 0 && cookie == MAGIC_COOKIE && length % 4 == 0 && packet.len() == 20 + length
}

/// The codec name of an RTP packet, `None` for anything that is not RTP
/// (STUN, RTCP multiplexed on the RTP port, garbage).
pub(crate) fn rtp_codec(packet: &[u8]) -> Option<String> {
    if packet.len() < 12 || packet.first().map(|b| b >> 6) != Some(2) {
        return None;
    }
    let pt = packet.get(1)? & 0x7f;
    let name = match pt {
        // RTCP packet types 200..=204 with the marker bit masked off.
        72..=76 => return None,
        0 => "PCMU",
        3 => "GSM",
        4 => "G723",
        8 => "PCMA",
        9 => "G722",
        13 => "CN",
        15 => "G728",
        18 => "G729",
        other => return Some(format!("Dynamic({other})")),
    };
    Some(name.to_string())
}

/// The CSeq pair of the current offer and who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OfferState {
    /// Highest CSeq seen in the caller's dialog direction (From = caller).
    pub caller_cseq: Option<u32>,
    /// Highest CSeq seen in the callee's direction (callee re-INVITEs).
    pub callee_cseq: Option<u32>,
    /// The CSeq space of the current offer's transaction.
    pub space: Side,
    /// Who sent the current offer.
    pub offerer: Side,
}

/// Where an update stands against the current offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// A higher CSeq pair: a new offer.
    Newer,
    /// The current transaction: an answer or a retransmission.
    Same,
    /// A late retransmission of an earlier transaction.
    Older,
}

impl OfferState {
    pub fn classify(this: Option<&OfferState>, space: Side, number: u32) -> Order {
        let Some(o) = this else { return Order::Newer };
        let current = match space {
            Side::Caller => o.caller_cseq,
            Side::Callee => o.callee_cseq,
        };
        match current {
            None => Order::Newer,
            Some(c) if number > c => Order::Newer,
            Some(c) if number < c => Order::Older,
            // Equal number in the other space than the current offer's: that
            // transaction is over, so this is a late retransmission.
            Some(_) if o.space == space => Order::Same,
            Some(_) => Order::Older,
        }
    }

    pub fn advanced(this: Option<&OfferState>, space: Side, number: u32, offerer: Side) -> OfferState {
        let mut next = this.copied().unwrap_or(OfferState { caller_cseq: None, callee_cseq: None, space, offerer });
        match space {
            Side::Caller => next.caller_cseq = Some(number),
            Side::Callee => next.callee_cseq = Some(number),
        }
        next.space = space;
        next.offerer = offerer;
        next
    }
}

/// A relay address per side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SideAddrs {
    /// Where the caller sends: given in the reply to the callee's SDP.
    pub caller: IpAddr,
    /// Where the callee sends: given in the reply to the caller's SDP.
    pub callee: IpAddr,
}

impl SideAddrs {
    /// A new session: both sides get the first reply's address until the
    /// other side's update says otherwise.
    pub fn both(ip: IpAddr) -> Self {
        SideAddrs { caller: ip, callee: ip }
    }

    /// `ip` was put in the reply to `sender`'s update: the other side, which
    /// receives that SDP, sends there.
    pub fn replied(&mut self, sender: Side, ip: IpAddr) {
        match sender {
            Side::Caller => self.callee = ip,
            Side::Callee => self.caller = ip,
        }
    }
}

/// The IP each party's SIP messages came from (`signaling_ip`'s source),
/// as far as it can vouch for the party's media (see `note_signaling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignalingIps {
    pub caller: Option<IpAddr>,
    pub callee: Option<IpAddr>,
}

impl SignalingIps {
    pub fn get(&self, side: Side) -> Option<IpAddr> {
        match side {
            Side::Caller => self.caller,
            Side::Callee => self.callee,
        }
    }

    pub fn set(&mut self, side: Side, ip: IpAddr) {
        match side {
            Side::Caller => self.caller = Some(ip),
            Side::Callee => self.callee = Some(ip),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub id: u64,
    pub call_id: String,
    pub from_tag: String,
    pub from_uri: String,
    pub to_uri: String,
    /// The callee's tag; the latest one with forked replies.
    pub to_tag: Option<String>,
    pub dialog_id: Option<String>,
    pub caller_ua: String,
    pub callee_ua: String,
    /// From a JSON `signaling_ip` header (MediaProxy reports `null`
    /// otherwise).
    pub username: Option<String>,
    /// The relay address each side was told to send to: the reply to the
    /// other side's latest update.
    pub locals: SideAddrs,
    pub offer: Option<OfferState>,
    /// Every stream the session had, in creation order (for statistics).
    pub streams: Vec<Stream>,
    /// Stream ids of the current offer, by media position.
    pub current: Vec<u32>,
    pub next_stream_id: u32,
    pub last_update: Millis,
    pub answered_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// Each party's signaling IP, from the updates it sent.
    pub signaling: SignalingIps,
    /// The time this session is in the timer set under, if any (not saved:
    /// a restored table schedules anew).
    #[serde(skip)]
    pub scheduled: Option<Millis>,
}

impl Session {
    /// The ids of the session's flows the kernel forwards.
    pub fn kernel_flow_ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.streams.iter().flat_map(|s| s.flows.iter().flatten().filter(|f| f.in_kernel()).map(|f| f.id))
    }

    pub fn stream(&self, id: u32) -> Option<&Stream> {
        self.streams.iter().find(|s| s.id == id)
    }

    pub fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// The stream at a media position of the current offer.
    pub fn current_stream(&self, position: usize) -> Option<&Stream> {
        self.current.get(position).and_then(|id| self.stream(*id))
    }

    /// One port per item: the current stream at each position as seen by
    /// the party other than `sender`.
    pub fn reply_ports(&self, sender: Side, items: &[MediaItem]) -> Vec<u16> {
        (0..items.len()).map(|i| self.current_stream(i).map_or(0, |s| s.reply_port(sender))).collect()
    }

    /// The even port of each leg of each live stream.
    pub fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        let live = self.streams.iter().filter(|s| s.is_live());
        live.flat_map(|s| [s.caller.port, s.callee.port]).filter(|p| *p != 0)
    }

    pub fn has_live_stream(&self) -> bool {
        self.streams.iter().any(Stream::is_live)
    }

    /// When the session ends by itself, given that no stream is live: at
    /// once if a stream of the current offer timed out; else when a stream
    /// would have timed out after the last one ended (no re-offer brought
    /// media back); a session that never had streams waits `on_hold_timeout`
    /// after its last update. `None` while a stream is live.
    pub fn expiry(&self, config: &CoreConfig) -> Option<Millis> {
        if self.has_live_stream() {
            return None;
        }
        let current: Vec<&Stream> = self.current.iter().filter_map(|id| self.stream(*id)).collect();
        if current.iter().any(|s| s.ended_by_timeout()) {
            return Some(0);
        }
        match current.iter().filter_map(|s| s.ended_at).max() {
            Some(end) => Some(end.max(self.last_update).saturating_add(config.stream_timeout)),
            None => Some(self.last_update.saturating_add(config.on_hold_timeout)),
        }
    }

    /// The earliest time something is due for this session.
    pub fn next_deadline(&self, config: &CoreConfig) -> Option<Millis> {
        self.streams.iter().filter_map(|s| s.deadline(config)).min().or_else(|| self.expiry(config))
    }

    /// Ends every live stream with `status`.
    pub fn end_all(&mut self, status: StreamStatus, now: Millis, pool: &mut PortPool, events: &mut VecDeque<Event>) {
        for stream in &mut self.streams {
            stream.end(status, now, pool, events);
        }
    }

    /// Drops the oldest finished streams that are no longer offered once the
    /// history grows past `limit`, so endless re-INVITEs cannot grow memory.
    pub fn trim_history(&mut self, limit: usize) {
        while self.streams.len() > limit {
            let current = &self.current;
            let Some(pos) = self.streams.iter().position(|s| !s.is_live() && !current.contains(&s.id)) else {
                break;
            };
            self.streams.remove(pos);
        }
    }

    /// The session's statistics as MediaProxy's relay reports them:
    /// `start_time` with its fraction, `Unknown` for a user agent never
    /// seen, `username` only when the proxy gave one, and only the streams
    /// that were answered, by start (none for a call never answered).
    pub fn stats(&self, now: Millis) -> SessionStats {
        let end = self.ended_at.unwrap_or(now);
        let duration = self.answered_at.map_or(0, |t| end.saturating_sub(t) / 1000);
        let ua = |ua: &str| if ua.is_empty() { "Unknown".to_string() } else { ua.to_string() };
        let mut answered: Vec<&Stream> = self.streams.iter().filter(|s| s.answered_at.is_some()).collect();
        answered.sort_by_key(|s| s.answered_at);
        SessionStats {
            call_id: self.call_id.clone(),
            from_tag: self.from_tag.clone(),
            from_uri: self.from_uri.clone(),
            to_tag: self.to_tag.clone(),
            to_uri: self.to_uri.clone(),
            start_time: self.answered_at.map(|t| t as f64 / 1000.0),
            duration,
            caller_ua: ua(&self.caller_ua),
            callee_ua: ua(&self.callee_ua),
            username: self.username.clone(),
            relay_ip: None,
            dialog_id: self.dialog_id.clone(),
            timed_out: None,
            all_streams_ice: None,
            streams: answered.into_iter().map(|s| s.stats(self.locals, self.answered_at, duration)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names() {
        let pkt = |b1: u8| {
            let mut p = vec![0x80, b1];
            p.resize(12, 0);
            p
        };
        assert_eq!(rtp_codec(&pkt(0)).as_deref(), Some("PCMU"));
        assert_eq!(rtp_codec(&pkt(0x80 | 8)).as_deref(), Some("PCMA"), "marker bit ignored");
        for (pt, name) in [(3, "GSM"), (4, "G723"), (9, "G722"), (13, "CN"), (15, "G728"), (18, "G729")] {
            assert_eq!(rtp_codec(&pkt(pt)).as_deref(), Some(name));
        }
        assert_eq!(rtp_codec(&pkt(96)).as_deref(), Some("Dynamic(96)"));
        assert_eq!(rtp_codec(&pkt(200)), None, "RTCP on the RTP port");
        assert_eq!(rtp_codec(&[0x80, 0]), None, "too short");
        assert_eq!(rtp_codec(&[0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "STUN");
        assert_eq!(rtp_codec(&[]), None);
    }

    #[test]
    fn stun_is_recognised_by_its_cookie_and_length() {
        // A Binding request with one 8-byte attribute.
        let mut binding = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        binding.extend_from_slice(&[7; 12]); // transaction id
        binding.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]); // PRIORITY
        assert!(is_stun(&binding));
        let success = [&[0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..], &[9; 12]].concat();
        assert!(is_stun(&success), "a Binding success response without attributes");
        assert!(!is_stun(&binding[..24]), "length does not match");
        let mut rtp = binding.clone();
        rtp[0] = 0x80;
        assert!(!is_stun(&rtp), "RTP version 2");
        let mut no_cookie = binding.clone();
        no_cookie[4] = 0;
        assert!(!is_stun(&no_cookie), "RFC 3489 STUN has no cookie");
        let mut odd = binding.clone();
        odd[3] = 0x07;
        odd.pop();
        assert!(!is_stun(&odd), "length not a multiple of 4");
        assert!(!is_stun(&[]) && !is_stun(&binding[..7]));
    }

    #[test]
    fn cseq_pair_order() {
        use Order::*;
        assert_eq!(OfferState::classify(None, Side::Caller, 5), Newer);
        let o = OfferState::advanced(None, Side::Caller, 5, Side::Caller);
        assert_eq!(OfferState::classify(Some(&o), Side::Caller, 5), Same);
        assert_eq!(OfferState::classify(Some(&o), Side::Caller, 6), Newer);
        assert_eq!(OfferState::classify(Some(&o), Side::Caller, 4), Older);
        assert_eq!(OfferState::classify(Some(&o), Side::Callee, 0), Newer, "first callee CSeq is newer");
        let o2 = OfferState::advanced(Some(&o), Side::Callee, 0, Side::Callee);
        assert_eq!((o2.caller_cseq, o2.callee_cseq), (Some(5), Some(0)));
        assert_eq!(OfferState::classify(Some(&o2), Side::Callee, 0), Same);
        assert_eq!(OfferState::classify(Some(&o2), Side::Caller, 5), Older, "finished caller transaction");
        assert_eq!(OfferState::classify(Some(&o2), Side::Caller, 6), Newer);
    }
}
