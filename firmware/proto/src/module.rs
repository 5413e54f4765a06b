//! The proxy module's protocol (`update` / `remove` requests and their
//! one-line replies). The relay link carries the same requests, so the
//! dispatcher forwards them with the same codec.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use crate::headers::Headers;
use crate::media::MediaItem;
use crate::{ParseError, CRLF};

/// Limits applied while parsing a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most `media` items in one request.
    pub max_media: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_media: 16 }
    }
}

/// `type:` — which SIP message carried the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartyType {
    /// A request (INVITE, re-INVITE, UPDATE, ACK with SDP).
    Request,
    /// A reply (183, 200).
    Reply,
}

impl PartyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PartyType::Request => "request",
            PartyType::Reply => "reply",
        }
    }
}

/// `cseq: 1 INVITE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CSeq {
    pub number: u32,
    pub method: String,
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number, self.method)
    }
}

impl CSeq {
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        let method = parts.next().unwrap_or("").to_string();
        if parts.next().is_some() {
            return None;
        }
        Some(CSeq { number, method })
    }
}

/// `signaling_ip:` — the source of the SIP message, and with `src_dst` also
/// where it goes (`198.51.100.7_203.0.113.9`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalingIp {
    pub src: IpAddr,
    pub dst: Option<IpAddr>,
}

/// The `signaling_ip` header in its JSON form, which a proxy script can set
/// through the module's `signaling_ip_avp`:
/// `{"signaling_ip": "198.51.100.7", "destination_ip": "203.0.113.9",
/// "username": "alice"}`, every key optional (MediaProxy's relay reads it
/// so). An address that does not parse counts as absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignalingJson {
    pub signaling_ip: Option<SignalingIp>,
    pub username: Option<String>,
}

impl SignalingJson {
    /// `None` when `v` is not a JSON object.
    pub fn parse(v: &str) -> Option<Self> {
        let serde_json::Value::Object(map) = serde_json::from_str::<serde_json::Value>(v).ok()? else {
            return None;
        };
        let text = |key: &str| map.get(key).and_then(serde_json::Value::as_str);
        let ip = |key: &str| text(key).and_then(|t| t.parse::<IpAddr>().ok());
        let signaling_ip = ip("signaling_ip").map(|src| SignalingIp { src, dst: ip("destination_ip") });
        Some(SignalingJson { signaling_ip, username: text("username").map(str::to_string) })
    }
}

impl SignalingIp {
    pub fn parse(v: &str) -> Option<Self> {
        match v.split_once('_') {
            Some((s, d)) => Some(SignalingIp { src: s.parse().ok()?, dst: Some(d.parse().ok()?) }),
            None => Some(SignalingIp { src: v.parse().ok()?, dst: None }),
        }
    }
}

impl fmt::Display for SignalingIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst {
            Some(d) => write!(f, "{}_{}", self.src, d),
            None => write!(f, "{}", self.src),
        }
    }
}

/// An `update` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub party: PartyType,
    /// Dialog id from the dialog module; `None` when sent empty.
    pub dialog_id: Option<String>,
    pub call_id: String,
    pub cseq: CSeq,
    pub from_uri: String,
    pub to_uri: String,
    pub from_tag: String,
    /// `None` when sent empty (initial INVITE).
    pub to_tag: Option<String>,
    pub user_agent: String,
    pub signaling_ip: Option<SignalingIp>,
    /// The user the proxy named in a JSON `signaling_ip` header (reported
    /// as the session's `username`).
    pub username: Option<String>,
    /// Preferred relay from `media_relay_avp`.
    pub media_relay: Option<String>,
    /// One item per `m=` line; empty when the message has no SDP.
    pub media: Vec<MediaItem>,
}

fn opt(h: &Headers, name: &str) -> Option<String> {
    h.non_empty(name).map(str::to_string)
}

