//! Our binaries under test: where to find them, the demo certificates, the
//! MediaProxy-style `config.ini` for the dispatcher and each relay, the
//! running daemons, and a client for the management interface.
//!
//! Contract with the binaries (see SPEC.md and the e2e brief):
//! - `relaybox-ca demo --out DIR` writes DIR/certs/{ca.pem, crl.pem,
//!   relay.crt, relay.key, dispatcher.crt, dispatcher.key};
//! - `relaybox dispatcher --config FILE` and `relaybox relay --config FILE`
//!   run in the foreground and log to stderr;
//! - the dispatcher logs every finished session with the word `accounted`
//!   and the call_id on one line;
//! - management (plain TCP with `management_use_tls = no`): `sessions\r\n`
//!   and `summary\r\n` answer one line of JSON.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::netns::Netns;
use crate::process::{CommandLine, Process, POLL};
use crate::topology::{SRV_IP, SRV_IP2, SRV_IP3};

/// Set to 1 to make missing binaries a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "RELAYBOX_E2E_REQUIRE_BINARIES";
/// Overrides the directory the binaries are taken from.
pub const BIN_DIR_ENV: &str = "RELAYBOX_BIN_DIR";

/// Port the dispatcher listens on for relays (SPEC 2).
pub const RELAY_LINK_PORT: u16 = 25060;
/// Port of the management interface (SPEC 3).
pub const MANAGEMENT_PORT: u16 = 25061;

/// Paths of `relaybox` and `relaybox-ca`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub relaybox: PathBuf,
    pub relaybox_ca: PathBuf,
}

/// Where cargo put the binaries of the profile this test was built with:
/// `$RELAYBOX_BIN_DIR`; else the parent of the test executable's `deps/`
/// directory (`target/debug`); else `$CARGO_TARGET_DIR/debug` or the
/// workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return dir.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(deps) = exe.parent().filter(|p| p.ends_with("deps")) {
            if let Some(profile) = deps.parent() {
                return profile.to_owned();
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug")
}

impl Binaries {
    /// Finds both binaries and checks that they are the real thing (the
    /// `relaybox` help mentions its `dispatcher` and `relay` commands);
    /// the error says what is missing.
    pub fn locate() -> Result<Binaries> {
        let dir = bin_dir();
        let bins = Binaries { relaybox: dir.join("relaybox"), relaybox_ca: dir.join("relaybox-ca") };
        for b in [&bins.relaybox, &bins.relaybox_ca] {
            if !b.is_file() {
                bail!("{} does not exist (cargo build --workspace --bins)", b.display());
            }
        }
        let help = Command::new(&bins.relaybox).arg("--help").output();
        let text = match &help {
            Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            Err(e) => bail!("cannot run {}: {e}", bins.relaybox.display()),
        };
        if !(text.contains("dispatcher") && text.contains("relay")) {
            bail!("`{} --help` does not list the dispatcher and relay commands yet", bins.relaybox.display());
        }
        Ok(bins)
    }

    /// For tests that need the binaries: `Some` when they are there; `None`
    /// (after saying loudly that the test is skipped) when they are not,
    /// unless `RELAYBOX_E2E_REQUIRE_BINARIES=1`, which makes it a failure.
    pub fn for_test(test: &str) -> Option<Binaries> {
        match Binaries::locate() {
            Ok(b) => Some(b),
            Err(e) if std::env::var(REQUIRE_ENV).as_deref() != Ok("1") => {
                eprintln!("[e2e] SKIPPED {test}: {e:#} (set {REQUIRE_ENV}=1 to fail instead)");
                None
            }
            Err(e) => panic!("{test}: relaybox binaries required ({REQUIRE_ENV}=1): {e:#}"),
        }
    }

    /// `relaybox-ca demo --out DIR`; returns DIR/certs after checking that
    /// every file is there.
    pub fn demo_certs(&self, out: &Path) -> Result<PathBuf> {
        crate::netns::run(Command::new(&self.relaybox_ca).arg("demo").arg("--out").arg(out))
            .context("relaybox-ca demo")?;
        let certs = out.join("certs");
        for f in ["ca.pem", "crl.pem", "relay.crt", "relay.key", "dispatcher.crt", "dispatcher.key"] {
            if !certs.join(f).is_file() {
                bail!("relaybox-ca demo did not write {}", certs.join(f).display());
            }
        }
        Ok(certs)
    }
}

