//! The relay daemon: keeps TLS links to its dispatchers, feeds their commands
//! to the sans-I/O session table, and lets a [`datapath::Datapath`] move the
//! media. Timers and signals live here too: SIGHUP halts (no new sessions,
//! exit after the last), SIGTERM/SIGINT end every session (reported
//! `expired`) and clean the kernel up, SIGUSR1 stops for a restart (session
//! snapshot written, kernel flows left forwarding; see `state`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use relaybox_config::{Config, DatapathMode};
use relaybox_core::{CoreConfig, Event, FlowCounters, SessionTable, SnapshotCache, Verdict};
use relaybox_limits::{DescriptorBudget, Throttle};
use relaybox_proto::link::{LinkRequest, RelayLine, UpdateReply};
use relaybox_proto::module::RelayPorts;
use relaybox_proto::stats::RelayStatus;
use relaybox_proto::{PartyType, SessionStats, Summary};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::Clock;

pub(crate) mod datapath;
mod ephemeral;
mod kernel;
mod link;
mod state;

use datapath::{Datapath, UserspaceDatapath};
use kernel::KernelDatapath;

/// Something a link task writes to its dispatcher besides command answers.
pub(crate) enum Outbound {
    Line(Box<RelayLine>),
    /// Answered once everything queued before it has been written.
    Flush(oneshot::Sender<()>),
}

pub(crate) struct LinkHandle {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<Outbound>,
}

