//! Mixed deployments with AG Projects' MediaProxy 4.1.2 (issue #12): its
//! real dispatcher, kernel-forwarding relay and `test/*.py` scripts (from
//! ../shared/vendor, installed into target/mediaproxy by ci/mediaproxy.sh)
//! against relaybox, each world in a network namespace of its own:
//! - a relaybox dispatcher serving a MediaProxy relay (rustls server,
//!   GnuTLS client): calls from the module's protocol with media, database
//!   accounting, `summary`/`sessions`, an expired call's dialog ended;
//! - a MediaProxy dispatcher serving a relaybox relay (GnuTLS server, rustls
//!   client): the same from the module side, with MediaProxy's management
//!   port and its statistics log;
//! - the module requests where MediaProxy and relaybox used to answer
//!   differently, sent to both, and MediaProxy's own test scripts run
//!   against both, outcomes compared.
//!
//! Certificates come from relaybox-ca, with a version 1 CRL (openssl) as
//! MediaProxy ships; passports are set on every side. The test thread
//! enters its namespace (setns), so the daemons it starts, its phones and
//! its management connections all live there. Needs root: run by
//! ci/test.sh with `--ignored --test-threads=1`.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::netns::ok;
use common::{exchange, management, Daemon, Module, Phone, BIN};
use relaybox_ca::{CertificateAuthority, Subject};

/// The address of the namespace's one interface: relays, phones and
/// MediaProxy's test scripts (its `host.default_ip`) all use it.
const MEDIA_IP: &str = "192.0.2.1";
const LINK_PORT: u16 = 25060;
const MANAGEMENT_PORT: u16 = 25061;
const ORG: &str = "Example Ltd";
/// An OpenSIPS dialog id (`h_entry << 32 | h_id`).
const DIALOG: &str = "4294967303";
/// DIALOG as OpenSIPS 3.1+'s `dlg_end_dlg` takes it: `h_entry.h_id` in
/// reverse hex (4294967303 = 1 << 32 | 7), what the dispatcher sends first.
const DIALOG_MI: &str = "1.7";
/// Seconds a stream may wait for media, on every relay here.
const STREAM_TIMEOUT: u64 = 3;

fn target_dir() -> PathBuf {
    Path::new(BIN).parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Installs MediaProxy once per test process (cached in target/).
fn mediaproxy() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/mediaproxy.sh");
        let out = Command::new("bash").arg(&script).env("CARGO_TARGET_DIR", target_dir()).output().unwrap();
        assert!(
            out.status.success(),
            "ci/mediaproxy.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir().join("mediaproxy")
    })
    .clone()
}

fn python() -> PathBuf {
    mediaproxy().join("venv/bin/python")
}

fn sources() -> PathBuf {
    mediaproxy().join("mediaproxy-4.1.2")
}

/// A network namespace with one interface (MEDIA_IP, a default route so
/// MediaProxy finds its `default_ip`, forwarding on), entered by the
/// calling thread; a CA with dispatcher and relay certificates and a
/// version 1 CRL. Deleted on drop.
struct World {
    ns: String,
    dir: tempfile::TempDir,
    certs: PathBuf,
}

