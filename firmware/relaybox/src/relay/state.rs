//! The session snapshot on disk (`[Relay] state_file`): read once at start,
//! written atomically (temporary file, fsync, rename, fsync of the
//! directory) after changes, at most every [`DEBOUNCE`], and at SIGUSR1.
//! What the bytes mean is the core's business ([`Snapshot`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relaybox_core::Snapshot;

/// Changes are saved at most this often.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(200);

/// The snapshot at `path`, if there is a readable one for `port_range`.
/// A missing file is normal; anything else is logged and ignored.
pub(crate) fn load(path: &Path, port_range: (u16, u16)) -> Option<Snapshot> {
    remove_stale_temps(path);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the session snapshot, starting empty: {e}");
            return None;
        }
    };
    match Snapshot::decode(&bytes) {
        Ok(s) if s.port_range() != port_range => {
            tracing::warn!(
                file = %path.display(),
                "session snapshot is for port_range {}:{}, not {}:{}; its {} sessions are not restored",
                s.port_range().0, s.port_range().1, port_range.0, port_range.1, s.session_count()
            );
            None
        }
        Ok(s) => Some(s),
        Err(e) => {
            // Kept for a look, out of the way of the next snapshot.
            let aside = aside_path(path);
            match std::fs::rename(path, &aside) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    "session snapshot refused, starting without its calls: {e}; the file is kept as {}",
                    aside.display()
                ),
                Err(re) => tracing::warn!(
                    file = %path.display(),
                    "session snapshot refused, starting without its calls: {e} (could not keep it aside: {re})"
                ),
            }
            None
        }
    }
}

/// Where a refused snapshot is kept: `<file>.refused` (one, the latest).
fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".refused");
    path.with_file_name(name)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// Removes temporary files that relays killed while writing left behind
/// (`<name>.tmp.<pid>` of a process that is gone).
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let prefix = format!("{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// file, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// No sessions to keep (they were ended): the file goes.
pub(crate) fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), "cannot remove the session snapshot: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaybox_core::{CoreConfig, SessionTable};

    #[test]
    fn written_atomically_and_read_back_for_the_same_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/sessions.bin");
        assert!(load(&path, (40000, 40100)).is_none());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path.with_file_name("sessions.bin.tmp.4000000000"), b"half").unwrap();
        let table = SessionTable::new(CoreConfig { port_range: (40000, 40100), ..CoreConfig::default() });
        write_atomic(&path, &table.snapshot(crate::clock::Clock::new().mark()).encode()).unwrap();
        assert!(load(&path, (40000, 40100)).is_some());
        assert!(load(&path, (40000, 40200)).is_none());
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["sessions.bin"], "no temporary file left");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path, (40000, 40100)).is_none());
        remove(&path);
        remove(&path);
        assert!(!path.exists());
    }
}
