//! Session statistics and relay summaries as JSON, from a relay (ours or
//! MediaProxy's) or an `expired` line: no input may panic, and what
//! decodes re-encodes to JSON that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_proto::{SessionStats, Summary};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(stats) = SessionStats::from_json(text) {
        let again = SessionStats::from_json(&stats.to_json()).expect("encoded statistics decode");
        assert_eq!(again.to_json(), stats.to_json());
    }
    if let Ok(list) = SessionStats::list_from_json(text) {
        let again = SessionStats::list_from_json(&SessionStats::list_to_json(&list)).expect("encoded list decodes");
        assert_eq!(again.len(), list.len());
    }
    if let Ok(summary) = Summary::from_json(text) {
        let again = Summary::from_json(&summary.to_json()).expect("an encoded summary decodes");
        assert_eq!(again.to_json(), summary.to_json());
    }
});
