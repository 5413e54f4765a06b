//! `cargo xtask image --board NAME`: the static binary, the Debian kernel
//! and busybox, rootfs-overlay/ and board/NAME assembled into an initramfs
//! and a bootable disk image under target/images/NAME/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::board::{Arch, Board};
use crate::cpio::Archive;
use crate::disk::{self, Part};
use crate::kernel::Kernel;
use crate::{mib, run, step};

/// What an image build produced.
#[derive(Debug, Clone)]
pub struct Image {
    pub board: String,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    pub disk_xz: PathBuf,
    /// An empty config partition image (first boot writes the defaults).
    pub config: PathBuf,
    pub relaybox: PathBuf,
    pub kernel_version: String,
    /// The firmware version baked into the image (`/etc/relaybox/release`).
    pub version: String,
    /// The files of one slot, as a bundle carries them (`cargo xtask bundle`).
    pub slot: PathBuf,
    /// The public key the image trusts for updates.
    pub update_key: PathBuf,
}

impl Image {
    /// The outputs of an earlier build, if all are there.
    pub fn existing(board: &str) -> Option<Image> {
        let dir = crate::target_dir().join("images").join(board);
        let text = std::fs::read_to_string(dir.join("kernel-version")).ok()?;
        let version = std::fs::read_to_string(dir.join("version")).ok()?.trim().to_string();
        let img = Image {
            board: board.to_string(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("disk.img"),
            disk_xz: dir.join("disk.img.xz"),
            config: dir.join("config.img"),
            relaybox: dir.join("relaybox"),
            kernel_version: text.trim().to_string(),
            version,
            slot: dir.join("slot"),
            update_key: dir.join("update.pub"),
            dir,
        };
        [&img.kernel, &img.initrd, &img.disk, &img.config, &img.slot, &img.update_key]
            .iter()
            .all(|p| p.exists())
            .then_some(img)
    }

    /// The partition number of the config partition in `disk.img`.
    pub fn config_partition(&self) -> Result<usize> {
        Ok(crate::disk::partitions(&self.disk)?.len())
    }

    /// A copy of `disk.img` at `out` with `config` (a config partition
    /// image, `disk::config_image`) in its config partition: a box
    /// provisioned before its first boot.
    pub fn provisioned_disk(&self, config: &Path, out: &Path) -> Result<()> {
        std::fs::copy(&self.disk, out).with_context(|| format!("copying {}", self.disk.display()))?;
        crate::disk::write_partition(out, self.config_partition()?, config)
    }
}

/// What an image build can be told.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The firmware version (default: the workspace version and the build's
    /// UTC time, `0.1.0.20250301120000`).
    pub version: Option<String>,
    /// The public key (PEM) the image trusts for updates (default: a
    /// development key made once under target/xtask/update-key).
    pub update_key: Option<PathBuf>,
}

/// The development update key pair (made on first use): fine for tests and
/// labs, never for boxes in the field.
pub fn dev_update_key() -> Result<(PathBuf, PathBuf)> {
    let dir = crate::target_dir().join("xtask/update-key");
    let (key, public) = (dir.join("update.key"), dir.join("update.pub"));
    if !key.exists() || !public.exists() {
        std::fs::create_dir_all(&dir)?;
        let (signing, pem) = relaybox_update::SigningKey::generate()?;
        std::fs::write(&key, pem)?;
        std::fs::write(&public, signing.public_key().to_pem())?;
        step(format!("made a development update key pair in {} (production images: --update-key)", dir.display()));
    }
    Ok((key, public))
}

fn default_version() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // civil date from days since 1970 (Howard Hinnant's algorithm)
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{}.{y:04}{m:02}{d:02}{:02}{:02}{:02}", env!("CARGO_PKG_VERSION"), rem / 3600, (rem / 60) % 60, rem % 60)
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> std::time::SystemTime {
    let mut t = std::time::SystemTime::UNIX_EPOCH;
    if let Ok(m) = std::fs::metadata(dir) {
        t = t.max(m.modified().unwrap_or(t));
        if m.is_dir() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                t = t.max(newest(&e.path()));
            }
        }
    }
    t
}

