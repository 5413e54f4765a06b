//! The box's own firewall: the nftables table `inet relaybox_fw`,
//! programmed over nfnetlink like the relay's table ([`crate::nft`]) and
//! kept apart from it (the relay adds and deletes its own table; this one
//! stays for the box's life). As `nft -f` would apply, for WAN `eth0`, LAN
//! `eth1`, the relay's ports 40000:60000 and the web page on 443 and 80:
//!
//! ```text
//! table inet relaybox_fw {
//!   chain input { type filter hook input priority filter; policy drop;
//!     iifname "lo" accept
//!     ct state established,related accept
//!     meta l4proto icmp accept
//!     meta l4proto ipv6-icmp accept
//!     iifname "eth0" udp dport 68 accept        # DHCP answers (WAN)
//!     udp dport 40000-59999 accept               # the relay's ports
//!     iifname "eth1" tcp dport 443 accept        # the web page (LAN)
//!     iifname "eth1" tcp dport 80 accept
//!     counter                                    # what the policy drops
//!   }
//!   chain forward { type filter hook forward priority filter; policy drop;
//!     ct status dnat accept                      # the relay's kernel flows
//!     counter
//!   }
//! }
//! ```
//!
//! TCP ports open on every interface (the web page with WAN access on, a
//! dispatcher's ports) are rules without `iifname`. The box routes nothing
//! but the relay's own NAT entries (`ct status dnat`: every kernel flow the
//! relay creates translates its destination). One batch: the table and
//! chains are created when missing, their rules replaced in the same
//! transaction, so there is no moment without rules.

use crate::nft::*;
use crate::wire::{Builder, NLM_F_APPEND, NLM_F_CREATE};
use crate::Error;

/// The table's name (family `inet`: IPv4 and IPv6).
pub const TABLE: &str = "relaybox_fw";

const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_META_IIFNAME: u32 = 6;
const NFT_CT_STATUS: u32 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;
/// `IPS_DST_NAT`.
const IPS_DST_NAT: u32 = 1 << 5;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
/// Interface names have at most 15 bytes (IFNAMSIZ with its NUL).
const IFNAMSIZ: usize = 16;
const DHCP_CLIENT_PORT: u16 = 68;

/// What the box accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The WAN interface (DHCP answers are accepted on it).
    pub wan: String,
    /// The LAN interface, if the box has one: `lan_tcp` is open on it.
    pub lan: Option<String>,
    /// UDP port ranges open on every interface, end exclusive (the relay's
    /// `port_range`).
    pub udp_ranges: Vec<(u16, u16)>,
    /// TCP ports open on the LAN interface only (the web page).
    pub lan_tcp: Vec<u16>,
    /// TCP ports open on every interface (the web page with WAN access on,
    /// a dispatcher's ports).
    pub any_tcp: Vec<u16>,
}

fn check_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid("an interface name has 1 to 15 printable characters"))
    }
}

impl FirewallSpec {
    pub fn check(&self) -> Result<(), Error> {
        check_ifname(&self.wan)?;
        if let Some(lan) = &self.lan {
            check_ifname(lan)?;
            if *lan == self.wan {
                return Err(Error::Invalid("the LAN and WAN interfaces are the same"));
            }
        }
        if self.udp_ranges.iter().any(|(a, b)| a >= b || *a == 0) {
            return Err(Error::Invalid("an empty UDP port range"));
        }
        if self.lan_tcp.iter().chain(&self.any_tcp).any(|p| *p == 0) {
            return Err(Error::Invalid("TCP port 0"));
        }
        Ok(())
    }
}

/// `accept` (an immediate verdict).
fn accept(b: &mut Builder) {
    expr(b, "immediate", |b| {
        b.attr(NFTA_IMMEDIATE_DREG, &be32(NFT_REG_VERDICT));
        b.begin(NFTA_IMMEDIATE_DATA).begin(NFTA_DATA_VERDICT).attr(NFTA_VERDICT_CODE, &be32(NF_ACCEPT)).end().end();
    });
}

fn counter(b: &mut Builder) {
    expr(b, "counter", |b| {
        b.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes()).attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
    });
}

/// `iifname "NAME"` (the whole name, NUL-padded as nft compares it).
fn iifname(b: &mut Builder, name: &str) {
    expr(b, "meta", |b| {
        b.attr(NFTA_META_DREG, &be32(NFT_REG_1)).attr(NFTA_META_KEY, &be32(NFT_META_IIFNAME));
    });
    let mut padded = [0u8; IFNAMSIZ];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    cmp(b, NFT_CMP_EQ, &padded);
}

