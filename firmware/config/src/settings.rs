//! The sections of `config.ini`: one struct per section, its defaults, and
//! the function that sets one option from its text. Option names and
//! defaults are MediaProxy's (`mediaproxy/configuration/__init__.py` and
//! `config.ini.sample`) unless marked as a relaybox extension.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::passport::Passport;
use crate::value::{self, unset, AccountingBackend, Group, HostPort, LogLevel, Parsed, PortRange, ValueError};
use crate::{DEFAULT_DISPATCHER_PORT, DEFAULT_MANAGEMENT_PORT, DEFAULT_METRICS_PORT, MEDIAPROXY_RUNTIME_DIR};

const MIB: u64 = 1024 * 1024;

/// One option that a section accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownOption {
    pub section: &'static str,
    pub name: &'static str,
    /// A relaybox setting that MediaProxy does not have.
    pub extension: bool,
}

const fn mp(section: &'static str, name: &'static str) -> KnownOption {
    KnownOption { section, name, extension: false }
}

const fn ext(section: &'static str, name: &'static str) -> KnownOption {
    KnownOption { section, name, extension: true }
}

/// The sections, in the order the sample file lists them.
pub const SECTIONS: &[&str] =
    &["Relay", "Dispatcher", "TLS", "Database", "Radius", "OpenSIPS", "ThorNetwork", "Web", "Update", "Watchdog"];

/// Every option relaybox accepts, by section. MediaProxy's options are all
/// here, including the ones relaybox stores but does not act on yet, so that
/// an existing MediaProxy file loads.
pub const KNOWN_OPTIONS: &[KnownOption] = &[
    mp("Relay", "dispatchers"),
    mp("Relay", "passport"),
    mp("Relay", "relay_ip"),
    mp("Relay", "advertised_ip"),
    mp("Relay", "port_range"),
    mp("Relay", "stream_timeout"),
    mp("Relay", "on_hold_timeout"),
    mp("Relay", "dns_check_interval"),
    mp("Relay", "keepalive_interval"),
    mp("Relay", "reconnect_delay"),
    mp("Relay", "traffic_sampling_period"),
    mp("Relay", "userspace_transmit_every"),
    mp("Relay", "auto_detect_interfaces"),
    mp("Relay", "routable_private_ranges"),
    mp("Relay", "log_level"),
    ext("Relay", "max_sessions"),
    ext("Relay", "max_streams_per_session"),
    ext("Relay", "max_line_length"),
    ext("Relay", "state_file"),
    ext("Relay", "control_socket"),
    ext("Relay", "datapath"),
    ext("Relay", "latching_window"),
    ext("Relay", "signaling_proxies"),
    ext("Relay", "io_threads"),
    mp("Dispatcher", "socket_path"),
    mp("Dispatcher", "listen"),
    mp("Dispatcher", "listen_management"),
    mp("Dispatcher", "management_use_tls"),
    mp("Dispatcher", "management_passport"),
    mp("Dispatcher", "passport"),
    mp("Dispatcher", "relay_timeout"),
    mp("Dispatcher", "relay_recover_interval"),
    mp("Dispatcher", "accounting"),
    mp("Dispatcher", "cleanup_dead_relays_after"),
    mp("Dispatcher", "cleanup_expired_sessions_after"),
    mp("Dispatcher", "log_level"),
    ext("Dispatcher", "max_request_size"),
    ext("Dispatcher", "max_module_connections"),
    ext("Dispatcher", "max_module_connections_per_uid"),
    ext("Dispatcher", "module_request_timeout"),
    ext("Dispatcher", "max_relay_connections"),
    ext("Dispatcher", "max_relay_connections_per_ip"),
    ext("Dispatcher", "max_management_connections"),
    ext("Dispatcher", "max_management_connections_per_ip"),
    ext("Dispatcher", "handshake_timeout"),
    ext("Dispatcher", "management_idle_timeout"),
    ext("Dispatcher", "management_refresh_interval"),
    ext("Dispatcher", "max_relay_line"),
    ext("Dispatcher", "module_timeout"),
    ext("Dispatcher", "spool_dir"),
    ext("Dispatcher", "spool_max_records"),
    ext("Dispatcher", "management_allow_anonymous"),
    ext("Dispatcher", "end_adopted_dialogs"),
    ext("Dispatcher", "refusal_log_limit"),
    ext("Dispatcher", "socket_group"),
    ext("Dispatcher", "socket_mode"),
    ext("Dispatcher", "metrics_listen"),
    ext("Dispatcher", "max_metrics_connections"),
    ext("Dispatcher", "max_metrics_connections_per_ip"),
    mp("TLS", "certs_path"),
    mp("TLS", "verify_interval"),
    ext("TLS", "accept_unmarked_certificates"),
    mp("Database", "dburi"),
    mp("Database", "sessions_table"),
    mp("Database", "callid_column"),
    mp("Database", "fromtag_column"),
    mp("Database", "totag_column"),
    mp("Database", "info_column"),
    mp("Database", "start_time_column"),
    mp("Radius", "config_file"),
    mp("Radius", "additional_dictionary"),
    mp("OpenSIPS", "socket_path"),
    mp("OpenSIPS", "max_connections"),
    mp("OpenSIPS", "location_table"),
    ext("OpenSIPS", "proxy"),
    ext("OpenSIPS", "transport"),
    ext("OpenSIPS", "url"),
    ext("OpenSIPS", "reply_dir"),
    ext("OpenSIPS", "reply_mode"),
    ext("OpenSIPS", "reply_owner"),
    ext("OpenSIPS", "reply_group"),
    ext("OpenSIPS", "reply_timeout"),
    mp("ThorNetwork", "domain"),
    mp("ThorNetwork", "node_ip"),
    ext("Web", "listen"),
    ext("Web", "http_listen"),
    ext("Web", "session_timeout"),
    ext("Web", "max_body"),
    ext("Web", "login_attempts"),
    ext("Web", "lockout"),
    ext("Web", "max_parallel_logins"),
    ext("Web", "login_queue"),
    ext("Web", "metrics"),
    ext("Web", "metrics_lan_only"),
    ext("Web", "system_conf"),
    ext("Web", "clock_pid_file"),
    ext("Web", "network_conf"),
    ext("Web", "reboot_command"),
    ext("Web", "hostname_command"),
    ext("Web", "max_connections"),
    ext("Web", "max_connections_per_ip"),
    ext("Web", "handshake_timeout"),
    ext("Web", "wan_access"),
    ext("Web", "log_command"),
    ext("Web", "log_max_bytes"),
    ext("Web", "log_dir"),
    ext("Web", "syslog_pid_file"),
    ext("Web", "max_backup"),
    ext("Watchdog", "device"),
    ext("Watchdog", "timeout"),
    ext("Watchdog", "interval"),
    ext("Watchdog", "grace"),
    ext("Watchdog", "health_timeout"),
    ext("Update", "public_key"),
    ext("Update", "release_file"),
    ext("Update", "boot_dir"),
    ext("Update", "boot_tries"),
    ext("Update", "health_timeout"),
    ext("Update", "max_bundle_size"),
    ext("Update", "download_timeout"),
    ext("Update", "work_dir"),
    ext("Update", "reboot_command"),
];

