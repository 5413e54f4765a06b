//! `auto_detect_interfaces` on real interfaces: the relay's namespace has two
//! uplinks in different subnets, party A behind one and party B behind the
//! other; the dispatcher and the relay run in the relay's namespace, the
//! phones are this test binary re-run in A's and B's (`phone_helper`).
//! Needs root: `cargo test -p relaybox --test interfaces -- --ignored --test-threads=1`.

// Needs the relay and dispatcher features (all are on by default).
#![cfg(all(feature = "relay", feature = "dispatcher"))]

mod common;

use std::time::{Duration, Instant};

use common::netns::{self, number_after, ok, phones_paced, Netns, PhoneAt};
use common::*;

const A_IP: &str = "198.51.100.7";
const RELAY_A: &str = "198.51.100.1";
const B_IP: &str = "203.0.113.9";
const RELAY_B: &str = "203.0.113.1";
const PACKETS: u32 = 200;

/// relay ns with two uplinks: veth to A's ns (198.51.100.0/24) and veth to
/// B's ns (203.0.113.0/24). No default route in the relay's namespace.
/// Deleted on drop.
struct Uplinks {
    _ns: Netns,
    relay: String,
    a: String,
    b: String,
}

impl Uplinks {
    fn create(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let name = |s: &str| format!("rbi{id}{tag}{s}");
        let (relay, a, b) = (name("r"), name("a"), name("b"));
        let ns = Uplinks { _ns: Netns::create(&[relay.clone(), a.clone(), b.clone()]), relay, a, b };
        for (i, peer, peer_ip, relay_ip) in [(0, &ns.a, A_IP, RELAY_A), (1, &ns.b, B_IP, RELAY_B)] {
            let (outer, inner) = (name(&format!("v{i}0")), name(&format!("v{i}1")));
            ok(&[
                "ip", "link", "add", &outer, "netns", peer, "type", "veth", "peer", "name", &inner, "netns", &ns.relay,
            ]);
            ok(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/24"), "dev", &outer]);
            ok(&["ip", "-n", peer, "link", "set", &outer, "up"]);
            ok(&["ip", "-n", peer, "route", "add", "default", "via", relay_ip]);
            ok(&["ip", "-n", &ns.relay, "addr", "add", &format!("{relay_ip}/24"), "dev", &inner]);
            ok(&["ip", "-n", &ns.relay, "link", "set", &inner, "up"]);
        }
        for n in [&ns.relay, &ns.a, &ns.b] {
            netns::wait_links_up(n);
        }
        ns
    }
}

/// Dispatcher and relay (no relay_ip, `extra` `[Relay]` lines) in `ns`,
/// the relay connected.
fn start(rig: &mut Rig, ns: &str, extra: &str) -> (Daemon, Daemon) {
    netns::start_pair(rig, ns, None, extra)
}

fn update(party: &str, call: &str, to_tag: &str, signaling_ip: &str, media: &str) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: 1:2\r\ncall_id: {call}\r\ncseq: 1 INVITE\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: ft-{call}\r\nto_tag: {to_tag}\r\nuser_agent: test-ua\r\nsignaling_ip: {signaling_ip}\r\nmedia: audio:{media}:sendrecv:ice=no\r\n\r\n"
    )
}

/// Offer from A (the caller) and answer from B (the callee), with the given
/// `signaling_ip` values; returns the (ip, port) of each reply: the first is
/// what B is told to send to, the second what A is told to send to.
fn call(m: &mut Module, call: &str, offer_sig: &str, answer_sig: &str) -> ((String, u16), (String, u16)) {
    let (offer, _) = m.request(&update("request", call, "", offer_sig, &format!("{A_IP}:4000")));
    let (answer, _) = m.request(&update("reply", call, "tt", answer_sig, &format!("{B_IP}:5000")));
    let (oi, op) = ports(&offer);
    let (ai, ap) = ports(&answer);
    assert_eq!((op.len(), ap.len()), (1, 1), "offer {offer:?} answer {answer:?}");
    ((oi, op[0]), (ai, ap[0]))
}

/// The call's two phones, `PACKETS` each, 5 ms apart.
fn phones(a: PhoneAt, b: PhoneAt) -> (std::process::Child, std::process::Child) {
    phones_paced(a, b, PACKETS, 5)
}

/// (packets received, the addresses they came from).
fn phone_result(child: std::process::Child) -> (u32, String) {
    let r = netns::phone_result(child);
    (r.got, r.from)
}

/// Not a test: the phone run by `phone()` inside a namespace; sends
/// `PACKETS` RTP-like datagrams 5 ms apart and counts what comes back.
#[test]
#[ignore = "helper: run by the interface tests inside a network namespace"]
fn phone_helper() {
    netns::phone_main();
}

