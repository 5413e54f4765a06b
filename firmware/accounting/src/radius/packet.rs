//! RFC 2866 Accounting-Request encoding and Accounting-Response checking.
//! Pure: bytes in, bytes out, no sockets.

use std::net::IpAddr;

use md5::{Digest, Md5};
use relaybox_proto::{SessionStats, StreamStatus};

pub const ACCOUNTING_REQUEST: u8 = 4;
pub const ACCOUNTING_RESPONSE: u8 = 5;
/// The most an attribute value can hold (255 minus type and length).
pub const MAX_VALUE: usize = 253;
/// RFC 2865: the largest packet.
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 20;

// Standard attribute numbers (RFC 2865, 2866, 2869, 3162).
pub const USER_NAME: u8 = 1;
pub const NAS_IP_ADDRESS: u8 = 4;
pub const ACCT_STATUS_TYPE: u8 = 40;
pub const ACCT_DELAY_TIME: u8 = 41;
pub const ACCT_INPUT_OCTETS: u8 = 42;
pub const ACCT_OUTPUT_OCTETS: u8 = 43;
pub const ACCT_SESSION_ID: u8 = 44;
pub const ACCT_SESSION_TIME: u8 = 46;
pub const ACCT_INPUT_GIGAWORDS: u8 = 52;
pub const ACCT_OUTPUT_GIGAWORDS: u8 = 53;
pub const NAS_IPV6_ADDRESS: u8 = 95;
/// Acct-Status-Type value: Interim-Update ("Update" in MediaProxy).
pub const STATUS_UPDATE: u32 = 3;

/// Numbers of the non-standard attributes, as the dictionary defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAttributes {
    pub sip_from_tag: u8,
    pub sip_to_tag: u8,
    pub sip_user_agents: u8,
    pub sip_applications: u8,
    pub media_codecs: u8,
    pub media_info: u8,
}

impl Default for SipAttributes {
    /// The numbers of firmware/accounting/radius/dictionary.
    fn default() -> Self {
        SipAttributes {
            sip_from_tag: 105,
            sip_to_tag: 104,
            sip_user_agents: 224,
            sip_applications: 225,
            media_codecs: 226,
            media_info: 227,
        }
    }
}

impl SipAttributes {
    /// (dictionary name, slot) pairs, for reading a dictionary.
    pub fn slots(&mut self) -> [(&'static str, &mut u8); 6] {
        [
            ("Sip-From-Tag", &mut self.sip_from_tag),
            ("Sip-To-Tag", &mut self.sip_to_tag),
            ("Sip-User-Agents", &mut self.sip_user_agents),
            ("Sip-Applications", &mut self.sip_applications),
            ("Media-Codecs", &mut self.media_codecs),
            ("Media-Info", &mut self.media_info),
        ]
    }
}

/// One attribute: type and value (at most [`MAX_VALUE`] octets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub typ: u8,
    pub value: Vec<u8>,
}

impl Attribute {
    /// A text attribute, cut to [`MAX_VALUE`] octets (at a character
    /// boundary, so the value stays valid UTF-8).
    pub fn text(typ: u8, s: &str) -> Self {
        let mut end = s.len().min(MAX_VALUE);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Attribute { typ, value: s.as_bytes()[..end].to_vec() }
    }

    pub fn integer(typ: u8, v: u32) -> Self {
        Attribute { typ, value: v.to_be_bytes().to_vec() }
    }

    fn clamped(typ: u8, v: u64) -> Self {
        Self::integer(typ, u32::try_from(v).unwrap_or(u32::MAX))
    }
}

