//! ctnetlink messages as bytes: the netlink header, the nfnetlink header and
//! the `CTA_*` attributes of `linux/netfilter/nfnetlink_conntrack.h`. Pure
//! functions, no socket: every encoder is tested byte for byte and every
//! parser must survive any input.

use std::net::{IpAddr, SocketAddr};

use crate::{Counters, Entry, Error, FlowSpec, Tuple};

// linux/netlink.h
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
pub(crate) const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Multicast group of DESTROY events.
pub(crate) const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_NAT_DST: u16 = 13;
const CTA_MARK_MASK: u16 = 21;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

const IPPROTO_UDP: u8 = 17;
pub(crate) const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message under construction; nests are closed with [`end`].
pub(crate) struct Builder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Builder {
    /// A ctnetlink message.
    fn new(msg: u16, flags: u16, seq: u32, family: u8) -> Self {
        Self::nfnetlink((NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, seq, family, 0)
    }

    /// Any nfnetlink message: the netlink header and `struct nfgenmsg`
    /// (family, version `NFNETLINK_V0`, `res_id` big endian).
    pub(crate) fn nfnetlink(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Builder { buf, nests: Vec::new() }
    }

    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub(crate) fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub(crate) fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn tuple(&mut self, kind: u16, t: &Tuple) -> &mut Self {
        self.begin(kind).begin(CTA_TUPLE_IP);
        match (t.src.ip(), t.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.attr(CTA_IP_V4_SRC, &s.octets()).attr(CTA_IP_V4_DST, &d.octets()),
            (s, d) => self.attr(CTA_IP_V6_SRC, &v6(s)).attr(CTA_IP_V6_DST, &v6(d)),
        };
        self.end()
            .begin(CTA_TUPLE_PROTO)
            .attr(CTA_PROTO_NUM, &[IPPROTO_UDP])
            .attr(CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes())
            .attr(CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes())
            .end()
            .end()
    }

    /// A NAT range of exactly one address and port.
    fn nat(&mut self, kind: u16, to: SocketAddr) -> &mut Self {
        self.begin(kind);
        match to.ip() {
            IpAddr::V4(ip) => self.attr(CTA_NAT_V4_MINIP, &ip.octets()).attr(CTA_NAT_V4_MAXIP, &ip.octets()),
            IpAddr::V6(ip) => self.attr(CTA_NAT_V6_MINIP, &ip.octets()).attr(CTA_NAT_V6_MAXIP, &ip.octets()),
        };
        let port = to.port().to_be_bytes();
        self.begin(CTA_NAT_PROTO).attr(CTA_PROTONAT_PORT_MIN, &port).attr(CTA_PROTONAT_PORT_MAX, &port).end().end()
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn family(addr: &SocketAddr) -> u8 {
    if addr.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE | NLM_F_EXCL`: a new entry whose
/// original tuple is `caller → relay_caller_side` and whose reply tuple the
/// kernel derives by applying DNAT to `callee` and SNAT to
/// `relay_callee_side` (we send the plain inverse of the original tuple, as
/// `nf_nat_setup_info` rewrites the reply tuple from it).
pub(crate) fn new_flow(seq: u32, flow: &FlowSpec) -> Vec<u8> {
    let orig = flow.orig();
    let plain_reply = Tuple { src: orig.dst, dst: orig.src };
    let mut b = Builder::new(
        IPCTNL_MSG_CT_NEW,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        family(&flow.caller),
    );
    b.tuple(CTA_TUPLE_ORIG, &orig)
        .tuple(CTA_TUPLE_REPLY, &plain_reply)
        .nat(CTA_NAT_DST, flow.callee)
        .nat(CTA_NAT_SRC, flow.relay_callee_side)
        .attr(CTA_TIMEOUT, &flow.timeout_secs.to_be_bytes())
        .attr(CTA_MARK, &flow.mark.to_be_bytes());
    b.finish()
}

/// `IPCTNL_MSG_CT_DELETE` of the entry that has `tuple` in either direction.
pub(crate) fn delete(seq: u32, tuple: &Tuple) -> Vec<u8> {
    let mut b = Builder::new(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family(&tuple.src));
    b.tuple(CTA_TUPLE_ORIG, tuple);
    b.finish()
}

/// `IPCTNL_MSG_CT_GET` of the entry that has `tuple` in either direction.
pub(crate) fn get(seq: u32, tuple: &Tuple) -> Vec<u8> {
    let mut b = Builder::new(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_ACK, seq, family(&tuple.src));
    b.tuple(CTA_TUPLE_ORIG, tuple);
    b.finish()
}

/// A dump of every entry carrying `mark` (both address families).
pub(crate) fn dump(seq: u32, mark: u32) -> Vec<u8> {
    let mut b = Builder::new(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, AF_UNSPEC);
    b.attr(CTA_MARK, &mark.to_be_bytes()).attr(CTA_MARK_MASK, &u32::MAX.to_be_bytes());
    b.finish()
}

/// One message of a reply or event datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// An acknowledgement (`errno` 0) or an error (`errno` > 0).
    Ack {
        seq: u32,
        errno: i32,
    },
    Done {
        seq: u32,
    },
    /// A conntrack entry: a GET/dump answer (`IPCTNL_MSG_CT_NEW`) or an event.
    Entry {
        seq: u32,
        msg: u16,
        entry: Option<Entry>,
    },
    Other,
}

/// Attributes of one level: `(type without flags, value)`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn ip(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

/// A UDP tuple; `None` for other protocols or incomplete tuples.
fn parse_tuple(v: &[u8]) -> Option<Tuple> {
    let (mut src_ip, mut dst_ip, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (kind, value) in attrs(v) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(value) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src_ip = ip(a),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst_ip = ip(a),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(value) {
                    match k {
                        CTA_PROTO_NUM => proto = a.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(a),
                        CTA_PROTO_DST_PORT => dport = be16(a),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if proto != Some(IPPROTO_UDP) {
        return None;
    }
    Some(Tuple { src: SocketAddr::new(src_ip?, sport?), dst: SocketAddr::new(dst_ip?, dport?) })
}

fn parse_counters(v: &[u8]) -> (u64, u64) {
    let (mut packets, mut bytes) = (0, 0);
    for (kind, value) in attrs(v) {
        match kind {
            CTA_COUNTERS_PACKETS => packets = be64(value).unwrap_or(0),
            CTA_COUNTERS_BYTES => bytes = be64(value).unwrap_or(0),
            _ => {}
        }
    }
    (packets, bytes)
}

/// The attributes of one conntrack message (after the nfgenmsg header).
fn parse_entry(v: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply) = (None, None);
    let mut entry_counters = Counters::default();
    let (mut mark, mut id, mut status, mut timeout) = (0, None, 0, None);
    for (kind, value) in attrs(v) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            CTA_MARK => mark = be32(value).unwrap_or(0),
            CTA_ID => id = be32(value),
            CTA_STATUS => status = be32(value).unwrap_or(0),
            CTA_TIMEOUT => timeout = be32(value),
            CTA_COUNTERS_ORIG => (entry_counters.orig_packets, entry_counters.orig_bytes) = parse_counters(value),
            CTA_COUNTERS_REPLY => (entry_counters.reply_packets, entry_counters.reply_bytes) = parse_counters(value),
            _ => {}
        }
    }
    Some(Entry { orig: orig?, reply: reply?, mark, id, status, timeout, counters: entry_counters })
}

/// Splits a datagram into messages. Truncated or garbled tails end the list.
pub(crate) fn parse(mut buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let payload = &buf[NLMSG_HDRLEN..len];
        let message = match kind {
            NLMSG_ERROR => match payload.get(..4) {
                Some(e) => Message::Ack { seq, errno: -i32::from_ne_bytes([e[0], e[1], e[2], e[3]]) },
                None => Message::Other,
            },
            NLMSG_DONE => Message::Done { seq },
            k if k >> 8 == NFNL_SUBSYS_CTNETLINK && payload.len() >= 4 => {
                Message::Entry { seq, msg: k & 0xff, entry: parse_entry(&payload[4..]) }
            }
            _ => Message::Other,
        };
        out.push(message);
        buf = buf.get(align4(len)..).unwrap_or(&[]);
    }
    out
}

/// Maps a kernel errno to the error a caller can match on.
pub(crate) fn errno_error(errno: i32) -> Error {
    match errno {
        libc_errno::EEXIST => Error::Exists,
        libc_errno::ENOENT => Error::NotFound,
        libc_errno::EPERM | libc_errno::EACCES => Error::Permission,
        libc_errno::EOPNOTSUPP | libc_errno::EAFNOSUPPORT | libc_errno::EPROTONOSUPPORT => {
            Error::NotSupported(std::io::Error::from_raw_os_error(errno))
        }
        libc_errno::EAGAIN => Error::TryAgain,
        _ => Error::Kernel(std::io::Error::from_raw_os_error(errno)),
    }
}

/// The errno values of Linux (all architectures relaybox targets agree).
pub(crate) mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EPROTONOSUPPORT: i32 = 93;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EAFNOSUPPORT: i32 = 97;
    pub const ENOBUFS: i32 = 105;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn flow() -> FlowSpec {
        FlowSpec {
            caller: sa("192.0.2.10:4000"),
            relay_caller_side: sa("198.51.100.1:40000"),
            relay_callee_side: sa("198.51.100.1:40002"),
            callee: sa("203.0.113.20:5000"),
            timeout_secs: 120,
            mark: 0x7262_0001,
        }
    }

    /// Attribute header in host order, as the kernel expects on this machine.
    fn nla(len: u16, kind: u16) -> Vec<u8> {
        [len.to_ne_bytes(), kind.to_ne_bytes()].concat()
    }

    fn header(len: u32, msg: u16, flags: u16, seq: u32, family: u8) -> Vec<u8> {
        [
            len.to_ne_bytes().to_vec(),
            (0x0100 | msg).to_ne_bytes().to_vec(),
            flags.to_ne_bytes().to_vec(),
            seq.to_ne_bytes().to_vec(),
            vec![0, 0, 0, 0],
            vec![family, 0, 0, 0],
        ]
        .concat()
    }

    /// CTA_TUPLE_* for UDP/IPv4, written out by hand: 52 bytes.
    fn tuple4(kind: u16, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        [
            nla(52, kind | 0x8000),
            nla(20, 1 | 0x8000), // CTA_TUPLE_IP
            nla(8, 1),           // CTA_IP_V4_SRC
            src.to_vec(),
            nla(8, 2), // CTA_IP_V4_DST
            dst.to_vec(),
            nla(28, 2 | 0x8000), // CTA_TUPLE_PROTO
            nla(5, 1),           // CTA_PROTO_NUM
            vec![17, 0, 0, 0],
            nla(6, 2), // CTA_PROTO_SRC_PORT
            sport.to_be_bytes().to_vec(),
            vec![0, 0],
            nla(6, 3), // CTA_PROTO_DST_PORT
            dport.to_be_bytes().to_vec(),
            vec![0, 0],
        ]
        .concat()
    }

    fn nat4(kind: u16, ip: [u8; 4], port: u16) -> Vec<u8> {
        [
            nla(40, kind | 0x8000),
            nla(8, 1), // CTA_NAT_V4_MINIP
            ip.to_vec(),
            nla(8, 2), // CTA_NAT_V4_MAXIP
            ip.to_vec(),
            nla(20, 3 | 0x8000), // CTA_NAT_PROTO
            nla(6, 1),           // CTA_PROTONAT_PORT_MIN
            port.to_be_bytes().to_vec(),
            vec![0, 0],
            nla(6, 2), // CTA_PROTONAT_PORT_MAX
            port.to_be_bytes().to_vec(),
            vec![0, 0],
        ]
        .concat()
    }

    #[test]
    fn new_flow_is_byte_exact() {
        let body = [
            tuple4(1, [192, 0, 2, 10], 4000, [198, 51, 100, 1], 40000),
            tuple4(2, [198, 51, 100, 1], 40000, [192, 0, 2, 10], 4000),
            nat4(13, [203, 0, 113, 20], 5000),
            nat4(6, [198, 51, 100, 1], 40002),
            nla(8, 7),
            vec![0, 0, 0, 120],
            nla(8, 8),
            vec![0x72, 0x62, 0, 1],
        ]
        .concat();
        let len = 20 + body.len() as u32;
        assert_eq!(len, 20 + 52 * 2 + 40 * 2 + 16);
        let expected = [header(len, 0, 0x1 | 0x4 | 0x400 | 0x200, 7, 2), body].concat();
        assert_eq!(new_flow(7, &flow()), expected);
    }

    #[test]
    fn delete_get_and_dump_are_byte_exact() {
        let t = flow().orig();
        let tuple = tuple4(1, [192, 0, 2, 10], 4000, [198, 51, 100, 1], 40000);
        assert_eq!(delete(9, &t), [header(72, 2, 0x5, 9, 2), tuple.clone()].concat());
        assert_eq!(get(10, &t), [header(72, 1, 0x5, 10, 2), tuple].concat());
        let expected =
            [header(36, 1, 0x301, 11, 0), nla(8, 8), vec![0x72, 0x62, 0, 1], nla(8, 21), vec![0xff; 4]].concat();
        assert_eq!(dump(11, 0x7262_0001), expected);
    }

    #[test]
    fn ipv6_tuples_use_the_v6_attributes() {
        let t = Tuple { src: sa("[2001:db8::1]:4000"), dst: sa("[2001:db8::2]:40000") };
        let msg = delete(1, &t);
        assert_eq!(msg[16], 10, "AF_INET6");
        // CTA_TUPLE_ORIG(4) CTA_TUPLE_IP(4) CTA_IP_V6_SRC header
        assert_eq!(&msg[28..32], &nla(20, 3)[..]);
        assert_eq!(&msg[32..48], &t.src.ip().to_string().parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(parse_tuple(&msg[24..]).unwrap(), t, "round trip");
    }

    /// A kernel answer to GET, as the kernel would send it: orig, reply with
    /// NAT applied, counters, mark, id.
    fn kernel_entry(seq: u32) -> Vec<u8> {
        let counters = |kind: u16, p: u64, b: u64| {
            [nla(28, kind | 0x8000), nla(12, 1), p.to_be_bytes().to_vec(), nla(12, 2), b.to_be_bytes().to_vec()]
                .concat()
        };
        let body = [
            tuple4(1, [192, 0, 2, 10], 4000, [198, 51, 100, 1], 40000),
            tuple4(2, [203, 0, 113, 20], 5000, [198, 51, 100, 1], 40002),
            nla(8, 3),
            vec![0, 0, 0x01, 0xba],
            nla(8, 7),
            vec![0, 0, 0, 119],
            counters(9, 50, 10_000),
            counters(10, 49, 9_800),
            nla(8, 8),
            vec![0x72, 0x62, 0, 1],
            nla(8, 12),
            vec![0xde, 0xad, 0xbe, 0xef],
            nla(5, 99), // unknown attribute: skipped
            vec![1, 0, 0, 0],
        ]
        .concat();
        [header(20 + body.len() as u32, 0, 0, seq, 2), body].concat()
    }

    #[test]
    fn parses_entries_with_counters_acks_and_done() {
        let mut datagram = kernel_entry(5);
        let ack = [16u32 + 4 + 16].iter().flat_map(|l| l.to_ne_bytes()).collect::<Vec<u8>>();
        let mut err = ack.clone();
        err.extend_from_slice(&2u16.to_ne_bytes());
        err.extend_from_slice(&[0, 0]);
        err.extend_from_slice(&5u32.to_ne_bytes());
        err.extend_from_slice(&[0; 4]);
        err.extend_from_slice(&(-17i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        datagram.extend_from_slice(&err);
        let mut done = (16u32).to_ne_bytes().to_vec();
        done.extend_from_slice(&3u16.to_ne_bytes());
        done.extend_from_slice(&2u16.to_ne_bytes());
        done.extend_from_slice(&6u32.to_ne_bytes());
        done.extend_from_slice(&[0; 4]);
        datagram.extend_from_slice(&done);

        let messages = parse(&datagram);
        assert_eq!(messages.len(), 3);
        let Message::Entry { seq: 5, msg: 0, entry: Some(e) } = &messages[0] else { panic!("{:?}", messages[0]) };
        assert_eq!(e.orig, flow().orig());
        assert_eq!(e.reply, flow().reply(), "the reply tuple carries the NAT");
        assert_eq!(e.mark, 0x7262_0001);
        assert_eq!(e.id, Some(0xdead_beef));
        assert_eq!(e.status, 0x1ba);
        assert_eq!(e.timeout, Some(119));
        assert_eq!(
            e.counters,
            Counters { orig_packets: 50, orig_bytes: 10_000, reply_packets: 49, reply_bytes: 9_800 }
        );
        assert_eq!(messages[1], Message::Ack { seq: 5, errno: 17 });
        assert_eq!(messages[2], Message::Done { seq: 6 });
        assert!(matches!(errno_error(17), Error::Exists));
        assert!(matches!(errno_error(2), Error::NotFound));
        assert!(matches!(errno_error(1), Error::Permission));
    }

    #[test]
    fn garbage_never_panics() {
        let good = kernel_entry(1);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % buf.len();
                buf[i] = (x >> 8) as u8;
            }
            let _ = parse(&buf);
        }
    }
}
