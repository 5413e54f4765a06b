//! Typed values and the parsers that make them from option text. Every
//! parser returns a sentence for the error message; the caller adds file,
//! line, section and option.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::passport::Passport;

/// Why a value was rejected (the text of the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl From<String> for ValueError {
    fn from(s: String) -> Self {
        ValueError(s)
    }
}

impl From<&str> for ValueError {
    fn from(s: &str) -> Self {
        ValueError(s.to_string())
    }
}

pub(crate) type Parsed<T> = Result<T, ValueError>;

fn err<T>(reason: impl Into<String>) -> Parsed<T> {
    Err(ValueError(reason.into()))
}

/// `None` for the values MediaProxy uses to say "not set": empty or `None`.
pub(crate) fn unset(v: &str) -> bool {
    v.is_empty() || v.eq_ignore_ascii_case("none")
}

/// Items separated by commas and/or blanks (MediaProxy's lists accept both).
pub(crate) fn list_items(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty())
}

pub(crate) fn boolean(v: &str) -> Parsed<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => err(format!("expected yes/no, true/false, on/off or 1/0, got {v:?}")),
    }
}

fn whole_number(v: &str) -> Parsed<u64> {
    if v.is_empty() {
        return err("a value is required");
    }
    if v.starts_with('-') {
        return err(format!("must not be negative (got {v})"));
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        if v.parse::<f64>().is_ok() {
            return err(format!("expected a whole number, got {v}"));
        }
        return err(format!("expected a number, got {v:?}"));
    }
    v.parse::<u64>().map_err(|_| ValueError(format!("{v} is too large")))
}

/// Whole seconds (MediaProxy reads these as Python `int`), at least `min`.
pub(crate) fn seconds(v: &str, min: u64) -> Parsed<Duration> {
    let n = whole_number(v).map_err(|e| ValueError(format!("{} (seconds)", e.0)))?;
    if n < min {
        return err(format!("must be at least {min} second{} (got {n})", if min == 1 { "" } else { "s" }));
    }
    if n > 10 * 365 * 86400 {
        return err(format!("{n} seconds is more than ten years"));
    }
    Ok(Duration::from_secs(n))
}