impl UpdateRequest {
    pub fn from_headers(h: &Headers, limits: &Limits) -> Result<Self, ParseError> {
        let party = match h.require("type")? {
            "request" => PartyType::Request,
            "reply" => PartyType::Reply,
            other => return Err(ParseError::InvalidValue { header: "type", value: other.to_string() }),
        };
        let call_id = h.require("call_id")?;
        if call_id.is_empty() {
            return Err(ParseError::InvalidValue { header: "call_id", value: String::new() });
        }
        let cseq = h.require("cseq")?;
        let cseq =
            CSeq::parse(cseq).ok_or_else(|| ParseError::InvalidValue { header: "cseq", value: cseq.to_string() })?;
        let (signaling_ip, username) = match h.non_empty("signaling_ip") {
            None => (None, None),
            Some(v) if v.starts_with('{') => {
                let json = SignalingJson::parse(v)
                    .ok_or_else(|| ParseError::InvalidValue { header: "signaling_ip", value: v.to_string() })?;
                (json.signaling_ip, json.username)
            }
            Some(v) => (
                Some(
                    SignalingIp::parse(v)
                        .ok_or_else(|| ParseError::InvalidValue { header: "signaling_ip", value: v.to_string() })?,
                ),
                None,
            ),
        };
        let media = match h.get("media") {
            None => Vec::new(),
            Some(v) => MediaItem::parse_list(v, limits.max_media)?,
        };
        Ok(UpdateRequest {
            party,
            dialog_id: opt(h, "dialog_id"),
            call_id: call_id.to_string(),
            cseq,
            from_uri: h.require("from_uri")?.to_string(),
            to_uri: h.require("to_uri")?.to_string(),
            from_tag: h.require("from_tag")?.to_string(),
            to_tag: opt(h, "to_tag"),
            user_agent: h.get("user_agent").unwrap_or("").to_string(),
            signaling_ip,
            username,
            media_relay: opt(h, "media_relay"),
            media,
        })
    }

    /// The header block in the order SPEC.md gives.
    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        h.push("type", self.party.as_str());
        h.push("dialog_id", self.dialog_id.as_deref().unwrap_or(""));
        h.push("call_id", &self.call_id);
        h.push("cseq", &self.cseq.to_string());
        h.push("from_uri", &self.from_uri);
        h.push("to_uri", &self.to_uri);
        h.push("from_tag", &self.from_tag);
        h.push("to_tag", self.to_tag.as_deref().unwrap_or(""));
        h.push("user_agent", &self.user_agent);
        match (&self.signaling_ip, &self.username) {
            (ip, Some(user)) => {
                let mut json = serde_json::Map::new();
                if let Some(ip) = ip {
                    json.insert("signaling_ip".into(), ip.src.to_string().into());
                    if let Some(dst) = ip.dst {
                        json.insert("destination_ip".into(), dst.to_string().into());
                    }
                }
                json.insert("username".into(), user.clone().into());
                h.push("signaling_ip", &serde_json::Value::Object(json).to_string());
            }
            (Some(ip), None) => h.push("signaling_ip", &ip.to_string()),
            (None, None) => {}
        }
        if let Some(r) = &self.media_relay {
            h.push("media_relay", r);
        }
        if !self.media.is_empty() {
            h.push("media", &MediaItem::encode_list(&self.media));
        }
        h
    }
}

/// A `remove` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveRequest {
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
}

impl RemoveRequest {
    pub fn from_headers(h: &Headers) -> Result<Self, ParseError> {
        let call_id = h.require("call_id")?;
        if call_id.is_empty() {
            return Err(ParseError::InvalidValue { header: "call_id", value: String::new() });
        }
        Ok(RemoveRequest {
            call_id: call_id.to_string(),
            from_tag: h.require("from_tag")?.to_string(),
            to_tag: opt(h, "to_tag"),
        })
    }

    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        h.push("call_id", &self.call_id);
        h.push("from_tag", &self.from_tag);
        h.push("to_tag", self.to_tag.as_deref().unwrap_or(""));
        h
    }
}

/// A request from the proxy module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRequest {
    Update(UpdateRequest),
    Remove(RemoveRequest),
}

