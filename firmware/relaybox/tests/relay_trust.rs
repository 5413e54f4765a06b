//! What one relay certificate can do (issue #11, item 3), with real
//! processes and real TLS: a rogue relay (a TLS client written here, with a
//! valid relay certificate, speaking the relay link) against the real
//! dispatcher, a fake proxy that records dialog-end requests, and the
//! certificate roles at each port.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use relaybox_tls::{PeerRole, Role, TlsFiles};

type Link = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn audio(port: u16) -> String {
    format!("audio:127.0.0.1:{port}:sendrecv:ice=no")
}

/// An update as the module sends it, with the given dialog id.
fn update_with_dialog(party: &str, call_id: &str, cseq: u32, to_tag: &str, dialog: &str, extra: &str) -> String {
    update(party, call_id, cseq, to_tag, &audio(4000))
        .replace("dialog_id: 1:2\r\n", &format!("dialog_id: {dialog}\r\n"))
        .replace("\r\n\r\n", &format!("\r\n{extra}\r\n"))
}

/// Offer and answer of a call: it is answered (has a start time).
fn answered_call(m: &mut Module, call_id: &str, dialog: &str, extra: &str) -> String {
    let (offer, _) = m.request(&update_with_dialog("request", call_id, 1, "", dialog, extra));
    assert!(!offer.starts_with("error"), "{call_id}: {offer}");
    let (answer, _) = m.request(&update_with_dialog("reply", call_id, 1, "tt", dialog, extra));
    assert!(!answer.starts_with("error"), "{call_id}: {answer}");
    offer
}

/// The statistics of a live call as the dispatcher's management port shows
/// them (a real relay's JSON, so these tests follow its format).
fn stats_of(mgmt_port: u16, call_id: &str) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&management(mgmt_port, "sessions")).unwrap();
    let call = list.as_array().unwrap().iter().find(|s| s["call_id"] == call_id);
    let mut call = call.unwrap_or_else(|| panic!("{call_id} not in {list}")).clone();
    call.as_object_mut().unwrap().remove("relay_ip");
    call
}

/// `stats` as an `expired` report for `call_id` naming `dialog`.
fn expired_line(stats: &serde_json::Value, call_id: &str, dialog: &str) -> String {
    let mut s = stats.clone();
    s["call_id"] = call_id.into();
    s["dialog_id"] = dialog.into();
    assert!(s["start_time"].is_number(), "an answered call, whose dialog the old code would end: {s}");
    format!("expired {s}\r\n")
}

/// The proxy's management socket (Kamailio jsonrpcs over a datagram socket):
/// records every request and answers it.
struct FakeProxy {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProxy {
    fn start(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let id =
                        serde_json::from_str::<serde_json::Value>(&text).map(|v| v["id"].clone()).unwrap_or_default();
                    got.lock().unwrap().push(text);
                    if let Some(back) = from.as_pathname() {
                        let answer = serde_json::json!({"jsonrpc": "2.0", "result": "ok", "id": id}).to_string();
                        let _ = socket.send_to(answer.as_bytes(), back);
                    }
                }
            })
        };
        FakeProxy { path, got, stop, thread: Some(thread) }
    }

    /// The `[OpenSIPS]` section that points the dispatcher here.
    fn config(&self) -> String {
        format!("[OpenSIPS]\nsocket_path = {}\nproxy = kamailio\n", self.path.display())
    }

    fn requests(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_line(link: &mut Link) -> String {
    let mut line = String::new();
    link.read_line(&mut line).unwrap();
    line
}

/// Reads one command frame (up to the empty line).
fn read_frame(link: &mut Link) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let l = read_line(link);
        assert!(!l.is_empty(), "connection closed mid-frame after {lines:?}");
        let l = l.trim_end().to_string();
        if l.is_empty() {
            return lines;
        }
        lines.push(l);
    }
}

/// A TLS client with the certificate in `files` connecting to the relay port.
fn tls_link(port: u16, files: &TlsFiles) -> Result<Link, std::io::Error> {
    let config = relaybox_tls::client_config(files, PeerRole::strict(Role::Dispatcher)).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut link = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    // With TLS 1.3 a refused client certificate shows at the first read.
    link.fill_buf()?;
    Ok(link)
}

