//! The UNIX stream socket the proxy's `mediaproxy` module talks to. Every
//! proxy worker keeps its own connection; each request gets exactly one
//! reply line, written in one go. Connections are capped in total and per
//! user id (`max_module_connections`, `max_module_connections_per_uid`),
//! each request is bounded in size, and a connection that sends no valid
//! request in time is closed (see [`serve`]).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use relaybox_config::Group;
use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate, Source};
use relaybox_proto::module::{Limits, ModuleFrame, ModuleReply};
use relaybox_proto::FrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Dispatcher;

/// Most header lines in one module request.
const MAX_HEADER_LINES: usize = 64;
/// Bytes read at a time: a request is a few hundred.
const READ_CHUNK: usize = 4096;

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
    let cfg = &dispatcher.config.dispatcher;
    // 0666 by default, like MediaProxy's (Twisted's default): the proxy
    // usually runs as its own user and must be able to connect. With
    // socket_group and 0660 only that group's members can.
    if let Some(group) = &cfg.socket_group {
        let gid = gid_of(group).with_context(|| format!("[Dispatcher] socket_group = {group}"))?;
        std::os::unix::fs::chown(&path, None, Some(gid))
            .with_context(|| format!("giving {} the group {group} ({gid})", path.display()))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .with_context(|| format!("chmod {:o} {}", cfg.socket_mode, path.display()))?;
    let gate = Gate::new(
        "module socket",
        ConnectionLimits {
            total: cfg.max_module_connections,
            per_source: cfg.max_module_connections_per_uid,
            total_setting: "[Dispatcher] max_module_connections",
            per_source_setting: "[Dispatcher] max_module_connections_per_uid",
        },
    );
    dispatcher.metrics.watch(&gate);
    let dispatcher = dispatcher.clone();
    Ok(tokio::spawn(async move {
        let mut errors = AcceptErrors::new("module socket");
        loop {
            // No accept error ends the dispatcher: out of descriptors, it
            // waits and accepts again (the proxy's connection waits in the
            // backlog meanwhile).
            let (stream, _) = errors.retry(|| listener.accept()).await;
            let (peer, source) = peer_of(&stream);
            let Some(admission) = gate.admit(source, &peer) else { continue };
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                serve(dispatcher, stream, &peer).await;
                drop(admission);
            });
        }
    }))
}

/// Reads one module connection's requests and answers each. What it holds
/// is bounded: one read and one request of at most `max_request_size`
/// bytes (its lines together, not each line). A connection gets
/// `module_request_timeout` from its connect for a first valid request, and
/// as long again for any request that has started to arrive; between
/// requests a connection that has made a valid one may stay idle for ever:
/// each proxy worker keeps one open, and a quiet night has no calls.
async fn serve(dispatcher: Arc<Dispatcher>, mut stream: UnixStream, peer: &str) {
    let cfg = &dispatcher.config.dispatcher;
    let limits = Limits { max_media: dispatcher.config.relay.max_streams_per_session };
    let mut decoder = FrameDecoder::with_max_frame(cfg.max_request_size, MAX_HEADER_LINES);
    let mut buf = vec![0u8; READ_CHUNK];
    let timeout = cfg.module_request_timeout;
    let connected = Instant::now();
    let mut served = false;
    let mut frame_started: Option<Instant> = None;
    loop {
        let deadline = match (served, frame_started) {
            (false, _) => Some(connected + timeout),
            (true, Some(at)) => Some(at + timeout),
            (true, None) => None,
        };
        let read = match deadline {
            None => stream.read(&mut buf).await,
            Some(at) => match tokio::time::timeout_at(at, stream.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    let what = if served { "a request not complete" } else { "no valid request" };
                    tracing::warn!(
                        peer = %peer,
                        "module connection closed: {what} within {} s ([Dispatcher] module_request_timeout)",
                        timeout.as_secs()
                    );
                    let reply = ModuleReply::Error.encode();
                    let _ = tokio::time::timeout(timeout, stream.write_all(reply.as_bytes())).await;
                    return;
                }
            },
        };
        let n = match read {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(peer = %peer, "module connection read error: {e}");
                return;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame() {
            let started = Instant::now();
            let reply = match frame.and_then(|f| ModuleFrame::parse(f, &limits)) {
                Ok(frame) => {
                    served = true;
                    let kind = frame.request.name();
                    let call_id = frame.request.call_id().to_string();
                    let reply = dispatcher.handle_module_request(frame).await;
                    tracing::debug!(peer = %peer, call_id = %call_id, "{kind} -> {}", reply.encode().trim_end());
                    (kind, reply)
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, "module request rejected: {e}");
                    ("invalid", ModuleReply::Error)
                }
            };
            let (kind, reply) = reply;
            // A peer that sends requests but never reads the replies must
            // not hold its place for ever.
            let written = tokio::time::timeout(timeout, stream.write_all(reply.encode().as_bytes())).await;
            dispatcher.metrics.module_request(kind, answer_kind(&reply), started.elapsed());
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, "module connection write error: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %peer, "module connection closed: it does not read its replies");
                    return;
                }
            }
        }
        if decoder.in_frame() {
            frame_started = frame_started.or(Some(Instant::now()));
        } else {
            frame_started = None;
            // Between requests a connection holds no buffer: a big request
            // does not leave its memory with an idle worker's connection.
            decoder = FrameDecoder::with_max_frame(cfg.max_request_size, MAX_HEADER_LINES);
        }
    }
}

/// The reply's kind, for metrics.
fn answer_kind(reply: &ModuleReply) -> &'static str {
    match reply {
        ModuleReply::Ports(_) => "ports",
        ModuleReply::NoMedia => "none",
        ModuleReply::Removed => "removed",
        ModuleReply::Error => "error",
    }
}

/// The id of `group`: a number as it is, a name from `/etc/group` (the
/// files the static binary can read; a group known only to NSS, e.g. LDAP,
/// is given by its number).
fn gid_of(group: &Group) -> anyhow::Result<u32> {
    match group {
        Group::Id(id) => Ok(*id),
        Group::Name(name) => {
            let text = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
            gid_in(&text, name).with_context(|| format!("no group {name} in /etc/group (give its id instead)"))
        }
    }
}

/// The gid of `name` in the text of an `/etc/group` file.
fn gid_in(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

/// The peer for log lines, and its source for the per-uid cap.
fn peer_of(stream: &UnixStream) -> (String, Source) {
    match stream.peer_cred() {
        Ok(c) => (format!("pid {} uid {}", c.pid().unwrap_or(0), c.uid()), Source::Uid(c.uid())),
        Err(_) => ("unknown peer".to_string(), Source::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_from_the_group_file() {
        let file = "root:x:0:\n# comment\nkamailio:x:114:\nrelaybox:x:998:kamailio,opensips\nbroken\n";
        assert_eq!(gid_in(file, "relaybox"), Some(998));
        assert_eq!(gid_in(file, "kamailio"), Some(114));
        assert_eq!(gid_in(file, "relay"), None);
        assert_eq!(gid_in(file, "broken"), None);
        assert_eq!(gid_of(&Group::Id(7)).unwrap(), 7);
    }
}
