//! Calls through our dispatcher and relays: the proxy's mediaproxy module
//! (Kamailio, and OpenSIPS 3.6 for the basic, hold and audio+video calls,
//! each running its example configuration as an unprivileged user) talks to
//! `relaybox dispatcher` over its UNIX socket, the dispatcher to `relaybox
//! relay` over mutual TLS, and both phones behind NAT must get their RTP
//! from the relay.
//!
//! These tests need the `relaybox` and `relaybox-ca` binaries in the cargo
//! target directory (`cargo build --workspace --bins`). Until the binaries
//! exist they print SKIPPED and pass; with
//! `RELAYBOX_E2E_REQUIRE_BINARIES=1` a missing binary fails them instead.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use relaybox_e2e::relaybox::SessionTraffic;
use relaybox_e2e::topology::{SRV_IP, SRV_IP2};
use relaybox_e2e::{Binaries, CallKind, CallReport, MediaPath, Proxy, RelaySettings, Rig, SessionWatch};

/// Share of the packets one phone sent that the other must receive from the
/// relay (the first packets may arrive before the relay knows both sides).
const MIN_RELAYED: f64 = 0.8;

/// The module's `mediaproxy_timeout`.
const MODULE_TIMEOUT: Duration = Duration::from_millis(500);

/// Dispatcher, one relay, Kamailio.
fn rig_with_relay(label: &str, bins: &Binaries) -> Result<Rig> {
    rig_with_proxy(label, bins, Proxy::Kamailio)
}

/// Dispatcher, one relay, `proxy`.
fn rig_with_proxy(label: &str, bins: &Binaries, proxy: Proxy) -> Result<Rig> {
    let mut rig = Rig::new(label)?;
    rig.start_dispatcher(bins)?;
    rig.start_relay(bins, RelaySettings::first())?;
    rig.start_proxy(proxy)?;
    Ok(rig)
}

/// The binaries and `proxy` for `test`, or `None` when the test is skipped.
fn needs(test: &str, proxy: Proxy) -> Option<Binaries> {
    let bins = Binaries::for_test(test)?;
    proxy.for_test(test)?;
    Some(bins)
}

