//! Real TLS handshakes over TCP on 127.0.0.1 with certificates made by relaybox-ca.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use relaybox_ca::{write_certs_dir, CertificateAuthority, IssuedCert, Subject};
use relaybox_config::{Passport, SubjectAttr};
use relaybox_tls::{
    anonymous_client_config, check_passport, client_config, describe_handshake_error, peer_identity, server_config,
    ClientAuth, PeerIdentity, PeerRole, Role, TlsError, TlsFiles,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ORG: &str = "Example Ltd";

/// What the dispatcher's relay port accepts.
fn relays() -> PeerRole {
    PeerRole::strict(Role::Relay)
}

/// What a relay (or a management client) accepts from the server.
fn dispatchers() -> PeerRole {
    PeerRole::strict(Role::Dispatcher)
}

/// A CA, a certs_path with relay and dispatcher certificates, and the CA kept for revocations.
struct Pki {
    _tmp: tempfile::TempDir,
    ca: CertificateAuthority,
    certs: PathBuf,
    relay: IssuedCert,
    dispatcher: IssuedCert,
}

impl Pki {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut ca = CertificateAuthority::create(&Subject::new("Example CA").with_org(ORG), 30).unwrap();
        let relay = ca.issue(Role::Relay, &Subject::new("edge-relay").with_org(ORG).with_ou("Edge"), 30).unwrap();
        let dispatcher = ca.issue(Role::Dispatcher, &Subject::new("dispatcher").with_org(ORG), 30).unwrap();
        let certs = tmp.path().join("certs");
        write_certs_dir(&ca, &certs, &relay, &dispatcher).unwrap();
        Pki { _tmp: tmp, ca, certs, relay, dispatcher }
    }

    fn relay_files(&self) -> TlsFiles {
        TlsFiles::for_role(&self.certs, Role::Relay)
    }

    fn dispatcher_files(&self) -> TlsFiles {
        TlsFiles::for_role(&self.certs, Role::Dispatcher)
    }

    /// Writes `cert` as `<dir>/<name>.crt` and `.key`; returns TlsFiles that use them with this CA.
    fn files_with(&self, name: &str, cert: &IssuedCert, role: Role) -> TlsFiles {
        let (crt, key) = relaybox_ca::write_issued(&self.certs, name, cert).unwrap();
        TlsFiles { cert: crt, key, role, ..self.relay_files() }
    }

    fn rewrite_crl(&self) {
        std::fs::write(self.certs.join("crl.pem"), self.ca.crl_pem().unwrap()).unwrap();
    }
}

struct Outcome {
    /// The client certificate as the server saw it, or the server's handshake error.
    server: Result<Option<CertificateDer<'static>>, io::Error>,
    /// The server certificate as the client saw it, or the client's error.
    client: Result<CertificateDer<'static>, io::Error>,
}

/// One connection: the server accepts, sends one byte and closes; the client reads the byte (with
/// TLS 1.3 a refused client certificate only shows on the client's first read).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        tls.write_all(b"k").await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).unwrap().clone().into_owned();
        Ok::<_, io::Error>(cert)
    };
    let limit = Duration::from_secs(10);
    let client = tokio::time::timeout(limit, client).await.expect("client timed out");
    let server = tokio::time::timeout(limit, server_task).await.expect("server timed out").unwrap();
    Outcome { server, client }
}

fn localhost() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

fn identity(cert: &CertificateDer<'_>) -> PeerIdentity {
    peer_identity(cert).unwrap()
}

