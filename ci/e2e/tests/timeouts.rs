//! Calls whose media timed out (SPEC 4): the relay expires the session after
//! `stream_timeout` without traffic, the dispatcher accounts it and, for an
//! answered call with a dialog, asks the proxy to end the dialog, so that
//! BOTH phones get a BYE although neither hung up: Kamailio (`dlg.end_dlg`
//! over the jsonrpcs datagram socket and FIFO) and OpenSIPS 3.6 (`dlg_end_dlg` over
//! mi_datagram, mi_fifo and mi_http, the dialog named as `dlg_list` names
//! it), each running as an unprivileged user. Calls that were never
//! answered, or that were set up without the dialog module, are only
//! accounted.
//!
//! The relays run with `datapath = userspace`: with the kernel datapath a
//! latched stream only ends with the kernel's UDP conntrack timeout, which
//! would make these tests slow.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use relaybox_e2e::relaybox::DispatcherSettings;
use relaybox_e2e::sipp::{self, SipMessage};
use relaybox_e2e::{Binaries, CallKind, MediaPath, Proxy, ProxyOptions, RelaySettings, Rig};

/// `[Relay] stream_timeout` of these tests, in seconds.
const STREAM_TIMEOUT: u32 = 3;

/// Share of the packets one phone sent that the other must receive from the relay.
const MIN_RELAYED: f64 = 0.8;

fn relay() -> RelaySettings {
    RelaySettings::first().stream_timeout(STREAM_TIMEOUT).userspace()
}

/// How the dispatcher reaches the proxy's management interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mi {
    Datagram,
    Fifo,
    Http,
}

/// Dispatcher that ends dialogs through `proxy`'s management interface,
/// one userspace relay with a short `stream_timeout`, the proxy with `opts`.
fn rig_with(
    label: &str,
    bins: &Binaries,
    proxy: Proxy,
    mi: Mi,
    opts: impl FnOnce(ProxyOptions) -> ProxyOptions,
) -> Result<Rig> {
    let mut rig = Rig::new(label)?;
    let settings: DispatcherSettings = match mi {
        Mi::Datagram => rig.dispatcher_settings().with_proxy_mi(proxy, rig.proxy_mi_socket(proxy)),
        Mi::Fifo => rig.dispatcher_settings().with_proxy_fifo(proxy, proxy.mi_fifo(rig.dir())),
        // OpenSIPS's httpd in `srv`, on its loopback (examples/opensips.cfg).
        Mi::Http => rig.dispatcher_settings().with_proxy_http(proxy, "http://127.0.0.1:8888/mi"),
    };
    rig.start_dispatcher_with(bins, settings)?;
    rig.start_relay(bins, relay())?;
    let opts = opts(rig.proxy_options(proxy));
    rig.start_proxy_with(&opts)?;
    Ok(rig)
}

/// Kamailio, dialogs ended over its jsonrpcs datagram socket.
fn rig(label: &str, bins: &Binaries, opts: impl FnOnce(ProxyOptions) -> ProxyOptions) -> Result<Rig> {
    rig_with(label, bins, Proxy::Kamailio, Mi::Datagram, opts)
}

/// Requests `method` this phone received.
fn received<'a>(messages: &'a [SipMessage], method: &str) -> Vec<&'a SipMessage> {
    messages.iter().filter(|m| !m.sent && m.method() == Some(method)).collect()
}

/// When the caller got the 200 OK to its first INVITE (trace time).
fn answered_at(messages: &[SipMessage]) -> Option<f64> {
    messages.iter().find(|m| !m.sent && m.status() == Some(200) && m.cseq() == Some((1, "INVITE"))).map(|m| m.at)
}

