//! relaybox-config against whole files: MediaProxy's own, an empty one,
//! relaybox's sample, and a table of broken ones.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use relaybox_config::{
    AccountingBackend, Config, HostPort, LogLevel, Passport, PortRange, DEFAULT_CONFIG_PATH, KNOWN_OPTIONS,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mediaproxy-config.ini");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.ini.sample");

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn parse(text: &str) -> Result<Config, relaybox_config::ConfigError> {
    Config::parse(text, "config.ini", Path::new("/etc/relaybox"))
}

#[test]
fn mediaproxy_sample_with_every_option_set_loads() {
    let c = Config::load(Path::new(FIXTURE)).unwrap();
    let dir = Path::new(FIXTURE).parent().unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let r = &c.relay;
    assert_eq!(
        r.dispatchers,
        [HostPort { host: "example.com".into(), port: 25060 }, HostPort { host: "1.2.3.4".into(), port: 12345 }]
    );
    assert_eq!(r.passport, None);
    assert_eq!(r.relay_ip, Some(ip("192.0.2.10")));
    assert_eq!(r.advertised_ip, Some(ip("203.0.113.5")));
    assert_eq!(r.port_range, PortRange { start: 50000, end: 60000 });
    assert_eq!(r.stream_timeout, secs(90));
    assert_eq!(r.on_hold_timeout, secs(7200));
    assert_eq!(r.dns_check_interval, secs(60));
    assert_eq!(r.keepalive_interval, secs(10));
    assert_eq!(r.reconnect_delay, secs(10));
    assert_eq!(r.traffic_sampling_period, secs(15));
    assert_eq!(r.userspace_transmit_every, 1);
    assert!(!r.auto_detect_interfaces);
    assert!(r.routable_private_ranges.is_empty());
    assert_eq!(r.log_level, LogLevel::Debug);

    let d = &c.dispatcher;
    assert_eq!(d.socket_path, PathBuf::from("/var/run/mediaproxy/dispatcher.sock"));
    assert_eq!(d.listen, addr("0.0.0.0:25060"));
    assert_eq!(d.listen_management, addr("0.0.0.0:25061"));
    assert!(d.management_use_tls);
    assert_eq!((&d.passport, &d.management_passport), (&None, &None));
    assert_eq!(d.relay_timeout, secs(5));
    assert_eq!(d.relay_recover_interval, secs(60));
    assert_eq!(d.cleanup_dead_relays_after, secs(43200));
    assert_eq!(d.cleanup_expired_sessions_after, secs(86400));
    assert!(d.accounting.is_empty());
    assert_eq!(d.log_level, LogLevel::Debug);

    assert_eq!(c.tls.certs_path, dir.join("tls"));
    assert_eq!(c.tls.verify_interval, secs(300));
    assert_eq!(c.database.dburi, None);
    assert_eq!(c.database.sessions_table, "media_sessions");
    assert_eq!(c.radius.config_file, PathBuf::from("/etc/opensips/radius/client.conf"));
    assert_eq!(c.radius.additional_dictionary, Some(dir.join("radius/dictionary")));
    assert_eq!(c.opensips.socket_path, PathBuf::from("/var/run/opensips/socket"), "quotes from the sample removed");
    assert_eq!(c.opensips.max_connections, 10);
    assert_eq!(c.opensips.location_table, "location");
    assert_eq!(c.thor_network.domain, None);
    assert_eq!(c.thor_network.node_ip, Some(ip("192.0.2.10")));

    // Apart from the addresses that have no writable default, and the port
    // range whose default relaybox changes, the file is all defaults.
    let mut expected = Config::parse("", "defaults", dir).unwrap();
    expected.relay.dispatchers = c.relay.dispatchers.clone();
    expected.relay.relay_ip = c.relay.relay_ip;
    expected.relay.advertised_ip = c.relay.advertised_ip;
    expected.relay.port_range = PortRange { start: 50000, end: 60000 };
    expected.thor_network.node_ip = c.thor_network.node_ip;
    expected.opensips.socket_path = c.opensips.socket_path.clone();
    assert_eq!(c, expected);
}

