//! The relay settings form: validate with the daemon's own parser, save
//! atomically, keep `.prev`, roll back, apply by SIGHUP.

use std::collections::HashMap;

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use relaybox_config::Config;

use crate::app::State;
use crate::extract::{Authed, CheckedForm, Flash};
use crate::html::{csrf_field, esc, form_field, page, select};
use crate::layout::html_page;
use crate::{auth, control, files, ini_edit};

/// How a relay setting is edited.
enum Kind {
    Text,
    YesNo,
    LogLevel,
}

struct Field {
    name: &'static str,
    label: &'static str,
    help: &'static str,
    default: &'static str,
    kind: Kind,
}

const FIELDS: &[Field] = &[
    Field { name: "dispatchers", label: "Dispatchers", help: "host[:port] of each dispatcher, separated by spaces or commas (port 25060 by default).", default: "", kind: Kind::Text },
    Field { name: "passport", label: "Dispatcher passport", help: "Extra check on the dispatcher's certificate, e.g. O:Example Ltd, CN:*dispatcher. Empty: any certificate from the CA.", default: "None", kind: Kind::Text },
    Field { name: "relay_ip", label: "Relay address", help: "Address used for media. Empty: the address of the interface with the default route.", default: "None", kind: Kind::Text },
    Field { name: "advertised_ip", label: "Advertised address", help: "Address put in replies instead of the relay's own (1:1 NAT). Empty: none.", default: "None", kind: Kind::Text },
    Field { name: "auto_detect_interfaces", label: "Auto-detect interfaces", help: "Offer each side the address of the interface that routes to it.", default: "no", kind: Kind::YesNo },
    Field { name: "port_range", label: "Port range", help: "UDP ports for media, start:end, both even, 1024 <= start < end <= 65534.", default: "40000:60000", kind: Kind::Text },
    Field { name: "stream_timeout", label: "Stream timeout (s)", help: "How long a new stream may wait for media from both sides.", default: "90", kind: Kind::Text },
    Field { name: "on_hold_timeout", label: "On-hold timeout (s)", help: "How long a call may stay on hold.", default: "7200", kind: Kind::Text },
    Field { name: "routable_private_ranges", label: "Routable private ranges", help: "Private networks reached directly (VPN, LAN), e.g. 10.8.0.0/16, 192.168.5.0/24.", default: "", kind: Kind::Text },
    Field { name: "log_level", label: "Log level", help: "How much the relay logs.", default: "DEBUG", kind: Kind::LogLevel },
];

fn input(field: &Field, value: &str) -> String {
    let id = field.name;
    match field.kind {
        Kind::Text => format!(
            r#"<input type="text" id="{id}" name="{id}" value="{}" placeholder="{}">"#,
            esc(value),
            esc(if field.default.is_empty() { "(none)" } else { field.default })
        ),
        Kind::YesNo | Kind::LogLevel => {
            let choices: &[&str] = match field.kind {
                Kind::YesNo => &["no", "yes"],
                _ => &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
            };
            select(id, choices, if value.is_empty() { field.default } else { value })
        }
    }
}

