//! Who may use the page: the password hash file (argon2, mode 0600, next to
//! `config.ini`), login sessions kept in memory with a sliding expiry,
//! per-session CSRF tokens, the per-address login limit (guesses counted
//! before they are checked) and the password checker (a fixed number of
//! threads with their own argon2 memory, behind a bounded queue).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// The key a login is counted under: an IPv4 address, or an IPv6 /64 (one
/// host's SLAAC addresses, or one subscriber's prefix, count as one).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

struct Attempts {
    /// Wrong passwords in a row.
    failures: u32,
    /// Guesses admitted and not answered yet (waiting or being checked).
    checking: u32,
    locked_until: Option<Instant>,
    /// The last guess admitted or answered.
    last: Instant,
}

impl Attempts {
    fn new(now: Instant) -> Self {
        Attempts { failures: 0, checking: 0, locked_until: None, last: now }
    }

    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|u| u > now)
    }

    /// Nothing worth remembering: no lock, no guess in flight, and no
    /// wrong password within `lockout`.
    fn idle(&self, now: Instant, lockout: Duration) -> bool {
        self.checking == 0 && !self.locked(now) && (self.failures == 0 || self.last + lockout <= now)
    }
}

/// Why a login was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoGuess {
    /// The address is locked out for this long.
    LockedOut(Duration),
    /// Every guess the address has left is being checked already.
    AllInFlight,
}

#[derive(Default)]
struct Table {
    map: HashMap<IpAddr, Attempts>,
}

/// Password guesses per client address (see [`source_of`]). A guess is
/// counted when it is admitted, before its password is checked: an address
/// has `max` guesses in flight and wrong at most, then it is locked out for
/// `lockout`, even with the right password. Wrong passwords are forgotten
/// after `lockout` without another one, or at a right one.
#[derive(Clone)]
pub struct Limiter {
    table: Arc<Mutex<Table>>,
    max: u32,
    lockout: Duration,
}

impl Limiter {
    pub fn new(max: u32, lockout: Duration) -> Self {
        Limiter { table: Arc::new(Mutex::new(Table::default())), max: max.max(1), lockout }
    }

