//! RADIUS accounting (RFC 2866): one Accounting-Request per finished
//! session, with MediaProxy's attributes, sent over UDP with
//! retransmission. A server that does not answer makes the delivery fail
//! (`BackendError::Unavailable`): the record stays spooled and is retried.

pub mod config;
pub mod packet;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use relaybox_proto::SessionStats;
use tokio::net::UdpSocket;

use crate::{Backend, BackendError};
pub use config::{ClientConf, ConfigError};
pub use packet::SipAttributes;

/// Where and how records are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusSettings {
    pub host: String,
    pub port: u16,
    pub secret: String,
    /// How long to wait for the answer to each send.
    pub timeout: Duration,
    /// Sends per delivery attempt (at least one).
    pub tries: u32,
    pub bind: Option<IpAddr>,
    pub attributes: SipAttributes,
}

impl RadiusSettings {
    /// Reads MediaProxy's `[Radius]` settings: the proxy's `client.conf` and
    /// the dictionaries. The SIP attribute numbers come from the
    /// `dictionary` of client.conf (when readable) and then from
    /// `additional_dictionary` (a missing one is logged; the built-in numbers,
    /// those of firmware/accounting/radius/dictionary, are used).
    pub fn load(config_file: &Path, additional_dictionary: Option<&Path>) -> Result<Self, ConfigError> {
        let conf = ClientConf::load(config_file)?;
        let mut attributes = SipAttributes::default();
        if let Some(main) = conf.dictionary.as_deref().filter(|p| p.exists()) {
            config::read_dictionary(main, &mut attributes)?;
        }
        if let Some(extra) = additional_dictionary {
            if extra.exists() {
                config::read_dictionary(extra, &mut attributes)?;
            } else {
                tracing::warn!(
                    file = %extra.display(),
                    "radius: the additional dictionary does not exist; using relaybox's attribute numbers {attributes:?}"
                );
            }
        }
        Ok(RadiusSettings {
            host: conf.host,
            port: conf.port,
            secret: conf.secret,
            timeout: conf.timeout,
            tries: conf.retries.max(1),
            bind: conf.bind,
            attributes,
        })
    }
}

/// The RADIUS accounting backend.
pub struct RadiusBackend {
    settings: RadiusSettings,
    next_id: AtomicU8,
}

impl RadiusBackend {
    pub fn new(settings: RadiusSettings) -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        RadiusBackend { settings, next_id: AtomicU8::new(seed as u8) }
    }

    /// [`RadiusSettings::load`] then [`RadiusBackend::new`].
    pub fn from_config(config_file: &Path, additional_dictionary: Option<&Path>) -> Result<Self, ConfigError> {
        let settings = RadiusSettings::load(config_file, additional_dictionary)?;
        tracing::info!(server = %settings.host, port = settings.port, "radius: accounting to this server");
        Ok(Self::new(settings))
    }

    pub fn settings(&self) -> &RadiusSettings {
        &self.settings
    }

    async fn send(&self, stats: &SessionStats) -> Result<(), BackendError> {
        let s = &self.settings;
        let down = |m: String| BackendError::Unavailable(format!("RADIUS server {}:{}: {m}", s.host, s.port));
        let server = tokio::net::lookup_host((s.host.as_str(), s.port))
            .await
            .map_err(|e| down(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| down("the name has no address".into()))?;
        let local = match (s.bind, server) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            (None, SocketAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| down(format!("cannot open a socket on {local}: {e}")))?;
        socket.connect(server).await.map_err(|e| down(format!("cannot reach {server}: {e}")))?;

        let attrs = packet::session_attributes(stats, &s.attributes);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = packet::encode_request(id, &attrs, s.secret.as_bytes());
        let mut buf = vec![0u8; packet::MAX_PACKET];
        let mut last = String::from("no answer");
        for attempt in 1..=s.tries {
            if let Err(e) = socket.send(&request.bytes).await {
                last = format!("send: {e}");
                tokio::time::sleep(s.timeout).await;
                continue;
            }
            let deadline = tokio::time::Instant::now() + s.timeout;
            loop {
                match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        // ICMP port unreachable and the like: nothing will
                        // come for this send; wait out its timeout.
                        last = format!("receive: {e}");
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Ok(Ok(n)) => match packet::check_response(&buf[..n], &request, s.secret.as_bytes()) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            tracing::debug!(%server, attempt, "radius: datagram ignored: {e}");
                            last = format!("ignored an answer: {e}");
                        }
                    },
                }
            }
            tracing::debug!(%server, attempt, call_id = %stats.call_id, "radius: no Accounting-Response yet");
        }
        Err(down(format!("no valid Accounting-Response after {} sends {:?} apart ({last})", s.tries, s.timeout)))
    }
}

