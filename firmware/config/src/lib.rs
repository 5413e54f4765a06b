//! relaybox configuration: MediaProxy's `config.ini` parsed once into typed,
//! validated settings, so that the rest of the program never sees option
//! strings. A MediaProxy 2.x/4.x file loads as it is: every option MediaProxy
//! has is accepted (and stored, whether or not relaybox acts on it yet) with
//! MediaProxy's names and defaults, plus a few relaybox extensions (limits
//! and the state file), each with a default. Anything else — an unknown
//! section or option, an option set twice, a malformed value — is an error
//! that names the file, line, section and option. This crate also owns the
//! TLS *passport* (a pattern over a certificate subject), which is pure data
//! shared by the TLS code. It does no I/O beyond reading the file in
//! [`Config::load`]: no DNS, no checks that paths exist, no logging.
//!
//! `config.ini.sample` next to this crate's `Cargo.toml` documents every
//! option with its default.

#![forbid(unsafe_code)]

mod error;
mod ini;
mod network;
mod passport;
mod settings;
mod system;
mod value;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigWarning};
pub use network::{NetworkSettings, WanMode, MAX_DNS_SERVERS};
pub use passport::{Passport, PassportError, SubjectAttr};
pub use settings::{
    DatabaseConfig, DatapathMode, DispatcherConfig, KnownOption, MiTransport, OpenSipsConfig, ProxyFlavor,
    RadiusConfig, RelayConfig, ThorNetworkConfig, TlsConfig, UpdateConfig, WatchdogConfig, WebConfig, KNOWN_OPTIONS,
    SECTIONS,
};
pub use system::{
    ntp_server_target, server_target, set_shell_var, shell_var, split_servers, SystemError, SystemSettings,
    MAX_NTP_SERVERS, NTP_PORT, SYSLOG_PORT,
};
pub use value::{AccountingBackend, Group, HostPort, LogLevel, PortRange, ValueError};

use settings::{options_of, RENAMED};
use value::Parsed;

/// Where relaybox looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/relaybox/config.ini";
/// MediaProxy's runtime directory: a relative `[Dispatcher] socket_path` is
/// taken from here, where the proxy module expects the socket.
pub const MEDIAPROXY_RUNTIME_DIR: &str = "/var/run/mediaproxy";
/// The relay link's port when `dispatchers` or `listen` names none.
pub const DEFAULT_DISPATCHER_PORT: u16 = 25060;
/// The management interface's port when `listen_management` names none.
pub const DEFAULT_MANAGEMENT_PORT: u16 = 25061;
/// The dispatcher's Prometheus port when `metrics_listen` names none.
pub const DEFAULT_METRICS_PORT: u16 = 9461;

pub(crate) fn default_config_dir() -> PathBuf {
    Path::new(DEFAULT_CONFIG_PATH).parent().expect("absolute default path").to_path_buf()
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub relay: RelayConfig,
    pub dispatcher: DispatcherConfig,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    pub radius: RadiusConfig,
    pub opensips: OpenSipsConfig,
    pub thor_network: ThorNetworkConfig,
    /// relaybox: the box's web page.
    pub web: WebConfig,
    /// relaybox: firmware updates of the box.
    pub update: UpdateConfig,
    /// relaybox: the box's hardware watchdog feeder.
    pub watchdog: WatchdogConfig,
    /// Things the file does that work but deserve a log line at start-up
    /// (old option names, settings relaybox ignores).
    pub warnings: Vec<ConfigWarning>,
}

/// The defaults, with relative paths taken from the directory of
/// [`DEFAULT_CONFIG_PATH`].
impl Default for Config {
    fn default() -> Self {
        Config::defaults_in(&default_config_dir())
    }
}

/// Line on which each (section, option) was set.
type SetAt = HashMap<(&'static str, &'static str), usize>;

impl Config {
    fn defaults_in(base: &Path) -> Self {
        Config {
            relay: RelayConfig::default(),
            dispatcher: DispatcherConfig::default(),
            tls: TlsConfig::defaults_in(base),
            database: DatabaseConfig::default(),
            radius: RadiusConfig::defaults_in(base),
            opensips: OpenSipsConfig::default(),
            thor_network: ThorNetworkConfig::default(),
            web: WebConfig::defaults_in(base),
            update: UpdateConfig::default(),
            watchdog: WatchdogConfig::default(),
            warnings: Vec::new(),
        }
    }

