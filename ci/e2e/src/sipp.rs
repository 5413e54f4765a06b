//! SIPp: the scenario templates in `sipp/`, the command line that runs them
//! in a phone namespace with every run bounded, and a parser for SIPp's
//! message trace (`-trace_msg`) so that tests can look at the SDP each side
//! really received and at the timing of the call setup.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::CommandLine;
use crate::topology::SRV_IP;
use crate::{find_program, render_template};

/// The G.711 A-law sample SIPp ships: 236 RTP packets of 30 ms, about 7 s.
pub const DEFAULT_PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

/// The audio pcap played by both phones: `$SIPP_PCAP` or [`DEFAULT_PCAP`].
pub fn pcap_path() -> PathBuf {
    std::env::var_os("SIPP_PCAP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PCAP))
}

/// Number of packets and duration of a pcap file (classic libpcap format).
pub fn pcap_stats(path: &Path) -> Result<(u64, Duration)> {
    let data =
        std::fs::read(path).with_context(|| format!("reading {} (apt-get install sip-tester)", path.display()))?;
    if data.len() < 24 {
        bail!("{} is not a pcap file", path.display());
    }
    let u32_at = |i: usize, le: bool| {
        let b = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let le = match u32_at(0, true) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        _ if matches!(u32_at(0, false), 0xa1b2_c3d4 | 0xa1b2_3c4d) => false,
        _ => bail!("{} is not a classic pcap file", path.display()),
    };
    let nanos = matches!(u32_at(0, le), 0xa1b2_3c4d);
    let (mut off, mut count, mut first, mut last) = (24usize, 0u64, None, 0f64);
    while off + 16 <= data.len() {
        let secs = u32_at(off, le) as f64;
        let frac = u32_at(off + 4, le) as f64 / if nanos { 1e9 } else { 1e6 };
        let incl = u32_at(off + 8, le) as usize;
        let t = secs + frac;
        first.get_or_insert(t);
        last = t;
        count += 1;
        off += 16 + incl;
    }
    Ok((count, Duration::from_secs_f64((last - first.unwrap_or(last)).max(0.0))))
}

/// Which pair of scenarios a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// INVITE, RTP both ways, BYE.
    Basic,
    /// Like Basic, then a hold re-INVITE (a=sendonly), a resume re-INVITE
    /// (a=sendrecv) and RTP both ways again.
    HoldResume,
    /// Audio + video (two m= lines); RTP on audio, then on video.
    AudioVideo,
    /// Like Basic, but after one play of RTP both phones go silent and
    /// neither hangs up: both wait (bounded) for a BYE from the proxy.
    Stalled,
    /// The callee rings for `extra_talk`, then declines with 486.
    Unanswered,
    /// ICE phones (ice-ufrag/ice-pwd, host candidates for RTP and RTCP);
    /// RTP both ways through the SDP's address, then BYE.
    Ice,
    /// ICE phones that send no media to the addresses in the SDP (as if
    /// they had picked their host candidates); BYE after `extra_talk`.
    IceSilent,
    /// Audio with RTP, then a re-INVITE to T.38 (`m=image ... udptl t38`);
    /// BYE `extra_talk` after the switch.
    Fax,
}

impl CallKind {
    /// (caller, callee) template file names in `sipp/`.
    pub fn templates(self) -> (&'static str, &'static str) {
        match self {
            CallKind::Basic => ("caller.xml", "callee.xml"),
            CallKind::HoldResume => ("caller_hold.xml", "callee_hold.xml"),
            CallKind::AudioVideo => ("caller_av.xml", "callee_av.xml"),
            CallKind::Stalled => ("caller_stall.xml", "callee.xml"),
            CallKind::Unanswered => ("caller_unanswered.xml", "callee_unanswered.xml"),
            CallKind::Ice | CallKind::IceSilent => ("caller_ice.xml", "callee_ice.xml"),
            CallKind::Fax => ("caller_t38.xml", "callee_t38.xml"),
        }
    }