fn settings_page(
    state: &State,
    auth: &Authed,
    values: &HashMap<String, String>,
    errors: &HashMap<String, String>,
    message: &str,
) -> String {
    let mut fields = String::new();
    for f in FIELDS {
        let value = values.get(f.name).map(String::as_str).unwrap_or("");
        let error = errors.get(f.name).map(String::as_str);
        fields.push_str(&form_field(f.name, f.label, &input(f, value), error, &esc(f.help)));
    }
    let general =
        errors.get("").map(|e| format!(r#"<p class="bad" id="error-file">{}</p>"#, esc(e))).unwrap_or_default();
    let prev = files::prev_path(&state.config_path);
    let rollback = if prev.exists() {
        format!(
            r#"<section><h2>Previous file</h2><p>The file before the last save is kept as <span class="mono">{}</span>.</p>
<form method="post" action="/settings/rollback">{}<button type="submit" class="secondary">Roll back to the previous file</button></form></section>"#,
            esc(&prev.display().to_string()),
            csrf_field(&auth.csrf)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{message}{general}<section><form method="post" action="/settings">{csrf}
<p class="help">File: <span class="mono">{path}</span>. Every value is checked by the relay's own configuration parser before it is saved; other sections and comments in the file are kept.</p>
{fields}
<button type="submit" name="action" value="save">Save</button>
<button type="submit" name="action" value="apply">Save and apply</button></form></section>
<section><h2>Applying</h2><p>Saving writes the file only. <b>Apply</b> sends the running relay SIGHUP: it stops taking new calls at once,
lets the calls in progress go on, and exits when the last one has ended; the box's init then starts it again with the new settings.
So no call is dropped, and with calls up the new settings take effect after the last of them ends.</p>
<form method="post" action="/settings/apply">{csrf}<button type="submit" class="secondary">Apply saved settings now</button></form></section>
{rollback}"#,
        csrf = csrf_field(&auth.csrf),
        path = esc(&state.config_path.display().to_string()),
    );
    page("Relay settings", "/settings", Some(&auth.csrf), &body)
}

fn file_text(state: &State) -> String {
    std::fs::read_to_string(&state.config_path).unwrap_or_default()
}

/// What a redirect after a POST tells the page to show (`?done=…&pid=…`);
/// shared by the pages that save something.
fn flash(f: &Flash) -> String {
    let pid = esc(&f.pid);
    match f.done.as_str() {
        "saved" => r#"<p class="ok" id="flash">Saved. Apply to restart the relay with the new settings.</p>"#.into(),
        "applied" => format!(
            r#"<p class="ok" id="flash">Saved and applied: the relay (pid {pid}) was told to halt gracefully and will be restarted with the new settings once its calls have ended.</p>"#
        ),
        "notified" => format!(
            r#"<p class="ok" id="flash">The relay (pid {pid}) was told to halt gracefully; it will be restarted with the saved settings once its calls have ended.</p>"#
        ),
        "rolledback" => {
            r#"<p class="ok" id="flash">The previous file is back in place. Apply to restart the relay with it.</p>"#
                .into()
        }
        _ => String::new(),
    }
}

pub async fn form(AxState(state): AxState<State>, auth: Authed, Query(f): Query<Flash>) -> Response {
    let values = ini_edit::section_values(&file_text(&state), "Relay");
    let mut errors = HashMap::new();
    if let Err(e) = Config::load(&state.config_path) {
        if state.config_path.exists() {
            errors.insert(String::new(), format!("The file on disk does not load: {e}"));
        }
    }
    html_page(settings_page(&state, &auth, &values, &errors, &flash(&f)))
}

/// Validates the form: each field alone, then the whole would-be file, with
/// the daemon's parser. Returns the new file text or the errors by field
/// ("" for the file as a whole).
fn validate(state: &State, form: &HashMap<String, String>) -> Result<String, HashMap<String, String>> {
    let base = auth::config_dir(&state.config_path);
    let origin = state.config_path.display().to_string();
    let value_of = |name: &str| form.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut errors = HashMap::new();
    let mut options: Vec<(&str, Option<String>)> = Vec::new();
    for f in FIELDS {
        let value = value_of(f.name);
        if value.contains(['\n', '\r']) {
            errors.insert(f.name.to_string(), "must fit on one line".to_string());
        }
        options.push((f.name, (!value.is_empty()).then_some(value)));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let text = ini_edit::set_options(&file_text(state), "Relay", &options);
    let whole = match Config::parse(&text, &origin, &base) {
        Ok(_) => return Ok(text),
        Err(e) => e,
    };
    // Each field alone, so that every wrong field is marked, not only the
    // first the parser met.
    for (name, value) in &options {
        let Some(value) = value else { continue };
        let mut one = format!("[Relay]\n{name} = {value}\n");
        if *name == "relay_ip" && !value_of("advertised_ip").is_empty() {
            one.push_str(&format!("advertised_ip = {}\n", value_of("advertised_ip")));
        }
        if let Err(e) = Config::parse(&one, &origin, &base) {
            if e.option.as_deref() == Some(name) {
                errors.insert(name.to_string(), e.reason);
            }
        }
    }
    match (&whole.section, &whole.option) {
        (Some(s), Some(o)) if s == "Relay" && FIELDS.iter().any(|f| f.name == o) => {
            errors.entry(o.clone()).or_insert(whole.reason);
        }
        _ => {
            errors.insert(String::new(), whole.to_string());
        }
    }
    Err(errors)
}

pub async fn save(AxState(state): AxState<State>, CheckedForm(auth, form): CheckedForm) -> Response {
    let text = match validate(&state, &form) {
        Ok(text) => text,
        Err(errors) => {
            let values: HashMap<String, String> = form.clone();
            let message = r#"<p class="bad" id="flash">Nothing was saved: correct the marked settings.</p>"#;
            let body = settings_page(&state, &auth, &values, &errors, message);
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::response::Html(body)).into_response();
        }
    };
    if let Err(e) = files::save_config(&state.config_path, &text) {
        tracing::error!("web: saving {}: {e}", state.config_path.display());
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("saving failed: {e}\n")).into_response();
    }
    tracing::info!("web: saved {}", state.config_path.display());
    if form.get("action").map(String::as_str) == Some("apply") {
        return match control::halt_relay(&state.control_socket()).await {
            Ok(pid) => {
                tracing::info!(pid, "web: relay told to halt gracefully (SIGHUP) to apply the settings");
                Redirect::to(&format!("/settings?done=applied&pid={pid}")).into_response()
            }
            Err(e) => apply_failed(&state, &auth, &e.to_string()),
        };
    }
    Redirect::to("/settings?done=saved").into_response()
}

fn apply_failed(state: &State, auth: &Authed, why: &str) -> Response {
    let values = ini_edit::section_values(&file_text(state), "Relay");
    let message = format!(
        r#"<p class="bad" id="flash">The settings are saved, but the relay could not be told to restart: {}</p>"#,
        esc(why)
    );
    let body = settings_page(state, auth, &values, &HashMap::new(), &message);
    (StatusCode::BAD_GATEWAY, axum::response::Html(body)).into_response()
}

pub async fn apply(AxState(state): AxState<State>, CheckedForm(auth, _): CheckedForm) -> Response {
    match control::halt_relay(&state.control_socket()).await {
        Ok(pid) => Redirect::to(&format!("/settings?done=notified&pid={pid}")).into_response(),
        Err(e) => apply_failed(&state, &auth, &e.to_string()),
    }
}

pub async fn rollback(AxState(state): AxState<State>, _: CheckedForm) -> Response {
    match files::rollback(&state.config_path) {
        Ok(()) => {
            tracing::info!("web: rolled back {}", state.config_path.display());
            Redirect::to("/settings?done=rolledback").into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("cannot roll back: {e}\n")).into_response(),
    }
}
