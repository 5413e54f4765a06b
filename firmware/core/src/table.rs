//! The session table: updates and removes from the dispatcher, datagrams
//! from the daemon's sockets, and the timer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use relaybox_proto::{MediaItem, PartyType, RemoveRequest, SessionStats, StreamStatus, UpdateRequest};

use crate::address::{behind_nat, in_ranges, latch_rule, may_send_to, Expected};
use crate::ports::{PortOwner, PortPool};
use crate::session::{is_stun, KernelFlow, OfferState, Order, Session, Side, SideAddrs, SignalingIps, Stream};
use crate::snapshot::SnapshotCache;
use crate::{
    ClockMark, CoreConfig, CoreError, DropReason, Event, Flow, FlowCounters, FlowId, Latch, LatchRule, Millis, Relayed,
    Route, Snapshot, Verdict,
};

/// All sessions of one relay. See the crate documentation.
#[derive(Debug, Clone)]
pub struct SessionTable {
    config: CoreConfig,
    pool: PortPool,
    /// By creation order, which is also the order of `sessions()`.
    sessions: BTreeMap<u64, Session>,
    by_call_id: HashMap<String, u64>,
    /// `(due, session id)`; a session is listed at most once, at or before
    /// its earliest real deadline (packets only push deadlines later).
    timers: BTreeSet<(Millis, u64)>,
    events: VecDeque<Event>,
    next_session_id: u64,
    bleed_drops: u64,
    flows: Flows,
    relayed: Relayed,
    /// Sessions changed (or gone) since the last
    /// [`refresh_snapshot`](Self::refresh_snapshot).
    dirty: HashSet<u64>,
}

/// Where each live kernel flow is, and the next id to hand out.
#[derive(Debug, Default, Clone)]
struct Flows {
    owner: HashMap<FlowId, (u64, u32)>,
    next_id: u64,
}

/// The parts of the table an update works with, borrowed apart from the
/// session being updated.
struct Ctx<'a> {
    config: &'a CoreConfig,
    pool: &'a mut PortPool,
    events: &'a mut VecDeque<Event>,
}

/// What a new offer does at one media position.
enum Plan {
    /// Port 0 and no live stream of that type here: a rejected stream.
    Rejected,
    /// Port 0 removes the live stream at this position.
    Remove(u32),
    Reuse(u32),
    New,
}

