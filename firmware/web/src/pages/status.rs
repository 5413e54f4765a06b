//! The status page: the relay's summary, its sessions and streams, port use,
//! counters and the last hour of relayed bandwidth as an inline SVG chart,
//! all from the relay's control socket; the running firmware, and a
//! failed firmware update (the box went back to the old slot) first. `/api/status` returns the same as
//! JSON plus the rendered fragment, which the page polls every 2 s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Json, Response};
use relaybox_proto::SessionStats;
use serde_json::Value;

use crate::app::{Sample, State};
use crate::control;
use crate::extract::Authed;
use crate::firmware;
use crate::html::page as frame;
use crate::html::{bps, bytes, duration, esc};
use crate::layout::html_page;

/// Samples kept: one hour at one every 10 s.
const HISTORY: usize = 360;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub struct Snapshot {
    pub metrics: Option<Value>,
    pub sessions: Vec<SessionStats>,
    pub error: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The box's time, and when `relaybox clock` last heard an NTP server (it
/// rewrites `clock` in the config directory after each answer): a wrong
/// clock is why TLS to the dispatcher fails on a board without an RTC.
fn clock_row(config_dir: &std::path::Path) -> String {
    let now = now_unix();
    let time = x509_parser::time::ASN1Time::from_timestamp(now as i64).map(|t| t.to_string()).unwrap_or_default();
    let synced = std::fs::metadata(config_dir.join("clock"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let ntp = match synced {
        Some(at) if at <= now => format!("last NTP answer {} ago", duration(now - at)),
        Some(_) => "last NTP answer in the future: the clock went back".to_string(),
        None => "no NTP answer recorded (NTP servers: System page)".to_string(),
    };
    format!(r#"<span class="mono" id="box-clock">{}</span> <span class="help">{}</span>"#, esc(&time), esc(&ntp))
}

pub async fn snapshot(state: &State) -> Snapshot {
    let socket = state.control_socket();
    let metrics = control::query_json(&socket, "metrics").await;
    let sessions = match &metrics {
        Ok(_) => control::query(&socket, "sessions").await.ok().and_then(|s| SessionStats::list_from_json(&s).ok()),
        Err(_) => None,
    };
    match metrics {
        Ok(m) => {
            record(state, &m, false);
            Snapshot { metrics: Some(m), sessions: sessions.unwrap_or_default(), error: None }
        }
        Err(e) => Snapshot { metrics: None, sessions: Vec::new(), error: Some(e.to_string()) },
    }
}

/// Adds a bandwidth sample, at most one per `SAMPLE_EVERY` unless forced.
fn record(state: &State, metrics: &Value, force: bool) {
    let bps = metrics["summary"]["bps_relayed"].as_u64().unwrap_or(0);
    let now = now_unix();
    let mut history = state.history.lock().unwrap_or_else(|e| e.into_inner());
    if !force && history.back().is_some_and(|s| now < s.unix + SAMPLE_EVERY.as_secs() / 2) {
        return;
    }
    history.push_back(Sample { unix: now, bps });
    while history.len() > HISTORY || history.front().is_some_and(|s| s.unix + 3600 < now) {
        history.pop_front();
    }
}

/// Samples the relay's bandwidth every 10 s, for the chart.
pub async fn sample_forever(state: State) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        if let Ok(m) = control::query_json(&state.control_socket(), "metrics").await {
            record(&state, &m, true);
        }
    }
}

fn chart(samples: &[Sample]) -> String {
    let (w, h) = (600.0, 120.0);
    let now = now_unix();
    let max = samples.iter().map(|s| s.bps).max().unwrap_or(0).max(1000);
    let points: Vec<String> = samples
        .iter()
        .map(|s| {
            let x = w - (now.saturating_sub(s.unix) as f64 / 3600.0 * w).min(w);
            let y = h - (s.bps as f64 / max as f64) * (h - 10.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        r##"<svg class="chart" id="bandwidth-chart" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="relayed bandwidth, last hour">
<line x1="0" y1="10" x2="{w}" y2="10" stroke="#dde" stroke-dasharray="4"/><polyline fill="none" stroke="#1d3557" stroke-width="2" points="{}"/>
<text x="4" y="22" font-size="11" fill="#556">{}</text><text x="4" y="{}" font-size="11" fill="#556">-60 min</text><text x="{}" y="{}" font-size="11" fill="#556">now</text></svg>"##,
        points.join(" "),
        esc(&bps(max)),
        h - 4.0,
        w - 28.0,
        h - 4.0
    )
}

/// The live part of the page.
pub fn fragment(state: &State, snap: &Snapshot) -> String {
    let samples: Vec<Sample> = state.history.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    let Some(m) = &snap.metrics else {
        return format!(
            r#"<section><p class="bad" id="relay-state">The relay is not running or does not answer: {}</p><p class="help">It may be restarting after an apply.</p></section>"#,
            esc(snap.error.as_deref().unwrap_or("unknown"))
        );
    };
    let s = &m["summary"];
    let text = |v: &Value| esc(v.as_str().unwrap_or("?"));
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let datapath = s["datapath"].as_str().unwrap_or("unknown");
    let datapath_note = if datapath == "userspace" {
        r#" <span class="pill down">media forwarded in userspace: the kernel datapath is not engaged</span>"#
    } else {
        ""
    };
    let status = s["status"].as_str().unwrap_or("?");
    let status_class = if status == "active" { "up" } else { "down" };
    let streams: Vec<String> = s["stream_count"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{} {}", esc(k), n(v))).collect())
        .unwrap_or_default();
    let dispatchers: Vec<String> = m["dispatchers"]
        .as_array()
        .map(|a| a.iter().map(|d| esc(d.as_str().unwrap_or("?"))).collect())
        .unwrap_or_default();
    let links = match m["links"].as_u64() {
        Some(l) => format!("{l} connected"),
        None => "link state not reported".into(),
    };
    let mut out = format!(
        r#"<section><h2>Relay</h2><table class="kv" id="relay-summary">
<tr><th>Status</th><td><span class="pill {status_class}" id="relay-state">{status}</span> (pid {pid})</td></tr>
<tr><th>Version</th><td>{version} (web page {web_version})</td></tr>
<tr><th>Uptime</th><td>{uptime}</td></tr>
<tr><th>Relay address</th><td class="mono">{ip}</td></tr>
<tr><th>Dispatchers</th><td class="mono">{dispatchers} <span class="help">({links})</span></td></tr>
<tr><th>Datapath</th><td>{datapath}{datapath_note}</td></tr>
<tr><th>Sessions</th><td id="session-count">{sessions}</td></tr>
<tr><th>Streams</th><td>{streams}</td></tr>
<tr><th>Ports</th><td>{used} used, {free} free (range {range})</td></tr>
<tr><th>Relayed</th><td>{bps_now} now, {total} in {packets} packets since start</td></tr>
<tr><th>RTP-bleed drops</th><td>{bleed}</td></tr>
<tr><th>Clock</th><td>{clock}</td></tr>
</table></section>
<section><h2>Relayed bandwidth, last hour</h2>{chart}</section>"#,
        pid = n(&m["pid"]),
        version = text(&s["version"]),
        web_version = env!("CARGO_PKG_VERSION"),
        uptime = duration(n(&s["uptime"])),
        ip = text(&s["ip"]),
        dispatchers = if dispatchers.is_empty() { "none".into() } else { dispatchers.join(", ") },
        datapath = esc(datapath),
        sessions = n(&s["session_count"]),
        streams = if streams.is_empty() { "none".into() } else { streams.join(", ") },
        used = n(&m["ports_used"]),
        free = n(&m["ports_free"]),
        range = text(&m["port_range"]),
        bps_now = bps(n(&s["bps_relayed"])),
        total = bytes(n(&m["bytes_relayed"])),
        packets = n(&m["packets_relayed"]),
        bleed = n(&m["bleed_drops"]),
        clock = clock_row(&state.config_dir),
        chart = chart(&samples),
    );
    out.push_str(r#"<section><h2>Sessions</h2><table id="sessions"><tr><th>Call</th><th>From / to</th><th>Duration</th><th>Stream</th><th>Codecs</th><th>Caller side</th><th>Callee side</th><th>Packets</th><th>Bytes</th></tr>"#);
    if snap.sessions.is_empty() {
        out.push_str(r#"<tr><td colspan="9">No calls.</td></tr>"#);
    }
    for session in &snap.sessions {
        let rows = session.streams.len().max(1);
        for (i, st) in session.streams.iter().enumerate() {
            out.push_str("<tr>");
            if i == 0 {
                out.push_str(&format!(
                    r#"<td rowspan="{rows}" class="mono">{}</td><td rowspan="{rows}">{}<br>{}</td><td rowspan="{rows}">{}</td>"#,
                    esc(&session.call_id),
                    esc(&session.from_uri),
                    esc(&session.to_uri),
                    duration(session.duration)
                ));
            }
            out.push_str(&format!(
                r#"<td>{} <span class="help">{}</span></td><td>{} / {}</td><td class="mono">{} &harr; {}</td><td class="mono">{} &harr; {}</td><td>{} / {}</td><td>{} / {}</td></tr>"#,
                esc(&st.media_type),
                esc(st.status.as_str()),
                esc(&st.caller_codec),
                esc(&st.callee_codec),
                esc(&st.caller_remote),
                esc(&st.caller_local),
                esc(&st.callee_local),
                esc(&st.callee_remote),
                st.caller_packets,
                st.callee_packets,
                bytes(st.caller_bytes),
                bytes(st.callee_bytes),
            ));
        }
        if session.streams.is_empty() {
            out.push_str(&format!(
                r#"<tr><td class="mono">{}</td><td>{}<br>{}</td><td>{}</td><td colspan="6">no streams</td></tr>"#,
                esc(&session.call_id),
                esc(&session.from_uri),
                esc(&session.to_uri),
                duration(session.duration)
            ));
        }
    }
    out.push_str("</table></section>");
    out
}

pub async fn page(AxState(state): AxState<State>, auth: Authed) -> Response {
    let snap = snapshot(&state).await;
    // A failed firmware update is said first: the box went back to the old slot.
    let slots = firmware::status(&state.startup.update);
    let running = match &slots {
        Ok(s) => format!(
            r#" Firmware <span class="mono" id="firmware-version">{}</span> (slot {}; <a href="/update">Update</a>)."#,
            esc(&s.running_version),
            s.running.slot
        ),
        Err(_) => String::new(),
    };
    let body = format!(
        r#"{}<p class="help">Updated every 2 seconds.{running}</p><div id="live">{}</div>"#,
        firmware::failed_banner(&slots),
        fragment(&state, &snap)
    );
    html_page(frame("Status", "/status", Some(&auth.csrf), &body))
}

pub async fn api(AxState(state): AxState<State>, _auth: Authed) -> Response {
    let snap = snapshot(&state).await;
    let html = fragment(&state, &snap);
    Json(serde_json::json!({
        "metrics": snap.metrics,
        "sessions": snap.sessions,
        "error": snap.error,
        "html": html,
    }))
    .into_response()
}