/// The image of a board, rebuilt unless the existing one is newer than
/// the relaybox binary (rebuilt by cargo if its sources changed),
/// rootfs-overlay/, board/common and board/NAME.
pub fn current(board_name: &str) -> Result<Image> {
    dev_update_key()?;
    let board = Board::load(board_name)?;
    let bin = crate::build::relaybox(board.arch()?.rust_target())?;
    if let Some(img) = Image::existing(board_name) {
        let root = crate::workspace_root();
        let inputs = [bin, root.join("rootfs-overlay"), root.join("board/common"), board.dir.clone()];
        let built = std::fs::metadata(&img.disk)?.modified()?;
        if inputs.iter().all(|p| newest(p) <= built) {
            step(format!("image {board_name} is up to date"));
            return Ok(img);
        }
    }
    build(board_name)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Adds a host directory tree to the archive (files keep their permission bits).
fn add_tree(a: &mut Archive, root: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root)?.display().to_string();
        if (rel == "README.md" || rel == "etc/inittab") && p.parent().is_some() {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            a.dir(&rel, 0o755)?;
            add_tree(a, root, &p)?;
        } else if meta.file_type().is_symlink() {
            a.symlink(&rel, &std::fs::read_link(&p)?.display().to_string())?;
        } else {
            a.file(&rel, meta.permissions().mode() & 0o7777, &read(&p)?)?;
        }
    }
    Ok(())
}

