//! `relaybox clock` (this module is `ntp`; `clock` is the relay's
//! monotonic session clock): keeps the box's clock right over SNTP. A board without
//! a real-time clock (the Raspberry Pi) starts in 1970, and TLS then
//! refuses every certificate as not yet valid; a PC's clock drifts. The
//! packet format and arithmetic are `relaybox_proto::sntp`'s; this module
//! resolves the servers, asks them, steps the clock (`clock_settime`) and
//! remembers the last good time in a file, restored at the next start
//! before the network is up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use relaybox_proto::sntp::{self, Reply};
use tokio::net::UdpSocket;

/// `relaybox clock` settings; every limit has a default.
#[derive(clap::Args, Debug)]
pub struct ClockArgs {
    /// An NTP server, `host` or `host:port` (repeat for more; all are asked
    /// at once, the first valid answer counts).
    #[arg(long = "server", required_unless_present = "servers_from")]
    pub servers: Vec<String>,
    /// Also the servers in `NTP_SERVERS` of this shell-style file (the box's
    /// system.conf), read at each start: the web page changes the file and
    /// restarts the daemon. Without any server the daemon waits idle.
    #[arg(long)]
    pub servers_from: Option<PathBuf>,
    /// Seconds between queries once the clock is right.
    #[arg(long, default_value_t = 1024)]
    pub interval: u64,
    /// Seconds between attempts while no server has answered (doubling up
    /// to `interval`).
    #[arg(long, default_value_t = 8)]
    pub retry: u64,
    /// Milliseconds to wait for one server's answer.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Offsets smaller than this (milliseconds) leave the clock alone.
    #[arg(long, default_value_t = 500)]
    pub step_ms: u64,
    /// File keeping the last good time (Unix seconds), read at start.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Ask once, print the offset, set nothing, exit (0: a server answered).
    #[arg(long)]
    pub query: bool,
    /// Set the clock once and exit (0: a server answered), as at boot
    /// before the services start; without it, keep it right until stopped.
    #[arg(long)]
    pub once: bool,
}

fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Sets the realtime clock to `nanos` since the Unix epoch.
fn set_clock(nanos: i128) -> std::io::Result<()> {
    let ts = rustix::time::Timespec {
        tv_sec: nanos.div_euclid(1_000_000_000) as i64,
        tv_nsec: nanos.rem_euclid(1_000_000_000) as _,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts).map_err(std::io::Error::from)
}

fn seconds(nanos: i128) -> String {
    format!("{:.3} s", nanos as f64 / 1e9)
}

/// Before the network: a clock behind the last time we knew is wrong
/// (no RTC); jump to that time so certificates and logs are near right.
fn restore_from_state(path: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let Ok(saved) = text.trim().parse::<i64>() else {
        tracing::warn!(file = %path.display(), "clock state is not a number of seconds; ignored");
        return;
    };
    let saved = i128::from(saved) * 1_000_000_000;
    let now = now_nanos();
    if now < saved {
        match set_clock(saved) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "clock was {} behind the last known time; set to it", seconds(saved - now))
            }
            Err(e) => tracing::warn!("cannot set the clock to the last known time: {e}"),
        }
    }
}

/// Writes the last known time so that a power cut leaves the old file or
/// the new one, both complete: a temporary file, fsync, rename, fsync of
/// the directory (without them ext4 may keep the rename and lose the data,
/// and the next boot would find an empty file).
fn save_state(path: &std::path::Path) {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let secs = now_nanos() / 1_000_000_000;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{secs}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), "cannot save the clock state: {e}");
    }
}

/// Asks one server address; `Ok(None)` when it does not answer in time.
async fn ask(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Option<Reply>> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(addr).await?;
    let t1 = now_nanos();
    let (packet, sent) = sntp::request(t1);
    socket.send(&packet).await?;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + timeout;
    // Datagrams that are not our answer are skipped, within the deadline.
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        let t4 = now_nanos();
        match Reply::parse(&buf[..n], sent, t1, t4) {
            Ok(reply) => return Ok(Some(reply)),
            Err(e) => tracing::debug!(server = %addr, "{e}"),
        }
    }
}

