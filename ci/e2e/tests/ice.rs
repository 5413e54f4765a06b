//! ICE phones (SPEC 1, 2, 4): with `modparam("mediaproxy", "ice_candidate",
//! "low-priority")` the module adds the relay as a `typ relay` candidate to
//! every SDP that carries ICE candidates, with the relay address and port
//! the dispatcher answered. Media sent to the SDP's address is relayed. When
//! the phones never send media through the relay (they picked their own
//! candidates), the streams end as `unselected ICE candidate`: the session
//! is accounted, but it is not a timed-out call, so the dispatcher must not
//! ask the proxy to end the dialog. That holds when their connectivity
//! checks (STUN) went through the relay too (issue #12): STUN is relayed,
//! but it is not media.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use relaybox_e2e::sipp::{self, Sdp};
use relaybox_e2e::Proxy;
use relaybox_e2e::{Binaries, CallKind, MediaPath, RelaySettings, Rig, Side};

/// Share of the packets one phone sent that the other must receive from the relay.
const MIN_RELAYED: f64 = 0.8;

/// Priority of the module's low-priority relay candidate (RTP; RTCP is one less).
const LOW_PRIORITY: u32 = 16_777_215;

/// `[Relay] stream_timeout` of the no-media test, in seconds.
const STREAM_TIMEOUT: u32 = 3;

/// The foundation the module writes: `R` + `%x` of the address as the C
/// library stores it (network byte order read as a host integer: on this
/// little-endian machine the bytes reversed, without leading zeros).
fn foundation(ip: Ipv4Addr) -> String {
    format!("R{:x}", u32::from_le_bytes(ip.octets()))
}

