//! The relay link: commands from the dispatcher (`<command> <seq>`, headers,
//! empty line), one-line replies from the relay (`<seq> <payload>`), and the
//! unsolicited `ping` / `pong` / `expired <json>` lines.

use alloc::format;
use alloc::string::{String, ToString};

use crate::headers::{FrameAssembler, Headers, LineDecoder};
use crate::module::{Limits, ModuleFrame, ModuleRequest, RelayPorts, RemoveRequest, UpdateRequest, NO_MEDIA};
use crate::stats::SessionStats;
use crate::{ParseError, CRLF};

/// A command the dispatcher sends to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    Update(UpdateRequest),
    Remove(RemoveRequest),
    /// A module request forwarded with the module's own header lines (what
    /// the dispatcher sends); the relay reads it back as `Update`/`Remove`.
    Module(ModuleFrame),
    Summary,
    Sessions,
}

impl LinkRequest {
    pub fn name(&self) -> &'static str {
        match self {
            LinkRequest::Update(_) => "update",
            LinkRequest::Remove(_) => "remove",
            LinkRequest::Module(f) => f.request.name(),
            LinkRequest::Summary => "summary",
            LinkRequest::Sessions => "sessions",
        }
    }
}

impl From<ModuleRequest> for LinkRequest {
    fn from(r: ModuleRequest) -> Self {
        match r {
            ModuleRequest::Update(u) => LinkRequest::Update(u),
            ModuleRequest::Remove(r) => LinkRequest::Remove(r),
        }
    }
}

/// A numbered command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCommand {
    pub seq: u64,
    pub request: LinkRequest,
}

/// A command frame that could not be parsed; `seq` is known when the first
/// line was readable, so the relay can still answer `<seq> error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub seq: Option<u64>,
    pub error: ParseError,
}

impl LinkCommand {
    /// The command as written on the link, empty line included.
    pub fn encode(&self) -> String {
        let mut out = format!("{} {}{CRLF}", self.request.name(), self.seq);
        let headers = match &self.request {
            LinkRequest::Update(u) => u.to_headers(),
            LinkRequest::Remove(r) => r.to_headers(),
            LinkRequest::Module(frame) => {
                for line in &frame.lines {
                    out.push_str(line);
                    out.push_str(CRLF);
                }
                Headers::new()
            }
            LinkRequest::Summary | LinkRequest::Sessions => Headers::new(),
        };
        headers.write_to(&mut out);
        out.push_str(CRLF);
        out
    }

    /// Parses a frame (without its empty line).
    pub fn parse<S: AsRef<str>>(frame: &[S], limits: &Limits) -> Result<Self, CommandError> {
        let Some((first, rest)) = frame.split_first() else {
            return Err(CommandError { seq: None, error: ParseError::InvalidFraming(String::new()) });
        };
        let first = first.as_ref();
        let mut parts = first.split_whitespace();
        let (Some(command), Some(seq), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CommandError { seq: None, error: ParseError::InvalidFraming(first.to_string()) });
        };
        let seq: u64 = seq
            .parse()
            .map_err(|_| CommandError { seq: None, error: ParseError::InvalidFraming(first.to_string()) })?;
        let fail = |error| CommandError { seq: Some(seq), error };
        let headers = Headers::parse(rest).map_err(fail)?;
        let request = match command {
            "summary" => LinkRequest::Summary,
            "sessions" => LinkRequest::Sessions,
            other => ModuleRequest::from_parts(other, &headers, limits).map_err(fail)?.into(),
        };
        Ok(LinkCommand { seq, request })
    }
}

/// What the relay reads from its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayInbound {
    Command(LinkCommand),
    Invalid(CommandError),
    Pong,
}

/// Relay-side decoder: frames of commands, and `pong` lines between frames.
#[derive(Debug)]
pub struct RelayDecoder {
    lines: LineDecoder,
    frames: FrameAssembler,
    limits: Limits,
}

