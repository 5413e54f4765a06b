//! The dispatcher's side of the relay link: a mutual-TLS listener, and one
//! task per connected relay that numbers commands, matches answers, answers
//! `ping` and takes `expired` reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::link::{LinkCommand, LinkRequest, RelayLine, PONG_LINE};
use relaybox_proto::{SessionStats, Summary};
use relaybox_tls::{ClientAuth, Role, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Dispatcher, LinkCall, RelayHandle};

pub(crate) async fn bind(dispatcher: &Arc<Dispatcher>) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let files = TlsFiles::for_role(&dispatcher.config.tls.certs_path, Role::Dispatcher);
    let tls = relaybox_tls::server_config(&files, ClientAuth::Required).context("loading TLS credentials")?;
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(tls)));
    let addr = dispatcher.config.dispatcher.listen;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tokio::spawn(reload_credentials(dispatcher.clone(), files, acceptor.clone()));
    let dispatcher = dispatcher.clone();
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = super::next_connection(&listener, "relay").await;
            let dispatcher = dispatcher.clone();
            let acceptor = acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
            tokio::spawn(async move {
                if let Err(reason) = accept(dispatcher, acceptor, tcp, peer).await {
                    tracing::warn!(peer = %peer, "relay connection refused: {reason}");
                }
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
        match relaybox_tls::server_config(&files, ClientAuth::Required) {
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
    let stream = super::tls_accept(&acceptor, tcp).await?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
    let cert = cert.ok_or("relay presented no certificate")?;
    let identity = relaybox_tls::peer_identity(&cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    relaybox_tls::check_passport(dispatcher.config.dispatcher.passport.as_ref(), &identity)
        .map_err(|e| format!("certificate {} fails the passport: {e}", identity.subject_text))?;
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
            match dispatcher.call(&relay, LinkRequest::Sessions, dispatcher.config.dispatcher.relay_timeout).await {
                Ok(payload) => match SessionStats::list_from_json(&payload) {
                    Ok(list) => {
                        tracing::info!(relay = %relay.ip, sessions = list.len(), "relay sessions adopted");
                        dispatcher.adopt_sessions(&relay, list);
                    }
                    Err(e) => tracing::warn!(relay = %relay.ip, "bad sessions list: {e}"),
                },
                Err(e) => tracing::warn!(relay = %relay.ip, "sessions on connect: no answer ({e:?})"),
            }
        }
    };
    tokio::spawn(startup);
    let result = run_link(&dispatcher, &relay, stream, rx).await;
    dispatcher.remove_relay(relay.id);
    match result {
        Ok(()) => tracing::info!(peer = %peer, "relay disconnected"),
        Err(e) => tracing::warn!(peer = %peer, "relay disconnected: {e:#}"),
    }
    Ok(())
}

struct Pending {
    kind: &'static str,
    reply: oneshot::Sender<String>,
}

async fn run_link(
    dispatcher: &Arc<Dispatcher>,
    relay: &RelayHandle,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    mut calls: mpsc::UnboundedReceiver<LinkCall>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut seq: u64 = 0;
    let mut lines = LineDecoder::new(dispatcher.config.dispatcher.max_relay_line);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = relay.close.notified() => anyhow::bail!("closed by the dispatcher (certificate revoked)"),
            call = calls.recv() => {
                let Some(call) = call else { return Ok(()) };
                let command = LinkCommand { seq, request: call.request };
                pending.insert(seq, Pending { kind: command.request.name(), reply: call.reply });
                seq += 1;
                writer.write_all(command.encode().as_bytes()).await.context("writing to relay")?;
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
                            Some(p) => {
                                if let Err(payload) = p.reply.send(payload) {
                                    late_answer(dispatcher, relay, p.kind, &payload);
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

/// An answer that came after its caller stopped waiting. A late `remove`
/// answer still carries the call's statistics: account them.
fn late_answer(dispatcher: &Dispatcher, relay: &RelayHandle, kind: &str, payload: &str) {
    if kind == "remove" {
        match SessionStats::from_json(payload) {
            Ok(stats) => dispatcher.session_finished(relay, stats, false),
            Err(_) => tracing::warn!(relay = %relay.ip, "late remove answer without statistics: {payload}"),
        }
    } else {
        tracing::debug!(relay = %relay.ip, "late {kind} answer dropped");
    }
}
