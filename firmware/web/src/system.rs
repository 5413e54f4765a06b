//! The System page: the box's host name and NTP servers, kept in
//! `system.conf` (`[Web] system_conf`), which the image's init sources as
//! shell. Values are checked by `relaybox-config`'s strict rules before
//! they are written, so the file can never run anything. New NTP servers
//! take effect at once: the clock daemon (`[Web] clock_pid_file`) is told
//! to stop and its supervisor starts it again, reading the file. The host
//! name takes effect at the next boot.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use relaybox_config::{split_servers, SystemSettings, MAX_NTP_SERVERS};

use crate::app::{html_page, Authed, State};
use crate::files;
use crate::html::{csrf_field, esc, form_field, page};
use crate::pages::Flash;

fn read(state: &State) -> String {
    std::fs::read_to_string(&state.web.system_conf).unwrap_or_default()
}

/// The host name the kernel has now.
fn running_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn system_page(
    state: &State,
    auth: &Authed,
    values: &SystemSettings,
    errors: &HashMap<&str, String>,
    message: &str,
) -> String {
    let field = |key: &str, id: &str, label: &str, value: &str, help: &str| {
        let input = format!(r#"<input type="text" id="{id}" name="{id}" value="{}">"#, esc(value));
        form_field(id, label, &input, errors.get(key).map(String::as_str), help)
    };
    let hostname = field(
        "HOSTNAME",
        "hostname",
        "Host name",
        &values.hostname,
        &format!(
            "Letters, digits, hyphens and dots. Takes effect at the next boot (running now: {}).",
            esc(&running_hostname())
        ),
    );
    let ntp = field(
        "NTP_SERVERS",
        "ntp_servers",
        "NTP servers",
        &values.ntp_servers.join(" "),
        &format!(
            "host or host:port, separated by spaces, at most {MAX_NTP_SERVERS}; all are asked at once. Empty: no NTP \
             (a box without a real-time clock then keeps only the last known time). Takes effect at once."
        ),
    );
    let body = format!(
        r#"{message}<section><form method="post" action="/system">{csrf}
<p class="help">File: <span class="mono">{path}</span>; other lines and comments in it are kept.</p>
{hostname}{ntp}
<button type="submit">Save</button></form></section>"#,
        csrf = csrf_field(&auth.csrf),
        path = esc(&state.web.system_conf.display().to_string()),
    );
    page("System", "/system", Some(&auth.csrf), &body)
}

fn flash(f: &Flash) -> String {
    match f.done.as_str() {
        "restarted" => format!(
            r#"<p class="ok" id="flash">Saved. The clock daemon (pid {}) was told to restart with the new NTP servers.</p>"#,
            esc(&f.pid)
        ),
        "saved" => {
            r#"<p class="ok" id="flash">Saved. No clock daemon is running: the NTP servers take effect at the next boot.</p>"#
                .into()
        }
        "unchanged-ntp" => {
            r#"<p class="ok" id="flash">Saved. The NTP servers are unchanged; a new host name takes effect at the next boot.</p>"#
                .into()
        }
        _ => String::new(),
    }
}

pub async fn form(AxState(state): AxState<State>, auth: Authed, Query(f): Query<Flash>) -> Response {
    let values = SystemSettings::parse(&read(&state));
    html_page(system_page(&state, &auth, &values, &HashMap::new(), &flash(&f)))
}

pub async fn save(AxState(state): AxState<State>, auth: Authed, Form(form): Form<HashMap<String, String>>) -> Response {
    if let Err(r) = auth.check(form.get("csrf").map(String::as_str).unwrap_or("")) {
        return *r;
    }
    let value = |name: &str| form.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let wanted = SystemSettings { hostname: value("hostname"), ntp_servers: split_servers(&value("ntp_servers")) };
    let old = read(&state);
    let text = match wanted.apply_to(&old) {
        Ok(text) => text,
        Err(errors) => {
            let mut by_key: HashMap<&str, String> = HashMap::new();
            for e in errors {
                by_key.entry(e.key).and_modify(|m| m.push_str(&format!("; {}", e.reason))).or_insert(e.reason);
            }
            let message = r#"<p class="bad" id="flash">Nothing was saved: correct the marked settings.</p>"#;
            let body = system_page(&state, &auth, &wanted, &by_key, message);
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::response::Html(body)).into_response();
        }
    };
    let path = &state.web.system_conf;
    if let Err(e) = files::write_atomic(path, text.as_bytes(), 0o644) {
        tracing::error!("web: saving {}: {e}", path.display());
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("saving failed: {e}\n")).into_response();
    }
    tracing::info!(hostname = %wanted.hostname, ntp_servers = ?wanted.ntp_servers, "web: saved {}", path.display());
    if SystemSettings::parse(&old).ntp_servers == wanted.ntp_servers {
        return Redirect::to("/system?done=unchanged-ntp").into_response();
    }
    match restart_clock(&state.web.clock_pid_file) {
        Some(pid) => {
            tracing::info!(pid, "web: clock daemon told to restart for the new NTP servers");
            Redirect::to(&format!("/system?done=restarted&pid={pid}")).into_response()
        }
        None => Redirect::to("/system?done=saved").into_response(),
    }
}

/// SIGTERM to the clock daemon named by `pid_file`, if that pid is a
/// running `relaybox clock` (a stale pid file may name anything).
fn restart_clock(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_clock = args.first().is_some_and(|a| a.ends_with(b"relaybox")) && args.contains(&&b"clock"[..]);
    if !is_clock {
        tracing::warn!(pid, file = %pid_file.display(), "the clock pid file names a process that is not `relaybox clock`");
        return None;
    }
    let target = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    match rustix::process::kill_process(target, rustix::process::Signal::TERM) {
        Ok(()) => Some(pid),
        Err(e) => {
            tracing::warn!(pid, "cannot signal the clock daemon: {e}");
            None
        }
    }
}
