//! The network: two phones behind two masquerading NAT routers and a
//! server, all joined by an "internet" bridge.
//!
//! ```text
//!  ph-a 192.168.1.10 ── lan 192.168.1.1 [nat-a] wan 203.0.113.10 ──┐
//!                                                                  ├─ br0 [inet] ── 203.0.113.1, .2, .3 [srv]
//!  ph-b 192.168.2.10 ── lan 192.168.2.1 [nat-b] wan 203.0.113.20 ──┘     (proxy, dispatcher, relays)
//! ```
//!
//! Nothing routes to 192.168.0.0/16 outside each NAT: a phone is only
//! reachable through a mapping its own traffic created, so media sent to the
//! private address in an unmodified SDP is lost, as in the field.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::counters::{self, MediaCounters};
use crate::netns::{self, Netns, NAME_PREFIX};

/// The server's first address: the proxy, the dispatcher, relay 1.
pub const SRV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The server's second address, for a second relay.
pub const SRV_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The server's third address, for a third relay (load balancing).
pub const SRV_IP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
pub const NAT_A_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const NAT_B_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const NAT_A_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const NAT_B_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 1);
pub const PHONE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
pub const PHONE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
/// Addresses whose packets the phone counters attribute separately.
pub const RELAY_IPS: [Ipv4Addr; 3] = [SRV_IP, SRV_IP2, SRV_IP3];

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this process and call: `rbxe2e-<pid>-<n>`.
pub fn unique_prefix() -> String {
    format!("{NAME_PREFIX}{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

/// Which side of the call a phone is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// ph-a, behind nat-a: the caller.
    A,
    /// ph-b, behind nat-b: the callee.
    B,
}

impl Side {
    pub fn phone_ip(self) -> Ipv4Addr {
        match self {
            Side::A => PHONE_A,
            Side::B => PHONE_B,
        }
    }

    pub fn nat_wan_ip(self) -> Ipv4Addr {
        match self {
            Side::A => NAT_A_WAN,
            Side::B => NAT_B_WAN,
        }
    }
}

/// The six namespaces. Dropping it deletes them all (the phones first).
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    pub ph_a: Netns,
    pub ph_b: Netns,
    pub nat_a: Netns,
    pub nat_b: Netns,
    pub srv: Netns,
    pub inet: Netns,
}

impl Topology {
    /// Builds the whole network under a fresh unique prefix. On error the
    /// namespaces made so far are deleted again.
    pub fn new() -> Result<Topology> {
        netns::remove_stale();
        let prefix = unique_prefix();
        let ns = |role: &str| Netns::create(&format!("{prefix}-{role}"));
        let inet = ns("inet")?;
        let srv = ns("srv")?;
        let nat_a = ns("nat-a")?;
        let nat_b = ns("nat-b")?;
        let ph_a = ns("ph-a")?;
        let ph_b = ns("ph-b")?;
        let topo = Topology { prefix, ph_a, ph_b, nat_a, nat_b, srv, inet };
        topo.wire().with_context(|| format!("building topology {}", topo.prefix))?;
        Ok(topo)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn phone(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.ph_a,
            Side::B => &self.ph_b,
        }
    }

    pub fn nat(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.nat_a,
            Side::B => &self.nat_b,
        }
    }

    /// A namespace of its own on the internet bridge with address `ip`/24
    /// (a host on the public side, such as an attacker), named
    /// `<prefix>-<role>`; deleted when the returned value is dropped.
    pub fn attach(&self, role: &str, ip: Ipv4Addr) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{role}", self.prefix))?;
        let port = format!("p-{role}");
        self.inet.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        self.inet.ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// Reads the media counters of one phone.
    pub fn counters(&self, side: Side) -> Result<MediaCounters> {
        counters::read(self.phone(side), &RELAY_IPS)
    }

    fn wire(&self) -> Result<()> {
        // The internet: a bridge with one port per attached namespace. Veth
        // pairs are created directly inside the namespaces, so the short
        // interface names never clash between tests running in parallel.
        let inet = &self.inet;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        for (port, peer, peer_if) in
            [("p-srv", &self.srv, "eth0"), ("p-nat-a", &self.nat_a, "wan"), ("p-nat-b", &self.nat_b, "wan")]
        {
            inet.ip(&["link", "add", port, "type", "veth", "peer", "name", peer_if, "netns", peer.name()])?;
            inet.ip(&["link", "set", port, "master", "br0", "up"])?;
            peer.ip(&["link", "set", peer_if, "up"])?;
        }

        let srv = &self.srv;
        srv.ip(&["addr", "add", &format!("{SRV_IP}/24"), "dev", "eth0"])?;
        srv.ip(&["addr", "add", &format!("{SRV_IP2}/24"), "dev", "eth0"])?;
        srv.ip(&["addr", "add", &format!("{SRV_IP3}/24"), "dev", "eth0"])?;

        for side in [Side::A, Side::B] {
            let (nat, phone) = (self.nat(side), self.phone(side));
            let (lan, wan) = match side {
                Side::A => (NAT_A_LAN, NAT_A_WAN),
                Side::B => (NAT_B_LAN, NAT_B_WAN),
            };
            nat.ip(&["addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
            nat.ip(&["link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", phone.name()])?;
            nat.ip(&["addr", "add", &format!("{lan}/24"), "dev", "lan"])?;
            nat.ip(&["link", "set", "lan", "up"])?;
            nat.sysctl("net.ipv4.ip_forward", "1")?;
            nat.nft_load(NAT_RULES)?;

            phone.ip(&["addr", "add", &format!("{}/24", side.phone_ip()), "dev", "eth0"])?;
            phone.ip(&["link", "set", "eth0", "up"])?;
            phone.ip(&["route", "add", "default", "via", &lan.to_string()])?;
            counters::install(phone, &RELAY_IPS)?;
        }

        self.prepare_relay_host()
    }

    /// What MediaProxy's README asks an operator to do on a relay host
    /// (ip_forward, conntrack accounting, conntrack hooks engaged), plus an
    /// empty NAT chain so that NAT is available in this namespace for the
    /// conntrack entries a relay installs. A relay must still check all of
    /// this itself and say so when it is missing (SPEC 6, STYLE.md).
    fn prepare_relay_host(&self) -> Result<()> {
        self.srv.sysctl("net.ipv4.ip_forward", "1")?;
        if let Err(e) = self.srv.sysctl("net.netfilter.nf_conntrack_acct", "1") {
            eprintln!("[e2e] warning: cannot enable conntrack accounting in srv: {e:#}");
        }
        self.srv.nft_load(SRV_RULES)
    }
}

/// Masquerade everything leaving a NAT router's WAN side.
const NAT_RULES: &str = "table ip e2e_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" masquerade
  }
}
";

/// Relay host prerequisites in `srv`: a `ct state new` rule engages
/// connection tracking, the NAT chains make NAT available.
const SRV_RULES: &str = "table ip e2e_relay_host {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state new counter
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
  }
}
";