/// The busybox applets and where they go (`busybox --list-full`, run with
/// the build host's own busybox-static: both arches come from one source).
fn applets() -> Result<Vec<String>> {
    let host = crate::debs::unpack("busybox-static", "amd64")?.join("bin/busybox");
    let list = run(Command::new(host).arg("--list-full"))?;
    Ok(list.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// What an image's root file system says about itself.
pub struct Identity<'a> {
    pub release: &'a relaybox_update::Release,
    pub update_key: &'a Path,
}

/// Builds the initramfs (the whole root file system) for a board.
pub fn initramfs(board: &Board, relaybox: &Path, kernel: &Kernel, busybox: &Path, id: &Identity) -> Result<Vec<u8>> {
    let root = crate::workspace_root();
    let console = if board.get_or("CONSOLE_SHELL", "no") == "yes" {
        "# CONSOLE_SHELL=yes: a root shell on the console (test and lab boards)\n::respawn:-/bin/sh\n".to_string()
    } else {
        format!(
            "# a login on the console; root's password comes from /config/shadow\n{}::respawn:/sbin/getty -L {} {} vt100\n",
            board.get("CONSOLE")?,
            board.get_or("CONSOLE_BAUD", "115200"),
            board.get("CONSOLE")?
        )
    };
    let mut inittab = String::from_utf8(read(&root.join("rootfs-overlay/etc/inittab"))?)?;
    inittab.push_str(&console);
    rootfs(board, relaybox, kernel, busybox, &inittab, id)
}

fn rootfs(
    board: &Board,
    relaybox: &Path,
    kernel: &Kernel,
    busybox: &Path,
    inittab: &str,
    id: &Identity,
) -> Result<Vec<u8>> {
    let root = crate::workspace_root();
    let mut a = Archive::new();
    for d in ["proc", "sys", "dev", "run", "tmp", "var", "config", "root", "mnt", "boot"] {
        a.dir(d, 0o755)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    a.file("bin/busybox", 0o755, &read(busybox)?)?;
    for app in applets()? {
        if app == "bin/busybox" || app.ends_with("/linuxrc") {
            continue;
        }
        let depth = app.matches('/').count();
        a.symlink(&app, &format!("{}bin/busybox", "../".repeat(depth)))?;
    }
    a.symlink("init", "bin/busybox")?;
    a.file("usr/bin/relaybox", 0o755, &read(relaybox)?)?;
    a.file("etc/inittab", 0o644, inittab.as_bytes())?;
    add_tree(&mut a, &root.join("rootfs-overlay"), &root.join("rootfs-overlay"))?;
    a.file("etc/relaybox/board.conf", 0o644, &read(&board.dir.join("board.conf"))?)?;
    a.file("etc/relaybox/release", 0o644, id.release.render().as_bytes())?;
    a.file("etc/relaybox/update.pub", 0o644, &read(id.update_key)?)?;
    a.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    a.file("etc/group", 0o644, b"root:x:0:\n")?;
    a.file("etc/shadow", 0o600, b"root:*:19000:0:99999:7:::\n")?;
    a.symlink("etc/resolv.conf", "../run/resolv.conf")?;
    a.file("etc/hostname", 0o644, b"relaybox\n")?;

    let (mods, missing) = kernel.closure(&board.modules()?)?;
    if !missing.is_empty() {
        step(format!("note: not in kernel {} (built in or not built): {}", kernel.version, missing.join(" ")));
    }
    let mdir = format!("lib/modules/{}", kernel.version);
    let mut load = String::new();
    for m in &mods {
        let rel = &kernel.index[m];
        a.file(&format!("{mdir}/{}", rel.display()), 0o644, &read(&kernel.modules_dir.join(rel))?)?;
        load.push_str(&format!("{}\n", rel.display()));
    }
    a.file(&format!("{mdir}/relaybox.load"), 0o644, load.as_bytes())?;
    a.file(&format!("{mdir}/modules.dep"), 0o644, kernel.modules_dep(&mods)?.as_bytes())?;
    for f in ["modules.builtin", "modules.order", "modules.builtin.modinfo"] {
        if kernel.modules_dir.join(f).exists() {
            a.file(&format!("{mdir}/{f}"), 0o644, &read(&kernel.modules_dir.join(f))?)?;
        }
    }
    step(format!("initramfs: busybox, relaybox, {} kernel modules", mods.len()));
    a.finish_xz()
}

/// Builds everything for a board with the default options.
pub fn build(board_name: &str) -> Result<Image> {
    build_with(board_name, &Options::default())
}

/// Builds everything for a board; returns the outputs.
pub fn build_with(board_name: &str, options: &Options) -> Result<Image> {
    let t0 = Instant::now();
    let board = Board::load(board_name)?;
    let arch = board.arch()?;
    let deb_arch = arch.debian();
    let out = crate::target_dir().join("images").join(board_name);
    std::fs::create_dir_all(&out)?;

    let relaybox_bin = crate::build::relaybox(arch.rust_target())?;
    step(format!(
        "kernel {}:{deb_arch} (cached under {})",
        board.get("KERNEL_PACKAGE")?,
        crate::debs::cache_dir().display()
    ));
    let kroot = crate::debs::kernel(board.get("KERNEL_PACKAGE")?, deb_arch)?;
    let kernel = Kernel::from_unpacked(&kroot)?;
    let busybox = crate::debs::unpack("busybox-static", deb_arch)?.join("bin/busybox");

    let layout = board.get("DISK_LAYOUT")?;
    let scheme = match layout {
        "gpt-efi" => relaybox_update::Scheme::Efi,
        // Debian's mainline kernel does not pass the firmware's tryboot flag
        // on: init counts a new slot's boots (board/README.md).
        "rpi-mbr" => relaybox_update::Scheme::Rpi(relaybox_update::PiTry::Counted),
        other => bail!("DISK_LAYOUT {other}: gpt-efi or rpi-mbr"),
    };
    let version = options.version.clone().unwrap_or_else(default_version);
    let release = relaybox_update::Release {
        board: board_name.to_string(),
        version: version.parse().with_context(|| format!("--version {version}"))?,
        scheme,
    };
    let update_key = match &options.update_key {
        Some(k) => k.clone(),
        None => dev_update_key()?.1,
    };
    let public = relaybox_update::PublicKey::from_pem(&String::from_utf8(read(&update_key)?)?)
        .with_context(|| format!("{}: the update key", update_key.display()))?;
    step(format!("version {version}; updates signed with key {} ({})", public.fingerprint(), update_key.display()));
    std::fs::copy(&update_key, out.join("update.pub"))?;

    step("assembling the initramfs");
    let initrd =
        initramfs(&board, &relaybox_bin, &kernel, &busybox, &Identity { release: &release, update_key: &update_key })?;
    let initrd_path = out.join("initrd.img");
    std::fs::write(&initrd_path, &initrd)?;
    let kernel_path = out.join("vmlinuz");
    std::fs::copy(&kernel.vmlinuz, &kernel_path)?;
    std::fs::copy(&relaybox_bin, out.join("relaybox"))?;
    std::fs::write(out.join("kernel-version"), &kernel.version)?;
    std::fs::write(out.join("version"), &version)?;

    // One slot's files, as they go into slot a here and into a bundle
    // (`cargo xtask bundle`) later.
    step("slot a");
    let cmdline = board.get("KERNEL_CMDLINE")?;
    let slot_dir = out.join("slot");
    let _ = std::fs::remove_dir_all(&slot_dir);
    std::fs::create_dir_all(&slot_dir)?;
    let mut slot: Vec<(String, PathBuf)> = Vec::new();
    let mut put = |name: &str, src: &Path| -> Result<()> {
        let dst = slot_dir.join(name);
        std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        slot.push((name.to_string(), dst));
        Ok(())
    };
    let tmp = out.join("boot-files");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let c = tmp.join("cmdline.txt");
    std::fs::write(&c, format!("{cmdline}\n"))?;
    put("cmdline.txt", &c)?;
    let mut boot: Vec<(String, PathBuf)> = Vec::new();
    match scheme {
        relaybox_update::Scheme::Efi => {
            // EFI loads PE images: arm64's vmlinuz is a gzipped Image, so unpack it.
            let efi_kernel = if arch == Arch::Aarch64 {
                gunzip_to(&kernel.vmlinuz, &tmp.join("Image"))?
            } else {
                kernel.vmlinuz.clone()
            };
            put("vmlinuz", &efi_kernel)?;
            put("initrd.img", &initrd_path)?;
            let efi_arch = board.get("EFI_ARCH")?;
            let sdboot = crate::debs::unpack("systemd-boot-efi", deb_arch)?
                .join(format!("usr/lib/systemd/boot/efi/systemd-boot{efi_arch}.efi"));
            boot.push((format!("EFI/BOOT/BOOT{}.EFI", efi_arch.to_uppercase()), sdboot));
            boot.push(("loader/loader.conf".into(), board.dir.join("loader.conf")));
            let first = relaybox_update::efi::Entry { generation: 1, slot: relaybox_update::Slot::A, tries: None };
            let entry = tmp.join("entry.conf");
            std::fs::write(&entry, first.text(&version, cmdline))?;
            boot.push((format!("loader/entries/{}", first.file_name()), entry));
        }
        relaybox_update::Scheme::Rpi(_) => {
            put("config.txt", &board.dir.join("config.txt"))?;
            put("vmlinuz", &kernel.vmlinuz)?;
            put("initrd.img", &initrd_path)?;
            let dtb_root = kroot.join(format!("usr/lib/linux-image-{}", kernel.version));
            for dtb in board.get_or("DTBS", "").split_whitespace() {
                let name = Path::new(dtb).file_name().unwrap().to_string_lossy().into_owned();
                put(&name, &dtb_root.join(dtb))?;
            }
            let firmware = board.get("FIRMWARE_PACKAGE")?;
            let unpacked = match board.get_or("FIRMWARE_COMPONENT", "") {
                "" => crate::debs::unpack(firmware, deb_arch),
                component => crate::debs::unpack_from_component(firmware, deb_arch, component),
            };
            match unpacked {
                Ok(fw) => {
                    for f in ["start4.elf", "fixup4.dat"] {
                        put(f, &fw.join("usr/lib/raspi-firmware").join(f))?;
                    }
                    // Its redistribution terms travel with it.
                    put("LICENCE.broadcom", &fw.join("usr/share/doc/raspi-firmware/copyright"))?;
                }
                Err(e) => step(format!(
                    "WARNING: no Raspberry Pi GPU firmware ({e:#}); the image lacks start4.elf/fixup4.dat: \
                     enable Debian's non-free-firmware component or copy them onto the boot partition"
                )),
            }
        }
    }
    // The slot's own record of what it holds (unsigned: the image is not a bundle).
    let manifest = relaybox_update::bundle::describe(board_name, &version, &slot)?;
    let manifest_path = tmp.join(relaybox_update::install::SLOT_MANIFEST);
    std::fs::write(&manifest_path, manifest.to_json())?;
    let mut slot_files: Vec<(String, PathBuf)> = slot.clone();
    slot_files.push((relaybox_update::install::SLOT_MANIFEST.into(), manifest_path));

    step("config partition (empty: the first boot writes the defaults)");
    let cfg_img = out.join("config.img");
    disk::config_image(&cfg_img, board.get_or("CFG_FS", "ext4"), board.mib("CFG_SIZE_MIB", 16)?, None)?;

    step("boot partitions and disk image");
    let disk_path = out.join("disk.img");
    let cfg_part = Part { image: &cfg_img, name: disk::CFG_LABEL, gpt_type: "8300", mbr_type: 0x83 };
    // Room for a slot half again as big as this one in each slot.
    let slot_bytes = manifest.total_size();
    match scheme {
        relaybox_update::Scheme::Efi => {
            // One EFI system partition: systemd-boot, its entries, both slots.
            let esp_mib = disk::esp_mib(board.mib("ESP_SIZE_MIB", 96)?, slot_bytes);
            for (name, path) in &slot_files {
                boot.push((format!("slot-a/{name}"), path.clone()));
            }
            let esp = out.join("boot.part");
            disk::fat_image(&esp, disk::BOOT_LABEL, esp_mib, &boot)?;
            run(Command::new("mmd").arg("-i").arg(&esp).arg("::/slot-b"))?;
            let esp_part = Part { image: &esp, name: disk::ESP_NAME, gpt_type: "ef00", mbr_type: 0x0c };
            disk::disk_image(&disk_path, &[esp_part, cfg_part], true)?;
            std::fs::remove_file(&esp)?;
        }
        relaybox_update::Scheme::Rpi(_) => {
            // autoboot.txt alone on the first partition; a boot partition per slot.
            let slot_part_mib = disk::pi_slot_mib(board.mib("ESP_SIZE_MIB", 64)?, slot_bytes);
            let autoboot = tmp.join("autoboot.txt");
            std::fs::write(&autoboot, relaybox_update::pi::Autoboot::for_good(relaybox_update::Slot::A).render())?;
            let (p1, pa, pb) = (out.join("p1.part"), out.join("pa.part"), out.join("pb.part"));
            let autoboot_file = [(relaybox_update::pi::AUTOBOOT.to_string(), autoboot)];
            let [label_a, label_b] = disk::PI_SLOT_LABELS;
            disk::fat_image(&p1, disk::BOOT_LABEL, disk::PI_BOOT_MIB, &autoboot_file)?;
            disk::fat_image(&pa, label_a, slot_part_mib, &slot_files)?;
            disk::fat_image(&pb, label_b, slot_part_mib, &[])?;
            let fat = |image, name| Part { image, name, gpt_type: "0700", mbr_type: 0x0c };
            disk::disk_image(
                &disk_path,
                &[fat(&p1, disk::BOOT_LABEL), fat(&pa, label_a), fat(&pb, label_b), cfg_part],
                false,
            )?;
            for p in [p1, pa, pb] {
                std::fs::remove_file(p)?;
            }
        }
    }
    std::fs::remove_dir_all(&tmp)?;

    step("compressing the disk image (xz)");
    let xz = out.join("disk.img.xz");
    let data = run(Command::new("sh").arg("-c").arg(format!(
        "xz -T2 -6 -c '{}' > '{}' && stat -c %s '{}'",
        disk_path.display(),
        xz.display(),
        xz.display()
    )))?;
    let xz_size: u64 = data.trim().parse().unwrap_or(0);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!("image {board_name} (kernel {}) in {}:", kernel.version, out.display());
    println!("  relaybox      {:>10}", mib(size(&relaybox_bin)));
    println!("  vmlinuz       {:>10}", mib(size(&kernel_path)));
    println!("  initrd.img    {:>10}", mib(size(&initrd_path)));
    println!("  slot          {:>10}  (version {version})", mib(manifest.total_size()));
    println!("  disk.img      {:>10}", mib(size(&disk_path)));
    println!(
        "  disk.img.xz   {:>10}{}",
        mib(xz_size),
        if xz_size > 16 * disk::MIB { "  (over the 16 MiB goal)" } else { "" }
    );
    println!("  built in {:.0} s", t0.elapsed().as_secs_f64());
    Image::existing(board_name).context("outputs missing after the build")
}

fn gunzip_to(src: &Path, dst: &Path) -> Result<PathBuf> {
    use std::io::Read;
    let data = read(src)?;
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut out)?;
        std::fs::write(dst, out)?;
    } else {
        std::fs::write(dst, data)?;
    }
    Ok(dst.to_path_buf())
}
