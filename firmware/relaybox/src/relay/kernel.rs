//! The kernel datapath: start-up checks that make conntrack forwarding work
//! (or say exactly why it cannot), and [`KernelDatapath`], which lets the
//! userspace forwarder latch the first packets and then installs one NAT'd
//! conntrack entry per latched flow so the kernel forwards the rest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};

use relaybox_conntrack::{Conntrack, Counters, DestroyEvents, Error as CtError, FlowSpec, FlowTable, Tuple};
use relaybox_core::{Flow, FlowCounters, FlowId};

use super::datapath::{Datapath, Forwarded, UserspaceDatapath};
use super::Relay;

/// The conntrack mark of every entry relaybox installs ("rb" + 1).
pub(crate) const RELAYBOX_MARK: u32 = 0x7262_0001;
/// First timeout of a new entry; packets then re-arm the kernel's UDP
/// timeouts (`nf_conntrack_udp_timeout_stream`, 120 s by default).
const INITIAL_TIMEOUT_SECS: u32 = 60;
/// Attempts to replace a plain entry that the first packets created.
const INSTALL_ATTEMPTS: usize = 3;

/// Which local address a kernel entry gives the relay's side of a flow:
/// the address the party's packets are addressed to when they reach us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalAddr {
    /// `relay_ip`: the ports are bound to it (behind `advertised_ip` too).
    Fixed(IpAddr),
    /// No `advertised_ip`: each side was told a local address (its own
    /// interface's with `auto_detect_interfaces`, else the address of the
    /// dispatcher link), and sends there.
    Told,
    /// `advertised_ip` without `relay_ip`: the parties send to the NAT's
    /// address; what reaches us is addressed to the local source address
    /// of the route towards the party.
    Routed,
}

/// What the start-up checks found.
pub(crate) struct Readiness {
    /// Present when the kernel can forward.
    pub flows: Option<Arc<Conntrack>>,
    /// One line per check, for the start-up log.
    pub report: Vec<String>,
    /// What is missing, when `flows` is `None`.
    pub missing: Vec<String>,
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Makes a boolean sysctl 1; says what it did.
fn ensure_sysctl(path: &str, report: &mut Vec<String>, missing: &mut Vec<String>) {
    let name = path.trim_start_matches("/proc/sys/").replace('/', ".");
    match read_sysctl(path).as_deref() {
        Some("1") => report.push(format!("{name}=1")),
        Some(_) => match std::fs::write(path, "1") {
            Ok(()) if read_sysctl(path).as_deref() == Some("1") => report.push(format!("{name}: was 0, set to 1")),
            Ok(()) => missing.push(format!("{name} is 0 and did not change when set to 1")),
            Err(e) => missing.push(format!("{name} is 0 and cannot be set ({e}): run `sysctl -w {name}=1`")),
        },
        None => missing.push(format!("{name} does not exist (is nf_conntrack loaded?)")),
    }
}

/// IPv6 forwarding makes the kernel ignore router advertisements on every
/// interface whose `accept_ra` is 1, so an uplink configured by SLAAC would
/// lose its address and default route when they expire. Such interfaces
/// (and `default`, for ones added later) get `accept_ra = 2`: advertisements
/// are still taken while forwarding, as on any IPv6 router.
fn keep_router_advertisements(conf_dir: &std::path::Path, report: &mut Vec<String>) {
    let Ok(dir) = std::fs::read_dir(conf_dir) else { return };
    let mut changed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "all" || name == "lo" {
            continue;
        }
        let path = entry.path().join("accept_ra");
        let was_one = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1");
        if was_one && std::fs::write(&path, "2").is_ok() {
            changed.push(name);
        }
    }
    if !changed.is_empty() {
        changed.sort();
        report.push(format!(
            "accept_ra 1 -> 2 on {} (router advertisements still taken with forwarding on)",
            changed.join(",")
        ));
    }
}

/// Removes relaybox's nftables table (at exit, and when the kernel
/// datapath is not used after all).
pub(crate) fn remove_nft_table() {
    if let Err(e) = relaybox_conntrack::nft::delete_table() {
        tracing::warn!("cannot delete the nftables table inet relaybox: {e}");
    }
}

