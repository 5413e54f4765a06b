//! Calls through both NATs with Kamailio and no dispatcher running. The
//! mediaproxy module cannot reach the dispatcher, so it leaves the SDP as it
//! was: each phone sees the other's private address and the media it sends
//! dies in the NATs. The calls must still complete, and quickly: a dead
//! dispatcher may never block call setup (SPEC 1).
//!
//! This is also the proof that the rig's NAT is real: without a relay, no
//! RTP packet reaches either phone.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use relaybox_e2e::{CallKind, CallReport, MediaPath, Rig};

/// The module's `mediaproxy_timeout` (Kamailio's default, set in kamailio.cfg).
const MODULE_TIMEOUT: Duration = Duration::from_millis(500);

fn call_without_dispatcher(label: &str, kind: CallKind) -> Result<CallReport> {
    let mut rig = Rig::new(label)?;
    ensure!(!rig.mediaproxy_socket().exists(), "no dispatcher may run in this test");
    rig.start_kamailio()?;
    let spec = rig.call_spec(kind, MediaPath::Untouched, 0)?;
    let call = rig.start_call(&spec)?;
    let report = call.finish(&rig)?;
    eprintln!("[e2e] {label}: {}", report.summary());

    report.check_completed()?;
    report.check_sdps()?;
    report.check_media_lost()?;
    let setup = report.setup.context("no INVITE/200 OK pair in the caller's trace")?;
    ensure!(setup < MODULE_TIMEOUT, "call setup took {setup:?}, the module timeout is {MODULE_TIMEOUT:?}");

    let log = rig.proxy.as_ref().context("proxy")?.log();
    let socket = rig.mediaproxy_socket().display().to_string();
    ensure!(
        log.contains(&format!("failed to connect to {socket}")),
        "Kamailio never tried the dispatcher socket {socket}"
    );
    ensure!(log.contains(&format!("initial INVITE {}", spec.call_id)), "INVITE did not pass engage_media_proxy()");
    rig.pass();
    Ok(report)
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn dispatcher_down_call_completes_with_sdp_untouched() -> Result<()> {
    call_without_dispatcher("dispatcher_down_basic", CallKind::Basic).map(drop)
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn dispatcher_down_hold_resume_completes_with_sdp_untouched() -> Result<()> {
    call_without_dispatcher("dispatcher_down_hold", CallKind::HoldResume).map(drop)
}

#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn dispatcher_down_audio_video_completes_with_sdp_untouched() -> Result<()> {
    call_without_dispatcher("dispatcher_down_av", CallKind::AudioVideo).map(drop)
}

/// A dispatcher that accepts the module's connections and never answers.
struct SilentDispatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentDispatcher {
    fn listen(path: &Path) -> Result<SilentDispatcher> {
        let listener = UnixListener::bind(path)?;
        // Mode 0666 as the real dispatcher's: the proxy runs as its own user.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<UnixStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(SilentDispatcher { stop, thread: Some(thread) })
    }
}

impl Drop for SilentDispatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The worst case for call setup: the dispatcher takes the connection and
/// never answers. The module gives up after its timeout on each message with
/// SDP (INVITE, 200 OK) and leaves the SDP untouched; the call completes.
#[test]
#[ignore = "needs root, kamailio, sipp: run by ci/test.sh"]
fn hung_dispatcher_costs_at_most_the_module_timeout_per_message() -> Result<()> {
    let mut rig = Rig::new("dispatcher_hung")?;
    let _silent = SilentDispatcher::listen(&rig.mediaproxy_socket())?;
    rig.start_kamailio()?;
    let spec = rig.call_spec(CallKind::Basic, MediaPath::Untouched, 0)?;
    let report = rig.start_call(&spec)?.finish(&rig)?;
    eprintln!("[e2e] dispatcher_hung: {}", report.summary());

    report.check_completed()?;
    report.check_sdps()?;
    report.check_media_lost()?;
    let setup = report.setup.context("no setup time")?;
    let log = rig.proxy.as_ref().context("proxy")?.log();
    let timeouts = log.matches("did timeout waiting for an answer").count();
    eprintln!("[e2e] dispatcher_hung: setup {setup:?} with {timeouts} module timeout(s) of {MODULE_TIMEOUT:?}");
    ensure!(timeouts >= 1, "the module never timed out waiting for the silent dispatcher");
    ensure!(setup >= MODULE_TIMEOUT, "setup {setup:?} shorter than one module timeout: was the dispatcher asked?");
    // Two waits (the INVITE and the 200 OK), not three: a third would put
    // setup at 3 × MODULE_TIMEOUT or more.
    ensure!(
        setup < MODULE_TIMEOUT * 3,
        "setup took {setup:?}, more than the module timeout for the INVITE and the 200 OK"
    );
    rig.pass();
    Ok(())
}