/// Seconds with an optional fraction (`0.5`), within `min..=max`. Only for
/// relaybox's own options; MediaProxy's take whole seconds.
pub(crate) fn fractional_seconds(v: &str, min: Duration, max: Duration) -> Parsed<Duration> {
    let valid = !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v.bytes().filter(|&b| b == b'.').count() <= 1
        && v.bytes().any(|b| b.is_ascii_digit());
    if !valid {
        return err(format!("expected seconds such as 0.5 or 2, got {v:?}"));
    }
    let secs: f64 = v.parse().map_err(|_| ValueError(format!("expected seconds, got {v:?}")))?;
    if secs > max.as_secs_f64() || secs < min.as_secs_f64() {
        return err(format!("must be between {} and {} seconds (got {v})", min.as_secs_f64(), max.as_secs_f64()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A count within `min..=max`.
pub(crate) fn count(v: &str, min: u64, max: u64) -> Parsed<u64> {
    let n = whole_number(v)?;
    if n < min || n > max {
        return err(format!("must be between {min} and {max} (got {n})"));
    }
    Ok(n)
}

pub(crate) fn ip_addr(v: &str) -> Parsed<IpAddr> {
    let bare = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
    bare.parse::<IpAddr>().map_err(|_| ValueError(format!("expected an IP address, got {v:?}")))
}

/// An address that can be put in SDP or used as a host address.
pub(crate) fn unicast_ip(v: &str) -> Parsed<IpAddr> {
    let ip = ip_addr(v)?;
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return err(format!("{ip} is not a unicast address"));
    }
    Ok(ip)
}

/// A path; relative ones are taken from `base`.
pub(crate) fn path(v: &str, base: &Path) -> Parsed<PathBuf> {
    if v.is_empty() {
        return err("a path is required");
    }
    if v.contains('\n') {
        return err("a path must fit on one line");
    }
    let p = Path::new(v);
    Ok(if p.is_absolute() { p.to_path_buf() } else { base.join(p) })
}

/// An SQL table or column name. Restricted to what needs no quoting so that
/// the accounting code can put it in SQL as it is.
pub(crate) fn sql_identifier(v: &str) -> Parsed<String> {
    let mut chars = v.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || v.len() > 64 {
        return err(format!(
            "expected an SQL name of letters, digits and `_` (at most 64, not starting with a digit), got {v:?}"
        ));
    }
    Ok(v.to_string())
}

pub(crate) fn passport(v: &str) -> Parsed<Option<Passport>> {
    if unset(v) {
        return Ok(None);
    }
    Passport::parse(v).map(Some).map_err(|e| ValueError(format!("{e} (write None for no passport)")))
}

fn check_port(p: &str, what: &str) -> Parsed<u16> {
    match p.parse::<u16>() {
        Ok(0) => err(format!("{what} port must be between 1 and 65535 (got 0)")),
        Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => err(format!("{what} port must be a number between 1 and 65535 (got {p:?})")),
    }
}

/// `[v6]` or `[v6]:port`; `rest` is `v` after the `[`.
fn bracketed(v: &str, rest: &str, default_port: u16, what: &str) -> Parsed<(Ipv6Addr, u16)> {
    let Some((addr, after)) = rest.split_once(']') else {
        return err(format!("{v:?} has no closing `]`"));
    };
    let ip: Ipv6Addr = addr.parse().map_err(|_| ValueError(format!("{addr:?} is not an IPv6 address")))?;
    let port = match after {
        "" => default_port,
        _ => match after.strip_prefix(':') {
            Some(p) => check_port(p, what)?,
            None => return err(format!("unexpected {after:?} after `]` in {v:?}")),
        },
    };
    Ok((ip, port))
}

pub(crate) fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let labels_ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // "1.2.3.999" is a mistyped address, not a name.
    let all_numeric = h.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !all_numeric
}

/// A dispatcher to connect to: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The address, when `host` is an IP literal rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6
    /// address takes `default_port`.
    pub fn parse_with_default(v: &str, default_port: u16) -> Result<HostPort, ValueError> {
        if let Some(rest) = v.strip_prefix('[') {
            let (ip, port) = bracketed(v, rest, default_port, "dispatcher")?;
            return Ok(HostPort { host: ip.to_string(), port });
        }
        if let Ok(ip) = v.parse::<Ipv6Addr>() {
            return Ok(HostPort { host: ip.to_string(), port: default_port });
        }
        let (host, port) = match v.rsplit_once(':') {
            Some((h, p)) => (h, check_port(p, "dispatcher")?),
            None => (v, default_port),
        };
        if host.contains(':') {
            return err(format!("{v:?}: write an IPv6 address with a port as [address]:port"));
        }
        if host.parse::<Ipv4Addr>().is_err() && !is_hostname(host) {
            return err(format!("{host:?} is neither an IP address nor a host name"));
        }
        Ok(HostPort { host: host.to_string(), port })
    }
}

impl FromStr for HostPort {
    type Err = ValueError;
    /// Like [`HostPort::parse_with_default`] with MediaProxy's port 25060.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPort::parse_with_default(s, crate::DEFAULT_DISPATCHER_PORT)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn dispatchers(v: &str) -> Parsed<Vec<HostPort>> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out: Vec<HostPort> = Vec::new();
    for item in list_items(v) {
        let hp: HostPort = item.parse()?;
        if out.contains(&hp) {
            return err(format!("dispatcher {hp} is listed twice"));
        }
        out.push(hp);
    }
    Ok(out)
}

/// A listening address: `ip[:port]`, `any[:port]`, `:port`, `[v6]:port`;
/// the port defaults to `default_port`. Host names are not resolved.
pub(crate) fn listen_addr(v: &str, default_port: u16) -> Parsed<SocketAddr> {
    let (ip, port) = if let Some(rest) = v.strip_prefix('[') {
        let (ip, port) = bracketed(v, rest, default_port, "listening")?;
        (IpAddr::V6(ip), port)
    } else if let Ok(ip) = v.parse::<IpAddr>() {
        (ip, default_port)
    } else {
        let (host, port) = match v.rsplit_once(':') {
            Some((h, p)) => (h, check_port(p, "listening")?),
            None => (v, default_port),
        };
        let ip = if host.is_empty() || host.eq_ignore_ascii_case("any") {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse::<IpAddr>().map_err(|_| {
                ValueError(format!("expected ip[:port] or any[:port], got {v:?} (host names are not resolved)"))
            })?
        };
        (ip, port)
    };
    if ip.is_multicast() {
        return err(format!("cannot listen on multicast address {ip}"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// The relay's UDP port range, `start:end` as in MediaProxy: both even,
/// `start < end`, `start >= 1024`. As in MediaProxy `end` is exclusive: the
/// RTP ports are `start, start+2, ..., end-2`, each with its odd RTCP
/// neighbour, so `40000:60000` uses ports 40000 to 59999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// The even (RTP) port of every pair in the range, lowest first.
    pub fn rtp_ports(&self) -> impl Iterator<Item = u16> {
        (self.start..self.end).step_by(2)
    }

    /// How many RTP/RTCP port pairs the range holds.
    pub fn pair_count(&self) -> usize {
        usize::from(self.end - self.start) / 2
    }

    /// Whether `port` (RTP or RTCP) belongs to the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..self.end).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = ValueError;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        let Some((a, b)) = v.split_once(':') else {
            return err(format!("expected start:end such as 40000:60000, got {v:?}"));
        };
        let num = |s: &str, which: &str| -> Parsed<u32> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 6 {
                return err(format!("{which} must be a port number (got {s:?})"));
            }
            Ok(s.parse().expect("digits"))
        };
        let (start, end) = (num(a, "start")?, num(b, "end")?);
        if start % 2 != 0 {
            return err(format!("start must be even (got {start})"));
        }
        if end % 2 != 0 {
            return err(format!("end must be even (got {end})"));
        }
        if start < 1024 {
            return err(format!("start must be at least 1024 (got {start})"));
        }
        if end == 65536 {
            return err("end 65536 (which MediaProxy allows) is not supported; use 65534, which loses one pair");
        }
        if end > 65534 {
            return err(format!("end must be at most 65534 (got {end})"));
        }
        if start >= end {
            return err(format!("start must be below end (got {start}:{end})"));
        }
        Ok(PortRange { start: start as u16, end: end as u16 })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.end)
    }
}

