//! The dispatcher and the relay as real processes on 127.0.0.1: module
//! socket, mutual TLS link, management port, failure handling.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const MODULE_BUDGET: Duration = Duration::from_millis(500);

fn audio(port: u16) -> String {
    format!("audio:127.0.0.1:{port}:sendrecv:ice=no")
}

#[test]
fn no_relay_connected_answers_error_within_the_module_budget() {
    let mut rig = Rig::new();
    let _d = rig.dispatcher("");
    let mut m = Module::connect(&rig.socket);
    let (reply, took) = m.request(&update("request", "norelay", 1, "", &audio(4000)));
    assert_eq!(reply, "error\r\n");
    assert!(took < MODULE_BUDGET, "took {took:?}");
    eprintln!("no relay: error after {took:?}");
}

#[test]
fn a_call_is_relayed_both_ways_and_accounted() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r, range) = rig.relay(&d, "relay1", "");
    let caller = Phone::new();
    let callee = Phone::new();
    let mut m = Module::connect(&rig.socket);

    let (offer, took) = m.request(&update("request", "call1", 1, "", &audio(caller.port())));
    let (ip, offer_ports) = ports(&offer);
    assert_eq!(ip, "127.0.0.1", "{offer}");
    assert_eq!(offer_ports.len(), 1);
    assert!((range.0..range.1).contains(&offer_ports[0]), "{offer} outside {range:?}");
    eprintln!("update answered in {took:?}");
    // A retransmitted INVITE gets the same ports.
    assert_eq!(m.request(&update("request", "call1", 1, "", &audio(caller.port()))).0, offer);
    let (answer, _) = m.request(&update("reply", "call1", 1, "tt", &audio(callee.port())));
    let (_, answer_ports) = ports(&answer);
    assert_ne!(answer_ports, offer_ports);

    // The callee sends to the port in the offer, the caller to the one in the answer.
    let to_callee_side: SocketAddr = format!("127.0.0.1:{}", offer_ports[0]).parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{}", answer_ports[0]).parse().unwrap();
    let (got_at_callee, got_at_caller) = exchange(&caller, &callee, to_caller_side, to_callee_side, 20);
    assert!(got_at_callee >= 19 && got_at_caller >= 19);

    let sessions = management(rig.mgmt_port, "sessions");
    let list: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    let call = list.as_array().unwrap().iter().find(|s| s["call_id"] == "call1").expect("call in sessions");
    assert!(call["streams"][0]["caller_packets"].as_u64().unwrap() >= 19, "{sessions}");
    assert_eq!(call["streams"][0]["caller_codec"], "PCMA");

    assert_eq!(m.request(&remove("call1")).0, "removed\r\n");
    let log = d.wait_log("accounted", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("accounted") && l.contains("call1")).unwrap();
    assert!(line.contains("\"caller_bytes\":"), "{line}");
    assert!(!line.contains("\"caller_bytes\":0,"), "bytes must be counted: {line}");
    let sessions = management(rig.mgmt_port, "sessions");
    assert!(!sessions.contains("call1"), "{sessions}");
}

#[test]
fn garbage_and_oversized_module_input_gets_error_and_the_connection_survives() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    let mut other = Module::connect(&rig.socket);

    assert_eq!(m.request("hello world\r\n\r\n").0, "error\r\n");
    assert_eq!(m.request("update\r\nthis is not a header\r\n\r\n").0, "error\r\n");
    assert_eq!(m.request("update\r\ntype: request\r\n\r\n").0, "error\r\n");
    let mut big = vec![b'x'; 200_000];
    big.extend_from_slice(b"\r\n\r\n");
    m.send_raw(&big);
    assert_eq!(m.read_line(), "error\r\n");
    m.send_raw(b"\xff\xfe\r\n\r\n");
    assert_eq!(m.read_line(), "error\r\n");
    assert!(m.nothing_pending(), "exactly one reply per request");

    let (ok, _) = m.request(&update("request", "after-garbage", 1, "", &audio(5000)));
    assert_eq!(ports(&ok).1.len(), 1, "{ok}");
    let (ok2, _) = other.request(&update("request", "other-conn", 1, "", &audio(5002)));
    assert_eq!(ports(&ok2).1.len(), 1, "{ok2}");
    let log = d.log_text();
    assert!(log.contains("module request rejected"), "{log}");
}

