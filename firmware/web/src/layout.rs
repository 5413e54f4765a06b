//! What the pages' answers share: an HTML page as a response, the refusal
//! page, and fragments more than one page shows (the Reboot form). Plain
//! HTML helpers (escaping, the frame) are in `html`.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::html;

pub fn html_page(body: String) -> Response {
    Html(body).into_response()
}

pub fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, Html(html::page("Refused", "", None, &format!(r#"<p class="bad">{}</p>"#, html::esc(why)))))
        .into_response()
}

/// The Reboot button (System page, and the Network page after a save).
pub fn reboot_form(csrf: &str) -> String {
    format!(
        r#"<section><form method="post" action="/system/reboot" id="reboot" data-confirm="Reboot the box now? Calls in progress are cut.">{}
<p class="help">Reboot the box: calls in progress are cut; settings that take effect at the next boot (network) are applied.</p>
<button type="submit" class="danger">Reboot</button></form></section>"#,
        html::csrf_field(csrf)
    )
}
