//! The file-system side of an update, for both boot schemes: checking a
//! bundle whole before anything is written, writing the inactive slot
//! (synced as it goes, then read back from the disk and compared with the
//! manifest), arming it for the boot loader, marking the running slot good
//! and reading the slots' state. Paths are given by the caller, so the
//! same code runs on a box (the EFI system partition on `/boot`) and in
//! tests (temporary directories).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::bundle::{self, BundleError, Checked, Expect, FileEvent};
use crate::efi::{Entries, MarkGood};
use crate::pi::{self, Autoboot, AutobootError, BootStep, Booted, PiTry, Trial};
use crate::slot::{Slot, SlotError, SlotReport, SlotState, Status};

/// The signed manifest a slot keeps of what it holds.
pub const SLOT_MANIFEST: &str = "manifest.json";
pub const SLOT_SIGNATURE: &str = "manifest.sig";
/// Written data is synced (and reported) every this many bytes.
const SYNC_EVERY: u64 = 4 * 1024 * 1024;

/// What an install reports as it goes (the console lines and the web
/// page's progress bar come from these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The whole bundle was read and matches its signed manifest.
    Checked {
        version: String,
        board: String,
        bytes: u64,
    },
    /// The target slot is no longer bootable; its files are being replaced.
    Cleared {
        slot: Slot,
    },
    /// `done` of `total` bytes written and synced.
    Written {
        slot: Slot,
        done: u64,
        total: u64,
    },
    /// Reading the slot back from the disk.
    Verifying {
        slot: Slot,
    },
    Verified {
        slot: Slot,
    },
    /// The boot loader will try the slot (`how` says when).
    Armed {
        slot: Slot,
        version: String,
        how: String,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The line `relaybox update install` prints (the web page shows the same).
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Checked { version, board, bytes } => write!(
                f,
                "bundle checked: version {version} for {board}, {}, every file matches the signed manifest",
                mib(*bytes)
            ),
            Progress::Cleared { slot } => write!(f, "slot {slot} is no longer bootable; writing it"),
            Progress::Written { slot, done, total } => {
                write!(f, "slot {slot}: written {} of {}", mib(*done), mib(*total))
            }
            Progress::Verifying { slot } => write!(f, "slot {slot}: reading back what was written"),
            Progress::Verified { slot } => write!(f, "slot {slot}: verified"),
            Progress::Armed { slot, version, how } => write!(f, "slot {slot} armed with version {version}: {how}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} as read back from the disk does not match the manifest: the slot was not armed")]
    Verify(String),
    #[error("the bundle changed between its check and its installation")]
    Changed,
    #[error(transparent)]
    Autoboot(#[from] AutobootError),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.to_string();
    move |source| InstallError::Io { what, source }
}

/// Reads the whole bundle once and checks it; writes nothing. Keeps the
/// first line of `cmdline.txt` (an EFI slot's kernel command line).
pub fn check(bundle_path: &Path, expect: &Expect) -> Result<Checked, BundleError> {
    let (mut checked, files) = bundle::open(std::io::BufReader::new(std::fs::File::open(bundle_path)?), expect)?;
    let (mut current, mut cmdline) = (String::new(), Vec::new());
    files.each(|ev| {
        match ev {
            FileEvent::Begin(f) => current = f.name.clone(),
            FileEvent::Data(d) if current == "cmdline.txt" && cmdline.len() < 4096 => cmdline.extend_from_slice(d),
            _ => {}
        }
        Ok(())
    })?;
    checked.cmdline = Some(String::from_utf8_lossy(&cmdline).lines().next().unwrap_or("").to_string());
    Ok(checked)
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    let fd = std::fs::File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
    rustix::fs::syncfs(&fd)
        .map_err(|e| InstallError::Io { what: format!("syncing {}", dir.display()), source: e.into() })
}

/// Drops a file's pages from the page cache, so that the next read comes
/// from the disk (best effort: a file system may not support it).
fn forget_cached(file: &std::fs::File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Writes `path` through a temporary file and a rename, synced.
fn write_replace(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {} to {}", tmp.display(), path.display())))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    forget_cached(&f);
    let mut r = std::io::BufReader::with_capacity(64 * 1024, f);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::hex(ctx.finish().as_ref()))
}