pub(crate) struct Relay {
    pub config: Config,
    pub clock: Clock,
    table: Mutex<SessionTable>,
    datapath: Arc<dyn Datapath>,
    halting: AtomicBool,
    /// Wakes the timer task when deadlines may have moved.
    wake: Notify,
    /// Wakes `run` when the relay should exit.
    pub exit: Notify,
    links: Mutex<Vec<LinkHandle>>,
    /// Which dispatcher link created each session (expired reports go there).
    origin: Mutex<HashMap<String, u64>>,
    next_link_id: AtomicU64,
    bps: AtomicU64,
    /// Datagrams the userspace forwarder received (with the kernel datapath,
    /// only the first packets of each flow).
    pub userspace_packets: AtomicU64,
    /// Port pairs that could not be bound (another program held a port).
    pub port_bind_failures: AtomicU64,
    /// Updates refused because their ports could not be bound (no
    /// descriptors left): logged at most every few seconds.
    no_capacity: Throttle,
    /// Why this datapath, for the start-up log.
    datapath_reason: String,
    /// Sessions restored from the state file at start.
    restored: usize,
    /// The session table changed: save it (debounced).
    save: Notify,
    /// One snapshot write at a time, and the sessions encoded so far.
    save_lock: Mutex<Saver>,
    save_failing: AtomicBool,
    /// Expired reports made while no dispatcher was connected (after a
    /// restart). Listed in the answer to the first `sessions` command (so a
    /// restarted dispatcher adopts the calls and then accepts their reports),
    /// and sent right after it.
    pending_expired: Mutex<Vec<SessionStats>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snapshot writer's state.
#[derive(Default)]
struct Saver {
    /// Each session encoded as of the last save (see [`SnapshotCache`]).
    cache: SnapshotCache,
    /// The last snapshot is written (exit): nothing more is saved.
    done: bool,
}

/// Sessions re-encoded per hold of the table lock while a snapshot is
/// made: updates and packets wait at most this many encodings.
const SNAPSHOT_STEP: usize = 256;
/// Steps after which the rest is encoded in one hold (a table changing
/// faster than it is encoded still gets saved).
const SNAPSHOT_STEPS: usize = 64;

impl Relay {
    /// Builds the relay and picks its datapath from `[Relay] datapath`:
    /// `userspace` touches nothing in the kernel, `kernel` fails (with what
    /// is missing) when the kernel cannot forward, `auto` falls back.
    fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let r = &config.relay;
        // With auto_detect_interfaces each side gets the address of its own
        // interface: the sockets listen on every address, and each kernel
        // entry uses the address its side was told.
        let auto_detect = r.auto_detect_interfaces && r.advertised_ip.is_none();
        let local = match (r.relay_ip, r.advertised_ip) {
            (Some(ip), _) if !auto_detect => kernel::LocalAddr::Fixed(ip),
            (None, Some(_)) => kernel::LocalAddr::Routed,
            _ => kernel::LocalAddr::Told,
        };
        let v6 = r.relay_ip.or(r.advertised_ip).is_some_and(|ip| ip.is_ipv6());
        let (readiness, reason) = match r.datapath {
            DatapathMode::Userspace => {
                let none = kernel::Readiness { flows: None, report: Vec::new(), missing: Vec::new() };
                (none, "[Relay] datapath = userspace".to_string())
            }
            mode => {
                let readiness = kernel::prepare(local, v6, (r.port_range.start, r.port_range.end));
                if readiness.missing.is_empty() {
                    let reason = readiness.report.join("; ");
                    (readiness, reason)
                } else if mode == DatapathMode::Kernel {
                    let missing = readiness.missing.join("; ");
                    tracing::error!("[Relay] datapath = kernel, but the kernel cannot forward media: {missing}");
                    anyhow::bail!("[Relay] datapath = kernel, but the kernel cannot forward media: {missing}");
                } else {
                    let reason = format!("kernel forwarding unavailable: {}", readiness.missing.join("; "));
                    (readiness, reason)
                }
            }
        };
        let kernel_flows = readiness.flows;
        let core = CoreConfig {
            port_range: (r.port_range.start, r.port_range.end),
            stream_timeout: r.stream_timeout.as_millis() as u64,
            on_hold_timeout: r.on_hold_timeout.as_millis() as u64,
            routable_private_ranges: r.routable_private_ranges.clone(),
            latching_window: r.latching_window.as_millis() as u64,
            signaling_proxies: r.signaling_proxies.clone(),
            max_sessions: r.max_sessions,
            max_streams: r.max_streams_per_session,
            kernel_flows: kernel_flows.is_some(),
            // Latched parties' datagrams go by route (datapath.rs).
            forwarding_entries: true,
        };
        // The ports listen on relay_ip; without one (or with
        // auto_detect_interfaces), on every address of the family the replies
        // carry (an IPv6 advertised_ip needs IPv6 sockets).
        let bind_ip = match local {
            kernel::LocalAddr::Fixed(ip) => ip,
            _ if v6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        };
        let range = core.port_range;
        let (clock, table, restored) = match state::load(&r.state_file, core.port_range) {
            Some(snapshot) => {
                let count = snapshot.session_count();
                // The saved times are on the previous relay's clock.
                let clock = Clock::resume(snapshot.clock());
                if clock.wall_step_secs() != 0 {
                    tracing::info!(
                        seconds = clock.wall_step_secs(),
                        "the wall clock was set since the restored sessions' relay started; they keep its timescale"
                    );
                }
                (clock, SessionTable::restore(core, snapshot, clock.now_ms()), count)
            }
            None => (Clock::new(), SessionTable::new(core), 0),
        };
        let io_threads = match r.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut io_error = None;
        let relay = Arc::new_cyclic(|weak| Relay {
            datapath: {
                let userspace = UserspaceDatapath::new(bind_ip, weak.clone())
                    .with_reserve(reserved_descriptors(&config))
                    .with_ports(range, io_threads)
                    .unwrap_or_else(|e| {
                        io_error = Some(e);
                        UserspaceDatapath::new(bind_ip, weak.clone())
                    });
                match kernel_flows {
                    Some(table) => {
                        let dp = KernelDatapath::new(userspace, table, local, v6);
                        if let Err(e) = dp.watch_destroy_events(weak.clone()) {
                            tracing::error!("conntrack DESTROY events unavailable ({e}): kernel timeouts end streams only at remove");
                        }
                        Arc::new(dp) as Arc<dyn Datapath>
                    }
                    None => Arc::new(userspace),
                }
            },
            datapath_reason: reason,
            userspace_packets: AtomicU64::new(0),
            port_bind_failures: AtomicU64::new(0),
            no_capacity: Throttle::new(relaybox_limits::WARN_PERIOD),
            config,
            clock,
            table: Mutex::new(table),
            restored,
            save: Notify::new(),
            save_lock: Mutex::new(Saver::default()),
            save_failing: AtomicBool::new(false),
            pending_expired: Mutex::new(Vec::new()),
            halting: AtomicBool::new(false),
            wake: Notify::new(),
            exit: Notify::new(),
            links: Mutex::new(Vec::new()),
            origin: Mutex::new(HashMap::new()),
            next_link_id: AtomicU64::new(1),
            bps: AtomicU64::new(0),
        });
        if let Some(e) = io_error {
            anyhow::bail!("cannot start the relay's I/O threads: {e}");
        }
        tracing::debug!(io_threads, "userspace forwarding threads started");
        Ok(relay)
    }

    /// A datagram no route covers: the session table decides. Called by
    /// the I/O threads.
    pub(crate) fn datagram(&self, port: u16, src: SocketAddr, packet: &[u8]) -> Verdict {
        let now = self.clock.now_ms();
        let (verdict, expired) = {
            let mut table = self.table();
            let verdict = table.on_packet(port, src, packet, now);
            // A latching packet may announce routes or hand the flow to
            // the kernel.
            (verdict, self.apply_events(&mut table))
        };
        self.report_expired(expired);
        verdict
    }