/// Checks, and fixes where it may, what kernel forwarding needs:
/// a real relay address, IP forwarding for the relay's family (`v6`),
/// conntrack and NAT hooks (through relaybox's own nft table),
/// `nf_conntrack_acct`, ctnetlink with NAT (a probe entry), and DESTROY
/// events.
pub(crate) fn prepare(local: LocalAddr, v6: bool, port_range: (u16, u16)) -> Readiness {
    let mut report = Vec::new();
    let mut missing = Vec::new();
    let ip = match local {
        LocalAddr::Fixed(ip) if ip.is_loopback() || ip.is_unspecified() => {
            missing.push(format!("relay_ip {ip} is a loopback address; the kernel routes media only for a real one"));
            return Readiness { flows: None, report, missing };
        }
        LocalAddr::Fixed(ip) => ip,
        // The probe entry needs no local address.
        _ if v6 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        _ => IpAddr::from([198, 51, 100, 1]),
    };
    match local {
        LocalAddr::Fixed(_) => {}
        LocalAddr::Told => report.push("kernel entries use the relay address each side was told".to_string()),
        LocalAddr::Routed => report.push(
            "advertised_ip without relay_ip: kernel entries use the local address of the route towards each party"
                .to_string(),
        ),
    }
    if ip.is_ipv6() {
        // Before forwarding goes on: the kernel drops RA-learned routes of
        // interfaces that stop accepting advertisements.
        if read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding").as_deref() == Some("0") {
            keep_router_advertisements(std::path::Path::new("/proc/sys/net/ipv6/conf"), &mut report);
        }
        ensure_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", &mut report, &mut missing);
    } else {
        ensure_sysctl("/proc/sys/net/ipv4/ip_forward", &mut report, &mut missing);
    }
    // The nftables table that turns on the conntrack hooks (a `ct`
    // expression) and the NAT hooks (empty `nat` chains) in this network
    // namespace, and leaves untracked the datagrams the relay itself sends
    // from its port range: a userspace-forwarded packet racing a flow's
    // installation would otherwise get a conntrack entry that clashes with
    // the flow's, and the kernel would give it another source port, possibly
    // another stream's relay port, whose packets the entry would then steal.
    match relaybox_conntrack::nft::apply_table(port_range) {
        Ok(()) => report.push("nft table inet relaybox added (conntrack and NAT hooks on)".to_string()),
        Err(e) => missing.push(format!("cannot add nft table inet relaybox for the conntrack/NAT hooks: {e}")),
    }
    ensure_sysctl("/proc/sys/net/netfilter/nf_conntrack_acct", &mut report, &mut missing);
    let flows = match Conntrack::open() {
        Ok(ct) => Some(ct),
        Err(e) => {
            missing.push(format!("ctnetlink: {e}"));
            None
        }
    };
    if let Some(ct) = &flows {
        match probe_nat(ct, ip) {
            Ok(()) => report.push("ctnetlink NAT entries work".to_string()),
            Err(e) => missing.push(format!("ctnetlink cannot create a NAT'd entry: {e}")),
        }
    }
    if missing.is_empty() {
        Readiness { flows: flows.map(Arc::new), report, missing }
    } else {
        remove_nft_table();
        Readiness { flows: None, report, missing }
    }
}

/// Creates and deletes one entry from a documentation address, proving
/// that ctnetlink and NAT work in this network namespace.
fn probe_nat(ct: &Conntrack, relay: IpAddr) -> Result<(), CtError> {
    let peer = |last: u8| match relay {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::from([192, 0, 2, last]), 9),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last)]), 9),
    };
    let spec = FlowSpec {
        caller: peer(1),
        relay_caller_side: SocketAddr::new(relay, 9),
        relay_callee_side: SocketAddr::new(relay, 11),
        callee: peer(2),
        timeout_secs: 5,
        mark: RELAYBOX_MARK,
    };
    let _ = ct.delete(&spec.orig());
    ct.create(&spec)?;
    ct.delete(&spec.orig())
}

/// A flow the kernel forwards for us.
struct Installed {
    spec: FlowSpec,
}

