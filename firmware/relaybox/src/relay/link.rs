//! The relay's side of the link: connect to one dispatcher over mutual TLS,
//! answer its commands, send `ping` every `keepalive_interval`, reconnect
//! every `reconnect_delay` when the link drops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use relaybox_config::HostPort;
use relaybox_proto::link::{RelayDecoder, RelayInbound, RelayLine};
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
    let link_id = relay.register_link(tx);
    let result = async {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let limits = Limits { max_media: relay.config.relay.max_streams_per_session };
        let mut decoder = RelayDecoder::new(relay.config.relay.max_line_length, MAX_HEADER_LINES, limits);
        let mut ping = tokio::time::interval(relay.config.relay.keepalive_interval);
        ping.tick().await;
        let mut missed = 0u32;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                read = reader.read(&mut buf) => {
                    let n = read.context("reading")?;
                    if n == 0 {
                        return Ok(());
                    }
                    decoder.push(&buf[..n]);
                    while let Some(inbound) = decoder.next_inbound() {
                        let line = match inbound {
                            RelayInbound::Pong => {
                                missed = 0;
                                continue;
                            }
                            RelayInbound::Command(c) => {
                                let payload = relay.handle(c.request, link_id, local_ip);
                                RelayLine::Reply { seq: c.seq, payload }
                            }
                            RelayInbound::Invalid(e) => {
                                tracing::warn!(dispatcher = %target, "bad command: {}", e.error);
                                match e.seq {
                                    Some(seq) => RelayLine::Reply { seq, payload: "error".into() },
                                    None => continue,
                                }
                            }
                        };
                        writer.write_all(line.encode().as_bytes()).await.context("writing")?;
                    }
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