/// Names that MediaProxy 2.0 used before renaming them: (section, old, new).
pub(crate) const RENAMED: &[(&str, &str, &str)] = &[
    ("Relay", "stats_collect_interval", "traffic_sampling_period"),
    ("Dispatcher", "socket", "socket_path"),
    ("Dispatcher", "cleanup_timeout", "cleanup_dead_relays_after"),
];

pub(crate) fn options_of(section: &str) -> impl Iterator<Item = &'static str> + '_ {
    KNOWN_OPTIONS.iter().filter(move |o| o.section == section).map(|o| o.name)
}

fn unknown(name: &str) -> Parsed<()> {
    Err(ValueError(format!("internal error: option {name} has no setter")))
}

fn optional_ip(v: &str) -> Parsed<Option<IpAddr>> {
    if unset(v) {
        Ok(None)
    } else {
        value::unicast_ip(v).map(Some)
    }
}

/// `[Relay] datapath` (relaybox): how latched media is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatapathMode {
    /// The kernel (conntrack NAT entries) when its prerequisites are met,
    /// else userspace with a warning that says why (the default).
    #[default]
    Auto,
    /// The kernel or nothing: a relay that cannot use it refuses to start
    /// and says what is missing.
    Kernel,
    /// Userspace sockets only; the kernel's conntrack and nftables are not
    /// touched.
    Userspace,
}

impl DatapathMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathMode::Auto => "auto",
            DatapathMode::Kernel => "kernel",
            DatapathMode::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for DatapathMode {
    type Err = ValueError;

    fn from_str(v: &str) -> Parsed<Self> {
        match v.to_ascii_lowercase().as_str() {
            "auto" => Ok(DatapathMode::Auto),
            "kernel" => Ok(DatapathMode::Kernel),
            "userspace" => Ok(DatapathMode::Userspace),
            _ => Err(format!("expected auto, kernel or userspace, got {v:?}").into()),
        }
    }
}

