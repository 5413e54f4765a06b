//! The session table as saved across a relay restart: plain data, encoded
//! with postcard behind a magic and a format version. Encoding and decoding
//! are pure; the daemon writes and reads the file.

use serde::{Deserialize, Serialize};

use crate::session::Session;
use crate::Millis;

/// `RBSS` + format version: a file of another program or version is refused
/// rather than misread.
const MAGIC: [u8; 4] = *b"RBSS";
/// 2: a relay address per side of a session and of each kernel flow
/// (`auto_detect_interfaces` with the kernel datapath).
/// 3: the [`ClockMark`] of the table's clock when the snapshot was taken.
/// 4: the sessions' usernames (from a JSON `signaling_ip`), after the rest.
/// Formats 2 and 3 are still read (without a mark, without usernames).
const FORMAT_VERSION: u32 = 4;
const FORMAT_WITHOUT_USERNAMES: u32 = 3;
const FORMAT_WITHOUT_CLOCK: u32 = 2;

/// Where the table's clock stood when a snapshot was taken, against a clock
/// that counts from boot and never steps. The core keeps it and hands it
/// back; the daemon uses it to continue the same timescale after a restart
/// even when the wall clock was set in between (all times in the sessions
/// are on that timescale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockMark {
    /// The table's time (Unix milliseconds of the relay's clock).
    pub at: Millis,
    /// Which boot `since_boot_ms` counts from (the kernel's boot id).
    pub boot_id: [u8; 16],
    /// Milliseconds since that boot.
    pub since_boot_ms: u64,
}

/// Everything [`SessionTable::restore`](crate::SessionTable::restore)
/// needs to continue where [`SessionTable::snapshot`](crate::SessionTable::snapshot)
/// left off: sessions with their latches, counters and kernel flows, the
/// free-port order and the id counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub(crate) port_range: (u16, u16),
    pub(crate) next_session_id: u64,
    pub(crate) next_flow_id: u64,
    pub(crate) bleed_drops: u64,
    /// Free port pairs, front first.
    pub(crate) free: Vec<u16>,
    pub(crate) sessions: Vec<Session>,
    pub(crate) clock: Option<ClockMark>,
    /// Session id and username, for the sessions that have one.
    pub(crate) usernames: Vec<(u64, String)>,
}

/// Format 3: format 4 without the usernames (postcard is positional).
#[derive(Deserialize)]
struct SnapshotV3 {
    port_range: (u16, u16),
    next_session_id: u64,
    next_flow_id: u64,
    bleed_drops: u64,
    free: Vec<u16>,
    sessions: Vec<Session>,
    clock: Option<ClockMark>,
}

impl From<SnapshotV3> for Snapshot {
    fn from(v: SnapshotV3) -> Self {
        let SnapshotV3 { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions, clock } = v;
        Snapshot {
            port_range,
            next_session_id,
            next_flow_id,
            bleed_drops,
            free,
            sessions,
            clock,
            usernames: Vec::new(),
        }
    }
}

/// Format 2: the same fields without the clock mark (postcard is positional).
#[derive(Deserialize)]
struct SnapshotV2 {
    port_range: (u16, u16),
    next_session_id: u64,
    next_flow_id: u64,
    bleed_drops: u64,
    free: Vec<u16>,
    sessions: Vec<Session>,
}

impl From<SnapshotV2> for Snapshot {
    fn from(v: SnapshotV2) -> Self {
        let SnapshotV2 { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions } = v;
        Snapshot {
            port_range,
            next_session_id,
            next_flow_id,
            bleed_drops,
            free,
            sessions,
            clock: None,
            usernames: Vec::new(),
        }
    }
}

/// Why saved bytes cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a relaybox session snapshot")]
    NotASnapshot,
    #[error("snapshot format {0} is not supported (this relay reads format {FORMAT_VERSION})")]
    Version(u32),
    #[error("snapshot is damaged: {0}")]
    Malformed(String),
}

impl Snapshot {
    /// The `port_range` of the table it was taken from.
    pub fn port_range(&self) -> (u16, u16) {
        self.port_range
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The clock mark it was taken with; `None` from a format-2 file.
    pub fn clock(&self) -> Option<ClockMark> {
        self.clock
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.sessions.len() * 512);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Serialising plain structs into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let rest = bytes.strip_prefix(&MAGIC).ok_or(SnapshotError::NotASnapshot)?;
        let (version, body) = rest.split_at_checked(4).ok_or(SnapshotError::NotASnapshot)?;
        let version = u32::from_le_bytes(version.try_into().map_err(|_| SnapshotError::NotASnapshot)?);
        match version {
            FORMAT_VERSION => whole::<Snapshot>(body),
            FORMAT_WITHOUT_USERNAMES => whole::<SnapshotV3>(body).map(Snapshot::from),
            FORMAT_WITHOUT_CLOCK => whole::<SnapshotV2>(body).map(Snapshot::from),
            other => Err(SnapshotError::Version(other)),
        }
    }
}