    /// Every kind, for tests of the templates.
    pub const ALL: [CallKind; 8] = [
        CallKind::Basic,
        CallKind::HoldResume,
        CallKind::AudioVideo,
        CallKind::Stalled,
        CallKind::Unanswered,
        CallKind::Ice,
        CallKind::IceSilent,
        CallKind::Fax,
    ];

    /// Whether the phones play RTP at all.
    pub fn plays_audio(self) -> bool {
        !matches!(self, CallKind::Unanswered | CallKind::IceSilent)
    }

    /// How many times each side plays the pcap on each stream it plays.
    pub fn audio_plays(self) -> u64 {
        match self {
            CallKind::HoldResume => 2,
            _ => 1,
        }
    }

    pub fn has_video(self) -> bool {
        self == CallKind::AudioVideo
    }
}

/// One phone's SIP identity and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub user: String,
    pub sip_port: u16,
    /// RTP port; RTCP `media_port + 1`, video `media_port + 2`, T.38
    /// (image) `media_port + 4`.
    pub media_port: u16,
}

impl Leg {
    pub fn new(user: &str, sip_port: u16, media_port: u16) -> Leg {
        Leg { user: user.to_owned(), sip_port, media_port }
    }

    pub fn video_port(&self) -> u16 {
        self.media_port + 2
    }

    pub fn image_port(&self) -> u16 {
        self.media_port + 4
    }
}

/// Which media ports an SDP may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    Exactly(u16),
    /// Even ports of a relay's `port_range` (inclusive).
    EvenIn(u16, u16),
}

impl Ports {
    pub fn contains(self, port: u16) -> bool {
        match self {
            Ports::Exactly(p) => port == p,
            Ports::EvenIn(lo, hi) => (lo..=hi).contains(&port) && port % 2 == 0,
        }
    }

    /// A POSIX extended regex (what SIPp's `<ereg>` uses) matching exactly
    /// these ports.
    pub fn regex(self) -> String {
        match self {
            Ports::Exactly(p) => p.to_string(),
            Ports::EvenIn(lo, hi) => {
                (lo..=hi).filter(|p| p % 2 == 0).map(|p| p.to_string()).collect::<Vec<_>>().join("|")
            }
        }
    }
}

/// What one side must find in the SDP it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpExpectation {
    pub ip: Ipv4Addr,
    pub audio: Ports,
    pub video: Ports,
}

impl SdpExpectation {
    /// Checks a parsed SDP; the error says what differs.
    pub fn check(&self, sdp: &Sdp, video: bool) -> Result<()> {
        let audio = sdp.stream("audio").context("no m=audio line")?;
        if audio.ip != Some(self.ip) {
            bail!("audio goes to {:?}, expected {}", audio.ip, self.ip);
        }
        if !self.audio.contains(audio.port) {
            bail!("audio port {} is not in {:?}", audio.port, self.audio);
        }
        if video {
            let v = sdp.stream("video").context("no m=video line")?;
            if v.ip != Some(self.ip) {
                bail!("video goes to {:?}, expected {}", v.ip, self.ip);
            }
            if !self.video.contains(v.port) {
                bail!("video port {} is not in {:?}", v.port, self.video);
            }
        }
        Ok(())
    }
}

impl SdpExpectation {
    /// Checks the T.38 stream (`m=image`) of an SDP against the audio ports.
    pub fn check_image(&self, sdp: &Sdp) -> Result<()> {
        let image = sdp.stream("image").context("no m=image line")?;
        if image.ip != Some(self.ip) {
            bail!("image goes to {:?}, expected {}", image.ip, self.ip);
        }
        if !self.audio.contains(image.port) {
            bail!("image port {} is not in {:?}", image.port, self.audio);
        }
        Ok(())
    }
}

