//! Forwarding entries ([`Route`]): the core announces the verdict of a
//! latched port once it is fixed, takes it down whenever anything it
//! depends on changes (hold, a new SDP address, the stream's end), and
//! counts what the daemon forwarded by it as `on_packet` would.

mod common;

use common::*;
use relaybox_core::{CoreConfig, Event, Route, SessionTable, Verdict};

fn routed_table() -> SessionTable {
    SessionTable::new(CoreConfig { forwarding_entries: true, latching_window: 0, ..config() })
}

fn routes(events: &[Event]) -> Vec<Event> {
    events.iter().filter(|e| matches!(e, Event::RouteUp(_) | Event::RouteDown(_))).cloned().collect()
}

/// A call with both parties latched on RTP: the caller (public, no NAT)
/// on 40000, the callee (behind NAT) on 40002.
fn latched_call(t: &mut SessionTable) -> Vec<Event> {
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), 1000).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), 1000).unwrap();
    events(t);
    let mut seen = Vec::new();
    // The callee's private SDP address is not sent to: the caller's first
    // datagram latches it but goes nowhere until the callee's NAT address
    // latches.
    let first = t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 172), 2000);
    assert_eq!(first, Verdict::Drop(relaybox_core::DropReason::NotLatched));
    seen.extend(events(t));
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(0, 172), 2000);
    seen.extend(events(t));
    seen
}

#[test]
fn a_latched_port_gets_the_route_on_packet_would_give() {
    let mut t = routed_table();
    let seen = latched_call(&mut t);
    let caller = Route { port: 40000, from: sa(CALLER_ADDR), via_port: 40002, to: sa(CALLEE_NAT_ADDR) };
    let callee = Route { port: 40002, from: sa(CALLEE_NAT_ADDR), via_port: 40000, to: sa(CALLER_ADDR) };
    // Both come with the callee's latch: the caller's waited for the
    // callee's address.
    assert_eq!(routes(&seen), vec![Event::RouteUp(caller), Event::RouteUp(callee)]);
    for route in [caller, callee] {
        let verdict = t.on_packet(route.port, route.from, &rtp(0, 172), 3000);
        assert_eq!(verdict, Verdict::Forward { via_port: route.via_port, to: route.to });
        assert!(events(&mut t).is_empty(), "a routed datagram changes nothing else");
        assert!(route.matches(route.from, &rtp(0, 172)));
        assert!(!route.matches(sa("192.0.2.66:999"), &rtp(0, 172)), "only from the latched party");
    }
    // STUN is not media: never covered by a route.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    assert!(!caller.matches(caller.from, &stun));
}

#[test]
fn forwarded_datagrams_count_for_the_leg_and_keep_the_stream_alive() {
    let mut t = routed_table();
    latched_call(&mut t);
    let before = t.session(CALL, 3000).unwrap().streams[0].clone();
    t.forwarded(40000, 10, 1720, 80_000);
    t.forwarded(40002, 4, 688, 80_000);
    let after = t.session(CALL, 80_000).unwrap().streams[0].clone();
    assert_eq!(after.caller_packets, before.caller_packets + 10);
    assert_eq!(after.caller_bytes, before.caller_bytes + 1720);
    assert_eq!(after.callee_packets, before.callee_packets + 4);
    assert_eq!(after.callee_bytes, before.callee_bytes + 688);
    // Activity at 80 s: the 90 s timeout counts from there, not from 2 s.
    assert_eq!(t.ports_due(95_000), vec![40000, 40002], "the timer still stands at the old deadline");
    t.handle_timeout(95_000);
    assert!(t.has_session(CALL), "timed out although the route carried media");
    assert_eq!(t.ports_due(95_000), Vec::<u16>::new());
    assert_eq!(t.session_ports(CALL), vec![40000, 40002]);
    t.handle_timeout(170_001);
    assert!(!t.has_session(CALL), "90 s after the last routed datagram it times out");
    let gone = events(&mut t);
    assert!(gone.iter().any(|e| matches!(e, Event::Expired(_))));
    // Counts for a port nobody holds go to the totals only.
    let relayed = t.relayed();
    t.forwarded(40000, 1, 172, 200_000);
    assert_eq!(t.relayed().packets, relayed.packets + 1);
}

#[test]
fn hold_a_new_address_and_the_end_take_routes_down_before_the_ports() {
    let mut t = routed_table();
    latched_call(&mut t);
    // The callee puts the call on hold: nothing may be sent to it.
    t.update(&callee_offer(1, "audio:192.168.1.20:5000:sendonly:ice=no"), relay_ip(), 4000).unwrap();
    let held = routes(&events(&mut t));
    assert_eq!(held, vec![Event::RouteDown(40000)], "the caller's datagrams go to a party on hold");
    t.update(&caller_answer(1, "audio:198.51.100.10:4000:recvonly:ice=no"), relay_ip(), 4000).unwrap();
    events(&mut t);
    // Resumed: the route is back.
    t.update(&callee_offer(2, CALLEE_SDP), relay_ip(), 5000).unwrap();
    t.update(&caller_answer(2, CALLER_SDP), relay_ip(), 5000).unwrap();
    let resumed = routes(&events(&mut t));
    assert!(resumed.iter().any(|e| matches!(e, Event::RouteUp(r) if r.port == 40000)), "{resumed:?}");
    // The caller moves (a new SDP address): its latch is reset, so its
    // datagrams lose their route until it latches again, and the callee's
    // go to the new (public) announced address at once.
    t.update(&caller_offer(3, "audio:198.51.100.10:6000:sendrecv:ice=no"), relay_ip(), 6000).unwrap();
    let moved = routes(&events(&mut t));
    let to_new = Route { port: 40002, from: sa(CALLEE_NAT_ADDR), via_port: 40000, to: sa("198.51.100.10:6000") };
    assert_eq!(moved, vec![Event::RouteDown(40000), Event::RouteUp(to_new)]);
    t.update(&callee_answer(3, CALLEE_SDP), relay_ip(), 6000).unwrap();
    events(&mut t);
    t.on_packet(40000, sa("198.51.100.10:6000"), &rtp(0, 172), 7000);
    let relatched = routes(&events(&mut t));
    assert!(relatched.iter().any(|e| matches!(e, Event::RouteUp(r) if r.port == 40000)), "{relatched:?}");
    // The end: every route goes down before its ports close.
    t.remove(&remove(CALLER_TAG, Some(CALLEE_TAG)), 8000).unwrap();
    let end = events(&mut t);
    let down = end.iter().position(|e| matches!(e, Event::RouteDown(40000))).expect("route 40000 down");
    let close = end.iter().position(|e| matches!(e, Event::ClosePorts(40000))).expect("ports closed");
    assert!(down < close, "{end:?}");
}

#[test]
fn without_the_setting_no_route_is_announced() {
    let mut t = table();
    let seen = latched_call(&mut t);
    assert!(routes(&seen).is_empty());
}
