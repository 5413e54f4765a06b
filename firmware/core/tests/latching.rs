//! Latching with RTP-bleed protection for parties behind NAT: which sources
//! a leg accepts and in what rank, the learning window (time is an
//! argument), moves after a NAT rebind, `signaling_proxies`, and STUN,
//! which is forwarded but is not media.

mod common;

use common::*;
use relaybox_core::{CoreConfig, DropReason, Event, Latch, LatchRule, SessionTable, Side, Verdict};
use relaybox_proto::StreamStatus;

const T0: u64 = 1_700_000_000_000;
/// The phones of these tests both sit behind NAT: private SDP addresses,
/// SIP and RTP from their routers' public addresses.
const CALLER_PRIVATE: &str = "audio:192.168.1.10:4000:sendrecv:ice=no";
const CALLER_NAT: &str = "198.51.100.10";
const CALLEE_PRIVATE: &str = "audio:192.168.2.20:5000:sendrecv:ice=no";
const CALLEE_NAT: &str = "203.0.113.77";
const ATTACKER: &str = "192.0.2.66:9999";

fn forward(via_port: u16, to: &str) -> Verdict {
    Verdict::Forward { via_port, to: sa(to) }
}

fn bleed() -> Verdict {
    Verdict::Drop(DropReason::Bleed)
}

/// Caller-facing port 40000, callee-facing 40002; both parties behind NAT,
/// each update signaled from its party's NAT.
fn nat_call(config: CoreConfig) -> SessionTable {
    let mut t = SessionTable::new(config);
    t.update(&caller_offer(1, CALLER_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_PRIVATE).signaled_by(CALLEE_NAT), relay_ip(), T0 + 1000).unwrap();
    events(&mut t);
    t
}

fn remotes(t: &SessionTable, now: u64) -> (String, String) {
    let s = t.session(CALL, now).unwrap();
    (s.streams[0].caller_remote.clone(), s.streams[0].callee_remote.clone())
}

fn latches(t: &mut SessionTable) -> Vec<Latch> {
    events(t).into_iter().filter_map(|e| if let Event::Latched(l) = e { Some(l) } else { None }).collect()
}

/// A STUN Binding request (RFC 5389) with one 8-byte attribute.
fn stun() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(&[7; 12]);
    p.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
    p
}

#[test]
fn a_sprayer_before_the_phones_captures_nothing_and_the_phones_latch_from_their_signaling_ips() {
    let mut t = nat_call(config());
    // The attacker sprays every port right after the answer.
    for port in 40000..40004 {
        assert_eq!(t.on_packet(port, sa(ATTACKER), &rtp(0, 172), T0 + 1100), bleed(), "port {port}");
    }
    // 2 s later (inside the 3 s window) the phones start, from their NATs.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 3000),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 3010),
        forward(40000, "198.51.100.10:31000")
    );
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 3020),
        forward(40002, "203.0.113.77:42000")
    );
    // The spray goes on during and after the media: refused, never relayed.
    for now in [T0 + 3030, T0 + 10_000, T0 + 60_000] {
        for port in 40000..40004 {
            let v = t.on_packet(port, sa(ATTACKER), &rtp(0, 172), now);
            assert!(matches!(v, Verdict::Drop(_)), "port {port} at {now}: {v:?}");
        }
    }
    assert_eq!(remotes(&t, T0 + 60_000), ("198.51.100.10:31000".to_string(), "203.0.113.77:42000".to_string()));
    assert!(latches(&mut t).is_empty(), "first latches by a rule are not reported");
    // The phones send no RTCP: their RTCP ports stay closed to the spray,
    // which RTCP never falls back to.
    assert_eq!(t.bleed_drops(), 4 + 3 * 2);
}