#[test]
fn every_default_of_an_empty_file() {
    let c = Config::parse("; nothing set\n", "empty.ini", Path::new("/etc/mediaproxy")).unwrap();
    let r = &c.relay;
    assert!(r.dispatchers.is_empty());
    assert_eq!(r.passport, None);
    assert_eq!(r.relay_ip, None);
    assert_eq!(r.advertised_ip, None);
    assert_eq!(r.stream_timeout, secs(90));
    assert_eq!(r.on_hold_timeout, secs(7200));
    assert_eq!(r.traffic_sampling_period, secs(15));
    assert_eq!(r.userspace_transmit_every, 1);
    assert_eq!(r.dns_check_interval, secs(60));
    assert_eq!(r.keepalive_interval, secs(10));
    assert_eq!(r.reconnect_delay, secs(10));
    assert_eq!(r.port_range, PortRange { start: 40000, end: 60000 });
    assert_eq!(r.log_level, LogLevel::Debug);
    assert!(!r.auto_detect_interfaces);
    assert!(r.routable_private_ranges.is_empty());
    assert_eq!(r.max_sessions, 10_000);
    assert_eq!(r.max_streams_per_session, 16);
    assert_eq!(r.max_line_length, 65_536);
    assert_eq!(r.state_file, PathBuf::from("/var/lib/relaybox/sessions.bin"));
    assert_eq!(r.datapath, relaybox_config::DatapathMode::Auto);
    assert_eq!(r.latching_window, secs(3));
    assert!(r.signaling_proxies.is_empty());

    let d = &c.dispatcher;
    assert_eq!(d.socket_path, PathBuf::from("/var/run/mediaproxy/dispatcher.sock"));
    assert_eq!(d.listen, addr("0.0.0.0:25060"));
    assert_eq!(d.listen_management, addr("0.0.0.0:25061"));
    assert!(d.management_use_tls);
    assert_eq!(d.management_passport, None);
    assert_eq!(d.passport, None);
    assert_eq!(d.relay_timeout, secs(5));
    assert_eq!(d.relay_recover_interval, secs(60));
    assert!(d.accounting.is_empty());
    assert_eq!(d.cleanup_dead_relays_after, secs(43_200));
    assert_eq!(d.cleanup_expired_sessions_after, secs(86_400));
    assert_eq!(d.log_level, LogLevel::Debug);
    assert_eq!(d.max_request_size, 16_384);
    assert_eq!(d.max_module_connections, 1024);
    assert_eq!(d.max_relay_line, 16 * 1024 * 1024);
    assert_eq!(d.module_timeout, Duration::from_millis(500));

    assert_eq!(c.tls.certs_path, PathBuf::from("/etc/mediaproxy/tls"));
    assert_eq!(c.tls.verify_interval, secs(300));

    let db = &c.database;
    assert_eq!(db.dburi, None);
    assert_eq!(
        [&db.sessions_table, &db.callid_column, &db.fromtag_column, &db.totag_column, &db.info_column],
        ["media_sessions", "call_id", "from_tag", "to_tag", "info"]
    );
    assert_eq!(db.start_time_column, None);

    assert_eq!(c.radius.config_file, PathBuf::from("/etc/opensips/radius/client.conf"));
    assert_eq!(c.radius.additional_dictionary, Some(PathBuf::from("/etc/mediaproxy/radius/dictionary")));
    assert_eq!(c.opensips.socket_path, PathBuf::from("/run/opensips/socket"));
    assert_eq!(c.opensips.max_connections, 10);
    assert_eq!(c.opensips.location_table, "location");
    assert_eq!(c.thor_network.domain, None);
    assert_eq!(c.thor_network.node_ip, None);
    assert!(c.warnings.is_empty());

    assert_eq!(Config::default(), Config::parse("", "x", Path::new("/etc/relaybox")).unwrap());
    assert_eq!(Path::new(DEFAULT_CONFIG_PATH), Path::new("/etc/relaybox/config.ini"));
}