#[test]
fn relays_failing_tls_checks_are_refused_with_the_reason() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("passport = O:Example Ltd, CN:*relay");

    // 1. a certificate from another CA
    let mut other = relaybox_ca::CertificateAuthority::create(&relaybox_ca::Subject::new("evil CA"), 30).unwrap();
    let relay_cert = other.issue(relaybox_ca::Role::Relay, &subject("evil-relay"), 30).unwrap();
    let disp_cert = other.issue(relaybox_ca::Role::Dispatcher, &subject("dispatcher"), 30).unwrap();
    let evil = rig.path("evil-certs");
    relaybox_ca::write_certs_dir(&other, &evil, &relay_cert, &disp_cert).unwrap();
    // the relay must trust our dispatcher to get as far as presenting its cert
    std::fs::copy(rig.path("dispatcher-certs/ca.pem"), evil.join("ca.pem")).unwrap();
    std::fs::remove_file(evil.join("crl.pem")).unwrap();
    let cfg = rig.relay_config(&evil, free_port_range(10), "");
    let _evil = rig.spawn("relay", &cfg);
    let log = d.wait_log("relay connection refused", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("relay connection refused")).unwrap().to_string();
    assert!(line.to_lowercase().contains("unknown"), "should name an unknown issuer: {line}");

    // 2. failing the passport
    let (certs, _) = rig.certs("intruder-certs", "intruder");
    let cfg = rig.relay_config(&certs, free_port_range(10), "");
    let _intruder = rig.spawn("relay", &cfg);
    let log = d.wait_log("fails the passport", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("fails the passport")).unwrap();
    assert!(line.contains("CN"), "{line}");

    // 3. revoked: a fresh dispatcher that loads a CRL listing the relay
    let (certs, revoked) = rig.certs("revoked-certs", "edge-relay");
    rig.ca.revoke(&revoked.serial_hex).unwrap();
    let (dcerts, _) = rig.certs("dispatcher2-certs", "unused");
    std::fs::write(dcerts.join("crl.pem"), rig.ca.crl_pem().unwrap()).unwrap();
    rig.relay_port = free_port();
    rig.mgmt_port = free_port();
    rig.socket = rig.path("d2.sock");
    let d2 = rig.spawn("dispatcher", &rig.dispatcher_config(&dcerts, ""));
    d2.wait_log("dispatcher ready", Duration::from_secs(10));
    let cfg = rig.relay_config(&certs, free_port_range(10), "");
    let _revoked = rig.spawn("relay", &cfg);
    let log = d2.wait_log("relay connection refused", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("relay connection refused")).unwrap();
    assert!(line.to_lowercase().contains("revoked"), "{line}");

    // None of them became a relay: calls get `error`.
    let mut m = Module::connect(&rig.socket);
    assert_eq!(m.request(&update("request", "x", 1, "", &audio(4000))).0, "error\r\n");
    assert!(!d.log_text().contains("relay connected"));
}

