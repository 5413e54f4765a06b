//! The bundle's manifest: which board it is for, its version, and each
//! slot file with its size and SHA-256. JSON, signed as it is (the exact
//! bytes), so that what the box checks is what the operator signed.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 64 * 1024;
/// Most files in one bundle.
pub const MAX_FILES: usize = 64;
/// Longest file name.
const MAX_NAME: usize = 64;
/// Names the bundle's own entries use, which no slot file may take.
pub const RESERVED: &[&str] = &["manifest", "manifest.sig", "TRAILER!!!"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// `BOARD_NAME` of the board the slot files are for.
    pub board: String,
    pub version: String,
    /// In the order the bundle carries them.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of format {FORMAT}: {0}")]
    Json(String),
    #[error("manifest format {0} is not known to this firmware (it reads format {FORMAT})")]
    Format(u32),
    #[error("bad board name {0:?}")]
    Board(String),
    #[error(transparent)]
    Version(#[from] crate::version::BadVersion),
    #[error("the manifest lists no files")]
    Empty,
    #[error("the manifest lists more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("bad file name {0:?} (letters, digits, '.', '-', '_', at most {MAX_NAME})")]
    Name(String),
    #[error("{0} is listed twice")]
    Duplicate(String),
    #[error("{0}: bad SHA-256 (64 lowercase hex digits)")]
    Digest(String),
    #[error("the files add up to {total} bytes, over the {limit}-byte limit")]
    TooLarge { total: u64, limit: u64 },
    #[error("the bundle lacks {0}, which every slot needs")]
    Missing(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !RESERVED.contains(&name)
}

pub(crate) fn valid_board(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Manifest {
    /// Parses and checks a manifest; the files together may not exceed
    /// `max_total` bytes.
    pub fn parse(bytes: &[u8], max_total: u64) -> Result<Manifest, ManifestError> {
        // The format is looked at first so that a newer manifest gets a
        // clear message instead of an unknown-field error.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if head.format != FORMAT {
            return Err(ManifestError::Format(head.format));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.check(max_total)?;
        Ok(m)
    }

    pub fn check(&self, max_total: u64) -> Result<(), ManifestError> {
        if !valid_board(&self.board) {
            return Err(ManifestError::Board(self.board.clone()));
        }
        self.version()?;
        if self.files.is_empty() {
            return Err(ManifestError::Empty);
        }
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles);
        }
        let mut total = 0u64;
        for (i, f) in self.files.iter().enumerate() {
            if !valid_name(&f.name) {
                return Err(ManifestError::Name(f.name.clone()));
            }
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return Err(ManifestError::Duplicate(f.name.clone()));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(ManifestError::Digest(f.name.clone()));
            }
            total = total.saturating_add(f.size);
        }
        if total > max_total {
            return Err(ManifestError::TooLarge { total, limit: max_total });
        }
        Ok(())
    }

    pub fn version(&self) -> Result<Version, crate::version::BadVersion> {
        self.version.parse()
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Fails unless every name in `required` is in the manifest.
    pub fn require(&self, required: &[&str]) -> Result<(), ManifestError> {
        match required.iter().find(|r| self.file(r).is_none()) {
            Some(missing) => Err(ManifestError::Missing(missing.to_string())),
            None => Ok(()),
        }
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The JSON the operator signs (pretty, so that `cpio -i` shows it readably).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            board: "qemu-x86_64".into(),
            version: "1.2.3".into(),
            files: vec![
                FileEntry { name: "vmlinuz".into(), size: 10, sha256: "a".repeat(64) },
                FileEntry { name: "initrd.img".into(), size: 20, sha256: "0".repeat(64) },
            ],
        }
    }

    #[test]
    fn manifests_round_trip_and_are_checked() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_json(), 1000).unwrap(), m);
        assert_eq!(Manifest::parse(&m.to_json(), 29), Err(ManifestError::TooLarge { total: 30, limit: 29 }));
        let with = |f: &dyn Fn(&mut Manifest)| {
            let mut m = sample();
            f(&mut m);
            Manifest::parse(&m.to_json(), 1000).unwrap_err()
        };
        assert_eq!(with(&|m| m.files[1].name = "../x".into()), ManifestError::Name("../x".into()));
        assert_eq!(with(&|m| m.files[1].name = "manifest".into()), ManifestError::Name("manifest".into()));
        assert_eq!(with(&|m| m.files[1].name = "vmlinuz".into()), ManifestError::Duplicate("vmlinuz".into()));
        assert_eq!(with(&|m| m.files[0].sha256 = "A".repeat(64)), ManifestError::Digest("vmlinuz".into()));
        assert_eq!(with(&|m| m.board = "x y".into()), ManifestError::Board("x y".into()));
        assert!(matches!(with(&|m| m.version = "1.x".into()), ManifestError::Version(_)));
        assert_eq!(with(&|m| m.files.clear()), ManifestError::Empty);
        assert_eq!(with(&|m| m.format = 2), ManifestError::Format(2));
        assert!(matches!(Manifest::parse(b"{\"format\":1,\"extra\":1}", 10), Err(ManifestError::Json(_))));
        assert!(matches!(Manifest::parse(b"\xff", 10), Err(ManifestError::Json(_))));
        assert_eq!(sample().require(&["vmlinuz", "cmdline.txt"]), Err(ManifestError::Missing("cmdline.txt".into())));
    }
}