impl fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[Relay]`: the media relay.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Dispatchers to connect to, `host[:port]` separated by blanks or
    /// commas; the port defaults to 25060. Default: none.
    pub dispatchers: Vec<HostPort>,
    /// Restriction on the dispatcher's certificate subject; `None`: any
    /// certificate signed by the CA.
    pub passport: Option<Passport>,
    /// Address to relay on; `None` (default): the address of the interface
    /// with the default route.
    pub relay_ip: Option<IpAddr>,
    /// Address put in replies instead of the relay's own (1:1 NAT). Default
    /// `None`. When set, `auto_detect_interfaces` has no effect.
    pub advertised_ip: Option<IpAddr>,
    /// How long a new stream may stay without media from both sides (90 s).
    pub stream_timeout: Duration,
    /// How long a call may stay on hold (7200 s).
    pub on_hold_timeout: Duration,
    /// Period over which `bps_relayed` is averaged (15 s); zero turns it off.
    pub traffic_sampling_period: Duration,
    /// In userspace forwarding, send one packet in this many (1: all).
    pub userspace_transmit_every: u32,
    /// How often the dispatchers' SRV and A records are looked up again (60 s).
    pub dns_check_interval: Duration,
    /// How often the relay sends `ping` to a dispatcher (10 s).
    pub keepalive_interval: Duration,
    /// Wait before reconnecting to a dispatcher (10 s).
    pub reconnect_delay: Duration,
    /// UDP ports for media; see [`PortRange`] (`end` is exclusive).
    /// default 40000:60000, as MediaProxy 4.1.2's.
    pub port_range: PortRange,
    /// Default DEBUG, as MediaProxy's media-relay.
    pub log_level: LogLevel,
    /// Offer, per side, the address of the interface that routes to that
    /// side (found from `signaling_ip`). Default no.
    pub auto_detect_interfaces: bool,
    /// Private networks to treat as routable: an SDP address in one of them
    /// is trusted like a public one. Default none.
    pub routable_private_ranges: Vec<IpNet>,
    /// relaybox: most sessions held at once; `update` for a new call beyond
    /// it answers `error` (10000).
    pub max_sessions: usize,
    /// relaybox: most media streams in one session (16).
    pub max_streams_per_session: usize,
    /// relaybox: longest line, and longest command (all its lines),
    /// accepted from a dispatcher, in bytes (65536).
    pub max_line_length: usize,
    /// relaybox: where sessions are saved so that they survive a restart
    /// (`/var/lib/relaybox/sessions.bin`).
    pub state_file: PathBuf,
    /// relaybox: local UNIX socket on which the relay answers `summary`,
    /// `sessions` and `metrics` for the box's web page
    /// (`/run/relaybox/relay.sock`); relative to the config file's directory.
    pub control_socket: PathBuf,
    /// relaybox: `auto` (default), `kernel` or `userspace`; see
    /// [`DatapathMode`].
    pub datapath: DatapathMode,
    /// relaybox: how long a leg whose phone is behind NAT refuses media
    /// sources that neither its SDP address nor its signaling IP vouch
    /// for, from the first such datagram (3 s, 0 to 60); after it the next
    /// source latches. 0: any source latches at once, as in MediaProxy
    /// (open to RTP bleed).
    pub latching_window: Duration,
    /// relaybox: networks of SIP proxies in front of the phones (a proxy
    /// that relays INVITEs from other proxies): a `signaling_ip` in them
    /// says nothing about the phone's NAT and vouches for no media source.
    /// Default none.
    pub signaling_proxies: Vec<IpNet>,
    /// relaybox: threads that receive and forward media in userspace, each
    /// polling its share of the ports (0, the default: one per CPU; at
    /// most 64).
    pub io_threads: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            dispatchers: Vec::new(),
            passport: None,
            relay_ip: None,
            advertised_ip: None,
            stream_timeout: Duration::from_secs(90),
            on_hold_timeout: Duration::from_secs(7200),
            traffic_sampling_period: Duration::from_secs(15),
            userspace_transmit_every: 1,
            dns_check_interval: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            reconnect_delay: Duration::from_secs(10),
            port_range: PortRange { start: 40000, end: 60000 },
            log_level: LogLevel::Debug,
            auto_detect_interfaces: false,
            routable_private_ranges: Vec::new(),
            max_sessions: 10_000,
            max_streams_per_session: 16,
            max_line_length: 65_536,
            state_file: PathBuf::from("/var/lib/relaybox/sessions.bin"),
            control_socket: PathBuf::from("/run/relaybox/relay.sock"),
            datapath: DatapathMode::Auto,
            latching_window: Duration::from_secs(3),
            signaling_proxies: Vec::new(),
            io_threads: 0,
        }
    }
}

impl RelayConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "dispatchers" => self.dispatchers = value::dispatchers(v)?,
            "passport" => self.passport = value::passport(v)?,
            "relay_ip" => self.relay_ip = optional_ip(v)?,
            "advertised_ip" => {
                self.advertised_ip = optional_ip(v)?;
                if self.advertised_ip.is_some_and(|ip| ip.is_unspecified()) {
                    return Err("an unspecified address cannot be advertised".into());
                }
            }
            "port_range" => self.port_range = v.parse()?,
            "stream_timeout" => self.stream_timeout = value::seconds(v, 1)?,
            "on_hold_timeout" => self.on_hold_timeout = value::seconds(v, 1)?,
            "dns_check_interval" => self.dns_check_interval = value::seconds(v, 1)?,
            "keepalive_interval" => self.keepalive_interval = value::seconds(v, 1)?,
            "reconnect_delay" => self.reconnect_delay = value::seconds(v, 1)?,
            "traffic_sampling_period" => self.traffic_sampling_period = value::seconds(v, 0)?,
            "userspace_transmit_every" => {
                self.userspace_transmit_every = value::count(v, 1, u64::from(u32::MAX))? as u32
            }
            "auto_detect_interfaces" => self.auto_detect_interfaces = value::boolean(v)?,
            "routable_private_ranges" => self.routable_private_ranges = value::networks(v)?,
            "log_level" => self.log_level = v.parse()?,
            "max_sessions" => self.max_sessions = value::count(v, 1, 1_000_000)? as usize,
            "max_streams_per_session" => self.max_streams_per_session = value::count(v, 1, 128)? as usize,
            "max_line_length" => self.max_line_length = value::count(v, 1024, 16 * MIB)? as usize,
            "state_file" => self.state_file = value::path(v, base)?,
            "control_socket" => self.control_socket = value::path(v, base)?,
            "datapath" => self.datapath = v.parse()?,
            "latching_window" => {
                self.latching_window = value::fractional_seconds(v, Duration::ZERO, Duration::from_secs(60))?
            }
            "signaling_proxies" => self.signaling_proxies = value::networks(v)?,
            "io_threads" => self.io_threads = value::count(v, 0, 64)? as usize,
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[Dispatcher]`: the dispatcher next to the SIP proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatcherConfig {
    /// UNIX socket the proxy's mediaproxy module connects to. A relative
    /// path is taken from MediaProxy's runtime directory
    /// `/var/run/mediaproxy` (default `dispatcher.sock` there), because that
    /// is where the module looks.
    pub socket_path: PathBuf,
    /// Relay link address, `ip[:port]` or `any` (default 0.0.0.0:25060).
    pub listen: SocketAddr,
    /// Management interface address (default 0.0.0.0:25061).
    pub listen_management: SocketAddr,
    /// TLS on the management interface (default yes).
    pub management_use_tls: bool,
    /// Restriction on management clients' certificates; `None`: any.
    pub management_passport: Option<Passport>,
    /// Restriction on relays' certificates; `None`: any.
    pub passport: Option<Passport>,
    /// Wait for a relay's answer (5 s).
    pub relay_timeout: Duration,
    /// Wait for an unresponsive relay to recover before dropping it (60 s).
    pub relay_recover_interval: Duration,
    /// Backends that record finished sessions (default none).
    pub accounting: Vec<AccountingBackend>,
    /// Forget the sessions of a relay that stayed disconnected this long
    /// (43200 s, 12 hours).
    pub cleanup_dead_relays_after: Duration,
    /// Forget expired sessions after this long (86400 s, 24 hours).
    pub cleanup_expired_sessions_after: Duration,
    /// Default DEBUG, as MediaProxy's media-dispatcher.
    pub log_level: LogLevel,
    /// relaybox: largest request accepted from the proxy module, in bytes (16384).
    pub max_request_size: usize,
    /// relaybox: most module connections at once (1024).
    pub max_module_connections: usize,
    /// relaybox: most module connections at once from one user id (512).
    /// Every worker of the proxy connects as the proxy's user, so this is
    /// high; it keeps another local user (the socket is mode 0666) from
    /// taking every place.
    pub max_module_connections_per_uid: usize,
    /// relaybox: a module connection must send its first request, and any
    /// request must arrive whole, within this long (10 s); a connection that
    /// has sent a valid request may then stay idle for as long as it likes
    /// (each proxy worker keeps one open between calls).
    pub module_request_timeout: Duration,
    /// relaybox: most connections to the relay port (`listen`) at once,
    /// TLS handshakes included (64).
    pub max_relay_connections: usize,
    /// relaybox: most connections to the relay port from one address (an
    /// IPv6 /64) at once (8).
    pub max_relay_connections_per_ip: usize,
    /// relaybox: most management connections at once (32).
    pub max_management_connections: usize,
    /// relaybox: most management connections from one address (an IPv6
    /// /64) at once (8).
    pub max_management_connections_per_ip: usize,
    /// relaybox: how long a TLS handshake may take on the relay and
    /// management ports (10 s).
    pub handshake_timeout: Duration,
    /// relaybox: a management connection that sends no command, or does not
    /// read its answer, for this long is closed (60 s).
    pub management_idle_timeout: Duration,
    /// relaybox: the relays are asked for `summary` or `sessions` at most
    /// this often on behalf of management clients (1 s); every client
    /// waiting meanwhile gets the next answer.
    pub management_refresh_interval: Duration,
    /// relaybox: longest line accepted from a relay, in bytes; a `sessions`
    /// reply carries every session (16 MiB).
    pub max_relay_line: usize,
    /// relaybox: the module's own time budget (its `mediaproxy_timeout`,
    /// 500 ms); the dispatcher answers `error` before it runs out.
    pub module_timeout: Duration,
    /// relaybox: where accounting records wait until every backend has them
    /// (`/var/spool/relaybox`; relative paths are under `/var/spool`).
    pub spool_dir: PathBuf,
    /// relaybox: most records waiting in one backend's spool (1000000,
    /// about 1-2 GB); beyond it a record is written to the log (as JSON, so
    /// it can be replayed) instead of filling the disk.
    pub spool_max_records: usize,
    /// relaybox: with `management_use_tls` and no `management_passport`,
    /// serve management clients that present no certificate (default no:
    /// a management certificate is required). Logged as a warning at start.
    pub management_allow_anonymous: bool,
    /// relaybox: whether a call adopted from a relay's `sessions` list (after
    /// a dispatcher restart), whose dialog id no module request confirmed,
    /// may end that dialog through the proxy when it expires (default no).
    pub end_adopted_dialogs: bool,
    /// relaybox: refused relay reports (an `expired` or statistics for a call
    /// the relay does not hold) logged one by one per relay and minute; the
    /// rest are counted in one line a minute (10).
    pub refusal_log_limit: u32,
    /// relaybox: the group the module socket is given (`None`, the
    /// default: the dispatcher's own group). With `socket_mode = 0660`,
    /// only that group's members (the proxy's user) can connect.
    pub socket_group: Option<Group>,
    /// relaybox: the module socket's permission bits (0666, as
    /// MediaProxy's: every local user can connect).
    pub socket_mode: u32,
    /// relaybox: address of the Prometheus exporter (plain HTTP, `GET
    /// /metrics`), `ip[:port]` with port 9461 by default; `None` (the
    /// default): no exporter.
    pub metrics_listen: Option<SocketAddr>,
    /// relaybox: most connections to the metrics port at once (16), and
    /// from one address (an IPv6 /64) at once (4).
    pub max_metrics_connections: usize,
    pub max_metrics_connections_per_ip: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        DispatcherConfig {
            socket_path: Path::new(MEDIAPROXY_RUNTIME_DIR).join("dispatcher.sock"),
            listen: SocketAddr::new(any, DEFAULT_DISPATCHER_PORT),
            listen_management: SocketAddr::new(any, DEFAULT_MANAGEMENT_PORT),
            management_use_tls: true,
            management_passport: None,
            passport: None,
            relay_timeout: Duration::from_secs(5),
            relay_recover_interval: Duration::from_secs(60),
            accounting: Vec::new(),
            cleanup_dead_relays_after: Duration::from_secs(43_200),
            cleanup_expired_sessions_after: Duration::from_secs(86_400),
            log_level: LogLevel::Debug,
            max_request_size: 16_384,
            max_module_connections: 1024,
            max_module_connections_per_uid: 512,
            module_request_timeout: Duration::from_secs(10),
            max_relay_connections: 64,
            max_relay_connections_per_ip: 8,
            max_management_connections: 32,
            max_management_connections_per_ip: 8,
            handshake_timeout: Duration::from_secs(10),
            management_idle_timeout: Duration::from_secs(60),
            management_refresh_interval: Duration::from_secs(1),
            max_relay_line: 16 * MIB as usize,
            module_timeout: Duration::from_millis(500),
            spool_dir: PathBuf::from("/var/spool/relaybox"),
            spool_max_records: 1_000_000,
            management_allow_anonymous: false,
            end_adopted_dialogs: false,
            refusal_log_limit: 10,
            socket_group: None,
            socket_mode: 0o666,
            metrics_listen: None,
            max_metrics_connections: 16,
            max_metrics_connections_per_ip: 4,
        }
    }
}

