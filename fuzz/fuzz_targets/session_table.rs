//! The relay's whole decision path: module-protocol text (as the
//! dispatcher forwards it) through `ModuleRequest::parse` into the
//! `SessionTable`, mixed with datagrams from chosen sources, kernel-flow
//! feedback, time passing, and snapshot + restore. Checks after every step:
//! no panic, every port of the range is either held or free, every port in
//! a reply belongs to the range, the events drain, and a snapshot restores
//! into a table that reports the same sessions.
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relaybox_core::{ClockMark, CoreConfig, Event, FlowCounters, FlowId, SessionTable, Snapshot};
use relaybox_proto::module::Limits;
use relaybox_proto::{FrameDecoder, ModuleRequest};

const RANGE: (u16, u16) = (30000, 30064);

#[derive(Arbitrary, Debug)]
enum Op {
    Update {
        call: u8,
        reply: bool,
        callee_dialog: bool,
        to_tag: bool,
        cseq: u8,
        signaling: u8,
        media: Vec<Media>,
    },
    /// Raw header text after a valid first part: the parser's corner cases.
    Raw(String),
    Remove {
        call: u8,
        by_callee: bool,
    },
    Packet {
        port: u8,
        source: u8,
        payload: Vec<u8>,
    },
    Advance(u32),
    FlowRefused(u8),
    FlowCounters(u8, u16),
    FlowExpired(u8),
    Snapshot,
    ExpireAll,
    Kernel(bool),
}

#[derive(Arbitrary, Debug)]
struct Media {
    kind: u8,
    ip: u8,
    port: u8,
    direction: u8,
    ice: bool,
}

const KINDS: [&str; 4] = ["audio", "video", "image", "text"];
const IPS: [&str; 6] = ["198.51.100.10", "192.168.1.20", "0.0.0.0", "10.0.0.5", "203.0.113.9", "100.64.1.1"];
const PORTS: [u16; 5] = [0, 4000, 4002, 6000, 65535];
const DIRECTIONS: [&str; 4] = ["sendrecv", "sendonly", "recvonly", "inactive"];
const SOURCES: [&str; 6] = [
    "198.51.100.10:4000",
    "198.51.100.10:4001",
    "203.0.113.9:6000",
    "203.0.113.77:31000",
    "192.0.2.66:999",
    "10.0.0.5:4000",
];

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

fn update_text(
    call: u8,
    reply: bool,
    callee_dialog: bool,
    to_tag: bool,
    cseq: u8,
    signaling: u8,
    media: &[Media],
) -> String {
    let (caller, callee) = (format!("f{}", call % 3), format!("t{}", call % 3));
    let (from_tag, to_tag) =
        if callee_dialog { (callee, caller) } else { (caller, if to_tag { callee } else { String::new() }) };
    let items: Vec<String> = media
        .iter()
        .take(6)
        .map(|m| {
            format!(
                "{}:{}:{}:{}:ice={}",
                pick(&KINDS, m.kind),
                pick(&IPS, m.ip),
                pick(&PORTS, m.port),
                pick(&DIRECTIONS, m.direction),
                if m.ice { "yes" } else { "no" }
            )
        })
        .collect();
    let mut text = format!(
        "update\r\ntype: {}\r\ndialog_id: 1:{call}\r\ncall_id: call-{}\r\ncseq: {cseq} INVITE\r\n\
         from_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: {from_tag}\r\n\
         to_tag: {to_tag}\r\nuser_agent: fuzz\r\nsignaling_ip: {}\r\n",
        if reply { "reply" } else { "request" },
        call % 3,
        pick(&IPS, signaling),
    );
    if !items.is_empty() {
        text.push_str(&format!("media: {}\r\n", items.join(",")));
    }
    text.push_str("\r\n");
    text
}

fn request(text: &str) -> Option<ModuleRequest> {
    let mut frames = FrameDecoder::new(4096, 64);
    frames.push(text.as_bytes());
    let frame = frames.next_frame()?.ok()?;
    ModuleRequest::parse(&frame, &Limits { max_media: 8 }).ok()
}

struct Relay {
    table: SessionTable,
    now: u64,
    flows: Vec<FlowId>,
}

