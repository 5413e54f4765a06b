//! The setup-rate generator and its instant-answer servers: what a SIP
//! proxy's worker processes do on every call, as fast as the other side
//! answers. Closed loop: each of `conns` connections sends a request and
//! waits for its answer before the next.
//!
//! - `setupgen module SOCKET CONNS SECONDS TAG`: relaybox's (MediaProxy's)
//!   module protocol on the dispatcher's UNIX socket, per cycle `update`
//!   (caller) + `update` (callee) + `remove`;
//! - `setupgen ng ADDR CONNS SECONDS TAG`: rtpengine's NG protocol (bencode
//!   over UDP), per cycle `offer` + `answer` + `delete`;
//! - `setupgen module-hold|ng-hold ... N TAG`: sets up N calls (the first
//!   two requests only) and leaves them held;
//! - `fake module SOCKET` / `fake ng ADDR`: answers every request at once
//!   with a valid answer, to show that the generator is not the limit.
//!
//! Every loop is bounded by time and by count. The generator prints one
//! line: `RESULT cycles seconds errors p50_us p99_us max_us requests`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Most cycles one connection makes in one run.
const MAX_CYCLES_PER_CONN: u64 = 2_000_000;
/// Longest a fake server runs.
const FAKE_LIFETIME: Duration = Duration::from_secs(600);
const CALLER: &str = "10.88.1.2";
const CALLEE: &str = "10.88.2.2";

fn module_update(party: &str, call: &str, to_tag: &str, ip: &str, port: u16) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: \r\ncall_id: {call}\r\ncseq: 1 INVITE\r\nfrom_uri: sip:a@example.com\r\n\
         to_uri: sip:b@example.com\r\nfrom_tag: ft\r\nto_tag: {to_tag}\r\nuser_agent: bench\r\nsignaling_ip: {ip}\r\n\
         media: audio:{ip}:{port}:sendrecv:ice=no\r\n\r\n"
    )
}

fn module_remove(call: &str) -> String {
    format!("remove\r\ncall_id: {call}\r\nfrom_tag: ft\r\nto_tag: tt\r\n\r\n")
}

