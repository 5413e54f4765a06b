//! `relaybox clock --query` against NTP servers played by this test on
//! 127.0.0.1: one that answers an hour ahead, one that never answers, one
//! that only sends kiss-o'-death packets. `--query` sets nothing, so the
//! host's clock is safe.

// Needs the clock feature (all are on by default).
#![cfg(feature = "clock")]

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::BIN;

/// How a played server treats a request.
#[derive(Clone, Copy)]
enum Server {
    /// A synchronised stratum-2 server whose clock is an hour ahead.
    HourAhead,
    /// Stratum 0 "RATE": go away.
    KissOfDeath,
    /// Reads and drops every request.
    BlackHole,
}

/// A played NTP server on 127.0.0.1; stops when dropped.
struct Played {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Played {
    fn start(kind: Server) -> Played {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut requests = 0;
            let mut buf = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
                requests += 1;
                if n < 48 {
                    continue;
                }
                let reply = match kind {
                    Server::HourAhead => answer(&buf[..48], 2, 3600),
                    Server::KissOfDeath => answer(&buf[..48], 0, 0),
                    Server::BlackHole => continue,
                };
                let _ = socket.send_to(&reply, peer);
            }
            requests
        });
        Played { port, stop, thread: Some(thread) }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server; how many requests it got.
    fn requests(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An NTPv4 server packet answering `request`, its clock `ahead` seconds
/// ahead of ours (written here, not with the crate's codec, so the test
/// checks the client against the RFC rather than against itself).
fn answer(request: &[u8], stratum: u8, ahead: u64) -> [u8; 48] {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(ahead);
    let ntp = ((now.as_secs() + 2_208_988_800) << 32) | ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000);
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 4; // no leap warning, version 4, server
    p[1] = stratum;
    if stratum == 0 {
        p[12..16].copy_from_slice(b"RATE");
    }
    p[24..32].copy_from_slice(&request[40..48]);
    p[32..40].copy_from_slice(&ntp.to_be_bytes());
    p[40..48].copy_from_slice(&ntp.to_be_bytes());
    p
}

fn query(servers: &[&str], timeout_ms: u64) -> (std::process::Output, Duration) {
    let mut cmd = Command::new(BIN);
    cmd.args(["clock", "--query", "--timeout-ms", &timeout_ms.to_string()]);
    for s in servers {
        cmd.args(["--server", s]);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    (out, started.elapsed())
}

#[test]
fn a_dead_server_listed_first_does_not_delay_the_answer_of_a_good_one() {
    let (dead, good) = (Played::start(Server::BlackHole), Played::start(Server::HourAhead));
    let (out, took) = query(&[&dead.addr(), &good.addr()], 3000);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // "127.0.0.1:P (127.0.0.1:P): stratum 2, offset 3600.000 s, delay 0.000 s"
    assert!(stdout.starts_with(&good.addr()), "{stdout}");
    assert!(stdout.contains("stratum 2, offset "), "{stdout}");
    let offset: f64 = stdout.split("offset ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!((offset - 3600.0).abs() < 1.0, "the server is an hour ahead: {stdout}");
    // Both were asked at once: the dead one's 3 s timeout was not waited for.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(dead.requests(), 1);
    assert_eq!(good.requests(), 1);
}

#[test]
fn servers_that_refuse_or_stay_silent_give_an_error_after_one_timeout() {
    let (dead, kod) = (Played::start(Server::BlackHole), Played::start(Server::KissOfDeath));
    let (out, took) = query(&[&dead.addr(), &kod.addr()], 1000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a kiss-o'-death must not count as an answer: {stderr}");
    assert!(stderr.contains("no NTP server answered"), "{stderr}");
    assert!(took >= Duration::from_millis(1000), "gave up before the timeout: {took:?}");
    assert!(took < Duration::from_millis(2000), "one timeout for all servers, not one each: {took:?}");
    assert_eq!((dead.requests(), kod.requests()), (1, 1));
}

#[test]
fn servers_come_from_system_conf_and_none_there_means_ntp_off() {
    let dir = tempfile::tempdir().unwrap();
    let good = Played::start(Server::HourAhead);
    let conf = dir.path().join("system.conf");
    std::fs::write(&conf, format!("# Box-wide settings.\nHOSTNAME=relaybox\nNTP_SERVERS=\"{}\"\n", good.addr()))
        .unwrap();
    let out = Command::new(BIN).arg("clock").arg("--servers-from").arg(&conf).arg("--query").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with(&good.addr()),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(good.requests(), 1);

    // NTP off: `--once` says so and fails; the daemon stays up doing
    // nothing (its supervisor must not restart it in a loop) until it is
    // restarted with servers. No --state: nothing may touch this clock.
    std::fs::write(&conf, "HOSTNAME=relaybox\nNTP_SERVERS=\"\"\n").unwrap();
    let once = Command::new(BIN).arg("clock").arg("--servers-from").arg(&conf).arg("--once").output().unwrap();
    assert!(!once.status.success());
    assert!(String::from_utf8_lossy(&once.stderr).contains("NTP is off"), "{}", String::from_utf8_lossy(&once.stderr));
    let log = dir.path().join("clock.log");
    let mut daemon = Command::new(BIN)
        .arg("clock")
        .arg("--servers-from")
        .arg(&conf)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().contains("NTP is off until restarted") {
        assert!(Instant::now() < until, "{}", std::fs::read_to_string(&log).unwrap());
        assert!(daemon.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.try_wait().unwrap().is_none(), "the idle daemon exited");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // A file that cannot be read is an error, not "no servers".
    let missing =
        Command::new(BIN).args(["clock", "--servers-from", "/nonexistent/system.conf", "--once"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading /nonexistent/system.conf"));
}
