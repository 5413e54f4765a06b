//! What the QEMU suites (boot.rs, update.rs) share: a dispatcher on the
//! host for the box's relay to connect to.

// Each suite uses its own part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `relaybox dispatcher` on 127.0.0.1 (the guest reaches it at 10.0.2.2),
/// its log in `dir`, killed on drop.
pub struct Dispatcher {
    child: Child,
    log: PathBuf,
    /// The module socket.
    pub socket: PathBuf,
    /// The management port (plain TCP).
    pub mgmt: u16,
    /// The relay port.
    pub link: u16,
}

impl Dispatcher {
    /// Started with `log_level` and the `[Dispatcher]` lines of `extra`;
    /// returns once it is ready.
    pub fn start(bin: &Path, dir: &Path, certs: &Path, log_level: &str, extra: &str) -> Dispatcher {
        let (link, mgmt) = (free_tcp_port(), free_tcp_port());
        let socket = dir.join("dispatcher.sock");
        let cfg = dir.join("dispatcher.ini");
        std::fs::write(
            &cfg,
            format!(
                "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{link}\nlisten_management = 127.0.0.1:{mgmt}\n\
                 management_use_tls = no\n{extra}log_level = {log_level}\n[TLS]\ncerts_path = {}\n",
                socket.display(),
                certs.display()
            ),
        )
        .unwrap();
        let log = dir.join("dispatcher.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("dispatcher")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Dispatcher { child, log, socket, mgmt, link };
        d.wait_log("dispatcher ready", 1, Duration::from_secs(20));
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` occurs at least `count` times in the log.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.log_text().matches(needle).count() < count {
            assert!(Instant::now() < until, "{needle:?} x{count} not in the dispatcher log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many times a relay connected.
    pub fn connections(&self) -> usize {
        self.log_text().matches("relay connected").count()
    }

    /// One management command, its one-line answer.
    pub fn management(&self, command: &str) -> String {
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.mgmt)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(format!("{command}\r\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    }

    /// The relays connected now (management `summary`).
    pub fn relays(&self) -> usize {
        let v: serde_json::Value = serde_json::from_str(&self.management("summary")).unwrap();
        v.as_array().unwrap().len()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The box's web page through QEMU's forward of its HTTPS port, driven
/// with curl as an operator's browser would: login, forms with the page's
/// CSRF token, cookies in a jar. The box's self-signed certificate is not
/// checked (`-k`): this is about the pages, not the TLS setup.
pub struct WebPage {
    pub port: u16,
    pub jar: PathBuf,
    pub password: &'static str,
}

impl WebPage {
    /// curl with `args` (forms, uploads) on `path`; (status, body).
    pub fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "300", "-w", "\n%{http_code}", "-c"])
            .arg(&self.jar)
            .arg("-b")
            .arg(&self.jar)
            .args(args)
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One request with a URL-encoded form; (status, body).
    pub fn request(&self, method: &str, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let fields: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["-X", method];
        for field in &fields {
            args.extend(["--data-urlencode", field.as_str()]);
        }
        self.curl(&args, path)
    }

    /// Logs in (the web service may still be starting: retried for a while)
    /// and returns the session's CSRF token.
    pub fn login(&self) -> String {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, _) = self.request("GET", "/login", &[]);
            if status == 200 {
                let jar = std::fs::read_to_string(&self.jar).unwrap_or_default();
                let token = jar.lines().find_map(|l| l.split('\t').skip_while(|f| *f != "relaybox_login").nth(1));
                let token = token.expect("login page sets its token cookie").to_string();
                let (status, body) = self.request("POST", "/login", &[("csrf", &token), ("password", self.password)]);
                assert_eq!(status, 303, "login: {body}");
                let (_, page) = self.request("GET", "/system", &[]);
                let csrf = page
                    .split(r#"name="csrf" value=""#)
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| panic!("no CSRF field on /system: {page}"));
                return csrf.to_string();
            }
            assert!(Instant::now() < until, "the box's web page never answered (last status {status})");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
