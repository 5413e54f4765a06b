//! The statistics JSON of MediaProxy 4.1.2's own relay, captured from the
//! real relay (`fixtures/mediaproxy-4.1.2`, one payload per line: its
//! `summary`, `sessions` and `remove` answers and `expired` reports) while
//! MediaProxy's test scripts ran through it. A relaybox dispatcher serving
//! such a relay must read every one (issue #12: floats where relaybox wrote
//! integers, `null` where it wrote strings).

use relaybox_proto::link::RelayLine;
use relaybox_proto::stats::RelayStatus;
use relaybox_proto::{SessionStats, StreamStatus, Summary};

fn fixture(name: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/mediaproxy-4.1.2/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    assert!(!lines.is_empty(), "{path} is empty");
    lines
}

#[test]
fn summary_with_a_float_bps_relayed() {
    for line in fixture("summary.jsonl") {
        let s = Summary::from_json(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!((s.ip.as_str(), s.version.as_str(), s.status), ("192.0.2.1", "4.1.2", RelayStatus::Active));
        assert!(line.contains("\"bps_relayed\": 0.0"), "the capture has MediaProxy's float: {line}");
        assert_eq!(s.bps_relayed, 0);
        assert_eq!(s.stream_count.get("audio"), Some(&1));
        assert_eq!((s.datapath, s.bleed_drops), (None, None));
    }
}

#[test]
fn sessions_lists() {
    let lists: Vec<Vec<SessionStats>> = fixture("sessions.jsonl")
        .iter()
        .map(|l| SessionStats::list_from_json(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lists.iter().any(Vec::is_empty));
    let running = lists.iter().flatten().next().expect("a capture with a call");
    assert_eq!(running.username, None, "MediaProxy writes null");
    let start = running.start_time.expect("answered");
    assert!(start.fract() > 0.0, "Python's time() keeps its fraction: {start}");
    let stream = &running.streams[0];
    assert_eq!(stream.status, StreamStatus::Active);
    assert_eq!(stream.end_time, Some(running.duration), "a running stream ends at the duration");
}

#[test]
fn remove_answers_and_expired_reports() {
    let mut statuses = Vec::new();
    for line in fixture("remove.jsonl").into_iter().chain(fixture("expired.jsonl")) {
        let s = SessionStats::from_json(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(!s.call_id.is_empty() && !s.from_tag.is_empty());
        assert_eq!(s.username, None);
        assert_eq!(s.from_uri, "Alice <alice@example.com>");
        if s.start_time.is_none() {
            assert!(s.streams.is_empty(), "an unanswered call lists no streams: {line}");
            assert_eq!(s.callee_ua, "Unknown");
        }
        for stream in &s.streams {
            assert!(stream.post_dial_delay.is_none_or(|d| d >= 0.0));
            assert!(stream.caller_local.starts_with("192.0.2.1:"), "{line}");
            statuses.push(stream.status);
        }
        // The relay link line the dispatcher reads.
        match RelayLine::parse(&format!("expired {line}")).unwrap() {
            RelayLine::Expired(e) => assert_eq!(e, s),
            other => panic!("{other:?}"),
        }
    }
    for expected in [
        StreamStatus::Closed,
        StreamStatus::Rejected,
        StreamStatus::NoTrafficTimeout,
        StreamStatus::ConntrackTimeout,
        StreamStatus::UnselectedIceCandidate,
    ] {
        assert!(statuses.contains(&expected), "no {expected:?} in the fixtures");
    }
}

#[test]
fn what_relaybox_writes_reads_back_the_same_way() {
    for line in fixture("remove.jsonl") {
        let s = SessionStats::from_json(&line).unwrap();
        let again = SessionStats::from_json(&s.to_json()).unwrap();
        assert_eq!(again, s);
        assert!(s.to_json().contains("\"username\":null"), "{}", s.to_json());
    }
}

#[test]
fn lenient_where_mediaproxy_differs_strict_where_it_matters() {
    // Floats for counters, nulls for strings, missing fields.
    let s = SessionStats::from_json(
        r#"{"call_id":"c","from_tag":"f","from_uri":null,"to_uri":"b","start_time":1.5,"duration":2.9,
            "caller_ua":null,"streams":[{"media_type":"audio","status":"closed","caller_bytes":10.0,
            "end_time":3.0,"timeout_wait":null}]}"#,
    )
    .unwrap();
    assert_eq!((s.from_uri.as_str(), s.start_time, s.duration, s.caller_ua.as_str()), ("", Some(1.5), 2, ""));
    assert_eq!((s.streams[0].caller_bytes, s.streams[0].end_time, s.streams[0].timeout_wait), (10, Some(3), 0));
    assert_eq!(s.streams[0].start_time, None);
    // What cannot be a session still fails.
    assert!(SessionStats::from_json(r#"{"from_tag":"f"}"#).is_err(), "no call_id");
    assert!(SessionStats::from_json(r#"{"call_id":"c","duration":"long"}"#).is_err());
    assert!(SessionStats::from_json(r#"{"call_id":"c","streams":[{"status":"sideways"}]}"#).is_err());
    assert!(Summary::from_json(r#"{"ip":"1.2.3.4","status":"active","bps_relayed":-5.5}"#).unwrap().bps_relayed == 0);
}
