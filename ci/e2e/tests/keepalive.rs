//! NAT keepalives (the `nat_traversal` module of examples/kamailio.cfg and
//! examples/opensips.cfg): the callee's NAT forgets idle UDP bindings after
//! 15 s (`nf_conntrack_udp_timeout` set inside its NAT namespace only), the
//! callee registers and then stays silent for longer than that. With the
//! proxy's keepalives the binding stays open and the INVITE reaches the
//! callee through its NAT; without them (control) the INVITE dies at the NAT.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use relaybox_e2e::sipp::SipMessage;
use relaybox_e2e::{Binaries, CallKind, MediaPath, Proxy, RelaySettings, Rig, Side};

/// The callee NAT's UDP conntrack timeouts, in seconds.
const NAT_UDP_TIMEOUT: u32 = 15;
/// The proxy's keepalive interval, in seconds (nat_traversal's least).
const KEEPALIVE_INTERVAL: u32 = 10;
/// Silence between the callee's REGISTER and the INVITE: well past the NAT's timeout.
const IDLE: Duration = Duration::from_secs(25);

/// Requests `method` this phone received.
fn received<'a>(messages: &'a [SipMessage], method: &str) -> Vec<&'a SipMessage> {
    messages.iter().filter(|m| !m.sent && m.method() == Some(method)).collect()
}

/// Dispatcher, relay, `proxy` with keepalives every [`KEEPALIVE_INTERVAL`]
/// (or none), and a callee NAT that forgets idle UDP after [`NAT_UDP_TIMEOUT`].
fn rig(label: &str, bins: &Binaries, proxy: Proxy, keepalive: bool) -> Result<Rig> {
    let mut rig = Rig::new(label)?;
    let nat = rig.topo.nat(Side::B);
    for key in ["net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"] {
        nat.sysctl(key, &NAT_UDP_TIMEOUT.to_string())?;
        let now = nat.exec(&["sysctl", "-n", key])?;
        ensure!(now.trim() == NAT_UDP_TIMEOUT.to_string(), "{key} is {now} in the NAT namespace");
    }
    rig.start_dispatcher(bins)?;
    rig.start_relay(bins, RelaySettings::first())?;
    let opts = rig.proxy_options(proxy).keepalive(keepalive.then_some(KEEPALIVE_INTERVAL));
    rig.start_proxy_with(&opts)?;
    Ok(rig)
}

fn keepalives_keep_the_callee_reachable(test: &str, proxy: Proxy) -> Result<()> {
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let Some(()) = proxy.for_test(test) else { return Ok(()) };
    let mut rig = rig(&format!("keepalive_{proxy}"), &bins, proxy, true)?;
    let relay = RelaySettings::first();
    let mut spec = rig.call_spec(CallKind::Basic, MediaPath::Relay(relay), 0)?;
    spec.idle_before_invite = IDLE;
    let call = rig.start_call(&spec)?;
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(0.8)?;

    // What held the binding open: the proxy's keepalives, answered by the callee.
    let msgs = report.callee_files.messages();
    let invite_at = received(&msgs, "INVITE").first().map(|m| m.at).context("the callee got no INVITE")?;
    let register_at = msgs.iter().find(|m| m.sent && m.method() == Some("REGISTER")).context("no REGISTER")?.at;
    let keepalives: Vec<f64> =
        received(&msgs, "OPTIONS").iter().map(|m| m.at).filter(|&t| t > register_at && t < invite_at).collect();
    eprintln!(
        "[e2e] {}: INVITE {:.1} s after the REGISTER; {} keepalives meanwhile",
        rig.label(),
        invite_at - register_at,
        keepalives.len()
    );
    ensure!(invite_at - register_at >= IDLE.as_secs_f64(), "the INVITE came before the NAT's timeout could pass");
    // One per interval; the first within an interval of the REGISTER.
    let expected = (IDLE.as_secs() / u64::from(KEEPALIVE_INTERVAL)) as usize - 1;
    ensure!(
        keepalives.len() >= expected,
        "only {} keepalives during {IDLE:?} (expected >= {expected})",
        keepalives.len()
    );
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn kamailio_keepalives_keep_a_phone_behind_nat_reachable() -> Result<()> {
    keepalives_keep_the_callee_reachable("kamailio_keepalives_keep_a_phone_behind_nat_reachable", Proxy::Kamailio)
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn opensips_keepalives_keep_a_phone_behind_nat_reachable() -> Result<()> {
    keepalives_keep_the_callee_reachable("opensips_keepalives_keep_a_phone_behind_nat_reachable", Proxy::OpenSips)
}

fn without_keepalives_the_callee_is_lost(test: &str, proxy: Proxy) -> Result<()> {
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let Some(()) = proxy.for_test(test) else { return Ok(()) };
    let mut rig = rig(&format!("keepalive_off_{proxy}"), &bins, proxy, false)?;
    let mut spec = rig.call_spec(CallKind::Basic, MediaPath::Relay(RelaySettings::first()), 0)?;
    spec.idle_before_invite = IDLE;
    let mut call = rig.start_call(&spec)?;
    // The proxy's INVITE transaction times out (fr_timer 5 s) and the caller
    // gets a final error; the callee waits in vain.
    let caller_exit = call.caller.wait_timeout(Duration::from_secs(45));
    let caller_msgs = call.caller_files.messages();
    let callee_msgs = call.callee_files.messages();
    drop(call);
    eprintln!("[e2e] {}: caller SIPp {caller_exit:?}", rig.label());
    ensure!(received(&callee_msgs, "INVITE").is_empty(), "the INVITE reached the callee without keepalives");
    ensure!(received(&callee_msgs, "OPTIONS").is_empty(), "keepalives were sent although they are off");
    let final_status = caller_msgs.iter().filter(|m| !m.sent).filter_map(|m| m.status()).find(|&s| s >= 300);
    eprintln!("[e2e] {}: the caller got {final_status:?}; the callee no INVITE", rig.label());
    ensure!(final_status.is_some(), "the caller got no final error for a callee its NAT forgot");
    ensure!(!caller_msgs.iter().any(|m| !m.sent && m.status() == Some(200)), "the call was answered");
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn without_kamailio_keepalives_the_nat_forgets_the_phone() -> Result<()> {
    without_keepalives_the_callee_is_lost("without_kamailio_keepalives_the_nat_forgets_the_phone", Proxy::Kamailio)
}