impl SessionTable {
    pub fn new(config: CoreConfig) -> Self {
        SessionTable {
            pool: PortPool::new(config.port_range),
            config,
            sessions: BTreeMap::new(),
            by_call_id: HashMap::new(),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            next_session_id: 1,
            bleed_drops: 0,
            flows: Flows::default(),
            relayed: Relayed::default(),
            dirty: HashSet::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Everything needed to continue after a restart (see [`restore`](Self::restore)),
    /// with where the caller's clock stood (see [`ClockMark`]).
    pub fn snapshot(&self, clock: ClockMark) -> Snapshot {
        Snapshot {
            clock: Some(clock),
            port_range: self.config.port_range,
            next_session_id: self.next_session_id,
            next_flow_id: self.flows.next_id,
            bleed_drops: self.bleed_drops,
            free: self.pool.free_order(),
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    /// Brings `cache` up to date with the table, re-encoding at most
    /// `budget` of the sessions that changed since its last refresh (every
    /// session the first time). True when it is complete: then
    /// [`SnapshotCache::encode`] gives what [`snapshot`](Self::snapshot)
    /// would now. A daemon calls it in steps, letting packets and updates
    /// in between, and encodes the file without the table.
    pub fn refresh_snapshot(&mut self, cache: &mut SnapshotCache, budget: usize) -> bool {
        if !cache.primed {
            cache.sessions.clear();
            self.dirty.extend(self.sessions.keys().copied());
            cache.primed = true;
        }
        let batch: Vec<u64> = self.dirty.iter().take(budget).copied().collect();
        for id in batch {
            self.dirty.remove(&id);
            match self.sessions.get(&id) {
                Some(session) => cache.put(id, session),
                None => {
                    cache.sessions.remove(&id);
                }
            }
        }
        if !self.dirty.is_empty() {
            return false;
        }
        let free = self.pool.free_order();
        cache.set_head(&crate::snapshot::Head {
            port_range: self.config.port_range,
            next_session_id: self.next_session_id,
            next_flow_id: self.flows.next_id,
            bleed_drops: self.bleed_drops,
            free: &free,
        });
        true
    }

    /// A table that continues from a [`snapshot`](Self::snapshot), possibly
    /// taken by another process. Queues [`Event::OpenPorts`] for every pair
    /// its live streams hold; kernel flows of the snapshot are kept as they
    /// are (no [`Event::FlowUp`]: the daemon finds their entries again, see
    /// [`kernel_flows`](Self::kernel_flows), and reports missing ones with
    /// [`flow_expired`](Self::flow_expired)). Flows that `config` no longer
    /// wants go down, latched streams without one come up. A session whose
    /// ports are outside `config.port_range` or taken, or beyond
    /// `max_sessions`, is ended and reported as [`Event::Expired`].
    pub fn restore(config: CoreConfig, snapshot: Snapshot, now: Millis) -> Self {
        let mut table = SessionTable::new(config);
        let Snapshot { next_session_id, next_flow_id, bleed_drops, free, sessions, .. } = snapshot;
        table.bleed_drops = bleed_drops;
        table.flows.next_id = next_flow_id;
        let mut next_id = next_session_id;
        for mut session in sessions {
            session.scheduled = None;
            next_id = next_id.max(session.id.saturating_add(1));
            let fits = table.sessions.len() < table.config.max_sessions
                && !table.sessions.contains_key(&session.id)
                && !table.by_call_id.contains_key(&session.call_id)
                && table.claim_ports(&session);
            if !fits {
                // Nothing of it is in the pool: end it without releasing.
                let mut scratch = PortPool::new((0, 0));
                let mut ignored = VecDeque::new();
                session.end_all(StreamStatus::Closed, now, &mut scratch, &mut ignored);
                for stream in &mut session.streams {
                    stream.drop_flow(0);
                    stream.drop_flow(1);
                }
                session.ended_at = Some(now);
                table.events.push_back(Event::Expired(session.stats(now)));
                continue;
            }
            for stream in &session.streams {
                for flow in stream.flows.iter().flatten() {
                    table.flows.owner.insert(flow.id, (session.id, stream.id));
                    table.flows.next_id = table.flows.next_id.max(flow.id.0);
                }
            }
            let id = session.id;
            table.by_call_id.insert(session.call_id.clone(), id);
            table.sessions.insert(id, session);
            table.dirty.insert(id);
            table.sync_flows(id);
            table.reschedule(id);
        }
        table.next_session_id = next_id.max(1);
        table.pool.reorder_free(&free);
        table
    }

    /// Claims the port pairs of a restored session's live streams; on
    /// failure releases what it claimed (without events) and says false.
    fn claim_ports(&mut self, session: &Session) -> bool {
        let mut claimed = Vec::new();
        let mut events = VecDeque::new();
        for stream in session.streams.iter().filter(|s| s.is_live()) {
            for (side, port) in [(Side::Caller, stream.caller.port), (Side::Callee, stream.callee.port)] {
                let owner = PortOwner { session: session.id, stream: stream.id, side };
                if port != 0 && !self.pool.claim(port, owner, &mut events) {
                    let mut ignored = VecDeque::new();
                    for p in claimed {
                        self.pool.release(p, &mut ignored);
                    }
                    return false;
                }
                claimed.push(port);
            }
        }
        self.events.extend(events);
        true
    }

    /// Every live kernel flow with its addresses, as [`Event::FlowUp`]
    /// announced it (for a restarted daemon to find its entries again).
    pub fn kernel_flows(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        for session in self.sessions.values() {
            for stream in &session.streams {
                for (index, flow) in stream.flows.iter().enumerate() {
                    let Some(flow) = flow.filter(KernelFlow::in_kernel) else { continue };
                    let rtcp = index == 1;
                    out.push(Flow {
                        id: flow.id,
                        caller_local: flow.locals.caller,
                        callee_local: flow.locals.callee,
                        caller: flow.caller,
                        caller_port: stream.caller.port | u16::from(rtcp),
                        callee_port: stream.callee.port | u16::from(rtcp),
                        callee: flow.callee,
                        rtcp,
                    });
                }
            }
        }
        out.sort_by_key(|f| f.id);
        out
    }

    /// Applies an update. `relay_ip` is the address this relay puts in the
    /// reply: the side that receives this SDP sends there. It is kept per
    /// side for the kernel flows and the `*_local` strings in the
    /// statistics. Returns one port per media item of the request (0 for a
    /// rejected or unrelayed stream): the relay port the party that
    /// receives this SDP will send to.
    pub fn update(&mut self, req: &UpdateRequest, relay_ip: IpAddr, now: Millis) -> Result<Vec<u16>, CoreError> {
        if req.media.len() > self.config.max_streams {
            return Err(CoreError::TooManyStreams);
        }
        // Pairs found busy during the last update may be free by now.
        self.pool.unpark();
        let mut ctx = Ctx { config: &self.config, pool: &mut self.pool, events: &mut self.events };
        let id = match self.by_call_id.get(&req.call_id) {
            Some(&id) => {
                let session = self.sessions.get_mut(&id).ok_or(CoreError::UnknownSession)?;
                let ports = apply_update(session, req, relay_ip, now, &mut ctx)?;
                self.dirty.insert(id);
                self.sync_flows(id);
                self.reschedule(id);
                return Ok(ports);
            }
            None => {
                if self.sessions.len() >= self.config.max_sessions {
                    return Err(CoreError::TooManySessions);
                }
                self.next_session_id
            }
        };
        let mut session = Session {
            id,
            call_id: req.call_id.clone(),
            from_tag: req.from_tag.clone(),
            from_uri: req.from_uri.clone(),
            to_uri: req.to_uri.clone(),
            to_tag: None,
            dialog_id: None,
            caller_ua: String::new(),
            callee_ua: String::new(),
            username: None,
            locals: SideAddrs::both(relay_ip),
            offer: None,
            streams: Vec::new(),
            current: Vec::new(),
            next_stream_id: 0,
            last_update: now,
            answered_at: None,
            ended_at: None,
            signaling: SignalingIps::default(),
            scheduled: None,
        };
        let ports = apply_update(&mut session, req, relay_ip, now, &mut ctx)?;
        self.next_session_id += 1;
        self.by_call_id.insert(session.call_id.clone(), id);
        self.sessions.insert(id, session);
        self.dirty.insert(id);
        self.reschedule(id);
        Ok(ports)
    }

    /// The daemon could not open the pair `port` of an [`Event::OpenPorts`]
    /// just polled after [`update`](Self::update) (another program on the
    /// host holds one of its ports): its stream side moves to the next free
    /// pair, whose `OpenPorts` is queued, and the busy pair goes to the back
    /// of the free list at the next update (so moving ends: each free pair
    /// is tried at most once). Returns the new port, to put in the update's
    /// reply in place of `port`. None when `port` is not held or no pair is
    /// free.
    ///
    /// Only for pairs nobody has been told about yet: a moved pair's old
    /// number is forgotten.
    pub fn move_unbindable(&mut self, port: u16) -> Option<u16> {
        let (owner, new) = self.pool.reassign(port, &mut self.events)?;
        self.dirty.insert(owner.session);
        let stream = self.sessions.get_mut(&owner.session).and_then(|s| s.stream_mut(owner.stream));
        match stream {
            Some(stream) => stream.leg_mut(owner.side).port = new,
            // Cannot happen: every held pair belongs to a live stream. Do
            // not leave the new pair held by nobody.
            None => {
                self.pool.release(new, &mut self.events);
                return None;
            }
        }
        Some(new)
    }

    /// The daemon could not bind the pair `port` of an [`Event::OpenPorts`]
    /// just polled after [`update`](Self::update) for want of resources
    /// (out of file descriptors: not a pair another program holds, which
    /// [`move_unbindable`](Self::move_unbindable) handles): the stream
    /// holding it ends as rejected, so that no answer names the pair, and
    /// its pairs go back to the pool ([`Event::ClosePorts`] queued). False
    /// when `port` is not held.
    pub fn reject_unbindable(&mut self, port: u16, now: Millis) -> bool {
        let Some(owner) = self.pool.owner(port) else { return false };
        let Some(session) = self.sessions.get_mut(&owner.session) else { return false };
        let Some(stream) = session.stream_mut(owner.stream) else { return false };
        stream.end(StreamStatus::Rejected, now, &mut self.pool, &mut self.events);
        self.dirty.insert(owner.session);
        self.sync_flows(owner.session);
        self.reschedule(owner.session);
        true
    }

    /// Forgets a session that the update just made, without a report: the
    /// daemon could not bind its ports and answered `error`, so nobody was
    /// told of it (the dispatcher tries another relay). Its pairs go back
    /// to the pool ([`Event::ClosePorts`] queued). False when there is no
    /// such session.
    pub fn discard(&mut self, call_id: &str) -> bool {
        let Some(&id) = self.by_call_id.get(call_id) else { return false };
        let Some(mut session) = self.take_session(id) else { return false };
        session.end_all(StreamStatus::Closed, session.last_update, &mut self.pool, &mut self.events);
        sync_session(&mut session, &self.config, &mut self.flows, &mut self.events);
        true
    }

    /// Ends a session on BYE or CANCEL and returns its final statistics.
    /// The request's from_tag or to_tag must be the session's from_tag (BYE
    /// from either side; CANCEL has no to_tag).
    pub fn remove(&mut self, req: &RemoveRequest, now: Millis) -> Result<SessionStats, CoreError> {
        let id = *self.by_call_id.get(&req.call_id).ok_or(CoreError::UnknownSession)?;
        let session = self.sessions.get(&id).ok_or(CoreError::UnknownSession)?;
        if req.from_tag != session.from_tag && req.to_tag.as_deref() != Some(session.from_tag.as_str()) {
            return Err(CoreError::TagMismatch);
        }
        let mut session = self.take_session(id).ok_or(CoreError::UnknownSession)?;
        session.end_all(StreamStatus::Closed, now, &mut self.pool, &mut self.events);
        sync_session(&mut session, &self.config, &mut self.flows, &mut self.events);
        session.ended_at = Some(now);
        Ok(session.stats(now))
    }

    /// A UDP datagram arrived on one of our ports (even = RTP, odd = RTCP).
    /// With `kernel_flows`, the packet that latches the second party of a
    /// flow queues [`Event::FlowUp`].
    pub fn on_packet(&mut self, local_port: u16, src: SocketAddr, packet: &[u8], now: Millis) -> Verdict {
        let mut latched = None;
        let verdict = self.packet_verdict(local_port, src, packet, now, &mut latched);
        if let Verdict::Forward { .. } = verdict {
            self.relayed.packets += 1;
            self.relayed.bytes += packet.len() as u64;
        }
        if let Some(session) = latched {
            self.dirty.insert(session);
            self.sync_flows(session);
            self.reschedule(session);
        } else if let Some(owner) = self.pool.owner(local_port & !1) {
            // Counters, the codec, a learning window or a STUN source may
            // have changed; and the port's route may be due now.
            self.dirty.insert(owner.session);
            if self.config.forwarding_entries {
                if let Some(session) = self.sessions.get_mut(&owner.session) {
                    sync_routes(session, &self.config, &mut self.events);
                }
            }
        }
        verdict
    }

    /// Datagrams the daemon forwarded on `port` by its [`Route`] without
    /// asking: `packets` of `bytes` in all, the last at `last`. They count
    /// as [`on_packet`](Self::on_packet) would have counted them: for the
    /// leg the port faces and as its stream's activity. Call it before
    /// anything reads or ends the stream ([`ports_due`](Self::ports_due),
    /// [`session_ports`](Self::session_ports)); counts for a port no
    /// stream holds any more go to the relay's totals only.
    pub fn forwarded(&mut self, port: u16, packets: u64, bytes: u64, last: Millis) {
        if packets == 0 {
            return;
        }
        self.relayed.packets += packets;
        self.relayed.bytes += bytes;
        let Some(owner) = self.pool.owner(port & !1) else { return };
        let Some(stream) = self.sessions.get_mut(&owner.session).and_then(|s| s.stream_mut(owner.stream)) else {
            return;
        };
        self.dirty.insert(owner.session);
        if stream.is_live() {
            stream.last_activity = stream.last_activity.max(last);
        }
        let leg = stream.leg_mut(owner.side);
        leg.bytes = leg.bytes.saturating_add(bytes);
        leg.packets = leg.packets.saturating_add(packets);
    }

    /// The ports (RTP; RTCP is the next one) of the live streams of the
    /// sessions that [`handle_timeout`](Self::handle_timeout) would look at
    /// now: what the daemon forwarded on them by route goes in with
    /// [`forwarded`](Self::forwarded) first, so that no stream with traffic
    /// times out.
    pub fn ports_due(&self, now: Millis) -> Vec<u16> {
        let due = self.timers.iter().take_while(|(at, _)| *at <= now).map(|(_, id)| *id);
        due.filter_map(|id| self.sessions.get(&id)).flat_map(Session::live_ports).collect()
    }

    /// The ports (RTP; RTCP is the next one) of one call's live streams.
    pub fn session_ports(&self, call_id: &str) -> Vec<u16> {
        let session = self.by_call_id.get(call_id).and_then(|id| self.sessions.get(id));
        session.map(|s| s.live_ports().collect()).unwrap_or_default()
    }

    fn packet_verdict(
        &mut self,
        local_port: u16,
        src: SocketAddr,
        packet: &[u8],
        now: Millis,
        latched: &mut Option<u64>,
    ) -> Verdict {
        let base = local_port & !1;
        let rtcp = local_port & 1 == 1;
        let index = usize::from(rtcp);
        let Some(PortOwner { session: session_id, stream, side }) = self.pool.owner(base) else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        let signaling = session.signaling.get(side);
        let Some(stream) = session.streams.iter_mut().find(|s| s.id == stream) else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        if !stream.is_live() {
            return Verdict::Drop(DropReason::UnknownPort);
        }
        let config = &self.config;
        let routable = &config.routable_private_ranges;
        // STUN (ICE checks) is forwarded like media but is not media: it
        // never latches and never counts as the stream's activity.
        let stun = is_stun(packet);

        // Is the sender who we expect on this port?
        let leg = stream.leg_mut(side);
        let current = leg.peer(index);
        if current != Some(src) {
            let Some(sdp) = leg.sdp else { return Verdict::Drop(DropReason::NoRemoteSdp) };
            let announced_port = if rtcp { sdp.port().checked_add(1) } else { Some(sdp.port()) };
            let rtp_peer = if rtcp { leg.rtp_peer.zip(leg.latched_by[0]).map(|(p, r)| (p.ip(), r)) } else { None };
            let expected = Expected { announced: sdp.ip(), announced_port, signaling, rtp_peer };
            let rule = latch_rule(&expected, src, routable);
            let current_rank = leg.latched_by[index].map_or(0, LatchRule::rank);
            let note = |rule, previous| Latch {
                call_id: session.call_id.clone(),
                side,
                rtcp,
                source: src,
                previous,
                rule,
                announced: SocketAddr::new(sdp.ip(), announced_port.unwrap_or(0)),
                signaling_ip: signaling,
            };
            match (current, rule) {
                // Vouched for, but not the latch: forwarded, changes nothing.
                (Some(_), Some(_)) if stun => {}
                // At least as trusted as the latch: the party's NAT mapping
                // changed (or a fallback latch meets the real party).
                (Some(previous), Some(rule)) if rule.rank() >= current_rank => {
                    leg.set_peer(index, src, rule);
                    // An RTCP latch the old RTP latch vouched for goes with it.
                    let follower = matches!(leg.latched_by[1], Some(LatchRule::RtpPeer | LatchRule::Fallback));
                    if !rtcp && follower && leg.rtcp_peer.is_some_and(|p| p.ip() != src.ip()) {
                        leg.reset_rtcp();
                    }
                    self.events.push_back(Event::Latched(note(rule, Some(previous))));
                    *latched = Some(session_id);
                }
                (Some(_), _) => return Verdict::Drop(DropReason::WrongSource),
                (None, Some(_)) if stun => leg.stun_peers[index] = Some(src),
                (None, Some(rule)) => {
                    leg.set_peer(index, src, rule);
                    if rule == LatchRule::Fallback {
                        self.events.push_back(Event::Latched(note(rule, None)));
                    }
                    *latched = Some(session_id);
                }
                (None, None) => {
                    let opened = *leg.window_opened.get_or_insert(now);
                    let window_over = now >= opened.saturating_add(config.latching_window);
                    // Only RTP falls back, and not once its party is found
                    // (its RTCP latched by a rule): RTCP follows its RTP.
                    let found = leg.latched_by[1].is_some_and(|r| r.rank() > 0);
                    if stun || rtcp || found || !behind_nat(sdp.ip(), routable) || !window_over {
                        self.bleed_drops += 1;
                        return Verdict::Drop(DropReason::Bleed);
                    }
                    // Nothing vouched-for arrived within the window.
                    leg.set_peer(index, src, LatchRule::Fallback);
                    self.events.push_back(Event::Latched(note(LatchRule::Fallback, None)));
                    *latched = Some(session_id);
                }
            }
        }
        if !stun {
            stream.last_activity = stream.last_activity.max(now);
            stream.first_media_at.get_or_insert(now);
            if !rtcp {
                stream.note_codec(side, packet);
            }
        }

        // Where does it go?
        let other = stream.leg(side.other());
        if other.hold {
            return Verdict::Drop(DropReason::OnHold);
        }
        let to = other.destination(index).or_else(|| {
            let announced = other.sdp.filter(|a| may_send_to(*a, routable))?;
            let port = if rtcp { announced.port().checked_add(1)? } else { announced.port() };
            Some(SocketAddr::new(announced.ip(), port))
        });
        let Some(to) = to else { return Verdict::Drop(DropReason::NotLatched) };
        let via_port = other.port | u16::from(rtcp);
        if !stun {
            let leg = stream.leg_mut(side);
            leg.bytes = leg.bytes.saturating_add(packet.len() as u64);
            leg.packets = leg.packets.saturating_add(1);
        }
        Verdict::Forward { via_port, to }
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work;
    /// it may be early (then it just reschedules), never late.
    pub fn next_timeout(&self) -> Option<Millis> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// Times out every stream whose deadline has passed and expires sessions
    /// that have no live stream left.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, id));
            let Some(session) = self.sessions.get_mut(&id) else { continue };
            self.dirty.insert(id);
            session.scheduled = None;
            for stream in &mut session.streams {
                stream.check_timeout(&self.config, now, &mut self.pool, &mut self.events);
            }
            sync_session(session, &self.config, &mut self.flows, &mut self.events);
            match session.expiry(&self.config) {
                Some(at) if at <= now => self.expire(id, now),
                _ => self.reschedule(id),
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Statistics of every session, oldest first.
    pub fn sessions(&self, now: Millis) -> Vec<SessionStats> {
        self.sessions.values().map(|s| s.stats(now)).collect()
    }

    /// Statistics of one session.
    pub fn session(&self, call_id: &str, now: Millis) -> Option<SessionStats> {
        let id = self.by_call_id.get(call_id)?;
        self.sessions.get(id).map(|s| s.stats(now))
    }

    /// The status of every stream a session had, answered or not, in
    /// creation order (the statistics list answered streams only).
    pub fn stream_statuses(&self, call_id: &str) -> Vec<StreamStatus> {
        let session = self.by_call_id.get(call_id).and_then(|id| self.sessions.get(id));
        session.map(|s| s.streams.iter().map(|st| st.status).collect()).unwrap_or_default()
    }

    /// The port of every leg of every live stream, answered or not (the
    /// statistics list answered streams only), for invariant checks.
    pub fn live_leg_ports(&self) -> Vec<u16> {
        let live = self.sessions.values().flat_map(|s| s.streams.iter()).filter(|s| s.is_live());
        live.flat_map(|s| [s.caller.port, s.callee.port]).filter(|p| *p != 0).collect()
    }

    pub fn has_session(&self, call_id: &str) -> bool {
        self.by_call_id.contains_key(call_id)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Live (active or on hold) streams by media type.
    pub fn stream_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for stream in self.sessions.values().flat_map(|s| s.streams.iter()).filter(|s| s.is_live()) {
            *counts.entry(stream.media_type.as_str().to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// UDP ports held by streams (two per port pair, four per stream).
    pub fn ports_in_use(&self) -> usize {
        self.pool.pairs_in_use() * 2
    }

    /// UDP ports left to hand out.
    pub fn ports_free(&self) -> usize {
        self.pool.free_pairs() * 2
    }

    /// Packets and bytes relayed since the table was made: what userspace
    /// forwarded plus what the kernel counted on its flows.
    pub fn relayed(&self) -> Relayed {
        self.relayed
    }

    /// Packets dropped by the RTP-bleed rule since start.
    pub fn bleed_drops(&self) -> u64 {
        self.bleed_drops
    }

    /// Ends every session now (SIGTERM); each is reported as
    /// [`Event::Expired`] with its live streams `closed`.
    pub fn expire_all(&mut self, now: Millis) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.expire(id, now);
        }
    }

    /// Removes a session, closes what is still live and reports it.
    fn expire(&mut self, id: u64, now: Millis) {
        let Some(mut session) = self.take_session(id) else { return };
        session.end_all(StreamStatus::Closed, now, &mut self.pool, &mut self.events);
        sync_session(&mut session, &self.config, &mut self.flows, &mut self.events);
        // A session that timed out ended when its media stopped.
        let end = if session.streams.iter().any(|s| s.ended_by_timeout()) {
            session.streams.iter().filter_map(|s| s.ended_at).max().unwrap_or(now).min(now)
        } else {
            now
        };
        session.ended_at = Some(end);
        self.events.push_back(Event::Expired(session.stats(now)));
    }

    /// Brings a session's kernel flows in line with its streams.
    fn sync_flows(&mut self, id: u64) {
        if let Some(session) = self.sessions.get_mut(&id) {
            sync_session(session, &self.config, &mut self.flows, &mut self.events);
        }
    }

    fn flow_mut(&mut self, id: FlowId) -> Option<(u64, &mut Stream, usize)> {
        let &(session, stream) = self.flows.owner.get(&id)?;
        let stream = self.sessions.get_mut(&session)?.stream_mut(stream)?;
        self.dirty.insert(session);
        let index = stream.flows.iter().position(|f| f.is_some_and(|f| f.id == id))?;
        Some((session, stream, index))
    }

    /// Every live kernel flow.
    pub fn flow_ids(&self) -> Vec<FlowId> {
        let mut ids: Vec<FlowId> = self.sessions.values().flat_map(Session::kernel_flow_ids).collect();
        ids.sort();
        ids
    }

    /// The daemon could not install a flow [`Event::FlowUp`] announced (no
    /// route, a refused entry): userspace keeps forwarding it and its stream
    /// times out as a userspace one. It is offered again when its parties
    /// or relay addresses change. False for an unknown flow.
    pub fn flow_refused(&mut self, id: FlowId) -> bool {
        let Some((session, stream, index)) = self.flow_mut(id) else { return false };
        let Some(flow) = stream.flows[index].as_mut() else { return false };
        flow.refused = true;
        self.reschedule(session);
        true
    }

    /// The live kernel flows of one call (read their counters before
    /// [`remove`](Self::remove), so the final statistics carry them).
    pub fn session_flow_ids(&self, call_id: &str) -> Vec<FlowId> {
        let Some(session) = self.by_call_id.get(call_id).and_then(|id| self.sessions.get(id)) else {
            return Vec::new();
        };
        session.kernel_flow_ids().collect()
    }

    /// What the kernel counted on a live flow (absolute totals; smaller
    /// values than already known are ignored). New packets count as stream
    /// activity. False for an unknown or ended flow.
    pub fn set_flow_counters(&mut self, id: FlowId, counters: FlowCounters, now: Millis) -> bool {
        let Some((_, stream, index)) = self.flow_mut(id) else { return false };
        let Some(flow) = stream.flows[index].as_mut() else { return false };
        let old = flow.counters;
        let new = FlowCounters {
            caller_packets: old.caller_packets.max(counters.caller_packets),
            caller_bytes: old.caller_bytes.max(counters.caller_bytes),
            callee_packets: old.callee_packets.max(counters.callee_packets),
            callee_bytes: old.callee_bytes.max(counters.callee_bytes),
        };
        flow.counters = new;
        let (new_packets, old_packets) =
            (new.caller_packets + new.callee_packets, old.caller_packets + old.callee_packets);
        if new_packets > old_packets {
            stream.last_activity = stream.last_activity.max(now);
        }
        self.relayed.packets += new_packets - old_packets;
        self.relayed.bytes += (new.caller_bytes + new.callee_bytes) - (old.caller_bytes + old.callee_bytes);
        true
    }

    /// The kernel destroyed a flow's entry by itself (its UDP timeout
    /// expired) with these final counters. An RTP flow ends its stream as
    /// `conntrack timeout` (and the session when nothing is left); an RTCP
    /// flow goes back to userspace and is latched anew. False for an
    /// unknown flow (one we removed ourselves).
    pub fn flow_expired(&mut self, id: FlowId, counters: FlowCounters, now: Millis) -> bool {
        if !self.set_flow_counters(id, counters, now) {
            return false;
        }
        let Some(&(session, stream_id)) = self.flows.owner.get(&id) else { return false };
        let Some(stream) = self.sessions.get_mut(&session).and_then(|s| s.stream_mut(stream_id)) else {
            return false;
        };
        let index = usize::from(stream.flows[1].is_some_and(|f| f.id == id));
        if index == 0 {
            let ended = stream.last_activity.min(now);
            stream.end(StreamStatus::ConntrackTimeout, ended, &mut self.pool, &mut self.events);
        } else {
            stream.caller.reset_rtcp();
            stream.callee.reset_rtcp();
        }
        self.sync_flows(session);
        let expiry = self.sessions.get(&session).and_then(|s| s.expiry(&self.config));
        match expiry {
            Some(at) if at <= now => self.expire(session, now),
            _ => self.reschedule(session),
        }
        true
    }

    fn take_session(&mut self, id: u64) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        self.dirty.insert(id);
        self.by_call_id.remove(&session.call_id);
        if let Some(due) = session.scheduled {
            self.timers.remove(&(due, id));
        }
        Some(session)
    }

    fn reschedule(&mut self, id: u64) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if let Some(due) = session.scheduled.take() {
            self.timers.remove(&(due, id));
        }
        if let Some(due) = session.next_deadline(&self.config) {
            session.scheduled = Some(due);
            self.timers.insert((due, id));
        }
    }
}

/// Who sent the SDP and whose CSeq space the request's CSeq is in. The CSeq
/// space is the dialog direction: the caller's when From is the caller.
fn sender_of(session: &Session, req: &UpdateRequest) -> Result<(Side, Side), CoreError> {
    let caller_dialog = req.from_tag == session.from_tag;
    if !caller_dialog && req.to_tag.as_deref() != Some(session.from_tag.as_str()) {
        return Err(CoreError::TagMismatch);
    }
    let space = if caller_dialog { Side::Caller } else { Side::Callee };
    let sender = match (req.party, caller_dialog) {
        (PartyType::Request, true) | (PartyType::Reply, false) => Side::Caller,
        (PartyType::Request, false) | (PartyType::Reply, true) => Side::Callee,
    };
    Ok((sender, space))
}

/// Applies one update to a session. Everything that can fail is checked
/// before anything changes, so an error leaves the session as it was.
fn apply_update(
    session: &mut Session,
    req: &UpdateRequest,
    relay_ip: IpAddr,
    now: Millis,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<u16>, CoreError> {
    let (sender, space) = sender_of(session, req)?;
    let order = if req.media.is_empty() {
        // No SDP: the message carries no offer or answer, and the CSeq pair
        // stays (the SDP may come in the reply or the ACK).
        None
    } else {
        Some(OfferState::classify(session.offer.as_ref(), space, req.cseq.number))
    };
    if order == Some(Order::Older) {
        return Ok(session.reply_ports(sender, &req.media));
    }
    match order {
        Some(Order::Newer) => check_offer(session, &req.media, ctx)?,
        Some(Order::Same) => check_answer(session, &req.media)?,
        _ => {}
    }

    // From here on nothing fails.
    note_dialog(session, req, sender, relay_ip, now);
    note_signaling(session, req, sender, ctx.config);
    match order {
        Some(Order::Newer) => {
            apply_offer(session, &req.media, sender, now, ctx);
            session.offer = Some(OfferState::advanced(session.offer.as_ref(), space, req.cseq.number, sender));
        }
        Some(Order::Same) => apply_answer(session, &req.media, sender, now, ctx),
        _ => return Ok(Vec::new()),
    }
    session.trim_history(ctx.config.max_streams.saturating_mul(4).max(16));
    Ok(session.reply_ports(sender, &req.media))
}

fn note_dialog(session: &mut Session, req: &UpdateRequest, sender: Side, relay_ip: IpAddr, now: Millis) {
    session.locals.replied(sender, relay_ip);
    session.last_update = session.last_update.max(now);
    let callee_tag = if req.from_tag == session.from_tag { req.to_tag.clone() } else { Some(req.from_tag.clone()) };
    if callee_tag.is_some() {
        session.to_tag = callee_tag;
    }
    if req.dialog_id.is_some() {
        session.dialog_id.clone_from(&req.dialog_id);
    }
    if session.username.is_none() {
        session.username.clone_from(&req.username);
    }
    if !req.user_agent.is_empty() {
        match sender {
            Side::Caller => session.caller_ua.clone_from(&req.user_agent),
            Side::Callee => session.callee_ua.clone_from(&req.user_agent),
        }
    }
}

/// Remembers the sender's signaling IP (the source of `signaling_ip`, also
/// in the `src_dst` form), which vouches for its media sources while it is
/// behind NAT. Addresses of `signaling_proxies` say nothing about the
/// phone's NAT and are left out.
///
/// A reply may carry the caller's value (a `signaling_ip_avp` set in the
/// request route is the transaction's value in the reply), or the callee
/// really is behind the caller's NAT (two phones of one office). It is
/// kept for the callee all the same: it vouches only for hosts behind the
/// caller's NAT, which the caller's own leg trusts anyway, while without
/// it a callee of the same office would wait out the learning window and
/// then latch to whoever sends first.
fn note_signaling(session: &mut Session, req: &UpdateRequest, sender: Side, config: &CoreConfig) {
    let Some(signaling) = req.signaling_ip else { return };
    let ip = signaling.src.to_canonical();
    if ip.is_unspecified() || ip.is_multicast() || in_ranges(ip, &config.signaling_proxies) {
        return;
    }
    session.signaling.set(sender, ip);
}

/// What a new offer does at each position.
fn plan_offer(session: &Session, items: &[MediaItem]) -> Vec<Plan> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let reusable = session.current_stream(i).filter(|s| s.is_live() && s.media_type == item.media_type);
            match (item.is_rejected(), reusable) {
                (true, Some(s)) => Plan::Remove(s.id),
                (true, None) => Plan::Rejected,
                (false, Some(s)) => Plan::Reuse(s.id),
                (false, None) => Plan::New,
            }
        })
        .collect()
}

fn check_offer(session: &Session, items: &[MediaItem], ctx: &Ctx<'_>) -> Result<(), CoreError> {
    let new = plan_offer(session, items).iter().filter(|p| matches!(p, Plan::New)).count();
    if ctx.pool.free_pairs() < new.saturating_mul(2) {
        return Err(CoreError::NoFreePorts);
    }
    Ok(())
}

/// A new offer: builds the new stream list by position. A live stream of
/// the same type at the same position is kept; others get new ports; the
/// streams of the old offer that are not kept are closed.
fn apply_offer(session: &mut Session, items: &[MediaItem], sender: Side, now: Millis, ctx: &mut Ctx<'_>) {
    let plans = plan_offer(session, items);
    let mut current = Vec::with_capacity(items.len());
    for (item, plan) in items.iter().zip(plans) {
        let id = match plan {
            Plan::Rejected => {
                let id = next_stream_id(session);
                session.streams.push(Stream::rejected(id, item.media_type.clone(), now));
                id
            }
            Plan::Remove(id) => {
                if let Some(s) = session.stream_mut(id) {
                    s.end(StreamStatus::Closed, now, ctx.pool, ctx.events);
                }
                id
            }
            Plan::Reuse(id) => {
                if let Some(s) = session.stream_mut(id) {
                    s.apply_sdp(sender, item, now);
                }
                id
            }
            Plan::New => {
                let id = next_stream_id(session);
                let mut stream = Stream::new(id, item.media_type.clone(), now);
                let owner = |side| PortOwner { session: session.id, stream: id, side };
                // check_offer made sure both pairs are free.
                stream.caller.port = ctx.pool.allocate(owner(Side::Caller), ctx.events).unwrap_or(0);
                stream.callee.port = ctx.pool.allocate(owner(Side::Callee), ctx.events).unwrap_or(0);
                if stream.caller.port == 0 || stream.callee.port == 0 {
                    stream.status = StreamStatus::Rejected;
                    stream.ended_at = Some(now);
                    for port in [stream.caller.port, stream.callee.port] {
                        if port != 0 {
                            ctx.pool.release(port, ctx.events);
                        }
                    }
                } else {
                    stream.apply_sdp(sender, item, now);
                }
                session.streams.push(stream);
                id
            }
        };
        current.push(id);
    }
    let old = std::mem::replace(&mut session.current, current);
    for id in old {
        if !session.current.contains(&id) {
            if let Some(s) = session.stream_mut(id) {
                s.end(StreamStatus::Closed, now, ctx.pool, ctx.events);
            }
        }
    }
}

fn next_stream_id(session: &mut Session) -> u32 {
    let id = session.next_stream_id;
    session.next_stream_id = session.next_stream_id.wrapping_add(1);
    id
}

fn check_answer(session: &Session, items: &[MediaItem]) -> Result<(), CoreError> {
    for (i, item) in items.iter().enumerate() {
        if let Some(stream) = session.current_stream(i) {
            if stream.media_type != item.media_type {
                return Err(CoreError::MediaTypeMismatch);
            }
        }
    }
    Ok(())
}

/// The same CSeq pair: an answer (or the offerer repeating itself). Items
/// match the current streams by position; port 0 or a missing item rejects
/// the stream.
fn apply_answer(session: &mut Session, items: &[MediaItem], sender: Side, now: Millis, ctx: &mut Ctx<'_>) {
    let is_answer = session.offer.is_some_and(|o| o.offerer != sender);
    if is_answer {
        session.answered_at.get_or_insert(now);
    }
    for (i, id) in session.current.clone().into_iter().enumerate() {
        let Some(stream) = session.stream_mut(id) else { continue };
        if is_answer {
            stream.answered_at.get_or_insert(now);
        }
        if !stream.is_live() {
            continue;
        }
        match items.get(i) {
            Some(item) if !item.is_rejected() => stream.apply_sdp(sender, item, now),
            _ => stream.end(StreamStatus::Rejected, now, ctx.pool, ctx.events),
        }
    }
}

/// Compares each stream's kernel flows with the flows it should have and
/// queues [`Event::FlowDown`] / [`Event::FlowUp`] for the difference (down
/// first, so a moved endpoint is replaced, not doubled).
fn sync_session(session: &mut Session, config: &CoreConfig, flows: &mut Flows, events: &mut VecDeque<Event>) {
    sync_flows_of(session, config.kernel_flows, flows, events);
    sync_routes(session, config, events);
}

/// Announces the [`Route`] of each latched leg port whose verdict changed
/// ([`Event::RouteUp`], [`Event::RouteDown`]). Ended streams took theirs
/// down when they ended.
fn sync_routes(session: &mut Session, config: &CoreConfig, events: &mut VecDeque<Event>) {
    if !config.forwarding_entries {
        return;
    }
    for stream in session.streams.iter_mut().filter(|s| s.is_live()) {
        for side in [Side::Caller, Side::Callee] {
            for index in 0..2 {
                let wanted = wanted_route(stream, side, index, &config.routable_private_ranges);
                let slot = &mut stream.leg_mut(side).routes[index];
                if *slot == wanted {
                    continue;
                }
                if let Some(old) = slot.filter(|old| wanted.map_or(true, |w| w.port != old.port)) {
                    events.push_back(Event::RouteDown(old.port));
                }
                if let Some(route) = wanted {
                    events.push_back(Event::RouteUp(route));
                }
                *slot = wanted;
            }
        }
    }
}

/// The verdict [`SessionTable::on_packet`] gives every non-STUN datagram
/// from the party latched on `side`'s `index` (0 RTP, 1 RTCP) port, when it
/// is fixed: the party latched, the stream's first media seen and (RTP)
/// its codec known, so that such a datagram changes nothing but counters
/// and the activity time; the other side not on hold and its destination
/// known. Mirrors the latched branch of `packet_verdict`.
fn wanted_route(stream: &Stream, side: Side, index: usize, routable: &[ipnet::IpNet]) -> Option<Route> {
    if !stream.is_live() || stream.first_media_at.is_none() {
        return None;
    }
    let leg = stream.leg(side);
    let from = leg.peer(index)?;
    if leg.port == 0 || (index == 0 && leg.codec.is_none()) {
        return None;
    }
    let rtcp = index == 1;
    let other = stream.leg(side.other());
    if other.hold || other.port == 0 {
        return None;
    }
    let to = other.destination(index).or_else(|| {
        let announced = other.sdp.filter(|a| may_send_to(*a, routable))?;
        let port = if rtcp { announced.port().checked_add(1)? } else { announced.port() };
        Some(SocketAddr::new(announced.ip(), port))
    })?;
    Some(Route { port: leg.port | u16::from(rtcp), from, via_port: other.port | u16::from(rtcp), to })
}

fn sync_flows_of(session: &mut Session, enabled: bool, flows: &mut Flows, events: &mut VecDeque<Event>) {
    let locals = session.locals;
    let session_id = session.id;
    for stream in &mut session.streams {
        for index in 0..2 {
            let wanted = if enabled { stream.wanted_flow(index) } else { None };
            // A flow is remade when a party moved, or when the relay address
            // a side sends to changed (a re-INVITE routed elsewhere).
            let current = stream.flows[index].map(|f| (f.caller, f.callee, f.locals));
            if current == wanted.map(|(caller, callee)| (caller, callee, locals)) {
                continue;
            }
            if let Some(id) = stream.drop_flow(index) {
                flows.owner.remove(&id);
                events.push_back(Event::FlowDown(id));
            }
            let Some((caller, callee)) = wanted else { continue };
            flows.next_id += 1;
            let id = FlowId(flows.next_id);
            flows.owner.insert(id, (session_id, stream.id));
            stream.flows[index] =
                Some(KernelFlow { id, caller, callee, locals, counters: FlowCounters::default(), refused: false });
            let rtcp = index == 1;
            events.push_back(Event::FlowUp(Flow {
                id,
                caller_local: locals.caller,
                callee_local: locals.callee,
                caller,
                caller_port: stream.caller.port | u16::from(rtcp),
                callee_port: stream.callee.port | u16::from(rtcp),
                callee,
                rtcp,
            }));
        }
    }
}
