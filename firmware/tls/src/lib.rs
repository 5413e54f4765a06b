//! relaybox-tls owns the TLS side of the relay <-> dispatcher link and the management port (SPEC
//! section 2): it reads a MediaProxy-style `certs_path` (`ca.pem`, optional `crl.pem`, the role's
//! certificate and key), builds rustls configurations with the *ring* provider only (never
//! aws-lc-rs: the firmware is cross-compiled for musl/aarch64), verifies that every peer chains to
//! the CA and is not on the CRL (and checks our own certificate with the verifier the other side
//! uses, so a certificate it would refuse is caught before it is installed), deliberately ignores the server *name* (MediaProxy identifies peers
//! by passport and relays connect by IP), accepts only peers whose certificate carries the role the
//! endpoint serves (relay, dispatcher, management client: the role marks in [`role`], which
//! `relaybox-ca` writes), extracts a peer's identity (subject, serial, fingerprint), checks it
//! against a [`Passport`], and turns handshake failures into short reasons for the log.
//! It owns no sockets and no protocol: the daemons wrap their own streams with tokio-rustls.
//! Making certificates is `relaybox-ca`'s job, not this crate's.

#![forbid(unsafe_code)]

pub mod role;

pub use role::{certificate_marker, Marker, PeerRole, Role, RoleError};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use relaybox_config::{Passport, SubjectAttr};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};

/// The files one daemon needs for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that peers must chain to (PEM, one or more).
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM, one or more), when there are any.
    pub crl: Option<PathBuf>,
    /// Our certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Our private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Our role: a certificate marked with another role is refused at start.
    pub role: Role,
}

impl TlsFiles {
    /// MediaProxy's layout: `ca.pem`, `crl.pem` (only when the file exists), and
    /// `relay.crt`/`relay.key` or `dispatcher.crt`/`dispatcher.key` (relaybox adds
    /// `management.crt`/`management.key` for management clients).
    pub fn for_role(certs_path: &Path, role: Role) -> Self {
        let crl = certs_path.join("crl.pem");
        TlsFiles {
            ca: certs_path.join("ca.pem"),
            crl: crl.exists().then_some(crl),
            cert: certs_path.join(format!("{}.crt", role.file_stem())),
            key: certs_path.join(format!("{}.key", role.file_stem())),
            role,
        }
    }

    /// The role marked in our own certificate (`Unmarked` for one made by another CA).
    pub fn own_marker(&self) -> Result<Marker, TlsError> {
        let chain = load_certs(&self.cert)?;
        certificate_marker(chain[0].as_ref())
            .map_err(|e| TlsError::Pem { path: self.cert.clone(), reason: e.to_string() })
    }
}

/// Whether a TLS server insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Refuse clients without a valid certificate (the relay link).
    Required,
    /// Verify a certificate when one is sent, accept clients without one (management port
    /// deployments that rely on the network instead).
    Optional,
}

/// Why TLS could not be set up or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(String),
    #[error("peer certificate does not satisfy the passport: {0}")]
    Passport(String),
    #[error("cannot parse peer certificate: {0}")]
    Parse(String),
    #[error("{}: {reason}", path.display())]
    WrongRole { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Untrusted { path: PathBuf, reason: String },
}

/// The only crypto provider relaybox uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server configuration: presents `files.cert`, and verifies client certificates against
/// `files.ca` and `files.crl`, then their role against `peer` (a client certificate of another
/// role, or an unmarked one unless `peer.accept_unmarked`, fails the handshake).
///
/// A CRL is applied to the certificates of the CA that signed it; a certificate whose issuer has
/// no CRL in `files.crl` is accepted, as MediaProxy (GnuTLS) does. Expired CRLs are still used.
pub fn server_config(
    files: &TlsFiles,
    client_auth: ClientAuth,
    peer: PeerRole,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = load_roots(&files.ca)?;
    let crls = load_crls(files.crl.as_deref())?;
    check_crl_issuers(&files.ca, files.crl.as_deref(), &crls)?;
    let (crls, v1) = split_v1_crls(&files.ca, files.crl.as_deref(), crls)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .allow_unknown_revocation_status();
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| verifier_error(files, e))?;
    let (chain, key) = load_identity(files)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(RoleClientVerifier { inner, peer, v1: Arc::new(v1) }))
        .with_single_cert(chain, key)
        .map_err(|e| identity_error(files, e))?;
    Ok(Arc::new(config))
}

