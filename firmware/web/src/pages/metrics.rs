//! Prometheus text exposition at `/metrics`, from the relay's control
//! socket. Served to logged-in users, and (with `[Web] metrics_lan_only`)
//! without login to clients on loopback or private addresses.

use std::sync::atomic::Ordering;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::app::{is_lan, ClientIp, State};
use crate::auth::LoginStats;
use crate::control;
use crate::extract::{cookie, SESSION_COOKIE};

/// The `Content-Type` of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;

fn labels(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A gauge that holds `value`, registered under `name`.
fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(as_i64(value));
    registry.register(name, help, g);
}

/// One gauge per label value.
fn gauges(registry: &mut Registry, name: &str, help: &str, samples: &[(Labels, u64)]) {
    let family = Family::<Labels, Gauge>::default();
    for (l, v) in samples {
        family.get_or_create(l).set(as_i64(*v));
    }
    registry.register(name, help, family);
}

/// A counter at `value`; `name` without its `_total`, which the encoder adds.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, registry);
    out
}

/// The relay's metrics, from its control socket's `metrics` answer
/// (`None`: the relay does not answer), as Prometheus text.
pub fn render(m: Option<&Value>) -> String {
    let mut registry = Registry::default();
    relay_metrics(&mut registry, m);
    encode(&registry)
}

fn relay_metrics(r: &mut Registry, m: Option<&Value>) {
    gauge(r, "relaybox_relay_up", "Whether the relay answers on its control socket", m.is_some() as u64);
    let Some(m) = m else { return };
    let s = &m["summary"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let status = s["status"].as_str().unwrap_or("unknown");
    gauges(
        r,
        "relaybox_relay_status",
        "The relay's state: active takes new calls, halting does not",
        &[("active", status == "active"), ("halting", status == "halting")]
            .map(|(k, v)| (labels("status", k), v as u64)),
    );
    let datapath = s["datapath"].as_str().unwrap_or("unknown");
    gauges(
        r,
        "relaybox_datapath",
        "Which datapath forwards media (1 for the one in use)",
        &[(labels("mode", datapath), 1)],
    );
    gauge(r, "relaybox_uptime_seconds", "Seconds since the relay started", n(&s["uptime"]));
    gauge(r, "relaybox_sessions", "Sessions (calls) held", n(&s["session_count"]));
    let mut streams: Vec<(Labels, u64)> = s["stream_count"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (labels("media", k), n(v))).collect())
        .unwrap_or_default();
    if streams.is_empty() {
        streams.push((labels("media", "audio"), 0));
    }
    gauges(r, "relaybox_streams", "Live media streams by media type", &streams);
    counter(r, "relaybox_relayed_bytes", "Bytes relayed since the relay started", n(&m["bytes_relayed"]));
    counter(
        r,
        "relaybox_relayed_packets",
        "Packets relayed since the relay started (userspace and kernel)",
        n(&m["packets_relayed"]),
    );
    gauge(r, "relaybox_session_packets", "Packets relayed in the sessions held now", n(&m["session_packets"]));
    gauge(r, "relaybox_session_bytes", "Bytes relayed in the sessions held now", n(&m["session_bytes"]));
    gauge(
        r,
        "relaybox_relayed_bits_per_second",
        "Relayed traffic averaged over the sampling period",
        n(&s["bps_relayed"]),
    );
    gauges(
        r,
        "relaybox_ports",
        "UDP media ports in the pool by state",
        &[(labels("state", "used"), n(&m["ports_used"])), (labels("state", "free"), n(&m["ports_free"]))],
    );
    counter(r, "relaybox_latch_drops", "Packets dropped by the RTP-bleed (latching) rule", n(&m["bleed_drops"]));
    counter(
        r,
        "relaybox_port_bind_failures",
        "Relay port pairs that could not be bound because another program held a port (each call got the next free pair)",
        n(&m["port_bind_failures"]),
    );
    gauge(
        r,
        "relaybox_dispatchers_configured",
        "Dispatchers the relay is configured to connect to",
        m["dispatchers"].as_array().map_or(0, |a| a.len() as u64),
    );
    if let Some(links) = m["links"].as_u64() {
        gauge(r, "relaybox_dispatcher_links", "Dispatcher links that are up", links);
    }
}

/// The page's own login counters.
pub fn render_logins(stats: &LoginStats) -> String {
    let mut registry = Registry::default();
    login_metrics(&mut registry, stats);
    encode(&registry)
}

fn login_metrics(r: &mut Registry, stats: &LoginStats) {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter(
        r,
        "relaybox_web_password_checks",
        "Login passwords checked (argon2 runs) by the web page",
        n(&stats.checks),
    );
    let refused = Family::<Labels, Counter>::default();
    refused.get_or_create(&labels("reason", "address")).inc_by(n(&stats.refused_address));
    refused.get_or_create(&labels("reason", "busy")).inc_by(n(&stats.refused_busy));
    r.register(
        "relaybox_web_logins_refused",
        "Logins refused before their password was checked: the address was locked out or had every guess in flight, or every check was busy and the queue full",
        refused,
    );
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
    let mut registry = Registry::default();
    relay_metrics(&mut registry, m.as_ref());
    login_metrics(&mut registry, &state.login_stats);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&registry)).into_response()
}
