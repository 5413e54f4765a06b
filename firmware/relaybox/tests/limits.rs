//! The daemons against descriptor and memory exhaustion, as real processes
//! on loopback: floods of idle connections (from 127.0.0.x source
//! addresses), a descriptor limit lowered with `prlimit`, requests without
//! an end, pipelined management commands, the web page's slowloris, and
//! datagrams longer than 2 KiB. Each attack is bounded and stops itself.

// Needs the relay, dispatcher and web features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher", feature = "web"))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MODULE_BUDGET: Duration = Duration::from_millis(500);

fn audio(port: u16) -> String {
    format!("audio:127.0.0.1:{port}:sendrecv:ice=no")
}

/// This test process holds thousands of sockets: its soft limit goes up to
/// the hard one.
fn raise_own_limit() {
    relaybox_limits::raise_nofile().unwrap();
}

/// The daemon `role` started under `prlimit --nofile=N:N` (a hard limit it
/// cannot raise).
fn spawn_with_nofile(rig: &Rig, role: &str, config: &Path, nofile: u64) -> Daemon {
    static N: AtomicU32 = AtomicU32::new(0);
    let log = rig.path(&format!("{role}-nofile-{}.log", N.fetch_add(1, Ordering::Relaxed)));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .arg(role)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Daemon { child, log }
}

/// Sets the soft descriptor limit of a running process (the hard one stays:
/// lowering it could not be undone without CAP_SYS_RESOURCE).
fn set_nofile(pid: u32, nofile: u64) {
    let status =
        Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={nofile}:")).status().unwrap();
    assert!(status.success(), "prlimit --pid {pid}");
}

fn open_descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

fn nofile_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn alive(d: &mut Daemon) -> bool {
    d.child.try_wait().unwrap().is_none()
}

/// A TCP connection to 127.0.0.1:`port` from the source address `from`
/// (any 127.0.0.0/8 address works on loopback).
fn connect_from(from: &str, port: u16) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let from: IpAddr = from.parse().unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).ok()?;
    socket.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), Duration::from_secs(2)).ok()?;
    Some(socket.into())
}

/// `count` connections from `from`, all kept open (the attacker's side).
fn flood(from: &str, port: u16, count: usize) -> Vec<TcpStream> {
    (0..count).filter_map(|_| connect_from(from, port)).collect()
}

/// True when the peer closed `stream` within `within` (EOF or reset).
fn closed_within(stream: &mut impl Read, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn the_dispatcher_out_of_descriptors_keeps_running_and_serves_the_module_when_they_come_back() {
    let mut rig = Rig::new();
    let mut d = rig.dispatcher("");
    let (_r, range) = rig.relay(&d, "relay1", "");
    let pid = d.child.id();
    let limit = nofile_of(pid);
    // Not one descriptor to spare: the next accept fails with EMFILE.
    set_nofile(pid, open_descriptors(pid));
    let mut m = Module::connect(&rig.socket);
    m.send_raw(update("request", "emfile", 1, "", &audio(4000)).as_bytes());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(&mut d), "the dispatcher ended on EMFILE:\n{}", d.log_text());
    d.wait_log("out of file descriptors", Duration::from_secs(10));
    // Descriptors come back: the waiting connection is accepted and served.
    set_nofile(pid, limit);
    let reply = m.read_line();
    let (ip, p) = ports(&reply);
    assert_eq!(ip, "127.0.0.1", "{reply}");
    assert!((range.0..range.1).contains(&p[0]), "{reply}");
    let log = d.log_text();
    let warnings = log.lines().filter(|l| l.contains("accepting a connection failed")).count();
    eprintln!("{warnings} accept warning lines while out of descriptors");
    assert!(warnings <= 2, "at most one line every 5 s:\n{log}");
}

