//! A durable FIFO of records in a directory: one file per record, named so
//! that names sort in arrival order, written to a temporary name, fsynced,
//! renamed and the directory fsynced. A crash leaves either the whole record
//! or nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use relaybox_proto::SessionStats;

pub struct Spool {
    dir: PathBuf,
    counter: AtomicU64,
}

impl Spool {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(Spool { dir, counter: AtomicU64::new(0) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record; returns its file.
    pub fn push(&self, json: &str) -> io::Result<PathBuf> {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        let name = format!("{ms:020}-{n:06}.json");
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(json.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Spooled records, oldest first.
    pub fn pending(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json") && !is_hidden(p))
            .collect();
        files.sort();
        Ok(files)
    }

    pub fn read(&self, path: &Path) -> Result<SessionStats, String> {
        let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
        SessionStats::from_json(&text).map_err(|e| e.to_string())
    }

    /// A delivered record.
    pub fn done(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            tracing::error!(file = %path.display(), "accounting: cannot remove a delivered record: {e}");
        }
    }

    /// Moves an unreadable record out of the queue (kept for an operator).
    pub fn set_aside(&self, path: &Path) {
        let _ = fs::rename(path, path.with_extension("bad"));
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}