impl RelayDecoder {
    pub fn new(max_line: usize, max_lines: usize, limits: Limits) -> Self {
        RelayDecoder { lines: LineDecoder::new(max_line), frames: FrameAssembler::new(max_lines), limits }
    }

    /// Bounds a whole command (its lines together) to `max_frame` bytes.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.frames = self.frames.with_max_bytes(max_frame);
        self
    }

    pub fn push(&mut self, data: &[u8]) {
        self.lines.push(data);
    }

    pub fn next_inbound(&mut self) -> Option<RelayInbound> {
        while let Some(line) = self.lines.next_line() {
            if !self.frames.in_frame() && matches!(&line, Ok(l) if l == "pong") {
                return Some(RelayInbound::Pong);
            }
            match self.frames.feed(line) {
                None => {}
                Some(Ok(frame)) => {
                    return Some(match LinkCommand::parse(&frame, &self.limits) {
                        Ok(c) => RelayInbound::Command(c),
                        Err(e) => RelayInbound::Invalid(e),
                    })
                }
                Some(Err(error)) => return Some(RelayInbound::Invalid(CommandError { seq: None, error })),
            }
        }
        None
    }
}

/// A line the relay sends to the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayLine {
    /// `<seq> <payload>`: the answer to command `seq`.
    Reply {
        seq: u64,
        payload: String,
    },
    Ping,
    /// `expired <json>`: every stream of a session timed out.
    Expired(SessionStats),
}

impl RelayLine {
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if line == "ping" {
            return Ok(RelayLine::Ping);
        }
        if let Some(json) = line.strip_prefix("expired ") {
            return SessionStats::from_json(json).map(RelayLine::Expired);
        }
        let (seq, payload) = line.split_once(' ').unwrap_or((line, ""));
        let seq = seq.parse().map_err(|_| ParseError::InvalidFraming(line.to_string()))?;
        Ok(RelayLine::Reply { seq, payload: payload.to_string() })
    }

    pub fn encode(&self) -> String {
        match self {
            RelayLine::Reply { seq, payload } => format!("{seq} {payload}{CRLF}"),
            RelayLine::Ping => format!("ping{CRLF}"),
            RelayLine::Expired(stats) => format!("expired {}{CRLF}", stats.to_json()),
        }
    }
}

/// The dispatcher's answer to `ping`.
pub const PONG_LINE: &str = "pong\r\n";

/// A relay's answer to `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateReply {
    Ports(RelayPorts),
    Error,
    /// The relay is shutting down and the call is new to it.
    Halting,
    /// `None`: no media and no such call (see [`ModuleReply::NoMedia`](crate::ModuleReply)).
    NoMedia,
}

impl UpdateReply {
    pub fn parse(payload: &str) -> Result<Self, ParseError> {
        match payload.trim() {
            "error" => Ok(UpdateReply::Error),
            "halting" => Ok(UpdateReply::Halting),
            NO_MEDIA => Ok(UpdateReply::NoMedia),
            other => RelayPorts::parse(other).map(UpdateReply::Ports),
        }
    }

