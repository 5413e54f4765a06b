//! Property tests for the wire codecs: no input makes a decoder panic, a
//! decoder finds its way back to the next frame after garbage, how the bytes
//! are split between reads never changes what comes out, every encoder's
//! output decodes to the value it came from, and an over-long line or frame
//! costs exactly one error and bounded memory.

use std::net::IpAddr;

use proptest::prelude::*;
use proptest::sample::Index;
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::link::{
    CommandError, LinkCommand, LinkRequest, RelayDecoder, RelayInbound, RelayLine, UpdateReply,
};
use relaybox_proto::mgmt::MgmtCommand;
use relaybox_proto::module::{Limits, RelayPorts};
use relaybox_proto::{
    sntp, CSeq, Direction, FrameDecoder, Headers, MediaItem, MediaType, ModuleReply, ModuleRequest, ParseError,
    PartyType, RelayStatus, RemoveRequest, SessionStats, SignalingIp, StreamStats, StreamStatus, Summary,
    UpdateRequest,
};

// ---------------------------------------------------------------------------
// Feeding decoders
// ---------------------------------------------------------------------------

/// How a byte stream is cut into reads: `None` is one byte per read (every
/// `\r` lands apart from its `\n`), otherwise cuts at the given positions.
type Split = Option<Vec<Index>>;

fn split_strategy() -> impl Strategy<Value = Split> {
    prop_oneof![1 => Just(None), 4 => prop::collection::vec(any::<Index>(), 0..24).prop_map(Some)]
}

fn chunks<'a>(data: &'a [u8], split: &Split) -> Vec<&'a [u8]> {
    match split {
        None => data.chunks(1).collect(),
        Some(cuts) => {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            at.dedup();
            at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
        }
    }
}

/// Lines out of a [`LineDecoder`], draining after every read. Also checks
/// the decoder's memory: after a read it holds at most what it held plus
/// the read, and once drained no more than one line's worth.
fn decode_lines(data: &[u8], split: &Split, max_line: usize) -> Vec<Result<String, ParseError>> {
    let mut d = LineDecoder::new(max_line);
    let mut out = Vec::new();
    for chunk in chunks(data, split) {
        let before = d.pending();
        d.push(chunk);
        assert!(d.pending() <= before + chunk.len());
        while let Some(line) = d.next_line() {
            out.push(line);
        }
        // A whole line plus the `\r` that may start its terminator.
        assert!(d.pending() <= max_line + 1, "holding {} bytes with a limit of {max_line}", d.pending());
    }
    out
}

fn decode_frames(
    data: &[u8],
    split: &Split,
    max_line: usize,
    max_lines: usize,
) -> Vec<Result<Vec<String>, ParseError>> {
    let mut d = FrameDecoder::new(max_line, max_lines);
    let mut out = Vec::new();
    for chunk in chunks(data, split) {
        d.push(chunk);
        while let Some(frame) = d.next_frame() {
            out.push(frame);
        }
    }
    out
}

/// The dispatcher's module socket pipeline: frames, then requests.
fn decode_module(
    data: &[u8],
    split: &Split,
    max_line: usize,
    max_lines: usize,
) -> Vec<Result<ModuleRequest, ParseError>> {
    decode_frames(data, split, max_line, max_lines)
        .into_iter()
        .map(|f| f.and_then(|f| ModuleRequest::parse(&f, &Limits::default())))
        .collect()
}

fn decode_relay(data: &[u8], split: &Split, max_line: usize, max_lines: usize) -> Vec<RelayInbound> {
    let mut d = RelayDecoder::new(max_line, max_lines, Limits::default());
    let mut out = Vec::new();
    for chunk in chunks(data, split) {
        d.push(chunk);
        while let Some(x) = d.next_inbound() {
            out.push(x);
        }
    }
    out
}

/// Complete lines of `data` (split at `\n`, one trailing `\r` dropped); a
/// trailing partial line is left out.
fn raw_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    lines.pop();
    lines.into_iter().map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
}

/// What the frame decoder promises for a whole stream: one output per
/// frame (a run of non-empty lines closed by an empty line), good or bad.
/// With `pongs`, a `pong` line outside a frame is one output of its own and
/// starts no frame (the relay decoder).
fn expected_outputs(data: &[u8], pongs: bool) -> usize {
    let mut outputs = 0;
    let mut in_frame = false;
    for line in raw_lines(data) {
        if line.is_empty() {
            outputs += usize::from(in_frame);
            in_frame = false;
        } else if pongs && !in_frame && line == b"pong" {
            outputs += 1;
        } else {
            in_frame = true;
        }
    }
    outputs
}

fn frame_of(encoded: &str) -> Vec<String> {
    let mut d = FrameDecoder::new(1 << 20, 1024);
    d.push(encoded.as_bytes());
    let frame = d.next_frame().expect("a whole frame").expect("a good frame");
    assert!(d.next_frame().is_none(), "one frame only");
    frame
}

/// Equal, except that `post_dial_delay` may differ in its last bits: the
/// crate's serde_json parses floats with best-effort precision, so a float
/// read from arbitrary JSON text can move by an ulp on the next round.
fn stats_close(a: &SessionStats, b: &SessionStats) -> bool {
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        (x, y) => x.is_none() && y.is_none(),
    };
    let same_delays = a.streams.len() == b.streams.len()
        && a.streams.iter().zip(&b.streams).all(|(x, y)| close(x.post_dial_delay, y.post_dial_delay));
    let without_delays = |s: &SessionStats| {
        let mut s = s.clone();
        s.streams.iter_mut().for_each(|st| st.post_dial_delay = None);
        s
    };
    same_delays && without_delays(a) == without_delays(b)
}

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

