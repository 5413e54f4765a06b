//! Prometheus text exposition at `/metrics`, from the relay's control
//! socket. Served to logged-in users, and (with `[Web] metrics_lan_only`)
//! without login to clients on loopback or private addresses.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;

use crate::app::{is_lan, ClientIp, State};
use crate::auth::LoginStats;
use crate::control;
use crate::extract::{cookie, SESSION_COOKIE};

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn label(key: &str, value: &str) -> String {
    let v = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    format!("{{{key}=\"{v}\"}}")
}

/// The exposition text for a `metrics` answer (`None`: relay down).
pub fn render(m: Option<&Value>) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "relaybox_relay_up",
        "gauge",
        "Whether the relay answers on its control socket.",
        &[(String::new(), m.is_some() as u64)],
    );
    let Some(m) = m else { return out };
    let s = &m["summary"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let status = s["status"].as_str().unwrap_or("unknown");
    metric(
        &mut out,
        "relaybox_relay_status",
        "gauge",
        "The relay's state: active takes new calls, halting does not.",
        &[("active", status == "active"), ("halting", status == "halting")]
            .map(|(k, v)| (label("status", k), v as u64)),
    );
    let datapath = s["datapath"].as_str().unwrap_or("unknown");
    metric(
        &mut out,
        "relaybox_datapath",
        "gauge",
        "Which datapath forwards media (1 for the one in use).",
        &[(label("mode", datapath), 1)],
    );
    metric(
        &mut out,
        "relaybox_uptime_seconds",
        "gauge",
        "Seconds since the relay started.",
        &[(String::new(), n(&s["uptime"]))],
    );
    metric(
        &mut out,
        "relaybox_sessions",
        "gauge",
        "Sessions (calls) held.",
        &[(String::new(), n(&s["session_count"]))],
    );
    let mut streams: Vec<(String, u64)> = s["stream_count"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (label("media", k), n(v))).collect())
        .unwrap_or_default();
    if streams.is_empty() {
        streams.push((label("media", "audio"), 0));
    }
    metric(&mut out, "relaybox_streams", "gauge", "Live media streams by media type.", &streams);
    metric(
        &mut out,
        "relaybox_relayed_bytes_total",
        "counter",
        "Bytes relayed since the relay started.",
        &[(String::new(), n(&m["bytes_relayed"]))],
    );
    metric(
        &mut out,
        "relaybox_relayed_packets_total",
        "counter",
        "Packets relayed since the relay started (userspace and kernel).",
        &[(String::new(), n(&m["packets_relayed"]))],
    );
    metric(
        &mut out,
        "relaybox_session_packets",
        "gauge",
        "Packets relayed in the sessions held now.",
        &[(String::new(), n(&m["session_packets"]))],
    );
    metric(
        &mut out,
        "relaybox_session_bytes",
        "gauge",
        "Bytes relayed in the sessions held now.",
        &[(String::new(), n(&m["session_bytes"]))],
    );
    metric(
        &mut out,
        "relaybox_relayed_bits_per_second",
        "gauge",
        "Relayed traffic averaged over the sampling period.",
        &[(String::new(), n(&s["bps_relayed"]))],
    );
    metric(
        &mut out,
        "relaybox_ports",
        "gauge",
        "UDP media ports in the pool by state.",
        &[(label("state", "used"), n(&m["ports_used"])), (label("state", "free"), n(&m["ports_free"]))],
    );
    metric(
        &mut out,
        "relaybox_latch_drops_total",
        "counter",
        "Packets dropped by the RTP-bleed (latching) rule.",
        &[(String::new(), n(&m["bleed_drops"]))],
    );
    metric(
        &mut out,
        "relaybox_port_bind_failures_total",
        "counter",
        "Relay port pairs that could not be bound because another program held a port (each call got the next free pair).",
        &[(String::new(), n(&m["port_bind_failures"]))],
    );
    metric(
        &mut out,
        "relaybox_dispatchers_configured",
        "gauge",
        "Dispatchers the relay is configured to connect to.",
        &[(String::new(), m["dispatchers"].as_array().map_or(0, |a| a.len() as u64))],
    );
    if let Some(links) = m["links"].as_u64() {
        metric(
            &mut out,
            "relaybox_dispatcher_links",
            "gauge",
            "Dispatcher links that are up.",
            &[(String::new(), links)],
        );
    }
    out
}

/// The page's own login counters.
pub fn render_logins(stats: &LoginStats) -> String {
    let mut out = String::new();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    metric(
        &mut out,
        "relaybox_web_password_checks_total",
        "counter",
        "Login passwords checked (argon2 runs) by the web page.",
        &[(String::new(), n(&stats.checks))],
    );
    metric(
        &mut out,
        "relaybox_web_logins_refused_total",
        "counter",
        "Logins refused before their password was checked: the address was locked out or had every guess in flight, or every check was busy and the queue full.",
        &[(label("reason", "address"), n(&stats.refused_address)), (label("reason", "busy"), n(&stats.refused_busy))],
    );
    out
}

pub async fn metrics(
    AxState(state): AxState<State>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Response {
    if !state.web.metrics {
        return (StatusCode::NOT_FOUND, "metrics are off ([Web] metrics = no)\n").into_response();
    }
    let logged_in = cookie(&headers, SESSION_COOKIE).is_some_and(|id| state.sessions.touch(&id).is_some());
    if !logged_in {
        if !state.web.metrics_lan_only {
            return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
        }
        if !is_lan(ip) {
            return (StatusCode::FORBIDDEN, "metrics are served to LAN addresses only\n").into_response();
        }
    }
    let m = control::query_json(&state.control_socket(), "metrics").await.ok();
    let text = render(m.as_ref()) + &render_logins(&state.login_stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
