//! RADIUS accounting against a real FreeRADIUS (Debian's `freeradius`),
//! started here on 127.0.0.1 with a minimal configuration in a temporary
//! directory, its `detail` module writing the records to a file.
//! Run by ci/test.sh as root:
//! `cargo test -p relaybox-accounting --test radius -- --ignored --test-threads=1`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaybox_accounting::{Accounting, Backend, RadiusBackend, Retry};
use relaybox_proto::{SessionStats, StreamStats, StreamStatus};

const SECRET: &str = "t3st-s3cret";

fn dictionary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("radius/dictionary")
}

struct FreeRadius {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: usize,
}

impl FreeRadius {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            r#"prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 30
cleanup_delay = 1
max_requests = 1024
hostname_lookups = no
log {{
  destination = stdout
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}}
client local {{
  ipaddr = 127.0.0.1
  secret = {SECRET}
}}
modules {{
  detail {{
    filename = {d}/detail
    header = "%t"
    permissions = 0600
    locking = no
    escape_filenames = no
    log_packet_header = no
  }}
}}
server default {{
  listen {{
    type = acct
    ipaddr = 127.0.0.1
    port = {port}
  }}
  accounting {{
    detail
  }}
}}
"#
        );
        std::fs::write(dir.path().join("radiusd.conf"), conf).unwrap();
        std::fs::write(dir.path().join("dictionary"), format!("$INCLUDE {}\n", dictionary().display())).unwrap();
        let mut fr = FreeRadius { dir, port, child: None, starts: 0 };
        fr.run();
        fr
    }

    /// Starts the server (again) and waits until it listens.
    fn run(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log_path = self.dir.path().join(format!("radiusd-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("freeradius")
            .args(["-X", "-d"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot run freeradius (apt-get install freeradius; ci/setup.sh does)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Ready to process requests") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("freeradius exited ({status}):\n{text}");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "freeradius did not get ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The accounting records in the detail file, attribute -> value.
    fn records(&self) -> Vec<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(self.dir.path().join("detail")).unwrap_or_default();
        text.split("\n\n")
            .map(|block| {
                block
                    .lines()
                    .filter_map(|l| l.trim().split_once(" = "))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            })
            .filter(|r| !r.is_empty())
            .collect()
    }

    fn record(&self, call_id: &str) -> Option<BTreeMap<String, String>> {
        let quoted = format!("\"{call_id}\"");
        self.records().into_iter().find(|r| r.get("Acct-Session-Id") == Some(&quoted))
    }

    /// `client.conf` and `servers` for this server, radiusclient-ng style.
    fn client_conf(&self, timeout_secs: u64, retries: u32) -> PathBuf {
        let dir = self.dir.path().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("servers"), format!("# host secret\n127.0.0.1\t{SECRET}\n")).unwrap();
        let conf = dir.join("client.conf");
        std::fs::write(
            &conf,
            format!(
                "auth_order radius\nauthserver 127.0.0.1\nacctserver 127.0.0.1:{}\nservers servers\n\
                 dictionary /usr/share/freeradius/dictionary\nradius_timeout {timeout_secs}\nradius_retries {retries}\n",
                self.port
            ),
        )
        .unwrap();
        conf
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stream(media: &str, codec: &str, status: StreamStatus, caller: u64, callee: u64) -> StreamStats {
    StreamStats {
        media_type: media.into(),
        status,
        timeout_wait: 0,
        caller_codec: codec.into(),
        callee_codec: codec.into(),
        start_time: Some(0),
        end_time: Some(30),
        post_dial_delay: Some(2.6),
        caller_bytes: caller,
        callee_bytes: callee,
        caller_packets: 10,
        callee_packets: 10,
        caller_local: "127.0.0.7:40000".into(),
        callee_local: "127.0.0.7:40002".into(),
        caller_remote: "127.0.0.8:5004".into(),
        callee_remote: "127.0.0.9:5004".into(),
    }
}

fn session(call_id: &str, streams: Vec<StreamStats>) -> SessionStats {
    SessionStats {
        call_id: call_id.into(),
        from_tag: "from-tag-1".into(),
        from_uri: "sip:alice@example.com".into(),
        to_tag: Some("to-tag-2".into()),
        to_uri: "sip:bob@example.com".into(),
        start_time: Some(1_700_000_000.0),
        duration: 31,
        caller_ua: "Alice Phone 1.0".into(),
        callee_ua: "Bob Phone 2.0".into(),
        username: None,
        relay_ip: Some("127.0.0.5".into()),
        dialog_id: None,
        timed_out: None,
        all_streams_ice: None,
        streams,
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts FreeRADIUS: run by ci/test.sh as root"]
async fn freeradius_logs_the_records_with_mediaproxy_attributes() {
    let fr = FreeRadius::start();
    let backend = RadiusBackend::from_config(&fr.client_conf(2, 3), Some(&dictionary())).unwrap();

    let timed_out = session(
        "call-1@example.com",
        vec![
            stream("audio", "PCMU", StreamStatus::Closed, 1000, 2000),
            stream("video", "H264", StreamStatus::NoTrafficTimeout, 5, 6),
        ],
    );
    backend.deliver(&timed_out).await.unwrap();
    let mut closed = session("call-2@example.com", vec![stream("audio", "G722", StreamStatus::Closed, 7, 8)]);
    closed.to_tag = None;
    closed.caller_ua = "x".repeat(300);
    backend.deliver(&closed).await.unwrap();

    let r = fr.record("call-1@example.com").expect("FreeRADIUS logged call-1");
    let want = [
        ("Acct-Status-Type", "Interim-Update"),
        ("User-Name", "\"mediaproxy@default\""),
        ("Acct-Session-Id", "\"call-1@example.com\""),
        ("Acct-Session-Time", "31"),
        ("Acct-Input-Octets", "1005"),
        ("Acct-Output-Octets", "2006"),
        ("Sip-From-Tag", "\"from-tag-1\""),
        ("Sip-To-Tag", "\"to-tag-2\""),
        ("Sip-User-Agents", "\"Alice Phone 1.0+Bob Phone 2.0\""),
        ("NAS-IP-Address", "127.0.0.7"),
        ("Sip-Applications", "\"audio, video\""),
        ("Media-Codecs", "\"PCMU, H264\""),
        ("Media-Info", "\"timeout\""),
        ("Acct-Delay-Time", "2"),
    ];
    for (attr, value) in want {
        assert_eq!(r.get(attr).map(String::as_str), Some(value), "{attr} in {r:#?}");
    }
    let r = fr.record("call-2@example.com").expect("FreeRADIUS logged call-2");
    // Empty strings are not sent (RFC 8044 3.5): no timeout, no To tag.
    assert_eq!(r.get("Media-Info"), None, "{r:#?}");
    assert_eq!(r.get("Sip-To-Tag"), None, "{r:#?}");
    assert_eq!(r.get("Sip-User-Agents").map(|v| v.len()), Some(253 + 2), "cut to 253 octets: {r:#?}");
    assert_eq!(r.get("Media-Codecs").map(String::as_str), Some("\"G722\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts FreeRADIUS: run by ci/test.sh as root"]
async fn records_made_while_freeradius_is_down_arrive_when_it_is_back() {
    let mut fr = FreeRadius::start();
    // 3 s per send: a FreeRADIUS just restarted in debug mode can take over
    // a second to answer, and a record resent after a failed delivery gets a
    // new packet id (FreeRADIUS would log it twice).
    let backend = RadiusBackend::from_config(&fr.client_conf(3, 1), Some(&dictionary())).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let retry = Retry { first: Duration::from_millis(100), max: Duration::from_millis(500) };
    let acc = Accounting::start(spool.path(), vec![Arc::new(backend)], retry, 1000).unwrap();
    let stats = |id: &str| session(id, vec![stream("audio", "PCMA", StreamStatus::Closed, 1, 2)]);

    acc.record(&stats("before"));
    wait_for("the first record", Duration::from_secs(10), || fr.record("before").is_some() && acc.pending() == 0);

    fr.stop();
    for id in ["down-1", "down-2", "down-3"] {
        acc.record(&stats(id));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acc.pending(), 3, "nothing is delivered (or lost) while FreeRADIUS is down");

    fr.run();
    wait_for("the spooled records", Duration::from_secs(20), || acc.pending() == 0);
    let ids: Vec<String> = fr.records().iter().filter_map(|r| r.get("Acct-Session-Id").cloned()).collect();
    assert_eq!(ids, ["\"before\"", "\"down-1\"", "\"down-2\"", "\"down-3\""], "all of them, in order, once");
}