/// A header value as the module sends it: no line break, no leading space
/// (the parser drops those), anything else including non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[!-~][ -~]{0,24}",
        1 => "[^\\p{C}\\s][^\\p{C}]{0,12}",
    ]
}

fn media_type() -> impl Strategy<Value = MediaType> {
    prop_oneof![
        Just(MediaType::Audio),
        Just(MediaType::Video),
        Just(MediaType::Image),
        Just(MediaType::Text),
        Just(MediaType::Application),
        Just(MediaType::Message),
        "[a-z][a-z0-9.+-]{0,9}".prop_map(|t| MediaType::parse(&t).unwrap()),
    ]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::SendRecv),
        Just(Direction::SendOnly),
        Just(Direction::RecvOnly),
        Just(Direction::Inactive),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
        any::<std::net::Ipv6Addr>().prop_map(IpAddr::V6),
        Just("0.0.0.0".parse().unwrap()),
        Just("::".parse().unwrap()),
        Just("::ffff:192.0.2.1".parse().unwrap()),
    ]
}

fn media_item() -> BoxedStrategy<MediaItem> {
    (media_type(), ip(), prop_oneof![Just(0u16), any::<u16>()], direction(), any::<bool>())
        .prop_map(|(media_type, ip, port, direction, ice)| MediaItem { media_type, ip, port, direction, ice })
        .boxed()
}

fn update_request() -> BoxedStrategy<UpdateRequest> {
    let ids = (
        prop_oneof![Just(PartyType::Request), Just(PartyType::Reply)],
        proptest::option::of("[0-9]{1,6}(:[0-9]{1,6})?"),
        value(),
        (any::<u32>(), "[A-Z]{0,9}").prop_map(|(number, method)| CSeq { number, method }),
    );
    let parties = (value(), value(), value(), proptest::option::of(value()), prop_oneof![Just(String::new()), value()]);
    let routing = (
        proptest::option::of((ip(), proptest::option::of(ip())).prop_map(|(src, dst)| SignalingIp { src, dst })),
        // A username comes in the JSON form of `signaling_ip`.
        proptest::option::of(value()),
        proptest::option::of(value()),
        prop::collection::vec(media_item(), 0..=Limits::default().max_media),
    );
    (ids, parties, routing)
        .prop_map(
            |(
                (party, dialog_id, call_id, cseq),
                (from_uri, to_uri, from_tag, to_tag, user_agent),
                (signaling_ip, username, media_relay, media),
            )| UpdateRequest {
                party,
                dialog_id,
                call_id,
                cseq,
                from_uri,
                to_uri,
                from_tag,
                to_tag,
                user_agent,
                signaling_ip,
                username,
                media_relay,
                media,
            },
        )
        .boxed()
}

fn remove_request() -> BoxedStrategy<RemoveRequest> {
    (value(), prop_oneof![Just(String::new()), value()], proptest::option::of(value()))
        .prop_map(|(call_id, from_tag, to_tag)| RemoveRequest { call_id, from_tag, to_tag })
        .boxed()
}

fn module_request() -> BoxedStrategy<ModuleRequest> {
    prop_oneof![
        3 => update_request().prop_map(ModuleRequest::Update),
        1 => remove_request().prop_map(ModuleRequest::Remove),
    ]
    .boxed()
}

fn link_command() -> BoxedStrategy<LinkCommand> {
    let request = prop_oneof![
        3 => update_request().prop_map(LinkRequest::Update),
        2 => remove_request().prop_map(LinkRequest::Remove),
        1 => Just(LinkRequest::Summary),
        1 => Just(LinkRequest::Sessions),
    ];
    (prop_oneof![0u64..1000, any::<u64>()], request).prop_map(|(seq, request)| LinkCommand { seq, request }).boxed()
}

fn stream_status() -> impl Strategy<Value = StreamStatus> {
    prop_oneof![
        Just(StreamStatus::Active),
        Just(StreamStatus::OnHold),
        Just(StreamStatus::Closed),
        Just(StreamStatus::Rejected),
        Just(StreamStatus::NoTrafficTimeout),
        Just(StreamStatus::ConntrackTimeout),
        Just(StreamStatus::OnHoldTimeout),
        Just(StreamStatus::UnselectedIceCandidate),
    ]
}

/// Any string at all: JSON has to escape it.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[ -~]{0,16}", 1 => any::<String>()]
}

fn stream_stats() -> BoxedStrategy<StreamStats> {
    let a = (
        json_text(),
        stream_status(),
        any::<u64>(),
        json_text(),
        json_text(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        // As the relay computes it: whole milliseconds / 1000.
        proptest::option::of(any::<u32>().prop_map(|ms| f64::from(ms) / 1000.0)),
    );
    let b = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    let c = (json_text(), json_text(), json_text(), json_text());
    (a, b, c)
        .prop_map(
            |(
                (media_type, status, timeout_wait, caller_codec, callee_codec, start_time, end_time, post_dial_delay),
                (caller_bytes, callee_bytes, caller_packets, callee_packets),
                (caller_local, callee_local, caller_remote, callee_remote),
            )| StreamStats {
                media_type,
                status,
                timeout_wait,
                caller_codec,
                callee_codec,
                start_time,
                end_time,
                post_dial_delay,
                caller_bytes,
                callee_bytes,
                caller_packets,
                callee_packets,
                caller_local,
                callee_local,
                caller_remote,
                callee_remote,
            },
        )
        .boxed()
}

fn session_stats() -> BoxedStrategy<SessionStats> {
    let a = (json_text(), json_text(), json_text(), proptest::option::of(json_text()), json_text());
    // Unix times with a fraction (quarter seconds: exact in binary, so the
    // round trip does not depend on the JSON float parser's last bit).
    let start = proptest::option::of((0u64..1 << 34, 0u32..4).prop_map(|(s, q)| s as f64 + f64::from(q) / 4.0));
    let b = (start, any::<u64>(), json_text(), json_text(), proptest::option::of(json_text()));
    let c = (
        proptest::option::of(json_text()),
        proptest::option::of(json_text()),
        (proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>())),
        prop::collection::vec(stream_stats(), 0..4),
    );
    (a, b, c)
        .prop_map(
            |(
                (call_id, from_tag, from_uri, to_tag, to_uri),
                (start_time, duration, caller_ua, callee_ua, username),
                (relay_ip, dialog_id, (timed_out, all_streams_ice), streams),
            )| SessionStats {
                call_id,
                from_tag,
                from_uri,
                to_tag,
                to_uri,
                start_time,
                duration,
                caller_ua,
                callee_ua,
                username,
                relay_ip,
                dialog_id,
                timed_out,
                all_streams_ice,
                streams,
            },
        )
        .boxed()
}