#[tokio::test]
async fn good_relay_is_accepted_and_its_passport_matches() {
    let pki = Pki::new();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    // The relay connects by IP; the dispatcher's certificate names "dispatcher": accepted anyway.
    let out = handshake(server, client, localhost()).await;
    let relay_cert = out.server.expect("server accepted").expect("relay presented a certificate");
    let dispatcher_cert = out.client.expect("client accepted");

    let relay = identity(&relay_cert);
    assert_eq!(relay.subject_text, "O=Example Ltd, OU=Edge, CN=edge-relay");
    assert_eq!(
        relay.subject,
        vec![
            (SubjectAttr::O, ORG.to_string()),
            (SubjectAttr::OU, "Edge".to_string()),
            (SubjectAttr::CN, "edge-relay".to_string())
        ]
    );
    assert_eq!(relay.serial_hex, pki.relay.serial_hex);
    assert_eq!(relay.fingerprint, relaybox_ca::fingerprint_sha256(&pki.relay.cert_pem).unwrap());
    let passport = Passport::parse("O:Example Ltd, CN:*relay").unwrap();
    check_passport(Some(&passport), &relay).unwrap();
    check_passport(None, &relay).unwrap();

    let dispatcher = identity(&dispatcher_cert);
    assert_eq!(dispatcher.serial_hex, pki.dispatcher.serial_hex);
    check_passport(Some(&Passport::parse("O:Example Ltd, CN:dispatcher").unwrap()), &dispatcher).unwrap();
}

#[tokio::test]
async fn any_server_name_is_accepted_but_the_chain_is_not_skipped() {
    let pki = Pki::new();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let name = ServerName::try_from("some-other-host.example").unwrap();
    assert!(handshake(server.clone(), client, name).await.client.is_ok());

    // Plain webpki verification would have refused the name: the wrapper is what accepts it.
    let plain = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    let err = handshake(server, Arc::new(plain), localhost()).await.client.unwrap_err();
    assert_eq!(describe_handshake_error(&err), "certificate not valid for this name");

    // A dispatcher certificate from another CA: the relay refuses it itself.
    let mut other = CertificateAuthority::create(&Subject::new("Other CA").with_org(ORG), 30).unwrap();
    let fake = other.issue(Role::Dispatcher, &Subject::new("dispatcher").with_org(ORG), 30).unwrap();
    let server =
        server_config(&pki.files_with("fake-dispatcher", &fake, Role::Dispatcher), ClientAuth::Required, relays())
            .unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let out = handshake(server, client, localhost()).await;
    let err = out.client.expect_err("relay must refuse a dispatcher from another CA");
    assert_eq!(describe_handshake_error(&err), "certificate signed by an unknown CA");
    let err = out.server.expect_err("the dispatcher sees the relay's alert");
    assert!(describe_handshake_error(&err).contains("unknown CA"), "{}", describe_handshake_error(&err));
}

#[tokio::test]
async fn relay_from_another_ca_is_refused() {
    let pki = Pki::new();
    let mut other = CertificateAuthority::create(&Subject::new("Other CA").with_org(ORG), 30).unwrap();
    let intruder = other.issue(Role::Relay, &Subject::new("edge-relay").with_org(ORG), 30).unwrap();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.files_with("intruder", &intruder, Role::Relay), dispatchers()).unwrap();
    let out = handshake(server, client, localhost()).await;
    let err = out.server.expect_err("dispatcher must refuse a relay from another CA");
    assert_eq!(describe_handshake_error(&err), "certificate signed by an unknown CA");
    let err = out.client.expect_err("the relay learns it was refused");
    assert_eq!(describe_handshake_error(&err), "peer refused our certificate: signed by an unknown CA");
}

