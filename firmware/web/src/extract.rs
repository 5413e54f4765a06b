//! What a handler asks of a request before it runs: a logged-in session
//! ([`Authed`]: the session cookie, and for anything but GET/HEAD a
//! same-origin `Origin`), a form carrying the session's CSRF token
//! ([`CheckedForm`]) or an upload carrying it in a header
//! ([`CheckedUpload`]), the `?done=…` flash of a redirect ([`Flash`]), and
//! the cookie helpers. Depends on the state and the layout only.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::app::State;
use crate::layout::forbidden;

pub const SESSION_COOKIE: &str = "relaybox_session";
pub const LOGIN_COOKIE: &str = "relaybox_login";

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

/// The header a script's upload carries the session's CSRF token in (a
/// form field would sit inside the uploaded body).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A raw upload (the Update page's bundle) by a logged-in user whose
/// request carries the session's CSRF token in [`CSRF_HEADER`]: both are
/// checked before a byte of the body is read. The body is left to the
/// handler, which streams it within its own limit.
pub struct CheckedUpload(pub Authed, pub axum::body::Body);

impl FromRequest<State> for CheckedUpload {
    type Rejection = Response;

    async fn from_request(req: Request, state: &State) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let auth = Authed::from_request_parts(&mut parts, state).await?;
        let token = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        auth.check(token).map_err(|r| *r)?;
        Ok(CheckedUpload(auth, body))
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

/// What a redirect after a POST tells the page to show (`?done=…&pid=…`);
/// shared by the pages that save something.
#[derive(Deserialize)]
pub struct Flash {
    #[serde(default)]
    pub done: String,
    #[serde(default)]
    pub pid: String,
    /// System page: `set` (the running host name was changed) or `boot`
    /// (it could not be; it changes at the next boot).
    #[serde(default)]
    pub host: String,
}
