//! The web page's side of the relay's control socket: one command, one JSON
//! line back; and "apply": SIGHUP to the relay that owns the socket (found
//! from the socket's peer credentials), so that it stops taking new calls,
//! exits after the last one ends, and the box's init starts it again with
//! the new configuration.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer read (a `sessions` answer carries every session).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the relay does not answer on {path}: {reason}")]
    Unreachable { path: String, reason: String },
    #[error("the relay answered {0:?}")]
    Refused(String),
    #[error("the relay's answer is not what was expected: {0}")]
    Invalid(String),
    #[error("cannot signal the relay (pid {pid}): {reason}")]
    Signal { pid: u32, reason: String },
}

fn unreachable(path: &Path, reason: impl ToString) -> ControlError {
    ControlError::Unreachable { path: path.display().to_string(), reason: reason.to_string() }
}

/// Sends `command` and returns the answer line (without the line end).
pub async fn query(socket: &Path, command: &str) -> Result<String, ControlError> {
    let run = async {
        let mut stream = UnixStream::connect(socket).await.map_err(|e| unreachable(socket, e))?;
        stream.write_all(format!("{command}\r\n").as_bytes()).await.map_err(|e| unreachable(socket, e))?;
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_ANSWER));
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(|e| unreachable(socket, e))?;
        let line = line.trim_end().to_string();
        if line.is_empty() || line == "error" {
            return Err(ControlError::Refused(line));
        }
        Ok(line)
    };
    tokio::time::timeout(TIMEOUT, run).await.unwrap_or_else(|_| Err(unreachable(socket, "timed out")))
}

/// `query` parsed as JSON.
pub async fn query_json(socket: &Path, command: &str) -> Result<serde_json::Value, ControlError> {
    let line = query(socket, command).await?;
    serde_json::from_str(&line).map_err(|e| ControlError::Invalid(e.to_string()))
}

/// The pid of the process listening on the control socket.
pub async fn relay_pid(socket: &Path) -> Result<u32, ControlError> {
    let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| unreachable(socket, "timed out"))?
        .map_err(|e| unreachable(socket, e))?;
    let cred = stream.peer_cred().map_err(|e| unreachable(socket, e))?;
    cred.pid()
        .filter(|p| *p > 0)
        .map(|p| p as u32)
        .ok_or_else(|| unreachable(socket, "the socket does not tell its owner's pid"))
}

/// SIGHUP to the relay: graceful halt, calls in progress go on.
pub async fn halt_relay(socket: &Path) -> Result<u32, ControlError> {
    let pid = relay_pid(socket).await?;
    let target = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| ControlError::Signal { pid, reason: "invalid pid".into() })?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|e| ControlError::Signal { pid, reason: e.to_string() })?;
    Ok(pid)
}
