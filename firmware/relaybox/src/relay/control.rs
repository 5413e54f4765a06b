//! The relay's local control socket (`[Relay] control_socket`, default
//! `/run/relaybox/relay.sock`): a UNIX stream socket for the box's web page.
//! Line commands `summary`, `sessions` and `metrics` (and `quit`) each answer
//! one JSON line; anything else answers `error`. `summary` and `sessions` are
//! the relay-link answers, made by [`Relay::handle`]; `metrics` adds the
//! counters the status page and `/metrics` need. The socket is mode 0660:
//! only root and the socket's group may ask. The web page finds the relay's
//! pid from the socket's peer credentials to send it SIGHUP.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate, Source};
use relaybox_proto::link::LinkRequest;
use relaybox_proto::{SessionStats, Summary};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::relay::Relay;

/// Most control connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Longest command line accepted.
const MAX_LINE: usize = 256;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Binds the control socket and serves it in the background. A relay whose
/// socket cannot be bound still relays calls; the failure is logged.
/// Started by `relay::run()`: `crate::control::spawn(relay.clone());`.
pub(crate) fn spawn(relay: Arc<Relay>) {
    let path = relay.config.relay.control_socket.clone();
    match bind(&path) {
        Ok(listener) => {
            tracing::info!(socket = %path.display(), "control socket ready");
            tokio::spawn(serve(relay, listener));
        }
        Err(e) => tracing::error!(socket = %path.display(), "control socket not available: {e}"),
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A socket someone still answers on belongs to another relay.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another relay answers on it"));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn serve(relay: Arc<Relay>, listener: UnixListener) {
    // Only root and the socket's group can connect: one cap for all.
    let gate = Gate::new(
        "control socket",
        ConnectionLimits {
            total: MAX_CONNECTIONS,
            per_source: MAX_CONNECTIONS,
            total_setting: "16, fixed",
            per_source_setting: "16, fixed",
        },
    );
    let mut errors = AcceptErrors::new("control socket");
    loop {
        let (stream, _) = errors.retry(|| listener.accept()).await;
        let source = stream.peer_cred().map_or(Source::Unknown, |c| Source::Uid(c.uid()));
        let Some(admission) = gate.admit(source, &source) else { continue };
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(&relay, stream).await {
                tracing::debug!("control connection: {e}");
            }
            drop(admission);
        });
    }
}

async fn connection(relay: &Arc<Relay>, stream: UnixStream) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(IDLE, (&mut reader).take(MAX_LINE as u64).read_line(&mut line)).await {
            Ok(read) => read?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n >= MAX_LINE {
            writer.write_all(b"error\r\n").await?;
            return Ok(());
        }
        let command = line.trim().to_string();
        if command == "quit" || command == "exit" {
            return Ok(());
        }
        // `sessions` and `metrics` go through every session: on a blocking
        // thread, not on a runtime worker that the dispatcher links share.
        let answering = relay.clone();
        let reply = tokio::task::spawn_blocking(move || match command.as_str() {
            "summary" => answering.handle(LinkRequest::Summary, 0, unspecified()),
            "sessions" => answering.handle(LinkRequest::Sessions, 0, unspecified()),
            "metrics" => metrics(&answering),
            _ => "error".to_string(),
        })
        .await
        .unwrap_or_else(|_| "error".to_string());
        writer.write_all(reply.as_bytes()).await?;
        writer.write_all(b"\r\n").await?;
    }
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

/// The summary plus counters: relayed bytes and packets, port pool use,
/// RTP-bleed drops, ports another program held, the configured dispatchers.
fn metrics(relay: &Relay) -> String {
    let summary = Summary::from_json(&relay.handle(LinkRequest::Summary, 0, unspecified())).ok();
    let sessions =
        SessionStats::list_from_json(&relay.handle(LinkRequest::Sessions, 0, unspecified())).unwrap_or_default();
    let (packets, session_bytes) = sessions
        .iter()
        .flat_map(|s| s.streams.iter())
        .fold((0u64, 0u64), |(p, b), s| (p + s.caller_packets + s.callee_packets, b + s.caller_bytes + s.callee_bytes));
    let (ports_used, ports_free, bleed_drops, relayed) = {
        let table = relay.table();
        (table.ports_in_use(), table.ports_free(), table.bleed_drops(), table.relayed())
    };
    let dispatchers: Vec<String> = relay.config.relay.dispatchers.iter().map(|d| d.to_string()).collect();
    serde_json::json!({
        "summary": summary,
        "pid": std::process::id(),
        "bytes_relayed": relayed.bytes,
        "packets_relayed": relayed.packets,
        "session_packets": packets,
        "session_bytes": session_bytes,
        "ports_used": ports_used,
        "ports_free": ports_free,
        "bleed_drops": bleed_drops,
        "port_bind_failures": relay.port_bind_failures.load(std::sync::atomic::Ordering::Relaxed),
        "dispatchers": dispatchers,
        "links": relay.link_count(),
        "port_range": format!("{}:{}", relay.config.relay.port_range.start, relay.config.relay.port_range.end),
    })
    .to_string()
}
