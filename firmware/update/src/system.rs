//! The box as an update sees it: the image's release file (board, version,
//! boot scheme), the public key it trusts, which slot runs (the kernel
//! command line's `relaybox.slot=` on EFI boxes, the firmware's device
//! tree values on a Raspberry Pi), and one install at a time. The CLI
//! (`relaybox update`) and the web page's Update page both go through
//! [`Updater`].

use std::path::{Path, PathBuf};

use relaybox_config::UpdateConfig;

use crate::bundle::{Checked, Expect};
use crate::efi::MarkGood;
use crate::install::{Efi, InstallError, Pi, PiSlots, Progress};
use crate::key::{KeyError, PublicKey};
use crate::pi::Booted;
use crate::slot::{Slot, SlotError, Status};
use crate::version::Version;

/// How a board boots its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// systemd-boot with boot counting (`BOOT_SCHEME=efi`).
    Efi,
    /// The Raspberry Pi firmware's autoboot.txt and tryboot (`BOOT_SCHEME=rpi`).
    Rpi,
}

impl Scheme {
    /// The files every slot of this scheme needs.
    pub fn required_files(self) -> &'static [&'static str] {
        match self {
            Scheme::Efi => &["vmlinuz", "initrd.img", "cmdline.txt"],
            Scheme::Rpi => &["vmlinuz", "initrd.img", "cmdline.txt", "config.txt", "start4.elf", "fixup4.dat"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Efi => "efi",
            Scheme::Rpi => "rpi",
        }
    }
}

/// `/etc/relaybox/release`, written by the image builder (shell syntax, so
/// that init can source it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub board: String,
    pub version: Version,
    pub scheme: Scheme,
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{path}: {why}")]
    Release { path: String, why: String },
    #[error("the update key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: KeyError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another update is being installed right now")]
    Busy,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, String> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
                .next()
                .ok_or_else(|| format!("{key} missing"))
        };
        let board = get("BOARD")?;
        if !crate::manifest::valid_board(&board) {
            return Err(format!("bad BOARD {board:?}"));
        }
        let version = get("VERSION")?.parse().map_err(|e: crate::version::BadVersion| e.to_string())?;
        let scheme = match get("BOOT_SCHEME")?.as_str() {
            "efi" => Scheme::Efi,
            "rpi" => Scheme::Rpi,
            other => return Err(format!("BOOT_SCHEME {other:?}: efi or rpi")),
        };
        Ok(Release { board, version, scheme })
    }

    pub fn render(&self) -> String {
        format!("BOARD=\"{}\"\nVERSION=\"{}\"\nBOOT_SCHEME=\"{}\"\n", self.board, self.version, self.scheme.as_str())
    }
}

/// Which slot runs, as the boot loader says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Efi(Slot),
    Rpi(Booted),
}

impl Running {
    pub fn slot(self) -> Slot {
        match self {
            Running::Efi(s) => s,
            Running::Rpi(b) => b.slot,
        }
    }
}

/// The `relaybox.slot=` word of a kernel command line.
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("relaybox.slot=")).and_then(|s| s.parse().ok())
}

pub struct Updater {
    pub config: UpdateConfig,
    pub release: Release,
    pub key: PublicKey,
    /// Err: booted without the slot loader (no `relaybox.slot=`, no
    /// firmware partition), so there is nothing to update.
    pub running: Result<Running, SlotError>,
    root: PathBuf,
}

