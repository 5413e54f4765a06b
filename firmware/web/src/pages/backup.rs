//! The Backup page: the whole configuration to download (a tar of the
//! configuration files, private keys included), a backup to upload (checked
//! with the box's own parsers before anything is staged; applied by the
//! next boot, then the page offers the Reboot button), and the factory
//! reset (with a confirmation): everything on the configuration partition
//! goes at the reboot that follows at once, and the box comes up with its
//! defaults, as on first boot.

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::State;
use crate::backup;
use crate::extract::{Authed, CheckedForm};
use crate::html::{csrf_field, esc, page};
use crate::layout::{html_page, reboot_form};

fn backup_page(state: &State, auth: &Authed, message: &str) -> String {
    let csrf = csrf_field(&auth.csrf);
    let pending = match backup::pending(&state.config_dir) {
        Some(what) => format!(
            r#"<p class="bad" id="pending">{} waits for the next boot: reboot to apply it.</p>{}"#,
            esc(&what[..1].to_uppercase()) + &esc(&what[1..]),
            reboot_form(&auth.csrf)
        ),
        None => String::new(),
    };
    let body = format!(
        r#"{message}{pending}<section><h2>Download</h2><p class="help">Every setting, the web password's hash and the certificates <b>with their private keys</b>, as one tar file. Keep it safe.</p>
<p><a href="/backup/download" id="download">Download the configuration</a></p></section>
<section><h2>Restore</h2><form method="post" action="/backup/restore">{csrf}
<label for="file">Backup file (tar)</label><input type="file" id="file" accept=".tar" data-into-base64="backup"><input type="hidden" id="backup" name="backup">
<p class="help">Each file is checked as the box reads it; nothing is replaced if one is refused. The restored configuration replaces the whole current one at the next boot. At most {max} KiB.</p>
<button type="submit">Restore</button></form></section>
<section><form method="post" action="/backup/factory-reset" id="factory-reset" data-confirm="Erase every setting, the certificates and the web password, and reboot? Calls in progress are cut; the box comes back with its factory settings and must be provisioned again.">{csrf}
<h2>Factory reset</h2><p class="help">Erases the configuration partition (settings, certificates, password, logs) and reboots; the box then starts as on its first boot.</p>
<button type="submit" class="danger">Factory reset</button></form></section>"#,
        max = state.web.max_backup / 1024,
    );
    page("Backup", "/backup", Some(&auth.csrf), &body)
}

pub async fn form(AxState(state): AxState<State>, auth: Authed) -> Response {
    html_page(backup_page(&state, &auth, ""))
}

pub async fn download(AxState(state): AxState<State>, _auth: Authed) -> Response {
    let dir = state.config_dir.clone();
    match tokio::task::spawn_blocking(move || backup::backup(&dir)).await {
        Ok(Ok(data)) => {
            let host = crate::server::running_hostname();
            tracing::info!("web: configuration backup downloaded");
            (
                [
                    (header::CONTENT_TYPE, "application/x-tar".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"relaybox-{host}.tar\"")),
                ],
                data,
            )
                .into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("backup failed: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("backup failed: {e}\n")).into_response(),
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

pub async fn restore(AxState(state): AxState<State>, CheckedForm(auth, form): CheckedForm) -> Response {
    let refused = |state: &State, why: String| {
        let m = format!(r#"<p class="bad" id="flash">Nothing was restored: {}</p>"#, esc(&why));
        (StatusCode::UNPROCESSABLE_ENTITY, axum::response::Html(backup_page(state, &auth, &m))).into_response()
    };
    let Some(data) = form.get("backup").and_then(|b| decode_base64(b)) else {
        return refused(&state, "choose a backup file".into());
    };
    if data.is_empty() {
        return refused(&state, "choose a backup file".into());
    }
    let (dir, max) = (state.config_dir.clone(), state.web.max_backup);
    match tokio::task::spawn_blocking(move || backup::stage_restore(&dir, &data, max)).await {
        Ok(Ok(names)) => {
            tracing::warn!(files = ?names, "web: backup restored; it replaces the configuration at the next boot");
            let m = format!(
                r#"<p class="ok" id="flash">The backup was checked and staged ({}). Reboot to apply it.</p>"#,
                esc(&names.join(", "))
            );
            html_page(backup_page(&state, &auth, &m))
        }
        Ok(Err(e)) => refused(&state, e.to_string()),
        Err(e) => refused(&state, e.to_string()),
    }
}

pub async fn factory_reset(AxState(state): AxState<State>, _form: CheckedForm) -> Response {
    if let Err(e) = backup::request_factory_reset(&state.config_dir) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("factory reset not requested: {e}\n")).into_response();
    }
    tracing::warn!(command = %state.web.reboot_command.display(), "web: factory reset requested; rebooting");
    crate::app::reboot_soon(state.web.reboot_command.clone());
    let body = r#"<section><p class="ok" id="flash">The box is rebooting to its factory settings. It comes back as on its first boot: without a web password, certificates or dispatchers.</p></section>"#;
    html_page(page("Factory reset", "/backup", None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_browsers_encode_it() {
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(decode_base64("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("not*base64").is_none());
    }
}
