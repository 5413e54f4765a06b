//! The box's whole configuration as one file, and back: a backup is a tar
//! (ustar) of the configuration directory's files (`relaybox.ini` or any
//! top-level `.ini`, the
//! `.conf` files init sources, `web.passwd`, `shadow`, `sysctl.conf` and
//! `tls/`; not logs, the clock file or `.prev` copies). A restore is
//! checked file by file with the parsers the box itself uses (unknown
//! files, anything init could run, settings the daemons refuse and
//! certificates that do not chain are refused, nothing is replaced), then
//! staged as `.restore/` (renamed into place when complete) and applied by
//! the next boot's init ([`boot`]), which replaces the configuration as a
//! whole and can be redone after a power cut. A factory reset is a marker
//! the next boot acts on: it empties the directory (init then writes the
//! defaults). Used by `relaybox config` and the web page's Backup page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use relaybox_config::{shell_var, Config, NetworkSettings, SystemSettings};

use crate::files::{finish_replace, write_atomic};

/// A staged restore waiting for the next boot.
pub const PENDING_RESTORE: &str = ".restore";
/// The factory-reset marker.
pub const FACTORY_RESET: &str = ".factory-reset";
/// Largest backup `relaybox config restore` accepts (the web page's is
/// `[Web] max_backup`).
pub const MAX_BACKUP: usize = 1024 * 1024;
/// Largest file in a backup.
pub const MAX_FILE: usize = 256 * 1024;
/// Most entries in a backup.
pub const MAX_ENTRIES: usize = 64;

/// Top-level files a backup holds.
const TOP_FILES: &[&str] = &[
    "relaybox.ini",
    "network.conf",
    "system.conf",
    "services.conf",
    "sysctl.conf",
    "shadow",
    crate::auth::PASSWORD_FILE,
];
/// The certificates directory.
const TLS_DIR: &str = "tls";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a backup: {0}")]
    Format(String),
    #[error("{file}: {reason}")]
    Refused { file: String, reason: String },
    #[error("{0}")]
    Io(String),
}

fn io_err(e: io::Error) -> BackupError {
    BackupError::Io(e.to_string())
}

fn refused(file: &str, reason: impl Into<String>) -> BackupError {
    BackupError::Refused { file: file.to_string(), reason: reason.into() }
}

/// Whether `path` (relative, `/`-separated) is a file a backup may hold.
fn allowed(path: &str) -> bool {
    if TOP_FILES.contains(&path) || is_config_file(path) {
        return true;
    }
    let Some(name) = path.strip_prefix("tls/") else { return false };
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && [".pem", ".crt", ".key", ".csr"].iter().any(|ext| name.ends_with(ext))
}

/// The daemons' configuration file (`relaybox.ini` on the box; any
/// top-level `NAME.ini`).
fn is_config_file(path: &str) -> bool {
    path.strip_suffix(".ini").is_some_and(|stem| {
        !stem.is_empty() && stem.len() <= 64 && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    })
}

/// The files of the configuration directory that go into a backup.
fn collect(dir: &Path) -> io::Result<BTreeMap<String, (Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = BTreeMap::new();
    let mut add = |rel: String, path: PathBuf| -> io::Result<()> {
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_file() && allowed(&rel) {
            files.insert(rel, (fs::read(&path)?, meta.permissions().mode() & 0o777));
        }
        Ok(())
    };
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if TOP_FILES.contains(&name.as_str()) || is_config_file(&name) {
            add(name, e.path())?;
        }
    }
    if let Ok(entries) = fs::read_dir(dir.join(TLS_DIR)) {
        for e in entries.flatten() {
            add(format!("{TLS_DIR}/{}", e.file_name().to_string_lossy()), e.path())?;
        }
    }
    Ok(files)
}

// ---- ustar, the part of it a backup needs: directories and regular files.

