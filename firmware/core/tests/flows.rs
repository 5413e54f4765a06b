//! Kernel flows: when the core hands a stream to the kernel and takes it
//! back, and how kernel counters reach the statistics.

mod common;

use common::*;
use relaybox_core::{CoreConfig, Event, Flow, FlowCounters, FlowId, SessionTable};
use relaybox_proto::StreamStatus;

const T0: u64 = 1_700_000_000_000;

fn kernel_table() -> SessionTable {
    SessionTable::new(CoreConfig { kernel_flows: true, ..config() })
}

/// Answered call (caller-facing 40000, callee-facing 40002), both sides'
/// RTP latched; returns the RTP flow.
fn rtp_flow_up(t: &mut SessionTable) -> Flow {
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    events(t);
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000);
    assert!(events(t).is_empty(), "one side latched is not a flow");
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000);
    let ev = events(t);
    let [Event::FlowUp(flow)] = ev.as_slice() else { panic!("expected one FlowUp, got {ev:?}") };
    *flow
}

#[test]
fn both_sides_latched_hands_rtp_to_the_kernel_and_rtcp_separately() {
    let mut t = kernel_table();
    let flow = rtp_flow_up(&mut t);
    assert_eq!(
        flow,
        Flow {
            id: flow.id,
            caller_local: relay_ip(),
            callee_local: relay_ip(),
            caller: sa(CALLER_ADDR),
            caller_port: 40000,
            callee_port: 40002,
            callee: sa(CALLEE_NAT_ADDR),
            rtcp: false,
        }
    );
    assert_eq!(t.flow_ids(), vec![flow.id]);
    // RTCP latches on its own ports.
    t.on_packet(40001, sa("198.51.100.10:4001"), &[0x80, 200, 0, 1], T0 + 2500);
    t.on_packet(40003, sa("203.0.113.77:31001"), &[0x80, 200, 0, 1], T0 + 2500);
    let ev = events(&mut t);
    let [Event::FlowUp(rtcp)] = ev.as_slice() else { panic!("{ev:?}") };
    assert!(rtcp.rtcp && rtcp.id != flow.id);
    assert_eq!((rtcp.caller_port, rtcp.callee_port), (40001, 40003));
    // More packets from the same sources change nothing.
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 3000);
    assert!(events(&mut t).is_empty());
}

#[test]
fn userspace_mode_has_no_flows() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    events(&mut t);
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000);
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000);
    assert!(events(&mut t).is_empty());
    assert!(t.flow_ids().is_empty());
}

#[test]
fn kernel_counters_add_to_userspace_counters_and_survive_remove() {
    let mut t = kernel_table();
    let flow = rtp_flow_up(&mut t);
    let c = FlowCounters { caller_packets: 500, caller_bytes: 86_000, callee_packets: 490, callee_bytes: 84_280 };
    assert!(t.set_flow_counters(flow.id, c, T0 + 12_000));
    // Older (smaller) totals never lower what is known.
    assert!(t.set_flow_counters(flow.id, FlowCounters::default(), T0 + 13_000));
    let s = &t.session(CALL, T0 + 13_000).unwrap().streams[0];
    // The first packet of each side went through userspace (the callee's
    // was forwarded; the caller's had nowhere to go yet).
    assert_eq!((s.caller_packets, s.callee_packets), (500, 491));
    assert_eq!(t.session_flow_ids(CALL), vec![flow.id]);

    let stats = t.remove(&remove(CALLER_TAG, Some(CALLEE_TAG)), T0 + 20_000).unwrap();
    assert_eq!((stats.streams[0].caller_packets, stats.streams[0].callee_bytes), (500, 84_280 + 172));
    let ev = events(&mut t);
    assert!(ev.contains(&Event::FlowDown(flow.id)), "{ev:?}");
    assert!(ev.contains(&Event::ClosePorts(40000)));
    assert!(t.flow_ids().is_empty());
    assert!(!t.set_flow_counters(flow.id, c, T0 + 21_000), "a removed flow is unknown");
}

