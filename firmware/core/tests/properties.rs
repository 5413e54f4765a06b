//! Property tests over random sequences of updates, removes, packets and
//! timeouts: ports are never handed out twice, every port comes back, a
//! repeated update gets the same answer, a source nothing vouches for gets
//! and gives no media while the learning window holds, and STUN never
//! latches or makes a kernel flow; a route the core announced gives a
//! latched party's datagram the verdict and the effects `on_packet` would,
//! and the incrementally refreshed snapshot is the whole table's.

mod common;

use common::Signaled;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use relaybox_core::{
    ClockMark, CoreConfig, Event, Flow, FlowId, LatchRule, Route, SessionTable, SnapshotCache, Verdict,
};
use relaybox_proto::{
    CSeq, Direction, MediaItem, MediaType, PartyType, RemoveRequest, SignalingIp, StreamStatus, UpdateRequest,
};

const CALLS: u8 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// `busy`: pairs `40000 + 2 * bit` another program holds while the
    /// daemon opens this update's ports (the daemon moves them).
    Update {
        call: u8,
        callee_dialog: bool,
        reply: bool,
        with_to_tag: bool,
        cseq: u32,
        items: Vec<ItemSpec>,
        busy: u16,
        signaling: u8,
    },
    Remove {
        call: u8,
        tags: u8,
    },
    Packet {
        port_offset: u16,
        src: u8,
        len: usize,
        stun: bool,
    },
    /// A datagram from the party of one of the routes up (`pick` modulo
    /// their number), if any.
    Routed {
        pick: u8,
        len: usize,
        stun: bool,
    },
    Advance(u64),
    ExpireAll,
}

#[derive(Debug, Clone)]
struct ItemSpec {
    kind: u8,
    ip: u8,
    port: u8,
    direction: u8,
    ice: bool,
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    (0u8..3, 0u8..4, 0u8..4, 0u8..4, any::<bool>()).prop_map(|(kind, ip, port, direction, ice)| ItemSpec {
        kind,
        ip,
        port,
        direction,
        ice,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..CALLS,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u32..4,
            prop::collection::vec(item_spec(), 0..5),
            prop_oneof![3 => Just(0u16), 1 => any::<u16>()],
            0u8..4,
        )
            .prop_map(|(call, callee_dialog, reply, with_to_tag, cseq, items, busy, signaling)| Op::Update {
                call, callee_dialog, reply, with_to_tag, cseq, items, busy, signaling
            }),
        1 => (0..CALLS, 0u8..4).prop_map(|(call, tags)| Op::Remove { call, tags }),
        4 => (0u16..48, 0u8..4, 0usize..40, prop::bool::weighted(0.2))
            .prop_map(|(port_offset, src, len, stun)| Op::Packet { port_offset, src, len, stun }),
        3 => (any::<u8>(), 0usize..40, prop::bool::weighted(0.2)).prop_map(|(pick, len, stun)| Op::Routed { pick, len, stun }),
        2 => (0u64..200_000).prop_map(Op::Advance),
        1 => Just(Op::ExpireAll),
    ]
}

const IPS: [&str; 4] = ["198.51.100.10", "192.168.1.20", "0.0.0.0", "2001:db8::7"];
const SOURCES: [&str; 4] = ["198.51.100.10:4000", "203.0.113.77:31000", "192.0.2.66:999", "[2001:db8::7]:4000"];
/// Never announced and never a signaling IP: only a fallback latches it.
const STRANGER: &str = "192.0.2.66:999";
/// `signaling_ip` of an update: none, the NAT source, a proxy, the public one.
const SIGNALING: [Option<&str>; 4] = [None, Some("203.0.113.77"), Some("198.18.0.1"), Some("198.51.100.10")];

/// A STUN Binding request of `len` bytes or a little more (RFC 5389).
fn stun_packet(len: usize) -> Vec<u8> {
    let body = (len / 4) * 4;
    let mut p = vec![0x00, 0x01];
    p.extend_from_slice(&(body as u16).to_be_bytes());
    p.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    p.resize(20 + body, 0x5a);
    p
}

