//! The network page: the box's interfaces and addresses as they are now
//! (the interface with the default route is the WAN side, the others the
//! LAN), and the settings init applies at boot, kept in `network.conf`
//! (`[Web] network_conf`): WAN by DHCP or static (address, gateway, DNS),
//! the LAN address. Checked by `relaybox-config` before anything is
//! written; they take effect at the next boot (the page offers the Reboot
//! button), so a typo cannot cut the page off mid-session.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State as AxState};
use axum::response::{IntoResponse, Redirect, Response};
use relaybox_config::{shell_var, NetworkSettings, MAX_DNS_SERVERS};

use crate::app::State;
use crate::conf_form::{self, errors_by_field, text_field, NOTHING_SAVED};
use crate::extract::{Authed, CheckedForm, Flash};
use crate::html::page as frame;
use crate::html::{csrf_field, esc, form_field, select};
use crate::layout::{html_page, reboot_form};

/// Interfaces that carry a default route (from `/proc/net/route` and
/// `/proc/net/ipv6_route`).
fn default_route_interfaces() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.push(f[0].to_string());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
                out.push(f[9].to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn sys(name: &str, what: &str) -> String {
    if name.contains('/') || name.starts_with('.') {
        return String::new();
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/{what}")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The interfaces table: what the kernel has now.
fn interfaces_table() -> String {
    let wan = default_route_interfaces();
    let mut interfaces: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let prefix = match &iface.addr {
            if_addrs::IfAddr::V4(a) => u32::from(a.netmask).count_ones(),
            if_addrs::IfAddr::V6(a) => u128::from(a.netmask).count_ones(),
        };
        interfaces.entry(iface.name.clone()).or_default().push(format!("{}/{prefix}", iface.ip()));
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for entry in dir.flatten() {
            interfaces.entry(entry.file_name().to_string_lossy().into_owned()).or_default();
        }
    }
    let mut rows = String::new();
    for (name, addrs) in &interfaces {
        let role = if name == "lo" {
            "loopback"
        } else if wan.contains(name) {
            "WAN (default route)"
        } else {
            "LAN"
        };
        rows.push_str(&format!(
            r#"<tr><td class="mono">{}</td><td>{role}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td class="mono">{}</td></tr>"#,
            esc(name),
            esc(&sys(name, "operstate")),
            esc(&addrs.join(", ")),
            esc(&sys(name, "mtu")),
            esc(&sys(name, "address")),
        ));
    }
    format!(
        r#"<section><h2>Now</h2><p class="help">The interface with the default route faces the WAN.</p>
<table id="interfaces"><tr><th>Interface</th><th>Side</th><th>State</th><th>Addresses</th><th>MTU</th><th>MAC</th></tr>{rows}</table></section>"#
    )
}

/// The whole page: `values` in the form, `file` (the current network.conf)
/// for the interface names.
fn network_page(
    state: &State,
    auth: &Authed,
    file: &str,
    values: &NetworkSettings,
    errors: &HashMap<String, String>,
    message: &str,
) -> String {
    let interface = |key: &str, default: &str| {
        shell_var(file, key).filter(|v| !v.is_empty()).unwrap_or_else(|| format!("{default} (board default)"))
    };
    let field = |id: &str, label: &str, value: &str, help: &str| text_field(id, label, value, errors, help);
    let mode = form_field(
        "wan_mode",
        "WAN address",
        &select("wan_mode", &["dhcp", "static"], &values.wan_mode),
        errors.get("wan_mode").map(String::as_str),
        "dhcp: from the WAN's DHCP server. static: the address, gateway and DNS below.",
    );
    let fields = [
        mode,
        field("wan_address", "WAN address/prefix", &values.wan_address, "Static WAN only, e.g. 203.0.113.10/24."),
        field(
            "wan_gateway",
            "WAN gateway",
            &values.wan_gateway,
            "Static WAN only: the router, inside the WAN network. Empty: no default route.",
        ),
        field(
            "wan_dns",
            "DNS servers",
            &values.wan_dns.join(" "),
            &format!("Static WAN only: IP addresses separated by spaces, at most {MAX_DNS_SERVERS}."),
        ),
        field(
            "lan_address",
            "LAN address/prefix",
            &values.lan_address,
            "The box's address on the LAN, e.g. 192.168.1.1/24. Empty: the LAN interface stays down.",
        ),
    ]
    .concat();
    let body = format!(
        r#"{message}{table}<section><h2>At boot</h2><form method="post" action="/network">{csrf}
<p class="help">File: <span class="mono">{path}</span>; other lines and comments in it are kept. WAN interface {wan}, LAN interface {lan}.
The settings take effect at the next boot.</p>
{fields}<button type="submit">Save</button></form></section>"#,
        table = interfaces_table(),
        csrf = csrf_field(&auth.csrf),
        path = esc(&state.web.network_conf.display().to_string()),
        wan = esc(&interface("WAN_IF", "eth0")),
        lan = esc(&interface("LAN_IF", "eth1")),
    );
    frame("Network", "/network", Some(&auth.csrf), &body)
}

pub async fn page(AxState(state): AxState<State>, auth: Authed, Query(f): Query<Flash>) -> Response {
    let file = conf_form::read(&state.web.network_conf);
    let values = NetworkSettings::parse(&file);
    let message = match f.done.as_str() {
        "saved" => format!(
            r#"<p class="ok" id="flash">Saved. The network settings take effect at the next boot.</p>{}"#,
            reboot_form(&auth.csrf)
        ),
        _ => String::new(),
    };
    html_page(network_page(&state, &auth, &file, &values, &HashMap::new(), &message))
}

pub async fn save(AxState(state): AxState<State>, CheckedForm(auth, form): CheckedForm) -> Response {
    let value = |name: &str| form.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let wanted = NetworkSettings {
        wan_mode: value("wan_mode"),
        wan_address: value("wan_address"),
        wan_gateway: value("wan_gateway"),
        wan_dns: relaybox_config::split_servers(&value("wan_dns")),
        lan_address: value("lan_address"),
    };
    let path = &state.web.network_conf;
    let file = conf_form::read(path);
    let text = match wanted.apply_to(&file) {
        Ok(text) => text,
        Err(errors) => {
            return conf_form::refused(network_page(
                &state,
                &auth,
                &file,
                &wanted,
                &errors_by_field(errors),
                NOTHING_SAVED,
            ))
        }
    };
    if let Err(r) = conf_form::write(path, &text) {
        return *r;
    }
    tracing::info!(
        wan_mode = %wanted.wan_mode,
        wan_address = %wanted.wan_address,
        lan_address = %wanted.lan_address,
        "web: saved {}; takes effect at the next boot",
        path.display()
    );
    Redirect::to("/network?done=saved").into_response()
}
