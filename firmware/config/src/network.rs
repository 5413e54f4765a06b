//! The box's `network.conf`: `KEY=VALUE` lines that the image's init
//! sources as shell at boot (`WAN_MODE`, `WAN_ADDRESS`, `WAN_GATEWAY`,
//! `WAN_DNS`, `LAN_ADDRESS`; `WAN_IF` / `LAN_IF` are the board's and are
//! left alone). Read and written by the web page's Network settings. Every
//! value is checked before it is stored — addresses are parsed, not
//! pattern-matched — so sourcing the file can never run anything, and a
//! setting that would leave the box unreachable (a gateway outside the WAN
//! network, the LAN on the WAN's network) is refused with the reason.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use crate::system::{none_or_all, set_shell_var, shell_var, SystemError};

/// At most this many DNS servers (the C library reads three).
pub const MAX_DNS_SERVERS: usize = 3;

/// How the WAN interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WanMode {
    #[default]
    Dhcp,
    Static,
}

impl WanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WanMode::Dhcp => "dhcp",
            WanMode::Static => "static",
        }
    }
}

/// The settings of `network.conf` relaybox reads and writes. Strings are
/// kept as typed so that a refused form shows what was entered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkSettings {
    /// `dhcp` or `static`; anything else is refused by [`check`](Self::check).
    pub wan_mode: String,
    /// `a.b.c.d/nn`; needed with `static`.
    pub wan_address: String,
    /// The WAN router, inside the WAN network; empty: no default route.
    pub wan_gateway: String,
    /// Name servers (IPv4 or IPv6), in order.
    pub wan_dns: Vec<String>,
    /// `a.b.c.d/nn`, or empty to leave the LAN interface down.
    pub lan_address: String,
}

fn error(key: &'static str, reason: impl Into<String>) -> SystemError {
    SystemError { key, reason: reason.into() }
}

/// An interface address `a.b.c.d/nn`: a host address of its network.
fn interface_address(value: &str) -> Result<Ipv4Net, String> {
    let (ip, prefix) = value.split_once('/').ok_or("expected address/prefix, e.g. 192.0.2.10/24")?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| format!("prefix {prefix:?} is not 1-32"))?;
    let net = Ipv4Net::new(ip, prefix).map_err(|_| format!("prefix {prefix} is not 1-32"))?;
    if prefix == 0 {
        return Err("prefix 0 is not an interface network".into());
    }
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() {
        return Err(format!("{ip} cannot be an interface address"));
    }
    if prefix < 31 && (ip == net.network() || ip == net.broadcast()) {
        return Err(format!("{ip} is the network's {} address", if ip == net.network() { "own" } else { "broadcast" }));
    }
    Ok(net)
}

impl WanMode {
    fn parse(value: &str) -> Option<WanMode> {
        match value {
            "dhcp" => Some(WanMode::Dhcp),
            "static" => Some(WanMode::Static),
            _ => None,
        }
    }
}

impl NetworkSettings {
    /// The settings in `text` (missing ones empty; no `WAN_MODE`: dhcp, as
    /// init reads it).
    pub fn parse(text: &str) -> NetworkSettings {
        let var = |key| shell_var(text, key).unwrap_or_default();
        let mode = var("WAN_MODE");
        NetworkSettings {
            wan_mode: if mode.is_empty() { WanMode::Dhcp.as_str().into() } else { mode },
            wan_address: var("WAN_ADDRESS"),
            wan_gateway: var("WAN_GATEWAY"),
            wan_dns: crate::split_servers(&var("WAN_DNS")),
            lan_address: var("LAN_ADDRESS"),
        }
    }

    /// The WAN mode, if it is a known one.
    pub fn mode(&self) -> Option<WanMode> {
        WanMode::parse(&self.wan_mode)
    }