#[test]
fn killed_relay_new_calls_go_to_the_other_one_within_budget() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (mut r1, range1) = rig.relay(&d, "relay1", "");
    let (_r2, range2) = rig.relay(&d, "relay2", "");
    let mut m = Module::connect(&rig.socket);
    // Find a call that landed on relay 1. Calls that landed on relay 2 are
    // removed at once: each holds 4 of its 40 ports, and a long unlucky run
    // plus the calls below would exhaust it (CI saw `error` that way).
    let mut on_r1 = None;
    for i in 0..40 {
        let call = format!("spread{i}");
        let (reply, _) = m.request(&update("request", &call, 1, "", &audio(6000)));
        let p = ports(&reply).1;
        assert!(!p.is_empty(), "{call}: {reply}");
        if (range1.0..range1.1).contains(&p[0]) {
            on_r1 = Some(call);
            break;
        }
        assert!((range2.0..range2.1).contains(&p[0]), "{call}: {reply}");
        assert_eq!(m.request(&remove(&call)).0, "removed\r\n");
    }
    assert!(on_r1.is_some(), "random order never picked relay 1 in 40 calls");
    r1.child.kill().unwrap();
    r1.child.wait().unwrap();
    d.wait_log("relay disconnected", Duration::from_secs(5));
    for i in 0..5 {
        let (reply, took) = m.request(&update("request", &format!("after-kill{i}"), 1, "", &audio(6000)));
        let (_, p) = ports(&reply);
        assert!(p.first().is_some_and(|p| (range2.0..range2.1).contains(p)), "{reply}");
        // Not asked of the dead relay first: that would cost its
        // relay_timeout (2 s).
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

#[test]
fn sigterm_expires_every_session_and_the_dispatcher_accounts_them() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (mut r, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    for call in ["t1", "t2"] {
        assert!(!m.request(&update("request", call, 1, "", &audio(7000))).0.starts_with("error"));
    }
    r.signal("TERM");
    assert!(r.wait_exit(Duration::from_secs(10)).is_some(), "relay did not exit");
    let accounted =
        |log: &str, call: &str| log.lines().any(|l| l.contains("expired and accounted") && l.contains(call));
    d.wait_log_for("t1 and t2 expired and accounted", Duration::from_secs(5), |log| {
        accounted(log, "t1") && accounted(log, "t2")
    });
}

#[test]
fn sighup_halts_new_calls_and_exits_after_the_last_one() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (mut r, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    assert!(!m.request(&update("request", "h1", 1, "", &audio(7000))).0.starts_with("error"));
    r.signal("HUP");
    r.wait_log("halting", Duration::from_secs(5));
    // A new call is refused (only relay is halting), the old one still works.
    assert_eq!(m.request(&update("request", "h2", 1, "", &audio(7002))).0, "error\r\n");
    assert!(!m.request(&update("reply", "h1", 1, "tt", &audio(7004))).0.starts_with("error"));
    let summary = management(rig.mgmt_port, "summary");
    assert!(summary.contains("\"status\":\"halting\""), "{summary}");
    assert!(r.wait_exit(Duration::from_millis(500)).is_none(), "exited with a call up");
    assert_eq!(m.request(&remove("h1")).0, "removed\r\n");
    assert!(r.wait_exit(Duration::from_secs(5)).is_some(), "relay did not exit after its last call");
}

#[test]
fn management_commands() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (_r, _) = rig.relay(&d, "relay1", "");
    assert_eq!(management(rig.mgmt_port, "version").trim(), env!("CARGO_PKG_VERSION"));
    let summary: serde_json::Value = serde_json::from_str(&management(rig.mgmt_port, "summary")).unwrap();
    assert_eq!(summary[0]["status"], "active");
    assert_eq!(summary[0]["ip"], "127.0.0.1");
    assert_eq!(summary[0]["datapath"], "userspace");
    assert_eq!(management(rig.mgmt_port, "sessions").trim(), "[]");
    assert_eq!(management(rig.mgmt_port, "drop tables"), "error\r\n");
}

#[test]
fn update_times_out_to_error_when_the_relay_stops_answering() {
    let mut rig = Rig::new();
    // A 250 ms module budget: the dispatcher must give up at ~225 ms, not at
    // relay_timeout (2 s), and it leaves a loaded machine room to show it.
    let d = rig.dispatcher("module_timeout = 0.25");
    let (r, _) = rig.relay(&d, "relay1", "");
    r.freeze(); // the TCP link stays up but nothing answers
    let mut m = Module::connect(&rig.socket);
    let start = Instant::now();
    let (reply, _) = m.request(&update("request", "frozen", 1, "", &audio(4000)));
    let took = start.elapsed();
    r.signal("CONT");
    assert_eq!(reply, "error\r\n");
    assert!(took >= Duration::from_millis(200), "answered before the deadline: {took:?}");
    assert!(took < MODULE_BUDGET, "proxy waited {took:?}");
    eprintln!("frozen relay: error after {took:?}");
}