fn octal(field: &mut [u8], value: u64) {
    let last = field.len() - 1;
    let text = format!("{value:0last$o}");
    field[..last].copy_from_slice(text.as_bytes());
    field[last] = 0;
}

fn header(name: &str, mode: u32, size: u64, kind: u8, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

fn tar(files: &BTreeMap<String, (Vec<u8>, u32)>, mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if files.keys().any(|k| k.starts_with("tls/")) {
        out.extend_from_slice(&header("tls/", 0o700, 0, b'5', mtime));
    }
    for (name, (data, mode)) in files {
        out.extend_from_slice(&header(name, *mode, data.len() as u64, b'0', mtime));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text: String = field.iter().take_while(|b| **b != 0 && **b != b' ').map(|b| *b as char).collect();
    let text = text.trim_start();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The files of a tar: `path -> (contents, mode)`. Directories are skipped,
/// anything but regular files and directories refused.
fn untar(data: &[u8], max: usize) -> Result<BTreeMap<String, (Vec<u8>, u32)>, BackupError> {
    let bad = |why: &str| BackupError::Format(why.to_string());
    if data.len() > max {
        return Err(bad(&format!("larger than {} KiB", max / 1024)));
    }
    let mut files = BTreeMap::new();
    let mut at = 0;
    let mut entries = 0;
    loop {
        let Some(h) = data.get(at..at + 512) else { return Err(bad("it ends without the tar end marker")) };
        if h.iter().all(|b| *b == 0) {
            break;
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(bad(&format!("more than {MAX_ENTRIES} entries")));
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| bad("a header checksum is not a number"))?;
        let sum: u64 =
            h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
        if sum != stored {
            return Err(bad("a tar header's checksum is wrong"));
        }
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let mut name = String::from_utf8(h[..name_end].to_vec()).map_err(|_| bad("a file name is not UTF-8"))?;
        if &h[257..262] == b"ustar" && h[345] != 0 {
            let prefix_end = h[345..500].iter().position(|b| *b == 0).unwrap_or(155);
            let prefix =
                String::from_utf8(h[345..345 + prefix_end].to_vec()).map_err(|_| bad("a name is not UTF-8"))?;
            name = format!("{prefix}/{name}");
        }
        let name = name.trim_start_matches("./").to_string();
        let size = parse_octal(&h[124..136]).ok_or_else(|| bad("a size is not a number"))? as usize;
        let mode = parse_octal(&h[100..108]).unwrap_or(0o600) as u32 & 0o777;
        at += 512;
        match h[156] {
            b'5' => {
                let dir = name.trim_end_matches('/');
                if !dir.is_empty() && dir != "." && dir != TLS_DIR {
                    return Err(refused(&name, "a directory other than tls/"));
                }
            }
            b'0' | 0 => {
                if size > MAX_FILE {
                    return Err(refused(&name, format!("larger than {} KiB", MAX_FILE / 1024)));
                }
                if !allowed(&name) {
                    return Err(refused(&name, "not a file of the box's configuration"));
                }
                let contents = data.get(at..at + size).ok_or_else(|| bad("a file is cut short"))?.to_vec();
                if files.insert(name.clone(), (contents, mode)).is_some() {
                    return Err(refused(&name, "twice in the backup"));
                }
                at += size.div_ceil(512) * 512;
            }
            _ => return Err(refused(&name, "not a regular file (links and devices are refused)")),
        }
    }
    if files.is_empty() {
        return Err(bad("it holds no configuration file"));
    }
    Ok(files)
}

/// A backup of the configuration directory `dir`.
pub fn backup(dir: &Path) -> Result<Vec<u8>, BackupError> {
    let files = collect(dir).map_err(io_err)?;
    let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(tar(&files, mtime))
}

// ---- checks: the parsers the box uses on each file.

/// A `KEY=VALUE` file init sources as shell: only assignments of plain
/// values (letters, digits, space and `._:/,@+-`, optionally in double
/// quotes), comments and blank lines.
fn check_shell(file: &str, text: &str) -> Result<(), BackupError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ok = line.split_once('=').is_some_and(|(key, value)| {
            let key_ok = key.bytes().next().is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            key_ok && value.bytes().all(|b| b.is_ascii_alphanumeric() || b" ._:/,@+-".contains(&b))
        });
        if !ok {
            return Err(refused(file, format!("line {}: only KEY=value lines with plain values are allowed", i + 1)));
        }
    }
    Ok(())
}

fn check_number(file: &str, text: &str, key: &str, max: u64) -> Result<(), BackupError> {
    match shell_var(text, key) {
        None => Ok(()),
        Some(v) if v.parse::<u64>().is_ok_and(|n| n <= max) => Ok(()),
        Some(v) => Err(refused(file, format!("{key}={v:?}: a number from 0 to {max}"))),
    }
}

fn text<'a>(file: &str, data: &'a [u8]) -> Result<&'a str, BackupError> {
    std::str::from_utf8(data).map_err(|_| refused(file, "not UTF-8 text"))
}

