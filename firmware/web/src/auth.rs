//! Who may use the page: the password hash file (argon2, mode 0600, next to
//! `config.ini`), login sessions kept in memory with a sliding expiry,
//! per-session CSRF tokens, and the per-address login rate limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

/// Name of the password hash file in the configuration directory.
pub const PASSWORD_FILE: &str = "web.passwd";
/// Most login sessions held at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;
/// Most addresses the rate limiter remembers.
const MAX_TRACKED: usize = 4096;
pub const MIN_PASSWORD_LEN: usize = 8;

/// `n` random bytes from the operating system, as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn password_path(config_path: &Path) -> PathBuf {
    config_dir(config_path).join(PASSWORD_FILE)
}

pub fn config_dir(config_path: &Path) -> PathBuf {
    let absolute = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    #[error("the password must be one line")]
    Multiline,
    #[error("hashing: {0}")]
    Hash(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Hashes `password` with argon2id and stores it (mode 0600).
pub fn set_password(config_path: &Path, password: &str) -> Result<PathBuf, PasswordError> {
    if password.contains(['\n', '\r']) {
        return Err(PasswordError::Multiline);
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::Hash(e.to_string()))?
        .to_string();
    let path = password_path(config_path);
    crate::files::write_atomic(&path, format!("{hash}\n").as_bytes(), 0o600)
        .map_err(|source| PasswordError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// The stored hash, or `None` when no password was set.
pub fn stored_hash(config_path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(password_path(config_path)).ok()?;
    let hash = text.trim().to_string();
    PasswordHash::new(&hash).ok()?;
    Some(hash)
}

/// Checks `password` against a stored hash (slow on purpose: run it off the
/// async threads).
pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

struct Session {
    csrf: String,
    expires: Instant,
    created: Instant,
}

/// Login sessions: random 256-bit ids, each with its CSRF token.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    pub fn new(timeout: Duration) -> Self {
        Sessions { map: Mutex::new(HashMap::new()), timeout }
    }

    /// A new session: (id, csrf token).
    pub fn create(&self) -> (String, String) {
        let now = Instant::now();
        let mut map = lock(&self.map);
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        let (id, csrf) = (random_hex(32), random_hex(32));
        map.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + self.timeout, created: now });
        (id, csrf)
    }

    /// The CSRF token of a live session, extending its life.
    pub fn touch(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let key = map.keys().find(|k| same_secret(k, id)).cloned()?;
        let session = map.get_mut(&key)?;
        if session.expires <= now {
            map.remove(&key);
            return None;
        }
        session.expires = now + self.timeout;
        Some(session.csrf.clone())
    }

    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    locked_until: Option<Instant>,
}

/// Wrong passwords per client address: after `max` in a row the address is
/// locked out for `lockout`, even with the right password.
pub struct Limiter {
    map: Mutex<HashMap<IpAddr, Attempts>>,
    max: u32,
    lockout: Duration,
}

impl Limiter {
    pub fn new(max: u32, lockout: Duration) -> Self {
        Limiter { map: Mutex::new(HashMap::new()), max: max.max(1), lockout }
    }

    /// How long `ip` must still wait, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let entry = map.get_mut(&ip)?;
        match entry.locked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                map.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Records a wrong password; true when this locks the address out.
    pub fn failure(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, a| a.locked_until.is_some_and(|u| u > now));
        }
        let entry = map.entry(ip).or_default();
        entry.failures += 1;
        if entry.failures >= self.max {
            entry.failures = 0;
            entry.locked_until = Some(now + self.lockout);
            return true;
        }
        false
    }

    pub fn success(&self, ip: IpAddr) {
        lock(&self.map).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip_and_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.ini");
        assert!(stored_hash(&config).is_none());
        assert!(matches!(set_password(&config, "short"), Err(PasswordError::TooShort)));
        let path = set_password(&config, "correct horse").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let hash = stored_hash(&config).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, "correct horse"));
        assert!(!verify(&hash, "correct horse!"));
    }

    #[test]
    fn limiter_locks_after_max_failures() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!l.failure(ip) && !l.failure(ip));
        assert!(l.locked(ip).is_none());
        assert!(l.failure(ip));
        assert!(l.locked(ip).is_some());
        assert!(l.locked("192.0.2.2".parse().unwrap()).is_none());
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::new(Duration::from_millis(500));
        let (id, csrf) = s.create();
        assert_eq!(s.touch(&id), Some(csrf));
        assert_eq!(s.touch("nope"), None);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(s.touch(&id), None);
    }
}