/// The `[Dispatcher]` (and `[OpenSIPS]`) settings of one test.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub socket_path: PathBuf,
    pub listen: SocketAddr,
    pub management: SocketAddr,
    /// `[OpenSIPS] socket_path`: the proxy's management (JSON-RPC datagram)
    /// socket, used to end dialogs whose media timed out. Not written when
    /// `None` (the default applies).
    pub proxy_socket: Option<PathBuf>,
    /// `[OpenSIPS] proxy`: `kamailio` or `opensips`. Not written when `None`.
    pub proxy: Option<String>,
    /// Further `[OpenSIPS]` lines (`transport = http`, `url = ...`).
    pub opensips_extra: Vec<String>,
}

impl DispatcherSettings {
    /// Dispatcher in `srv`: relays at 203.0.113.1:25060, management (plain
    /// TCP) at the namespace's 127.0.0.1:25061, module socket in `dir`.
    pub fn in_dir(dir: &Path) -> DispatcherSettings {
        DispatcherSettings {
            socket_path: dir.join("dispatcher.sock"),
            listen: SocketAddr::from((SRV_IP, RELAY_LINK_PORT)),
            management: SocketAddr::from((Ipv4Addr::LOCALHOST, MANAGEMENT_PORT)),
            proxy_socket: None,
            proxy: None,
            opensips_extra: Vec::new(),
        }
    }

    /// Ends timed-out dialogs through `proxy`'s JSON-RPC datagram socket
    /// (Kamailio jsonrpcs, OpenSIPS mi_datagram).
    pub fn with_proxy_mi(mut self, proxy: crate::Proxy, socket: impl Into<PathBuf>) -> DispatcherSettings {
        self.proxy_socket = Some(socket.into());
        self.proxy = Some(proxy.name().into());
        self
    }

    /// Ends timed-out dialogs through the proxy's MI FIFO (`transport = fifo`).
    pub fn with_proxy_fifo(mut self, proxy: crate::Proxy, fifo: impl Into<PathBuf>) -> DispatcherSettings {
        self = self.with_proxy_mi(proxy, fifo);
        self.opensips_extra.push("transport = fifo".into());
        self
    }

    /// Ends timed-out dialogs through JSON-RPC over HTTP (`transport = http`).
    pub fn with_proxy_http(mut self, proxy: crate::Proxy, url: &str) -> DispatcherSettings {
        self.proxy = Some(proxy.name().into());
        self.opensips_extra.push("transport = http".into());
        self.opensips_extra.push(format!("url = {url}"));
        self
    }
}

/// The `[Relay]` settings of one relay. The optional ones are only written
/// to the config when set (otherwise the relay's defaults apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    pub relay_ip: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
    /// `stream_timeout` in seconds.
    pub stream_timeout: Option<u32>,
    /// `on_hold_timeout` in seconds.
    pub on_hold_timeout: Option<u32>,
    /// `datapath`: `auto`, `kernel` or `userspace`.
    pub datapath: Option<&'static str>,
}

impl RelaySettings {
    fn new(relay_ip: Ipv4Addr, port_min: u16, port_max: u16) -> RelaySettings {
        RelaySettings { relay_ip, port_min, port_max, stream_timeout: None, on_hold_timeout: None, datapath: None }
    }

    /// Relay 1: 203.0.113.1, ports 40000-40100.
    pub fn first() -> RelaySettings {
        RelaySettings::new(SRV_IP, 40000, 40100)
    }

    /// Relay 2: 203.0.113.2, ports 42000-42100.
    pub fn second() -> RelaySettings {
        RelaySettings::new(SRV_IP2, 42000, 42100)
    }

    /// Relay 3: 203.0.113.3, ports 44000-44100.
    pub fn third() -> RelaySettings {
        RelaySettings::new(SRV_IP3, 44000, 44100)
    }

    /// `stream_timeout = secs`.
    pub fn stream_timeout(mut self, secs: u32) -> RelaySettings {
        self.stream_timeout = Some(secs);
        self
    }

    /// `datapath = userspace`: no kernel conntrack entries, so a silent
    /// stream times out after `stream_timeout` instead of the kernel's UDP
    /// conntrack timeout.
    pub fn userspace(mut self) -> RelaySettings {
        self.datapath = Some("userspace");
        self
    }

