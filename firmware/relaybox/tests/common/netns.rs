//! Network-namespace helpers for the root-only tests (kernel, interfaces,
//! ipv6): commands, namespaces deleted on drop, the relaybox binary run in a
//! namespace, and "phones": the test binary re-run in a namespace as its own
//! `phone_helper` test, sending RTP-like datagrams and counting what comes back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, Rig, BIN};

pub fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn ok(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces (with their veths, conntrack entries and nft tables),
/// deleted on drop.
pub struct Netns {
    pub names: Vec<String>,
}

impl Netns {
    /// Fresh namespaces with `lo` up (leftovers of the same name go first).
    pub fn create(names: &[String]) -> Self {
        let ns = Netns { names: names.to_vec() };
        for n in names {
            let _ = run(&["ip", "netns", "del", n]);
            ok(&["ip", "netns", "add", n]);
            ok(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }
}

/// Waits until every interface of `ns` but `lo` is operationally up. A
/// veth passes packets only once the kernel's link watcher has activated
/// it (up to a second after `link set up`); what is sent before is
/// dropped, and a lost first neighbour solicitation costs a 1 s retry.
pub fn wait_links_up(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(&["ip", "-n", ns, "-o", "link", "show"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let down: Vec<&str> = text.lines().filter(|l| !l.contains(" lo:") && !l.contains("state UP")).collect();
        if down.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "links of {ns} not up after 5 s: {down:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

/// Runs the relaybox binary in `ns`, optionally after a shell prefix run in
/// a private mount namespace (`wrap`).
pub fn spawn_in(rig: &Rig, ns: &str, role: &str, config: &Path, wrap: Option<&str>) -> Daemon {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = rig.path(&format!("{role}-{ns}-{n}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    match wrap {
        Some(script) => {
            cmd.args(["unshare", "-m", "sh", "-c", &format!("{script} && exec \"$0\" --config \"$1\" {role}")]);
            cmd.arg(BIN).arg(config);
        }
        None => {
            cmd.arg(BIN).arg("--config").arg(config).arg(role);
        }
    }
    let child = cmd.env("RUST_LOG", "debug").stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().unwrap();
    Daemon { child, log }
}

/// The dispatcher in `ns`, ready, and the relay's config for the netns
/// rigs: ports 40000:40100, 1 s reconnect and traffic sampling, state file
/// and control socket in the rig, then `relay_lines` (`relay_ip`,
/// `datapath`, ...).
pub fn start_dispatcher(rig: &mut Rig, ns: &str, relay_lines: &str) -> (Daemon, PathBuf) {
    let (certs, _) = rig.certs("certs", "relay1");
    let dcfg = rig.dispatcher_config(&certs, "");
    let d = spawn_in(rig, ns, "dispatcher", &dcfg, None);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let rcfg = rig.path("relay.ini");
    std::fs::write(
        &rcfg,
        format!(
            "[Relay]\ndispatchers = 127.0.0.1:{}\nport_range = 40000:40100\nreconnect_delay = 1\ntraffic_sampling_period = 1\nstate_file = {}\ncontrol_socket = {}\n{relay_lines}\n[TLS]\ncerts_path = {}\n",
            rig.relay_port,
            rig.path("sessions.bin").display(),
            rig.path("relay.sock").display(),
            certs.display()
        ),
    )
    .unwrap();
    (d, rcfg)
}

/// Dispatcher and relay in `ns` (the relay after the `wrap` shell prefix,
/// see [`spawn_in`]), the relay connected.
pub fn start_pair(rig: &mut Rig, ns: &str, wrap: Option<&str>, relay_lines: &str) -> (Daemon, Daemon) {
    let (d, rcfg) = start_dispatcher(rig, ns, relay_lines);
    let r = spawn_in(rig, ns, "relay", &rcfg, wrap);
    r.wait_log("relay starting", Duration::from_secs(10));
    d.wait_log("relay connected", Duration::from_secs(10));
    (d, r)
}

/// What a phone reports.
pub struct PhoneResult {
    pub sent: u32,
    pub got: u32,
    /// Longest time between two packets received, in ms.
    pub max_gap: u32,
    /// The source addresses of what it received, comma separated.
    pub from: String,
    /// Received datagrams that are not the other phone's media (a phone
    /// sends 172-byte packets with payload type 8; anything else is not
    /// from a phone).
    pub foreign: u32,
    /// With `PHONE_REBIND_AT`: what arrived at the second socket.
    pub got_after_rebind: u32,
    /// Datagrams received at the size both phones send (`PHONE_SIZE`).
    pub whole: u32,
}

/// One phone of a call: its namespace, the address it binds, where it sends.
pub type PhoneAt<'a> = (&'a str, &'a str, &'a str);

/// Starts the two phones of a call: each sends `count` packets from its
/// address, `gap_ms` apart, counting what comes back. Both bind first and
/// start sending at the same instant, 0.5 s from now: whatever one phone
/// sends before the other has bound is lost, and on a loaded machine two
/// process start-ups can be tens of milliseconds apart.
pub fn phones_paced(a: PhoneAt, b: PhoneAt, count: u32, gap_ms: u32) -> (Child, Child) {
    phones_with(a, &[], b, &[], count, gap_ms)
}

/// [`phones_paced`] with datagrams of `size` bytes.
pub fn phones_sized(a: PhoneAt, b: PhoneAt, count: u32, gap_ms: u32, size: usize) -> (Child, Child) {
    let size = size.to_string();
    let env = [("PHONE_SIZE", size.as_str())];
    phones_with(a, &env, b, &env, count, gap_ms)
}

/// [`phones_paced`] with more of [`phone_main`]'s settings for each phone
/// (`PHONE_REBIND_AT`, `PHONE_SIZE`, ...).
pub fn phones_with(
    a: PhoneAt,
    a_env: &[(&str, &str)],
    b: PhoneAt,
    b_env: &[(&str, &str)],
    count: u32,
    gap_ms: u32,
) -> (Child, Child) {
    let start = (unix_us() + 500_000).to_string();
    let (count, gap_ms) = (count.to_string(), gap_ms.to_string());
    let start_one = |(ns, bind, to): PhoneAt, extra: &[(&str, &str)]| {
        let mut env = vec![
            ("PHONE_BIND", bind),
            ("PHONE_TO", to),
            ("PHONE_COUNT", count.as_str()),
            ("PHONE_GAP_MS", gap_ms.as_str()),
            ("PHONE_START_US", start.as_str()),
        ];
        env.extend_from_slice(extra);
        helper_in(ns, &env)
    };
    (start_one(a, a_env), start_one(b, b_env))
}

/// Microseconds since the Unix epoch (the phones' shared start time).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// This test binary re-run in `ns` as its own `phone_helper` test, which
/// does what `env` asks (a phone, a sprayer, many calls); stdout piped.
pub fn helper_in(ns: &str, env: &[(&str, &str)]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "phone_helper", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn phone_result(child: Child) -> PhoneResult {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.find("PHONE ").map(|at| &l[at..])).unwrap_or_else(|| panic!("phone said: {text}"));
    let word = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or("").to_string();
    let num = |key: &str| -> u32 { word(key).parse().unwrap_or_else(|_| panic!("no {key} in {line}")) };
    let optional = |key: &str| -> u32 { word(key).parse().unwrap_or(0) };
    let got = num("got=");
    PhoneResult {
        sent: num("sent="),
        got,
        max_gap: num("maxgap="),
        from: word("from="),
        foreign: optional("foreign="),
        got_after_rebind: optional("rebound="),
        // Helpers that do not check sizes print no whole=.
        whole: word("whole=").parse().unwrap_or(got),
    }
}

/// The body of each netns test file's `phone_helper`: does nothing unless
/// started by [`phones_paced`]. Receiving ends after 1 s without packets once
/// some came, or 5 s without any (first IPv6 neighbour resolutions). With
/// `PHONE_REBIND_AT=n` (and `PHONE_REBIND_BIND`), the phone's NAT mapping
/// changes after `n` packets: the rest leave from the second address, and
/// what arrives there is counted too. `PHONE_SIZE` (172) is the size of
/// every datagram a phone sends.
pub fn phone_main() {
    let Ok(bind) = std::env::var("PHONE_BIND") else { return };
    let to: std::net::SocketAddr = std::env::var("PHONE_TO").unwrap().parse().unwrap();
    let count: u32 = std::env::var("PHONE_COUNT").unwrap().parse().unwrap();
    let gap: u64 = std::env::var("PHONE_GAP_MS").ok().and_then(|g| g.parse().ok()).unwrap_or(5);
    let rebind_at: Option<u32> = std::env::var("PHONE_REBIND_AT").ok().and_then(|n| n.parse().ok());
    let size: usize = std::env::var("PHONE_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(172);
    let socket = std::net::UdpSocket::bind(bind.as_str()).unwrap();
    let second =
        rebind_at.map(|_| std::net::UdpSocket::bind(std::env::var("PHONE_REBIND_BIND").unwrap().as_str()).unwrap());
    let start: u64 = std::env::var("PHONE_START_US").unwrap().parse().unwrap();
    let now = unix_us();
    if start > now {
        std::thread::sleep(Duration::from_micros(start - now));
    }
    let receivers: Vec<_> =
        std::iter::once(&socket).chain(second.as_ref()).map(|s| std::thread::spawn(receive(s, size))).collect();
    for seq in 0..count {
        let mut packet = vec![0x80u8, 8];
        packet.extend_from_slice(&(seq as u16).to_be_bytes());
        packet.resize(size, 0);
        let from = match (&second, rebind_at) {
            (Some(second), Some(at)) if seq >= at => second,
            _ => &socket,
        };
        let _ = from.send_to(&packet, to);
        std::thread::sleep(Duration::from_millis(gap));
    }
    let results: Vec<Received> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
    let got: u32 = results.iter().map(|r| r.got).sum();
    let foreign: u32 = results.iter().map(|r| r.foreign).sum();
    let whole: u32 = results.iter().map(|r| r.whole).sum();
    let max_gap = results.iter().map(|r| r.max_gap).max().unwrap_or(0);
    let from: BTreeSet<String> = results.iter().flat_map(|r| r.from.iter().cloned()).collect();
    let rebound = results.get(1).map_or(0, |r| r.got);
    let from = from.into_iter().collect::<Vec<_>>().join(",");
    println!(
        "PHONE sent={count} got={got} maxgap={max_gap} from={from} foreign={foreign} rebound={rebound} whole={whole}"
    );
}

/// What one phone socket received.
struct Received {
    got: u32,
    foreign: u32,
    /// Datagrams of the size the phones send.
    whole: u32,
    max_gap: u128,
    from: BTreeSet<String>,
}

/// A receiving thread on a clone of `socket` (see [`phone_main`]); the
/// phones send `size`-byte datagrams.
fn receive(socket: &std::net::UdpSocket, size: usize) -> impl FnOnce() -> Received {
    let receiver = socket.try_clone().unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    move || {
        let (mut got, mut foreign, mut whole, mut idle, mut from) = (0u32, 0u32, 0u32, 0, BTreeSet::new());
        let mut buf = vec![0u8; 65_536];
        let (start, mut last, mut max_gap) = (Instant::now(), None::<Instant>, Duration::ZERO);
        while idle < 5 || (got == 0 && start.elapsed() < Duration::from_secs(5)) {
            match receiver.recv_from(&mut buf) {
                Ok((n, src)) => {
                    got += 1;
                    idle = 0;
                    whole += u32::from(n == size);
                    if n != size || buf[..2] != [0x80, 8] {
                        foreign += 1;
                    }
                    from.insert(src.ip().to_string());
                    let now = Instant::now();
                    if let Some(l) = last {
                        max_gap = max_gap.max(now - l);
                    }
                    last = Some(now);
                }
                Err(_) => idle += 1,
            }
        }
        Received { got, foreign, whole, max_gap: max_gap.as_millis(), from }
    }
}

/// The relay's conntrack mark (0x72620001), as `conntrack -m` takes it.
pub const MARK: &str = "1919025153";

/// relaybox's UDP conntrack entries in `ns` (`family`: ipv4 or ipv6), one
/// `conntrack -L` line each.
pub fn relaybox_entries(ns: &str, family: &str) -> Vec<String> {
    let out = run(&["ip", "netns", "exec", ns, "conntrack", "-L", "-f", family, "-p", "udp", "-m", MARK]);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("udp")).map(str::to_string).collect()
}

/// The number right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key} not in {text}")) + key.len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}