#[test]
#[cfg(feature = "accounting-sql")]
fn finished_sessions_reach_the_database() {
    let mut rig = Rig::new();
    let db = rig.path("acct.db");
    let spool = rig.path("spool");
    let extra = format!(
        "accounting = database\nspool_dir = {}\n[Database]\ndburi = sqlite://{}\n",
        spool.display(),
        db.display()
    );
    let d = rig.dispatcher(&extra);
    let (_r, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    for call in ["db1", "db2"] {
        assert!(!m.request(&update("request", call, 1, "", &audio(4000))).0.starts_with("error"));
        // Answered: the statistics list answered streams only (as MediaProxy's).
        assert!(!m.request(&update("reply", call, 1, "tt", &audio(5000))).0.starts_with("error"));
        assert_eq!(m.request(&remove(call)).0, "removed\r\n");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rows: Vec<(String, String)> = rt.block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", db.display());
        for _ in 0..100 {
            if let Ok(pool) = sqlx::AnyPool::connect(&url).await {
                let q = sqlx::query_as::<_, (String, String)>("SELECT call_id, info FROM media_sessions ORDER BY id");
                if let Ok(rows) = q.fetch_all(&pool).await {
                    if rows.len() == 2 {
                        return rows;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("rows never arrived:\n{}", d.log_text());
    });
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["db1", "db2"]);
    let info: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(info["relay_ip"], "127.0.0.1");
    assert_eq!(info["streams"][0]["status"], "closed");
    // The spool file goes once the insert is committed, just after the row
    // became visible.
    let spooled = || std::fs::read_dir(spool.join("database")).unwrap().count();
    let until = Instant::now() + Duration::from_secs(5);
    while spooled() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(spooled(), 0, "delivered records leave the spool");
}

#[test]
fn a_call_whose_relay_died_moves_to_another_relay_on_the_next_offer() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (mut r1, range1) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    let (first, _) = m.request(&update("request", "moving", 1, "", &audio(6000)));
    assert!((range1.0..range1.1).contains(&ports(&first).1[0]), "{first}");
    let (_r2, range2) = rig.relay(&d, "relay2", "");
    // While relay 1 lives, the call stays on it.
    let (again, _) = m.request(&update("request", "moving", 2, "", &audio(6000)));
    assert!((range1.0..range1.1).contains(&ports(&again).1[0]), "{again}");
    r1.child.kill().unwrap();
    r1.child.wait().unwrap();
    d.wait_log("relay disconnected", Duration::from_secs(5));
    let (moved, _) = m.request(&update("request", "moving", 3, "", &audio(6000)));
    assert!((range2.0..range2.1).contains(&ports(&moved).1[0]), "{moved}");
}

#[test]
fn cli_prints_sessions_and_summary_over_tls_management() {
    let mut rig = Rig::new();
    let (certs, _) = rig.certs("dispatcher-certs", "unused-relay");
    let plain = rig.dispatcher_config(&certs, "");
    let text = std::fs::read_to_string(&plain).unwrap().replace("management_use_tls = no", "management_use_tls = yes");
    let cfg = rig.path("dispatcher-tls.ini");
    std::fs::write(&cfg, text).unwrap();
    let d = rig.spawn("dispatcher", &cfg);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let (_r, _) = rig.relay(&d, "relay1", "");
    let mut m = Module::connect(&rig.socket);
    assert!(!m.request(&update("request", "cli-call", 1, "", &audio(4000))).0.starts_with("error"));
    assert!(!m.request(&update("reply", "cli-call", 1, "tt", &audio(5000))).0.starts_with("error"));

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN).arg("--config").arg(&cfg).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let summary = cli(&["summary"]);
    assert!(summary.starts_with("RELAY"), "{summary}");
    assert!(summary.contains("127.0.0.1") && summary.contains("active"), "{summary}");
    let sessions = cli(&["sessions"]);
    assert!(sessions.contains("cli-call") && sessions.contains("audio"), "{sessions}");
    let json: serde_json::Value = serde_json::from_str(&cli(&["sessions", "--json"])).unwrap();
    assert_eq!(json[0]["call_id"], "cli-call");
    // Plain TCP against a TLS port fails with a clear error, not a hang.
    let out = std::process::Command::new(BIN).arg("--config").arg(&cfg).args(["summary", "--plain"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_relay_revoked_while_connected_is_dropped_at_the_next_verify_interval() {
    let mut rig = Rig::new();
    let (dcerts, _) = rig.certs("dispatcher-certs", "unused");
    std::fs::write(dcerts.join("crl.pem"), rig.ca.crl_pem().unwrap()).unwrap();
    let cfg = rig.dispatcher_config(&dcerts, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[TLS]\n", "[TLS]\nverify_interval = 1\n");
    std::fs::write(&cfg, text).unwrap();
    let d = rig.spawn("dispatcher", &cfg);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let (certs, relay_cert) = rig.certs("relay-certs", "relay1");
    let r = rig.spawn("relay", &rig.relay_config(&certs, free_port_range(10), ""));
    d.wait_log("relay connected", Duration::from_secs(10));
    rig.ca.revoke(&relay_cert.serial_hex).unwrap();
    std::fs::write(dcerts.join("crl.pem"), rig.ca.crl_pem().unwrap()).unwrap();
    // The WARN comes from the CRL check, "relay disconnected" from the link's
    // task as it ends: both must appear.
    d.wait_log_all(&["revoked by the CRL, disconnecting", "relay disconnected"], Duration::from_secs(10));
    // It cannot come back: the next handshake is refused as revoked.
    let log = d.wait_log("relay connection refused", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("relay connection refused")).unwrap();
    assert!(line.contains("revoked"), "{line}");
    drop(r);
}

/// This boot's id and milliseconds since it, as the relay marks snapshots.
fn boot_now() -> ([u8; 16], u64) {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (id, t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000)
}

/// A state file as a relay whose clock started in 1970 leaves it: one call
/// offered at its 00:01:40, the snapshot taken half a second later, in this
/// boot.
fn snapshot_of_one_call(ports: (u16, u16), call_id: &str) -> Vec<u8> {
    use relaybox_core::{ClockMark, CoreConfig, SessionTable};
    let mut table = SessionTable::new(CoreConfig { port_range: ports, ..CoreConfig::default() });
    // The offer as the proxy module sends it.
    let text = update("request", call_id, 1, "", &audio(4000));
    let frame: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let relaybox_proto::ModuleRequest::Update(offer) =
        relaybox_proto::ModuleRequest::parse(&frame, &relaybox_proto::module::Limits::default()).unwrap()
    else {
        unreachable!("an update")
    };
    table.update(&offer, "127.0.0.1".parse().unwrap(), 100_000).unwrap();
    let (boot_id, since_boot_ms) = boot_now();
    table.snapshot(ClockMark { at: 100_500, boot_id, since_boot_ms }).encode()
}

#[test]
fn a_damaged_state_file_is_refused_and_kept_aside() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (certs, _) = rig.certs("relay-certs-damaged", "relay1");
    let ports = free_port_range(10);
    let cfg = rig.relay_config(&certs, ports, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let state = text.lines().find_map(|l| l.strip_prefix("state_file = ")).unwrap().to_string();
    let mut bytes = snapshot_of_one_call(ports, "damaged-call");
    // One flipped bit in the middle of the call's data.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&state, &bytes).unwrap();

    let r = rig.spawn("relay", &cfg);
    let warning = r.wait_log("session snapshot refused", Duration::from_secs(10));
    assert!(warning.contains("snapshot is damaged"), "{warning}");
    let log = d.wait_log("relay sessions adopted", Duration::from_secs(10));
    assert!(log.contains("sessions=0"), "{log}");
    assert_eq!(std::fs::read(format!("{state}.refused")).unwrap(), bytes, "kept aside as it was");
    assert!(!management(rig.mgmt_port, "sessions").contains("damaged-call"));
}

#[test]
fn a_restored_call_keeps_the_saved_relays_timescale_after_the_wall_clock_moved() {
    // The snapshot of a relay whose clock started in 1970 (a board without
    // an RTC, before NTP): its call was offered at its 00:01:40, the
    // snapshot taken half a second later, both in this boot. The wall clock
    // says 2026 now; read on that scale the call would be 56 years old and
    // expire at once.
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (certs, _) = rig.certs("relay-certs-restored", "relay1");
    let ports = free_port_range(10);
    let cfg = rig.relay_config(&certs, ports, "stream_timeout = 30");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let state = text.lines().find_map(|l| l.strip_prefix("state_file = ")).unwrap().to_string();
    std::fs::write(&state, snapshot_of_one_call(ports, "from-1970")).unwrap();

    let _r = rig.spawn("relay", &cfg);
    let log = d.wait_log("relay sessions adopted", Duration::from_secs(10));
    assert!(log.contains("sessions=1"), "{log}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!d.log_text().contains("expired"), "the restored call expired:\n{}", d.log_text());
    let sessions = management(rig.mgmt_port, "sessions");
    assert!(sessions.contains("\"call_id\":\"from-1970\""), "{sessions}");
}

#[test]
fn ports_another_program_holds_are_skipped_and_the_call_is_relayed() {
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let control = rig.path("busy-relay.sock");
    let (r, (start, end)) = rig.relay(&d, "relay1", &format!("control_socket = {}", control.display()));
    // The first call would get `start` (caller side) and `start + 2`
    // (callee side); something else on the host holds `start` and the RTCP
    // port `start + 3`.
    let _busy: Vec<UdpSocket> =
        [start, start + 3].iter().map(|&p| UdpSocket::bind(("127.0.0.1", p)).unwrap()).collect();
    let caller = Phone::new();
    let callee = Phone::new();
    let mut m = Module::connect(&rig.socket);
    let (offer, _) = m.request(&update("request", "busy", 1, "", &audio(caller.port())));
    let (answer, _) = m.request(&update("reply", "busy", 1, "tt", &audio(callee.port())));
    let (offer_port, answer_port) = (ports(&offer).1[0], ports(&answer).1[0]);
    for p in [offer_port, answer_port] {
        assert!((start + 4..end).contains(&p), "{p} (offer: {offer}, answer: {answer}) must skip the busy pairs");
    }
    let to_callee_side: SocketAddr = format!("127.0.0.1:{offer_port}").parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{answer_port}").parse().unwrap();
    let (got_at_callee, got_at_caller) = exchange(&caller, &callee, to_caller_side, to_callee_side, 20);
    assert!(got_at_callee >= 19 && got_at_caller >= 19);
    let log = r.log_text();
    assert!(log.contains(&format!("relay ports {start}/{} are busy", start + 1)), "{log}");
    assert!(log.contains(&format!("relay ports {}/{} are busy", start + 2, start + 3)), "{log}");
    // Counted for the box's /metrics.
    let mut ctl = std::os::unix::net::UnixStream::connect(&control).unwrap();
    ctl.write_all(b"metrics\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(ctl).read_line(&mut line).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(metrics["port_bind_failures"], 2, "{line}");
    assert_eq!(m.request(&remove("busy")).0, "removed\r\n");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("0");
    line.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn socket_count(pid: u32) -> usize {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count()
}

/// Memory per held call: the userspace datapath keeps no task or buffer
/// per port (a fixed set of I/O threads polls them), so 1000 held audio
/// calls (4000 UDP sockets) add at most 4 KiB of relay RSS each. With a
/// tokio task and its receive loop per socket they added about 18.
#[test]
fn held_calls_cost_the_relay_at_most_4_kib_each() {
    const CALLS: u16 = 1000;
    let mut rig = Rig::new();
    let d = rig.dispatcher("");
    let (certs, _) = rig.certs("relay-certs-memory", "relay-memory");
    let range = free_port_range(CALLS * 4 + 8);
    let extra = format!("max_sessions = {}\nmax_streams_per_session = 1", CALLS + 4);
    let r = rig.spawn("relay", &rig.relay_config(&certs, range, &extra));
    d.wait_log("relay connected", Duration::from_secs(10));
    let pid = r.child.id();
    let mut m = Module::connect(&rig.socket);
    // Warm up (runtime, allocator, snapshot writer) with calls that end.
    for i in 0..50 {
        let call = format!("warm{i}");
        m.request(&update("request", &call, 1, "", &audio(4000)));
        m.request(&update("reply", &call, 1, "tt", &audio(5000)));
        assert_eq!(m.request(&remove(&call)).0, "removed\r\n");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (rss0, sockets0) = (rss_kib(pid), socket_count(pid));
    for i in 0..CALLS {
        let call = format!("held{i}");
        let (offer, _) = m.request(&update("request", &call, 1, "", &audio(4000)));
        assert_eq!(ports(&offer).1.len(), 1, "{offer}");
        let (answer, _) = m.request(&update("reply", &call, 1, "tt", &audio(5000)));
        assert_eq!(ports(&answer).1.len(), 1, "{answer}");
    }
    // The snapshot of the held calls is written meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let (rss1, sockets1) = (rss_kib(pid), socket_count(pid));
    assert_eq!(sockets1 - sockets0, 4 * usize::from(CALLS), "every call holds its 4 sockets");
    let per_call = (rss1.saturating_sub(rss0)) as f64 / f64::from(CALLS);
    eprintln!("relay RSS {rss0} KiB -> {rss1} KiB with {CALLS} calls held: {per_call:.2} KiB per call");
    assert!(per_call <= 4.0, "{per_call:.2} KiB per held call");
}
