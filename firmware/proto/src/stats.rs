//! Session statistics and relay summaries: the JSON that `remove`,
//! `sessions`, `summary` and `expired` carry, in MediaProxy's field names.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Why a stream ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamStatus {
    #[serde(rename = "active")]
    Active,
    #[serde(rename = "on hold")]
    OnHold,
    #[serde(rename = "closed")]
    Closed,
    #[serde(rename = "rejected")]
    Rejected,
    #[serde(rename = "no-traffic timeout")]
    NoTrafficTimeout,
    #[serde(rename = "conntrack timeout")]
    ConntrackTimeout,
    #[serde(rename = "on hold timeout")]
    OnHoldTimeout,
    #[serde(rename = "unselected ICE candidate")]
    UnselectedIceCandidate,
}

impl StreamStatus {
    /// True for the statuses that mean the media stopped by itself.
    pub fn is_timeout(self) -> bool {
        matches!(self, StreamStatus::NoTrafficTimeout | StreamStatus::ConntrackTimeout | StreamStatus::OnHoldTimeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Active => "active",
            StreamStatus::OnHold => "on hold",
            StreamStatus::Closed => "closed",
            StreamStatus::Rejected => "rejected",
            StreamStatus::NoTrafficTimeout => "no-traffic timeout",
            StreamStatus::ConntrackTimeout => "conntrack timeout",
            StreamStatus::OnHoldTimeout => "on hold timeout",
            StreamStatus::UnselectedIceCandidate => "unselected ICE candidate",
        }
    }
}

/// One stream of a session. Times are seconds relative to the session's
/// `start_time`; addresses are `ip:port` strings (`Unknown` until learned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    pub media_type: String,
    pub status: StreamStatus,
    /// Seconds the relay waited without media before declaring the timeout.
    pub timeout_wait: u64,
    pub caller_codec: String,
    pub callee_codec: String,
    pub start_time: Option<u64>,
    pub end_time: Option<u64>,
    /// Seconds from the stream's creation to its first media packet.
    pub post_dial_delay: Option<f64>,
    pub caller_bytes: u64,
    pub callee_bytes: u64,
    pub caller_packets: u64,
    pub callee_packets: u64,
    pub caller_local: String,
    pub callee_local: String,
    pub caller_remote: String,
    pub callee_remote: String,
}

/// One session (call) on a relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub call_id: String,
    pub from_tag: String,
    pub from_uri: String,
    pub to_tag: Option<String>,
    pub to_uri: String,
    /// Unix time of the answer, `None` before the call was answered.
    pub start_time: Option<u64>,
    /// Seconds since `start_time` (to the end for finished sessions).
    pub duration: u64,
    pub caller_ua: String,
    pub callee_ua: String,
    /// The user part of `from_uri`.
    pub username: String,
    /// The relay that carried the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ip: Option<String>,
    /// The proxy's dialog id, when the call was engaged with the dialog module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialog_id: Option<String>,
    pub streams: Vec<StreamStats>,
}

impl SessionStats {
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, ParseError> {
        serde_json::from_str(s).map_err(|e| ParseError::InvalidJson(e.to_string()))
    }

    pub fn list_to_json(list: &[SessionStats]) -> String {
        serde_json::to_string(list).unwrap_or_default()
    }

    pub fn list_from_json(s: &str) -> Result<Vec<SessionStats>, ParseError> {
        serde_json::from_str(s).map_err(|e| ParseError::InvalidJson(e.to_string()))
    }

    /// True when every stream ended as an ICE candidate that was not chosen:
    /// such a session did not time out, the endpoints just talked directly.
    pub fn all_streams_unselected_ice(&self) -> bool {
        !self.streams.is_empty() && self.streams.iter().all(|s| s.status == StreamStatus::UnselectedIceCandidate)
    }
}

/// Whether a relay takes new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayStatus {
    Active,
    Halting,
}

/// A relay's answer to `summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub ip: String,
    pub version: String,
    pub status: RelayStatus,
    /// Seconds since the relay started.
    pub uptime: u64,
    pub session_count: u64,
    pub stream_count: BTreeMap<String, u64>,
    /// Bits per second relayed, averaged over the last sampling period.
    pub bps_relayed: u64,
    /// Which datapath forwards media (`userspace` or `kernel`); an extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<String>,
    /// Packets dropped by the RTP-bleed rule since the relay's sessions
    /// began (kept across a restart); an extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bleed_drops: Option<u64>,
}

impl Summary {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, ParseError> {
        serde_json::from_str(s).map_err(|e| ParseError::InvalidJson(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> SessionStats {
        SessionStats {
            call_id: "c1".into(),
            from_tag: "f".into(),
            from_uri: "sip:alice@example.com".into(),
            to_tag: Some("t".into()),
            to_uri: "sip:bob@example.com".into(),
            start_time: Some(1_700_000_000),
            duration: 12,
            caller_ua: "A".into(),
            callee_ua: "B".into(),
            username: "alice".into(),
            relay_ip: None,
            dialog_id: None,
            streams: alloc::vec![StreamStats {
                media_type: "audio".into(),
                status: StreamStatus::NoTrafficTimeout,
                timeout_wait: 90,
                caller_codec: "PCMA".into(),
                callee_codec: "PCMA".into(),
                start_time: Some(0),
                end_time: Some(12),
                post_dial_delay: Some(1.5),
                caller_bytes: 1720,
                callee_bytes: 1720,
                caller_packets: 10,
                callee_packets: 10,
                caller_local: "203.0.113.1:40000".into(),
                callee_local: "203.0.113.1:40002".into(),
                caller_remote: "198.51.100.7:4000".into(),
                callee_remote: "198.51.100.9:5000".into(),
            }],
        }
    }

    #[test]
    fn stats_json_round_trip_and_status_names() {
        let s = sample();
        let json = s.to_json();
        assert!(json.contains("\"status\":\"no-traffic timeout\""), "{json}");
        assert!(!json.contains("relay_ip"));
        assert_eq!(SessionStats::from_json(&json).unwrap(), s);
        let list = SessionStats::list_to_json(&[s.clone(), s.clone()]);
        assert_eq!(SessionStats::list_from_json(&list).unwrap().len(), 2);
        assert!(SessionStats::from_json("{\"call_id\": 3}").is_err());
        assert!(StreamStatus::OnHoldTimeout.is_timeout());
        assert!(!StreamStatus::Closed.is_timeout());
    }

    #[test]
    fn summary_json() {
        let mut counts = BTreeMap::new();
        counts.insert("audio".to_string(), 2);
        let s = Summary {
            ip: "203.0.113.1".into(),
            version: "0.1.0".into(),
            status: RelayStatus::Halting,
            uptime: 5,
            session_count: 1,
            stream_count: counts,
            bps_relayed: 64000,
            datapath: Some("userspace".into()),
            bleed_drops: Some(3),
        };
        let j = s.to_json();
        assert!(j.contains("\"status\":\"halting\""));
        assert!(j.contains("\"bleed_drops\":3"), "{j}");
        assert_eq!(Summary::from_json(&j).unwrap(), s);
        // MediaProxy's summary has neither extension.
        let plain = Summary { datapath: None, bleed_drops: None, ..s };
        let j = plain.to_json();
        assert!(!j.contains("bleed_drops") && !j.contains("datapath"), "{j}");
        assert_eq!(Summary::from_json(&j).unwrap(), plain);
    }
}
