//! One SIP call between the phones: callee registers and waits, caller
//! calls, both play RTP; afterwards a report with what each side received
//! (SDP), how long the setup took and how many media packets crossed.

use std::net::Ipv4Addr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::counters::{Counter, MediaCounters};
use crate::process::{describe, read_lossy, tail, Process};
use crate::relaybox::RelaySettings;
use crate::sipp::{self, CallKind, Leg, Ports, Sdp, SdpExpectation, SippFiles};
use crate::topology::{Side, PHONE_A, PHONE_B};

/// Where the media of a call should flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPath {
    /// No relay engaged: the SDP arrives untouched, so each side sees the
    /// other's private address (and media is lost in the NATs).
    Untouched,
    /// Through this relay: both SDPs point at it.
    Relay(RelaySettings),
}

impl MediaPath {
    pub fn relay_ip(self) -> Option<Ipv4Addr> {
        match self {
            MediaPath::Untouched => None,
            MediaPath::Relay(r) => Some(r.relay_ip),
        }
    }
}

/// Everything that defines one call.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub kind: CallKind,
    /// Used by both SIPp instances (`-cid_str`): the callee's REGISTER and
    /// the call share it, and the test knows it up front.
    pub call_id: String,
    pub caller: Leg,
    pub callee: Leg,
    pub media: MediaPath,
    /// Pause after each pcap play (longer than the pcap).
    pub play: Duration,
    /// Hold time (hold/resume calls).
    pub hold: Duration,
    /// Extra talk time after the media of a basic call, before BYE.
    pub extra_talk: Duration,
    /// Basic calls: both phones wait this long after the ACK before their
    /// first RTP (zero by default).
    pub media_delay: Duration,
    /// How long nobody sends anything between the callee's REGISTER and the
    /// INVITE (zero by default): a NAT binding may time out meanwhile.
    pub idle_before_invite: Duration,
}

impl CallSpec {
    /// What the caller must find in the answers it receives.
    pub fn expect_at_caller(&self) -> SdpExpectation {
        self.expectation(PHONE_B, &self.callee)
    }

    /// What the callee must find in the offers it receives.
    pub fn expect_at_callee(&self) -> SdpExpectation {
        self.expectation(PHONE_A, &self.caller)
    }

    fn expectation(&self, peer_ip: Ipv4Addr, peer: &Leg) -> SdpExpectation {
        match self.media {
            MediaPath::Untouched => SdpExpectation {
                ip: peer_ip,
                audio: Ports::Exactly(peer.media_port),
                video: Ports::Exactly(peer.video_port()),
            },
            MediaPath::Relay(r) => SdpExpectation { ip: r.relay_ip, audio: r.ports(), video: r.ports() },
        }
    }

    /// How long the caller's scenario runs once the call is up (for
    /// Stalled: the longest it waits for the proxy's BYE).
    pub fn talk_time(&self) -> Duration {
        match self.kind {
            CallKind::Basic => self.media_delay + self.play + self.extra_talk,
            CallKind::Ice | CallKind::Stalled | CallKind::Fax => self.play + self.extra_talk,
            CallKind::HoldResume => self.play * 2 + self.hold,
            CallKind::AudioVideo => self.play * 2,
            CallKind::Unanswered | CallKind::IceSilent => self.extra_talk,
        }
    }

    /// Upper bound for each SIPp run.
    pub fn limit(&self) -> Duration {
        self.talk_time() + self.idle_before_invite + Duration::from_secs(20)
    }

    pub(crate) fn params(&self, expect: SdpExpectation, leg: &Leg) -> sipp::ScenarioParams {
        let call = if self.kind.plays_audio() { self.play + self.extra_talk } else { self.extra_talk };
        sipp::ScenarioParams {
            caller_user: self.caller.user.clone(),
            callee_user: self.callee.user.clone(),
            expect,
            pcap: sipp::pcap_path(),
            video_pcap: sipp::pcap_path(),
            play: self.play,
            hold: self.hold,
            call,
            media_port: leg.media_port,
            play_audio: self.kind.plays_audio(),
            extra: self.extra_talk,
            media_delay: self.media_delay,
        }
    }
}

/// A call in progress. Its SIPp processes are killed if it is dropped
/// before [`Call::finish`].
#[derive(Debug)]
pub struct Call {
    pub spec: CallSpec,
    pub caller: Process,
    pub callee: Process,
    pub caller_files: SippFiles,
    pub callee_files: SippFiles,
    pub(crate) started: Instant,
    pub(crate) before_a: MediaCounters,
    pub(crate) before_b: MediaCounters,
}