/// The relay candidates an SDP must carry for its audio stream.
fn check_relay_candidates(who: &str, sdp: &Sdp, relay: Ipv4Addr) -> Result<()> {
    let audio = sdp.stream("audio").context("no m=audio")?;
    let port = audio.port;
    let f = foundation(relay);
    let rtp = format!("candidate:{f} 1 UDP {LOW_PRIORITY} {relay} {port} typ relay");
    let rtcp = format!("candidate:{f} 2 UDP {} {relay} {} typ relay", LOW_PRIORITY - 1, port + 1);
    for want in [&rtp, &rtcp] {
        ensure!(audio.candidates.contains(want), "{who}: no `a={want}` in the SDP; candidates: {:?}", audio.candidates);
    }
    ensure!(
        audio.candidates.iter().any(|c| c.ends_with("typ host")),
        "{who}: the peer's own host candidates are gone: {:?}",
        audio.candidates
    );
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn ice_phones_get_the_relay_candidate_and_media_is_relayed() -> Result<()> {
    let test = "ice_phones_get_the_relay_candidate_and_media_is_relayed";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let relay = RelaySettings::first();
    let mut rig = Rig::new("ice_relayed")?;
    rig.start_dispatcher(&bins)?;
    rig.start_relay(&bins, relay)?;
    let opts = rig.proxy_options(Proxy::Kamailio).ice_candidate("low-priority");
    rig.start_proxy_with(&opts)?;

    let spec = rig.call_spec(CallKind::Ice, MediaPath::Relay(relay), 0)?;
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let watch = rig.watch_session(&mut call)?;
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(MIN_RELAYED)?;
    for (who, sdp) in [("caller (answer)", &report.caller_sdps[0]), ("callee (offer)", &report.callee_sdps[0])] {
        check_relay_candidates(who, sdp, relay.relay_ip)?;
        eprintln!(
            "[e2e] {}: {who} candidates: {:?}",
            rig.label(),
            sdp.stream("audio").map(|s| s.candidates.clone()).unwrap_or_default()
        );
    }
    ensure!(watch.statuses.first().map(String::as_str) == Some("active"), "stream statuses {:?}", watch.statuses);
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let line = d.wait_accounted(&spec.call_id, Duration::from_secs(5))?;
    ensure!(line.contains("session removed and accounted"), "not removed by the BYE: {line}");
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn ice_streams_without_relayed_media_end_as_unselected_candidates() -> Result<()> {
    let test = "ice_streams_without_relayed_media_end_as_unselected_candidates";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let relay = RelaySettings::first().stream_timeout(STREAM_TIMEOUT).userspace();
    let mut rig = Rig::new("ice_unselected")?;
    let settings = rig.dispatcher_settings().with_proxy_mi(Proxy::Kamailio, rig.proxy_mi_socket(Proxy::Kamailio));
    rig.start_dispatcher_with(&bins, settings)?;
    rig.start_relay(&bins, relay)?;
    let opts = rig.proxy_options(Proxy::Kamailio).ice_candidate("low-priority");
    rig.start_proxy_with(&opts)?;

    // The phones answer and stay on the line, but send nothing to the relay;
    // the caller hangs up stream_timeout + 5 s later.
    let mut spec = rig.call_spec(CallKind::IceSilent, MediaPath::Relay(relay), 0)?;
    spec.extra_talk = Duration::from_secs(u64::from(STREAM_TIMEOUT) + 5);
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let expired = d.wait_call_log(&spec.call_id, "accounted", Duration::from_secs(20))?;
    let after = call.elapsed();
    ensure!(call.caller.is_running(), "the call ended before its session ended on the relay");
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!("[e2e] {}: session ended {:.1} s after the INVITE: {expired}", rig.label(), after.as_secs_f64());
    report.check_completed()?;
    report.check_sdps()?;
    for (who, sdp) in [("caller (answer)", &report.caller_sdps[0]), ("callee (offer)", &report.callee_sdps[0])] {
        check_relay_candidates(who, sdp, relay.relay_ip)?;
    }
    for media in report.media_types() {
        for side in [relaybox_e2e::Side::A, relaybox_e2e::Side::B] {
            let f = report.flow(media, side);
            ensure!(f.sent.packets == 0, "{media} from {side:?}: the phone sent {} packets", f.sent.packets);
        }
    }

    ensure!(expired.contains("session expired and accounted"), "not reported as expired: {expired}");
    ensure!(
        expired.contains("\"status\":\"unselected ICE candidate\""),
        "the ICE stream did not end as `unselected ICE candidate`: {expired}"
    );
    ensure!(!expired.contains("no-traffic timeout"), "a stream ended as a no-traffic timeout: {expired}");
    std::thread::sleep(Duration::from_secs(2));
    let d = rig.dispatcher.as_ref().context("dispatcher")?;
    let ending = d.call_log(&spec.call_id, "dialog ended by the proxy|could not end the dialog")?;
    ensure!(ending.is_empty(), "an unselected ICE session was treated as a timed-out call: {ending:?}");
    let caller_byes = report.caller_files.messages().iter().filter(|m| !m.sent && m.method() == Some("BYE")).count();
    ensure!(caller_byes == 0, "the caller received {caller_byes} BYEs from the proxy");
    rig.pass();
    Ok(())
}

/// A STUN Binding request (RFC 5389: magic cookie, a transaction id, a
/// PRIORITY attribute), as an ICE agent's connectivity check.
fn binding_request(id: u32) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(&[0x5a; 8]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]);
    p
}