impl ModuleRequest {
    pub fn name(&self) -> &'static str {
        match self {
            ModuleRequest::Update(_) => "update",
            ModuleRequest::Remove(_) => "remove",
        }
    }

    pub fn call_id(&self) -> &str {
        match self {
            ModuleRequest::Update(u) => &u.call_id,
            ModuleRequest::Remove(r) => &r.call_id,
        }
    }

    /// Parses a frame (command line and header lines, without the empty
    /// line) as the module sends it.
    pub fn parse<S: AsRef<str>>(frame: &[S], limits: &Limits) -> Result<Self, ParseError> {
        let (command, rest) = frame.split_first().ok_or_else(|| ParseError::UnknownCommand(String::new()))?;
        Self::from_parts(command.as_ref().trim(), &Headers::parse(rest)?, limits)
    }

    pub(crate) fn from_parts(command: &str, h: &Headers, limits: &Limits) -> Result<Self, ParseError> {
        match command {
            "update" => Ok(ModuleRequest::Update(UpdateRequest::from_headers(h, limits)?)),
            "remove" => Ok(ModuleRequest::Remove(RemoveRequest::from_headers(h)?)),
            other => Err(ParseError::UnknownCommand(other.to_string())),
        }
    }

    pub fn headers(&self) -> Headers {
        match self {
            ModuleRequest::Update(u) => u.to_headers(),
            ModuleRequest::Remove(r) => r.to_headers(),
        }
    }

    /// The request as the module writes it.
    pub fn encode(&self) -> String {
        let mut out = String::from(self.name());
        out.push_str(CRLF);
        self.headers().write_to(&mut out);
        out.push_str(CRLF);
        out
    }
}

/// A module request together with the header lines it came in: the
/// dispatcher decides on the parsed request and forwards the lines to the
/// relay as the module wrote them (MediaProxy's dispatcher does the same),
/// so a relay of either kind reads exactly what the module sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFrame {
    pub request: ModuleRequest,
    /// The header lines in arrival order, minus those with an empty value
    /// (`to_tag: `): MediaProxy's dispatcher drops those, and its relay
    /// would take an empty `to_tag` for the callee's tag.
    pub lines: Vec<String>,
}

impl ModuleFrame {
    /// Parses a frame (command line and header lines, without the empty
    /// line) and keeps its header lines.
    pub fn parse(frame: Vec<String>, limits: &Limits) -> Result<Self, ParseError> {
        let request = ModuleRequest::parse(&frame, limits)?;
        let lines = frame.into_iter().skip(1).filter(|l| !empty_value(l)).collect();
        Ok(ModuleFrame { request, lines })
    }

    /// A frame for a request built in code (the lines its encoding gives).
    pub fn from_request(request: ModuleRequest) -> Self {
        let lines = request.headers().iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| format!("{n}: {v}")).collect();
        ModuleFrame { request, lines }
    }
}

/// `name: ` or `name:` with nothing after the separator.
fn empty_value(line: &str) -> bool {
    line.split_once(':').is_some_and(|(_, v)| v.trim_start_matches(' ').is_empty())
}

/// The relay's address and one port per media item (0: not relayed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPorts {
    pub ip: IpAddr,
    pub ports: Vec<u16>,
}

impl fmt::Display for RelayPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip)?;
        for p in &self.ports {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

impl RelayPorts {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::InvalidValue { header: "reply", value: s.to_string() };
        let mut parts = s.split_whitespace();
        let ip = parts.next().and_then(|i| i.parse().ok()).ok_or_else(bad)?;
        let ports = parts.map(|p| p.parse::<u16>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
        Ok(RelayPorts { ip, ports })
    }
}

/// The answer to an update without media for a call the relay does not
/// have: what MediaProxy's relay writes (Python's `None`).
pub const NO_MEDIA: &str = "None";

/// The one-line reply to the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleReply {
    Ports(RelayPorts),
    /// `None`: MediaProxy's answer to an update that carries no media for a
    /// call the relay does not have (a reply without SDP); the module only
    /// reads answers to messages with SDP.
    NoMedia,
    Removed,
    Error,
}

