//! The Update page: both firmware slots (which runs, their versions, the
//! last update's outcome) and the installation of a signed bundle. The
//! page's script uploads the file as it is (`POST /update/upload`, the CSRF
//! token in a header: [`CheckedUpload`]) with a progress bar; the body is
//! streamed to `[Update] work_dir`, at most `max_bundle_size` bytes within
//! `download_timeout`. relaybox-update then checks it whole (signature,
//! board, version, every file) before it writes anything, writes the slot
//! that is not running, reads it back and arms it, while `/api/update`
//! reports each step. The Reboot button tries it; the box marks it good
//! once healthy, or goes back to this slot by itself.

use std::time::Instant;

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use relaybox_update::{InstallError, Progress, Updater};
use serde::Deserialize;

use crate::app::State;
use crate::extract::{Authed, CheckedUpload, CSRF_HEADER};
use crate::firmware::{self, Job};
use crate::html::{esc, page as frame};
use crate::layout::{html_page, reboot_form};

fn job_html(job: &Job) -> String {
    if job.steps.is_empty() && job.ok.is_none() {
        return String::new();
    }
    let steps: String = job.steps.iter().map(|s| format!("<li>{}</li>", esc(s))).collect();
    let bar = if job.total > 0 {
        format!(r#"<progress id="install-progress" max="{}" value="{}"></progress>"#, job.total, job.done)
    } else {
        String::new()
    };
    let result = match job.ok {
        None => r#"<p class="help" id="install-result">Installing…</p>"#.to_string(),
        Some(true) => format!(r#"<p class="ok" id="install-result">{}</p>"#, esc(&job.message)),
        Some(false) => format!(r#"<p class="bad" id="install-result">{}</p>"#, esc(&job.message)),
    };
    format!(r#"<h2>Last install</h2>{bar}<ol id="install-steps">{steps}</ol>{result}"#)
}

fn live(state: &State) -> (String, Job) {
    let job = state.update_job.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let status = firmware::status(&state.startup.update);
    (format!("{}{}", firmware::slots_html(&status), job_html(&job)), job)
}

pub async fn page(AxState(state): AxState<State>, auth: Authed) -> Response {
    let u = &state.startup.update;
    let updater = Updater::load(u);
    let key = updater.as_ref().map(|up| up.key.fingerprint()).unwrap_or_else(|e| format!("unknown ({e})"));
    let tries = updater.as_ref().map(|up| up.tries()).unwrap_or(u.boot_tries);
    let (live, _) = live(&state);
    let body = format!(
        r#"<section><h2>Firmware slots</h2><div id="update-live">{live}</div></section>
<section><h2>Install an update</h2>
<p class="help">A bundle made with <span class="mono">cargo xtask bundle</span> and signed with the key this firmware trusts (<span class="mono" id="update-key">{key}</span>). It is checked whole — signature, board, version, every file — before anything is written; then it is written into the slot that is not running and read back. The box tries it at the next reboot and keeps it once it is healthy (relay running and connected to its dispatchers, web page up) within {health} s; otherwise it goes back to the running slot by itself, after at most {tries} tries. At most {max} MiB.</p>
<form id="update-form" data-csrf="{csrf}" data-header="{header}">
<label for="bundle">Bundle</label><input type="file" id="bundle" accept=".bundle">
<label><input type="checkbox" id="force"> Install even if it is not newer than the running version</label>
<button type="submit" id="upload">Upload and install</button>
<progress id="upload-progress" max="100" value="0" hidden></progress>
<p class="help" id="upload-state"></p></form></section>
{reboot}"#,
        key = esc(&key),
        health = u.health_timeout.as_secs(),
        tries = tries,
        max = u.max_bundle_size / (1024 * 1024),
        csrf = esc(&auth.csrf),
        header = CSRF_HEADER,
        reboot = reboot_form(&auth.csrf),
    );
    html_page(frame("Update", "/update", Some(&auth.csrf), &body))
}

pub async fn api(AxState(state): AxState<State>, _auth: Authed) -> Response {
    let (html, job) = live(&state);
    Json(serde_json::json!({ "html": html, "job": job })).into_response()
}

#[derive(Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    force: Option<String>,
}

fn refused(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": why.into() }))).into_response()
}

/// Streams the body into `path`, at most `limit` bytes.
async fn receive(body: axum::body::Body, path: &std::path::Path, limit: u64) -> Result<u64, Response> {
    use axum::body::HttpBody;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}")))?;
    let mut body = body;
    let mut size = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| refused(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > limit {
                return Err(refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the bundle is larger than [Update] max_bundle_size ({limit} bytes)"),
                ));
            }
            file.write_all(&data)
                .await
                .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}")))?;
        }
    }
    file.sync_all().await.map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(size)
}