impl DispatcherConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str) -> Parsed<()> {
        match name {
            "socket_path" => self.socket_path = value::path(v, Path::new(MEDIAPROXY_RUNTIME_DIR))?,
            "listen" => self.listen = value::listen_addr(v, DEFAULT_DISPATCHER_PORT)?,
            "listen_management" => self.listen_management = value::listen_addr(v, DEFAULT_MANAGEMENT_PORT)?,
            "management_use_tls" => self.management_use_tls = value::boolean(v)?,
            "management_passport" => self.management_passport = value::passport(v)?,
            "passport" => self.passport = value::passport(v)?,
            "relay_timeout" => self.relay_timeout = value::seconds(v, 1)?,
            "relay_recover_interval" => self.relay_recover_interval = value::seconds(v, 1)?,
            "accounting" => self.accounting = value::accounting(v)?,
            "cleanup_dead_relays_after" => self.cleanup_dead_relays_after = value::seconds(v, 0)?,
            "cleanup_expired_sessions_after" => self.cleanup_expired_sessions_after = value::seconds(v, 0)?,
            "log_level" => self.log_level = v.parse()?,
            "max_request_size" => self.max_request_size = value::count(v, 1024, 16 * MIB)? as usize,
            "max_module_connections" => self.max_module_connections = value::count(v, 1, 65_536)? as usize,
            "max_module_connections_per_uid" => {
                self.max_module_connections_per_uid = value::count(v, 1, 65_536)? as usize
            }
            "module_request_timeout" => self.module_request_timeout = value::seconds(v, 1)?,
            "max_relay_connections" => self.max_relay_connections = value::count(v, 1, 65_536)? as usize,
            "max_relay_connections_per_ip" => self.max_relay_connections_per_ip = value::count(v, 1, 65_536)? as usize,
            "max_management_connections" => self.max_management_connections = value::count(v, 1, 65_536)? as usize,
            "max_management_connections_per_ip" => {
                self.max_management_connections_per_ip = value::count(v, 1, 65_536)? as usize
            }
            "handshake_timeout" => self.handshake_timeout = value::seconds(v, 1)?,
            "management_idle_timeout" => self.management_idle_timeout = value::seconds(v, 1)?,
            "management_refresh_interval" => {
                self.management_refresh_interval =
                    value::fractional_seconds(v, Duration::ZERO, Duration::from_secs(3600))?
            }
            "max_relay_line" => self.max_relay_line = value::count(v, 1024, 1024 * MIB)? as usize,
            "module_timeout" => {
                self.module_timeout = value::fractional_seconds(v, Duration::from_millis(10), Duration::from_secs(60))?
            }
            "spool_dir" => self.spool_dir = value::path(v, Path::new("/var/spool"))?,
            "spool_max_records" => self.spool_max_records = value::count(v, 1, 1_000_000_000)? as usize,
            "management_allow_anonymous" => self.management_allow_anonymous = value::boolean(v)?,
            "end_adopted_dialogs" => self.end_adopted_dialogs = value::boolean(v)?,
            "refusal_log_limit" => self.refusal_log_limit = value::count(v, 0, 1_000_000)? as u32,
            "socket_group" => self.socket_group = if unset(v) { None } else { Some(value::group(v)?) },
            "socket_mode" => self.socket_mode = value::file_mode(v)?,
            "metrics_listen" => {
                self.metrics_listen = if unset(v) { None } else { Some(value::listen_addr(v, DEFAULT_METRICS_PORT)?) }
            }
            "max_metrics_connections" => self.max_metrics_connections = value::count(v, 1, 65_536)? as usize,
            "max_metrics_connections_per_ip" => {
                self.max_metrics_connections_per_ip = value::count(v, 1, 65_536)? as usize
            }
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[TLS]`: certificates for the relay link and the management interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Directory of `ca.pem`, `crl.pem` and the role's certificate and key;
    /// relative to the config file's directory (default `tls`).
    pub certs_path: PathBuf,
    /// How often the peer certificate is checked again for expiry and
    /// revocation (300 s).
    pub verify_interval: Duration,
    /// relaybox: accept peer certificates that carry no relaybox role (made
    /// by another CA, e.g. MediaProxy's, during a migration). Default no. A
    /// certificate of another role is refused either way.
    pub accept_unmarked_certificates: bool,
}

impl TlsConfig {
    pub(crate) fn defaults_in(base: &Path) -> Self {
        TlsConfig {
            certs_path: base.join("tls"),
            verify_interval: Duration::from_secs(300),
            accept_unmarked_certificates: false,
        }
    }

    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "certs_path" => self.certs_path = value::path(v, base)?,
            "verify_interval" => self.verify_interval = value::seconds(v, 1)?,
            "accept_unmarked_certificates" => self.accept_unmarked_certificates = value::boolean(v)?,
            _ => return unknown(name),
        }
        Ok(())
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig::defaults_in(&crate::default_config_dir())
    }
}

/// `[Database]`: the database accounting backend.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `scheme://user:password@host/database`; `None` (default): not set.
    /// `Debug` hides the password.
    pub dburi: Option<String>,
    pub sessions_table: String,
    pub callid_column: String,
    pub fromtag_column: String,
    pub totag_column: String,
    /// The column holding the statistics JSON (a BLOB).
    pub info_column: String,
    /// MediaProxy 2.0 only; accepted and ignored (the start time is in the
    /// statistics JSON).
    pub start_time_column: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            dburi: None,
            sessions_table: "media_sessions".into(),
            callid_column: "call_id".into(),
            fromtag_column: "from_tag".into(),
            totag_column: "to_tag".into(),
            info_column: "info".into(),
            start_time_column: None,
        }
    }
}