#[test]
fn floods_of_idle_connections_from_one_address_are_capped_and_calls_go_on() {
    raise_own_limit();
    let mut rig = Rig::new();
    let (certs, _) = rig.certs("dispatcher-certs", "unused");
    let cfg = rig.dispatcher_config(&certs, "");
    // The default caps need 1204 descriptors; 1300 leaves no room for the
    // 2350 connections of the attack.
    let mut d = spawn_with_nofile(&rig, "dispatcher", &cfg, 1300);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let started = Instant::now();
    let on_management = flood("127.0.0.2", rig.mgmt_port, 1250);
    let on_relay_port = flood("127.0.0.3", rig.relay_port, 1100);
    eprintln!(
        "flood: {} + {} connections opened in {:?}; the dispatcher holds {} descriptors",
        on_management.len(),
        on_relay_port.len(),
        started.elapsed(),
        open_descriptors(d.child.id())
    );
    assert!(alive(&mut d), "{}", d.log_text());
    // A relay from another address still connects, and calls go through it.
    let (_r, range) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    let (reply, took) = m.request(&update("request", "after-flood", 1, "", &audio(4000)));
    let (_, p) = ports(&reply);
    assert!(p.len() == 1 && (range.0..range.1).contains(&p[0]), "{reply}");
    eprintln!("update answered in {took:?} during the flood");
    assert!(management(rig.mgmt_port, "summary").starts_with("[{"), "management answers other addresses");
    let log = d.log_text();
    for (peer, setting) in
        [("127.0.0.2", "max_management_connections_per_ip"), ("127.0.0.3", "max_relay_connections_per_ip")]
    {
        let line = log.lines().find(|l| l.contains(&format!("connection from {peer}:")) && l.contains("refused"));
        let line = line.unwrap_or_else(|| panic!("no refusal naming {peer}:\n{log}"));
        assert!(line.contains(setting), "{line}");
    }
    let refusals = log.lines().filter(|l| l.contains("refused") && l.contains("connection from 127.0.0.")).count();
    assert!(refusals <= 10, "refusals are logged at most every 5 s, not once each: {refusals} lines");
    assert!(open_descriptors(d.child.id()) < 200, "the flood holds no descriptors beyond the caps");
    drop((on_management, on_relay_port));
}

