//! The web page's login under attack, against the real `relaybox web`
//! process (its own memory, its own allocator, its own threads): a burst
//! of parallel password guesses from one address gets exactly
//! `login_attempts` of them checked, the process's memory stays flat, and a
//! user on another address logs in while the attack goes on. Loopback only
//! (127.0.0.1 attacks, 127.0.0.2 is the user); no root needed.

// Needs the web feature (all are on by default).
#![cfg(feature = "web")]

mod common;
#[path = "../../web/tests/common/mod.rs"]
mod page;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Daemon, Rig};
use page::{login_request, Conn, PASSWORD};

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const USER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const ATTEMPTS: usize = 5;
/// Far above what the page needs (a few MiB plus one argon2 buffer of
/// 19 MiB per parallel check), far below 64 parallel checks (1.2 GiB).
const MAX_MEMORY_KIB: u64 = 100 * 1024;

/// `relaybox web` with a password, `login_attempts = 5`, a lockout longer
/// than the test and `/metrics` open to loopback.
fn start_web(rig: &mut Rig) -> (Daemon, SocketAddr) {
    let (certs, _) = rig.certs("certs", "edge-relay");
    let config = rig.path("web.ini");
    let text = format!(
        "[Relay]\ncontrol_socket = {}\n\n[TLS]\ncerts_path = {}\n\n[Web]\nlisten = 127.0.0.1:0\nhttp_listen = None\nlogin_attempts = {ATTEMPTS}\nlockout = 600\nmetrics_lan_only = yes\nclock_pid_file = {}\n",
        rig.path("relay.sock").display(),
        certs.display(),
        rig.path("clock.pid").display(),
    );
    std::fs::write(&config, text).unwrap();
    relaybox_web::set_password(&config, PASSWORD).unwrap();
    let web = rig.spawn("web", &config);
    let log = web.wait_log("web page ready", Duration::from_secs(20));
    let addr = log.split("https=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    (web, addr.parse().unwrap())
}

/// VmHWM (peak) and VmRSS of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One login POST from `from`; `None` when the connection failed (the
/// listener may drop connections beyond its caps).
fn guess(from: IpAddr, addr: SocketAddr, password: &str) -> Option<page::Resp> {
    let (cookie, body) = login_request(password);
    let conn = Conn::open(from, addr, Duration::from_secs(120)).ok()?;
    conn.send("POST", "/login", &[("Cookie", &cookie)], &body).ok()
}

/// The page's own counter of password checks, from `/metrics`.
fn checks_counted(addr: SocketAddr) -> Option<u64> {
    let r = Conn::open(USER, addr, Duration::from_secs(20)).unwrap().send("GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.lines().find_map(|l| l.strip_prefix("relaybox_web_password_checks_total ")?.parse().ok())
}

fn wrong_passwords_logged(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("web: wrong password").count()
}

#[test]
fn a_burst_of_parallel_guesses_is_checked_login_attempts_times_in_flat_memory() {
    let mut rig = Rig::new();
    let (web, addr) = start_web(&mut rig);
    let pid = web.child.id();
    let (_, rss_before) = memory_kib(pid);

    // 64 connections from one address, handshakes done, then one POST
    // each at the same moment.
    let burst = 64;
    let barrier = Arc::new(Barrier::new(burst));
    let threads: Vec<_> = (0..burst)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let conn = Conn::open(ATTACKER, addr, Duration::from_secs(120));
                barrier.wait();
                let (cookie, body) = login_request(&format!("guess-{i}"));
                conn.ok()?.send("POST", "/login", &[("Cookie", &cookie)], &body).ok()
            })
        })
        .collect();
    let answers: Vec<Option<page::Resp>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.as_ref().map_or(0, |r| r.status)).collect();
    let answered = statuses.iter().filter(|s| **s != 0).count();
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let logged = wrong_passwords_logged(&web.log);
    let (peak, rss) = memory_kib(pid);
    eprintln!(
        "burst: {answered} answered, {wrong}x401, {}x429, {}x503; {logged} wrong passwords logged; \
         memory {rss_before} KiB before, peak {peak} KiB, now {rss} KiB",
        statuses.iter().filter(|s| **s == 429).count(),
        statuses.iter().filter(|s| **s == 503).count(),
    );
    assert!(answered >= ATTEMPTS, "only {answered} of {burst} requests were answered: {statuses:?}");
    assert_eq!(logged, ATTEMPTS, "password checks (one log line each) for {burst} parallel guesses");
    assert_eq!(checks_counted(addr), Some(ATTEMPTS as u64), "/metrics counts the same checks");
    assert_eq!(wrong, ATTEMPTS - 1, "the last check locks the address out (429): {statuses:?}");
    assert!(statuses.iter().all(|s| [0, 401, 429].contains(s)), "{statuses:?}");
    assert!(peak < MAX_MEMORY_KIB, "peak memory {peak} KiB under the burst (was {rss_before} KiB)");

    // The attack goes on from 127.0.0.1 (every guess refused at once) while
    // a user on 127.0.0.2 logs in with the right password.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let hammers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, refused) = (stop.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if let Some(r) = guess(ATTACKER, addr, &format!("again-{i}")) {
                        assert_eq!(r.status, 429, "a locked-out address is refused: {}", r.body);
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    while refused.load(Ordering::SeqCst) < 16 {
        assert!(Instant::now() < deadline, "the attack's requests are not answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_user = refused.load(Ordering::SeqCst);
    let mut user = None;
    for _ in 0..5 {
        user = guess(USER, addr, PASSWORD);
        if user.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = refused.load(Ordering::SeqCst) - before_user;
    stop.store(true, Ordering::SeqCst);
    for h in hammers {
        h.join().unwrap();
    }
    let user = user.expect("the user's login got no answer");
    assert_eq!(user.status, 303, "the user on another address logs in during the attack: {}", user.body);
    assert!(user.cookie("relaybox_session").is_some());
    assert_eq!(wrong_passwords_logged(&web.log), ATTEMPTS, "no guess of the locked-out address was checked");
    assert_eq!(checks_counted(addr), Some(ATTEMPTS as u64 + 1), "the user's password was the only other check");
    let (peak, rss) = memory_kib(pid);
    eprintln!(
        "after: {} guesses refused ({during} while the user logged in), memory peak {peak} KiB, now {rss} KiB",
        refused.load(Ordering::SeqCst)
    );
    assert!(peak < MAX_MEMORY_KIB, "peak memory {peak} KiB");
}
