//! The box as an update sees it: the image's release file (board, version,
//! boot scheme, and on a Raspberry Pi how a new slot is tried), the public
//! key it trusts, which slot runs (the kernel
//! command line's `relaybox.slot=` on EFI boxes, the firmware's device
//! tree values on a Raspberry Pi), and one install at a time. The CLI
//! (`relaybox update`) and the web page's Update page both go through
//! [`Updater`].

use std::path::{Path, PathBuf};

use relaybox_config::UpdateConfig;

use crate::bundle::{Checked, Expect};
use crate::efi::MarkGood;
use crate::install::{BootCheck, Efi, InstallError, Pi, PiSlots, Progress};
use crate::key::{KeyError, PublicKey};
use crate::pi::{BootStep, Booted, PiTry};
use crate::slot::{Slot, SlotError, Status};
use crate::version::Version;

/// How a board boots its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// systemd-boot with boot counting (`BOOT_SCHEME=efi`).
    Efi,
    /// The Raspberry Pi firmware's autoboot.txt (`BOOT_SCHEME=rpi`), a new
    /// slot tried with the firmware's tryboot or counted by init (`PI_TRY`).
    Rpi(PiTry),
}

impl Scheme {
    /// The files every slot of this scheme needs.
    pub fn required_files(self) -> &'static [&'static str] {
        match self {
            Scheme::Efi => &["vmlinuz", "initrd.img", "cmdline.txt"],
            Scheme::Rpi(_) => &["vmlinuz", "initrd.img", "cmdline.txt", "config.txt", "start4.elf", "fixup4.dat"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Efi => "efi",
            Scheme::Rpi(_) => "rpi",
        }
    }
}