/// A relay written here: a valid relay certificate, then whatever the test
/// makes it say.
struct Rogue {
    link: Link,
}

impl Rogue {
    /// Connects, answers the dispatcher's `summary` (media address
    /// `media_ip`) and `sessions` (with `sessions`, a JSON array).
    fn connect(rig: &mut Rig, cn: &str, media_ip: &str, sessions: &str) -> Rogue {
        let (certs, _) = rig.certs(&format!("rogue-{cn}"), cn);
        let mut link = tls_link(rig.relay_port, &TlsFiles::for_role(&certs, Role::Relay)).expect("handshake");
        let frame = read_frame(&mut link);
        let seq = frame[0].strip_prefix("summary ").expect("summary first");
        let summary = format!(
            "{seq} {{\"ip\":\"{media_ip}\",\"version\":\"x\",\"status\":\"active\",\"uptime\":1,\"session_count\":0,\"stream_count\":{{}},\"bps_relayed\":0}}\r\n"
        );
        link.get_mut().write_all(summary.as_bytes()).unwrap();
        let frame = read_frame(&mut link);
        let seq = frame[0].strip_prefix("sessions ").expect("then sessions");
        link.get_mut().write_all(format!("{seq} {sessions}\r\n").as_bytes()).unwrap();
        link.get_mut().flush().unwrap();
        Rogue { link }
    }

    fn send(&mut self, text: &str) {
        self.link.get_mut().write_all(text.as_bytes()).unwrap();
        self.link.get_mut().flush().unwrap();
    }

    /// `ping`, then waits for `pong`: the dispatcher has read everything
    /// sent before. Commands met on the way are answered `error`.
    fn sync(&mut self) {
        self.send("ping\r\n");
        loop {
            let line = read_line(&mut self.link);
            assert!(!line.is_empty(), "the dispatcher closed the link");
            if line == "pong\r\n" {
                return;
            }
            if let Some((_, seq)) = line.trim_end().split_once(' ') {
                while !read_line(&mut self.link).trim_end().is_empty() {}
                self.send(&format!("{seq} error\r\n"));
            }
        }
    }
}

/// Lines of `log` that contain every one of `needles`.
fn lines_with(log: &str, needles: &[&str]) -> usize {
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
}

/// Waits `grace`, then asserts that no request reached the proxy.
fn assert_no_requests(proxy: &FakeProxy, grace: Duration) {
    std::thread::sleep(grace);
    let requests = proxy.requests();
    assert!(requests.is_empty(), "{} dialog-end requests reached the proxy, e.g. {:?}", requests.len(), &requests[..1]);
}

#[test]
fn a_relay_cannot_end_or_account_a_call_another_relay_holds() {
    let mut rig = Rig::new();
    let proxy = FakeProxy::start(rig.path("proxy.sock"));
    let d = rig.dispatcher(&proxy.config());
    let (_r1, range1) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "victim", "11:22", "");
    let victim = stats_of(rig.mgmt_port, "victim");

    let mut rogue = Rogue::connect(&mut rig, "rogue-relay", "127.0.0.9", "[]");
    rogue.send(&expired_line(&victim, "victim", "11:22"));
    rogue.sync();

    let log = d.wait_log("refused an expired report", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("refused an expired report")).unwrap();
    for needed in ["CN=rogue-relay", "victim", "127.0.0.1", "held by the connected relay", "CN=relay1"] {
        assert!(line.contains(needed), "{needed} missing: {line}");
    }
    assert_no_requests(&proxy, Duration::from_secs(1));
    assert_eq!(lines_with(&d.log_text(), &["and accounted", "victim"]), 0, "not accounted:\n{}", d.log_text());
    // Relay 1's call goes on: still listed, and its re-INVITE goes to relay 1.
    assert!(management(rig.mgmt_port, "sessions").contains("\"call_id\":\"victim\""));
    let (again, _) = m.request(&update_with_dialog("request", "victim", 2, "tt", "11:22", ""));
    let (ip, ports) = common::ports(&again);
    assert!(ip == "127.0.0.1" && (range1.0..range1.1).contains(&ports[0]), "{again}");
}