/// MediaProxy's log levels (Python `logging` names, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// A `tracing` filter directive for this level. `tracing` has no level
    /// above ERROR, so CRITICAL maps to `error`.
    pub fn as_tracing_filter(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Critical => "CRITICAL",
        }
    }
}

impl FromStr for LogLevel {
    type Err = ValueError;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        Ok(match v.to_ascii_uppercase().as_str() {
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARNING" | "WARN" => LogLevel::Warning,
            "ERROR" => LogLevel::Error,
            "CRITICAL" => LogLevel::Critical,
            _ => return err(format!("expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {v:?}")),
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A UNIX group, by name or by number (`[Dispatcher] socket_group`). The
/// name is looked up by the daemon when it creates the socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Group {
    Name(String),
    Id(u32),
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Name(n) => f.write_str(n),
            Group::Id(id) => write!(f, "{id}"),
        }
    }
}

/// A group name as `groupadd` takes it (letters, digits, `_`, `-`, `.`,
/// not starting with `-`, at most 32 characters) or a group id.
pub(crate) fn group(v: &str) -> Parsed<Group> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u32>().map(Group::Id).map_err(|_| ValueError(format!("group id {v} is too large")));
    }
    let ok = !v.is_empty()
        && v.len() <= 32
        && !v.starts_with('-')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        return err(format!("expected a group name or id, got {v:?}"));
    }
    Ok(Group::Name(v.to_string()))
}