#[test]
fn values_people_write() {
    let c = parse(
        "[Relay]\n\
         dispatchers = a.example:1, [2001:db8::1]:2\n    b.example\n\
         passport = O:Example Ltd, CN:*dispatcher\n\
         relay_ip = 0.0.0.0\n\
         advertised_ip = 198.51.100.1\n\
         auto_detect_interfaces = ON\n\
         routable_private_ranges = 10.8.0.0/16 192.168.5.7\n\
         latching_window = 0.5\n\
         signaling_proxies = 198.51.100.0/24, 2001:db8::1\n\
         log_level = warning\n\
         state_file = state/sessions.bin\n\
         [Dispatcher]\n\
         Listen: 127.0.0.1\n\
         listen_management = [::1]:4000\n\
         accounting = radius,database\n\
         management_use_tls = 0\n\
         module_timeout = 0.25\n\
         socket_path = /tmp/mp.sock\n\
         [Database]\n\
         dburi = mysql://mediaproxy:CHANGEME@localhost/mediaproxy\n\
         [Radius]\n\
         additional_dictionary = None\n",
    )
    .unwrap();
    let shown: Vec<String> = c.relay.dispatchers.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["a.example:1", "[2001:db8::1]:2", "b.example:25060"]);
    assert_eq!(c.relay.passport, Some(Passport::parse("O:Example Ltd, CN:*dispatcher").unwrap()));
    assert_eq!(c.relay.relay_ip, Some(ip("0.0.0.0")));
    assert!(c.relay.auto_detect_interfaces);
    let nets: Vec<String> = c.relay.routable_private_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.8.0.0/16", "192.168.5.7/32"]);
    assert_eq!(c.relay.latching_window, Duration::from_millis(500));
    let proxies: Vec<String> = c.relay.signaling_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(proxies, ["198.51.100.0/24", "2001:db8::1/128"]);
    assert_eq!(c.relay.log_level.as_tracing_filter(), "warn");
    assert_eq!(c.relay.state_file, PathBuf::from("/etc/relaybox/state/sessions.bin"));
    assert_eq!(c.dispatcher.listen, addr("127.0.0.1:25060"));
    assert_eq!(c.dispatcher.listen_management, addr("[::1]:4000"));
    assert_eq!(c.dispatcher.accounting, [AccountingBackend::Radius, AccountingBackend::Database]);
    assert!(!c.dispatcher.management_use_tls);
    assert_eq!(c.dispatcher.module_timeout, Duration::from_millis(250));
    assert_eq!(c.dispatcher.socket_path, PathBuf::from("/tmp/mp.sock"));
    assert_eq!(c.radius.additional_dictionary, None);
    let debug = format!("{c:?}");
    assert!(!debug.contains("CHANGEME"), "Debug shows the database password");
}

#[test]
fn mediaproxy_2_0_names_load_with_warnings() {
    let c = parse(
        "[Relay]\nstats_collect_interval = 30\n\
         [Dispatcher]\nsocket = /var/run/mediaproxy/dispatcher.sock\ncleanup_timeout = 3600\n\
         [Database]\nstart_time_column = start_time\n",
    )
    .unwrap();
    assert_eq!(c.relay.traffic_sampling_period, secs(30));
    assert_eq!(c.dispatcher.socket_path, PathBuf::from("/var/run/mediaproxy/dispatcher.sock"));
    assert_eq!(c.dispatcher.cleanup_dead_relays_after, secs(3600));
    assert_eq!(c.database.start_time_column.as_deref(), Some("start_time"));
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "config.ini:2: [Relay] stats_collect_interval: `stats_collect_interval` is MediaProxy 2.0's name for \
             `traffic_sampling_period`; rename it",
            "config.ini:4: [Dispatcher] socket: `socket` is MediaProxy 2.0's name for `socket_path`; rename it",
            "config.ini:5: [Dispatcher] cleanup_timeout: `cleanup_timeout` is MediaProxy 2.0's name for \
             `cleanup_dead_relays_after`; rename it",
            "config.ini:7: [Database] start_time_column: MediaProxy 2.0 setting; ignored (the start time is in \
             the info JSON)",
        ]
    );
}

