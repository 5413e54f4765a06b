//! `auto_detect_interfaces` on real interfaces: the relay's namespace has two
//! uplinks in different subnets, party A behind one and party B behind the
//! other; the dispatcher and the relay run in the relay's namespace, the
//! phones are this test binary re-run in A's and B's (`phone_helper`).
//! Needs root: `cargo test -p relaybox --test interfaces -- --ignored --test-threads=1`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::netns::{self, ok, phone_paced, spawn_in, Netns};
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
        ns
    }
}

/// Dispatcher and relay (no relay_ip, `extra` `[Relay]` lines) in `ns`,
/// the relay connected.
fn start(rig: &mut Rig, ns: &str, extra: &str) -> (Daemon, Daemon) {
    let (certs, _) = rig.certs("certs", "relay1");
    let dcfg = rig.dispatcher_config(&certs, "");
    let d = spawn_in(rig, ns, "dispatcher", &dcfg, None);
    d.wait_log("dispatcher ready", Duration::from_secs(10));
    let rcfg: PathBuf = rig.path("relay.ini");
    std::fs::write(
        &rcfg,
        format!(
            "[Relay]\ndispatchers = 127.0.0.1:{}\nport_range = 40000:40100\nreconnect_delay = 1\nstate_file = {}\n{extra}\n[TLS]\ncerts_path = {}\n",
            rig.relay_port,
            rig.path("sessions.bin").display(),
            certs.display()
        ),
    )
    .unwrap();
    let r = spawn_in(rig, ns, "relay", &rcfg, None);
    r.wait_log("relay starting", Duration::from_secs(10));
    d.wait_log("relay connected", Duration::from_secs(10));
    (d, r)
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

fn phone(ns: &str, bind: &str, to: &str) -> std::process::Child {
    phone_paced(ns, bind, to, PACKETS, 5)
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

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn each_side_gets_the_address_of_its_own_interface_and_media_flows_both_ways() {
    let ns = Uplinks::create("x");
    let mut rig = Rig::new();
    let (_d, r) = start(&mut rig, &ns.relay, "auto_detect_interfaces = yes");
    let startup = r.log_text();
    assert!(startup.contains("auto_detect_interfaces = yes"), "no datapath reason in the log:\n{startup}");
    assert!(startup.contains("falling back from the kernel"), "{startup}");

    let mut m = Module::connect(&rig.socket);
    // The caller's SDP goes to B: B's side; the callee's goes to A: A's side.
    let sig = format!("{A_IP}_{B_IP}");
    let ((to_b_ip, b_sends_to), (to_a_ip, a_sends_to)) = call(&mut m, "ifcall", &sig, &sig);
    assert_eq!(to_b_ip, RELAY_B, "reply to the caller's SDP");
    assert_eq!(to_a_ip, RELAY_A, "reply to the callee's SDP");

    let started = Instant::now();
    let a = phone(&ns.a, &format!("{A_IP}:4000"), &format!("{to_a_ip}:{a_sends_to}"));
    let b = phone(&ns.b, &format!("{B_IP}:5000"), &format!("{to_b_ip}:{b_sends_to}"));
    let ((a_got, a_from), (b_got, b_from)) = (phone_result(a), phone_result(b));
    eprintln!("A got {a_got} from {a_from}, B got {b_got} from {b_from} of {PACKETS} each in {:?}", started.elapsed());
    assert!(a_got * 100 >= PACKETS * 95, "A got {a_got} of {PACKETS}");
    assert!(b_got * 100 >= PACKETS * 95, "B got {b_got} of {PACKETS}");
    // Each party hears the relay from the address it was given.
    assert_eq!(a_from, RELAY_A);
    assert_eq!(b_from, RELAY_B);
    assert_eq!(m.request(&remove("ifcall")).0, "removed\r\n");

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

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn advertised_ip_overrides_auto_detect_interfaces() {
    let ns = Uplinks::create("y");
    let mut rig = Rig::new();
    let (_d, _r) = start(&mut rig, &ns.relay, "auto_detect_interfaces = yes\nadvertised_ip = 192.0.2.50");
    let mut m = Module::connect(&rig.socket);
    let sig = format!("{A_IP}_{B_IP}");
    let ((to_b_ip, _), (to_a_ip, _)) = call(&mut m, "advcall", &sig, &sig);
    assert_eq!((to_b_ip.as_str(), to_a_ip.as_str()), ("192.0.2.50", "192.0.2.50"));
    assert_eq!(m.request(&remove("advcall")).0, "removed\r\n");
}