/// Checks a configuration laid out in `dir` (a staged restore, or a box's
/// directory) as the box would read it.
pub fn check_dir(dir: &Path) -> Result<(), BackupError> {
    let files = collect(dir).map_err(io_err)?;
    for (name, (data, _)) in &files {
        let t = text(name, data)?;
        match name.as_str() {
            n if is_config_file(n) => {
                Config::parse(t, name, dir).map_err(|e| refused(name, e.to_string()))?;
            }
            "network.conf" => {
                check_shell(name, t)?;
                NetworkSettings::parse(t).check().map_err(|e| refused(name, join(&e)))?;
            }
            "system.conf" => {
                check_shell(name, t)?;
                SystemSettings::parse(t).check().map_err(|e| refused(name, join(&e)))?;
                for key in ["LOG_BUFFER_KB", "LOG_KEEP_KB"] {
                    check_number(name, t, key, 65_536)?;
                }
                check_number(name, t, "LOG_SAVE_MINUTES", 10_080)?;
            }
            "services.conf" => {
                check_shell(name, t)?;
                for key in ["RELAY", "DISPATCHER", "WEB", "WATCHDOG"] {
                    if let Some(v) = shell_var(t, key) {
                        if v != "yes" && v != "no" {
                            return Err(refused(name, format!("{key}={v:?}: yes or no")));
                        }
                    }
                }
            }
            "sysctl.conf" => {
                for (i, line) in t.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                        continue;
                    }
                    let ok = line.split_once('=').is_some_and(|(k, v)| {
                        k.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
                            && v.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b" ._:/,-".contains(&b))
                    });
                    if !ok {
                        return Err(refused(name, format!("line {}: expected key = value", i + 1)));
                    }
                }
            }
            "shadow" => check_shadow(name, t)?,
            n if n == crate::auth::PASSWORD_FILE => check_password_hash(name, t)?,
            _ => {} // tls/: checked below as a whole
        }
    }
    let tls = dir.join(TLS_DIR);
    if tls.join("relay.crt").exists() {
        if !(tls.join("relay.key").exists() && tls.join("ca.pem").exists()) {
            return Err(refused("tls/relay.crt", "needs relay.key and ca.pem beside it"));
        }
        let files = relaybox_tls::TlsFiles::for_role(&tls, relaybox_tls::Role::Relay);
        let shown = |e: relaybox_tls::TlsError| {
            refused("tls/relay.crt", e.to_string().replace(&tls.display().to_string(), "tls"))
        };
        relaybox_tls::client_config(&files, relaybox_tls::PeerRole::strict(relaybox_tls::Role::Dispatcher))
            .map_err(shown)?;
        relaybox_tls::check_own_certificate(&files, relaybox_tls::Role::Relay).map_err(shown)?;
    }
    if tls.join("web.crt").exists() || tls.join("web.key").exists() {
        crate::server::tls_config(&tls.join("web.crt"), &tls.join("web.key"))
            .map_err(|e| refused("tls/web.crt", format!("{e:#}").replace(&tls.display().to_string(), "tls")))?;
    }
    Ok(())
}