    pub fn payload(&self) -> String {
        match self {
            UpdateReply::Ports(p) => p.to_string(),
            UpdateReply::Error => "error".to_string(),
            UpdateReply::Halting => "halting".to_string(),
            UpdateReply::NoMedia => NO_MEDIA.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{CSeq, PartyType};
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    fn update() -> UpdateRequest {
        UpdateRequest {
            party: PartyType::Reply,
            dialog_id: None,
            call_id: "c1".into(),
            cseq: CSeq { number: 2, method: "INVITE".into() },
            from_uri: "sip:a@x".into(),
            to_uri: "sip:b@x".into(),
            from_tag: "f".into(),
            to_tag: Some("t".into()),
            user_agent: "UA 1.0".into(),
            signaling_ip: None,
            username: None,
            media_relay: None,
            media: crate::MediaItem::parse_list("audio:10.0.0.1:4000:sendrecv:ice=no", 4).unwrap(),
        }
    }

    #[test]
    fn commands_round_trip_through_relay_decoder() {
        let cmds = vec![
            LinkCommand { seq: 0, request: LinkRequest::Sessions },
            LinkCommand { seq: 1, request: LinkRequest::Update(update()) },
            LinkCommand {
                seq: 2,
                request: LinkRequest::Remove(RemoveRequest {
                    call_id: "c1".into(),
                    from_tag: "f".into(),
                    to_tag: None,
                }),
            },
            LinkCommand { seq: 3, request: LinkRequest::Summary },
        ];
        let mut d = RelayDecoder::new(4096, 64, Limits::default());
        for c in &cmds {
            d.push(c.encode().as_bytes());
            d.push(PONG_LINE.as_bytes());
        }
        let mut got = Vec::new();
        while let Some(x) = d.next_inbound() {
            got.push(x);
        }
        let mut expected = Vec::new();
        for c in cmds {
            expected.push(RelayInbound::Command(c));
            expected.push(RelayInbound::Pong);
        }
        assert_eq!(got, expected);
        assert_eq!(LinkCommand { seq: 7, request: LinkRequest::Summary }.encode(), "summary 7\r\n\r\n");
    }

    #[test]
    fn forwarded_module_lines_are_written_as_received() {
        let lines: Vec<String> =
            ["remove", "call_id: c1", "from_tag:  f", "to_tag: "].iter().map(|l| l.to_string()).collect();
        let frame = ModuleFrame::parse(lines, &Limits::default()).unwrap();
        let cmd = LinkCommand { seq: 9, request: LinkRequest::Module(frame) };
        assert_eq!(cmd.encode(), "remove 9\r\ncall_id: c1\r\nfrom_tag:  f\r\n\r\n");
        let mut d = RelayDecoder::new(4096, 64, Limits::default());
        d.push(cmd.encode().as_bytes());
        let Some(RelayInbound::Command(LinkCommand { seq: 9, request: LinkRequest::Remove(r) })) = d.next_inbound()
        else {
            panic!("not read back as a remove")
        };
        assert_eq!((r.call_id.as_str(), r.from_tag.as_str(), r.to_tag), ("c1", "f", None));
        assert_eq!(UpdateReply::parse("None").unwrap(), UpdateReply::NoMedia);
        assert_eq!(UpdateReply::NoMedia.payload(), "None");
    }

    #[test]
    fn bad_commands_keep_their_seq() {
        let mut d = RelayDecoder::new(4096, 64, Limits::default());
        d.push(b"frobnicate 4\r\n\r\nupdate 5\r\ncall_id: x\r\n\r\nnoseq\r\n\r\n");
        assert!(matches!(d.next_inbound(), Some(RelayInbound::Invalid(CommandError { seq: Some(4), .. }))));
        assert!(matches!(
            d.next_inbound(),
            Some(RelayInbound::Invalid(CommandError { seq: Some(5), error: ParseError::MissingHeader("type") }))
        ));
        assert!(matches!(d.next_inbound(), Some(RelayInbound::Invalid(CommandError { seq: None, .. }))));
        assert_eq!(d.next_inbound(), None);
    }

    #[test]
    fn relay_lines() {
        assert_eq!(RelayLine::parse("ping").unwrap(), RelayLine::Ping);
        assert_eq!(
            RelayLine::parse("12 203.0.113.5 40000").unwrap(),
            RelayLine::Reply { seq: 12, payload: "203.0.113.5 40000".into() }
        );
        assert_eq!(RelayLine::parse("3 error").unwrap(), RelayLine::Reply { seq: 3, payload: "error".into() });
        assert!(RelayLine::parse("x error").is_err());
        assert!(RelayLine::parse("expired {not json").is_err());
        assert_eq!(UpdateReply::parse("halting").unwrap(), UpdateReply::Halting);
        assert_eq!(
            UpdateReply::parse("203.0.113.5 40000 0").unwrap(),
            UpdateReply::Ports(RelayPorts { ip: "203.0.113.5".parse().unwrap(), ports: vec![40000, 0] })
        );
    }
}