fn summary() -> BoxedStrategy<Summary> {
    (
        (json_text(), json_text(), prop_oneof![Just(RelayStatus::Active), Just(RelayStatus::Halting)]),
        (any::<u64>(), any::<u64>(), prop::collection::btree_map(json_text(), any::<u64>(), 0..4), any::<u64>()),
        (proptest::option::of(json_text()), proptest::option::of(any::<u64>())),
    )
        .prop_map(
            |((ip, version, status), (uptime, session_count, stream_count, bps_relayed), (datapath, bleed_drops))| {
                Summary { ip, version, status, uptime, session_count, stream_count, bps_relayed, datapath, bleed_drops }
            },
        )
        .boxed()
}

fn relay_ports() -> impl Strategy<Value = RelayPorts> {
    (ip(), prop::collection::vec(any::<u16>(), 0..8)).prop_map(|(ip, ports)| RelayPorts { ip, ports })
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

/// Pieces of the module and link protocols, valid and broken, to build
/// streams that reach deep into the parsers rather than failing at the
/// first byte.
fn fragment() -> BoxedStrategy<Vec<u8>> {
    let command = prop_oneof![
        Just("update"),
        Just("remove"),
        Just("summary"),
        Just("sessions"),
        Just("pong"),
        Just("ping"),
        Just("update 7"),
        Just("remove 0"),
        Just("summary 18446744073709551615"),
        Just("sessions 18446744073709551616"),
        Just("update x"),
        Just("frobnicate 3"),
        Just(" update "),
    ]
    .prop_map(|c| format!("{c}\r\n").into_bytes());
    let header_value = prop_oneof![
        Just(String::new()),
        Just("request".to_string()),
        Just("reply".to_string()),
        Just("1 INVITE".to_string()),
        Just("198.51.100.7_203.0.113.9".to_string()),
        Just("2001:db8::1".to_string()),
        Just("audio:192.168.1.10:4000:sendrecv:ice=no,video:[::1]:4002:recvonly:ice=yes;x=y".to_string()),
        media_item().prop_map(|m| m.to_string()),
        "[ -~]{0,12}",
    ];
    let name = prop_oneof![
        Just("type"),
        Just("dialog_id"),
        Just("call_id"),
        Just("cseq"),
        Just("from_uri"),
        Just("to_uri"),
        Just("from_tag"),
        Just("to_tag"),
        Just("user_agent"),
        Just("signaling_ip"),
        Just("media_relay"),
        Just("media"),
        Just("x-other"),
        Just(""),
        Just("two words"),
    ];
    let header = (name, prop_oneof![Just(": "), Just(":"), Just(" "), Just(": \r")], header_value)
        .prop_map(|(n, sep, v)| format!("{n}{sep}{v}\r\n").into_bytes());
    prop_oneof![
        4 => command,
        8 => header,
        2 => module_request().prop_map(|r| r.encode().into_bytes()),
        2 => link_command().prop_map(|c| c.encode().into_bytes()),
        3 => prop_oneof![Just(&b"\r\n"[..]), Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\xff\xfe"[..])]
            .prop_map(<[u8]>::to_vec),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (0usize..600, any::<u8>()).prop_map(|(n, b)| vec![if b == b'\n' { b'x' } else { b }; n]),
    ]
    .boxed()
}

fn soup() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(fragment(), 0..16).prop_map(|f| f.concat()).boxed()
}

/// Arbitrary bytes or protocol soup.
fn hostile_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![1 => prop::collection::vec(any::<u8>(), 0..1024), 2 => soup()].boxed()
}

/// The text of some valid message, then a few characters changed, cut or
/// inserted: strings that get past the first checks of each parser.
fn near_valid() -> BoxedStrategy<String> {
    let valid = prop_oneof![
        prop::collection::vec(media_item(), 0..5).prop_map(|m| MediaItem::encode_list(&m)),
        relay_ports().prop_map(|p| ModuleReply::Ports(p).encode()),
        (any::<u64>(), relay_ports()).prop_map(|(seq, p)| RelayLine::Reply { seq, payload: p.to_string() }.encode()),
        Just("ping".to_string()),
        Just("removed\r\n".to_string()),
        Just("halting".to_string()),
        Just(" version ".to_string()),
        link_command().prop_map(|c| c.encode()),
        module_request().prop_map(|r| r.encode()),
        (ip(), proptest::option::of(ip())).prop_map(|(src, dst)| SignalingIp { src, dst }.to_string()),
    ];
    let edit = (any::<Index>(), prop::sample::select(&b":,_ .0123456789af[]\r\nxe="[..]), 0u8..3);
    (valid, prop::collection::vec(edit, 0..3))
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, c, op) in edits {
                let i = at.index(chars.len() + 1);
                match op {
                    0 if i < chars.len() => chars[i] = char::from(c),
                    1 if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ => chars.insert(i, char::from(c)),
                }
            }
            chars.into_iter().collect()
        })
        .boxed()
}