#[test]
fn a_moved_endpoint_replaces_the_flow() {
    let mut t = kernel_table();
    let old = rtp_flow_up(&mut t);
    t.set_flow_counters(old.id, FlowCounters { caller_packets: 10, ..FlowCounters::default() }, T0 + 3000);
    // The callee re-INVITEs from a new address: the old flow goes at once.
    t.update(&callee_offer(1, "audio:192.168.1.21:6000:sendrecv:ice=no"), relay_ip(), T0 + 5000).unwrap();
    assert_eq!(events(&mut t), vec![Event::FlowDown(old.id)]);
    t.update(&caller_answer(1, CALLER_SDP), relay_ip(), T0 + 5100).unwrap();
    assert!(events(&mut t).is_empty());
    // Its first packet from the new address latches it again.
    t.on_packet(40002, sa("203.0.113.77:32000"), &rtp(8, 172), T0 + 6000);
    let ev = events(&mut t);
    let [Event::FlowUp(new)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_ne!(new.id, old.id);
    assert_eq!(new.callee, sa("203.0.113.77:32000"));
    assert_eq!(t.session(CALL, T0 + 7000).unwrap().streams[0].caller_packets, 10, "old flow's counters kept");
}

#[test]
fn hold_takes_the_flow_back_and_resume_returns_it() {
    let mut t = kernel_table();
    let flow = rtp_flow_up(&mut t);
    t.update(&caller_offer(2, "audio:198.51.100.10:4000:sendonly:ice=no"), relay_ip(), T0 + 5000).unwrap();
    assert_eq!(events(&mut t), vec![Event::FlowDown(flow.id)]);
    t.update(&caller_offer(3, CALLER_SDP), relay_ip(), T0 + 9000).unwrap();
    let ev = events(&mut t);
    assert!(matches!(ev.as_slice(), [Event::FlowUp(f)] if f.id != flow.id && f.caller == sa(CALLER_ADDR)), "{ev:?}");
}

#[test]
fn the_kernel_timeout_ends_the_stream_not_the_userspace_one() {
    let mut t = kernel_table();
    let flow = rtp_flow_up(&mut t);
    // Long past stream_timeout: the kernel forwards, userspace sees nothing.
    t.handle_timeout(T0 + 600_000);
    assert!(events(&mut t).is_empty());
    assert_eq!(t.session(CALL, T0 + 600_000).unwrap().streams[0].status, StreamStatus::Active);

    let last = FlowCounters { caller_packets: 30_000, caller_bytes: 1, callee_packets: 29_000, callee_bytes: 1 };
    assert!(t.flow_expired(flow.id, last, T0 + 700_000));
    let ev = events(&mut t);
    assert!(ev.contains(&Event::FlowDown(flow.id)), "{ev:?}");
    let expired = ev.iter().find_map(|e| if let Event::Expired(s) = e { Some(s) } else { None }).expect("expired");
    assert_eq!(expired.streams[0].status, StreamStatus::ConntrackTimeout);
    assert_eq!(expired.streams[0].caller_packets, 30_000);
    assert!(!t.flow_expired(FlowId(9999), last, T0 + 700_000), "unknown flows are ignored");
}

#[test]
fn an_rtcp_timeout_only_returns_rtcp_to_userspace() {
    let mut t = kernel_table();
    let rtp_flow = rtp_flow_up(&mut t);
    t.on_packet(40001, sa("198.51.100.10:4001"), &[0x80, 200, 0, 1], T0 + 2500);
    t.on_packet(40003, sa("203.0.113.77:31001"), &[0x80, 200, 0, 1], T0 + 2500);
    let Some(Event::FlowUp(rtcp)) = events(&mut t).pop() else { panic!() };
    assert!(t.flow_expired(rtcp.id, FlowCounters::default(), T0 + 100_000));
    assert_eq!(events(&mut t), vec![Event::FlowDown(rtcp.id)]);
    assert_eq!(t.flow_ids(), vec![rtp_flow.id]);
    assert_eq!(t.session(CALL, T0 + 100_000).unwrap().streams[0].status, StreamStatus::Active);
}

/// `auto_detect_interfaces`: the reply to the caller's SDP carries the
/// address facing the callee, the reply to the callee's the one facing the
/// caller. Flows and statistics use each side's own address.
#[test]
fn each_side_keeps_the_relay_address_it_was_told() {
    let (facing_callee, facing_caller): (std::net::IpAddr, std::net::IpAddr) =
        ("10.9.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap());
    let mut t = kernel_table();
    t.update(&caller_offer(1, CALLER_SDP), facing_callee, T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), facing_caller, T0 + 1000).unwrap();
    events(&mut t);
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000);
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000);
    let ev = events(&mut t);
    let [Event::FlowUp(flow)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!((flow.caller_local, flow.callee_local), (facing_caller, facing_callee));
    assert_eq!(t.kernel_flows(), vec![*flow], "a restarted daemon finds the same addresses");

    // A re-INVITE from the caller answered from another interface: the
    // callee now sends elsewhere, so the flow is made anew.
    let moved: std::net::IpAddr = "10.8.0.1".parse().unwrap();
    t.update(&caller_offer(2, CALLER_SDP), moved, T0 + 5000).unwrap();
    t.update(&callee_answer(2, CALLEE_SDP), facing_caller, T0 + 5100).unwrap();
    let ev = events(&mut t);
    let [Event::FlowDown(down), Event::FlowUp(up)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!(*down, flow.id);
    assert_eq!((up.caller_local, up.callee_local), (facing_caller, moved));

    let stats = t.session(CALL, T0 + 6000).unwrap();
    assert_eq!(stats.streams[0].caller_local, format!("{facing_caller}:40000"));
    assert_eq!(stats.streams[0].callee_local, format!("{moved}:40002"));
}

#[test]
fn a_flow_the_kernel_refused_times_out_in_userspace_and_is_offered_again_when_it_changes() {
    let mut t = kernel_table();
    let flow = rtp_flow_up(&mut t);
    assert!(t.flow_refused(flow.id));
    assert!(t.flow_ids().is_empty(), "no kernel counters to read");
    assert!(t.kernel_flows().is_empty(), "nothing to find after a restart");
    assert!(t.session_flow_ids(CALL).is_empty());
    // Userspace goes on forwarding it; no FlowUp again for the same parties.
    let verdict = t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 3000);
    assert!(matches!(verdict, relaybox_core::Verdict::Forward { .. }), "{verdict:?}");
    assert!(events(&mut t).is_empty());
    // Silence: the userspace timeout ends the stream (a kernel flow's would not).
    let timeout = CoreConfig::default().stream_timeout;
    t.handle_timeout(T0 + 3000 + timeout + 1);
    let ev = events(&mut t);
    assert!(ev.iter().any(|e| matches!(e, Event::Expired(_))), "{ev:?}");
}