#[tokio::test]
async fn revoked_relay_is_refused_after_a_new_crl() {
    let mut pki = Pki::new();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    assert!(handshake(server, client.clone(), localhost()).await.server.is_ok(), "accepted before revocation");

    pki.ca.revoke(&pki.relay.serial_hex).unwrap();
    pki.rewrite_crl();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let out = handshake(server, client, localhost()).await;
    let err = out.server.expect_err("dispatcher must refuse a revoked relay");
    let reason = describe_handshake_error(&err);
    assert_eq!(reason, "certificate revoked");
    let err = out.client.expect_err("the relay learns it was refused");
    assert!(describe_handshake_error(&err).contains("revoked"), "{}", describe_handshake_error(&err));

    // The relay honours the CRL too: a revoked dispatcher is refused.
    pki.ca.revoke(&pki.dispatcher.serial_hex).unwrap();
    pki.rewrite_crl();
    let other_relay = pki.ca.issue(Role::Relay, &Subject::new("relay2").with_org(ORG), 30).unwrap();
    let client = client_config(&pki.files_with("relay2", &other_relay, Role::Relay), dispatchers()).unwrap();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let err = handshake(server, client, localhost()).await.client.expect_err("revoked dispatcher");
    assert_eq!(describe_handshake_error(&err), "certificate revoked");
}

#[tokio::test]
async fn expired_relay_is_refused() {
    let mut pki = Pki::new();
    let expired = pki.ca.issue_expired(Role::Relay, &Subject::new("old-relay").with_org(ORG)).unwrap();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.files_with("old-relay", &expired, Role::Relay), dispatchers()).unwrap();
    let out = handshake(server, client, localhost()).await;
    assert_eq!(describe_handshake_error(&out.server.unwrap_err()), "certificate expired");
    assert!(describe_handshake_error(&out.client.unwrap_err()).contains("expired"));
}

#[tokio::test]
async fn client_without_certificate_needs_optional_auth() {
    let pki = Pki::new();
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki))
            .with_no_client_auth(),
    );
    let name = ServerName::try_from("dispatcher").unwrap();

    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let out = handshake(server, anonymous.clone(), name.clone()).await;
    assert_eq!(describe_handshake_error(&out.server.unwrap_err()), "peer sent no certificate");
    assert_eq!(describe_handshake_error(&out.client.unwrap_err()), "peer requires a certificate and we sent none");

    let server = server_config(&pki.dispatcher_files(), ClientAuth::Optional, relays()).unwrap();
    let out = handshake(server, anonymous, name).await;
    assert_eq!(out.server.unwrap(), None);
    assert!(out.client.is_ok());
}

#[tokio::test]
async fn passport_mismatch_names_the_attribute() {
    let pki = Pki::new();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let relay = identity(&handshake(server, client, localhost()).await.server.unwrap().unwrap());

    let wrong_org = Passport::parse("O:Other Corp, CN:*relay").unwrap();
    match check_passport(Some(&wrong_org), &relay) {
        Err(TlsError::Passport(reason)) => {
            assert!(reason.contains("O=") && reason.contains("Other Corp"), "{reason}");
        }
        other => panic!("expected a passport error, got {other:?}"),
    }
    let wrong_cn = Passport::parse("O:Example Ltd, CN:dispatcher*").unwrap();
    let err = check_passport(Some(&wrong_cn), &relay).unwrap_err();
    assert!(matches!(&err, TlsError::Passport(r) if r.contains("CN=") && r.contains("edge-relay")), "{err}");
    let missing = Passport::parse("L:Berlin").unwrap();
    let err = check_passport(Some(&missing), &relay).unwrap_err().to_string();
    assert!(err.contains("no L attribute"), "{err}");
}