/// Writes the files of an already checked bundle into `dir` (emptied
/// first; it must not be bootable meanwhile), with the slot's manifest, and
/// reads them back from the disk to compare them with the manifest.
pub fn write_slot(
    bundle_path: &Path,
    expect: &Expect,
    checked: &Checked,
    slot: Slot,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), InstallError> {
    let reader = std::io::BufReader::new(std::fs::File::open(bundle_path).map_err(BundleError::from)?);
    let (again, files) = bundle::open(reader, expect)?;
    if again.manifest_bytes != checked.manifest_bytes {
        return Err(InstallError::Changed);
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    for e in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let p = e.map_err(io(format!("reading {}", dir.display())))?.path();
        if p.is_file() {
            std::fs::remove_file(&p).map_err(io(format!("removing {}", p.display())))?;
        }
    }
    sync_dir(dir)?;
    let total = checked.manifest.total_size();
    let (mut done, mut reported) = (0u64, 0u64);
    let mut current: Option<std::fs::File> = None;
    let result = files.each(|ev| {
        match ev {
            FileEvent::Begin(f) => current = Some(std::fs::File::create(dir.join(&f.name))?),
            FileEvent::Data(d) => {
                let file = current.as_mut().expect("Begin comes first");
                file.write_all(d)?;
                done += d.len() as u64;
                if done - reported >= SYNC_EVERY {
                    file.sync_data()?;
                    reported = done;
                    progress(Progress::Written { slot, done, total });
                }
            }
            FileEvent::End(_) => {
                let file = current.take().expect("Begin comes first");
                file.sync_all()?;
                forget_cached(&file);
            }
        }
        Ok(())
    });
    result.map_err(|e| match e {
        BundleError::Sink(source) => InstallError::Io { what: format!("writing slot {slot}"), source },
        other => InstallError::Bundle(other),
    })?;
    progress(Progress::Written { slot, done, total });
    std::fs::write(dir.join(SLOT_SIGNATURE), &checked.signature).map_err(io("writing the slot's signature"))?;
    std::fs::write(dir.join(SLOT_MANIFEST), &checked.manifest_bytes).map_err(io("writing the slot's manifest"))?;
    sync_dir(dir)?;
    progress(Progress::Verifying { slot });
    for f in &checked.manifest.files {
        let path = dir.join(&f.name);
        let got = sha256_of(&path).map_err(io(format!("reading back {}", path.display())))?;
        if got != f.sha256 {
            return Err(InstallError::Verify(f.name.clone()));
        }
    }
    progress(Progress::Verified { slot });
    Ok(())
}

/// A slot's version, from its manifest (None: empty or unreadable).
pub fn slot_version(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(SLOT_MANIFEST)).ok()?;
    let m: crate::manifest::Manifest = serde_json::from_slice(&bytes).ok()?;
    Some(m.version)
}

/// Makes a read-only mount writable for as long as the guard lives. A path
/// that is not a read-only mount point (a test directory, a box that
/// mounts /boot read-write) is left as it is.
pub struct Writable {
    remounted: Option<PathBuf>,
}

impl Writable {
    pub fn new(mount_point: &Path) -> Result<Writable, InstallError> {
        let canonical = std::fs::canonicalize(mount_point).unwrap_or_else(|_| mount_point.to_path_buf());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let read_only = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && Path::new(&f[1].replace("\\040", " ")) == canonical && f[3].split(',').any(|o| o == "ro")
        });
        if !read_only {
            return Ok(Writable { remounted: None });
        }
        rustix::mount::mount_remount(&canonical, rustix::mount::MountFlags::empty(), "").map_err(|e| {
            InstallError::Io { what: format!("remounting {} read-write", canonical.display()), source: e.into() }
        })?;
        Ok(Writable { remounted: Some(canonical) })
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        if let Some(p) = &self.remounted {
            if let Ok(f) = std::fs::File::open(p) {
                let _ = rustix::fs::syncfs(&f);
            }
            let _ = rustix::mount::mount_remount(p, rustix::mount::MountFlags::RDONLY, "");
        }
    }
}

/// An EFI box: systemd-boot's entries and both slots on the EFI system
/// partition mounted at `esp`.
pub struct Efi {
    pub esp: PathBuf,
}

