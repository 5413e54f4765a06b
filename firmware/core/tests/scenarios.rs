//! Call scenarios through the public API, one rule per test.

mod common;

use common::*;
use relaybox_core::{CoreConfig, CoreError, DropReason, Event, SessionTable, Verdict};
use relaybox_proto::{PartyType, SessionStats, StreamStatus};

const T0: u64 = 1_700_000_000_000;

/// Caller offers audio at T0, callee answers at T0 + 1 s: caller-facing port
/// 40000, callee-facing 40002.
fn answered_call() -> SessionTable {
    let mut t = table();
    assert_eq!(t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap(), vec![40002]);
    assert_eq!(t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap(), vec![40000]);
    events(&mut t);
    t
}

fn stats(t: &SessionTable, now: u64) -> SessionStats {
    t.session(CALL, now).expect("session exists")
}

/// Every stream's status, offered or answered.
fn statuses(t: &SessionTable) -> Vec<StreamStatus> {
    t.stream_statuses(CALL)
}

fn forward(via_port: u16, to: &str) -> Verdict {
    Verdict::Forward { via_port, to: sa(to) }
}

/// Both sides learned: caller from its public address, callee from its NAT.
fn latched_call() -> SessionTable {
    let mut t = answered_call();
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000), Verdict::Drop(DropReason::NotLatched));
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000), forward(40000, CALLER_ADDR));
    t
}

#[test]
fn offer_and_answer_return_the_port_facing_the_receiver() {
    let mut t = table();
    let ports = t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    assert_eq!(ports, vec![40002], "the INVITE goes to the callee: callee-facing port");
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40000), Event::OpenPorts(40002)]);
    assert_eq!(stats(&t, T0).start_time, None, "not answered yet");
    let ports = t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();
    assert_eq!(ports, vec![40000], "the 200 goes to the caller: caller-facing port");
    assert!(events(&mut t).is_empty(), "an answer allocates nothing");

    let s = stats(&t, T0 + 11_000);
    assert_eq!(s.call_id, CALL);
    assert_eq!(s.from_tag, CALLER_TAG);
    assert_eq!(s.to_tag.as_deref(), Some(CALLEE_TAG));
    assert_eq!(s.start_time, Some((T0 + 1000) as f64 / 1000.0), "with its fraction, as MediaProxy");
    assert_eq!(s.duration, 10);
    assert_eq!((s.caller_ua.as_str(), s.callee_ua.as_str()), ("CallerUA", "CalleeUA"));
    assert_eq!(s.username, None, "only a username the proxy gives (JSON signaling_ip)");
    assert_eq!(s.dialog_id.as_deref(), Some("3456:91827"));
    assert_eq!(s.relay_ip, None);
    let st = &s.streams[0];
    assert_eq!(st.media_type, "audio");
    assert_eq!(st.status, StreamStatus::Active);
    assert_eq!((st.caller_local.as_str(), st.callee_local.as_str()), ("203.0.113.1:40000", "203.0.113.1:40002"));
    assert_eq!((st.caller_remote.as_str(), st.callee_remote.as_str()), ("Unknown", "Unknown"));
    assert_eq!((st.caller_codec.as_str(), st.callee_codec.as_str()), ("Unknown", "Unknown"));
    assert_eq!(
        (st.start_time, st.end_time, st.post_dial_delay),
        (Some(0), Some(10), None),
        "a running stream ends at the duration"
    );
    assert_eq!(t.stream_counts().get("audio"), Some(&1));
    assert_eq!(t.ports_in_use(), 4);
    assert_eq!(t.session_count(), 1);
    assert!(t.has_session(CALL));
}

#[test]
fn retransmissions_get_the_same_ports_and_allocate_nothing() {
    let mut t = table();
    let offer = caller_offer(1, "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no");
    let first = t.update(&offer, relay_ip(), T0).unwrap();
    events(&mut t);
    assert_eq!(t.update(&offer, relay_ip(), T0 + 500).unwrap(), first);
    assert!(events(&mut t).is_empty());
    assert_eq!(stats(&t, T0).start_time, None, "a repeated offer is not an answer");

    let answer = callee_answer(1, "audio:192.168.1.20:5000:sendrecv:ice=no,video:192.168.1.20:5002:sendrecv:ice=no");
    let a1 = t.update(&answer, relay_ip(), T0 + 1000).unwrap();
    assert_eq!(t.update(&answer, relay_ip(), T0 + 1500).unwrap(), a1);
    assert_eq!(t.update(&offer, relay_ip(), T0 + 1600).unwrap(), first, "INVITE retransmitted after the 200");
    assert!(events(&mut t).is_empty());

    // A re-INVITE (CSeq 2) moves on; a late copy of CSeq 1 is ignored and
    // answered with the current ports.
    let reinvite = caller_offer(2, "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no");
    assert_eq!(t.update(&reinvite, relay_ip(), T0 + 5000).unwrap(), first);
    assert_eq!(t.update(&answer, relay_ip(), T0 + 5100).unwrap(), a1);
    assert_eq!(t.update(&offer, relay_ip(), T0 + 5200).unwrap(), first);
    assert!(events(&mut t).is_empty());
    assert_eq!(t.ports_in_use(), 8);
    assert_eq!(stats(&t, T0).start_time, Some((T0 + 1000) as f64 / 1000.0), "the first answer counts");
}

#[test]
fn late_reply_with_older_cseq_is_ignored() {
    let mut t = answered_call();
    // PRACK-like: a newer caller transaction was answered, then the 200 of
    // the INVITE (CSeq 1) arrives with a different SDP: it changes nothing.
    t.update(&caller_offer(2, CALLER_SDP), relay_ip(), T0 + 2000).unwrap();
    t.update(&callee_answer(2, CALLEE_SDP), relay_ip(), T0 + 2100).unwrap();
    let late = callee_answer(1, "audio:198.51.100.99:7000:sendonly:ice=no");
    assert_eq!(t.update(&late, relay_ip(), T0 + 2200).unwrap(), vec![40000]);
    assert_eq!(statuses(&t), vec![StreamStatus::Active], "late SDP did not put the call on hold");
    // Had it been applied, the callee would be bound to 198.51.100.99 and its
    // NAT address refused as bleed.
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(0, 100), T0 + 2300), forward(40000, CALLER_ADDR));
}

