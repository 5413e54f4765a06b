//! Network namespaces made with `ip netns`, deleted on drop, and the small
//! command helpers the rest of the rig uses to run things inside them.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Every namespace this crate creates starts with this, followed by the pid
/// of the test process: `rbxe2e-<pid>-<n>-<role>`.
pub const NAME_PREFIX: &str = "rbxe2e-";

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_with_stdin(cmd, None)
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let shown = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("cannot start {shown}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input.as_bytes()).with_context(|| format!("writing stdin of {shown}"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("waiting for {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdin.is_some() { format!("\ninput was:\n{}", stdin.unwrap_or_default()) } else { String::new() }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the current (root) namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A network namespace owned by this test; deleted (with every process still
/// inside it killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` and bring its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name]).with_context(|| format!("creating namespace {name} (are you root?)"))?;
        let ns = Netns { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` running `program` inside this namespace (`ip netns exec`).
    /// `ip` execs the program, so the child's pid is the program's pid.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        run(self.command(program).args(rest)).with_context(|| format!("in namespace {}", self.name))
    }

    /// `ip -n NAME <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `sysctl -w key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft_load(&self, ruleset: &str) -> Result<()> {
        run_with_stdin(self.command("nft").args(["-f", "-"]), Some(ruleset))
            .with_context(|| format!("loading nftables rules in {}", self.name))
            .map(drop)
    }

    /// `nft <args>` inside the namespace, returning stdout.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        run(self.command("nft").args(args)).with_context(|| format!("nft in {}", self.name))
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Opens a TCP connection from inside this namespace (for example to a
    /// management port bound to the namespace's 127.0.0.1). A helper thread
    /// enters the namespace with `setns(2)`; the socket keeps that namespace
    /// after the thread ends, the calling thread is never moved.
    pub fn connect_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<TcpStream> {
                    enter_netns(&file)?;
                    TcpStream::connect_timeout(&addr, timeout)
                })
                .join()
        });
        match joined {
            Ok(result) => result.with_context(|| format!("connecting to {addr} in namespace {}", self.name)),
            Err(_) => bail!("thread connecting to {addr} in {} panicked", self.name),
        }
    }
}

impl Netns {
    /// Binds a UDP socket inside this namespace (same helper-thread
    /// `setns(2)` as [`Netns::connect_tcp`]); the socket stays in the
    /// namespace, the calling thread is never moved.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<UdpSocket> {
                    enter_netns(&file)?;
                    UdpSocket::bind(addr)
                })
                .join()
        });
        match joined {
            Ok(result) => result.with_context(|| format!("binding UDP {addr} in namespace {}", self.name)),
            Err(_) => bail!("thread binding {addr} in {} panicked", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

#[allow(unsafe_code)]
fn enter_netns(file: &File) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `file` keeps open for
    // the duration of the call; it changes the namespace of this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Kills whatever still runs in the namespace, then deletes it. Never fails:
/// used from `Drop`.
fn remove_namespace(name: &str) {
    for _ in 0..50 {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            crate::process::signal_pid(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("[e2e] warning: cannot delete namespace {name}: {e:#}");
    }
}

/// Names of all namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

/// Deletes namespaces left behind by test processes that no longer exist
/// (a test binary killed with SIGKILL cannot run its destructors).
pub fn remove_stale() {
    let Ok(names) = list() else { return };
    for name in names {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[e2e] removing stale namespace {name} (process {pid} is gone)");
            remove_namespace(&name);
        }
    }
}
