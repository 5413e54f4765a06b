//! The page in a real browser: headless Chromium driven over chromedriver's
//! WebDriver HTTP API, against a real dispatcher, relay and `relaybox web`
//! started from the cargo target dir. Logs in, changes the port range with
//! "Save and apply" (the relay gets SIGHUP, halts, and this test restarts it
//! as the box's init would), places a call over the module socket, watches
//! the status page update live, and saves a screenshot to
//! target/web-status.png.
//!
//! Needs `cargo build -p relaybox` first and Debian's chromium and
//! chromium-driver; run by ci/test.sh with `-- --ignored`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use relaybox_ca::{CertificateAuthority, Subject};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn target_dir() -> PathBuf {
    // target/debug/deps/browser-<hash> -> target
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn relaybox_bin() -> PathBuf {
    let bin = std::env::var_os("RELAYBOX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("relaybox"));
    assert!(bin.exists(), "{} missing: run `cargo build -p relaybox` first", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_port_range(count: u16, not: Option<u16>) -> (u16, u16) {
    let mut seed = std::process::id() as u32 ^ Instant::now().elapsed().subsec_nanos();
    loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let start = 20000 + ((seed >> 8) % 10000) as u16 * 2;
        if not.is_some_and(|n| start.abs_diff(n) < 2 * count) {
            continue;
        }
        if (start..start + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (start, start + count);
        }
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(relaybox_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, count: usize) {
        let until = Instant::now() + Duration::from_secs(15);
        while self.log().matches(needle).count() < count {
            assert!(Instant::now() < until, "{needle:?} not in {}:\n{}", self.log.display(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's WebDriver API over plain HTTP on 127.0.0.1.
struct Driver {
    addr: SocketAddr,
    session: String,
    _process: Child,
}

impl Driver {
    fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = common::http(addr, method, path, &[("Content-Type", "application/json")], body.as_bytes());
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.body));
        assert!(r.status == 200, "{method} {path} -> {}: {v}", r.status);
        v["value"].clone()
    }

    fn start(profile: &Path) -> Driver {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < until, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,1100",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = Driver::call(addr, "POST", "/session", Some(caps));
        let session = v["sessionId"].as_str().unwrap().to_string();
        Driver { addr, session, _process: process }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        Driver::call(self.addr, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("find {css}: {v}")).to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    fn text(&self, css: &str) -> String {
        let script = format!("var e = document.querySelector({css:?}); return e ? e.innerText : '';");
        self.js(&script).as_str().unwrap_or_default().to_string()
    }

    fn wait_text(&self, css: &str, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.text(css);
            if t.contains(needle) {
                return t;
            }
            assert!(Instant::now() < until, "{needle:?} never appeared in {css}:\n{t}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            common::http(self.addr, "DELETE", &format!("/session/{}", self.session), &[], b"");
        });
        let _ = self._process.kill();
        let _ = self._process.wait();
    }
}

fn module_request(socket: &Path, text: &str) -> String {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(text.as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

fn update(party: &str, call_id: &str, to_tag: &str, port: u16) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: 1:2\r\ncall_id: {call_id}\r\ncseq: 1 INVITE\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: ft\r\nto_tag: {to_tag}\r\nuser_agent: browser-test\r\nsignaling_ip: 127.0.0.1\r\nmedia: audio:127.0.0.1:{port}:sendrecv:ice=no\r\n\r\n"
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[0xd5; 160]);
    p
}

#[test]
#[ignore = "needs chromium: run by ci/test.sh"]
fn browser_logs_in_changes_the_port_range_watches_a_live_call_and_reboots_after_asking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut ca = CertificateAuthority::create(&Subject::new("browser test CA"), 3650).unwrap();
    let relay_cert = ca.issue(relaybox_ca::Role::Relay, &Subject::new("edge-relay"), 365).unwrap();
    let dispatcher_cert = ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher"), 365).unwrap();
    let certs = d.join("tls");
    relaybox_ca::write_certs_dir(&ca, &certs, &relay_cert, &dispatcher_cert).unwrap();

    let (link_port, mgmt_port, web_port) = (free_port(), free_port(), free_port());
    let module = d.join("dispatcher.sock");
    let dispatcher_ini = d.join("dispatcher.ini");
    std::fs::write(
        &dispatcher_ini,
        format!(
            "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{link_port}\nlisten_management = 127.0.0.1:{mgmt_port}\nmanagement_use_tls = no\n[TLS]\ncerts_path = {}\n",
            module.display(),
            certs.display()
        ),
    )
    .unwrap();
    let first_range = free_port_range(40, None);
    let config = d.join("config.ini");
    std::fs::write(
        &config,
        format!(
            "[Relay]\ndispatchers = 127.0.0.1:{link_port}\nrelay_ip = 127.0.0.1\nport_range = {}:{}\nreconnect_delay = 1\ntraffic_sampling_period = 1\nlog_level = INFO\ncontrol_socket = {}\n\n[TLS]\ncerts_path = {}\n\n[Web]\nlisten = 127.0.0.1:{web_port}\nhttp_listen = None\nreboot_command = reboot.sh\nhostname_command = hostname.sh\n",
            first_range.0,
            first_range.1,
            d.join("relay.sock").display(),
            certs.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    // The box's commands, recorded instead of run.
    for (name, line) in [("reboot.sh", "echo yes > \"$(dirname \"$0\")/rebooted\""), ("hostname.sh", "true")] {
        std::fs::write(d.join(name), format!("#!/bin/sh\n{line}\n")).unwrap();
        std::fs::set_permissions(d.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::write(d.join("network.conf"), "WAN_MODE=dhcp\nLAN_ADDRESS=\n").unwrap();

    let mut set = Command::new(relaybox_bin())
        .args(["--config", config_arg, "web", "set-password"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all(format!("{}\n", common::PASSWORD).as_bytes()).unwrap();
    assert!(set.wait().unwrap().success());

    let dispatcher = Proc::spawn(d, "dispatcher", &["--config", dispatcher_ini.to_str().unwrap(), "dispatcher"]);
    dispatcher.wait_log("dispatcher ready", 1);
    let mut relay = Proc::spawn(d, "relay", &["--config", config_arg, "relay"]);
    dispatcher.wait_log("relay connected", 1);
    let web = Proc::spawn(d, "web", &["--config", config_arg, "web"]);
    web.wait_log("web page ready", 1);
    let base = format!("https://127.0.0.1:{web_port}");

    let driver = Driver::start(&d.join("chromium-profile"));
    driver.go(&format!("{base}/status"));
    assert!(driver.url().ends_with("/login"), "not logged in: sent to the login page");
    driver.type_into("input[name=password]", common::PASSWORD);
    driver.click("main button[type=submit]");
    let until = Instant::now() + Duration::from_secs(10);
    while !driver.url().ends_with("/status") {
        assert!(Instant::now() < until, "login did not reach /status: {}", driver.url());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Change the port range, save and apply.
    let new_range = free_port_range(40, Some(first_range.0));
    let new_text = format!("{}:{}", new_range.0, new_range.1);
    driver.go(&format!("{base}/settings"));
    driver.type_into("#port_range", &new_text);
    driver.click("button[value=apply]");
    let flash = driver.wait_text("#flash", "applied");
    eprintln!("settings page: {flash}");
    assert_eq!(driver.js("return document.getElementById('port_range').value").as_str(), Some(new_text.as_str()));
    let saved = relaybox_config::Config::load(&config).unwrap();
    assert_eq!((saved.relay.port_range.start, saved.relay.port_range.end), new_range);
    relay.wait_log("SIGHUP", 1);
    // The relay halts (no calls), and "init" starts it again with the new file.
    let until = Instant::now() + Duration::from_secs(10);
    while relay.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "the relay did not exit after SIGHUP:\n{}", relay.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    relay = Proc::spawn(d, "relay", &["--config", config_arg, "relay"]);
    dispatcher.wait_log("relay connected", 2);

    // A live call through the restarted relay.
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let offer = module_request(&module, &update("request", "browser-call-1", "", caller.local_addr().unwrap().port()));
    let answer = module_request(&module, &update("reply", "browser-call-1", "tt", callee.local_addr().unwrap().port()));
    let port = |reply: &str| reply.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap();
    let (to_callee_side, to_caller_side) = (port(&offer), port(&answer));
    assert!((new_range.0..new_range.1).contains(&to_callee_side), "{offer} not in the new range {new_text}");
    let send = |from: u16, n: u16| {
        for seq in from..from + n {
            caller.send_to(&rtp(seq), ("127.0.0.1", to_caller_side)).unwrap();
            callee.send_to(&rtp(seq), ("127.0.0.1", to_callee_side)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    send(0, 20);

    driver.go(&format!("{base}/status"));
    let first = driver.wait_text("#sessions", "browser-call-1");
    assert!(first.contains("PCMA"), "{first}");
    driver.wait_text("#relay-summary", &new_text);
    // More media: the page shows it without a reload (polling every 2 s).
    send(20, 30);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = driver.text("#sessions");
        if now != first && now.contains("browser-call-1") {
            eprintln!("live update:\n{first}\n->\n{now}");
            break;
        }
        assert!(Instant::now() < until, "the status page did not update by itself:\n{now}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let shot = target_dir().join("web-status.png");
    driver.screenshot(&shot);
    println!("screenshot: {}", shot.display());
    eprintln!("screenshot: {}", shot.display());

    // Network settings for the next boot, then Reboot: the page asks first
    // (app.js), and only an accepted dialog runs the reboot command.
    driver.go(&format!("{base}/network"));
    driver.js("document.getElementById('wan_mode').value = 'static'; return null");
    driver.type_into("#wan_address", "192.0.2.10/24");
    driver.type_into("#wan_gateway", "192.0.2.1");
    driver.click("form[action='/network'] button[type=submit]");
    driver.wait_text("#flash", "next boot");
    let conf = std::fs::read_to_string(d.join("network.conf")).unwrap();
    assert!(conf.contains("WAN_MODE=\"static\"") && conf.contains("WAN_GATEWAY=\"192.0.2.1\""), "{conf}");
    let rebooted = d.join("rebooted");
    driver.click("#reboot button");
    let question = driver.cmd("GET", "/alert/text", None);
    assert!(question.as_str().is_some_and(|q| q.contains("Calls in progress are cut")), "{question}");
    driver.cmd("POST", "/alert/dismiss", Some(json!({})));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!rebooted.exists(), "a dismissed dialog rebooted the box");
    driver.click("#reboot button");
    driver.cmd("POST", "/alert/accept", Some(json!({})));
    driver.wait_text("#flash", "rebooting");
    let until = Instant::now() + Duration::from_secs(10);
    while !rebooted.exists() {
        assert!(Instant::now() < until, "the reboot command did not run:\n{}", web.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(relay);
    drop(web);
    drop(dispatcher);
}
