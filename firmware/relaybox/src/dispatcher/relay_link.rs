//! The dispatcher's side of the relay link: a mutual-TLS listener, and one
//! task per connected relay that numbers commands, matches answers, answers
//! `ping` and takes `expired` reports. Only relay certificates get in (see
//! `relaybox_tls::PeerRole`); what a relay reports is checked against the
//! calls it holds (`Dispatcher::session_finished`, `adopt_sessions`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate};
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::link::{LinkCommand, LinkRequest, RelayLine, PONG_LINE};
use relaybox_proto::module::ModuleRequest;
use relaybox_proto::{SessionStats, Summary};
use relaybox_tls::{ClientAuth, Marker, PeerRole, Role, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Dispatcher, LinkCall, RelayHandle};

/// Relays only: a certificate of another role (a dispatcher's, a management
/// client's) is refused in the handshake.
fn relay_peers(dispatcher: &Dispatcher) -> PeerRole {
    PeerRole { role: Role::Relay, accept_unmarked: dispatcher.config.tls.accept_unmarked_certificates }
}

pub(crate) async fn bind(dispatcher: &Arc<Dispatcher>) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let files = TlsFiles::for_role(&dispatcher.config.tls.certs_path, Role::Dispatcher);
    let tls = relaybox_tls::server_config(&files, ClientAuth::Required, relay_peers(dispatcher))
        .context("loading TLS credentials")?;
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(tls)));
    let addr = dispatcher.config.dispatcher.listen;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tokio::spawn(reload_credentials(dispatcher.clone(), files, acceptor.clone()));
    let cfg = &dispatcher.config.dispatcher;
    // Connections count from their accept, before TLS: a peer without a
    // certificate holds a place only for handshake_timeout, and at most
    // max_relay_connections_per_ip of them from one address.
    let gate = Gate::new(
        "relay port",
        ConnectionLimits {
            total: cfg.max_relay_connections,
            per_source: cfg.max_relay_connections_per_ip,
            total_setting: "[Dispatcher] max_relay_connections",
            per_source_setting: "[Dispatcher] max_relay_connections_per_ip",
        },
    );
    dispatcher.metrics.watch(&gate);
    let dispatcher = dispatcher.clone();
    Ok(tokio::spawn(async move {
        let mut errors = AcceptErrors::new("relay port");
        loop {
            let (tcp, peer, admission) = relaybox_limits::next_tcp(&listener, &gate, &mut errors).await;
            let dispatcher = dispatcher.clone();
            let acceptor = acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
            tokio::spawn(async move {
                if let Err(reason) = accept(dispatcher.clone(), acceptor, tcp, peer).await {
                    dispatcher.metrics.relay_link_refused();
                    tracing::warn!(peer = %peer, "relay connection refused: {reason}");
                }
                drop(admission);
            });
        }
    }))
}

/// Every `verify_interval`: re-read CA, CRL, certificate and key, so a new
/// CRL takes effect without a restart, and drop relays it revokes.
async fn reload_credentials(dispatcher: Arc<Dispatcher>, files: TlsFiles, acceptor: Arc<RwLock<TlsAcceptor>>) {
    let period = dispatcher.config.tls.verify_interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        match relaybox_tls::server_config(&files, ClientAuth::Required, relay_peers(&dispatcher)) {
            Ok(tls) => *acceptor.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(tls),
            Err(e) => {
                tracing::error!("reloading TLS credentials failed, keeping the previous ones: {e}");
                continue;
            }
        }
        match relaybox_tls::revoked_serials(&files) {
            Ok(revoked) => {
                for relay in dispatcher.relays().into_iter().filter(|r| revoked.contains(&r.serial)) {
                    tracing::warn!(relay = %relay.ip, subject = %relay.subject, serial = %relay.serial, "relay certificate revoked by the CRL, disconnecting");
                    relay.close.notify_one();
                }
            }
            Err(e) => tracing::error!("reading the CRL: {e}"),
        }
    }
}