/// Userspace latches; the kernel forwards what is latched.
pub(crate) struct KernelDatapath {
    userspace: UserspaceDatapath,
    table: Arc<dyn FlowTable>,
    /// Where the relay's side of each entry is.
    local: LocalAddr,
    /// The family whose forwarding `prepare` turned on (the other one may
    /// be off: its flows then stay in userspace).
    v6: bool,
    flows: Mutex<HashMap<FlowId, Installed>>,
    /// Original tuple → flow, to match DESTROY events.
    by_orig: Arc<Mutex<HashMap<Tuple, FlowId>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// IP-level bytes from conntrack to UDP payload bytes, as userspace counts.
fn payload_counters(c: Counters, v4: bool) -> FlowCounters {
    let header: u64 = if v4 { 20 + 8 } else { 40 + 8 };
    FlowCounters {
        caller_packets: c.orig_packets,
        caller_bytes: c.orig_bytes.saturating_sub(c.orig_packets.saturating_mul(header)),
        callee_packets: c.reply_packets,
        callee_bytes: c.reply_bytes.saturating_sub(c.reply_packets.saturating_mul(header)),
    }
}

impl KernelDatapath {
    pub fn new(userspace: UserspaceDatapath, table: Arc<dyn FlowTable>, local: LocalAddr, v6: bool) -> Self {
        KernelDatapath {
            userspace,
            table,
            local,
            v6,
            flows: Mutex::new(HashMap::new()),
            by_orig: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Watches DESTROY events on a thread of its own: a flow whose entry the
    /// kernel timed out ends in the session table as `conntrack timeout`.
    pub fn watch_destroy_events(&self, relay: Weak<Relay>) -> Result<(), CtError> {
        let mut events = DestroyEvents::subscribe()?;
        let by_orig = self.by_orig.clone();
        std::thread::Builder::new()
            .name("conntrack-events".to_string())
            .spawn(move || loop {
                let entries = match events.recv() {
                    Ok(entries) => entries,
                    Err(CtError::EventsLost) => {
                        tracing::warn!("conntrack DESTROY events were lost; timed-out flows end at remove");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("conntrack events: {e}; kernel timeouts are no longer seen");
                        return;
                    }
                };
                let Some(relay) = relay.upgrade() else { return };
                for entry in entries.into_iter().filter(|e| e.mark == RELAYBOX_MARK) {
                    let Some(id) = lock(&by_orig).remove(&entry.orig) else { continue };
                    let counters = payload_counters(entry.counters, entry.orig.src.is_ipv4());
                    tracing::info!(flow = id.0, "kernel flow timed out (conntrack DESTROY)");
                    let now = relay.clock.now_ms();
                    let expired = {
                        let mut table = relay.table();
                        table.flow_expired(id, counters, now);
                        relay.apply_events(&mut table)
                    };
                    relay.report_expired(expired);
                }
            })
            .map(drop)
            .map_err(CtError::Io)
    }

    /// The entry for a flow, or why the kernel cannot forward it.
    fn spec(&self, flow: &Flow) -> Result<FlowSpec, String> {
        let (caller_side, callee_side) = match self.local {
            LocalAddr::Fixed(ip) => (ip, ip),
            LocalAddr::Told => (flow.caller_local, flow.callee_local),
            LocalAddr::Routed => {
                let towards = |peer: SocketAddr| {
                    super::local_ip_towards(peer.ip()).map_err(|e| format!("no route towards {peer} ({e})"))
                };
                (towards(flow.caller)?, towards(flow.callee)?)
            }
        };
        for (side, peer) in [(caller_side, flow.caller), (callee_side, flow.callee)] {
            if side.is_loopback() || side.is_unspecified() {
                return Err(format!("relay address {side} is not routable"));
            }
            if side.is_ipv4() != peer.is_ipv4() {
                return Err(format!("relay address {side} and party {peer} are of different families"));
            }
        }
        if caller_side.is_ipv6() != self.v6 {
            let sysctl = if caller_side.is_ipv6() { "net/ipv6/conf/all/forwarding" } else { "net/ipv4/ip_forward" };
            if read_sysctl(&format!("/proc/sys/{sysctl}")).as_deref() != Some("1") {
                return Err(format!("{} is 0", sysctl.replace('/', ".")));
            }
        }
        // The parties are latched sources, which the datapath hands the
        // core in canonical form (no IPv4-mapped IPv6).
        Ok(FlowSpec {
            caller: flow.caller,
            relay_caller_side: SocketAddr::new(caller_side, flow.caller_port),
            relay_callee_side: SocketAddr::new(callee_side, flow.callee_port),
            callee: flow.callee,
            timeout_secs: INITIAL_TIMEOUT_SECS,
            mark: RELAYBOX_MARK,
        })
    }

    /// Installs one flow: deletes the plain entries the first packets made
    /// (caller → relay:A and callee → relay:B, which clash with ours), then
    /// creates ours; a packet racing in between makes a new plain entry, so
    /// this is retried a few times.
    fn install(&self, spec: &FlowSpec) -> Result<(), CtError> {
        let mut last = CtError::Exists;
        for _ in 0..INSTALL_ATTEMPTS {
            for tuple in [spec.orig(), spec.reply()] {
                match self.table.delete(&tuple) {
                    Ok(()) | Err(CtError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            match self.table.create(spec) {
                Ok(()) => return Ok(()),
                Err(CtError::Exists) => last = CtError::Exists,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

impl Datapath for KernelDatapath {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn open_ports(&self, port: u16) -> std::io::Result<()> {
        self.userspace.open_ports(port)
    }

    fn close_ports(&self, port: u16) {
        self.userspace.close_ports(port)
    }

    fn set_route(&self, port: u16, route: Option<relaybox_core::Route>) -> Forwarded {
        self.userspace.set_route(port, route)
    }

    fn take_forwarded(&self, port: u16) -> Forwarded {
        self.userspace.take_forwarded(port)
    }

    fn take_all_forwarded(&self) -> Vec<(u16, Forwarded)> {
        self.userspace.take_all_forwarded()
    }

    fn flow_up(&self, flow: &Flow) -> bool {
        let spec = match self.spec(flow) {
            Ok(spec) => spec,
            Err(why) => {
                tracing::warn!(flow = flow.id.0, caller = %flow.caller, callee = %flow.callee, "flow stays in userspace: {why}");
                return false;
            }
        };
        match self.install(&spec) {
            Ok(()) => {
                tracing::debug!(
                    flow = flow.id.0,
                    caller = %flow.caller,
                    callee = %flow.callee,
                    ports = %format!("{}/{}", flow.caller_port, flow.callee_port),
                    "flow handed to the kernel"
                );
                lock(&self.by_orig).insert(spec.orig(), flow.id);
                lock(&self.flows).insert(flow.id, Installed { spec });
                true
            }
            Err(e) => {
                tracing::warn!(flow = flow.id.0, "cannot install kernel flow, it stays in userspace: {e}");
                false
            }
        }
    }

    fn flow_down(&self, id: FlowId) {
        let Some(installed) = lock(&self.flows).remove(&id) else { return };
        let orig = installed.spec.orig();
        lock(&self.by_orig).remove(&orig);
        match self.table.delete(&orig) {
            Ok(()) | Err(CtError::NotFound) => tracing::debug!(flow = id.0, "kernel flow removed"),
            Err(e) => tracing::warn!(flow = id.0, "cannot delete kernel flow: {e}"),
        }
    }

    fn flow_counters(&self, id: FlowId) -> Option<FlowCounters> {
        let orig = lock(&self.flows).get(&id)?.spec.orig();
        match self.table.counters(&orig) {
            Ok(c) => Some(payload_counters(c, orig.src.is_ipv4())),
            Err(e) => {
                tracing::debug!(flow = id.0, "no counters: {e}");
                None
            }
        }
    }

    fn adopt_flows(&self, flows: &[Flow]) -> Vec<FlowId> {
        let entries = match self.table.dump(RELAYBOX_MARK) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("cannot list the kernel's relaybox entries ({e}); restored flows go back to userspace");
                return flows.iter().map(|f| f.id).collect();
            }
        };
        let mut unclaimed: HashMap<Tuple, relaybox_conntrack::Entry> =
            entries.into_iter().map(|e| (e.orig, e)).collect();
        let mut missing = Vec::new();
        for flow in flows {
            let Ok(spec) = self.spec(flow) else {
                missing.push(flow.id);
                continue;
            };
            match unclaimed.remove(&spec.orig()) {
                Some(e) if e.reply == spec.reply() => {
                    lock(&self.by_orig).insert(spec.orig(), flow.id);
                    lock(&self.flows).insert(flow.id, Installed { spec });
                }
                _ => missing.push(flow.id),
            }
        }
        for stale in unclaimed.values() {
            let _ = self.table.delete(&stale.orig);
        }
        tracing::info!(
            kept = flows.len() - missing.len(),
            gone = missing.len(),
            stale = unclaimed.len(),
            "kernel flows of the restored sessions found again"
        );
        missing
    }

    fn shutdown(&self) {
        let left: Vec<FlowId> = lock(&self.flows).keys().copied().collect();
        for id in left {
            self.flow_down(id);
        }
        if let Ok(entries) = self.table.dump(RELAYBOX_MARK) {
            for e in entries {
                let _ = self.table.delete(&e.orig);
            }
        }
        remove_nft_table();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaybox_conntrack::MemoryFlowTable;

    fn flow() -> Flow {
        Flow {
            id: FlowId(1),
            caller_local: "198.51.100.1".parse().unwrap(),
            callee_local: "198.51.100.1".parse().unwrap(),
            caller: "192.0.2.10:4000".parse().unwrap(),
            caller_port: 40000,
            callee_port: 40002,
            callee: "203.0.113.20:5000".parse().unwrap(),
            rtcp: false,
        }
    }

    #[tokio::test]
    async fn replaces_the_plain_entries_of_the_first_packets_and_cleans_up() {
        let table = Arc::new(MemoryFlowTable::new());
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let dp = KernelDatapath::new(
            UserspaceDatapath::new(local, Weak::new()),
            table.clone(),
            LocalAddr::Fixed(local),
            false,
        );
        let f = flow();
        let orig = Tuple { src: f.caller, dst: SocketAddr::new(local, 40000) };
        let reply = Tuple { src: f.callee, dst: SocketAddr::new(local, 40002) };
        table.insert_plain(orig);
        table.insert_plain(reply);
        dp.flow_up(&f);
        let ours = table.dump(RELAYBOX_MARK).unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!((ours[0].orig, ours[0].reply), (orig, reply));
        assert_eq!(table.len(), 1, "the plain entries are gone");

        let ip_bytes = |packets: u64, payload: u64| packets * (payload + 28);
        let c = Counters {
            orig_packets: 10,
            orig_bytes: ip_bytes(10, 172),
            reply_packets: 9,
            reply_bytes: ip_bytes(9, 172),
        };
        table.set_counters(&orig, c);
        assert_eq!(
            dp.flow_counters(f.id),
            Some(FlowCounters { caller_packets: 10, caller_bytes: 1720, callee_packets: 9, callee_bytes: 1548 })
        );
        dp.flow_down(f.id);
        assert!(table.is_empty());
        assert_eq!(dp.flow_counters(f.id), None);
    }

    #[tokio::test]
    async fn a_restarted_relay_adopts_its_entries_and_deletes_stale_ones() {
        let table = Arc::new(MemoryFlowTable::new());
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let before = KernelDatapath::new(
            UserspaceDatapath::new(local, Weak::new()),
            table.clone(),
            LocalAddr::Fixed(local),
            false,
        );
        let kept = flow();
        let gone = Flow { id: FlowId(2), caller_port: 40004, callee_port: 40006, ..flow() };
        let stale = Flow { id: FlowId(3), caller_port: 40008, callee_port: 40010, ..flow() };
        before.flow_up(&kept);
        before.flow_up(&stale);
        drop(before); // exits without shutdown: the entries stay
        assert_eq!(table.dump(RELAYBOX_MARK).unwrap().len(), 2);

        let after = KernelDatapath::new(
            UserspaceDatapath::new(local, Weak::new()),
            table.clone(),
            LocalAddr::Fixed(local),
            false,
        );
        assert_eq!(after.adopt_flows(&[kept, gone]), vec![gone.id], "its entry vanished");
        let left = table.dump(RELAYBOX_MARK).unwrap();
        assert_eq!(left.len(), 1, "the stale entry is deleted");
        assert_eq!(left[0].orig.dst.port(), 40000);
        assert!(after.flow_counters(kept.id).is_some(), "adopted: counters are read");
        after.flow_down(kept.id);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn each_side_of_an_entry_is_the_address_that_side_was_told() {
        let table = Arc::new(MemoryFlowTable::new());
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let dp = KernelDatapath::new(UserspaceDatapath::new(any, Weak::new()), table.clone(), LocalAddr::Told, false);
        let (a, b): (IpAddr, IpAddr) = ("198.51.100.1".parse().unwrap(), "203.0.113.1".parse().unwrap());
        let f = Flow { caller_local: a, callee_local: b, ..flow() };
        assert!(dp.flow_up(&f));
        let ours = table.dump(RELAYBOX_MARK).unwrap();
        assert_eq!(ours[0].orig, Tuple { src: f.caller, dst: SocketAddr::new(a, 40000) });
        assert_eq!(ours[0].reply, Tuple { src: f.callee, dst: SocketAddr::new(b, 40002) });

        // A side told a loopback address cannot be routed by the kernel.
        let lo = Flow {
            id: FlowId(2),
            caller_port: 40004,
            callee_port: 40006,
            caller_local: "127.0.0.1".parse().unwrap(),
            ..f
        };
        assert!(!dp.flow_up(&lo));
        assert_eq!(table.dump(RELAYBOX_MARK).unwrap().len(), 1);
    }
}