#[test]
fn file_errors_name_the_file() {
    let pki = Pki::new();
    let files = pki.relay_files();
    assert_eq!(files.crl.as_deref(), Some(pki.certs.join("crl.pem").as_path()));

    let key = pki.certs.join("relay.key");
    std::fs::remove_file(&key).unwrap();
    for err in [
        client_config(&files, dispatchers()).unwrap_err(),
        server_config(&files, ClientAuth::Required, relays()).unwrap_err(),
    ] {
        assert!(matches!(&err, TlsError::Io { path, .. } if path == &key), "{err:?}");
        assert!(err.to_string().contains(&key.display().to_string()), "{err}");
    }

    std::fs::write(&key, "not a key\n").unwrap();
    let err = client_config(&files, dispatchers()).unwrap_err();
    assert!(matches!(&err, TlsError::NoKey { path } if path == &key), "{err:?}");

    // A key that belongs to another certificate.
    std::fs::copy(pki.certs.join("dispatcher.key"), &key).unwrap();
    let err = client_config(&files, dispatchers()).unwrap_err();
    assert!(err.to_string().contains(&key.display().to_string()), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    let crt = pki.certs.join("relay.crt");
    std::fs::write(&crt, "").unwrap();
    let err = server_config(&pki.relay_files(), ClientAuth::Required, relays()).unwrap_err();
    assert!(matches!(&err, TlsError::NoCertificate { path } if path == &crt), "{err:?}");

    let crl = pki.certs.join("crl.pem");
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    let err = client_config(&pki.dispatcher_files(), dispatchers()).unwrap_err();
    assert!(err.to_string().contains(&crl.display().to_string()), "{err}");

    // A CRL from a CA that is not in ca.pem would protect nothing: refused.
    let other = CertificateAuthority::create(&Subject::new("Other CA"), 30).unwrap();
    std::fs::write(&crl, other.crl_pem().unwrap()).unwrap();
    let err = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap_err().to_string();
    assert!(err.contains(&crl.display().to_string()) && err.contains("CN=Other CA"), "{err}");

    std::fs::remove_file(&crl).unwrap();
    assert_eq!(TlsFiles::for_role(&pki.certs, Role::Dispatcher).crl, None);
    client_config(&pki.dispatcher_files(), dispatchers()).expect("no crl.pem is fine");

    let ca = pki.certs.join("ca.pem");
    std::fs::remove_file(&ca).unwrap();
    let err = client_config(&pki.dispatcher_files(), dispatchers()).unwrap_err();
    assert!(err.to_string().contains(&ca.display().to_string()), "{err}");
    assert!(!Path::new(&ca).exists());
}

fn roots(pki: &Pki) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap()).unwrap();
    roots
}

#[test]
fn revoked_serials_match_peer_identities() {
    let mut pki = Pki::new();
    assert!(relaybox_tls::revoked_serials(&pki.dispatcher_files()).unwrap().is_empty());
    pki.ca.revoke(&pki.relay.serial_hex).unwrap();
    pki.rewrite_crl();
    let revoked = relaybox_tls::revoked_serials(&pki.dispatcher_files()).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pki.relay.cert_pem.as_bytes()).unwrap();
    assert!(revoked.contains(&identity(&der).serial_hex), "{revoked:?}");
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pki.dispatcher.cert_pem.as_bytes()).unwrap();
    assert!(!revoked.contains(&identity(&der).serial_hex));
}

