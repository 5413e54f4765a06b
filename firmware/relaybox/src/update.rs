//! `relaybox update ...` on the box: installs a signed bundle (a file, or an
//! `http://` URL downloaded first) into the slot that is not running,
//! reports the slots, marks the running slot good, the boot check init runs
//! first at every boot (a Raspberry Pi counts a try of a slot on trial, or
//! goes back), the health check it runs after every boot of a slot on
//! trial, and the Raspberry Pi's reboot with the firmware's tryboot flag.
//! The slot work itself (checks, writing, boot entries, the decisions) is
//! `relaybox-update`'s; this module adds the download, the health probes
//! and the reboots. Progress goes to standard output as
//! `relaybox-update: ...` lines (the box's console).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use relaybox_config::Config;
use relaybox_update::efi::MarkGood;
use relaybox_update::{InstallError, Progress, SlotState, Updater};

#[derive(clap::Subcommand)]
pub enum UpdateAction {
    /// Show the running slot and the other one, their versions and the last update.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle (a file or an http:// URL) whole — signature, board,
    /// version, every file — then write it into the slot that is not running
    /// and arm it for the boot loader: it boots next.
    Install {
        /// A bundle file or an http:// URL.
        source: String,
        /// Install a version that is not newer than the running one.
        #[arg(long)]
        force: bool,
        /// Reboot once it is armed.
        #[arg(long)]
        reboot: bool,
    },
    /// Check a bundle as `install` does, without writing anything.
    Check {
        source: String,
        #[arg(long)]
        force: bool,
    },
    /// Mark the running slot good: the box keeps booting it.
    MarkGood,
    /// At every boot, init's first step once the boot partition is mounted
    /// (before the services): on a Raspberry Pi whose new slot is counted
    /// (PI_TRY=counted), a boot of it takes one of its tries, and a boot of
    /// it with none left points autoboot.txt back at the other slot and
    /// reboots at once; a tryboot counts its one try. Elsewhere nothing.
    BootCheck {
        /// Report what a boot would do without rebooting (the record and
        /// autoboot.txt are written all the same).
        #[arg(long)]
        no_reboot: bool,
    },
    /// Run by the box's reboot command (/usr/sbin/relaybox-reboot) before
    /// `reboot`: on a Raspberry Pi with PI_TRY=tryboot whose other slot is
    /// installed and not tried yet, asks the shutdown (rcK) to end with the
    /// firmware's tryboot flag, which boots that slot once. Otherwise nothing.
    PrepareReboot,
    /// rcK's last step: when prepare-reboot asked for it, reboot at once with
    /// the tryboot flag (reboot(2) with "0 tryboot", which the Raspberry Pi
    /// kernel passes to the firmware) instead of init's plain reboot.
    /// Otherwise nothing.
    TrybootReboot,
    /// On a slot on trial: wait until the box is healthy (the relay answers
    /// on its control socket, is connected to a dispatcher when dispatchers
    /// are set, the web page accepts connections with --web), then mark it
    /// good; reboot when it is not within [Update] health_timeout, so that
    /// the boot loader tries it again or goes back to the other slot. On a
    /// good slot: nothing to do. Init runs it at every boot.
    Health {
        /// Also require the web page.
        #[arg(long)]
        web: bool,
        /// Report an unhealthy slot without rebooting.
        #[arg(long)]
        no_reboot: bool,
    },
}

fn say(line: impl std::fmt::Display) {
    println!("relaybox-update: {line}");
    let _ = std::io::stdout().flush();
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// A bundle from a file, or downloaded from an http:// URL into `work_dir`.
fn fetch(source: &str, config: &Config) -> anyhow::Result<PathBuf> {
    if source.starts_with("https://") {
        bail!(
            "https:// is not supported: serve bundles over http:// (the signature, not the transport, makes a bundle \
             trusted) or download it and install the file"
        );
    }
    if !source.starts_with("http://") {
        return Ok(PathBuf::from(source));
    }
    let u = &config.update;
    std::fs::create_dir_all(&u.work_dir).with_context(|| format!("creating {}", u.work_dir.display()))?;
    let out = u.work_dir.join("download.bundle");
    say(format!("downloading {source}"));
    let size = download_within(source, &out, u.max_bundle_size, u.download_timeout)?;
    say(format!("downloaded {} to {}", mib(size), out.display()));
    Ok(out)
}

/// [`download`] bounded by `timeout`; whatever went wrong (too big, too
/// slow, cut off), no partial file is left in `work_dir` (a RAM disk on the
/// box).
fn download_within(url: &str, out: &Path, limit: u64, timeout: std::time::Duration) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        tokio::time::timeout(timeout, download(url, out, limit))
            .await
            .map_err(|_| anyhow!("the download took longer than [Update] download_timeout ({timeout:?})"))?
    });
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

