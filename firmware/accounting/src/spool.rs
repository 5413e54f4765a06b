//! A durable FIFO of records in a directory: one file per record, named so
//! that names sort in arrival order, written to a temporary name, fsynced,
//! renamed and the directory fsynced. A crash leaves either the whole record
//! or nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use relaybox_proto::SessionStats;

pub struct Spool {
    dir: PathBuf,
    counter: AtomicU64,
    /// Records in the queue (counted at open, then kept up to date).
    held: AtomicUsize,
    max_records: usize,
}

impl Spool {
    /// Opens (creating) `dir`, holding at most `max_records` records.
    pub fn open(dir: PathBuf, max_records: usize) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let spool = Spool { dir, counter: AtomicU64::new(0), held: AtomicUsize::new(0), max_records };
        spool.held.store(spool.pending()?.len(), Ordering::Relaxed);
        Ok(spool)
    }

    /// Records waiting.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record; returns its file. A full spool is an error.
    pub fn push(&self, json: &str) -> io::Result<PathBuf> {
        let held = self.held.fetch_add(1, Ordering::Relaxed);
        if held >= self.max_records {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other(format!("the spool is full: {held} records wait (spool_max_records)")));
        }
        let written = self.write(json);
        if written.is_err() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        written
    }

    fn write(&self, json: &str) -> io::Result<PathBuf> {
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
        match fs::remove_file(path) {
            Ok(()) => self.forget_one(),
            Err(e) => tracing::error!(file = %path.display(), "accounting: cannot remove a delivered record: {e}"),
        }
    }

    /// Moves an unreadable record out of the queue (kept for an operator).
    pub fn set_aside(&self, path: &Path) {
        if fs::rename(path, path.with_extension("bad")).is_ok() {
            self.forget_one();
        }
    }

    fn forget_one(&self) {
        let _ = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spool_refuses_until_a_record_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("db"), 2).unwrap();
        let first = spool.push("{}").unwrap();
        spool.push("{}").unwrap();
        let e = spool.push("{}").unwrap_err();
        assert!(e.to_string().contains("the spool is full: 2 records wait"), "{e}");
        assert_eq!(spool.pending().unwrap().len(), 2, "nothing written past the limit");
        spool.done(&first);
        assert_eq!(spool.held(), 1);
        spool.push("{}").unwrap();
        // A restart counts what is on disk.
        drop(spool);
        let again = Spool::open(dir.path().join("db"), 2).unwrap();
        assert_eq!(again.held(), 2);
        assert!(again.push("{}").is_err());
    }
}
