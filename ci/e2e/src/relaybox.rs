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
use crate::topology::{SRV_IP, SRV_IP2};

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

/// The `[Dispatcher]` settings of one test.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub socket_path: PathBuf,
    pub listen: SocketAddr,
    pub management: SocketAddr,
}

impl DispatcherSettings {
    /// Dispatcher in `srv`: relays at 203.0.113.1:25060, management (plain
    /// TCP) at the namespace's 127.0.0.1:25061, module socket in `dir`.
    pub fn in_dir(dir: &Path) -> DispatcherSettings {
        DispatcherSettings {
            socket_path: dir.join("dispatcher.sock"),
            listen: SocketAddr::from((SRV_IP, RELAY_LINK_PORT)),
            management: SocketAddr::from((Ipv4Addr::LOCALHOST, MANAGEMENT_PORT)),
        }
    }
}

/// The `[Relay]` settings of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    pub relay_ip: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
}

impl RelaySettings {
    /// Relay 1: 203.0.113.1, ports 40000-40100.
    pub fn first() -> RelaySettings {
        RelaySettings { relay_ip: SRV_IP, port_min: 40000, port_max: 40100 }
    }

    /// Relay 2: 203.0.113.2, ports 42000-42100.
    pub fn second() -> RelaySettings {
        RelaySettings { relay_ip: SRV_IP2, port_min: 42000, port_max: 42100 }
    }

    pub fn ports(&self) -> crate::sipp::Ports {
        crate::sipp::Ports::EvenIn(self.port_min, self.port_max)
    }
}

/// A MediaProxy `config.ini` with the sections both daemons read.
pub fn config_ini(dispatcher: &DispatcherSettings, relay: &RelaySettings, certs: &Path) -> String {
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
         \n\
         [TLS]\n\
         certs_path = {}\n",
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

    /// Waits for the `accounted` line of `call_id` in the dispatcher's log.
    pub fn wait_accounted(&mut self, call_id: &str, timeout: Duration) -> Result<String> {
        let esc = regex::escape(call_id);
        self.process.wait_for_log(&format!("(accounted.*{esc})|({esc}.*accounted)"), timeout)
    }
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