async fn accept(
    dispatcher: Arc<Dispatcher>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let stream = super::tls_accept(&acceptor, tcp, dispatcher.config.dispatcher.handshake_timeout).await?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
    let cert = cert.ok_or("relay presented no certificate")?;
    let identity = relaybox_tls::peer_identity(&cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    relaybox_tls::check_passport(dispatcher.config.dispatcher.passport.as_ref(), &identity)
        .map_err(|e| format!("certificate {} fails the passport: {e}", identity.subject_text))?;
    if relaybox_tls::certificate_marker(cert.as_ref()) == Ok(Marker::Unmarked) {
        tracing::warn!(
            peer = %peer,
            subject = %identity.subject_text,
            "relay certificate carries no relaybox role; accepted because accept_unmarked_certificates = yes"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let relay = RelayHandle {
        id: dispatcher.new_relay_id(),
        ip: peer.ip(),
        media_ip: Arc::new(std::sync::OnceLock::new()),
        subject: identity.subject_text.clone(),
        serial: identity.serial_hex.clone(),
        close: Arc::new(tokio::sync::Notify::new()),
        tx,
        halting: Arc::new(AtomicBool::new(false)),
        refusals: Arc::new(std::sync::Mutex::new(super::Refusals::new(tokio::time::Instant::now()))),
    };
    // Logged once calls can go to it.
    dispatcher.add_relay(relay.clone());
    let tls = stream.get_ref().1.protocol_version().map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
    tracing::info!(peer = %peer, subject = %relay.subject, tls = %tls, "relay connected");
    // Learn the relay's media address and which calls it already holds.
    let startup = {
        let dispatcher = dispatcher.clone();
        let relay = relay.clone();
        async move {
            let timeout = dispatcher.config.dispatcher.relay_timeout;
            match dispatcher.call(&relay, LinkRequest::Summary, timeout).await.map(|p| Summary::from_json(&p)) {
                Ok(Ok(summary)) => match summary.ip.parse() {
                    Ok(ip) => {
                        let _ = relay.media_ip.set(ip);
                        tracing::info!(peer = %relay.ip, media_ip = %ip, "relay media address");
                    }
                    Err(_) => tracing::warn!(relay = %relay.ip, "relay summary has no usable ip: {:?}", summary.ip),
                },
                Ok(Err(e)) => tracing::warn!(relay = %relay.ip, "bad summary on connect: {e}"),
                Err(e) => tracing::warn!(relay = %relay.ip, "summary on connect: no answer ({e:?})"),
            }
            // The link task adopts the answer (see adopt_listed).
            if let Err(e) = dispatcher.sessions_to_adopt(&relay, dispatcher.config.dispatcher.relay_timeout).await {
                tracing::warn!(relay = %relay.ip, "sessions on connect: no answer ({e:?})");
            }
        }
    };
    tokio::spawn(startup);
    let result = run_link(&dispatcher, &relay, stream, rx).await;
    dispatcher.remove_relay(relay.id);
    relay.refusals.lock().unwrap_or_else(|e| e.into_inner()).flush(&relay);
    match result {
        Ok(()) => tracing::info!(peer = %peer, "relay disconnected"),
        Err(e) => tracing::warn!(peer = %peer, "relay disconnected: {e:#}"),
    }
    Ok(())
}

struct Pending {
    kind: &'static str,
    /// See [`LinkCall::adopt`].
    adopt: bool,
    /// The call a `remove` was for: its late answer must be about that call.
    call_id: Option<String>,
    reply: oneshot::Sender<String>,
}

/// Bytes of queued commands written to a relay at once.
const MAX_BATCH: usize = 64 * 1024;

async fn run_link(
    dispatcher: &Arc<Dispatcher>,
    relay: &RelayHandle,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    mut calls: mpsc::UnboundedReceiver<LinkCall>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let cfg = &dispatcher.config.dispatcher;
    // Every module connection and management refresh waits for at most one
    // answer at a time; what is beyond is left by callers that gave up.
    let max_pending = cfg.max_module_connections + cfg.max_management_connections + 16;
    let mut seq: u64 = 0;
    let mut lines = LineDecoder::new(dispatcher.config.dispatcher.max_relay_line);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = relay.close.notified() => anyhow::bail!("closed by the dispatcher (certificate revoked)"),
            call = calls.recv() => {
                let Some(call) = call else { return Ok(()) };
                // Every command queued meanwhile (other module connections'
                // requests) goes out in the same write: one TLS record and
                // one flush for the lot, not one each. The module tasks that
                // the last answers woke run first (one turn of the
                // scheduler; at once when nothing else is ready), so that
                // their next requests join this write instead of costing a
                // write (a system call, a TLS record) each.
                tokio::task::yield_now().await;
                let mut out = String::new();
                let mut next = Some(call);
                while let Some(call) = next.take() {
                    let call_id = match &call.request {
                        LinkRequest::Remove(r) => Some(r.call_id.clone()),
                        LinkRequest::Module(f) => match &f.request {
                            ModuleRequest::Remove(r) => Some(r.call_id.clone()),
                            ModuleRequest::Update(_) => None,
                        },
                        _ => None,
                    };
                    let command = LinkCommand { seq, request: call.request };
                    if pending.len() >= max_pending {
                        forget_unanswered(&mut pending, max_pending, relay.ip);
                    }
                    let kind = command.request.name();
                    pending.insert(seq, Pending { kind, adopt: call.adopt, call_id, reply: call.reply });
                    seq += 1;
                    out.push_str(&command.encode());
                    if out.len() < MAX_BATCH {
                        next = calls.try_recv().ok();
                    }
                }
                writer.write_all(out.as_bytes()).await.context("writing to relay")?;
                writer.flush().await.context("flushing to relay")?;
            }
            read = reader.read(&mut buf) => {
                let n = read.context("reading from relay")?;
                if n == 0 {
                    return Ok(());
                }
                lines.push(&buf[..n]);
                while let Some(line) = lines.next_line() {
                    let line = match line {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(relay = %relay.ip, "relay sent a bad line: {e}");
                            continue;
                        }
                    };
                    if line.is_empty() {
                        continue;
                    }
                    match RelayLine::parse(&line) {
                        Ok(RelayLine::Ping) => {
                            writer.write_all(PONG_LINE.as_bytes()).await.context("writing pong")?;
                            writer.flush().await.context("flushing pong")?;
                        }
                        Ok(RelayLine::Expired(stats)) => dispatcher.session_finished(relay, stats, true),
                        Ok(RelayLine::Reply { seq, payload }) => match pending.remove(&seq) {
                            Some(Pending { kind, adopt, call_id, reply }) => {
                                if adopt {
                                    // Before the next line: an `expired` for a
                                    // listed call may follow at once.
                                    adopt_listed(dispatcher, relay, &payload);
                                }
                                if let Err(payload) = reply.send(payload) {
                                    late_answer(dispatcher, relay, kind, call_id.as_deref(), &payload);
                                }
                            }
                            None => tracing::warn!(relay = %relay.ip, seq, "answer to a command never sent"),
                        },
                        Err(e) => tracing::warn!(relay = %relay.ip, "relay sent an unparsable line: {e}"),
                    }
                }
            }
        }
    }
}

