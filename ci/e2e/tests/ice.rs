//! ICE phones (SPEC 1, 2, 4): with `modparam("mediaproxy", "ice_candidate",
//! "low-priority")` the module adds the relay as a `typ relay` candidate to
//! every SDP that carries ICE candidates, with the relay address and port
//! the dispatcher answered. Media sent to the SDP's address is relayed. When
//! the phones never send media through the relay (they picked their own
//! candidates), the streams end as `unselected ICE candidate`: the session
//! is accounted, but it is not a timed-out call, so the dispatcher must not
//! ask the proxy to end the dialog.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use relaybox_e2e::kamailio::KamailioOptions;
use relaybox_e2e::sipp::Sdp;
use relaybox_e2e::{Binaries, CallKind, MediaPath, RelaySettings, Rig};

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
    let opts = KamailioOptions::new(rig.mediaproxy_socket()).ice_candidate("low-priority");
    rig.start_kamailio_with(&opts)?;

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
    let settings = rig.dispatcher_settings().with_kamailio_rpc(rig.kamailio_rpc_socket());
    rig.start_dispatcher_with(&bins, settings)?;
    rig.start_relay(&bins, relay)?;
    let opts = KamailioOptions::new(rig.mediaproxy_socket()).ice_candidate("low-priority");
    rig.start_kamailio_with(&opts)?;

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