impl Backend for RadiusBackend {
    fn name(&self) -> &str {
        "radius"
    }

    fn deliver<'a>(
        &'a self,
        record: &'a SessionStats,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + 'a>> {
        Box::pin(self.send(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(port: u16, tries: u32) -> RadiusSettings {
        RadiusSettings {
            host: "127.0.0.1".into(),
            port,
            secret: "s3cret".into(),
            timeout: Duration::from_millis(300),
            tries,
            bind: None,
            attributes: SipAttributes::default(),
        }
    }

    /// A server that drops the first `drop` requests, answers one with a
    /// wrong secret, then answers properly.
    async fn fake_server(drop: usize) -> (u16, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
                got.push(buf[..n].to_vec());
                if got.len() <= drop {
                    continue;
                }
                let mut auth = [0u8; 16];
                auth.copy_from_slice(&buf[4..20]);
                let req = packet::Request { id: buf[1], authenticator: auth, bytes: buf[..n].to_vec() };
                let bad = packet::encode_response(&req, &[], b"wrong");
                sock.send_to(&bad, peer).await.unwrap();
                let good = packet::encode_response(&req, &[], b"s3cret");
                sock.send_to(&good, peer).await.unwrap();
                return got;
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn retransmits_until_answered() {
        let (port, server) = fake_server(2).await;
        let backend = RadiusBackend::new(settings(port, 3));
        backend.deliver(&crate::tests::stats("c1")).await.unwrap();
        let got = server.await.unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|p| p == &got[0]), "a retransmission is the same packet");
        assert_eq!(got[0][0], packet::ACCOUNTING_REQUEST);
    }

    #[tokio::test]
    async fn no_answer_is_unavailable() {
        let (port, _server) = fake_server(usize::MAX).await;
        let backend = RadiusBackend::new(settings(port, 2));
        let started = std::time::Instant::now();
        let err = backend.deliver(&crate::tests::stats("c1")).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(600));
        let BackendError::Unavailable(m) = err;
        assert!(m.contains("no valid Accounting-Response after 2 sends"), "{m}");
        // Nobody listening at all (ICMP unreachable) fails the same way.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let backend = RadiusBackend::new(settings(closed, 2));
        assert!(backend.deliver(&crate::tests::stats("c1")).await.is_err());
    }

    #[test]
    fn settings_come_from_client_conf_and_the_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("servers"), "127.0.0.1 s3cret\n").unwrap();
        std::fs::write(
            dir.path().join("client.conf"),
            "acctserver 127.0.0.1:1900\nservers servers\ndictionary nowhere\nradius_timeout 1\nradius_retries 0\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("dictionary"), "ATTRIBUTE Media-Info 230 string\n").unwrap();
        let s = RadiusSettings::load(&dir.path().join("client.conf"), Some(&dir.path().join("dictionary"))).unwrap();
        assert_eq!(s.port, 1900);
        assert_eq!(s.tries, 1);
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!(s.attributes, SipAttributes { media_info: 230, ..SipAttributes::default() });
        let s = RadiusSettings::load(&dir.path().join("client.conf"), Some(&dir.path().join("missing"))).unwrap();
        assert_eq!(s.attributes, SipAttributes::default());
    }
}
