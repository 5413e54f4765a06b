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
///
/// Read leniently (the `lenient` module): MediaProxy's relay writes floats where
/// relaybox writes integers and `null` where it writes strings, and older
/// versions leave fields out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    #[serde(default, deserialize_with = "lenient::string")]
    pub media_type: String,
    pub status: StreamStatus,
    /// Seconds the relay waited without media before declaring the timeout.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub timeout_wait: u64,
    #[serde(default, deserialize_with = "lenient::string")]
    pub caller_codec: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub callee_codec: String,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub start_time: Option<u64>,
    /// The end, or for a stream still running the session's duration so
    /// far (as MediaProxy reports it).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub end_time: Option<u64>,
    /// Seconds from the stream's creation to its first media packet.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub post_dial_delay: Option<f64>,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub caller_bytes: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub callee_bytes: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub caller_packets: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub callee_packets: u64,
    #[serde(default, deserialize_with = "lenient::string")]
    pub caller_local: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub callee_local: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub caller_remote: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub callee_remote: String,
}

/// One session (call) on a relay, in MediaProxy's format (read leniently,
/// like [`StreamStats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub call_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub from_tag: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub from_uri: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub to_tag: Option<String>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub to_uri: String,
    /// Unix time of the answer with its fraction (MediaProxy writes
    /// Python's `time()`), `None` before the call was answered.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub start_time: Option<f64>,
    /// Seconds since `start_time` (to the end for finished sessions).
    #[serde(default, deserialize_with = "lenient::u64")]
    pub duration: u64,
    /// The caller's User-Agent, `Unknown` when it sent none.
    #[serde(default, deserialize_with = "lenient::string")]
    pub caller_ua: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub callee_ua: String,
    /// The user the proxy named in a JSON `signaling_ip` header; `null`
    /// otherwise (MediaProxy does not derive it from the From URI).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub username: Option<String>,
    /// The relay that carried the session.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub relay_ip: Option<String>,
    /// The proxy's dialog id, when the call was engaged with the dialog module.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub dialog_id: Option<String>,
    /// Set by the dispatcher for accounting, as MediaProxy's dispatcher
    /// does: whether the media timed out (an expired call whose streams
    /// were not all unselected ICE candidates). Relays do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// Set by the dispatcher for an expired call: every stream ended as an
    /// unselected ICE candidate (the phones talk directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_streams_ice: Option<bool>,
    /// The streams that were answered, by start time (MediaProxy lists
    /// none for a call that was never answered).
    #[serde(default)]
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

/// A relay's answer to `summary` (read leniently: MediaProxy's
/// `bps_relayed` is a float).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(deserialize_with = "lenient::string")]
    pub ip: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub version: String,
    pub status: RelayStatus,
    /// Seconds since the relay started.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub uptime: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub session_count: u64,
    #[serde(default, deserialize_with = "lenient::counts")]
    pub stream_count: BTreeMap<String, u64>,
    /// Bits per second relayed, averaged over the last sampling period.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub bps_relayed: u64,
    /// Which datapath forwards media (`userspace` or `kernel`); an extension.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub datapath: Option<String>,
    /// Packets dropped by the RTP-bleed rule since the relay's sessions
    /// began (kept across a restart); an extension.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_u64")]
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

/// Deserializers that take what MediaProxy's relay writes as well as what
/// relaybox writes: a number may be an integer or a float (`0.0`,
/// `1700000000.25`), and `null` stands for an empty string or a zero
/// (MediaProxy 4.1.2 writes `username: null`, `bps_relayed: 0.0`, a float
/// `start_time`). Numbers are truncated towards zero; a negative or
/// non-finite one counts as 0.
mod lenient {
    use alloc::collections::BTreeMap;
    use alloc::string::{String, ToString};
    use core::fmt;
    use serde::de::{self, Deserializer, MapAccess, Visitor};

    enum Value {
        Null,
        Int(u64),
        Float(f64),
        Text(String),
    }

    struct AnyScalar;

    impl<'de> Visitor<'de> for AnyScalar {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, a string or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E: de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(AnyScalar)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Int(u64::from(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Int(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Int(u64::try_from(v).unwrap_or(0)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
            Ok(Value::Float(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::Text(v.to_string()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::Text(v))
        }
    }

    fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(AnyScalar)
    }

    fn float_to_u64(f: f64) -> u64 {
        // `as` saturates and maps NaN to 0.
        if f.is_finite() && f > 0.0 {
            f as u64
        } else {
            0
        }
    }

    fn number<E: de::Error>(v: Value) -> Result<Option<u64>, E> {
        match v {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(n)),
            Value::Float(f) => Ok(Some(float_to_u64(f))),
            Value::Text(t) => Err(E::invalid_type(de::Unexpected::Str(&t), &"a number or null")),
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        number::<D::Error>(scalar(d)?).map(Option::unwrap_or_default)
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        number::<D::Error>(scalar(d)?)
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match scalar(d)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(n as f64)),
            Value::Float(f) => Ok(Some(f)),
            Value::Text(t) => Err(de::Error::invalid_type(de::Unexpected::Str(&t), &"a number or null")),
        }
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match scalar(d)? {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t)),
            Value::Int(n) => Ok(Some(n.to_string())),
            Value::Float(f) => Ok(Some(f.to_string())),
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        opt_string(d).map(Option::unwrap_or_default)
    }

    /// `{"audio": 2, "video": 1.0}`; `null` is an empty map.
    pub fn counts<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
        struct Counts;
        impl<'de> Visitor<'de> for Counts {
            type Value = BTreeMap<String, u64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counts or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Count>()?;
                    out.insert(key, value.0);
                }
                Ok(out)
            }
        }
        struct Count(u64);
        impl<'de> serde::Deserialize<'de> for Count {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                u64(d).map(Count)
            }
        }
        d.deserialize_any(Counts)
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
            start_time: Some(1_700_000_000.25),
            duration: 12,
            caller_ua: "A".into(),
            callee_ua: "B".into(),
            username: Some("alice".into()),
            relay_ip: None,
            dialog_id: None,
            timed_out: None,
            all_streams_ice: None,
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
    fn float_times_decode_to_the_value_they_were_encoded_from() {
        // Found by the stats_json fuzz target: without serde_json's exact
        // float parsing, 1.3333333333333333e53 came back one digit short.
        for t in [1.3333333333333333e53, 0.1 + 0.2, 1_733_123_456.123_456_7, f64::MAX, 5e-324] {
            let mut s = sample();
            s.start_time = Some(t);
            let again = SessionStats::from_json(&s.to_json()).unwrap();
            assert_eq!(again.start_time.map(f64::to_bits), Some(t.to_bits()), "{t:e}");
        }
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