    /// Checks every value; every error, not only the first. Static
    /// addresses are checked in DHCP mode too (they stay in the file).
    pub fn check(&self) -> Result<(), Vec<SystemError>> {
        let mut errors = Vec::new();
        let mode = self.mode();
        if mode.is_none() {
            errors.push(error("WAN_MODE", "dhcp or static"));
        }
        let wan = match self.wan_address.as_str() {
            "" if mode == Some(WanMode::Static) => {
                errors.push(error("WAN_ADDRESS", "a static WAN needs an address/prefix"));
                None
            }
            "" => None,
            text => interface_address(text).map_err(|e| errors.push(error("WAN_ADDRESS", e))).ok(),
        };
        if !self.wan_gateway.is_empty() {
            match self.wan_gateway.parse::<Ipv4Addr>() {
                Err(_) => errors.push(error("WAN_GATEWAY", format!("{:?} is not an IPv4 address", self.wan_gateway))),
                Ok(gw) => {
                    if let Some(net) = wan {
                        let edge = net.prefix_len() < 31 && (gw == net.network() || gw == net.broadcast());
                        if !net.contains(&gw) || edge {
                            errors.push(error(
                                "WAN_GATEWAY",
                                format!("{gw} is not a host of the WAN network {}", net.trunc()),
                            ));
                        } else if gw == net.addr() {
                            errors.push(error("WAN_GATEWAY", "the gateway is the box's own address"));
                        }
                    }
                }
            }
        }
        if self.wan_dns.len() > MAX_DNS_SERVERS {
            errors.push(error("WAN_DNS", format!("at most {MAX_DNS_SERVERS} servers")));
        }
        for dns in &self.wan_dns {
            match dns.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => {}
                _ => errors.push(error("WAN_DNS", format!("{dns:?} is not a server's IP address"))),
            }
        }
        if !self.lan_address.is_empty() {
            match interface_address(&self.lan_address) {
                Err(e) => errors.push(error("LAN_ADDRESS", e)),
                Ok(lan) => {
                    if let Some(wan) = wan.filter(|_| mode == Some(WanMode::Static)) {
                        if wan.contains(&lan.network()) || lan.contains(&wan.network()) {
                            errors.push(error(
                                "LAN_ADDRESS",
                                format!("{} overlaps the WAN network {}", lan.trunc(), wan.trunc()),
                            ));
                        }
                    }
                }
            }
        }
        none_or_all(errors)
    }

    /// `text` (the current file) with these settings written in, after
    /// [`check`](Self::check); comments, `WAN_IF`, `LAN_IF` and other lines
    /// are kept.
    pub fn apply_to(&self, text: &str) -> Result<String, Vec<SystemError>> {
        self.check()?;
        let mut text = text.to_string();
        for (key, value) in [
            ("WAN_MODE", self.wan_mode.clone()),
            ("WAN_ADDRESS", self.wan_address.clone()),
            ("WAN_GATEWAY", self.wan_gateway.clone()),
            ("WAN_DNS", self.wan_dns.join(" ")),
            ("LAN_ADDRESS", self.lan_address.clone()),
        ] {
            text = set_shell_var(&text, key, &value);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "# Network settings.\nWAN_MODE=dhcp\nLAN_ADDRESS=\n";

    fn static_wan() -> NetworkSettings {
        NetworkSettings {
            wan_mode: "static".into(),
            wan_address: "10.0.2.15/24".into(),
            wan_gateway: "10.0.2.2".into(),
            wan_dns: vec!["10.0.2.3".into(), "2001:db8::53".into()],
            lan_address: "192.168.50.1/24".into(),
        }
    }

    fn keys(s: &NetworkSettings) -> Vec<&'static str> {
        s.check().err().unwrap_or_default().iter().map(|e| e.key).collect()
    }

    #[test]
    fn reads_the_shipped_file_and_writes_back_what_it_reads() {
        let s = NetworkSettings::parse(SHIPPED);
        assert_eq!(s.mode(), Some(WanMode::Dhcp));
        assert_eq!((s.wan_address.as_str(), s.lan_address.as_str()), ("", ""));
        assert_eq!(NetworkSettings::parse("").mode(), Some(WanMode::Dhcp), "init's default");
        let text = static_wan().apply_to(&format!("{SHIPPED}WAN_IF=enp1s0\n")).unwrap();
        assert_eq!(
            text,
            "# Network settings.\nWAN_MODE=\"static\"\nLAN_ADDRESS=\"192.168.50.1/24\"\nWAN_IF=enp1s0\n\
             WAN_ADDRESS=\"10.0.2.15/24\"\nWAN_GATEWAY=\"10.0.2.2\"\nWAN_DNS=\"10.0.2.3 2001:db8::53\"\n"
        );
        assert_eq!(NetworkSettings::parse(&text), static_wan());
        assert_eq!(shell_var(&text, "WAN_IF").as_deref(), Some("enp1s0"));
    }

    #[test]
    fn dhcp_needs_nothing_else_and_static_needs_an_address() {
        let dhcp = NetworkSettings { wan_mode: "dhcp".into(), ..Default::default() };
        assert_eq!(dhcp.check(), Ok(()));
        let bare = NetworkSettings { wan_mode: "static".into(), ..Default::default() };
        assert_eq!(keys(&bare), ["WAN_ADDRESS"]);
        assert_eq!(keys(&NetworkSettings { wan_mode: "pppoe".into(), ..Default::default() }), ["WAN_MODE"]);
    }

    #[test]
    fn addresses_that_would_cut_the_box_off_are_refused() {
        let with = |f: &dyn Fn(&mut NetworkSettings)| {
            let mut s = static_wan();
            f(&mut s);
            keys(&s)
        };
        assert_eq!(with(&|_| {}), Vec::<&str>::new());
        for bad in [
            "10.0.2.0/24",
            "10.0.2.255/24",
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.15/0",
            "127.0.0.1/8",
            "224.0.0.1/4",
            "0.0.0.0/8",
            "169.254.1.1/16",
            "fe80::1/64",
            "10.0.2.15/24;reboot",
        ] {
            assert_eq!(with(&|s| s.wan_address = bad.into()), ["WAN_ADDRESS"], "{bad}");
        }
        assert_eq!(
            with(&|s| s.wan_address = "198.51.100.7/31".into()),
            ["WAN_GATEWAY"],
            "/31 is fine, the gateway is not in it"
        );
        for bad in ["10.0.3.1", "10.0.2.0", "10.0.2.255", "10.0.2.15", "gw", "$(reboot)"] {
            assert_eq!(with(&|s| s.wan_gateway = bad.into()), ["WAN_GATEWAY"], "{bad}");
        }
        assert_eq!(with(&|s| s.wan_gateway = String::new()), Vec::<&str>::new(), "no default route is allowed");
        for bad in ["10.0.2.1/25", "10.0.0.1/16", "x"] {
            assert_eq!(with(&|s| s.lan_address = bad.into()), ["LAN_ADDRESS"], "{bad}");
        }
        for bad in ["dns.example", "0.0.0.0", "`id`"] {
            assert_eq!(with(&|s| s.wan_dns = vec![bad.into()]), ["WAN_DNS"], "{bad}");
        }
        assert_eq!(with(&|s| s.wan_dns = vec!["10.0.2.3".into(); 4]), ["WAN_DNS"]);
        // In DHCP mode the static address stays in the file and is checked,
        // but the LAN may then share its network (DHCP decides the WAN).
        let mut s = static_wan();
        s.wan_mode = "dhcp".into();
        s.lan_address = "10.0.2.1/24".into();
        assert_eq!(keys(&s), Vec::<&str>::new());
        s.wan_address = "10.0.2.0/24".into();
        assert_eq!(keys(&s), ["WAN_ADDRESS"]);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let s = NetworkSettings {
            wan_mode: "static".into(),
            wan_address: "nope".into(),
            wan_gateway: "nope".into(),
            wan_dns: vec!["nope".into()],
            lan_address: "nope".into(),
        };
        assert_eq!(keys(&s), ["WAN_ADDRESS", "WAN_GATEWAY", "WAN_DNS", "LAN_ADDRESS"]);
        assert!(s.apply_to(SHIPPED).is_err());
    }
}
