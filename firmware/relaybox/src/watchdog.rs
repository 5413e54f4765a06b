//! `relaybox watchdog`: feeds the box's hardware watchdog (`[Watchdog]
//! device`) only while the relay is healthy, i.e. answers `summary` on its
//! control socket within `health_timeout`. A relay that stays unhealthy for
//! longer than `grace` (after it was healthy once since the feeder started)
//! is no longer fed for, and the hardware resets the box `timeout` later.
//! SIGTERM (a clean shutdown) disarms the device with the magic close.
//!
//! The decision is [`Feeder`], a plain state machine with time as an
//! argument; the loop around it does the I/O.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use relaybox_config::Config;

/// What to do at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Feed the device.
    Feed,
    /// Feed it, though the relay has been unhealthy this long (within grace).
    FeedUnhealthy(Duration),
    /// Do not feed: the relay has been unhealthy this long, beyond grace.
    Starve(Duration),
}

/// The feeder's memory: whether the relay was ever healthy, and since when
/// it is not.
#[derive(Debug, Clone)]
pub struct Feeder {
    grace: Duration,
    armed: bool,
    unhealthy_since: Option<Instant>,
}

impl Feeder {
    pub fn new(grace: Duration) -> Self {
        Feeder { grace, armed: false, unhealthy_since: None }
    }

    /// One check's result at `now`.
    pub fn decide(&mut self, healthy: bool, now: Instant) -> Decision {
        if healthy {
            self.armed = true;
            self.unhealthy_since = None;
            return Decision::Feed;
        }
        if !self.armed {
            // Never healthy since the start: a relay that cannot start does
            // not reset the box in a loop.
            return Decision::Feed;
        }
        let since = *self.unhealthy_since.get_or_insert(now);
        let for_how_long = now.saturating_duration_since(since);
        if for_how_long > self.grace {
            Decision::Starve(for_how_long)
        } else {
            Decision::FeedUnhealthy(for_how_long)
        }
    }
}

/// Whether the relay answers `summary` with a JSON object in time.
pub fn relay_healthy(socket: &Path, timeout: Duration) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.write_all(b"summary\r\n").map_err(|e| format!("sending summary: {e}"))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, 1 << 20))
        .read_line(&mut line)
        .map_err(|e| format!("no answer within {} s: {e}", timeout.as_secs()))?;
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(v) if v.is_object() => Ok(()),
        _ => Err(format!("unexpected answer {:?}", line.trim_end())),
    }
}

/// The watchdog device, open; feeding it is writing a byte.
struct Device {
    file: std::fs::File,
}

// linux/watchdog.h
const WATCHDOG_IOCTL_BASE: u8 = b'W';
const WDIOC_SETTIMEOUT: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<i32>(WATCHDOG_IOCTL_BASE, 6);
const WDIOC_GETTIMEOUT: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<i32>(WATCHDOG_IOCTL_BASE, 7);

impl Device {
    fn open(path: &Path) -> anyhow::Result<Device> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening the watchdog {}", path.display()))?;
        Ok(Device { file })
    }

    /// Sets the hardware timeout; returns the one the driver took (drivers
    /// round, and some have a maximum: the Pi's is 15 s).
    fn set_timeout(&self, secs: u32) -> std::io::Result<u32> {
        let mut value = secs as i32;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the
        // pointer, which `Updater` takes from a live `&mut i32` of that size.
        let set = unsafe {
            rustix::ioctl::ioctl(&self.file, rustix::ioctl::Updater::<WDIOC_SETTIMEOUT, i32>::new(&mut value))
        };
        if set.is_err() {
            let mut current = 0i32;
            // SAFETY: as above; WDIOC_GETTIMEOUT writes one int.
            unsafe {
                rustix::ioctl::ioctl(&self.file, rustix::ioctl::Updater::<WDIOC_GETTIMEOUT, i32>::new(&mut current))
            }?;
            return Ok(current.max(0) as u32);
        }
        Ok(value.max(0) as u32)
    }

    fn feed(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }

    /// The magic close: the driver stops the timer (unless built with
    /// nowayout), so a clean shutdown is not reset half-way.
    fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}

