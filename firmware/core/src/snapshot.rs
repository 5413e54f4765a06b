//! The session table as saved across a relay restart: plain data, encoded
//! with postcard behind a magic and a format version. Encoding and decoding
//! are pure; the daemon writes and reads the file.

use serde::{Deserialize, Serialize};

use crate::session::Session;

/// `RBSS` + format version: a file of another program or version is refused
/// rather than misread.
const MAGIC: [u8; 4] = *b"RBSS";
/// 2: a relay address per side of a session and of each kernel flow
/// (`auto_detect_interfaces` with the kernel datapath).
const FORMAT_VERSION: u32 = 2;

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
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let (snapshot, left) =
            postcard::take_from_bytes::<Snapshot>(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if !left.is_empty() {
            return Err(SnapshotError::Malformed(format!("{} bytes after the end", left.len())));
        }
        Ok(snapshot)
    }
}
