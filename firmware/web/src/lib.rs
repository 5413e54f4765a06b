//! relaybox-web owns the box's configuration page (`relaybox web`): HTTPS
//! with the box's certificate (plain HTTP only redirects), a login with an
//! argon2 password hash (no default password), sessions, CSRF tokens, a
//! per-address limit on password guesses (counted before they are checked)
//! and a fixed number of argon2 check threads behind a bounded queue; the `[Relay]` settings form, validated by
//! `relaybox-config` on the would-be file, saved atomically with a
//! one-click rollback and applied by SIGHUP (graceful halt; the box's init
//! restarts the relay); certificates (checked with `relaybox-tls` before
//! anything is replaced, CSRs made on the box); live status and Prometheus
//! metrics read from the relay's control socket; the network interfaces
//! and the box's boot-time network, host name and NTP settings (shell
//! files init reads, written only with values `relaybox-config` parsed);
//! a Reboot button; firmware updates (the Update page: a signed bundle
//! uploaded, checked and written into the other slot by `relaybox-update`,
//! both slots' versions, a failed update also on the Status page). It does not parse wire formats beyond the statistics JSON of
//! `relaybox-proto`, make session decisions, or talk to dispatchers.

#![forbid(unsafe_code)]

mod app;
pub mod auth;
pub mod backup;
mod conf_form;
pub mod control;
mod extract;
pub mod files;
mod firmware;
mod html;
pub mod ini_edit;
mod layout;
mod pages;
mod router;
mod server;

pub use pages::metrics;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use relaybox_config::Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth::{password_path, set_password, PASSWORD_FILE};
pub use server::{ensure_certificate, fingerprint};

/// A running page; stops when dropped.
pub struct Server {
    pub https_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    if path.exists() {
        Ok(Config::load(path)?)
    } else {
        let base = auth::config_dir(path);
        Ok(Config::parse("", &path.display().to_string(), &base)?)
    }
}

/// Binds the `[Web]` addresses of the file at `config_path` and serves the
/// page in the background.
pub async fn start(config_path: &Path) -> anyhow::Result<Server> {
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let config = load_config(&config_path).with_context(|| format!("loading {}", config_path.display()))?;
    let web = config.web.clone();
    // A certificate replacement a crash interrupted is finished first.
    if let Ok(done) = files::finish_replace(&config.tls.certs_path) {
        if !done.is_empty() {
            tracing::warn!(files = ?done, "web: finished a certificate replacement that was interrupted");
        }
    }
    let tls = server::TlsHolder::load(&config.tls.certs_path).context("the web page's certificate")?;
    let https = TcpListener::bind(web.listen).await.with_context(|| format!("binding HTTPS {}", web.listen))?;
    let https_addr = https.local_addr()?;
    let reload = tls.clone();
    let login_stats = Arc::new(auth::LoginStats::new());
    let checker = auth::Checker::start(web.max_parallel_logins, web.login_queue, login_stats.clone())
        .context("starting the password check threads")?;
    let state = Arc::new(app::App {
        config_dir: auth::config_dir(&config_path),
        config_path: config_path.clone(),
        sessions: auth::Sessions::new(web.session_timeout),
        limiter: auth::Limiter::new(web.login_attempts, web.lockout),
        checker,
        login_stats,
        history: Mutex::new(VecDeque::new()),
        reload_tls: Box::new(move || reload.reload()),
        update_job: Mutex::new(firmware::Job::default()),
        web: web.clone(),
        startup: config,
    });
    if auth::stored_hash(&config_path).is_none() {
        tracing::warn!("web: no password is set; run `relaybox --config {} web set-password`", config_path.display());
    }
    let limits = server::Limits::from_config(&web);
    let mut tasks = vec![tokio::spawn(server::serve_https(https, tls, router::router(state.clone()), limits))];
    tasks.push(tokio::spawn(pages::status::sample_forever(state)));
    let mut http_addr = None;
    if let Some(addr) = web.http_listen {
        let http = TcpListener::bind(addr).await.with_context(|| format!("binding HTTP {addr}"))?;
        http_addr = Some(http.local_addr()?);
        tasks.push(tokio::spawn(server::serve_redirect(http, https_addr, limits)));
    }
    tracing::info!(https = %https_addr, http = ?http_addr, "web page ready");
    Ok(Server { https_addr, http_addr, tasks })
}

/// `relaybox web`: serves until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let _server = start(&config_path).await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("web page stopping");
    Ok(())
}
