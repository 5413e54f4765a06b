//! What the System and Network pages share: each edits a shell `KEY=VALUE`
//! file of the box (`system.conf`, `network.conf`) through a form whose
//! field ids are the keys in lower case, checked by `relaybox-config`
//! before anything is written, written atomically, refused as a whole with
//! each bad field marked.

use std::collections::HashMap;
use std::path::Path;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use relaybox_config::SystemError;

use crate::files;
use crate::html::{form_field, text_input};

/// The file's text; a missing or unreadable file reads as empty (the form
/// then shows empty fields and saving creates it).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The errors by form field (`WAN_DNS` -> `wan_dns`), several for one field
/// joined with "; ".
pub fn errors_by_field(errors: Vec<SystemError>) -> HashMap<String, String> {
    let mut by_field: HashMap<String, String> = HashMap::new();
    for e in errors {
        by_field
            .entry(e.key.to_ascii_lowercase())
            .and_modify(|m| m.push_str(&format!("; {}", e.reason)))
            .or_insert(e.reason);
    }
    by_field
}

/// A labelled text field with its error from `errors`, if any.
pub fn text_field(id: &str, label: &str, value: &str, errors: &HashMap<String, String>, help: &str) -> String {
    form_field(id, label, &text_input(id, value), errors.get(id).map(String::as_str), help)
}

/// The page shown again with the marked fields: 422, nothing saved.
pub fn refused(body: String) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Html(body)).into_response()
}

/// The banner of a refused form.
pub const NOTHING_SAVED: &str = r#"<p class="bad" id="flash">Nothing was saved: correct the marked settings.</p>"#;

/// Writes `text` to `path` atomically (mode 0644: init reads it).
pub fn write(path: &Path, text: &str) -> Result<(), Box<Response>> {
    files::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| {
        tracing::error!("web: saving {}: {e}", path.display());
        Box::new((StatusCode::INTERNAL_SERVER_ERROR, format!("saving failed: {e}\n")).into_response())
    })
}