fn build_item(spec: &ItemSpec) -> MediaItem {
    let media_type = [MediaType::Audio, MediaType::Video, MediaType::Image][usize::from(spec.kind % 3)].clone();
    let direction = [Direction::SendRecv, Direction::SendOnly, Direction::RecvOnly, Direction::Inactive]
        [usize::from(spec.direction % 4)];
    MediaItem {
        media_type,
        ip: IPS[usize::from(spec.ip % 4)].parse::<IpAddr>().unwrap(),
        port: [0, 4000, 4002, 5000][usize::from(spec.port % 4)],
        direction,
        ice: spec.ice,
    }
}

fn build_update(
    call: u8,
    callee_dialog: bool,
    reply: bool,
    with_to_tag: bool,
    cseq: u32,
    items: &[ItemSpec],
    signaling: u8,
) -> UpdateRequest {
    let (caller, callee) = (format!("f{call}"), format!("t{call}"));
    let (from_tag, to_tag) =
        if callee_dialog { (callee, Some(caller)) } else { (caller, with_to_tag.then_some(callee)) };
    UpdateRequest {
        party: if reply { PartyType::Reply } else { PartyType::Request },
        dialog_id: None,
        call_id: format!("call-{call}"),
        cseq: CSeq { number: cseq, method: "INVITE".into() },
        from_uri: "sip:alice@example.com".into(),
        to_uri: "sip:bob@example.com".into(),
        from_tag,
        to_tag,
        user_agent: "UA".into(),
        signaling_ip: SIGNALING[usize::from(signaling % 4)].and_then(SignalingIp::parse),
        username: None,
        media_relay: None,
        media: items.iter().map(build_item).collect(),
    }
}

/// Follows the daemon's view of bound sockets through the events.
#[derive(Default)]
struct Sockets {
    open: BTreeSet<u16>,
    /// Pairs the table holds that the daemon could not bind and could not
    /// move (no free pair left): nothing arrives on them.
    unbound: BTreeSet<u16>,
    /// Kernel flows the daemon would hold.
    flows: BTreeMap<FlowId, Flow>,
    /// Fallback latches seen.
    fallbacks: usize,
    /// Forwarding entries the daemon would hold, by port.
    routes: BTreeMap<u16, Route>,
    /// Datagrams a route covered.
    routed: usize,
}

impl Sockets {
    fn drain(&mut self, t: &mut SessionTable) -> Result<Vec<Event>, TestCaseError> {
        self.drain_moving(t, 0, &mut Vec::new())
    }

