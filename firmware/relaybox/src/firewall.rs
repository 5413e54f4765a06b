//! `relaybox firewall`: the box's own nftables table (`inet relaybox_fw`,
//! programmed by `relaybox-conntrack::firewall`) from the settings: the
//! relay's `port_range` open on every interface, the web page's ports on
//! the LAN interface only (`[Web] wan_access = yes`: everywhere), a
//! dispatcher's ports everywhere; DHCP answers on the WAN, ICMP, and what
//! the box itself started; everything else dropped.

use relaybox_config::Config;
use relaybox_conntrack::firewall::FirewallSpec;

/// Which of the box's services the rules open.
#[derive(Debug, Clone, clap::Args)]
pub struct FirewallArgs {
    /// The WAN interface.
    #[arg(long)]
    pub wan: String,
    /// The LAN interface (the web page is reachable there).
    #[arg(long)]
    pub lan: Option<String>,
    /// Open the relay's port_range ([Relay]).
    #[arg(long)]
    pub relay: bool,
    /// Open the web page's ports ([Web] listen, http_listen).
    #[arg(long)]
    pub web: bool,
    /// Open the dispatcher's relay and management ports ([Dispatcher]).
    #[arg(long)]
    pub dispatcher: bool,
    /// Delete the table instead (everything is accepted again).
    #[arg(long)]
    pub delete: bool,
    /// Print the rules' inputs and do nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The rules' inputs for `config`.
pub fn spec(config: &Config, args: &FirewallArgs) -> FirewallSpec {
    let mut spec = FirewallSpec {
        wan: args.wan.clone(),
        lan: args.lan.clone().filter(|l| !l.is_empty()),
        udp_ranges: Vec::new(),
        lan_tcp: Vec::new(),
        any_tcp: Vec::new(),
    };
    if args.relay {
        let r = config.relay.port_range;
        spec.udp_ranges.push((r.start, r.end));
    }
    if args.web {
        let w = &config.web;
        let ports = std::iter::once(w.listen.port()).chain(w.http_listen.map(|a| a.port())).filter(|p| *p != 0);
        if w.wan_access {
            spec.any_tcp.extend(ports);
        } else {
            spec.lan_tcp.extend(ports);
        }
    }
    if args.dispatcher {
        let d = &config.dispatcher;
        spec.any_tcp.extend([d.listen.port(), d.listen_management.port()]);
    }
    spec
}

pub fn run(config: &Config, args: &FirewallArgs) -> anyhow::Result<()> {
    if args.delete {
        relaybox_conntrack::firewall::delete()?;
        eprintln!("relaybox firewall: table inet {} deleted", relaybox_conntrack::firewall::TABLE);
        return Ok(());
    }
    let spec = spec(config, args);
    if args.dry_run {
        println!("{spec:#?}");
        return Ok(());
    }
    relaybox_conntrack::firewall::apply(&spec).map_err(|e| anyhow::anyhow!("firewall not applied: {e}"))?;
    let tcp = |v: &[u16]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    eprintln!(
        "relaybox firewall: WAN {} accepts UDP {}, TCP {}; LAN {} also TCP {}; everything else is dropped",
        spec.wan,
        spec.udp_ranges
            .iter()
            .map(|(a, b)| format!("{a}-{}", b - 1))
            .chain(["68 (DHCP)".to_string()])
            .collect::<Vec<_>>()
            .join(","),
        if spec.any_tcp.is_empty() { "none".to_string() } else { tcp(&spec.any_tcp) },
        spec.lan.as_deref().unwrap_or("-"),
        if spec.lan_tcp.is_empty() { "none".to_string() } else { tcp(&spec.lan_tcp) },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FirewallArgs {
        FirewallArgs {
            wan: "eth0".into(),
            lan: Some("eth1".into()),
            relay: true,
            web: true,
            dispatcher: false,
            delete: false,
            dry_run: false,
        }
    }

    #[test]
    fn the_web_page_is_on_the_lan_unless_wan_access_is_on() {
        let base = std::path::Path::new("/config");
        let config = Config::parse("[Relay]\nport_range = 50000:50100\n", "t.ini", base).unwrap();
        let s = spec(&config, &args());
        assert_eq!(s.udp_ranges, [(50000, 50100)]);
        assert_eq!((s.lan_tcp.as_slice(), s.any_tcp.as_slice()), (&[443, 80][..], &[][..]));
        let config = Config::parse("[Web]\nwan_access = yes\nhttp_listen = none\n", "t.ini", base).unwrap();
        let s = spec(&config, &args());
        assert_eq!((s.lan_tcp.as_slice(), s.any_tcp.as_slice()), (&[][..], &[443][..]));
        let s = spec(&config, &FirewallArgs { relay: false, web: false, dispatcher: true, ..args() });
        assert_eq!((s.udp_ranges.len(), s.any_tcp.as_slice()), (0, &[25060, 25061][..]));
    }
}