/// Everything a scenario template needs besides SIPp's own keywords.
#[derive(Debug, Clone)]
pub struct ScenarioParams {
    pub caller_user: String,
    pub callee_user: String,
    pub expect: SdpExpectation,
    pub pcap: PathBuf,
    pub video_pcap: PathBuf,
    /// Pause after starting one pcap (longer than the pcap).
    pub play: Duration,
    /// Hold time of the hold/resume scenario.
    pub hold: Duration,
    /// Caller's pause between ACK and BYE in the basic scenario.
    pub call: Duration,
    /// The rendering phone's own RTP port (for literal RTCP/candidate/image
    /// ports in its SDP).
    pub media_port: u16,
    /// Whether the phone plays the pcap (`PLAY_AUDIO`).
    pub play_audio: bool,
    /// Ring time (Unanswered), time on T.38 before BYE (Fax).
    pub extra: Duration,
    /// Wait between the ACK and the first RTP of the basic scenario
    /// (`MEDIA_DELAY`): phones in the field start 0.1 to 2 s after the answer.
    pub media_delay: Duration,
}

/// The checked-in scenario template `name` (in `sipp/`).
pub fn template_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp").join(name)
}

/// Renders the scenario template `name` with `params`.
pub fn render(name: &str, params: &ScenarioParams) -> Result<String> {
    let ms = |d: Duration| d.as_millis().to_string();
    let ip_re = params.expect.ip.to_string().replace('.', "\\.");
    let play = if params.play_audio {
        format!(
            "  <nop>\n    <action>\n      <exec play_pcap_audio=\"{}\"/>\n    </action>\n  </nop>",
            params.pcap.display()
        )
    } else {
        "  <!-- no media: this phone plays no RTP -->".to_string()
    };
    let media_delay = if params.media_delay.is_zero() {
        "<!-- media starts at once -->".to_string()
    } else {
        format!("<pause milliseconds=\"{}\"/>", params.media_delay.as_millis())
    };
    render_vars(
        name,
        &[
            ("CALLER_USER", params.caller_user.clone()),
            ("CALLEE_USER", params.callee_user.clone()),
            ("MEDIA_IP_RE", ip_re),
            ("AUDIO_PORT_RE", params.expect.audio.regex()),
            ("VIDEO_PORT_RE", params.expect.video.regex()),
            ("PCAP", params.pcap.display().to_string()),
            ("VIDEO_PCAP", params.video_pcap.display().to_string()),
            ("PLAY_MS", ms(params.play)),
            ("HOLD_MS", ms(params.hold)),
            ("CALL_MS", ms(params.call)),
            ("EXTRA_MS", ms(params.extra)),
            ("PLAY_AUDIO", play),
            ("MEDIA_DELAY", media_delay),
            ("MEDIA_PORT", params.media_port.to_string()),
            ("RTCP_PORT", (params.media_port + 1).to_string()),
            ("IMAGE_PORT", (params.media_port + 4).to_string()),
            ("ICE_UFRAG", format!("e2e{}", params.media_port)),
            ("ICE_PWD", "relayboxe2eicepassword0".into()),
        ],
    )
}

/// Renders the scenario template `name` with explicit `vars` (templates
/// outside the one-call kinds: register.xml, caller_bulk.xml, callee_bulk.xml).
pub fn render_vars(name: &str, vars: &[(&str, String)]) -> Result<String> {
    let path = template_path(name);
    let template = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    render_template(&template, vars)
}

/// Files of one SIPp run, all in the test directory.
#[derive(Debug, Clone)]
pub struct SippFiles {
    pub scenario: PathBuf,
    /// `-trace_msg` output: every SIP message sent and received.
    pub messages: PathBuf,
    /// `-trace_logs` output: the scenarios' `<log>` actions.
    pub actions: PathBuf,
    /// `-trace_err` output: unexpected messages.
    pub errors: PathBuf,
    /// SIPp's stdout and stderr (screens, fatal errors).
    pub output: PathBuf,
}

impl SippFiles {
    pub fn new(dir: &Path, label: &str) -> SippFiles {
        SippFiles {
            scenario: dir.join(format!("{label}.xml")),
            messages: dir.join(format!("{label}-messages.log")),
            actions: dir.join(format!("{label}-actions.log")),
            errors: dir.join(format!("{label}-errors.log")),
            output: dir.join(format!("{label}.log")),
        }
    }