#[test]
fn the_learning_window_opens_at_the_first_unvouched_datagram_and_then_falls_back() {
    let mut t = nat_call(config());
    // Nothing vouches for this source (the callee's SIP came from elsewhere).
    let other = "198.51.100.200:7000";
    assert_eq!(t.on_packet(40002, sa(other), &rtp(8, 172), T0 + 5000), bleed());
    assert_eq!(t.on_packet(40002, sa(other), &rtp(8, 172), T0 + 5000 + 2999), bleed());
    assert!(latches(&mut t).is_empty());
    // The window (3 s) has passed: the next datagram latches, reported.
    let at = T0 + 8000;
    assert_eq!(t.on_packet(40002, sa(other), &rtp(8, 172), at), Verdict::Drop(DropReason::NotLatched));
    let l = latches(&mut t);
    assert_eq!(
        l,
        vec![Latch {
            call_id: CALL.into(),
            side: Side::Callee,
            rtcp: false,
            source: sa(other),
            previous: None,
            rule: LatchRule::Fallback,
            announced: sa("192.168.2.20:5000"),
            signaling_ip: Some(CALLEE_NAT.parse().unwrap()),
        }]
    );
    assert_eq!(remotes(&t, at).1, other);
    // A stranger cannot move a fallback latch; the party's signaling IP can.
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(8, 172), at + 1), Verdict::Drop(DropReason::WrongSource));
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), at + 2),
        Verdict::Drop(DropReason::NotLatched)
    );
    let l = latches(&mut t);
    assert_eq!((l.len(), l[0].rule, l[0].previous), (1, LatchRule::SignalingIp, Some(sa(other))));
    assert_eq!(remotes(&t, at).1, "203.0.113.77:42000");
    assert_eq!(t.on_packet(40002, sa(other), &rtp(8, 172), at + 3), Verdict::Drop(DropReason::WrongSource));
}

#[test]
fn latching_window_zero_latches_any_source_at_once_like_mediaproxy() {
    let mut t = nat_call(CoreConfig { latching_window: 0, ..config() });
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 1100), Verdict::Drop(DropReason::NotLatched));
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
    assert_eq!(remotes(&t, T0 + 1100).1, ATTACKER);
    // The phone still takes its leg back as soon as it sends.
    t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 1200);
    assert_eq!(remotes(&t, T0 + 1200).1, "203.0.113.77:42000");
}

#[test]
fn a_public_announced_address_never_falls_back() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, "audio:198.51.100.20:5000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    for now in [T0 + 1, T0 + 10_000, T0 + 80_000] {
        assert_eq!(t.on_packet(40000, sa(ATTACKER), &rtp(0, 172), now), bleed());
        // Not even from the caller's signaling IP on another port... that
        // is its announced IP, which a public party may move within.
        assert_eq!(t.on_packet(40002, sa("198.51.100.10:4000"), &rtp(0, 172), now), bleed(), "the caller's IP");
    }
    assert!(latches(&mut t).is_empty());
}

#[test]
fn ranks_the_announced_address_over_its_ip_over_the_signaling_ip() {
    // The callee's SIP and RTP come through its NAT; it may also reach the
    // relay directly from its private address (a relay on its LAN).
    let mut t = nat_call(config());
    t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2000);
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 2001),
        forward(40000, "198.51.100.10:31000")
    );
    assert!(latches(&mut t).is_empty());
    // The announced IP from another port outranks the signaling IP...
    assert_eq!(
        t.on_packet(40002, sa("192.168.2.20:5555"), &rtp(8, 172), T0 + 2002),
        forward(40000, "198.51.100.10:31000")
    );
    let l = latches(&mut t);
    assert_eq!((l[0].rule, l[0].previous), (LatchRule::AnnouncedIp, Some(sa("203.0.113.77:42000"))));
    // ...and the exact announced address outranks both.
    t.on_packet(40002, sa("192.168.2.20:5000"), &rtp(8, 172), T0 + 2003);
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Announced);
    assert_eq!(remotes(&t, T0 + 2003).1, "192.168.2.20:5000");
    // Lower ranks no longer move it.
    for src in ["192.168.2.20:5555", "203.0.113.77:42000", ATTACKER] {
        assert_eq!(
            t.on_packet(40002, sa(src), &rtp(8, 172), T0 + 2004),
            Verdict::Drop(DropReason::WrongSource),
            "{src}"
        );
    }
    assert!(latches(&mut t).is_empty());
    // The caller's media goes to the best latch.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2005),
        forward(40002, "192.168.2.20:5000")
    );
}

#[test]
fn a_nat_rebind_moves_the_latch_and_the_kernel_flow() {
    let mut t = nat_call(CoreConfig { kernel_flows: true, ..config() });
    t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2000);
    t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 2000);
    let ev = events(&mut t);
    let [Event::FlowUp(old)] = ev.as_slice() else { panic!("{ev:?}") };
    // The caller's NAT gives it a new port mid-call: its first packet from
    // there reaches userspace (no entry matches it) and moves the leg.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31500"), &rtp(8, 172), T0 + 30_000),
        forward(40002, "203.0.113.77:42000")
    );
    let ev = events(&mut t);
    assert_eq!(ev.len(), 3, "{ev:?}");
    let Event::Latched(l) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(
        (l.side, l.rule, l.previous, l.source),
        (Side::Caller, LatchRule::SignalingIp, Some(sa("198.51.100.10:31000")), sa("198.51.100.10:31500"))
    );
    assert_eq!(ev[1], Event::FlowDown(old.id), "down before up");
    let Event::FlowUp(new) = &ev[2] else { panic!("{ev:?}") };
    assert_eq!((new.caller, new.callee), (sa("198.51.100.10:31500"), sa("203.0.113.77:42000")));
    // The callee's packets (kernel-forwarded now) reach the new mapping; in
    // userspace they would go there too.
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 30_001),
        forward(40000, "198.51.100.10:31500")
    );
    // The old mapping is a stranger now... of the same rank: it would take
    // the leg back if the phone still sent from it (a phone has one).
    assert_eq!(t.on_packet(40000, sa(ATTACKER), &rtp(8, 172), T0 + 30_002), Verdict::Drop(DropReason::WrongSource));
}