#[tokio::test]
async fn own_certificate_is_checked_as_the_other_side_of_the_link_checks_it() {
    let mut pki = Pki::new();
    relaybox_tls::check_own_certificate(&pki.relay_files(), Role::Relay).unwrap();
    relaybox_tls::check_own_certificate(&pki.dispatcher_files(), Role::Dispatcher).unwrap();

    // A relay certificate from another CA, with its own key (so it loads):
    // the check refuses it, and so does the dispatcher in a real handshake.
    let mut other = CertificateAuthority::create(&Subject::new("Other CA").with_org(ORG), 30).unwrap();
    let stranger = other.issue(Role::Relay, &Subject::new("edge-relay").with_org(ORG), 30).unwrap();
    let files = pki.files_with("stranger", &stranger, Role::Relay);
    client_config(&files, dispatchers()).expect("the files load: the key matches the certificate");
    let err = relaybox_tls::check_own_certificate(&files, Role::Relay).unwrap_err();
    assert!(matches!(&err, TlsError::Untrusted { path, .. } if path == &files.cert), "{err:?}");
    assert!(err.to_string().contains("is not signed by a CA in ca.pem"), "{err}");
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let out = handshake(server, client_config(&files, dispatchers()).unwrap(), localhost()).await;
    assert!(out.server.is_err(), "the dispatcher refuses it too");

    // ca.pem replaced by another CA (and no CRL, which would be refused
    // first): the relay's own certificate no longer chains.
    std::fs::remove_file(pki.certs.join("crl.pem")).unwrap();
    let ca = pki.certs.join("ca.pem");
    let original = std::fs::read(&ca).unwrap();
    std::fs::write(&ca, other.cert_pem()).unwrap();
    let err = relaybox_tls::check_own_certificate(&pki.relay_files(), Role::Relay).unwrap_err();
    assert!(err.to_string().contains("not signed by a CA in ca.pem"), "{err}");
    let err = relaybox_tls::check_own_certificate(&pki.dispatcher_files(), Role::Dispatcher).unwrap_err();
    assert!(err.to_string().contains("not signed by a CA in ca.pem"), "{err}");
    // Both CAs in ca.pem: fine again.
    std::fs::write(&ca, [original.clone(), other.cert_pem().into_bytes()].concat()).unwrap();
    relaybox_tls::check_own_certificate(&pki.relay_files(), Role::Relay).unwrap();
    std::fs::write(&ca, original).unwrap();

    // Revoked by the CRL next to it.
    pki.ca.revoke(&pki.relay.serial_hex).unwrap();
    pki.rewrite_crl();
    let err = relaybox_tls::check_own_certificate(&pki.relay_files(), Role::Relay).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");

    // Dates are the handshake's business (a box may not know the time yet).
    let expired = pki.ca.issue_expired(Role::Relay, &Subject::new("old-relay").with_org(ORG)).unwrap();
    relaybox_tls::check_own_certificate(&pki.files_with("old", &expired, Role::Relay), Role::Relay).unwrap();
}

/// The server's reason for refusing the handshake.
fn server_reason(out: &Outcome) -> String {
    match &out.server {
        Err(e) => describe_handshake_error(e),
        Ok(_) => panic!("the server accepted the client"),
    }
}

/// The client's reason for refusing (or learning it was refused).
fn client_reason(out: &Outcome) -> String {
    match &out.client {
        Err(e) => describe_handshake_error(e),
        Ok(_) => panic!("the client accepted the server"),
    }
}

#[tokio::test]
async fn each_end_refuses_a_certificate_of_another_role() {
    let mut pki = Pki::new();
    let management = pki.ca.issue(Role::Management, &Subject::new("ops").with_org(ORG), 30).unwrap();
    let management_files = pki.files_with("management", &management, Role::Management);

    // A dispatcher's certificate presented as a relay: refused at the relay port.
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let out =
        handshake(server.clone(), client_config(&pki.dispatcher_files(), dispatchers()).unwrap(), localhost()).await;
    assert_eq!(server_reason(&out), "the certificate has the dispatcher role; this port takes relay certificates");
    assert!(client_reason(&out).contains("peer refused our certificate"), "{}", client_reason(&out));

    // A management client's certificate (a TLS client too) at the relay port.
    let out = handshake(server.clone(), client_config(&management_files, dispatchers()).unwrap(), localhost()).await;
    assert_eq!(server_reason(&out), "the certificate has the management role; this port takes relay certificates");

    // A relay's certificate presented by a server: the relay refuses it.
    let fake_dispatcher = server_config(&pki.relay_files(), ClientAuth::Required, relays()).unwrap();
    let out = handshake(fake_dispatcher, client_config(&pki.relay_files(), dispatchers()).unwrap(), localhost()).await;
    assert_eq!(client_reason(&out), "the certificate has the relay role; this port takes dispatcher certificates");

    // The management port takes management certificates only, even when it
    // also serves clients without one; accepting unmarked ones changes
    // nothing for a certificate of another role.
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let peers = PeerRole { role: Role::Management, accept_unmarked: true };
        let port = server_config(&pki.dispatcher_files(), auth, peers).unwrap();
        let out = handshake(port.clone(), client_config(&pki.relay_files(), dispatchers()).unwrap(), localhost()).await;
        assert_eq!(
            server_reason(&out),
            "the certificate has the relay role; this port takes management certificates",
            "{auth:?}"
        );
        let out = handshake(port, client_config(&management_files, dispatchers()).unwrap(), localhost()).await;
        let seen = out.server.expect("a management client is served").expect("with its certificate");
        assert_eq!(identity(&seen).subject_text, "O=Example Ltd, CN=ops");
    }
    // Anonymous clients still verify the server's role.
    let anonymous = anonymous_client_config(&management_files, dispatchers()).unwrap();
    let optional = server_config(&pki.dispatcher_files(), ClientAuth::Optional, PeerRole::strict(Role::Management));
    assert!(handshake(optional.unwrap(), anonymous, localhost()).await.client.is_ok());
}