/// Runs one relayed call while watching `sessions`, checks SIP, SDP and
/// media, and that the session is removed and accounted after the BYE.
fn relayed_call(rig: &mut Rig, kind: CallKind) -> Result<(CallReport, SessionWatch)> {
    let relay = RelaySettings::first();
    let spec = rig.call_spec(kind, MediaPath::Relay(relay), 0)?;
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let watch = rig.watch_session(&mut call)?;
    let report = call.finish(rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: sessions listed the call in {}/{} samples; max {:?}; stream statuses seen {:?}",
        rig.label(),
        watch.listed,
        watch.samples,
        watch.max,
        watch.statuses
    );

    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(MIN_RELAYED)?;
    let setup = report.setup.context("no setup time")?;
    ensure!(setup < MODULE_TIMEOUT * 2, "setup took {setup:?}");

    ensure!(watch.listed > 0, "`sessions` never listed {} during the call", spec.call_id);
    ensure!(
        watch.max.caller_bytes > 0 && watch.max.callee_bytes > 0,
        "`sessions` never showed bytes from both sides: {:?}",
        watch.max
    );

    let gone = rig.wait_session_gone(&spec.call_id, Duration::from_secs(5))?;
    let dispatcher = rig.dispatcher.as_mut().context("dispatcher")?;
    let line = dispatcher.wait_accounted(&spec.call_id, Duration::from_secs(5))?;
    eprintln!("[e2e] {}: session gone {} ms after BYE; dispatcher: {line}", rig.label(), gone.as_millis());
    Ok((report, watch))
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn basic_call_is_relayed_both_ways() -> Result<()> {
    basic_call("basic_call_is_relayed_both_ways", Proxy::Kamailio)
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn basic_call_through_opensips_is_relayed_both_ways() -> Result<()> {
    basic_call("basic_call_through_opensips_is_relayed_both_ways", Proxy::OpenSips)
}

fn basic_call(test: &str, proxy: Proxy) -> Result<()> {
    let Some(bins) = needs(test, proxy) else { return Ok(()) };
    let mut rig = rig_with_proxy(&format!("relay_basic_{proxy}"), &bins, proxy)?;
    let (_, watch) = relayed_call(&mut rig, CallKind::Basic)?;
    ensure!(watch.max.streams == 1, "expected one stream, `sessions` showed {}", watch.max.streams);
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn hold_and_resume_keep_the_call_relayed() -> Result<()> {
    hold_and_resume("hold_and_resume_keep_the_call_relayed", Proxy::Kamailio)
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn hold_and_resume_through_opensips_keep_the_call_relayed() -> Result<()> {
    hold_and_resume("hold_and_resume_through_opensips_keep_the_call_relayed", Proxy::OpenSips)
}

fn hold_and_resume(test: &str, proxy: Proxy) -> Result<()> {
    let Some(bins) = needs(test, proxy) else { return Ok(()) };
    let mut rig = rig_with_proxy(&format!("relay_hold_resume_{proxy}"), &bins, proxy)?;
    // Each phone plays the pcap once before the hold and once after the
    // resume: receiving at least 80% of both plays proves media after resume.
    let (report, _) = relayed_call(&mut rig, CallKind::HoldResume)?;
    let ports: Vec<_> = (0..3).map(|i| report.audio_ports(i)).collect();
    ensure!(
        ports.iter().all(|p| p.is_some() && *p == ports[0]),
        "re-INVITEs must update the session in place (same relay ports), SDPs showed {ports:?}"
    );
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn audio_and_video_are_both_relayed() -> Result<()> {
    audio_and_video("audio_and_video_are_both_relayed", Proxy::Kamailio)
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn audio_and_video_through_opensips_are_both_relayed() -> Result<()> {
    audio_and_video("audio_and_video_through_opensips_are_both_relayed", Proxy::OpenSips)
}

fn audio_and_video(test: &str, proxy: Proxy) -> Result<()> {
    let Some(bins) = needs(test, proxy) else { return Ok(()) };
    let mut rig = rig_with_proxy(&format!("relay_audio_video_{proxy}"), &bins, proxy)?;
    let (report, watch) = relayed_call(&mut rig, CallKind::AudioVideo)?;
    ensure!(watch.max.streams == 2, "expected two streams, `sessions` showed {}", watch.max.streams);
    let sdp = &report.caller_sdps[0];
    let (audio, video) = (sdp.stream("audio").context("audio")?.port, sdp.stream("video").context("video")?.port);
    ensure!(audio != video, "audio and video got the same relay port {audio}");
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn dispatcher_without_relays_leaves_sdp_untouched() -> Result<()> {
    let Some(bins) = Binaries::for_test("dispatcher_without_relays_leaves_sdp_untouched") else { return Ok(()) };
    let mut rig = Rig::new("relay_none_connected")?;
    rig.start_dispatcher(&bins)?;
    rig.start_kamailio()?;
    let spec = rig.call_spec(CallKind::Basic, MediaPath::Untouched, 0)?;
    let call = rig.start_call(&spec)?;
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());

    report.check_completed()?;
    report.check_sdps()?;
    report.check_media_lost()?;
    // Two messages with SDP ask the dispatcher: the INVITE and the 200 OK.
    let setup = report.setup.context("no setup time")?;
    ensure!(setup < MODULE_TIMEOUT * 2, "setup took {setup:?}, more than the module timeout per message");
    let log = rig.proxy.as_ref().context("proxy")?.log();
    ensure!(
        !log.contains("did timeout waiting for an answer"),
        "the dispatcher let the module time out instead of answering `error` at once"
    );
    ensure!(rig.management()?.sessions()?.is_empty(), "sessions listed without any relay");
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn second_relay_takes_new_calls_when_the_first_dies() -> Result<()> {
    let Some(bins) = Binaries::for_test("second_relay_takes_new_calls_when_the_first_dies") else { return Ok(()) };
    let (first, second) = (RelaySettings::first(), RelaySettings::second());
    let mut rig = rig_with_relay("relay_failover", &bins)?;

    // Call 1 on relay 1 (the only one), long enough to outlive the kill.
    let mut spec1 = rig.call_spec(CallKind::Basic, MediaPath::Relay(first), 0)?;
    spec1.extra_talk = Duration::from_secs(12);
    let mut call1 = rig.start_call(&spec1)?;
    call1.wait_answered(Duration::from_secs(10))?;

    rig.start_relay(&bins, second)?;
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    rig.relays[0].process.kill_hard();
    rig.management()?.wait_for_relays(&[SRV_IP2], Duration::from_secs(40))?;
    let noticed = killed.elapsed();
    eprintln!("[e2e] relay_failover: relay {SRV_IP} killed; dispatcher dropped it after {} ms", noticed.as_millis());

    // Call 2 must go through relay 2.
    let spec2 = rig.call_spec(CallKind::Basic, MediaPath::Relay(second), 1)?;
    let call2 = rig.start_call(&spec2)?;
    let report2 = call2.finish(&rig)?;
    eprintln!("[e2e] relay_failover: {}", report2.summary());
    report2.check_completed()?;
    report2.check_sdps()?;
    report2.check_relayed_media(MIN_RELAYED)?;

    // Call 1 lost its relay but its signalling must still complete.
    let report1 = call1.finish(&rig)?;
    eprintln!("[e2e] relay_failover (call on the killed relay): {}", report1.summary());
    report1.check_completed()?;
    let at_caller = report1.caller_sdps.first().and_then(|s| s.stream("audio")).context("call 1 answer")?;
    ensure!(at_caller.ip == Some(SRV_IP), "call 1 was not on relay 1: {at_caller:?}");

    let summary = rig.management()?.summary()?;
    ensure!(summary.len() == 1, "summary after the kill lists {} relays: {summary:?}", summary.len());
    let traffic = rig.management()?.session(&spec2.call_id)?.map(|s| SessionTraffic::of(&s));
    eprintln!("[e2e] relay_failover: call 2 after BYE in sessions: {traffic:?}");
    rig.pass();
    Ok(())
}