impl Efi {
    pub fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader/entries")
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.esp.join(format!("slot-{slot}"))
    }

    pub fn entries(&self) -> Result<Entries, InstallError> {
        let dir = self.entries_dir();
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io(format!("reading {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        Ok(Entries::from_names(names.iter().map(String::as_str)))
    }

    /// Checks `bundle_path`, then writes it into the slot that is not
    /// running and arms it with `tries` boots.
    pub fn install(
        &self,
        running: Slot,
        tries: u32,
        bundle_path: &Path,
        expect: &Expect,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Checked, InstallError> {
        let plan = self.entries()?.plan_install(running, tries)?;
        let checked = check(bundle_path, expect)?;
        progress(Progress::Checked {
            version: checked.manifest.version.clone(),
            board: checked.manifest.board.clone(),
            bytes: checked.manifest.total_size(),
        });
        let cmdline = checked.cmdline.clone().unwrap_or_default();
        let _rw = Writable::new(&self.esp)?;
        let entries = self.entries_dir();
        for name in &plan.remove {
            let p = entries.join(name);
            std::fs::remove_file(&p).map_err(io(format!("removing {}", p.display())))?;
        }
        sync_dir(&entries)?;
        progress(Progress::Cleared { slot: plan.target });
        write_slot(bundle_path, expect, &checked, plan.target, &self.slot_dir(plan.target), progress)?;
        let text = plan.entry.text(&checked.manifest.version, &cmdline);
        // systemd-boot reads only *.conf: the temporary name is invisible to it.
        write_replace(&entries.join(plan.entry.file_name()), text.as_bytes())?;
        progress(Progress::Armed {
            slot: plan.target,
            version: checked.manifest.version.clone(),
            how: format!("it boots next ({tries} tr{}; reboot to try it)", if tries == 1 { "y" } else { "ies" }),
        });
        Ok(checked)
    }

    pub fn mark_good(&self, running: Slot) -> Result<MarkGood, InstallError> {
        let plan = self.entries()?.plan_mark_good(running)?;
        if let MarkGood::Rename { from, to } = &plan {
            let _rw = Writable::new(&self.esp)?;
            let dir = self.entries_dir();
            std::fs::rename(dir.join(from), dir.join(to)).map_err(io(format!("renaming {from} to {to}")))?;
            sync_dir(&dir)?;
        }
        Ok(plan)
    }

    pub fn status(&self, running: Slot, board: &str, running_version: &str) -> Result<Status, InstallError> {
        let entries = self.entries()?;
        let state = |slot: Slot| match entries.of(slot) {
            None => SlotState::Empty,
            Some(e) => match e.tries {
                None => SlotState::Good,
                Some(t) if t.left == 0 && slot != running => SlotState::Failed { tries: t.done },
                Some(t) => SlotState::Trial { left: t.left, done: t.done },
            },
        };
        let report = |slot: Slot| SlotReport { slot, version: slot_version(&self.slot_dir(slot)), state: state(slot) };
        Ok(Status {
            board: board.to_string(),
            running: report(running),
            other: report(running.other()),
            running_version: running_version.to_string(),
        })
    }
}

/// Where a Raspberry Pi's slot partitions are.
pub enum PiSlots {
    /// Directories (tests).
    Dirs([PathBuf; 2]),
    /// Block devices, mounted (vfat) at `mount_at` while they are used.
    Devices { devices: [PathBuf; 2], mount_at: PathBuf },
}

/// A Raspberry Pi box: `autoboot.txt` and the trial record on the first
/// partition, mounted at `boot`; the slots on partitions 2 and 3; how this
/// slot arms an install (`PI_TRY`).
pub struct Pi {
    pub boot: PathBuf,
    pub slots: PiSlots,
    pub mode: PiTry,
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty());
    }
}

/// What `boot-check` did ([`Pi::boot_check`]), for init's console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootCheck {
    pub step: BootStep,
    /// The record, `autoboot.txt` and any slot it names were written and
    /// synced: reboot now (the box goes back to the other slot).
    pub reboot: bool,
}

impl Pi {
    fn with_slot<T>(
        &self,
        slot: Slot,
        writable: bool,
        f: impl FnOnce(&Path) -> Result<T, InstallError>,
    ) -> Result<T, InstallError> {
        let i = if slot == Slot::A { 0 } else { 1 };
        match &self.slots {
            PiSlots::Dirs(dirs) => f(&dirs[i]),
            PiSlots::Devices { devices, mount_at } => {
                std::fs::create_dir_all(mount_at).map_err(io(format!("creating {}", mount_at.display())))?;
                let flags =
                    if writable { rustix::mount::MountFlags::empty() } else { rustix::mount::MountFlags::RDONLY };
                rustix::mount::mount(&devices[i], mount_at, "vfat", flags, None).map_err(|e| InstallError::Io {
                    what: format!("mounting {} on {}", devices[i].display(), mount_at.display()),
                    source: e.into(),
                })?;
                let _guard = Mounted(mount_at.clone());
                f(mount_at)
            }
        }
    }

    /// A slot's version, from its manifest (None: empty, unreadable, or the
    /// partition does not mount).
    fn version_of(&self, slot: Slot) -> Option<String> {
        self.with_slot(slot, false, |dir| Ok(slot_version(dir))).unwrap_or(None)
    }

    /// The trial record: None when there is none, Err with the reason when
    /// it cannot be read. A record whose rename was cut short (the old one
    /// gone, the new one complete under its temporary name: [`write_replace`]
    /// syncs it before the rename) is read from the temporary name.
    pub fn record(&self) -> Result<Option<Trial>, String> {
        let path = self.boot.join(pi::TRIAL);
        match std::fs::read(&path) {
            Ok(bytes) => Trial::parse(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::read(path.with_extension("tmp")).ok().map(|b| Trial::parse(&b)) {
                    Some(Ok(t)) => Ok(Some(t)),
                    _ => Ok(None),
                }
            }
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// The record when it reads (an unreadable one counts as none here:
    /// boot-check deals with it).
    fn readable_record(&self) -> Option<Trial> {
        self.record().ok().flatten()
    }

    fn write_record(&self, trial: &Trial) -> Result<(), InstallError> {
        write_replace(&self.boot.join(pi::TRIAL), &trial.to_json())
    }

    fn remove_record(&self) -> Result<(), InstallError> {
        let path = self.boot.join(pi::TRIAL);
        for p in [path.clone(), path.with_extension("tmp")] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(InstallError::Io { what: format!("removing {}", p.display()), source: e }),
            }
        }
        sync_dir(&self.boot)
    }

