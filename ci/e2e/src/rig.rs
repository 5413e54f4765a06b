//! The rig of one test: a temporary directory, the topology, and the
//! daemons running in it. Dropping it stops the relays, the dispatcher and
//! the proxy, deletes the namespaces and the directory (kept with
//! `RELAYBOX_E2E_KEEP=1`); unless the test called [`Rig::pass`] (so after a
//! panic or an early `Err` return) it first prints the tail of every log.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::call::{Call, CallSpec, MediaPath};
use crate::process::{read_lossy, tail, Process};
use crate::proxy::{Proxy, ProxyOptions, ProxyProcess};
use crate::relaybox::{
    stream_statuses, Binaries, Dispatcher, DispatcherSettings, Management, Relay, RelaySettings, SessionTraffic,
};
use crate::sipp::{self, CallKind, Leg, SippFiles};
use crate::topology::{Side, Topology};

/// Keep the test directory (logs, rendered configs, SIPp traces).
pub const KEEP_ENV: &str = "RELAYBOX_E2E_KEEP";

/// The standard legs: caller `alice` and callee `bob` on SIP port 5060, RTP
/// 6000 (video 6002); a second pair (`carol`, `dave`) on 5062 / 6100.
pub fn legs(pair: u8) -> (Leg, Leg) {
    match pair {
        0 => (Leg::new("alice", 5060, 6000), Leg::new("bob", 5060, 6000)),
        _ => (Leg::new("carol", 5062, 6100), Leg::new("dave", 5062, 6100)),
    }
}