impl Call {
    /// True while either SIPp still runs.
    pub fn is_running(&mut self) -> bool {
        self.caller.is_running() || self.callee.is_running()
    }

    /// Time since the caller was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the caller has received the 200 OK to its INVITE.
    pub fn wait_answered(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if sipp::setup_time(&self.caller_files.messages()).is_some() {
                return Ok(());
            }
            if !self.caller.is_running() {
                bail!("caller ended before the call was answered:\n{}", self.caller.log_tail(25));
            }
            if Instant::now() >= deadline {
                bail!("call {} not answered within {timeout:?}", self.spec.call_id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for both SIPp runs to end (bounded), then gathers the report.
    /// Does not judge: see the `check_*` methods of [`CallReport`].
    pub fn finish(mut self, rig: &crate::Rig) -> Result<CallReport> {
        let caller_exit = self.caller.wait_timeout(self.spec.limit() + Duration::from_secs(5))?;
        let callee_exit = self.callee.wait_timeout(Duration::from_secs(10))?;
        let duration = self.started.elapsed();
        // let the last packets land before reading the counters
        std::thread::sleep(Duration::from_millis(200));
        let a = rig.topo.counters(Side::A)?.since(&self.before_a);
        let b = rig.topo.counters(Side::B)?.since(&self.before_b);
        let caller_msgs = self.caller_files.messages();
        let callee_msgs = self.callee_files.messages();
        Ok(CallReport {
            spec: self.spec.clone(),
            caller_exit,
            callee_exit,
            setup: sipp::setup_time(&caller_msgs),
            caller_sdps: sipp::received_sdps(&caller_msgs),
            callee_sdps: sipp::received_sdps(&callee_msgs),
            a,
            b,
            duration,
            caller_files: self.caller_files.clone(),
            callee_files: self.callee_files.clone(),
        })
    }
}

/// Media counted for one direction of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Left the sending phone.
    pub sent: Counter,
    /// Arrived at the receiving phone, from anywhere.
    pub received: Counter,
    /// Arrived from the relay's address (zero without a relay).
    pub from_relay: Counter,
}

impl Flow {
    pub fn ratio(&self) -> f64 {
        if self.sent.packets == 0 {
            0.0
        } else {
            self.from_relay.packets as f64 / self.sent.packets as f64
        }
    }
}

/// What a finished call looked like.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub spec: CallSpec,
    pub caller_exit: ExitStatus,
    pub callee_exit: ExitStatus,
    /// Caller's INVITE sent to its 200 OK received.
    pub setup: Option<Duration>,
    /// SDPs of the answers the caller received (one per INVITE transaction).
    pub caller_sdps: Vec<Sdp>,
    /// SDPs of the offers the callee received.
    pub callee_sdps: Vec<Sdp>,
    /// Counter deltas on ph-a and ph-b over the call.
    pub a: MediaCounters,
    pub b: MediaCounters,
    pub duration: Duration,
    pub caller_files: SippFiles,
    pub callee_files: SippFiles,
}

impl CallReport {
    /// Both SIPp runs succeeded (every message, every `<ereg check_it>`).
    pub fn check_completed(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (who, exit, files) in
            [("caller", self.caller_exit, &self.caller_files), ("callee", self.callee_exit, &self.callee_files)]
        {
            if !exit.success() {
                problems.push(format!(
                    "{who} SIPp failed ({}).\n-- {}:\n{}\n-- {}:\n{}\n-- {}:\n{}",
                    describe(exit),
                    files.output.display(),
                    tail(&read_lossy(&files.output, 0), 25),
                    files.actions.display(),
                    tail(&read_lossy(&files.actions, 0), 10),
                    files.errors.display(),
                    tail(&read_lossy(&files.errors, 0), 25),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("call {} did not complete:\n{}", self.spec.call_id, problems.join("\n"))
        }
    }

    /// Every SDP each side received matches the call's media path.
    pub fn check_sdps(&self) -> Result<()> {
        let video = self.spec.kind.has_video();
        let want_offers = match self.spec.kind {
            CallKind::HoldResume => 3,
            CallKind::Fax => 2,
            _ => 1,
        };
        for (who, sdps, expect) in [
            ("caller (answers)", &self.caller_sdps, self.spec.expect_at_caller()),
            ("callee (offers)", &self.callee_sdps, self.spec.expect_at_callee()),
        ] {
            if sdps.len() != want_offers {
                bail!("{who} received {} SDPs, expected {want_offers}", sdps.len());
            }
            for (i, sdp) in sdps.iter().enumerate() {
                let result = if self.spec.kind == CallKind::Fax && i == 1 {
                    expect.check_image(sdp)
                } else {
                    expect.check(sdp, video)
                };
                result.map_err(|e| anyhow::anyhow!("{who}, SDP #{}: {e} [{}]", i + 1, sdp.describe()))?;
            }
        }
        Ok(())
    }

    /// The (caller, callee) sides' audio port as announced in SDP #`i`.
    pub fn audio_ports(&self, i: usize) -> Option<(u16, u16)> {
        let at_caller = self.caller_sdps.get(i)?.stream("audio")?.port;
        let at_callee = self.callee_sdps.get(i)?.stream("audio")?.port;
        Some((at_caller, at_callee))
    }

    /// One direction of one stream: `media` is "audio" or "video".
    pub fn flow(&self, media: &str, from: Side) -> Flow {
        let port = |leg: &Leg| if media == "video" { leg.video_port() } else { leg.media_port };
        let (tx_side, tx_leg, rx_side, rx_leg) = match from {
            Side::A => (&self.a, &self.spec.caller, &self.b, &self.spec.callee),
            Side::B => (&self.b, &self.spec.callee, &self.a, &self.spec.caller),
        };
        let rx = rx_side.port(port(rx_leg));
        Flow {
            sent: tx_side.port(port(tx_leg)).tx,
            received: rx.rx,
            from_relay: self.spec.media.relay_ip().map(|ip| rx.rx_from(ip)).unwrap_or_default(),
        }
    }

    /// The streams this call plays media on.
    pub fn media_types(&self) -> &'static [&'static str] {
        if self.spec.kind.has_video() {
            &["audio", "video"]
        } else {
            &["audio"]
        }
    }

    /// Media through the relay: in every played stream and direction, the
    /// phone received from the relay's address at least `min_ratio` of the
    /// packets the other phone sent.
    pub fn check_relayed_media(&self, min_ratio: f64) -> Result<()> {
        let Some(relay) = self.spec.media.relay_ip() else { bail!("call {} has no relay", self.spec.call_id) };
        for media in self.media_types() {
            for from in [Side::A, Side::B] {
                let f = self.flow(media, from);
                if f.sent.packets == 0 {
                    bail!("{media} from {from:?}: SIPp sent no packets");
                }
                if f.ratio() < min_ratio {
                    bail!(
                        "{media} from {from:?}: {} packets sent, {} received from relay {relay} ({:.0}% < {:.0}%), {} from anywhere",
                        f.sent.packets,
                        f.from_relay.packets,
                        f.ratio() * 100.0,
                        min_ratio * 100.0,
                        f.received.packets
                    );
                }
            }
        }
        Ok(())
    }

    /// No relay: both phones sent media and none of it arrived (the NATs
    /// drop media sent to a private address).
    pub fn check_media_lost(&self) -> Result<()> {
        for media in self.media_types() {
            for from in [Side::A, Side::B] {
                let f = self.flow(media, from);
                if f.sent.packets == 0 {
                    bail!("{media} from {from:?}: SIPp sent no packets");
                }
                if f.received.packets != 0 {
                    bail!(
                        "{media} from {from:?}: {} packets arrived although the SDP was untouched",
                        f.received.packets
                    );
                }
            }
        }
        Ok(())
    }

    /// A multi-line summary for the test output (and the release note).
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or("-".into());
        let mut s = format!(
            "call {} ({:?}, media {}): setup {}, total {:.1} s, caller {}, callee {}",
            self.spec.call_id,
            self.spec.kind,
            self.spec.media.relay_ip().map(|ip| format!("via relay {ip}")).unwrap_or("untouched".into()),
            ms(self.setup),
            self.duration.as_secs_f64(),
            describe(self.caller_exit),
            describe(self.callee_exit)
        );
        for (i, sdp) in self.caller_sdps.iter().enumerate() {
            s.push_str(&format!("\n  answer #{} at caller: {}", i + 1, sdp.describe()));
        }
        for (i, sdp) in self.callee_sdps.iter().enumerate() {
            s.push_str(&format!("\n  offer #{} at callee: {}", i + 1, sdp.describe()));
        }
        for media in self.media_types() {
            for (from, dir) in [(Side::A, "A->B"), (Side::B, "B->A")] {
                let f = self.flow(media, from);
                s.push_str(&format!(
                    "\n  {media} {dir}: sent {} pkts, received {} pkts ({} B), from relay {} pkts ({:.1}%)",
                    f.sent.packets,
                    f.received.packets,
                    f.received.bytes,
                    f.from_relay.packets,
                    f.ratio() * 100.0
                ));
            }
        }
        s
    }
}
