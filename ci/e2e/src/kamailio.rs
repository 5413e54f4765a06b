//! Kamailio as the SIP proxy of the rig: `kamailio/kamailio.cfg` rendered
//! into the test's directory and run in the foreground in `srv`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::process::{CommandLine, Process};
use crate::topology::SRV_IP;
use crate::{find_program, render_template};

/// Where Debian and upstream builds put Kamailio's modules.
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
];

/// How the proxy is set up for one test.
#[derive(Debug, Clone)]
pub struct KamailioOptions {
    /// The dispatcher's UNIX socket (`mediaproxy_socket`). It need not exist.
    pub mediaproxy_socket: PathBuf,
    /// `mediaproxy_timeout` in milliseconds (the module's default is 500).
    pub mediaproxy_timeout_ms: u32,
    /// Kamailio's `debug` level (2 = notices and errors).
    pub debug: i32,
    /// The module's `ice_candidate`: `none`, `low-priority` or `high-priority`.
    pub ice_candidate: String,
    /// true: `engage_media_proxy()` with the dialog module (the module sends
    /// a `dialog_id`); false: `use_media_proxy()` on each INVITE and answer
    /// and `end_media_session()` on BYE, without any dialog (empty `dialog_id`).
    pub dialog: bool,
}

impl KamailioOptions {
    pub fn new(mediaproxy_socket: impl Into<PathBuf>) -> KamailioOptions {
        KamailioOptions {
            mediaproxy_socket: mediaproxy_socket.into(),
            mediaproxy_timeout_ms: 500,
            debug: 2,
            ice_candidate: "none".into(),
            dialog: true,
        }
    }

    /// `modparam("mediaproxy", "ice_candidate", value)`.
    pub fn ice_candidate(mut self, value: &str) -> KamailioOptions {
        self.ice_candidate = value.into();
        self
    }

    /// Media through `use_media_proxy()` without the dialog module.
    pub fn without_dialog(mut self) -> KamailioOptions {
        self.dialog = false;
        self
    }
}

/// A running Kamailio. Stopped on drop.
#[derive(Debug)]
pub struct Kamailio {
    pub process: Process,
    pub config: PathBuf,
}

/// The checked-in config template.
pub fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kamailio").join("kamailio.cfg")
}

/// The module directory: `$KAMAILIO_MODULES`, else the first known
/// directory that holds `mediaproxy.so`.
pub fn module_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAMAILIO_MODULES") {
        return Ok(dir.into());
    }
    MODULE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("mediaproxy.so").exists())
        .context("Kamailio's mediaproxy.so not found (apt-get install kamailio, or set KAMAILIO_MODULES)")
}

/// The config for one test, with every placeholder filled in.
pub fn render(opts: &KamailioOptions, run_dir: &Path, module_dir: &Path) -> Result<String> {
    let template =
        std::fs::read_to_string(template_path()).with_context(|| format!("reading {}", template_path().display()))?;
    render_template(
        &template,
        &[
            ("DEBUG_LEVEL", opts.debug.to_string()),
            ("SIP_IP", SRV_IP.to_string()),
            ("SIP_PORT", "5060".into()),
            ("RUN_DIR", run_dir.display().to_string()),
            ("MODULE_PATH", module_dir.display().to_string()),
            ("MEDIAPROXY_SOCKET", opts.mediaproxy_socket.display().to_string()),
            ("MEDIAPROXY_TIMEOUT_MS", opts.mediaproxy_timeout_ms.to_string()),
            ("ICE_CANDIDATE", opts.ice_candidate.clone()),
            ("DEFINES", if opts.dialog { String::new() } else { "#!define WITHOUT_DIALOG".into() }),
        ],
    )
}

impl Kamailio {
    /// Renders the config into `dir`, checks it (`kamailio -c`), starts
    /// Kamailio in `srv` and waits until a worker is up. Start the dispatcher
    /// first: each Kamailio worker connects to the dispatcher socket once at
    /// start-up and after a failure waits 10 s before trying again.
    pub fn start(srv: &Netns, dir: &Path, opts: &KamailioOptions) -> Result<Kamailio> {
        let run_dir = dir.join("kamailio");
        std::fs::create_dir_all(&run_dir)?;
        let config = run_dir.join("kamailio.cfg");
        std::fs::write(&config, render(opts, &run_dir, &module_dir()?)?)?;
        let kamailio = find_program("kamailio", "KAMAILIO")?;

        let check = std::process::Command::new(&kamailio).arg("-c").arg("-f").arg(&config).output()?;
        if !check.status.success() {
            bail!(
                "kamailio -c rejects {}:\n{}",
                config.display(),
                crate::process::tail(&String::from_utf8_lossy(&check.stderr), 20)
            );
        }

        let cmd = CommandLine::new(kamailio)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
            .arg(&config)
            .arg("-P")
            .arg(run_dir.join("kamailio.pid"))
            .cwd(&run_dir);
        let mut process = Process::spawn("kamailio", Some(srv), &cmd, &dir.join("kamailio.log"))?;
        process.wait_for_log("E2E ready", Duration::from_secs(15))?;
        Ok(Kamailio { process, config })
    }

    /// Waits until `user` has registered (the proxy logs each saved REGISTER).
    pub fn wait_for_registration(&mut self, offset: u64, user: &str, timeout: Duration) -> Result<String> {
        self.process.wait_for_log_after(offset, &format!("E2E REGISTER {} from", regex::escape(user)), timeout)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
