//! Test harness: a temp config dir with certificates and a password, the
//! page started in-process on 127.0.0.1:0, a raw HTTP/1.1 client (over TLS
//! or plain) that sends paths exactly as written, and a fake relay control
//! socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use relaybox_ca::{CertificateAuthority, Subject};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub const PASSWORD: &str = "correct horse battery";

/// Accepts any server certificate (the test page's is self-made).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.as_str()).collect()
    }
    /// The value of cookie `name` set by this response.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .iter()
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
    /// The first hidden CSRF field in the page.
    pub fn csrf(&self) -> Option<String> {
        let at = self.body.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
        Some(self.body[at..].split('"').next()?.to_string())
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Resp { status, headers, body: String::from_utf8_lossy(&body).to_string() }
}

fn request_bytes(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request over TLS, the path sent exactly as given.
pub fn https(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let conn = rustls::ClientConnection::new(client_config(), ServerName::try_from("relaybox").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(&request_bytes(method, path, &addr.to_string(), headers, body));
    let _ = tls.flush();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => panic!("{method} {path}: {e}"),
            Err(_) => break,
        }
    }
    parse_response(&raw)
}

/// A TLS connection to the page from a chosen local address (anything in
/// 127.0.0.0/8 is loopback: a second "client machine" without a
/// namespace), handshake done, one request to send.
pub struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>, SocketAddr);

impl Conn {
    pub fn open(from: std::net::IpAddr, addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tcp = rt.block_on(async {
            let socket =
                if from.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(from, 0))?;
            tokio::time::timeout(timeout, socket.connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
        })?;
        let tcp = tcp.into_std()?;
        tcp.set_nonblocking(false)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let conn = rustls::ClientConnection::new(client_config(), ServerName::try_from("relaybox").unwrap())
            .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Conn(tls, addr))
    }

    /// Sends one request and reads the answer (the connection closes after it).
    pub fn send(mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Resp> {
        self.0.write_all(&request_bytes(method, path, &self.1.to_string(), headers, body))?;
        self.0.flush()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if raw.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete answer"));
        }
        Ok(parse_response(&raw))
    }
}

/// A login POST as a browser sends it (the login form's token in its
/// cookie and its field; any value works, it is a double submit).
pub fn login_request(password: &str) -> (String, Vec<u8>) {
    let token = "0123456789abcdef".repeat(4);
    (format!("relaybox_login={token}"), form(&[("csrf", &token), ("password", password)]))
}

/// One plain-HTTP request.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let host = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.to_string());
    let others: Vec<(&str, &str)> = headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("host")).copied().collect();
    tcp.write_all(&request_bytes(method, path, &host.unwrap_or(addr.to_string()), &others, body)).unwrap();
    // Read until the body is complete (servers such as chromedriver keep
    // the connection open despite `Connection: close`).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let length =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
            if length.is_some_and(|n: usize| raw.len() >= split + 4 + n) {
                break;
            }
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse_response(&raw)
}

/// `application/x-www-form-urlencoded`.
pub fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".into(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&").into_bytes()
}

/// SIGHUPs this test process received (the fake relay is this process).
pub static HUPS: AtomicUsize = AtomicUsize::new(0);

/// Makes SIGHUP counted instead of fatal; idempotent.
pub fn count_sighup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
                tx.send(()).unwrap();
                while hup.recv().await.is_some() {
                    HUPS.fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        rx.recv().unwrap();
    });
}

pub const SESSIONS_JSON: &str = r#"[{"call_id":"call-<b>1</b>","from_tag":"ft","from_uri":"sip:alice@example.com","to_tag":"tt","to_uri":"sip:bob@example.com","start_time":1700000000,"duration":75,"caller_ua":"A","callee_ua":"B","username":"alice","streams":[{"media_type":"audio","status":"active","timeout_wait":0,"caller_codec":"PCMA","callee_codec":"PCMA","start_time":0,"end_time":null,"post_dial_delay":1.5,"caller_bytes":17200,"callee_bytes":17100,"caller_packets":100,"callee_packets":99,"caller_local":"192.0.2.1:40000","callee_local":"192.0.2.1:40002","caller_remote":"198.51.100.7:4000","callee_remote":"198.51.100.9:5000"}]}]"#;

