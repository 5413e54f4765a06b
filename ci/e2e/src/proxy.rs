//! The SIP proxy of the rig, Kamailio or OpenSIPS, each running the
//! reference configuration an operator starts from (`examples/kamailio.cfg`,
//! `examples/opensips.cfg`) in `srv`, as the unprivileged user
//! [`PROXY_USER`].
//!
//! The files are run as they are; the test's values come in from outside:
//! Kamailio's `-A NAME=value` (the file's `#!ifndef` site settings), and for
//! OpenSIPS its preprocessor option (`-p "sed -f site.sed"`), whose script
//! replaces the example's literal site values (each must be found in the
//! file, so an edit of the example that the rig no longer matches fails
//! loudly instead of running the defaults).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::find_program;
use crate::netns::Netns;
use crate::process::{CommandLine, Process};
use crate::topology::SRV_IP;

/// The system user the proxies run as (made by `ci/setup.sh`, or here).
pub const PROXY_USER: &str = "relaybox-test-proxy";

/// Where Debian and upstream builds put Kamailio's modules.
const KAMAILIO_MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
];

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Kamailio,
    OpenSips,
}

impl Proxy {
    pub const ALL: [Proxy; 2] = [Proxy::Kamailio, Proxy::OpenSips];

    pub fn name(self) -> &'static str {
        match self {
            Proxy::Kamailio => "kamailio",
            Proxy::OpenSips => "opensips",
        }
    }

    /// The reference configuration in `examples/`.
    pub fn example(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(format!("{}.cfg", self.name()))
    }

    /// The proxy's runtime directory in the test's directory `dir`.
    pub fn run_dir(self, dir: &Path) -> PathBuf {
        dir.join(self.name())
    }

    /// Its JSON-RPC datagram socket (Kamailio jsonrpcs `dgram_socket`,
    /// OpenSIPS mi_datagram): `[OpenSIPS] socket_path` of the dispatcher.
    pub fn mi_socket(self, dir: &Path) -> PathBuf {
        match self {
            Proxy::Kamailio => self.run_dir(dir).join("kamailio_rpc.sock"),
            Proxy::OpenSips => self.run_dir(dir).join("socket"),
        }
    }

    /// Its MI FIFO (Kamailio jsonrpcs `fifo_name`, OpenSIPS mi_fifo).
    pub fn mi_fifo(self, dir: &Path) -> PathBuf {
        match self {
            Proxy::Kamailio => self.run_dir(dir).join("kamailio_rpc.fifo"),
            Proxy::OpenSips => self.run_dir(dir).join("opensips_fifo"),
        }
    }

    /// For tests that need this proxy: `Some(())` when it can run; `None`
    /// after saying the test is skipped (OpenSIPS not built: `ci/opensips.sh`),
    /// unless `RELAYBOX_E2E_REQUIRE_BINARIES=1`, which makes it a failure.
    pub fn for_test(self, test: &str) -> Option<()> {
        let found = match self {
            Proxy::Kamailio => find_program("kamailio", "KAMAILIO").map(drop),
            Proxy::OpenSips => opensips_program().map(drop),
        };
        match found {
            Ok(()) => Some(()),
            Err(e) if std::env::var(crate::relaybox::REQUIRE_ENV).as_deref() != Ok("1") => {
                eprintln!("[e2e] SKIPPED {test}: {e:#}");
                None
            }
            Err(e) => panic!("{test}: {e:#}"),
        }
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The OpenSIPS built by `ci/opensips.sh` (`$OPENSIPS` overrides).
pub fn opensips_program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPENSIPS") {
        return Ok(p.into());
    }
    let p = opensips_prefix().join("sbin/opensips");
    if p.is_file() {
        Ok(p)
    } else {
        bail!("{} does not exist (run ci/opensips.sh, or set OPENSIPS)", p.display())
    }
}

/// `ci/opensips.sh`'s install prefix: `$OPENSIPS_PREFIX`, else `target/opensips/install`.
pub fn opensips_prefix() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENSIPS_PREFIX") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("opensips/install")
}

