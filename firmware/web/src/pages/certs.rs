//! The certificates page: what is in `certs_path` (subject, issuer, expiry,
//! fingerprint, a warning under 30 days), uploads of the CA, the CRL, the
//! relay's certificate and key and the page's own, each checked with
//! relaybox-tls on a staged copy before it replaces anything (a certificate
//! and its key as one unit, [`crate::files::replace_together`]), and a key +
//! CSR made on the box for the operator's CA to sign.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;

use crate::app::State;
use crate::extract::Authed;
use crate::files::write_atomic;
use crate::html::page as frame;
use crate::html::{csrf_field, esc};
use crate::layout::html_page;

/// Largest PEM text accepted for one file.
const MAX_PEM: usize = 32 * 1024;
const WARN_DAYS: i64 = 30;
/// Files that may be downloaded (never a key).
const DOWNLOADABLE: &[&str] = &["ca.pem", "crl.pem", "relay.crt", "web.crt", "relay.csr"];
const CSR_KEY: &str = "relay-csr.key";

pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i64,
    pub fingerprint: String,
    pub is_ca: bool,
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Every certificate in a PEM text.
pub fn cert_infos(pem: &[u8]) -> Result<Vec<CertInfo>, String> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e:?}"))?;
    if ders.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    ders.iter()
        .map(|der| {
            let (_, x) =
                x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
            Ok(CertInfo {
                subject: x.subject().to_string(),
                issuer: x.issuer().to_string(),
                not_after: x.validity().not_after.to_string(),
                days_left: (x.validity().not_after.timestamp() - now_unix()).div_euclid(86400),
                fingerprint: fingerprint(der),
                is_ca: x.is_ca(),
            })
        })
        .collect()
}

fn crl_info(pem: &[u8]) -> Result<String, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e:?}"))?;
    let Some(crl) = crls.first() else { return Err("no X509 CRL block found".into()) };
    let (_, parsed) = x509_parser::parse_x509_crl(crl).map_err(|e| format!("not an X.509 CRL: {e}"))?;
    let next = parsed.next_update().map(|t| t.to_string()).unwrap_or_else(|| "none".into());
    Ok(format!(
        "issuer {}; {} revoked; next update {}",
        parsed.issuer(),
        parsed.iter_revoked_certificates().count(),
        next
    ))
}