/// Each broken file, and the exact message: file, line, section, option, why.
#[test]
fn malformed_files_name_file_line_section_and_option() {
    let cases: &[(&str, &str)] = &[
        ("port_range = 40000:60000\n", "config.ini:1: option `port_range` is outside any section; put it under a header such as [Relay]"),
        ("[Relay]\nport_range = 40001:60000\n", "config.ini:2: [Relay] port_range: start must be even (got 40001)"),
        ("[Relay]\nport_range = 40000:60001\n", "config.ini:2: [Relay] port_range: end must be even (got 60001)"),
        ("[Relay]\nport_range = 1000:2000\n", "config.ini:2: [Relay] port_range: start must be at least 1024 (got 1000)"),
        ("[Relay]\nport_range = 60000:40000\n", "config.ini:2: [Relay] port_range: start must be below end (got 60000:40000)"),
        ("[Relay]\nport_range = 40000\n", "config.ini:2: [Relay] port_range: expected start:end such as 40000:60000, got \"40000\""),
        ("[Relay]\n\nstream_timeout = 90\nstream_timeout = 60\n", "config.ini:4: [Relay] stream_timeout: set twice (first at line 3)"),
        ("[Relay]\nstream_timeout = 1.5\n", "config.ini:2: [Relay] stream_timeout: expected a whole number, got 1.5 (seconds)"),
        ("[Relay]\nstream_timeout = 0\n", "config.ini:2: [Relay] stream_timeout: must be at least 1 second (got 0)"),
        ("[Relay]\nstream_timeout = -5\n", "config.ini:2: [Relay] stream_timeout: must not be negative (got -5) (seconds)"),
        ("[Relay]\nreconnect_delay = soon\n", "config.ini:2: [Relay] reconnect_delay: expected a number, got \"soon\" (seconds)"),
        ("[Relay]\nstream_timout = 90\n", "config.ini:2: [Relay] stream_timout: unknown option; did you mean `stream_timeout`?"),
        ("[Relay]\nlisten = 0.0.0.0\n", "config.ini:2: [Relay] listen: unknown option here; `listen` belongs in [Dispatcher] or [Web]"),
        ("[Relay]\nfrobnicate = 1\n", "config.ini:2: [Relay] frobnicate: unknown option; [Relay] takes dispatchers, passport, relay_ip, advertised_ip, port_range, stream_timeout, on_hold_timeout, dns_check_interval, keepalive_interval, reconnect_delay, traffic_sampling_period, userspace_transmit_every, auto_detect_interfaces, routable_private_ranges, log_level, max_sessions, max_streams_per_session, max_line_length, state_file, control_socket, datapath, latching_window, signaling_proxies, io_threads"),
        ("[relay]\n", "config.ini:1: unknown section [relay]; did you mean [Relay]? (section names are case-sensitive)"),
        ("[Relay]\n[Proxy]\n", "config.ini:2: unknown section [Proxy]; the sections are [Relay], [Dispatcher], [TLS], [Database], [Radius], [OpenSIPS], [ThorNetwork], [Web], [Update], [Watchdog]"),
        ("[Relay]\n[TLS]\n[Relay]\n", "config.ini:3: section [Relay] appears twice (first at line 1)"),
        ("[Relay\n", "config.ini:1: section header has no closing `]`"),
        ("[Relay]\nauto_detect_interfaces\n", "config.ini:2: [Relay] expected `name = value` or a `[Section]` header, got \"auto_detect_interfaces\""),
        ("[Relay]\nauto_detect_interfaces = maybe\n", "config.ini:2: [Relay] auto_detect_interfaces: expected yes/no, true/false, on/off or 1/0, got \"maybe\""),
        ("[Relay]\nrelay_ip = 10.0.0.300\n", "config.ini:2: [Relay] relay_ip: expected an IP address, got \"10.0.0.300\""),
        ("[Relay]\nadvertised_ip = 0.0.0.0\n", "config.ini:2: [Relay] advertised_ip: an unspecified address cannot be advertised"),
        ("[Relay]\nrelay_ip = 0.0.0.0\n", "config.ini:2: [Relay] relay_ip: an unspecified address cannot be offered to phones: set advertised_ip too, or leave relay_ip unset to use the default-route address"),
        ("[Relay]\nrelay_ip = 2001:db8::1\nadvertised_ip = 203.0.113.5\n", "config.ini:3: [Relay] advertised_ip: 203.0.113.5 is IPv4 but relay_ip 2001:db8::1 is IPv6: phones would be offered an address of another family than the relay's media sockets; use one family for both"),
        ("[Relay]\nadvertised_ip = 2001:db8::5\n\nrelay_ip = 192.0.2.1\n", "config.ini:2: [Relay] advertised_ip: 2001:db8::5 is IPv6 but relay_ip 192.0.2.1 is IPv4: phones would be offered an address of another family than the relay's media sockets; use one family for both"),
        ("[Relay]\nrelay_ip = ::\nadvertised_ip = 203.0.113.5\n", "config.ini:3: [Relay] advertised_ip: 203.0.113.5 is IPv4 but relay_ip :: is IPv6: phones would be offered an address of another family than the relay's media sockets; use one family for both"),
        ("[Relay]\npassport = CN:re\u{7}lay\n", "config.ini:2: [Relay] passport: passport contains the control character U+0007; a passport is one line of printable text (write None for no passport)"),
        ("[Dispatcher]\npassport = O:Example,\tCN:relay\n", "config.ini:2: [Dispatcher] passport: passport contains the control character U+0009; a passport is one line of printable text (write None for no passport)"),
        ("[Dispatcher]\nmanagement_passport = CN:x\n  CN:y\n", "config.ini:2: [Dispatcher] management_passport: passport contains the control character U+000A; a passport is one line of printable text (write None for no passport)"),
        ("[Relay]\ndispatchers = example.com:0\n", "config.ini:2: [Relay] dispatchers: dispatcher port must be between 1 and 65535 (got 0)"),
        ("[Relay]\ndispatchers = ok.example bad!host\n", "config.ini:2: [Relay] dispatchers: \"bad!host\" is neither an IP address nor a host name"),
        ("[Relay]\npassport = CN\n", "config.ini:2: [Relay] passport: passport item \"CN\" is not ATTR:value (write None for no passport)"),
        ("[Relay]\npassport = XX:y\n", "config.ini:2: [Relay] passport: passport attribute \"XX\" is not one of O, OU, CN, C, L, ST, EMAIL (write None for no passport)"),
        ("[Relay]\nlog_level = verbose\n", "config.ini:2: [Relay] log_level: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got \"verbose\""),
        ("[Relay]\nroutable_private_ranges = 10.0.0.0/33\n", "config.ini:2: [Relay] routable_private_ranges: \"10.0.0.0/33\" is not an address or a network such as 10.0.0.0/8"),
        ("[Relay]\nlatching_window = 61\n", "config.ini:2: [Relay] latching_window: must be between 0 and 60 seconds (got 61)"),
        ("[Relay]\nsignaling_proxies = proxy.example\n", "config.ini:2: [Relay] signaling_proxies: \"proxy.example\" is not an address or a network such as 10.0.0.0/8"),
        ("[Relay]\nuserspace_transmit_every = 0\n", "config.ini:2: [Relay] userspace_transmit_every: must be between 1 and 4294967295 (got 0)"),
        ("[Relay]\nmax_streams_per_session = 0\n", "config.ini:2: [Relay] max_streams_per_session: must be between 1 and 128 (got 0)"),
        ("[Dispatcher]\naccounting = database, mysql\n", "config.ini:2: [Dispatcher] accounting: unknown accounting backend \"mysql\"; the backends are database and radius"),
        ("[Dispatcher]\naccounting = database\n", "config.ini:2: [Dispatcher] accounting: database accounting needs [Database] dburi"),
        ("[Dispatcher]\nlisten = localhost\n", "config.ini:2: [Dispatcher] listen: expected ip[:port] or any[:port], got \"localhost\" (host names are not resolved)"),
        ("[Dispatcher]\nlisten = 0.0.0.0:25061\n", "config.ini:2: [Dispatcher] listen: the relay port 0.0.0.0:25061 and the management port 0.0.0.0:25061 collide"),
        ("[Dispatcher]\nlisten_management = 10.0.0.1:25060\n", "config.ini:2: [Dispatcher] listen_management: the relay port 0.0.0.0:25060 and the management port 10.0.0.1:25060 collide"),
        ("[Dispatcher]\nmanagement_passport = CN:ops\nmanagement_allow_anonymous = yes\n", "config.ini:3: [Dispatcher] management_allow_anonymous: management_passport requires a client certificate; remove one of the two"),
        ("[Dispatcher]\nsocket = /a.sock\nsocket_path = /b.sock\n", "config.ini:3: [Dispatcher] socket_path: set twice (first at line 2)"),
        ("[Dispatcher]\nsocket_path = /b.sock\nsocket = /a.sock\n", "config.ini:3: [Dispatcher] socket: `socket` is the old name of `socket_path`, already set at line 2"),
        ("[Dispatcher]\nsocket_path =\n", "config.ini:2: [Dispatcher] socket_path: a path is required"),
        ("[Dispatcher]\nmodule_timeout = 500ms\n", "config.ini:2: [Dispatcher] module_timeout: expected seconds such as 0.5 or 2, got \"500ms\""),
        ("[Dispatcher]\nmax_request_size = 100\n", "config.ini:2: [Dispatcher] max_request_size: must be between 1024 and 16777216 (got 100)"),
        ("[TLS]\nverify_interval = 0\n", "config.ini:2: [TLS] verify_interval: must be at least 1 second (got 0)"),
        ("[Database]\ndburi = localhost with s3cret\n", "config.ini:2: [Database] dburi: expected a URI such as mysql://user:password@host/database"),
        ("[Database]\nsessions_table = media-sessions\n", "config.ini:2: [Database] sessions_table: expected an SQL name of letters, digits and `_` (at most 64, not starting with a digit), got \"media-sessions\""),
        ("[OpenSIPS]\nmax_connections = 0\n", "config.ini:2: [OpenSIPS] max_connections: must be between 1 and 1000 (got 0)"),
        ("[ThorNetwork]\nnode_ip = thor\n", "config.ini:2: [ThorNetwork] node_ip: expected an IP address, got \"thor\""),
        ("[Watchdog]\ntimeout = 10\ninterval = 10\n", "config.ini:3: [Watchdog] interval: interval 10 s must be shorter than timeout 10 s, or the box resets between two feeds"),
        ("[Web]\nwan_access = maybe\n", "config.ini:2: [Web] wan_access: expected yes/no, true/false, on/off or 1/0, got \"maybe\""),
    ];
    for (text, expected) in cases {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => assert_eq!(e.to_string(), *expected, "for:\n{text}"),
        }
    }

    // The parts are also there as fields, for a caller that wants them.
    let e = parse("[Relay]\n\nport_range = 40001:60000\n").unwrap_err();
    assert_eq!(e.origin, "config.ini");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.section.as_deref(), Some("Relay"));
    assert_eq!(e.option.as_deref(), Some("port_range"));
    assert_eq!(e.reason, "start must be even (got 40001)");
}