fn b(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn sdp(ip: &str, port: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=sendrecv\r\n")
}

fn ng_offer(call: &str) -> String {
    format!(
        "d{}{}{}{}{}{}{}{}e",
        b("command"),
        b("offer"),
        b("call-id"),
        b(call),
        b("from-tag"),
        b("ft"),
        b("sdp"),
        b(&sdp(CALLER, 4000))
    )
}

fn ng_answer(call: &str) -> String {
    format!(
        "d{}{}{}{}{}{}{}{}{}{}e",
        b("command"),
        b("answer"),
        b("call-id"),
        b(call),
        b("from-tag"),
        b("ft"),
        b("to-tag"),
        b("tt"),
        b("sdp"),
        b(&sdp(CALLEE, 5000))
    )
}

fn ng_delete(call: &str) -> String {
    format!("d{}{}{}{}{}{}e", b("command"), b("delete"), b("call-id"), b(call), b("from-tag"), b("ft"))
}

/// One connection's requests and answers.
trait Client {
    /// Sends one request and waits for its answer; false for an error
    /// answer (or none in time).
    fn ask(&mut self, request: &str) -> bool;
}

/// Longest a request waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until `fd` has something to read, at most `timeout`, with poll(2),
/// as the proxies' modules wait for an answer (OpenSIPS's mediaproxy module
/// select()s, its rtpengine module poll()s, then each reads). A read that
/// blocks instead is woken as well by the socket's write-space wakeup when
/// the server takes the request off the socket, which costs the server's
/// side one more wakeup per request than a real proxy does.
fn wait_readable(fd: impl AsFd, timeout: Duration) -> bool {
    let timeout = Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

struct ModuleClient {
    stream: UnixStream,
    answer: Vec<u8>,
}

impl Client for ModuleClient {
    fn ask(&mut self, request: &str) -> bool {
        if self.stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        self.answer.clear();
        let mut chunk = [0u8; 4096];
        // An answer is one line.
        while !self.answer.contains(&b'\n') {
            if self.answer.len() > 65536 || !wait_readable(&self.stream, ANSWER_TIMEOUT) {
                return false;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.answer.extend_from_slice(&chunk[..n]),
            }
        }
        !self.answer.starts_with(b"error")
    }
}

struct NgClient {
    socket: UdpSocket,
    to: SocketAddr,
    buf: Vec<u8>,
    /// Unique to this connection: rtpengine keeps recent answers by cookie
    /// and sends the kept answer again for a cookie it has seen, so
    /// connections counting from the same start would get each other's
    /// answers without any work done.
    prefix: String,
    cookie: u64,
}

impl Client for NgClient {
    fn ask(&mut self, request: &str) -> bool {
        self.cookie += 1;
        let cookie = format!("{}{:x}", self.prefix, self.cookie);
        let message = format!("{cookie} {request}");
        if self.socket.send_to(message.as_bytes(), self.to).is_err() {
            return false;
        }
        // Stale answers (a timed-out request's) are skipped.
        for _ in 0..4 {
            if !wait_readable(&self.socket, ANSWER_TIMEOUT) {
                return false;
            }
            match self.socket.recv(&mut self.buf) {
                Ok(n) => {
                    let reply = &self.buf[..n];
                    if reply.starts_with(cookie.as_bytes()) && reply.get(cookie.len()) == Some(&b' ') {
                        let body = &reply[cookie.len() + 1..];
                        return body.windows(12).any(|w| w == b"6:result2:ok") && ng_sdp_ok(request, body);
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }
}

/// An `offer` or `answer` must come back with an SDP whose audio port is the
/// server's, not the one sent: proof that it set the call up.
fn ng_sdp_ok(request: &str, body: &[u8]) -> bool {
    let Some(sent) = sdp_audio_port(request.as_bytes()) else { return true };
    sdp_audio_port(body).is_some_and(|port| port != sent && port != 0)
}

fn sdp_audio_port(text: &[u8]) -> Option<u16> {
    let at = text.windows(8).position(|w| w == b"m=audio ")? + 8;
    let digits: Vec<u8> = text[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Module,
    Ng,
}

fn connect(protocol: Protocol, target: &str, conn: usize) -> anyhow::Result<Box<dyn Client>> {
    Ok(match protocol {
        Protocol::Module => {
            let stream = UnixStream::connect(target).with_context(|| format!("connecting {target}"))?;
            stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            Box::new(ModuleClient { stream, answer: Vec::new() })
        }
        Protocol::Ng => {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            let prefix = format!("{:x}.{conn}.", std::process::id());
            Box::new(NgClient { socket, to: target.parse()?, buf: vec![0u8; 65536], prefix, cookie: 0 })
        }
    })
}

/// The requests of one cycle: set up (two), then end (one).
fn cycle(protocol: Protocol, call: &str) -> [String; 3] {
    match protocol {
        Protocol::Module => [
            module_update("request", call, "", CALLER, 4000),
            module_update("reply", call, "tt", CALLEE, 5000),
            module_remove(call),
        ],
        Protocol::Ng => [ng_offer(call), ng_answer(call), ng_delete(call)],
    }
}

/// `setupgen KIND TARGET CONNS SECONDS|N TAG`.
pub fn setupgen(args: &[String]) -> anyhow::Result<()> {
    let [kind, target, conns, amount, tag] = args else { bail!("setupgen: bad arguments {args:?}") };
    let conns: usize = conns.parse()?;
    anyhow::ensure!((1..=256).contains(&conns), "1 to 256 connections");
    let (protocol, hold) = match kind.as_str() {
        "module" => (Protocol::Module, false),
        "ng" => (Protocol::Ng, false),
        "module-hold" => (Protocol::Module, true),
        "ng-hold" => (Protocol::Ng, true),
        other => bail!("setupgen: unknown kind {other}"),
    };
    if hold {
        let total: u64 = amount.parse()?;
        let per = total.div_ceil(conns as u64);
        let threads: Vec<_> = (0..conns)
            .map(|c| {
                let (target, tag) = (target.clone(), tag.clone());
                std::thread::spawn(move || -> anyhow::Result<u64> {
                    let mut client = connect(protocol, &target, c)?;
                    let mut ok = 0;
                    for i in 0..per {
                        let n = c as u64 * per + i;
                        if n >= total {
                            break;
                        }
                        let [offer, answer, _] = cycle(protocol, &format!("{tag}-{n}"));
                        if client.ask(&offer) && client.ask(&answer) {
                            ok += 1;
                        }
                    }
                    Ok(ok)
                })
            })
            .collect();
        let mut held = 0;
        for t in threads {
            held += t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        }
        println!("HELD {held}");
        return Ok(());
    }
    let seconds: f64 = amount.parse()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (target, tag) = (target.clone(), tag.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, u64, Vec<u32>)> {
                let mut client = connect(protocol, &target, c)?;
                let (mut cycles, mut errors) = (0u64, 0u64);
                let mut latencies = Vec::with_capacity(1 << 16);
                while Instant::now() < deadline && cycles < MAX_CYCLES_PER_CONN {
                    for request in cycle(protocol, &format!("{tag}-{c}-{cycles}")) {
                        let t0 = Instant::now();
                        if !client.ask(&request) {
                            errors += 1;
                        }
                        latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    cycles += 1;
                }
                Ok((cycles, errors, latencies))
            })
        })
        .collect();
    let (mut cycles, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
    for t in threads {
        let (c, e, l) = t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        cycles += c;
        errors += e;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0);
    println!(
        "RESULT {cycles} {elapsed:.3} {errors} {} {} {} {}",
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    Ok(())
}

/// `fake module SOCKET` / `fake ng ADDR`: an instant-answer server.
pub fn fake(args: &[String]) -> anyhow::Result<()> {
    let [kind, target] = args else { bail!("fake: bad arguments {args:?}") };
    let until = Instant::now() + FAKE_LIFETIME;
    match kind.as_str() {
        "module" => {
            let _ = std::fs::remove_file(target);
            let listener = UnixListener::bind(target)?;
            listener.set_nonblocking(true)?;
            while Instant::now() < until {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                stream.set_nonblocking(false)?;
                std::thread::spawn(move || serve_module(stream, until));
            }
            Ok(())
        }
        "ng" => {
            let socket = UdpSocket::bind(target.as_str())?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buf = vec![0u8; 65536];
            let answer = format!("d{}{}{}{}e", b("result"), b("ok"), b("sdp"), b(&sdp("10.88.0.1", 40000)));
            while Instant::now() < until {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let cookie = buf[..n].split(|c| *c == b' ').next().unwrap_or_default();
                let mut reply = cookie.to_vec();
                reply.push(b' ');
                reply.extend_from_slice(answer.as_bytes());
                let _ = socket.send_to(&reply, from);
            }
            Ok(())
        }
        other => bail!("fake: unknown kind {other}"),
    }
}

fn serve_module(stream: UnixStream, until: Instant) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut first: Option<String> = None;
    while Instant::now() < until {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        let text = line.trim_end();
        if text.is_empty() {
            let reply = match first.take().as_deref() {
                Some("remove") => "removed\r\n",
                _ => "10.88.0.1 40000\r\n",
            };
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
        } else if first.is_none() {
            first = Some(text.to_string());
        }
    }
}

/// One generator run, as parsed from its `RESULT` line.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupRun {
    pub cycles: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

impl SetupRun {
    pub fn rate(&self) -> f64 {
        self.cycles as f64 / self.seconds.max(1e-9)
    }

    pub fn parse(out: &str) -> anyhow::Result<Self> {
        let line =
            out.lines().find_map(|l| l.strip_prefix("RESULT ")).with_context(|| format!("no RESULT in {out:?}"))?;
        let v: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(v.len() >= 6, "short RESULT {line:?}");
        Ok(SetupRun {
            cycles: v[0].parse()?,
            seconds: v[1].parse()?,
            errors: v[2].parse()?,
            p50_us: v[3].parse()?,
            p99_us: v[4].parse()?,
            max_us: v[5].parse()?,
        })
    }
}

/// Runs the generator (`setupgen ...`) in network namespace `ns`.
pub fn run_generator(ns: &str, exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .arg("setupgen")
        .args(args)
        .output()
        .context("running the setup generator")?;
    if !out.status.success() {
        bail!("setupgen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ng_answer_counts_only_with_the_servers_own_media_port() {
        let offer = ng_offer("c1");
        let set_up = format!("d{}{}{}{}e", b("result"), b("ok"), b("sdp"), b(&sdp("10.88.0.1", 40000)));
        let echoed = format!("d{}{}{}{}e", b("result"), b("ok"), b("sdp"), b(&sdp(CALLER, 4000)));
        let bare = format!("d{}{}e", b("result"), b("ok"));
        assert!(ng_sdp_ok(&offer, set_up.as_bytes()));
        assert!(!ng_sdp_ok(&offer, echoed.as_bytes()), "the port sent, not a relay port");
        assert!(!ng_sdp_ok(&offer, bare.as_bytes()), "no SDP at all");
        assert!(ng_sdp_ok(&ng_delete("c1"), bare.as_bytes()), "a delete has no SDP");
    }
}
