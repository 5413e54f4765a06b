//! The System page: the box's host name and NTP servers, kept in
//! `system.conf` (`[Web] system_conf`), which the image's init sources as
//! shell. Values are checked by `relaybox-config`'s strict rules before
//! they are written, so the file can never run anything. New NTP servers
//! take effect at once: the clock daemon (`[Web] clock_pid_file`) is told
//! to stop and its supervisor starts it again, reading the file. A new
//! host name is set at once with `[Web] hostname_command` (and by init at
//! every boot). A remote syslog host (`SYSLOG_HOST`) takes effect at once
//! too: syslogd (`[Web] syslog_pid_file`) is told to stop and init starts
//! it again with the new host. The page's Reboot button runs
//! `[Web] reboot_command`.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::{Query, State as AxState};
use axum::response::{IntoResponse, Redirect, Response};
use relaybox_config::{split_servers, SystemSettings, MAX_NTP_SERVERS};

use crate::app::State;
use crate::conf_form::{self, errors_by_field, text_field, NOTHING_SAVED};
use crate::extract::{Authed, CheckedForm, Flash};
use crate::html::{csrf_field, esc, page};
use crate::layout::{html_page, reboot_form};

/// The host name the kernel has now.
fn running_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn system_page(
    state: &State,
    auth: &Authed,
    values: &SystemSettings,
    errors: &HashMap<String, String>,
    message: &str,
) -> String {
    let field = |id: &str, label: &str, value: &str, help: &str| text_field(id, label, value, errors, help);
    let hostname = field(
        "hostname",
        "Host name",
        &values.hostname,
        &format!(
            "Letters, digits, hyphens and dots. Takes effect at once and at every boot (running now: {}).",
            esc(&running_hostname())
        ),
    );
    let ntp = field(
        "ntp_servers",
        "NTP servers",
        &values.ntp_servers.join(" "),
        &format!(
            "host or host:port, separated by spaces, at most {MAX_NTP_SERVERS}; all are asked at once. Empty: no NTP \
             (a box without a real-time clock then keeps only the last known time). Takes effect at once."
        ),
    );
    let syslog = field(
        "syslog_host",
        "Remote syslog",
        &values.syslog_host,
        "host or host:port (UDP, port 514 by default) that also receives the box's log; empty: the log stays on the \
         box (Logs page). Takes effect at once.",
    );
    let body = format!(
        r#"{message}<section><form method="post" action="/system">{csrf}
<p class="help">File: <span class="mono">{path}</span>; other lines and comments in it are kept.</p>
{hostname}{ntp}{syslog}
<button type="submit">Save</button></form></section>
{reboot}"#,
        csrf = csrf_field(&auth.csrf),
        path = esc(&state.web.system_conf.display().to_string()),
        reboot = reboot_form(&auth.csrf),
    );
    page("System", "/system", Some(&auth.csrf), &body)
}