#[test]
fn the_sample_documents_every_option_with_its_default() {
    let text = std::fs::read_to_string(SAMPLE).unwrap();
    let base = Path::new("/etc/relaybox");
    let defaults = Config::parse("", "defaults", base).unwrap();
    assert_eq!(Config::parse(&text, "config.ini.sample", base).unwrap(), defaults);

    // Uncomment every ";name = value" line that names an option of its
    // section: the result must still be exactly the defaults.
    let mut section = String::new();
    let mut uncommented = String::new();
    let mut documented: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        }
        let option = line.strip_prefix(';').and_then(|l| l.split_once(" =")).map(|(name, _)| name);
        match option {
            Some(name) if KNOWN_OPTIONS.iter().any(|o| o.section == section && o.name == name) => {
                documented.push((section.clone(), name.to_string()));
                uncommented.push_str(&line[1..]);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    assert_eq!(Config::parse(&uncommented, "uncommented", base).unwrap(), defaults);

    for o in KNOWN_OPTIONS {
        let count = documented.iter().filter(|(s, n)| s == o.section && n == o.name).count();
        assert_eq!(count, 1, "[{}] {} is documented {count} times in the sample", o.section, o.name);
    }
    assert_eq!(documented.len(), KNOWN_OPTIONS.len());

    // Extensions say so in the comment right above them; MediaProxy's don't.
    let lines: Vec<&str> = text.lines().collect();
    for o in KNOWN_OPTIONS {
        let section_at = lines.iter().position(|l| *l == format!("[{}]", o.section)).unwrap();
        let at =
            section_at + lines[section_at..].iter().position(|l| l.starts_with(&format!(";{} =", o.name))).unwrap();
        let comment_start = (0..at).rev().take_while(|&i| lines[i].starts_with(';')).last().unwrap_or(at);
        let marked = lines[comment_start].starts_with("; [relaybox]");
        assert_eq!(marked, o.extension, "[{}] {}: [relaybox] mark", o.section, o.name);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relaybox-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_resolves_relative_paths_against_the_file() {
    let dir = temp_dir("paths");
    let file = dir.join("config.ini");
    std::fs::write(
        &file,
        "[TLS]\ncerts_path = certs\n[Radius]\nconfig_file = radius/client.conf\n\
         [OpenSIPS]\nsocket_path = run/opensips.sock\n[Dispatcher]\nsocket_path = mp.sock\n",
    )
    .unwrap();
    let c = Config::load(&file).unwrap();
    assert_eq!(c.tls.certs_path, dir.join("certs"));
    assert_eq!(c.radius.config_file, dir.join("radius/client.conf"));
    assert_eq!(c.radius.additional_dictionary, Some(dir.join("radius/dictionary")));
    assert_eq!(c.opensips.socket_path, dir.join("run/opensips.sock"));
    assert_eq!(c.dispatcher.socket_path, PathBuf::from("/var/run/mediaproxy/mp.sock"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir("errors");
    let missing = dir.join("missing.ini");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(e.line, None);
    assert!(e.to_string().starts_with(&format!("{}: cannot read the file: ", missing.display())), "{e}");

    let binary = dir.join("binary.ini");
    std::fs::write(&binary, b"[Relay]\nstream_timeout = 90\nrelay_ip = \xff\n").unwrap();
    let e = Config::load(&binary).unwrap_err();
    assert_eq!(e.to_string(), format!("{}:3: the file is not UTF-8 text", binary.display()));

    let bad = dir.join("bad.ini");
    std::fs::write(&bad, "[Relay]\nport_range = 40001:60000\n").unwrap();
    let e = Config::load(&bad).unwrap_err();
    assert_eq!(e.to_string(), format!("{}:2: [Relay] port_range: start must be even (got 40001)", bad.display()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn web_section_defaults_values_and_errors() {
    let c = parse("").unwrap();
    let w = &c.web;
    assert_eq!(w.listen, addr("0.0.0.0:443"));
    assert_eq!(w.http_listen, Some(addr("0.0.0.0:80")));
    assert_eq!(w.session_timeout, secs(1800));
    assert_eq!(w.max_body, 65_536);
    assert_eq!(w.login_attempts, 5);
    assert_eq!(w.lockout, secs(60));
    assert!(w.metrics);
    assert!(!w.metrics_lan_only);
    assert_eq!(c.relay.control_socket, PathBuf::from("/run/relaybox/relay.sock"));

    let c = parse(
        "[Relay]\ncontrol_socket = run/relay.sock\n[Web]\nlisten = 127.0.0.1:8443\nhttp_listen = None\n\
         session_timeout = 600\nmax_body = 8192\nlogin_attempts = 3\nlockout = 5\nmetrics = no\nmetrics_lan_only = yes\n",
    )
    .unwrap();
    let w = &c.web;
    assert_eq!(w.listen, addr("127.0.0.1:8443"));
    assert_eq!(w.http_listen, None);
    assert_eq!(w.session_timeout, secs(600));
    assert_eq!(w.max_body, 8192);
    assert_eq!((w.login_attempts, w.lockout), (3, secs(5)));
    assert!(!w.metrics && w.metrics_lan_only);
    assert!(c.relay.control_socket.ends_with("run/relay.sock") && c.relay.control_socket.is_absolute());
    assert_eq!(parse("[Web]\nlisten = 10.0.0.1\nhttp_listen = any\n").unwrap().web.listen, addr("10.0.0.1:443"));
    assert_eq!(parse("[Web]\nhttp_listen = 10.0.0.1\n").unwrap().web.http_listen, Some(addr("10.0.0.1:80")));
    assert_eq!(
        parse("[Web]\nlisten = 127.0.0.1:0\nhttp_listen = 127.0.0.1:0\n").unwrap().web.listen,
        addr("127.0.0.1:0")
    );

    for (text, message) in [
        ("[Web]\nlisten = example.com\n", "config.ini:2: [Web] listen: expected ip[:port]"),
        ("[Web]\nmax_body = 10\n", "config.ini:2: [Web] max_body: must be between 4096 and"),
        ("[Web]\nlogin_attempts = 0\n", "config.ini:2: [Web] login_attempts: must be between 1 and 1000"),
        ("[Web]\nsession_timeout = 5\n", "config.ini:2: [Web] session_timeout: must be at least 60 seconds"),
        ("[Web]\nmetrics = maybe\n", "config.ini:2: [Web] metrics: expected yes/no"),
        ("[Web]\nlisten = 0.0.0.0:80\n", "config.ini: [Web] http_listen: the HTTPS address 0.0.0.0:80 and the HTTP"),
        ("[Web]\nlisten = 0.0.0.0:8443\nhttp_listen = :8443\n", "config.ini:3: [Web] http_listen: the HTTPS"),
        (
            "[Web]\ncontrol_socket = x\n",
            "config.ini:2: [Web] control_socket: unknown option here; `control_socket` belongs in [Relay]",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with(message), "{text:?}: {e}");
    }
}