    /// The parsed message trace (empty when the file does not exist yet).
    pub fn messages(&self) -> Vec<SipMessage> {
        parse_message_log(&crate::process::read_lossy(&self.messages, 0))
    }
}

/// The SIPp command line for one phone. The run is bounded: one call
/// (`-m 1`), `-timeout` for the whole run (failing with `-timeout_error`) and
/// `-recv_timeout` for each expected message.
pub fn command(
    files: &SippFiles,
    local_ip: Ipv4Addr,
    leg: &Leg,
    call_id: &str,
    limit: Duration,
) -> Result<CommandLine> {
    let sipp = find_program("sipp", "SIPP")?;
    let secs = limit.as_secs().max(1);
    Ok(CommandLine::new(sipp)
        .arg("-sf")
        .arg(&files.scenario)
        .args(["-i", &local_ip.to_string()])
        .args(["-p", &leg.sip_port.to_string()])
        .args(["-mp", &leg.media_port.to_string()])
        .args(["-m", "1", "-cid_str", call_id])
        .args(["-timeout", &format!("{secs}s"), "-timeout_error"])
        .args(["-recv_timeout", &(secs * 1000).to_string()])
        .args(["-max_retrans", "5", "-nostdin"])
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(&files.messages)
        .arg("-trace_logs")
        .arg("-log_file")
        .arg(&files.actions)
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&files.errors)
        .arg(format!("{SRV_IP}:5060")))
}

/// A SIPp run of many calls: `calls` calls at `rate` per second (at most
/// `calls` at once), Call-IDs from `cid_str` (SIPp expands `%u` to the call
/// number); the whole run bounded by `limit`. With `rate` 0 SIPp is a UAS
/// that ends after `calls` calls.
#[derive(Debug, Clone)]
pub struct Bulk {
    pub sip_port: u16,
    pub media_port: u16,
    pub cid_str: String,
    pub calls: u32,
    pub rate: u32,
    pub limit: Duration,
}

/// The SIPp command line of a [`Bulk`] run on `local_ip`.
pub fn bulk_command(files: &SippFiles, local_ip: Ipv4Addr, bulk: &Bulk) -> Result<CommandLine> {
    let Bulk { sip_port, media_port, ref cid_str, calls, rate, limit } = *bulk;
    let sipp = find_program("sipp", "SIPP")?;
    let secs = limit.as_secs().max(1);
    let mut cmd = CommandLine::new(sipp)
        .arg("-sf")
        .arg(&files.scenario)
        .args(["-i", &local_ip.to_string()])
        .args(["-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(["-m", &calls.to_string(), "-l", &calls.to_string(), "-cid_str", cid_str.as_str()])
        .args(["-timeout", &format!("{secs}s"), "-timeout_error"])
        .args(["-recv_timeout", &(secs * 1000).to_string()])
        .args(["-max_retrans", "5", "-nostdin"]);
    if rate > 0 {
        cmd = cmd.args(["-r", &rate.to_string()]);
    }
    Ok(cmd
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(&files.messages)
        .arg("-trace_logs")
        .arg("-log_file")
        .arg(&files.actions)
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&files.errors)
        .arg(format!("{SRV_IP}:5060")))
}

/// One SIP message from SIPp's message trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SipMessage {
    /// Wall-clock time SIPp logged it, in seconds since the Unix epoch
    /// (local time zone, which does not matter for differences).
    pub at: f64,
    /// Sent by this SIPp (false: received).
    pub sent: bool,
    /// The message as logged, lines joined with "\n".
    pub text: String,
}

impl SipMessage {
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    /// The response code, for responses.
    pub fn status(&self) -> Option<u16> {
        let line = self.first_line();
        line.strip_prefix("SIP/2.0 ").and_then(|rest| rest.get(..3)).and_then(|c| c.parse().ok())
    }

    /// The request method, for requests.
    pub fn method(&self) -> Option<&str> {
        if self.first_line().starts_with("SIP/2.0") {
            None
        } else {
            self.first_line().split_whitespace().next()
        }
    }