fn l4proto(b: &mut Builder, proto: u8) {
    expr(b, "meta", |b| {
        b.attr(NFTA_META_DREG, &be32(NFT_REG_1)).attr(NFTA_META_KEY, &be32(NFT_META_L4PROTO));
    });
    cmp(b, NFT_CMP_EQ, &[proto]);
}

fn dport(b: &mut Builder) {
    expr(b, "payload", |b| {
        b.attr(NFTA_PAYLOAD_DREG, &be32(NFT_REG_1)).attr(NFTA_PAYLOAD_BASE, &be32(NFT_PAYLOAD_TRANSPORT_HEADER));
        b.attr(NFTA_PAYLOAD_OFFSET, &be32(2)).attr(NFTA_PAYLOAD_LEN, &be32(2));
    });
}

/// `udp|tcp dport FIRST-LAST` (or one port when they are equal).
fn dport_range(b: &mut Builder, proto: u8, first: u16, last: u16) {
    l4proto(b, proto);
    dport(b);
    if first == last {
        cmp(b, NFT_CMP_EQ, &first.to_be_bytes());
    } else {
        cmp(b, NFT_CMP_GTE, &first.to_be_bytes());
        cmp(b, NFT_CMP_LTE, &last.to_be_bytes());
    }
}

/// `ct KEY & MASK != 0` (state and status registers are host-order u32).
fn ct_bits(b: &mut Builder, key: u32, mask: u32) {
    expr(b, "ct", |b| {
        b.attr(NFTA_CT_DREG, &be32(NFT_REG_1)).attr(NFTA_CT_KEY, &be32(key));
    });
    expr(b, "bitwise", |b| {
        b.attr(NFTA_BITWISE_SREG, &be32(NFT_REG_1)).attr(NFTA_BITWISE_DREG, &be32(NFT_REG_1));
        b.attr(NFTA_BITWISE_LEN, &be32(4));
        b.begin(NFTA_BITWISE_MASK).attr(NFTA_DATA_VALUE, &mask.to_ne_bytes()).end();
        b.begin(NFTA_BITWISE_XOR).attr(NFTA_DATA_VALUE, &0u32.to_ne_bytes()).end();
    });
    cmp(b, NFT_CMP_NEQ, &0u32.to_ne_bytes());
}

fn rule(batch: &mut Batch, chain: &str, exprs: impl FnOnce(&mut Builder)) {
    batch.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
        b.attr(NFTA_RULE_TABLE, &cstr(TABLE)).attr(NFTA_RULE_CHAIN, &cstr(chain));
        b.begin(NFTA_RULE_EXPRESSIONS);
        exprs(b);
        b.end();
    });
}

/// The batch that creates (or refreshes) the table.
pub(crate) fn table_batch(seq: u32, spec: &FirewallSpec) -> (Vec<u8>, std::ops::Range<u32>) {
    let mut batch = Batch::new(seq);
    batch.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
        b.attr(NFTA_TABLE_NAME, &cstr(TABLE));
    });
    for (chain, hook) in [("input", NF_INET_LOCAL_IN), ("forward", NF_INET_FORWARD)] {
        batch.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            b.attr(NFTA_CHAIN_TABLE, &cstr(TABLE)).attr(NFTA_CHAIN_NAME, &cstr(chain));
            b.begin(NFTA_CHAIN_HOOK)
                .attr(NFTA_HOOK_HOOKNUM, &be32(hook))
                .attr(NFTA_HOOK_PRIORITY, &0i32.to_be_bytes())
                .end();
            b.attr(NFTA_CHAIN_TYPE, &cstr("filter"));
            b.attr(NFTA_CHAIN_POLICY, &be32(NF_DROP));
        });
        // A DELRULE with no handle empties the chain.
        batch.push(NFT_MSG_DELRULE, 0, |b| {
            b.attr(NFTA_RULE_TABLE, &cstr(TABLE)).attr(NFTA_RULE_CHAIN, &cstr(chain));
        });
    }
    rule(&mut batch, "input", |b| {
        iifname(b, "lo");
        accept(b);
    });
    rule(&mut batch, "input", |b| {
        ct_bits(b, NFT_CT_STATE, CT_ESTABLISHED_RELATED);
        accept(b);
    });
    for proto in [IPPROTO_ICMP, IPPROTO_ICMPV6] {
        rule(&mut batch, "input", |b| {
            l4proto(b, proto);
            accept(b);
        });
    }
    rule(&mut batch, "input", |b| {
        iifname(b, &spec.wan);
        dport_range(b, IPPROTO_UDP, DHCP_CLIENT_PORT, DHCP_CLIENT_PORT);
        accept(b);
    });
    for &(start, end) in &spec.udp_ranges {
        rule(&mut batch, "input", |b| {
            dport_range(b, IPPROTO_UDP, start, end - 1);
            accept(b);
        });
    }
    if let Some(lan) = &spec.lan {
        for &port in &spec.lan_tcp {
            rule(&mut batch, "input", |b| {
                iifname(b, lan);
                dport_range(b, IPPROTO_TCP, port, port);
                accept(b);
            });
        }
    }
    for &port in &spec.any_tcp {
        rule(&mut batch, "input", |b| {
            dport_range(b, IPPROTO_TCP, port, port);
            accept(b);
        });
    }
    rule(&mut batch, "input", counter);
    rule(&mut batch, "forward", |b| {
        ct_bits(b, NFT_CT_STATUS, IPS_DST_NAT);
        accept(b);
    });
    rule(&mut batch, "forward", counter);
    batch.finish()
}