#[test]
fn a_flood_of_made_up_expired_reports_ends_no_dialog_and_logs_a_bounded_number_of_lines() {
    const FLOOD: usize = 5000;
    const LOGGED: usize = 10;
    let mut rig = Rig::new();
    let proxy = FakeProxy::start(rig.path("proxy.sock"));
    let d = rig.dispatcher(&format!("refusal_log_limit = {LOGGED}\n{}", proxy.config()));
    let (_r1, range1) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "template", "1:1", "");
    let template = stats_of(rig.mgmt_port, "template");

    let mut rogue = Rogue::connect(&mut rig, "rogue-relay", "127.0.0.9", "[]");
    let mut flood = String::new();
    for i in 0..FLOOD {
        flood.push_str(&expired_line(&template, &format!("made-up-{i}"), &format!("{}:{}", i % 4096, i)));
    }
    // The module keeps being answered while the flood is read (new calls
    // prefer relay 1: the rogue answers nothing meanwhile).
    let socket = rig.socket.clone();
    let to_relay1 = |call: &str| update_with_dialog("request", call, 1, "", "3:4", "media_relay: 127.0.0.1\r\n");
    let module = std::thread::spawn(move || {
        let mut m = Module::connect(&socket);
        // Each call removed at once: relay 1 has only 20 port pairs.
        let mut replies = Vec::new();
        for i in 0..20 {
            let call = format!("during-{i}");
            replies.push(m.request(&to_relay1(&call)).0);
            assert_eq!(m.request(&remove(&call)).0, "removed\r\n");
        }
        replies
    });
    rogue.send(&flood);
    rogue.sync();
    for reply in module.join().unwrap() {
        let (ip, ports) = common::ports(&reply);
        assert!(ip == "127.0.0.1" && (range1.0..range1.1).contains(&ports[0]), "{reply}");
    }
    let (reply, took) = m.request(&to_relay1("after-flood"));
    assert!(!reply.starts_with("error"), "{reply}");
    eprintln!("update after a flood of {FLOOD} expired reports answered in {took:?}");

    assert_no_requests(&proxy, Duration::from_secs(1));
    let log = d.log_text();
    assert_eq!(lines_with(&log, &["refused an expired report", "CN=rogue-relay"]), LOGGED, "{log}");
    assert_eq!(lines_with(&log, &["made-up-", "and accounted"]), 0);
    // The rest is counted in one line, at the latest when the relay leaves.
    drop(rogue);
    d.wait_log(&format!("refused {} more reports", FLOOD - LOGGED), Duration::from_secs(10));
    assert!(management(rig.mgmt_port, "sessions").contains("\"call_id\":\"template\""));
}

#[test]
fn a_relay_listing_another_relays_call_on_connect_does_not_take_it_over() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r1, range1) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "victim", "11:22", "");
    let victim = stats_of(rig.mgmt_port, "victim");

    // It claims relay 1's call, and one nobody holds.
    let mut unknown = victim.clone();
    unknown["call_id"] = "its-own".into();
    let list = serde_json::json!([victim, unknown]).to_string();
    let mut rogue = Rogue::connect(&mut rig, "rogue-relay", "127.0.0.9", &list);
    rogue.sync();
    let log = d.wait_log("refused a listed session", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("refused a listed session")).unwrap();
    assert!(line.contains("victim") && line.contains("CN=rogue-relay") && line.contains("CN=relay1"), "{line}");

    // The call's next update still goes to relay 1, whose answer carries its ports.
    let (again, _) = m.request(&update_with_dialog("request", "victim", 2, "tt", "11:22", ""));
    let (ip, ports) = common::ports(&again);
    assert!(ip == "127.0.0.1" && (range1.0..range1.1).contains(&ports[0]), "{again}");
    // The management port lists each call once, from its holder.
    let sessions: serde_json::Value = serde_json::from_str(&management(rig.mgmt_port, "sessions")).unwrap();
    let victims: Vec<_> = sessions.as_array().unwrap().iter().filter(|s| s["call_id"] == "victim").collect();
    assert_eq!(victims.len(), 1, "{sessions}");
    drop(rogue);
}

