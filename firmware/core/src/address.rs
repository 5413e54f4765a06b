//! Address rules: which announced addresses are private, when a source may
//! be latched (RTP-bleed protection) and when an announced address may be
//! sent to before it was learned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Addresses that mean nothing outside the phone's own network: RFC 1918,
/// shared address space 100.64.0.0/10, link-local, loopback, IPv6 ULA.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback() || is_shared(v4),
        IpAddr::V6(v6) => is_ula(v6) || is_unicast_link_local(v6) || v6.is_loopback(),
    }
}

fn is_shared(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    a == 100 && (b & 0xc0) == 64
}

fn is_ula(ip: Ipv6Addr) -> bool {
    let [s0, ..] = ip.segments();
    (s0 & 0xfe00) == 0xfc00
}

fn is_unicast_link_local(ip: Ipv6Addr) -> bool {
    let [s0, ..] = ip.segments();
    (s0 & 0xffc0) == 0xfe80
}

fn in_ranges(ip: IpAddr, ranges: &[IpNet]) -> bool {
    ranges.iter().any(|net| net.contains(&ip))
}

/// May a side that announced `announced` be latched to a packet from `src`?
/// The source must be the announced address, unless that address is private
/// (the phone is behind NAT and its real address is unknown). A private
/// range listed in `routable_private_ranges` is reachable as it is, like a
/// public address (MediaProxy's meaning of the option), so there too the
/// source must match.
pub(crate) fn may_latch(announced: IpAddr, src: IpAddr, routable: &[IpNet]) -> bool {
    let announced = announced.to_canonical();
    if announced.is_unspecified() {
        return false;
    }
    announced == src.to_canonical() || (is_private(announced) && !in_ranges(announced, routable))
}

/// May the relay send to an announced address it has not learned? Only to a
/// unicast address it can reach: public, or listed as routable.
pub(crate) fn may_send_to(addr: SocketAddr, routable: &[IpNet]) -> bool {
    let ip = addr.ip().to_canonical();
    let unicast = match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_multicast(),
    };
    unicast && addr.port() != 0 && (!is_private(ip) || in_ranges(ip, routable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges() {
        for p in ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.10", "100.64.0.1", "100.127.255.254"] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["169.254.1.1", "127.0.0.1", "fd00::1", "fc12::1", "fe80::1", "::ffff:192.168.0.1"] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["203.0.113.5", "172.32.0.1", "100.128.0.1", "100.63.255.255", "2001:db8::1", "fec0::1", "8.8.8.8"] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }

    #[test]
    fn latching_rule() {
        let none: &[IpNet] = &[];
        assert!(may_latch(ip("203.0.113.5"), ip("203.0.113.5"), none));
        assert!(may_latch(ip("203.0.113.5"), ip("::ffff:203.0.113.5"), none));
        assert!(!may_latch(ip("203.0.113.5"), ip("203.0.113.6"), none));
        assert!(may_latch(ip("192.168.1.10"), ip("198.51.100.1"), none));
        assert!(!may_latch(ip("0.0.0.0"), ip("0.0.0.0"), none));
        let routable: Vec<IpNet> = vec!["10.20.0.0/16".parse().unwrap()];
        assert!(may_latch(ip("10.20.0.9"), ip("203.0.113.1"), none), "private: behind NAT");
        assert!(!may_latch(ip("10.20.0.9"), ip("203.0.113.1"), &routable), "listed: reachable, must match");
        assert!(may_latch(ip("10.20.0.9"), ip("10.20.0.9"), &routable));
    }

    #[test]
    fn sending_to_announced() {
        let none: &[IpNet] = &[];
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(may_send_to(sa("203.0.113.5:4000"), none));
        assert!(!may_send_to(sa("203.0.113.5:0"), none));
        assert!(!may_send_to(sa("192.168.1.1:4000"), none));
        assert!(!may_send_to(sa("0.0.0.0:4000"), none));
        assert!(!may_send_to(sa("224.0.0.1:4000"), none));
        assert!(!may_send_to(sa("255.255.255.255:4000"), none));
        assert!(!may_send_to(sa("[ff02::1]:4000"), none));
        let routable: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        assert!(may_send_to(sa("192.168.1.1:4000"), &routable));
    }
}
