//! HTTPS with the box's certificate (`web.crt`/`web.key` in `certs_path`,
//! else `relay.crt`/`relay.key`, else a self-signed one made on first start),
//! rustls with the ring provider; the accept loops, each with a connection
//! cap in total and per client address (`[Web] max_connections`,
//! `max_connections_per_ip`: idle connections from one address cannot lock
//! the others out) and handshake/header timeouts (`handshake_timeout`);
//! accept errors are logged and paused, never fatal; plain HTTP that only
//! redirects to HTTPS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use relaybox_config::WebConfig;
use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::app::ClientIp;

/// The caps and timeouts of one of the page's listeners, from `[Web]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: ConnectionLimits,
    /// For the TLS handshake, and for each request's header.
    pub handshake_timeout: Duration,
}

impl Limits {
    pub fn from_config(web: &WebConfig) -> Self {
        Limits {
            connections: ConnectionLimits {
                total: web.max_connections,
                per_source: web.max_connections_per_ip,
                total_setting: "[Web] max_connections",
                per_source_setting: "[Web] max_connections_per_ip",
            },
            handshake_timeout: web.handshake_timeout,
        }
    }
}

/// A rustls server configuration for the page from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: invalid PEM", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}: no usable private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the key does not match the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The page's certificate and key files, making a self-signed pair when the
/// box has none yet.
pub fn identity(certs: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    for stem in ["web", "relay"] {
        let (crt, key) = (certs.join(format!("{stem}.crt")), certs.join(format!("{stem}.key")));
        if crt.exists() && key.exists() {
            return Ok((crt, key));
        }
    }
    let made = self_signed(certs, &running_hostname())?;
    tracing::warn!(cert = %made.0.display(), "no certificate for the web page: made a self-signed one; upload the box's own");
    Ok(made)
}

/// The host name the kernel has (`relaybox` when it has none).
pub fn running_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if name.is_empty() || name == "(none)" {
        "relaybox".to_string()
    } else {
        name
    }
}

/// A self-signed certificate for the page, `web.crt` and `web.key` in
/// `certs`: subject CN and DNS names `hostname` (plus `relaybox` and
/// `localhost`), written as one unit.
pub fn self_signed(certs: &Path, hostname: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (crt, key) = (certs.join("web.crt"), certs.join("web.key"));
    std::fs::create_dir_all(certs).with_context(|| format!("creating {}", certs.display()))?;
    let mut names = vec![hostname.to_string()];
    for n in ["relaybox", "localhost"] {
        if !names.iter().any(|h| h == n) {
            names.push(n.to_string());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, hostname);
    let pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&pair)?;
    crate::files::replace_together(
        certs,
        &[("web.key", pair.serialize_pem().as_bytes(), 0o600), ("web.crt", cert.pem().as_bytes(), 0o644)],
    )?;
    Ok((crt, key))
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, as
/// browsers show it (`AB:CD:...`).
pub fn fingerprint(cert: &Path) -> anyhow::Result<String> {
    let der = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}", cert.display()))?
        .next()
        .with_context(|| format!("{}: no certificate", cert.display()))?
        .with_context(|| format!("{}: invalid PEM", cert.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

/// `relaybox web certificate`: the page's own certificate, made for this
/// host name when the box has none (first boot); one line per fact, for
/// the console.
pub fn ensure_certificate(certs: &Path) -> anyhow::Result<Vec<String>> {
    let _ = crate::files::finish_replace(certs);
    let crt = certs.join("web.crt");
    let mut lines = Vec::new();
    if !(crt.exists() && certs.join("web.key").exists()) {
        let name = running_hostname();
        self_signed(certs, &name)?;
        lines.push(format!("web page: made a self-signed certificate for {name} ({})", crt.display()));
    }
    lines.push(format!("web page certificate SHA-256 {}", fingerprint(&crt)?));
    Ok(lines)
}

/// The current TLS configuration, replaceable after an upload.
pub struct TlsHolder {
    certs: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsHolder {
    pub fn load(certs: &Path) -> anyhow::Result<Arc<Self>> {
        let (crt, key) = identity(certs)?;
        let config = tls_config(&crt, &key)?;
        Ok(Arc::new(TlsHolder { certs: certs.to_path_buf(), current: RwLock::new(config) }))
    }

    pub fn reload(&self) {
        match identity(&self.certs).and_then(|(c, k)| tls_config(&c, &k)) {
            Ok(config) => *self.current.write().unwrap_or_else(|e| e.into_inner()) = config,
            Err(e) => tracing::error!("web: keeping the old certificate: {e:#}"),
        }
    }

    fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves `router` over TLS on `listener` until the task is aborted.
pub async fn serve_https(listener: TcpListener, tls: Arc<TlsHolder>, router: Router, limits: Limits) {
    let gate = Gate::new("web page (HTTPS)", limits.connections);
    let mut errors = AcceptErrors::new("web page (HTTPS)");
    loop {
        let (tcp, peer, admission) = relaybox_limits::next_tcp(&listener, &gate, &mut errors).await;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let router = router.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, "web: TLS handshake: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientIp(peer.ip()));
                let mut router = router.clone();
                async move { router.call(req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `Host` without its port, when it is a plain host name or address.
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        &host[..host.find(']')? + 1]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let ok =
        !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c));
    ok.then_some(name)
}

/// The answer of the plain HTTP listener: a redirect to the same path over HTTPS.
pub fn redirect(req: &Request<Incoming>, https: SocketAddr) -> Response<Body> {
    let fallback = https.ip().to_string();
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).and_then(host_name).unwrap_or(&fallback);
    let port = if https.port() == 443 { String::new() } else { format!(":{}", https.port()) };
    let path = req.uri().path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/')).unwrap_or("/");
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(header::LOCATION, format!("https://{host}{port}{path}"))
        .body(Body::from("use HTTPS\n"))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub async fn serve_redirect(listener: TcpListener, https: SocketAddr, limits: Limits) {
    let gate = Gate::new("web page (HTTP)", limits.connections);
    let mut errors = AcceptErrors::new("web page (HTTP)");
    loop {
        let (tcp, _, admission) = relaybox_limits::next_tcp(&listener, &gate, &mut errors).await;
        tokio::spawn(async move {
            let _admission = admission;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(redirect(&req, https))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