async fn download(url: &str, out: &Path, limit: u64) -> anyhow::Result<u64> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    let host = uri.host().ok_or_else(|| anyhow!("{url}: no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header(hyper::header::USER_AGENT, concat!("relaybox/", env!("CARGO_PKG_VERSION")))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("{url}: the server answered {}", response.status());
    }
    let mut file = tokio::fs::File::create(out).await.with_context(|| format!("creating {}", out.display()))?;
    let mut body = response.into_body();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            size += data.len() as u64;
            if size > limit {
                bail!("{url}: larger than [Update] max_bundle_size ({limit} bytes)");
            }
            file.write_all(&data).await?;
        }
    }
    file.flush().await?;
    Ok(size)
}

fn updater(config: &Config) -> anyhow::Result<Updater> {
    Updater::load(&config.update).context("this box's update settings")
}

fn state_words(state: &SlotState) -> String {
    match state {
        SlotState::Good => "good".into(),
        SlotState::Trial { left, done: 0 } => format!("installed, boots next ({left} tries)"),
        SlotState::Trial { left, done } => format!("on trial (tried {done}, {left} left)"),
        SlotState::Failed { tries: 0 } => "not tried (installed, then the box booted this slot again)".into(),
        SlotState::Failed { tries } => format!("failed (tried {tries} times, never healthy)"),
        SlotState::Empty => "empty".into(),
    }
}

pub fn run(config: &Config, action: UpdateAction) -> anyhow::Result<()> {
    match action {
        UpdateAction::Status { json } => {
            let u = updater(config)?;
            let status = u.status()?;
            if json {
                let mut v = serde_json::to_value(&status)?;
                v["last_update"] = serde_json::json!(status.last_update());
                println!("{v}");
            } else {
                println!("board        {}", status.board);
                for (name, r) in [("running", &status.running), ("other", &status.other)] {
                    println!(
                        "{name:<12} slot {}, version {}: {}",
                        r.slot,
                        r.version.as_deref().unwrap_or("-"),
                        state_words(&r.state)
                    );
                }
                println!("version      {} (running)", status.running_version);
                if let Some(line) = status.last_update() {
                    println!("last update  {line}");
                }
            }
            Ok(())
        }
        UpdateAction::Check { source, force } => {
            let u = updater(config)?;
            let path = fetch(&source, config)?;
            let checked = relaybox_update::install::check(&path, &u.expect(force))
                .map_err(|e| anyhow!("{source} refused: {e}"))?;
            say(format!(
                "{source}: version {} for {}, signed with key {}, every file matches the manifest",
                checked.manifest.version,
                checked.manifest.board,
                u.key.fingerprint()
            ));
            Ok(())
        }
        UpdateAction::Install { source, force, reboot } => {
            let u = updater(config)?;
            let _lock = u.lock()?;
            let path = fetch(&source, config)?;
            let mut wrote = false;
            let result = u.install(&path, force, &mut |p| {
                wrote |= matches!(p, Progress::Cleared { .. });
                say(&p);
            });
            match result {
                Ok(_) => {}
                Err(InstallError::Bundle(e)) => bail!("{source} refused: {e}; nothing was written"),
                Err(InstallError::Slot(e)) => bail!("not installed: {e}; nothing was written"),
                Err(e) if !wrote => bail!("not installed: {e}; nothing was written"),
                Err(e) => bail!("install failed: {e}; the other slot is not bootable, this one keeps running"),
            }
            if reboot {
                say("rebooting to try it");
                reboot_now(config)?;
            }
            Ok(())
        }
        UpdateAction::MarkGood => {
            let u = updater(config)?;
            let slot = u.running.clone()?.slot();
            match u.mark_good()? {
                MarkGood::AlreadyGood => say(format!("slot {slot} is already the good slot")),
                MarkGood::Rename { .. } => say(format!("slot {slot} ({}) marked good", u.release.version)),
            }
            Ok(())
        }
        UpdateAction::Health { web, no_reboot } => health(config, web, no_reboot),
        UpdateAction::BootCheck { no_reboot } => boot_check(config, no_reboot),
        UpdateAction::PrepareReboot => {
            let marker = Path::new(TRYBOOT_MARKER);
            let _ = std::fs::remove_file(marker);
            let Some(slot) = updater(config).ok().and_then(|u| u.tryboot_waiting()) else {
                return Ok(());
            };
            std::fs::write(marker, slot.letter()).with_context(|| format!("writing {TRYBOOT_MARKER}"))?;
            say(format!("slot {slot} waits for a try: this reboot sets the firmware's tryboot flag"));
            Ok(())
        }
        UpdateAction::TrybootReboot => {
            if !Path::new(TRYBOOT_MARKER).exists() {
                return Ok(());
            }
            say("rebooting with the firmware's tryboot flag (\"0 tryboot\")");
            rustix::fs::sync();
            reboot_with_argument(TRYBOOT_ARGUMENT)
                .with_context(|| "reboot(2) with \"0 tryboot\" (init reboots without the flag)".to_string())
        }
    }
}