impl ModuleReply {
    /// The reply line with its `\r\n`, to be written in one go.
    pub fn encode(&self) -> String {
        let mut s = match self {
            ModuleReply::Ports(p) => p.to_string(),
            ModuleReply::NoMedia => NO_MEDIA.to_string(),
            ModuleReply::Removed => "removed".to_string(),
            ModuleReply::Error => "error".to_string(),
        };
        s.push_str(CRLF);
        s
    }

    pub fn parse(line: &str) -> Result<Self, ParseError> {
        match line.trim_end() {
            "removed" => Ok(ModuleReply::Removed),
            "error" => Ok(ModuleReply::Error),
            NO_MEDIA => Ok(ModuleReply::NoMedia),
            other => RelayPorts::parse(other).map(ModuleReply::Ports),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Direction, MediaType};
    use alloc::vec;

    const SPEC_UPDATE: &str = "update\r\ntype: request\r\ndialog_id: 3456:91827\r\ncall_id: abc@host\r\ncseq: 1 INVITE\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: ft1\r\nto_tag: \r\nuser_agent: SIPp\r\nsignaling_ip: 198.51.100.7_203.0.113.9\r\nmedia_relay: 203.0.113.5\r\nmedia: audio:192.168.1.10:4000:sendrecv:ice=no,video:192.168.1.10:4002:sendrecv:ice=yes\r\n\r\n";

    fn frame(s: &str) -> Vec<String> {
        let mut d = crate::FrameDecoder::new(4096, 64);
        d.push(s.as_bytes());
        d.next_frame().unwrap().unwrap()
    }

    #[test]
    fn spec_update_parses_and_round_trips() {
        let req = ModuleRequest::parse(&frame(SPEC_UPDATE), &Limits::default()).unwrap();
        let ModuleRequest::Update(u) = &req else { panic!("not an update") };
        assert_eq!(u.party, PartyType::Request);
        assert_eq!(u.dialog_id.as_deref(), Some("3456:91827"));
        assert_eq!(u.cseq, CSeq { number: 1, method: "INVITE".into() });
        assert_eq!(u.to_tag, None);
        assert_eq!(
            u.signaling_ip,
            Some(SignalingIp { src: "198.51.100.7".parse().unwrap(), dst: Some("203.0.113.9".parse().unwrap()) })
        );
        assert_eq!(u.media_relay.as_deref(), Some("203.0.113.5"));
        assert_eq!(u.media[1].media_type, MediaType::Video);
        assert_eq!(u.media[0].direction, Direction::SendRecv);
        assert_eq!(req.encode(), SPEC_UPDATE);
    }

    #[test]
    fn spec_remove_and_replies() {
        let req = ModuleRequest::parse(
            &frame("remove\r\ncall_id: abc\r\nfrom_tag: f\r\nto_tag: t\r\n\r\n"),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            req,
            ModuleRequest::Remove(RemoveRequest {
                call_id: "abc".into(),
                from_tag: "f".into(),
                to_tag: Some("t".into())
            })
        );
        let r = ModuleReply::parse("203.0.113.5 40000 40002").unwrap();
        assert_eq!(r.encode(), "203.0.113.5 40000 40002\r\n");
        assert_eq!(ModuleReply::parse("error").unwrap(), ModuleReply::Error);
        assert_eq!(ModuleReply::Removed.encode(), "removed\r\n");
        assert!(ModuleReply::parse("203.0.113.5 x").is_err());
    }

    #[test]
    fn frame_keeps_the_module_lines() {
        // The OpenSIPS/Kamailio module sends the CSeq number alone and every
        // header, empty or not.
        let text = "update\r\ntype: request\r\ndialog_id: \r\ncall_id: c1\r\ncseq: 1\r\nfrom_uri: sip:a@x\r\nto_uri: sip:b@x\r\nfrom_tag: f\r\nto_tag: \r\nuser_agent: UA  two spaces\r\nsignaling_ip: 192.0.2.7\r\nmedia_relay: \r\nmedia: audio:192.0.2.7:4000:sendrecv:ice=no\r\n\r\n";
        let f = ModuleFrame::parse(frame(text), &Limits::default()).unwrap();
        assert_eq!(
            f.lines,
            vec![
                "type: request",
                "call_id: c1",
                "cseq: 1",
                "from_uri: sip:a@x",
                "to_uri: sip:b@x",
                "from_tag: f",
                "user_agent: UA  two spaces",
                "signaling_ip: 192.0.2.7",
                "media: audio:192.0.2.7:4000:sendrecv:ice=no",
            ]
        );
        let ModuleRequest::Update(u) = &f.request else { panic!("not an update") };
        assert_eq!((u.cseq.number, u.to_tag.as_deref()), (1, None));
        // Re-encoding would have changed it.
        assert!(f.request.encode().contains("cseq: 1 \r\n"));
        let built = ModuleFrame::from_request(f.request.clone());
        assert!(built.lines.iter().all(|l| !l.ends_with(": ")), "{:?}", built.lines);
    }

    #[test]
    fn signaling_ip_as_json() {
        let mut lines = frame(SPEC_UPDATE);
        lines[10] =
            r#"signaling_ip: {"signaling_ip": "198.51.100.7", "destination_ip": "203.0.113.9", "username": "alice"}"#
                .into();
        let ModuleRequest::Update(u) = ModuleRequest::parse(&lines, &Limits::default()).unwrap() else { panic!() };
        assert_eq!(
            u.signaling_ip,
            Some(SignalingIp { src: "198.51.100.7".parse().unwrap(), dst: Some("203.0.113.9".parse().unwrap()) })
        );
        assert_eq!(u.username.as_deref(), Some("alice"));
        let again = UpdateRequest::from_headers(&u.to_headers(), &Limits::default()).unwrap();
        assert_eq!(again, u);
        // Every key is optional; an address that does not parse is absent.
        lines[10] = r#"signaling_ip: {"username": "bob", "signaling_ip": "not an ip"}"#.into();
        let ModuleRequest::Update(u) = ModuleRequest::parse(&lines, &Limits::default()).unwrap() else { panic!() };
        assert_eq!((u.signaling_ip, u.username.as_deref()), (None, Some("bob")));
        lines[10] = "signaling_ip: {}".into();
        assert!(ModuleRequest::parse(&lines, &Limits::default()).is_ok());
        lines[10] = "signaling_ip: {broken".into();
        assert!(matches!(
            ModuleRequest::parse(&lines, &Limits::default()),
            Err(ParseError::InvalidValue { header: "signaling_ip", .. })
        ));
    }

    #[test]
    fn no_media_reply() {
        assert_eq!(ModuleReply::parse("None").unwrap(), ModuleReply::NoMedia);
        assert_eq!(ModuleReply::NoMedia.encode(), "None\r\n");
    }

    #[test]
    fn missing_and_bad_headers() {
        let l = Limits::default();
        assert_eq!(ModuleRequest::parse(&["remove", "from_tag: x"], &l), Err(ParseError::MissingHeader("call_id")));
        assert!(matches!(ModuleRequest::parse(&["frobnicate"], &l), Err(ParseError::UnknownCommand(_))));
        let mut lines = frame(SPEC_UPDATE);
        lines[1] = "type: sideways".into();
        assert!(matches!(ModuleRequest::parse(&lines, &l), Err(ParseError::InvalidValue { header: "type", .. })));
        let mut lines = frame(SPEC_UPDATE);
        lines[4] = "cseq: one INVITE".into();
        assert!(matches!(ModuleRequest::parse(&lines, &l), Err(ParseError::InvalidValue { header: "cseq", .. })));
        let empty: Vec<String> = vec![];
        assert!(ModuleRequest::parse(&empty, &l).is_err());
    }
}
