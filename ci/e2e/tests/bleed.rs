//! RTP bleed (issue #11) end to end: both phones behind the masquerading NATs
//! (their SDP `c=` addresses are private), Kamailio with the `mediaproxy`
//! module, the relay on the public side, and an attacker on the internet
//! bridge spraying every port of the relay's range from two source ports,
//! from right after the 200 OK (the phones start their RTP 1 s after the
//! ACK, as phones in the field do) until after the call.
//!
//! Counted: the attacker's datagrams (an RTP SSRC no phone uses) that reach
//! either phone, by an nftables counter in each phone's namespace; whatever
//! reaches the attacker's sockets; the media each phone received from the
//! relay.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use relaybox_e2e::counters;
use relaybox_e2e::{Binaries, CallKind, MediaPath, RelaySettings, Rig, Side};

/// The attacker's address on the internet bridge.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// The SSRC of every attacker packet; the counters in the phones match it.
const ATTACK_SSRC: u32 = 0xbadc_0de5;
/// Share of the packets one phone sent that the other must receive.
const MIN_RELAYED: f64 = 0.99;

/// An RTP-looking datagram of the attacker: payload type 0, its SSRC.
fn attack_packet(seq: u16) -> Vec<u8> {
    let mut packet = vec![0x80u8, 0];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet.extend_from_slice(&ATTACK_SSRC.to_be_bytes());
    packet.resize(172, 0xd5);
    packet
}

/// What the attacker did and got.
struct Spray {
    sent: u64,
    got: u64,
}

/// Sprays every port of `relay`'s range from each socket (one round every
/// 20 ms) until `stop` is set; counts what comes back.
fn spray(sockets: Vec<UdpSocket>, relay: RelaySettings, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Spray> {
    std::thread::spawn(move || {
        let receivers: Vec<_> = sockets
            .iter()
            .map(|s| {
                let (r, stop) = (s.try_clone().expect("clone"), stop.clone());
                r.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
                std::thread::spawn(move || {
                    let (mut got, mut buf) = (0u64, [0u8; 2048]);
                    // Listen 1 s longer than the spray: late replies count.
                    let mut until = None;
                    while until.map_or(true, |u| Instant::now() < u) {
                        if stop.load(Ordering::Relaxed) && until.is_none() {
                            until = Some(Instant::now() + Duration::from_secs(1));
                        }
                        if r.recv_from(&mut buf).is_ok() {
                            got += 1;
                        }
                    }
                    got
                })
            })
            .collect();
        let (mut sent, mut seq) = (0u64, 0u16);
        while !stop.load(Ordering::Relaxed) {
            let packet = attack_packet(seq);
            seq = seq.wrapping_add(1);
            for port in (relay.port_min..relay.port_max).filter(|p| *p != 0) {
                for s in &sockets {
                    if s.send_to(&packet, SocketAddr::from((relay.relay_ip, port))).is_ok() {
                        sent += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = receivers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
        Spray { sent, got }
    })
}

fn attack(test: &str, label: &str, relay: RelaySettings) -> Result<()> {
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let mut rig = Rig::new(label)?;
    rig.start_dispatcher(&bins)?;
    rig.start_relay(&bins, relay)?;
    rig.start_kamailio()?;
    let datapath = rig.management()?.summary()?.first().and_then(|s| s["datapath"].as_str().map(str::to_owned));
    let want = relay.datapath.unwrap_or("kernel");
    ensure!(datapath.as_deref() == Some(want), "the relay's datapath is {datapath:?}, the test wants {want}");
    for side in [Side::A, Side::B] {
        let phone = rig.topo.phone(side);
        counters::install_marked(phone, ATTACK_SSRC)?;
        // The counter counts: one marked datagram from inside the phone's
        // namespace to its own media port.
        let probe = phone.bind_udp(SocketAddr::from((side.phone_ip(), 0)))?;
        probe.send_to(&attack_packet(0), SocketAddr::from((side.phone_ip(), 6000)))?;
        let marked = counters::read_marked(phone)?;
        ensure!(marked.packets == 1, "the attack counter of {side:?} saw {marked} for one probe");
    }
    let attacker = rig.topo.attach("atk", ATTACKER)?;
    let sockets =
        (0..2).map(|i| attacker.bind_udp(SocketAddr::from((ATTACKER, 6000 + i)))).collect::<Result<Vec<_>>>()?;

    let mut spec = rig.call_spec(CallKind::Basic, MediaPath::Relay(relay), 0)?;
    spec.media_delay = Duration::from_secs(1);
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sprayer = spray(sockets, relay, stop.clone());
    let sprayed_at = call.elapsed();
    let watch = rig.watch_session(&mut call)?;
    let report = call.finish(&rig)?;
    std::thread::sleep(Duration::from_secs(1)); // sprays after the call too
    stop.store(true, Ordering::Relaxed);
    let spray = sprayer.join().map_err(|_| anyhow::anyhow!("sprayer panicked"))?;
    // Less the probe.
    let marked_a = counters::read_marked(rig.topo.phone(Side::A))?.packets - 1;
    let marked_b = counters::read_marked(rig.topo.phone(Side::B))?.packets - 1;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: attacker sprayed {} datagrams from {:.1} s after the INVITE, got {} back; attacker datagrams at the caller {}, at the callee {}",
        rig.label(),
        spray.sent,
        sprayed_at.as_secs_f64(),
        spray.got,
        marked_a,
        marked_b
    );

    report.check_completed()?;
    report.check_sdps()?;
    ensure!(spray.sent >= 20_000, "the spray was too thin: {} datagrams", spray.sent);
    ensure!(marked_a == 0 && marked_b == 0, "attacker datagrams reached the phones: {marked_a} / {marked_b}");
    ensure!(spray.got == 0, "{} datagrams reached the attacker", spray.got);
    report.check_relayed_media(MIN_RELAYED)?;
    let remotes = watch.last.as_ref().context("`sessions` never listed the call")?["streams"][0].clone();
    for (key, nat) in [("caller_remote", Side::A.nat_wan_ip()), ("callee_remote", Side::B.nat_wan_ip())] {
        let remote = remotes[key].as_str().unwrap_or_default();
        ensure!(remote.starts_with(&format!("{nat}:")), "{key} is {remote}, not the phone's NAT {nat}");
    }
    let relay_log = rig.relays[0].process.log();
    ensure!(!relay_log.contains("vouches for"), "a leg fell back to an unvouched source");
    let summary = rig.management()?.summary()?;
    let bleed = summary.first().and_then(|s| s["bleed_drops"].as_u64()).unwrap_or(0);
    eprintln!("[e2e] {}: bleed_drops {bleed}", rig.label());
    ensure!(bleed > 0, "the relay saw no bleed: {summary:?}");
    drop(attacker);
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn an_attacker_spraying_the_relay_gets_nothing_from_phones_behind_nat() -> Result<()> {
    let test = "an_attacker_spraying_the_relay_gets_nothing_from_phones_behind_nat";
    attack(test, "bleed_kernel", RelaySettings::first())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn an_attacker_spraying_a_userspace_relay_gets_nothing_from_phones_behind_nat() -> Result<()> {
    let test = "an_attacker_spraying_a_userspace_relay_gets_nothing_from_phones_behind_nat";
    attack(test, "bleed_userspace", RelaySettings::first().userspace())
}