    /// As the relay after an update: a pair in `busy` cannot be bound and
    /// is moved with `move_unbindable`; `(old, new)` goes to `moved`.
    fn drain_moving(
        &mut self,
        t: &mut SessionTable,
        busy: u16,
        moved: &mut Vec<(u16, u16)>,
    ) -> Result<Vec<Event>, TestCaseError> {
        let is_busy = |p: u16| p < 40032 && busy & (1 << ((p - 40000) / 2)) != 0;
        let mut failed = BTreeSet::new();
        let mut seen = Vec::new();
        while let Some(event) = t.poll_event() {
            match &event {
                Event::OpenPorts(p) if is_busy(*p) => {
                    prop_assert!(!self.open.contains(p), "port {} handed out twice", p);
                    match t.move_unbindable(*p) {
                        Some(new) => {
                            prop_assert_ne!(new, *p);
                            failed.insert(*p);
                            moved.push((*p, new));
                        }
                        None => {
                            // Only the pairs parked by this update's moves are left.
                            prop_assert_eq!(
                                t.ports_free(),
                                2 * moved.len(),
                                "a free pair was left but {} was not moved",
                                p
                            );
                            self.unbound.insert(*p);
                        }
                    }
                }
                Event::OpenPorts(p) => {
                    prop_assert!(p % 2 == 0, "odd port pair {}", p);
                    prop_assert!(self.open.insert(*p), "port {} handed out twice", p);
                }
                Event::ClosePorts(p) if failed.remove(p) || self.unbound.remove(p) => {}
                Event::ClosePorts(p) => {
                    prop_assert!(self.open.remove(p), "port {} closed but not open", p);
                    prop_assert!(
                        !self.routes.contains_key(p) && !self.routes.contains_key(&(p + 1)),
                        "port {} closed with its route up",
                        p
                    );
                }
                Event::RouteUp(r) => {
                    prop_assert!(self.open.contains(&(r.port & !1)), "route on a closed port {:?}", r);
                    prop_assert!(self.open.contains(&(r.via_port & !1)), "route via a closed port {:?}", r);
                    prop_assert_eq!(r.port & 1, r.via_port & 1, "RTP stays RTP, RTCP stays RTCP");
                    prop_assert_ne!(r.port & !1, r.via_port & !1);
                    self.routes.insert(r.port, *r);
                }
                Event::RouteDown(p) => prop_assert!(self.routes.remove(p).is_some(), "route {} down, not up", p),
                Event::Expired(_) => {}
                Event::FlowUp(f) => {
                    prop_assert!(self.open.contains(&(f.caller_port & !1)), "flow on a closed port {:?}", f);
                    prop_assert!(self.open.contains(&(f.callee_port & !1)), "flow on a closed port {:?}", f);
                    prop_assert_eq!(f.caller_port & 1, u16::from(f.rtcp));
                    prop_assert!(self.flows.insert(f.id, *f).is_none(), "flow {:?} up twice", f.id);
                }
                Event::FlowDown(id) => prop_assert!(self.flows.remove(id).is_some(), "flow {:?} down, not up", id),
                Event::Latched(latch) => {
                    if latch.rule == LatchRule::Fallback {
                        self.fallbacks += 1;
                    } else {
                        prop_assert!(latch.previous.is_some(), "a first latch by a rule is not reported: {:?}", latch);
                        prop_assert_ne!(latch.source.to_string(), STRANGER, "nothing vouches for the stranger");
                    }
                }
            }
            seen.push(event);
        }
        Ok(seen)
    }
}

/// The table's own accounting agrees with the events, and no two live
/// stream legs share a port.
fn check_invariants(t: &SessionTable, sockets: &Sockets, total: usize, now: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.ports_in_use() + t.ports_free(), total);
    prop_assert_eq!(t.ports_in_use(), (sockets.open.len() + sockets.unbound.len()) * 2);
    let mut live_ports = BTreeSet::new();
    for port in t.live_leg_ports() {
        prop_assert!(live_ports.insert(port), "port {} used by two legs", port);
        let held = sockets.open.contains(&port) || sockets.unbound.contains(&port);
        prop_assert!(held, "live port {} not open", port);
    }
    // The statistics name the same ports for the streams they list.
    for session in t.sessions(now) {
        for stream in session.streams {
            if matches!(stream.status, StreamStatus::Active | StreamStatus::OnHold) {
                for local in [&stream.caller_local, &stream.callee_local] {
                    let port = local.parse::<SocketAddr>().map_err(|e| TestCaseError::fail(e.to_string()))?.port();
                    prop_assert!(live_ports.contains(&port), "listed port {} is not a live leg", port);
                }
            }
        }
    }
    prop_assert_eq!(live_ports.len(), sockets.open.len() + sockets.unbound.len());
    for r in sockets.routes.values() {
        prop_assert!(live_ports.contains(&(r.port & !1)), "route {:?} outlived its stream", r);
    }
    prop_assert_eq!(t.flow_ids(), sockets.flows.keys().copied().collect::<Vec<_>>());
    for f in sockets.flows.values() {
        prop_assert!(live_ports.contains(&(f.caller_port & !1)), "flow {:?} outlived its stream", f.id);
    }
    Ok(())
}

