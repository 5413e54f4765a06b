//! IPv6 media through the relay: caller, relay and callee each in a network
//! namespace of their own, joined by veth pairs with IPv6 addresses; the
//! dispatcher and the relay run in the relay's namespace, the phones are
//! this test binary re-run in the caller's and callee's (`phone_helper`).
//! Also: a call mixing IPv4 and IPv6 is refused. Needs root.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::time::{Duration, Instant};

use common::netns::{self, number_after, ok, phones_paced, run, Netns, PhoneAt};
use common::*;

const RELAY_IP: &str = "2001:db8:77::1";
const CALLER_IP: &str = "2001:db8:1::2";
const CALLER_SIDE: &str = "2001:db8:1::1";
/// The callee has a ULA (private, like RFC 1918): latched from any source.
const CALLEE_IP: &str = "fd00:77:2::2";
const CALLEE_SIDE: &str = "fd00:77:2::1";
const RELAY_IP4: &str = "10.78.0.1";
const PACKETS: u32 = 300;

/// caller ns — relay ns — callee ns over IPv6 veths (no DAD), the relay's
/// addresses on its lo.
impl Netns {
    fn three() -> (Self, String, String, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = (std::process::id() % 10_000) * 10 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let names: Vec<String> = ["r", "a", "b"].iter().map(|s| format!("rb6{id}{s}")).collect();
        let ns = Netns::create(&names);
        for n in &names {
            // No DAD at all (link-local addresses too): neighbour discovery
            // works at once, no tentative addresses.
            for k in ["all", "default"] {
                ok(&["ip", "netns", "exec", n, "sysctl", "-qw", &format!("net.ipv6.conf.{k}.accept_dad=0")]);
            }
        }
        let r = &names[0];
        for (i, (peer_ip, side_ip)) in [(CALLER_IP, CALLER_SIDE), (CALLEE_IP, CALLEE_SIDE)].iter().enumerate() {
            let peer = &names[i + 1];
            let (outer, inner) = (format!("rb6{id}v{i}0"), format!("rb6{id}v{i}1"));
            ok(&["ip", "link", "add", &outer, "netns", peer, "type", "veth", "peer", "name", &inner, "netns", r]);
            ok(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/64"), "dev", &outer, "nodad"]);
            ok(&["ip", "-n", peer, "link", "set", &outer, "up"]);
            ok(&["ip", "-n", r, "addr", "add", &format!("{side_ip}/64"), "dev", &inner, "nodad"]);
            ok(&["ip", "-n", r, "link", "set", &inner, "up"]);
            ok(&["ip", "-n", peer, "-6", "route", "add", "default", "via", side_ip]);
        }
        ok(&["ip", "-n", r, "addr", "add", &format!("{RELAY_IP}/128"), "dev", "lo", "nodad"]);
        ok(&["ip", "-n", r, "addr", "add", &format!("{RELAY_IP4}/32"), "dev", "lo"]);
        for n in &names {
            netns::wait_links_up(n);
        }
        (ns, names[1].clone(), names[0].clone(), names[2].clone())
    }
}

/// Dispatcher and relay in `ns`, relay connected.
fn start(rig: &mut Rig, ns: &str, relay_ip: &str, extra: &str) -> (Daemon, Daemon) {
    netns::start_pair(rig, ns, None, &format!("relay_ip = {relay_ip}\n{extra}"))
}

/// A phone in `ns`: `PACKETS` packets from `bind` to `to`, 5 ms apart.
/// The call's two phones, `PACKETS` each, 5 ms apart.
fn phones(a: PhoneAt, b: PhoneAt) -> (std::process::Child, std::process::Child) {
    phones_paced(a, b, PACKETS, 5)
}

/// (sent, got) of a phone.
fn phone_result(child: std::process::Child) -> (u32, u32) {
    let r = netns::phone_result(child);
    (r.sent, r.got)
}

/// Not a test: the phone run by `phone()` inside a namespace.
#[test]
#[ignore = "helper: run by the IPv6 tests inside a network namespace"]
fn phone_helper() {
    netns::phone_main();
}

fn v6_conntrack_entries(ns: &str) -> Vec<String> {
    netns::relaybox_entries(ns, "ipv6")
}

/// A whole IPv6 call: offer and answer with IPv6 media items, RTP both
/// ways, `remove`; returns the relay's log after the remove.
fn ipv6_call(extra: &str, kernel: bool) {
    let (_ns, caller_ns, relay_ns, callee_ns) = Netns::three();
    let mut rig = Rig::new();
    let (d, r) = start(&mut rig, &relay_ns, RELAY_IP, extra);
    let startup = r.log_text();
    assert_eq!(startup.contains("the kernel forwards latched media"), kernel, "{startup}");
    if kernel {
        // IPv6 forwarding went on; the relay's uplinks still take router
        // advertisements (SLAAC keeps working).
        assert!(startup.contains("net.ipv6.conf.all.forwarding: was 0, set to 1"), "{startup}");
        let script = "cd /proc/sys/net/ipv6/conf && for i in *; do echo $i=$(cat $i/accept_ra); done";
        let accept_ra = run(&["ip", "netns", "exec", &relay_ns, "sh", "-c", script]);
        let values =
            String::from_utf8_lossy(&accept_ra.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let uplinks: Vec<&String> = values.iter().filter(|v| !v.starts_with("all=") && !v.starts_with("lo=")).collect();
        assert_eq!(uplinks.len(), 3, "default and two veths: {values:?}");
        assert!(uplinks.iter().all(|v| v.ends_with("=2")), "accept_ra: {values:?}");
        assert!(startup.contains("accept_ra 1 -> 2 on default,"), "{startup}");
    }

    let mut m = Module::connect(&rig.socket);
    let (offer, _) = m.request(&update("request", "v6call", 1, "", &format!("audio:{CALLER_IP}:4000:sendrecv:ice=no")));
    let (ip, offer_ports) = ports(&offer);
    assert_eq!(ip, RELAY_IP, "the reply carries the IPv6 relay address: {offer}");
    let (answer, _) =
        m.request(&update("reply", "v6call", 1, "tt", &format!("audio:{CALLEE_IP}:5000:sendrecv:ice=no")));
    let (ip, answer_ports) = ports(&answer);
    assert_eq!(ip, RELAY_IP, "{answer}");

    let started = Instant::now();
    let (a, b) = phones(
        (&caller_ns, &format!("[{CALLER_IP}]:4000"), &format!("[{RELAY_IP}]:{}", answer_ports[0])),
        (&callee_ns, &format!("[{CALLEE_IP}]:5000"), &format!("[{RELAY_IP}]:{}", offer_ports[0])),
    );
    let ((a_sent, a_got), (b_sent, b_got)) = (phone_result(a), phone_result(b));
    eprintln!("caller got {a_got}/{b_sent}, callee got {b_got}/{a_sent} in {:?}", started.elapsed());
    assert!(a_got * 100 >= b_sent * 95, "caller got {a_got} of {b_sent}");
    assert!(b_got * 100 >= a_sent * 95, "callee got {b_got} of {a_sent}");
    if kernel {
        let entries = v6_conntrack_entries(&relay_ns);
        eprintln!("conntrack: {entries:#?}");
        assert_eq!(entries.len(), 1, "one IPv6 RTP flow: {entries:?}");
    }

    assert_eq!(m.request(&remove("v6call")).0, "removed\r\n");
    let log = d.wait_log("accounted", Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains("accounted") && l.contains("v6call")).unwrap().to_string();
    eprintln!("{line}");
    assert!(line.contains(&format!("\"caller_remote\":\"[{CALLER_IP}]:4000\"")), "{line}");
    assert!(line.contains(&format!("\"callee_remote\":\"[{CALLEE_IP}]:5000\"")), "{line}");
    assert!(line.contains(&format!("\"caller_local\":\"[{RELAY_IP}]:{}\"", answer_ports[0])), "{line}");
    let (caller_packets, callee_packets) =
        (number_after(&line, "\"caller_packets\":"), number_after(&line, "\"callee_packets\":"));
    assert!(caller_packets * 100 >= u64::from(a_sent) * 95, "{line}");
    assert!(callee_packets * 100 >= u64::from(b_sent) * 95, "{line}");
    let relay_log = r.wait_log("session removed", Duration::from_secs(5));
    let removed = relay_log.lines().find(|l| l.contains("session removed")).unwrap();
    let userspace = number_after(removed, "userspace_packets=");
    eprintln!("stats: caller_packets={caller_packets} callee_packets={callee_packets}; userspace saw {userspace}");
    if kernel {
        assert!(userspace <= 10, "userspace saw {userspace} packets: the kernel did not take over");
        assert!(v6_conntrack_entries(&relay_ns).is_empty(), "entries left after remove");
    }
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn ipv6_phones_are_relayed_in_userspace() {
    ipv6_call("datapath = userspace", false);
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn ipv6_phones_are_forwarded_by_the_kernel() {
    ipv6_call("datapath = kernel", true);
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn a_call_mixing_ipv4_and_ipv6_is_refused_with_a_reason() {
    let (_ns, _caller_ns, relay_ns, _callee_ns) = Netns::three();
    for (relay_ip, same, other) in [(RELAY_IP4, "192.0.2.10", CALLEE_IP), (RELAY_IP, CALLER_IP, "192.0.2.10")] {
        let mut rig = Rig::new();
        let (_d, r) = start(&mut rig, &relay_ns, relay_ip, "datapath = userspace");
        let mut m = Module::connect(&rig.socket);
        let (offer, _) = m.request(&update("request", "mixed", 1, "", &format!("audio:{same}:4000:sendrecv:ice=no")));
        assert_eq!(ports(&offer).0, relay_ip, "{offer}");
        let (answer, _) = m.request(&update("reply", "mixed", 1, "tt", &format!("audio:{other}:5000:sendrecv:ice=no")));
        assert_eq!(answer, "error\r\n", "relay_ip {relay_ip}, callee {other}");
        let log = r.wait_log("one relay address cannot serve both families", Duration::from_secs(5));
        eprintln!("{}", log.lines().find(|l| l.contains("both families")).unwrap());
        // A hold (0.0.0.0) or a rejected stream of the other family is fine.
        let (hold, _) = m.request(&update("reply", "mixed", 1, "tt", "audio:0.0.0.0:5000:sendrecv:ice=no"));
        assert_eq!(ports(&hold).0, relay_ip, "{hold}");
        assert_eq!(m.request(&remove("mixed")).0, "removed\r\n");
        drop(r);
    }
}