#[test]
fn reinvite_hold_and_resume_switch_the_timeout() {
    let mut t = latched_call();
    let hold = caller_offer(2, "audio:198.51.100.10:4000:sendonly:ice=no");
    assert_eq!(t.update(&hold, relay_ip(), T0 + 10_000).unwrap(), vec![40002], "same stream, same port");
    assert_eq!(
        t.update(&callee_answer(2, "audio:192.168.1.20:5000:recvonly:ice=no"), relay_ip(), T0 + 10_100).unwrap(),
        vec![40000]
    );
    assert!(events(&mut t).is_empty());
    assert_eq!(statuses(&t), vec![StreamStatus::OnHold]);
    assert_eq!(t.stream_counts().get("audio"), Some(&1), "a held stream is still counted");

    // Music on hold flows to the callee; the callee must not send to the holder.
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 100), T0 + 10_200), forward(40002, CALLEE_NAT_ADDR));
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 100), T0 + 10_300), Verdict::Drop(DropReason::OnHold));

    // Far past the normal timeout, the held call lives on: the hold timeout
    // counts from the last activity known at the update.
    assert_eq!(t.next_timeout(), Some(T0 + 2000 + 7_200_000));
    t.handle_timeout(T0 + 10_300 + 3_600_000);
    assert!(t.has_session(CALL));

    // Resume: back to active, the normal timeout counts from the resume.
    let resume_at = T0 + 10_300 + 3_700_000;
    t.update(&caller_offer(3, CALLER_SDP), relay_ip(), resume_at).unwrap();
    t.update(&callee_answer(3, CALLEE_SDP), relay_ip(), resume_at).unwrap();
    assert_eq!(statuses(&t), vec![StreamStatus::Active]);
    assert_eq!(t.next_timeout(), Some(resume_at + 90_000));
    assert_eq!(
        t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 100), resume_at + 1),
        forward(40000, CALLER_ADDR),
        "latch kept: same SDP address"
    );
}

#[test]
fn hold_with_zero_address_keeps_the_latch() {
    let mut t = latched_call();
    t.update(&caller_offer(2, "audio:0.0.0.0:4000:sendrecv:ice=no"), relay_ip(), T0 + 5000).unwrap();
    assert_eq!(statuses(&t), vec![StreamStatus::OnHold]);
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 100), T0 + 5100), Verdict::Drop(DropReason::OnHold));
    t.update(&caller_offer(3, CALLER_SDP), relay_ip(), T0 + 6000).unwrap();
    assert_eq!(statuses(&t), vec![StreamStatus::Active]);
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 100), T0 + 6100), forward(40000, CALLER_ADDR));
    assert_eq!(stats(&t, T0 + 6100).streams[0].caller_remote, CALLER_ADDR, "caller still latched");
}

#[test]
fn reinvite_adds_and_removes_streams() {
    let mut t = answered_call();
    let av = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(2, av), relay_ip(), T0 + 5000).unwrap(), vec![40002, 40006]);
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40004), Event::OpenPorts(40006)]);
    let answer = "audio:192.168.1.20:5000:sendrecv:ice=no,video:192.168.1.20:5002:sendrecv:ice=no";
    assert_eq!(t.update(&callee_answer(2, answer), relay_ip(), T0 + 5100).unwrap(), vec![40000, 40004]);
    assert_eq!(t.stream_counts().get("video"), Some(&1));

    // Drop the video again: its ports are released, audio keeps its ports.
    assert_eq!(t.update(&caller_offer(3, CALLER_SDP), relay_ip(), T0 + 6000).unwrap(), vec![40002]);
    assert_eq!(events(&mut t), vec![Event::ClosePorts(40004), Event::ClosePorts(40006)]);
    assert_eq!(statuses(&t), vec![StreamStatus::Active, StreamStatus::Closed]);
    assert_eq!(t.stream_counts().get("video"), None);

    // Port 0 for the audio and a new image stream (T.38 switch).
    let fax = "audio:198.51.100.10:0:sendrecv:ice=no,image:198.51.100.10:4004:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(4, fax), relay_ip(), T0 + 7000).unwrap(), vec![0, 40010]);
    assert_eq!(
        events(&mut t),
        vec![Event::ClosePorts(40000), Event::ClosePorts(40002), Event::OpenPorts(40008), Event::OpenPorts(40010)]
    );
    assert_eq!(statuses(&t), vec![StreamStatus::Closed, StreamStatus::Closed, StreamStatus::Active]);
    assert_eq!(t.ports_in_use(), 4);
}

#[test]
fn statistics_list_answered_streams_as_mediaproxy_does() {
    let mut t = table();
    let mut offer =
        caller_offer(1, "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no");
    offer.user_agent = String::new();
    offer.username = Some("alice".into());
    t.update(&offer, relay_ip(), T0).unwrap();
    let s = stats(&t, T0 + 500);
    assert!(s.streams.is_empty(), "a call not answered lists no streams: {:?}", s.streams);
    assert_eq!((s.start_time, s.duration), (None, 0));
    assert_eq!((s.caller_ua.as_str(), s.callee_ua.as_str()), ("Unknown", "Unknown"));
    assert_eq!(s.username.as_deref(), Some("alice"));
    // The answer rejects the video.
    let answer = "audio:192.168.1.20:5000:sendrecv:ice=no,video:192.168.1.20:0:sendrecv:ice=no";
    t.update(&callee_answer(1, answer), relay_ip(), T0 + 1250).unwrap();
    let s = stats(&t, T0 + 9000);
    assert_eq!(s.start_time, Some((T0 + 1250) as f64 / 1000.0));
    assert_eq!(s.duration, 7);
    let ends: Vec<_> =
        s.streams.iter().map(|st| (st.media_type.as_str(), st.status, st.start_time, st.end_time)).collect();
    assert_eq!(
        ends,
        vec![("audio", StreamStatus::Active, Some(0), Some(7)), ("video", StreamStatus::Rejected, Some(0), Some(0)),]
    );
    let s = t.remove(&remove(CALLER_TAG, Some(CALLEE_TAG)), T0 + 12_900).unwrap();
    assert_eq!((s.duration, s.streams[0].end_time), (11, Some(11)));
}

