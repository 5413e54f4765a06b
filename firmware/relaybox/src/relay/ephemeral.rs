//! Whether the relay's `port_range` overlaps the kernel's ephemeral ports
//! (`net.ipv4.ip_local_port_range`, minus `ip_local_reserved_ports`; both
//! sysctls also govern IPv6). Ports there may be taken by the host's own
//! outgoing sockets (DNS, NTP, RADIUS...): the relay skips a busy pair, but
//! an operator should keep the two ranges apart, so the relay says so at
//! start.

/// `ip_local_reserved_ports`: `a,b-c,...` (empty: none). Unreadable parts
/// are left out.
fn parse_reserved(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// The relay ports in `[start, end)` that the kernel may hand out as
/// ephemeral ports (`ephemeral` inclusive, as the sysctl), as an inclusive
/// range from the first to the last such port; `None` when there is none.
fn overlap(range: (u16, u16), ephemeral: (u16, u16), reserved: &[(u16, u16)]) -> Option<(u16, u16)> {
    let reserved_port = |p: u16| reserved.iter().any(|&(a, b)| a <= p && p <= b);
    let lo = range.0.max(ephemeral.0);
    let hi = range.1.checked_sub(1)?.min(ephemeral.1);
    if lo > hi {
        return None;
    }
    let first = (lo..=hi).find(|&p| !reserved_port(p))?;
    let last = (lo..=hi).rev().find(|&p| !reserved_port(p))?;
    Some((first, last))
}

/// A warning for the start-up log when `range` overlaps this host's (this
/// network namespace's) ephemeral ports.
pub(crate) fn warning(range: (u16, u16)) -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut numbers = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    let ephemeral = (numbers.next()?, numbers.next()?);
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    let (first, last) = overlap(range, ephemeral, &parse_reserved(&reserved))?;
    Some(format!(
        "port_range {}:{} overlaps the kernel's ephemeral ports {}-{} (net.ipv4.ip_local_port_range): the host's own \
         outgoing sockets may take relay ports {first}-{last}; busy pairs are skipped, but keep the ranges apart \
         (move either one, or set net.ipv4.ip_local_reserved_ports={first}-{last})",
        range.0, range.1, ephemeral.0, ephemeral.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_with_the_ephemeral_range_minus_reserved_ports() {
        let linux = (32768, 60999);
        assert_eq!(overlap((40000, 60000), linux, &[]), Some((40000, 59999)));
        assert_eq!(overlap((50000, 62000), linux, &[]), Some((50000, 60999)));
        assert_eq!(overlap((20000, 32768), linux, &[]), None, "end is exclusive");
        assert_eq!(overlap((20000, 32770), linux, &[]), Some((32768, 32769)));
        assert_eq!(overlap((40000, 60000), (20000, 39999), &[]), None, "the image's setting");
        assert_eq!(overlap((40000, 60000), linux, &[(40000, 59999)]), None, "all reserved");
        assert_eq!(overlap((40000, 60000), linux, &[(40000, 49999)]), Some((50000, 59999)));
        assert_eq!(overlap((40000, 40000), linux, &[]), None, "empty range");
        assert_eq!(parse_reserved("40000-49999,50001\n"), [(40000, 49999), (50001, 50001)]);
        assert_eq!(parse_reserved("\n"), []);
        assert_eq!(parse_reserved("x,5-6"), [(5, 6)]);
    }
}