    /// Hands the table what the datapath forwarded by route on these pairs
    /// (`p` and `p + 1` each).
    fn count_forwarded(&self, table: &mut SessionTable, pairs: impl IntoIterator<Item = u16>) {
        for pair in pairs {
            for port in [pair, pair + 1] {
                let f = self.datapath.take_forwarded(port);
                table.forwarded(port, f.packets, f.bytes, f.last);
            }
        }
    }

    /// [`count_forwarded`](Self::count_forwarded) for every port.
    fn count_all_forwarded(&self, table: &mut SessionTable) {
        for (port, f) in self.datapath.take_all_forwarded() {
            table.forwarded(port, f.packets, f.bytes, f.last);
        }
    }

    pub fn table(&self) -> MutexGuard<'_, SessionTable> {
        lock(&self.table)
    }

    pub fn register_link(&self, tx: mpsc::UnboundedSender<Outbound>) -> u64 {
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.links).push(LinkHandle { id, tx });
        id
    }

    /// The expired reports that waited for a dispatcher, to send now.
    pub fn take_pending_expired(&self) -> Vec<SessionStats> {
        std::mem::take(&mut *lock(&self.pending_expired))
    }

    /// After a restore: binds the restored sessions' ports, takes over the
    /// kernel flows the previous process left (or ends the streams whose
    /// flows are gone), and removes stale entries of ours.
    fn resume(&self) {
        let expired = {
            let mut table = self.table();
            let mut expired = self.apply_events(&mut table);
            let flows = table.kernel_flows();
            if self.datapath.name() == "kernel" {
                let now = self.clock.now_ms();
                for id in self.datapath.adopt_flows(&flows) {
                    table.flow_expired(id, FlowCounters::default(), now);
                }
                expired.extend(self.apply_events(&mut table));
            }
            expired
        };
        if self.restored > 0 {
            tracing::info!(
                sessions = self.restored,
                "sessions restored from {}",
                self.config.relay.state_file.display()
            );
        }
        self.report_expired(expired);
        self.poll_all_flow_counters();
    }

    /// Everything forwarded so far into the table: the kernel's counters
    /// and what went by route.
    fn poll_all_flow_counters(&self) {
        let mut table = self.table();
        self.count_all_forwarded(&mut table);
        let flows = table.flow_ids();
        self.poll_flow_counters(&mut table, flows);
    }

    /// Writes the session table to the state file now (blocking). With
    /// `last`, nothing is saved after this one.
    ///
    /// Only the sessions changed since the last save are encoded, a few at
    /// a time under the table lock (updates and packets go on in between);
    /// the file is put together and written without the lock.
    fn save_now(&self, last: bool) {
        let mut saver = lock(&self.save_lock);
        if saver.done {
            return;
        }
        saver.done = last;
        let mut steps = 0;
        loop {
            let budget = if steps < SNAPSHOT_STEPS { SNAPSHOT_STEP } else { usize::MAX };
            if self.table().refresh_snapshot(&mut saver.cache, budget) {
                break;
            }
            steps += 1;
        }
        let bytes = saver.cache.encode(self.clock.mark());
        let path = &self.config.relay.state_file;
        match state::write_atomic(path, &bytes) {
            Ok(()) => {
                if self.save_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(file = %path.display(), "session snapshot written again");
                }
            }
            Err(e) => {
                if !self.save_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(file = %path.display(), "cannot write the session snapshot, calls will not survive a restart: {e}");
                }
            }
        }
    }

    /// The sessions were ended: no snapshot is kept, nothing saved after.
    fn discard_state(&self) {
        let mut saver = lock(&self.save_lock);
        saver.done = true;
        state::remove(&self.config.relay.state_file);
    }

    /// Saves the table after changes, at most every [`state::DEBOUNCE`].
    async fn run_snapshots(self: Arc<Self>) {
        loop {
            self.save.notified().await;
            let relay = self.clone();
            let _ = tokio::task::spawn_blocking(move || relay.save_now(false)).await;
            tokio::time::sleep(state::DEBOUNCE).await;
        }
    }

    /// Dispatcher links up right now.
    pub fn link_count(&self) -> usize {
        lock(&self.links).len()
    }

    pub fn unregister_link(&self, id: u64) {
        lock(&self.links).retain(|l| l.id != id);
    }

    /// The address put in replies: `advertised_ip`; else, with
    /// `auto_detect_interfaces` and a known receiver of the SDP (`towards`,
    /// see [`sdp_receiver`]), the local address the kernel routes towards
    /// it; else `relay_ip`, else the local address of the link the request
    /// came over (also when the route lookup fails).
    fn reply_ip(&self, link_local: IpAddr, towards: Option<IpAddr>) -> IpAddr {
        let r = &self.config.relay;
        if let Some(ip) = r.advertised_ip {
            return ip;
        }
        let fallback = r.relay_ip.unwrap_or(link_local);
        match towards {
            Some(peer) if r.auto_detect_interfaces => local_ip_towards(peer).unwrap_or_else(|e| {
                tracing::debug!(peer = %peer, "auto_detect_interfaces: no route ({e}); replying with {fallback}");
                fallback
            }),
            _ => fallback,
        }
    }

    /// Runs the core's queued events: ports to open or close. Returns the
    /// sessions that expired, to be reported with [`Relay::report_expired`]
    /// once the table lock is released. Called after every call into the
    /// table.
    #[must_use]
    fn apply_events(&self, table: &mut SessionTable) -> Vec<SessionStats> {
        self.apply_events_binding(table, None)
    }

    /// [`apply_events`](Self::apply_events) after an update whose reply is
    /// not sent yet. A pair that another program holds (EADDRINUSE: an
    /// ephemeral port of the host's own traffic, say) is swapped for the
    /// next free pair (the core tries each free pair at most once); `(old,
    /// new)` goes into `binding.moved` for the reply. A pair that cannot be
    /// bound for any other reason (out of descriptors above all) goes into
    /// `binding.failed`: trying the next pair would fail alike, for every
    /// pair of the range.
    fn apply_events_binding(&self, table: &mut SessionTable, mut binding: Option<&mut Binding>) -> Vec<SessionStats> {
        let mut expired = Vec::new();
        let mut changed = false;
        while let Some(event) = table.poll_event() {
            changed = true;
            match event {
                Event::OpenPorts(p) => {
                    let Err(e) = self.datapath.open_ports(p) else { continue };
                    if e.kind() != std::io::ErrorKind::AddrInUse {
                        match binding.as_deref_mut() {
                            Some(binding) => binding.failed.push((p, e)),
                            None => {
                                if let Some(held_back) = self.no_capacity.ready() {
                                    tracing::error!(
                                        port = p,
                                        "cannot open relay ports {p}/{}: {e}{}",
                                        p + 1,
                                        more(held_back)
                                    );
                                }
                            }
                        }
                        continue;
                    }
                    self.port_bind_failures.fetch_add(1, Ordering::Relaxed);
                    let replacement = binding
                        .as_deref_mut()
                        .and_then(|b| table.move_unbindable(p).inspect(|&new| b.moved.push((p, new))));
                    match replacement {
                        Some(new) => tracing::warn!(
                            port = p,
                            "relay ports {p}/{} are busy ({e}); using {new}/{} instead",
                            p + 1,
                            new + 1
                        ),
                        None => tracing::error!(port = p, "cannot open relay ports {p}/{}: {e}", p + 1),
                    }
                }
                Event::ClosePorts(p) => self.datapath.close_ports(p),
                Event::Expired(stats) => expired.push(stats),
                Event::FlowUp(flow) => {
                    if !self.datapath.flow_up(&flow) {
                        table.flow_refused(flow.id);
                    }
                }
                Event::FlowDown(id) => self.datapath.flow_down(id),
                Event::Latched(latch) => self.log_latch(&latch),
                Event::RouteUp(route) => {
                    let f = self.datapath.set_route(route.port, Some(route));
                    table.forwarded(route.port, f.packets, f.bytes, f.last);
                }
                Event::RouteDown(port) => {
                    let f = self.datapath.set_route(port, None);
                    table.forwarded(port, f.packets, f.bytes, f.last);
                }
            }
        }
        if changed {
            self.save.notify_one();
        }
        expired
    }

    /// A fallback latch is a WARN: the leg went to a source neither the SDP
    /// nor the signaling vouched for. A moved latch (a NAT rebind) is INFO.
    fn log_latch(&self, l: &relaybox_core::Latch) {
        let kind = if l.rtcp { "RTCP" } else { "RTP" };
        let signaling = l.signaling_ip.map_or_else(|| "none usable".to_string(), |ip| ip.to_string());
        let window = self.config.relay.latching_window.as_secs_f64();
        match (l.rule, l.previous) {
            // RTCP follows an RTP fallback (already logged) from its IP.
            (relaybox_core::LatchRule::Fallback, _) if l.rtcp => tracing::info!(
                call_id = %l.call_id,
                side = %l.side,
                source = %l.source,
                "{} RTCP latched to {}, the IP its RTP fell back to",
                l.side,
                l.source
            ),
            (relaybox_core::LatchRule::Fallback, _) if window > 0.0 => tracing::warn!(
                call_id = %l.call_id,
                side = %l.side,
                source = %l.source,
                "{} {kind} latched to {}, which nothing vouches for: no source that its SDP address {} or its \
                 signaling IP ({signaling}) vouches for arrived within latching_window ({window} s)",
                l.side,
                l.source,
                l.announced
            ),
            (relaybox_core::LatchRule::Fallback, _) => tracing::info!(
                call_id = %l.call_id,
                side = %l.side,
                source = %l.source,
                "{} {kind} latched to the first source, {} (latching_window = 0)",
                l.side,
                l.source
            ),
            (rule, Some(previous)) => tracing::info!(
                call_id = %l.call_id,
                side = %l.side,
                source = %l.source,
                "{} {kind} moved from {previous} to {} ({})",
                l.side,
                l.source,
                rule.as_str()
            ),
            (rule, None) => {
                tracing::debug!(call_id = %l.call_id, side = %l.side, source = %l.source, "{kind} latched ({})", rule.as_str())
            }
        }
    }

    /// Reads the kernel's counters of the given flows into the table (before
    /// an update or remove may end them, and periodically).
    fn poll_flow_counters(&self, table: &mut SessionTable, ids: Vec<relaybox_core::FlowId>) {
        let now = self.clock.now_ms();
        for id in ids {
            if let Some(c) = self.datapath.flow_counters(id) {
                table.set_flow_counters(id, c, now);
            }
        }
    }

    fn report_expired(&self, expired: Vec<SessionStats>) {
        if expired.is_empty() {
            return;
        }
        for mut stats in expired {
            self.wall_clock(&mut stats);
            tracing::info!(call_id = %stats.call_id, "session expired");
            let origin = lock(&self.origin).remove(&stats.call_id);
            let links = lock(&self.links);
            match links.iter().find(|l| Some(l.id) == origin).or_else(|| links.first()) {
                Some(l) => {
                    let _ = l.tx.send(Outbound::Line(Box::new(RelayLine::Expired(stats))));
                }
                None => {
                    tracing::info!(call_id = %stats.call_id, "no dispatcher connected: the expired report waits for one");
                    lock(&self.pending_expired).push(stats);
                }
            }
        }
        self.check_halted();
    }

    fn check_halted(&self) {
        if self.halting.load(Ordering::Relaxed) && self.table().session_count() == 0 {
            tracing::info!("halting: last session ended, exiting");
            self.exit.notify_one();
        }
    }

    /// Answers one dispatcher command.
    pub fn handle(&self, request: LinkRequest, link_id: u64, link_local: IpAddr) -> String {
        let now = self.clock.now_ms();
        match request {
            LinkRequest::Update(update) => {
                let mut table = self.table();
                if self.halting.load(Ordering::Relaxed) && !table.has_session(&update.call_id) {
                    return UpdateReply::Halting.payload();
                }
                let known = table.has_session(&update.call_id);
                if !known && update.media.is_empty() && update.party == PartyType::Reply {
                    // A reply without SDP for a call this relay does not
                    // have: nothing to set up. MediaProxy answers `None`
                    // and keeps no session.
                    return UpdateReply::NoMedia.payload();
                }
                let ip = self.reply_ip(link_local, sdp_receiver(&update));
                if let Some(item) = foreign_family(&update.media, ip) {
                    // One reply address serves one family: a relay address
                    // of the other family would reach nobody (and the
                    // kernel cannot NAT between IPv4 and IPv6).
                    tracing::error!(
                        call_id = %update.call_id,
                        media = %item.ip,
                        relay = %ip,
                        "update refused: media address {} is {}, but the relay answers with {} ({}); \
                         one relay address cannot serve both families, the call goes without the relay",
                        item.ip,
                        family(item.ip),
                        ip,
                        family(ip)
                    );
                    return UpdateReply::Error.payload();
                }
                let pairs = table.session_ports(&update.call_id);
                self.count_forwarded(&mut table, pairs);
                let flows = table.session_flow_ids(&update.call_id);
                self.poll_flow_counters(&mut table, flows);
                let existed = table.has_session(&update.call_id);
                let mut result = table.update(&update, ip, now);
                let mut binding = Binding::default();
                let mut expired = self.apply_events_binding(&mut table, Some(&mut binding));
                if result.is_ok() && !binding.failed.is_empty() {
                    // No capacity: never answer with a port that is not
                    // bound. A new call is forgotten (the dispatcher tries
                    // the next relay); in a known call the streams that
                    // could not be bound are rejected.
                    if existed {
                        for (p, _) in &binding.failed {
                            table.reject_unbindable(*p, now);
                        }
                    } else {
                        table.discard(&update.call_id);
                    }
                    expired.extend(self.apply_events(&mut table));
                    let (port, e) = &binding.failed[0];
                    if let Some(held_back) = self.no_capacity.ready() {
                        tracing::warn!(
                            call_id = %update.call_id,
                            "update answered error: cannot open relay ports {port}/{} ({e}); {} of the range's pairs \
                             in use{}",
                            port + 1,
                            table.ports_in_use() / 2,
                            more(held_back)
                        );
                    }
                    result = Err(relaybox_core::CoreError::NoFreePorts);
                }
                drop(table);
                self.save.notify_one();
                self.report_expired(expired);
                self.wake.notify_one();
                match result {
                    Ok(_) if !known && update.media.is_empty() => {
                        // A request without SDP opens a session that has no
                        // streams yet: no ports to give (MediaProxy: `None`).
                        lock(&self.origin).insert(update.call_id.clone(), link_id);
                        UpdateReply::NoMedia.payload()
                    }
                    Ok(mut ports) => {
                        for port in &mut ports {
                            // A pair may have moved more than once.
                            for &(old, new) in &binding.moved {
                                if *port == old {
                                    *port = new;
                                }
                            }
                        }
                        lock(&self.origin).insert(update.call_id.clone(), link_id);
                        UpdateReply::Ports(RelayPorts { ip, ports }).payload()
                    }
                    Err(e) => {
                        if binding.failed.is_empty() {
                            tracing::warn!(call_id = %update.call_id, "update refused: {e}");
                        }
                        UpdateReply::Error.payload()
                    }
                }
            }
            LinkRequest::Remove(remove) => {
                let mut table = self.table();
                let pairs = table.session_ports(&remove.call_id);
                self.count_forwarded(&mut table, pairs);
                let flows = table.session_flow_ids(&remove.call_id);
                self.poll_flow_counters(&mut table, flows);
                let result = table.remove(&remove, now);
                let expired = self.apply_events(&mut table);
                drop(table);
                self.save.notify_one();
                self.report_expired(expired);
                lock(&self.origin).remove(&remove.call_id);
                self.check_halted();
                match result {
                    Ok(stats) => {
                        tracing::info!(
                            call_id = %remove.call_id,
                            userspace_packets = self.userspace_packets.load(Ordering::Relaxed),
                            "session removed"
                        );
                        let mut stats = stats;
                        self.wall_clock(&mut stats);
                        stats.to_json()
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %remove.call_id, "remove refused: {e}");
                        "error".to_string()
                    }
                }
            }
            // The dispatcher's form of a module request; it arrives here
            // parsed as Update/Remove.
            LinkRequest::Module(frame) => self.handle(frame.request.into(), link_id, link_local),
            LinkRequest::Summary => self.summary(link_local).to_json(),
            LinkRequest::Sessions => {
                // Live statistics include what the kernel and the routes
                // forwarded so far.
                let mut table = self.table();
                self.count_all_forwarded(&mut table);
                let flows = table.flow_ids();
                self.poll_flow_counters(&mut table, flows);
                let mut list = table.sessions(now);
                // Thousands of sessions take a while to write out: not
                // with the table locked (packets and updates wait on it).
                drop(table);
                list.iter_mut().for_each(|s| self.wall_clock(s));
                // Calls that ended while no dispatcher was connected are still
                // ours until their reports, sent after this answer, are taken.
                list.extend(lock(&self.pending_expired).iter().cloned());
                SessionStats::list_to_json(&list)
            }
        }
    }

    /// Report times on the system's wall clock: the session core runs on a
    /// clock that never jumps (timeouts), which a box without an RTC started
    /// before NTP set the time.
    fn wall_clock(&self, stats: &mut SessionStats) {
        stats.start_time = stats.start_time.map(|t| self.clock.wall_secs(t));
    }

    fn summary(&self, link_local: IpAddr) -> Summary {
        let table = self.table();
        Summary {
            ip: self.reply_ip(link_local, None).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: if self.halting.load(Ordering::Relaxed) { RelayStatus::Halting } else { RelayStatus::Active },
            uptime: self.clock.uptime_secs(),
            session_count: table.session_count() as u64,
            stream_count: table.stream_counts(),
            bps_relayed: self.bps.load(Ordering::Relaxed),
            datapath: Some(self.datapath.name().to_string()),
            bleed_drops: Some(table.bleed_drops()),
        }
    }

    /// Sleeps until the table's next deadline and processes it, forever.
    async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self.table().next_timeout();
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(self.clock.instant_at(at).into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {
                    let now = self.clock.now_ms();
                    let mut table = self.table();
                    // A stream whose media goes by route is not idle.
                    let due = table.ports_due(now);
                    self.count_forwarded(&mut table, due);
                    table.handle_timeout(now);
                    let expired = self.apply_events(&mut table);
                    drop(table);
                    self.report_expired(expired);
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn run_sampling(self: Arc<Self>) {
        let period = self.config.relay.traffic_sampling_period.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        let mut last = 0u64;
        loop {
            tick.tick().await;
            self.poll_all_flow_counters();
            // Counters and userspace latches change without events.
            self.save.notify_one();
            // Userspace forwarding and the kernel's counters alike.
            let total = self.table().relayed().bytes;
            let bps = total.saturating_sub(last) * 8 / period.as_secs().max(1);
            self.bps.store(bps, Ordering::Relaxed);
            last = total;
        }
    }

    /// SIGTERM: every session ends now and is reported as expired; wait
    /// (bounded) until the reports are written.
    async fn expire_all_and_flush(&self) {
        let expired = {
            let mut table = self.table();
            self.count_all_forwarded(&mut table);
            table.expire_all(self.clock.now_ms());
            self.apply_events(&mut table)
        };
        self.report_expired(expired);
        self.flush_links().await;
    }

    /// Waits (bounded) until every link has written what is queued for it.
    async fn flush_links(&self) {
        let waits: Vec<oneshot::Receiver<()>> = lock(&self.links)
            .iter()
            .filter_map(|l| {
                let (tx, rx) = oneshot::channel();
                l.tx.send(Outbound::Flush(tx)).ok().map(|_| rx)
            })
            .collect();
        for w in waits {
            let _ = tokio::time::timeout(Duration::from_secs(3), w).await;
        }
    }
}

/// What a relay's update found when it bound its ports.
#[derive(Default)]
struct Binding {
    /// Pairs another program held, and the pairs that replaced them.
    moved: Vec<(u16, u16)>,
    /// Pairs that could not be bound for want of resources.
    failed: Vec<(u16, std::io::Error)>,
}

/// ` (n more since the last such line)` for a throttled log line.
fn more(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} more since the last such line)")
    }
}