#[test]
fn replaced_media_type_at_a_position_gets_a_new_stream() {
    let mut t = answered_call();
    let ports = t.update(&caller_offer(2, "video:198.51.100.10:4002:sendrecv:ice=no"), relay_ip(), T0 + 5000).unwrap();
    assert_eq!(ports, vec![40006]);
    assert_eq!(
        events(&mut t),
        vec![Event::OpenPorts(40004), Event::OpenPorts(40006), Event::ClosePorts(40000), Event::ClosePorts(40002)]
    );
    assert_eq!(statuses(&t), vec![StreamStatus::Closed, StreamStatus::Active]);
}

#[test]
fn forked_replies_update_the_callee_side_and_keep_the_latest_tag() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    let fork = |tag: &str, sdp: &str| update(PartyType::Reply, CALLER_TAG, Some(tag), 1, tag, sdp);
    let a = t.update(&fork("fork-a", "audio:198.51.100.30:6000:sendrecv:ice=no"), relay_ip(), T0 + 100).unwrap();
    let b = t.update(&fork("fork-b", "audio:198.51.100.40:7000:sendrecv:ice=no"), relay_ip(), T0 + 200).unwrap();
    assert_eq!(a, vec![40000]);
    assert_eq!(b, a, "every fork gets the same caller-facing port");
    let s = stats(&t, T0 + 300);
    assert_eq!(s.to_tag.as_deref(), Some("fork-b"));
    assert_eq!(s.callee_ua, "fork-b");
    // The caller now reaches fork B; fork A's address is a stranger.
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 300), forward(40002, "198.51.100.40:7000"));
    assert_eq!(t.on_packet(40002, sa("198.51.100.30:6000"), &rtp(0, 100), T0 + 300), Verdict::Drop(DropReason::Bleed));
    assert_eq!(t.on_packet(40002, sa("198.51.100.40:7000"), &rtp(0, 100), T0 + 300), forward(40000, CALLER_ADDR));
}

#[test]
fn callee_reinvite_uses_the_callee_cseq_space() {
    let mut t = latched_call();
    // The callee's first CSeq may be lower than the caller's.
    let hold = callee_offer(1, "audio:192.168.1.20:5000:sendonly:ice=no");
    assert_eq!(t.update(&hold, relay_ip(), T0 + 5000).unwrap(), vec![40000], "goes to the caller: caller-facing port");
    assert_eq!(statuses(&t), vec![StreamStatus::OnHold]);
    let ok = caller_answer(1, "audio:198.51.100.10:4000:recvonly:ice=no");
    assert_eq!(t.update(&ok, relay_ip(), T0 + 5100).unwrap(), vec![40002], "goes to the callee");
    assert_eq!(t.update(&ok, relay_ip(), T0 + 5200).unwrap(), vec![40002]);
    assert!(events(&mut t).is_empty());
    let s = stats(&t, T0 + 5200);
    assert_eq!(s.to_tag.as_deref(), Some(CALLEE_TAG));
    assert_eq!(s.from_tag, CALLER_TAG, "roles do not swap");
    // A late retransmission of the caller's original INVITE is ignored.
    assert_eq!(t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0 + 5300).unwrap(), vec![40002]);
    assert_eq!(statuses(&t), vec![StreamStatus::OnHold]);
    // The caller moves on with a new re-INVITE (CSeq 2): resume.
    t.update(&caller_offer(2, CALLER_SDP), relay_ip(), T0 + 6000).unwrap();
    t.update(&callee_answer(2, CALLEE_SDP), relay_ip(), T0 + 6100).unwrap();
    assert_eq!(statuses(&t), vec![StreamStatus::Active]);
}

#[test]
fn update_with_foreign_tags_is_refused() {
    let mut t = answered_call();
    let stray = update(PartyType::Request, "someone-else", Some("other"), 9, "X", CALLER_SDP);
    assert_eq!(t.update(&stray, relay_ip(), T0 + 5000), Err(CoreError::TagMismatch));
    assert_eq!(statuses(&t), vec![StreamStatus::Active]);
}

#[test]
fn answer_rejects_streams_by_port_zero_and_by_omission() {
    let mut t = table();
    let offer = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no,video:198.51.100.10:4004:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(1, offer), relay_ip(), T0).unwrap(), vec![40002, 40006, 40010]);
    events(&mut t);
    let answer = "audio:192.168.1.20:5000:sendrecv:ice=no,video:192.168.1.20:0:sendrecv:ice=no";
    assert_eq!(t.update(&callee_answer(1, answer), relay_ip(), T0 + 1000).unwrap(), vec![40000, 0]);
    assert_eq!(
        events(&mut t),
        vec![Event::ClosePorts(40004), Event::ClosePorts(40006), Event::ClosePorts(40008), Event::ClosePorts(40010)]
    );
    assert_eq!(statuses(&t), vec![StreamStatus::Active, StreamStatus::Rejected, StreamStatus::Rejected]);
    assert_eq!(t.stream_counts().get("video"), None);
    assert_eq!(t.ports_in_use(), 4);
    // The retransmitted offer now gets 0 for the rejected streams.
    assert_eq!(t.update(&caller_offer(1, offer), relay_ip(), T0 + 1100).unwrap(), vec![40002, 0, 0]);
    assert_eq!(stats(&t, T0 + 2000).streams[1].end_time, Some(0));
}