fn dburi(v: &str) -> Parsed<Option<String>> {
    if unset(v) {
        return Ok(None);
    }
    let scheme_ok = v.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if !scheme_ok || v.contains(char::is_whitespace) {
        // The value is not repeated: it may hold a password.
        return Err("expected a URI such as mysql://user:password@host/database".into());
    }
    Ok(Some(v.to_string()))
}

/// `scheme://user:secret@host/db` shown as `scheme://user:***@host/db`.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return uri.to_string() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => uri.to_string(),
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("dburi", &self.dburi.as_deref().map(redact_uri))
            .field("sessions_table", &self.sessions_table)
            .field("callid_column", &self.callid_column)
            .field("fromtag_column", &self.fromtag_column)
            .field("totag_column", &self.totag_column)
            .field("info_column", &self.info_column)
            .field("start_time_column", &self.start_time_column)
            .finish()
    }
}

impl DatabaseConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str) -> Parsed<()> {
        match name {
            "dburi" => self.dburi = dburi(v)?,
            "sessions_table" => self.sessions_table = value::sql_identifier(v)?,
            "callid_column" => self.callid_column = value::sql_identifier(v)?,
            "fromtag_column" => self.fromtag_column = value::sql_identifier(v)?,
            "totag_column" => self.totag_column = value::sql_identifier(v)?,
            "info_column" => self.info_column = value::sql_identifier(v)?,
            "start_time_column" => {
                self.start_time_column = if unset(v) { None } else { Some(value::sql_identifier(v)?) }
            }
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[Radius]`: the RADIUS accounting backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusConfig {
    /// The proxy's radiusclient configuration, where servers, secrets and
    /// dictionaries are read from (`/etc/opensips/radius/client.conf`).
    pub config_file: PathBuf,
    /// Dictionary with MediaProxy's own attributes, relative to the config
    /// file's directory (default `radius/dictionary`); empty or `None`: no
    /// additional dictionary.
    pub additional_dictionary: Option<PathBuf>,
}

impl RadiusConfig {
    pub(crate) fn defaults_in(base: &Path) -> Self {
        RadiusConfig {
            config_file: PathBuf::from("/etc/opensips/radius/client.conf"),
            additional_dictionary: Some(base.join("radius/dictionary")),
        }
    }

    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "config_file" => self.config_file = value::path(v, base)?,
            "additional_dictionary" => {
                self.additional_dictionary = if unset(v) { None } else { Some(value::path(v, base)?) }
            }
            _ => return unknown(name),
        }
        Ok(())
    }
}

impl Default for RadiusConfig {
    fn default() -> Self {
        RadiusConfig::defaults_in(&crate::default_config_dir())
    }
}

/// `[OpenSIPS]`: the proxy's management interface, used to end dialogs
/// whose media timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSipsConfig {
    /// The proxy's management datagram socket (`/run/opensips/socket`), or
    /// its MI FIFO with `transport = fifo`; relative to the config file's
    /// directory.
    pub socket_path: PathBuf,
    /// Most requests to the proxy at once (10).
    pub max_connections: usize,
    /// MediaProxy 4.x: the proxy's location table (`location`); stored, not used.
    pub location_table: String,
    /// relaybox: which proxy listens on `socket_path`, which decides how a
    /// dialog is ended: `opensips` (`dlg_end_dlg`, the dialog named as
    /// `dlg_list` prints it, then as the module's number after a 404) or
    /// `kamailio` (`dlg.end_dlg` with h_entry and h_id). Default `opensips`,
    /// as MediaProxy.
    pub proxy: ProxyFlavor,
    /// relaybox: how requests reach the proxy (default `datagram`, as MediaProxy).
    pub transport: MiTransport,
    /// relaybox: the JSON-RPC over HTTP URL for `transport = http`
    /// (OpenSIPS `mi_http`; default `http://127.0.0.1:8888/mi`). Plain HTTP
    /// only: keep it on loopback.
    pub url: String,
    /// relaybox: where the dispatcher makes the socket (datagram) or FIFO
    /// (fifo) the proxy answers on (`/tmp`). With `transport = fifo` it must
    /// be the proxy's FIFO `reply_dir` (OpenSIPS mi_fifo and Kamailio
    /// jsonrpcs: `/tmp/` by default).
    pub reply_dir: PathBuf,
    /// relaybox: permission bits of the reply socket/FIFO (0666: a proxy
    /// running as its own user can answer; tighten with `reply_group`).
    pub reply_mode: u32,
    /// relaybox: owner (user name or uid) given to the reply socket/FIFO;
    /// `None` (default): the dispatcher's user.
    pub reply_owner: Option<String>,
    /// relaybox: group (name or gid) given to the reply socket/FIFO; `None`
    /// (default): the dispatcher's group.
    pub reply_group: Option<String>,
    /// relaybox: how long the proxy gets to answer one request (3 s, as MediaProxy).
    pub reply_timeout: Duration,
}

/// The SIP proxy whose dialogs the dispatcher ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFlavor {
    OpenSips,
    Kamailio,
}

/// How the dispatcher reaches the proxy's management interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiTransport {
    /// One JSON-RPC datagram to `socket_path` (OpenSIPS mi_datagram, Kamailio
    /// jsonrpcs `dgram_socket`), answered on a socket in `reply_dir`.
    Datagram,
    /// A line `:<reply fifo>:<request>` to the FIFO at `socket_path`
    /// (OpenSIPS mi_fifo, Kamailio jsonrpcs `fifo_name`), answered on a FIFO
    /// in `reply_dir`.
    Fifo,
    /// An HTTP POST to `url` (OpenSIPS mi_http).
    Http,
}

