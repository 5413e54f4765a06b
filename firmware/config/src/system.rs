//! The box's `system.conf`: `KEY=VALUE` lines that the image's init
//! sources as shell (`HOSTNAME`, `NTP_SERVERS`). Read here for
//! `relaybox clock --servers-from` and the web page, and written by the web
//! page: a value is checked against a strict character set before it is
//! stored, so that sourcing the file can never run anything.

use std::fmt;

/// The settings of `system.conf` relaybox reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemSettings {
    pub hostname: String,
    /// `host` or `host:port` (IPv6 as `[addr]:port` or bare), in order.
    pub ntp_servers: Vec<String>,
    /// Remote syslog, `host` or `host:port` (UDP 514 by default); empty:
    /// none (`SYSLOG_HOST`).
    pub syslog_host: String,
}

/// A value that may not go into `system.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemError {
    pub key: &'static str,
    pub reason: String,
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// At most this many NTP servers.
pub const MAX_NTP_SERVERS: usize = 8;

/// The value of `key` in shell-style `text` (the last assignment wins, as
/// in the shell; one level of single or double quotes is removed). `None`
/// when it is not assigned.
pub fn shell_var(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        let Some(value) = line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')) else { continue };
        let unquoted =
            ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(value);
        found = Some(unquoted.to_string());
    }
    found
}

/// `text` with `key` set to `value` (double-quoted): the first assignment
/// is replaced in place, later ones removed, or a line is added at the end.
/// Comments and other lines are kept. `value` must already be checked.
pub fn set_shell_var(text: &str, key: &str, value: &str) -> String {
    let assignment = format!("{key}=\"{value}\"");
    let mut out = String::with_capacity(text.len() + assignment.len() + 1);
    let mut done = false;
    for line in text.lines() {
        let assigns = line.trim().strip_prefix(key).is_some_and(|rest| rest.starts_with('='));
        if assigns {
            if !done {
                out.push_str(&assignment);
                out.push('\n');
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str(&assignment);
        out.push('\n');
    }
    out
}

impl SystemSettings {
    /// The settings in `text` (missing ones empty).
    pub fn parse(text: &str) -> SystemSettings {
        SystemSettings {
            hostname: shell_var(text, "HOSTNAME").unwrap_or_default(),
            ntp_servers: split_servers(&shell_var(text, "NTP_SERVERS").unwrap_or_default()),
            syslog_host: shell_var(text, "SYSLOG_HOST").unwrap_or_default(),
        }
    }

    /// Checks both values; every error, not only the first.
    pub fn check(&self) -> Result<(), Vec<SystemError>> {
        let mut errors = Vec::new();
        if let Err(reason) = check_hostname(&self.hostname) {
            errors.push(SystemError { key: "HOSTNAME", reason });
        }
        if self.ntp_servers.len() > MAX_NTP_SERVERS {
            errors.push(SystemError { key: "NTP_SERVERS", reason: format!("at most {MAX_NTP_SERVERS} servers") });
        }
        for server in &self.ntp_servers {
            if let Err(reason) = ntp_server_target(server) {
                errors.push(SystemError { key: "NTP_SERVERS", reason: format!("{server:?}: {reason}") });
            }
        }
        if !self.syslog_host.is_empty() {
            if let Err(reason) = server_target(&self.syslog_host, SYSLOG_PORT) {
                errors.push(SystemError { key: "SYSLOG_HOST", reason: format!("{:?}: {reason}", self.syslog_host) });
            }
        }
        none_or_all(errors)
    }

    /// `text` (the current file) with these settings written in, after
    /// [`check`](Self::check).
    pub fn apply_to(&self, text: &str) -> Result<String, Vec<SystemError>> {
        self.check()?;
        let text = set_shell_var(text, "HOSTNAME", &self.hostname);
        let text = set_shell_var(&text, "NTP_SERVERS", &self.ntp_servers.join(" "));
        // Written when set, or when the file has it (to clear it).
        if self.syslog_host.is_empty() && shell_var(&text, "SYSLOG_HOST").is_none() {
            return Ok(text);
        }
        Ok(set_shell_var(&text, "SYSLOG_HOST", &self.syslog_host))
    }
}

/// `Ok` when there are no errors, else all of them.
pub(crate) fn none_or_all(errors: Vec<SystemError>) -> Result<(), Vec<SystemError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Servers separated by spaces or commas.
pub fn split_servers(value: &str) -> Vec<String> {
    value.split([' ', ',', '\t']).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// RFC 1123 host name: labels of 1-63 letters, digits and hyphens, not
/// starting or ending with a hyphen; 253 characters at most.
fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a host name is needed".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part must have 1 to 63 characters".into());
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only letters, digits, hyphens and dots".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part may not start or end with a hyphen".into());
        }
    }
    Ok(())
}

/// The port of an NTP server named without one.
pub const NTP_PORT: u16 = 123;
/// The port of a remote syslog host named without one.
pub const SYSLOG_PORT: u16 = 514;

/// An NTP server (`host`, `host:port`, an IP address, `[IPv6]` or
/// `[IPv6]:port`) as a name resolver takes it: `host:port` or
/// `[IPv6]:port`, port [`NTP_PORT`] when none is given. Anything else is an
/// error saying why.
pub fn ntp_server_target(server: &str) -> Result<String, String> {
    server_target(server, NTP_PORT)
}