#[test]
fn port_zero_in_an_offer_is_not_relayed() {
    let mut t = table();
    let offer = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:0:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(1, offer), relay_ip(), T0).unwrap(), vec![40002, 0]);
    assert_eq!(t.ports_in_use(), 4);
    let answer = "audio:192.168.1.20:5000:sendrecv:ice=no,video:192.168.1.20:0:sendrecv:ice=no";
    assert_eq!(t.update(&callee_answer(1, answer), relay_ip(), T0 + 1000).unwrap(), vec![40000, 0]);
    let s = stats(&t, T0 + 1000);
    assert_eq!(s.streams[1].status, StreamStatus::Rejected);
    assert_eq!(s.streams[1].caller_local, "Unknown");
}

#[test]
fn media_type_mismatch_is_an_error_and_changes_nothing() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    let before = stats(&t, T0);
    let bad = callee_answer(1, "video:192.168.1.20:5000:sendrecv:ice=no");
    assert_eq!(t.update(&bad, relay_ip(), T0 + 1000), Err(CoreError::MediaTypeMismatch));
    assert_eq!(stats(&t, T0), before);
}

#[test]
fn delayed_offer_in_the_reply_and_answer_in_the_ack() {
    let mut t = table();
    assert_eq!(t.update(&caller_offer(1, ""), relay_ip(), T0).unwrap(), Vec::<u16>::new());
    assert!(t.has_session(CALL));
    assert_eq!(t.next_timeout(), Some(T0 + 7_200_000), "a session without streams is reaped eventually");
    // The 200 OK carries the offer: it goes to the caller.
    assert_eq!(t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 3000).unwrap(), vec![40000]);
    assert_eq!(stats(&t, T0 + 3000).start_time, None);
    // The ACK carries the answer: it goes to the callee.
    let ack = update(PartyType::Request, CALLER_TAG, Some(CALLEE_TAG), 1, "CallerUA", CALLER_SDP);
    assert_eq!(t.update(&ack, relay_ip(), T0 + 3100).unwrap(), vec![40002]);
    assert_eq!(stats(&t, T0 + 3100).start_time, Some((T0 + 3100) as f64 / 1000.0));
}

#[test]
fn latching_drops_bleed_and_counts_it() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    // Before the callee's SDP nothing on its port can be checked.
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(0, 100), T0 + 10), Verdict::Drop(DropReason::NoRemoteSdp));
    t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap();

    // A stranger sprays the caller-facing port: the caller announced a public
    // address, so only that address may latch.
    for port in [40000, 40001] {
        assert_eq!(t.on_packet(port, sa("192.0.2.66:999"), &rtp(0, 100), T0 + 1100), Verdict::Drop(DropReason::Bleed));
    }
    assert_eq!(t.bleed_drops(), 2);
    assert_eq!(stats(&t, T0 + 1100).streams[0].caller_remote, "Unknown", "bleed never latches");

    // The real caller latches, but the callee (private SDP) is unknown yet.
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 1200), Verdict::Drop(DropReason::NotLatched));
    // The callee behind NAT latches from its NAT, where its SIP came from.
    assert_eq!(t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(0, 100), T0 + 1300), forward(40000, CALLER_ADDR));
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 1400), forward(40002, CALLEE_NAT_ADDR));
    // Once latched, other sources are refused (not as bleed).
    assert_eq!(
        t.on_packet(40002, sa("192.0.2.66:999"), &rtp(0, 100), T0 + 1500),
        Verdict::Drop(DropReason::WrongSource)
    );
    assert_eq!(
        t.on_packet(40000, sa("198.51.100.10:4444"), &rtp(0, 100), T0 + 1500),
        Verdict::Drop(DropReason::WrongSource)
    );
    assert_eq!(t.bleed_drops(), 2);
    let s = stats(&t, T0 + 1500);
    assert_eq!(
        (s.streams[0].caller_remote.as_str(), s.streams[0].callee_remote.as_str()),
        (CALLER_ADDR, CALLEE_NAT_ADDR)
    );
    assert_eq!(t.on_packet(41000, sa(CALLER_ADDR), &rtp(0, 100), T0), Verdict::Drop(DropReason::UnknownPort));
}