impl Default for OpenSipsConfig {
    fn default() -> Self {
        OpenSipsConfig {
            socket_path: PathBuf::from("/run/opensips/socket"),
            max_connections: 10,
            location_table: "location".into(),
            proxy: ProxyFlavor::OpenSips,
            transport: MiTransport::Datagram,
            url: "http://127.0.0.1:8888/mi".into(),
            reply_dir: PathBuf::from("/tmp"),
            reply_mode: 0o666,
            reply_owner: None,
            reply_group: None,
            reply_timeout: Duration::from_secs(3),
        }
    }
}

/// A user or group: a name of letters, digits, `_`, `-`, `.` (not starting
/// with `-`), or a number.
fn account_name(v: &str) -> Parsed<Option<String>> {
    if unset(v) {
        return Ok(None);
    }
    let ok = v.len() <= 64
        && !v.starts_with('-')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if !ok {
        return Err(ValueError(format!("expected a user or group name or number, got {v:?}")));
    }
    Ok(Some(v.to_string()))
}

impl OpenSipsConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "socket_path" => self.socket_path = value::path(v, base)?,
            "max_connections" => self.max_connections = value::count(v, 1, 1000)? as usize,
            "location_table" => self.location_table = value::sql_identifier(v)?,
            "proxy" => {
                self.proxy = match v.to_ascii_lowercase().as_str() {
                    "opensips" => ProxyFlavor::OpenSips,
                    "kamailio" => ProxyFlavor::Kamailio,
                    _ => return Err(ValueError(format!("proxy must be opensips or kamailio, not {v:?}"))),
                }
            }
            "transport" => {
                self.transport = match v.to_ascii_lowercase().as_str() {
                    "datagram" => MiTransport::Datagram,
                    "fifo" => MiTransport::Fifo,
                    "http" => MiTransport::Http,
                    _ => return Err(ValueError(format!("expected datagram, fifo or http, got {v:?}"))),
                }
            }
            "url" => {
                let rest = v.strip_prefix("http://").unwrap_or_default();
                if rest.is_empty() || rest.starts_with('/') || v.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(ValueError(format!("expected an http://host[:port]/path URL, got {v:?}")));
                }
                self.url = v.to_string();
            }
            "reply_dir" => self.reply_dir = value::path(v, base)?,
            "reply_mode" => {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                self.reply_mode = match u32::from_str_radix(digits, 8) {
                    Ok(m) if m <= 0o777 && !digits.is_empty() => m,
                    _ => return Err(ValueError(format!("expected octal permission bits such as 0660, got {v:?}"))),
                };
            }
            "reply_owner" => self.reply_owner = account_name(v)?,
            "reply_group" => self.reply_group = account_name(v)?,
            "reply_timeout" => {
                self.reply_timeout = value::fractional_seconds(v, Duration::from_millis(100), Duration::from_secs(60))?
            }
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[ThorNetwork]`: AG Projects' SIP Thor clustering. relaybox does not
/// take part in SIP Thor; the section is accepted so that such files load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThorNetworkConfig {
    /// SIP Thor domain; `None` (default): SIP Thor off.
    pub domain: Option<String>,
    /// This node's address; `None` (default): the default-route address.
    pub node_ip: Option<IpAddr>,
}

impl ThorNetworkConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str) -> Parsed<()> {
        match name {
            "domain" => {
                self.domain = if unset(v) {
                    None
                } else if value::is_hostname(v) {
                    Some(v.to_string())
                } else {
                    return Err(format!("{v:?} is not a domain name").into());
                }
            }
            "node_ip" => self.node_ip = optional_ip(v)?,
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[Web]` (relaybox): the box's configuration page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// HTTPS address of the page (`0.0.0.0:443`).
    pub listen: SocketAddr,
    /// Plain HTTP address that only redirects to HTTPS (`0.0.0.0:80`);
    /// `None`: no plain HTTP listener.
    pub http_listen: Option<SocketAddr>,
    /// A login session ends after this long without a request (1800 s).
    pub session_timeout: Duration,
    /// Largest request body accepted, in bytes (65536); larger: 413.
    pub max_body: usize,
    /// Wrong passwords from one address before it is locked out (5).
    pub login_attempts: u32,
    /// How long a locked-out address must wait (60 s).
    pub lockout: Duration,
    /// Passwords checked at once (1); each check holds argon2's 19 MiB.
    pub max_parallel_logins: usize,
    /// Logins that may wait for a check (8); beyond them a login is
    /// answered 503 at once, without checking its password.
    pub login_queue: usize,
    /// Serve Prometheus metrics at `/metrics` (yes).
    pub metrics: bool,
    /// `/metrics` without logging in, but only to clients on loopback or
    /// private (LAN) addresses (no: logging in is required).
    pub metrics_lan_only: bool,
    /// The box's `system.conf` (host name, NTP servers) that the System
    /// page edits (`system.conf` next to the configuration file).
    pub system_conf: PathBuf,
    /// Pid file of the running `relaybox clock` daemon, told to restart
    /// (SIGTERM; its supervisor starts it again) when the NTP servers
    /// change (`/run/relaybox/clock.pid`).
    pub clock_pid_file: PathBuf,
    /// The box's `network.conf` (WAN and LAN addresses) that the Network
    /// page edits (`network.conf` next to the configuration file).
    pub network_conf: PathBuf,
    /// Program run, without arguments, by the System page's Reboot button
    /// (`/usr/sbin/relaybox-reboot`: busybox's reboot, with the Raspberry
    /// Pi firmware's tryboot flag when a slot waits for it).
    pub reboot_command: PathBuf,
    /// Program the System page runs with the new host name as its one
    /// argument, to set the running host name (`/bin/hostname`).
    pub hostname_command: PathBuf,
    /// Most connections to each of the page's ports at once (64).
    pub max_connections: usize,
    /// Most connections to each of the page's ports from one address (an
    /// IPv6 /64) at once (8): a browser opens up to 6.
    pub max_connections_per_ip: usize,
    /// How long a client may take for its TLS handshake, and for each
    /// request's header (10 s).
    pub handshake_timeout: Duration,
    /// The box's firewall (`relaybox firewall`) opens the page's ports on
    /// the WAN interface too (no: the LAN side only).
    pub wan_access: bool,
    /// Program whose output the Logs page shows, run without arguments
    /// (`/sbin/logread`: busybox syslogd's ring buffer).
    pub log_command: PathBuf,
    /// The most of that output the Logs page reads and shows, its end
    /// (262144 bytes).
    pub log_max_bytes: usize,
    /// Where the box keeps the logs of this boot and the previous one
    /// (`current.log`, `previous.log`; `log` next to the configuration file).
    pub log_dir: PathBuf,
    /// Pid file of syslogd, restarted when the remote syslog host changes
    /// (`/run/relaybox/syslogd.pid`).
    pub syslog_pid_file: PathBuf,
    /// Largest backup the Backup page takes (1048576 bytes).
    pub max_backup: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig::defaults_in(Path::new(crate::DEFAULT_CONFIG_PATH).parent().unwrap_or(Path::new("/")))
    }
}