fn is_stun(p: &[u8]) -> bool {
    p.len() >= 20 && p[0] & 0xc0 == 0 && p[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// A phone's ICE agent checking the relay candidate: from `socket` (in the
/// phone's namespace, behind its NAT) a Binding request to `to` every
/// 100 ms until `stop`; returns how many STUN messages came back from it.
fn checks(socket: std::net::UdpSocket, to: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let (mut got, mut id, mut buf) = (0u32, 0u32, [0u8; 1500]);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let _ = socket.send_to(&binding_request(id), to);
                id += 1;
                next += Duration::from_millis(100);
            }
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if from == to && is_stun(&buf[..n]) {
                    got += 1;
                }
            }
        }
        got
    })
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn ice_streams_whose_only_traffic_through_the_relay_is_stun_end_as_unselected_candidates() -> Result<()> {
    let test = "ice_streams_whose_only_traffic_through_the_relay_is_stun_end_as_unselected_candidates";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    // The kernel datapath (the default): STUN must not make a kernel flow,
    // whose conntrack timeout would end the call as a timed-out one.
    let relay = RelaySettings::first().stream_timeout(STREAM_TIMEOUT);
    let mut rig = Rig::new("ice_stun_only")?;
    let settings = rig.dispatcher_settings().with_proxy_mi(Proxy::Kamailio, rig.proxy_mi_socket(Proxy::Kamailio));
    rig.start_dispatcher_with(&bins, settings)?;
    rig.start_relay(&bins, relay)?;
    let opts = rig.proxy_options(Proxy::Kamailio).ice_candidate("low-priority");
    rig.start_proxy_with(&opts)?;

    // The phones send no media to the relay, only connectivity checks to
    // the relay candidates, longer than stream_timeout (as if they talked
    // directly and kept checking).
    let mut spec = rig.call_spec(CallKind::IceSilent, MediaPath::Relay(relay), 0)?;
    spec.extra_talk = Duration::from_secs(u64::from(STREAM_TIMEOUT) + 5);
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let port = |files: &sipp::SippFiles| -> Result<u16> {
        let sdps = sipp::received_sdps(&files.messages());
        Ok(sdps.first().and_then(|s| s.stream("audio")).context("no SDP received yet")?.port)
    };
    let (to_a, to_b) = (port(&call.caller_files)?, port(&call.callee_files)?);
    let stop = Arc::new(AtomicBool::new(false));
    let check = |side: Side, relay_port: u16| -> Result<std::thread::JoinHandle<u32>> {
        let socket = rig.topo.phone(side).bind_udp(SocketAddr::from((side.phone_ip(), 6050)))?;
        Ok(checks(socket, SocketAddr::from((relay.relay_ip, relay_port)), stop.clone()))
    };
    let (a, b) = (check(Side::A, to_a)?, check(Side::B, to_b)?);
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let ended = d.wait_call_log(&spec.call_id, "accounted", Duration::from_secs(20));
    let checking = !stop.swap(true, Ordering::Relaxed);
    let (stun_at_a, stun_at_b) = (a.join().unwrap_or(0), b.join().unwrap_or(0));
    let expired = ended?;
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: STUN relayed: {stun_at_a} checks reached the caller, {stun_at_b} the callee; {expired}",
        rig.label()
    );
    report.check_completed()?;
    ensure!(checking, "the checks had stopped before the session ended");
    ensure!(
        stun_at_a > 0 && stun_at_b > 0,
        "checks through the relay candidate were not relayed: {stun_at_a} / {stun_at_b}"
    );
    ensure!(expired.contains("session expired and accounted"), "not reported as expired: {expired}");
    ensure!(
        expired.contains("\"status\":\"unselected ICE candidate\""),
        "a STUN-only stream did not end as `unselected ICE candidate`: {expired}"
    );
    ensure!(expired.contains("\"caller_remote\":\"Unknown\""), "STUN latched the caller: {expired}");
    let relay_log = rig.relays[0].process.log();
    ensure!(!relay_log.contains("flow handed to the kernel"), "STUN made a kernel flow");
    std::thread::sleep(Duration::from_secs(2));
    let d = rig.dispatcher.as_ref().context("dispatcher")?;
    let ending = d.call_log(&spec.call_id, "dialog ended by the proxy|could not end the dialog")?;
    ensure!(ending.is_empty(), "the dialog of a STUN-only ICE session was ended: {ending:?}");
    let caller_byes = report.caller_files.messages().iter().filter(|m| !m.sent && m.method() == Some("BYE")).count();
    ensure!(caller_byes == 0, "the caller received {caller_byes} BYEs from the proxy");
    rig.pass();
    Ok(())
}