#[test]
fn routable_private_ranges_are_reachable_and_must_match() {
    let config = CoreConfig { routable_private_ranges: vec!["10.20.0.0/16".parse().unwrap()], ..config() };
    let mut t = SessionTable::new(config);
    t.update(&caller_offer(1, "audio:10.20.0.5:4000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, "audio:10.20.0.6:5000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    // A listed private range is not behind NAT: a stranger cannot latch...
    assert_eq!(t.on_packet(40000, sa("192.0.2.5:1000"), &rtp(0, 100), T0 + 1), Verdict::Drop(DropReason::Bleed));
    assert_eq!(t.bleed_drops(), 1);
    // ...the announced address can, and the other side is reachable before it sent anything.
    assert_eq!(t.on_packet(40000, sa("10.20.0.5:4000"), &rtp(0, 100), T0 + 2), forward(40002, "10.20.0.6:5000"));
}

#[test]
fn forwarding_directions_for_rtp_and_rtcp() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, "audio:198.51.100.20:5000:sendrecv:ice=no"), relay_ip(), T0 + 1000).unwrap();
    // The callee announced a public address: usable before it is learned,
    // RTCP at port + 1.
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 1100), forward(40002, "198.51.100.20:5000"));
    assert_eq!(
        t.on_packet(40001, sa("198.51.100.10:4001"), &[0x81, 200, 0, 6], T0 + 1100),
        forward(40003, "198.51.100.20:5001")
    );
    // Callee to caller: RTP latched, RTCP not yet learned from the caller but
    // the caller's announced address is public.
    assert_eq!(t.on_packet(40002, sa("198.51.100.20:5000"), &rtp(0, 100), T0 + 1200), forward(40000, CALLER_ADDR));
    assert_eq!(
        t.on_packet(40003, sa("198.51.100.20:5001"), &[0x81, 200, 0, 6], T0 + 1200),
        forward(40001, "198.51.100.10:4001")
    );
    // RTCP latches on its own: the caller's RTCP came from :4001, so a packet
    // from the RTP source on the RTCP port is refused.
    assert_eq!(
        t.on_packet(40001, sa(CALLER_ADDR), &[0x81, 200, 0, 6], T0 + 1300),
        Verdict::Drop(DropReason::WrongSource)
    );
    // A stranger on the RTCP port of either side is bleed; the callee behind
    // NAT latches its RTCP from its signaling IP, and it goes to the other
    // side's public announced RTCP address.
    let mut t2 = table();
    t2.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t2.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0).unwrap();
    assert_eq!(t2.on_packet(40001, sa("192.0.2.66:1"), &[0x81, 200], T0), Verdict::Drop(DropReason::Bleed));
    assert_eq!(t2.on_packet(40003, sa("192.0.2.66:1"), &[0x81, 200], T0), Verdict::Drop(DropReason::Bleed));
    assert_eq!(t2.on_packet(40003, sa("203.0.113.77:31001"), &[0x81, 200], T0), forward(40001, "198.51.100.10:4001"));
}

#[test]
fn new_sdp_address_resets_the_latch() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, "audio:198.51.100.20:5000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    assert_eq!(t.on_packet(40002, sa("198.51.100.20:5000"), &rtp(0, 100), T0 + 1), forward(40000, CALLER_ADDR));
    // Re-INVITE: the callee moves to another host.
    t.update(&caller_offer(2, CALLER_SDP), relay_ip(), T0 + 1000).unwrap();
    t.update(&callee_answer(2, "audio:198.51.100.21:5000:sendrecv:ice=no"), relay_ip(), T0 + 1000).unwrap();
    assert_eq!(stats(&t, T0 + 1000).streams[0].callee_remote, "Unknown");
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 1001), forward(40002, "198.51.100.21:5000"));
    assert_eq!(t.on_packet(40002, sa("198.51.100.20:5000"), &rtp(0, 100), T0 + 1002), Verdict::Drop(DropReason::Bleed));
    assert_eq!(t.on_packet(40002, sa("198.51.100.21:5000"), &rtp(0, 100), T0 + 1003), forward(40000, CALLER_ADDR));
}

#[test]
fn counters_codecs_and_post_dial_delay() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, "audio:198.51.100.20:5000:sendrecv:ice=no"), relay_ip(), T0 + 2000).unwrap();
    for i in 0..3 {
        assert!(matches!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2500 + i), Verdict::Forward { .. }));
    }
    assert!(matches!(
        t.on_packet(40001, sa("198.51.100.10:4001"), &[0x80, 200, 0, 0, 0, 0, 0, 0], T0 + 2600),
        Verdict::Forward { .. }
    ));
    for _ in 0..2 {
        assert!(matches!(
            t.on_packet(40002, sa("198.51.100.20:5000"), &rtp(96, 100), T0 + 2700),
            Verdict::Forward { .. }
        ));
    }
    let _ = t.on_packet(40000, sa("192.0.2.1:1"), &rtp(8, 500), T0 + 2800); // refused: not counted
    let s = &stats(&t, T0 + 3000).streams[0];
    assert_eq!((s.caller_bytes, s.caller_packets), (3 * 172 + 8, 4));
    assert_eq!((s.callee_bytes, s.callee_packets), (200, 2));
    assert_eq!((s.caller_codec.as_str(), s.callee_codec.as_str()), ("PCMA", "Dynamic(96)"));
    assert_eq!(s.post_dial_delay, Some(2.5));

    let mut fax = table();
    fax.update(&caller_offer(1, "image:198.51.100.10:4000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    fax.update(&callee_answer(1, "image:198.51.100.20:5000:sendrecv:ice=no"), relay_ip(), T0).unwrap();
    let _ = fax.on_packet(40000, sa(CALLER_ADDR), &[0, 0, 0, 0], T0 + 1);
    let s = &stats(&fax, T0 + 1).streams[0];
    assert_eq!((s.caller_codec.as_str(), s.callee_codec.as_str()), ("T38", "Unknown"));
}

#[test]
fn no_traffic_timeout_expires_the_session() {
    let mut t = answered_call();
    // The answer set the callee's address at T0 + 1 s: the wait starts there.
    let due = T0 + 1000 + 90_000;
    assert_eq!(t.next_timeout(), Some(due));
    t.handle_timeout(due - 1);
    assert!(t.has_session(CALL));
    assert!(events(&mut t).is_empty());
    t.handle_timeout(due);
    assert!(!t.has_session(CALL));
    let ev = events(&mut t);
    assert_eq!(ev[..2], [Event::ClosePorts(40000), Event::ClosePorts(40002)]);
    let Some(Event::Expired(s)) = ev.get(2) else { panic!("no Expired event: {ev:?}") };
    assert_eq!(s.streams[0].status, StreamStatus::NoTrafficTimeout);
    assert_eq!(s.streams[0].timeout_wait, 90);
    assert_eq!(s.duration, 0, "no media after the answer");
    assert_eq!(t.ports_in_use(), 0);
    assert_eq!(t.next_timeout(), None);
}

#[test]
fn traffic_postpones_the_timeout() {
    let mut t = latched_call();
    for i in 1..=10u64 {
        let now = T0 + 2000 + i * 60_000;
        assert!(matches!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 100), now), Verdict::Forward { .. }));
        t.handle_timeout(now);
    }
    assert!(t.has_session(CALL), "media every minute keeps the call");
    let last = T0 + 2000 + 600_000;
    while let Some(due) = t.next_timeout() {
        assert!(due <= last + 90_000, "never late");
        t.handle_timeout(due);
    }
    assert!(!t.has_session(CALL));
    let expired =
        events(&mut t).into_iter().find_map(|e| if let Event::Expired(s) = e { Some(s) } else { None }).unwrap();
    assert_eq!(expired.streams[0].end_time, Some((last - (T0 + 1000)) / 1000), "ends when the media stopped");
    assert_eq!(expired.duration, (last - (T0 + 1000)) / 1000);
    assert_eq!(expired.streams[0].status, StreamStatus::NoTrafficTimeout);
}