/// A TLS client configuration: presents `files.cert`, verifies the server's chain against
/// `files.ca` and `files.crl` and its role against `peer`, but accepts any server name (peers are
/// identified by passport).
pub fn client_config(files: &TlsFiles, peer: PeerRole) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = server_verifier(files, peer)?;
    let (chain, key) = load_identity(files)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| identity_error(files, e))?;
    Ok(Arc::new(config))
}

/// [`client_config`] without a client certificate (`files.cert` and `files.key` are not read): for
/// a management client of a port that serves anonymous clients.
pub fn anonymous_client_config(files: &TlsFiles, peer: PeerRole) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = server_verifier(files, peer)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn server_verifier(files: &TlsFiles, peer: PeerRole) -> Result<Arc<AnyNameServerVerifier>, TlsError> {
    let roots = load_roots(&files.ca)?;
    let crls = load_crls(files.crl.as_deref())?;
    check_crl_issuers(&files.ca, files.crl.as_deref(), &crls)?;
    let (crls, v1) = split_v1_crls(&files.ca, files.crl.as_deref(), crls)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| verifier_error(files, e))?;
    Ok(Arc::new(AnyNameServerVerifier { inner, peer, v1: Arc::new(v1) }))
}

/// Checks that our own certificate (`files.cert`) is one the other side of the link accepts, with
/// the verifier that side builds from the same `ca.pem` and `crl.pem`: a relay's certificate as the
/// dispatcher checks a client, a dispatcher's as a relay checks a server. So it must chain to a CA
/// in `files.ca` (signatures included), must not be revoked and must have its role's key usage.
/// Validity dates are left to the handshake (a box may not know the time yet): the chain is
/// checked at the current time when the certificate is valid then, else in the middle of its
/// validity.
pub fn check_own_certificate(files: &TlsFiles, role: Role) -> Result<(), TlsError> {
    let roots = load_roots(&files.ca)?;
    let crls = load_crls(files.crl.as_deref())?;
    check_crl_issuers(&files.ca, files.crl.as_deref(), &crls)?;
    let (crls, v1) = split_v1_crls(&files.ca, files.crl.as_deref(), crls)?;
    let chain = load_certs(&files.cert)?;
    let (end_entity, intermediates) =
        chain.split_first().ok_or_else(|| TlsError::NoCertificate { path: files.cert.clone() })?;
    let at = check_time(end_entity);
    // Another role is refused as the other side refuses it; an unmarked certificate (another
    // CA's, during a migration) is left to that side's `accept_unmarked_certificates`.
    let peer = PeerRole { role, accept_unmarked: true };
    let result = if role.is_server() {
        let name = ServerName::try_from("relaybox").expect("a valid DNS name");
        server_verifier(files, peer)?.verify_server_cert(end_entity, intermediates, &name, &[], at).map(|_| ())
    } else {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| verifier_error(files, e))?;
        RoleClientVerifier { inner, peer, v1: Arc::new(v1) }
            .verify_client_cert(end_entity, intermediates, at)
            .map(|_| ())
    };
    result.map_err(|e| {
        let ca = files.ca.file_name().map_or_else(|| files.ca.display().to_string(), |n| n.to_string_lossy().into());
        let reason = match &e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                format!("is not signed by a CA in {ca}: the other side of the link would refuse it")
            }
            rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                "is revoked by the CRL: the other side of the link would refuse it".to_string()
            }
            other => format!("the other side of the link would refuse it: {}", describe_rustls_error(other)),
        };
        TlsError::Untrusted { path: files.cert.clone(), reason }
    })
}

/// Now, when `cert` is valid now; else the middle of its validity.
fn check_time(cert: &CertificateDer<'_>) -> UnixTime {
    let now = UnixTime::now();
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else { return now };
    let (from, to) = (x509.validity().not_before.timestamp(), x509.validity().not_after.timestamp());
    let secs = now.as_secs() as i64;
    if (from..=to).contains(&secs) || from > to {
        return now;
    }
    UnixTime::since_unix_epoch(std::time::Duration::from_secs((from / 2 + to / 2).max(0) as u64))
}

/// A refused role as a rustls error (the peer gets a `certificate_unknown` alert; our log gets
/// the reason through [`describe_rustls_error`]).
fn role_refusal(e: RoleError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// A certificate refused for its TLS purpose (a dispatcher's serverAuth-only certificate offered
/// by a client, a relay's clientAuth-only one by a server) is of the wrong role: say which.
fn purpose_error(e: rustls::Error, peer: PeerRole, end_entity: &CertificateDer<'_>) -> rustls::Error {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => match peer.check(end_entity.as_ref()) {
            Err(role) => role_refusal(role),
            Ok(_) => e,
        },
        e => e,
    }
}