/// Fails if the dispatcher asked the proxy to end the dialog of `call_id`.
fn ensure_no_dialog_ending(rig: &Rig, call_id: &str) -> Result<()> {
    let d = rig.dispatcher.as_ref().context("dispatcher")?;
    let lines = d.call_log(call_id, "dialog ended by the proxy|could not end the dialog")?;
    ensure!(lines.is_empty(), "the dispatcher tried to end the dialog of {call_id}: {lines:?}");
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn timed_out_call_is_ended_by_kamailio_with_a_bye_to_both_phones() -> Result<()> {
    timed_out_call_gets_a_bye_at_both_phones(
        "timed_out_call_is_ended_by_kamailio_with_a_bye_to_both_phones",
        Proxy::Kamailio,
        Mi::Datagram,
    )
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn timed_out_call_is_ended_by_kamailio_over_its_fifo_with_a_bye_to_both_phones() -> Result<()> {
    timed_out_call_gets_a_bye_at_both_phones(
        "timed_out_call_is_ended_by_kamailio_over_its_fifo_with_a_bye_to_both_phones",
        Proxy::Kamailio,
        Mi::Fifo,
    )
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn timed_out_call_is_ended_by_opensips_over_mi_datagram_with_a_bye_to_both_phones() -> Result<()> {
    timed_out_call_gets_a_bye_at_both_phones(
        "timed_out_call_is_ended_by_opensips_over_mi_datagram_with_a_bye_to_both_phones",
        Proxy::OpenSips,
        Mi::Datagram,
    )
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn timed_out_call_is_ended_by_opensips_over_mi_fifo_with_a_bye_to_both_phones() -> Result<()> {
    timed_out_call_gets_a_bye_at_both_phones(
        "timed_out_call_is_ended_by_opensips_over_mi_fifo_with_a_bye_to_both_phones",
        Proxy::OpenSips,
        Mi::Fifo,
    )
}

#[test]
#[ignore = "needs root, opensips, sipp: run by ci/test.sh"]
fn timed_out_call_is_ended_by_opensips_over_mi_http_with_a_bye_to_both_phones() -> Result<()> {
    timed_out_call_gets_a_bye_at_both_phones(
        "timed_out_call_is_ended_by_opensips_over_mi_http_with_a_bye_to_both_phones",
        Proxy::OpenSips,
        Mi::Http,
    )
}

/// An answered call whose media stops: the relay reports it expired, the
/// dispatcher asks `proxy` (over `mi`) to end the dialog, and the proxy
/// sends a BYE to both phones. For OpenSIPS the dialog id the dispatcher
/// sent must be the one `dlg_list` shows for the call.
fn timed_out_call_gets_a_bye_at_both_phones(test: &str, proxy: Proxy, mi: Mi) -> Result<()> {
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let Some(()) = proxy.for_test(test) else { return Ok(()) };
    let label = format!("timeout_dlg_end_{proxy}_{mi:?}").to_lowercase();
    let mut rig = rig_with(&label, &bins, proxy, mi, |o| o)?;
    let (_, pcap_len) = sipp::pcap_stats(&sipp::pcap_path())?;

    // Both phones play RTP once, then go silent and wait (at most 25 s) for
    // a BYE that only the proxy can send.
    let mut spec = rig.call_spec(CallKind::Stalled, MediaPath::Relay(relay()), 0)?;
    spec.extra_talk = Duration::from_secs(25);
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    // The proxy's own name of the dialog, while it is up (OpenSIPS dlg_list).
    let listed_id = match proxy {
        Proxy::OpenSips => Some(opensips_dialog_id(&rig, &spec.call_id)?),
        Proxy::Kamailio => None,
    };
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(MIN_RELAYED)?;

    let caller_msgs = report.caller_files.messages();
    let callee_msgs = report.callee_files.messages();
    let (caller_byes, callee_byes) = (received(&caller_msgs, "BYE"), received(&callee_msgs, "BYE"));
    ensure!(caller_byes.len() == 1, "the caller received {} BYEs, expected 1 from the proxy", caller_byes.len());
    ensure!(callee_byes.len() == 1, "the callee received {} BYEs, expected 1 from the proxy", callee_byes.len());
    for (who, msgs) in [("caller", &caller_msgs), ("callee", &callee_msgs)] {
        let sent_bye = msgs.iter().any(|m| m.sent && m.method() == Some("BYE"));
        ensure!(!sent_bye, "the {who} sent a BYE itself; the test needs both phones to stay on the line");
        let answered = msgs.iter().any(|m| m.sent && m.status() == Some(200) && m.cseq().map(|c| c.1) == Some("BYE"));
        ensure!(answered, "the {who} did not answer the proxy's BYE with 200 OK");
    }

    // Media stopped about one pcap after the answer; the BYEs must come
    // stream_timeout later (plus the relay's timer and signalling), not before.
    let answer = answered_at(&caller_msgs).context("no 200 OK to the INVITE at the caller")?;
    let at_caller = caller_byes[0].at - answer;
    let at_callee = callee_byes[0].at - answer;
    let media = pcap_len.as_secs_f64();
    let timeout = f64::from(STREAM_TIMEOUT);
    eprintln!(
        "[e2e] {}: media for {media:.1} s, stream_timeout {timeout} s; BYE reached the caller {at_caller:.2} s and the callee {at_callee:.2} s after the answer",
        rig.label()
    );
    for (who, at) in [("caller", at_caller), ("callee", at_callee)] {
        ensure!(
            at >= media + timeout - 0.5,
            "BYE at the {who} {at:.2} s after the answer: before media ({media:.1} s) + stream_timeout ({timeout} s)"
        );
        ensure!(at <= media + timeout + 8.0, "BYE at the {who} only {at:.2} s after the answer");
    }

    let label = rig.label().to_owned();
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let expired = d.wait_call_log(&spec.call_id, "session expired and accounted", Duration::from_secs(5))?;
    let ended = d.wait_call_log(&spec.call_id, "dialog ended by the proxy", Duration::from_secs(5))?;
    eprintln!("[e2e] {label}: dispatcher: {expired}\n[e2e] {label}: dispatcher: {ended}");
    if let Some(id) = &listed_id {
        ensure!(
            ended.contains(&format!("sent={id}")),
            "the dispatcher did not end the dialog by the id dlg_list shows ({id}): {ended}"
        );
        let retried = d.call_log(&spec.call_id, "trying")?;
        ensure!(retried.is_empty(), "OpenSIPS 3.6 needed a second form: {retried:?}");
    }
    ensure!(
        expired.contains("no-traffic timeout"),
        "the expired session's stream is not `no-traffic timeout`: {expired}"
    );
    let failed = d.call_log(&spec.call_id, "could not end the dialog")?;
    ensure!(failed.is_empty(), "dialog ending failed: {failed:?}");
    let accounted = d.call_log(&spec.call_id, "accounted")?;
    ensure!(accounted.len() == 1, "the call was accounted {} times: {accounted:?}", accounted.len());
    rig.wait_session_gone(&spec.call_id, Duration::from_secs(5))?;
    rig.pass();
    Ok(())
}

/// The `ID` OpenSIPS's `dlg_list` shows for `call_id`.
fn opensips_dialog_id(rig: &Rig, call_id: &str) -> Result<String> {
    let proxy = rig.proxy.as_ref().context("proxy")?;
    let answer = proxy.mi("dlg_list", serde_json::json!({}))?;
    let dialogs = answer["result"]["Dialogs"].as_array().with_context(|| format!("dlg_list answered {answer}"))?;
    let dialog = dialogs
        .iter()
        .find(|d| d["callid"].as_str() == Some(call_id))
        .with_context(|| format!("dlg_list does not list {call_id}: {answer}"))?;
    let id = dialog["ID"].as_str().with_context(|| format!("no ID in {dialog}"))?;
    eprintln!("[e2e] dlg_list: call {call_id} is dialog {id}");
    Ok(id.to_owned())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn unanswered_call_that_expires_is_only_accounted() -> Result<()> {
    let test = "unanswered_call_that_expires_is_only_accounted";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let mut rig = rig("timeout_unanswered", &bins, |o| o)?;

    // The callee rings for stream_timeout + 5 s, then declines (486).
    let mut spec = rig.call_spec(CallKind::Unanswered, MediaPath::Relay(relay()), 0)?;
    spec.extra_talk = Duration::from_secs(u64::from(STREAM_TIMEOUT) + 5);
    let mut call = rig.start_call(&spec)?;
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let expired = d.wait_call_log(&spec.call_id, "session expired and accounted", Duration::from_secs(15))?;
    let expired_after = call.elapsed();
    ensure!(call.caller.is_running(), "the caller ended before the session expired");
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: expired {:.1} s after the INVITE while ringing; dispatcher: {expired}",
        rig.label(),
        expired_after.as_secs_f64()
    );
    report.check_completed()?;
    ensure!(report.setup.is_none(), "the call was answered");
    ensure!(expired.contains("\"start_time\":null"), "the expired session has a start_time: {expired}");
    ensure!(expired.contains("dialog_id"), "the expired session carries no dialog_id (engage_media_proxy): {expired}");

    // Give a (wrong) dlg.end_dlg time to show up.
    std::thread::sleep(Duration::from_secs(2));
    ensure_no_dialog_ending(&rig, &spec.call_id)?;
    for (who, files) in [("caller", &report.caller_files), ("callee", &report.callee_files)] {
        let byes = received(&files.messages(), "BYE").len();
        ensure!(byes == 0, "the {who} received {byes} BYEs for a call that was never answered");
    }
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn timed_out_call_without_dialog_is_only_accounted() -> Result<()> {
    let test = "timed_out_call_without_dialog_is_only_accounted";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let mut rig = rig("timeout_no_dialog", &bins, ProxyOptions::without_dialog)?;

    // use_media_proxy() without the dialog module: the session carries no
    // dialog_id. Media plays once; the caller hangs up itself well after
    // the stream timed out.
    let mut spec = rig.call_spec(CallKind::Basic, MediaPath::Relay(relay()), 0)?;
    spec.extra_talk = Duration::from_secs(u64::from(STREAM_TIMEOUT) + 5);
    let mut call = rig.start_call(&spec)?;
    call.wait_answered(Duration::from_secs(10))?;
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let expired = d.wait_call_log(&spec.call_id, "session expired and accounted", Duration::from_secs(25))?;
    let expired_after = call.elapsed();
    ensure!(call.caller.is_running(), "the call ended before its session expired");
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {}: {}", rig.label(), report.summary());
    eprintln!(
        "[e2e] {}: expired {:.1} s after the INVITE, before the caller's BYE; dispatcher: {expired}",
        rig.label(),
        expired_after.as_secs_f64()
    );
    report.check_completed()?;
    report.check_sdps()?;
    report.check_relayed_media(MIN_RELAYED)?;
    ensure!(!expired.contains("dialog_id"), "a call without the dialog module has a dialog_id: {expired}");
    ensure!(expired.contains("no-traffic timeout"), "the stream is not `no-traffic timeout`: {expired}");
    let log = rig.proxy.as_ref().context("proxy")?.log();
    ensure!(log.contains("(use_media_proxy, no dialog)"), "Kamailio did not take the no-dialog route");

    ensure_no_dialog_ending(&rig, &spec.call_id)?;
    let caller_byes = received(&report.caller_files.messages(), "BYE").len();
    let callee_byes = received(&report.callee_files.messages(), "BYE").len();
    ensure!(caller_byes == 0, "the caller received {caller_byes} BYEs; nobody may end a call without a dialog");
    ensure!(callee_byes == 1, "the callee received {callee_byes} BYEs, expected only the caller's");
    rig.pass();
    Ok(())
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn accounted_username_is_null_unless_the_proxy_gives_one() -> Result<()> {
    let test = "accounted_username_is_null_unless_the_proxy_gives_one";
    let Some(bins) = Binaries::for_test(test) else { return Ok(()) };
    let mut rig = rig("accounting_username", &bins, |o| o)?;
    let mut spec = rig.call_spec(CallKind::Unanswered, MediaPath::Relay(relay()), 0)?;
    spec.extra_talk = Duration::from_secs(u64::from(STREAM_TIMEOUT) + 2);
    let call = rig.start_call(&spec)?;
    let d = rig.dispatcher.as_mut().context("dispatcher")?;
    let line = d.wait_call_log(&spec.call_id, "accounted", Duration::from_secs(15))?;
    call.finish(&rig)?.check_completed()?;
    eprintln!("[e2e] {}: {line}", rig.label());
    ensure!(line.contains("\"from_uri\":\"alice@203.0.113.1\""), "the module's from_uri changed: {line}");
    // MediaProxy's relay reports a username only from a JSON signaling_ip
    // header (which this Kamailio config does not set).
    ensure!(line.contains("\"username\":null"), "username is not null as MediaProxy's: {line}");
    rig.pass();
    Ok(())
}