/// The relay's answer to `sessions` on connect: the calls it holds.
fn adopt_listed(dispatcher: &Dispatcher, relay: &RelayHandle, payload: &str) {
    match SessionStats::list_from_json(payload) {
        Ok(list) => {
            let listed = list.len();
            let (adopted, refused) = dispatcher.adopt_sessions(relay, list);
            tracing::info!(relay = %relay.ip, sessions = adopted, "relay sessions adopted");
            if refused > 0 {
                tracing::warn!(
                    relay = %relay.ip,
                    subject = %relay.subject,
                    listed,
                    refused,
                    "the relay listed calls that other relays hold; they stay with their holders"
                );
            }
        }
        Err(e) => tracing::warn!(relay = %relay.ip, "bad sessions list: {e}"),
    }
}

/// Bounds the commands a relay has not answered (one that answers nothing
/// must not make the dispatcher remember every command for ever): those
/// whose caller gave up go first, except `remove`s, whose late answer
/// still carries a call's statistics; then the oldest.
fn forget_unanswered(pending: &mut BTreeMap<u64, Pending>, max: usize, relay: std::net::IpAddr) {
    let before = pending.len();
    pending.retain(|_, p| p.kind == "remove" || !p.reply.is_closed());
    while pending.len() >= max {
        let Some((seq, p)) = pending.pop_first() else { break };
        tracing::warn!(relay = %relay, seq, "relay never answered {} {seq}; forgetting it", p.kind);
    }
    tracing::debug!(relay = %relay, forgotten = before - pending.len(), "unanswered commands forgotten");
}

/// An answer that came after its caller stopped waiting. A late `remove`
/// answer still carries the call's statistics: account them (if they are the
/// statistics of the call removed, and the relay holds it).
fn late_answer(dispatcher: &Dispatcher, relay: &RelayHandle, kind: &str, call_id: Option<&str>, payload: &str) {
    match (kind, call_id) {
        ("remove", Some(call_id)) => match SessionStats::from_json(payload) {
            Ok(stats) => dispatcher.removed(relay, call_id, stats),
            Err(_) => tracing::warn!(relay = %relay.ip, "late remove answer without statistics: {payload}"),
        },
        (kind, _) => tracing::debug!(relay = %relay.ip, "late {kind} answer dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_commands_are_bounded_keeping_waiters_and_removes_first() {
        let mut pending = BTreeMap::new();
        let mut waiting = Vec::new();
        for seq in 0..6u64 {
            let (reply, rx) = oneshot::channel();
            let kind = if seq % 3 == 0 { "remove" } else { "update" };
            pending.insert(seq, Pending { kind, adopt: false, call_id: None, reply });
            // The callers of 1 and 2 gave up; the others still wait.
            if seq != 1 && seq != 2 {
                waiting.push(rx);
            }
        }
        let ip = "192.0.2.1".parse().unwrap();
        forget_unanswered(&mut pending, 5, ip);
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), [0, 3, 4, 5], "abandoned updates go first");
        forget_unanswered(&mut pending, 3, ip);
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), [4, 5], "then the oldest");
    }
}