fn check_shadow(name: &str, t: &str) -> Result<(), BackupError> {
    if t.bytes().any(|b| b.is_ascii_control() && b != b'\n') || t.lines().any(|l| l.split(':').count() < 2) {
        return Err(refused(name, "expected name:hash:... lines"));
    }
    Ok(())
}

fn check_password_hash(name: &str, t: &str) -> Result<(), BackupError> {
    if !t.trim().starts_with("$argon2") || t.trim().lines().count() != 1 {
        return Err(refused(name, "expected one argon2 hash (relaybox web set-password)"));
    }
    Ok(())
}

fn join(errors: &[relaybox_config::SystemError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

fn write_tree(root: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for (name, (data, mode)) in files {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
            }
        }
        // Keys stay private whatever mode the archive says.
        let mode = if name.ends_with(".key") || name == "shadow" || name == crate::auth::PASSWORD_FILE {
            0o600
        } else {
            mode & 0o644
        };
        write_atomic(&path, data, mode)?;
    }
    Ok(())
}

/// Checks `data` (at most `max` bytes) and stages it in `dir` for the next
/// boot; nothing in use is touched. Returns the names of the files it holds.
pub fn stage_restore(dir: &Path, data: &[u8], max: usize) -> Result<Vec<String>, BackupError> {
    let files = untar(data, max)?;
    let tmp = dir.join(format!(".restore.tmp-{}", crate::auth::random_hex(6)));
    let result = (|| {
        write_tree(&tmp, &files).map_err(io_err)?;
        check_dir(&tmp)?;
        let pending = dir.join(PENDING_RESTORE);
        if pending.exists() {
            fs::remove_dir_all(&pending).map_err(io_err)?;
        }
        fs::rename(&tmp, &pending).map_err(io_err)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| files.into_keys().collect())
}

/// Marks `dir` for a factory reset at the next boot.
pub fn request_factory_reset(dir: &Path) -> Result<(), BackupError> {
    write_atomic(&dir.join(FACTORY_RESET), b"everything in this directory is removed at the next boot\n", 0o600)
        .map_err(io_err)
}

/// Whether a factory reset or a restore waits for the next boot.
pub fn pending(dir: &Path) -> Option<&'static str> {
    if dir.join(FACTORY_RESET).exists() {
        Some("a factory reset")
    } else if dir.join(PENDING_RESTORE).is_dir() {
        Some("a restored backup")
    } else {
        None
    }
}

