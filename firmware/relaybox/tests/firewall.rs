//! The box's firewall (`relaybox firewall`, table `inet relaybox_fw`) in
//! network namespaces: a "box" with a WAN and a LAN veth, a WAN peer and a
//! LAN peer, the real `relaybox web` listening on every address of the box.
//! Before the rules, the page answers on both sides and the box routes
//! WAN → LAN; with them, only the LAN reaches the page, the WAN reaches the
//! relay's port range and nothing else, and nothing is routed; with
//! `[Web] wan_access = yes` the WAN reaches the page too.
//!
//! Root only: `cargo test -p relaybox --test firewall -- --ignored`.

// Needs the relay feature (all are on by default).
#![cfg(feature = "relay")]

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::netns::{ok, run, wait_links_up, Netns};
use common::BIN;

const BOX_WAN: &str = "198.51.100.1";
const PEER_WAN: &str = "198.51.100.2";
const BOX_LAN: &str = "192.168.88.1";
const PEER_LAN: &str = "192.168.88.2";
const ECHO_PORT: u16 = 40010;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `box`, `wan` and `lan` namespaces joined by two veths.
fn topology(tag: &str) -> (Netns, String, String, String) {
    let pid = std::process::id();
    let (b, w, l) = (format!("fwbox-{tag}-{pid}"), format!("fwwan-{tag}-{pid}"), format!("fwlan-{tag}-{pid}"));
    let ns = Netns::create(&[b.clone(), w.clone(), l.clone()]);
    for (peer, dev, box_ip, peer_ip) in [(&w, "wan0", BOX_WAN, PEER_WAN), (&l, "lan0", BOX_LAN, PEER_LAN)] {
        ok(&["ip", "-n", &b, "link", "add", dev, "type", "veth", "peer", "name", "up0", "netns", peer]);
        ok(&["ip", "-n", &b, "addr", "add", &format!("{box_ip}/24"), "dev", dev]);
        ok(&["ip", "-n", &b, "link", "set", dev, "up"]);
        ok(&["ip", "-n", peer, "addr", "add", &format!("{peer_ip}/24"), "dev", "up0"]);
        ok(&["ip", "-n", peer, "link", "set", "up0", "up"]);
        ok(&["ip", "-n", peer, "route", "add", "default", "via", box_ip]);
    }
    ok(&["ip", "netns", "exec", &b, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for n in [&b, &w, &l] {
        wait_links_up(n);
    }
    (ns, b, w, l)
}

/// The HTTP status of `url` fetched from namespace `ns` (0: no answer
/// within 4 s).
fn status_from(ns: &str, url: &str) -> u16 {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sk",
        "--max-time",
        "4",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Runs this test binary's `helper` test in `ns` with `env`.
fn helper(ns: &str, name: &str, env: &[(&str, &str)]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether a datagram from `ns` to `ip:port` is answered by an echo helper.
fn udp_answered_from(ns: &str, ip: &str, port: u16) -> bool {
    let child = helper(ns, "udp_probe_helper", &[("FW_PROBE_TO", &format!("{ip}:{port}"))]);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("PROBE-ANSWERED")
}

#[test]
#[ignore = "helper: run in a namespace by the firewall test"]
fn udp_echo_helper() {
    let Ok(port) = std::env::var("FW_ECHO_PORT") else { return };
    let s = UdpSocket::bind(("0.0.0.0", port.parse::<u16>().unwrap())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

#[test]
#[ignore = "helper: run in a namespace by the firewall test"]
fn udp_probe_helper() {
    let Ok(to) = std::env::var("FW_PROBE_TO") else { return };
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        s.send_to(b"probe", &to).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                println!("PROBE-ANSWERED");
                return;
            }
        }
    }
}

fn firewall(ns: &str, config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["ip", "netns", "exec", ns, BIN, "--config"];
    let config = config.display().to_string();
    args.push(&config);
    args.extend(["firewall", "--wan", "wan0", "--lan", "lan0"]);
    args.extend(extra);
    run(&args)
}

fn listing(ns: &str) -> Vec<String> {
    let out = run(&["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "relaybox_fw"]);
    assert!(out.status.success(), "no table: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| if l.starts_with("counter packets") { "counter".to_string() } else { l.to_string() })
        .collect()
}

#[test]
#[ignore = "needs root and netns: run by ci/test.sh"]
fn the_web_page_is_reachable_from_the_lan_only_and_the_wan_reaches_only_the_relay_ports() {
    let (_ns, b, w, l) = topology("web");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaybox.ini");
    std::fs::write(
        &config,
        format!(
            "[Relay]\nport_range = 40000:40100\ncontrol_socket = {}\n[TLS]\ncerts_path = {}\n[Web]\nlisten = 0.0.0.0:443\nhttp_listen = 0.0.0.0:80\n",
            dir.path().join("relay.sock").display(),
            dir.path().join("tls").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("web.log")).unwrap();
    let _web = Killed(
        Command::new("ip")
            .args(["netns", "exec", &b, BIN, "--config"])
            .arg(&config)
            .arg("web")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let _echo = Killed(helper(&b, "udp_echo_helper", &[("FW_ECHO_PORT", &ECHO_PORT.to_string())]));
    // On the LAN peer, one inside the relay's range and one outside.
    let _lan_echo = Killed(helper(&l, "udp_echo_helper", &[("FW_ECHO_PORT", &ECHO_PORT.to_string())]));
    let _lan_echo2 = Killed(helper(&l, "udp_echo_helper", &[("FW_ECHO_PORT", "5000")]));
    let _box_echo2 = Killed(helper(&b, "udp_echo_helper", &[("FW_ECHO_PORT", "5000")]));
    let page = |side: &str| format!("https://{}/login", if side == "wan" { BOX_WAN } else { BOX_LAN });
    // Without rules both sides reach everything (the test can see a block).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while status_from(&l, &page("lan")) != 200 {
        assert!(std::time::Instant::now() < until, "the web page never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status_from(&w, &page("wan")), 200, "before the firewall the WAN reaches the page");
    assert!(udp_answered_from(&w, BOX_WAN, ECHO_PORT));
    assert!(udp_answered_from(&w, BOX_WAN, 5000));
    assert!(udp_answered_from(&w, PEER_LAN, 5000), "before the firewall the box routes WAN -> LAN");

    let out = firewall(&b, &config, &["--relay", "--web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = [
        "table inet relaybox_fw {",
        "chain input {",
        "type filter hook input priority filter; policy drop;",
        "iifname \"lo\" accept",
        "ct state established,related accept",
        "meta l4proto icmp accept",
        "meta l4proto ipv6-icmp accept",
        "iifname \"wan0\" udp dport 68 accept",
        "udp dport 40000-40099 accept",
        "iifname \"lan0\" tcp dport 443 accept",
        "iifname \"lan0\" tcp dport 80 accept",
        "counter",
        "}",
        "chain forward {",
        "type filter hook forward priority filter; policy drop;",
        "ct status dnat accept",
        "counter",
        "}",
        "}",
    ];
    assert_eq!(listing(&b), expected);

    assert_eq!(status_from(&l, &page("lan")), 200, "the LAN reaches the page");
    assert_eq!(status_from(&l, &format!("http://{BOX_LAN}/")), 301, "and its plain HTTP redirect");
    assert_eq!(status_from(&w, &page("wan")), 0, "the WAN does not reach the page");
    assert_eq!(status_from(&w, &format!("http://{BOX_WAN}/")), 0, "nor its plain HTTP port");
    assert!(udp_answered_from(&w, BOX_WAN, ECHO_PORT), "the WAN reaches the relay's port range");
    assert!(!udp_answered_from(&w, BOX_WAN, 5000), "and no other UDP port");
    assert!(!udp_answered_from(&w, PEER_LAN, 5000), "the box routes nothing from the WAN to the LAN");
    assert!(!udp_answered_from(&w, PEER_LAN, ECHO_PORT), "not even to a port number of the relay's range");

    // WAN access on: the page's ports open everywhere. Applying again
    // replaces the rules (no duplicates).
    let text = std::fs::read_to_string(&config).unwrap() + "wan_access = yes\n";
    std::fs::write(&config, text).unwrap();
    let out = firewall(&b, &config, &["--relay", "--web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = listing(&b);
    assert!(rules.contains(&"tcp dport 443 accept".to_string()), "{rules:?}");
    assert_eq!(rules.iter().filter(|r| r.contains("dport 443")).count(), 1, "{rules:?}");
    assert_eq!(rules.len(), expected.len(), "{rules:?}");
    assert_eq!(status_from(&w, &page("wan")), 200, "wan_access = yes: the WAN reaches the page");

    let out = firewall(&b, &config, &["--delete"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!run(&["ip", "netns", "exec", &b, "nft", "list", "table", "inet", "relaybox_fw"]).status.success());
    assert!(udp_answered_from(&w, PEER_LAN, 5000), "the table deleted, routing is back");
}