#[test]
fn a_new_sdp_address_restarts_the_window() {
    let mut t = nat_call(config());
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 2000), bleed());
    // Re-INVITE: the callee moves to another private address at 4.5 s.
    t.update(&caller_offer(2, CALLER_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0 + 4500).unwrap();
    t.update(
        &callee_answer(2, "audio:192.168.2.21:5000:sendrecv:ice=no").signaled_by(CALLEE_NAT),
        relay_ip(),
        T0 + 4500,
    )
    .unwrap();
    // The old window would have passed at 5 s; the new one opens at 5.5 s.
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 5500), bleed());
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 8499), bleed());
    assert!(latches(&mut t).is_empty());
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 8500), Verdict::Drop(DropReason::NotLatched));
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
}

#[test]
fn signaling_ips_of_signaling_proxies_vouch_for_nothing() {
    let config = CoreConfig { signaling_proxies: vec!["203.0.113.0/24".parse().unwrap()], ..config() };
    let mut t = nat_call(config);
    // The callee's SIP came through a proxy at 203.0.113.77: its NAT address
    // (which here is also in the proxy's range) is a stranger.
    assert_eq!(t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 2000), bleed());
    // The caller's signaling IP still counts.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2000),
        Verdict::Drop(DropReason::NotLatched)
    );
    // Such calls rely on the window: after it, the callee's stream latches.
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 5000),
        forward(40000, "198.51.100.10:31000")
    );
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
}

#[test]
fn the_signaling_ip_comes_from_the_src_of_src_dst_and_from_the_latest_update_of_each_party() {
    let mut t = SessionTable::new(config());
    let offer = caller_offer(1, CALLER_PRIVATE).signaled_by("198.51.100.10_203.0.113.1");
    t.update(&offer, relay_ip(), T0).unwrap();
    let answer = callee_answer(1, CALLEE_PRIVATE).signaled_by("203.0.113.77_203.0.113.1");
    t.update(&answer, relay_ip(), T0).unwrap();
    assert_eq!(t.on_packet(40000, sa("203.0.113.1:9"), &rtp(8, 172), T0 + 1), bleed(), "dst is the proxy");
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2),
        Verdict::Drop(DropReason::NotLatched)
    );
    // The callee re-INVITEs from a new network (roaming): its new address
    // vouches from then on, a late retransmission of the old 200 changes
    // nothing.
    t.update(&callee_offer(1, CALLEE_PRIVATE).signaled_by("198.18.7.7"), relay_ip(), T0 + 100).unwrap();
    t.update(&caller_answer(1, CALLER_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0 + 100).unwrap();
    t.update(&callee_answer(1, CALLEE_PRIVATE).signaled_by(CALLEE_NAT), relay_ip(), T0 + 200).unwrap();
    assert_eq!(t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 300), bleed());
    assert_eq!(
        t.on_packet(40002, sa("198.18.7.7:42000"), &rtp(8, 172), T0 + 301),
        forward(40000, "198.51.100.10:31000")
    );
    // An update without signaling_ip keeps what was known.
    t.update(&caller_offer(2, CALLER_PRIVATE).unsignaled(), relay_ip(), T0 + 400).unwrap();
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 500),
        forward(40002, "198.18.7.7:42000")
    );
}

