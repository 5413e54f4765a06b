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
