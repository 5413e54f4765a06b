//! T.38 fax (SPEC 1: udptl streams are relayed): a call starts with audio,
//! then the caller re-INVITEs to `m=image <port> udptl t38`. The module
//! sends `image:...` to the dispatcher, the relay opens ports for the image
//! stream, and UDP packets sent by each phone to the SDP's address reach the
//! other phone from the relay. `sessions` must show the image stream.
//!
//! SIPp cannot play T.38, so the test sends the UDPTL-like datagrams itself,
//! from each phone's namespace and image port (6004).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use relaybox_e2e::sipp::{self, SippFiles};
use relaybox_e2e::topology::{PHONE_A, PHONE_B};
use relaybox_e2e::{Binaries, CallKind, MediaPath, RelaySettings, Rig, Side};

/// Datagrams each phone sends on the image stream.
const PACKETS: u32 = 60;

/// Share of them the other phone must receive from the relay (the first
/// datagram of the side that sends first can arrive before the relay knows
/// the other side).
const MIN_RELAYED: f64 = 0.9;

/// The image port the relay gave this phone, from the second SDP it received.
fn image_port(files: &SippFiles) -> Option<u16> {
    sipp::received_sdps(&files.messages()).get(1)?.stream("image").map(|s| s.port)
}

/// A T.38 UDPTL-like datagram: sequence number, then an IFP packet marked
/// with the sender.
fn datagram(seq: u32, from: u8) -> Vec<u8> {
    let mut d = vec![(seq >> 8) as u8, seq as u8, 0x06, from];
    d.extend_from_slice(&[0x55; 40]);
    d
}

/// Reads everything waiting on `socket`; counts datagrams from the relay
/// that carry `from` as sender mark.
fn drain(socket: &UdpSocket, relay: Ipv4Addr, from: u8, count: &mut u32) -> Result<()> {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                if src.ip() == relay && n >= 4 && buf[3] == from {
                    *count += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn t38_reinvite_relays_the_image_stream() -> Result<()> {
    let Some(bins) = Binaries::for_test("t38_reinvite_relays_the_image_stream") else { return Ok(()) };
    let relay = RelaySettings::first();
    let mut rig = Rig::new("t38_fax")?;
    rig.start_dispatcher(&bins)?;
    rig.start_relay(&bins, relay)?;
    rig.start_kamailio()?;

    let mut spec = rig.call_spec(CallKind::Fax, MediaPath::Relay(relay), 0)?;
    spec.extra_talk = Duration::from_secs(8);
    let image_local = spec.caller.image_port();
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;

    // Wait for the switch to T.38 on both sides.
    let deadline = Instant::now() + spec.play + Duration::from_secs(10);
    let (port_a, port_b) = loop {
        if let (Some(a), Some(b)) = (image_port(&call.caller_files), image_port(&call.callee_files)) {
            break (a, b);
        }
        if !call.caller.is_running() || Instant::now() > deadline {
            bail!("the re-INVITE to T.38 did not complete:\n{}", call.caller.log_tail(25));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let switched = call.elapsed();

    let a = rig.topo.ph_a.bind_udp(SocketAddr::from((PHONE_A, image_local)))?;
    let b = rig.topo.ph_b.bind_udp(SocketAddr::from((PHONE_B, image_local)))?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let before_a = rig.topo.counters(Side::A)?;
    let before_b = rig.topo.counters(Side::B)?;
    let (to_a_side, to_b_side) =
        (SocketAddr::from((relay.relay_ip, port_a)), SocketAddr::from((relay.relay_ip, port_b)));
    let (mut got_at_a, mut got_at_b) = (0u32, 0u32);
    let mgmt = rig.management()?;
    let mut image_seen = None;
    for seq in 0..PACKETS {
        a.send_to(&datagram(seq, b'A'), to_a_side)?;
        b.send_to(&datagram(seq, b'B'), to_b_side)?;
        std::thread::sleep(Duration::from_millis(20));
        drain(&a, relay.relay_ip, b'B', &mut got_at_a)?;
        drain(&b, relay.relay_ip, b'A', &mut got_at_b)?;
        if seq % 20 == 19 && image_seen.is_none() {
            if let Some(session) = mgmt.session(&spec.call_id)? {
                let streams = session["streams"].as_array().cloned().unwrap_or_default();
                image_seen = streams.into_iter().find(|s| s["media_type"] == "image" && s["status"] == "active");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(&a, relay.relay_ip, b'B', &mut got_at_a)?;
    drain(&b, relay.relay_ip, b'A', &mut got_at_b)?;
    let nft_a = rig.topo.counters(Side::A)?.since(&before_a).port(image_local);
    let nft_b = rig.topo.counters(Side::B)?.since(&before_b).port(image_local);
    ensure!(call.caller.is_running(), "the call ended while the test was still faxing; raise extra_talk");

    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: switched to T.38 {:.1} s after the INVITE; image ports at the relay: caller side {port_a}, callee side {port_b}",
        rig.label(),
        switched.as_secs_f64()
    );
    eprintln!(
        "[e2e] {}: T.38 A->B: sent {PACKETS}, received {got_at_b} from the relay (nft: {} from relay); B->A: sent {PACKETS}, received {got_at_a} (nft: {} from relay)",
        rig.label(),
        nft_b.rx_from(relay.relay_ip),
        nft_a.rx_from(relay.relay_ip)
    );
    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(0.8)?;
    let (audio_a, _) = report.audio_ports(0).context("audio ports")?;
    ensure!(port_a != audio_a, "the image stream reuses the audio port {audio_a}");
    let min = (f64::from(PACKETS) * MIN_RELAYED) as u32;
    ensure!(got_at_b >= min, "T.38 A->B: {got_at_b}/{PACKETS} datagrams reached the callee from the relay");
    ensure!(got_at_a >= min, "T.38 B->A: {got_at_a}/{PACKETS} datagrams reached the caller from the relay");
    ensure!(
        nft_a.rx_from(relay.relay_ip).packets >= u64::from(min)
            && nft_b.rx_from(relay.relay_ip).packets >= u64::from(min),
        "the phones' counters on port {image_local} disagree: A {nft_a:?}, B {nft_b:?}"
    );

    let image = image_seen.context("`sessions` never showed an active stream with media_type image")?;
    eprintln!("[e2e] {}: sessions showed {image}", rig.label());
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let line = d.wait_accounted(&spec.call_id, Duration::from_secs(5))?;
    ensure!(line.contains("\"media_type\":\"image\""), "the accounted session has no image stream: {line}");
    rig.pass();
    Ok(())
}
