//! `relaybox-bench`: how fast the relay's datapaths forward RTP, measured on
//! a network-namespace rig (caller ns — relay ns — callee ns, veth links),
//! against rtpengine (userspace, NG protocol) and a static nftables NAT rule
//! set as the ceiling. It prints one Markdown report: packets/s at ~0 loss,
//! CPU at a G.711 load, the time from a stream's first packet to its kernel
//! entry, and the relay's RSS with many sessions. A bench, not a test: it
//! needs root, `ip`, `nft`, and optionally `rtpengine`; it removes its
//! namespaces (and with them every process-external state) when it ends.
//! Every load loop is bounded in packets and in time.
//!
//! `cargo build --release -p relaybox -p relaybox-bench && sudo target/release/relaybox-bench`
//! (options: `--streams N --seconds S --sessions N --rates a,b,c --no-rtpengine --pin-relay`).
//! The subcommands `gen` and `ng` are the parts it runs inside namespaces.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

mod phases;
mod setup;

const RELAY_IP: &str = "10.88.0.1";
const CALLER_IP: &str = "10.88.1.2";
const CALLEE_IP: &str = "10.88.2.2";
const CALLER_PORT: u16 = 4000;
const CALLEE_PORT: u16 = 5000;
/// G.711 at 20 ms: 160 bytes of audio + 12 of RTP header.
const PACKET: usize = 172;
const G711_PPS: u64 = 50;
const NG_PORT: u16 = 22222;
const RELAYBOX_MARK: &str = "1919025153";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") => gen(&args[1..]),
        Some("ng") => ng(&args[1..]),
        Some("setupgen") => setup::setupgen(&args[1..]),
        Some("fake") => setup::fake(&args[1..]),
        _ => run(Options::parse(&args)?),
    }
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn sleep_until_us(t: u64) {
    let now = unix_us();
    if t > now {
        std::thread::sleep(Duration::from_micros(t - now));
    }
}

// ---------------------------------------------------------------- gen

/// `gen BIND TARGETS_FILE LATCH_AT_US DATA_AT_US PPS SECONDS`: one phone side
/// of N streams on one socket. At `LATCH_AT_US` it sends one latch packet per
/// stream (2000 streams/s) and again 300 ms later; at `DATA_AT_US` it sends
/// data packets round-robin at `PPS` for `SECONDS`, while counting the data
/// packets it receives until 1.5 s after its own end. Prints when each
/// stream's first packet left, and how many packets each target was sent.
fn gen(args: &[String]) -> anyhow::Result<()> {
    let [bind, targets, latch_at, data_at, pps, seconds] = args else { bail!("gen: bad arguments {args:?}") };
    let targets: Vec<SocketAddr> = std::fs::read_to_string(targets)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    let (latch_at, data_at): (u64, u64) = (latch_at.parse()?, data_at.parse()?);
    let (pps, seconds): (u64, u64) = (pps.parse()?, seconds.parse()?);
    let socket = UdpSocket::bind(bind.as_str())?;
    // Room for bursts while the counting thread waits for a CPU.
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
    let receiver = socket.try_clone()?;
    receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
    let recv_until = data_at + seconds * 1_000_000 + 1_500_000;
    let counter = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = [0u8; 2048];
        while unix_us() < recv_until {
            if let Ok(n) = receiver.recv(&mut buf) {
                if n > 12 && buf[12] == 1 {
                    got += 1;
                }
            }
        }
        got
    });
    let mut packet = vec![0u8; PACKET];
    packet[0] = 0x80;
    packet[1] = 0; // PCMU
    let mut first = Vec::with_capacity(targets.len());
    let mut per_target = vec![0u64; targets.len()];
    for round in 0..2u64 {
        let start = latch_at + round * 300_000;
        for (i, t) in targets.iter().enumerate() {
            sleep_until_us(start + i as u64 * 500);
            if round == 0 {
                first.push(unix_us());
            }
            if socket.send_to(&packet, t).is_ok() {
                per_target[i] += 1;
            }
        }
    }
    packet[12] = 1;
    sleep_until_us(data_at);
    let total = pps * seconds;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    let deadline = Duration::from_secs(seconds) + Duration::from_millis(500);
    // Bounded by count and by time.
    while sent + failed < total && started.elapsed() < deadline {
        let due = (started.elapsed().as_micros() as u64 * pps / 1_000_000).min(total);
        if sent + failed >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in (sent + failed)..due {
            let i = ((sent + failed) % targets.len() as u64) as usize;
            packet[2..4].copy_from_slice(&((sent as u16).to_be_bytes()));
            match socket.send_to(&packet, targets[i]) {
                Ok(_) => {
                    sent += 1;
                    per_target[i] += 1;
                }
                Err(_) => failed += 1,
            }
        }
    }
    let got = counter.join().unwrap_or(0);
    let mut out = String::new();
    for (i, t) in first.iter().enumerate() {
        out.push_str(&format!("FIRST {i} {t}\n"));
    }
    for (i, n) in per_target.iter().enumerate() {
        out.push_str(&format!("TSENT {i} {n}\n"));
    }
    out.push_str(&format!("SENT {sent}\nGOT {got}\n"));
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------- ng