fn config(cases: u32) -> ProptestConfig {
    // XorShift: ChaCha in a debug build costs more than the decoders under test.
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// 1. Nothing panics; what comes out is well formed
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Lines never carry a `\n`, never exceed the limit, and the decoder
    /// never holds more than a line (checked inside `decode_lines`).
    #[test]
    fn line_decoder_survives_anything(data in hostile_bytes(), split in split_strategy(), max_line in 0usize..300) {
        for line in decode_lines(&data, &split, max_line) {
            match line {
                Ok(l) => {
                    prop_assert!(!l.contains('\n'), "{l:?}");
                    prop_assert!(l.len() <= max_line, "{} > {max_line}", l.len());
                }
                Err(e) => prop_assert!(
                    matches!(e, ParseError::NotUtf8 | ParseError::TooLong { .. }),
                    "unexpected line error {e:?}"
                ),
            }
        }
    }

    /// Frames are non-empty, made of non-empty lines within both limits.
    #[test]
    fn frame_decoder_survives_anything(
        data in hostile_bytes(),
        split in split_strategy(),
        max_line in 1usize..300,
        max_lines in 1usize..20,
    ) {
        for lines in decode_frames(&data, &split, max_line, max_lines).into_iter().flatten() {
            prop_assert!(!lines.is_empty() && lines.len() <= max_lines, "{lines:?}");
            for l in &lines {
                prop_assert!(!l.is_empty() && l.len() <= max_line && !l.contains('\n'), "{l:?}");
            }
        }
    }

    /// Whatever request the module decoder accepts re-encodes to a frame that
    /// parses back to the same request.
    #[test]
    fn module_decoder_survives_anything(data in hostile_bytes(), split in split_strategy()) {
        for req in decode_module(&data, &split, 4096, 32).into_iter().flatten() {
            let again = ModuleRequest::parse(&frame_of(&req.encode()), &Limits::default());
            prop_assert_eq!(again, Ok(req));
        }
    }

    /// The same for commands the relay decoder accepts; a bad frame whose
    /// first line was `<command> <seq>` keeps its seq.
    #[test]
    fn relay_decoder_survives_anything(data in hostile_bytes(), split in split_strategy(), max_line in 1usize..2048) {
        for x in decode_relay(&data, &split, max_line, 32) {
            match x {
                RelayInbound::Command(c) => {
                    let again = decode_relay(c.encode().as_bytes(), &Some(vec![]), 1 << 20, 1024);
                    prop_assert_eq!(again, vec![RelayInbound::Command(c)]);
                }
                RelayInbound::Invalid(CommandError { seq: Some(_), error }) => prop_assert!(
                    !matches!(error, ParseError::TooLong { .. } | ParseError::NotUtf8 | ParseError::InvalidFraming(_)),
                    "{error:?} comes from the framing, before any seq is known"
                ),
                RelayInbound::Invalid(_) | RelayInbound::Pong => {}
            }
        }
    }

    /// Every `parse` entry point returns instead of panicking, and whatever
    /// it accepts is a fixed point of encode-then-parse.
    #[test]
    fn parsers_survive_any_string(
        s in prop_oneof![
            1 => any::<String>(),
            1 => "(?s:.{0,40})",
            1 => fragment().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            3 => near_valid(),
        ]
    ) {
        if let Ok(line) = RelayLine::parse(&s) {
            let encoded = line.encode();
            let again = RelayLine::parse(encoded.strip_suffix("\r\n").unwrap());
            match (&again, &line) {
                (Ok(RelayLine::Expired(a)), RelayLine::Expired(b)) => prop_assert!(stats_close(a, b)),
                _ => prop_assert_eq!(again, Ok(line)),
            }
        }
        if let Ok(r) = UpdateReply::parse(&s) {
            prop_assert_eq!(UpdateReply::parse(&r.payload()), Ok(r));
        }
        if let Ok(r) = ModuleReply::parse(&s) {
            prop_assert_eq!(ModuleReply::parse(&r.encode()), Ok(r));
        }
        if let Ok(c) = MgmtCommand::parse(&s) {
            prop_assert!(["summary", "sessions", "version", "quit", "exit"].contains(&s.trim()));
            prop_assert_eq!(MgmtCommand::parse(c.as_str()), Ok(c));
        }
        if let Ok(p) = RelayPorts::parse(&s) {
            prop_assert_eq!(RelayPorts::parse(&p.to_string()), Ok(p));
        }
        if let Ok(m) = MediaItem::parse(&s) {
            prop_assert_eq!(MediaItem::parse(&m.to_string()), Ok(m));
        }
        match MediaItem::parse_list(&s, 4) {
            Ok(list) => {
                prop_assert!(list.len() <= 4);
                prop_assert_eq!(MediaItem::parse_list(&MediaItem::encode_list(&list), 4), Ok(list));
            }
            Err(e) => prop_assert!(matches!(e, ParseError::InvalidMedia(_) | ParseError::TooMany { .. }), "{e:?}"),
        }
        if let Some(c) = CSeq::parse(&s) {
            prop_assert_eq!(CSeq::parse(&c.to_string()), Some(c));
        }
        if let Some(ip) = SignalingIp::parse(&s) {
            prop_assert_eq!(SignalingIp::parse(&ip.to_string()), Some(ip));
        }
        if let Ok(stats) = SessionStats::from_json(&s) {
            let again = SessionStats::from_json(&stats.to_json());
            prop_assert!(again.as_ref().is_ok_and(|a| stats_close(a, &stats)), "{stats:?} came back as {again:?}");
        }
        let _ = SessionStats::list_from_json(&s);
        let _ = Summary::from_json(&s);
        let raw: Vec<&str> = s.split('\n').collect();
        let _ = Headers::parse(&raw);
        let _ = ModuleRequest::parse(&raw, &Limits::default());
        let _ = LinkCommand::parse(&raw, &Limits::default());
        // As the frame decoder hands them over: no terminators, no empty lines.
        let lines: Vec<&str> = s.lines().filter(|l| !l.is_empty()).collect();
        let _ = Headers::parse(&lines);
        if let Ok(r) = ModuleRequest::parse(&lines, &Limits::default()) {
            prop_assert_eq!(ModuleRequest::parse(&frame_of(&r.encode()), &Limits::default()), Ok(r));
        }
        if let Ok(c) = LinkCommand::parse(&lines, &Limits::default()) {
            prop_assert_eq!(LinkCommand::parse(&frame_of(&c.encode()), &Limits::default()), Ok(c));
        }
    }

    /// JSON that is almost right: a valid session or summary with bytes
    /// flipped, cut or inserted.
    #[test]
    fn json_parsers_survive_mangled_json(
        stats in session_stats(),
        sum in summary(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        for json in [stats.to_json(), sum.to_json(), SessionStats::list_to_json(std::slice::from_ref(&stats))] {
            let mut bytes = json.into_bytes();
            for (at, b, op) in &edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 if i < bytes.len() => bytes[i] = *b,
                    1 if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, *b),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(s) = SessionStats::from_json(&text) {
                let again = SessionStats::from_json(&s.to_json());
                prop_assert!(again.as_ref().is_ok_and(|a| stats_close(a, &s)), "{s:?} came back as {again:?}");
            }
            if let Ok(s) = Summary::from_json(&text) {
                prop_assert_eq!(Summary::from_json(&s.to_json()), Ok(s));
            }
            if let Ok(list) = SessionStats::list_from_json(&text) {
                let again = SessionStats::list_from_json(&SessionStats::list_to_json(&list)).unwrap();
                prop_assert!(again.len() == list.len() && again.iter().zip(&list).all(|(a, b)| stats_close(a, b)));
            }
            let expired = format!("expired {text}");
            let _ = RelayLine::parse(&expired);
        }
    }

    /// Any datagram is refused or accepted without panicking, and an accepted
    /// one passed every check the doc comment lists.
    #[test]
    fn sntp_reply_survives_any_packet(
        mut packet in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
        rtt in 0i64..1_000_000_000_000,
        echo in any::<bool>(),
    ) {
        let t1 = i128::from(now);
        let (_, sent) = sntp::request(t1);
        if echo && packet.len() >= 32 {
            packet[24..32].copy_from_slice(&sent.0.to_be_bytes());
        }
        if sntp::Reply::parse(&packet, sent, t1, t1 + i128::from(rtt)).is_ok() {
            prop_assert!(packet.len() >= sntp::PACKET_LEN);
            prop_assert_eq!(packet[0] & 7, 4, "server mode");
            prop_assert!((3..=4).contains(&((packet[0] >> 3) & 7)), "version");
            prop_assert_ne!(packet[0] >> 6, 3, "leap alarm");
            prop_assert!((1..=15).contains(&packet[1]), "stratum");
            prop_assert_eq!(&packet[24..32], &sent.0.to_be_bytes()[..], "originate");
            prop_assert!(packet[32..40] != [0; 8] && packet[40..48] != [0; 8]);
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Resynchronisation after garbage
// ---------------------------------------------------------------------------

/// Closes whatever the garbage left open: `\r\n` ends a partial line, the
/// empty line after it ends a frame.
const RESYNC: &[u8] = b"\r\n\r\n";

proptest! {
    #![proptest_config(config(256))]

    /// After garbage and an empty line, the next request is decoded intact,
    /// and the garbage cost exactly one output per frame it contained (the
    /// `FrameAssembler` promise: a bad frame is one error, never several,
    /// never merged with the next).
    #[test]
    fn module_decoder_resyncs_after_garbage(
        garbage in soup(),
        req in module_request(),
        split in split_strategy(),
        slack in 0usize..64,
    ) {
        let encoded = req.encode();
        let longest = encoded.split("\r\n").map(str::len).max().unwrap();
        let max_line = longest.max(16) + slack;
        let mut data = garbage.clone();
        data.extend_from_slice(RESYNC);
        let garbage_outputs = expected_outputs(&data, false);
        data.extend_from_slice(encoded.as_bytes());
        let out = decode_module(&data, &split, max_line, 16);
        prop_assert_eq!(out.len(), garbage_outputs + 1, "outputs {:?}", out);
        prop_assert_eq!(out.last().unwrap(), &Ok(req));
    }

    /// The relay link: same after garbage, with `pong` lines between frames
    /// counted as outputs of their own.
    #[test]
    fn relay_decoder_resyncs_after_garbage(
        garbage in soup(),
        cmd in link_command(),
        split in split_strategy(),
        slack in 0usize..64,
    ) {
        let encoded = cmd.encode();
        let longest = encoded.split("\r\n").map(str::len).max().unwrap();
        let max_line = longest.max(16) + slack;
        let mut data = garbage.clone();
        data.extend_from_slice(RESYNC);
        let garbage_outputs = expected_outputs(&data, true);
        data.extend_from_slice(encoded.as_bytes());
        data.extend_from_slice(b"pong\r\n");
        let out = decode_relay(&data, &split, max_line, 16);
        prop_assert_eq!(out.len(), garbage_outputs + 2, "outputs {:?}", out);
        prop_assert_eq!(&out[out.len() - 2..], &[RelayInbound::Command(cmd), RelayInbound::Pong][..]);
    }
}

// ---------------------------------------------------------------------------
// 3. How the bytes are split never matters
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Valid requests back to back, with a line limit at or just around the
    /// longest line: read in pieces they decode exactly as read at once,
    /// and exactly to the requests sent.
    #[test]
    fn valid_frames_decode_the_same_however_split(
        reqs in prop::collection::vec(module_request(), 1..5),
        split in split_strategy(),
        blank_lines in prop::collection::vec(0usize..3, 5),
    ) {
        let mut data = Vec::new();
        for (r, blanks) in reqs.iter().zip(&blank_lines) {
            data.extend_from_slice(&b"\r\n".repeat(*blanks));
            data.extend_from_slice(r.encode().as_bytes());
        }
        let max_line = raw_lines(&data).iter().map(|l| l.len()).max().unwrap();
        let whole = decode_module(&data, &Some(vec![]), max_line, 16);
        let expected: Vec<_> = reqs.into_iter().map(Ok).collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(decode_module(&data, &split, max_line, 16), expected);
    }

    /// Arbitrary streams, arbitrary limits: every decoder gives the same
    /// outputs for any split as for one read.
    #[test]
    fn any_stream_decodes_the_same_however_split(
        data in hostile_bytes(),
        split in split_strategy(),
        pick in any::<Index>(),
        nudge in 0usize..3,
        max_lines in 1usize..20,
    ) {
        // A limit at a real line's length (minus 0..2) puts lines right at it.
        let lines = raw_lines(&data);
        let max_line = if lines.is_empty() { 8 } else { lines[pick.index(lines.len())].len().saturating_sub(nudge).max(1) };
        let whole = Some(vec![]);
        prop_assert_eq!(decode_lines(&data, &split, max_line), decode_lines(&data, &whole, max_line));
        prop_assert_eq!(
            decode_frames(&data, &split, max_line, max_lines),
            decode_frames(&data, &whole, max_line, max_lines)
        );
        prop_assert_eq!(
            decode_relay(&data, &split, max_line, max_lines),
            decode_relay(&data, &whole, max_line, max_lines)
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Round trips
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn module_request_round_trips(req in module_request(), split in split_strategy()) {
        let encoded = req.encode();
        prop_assert!(encoded.ends_with("\r\n\r\n"));
        let out = decode_module(encoded.as_bytes(), &split, 1 << 16, 16);
        prop_assert_eq!(out, vec![Ok(req)]);
    }

    #[test]
    fn link_commands_round_trip(cmds in prop::collection::vec(link_command(), 1..5), split in split_strategy()) {
        let mut data = Vec::new();
        let mut expected = Vec::new();
        for c in cmds {
            data.extend_from_slice(c.encode().as_bytes());
            data.extend_from_slice(b"pong\r\n");
            prop_assert_eq!(LinkCommand::parse(&frame_of(&c.encode()), &Limits::default()), Ok(c.clone()));
            expected.push(RelayInbound::Command(c));
            expected.push(RelayInbound::Pong);
        }
        prop_assert_eq!(decode_relay(&data, &split, 1 << 16, 16), expected);
    }

    /// A module request forwarded on the link is the same request.
    #[test]
    fn module_request_survives_the_link(req in module_request(), seq in any::<u64>()) {
        let cmd = LinkCommand { seq, request: req.clone().into() };
        let back = LinkCommand::parse(&frame_of(&cmd.encode()), &Limits::default());
        prop_assert_eq!(back, Ok(cmd));
        let header_lines = frame_of(&req.encode());
        let via_link = frame_of(&LinkCommand { seq, request: req.clone().into() }.encode());
        prop_assert_eq!(&header_lines[1..], &via_link[1..], "the link carries the module's own headers");
    }

    #[test]
    fn media_lists_round_trip(items in prop::collection::vec(media_item(), 0..8), extra in 1usize..4) {
        let encoded = MediaItem::encode_list(&items);
        prop_assert_eq!(MediaItem::parse_list(&encoded, items.len()), Ok(items.clone()));
        // Items one by one, and with spaces after the commas.
        for item in &items {
            prop_assert_eq!(MediaItem::parse(&item.to_string()), Ok(item.clone()));
        }
        let spaced = encoded.replace(',', " , ");
        prop_assert_eq!(MediaItem::parse_list(&spaced, items.len() + extra), Ok(items.clone()));
        if !items.is_empty() {
            prop_assert_eq!(
                MediaItem::parse_list(&encoded, items.len() - 1),
                Err(ParseError::TooMany { what: "media items", limit: items.len() - 1 })
            );
        }
    }

    #[test]
    fn session_stats_round_trip(stats in session_stats(), seq in any::<u64>()) {
        let json = stats.to_json();
        prop_assert!(!json.contains('\n') && !json.contains('\r'), "stats must fit one line");
        prop_assert_eq!(SessionStats::from_json(&json), Ok(stats.clone()));
        let list = vec![stats.clone(), stats.clone()];
        prop_assert_eq!(SessionStats::list_from_json(&SessionStats::list_to_json(&list)), Ok(list));
        // On the link: `expired <json>` and `<seq> <json>` lines.
        let lines = [RelayLine::Expired(stats.clone()), RelayLine::Reply { seq, payload: json.clone() }];
        let wire: String = lines.iter().map(RelayLine::encode).collect();
        let decoded: Vec<_> = decode_lines(wire.as_bytes(), &Some(vec![]), 1 << 20)
            .into_iter()
            .map(|l| RelayLine::parse(&l.unwrap()))
            .collect();
        prop_assert_eq!(decoded, lines.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn summary_round_trips(sum in summary()) {
        prop_assert_eq!(Summary::from_json(&sum.to_json()), Ok(sum));
    }

    #[test]
    fn replies_round_trip(ports in relay_ports(), seq in any::<u64>()) {
        for reply in [ModuleReply::Ports(ports.clone()), ModuleReply::Removed, ModuleReply::Error] {
            let line = reply.encode();
            prop_assert!(line.ends_with("\r\n") && line.matches('\n').count() == 1, "one line: {line:?}");
            prop_assert_eq!(ModuleReply::parse(&line), Ok(reply));
        }
        for reply in [UpdateReply::Ports(ports.clone()), UpdateReply::Error, UpdateReply::Halting] {
            let line = RelayLine::Reply { seq, payload: reply.payload() };
            let parsed = RelayLine::parse(line.encode().trim_end_matches("\r\n"));
            prop_assert_eq!(&parsed, &Ok(line));
            let Ok(RelayLine::Reply { seq: s, payload }) = parsed else { unreachable!() };
            prop_assert_eq!(s, seq);
            prop_assert_eq!(UpdateReply::parse(&payload), Ok(reply));
        }
    }

    #[test]
    fn header_values_round_trip(src in ip(), dst in proptest::option::of(ip()), number in any::<u32>(), method in "[A-Z]{0,9}") {
        let sig = SignalingIp { src, dst };
        prop_assert_eq!(SignalingIp::parse(&sig.to_string()), Some(sig));
        let cseq = CSeq { number, method };
        prop_assert_eq!(CSeq::parse(&cseq.to_string()), Some(cseq));
    }

    #[test]
    fn mgmt_commands_round_trip(pad in "[ \t\r]{0,3}", which in 0usize..4) {
        let c = [MgmtCommand::Summary, MgmtCommand::Sessions, MgmtCommand::Version, MgmtCommand::Quit][which];
        prop_assert_eq!(MgmtCommand::parse(&format!("{pad}{}{pad}", c.as_str())), Ok(c));
    }

    /// NTP timestamps: Unix nanoseconds to NTP and back lose less than 1 ns
    /// anywhere in the two eras RFC 4330 covers (1968-2104).
    #[test]
    fn ntp_timestamps_round_trip(unix in -61_505_152i128 * 1_000_000_000..4_233_462_144i128 * 1_000_000_000) {
        let back = sntp::Timestamp::from_unix_nanos(unix).to_unix_nanos();
        prop_assert!((0..=1).contains(&(unix - back)), "{unix} came back as {back}");
    }

    /// A server's reply to our request gives the RFC 4330 offset and delay,
    /// and any one of the refusals in the doc comment turns it down.
    #[test]
    fn sntp_reply_matches_the_formula(
        t1 in 0i128..4_000_000_000 * 1_000_000_000,
        server_off in -2_000_000_000i128 * 1_000_000_000..2_000_000_000 * 1_000_000_000,
        rtt in 0i128..10_000_000_000,
        hold in 0i128..1_000_000_000,
        stratum in 1u8..=15,
        version in 3u8..=4,
        leap in 0u8..3,
        breakage in 0u8..7,
    ) {
        let hold = hold.min(rtt);
        let t2 = (t1 + server_off + (rtt - hold) / 2).clamp(-61_505_152 * 1_000_000_000, 4_233_462_143 * 1_000_000_000);
        let t3 = t2 + hold;
        prop_assume!(t3 < 4_233_462_144 * 1_000_000_000);
        let t4 = t1 + rtt;
        let (req, sent) = sntp::request(t1);
        let mut p = [0u8; sntp::PACKET_LEN];
        p[0] = (leap << 6) | (version << 3) | 4;
        p[1] = stratum;
        p[24..32].copy_from_slice(&req[40..48]);
        p[32..40].copy_from_slice(&sntp::Timestamp::from_unix_nanos(t2).0.to_be_bytes());
        p[40..48].copy_from_slice(&sntp::Timestamp::from_unix_nanos(t3).0.to_be_bytes());
        prop_assume!(p[32..40] != [0; 8] && p[40..48] != [0; 8]);
        let r = sntp::Reply::parse(&p, sent, t1, t4).unwrap();
        prop_assert_eq!(r.stratum, stratum);
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let delay = (t4 - t1) - (t3 - t2);
        prop_assert!((r.offset - offset).abs() <= 1, "offset {} expected {offset}", r.offset);
        prop_assert!((r.delay - delay).abs() <= 1, "delay {} expected {delay}", r.delay);

        let mut bad = p;
        match breakage {
            0 => bad[0] = (bad[0] & !7) | 3,                   // client mode
            1 => bad[0] = (bad[0] & !0xc0) | 0xc0,             // leap alarm
            2 => bad[1] = 0,                                   // kiss-o'-death
            3 => bad[1] = 16,                                  // unsynchronised
            4 => bad[24] ^= 0x80,                              // not our request
            5 => bad[40..48].fill(0),                          // no transmit time
            _ => bad[0] = (bad[0] & !0x38) | (2 << 3),         // NTPv2
        }
        prop_assert!(sntp::Reply::parse(&bad, sent, t1, t4).is_err(), "breakage {breakage} accepted");
        prop_assert!(sntp::Reply::parse(&p[..sntp::PACKET_LEN - 1], sent, t1, t4).is_err());
    }
}

// ---------------------------------------------------------------------------
// 5. Size limits
// ---------------------------------------------------------------------------

fn long_line(len: usize, fill: &[u8]) -> Vec<u8> {
    // Any bytes but line ends, so the length is exactly `len`.
    fill.iter().copied().filter(|&b| b != b'\n' && b != b'\r').chain(std::iter::repeat(b'x')).take(len).collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// An over-long line is one `TooLong`, never held whole, and the next
    /// line comes out intact.
    #[test]
    fn over_long_line_is_one_error(
        max_line in 1usize..200,
        extra in 1usize..600,
        fill in prop::collection::vec(any::<u8>(), 0..64),
        next in "[ -~]{0,40}",
        split in split_strategy(),
    ) {
        prop_assume!(next.len() <= max_line);
        let mut data = long_line(max_line + extra, &fill);
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(next.as_bytes());
        data.extend_from_slice(b"\r\n");
        // decode_lines asserts the memory bound after every read.
        let out = decode_lines(&data, &split, max_line);
        prop_assert_eq!(out, vec![Err(ParseError::TooLong { limit: max_line }), Ok(next)]);
    }

    /// A line of exactly the limit is accepted, however it arrives.
    #[test]
    fn line_at_the_limit_is_accepted(max_line in 1usize..200, split in split_strategy(), bare_lf in any::<bool>()) {
        let line = "y".repeat(max_line);
        let data = format!("{line}{}", if bare_lf { "\n" } else { "\r\n" });
        prop_assert_eq!(decode_lines(data.as_bytes(), &split, max_line), vec![Ok(line)]);
    }

    /// A frame with an over-long line anywhere in it is one error; the next
    /// frame decodes.
    #[test]
    fn frame_with_long_line_is_one_error(
        before in prop::collection::vec("[a-z_]{1,8}: [ -~]{0,8}", 0..5),
        extra in 1usize..2000,
        fill in prop::collection::vec(any::<u8>(), 0..64),
        after in prop::collection::vec("[a-z_]{1,8}: [ -~]{0,8}", 0..5),
        req in module_request(),
        split in split_strategy(),
    ) {
        let encoded = req.encode();
        let max_line = encoded.split("\r\n").map(str::len).max().unwrap().max(20);
        let mut data = Vec::new();
        for l in &before {
            data.extend_from_slice(format!("{l}\r\n").as_bytes());
        }
        data.extend_from_slice(&long_line(max_line + extra, &fill));
        data.extend_from_slice(b"\r\n");
        for l in &after {
            data.extend_from_slice(format!("{l}\r\n").as_bytes());
        }
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(encoded.as_bytes());
        let frames = decode_frames(&data, &split, max_line, 16);
        prop_assert_eq!(frames.len(), 2, "{:?}", frames);
        prop_assert_eq!(&frames[0], &Err(ParseError::TooLong { limit: max_line }));
        prop_assert_eq!(ModuleRequest::parse(frames[1].as_ref().unwrap(), &Limits::default()), Ok(req));

        let relay = decode_relay(&data, &split, max_line, 16);
        prop_assert_eq!(relay.len(), 2, "{:?}", relay);
        prop_assert_eq!(
            &relay[0],
            &RelayInbound::Invalid(CommandError { seq: None, error: ParseError::TooLong { limit: max_line } })
        );
    }

    /// A frame with more lines than allowed is one `TooMany`; the next frame
    /// decodes.
    #[test]
    fn frame_with_too_many_lines_is_one_error(
        max_lines in 4usize..16,
        extra in 1usize..40,
        req in remove_request(),
        split in split_strategy(),
    ) {
        let mut data = b"update\r\n".to_vec();
        for i in 1..max_lines + extra {
            data.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        data.extend_from_slice(b"\r\n");
        let req = ModuleRequest::Remove(req);
        data.extend_from_slice(req.encode().as_bytes());
        let frames = decode_frames(&data, &split, 1 << 12, max_lines);
        prop_assert_eq!(frames.len(), 2, "{:?}", frames);
        prop_assert_eq!(&frames[0], &Err(ParseError::TooMany { what: "lines in one request", limit: max_lines }));
        prop_assert_eq!(ModuleRequest::parse(frames[1].as_ref().unwrap(), &Limits::default()), Ok(req));
    }

    /// Endless input without a line end: memory stays bounded by the limit
    /// plus one read, there is exactly one error, and a line after it works.
    #[test]
    fn endless_line_keeps_memory_bounded(
        max_line in 1usize..300,
        reads in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no line end", |&b| b != b'\n'), 1..128), 1..64),
    ) {
        let mut d = LineDecoder::new(max_line);
        let mut errors = 0;
        for read in &reads {
            let before = d.pending();
            d.push(read);
            prop_assert!(d.pending() <= before + read.len());
            while let Some(line) = d.next_line() {
                prop_assert_eq!(line, Err(ParseError::TooLong { limit: max_line }));
                errors += 1;
            }
            prop_assert!(d.pending() <= max_line + 1, "holding {} with limit {max_line}", d.pending());
        }
        prop_assert!(errors <= 1);
        // The line ends. The unterminated bytes were one line (a trailing
        // `\r` is its terminator's, as a `\n` follows it directly): reported
        // once if too long, else returned, and the next line comes out.
        d.push(b"\nk\r\n");
        let mut tail = Vec::new();
        while let Some(line) = d.next_line() {
            if line == Err(ParseError::TooLong { limit: max_line }) {
                errors += 1;
            } else {
                tail.push(line);
            }
        }
        let mut bytes = reads.concat();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let too_long = bytes.len() > max_line;
        prop_assert_eq!(errors, usize::from(too_long), "{} bytes, limit {}", bytes.len(), max_line);
        let mut expected = Vec::new();
        if !too_long {
            expected.push(String::from_utf8(bytes).map_err(|_| ParseError::NotUtf8));
        }
        expected.push(Ok("k".to_string()));
        prop_assert_eq!(tail, expected);
    }
}