/// Kamailio's module directory: `$KAMAILIO_MODULES`, else the first known
/// directory that holds `mediaproxy.so`.
pub fn kamailio_module_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAMAILIO_MODULES") {
        return Ok(dir.into());
    }
    KAMAILIO_MODULE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("mediaproxy.so").exists())
        .context("Kamailio's mediaproxy.so not found (apt-get install kamailio, or set KAMAILIO_MODULES)")
}

/// How the proxy is set up for one test.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub proxy: Proxy,
    /// The dispatcher's UNIX socket (`mediaproxy_socket`). It need not exist.
    pub mediaproxy_socket: PathBuf,
    /// `mediaproxy_timeout` in milliseconds (the module's default is 500).
    pub mediaproxy_timeout_ms: u32,
    /// Kamailio's `debug` level (2 = notices and errors).
    pub debug: i32,
    /// The module's `ice_candidate`: `none`, `low-priority` or `high-priority`.
    pub ice_candidate: String,
    /// true: `engage_media_proxy()` with the dialog module (the module sends
    /// a `dialog_id`); false (Kamailio only): `use_media_proxy()` on each
    /// INVITE and answer and `end_media_session()` on BYE, without any
    /// dialog (empty `dialog_id`).
    pub dialog: bool,
    /// NAT keepalives every so many seconds (nat_traversal); `None`: off.
    pub keepalive: Option<u32>,
}

impl ProxyOptions {
    pub fn new(proxy: Proxy, mediaproxy_socket: impl Into<PathBuf>) -> ProxyOptions {
        ProxyOptions {
            proxy,
            mediaproxy_socket: mediaproxy_socket.into(),
            mediaproxy_timeout_ms: 500,
            debug: 2,
            ice_candidate: "none".into(),
            dialog: true,
            keepalive: Some(25),
        }
    }

    /// `modparam("mediaproxy", "ice_candidate", value)`.
    pub fn ice_candidate(mut self, value: &str) -> ProxyOptions {
        self.ice_candidate = value.into();
        self
    }

    /// Media through `use_media_proxy()` without the dialog module (Kamailio).
    pub fn without_dialog(mut self) -> ProxyOptions {
        self.dialog = false;
        self
    }

    /// NAT keepalives every `secs` seconds, or none.
    pub fn keepalive(mut self, secs: Option<u32>) -> ProxyOptions {
        self.keepalive = secs;
        self
    }
}

/// Kamailio's `-A` definitions for `opts` in the test directory `dir`
/// (see examples/kamailio.cfg).
pub fn kamailio_defines(opts: &ProxyOptions, dir: &Path, module_dir: &Path) -> Vec<String> {
    let q = |p: &Path| format!("\"{}\"", p.display());
    let run_dir = Proxy::Kamailio.run_dir(dir);
    let mut d = vec![
        format!("SIP_LISTEN=udp:{SRV_IP}:5060"),
        format!("MEDIAPROXY_SOCKET={}", q(&opts.mediaproxy_socket)),
        format!("RUN_DIR={}", q(&run_dir)),
        format!("RPC_SOCKET={}", q(&Proxy::Kamailio.mi_socket(dir))),
        format!("RPC_FIFO={}", q(&Proxy::Kamailio.mi_fifo(dir))),
        format!("KEEPALIVE_STATE={}", q(&run_dir.join("keepalive_state"))),
        format!("MEDIAPROXY_TIMEOUT={}", opts.mediaproxy_timeout_ms),
        format!("ICE_CANDIDATE=\"{}\"", opts.ice_candidate),
        format!("DEBUG_LEVEL={}", opts.debug),
        format!("MODULE_PATH={}", q(module_dir)),
    ];
    match opts.keepalive {
        Some(secs) => d.push(format!("KEEPALIVE_INTERVAL={secs}")),
        None => d.push("WITHOUT_KEEPALIVE".into()),
    }
    if !opts.dialog {
        d.push("WITHOUT_DIALOG".into());
    }
    d
}