/// `/etc/relaybox/release`, written by the image builder (shell syntax, so
/// that init can source it): `BOARD`, `VERSION`, `BOOT_SCHEME` (`efi` or
/// `rpi`) and, with `rpi`, `PI_TRY` (`tryboot` with the Raspberry Pi
/// kernel, `counted` with any other; `counted` when absent).
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
        let pi_try = get("PI_TRY").ok();
        let scheme = match (get("BOOT_SCHEME")?.as_str(), pi_try) {
            ("efi", None) => Scheme::Efi,
            ("efi", Some(_)) => return Err("PI_TRY is for BOOT_SCHEME \"rpi\" only".into()),
            ("rpi", None) => Scheme::Rpi(PiTry::Counted),
            ("rpi", Some(how)) => Scheme::Rpi(how.parse()?),
            (other, _) => return Err(format!("BOOT_SCHEME {other:?}: efi or rpi")),
        };
        Ok(Release { board, version, scheme })
    }

    pub fn render(&self) -> String {
        let pi_try = match self.scheme {
            Scheme::Rpi(how) => format!("PI_TRY=\"{}\"\n", how.as_str()),
            Scheme::Efi => String::new(),
        };
        format!(
            "BOARD=\"{}\"\nVERSION=\"{}\"\nBOOT_SCHEME=\"{}\"\n{pi_try}",
            self.board,
            self.version,
            self.scheme.as_str()
        )
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
            Scheme::Rpi(_) => {
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
        let mode = match self.release.scheme {
            Scheme::Rpi(how) => how,
            Scheme::Efi => PiTry::Counted,
        };
        Pi { boot: self.config.boot_dir.clone(), slots, mode }
    }

    fn running(&self) -> Result<Running, InstallError> {
        self.running.clone().map_err(InstallError::Slot)
    }

    /// Whether the running slot still has to prove itself.
    pub fn on_trial(&self) -> Result<bool, InstallError> {
        match self.running()? {
            Running::Efi(slot) => Ok(self.efi().entries()?.of(slot).is_some_and(|e| e.on_trial())),
            Running::Rpi(booted) => Ok(self.pi().on_trial(booted)),
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
            Running::Rpi(booted) => self.pi().install(booted, self.config.boot_tries, bundle, &expect, progress),
        }
    }

    /// At every boot, before the services (init's first step once the boot
    /// partition is mounted): on a Raspberry Pi, counts a try of the slot
    /// on trial or goes back to the other slot (`reboot` set: reboot now).
    /// EFI boxes: nothing, systemd-boot counts.
    pub fn boot_check(&self) -> Result<BootCheck, InstallError> {
        match self.running()? {
            Running::Efi(_) => Ok(BootCheck { step: BootStep::Nothing, reboot: false }),
            Running::Rpi(booted) => self.pi().boot_check(booted, &self.release.version.to_string()),
        }
    }

    /// A Raspberry Pi whose other slot waits for a reboot with the
    /// firmware's tryboot flag (installed with `PI_TRY=tryboot`, not tried
    /// yet): that slot.
    pub fn tryboot_waiting(&self) -> Option<Slot> {
        match self.running.clone().ok()? {
            Running::Efi(_) => None,
            Running::Rpi(booted) => self.pi().tryboot_waiting(booted),
        }
    }

    pub fn mark_good(&self) -> Result<MarkGood, InstallError> {
        match self.running()? {
            Running::Efi(slot) => self.efi().mark_good(slot),
            Running::Rpi(booted) => self.pi().mark_good(booted),
        }
    }

    /// How many boots a new slot gets: `[Update] boot_tries`, or the one
    /// try of the Raspberry Pi firmware's tryboot.
    pub fn tries(&self) -> u32 {
        match self.release.scheme {
            Scheme::Rpi(PiTry::Tryboot) => 1,
            _ => self.config.boot_tries,
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
        // The Pi: PI_TRY says how a new slot is tried; counted when absent.
        let pi =
            |text: &str| Release::parse(&format!("BOARD=\"rpi4-arm64\"\nVERSION=\"1.0\"\n{text}")).map(|r| r.scheme);
        assert_eq!(pi("BOOT_SCHEME=\"rpi\"\n"), Ok(Scheme::Rpi(PiTry::Counted)));
        assert_eq!(pi("BOOT_SCHEME=\"rpi\"\nPI_TRY=\"tryboot\"\n"), Ok(Scheme::Rpi(PiTry::Tryboot)));
        assert_eq!(pi("BOOT_SCHEME=\"rpi\"\nPI_TRY=\"counted\"\n"), Ok(Scheme::Rpi(PiTry::Counted)));
        assert_eq!(pi("BOOT_SCHEME=rpi\nPI_TRY=sometimes\n"), Err("PI_TRY \"sometimes\": tryboot or counted".into()));
        assert!(pi("BOOT_SCHEME=efi\nPI_TRY=counted\n").is_err());
        for how in [PiTry::Tryboot, PiTry::Counted] {
            let r = Release { board: "rpi4-arm64".into(), version: "1.4.0".parse().unwrap(), scheme: Scheme::Rpi(how) };
            let text = r.render();
            assert_eq!(
                text,
                format!("BOARD=\"rpi4-arm64\"\nVERSION=\"1.4.0\"\nBOOT_SCHEME=\"rpi\"\nPI_TRY=\"{}\"\n", how.as_str())
            );
            assert_eq!(Release::parse(&text).unwrap(), r);
        }
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

    /// A Raspberry Pi as the updater sees it, laid out in a directory:
    /// the device tree values the firmware leaves, partition 1 (the boot
    /// directory, autoboot.txt), the two slot partitions beside it, and the
    /// release file of whichever slot runs. `boot` plays the firmware: it
    /// boots autoboot.txt's [all] partition, or [tryboot]'s with the flag.
    struct PiBox {
        fx: crate::bundle::tests::Fixture,
        root: PathBuf,
        config: UpdateConfig,
        mode: &'static str,
        /// The version each slot's image carries.
        versions: [String; 2],
    }

    impl PiBox {
        fn new(mode: &'static str) -> PiBox {
            let fx = crate::bundle::tests::Fixture::pi();
            let root = fx.dir.path().join("box");
            std::fs::create_dir_all(root.join("proc/device-tree/chosen/bootloader")).unwrap();
            for d in ["disk/p1", "disk/slot-a", "disk/slot-b"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::write(root.join("disk/p1/autoboot.txt"), crate::pi::Autoboot::for_good(Slot::A).render()).unwrap();
            let manifest = crate::bundle::describe("rpi4-arm64", "1.0", &fx.files).unwrap();
            std::fs::write(root.join("disk/slot-a/manifest.json"), manifest.to_json()).unwrap();
            std::fs::write(root.join("update.pub"), fx.key.public_key().to_pem()).unwrap();
            let config = UpdateConfig {
                release_file: root.join("release"),
                public_key: root.join("update.pub"),
                boot_dir: root.join("disk/p1"),
                work_dir: root.join("work"),
                boot_tries: 3,
                ..UpdateConfig::default()
            };
            PiBox { fx, root, config, mode, versions: ["1.0".into(), String::new()] }
        }

        fn autoboot(&self) -> crate::pi::Autoboot {
            crate::pi::Autoboot::parse(&std::fs::read_to_string(self.root.join("disk/p1/autoboot.txt")).unwrap())
                .unwrap()
        }

        /// The firmware's part of a boot, then the updater of the slot it
        /// started (a new process, with that slot's release file).
        fn boot(&mut self, tryboot: bool) -> Updater {
            let a = self.autoboot();
            let partition = if tryboot { a.tryboot } else { a.boot };
            let dt = self.root.join("proc/device-tree/chosen/bootloader");
            std::fs::write(dt.join("partition"), partition.to_be_bytes()).unwrap();
            std::fs::write(dt.join("tryboot"), u32::from(tryboot).to_be_bytes()).unwrap();
            let slot = crate::pi::slot_of(partition).unwrap();
            let version = &self.versions[if slot == Slot::A { 0 } else { 1 }];
            let release =
                format!("BOARD=\"rpi4-arm64\"\nVERSION=\"{version}\"\nBOOT_SCHEME=\"rpi\"\nPI_TRY=\"{}\"\n", self.mode);
            std::fs::write(&self.config.release_file, release).unwrap();
            Updater::load_at(&self.config, &self.root).unwrap()
        }

        fn install(&mut self, u: &Updater, version: &str) -> Vec<Progress> {
            let bundle = self.fx.bundle("rpi4-arm64", version);
            let mut steps = Vec::new();
            u.install(&bundle, false, &mut |p| steps.push(p)).unwrap();
            let target = u.running.clone().unwrap().slot().other();
            self.versions[if target == Slot::A { 0 } else { 1 }] = version.to_string();
            steps
        }
    }

    /// The counted fallback end to end: install, then boots of a slot whose
    /// health check never passes until its tries are used up; the next boot
    /// of it points autoboot.txt back at the old slot and reboots, and the
    /// old slot says the update failed. Then an update that is healthy and
    /// sticks.
    #[test]
    fn a_counted_pi_update_that_never_gets_healthy_rolls_back_and_a_good_one_sticks() {
        let mut pi = PiBox::new("counted");
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap(), Running::Rpi(Booted { slot: Slot::A, tryboot: false }));
        assert_eq!(u.release.scheme, Scheme::Rpi(PiTry::Counted));
        assert_eq!(u.tries(), 3);
        assert_eq!(u.boot_check().unwrap().step, BootStep::Nothing);
        assert!(!u.on_trial().unwrap());
        let steps = pi.install(&u, "1.1");
        assert!(matches!(steps.last(), Some(Progress::Armed { slot: Slot::B, .. })), "{steps:?}");
        assert_eq!(pi.autoboot(), crate::pi::Autoboot { boot: 3, tryboot: 2 });
        assert_eq!(u.status().unwrap().other.state, crate::SlotState::Trial { left: 3, done: 0 });
        assert_eq!(u.tryboot_waiting(), None, "counted: a plain reboot tries it");

        // Boots 1 to 3 of b: each takes a try; the health check never passes
        // and reboots (a plain reboot: the firmware boots [all] again).
        for n in 1..=3u32 {
            let u = pi.boot(false);
            assert_eq!(u.running.clone().unwrap().slot(), Slot::B, "boot {n}");
            let check = u.boot_check().unwrap();
            assert!(matches!(check.step, BootStep::Count(_)) && !check.reboot, "boot {n}: {check:?}");
            assert!(u.on_trial().unwrap(), "boot {n}");
            let s = u.status().unwrap();
            assert_eq!(s.running.state, crate::SlotState::Trial { left: 3 - n, done: n }, "boot {n}");
            assert!(s.last_update().unwrap().contains("is on trial"), "boot {n}");
        }
        // Boot 4 of b: no tries left, back to a.
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::B);
        let check = u.boot_check().unwrap();
        assert!(matches!(check.step, BootStep::RollBack { to: Slot::A, .. }) && check.reboot, "{check:?}");
        assert_eq!(pi.autoboot(), crate::pi::Autoboot { boot: 2, tryboot: 3 });

        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::A);
        assert_eq!(u.boot_check().unwrap().step, BootStep::Nothing);
        assert!(!u.on_trial().unwrap());
        let s = u.status().unwrap();
        assert_eq!(s.other.state, crate::SlotState::Failed { tries: 3 });
        assert_eq!(s.other.version.as_deref(), Some("1.1"));
        let line = s.last_update().unwrap();
        assert!(line.starts_with("update to 1.1 failed, rolled back: slot b was tried 3 times"), "{line}");
        // and it stays so, boot after boot
        let u = pi.boot(false);
        assert_eq!((u.running.clone().unwrap().slot(), u.boot_check().unwrap().step), (Slot::A, BootStep::Nothing));
        assert_eq!(u.status().unwrap().other.state, crate::SlotState::Failed { tries: 3 });

        // A fixed version replaces the failed slot; it is healthy at its first boot.
        pi.install(&u, "1.2");
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::B);
        assert!(matches!(u.boot_check().unwrap().step, BootStep::Count(_)));
        assert!(u.on_trial().unwrap());
        assert!(matches!(u.mark_good().unwrap(), MarkGood::Rename { .. }));
        assert!(!u.on_trial().unwrap());
        assert!(!pi.root.join("disk/p1/relaybox-update.json").exists());
        assert_eq!(pi.autoboot(), crate::pi::Autoboot { boot: 3, tryboot: 2 });
        for _ in 0..3 {
            let u = pi.boot(false);
            assert_eq!(u.running.clone().unwrap().slot(), Slot::B);
            assert_eq!(u.boot_check().unwrap().step, BootStep::Nothing);
            assert!(!u.on_trial().unwrap());
            assert_eq!(u.mark_good().unwrap(), MarkGood::AlreadyGood);
            let s = u.status().unwrap();
            assert_eq!(
                (s.running.state.clone(), s.other.state.clone()),
                (crate::SlotState::Good, crate::SlotState::Good)
            );
            assert_eq!((s.running.version.as_deref(), s.other.version.as_deref()), (Some("1.2"), Some("1.0")));
            assert_eq!(s.last_update(), None);
        }
    }

    /// The operator switches back to the old slot by hand during a trial
    /// (autoboot.txt's [all] edited on another computer): the old slot runs,
    /// nothing reboots, the trial is over; a one-off boot of the old slot
    /// with the tryboot flag leaves the trial going.
    #[test]
    fn a_counted_pi_trial_switched_back_by_hand_does_not_loop() {
        let mut pi = PiBox::new("counted");
        let u = pi.boot(false);
        pi.install(&u, "1.1");
        let u = pi.boot(false);
        assert!(matches!(u.boot_check().unwrap().step, BootStep::Count(_)));
        // [tryboot] names a during the trial: one boot of it, then b again
        let u = pi.boot(true);
        assert_eq!(u.running.clone().unwrap(), Running::Rpi(Booted { slot: Slot::A, tryboot: true }));
        assert_eq!(u.boot_check().unwrap().step, BootStep::Nothing);
        assert!(!u.on_trial().unwrap(), "the slot to go back to is not on trial");
        assert_eq!(u.status().unwrap().other.state, crate::SlotState::Trial { left: 2, done: 1 });
        assert_eq!(pi.autoboot().normal_slot(), Some(Slot::B));
        // switched back by hand
        std::fs::write(pi.root.join("disk/p1/autoboot.txt"), crate::pi::Autoboot::for_good(Slot::A).render()).unwrap();
        for _ in 0..3 {
            let u = pi.boot(false);
            assert_eq!(u.running.clone().unwrap().slot(), Slot::A);
            let check = u.boot_check().unwrap();
            assert!(!check.reboot, "{check:?}");
            assert!(!u.on_trial().unwrap());
            assert_eq!(u.status().unwrap().other.state, crate::SlotState::Failed { tries: 1 });
        }
        assert_eq!(pi.autoboot().normal_slot(), Some(Slot::A));
    }

    /// PI_TRY=tryboot (the Raspberry Pi kernel): [tryboot] names the new
    /// slot and only a reboot with the flag tries it, once.
    #[test]
    fn a_tryboot_pi_update_is_tried_once_with_the_flag() {
        let mut pi = PiBox::new("tryboot");
        let u = pi.boot(false);
        assert_eq!(u.release.scheme, Scheme::Rpi(PiTry::Tryboot));
        assert_eq!(u.tries(), 1);
        let steps = pi.install(&u, "1.1");
        assert!(matches!(steps.last(), Some(Progress::Armed { how, .. }) if how.contains("tryboot")), "{steps:?}");
        assert_eq!(pi.autoboot(), crate::pi::Autoboot { boot: 2, tryboot: 3 });
        assert_eq!(u.tryboot_waiting(), Some(Slot::B));
        // a plain reboot does not try it
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::A);
        assert_eq!(u.boot_check().unwrap().step, BootStep::Nothing);
        assert_eq!(u.tryboot_waiting(), Some(Slot::B));
        // with the flag: one try; not healthy, a plain reboot goes back
        let u = pi.boot(true);
        assert_eq!(u.running.clone().unwrap(), Running::Rpi(Booted { slot: Slot::B, tryboot: true }));
        assert!(matches!(u.boot_check().unwrap().step, BootStep::Count(_)));
        assert!(u.on_trial().unwrap());
        assert_eq!(u.tryboot_waiting(), None);
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::A);
        assert_eq!(u.status().unwrap().other.state, crate::SlotState::Failed { tries: 1 });
        assert_eq!(u.tryboot_waiting(), None, "a failed slot is not tried again");
        // installed again and healthy at its try: kept
        pi.install(&u, "1.2");
        let u = pi.boot(true);
        assert!(matches!(u.boot_check().unwrap().step, BootStep::Count(_)));
        assert!(matches!(u.mark_good().unwrap(), MarkGood::Rename { .. }));
        let u = pi.boot(false);
        assert_eq!(u.running.clone().unwrap().slot(), Slot::B);
        assert!(!u.on_trial().unwrap());
        assert_eq!(u.status().unwrap().last_update(), None);
    }
}
