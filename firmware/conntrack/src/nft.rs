//! relaybox's nftables table, programmed over nfnetlink (`NFNL_SUBSYS_NFTABLES`)
//! without the `nft` program, which a firmware image does not ship. The
//! table exists for its side effects: a `ct` expression registers the
//! conntrack hooks and the empty `nat` chains register the NAT hooks in this
//! network namespace (without them the kernel neither tracks nor translates
//! the relay's entries), and one rule leaves untracked what the relay itself
//! sends from its port range. As `nft -f` would apply:
//!
//! ```text
//! table inet relaybox {
//!   chain conntrack_pre { type filter hook prerouting priority -150; ct state invalid counter }
//!   chain conntrack_out { type filter hook output priority -150; ct state invalid counter }
//!   chain notrack_out { type filter hook output priority raw; udp sport START-LAST notrack }
//!   chain nat_pre { type nat hook prerouting priority dstnat; }
//!   chain nat_post { type nat hook postrouting priority srcnat; }
//! }
//! ```
//!
//! One batch (one transaction): the table and chains are created when
//! missing and left as they are otherwise (a restarted relay must not
//! unregister the hooks its predecessor's flows run through), the three
//! rule chains are flushed and refilled.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::wire::{self, Builder, Message, AF_UNSPEC, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use crate::Error;

/// The table's name (family `inet`: IPv4 and IPv6).
pub const TABLE: &str = "relaybox";

// linux/netfilter/nfnetlink.h, nf_tables.h, netfilter.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_DELRULE: u16 = 8;
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;
pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_CT_DREG: u16 = 1;
pub(crate) const NFTA_CT_KEY: u16 = 2;
pub(crate) const NFTA_BITWISE_SREG: u16 = 1;
pub(crate) const NFTA_BITWISE_DREG: u16 = 2;
pub(crate) const NFTA_BITWISE_LEN: u16 = 3;
pub(crate) const NFTA_BITWISE_MASK: u16 = 4;
pub(crate) const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_COUNTER_BYTES: u16 = 1;
pub(crate) const NFTA_COUNTER_PACKETS: u16 = 2;
pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFT_REG_1: u32 = 1;
pub(crate) const NFT_CT_STATE: u32 = 0;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NFT_CMP_LTE: u32 = 3;
pub(crate) const NFT_CMP_GTE: u32 = 5;
const NF_CT_STATE_INVALID_BIT: u32 = 1;
pub(crate) const IPPROTO_UDP: u8 = 17;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;

/// A base chain of the table.
struct BaseChain {
    name: &'static str,
    kind: &'static str,
    hook: u32,
    priority: i32,
}

const CHAINS: [BaseChain; 5] = [
    BaseChain { name: "conntrack_pre", kind: "filter", hook: NF_INET_PRE_ROUTING, priority: -150 },
    BaseChain { name: "conntrack_out", kind: "filter", hook: NF_INET_LOCAL_OUT, priority: -150 },
    BaseChain { name: "notrack_out", kind: "filter", hook: NF_INET_LOCAL_OUT, priority: -300 },
    BaseChain { name: "nat_pre", kind: "nat", hook: NF_INET_PRE_ROUTING, priority: -100 },
    BaseChain { name: "nat_post", kind: "nat", hook: NF_INET_POST_ROUTING, priority: 100 },
];

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The messages of one nf_tables batch, sequence numbers from `seq`.
pub(crate) struct Batch {
    messages: Vec<Vec<u8>>,
    seq: u32,
}