/// The literal replacements that make examples/opensips.cfg this test's.
pub fn opensips_site(opts: &ProxyOptions, run_dir: &Path, prefix: &Path) -> Result<Vec<(String, String)>> {
    if !opts.dialog {
        bail!("examples/opensips.cfg has no variant without the dialog module");
    }
    let mut s = vec![
        (
            "mpath=\"/usr/lib/x86_64-linux-gnu/opensips/modules/\"".to_string(),
            format!("mpath=\"{}/lib64/opensips/modules/\"", prefix.display()),
        ),
        ("socket=udp:203.0.113.1:5060".into(), format!("socket=udp:{SRV_IP}:5060")),
        ("\"/run/opensips/".into(), format!("\"{}/", run_dir.display())),
        ("\"/run/mediaproxy/dispatcher.sock\"".into(), format!("\"{}\"", opts.mediaproxy_socket.display())),
        (
            "modparam(\"mediaproxy\", \"mediaproxy_timeout\", 500)".into(),
            format!("modparam(\"mediaproxy\", \"mediaproxy_timeout\", {})", opts.mediaproxy_timeout_ms),
        ),
        (
            "modparam(\"mediaproxy\", \"ice_candidate\", \"none\")".into(),
            format!("modparam(\"mediaproxy\", \"ice_candidate\", \"{}\")", opts.ice_candidate),
        ),
    ];
    match opts.keepalive {
        Some(secs) => s.push((
            "modparam(\"nat_traversal\", \"keepalive_interval\", 25)".into(),
            format!("modparam(\"nat_traversal\", \"keepalive_interval\", {secs})"),
        )),
        None => s.push(("nat_keepalive();".into(), "xlog(\"L_NOTICE\", \"keepalives off for this test\\n\");".into())),
    }
    Ok(s)
}

/// A sed script doing `site`'s literal replacements; fails when `config`
/// lacks one of the texts it replaces.
pub fn sed_script(config: &str, site: &[(String, String)]) -> Result<String> {
    let mut script = String::new();
    for (from, to) in site {
        if !config.contains(from.as_str()) {
            bail!("the example configuration no longer contains {from:?}; update ci/e2e/src/proxy.rs");
        }
        if [from, to].iter().any(|s| s.contains(['\n', '|'])) {
            bail!("replacements are single lines without `|`: {from:?} -> {to:?}");
        }
        // Basic regular expression: these are the special characters.
        let from: String =
            from.chars().map(|c| if "\\.*[]^$".contains(c) { format!("\\{c}") } else { c.to_string() }).collect();
        let to: String = to.chars().map(|c| if "\\&".contains(c) { format!("\\{c}") } else { c.to_string() }).collect();
        script.push_str(&format!("s|{from}|{to}|g\n"));
    }
    Ok(script)
}

/// A running proxy. Stopped on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    pub kind: Proxy,
    pub process: Process,
    /// The example configuration it runs.
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

/// The uid and gid of [`PROXY_USER`], made as a system user when missing.
pub fn proxy_user() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = crate::netns::run(std::process::Command::new("id").args([flag, PROXY_USER]))?;
        out.trim().parse().with_context(|| format!("id {flag} {PROXY_USER}: {out:?}"))
    };
    if id("-u").is_err() {
        // Idempotent when two tests race: useradd fails if it exists, id decides.
        let _ = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", PROXY_USER])
            .output();
    }
    Ok((id("-u")?, id("-g")?))
}