#[test]
fn on_hold_timeout() {
    let mut t = answered_call();
    t.update(&caller_offer(2, "audio:198.51.100.10:4000:inactive:ice=no"), relay_ip(), T0 + 2000).unwrap();
    t.handle_timeout(T0 + 2000 + 90_000);
    assert!(t.has_session(CALL));
    t.handle_timeout(T0 + 1000 + 7_200_000);
    let ev = events(&mut t);
    let Some(Event::Expired(s)) = ev.last() else { panic!("{ev:?}") };
    assert_eq!(s.streams[0].status, StreamStatus::OnHoldTimeout);
    assert_eq!(s.streams[0].timeout_wait, 7200);
}

#[test]
fn ice_stream_without_media_is_an_unselected_candidate() {
    let mut t = table();
    let av_offer = "audio:198.51.100.10:4000:sendrecv:ice=yes,video:198.51.100.10:4002:sendrecv:ice=yes";
    let av_answer = "audio:198.51.100.20:5000:sendrecv:ice=yes,video:198.51.100.20:5002:sendrecv:ice=no";
    t.update(&caller_offer(1, av_offer), relay_ip(), T0).unwrap();
    t.update(&callee_answer(1, av_answer), relay_ip(), T0).unwrap();
    t.handle_timeout(T0 + 90_000);
    let ev = events(&mut t);
    let Some(Event::Expired(s)) = ev.last() else { panic!("{ev:?}") };
    assert_eq!(s.streams[0].status, StreamStatus::UnselectedIceCandidate, "both sides ice=yes");
    assert_eq!(s.streams[1].status, StreamStatus::NoTrafficTimeout, "callee did not offer ICE");
}

#[test]
fn session_lives_while_one_stream_does() {
    let mut t = table();
    let av = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no";
    t.update(&caller_offer(1, av), relay_ip(), T0).unwrap();
    t.update(
        &callee_answer(1, "audio:198.51.100.20:5000:sendrecv:ice=no,video:198.51.100.20:5002:sendrecv:ice=no"),
        relay_ip(),
        T0,
    )
    .unwrap();
    events(&mut t);
    let _ = t.on_packet(40000, sa(CALLER_ADDR), &rtp(0, 100), T0 + 60_000);
    t.handle_timeout(T0 + 90_000);
    assert!(t.has_session(CALL));
    assert_eq!(events(&mut t), vec![Event::ClosePorts(40004), Event::ClosePorts(40006)]);
    assert_eq!(statuses(&t), vec![StreamStatus::Active, StreamStatus::NoTrafficTimeout]);
    assert_eq!(t.stream_counts().get("video"), None);
    assert_eq!(
        t.on_packet(40004, sa("198.51.100.10:4002"), &rtp(0, 100), T0 + 90_001),
        Verdict::Drop(DropReason::UnknownPort)
    );
    t.handle_timeout(T0 + 150_000);
    assert!(!t.has_session(CALL));
}

#[test]
fn answer_rejecting_everything_expires_after_the_stream_timeout() {
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    assert_eq!(
        t.update(&callee_answer(1, "audio:192.168.1.20:0:sendrecv:ice=no"), relay_ip(), T0 + 1000).unwrap(),
        vec![0]
    );
    assert_eq!(t.ports_in_use(), 0);
    assert!(t.has_session(CALL), "kept for a re-offer or the BYE");
    t.handle_timeout(T0 + 1000 + 89_999);
    assert!(t.has_session(CALL));
    t.handle_timeout(T0 + 1000 + 90_000);
    assert!(!t.has_session(CALL));
    let ev = events(&mut t);
    let Some(Event::Expired(s)) = ev.last() else { panic!("{ev:?}") };
    assert_eq!(s.streams[0].status, StreamStatus::Rejected);
}

#[test]
fn expire_all_reports_every_session() {
    let mut t = answered_call();
    let mut second = caller_offer(1, CALLER_SDP);
    second.call_id = "call-2".into();
    t.update(&second, relay_ip(), T0).unwrap();
    events(&mut t);
    t.expire_all(T0 + 5000);
    let ev = events(&mut t);
    let expired: Vec<&SessionStats> =
        ev.iter().filter_map(|e| if let Event::Expired(s) = e { Some(s) } else { None }).collect();
    assert_eq!(expired.len(), 2);
    assert_eq!(expired[0].call_id, CALL);
    assert_eq!(expired[1].call_id, "call-2");
    assert!(expired.iter().all(|s| s.streams.iter().all(|st| st.status == StreamStatus::Closed)));
    assert_eq!(expired[0].duration, 4);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::ClosePorts(_))).count(), 4);
    assert_eq!((t.session_count(), t.ports_in_use(), t.next_timeout()), (0, 0, None));
}