fn describe(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Ok(bytes) = std::fs::read(path) else {
        return format!(r#"<tr><td class="mono">{}</td><td colspan="4">not present</td></tr>"#, esc(&name));
    };
    if name.ends_with(".pem") && name.starts_with("crl") {
        let text = crl_info(&bytes).unwrap_or_else(|e| format!("unreadable: {e}"));
        return format!(r#"<tr><td class="mono">{}</td><td colspan="4">{}</td></tr>"#, esc(&name), esc(&text));
    }
    match cert_infos(&bytes) {
        Ok(infos) => infos
            .iter()
            .map(|i| {
                let warn = if i.days_left < 0 {
                    r#" <span class="pill down">expired</span>"#.to_string()
                } else if i.days_left < WARN_DAYS {
                    format!(r#" <span class="pill down expiry-warning">expires in {} days</span>"#, i.days_left)
                } else {
                    String::new()
                };
                format!(
                    r#"<tr><td class="mono">{}</td><td>{}{}</td><td>{}</td><td>{} ({} days){warn}</td><td class="mono">{}</td></tr>"#,
                    esc(&name),
                    esc(&i.subject),
                    if i.is_ca { " <span class=\"pill\">CA</span>" } else { "" },
                    esc(&i.issuer),
                    esc(&i.not_after),
                    i.days_left,
                    esc(&i.fingerprint)
                )
            })
            .collect(),
        Err(e) => format!(r#"<tr><td class="mono">{}</td><td colspan="4" class="err">{}</td></tr>"#, esc(&name), esc(&e)),
    }
}

fn certs_page(state: &State, auth: &Authed, message: &str, csr: Option<&str>) -> String {
    let dir = state.certs_path();
    let rows: String = ["ca.pem", "crl.pem", "relay.crt", "web.crt"].iter().map(|n| describe(&dir.join(n))).collect();
    let csr_section = match csr.map(str::to_string).or_else(|| std::fs::read_to_string(dir.join("relay.csr")).ok()) {
        Some(text) if dir.join(CSR_KEY).exists() => format!(
            r#"<section><h2>Pending request</h2><p>Sign this request with the operator's CA (<span class="mono">relaybox-ca sign --csr relay.csr</span> gives it the relay role, which the dispatcher requires), then upload the certificate as "relay certificate" with the key left empty: the key made on the box is used. <a href="/certs/file/relay.csr">Download relay.csr</a></p><pre class="mono" id="csr">{}</pre></section>"#,
            esc(&text)
        ),
        _ => String::new(),
    };
    let csrf = csrf_field(&auth.csrf);
    let body = format!(
        r#"{message}<section><h2>Installed</h2><p class="help">Directory <span class="mono">{dir}</span>. A warning shows when a certificate expires within {WARN_DAYS} days.</p>
<table id="certs"><tr><th>File</th><th>Subject</th><th>Issuer</th><th>Expires</th><th>SHA-256 fingerprint</th></tr>{rows}</table></section>
<section><h2>Upload</h2><form method="post" action="/certs/upload">{csrf}
<label for="kind">What</label><select id="kind" name="kind"><option value="relay">Relay certificate and key (relay.crt, relay.key)</option><option value="ca">CA certificate (ca.pem)</option><option value="crl">Revocation list (crl.pem)</option><option value="web">This page's certificate and key (web.crt, web.key)</option></select>
<label for="pem">Certificate or CRL (PEM)</label><input type="file" accept=".pem,.crt" data-into="pem"><textarea id="pem" name="pem"></textarea>
<label for="key">Private key (PEM; relay and web only)</label><input type="file" accept=".pem,.key" data-into="key"><textarea id="key" name="key"></textarea>
<p class="help">Each file is checked (it parses, the key matches the certificate, the relay certificate is signed by the CA, the CRL belongs to the CA) before anything is replaced. At most {max} KiB per file. Apply the relay settings afterwards so the relay reloads them.</p>
<button type="submit">Upload</button></form></section>
<section><h2>Make a key and request on the box</h2><form method="post" action="/certs/csr">{csrf}
<label for="cn">Common name (CN)</label><input type="text" id="cn" name="cn" placeholder="edge-relay">
<label for="o">Organisation (O)</label><input type="text" id="o" name="o" placeholder="Example Ltd">
<p class="help">The private key stays on the box; the request is signed by the operator's CA.</p>
<button type="submit">Make key and CSR</button></form></section>{csr_section}"#,
        dir = esc(&dir.display().to_string()),
        max = MAX_PEM / 1024,
    );
    frame("Certificates", "/certs", Some(&auth.csrf), &body)
}

pub async fn page(AxState(state): AxState<State>, auth: Authed) -> Response {
    html_page(certs_page(&state, &auth, "", None))
}

#[derive(Deserialize)]
pub struct Upload {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    pem: String,
    #[serde(default)]
    key: String,
}

/// A scratch copy of `certs_path` to check a change on; removed on drop.
struct Stage(PathBuf);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stage(dir: &Path) -> std::io::Result<Stage> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".stage-{}", crate::auth::random_hex(8)));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    let stage = Stage(path);
    for name in ["ca.pem", "crl.pem", "relay.crt", "relay.key"] {
        if dir.join(name).exists() {
            std::fs::copy(dir.join(name), stage.0.join(name))?;
        }
    }
    Ok(stage)
}

/// Checks the change and returns the files to write: (name, contents, mode).
/// Files to write: (name, contents, mode).
type Writes = Vec<(&'static str, Vec<u8>, u32)>;

fn check_upload(dir: &Path, u: &Upload) -> Result<Writes, String> {
    if u.pem.len() > MAX_PEM || u.key.len() > MAX_PEM {
        return Err(format!("a file is larger than {} KiB", MAX_PEM / 1024));
    }
    let pem = u.pem.trim().as_bytes().to_vec();
    if pem.is_empty() {
        return Err("paste or choose the PEM file".into());
    }
    let mut key = u.key.trim().as_bytes().to_vec();
    let mut writes: Writes = Vec::new();
    match u.kind.as_str() {
        "ca" => {
            let infos = cert_infos(&pem)?;
            if !infos.iter().any(|i| i.is_ca) {
                return Err("this is not a CA certificate (basicConstraints CA:TRUE missing)".into());
            }
            writes.push(("ca.pem", pem, 0o644));
        }
        "crl" => {
            crl_info(&pem)?;
            writes.push(("crl.pem", pem, 0o644));
        }
        "relay" | "web" => {
            cert_infos(&pem)?;
            let mut from_csr = false;
            if key.is_empty() && u.kind == "relay" {
                key = std::fs::read(dir.join(CSR_KEY)).map_err(|_| "paste the private key".to_string())?;
                from_csr = true;
            }
            if key.is_empty() {
                return Err("paste the private key".into());
            }
            let (crt, key_name) = if u.kind == "relay" { ("relay.crt", "relay.key") } else { ("web.crt", "web.key") };
            writes.push((crt, pem, 0o644));
            writes.push((key_name, key, 0o600));
            let _ = from_csr;
        }
        _ => return Err("choose what the file is".into()),
    }
    for (_, contents, _) in &writes {
        if contents.len() > MAX_PEM {
            return Err(format!("a file is larger than {} KiB", MAX_PEM / 1024));
        }
    }
    // Check on a staged copy with the code the daemons use.
    let stage = stage(dir).map_err(|e| format!("cannot stage the files: {e}"))?;
    for (name, contents, mode) in &writes {
        write_atomic(&stage.0.join(name), contents, *mode).map_err(|e| format!("cannot stage {name}: {e}"))?;
    }
    if u.kind == "web" {
        crate::server::tls_config(&stage.0.join("web.crt"), &stage.0.join("web.key")).map_err(|e| e.to_string())?;
    } else if stage.0.join("relay.crt").exists()
        && stage.0.join("relay.key").exists()
        && stage.0.join("ca.pem").exists()
    {
        // As the relay loads them: a certificate of another role than a
        // relay's (a dispatcher's, say) is refused here.
        let files = relaybox_tls::TlsFiles::for_role(&stage.0, relaybox_tls::Role::Relay);
        let shown = |e: relaybox_tls::TlsError| e.to_string().replace(&stage.0.display().to_string(), "certs");
        relaybox_tls::client_config(&files, relaybox_tls::PeerRole::strict(relaybox_tls::Role::Dispatcher))
            .map_err(shown)?;
        // The relay's certificate must chain to the CA as the dispatcher
        // checks it (a new CRL is exempt: it may revoke a certificate on
        // its way out).
        if u.kind != "crl" {
            relaybox_tls::check_own_certificate(&files, relaybox_tls::Role::Relay).map_err(shown)?;
        }
    } else if u.kind == "relay" {
        return Err("upload the CA certificate (ca.pem) first".into());
    }
    Ok(writes)
}

pub async fn upload(AxState(state): AxState<State>, auth: Authed, Form(u): Form<Upload>) -> Response {
    if let Err(r) = auth.check(&u.csrf) {
        return *r;
    }
    let dir = state.certs_path();
    let writes = match check_upload(&dir, &u) {
        Ok(w) => w,
        Err(e) => {
            let m = format!(r#"<p class="bad" id="flash">Nothing was replaced: {}</p>"#, esc(&e));
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::response::Html(certs_page(&state, &auth, &m, None)))
                .into_response();
        }
    };
    // A certificate and its key go in as one unit: after a power cut the
    // box has both old or both new (init finishes an interrupted one).
    let files: Vec<(&str, &[u8], u32)> = writes.iter().map(|(n, c, m)| (*n, c.as_slice(), *m)).collect();
    if let Err(e) = crate::files::replace_together(&dir, &files) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("writing the files: {e}\n")).into_response();
    }
    if u.kind == "relay" && u.key.trim().is_empty() {
        let _ = std::fs::remove_file(dir.join(CSR_KEY));
    }
    tracing::info!(kind = %u.kind, "web: certificate files replaced");
    (state.reload_tls)();
    Redirect::to("/certs").into_response()
}

