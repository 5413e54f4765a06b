//! The session table as saved across a relay restart: plain data, encoded
//! with postcard behind a magic and a format version, with its length and a
//! CRC-32 after it, so a damaged file (a torn write, a flipped bit on the
//! flash) is refused instead of restored into a table whose ports or
//! answers are wrong. Encoding and decoding are pure; the daemon writes and
//! reads the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::session::Session;
use crate::Millis;

mod v3;

/// A table's sessions encoded one by one and kept between snapshots, so
/// that saving the table re-encodes only the sessions that changed since
/// the last save ([`SessionTable::refresh_snapshot`](crate::SessionTable::refresh_snapshot)),
/// in bounded steps, and the file is put together from the pieces
/// ([`encode`](Self::encode)) without the table: the bytes are exactly
/// those of [`Snapshot::encode`] for the table as it was at the last
/// complete refresh.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    /// Each session's postcard encoding, by session id (the table's order).
    pub(crate) sessions: BTreeMap<u64, Vec<u8>>,
    /// The fields before the sessions, encoded.
    pub(crate) head: Vec<u8>,
    /// False until the first refresh has taken every session in.
    pub(crate) primed: bool,
}

/// The fields of [`Snapshot`] before `sessions`, in its order (postcard is
/// positional: these bytes are the start of a [`Snapshot`]'s).
#[derive(Serialize)]
pub(crate) struct Head<'a> {
    pub port_range: (u16, u16),
    pub next_session_id: u64,
    pub next_flow_id: u64,
    pub bleed_drops: u64,
    pub free: &'a [u16],
}

impl SnapshotCache {
    pub fn new() -> Self {
        SnapshotCache::default()
    }

    /// Sessions in the cache.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes held for the encoded sessions.
    pub fn encoded_bytes(&self) -> usize {
        self.head.len() + self.sessions.values().map(Vec::len).sum::<usize>()
    }

    pub(crate) fn put(&mut self, id: u64, session: &Session) {
        // Serialising plain structs into a Vec cannot fail.
        let bytes = postcard::to_allocvec(session).unwrap_or_default();
        self.sessions.insert(id, bytes);
    }

    pub(crate) fn set_head(&mut self, head: &Head<'_>) {
        self.head.clear();
        self.head = postcard::to_extend(head, std::mem::take(&mut self.head)).unwrap_or_default();
    }

    /// The snapshot file's bytes (see [`Snapshot::encode`]), with `clock`.
    pub fn encode(&self, clock: ClockMark) -> Vec<u8> {
        let size = self.encoded_bytes() + 64;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.head);
        // A sequence's length is a varint, as a usize is.
        let mut out = postcard::to_extend(&self.sessions.len(), out).unwrap_or_default();
        for bytes in self.sessions.values() {
            out.extend_from_slice(bytes);
        }
        let mut out = postcard::to_extend(&Some(clock), out).unwrap_or_default();
        let length = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
        out[8..HEADER].copy_from_slice(&length.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// `RBSS` + format version: a file of another program or version is refused
/// rather than misread.
const MAGIC: [u8; 4] = *b"RBSS";
/// 2: a relay address per side of a session and of each kernel flow
/// (`auto_detect_interfaces` with the kernel datapath).
/// 3: the [`ClockMark`] of the table's clock when the snapshot was taken.
/// 4: per session the parties' signaling IPs, per leg the rule of each
/// latch, the STUN sources and the learning window's start (RTP-bleed
/// protection for parties behind NAT), and the username the proxy gave (a
/// JSON `signaling_ip`).
/// Format 4 files carry the body's length after the version and a CRC-32
/// (IEEE) of everything before it at the end: `RBSS`, version, length (u32
/// LE), body, CRC (u32 LE).
/// Formats 2 and 3 (no length, no checksum: written by releases before
/// format 4) are still read (2 without a mark; both without the
/// format 4 fields, which start empty: a restored latch counts as a
/// fallback until a source a rule vouches for moves it).
const FORMAT_VERSION: u32 = 4;
const FORMAT_WITHOUT_LATCH_RULES: u32 = 3;
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
}

/// Format 3: sessions without the format 4 fields (postcard is positional).
#[derive(Deserialize)]
struct SnapshotV3 {
    port_range: (u16, u16),
    next_session_id: u64,
    next_flow_id: u64,
    bleed_drops: u64,
    free: Vec<u16>,
    sessions: Vec<v3::Session>,
    clock: Option<ClockMark>,
}

impl From<SnapshotV3> for Snapshot {
    fn from(v: SnapshotV3) -> Self {
        let SnapshotV3 { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions, clock } = v;
        let sessions = sessions.into_iter().map(Session::from).collect();
        Snapshot { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions, clock }
    }
}

/// Format 2: format 3 without the clock mark.
#[derive(Deserialize)]
struct SnapshotV2 {
    port_range: (u16, u16),
    next_session_id: u64,
    next_flow_id: u64,
    bleed_drops: u64,
    free: Vec<u16>,
    sessions: Vec<v3::Session>,
}

impl From<SnapshotV2> for Snapshot {
    fn from(v: SnapshotV2) -> Self {
        let SnapshotV2 { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions } = v;
        SnapshotV3 { port_range, next_session_id, next_flow_id, bleed_drops, free, sessions, clock: None }.into()
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
    #[error("snapshot is damaged: its checksum is {stored:08x}, its contents give {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
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
        out.extend_from_slice(&[0; 4]);
        // Serialising plain structs into a Vec cannot fail.
        let mut out = postcard::to_extend(self, out).unwrap_or_default();
        let length = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
        out[8..HEADER].copy_from_slice(&length.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let rest = bytes.strip_prefix(&MAGIC).ok_or(SnapshotError::NotASnapshot)?;
        let (version, body) = rest.split_at_checked(4).ok_or(SnapshotError::NotASnapshot)?;
        let version = u32::from_le_bytes(version.try_into().map_err(|_| SnapshotError::NotASnapshot)?);
        match version {
            FORMAT_VERSION => whole::<Snapshot>(checked(bytes)?),
            FORMAT_WITHOUT_LATCH_RULES => whole::<SnapshotV3>(body).map(Snapshot::from),
            FORMAT_WITHOUT_CLOCK => whole::<SnapshotV2>(body).map(Snapshot::from),
            other => Err(SnapshotError::Version(other)),
        }
    }
}

/// `RBSS`, the version and the body's length.
const HEADER: usize = 12;

/// The body of a checksummed file (format 4 on), once its length and CRC
/// match.
fn checked(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let short = || SnapshotError::Malformed(format!("{} bytes are too few for a snapshot", bytes.len()));
    let (covered, crc) = bytes.split_at_checked(bytes.len().checked_sub(4).ok_or_else(short)?).ok_or_else(short)?;
    let length = covered.get(8..HEADER).ok_or_else(short)?;
    let length = u32::from_le_bytes(length.try_into().map_err(|_| short())?) as usize;
    let body = &covered[HEADER..];
    if body.len() != length {
        return Err(SnapshotError::Malformed(format!(
            "{} bytes of contents where the header says {length}",
            body.len()
        )));
    }
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| short())?);
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    Ok(body)
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