impl ProxyProcess {
    /// Checks the configuration, starts the proxy in `srv` as [`PROXY_USER`]
    /// and waits until it is up. Start the dispatcher first: each worker
    /// connects to the dispatcher socket at start and after a failure waits
    /// 10 s before trying again.
    pub fn start(srv: &Netns, dir: &Path, opts: &ProxyOptions) -> Result<ProxyProcess> {
        let run_dir = opts.proxy.run_dir(dir);
        std::fs::create_dir_all(&run_dir)?;
        let (uid, gid) = proxy_user()?;
        // The proxy's user reaches the test directory (the dispatcher's
        // socket) and owns its runtime directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&run_dir, Some(uid), Some(gid))?;
        let config = opts.proxy.example();
        let user = ["-u", PROXY_USER, "-g", PROXY_USER];
        let (program, check_args, args, ready) = match opts.proxy {
            Proxy::Kamailio => {
                let defines: Vec<String> = kamailio_defines(opts, dir, &kamailio_module_dir()?)
                    .into_iter()
                    .flat_map(|d| ["-A".to_string(), d])
                    .collect();
                let mut check = vec!["-c".to_string(), "-f".into(), config.display().to_string()];
                check.extend(defines.iter().cloned());
                let mut args: Vec<String> = ["-DD", "-E", "-m", "64", "-M", "8", "-f"].map(String::from).to_vec();
                args.push(config.display().to_string());
                args.extend(["-P".to_string(), run_dir.join("kamailio.pid").display().to_string()]);
                args.extend(defines);
                args.extend(user.map(String::from));
                (find_program("kamailio", "KAMAILIO")?, check, args, "Kamailio ready")
            }
            Proxy::OpenSips => {
                let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
                let site = opensips_site(opts, &run_dir, &opensips_prefix())?;
                let sed = run_dir.join("site.sed");
                std::fs::write(&sed, sed_script(&text, &site)?)?;
                let pp = format!("sed -f {}", sed.display());
                if sed.display().to_string().contains(char::is_whitespace) {
                    bail!("OpenSIPS splits -p on blanks, and {} has one", sed.display());
                }
                let check = vec!["-c".to_string(), "-f".into(), config.display().to_string(), "-p".into(), pp.clone()];
                let mut args: Vec<String> = ["-F", "-m", "64", "-M", "8", "-f"].map(String::from).to_vec();
                args.push(config.display().to_string());
                args.extend(["-p".to_string(), pp]);
                args.extend(["-P".to_string(), run_dir.join("opensips.pid").display().to_string()]);
                args.extend(user.map(String::from));
                (opensips_program()?, check, args, "OpenSIPS ready")
            }
        };

        let out = std::process::Command::new(&program).args(&check_args).current_dir(&run_dir).output()?;
        if !out.status.success() {
            bail!(
                "{} -c rejects {} (with this test's settings):\n{}{}",
                opts.proxy,
                config.display(),
                crate::process::tail(&String::from_utf8_lossy(&out.stdout), 10),
                crate::process::tail(&String::from_utf8_lossy(&out.stderr), 20)
            );
        }
        let cmd = CommandLine::new(program).args(args).cwd(&run_dir);
        let log = dir.join(format!("{}.log", opts.proxy.name()));
        let mut process = Process::spawn(opts.proxy.name(), Some(srv), &cmd, &log)?;
        process.wait_for_log(ready, Duration::from_secs(20))?;
        // It really runs as the unprivileged user (what a packaged proxy does).
        let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid())).unwrap_or_default();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| l.split_whitespace().filter_map(|u| u.parse().ok()).collect())
            .unwrap_or_default();
        if uids.is_empty() || uids.iter().any(|&u| u != uid) {
            bail!("{} runs with uids {uids:?}, not as {PROXY_USER} ({uid})", opts.proxy);
        }
        let proxy = ProxyProcess { kind: opts.proxy, process, config, run_dir };
        if proxy.kind == Proxy::OpenSips {
            // startup_route runs before the workers: wait until `ps` over the
            // MI socket lists the SIP receivers.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let ps = proxy.mi("ps", serde_json::json!({})).map(|v| v.to_string());
                if ps.as_deref().is_ok_and(|p| p.contains("SIP receiver")) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("OpenSIPS's workers did not come up ({ps:?}):\n{}", proxy.process.log_tail(30));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(proxy)
    }

    /// Waits until `user` has registered (the proxy logs each saved REGISTER).
    pub fn wait_for_registration(&mut self, offset: u64, user: &str, timeout: Duration) -> Result<String> {
        self.process.wait_for_log_after(offset, &format!("REGISTER {} from", regex::escape(user)), timeout)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends one JSON-RPC request to the proxy's datagram socket and
    /// returns the answer (the reply socket is in the test's directory,
    /// writable by the proxy's user).
    pub fn mi(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.run_dir.parent().context("run dir has a parent")?;
        let own = dir.join(format!("mi-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&own);
        let socket = std::os::unix::net::UnixDatagram::bind(&own)?;
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o666))?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        let request = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        let target = self.kind.mi_socket(dir);
        let result = (|| {
            socket.send_to(request.to_string().as_bytes(), &target)?;
            let mut buf = vec![0u8; 65536];
            let n = socket.recv(&mut buf)?;
            Ok::<_, std::io::Error>(buf[..n].to_vec())
        })();
        let _ = std::fs::remove_file(&own);
        let bytes = result.with_context(|| format!("{method} over {}", target.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("answer to {method}: {}", String::from_utf8_lossy(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opensips_site_values_are_all_in_the_example() {
        let text = std::fs::read_to_string(Proxy::OpenSips.example()).unwrap();
        let opts = ProxyOptions::new(Proxy::OpenSips, "/tmp/x/dispatcher.sock").ice_candidate("low-priority");
        let site = opensips_site(&opts, Path::new("/tmp/x/opensips"), Path::new("/p")).unwrap();
        let script = sed_script(&text, &site).unwrap();
        assert!(script.contains("s|\"/run/opensips/|\"/tmp/x/opensips/|g\n"), "{script}");
        // The script applied by sed gives the test's values.
        let out = crate::netns::run_with_stdin(std::process::Command::new("sed").arg("-e").arg(&script), Some(&text))
            .unwrap();
        assert!(out.contains("modparam(\"mediaproxy\", \"mediaproxy_socket\", \"/tmp/x/dispatcher.sock\")"), "{out}");
        assert!(out.contains("modparam(\"mi_datagram\", \"socket_name\", \"/tmp/x/opensips/socket\")"));
        assert!(out.contains("mpath=\"/p/lib64/opensips/modules/\""));
        assert!(out.contains("\"ice_candidate\", \"low-priority\")"));
        let left: Vec<&str> = out.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains("/run/")).collect();
        assert!(left.is_empty(), "site values left: {left:?}");
        let off = opensips_site(&opts.clone().keepalive(None), Path::new("/r"), Path::new("/p")).unwrap();
        let out = crate::netns::run_with_stdin(
            std::process::Command::new("sed").arg("-e").arg(sed_script(&text, &off).unwrap()),
            Some(&text),
        )
        .unwrap();
        assert!(!out.contains("\tnat_keepalive();"), "keepalives still on");
        assert!(sed_script("nothing", &site).unwrap_err().to_string().contains("no longer contains"));
    }

    #[test]
    fn kamailio_defines_cover_the_switches() {
        let opts = ProxyOptions::new(Proxy::Kamailio, "/tmp/x/dispatcher.sock");
        let d = kamailio_defines(&opts, Path::new("/tmp/x"), Path::new("/m"));
        assert!(d.contains(&"MEDIAPROXY_SOCKET=\"/tmp/x/dispatcher.sock\"".to_string()), "{d:?}");
        assert!(d.contains(&"RPC_SOCKET=\"/tmp/x/kamailio/kamailio_rpc.sock\"".to_string()), "{d:?}");
        assert!(d.contains(&"KEEPALIVE_INTERVAL=25".to_string()));
        let d = kamailio_defines(&opts.without_dialog().keepalive(None), Path::new("/r"), Path::new("/m"));
        assert!(d.contains(&"WITHOUT_DIALOG".to_string()) && d.contains(&"WITHOUT_KEEPALIVE".to_string()));
        // Every define the rig sets is a site setting of the example.
        let text = std::fs::read_to_string(Proxy::Kamailio.example()).unwrap();
        for def in d {
            let name = def.split('=').next().unwrap();
            assert!(text.contains(&format!("#!ifndef {name}")) || text.contains(&format!("#!ifdef {name}")), "{name}");
        }
    }
}