    /// A wider `port_range` (`lo..=hi`, even bounds).
    pub fn port_range(mut self, lo: u16, hi: u16) -> RelaySettings {
        self.port_min = lo;
        self.port_max = hi;
        self
    }

    pub fn ports(&self) -> crate::sipp::Ports {
        crate::sipp::Ports::EvenIn(self.port_min, self.port_max)
    }
}

/// A MediaProxy `config.ini` with the sections both daemons read.
pub fn config_ini(dispatcher: &DispatcherSettings, relay: &RelaySettings, certs: &Path) -> String {
    let mut relay_extra = String::new();
    if let Some(t) = relay.stream_timeout {
        relay_extra.push_str(&format!("stream_timeout = {t}\n"));
    }
    if let Some(t) = relay.on_hold_timeout {
        relay_extra.push_str(&format!("on_hold_timeout = {t}\n"));
    }
    if let Some(d) = relay.datapath {
        relay_extra.push_str(&format!("datapath = {d}\n"));
    }
    let mut opensips = String::new();
    if dispatcher.proxy_socket.is_some() || dispatcher.proxy.is_some() || !dispatcher.opensips_extra.is_empty() {
        opensips.push_str("\n[OpenSIPS]\n");
        if let Some(p) = &dispatcher.proxy_socket {
            opensips.push_str(&format!("socket_path = {}\n", p.display()));
        }
        if let Some(p) = &dispatcher.proxy {
            opensips.push_str(&format!("proxy = {p}\n"));
        }
        for line in &dispatcher.opensips_extra {
            opensips.push_str(line);
            opensips.push('\n');
        }
    }
    format!(
        "[Dispatcher]\n\
         socket_path = {}\n\
         listen = {}\n\
         listen_management = {}\n\
         management_use_tls = no\n\
         \n\
         [Relay]\n\
         dispatchers = {}\n\
         relay_ip = {}\n\
         port_range = {}:{}\n\
         {relay_extra}\
         \n\
         [TLS]\n\
         certs_path = {}\n\
         {opensips}",
        dispatcher.socket_path.display(),
        dispatcher.listen,
        dispatcher.management,
        dispatcher.listen,
        relay.relay_ip,
        relay.port_min,
        relay.port_max,
        certs.display()
    )
}

/// A running dispatcher. Stopped on drop.
#[derive(Debug)]
pub struct Dispatcher {
    pub process: Process,
    pub settings: DispatcherSettings,
    pub config: PathBuf,
}