/// At boot, before anything reads the configuration: a requested factory
/// reset (everything in `dir` removed but `lost+found`), else a staged
/// restore (its files written in, the configuration files it lacks
/// removed), then an interrupted certificate replacement finished. Each
/// step can be redone after a power cut. Returns what was done.
pub fn boot(dir: &Path) -> Result<Vec<String>, BackupError> {
    let mut done = Vec::new();
    if dir.join(FACTORY_RESET).exists() {
        for e in fs::read_dir(dir).map_err(io_err)?.flatten() {
            let name = e.file_name();
            if name == "lost+found" || name == FACTORY_RESET {
                continue;
            }
            let path = e.path();
            if fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path).map_err(io_err)?;
            } else {
                fs::remove_file(&path).map_err(io_err)?;
            }
        }
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        fs::remove_file(dir.join(FACTORY_RESET)).map_err(io_err)?;
        done.push("factory reset: the configuration partition was emptied; the defaults follow".to_string());
    }
    let pending = dir.join(PENDING_RESTORE);
    if pending.is_dir() {
        let files = collect(&pending).map_err(io_err)?;
        let current = collect(dir).map_err(io_err)?;
        write_tree(dir, &files).map_err(io_err)?;
        for name in current.keys().filter(|n| !files.contains_key(*n)) {
            fs::remove_file(dir.join(name)).map_err(io_err)?;
        }
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        fs::remove_dir_all(&pending).map_err(io_err)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        let mut line = String::from("restored a backup:");
        for name in files.keys() {
            let _ = write!(line, " {name}");
        }
        done.push(line);
    }
    for e in fs::read_dir(dir).map_err(io_err)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".restore.tmp-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    if let Ok(names) = finish_replace(&dir.join(TLS_DIR)) {
        if !names.is_empty() {
            done.push(format!("finished an interrupted certificate replacement: {}", names.join(" ")));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) {
        fs::write(dir.join("relaybox.ini"), "[Relay]\nport_range = 40000:40100\n").unwrap();
        fs::write(dir.join("system.conf"), "HOSTNAME=\"edge-1\"\nNTP_SERVERS=\"\"\nLOG_KEEP_KB=64\n").unwrap();
        fs::write(dir.join("network.conf"), "WAN_MODE=dhcp\nLAN_ADDRESS=192.168.88.1/24\n").unwrap();
        fs::write(dir.join("services.conf"), "RELAY=yes\n").unwrap();
        fs::write(dir.join("clock"), "1700000000\n").unwrap();
        fs::create_dir_all(dir.join("log")).unwrap();
        fs::write(dir.join("log/previous.log"), "old log\n").unwrap();
    }

    #[test]
    fn a_backup_restores_as_the_whole_configuration_at_the_next_boot() {
        let a = tempfile::tempdir().unwrap();
        sample(a.path());
        let data = backup(a.path()).unwrap();
        let names: Vec<String> = untar(&data, MAX_BACKUP).unwrap().into_keys().collect();
        assert_eq!(names, ["network.conf", "relaybox.ini", "services.conf", "system.conf"], "no clock, no logs");

        let b = tempfile::tempdir().unwrap();
        fs::write(b.path().join("relaybox.ini"), "[Relay]\nport_range = 50000:50100\n").unwrap();
        fs::write(b.path().join("sysctl.conf"), "net.core.rmem_max = 1000000\n").unwrap();
        stage_restore(b.path(), &data, MAX_BACKUP).unwrap();
        assert_eq!(pending(b.path()), Some("a restored backup"));
        assert!(fs::read_to_string(b.path().join("relaybox.ini")).unwrap().contains("50000"), "nothing in use changes");
        let done = boot(b.path()).unwrap();
        assert!(done[0].starts_with("restored a backup: network.conf relaybox.ini"), "{done:?}");
        assert!(fs::read_to_string(b.path().join("relaybox.ini")).unwrap().contains("40000"));
        assert!(!b.path().join("sysctl.conf").exists(), "a file the backup lacks goes");
        assert_eq!(pending(b.path()), None);
        assert_eq!(boot(b.path()).unwrap(), Vec::<String>::new(), "done once");
    }

    #[test]
    fn a_bad_backup_changes_nothing() {
        let a = tempfile::tempdir().unwrap();
        sample(a.path());
        let good = collect(a.path()).unwrap();
        let with = |name: &str, text: &str| {
            let mut files = good.clone();
            files.insert(name.to_string(), (text.as_bytes().to_vec(), 0o644));
            tar(&files, 0)
        };
        let cases = [
            (with("system.conf", "HOSTNAME=\"$(reboot)\"\n"), "system.conf"),
            (with("system.conf", "HOSTNAME=x\nLOG_KEEP_KB=lots\n"), "LOG_KEEP_KB"),
            (with("network.conf", "WAN_MODE=pppoe\n"), "WAN_MODE"),
            (with("services.conf", "RELAY=yes; reboot\n"), "services.conf"),
            (with("services.conf", "RELAY=maybe\n"), "yes or no"),
            (with("services.conf", "RELAY=yes\nEXTRA=`reboot`\n"), "services.conf: line 2"),
            (with("network.conf", "WAN_MODE=dhcp\nWAN_IF=eth0;reboot\n"), "network.conf: line 2"),
            (with("relaybox.ini", "[Relay]\nport_range = 1:2\n"), "port_range"),
            (with("web.passwd", "hunter2\n"), "argon2"),
            (with("tls/relay.crt", "not a certificate"), "tls/relay.crt"),
            (with("etc/passwd", "x"), "not a file of the box's configuration"),
            (with("../escape.ini", "x"), "not a file of the box's configuration"),
        ];
        let b = tempfile::tempdir().unwrap();
        for (data, why) in cases {
            let e = stage_restore(b.path(), &data, MAX_BACKUP).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (expected {why})");
            assert_eq!(pending(b.path()), None);
            assert_eq!(fs::read_dir(b.path()).unwrap().count(), 0, "nothing left behind: {e}");
        }
        let mut truncated = backup(a.path()).unwrap();
        truncated.truncate(700);
        assert!(matches!(stage_restore(b.path(), &truncated, MAX_BACKUP), Err(BackupError::Format(_))));
        let mut corrupt = backup(a.path()).unwrap();
        corrupt[10] ^= 1;
        assert!(stage_restore(b.path(), &corrupt, MAX_BACKUP).unwrap_err().to_string().contains("checksum"));
        assert!(stage_restore(b.path(), &vec![0u8; MAX_BACKUP + 1], MAX_BACKUP).is_err());
        // A symbolic link is not a configuration file.
        let mut link = header("relaybox.ini", 0o644, 0, b'2', 0).to_vec();
        link.resize(link.len() + 1024, 0);
        assert!(stage_restore(b.path(), &link, MAX_BACKUP).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn gnu_tar_reads_a_backup_and_its_archives_restore() {
        let a = tempfile::tempdir().unwrap();
        sample(a.path());
        fs::create_dir_all(a.path().join("tls")).unwrap();
        let (crt, key) = crate::server::self_signed(&a.path().join("tls"), "edge-1").unwrap();
        assert!(crt.exists() && key.exists());
        let file = a.path().join("backup.tar");
        fs::write(&file, backup(a.path()).unwrap()).unwrap();
        let out = std::process::Command::new("tar").arg("tvf").arg(&file).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && listing.contains("tls/web.key") && listing.contains("relaybox.ini"),
            "{listing}"
        );
        assert!(listing.lines().any(|l| l.starts_with("-rw-------") && l.contains("tls/web.key")), "{listing}");
        // An archive made by tar from a directory of such files restores too.
        let src = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("tar").arg("xf").arg(&file).arg("-C").arg(src.path()).output().unwrap();
        assert!(out.status.success());
        let remade = src.path().join("remade.tar");
        let out = std::process::Command::new("tar")
            .args(["cf"])
            .arg(&remade)
            .arg("-C")
            .arg(src.path())
            .args(["relaybox.ini", "system.conf", "tls"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let b = tempfile::tempdir().unwrap();
        let names = stage_restore(b.path(), &fs::read(&remade).unwrap(), MAX_BACKUP).unwrap();
        assert_eq!(names, ["relaybox.ini", "system.conf", "tls/web.crt", "tls/web.key"]);
    }

    #[test]
    fn a_factory_reset_empties_the_partition_at_the_next_boot() {
        let a = tempfile::tempdir().unwrap();
        sample(a.path());
        fs::create_dir_all(a.path().join("lost+found")).unwrap();
        let data = backup(a.path()).unwrap();
        stage_restore(a.path(), &data, MAX_BACKUP).unwrap();
        request_factory_reset(a.path()).unwrap();
        assert_eq!(pending(a.path()), Some("a factory reset"));
        assert!(a.path().join("relaybox.ini").exists(), "nothing before the boot");
        let done = boot(a.path()).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        let left: Vec<String> =
            fs::read_dir(a.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(left, ["lost+found"], "the pending restore goes too");
    }
}
