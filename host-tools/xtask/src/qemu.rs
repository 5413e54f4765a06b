//! Booting an image in QEMU (TCG) as the real boards boot: the whole disk
//! image as a virtio disk, through the board's UEFI firmware (OVMF on
//! x86_64, AAVMF on aarch64), then systemd-boot and its entries (so that
//! the A/B slots and boot counting are the real ones); user-mode
//! networking: a WAN NIC with host forwards for the relay's media ports and
//! the web port, and optionally a LAN NIC (a second user network,
//! 192.168.88.0/24, the box at its default LAN address) with a forward to
//! the web page from the LAN side; an optional i6300esb watchdog that resets
//! the VM; the serial console on stdio, which callers can read
//! (`wait_for`) and type into (`run`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::board::{Arch, Board};

/// Where the guest reaches the host under QEMU user networking.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// The guest's own address under QEMU user networking (first DHCP lease).
pub const GUEST_IP: &str = "10.0.2.15";
/// The port `relaybox web` listens on inside the box (HTTPS, `[Web] listen`
/// default).
pub const WEB_PORT: u16 = 443;
/// The box's default LAN address (`LAN_ADDRESS` of the shipped
/// network.conf), where the LAN NIC's forward goes.
pub const BOX_LAN_IP: &str = "192.168.88.1";

/// The UEFI firmware QEMU boots a board's disk with (Debian's `ovmf` and
/// `qemu-efi-aarch64` packages).
pub fn uefi_firmware(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => PathBuf::from("/usr/share/OVMF/OVMF_CODE.fd"),
        Arch::Aarch64 => PathBuf::from("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub board: String,
    /// The whole disk image (boot partition(s), config partition), attached
    /// as a virtio disk and written in place.
    pub disk: PathBuf,
    /// UDP ports forwarded 127.0.0.1:p -> guest:p (the relay's port_range).
    pub udp_ports: Vec<u16>,
    /// Host port for the guest's web port through the WAN NIC (0: none).
    pub web_host_port: u16,
    /// A LAN NIC (eth1), and the host port forwarded to the web page
    /// through it (0: no LAN NIC).
    pub lan_web_host_port: u16,
    /// An i6300esb watchdog whose expiry resets the VM (QEMU then exits).
    pub watchdog: bool,
    pub memory_mib: u32,
    /// Copy of the console output.
    pub log: Option<PathBuf>,
    /// The guest's real-time clock at power-on (`-rtc base=`), e.g. a date
    /// long past, as a board that lost its time; None: the host's time.
    pub rtc_base: Option<String>,
    /// A reboot of the guest restarts the machine, as on a real box (the
    /// boot loader runs again); false: QEMU exits instead (`-no-reboot`),
    /// which callers wait for with [`Vm::wait_exit`].
    pub reboot: bool,
    /// Disk throughput cap in bytes per second (None: none): slows writes
    /// so that a test can cut the power in the middle of one.
    pub disk_bps: Option<u64>,
}

impl VmConfig {
    pub fn new(board: &str, disk: &Path) -> Self {
        VmConfig {
            board: board.to_string(),
            disk: disk.to_path_buf(),
            udp_ports: Vec::new(),
            web_host_port: 0,
            lan_web_host_port: 0,
            watchdog: false,
            memory_mib: 512,
            log: None,
            rtc_base: None,
            reboot: false,
            disk_bps: None,
        }
    }

    pub fn command(&self) -> Result<Command> {
        let board = Board::load(&self.board)?;
        let mut fwd = String::new();
        for p in &self.udp_ports {
            fwd.push_str(&format!(",hostfwd=udp:127.0.0.1:{p}-:{p}"));
        }
        if self.web_host_port != 0 {
            fwd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{WEB_PORT}", self.web_host_port));
        }
        let mut cmd = match board.arch()? {
            Arch::X86_64 => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-M", "q35", "-cpu", "max"]);
                c
            }
            Arch::Aarch64 => {
                let mut c = Command::new("qemu-system-aarch64");
                c.args(["-M", "virt", "-cpu", "cortex-a53"]);
                c
            }
        };
        cmd.args(["-accel", "tcg", "-smp", "1", "-m", &self.memory_mib.to_string()]);
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
        if !self.reboot {
            cmd.arg("-no-reboot");
        }
        cmd.args(["-serial", "stdio", "-monitor", "none"]);
        if let Some(base) = &self.rtc_base {
            cmd.arg("-rtc").arg(format!("base={base}"));
        }
        let firmware = uefi_firmware(board.arch()?);
        if !firmware.exists() {
            bail!("{} missing: install Debian's ovmf and qemu-efi-aarch64 packages (ci/setup.sh)", firmware.display());
        }
        cmd.arg("-bios").arg(firmware);
        let throttle = self.disk_bps.map(|b| format!(",throttling.bps-total={b}")).unwrap_or_default();
        cmd.arg("-drive").arg(format!("file={},format=raw,if=none,id=disk{throttle}", self.disk.display()));
        cmd.args(["-device", "virtio-blk-pci,drive=disk"]);
        cmd.args(["-netdev", &format!("user,id=wan{fwd}"), "-device", "virtio-net-pci,netdev=wan"]);
        if self.lan_web_host_port != 0 {
            let lan = format!(
                "user,id=lan,net=192.168.88.0/24,host=192.168.88.2,dhcpstart=192.168.88.100,restrict=on,\
                 hostfwd=tcp:127.0.0.1:{}-{BOX_LAN_IP}:{WEB_PORT}",
                self.lan_web_host_port
            );
            cmd.args(["-netdev", &lan, "-device", "virtio-net-pci,netdev=lan"]);
        }
        if self.watchdog {
            cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"]);
        }
        Ok(cmd)
    }
}