#[tokio::test]
async fn an_unmarked_certificate_needs_the_setting_at_either_end() {
    let mut pki = Pki::new();
    // As MediaProxy's CA makes them: serverAuth + clientAuth, no role.
    let old_relay = pki.ca.issue_unmarked(&Subject::new("old-relay").with_org(ORG), 30).unwrap();
    let old_dispatcher = pki.ca.issue_unmarked(&Subject::new("old-dispatcher").with_org(ORG), 30).unwrap();
    let old_relay_files = pki.files_with("old-relay", &old_relay, Role::Relay);
    let old_dispatcher_files = pki.files_with("old-dispatcher", &old_dispatcher, Role::Dispatcher);

    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let out = handshake(server, client_config(&old_relay_files, dispatchers()).unwrap(), localhost()).await;
    assert!(server_reason(&out).contains("carries no relaybox role"), "{}", server_reason(&out));
    let lenient = PeerRole { role: Role::Relay, accept_unmarked: true };
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, lenient).unwrap();
    let out = handshake(server, client_config(&old_relay_files, dispatchers()).unwrap(), localhost()).await;
    assert!(out.server.is_ok() && out.client.is_ok());

    let server = server_config(&old_dispatcher_files, ClientAuth::Required, relays()).unwrap();
    let out = handshake(server.clone(), client_config(&pki.relay_files(), dispatchers()).unwrap(), localhost()).await;
    assert!(client_reason(&out).contains("carries no relaybox role"), "{}", client_reason(&out));
    let lenient = PeerRole { role: Role::Dispatcher, accept_unmarked: true };
    let out = handshake(server, client_config(&pki.relay_files(), lenient).unwrap(), localhost()).await;
    assert!(out.server.is_ok() && out.client.is_ok());
}

#[test]
fn our_own_certificate_of_another_role_is_refused_naming_the_file() {
    let pki = Pki::new();
    // relay.crt and relay.key used as the dispatcher's: a copy mistake.
    let files = TlsFiles { role: Role::Dispatcher, ..pki.relay_files() };
    let err = server_config(&files, ClientAuth::Required, relays()).unwrap_err();
    assert!(matches!(&err, TlsError::WrongRole { path, .. } if path == &pki.certs.join("relay.crt")), "{err:?}");
    assert!(err.to_string().contains("relay role; this daemon needs a dispatcher certificate"), "{err}");
    assert!(matches!(pki.relay_files().own_marker(), Ok(relaybox_tls::Marker::Role(Role::Relay))));
}