#[test]
fn a_relays_own_expired_call_ends_the_dialog_the_module_named_once() {
    let mut rig = Rig::new();
    let proxy = FakeProxy::start(rig.path("proxy.sock"));
    let d = rig.dispatcher(&proxy.config());
    let (_r1, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "template", "1:1", "");
    let template = stats_of(rig.mgmt_port, "template");

    // The rogue relay gets a call of its own (the module prefers its address).
    let mut rogue = Rogue::connect(&mut rig, "rogue-relay", "127.0.0.9", "[]");
    let socket = rig.socket.clone();
    let module = std::thread::spawn(move || {
        let mut m = Module::connect(&socket);
        m.request(&update_with_dialog("request", "mine", 1, "", "7:8", "media_relay: 127.0.0.9\r\n")).0
    });
    let frame = read_frame(&mut rogue.link);
    let seq = frame[0].strip_prefix("update ").unwrap_or_else(|| panic!("{frame:?}"));
    assert!(frame.contains(&"call_id: mine".to_string()), "{frame:?}");
    rogue.send(&format!("{seq} 127.0.0.9 41000\r\n"));
    assert_eq!(module.join().unwrap(), "127.0.0.9 41000\r\n");

    // It expires, naming another dialog: the module's one is ended, once.
    rogue.send(&expired_line(&template, "mine", "1:1"));
    rogue.send(&expired_line(&template, "mine", "1:1"));
    rogue.sync();
    d.wait_log_all(&["expired and accounted", "mine"], Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(10);
    while proxy.requests().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request: serde_json::Value = serde_json::from_str(&requests[0]).unwrap();
    assert_eq!(request["method"], "dlg.end_dlg");
    assert_eq!(request["params"], serde_json::json!([7, 8]), "the module's dialog id, not the relay's");
    let log = d.log_text();
    assert_eq!(lines_with(&log, &["expired and accounted", "mine"]), 1, "accounted once:\n{log}");
    assert_eq!(lines_with(&log, &["refused an expired report", "mine"]), 1, "the repeat is refused:\n{log}");
}

#[test]
fn a_remove_answer_carrying_another_calls_statistics_takes_nothing_from_its_holder() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r1, range1) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "victim", "11:22", "");
    let victim = stats_of(rig.mgmt_port, "victim");

    // The rogue gets a call of its own, then answers its remove with the
    // victim's statistics.
    let mut rogue = Rogue::connect(&mut rig, "rogue-relay", "127.0.0.9", "[]");
    let socket = rig.socket.clone();
    let module = std::thread::spawn(move || {
        let mut m = Module::connect(&socket);
        let offer = m.request(&update_with_dialog("request", "mine", 1, "", "7:8", "media_relay: 127.0.0.9\r\n")).0;
        (offer, m.request(&remove("mine")).0)
    });
    let frame = read_frame(&mut rogue.link);
    let seq = frame[0].strip_prefix("update ").unwrap_or_else(|| panic!("{frame:?}"));
    rogue.send(&format!("{seq} 127.0.0.9 41000\r\n"));
    let frame = read_frame(&mut rogue.link);
    let seq = frame[0].strip_prefix("remove ").unwrap_or_else(|| panic!("{frame:?}"));
    assert!(frame.contains(&"call_id: mine".to_string()), "{frame:?}");
    rogue.send(&format!("{seq} {victim}\r\n"));
    assert_eq!(module.join().unwrap(), ("127.0.0.9 41000\r\n".to_string(), "removed\r\n".to_string()));
    rogue.sync();

    let log = d.wait_log("refused a remove answer", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("refused a remove answer")).unwrap();
    assert!(line.contains("CN=rogue-relay") && line.contains("\"victim\""), "{line}");
    assert_eq!(lines_with(&log, &["and accounted", "victim"]), 0, "{log}");
    // The victim's re-INVITE still goes to relay 1, even preferring the rogue.
    let (again, _) =
        m.request(&update_with_dialog("request", "victim", 2, "tt", "11:22", "media_relay: 127.0.0.9\r\n"));
    let (ip, ports) = common::ports(&again);
    assert!(ip == "127.0.0.1" && (range1.0..range1.1).contains(&ports[0]), "{again}");
}

