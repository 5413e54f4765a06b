//! nftables packet counters in the phone namespaces: UDP packets and bytes
//! received on each watched media port (from anyone, and from each relay
//! address separately, which proves the media came *from the relay*), and
//! sent from it (what SIPp really put on the wire).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::netns::Netns;

/// The nftables table holding the counters (family inet).
pub const TABLE: &str = "e2e_media";

/// Media ports the counters watch on each phone: the RTP ports of two
/// concurrent calls (6000, 6100), their video ports (+2) and the T.38
/// image port of the first (6004).
pub const WATCHED_PORTS: [u16; 5] = [6000, 6002, 6004, 6100, 6102];

/// Packets and bytes of one nftables counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    fn minus(self, earlier: Counter) -> Counter {
        Counter {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pkts/{} B", self.packets, self.bytes)
    }
}

/// The counters of one UDP port on one phone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Received on the port, from any source.
    pub rx: Counter,
    /// Received on the port, by source address (only the relay addresses).
    pub rx_from: BTreeMap<Ipv4Addr, Counter>,
    /// Sent from the port.
    pub tx: Counter,
}

impl PortCounters {
    /// Received from `source` (zero when that source is not watched).
    pub fn rx_from(&self, source: Ipv4Addr) -> Counter {
        self.rx_from.get(&source).copied().unwrap_or_default()
    }
}

/// All watched ports of one phone at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaCounters {
    pub ports: BTreeMap<u16, PortCounters>,
}

impl MediaCounters {
    pub fn port(&self, port: u16) -> PortCounters {
        self.ports.get(&port).cloned().unwrap_or_default()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &MediaCounters) -> MediaCounters {
        let ports = self
            .ports
            .iter()
            .map(|(port, now)| {
                let then = earlier.port(*port);
                let rx_from = now.rx_from.iter().map(|(ip, c)| (*ip, c.minus(then.rx_from(*ip)))).collect();
                (*port, PortCounters { rx: now.rx.minus(then.rx), rx_from, tx: now.tx.minus(then.tx) })
            })
            .collect();
        MediaCounters { ports }
    }
}

impl fmt::Display for MediaCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (port, c) in &self.ports {
            if c.rx.packets == 0 && c.tx.packets == 0 {
                continue;
            }
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            write!(f, "port {port}: tx {} rx {}", c.tx, c.rx)?;
            for (ip, from) in &c.rx_from {
                if from.packets > 0 {
                    write!(f, " (from {ip}: {})", from.packets)?;
                }
            }
        }
        if first {
            write!(f, "no media")?;
        }
        Ok(())
    }
}

fn ip_tag(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "_")
}

fn rx_name(port: u16) -> String {
    format!("rx_{port}")
}

fn rx_from_name(port: u16, ip: Ipv4Addr) -> String {
    format!("rx_{port}_from_{}", ip_tag(ip))
}

fn tx_name(port: u16) -> String {
    format!("tx_{port}")
}

/// The nftables ruleset installed in a phone namespace.
pub fn ruleset(relay_ips: &[Ipv4Addr]) -> String {
    let mut counters = String::new();
    let mut input = String::new();
    let mut output = String::new();
    for port in WATCHED_PORTS {
        counters.push_str(&format!("  counter {} {{ }}\n  counter {} {{ }}\n", rx_name(port), tx_name(port)));
        input.push_str(&format!("    udp dport {port} counter name {}\n", rx_name(port)));
        output.push_str(&format!("    udp sport {port} counter name {}\n", tx_name(port)));
        for ip in relay_ips {
            counters.push_str(&format!("  counter {} {{ }}\n", rx_from_name(port, *ip)));
            input.push_str(&format!("    ip saddr {ip} udp dport {port} counter name {}\n", rx_from_name(port, *ip)));
        }
    }
    format!(
        "table inet {TABLE} {{\n{counters}  chain input {{\n    type filter hook input priority -10; policy accept;\n\
         {input}  }}\n  chain output {{\n    type filter hook output priority -10; policy accept;\n{output}  }}\n}}\n"
    )
}

/// The table of [`install_marked`].
pub const MARKED_TABLE: &str = "e2e_marked";