/// The uploaded bundle: stored, then installed on a blocking thread while
/// `/api/update` reports the steps.
pub async fn upload(
    AxState(state): AxState<State>,
    Query(q): Query<UploadQuery>,
    CheckedUpload(_auth, body): CheckedUpload,
) -> Response {
    let u = state.startup.update.clone();
    if state.update_job.lock().unwrap_or_else(|e| e.into_inner()).running {
        return refused(StatusCode::CONFLICT, "an install is running");
    }
    if let Err(e) = std::fs::create_dir_all(&u.work_dir) {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create {}: {e}", u.work_dir.display()));
    }
    // Each upload its own file: two at once cannot mix their bytes.
    let path = u.work_dir.join(format!("upload-{:016x}.bundle", rand::random::<u64>()));
    let started = Instant::now();
    let size = match tokio::time::timeout(u.download_timeout, receive(body, &path, u.max_bundle_size)).await {
        Ok(Ok(size)) => size,
        Ok(Err(response)) => {
            let _ = std::fs::remove_file(&path);
            return response;
        }
        Err(_) => {
            let _ = std::fs::remove_file(&path);
            return refused(StatusCode::REQUEST_TIMEOUT, "the upload took longer than [Update] download_timeout");
        }
    };
    let force = q.force.is_some_and(|f| f == "1" || f == "yes" || f == "on");
    tracing::info!(bytes = size, secs = started.elapsed().as_secs(), force, "web: firmware bundle uploaded");
    {
        let mut job = state.update_job.lock().unwrap_or_else(|e| e.into_inner());
        if job.running {
            return refused(StatusCode::CONFLICT, "an install is running");
        }
        *job = Job { running: true, ..Job::default() };
        job.steps.push(format!("uploaded {:.1} MiB", size as f64 / 1048576.0));
    }
    let worker = state.clone();
    tokio::task::spawn_blocking(move || {
        let record = |p: &Progress| {
            worker.update_job.lock().unwrap_or_else(|e| e.into_inner()).record(p, p.to_string());
        };
        let outcome = Updater::load(&u).map_err(|e| e.to_string()).and_then(|up| {
            let _lock = up.lock().map_err(|e| e.to_string())?;
            let mut wrote = false;
            let result = up.install(&path, force, &mut |p| {
                wrote |= matches!(p, Progress::Cleared { .. });
                record(&p);
            });
            result.map_err(|e| match e {
                InstallError::Bundle(_) | InstallError::Slot(_) => format!("refused: {e}; nothing was written"),
                e if !wrote => format!("not installed: {e}; nothing was written"),
                e => format!("install failed: {e}; the other slot is not bootable, this one keeps running"),
            })
        });
        let _ = std::fs::remove_file(&path);
        let mut job = worker.update_job.lock().unwrap_or_else(|e| e.into_inner());
        job.running = false;
        match outcome {
            Ok(checked) => {
                tracing::warn!(version = %checked.manifest.version, "web: firmware update installed; it boots at the next reboot");
                job.ok = Some(true);
                job.message = format!(
                    "Version {} is installed. Reboot to try it: the box keeps it once it is healthy.",
                    checked.manifest.version
                );
            }
            Err(why) => {
                tracing::error!("web: firmware update {why}");
                job.ok = Some(false);
                job.message = format!("The update was {why}");
            }
        }
    });
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "started": true }))).into_response()
}