#[test]
fn idle_connections_are_closed_after_their_timeouts() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("handshake_timeout = 1\nmanagement_idle_timeout = 2\nmodule_request_timeout = 1");
    let mut no_tls = TcpStream::connect(("127.0.0.1", rig.relay_port)).unwrap();
    let mut silent_management = TcpStream::connect(("127.0.0.1", rig.mgmt_port)).unwrap();
    let mut silent_module = UnixStream::connect(&rig.socket).unwrap();
    let mut half_request = UnixStream::connect(&rig.socket).unwrap();
    half_request.write_all(b"update\r\ntype: request\r\n").unwrap();
    // A proxy worker that made a valid request may then stay quiet. (A
    // remove of a call nobody holds is answered `error`, as MediaProxy does,
    // but it is a valid request.)
    let mut worker = Module::connect(&rig.socket);
    assert_eq!(worker.request(&remove("nobody")).0, "error\r\n");
    for s in [&no_tls, &silent_management] {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    for s in [&silent_module, &half_request] {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    let started = Instant::now();
    assert!(closed_within(&mut no_tls, Duration::from_secs(5)), "relay port without TLS handshake");
    assert!(closed_within(&mut silent_management, Duration::from_secs(6)), "silent management connection");
    let mut answer = String::new();
    let _ = BufReader::new(&mut silent_module).read_line(&mut answer);
    assert_eq!(answer, "error\r\n", "a module connection without a request is told, then closed");
    assert!(closed_within(&mut silent_module, Duration::from_secs(3)));
    let mut answer = String::new();
    let _ = BufReader::new(&mut half_request).read_line(&mut answer);
    assert_eq!(answer, "error\r\n");
    assert!(closed_within(&mut half_request, Duration::from_secs(3)));
    eprintln!("all idle connections closed after {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(worker.request(&remove("nobody")).0, "error\r\n", "a worker's connection stays");
    let log = d.log_text();
    for needle in ["no TLS handshake within 1 s", "idle for 2 s", "no valid request within 1 s"] {
        assert!(log.contains(needle), "{needle:?} not in\n{log}");
    }
}

/// `count` module connections that each send 63 header lines of 16000
/// bytes (each under `max_request_size` = 16384, together 1 MB) and never
/// the empty line; the dispatcher's RSS must stay under `bound` KiB
/// meanwhile; then each must get `error` and be closed (after
/// `module_request_timeout`, 10 s). Returns the RSS while they were open.
fn endless_requests(rig: &Rig, pid: u32, count: usize, bound: u64) -> u64 {
    let line = format!("h0: {}\r\n", "x".repeat(16_000));
    let mut attackers = Vec::new();
    for _ in 0..count {
        let mut s = UnixStream::connect(&rig.socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"update\r\n").unwrap();
        for _ in 0..63 {
            if s.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        attackers.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid);
    assert!(during < bound, "unbounded: {during} KiB with {count} endless requests");
    // A proxy worker is served meanwhile.
    let (reply, took) = Module::connect(&rig.socket).request(&remove("during"));
    assert_eq!(reply, "error\r\n", "a call nobody holds");
    assert!(took < MODULE_BUDGET, "{took:?}");
    for s in &mut attackers {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = String::new();
        let _ = BufReader::new(&mut *s).read_line(&mut answer);
        assert_eq!(answer, "error\r\n");
    }
    drop(attackers);
    std::thread::sleep(Duration::from_millis(500));
    during
}

#[test]
fn module_requests_without_an_end_cannot_grow_the_dispatcher() {
    const CONNECTIONS: usize = 200;
    raise_own_limit();
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let pid = d.child.id();
    let mut warm = Module::connect(&rig.socket);
    for i in 0..20 {
        warm.request(&remove(&format!("warm-{i}")));
    }
    let baseline = rss_kib(pid);
    let during = endless_requests(&rig, pid, CONNECTIONS, baseline + 48 * 1024);
    let after = rss_kib(pid);
    // Again: what the first round freed is used again, nothing more is kept.
    let during_again = endless_requests(&rig, pid, CONNECTIONS, baseline + 48 * 1024);
    let after_again = rss_kib(pid);
    eprintln!(
        "dispatcher RSS: {baseline} KiB before; with {CONNECTIONS} connections holding 1 MB requests {during} KiB \
         ({} KiB more, {} KiB per connection); {after} KiB after they were closed; a second round: {during_again} \
         KiB, then {after_again} KiB",
        during.saturating_sub(baseline),
        during.saturating_sub(baseline) / CONNECTIONS as u64
    );
    // glibc keeps some of what was freed for later use (hence the second
    // round), but not the attack's megabytes.
    assert!(after < baseline + 16 * 1024, "not given back: {baseline} -> {after} KiB");
    assert!(after_again < after + 4 * 1024, "the second round kept more: {after} -> {after_again} KiB");
    assert!(d.log_text().contains("module_request_timeout"));
}

#[test]
fn a_relay_whose_settings_need_more_descriptors_than_its_limit_refuses_to_start() {
    let mut rig = Rig::new();
    let (certs, _) = rig.certs("relay-certs", "relay1");
    // 500 port pairs: 1000 media sockets, with a limit of 256.
    let cfg = rig.relay_config(&certs, (40000, 41000), "");
    let mut r = spawn_with_nofile(&rig, "relay", &cfg, 256);
    let status = r.wait_exit(Duration::from_secs(10)).expect("the relay must refuse to start");
    assert!(!status.success());
    let log = r.log_text();
    eprintln!("{log}");
    assert!(log.contains("relay not started"), "{log}");
    assert!(log.contains("limit of 256"), "{log}");
    assert!(log.contains("port_range = 40000:41000"), "the setting is named: {log}");
    assert!(log.contains("ulimit -n"), "{log}");
}

#[test]
fn a_relay_out_of_descriptors_answers_error_keeps_its_calls_and_its_snapshot() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (a, range_a) = rig.relay(&d, "relay-a", "");
    let mut m = Module::connect(&rig.socket);
    let caller = Phone::new();
    let callee = Phone::new();
    let (offer, _) = m.request(&update("request", "before", 1, "", &audio(caller.port())));
    let (answer, _) = m.request(&update("reply", "before", 1, "tt", &audio(callee.port())));
    let (offer_port, answer_port) = (ports(&offer).1[0], ports(&answer).1[0]);
    assert!((range_a.0..range_a.1).contains(&offer_port), "{offer}");

    // The relay's limit drops to what it holds plus four: fewer than one
    // more call needs (four sockets) plus the reserve.
    let pid = a.child.id();
    set_nofile(pid, open_descriptors(pid) + 4);
    let refused_at = std::time::SystemTime::now();
    for i in 0..5 {
        let (reply, _) = m.request(&update("request", &format!("no-room-{i}"), 1, "", &audio(6000)));
        assert_eq!(reply, "error\r\n", "never a port the relay has not bound");
    }
    let log = a.log_text();
    let lines = log.lines().filter(|l| l.contains("cannot open relay ports") || l.contains("busy")).count();
    eprintln!("{lines} relay log lines for 5 refused updates");
    assert!(lines <= 2, "no warning storm:\n{log}");
    assert!(log.contains("update answered error"), "{log}");

    // The call made before still works...
    let to_callee_side: SocketAddr = format!("127.0.0.1:{offer_port}").parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{answer_port}").parse().unwrap();
    let (at_callee, at_caller) = exchange(&caller, &callee, to_caller_side, to_callee_side, 10);
    assert!(at_callee >= 9 && at_caller >= 9);
    // ... and is in a snapshot written after the refusals.
    let state = std::fs::read_dir(rig.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy().contains(&format!("relay-{}-", range_a.0))
                && p.extension().is_some_and(|e| e == "state")
        })
        .expect("state file");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let written = std::fs::metadata(&state).and_then(|m| m.modified()).unwrap();
        if written > refused_at {
            break;
        }
        assert!(Instant::now() < until, "no snapshot written since the refusals");
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshot = relaybox_core::Snapshot::decode(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(snapshot.session_count(), 1, "the call made before, not the refused ones");
    assert!(!a.log_text().contains("cannot write the session snapshot"));

    // With a second relay, new calls go there.
    let (_b, range_b) = rig.relay(&d, "relay-b", "");
    for i in 0..4 {
        let (reply, _) = m.request(&update("request", &format!("moved-{i}"), 1, "", &audio(6000)));
        let (_, p) = ports(&reply);
        assert!(p.len() == 1 && (range_b.0..range_b.1).contains(&p[0]), "{reply}");
    }
}

/// Management clients pipelining `sessions` against a relay holding many
/// calls while the module sets calls up: the module's latency is printed
/// and must stay well inside its 500 ms budget.
#[test]
fn pipelined_management_commands_do_not_delay_the_module() {
    const CALLS: usize = 900;
    const CLIENTS: usize = 40;
    const PIPELINED: usize = 50;
    raise_own_limit();
    let mut rig = Rig::new();
    let d = rig.dispatcher("module_timeout = 0.5");
    let (certs, _) = rig.certs("relay-certs-many", "relay-many");
    let range = free_port_range((CALLS * 4 + 400) as u16);
    let r = rig.spawn("relay", &rig.relay_config(&certs, range, ""));
    let until = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("relay sessions adopted") {
        assert!(Instant::now() < until, "relay not connected:\n{}", r.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut m = Module::connect(&rig.socket);
    let started = Instant::now();
    for i in 0..CALLS {
        let (reply, _) = m.request(&update("request", &format!("held-{i}"), 1, "", &audio(4000 + (i % 1000) as u16)));
        assert!(reply.starts_with("127.0.0.1 "), "{reply}");
    }
    let one = management(rig.mgmt_port, "sessions");
    eprintln!("{CALLS} calls set up in {:?}; one sessions answer is {} bytes", started.elapsed(), one.len());

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, answered, port) = (stop.clone(), answered.clone(), rig.mgmt_port);
            std::thread::spawn(move || {
                let Some(mut s) = connect_from(&format!("127.0.1.{}", i + 1), port) else { return 0 };
                s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let _ = s.write_all("sessions\r\n".repeat(PIPELINED).as_bytes());
                let mut reader = BufReader::new(s);
                let mut line = String::new();
                let mut got = 0;
                while got < PIPELINED && !stop.load(Ordering::Relaxed) {
                    match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) if line.ends_with('\n') => {
                            got += 1;
                            answered.fetch_add(1, Ordering::Relaxed);
                            line.clear();
                        }
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => break,
                    }
                }
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // 200 requests over about 4 s: several management refreshes happen
    // meanwhile.
    let mut took = Vec::new();
    let measuring = Instant::now();
    for i in 0..100 {
        let (reply, t) = m.request(&update("request", &format!("lat-{i}"), 1, "", &audio(5000)));
        assert!(reply.starts_with("127.0.0.1 "), "{reply}");
        took.push(t);
        std::thread::sleep(Duration::from_millis(20));
        let (reply, t) = m.request(&remove(&format!("lat-{i}")));
        assert_eq!(reply, "removed\r\n");
        took.push(t);
        std::thread::sleep(Duration::from_millis(20));
    }
    let window = measuring.elapsed();
    let answers_during = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let per_client: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    took.sort();
    let (p50, p99, max) = (took[took.len() / 2], took[took.len() * 99 / 100], took[took.len() - 1]);
    eprintln!(
        "module latency over {} requests with {CLIENTS} management clients pipelining {PIPELINED} sessions each \
         against {CALLS} calls: p50 {p50:?}, p99 {p99:?}, max {max:?}; {answers_during} sessions answers \
         ({} bytes each) were written in those {window:?}",
        took.len(),
        one.len()
    );
    assert!(answers_during >= 30, "management answered meanwhile: {answers_during}");
    assert!(per_client.iter().filter(|&&n| n > 0).count() >= 30, "management still answers: {per_client:?}");
    assert!(p99 < MODULE_BUDGET / 2, "p99 {p99:?}");
    assert!(max < MODULE_BUDGET, "max {max:?}");
    drop(r);
}

/// Accepts the page's self-made certificate.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET path` over HTTPS to 127.0.0.1:`port`; the status line.
fn https_status_line(port: u16, path: &str) -> std::io::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(tls).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn idle_connections_from_one_address_do_not_lock_others_out_of_the_web_page() {
    let rig = Rig::new();
    let port = free_port();
    let cfg = rig.path("web.ini");
    std::fs::write(
        &cfg,
        format!(
            "[Relay]\ncontrol_socket = {}\n[Web]\nlisten = 127.0.0.1:{port}\nhttp_listen = None\n[TLS]\ncerts_path = {}\n",
            rig.path("relay.sock").display(),
            rig.path("web-certs").display()
        ),
    )
    .unwrap();
    let web = rig.spawn("web", &cfg);
    web.wait_log("web page ready", Duration::from_secs(20));
    assert!(https_status_line(port, "/login").unwrap().starts_with("HTTP/1.1 200"));
    // 64 idle connections from one address: no TLS hello, ever.
    let idle = flood("127.0.0.2", port, 64);
    let started = Instant::now();
    let line = https_status_line(port, "/login");
    let took = started.elapsed();
    eprintln!("with {} idle connections from 127.0.0.2, 127.0.0.1 got {line:?} in {took:?}", idle.len());
    assert!(line.as_deref().is_ok_and(|l| l.starts_with("HTTP/1.1 200")), "{line:?}\n{}", web.log_text());
    assert!(took < Duration::from_secs(3), "{took:?}");
    let log = web.log_text();
    let refusal = log.lines().find(|l| l.contains("connection from 127.0.0.2:") && l.contains("refused"));
    assert!(refusal.is_some_and(|l| l.contains("max_connections_per_ip")), "{log}");
    drop(idle);
}

/// Sends `payload` from `from` to `to` and returns what `at` receives.
fn relay_one(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, payload: &[u8]) -> Option<Vec<u8>> {
    from.send_to(payload, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    at.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn datagrams_longer_than_2_kib_are_forwarded_whole_in_userspace() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r, _) = rig.relay(&d, "relay1", "datapath = userspace");
    let caller = Phone::new();
    let callee = Phone::new();
    let mut m = Module::connect(&rig.socket);
    let (offer, _) = m.request(&update("request", "big", 1, "", &audio(caller.port())));
    let (answer, _) = m.request(&update("reply", "big", 1, "tt", &audio(callee.port())));
    let to_callee_side: SocketAddr = format!("127.0.0.1:{}", ports(&offer).1[0]).parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{}", ports(&answer).1[0]).parse().unwrap();
    // Latch both sides with ordinary packets first.
    exchange(&caller, &callee, to_caller_side, to_callee_side, 3);
    for size in [2049, 3000, 9000, 40_000] {
        let mut payload = rtp(7);
        payload.resize(size, 0xa5);
        *payload.last_mut().unwrap() = 0x5a;
        let got = relay_one(&caller.socket, to_caller_side, &callee.socket, &payload);
        assert_eq!(got.as_ref().map(Vec::len), Some(size), "caller -> callee, {size} bytes");
        assert!(got == Some(payload.clone()), "forwarded as sent");
        let got = relay_one(&callee.socket, to_callee_side, &caller.socket, &payload);
        assert_eq!(got.as_ref().map(Vec::len), Some(size), "callee -> caller, {size} bytes");
    }
    assert_eq!(m.request(&remove("big")).0, "removed\r\n");
}
