//! The management port: `summary`, `sessions`, `version`, `quit`. TLS by
//! default (`management_use_tls`) with a management client certificate
//! required (unless `management_allow_anonymous`), optionally restricted by
//! `management_passport`; one line per command, one line back.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::mgmt::{reply_line, MgmtCommand, MGMT_ERROR};
use relaybox_proto::{SessionStats, Summary};
use relaybox_tls::{ClientAuth, PeerRole, Role, TlsFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::Dispatcher;

/// Longest management command line.
const MAX_COMMAND_LINE: usize = 1024;

pub(crate) async fn bind(dispatcher: &Arc<Dispatcher>) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let cfg = &dispatcher.config.dispatcher;
    let acceptor = if cfg.management_use_tls {
        let files = TlsFiles::for_role(&dispatcher.config.tls.certs_path, Role::Dispatcher);
        // A client certificate is required unless the operator said otherwise;
        // one that is presented must be a management client's either way.
        let anonymous = cfg.management_allow_anonymous && cfg.management_passport.is_none();
        let auth = if anonymous { ClientAuth::Optional } else { ClientAuth::Required };
        if anonymous {
            tracing::warn!(
                listen = %cfg.listen_management,
                "management_allow_anonymous = yes: the management port serves TLS clients without a certificate; \
                 anyone who reaches it reads every call's parties and addresses"
            );
        }
        let peers =
            PeerRole { role: Role::Management, accept_unmarked: dispatcher.config.tls.accept_unmarked_certificates };
        Some(TlsAcceptor::from(relaybox_tls::server_config(&files, auth, peers).context("management TLS")?))
    } else {
        tracing::warn!(
            listen = %cfg.listen_management,
            "management_use_tls = no: the management port is plain TCP without authentication; anyone who reaches \
             it reads every call's parties and addresses"
        );
        None
    };
    let listener =
        TcpListener::bind(cfg.listen_management).await.with_context(|| format!("binding {}", cfg.listen_management))?;
    let dispatcher = dispatcher.clone();
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = super::next_connection(&listener, "management").await;
            let dispatcher = dispatcher.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Some(acceptor) = acceptor else {
                    serve(&dispatcher, tcp, peer).await;
                    return;
                };
                let stream = match super::tls_accept(&acceptor, tcp).await {
                    Ok(s) => s,
                    Err(reason) => {
                        tracing::warn!(peer = %peer, "management connection refused: {reason}");
                        return;
                    }
                };
                if let Some(passport) = dispatcher.config.dispatcher.management_passport.as_ref() {
                    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                    let verdict = cert
                        .ok_or_else(|| "no client certificate".to_string())
                        .and_then(|c| relaybox_tls::peer_identity(&c).map_err(|e| e.to_string()))
                        .and_then(|id| relaybox_tls::check_passport(Some(passport), &id).map_err(|e| e.to_string()));
                    if let Err(reason) = verdict {
                        tracing::warn!(peer = %peer, "management connection refused: {reason}");
                        return;
                    }
                }
                serve(&dispatcher, stream, peer).await;
            });
        }
    }))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(dispatcher: &Dispatcher, mut stream: S, peer: SocketAddr) {
    let mut lines = LineDecoder::new(MAX_COMMAND_LINE);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        lines.push(&buf[..n]);
        while let Some(line) = lines.next_line() {
            let command = match line.map(|l| MgmtCommand::parse(&l)) {
                Ok(Ok(c)) => c,
                Ok(Err(e)) | Err(e) => {
                    tracing::info!(peer = %peer, "management: {e}");
                    if stream.write_all(MGMT_ERROR.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let reply = match command {
                MgmtCommand::Quit => {
                    let _ = stream.shutdown().await;
                    return;
                }
                MgmtCommand::Version => env!("CARGO_PKG_VERSION").to_string(),
                MgmtCommand::Summary => {
                    let list: Vec<Summary> = dispatcher.summaries().await;
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
                }
                MgmtCommand::Sessions => SessionStats::list_to_json(&dispatcher.all_sessions().await),
            };
            if stream.write_all(reply_line(&reply).as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