/// Permission bits written in octal, as chmod takes them (`0660`, `660`),
/// at most `0777`.
pub(crate) fn file_mode(v: &str) -> Parsed<u32> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => err(format!("expected permission bits in octal from 0 to 0777 (e.g. 0660), got {v:?}")),
    }
}

/// Where the dispatcher writes the record of a finished session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountingBackend {
    /// `database`: the `[Database]` section.
    Database,
    /// `radius`: the `[Radius]` section.
    Radius,
}

impl AccountingBackend {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountingBackend::Database => "database",
            AccountingBackend::Radius => "radius",
        }
    }
}

impl FromStr for AccountingBackend {
    type Err = ValueError;
    fn from_str(v: &str) -> Result<Self, Self::Err> {
        match v.to_ascii_lowercase().as_str() {
            "database" => Ok(AccountingBackend::Database),
            "radius" => Ok(AccountingBackend::Radius),
            _ => err(format!("unknown accounting backend {v:?}; the backends are database and radius")),
        }
    }
}

impl fmt::Display for AccountingBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn accounting(v: &str) -> Parsed<Vec<AccountingBackend>> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in list_items(v) {
        let backend: AccountingBackend = item.parse()?;
        // MediaProxy keeps a set: naming a backend twice is harmless.
        if !out.contains(&backend) {
            out.push(backend);
        }
    }
    Ok(out)
}

