//! Builders shared by the scenario and property tests.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use relaybox_core::{CoreConfig, Event, SessionTable};
use relaybox_proto::{CSeq, MediaItem, PartyType, RemoveRequest, SignalingIp, UpdateRequest};

pub const CALL: &str = "call-1@example.com";
pub const CALLER_TAG: &str = "ft";
pub const CALLEE_TAG: &str = "tt";

pub fn relay_ip() -> IpAddr {
    "203.0.113.1".parse().unwrap()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config() -> CoreConfig {
    CoreConfig { port_range: (40000, 40100), ..CoreConfig::default() }
}

pub fn table() -> SessionTable {
    SessionTable::new(config())
}

pub fn media(list: &str) -> Vec<MediaItem> {
    MediaItem::parse_list(list, 64).unwrap()
}

/// An update of call `CALL` in full. Its `signaling_ip` is the sender's:
/// the caller's public address, or the callee's NAT (see the constants).
pub fn update(
    party: PartyType,
    from_tag: &str,
    to_tag: Option<&str>,
    cseq: u32,
    user_agent: &str,
    list: &str,
) -> UpdateRequest {
    UpdateRequest {
        party,
        dialog_id: Some("3456:91827".into()),
        call_id: CALL.into(),
        cseq: CSeq { number: cseq, method: "INVITE".into() },
        from_uri: "sip:alice@example.com".into(),
        to_uri: "sip:bob@example.com".into(),
        from_tag: from_tag.into(),
        to_tag: to_tag.map(Into::into),
        user_agent: user_agent.into(),
        signaling_ip: None,
        username: None,
        media_relay: None,
        media: media(list),
    }
    .signaled_by(sender_signaling_ip(party, from_tag))
}

/// The sender's signaling IP: the caller's when it sends a request in its
/// own dialog direction or replies to the callee's.
fn sender_signaling_ip(party: PartyType, from_tag: &str) -> &'static str {
    match (party, from_tag == CALLER_TAG) {
        (PartyType::Request, true) | (PartyType::Reply, false) => CALLER_SIGNALING,
        _ => CALLEE_SIGNALING,
    }
}

pub trait Signaled {
    /// The same update with `signaling_ip: <ip>` (`src` or `src_dst`).
    fn signaled_by(self, ip: &str) -> Self;
    /// The same update without `signaling_ip`.
    fn unsignaled(self) -> Self;
}

impl Signaled for UpdateRequest {
    fn signaled_by(mut self, ip: &str) -> Self {
        self.signaling_ip = Some(SignalingIp::parse(ip).expect("a signaling IP"));
        self
    }

    fn unsignaled(mut self) -> Self {
        self.signaling_ip = None;
        self
    }
}

/// The caller's INVITE (or re-INVITE with `cseq` > 1).
pub fn caller_offer(cseq: u32, list: &str) -> UpdateRequest {
    let to_tag = (cseq > 1).then_some(CALLEE_TAG);
    update(PartyType::Request, CALLER_TAG, to_tag, cseq, "CallerUA", list)
}

/// The callee's 183/200 to the caller's INVITE `cseq`.
pub fn callee_answer(cseq: u32, list: &str) -> UpdateRequest {
    update(PartyType::Reply, CALLER_TAG, Some(CALLEE_TAG), cseq, "CalleeUA", list)
}

/// A re-INVITE from the callee (From = callee tag).
pub fn callee_offer(cseq: u32, list: &str) -> UpdateRequest {
    update(PartyType::Request, CALLEE_TAG, Some(CALLER_TAG), cseq, "CalleeUA", list)
}

/// The caller's 200 to a callee re-INVITE.
pub fn caller_answer(cseq: u32, list: &str) -> UpdateRequest {
    update(PartyType::Reply, CALLEE_TAG, Some(CALLER_TAG), cseq, "CallerUA", list)
}

pub fn remove(from_tag: &str, to_tag: Option<&str>) -> RemoveRequest {
    RemoveRequest { call_id: CALL.into(), from_tag: from_tag.into(), to_tag: to_tag.map(Into::into) }
}

pub fn events(t: &mut SessionTable) -> Vec<Event> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

/// An RTP packet of `len` bytes with payload type `pt`.
pub fn rtp(pt: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.resize(len.max(12), 0);
    p
}

/// Public caller without NAT, callee behind NAT announcing a private address.
pub const CALLER_SDP: &str = "audio:198.51.100.10:4000:sendrecv:ice=no";
pub const CALLER_ADDR: &str = "198.51.100.10:4000";
pub const CALLEE_SDP: &str = "audio:192.168.1.20:5000:sendrecv:ice=no";
pub const CALLEE_NAT_ADDR: &str = "203.0.113.77:31000";
/// Where each party's SIP messages come from: the caller has no NAT, the
/// callee's SIP and RTP leave through the same NAT address.
pub const CALLER_SIGNALING: &str = "198.51.100.10";
pub const CALLEE_SIGNALING: &str = "203.0.113.77";