#[test]
fn a_reply_with_the_callers_signaling_ip_vouches_for_that_ip_only() {
    // Two phones behind one office NAT; or a `signaling_ip_avp` set in the
    // request route, which the module sends again with the reply. Either
    // way the reply's value is the caller's address, and it is kept for
    // the callee: it lets the office phone latch at once, and it vouches
    // for nobody the caller's leg does not trust already.
    let mut t = SessionTable::new(config());
    t.update(&caller_offer(1, CALLER_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0 + 1000).unwrap();
    // Same office: both phones behind 198.51.100.10.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 2000),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(
        t.on_packet(40002, sa("198.51.100.10:31002"), &rtp(8, 172), T0 + 2000),
        forward(40000, "198.51.100.10:31000")
    );
    assert!(latches(&mut t).is_empty(), "no fallback for an office call");

    // The AVP case: the callee's real NAT is not vouched for; it latches
    // after the window (no worse than ignoring the value), and strangers
    // stay out meanwhile.
    let mut t = SessionTable::new(config());
    t.update(&caller_offer(1, CALLER_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, CALLEE_PRIVATE).signaled_by(CALLER_NAT), relay_ip(), T0 + 1000).unwrap();
    assert_eq!(t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 2000), bleed());
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(8, 172), T0 + 2500), bleed());
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 5000),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
}

#[test]
fn rtcp_follows_its_rtp_latch_and_never_falls_back_by_itself() {
    // The caller's SIP moves to another address: its RTP falls back, its
    // RTCP follows that RTP's IP; a caller whose RTP latched by a rule has
    // its RTCP accepted from that IP although its signaling IP moved.
    let config = CoreConfig { signaling_proxies: vec!["203.0.113.0/24".parse().unwrap()], ..config() };
    let mut t = nat_call(config.clone());
    t.update(&caller_offer(1, CALLER_PRIVATE).signaled_by("198.51.100.99"), relay_ip(), T0 + 1000).unwrap();
    // The caller's RTP: its SIP now comes from .99, its RTP from .10: fallback.
    assert_eq!(t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 1500), bleed());
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 4500),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
    // Its RTCP follows from that IP, a fallback too; from elsewhere it is
    // bleed, although the window has passed: only RTP falls back.
    assert_eq!(t.on_packet(40001, sa(ATTACKER), &[0x80, 200, 0, 1], T0 + 4550), bleed());
    assert_eq!(
        t.on_packet(40001, sa("198.51.100.10:31001"), &[0x80, 200, 0, 1], T0 + 4600),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(latches(&mut t)[0].rule, LatchRule::Fallback);
    // The caller's SIP comes from its NAT again: RTP from there moves the
    // leg, and the RTCP latch the fallback vouched for goes with it.
    t.update(&caller_offer(2, CALLER_PRIVATE).signaled_by("198.51.100.11"), relay_ip(), T0 + 5000).unwrap();
    t.on_packet(40000, sa("198.51.100.11:31000"), &rtp(8, 172), T0 + 5100);
    assert_eq!(latches(&mut t)[0].rule, LatchRule::SignalingIp);
    assert_eq!(t.on_packet(40001, sa("198.51.100.10:31001"), &[0x80, 200, 0, 1], T0 + 5200), bleed());
    assert_eq!(
        t.on_packet(40001, sa("198.51.100.11:31001"), &[0x80, 200, 0, 1], T0 + 5300),
        Verdict::Drop(DropReason::NotLatched)
    );

    let mut t = nat_call(config);
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &rtp(8, 172), T0 + 1500),
        Verdict::Drop(DropReason::NotLatched)
    );
    // Re-INVITE from elsewhere: the caller's signaling IP no longer matches,
    // but its RTP latch (by a rule) vouches for its RTCP's IP.
    t.update(&caller_offer(2, CALLER_PRIVATE).signaled_by("198.51.100.99"), relay_ip(), T0 + 1600).unwrap();
    assert_eq!(
        t.on_packet(40001, sa("198.51.100.10:31001"), &[0x80, 200, 0, 1], T0 + 1700),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert!(latches(&mut t).is_empty());
    assert_eq!(t.on_packet(40001, sa(ATTACKER), &[0x80, 200, 0, 1], T0 + 1800), Verdict::Drop(DropReason::WrongSource));
}