/// MediaProxy's network range list: `10.0.0.0/8, 192.168.1.7` (a bare
/// address is one host); `any` is every address, `none` or empty is none.
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as MediaProxy masks.
pub(crate) fn networks(v: &str) -> Parsed<Vec<IpNet>> {
    if unset(v) {
        return Ok(Vec::new());
    }
    let mut out: Vec<IpNet> = Vec::new();
    for item in list_items(v) {
        let nets: Vec<IpNet> = if item.eq_ignore_ascii_case("any") {
            vec![
                IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("/0"),
                IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).expect("/0"),
            ]
        } else if let Ok(net) = item.parse::<IpNet>() {
            vec![net.trunc()]
        } else if let Ok(ip) = item.parse::<IpAddr>() {
            vec![IpNet::from(ip)]
        } else {
            return err(format!("{item:?} is not an address or a network such as 10.0.0.0/8"));
        };
        for net in nets {
            if !out.contains(&net) {
                out.push(net);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        for t in ["yes", "YES", "true", "On", "1"] {
            assert_eq!(boolean(t), Ok(true), "{t}");
        }
        for f in ["no", "False", "off", "0"] {
            assert_eq!(boolean(f), Ok(false), "{f}");
        }
        assert!(boolean("maybe").is_err());
        assert!(boolean("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(seconds("90", 1), Ok(Duration::from_secs(90)));
        assert_eq!(seconds("0", 0), Ok(Duration::ZERO));
        assert_eq!(seconds("0", 1).unwrap_err().0, "must be at least 1 second (got 0)");
        assert_eq!(seconds("1.5", 1).unwrap_err().0, "expected a whole number, got 1.5 (seconds)");
        assert_eq!(seconds("-3", 0).unwrap_err().0, "must not be negative (got -3) (seconds)");
        assert!(seconds("ninety", 0).is_err());
        assert!(seconds("99999999999999999999999", 0).is_err());
        let ms = |n| Duration::from_millis(n);
        assert_eq!(fractional_seconds("0.5", ms(1), ms(60_000)), Ok(ms(500)));
        assert_eq!(fractional_seconds("2", ms(1), ms(60_000)), Ok(ms(2000)));
        assert!(fractional_seconds("0", ms(1), ms(60_000)).is_err());
        assert!(fractional_seconds("1e3", ms(1), ms(60_000)).is_err());
        assert!(fractional_seconds("NaN", ms(1), ms(60_000)).is_err());
        assert!(fractional_seconds(".", ms(1), ms(60_000)).is_err());
    }

    #[test]
    fn host_ports() {
        let hp = |s: &str| s.parse::<HostPort>();
        assert_eq!(hp("example.com").unwrap().to_string(), "example.com:25060");
        assert_eq!(hp("1.2.3.4:12345").unwrap(), HostPort { host: "1.2.3.4".into(), port: 12345 });
        assert_eq!(hp("[::1]").unwrap().to_string(), "[::1]:25060");
        assert_eq!(hp("[2001:db8::1]:4000").unwrap().to_string(), "[2001:db8::1]:4000");
        assert_eq!(hp("2001:db8::1").unwrap().port, 25060);
        assert_eq!(hp("1.2.3.4").unwrap().ip(), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(hp("relay-1.example.com.").unwrap().ip(), None);
        assert!(hp("example.com:0").is_err());
        assert!(hp("example.com:70000").is_err());
        assert!(hp("example.com:").is_err());
        assert!(hp("1.2.3.999").is_err());
        assert!(hp("bad_host!").is_err());
        assert!(hp("-bad.example").is_err());
        assert!(hp("[::1]x").is_err());
    }

    #[test]
    fn dispatcher_lists() {
        let d = dispatchers("example.com 1.2.3.4:12345,[::1]:1 ,  other.example").unwrap();
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["example.com:25060", "1.2.3.4:12345", "[::1]:1", "other.example:25060"]);
        assert_eq!(dispatchers(""), Ok(vec![]));
        assert_eq!(dispatchers("None"), Ok(vec![]));
        assert!(dispatchers("a.example a.example:25060").unwrap_err().0.contains("twice"));
    }

    #[test]
    fn groups_and_modes() {
        assert_eq!(group("relaybox"), Ok(Group::Name("relaybox".into())));
        assert_eq!(group("kamailio-users.1"), Ok(Group::Name("kamailio-users.1".into())));
        assert_eq!(group("115"), Ok(Group::Id(115)));
        for bad in ["", "-x", "a b", "a:b", "99999999999", &"g".repeat(33)] {
            assert!(group(bad).is_err(), "{bad:?}");
        }
        assert_eq!(file_mode("0660"), Ok(0o660));
        assert_eq!(file_mode("666"), Ok(0o666));
        assert_eq!(file_mode("0o600"), Ok(0o600));
        for bad in ["", "0888", "1777", "rw-rw----", "0x1b6"] {
            assert!(file_mode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listen_addresses() {
        let l = |s: &str| listen_addr(s, 25060).map(|a| a.to_string());
        assert_eq!(l("0.0.0.0").unwrap(), "0.0.0.0:25060");
        assert_eq!(l("any").unwrap(), "0.0.0.0:25060");
        assert_eq!(l("").unwrap(), "0.0.0.0:25060");
        assert_eq!(l("ANY:4000").unwrap(), "0.0.0.0:4000");
        assert_eq!(l(":4000").unwrap(), "0.0.0.0:4000");
        assert_eq!(l("10.0.0.1:4000").unwrap(), "10.0.0.1:4000");
        assert_eq!(l("::").unwrap(), "[::]:25060");
        assert_eq!(l("[::1]:4000").unwrap(), "[::1]:4000");
        assert!(l("localhost").unwrap_err().0.contains("not resolved"));
        assert!(l("10.0.0.1:0").is_err());
        assert!(l("224.0.0.1").is_err());
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "40000:60000".parse().unwrap();
        assert_eq!(r, PortRange { start: 40000, end: 60000 });
        assert_eq!(r.pair_count(), 10000);
        assert_eq!(r.rtp_ports().last(), Some(59998));
        assert!(r.contains(59999) && !r.contains(60000) && r.contains(40000) && !r.contains(39999));
        assert_eq!(" 1024 : 1026 ".parse::<PortRange>().unwrap().pair_count(), 1);
        let e = |s: &str| s.parse::<PortRange>().unwrap_err().0;
        assert_eq!(e("40001:60000"), "start must be even (got 40001)");
        assert_eq!(e("40000:60001"), "end must be even (got 60001)");
        assert_eq!(e("1000:2000"), "start must be at least 1024 (got 1000)");
        assert_eq!(e("50000:40000"), "start must be below end (got 50000:40000)");
        assert_eq!(e("40000:40000"), "start must be below end (got 40000:40000)");
        assert!(e("40000:65536").contains("65534"));
        assert!(e("40000:70000").contains("at most 65534"));
        assert!(e("40000").contains("start:end"));
        assert!(e("a:b").contains("port number"));
    }

    #[test]
    fn log_levels() {
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert_eq!("Warning".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert_eq!("CRITICAL".parse::<LogLevel>().unwrap().as_tracing_filter(), "error");
        assert!("verbose".parse::<LogLevel>().is_err());
        assert_eq!(LogLevel::Info.to_string(), "INFO");
    }

    #[test]
    fn accounting_lists() {
        use AccountingBackend::*;
        assert_eq!(accounting(""), Ok(vec![]));
        assert_eq!(accounting("None"), Ok(vec![]));
        assert_eq!(accounting("radius, database"), Ok(vec![Radius, Database]));
        assert_eq!(accounting("Database database"), Ok(vec![Database]));
        assert!(accounting("database, mysql").unwrap_err().0.contains("\"mysql\""));
    }

    #[test]
    fn network_lists() {
        let n = |s: &str| networks(s).map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(n("").unwrap(), Vec::<String>::new());
        assert_eq!(n("none").unwrap(), Vec::<String>::new());
        assert_eq!(
            n("10.0.0.0/8, 192.168.1.7 100.65.3.4/10,fd00::/8").unwrap(),
            ["10.0.0.0/8", "192.168.1.7/32", "100.64.0.0/10", "fd00::/8"]
        );
        assert_eq!(n("any").unwrap(), ["0.0.0.0/0", "::/0"]);
        assert!(n("10.0.0.0/33").is_err());
        assert!(n("intranet.example").is_err());
    }

    #[test]
    fn misc() {
        assert!(unset("") && unset("None") && unset("NONE") && !unset("x"));
        assert_eq!(sql_identifier("media_sessions"), Ok("media_sessions".into()));
        assert!(sql_identifier("media-sessions").is_err());
        assert!(sql_identifier("1abc").is_err());
        assert!(sql_identifier("x; DROP TABLE y").is_err());
        assert_eq!(path("tls", Path::new("/etc/relaybox")), Ok(PathBuf::from("/etc/relaybox/tls")));
        assert_eq!(path("/srv/tls", Path::new("/etc/relaybox")), Ok(PathBuf::from("/srv/tls")));
        assert!(path("", Path::new("/")).is_err());
        assert_eq!(count("16", 1, 128), Ok(16));
        assert_eq!(count("0", 1, 128).unwrap_err().0, "must be between 1 and 128 (got 0)");
        assert!(unicast_ip("224.0.0.1").is_err());
        assert!(unicast_ip("255.255.255.255").is_err());
        assert_eq!(unicast_ip("[::1]"), Ok("::1".parse().unwrap()));
        assert!(passport("None").unwrap().is_none());
        assert!(passport("").unwrap().is_none());
        assert!(passport("CN:*relay").unwrap().is_some());
        assert!(passport("XX:y").unwrap_err().0.contains("write None"));
    }
}