    /// autoboot.txt (None: missing or unreadable).
    pub fn autoboot(&self) -> Option<Autoboot> {
        Autoboot::parse(&std::fs::read_to_string(self.boot.join(pi::AUTOBOOT)).ok()?).ok()
    }

    fn write_autoboot(&self, a: Autoboot) -> Result<(), InstallError> {
        write_replace(&self.boot.join(pi::AUTOBOOT), a.render().as_bytes())
    }

    /// Whether the running slot still has to prove itself.
    pub fn on_trial(&self, booted: Booted) -> bool {
        pi::on_trial(booted, self.readable_record().as_ref())
    }

    /// Checks `bundle_path`, then writes it into the slot that is not
    /// running and arms it: tryboot, `[tryboot]` names it (one try, after a
    /// reboot with the tryboot flag); counted, `[all]` names it for `tries`
    /// boots, counted by [`Pi::boot_check`].
    pub fn install(
        &self,
        booted: Booted,
        tries: u32,
        bundle_path: &Path,
        expect: &Expect,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Checked, InstallError> {
        let target = booted.plan_install(self.readable_record().as_ref())?;
        let checked = check(bundle_path, expect)?;
        progress(Progress::Checked {
            version: checked.manifest.version.clone(),
            board: checked.manifest.board.clone(),
            bytes: checked.manifest.total_size(),
        });
        let version = checked.manifest.version.clone();
        let _rw = Writable::new(&self.boot)?;
        // [all] on the running slot, and no record of the target that the
        // firmware or boot-check would act on, before a byte of the target
        // changes: a cut from here on boots the running slot. Counted, the
        // record says so meanwhile (no tries: "not tried" on the status
        // page, and boot-check leaves it alone).
        match self.mode {
            PiTry::Tryboot => self.remove_record()?,
            PiTry::Counted => self.write_record(&Trial::counted(target, &version, 0))?,
        }
        self.write_autoboot(Autoboot::for_good(booted.slot))?;
        progress(Progress::Cleared { slot: target });
        self.with_slot(target, true, |dir| write_slot(bundle_path, expect, &checked, target, dir, progress))?;
        let how = match self.mode {
            PiTry::Tryboot => {
                self.write_record(&Trial { slot: target, version: version.clone(), tried: 0, counted: None })?;
                "it boots once after a reboot with the firmware's tryboot flag (relaybox-reboot, the web page's \
                 Reboot button or `install --reboot`; the Raspberry Pi kernel passes the flag on: board/README.md)"
                    .to_string()
            }
            PiTry::Counted => {
                // The record first: with it and [all] still on the running
                // slot, a cut before the next write ends the trial untried.
                self.write_record(&Trial::counted(target, &version, tries.max(1)))?;
                self.write_autoboot(Autoboot::boots(target))?;
                format!("it boots next ({tries} tr{}; reboot to try it)", if tries == 1 { "y" } else { "ies" })
            }
        };
        progress(Progress::Armed { slot: target, version, how });
        Ok(checked)
    }

    /// At every boot, before anything else: counts a try of the slot on
    /// trial, or goes back to the other slot ([`pi::boot_step`] decides).
    /// With `reboot` set in the answer everything is written and synced and
    /// the caller reboots at once.
    pub fn boot_check(&self, booted: Booted, running_version: &str) -> Result<BootCheck, InstallError> {
        let record = self.record();
        if matches!(record, Ok(None)) {
            return Ok(BootCheck { step: BootStep::Nothing, reboot: false });
        }
        let unreadable = record.is_err();
        let other = booted.slot.other();
        let other_has_firmware = self.version_of(other).is_some();
        let autoboot = self.autoboot();
        let step = pi::boot_step(booted, record, autoboot, other_has_firmware, running_version);
        let mut reboot = false;
        match &step {
            BootStep::Nothing => {}
            BootStep::Count(t) => {
                let _rw = Writable::new(&self.boot)?;
                self.write_record(t)?;
            }
            BootStep::RollBack { record, to, .. } => {
                let _rw = Writable::new(&self.boot)?;
                if unreadable {
                    // Kept to look at; a readable record replaces it.
                    let _ = std::fs::copy(self.boot.join(pi::TRIAL), self.boot.join(pi::TRIAL_SET_ASIDE));
                }
                // The record (no tries left) before autoboot.txt: a cut in
                // between boots the slot on trial again, which decides again.
                self.write_record(record)?;
                self.write_autoboot(Autoboot::boots(*to))?;
                reboot = true;
            }
            BootStep::TrialOver(t) => {
                let _rw = Writable::new(&self.boot)?;
                self.write_record(t)?;
                if autoboot != Some(Autoboot::for_good(booted.slot)) {
                    self.write_autoboot(Autoboot::for_good(booted.slot))?;
                }
            }
            BootStep::Keep { .. } => {
                let _rw = Writable::new(&self.boot)?;
                if autoboot != Some(Autoboot::for_good(booted.slot)) {
                    self.write_autoboot(Autoboot::for_good(booted.slot))?;
                }
                self.remove_record()?;
            }
            BootStep::SetAside { .. } => {
                let _rw = Writable::new(&self.boot)?;
                let path = self.boot.join(pi::TRIAL);
                let aside = self.boot.join(pi::TRIAL_SET_ASIDE);
                std::fs::rename(&path, &aside).map_err(io(format!(
                    "moving {} to {}",
                    path.display(),
                    aside.display()
                )))?;
                sync_dir(&self.boot)?;
            }
        }
        Ok(BootCheck { step, reboot })
    }

    /// Tryboot: the slot a reboot with the tryboot flag tries now.
    pub fn tryboot_waiting(&self, booted: Booted) -> Option<Slot> {
        booted.tryboot_waiting(self.readable_record().as_ref(), self.autoboot())
    }

    pub fn mark_good(&self, booted: Booted) -> Result<MarkGood, InstallError> {
        let path = self.boot.join(pi::AUTOBOOT);
        let current = self.autoboot();
        let wanted = Autoboot::for_good(booted.slot);
        let record = self.record();
        let names_running = matches!(&record, Ok(Some(t)) if t.slot == booted.slot);
        if current == Some(wanted) && !booted.tryboot && !names_running {
            return Ok(MarkGood::AlreadyGood);
        }
        let _rw = Writable::new(&self.boot)?;
        if current != Some(wanted) {
            write_replace(&path, wanted.render().as_bytes())?;
        }
        if !matches!(record, Ok(None)) {
            self.remove_record()?;
        }
        let from = current.map_or_else(|| "(no readable autoboot.txt)".to_string(), |c| c.render());
        Ok(MarkGood::Rename { from, to: wanted.render() })
    }

    pub fn status(&self, booted: Booted, board: &str, running_version: &str) -> Result<Status, InstallError> {
        let trial = self.readable_record();
        let other = booted.slot.other();
        let other_version = self.version_of(other);
        let (running_state, other_state) = booted.states(trial.as_ref(), self.autoboot(), other_version.is_some());
        Ok(Status {
            board: board.to_string(),
            running: SlotReport { slot: booted.slot, version: self.version_of(booted.slot), state: running_state },
            other: SlotReport {
                slot: other,
                version: other_version.or(trial.filter(|t| t.slot == other).map(|t| t.version)),
                state: other_state,
            },
            running_version: running_version.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::{expect, Fixture};

    /// An install's progress callback that cuts the power (panics) when
    /// the install reaches `step`.
    fn power_cut_at(step: &'static str) -> impl FnMut(Progress) {
        move |p| {
            let at = match p {
                Progress::Cleared { .. } => "cleared",
                Progress::Written { .. } => "written",
                Progress::Verifying { .. } => "verifying",
                Progress::Verified { .. } => "verified",
                _ => "",
            };
            if at == step {
                panic!("power cut at {step}");
            }
        }
    }
    use crate::version::Version;

    fn efi_box(fx: &Fixture) -> Efi {
        let esp = fx.dir.path().join("esp");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        std::fs::create_dir_all(esp.join("slot-a")).unwrap();
        std::fs::write(esp.join("loader/entries/relaybox-1-a.conf"), "title relaybox\n").unwrap();
        std::fs::write(esp.join("slot-a/vmlinuz"), "old kernel").unwrap();
        Efi { esp }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_efi_install_writes_the_other_slot_and_arms_it_last() {
        let fx = Fixture::new();
        let efi = efi_box(&fx);
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let bundle = fx.bundle("qemu-x86_64", "1.1");
        let mut steps = Vec::new();
        efi.install(Slot::A, 3, &bundle, &expect(&key, &running), &mut |p| steps.push(p)).unwrap();
        assert_eq!(listing(&efi.entries_dir()), ["relaybox-1-a.conf", "relaybox-2-b+3.conf"]);
        let entry = std::fs::read_to_string(efi.entries_dir().join("relaybox-2-b+3.conf")).unwrap();
        assert!(entry.contains("options console=ttyS0 quiet relaybox.slot=b\n"), "{entry}");
        assert_eq!(
            listing(&efi.slot_dir(Slot::B)),
            ["cmdline.txt", "initrd.img", "manifest.json", "manifest.sig", "vmlinuz"]
        );
        for (name, path) in &fx.files {
            assert_eq!(std::fs::read(efi.slot_dir(Slot::B).join(name)).unwrap(), std::fs::read(path).unwrap());
        }
        assert_eq!(std::fs::read(efi.slot_dir(Slot::A).join("vmlinuz")).unwrap(), b"old kernel");
        assert!(matches!(steps[0], Progress::Checked { .. }));
        assert!(matches!(steps.last(), Some(Progress::Armed { slot: Slot::B, .. })));
        let status = efi.status(Slot::A, "qemu-x86_64", "1.0").unwrap();
        assert_eq!(status.other.state, SlotState::Trial { left: 3, done: 0 });
        assert_eq!(status.other.version.as_deref(), Some("1.1"));

        // systemd-boot tries b three times, it never gets marked good: back on a
        std::fs::rename(efi.entries_dir().join("relaybox-2-b+3.conf"), efi.entries_dir().join("relaybox-2-b+0-3.conf"))
            .unwrap();
        assert_eq!(efi.entries().unwrap().next_boot().unwrap().slot, Slot::A);
        let status = efi.status(Slot::A, "qemu-x86_64", "1.0").unwrap();
        assert_eq!(status.other.state, SlotState::Failed { tries: 3 });
        assert!(status.last_update().unwrap().starts_with("update to 1.1 failed, rolled back"));

        // a second install replaces the failed slot; once b runs it is marked good
        let newer = fx.bundle("qemu-x86_64", "1.2");
        efi.install(Slot::A, 3, &newer, &expect(&key, &running), &mut |_| {}).unwrap();
        assert_eq!(listing(&efi.entries_dir()), ["relaybox-1-a.conf", "relaybox-3-b+3.conf"]);
        std::fs::rename(efi.entries_dir().join("relaybox-3-b+3.conf"), efi.entries_dir().join("relaybox-3-b+2-1.conf"))
            .unwrap();
        assert!(matches!(efi.mark_good(Slot::B).unwrap(), MarkGood::Rename { .. }));
        assert_eq!(listing(&efi.entries_dir()), ["relaybox-1-a.conf", "relaybox-3-b.conf"]);
        assert_eq!(efi.mark_good(Slot::B).unwrap(), MarkGood::AlreadyGood);
        let status = efi.status(Slot::B, "qemu-x86_64", "1.2").unwrap();
        assert_eq!((status.running.state.clone(), status.other.state.clone()), (SlotState::Good, SlotState::Good));
        assert_eq!(status.last_update(), None);
    }

    /// The power cut, at each step an install reports: the slot being
    /// written never has a boot entry, so the running slot boots next.
    #[test]
    fn a_cut_at_any_step_leaves_the_running_slot_booting_next() {
        let fx = Fixture::new();
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let bundle = fx.bundle("qemu-x86_64", "1.1");
        for step in ["cleared", "written", "verifying", "verified"] {
            let efi = efi_box(&fx);
            let _ = std::fs::remove_dir_all(efi.slot_dir(Slot::B));
            for e in std::fs::read_dir(efi.entries_dir()).unwrap() {
                let p = e.unwrap().path();
                if !p.ends_with("relaybox-1-a.conf") {
                    std::fs::remove_file(p).unwrap();
                }
            }
            let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                efi.install(Slot::A, 3, &bundle, &expect(&key, &running), &mut power_cut_at(step))
            }));
            assert!(cut.is_err(), "{step}");
            assert_eq!(listing(&efi.entries_dir()), ["relaybox-1-a.conf"], "cut at {step}");
            assert_eq!(efi.entries().unwrap().next_boot().unwrap().slot, Slot::A, "cut at {step}");
            assert_eq!(efi.status(Slot::A, "qemu-x86_64", "1.0").unwrap().other.state, SlotState::Empty);
        }
    }

    #[test]
    fn a_refused_bundle_writes_nothing() {
        let fx = Fixture::new();
        let efi = efi_box(&fx);
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        std::fs::create_dir_all(efi.slot_dir(Slot::B)).unwrap();
        std::fs::write(efi.slot_dir(Slot::B).join("vmlinuz"), "previous b").unwrap();
        std::fs::write(efi.entries_dir().join("relaybox-0-b.conf"), "").unwrap();
        let before = (listing(&efi.entries_dir()), listing(&efi.slot_dir(Slot::B)));
        let mut data = std::fs::read(fx.bundle("qemu-x86_64", "1.1")).unwrap();
        let at = data.len() - 1000;
        data[at] ^= 0xff;
        let tampered = fx.dir.path().join("tampered.bundle");
        std::fs::write(&tampered, data).unwrap();
        for bundle in [tampered, fx.bundle("qemu-x86_64", "0.9"), fx.bundle("rpi4-arm64", "1.1")] {
            let mut steps = Vec::new();
            let err = efi.install(Slot::A, 3, &bundle, &expect(&key, &running), &mut |p| steps.push(p)).unwrap_err();
            assert!(matches!(err, InstallError::Bundle(_)), "{err}");
            assert!(steps.is_empty());
            assert_eq!((listing(&efi.entries_dir()), listing(&efi.slot_dir(Slot::B))), before);
        }
        assert_eq!(std::fs::read(efi.slot_dir(Slot::B).join("vmlinuz")).unwrap(), b"previous b");
    }

    /// Partitions 1 to 3 of a Pi as directories; slot a holds firmware.
    fn pi_box(fx: &Fixture, mode: PiTry) -> (Pi, PathBuf) {
        let boot = fx.dir.path().join(format!("p1-{}", mode.as_str()));
        let (a, b) = (boot.with_extension("a"), boot.with_extension("b"));
        for d in [&boot, &a, &b] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(boot.join(pi::AUTOBOOT), Autoboot::for_good(Slot::A).render()).unwrap();
        let manifest = crate::bundle::describe("qemu-x86_64", "1.0", &fx.files).unwrap();
        std::fs::write(a.join(SLOT_MANIFEST), manifest.to_json()).unwrap();
        (Pi { boot: boot.clone(), slots: PiSlots::Dirs([a, b]), mode }, boot)
    }

    fn autoboot_of(boot: &Path) -> Autoboot {
        Autoboot::parse(&std::fs::read_to_string(boot.join(pi::AUTOBOOT)).unwrap()).unwrap()
    }

    #[test]
    fn a_pi_install_arms_tryboot_and_commits_on_mark_good() {
        let fx = Fixture::new();
        let (box_, boot) = pi_box(&fx, PiTry::Tryboot);
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let normal = Booted { slot: Slot::A, tryboot: false };
        let mut steps = Vec::new();
        box_.install(normal, 3, &fx.bundle("qemu-x86_64", "1.1"), &expect(&key, &running), &mut |p| steps.push(p))
            .unwrap();
        assert!(
            matches!(&steps.last(), Some(Progress::Armed { how, .. }) if how.contains("tryboot flag")),
            "{steps:?}"
        );
        let PiSlots::Dirs([_, b]) = &box_.slots else { unreachable!() };
        assert!(b.join("initrd.img").exists());
        assert_eq!(autoboot_of(&boot), Autoboot { boot: 2, tryboot: 3 });
        assert_eq!(box_.tryboot_waiting(normal), Some(Slot::B));
        // the tryboot of b counts one try; b fails: a reports it
        let trying = Booted { slot: Slot::B, tryboot: true };
        assert!(box_.on_trial(trying));
        let counted = box_.boot_check(trying, "1.1").unwrap();
        assert!(matches!(counted.step, BootStep::Count(Trial { tried: 1, .. })) && !counted.reboot, "{counted:?}");
        let status = box_.status(normal, "qemu-x86_64", "1.0").unwrap();
        assert_eq!(status.other.state, SlotState::Failed { tries: 1 });
        assert_eq!(box_.tryboot_waiting(normal), None);
        // or b is healthy: autoboot.txt now boots b
        assert!(matches!(box_.mark_good(trying).unwrap(), MarkGood::Rename { .. }));
        assert_eq!(autoboot_of(&boot), Autoboot { boot: 3, tryboot: 2 });
        assert!(!boot.join(pi::TRIAL).exists());
        let b_normal = Booted { slot: Slot::B, tryboot: false };
        assert_eq!(box_.mark_good(b_normal).unwrap(), MarkGood::AlreadyGood);
        assert_eq!(box_.status(b_normal, "qemu-x86_64", "1.1").unwrap().last_update(), None);
    }

    /// Counted: the install commits [all] to the new slot (keeping
    /// [tryboot] on the old one) and writes the record last but one;
    /// marking good removes the record and keeps [all].
    #[test]
    fn a_counted_pi_install_commits_all_and_mark_good_clears_the_record() {
        let fx = Fixture::new();
        let (box_, boot) = pi_box(&fx, PiTry::Counted);
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let a = Booted { slot: Slot::A, tryboot: false };
        let mut steps = Vec::new();
        box_.install(a, 2, &fx.bundle("qemu-x86_64", "1.1"), &expect(&key, &running), &mut |p| steps.push(p)).unwrap();
        assert!(matches!(&steps.last(), Some(Progress::Armed { how, .. }) if how.contains("2 tries")), "{steps:?}");
        assert_eq!(autoboot_of(&boot), Autoboot { boot: 3, tryboot: 2 });
        let record = Trial::parse(&std::fs::read(boot.join(pi::TRIAL)).unwrap()).unwrap();
        assert_eq!(record, Trial::counted(Slot::B, "1.1", 2));
        assert_eq!(box_.tryboot_waiting(a), None);
        let status = box_.status(a, "qemu-x86_64", "1.0").unwrap();
        assert_eq!(status.other.state, SlotState::Trial { left: 2, done: 0 });
        assert_eq!(status.other.version.as_deref(), Some("1.1"));
        // the first boot of b counts a try; b is healthy
        let b = Booted { slot: Slot::B, tryboot: false };
        let check = box_.boot_check(b, "1.1").unwrap();
        assert!(matches!(check.step, BootStep::Count(Trial { tried: 1, .. })) && !check.reboot, "{check:?}");
        assert!(box_.on_trial(b));
        let err = box_.install(b, 2, &fx.bundle("qemu-x86_64", "1.2"), &expect(&key, &running), &mut |_| {});
        assert!(matches!(err, Err(InstallError::Slot(SlotError::RunningOnTrial(Slot::B)))), "{err:?}");
        assert!(matches!(box_.mark_good(b).unwrap(), MarkGood::Rename { .. }));
        assert!(!boot.join(pi::TRIAL).exists());
        assert_eq!(autoboot_of(&boot), Autoboot { boot: 3, tryboot: 2 });
        assert!(!box_.on_trial(b));
        assert_eq!(box_.mark_good(b).unwrap(), MarkGood::AlreadyGood);
        assert_eq!(box_.boot_check(b, "1.1").unwrap().step, BootStep::Nothing);
        let status = box_.status(b, "qemu-x86_64", "1.1").unwrap();
        assert_eq!((status.running.state, status.other.state.clone()), (SlotState::Good, SlotState::Good));
    }

    /// A cut at each step of a counted install: the next boot is the running
    /// slot's, boot-check leaves it alone, and the status says the update was
    /// not tried.
    #[test]
    fn a_cut_counted_pi_install_leaves_the_running_slot_booting() {
        let fx = Fixture::new();
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let bundle = fx.bundle("qemu-x86_64", "1.1");
        let a = Booted { slot: Slot::A, tryboot: false };
        for step in ["cleared", "written", "verifying", "verified"] {
            let (box_, boot) = pi_box(&fx, PiTry::Counted);
            let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                box_.install(a, 3, &bundle, &expect(&key, &running), &mut power_cut_at(step))
            }));
            assert!(cut.is_err(), "{step}");
            assert_eq!(autoboot_of(&boot).normal_slot(), Some(Slot::A), "cut at {step}");
            assert_eq!(box_.boot_check(a, "1.0").unwrap().step, BootStep::Nothing, "cut at {step}");
            let status = box_.status(a, "qemu-x86_64", "1.0").unwrap();
            assert_eq!(status.other.state, SlotState::Failed { tries: 0 }, "cut at {step}");
            assert!(status.last_update().unwrap().contains("was not tried"), "cut at {step}");
        }
    }

    /// A record whose rename was cut short (only the complete temporary
    /// file is there) is read from there; an unreadable record is treated
    /// as exhausted (back to the other slot, a readable record in its place,
    /// the bad one kept aside), or moved aside when there is nothing to go
    /// back to.
    #[test]
    fn torn_and_unreadable_pi_records() {
        let fx = Fixture::new();
        let (box_, boot) = pi_box(&fx, PiTry::Counted);
        let PiSlots::Dirs([_, slot_b]) = &box_.slots else { unreachable!() };
        std::fs::write(
            slot_b.join(SLOT_MANIFEST),
            std::fs::read(slot_b.with_extension("a").join(SLOT_MANIFEST)).unwrap(),
        )
        .unwrap();
        std::fs::write(boot.join(pi::AUTOBOOT), Autoboot::boots(Slot::B).render()).unwrap();
        let b = Booted { slot: Slot::B, tryboot: false };
        std::fs::write(boot.join("relaybox-update.tmp"), Trial::counted(Slot::B, "1.1", 3).to_json()).unwrap();
        assert_eq!(box_.record(), Ok(Some(Trial::counted(Slot::B, "1.1", 3))));
        assert!(box_.on_trial(b));
        std::fs::write(boot.join("relaybox-update.tmp"), b"{\"slot\":\"b\",\"ver").unwrap();
        assert_eq!(box_.record(), Ok(None), "a half-written temporary file is no record");
        std::fs::remove_file(boot.join("relaybox-update.tmp")).unwrap();

        std::fs::write(boot.join(pi::TRIAL), b"\x00\x00garbage").unwrap();
        assert!(box_.record().is_err());
        assert!(!box_.on_trial(b), "an unreadable record puts nothing on trial by itself");
        let check = box_.boot_check(b, "1.1").unwrap();
        assert!(matches!(check.step, BootStep::RollBack { to: Slot::A, .. }) && check.reboot, "{check:?}");
        assert_eq!(autoboot_of(&boot), Autoboot::boots(Slot::A));
        assert_eq!(std::fs::read(boot.join(pi::TRIAL_SET_ASIDE)).unwrap(), b"\x00\x00garbage");
        let a = Booted { slot: Slot::A, tryboot: false };
        assert_eq!(box_.boot_check(a, "1.0").unwrap().step, BootStep::Nothing);
        assert_eq!(box_.status(a, "qemu-x86_64", "1.0").unwrap().other.state, SlotState::Failed { tries: 0 });

        // nothing to go back to: the record is moved aside, no reboot
        let (box_, boot) = pi_box(&fx, PiTry::Counted);
        std::fs::write(boot.join(pi::TRIAL), b"not json").unwrap();
        let check = box_.boot_check(a, "1.0").unwrap();
        assert!(matches!(check.step, BootStep::SetAside { .. }) && !check.reboot, "{check:?}");
        assert!(!boot.join(pi::TRIAL).exists());
        assert_eq!(std::fs::read(boot.join(pi::TRIAL_SET_ASIDE)).unwrap(), b"not json");
        assert_eq!(box_.boot_check(a, "1.0").unwrap().step, BootStep::Nothing);
    }
}
