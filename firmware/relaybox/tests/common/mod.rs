//! A small harness for driving the real `relaybox` binary: temp dirs with a
//! CA and certificates, config files, child processes with log files, and
//! clients for the module socket and the management port.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relaybox_ca::{CertificateAuthority, IssuedCert, Role, Subject};

pub const BIN: &str = env!("CARGO_BIN_EXE_relaybox");

pub fn subject(cn: &str) -> Subject {
    Subject { o: Some("Example Ltd".into()), ..Subject::new(cn) }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An even start port with `count` free UDP ports after it. Ranges lie
/// below the kernel's ephemeral ports (32768 and up), so no client socket of
/// a test lands in one, and the ranges of one test process never overlap
/// (the test threads share the cursor).
pub fn free_port_range(count: u16) -> (u16, u16) {
    const LOW: u32 = 20000;
    const HIGH: u32 = 32768;
    static CURSOR: Mutex<u32> = Mutex::new(0);
    let count = u32::from(count + count % 2);
    let mut cursor = CURSOR.lock().unwrap_or_else(|e| e.into_inner());
    if *cursor == 0 {
        // Each process starts somewhere else: test binaries may run side by side.
        *cursor = LOW + std::process::id().wrapping_mul(2_654_435_761) % (HIGH - LOW) / 2 * 2;
    }
    loop {
        if *cursor + count > HIGH {
            *cursor = LOW;
        }
        let (start, end) = (*cursor as u16, (*cursor + count) as u16);
        *cursor += count;
        if (start..end).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (start, end);
        }
    }
}