/// `relaybox watchdog`: runs until SIGTERM/SIGINT. With `always`, the relay
/// is not checked (a box that runs no relay): the device is fed as long as
/// this process runs.
pub async fn run(config: Config, always: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let wd = config.watchdog.clone();
    let socket = config.relay.control_socket.clone();
    let mut device = Device::open(&wd.device)?;
    let wanted = wd.timeout.as_secs() as u32;
    let timeout = match device.set_timeout(wanted) {
        Ok(t) if t == wanted => t,
        Ok(t) => {
            tracing::warn!(device = %wd.device.display(), "watchdog: the driver keeps a timeout of {t} s, not {wanted} s");
            t
        }
        Err(e) => {
            tracing::warn!(device = %wd.device.display(), "watchdog: cannot set the timeout ({e}); using the driver's");
            0
        }
    };
    if timeout != 0 && wd.interval.as_secs() as u32 >= timeout {
        tracing::warn!(
            "watchdog: [Watchdog] interval {} s is not below the driver's timeout {timeout} s",
            wd.interval.as_secs()
        );
    }
    device.feed().context("feeding the watchdog")?;
    if always {
        tracing::info!(device = %wd.device.display(), timeout, "watchdog: feeding every {} s while this process runs", wd.interval.as_secs());
    } else {
        tracing::info!(
            device = %wd.device.display(),
            timeout,
            socket = %socket.display(),
            "watchdog: feeding every {} s while the relay answers; it may be unhealthy for {} s",
            wd.interval.as_secs(),
            wd.grace.as_secs()
        );
    }
    let mut feeder = Feeder::new(wd.grace);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(wd.interval);
    let mut last_error = String::new();
    let mut starving = false;
    let mut armed = always;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {}
        }
        let health = if always {
            Ok(())
        } else {
            let (socket, limit) = (socket.clone(), wd.health_timeout);
            tokio::task::spawn_blocking(move || relay_healthy(&socket, limit))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        };
        let decision = feeder.decide(health.is_ok(), Instant::now());
        match (&health, decision) {
            (Ok(()), _) => {
                if !armed {
                    tracing::info!(
                        "watchdog: the relay answers; from now on the box resets when it stops answering for {} s",
                        wd.grace.as_secs()
                    );
                    armed = true;
                } else if !last_error.is_empty() || starving {
                    tracing::info!("watchdog: the relay answers again");
                }
                last_error.clear();
                starving = false;
            }
            (Err(e), Decision::Starve(d)) => {
                if !starving {
                    tracing::error!(
                        "watchdog: the relay has been unhealthy for {} s ({e}): no longer feeding {}; the box resets within {} s",
                        d.as_secs(),
                        wd.device.display(),
                        timeout
                    );
                }
                starving = true;
            }
            (Err(e), _) => {
                if *e != last_error {
                    tracing::warn!(
                        "watchdog: the relay does not answer ({e}); the box resets if that lasts {} s",
                        wd.grace.as_secs()
                    );
                    last_error = e.clone();
                }
            }
        }
        if !matches!(decision, Decision::Starve(_)) {
            if let Err(e) = device.feed() {
                tracing::error!("watchdog: cannot feed {}: {e}", wd.device.display());
            }
        }
    }
    tracing::info!("watchdog: stopping; disarming {}", wd.device.display());
    device.disarm();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_that_was_healthy_is_given_grace_then_starved() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut f = Feeder::new(Duration::from_secs(60));
        assert_eq!(f.decide(true, s(0)), Decision::Feed);
        assert_eq!(f.decide(false, s(5)), Decision::FeedUnhealthy(Duration::ZERO));
        assert_eq!(f.decide(false, s(65)), Decision::FeedUnhealthy(Duration::from_secs(60)));
        assert_eq!(f.decide(false, s(66)), Decision::Starve(Duration::from_secs(61)));
        // Back before the reset: fed again, and a new outage starts a new grace.
        assert_eq!(f.decide(true, s(67)), Decision::Feed);
        assert_eq!(f.decide(false, s(70)), Decision::FeedUnhealthy(Duration::ZERO));
        assert_eq!(f.decide(false, s(100)), Decision::FeedUnhealthy(Duration::from_secs(30)));
    }

    #[test]
    fn a_relay_that_never_started_does_not_reset_the_box() {
        let t0 = Instant::now();
        let mut f = Feeder::new(Duration::from_secs(1));
        for n in 0..1000 {
            assert_eq!(f.decide(false, t0 + Duration::from_secs(n)), Decision::Feed);
        }
    }

    #[test]
    fn health_needs_a_json_answer_on_the_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        assert!(relay_healthy(&path, Duration::from_secs(1)).unwrap_err().contains("relay.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let answer = |text: &'static str| {
            let l = listener.try_clone().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
                assert_eq!(line, "summary\r\n");
                s.write_all(text.as_bytes()).unwrap();
            })
        };
        let t = answer("{\"ip\":\"192.0.2.1\"}\n");
        assert_eq!(relay_healthy(&path, Duration::from_secs(5)), Ok(()));
        t.join().unwrap();
        let t = answer("error\n");
        assert!(relay_healthy(&path, Duration::from_secs(5)).is_err());
        t.join().unwrap();
        // A relay that accepts but never answers (hung) is unhealthy after the timeout.
        let l = listener.try_clone().unwrap();
        let hung = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        assert!(relay_healthy(&path, Duration::from_secs(1)).unwrap_err().contains("no answer"));
        hung.join().unwrap();
    }
}
