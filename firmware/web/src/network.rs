//! The network page: the box's interfaces and addresses, read-only. The
//! interface with the default route is the WAN side, the others the LAN.

use std::collections::BTreeMap;

use axum::extract::State as AxState;
use axum::response::Response;

use crate::app::{html_page, Authed, State};
use crate::html::esc;
use crate::html::page as frame;

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

pub async fn page(AxState(_state): AxState<State>, auth: Authed) -> Response {
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
    let body = format!(
        r#"<section><p class="help">Read-only. The interface with the default route faces the WAN.</p>
<table id="interfaces"><tr><th>Interface</th><th>Side</th><th>State</th><th>Addresses</th><th>MTU</th><th>MAC</th></tr>{rows}</table></section>"#
    );
    html_page(frame("Network", "/network", Some(&auth.csrf), &body))
}
