//! `cargo xtask`: relaybox's project chores (see board/README.md).
//!
//! - `cargo xtask binaries` — static, stripped `relaybox` for x86_64 and aarch64 (musl)
//! - `cargo xtask image --board NAME [--version V] [--update-key PUB]` — initramfs, slot files and
//!   disk image under target/images/NAME
//! - `cargo xtask bundle --board NAME --key KEY [--out FILE]` — the image's slot as a signed update bundle
//!   (`--slot DIR` instead of `--board`: a slot Buildroot made)
//! - `cargo xtask config-image --out FILE [--from DIR] [--fs ext4|vfat]` — a RELAYBOX_CFG partition
//! - `cargo xtask provision --image DISK --box BOX.conf` — one box's identity onto its config partition
//! - `cargo xtask qemu --board qemu-x86_64|qemu-aarch64` — boot it (UEFI, systemd-boot) and wait
//!   until the relay runs
//! - `cargo xtask deb` — the proxy host's Debian package (target/debian/relaybox_*.deb)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use xtask::board::Arch;
use xtask::image::Image;
use xtask::qemu::{Vm, VmConfig};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "relaybox project chores")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the static relaybox binaries for both architectures.
    Binaries,
    /// Build the proxy host's Debian package (relaybox, relaybox-ca, units,
    /// man pages, completions) into target/debian.
    Deb,
    /// Build the firmware image of a board.
    Image {
        #[arg(long)]
        board: String,
        /// The firmware version (1 to 6 dot-separated numbers; default: the
        /// workspace version and the build's UTC time). Boxes install only
        /// newer versions.
        #[arg(long)]
        version: Option<String>,
        /// The public key (PEM, `relaybox-ca update-key`) the image trusts for
        /// updates. Default: a development key under target/xtask/update-key;
        /// production images must be built with the operator's own.
        #[arg(long)]
        update_key: Option<PathBuf>,
    },
    /// Make a signed update bundle of a built image's slot files.
    Bundle {
        #[arg(long, required_unless_present = "slot")]
        board: Option<String>,
        /// A slot directory with its manifest.json instead of the xtask's image
        /// (Buildroot: output/images/relaybox-boot/slot-a, or relaybox-slot on the Pi).
        #[arg(long, conflicts_with = "board")]
        slot: Option<PathBuf>,
        /// The private signing key (PEM, `relaybox-ca update-key`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write it (default: target/images/BOARD/relaybox-BOARD-VERSION.bundle).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a config partition image (label RELAYBOX_CFG).
    ConfigImage {
        #[arg(long)]
        out: PathBuf,
        /// A directory to copy in (relaybox.ini, tls/, network.conf...).
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long, default_value = "ext4")]
        fs: String,
        #[arg(long, default_value_t = 16)]
        size_mib: u64,
    },
    /// Write one box's identity (settings, certificates, web password) onto
    /// the config partition of a disk image or device (see board/README.md).
    Provision {
        /// The disk image (disk.img) or the device it was flashed to.
        #[arg(long)]
        image: PathBuf,
        /// The box file: `key = value` lines (hostname, dispatchers, ...).
        #[arg(long = "box")]
        box_file: PathBuf,
        /// The relaybox binary that hashes the password and checks the files
        /// (default: the static x86_64 build, made if needed).
        #[arg(long)]
        relaybox: Option<PathBuf>,
    },
    /// Boot a QEMU board's image and wait until the relay is running.
    Qemu {
        #[arg(long)]
        board: String,
        /// The disk to boot and keep (default: a fresh copy of the image's
        /// disk.img as target/images/BOARD/disk-run.img).
        #[arg(long)]
        disk: Option<PathBuf>,
        /// A config partition image to put into a fresh disk (`config-image`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The relay's UDP port range to forward from 127.0.0.1, "start:end".
        #[arg(long, default_value = "40000:40016")]
        ports: String,
        /// Host port forwarded to the box's web page (HTTPS port 443 inside)
        /// through its LAN NIC (the firewall keeps the page off the WAN).
        #[arg(long, default_value_t = 8080)]
        web_port: u16,
        /// Stay attached after the relay is up (until Ctrl-C) instead of exiting.
        #[arg(long)]
        interactive: bool,
        /// The console line that means ready, after "boot done" (e.g.
        /// "connected to dispatcher" when the config partition names a
        /// reachable dispatcher); default: "boot done" itself (the relay is
        /// started just before it).
        #[arg(long)]
        ready: Option<String>,
        /// Seconds to wait for the relay to start.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Binaries => {
            xtask::build::relaybox_for(&[Arch::X86_64.rust_target(), Arch::Aarch64.rust_target()])?;
        }
        Cmd::Deb => {
            let deb = xtask::deb::build()?;
            println!("{}", deb.display());
        }
        Cmd::Image { board, version, update_key } => {
            xtask::image::build_with(&board, &xtask::image::Options { version, update_key })?;
        }
        Cmd::Bundle { board, slot, key, out } => match (board, slot) {
            (_, Some(slot)) => {
                xtask::bundle::make_from_slot(&slot, &key, out)?;
            }
            (Some(board), None) => {
                let img = Image::existing(&board)
                    .ok_or_else(|| anyhow::anyhow!("no image of {board}: cargo xtask image --board {board} first"))?;
                xtask::bundle::make(&img, &key, out)?;
            }
            (None, None) => bail!("--board or --slot"),
        },
        Cmd::ConfigImage { out, from, fs, size_mib } => {
            xtask::disk::config_image(&out, &fs, size_mib, from.as_deref())?;
            println!("{} ({fs}, {size_mib} MiB, label {})", out.display(), xtask::disk::CFG_LABEL);
        }
        Cmd::Provision { image, box_file, relaybox } => {
            let bin = match relaybox {
                Some(b) => b,
                None => xtask::build::relaybox(Arch::X86_64.rust_target())?,
            };
            let b = xtask::provision::BoxFile::load(&box_file)?;
            let part = xtask::provision::provision(&image, &b, &bin)?;
            println!(
                "{}: config partition at {} MiB ({}, {} MiB) provisioned from {}",
                image.display(),
                part.offset / xtask::disk::MIB,
                part.fs,
                part.len / xtask::disk::MIB,
                box_file.display()
            );
        }
        Cmd::Qemu { board, disk, config, ports, web_port, interactive, ready, timeout } => {
            if !board.starts_with("qemu-") {
                bail!("qemu boots the qemu-x86_64 and qemu-aarch64 boards");
            }
            let img = match Image::existing(&board) {
                Some(i) => i,
                None => xtask::image::build(&board)?,
            };
            let disk = match disk {
                Some(d) => d,
                None => {
                    let d = img.dir.join("disk-run.img");
                    match &config {
                        Some(c) => img.provisioned_disk(c, &d)?,
                        None => {
                            std::fs::copy(&img.disk, &d)?;
                        }
                    }
                    d
                }
            };
            let (a, b) = ports.split_once(':').unwrap_or(("40000", "40016"));
            let (a, b): (u16, u16) = (a.parse()?, b.parse()?);
            let mut cfg = VmConfig::new(&board, &disk);
            cfg.udp_ports = (a..b).collect();
            cfg.lan_web_host_port = web_port;
            cfg.reboot = true;
            let mut vm = Vm::start(&cfg)?;
            xtask::step(format!("booting {board} (QEMU pid {}), disk {}", vm.pid(), disk.display()));
            // The relay is started just before "boot done" (its own lines may
            // come first): "boot done" is the line to wait for.
            vm.wait_for("relaybox-init: boot done", Duration::from_secs(timeout))?;
            let ready = ready.unwrap_or_else(|| "relaybox-init: boot done".into());
            if ready != "relaybox-init: boot done" {
                vm.wait_for(&ready, Duration::from_secs(timeout))?;
            }
            println!("{}", vm.console());
            xtask::step(format!(
                "{board}: ready ({ready:?}) {:.1} s after power-on; media ports 127.0.0.1:{a}-{} (UDP), web 127.0.0.1:{web_port}",
                vm.started.elapsed().as_secs_f64(),
                b - 1
            ));
            if interactive {
                xtask::step("console output follows; Ctrl-C stops the VM");
                let mut printed = vm.console().len();
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let text = vm.console();
                    print!("{}", &text[printed..]);
                    printed = text.len();
                }
            }
        }
    }
    Ok(())
}