/// A server named `host`, `host:port`, an IP address, `[IPv6]` or
/// `[IPv6]:port`, as a resolver takes it, `default_port` when it has none.
pub fn server_target(server: &str, default_port: u16) -> Result<String, String> {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    if let Some(rest) = server.strip_prefix('[') {
        let (addr, port) = rest.split_once(']').ok_or("an opening [ without ]")?;
        let ip: Ipv6Addr = addr.parse().map_err(|_| "not an IPv6 address in [...]".to_string())?;
        let port = match port {
            "" => default_port,
            p => parse_port(p.strip_prefix(':').ok_or("expected :port after ]")?)?,
        };
        return Ok(SocketAddr::new(ip.into(), port).to_string());
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port).to_string());
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => (h, parse_port(p)?),
        None => (server, default_port),
    };
    check_hostname(host).map_err(|e| format!("not a host name ({e})"))?;
    Ok(format!("{host}:{port}"))
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port:?} is not 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "# Box-wide settings.\nHOSTNAME=relaybox\n# NTP servers\nNTP_SERVERS=\"0.debian.pool.ntp.org 1.debian.pool.ntp.org\"\n";

    #[test]
    fn reads_the_shipped_file() {
        let s = SystemSettings::parse(SHIPPED);
        assert_eq!(s.hostname, "relaybox");
        assert_eq!(s.ntp_servers, ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"]);
        assert_eq!(shell_var("A='x y'\nA=\"z\"\n", "A").as_deref(), Some("z"), "the last one wins");
        assert_eq!(shell_var("AB=1\n", "A"), None);
        assert_eq!(SystemSettings::parse("NTP_SERVERS=\n").ntp_servers, Vec::<String>::new());
    }

    #[test]
    fn writing_keeps_comments_and_other_lines() {
        let s = SystemSettings {
            hostname: "edge-7.example.net".into(),
            ntp_servers: vec!["10.0.0.1:4123".into()],
            syslog_host: String::new(),
        };
        let text = s.apply_to(&format!("{SHIPPED}EXTRA=1\nHOSTNAME=dup\n")).unwrap();
        assert_eq!(
            text,
            "# Box-wide settings.\nHOSTNAME=\"edge-7.example.net\"\n# NTP servers\nNTP_SERVERS=\"10.0.0.1:4123\"\nEXTRA=1\n"
        );
        assert_eq!(SystemSettings::parse(&text), s);
        // Missing keys are added; no servers is NTP off.
        let off = SystemSettings { hostname: "a".into(), ntp_servers: vec![], syslog_host: String::new() };
        assert_eq!(off.apply_to("").unwrap(), "HOSTNAME=\"a\"\nNTP_SERVERS=\"\"\n");
    }

    #[test]
    fn servers_get_port_123_unless_they_name_one() {
        let target = |s: &str| ntp_server_target(s).unwrap();
        assert_eq!(target("pool.ntp.org"), "pool.ntp.org:123");
        assert_eq!(target("10.0.2.2:12345"), "10.0.2.2:12345");
        assert_eq!(target("192.0.2.1"), "192.0.2.1:123");
        assert_eq!(target("2001:db8::1"), "[2001:db8::1]:123");
        assert_eq!(target("[2001:db8::1]"), "[2001:db8::1]:123");
        assert_eq!(target("[2001:db8::1]:4123"), "[2001:db8::1]:4123");
        assert_eq!(target("ntp.example.com:4123"), "ntp.example.com:4123");
    }

    #[test]
    fn a_remote_syslog_host_is_written_when_set_and_cleared_when_present() {
        let mut s = SystemSettings::parse(SHIPPED);
        assert_eq!(s.apply_to(SHIPPED).unwrap(), SHIPPED.replace("HOSTNAME=relaybox", "HOSTNAME=\"relaybox\""));
        s.syslog_host = "logs.example.net".into();
        let text = s.apply_to(SHIPPED).unwrap();
        assert!(text.ends_with("SYSLOG_HOST=\"logs.example.net\"\n"), "{text}");
        assert_eq!(SystemSettings::parse(&text).syslog_host, "logs.example.net");
        s.syslog_host = String::new();
        assert!(s.apply_to(&text).unwrap().ends_with("SYSLOG_HOST=\"\"\n"));
        assert_eq!(server_target("10.0.0.9", SYSLOG_PORT).unwrap(), "10.0.0.9:514");
        for bad in ["x;reboot", "$(id)", "host:0", "a b"] {
            s.syslog_host = bad.into();
            assert_eq!(s.check().unwrap_err()[0].key, "SYSLOG_HOST", "{bad}");
        }
    }

    #[test]
    fn nothing_the_shell_would_interpret_gets_in() {
        for bad in
            ["relay box", "x;reboot", "$(reboot)", "a\"b", "`id`", "-lead", "trail-", "a..b", "", &"a".repeat(64)]
        {
            let s = SystemSettings { hostname: bad.into(), ..Default::default() };
            let errors = s.apply_to(SHIPPED).unwrap_err();
            assert_eq!(errors[0].key, "HOSTNAME", "{bad:?}");
        }
        for bad in ["pool;reboot", "$(id)", "a\"b", "host:0", "host:70000", "[::1", "[nope]:123", "[::1]123", "h_st"] {
            let s = SystemSettings { hostname: "ok".into(), ntp_servers: vec![bad.into()], ..Default::default() };
            let errors = s.check().unwrap_err();
            assert_eq!(errors[0].key, "NTP_SERVERS", "{bad:?}");
        }
        let many = SystemSettings { hostname: "ok".into(), ntp_servers: vec!["a".into(); 9], ..Default::default() };
        assert!(many.check().is_err());
        let fine = ["pool.ntp.org", "10.0.2.2:12345", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:4123"];
        let s = SystemSettings {
            hostname: "ok".into(),
            ntp_servers: fine.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(s.check(), Ok(()));
    }
}