/// webpki client verification, then the version 1 CRLs and the role check.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    peer: PeerRole,
    /// Revocations from version 1 CRLs, which webpki cannot read.
    v1: Arc<V1Revocations>,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => {
                self.v1.check(end_entity, intermediates)?;
                self.peer.check(end_entity.as_ref()).map_err(role_refusal)?;
                Ok(verified)
            }
            Err(e) => Err(purpose_error(e, self.peer, end_entity)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki server verification minus the name check, then the role check. webpki checks the chain,
/// validity, EKU and revocation first and the name last, so a name error means everything else was
/// fine.
#[derive(Debug)]
struct AnyNameServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    peer: PeerRole,
    /// Revocations from version 1 CRLs, which webpki cannot read.
    v1: Arc<V1Revocations>,
}

impl ServerCertVerifier for AnyNameServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(purpose_error(e, self.peer, end_entity)),
        }
        self.v1.check(end_entity, intermediates)?;
        self.peer.check(end_entity.as_ref()).map_err(role_refusal)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// What version 1 CRLs revoke: (issuer name as DER, serial as DER content)
/// pairs. X.509 v1 CRLs (no version field, no extensions; MediaProxy ships
/// one as its sample `crl.pem`) are refused by webpki's parser, so relaybox
/// reads them with x509-parser, checks their signature against the CA that
/// issued them, and applies them after webpki's verification.
#[derive(Debug, Default)]
struct V1Revocations {
    revoked: std::collections::HashSet<(Vec<u8>, Vec<u8>)>,
}

impl V1Revocations {
    /// `Err(Revoked)` when a certificate of the presented chain is listed.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if self.revoked.is_empty() {
            return Ok(());
        }
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let (_, x509) = x509_parser::parse_x509_certificate(cert)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let key = (x509.issuer().as_raw().to_vec(), x509.raw_serial().to_vec());
            if self.revoked.contains(&key) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(())
    }
}

/// Separates version 1 CRLs (see [`V1Revocations`]) from the others, which
/// go to webpki. A v1 CRL whose signature does not verify with the key of
/// its issuer in `ca.pem` is an error naming the file.
fn split_v1_crls(
    ca_path: &Path,
    crl_path: Option<&Path>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, V1Revocations), TlsError> {
    let Some(crl_path) = crl_path else { return Ok((crls, V1Revocations::default())) };
    let bad = |reason: String| TlsError::Pem { path: crl_path.to_path_buf(), reason };
    let ca_bytes = read(ca_path)?;
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_bytes).flatten().collect();
    let mut webpki = Vec::new();
    let mut v1 = V1Revocations::default();
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(&crl).map_err(|e| bad(format!("not an X.509 CRL: {e}")))?;
        if parsed.version().is_some_and(|v| v.0 != 0) {
            webpki.push(crl);
            continue;
        }
        let issuer = cas
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, x)| x))
            .find(|ca| ca.subject().as_raw() == parsed.issuer().as_raw())
            .ok_or_else(|| {
                bad(format!("CRL issued by \"{}\", which is not a CA in {}", parsed.issuer(), ca_path.display()))
            })?;
        parsed
            .verify_signature(issuer.public_key())
            .map_err(|e| bad(format!("version 1 CRL whose signature does not verify with its CA's key: {e}")))?;
        for revoked in parsed.iter_revoked_certificates() {
            v1.revoked.insert((parsed.issuer().as_raw().to_vec(), revoked.raw_serial().to_vec()));
        }
    }
    Ok((webpki, v1))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem { path: path.to_path_buf(), reason: format!("invalid PEM: {e:?}") }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("unusable as a trust anchor: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn load_crls(path: Option<&Path>) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let bytes = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if crls.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no \"X509 CRL\" PEM block found".into() });
    }
    Ok(crls)
}