    /// Admits one guess from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Guess, NoGuess> {
        let now = Instant::now();
        let key = source_of(ip);
        let mut table = lock(&self.table);
        if !table.map.contains_key(&key) && table.map.len() >= MAX_TRACKED {
            let lockout = self.lockout;
            table.map.retain(|_, a| !a.idle(now, lockout));
            if table.map.len() >= MAX_TRACKED {
                // Full of live entries: forget the one longest quiet (never
                // one with a guess in flight; there are at most
                // max_parallel_logins + login_queue of those).
                let oldest =
                    table.map.iter().filter(|(_, a)| a.checking == 0).min_by_key(|(_, a)| a.last).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    table.map.remove(&k);
                }
            }
        }
        let entry = table.map.entry(key).or_insert_with(|| Attempts::new(now));
        if let Some(until) = entry.locked_until {
            if until > now {
                return Err(NoGuess::LockedOut(until - now));
            }
            entry.locked_until = None;
        }
        if entry.failures > 0 && entry.checking == 0 && entry.last + self.lockout <= now {
            entry.failures = 0;
        }
        if entry.failures + entry.checking >= self.max {
            return Err(NoGuess::AllInFlight);
        }
        entry.checking += 1;
        entry.last = now;
        Ok(Guess { limiter: self.clone(), key, ip, open: true })
    }

    /// How long `ip` must still wait, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let table = lock(&self.table);
        let until = table.map.get(&source_of(ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Ends a guess: `Some(answer)` when its password was checked.
    /// Returns the lockout when this answer locks the address out.
    fn end(&self, key: IpAddr, answer: Option<bool>) -> Option<Duration> {
        let now = Instant::now();
        let mut table = lock(&self.table);
        let entry = table.map.entry(key).or_insert_with(|| Attempts::new(now));
        entry.checking = entry.checking.saturating_sub(1);
        let mut locked = None;
        match answer {
            Some(true) => {
                entry.failures = 0;
                entry.locked_until = None;
            }
            Some(false) => {
                entry.failures += 1;
                entry.last = now;
                if entry.failures >= self.max {
                    entry.failures = 0;
                    entry.locked_until = Some(now + self.lockout);
                    locked = Some(self.lockout);
                }
            }
            None => {}
        }
        if entry.idle(now, self.lockout) && entry.failures == 0 {
            table.map.remove(&key);
        }
        locked
    }
}

/// One admitted guess. Answered with [`Guess::answer`] once its password
/// was checked; dropped unanswered (the login was given up before the
/// check), it is not counted.
pub struct Guess {
    limiter: Limiter,
    key: IpAddr,
    ip: IpAddr,
    open: bool,
}

impl Guess {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Records the check's result; returns the lockout when this wrong
    /// password locks the address out.
    pub fn answer(mut self, right: bool) -> Option<Duration> {
        self.open = false;
        self.limiter.end(self.key, Some(right))
    }
}

impl Drop for Guess {
    fn drop(&mut self) {
        if self.open {
            self.limiter.end(self.key, None);
        }
    }
}

/// What the page counts about logins, for `/metrics`.
#[derive(Default)]
pub struct LoginStats {
    /// Passwords checked (argon2 runs).
    pub checks: AtomicU64,
    /// Logins refused before a check: the address was locked out or had
    /// every guess in flight.
    pub refused_address: AtomicU64,
    /// Logins refused before a check: every checker busy and the queue full.
    pub refused_busy: AtomicU64,
    /// When the last "busy" warning was logged (seconds on `start`'s clock).
    busy_warned: AtomicU64,
    start: Option<Instant>,
}

impl LoginStats {
    pub fn new() -> Self {
        LoginStats { start: Some(Instant::now()), ..LoginStats::default() }
    }

    /// True at most once per 10 s: refusals under a flood are counted, and
    /// logged only now and then.
    pub fn busy_warning_due(&self) -> bool {
        let now = self.start.map_or(0, |s| s.elapsed().as_secs()) + 10;
        let last = self.busy_warned.load(Ordering::Relaxed);
        now >= last + 10 && self.busy_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// The result of one check.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub right: bool,
    /// Set when this wrong password locked the address out.
    pub locked: Option<Duration>,
}

struct Job {
    hash: String,
    password: String,
    guess: Guess,
    answer: tokio::sync::oneshot::Sender<Checked>,
    /// Held until the password is checked (or the job dropped unsent).
    _admitted: Admitted,
}

/// One login counted against the checker's `parallel + queue`; freed when
/// dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every checker is busy and `login_queue` logins wait already.
#[derive(Debug)]
pub struct Busy;

/// The password checks: `parallel` threads, each with its own argon2
/// memory that it keeps and reuses, fed by a queue of `queue` logins. A
/// login that finds `parallel` checks running and `queue` waiting is
/// refused at once ([`Busy`]), so the page's memory is bounded by
/// `parallel` checks whatever arrives. The logins are counted from their
/// admission to the end of their check, not by what the threads have taken
/// from the queue yet, so a busy machine that is slow to run a thread
/// refuses no more than an idle one. The threads end when the checker is
/// dropped.
pub struct Checker {
    jobs: std::sync::mpsc::SyncSender<Job>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

impl Checker {
    pub fn start(parallel: usize, queue: usize, stats: Arc<LoginStats>) -> std::io::Result<Checker> {
        let capacity = parallel.max(1) + queue;
        let (jobs, queued) = std::sync::mpsc::sync_channel::<Job>(capacity);
        let queued = Arc::new(Mutex::new(queued));
        for n in 0..parallel.max(1) {
            let (queued, stats) = (queued.clone(), stats.clone());
            std::thread::Builder::new().name(format!("web-login-{n}")).spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let next = lock(&queued).recv();
                    let Ok(Job { hash, password, guess, answer, _admitted: admitted }) = next else { return };
                    let right = verify_in(&hash, &password, &mut memory);
                    drop(password);
                    // Free before the answer: a login that follows it is
                    // not refused for this one.
                    drop(admitted);
                    stats.checks.fetch_add(1, Ordering::Relaxed);
                    let ip = guess.ip();
                    if !right {
                        tracing::warn!(client = %ip, "web: wrong password");
                    }
                    let locked = guess.answer(right);
                    if let Some(lockout) = locked {
                        tracing::warn!(client = %ip, "web: too many wrong passwords; locked out for {} s", lockout.as_secs());
                    }
                    let _ = answer.send(Checked { right, locked });
                }
            })?;
        }
        Ok(Checker { jobs, admitted: Arc::new(AtomicUsize::new(0)), capacity })
    }

    /// Queues a check of `password` against `hash` for `guess`.
    pub fn check(
        &self,
        hash: String,
        password: String,
        guess: Guess,
    ) -> Result<tokio::sync::oneshot::Receiver<Checked>, Busy> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let admitted = Admitted(self.admitted.clone());
        let (answer, answered) = tokio::sync::oneshot::channel();
        match self.jobs.try_send(Job { hash, password, guess, answer, _admitted: admitted }) {
            Ok(()) => Ok(answered),
            // The job (and its guess, uncounted) is dropped here.
            Err(_) => Err(Busy),
        }
    }
}