impl WebConfig {
    pub(crate) fn defaults_in(base: &Path) -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        WebConfig {
            listen: SocketAddr::new(any, 443),
            http_listen: Some(SocketAddr::new(any, 80)),
            session_timeout: Duration::from_secs(1800),
            max_body: 65_536,
            login_attempts: 5,
            lockout: Duration::from_secs(60),
            max_parallel_logins: 1,
            login_queue: 8,
            metrics: true,
            metrics_lan_only: false,
            system_conf: base.join("system.conf"),
            clock_pid_file: PathBuf::from("/run/relaybox/clock.pid"),
            network_conf: base.join("network.conf"),
            reboot_command: PathBuf::from(DEFAULT_REBOOT_COMMAND),
            hostname_command: PathBuf::from("/bin/hostname"),
            max_connections: 64,
            max_connections_per_ip: 8,
            handshake_timeout: Duration::from_secs(10),
            wan_access: false,
            log_command: PathBuf::from("/sbin/logread"),
            log_max_bytes: 262_144,
            log_dir: base.join("log"),
            syslog_pid_file: PathBuf::from("/run/relaybox/syslogd.pid"),
            max_backup: 1_048_576,
        }
    }
}

/// A listening address as [`value::listen_addr`], where port 0 (a port
/// the system picks, for tests) is allowed too.
fn web_addr(v: &str, default_port: u16) -> Parsed<SocketAddr> {
    match v.strip_suffix(":0") {
        Some(host) => value::listen_addr(host, default_port).map(|a| SocketAddr::new(a.ip(), 0)),
        None => value::listen_addr(v, default_port),
    }
}