fn flash(f: &Flash) -> String {
    let ntp = match f.done.as_str() {
        "restarted" => format!("The clock daemon (pid {}) was told to restart with the new NTP servers.", esc(&f.pid)),
        "saved" => "No clock daemon is running: the NTP servers take effect at the next boot.".into(),
        "unchanged-ntp" => "The NTP servers are unchanged.".into(),
        _ => return String::new(),
    };
    let host = match f.host.as_str() {
        "set" => format!(" The host name is now {}.", esc(&running_hostname())),
        "boot" => " The host name could not be changed now (see the log); it changes at the next boot.".into(),
        _ => String::new(),
    };
    format!(r#"<p class="ok" id="flash">Saved. {ntp}{host}</p>"#)
}

/// Sets the running host name with `[Web] hostname_command NAME`; true
/// when it succeeded (failures are logged).
fn set_running_hostname(command: &Path, name: &str) -> bool {
    match std::process::Command::new(command).arg(name).status() {
        Ok(status) if status.success() => {
            tracing::info!(hostname = %name, "web: host name set");
            true
        }
        Ok(status) => {
            tracing::error!(command = %command.display(), hostname = %name, "web: setting the host name failed: {status}");
            false
        }
        Err(e) => {
            tracing::error!(command = %command.display(), hostname = %name, "web: cannot run the host name command: {e}");
            false
        }
    }
}

pub async fn form(AxState(state): AxState<State>, auth: Authed, Query(f): Query<Flash>) -> Response {
    let values = SystemSettings::parse(&conf_form::read(&state.web.system_conf));
    html_page(system_page(&state, &auth, &values, &HashMap::new(), &flash(&f)))
}

pub async fn save(AxState(state): AxState<State>, CheckedForm(auth, form): CheckedForm) -> Response {
    let value = |name: &str| form.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let wanted = SystemSettings {
        hostname: value("hostname"),
        ntp_servers: split_servers(&value("ntp_servers")),
        syslog_host: value("syslog_host"),
    };
    let path = &state.web.system_conf;
    let old = conf_form::read(path);
    let text = match wanted.apply_to(&old) {
        Ok(text) => text,
        Err(errors) => {
            return conf_form::refused(system_page(&state, &auth, &wanted, &errors_by_field(errors), NOTHING_SAVED))
        }
    };
    if let Err(r) = conf_form::write(path, &text) {
        return *r;
    }
    tracing::info!(hostname = %wanted.hostname, ntp_servers = ?wanted.ntp_servers, "web: saved {}", path.display());
    let host = if wanted.hostname == running_hostname() {
        ""
    } else if set_running_hostname(&state.web.hostname_command, &wanted.hostname) {
        "&host=set"
    } else {
        "&host=boot"
    };
    let before = SystemSettings::parse(&old);
    if before.syslog_host != wanted.syslog_host {
        match restart_daemon(&state.web.syslog_pid_file, "syslogd") {
            Some(pid) => tracing::info!(pid, syslog_host = %wanted.syslog_host, "web: syslogd told to restart"),
            None => tracing::warn!("web: no syslogd to restart; the remote syslog host takes effect at the next boot"),
        }
    }
    if before.ntp_servers == wanted.ntp_servers {
        return Redirect::to(&format!("/system?done=unchanged-ntp{host}")).into_response();
    }
    match restart_daemon(&state.web.clock_pid_file, "clock") {
        Some(pid) => {
            tracing::info!(pid, "web: clock daemon told to restart for the new NTP servers");
            Redirect::to(&format!("/system?done=restarted&pid={pid}{host}")).into_response()
        }
        None => Redirect::to(&format!("/system?done=saved{host}")).into_response(),
    }
}

/// SIGTERM to the daemon named by `pid_file`, if that pid runs it
/// (`relaybox ... clock`, or a program whose name ends in `syslogd`): a
/// stale pid file may name anything. Its supervisor (init) starts it again.
fn restart_daemon(pid_file: &Path, what: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let first = args.first().copied().unwrap_or_default();
    let is_it = if what == "clock" {
        first.ends_with(b"relaybox") && args.contains(&&b"clock"[..])
    } else {
        first.ends_with(what.as_bytes())
    };
    if !is_it {
        tracing::warn!(pid, file = %pid_file.display(), "the pid file names a process that is not {what}");
        return None;
    }
    let target = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    match rustix::process::kill_process(target, rustix::process::Signal::TERM) {
        Ok(()) => Some(pid),
        Err(e) => {
            tracing::warn!(pid, "cannot signal {what}: {e}");
            None
        }
    }
}

/// The Reboot button: answers at once, then runs `[Web] reboot_command`
/// half a second later (so that the answer gets out first). A command that
/// fails is logged.
pub async fn reboot(AxState(state): AxState<State>, _: CheckedForm) -> Response {
    tracing::warn!(command = %state.web.reboot_command.display(), "web: reboot requested");
    crate::app::reboot_soon(state.web.reboot_command.clone());
    let body = r#"<section><p class="ok" id="flash">The box is rebooting. This page is back once it is up again (usually within a minute); log in again then.</p></section>"#;
    html_page(page("Rebooting", "/system", None, body))
}