/// Held while an install runs (an advisory lock on `work_dir/lock`).
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl Updater {
    /// The box this program runs on.
    pub fn load(config: &UpdateConfig) -> Result<Updater, SystemError> {
        Updater::load_at(config, Path::new("/"))
    }

    /// As [`Updater::load`], with `/proc` read under `root` (tests).
    pub fn load_at(config: &UpdateConfig, root: &Path) -> Result<Updater, SystemError> {
        let path = config.release_file.display().to_string();
        let text = std::fs::read_to_string(&config.release_file)
            .map_err(|e| SystemError::Release { path: path.clone(), why: e.to_string() })?;
        let release = Release::parse(&text).map_err(|why| SystemError::Release { path, why })?;
        let key_path = config.public_key.display().to_string();
        let pem = std::fs::read_to_string(&config.public_key)
            .map_err(|e| SystemError::Key { path: key_path.clone(), source: KeyError::Pem(e.to_string()) })?;
        let key = PublicKey::from_pem(&pem).map_err(|source| SystemError::Key { path: key_path, source })?;
        let running = match release.scheme {
            Scheme::Efi => std::fs::read_to_string(root.join("proc/cmdline"))
                .ok()
                .and_then(|c| slot_from_cmdline(&c))
                .map(Running::Efi)
                .ok_or(SlotError::UnknownRunning),
            Scheme::Rpi => {
                let dt = root.join("proc/device-tree/chosen/bootloader");
                let partition = std::fs::read(dt.join("partition")).unwrap_or_default();
                let tryboot = std::fs::read(dt.join("tryboot")).unwrap_or_default();
                Booted::from_device_tree(&partition, &tryboot).map(Running::Rpi)
            }
        };
        Ok(Updater { config: config.clone(), release, key, running, root: root.to_path_buf() })
    }

    fn efi(&self) -> Efi {
        Efi { esp: self.config.boot_dir.clone() }
    }

    /// The Pi's slot partitions: the device of the boot partition with
    /// partition numbers 2 and 3 (`/dev/mmcblk0p1` → `/dev/mmcblk0p2`).
    fn pi(&self) -> Pi {
        let mounts = std::fs::read_to_string(self.root.join("proc/self/mounts")).unwrap_or_default();
        let boot = std::fs::canonicalize(&self.config.boot_dir).unwrap_or_else(|_| self.config.boot_dir.clone());
        let device = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 2 && Path::new(f[1]) == boot).then(|| f[0].to_string())
        });
        let slots = match device {
            Some(dev) if dev.starts_with("/dev/") => {
                let prefix = dev.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
                PiSlots::Devices {
                    devices: [PathBuf::from(format!("{prefix}2")), PathBuf::from(format!("{prefix}3"))],
                    mount_at: self.config.work_dir.join("slot"),
                }
            }
            // Not on a box (tests): slot directories beside the boot one.
            _ => PiSlots::Dirs([self.config.boot_dir.join("../slot-a"), self.config.boot_dir.join("../slot-b")]),
        };
        Pi { boot: self.config.boot_dir.clone(), slots }
    }

    fn running(&self) -> Result<Running, InstallError> {
        self.running.clone().map_err(InstallError::Slot)
    }

    /// Whether the running slot still has to prove itself.
    pub fn on_trial(&self) -> Result<bool, InstallError> {
        match self.running()? {
            Running::Efi(slot) => Ok(self.efi().entries()?.of(slot).is_some_and(|e| e.on_trial())),
            Running::Rpi(booted) => Ok(booted.tryboot),
        }
    }

    pub fn status(&self) -> Result<Status, InstallError> {
        let version = self.release.version.to_string();
        match self.running()? {
            Running::Efi(slot) => self.efi().status(slot, &self.release.board, &version),
            Running::Rpi(booted) => self.pi().status(booted, &self.release.board, &version),
        }
    }

    pub fn expect<'a>(&'a self, force: bool) -> Expect<'a> {
        Expect {
            key: &self.key,
            board: &self.release.board,
            running: &self.release.version,
            force,
            max_total: self.config.max_bundle_size,
            required: self.release.scheme.required_files(),
        }
    }

    /// Checks the bundle whole, then writes and arms the other slot.
    pub fn install(
        &self,
        bundle: &Path,
        force: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Checked, InstallError> {
        let expect = self.expect(force);
        match self.running()? {
            Running::Efi(slot) => self.efi().install(slot, self.config.boot_tries, bundle, &expect, progress),
            Running::Rpi(booted) => self.pi().install(booted, bundle, &expect, progress),
        }
    }

    /// At boot (the Pi counts a tryboot as its one try).
    pub fn count_boot(&self) -> Result<(), InstallError> {
        match self.running()? {
            Running::Efi(_) => Ok(()),
            Running::Rpi(booted) => self.pi().count_boot(booted),
        }
    }

    pub fn mark_good(&self) -> Result<MarkGood, InstallError> {
        match self.running()? {
            Running::Efi(slot) => self.efi().mark_good(slot),
            Running::Rpi(booted) => self.pi().mark_good(booted),
        }
    }

    /// One install at a time, whoever starts it (the CLI, the web page).
    pub fn lock(&self) -> Result<Lock, SystemError> {
        let dir = &self.config.work_dir;
        let io = |what: String| move |source| SystemError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| SystemError::Busy)?;
        Ok(Lock(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_and_command_lines() {
        let r = Release::parse("BOARD=\"qemu-x86_64\"\nVERSION=\"0.1.0.5\"\nBOOT_SCHEME=\"efi\"\n").unwrap();
        assert_eq!((r.board.as_str(), r.version.to_string(), r.scheme), ("qemu-x86_64", "0.1.0.5".into(), Scheme::Efi));
        assert_eq!(Release::parse(&r.render()).unwrap(), r);
        assert!(Release::parse("BOARD=x\nVERSION=1\nBOOT_SCHEME=grub\n").is_err());
        assert!(Release::parse("BOARD=x\nBOOT_SCHEME=efi\n").is_err());
        assert_eq!(slot_from_cmdline("console=ttyS0 quiet relaybox.slot=b\n"), Some(Slot::B));
        assert_eq!(slot_from_cmdline("console=ttyS0"), None);
    }

    #[test]
    fn one_install_at_a_time_and_the_running_slot_from_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/cmdline"), "quiet relaybox.slot=a\n").unwrap();
        std::fs::write(root.join("release"), "BOARD=qemu-x86_64\nVERSION=1.0\nBOOT_SCHEME=efi\n").unwrap();
        let (key, _) = crate::key::SigningKey::generate().unwrap();
        std::fs::write(root.join("update.pub"), key.public_key().to_pem()).unwrap();
        let config = UpdateConfig {
            release_file: root.join("release"),
            public_key: root.join("update.pub"),
            boot_dir: root.join("boot"),
            work_dir: root.join("work"),
            ..UpdateConfig::default()
        };
        let u = Updater::load_at(&config, root).unwrap();
        assert_eq!(u.running.clone().unwrap(), Running::Efi(Slot::A));
        let held = u.lock().unwrap();
        assert!(matches!(u.lock(), Err(SystemError::Busy)));
        drop(held);
        assert!(u.lock().is_ok());
        std::fs::write(root.join("proc/cmdline"), "quiet\n").unwrap();
        let u = Updater::load_at(&config, root).unwrap();
        assert_eq!(u.running.unwrap_err(), SlotError::UnknownRunning);
    }
}