impl Batch {
    pub(crate) fn new(seq: u32) -> Self {
        let begin = Builder::nfnetlink(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
        Batch { messages: vec![begin.finish()], seq: seq + 1 }
    }

    /// Adds one nf_tables message (acknowledged); `fill` adds its attributes.
    pub(crate) fn push(&mut self, msg: u16, flags: u16, fill: impl FnOnce(&mut Builder)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let mut b = Builder::nfnetlink(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, NFPROTO_INET, 0);
        fill(&mut b);
        self.messages.push(b.finish());
        self.seq += 1;
    }

    /// The datagram, and the sequence numbers whose acknowledgements to wait for.
    pub(crate) fn finish(mut self) -> (Vec<u8>, std::ops::Range<u32>) {
        let first = self.messages.len() as u32;
        let end = Builder::nfnetlink(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
        let acked = (self.seq + 1 - first)..self.seq;
        self.messages.push(end.finish());
        (self.messages.concat(), acked)
    }
}

/// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
pub(crate) fn expr(b: &mut Builder, name: &str, data: impl FnOnce(&mut Builder)) {
    b.begin(NFTA_LIST_ELEM).attr(NFTA_EXPR_NAME, &cstr(name)).begin(NFTA_EXPR_DATA);
    data(b);
    b.end().end();
}

pub(crate) fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

pub(crate) fn cmp(b: &mut Builder, op: u32, value: &[u8]) {
    expr(b, "cmp", |b| {
        b.attr(NFTA_CMP_SREG, &be32(NFT_REG_1)).attr(NFTA_CMP_OP, &be32(op));
        b.begin(NFTA_CMP_DATA).attr(NFTA_DATA_VALUE, value).end();
    });
}

/// `ct state invalid counter`
fn ct_state_invalid_counter(b: &mut Builder) {
    expr(b, "ct", |b| {
        b.attr(NFTA_CT_DREG, &be32(NFT_REG_1)).attr(NFTA_CT_KEY, &be32(NFT_CT_STATE));
    });
    expr(b, "bitwise", |b| {
        b.attr(NFTA_BITWISE_SREG, &be32(NFT_REG_1)).attr(NFTA_BITWISE_DREG, &be32(NFT_REG_1));
        b.attr(NFTA_BITWISE_LEN, &be32(4));
        // The ct state register is a host-order u32.
        b.begin(NFTA_BITWISE_MASK).attr(NFTA_DATA_VALUE, &NF_CT_STATE_INVALID_BIT.to_ne_bytes()).end();
        b.begin(NFTA_BITWISE_XOR).attr(NFTA_DATA_VALUE, &0u32.to_ne_bytes()).end();
    });
    cmp(b, NFT_CMP_NEQ, &0u32.to_ne_bytes());
    expr(b, "counter", |b| {
        b.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes()).attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
    });
}

/// `udp sport FIRST-LAST notrack`
fn udp_sport_notrack(b: &mut Builder, first: u16, last: u16) {
    expr(b, "meta", |b| {
        b.attr(NFTA_META_DREG, &be32(NFT_REG_1)).attr(NFTA_META_KEY, &be32(NFT_META_L4PROTO));
    });
    cmp(b, NFT_CMP_EQ, &[IPPROTO_UDP]);
    expr(b, "payload", |b| {
        b.attr(NFTA_PAYLOAD_DREG, &be32(NFT_REG_1)).attr(NFTA_PAYLOAD_BASE, &be32(NFT_PAYLOAD_TRANSPORT_HEADER));
        b.attr(NFTA_PAYLOAD_OFFSET, &be32(0)).attr(NFTA_PAYLOAD_LEN, &be32(2));
    });
    // Ports are compared as the packet has them: big endian.
    cmp(b, NFT_CMP_GTE, &first.to_be_bytes());
    cmp(b, NFT_CMP_LTE, &last.to_be_bytes());
    expr(b, "notrack", |_| {});
}

fn rule(batch: &mut Batch, chain: &str, exprs: impl FnOnce(&mut Builder)) {
    batch.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
        b.attr(NFTA_RULE_TABLE, &cstr(TABLE)).attr(NFTA_RULE_CHAIN, &cstr(chain));
        b.begin(NFTA_RULE_EXPRESSIONS);
        exprs(b);
        b.end();
    });
}

/// The batch that creates (or refreshes) the table; `ports` is the relay's
/// port range, end exclusive.
pub(crate) fn table_batch(seq: u32, (start, end): (u16, u16)) -> (Vec<u8>, std::ops::Range<u32>) {
    let last = end.saturating_sub(1).max(start);
    let mut batch = Batch::new(seq);
    batch.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
        b.attr(NFTA_TABLE_NAME, &cstr(TABLE));
    });
    for c in &CHAINS {
        batch.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            b.attr(NFTA_CHAIN_TABLE, &cstr(TABLE)).attr(NFTA_CHAIN_NAME, &cstr(c.name));
            b.begin(NFTA_CHAIN_HOOK)
                .attr(NFTA_HOOK_HOOKNUM, &be32(c.hook))
                .attr(NFTA_HOOK_PRIORITY, &c.priority.to_be_bytes())
                .end();
            b.attr(NFTA_CHAIN_TYPE, &cstr(c.kind));
        });
    }
    for chain in ["conntrack_pre", "conntrack_out", "notrack_out"] {
        // A DELRULE with no handle empties the chain.
        batch.push(NFT_MSG_DELRULE, 0, |b| {
            b.attr(NFTA_RULE_TABLE, &cstr(TABLE)).attr(NFTA_RULE_CHAIN, &cstr(chain));
        });
    }
    rule(&mut batch, "conntrack_pre", ct_state_invalid_counter);
    rule(&mut batch, "conntrack_out", ct_state_invalid_counter);
    rule(&mut batch, "notrack_out", |b| udp_sport_notrack(b, start, last));
    batch.finish()
}

pub(crate) fn delete_batch(seq: u32) -> (Vec<u8>, std::ops::Range<u32>) {
    let mut batch = Batch::new(seq);
    batch.push(NFT_MSG_DELTABLE, 0, |b| {
        b.attr(NFTA_TABLE_NAME, &cstr(TABLE));
    });
    batch.finish()
}

