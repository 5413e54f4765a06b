//! The UNIX stream socket the proxy's `mediaproxy` module talks to. Every
//! proxy worker keeps its own connection; each request gets exactly one
//! reply line, written in one go.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use relaybox_proto::module::{Limits, ModuleFrame, ModuleReply};
use relaybox_proto::FrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::Dispatcher;

/// Most header lines in one module request.
const MAX_HEADER_LINES: usize = 64;

pub(crate) fn bind(dispatcher: &Arc<Dispatcher>) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let path = dispatcher.config.dispatcher.socket_path.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!("{} is in use by another dispatcher", path.display());
        }
        std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    // Like MediaProxy's (Twisted's default): the proxy usually runs as its
    // own user and must be able to connect.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod {}", path.display()))?;
    let dispatcher = dispatcher.clone();
    let limit = Arc::new(tokio::sync::Semaphore::new(dispatcher.config.dispatcher.max_module_connections));
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.context("accepting on the module socket")?;
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::error!(
                    limit = dispatcher.config.dispatcher.max_module_connections,
                    "module socket: connection limit reached, refusing a connection"
                );
                drop(stream);
                continue;
            };
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                serve(dispatcher, stream).await;
                drop(permit);
            });
        }
    }))
}

async fn serve(dispatcher: Arc<Dispatcher>, mut stream: UnixStream) {
    let peer = peer_description(&stream);
    let max = dispatcher.config.dispatcher.max_request_size;
    let limits = Limits { max_media: dispatcher.config.relay.max_streams_per_session };
    let mut decoder = FrameDecoder::new(max, MAX_HEADER_LINES);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(peer = %peer, "module connection read error: {e}");
                return;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame() {
            let reply = match frame.and_then(|f| ModuleFrame::parse(f, &limits)) {
                Ok(frame) => {
                    let kind = frame.request.name();
                    let call_id = frame.request.call_id().to_string();
                    let reply = dispatcher.handle_module_request(frame).await;
                    tracing::debug!(peer = %peer, call_id = %call_id, "{kind} -> {}", reply.encode().trim_end());
                    reply
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, "module request rejected: {e}");
                    ModuleReply::Error
                }
            };
            if let Err(e) = stream.write_all(reply.encode().as_bytes()).await {
                tracing::debug!(peer = %peer, "module connection write error: {e}");
                return;
            }
        }
    }
}

fn peer_description(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(c) => format!("pid {} uid {}", c.pid().unwrap_or(0), c.uid()),
        Err(_) => "unknown peer".to_string(),
    }
}