pub fn metrics_json() -> String {
    format!(
        r#"{{"summary":{{"ip":"192.0.2.1","version":"0.1.0","status":"active","uptime":3725,"session_count":1,"stream_count":{{"audio":1}},"bps_relayed":27520,"datapath":"userspace"}},"pid":{},"bytes_relayed":34300,"packets_relayed":200,"session_packets":199,"session_bytes":34300,"ports_used":4,"ports_free":96,"bleed_drops":3,"port_bind_failures":2,"dispatchers":["127.0.0.1:25060"],"port_range":"40000:40100"}}"#,
        std::process::id()
    )
}

/// A stand-in for the relay's control socket, answering from this process.
pub fn fake_relay(socket: &Path) {
    use std::io::{BufRead, BufReader};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let answer = match line.trim() {
                        "metrics" => metrics_json(),
                        "sessions" => SESSIONS_JSON.to_string(),
                        "summary" => "{}".to_string(),
                        _ => "error".to_string(),
                    };
                    if stream.write_all(format!("{answer}\r\n").as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

pub const INITIAL: &str =
    "; the operator's comment\n[Relay]\ndispatchers = 127.0.0.1:25060\nport_range = 40000:40100\n";

/// A page on 127.0.0.1 with its own config dir, certificates and password.
pub struct Web {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub certs: PathBuf,
    pub ca: CertificateAuthority,
    pub rt: tokio::runtime::Runtime,
    pub server: Option<relaybox_web::Server>,
    pub https: SocketAddr,
    pub http: SocketAddr,
}

impl Web {
    pub fn start(web_extra: &str) -> Web {
        count_sighup();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.ini");
        let socket = dir.path().join("relay.sock");
        let certs = dir.path().join("tls");
        let mut ca = CertificateAuthority::create(&Subject::new("web test CA"), 3650).unwrap();
        let relay = ca.issue(relaybox_ca::Role::Relay, &Subject::new("edge-relay"), 365).unwrap();
        let dispatcher = ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher"), 365).unwrap();
        relaybox_ca::write_certs_dir(&ca, &certs, &relay, &dispatcher).unwrap();
        let text = format!(
            "{INITIAL}control_socket = {}\n\n[TLS]\n; keep me\ncerts_path = tls\n\n[Web]\nlisten = 127.0.0.1:0\nhttp_listen = 127.0.0.1:0\nmax_body = 8192\nlogin_attempts = 3\nlockout = 4\nclock_pid_file = clock.pid\nhostname_command = hostname.sh\n{web_extra}\n",
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        // Never the test machine's own host name: the System page's command
        // only records what it was asked to set.
        let hostname = dir.path().join("hostname.sh");
        std::fs::write(&hostname, "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/hostname-set\"\n").unwrap();
        std::fs::set_permissions(&hostname, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        relaybox_web::set_password(&config, PASSWORD).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = rt.block_on(relaybox_web::start(&config)).unwrap();
        let (https, http) = (server.https_addr, server.http_addr.unwrap());
        Web { dir, config, socket, certs, ca, rt, server: Some(server), https, http }
    }

    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        https(self.https, method, path, headers, body)
    }

    pub fn get(&self, path: &str, session: Option<&Session>) -> Resp {
        match session {
            Some(s) => self.req("GET", path, &[("Cookie", &s.cookie())], b""),
            None => self.req("GET", path, &[], b""),
        }
    }

    pub fn post(&self, path: &str, session: &Session, fields: &[(&str, &str)]) -> Resp {
        self.req("POST", path, &[("Cookie", &session.cookie())], &form(fields))
    }

    /// Logs in as a browser would; panics unless it works.
    pub fn try_login(&self, password: &str) -> Resp {
        let page = self.get("/login", None);
        assert_eq!(page.status, 200);
        let token = page.cookie("relaybox_login").expect("login cookie");
        assert_eq!(page.csrf().as_deref(), Some(token.as_str()));
        let cookie = format!("relaybox_login={token}");
        self.req("POST", "/login", &[("Cookie", &cookie)], &form(&[("csrf", &token), ("password", password)]))
    }

    pub fn login(&self) -> Session {
        let r = self.try_login(PASSWORD);
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.header("location"), Some("/status"));
        let id = r.cookie("relaybox_session").expect("session cookie");
        let mut s = Session { id, csrf: String::new() };
        let page = self.get("/settings", Some(&s));
        assert_eq!(page.status, 200);
        s.csrf = page.csrf().unwrap();
        s
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }
}

pub struct Session {
    pub id: String,
    pub csrf: String,
}

impl Session {
    pub fn cookie(&self) -> String {
        format!("relaybox_session={}", self.id)
    }
}
