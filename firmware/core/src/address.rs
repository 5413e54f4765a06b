//! Address rules: which announced addresses are private, which sources may
//! latch a leg and how much each is trusted (RTP-bleed protection), and when
//! an announced address may be sent to before it was learned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::LatchRule;

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

pub(crate) fn in_ranges(ip: IpAddr, ranges: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    ranges.iter().any(|net| net.contains(&ip))
}

/// Is a party that announced `announced` behind a NAT, so that its packets
/// come from an address it could not know? Private addresses are, unless
/// `routable_private_ranges` lists them (reachable as they are, like a
/// public address: MediaProxy's meaning of the option).
pub(crate) fn behind_nat(announced: IpAddr, routable: &[IpNet]) -> bool {
    is_private(announced) && !in_ranges(announced, routable)
}

/// What a source of one leg's RTP or RTCP is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// The address the party announced for this port: the SDP's RTP
    /// address, or its port + 1 for RTCP (`None` past port 65535).
    pub announced: IpAddr,
    pub announced_port: Option<u16>,
    /// The IP the party's SIP messages came from (`signaling_ip`).
    pub signaling: Option<IpAddr>,
    /// For RTCP: the leg's latched RTP peer and how it was latched.
    pub rtp_peer: Option<(IpAddr, LatchRule)>,
}

/// The most trusted rule under which `src` may latch a leg, `None` when no
/// rule vouches for it (for RTP the learning window decides then). A
/// source that is the announced address is always acceptable. Behind NAT
/// (see [`behind_nat`]) the party's signaling IP is too, and for RTCP the
/// IP of the leg's RTP peer, as trusted as that latch (a fallback RTP latch
/// gives a fallback RTCP latch); a public or routable announced address
/// accepts its own IP only.
pub(crate) fn latch_rule(expected: &Expected, src: SocketAddr, routable: &[IpNet]) -> Option<LatchRule> {
    let announced = expected.announced.to_canonical();
    if announced.is_unspecified() {
        return None;
    }
    let ip = src.ip().to_canonical();
    if ip == announced {
        return Some(if Some(src.port()) == expected.announced_port {
            LatchRule::Announced
        } else {
            LatchRule::AnnouncedIp
        });
    }
    if !behind_nat(announced, routable) {
        return None;
    }
    if expected.signaling.map(|s| s.to_canonical()) == Some(ip) {
        return Some(LatchRule::SignalingIp);
    }
    match expected.rtp_peer {
        // RTCP follows its RTP: as trusted as that latch, a fallback too.
        Some((peer, LatchRule::Fallback)) if peer.to_canonical() == ip => Some(LatchRule::Fallback),
        Some((peer, _)) if peer.to_canonical() == ip => Some(LatchRule::RtpPeer),
        _ => None,
    }
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
    fn latching_rules_and_their_ranks() {
        let none: &[IpNet] = &[];
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let public =
            Expected { announced: ip("203.0.113.5"), announced_port: Some(4000), signaling: None, rtp_peer: None };
        assert_eq!(latch_rule(&public, sa("203.0.113.5:4000"), none), Some(LatchRule::Announced));
        assert_eq!(latch_rule(&public, sa("[::ffff:203.0.113.5]:4000"), none), Some(LatchRule::Announced));
        assert_eq!(latch_rule(&public, sa("203.0.113.5:4444"), none), Some(LatchRule::AnnouncedIp));
        assert_eq!(latch_rule(&public, sa("203.0.113.6:4000"), none), None);
        // A public address accepts nothing else, not even its signaling IP.
        let signaled = Expected { signaling: Some(ip("198.51.100.1")), ..public };
        assert_eq!(latch_rule(&signaled, sa("198.51.100.1:4000"), none), None);

        // Behind NAT: the announced address, then its IP, then the signaling IP.
        let nat = Expected {
            announced: ip("192.168.1.10"),
            announced_port: Some(4000),
            signaling: Some(ip("198.51.100.1")),
            rtp_peer: None,
        };
        assert_eq!(latch_rule(&nat, sa("192.168.1.10:4000"), none), Some(LatchRule::Announced));
        assert_eq!(latch_rule(&nat, sa("192.168.1.10:9"), none), Some(LatchRule::AnnouncedIp));
        assert_eq!(latch_rule(&nat, sa("198.51.100.1:31000"), none), Some(LatchRule::SignalingIp));
        assert_eq!(latch_rule(&nat, sa("198.51.100.2:31000"), none), None, "a stranger");
        assert_eq!(latch_rule(&Expected { signaling: None, ..nat }, sa("198.51.100.1:31000"), none), None);
        assert!(LatchRule::Announced.rank() > LatchRule::AnnouncedIp.rank());
        assert!(LatchRule::AnnouncedIp.rank() > LatchRule::SignalingIp.rank());
        assert_eq!(LatchRule::SignalingIp.rank(), LatchRule::RtpPeer.rank());
        assert!(LatchRule::SignalingIp.rank() > LatchRule::Fallback.rank());

        // RTCP: the RTP peer's IP too, as trusted as the RTP latch.
        let rtcp =
            Expected { announced_port: Some(4001), rtp_peer: Some((ip("192.0.2.7"), LatchRule::SignalingIp)), ..nat };
        assert_eq!(latch_rule(&rtcp, sa("192.168.1.10:4001"), none), Some(LatchRule::Announced));
        assert_eq!(latch_rule(&rtcp, sa("192.0.2.7:31001"), none), Some(LatchRule::RtpPeer));
        let fallback = Expected { rtp_peer: Some((ip("192.0.2.7"), LatchRule::Fallback)), ..rtcp };
        assert_eq!(latch_rule(&fallback, sa("192.0.2.7:31001"), none), Some(LatchRule::Fallback));
        assert_eq!(latch_rule(&fallback, sa("192.0.2.8:31001"), none), None);

        // A listed private range is reachable: only its own IP.
        let routable: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        assert_eq!(latch_rule(&nat, sa("198.51.100.1:31000"), &routable), None);
        assert_eq!(latch_rule(&nat, sa("192.168.1.10:4000"), &routable), Some(LatchRule::Announced));
        let unspecified = Expected { announced: ip("0.0.0.0"), ..nat };
        assert_eq!(latch_rule(&unspecified, sa("0.0.0.0:4000"), none), None);
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