/// Sends one batch and waits for the acknowledgement of each message in
/// it; the first error is the batch's (the kernel then applied nothing).
pub(crate) fn send_batch(datagram: &[u8], acked: std::ops::Range<u32>) -> Result<(), Error> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.send(datagram, 0)?;
    let mut pending: Vec<u32> = acked.collect();
    let mut failure = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    // Bounded: one answer per message, a few datagrams at most.
    for _ in 0..64 {
        if pending.is_empty() {
            break;
        }
        buf.clear();
        socket.recv(&mut buf, 0)?;
        for message in wire::parse(&buf) {
            if let Message::Ack { seq, errno } = message {
                pending.retain(|&s| s != seq);
                if errno != 0 && failure.is_none() {
                    failure = Some(errno);
                }
            }
        }
        // After an error the kernel aborts the batch and may not answer the rest.
        if failure.is_some() {
            break;
        }
    }
    match failure {
        Some(errno) => Err(wire::errno_error(errno)),
        None if pending.is_empty() => Ok(()),
        None => Err(Error::Malformed("nf_tables did not acknowledge the whole batch")),
    }
}

/// Sends a batch that creates a table; ENOENT there is a chain type or
/// expression the kernel does not have, which `missing` names.
pub(crate) fn send_table(datagram: &[u8], acked: std::ops::Range<u32>, missing: &str) -> Result<(), Error> {
    send_batch(datagram, acked).map_err(|e| match e {
        Error::NotFound => Error::NotSupported(std::io::Error::other(missing.to_string())),
        e => e,
    })
}

/// Sends a batch that deletes a table; a missing table is fine.
pub(crate) fn send_delete(datagram: &[u8], acked: std::ops::Range<u32>) -> Result<(), Error> {
    match send_batch(datagram, acked) {
        Ok(()) | Err(Error::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates relaybox's table, or refreshes its rules for `ports` (the relay's
/// port range, end exclusive) keeping its chains' hooks registered.
pub fn apply_table(ports: (u16, u16)) -> Result<(), Error> {
    let (datagram, acked) = table_batch(1, ports);
    send_table(
        &datagram,
        acked,
        "nf_tables has no nat chain type or ct/notrack expression (modules nft_chain_nat, nft_ct)",
    )
}

/// Deletes relaybox's table; a missing one is fine.
pub fn delete_table() -> Result<(), Error> {
    let (datagram, acked) = delete_batch(1);
    send_delete(&datagram, acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, flags, seq) of each netlink message in a datagram.
    fn headers(mut buf: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut out = Vec::new();
        while buf.len() >= 16 {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len % 4 == 0 && len <= buf.len(), "bad message length {len}");
            out.push((
                u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
                u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
                u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            ));
            buf = &buf[len..];
        }
        assert!(buf.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn the_table_batch_is_begin_table_chains_flushes_rules_end() {
        let (datagram, acked) = table_batch(100, (40000, 40100));
        let h = headers(&datagram);
        let nft = |m: u16| (NFNL_SUBSYS_NFTABLES << 8) | m;
        let kinds: Vec<u16> = h.iter().map(|m| m.0).collect();
        let mut expected = vec![NFNL_MSG_BATCH_BEGIN, nft(NFT_MSG_NEWTABLE)];
        expected.extend([nft(NFT_MSG_NEWCHAIN); 5]);
        expected.extend([nft(NFT_MSG_DELRULE); 3]);
        expected.extend([nft(NFT_MSG_NEWRULE); 3]);
        expected.push(NFNL_MSG_BATCH_END);
        assert_eq!(kinds, expected);
        // Sequence numbers run on; every inner message asks for an ack.
        assert_eq!(h.iter().map(|m| m.2).collect::<Vec<_>>(), (100..114).collect::<Vec<_>>());
        assert_eq!(acked, 101..113);
        for m in &h[1..h.len() - 1] {
            assert_ne!(m.1 & NLM_F_ACK, 0);
        }
        // NEWTABLE/NEWCHAIN create without EXCL: an existing table is kept.
        assert_eq!(h[1].1, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(h[11].1, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
        // The batch messages name the nf_tables subsystem in res_id.
        assert_eq!(&datagram[16..20], &[AF_UNSPEC, 0, 0, 10]);
    }

    #[test]
    fn the_notrack_rule_compares_the_port_range_big_endian_and_ends_exclusive() {
        let mut b = Builder::nfnetlink(0, 0, 0, 0, 0);
        udp_sport_notrack(&mut b, 40000, 40099);
        let bytes = b.finish();
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(&40000u16.to_be_bytes()) && find(&40099u16.to_be_bytes()));
        assert!(find(b"notrack\0") && find(b"payload\0") && find(b"meta\0"));
        let (datagram, _) = table_batch(1, (40000, 40100));
        let find = |needle: &[u8]| datagram.windows(needle.len()).any(|w| w == needle);
        // An NFTA_DATA_VALUE attribute of 2 bytes (len 6, type 1) holding 40099.
        let mut last = vec![6, 0, 1, 0];
        last.extend_from_slice(&40099u16.to_be_bytes());
        assert!(find(&last), "end of the range is exclusive");
    }

    #[test]
    fn chain_priorities_are_big_endian_signed() {
        let (datagram, _) = table_batch(1, (40000, 40100));
        let find = |needle: &[u8]| datagram.windows(needle.len()).any(|w| w == needle);
        for p in [-150i32, -300, -100, 100] {
            let mut attr = vec![8, 0, NFTA_HOOK_PRIORITY as u8, 0];
            attr.extend_from_slice(&p.to_be_bytes());
            assert!(find(&attr), "priority {p}");
        }
    }
}
