//! The kernel datapath on real interfaces: caller, relay and callee each in
//! a network namespace of their own, joined by veth pairs; the dispatcher
//! and the relay run in the relay's namespace, the phones are this test
//! binary re-run in the caller's and callee's (`phone_helper`). Needs root.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::time::{Duration, Instant};

use common::netns::{
    self, number_after, ok, phone_result, phones_paced, phones_sized, phones_with, run, spawn_in, Netns, PhoneAt,
};
use common::*;

const RELAY_IP: &str = "10.77.0.1";
const CALLER_IP: &str = "10.77.1.2";
const CALLEE_IP: &str = "10.77.2.2";
const PACKETS: u32 = 300;

impl Netns {
    /// caller ns — relay ns — callee ns; the relay's address on its lo.
    fn three() -> (Self, String, String, String) {
        let (ns, mut names) = Netns::star(&[(CALLER_IP, "10.77.1.1"), (CALLEE_IP, "10.77.2.1")]);
        let (e, c) = (names.pop().unwrap(), names.pop().unwrap());
        (ns, c, names.pop().unwrap(), e)
    }

    /// The relay's namespace with one peer namespace per `(peer_ip,
    /// relay_side_ip)` (/24 veth links); returns the names, relay first.
    fn star(peers: &[(&str, &str)]) -> (Self, Vec<String>) {
        let id = std::process::id() % 100_000;
        let r = format!("rbk{id}r");
        let mut names = vec![r.clone()];
        names.extend((0..peers.len()).map(|i| format!("rbk{id}p{i}")));
        let ns = Netns::create(&names);
        for (i, (peer_ip, relay_side_ip)) in peers.iter().enumerate() {
            let peer = &names[i + 1];
            let (outer, inner) = (format!("rbk{id}v{i}0"), format!("rbk{id}v{i}1"));
            ok(&["ip", "link", "add", &outer, "netns", peer, "type", "veth", "peer", "name", &inner, "netns", &r]);
            ok(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/24"), "dev", &outer]);
            ok(&["ip", "-n", peer, "link", "set", &outer, "up"]);
            ok(&["ip", "-n", peer, "route", "add", "default", "via", relay_side_ip]);
            ok(&["ip", "-n", &r, "addr", "add", &format!("{relay_side_ip}/24"), "dev", &inner]);
            ok(&["ip", "-n", &r, "link", "set", &inner, "up"]);
        }
        ok(&["ip", "-n", &r, "addr", "add", &format!("{RELAY_IP}/32"), "dev", "lo"]);
        for n in &names {
            netns::wait_links_up(n);
        }
        (ns, names)
    }
}

/// Dispatcher and relay in the relay namespace, relay connected.
fn start(rig: &mut Rig, ns: &str, wrap: Option<&str>) -> (Daemon, Daemon) {
    start_with(rig, ns, wrap, "")
}

/// The dispatcher in `ns`, ready; and the relay's config with `extra`.
fn start_dispatcher(rig: &mut Rig, ns: &str, extra: &str) -> (Daemon, std::path::PathBuf) {
    netns::start_dispatcher(rig, ns, &format!("relay_ip = {RELAY_IP}\n{extra}"))
}

fn start_with(rig: &mut Rig, ns: &str, wrap: Option<&str>, extra: &str) -> (Daemon, Daemon) {
    netns::start_pair(rig, ns, wrap, &format!("relay_ip = {RELAY_IP}\n{extra}"))
}

/// Starts a phone in `ns`: `PACKETS` packets from `bind` to `to`, 5 ms apart.
/// The call's two phones, `PACKETS` each, 5 ms apart.
fn phones(a: PhoneAt, b: PhoneAt) -> (std::process::Child, std::process::Child) {
    phones_paced(a, b, PACKETS, 5)
}

/// Not a test: the phone run by `phone()` inside a namespace.
#[test]
#[ignore = "helper: run by the kernel tests inside a network namespace"]
fn phone_helper() {
    if let Ok(targets) = std::env::var("SPRAY_TO") {
        if std::env::var("SPRAY_FOR_MS").is_ok() {
            return spray_for(&targets);
        }
        return spray(&targets);
    }
    if let Ok(targets) = std::env::var("MANY_TO") {
        return many(&targets);
    }
    netns::phone_main();
}

/// One line command on the relay's control socket.
fn control(rig: &Rig, command: &str) -> String {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(rig.path("relay.sock")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

fn conntrack_entries(ns: &str) -> Vec<String> {
    netns::relaybox_entries(ns, "ipv4")
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
    let (a, b) = phones(
        (&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
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

    // The relay's totals (status page, /metrics, bps_relayed) include what
    // the kernel forwarded, read from its counters.
    std::thread::sleep(Duration::from_millis(1500)); // one traffic_sampling_period
    let metrics = control(&rig, "metrics");
    let relayed = number_after(&metrics, "\"packets_relayed\":");
    let bytes = number_after(&metrics, "\"bytes_relayed\":");
    eprintln!("relay totals: {relayed} packets, {bytes} bytes (phones sent {})", a.sent + b.sent);
    assert!(relayed * 100 >= u64::from(a.sent + b.sent) * 95, "{metrics}");
    assert_eq!(bytes, relayed * 172, "UDP payload bytes: {metrics}");

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

    // The nft table, programmed over netlink, reads back as `nft` would
    // write it, and lives as long as the relay.
    let listing = run(&["ip", "netns", "exec", &relay_ns, "nft", "list", "table", "inet", "relaybox"]);
    let listing: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("ct state invalid"))
        .map(str::to_string)
        .collect();
    let expected = [
        "table inet relaybox {",
        "chain conntrack_pre {",
        "type filter hook prerouting priority mangle; policy accept;",
        "}",
        "chain conntrack_out {",
        "type filter hook output priority mangle; policy accept;",
        "}",
        "chain notrack_out {",
        "type filter hook output priority raw; policy accept;",
        "udp sport 40000-40099 notrack",
        "}",
        "chain nat_pre {",
        "type nat hook prerouting priority dstnat; policy accept;",
        "}",
        "chain nat_post {",
        "type nat hook postrouting priority srcnat; policy accept;",
        "}",
        "}",
    ];
    assert_eq!(listing, expected);
    let rules = run(&["ip", "netns", "exec", &relay_ns, "nft", "list", "table", "inet", "relaybox"]);
    let invalid = String::from_utf8_lossy(&rules.stdout).matches("ct state invalid counter packets").count();
    assert_eq!(invalid, 2, "the ct rules of conntrack_pre and conntrack_out");
    assert!(nft_table_exists(&relay_ns));
    r.signal("TERM");
    assert!(r.wait_exit(Duration::from_secs(10)).is_some(), "relay did not exit");
    assert!(!nft_table_exists(&relay_ns));
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn without_conntrack_accounting_the_relay_says_so_and_relays_in_userspace() {
    let (_ns, ns_name, mut rig, wrap) = without_acct("u");
    let (d, r) = start(&mut rig, &ns_name, Some(&wrap));
    let startup = r.log_text();
    assert!(startup.contains("falling back from the kernel"), "{startup}");
    assert!(startup.contains("nf_conntrack_acct is 0 and cannot be set"), "{startup}");
    assert!(!nft_table_exists(&ns_name));

    let (caller, callee) = (format!("{RELAY_IP}:4000"), format!("{RELAY_IP}:5000"));
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "ucall", &caller, &callee);
    let (a, b) = phones(
        (&ns_name, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&ns_name, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!("userspace: caller got {}/{}, callee got {}/{}", a.got, b.sent, b.got, a.sent);
    assert!(a.got * 100 >= b.sent * 95 && b.got * 100 >= a.sent * 95);
    assert_eq!(m.request(&remove("ucall")).0, "removed\r\n");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let userspace = number_after(log.lines().find(|l| l.contains("session removed")).unwrap(), "userspace_packets=");
    assert!(userspace >= u64::from(2 * PACKETS) * 95 / 100, "userspace forwarded only {userspace}");
    drop(d);
}

/// One namespace holding the relay's address, and a start-up wrapper under
/// which nf_conntrack_acct reads 0 and cannot be written (a read-only bind
/// mount): the kernel datapath's prerequisites are missing there.
fn without_acct(tag: &str) -> (Netns, String, Rig, String) {
    let ns_name = format!("rbk{}{tag}", std::process::id() % 100_000);
    let ns = Netns::create(std::slice::from_ref(&ns_name));
    ok(&["ip", "-n", &ns_name, "addr", "add", &format!("{RELAY_IP}/32"), "dev", "lo"]);
    let rig = Rig::new();
    let zero = rig.path("zero");
    std::fs::write(&zero, "0\n").unwrap();
    let wrap = format!("mount --bind -o ro {} /proc/sys/net/netfilter/nf_conntrack_acct", zero.display());
    (ns, ns_name, rig, wrap)
}

fn nft_table_exists(ns: &str) -> bool {
    run(&["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "relaybox"]).status.success()
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn datapath_kernel_without_the_kernel_refuses_to_start_and_says_what_is_missing() {
    let (_ns, ns_name, mut rig, wrap) = without_acct("k");
    let (_d, rcfg) = start_dispatcher(&mut rig, &ns_name, "datapath = kernel");
    let mut r = spawn_in(&rig, &ns_name, "relay", &rcfg, Some(&wrap));
    let status = r.wait_exit(Duration::from_secs(10)).expect("the relay kept running without its kernel datapath");
    let log = r.log_text();
    assert!(!status.success(), "exit status {status:?}\n{log}");
    assert!(log.contains("datapath = kernel, but the kernel cannot forward media"), "{log}");
    assert!(log.contains("nf_conntrack_acct is 0 and cannot be set"), "{log}");
    assert!(!log.contains("relay starting"), "{log}");
    assert!(!nft_table_exists(&ns_name), "nft table left behind");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn datapath_userspace_leaves_the_kernel_alone() {
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (_d, r) = start_with(&mut rig, &relay_ns, None, "datapath = userspace");
    let startup = r.log_text();
    assert!(startup.contains("media is forwarded in userspace ([Relay] datapath = userspace)"), "{startup}");
    assert!(!startup.contains("falling back"), "{startup}");
    assert!(!nft_table_exists(&relay_ns), "userspace mode added the nft table");

    let caller = format!("{CALLER_IP}:4000");
    let callee = format!("{CALLEE_IP}:5000");
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "uscall", &caller, &callee);
    let (a, b) = phones(
        (&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    assert!(a.got * 100 >= b.sent * 95 && b.got * 100 >= a.sent * 95, "{}/{} {}/{}", a.got, b.sent, b.got, a.sent);
    assert!(conntrack_entries(&relay_ns).is_empty(), "userspace mode installed conntrack entries");
    assert_eq!(m.request(&remove("uscall")).0, "removed\r\n");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let userspace = number_after(log.lines().find(|l| l.contains("session removed")).unwrap(), "userspace_packets=");
    assert!(userspace >= u64::from(2 * PACKETS) * 95 / 100, "userspace forwarded only {userspace}");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_port_range_inside_the_kernels_ephemeral_ports_is_reported_at_start() {
    let (_ns, _caller_ns, relay_ns, _callee_ns) = Netns::three();
    let sysctl = |setting: &str| ok(&["ip", "netns", "exec", &relay_ns, "sysctl", "-q", "-w", setting]);
    // The rigs' relays use port_range 40000:40100.
    sysctl("net.ipv4.ip_local_port_range=40050 40199");
    let mut rig = Rig::new();
    let (d, r) = start_with(&mut rig, &relay_ns, None, "datapath = userspace");
    let log = r.wait_log("overlaps the kernel's ephemeral ports", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("overlaps the kernel's ephemeral ports")).unwrap();
    assert!(line.contains("WARN") && line.contains("port_range 40000:40100"), "{line}");
    assert!(
        line.contains("ephemeral ports 40050-40199") && line.contains("ip_local_reserved_ports=40050-40099"),
        "{line}"
    );
    drop((r, d));
    // Reserved for the relay: nothing to say.
    sysctl("net.ipv4.ip_local_reserved_ports=40050-40099");
    let mut rig = Rig::new();
    let (_d, r) = start_with(&mut rig, &relay_ns, None, "datapath = userspace");
    let log = r.log_text();
    assert!(log.contains("relay starting") && !log.contains("ephemeral ports"), "{log}");
}

/// One management command, asked from inside `ns` (the dispatcher's
/// management port listens on that namespace's loopback).
fn management_in(ns: &str, port: u16, command: &str) -> String {
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf '{command}\\r\\n' >&3; timeout 10 head -n 1 <&3");
    let out = run(&["ip", "netns", "exec", ns, "bash", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Lines of the dispatcher log that say it adopted `n` sessions of a relay.
fn adoptions(d: &Daemon, n: usize) -> usize {
    let needle = format!("sessions={n}");
    d.log_text().lines().filter(|l| l.contains("relay sessions adopted") && l.contains(&needle)).count()
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_call_survives_a_relay_restart_and_the_kernel_never_stops_forwarding() {
    const COUNT: u32 = 1200; // 6 s at 5 ms
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (d, rcfg) = start_dispatcher(&mut rig, &relay_ns, "datapath = kernel");
    let mut r1 = spawn_in(&rig, &relay_ns, "relay", &rcfg, None);
    r1.wait_log("relay starting", Duration::from_secs(10));
    d.wait_log("relay connected", Duration::from_secs(10));

    let caller = format!("{CALLER_IP}:4000");
    let callee = format!("{CALLEE_IP}:5000");
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "rcall", &caller, &callee);
    let (a, b) = phones_paced(
        (&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
        COUNT,
        5,
    );
    let until = Instant::now() + Duration::from_secs(10);
    while conntrack_entries(&relay_ns).is_empty() {
        assert!(Instant::now() < until, "the kernel never took the call:\n{}", r1.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(conntrack_entries(&relay_ns).len(), 1, "the kernel forwards before the restart");

    // Stop for a restart: the state file is written, the entry stays.
    r1.signal("USR1");
    let status = r1.wait_exit(Duration::from_secs(5)).expect("relay did not stop on SIGUSR1");
    assert!(status.success(), "{status:?}\n{}", r1.log_text());
    assert!(r1.log_text().contains("SIGUSR1: stopping for a restart"), "{}", r1.log_text());
    assert!(rig.path("sessions.bin").exists(), "no state file");
    assert_eq!(conntrack_entries(&relay_ns).len(), 1, "the entry must outlive the relay");
    assert!(nft_table_exists(&relay_ns), "the NAT hooks must outlive the relay");
    // No relay for 1.5 s: a datapath that stopped with it would show as a
    // gap of at least that long at the phones.
    std::thread::sleep(Duration::from_millis(1500));

    let r2 = spawn_in(&rig, &relay_ns, "relay", &rcfg, None);
    r2.wait_log("relay starting", Duration::from_secs(10));
    let log = r2.wait_log_all(
        &["kernel flows of the restored sessions found again", "sessions restored"],
        Duration::from_secs(5),
    );
    let line = log.lines().find(|l| l.contains("found again")).unwrap();
    assert!(line.contains("kept=1") && line.contains("gone=0"), "{line}");
    let until = Instant::now() + Duration::from_secs(10);
    while adoptions(&d, 1) == 0 {
        assert!(Instant::now() < until, "dispatcher did not adopt the call:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!(
        "across the restart: caller got {}/{} (longest gap {} ms), callee got {}/{} (longest gap {} ms)",
        a.got, b.sent, a.max_gap, b.got, a.sent, b.max_gap
    );
    assert!(a.got * 100 >= b.sent * 95, "caller got {} of {}", a.got, b.sent);
    assert!(b.got * 100 >= a.sent * 95, "callee got {} of {}", b.got, a.sent);
    assert!(a.max_gap < 1000 && b.max_gap < 1000, "media paused: {} / {} ms", a.max_gap, b.max_gap);

    let sessions = management_in(&relay_ns, rig.mgmt_port, "sessions");
    assert!(sessions.contains("\"call_id\":\"rcall\""), "management sessions: {sessions}");
    assert_eq!(m.request(&remove("rcall")).0, "removed\r\n");
    let log = d.wait_log("accounted", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("accounted") && l.contains("rcall")).unwrap().to_string();
    let (caller_packets, callee_packets) =
        (number_after(&line, "\"caller_packets\":"), number_after(&line, "\"callee_packets\":"));
    eprintln!(
        "stats after the restart: caller_packets={caller_packets} callee_packets={callee_packets} of {COUNT} each"
    );
    assert!(caller_packets * 100 >= u64::from(a.sent) * 95 && caller_packets <= u64::from(a.sent), "{line}");
    assert!(callee_packets * 100 >= u64::from(b.sent) * 95 && callee_packets <= u64::from(b.sent), "{line}");
    assert!(conntrack_entries(&relay_ns).is_empty(), "entries left after remove");
    drop(r2);
}

/// The RTP-bleed attacker: from `SPRAY_BIND`, sends `SPRAY_COUNT` rounds of
/// RTP-looking packets to every address in `targets` (comma separated),
/// 1 ms apart, says `SPRAYED`, then counts for `SPRAY_LISTEN_MS` what comes
/// back.
fn spray(targets: &str) {
    let bind = std::env::var("SPRAY_BIND").unwrap();
    let rounds: u32 = std::env::var("SPRAY_COUNT").unwrap().parse().unwrap();
    let listen: u64 = std::env::var("SPRAY_LISTEN_MS").unwrap().parse().unwrap();
    let targets: Vec<std::net::SocketAddr> = targets.split(',').map(|t| t.parse().unwrap()).collect();
    let socket = std::net::UdpSocket::bind(bind.as_str()).unwrap();
    let mut sent = 0u32;
    for seq in 0..rounds {
        for t in &targets {
            let mut packet = vec![0x80u8, 0];
            packet.extend_from_slice(&(seq as u16).to_be_bytes());
            packet.resize(172, 0xee);
            if socket.send_to(&packet, t).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("SPRAYED");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let until = Instant::now() + Duration::from_millis(listen);
    let mut got = 0u32;
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if socket.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    println!("SPRAY sent={sent} got={got}");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn rtp_bleed_a_sprayer_during_set_up_captures_nothing() {
    // Public addresses in SDP: the relay must latch only to these.
    const CALLER: &str = "198.51.100.2";
    const CALLEE: &str = "203.0.113.2";
    const SPRAYER: &str = "198.18.0.66";
    let (_ns, names) = Netns::star(&[(CALLER, "198.51.100.1"), (CALLEE, "203.0.113.1"), (SPRAYER, "198.18.0.1")]);
    let (relay_ns, caller_ns, callee_ns, sprayer_ns) = (&names[0], &names[1], &names[2], &names[3]);
    let mut rig = Rig::new();
    let (_d, _r) = start_with(&mut rig, relay_ns, None, "datapath = kernel");

    let (caller, callee) = (format!("{CALLER}:4000"), format!("{CALLEE}:5000"));
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "bcall", &caller, &callee);
    let targets: Vec<String> =
        [caller_to, caller_to + 1, callee_to, callee_to + 1].iter().map(|p| format!("{RELAY_IP}:{p}")).collect();
    let (to, bind) = (targets.join(","), format!("{SPRAYER}:6000"));
    let mut sprayer = netns::helper_in(
        sprayer_ns,
        &[("SPRAY_TO", &to), ("SPRAY_BIND", &bind), ("SPRAY_COUNT", "50"), ("SPRAY_LISTEN_MS", "4000")],
    );
    // The phones start once the spray is over: it came first.
    let mut out = std::io::BufReader::new(sprayer.stdout.take().unwrap());
    let mut line = String::new();
    let until = Instant::now() + Duration::from_secs(10);
    while !line.contains("SPRAYED") {
        line.clear();
        assert!(Instant::now() < until, "sprayer did not finish");
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "sprayer ended early");
    }
    let (a, b) = phones(
        (caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = sprayer.wait();
    let spray_line = rest.lines().find(|l| l.contains("SPRAY sent=")).unwrap_or_else(|| panic!("sprayer said: {rest}"));
    let (spray_sent, spray_got) = (number_after(spray_line, "sent="), number_after(spray_line, "got="));
    eprintln!(
        "bleed: sprayer sent {spray_sent}, got {spray_got}; caller got {}/{}, callee got {}/{}",
        a.got, b.sent, b.got, a.sent
    );
    assert_eq!(spray_sent, 200);
    assert_eq!(spray_got, 0, "the sprayer received media");
    assert!(a.got * 100 >= b.sent * 95 && b.got * 100 >= a.sent * 95, "media broken by the spray");

    let entries = conntrack_entries(relay_ns);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].contains(&format!("src={CALLER} dst={RELAY_IP} sport=4000 dport={caller_to}")), "{entries:?}");
    assert!(entries[0].contains(&format!("src={CALLEE} dst={RELAY_IP} sport=5000 dport={callee_to}")), "{entries:?}");
    let sessions = management_in(relay_ns, rig.mgmt_port, "sessions");
    assert!(sessions.contains(&format!("\"caller_remote\":\"{caller}\"")), "{sessions}");
    assert!(sessions.contains(&format!("\"callee_remote\":\"{callee}\"")), "{sessions}");
    let summary = management_in(relay_ns, rig.mgmt_port, "summary");
    let bleed = number_after(&summary, "\"bleed_drops\":");
    eprintln!("summary: {summary}");
    assert!(bleed > 0 && bleed <= spray_sent, "bleed_drops {bleed}: {summary}");
    assert_eq!(m.request(&remove("bcall")).0, "removed\r\n");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_kernel_forwarded_call_whose_media_stops_ends_as_conntrack_timeout() {
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    for (key, value) in [("nf_conntrack_udp_timeout", "2"), ("nf_conntrack_udp_timeout_stream", "2")] {
        ok(&["ip", "netns", "exec", &relay_ns, "sysctl", "-qw", &format!("net.netfilter.{key}={value}")]);
    }
    let mut rig = Rig::new();
    let (d, _r) = start_with(&mut rig, &relay_ns, None, "datapath = kernel\nstream_timeout = 2");
    let (caller, callee) = (format!("{CALLER_IP}:4000"), format!("{CALLEE_IP}:5000"));
    let (_m, caller_to, callee_to) = set_up_call(&rig, "tcall", &caller, &callee);
    let (a, b) = phones(
        (&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    assert!(a.got * 100 >= b.sent * 95 && b.got * 100 >= a.sent * 95);
    // The phones are silent now (their receivers waited 1 s more).
    let stopped = Instant::now();
    let log = d.wait_log("session expired and accounted", Duration::from_secs(15));
    let took = stopped.elapsed();
    let line = log.lines().find(|l| l.contains("session expired and accounted") && l.contains("tcall")).unwrap();
    eprintln!("expired {took:?} after the phones stopped: {line}");
    assert!(line.contains("\"status\":\"conntrack timeout\""), "{line}");
    let caller_packets = number_after(line, "\"caller_packets\":");
    assert!(caller_packets * 100 >= u64::from(a.sent) * 95, "{line}");
    assert!(conntrack_entries(&relay_ns).is_empty());
}

/// One socket talking to many relay ports (phones behind one NAT address):
/// from `MANY_BIND`, one packet to target i at `MANY_AT_US` + i × 4 ms +
/// `MANY_OFFSET_US`, then 5 rounds to all targets 20 ms apart; counts what
/// arrives until 1 s of silence.
fn many(targets: &str) {
    let bind = std::env::var("MANY_BIND").unwrap();
    let at: u64 = std::env::var("MANY_AT_US").unwrap().parse().unwrap();
    let offset: u64 = std::env::var("MANY_OFFSET_US").unwrap().parse().unwrap();
    let targets: Vec<std::net::SocketAddr> = targets.split(',').map(|t| t.parse().unwrap()).collect();
    let socket = std::net::UdpSocket::bind(bind.as_str()).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let receiver = socket.try_clone().unwrap();
    let unix_us = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    // Latching, 0.5 s, the data rounds, and 1 s for stragglers.
    let until = at + targets.len() as u64 * 4000 + 2_500_000;
    let got = std::thread::spawn(move || {
        let (mut got, mut buf) = (0u32, [0u8; 2048]);
        while unix_us() < until {
            if receiver.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    });
    let mut packet = vec![0x80u8, 8];
    packet.resize(172, 0);
    let mut sent = 0u32;
    for (i, t) in targets.iter().enumerate() {
        let due = at + i as u64 * 4000 + offset;
        let now = unix_us();
        if due > now {
            std::thread::sleep(Duration::from_micros(due - now));
        }
        let _ = socket.send_to(&packet, t);
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        for (i, t) in targets.iter().enumerate() {
            if socket.send_to(&packet, t).is_ok() {
                sent += 1;
            }
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = got.join().unwrap();
    println!("PHONE sent={sent} got={got} maxgap=0");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn many_calls_from_one_address_each_get_their_own_kernel_flow() {
    // Every stream's first packets race its flow's installation; a relay
    // whose own packets got conntrack entries would see some NAT'd onto
    // another stream's relay port, and that stream would never latch.
    const CALLS: usize = 800;
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (_d, rcfg) = start_dispatcher(&mut rig, &relay_ns, "datapath = kernel");
    let text = std::fs::read_to_string(&rcfg).unwrap().replace("port_range = 40000:40100", "port_range = 40000:44000");
    std::fs::write(&rcfg, text).unwrap();
    let r = spawn_in(&rig, &relay_ns, "relay", &rcfg, None);
    r.wait_log("relay starting", Duration::from_secs(10));
    _d.wait_log("relay connected", Duration::from_secs(10));
    let (caller, callee) = (format!("{CALLER_IP}:4000"), format!("{CALLEE_IP}:5000"));
    let mut m = Module::connect(&rig.socket);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for i in 0..CALLS {
        let call = format!("many{i}");
        let (offer, _) = m.request(&update("request", &call, 1, "", &format!("audio:{caller}:sendrecv:ice=no")));
        let (answer, _) = m.request(&update("reply", &call, 1, "tt", &format!("audio:{callee}:sendrecv:ice=no")));
        to_a.push(format!("{RELAY_IP}:{}", ports(&answer).1[0]));
        to_b.push(format!("{RELAY_IP}:{}", ports(&offer).1[0]));
    }
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64 + 500_000;
    let side = |ns: &str, bind: &str, targets: &[String], offset: u64| {
        let (to, at, offset) = (targets.join(","), at.to_string(), offset.to_string());
        netns::helper_in(ns, &[("MANY_TO", &to), ("MANY_BIND", bind), ("MANY_AT_US", &at), ("MANY_OFFSET_US", &offset)])
    };
    let a = side(&caller_ns, &caller, &to_a, 0);
    let b = side(&callee_ns, &callee, &to_b, 2000);
    let (a, b) = (phone_result(a), phone_result(b));
    let entries = conntrack_entries(&relay_ns).len();
    eprintln!(
        "{CALLS} calls from one address: {entries} kernel flows; caller got {}/{}, callee got {}/{}",
        a.got, b.sent, b.got, a.sent
    );
    assert_eq!(entries, CALLS, "every call gets its kernel flow");
    assert!(a.got * 100 >= b.sent * 99 && b.got * 100 >= a.sent * 99);
    drop(r);
}

/// The RTP-bleed attacker of the NAT tests: from every address in
/// `SPRAY_BINDS`, sends an RTP-looking packet (payload type 0, 0xee bytes:
/// no phone's) to every address in `targets`, one round every
/// `SPRAY_GAP_MS`, for `SPRAY_FOR_MS`; says `SPRAYING` at the first round.
/// Counts everything that comes back on any of its sockets until
/// `SPRAY_LISTEN_MS` after the last round.
fn spray_for(targets: &str) {
    let env = |k: &str| std::env::var(k).unwrap();
    let (for_ms, gap_ms, listen_ms): (u64, u64, u64) = (
        env("SPRAY_FOR_MS").parse().unwrap(),
        env("SPRAY_GAP_MS").parse().unwrap(),
        env("SPRAY_LISTEN_MS").parse().unwrap(),
    );
    let targets: Vec<std::net::SocketAddr> = targets.split(',').map(|t| t.parse().unwrap()).collect();
    let sockets: Vec<std::net::UdpSocket> =
        env("SPRAY_BINDS").split(',').map(|b| std::net::UdpSocket::bind(b).unwrap()).collect();
    let stop = Instant::now() + Duration::from_millis(for_ms + listen_ms);
    let receivers: Vec<_> = sockets
        .iter()
        .map(|s| {
            let r = s.try_clone().unwrap();
            r.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            std::thread::spawn(move || {
                let (mut got, mut buf) = (0u32, [0u8; 2048]);
                while Instant::now() < stop {
                    if r.recv_from(&mut buf).is_ok() {
                        got += 1;
                    }
                }
                got
            })
        })
        .collect();
    let mut packet = vec![0x80u8, 0];
    packet.resize(172, 0xee);
    let (started, mut sent, mut seq) = (Instant::now(), 0u64, 0u16);
    println!("SPRAYING");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while started.elapsed() < Duration::from_millis(for_ms) {
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        seq = seq.wrapping_add(1);
        for t in &targets {
            for s in &sockets {
                if s.send_to(&packet, t).is_ok() {
                    sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(gap_ms));
    }
    let got: u32 = receivers.into_iter().map(|r| r.join().unwrap()).sum();
    println!("SPRAY sent={sent} got={got}");
}

/// An update whose `signaling_ip` is `signaling` (where the party's SIP
/// came from: its NAT).
fn signaled_update(party: &str, call: &str, to_tag: &str, signaling: &str, media: &str) -> String {
    update(party, call, 1, to_tag, media).replace("signaling_ip: 127.0.0.1", &format!("signaling_ip: {signaling}"))
}

/// Phones behind NAT, seen from the relay: each announces a private address
/// in its SDP and sends SIP and RTP from its router's public address (its
/// namespace's address here).
const NAT_CALLER: &str = "198.51.100.2";
const NAT_CALLEE: &str = "203.0.113.2";
const NAT_SPRAYER: &str = "198.18.0.66";
const CALLER_SDP: &str = "192.168.1.10:4000";
const CALLEE_SDP: &str = "192.168.2.20:5000";

/// relay — caller, callee, sprayer (each its own namespace and /24).
fn nat_star() -> (Netns, Vec<String>) {
    Netns::star(&[(NAT_CALLER, "198.51.100.1"), (NAT_CALLEE, "203.0.113.1"), (NAT_SPRAYER, "198.18.0.1")])
}

/// Offer and answer with private SDP addresses, each signaled from the
/// party's NAT; returns the ports the caller and the callee send to.
fn set_up_nat_call(rig: &Rig, call: &str) -> (Module, u16, u16) {
    let mut m = Module::connect(&rig.socket);
    let media = |sdp: &str| format!("audio:{sdp}:sendrecv:ice=no");
    let (offer, _) = m.request(&signaled_update("request", call, "", NAT_CALLER, &media(CALLER_SDP)));
    let (answer, _) = m.request(&signaled_update("reply", call, "tt", NAT_CALLEE, &media(CALLEE_SDP)));
    let ((ip, offer_ports), (_, answer_ports)) = (ports(&offer), ports(&answer));
    assert_eq!(ip, RELAY_IP, "{offer}");
    (m, answer_ports[0], offer_ports[0])
}

/// Reads the sprayer's last line: (sent, got).
fn spray_result(mut sprayer: std::process::Child, mut out: impl std::io::Read) -> (u64, u64) {
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = sprayer.wait();
    let line = rest.lines().find(|l| l.contains("SPRAY sent=")).unwrap_or_else(|| panic!("sprayer said: {rest}"));
    (number_after(line, "sent="), number_after(line, "got="))
}

/// The attack of issue #11 on a relay with `datapath`: two phones behind
/// NAT (private SDP), an attacker spraying every port of the relay's range
/// from two source ports, starting after the answer and 1 s before the
/// phones, going on during and after their media.
fn a_sprayer_captures_nothing_from_phones_behind_nat(datapath: &str) {
    let (_ns, names) = nat_star();
    let (relay_ns, caller_ns, callee_ns, sprayer_ns) = (&names[0], &names[1], &names[2], &names[3]);
    let mut rig = Rig::new();
    let (_d, r) = start_with(&mut rig, relay_ns, None, &format!("datapath = {datapath}"));
    let (mut m, caller_to, callee_to) = set_up_nat_call(&rig, "natbleed");

    let targets: Vec<String> = (40000..40100).map(|p| format!("{RELAY_IP}:{p}")).collect();
    let binds = format!("{NAT_SPRAYER}:6000,{NAT_SPRAYER}:6001");
    let mut sprayer = netns::helper_in(
        sprayer_ns,
        &[
            ("SPRAY_TO", &targets.join(",")),
            ("SPRAY_BINDS", &binds),
            ("SPRAY_FOR_MS", "4500"),
            ("SPRAY_GAP_MS", "20"),
            ("SPRAY_LISTEN_MS", "1000"),
        ],
    );
    let mut out = std::io::BufReader::new(sprayer.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("SPRAYING") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "sprayer ended early");
    }
    // The phones start 1 s after the spray (0.5 s here, 0.5 s in phones_paced),
    // within the 3 s learning window.
    std::thread::sleep(Duration::from_millis(500));
    let (caller, callee) = (format!("{NAT_CALLER}:31000"), format!("{NAT_CALLEE}:42000"));
    let (a, b) = phones(
        (caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    let (spray_sent, spray_got) = spray_result(sprayer, out);
    let summary = management_in(relay_ns, rig.mgmt_port, "summary");
    let bleed = number_after(&summary, "\"bleed_drops\":");
    eprintln!(
        "{datapath}: sprayer sent {spray_sent}, got {spray_got}; caller got {}/{} ({} foreign), callee got {}/{} ({} foreign); bleed_drops {bleed}",
        a.got, b.sent, a.foreign, b.got, a.sent, b.foreign
    );
    assert!(spray_sent >= 10_000, "the spray was too thin: {spray_sent}");
    assert_eq!(spray_got, 0, "phone media reached the attacker");
    assert_eq!((a.foreign, b.foreign), (0, 0), "attacker datagrams reached a phone");
    assert!(a.got * 100 >= b.sent * 99, "caller got {} of {}", a.got, b.sent);
    assert!(b.got * 100 >= a.sent * 99, "callee got {} of {}", b.got, a.sent);
    assert!(bleed > 0, "{summary}");

    let sessions = management_in(relay_ns, rig.mgmt_port, "sessions");
    assert!(sessions.contains(&format!("\"caller_remote\":\"{caller}\"")), "{sessions}");
    assert!(sessions.contains(&format!("\"callee_remote\":\"{callee}\"")), "{sessions}");
    if datapath == "kernel" {
        let entries = conntrack_entries(relay_ns);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert!(entries[0].contains(&format!("src={NAT_CALLER} dst={RELAY_IP} sport=31000")), "{entries:?}");
        assert!(entries[0].contains(&format!("src={NAT_CALLEE} dst={RELAY_IP} sport=42000")), "{entries:?}");
    }
    assert!(!r.log_text().contains("vouches for"), "a fallback latch:\n{}", r.log_text());
    assert_eq!(m.request(&remove("natbleed")).0, "removed\r\n");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn rtp_bleed_a_sprayer_captures_nothing_from_phones_behind_nat_in_userspace() {
    a_sprayer_captures_nothing_from_phones_behind_nat("userspace");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn rtp_bleed_a_sprayer_captures_nothing_from_phones_behind_nat_in_the_kernel() {
    a_sprayer_captures_nothing_from_phones_behind_nat("kernel");
}

/// A call between phones behind NAT whose caller's NAT mapping changes
/// mid-call (another source port from packet 200 of 400): the relay moves
/// the caller's leg (and its kernel flow) to the new mapping.
fn a_nat_rebind_keeps_the_media_flowing(datapath: &str) {
    const COUNT: u32 = 400;
    let (_ns, names) = nat_star();
    let (relay_ns, caller_ns, callee_ns) = (&names[0], &names[1], &names[2]);
    let mut rig = Rig::new();
    let (_d, r) = start_with(&mut rig, relay_ns, None, &format!("datapath = {datapath}"));
    let (mut m, caller_to, callee_to) = set_up_nat_call(&rig, "rebind");
    let (caller, callee) = (format!("{NAT_CALLER}:31000"), format!("{NAT_CALLEE}:42000"));
    let rebound = format!("{NAT_CALLER}:31500");
    let (a, b) = phones_with(
        (caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        &[("PHONE_REBIND_AT", "200"), ("PHONE_REBIND_BIND", &rebound)],
        (callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
        &[],
        COUNT,
        5,
    );
    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!(
        "{datapath}: caller got {}/{} ({} at its new mapping, longest gap {} ms), callee got {}/{}",
        a.got, b.sent, a.got_after_rebind, a.max_gap, b.got, a.sent
    );
    assert!(a.got * 100 >= b.sent * 97, "caller got {} of {}", a.got, b.sent);
    assert!(b.got * 100 >= a.sent * 97, "callee got {} of {}", b.got, a.sent);
    assert!(a.got_after_rebind * 100 >= (COUNT - 200) * 95, "{} at the new mapping", a.got_after_rebind);
    let log = r.wait_log("moved from", Duration::from_secs(5));
    let moved = log.lines().find(|l| l.contains("moved from")).unwrap();
    assert!(moved.contains(&format!("caller RTP moved from {caller} to {rebound} (signaling IP)")), "{moved}");
    let sessions = management_in(relay_ns, rig.mgmt_port, "sessions");
    assert!(sessions.contains(&format!("\"caller_remote\":\"{rebound}\"")), "{sessions}");
    if datapath == "kernel" {
        let entries = conntrack_entries(relay_ns);
        assert_eq!(entries.len(), 1, "the old flow is gone: {entries:?}");
        assert!(entries[0].contains(&format!("src={NAT_CALLER} dst={RELAY_IP} sport=31500")), "{entries:?}");
    }
    assert_eq!(m.request(&remove("rebind")).0, "removed\r\n");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_phone_whose_nat_mapping_changes_keeps_its_media_in_userspace() {
    a_nat_rebind_keeps_the_media_flowing("userspace");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_phone_whose_nat_mapping_changes_keeps_its_media_in_the_kernel() {
    a_nat_rebind_keeps_the_media_flowing("kernel");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_phone_behind_a_signaling_proxy_latches_after_the_learning_window_with_a_warning() {
    // The callee's SIP comes through a proxy listed in signaling_proxies:
    // nothing vouches for its NAT, so its media waits out the window (1 s
    // here), then latches; the relay says so.
    let (_ns, names) = nat_star();
    let (relay_ns, caller_ns, callee_ns) = (&names[0], &names[1], &names[2]);
    let mut rig = Rig::new();
    let extra = "datapath = userspace\nlatching_window = 1\nsignaling_proxies = 198.18.0.0/15";
    let (_d, r) = start_with(&mut rig, relay_ns, None, extra);
    let mut m = Module::connect(&rig.socket);
    let media = |sdp: &str| format!("audio:{sdp}:sendrecv:ice=no");
    let (offer, _) = m.request(&signaled_update("request", "viaproxy", "", NAT_CALLER, &media(CALLER_SDP)));
    let (answer, _) = m.request(&signaled_update("reply", "viaproxy", "tt", "198.18.5.5", &media(CALLEE_SDP)));
    let (caller_to, callee_to) = (ports(&answer).1[0], ports(&offer).1[0]);
    let (caller, callee) = (format!("{NAT_CALLER}:31000"), format!("{NAT_CALLEE}:42000"));
    let (a, b) = phones(
        (caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
    );
    let (a, b) = (phone_result(a), phone_result(b));
    eprintln!("behind a proxy: caller got {}/{}, callee got {}/{}", a.got, b.sent, b.got, a.sent);
    // The callee's first second waited for the window; then both ways flow.
    assert!(a.got > 0 && a.got < b.sent, "caller got {} of {}", a.got, b.sent);
    assert!(b.got > 0, "the callee got nothing");
    let log = r.wait_log("which nothing vouches for", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("which nothing vouches for")).unwrap();
    eprintln!("{line}");
    assert!(line.contains("WARN") && line.contains("call_id=viaproxy") && line.contains("side=callee"), "{line}");
    assert!(
        line.contains(&format!("callee RTP latched to {callee}")) && line.contains("latching_window (1 s)"),
        "{line}"
    );
    assert!(line.contains("its SDP address 192.168.2.20:5000 or its signaling IP (none usable)"), "{line}");
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn datagrams_longer_than_2_kib_are_forwarded_whole_by_userspace_and_the_kernel() {
    // 3000-byte datagrams, IP-fragmented on the 1500-byte veths: the first
    // ones go through the relay's userspace path while the sides latch,
    // the rest through the kernel's conntrack NAT. Every one arrives whole.
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (_d, r) = start(&mut rig, &relay_ns, None);
    let caller = format!("{CALLER_IP}:4000");
    let callee = format!("{CALLEE_IP}:5000");
    let (mut m, caller_to, callee_to) = set_up_call(&rig, "bigcall", &caller, &callee);
    let (a, b) = phones_sized(
        (&caller_ns, &caller, &format!("{RELAY_IP}:{caller_to}")),
        (&callee_ns, &callee, &format!("{RELAY_IP}:{callee_to}")),
        100,
        5,
        3000,
    );
    let (a, b) = (phone_result(a), phone_result(b));
    assert_eq!(conntrack_entries(&relay_ns).len(), 1, "the kernel took the flow over");
    assert_eq!(m.request(&remove("bigcall")).0, "removed\r\n");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let userspace = number_after(log.lines().find(|l| l.contains("session removed")).unwrap(), "userspace_packets=");
    eprintln!(
        "caller got {} ({} whole) of {}, callee got {} ({} whole) of {}; userspace saw {userspace} datagrams",
        a.got, a.whole, b.sent, b.got, b.whole, a.sent
    );
    assert!(a.got * 100 >= b.sent * 90 && b.got * 100 >= a.sent * 90, "relayed");
    assert_eq!((a.whole, b.whole), (a.got, b.got), "every datagram whole, in userspace and in the kernel");
    assert!(userspace >= 1, "the first datagrams went through userspace");
}