    /// Reads and parses `path`. Relative paths in the file are taken from
    /// the file's directory (except `[Dispatcher] socket_path`, see
    /// [`MEDIAPROXY_RUNTIME_DIR`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| ConfigError::at(&origin, None, format!("cannot read the file: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            ConfigError::at(&origin, Some(line), "the file is not UTF-8 text")
        })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        Config::parse(&text, &origin, &base)
    }

    /// Parses the text of a configuration file. `origin` names it in error
    /// messages; relative paths are taken from `base_dir`.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let sections = ini::parse(text).map_err(|e| {
            let mut error = ConfigError::at(origin, Some(e.line), e.reason);
            error.section = e.section;
            error
        })?;
        let mut config = Config::defaults_in(base_dir);
        let mut set_at = SetAt::new();
        for section in &sections {
            let Some(&name) = SECTIONS.iter().find(|s| **s == section.name) else {
                return Err(ConfigError::at(origin, Some(section.line), unknown_section_reason(&section.name)));
            };
            for entry in &section.entries {
                let located = |reason: String| {
                    ConfigError::at(origin, Some(entry.line), reason).in_section(name).for_option(&entry.name)
                };
                let Some((option, old_name)) = resolve(name, &entry.name) else {
                    return Err(located(unknown_option_reason(name, &entry.name)));
                };
                if let Some(first) = set_at.insert((name, option), entry.line) {
                    return Err(located(match old_name {
                        Some(old) => format!("`{old}` is the old name of `{option}`, already set at line {first}"),
                        None => format!("set twice (first at line {first})"),
                    }));
                }
                config.set(name, option, &entry.value, base_dir).map_err(|e| located(e.0))?;
                let warn = |message: String| ConfigWarning {
                    origin: origin.to_string(),
                    line: entry.line,
                    section: name.to_string(),
                    option: entry.name.clone(),
                    message,
                };
                if let Some(old) = old_name {
                    config.warnings.push(warn(format!("`{old}` is MediaProxy 2.0's name for `{option}`; rename it")));
                }
                if let Some(note) = ignored_note(name, option, &entry.value) {
                    config.warnings.push(warn(note.to_string()));
                }
            }
        }
        config.check(origin, &set_at)?;
        Ok(config)
    }

    fn set(&mut self, section: &str, option: &str, v: &str, base: &Path) -> Parsed<()> {
        match section {
            "Relay" => self.relay.set(option, v, base),
            "Dispatcher" => self.dispatcher.set(option, v),
            "TLS" => self.tls.set(option, v, base),
            "Database" => self.database.set(option, v),
            "Radius" => self.radius.set(option, v, base),
            "OpenSIPS" => self.opensips.set(option, v, base),
            "ThorNetwork" => self.thor_network.set(option, v),
            "Web" => self.web.set(option, v, base),
            "Update" => self.update.set(option, v, base),
            "Watchdog" => self.watchdog.set(option, v, base),
            _ => Err(ValueError(format!("internal error: section {section} has no setter"))),
        }
    }

    /// Rules that involve more than one option.
    fn check(&self, origin: &str, set_at: &SetAt) -> Result<(), ConfigError> {
        let error = |section: &'static str, option: &'static str, reason: String| {
            ConfigError::at(origin, set_at.get(&(section, option)).copied(), reason)
                .in_section(section)
                .for_option(option)
        };
        let relay = &self.relay;
        if relay.relay_ip.is_some_and(|ip| ip.is_unspecified()) && relay.advertised_ip.is_none() {
            return Err(error(
                "Relay",
                "relay_ip",
                "an unspecified address cannot be offered to phones: set advertised_ip too, \
                 or leave relay_ip unset to use the default-route address"
                    .into(),
            ));
        }
        if let (Some(relay_ip), Some(advertised)) = (relay.relay_ip, relay.advertised_ip) {
            if relay_ip.is_ipv4() != advertised.is_ipv4() {
                let family = |ip: std::net::IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(error(
                    "Relay",
                    "advertised_ip",
                    format!(
                        "{advertised} is {} but relay_ip {relay_ip} is {}: phones would be offered an address of \
                         another family than the relay's media sockets; use one family for both",
                        family(advertised),
                        family(relay_ip)
                    ),
                ));
            }
        }
        let d = &self.dispatcher;
        if collide(d.listen, d.listen_management) {
            let option =
                if set_at.contains_key(&("Dispatcher", "listen_management")) { "listen_management" } else { "listen" };
            return Err(error(
                "Dispatcher",
                option,
                format!("the relay port {} and the management port {} collide", d.listen, d.listen_management),
            ));
        }
        let w = &self.web;
        if w.http_listen.is_some_and(|http| w.listen.port() != 0 && collide(w.listen, http)) {
            return Err(error(
                "Web",
                "http_listen",
                format!("the HTTPS address {} and the HTTP address collide", w.listen),
            ));
        }
        let wd = &self.watchdog;
        if wd.interval >= wd.timeout {
            let option = if set_at.contains_key(&("Watchdog", "interval")) { "interval" } else { "timeout" };
            return Err(error(
                "Watchdog",
                option,
                format!(
                    "interval {} s must be shorter than timeout {} s, or the box resets between two feeds",
                    wd.interval.as_secs(),
                    wd.timeout.as_secs()
                ),
            ));
        }
        if d.management_allow_anonymous && d.management_passport.is_some() {
            return Err(error(
                "Dispatcher",
                "management_allow_anonymous",
                "management_passport requires a client certificate; remove one of the two".into(),
            ));
        }
        if d.accounting.contains(&AccountingBackend::Database) && self.database.dburi.is_none() {
            return Err(error("Dispatcher", "accounting", "database accounting needs [Database] dburi".into()));
        }
        Ok(())
    }
}

