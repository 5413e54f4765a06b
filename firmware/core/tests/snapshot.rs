//! Restarts: a table saved with `snapshot`, encoded, decoded and restored
//! carries on as if nothing happened.

mod common;

use common::*;
use relaybox_core::{
    ClockMark, CoreConfig, DropReason, Event, FlowCounters, SessionTable, Snapshot, SnapshotError, Verdict,
};
use relaybox_proto::StreamStatus;

const T0: u64 = 1_700_000_000_000;
const MARK: ClockMark = ClockMark { at: T0 + 5000, boot_id: [7; 16], since_boot_ms: 123_456 };

fn kernel_config() -> CoreConfig {
    CoreConfig { kernel_flows: true, ..config() }
}

/// Answered call with both sides latched (a kernel flow with kernel_flows).
fn latched_call(t: &mut SessionTable) {
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000);
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000);
    events(t);
}

fn round_trip(t: &SessionTable) -> Snapshot {
    let bytes = t.snapshot(MARK).encode();
    let snapshot = Snapshot::decode(&bytes).unwrap();
    assert_eq!(snapshot.clock(), Some(MARK));
    snapshot
}

#[test]
fn a_restored_kernel_call_keeps_its_flow_ports_and_counters() {
    let mut t = SessionTable::new(kernel_config());
    latched_call(&mut t);
    let flow = t.flow_ids()[0];
    let c = FlowCounters { caller_packets: 50, caller_bytes: 8600, callee_packets: 40, callee_bytes: 6880 };
    assert!(t.set_flow_counters(flow, c, T0 + 3000));
    let before = t.sessions(T0 + 4000);

    let snap = round_trip(&t);
    assert_eq!((snap.session_count(), snap.port_range()), (1, (40000, 40100)));
    let mut r = SessionTable::restore(kernel_config(), snap, T0 + 4000);
    assert_eq!(events(&mut r), vec![Event::OpenPorts(40000), Event::OpenPorts(40002)], "ports, no FlowUp");
    assert_eq!(r.sessions(T0 + 4000), before);
    assert_eq!(r.flow_ids(), vec![flow]);
    let flows = r.kernel_flows();
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].caller, flows[0].callee), (sa(CALLER_ADDR), sa(CALLEE_NAT_ADDR)));
    assert_eq!((flows[0].caller_port, flows[0].callee_port), (40000, 40002));
    assert_eq!(r.next_timeout(), None, "the kernel's timeout rules a forwarded stream");

    // The kernel kept counting across the restart; absolute totals go on.
    let later = FlowCounters { caller_packets: 500, caller_bytes: 86000, callee_packets: 490, callee_bytes: 84280 };
    assert!(r.set_flow_counters(flow, later, T0 + 10_000));
    let stats = r.remove(&remove(CALLER_TAG, Some(CALLEE_TAG)), T0 + 11_000).unwrap();
    assert_eq!(stats.streams[0].caller_packets, 500, "the first packet had nowhere to go");
    assert_eq!(events(&mut r), vec![Event::ClosePorts(40000), Event::ClosePorts(40002), Event::FlowDown(flow)]);

    // New sessions and flows do not reuse ids or the just-freed ports.
    let ports = r.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0 + 12_000).unwrap();
    assert_eq!(ports, vec![40006], "callee-facing port of a fresh pair");
    r.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 12_000).unwrap();
    r.on_packet(40004, sa(CALLER_ADDR), &rtp(8, 172), T0 + 12_000);
    r.on_packet(40006, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 12_000);
    assert!(r.flow_ids()[0] > flow);
}

#[test]
fn a_flow_lost_during_the_restart_ends_as_conntrack_timeout() {
    let mut t = SessionTable::new(kernel_config());
    latched_call(&mut t);
    let mut r = SessionTable::restore(kernel_config(), round_trip(&t), T0 + 5000);
    events(&mut r);
    let flow = r.flow_ids()[0];
    assert!(r.flow_expired(flow, FlowCounters::default(), T0 + 6000));
    let ev = events(&mut r);
    let Some(Event::Expired(stats)) = ev.iter().find(|e| matches!(e, Event::Expired(_))) else { panic!("{ev:?}") };
    assert_eq!(stats.streams[0].status, StreamStatus::ConntrackTimeout);
}