/// Asks every server at once and takes the first valid answer: (name,
/// address, reply). So a server that is down, or a DNS that does not
/// answer, costs `timeout_ms` once, not once per server (at boot, before
/// the services start). A name's addresses are asked in turn.
async fn query(args: &ClockArgs) -> Option<(String, SocketAddr, Reply)> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut asking = tokio::task::JoinSet::new();
    for server in args.servers.clone() {
        asking.spawn(ask_server(server, timeout));
    }
    while let Some(done) = asking.join_next().await {
        if let Ok(Some(answer)) = done {
            return Some(answer);
        }
    }
    None
}

/// Resolves `server` and asks its addresses until one answers.
async fn ask_server(server: String, timeout: Duration) -> Option<(String, SocketAddr, Reply)> {
    let target = match relaybox_config::ntp_server_target(&server) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(server = %server, "not an NTP server name: {e}");
            return None;
        }
    };
    let addrs = match tokio::time::timeout(timeout, tokio::net::lookup_host(&target)).await {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            tracing::info!(server = %server, "cannot resolve: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(server = %server, "no DNS answer in {} ms", timeout.as_millis());
            return None;
        }
    };
    for addr in addrs {
        match ask(addr, timeout).await {
            Ok(Some(reply)) => return Some((server, addr, reply)),
            Ok(None) => tracing::info!(server = %server, address = %addr, "no answer"),
            Err(e) => tracing::info!(server = %server, address = %addr, "{e:#}"),
        }
    }
    None
}

/// One query; steps the clock when it is off by `step_ms` or more. True
/// when a server answered.
async fn sync(args: &ClockArgs) -> bool {
    let Some((server, addr, reply)) = query(args).await else { return false };
    if reply.offset.abs() >= i128::from(args.step_ms) * 1_000_000 {
        let before = now_nanos();
        match set_clock(before + reply.offset) {
            Ok(()) => tracing::info!(
                server = %server,
                address = %addr,
                stratum = reply.stratum,
                "clock stepped by {} (delay {})",
                seconds(reply.offset),
                seconds(reply.delay)
            ),
            Err(e) => tracing::error!("cannot set the clock (needs CAP_SYS_TIME): {e}"),
        }
    } else {
        tracing::debug!(server = %server, "clock within {} of the server", seconds(reply.offset.abs()));
    }
    if let Some(path) = &args.state {
        save_state(path);
    }
    true
}

/// `--server`s, then those of `--servers-from`.
fn all_servers(args: &ClockArgs) -> anyhow::Result<Vec<String>> {
    let mut servers = args.servers.clone();
    if let Some(path) = &args.servers_from {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let from_file = relaybox_config::SystemSettings::parse(&text).ntp_servers;
        tracing::info!(file = %path.display(), servers = ?from_file, "NTP servers from the file");
        servers.extend(from_file);
    }
    Ok(servers)
}

pub async fn run(mut args: ClockArgs) -> anyhow::Result<()> {
    args.servers = all_servers(&args)?;
    if args.query {
        let (server, addr, reply) = query(&args).await.context("no NTP server answered")?;
        println!(
            "{server} ({addr}): stratum {}, offset {}, delay {}",
            reply.stratum,
            seconds(reply.offset),
            seconds(reply.delay)
        );
        return Ok(());
    }
    if let Some(path) = &args.state {
        restore_from_state(path);
    }
    if args.servers.is_empty() {
        // The last known time is all there is.
        anyhow::ensure!(!args.once, "no NTP servers: NTP is off");
        tracing::info!("no NTP servers: NTP is off until restarted with some");
        std::future::pending::<()>().await;
    }
    let interval = Duration::from_secs(args.interval.max(16));
    let mut retry = Duration::from_secs(args.retry.clamp(1, args.interval.max(1)));
    loop {
        let synced = sync(&args).await;
        if args.once {
            return if synced { Ok(()) } else { anyhow::bail!("no NTP server answered: {:?}", args.servers) };
        }
        let wait = if synced {
            retry = Duration::from_secs(args.retry.max(1));
            interval
        } else {
            tracing::warn!(servers = ?args.servers, "no NTP server answered; trying again in {} s", retry.as_secs());
            let wait = retry;
            retry = (retry * 2).min(interval);
            wait
        };
        tokio::time::sleep(wait).await;
    }
}