/// Descriptors the relay keeps for everything but its media sockets: the
/// dispatcher links, the control socket and its connections, the state
/// file and its directory while the snapshot is written, conntrack
/// sockets, the runtime and the standard streams. Media sockets are not
/// opened into this reserve (see `UserspaceDatapath`), so calls never
/// starve the snapshot writer or the links.
pub(crate) fn reserved_descriptors(config: &Config) -> u64 {
    64 + config.relay.dispatchers.len() as u64 + crate::control::MAX_CONNECTIONS as u64
}

/// The descriptors the relay's settings can make it hold at once: two
/// sockets per port pair (RTP and RTCP), for as many pairs as both the port
/// range and `max_sessions` × `max_streams_per_session` × 2 allow, plus the
/// [reserve](reserved_descriptors).
pub fn descriptor_budget(config: &Config) -> DescriptorBudget {
    let r = &config.relay;
    let range_pairs = u64::from(r.port_range.end.saturating_sub(r.port_range.start) / 2);
    let session_pairs = (r.max_sessions as u64).saturating_mul(r.max_streams_per_session as u64).saturating_mul(2);
    let pairs = range_pairs.min(session_pairs);
    let which = if pairs == range_pairs {
        format!("its {range_pairs} pairs ([Relay] port_range = {}:{})", r.port_range.start, r.port_range.end)
    } else {
        format!(
            "{session_pairs} pairs ([Relay] max_sessions = {} × max_streams_per_session = {} × 2)",
            r.max_sessions, r.max_streams_per_session
        )
    };
    DescriptorBudget::new()
        .add(format!("media sockets (2 per port pair, {which})"), pairs * 2)
        .add("dispatcher links, the control socket, the state file and the runtime", reserved_descriptors(config))
}

