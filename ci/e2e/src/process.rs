//! Long-running programs of a test (the proxy, SIPp, the dispatcher, relays):
//! started in a namespace, stdout and stderr appended to one log file, killed
//! with their whole process group on drop.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::netns::Netns;

/// How often log files and exit states are polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Sends `sig` to one process; errors (already gone) are ignored.
#[allow(unsafe_code)]
pub fn signal_pid(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Sends `sig` to a process group; errors (already gone) are ignored.
#[allow(unsafe_code)]
fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// What to run: program, arguments, working directory, extra environment.
#[derive(Debug, Clone)]
pub struct CommandLine {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
}

impl CommandLine {
    pub fn new(program: impl Into<OsString>) -> CommandLine {
        CommandLine { program: program.into(), args: Vec::new(), cwd: None, env: Vec::new() }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> CommandLine {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> CommandLine {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> CommandLine {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> CommandLine {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command as one shell-like line, for logs and error messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program).chain(&self.args).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }
}

/// A running program. Dropping it stops the whole process group (SIGTERM,
/// then SIGKILL after a grace period).
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
    started: Instant,
}

impl Process {
    /// Starts `cmd` inside `netns` (or in the test's own namespace when
    /// `None`), in its own process group, with stdout and stderr appended to
    /// `log`. The child gets SIGTERM if the test thread dies without dropping
    /// it (PR_SET_PDEATHSIG).
    pub fn spawn(name: &str, netns: Option<&Netns>, cmd: &CommandLine, log: &Path) -> Result<Process> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = file.try_clone()?;
        let mut command = match netns {
            Some(ns) => ns.command(&cmd.program),
            None => Command::new(&cmd.program),
        };
        command.args(&cmd.args).stdin(Stdio::null()).stdout(Stdio::from(file)).stderr(Stdio::from(err));
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        for (k, v) in &cmd.env {
            command.env(k, v);
        }
        command.process_group(0);
        set_parent_death_signal(&mut command);
        let where_ = netns.map(|n| n.name().to_owned()).unwrap_or_else(|| "the root namespace".into());
        let child = command.spawn().with_context(|| format!("starting {name}: {} in {where_}", cmd.display()))?;
        Ok(Process { name: name.to_owned(), child, log: log.to_owned(), status: None, started: Instant::now() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Time since the process was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        read_lossy(&self.log, 0)
    }

    /// Current length of the log in bytes: pass it to
    /// [`Process::wait_for_log_after`] to only look at what comes next.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Exit status if the process has ended, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("polling {}", self.name))?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits until a log line matches `pattern` (a regex) and returns that
    /// line. Fails on timeout or when the process exits without printing it.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_after(0, pattern, timeout)
    }

    /// Like [`Process::wait_for_log`], looking only at bytes from `offset` on.
    pub fn wait_for_log_after(&mut self, offset: u64, pattern: &str, timeout: Duration) -> Result<String> {
        let re = Regex::new(pattern).with_context(|| format!("bad pattern {pattern:?}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_status()?;
            if let Some(line) = read_lossy(&self.log, offset).lines().find(|l| re.is_match(l)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = exited {
                bail!(
                    "{} exited ({}) without logging /{pattern}/; last lines of {}:\n{}",
                    self.name,
                    describe(status),
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log /{pattern}/ within {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit; kills it and fails after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.stop(Duration::from_secs(2));
                bail!(
                    "{} still running after {timeout:?}, killed; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            signal_group(self.pid(), sig);
        }
    }

    /// SIGKILL to the whole group right now (a crash, as far as peers can
    /// tell), then reaps the leader.
    pub fn kill_hard(&mut self) {
        signal_group(self.pid(), libc::SIGKILL);
        let _ = self.child.wait().map(|s| self.status = Some(s));
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then
    /// SIGKILL to whatever is left of the group.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.try_status(), Ok(Some(_))) {
            signal_group(self.pid(), libc::SIGKILL);
            return;
        }
        signal_group(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.try_status(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(POLL);
        }
        signal_group(self.pid(), libc::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.wait().map(|s| self.status = Some(s));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

/// "exit code 3" / "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Reads a file from `offset` as lossy UTF-8; empty when it does not exist.
pub fn read_lossy(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