/// `on_packet`, and when a route the core announced covers the datagram,
/// a check that the daemon forwarding it by that route (and reporting it
/// with `forwarded`) gets the same verdict and leaves the table as
/// `on_packet` does.
fn packet_checking_routes(
    t: &mut SessionTable,
    sockets: &mut Sockets,
    port: u16,
    src: SocketAddr,
    packet: &[u8],
    now: u64,
) -> Result<Verdict, TestCaseError> {
    let route = sockets.routes.get(&port).copied().filter(|r| r.matches(src, packet));
    let by_route = route.map(|_| {
        let mut copy = t.clone();
        copy.forwarded(port, 1, packet.len() as u64, now);
        copy
    });
    let verdict = t.on_packet(port, src, packet, now);
    if let (Some(route), Some(copy)) = (route, by_route) {
        sockets.routed += 1;
        prop_assert_eq!(verdict, Verdict::Forward { via_port: route.via_port, to: route.to });
        let events = sockets.drain(t)?;
        prop_assert!(events.is_empty(), "a routed datagram changed more: {:?}", events);
        prop_assert_eq!(t.sessions(now), copy.sessions(now), "routed counting differs");
        prop_assert_eq!(t.relayed(), copy.relayed());
        prop_assert_eq!(t.next_timeout(), copy.next_timeout());
    }
    Ok(verdict)
}

/// The learning windows the runs use: fallback at once, MediaProxy-like;
/// the default; never within a run.
const WINDOWS: [u64; 3] = [0, 3_000, u64::MAX];