/// Checks `password` against a stored argon2 hash in `memory`, which is
/// grown to the hash's memory cost once and then reused (argon2 writes
/// every block before reading it). The comparison is constant-time.
pub fn verify_in(hash: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
    use argon2::password_hash::Output;
    use argon2::{Algorithm, Params, Version};
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks]).is_err() {
        return false;
    }
    Output::new(&out).is_ok_and(|computed| computed == expected)
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
    fn the_checker_admits_parallel_plus_queue_logins_however_its_threads_are_scheduled() {
        // Sent back to back, before the checking thread has taken any: one
        // to check and one to wait are admitted, the third is busy. (Counted
        // by the channel alone, the thread not yet running its first check
        // left room for one login only.)
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.ini");
        set_password(&config, "correct horse").unwrap();
        let hash = stored_hash(&config).unwrap();
        let checker = Checker::start(1, 1, Arc::new(LoginStats::default())).unwrap();
        let l = Limiter::new(10, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut answers = Vec::new();
        let mut busy = 0;
        for _ in 0..3 {
            match checker.check(hash.clone(), "wrong".into(), l.admit(ip).unwrap()) {
                Ok(a) => answers.push(a),
                Err(Busy) => busy += 1,
            }
        }
        assert_eq!((answers.len(), busy), (2, 1));
        for a in answers {
            assert!(!a.blocking_recv().unwrap().right);
        }
        // Done: both places are free again.
        let again: Vec<_> =
            (0..2).map(|_| checker.check(hash.clone(), "correct horse".into(), l.admit(ip).unwrap())).collect();
        for a in again {
            assert!(a.ok().unwrap().blocking_recv().unwrap().right);
        }
    }

    #[test]
    fn guesses_are_counted_before_they_are_checked() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let guesses: Vec<Guess> = (0..3).map(|_| l.admit(ip).unwrap()).collect();
        assert_eq!(l.admit(ip).err(), Some(NoGuess::AllInFlight), "three in flight: no fourth");
        assert!(l.admit("192.0.2.2".parse().unwrap()).is_ok(), "other addresses are not affected");
        let mut answers = guesses.into_iter().map(|g| g.answer(false));
        assert_eq!(answers.next(), Some(None));
        assert_eq!(answers.next(), Some(None));
        assert_eq!(answers.next(), Some(Some(Duration::from_secs(60))), "the third wrong one locks");
        assert!(matches!(l.admit(ip), Err(NoGuess::LockedOut(_))));
        assert!(l.locked(ip).is_some());
    }

    #[test]
    fn a_guess_given_up_before_its_check_is_not_counted() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            drop(l.admit(ip).unwrap());
        }
        assert_eq!(l.admit(ip).unwrap().answer(false), None);
        let right = l.admit(ip).unwrap();
        assert_eq!(right.answer(true), None, "a right password forgets the wrong one");
        assert_eq!(l.admit(ip).unwrap().answer(false), None);
        assert!(lock(&l.table).map.len() == 1);
    }

    #[test]
    fn wrong_passwords_are_forgotten_after_the_lockout_time() {
        let l = Limiter::new(2, Duration::from_millis(300));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.admit(ip).unwrap().answer(false), None);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(l.admit(ip).unwrap().answer(false), None, "the first one was forgotten");
        assert!(l.admit(ip).unwrap().answer(false).is_some());
    }

    #[test]
    fn ipv6_addresses_count_by_64() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        let _one = l.admit(a).unwrap();
        let _two = l.admit(b).unwrap();
        assert_eq!(l.admit(a).err(), Some(NoGuess::AllInFlight));
        assert!(l.admit(c).is_ok());
        assert_eq!(source_of("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_reused_memory_checks_like_argon2_itself() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.ini");
        set_password(&config, "correct horse").unwrap();
        let hash = stored_hash(&config).unwrap();
        let mut memory = Vec::new();
        for (password, right) in [("correct horse", true), ("correct horse!", false), ("correct horse", true)] {
            assert_eq!(verify_in(&hash, password, &mut memory), right, "{password}");
            assert_eq!(verify(&hash, password), right);
        }
        assert_eq!(memory.len() * 1024, 19 * 1024 * 1024, "argon2's default: 19 MiB, allocated once");
        assert!(!verify_in("$argon2id$garbage", "x", &mut memory));
    }

    #[test]
    fn a_full_queue_refuses_without_checking() {
        let stats = Arc::new(LoginStats::default());
        let checker = Checker::start(1, 2, stats.clone()).unwrap();
        let l = Limiter::new(100, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // A hash that parses and takes seconds in a debug build (4 MiB,
        // 20 passes): the one thread stays busy while the logins arrive.
        let slow = "$argon2id$v=19$m=4096,t=20,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let mut answers = Vec::new();
        for _ in 0..20 {
            if let Ok(a) = checker.check(slow.to_string(), "x".into(), l.admit(ip).unwrap()) {
                answers.push(a);
            }
        }
        let admitted = answers.len();
        assert!((2..=3).contains(&admitted), "one thread and a queue of two admit 2 or 3, not {admitted}");
        for a in answers {
            assert!(!a.blocking_recv().unwrap().right);
        }
        assert_eq!(stats.checks.load(Ordering::Relaxed), admitted as u64);
        assert_eq!(lock(&l.table).map[&ip].failures, admitted as u32, "refused logins are not counted");
        assert_eq!(lock(&l.table).map[&ip].checking, 0);
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
