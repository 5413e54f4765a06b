//! The relay daemon: keeps TLS links to its dispatchers, feeds their commands
//! to the sans-I/O session table, and lets a [`datapath::Datapath`] move the
//! media. Timers and signals live here too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use relaybox_config::Config;
use relaybox_core::{CoreConfig, Event, SessionTable};
use relaybox_proto::link::{LinkRequest, RelayLine, UpdateReply};
use relaybox_proto::module::RelayPorts;
use relaybox_proto::stats::RelayStatus;
use relaybox_proto::{SessionStats, Summary};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::Clock;

pub(crate) mod datapath;
mod kernel;
mod link;

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
    pub bytes_relayed: AtomicU64,
    bps: AtomicU64,
    /// Datagrams the userspace forwarder received (with the kernel datapath,
    /// only the first packets of each flow).
    pub userspace_packets: AtomicU64,
    /// Why this datapath, for the start-up log.
    datapath_reason: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    fn new(config: Config) -> Arc<Self> {
        let r = &config.relay;
        let readiness = kernel::prepare(r.relay_ip);
        let mut reason = readiness.report.join("; ");
        if !readiness.missing.is_empty() {
            reason = format!("kernel forwarding unavailable: {}", readiness.missing.join("; "));
        }
        let kernel_flows = readiness.flows;
        let core = CoreConfig {
            port_range: (r.port_range.start, r.port_range.end),
            stream_timeout: r.stream_timeout.as_millis() as u64,
            on_hold_timeout: r.on_hold_timeout.as_millis() as u64,
            routable_private_ranges: r.routable_private_ranges.clone(),
            max_sessions: r.max_sessions,
            max_streams: r.max_streams_per_session,
            kernel_flows: kernel_flows.is_some(),
        };
        let bind_ip = r.relay_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Arc::new_cyclic(|weak| Relay {
            datapath: {
                let userspace = UserspaceDatapath::new(bind_ip, weak.clone());
                match kernel_flows {
                    Some(table) => {
                        let dp = KernelDatapath::new(userspace, table, bind_ip);
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
            config,
            clock: Clock::new(),
            table: Mutex::new(SessionTable::new(core)),
            halting: AtomicBool::new(false),
            wake: Notify::new(),
            exit: Notify::new(),
            links: Mutex::new(Vec::new()),
            origin: Mutex::new(HashMap::new()),
            next_link_id: AtomicU64::new(1),
            bytes_relayed: AtomicU64::new(0),
            bps: AtomicU64::new(0),
        })
    }

    pub fn table(&self) -> MutexGuard<'_, SessionTable> {
        lock(&self.table)
    }

    pub fn register_link(&self, tx: mpsc::UnboundedSender<Outbound>) -> u64 {
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.links).push(LinkHandle { id, tx });
        id
    }

    pub fn unregister_link(&self, id: u64) {
        lock(&self.links).retain(|l| l.id != id);
    }

    /// The address put in replies: `advertised_ip`, else `relay_ip`, else the
    /// local address of the link the request came over.
    fn reply_ip(&self, link_local: IpAddr) -> IpAddr {
        self.config.relay.advertised_ip.or(self.config.relay.relay_ip).unwrap_or(link_local)
    }

    /// Runs the core's queued events: ports to open or close. Returns the
    /// sessions that expired, to be reported with [`Relay::report_expired`]
    /// once the table lock is released. Called after every call into the
    /// table.
    #[must_use]
    fn apply_events(&self, table: &mut SessionTable) -> Vec<SessionStats> {
        let mut expired = Vec::new();
        while let Some(event) = table.poll_event() {
            match event {
                Event::OpenPorts(p) => {
                    if let Err(e) = self.datapath.open_ports(p) {
                        tracing::error!(port = p, "cannot open relay ports {p}/{}: {e}", p + 1);
                    }
                }
                Event::ClosePorts(p) => self.datapath.close_ports(p),
                Event::Expired(stats) => expired.push(stats),
                Event::FlowUp(flow) => self.datapath.flow_up(&flow),
                Event::FlowDown(id) => self.datapath.flow_down(id),
            }
        }
        expired
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
        for stats in expired {
            tracing::info!(call_id = %stats.call_id, "session expired");
            let origin = lock(&self.origin).remove(&stats.call_id);
            let links = lock(&self.links);
            match links.iter().find(|l| Some(l.id) == origin).or_else(|| links.first()) {
                Some(l) => {
                    let _ = l.tx.send(Outbound::Line(Box::new(RelayLine::Expired(stats))));
                }
                None => {
                    tracing::warn!(call_id = %stats.call_id, "no dispatcher connected to report the expired session to")
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
                let ip = self.reply_ip(link_local);
                let flows = table.session_flow_ids(&update.call_id);
                self.poll_flow_counters(&mut table, flows);
                let result = table.update(&update, ip, now);
                let expired = self.apply_events(&mut table);
                drop(table);
                self.report_expired(expired);
                self.wake.notify_one();
                match result {
                    Ok(ports) => {
                        lock(&self.origin).insert(update.call_id.clone(), link_id);
                        UpdateReply::Ports(RelayPorts { ip, ports }).payload()
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %update.call_id, "update refused: {e}");
                        UpdateReply::Error.payload()
                    }
                }
            }
            LinkRequest::Remove(remove) => {
                let mut table = self.table();
                let flows = table.session_flow_ids(&remove.call_id);
                self.poll_flow_counters(&mut table, flows);
                let result = table.remove(&remove, now);
                let expired = self.apply_events(&mut table);
                drop(table);
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
                        stats.to_json()
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %remove.call_id, "remove refused: {e}");
                        "error".to_string()
                    }
                }
            }
            LinkRequest::Summary => self.summary(link_local).to_json(),
            LinkRequest::Sessions => SessionStats::list_to_json(&self.table().sessions(now)),
        }
    }

    fn summary(&self, link_local: IpAddr) -> Summary {
        let table = self.table();
        Summary {
            ip: self.reply_ip(link_local).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: if self.halting.load(Ordering::Relaxed) { RelayStatus::Halting } else { RelayStatus::Active },
            uptime: self.clock.uptime_secs(),
            session_count: table.session_count() as u64,
            stream_count: table.stream_counts(),
            bps_relayed: self.bps.load(Ordering::Relaxed),
            datapath: Some(self.datapath.name().to_string()),
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
            {
                let mut table = self.table();
                let flows = table.flow_ids();
                self.poll_flow_counters(&mut table, flows);
            }
            let total = self.bytes_relayed.load(Ordering::Relaxed);
            let bps = (total - last) * 8 / period.as_secs().max(1);
            self.bps.store(bps, Ordering::Relaxed);
            last = total;
        }
    }

    /// SIGTERM: every session ends now and is reported as expired; wait
    /// (bounded) until the reports are written.
    async fn expire_all_and_flush(&self) {
        let expired = {
            let mut table = self.table();
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

pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.relay.dispatchers.is_empty() {
        anyhow::bail!("[Relay] dispatchers is empty: the relay has no dispatcher to connect to");
    }
    let files = relaybox_tls::TlsFiles::for_role(&config.tls.certs_path, relaybox_tls::Role::Relay);
    let tls = relaybox_tls::client_config(&files).context("loading TLS credentials")?;
    let relay = Relay::new(config);
    let ports = format!("{}:{}", relay.config.relay.port_range.start, relay.config.relay.port_range.end);
    if relay.datapath.name() == "kernel" {
        tracing::info!(datapath = "kernel", ports = %ports, "relay starting; the kernel forwards latched media ({})", relay.datapath_reason);
    } else {
        tracing::warn!(
            datapath = "userspace",
            ports = %ports,
            "relay starting; media is forwarded in userspace, falling back from the kernel: {}",
            relay.datapath_reason
        );
    }
    tokio::spawn(relay.clone().run_timers());
    tokio::spawn(relay.clone().run_sampling());
    for target in relay.config.relay.dispatchers.clone() {
        tokio::spawn(link::run(relay.clone(), target, tls.clone()));
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: halting, no new sessions; exiting when the last one ends");
                relay.halting.store(true, Ordering::Relaxed);
                relay.check_halted();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = relay.exit.notified() => {
                relay.flush_links().await;
                relay.datapath.shutdown();
                return Ok(());
            }
        }
    }
    tracing::info!("terminating: expiring all sessions");
    relay.expire_all_and_flush().await;
    relay.datapath.shutdown();
    Ok(())
}