    /// The first header called `name` (case-insensitive; compact forms not handled).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head().lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// (number, method) of the CSeq header.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let mut it = self.header("CSeq")?.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?))
    }

    fn head(&self) -> &str {
        self.text.split_once("\n\n").map(|(h, _)| h).unwrap_or(&self.text)
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\n\n").map(|(_, b)| b).unwrap_or_default()
    }

    /// The SDP body, if there is one.
    pub fn sdp(&self) -> Option<Sdp> {
        let body = self.body();
        body.trim_start().starts_with("v=0").then(|| Sdp::parse(body))
    }
}

/// Parses SIPp's `-trace_msg` file.
pub fn parse_message_log(text: &str) -> Vec<SipMessage> {
    const SEP: &str = "----------------------------------------------- ";
    let mut out = Vec::new();
    for block in text.split(SEP).skip(1) {
        let block = block.replace('\r', "");
        let mut lines = block.lines();
        let Some(at) = lines.next().and_then(parse_timestamp) else { continue };
        let Some(kind) = lines.next() else { continue };
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let rest: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let text = rest.join("\n").trim_end().to_owned();
        if !text.is_empty() {
            out.push(SipMessage { at, sent, text });
        }
    }
    out
}

/// "2026-11-25 02:34:46.398043" -> seconds since the epoch.
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let sec = t.next()?.parse::<f64>().ok()?;
    // days from civil (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Time from the first INVITE this side sent to the first 200 OK for it.
pub fn setup_time(messages: &[SipMessage]) -> Option<Duration> {
    let invite = messages.iter().find(|m| m.sent && m.method() == Some("INVITE"))?;
    let cseq = invite.cseq()?.0;
    let ok = messages
        .iter()
        .find(|m| !m.sent && m.status() == Some(200) && m.cseq() == Some((cseq, "INVITE")) && m.at >= invite.at)?;
    Some(Duration::from_secs_f64(ok.at - invite.at))
}

/// SDPs received: in 200 OKs to INVITEs (caller side) or in INVITEs
/// (callee side), in order.
pub fn received_sdps(messages: &[SipMessage]) -> Vec<Sdp> {
    messages
        .iter()
        .filter(|m| !m.sent)
        .filter(|m| {
            m.method() == Some("INVITE") || (m.status() == Some(200) && m.cseq().map(|c| c.1) == Some("INVITE"))
        })
        .filter_map(SipMessage::sdp)
        .collect()
}

/// The parts of an SDP body the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub session_ip: Option<Ipv4Addr>,
    pub session_direction: Option<String>,
    pub streams: Vec<SdpStream>,
}

/// One m= line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpStream {
    pub media: String,
    pub port: u16,
    /// Media-level c= if any, else the session's.
    pub ip: Option<Ipv4Addr>,
    /// a=sendrecv / sendonly / recvonly / inactive (media-level, else session-level).
    pub direction: Option<String>,
    /// The stream's `a=candidate:` lines (without `a=`), in order.
    pub candidates: Vec<String>,
}

