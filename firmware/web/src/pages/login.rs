//! Login and logout: the password form (with its own double-submit CSRF
//! cookie, as no session exists yet), the password check and the session
//! cookie.

use std::sync::atomic::Ordering;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use crate::app::{ClientIp, State};
use crate::auth::{self, NoGuess};
use crate::extract::{cookie, CheckedForm, LOGIN_COOKIE, SESSION_COOKIE};
use crate::html::{csrf_field, esc, page};
use crate::layout::forbidden;

fn session_cookie(id: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

fn origin_ok(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((origin.to_str().ok(), host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(&format!("https://{h}")))
}

fn login_page(state: &State, token: &str, message: Option<&str>, status: StatusCode) -> Response {
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&format!(r#"<p class="bad">{}</p>"#, esc(m)));
    }
    if auth::stored_hash(&state.config_path).is_none() {
        body.push_str(&format!(
            r#"<section><p class="warn">No password is set, so nobody can log in. There is no default password.</p>
<p>On the box, as root, run</p><pre class="mono">relaybox --config {} web set-password</pre>
<p>and type the new password (at least {} characters) followed by Enter. Then reload this page.</p></section>"#,
            esc(&state.config_path.display().to_string()),
            auth::MIN_PASSWORD_LEN
        ));
    } else {
        body.push_str(&format!(
            r#"<section><form method="post" action="/login">{}
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" autofocus>
<button type="submit">Log in</button></form></section>"#,
            csrf_field(token)
        ));
    }
    let cookie = format!("{LOGIN_COOKIE}={token}; Path=/login; Max-Age=900; Secure; HttpOnly; SameSite=Strict");
    (status, [(header::SET_COOKIE, cookie)], axum::response::Html(page("Log in", "", None, &body))).into_response()
}

pub async fn form(AxState(state): AxState<State>, headers: HeaderMap) -> Response {
    if cookie(&headers, SESSION_COOKIE).is_some_and(|id| state.sessions.touch(&id).is_some()) {
        return Redirect::to("/status").into_response();
    }
    login_page(&state, &auth::random_hex(32), None, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    AxState(state): AxState<State>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !origin_ok(&headers) {
        return forbidden("Cross-origin requests are refused.");
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same_secret(&expected, &form.csrf) {
        return forbidden("The form's security token is missing or stale. Reload the page and try again.");
    }
    let token = auth::random_hex(32);
    let Some(hash) = auth::stored_hash(&state.config_path) else {
        return login_page(&state, &token, Some("No password is set; login is refused."), StatusCode::FORBIDDEN);
    };
    // The guess is counted before its password is checked, and checked by
    // one of a fixed number of threads, or refused at once.
    let guess = match state.limiter.admit(ip) {
        Ok(guess) => guess,
        Err(refused) => {
            state.login_stats.refused_address.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %ip, "web: login refused before the check: {refused:?}");
            let m = match refused {
                NoGuess::LockedOut(wait) => {
                    format!("Too many wrong passwords from {ip}. Try again in {} s.", wait.as_secs() + 1)
                }
                NoGuess::AllInFlight => {
                    format!("Too many logins from {ip} at once: wait for their answers, then try again.")
                }
            };
            return login_page(&state, &token, Some(&m), StatusCode::TOO_MANY_REQUESTS);
        }
    };
    let answer = match state.checker.check(hash, form.password, guess) {
        Ok(answer) => answer,
        Err(auth::Busy) => {
            let refused = state.login_stats.refused_busy.fetch_add(1, Ordering::Relaxed) + 1;
            if state.login_stats.busy_warning_due() {
                tracing::warn!(client = %ip, refused, "web: every password check is busy and the queue is full ([Web] login_queue); login refused");
            }
            let m = "The box is busy checking other logins. Try again in a few seconds.";
            let mut response = login_page(&state, &token, Some(m), StatusCode::SERVICE_UNAVAILABLE);
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return response;
        }
    };
    let checked = match answer.await {
        Ok(checked) => checked,
        Err(_) => {
            tracing::error!(client = %ip, "web: the password check ended without an answer");
            let m = "The password could not be checked. Try again.";
            return login_page(&state, &token, Some(m), StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    if !checked.right {
        if let Some(lockout) = checked.locked {
            let m = format!("Too many wrong passwords from {ip}. Try again in {} s.", lockout.as_secs());
            return login_page(&state, &token, Some(&m), StatusCode::TOO_MANY_REQUESTS);
        }
        return login_page(&state, &token, Some("Wrong password."), StatusCode::UNAUTHORIZED);
    }
    let (id, _) = state.sessions.create();
    tracing::info!(client = %ip, "web: logged in");
    let mut response = Redirect::to("/status").into_response();
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, session_cookie(&id, state.web.session_timeout.as_secs()).parse().unwrap());
    h.append(
        header::SET_COOKIE,
        format!("{LOGIN_COOKIE}=; Path=/login; Max-Age=0; Secure; HttpOnly; SameSite=Strict").parse().unwrap(),
    );
    response
}

pub async fn logout(AxState(state): AxState<State>, CheckedForm(auth, _): CheckedForm) -> Response {
    state.sessions.remove(&auth.id);
    ([(header::SET_COOKIE, session_cookie("", 0))], Redirect::to("/login")).into_response()
}