#[derive(Deserialize)]
pub struct CsrForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    cn: String,
    #[serde(default)]
    o: String,
}

fn make_csr(cn: &str, o: &str) -> Result<(String, String), String> {
    let cn = cn.trim();
    if cn.is_empty() || cn.len() > 64 || cn.contains(['\n', '\r', ',']) {
        return Err("the common name must be 1 to 64 characters, without commas".into());
    }
    let o = o.trim();
    if o.len() > 64 || o.contains(['\n', '\r', ',']) {
        return Err("the organisation must be at most 64 characters, without commas".into());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = rcgen::DistinguishedName::new();
    if !o.is_empty() {
        dn.push(rcgen::DnType::OrganizationName, o);
    }
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((csr.pem().map_err(|e| e.to_string())?, key.serialize_pem()))
}

pub async fn csr(AxState(state): AxState<State>, auth: Authed, Form(f): Form<CsrForm>) -> Response {
    if let Err(r) = auth.check(&f.csrf) {
        return *r;
    }
    let dir = state.certs_path();
    let result = make_csr(&f.cn, &f.o).and_then(|(csr, key)| {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        write_atomic(&dir.join(CSR_KEY), key.as_bytes(), 0o600).map_err(|e| e.to_string())?;
        write_atomic(&dir.join("relay.csr"), csr.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        Ok(csr)
    });
    match result {
        Ok(csr) => {
            html_page(certs_page(&state, &auth, r#"<p class="ok" id="flash">Key and request made.</p>"#, Some(&csr)))
        }
        Err(e) => {
            let m = format!(r#"<p class="bad" id="flash">{}</p>"#, esc(&e));
            (StatusCode::UNPROCESSABLE_ENTITY, axum::response::Html(certs_page(&state, &auth, &m, None)))
                .into_response()
        }
    }
}

/// Downloads one of a fixed list of public files; any other name, and any
/// path, is refused.
pub async fn file(AxState(state): AxState<State>, _auth: Authed, UrlPath(name): UrlPath<String>) -> Response {
    let Some(name) = DOWNLOADABLE.iter().find(|n| **n == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    match std::fs::read(state.certs_path().join(name)) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}