/// A running VM; killed (and waited for) on drop.
pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    /// Console output before this offset has been consumed by wait_for.
    seen: usize,
    pub started: Instant,
    marker: u32,
}

impl Vm {
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        let mut cmd = cfg.command()?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting QEMU (is qemu-system-x86/qemu-system-arm installed?)")?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let console = Arc::new(Mutex::new(String::new()));
        let sink = console.clone();
        let mut log = match &cfg.log {
            Some(p) => Some(std::fs::File::create(p)?),
            None => None,
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            }
        });
        Ok(Vm { child, stdin, console, seen: 0, started: Instant::now(), marker: 0 })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until `needle` shows up on the console after what earlier
    /// waits consumed; returns the text up to and including it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let until = Instant::now() + timeout;
        loop {
            {
                let text = self.console.lock().unwrap();
                if let Some(at) = text[self.seen..].find(needle) {
                    let end = self.seen + at + needle.len();
                    let got = text[self.seen..end].to_string();
                    self.seen = end;
                    return Ok(got);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("QEMU exited ({status}) before {needle:?}; console:\n{}", self.tail());
            }
            if Instant::now() > until {
                bail!("{needle:?} not on the console within {timeout:?}; console:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tail(&self) -> String {
        let text = self.console();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text[start..].to_string()
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Runs a shell command on the console and returns its output.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String> {
        self.marker += 1;
        let tag = format!("XTASK{}", self.marker);
        // the marker is split in the echoed command line, whole in the output
        self.send(&format!("{command}; echo \"@@{tag}\"'-'\"END\""))?;
        let out = self.wait_for(&format!("@@{tag}-END"), timeout)?;
        // drop everything up to the end of the echoed command line
        let echo_end = out.rfind("'-'\"END\"").map(|i| i + "'-'\"END\"".len()).unwrap_or(0);
        let out = out[echo_end..].split_once('\n').map(|(_, rest)| rest).unwrap_or("");
        Ok(without_console_messages(out.trim_end_matches(&format!("@@{tag}-END"))))
    }

    /// Waits for QEMU to exit by itself (the guest rebooted: -no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("QEMU still running after {timeout:?}; console:\n{}", self.tail())
    }
}

/// What the box's services write to the console themselves (inittab runs
/// `relaybox-supervise ROLE`, which says `relaybox-supervise: ...` and
/// passes its daemon's log through `logger -s -t relaybox-ROLE`).
const CONSOLE_TAGS: &[&str] = &["supervise", "clock", "relay", "dispatcher", "web", "watchdog"];

/// `output` without the lines that the box's services and kernel wrote to
/// the same console meanwhile: a service's log line (written whole, as
/// `relaybox-ROLE: ...`) or a kernel message (`[   12.345678] ...`) can
/// land between a command's lines.
fn without_console_messages(output: &str) -> String {
    let service = |l: &str| {
        l.strip_prefix("relaybox-")
            .and_then(|rest| rest.split_once(": "))
            .is_some_and(|(tag, _)| CONSOLE_TAGS.contains(&tag))
    };
    let kernel = |l: &str| {
        l.strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .is_some_and(|(stamp, _)| stamp.trim().parse::<f64>().is_ok())
    };
    output.split_inclusive('\n').filter(|l| !service(l.trim_start()) && !kernel(l.trim_start())).collect()
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::without_console_messages;

    #[test]
    fn service_and_kernel_lines_on_the_console_are_not_command_output() {
        // As seen in a CI trial: the watchdog's first log line arrived in
        // the middle of a command's output.
        let console = "1\n1\nrelaybox-watchdog: 2026-12-02T18:16:04.520632Z  INFO watchdog: the relay answers\n4\n\
                       [   12.345678] virtio_net virtio0 eth0: link up\nrelaybox-supervise: relay exited\nROOT-RO\n";
        assert_eq!(without_console_messages(console), "1\n1\n4\nROOT-RO\n");
        // A command's own output that only looks alike stays.
        let own = "relaybox-ca: 0.1.0\n[Relay]\n[ok] done\nrelaybox-relay:no space\n";
        assert_eq!(without_console_messages(own), own);
    }
}