fn family(ip: IpAddr) -> &'static str {
    if ip.to_canonical().is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The first media item that is relayed (not rejected, not a `0.0.0.0`/`::`
/// hold) and whose address is of another family than `relay_ip`
/// (IPv4-mapped IPv6 addresses count as IPv4).
fn foreign_family(media: &[relaybox_proto::MediaItem], relay_ip: IpAddr) -> Option<&relaybox_proto::MediaItem> {
    media.iter().find(|m| {
        m.port != 0 && !m.ip.is_unspecified() && m.ip.to_canonical().is_ipv4() != relay_ip.to_canonical().is_ipv4()
    })
}

/// Who will receive the SDP of `update`, from its `signaling_ip` (MediaProxy's
/// `src_dst`, the source and destination of the SIP *request*; the module
/// sends the transaction's value with the reply too). A request's SDP goes
/// where the request goes: `dst`, or `src` when `dst` is unknown. A reply's
/// SDP goes back to the request's sender: `src`. So an initial INVITE's SDP
/// (caller -> callee) uses `dst` and the 200 OK's (callee -> caller) uses the
/// caller's `src`; a re-INVITE from the callee likewise uses its `dst`.
fn sdp_receiver(update: &relaybox_proto::UpdateRequest) -> Option<IpAddr> {
    let s = update.signaling_ip?;
    match update.party {
        relaybox_proto::PartyType::Request => Some(s.dst.unwrap_or(s.src)),
        relaybox_proto::PartyType::Reply => Some(s.src),
    }
}

/// The local address of the interface that routes towards `peer`: a route
/// lookup that sends nothing (UDP `connect`). Not cached, routes change.
pub(crate) fn local_ip_towards(peer: IpAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = match peer {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    socket.connect((peer, 9))?;
    let ip = socket.local_addr()?.ip();
    if ip.is_unspecified() {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no local address"));
    }
    Ok(ip)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.relay.dispatchers.is_empty() {
        // An unprovisioned box: say so once and wait for a signal instead of
        // exiting (which would only make the supervisor restart us).
        tracing::warn!("[Relay] dispatchers is empty: no dispatcher to connect to; waiting for a configuration");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }
    crate::trust::warn_at_start(&config, relaybox_tls::Role::Relay);
    let files = relaybox_tls::TlsFiles::for_role(&config.tls.certs_path, relaybox_tls::Role::Relay);
    // Only a dispatcher's certificate is accepted from the other end.
    let dispatchers = relaybox_tls::PeerRole {
        role: relaybox_tls::Role::Dispatcher,
        accept_unmarked: config.tls.accept_unmarked_certificates,
    };
    let tls = relaybox_tls::client_config(&files, dispatchers).context("loading TLS credentials")?;
    let relay = Relay::new(config)?;
    let ports = format!("{}:{}", relay.config.relay.port_range.start, relay.config.relay.port_range.end);
    if relay.datapath.name() == "kernel" {
        tracing::info!(datapath = "kernel", ports = %ports, "relay starting; the kernel forwards latched media ({})", relay.datapath_reason);
    } else if relay.config.relay.datapath == DatapathMode::Userspace {
        tracing::info!(datapath = "userspace", ports = %ports, "relay starting; media is forwarded in userspace ({})", relay.datapath_reason);
    } else {
        tracing::warn!(
            datapath = "userspace",
            ports = %ports,
            "relay starting; media is forwarded in userspace, falling back from the kernel: {}",
            relay.datapath_reason
        );
    }
    let range = (relay.config.relay.port_range.start, relay.config.relay.port_range.end);
    if let Some(warning) = ephemeral::warning(range) {
        tracing::warn!("{warning}");
    }
    relay.resume();
    tokio::spawn(relay.clone().run_snapshots());
    tokio::spawn(relay.clone().run_timers());
    tokio::spawn(relay.clone().run_sampling());
    crate::control::spawn(relay.clone());
    for target in relay.config.relay.dispatchers.clone() {
        tokio::spawn(link::run(relay.clone(), target, tls.clone()));
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                relay.halting.store(true, Ordering::Relaxed);
                tracing::info!("SIGHUP: halting, no new sessions; exiting when the last one ends");
                relay.check_halted();
            }
            _ = usr1.recv() => {
                // Stop for a restart: the sessions go to the state file, the
                // kernel keeps forwarding their flows, the next relay
                // process picks both up.
                let relay = relay.clone();
                tokio::task::spawn_blocking(move || {
                    relay.poll_all_flow_counters();
                    relay.save_now(true);
                    tracing::info!(
                        sessions = relay.table().session_count(),
                        file = %relay.config.relay.state_file.display(),
                        "SIGUSR1: stopping for a restart; sessions saved, kernel flows left forwarding"
                    );
                })
                .await?;
                return Ok(());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = relay.exit.notified() => {
                relay.flush_links().await;
                relay.discard_state();
                relay.datapath.shutdown();
                return Ok(());
            }
        }
    }
    tracing::info!("terminating: expiring all sessions");
    relay.expire_all_and_flush().await;
    relay.discard_state();
    relay.datapath.shutdown();
    Ok(())
}