/// Counts, in `phone`, the UDP datagrams arriving on a watched media port
/// whose RTP SSRC (payload bytes 8..12) is `ssrc`: an attacker's packets
/// carry one no phone uses, so this counts what of them reached the phone.
pub fn install_marked(phone: &Netns, ssrc: u32) -> Result<()> {
    let ports: Vec<String> = WATCHED_PORTS.iter().map(u16::to_string).collect();
    phone.nft_load(&format!(
        "table inet {MARKED_TABLE} {{\n  counter marked {{ }}\n  chain input {{\n    \
         type filter hook input priority -20; policy accept;\n    \
         udp dport {{ {} }} @th,128,32 {ssrc:#010x} counter name marked\n  }}\n}}\n",
        ports.join(", ")
    ))
}

/// What [`install_marked`]'s counter has seen in `phone`.
pub fn read_marked(phone: &Netns) -> Result<Counter> {
    let json = phone.nft(&["-j", "list", "counter", "inet", MARKED_TABLE, "marked"])?;
    let doc: Value = serde_json::from_str(&json).context("nft -j output is not JSON")?;
    let counter = doc["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i.get("counter")))
        .with_context(|| format!("no counter in {json}"))?;
    Ok(Counter {
        packets: counter["packets"].as_u64().unwrap_or_default(),
        bytes: counter["bytes"].as_u64().unwrap_or_default(),
    })
}

/// Installs the counters in `phone`.
pub fn install(phone: &Netns, relay_ips: &[Ipv4Addr]) -> Result<()> {
    phone.nft_load(&ruleset(relay_ips))
}

/// Reads all counters of `phone`.
pub fn read(phone: &Netns, relay_ips: &[Ipv4Addr]) -> Result<MediaCounters> {
    let json = phone.nft(&["-j", "list", "counters", "table", "inet", TABLE])?;
    parse(&json, relay_ips).with_context(|| format!("reading counters in {}", phone.name()))
}

/// Parses `nft -j list counters` output.
pub fn parse(json: &str, relay_ips: &[Ipv4Addr]) -> Result<MediaCounters> {
    let doc: Value = serde_json::from_str(json).context("nft -j output is not JSON")?;
    let mut by_name = BTreeMap::new();
    for item in doc["nftables"].as_array().context("no nftables array")? {
        let c = &item["counter"];
        if let Some(name) = c["name"].as_str() {
            let counter = Counter {
                packets: c["packets"].as_u64().unwrap_or_default(),
                bytes: c["bytes"].as_u64().unwrap_or_default(),
            };
            by_name.insert(name.to_owned(), counter);
        }
    }
    let get = |name: String| by_name.get(&name).copied().unwrap_or_default();
    let ports = WATCHED_PORTS
        .iter()
        .map(|&port| {
            let rx_from = relay_ips.iter().map(|&ip| (ip, get(rx_from_name(port, ip)))).collect();
            (port, PortCounters { rx: get(rx_name(port)), rx_from, tx: get(tx_name(port)) })
        })
        .collect();
    Ok(MediaCounters { ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    #[test]
    fn ruleset_names_every_counter_it_uses() {
        let rules = ruleset(&[R1]);
        assert!(rules.contains("counter rx_6000_from_203_0_113_1 { }"));
        assert!(rules.contains("ip saddr 203.0.113.1 udp dport 6000 counter name rx_6000_from_203_0_113_1"));
        assert!(rules.contains("udp sport 6102 counter name tx_6102"));
    }

    #[test]
    fn parses_nft_json_and_subtracts() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "rx_6000", "table": "e2e_media", "handle": 3, "packets": 10, "bytes": 2800}},
            {"counter": {"family": "inet", "name": "rx_6000_from_203_0_113_1", "table": "e2e_media", "handle": 4, "packets": 9, "bytes": 2520}},
            {"counter": {"family": "inet", "name": "tx_6000", "table": "e2e_media", "handle": 5, "packets": 236, "bytes": 66080}}]}"#;
        let now = parse(json, &[R1]).unwrap();
        assert_eq!(now.port(6000).rx, Counter { packets: 10, bytes: 2800 });
        assert_eq!(now.port(6000).rx_from(R1).packets, 9);
        assert_eq!(now.port(6000).tx.packets, 236);
        assert_eq!(now.port(6002).rx.packets, 0);
        let delta = now.since(&MediaCounters::default());
        assert_eq!(delta, now);
        assert_eq!(now.since(&now).port(6000).tx.packets, 0);
    }
}