#[test]
fn userspace_latches_and_timeouts_survive() {
    let mut t = table();
    latched_call(&mut t);
    let mut r = SessionTable::restore(config(), round_trip(&t), T0 + 3000);
    events(&mut r);
    // Still latched: the callee's NAT address is where the caller's media goes.
    assert_eq!(
        r.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 3000),
        Verdict::Forward { via_port: 40002, to: sa(CALLEE_NAT_ADDR) }
    );
    assert!(matches!(r.on_packet(40002, sa("198.51.100.99:9"), &rtp(8, 172), T0 + 3000), Verdict::Drop(_)));
    assert!(r.next_timeout().is_some_and(|t| t <= T0 + 3000 + 90_000));
    r.handle_timeout(T0 + 92_000);
    assert!(events(&mut r).is_empty(), "the packet after the restart counts");
    r.handle_timeout(T0 + 3000 + 90_000);
    assert!(events(&mut r)
        .iter()
        .any(|e| matches!(e, Event::Expired(s) if s.streams[0].status == StreamStatus::NoTrafficTimeout)));
}

#[test]
fn switching_datapath_on_restore_moves_flows() {
    let mut t = table();
    latched_call(&mut t);
    let mut k = SessionTable::restore(kernel_config(), round_trip(&t), T0 + 3000);
    let ev = events(&mut k);
    assert!(matches!(ev.as_slice(), [Event::OpenPorts(_), Event::OpenPorts(_), Event::FlowUp(_)]), "{ev:?}");
    let mut u = SessionTable::restore(config(), round_trip(&k), T0 + 4000);
    let ev = events(&mut u);
    assert!(matches!(ev.as_slice(), [Event::OpenPorts(_), Event::OpenPorts(_), Event::FlowDown(_)]), "{ev:?}");
}

#[test]
fn sessions_that_do_not_fit_the_new_range_are_expired() {
    let mut t = table();
    latched_call(&mut t);
    let small = CoreConfig { port_range: (50000, 50010), ..config() };
    let mut r = SessionTable::restore(small, round_trip(&t), T0 + 3000);
    let ev = events(&mut r);
    let [Event::Expired(stats)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!(stats.streams[0].status, StreamStatus::Closed);
    assert_eq!(r.session_count(), 0);
    assert_eq!(r.ports_free(), 10);
}

#[test]
fn damaged_or_foreign_bytes_are_refused() {
    let mut t = table();
    latched_call(&mut t);
    let bytes = t.snapshot(MARK).encode();
    assert!(matches!(Snapshot::decode(b"hello world"), Err(SnapshotError::NotASnapshot)));
    assert!(matches!(Snapshot::decode(&[]), Err(SnapshotError::NotASnapshot)));
    let mut other = bytes.clone();
    other[4] = 9;
    assert_eq!(Snapshot::decode(&other).unwrap_err(), SnapshotError::Version(9));
    for cut in [9, bytes.len() / 2, bytes.len() - 1] {
        assert!(matches!(Snapshot::decode(&bytes[..cut]), Err(SnapshotError::Malformed(_))), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(Snapshot::decode(&long), Err(SnapshotError::Malformed(_))));
    // Random damage never panics.
    for i in 8..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xa5;
        let _ = Snapshot::decode(&b).map(|s| SessionTable::restore(config(), s, T0));
    }
}

/// The attack of issue #11: of 1435 single-byte corruptions of a snapshot,
/// format 3 restored 700, some into tables whose streams held ports never
/// opened. With the checksum, every one is refused, whatever the byte and
/// the damage.
#[test]
fn every_single_byte_corruption_is_refused() {
    let mut t = table();
    latched_call(&mut t);
    let mut second = caller_offer(1, CALLER_SDP);
    second.call_id = "second@example.com".into();
    t.update(&second, relay_ip(), T0 + 3000).unwrap();
    events(&mut t);
    let bytes = t.snapshot(MARK).encode();
    assert!(Snapshot::decode(&bytes).is_ok());
    let mut tried = 0;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff, 0x5a] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            tried += 1;
            assert!(Snapshot::decode(&b).is_err(), "byte {i} ^ {mask:#04x} was accepted");
        }
    }
    assert!(tried > 1000, "{tried} corruptions tried");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 1;
    assert!(matches!(Snapshot::decode(&flipped), Err(SnapshotError::Checksum { .. })));
}