/// Decodes `body` as exactly one `T`.
fn whole<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, SnapshotError> {
    let (value, left) = postcard::take_from_bytes::<T>(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if !left.is_empty() {
        return Err(SnapshotError::Malformed(format!("{} bytes after the end", left.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreConfig;

    #[test]
    fn a_format_2_file_is_read_without_a_clock_mark() {
        let mut table = crate::SessionTable::new(CoreConfig { port_range: (40000, 40010), ..CoreConfig::default() });
        let relay = "192.0.2.1".parse().unwrap();
        let offer = relaybox_proto::UpdateRequest {
            party: relaybox_proto::PartyType::Request,
            dialog_id: None,
            call_id: "c1".into(),
            cseq: relaybox_proto::CSeq { number: 1, method: "INVITE".into() },
            from_uri: "sip:a@example.com".into(),
            to_uri: "sip:b@example.com".into(),
            from_tag: "ft".into(),
            to_tag: None,
            user_agent: String::new(),
            signaling_ip: None,
            username: None,
            media_relay: None,
            media: relaybox_proto::MediaItem::parse_list("audio:10.0.0.5:4000:sendrecv:ice=no", 8).unwrap(),
        };
        table.update(&offer, relay, 1000).unwrap();
        let mut snapshot = table.snapshot(ClockMark { at: 2000, boot_id: [1; 16], since_boot_ms: 5 });
        snapshot.clock = None;
        // Format 2 is format 4 without the trailing `Option` (its `None`
        // tag) and the usernames (an empty list's length).
        let mut v2 = snapshot.encode();
        assert_eq!(v2.pop(), Some(0));
        assert_eq!(v2.pop(), Some(0));
        v2[4..8].copy_from_slice(&FORMAT_WITHOUT_CLOCK.to_le_bytes());
        let read = Snapshot::decode(&v2).unwrap();
        assert_eq!((read.session_count(), read.clock(), read.port_range()), (1, None, (40000, 40010)));
        assert_eq!(read.sessions[0].call_id, "c1");
    }

    #[test]
    fn usernames_survive_and_a_format_3_file_is_read_without_them() {
        let mut table = crate::SessionTable::new(CoreConfig { port_range: (40000, 40010), ..CoreConfig::default() });
        let mut offer = relaybox_proto::UpdateRequest {
            party: relaybox_proto::PartyType::Request,
            dialog_id: None,
            call_id: "c1".into(),
            cseq: relaybox_proto::CSeq { number: 1, method: "INVITE".into() },
            from_uri: "Alice <sip:alice@example.com>".into(),
            to_uri: "sip:b@example.com".into(),
            from_tag: "ft".into(),
            to_tag: None,
            user_agent: String::new(),
            signaling_ip: None,
            username: Some("alice".into()),
            media_relay: None,
            media: relaybox_proto::MediaItem::parse_list("audio:10.0.0.5:4000:sendrecv:ice=no", 8).unwrap(),
        };
        table.update(&offer, "192.0.2.1".parse().unwrap(), 1000).unwrap();
        offer.call_id = "c2".into();
        offer.username = None;
        table.update(&offer, "192.0.2.1".parse().unwrap(), 1000).unwrap();
        let snapshot = table.snapshot(ClockMark { at: 2000, boot_id: [1; 16], since_boot_ms: 5 });
        let bytes = snapshot.encode();
        let restored = crate::SessionTable::restore(
            CoreConfig { port_range: (40000, 40010), ..CoreConfig::default() },
            Snapshot::decode(&bytes).unwrap(),
            3000,
        );
        assert_eq!(restored.session("c1", 3000).unwrap().username.as_deref(), Some("alice"));
        assert_eq!(restored.session("c2", 3000).unwrap().username, None);
        // Format 3 is format 4 without the usernames.
        let v3 = {
            let mut s = snapshot.clone();
            s.usernames.clear();
            let mut b = s.encode();
            assert_eq!(b.pop(), Some(0));
            b[4..8].copy_from_slice(&FORMAT_WITHOUT_USERNAMES.to_le_bytes());
            b
        };
        let read = Snapshot::decode(&v3).unwrap();
        assert_eq!((read.session_count(), read.clock().map(|c| c.at)), (2, Some(2000)));
    }
}