#[test]
fn a_call_that_expired_while_the_dispatcher_restarted_is_accounted_but_ends_no_relay_named_dialog() {
    let mut rig = Rig::new();
    let proxy = FakeProxy::start(rig.path("proxy.sock"));
    let mut d = rig.dispatcher(&proxy.config());
    // The call expires 5 s after it was set up (no media is ever sent):
    // while no dispatcher is there.
    let (r, _) = rig.relay(&d, "relay1", "stream_timeout = 5");
    let mut m = Module::connect(&rig.socket);
    answered_call(&mut m, "while-away", "5:6", "");
    drop(m);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    r.wait_log("the expired report waits for one", Duration::from_secs(10));

    // The same dispatcher again, with an empty table.
    let certs = rig.path("dispatcher-certs");
    let cfg = rig.dispatcher_config(&certs, &proxy.config());
    d = rig.spawn("dispatcher", &cfg);
    d.wait_log_all(&["relay sessions adopted", "expired and accounted"], Duration::from_secs(15));
    let log = d.log_text();
    assert_eq!(lines_with(&log, &["expired and accounted", "while-away"]), 1, "{log}");
    assert_eq!(lines_with(&log, &["refused"]), 0, "{log}");
    assert!(log.contains("not ending the dialog"), "{log}");
    assert_no_requests(&proxy, Duration::from_secs(1));
}

#[test]
fn the_relay_port_takes_relay_certificates_only() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (certs, _) = rig.certs("other-roles", "relay1");
    for role in [Role::Dispatcher, Role::Management] {
        let files = TlsFiles::for_role(&certs, role);
        let refused = tls_link(rig.relay_port, &files).map(|mut l| read_line(&mut l));
        assert!(!matches!(refused, Ok(ref l) if !l.is_empty()), "{role}: {refused:?}");
        let log = d.wait_log(&format!("has the {role} role"), Duration::from_secs(5));
        let line = log.lines().find(|l| l.contains(&format!("has the {role} role"))).unwrap();
        assert!(line.contains("relay connection refused") && line.contains("takes relay certificates"), "{line}");
    }
    assert!(!d.log_text().contains("relay connected"));
}

