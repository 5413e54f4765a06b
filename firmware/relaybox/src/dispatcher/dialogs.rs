//! Ending dialogs whose media timed out: the relay reported `expired`, the
//! call still has a dialog in the proxy, so ask the proxy to send the BYEs
//! (OpenSIPS `dlg_end_dlg`, Kamailio `dlg.end_dlg`; JSON-RPC 2.0, encoded by
//! `relaybox_proto::mi`) over its management interface: a datagram socket,
//! a FIFO or HTTP (`[OpenSIPS] transport`).
//!
//! The proxy answers a datagram or FIFO request on a socket or FIFO the
//! dispatcher makes in `reply_dir` for each request. A proxy running as its
//! own user must be allowed to write to it: it gets `reply_mode` and, when
//! set, `reply_owner`/`reply_group` (a socket made with the umask's mode,
//! 0755 for root, made OpenSIPS fail with "Permission denied").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use relaybox_config::{MiTransport, OpenSipsConfig, ProxyFlavor};
use relaybox_proto::mi::{self, Answer, EndDialog, HttpUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixDatagram;
use tokio::sync::Semaphore;

/// The most a proxy's answer may be.
const MAX_ANSWER: usize = 64 * 1024;

pub(crate) struct DialogCloser {
    flavor: ProxyFlavor,
    transport: Transport,
    reply: ReplyFiles,
    timeout: Duration,
    next_name: AtomicU64,
    limit: Semaphore,
}

enum Transport {
    Datagram(PathBuf),
    Fifo(PathBuf),
    Http(HttpUrl),
}

/// Where and how the reply sockets and FIFOs are made.
struct ReplyFiles {
    dir: PathBuf,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
}

/// A dialog the proxy ended: the form of its id that it took, and its answer.
#[derive(Debug)]
pub(crate) struct Ended {
    pub sent: String,
    pub answer: String,
}

impl DialogCloser {
    /// Fails when a setting cannot be used (an unknown `reply_owner`, a bad `url`).
    pub fn new(config: &OpenSipsConfig) -> anyhow::Result<Self> {
        let transport = match config.transport {
            MiTransport::Datagram => Transport::Datagram(config.socket_path.clone()),
            MiTransport::Fifo => Transport::Fifo(config.socket_path.clone()),
            MiTransport::Http => {
                Transport::Http(HttpUrl::parse(&config.url).map_err(|e| anyhow::anyhow!("[OpenSIPS] url: {e}"))?)
            }
        };
        let owner = match &config.reply_owner {
            Some(name) => Some(account_id(name, Path::new("/etc/passwd")).context("[OpenSIPS] reply_owner")?),
            None => None,
        };
        let group = match &config.reply_group {
            Some(name) => Some(account_id(name, Path::new("/etc/group")).context("[OpenSIPS] reply_group")?),
            None => None,
        };
        Ok(DialogCloser {
            flavor: config.proxy,
            transport,
            reply: ReplyFiles { dir: config.reply_dir.clone(), mode: config.reply_mode, owner, group },
            timeout: config.reply_timeout,
            next_name: AtomicU64::new(1),
            limit: Semaphore::new(config.max_connections),
        })
    }

    /// Asks the proxy to end the dialog the module called `dialog_id`; for
    /// OpenSIPS first as `dlg_list` names it, then (after a 404, OpenSIPS 3.0)
    /// as the module's number. Returns the form that worked and the answer.
    pub async fn end(&self, dialog_id: &str) -> Result<Ended, String> {
        let attempts = EndDialog::new(self.proxy(), dialog_id).map_err(|e| e.to_string())?;
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        let mut attempt = 0;
        loop {
            // Not guessable (the answer must carry it, see Answer::parse_for),
            // and below 2^31: OpenSIPS prints a larger id as a float.
            let id = u64::from(rand::random::<u32>() >> 1).max(1);
            let request = attempts.request(attempt, id);
            let sent = attempts.forms()[attempt].as_text();
            let text = self.exchange(&request, id).await?;
            let answer = Answer::parse_for(&text, id).map_err(|e| format!("unreadable answer to {sent:?}: {e}"))?;
            match (&answer, attempts.next_after(attempt, &answer)) {
                (Answer::Done(_), _) => return Ok(Ended { sent, answer: text.trim().to_string() }),
                (Answer::Refused { code, message }, Some(next)) => {
                    tracing::info!(
                        dialog_id = %dialog_id,
                        "the proxy answered {code} {message:?} to {sent:?}; trying {:?} (OpenSIPS 3.0 and older)",
                        attempts.forms()[next].as_text()
                    );
                    attempt = next;
                }
                (Answer::Refused { code, message }, None) => {
                    return Err(format!("the proxy refused {sent:?}: {code} {message}"))
                }
            }
        }
    }

    fn proxy(&self) -> mi::Proxy {
        match self.flavor {
            ProxyFlavor::OpenSips => mi::Proxy::OpenSips,
            ProxyFlavor::Kamailio => mi::Proxy::Kamailio,
        }
    }

    /// Sends one request and returns the proxy's answer, within `reply_timeout`.
    async fn exchange(&self, request: &str, id: u64) -> Result<String, String> {
        let limit = self.timeout;
        let work = async {
            match &self.transport {
                Transport::Datagram(path) => self.datagram(path, request, id).await,
                Transport::Fifo(path) => self.fifo(path, request).await,
                Transport::Http(url) => http(url, request).await,
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from {} within {limit:?}", self.target())),
        }
    }

    fn target(&self) -> String {
        match &self.transport {
            Transport::Datagram(p) | Transport::Fifo(p) => p.display().to_string(),
            Transport::Http(u) => format!("http://{}{}", u.authority, u.path),
        }
    }

    /// A fresh name for a reply socket or FIFO. No `.` or `/` (a FIFO's name
    /// goes into the request as it is); not the request's id.
    fn reply_name(&self) -> String {
        let n = self.next_name.fetch_add(1, Ordering::Relaxed);
        format!("relaybox_dlg_{}_{n}_{:08x}", std::process::id(), rand::random::<u32>())
    }

    async fn datagram(&self, target: &Path, request: &str, id: u64) -> Result<String, String> {
        let own = self.reply.dir.join(format!("{}.sock", self.reply_name()));
        let socket = UnixDatagram::bind(&own).map_err(|e| format!("binding {}: {e}", own.display()))?;
        let _cleanup = RemoveOnDrop(own.clone());
        self.reply.grant(&own)?;
        socket
            .send_to(request.as_bytes(), target)
            .await
            .map_err(|e| format!("sending to {}: {e}", target.display()))?;
        let mut buf = vec![0u8; MAX_ANSWER];
        // The reply socket is writable by others than the proxy (which
        // answers from another socket than the one it listens on, so the
        // sender's address proves nothing): only the answer to this request
        // counts, anything else is skipped (the first one logged, the rest counted).
        let mut skipped = 0u64;
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| format!("reading the answer on {}: {e}", own.display()))?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if Answer::parse_for(&text, id).is_ok() {
                if skipped > 1 {
                    tracing::warn!(reply_socket = %own.display(), "skipped {skipped} datagrams before the proxy's answer");
                }
                return Ok(text);
            }
            if skipped == 0 {
                tracing::warn!(
                    reply_socket = %own.display(),
                    "ignored a datagram that is not the proxy's answer to request {id}: {}",
                    text.chars().take(200).collect::<String>()
                );
            }
            skipped += 1;
        }
    }

    async fn fifo(&self, target: &Path, request: &str) -> Result<String, String> {
        let name = self.reply_name();
        let line = mi::fifo_request(self.proxy(), &name, request).map_err(|e| e.to_string())?;
        let own = self.reply.dir.join(&name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &own,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| format!("making the FIFO {}: {e}", own.display()))?;
        let _cleanup = RemoveOnDrop(own.clone());
        self.reply.grant(&own)?;
        // Read-write: the FIFO has a writer (us) until the proxy's, so reads
        // wait instead of ending at once.
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&own)
            .map_err(|e| format!("opening {}: {e}", own.display()))?;
        // Fails at once (ENXIO) when nobody reads the proxy's FIFO.
        let mut writer = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(target)
            .map_err(|e| format!("opening the proxy's FIFO {}: {e}", target.display()))?;
        writer.write_all(line.as_bytes()).await.map_err(|e| format!("writing to {}: {e}", target.display()))?;
        drop(writer);
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| format!("reading {}: {e}", own.display()))?;
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || complete_answer(&answer) {
                return Ok(String::from_utf8_lossy(&answer).into_owned());
            }
            if answer.len() > MAX_ANSWER {
                return Err(format!("the answer on {} is longer than {MAX_ANSWER} bytes", own.display()));
            }
        }
    }
}

