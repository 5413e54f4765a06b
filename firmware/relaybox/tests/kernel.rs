//! The kernel datapath on real interfaces: caller, relay and callee each in
//! a network namespace of their own, joined by veth pairs; the dispatcher
//! and the relay run in the relay's namespace, the phones are this test
//! binary re-run in the caller's and callee's (`phone_helper`). Needs root.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MARK: &str = "1919025153"; // 0x72620001, the relay's conntrack mark
const RELAY_IP: &str = "10.77.0.1";
const CALLER_IP: &str = "10.77.1.2";
const CALLEE_IP: &str = "10.77.2.2";
const PACKETS: u32 = 300;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces deleted on drop (with their veths, conntrack entries
/// and nft tables).
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn create(names: &[String]) -> Self {
        let ns = Netns { names: names.to_vec() };
        for n in names {
            let _ = run(&["ip", "netns", "del", n]);
            ok(&["ip", "netns", "add", n]);
            ok(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// caller ns — relay ns — callee ns; the relay's address on its lo.
    fn three() -> (Self, String, String, String) {
        let id = std::process::id() % 100_000;
        let (c, r, e) = (format!("rbk{id}c"), format!("rbk{id}r"), format!("rbk{id}e"));
        let ns = Netns::create(&[c.clone(), r.clone(), e.clone()]);
        for (peer, side, peer_ip, relay_side_ip) in
            [(&c, "a", CALLER_IP, "10.77.1.1"), (&e, "b", CALLEE_IP, "10.77.2.1")]
        {
            let (outer, inner) = (format!("rbk{id}{side}0"), format!("rbk{id}{side}1"));
            ok(&["ip", "link", "add", &outer, "netns", peer, "type", "veth", "peer", "name", &inner, "netns", &r]);
            ok(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/24"), "dev", &outer]);
            ok(&["ip", "-n", peer, "link", "set", &outer, "up"]);
            ok(&["ip", "-n", peer, "route", "add", "default", "via", relay_side_ip]);
            ok(&["ip", "-n", &r, "addr", "add", &format!("{relay_side_ip}/24"), "dev", &inner]);
            ok(&["ip", "-n", &r, "link", "set", &inner, "up"]);
        }
        ok(&["ip", "-n", &r, "addr", "add", &format!("{RELAY_IP}/32"), "dev", "lo"]);
        (ns, c, r, e)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

/// Runs the relaybox binary in `ns`, optionally through a shell prefix.
fn spawn_in(rig: &Rig, ns: &str, role: &str, config: &Path, wrap: Option<&str>) -> Daemon {
    let log = rig.path(&format!("{role}-{ns}.log"));
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

/// Dispatcher and relay in the relay namespace, relay connected.
fn start(rig: &mut Rig, ns: &str, wrap: Option<&str>) -> (Daemon, Daemon) {
    let (certs, _) = rig.certs("certs", "relay1");
    let dcfg = rig.dispatcher_config(&certs, "");
    let d = spawn_in(rig, ns, "dispatcher", &dcfg, None);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let rcfg = rig.path("relay.ini");
    std::fs::write(
        &rcfg,
        format!(
            "[Relay]\ndispatchers = 127.0.0.1:{}\nrelay_ip = {RELAY_IP}\nport_range = 40000:40100\nreconnect_delay = 1\ntraffic_sampling_period = 1\n[TLS]\ncerts_path = {}\n",
            rig.relay_port,
            certs.display()
        ),
    )
    .unwrap();
    let r = spawn_in(rig, ns, "relay", &rcfg, wrap);
    r.wait_log("relay starting", Duration::from_secs(10));
    d.wait_log("relay connected", Duration::from_secs(10));
    (d, r)
}

struct PhoneResult {
    sent: u32,
    got: u32,
}

/// Starts a phone in `ns`: `count` packets from `bind` to `to`, 5 ms apart.
fn phone(ns: &str, bind: &str, to: &str) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--ignored", "--exact", "phone_helper", "--nocapture", "--test-threads=1"])
        .env("PHONE_BIND", bind)
        .env("PHONE_TO", to)
        .env("PHONE_COUNT", PACKETS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn phone_result(child: std::process::Child) -> PhoneResult {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.find("PHONE ").map(|at| &l[at..])).unwrap_or_else(|| panic!("phone said: {text}"));
    let num = |key: &str| -> u32 {
        line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap()
    };
    PhoneResult { sent: num("sent="), got: num("got=") }
}

/// Not a test: the phone run by `phone()` inside a namespace.
#[test]
#[ignore = "helper: run by the kernel tests inside a network namespace"]
fn phone_helper() {
    let Ok(bind) = std::env::var("PHONE_BIND") else { return };
    let to: std::net::SocketAddr = std::env::var("PHONE_TO").unwrap().parse().unwrap();
    let count: u32 = std::env::var("PHONE_COUNT").unwrap().parse().unwrap();
    let socket = std::net::UdpSocket::bind(bind.as_str()).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let receiver = socket.try_clone().unwrap();
    let got = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut buf = [0u8; 2048];
        let mut idle = 0;
        // Ends after 1 s without packets once sending has started.
        while idle < 5 {
            match receiver.recv_from(&mut buf) {
                Ok(_) => {
                    got += 1;
                    idle = 0;
                }
                Err(_) => idle += 1,
            }
        }
        got
    });
    for seq in 0..count {
        let mut packet = vec![0x80u8, 8];
        packet.extend_from_slice(&(seq as u16).to_be_bytes());
        packet.resize(172, 0);
        let _ = socket.send_to(&packet, to);
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = got.join().unwrap();
    println!("PHONE sent={count} got={got}");
}

fn conntrack_entries(ns: &str) -> Vec<String> {
    let out = run(&["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "udp", "-m", MARK]);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("udp")).map(str::to_string).collect()
}

fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key} not in {text}")) + key.len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// Offer from the caller, answer from the callee; returns the ports the
/// caller and the callee send to.
fn set_up_call(rig: &Rig, call: &str, caller: &str, callee: &str) -> (Module, u16, u16) {
    let mut m = Module::connect(&rig.socket);
    let (offer, _) = m.request(&update("request", call, 1, "", &format!("audio:{caller}:sendrecv:ice=no")));
    let (ip, offer_ports) = ports(&offer);
    assert_eq!(ip, RELAY_IP, "{offer}");
    let (answer, _) = m.request(&update("reply", call, 1, "tt", &format!("audio:{callee}:sendrecv:ice=no")));
    let (_, answer_ports) = ports(&answer);
    (m, answer_ports[0], offer_ports[0])
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn the_kernel_forwards_a_latched_call_and_its_counters_reach_the_stats() {
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (d, mut r) = start(&mut rig, &relay_ns, None);
    let startup = r.log_text();
    assert!(startup.contains("the kernel forwards latched media"), "{startup}");

    let caller = format!("{CALLER_IP}:4000");
    let callee = format!("{CALLEE_IP}:5000");
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "kcall", &caller, &callee);
    let started = Instant::now();
    let a = phone(&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}"));
    let b = phone(&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}"));
    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!("caller got {}/{}, callee got {}/{} in {:?}", a.got, b.sent, b.got, a.sent, started.elapsed());
    assert!(a.got * 100 >= b.sent * 95, "caller got {} of {}", a.got, b.sent);
    assert!(b.got * 100 >= a.sent * 95, "callee got {} of {}", b.got, a.sent);

    let entries = conntrack_entries(&relay_ns);
    eprintln!("conntrack: {entries:#?}");
    assert_eq!(entries.len(), 1, "one RTP flow (no RTCP sent): {entries:?}");
    let e = &entries[0];
    assert!(e.contains(&format!("src={CALLER_IP} dst={RELAY_IP} sport=4000 dport={caller_to}")), "{e}");
    assert!(e.contains(&format!("src={CALLEE_IP} dst={RELAY_IP} sport=5000 dport={callee_to}")), "{e}");
    let kernel_packets = number_after(e, "packets=");
    assert!(kernel_packets * 100 >= u64::from(PACKETS) * 90, "kernel counted {kernel_packets}: {e}");

    assert_eq!(m.request(&remove("kcall")).0, "removed\r\n");
    let log = d.wait_log("accounted", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("accounted") && l.contains("kcall")).unwrap().to_string();
    let (caller_packets, callee_packets) =
        (number_after(&line, "\"caller_packets\":"), number_after(&line, "\"callee_packets\":"));
    let relay_log = r.wait_log("session removed", Duration::from_secs(5));
    let removed = relay_log.lines().find(|l| l.contains("session removed")).unwrap();
    let userspace = number_after(removed, "userspace_packets=");
    eprintln!(
        "stats: caller_packets={caller_packets} callee_packets={callee_packets}; userspace saw {userspace} of {} datagrams",
        2 * PACKETS
    );
    assert!(caller_packets * 100 >= u64::from(a.sent) * 95, "{line}");
    assert!(callee_packets * 100 >= u64::from(b.sent) * 95, "{line}");
    assert!(userspace <= 10, "userspace saw {userspace} packets: the kernel did not take over");
    assert!(conntrack_entries(&relay_ns).is_empty(), "entries left after remove");

    // The nft table lives as long as the relay.
    assert!(run(&["ip", "netns", "exec", &relay_ns, "nft", "list", "table", "inet", "relaybox"]).status.success());
    r.signal("TERM");
    assert!(r.wait_exit(Duration::from_secs(10)).is_some(), "relay did not exit");
    assert!(!run(&["ip", "netns", "exec", &relay_ns, "nft", "list", "table", "inet", "relaybox"]).status.success());
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn without_conntrack_accounting_the_relay_says_so_and_relays_in_userspace() {
    let id = std::process::id() % 100_000;
    let ns_name = format!("rbk{id}u");
    let _ns = Netns::create(&[ns_name.clone()]);
    ok(&["ip", "-n", &ns_name, "addr", "add", &format!("{RELAY_IP}/32"), "dev", "lo"]);
    let mut rig = Rig::new();
    // nf_conntrack_acct reads 0 and cannot be written (a read-only bind mount).
    let zero = rig.path("zero");
    std::fs::write(&zero, "0\n").unwrap();
    let wrap = format!("mount --bind -o ro {} /proc/sys/net/netfilter/nf_conntrack_acct", zero.display());
    let (d, r) = start(&mut rig, &ns_name, Some(&wrap));
    let startup = r.log_text();
    assert!(startup.contains("falling back from the kernel"), "{startup}");
    assert!(startup.contains("nf_conntrack_acct is 0 and cannot be set"), "{startup}");
    assert!(!run(&["ip", "netns", "exec", &ns_name, "nft", "list", "table", "inet", "relaybox"]).status.success());

    let (caller, callee) = (format!("{RELAY_IP}:4000"), format!("{RELAY_IP}:5000"));
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "ucall", &caller, &callee);
    let a = phone(&ns_name, &caller, &format!("{RELAY_IP}:{caller_to}"));
    let b = phone(&ns_name, &callee, &format!("{RELAY_IP}:{callee_to}"));
    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!("userspace: caller got {}/{}, callee got {}/{}", a.got, b.sent, b.got, a.sent);
    assert!(a.got * 100 >= b.sent * 95 && b.got * 100 >= a.sent * 95);
    assert_eq!(m.request(&remove("ucall")).0, "removed\r\n");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let userspace = number_after(log.lines().find(|l| l.contains("session removed")).unwrap(), "userspace_packets=");
    assert!(userspace >= u64::from(2 * PACKETS) * 95 / 100, "userspace forwarded only {userspace}");
    drop(d);
}
