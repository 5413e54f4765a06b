//! The dispatcher's Prometheus exporter (`[Dispatcher] metrics_listen`) and
//! the module socket's group and mode, against the real binary on
//! 127.0.0.1; and the Grafana dashboard in examples/ against what the
//! exporters really print.

// Needs the relay, dispatcher and web features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher", feature = "web"))]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;

fn audio(port: u16) -> String {
    format!("audio:127.0.0.1:{port}:sendrecv:ice=no")
}

/// One HTTP/1.1 request on a new connection; returns (status, content type, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metrics_config(port: u16, extra: &str) -> String {
    format!("metrics_listen = 127.0.0.1:{port}\n{extra}")
}

#[test]
fn the_dispatcher_exports_what_it_did_to_prometheus() {
    let mut rig = Rig::new();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The spool's database cannot be opened: records stay spooled.
    let extra = metrics_config(
        port,
        &format!(
            "accounting = database\nspool_dir = {}\nsocket_group = 65534\nsocket_mode = 0660\n[Database]\ndburi = sqlite://{}/missing-dir/x.db",
            rig.path("spool").display(),
            rig.path("nowhere").display()
        ),
    );
    let d = rig.dispatcher(&extra);
    let meta = std::fs::metadata(&rig.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket_mode");
    assert_eq!(meta.gid(), 65534, "socket_group");

    let mut m = Module::connect(&rig.socket);
    assert_eq!(m.request(&update("request", "early", 1, "", &audio(4000))).0, "error\r\n", "no relay yet");
    let (_r, _range) = rig.relay(&d, "relay1", "");
    let caller = Phone::new();
    let callee = Phone::new();
    let (offer, _) = m.request(&update("request", "call1", 1, "", &audio(caller.port())));
    let (answer, _) = m.request(&update("reply", "call1", 1, "tt", &audio(callee.port())));
    let (to_callee_side, to_caller_side) = (ports(&offer).1[0], ports(&answer).1[0]);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    exchange(&caller, &callee, at(to_caller_side), at(to_callee_side), 5);
    assert_eq!(m.request("bogus\r\n\r\n").0, "error\r\n");

    let (status, content_type, during) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(sample(&during, "relaybox_dispatcher_calls"), Some(1.0), "{during}");
    assert_eq!(sample(&during, r#"relaybox_dispatcher_relays{state="active"}"#), Some(1.0), "{during}");

    assert_eq!(m.request(&remove("call1")).0, "removed\r\n");
    d.wait_log("accounted", Duration::from_secs(5));
    // The spool's delivery fails at once; its depth is the record.
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, _, text) = http(addr, "GET", "/metrics");
        if sample(&text, r#"relaybox_dispatcher_accounting_spool_records{backend="database"}"#) == Some(1.0)
            || Instant::now() > until
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (series, value) in [
        (r#"relaybox_dispatcher_module_requests_total{kind="update",result="error"}"#, 1.0),
        (r#"relaybox_dispatcher_module_requests_total{kind="update",result="ports"}"#, 2.0),
        (r#"relaybox_dispatcher_module_requests_total{kind="remove",result="removed"}"#, 1.0),
        (r#"relaybox_dispatcher_module_requests_total{kind="invalid",result="error"}"#, 1.0),
        (r#"relaybox_dispatcher_module_request_duration_seconds_count{kind="update"}"#, 3.0),
        (r#"relaybox_dispatcher_module_request_duration_seconds_count{kind="remove"}"#, 1.0),
        (r#"relaybox_dispatcher_module_request_duration_seconds_bucket{kind="update",le="+Inf"}"#, 3.0),
        (r#"relaybox_dispatcher_relay_attempts_total{result="timeout"}"#, 0.0),
        ("relaybox_dispatcher_updates_without_relay_total", 1.0),
        (r#"relaybox_dispatcher_relay_attempts_total{result="ports"}"#, 2.0),
        (r#"relaybox_dispatcher_sessions_accounted_total{how="removed"}"#, 1.0),
        (r#"relaybox_dispatcher_sessions_accounted_total{how="expired"}"#, 0.0),
        (r#"relaybox_dispatcher_dialogs_ended_total{result="ok"}"#, 0.0),
        ("relaybox_dispatcher_calls", 0.0),
        (r#"relaybox_dispatcher_relays{state="active"}"#, 1.0),
        (r#"relaybox_dispatcher_relays{state="halting"}"#, 0.0),
        (r#"relaybox_dispatcher_accounting_spool_records{backend="database"}"#, 1.0),
        (r#"relaybox_dispatcher_connections{listener="module socket"}"#, 1.0),
        (r#"relaybox_dispatcher_connections{listener="relay port"}"#, 1.0),
        (r#"relaybox_dispatcher_connections{listener="metrics port"}"#, 1.0),
        (r#"relaybox_dispatcher_connections_refused_total{listener="metrics port"}"#, 0.0),
        (r#"relaybox_dispatcher_build_info{version="0.1.0"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
    }
    assert!(text.contains("# TYPE relaybox_dispatcher_module_request_duration_seconds histogram"), "{text}");
    // A latency is a few milliseconds, not zero and not beyond the budget.
    let sum = sample(&text, r#"relaybox_dispatcher_module_request_duration_seconds_sum{kind="update"}"#).unwrap();
    assert!(sum > 0.0 && sum < 3.0 * 2.0, "{sum}");

    assert_eq!(http(addr, "GET", "/").0, 404);
    assert_eq!(http(addr, "POST", "/metrics").0, 405);
    let (status, _, head_body) = http(addr, "HEAD", "/metrics");
    assert_eq!((status, head_body.as_str()), (200, ""));
}

#[test]
fn the_metrics_port_caps_connections_and_closes_silent_ones() {
    let mut rig = Rig::new();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = rig.dispatcher(&metrics_config(port, "max_metrics_connections_per_ip = 2\nhandshake_timeout = 2"));
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // A third from the same address is closed at once, unanswered.
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = third.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    d.wait_log("metrics port: connection from 127.0.0.1", Duration::from_secs(5));
    // The silent ones are closed after handshake_timeout, and places come back.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20), "{waited:?}");
    let (status, _, text) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, r#"relaybox_dispatcher_connections_refused_total{listener="metrics port"}"#),
        Some(1.0),
        "{text}"
    );
}

/// The metric names an expression refers to (histogram series by their
/// family's name).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("relaybox_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_metric_the_grafana_dashboard_uses_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 20, "{} expressions", all.len());

    // The dispatcher's exporter, with an accounting backend (the spool's
    // depth is per backend), after one request of each kind.
    let mut rig = Rig::new();
    let port = free_port();
    let extra = format!(
        "accounting = database\nspool_dir = {}\n[Database]\ndburi = sqlite://{}/missing-dir/x.db",
        rig.path("spool").display(),
        rig.path("nowhere").display()
    );
    let _d = rig.dispatcher(&metrics_config(port, &extra));
    let mut m = Module::connect(&rig.socket);
    m.request(&update("request", "c", 1, "", &audio(4000)));
    m.request(&remove("c"));
    let (_, _, mut exported) = http(format!("127.0.0.1:{port}").parse().unwrap(), "GET", "/metrics");
    // The relay's, as the box's web page serves it.
    let relay: serde_json::Value = serde_json::json!({
        "summary": {"status": "active", "datapath": "kernel", "uptime": 5, "session_count": 1,
                    "stream_count": {"audio": 1}, "bps_relayed": 64000},
        "bytes_relayed": 1, "packets_relayed": 1, "session_packets": 1, "session_bytes": 1,
        "ports_used": 4, "ports_free": 96, "bleed_drops": 0, "port_bind_failures": 0,
        "dispatchers": ["127.0.0.1"], "links": 1
    });
    exported.push_str(&relaybox_web::metrics::render(Some(&relay)));
    // Every series printed, and every family declared.
    let mut series: BTreeSet<String> = BTreeSet::new();
    for line in exported.lines() {
        match line.strip_prefix("# TYPE ").map(|t| t.split_whitespace().collect::<Vec<_>>()).as_deref() {
            Some([name, "histogram"]) => {
                series.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
            }
            Some([name, _]) => {
                series.insert(name.to_string());
            }
            Some(_) => panic!("bad TYPE line {line}"),
            None if line.starts_with('#') => {}
            None => series.extend(line.split(['{', ' ']).next().map(str::to_string)),
        }
    }

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for expr in &all {
        for name in metric_names(expr) {
            if !series.contains(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(missing.is_empty(), "the dashboard uses metrics nobody exports:\n{}", missing.join("\n"));
    assert!(used.len() >= 25, "{used:?}");
}

/// The proxy's management socket (Kamailio jsonrpcs over a datagram
/// socket): the first dialog-end request succeeds, the rest are refused.
fn fake_proxy(path: &std::path::Path) -> std::thread::JoinHandle<usize> {
    let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        for n in 0..2 {
            let Ok((len, from)) = socket.recv_from(&mut buf) else { return n };
            let request: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
            let answer = if n == 0 {
                serde_json::json!({"jsonrpc": "2.0", "result": "ok", "id": request["id"]})
            } else {
                serde_json::json!({"jsonrpc": "2.0", "error": {"code": 404, "message": "no such dialog"}, "id": request["id"]})
            };
            let _ = socket.send_to(answer.to_string().as_bytes(), from.as_pathname().unwrap());
        }
        2
    })
}

#[test]
fn dialogs_ended_through_the_proxy_are_counted_by_result() {
    let mut rig = Rig::new();
    let port = free_port();
    let proxy = fake_proxy(&rig.path("proxy.sock"));
    let extra = format!("[OpenSIPS]\nsocket_path = {}\nproxy = kamailio\n", rig.path("proxy.sock").display());
    let d = rig.dispatcher(&metrics_config(port, &extra));
    // No media is ever sent: both answered calls expire after 2 s.
    let (_r, _) = rig.relay(&d, "relay1", "stream_timeout = 2");
    let mut m = Module::connect(&rig.socket);
    for call in ["c1", "c2"] {
        assert!(!m.request(&update("request", call, 1, "", &audio(4000))).0.starts_with("error"));
        assert!(!m.request(&update("reply", call, 1, "tt", &audio(4002))).0.starts_with("error"));
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, _, text) = http(addr, "GET", "/metrics");
        let ended: f64 = ["ok", "failed"]
            .iter()
            .filter_map(|r| sample(&text, &format!("relaybox_dispatcher_dialogs_ended_total{{result=\"{r}\"}}")))
            .sum();
        if ended >= 2.0 || Instant::now() > until {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(proxy.join().unwrap(), 2, "the proxy got both requests");
    assert_eq!(sample(&text, r#"relaybox_dispatcher_dialogs_ended_total{result="ok"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"relaybox_dispatcher_dialogs_ended_total{result="failed"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"relaybox_dispatcher_sessions_accounted_total{how="expired"}"#), Some(2.0), "{text}");
}