#[test]
fn remove_from_either_side() {
    // Caller's BYE.
    let mut t = latched_call();
    let s = t.remove(&remove(CALLER_TAG, Some(CALLEE_TAG)), T0 + 31_000).unwrap();
    assert_eq!(s.duration, 30);
    assert_eq!(s.streams[0].status, StreamStatus::Closed);
    assert_eq!(s.streams[0].end_time, Some(30));
    assert_eq!(s.streams[0].callee_packets, 1);
    assert!(!t.has_session(CALL));
    assert_eq!(events(&mut t), vec![Event::ClosePorts(40000), Event::ClosePorts(40002)]);
    assert_eq!(t.remove(&remove(CALLER_TAG, None), T0), Err(CoreError::UnknownSession));

    // Callee's BYE: From is the callee.
    let mut t = answered_call();
    assert!(t.remove(&remove(CALLEE_TAG, Some(CALLER_TAG)), T0 + 5000).is_ok());
    assert_eq!(t.ports_in_use(), 0);

    // CANCEL: no to_tag.
    let mut t = table();
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    let s = t.remove(&remove(CALLER_TAG, None), T0 + 5000).unwrap();
    assert_eq!((s.start_time, s.duration), (None, 0));

    // Foreign tags do not end the call.
    let mut t = answered_call();
    assert_eq!(t.remove(&remove("x", Some("y")), T0), Err(CoreError::TagMismatch));
    assert!(t.has_session(CALL));
}

#[test]
fn released_ports_go_to_the_back_of_the_free_list() {
    let mut t = SessionTable::new(CoreConfig { port_range: (40000, 40016), ..CoreConfig::default() });
    assert_eq!(t.ports_free(), 16);
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    t.remove(&remove(CALLER_TAG, None), T0).unwrap();
    let mut next = caller_offer(1, CALLER_SDP);
    next.call_id = "call-2".into();
    assert_eq!(t.update(&next, relay_ip(), T0).unwrap(), vec![40006], "40000/40002 are not reused at once");
    let ev = events(&mut t);
    assert_eq!(ev[ev.len() - 2..], [Event::OpenPorts(40004), Event::OpenPorts(40006)]);
    let three = "audio:198.51.100.10:4000:sendrecv:ice=no,audio:198.51.100.10:4002:sendrecv:ice=no,audio:198.51.100.10:4004:sendrecv:ice=no";
    let mut third = caller_offer(1, three);
    third.call_id = "call-3".into();
    assert_eq!(t.update(&third, relay_ip(), T0).unwrap(), vec![40010, 40014, 40002], "released pairs come last");
}

#[test]
fn limits_are_errors_without_side_effects() {
    let mut t = SessionTable::new(CoreConfig {
        port_range: (40000, 40008),
        max_sessions: 1,
        max_streams: 2,
        ..CoreConfig::default()
    });
    let three = "audio:198.51.100.10:4000:sendrecv:ice=no,audio:198.51.100.10:4002:sendrecv:ice=no,audio:198.51.100.10:4004:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(1, three), relay_ip(), T0), Err(CoreError::TooManyStreams));
    assert!(!t.has_session(CALL));
    t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap();
    let mut other = caller_offer(1, CALLER_SDP);
    other.call_id = "call-2".into();
    assert_eq!(t.update(&other, relay_ip(), T0), Err(CoreError::TooManySessions));
    events(&mut t);
    // Two more streams need four pairs; two are left.
    let two_more = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no";
    t.update(&caller_offer(2, two_more), relay_ip(), T0).unwrap();
    let ev = events(&mut t);
    assert_eq!(ev, vec![Event::OpenPorts(40004), Event::OpenPorts(40006)]);
    let no_room = "audio:198.51.100.10:4000:sendrecv:ice=no,image:198.51.100.10:4002:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(3, no_room), relay_ip(), T0), Err(CoreError::NoFreePorts));
    assert!(events(&mut t).is_empty(), "nothing allocated or released");
    assert_eq!(statuses(&t), vec![StreamStatus::Active, StreamStatus::Active]);
    assert_eq!((t.ports_in_use(), t.ports_free()), (8, 0));
}

#[test]
fn garbage_never_panics() {
    let mut t = latched_call();
    for port in [0, 1, 39999, 40000, 40001, 40002, 40003, 65535] {
        for pkt in [&[][..], &[0xff][..], &[0x80][..], &[0x80, 0x7f][..]] {
            let _ = t.on_packet(port, sa("[2001:db8::1]:1"), pkt, 0);
            let _ = t.on_packet(port, sa(CALLER_ADDR), pkt, u64::MAX);
        }
    }
    t.handle_timeout(u64::MAX);
    assert_eq!(t.session_count(), 0);
    assert_eq!(t.ports_in_use(), 0);
}

#[test]
fn ipv6_sides_latch_by_the_same_rules_and_report_bracketed_addresses() {
    let relay: std::net::IpAddr = "2001:db8:77::1".parse().unwrap();
    let mut t = table();
    // The caller announces a public address, the callee a ULA (behind NAT).
    t.update(&caller_offer(1, "audio:2001:db8:1::2:4000:sendrecv:ice=no"), relay, T0).unwrap();
    let answer = callee_answer(1, "audio:fd00:2::2:5000:sendrecv:ice=no").signaled_by("2001:db8:2::9");
    t.update(&answer, relay, T0 + 1000).unwrap();
    events(&mut t);
    // A stranger cannot take the public caller's side; the caller can.
    assert_eq!(
        t.on_packet(40000, sa("[2001:db8:66::6]:4000"), &rtp(8, 172), T0 + 1100),
        Verdict::Drop(DropReason::Bleed)
    );
    assert_eq!(
        t.on_packet(40000, sa("[2001:db8:1::2]:4000"), &rtp(8, 172), T0 + 1200),
        Verdict::Drop(DropReason::NotLatched)
    );
    // The ULA callee is behind NAT: it latches from its translated address,
    // where its SIP came from.
    assert_eq!(
        t.on_packet(40002, sa("[2001:db8:2::9]:6000"), &rtp(8, 172), T0 + 1300),
        forward(40000, "[2001:db8:1::2]:4000")
    );
    assert_eq!(
        t.on_packet(40000, sa("[2001:db8:1::2]:4000"), &rtp(8, 172), T0 + 1400),
        forward(40002, "[2001:db8:2::9]:6000")
    );
    let st = &stats(&t, T0 + 2000).streams[0];
    assert_eq!(
        (st.caller_remote.as_str(), st.callee_remote.as_str()),
        ("[2001:db8:1::2]:4000", "[2001:db8:2::9]:6000")
    );
    assert_eq!(
        (st.caller_local.as_str(), st.callee_local.as_str()),
        ("[2001:db8:77::1]:40000", "[2001:db8:77::1]:40002")
    );
}

