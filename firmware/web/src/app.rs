//! The page's shared state, [`App`]: where the configuration file is, the
//! settings the page started with, login sessions, the login limiter and
//! the password checker,
//! the bandwidth history, the firmware install job; and what the accept loop puts on each request
//! ([`ClientIp`]); the reboot the System and Backup pages ask for ([`reboot_soon`]). Pages and extractors read it; it imports none of them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use relaybox_config::{Config, WebConfig};

use crate::auth::{Checker, Limiter, LoginStats, Sessions};
use crate::firmware::Job;

/// The client's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// One bandwidth sample for the status chart.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub unix: u64,
    pub bps: u64,
}

pub struct App {
    pub config_path: PathBuf,
    pub config_dir: PathBuf,
    /// The configuration as it was when the page started (its own settings,
    /// certs_path). Relay settings are always read from the file.
    pub startup: Config,
    pub web: WebConfig,
    pub sessions: Sessions,
    pub limiter: Limiter,
    /// The password checks: `[Web] max_parallel_logins` threads behind a
    /// queue of `login_queue`.
    pub checker: Checker,
    pub login_stats: Arc<LoginStats>,
    /// The last hour of relayed bandwidth, oldest first.
    pub history: Mutex<VecDeque<Sample>>,
    /// Called after a certificate upload so HTTPS picks it up.
    pub reload_tls: Box<dyn Fn() + Send + Sync>,
    /// The Update page's install (one at a time).
    pub update_job: Mutex<Job>,
}

impl App {
    /// The configuration file as it is now, or the start-up one when it does
    /// not parse (the page must keep working to fix it).
    pub fn current_config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|_| self.startup.clone())
    }

    pub fn control_socket(&self) -> PathBuf {
        self.current_config().relay.control_socket
    }

    pub fn certs_path(&self) -> PathBuf {
        self.startup.tls.certs_path.clone()
    }
}

pub type State = Arc<App>;

/// Whether `ip` is on the box's own side: loopback, RFC 1918, CGNAT,
/// link-local or IPv6 unique-local.
pub fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_lan(IpAddr::V4(v4));
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Runs the reboot command half a second from now (so that the page's
/// answer gets out first); a command that fails is logged.
pub fn reboot_soon(command: std::path::PathBuf) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let shown = command.display().to_string();
        match tokio::task::spawn_blocking(move || std::process::Command::new(&command).status()).await {
            Ok(Ok(status)) if status.success() => tracing::info!(command = %shown, "web: reboot command done"),
            Ok(Ok(status)) => tracing::error!(command = %shown, "web: reboot command failed: {status}"),
            Ok(Err(e)) => tracing::error!(command = %shown, "web: cannot run the reboot command: {e}"),
            Err(e) => tracing::error!(command = %shown, "web: reboot task: {e}"),
        }
    });
}
