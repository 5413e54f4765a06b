//! The router, the shared state, and what every request goes through:
//! the session check, the Origin check and the CSRF token on every POST,
//! the body limit, and the security headers on every answer.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path as UrlPath, Request};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use relaybox_config::{Config, WebConfig};

use crate::auth::{Limiter, Sessions};
use crate::html;

pub const SESSION_COOKIE: &str = "relaybox_session";
pub const LOGIN_COOKIE: &str = "relaybox_login";

/// The client's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// One bandwidth sample for the status chart.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub unix: u64,
    pub bps: u64,
}

pub struct App {
    pub config_path: PathBuf,
    pub config_dir: PathBuf,
    /// The configuration as it was when the page started (its own settings,
    /// certs_path). Relay settings are always read from the file.
    pub startup: Config,
    pub web: WebConfig,
    pub sessions: Sessions,
    pub limiter: Limiter,
    /// The last hour of relayed bandwidth, oldest first.
    pub history: Mutex<VecDeque<Sample>>,
    /// Called after a certificate upload so HTTPS picks it up.
    pub reload_tls: Box<dyn Fn() + Send + Sync>,
}

impl App {
    /// The configuration file as it is now, or the start-up one when it does
    /// not parse (the page must keep working to fix it).
    pub fn current_config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|_| self.startup.clone())
    }

    pub fn control_socket(&self) -> PathBuf {
        self.current_config().relay.control_socket
    }

    pub fn certs_path(&self) -> PathBuf {
        self.startup.tls.certs_path.clone()
    }
}

pub type State = Arc<App>;

/// A logged-in request: the session id and its CSRF token. For anything but
/// GET/HEAD the Origin header, when sent, must be this page's own.
pub struct Authed {
    pub id: String,
    pub csrf: String,
}

impl Authed {
    /// Checks the form's CSRF token.
    pub fn check(&self, token: &str) -> Result<(), Box<Response>> {
        if crate::auth::same_secret(&self.csrf, token) {
            Ok(())
        } else {
            Err(Box::new(forbidden("The form's security token is missing or stale. Reload the page and try again.")))
        }
    }
}

/// A form posted by a logged-in user that carries the session's CSRF
/// token (`csrf` field): both are checked before the handler runs.
pub struct CheckedForm(pub Authed, pub HashMap<String, String>);

impl FromRequest<State> for CheckedForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &State) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let auth = Authed::from_request_parts(&mut parts, state).await?;
        let Form(form) = Form::<HashMap<String, String>>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        auth.check(form.get("csrf").map(String::as_str).unwrap_or("")).map_err(|r| *r)?;
        Ok(CheckedForm(auth, form))
    }
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A cross-origin POST (another site's page in the same browser) is refused.
pub fn origin_ok(parts: &Parts) -> bool {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return true;
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else { return true };
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin.eq_ignore_ascii_case(&format!("https://{host}")),
        _ => false,
    }
}

impl FromRequestParts<State> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        let session = cookie(&parts.headers, SESSION_COOKIE).and_then(|id| state.sessions.touch(&id).map(|c| (id, c)));
        let Some((id, csrf)) = session else {
            if parts.uri.path().starts_with("/api/") || parts.method != Method::GET {
                return Err((StatusCode::UNAUTHORIZED, "log in first\n").into_response());
            }
            return Err(Redirect::to("/login").into_response());
        };
        if !origin_ok(parts) {
            return Err(forbidden("Cross-origin requests are refused."));
        }
        Ok(Authed { id, csrf })
    }
}

pub fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::response::Html(html::page("Refused", "", None, &format!(r#"<p class="bad">{}</p>"#, html::esc(why)))),
    )
        .into_response()
}

pub fn html_page(body: String) -> Response {
    axum::response::Html(body).into_response()
}

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
        .route("/login", get(crate::pages::login_form).post(crate::pages::login))
        .route("/logout", post(crate::pages::logout))
        .route("/settings", get(crate::pages::settings_form).post(crate::pages::settings_save))
        .route("/settings/apply", post(crate::pages::settings_apply))
        .route("/settings/rollback", post(crate::pages::settings_rollback))
        .route("/status", get(crate::status::page))
        .route("/api/status", get(crate::status::api))
        .route("/certs", get(crate::certs::page))
        .route("/certs/upload", post(crate::certs::upload))
        .route("/certs/csr", post(crate::certs::csr))
        .route("/certs/file/{name}", get(crate::certs::file))
        .route("/network", get(crate::network::page).post(crate::network::save))
        .route("/system", get(crate::system::form).post(crate::system::save))
        .route("/system/reboot", post(crate::system::reboot))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/static/{name}", get(asset))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(harden))
        .with_state(state)
}

/// Whether `ip` is on the box's own side: loopback, RFC 1918, CGNAT,
/// link-local or IPv6 unique-local.
pub fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_lan(IpAddr::V4(v4));
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

pub fn config_dir_of(path: &Path) -> PathBuf {
    crate::auth::config_dir(path)
}