/// A whole answer: a JSON value, or a status line ended by a newline.
fn complete_answer(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok()
        || (bytes.ends_with(b"\n") && bytes.first().is_some_and(u8::is_ascii_digit))
}

async fn http(url: &HttpUrl, request: &str) -> Result<String, String> {
    let target = format!("http://{}{}", url.authority, url.path);
    let mut tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    tcp.write_all(url.post(request).as_bytes()).await.map_err(|e| format!("sending to {target}: {e}"))?;
    let mut response = Vec::new();
    (&mut tcp)
        .take(MAX_ANSWER as u64 + 4096)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("reading the answer of {target}: {e}"))?;
    let (status, body) = mi::http_response(&response).map_err(|e| format!("{target}: {e}"))?;
    if status != 200 && Answer::parse(&body).is_err() {
        return Err(format!("{target} answered HTTP {status}: {}", body.chars().take(200).collect::<String>()));
    }
    Ok(body)
}

impl ReplyFiles {
    /// Gives a reply socket or FIFO its mode, owner and group.
    fn grant(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        if self.owner.is_some() || self.group.is_some() {
            std::os::unix::fs::chown(path, self.owner, self.group)
                .map_err(|e| format!("reply_owner/reply_group on {}: {e}", path.display()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| format!("reply_mode on {}: {e}", path.display()))
    }
}

/// Deletes a reply socket or FIFO however the exchange ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The uid or gid of `name` (a number is taken as it is) from a
/// passwd/group-format file.
fn account_id(name: &str, file: &Path) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?;
            (n == name).then(|| id.parse::<u32>().ok()).flatten()
        })
        .next()
        .with_context(|| format!("{name:?} is not in {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, transport: MiTransport, socket: &Path) -> OpenSipsConfig {
        OpenSipsConfig {
            socket_path: socket.to_owned(),
            transport,
            reply_dir: dir.to_owned(),
            reply_timeout: Duration::from_secs(2),
            ..OpenSipsConfig::default()
        }
    }

    #[test]
    fn account_ids_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\nproxy:x:998:997::/:/usr/sbin/nologin\n").unwrap();
        assert_eq!(account_id("proxy", &passwd).unwrap(), 998);
        assert_eq!(account_id("1234", &passwd).unwrap(), 1234);
        assert!(account_id("nobody-here", &passwd).unwrap_err().to_string().contains("not in"));
    }

    /// A fake OpenSIPS MI datagram socket: answers 404 to every id but the
    /// number form, like OpenSIPS 3.0; records what it got and the reply
    /// socket's mode.
    #[tokio::test]
    async fn datagram_retries_with_the_number_and_the_reply_socket_is_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let proxy_path = dir.path().join("opensips.sock");
        let proxy = UnixDatagram::bind(&proxy_path).unwrap();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            for _ in 0..2 {
                let (n, from) = proxy.recv_from(&mut buf).await.unwrap();
                let req: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
                let from = from.as_pathname().unwrap().to_owned();
                let mode = std::fs::metadata(&from).unwrap().permissions().mode() & 0o777;
                let id = req["params"]["dialog_id"].as_str().unwrap().to_owned();
                let answer = if id == "17511492765899" {
                    serde_json::json!({"jsonrpc": "2.0", "result": "OK", "id": req["id"]})
                } else {
                    serde_json::json!({"jsonrpc": "2.0", "error": {"code": 404, "message": "Requested Dialog not found"}, "id": req["id"]})
                };
                proxy.send_to(answer.to_string().as_bytes(), &from).await.unwrap();
                got.push((id, mode));
            }
            got
        });
        let closer = DialogCloser::new(&config(dir.path(), MiTransport::Datagram, &proxy_path)).unwrap();
        let ended = closer.end("17511492765899").await.unwrap();
        assert_eq!(ended.sent, "17511492765899");
        let got = server.await.unwrap();
        assert_eq!(got, [("def.bc84e463".to_string(), 0o666), ("17511492765899".to_string(), 0o666)]);
        // The reply sockets are gone.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    /// Another local user answers first on the reply socket (it is mode
    /// 0666) without knowing the request's id: its datagram is ignored, only
    /// the proxy's answer counts.
    #[tokio::test]
    async fn answers_from_others_than_the_proxy_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let proxy_path = dir.path().join("opensips.sock");
        let proxy = UnixDatagram::bind(&proxy_path).unwrap();
        let stranger = UnixDatagram::bind(dir.path().join("stranger.sock")).unwrap();
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = proxy.recv_from(&mut buf).await.unwrap();
            let req: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            let from = from.as_pathname().unwrap().to_owned();
            let guess = req["id"].as_u64().unwrap() ^ 1;
            let fake = serde_json::json!({"jsonrpc": "2.0", "result": "OK", "id": guess});
            stranger.send_to(fake.to_string().as_bytes(), &from).await.unwrap();
            let fake = serde_json::json!({"jsonrpc": "2.0", "result": "OK"});
            stranger.send_to(fake.to_string().as_bytes(), &from).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let real = serde_json::json!({"jsonrpc": "2.0", "error": {"code": 500, "message": "no"}, "id": req["id"]});
            proxy.send_to(real.to_string().as_bytes(), &from).await.unwrap();
        });
        let closer = DialogCloser::new(&config(dir.path(), MiTransport::Datagram, &proxy_path)).unwrap();
        let e = closer.end("17511492765899").await.unwrap_err();
        assert!(e.contains("500"), "{e}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn fifo_request_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        let proxy_fifo = dir.path().join("opensips_fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &proxy_fifo, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
        let mut reader =
            tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(&proxy_fifo).unwrap();
        let reply_dir = dir.path().to_owned();
        let server = tokio::spawn(async move {
            let mut line = Vec::new();
            let mut buf = [0u8; 1024];
            while !line.ends_with(b"\n") {
                let n = reader.read(&mut buf).await.unwrap();
                line.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8(line).unwrap();
            let rest = line.strip_prefix(':').unwrap();
            let (name, json) = rest.split_once(':').unwrap();
            let req: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
            let mut out = tokio::net::unix::pipe::OpenOptions::new().open_sender(reply_dir.join(name)).unwrap();
            let answer = serde_json::json!({"jsonrpc": "2.0", "result": "OK", "id": req["id"]});
            out.write_all(answer.to_string().as_bytes()).await.unwrap();
            req
        });
        let closer = DialogCloser::new(&config(dir.path(), MiTransport::Fifo, &proxy_fifo)).unwrap();
        let ended = closer.end("17511492765899").await.unwrap();
        assert_eq!(ended.sent, "def.bc84e463");
        let req = server.await.unwrap();
        assert_eq!(req["method"], "dlg_end_dlg");
        assert_eq!(req["params"]["dialog_id"], "def.bc84e463");
    }

    #[tokio::test]
    async fn http_request_and_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tcp.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .unwrap();
                    if body.len() >= len {
                        let req: serde_json::Value = serde_json::from_str(body).unwrap();
                        let body = serde_json::json!({"jsonrpc": "2.0", "result": "OK", "id": req["id"]}).to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        tcp.write_all(answer.as_bytes()).await.unwrap();
                        return text;
                    }
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), MiTransport::Http, Path::new("/nonexistent"));
        cfg.url = format!("http://127.0.0.1:{port}/mi");
        let closer = DialogCloser::new(&cfg).unwrap();
        let ended = closer.end("17511492765899").await.unwrap();
        assert_eq!(ended.sent, "def.bc84e463");
        let text = server.await.unwrap();
        assert!(text.starts_with("POST /mi HTTP/1.1\r\n"), "{text}");
        assert!(text.contains(r#""dialog_id":"def.bc84e463""#), "{text}");
    }

    #[tokio::test]
    async fn a_proxy_that_is_not_there_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let closer =
            DialogCloser::new(&config(dir.path(), MiTransport::Datagram, &dir.path().join("missing"))).unwrap();
        let e = closer.end("5").await.unwrap_err();
        assert!(e.contains("sending to"), "{e}");
        let closer = DialogCloser::new(&config(dir.path(), MiTransport::Fifo, &dir.path().join("missing"))).unwrap();
        let e = closer.end("5").await.unwrap_err();
        assert!(e.contains("opening the proxy's FIFO"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "reply files left behind");
    }
}