#[test]
fn a_refused_flow_is_offered_again_when_a_party_moves() {
    let mut t = kernel_table();
    let old = rtp_flow_up(&mut t);
    assert!(t.flow_refused(old.id));
    t.update(&callee_offer(1, "audio:192.168.1.21:6000:sendrecv:ice=no"), relay_ip(), T0 + 5000).unwrap();
    t.update(&caller_answer(1, CALLER_SDP), relay_ip(), T0 + 5100).unwrap();
    assert_eq!(events(&mut t), vec![Event::FlowDown(old.id)]);
    t.on_packet(40002, sa("203.0.113.77:32000"), &rtp(8, 172), T0 + 6000);
    let ev = events(&mut t);
    assert!(matches!(ev.as_slice(), [Event::FlowUp(new)] if new.id != old.id), "{ev:?}");
}

#[test]
fn relayed_totals_add_userspace_forwarding_and_kernel_counters_and_never_go_back() {
    let mut t = kernel_table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    // The caller's first packet waits for the callee (private SDP address): not relayed.
    t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000);
    assert_eq!(t.relayed(), relaybox_core::Relayed::default());
    // The callee's goes to the latched caller: relayed by userspace.
    t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000);
    assert_eq!(t.relayed(), relaybox_core::Relayed { packets: 1, bytes: 172 });
    let ev = events(&mut t);
    let Some(Event::FlowUp(flow)) = ev.last() else { panic!("{ev:?}") };
    let c =
        |p: u64| FlowCounters { caller_packets: p, caller_bytes: p * 172, callee_packets: p, callee_bytes: p * 172 };
    t.set_flow_counters(flow.id, c(10), T0 + 3000);
    assert_eq!(t.relayed(), relaybox_core::Relayed { packets: 21, bytes: 21 * 172 });
    // A stale (smaller) reading adds nothing; the final one adds the rest.
    t.set_flow_counters(flow.id, c(4), T0 + 3500);
    assert_eq!(t.relayed().packets, 21);
    t.flow_expired(flow.id, c(50), T0 + 60_000);
    assert_eq!(t.relayed(), relaybox_core::Relayed { packets: 101, bytes: 101 * 172 });
}