/// A CRL applies only to certificates of its issuer, and revocation status is allowed to be
/// unknown (see [`server_config`]); so a CRL from a CA that is not in `ca.pem` would silently
/// protect nothing. Refuse that configuration, naming the CRL file.
fn check_crl_issuers(
    ca_path: &Path,
    crl_path: Option<&Path>,
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<(), TlsError> {
    let Some(crl_path) = crl_path else { return Ok(()) };
    let ca_bytes = read(ca_path)?;
    let mut subjects = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&ca_bytes).flatten() {
        if let Ok((_, x509)) = x509_parser::parse_x509_certificate(&cert) {
            subjects.push(x509.subject().as_raw().to_vec());
        }
    }
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| TlsError::Pem { path: crl_path.to_path_buf(), reason: format!("not an X.509 CRL: {e}") })?;
        if !subjects.iter().any(|s| s.as_slice() == parsed.issuer().as_raw()) {
            return Err(TlsError::Pem {
                path: crl_path.to_path_buf(),
                reason: format!("CRL issued by \"{}\", which is not a CA in {}", parsed.issuer(), ca_path.display()),
            });
        }
    }
    Ok(())
}

/// Our certificate chain and key. A certificate marked with another role than ours is refused
/// here, naming the file (a relay.crt copied as dispatcher.crt, say); an unmarked one is loaded
/// (the daemon warns: relaybox peers refuse it unless they accept unmarked certificates).
fn load_identity(files: &TlsFiles) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(&files.cert)?;
    match certificate_marker(chain[0].as_ref()) {
        Ok(Marker::Role(r)) if r == files.role => {}
        Ok(Marker::Unmarked) => {}
        Ok(other) => {
            return Err(TlsError::WrongRole {
                path: files.cert.clone(),
                reason: format!("is a certificate of the {other} role; this daemon needs a {} certificate", files.role),
            })
        }
        Err(e) => return Err(TlsError::Pem { path: files.cert.clone(), reason: e.to_string() }),
    }
    let bytes = read(&files.key)?;
    let key = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey { path: files.key.clone() });
        }
        Err(e) => return Err(pem_error(&files.key, e)),
    };
    Ok((chain, key))
}

fn verifier_error(files: &TlsFiles, e: rustls::server::VerifierBuilderError) -> TlsError {
    match (&e, &files.crl) {
        (rustls::server::VerifierBuilderError::InvalidCrl(_), Some(crl)) => {
            TlsError::Pem { path: crl.clone(), reason: format!("unusable CRL: {e}") }
        }
        _ => TlsError::Verifier(format!("{}: {e}", files.ca.display())),
    }
}

/// Errors from installing our certificate and key: name the files.
fn identity_error(files: &TlsFiles, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Pem {
            path: files.key.clone(),
            reason: format!("does not match the certificate in {}", files.cert.display()),
        },
        rustls::Error::General(reason) => TlsError::Pem {
            path: files.key.clone(),
            reason: format!("unusable with {}: {reason}", files.cert.display()),
        },
        other => TlsError::Rustls(other),
    }
}

/// Who the peer is, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject attributes a passport can name, in certificate order.
    pub subject: Vec<(SubjectAttr, String)>,
    /// The whole subject as text, e.g. `O=Example Ltd, CN=edge-relay`.
    pub subject_text: String,
    /// Upper-case hex, no separators, no leading zero bytes (the form `relaybox-ca revoke` takes).
    pub serial_hex: String,
    /// SHA-256 over the DER, `AB:CD:...`.
    pub fingerprint: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (serial {}, sha256 {})", self.subject_text, self.serial_hex, self.fingerprint)
    }
}

/// Reads a (verified) peer certificate.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, TlsError> {
    use x509_parser::oid_registry as oids;
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Parse(e.to_string()))?;
    let mut subject = Vec::new();
    for attr in x509.subject().iter_attributes() {
        let oid = attr.attr_type();
        let kind = if *oid == oids::OID_X509_COMMON_NAME {
            SubjectAttr::CN
        } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
            SubjectAttr::O
        } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
            SubjectAttr::OU
        } else if *oid == oids::OID_X509_COUNTRY_NAME {
            SubjectAttr::C
        } else if *oid == oids::OID_X509_LOCALITY_NAME {
            SubjectAttr::L
        } else if *oid == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            SubjectAttr::ST
        } else if *oid == oids::OID_PKCS9_EMAIL_ADDRESS {
            SubjectAttr::Email
        } else {
            continue;
        };
        if let Some(value) = attribute_text(attr) {
            subject.push((kind, value));
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    Ok(PeerIdentity {
        subject,
        subject_text: x509.subject().to_string(),
        serial_hex: hex_serial(x509.raw_serial()),
        fingerprint: digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
    })
}