/// A call between A and B with `auto_detect_interfaces`: each side is told
/// its own interface's address, media flows both ways, each party hears the
/// relay from the address it was told. With `kernel`, the kernel forwards
/// it through one conntrack entry whose two relay sides are the two
/// interfaces' addresses.
fn call_over_two_interfaces(extra: &str, kernel: bool) {
    let ns = Uplinks::create(if kernel { "k" } else { "x" });
    let mut rig = Rig::new();
    let (d, r) = start(&mut rig, &ns.relay, &format!("auto_detect_interfaces = yes\n{extra}"));
    let startup = r.log_text();
    if kernel {
        assert!(startup.contains("the kernel forwards latched media"), "{startup}");
        assert!(startup.contains("kernel entries use the relay address each side was told"), "{startup}");
    } else {
        assert!(startup.contains("media is forwarded in userspace ([Relay] datapath = userspace)"), "{startup}");
    }

    let mut m = Module::connect(&rig.socket);
    // The caller's SDP goes to B: B's side; the callee's goes to A: A's side.
    let sig = format!("{A_IP}_{B_IP}");
    let ((to_b_ip, b_sends_to), (to_a_ip, a_sends_to)) = call(&mut m, "ifcall", &sig, &sig);
    assert_eq!(to_b_ip, RELAY_B, "reply to the caller's SDP");
    assert_eq!(to_a_ip, RELAY_A, "reply to the callee's SDP");

    let started = Instant::now();
    let (a, b) = phones(
        (&ns.a, &format!("{A_IP}:4000"), &format!("{to_a_ip}:{a_sends_to}")),
        (&ns.b, &format!("{B_IP}:5000"), &format!("{to_b_ip}:{b_sends_to}")),
    );
    let ((a_got, a_from), (b_got, b_from)) = (phone_result(a), phone_result(b));
    eprintln!("A got {a_got} from {a_from}, B got {b_got} from {b_from} of {PACKETS} each in {:?}", started.elapsed());
    assert!(a_got * 100 >= PACKETS * 95, "A got {a_got} of {PACKETS}");
    assert!(b_got * 100 >= PACKETS * 95, "B got {b_got} of {PACKETS}");
    // Each party hears the relay from the address it was given.
    assert_eq!(a_from, RELAY_A);
    assert_eq!(b_from, RELAY_B);
    let entries = netns::relaybox_entries(&ns.relay, "ipv4");
    eprintln!("conntrack: {entries:#?}");
    if kernel {
        let [entry] = entries.as_slice() else { panic!("one RTP entry: {entries:?}") };
        let orig = format!("src={A_IP} dst={RELAY_A} sport=4000 dport={a_sends_to}");
        let reply = format!("src={B_IP} dst={RELAY_B} sport=5000 dport={b_sends_to}");
        assert!(entry.contains(&orig) && entry.contains(&reply), "{entry}");
    } else {
        assert!(entries.is_empty());
    }
    assert_eq!(m.request(&remove("ifcall")).0, "removed\r\n");
    let log = d.wait_log("accounted", Duration::from_secs(5));
    let accounted = log.lines().find(|l| l.contains("accounted") && l.contains("ifcall")).unwrap();
    assert!(accounted.contains(&format!("\"caller_local\":\"{RELAY_A}:{a_sends_to}\"")), "{accounted}");
    assert!(accounted.contains(&format!("\"callee_local\":\"{RELAY_B}:{b_sends_to}\"")), "{accounted}");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let removed = log.lines().find(|l| l.contains("session removed")).unwrap();
    let userspace = number_after(removed, "userspace_packets=");
    eprintln!("userspace saw {userspace} of {} datagrams", 2 * PACKETS);
    if kernel {
        assert!(userspace <= 10, "userspace saw {userspace}: the kernel did not take over");
        assert!(netns::relaybox_entries(&ns.relay, "ipv4").is_empty(), "entry left after remove");
    } else {
        assert!(u64::from(PACKETS) * 2 * 95 <= userspace * 100, "userspace saw {userspace}");
    }
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn each_side_gets_its_own_interface_and_the_kernel_forwards_between_them() {
    call_over_two_interfaces("", true);
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn each_side_gets_its_own_interface_in_userspace_too() {
    call_over_two_interfaces("datapath = userspace", false);
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn the_reply_address_follows_signaling_ip() {
    let ns = Uplinks::create("s");
    let mut rig = Rig::new();
    let (_d, r) = start(&mut rig, &ns.relay, "auto_detect_interfaces = yes");
    let mut m = Module::connect(&rig.socket);
    let sig = format!("{A_IP}_{B_IP}");
    // Only a source (no destination): the request's SDP goes towards it.
    let ((to_b_ip, _), (to_a_ip, _)) = call(&mut m, "ifsrc", A_IP, B_IP);
    assert_eq!((to_b_ip.as_str(), to_a_ip.as_str()), (RELAY_A, RELAY_B), "src-only signaling_ip");
    // A re-INVITE from the callee (From = B's tag): its SDP goes to `dst`.
    let reinvite = "update\r\ntype: request\r\ndialog_id: 1:2\r\ncall_id: ifsrc\r\ncseq: 1 INVITE\r\nfrom_uri: sip:bob@example.com\r\nto_uri: sip:alice@example.com\r\nfrom_tag: tt\r\nto_tag: ft-ifsrc\r\nuser_agent: test-ua\r\nsignaling_ip: 203.0.113.9_198.51.100.7\r\nmedia: audio:203.0.113.9:5000:sendrecv:ice=no\r\n\r\n";
    let (ip, _) = ports(&m.request(reinvite).0);
    assert_eq!(ip, RELAY_A, "callee's re-INVITE goes to the caller");
    assert_eq!(m.request(&remove("ifsrc")).0, "removed\r\n");

    // No route to the receiver: the link's local address (127.0.0.1), logged.
    let ((to_b_ip, _), _) = call(&mut m, "ifnoroute", &format!("{A_IP}_192.0.2.99"), &sig);
    assert_eq!(to_b_ip, "127.0.0.1", "fallback without a route");
    r.wait_log("auto_detect_interfaces: no route", Duration::from_secs(5));
    assert_eq!(m.request(&remove("ifnoroute")).0, "removed\r\n");
}

/// The relay behind a 1:1 NAT (`advertised_ip` is the NAT's public address,
/// no `relay_ip`): each party's namespace plays the NAT router, sending
/// what is addressed to 192.0.2.50 to the relay's interface on its side
/// and showing what comes from there as from 192.0.2.50.
/// The kernel entry's relay sides are the local addresses the NAT'd
/// packets arrive at, found by route lookup towards each party.
#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn advertised_ip_overrides_auto_detect_interfaces_and_the_kernel_forwards_behind_the_nat() {
    const PUBLIC: &str = "192.0.2.50";
    let ns = Uplinks::create("y");
    for (phone_ns, relay_side) in [(&ns.a, RELAY_A), (&ns.b, RELAY_B)] {
        let rules = format!(
            "add table ip onetoone; add chain ip onetoone out {{ type nat hook output priority -100; }}; \
             add rule ip onetoone out ip daddr {PUBLIC} dnat to {relay_side}; \
             add chain ip onetoone in {{ type nat hook input priority 100; }}; \
             add rule ip onetoone in ip saddr {relay_side} snat to {PUBLIC}"
        );
        ok(&["ip", "netns", "exec", phone_ns, "nft", &rules]);
    }
    let mut rig = Rig::new();
    let (_d, r) = start(&mut rig, &ns.relay, &format!("auto_detect_interfaces = yes\nadvertised_ip = {PUBLIC}"));
    let startup = r.log_text();
    assert!(startup.contains("the kernel forwards latched media"), "{startup}");
    assert!(startup.contains("advertised_ip without relay_ip"), "{startup}");
    let mut m = Module::connect(&rig.socket);
    let sig = format!("{A_IP}_{B_IP}");
    let ((to_b_ip, b_sends_to), (to_a_ip, a_sends_to)) = call(&mut m, "advcall", &sig, &sig);
    assert_eq!((to_b_ip.as_str(), to_a_ip.as_str()), (PUBLIC, PUBLIC));

    let (a, b) = phones(
        (&ns.a, &format!("{A_IP}:4000"), &format!("{PUBLIC}:{a_sends_to}")),
        (&ns.b, &format!("{B_IP}:5000"), &format!("{PUBLIC}:{b_sends_to}")),
    );
    let ((a_got, a_from), (b_got, b_from)) = (phone_result(a), phone_result(b));
    eprintln!("A got {a_got} from {a_from}, B got {b_got} from {b_from} of {PACKETS} each");
    assert!(a_got * 100 >= PACKETS * 95 && b_got * 100 >= PACKETS * 95);
    assert_eq!((a_from.as_str(), b_from.as_str()), (PUBLIC, PUBLIC), "the NAT hides the relay's own addresses");
    let entries = netns::relaybox_entries(&ns.relay, "ipv4");
    eprintln!("conntrack: {entries:#?}");
    let [entry] = entries.as_slice() else { panic!("one RTP entry: {entries:?}") };
    assert!(entry.contains(&format!("src={A_IP} dst={RELAY_A} sport=4000 dport={a_sends_to}")), "{entry}");
    assert!(entry.contains(&format!("src={B_IP} dst={RELAY_B} sport=5000 dport={b_sends_to}")), "{entry}");
    assert_eq!(m.request(&remove("advcall")).0, "removed\r\n");
    let log = r.wait_log("session removed", Duration::from_secs(5));
    let userspace = number_after(log.lines().find(|l| l.contains("session removed")).unwrap(), "userspace_packets=");
    assert!(userspace <= 10, "userspace saw {userspace}: the kernel did not take over");
}