/// A number no other call in this process returns: unique file names.
fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if not.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_for(needle, timeout, |text| text.contains(needle))
    }

    /// Waits until every one of `needles` is in the log (in any order: lines
    /// from different tasks are not ordered).
    pub fn wait_log_all(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_log_for(&needles.join(" + "), timeout, |text| needles.iter().all(|n| text.contains(n)))
    }

    /// Waits until `done(log)` holds; `what` names it in the panic.
    pub fn wait_log_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if done(&text) {
                return text;
            }
            if Instant::now() > until {
                panic!("{what:?} not in log {} within {timeout:?}:\n{text}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// SIGSTOP, and waits until every thread has stopped: the kernel stops
    /// the others only once the thread that took the signal runs, and on a
    /// loaded machine a worker woken by a socket could still answer first.
    pub fn freeze(&self) {
        self.signal("STOP");
        let until = Instant::now() + Duration::from_secs(10);
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else { return false };
            tasks.flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the ")" closing the command name.
                stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        };
        while !stopped() {
            assert!(Instant::now() < until, "process {} did not stop", self.child.id());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test world: one CA, a dispatcher's certs and settings.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub relay_port: u16,
    pub mgmt_port: u16,
    pub socket: PathBuf,
}

impl Rig {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(&Subject::new("relaybox test CA"), 30).unwrap();
        let socket = dir.path().join("dispatcher.sock");
        Rig { dir, ca, relay_port: free_port(), mgmt_port: free_port(), socket }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a certs_path directory with a relay, a dispatcher and a
    /// management client certificate.
    pub fn certs(&mut self, name: &str, relay_cn: &str) -> (PathBuf, IssuedCert) {
        let relay = self.ca.issue(Role::Relay, &subject(relay_cn), 30).unwrap();
        let dispatcher = self.ca.issue(Role::Dispatcher, &subject("dispatcher"), 30).unwrap();
        let management = self.ca.issue(Role::Management, &subject("management"), 30).unwrap();
        let out = self.path(name);
        relaybox_ca::write_certs_dir(&self.ca, &out, &relay, &dispatcher).unwrap();
        relaybox_ca::write_issued(&out, "management", &management).unwrap();
        (out, relay)
    }

    /// `module_timeout` is 2 s unless `extra` sets it: MediaProxy's 0.5 s
    /// is the product's default, but a loaded CI machine can make a debug
    /// relay miss it, and tests that mean "at once" measure that themselves.
    pub fn dispatcher_config(&self, certs: &Path, extra: &str) -> PathBuf {
        let extra =
            if extra.contains("module_timeout") { extra.to_string() } else { format!("module_timeout = 2\n{extra}") };
        let text = format!(
            "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{}\nlisten_management = 127.0.0.1:{}\nmanagement_use_tls = no\nrelay_timeout = 2\nlog_level = DEBUG\n{extra}\n[TLS]\ncerts_path = {}\n",
            self.socket.display(),
            self.relay_port,
            self.mgmt_port,
            certs.display()
        );
        let path = self.path(&format!("dispatcher-{}.ini", unique()));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn relay_config(&self, certs: &Path, ports: (u16, u16), extra: &str) -> PathBuf {
        let text = format!(
            "[Relay]\ndispatchers = 127.0.0.1:{}\nrelay_ip = 127.0.0.1\nport_range = {}:{}\nreconnect_delay = 1\nlog_level = DEBUG\nstate_file = {}\n{extra}\n[TLS]\ncerts_path = {}\n",
            self.relay_port,
            ports.0,
            ports.1,
            self.path(&format!("relay-{}-{}.state", ports.0, unique())).display(),
            certs.display()
        );
        let path = self.path(&format!("relay-{}-{}.ini", ports.0, unique()));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn spawn(&self, role: &str, config: &Path) -> Daemon {
        let log = self.path(&format!("{role}-{}.log", unique()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg(role)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Starts a dispatcher and waits for its socket.
    pub fn dispatcher(&mut self, extra: &str) -> Daemon {
        let (certs, _) = self.certs("dispatcher-certs", "unused-relay");
        let cfg = self.dispatcher_config(&certs, extra);
        let d = self.spawn("dispatcher", &cfg);
        d.wait_log("dispatcher ready", Duration::from_secs(10));
        d
    }

    /// Starts a relay with a fresh certificate and waits until the
    /// dispatcher logs it.
    pub fn relay(&mut self, dispatcher: &Daemon, cn: &str, extra: &str) -> (Daemon, (u16, u16)) {
        let before = dispatcher.log_text().matches("relay connected").count();
        let (certs, _) = self.certs(&format!("relay-certs-{cn}-{}", unique()), cn);
        let ports = free_port_range(40);
        let cfg = self.relay_config(&certs, ports, extra);
        let r = self.spawn("relay", &cfg);
        let until = Instant::now() + Duration::from_secs(10);
        while dispatcher.log_text().matches("relay connected").count() <= before {
            assert!(Instant::now() < until, "relay never connected:\n{}\n{}", r.log_text(), dispatcher.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        (r, ports)
    }
}

/// A connection to the module socket, like one proxy worker's.
pub struct Module {
    stream: BufReader<UnixStream>,
}

impl Module {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Module { stream: BufReader::new(stream) }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).unwrap();
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        line
    }

    /// Sends one request and returns the reply line and how long it took.
    pub fn request(&mut self, text: &str) -> (String, Duration) {
        let start = Instant::now();
        self.send_raw(text.as_bytes());
        let line = self.read_line();
        (line, start.elapsed())
    }

    /// True when nothing more is waiting to be read (no stray replies).
    pub fn nothing_pending(&mut self) -> bool {
        let s = self.stream.get_mut();
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        s.set_nonblocking(false).unwrap();
        matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

pub fn update(party: &str, call_id: &str, cseq: u32, to_tag: &str, media: &str) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: 1:2\r\ncall_id: {call_id}\r\ncseq: {cseq} INVITE\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: ft-{call_id}\r\nto_tag: {to_tag}\r\nuser_agent: test-ua\r\nsignaling_ip: 127.0.0.1\r\nmedia: {media}\r\n\r\n"
    )
}

pub fn remove(call_id: &str) -> String {
    format!("remove\r\ncall_id: {call_id}\r\nfrom_tag: ft-{call_id}\r\nto_tag: tt\r\n\r\n")
}

/// Parses `<ip> <port> ...`.
pub fn ports(reply: &str) -> (String, Vec<u16>) {
    let mut parts = reply.split_whitespace();
    let ip = parts.next().unwrap_or_default().to_string();
    (ip, parts.map(|p| p.parse().unwrap()).collect())
}

/// One management command on a plain TCP connection; returns the line.
pub fn management(port: u16, command: &str) -> String {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// A UDP endpoint standing in for a phone.
pub struct Phone {
    pub socket: UdpSocket,
}

impl Phone {
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Phone { socket }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    pub fn send(&self, to: SocketAddr, payload: &[u8]) {
        self.socket.send_to(payload, to).unwrap();
    }

    pub fn recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 2048];
        self.socket.recv_from(&mut buf).ok().map(|(n, from)| (buf[..n].to_vec(), from))
    }

    /// Waits for [`rtp(seq)`](rtp) and returns where it came from. Packets
    /// of earlier sequence numbers (late ones, already counted as missed)
    /// are skipped; anything else is returned as it is, for the caller to
    /// reject.
    pub fn recv_rtp(&self, seq: u16) -> Option<(Vec<u8>, SocketAddr)> {
        loop {
            let (data, from) = self.recv()?;
            let late =
                data.len() == rtp(seq).len() && data[..2] == [0x80, 8] && u16::from_be_bytes([data[2], data[3]]) < seq;
            if !late {
                return Some((data, from));
            }
        }
    }
}

/// A minimal RTP packet with payload type 8 (PCMA).
/// Sends `count` RTP packets each way through the relay: the caller to
/// `to_caller_side` (the port in the answer), the callee to `to_callee_side`
/// (the port in the offer). Each received packet must be the one sent and
/// come from the port its receiver was given. Returns what arrived
/// (at the callee, at the caller).
pub fn exchange(
    caller: &Phone,
    callee: &Phone,
    to_caller_side: SocketAddr,
    to_callee_side: SocketAddr,
    count: u16,
) -> (u16, u16) {
    let (mut at_callee, mut at_caller) = (0, 0);
    for seq in 0..count {
        caller.send(to_caller_side, &rtp(seq));
        if let Some((data, from)) = callee.recv_rtp(seq) {
            assert_eq!(data, rtp(seq));
            assert_eq!(from, to_callee_side, "media must come from the relay port the callee was given");
            at_callee += 1;
        }
        callee.send(to_callee_side, &rtp(seq));
        if let Some((data, from)) = caller.recv_rtp(seq) {
            assert_eq!(data, rtp(seq));
            assert_eq!(from, to_caller_side, "media must come from the relay port the caller was given");
            at_caller += 1;
        }
    }
    eprintln!("relayed: {at_callee}/{count} caller->callee, {at_caller}/{count} callee->caller");
    (at_callee, at_caller)
}

pub fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[0xd5; 160]);
    p
}