/// The value of a name attribute as text, including the legacy string types old CAs wrote.
fn attribute_text(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    if let Ok(s) = attr.as_str() {
        return Some(s.to_string());
    }
    let raw = attr.as_slice();
    match attr.attr_value().tag() {
        Tag::BmpString => {
            let pairs = raw.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            String::from_utf16(&pairs.map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>()).ok()
        }
        Tag::T61String | Tag::VisibleString => Some(raw.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

/// Serials (as in [`PeerIdentity::serial_hex`]) that the role's CRL revokes;
/// empty without a CRL. Used to drop established links when a reloaded CRL
/// revokes a peer that is already connected.
pub fn revoked_serials(files: &TlsFiles) -> Result<std::collections::HashSet<String>, TlsError> {
    let mut out = std::collections::HashSet::new();
    let Some(path) = files.crl.as_deref() else { return Ok(out) };
    for crl in load_crls(Some(path))? {
        let (_, parsed) = x509_parser::parse_x509_crl(&crl)
            .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: format!("unreadable CRL: {e}") })?;
        for revoked in parsed.iter_revoked_certificates() {
            out.insert(hex_serial(revoked.raw_serial()));
        }
    }
    Ok(out)
}

fn hex_serial(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// `Ok` when there is no passport or the peer's subject satisfies it.
pub fn check_passport(passport: Option<&Passport>, peer: &PeerIdentity) -> Result<(), TlsError> {
    match passport.and_then(|p| p.mismatch(&peer.subject)) {
        None => Ok(()),
        Some(reason) => Err(TlsError::Passport(reason)),
    }
}

/// A short reason for a failed TLS handshake or TLS read, for the log line: "certificate revoked",
/// "certificate signed by an unknown CA", "certificate expired", "peer sent no certificate", ...
/// Reasons that come from the peer's alert start with "peer refused our certificate".
pub fn describe_handshake_error(e: &io::Error) -> String {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return describe_rustls_error(tls);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake".into(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        io::ErrorKind::TimedOut => "TLS handshake timed out".into(),
        _ => e.to_string(),
    }
}

/// [`describe_handshake_error`] for a bare rustls error.
pub fn describe_rustls_error(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => describe_certificate_error(c),
        E::NoCertificatesPresented => "peer sent no certificate".into(),
        E::AlertReceived(alert) => describe_alert(*alert),
        E::InvalidCertRevocationList(e) => format!("invalid CRL: {e:?}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            format!("peer does not speak TLS as expected ({e})")
        }
        E::PeerIncompatible(p) => format!("peer is incompatible: {p:?}"),
        E::PeerMisbehaved(p) => format!("peer misbehaved: {p:?}"),
        other => other.to_string(),
    }
}

fn describe_certificate_error(e: &CertificateError) -> String {
    use CertificateError as C;
    match e {
        C::Revoked => "certificate revoked".into(),
        C::UnknownIssuer => "certificate signed by an unknown CA".into(),
        C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet (check the clocks)".into(),
        C::BadSignature => "certificate has a bad signature".into(),
        C::BadEncoding => "certificate is malformed".into(),
        C::UnknownRevocationStatus => "certificate revocation status unknown".into(),
        C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => "the CRL has expired".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "certificate not valid for this purpose (extended key usage)".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => "certificate not valid for this name".into(),
        C::UnhandledCriticalExtension => "certificate has an unsupported critical extension".into(),
        C::Other(e) => e.0.to_string(),
        other => format!("certificate rejected: {other:?}"),
    }
}

fn describe_alert(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let what = match alert {
        A::CertificateRevoked => "certificate revoked",
        A::UnknownCA => "signed by an unknown CA",
        A::CertificateExpired => "certificate expired",
        A::BadCertificate => "bad certificate",
        A::UnsupportedCertificate => "unsupported certificate",
        A::CertificateUnknown => "certificate unknown (a relaybox peer says so for a certificate of the wrong role)",
        A::AccessDenied => "access denied",
        A::CertificateRequired => return "peer requires a certificate and we sent none".into(),
        A::HandshakeFailure => return "peer aborted the handshake (no common parameters?)".into(),
        A::ProtocolVersion => return "no TLS version in common with the peer".into(),
        A::DecryptError => return "peer could not verify our handshake signature".into(),
        other => return format!("peer sent TLS alert {other:?}"),
    };
    format!("peer refused our certificate: {what}")
}
