//! The relay's side of the link: connect to one dispatcher over mutual TLS,
//! answer its commands, send `ping` every `keepalive_interval`, reconnect
//! every `reconnect_delay` when the link drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use relaybox_config::HostPort;
use relaybox_proto::link::{LinkRequest, RelayDecoder, RelayInbound, RelayLine};
use relaybox_proto::module::Limits;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::{Outbound, Relay};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalives without an answer before the link is declared down.
const MISSED_PONGS: u32 = 3;
/// Most header lines in one command.
const MAX_HEADER_LINES: usize = 64;

pub(crate) async fn run(relay: Arc<Relay>, target: HostPort, tls: Arc<rustls::ClientConfig>) {
    loop {
        match serve(&relay, &target, tls.clone()).await {
            Ok(()) => tracing::warn!(dispatcher = %target, "dispatcher closed the link"),
            Err(e) => tracing::warn!(dispatcher = %target, "link to dispatcher: {e:#}"),
        }
        tokio::time::sleep(relay.config.relay.reconnect_delay).await;
    }
}

async fn serve(relay: &Arc<Relay>, target: &HostPort, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((target.host.as_str(), target.port)))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp.local_addr().context("local address")?.ip();
    let name = ServerName::try_from(target.host.clone()).context("dispatcher host name")?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .map_err(|e| anyhow::anyhow!("TLS handshake failed: {}", relaybox_tls::describe_handshake_error(&e)))?;
    // The handshake refused any certificate but a dispatcher's (or, with
    // accept_unmarked_certificates, one without a role).
    if let Some(passport) = relay.config.relay.passport.as_ref() {
        let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let cert = cert.context("dispatcher presented no certificate")?;
        let identity = relaybox_tls::peer_identity(&cert)?;
        relaybox_tls::check_passport(Some(passport), &identity)
            .with_context(|| format!("dispatcher certificate {} fails the passport", identity.subject_text))?;
    }
    let tls = stream.get_ref().1.protocol_version().map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
    tracing::info!(dispatcher = %target, tls = %tls, "connected to dispatcher");
    let (tx, mut outbound) = mpsc::unbounded_channel();
    let answers = tx.downgrade();
    let link_id = relay.register_link(tx);
    // One `sessions` at a time is answered beside the link (see below).
    let sessions_busy = Arc::new(AtomicBool::new(false));
    let result = async {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let limits = Limits { max_media: relay.config.relay.max_streams_per_session };
        let max_line = relay.config.relay.max_line_length;
        let mut decoder = RelayDecoder::new(max_line, MAX_HEADER_LINES, limits).with_max_frame(max_line);
        let mut ping = tokio::time::interval(relay.config.relay.keepalive_interval);
        ping.tick().await;
        let mut missed = 0u32;
        let mut pending_sent = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                read = reader.read(&mut buf) => {
                    let n = read.context("reading")?;
                    if n == 0 {
                        return Ok(());
                    }
                    decoder.push(&buf[..n]);
                    // The answers to everything this read brought go out in
                    // one write (one TLS record) and one flush.
                    let mut out = String::new();
                    while let Some(inbound) = decoder.next_inbound() {
                        let line = match inbound {
                            RelayInbound::Pong => {
                                missed = 0;
                                continue;
                            }
                            RelayInbound::Command(c) if matches!(c.request, LinkRequest::Sessions)
                                && !sessions_busy.swap(true, Ordering::AcqRel) =>
                            {
                                // Every session as JSON takes a while with
                                // thousands of calls: made on a blocking
                                // thread and answered when ready (answers
                                // carry their seq), so that the updates
                                // behind it are answered meanwhile.
                                let (relay, answers, busy) = (relay.clone(), answers.clone(), sessions_busy.clone());
                                tokio::task::spawn_blocking(move || {
                                    let payload = relay.handle(c.request, link_id, local_ip);
                                    busy.store(false, Ordering::Release);
                                    if let Some(tx) = answers.upgrade() {
                                        let _ = tx.send(Outbound::Line(Box::new(RelayLine::Reply { seq: c.seq, payload })));
                                    }
                                });
                                continue;
                            }
                            RelayInbound::Command(c) => {
                                let sessions = matches!(c.request, LinkRequest::Sessions);
                                let payload = relay.handle(c.request, link_id, local_ip);
                                let reply = RelayLine::Reply { seq: c.seq, payload };
                                if sessions {
                                    // The list named the calls whose reports
                                    // waited for a dispatcher: send them now.
                                    out.push_str(&reply.encode());
                                    writer.write_all(std::mem::take(&mut out).as_bytes()).await.context("writing")?;
                                    send_pending_expired(relay, &mut writer).await?;
                                    pending_sent = true;
                                    continue;
                                }
                                reply
                            }
                            RelayInbound::Invalid(e) => {
                                tracing::warn!(dispatcher = %target, "bad command: {}", e.error);
                                match e.seq {
                                    Some(seq) => RelayLine::Reply { seq, payload: "error".into() },
                                    None => continue,
                                }
                            }
                        };
                        out.push_str(&line.encode());
                    }
                    writer.write_all(out.as_bytes()).await.context("writing")?;
                    writer.flush().await.context("flushing")?;
                }
                out = outbound.recv() => match out {
                    Some(Outbound::Line(line)) => {
                        writer.write_all(line.encode().as_bytes()).await.context("writing")?;
                        writer.flush().await.context("flushing")?;
                    }
                    Some(Outbound::Flush(done)) => {
                        writer.flush().await.context("flushing")?;
                        let _ = done.send(());
                    }
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    if !pending_sent {
                        // A dispatcher that never asks for `sessions` still
                        // gets the reports that waited.
                        send_pending_expired(relay, &mut writer).await?;
                        pending_sent = true;
                    }
                    if missed >= MISSED_PONGS {
                        anyhow::bail!("{MISSED_PONGS} keepalives in a row got no answer, assuming the link is down");
                    }
                    writer.write_all(RelayLine::Ping.encode().as_bytes()).await.context("writing ping")?;
                    writer.flush().await.context("flushing")?;
                    missed += 1;
                }
            }
        }
    }
    .await;
    relay.unregister_link(link_id);
    result
}

/// Writes the expired reports that waited for a dispatcher.
async fn send_pending_expired<W: tokio::io::AsyncWrite + Unpin>(relay: &Relay, writer: &mut W) -> anyhow::Result<()> {
    for stats in relay.take_pending_expired() {
        tracing::info!(call_id = %stats.call_id, "sending the expired report that waited for a dispatcher");
        writer.write_all(RelayLine::Expired(stats).encode().as_bytes()).await.context("writing")?;
    }
    Ok(())
}