fn bencode_str(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn sdp(ip: &str, port: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=sendrecv\r\n")
}

/// The port of the first `m=audio` line inside a bencoded NG answer.
fn sdp_port(reply: &str) -> Option<u16> {
    let at = reply.find("m=audio ")? + "m=audio ".len();
    reply[at..].split(' ').next()?.parse().ok()
}

/// `ng N`: offer/answer N calls to rtpengine on 127.0.0.1:22222 (run in the
/// relay namespace); prints `PORTS <caller sends to> <callee sends to>`.
fn ng(args: &[String]) -> anyhow::Result<()> {
    let [n, command] = args else { bail!("ng: bad arguments") };
    let n: usize = n.parse()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let to: SocketAddr = format!("127.0.0.1:{NG_PORT}").parse()?;
    let mut buf = vec![0u8; 65536];
    let mut ask = |cookie: String, body: String| -> anyhow::Result<String> {
        let msg = format!("{cookie} {body}");
        for _ in 0..3 {
            socket.send_to(msg.as_bytes(), to)?;
            if let Ok(n) = socket.recv(&mut buf) {
                let reply = String::from_utf8_lossy(&buf[..n]).to_string();
                if reply.starts_with(&cookie) {
                    return Ok(reply);
                }
            }
        }
        bail!("rtpengine did not answer {msg:?}")
    };
    let mut out = String::new();
    for i in 0..n {
        let call = format!("bench-{i}");
        if command == "delete" {
            let body = format!(
                "d{}{}{}{}{}{}e",
                bencode_str("command"),
                bencode_str("delete"),
                bencode_str("call-id"),
                bencode_str(&call),
                bencode_str("from-tag"),
                bencode_str("ft")
            );
            ask(format!("d{i}"), body)?;
            continue;
        }
        let offer = format!(
            "d{}{}{}{}{}{}{}{}e",
            bencode_str("command"),
            bencode_str("offer"),
            bencode_str("call-id"),
            bencode_str(&call),
            bencode_str("from-tag"),
            bencode_str("ft"),
            bencode_str("sdp"),
            bencode_str(&sdp(CALLER_IP, CALLER_PORT))
        );
        let reply = ask(format!("o{i}"), offer)?;
        let callee_to = sdp_port(&reply).with_context(|| format!("offer reply without SDP: {reply}"))?;
        let answer = format!(
            "d{}{}{}{}{}{}{}{}{}{}e",
            bencode_str("command"),
            bencode_str("answer"),
            bencode_str("call-id"),
            bencode_str(&call),
            bencode_str("from-tag"),
            bencode_str("ft"),
            bencode_str("to-tag"),
            bencode_str("tt"),
            bencode_str("sdp"),
            bencode_str(&sdp(CALLEE_IP, CALLEE_PORT))
        );
        let reply = ask(format!("a{i}"), answer)?;
        let caller_to = sdp_port(&reply).with_context(|| format!("answer reply without SDP: {reply}"))?;
        out.push_str(&format!("PORTS {caller_to} {callee_to}\n"));
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------- rig

struct Options {
    streams: usize,
    seconds: u64,
    /// Packets/s per direction tried in the max-rate search.
    rates: Vec<u64>,
    rtpengine: bool,
    relaybox: PathBuf,
    /// Which of a, b, c, d to run in the max-rate search (all by default;
    /// d is the reference).
    subjects: String,
    /// Rate phase: the relay on CPU 1 alone, the generators on every other
    /// CPU, so that on a machine with enough cores the relay's ceiling,
    /// not the generators', is found.
    pin_relay: bool,
    /// Which phases: setup, memory, cpu, rate.
    phases: Vec<String>,
    /// Each phase this many times (min / median / max reported).
    rounds: usize,
    /// Setup phase: module connections (and NG sockets) at once.
    conns: usize,
    /// Setup phase: seconds per step.
    setup_seconds: f64,
    /// Setup phase: calls held for the second half.
    held: usize,
    /// Memory phase: calls held at each step.
    memory_steps: Vec<usize>,
    /// CPU phase: packets/s per direction.
    cpu_rate: u64,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut o = Options {
            streams: 1000,
            seconds: 3,
            rates: vec![50_000, 100_000, 150_000, 200_000, 300_000, 400_000],
            rtpengine: true,
            relaybox: exe.with_file_name("relaybox"),
            subjects: "abcd".into(),
            pin_relay: false,
            phases: ["setup", "memory", "cpu", "rate"].map(String::from).to_vec(),
            rounds: 3,
            conns: 16,
            setup_seconds: 5.0,
            held: 4000,
            memory_steps: vec![1000, 4500],
            cpu_rate: 25_000,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--streams" => o.streams = value()?.parse()?,
                "--seconds" => o.seconds = value()?.parse()?,
                "--rates" => o.rates = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--phases" => o.phases = value()?.split(',').map(String::from).collect(),
                "--rounds" => o.rounds = value()?.parse()?,
                "--conns" => o.conns = value()?.parse()?,
                "--setup-seconds" => o.setup_seconds = value()?.parse()?,
                "--held" => o.held = value()?.parse()?,
                "--memory-steps" => o.memory_steps = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--cpu-rate" => o.cpu_rate = value()?.parse()?,
                "--relaybox" => o.relaybox = value()?.into(),
                "--no-rtpengine" => o.rtpengine = false,
                "--pin-relay" => o.pin_relay = true,
                "--only" => o.subjects = value()?.replace(',', ""),
                other => bail!("unknown option {other}"),
            }
        }
        anyhow::ensure!((1..=9000).contains(&o.streams), "--streams must be 1..=9000");
        anyhow::ensure!((1..=30).contains(&o.seconds), "--seconds must be 1..=30");
        anyhow::ensure!((1..=10).contains(&o.rounds), "--rounds must be 1..=10");
        anyhow::ensure!((1..=256).contains(&o.conns), "--conns must be 1..=256");
        anyhow::ensure!((1.0..=60.0).contains(&o.setup_seconds), "--setup-seconds must be 1 to 60");
        // 4 sockets per call: what fits under the machine's descriptor limit.
        anyhow::ensure!(o.held <= 4600, "--held must be at most 4600 (4 sockets per call, 20000 descriptors)");
        anyhow::ensure!(o.memory_steps.iter().all(|s| (1..=4600).contains(s)), "--memory-steps must be 1..=4600");
        for p in &o.phases {
            anyhow::ensure!(["setup", "memory", "cpu", "rate"].contains(&p.as_str()), "unknown phase {p}");
        }
        anyhow::ensure!(o.relaybox.exists(), "{} not found: cargo build --release -p relaybox", o.relaybox.display());
        Ok(o)
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The three namespaces, deleted on drop.
struct Rig {
    caller: String,
    relay: String,
    callee: String,
    dir: PathBuf,
}

impl Rig {
    fn new() -> anyhow::Result<Self> {
        let id = std::process::id() % 100_000;
        let (caller, relay, callee) = (format!("rbb{id}c"), format!("rbb{id}r"), format!("rbb{id}e"));
        let dir = std::env::temp_dir().join(format!("relaybox-bench-{id}"));
        std::fs::create_dir_all(&dir)?;
        let rig = Rig { caller, relay, callee, dir };
        for n in [&rig.caller, &rig.relay, &rig.callee] {
            let _ = sh(&["ip", "netns", "del", n]);
            sh(&["ip", "netns", "add", n])?;
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        for (peer, side, peer_ip, relay_side) in
            [(&rig.caller, "a", CALLER_IP, "10.88.1.1"), (&rig.callee, "b", CALLEE_IP, "10.88.2.1")]
        {
            let (outer, inner) = (format!("rbb{id}{side}0"), format!("rbb{id}{side}1"));
            sh(&[
                "ip", "link", "add", &outer, "netns", peer, "type", "veth", "peer", "name", &inner, "netns", &rig.relay,
            ])?;
            sh(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/24"), "dev", &outer])?;
            sh(&["ip", "-n", peer, "link", "set", &outer, "up"])?;
            sh(&["ip", "-n", peer, "route", "add", "default", "via", relay_side])?;
            sh(&["ip", "-n", &rig.relay, "addr", "add", &format!("{relay_side}/24"), "dev", &inner])?;
            sh(&["ip", "-n", &rig.relay, "link", "set", &inner, "up"])?;
        }
        sh(&["ip", "-n", &rig.relay, "addr", "add", &format!("{RELAY_IP}/32"), "dev", "lo"])?;
        sh(&["ip", "netns", "exec", &rig.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(rig)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for n in [&self.caller, &self.relay, &self.callee] {
            let _ = sh(&["ip", "netns", "del", n]);
        }
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A process in a namespace, killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(ns: &str, argv: &[&str], log: PathBuf, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Proc { child: cmd.spawn()?, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            if Instant::now() > until {
                bail!("{needle:?} not in {}:\n{}", self.log.display(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process used so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// (busy, total) jiffies of all CPUs.
fn system_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- datapaths

/// What forwards the media in one measurement.
#[derive(Clone, Copy, PartialEq)]
enum Subject {
    Kernel,
    Userspace,
    Rtpengine,
    Nft,
}

impl Subject {
    fn label(self) -> &'static str {
        match self {
            Subject::Kernel => "(a) relaybox, kernel datapath",
            Subject::Userspace => "(b) relaybox, userspace datapath",
            Subject::Rtpengine => "(c) rtpengine (userspace, NG protocol)",
            Subject::Nft => "(d) static nftables NAT (ceiling)",
        }
    }
}

/// A running datapath with N streams set up: per stream, the relay port the
/// caller sends to and the one the callee sends to.
struct Setup {
    procs: Vec<Proc>,
    ports: Vec<(u16, u16)>,
    /// The process whose CPU is the relay's (none for nftables).
    relay_pid: Option<u32>,
    relay_log: Option<PathBuf>,
    /// With `--pin-relay`: the CPUs the packet generators run on (a
    /// `taskset -c` list; the relay has CPU 1).
    gen_cpus: Option<String>,
}

struct Relaybox {
    certs: PathBuf,
    n: u32,
}

fn relaybox_certs(dir: &Path) -> anyhow::Result<PathBuf> {
    use relaybox_ca::{write_certs_dir, CertificateAuthority, Subject};
    let mut ca = CertificateAuthority::create(&Subject::new("relaybox bench CA"), 2)?;
    let relay = ca.issue(relaybox_ca::Role::Relay, &Subject::new("relay"), 2)?;
    let dispatcher = ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher"), 2)?;
    let out = dir.join("certs");
    write_certs_dir(&ca, &out, &relay, &dispatcher)?;
    Ok(out)
}

fn module_request(stream: &mut BufReader<UnixStream>, text: &str) -> anyhow::Result<String> {
    stream.get_mut().write_all(text.as_bytes())?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    Ok(line)
}

fn update(party: &str, call: &str, to_tag: &str, media: &str) -> String {
    format!(
        "update\r\ntype: {party}\r\ncall_id: {call}\r\ncseq: 1 INVITE\r\nfrom_uri: sip:a@example.com\r\nto_uri: sip:b@example.com\r\nfrom_tag: ft\r\nto_tag: {to_tag}\r\nuser_agent: bench\r\nsignaling_ip: 127.0.0.1\r\nmedia: {media}\r\n\r\n"
    )
}

fn reply_port(line: &str) -> anyhow::Result<u16> {
    line.split_whitespace().nth(1).and_then(|p| p.parse().ok()).with_context(|| format!("relay answered {line:?}"))
}

impl Relaybox {
    /// Dispatcher and relay in the relay namespace; `streams` calls set up.
    fn start(
        &mut self,
        rig: &Rig,
        relaybox: &Path,
        datapath: &str,
        streams: usize,
        port_range: &str,
        log_level: &str,
    ) -> anyhow::Result<Setup> {
        // One audio stream per call: the relay's descriptor budget then fits
        // the streams, not the whole port range (which needs more than the
        // 20 000 descriptors a machine like this allows).
        let caps = format!("max_sessions = {}\nmax_streams_per_session = 1\n", streams + 64);
        self.start_with(rig, relaybox, datapath, streams, port_range, log_level, &caps)
    }

    /// [`start`](Self::start) with more `[Relay]` settings (`extra`, lines).
    #[allow(clippy::too_many_arguments)]
    fn start_with(
        &mut self,
        rig: &Rig,
        relaybox: &Path,
        datapath: &str,
        streams: usize,
        port_range: &str,
        log_level: &str,
        extra: &str,
    ) -> anyhow::Result<Setup> {
        self.n += 1;
        let n = self.n;
        let (relay_port, mgmt_port) = (26000 + n as u16 * 2, 26001 + n as u16 * 2);
        let socket = rig.dir.join(format!("dispatcher{n}.sock"));
        let dcfg = rig.dir.join(format!("dispatcher{n}.ini"));
        std::fs::write(
            &dcfg,
            format!(
                "[Dispatcher]\nsocket_path = {}\nlisten = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{mgmt_port}\nmanagement_use_tls = no\nlog_level = WARNING\nmodule_timeout = 5\nrelay_timeout = 5\n[TLS]\ncerts_path = {}\n",
                socket.display(),
                self.certs.display()
            ),
        )?;
        let rcfg = rig.dir.join(format!("relay{n}.ini"));
        std::fs::write(
            &rcfg,
            format!(
                "[Relay]\ndispatchers = 127.0.0.1:{relay_port}\nrelay_ip = {RELAY_IP}\nport_range = {port_range}\nreconnect_delay = 1\ndatapath = {datapath}\nstate_file = {}\nlog_level = INFO\n{extra}[TLS]\ncerts_path = {}\n",
                rig.dir.join(format!("sessions{n}.bin")).display(),
                self.certs.display()
            ),
        )?;
        let bin = relaybox.to_string_lossy().to_string();
        let d = Proc::spawn(
            &rig.relay,
            &[&bin, "--config", &dcfg.to_string_lossy(), "dispatcher"],
            rig.dir.join(format!("dispatcher{n}.log")),
            &[("RUST_LOG", "warn")],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let script = format!("ulimit -n $(ulimit -Hn) && exec {bin} --config {} relay", rcfg.display());
        let r = Proc::spawn(
            &rig.relay,
            &["sh", "-c", &script],
            rig.dir.join(format!("relay{n}.log")),
            &[("RUST_LOG", log_level)],
        )?;
        if log_level != "warn" {
            r.wait_log("relay starting", Duration::from_secs(10))?;
        }
        let until = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            if let Ok(s) = UnixStream::connect(&socket) {
                break BufReader::new(s);
            }
            anyhow::ensure!(Instant::now() < until, "dispatcher socket did not appear");
            std::thread::sleep(Duration::from_millis(50));
        };
        stream.get_ref().set_read_timeout(Some(Duration::from_secs(10)))?;
        // The relay needs a moment to connect to the dispatcher.
        let mut ports = Vec::with_capacity(streams);
        for i in 0..streams {
            let call = format!("bench-{i}");
            let mut tries = 0;
            let offer = loop {
                let line = module_request(
                    &mut stream,
                    &update("request", &call, "", &format!("audio:{CALLER_IP}:{CALLER_PORT}:sendrecv:ice=no")),
                )?;
                if line.trim() != "error" || tries >= 50 {
                    break line;
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            };
            let answer = module_request(
                &mut stream,
                &update("reply", &call, "tt", &format!("audio:{CALLEE_IP}:{CALLEE_PORT}:sendrecv:ice=no")),
            )?;
            ports.push((reply_port(&answer)?, reply_port(&offer)?));
        }
        let (relay_pid, relay_log) = (Some(r.pid()), Some(r.log.clone()));
        Ok(Setup { procs: vec![d, r], ports, relay_pid, relay_log, gen_cpus: None })
    }
}

fn start_rtpengine(rig: &Rig, exe: &Path, streams: usize) -> anyhow::Result<Setup> {
    let p = Proc::spawn(
        &rig.relay,
        &[
            // rtpengine keeps the soft descriptor limit it starts with (1024
            // by default): 4 per call, it would stop near 250 calls.
            "prlimit",
            "--nofile=20000:20000",
            "rtpengine",
            "--foreground",
            "--log-stderr",
            "--table=-1",
            &format!("--interface={RELAY_IP}"),
            &format!("--listen-ng=127.0.0.1:{NG_PORT}"),
            "--port-min=40000",
            "--port-max=60000",
            // Ports of a deleted call come back at once, as relaybox's do
            // (the default keeps them 30 s, and a setup loop runs out).
            "--delete-delay=0",
            "--log-level=4",
            &format!("--pidfile={}", rig.dir.join("rtpengine.pid").display()),
        ],
        rig.dir.join("rtpengine.log"),
        &[],
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    let out = sh(&["ip", "netns", "exec", &rig.relay, &exe.to_string_lossy(), "ng", &streams.to_string(), "offer"])
        .with_context(|| format!("rtpengine log:\n{}", p.log_text()))?;
    let ports = out
        .lines()
        .filter_map(|l| l.strip_prefix("PORTS "))
        .map(|l| {
            let mut it = l.split(' ').filter_map(|p| p.parse::<u16>().ok());
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        })
        .collect();
    let pid = p.pid();
    Ok(Setup { procs: vec![p], ports, relay_pid: Some(pid), relay_log: None, gen_cpus: None })
}

/// One DNAT + SNAT per direction per stream in a static rule set: the
/// kernel's conntrack NAT with no relay at all.
fn start_nft(rig: &Rig, streams: usize) -> anyhow::Result<Setup> {
    let ports: Vec<(u16, u16)> = (0..streams as u16).map(|i| (40000 + 2 * i, 50000 + 2 * i)).collect();
    let to_callee: Vec<String> = ports.iter().map(|(a, _)| format!("{a} : {CALLEE_IP} . {CALLEE_PORT}")).collect();
    let to_caller: Vec<String> = ports.iter().map(|(_, b)| format!("{b} : {CALLER_IP} . {CALLER_PORT}")).collect();
    let rules = format!(
        "table ip rbbench {{
  chain pre {{ type nat hook prerouting priority -100;
    ip daddr {RELAY_IP} ip saddr {CALLER_IP} dnat ip addr . port to udp dport map {{ {} }}
    ip daddr {RELAY_IP} ip saddr {CALLEE_IP} dnat ip addr . port to udp dport map {{ {} }}
  }}
  chain post {{ type nat hook postrouting priority 100; ct status dnat snat to {RELAY_IP}; }}
}}
",
        to_callee.join(", "),
        to_caller.join(", ")
    );
    let file = rig.dir.join("static.nft");
    std::fs::write(&file, rules)?;
    sh(&["ip", "netns", "exec", &rig.relay, "nft", "-f", &file.to_string_lossy()])?;
    Ok(Setup { procs: Vec::new(), ports, relay_pid: None, relay_log: None, gen_cpus: None })
}

// ---------------------------------------------------------------- load

struct Load {
    /// Packets/s offered per direction.
    pps: u64,
    sent: u64,
    got: u64,
    /// Whole-machine busy CPU during the data phase, in cores.
    busy_cores: f64,
    /// The relay process's CPU during the data phase, in cores.
    relay_cores: Option<f64>,
    /// First packet (either side) of each stream, unix µs.
    first: Vec<u64>,
    /// Packets each phone sent to each stream's relay port.
    caller_sent: Vec<u64>,
    callee_sent: Vec<u64>,
}

impl Load {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            1.0 - self.got.min(self.sent) as f64 / self.sent as f64
        }
    }
}

/// What one `gen` reported: sent, received, first packet per stream (unix
/// µs), packets sent per stream.
type GenReport = (u64, u64, Vec<u64>, Vec<u64>);

fn parse_gen(out: &str) -> GenReport {
    let mut sent = 0;
    let mut got = 0;
    let mut first = Vec::new();
    let mut per_target = Vec::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("SENT") => sent = w.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("GOT") => got = w.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("FIRST") => first.push(w.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)),
            Some("TSENT") => per_target.push(w.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)),
            _ => {}
        }
    }
    (sent, got, first, per_target)
}

/// Both phones send `pps` per direction over all streams for `seconds`.
fn load(rig: &Rig, exe: &Path, setup: &Setup, pps: u64, seconds: u64) -> anyhow::Result<Load> {
    let write_targets = |name: &str, pick: fn(&(u16, u16)) -> u16| -> anyhow::Result<PathBuf> {
        let path = rig.dir.join(name);
        let text: String = setup.ports.iter().map(|p| format!("{RELAY_IP}:{}\n", pick(p))).collect();
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let caller_targets = write_targets("caller.targets", |p| p.0)?;
    let callee_targets = write_targets("callee.targets", |p| p.1)?;
    let latch_at = unix_us() + 500_000;
    let latch_time = setup.ports.len() as u64 * 500 + 300_000;
    let data_at = latch_at + latch_time + 1_000_000;
    let exe = exe.to_string_lossy().to_string();
    let pin: Vec<String> = match &setup.gen_cpus {
        Some(cpus) => vec!["taskset".into(), "-c".into(), cpus.clone()],
        None => Vec::new(),
    };
    let spawn = |ns: &str, bind: String, targets: &Path| -> anyhow::Result<Child> {
        Ok(Command::new("ip")
            .args(["netns", "exec", ns])
            .args(&pin)
            .args([exe.as_str(), "gen", &bind])
            .arg(targets)
            .args([latch_at.to_string(), data_at.to_string(), pps.to_string(), seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?)
    };
    let a = spawn(&rig.caller, format!("{CALLER_IP}:{CALLER_PORT}"), &caller_targets)?;
    let b = spawn(&rig.callee, format!("{CALLEE_IP}:{CALLEE_PORT}"), &callee_targets)?;
    sleep_until_us(data_at + 200_000);
    let (busy0, total0) = system_cpu();
    let relay0 = setup.relay_pid.map(process_cpu);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_micros(seconds * 1_000_000 - 400_000));
    let (busy1, total1) = system_cpu();
    let relay1 = setup.relay_pid.map(process_cpu);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let busy_cores = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cpus;
    let relay_cores = relay0.zip(relay1).map(|(a, b)| (b - a) / elapsed);
    let read = |c: Child| -> anyhow::Result<GenReport> {
        let mut c = c;
        let mut out = String::new();
        c.stdout.take().context("gen stdout")?.read_to_string(&mut out)?;
        c.wait()?;
        Ok(parse_gen(&out))
    };
    let (sa, ga, fa, ta) = read(a)?;
    let (sb, gb, fb, tb) = read(b)?;
    let first = fa.iter().zip(fb.iter()).map(|(x, y)| *x.min(y)).collect();
    Ok(Load { pps, sent: sa + sb, got: ga + gb, busy_cores, relay_cores, first, caller_sent: ta, callee_sent: tb })
}

/// Unix µs of a tracing timestamp such as `2026-11-25T03:06:31.863407Z`.
fn parse_timestamp(ts: &str) -> Option<u64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|v| v.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    u64::try_from((days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000 + micros).ok()
}

/// Per stream, from its first packet to the relay's "flow handed to the
/// kernel" for its RTP flow, in ms; sorted.
fn flow_latencies(log: &str, setup: &Setup, first: &[u64]) -> Vec<f64> {
    let by_port: HashMap<u16, usize> = setup.ports.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
    let mut out: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("flow handed to the kernel"))
        .filter_map(|l| {
            let at = parse_timestamp(l.split_whitespace().next()?)?;
            let ports = l.split("ports=").nth(1)?.split('/').next()?.parse::<u16>().ok()?;
            let i = *by_port.get(&ports)?;
            Some(at.saturating_sub(*first.get(i)?) as f64 / 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    subject: Subject,
    best_pps: Option<u64>,
    g711: Option<Load>,
    note: String,
}

fn measure(
    rig: &Rig,
    opts: &Options,
    exe: &Path,
    subject: Subject,
    setup: &Setup,
    latencies: &mut Vec<f64>,
) -> anyhow::Result<Row> {
    let g711_pps = G711_PPS * opts.streams as u64;
    eprintln!("{}: G.711 load, {} streams x 2 directions", subject.label(), opts.streams);
    let g711 = load(rig, exe, setup, g711_pps, opts.seconds)?;
    eprintln!("  sent {} got {} loss {:.4}%", g711.sent, g711.got, g711.loss() * 100.0);
    if subject == Subject::Kernel {
        if let Some(log) = &setup.relay_log {
            *latencies = flow_latencies(&std::fs::read_to_string(log).unwrap_or_default(), setup, &g711.first);
        }
    }
    let mut best = (g711.loss() <= 0.001).then_some(g711.pps * 2);
    let mut note = String::new();
    for &pps in &opts.rates {
        let l = load(rig, exe, setup, pps, opts.seconds)?;
        let offered = pps * opts.seconds * 2;
        eprintln!("  {pps} pps/direction: sent {} got {} loss {:.4}%", l.sent, l.got, l.loss() * 100.0);
        if l.sent * 100 < offered * 95 {
            note = format!("generator reached only {} pps at the {pps} pps step", l.sent / opts.seconds);
            break;
        }
        if l.loss() > 0.001 {
            break;
        }
        best = Some(l.sent / opts.seconds);
    }
    Ok(Row { subject, best_pps: best, g711: Some(g711), note })
}

fn run(opts: Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let rig = Rig::new()?;
    let mut rb = Relaybox { certs: relaybox_certs(&rig.dir)?, n: 0 };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("## relaybox-bench: {cpus} CPUs, kernel {}, load average at start {}", kernel_release(), loadavg_now());
    println!();
    let phase = |name: &str| opts.phases.iter().any(|p| p == name);
    if phase("setup") {
        phases::setup_phase(&rig, &opts, &exe, &mut rb)?;
    }
    if phase("memory") {
        phases::memory_phase(&rig, &opts, &exe, &mut rb)?;
    }
    if phase("cpu") {
        phases::cpu_phase(&rig, &opts, &exe, &mut rb)?;
    }
    if phase("rate") {
        for round in 0..opts.rounds {
            eprintln!("max-rate search, round {}", round + 1);
            rate_phase(&rig, &opts, &exe, &mut rb)?;
        }
    }
    Ok(())
}

fn loadavg_now() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The max-rate search and the G.711 load, once per subject.
fn rate_phase(rig: &Rig, opts: &Options, exe: &Path, rb: &mut Relaybox) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut latencies = Vec::new();
    let range = "40000:60000";

    for subject in [Subject::Nft, Subject::Kernel, Subject::Userspace, Subject::Rtpengine] {
        let letter = match subject {
            Subject::Kernel => 'a',
            Subject::Userspace => 'b',
            Subject::Rtpengine => 'c',
            Subject::Nft => 'd',
        };
        if !opts.subjects.contains(letter) {
            continue;
        }
        let setup = match subject {
            Subject::Nft => start_nft(rig, opts.streams),
            Subject::Kernel => rb.start(rig, &opts.relaybox, "kernel", opts.streams, range, "debug"),
            Subject::Userspace => rb.start(rig, &opts.relaybox, "userspace", opts.streams, range, "warn"),
            Subject::Rtpengine if !opts.rtpengine => {
                rows.push(Row { subject, best_pps: None, g711: None, note: "skipped (--no-rtpengine)".into() });
                continue;
            }
            Subject::Rtpengine => start_rtpengine(rig, exe, opts.streams),
        };
        let mut setup = match setup {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: cannot set up: {e:#}", subject.label());
                rows.push(Row { subject, best_pps: None, g711: None, note: format!("did not run: {e}") });
                continue;
            }
        };
        if opts.pin_relay {
            pin_relay(&mut setup)?;
        }
        let row = measure(rig, opts, exe, subject, &setup, &mut latencies)?;
        rows.push(row);
        if subject == Subject::Nft {
            let _ = sh(&["ip", "netns", "exec", &rig.relay, "nft", "delete", "table", "ip", "rbbench"]);
        }
        if subject == Subject::Kernel {
            let entries = sh(&["ip", "netns", "exec", &rig.relay, "conntrack", "-L", "-m", RELAYBOX_MARK])
                .map(|o| o.lines().filter(|l| l.starts_with("udp")).count())
                .unwrap_or(0);
            eprintln!("  kernel entries with the relaybox mark: {entries}");
        }
        drop(setup);
        // A killed relaybox leaves its entries and nft table: the next
        // subject starts from a namespace without conntrack hooks.
        let _ = sh(&["ip", "netns", "exec", &rig.relay, "nft", "delete", "table", "inet", "relaybox"]);
        let _ = sh(&["ip", "netns", "exec", &rig.relay, "conntrack", "-F"]);
    }
    report(opts, &rows, &latencies);
    Ok(())
}

/// `--pin-relay`: every thread of the relay process on CPU 1, the
/// generators on the others (the kernel's forwarding, softirq work, runs
/// where the packets are sent from, for every datapath alike).
fn pin_relay(setup: &mut Setup) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    anyhow::ensure!(cpus >= 2, "--pin-relay needs 2 CPUs, this machine has {cpus}");
    if let Some(pid) = setup.relay_pid {
        sh(&["taskset", "-a", "-p", "-c", "1", &pid.to_string()])?;
    }
    setup.gen_cpus = Some(if cpus > 2 { format!("0,2-{}", cpus - 1) } else { "0".into() });
    Ok(())
}

fn report(opts: &Options, rows: &[Row], latencies: &[f64]) {
    let ceiling = rows.iter().find(|r| r.subject == Subject::Nft).and_then(|r| r.best_pps);
    let ceiling_cpu =
        rows.iter().find(|r| r.subject == Subject::Nft).and_then(|r| r.g711.as_ref()).map(|l| l.busy_cores);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "### Run: {} streams, {} s per step, {cpus} CPUs, kernel {}",
        opts.streams,
        opts.seconds,
        kernel_release()
    );
    println!();
    println!(
        "Load average at the end (other work on the machine): {}",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| datapath | max pkt/s at ≤0.1% loss | vs (d) | G.711 load: loss | machine CPU (cores) | vs (d) | relay process CPU (cores) | note |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
            (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
            _ => "–".into(),
        };
        let best = r.best_pps.map_or("–".into(), |p| p.to_string());
        let (loss, cpu, relay) = match &r.g711 {
            Some(l) => (
                format!("{:.3}%", l.loss() * 100.0),
                format!("{:.2}", l.busy_cores),
                l.relay_cores.map_or("–".into(), |c| format!("{c:.2}")),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        println!(
            "| {} | {best} | {} | {loss} | {cpu} | {} | {relay} | {} |",
            r.subject.label(),
            ratio(r.best_pps.map(|p| p as f64), ceiling.map(|p| p as f64)),
            ratio(r.g711.as_ref().map(|l| l.busy_cores), ceiling_cpu),
            r.note
        );
    }
    println!();
    println!(
        "G.711 load = {} streams × 50 packets/s × 2 directions = {} packets/s of {PACKET} bytes.",
        opts.streams,
        opts.streams as u64 * G711_PPS * 2
    );
    println!();
    println!(
        "First packet → kernel entry ({} of {} streams): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        opts.streams,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
