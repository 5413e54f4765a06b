//! The Logs page: the end of the box's in-memory log (the output of
//! `[Web] log_command`, busybox's `logread`, at most `[Web] log_max_bytes`
//! of it, newest last), and the saved logs of this boot and the previous
//! one (`[Web] log_dir`: `current.log`, `previous.log`, written by the
//! image's init) to download.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::State;
use crate::extract::Authed;
use crate::html::{esc, page};
use crate::layout::html_page;

/// The saved logs that may be downloaded.
const SAVED: &[(&str, &str)] = &[("previous.log", "the previous boot"), ("current.log", "this boot, as last saved")];
/// How long the log command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The last `max` bytes of `command`'s output (from a line start), or why
/// there is none. The command is killed after [`COMMAND_TIMEOUT`].
pub fn read_log(command: &Path, max: usize) -> Result<String, String> {
    let mut child = Command::new(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", command.display()))?;
    let mut stdout = child.stdout.take().ok_or("no output")?;
    let reader = std::thread::spawn(move || {
        // Keep only the end: at most 2 × max in memory at any time.
        let mut kept: Vec<u8> = Vec::new();
        let mut cut = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * max {
                        kept.drain(..kept.len() - max);
                        cut = true;
                    }
                }
            }
        }
        (kept, cut)
    });
    let until = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let (mut kept, cut) = reader.join().map_err(|_| "the log reader failed".to_string())?;
    if cut || kept.len() > max {
        // Start at a whole line.
        let from = kept.len().saturating_sub(max);
        let start = kept[from..].iter().position(|b| *b == b'\n').map(|p| from + p + 1).unwrap_or(from);
        kept.drain(..start);
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}

pub async fn page_handler(AxState(state): AxState<State>, auth: Authed) -> Response {
    let (command, max) = (state.web.log_command.clone(), state.web.log_max_bytes);
    let log = tokio::task::spawn_blocking(move || read_log(&command, max)).await.unwrap_or_else(|e| Err(e.to_string()));
    let shown = match log {
        Ok(text) if text.trim().is_empty() => r#"<p class="help">The log is empty.</p>"#.to_string(),
        Ok(text) => format!(r#"<pre class="mono" id="log">{}</pre>"#, esc(&text)),
        Err(e) => format!(r#"<p class="bad" id="log-error">{}</p>"#, esc(&e)),
    };
    let saved: String = SAVED
        .iter()
        .filter_map(|(name, what)| {
            let meta = std::fs::metadata(state.web.log_dir.join(name)).ok()?;
            Some(format!(
                r#"<li><a href="/logs/saved/{name}">{name}</a>: {what} ({} KiB)</li>"#,
                meta.len().div_ceil(1024)
            ))
        })
        .collect();
    let saved =
        if saved.is_empty() { "<p class=\"help\">None yet.</p>".to_string() } else { format!("<ul>{saved}</ul>") };
    let body = format!(
        r#"<section><h2>Saved on the configuration partition</h2>{saved}</section>
<section><h2>Now</h2><p class="help">The end of the box's in-memory log (at most {kib} KiB), newest last. Remote syslog: System page.</p>{shown}</section>"#,
        kib = max / 1024
    );
    html_page(page("Logs", "/logs", Some(&auth.csrf), &body))
}

/// Downloads a saved log; any other name is refused.
pub async fn saved(AxState(state): AxState<State>, _auth: Authed, UrlPath(name): UrlPath<String>) -> Response {
    let Some((name, _)) = SAVED.iter().find(|(n, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such log\n").into_response();
    };
    match std::fs::read(state.web.log_dir.join(name)) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no such log\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_long_log_is_kept_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("log.sh");
        std::fs::write(&script, "#!/bin/sh\ni=0; while [ $i -lt 5000 ]; do echo \"line $i\"; i=$((i+1)); done\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = read_log(&script, 4096).unwrap();
        assert!(text.len() <= 4096 && text.starts_with("line ") && text.ends_with("line 4999\n"), "{text}");
        assert!(read_log(&dir.path().join("missing"), 4096).unwrap_err().contains("cannot run"));
        // A command that never ends is cut off.
        std::fs::write(&script, "#!/bin/sh\necho started\nexec sleep 60\n").unwrap();
        let t = Instant::now();
        assert_eq!(read_log(&script, 4096).unwrap(), "started\n");
        assert!(t.elapsed() < Duration::from_secs(30));
    }
}