fn delete_batch(seq: u32) -> (Vec<u8>, std::ops::Range<u32>) {
    let mut batch = Batch::new(seq);
    batch.push(NFT_MSG_DELTABLE, 0, |b| {
        b.attr(NFTA_TABLE_NAME, &cstr(TABLE));
    });
    batch.finish()
}

/// Creates the box's firewall table, or replaces its rules.
pub fn apply(spec: &FirewallSpec) -> Result<(), Error> {
    spec.check()?;
    let (datagram, acked) = table_batch(1, spec);
    send_table(&datagram, acked, "nf_tables has no filter chain or ct/meta expression (modules nf_tables, nft_ct)")
}

/// Deletes the box's firewall table; a missing one is fine.
pub fn delete() -> Result<(), Error> {
    let (datagram, acked) = delete_batch(1);
    send_delete(&datagram, acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            wan: "eth0".into(),
            lan: Some("eth1".into()),
            udp_ranges: vec![(40000, 40100)],
            lan_tcp: vec![443, 80],
            any_tcp: vec![],
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn interface_names_are_padded_to_ifnamsiz_and_checked() {
        let (datagram, _) = table_batch(1, &spec());
        // An NFTA_DATA_VALUE of 16 bytes (len 20, type 1) holding "eth1" and NULs.
        let mut eth1 = vec![20, 0, 1, 0];
        eth1.extend_from_slice(b"eth1\0\0\0\0\0\0\0\0\0\0\0\0");
        assert!(find(&datagram, &eth1));
        for bad in ["", "a-very-long-ifname", "a\"b", "a b"] {
            assert!(FirewallSpec { wan: bad.into(), ..spec() }.check().is_err(), "{bad:?}");
        }
        assert!(FirewallSpec { lan: Some("eth0".into()), ..spec() }.check().is_err());
        assert!(FirewallSpec { udp_ranges: vec![(5, 5)], ..spec() }.check().is_err());
        assert!(spec().check().is_ok());
    }

    #[test]
    fn chains_drop_by_policy_and_the_lan_rules_need_a_lan() {
        let (datagram, acked) = table_batch(10, &spec());
        // NFTA_CHAIN_POLICY NF_DROP (len 8, type 5, be32 0).
        assert!(find(&datagram, &[8, 0, 5, 0, 0, 0, 0, 0]));
        // table, 2 × (chain, flush), 9 input rules, 2 forward rules
        assert_eq!(acked.len(), 1 + 4 + 9 + 2);
        let (no_lan, acked) = table_batch(10, &FirewallSpec { lan: None, ..spec() });
        assert_eq!(acked.len(), 1 + 4 + 7 + 2, "the LAN's two web rules go");
        assert!(!find(&no_lan, b"eth1"));
        // The web page on the WAN: one rule per port without iifname.
        let (_, acked) = table_batch(10, &FirewallSpec { any_tcp: vec![443], ..spec() });
        assert_eq!(acked.len(), 1 + 4 + 10 + 2);
    }
}