/// What `reboot "0 tryboot"` passes: the partition (0, the default) and the
/// flag the Raspberry Pi kernel's firmware driver hands to the firmware
/// (RPI_FIRMWARE_SET_REBOOT_FLAGS). A mainline kernel ignores it.
const TRYBOOT_ARGUMENT: &str = "0 tryboot";

/// Left (in RAM) by prepare-reboot for rcK's tryboot-reboot: a reboot (not a
/// power-off) of a box whose other slot waits for a tryboot. A fixed path:
/// rcK runs once /config, and with it the settings, is unmounted.
const TRYBOOT_MARKER: &str = "/run/relaybox/tryboot";

/// reboot(2) with LINUX_REBOOT_CMD_RESTART2 and an argument, which
/// rustix's safe `reboot` does not offer. Returns only on failure.
fn reboot_with_argument(argument: &str) -> std::io::Result<()> {
    let arg = std::ffi::CString::new(argument).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: reboot(2) reads the NUL-terminated string `arg` points to, which
    // lives until the call returns; the other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_RESTART2,
            arg.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// At every boot, before the services: count a try of a slot on trial, or
/// go back to the other slot and reboot at once. Never fatal for the boot:
/// anything that goes wrong is reported and the boot goes on.
fn boot_check(config: &Config, no_reboot: bool) -> anyhow::Result<()> {
    use relaybox_update::BootStep;
    let u = updater(config)?;
    let slot = match &u.running {
        Ok(r) => r.slot(),
        Err(_) => return Ok(()),
    };
    let check = u.boot_check()?;
    match &check.step {
        BootStep::Nothing => {}
        BootStep::Count(t) => match t.counted {
            Some(c) => say(format!(
                "slot {slot} ({}) is on trial: boot {} of it, {} more allowed before the box goes back to slot {}",
                u.release.version, t.tried, c.left, c.fallback
            )),
            None => say(format!("slot {slot} ({}) is on trial: its one try (tryboot)", u.release.version)),
        },
        BootStep::RollBack { to, why, .. } => {
            say(format!("{why}: autoboot.txt now boots slot {to} again"));
        }
        BootStep::TrialOver(t) => say(format!(
            "slot {slot} runs and autoboot.txt boots it: the trial of slot {} ({}) is over, it is not tried again",
            t.slot, t.version
        )),
        BootStep::Keep { why } => say(format!("WARNING: {why}: slot {slot} is kept")),
        BootStep::SetAside { why } => say(format!(
            "WARNING: the trial record cannot be read ({why}); moved aside ({}), slot {slot} goes on",
            relaybox_update::pi::TRIAL_SET_ASIDE
        )),
    }
    if check.reboot {
        if no_reboot {
            say("not rebooting (--no-reboot)");
            return Ok(());
        }
        say("rebooting now");
        rustix::fs::sync();
        // Init has started nothing yet: a reboot without its shutdown.
        rustix::system::reboot(rustix::system::RebootCommand::Restart).context("reboot(2)")?;
    }
    Ok(())
}

fn reboot_now(config: &Config) -> anyhow::Result<()> {
    let command = &config.update.reboot_command;
    let status =
        std::process::Command::new(command).status().with_context(|| format!("running {}", command.display()))?;
    if !status.success() {
        bail!("{} failed: {status}", command.display());
    }
    Ok(())
}

/// What is wrong with the box now (empty: healthy).
fn problems(config: &Config, web: bool) -> Vec<String> {
    let mut out = Vec::new();
    let socket = &config.relay.control_socket;
    match control_query(socket, "metrics") {
        Ok(metrics) => {
            let links = metrics["links"].as_u64().unwrap_or(0);
            if !config.relay.dispatchers.is_empty() && links == 0 {
                out.push("the relay is not connected to any dispatcher".to_string());
            }
        }
        Err(e) => out.push(format!("the relay does not answer on {} ({e})", socket.display())),
    }
    if web {
        let listen = config.web.listen;
        let ip = if listen.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { listen.ip() };
        let addr = SocketAddr::new(ip, listen.port());
        if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            out.push(format!("the web page does not accept connections on {addr} ({e})"));
        }
    }
    out
}