#[test]
fn the_relay_refuses_a_dispatcher_that_presents_a_relay_certificate() {
    let mut rig = Rig::new();
    let (certs, _) = rig.certs("fake-dispatcher", "relay1");
    // A server with a relay's certificate (the key and certificate a relay has).
    let files = TlsFiles::for_role(&certs, Role::Relay);
    let server = relaybox_tls::server_config(&files, relaybox_tls::ClientAuth::Required, PeerRole::strict(Role::Relay));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    rig.relay_port = listener.local_addr().unwrap().port();
    let cfg = rig.relay_config(&certs, free_port_range(10), "");
    let relay = rig.spawn("relay", &cfg);
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ServerConnection::new(server.unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut byte = [0u8; 1];
    assert!(std::io::Read::read(&mut tls, &mut byte).is_err() || byte == [0], "the relay must not talk to it");
    let log = relay.wait_log("has the relay role", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("has the relay role")).unwrap();
    assert!(line.contains("takes dispatcher certificates"), "{line}");
    assert!(!log.contains("connected to dispatcher"), "{log}");
}

/// A certs_path whose relay certificate carries no role (as MediaProxy's CA
/// makes them), with this rig's CA and dispatcher certificate.
fn unmarked_relay_certs(rig: &mut Rig) -> PathBuf {
    let (certs, _) = rig.certs("unmarked", "old-relay");
    let old = rig.ca.issue_unmarked(&subject("old-relay"), 30).unwrap();
    relaybox_ca::write_issued(&certs, "relay", &old).unwrap();
    certs
}

#[test]
fn unmarked_certificates_are_refused_unless_the_setting_allows_them_with_a_warning() {
    let mut rig = Rig::new();
    let certs = unmarked_relay_certs(&mut rig);
    let d = rig.dispatcher("");
    let relay = rig.spawn("relay", &rig.relay_config(&certs, free_port_range(10), ""));
    relay.wait_log("our certificate carries no relaybox role", Duration::from_secs(10));
    let log = d.wait_log("relay connection refused", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("relay connection refused")).unwrap();
    assert!(line.contains("carries no relaybox role"), "{line}");
    drop(relay);
    drop(d);

    // The same relay, and a dispatcher that accepts unmarked certificates.
    rig.relay_port = free_port();
    rig.mgmt_port = free_port();
    rig.socket = rig.path("d2.sock");
    let (dcerts, _) = rig.certs("dispatcher2-certs", "unused");
    let cfg = rig.dispatcher_config(&dcerts, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[TLS]\n", "[TLS]\naccept_unmarked_certificates = yes\n");
    std::fs::write(&cfg, text).unwrap();
    let d = rig.spawn("dispatcher", &cfg);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    assert!(d.log_text().contains("accept_unmarked_certificates = yes"), "warned at start:\n{}", d.log_text());
    let _relay = rig.spawn("relay", &rig.relay_config(&certs, free_port_range(10), ""));
    let log = d.wait_log("relay connected", Duration::from_secs(10));
    assert!(log.contains("carries no relaybox role; accepted because accept_unmarked_certificates = yes"), "{log}");
}

/// One management command over TLS with `files`' certificate (or none).
fn management_tls(port: u16, files: &TlsFiles, with_certificate: bool) -> String {
    let dispatcher = PeerRole::strict(Role::Dispatcher);
    let config = if with_certificate {
        relaybox_tls::client_config(files, dispatcher).unwrap()
    } else {
        relaybox_tls::anonymous_client_config(files, dispatcher).unwrap()
    };
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut link = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let _ = link.get_mut().write_all(b"version\r\n");
    let mut line = String::new();
    let _ = link.read_line(&mut line);
    line
}

fn tls_management_dispatcher(rig: &mut Rig, certs: &Path, extra: &str) -> Daemon {
    let cfg = rig.dispatcher_config(certs, extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("management_use_tls = no", "management_use_tls = yes");
    std::fs::write(&cfg, text).unwrap();
    let d = rig.spawn("dispatcher", &cfg);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    d
}

#[test]
fn management_over_tls_requires_a_management_certificate_unless_allowed() {
    let mut rig = Rig::new();
    let (certs, _) = rig.certs("dispatcher-certs", "relay1");
    let d = tls_management_dispatcher(&mut rig, &certs, "");
    let management = TlsFiles::for_role(&certs, Role::Management);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(management_tls(rig.mgmt_port, &management, true).trim(), version);
    assert_eq!(management_tls(rig.mgmt_port, &management, false), "", "no certificate, no answer");
    d.wait_log("peer sent no certificate", Duration::from_secs(5));
    let relay = TlsFiles::for_role(&certs, Role::Relay);
    assert_eq!(management_tls(rig.mgmt_port, &relay, true), "", "a relay's certificate is not a management one");
    let log = d.wait_log("has the relay role", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("has the relay role")).unwrap();
    assert!(line.contains("management connection refused"), "{line}");
    assert!(!log.contains("management_allow_anonymous"), "{log}");
    drop(d);

    // Allowed, and said so at start; a relay's certificate is still refused.
    rig.relay_port = free_port();
    rig.mgmt_port = free_port();
    rig.socket = rig.path("d2.sock");
    let d = tls_management_dispatcher(&mut rig, &certs, "management_allow_anonymous = yes");
    assert!(d.log_text().contains("management_allow_anonymous = yes"), "{}", d.log_text());
    assert_eq!(management_tls(rig.mgmt_port, &management, false).trim(), version);
    assert_eq!(management_tls(rig.mgmt_port, &relay, true), "");
}