impl WebConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "listen" => self.listen = web_addr(v, 443)?,
            "http_listen" => self.http_listen = if unset(v) { None } else { Some(web_addr(v, 80)?) },
            "session_timeout" => self.session_timeout = value::seconds(v, 60)?,
            "max_body" => self.max_body = value::count(v, 4096, 16 * MIB)? as usize,
            "login_attempts" => self.login_attempts = value::count(v, 1, 1000)? as u32,
            "lockout" => self.lockout = value::seconds(v, 1)?,
            "max_parallel_logins" => self.max_parallel_logins = value::count(v, 1, 16)? as usize,
            "login_queue" => self.login_queue = value::count(v, 0, 1024)? as usize,
            "metrics" => self.metrics = value::boolean(v)?,
            "metrics_lan_only" => self.metrics_lan_only = value::boolean(v)?,
            "system_conf" => self.system_conf = value::path(v, base)?,
            "clock_pid_file" => self.clock_pid_file = value::path(v, base)?,
            "network_conf" => self.network_conf = value::path(v, base)?,
            "reboot_command" => self.reboot_command = value::path(v, base)?,
            "hostname_command" => self.hostname_command = value::path(v, base)?,
            "max_connections" => self.max_connections = value::count(v, 1, 65_536)? as usize,
            "max_connections_per_ip" => self.max_connections_per_ip = value::count(v, 1, 65_536)? as usize,
            "handshake_timeout" => self.handshake_timeout = value::seconds(v, 1)?,
            "wan_access" => self.wan_access = value::boolean(v)?,
            "log_command" => self.log_command = value::path(v, base)?,
            "log_max_bytes" => self.log_max_bytes = value::count(v, 4096, 16 * MIB)? as usize,
            "log_dir" => self.log_dir = value::path(v, base)?,
            "syslog_pid_file" => self.syslog_pid_file = value::path(v, base)?,
            "max_backup" => self.max_backup = value::count(v, 65_536, 16 * MIB)? as usize,
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[Watchdog]` (relaybox): `relaybox watchdog`, which feeds the box's
/// hardware watchdog only while the relay answers on its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// The watchdog device (`/dev/watchdog`).
    pub device: PathBuf,
    /// The hardware timeout set on the device: the box resets this long
    /// after the last feed (30 s; 1 to 600).
    pub timeout: Duration,
    /// How often the relay is checked and the device fed (5 s; less than
    /// `timeout`).
    pub interval: Duration,
    /// How long the relay may be unhealthy (a restart, a reload) before the
    /// device is no longer fed (60 s). Counted only once the relay has been
    /// healthy since the watchdog started, so a relay that never starts
    /// (a broken configuration) does not reset the box again and again.
    pub grace: Duration,
    /// How long one health check may take (3 s).
    pub health_timeout: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            device: PathBuf::from("/dev/watchdog"),
            timeout: Duration::from_secs(30),
            interval: Duration::from_secs(5),
            grace: Duration::from_secs(60),
            health_timeout: Duration::from_secs(3),
        }
    }
}

impl WatchdogConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "device" => self.device = value::path(v, base)?,
            "timeout" => self.timeout = Duration::from_secs(value::count(v, 1, 600)?),
            "interval" => self.interval = Duration::from_secs(value::count(v, 1, 300)?),
            "grace" => self.grace = Duration::from_secs(value::count(v, 0, 86_400)?),
            "health_timeout" => self.health_timeout = Duration::from_secs(value::count(v, 1, 60)?),
            _ => return unknown(name),
        }
        Ok(())
    }
}

/// `[Update]` (relaybox): firmware updates of the box (`relaybox update`,
/// the web page's Update page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// The Ed25519 public key bundles must be signed with (PEM); the image
    /// carries it (`/etc/relaybox/update.pub`).
    pub public_key: PathBuf,
    /// The image's board name, version and boot scheme, written by the
    /// image builder (`/etc/relaybox/release`).
    pub release_file: PathBuf,
    /// Where init mounts the boot partition, read-only (`/boot`): the EFI
    /// system partition, or the Raspberry Pi's `autoboot.txt` partition.
    pub boot_dir: PathBuf,
    /// Boots a new slot gets before the box goes back to the old one (3;
    /// 1 to 9): systemd-boot's counter, or on a Raspberry Pi with
    /// `PI_TRY=counted` the boots init counts. The Pi firmware's tryboot
    /// always gives one.
    pub boot_tries: u32,
    /// How long a new slot has after init starts the services to become
    /// healthy (the relay answers its control socket, is connected to a
    /// dispatcher when dispatchers are configured, and the web page
    /// accepts connections) before the box reboots to try again or go
    /// back (300 s).
    pub health_timeout: Duration,
    /// Largest bundle accepted, in bytes, by upload or download (128 MiB).
    pub max_bundle_size: u64,
    /// A bundle download must be complete within this long (600 s).
    pub download_timeout: Duration,
    /// Where downloads and uploads are kept until installed
    /// (`/run/relaybox/update`, RAM).
    pub work_dir: PathBuf,
    /// Program run, without arguments, when a new slot is not healthy in
    /// time, and by `relaybox update install --reboot`
    /// (`/usr/sbin/relaybox-reboot`, as `[Web] reboot_command`).
    pub reboot_command: PathBuf,
}

/// The box's reboot (rootfs-overlay/usr/sbin/relaybox-reboot): busybox's
/// `reboot`, which a Raspberry Pi whose new slot waits for the firmware's
/// tryboot ends with the tryboot flag.
pub const DEFAULT_REBOOT_COMMAND: &str = "/usr/sbin/relaybox-reboot";

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            public_key: PathBuf::from("/etc/relaybox/update.pub"),
            release_file: PathBuf::from("/etc/relaybox/release"),
            boot_dir: PathBuf::from("/boot"),
            boot_tries: 3,
            health_timeout: Duration::from_secs(300),
            max_bundle_size: 128 * MIB,
            download_timeout: Duration::from_secs(600),
            work_dir: PathBuf::from("/run/relaybox/update"),
            reboot_command: PathBuf::from(DEFAULT_REBOOT_COMMAND),
        }
    }
}

impl UpdateConfig {
    pub(crate) fn set(&mut self, name: &str, v: &str, base: &Path) -> Parsed<()> {
        match name {
            "public_key" => self.public_key = value::path(v, base)?,
            "release_file" => self.release_file = value::path(v, base)?,
            "boot_dir" => self.boot_dir = value::path(v, base)?,
            "boot_tries" => self.boot_tries = value::count(v, 1, 9)? as u32,
            "health_timeout" => self.health_timeout = value::seconds(v, 10)?,
            "max_bundle_size" => self.max_bundle_size = value::count(v, MIB, 4096 * MIB)?,
            "download_timeout" => self.download_timeout = value::seconds(v, 10)?,
            "work_dir" => self.work_dir = value::path(v, base)?,
            "reboot_command" => self.reboot_command = value::path(v, base)?,
            _ => return unknown(name),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_redaction() {
        assert_eq!(redact_uri("mysql://mp:secret@db.example/mp"), "mysql://mp:***@db.example/mp");
        assert_eq!(redact_uri("mysql://mp@db.example/mp"), "mysql://mp@db.example/mp");
        assert_eq!(redact_uri("sqlite:///var/lib/mp.db"), "sqlite:///var/lib/mp.db");
        let db = DatabaseConfig { dburi: Some("mysql://u:pw@h/d".into()), ..Default::default() };
        let shown = format!("{db:?}");
        assert!(!shown.contains("pw") && shown.contains("u:***@h/d"), "{shown}");
    }

    #[test]
    fn dburi_errors_do_not_echo_the_value() {
        let e = dburi("not a uri with s3cret").unwrap_err();
        assert!(!e.0.contains("s3cret"));
        assert_eq!(dburi("None"), Ok(None));
        assert_eq!(dburi("sqlite:/var/lib/x.db"), Ok(Some("sqlite:/var/lib/x.db".into())));
    }

    #[test]
    fn datapath_modes() {
        let base = Path::new("/etc/relaybox");
        let mut r = RelayConfig::default();
        assert_eq!(r.datapath, DatapathMode::Auto);
        for (text, mode) in
            [("kernel", DatapathMode::Kernel), ("USERSPACE", DatapathMode::Userspace), ("auto", DatapathMode::Auto)]
        {
            assert_eq!(r.set("datapath", text, base), Ok(()));
            assert_eq!(r.datapath, mode);
            assert_eq!(mode.to_string().parse::<DatapathMode>(), Ok(mode));
        }
        let e = r.set("datapath", "ebpf", base).unwrap_err();
        assert_eq!(e.0, "expected auto, kernel or userspace, got \"ebpf\"");
    }

    #[test]
    fn every_known_option_has_a_setter() {
        let base = Path::new("/etc/relaybox");
        let sample_value = |name: &str| match name {
            "dispatchers" => "a.example",
            "passport" | "management_passport" => "CN:x",
            "relay_ip" | "advertised_ip" | "node_ip" => "192.0.2.1",
            "port_range" => "40000:40100",
            "auto_detect_interfaces"
            | "management_use_tls"
            | "management_allow_anonymous"
            | "end_adopted_dialogs"
            | "accept_unmarked_certificates" => "yes",
            "proxy" => "kamailio",
            "transport" => "fifo",
            "url" => "http://127.0.0.1:8888/mi",
            "reply_mode" => "0660",
            "reply_owner" | "reply_group" => "opensips",
            "reply_timeout" => "2.5",
            "routable_private_ranges" | "signaling_proxies" => "10.0.0.0/8",
            "latching_window" => "2.5",
            "log_level" => "INFO",
            "listen" | "listen_management" | "http_listen" | "metrics_listen" => "127.0.0.1",
            "socket_group" => "kamailio",
            "socket_mode" => "0660",
            "metrics" | "metrics_lan_only" | "wan_access" => "no",
            "device" => "/dev/watchdog",
            "session_timeout" => "600",
            "max_body" | "log_max_bytes" => "8192",
            "max_backup" => "65536",
            "log_command" | "log_dir" => "x",
            "accounting" => "radius",
            "dburi" => "mysql://a:b@c/d",
            "domain" => "thor.example",
            "module_timeout" | "management_refresh_interval" => "0.5",
            "datapath" => "kernel",
            "reply_dir" => "run",
            "max_line_length" | "max_request_size" | "max_relay_line" => "4096",
            "boot_tries" => "2",
            "max_bundle_size" => "2097152",
            "health_timeout" | "download_timeout" => "60",
            "public_key" | "boot_dir" | "work_dir" | "reboot_command" => "x",
            n if n.ends_with("_path")
                || n.ends_with("_file")
                || n.ends_with("_conf")
                || n == "additional_dictionary" =>
            {
                "x"
            }
            n if n.ends_with("_table") || n.ends_with("_column") => "t",
            _ => "7",
        };
        for o in KNOWN_OPTIONS {
            let v = sample_value(o.name);
            let r = match o.section {
                "Relay" => RelayConfig::default().set(o.name, v, base),
                "Dispatcher" => DispatcherConfig::default().set(o.name, v),
                "TLS" => TlsConfig::default().set(o.name, v, base),
                "Database" => DatabaseConfig::default().set(o.name, v),
                "Radius" => RadiusConfig::default().set(o.name, v, base),
                "OpenSIPS" => OpenSipsConfig::default().set(o.name, v, base),
                "ThorNetwork" => ThorNetworkConfig::default().set(o.name, v),
                "Web" => WebConfig::default().set(o.name, v, base),
                "Update" => UpdateConfig::default().set(o.name, v, base),
                "Watchdog" => WatchdogConfig::default().set(o.name, v, base),
                s => panic!("section {s} not in SECTIONS"),
            };
            assert_eq!(r, Ok(()), "[{}] {} = {v}", o.section, o.name);
            assert!(SECTIONS.contains(&o.section));
        }
        for (section, old, new) in RENAMED {
            assert!(options_of(section).any(|n| n == *new), "{old} -> {new}");
        }
    }
}