/// The attributes of one finished session, as MediaProxy sent them.
pub fn session_attributes(stats: &SessionStats, sip: &SipAttributes) -> Vec<Attribute> {
    let mut a = vec![
        Attribute::integer(ACCT_STATUS_TYPE, STATUS_UPDATE),
        // MediaProxy's: the username a proxy gave (JSON signaling_ip).
        Attribute::text(USER_NAME, stats.username.as_deref().unwrap_or("mediaproxy@default")),
        Attribute::text(ACCT_SESSION_ID, &stats.call_id),
        Attribute::clamped(ACCT_SESSION_TIME, stats.duration),
    ];
    let input: u64 = stats.streams.iter().map(|s| s.caller_bytes).fold(0, u64::saturating_add);
    let output: u64 = stats.streams.iter().map(|s| s.callee_bytes).fold(0, u64::saturating_add);
    a.push(Attribute::integer(ACCT_INPUT_OCTETS, input as u32));
    if input >> 32 != 0 {
        a.push(Attribute::clamped(ACCT_INPUT_GIGAWORDS, input >> 32));
    }
    a.push(Attribute::integer(ACCT_OUTPUT_OCTETS, output as u32));
    if output >> 32 != 0 {
        a.push(Attribute::clamped(ACCT_OUTPUT_GIGAWORDS, output >> 32));
    }
    a.push(Attribute::text(sip.sip_from_tag, &stats.from_tag));
    a.push(Attribute::text(sip.sip_to_tag, stats.to_tag.as_deref().unwrap_or("")));
    a.push(Attribute::text(sip.sip_user_agents, &format!("{}+{}", stats.caller_ua, stats.callee_ua)));
    match relay_address(stats) {
        Some(IpAddr::V4(ip)) => a.push(Attribute { typ: NAS_IP_ADDRESS, value: ip.octets().to_vec() }),
        Some(IpAddr::V6(ip)) => a.push(Attribute { typ: NAS_IPV6_ADDRESS, value: ip.octets().to_vec() }),
        None => {}
    }
    let mut media: Vec<&str> =
        stats.streams.iter().filter(|s| s.start_time != s.end_time).map(|s| s.media_type.as_str()).collect();
    media.sort_unstable();
    media.dedup();
    a.push(Attribute::text(sip.sip_applications, &media.join(", ")));
    let codecs: Vec<&str> = stats.streams.iter().map(|s| s.caller_codec.as_str()).collect();
    a.push(Attribute::text(sip.media_codecs, &codecs.join(", ")));
    let timed_out = stats.streams.last().is_some_and(|s| s.status != StreamStatus::Closed);
    a.push(Attribute::text(sip.media_info, if timed_out { "timeout" } else { "" }));
    if let Some(pdd) = stats.streams.iter().find_map(|s| s.post_dial_delay) {
        // `as` saturates: NaN and negatives give 0.
        a.push(Attribute::integer(ACCT_DELAY_TIME, pdd as u32));
    }
    // RFC 8044 section 3.5: zero-length strings are not sent, the attribute
    // is left out (MediaProxy sent them empty; FreeRADIUS drops those).
    a.retain(|attr| !attr.value.is_empty());
    a
}

/// The relay's address: the first stream's caller-side local address, else
/// the session's relay_ip.
fn relay_address(stats: &SessionStats) -> Option<IpAddr> {
    let from_stream = stats.streams.first().and_then(|s| host_of(&s.caller_local));
    from_stream.or_else(|| stats.relay_ip.as_deref().and_then(host_of))
}

fn host_of(addr: &str) -> Option<IpAddr> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Some(ip);
    }
    addr.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
}

/// An encoded Accounting-Request and its Request Authenticator.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u8,
    pub authenticator: [u8; 16],
    pub bytes: Vec<u8>,
}

/// Encodes an Accounting-Request (RFC 2866 section 3). Attributes that do not
/// fit in [`MAX_PACKET`] are left out (never the case for session records).
pub fn encode_request(id: u8, attrs: &[Attribute], secret: &[u8]) -> Request {
    let mut bytes = vec![ACCOUNTING_REQUEST, id, 0, 0];
    bytes.extend_from_slice(&[0; 16]);
    for attr in attrs {
        let value = &attr.value[..attr.value.len().min(MAX_VALUE)];
        if bytes.len() + 2 + value.len() > MAX_PACKET {
            break;
        }
        bytes.push(attr.typ);
        bytes.push((2 + value.len()) as u8);
        bytes.extend_from_slice(value);
    }
    let len = bytes.len() as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    // Request Authenticator = MD5(Code+Identifier+Length+16 zero octets+attributes+secret)
    let mut md5 = Md5::new();
    md5.update(&bytes);
    md5.update(secret);
    let authenticator: [u8; 16] = md5.finalize().into();
    bytes[4..HEADER].copy_from_slice(&authenticator);
    Request { id, authenticator, bytes }
}

/// Why a datagram is not the answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed packet ({0})")]
    Malformed(&'static str),
    #[error("not an Accounting-Response (code {0})")]
    Code(u8),
    #[error("identifier {got} instead of {want}")]
    Identifier { got: u8, want: u8 },
    #[error("bad Response Authenticator (wrong shared secret?)")]
    Authenticator,
}

/// Checks that `packet` is the Accounting-Response to `request`:
/// code 5, same identifier, Response Authenticator =
/// MD5(Code+Identifier+Length+Request Authenticator+attributes+secret).
pub fn check_response(packet: &[u8], request: &Request, secret: &[u8]) -> Result<(), ResponseError> {
    if packet.len() < HEADER {
        return Err(ResponseError::Malformed("shorter than a header"));
    }
    let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    if len < HEADER || len > packet.len() || len > MAX_PACKET {
        return Err(ResponseError::Malformed("bad length field"));
    }
    if packet[0] != ACCOUNTING_RESPONSE {
        return Err(ResponseError::Code(packet[0]));
    }
    if packet[1] != request.id {
        return Err(ResponseError::Identifier { got: packet[1], want: request.id });
    }
    let packet = &packet[..len];
    let mut md5 = Md5::new();
    md5.update(&packet[..4]);
    md5.update(request.authenticator);
    md5.update(&packet[HEADER..]);
    md5.update(secret);
    let want: [u8; 16] = md5.finalize().into();
    if packet[4..HEADER] != want {
        return Err(ResponseError::Authenticator);
    }
    Ok(())
}

