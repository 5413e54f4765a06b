//! The session types as snapshot formats 2 and 3 stored them: the same
//! fields in the same order, without what format 4 added (postcard is
//! positional, so each old shape is spelt out once here).

use std::net::SocketAddr;

use relaybox_proto::{MediaType, StreamStatus};
use serde::Deserialize;

use crate::session::{self, media_type_name, KernelFlow, OfferState, SideAddrs, SignalingIps};
use crate::Millis;

#[derive(Deserialize)]
pub(super) struct Leg {
    port: u16,
    sdp: Option<SocketAddr>,
    hold: bool,
    ice: bool,
    rtp_peer: Option<SocketAddr>,
    rtcp_peer: Option<SocketAddr>,
    codec: Option<String>,
    bytes: u64,
    packets: u64,
}

#[derive(Deserialize)]
pub(super) struct Stream {
    id: u32,
    #[serde(with = "media_type_name")]
    media_type: MediaType,
    status: StreamStatus,
    created_at: Millis,
    answered_at: Option<Millis>,
    ended_at: Option<Millis>,
    last_activity: Millis,
    first_media_at: Option<Millis>,
    timeout_wait: Millis,
    caller: Leg,
    callee: Leg,
    flows: [Option<KernelFlow>; 2],
}

#[derive(Deserialize)]
pub(super) struct Session {
    id: u64,
    call_id: String,
    from_tag: String,
    from_uri: String,
    to_uri: String,
    to_tag: Option<String>,
    dialog_id: Option<String>,
    caller_ua: String,
    callee_ua: String,
    locals: SideAddrs,
    offer: Option<OfferState>,
    streams: Vec<Stream>,
    current: Vec<u32>,
    next_stream_id: u32,
    last_update: Millis,
    answered_at: Option<Millis>,
    ended_at: Option<Millis>,
}

/// A latch of an old snapshot has no rule: it counts as a fallback, so the
/// first source a rule vouches for takes the leg over.
impl From<Leg> for session::Leg {
    fn from(v: Leg) -> Self {
        let Leg { port, sdp, hold, ice, rtp_peer, rtcp_peer, codec, bytes, packets } = v;
        let rule = |peer: Option<SocketAddr>| peer.map(|_| crate::LatchRule::Fallback);
        session::Leg {
            port,
            sdp,
            hold,
            ice,
            rtp_peer,
            rtcp_peer,
            codec,
            bytes,
            packets,
            latched_by: [rule(rtp_peer), rule(rtcp_peer)],
            stun_peers: [None, None],
            window_opened: None,
            routes: [None, None],
        }
    }
}

impl From<Stream> for session::Stream {
    fn from(v: Stream) -> Self {
        let Stream {
            id,
            media_type,
            status,
            created_at,
            answered_at,
            ended_at,
            last_activity,
            first_media_at,
            timeout_wait,
            caller,
            callee,
            flows,
        } = v;
        session::Stream {
            id,
            media_type,
            status,
            created_at,
            answered_at,
            ended_at,
            last_activity,
            first_media_at,
            timeout_wait,
            caller: caller.into(),
            callee: callee.into(),
            flows,
        }
    }
}

impl From<Session> for session::Session {
    fn from(v: Session) -> Self {
        let Session {
            id,
            call_id,
            from_tag,
            from_uri,
            to_uri,
            to_tag,
            dialog_id,
            caller_ua,
            callee_ua,
            locals,
            offer,
            streams,
            current,
            next_stream_id,
            last_update,
            answered_at,
            ended_at,
        } = v;
        session::Session {
            id,
            call_id,
            from_tag,
            from_uri,
            to_uri,
            to_tag,
            dialog_id,
            caller_ua,
            callee_ua,
            username: None,
            locals,
            offer,
            streams: streams.into_iter().map(Into::into).collect(),
            current,
            next_stream_id,
            last_update,
            answered_at,
            ended_at,
            signaling: SignalingIps::default(),
            scheduled: None,
        }
    }
}