/// What `sessions` said about one call while it ran.
#[derive(Debug, Clone, Default)]
pub struct SessionWatch {
    /// Times `sessions` was asked.
    pub samples: u32,
    /// Times the call was listed.
    pub listed: u32,
    /// The sample with the most bytes.
    pub max: SessionTraffic,
    /// Stream statuses seen, consecutive repeats removed.
    pub statuses: Vec<String>,
    /// The last session object seen.
    pub last: Option<serde_json::Value>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Rig {
    label: String,
    // Field order is drop order: daemons first, then the namespaces.
    pub relays: Vec<Relay>,
    pub dispatcher: Option<Dispatcher>,
    pub proxy: Option<ProxyProcess>,
    pub topo: Topology,
    certs: Option<PathBuf>,
    dir: Option<TempDir>,
    calls: u32,
    created: Instant,
    passed: bool,
}

impl Rig {
    /// Checks the prerequisites, makes the directory and the topology.
    pub fn new(label: &str) -> Result<Rig> {
        crate::check_prerequisites()?;
        remove_stale_dirs();
        let started = Instant::now();
        let topo = Topology::new()?;
        let dir = tempfile::Builder::new().prefix(&format!("{}-", topo.prefix())).tempdir()?;
        eprintln!(
            "[e2e] {label}: namespaces {}-*, files in {} (topology up in {} ms)",
            topo.prefix(),
            dir.path().display(),
            started.elapsed().as_millis()
        );
        Ok(Rig {
            label: label.to_owned(),
            relays: Vec::new(),
            dispatcher: None,
            proxy: None,
            topo,
            certs: None,
            dir: Some(dir),
            calls: 0,
            created: Instant::now(),
            passed: false,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(TempDir::path).expect("rig directory exists until drop")
    }

    /// Where the proxy looks for the dispatcher (whether or not one runs).
    pub fn mediaproxy_socket(&self) -> PathBuf {
        self.dir().join("dispatcher.sock")
    }

    /// Starts Kamailio pointed at [`Rig::mediaproxy_socket`].
    pub fn start_kamailio(&mut self) -> Result<&mut ProxyProcess> {
        self.start_proxy(Proxy::Kamailio)
    }

    /// Starts `proxy` with its reference configuration, pointed at
    /// [`Rig::mediaproxy_socket`].
    pub fn start_proxy(&mut self, proxy: Proxy) -> Result<&mut ProxyProcess> {
        let opts = self.proxy_options(proxy);
        self.start_proxy_with(&opts)
    }

    /// The default options of `proxy` in this rig.
    pub fn proxy_options(&self, proxy: Proxy) -> ProxyOptions {
        ProxyOptions::new(proxy, self.mediaproxy_socket())
    }

    pub fn start_proxy_with(&mut self, opts: &ProxyOptions) -> Result<&mut ProxyProcess> {
        let t = Instant::now();
        let p = ProxyProcess::start(&self.topo.srv, self.dir(), opts)?;
        eprintln!("[e2e] {}: {} ready in {} ms", self.label, opts.proxy, t.elapsed().as_millis());
        Ok(self.proxy.insert(p))
    }

    /// The demo certificates, made once per rig.
    pub fn certs(&mut self, bins: &Binaries) -> Result<PathBuf> {
        if let Some(c) = &self.certs {
            return Ok(c.clone());
        }
        let certs = bins.demo_certs(&self.dir().join("pki"))?;
        Ok(self.certs.insert(certs).clone())
    }

    /// The JSON-RPC datagram socket `proxy` will have (Kamailio jsonrpcs
    /// `dgram_socket`, OpenSIPS mi_datagram).
    pub fn proxy_mi_socket(&self, proxy: Proxy) -> PathBuf {
        proxy.mi_socket(self.dir())
    }

    /// The default dispatcher settings of this rig.
    pub fn dispatcher_settings(&self) -> DispatcherSettings {
        DispatcherSettings::in_dir(self.dir())
    }

    /// Starts the dispatcher (before the proxy: see [`ProxyProcess::start`]).
    pub fn start_dispatcher(&mut self, bins: &Binaries) -> Result<()> {
        let settings = self.dispatcher_settings();
        self.start_dispatcher_with(bins, settings)
    }

    /// Starts the dispatcher with `settings` (e.g. an `[OpenSIPS]` section).
    pub fn start_dispatcher_with(&mut self, bins: &Binaries, settings: DispatcherSettings) -> Result<()> {
        let certs = self.certs(bins)?;
        let t = Instant::now();
        let d = Dispatcher::start(bins, &self.topo.srv, self.dir(), settings, &certs)?;
        eprintln!("[e2e] {}: dispatcher ready in {} ms", self.label, t.elapsed().as_millis());
        self.dispatcher = Some(d);
        Ok(())
    }

    /// Starts a relay and waits until the dispatcher lists it (together
    /// with the relays already running).
    pub fn start_relay(&mut self, bins: &Binaries, settings: RelaySettings) -> Result<usize> {
        let certs = self.certs(bins)?;
        let dispatcher = self.dispatcher.as_ref().context("start the dispatcher first")?.settings.clone();
        let t = Instant::now();
        let relay = Relay::start(bins, &self.topo.srv, self.dir(), &dispatcher, settings, &certs)?;
        self.relays.push(relay);
        let ips: Vec<Ipv4Addr> =
            self.relays.iter_mut().filter_map(|r| r.process.is_running().then_some(r.settings.relay_ip)).collect();
        self.management()?.wait_for_relays(&ips, Duration::from_secs(20)).with_context(|| {
            format!(
                "relay {} log:\n{}",
                settings.relay_ip,
                self.relays.last().map(|r| r.process.log_tail(30)).unwrap_or_default()
            )
        })?;
        eprintln!(
            "[e2e] {}: relay {} connected to the dispatcher in {} ms",
            self.label,
            settings.relay_ip,
            t.elapsed().as_millis()
        );
        Ok(self.relays.len() - 1)
    }

    /// Management client of the running dispatcher.
    pub fn management(&self) -> Result<Management<'_>> {
        let d = self.dispatcher.as_ref().context("no dispatcher running")?;
        Ok(d.management(&self.topo.srv))
    }

    /// A call spec with a fresh Call-ID, the standard legs of `pair` and
    /// timings derived from the pcap's length.
    pub fn call_spec(&mut self, kind: CallKind, media: MediaPath, pair: u8) -> Result<CallSpec> {
        self.calls += 1;
        let (_, pcap_len) = sipp::pcap_stats(&sipp::pcap_path())?;
        let (caller, callee) = legs(pair);
        Ok(CallSpec {
            kind,
            call_id: format!("{}-{}@e2e.relaybox", self.topo.prefix(), self.calls),
            caller,
            callee,
            media,
            play: pcap_len + Duration::from_millis(1500),
            hold: Duration::from_secs(2),
            extra_talk: Duration::ZERO,
            media_delay: Duration::ZERO,
            idle_before_invite: Duration::ZERO,
        })
    }

    /// Starts the callee (waiting until the proxy has saved its REGISTER),
    /// waits `spec.idle_before_invite`, then starts the caller.
    pub fn start_call(&mut self, spec: &CallSpec) -> Result<Call> {
        let n = self.calls;
        let dir = self.dir().to_owned();
        let (caller_t, callee_t) = spec.kind.templates();
        let caller_files = SippFiles::new(&dir, &format!("call{n}-caller"));
        let callee_files = SippFiles::new(&dir, &format!("call{n}-callee"));
        let caller_params = spec.params(spec.expect_at_caller(), &spec.caller);
        let callee_params = spec.params(spec.expect_at_callee(), &spec.callee);
        std::fs::write(&caller_files.scenario, sipp::render(caller_t, &caller_params)?)?;
        std::fs::write(&callee_files.scenario, sipp::render(callee_t, &callee_params)?)?;

        let before_a = self.topo.counters(Side::A)?;
        let before_b = self.topo.counters(Side::B)?;
        let proxy = self.proxy.as_mut().context("start the proxy first")?;
        let offset = proxy.process.log_len();

        let cmd = sipp::command(&callee_files, Side::B.phone_ip(), &spec.callee, &spec.call_id, spec.limit())?;
        let mut callee = Process::spawn("callee", Some(&self.topo.ph_b), &cmd.cwd(&dir), &callee_files.output)?;
        if let Err(e) = proxy.wait_for_registration(offset, &spec.callee.user, Duration::from_secs(10)) {
            let _ = callee.wait_timeout(Duration::from_millis(100));
            bail!("{e:#}\ncallee output:\n{}", callee.log_tail(25));
        }
        std::thread::sleep(spec.idle_before_invite);

        let cmd = sipp::command(&caller_files, Side::A.phone_ip(), &spec.caller, &spec.call_id, spec.limit())?;
        let caller = Process::spawn("caller", Some(&self.topo.ph_a), &cmd.cwd(&dir), &caller_files.output)?;
        Ok(Call {
            spec: spec.clone(),
            caller,
            callee,
            caller_files,
            callee_files,
            started: Instant::now(),
            before_a,
            before_b,
        })
    }

    /// Polls `sessions` every 300 ms while `call` runs and records what the
    /// dispatcher said about it.
    pub fn watch_session(&self, call: &mut Call) -> Result<SessionWatch> {
        let mgmt = self.management()?;
        let mut watch = SessionWatch::default();
        while call.is_running() {
            watch.samples += 1;
            if let Some(session) = mgmt.session(&call.spec.call_id)? {
                watch.listed += 1;
                let traffic = SessionTraffic::of(&session);
                if traffic.caller_bytes + traffic.callee_bytes >= watch.max.caller_bytes + watch.max.callee_bytes {
                    watch.max = traffic;
                }
                for status in stream_statuses(&session) {
                    if watch.statuses.last() != Some(&status) {
                        watch.statuses.push(status);
                    }
                }
                watch.last = Some(session);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(watch)
    }

    /// Waits until `sessions` no longer lists `call_id`; returns how long it took.
    pub fn wait_session_gone(&self, call_id: &str, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        self.management()?
            .wait_until(timeout, &format!("session {call_id} is gone"), |m| Ok(m.session(call_id)?.is_none()))?;
        Ok(t.elapsed())
    }

    /// Ends a successful test: tears everything down without dumping logs.
    /// A rig dropped without `pass()` (an `Err` returned, a panic) prints the
    /// tail of every log first.
    pub fn pass(mut self) {
        self.passed = true;
        eprintln!("[e2e] {} passed in {:.1} s", self.label, self.created.elapsed().as_secs_f64());
    }

    /// Seconds since the rig was made.
    pub fn uptime(&self) -> Duration {
        self.created.elapsed()
    }

    fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else { return };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            eprintln!("[e2e] ---- {} (last 40 lines) ----\n{}", log.display(), tail(&read_lossy(&log, 0), 40));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !self.passed {
            eprintln!("[e2e] {} failed; logs follow", self.label);
            self.dump_logs();
        }
        // Daemons first (their fields come first, but be explicit about it).
        self.relays.clear();
        self.dispatcher = None;
        self.proxy = None;
        if std::env::var(KEEP_ENV).as_deref() == Ok("1") {
            if let Some(dir) = self.dir.take() {
                let _ = std::fs::write(dir.path().join(KEPT_MARK), "kept by RELAYBOX_E2E_KEEP=1\n");
                eprintln!("[e2e] {}: keeping {}", self.label, dir.keep().display());
            }
        }
    }
}

/// Marks a directory kept on purpose, so that [`remove_stale_dirs`] leaves it.
const KEPT_MARK: &str = "KEPT";

/// Removes test directories of test processes that no longer exist (killed
/// before their destructors ran), except those kept on purpose.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(rest) = name.strip_prefix(crate::netns::NAME_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && path.is_dir() && !path.join(KEPT_MARK).exists() {
            eprintln!("[e2e] removing stale directory {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