impl Sdp {
    pub fn parse(body: &str) -> Sdp {
        let mut sdp = Sdp { session_ip: None, session_direction: None, streams: Vec::new() };
        for line in body.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("m=") {
                let mut it = rest.split_whitespace();
                let media = it.next().unwrap_or_default().to_owned();
                let port = it.next().and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(0);
                sdp.streams.push(SdpStream { media, port, ip: None, direction: None, candidates: Vec::new() });
            } else if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
                let ip = rest.split('/').next().and_then(|a| a.trim().parse().ok());
                match sdp.streams.last_mut() {
                    Some(s) => s.ip = ip,
                    None => sdp.session_ip = ip,
                }
            } else if let Some(c) = line.strip_prefix("a=candidate:") {
                if let Some(s) = sdp.streams.last_mut() {
                    s.candidates.push(format!("candidate:{c}"));
                }
            } else if let Some(dir) =
                line.strip_prefix("a=").filter(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
            {
                match sdp.streams.last_mut() {
                    Some(s) => s.direction = Some(dir.to_owned()),
                    None => sdp.session_direction = Some(dir.to_owned()),
                }
            }
        }
        for s in &mut sdp.streams {
            s.ip = s.ip.or(sdp.session_ip);
            if s.direction.is_none() {
                s.direction.clone_from(&sdp.session_direction);
            }
        }
        sdp
    }

    /// The first stream of this media type.
    pub fn stream(&self, media: &str) -> Option<&SdpStream> {
        self.streams.iter().find(|s| s.media == media)
    }

    /// "audio 203.0.113.1:40000 sendrecv, video ..." for reports.
    pub fn describe(&self) -> String {
        self.streams
            .iter()
            .map(|s| {
                let ip = s.ip.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
                format!("{} {ip}:{} {}", s.media, s.port, s.direction.as_deref().unwrap_or("-"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "----------------------------------------------- 2026-11-25 02:34:46.398043\n\
UDP message sent (493 bytes):\n\n\
INVITE sip:bob@203.0.113.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-8809-1-0\r\n\
Call-ID: call-3@e2e\r\n\
CSeq: 1 INVITE\r\n\
Content-Type: application/sdp\r\n\
\r\n\
v=0\r\n\
o=alice 1 1 IN IP4 192.168.1.10\r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 8\r\n\
a=sendrecv\r\n\
\n\
----------------------------------------------- 2026-11-25 02:34:46.398614\n\
UDP message received [321] bytes :\n\n\
SIP/2.0 100 trying -- your call is important to us\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\
\r\n\
\n\
----------------------------------------------- 2026-11-25 02:34:46.400296\n\
UDP message received [537] bytes :\n\n\
SIP/2.0 200 OK\r\n\
cseq: 1 INVITE\r\n\
Content-Type: application/sdp\r\n\
\r\n\
v=0\r\n\
c=IN IP4 203.0.113.1\r\n\
m=audio 40002 RTP/AVP 8\r\n\
a=rtcp:40003\r\n\
m=video 40004 RTP/AVP 96\r\n\
c=IN IP4 203.0.113.2\r\n\
a=recvonly\r\n\
\n";

    #[test]
    fn parses_sipp_message_trace() {
        let msgs = parse_message_log(TRACE);
        assert_eq!(msgs.len(), 3);
        assert!(msgs[0].sent);
        assert_eq!(msgs[0].method(), Some("INVITE"));
        assert_eq!(msgs[0].cseq(), Some((1, "INVITE")));
        assert_eq!(msgs[1].status(), Some(100));
        assert_eq!(msgs[2].status(), Some(200));
        let setup = setup_time(&msgs).unwrap();
        assert!((setup.as_secs_f64() - 0.002253).abs() < 1e-5, "{setup:?}");

        let sdps = received_sdps(&msgs);
        assert_eq!(sdps.len(), 1);
        let sdp = &sdps[0];
        assert_eq!(sdp.stream("audio").unwrap().ip, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!(sdp.stream("audio").unwrap().port, 40002);
        assert_eq!(sdp.stream("video").unwrap().ip, Some(Ipv4Addr::new(203, 0, 113, 2)));
        assert_eq!(sdp.stream("video").unwrap().direction.as_deref(), Some("recvonly"));
        assert_eq!(msgs[0].sdp().unwrap().describe(), "audio 192.168.1.10:6000 sendrecv");
    }

    #[test]
    fn timestamps_are_epoch_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00.000000"), Some(0.0));
        assert_eq!(parse_timestamp("2000-03-01 00:00:01.5"), Some(951_868_801.5));
    }

    #[test]
    fn port_sets_and_their_regex() {
        let r = Ports::EvenIn(40000, 40006);
        assert_eq!(r.regex(), "40000|40002|40004|40006");
        assert!(r.contains(40002) && !r.contains(40003) && !r.contains(40008));
        assert_eq!(Ports::Exactly(6000).regex(), "6000");
    }

    #[test]
    fn expectation_check_names_the_difference() {
        let sdp = Sdp::parse("v=0\nc=IN IP4 192.168.2.10\nm=audio 6000 RTP/AVP 8\n");
        let relay = SdpExpectation {
            ip: Ipv4Addr::new(203, 0, 113, 1),
            audio: Ports::EvenIn(40000, 40100),
            video: Ports::EvenIn(40000, 40100),
        };
        let err = relay.check(&sdp, false).unwrap_err().to_string();
        assert!(err.contains("192.168.2.10"), "{err}");
        let untouched = SdpExpectation {
            ip: Ipv4Addr::new(192, 168, 2, 10),
            audio: Ports::Exactly(6000),
            video: Ports::Exactly(6002),
        };
        untouched.check(&sdp, false).unwrap();
    }

    #[test]
    fn every_template_renders_completely() {
        let params = ScenarioParams {
            caller_user: "alice".into(),
            callee_user: "bob".into(),
            expect: SdpExpectation {
                ip: Ipv4Addr::new(203, 0, 113, 1),
                audio: Ports::EvenIn(40000, 40010),
                video: Ports::EvenIn(40000, 40010),
            },
            pcap: DEFAULT_PCAP.into(),
            video_pcap: DEFAULT_PCAP.into(),
            play: Duration::from_millis(8500),
            hold: Duration::from_secs(2),
            call: Duration::from_secs(9),
            media_port: 6000,
            play_audio: true,
            extra: Duration::from_secs(3),
            media_delay: Duration::from_secs(1),
        };
        for kind in CallKind::ALL {
            let (caller, callee) = kind.templates();
            for name in [caller, callee] {
                let params = ScenarioParams { play_audio: kind.plays_audio(), ..params.clone() };
                let xml = render(name, &params).unwrap();
                // the unanswered caller gets no answer SDP to check
                if !(kind == CallKind::Unanswered && name == caller) {
                    assert!(xml.contains("c=IN IP4 (203\\.0\\.113\\.1)[[:space:]]"), "{name}");
                    assert!(xml.contains("m=audio (40000|40002|40004|40006|40008|40010) "), "{name}");
                }
                assert_eq!(xml.contains("m=video ("), kind.has_video(), "{name}");
                assert_eq!(xml.contains("play_pcap_audio=\"/usr/share"), kind.plays_audio(), "{kind:?} {name}");
                if matches!(kind, CallKind::Ice | CallKind::IceSilent) {
                    assert!(xml.contains("a=candidate:1 1 UDP 2130706431 [local_ip] 6000 typ host"), "{name}");
                    assert!(xml.contains("a=candidate:1 2 UDP 2130706430 [local_ip] 6001 typ host"), "{name}");
                    assert!(xml.contains("a=ice-ufrag:e2e6000"), "{name}");
                }
                if kind == CallKind::Basic {
                    assert!(xml.contains("<pause milliseconds=\"1000\"/>\n\n  <nop>"), "{name}: media delay");
                }
                if kind == CallKind::Fax {
                    assert!(xml.contains("m=image 6004 udptl t38"), "{name}");
                    assert!(xml.contains("m=image (40000|"), "{name}");
                }
            }
        }
        for name in ["register.xml", "caller_bulk.xml", "callee_bulk.xml"] {
            let vars = [
                ("CALLER_USER", "alice".to_string()),
                ("CALLEE_USER", "bob".to_string()),
                ("MEDIA_IP_RE", "203\\.0\\.113\\.[123]".to_string()),
                ("AUDIO_PORT_RE", "[0-9]+".to_string()),
                ("CALL_MS", "1000".to_string()),
            ];
            render_vars(name, &vars).unwrap();
        }
    }

    #[test]
    fn sdp_keeps_candidates_per_stream() {
        let sdp = Sdp::parse(
            "v=0\nc=IN IP4 203.0.113.1\nm=audio 40000 RTP/AVP 8\na=candidate:R17100cb 1 UDP 16777215 203.0.113.1 40000 typ relay\na=candidate:1 1 UDP 2130706431 192.168.1.10 6000 typ host\n",
        );
        let c = &sdp.stream("audio").unwrap().candidates;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0], "candidate:R17100cb 1 UDP 16777215 203.0.113.1 40000 typ relay");
    }
}