#[test]
fn stun_is_forwarded_but_never_latches_nor_counts_as_media() {
    let ice = |sdp: &str| sdp.replace("ice=no", "ice=yes");
    let mut t = SessionTable::new(CoreConfig { kernel_flows: true, ..config() });
    t.update(&caller_offer(1, &ice(CALLER_PRIVATE)).signaled_by(CALLER_NAT), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, &ice(CALLEE_PRIVATE)).signaled_by(CALLEE_NAT), relay_ip(), T0 + 1000).unwrap();
    events(&mut t);
    let due = T0 + 1000 + 90_000;
    assert_eq!(t.next_timeout(), Some(due));

    // ICE checks through the relay candidates: the caller's first check has
    // nowhere to go yet; the callee's reaches the caller's checking address,
    // and then the caller's reaches the callee's.
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:31000"), &stun(), T0 + 1500),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(t.on_packet(40002, sa("203.0.113.77:42000"), &stun(), T0 + 1510), forward(40000, "198.51.100.10:31000"));
    assert_eq!(t.on_packet(40000, sa("198.51.100.10:31000"), &stun(), T0 + 1520), forward(40002, "203.0.113.77:42000"));
    // A stranger's STUN is bleed, also after the window: STUN never latches.
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &stun(), T0 + 1530), bleed());
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &stun(), T0 + 60_000), bleed());
    // None of it is media: no latch, no flow, no activity, no codec.
    assert!(events(&mut t).is_empty(), "STUN made a flow or a latch");
    assert_eq!(t.next_timeout(), Some(due), "STUN does not keep the stream alive");
    let st = &t.session(CALL, T0 + 2000).unwrap().streams[0];
    assert_eq!((st.caller_remote.as_str(), st.callee_remote.as_str()), ("Unknown", "Unknown"));
    assert_eq!((st.caller_codec.as_str(), st.post_dial_delay, st.caller_packets), ("Unknown", None, 0));

    // The phones picked their direct path: only STUN ever came. The stream
    // ends as an unselected candidate, not as a timeout.
    t.handle_timeout(due);
    let ev = events(&mut t);
    let Some(Event::Expired(s)) = ev.iter().find(|e| matches!(e, Event::Expired(_))) else { panic!("{ev:?}") };
    assert_eq!(s.streams[0].status, StreamStatus::UnselectedIceCandidate);
    assert!(s.all_streams_unselected_ice(), "the dispatcher leaves such a dialog alone");
    assert!(!ev.iter().any(|e| matches!(e, Event::FlowUp(_))));
}

#[test]
fn ice_through_the_relay_candidate_checks_first_then_media_latches_and_flows() {
    let ice = |sdp: &str| sdp.replace("ice=no", "ice=yes");
    let mut t = SessionTable::new(CoreConfig { kernel_flows: true, ..config() });
    t.update(&caller_offer(1, &ice(CALLER_PRIVATE)).signaled_by(CALLER_NAT), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, &ice(CALLEE_PRIVATE)).signaled_by(CALLEE_NAT), relay_ip(), T0 + 1000).unwrap();
    events(&mut t);
    let (a, b) = ("198.51.100.10:31000", "203.0.113.77:42000");
    t.on_packet(40000, sa(a), &stun(), T0 + 1100);
    assert_eq!(t.on_packet(40002, sa(b), &stun(), T0 + 1110), forward(40000, a));
    assert_eq!(t.on_packet(40000, sa(a), &stun(), T0 + 1120), forward(40002, b));
    // The relay pair was selected: media from the checked addresses latches
    // (the caller's first packet already reaches the callee's checked
    // address) and goes to the kernel once both sides sent media.
    assert_eq!(t.on_packet(40000, sa(a), &rtp(8, 172), T0 + 1200), forward(40002, b));
    assert!(events(&mut t).is_empty());
    assert_eq!(t.on_packet(40002, sa(b), &rtp(8, 172), T0 + 1210), forward(40000, a));
    let ev = events(&mut t);
    assert!(matches!(ev.as_slice(), [Event::FlowUp(f)] if f.caller == sa(a) && f.callee == sa(b)), "{ev:?}");
    // Consent checks keep flowing with the media (in the kernel, or here).
    assert_eq!(t.on_packet(40002, sa(b), &stun(), T0 + 5000), forward(40000, a));
    let st = &t.session(CALL, T0 + 6000).unwrap().streams[0];
    assert_eq!((st.caller_packets, st.callee_packets), (1, 1), "STUN is not counted as media");
    assert_eq!(st.post_dial_delay, Some(1.2));
}

#[test]
fn rtp_does_not_fall_back_once_its_rtcp_found_the_party() {
    let mut t = nat_call(config());
    // The callee's RTCP arrives from its NAT (vouched), its RTP not yet.
    assert_eq!(
        t.on_packet(40003, sa("203.0.113.77:42001"), &[0x80, 200, 0, 1], T0 + 1100),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 1200), bleed());
    // Long past the window the spray still cannot take the RTP port.
    assert_eq!(t.on_packet(40002, sa(ATTACKER), &rtp(0, 172), T0 + 30_000), bleed());
    assert!(latches(&mut t).is_empty());
    assert_eq!(
        t.on_packet(40002, sa("203.0.113.77:42000"), &rtp(8, 172), T0 + 30_001),
        Verdict::Drop(DropReason::NotLatched)
    );
    assert_eq!(remotes(&t, T0 + 30_001).1, "203.0.113.77:42000");
}
