//! Files on the box written so that a power cut never leaves half a file:
//! write a temporary file in the same directory, fsync it, rename it over
//! the old one, fsync the directory. `config.ini` also keeps the file it
//! replaced as `config.ini.prev`, for one-click rollback.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The previous version of `path`: `config.ini` -> `config.ini.prev`.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".prev");
    path.with_file_name(name)
}

/// Step one of an atomic write: the complete new contents in a temporary
/// file next to `path`, synced to disk. Until [`commit`] runs, `path` is
/// untouched; a crash here leaves only a stray temporary file.
pub fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), crate::auth::random_hex(8)));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Step two: rename the temporary file over `path` and sync the directory
/// so that the rename itself survives a crash.
pub fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

/// [`write_temp`] then [`commit`].
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    commit(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(default)
}

/// Replaces the configuration file with `text`, keeping the old one as
/// `.prev`. Stray temporary files from an earlier crash are removed.
pub fn save_config(path: &Path, text: &str) -> io::Result<()> {
    remove_stray_temps(path);
    let mode = mode_of(path, 0o640);
    match fs::read(path) {
        Ok(old) => write_atomic(&prev_path(path), &old, mode)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_atomic(path, text.as_bytes(), mode)
}

/// Puts `.prev` back in place; the file it replaces becomes `.prev`, so a
/// rollback can itself be rolled back.
pub fn rollback(path: &Path) -> io::Result<()> {
    let prev = prev_path(path);
    let previous = fs::read(&prev)?;
    let mode = mode_of(path, 0o640);
    let current = fs::read(path).ok();
    write_atomic(path, &previous, mode)?;
    if let Some(current) = current {
        write_atomic(&prev, &current, mode)?;
    }
    Ok(())
}

fn remove_stray_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    if let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The journal of a [`replace_together`] in progress: the names of the
/// files whose `.new` copies are complete.
pub const JOURNAL: &str = ".replace";

fn new_name(name: &str) -> String {
    format!("{name}.new")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces several files of `dir` as one unit (a certificate and its key):
/// after a power cut either all of them are new or all are old, once
/// [`finish_replace`] has run (the box's init runs it at every boot, the
/// web page at its start). Works on vfat, which has no atomic directory
/// swap: each new file is written in full as `NAME.new` and synced, then
/// the journal naming them is written (the commit point), then each is
/// renamed into place and the journal removed.
pub fn replace_together(dir: &Path, files: &[(&str, &[u8], u32)]) -> io::Result<()> {
    finish_replace(dir)?;
    for (name, contents, mode) in files {
        if name.contains('/') || name.contains('\n') || name.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a plain file name is needed"));
        }
        write_atomic(&dir.join(new_name(name)), contents, *mode)?;
    }
    let list: String = files.iter().map(|(name, _, _)| format!("{name}\n")).collect();
    write_atomic(&dir.join(JOURNAL), list.as_bytes(), 0o600)?;
    finish_replace(dir).map(|_| ())
}

/// Completes a [`replace_together`] that a crash interrupted after its
/// commit point (renames what is left), or forgets one interrupted before
/// it (removes the stray `.new` files). Returns the names it put in place.
pub fn finish_replace(dir: &Path) -> io::Result<Vec<String>> {
    let journal = dir.join(JOURNAL);
    let names: Vec<String> = match fs::read_to_string(&journal) {
        Ok(text) => text.lines().filter(|l| !l.is_empty() && !l.contains('/')).map(str::to_string).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // No commit: a half-written replacement is dropped.
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".new") {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut done = Vec::new();
    for name in &names {
        let new = dir.join(new_name(name));
        if new.exists() {
            fs::rename(&new, dir.join(name))?;
            done.push(name.clone());
        }
    }
    sync_dir(dir)?;
    fs::remove_file(&journal)?;
    sync_dir(dir)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    #[test]
    fn a_certificate_and_its_key_are_replaced_together() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("relay.crt"), "old cert").unwrap();
        fs::write(d.join("relay.key"), "old key").unwrap();
        replace_together(d, &[("relay.crt", b"new cert", 0o644), ("relay.key", b"new key", 0o600)]).unwrap();
        assert_eq!((read(d, "relay.crt"), read(d, "relay.key")), ("new cert".into(), "new key".into()));
        assert!(!d.join(JOURNAL).exists() && !d.join("relay.crt.new").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(d.join("relay.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_power_cut_leaves_both_old_or_both_new() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let reset = || {
            for f in fs::read_dir(d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
            fs::write(d.join("relay.crt"), "old cert").unwrap();
            fs::write(d.join("relay.key"), "old key").unwrap();
        };
        // Cut before the commit: both new files written, no journal.
        reset();
        fs::write(d.join("relay.crt.new"), "new cert").unwrap();
        fs::write(d.join("relay.key.new"), "new key").unwrap();
        assert_eq!(finish_replace(d).unwrap(), Vec::<String>::new());
        assert_eq!((read(d, "relay.crt"), read(d, "relay.key")), ("old cert".into(), "old key".into()));
        assert!(!d.join("relay.key.new").exists());
        // Cut after the commit, after the first rename: the second follows.
        reset();
        fs::write(d.join("relay.crt"), "new cert").unwrap();
        fs::write(d.join("relay.key.new"), "new key").unwrap();
        fs::write(d.join(JOURNAL), "relay.crt\nrelay.key\n").unwrap();
        assert_eq!(finish_replace(d).unwrap(), ["relay.key"]);
        assert_eq!((read(d, "relay.crt"), read(d, "relay.key")), ("new cert".into(), "new key".into()));
        assert!(!d.join(JOURNAL).exists());
        // Nothing pending: nothing happens.
        assert_eq!(finish_replace(d).unwrap(), Vec::<String>::new());
        assert_eq!(read(d, "relay.key"), "new key");
    }
}