/// One command on the relay's control socket; its JSON answer.
fn control_query(socket: &Path, command: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead, BufReader, Read};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new((&stream).take(4 << 20)).read_line(&mut line)?;
    serde_json::from_str(line.trim()).map_err(|_| anyhow!("answered {:?}", line.trim()))
}

fn health(config: &Config, web: bool, no_reboot: bool) -> anyhow::Result<()> {
    let u = updater(config)?;
    let slot = match &u.running {
        Ok(r) => r.slot(),
        Err(e) => {
            say(format!("no A/B slots here ({e}): nothing to check"));
            return Ok(());
        }
    };
    let version = &u.release.version;
    if !u.on_trial()? {
        say(format!("slot {slot} ({version}) is the good slot"));
        return Ok(());
    }
    let timeout = config.update.health_timeout;
    say(format!("slot {slot} ({version}) is on trial: checking the box's health for up to {} s", timeout.as_secs()));
    let until = Instant::now() + timeout;
    loop {
        let wrong = problems(config, web);
        if wrong.is_empty() {
            u.mark_good()?;
            say(format!("slot {slot} ({version}) is healthy: marked good"));
            return Ok(());
        }
        if Instant::now() >= until {
            say(format!("slot {slot} ({version}) is not healthy after {} s: {}", timeout.as_secs(), wrong.join("; ")));
            if no_reboot {
                bail!("slot {slot} is not healthy");
            }
            say("rebooting: the boot loader tries the slot again or goes back to the other one");
            reboot_now(config)?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// A server that answers one request with `head` and then `body_chunks`
    /// chunks of 64 KiB, `pause` apart.
    fn server(head: &'static str, body_chunks: usize, pause: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/bundle", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(head.as_bytes());
            for _ in 0..body_chunks {
                if conn.write_all(&[7u8; 65536]).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        url
    }

    #[test]
    fn a_hostile_server_gets_no_more_than_the_limits_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("download.bundle");
        let minute = Duration::from_secs(60);

        // An endless body: cut off at max_bundle_size.
        let url = server("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", 1000, Duration::ZERO);
        let e = download_within(&url, &out, 1 << 20, minute).unwrap_err();
        assert!(e.to_string().contains("larger than [Update] max_bundle_size"), "{e:#}");
        assert!(!out.exists(), "a refused download is not kept");

        // A body that trickles: cut off at download_timeout.
        let url = server("HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n", 100, Duration::from_millis(200));
        let started = Instant::now();
        let e = download_within(&url, &out, 1 << 30, Duration::from_millis(500)).unwrap_err();
        assert!(e.to_string().contains("download_timeout"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!out.exists(), "a download that took too long is not kept");

        // A good one is kept whole.
        let url = server("HTTP/1.1 200 OK\r\nContent-Length: 131072\r\n\r\n", 2, Duration::ZERO);
        assert_eq!(download_within(&url, &out, 1 << 20, minute).unwrap(), 131072);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 131072);
    }
}