impl Relay {
    fn drain(&mut self) {
        while let Some(event) = self.table.poll_event() {
            match event {
                Event::OpenPorts(p) | Event::ClosePorts(p) => {
                    assert!(p >= RANGE.0 && p < RANGE.1 && p % 2 == 0, "port {p} outside the range");
                }
                Event::FlowUp(flow) => self.flows.push(flow.id),
                Event::FlowDown(id) => self.flows.retain(|f| *f != id),
                Event::RouteUp(route) => {
                    assert!(route.port >= RANGE.0 && route.port < RANGE.1, "route {route:?} outside the range");
                }
                Event::Expired(_) | Event::Latched(_) | Event::RouteDown(_) => {}
            }
        }
        let total = usize::from(RANGE.1 - RANGE.0);
        assert_eq!(self.table.ports_in_use() + self.table.ports_free(), total, "a port was lost or doubled");
    }
}

fn config(kernel: bool) -> CoreConfig {
    CoreConfig {
        port_range: RANGE,
        max_sessions: 4,
        max_streams: 8,
        kernel_flows: kernel,
        forwarding_entries: true,
        ..CoreConfig::default()
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut relay = Relay { table: SessionTable::new(config(false)), now: 1_700_000_000_000, flows: Vec::new() };
    let relay_ip = "203.0.113.1".parse().unwrap();
    for op in ops.into_iter().take(64) {
        match op {
            Op::Update { call, reply, callee_dialog, to_tag, cseq, signaling, media } => {
                let text = update_text(call, reply, callee_dialog, to_tag, cseq, signaling, &media);
                if let Some(ModuleRequest::Update(u)) = request(&text) {
                    if let Ok(ports) = relay.table.update(&u, relay_ip, relay.now) {
                        for p in ports.iter().filter(|p| **p != 0) {
                            assert!(*p >= RANGE.0 && *p < RANGE.1, "reply port {p}");
                        }
                    }
                }
            }
            Op::Raw(tail) => {
                let text = format!("update\r\ntype: request\r\ncall_id: call-0\r\n{tail}\r\n\r\n");
                if let Some(ModuleRequest::Update(u)) = request(&text) {
                    let _ = relay.table.update(&u, relay_ip, relay.now);
                }
            }
            Op::Remove { call, by_callee } => {
                let tag = if by_callee { format!("t{}", call % 3) } else { format!("f{}", call % 3) };
                let text = format!("remove\r\ncall_id: call-{}\r\nfrom_tag: {tag}\r\nto_tag: \r\n\r\n", call % 3);
                if let Some(ModuleRequest::Remove(r)) = request(&text) {
                    let _ = relay.table.remove(&r, relay.now);
                }
            }
            Op::Packet { port, source, payload } => {
                let port = RANGE.0 + u16::from(port) % (RANGE.1 - RANGE.0);
                let src: SocketAddr = pick(&SOURCES, source).parse().unwrap();
                let _ = relay.table.on_packet(port, src, &payload, relay.now);
            }
            Op::Advance(ms) => {
                relay.now += u64::from(ms);
                relay.table.handle_timeout(relay.now);
            }
            Op::FlowRefused(i) => {
                if let Some(id) = relay.flows.get(usize::from(i)).copied() {
                    relay.table.flow_refused(id);
                }
            }
            Op::FlowCounters(i, n) => {
                if let Some(id) = relay.flows.get(usize::from(i)).copied() {
                    let n = u64::from(n);
                    let c = FlowCounters {
                        caller_packets: n,
                        caller_bytes: n * 160,
                        callee_packets: n,
                        callee_bytes: n * 160,
                    };
                    relay.table.set_flow_counters(id, c, relay.now);
                }
            }
            Op::FlowExpired(i) => {
                if let Some(id) = relay.flows.get(usize::from(i)).copied() {
                    relay.table.flow_expired(id, FlowCounters::default(), relay.now);
                }
            }
            Op::Snapshot => {
                relay.drain();
                let mark = ClockMark { at: relay.now, boot_id: [7; 16], since_boot_ms: 1000 };
                let bytes = relay.table.snapshot(mark).encode();
                let snapshot = Snapshot::decode(&bytes).expect("our own snapshot decodes");
                let before = relay.table.sessions(relay.now);
                let kernel = relay.table.config().kernel_flows;
                relay.table = SessionTable::restore(config(kernel), snapshot, relay.now);
                let after = relay.table.sessions(relay.now);
                assert_eq!(
                    after.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
                    before.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
                    "a restored table reports other sessions"
                );
                // Restoring re-opens every held pair.
                relay.flows = relay.table.kernel_flows().iter().map(|f| f.id).collect();
            }
            Op::ExpireAll => relay.table.expire_all(relay.now),
            Op::Kernel(on) => {
                if relay.table.session_count() == 0 {
                    relay.table = SessionTable::new(config(on));
                    relay.flows.clear();
                }
            }
        }
        relay.drain();
    }
});