#[test]
fn a_pair_the_daemon_cannot_bind_is_replaced_before_anyone_is_told() {
    let mut t = table();
    assert_eq!(t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap(), vec![40002]);
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40000), Event::OpenPorts(40002)]);
    // Another program holds 40003: the callee side moves to the next pair.
    assert_eq!(t.move_unbindable(40002), Some(40004));
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40004), Event::ClosePorts(40002)]);
    assert_eq!(t.move_unbindable(40002), None, "no longer held");
    assert_eq!(t.ports_in_use(), 4);
    // Retransmission and answer see the moved side; the caller's is kept.
    assert_eq!(t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap(), vec![40004]);
    assert_eq!(t.update(&callee_answer(1, CALLEE_SDP), relay_ip(), T0 + 1000).unwrap(), vec![40000]);
    let st = &stats(&t, T0 + 1000).streams[0];
    assert_eq!((st.caller_local.as_str(), st.callee_local.as_str()), ("203.0.113.1:40000", "203.0.113.1:40004"));
    // Media flows through the new pair; the old one is nobody's.
    assert_eq!(
        t.on_packet(40002, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000),
        Verdict::Drop(DropReason::UnknownPort)
    );
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2000), Verdict::Drop(DropReason::NotLatched));
    assert_eq!(t.on_packet(40004, sa(CALLEE_NAT_ADDR), &rtp(8, 172), T0 + 2000), forward(40000, CALLER_ADDR));
    assert_eq!(t.on_packet(40000, sa(CALLER_ADDR), &rtp(8, 172), T0 + 2020), forward(40004, CALLEE_NAT_ADDR));
    assert_eq!(t.ports_in_use(), 4);
}

#[test]
fn pairs_the_daemon_has_no_descriptors_for_are_never_answered() {
    // A new call whose pairs cannot be bound is forgotten without a report.
    let mut t = table();
    assert_eq!(t.update(&caller_offer(1, CALLER_SDP), relay_ip(), T0).unwrap(), vec![40002]);
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40000), Event::OpenPorts(40002)]);
    assert!(t.discard(CALL));
    assert_eq!(events(&mut t), vec![Event::ClosePorts(40000), Event::ClosePorts(40002)], "no Expired report");
    assert!(!t.has_session(CALL) && !t.discard(CALL));
    assert_eq!(t.ports_in_use(), 0);

    // A re-INVITE adding a stream the daemon cannot bind: that stream is
    // rejected, the first one keeps its ports, a retransmission answers 0.
    let mut t = answered_call();
    let two = "audio:198.51.100.10:4000:sendrecv:ice=no,video:198.51.100.10:4002:sendrecv:ice=no";
    assert_eq!(t.update(&caller_offer(2, two), relay_ip(), T0 + 2000).unwrap(), vec![40002, 40006]);
    assert_eq!(events(&mut t), vec![Event::OpenPorts(40004), Event::OpenPorts(40006)]);
    assert!(t.reject_unbindable(40004, T0 + 2000));
    assert_eq!(events(&mut t), vec![Event::ClosePorts(40004), Event::ClosePorts(40006)]);
    assert!(!t.reject_unbindable(40006, T0 + 2000), "released with its stream");
    assert_eq!(t.update(&caller_offer(2, two), relay_ip(), T0 + 2000).unwrap(), vec![40002, 0]);
    assert_eq!(statuses(&t), vec![StreamStatus::Active, StreamStatus::Rejected]);
    assert_eq!(t.ports_in_use(), 4);
}

#[test]
fn a_session_never_holds_more_than_max_streams_across_re_invites() {
    let max = 3;
    let mut t = SessionTable::new(CoreConfig { port_range: (40000, 40400), max_streams: max, ..CoreConfig::default() });
    let kinds = ["audio", "video", "image"];
    let mut cseq = 1;
    for round in 0..30usize {
        // Each offer has max items, the types rotated so that streams are
        // replaced rather than reused; some rounds come from the callee.
        let items: Vec<String> = (0..max)
            .map(|i| format!("{}:198.51.100.10:{}:sendrecv:ice=no", kinds[(i + round) % 3], 4000 + 2 * i))
            .collect();
        let offer =
            if round % 4 == 3 { callee_offer(cseq, &items.join(",")) } else { caller_offer(cseq, &items.join(",")) };
        t.update(&offer, relay_ip(), T0 + round as u64).unwrap();
        cseq += 1;
        events(&mut t);
        let live = stats(&t, T0).streams.iter().filter(|s| s.status == StreamStatus::Active).count();
        assert!(live <= max, "round {round}: {live} live streams");
        assert!(t.ports_in_use() <= 4 * max, "round {round}: {} ports", t.ports_in_use());
    }
    // One item more is refused before anything is allocated.
    let items: Vec<String> =
        (0..=max).map(|i| format!("audio:198.51.100.10:{}:sendrecv:ice=no", 4000 + 2 * i)).collect();
    let before = t.ports_in_use();
    assert_eq!(t.update(&caller_offer(cseq, &items.join(",")), relay_ip(), T0 + 100), Err(CoreError::TooManyStreams));
    assert!(events(&mut t).is_empty());
    assert_eq!(t.ports_in_use(), before);
}