    /// Written by the relay of format 3 (commit 78a0ed7): one answered call,
    /// the caller latched from its public address, the callee (private SDP)
    /// from its NAT, an RTP kernel flow; see tests/snapshot.rs.
    const FORMAT_3: &[u8] = include_bytes!("../tests/fixtures/snapshot-format3.bin");
    const FORMAT_3_MARK: ClockMark = ClockMark { at: 1_700_000_005_000, boot_id: [7; 16], since_boot_ms: 123_456 };

    #[test]
    fn a_format_2_file_is_read_without_a_clock_mark() {
        // Format 2 is format 3 without the trailing `Option<ClockMark>`.
        let tail = postcard::to_allocvec(&Some(FORMAT_3_MARK)).unwrap();
        let mut v2 = FORMAT_3.strip_suffix(tail.as_slice()).expect("the fixture ends with its mark").to_vec();
        v2[4..8].copy_from_slice(&FORMAT_WITHOUT_CLOCK.to_le_bytes());
        let read = Snapshot::decode(&v2).unwrap();
        assert_eq!((read.session_count(), read.clock(), read.port_range()), (1, None, (40000, 40100)));
        assert_eq!(read.sessions[0].call_id, "call-1@example.com");
        assert_eq!(read.sessions[0].streams[0].callee.rtp_peer, Some("203.0.113.77:31000".parse().unwrap()));
    }

    #[test]
    fn a_format_3_file_is_read_with_empty_latching_state() {
        let read = Snapshot::decode(FORMAT_3).unwrap();
        assert_eq!((read.session_count(), read.clock()), (1, Some(FORMAT_3_MARK)));
        let session = &read.sessions[0];
        assert_eq!(session.signaling, crate::session::SignalingIps::default());
        let callee = &session.streams[0].callee;
        assert_eq!(callee.rtp_peer, Some("203.0.113.77:31000".parse().unwrap()));
        assert_eq!(callee.latched_by, [Some(crate::LatchRule::Fallback), None], "an old latch has no rule");
        assert_eq!((callee.stun_peers, callee.window_opened), ([None, None], None));
        assert!(session.streams[0].flows[0].is_some());
        // Written again, it is format 4 and reads back the same.
        let again = Snapshot::decode(&read.encode()).unwrap();
        assert_eq!(again.encode(), read.encode());
        assert_eq!(&read.encode()[4..8], &FORMAT_VERSION.to_le_bytes());
    }

    #[test]
    fn usernames_survive() {
        let mut table =
            crate::SessionTable::new(crate::CoreConfig { port_range: (40000, 40010), ..crate::CoreConfig::default() });
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
        let bytes = table.snapshot(ClockMark { at: 2000, boot_id: [1; 16], since_boot_ms: 5 }).encode();
        let restored = crate::SessionTable::restore(
            crate::CoreConfig { port_range: (40000, 40010), ..crate::CoreConfig::default() },
            Snapshot::decode(&bytes).unwrap(),
            3000,
        );
        assert_eq!(restored.session("c1", 3000).unwrap().username.as_deref(), Some("alice"));
        assert_eq!(restored.session("c2", 3000).unwrap().username, None);
    }
}