#[test]
fn signaling_ips_latch_rules_and_the_learning_window_survive() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    events(&mut t);
    // A stranger opens the callee's window before the restart.
    assert_eq!(t.on_packet(40002, sa("192.0.2.66:9"), &rtp(8, 172), T0 + 1500), Verdict::Drop(DropReason::Bleed));
    let mut r = SessionTable::restore(config(), round_trip(&t), T0 + 2000);
    events(&mut r);
    // The window still counts from before the restart: a stranger falls
    // back 3 s after its first datagram, not after its first since then.
    assert_eq!(r.on_packet(40002, sa("192.0.2.66:9"), &rtp(8, 172), T0 + 4499), Verdict::Drop(DropReason::Bleed));
    assert!(matches!(r.on_packet(40002, sa("192.0.2.66:9"), &rtp(8, 172), T0 + 4500), Verdict::Forward { .. }));
    // The callee's signaling IP is still known: its NAT takes the leg back.
    assert!(matches!(r.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 4600), Verdict::Forward { .. }));
    assert_eq!(r.session(CALL, T0 + 4600).unwrap().streams[0].callee_remote, CALLEE_NAT_ADDR);
    // The callee reaches the relay from its announced IP (rank 2); after
    // another restart its signaling IP (rank 1) cannot move that latch.
    assert!(matches!(r.on_packet(40002, sa("192.168.1.20:6000"), &rtp(8, 172), T0 + 4700), Verdict::Forward { .. }));
    let mut r = SessionTable::restore(config(), round_trip(&r), T0 + 5000);
    events(&mut r);
    assert_eq!(
        r.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 9000),
        Verdict::Drop(DropReason::WrongSource)
    );
    assert_eq!(r.session(CALL, T0 + 9000).unwrap().streams[0].callee_remote, "192.168.1.20:6000");
}

#[test]
fn a_format_3_snapshot_restores_its_calls() {
    // Written by the relay of format 3 (commit 78a0ed7): the call of
    // `latched_call`, an RTP kernel flow, the same clock mark.
    let bytes = include_bytes!("fixtures/snapshot-format3.bin");
    let snapshot = Snapshot::decode(bytes).unwrap();
    assert_eq!((snapshot.session_count(), snapshot.clock()), (1, Some(MARK)));
    let mut r = SessionTable::restore(kernel_config(), snapshot, T0 + 6000);
    assert_eq!(events(&mut r), vec![Event::OpenPorts(40000), Event::OpenPorts(40002)], "the flow is kept");
    let st = &r.session(CALL, T0 + 6000).unwrap().streams[0];
    assert_eq!((st.caller_remote.as_str(), st.callee_remote.as_str()), (CALLER_ADDR, CALLEE_NAT_ADDR));
    assert_eq!(r.kernel_flows().len(), 1);
    // Its latches have no rule: a stranger still cannot take them, the
    // announced address can (the caller's, exactly).
    assert_eq!(r.on_packet(40000, sa("192.0.2.66:9"), &rtp(8, 172), T0 + 7000), Verdict::Drop(DropReason::WrongSource));
    assert_eq!(r.on_packet(40002, sa("192.0.2.66:9"), &rtp(8, 172), T0 + 7000), Verdict::Drop(DropReason::WrongSource));
    r.on_packet(40000, sa("198.51.100.10:4002"), &rtp(8, 172), T0 + 7001);
    assert_eq!(r.session(CALL, T0 + 7001).unwrap().streams[0].caller_remote, "198.51.100.10:4002");
}