/// A version 1 CRL (no version field, no extensions: what `openssl ca
/// -gencrl` writes without `crl_extensions` and `crlnumber`, and what
/// MediaProxy ships as its sample `crl.pem`) from `pki`'s CA, revoking
/// `revoked` (hex serials).
fn v1_crl(pki: &Pki, revoked: &[&str]) -> String {
    let dir = pki._tmp.path().join(format!("openssl-ca-{}", revoked.len()));
    pki.ca.save(&dir).unwrap();
    let mut index = String::new();
    for serial in revoked {
        index.push_str(&format!("R\t300101000000Z\t240101000000Z\t{serial}\tunknown\t/CN=revoked\n"));
    }
    std::fs::write(dir.join("index.txt"), index).unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = ca\n[ca]\ndatabase = {d}/index.txt\ncertificate = {d}/ca.pem\nprivate_key = {d}/ca.key\ndefault_md = sha256\ndefault_crl_days = 30\n",
        d = dir.display()
    );
    std::fs::write(dir.join("ca.cnf"), cnf).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["ca", "-batch", "-gencrl", "-config"])
        .arg(dir.join("ca.cnf"))
        .arg("-out")
        .arg(dir.join("v1.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl ca -gencrl: {}", String::from_utf8_lossy(&out.stderr));
    let pem = std::fs::read_to_string(dir.join("v1.pem")).unwrap();
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
    assert_eq!(parsed.version(), None, "openssl wrote a v2 CRL");
    pem
}

#[tokio::test]
async fn a_version_1_crl_is_honoured_both_ways() {
    let pki = Pki::new();
    // An empty v1 CRL: both sides start and accept each other.
    std::fs::write(pki.certs.join("crl.pem"), v1_crl(&pki, &[])).unwrap();
    let server =
        server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).expect("v1 CRL refused (dispatcher)");
    let client = client_config(&pki.relay_files(), dispatchers()).expect("v1 CRL refused (relay)");
    let out = handshake(server, client, localhost()).await;
    assert!(out.server.is_ok() && out.client.is_ok(), "accepted with an empty v1 CRL");
    assert!(relaybox_tls::revoked_serials(&pki.dispatcher_files()).unwrap().is_empty());

    // A v1 CRL that revokes the relay: the dispatcher refuses it.
    std::fs::write(pki.certs.join("crl.pem"), v1_crl(&pki, &[&pki.relay.serial_hex])).unwrap();
    assert!(relaybox_tls::revoked_serials(&pki.dispatcher_files()).unwrap().contains(&pki.relay.serial_hex));
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let out = handshake(server, client, localhost()).await;
    let err = out.server.expect_err("dispatcher must refuse a relay a v1 CRL revokes");
    assert_eq!(describe_handshake_error(&err), "certificate revoked");

    // ... and one that revokes the dispatcher: the relay refuses it.
    std::fs::write(pki.certs.join("crl.pem"), v1_crl(&pki, &[&pki.dispatcher.serial_hex])).unwrap();
    let server = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()).unwrap();
    let client = client_config(&pki.relay_files(), dispatchers()).unwrap();
    let err = handshake(server, client, localhost()).await.client.expect_err("revoked dispatcher");
    assert_eq!(describe_handshake_error(&err), "certificate revoked");

    // A v1 CRL signed by another key with the same CA name is refused.
    let other = CertificateAuthority::create(&Subject::new("Example CA").with_org(ORG), 30).unwrap();
    let forged = Pki {
        _tmp: tempfile::tempdir().unwrap(),
        ca: other,
        certs: pki.certs.clone(),
        relay: pki.relay.clone(),
        dispatcher: pki.dispatcher.clone(),
    };
    std::fs::write(pki.certs.join("crl.pem"), v1_crl(&forged, &[])).unwrap();
    let Err(err) = server_config(&pki.dispatcher_files(), ClientAuth::Required, relays()) else {
        panic!("a forged v1 CRL was accepted")
    };
    let err = err.to_string();
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn mediaproxys_sample_certificates_and_v1_crl_load() {
    // MediaProxy 4.1.2's tls/ directory, as it ships (tests/fixtures).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mediaproxy-4.1.2-tls");
    for role in [Role::Dispatcher, Role::Relay] {
        let files = TlsFiles::for_role(&dir, role);
        assert!(files.crl.is_some());
        server_config(&files, ClientAuth::Required, relays()).unwrap_or_else(|e| panic!("{role:?} server: {e}"));
        client_config(&files, dispatchers()).unwrap_or_else(|e| panic!("{role:?} client: {e}"));
    }
}