/// Builds the Accounting-Response a server would send (for tests).
pub fn encode_response(request: &Request, attrs: &[Attribute], secret: &[u8]) -> Vec<u8> {
    let mut bytes = vec![ACCOUNTING_RESPONSE, request.id, 0, 0];
    bytes.extend_from_slice(&request.authenticator);
    for attr in attrs {
        bytes.push(attr.typ);
        bytes.push((2 + attr.value.len()) as u8);
        bytes.extend_from_slice(&attr.value);
    }
    let len = bytes.len() as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let mut md5 = Md5::new();
    md5.update(&bytes);
    md5.update(secret);
    let auth: [u8; 16] = md5.finalize().into();
    bytes[4..HEADER].copy_from_slice(&auth);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaybox_proto::StreamStats;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn a_request_is_byte_exact() {
        let attrs = [
            Attribute::integer(ACCT_STATUS_TYPE, STATUS_UPDATE),
            Attribute::text(USER_NAME, "mediaproxy@default"),
            Attribute::text(ACCT_SESSION_ID, "abc"),
        ];
        let req = encode_request(7, &attrs, b"s3cret");
        // Authenticator computed independently (Python hashlib).
        let auth = hex("b1bf6a56cd916416075f2e96dcaee063");
        let mut want = vec![4, 7, 0, 51];
        want.extend_from_slice(&auth);
        want.extend_from_slice(&[40, 6, 0, 0, 0, 3, 1, 20]);
        want.extend_from_slice(b"mediaproxy@default");
        want.extend_from_slice(&[44, 5]);
        want.extend_from_slice(b"abc");
        assert_eq!(req.bytes, want);
        assert_eq!(req.authenticator.to_vec(), auth);
        assert_eq!(req.id, 7);
    }

    #[test]
    fn responses_are_checked() {
        let req = encode_request(7, &[Attribute::text(ACCT_SESSION_ID, "abc")], b"s3cret");
        let mut req_known = req.clone();
        req_known.authenticator.copy_from_slice(&hex("b1bf6a56cd916416075f2e96dcaee063"));
        let mut good = vec![5, 7, 0, 20];
        good.extend_from_slice(&hex("e02be2b9b935b60ac00fe82f265e2417"));
        assert_eq!(check_response(&good, &req_known, b"s3cret"), Ok(()));
        assert_eq!(encode_response(&req_known, &[], b"s3cret"), good);
        assert_eq!(check_response(&good, &req_known, b"other"), Err(ResponseError::Authenticator));
        let mut other_id = good.clone();
        other_id[1] = 8;
        assert_eq!(
            check_response(&other_id, &req_known, b"s3cret"),
            Err(ResponseError::Identifier { got: 8, want: 7 })
        );
        let mut other_code = good.clone();
        other_code[0] = 2;
        assert_eq!(check_response(&other_code, &req_known, b"s3cret"), Err(ResponseError::Code(2)));
        assert!(matches!(check_response(&good[..10], &req_known, b"s3cret"), Err(ResponseError::Malformed(_))));
        let mut long_len = good.clone();
        long_len[3] = 40;
        assert!(matches!(check_response(&long_len, &req_known, b"s3cret"), Err(ResponseError::Malformed(_))));
        // With attributes, and trailing padding past the length field ignored.
        let resp = encode_response(&req, &[Attribute::text(USER_NAME, "x")], b"s3cret");
        let mut padded = resp.clone();
        padded.extend_from_slice(&[0; 5]);
        assert_eq!(check_response(&padded, &req, b"s3cret"), Ok(()));
    }

    #[test]
    fn long_values_are_cut_without_panicking() {
        let a = Attribute::text(USER_NAME, &"x".repeat(1000));
        assert_eq!(a.value.len(), MAX_VALUE);
        // A multi-byte character across the limit: cut before it.
        let s = format!("{}é", "x".repeat(252));
        assert_eq!(Attribute::text(USER_NAME, &s).value.len(), 252);
        let huge = vec![Attribute { typ: 1, value: vec![b'y'; 600] }; 40];
        let req = encode_request(1, &huge, b"k");
        assert!(req.bytes.len() <= MAX_PACKET);
        assert_eq!(req.bytes[21] as usize, 2 + MAX_VALUE);
    }

    fn stream(media: &str, codec: &str, status: StreamStatus, caller: u64, callee: u64) -> StreamStats {
        StreamStats {
            media_type: media.into(),
            status,
            timeout_wait: 0,
            caller_codec: codec.into(),
            callee_codec: codec.into(),
            start_time: Some(0),
            end_time: Some(10),
            post_dial_delay: Some(2.7),
            caller_bytes: caller,
            callee_bytes: callee,
            caller_packets: 0,
            callee_packets: 0,
            caller_local: "192.0.2.10:40000".into(),
            callee_local: "192.0.2.10:40002".into(),
            caller_remote: "198.51.100.1:5004".into(),
            callee_remote: "198.51.100.2:5004".into(),
        }
    }

    fn find(attrs: &[Attribute], typ: u8) -> Option<&[u8]> {
        attrs.iter().find(|a| a.typ == typ).map(|a| a.value.as_slice())
    }

    #[test]
    fn session_attributes_follow_mediaproxy() {
        let mut s = crate::tests::stats("call-1");
        s.caller_ua = "A".repeat(200);
        s.callee_ua = "B".repeat(200);
        s.streams = vec![
            stream("audio", "PCMU", StreamStatus::Closed, 1000, 2000),
            stream("video", "H264", StreamStatus::Closed, 5, 6),
            stream("audio", "PCMA", StreamStatus::NoTrafficTimeout, 6_000_000_000, 1),
        ];
        let sip = SipAttributes::default();
        let a = session_attributes(&s, &sip);
        assert_eq!(find(&a, ACCT_STATUS_TYPE), Some(&[0, 0, 0, 3][..]));
        assert_eq!(find(&a, USER_NAME), Some(&b"mediaproxy@default"[..]));
        // A username the proxy gave replaces it, as in MediaProxy.
        let named = SessionStats { username: Some("alice".into()), ..s.clone() };
        assert_eq!(find(&session_attributes(&named, &sip), USER_NAME), Some(&b"alice"[..]));
        assert_eq!(find(&a, ACCT_SESSION_ID), Some(&b"call-1"[..]));
        assert_eq!(find(&a, ACCT_SESSION_TIME), Some(&5u32.to_be_bytes()[..]));
        let input = 6_000_001_005u64;
        assert_eq!(find(&a, ACCT_INPUT_OCTETS), Some(&(input as u32).to_be_bytes()[..]));
        assert_eq!(find(&a, ACCT_INPUT_GIGAWORDS), Some(&1u32.to_be_bytes()[..]));
        assert_eq!(find(&a, ACCT_OUTPUT_OCTETS), Some(&2007u32.to_be_bytes()[..]));
        assert_eq!(find(&a, ACCT_OUTPUT_GIGAWORDS), None);
        assert_eq!(find(&a, 105), Some(&b"f"[..]));
        assert_eq!(find(&a, 104), Some(&b"t"[..]));
        let ua = find(&a, 224).unwrap();
        assert_eq!(ua.len(), MAX_VALUE);
        assert!(ua.starts_with(&[b'A'; 200]) && ua[200] == b'+');
        assert_eq!(find(&a, NAS_IP_ADDRESS), Some(&[192, 0, 2, 10][..]));
        assert_eq!(find(&a, 225), Some(&b"audio, video"[..]));
        assert_eq!(find(&a, 226), Some(&b"PCMU, H264, PCMA"[..]));
        assert_eq!(find(&a, 227), Some(&b"timeout"[..]));
        assert_eq!(find(&a, ACCT_DELAY_TIME), Some(&2u32.to_be_bytes()[..]));
    }

    #[test]
    fn a_session_without_streams_still_encodes() {
        let mut s = crate::tests::stats("call-2");
        s.to_tag = None;
        let a = session_attributes(&s, &SipAttributes::default());
        assert_eq!(find(&a, 104), None, "empty strings are left out");
        assert_eq!(find(&a, 227), None, "Media-Info \"\": left out");
        assert_eq!(find(&a, 225), None);
        assert_eq!(find(&a, NAS_IP_ADDRESS), Some(&[203, 0, 113, 1][..]), "relay_ip when there is no stream");
        assert_eq!(find(&a, ACCT_DELAY_TIME), None);
        s.relay_ip = Some("2001:db8::1".into());
        let a = session_attributes(&s, &SipAttributes::default());
        assert_eq!(find(&a, NAS_IPV6_ADDRESS).map(|v| v.len()), Some(16));
        s.relay_ip = None;
        let a = session_attributes(&s, &SipAttributes::default());
        assert_eq!(find(&a, NAS_IP_ADDRESS), None);
        encode_request(0, &a, b"k");
    }
}
