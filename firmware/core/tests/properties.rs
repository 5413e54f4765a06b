//! Property tests over random sequences of updates, removes, packets and
//! timeouts: ports are never handed out twice, every port comes back, and a
//! repeated update gets the same answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use relaybox_core::{CoreConfig, Event, Flow, FlowId, SessionTable, Verdict};
use relaybox_proto::{CSeq, Direction, MediaItem, MediaType, PartyType, RemoveRequest, StreamStatus, UpdateRequest};

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
    },
    Remove {
        call: u8,
        tags: u8,
    },
    Packet {
        port_offset: u16,
        src: u8,
        len: usize,
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
        )
            .prop_map(|(call, callee_dialog, reply, with_to_tag, cseq, items, busy)| Op::Update {
                call, callee_dialog, reply, with_to_tag, cseq, items, busy
            }),
        1 => (0..CALLS, 0u8..4).prop_map(|(call, tags)| Op::Remove { call, tags }),
        4 => (0u16..48, 0u8..4, 0usize..40).prop_map(|(port_offset, src, len)| Op::Packet { port_offset, src, len }),
        2 => (0u64..200_000).prop_map(Op::Advance),
        1 => Just(Op::ExpireAll),
    ]
}

const IPS: [&str; 4] = ["198.51.100.10", "192.168.1.20", "0.0.0.0", "2001:db8::7"];
const SOURCES: [&str; 4] = ["198.51.100.10:4000", "203.0.113.77:31000", "192.0.2.66:999", "[2001:db8::7]:4000"];

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
        signaling_ip: None,
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
                Event::ClosePorts(p) => prop_assert!(self.open.remove(p), "port {} closed but not open", p),
                Event::Expired(_) => {}
                Event::FlowUp(f) => {
                    prop_assert!(self.open.contains(&(f.caller_port & !1)), "flow on a closed port {:?}", f);
                    prop_assert!(self.open.contains(&(f.callee_port & !1)), "flow on a closed port {:?}", f);
                    prop_assert_eq!(f.caller_port & 1, u16::from(f.rtcp));
                    prop_assert!(self.flows.insert(f.id, *f).is_none(), "flow {:?} up twice", f.id);
                }
                Event::FlowDown(id) => prop_assert!(self.flows.remove(id).is_some(), "flow {:?} down, not up", id),
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
    prop_assert_eq!(t.flow_ids(), sockets.flows.keys().copied().collect::<Vec<_>>());
    for f in sockets.flows.values() {
        prop_assert!(live_ports.contains(&(f.caller_port & !1)), "flow {:?} outlived its stream", f.id);
    }
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let config = CoreConfig {
        port_range: (40000, 40040),
        max_sessions: 2,
        max_streams: 4,
        kernel_flows: true,
        ..CoreConfig::default()
    };
    let mut t = SessionTable::new(config);
    let total = t.ports_free();
    let relay_ip: IpAddr = "203.0.113.1".parse().unwrap();
    let mut sockets = Sockets::default();
    let mut now: u64 = 1_700_000_000_000;
    for op in ops {
        match op {
            Op::Update { call, callee_dialog, reply, with_to_tag, cseq, items, busy } => {
                let req = build_update(*call, *callee_dialog, *reply, *with_to_tag, *cseq, items);
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
            Op::Packet { port_offset, src, len } => {
                let port = 40000 + port_offset;
                if sockets.unbound.contains(&(port & !1)) {
                    continue; // nothing listens there
                }
                let src: SocketAddr = SOURCES[usize::from(src % 4)].parse().unwrap();
                let packet = vec![0x80u8; *len];
                if let Verdict::Forward { via_port, .. } = t.on_packet(port, src, &packet, now) {
                    prop_assert!(sockets.open.contains(&(via_port & !1)), "forwarded via a closed port {}", via_port);
                    prop_assert_eq!(via_port & 1, port & 1, "RTP stays RTP, RTCP stays RTCP");
                    prop_assert_ne!(via_port & !1, port & !1, "forwarded out of the receiving leg");
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
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ports_are_unique_returned_and_updates_idempotent(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops)?;
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
