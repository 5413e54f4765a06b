//! The router: every route and the page that serves it, the body limit and
//! the security headers on every answer. It is the top of the crate's
//! import graph (state and extractors → pages → router): it imports the
//! pages, and nothing but `lib.rs` imports it.

use axum::extract::{DefaultBodyLimit, Path as UrlPath};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::State;
use crate::html;
use crate::pages::{backup, certs, login, logs, metrics, network, settings, status, system, update};

/// Security headers on every answer.
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    set(h, "strict-transport-security", "max-age=31536000");
    response
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (html::STYLE, "text/css; charset=utf-8"),
        "app.js" => (html::SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

pub fn router(state: State) -> Router {
    let limit = state.web.max_body;
    Router::new()
        .route("/", get(|| async { Redirect::to("/status") }))
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/settings", get(settings::form).post(settings::save))
        .route("/settings/apply", post(settings::apply))
        .route("/settings/rollback", post(settings::rollback))
        .route("/status", get(status::page))
        .route("/api/status", get(status::api))
        .route("/certs", get(certs::page))
        .route("/certs/upload", post(certs::upload))
        .route("/certs/csr", post(certs::csr))
        .route("/certs/file/{name}", get(certs::file))
        .route("/network", get(network::page).post(network::save))
        .route("/system", get(system::form).post(system::save))
        .route("/system/reboot", post(system::reboot))
        .route("/update", get(update::page))
        .route("/api/update", get(update::api))
        // A bundle is far larger than any form: the handler streams it within
        // [Update] max_bundle_size.
        .route("/update/upload", post(update::upload).layer(DefaultBodyLimit::disable()))
        .route("/logs", get(logs::page_handler))
        .route("/logs/saved/{name}", get(logs::saved))
        .route("/backup", get(backup::form))
        .route("/backup/download", get(backup::download))
        .route(
            "/backup/restore",
            // A backup travels base64-encoded in a form: 4/3 of its size,
            // and URL-encoding of + / = at worst triples those.
            post(backup::restore).layer(DefaultBodyLimit::max(state.web.max_backup.saturating_mul(3))),
        )
        .route("/backup/factory-reset", post(backup::factory_reset))
        .route("/metrics", get(metrics::metrics))
        .route("/static/{name}", get(asset))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(harden))
        .with_state(state)
}