impl Dispatcher {
    /// Writes `dispatcher.ini` to `dir`, starts `relaybox dispatcher` in
    /// `srv` and waits for the module socket and the management port.
    pub fn start(
        bins: &Binaries,
        srv: &Netns,
        dir: &Path,
        settings: DispatcherSettings,
        certs: &Path,
    ) -> Result<Dispatcher> {
        let config = dir.join("dispatcher.ini");
        std::fs::write(&config, config_ini(&settings, &RelaySettings::first(), certs))?;
        let cmd = CommandLine::new(&bins.relaybox).arg("dispatcher").arg("--config").arg(&config).cwd(dir);
        let mut process = Process::spawn("dispatcher", Some(srv), &cmd, &dir.join("dispatcher.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !settings.socket_path.exists() {
            if !process.is_running() || Instant::now() > deadline {
                bail!(
                    "dispatcher did not create {} ({}); log:\n{}",
                    settings.socket_path.display(),
                    if process.is_running() { "timeout" } else { "it exited" },
                    process.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
        let dispatcher = Dispatcher { process, settings, config };
        dispatcher
            .management(srv)
            .wait_until(Duration::from_secs(10), "management answers `summary`", |m| m.summary().map(|_| true))?;
        Ok(dispatcher)
    }

    /// A management client for this dispatcher.
    pub fn management<'a>(&self, srv: &'a Netns) -> Management<'a> {
        Management { netns: srv, addr: self.settings.management }
    }

    /// The dispatcher's log records so far: a record starts with a line that
    /// starts with a timestamp; following lines (a pretty-printed proxy
    /// answer, say) belong to it and are joined with a space.
    pub fn records(&self) -> Vec<String> {
        log_records(&self.process.log())
    }

    /// Records of the dispatcher's log (so far) that match `pattern` (a regex).
    pub fn log_lines(&self, pattern: &str) -> Result<Vec<String>> {
        let re = regex::Regex::new(pattern).with_context(|| format!("bad pattern {pattern:?}"))?;
        Ok(self.records().into_iter().filter(|l| re.is_match(l)).collect())
    }

    /// Records of the dispatcher's log that mention `call_id` and match `pattern`.
    pub fn call_log(&self, call_id: &str, pattern: &str) -> Result<Vec<String>> {
        Ok(self.log_lines(pattern)?.into_iter().filter(|l| l.contains(call_id)).collect())
    }

    /// Waits (bounded) for a record that mentions `call_id` and matches `pattern`.
    pub fn wait_call_log(&mut self, call_id: &str, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.call_log(call_id, pattern)?.into_iter().next() {
                return Ok(line);
            }
            if !self.process.is_running() || Instant::now() >= deadline {
                bail!(
                    "the dispatcher did not log /{pattern}/ for {call_id} within {timeout:?}{}; last lines:\n{}",
                    if self.process.is_running() { "" } else { " (it exited)" },
                    self.process.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the `accounted` line of `call_id` in the dispatcher's log.
    pub fn wait_accounted(&mut self, call_id: &str, timeout: Duration) -> Result<String> {
        let esc = regex::escape(call_id);
        self.process.wait_for_log(&format!("(accounted.*{esc})|({esc}.*accounted)"), timeout)
    }
}

/// Splits a log into records: a line that starts with a timestamp
/// (`2026-11-25T03:11:12...`) starts a record, other lines continue it.
pub fn log_records(log: &str) -> Vec<String> {
    let starts_record = |l: &str| {
        let b = l.as_bytes();
        b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
    };
    let mut records: Vec<String> = Vec::new();
    for line in log.lines() {
        match records.last_mut() {
            Some(last) if !starts_record(line) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => records.push(line.to_owned()),
        }
    }
    records
}

/// A running relay. Stopped on drop.
#[derive(Debug)]
pub struct Relay {
    pub process: Process,
    pub settings: RelaySettings,
    pub config: PathBuf,
}

impl Relay {
    /// Writes `relay-<ip>.ini`, starts `relaybox relay` in `srv`. Does not
    /// wait for it to connect: see [`Management::wait_for_relays`].
    pub fn start(
        bins: &Binaries,
        srv: &Netns,
        dir: &Path,
        dispatcher: &DispatcherSettings,
        settings: RelaySettings,
        certs: &Path,
    ) -> Result<Relay> {
        let name = format!("relay-{}", settings.relay_ip);
        let config = dir.join(format!("{name}.ini"));
        std::fs::write(&config, config_ini(dispatcher, &settings, certs))?;
        let cmd = CommandLine::new(&bins.relaybox).arg("relay").arg("--config").arg(&config).cwd(dir);
        let process = Process::spawn(&name, Some(srv), &cmd, &dir.join(format!("{name}.log")))?;
        Ok(Relay { process, settings, config })
    }
}

/// Client for the dispatcher's management interface (plain TCP), connecting
/// from inside the server namespace.
#[derive(Debug, Clone, Copy)]
pub struct Management<'a> {
    pub netns: &'a Netns,
    pub addr: SocketAddr,
}

impl Management<'_> {
    /// Sends one command line, returns the one-line answer.
    pub fn command(&self, command: &str) -> Result<String> {
        let mut stream = self.netns.connect_tcp(self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).with_context(|| format!("reading the answer to {command}"))?;
        let _ = stream.write_all(b"quit\r\n");
        if line.is_empty() {
            bail!("management closed the connection without answering {command:?}");
        }
        Ok(line.trim_end().to_owned())
    }

    /// A command whose answer is JSON.
    pub fn json(&self, command: &str) -> Result<Value> {
        let line = self.command(command)?;
        serde_json::from_str(&line).with_context(|| format!("answer to {command:?} is not JSON: {line}"))
    }

    /// `sessions`: every session of every relay.
    pub fn sessions(&self) -> Result<Vec<Value>> {
        match self.json("sessions")? {
            Value::Array(v) => Ok(v),
            other => bail!("`sessions` answered {other}, not an array"),
        }
    }

    /// `summary`: one object per connected relay.
    pub fn summary(&self) -> Result<Vec<Value>> {
        match self.json("summary")? {
            Value::Array(v) => Ok(v),
            other => bail!("`summary` answered {other}, not an array"),
        }
    }

    /// The session of `call_id`, if listed.
    pub fn session(&self, call_id: &str) -> Result<Option<Value>> {
        Ok(self.sessions()?.into_iter().find(|s| s["call_id"].as_str() == Some(call_id)))
    }

    /// Polls until `check` returns true; fails after `timeout` with the last
    /// error or answer.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => String::from("condition not met"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting until {what}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `summary` lists exactly the relays in `ips`.
    pub fn wait_for_relays(&self, ips: &[Ipv4Addr], timeout: Duration) -> Result<()> {
        let mut want: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        want.sort();
        self.wait_until(timeout, &format!("relays {want:?} are connected"), |m| {
            let mut got: Vec<String> =
                m.summary()?.iter().filter_map(|r| r["ip"].as_str().map(str::to_owned)).collect();
            got.sort();
            Ok(got == want)
        })
    }
}

/// Byte and packet totals of one session's streams, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTraffic {
    pub caller_bytes: u64,
    pub callee_bytes: u64,
    pub caller_packets: u64,
    pub callee_packets: u64,
    pub streams: usize,
}

impl SessionTraffic {
    /// Sums the per-stream statistics of one session object (SPEC 2).
    pub fn of(session: &Value) -> SessionTraffic {
        let mut t = SessionTraffic::default();
        for s in session["streams"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let n = |k: &str| s[k].as_u64().unwrap_or_default();
            t.caller_bytes += n("caller_bytes");
            t.callee_bytes += n("callee_bytes");
            t.caller_packets += n("caller_packets");
            t.callee_packets += n("callee_packets");
            t.streams += 1;
        }
        t
    }
}

/// Stream statuses of a session object ("active", "on hold", ...).
pub fn stream_statuses(session: &Value) -> Vec<String> {
    session["streams"]
        .as_array()
        .map(|v| v.iter().map(|s| s["status"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ini_has_the_contract_layout() {
        let d = DispatcherSettings::in_dir(Path::new("/tmp/x"));
        let ini = config_ini(&d, &RelaySettings::second(), Path::new("/tmp/x/certs"));
        assert_eq!(
            ini,
            "[Dispatcher]\nsocket_path = /tmp/x/dispatcher.sock\nlisten = 203.0.113.1:25060\n\
             listen_management = 127.0.0.1:25061\nmanagement_use_tls = no\n\n[Relay]\n\
             dispatchers = 203.0.113.1:25060\nrelay_ip = 203.0.113.2\nport_range = 42000:42100\n\n\
             [TLS]\ncerts_path = /tmp/x/certs\n"
        );
    }

    #[test]
    fn config_ini_writes_the_optional_settings() {
        let d = DispatcherSettings::in_dir(Path::new("/tmp/x"))
            .with_proxy_mi(crate::Proxy::Kamailio, "/tmp/x/kamailio/rpc.sock");
        let r = RelaySettings::third().stream_timeout(3).userspace();
        let ini = config_ini(&d, &r, Path::new("/tmp/x/certs"));
        assert!(ini
            .contains("relay_ip = 203.0.113.3\nport_range = 44000:44100\nstream_timeout = 3\ndatapath = userspace\n"));
        assert!(ini.ends_with("\n[OpenSIPS]\nsocket_path = /tmp/x/kamailio/rpc.sock\nproxy = kamailio\n"), "{ini}");
    }

    #[test]
    fn log_records_join_continuation_lines() {
        let log = "2026-11-25T03:11:12.897Z  INFO one\n2026-11-25T03:11:12.898Z  INFO dialog ended: {\n\t\"id\":\t1\n} call_id=c1\nplain\n";
        let r = log_records(log);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[1], "2026-11-25T03:11:12.898Z  INFO dialog ended: { \"id\":\t1 } call_id=c1 plain");
    }

    #[test]
    fn traffic_sums_streams() {
        let s: Value = serde_json::from_str(
            r#"{"call_id":"c","streams":[
                {"status":"active","caller_bytes":10,"callee_bytes":20,"caller_packets":1,"callee_packets":2},
                {"status":"on hold","caller_bytes":5,"callee_bytes":0,"caller_packets":1,"callee_packets":0}]}"#,
        )
        .unwrap();
        let t = SessionTraffic::of(&s);
        assert_eq!((t.caller_bytes, t.callee_bytes, t.caller_packets, t.callee_packets, t.streams), (15, 20, 2, 2, 2));
        assert_eq!(stream_statuses(&s), ["active", "on hold"]);
    }
}