/// Two listening sockets that cannot both be bound.
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    // A wildcard covers its own family; the IPv6 wildcard covers IPv4 too
    // (Linux's default bindv6only=0).
    let covers =
        |w: SocketAddr, other: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == other.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// The canonical name of `name` in `section`, and the old name when `name`
/// is one.
fn resolve(section: &str, name: &str) -> Option<(&'static str, Option<&'static str>)> {
    if let Some(option) = options_of(section).find(|o| *o == name) {
        return Some((option, None));
    }
    RENAMED.iter().find(|(s, old, _)| *s == section && *old == name).map(|(_, old, new)| (*new, Some(*old)))
}

/// Settings relaybox accepts but does not act on, worth a log line.
fn ignored_note(section: &str, option: &str, v: &str) -> Option<&'static str> {
    match (section, option) {
        ("ThorNetwork", "domain") if !value::unset(v) => {
            Some("relaybox does not take part in SIP Thor; the setting is ignored")
        }
        ("Database", "start_time_column") if !value::unset(v) => {
            Some("MediaProxy 2.0 setting; ignored (the start time is in the info JSON)")
        }
        _ => None,
    }
}

fn unknown_section_reason(name: &str) -> String {
    let list = SECTIONS.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ");
    match SECTIONS.iter().find(|s| s.eq_ignore_ascii_case(name)) {
        Some(s) => format!("unknown section [{name}]; did you mean [{s}]? (section names are case-sensitive)"),
        None => format!("unknown section [{name}]; the sections are {list}"),
    }
}

fn unknown_option_reason(section: &str, name: &str) -> String {
    let elsewhere: Vec<String> =
        KNOWN_OPTIONS.iter().filter(|o| o.name == name).map(|o| format!("[{}]", o.section)).collect();
    if !elsewhere.is_empty() {
        return format!("unknown option here; `{name}` belongs in {}", elsewhere.join(" or "));
    }
    let candidates =
        options_of(section).chain(RENAMED.iter().filter(|(s, _, _)| *s == section).map(|(_, old, _)| *old));
    let best = candidates.map(|c| (edit_distance(name, c), c)).min();
    match best {
        Some((distance, candidate)) if distance <= 2.max(name.len() / 4) => {
            format!("unknown option; did you mean `{candidate}`?")
        }
        _ => format!("unknown option; [{section}] takes {}", options_of(section).collect::<Vec<_>>().join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("stream_timout", "stream_timeout"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn default_is_an_empty_file_in_the_default_directory() {
        let parsed = Config::parse("", DEFAULT_CONFIG_PATH, &default_config_dir()).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::default().tls.certs_path, PathBuf::from("/etc/relaybox/tls"));
    }

    #[test]
    fn listeners_collide() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(collide(a("0.0.0.0:1"), a("10.0.0.1:1")));
        assert!(collide(a("10.0.0.1:1"), a("10.0.0.1:1")));
        assert!(!collide(a("10.0.0.1:1"), a("10.0.0.2:1")));
        assert!(!collide(a("0.0.0.0:1"), a("0.0.0.0:2")));
        assert!(collide(a("[::]:1"), a("10.0.0.1:1")));
        assert!(!collide(a("0.0.0.0:1"), a("[::1]:1")));
    }
}