fn run(ops: &[Op], window: u64) -> Result<(), TestCaseError> {
    let config = CoreConfig {
        port_range: (40000, 40040),
        max_sessions: 2,
        max_streams: 4,
        kernel_flows: true,
        forwarding_entries: true,
        latching_window: window,
        signaling_proxies: vec!["198.18.0.0/15".parse().unwrap()],
        ..CoreConfig::default()
    };
    let mut t = SessionTable::new(config);
    let mut cache = SnapshotCache::new();
    let total = t.ports_free();
    let relay_ip: IpAddr = "203.0.113.1".parse().unwrap();
    let mut sockets = Sockets::default();
    let mut now: u64 = 1_700_000_000_000;
    for op in ops {
        match op {
            Op::Update { call, callee_dialog, reply, with_to_tag, cseq, items, busy, signaling } => {
                let req = build_update(*call, *callee_dialog, *reply, *with_to_tag, *cseq, items, *signaling);
                let mut first = t.update(&req, relay_ip, now);
                let mut moved = Vec::new();
                sockets.drain_moving(&mut t, *busy, &mut moved)?;
                if let Ok(ports) = &mut first {
                    prop_assert_eq!(ports.len(), req.media.len());
                    for p in ports.iter_mut() {
                        for &(old, new) in &moved {
                            if *p == old {
                                *p = new;
                            }
                        }
                    }
                    for p in ports.iter().filter(|p| **p != 0) {
                        prop_assert!(
                            sockets.open.contains(p) || sockets.unbound.contains(p),
                            "returned port {} is neither open nor stuck",
                            p
                        );
                    }
                }
                let second = t.update(&req, relay_ip, now);
                prop_assert_eq!(&second, &first, "a repeated update must get the same answer");
                let events = sockets.drain(&mut t)?;
                prop_assert!(events.is_empty(), "a repeated update changed ports: {:?}", events);
            }
            Op::Remove { call, tags } => {
                let (caller, callee) = (format!("f{call}"), format!("t{call}"));
                let (from_tag, to_tag) = match tags {
                    0 => (caller, Some(callee)),
                    1 => (callee, Some(caller)),
                    2 => (caller, None),
                    _ => ("stranger".to_string(), None),
                };
                // The session's caller is whoever sent its first update.
                let call_id = format!("call-{call}");
                let owner = t.session(&call_id, now).map(|s| s.from_tag);
                let accepted = owner.as_ref().is_some_and(|o| *o == from_tag || to_tag.as_ref() == Some(o));
                let result = t.remove(&RemoveRequest { call_id, from_tag, to_tag }, now);
                prop_assert_eq!(result.is_ok(), accepted);
                if let Ok(stats) = result {
                    prop_assert!(stats
                        .streams
                        .iter()
                        .all(|s| !matches!(s.status, StreamStatus::Active | StreamStatus::OnHold)));
                }
            }
            Op::Packet { .. } | Op::Routed { .. } => {
                let (port, src, len, stun) = match op {
                    Op::Packet { port_offset, src, len, stun } => {
                        (40000 + port_offset, SOURCES[usize::from(src % 4)].parse().unwrap(), len, stun)
                    }
                    Op::Routed { pick, len, stun } if !sockets.routes.is_empty() => {
                        let route = sockets.routes.values().nth(usize::from(*pick) % sockets.routes.len()).unwrap();
                        (route.port, route.from, len, stun)
                    }
                    _ => continue,
                };
                if sockets.unbound.contains(&(port & !1)) {
                    continue; // nothing listens there
                }
                let src: SocketAddr = src;
                let packet = if *stun { stun_packet(*len) } else { vec![0x80u8; *len] };
                let remotes = |t: &SessionTable| {
                    t.sessions(now)
                        .into_iter()
                        .flat_map(|s| s.streams.into_iter().map(|st| (st.caller_remote, st.callee_remote)))
                        .collect::<Vec<_>>()
                };
                let before = remotes(&t);
                let verdict = packet_checking_routes(&mut t, &mut sockets, port, src, &packet, now)?;
                if let Verdict::Forward { via_port, to } = verdict {
                    prop_assert!(sockets.open.contains(&(via_port & !1)), "forwarded via a closed port {}", via_port);
                    prop_assert_eq!(via_port & 1, port & 1, "RTP stays RTP, RTCP stays RTCP");
                    prop_assert_ne!(via_port & !1, port & !1, "forwarded out of the receiving leg");
                    if window == u64::MAX {
                        prop_assert_ne!(src.to_string(), STRANGER, "the stranger's packet was forwarded");
                        prop_assert_ne!(to.to_string(), STRANGER, "media went to the stranger");
                    }
                }
                if *stun {
                    let events = sockets.drain(&mut t)?;
                    prop_assert!(
                        !events.iter().any(|e| matches!(e, Event::FlowUp(_))),
                        "STUN made a flow: {:?}",
                        events
                    );
                    prop_assert_eq!(remotes(&t), before, "STUN latched");
                }
            }
            Op::Advance(ms) => {
                now += ms;
                t.handle_timeout(now);
                if let Some(due) = t.next_timeout() {
                    prop_assert!(due > now, "handle_timeout left due work behind");
                }
            }
            Op::ExpireAll => {
                let sessions = t.session_count();
                t.expire_all(now);
                let expired = sockets.drain(&mut t)?.iter().filter(|e| matches!(e, Event::Expired(_))).count();
                prop_assert_eq!(expired, sessions);
            }
        }
        sockets.drain(&mut t)?;
        check_invariants(&t, &sockets, total, now)?;
        // Refreshed a session or two at a time, the cache ends up the table.
        let mark = ClockMark { at: now, boot_id: [3; 16], since_boot_ms: 77 };
        let mut steps = 0;
        while !t.refresh_snapshot(&mut cache, 2) {
            steps += 1;
            prop_assert!(steps <= 8, "refresh does not end");
        }
        prop_assert_eq!(cache.encode(mark), t.snapshot(mark).encode(), "incremental snapshot differs");
    }
    // Removing everything returns every port.
    for session in t.sessions(now) {
        let req = RemoveRequest { call_id: session.call_id, from_tag: session.from_tag, to_tag: None };
        prop_assert!(t.remove(&req, now).is_ok());
    }
    sockets.drain(&mut t)?;
    prop_assert_eq!(t.session_count(), 0);
    prop_assert_eq!(t.ports_in_use(), 0);
    prop_assert_eq!(t.ports_free(), total);
    prop_assert!(sockets.open.is_empty());
    prop_assert_eq!(t.next_timeout(), None);
    if window == u64::MAX {
        prop_assert_eq!(sockets.fallbacks, 0, "a fallback latch without the window passing");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ports_are_unique_returned_and_updates_idempotent(
        ops in prop::collection::vec(op(), 1..60),
        window in prop::sample::select(WINDOWS.to_vec()),
    ) {
        run(&ops, window)?;
    }

    #[test]
    fn arbitrary_packets_never_panic(
        port in any::<u16>(),
        src in any::<[u8; 4]>(),
        sport in any::<u16>(),
        packet in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<u64>(),
    ) {
        let mut t = SessionTable::new(common::config());
        t.update(&common::caller_offer(1, common::CALLER_SDP), common::relay_ip(), 1).unwrap();
        t.update(&common::callee_answer(1, common::CALLEE_SDP), common::relay_ip(), 2).unwrap();
        let src = SocketAddr::from((src, sport));
        let verdict = t.on_packet(port, src, &packet, now);
        if !(40000..40004).contains(&port) {
            prop_assert_eq!(verdict, Verdict::Drop(relaybox_core::DropReason::UnknownPort));
        }
        t.handle_timeout(now);
        prop_assert_eq!(t.ports_in_use() + t.ports_free(), 100);
    }
}

/// One step of [`latching_never_lets_a_stranger_in`].
#[derive(Debug, Clone)]
enum LatchOp {
    /// `port`: 0..4 from 40000; `src`: an index into `LATCH_SOURCES`.
    Packet {
        port: u16,
        src: usize,
        short: bool,
        stun: bool,
    },
    Advance(u64),
    /// The caller re-INVITEs with another private address.
    Reinvite,
    /// The callee puts the call on hold (`hold`) or takes it off.
    Hold(bool),
    /// A datagram from the party of one of the routes up, if any.
    Routed {
        pick: u8,
        short: bool,
        stun: bool,
    },
}

/// The caller's NAT (its signaling IP) on two ports, the callee's NAT, the
/// stranger, and the callee's announced address itself.
const LATCH_SOURCES: [&str; 5] =
    ["198.51.100.10:31000", "198.51.100.10:31500", "203.0.113.77:42000", STRANGER, "192.168.2.20:5000"];

fn latch_op() -> impl Strategy<Value = LatchOp> {
    prop_oneof![
        8 => (0u16..4, 0usize..LATCH_SOURCES.len(), prop::bool::weighted(0.2), prop::bool::weighted(0.2))
            .prop_map(|(port, src, short, stun)| LatchOp::Packet { port, src, short, stun }),
        3 => (0u64..5_000).prop_map(LatchOp::Advance),
        1 => Just(LatchOp::Reinvite),
        1 => any::<bool>().prop_map(LatchOp::Hold),
        4 => (any::<u8>(), prop::bool::weighted(0.2), prop::bool::weighted(0.2))
            .prop_map(|(pick, short, stun)| LatchOp::Routed { pick, short, stun }),
    ]
}

/// A call between phones behind NAT (private SDP, signaling from their
/// NATs), a stranger among the sources: whatever the order and timing,
/// the stranger never gets or gives media while the learning window holds
/// (never, with an endless window), never takes a leg a vouched source
/// holds, and STUN never latches or makes a flow.
fn run_latching(ops: &[LatchOp], window: u64) -> Result<(), TestCaseError> {
    let config =
        CoreConfig { kernel_flows: true, forwarding_entries: true, latching_window: window, ..common::config() };
    let mut t = SessionTable::new(config);
    let relay: IpAddr = "203.0.113.1".parse().unwrap();
    let mut now = 1_700_000_000_000u64;
    let offer = |cseq: u32, ip: &str| {
        let list = format!("audio:{ip}:4000:sendrecv:ice=yes");
        common::caller_offer(cseq, &list).signaled_by("198.51.100.10")
    };
    let answer =
        |cseq: u32| common::callee_answer(cseq, "audio:192.168.2.20:5000:sendrecv:ice=yes").signaled_by("203.0.113.77");
    t.update(&offer(1, "192.168.1.10"), relay, now).unwrap();
    t.update(&answer(1), relay, now).unwrap();
    let mut sockets = Sockets::default();
    sockets.drain(&mut t)?;
    let (mut cseq, mut vouched_held) = (1u32, [false, false]);
    let mut caller_ip = "192.168.1.10";
    let remotes = |t: &SessionTable, now: u64| {
        t.session(common::CALL, now).map(|s| {
            let st = s.streams.last().cloned().unwrap();
            [st.caller_remote, st.callee_remote]
        })
    };
    for op in ops {
        match op {
            LatchOp::Packet { .. } | LatchOp::Routed { .. } => {
                let (port, src, short, stun) = match op {
                    LatchOp::Packet { port, src, short, stun } => {
                        (40000 + port, LATCH_SOURCES[*src].parse().unwrap(), *short, stun)
                    }
                    LatchOp::Routed { pick, short, stun } if !sockets.routes.is_empty() => {
                        let route = sockets.routes.values().nth(usize::from(*pick) % sockets.routes.len()).unwrap();
                        (route.port, route.from, *short, stun)
                    }
                    _ => continue,
                };
                let src: SocketAddr = src;
                // A short datagram is no RTP: its codec stays unknown.
                let rtp = if short { vec![0x80u8, 8, 0, 1] } else { vec![0x80u8, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0] };
                let packet = if *stun { stun_packet(12) } else { rtp };
                let before = remotes(&t, now);
                let verdict = packet_checking_routes(&mut t, &mut sockets, port, src, &packet, now)?;
                let events = sockets.drain(&mut t)?;
                let after = remotes(&t, now);
                if let Verdict::Forward { to, .. } = verdict {
                    if window == u64::MAX {
                        prop_assert_ne!(src.to_string(), STRANGER, "the stranger's packet was forwarded");
                        prop_assert_ne!(to.to_string(), STRANGER, "media went to the stranger");
                    }
                }
                if *stun {
                    prop_assert_eq!(&after, &before, "STUN latched");
                    prop_assert!(!events.iter().any(|e| matches!(e, Event::FlowUp(_))), "STUN made a flow");
                }
                if let Some(after) = &after {
                    for (i, remote) in after.iter().enumerate() {
                        if vouched_held[i] {
                            prop_assert_ne!(remote, STRANGER, "the stranger took a leg a vouched source held");
                        }
                        if window == u64::MAX {
                            prop_assert_ne!(remote, STRANGER, "the stranger latched without a window passing");
                        }
                        if remote != "Unknown" && remote != STRANGER {
                            vouched_held[i] = true;
                        }
                    }
                }
            }
            LatchOp::Advance(ms) => {
                now += ms;
                t.handle_timeout(now);
                sockets.drain(&mut t)?;
            }
            LatchOp::Hold(_) if !t.has_session(common::CALL) => continue,
            LatchOp::Hold(hold) => {
                cseq += 1;
                let direction = if *hold { "sendonly" } else { "sendrecv" };
                let held = format!("audio:192.168.2.20:5000:{direction}:ice=yes");
                let reinvite = common::callee_offer(cseq, &held).signaled_by("203.0.113.77");
                if t.update(&reinvite, relay, now).is_ok() {
                    // The caller stays where it is.
                    let list = format!("audio:{caller_ip}:4000:sendrecv:ice=yes");
                    let _ = t.update(&common::caller_answer(cseq, &list).signaled_by("198.51.100.10"), relay, now);
                }
                sockets.drain(&mut t)?;
            }
            LatchOp::Reinvite => {
                cseq += 1;
                let ip = if cseq % 2 == 0 { "192.168.1.11" } else { "192.168.1.10" };
                caller_ip = ip;
                if !t.has_session(common::CALL) {
                    vouched_held = [false, false]; // a new call
                }
                if t.update(&offer(cseq, ip), relay, now).is_ok() {
                    t.update(&answer(cseq), relay, now).unwrap();
                    vouched_held[0] = false;
                }
                sockets.drain(&mut t)?;
            }
        }
        check_invariants(&t, &sockets, 100, now)?;
    }
    if window == u64::MAX {
        prop_assert_eq!(sockets.fallbacks, 0);
    }
    ROUTED.fetch_add(sockets.routed, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Datagrams the routes covered over all cases (the check must not be idle).
static ROUTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn routes_are_exercised() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..ProptestConfig::default() });
    let before = ROUTED.load(std::sync::atomic::Ordering::Relaxed);
    runner
        .run(&(prop::collection::vec(latch_op(), 40..80), Just(3_000u64)), |(ops, window)| run_latching(&ops, window))
        .unwrap();
    let routed = ROUTED.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(routed >= 64, "only {routed} datagrams were covered by a route in 64 runs");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn latching_never_lets_a_stranger_in(
        ops in prop::collection::vec(latch_op(), 1..80),
        window in prop::sample::select(vec![3_000u64, u64::MAX]),
    ) {
        run_latching(&ops, window)?;
    }
}
