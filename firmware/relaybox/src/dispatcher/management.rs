//! The management port: `summary`, `sessions`, `version`, `quit`. TLS by
//! default (`management_use_tls`) with a management client certificate
//! required (unless `management_allow_anonymous`), optionally restricted by
//! `management_passport`; one line per command, one line back.
//!
//! Management never delays call set-up: connections are capped (in total
//! and per address), a connection's next command is read only after the
//! answer to the previous one is written, a client that stays silent or
//! does not read its answer for `management_idle_timeout` is closed, and
//! `summary`/`sessions` do not go to the relays once per command: every
//! client waiting gets the next refresh, and refreshes are at least
//! `management_refresh_interval` apart (see [`Refresher`]). One `sessions`
//! answer is then shared by every client that asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate};
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::mgmt::{MgmtCommand, MGMT_ERROR};
use relaybox_proto::Summary;
use relaybox_tls::{ClientAuth, PeerRole, Role, TlsFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
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
    let gate = Gate::new(
        "management port",
        ConnectionLimits {
            total: cfg.max_management_connections,
            per_source: cfg.max_management_connections_per_ip,
            total_setting: "[Dispatcher] max_management_connections",
            per_source_setting: "[Dispatcher] max_management_connections_per_ip",
        },
    );
    let views = Arc::new(Views {
        summary: Refresher::new(cfg.management_refresh_interval),
        sessions: Refresher::new(cfg.management_refresh_interval),
    });
    dispatcher.metrics.watch(&gate);
    let dispatcher = dispatcher.clone();
    Ok(tokio::spawn(async move {
        let mut errors = AcceptErrors::new("management port");
        loop {
            let (tcp, peer, admission) = relaybox_limits::next_tcp(&listener, &gate, &mut errors).await;
            let dispatcher = dispatcher.clone();
            let acceptor = acceptor.clone();
            let views = views.clone();
            tokio::spawn(async move {
                let _admission = admission;
                let Some(acceptor) = acceptor else {
                    serve(&dispatcher, &views, tcp, peer).await;
                    return;
                };
                let timeout = dispatcher.config.dispatcher.handshake_timeout;
                let stream = match super::tls_accept(&acceptor, tcp, timeout).await {
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
                serve(&dispatcher, &views, stream, peer).await;
            });
        }
    }))
}

/// What the relays said last, for `summary` and for `sessions`.
struct Views {
    summary: Refresher,
    sessions: Refresher,
}

#[derive(Clone, Copy)]
enum View {
    Summary,
    Sessions,
}

/// One management answer made from the relays' answers. A client gets an
/// answer made after it asked (never an older one), but the relays are
/// asked by one client at a time and at most once per `interval`: clients
/// that ask while a refresh runs, or in the interval after it, wait for the
/// next one and all get it. N clients pipelining `sessions` therefore cost
/// the relay links one `sessions` per interval, not N per round trip.
struct Refresher {
    interval: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Arc<str>)>>,
}

impl Refresher {
    fn new(interval: Duration) -> Self {
        Refresher { interval, last: tokio::sync::Mutex::new(None) }
    }

    async fn get(&self, dispatcher: &Dispatcher, view: View) -> Arc<str> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, answer)) = last.as_ref() {
            if *started >= asked {
                return answer.clone();
            }
            tokio::time::sleep_until(*started + self.interval).await;
        }
        let started = Instant::now();
        let answer: Arc<str> = match view {
            View::Summary => {
                let list: Vec<Summary> = dispatcher.summaries().await;
                serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()).into()
            }
            View::Sessions => dispatcher.all_sessions_json().await.into(),
        };
        *last = Some((started, answer.clone()));
        answer
    }
}

/// Why a management connection ends early.
enum Stop {
    Idle,
    Gone,
}

/// Reads `buf` within the idle timeout.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8], idle: Duration) -> Result<usize, Stop> {
    match tokio::time::timeout(idle, stream.read(buf)).await {
        Err(_) => Err(Stop::Idle),
        Ok(Ok(0)) | Ok(Err(_)) => Err(Stop::Gone),
        Ok(Ok(n)) => Ok(n),
    }
}

/// Writes every part within the idle timeout: a client that does not read
/// its answer does not keep it (and its place) for ever.
async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, parts: &[&[u8]], idle: Duration) -> Result<(), Stop> {
    let write = async {
        for part in parts {
            stream.write_all(part).await?;
        }
        stream.flush().await
    };
    match tokio::time::timeout(idle, write).await {
        Err(_) => Err(Stop::Idle),
        Ok(Err(_)) => Err(Stop::Gone),
        Ok(Ok(())) => Ok(()),
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    dispatcher: &Dispatcher,
    views: &Views,
    mut stream: S,
    peer: SocketAddr,
) {
    let idle = dispatcher.config.dispatcher.management_idle_timeout;
    match commands(dispatcher, views, &mut stream, peer, idle).await {
        Err(Stop::Idle) => tracing::info!(
            peer = %peer,
            "management connection closed: idle for {} s ([Dispatcher] management_idle_timeout)",
            idle.as_secs()
        ),
        Err(Stop::Gone) | Ok(()) => {}
    }
}

/// One command at a time: the next line is looked at only after the
/// previous answer is written.
async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
    dispatcher: &Dispatcher,
    views: &Views,
    stream: &mut S,
    peer: SocketAddr,
    idle: Duration,
) -> Result<(), Stop> {
    let mut lines = LineDecoder::new(MAX_COMMAND_LINE);
    let mut buf = [0u8; 4096];
    loop {
        let n = read_some(stream, &mut buf, idle).await?;
        lines.push(&buf[..n]);
        while let Some(line) = lines.next_line() {
            let command = match line.map(|l| MgmtCommand::parse(&l)) {
                Ok(Ok(c)) => c,
                Ok(Err(e)) | Err(e) => {
                    tracing::info!(peer = %peer, "management: {e}");
                    write_all(stream, &[MGMT_ERROR.as_bytes()], idle).await?;
                    continue;
                }
            };
            let answer: Arc<str> = match command {
                MgmtCommand::Quit => {
                    let _ = tokio::time::timeout(idle, stream.shutdown()).await;
                    return Ok(());
                }
                MgmtCommand::Version => env!("CARGO_PKG_VERSION").into(),
                MgmtCommand::Summary => views.summary.get(dispatcher, View::Summary).await,
                MgmtCommand::Sessions => views.sessions.get(dispatcher, View::Sessions).await,
            };
            write_all(stream, &[answer.as_bytes(), b"\r\n"], idle).await?;
        }
    }
}