impl World {
    fn new(tag: &str, relay_cn: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let ns = format!("mpx{tag}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ok(&["ip", "netns", "add", &ns]);
        let world = World { ns, dir: tempfile::tempdir().unwrap(), certs: PathBuf::new() };
        let ns = world.ns.as_str();
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        ok(&["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ok(&["ip", "-n", ns, "addr", "add", &format!("{MEDIA_IP}/24"), "dev", "v0"]);
        ok(&["ip", "-n", ns, "link", "set", "v0", "up"]);
        ok(&["ip", "-n", ns, "link", "set", "v1", "up"]);
        ok(&["ip", "-n", ns, "route", "add", "default", "via", "192.0.2.254", "dev", "v0", "onlink"]);
        ok(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        common::netns::wait_links_up(ns);
        let mut world = world;
        world.certs = world.make_certs(relay_cn);
        world
    }

    /// Moves the calling thread (and so whatever it starts) into the
    /// namespace.
    fn enter(&self) {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.ns)).unwrap();
        rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
            .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// relaybox-ca certificates (`dispatcher`, `relay_cn`) and, as
    /// MediaProxy ships it, a version 1 CRL.
    fn make_certs(&self, relay_cn: &str) -> PathBuf {
        let mut ca = CertificateAuthority::create(&Subject::new("Mixed CA").with_org(ORG), 30).unwrap();
        let relay = ca.issue(relaybox_ca::Role::Relay, &Subject::new(relay_cn).with_org(ORG), 30).unwrap();
        let dispatcher =
            ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher").with_org(ORG), 30).unwrap();
        let certs = self.path("certs");
        relaybox_ca::write_certs_dir(&ca, &certs, &relay, &dispatcher).unwrap();
        let ca_dir = self.path("ca");
        ca.save(&ca_dir).unwrap();
        std::fs::write(ca_dir.join("index.txt"), "").unwrap();
        std::fs::write(
            ca_dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = ca\n[ca]\ndatabase = {d}/index.txt\ncertificate = {d}/ca.pem\nprivate_key = {d}/ca.key\ndefault_md = sha256\ndefault_crl_days = 30\n",
                d = ca_dir.display()
            ),
        )
        .unwrap();
        let crl = certs.join("crl.pem");
        let out = Command::new("openssl")
            .args(["ca", "-batch", "-gencrl", "-config"])
            .arg(ca_dir.join("ca.cnf"))
            .arg("-out")
            .arg(&crl)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl ca -gencrl: {}", String::from_utf8_lossy(&out.stderr));
        let text = Command::new("openssl").args(["crl", "-noout", "-text", "-in"]).arg(&crl).output().unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("Version 1 (0x0)"), "not a v1 CRL");
        certs
    }

    /// A relaybox daemon (`dispatcher` or `relay`) with `config`.
    fn relaybox(&self, role: &str, config: &str) -> Daemon {
        let path = self.path(&format!("relaybox-{role}.ini"));
        std::fs::write(&path, config).unwrap();
        let log = self.path(&format!("relaybox-{role}.log"));
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg(role)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// A MediaProxy daemon (`media-dispatcher` or `media-relay`) with
    /// `config` as its config.ini, in the foreground, logging at DEBUG.
    fn mediaproxy(&self, program: &str, config: &str) -> Daemon {
        let dir = self.path(program);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("config.ini"), config).unwrap();
        let log = self.path(&format!("{program}.log"));
        let child = Command::new(python())
            .arg(sources().join(program))
            .args(["--no-fork", "--debug", "--config-dir"])
            .arg(&dir)
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path(&format!("{program}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn relaybox_dispatcher(&self, extra: &str) -> Daemon {
        let d = self.relaybox(
            "dispatcher",
            &format!(
                "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{LINK_PORT}\nlisten_management = 127.0.0.1:{MANAGEMENT_PORT}\nmanagement_use_tls = no\nrelay_timeout = 2\nmodule_timeout = 2\nspool_dir = {}\n{extra}\n[OpenSIPS]\nsocket_path = {}\n[TLS]\ncerts_path = {}\n",
                self.path("dispatcher.sock").display(),
                self.path("spool").display(),
                self.path("opensips.sock").display(),
                self.certs.display()
            ),
        );
        d.wait_log("dispatcher ready", Duration::from_secs(10));
        d
    }

    fn relaybox_relay(&self, passport: &str) -> Daemon {
        self.relaybox(
            "relay",
            &format!(
                "[Relay]\ndispatchers = 127.0.0.1:{LINK_PORT}\nrelay_ip = {MEDIA_IP}\nport_range = 24000:24100\nstream_timeout = {STREAM_TIMEOUT}\nreconnect_delay = 1\ndatapath = userspace\npassport = {passport}\nstate_file = {}\ncontrol_socket = {}\n[TLS]\ncerts_path = {}\n",
                self.path("relay.state").display(),
                self.path("relay.ctl").display(),
                self.certs.display()
            ),
        )
    }

    fn mediaproxy_relay(&self, passport: &str) -> Daemon {
        self.mediaproxy(
            "media-relay",
            &format!(
                "[Relay]\ndispatchers = 127.0.0.1:{LINK_PORT}\nrelay_ip = {MEDIA_IP}\nport_range = 41000:41100\nstream_timeout = {STREAM_TIMEOUT}\nreconnect_delay = 1\ntraffic_sampling_period = 1\npassport = {passport}\n[TLS]\ncerts_path = {}\n",
                self.certs.display()
            ),
        )
    }

    fn mediaproxy_dispatcher(&self, passport: &str) -> Daemon {
        let d = self.mediaproxy(
            "media-dispatcher",
            &format!(
                "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{LINK_PORT}\nlisten_management = 127.0.0.1:{MANAGEMENT_PORT}\nmanagement_use_tls = no\nrelay_timeout = 2\npassport = {passport}\n[OpenSIPS]\nsocket_path = {}\n[TLS]\ncerts_path = {}\n",
                self.path("dispatcher.sock").display(),
                self.path("opensips.sock").display(),
                self.certs.display()
            ),
        );
        let until = Instant::now() + Duration::from_secs(20);
        while !self.path("dispatcher.sock").exists() {
            assert!(Instant::now() < until, "MediaProxy's dispatcher did not start:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn module(&self) -> Module {
        Module::connect(&self.path("dispatcher.sock"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The proxy's management socket as the dispatchers reach it to end a
/// dialog (JSON-RPC in one datagram); records what arrives.
struct FakeProxy {
    socket: UnixDatagram,
}

impl FakeProxy {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        FakeProxy { socket }
    }

    /// The first request within `timeout`, answered as OpenSIPS does.
    fn request(&self, timeout: Duration) -> Option<String> {
        let until = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let id = serde_json::from_str::<serde_json::Value>(&text).map(|v| v["id"].clone()).unwrap_or_default();
                if let Some(path) = from.as_pathname() {
                    let answer = serde_json::json!({"jsonrpc": "2.0", "result": "OK", "id": id}).to_string();
                    let _ = self.socket.send_to(answer.as_bytes(), path);
                }
                return Some(text);
            }
        }
        None
    }
}

/// An `update` exactly as the OpenSIPS/Kamailio module writes it: every
/// header, empty ones included, the CSeq number alone, `signaling_ip`
/// always, `media` only with SDP.
fn module_update(kind: &str, call: &str, from_tag: &str, to_tag: &str, ua: &str, media: &str) -> String {
    let media = if media.is_empty() { String::new() } else { format!("media: {media}\r\n") };
    format!(
        "update\r\ntype: {kind}\r\ndialog_id: {DIALOG}\r\ncall_id: {call}\r\ncseq: 1\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: {from_tag}\r\nto_tag: {to_tag}\r\nuser_agent: {ua}\r\nsignaling_ip: {MEDIA_IP}\r\nmedia_relay: \r\n{media}\r\n"
    )
}

fn module_remove(call: &str, from_tag: &str, to_tag: &str) -> String {
    format!("remove\r\ncall_id: {call}\r\nfrom_tag: {from_tag}\r\nto_tag: {to_tag}\r\n\r\n")
}

fn audio(port: u16) -> String {
    format!("audio:{MEDIA_IP}:{port}:sendrecv:ice=no")
}

/// A phone on the namespace's address.
fn phone() -> Phone {
    let socket = UdpSocket::bind((MEDIA_IP, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    Phone { socket }
}

/// `<ip> <port> ...` → the relay address and ports; panics on anything else.
fn relay_ports(reply: &str) -> (String, Vec<u16>) {
    let mut parts = reply.split_whitespace();
    let ip = parts.next().unwrap_or_default().to_string();
    let ports: Vec<u16> = parts.map(|p| p.parse().unwrap_or_else(|_| panic!("not ports: {reply:?}"))).collect();
    assert!(!ports.is_empty() && ip.parse::<std::net::IpAddr>().is_ok(), "not ports: {reply:?}");
    (ip, ports)
}

/// Sets up a call (offer from the caller, answer from the callee, the
/// callee's user agent `callee_ua`) and returns the relay's two sides:
/// where the caller sends, where the callee sends.
fn answered_call(
    m: &mut Module,
    call: &str,
    caller: &Phone,
    callee: &Phone,
    callee_ua: &str,
) -> (SocketAddr, SocketAddr) {
    let (offer, _) =
        m.request(&module_update("request", call, &format!("ft-{call}"), "", "caller-ua", &audio(caller.port())));
    let (ip, to_callee) = relay_ports(&offer);
    let (answer, _) = m.request(&module_update(
        "reply",
        call,
        &format!("ft-{call}"),
        &format!("tt-{call}"),
        callee_ua,
        &audio(callee.port()),
    ));
    let (ip2, to_caller) = relay_ports(&answer);
    assert_eq!(ip, ip2);
    let ip: std::net::IpAddr = ip.parse().unwrap();
    (SocketAddr::new(ip, to_caller[0]), SocketAddr::new(ip, to_callee[0]))
}

/// Sends media both ways and asserts most of it arrived.
fn talk(caller: &Phone, callee: &Phone, sides: (SocketAddr, SocketAddr), what: &str) {
    let (at_callee, at_caller) = exchange(caller, callee, sides.0, sides.1, 20);
    assert!(at_callee >= 10 && at_caller >= 10, "{what}: media relayed {at_callee}/20 and {at_caller}/20");
}

/// Waits until `done` holds for a management command's JSON answer.
fn management_until(command: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let line = management(MANAGEMENT_PORT, command);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) {
            if done(&v) {
                return v;
            }
        }
        assert!(Instant::now() < until, "{what}: `{command}` answered {line:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sqlite_rows(db: &Path, want: usize, log: &Daemon) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", db.display());
        for _ in 0..100 {
            if let Ok(pool) = sqlx::AnyPool::connect(&url).await {
                let q = sqlx::query_as::<_, (String, String)>("SELECT call_id, info FROM media_sessions ORDER BY id");
                if let Ok(rows) = q.fetch_all(&pool).await {
                    if rows.len() >= want {
                        return rows;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{want} accounting rows never arrived:\n{}", log.log_text());
    })
}

#[test]
#[ignore = "needs root, network namespaces and MediaProxy (ci/mediaproxy.sh): run by ci/test.sh"]
fn relaybox_dispatcher_serves_a_mediaproxy_relay() {
    mediaproxy();
    let w = World::new("a", "mp-relay");
    w.enter();
    let db = w.path("acct.db");
    let d = w.relaybox_dispatcher(&format!(
        "passport = O:{ORG}, CN:mp-relay\naccounting = database\n[Database]\ndburi = sqlite://{}\n",
        db.display()
    ));
    let proxy = FakeProxy::bind(&w.path("opensips.sock"));
    let r = w.mediaproxy_relay(&format!("O:{ORG}, CN:dispatcher"));
    // rustls (server) and GnuTLS (client) agree on TLS 1.3; each side's
    // passport accepts the other.
    let connected = d.wait_log("relay connected", Duration::from_secs(20));
    let line = connected.lines().find(|l| l.contains("relay connected")).unwrap();
    assert!(line.contains("CN=mp-relay") && line.contains("tls=TLSv1_3"), "{line}");
    r.wait_log("Relay connected to dispatcher dispatcher", Duration::from_secs(10));
    // The relay's summary (float bps_relayed) tells its media address.
    d.wait_log(&format!("relay media address peer=127.0.0.1 media_ip={MEDIA_IP}"), Duration::from_secs(10));

    let mut m = w.module();
    // A call with media, then BYE: accounted.
    let (caller, callee) = (phone(), phone());
    let sides = answered_call(&mut m, "mp-a1", &caller, &callee, "callee-ua");
    talk(&caller, &callee, sides, "through MediaProxy's relay");
    // The relay got the module's lines as the module wrote them.
    let relay_log = r.log_text();
    assert!(relay_log.contains("Line received: cseq: 1 from"), "cseq re-encoded:\n{relay_log}");
    assert!(!relay_log.contains("Line received: to_tag:  from"), "an empty to_tag was forwarded");

    // While a second call is carried, summary and sessions show the relay
    // and its calls (MediaProxy's JSON: floats and nulls).
    let (caller2, callee2) = (phone(), phone());
    let sides2 = answered_call(&mut m, "mp-a2", &caller2, &callee2, "callee-ua");
    talk(&caller2, &callee2, sides2, "second call");
    // `bps_relayed` is a float once the relay sampled (every second here).
    std::thread::sleep(Duration::from_millis(1500));
    let summary =
        management_until("summary", "MediaProxy relay's summary", |v| v.as_array().is_some_and(|a| a.len() == 1));
    assert!(summary[0]["bps_relayed"].is_u64(), "{summary}");
    assert_eq!(
        (summary[0]["ip"].as_str(), summary[0]["version"].as_str()),
        (Some(MEDIA_IP), Some("4.1.2")),
        "{summary}"
    );
    assert_eq!(summary[0]["session_count"], 2, "{summary}");
    let sessions =
        management_until("sessions", "MediaProxy relay's sessions", |v| v.as_array().is_some_and(|a| a.len() == 2));
    let ids: Vec<&str> = sessions.as_array().unwrap().iter().filter_map(|s| s["call_id"].as_str()).collect();
    assert!(ids.contains(&"mp-a1") && ids.contains(&"mp-a2"), "{sessions}");
    assert!(sessions.as_array().unwrap().iter().all(|s| s["relay_ip"] == MEDIA_IP), "{sessions}");

    assert_eq!(m.request(&module_remove("mp-a1", "ft-mp-a1", "tt-mp-a1")).0, "removed\r\n");
    let rows = sqlite_rows(&db, 1, &d);
    let info: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(rows[0].0, "mp-a1");
    assert_eq!(info["to_tag"], "tt-mp-a1", "the relay kept the callee's tag: {info}");
    assert_eq!((info["relay_ip"].as_str(), info["dialog_id"].as_str()), (Some(MEDIA_IP), Some(DIALOG)), "{info}");
    assert!(info["start_time"].as_f64().is_some_and(|t| t > 1.6e9), "{info}");
    assert_eq!(info["streams"][0]["status"], "closed", "{info}");
    assert_eq!(info["timed_out"], false, "MediaProxy's dispatcher adds timed_out: {info}");
    // A second remove of the same call: `error`, as from MediaProxy's dispatcher.
    assert_eq!(m.request(&module_remove("mp-a1", "ft-mp-a1", "tt-mp-a1")).0, "error\r\n");

    // An answered call whose media never starts expires on the relay: the
    // dispatcher accounts it and asks the proxy to end the dialog.
    let (caller3, callee3) = (phone(), phone());
    answered_call(&mut m, "mp-a3", &caller3, &callee3, "callee-ua");
    let request = proxy.request(Duration::from_secs(STREAM_TIMEOUT + 15)).unwrap_or_else(|| {
        panic!("no dialog ended:\n{}\n{}", d.log_text(), r.log_text());
    });
    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!(
        (request["method"].as_str(), request["params"]["dialog_id"].as_str()),
        (Some("dlg_end_dlg"), Some(DIALOG_MI))
    );
    let rows = sqlite_rows(&db, 2, &d);
    let expired: serde_json::Value = serde_json::from_str(&rows[1].1).unwrap();
    assert_eq!(rows[1].0, "mp-a3");
    assert_eq!(expired["streams"][0]["status"], "no-traffic timeout", "{expired}");
    assert_eq!((&expired["timed_out"], &expired["all_streams_ice"]), (&true.into(), &false.into()), "{expired}");
    // The BYE the proxy then sends: `removed`, as MediaProxy's dispatcher
    // answers it; a second one finds no call.
    assert_eq!(m.request(&module_remove("mp-a3", "ft-mp-a3", "tt-mp-a3")).0, "removed\r\n");
    assert_eq!(m.request(&module_remove("mp-a3", "ft-mp-a3", "tt-mp-a3")).0, "error\r\n");
    assert!(!d.log_text().contains("bad s"), "a relay answer was refused:\n{}", d.log_text());
    drop(m);
    assert_eq!(w.module().request(&module_remove("mp-a2", "ft-mp-a2", "tt-mp-a2")).0, "removed\r\n");
    sqlite_rows(&db, 3, &d);
}

/// The statistics MediaProxy's dispatcher logged for `call` (Python's repr
/// of the relay's JSON).
fn mediaproxy_statistics(d: &Daemon, call: &str) -> String {
    let text = d.wait_log_for(&format!("statistics of {call}"), Duration::from_secs(20), |t| {
        t.lines().any(|l| l.contains("statistics: {") && l.contains(&format!("'call_id': '{call}'")))
    });
    text.lines()
        .find(|l| l.contains("statistics: {") && l.contains(&format!("'call_id': '{call}'")))
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root, network namespaces and MediaProxy (ci/mediaproxy.sh): run by ci/test.sh"]
fn mediaproxy_dispatcher_serves_a_relaybox_relay() {
    mediaproxy();
    let w = World::new("b", "rb-relay");
    w.enter();
    let d = w.mediaproxy_dispatcher(&format!("O:{ORG}, CN:rb-relay"));
    let proxy = FakeProxy::bind(&w.path("opensips.sock"));
    // A relay whose passport the dispatcher fails says so and stays away.
    let wrong = w.relaybox_relay(&format!("O:{ORG}, CN:somebody-else"));
    wrong.wait_log("fails the passport", Duration::from_secs(20));
    drop(wrong);
    let r = w.relaybox_relay(&format!("O:{ORG}, CN:dispatcher"));
    // GnuTLS (server) and rustls (client): TLS 1.3, passports both ways.
    let text = r.wait_log("connected to dispatcher", Duration::from_secs(20));
    let line = text.lines().find(|l| l.contains("connected to dispatcher")).unwrap();
    assert!(line.contains("tls=TLSv1_3"), "{line}");
    d.wait_log("Dispatcher connected to relay rb-relay", Duration::from_secs(10));

    let mut m = w.module();
    // A call with media; the callee's phone sends no User-Agent.
    let (caller, callee) = (phone(), phone());
    let sides = answered_call(&mut m, "rb-b1", &caller, &callee, "");
    talk(&caller, &callee, sides, "through relaybox's relay");
    // A ringing call and an answered one, as MediaProxy's management port
    // shows them: no streams before the answer; a running stream's end_time
    // is the duration.
    m.request(&module_update("request", "rb-b2", "ft-rb-b2", "", "caller-ua", &audio(phone().port())));
    let sessions = management_until("sessions", "relaybox relay's sessions", |v| {
        v.as_array().is_some_and(|a| a.len() == 2 && a.iter().any(|s| s["duration"].as_u64() >= Some(1)))
    });
    for s in sessions.as_array().unwrap() {
        match s["call_id"].as_str() {
            Some("rb-b1") => {
                assert_eq!(s["streams"][0]["end_time"], s["duration"], "{s}");
                assert_eq!(
                    (s["callee_ua"].as_str(), &s["username"]),
                    (Some("Unknown"), &serde_json::Value::Null),
                    "{s}"
                );
                assert!(s["start_time"].is_f64(), "{s}");
            }
            Some("rb-b2") => assert_eq!(s["streams"], serde_json::json!([]), "{s}"),
            other => panic!("unexpected session {other:?}: {s}"),
        }
    }
    let summary =
        management_until("summary", "relaybox relay's summary", |v| v.as_array().is_some_and(|a| a.len() == 1));
    assert_eq!(
        (summary[0]["ip"].as_str(), summary[0]["status"].as_str()),
        (Some(MEDIA_IP), Some("active")),
        "{summary}"
    );

    // BYE: MediaProxy's dispatcher reads relaybox's statistics and logs
    // them for its accounting.
    assert_eq!(m.request(&module_remove("rb-b1", "ft-rb-b1", "tt-rb-b1")).0, "removed\r\n");
    let stats = mediaproxy_statistics(&d, "rb-b1");
    assert!(stats.contains("'username': None") && stats.contains("'callee_ua': 'Unknown'"), "{stats}");
    assert!(stats.contains("'to_tag': 'tt-rb-b1'") && stats.contains("'status': 'closed'"), "{stats}");
    let start = stats.split("'start_time': ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_default();
    assert!(start.contains('.'), "start_time is not a float as MediaProxy's: {start} in {stats}");

    // The ringing call is cancelled (remove), then an answered call without
    // media expires on the relay and MediaProxy's dispatcher ends its dialog.
    assert_eq!(m.request(&module_remove("rb-b2", "ft-rb-b2", "")).0, "removed\r\n");
    let (caller3, callee3) = (phone(), phone());
    answered_call(&mut m, "rb-b3", &caller3, &callee3, "callee-ua");
    let request = proxy.request(Duration::from_secs(STREAM_TIMEOUT + 15)).unwrap_or_else(|| {
        panic!("no dialog ended:\n{}\n{}", d.log_text(), r.log_text());
    });
    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!(request["method"], "dlg_end_dlg", "{request}");
    assert_eq!(request["params"]["dialog_id"].as_str().or(request["params"][0].as_str()), Some(DIALOG), "{request}");
    let stats = mediaproxy_statistics(&d, "rb-b3");
    assert!(stats.contains("'status': 'no-traffic timeout'") && stats.contains("'timed_out': True"), "{stats}");
    // MediaProxy's dispatcher answers the BYE that follows `removed`, and a
    // second one `error` (relaybox's dispatcher does the same, test above).
    assert_eq!(m.request(&module_remove("rb-b3", "ft-rb-b3", "tt-rb-b3")).0, "removed\r\n");
    assert_eq!(m.request(&module_remove("rb-b3", "ft-rb-b3", "tt-rb-b3")).0, "error\r\n");
}

/// How one dispatcher + relay pair answers `requests`, normalised:
/// `ports N` for a relay address with N ports, else the line.
fn answers(w: &World, requests: &[String]) -> Vec<String> {
    let mut m = w.module();
    requests
        .iter()
        .map(|r| {
            let line = m.request(r).0.trim_end().to_string();
            let mut parts = line.split_whitespace();
            match (parts.next().map(|ip| ip.parse::<std::net::IpAddr>()), parts.count()) {
                (Some(Ok(_)), n) if n > 0 => format!("ports {n}"),
                _ => line,
            }
        })
        .collect()
}

/// The requests where relaybox used to answer otherwise than MediaProxy.
fn differing_requests() -> Vec<String> {
    let json_ip = format!(r#"{{"signaling_ip": "{MEDIA_IP}", "destination_ip": "{MEDIA_IP}", "username": "alice"}}"#);
    vec![
        // Media items without parameters (MediaProxy's test scripts).
        module_update("request", "d1", "f1", "", "ua", &format!("audio:{MEDIA_IP}:30000:sendrecv")),
        // Several parameters.
        module_update("request", "d2", "f2", "", "ua", &format!("audio:{MEDIA_IP}:30002:sendrecv:ice=no:foo=bar")),
        // A media type relaybox did not know.
        module_update("request", "d3", "f3", "", "ua", &format!("noise:{MEDIA_IP}:30004:sendrecv:ice=no")),
        // signaling_ip as JSON (a script's signaling_ip_avp).
        module_update("request", "d4", "f4", "", "ua", &audio(30006))
            .replace(&format!("signaling_ip: {MEDIA_IP}"), &format!("signaling_ip: {json_ip}")),
        // A reply without SDP for a call nobody has.
        module_update("reply", "d5", "f5", "t5", "ua", ""),
        // Remove of a call nobody has; a call removed twice.
        module_remove("d6", "f6", "t6"),
        module_remove("d1", "f1", ""),
        module_remove("d1", "f1", ""),
    ]
}

/// MediaProxy's test scripts to compare: those that end by themselves
/// within their own timers (the others wait forever even against
/// MediaProxy; icetest2 only sometimes), covering setup, rejected and added
/// streams, updates and hold.
const SCRIPTS: &[&str] = &[
    "setuptest1.py",
    "setuptest2.py",
    "setuptest4.py",
    "setuptest5.py",
    "setuptest6.py",
    "setuptest7.py",
    "updatetest1.py",
    "updatetest4.py",
    "holdtest3.py",
];

/// A copy of MediaProxy's test/ directory that sends what the proxies'
/// module always sends (`signaling_ip`, `:ice=no` on media items), with a
/// config.ini pointing at `socket`.
fn scripts_for(w: &World, socket: &Path) -> PathBuf {
    let dir = w.path("test");
    let _ = std::fs::remove_dir_all(&dir);
    ok(&["cp", "-r", sources().join("test").to_str().unwrap(), dir.to_str().unwrap()]);
    let common = std::fs::read_to_string(dir.join("common.py")).unwrap();
    let patched =
        common.replace("dialog_id='1234567890')", "dialog_id='1234567890', signaling_ip=default_host_ip)").replace(
            "return [(media_type, ip, port, direction, parameters) for",
            "return [(media_type, ip, port, direction, dict(parameters, ice=parameters.get('ice', 'no'))) for",
        );
    assert_eq!(patched.matches("signaling_ip=default_host_ip").count(), 2, "MediaProxy's common.py changed");
    assert!(patched.contains("ice=parameters.get"), "MediaProxy's common.py changed");
    std::fs::write(dir.join("common.py"), patched).unwrap();
    std::fs::write(dir.join("config.ini"), format!("[Dispatcher]\nsocket = {}\n", socket.display())).unwrap();
    dir
}

/// Runs each script (60 s at most) and returns what it reported, as a
/// multiset of normalised lines: addresses and port numbers left out.
fn run_scripts(dir: &Path) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for script in SCRIPTS {
        let log = dir.join(format!("{script}.out"));
        let status = Command::new("timeout")
            .args(["60", python().to_str().unwrap(), script])
            .current_dir(dir)
            .env("PYTHONPATH", sources())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut events: BTreeMap<String, u32> = BTreeMap::new();
        for line in text.lines() {
            let l = line.trim();
            let event = if let Some(rest) = l.strip_prefix("got ip/ports from dispatcher: ") {
                format!("ports {}", rest.split_whitespace().count().saturating_sub(1))
            } else if l.starts_with("received media") || l.starts_with("got ") || l.starts_with("connection refused") {
                l.split(" from ").next().unwrap_or(l).to_string()
            } else {
                continue;
            };
            *events.entry(event).or_default() += 1;
        }
        if status.code() == Some(124) {
            *events.entry("did not finish in 60 s".into()).or_default() += 1;
        }
        out.insert(script.to_string(), events);
    }
    out
}

#[test]
#[ignore = "needs root, network namespaces and MediaProxy (ci/mediaproxy.sh): run by ci/test.sh"]
fn module_answers_and_mediaproxys_test_scripts_match_mediaproxy() {
    mediaproxy();
    // Two worlds side by side: MediaProxy's dispatcher and relay, relaybox's.
    let mp = std::thread::spawn(|| {
        let w = World::new("m", "relay");
        w.enter();
        let d = w.mediaproxy_dispatcher(&format!("O:{ORG}, CN:relay"));
        let r = w.mediaproxy_relay(&format!("O:{ORG}, CN:dispatcher"));
        d.wait_log("Dispatcher connected to relay relay", Duration::from_secs(20));
        let answers = answers(&w, &differing_requests());
        let scripts = run_scripts(&scripts_for(&w, &w.path("dispatcher.sock")));
        drop((d, r));
        (answers, scripts)
    });
    let w = World::new("r", "relay");
    w.enter();
    let d = w.relaybox_dispatcher(&format!("passport = O:{ORG}, CN:relay\n"));
    let r = w.relaybox_relay(&format!("O:{ORG}, CN:dispatcher"));
    d.wait_log("relay connected", Duration::from_secs(20));
    let ours = answers(&w, &differing_requests());
    let our_scripts = run_scripts(&scripts_for(&w, &w.path("dispatcher.sock")));
    let (theirs, their_scripts) = mp.join().unwrap();

    eprintln!("module answers: MediaProxy {theirs:?}\n                relaybox   {ours:?}");
    assert_eq!(
        theirs,
        ["ports 1", "ports 1", "ports 1", "ports 1", "None", "error", "removed", "error"],
        "MediaProxy answered otherwise than this test expects"
    );
    assert_eq!(ours, theirs, "relaybox answers the module otherwise than MediaProxy");
    let relay_log = r.log_text();
    drop((d, r));

    let mut differ = Vec::new();
    for script in SCRIPTS {
        let (a, b) = (&their_scripts[*script], &our_scripts[*script]);
        eprintln!("{script}:\n  MediaProxy {a:?}\n  relaybox   {b:?}");
        assert!(a.keys().any(|k| k.starts_with("ports")), "{script} got no ports from MediaProxy: {a:?}");
        if a != b {
            differ.push(*script);
        }
    }
    assert!(differ.is_empty(), "scripts with other outcomes against relaybox: {differ:?}\n{relay_log}");
    let _ = std::io::stderr().flush();
}

/// `;name = value` lines of a config.ini sample, by section.
fn sample_defaults(text: &str) -> BTreeMap<(String, String), String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.strip_prefix(';').and_then(|l| l.split_once('=')) {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert((section.clone(), key.to_string()), value.trim().to_string());
            }
        }
    }
    out
}

#[test]
#[ignore = "needs MediaProxy (ci/mediaproxy.sh): run by ci/test.sh"]
fn config_sample_numbers_match_mediaproxys() {
    let theirs = std::fs::read_to_string(sources().join("config.ini.sample")).unwrap();
    let ours_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/config.ini.sample");
    let ours = std::fs::read_to_string(&ours_path).unwrap();
    let (theirs_d, ours_d) = (sample_defaults(&theirs), sample_defaults(&ours));
    let numeric = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '.');
    let mut compared = 0;
    for (key, value) in theirs_d.iter().filter(|(_, v)| numeric(v)) {
        assert_eq!(ours_d.get(key), Some(value), "default of {key:?} differs from MediaProxy 4.1.2's sample");
        compared += 1;
    }
    assert!(compared >= 8, "only {compared} numeric defaults compared");
    // What relaybox's sample says about MediaProxy's port range is
    // MediaProxy's.
    let port_range = &theirs_d[&("Relay".to_string(), "port_range".to_string())];
    for line in ours.lines().filter(|l| l.contains("MediaProxy")) {
        for word in line.split(|c: char| !(c.is_ascii_digit() || c == ':')) {
            if word.split(':').filter(|p| !p.is_empty()).count() == 2 {
                assert_eq!(word, port_range, "{}: {line}", ours_path.display());
            }
        }
    }
    assert!(ours.contains("as in MediaProxy 4.1.2"), "the sample names MediaProxy's default");
}
