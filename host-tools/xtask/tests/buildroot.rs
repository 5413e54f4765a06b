//! The Buildroot route (buildroot/, issue #15) against real Buildroot:
//! 2026.02.3 (LTS) from the vendor directory, unmodified, extracted once
//! into target/buildroot/ (keyed by the tarball's hash). For every
//! defconfig: `make defconfig` keeps each of its symbols and the relaybox
//! package (`savedefconfig` gives the file back); `utils/check-package` is
//! clean for the whole tree; the kernel, boot loader and firmware it
//! configures exist for the board; `make printvars` shows cargo command
//! lines that cargo runs: Buildroot's own download step (git, then cargo
//! vendor) makes the source, and the package's build and install commands
//! run as printed, with the host's cargo, offline, on the vendored crates
//! and a fresh CARGO_HOME, into a static binary that runs (x86_64; the
//! aarch64 command line is resolved with --unit-graph); the post-build and
//! post-image scripts lay out the disk of `cargo xtask image` with the real
//! genimage (the xtask's partitions, GPT names, labels and sizes,
//! systemd-boot's loader.conf and entry or the Pi's autoboot.txt, slot a
//! with its manifest.json, an empty slot b, the release file and the update
//! key, compared with relaybox-update's own rendering), and a bundle of
//! that slot is one the box would install; a build without the update key
//! stops; busybox has every applet the init scripts run.
//!
//! Slow (make parses the whole Buildroot tree for each printvars, cargo
//! builds a release binary) and needs crates.io the first time (the crates
//! are cached in target/buildroot/dl): ignored by default; ci/test.sh runs
//! `cargo test -p xtask --test buildroot -- --ignored --test-threads=1 --nocapture`.
//! Needs make, git, shellcheck, python3 with magic and flake8, genimage,
//! mtools, dosfstools, e2fsprogs, fdisk's sfdisk, musl-gcc (ci/setup.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

const BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64", "pc-x86_64-efi", "rpi4-arm64"];
/// Defconfigs beside a board's own `relaybox_<board>_defconfig`: the Pi with
/// the mainline kernel (its own defconfig has the Raspberry Pi kernel).
const VARIANTS: &[(&str, &str)] = &[("rpi4-arm64", "mainline")];
const TARBALL: &str = "buildroot-2026.02.3.tar.xz";
/// What the tests ask `make printvars` for, once per board.
const VARS: &[&str] = &[
    "RELAYBOX_SITE",
    "RELAYBOX_SITE_METHOD",
    "RELAYBOX_VERSION",
    "RELAYBOX_SOURCE",
    "RELAYBOX_SUBDIR",
    "RELAYBOX_SRCDIR",
    "RELAYBOX_DIR",
    "RELAYBOX_BUILD_CMDS",
    "RELAYBOX_INSTALL_TARGET_CMDS",
    "RELAYBOX_LICENSE",
    "RELAYBOX_LICENSE_FILES",
    "RELAYBOX_INSTALL_UPDATE_KEY",
    "BR_CARGO_HOME",
    "RUSTC_TARGET_NAME",
    "TARGET_CROSS",
    "TARGET_DIR",
    "PACKAGES",
    "LINUX_VERSION",
    "LINUX_SITE",
    "LINUX_SOURCE",
    "LINUX_HASH_FILES",
    "LINUX_KCONFIG_DEFCONFIG",
    "LINUX_IMAGE_NAME",
    "LINUX_DTBS",
    "ROOTFS_CPIO_FINAL_IMAGE_NAME",
    "ROOTFS_CPIO_COMPRESS_EXT",
    "GRUB2_TUPLES-y",
    "GRUB2_IMAGE_x86_64-efi",
    "GRUB2_IMAGE_arm64-efi",
    "RPI_FIRMWARE_FILES",
    "BUSYBOX_KCONFIG_FILE",
    "BUSYBOX_KCONFIG_FRAGMENT_FILES",
];

fn root() -> PathBuf {
    xtask::workspace_root()
}

fn tree() -> PathBuf {
    root().join("buildroot")
}

/// Everything this test keeps: Buildroot, the download cache, the outputs.
fn work() -> PathBuf {
    xtask::target_dir().join("buildroot")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// Runs a command that must succeed; returns its standard output.
fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    assert!(out.status.success(), "{shown}: {}\n{}\n{}", out.status, tail(&out.stdout), tail(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn defconfig_name(board: &str, variant: Option<&str>) -> String {
    let variant = variant.map(|v| format!("_{v}")).unwrap_or_default();
    format!("relaybox_{}{variant}_defconfig", board.replace('-', "_"))
}

fn board_conf(board: &str) -> BTreeMap<String, String> {
    xtask::board::Board::load(board).unwrap().conf
}

/// The Buildroot tarball: RELAYBOX_VENDOR, ../shared/vendor next to the
/// workspace, or /work/shared/vendor.
fn vendor_tarball() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("RELAYBOX_VENDOR").map(PathBuf::from).into_iter().collect();
    dirs.extend(root().ancestors().skip(1).map(|a| a.join("shared/vendor")));
    dirs.push("/work/shared/vendor".into());
    dirs.iter()
        .map(|d| d.join(TARBALL))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{TARBALL} not found (set RELAYBOX_VENDOR to its directory)"))
}

/// Buildroot extracted under target/buildroot/, once per tarball content.
fn extract_buildroot() -> PathBuf {
    let tarball = vendor_tarball();
    let sum = ok(Command::new("sha256sum").arg(&tarball));
    let dir = work().join(format!("buildroot-{}", &sum[..12]));
    if dir.join(".extracted").exists() {
        return dir;
    }
    std::fs::create_dir_all(work()).unwrap();
    let tmp = work().join(format!("extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    ok(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&tmp).arg("--strip-components=1"));
    std::fs::write(tmp.join(".extracted"), sum).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    dir
}

/// One board's Buildroot output directory, configured from its defconfig.
struct Board {
    /// The board (board/<name>/).
    name: &'static str,
    /// The board and its defconfig's variant, for messages.
    label: String,
    out: PathBuf,
    /// The defconfig's lines as written (symbols and "is not set").
    defconfig: BTreeSet<String>,
    /// `make savedefconfig` of the configuration `make defconfig` made.
    saved: BTreeSet<String>,
    /// The resulting .config: symbol -> value ("n" when not set).
    config: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
}

struct Prepared {
    buildroot: PathBuf,
    boards: Vec<Board>,
}

/// `make` in Buildroot's directory for one output directory.
fn make(buildroot: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(buildroot).arg(format!("O={}", out.display()));
    // The download cache outlives Buildroot's directory (new tarball, new dir).
    cmd.env("BR2_DL_DIR", work().join("dl"));
    for v in ["MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BR2_EXTERNAL", "BR2_DEFCONFIG"] {
        cmd.env_remove(v);
    }
    cmd
}

/// The lines of a defconfig that set something (or "is not set").
fn settings(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("BR2_") || (l.starts_with("# BR2_") && l.ends_with(" is not set")))
        .map(str::to_string)
        .collect()
}

/// `make printvars` output: NAME=value lines (a value may span lines).
fn parse_printvars(text: &str, wanted: &[&str]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let starts = line.split_once('=').filter(|(name, _)| wanted.contains(name));
        if let Some((name, value)) = starts {
            vars.insert(name.to_string(), value.to_string());
            current = Some(name.to_string());
        } else if let Some(name) = &current {
            let v: &mut String = vars.get_mut(name).unwrap();
            v.push('\n');
            v.push_str(line);
        }
    }
    vars
}

fn printvars(buildroot: &Path, out: &Path, vars: &[&str], extra: &[String]) -> BTreeMap<String, String> {
    let text = ok(make(buildroot, out).arg("-s").args(extra).arg("printvars").arg(format!("VARS={}", vars.join(" "))));
    parse_printvars(&text, vars)
}

fn prepare() -> Prepared {
    let t0 = Instant::now();
    let buildroot = extract_buildroot();
    let buildroot = &buildroot;
    // One make per board at a time, the boards side by side (each printvars
    // parses the whole Buildroot tree: seconds of CPU each).
    let boards = std::thread::scope(|s| {
        let configs = BOARDS.iter().map(|&b| (b, None)).chain(VARIANTS.iter().map(|&(b, v)| (b, Some(v))));
        let handles: Vec<_> =
            configs.map(|(name, variant)| s.spawn(move || configure(buildroot, name, variant, t0))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    Prepared { buildroot: buildroot.clone(), boards }
}

fn configure(buildroot: &Path, name: &'static str, variant: Option<&'static str>, t0: Instant) -> Board {
    let label = match variant {
        Some(v) => format!("{name} ({v})"),
        None => name.to_string(),
    };
    let out = work().join("out").join(label.replace(' ', "-").replace(['(', ')'], ""));
    std::fs::create_dir_all(&out).unwrap();
    let defconfig = defconfig_name(name, variant);
    ok(make(buildroot, &out).arg(format!("BR2_EXTERNAL={}", tree().display())).arg(&defconfig));
    let saved_path = out.join("saved_defconfig");
    ok(make(buildroot, &out).arg("savedefconfig").arg(format!("BR2_DEFCONFIG={}", saved_path.display())));
    let mut config = BTreeMap::new();
    for line in read(&out.join(".config")).lines() {
        if let Some((k, v)) = line.split_once('=') {
            config.insert(k.to_string(), v.to_string());
        } else if let Some(k) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            config.insert(k.to_string(), "n".to_string());
        }
    }
    // The update key as an operator sets it (the defconfigs leave it empty).
    let key = format!("BR2_PACKAGE_RELAYBOX_UPDATE_KEY={}", test_update_key().display());
    let vars = printvars(buildroot, &out, VARS, &[key]);
    eprintln!("buildroot: {label} configured ({:.0} s)", t0.elapsed().as_secs_f64());
    Board {
        name,
        label,
        defconfig: settings(&read(&tree().join("configs").join(&defconfig))),
        saved: settings(&read(&saved_path)),
        config,
        vars,
        out,
    }
}

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(prepare)
}

impl Board {
    fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(|s| s.trim()).unwrap_or_else(|| panic!("{}: printvars has no {name}", self.label))
    }
    /// A variable that make leaves undefined when its package is off.
    fn var_or_empty(&self, name: &str) -> &str {
        self.vars.get(name).map(|s| s.trim()).unwrap_or("")
    }
    fn set(&self, symbol: &str) -> bool {
        self.config.get(symbol).is_some_and(|v| v == "y")
    }
    /// Configured with the Raspberry Pi kernel (raspberrypi/linux), which
    /// post-build.sh recognises the same way.
    fn rpi_kernel(&self) -> bool {
        ["BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION", "BR2_LINUX_KERNEL_CUSTOM_REPO_URL"].iter().any(|k| {
            self.config.get(*k).is_some_and(|v| v.contains("raspberrypi,linux,") || v.contains("raspberrypi/linux"))
        })
    }
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn every_defconfig_keeps_its_symbols_and_the_relaybox_package() {
    let p = prepared();
    let mut errors = Vec::new();
    for b in &p.boards {
        if !b.set("BR2_PACKAGE_RELAYBOX") {
            errors.push(format!("{}: BR2_PACKAGE_RELAYBOX=y was dropped by `make defconfig`", b.label));
        }
        for line in &b.defconfig {
            let (sym, value) = match line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
                Some(sym) => (sym, "n"),
                None => line.split_once('=').unwrap(),
            };
            let got = b.config.get(sym).map(String::as_str).unwrap_or("n");
            if got != value {
                errors.push(format!("{}: {sym}={value} in the defconfig, {sym}={got} after `make defconfig`", b.label));
            }
        }
        for line in b.defconfig.difference(&b.saved) {
            errors.push(format!("{}: `{line}` is not in savedefconfig (dropped, or a default)", b.label));
        }
        for line in b.saved.difference(&b.defconfig) {
            errors.push(format!("{}: savedefconfig has `{line}`, the defconfig does not", b.label));
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A python3 that has what check-package imports (Debian's python3-magic
/// and python3-flake8; a pyenv first in PATH may lack them).
fn python_for_check_package() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let probe = Command::new(py).args(["-c", "import magic, flake8"]).output();
        if probe.is_ok_and(|o| o.status.success()) {
            return py.to_string();
        }
    }
    panic!("no python3 with the magic and flake8 modules (Debian: python3-magic python3-flake8)");
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn check_package_is_clean_for_the_whole_tree() {
    let buildroot = extract_buildroot();
    let mut files = Vec::new();
    files_under(&tree(), &mut files);
    let rel: Vec<PathBuf> = files.iter().map(|f| f.strip_prefix(tree()).unwrap().to_path_buf()).collect();
    assert!(rel.iter().any(|f| f.ends_with("relaybox.mk")) && rel.iter().any(|f| f.ends_with("post-image.sh")));
    let out = run(Command::new(python_for_check_package())
        .arg(buildroot.join("utils/check-package"))
        .arg("-b")
        .args(&rel)
        .current_dir(tree()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("0 warnings generated"), "utils/check-package -b:\n{text}");
    assert!(!text.contains("failed to call"), "a checker could not run:\n{text}");
}

/// The kernel's defconfig names a mainline kernel has for arm64 and x86
/// (Buildroot's "use the architecture default" is "defconfig").
const MAINLINE_DEFCONFIGS: &[&str] = &["defconfig", "x86_64_defconfig", "i386_defconfig"];

fn version_tuple(v: &str) -> Vec<u32> {
    v.trim_matches('"').split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn each_board_gets_a_kernel_a_boot_loader_and_hashes() {
    let p = prepared();
    let mut errors = Vec::new();
    for b in &p.boards {
        let conf = board_conf(b.name);
        let e = |msg: String| format!("{}: {msg}", b.label);
        let packages: BTreeSet<&str> = b.var("PACKAGES").split_whitespace().collect();
        // A kernel.org kernel only has the mainline defconfigs.
        let site = b.var("LINUX_SITE");
        let defconfig = b.var("LINUX_KCONFIG_DEFCONFIG");
        if site.contains("kernel.org") && !MAINLINE_DEFCONFIGS.contains(&defconfig) {
            errors.push(e(format!("a mainline kernel ({site}) has no {defconfig}")));
        }
        // The Raspberry Pi kernel as upstream Buildroot's raspberrypi4_64_defconfig has it.
        if b.rpi_kernel()
            && (!site.starts_with("https://github.com/raspberrypi/linux/") || defconfig != "bcm2711_defconfig")
        {
            errors.push(e(format!(
                "the Raspberry Pi kernel should be raspberrypi/linux with bcm2711: {site} {defconfig}"
            )));
        }
        // The toolchain's headers must not be newer than the kernel (the
        // version of a tarball, "custom", is not known before it is unpacked).
        let headers = b.config.get("BR2_DEFAULT_KERNEL_HEADERS").cloned().unwrap_or_default();
        let kernel = b.var("LINUX_VERSION");
        if kernel != "custom" && version_tuple(&headers)[..2] > version_tuple(kernel)[..2] {
            errors.push(e(format!("kernel headers {headers} are newer than the kernel {kernel}")));
        }
        // BR2_DOWNLOAD_FORCE_CHECK_HASHES: the kernel's tarball has a hash.
        if !b.set("BR2_DOWNLOAD_FORCE_CHECK_HASHES") {
            errors.push(e("BR2_DOWNLOAD_FORCE_CHECK_HASHES is not set".into()));
        }
        let source = b.var("LINUX_SOURCE");
        let hashed = b.var("LINUX_HASH_FILES").split_whitespace().any(|f| {
            let f = if Path::new(f).is_absolute() { PathBuf::from(f) } else { p.buildroot.join(f) };
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() == 3 && w[0] == "sha256" && w[1].len() == 64 && w[2] == source
                })
            })
        });
        if !hashed {
            errors.push(e(format!("no sha256 of {source} in {}", b.var("LINUX_HASH_FILES"))));
        }
        // The board's device trees are built.
        let dtbs = b.var_or_empty("LINUX_DTBS");
        for dtb in conf.get("DTBS").map(String::as_str).unwrap_or("").split_whitespace() {
            if !dtbs.split_whitespace().any(|d| d == dtb) {
                errors.push(e(format!("{dtb} (board.conf DTBS) is not built (LINUX_DTBS: {dtbs})")));
            }
        }
        // Something that boots the kernel.
        match conf["DISK_LAYOUT"].as_str() {
            "gpt-efi" => {
                let tuple = if conf["EFI_ARCH"] == "x64" { "x86_64-efi" } else { "arm64-efi" };
                if !packages.contains("grub2")
                    || !b.var_or_empty("GRUB2_TUPLES-y").split_whitespace().any(|t| t == tuple)
                {
                    errors.push(e(format!("no EFI boot loader: GRUB2 with {tuple} is not configured")));
                }
            }
            "rpi-mbr" => {
                let files = b.var_or_empty("RPI_FIRMWARE_FILES");
                if !packages.contains("rpi-firmware") || !files.contains("start4.elf") || !files.contains("fixup4.dat")
                {
                    errors.push(e(format!("no Pi 4 GPU firmware (rpi-firmware files: {files:?})")));
                }
            }
            other => errors.push(e(format!("unknown DISK_LAYOUT {other}"))),
        }
        // No root password: the console asks for /config/shadow's (as the xtask image).
        if b.set("BR2_TARGET_ENABLE_ROOT_LOGIN") {
            errors.push(e("root may log in without a password (BR2_TARGET_ENABLE_ROOT_LOGIN)".into()));
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The busybox configuration Buildroot uses: its file plus the fragments.
fn busybox_config(p: &Prepared, b: &Board) -> BTreeMap<String, bool> {
    let mut config = BTreeMap::new();
    let mut files = vec![p.buildroot.join(b.var("BUSYBOX_KCONFIG_FILE"))];
    files.extend(b.var("BUSYBOX_KCONFIG_FRAGMENT_FILES").split_whitespace().map(PathBuf::from));
    for f in files {
        for line in read(&f).lines() {
            if let Some((k, v)) = line.split_once('=') {
                config.insert(k.to_string(), v == "y");
            } else if let Some(k) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
                config.insert(k.to_string(), false);
            }
        }
    }
    config
}

/// The commands a shell script runs: the first word of each simple command
/// (after keywords and assignments), roughly but enough for init scripts.
fn commands(script: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in script.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let line = line.replace("$(", "\n").replace(['`', ';', '|', '&', '(', ')', '{', '}'], "\n");
        for segment in line.lines() {
            let mut words = segment.split_whitespace().skip_while(|w| {
                ["if", "then", "else", "elif", "do", "while", "until", "!", "exec"].contains(w)
                    || (w.contains('=') && !w.starts_with('-'))
            });
            if let Some(w) = words.next() {
                if w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
                    out.insert(w.to_string());
                }
            }
        }
    }
    out
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn busybox_has_every_applet_the_init_scripts_run() {
    let p = prepared();
    let overlay = root().join("rootfs-overlay");
    let mut scripts = Vec::new();
    files_under(&overlay, &mut scripts);
    scripts.retain(|f| read(f).starts_with("#!/bin/sh"));
    assert!(scripts.len() >= 4, "{scripts:?}");
    let mut used = BTreeSet::new();
    for s in &scripts {
        used.extend(commands(&read(s)));
    }
    assert!(used.contains("findfs") && used.contains("insmod") && used.contains("udhcpc"), "{used:?}");
    let mut errors = Vec::new();
    for b in &p.boards {
        let config = busybox_config(p, b);
        for cmd in &used {
            let name = cmd.to_uppercase().replace('-', "_");
            let symbol =
                [format!("CONFIG_{name}"), format!("CONFIG_BB_{name}")].into_iter().find(|s| config.contains_key(s));
            if let Some(s) = symbol {
                if !config[&s] {
                    errors.push(format!("{}: the init scripts run `{cmd}`, but busybox has {s} off", b.label));
                }
            }
        }
    }
    // Options of the applets: relaybox-syslogd keeps the log in a ring
    // buffer for logread (-C) and may forward it (-R).
    let syslogd = read(&overlay.join("usr/sbin/relaybox-syslogd"));
    for (flag, symbol) in [("-C", "CONFIG_FEATURE_IPC_SYSLOG"), ("-R", "CONFIG_FEATURE_REMOTE_LOG")] {
        assert!(syslogd.contains(flag), "relaybox-syslogd no longer runs syslogd {flag}: update this test");
        for b in &p.boards {
            if busybox_config(p, b).get(symbol) != Some(&true) {
                errors.push(format!("{}: relaybox-syslogd runs syslogd {flag}, but busybox has {symbol} off", b.label));
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A modules.dep of a 6.1 kernel's netfilter and storage modules (paths as
/// depmod writes them), for post-build.sh to order.
const MODULES_DEP: &str = "\
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/netfilter/nfnetlink.ko:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko:
kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nf_conntrack_netlink.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/nf_nat.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/nft_ct.ko: kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/nft_nat.ko: kernel/net/netfilter/nf_nat.ko kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/nft_chain_nat.ko: kernel/net/netfilter/nf_nat.ko kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/net/netfilter/x_tables.ko:
kernel/net/ipv4/netfilter/ip_tables.ko: kernel/net/netfilter/x_tables.ko
kernel/net/ipv4/netfilter/iptable_filter.ko: kernel/net/ipv4/netfilter/ip_tables.ko kernel/net/netfilter/x_tables.ko
kernel/net/ipv4/netfilter/iptable_raw.ko: kernel/net/ipv4/netfilter/ip_tables.ko kernel/net/netfilter/x_tables.ko
kernel/net/ipv4/netfilter/iptable_nat.ko: kernel/net/ipv4/netfilter/ip_tables.ko kernel/net/netfilter/nf_nat.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/x_tables.ko
kernel/net/netfilter/xt_CT.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/x_tables.ko
kernel/net/netfilter/xt_conntrack.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko kernel/net/netfilter/x_tables.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/fat/fat.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:
kernel/drivers/net/ethernet/broadcom/genet/genet.ko: kernel/drivers/net/mdio/mdio-bcm-unimac.ko
kernel/drivers/net/mdio/mdio-bcm-unimac.ko:
";
/// Built in: no loading needed.
const MODULES_BUILTIN: &str = "kernel/fs/nls/nls_cp437.ko\nkernel/fs/nls/nls_iso8859-1.ko\n";

/// A root file system as the packages leave it before post-build: the
/// relaybox package's rootfs-overlay/ and a kernel's modules.
fn fake_target_dir(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    let _ = std::fs::remove_dir_all(&target);
    ok(Command::new("cp").arg("-a").arg(root().join("rootfs-overlay")).arg(&target));
    std::fs::remove_file(target.join("README.md")).unwrap();
    let kdir = target.join("lib/modules/6.1.174");
    std::fs::create_dir_all(&kdir).unwrap();
    std::fs::write(kdir.join("modules.dep"), MODULES_DEP).unwrap();
    std::fs::write(kdir.join("modules.builtin"), MODULES_BUILTIN).unwrap();
    for line in MODULES_DEP.lines() {
        let ko = kdir.join(line.split(':').next().unwrap());
        std::fs::create_dir_all(ko.parent().unwrap()).unwrap();
        std::fs::write(ko, b"\x7fELF").unwrap();
    }
    target
}

/// What post-build.sh must leave in relaybox.load: every wanted module of
/// the fixture, each after everything it needs.
fn check_module_list(board: &str, load: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let deps: BTreeMap<&str, Vec<&str>> = MODULES_DEP
        .lines()
        .map(|l| {
            let (m, d) = l.split_once(':').unwrap();
            (m, d.split_whitespace().collect())
        })
        .collect();
    let name = |p: &str| p.rsplit('/').next().unwrap().trim_end_matches(".ko").replace('-', "_");
    let lines: Vec<&str> = load.lines().collect();
    let mut wanted: Vec<String> = read(&root().join("board/common/modules.list"))
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    wanted.extend(
        board_conf(board).get("MODULES").map(String::as_str).unwrap_or("").split_whitespace().map(String::from),
    );
    for w in &wanted {
        let w = w.replace('-', "_");
        let in_kernel = deps.keys().any(|m| name(m) == w);
        let listed = lines.iter().any(|l| name(l) == w);
        if in_kernel && !listed {
            errors.push(format!("{board}: relaybox.load lacks {w}, a module of this kernel"));
        }
        if !in_kernel && listed {
            errors.push(format!("{board}: relaybox.load has {w}, which this kernel does not build as a module"));
        }
    }
    for (i, l) in lines.iter().enumerate() {
        match deps.get(l) {
            None => errors.push(format!("{board}: relaybox.load line {l:?} is not a module path of modules.dep")),
            Some(needs) => {
                for d in needs {
                    if !lines[..i].contains(d) {
                        errors.push(format!("{board}: {l} is listed before {d}, which it needs"));
                    }
                }
            }
        }
    }
    if lines.iter().collect::<BTreeSet<_>>().len() != lines.len() {
        errors.push(format!("{board}: relaybox.load lists a module twice"));
    }
    errors
}

/// A partition of a disk image: offsets in bytes, the type as a GPT GUID or
/// an MBR type in hex.
#[derive(Debug)]
struct Partition {
    start: u64,
    size: u64,
    kind: String,
    name: String,
    bootable: bool,
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8..10].iter().map(|x| format!("{x:02X}")).collect::<String>(),
        b[10..16].iter().map(|x| format!("{x:02X}")).collect::<String>()
    )
}

/// The partition table of a disk image: (GPT?, partitions in table order).
fn partitions(disk: &[u8]) -> Result<(bool, Vec<Partition>), String> {
    if disk.len() < 34 * 512 || disk[510..512] != [0x55, 0xaa] {
        return Err("no MBR signature".into());
    }
    let mbr: Vec<&[u8]> = (0..4).map(|i| &disk[446 + 16 * i..446 + 16 * (i + 1)]).filter(|e| e[4] != 0).collect();
    if mbr.len() == 1 && mbr[0][4] == 0xee {
        let header = &disk[512..1024];
        if &header[..8] != b"EFI PART" {
            return Err("protective MBR without a GPT header".into());
        }
        let (at, count, size) = (le64(header, 72) * 512, le32(header, 80), le32(header, 84));
        let mut parts = Vec::new();
        for i in 0..count {
            let e = &disk[(at + i * size) as usize..(at + (i + 1) * size) as usize];
            if e[..16].iter().all(|&x| x == 0) {
                continue;
            }
            let name: Vec<u16> =
                e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
            parts.push(Partition {
                start: le64(e, 32) * 512,
                size: (le64(e, 40) - le64(e, 32) + 1) * 512,
                kind: guid(&e[..16]),
                name: String::from_utf16_lossy(&name),
                bootable: le64(e, 48) & 4 != 0,
            });
        }
        return Ok((true, parts));
    }
    let parts = mbr
        .iter()
        .map(|e| Partition {
            start: le32(e, 8) * 512,
            size: le32(e, 12) * 512,
            kind: format!("{:02x}", e[4]),
            name: String::new(),
            bootable: e[0] == 0x80,
        })
        .collect();
    Ok((false, parts))
}

/// The volume label of an ext2/3/4 file system image.
fn ext4_label(part: &[u8]) -> Option<String> {
    (part.len() > 1024 + 136 && part[1024 + 56..1024 + 58] == [0x53, 0xef]).then(|| {
        let name = &part[1024 + 120..1024 + 136];
        String::from_utf8_lossy(&name[..name.iter().position(|&c| c == 0).unwrap_or(16)]).into_owned()
    })
}

/// The update key the tests give BR2_PACKAGE_RELAYBOX_UPDATE_KEY (RFC
/// 8410's example public key).
fn test_update_key() -> PathBuf {
    let path = work().join("update-key.pub");
    let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem) {
        std::fs::create_dir_all(work()).unwrap();
        std::fs::write(&path, pem).unwrap();
    }
    path
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn a_build_without_the_update_key_stops_at_once() {
    let p = prepared();
    let b = p.boards.iter().find(|b| b.name == "qemu-x86_64").unwrap();
    // `relaybox-dirclean` is a build target (BR_BUILDING) that does nothing
    // in the test's output directory: make stops while it reads the
    // makefiles, before anything is built, unless the key is set.
    let out = run(make(&p.buildroot, &b.out).arg("relaybox-dirclean"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("set BR2_PACKAGE_RELAYBOX_UPDATE_KEY"),
        "a build without BR2_PACKAGE_RELAYBOX_UPDATE_KEY should stop naming it: {stderr}"
    );
    let key = format!("BR2_PACKAGE_RELAYBOX_UPDATE_KEY={}", test_update_key().display());
    ok(make(&p.buildroot, &b.out).arg("relaybox-dirclean").arg(key));
}

/// The EFI boot loader a configuration puts on the ESP: GRUB (what
/// Buildroot builds) or systemd-boot from BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loader {
    Grub,
    SystemdBoot,
}

#[test]
#[ignore = "runs Buildroot: ci/test.sh"]
fn post_build_and_post_image_lay_out_the_xtask_disk_with_genimage() {
    let p = prepared();
    let mut errors = Vec::new();
    for b in &p.boards {
        let conf = board_conf(b.name);
        let efi_board = conf["DISK_LAYOUT"] == "gpt-efi";
        let loaders: &[Option<Loader>] =
            if efi_board { &[Some(Loader::Grub), Some(Loader::SystemdBoot)] } else { &[None] };
        for &loader in loaders {
            errors.extend(post_scripts(p, b, &conf, loader));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// post-build.sh and post-image.sh for one board (and one EFI boot loader).
fn post_scripts(p: &Prepared, b: &Board, conf: &BTreeMap<String, String>, loader: Option<Loader>) -> Vec<String> {
    let mut errors = Vec::new();
    let label = match loader {
        Some(Loader::SystemdBoot) => format!("{} (systemd-boot)", b.label),
        _ => b.label.clone(),
    };
    let scratch = work().join("scripts").join(label.replace(' ', "-").replace(['(', ')'], ""));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // The configuration as the operator set it: the defconfig, plus
    // systemd-boot for the second run of an EFI board.
    let mut config = read(&b.out.join(".config"));
    if loader == Some(Loader::SystemdBoot) {
        config.push_str("BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI=\"/somewhere/systemd-boot.efi\"\n");
    }
    let config_path = scratch.join(".config");
    std::fs::write(&config_path, &config).unwrap();

    let target = fake_target_dir(&scratch);
    let script_env = |cmd: &mut Command| {
        cmd.current_dir(&p.buildroot)
            .env("BR2_CONFIG", &config_path)
            .env("TARGET_DIR", &target)
            .env("BUILD_DIR", scratch.join("build"))
            .env("BINARIES_DIR", scratch.join("images"))
            .env("BASE_DIR", &scratch);
    };
    let post_build = || {
        let mut cmd = Command::new(tree().join("board/post-build.sh"));
        cmd.arg(&target).arg(b.name);
        script_env(&mut cmd);
        run(&mut cmd)
    };
    // Without the update key (the package's hook did not run), no image.
    let out = post_build();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("BR2_PACKAGE_RELAYBOX_UPDATE_KEY") {
        errors.push(format!("{label}: post-build.sh without update.pub should fail naming the setting: {stderr}"));
    }
    // The package's hook, as printvars shows it, installs the key.
    let hook = b.var("RELAYBOX_INSTALL_UPDATE_KEY").replace(b.var("TARGET_DIR"), &target.display().to_string());
    ok(Command::new("sh").arg("-ec").arg(&hook));
    let key = test_update_key();
    if std::fs::read(target.join("etc/relaybox/update.pub")).ok() != std::fs::read(&key).ok() {
        errors.push(format!("{label}: /etc/relaybox/update.pub is not BR2_PACKAGE_RELAYBOX_UPDATE_KEY's file"));
    }
    // post-build.sh, twice: Buildroot runs it again at each `make`.
    for _ in 0..2 {
        let out = post_build();
        if !out.status.success() {
            errors.push(format!("{label}: post-build.sh failed: {}", String::from_utf8_lossy(&out.stderr)));
            return errors;
        }
    }
    let installed = read(&target.join("etc/relaybox/board.conf"));
    assert_eq!(installed, read(&root().join("board").join(b.name).join("board.conf")), "{}: board.conf", b.name);
    let inittab = read(&target.join("etc/inittab"));
    // The Raspberry Pi kernel names the Pi's console UART its own way.
    let console_tty = if b.rpi_kernel() { &conf["RPI_KERNEL_CONSOLE"] } else { &conf["CONSOLE"] };
    let console = if conf.get("CONSOLE_SHELL").is_some_and(|v| v == "yes") {
        "::respawn:-/bin/sh".to_string()
    } else {
        format!("{0}::respawn:/sbin/getty -L {1} {0} vt100", console_tty, conf["CONSOLE_BAUD"])
    };
    let n = inittab.lines().filter(|l| *l == console).count();
    if n != 1 || !inittab.contains("::sysinit:/etc/init.d/rcS") {
        errors.push(format!("{label}: inittab should have rcS and `{console}` once:\n{inittab}"));
    }
    let resolv = std::fs::read_link(target.join("etc/resolv.conf")).ok();
    if resolv.as_deref() != Some(Path::new("../run/resolv.conf")) {
        errors.push(format!("{label}: /etc/resolv.conf -> {resolv:?}, not ../run/resolv.conf"));
    }
    errors.extend(check_module_list(b.name, &read(&target.join("lib/modules/6.1.174/relaybox.load"))));

    // The release file as the xtask writes it (relaybox-update's own
    // rendering), which `relaybox update` reads; with GRUB a scheme it
    // refuses. The Pi's says how a new slot is tried: the firmware's
    // tryboot with the Raspberry Pi kernel, counted by init with another.
    let release_text = read(&target.join("etc/relaybox/release"));
    let version = release_text
        .lines()
        .find_map(|l| l.strip_prefix("VERSION=\"").and_then(|v| v.strip_suffix('"')))
        .unwrap_or_default()
        .to_string();
    let scheme = match loader {
        Some(Loader::Grub) => None,
        Some(Loader::SystemdBoot) => Some(relaybox_update::Scheme::Efi),
        None if b.rpi_kernel() => Some(relaybox_update::Scheme::Rpi(relaybox_update::PiTry::Tryboot)),
        None => Some(relaybox_update::Scheme::Rpi(relaybox_update::PiTry::Counted)),
    };
    match (scheme, relaybox_update::Release::parse(&release_text)) {
        (Some(scheme), Ok(release)) => {
            let want =
                relaybox_update::Release { board: b.name.to_string(), version: version.parse().unwrap(), scheme };
            if release.render() != want.render() || release_text != want.render() {
                errors.push(format!("{label}: release file {release_text:?}, the xtask writes {:?}", want.render()));
            }
        }
        (None, Err(_))
            if release_text == format!("BOARD=\"{}\"\nVERSION=\"{version}\"\nBOOT_SCHEME=\"grub\"\n", b.name) => {}
        (want, got) => errors.push(format!("{label}: release file {release_text:?} ({got:?}), want scheme {want:?}")),
    }

    // post-image.sh on what this configuration's packages install in
    // BINARIES_DIR (names from printvars), with the real genimage.
    let images = scratch.join("images");
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut input = |path: PathBuf, what: &str| {
        let data = format!("{what} for {}\n", b.name).into_bytes();
        inputs.push((path, data.clone()));
        data
    };
    let kernel = input(images.join(b.var("LINUX_IMAGE_NAME")), "kernel");
    let cpio = format!("{}{}", b.var("ROOTFS_CPIO_FINAL_IMAGE_NAME"), b.var("ROOTFS_CPIO_COMPRESS_EXT"));
    let initrd = input(images.join(cpio), "initramfs");
    let mut efi = None;
    for tuple in b.var_or_empty("GRUB2_TUPLES-y").split_whitespace() {
        let image = b.var(&format!("GRUB2_IMAGE_{tuple}"));
        let rel = Path::new(image).strip_prefix(b.out.join("images")).unwrap().display().to_string();
        let data = input(images.join(rel), tuple);
        if loader == Some(Loader::Grub) {
            efi = Some(data);
        }
    }
    if loader == Some(Loader::SystemdBoot) {
        // What the package's RELAYBOX_INSTALL_IMAGES_CMDS installs.
        efi = Some(input(images.join("relaybox-systemd-boot.efi"), "systemd-boot"));
    }
    for f in b.var_or_empty("RPI_FIRMWARE_FILES").split_whitespace() {
        input(images.join(format!("rpi-firmware/{f}")), f);
    }
    if !b.var_or_empty("RPI_FIRMWARE_FILES").is_empty() {
        input(scratch.join("build/rpi-firmware-0123abcd/boot/LICENCE.broadcom"), "licence");
    }
    for dtb in b.var_or_empty("LINUX_DTBS").split_whitespace() {
        input(images.join(Path::new(dtb).file_name().unwrap()), dtb);
    }
    for (path, data) in &inputs {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    std::fs::create_dir_all(scratch.join("build")).unwrap();
    let mut cmd = Command::new(tree().join("board/post-image.sh"));
    cmd.arg(&images).arg(b.name);
    script_env(&mut cmd);
    let out = run(&mut cmd);
    if !out.status.success() {
        errors.push(format!(
            "{label}: post-image.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        return errors;
    }
    let want = Want {
        board: b.name,
        conf,
        version: &version,
        kernel: &kernel,
        initrd: &initrd,
        efi,
        loader,
        rpi_kernel: b.rpi_kernel(),
    };
    let mut e = |m: String| errors.push(format!("{label}: {m}"));
    check_disk(&mut e, &images, &want);
    // An update of this box: `cargo xtask bundle --slot` of the slot
    // post-image.sh staged, signed with the private half of the update key,
    // is what the box (its update.pub, its board) installs.
    if let Some(scheme) = scheme {
        let slot = match scheme {
            relaybox_update::Scheme::Efi => images.join("relaybox-boot/slot-a"),
            relaybox_update::Scheme::Rpi(_) => images.join("relaybox-slot"),
        };
        let signing = work().join("update-key.key");
        std::fs::write(&signing, TEST_SIGNING_KEY).unwrap();
        let bundle = scratch.join("update.bundle");
        match xtask::bundle::make_from_slot(&slot, &signing, Some(bundle.clone())) {
            Err(err) => e(format!("cargo xtask bundle --slot {}: {err:#}", slot.display())),
            Ok(_) => {
                let pem = read(&target.join("etc/relaybox/update.pub"));
                let key = relaybox_update::PublicKey::from_pem(&pem).unwrap();
                let running: relaybox_update::Version = "0.0.1".parse().unwrap();
                let expect = relaybox_update::Expect {
                    key: &key,
                    board: b.name,
                    running: &running,
                    force: false,
                    max_total: u64::MAX,
                    required: scheme.required_files(),
                };
                let opened = relaybox_update::bundle::open(std::fs::File::open(&bundle).unwrap(), &expect)
                    .and_then(|(checked, files)| files.each(|_| Ok(())).map(|()| checked));
                match opened {
                    Ok(checked) if checked.manifest.version == version => {}
                    other => e(format!("the box would not install the bundle of its own slot: {other:?}")),
                }
            }
        }
    }
    // The disk images take hundreds of MiB: kept only to look into a failure.
    if errors.is_empty() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    errors
}

/// The private key of test_update_key() (RFC 8410, section 10.3).
const TEST_SIGNING_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

/// What the disk of a board must hold.
struct Want<'a> {
    board: &'a str,
    conf: &'a BTreeMap<String, String>,
    version: &'a str,
    kernel: &'a [u8],
    initrd: &'a [u8],
    /// The EFI boot loader's bytes.
    efi: Option<Vec<u8>>,
    loader: Option<Loader>,
    /// The Raspberry Pi kernel: its own command line and config.txt
    /// (board.conf's RPI_KERNEL_*).
    rpi_kernel: bool,
}

impl Want<'_> {
    fn cmdline(&self) -> &str {
        &self.conf[if self.rpi_kernel { "RPI_KERNEL_CMDLINE" } else { "KERNEL_CMDLINE" }]
    }
}

/// The FAT volume label and type (FAT16 or FAT32) of a FAT image.
fn fat_label(part: &[u8]) -> Option<(String, &'static str)> {
    if part.len() > 90 && &part[82..87] == b"FAT32" {
        return Some((String::from_utf8_lossy(&part[71..82]).trim_end().to_string(), "FAT32"));
    }
    (part.len() > 62 && &part[54..59] == b"FAT16")
        .then(|| (String::from_utf8_lossy(&part[43..54]).trim_end().to_string(), "FAT16"))
}

/// A file of a FAT image, as bytes.
fn fat_file(image: &Path, path: &str) -> Option<Vec<u8>> {
    let out = run(Command::new("mtype").arg("-i").arg(image).arg(format!("::{path}")));
    out.status.success().then_some(out.stdout)
}

/// The names in a directory of a FAT image (directories too), sorted.
fn fat_names(image: &Path, dir: &str) -> Vec<String> {
    let out = run(Command::new("mdir").args(["-b", "-i"]).arg(image).arg(format!("::{dir}")));
    if !out.status.success() {
        return vec![format!("(no {dir}: {})", String::from_utf8_lossy(&out.stderr).trim())];
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches('/').rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// Slot a's files on a FAT image against the xtask's slot: `names` in the
/// xtask's order, the kernel, initramfs and command line as given, and
/// manifest.json as relaybox-update's `describe` writes it for them.
fn check_slot(e: &mut dyn FnMut(String), image: &Path, dir: &str, names: &[&str], want: &Want) {
    let mut listed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    listed.push(relaybox_update::install::SLOT_MANIFEST.into());
    listed.sort();
    let found = fat_names(image, dir);
    if found != listed {
        e(format!("slot a ({dir}) holds {found:?}, the xtask's {listed:?}"));
        return;
    }
    let cmdline = format!("{}\n", want.cmdline());
    for (name, data) in [("vmlinuz", want.kernel), ("initrd.img", want.initrd), ("cmdline.txt", cmdline.as_bytes())] {
        if fat_file(image, &format!("{dir}/{name}")).as_deref() != Some(data) {
            e(format!("slot a's {name} is not the build's"));
        }
    }
    let files = image.with_extension("files");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files).unwrap();
    let mut slot = Vec::new();
    for name in names {
        let path = files.join(name);
        std::fs::write(&path, fat_file(image, &format!("{dir}/{name}")).unwrap_or_default()).unwrap();
        slot.push((name.to_string(), path));
    }
    let manifest = relaybox_update::bundle::describe(want.board, want.version, &slot).unwrap().to_json();
    let found = fat_file(image, &format!("{dir}/{}", relaybox_update::install::SLOT_MANIFEST)).unwrap_or_default();
    if found != manifest {
        e(format!(
            "slot a's manifest.json:\n{}\nis not what the xtask writes:\n{}",
            String::from_utf8_lossy(&found),
            String::from_utf8_lossy(&manifest)
        ));
    }
    if let Err(err) = relaybox_update::Manifest::parse(&found, u64::MAX) {
        e(format!("slot a's manifest.json does not parse: {err}"));
    }
}

/// disk.img against the layout of `cargo xtask image` for this board
/// (board/README.md, "Disk layout"; host-tools/xtask/src/image.rs).
fn check_disk(e: &mut dyn FnMut(String), images: &Path, want: &Want) {
    let conf = want.conf;
    let disk = std::fs::read(images.join("disk.img")).unwrap();
    let gpt = conf["DISK_LAYOUT"] == "gpt-efi";
    let count = if gpt { 2 } else { 4 };
    let parts = match partitions(&disk) {
        Ok((is_gpt, parts)) if is_gpt == gpt && parts.len() == count => parts,
        other => {
            e(format!("want a {} table with {count} partitions: {other:?}", if gpt { "GPT" } else { "MBR" }));
            return;
        }
    };
    const MIB: u64 = 1024 * 1024;
    let mut at = MIB;
    for part in &parts {
        if part.start != at || part.size % MIB != 0 {
            e(format!("partitions should follow each other from 1 MiB in whole MiB: {parts:?}"));
            break;
        }
        at += part.size;
    }
    let slice = |p: &Partition| disk.get(p.start as usize..(p.start + p.size) as usize).unwrap_or(&[]).to_vec();
    let part_image = |i: usize| {
        let path = images.join(format!("check-p{}.img", i + 1));
        std::fs::write(&path, slice(&parts[i])).unwrap();
        path
    };
    let cfg = parts.last().unwrap();
    let cfg_size: u64 = conf["CFG_SIZE_MIB"].parse().unwrap();
    if cfg.size != cfg_size * MIB {
        e(format!("the config partition should be {cfg_size} MiB: {cfg:?}"));
    }
    // The size of slot a's files, from its manifest (check_slot checks it).
    let slot_bytes = |image: &Path, dir: &str| {
        let m = fat_file(image, &format!("{dir}/{}", relaybox_update::install::SLOT_MANIFEST)).unwrap_or_default();
        relaybox_update::Manifest::parse(&m, u64::MAX).map(|m| m.total_size()).unwrap_or(0)
    };
    let esp_min: u64 = conf["ESP_SIZE_MIB"].parse().unwrap();
    if gpt {
        let (boot, cfg) = (&parts[0], &parts[1]);
        let (esp_type, linux) = ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        if boot.kind != esp_type || cfg.kind != linux {
            e(format!("partition types should be {esp_type} and {linux}: {boot:?} {cfg:?}"));
        }
        if boot.name != xtask::disk::ESP_NAME || cfg.name != xtask::disk::CFG_LABEL {
            let names = (xtask::disk::ESP_NAME, xtask::disk::CFG_LABEL);
            e(format!("GPT names should be {names:?}: {boot:?} {cfg:?}"));
        }
        // As the xtask: room for two slots half again as big as this one.
        let esp = part_image(0);
        let esp_mib = xtask::disk::esp_mib(esp_min, slot_bytes(&esp, "/slot-a"));
        if boot.size != esp_mib * MIB {
            e(format!("the EFI system partition should be {esp_mib} MiB: {boot:?}"));
        }
        if fat_label(&slice(boot)) != Some((xtask::disk::BOOT_LABEL.into(), "FAT32")) {
            e(format!(
                "the EFI system partition is not FAT32 {} ({:?})",
                xtask::disk::BOOT_LABEL,
                fat_label(&slice(boot))
            ));
        }
        let efi_name = format!("BOOT{}.EFI", conf["EFI_ARCH"].to_uppercase());
        let top: Vec<String> = ["EFI", "loader", "slot-a", "slot-b"].iter().map(|s| s.to_string()).collect();
        if fat_names(&esp, "/") != top {
            e(format!("the EFI system partition holds {:?}, the xtask's {top:?}", fat_names(&esp, "/")));
        }
        if want.efi.is_none() || fat_file(&esp, &format!("/EFI/BOOT/{efi_name}")) != want.efi {
            e(format!("/EFI/BOOT/{efi_name} is not the configured boot loader ({:?})", want.loader));
        }
        let loader_conf = read(&root().join("board").join(want.board).join("loader.conf"));
        if fat_file(&esp, "/loader/loader.conf").as_deref() != Some(loader_conf.as_bytes()) {
            e("loader/loader.conf is not board/<board>/loader.conf".into());
        }
        let first = relaybox_update::efi::Entry { generation: 1, slot: relaybox_update::Slot::A, tries: None };
        if fat_names(&esp, "/loader/entries") != [first.file_name()] {
            e(format!("loader/entries holds {:?}, the xtask's [{}]", fat_names(&esp, "/loader/entries"), first));
        }
        let text = first.text(want.version, &conf["KERNEL_CMDLINE"]);
        let found = fat_file(&esp, &format!("/loader/entries/{first}")).unwrap_or_default();
        if found != text.as_bytes() {
            e(format!("{first}:\n{}\nis not the xtask's:\n{text}", String::from_utf8_lossy(&found)));
        }
        check_slot(e, &esp, "/slot-a", &["cmdline.txt", "vmlinuz", "initrd.img"], want);
        if !fat_names(&esp, "/slot-b").is_empty() {
            e(format!("slot-b should be empty: {:?}", fat_names(&esp, "/slot-b")));
        }
        let grub = fat_file(&esp, "/EFI/BOOT/grub.cfg").map(|d| String::from_utf8_lossy(&d).into_owned());
        match want.loader {
            Some(Loader::Grub) => {
                let grub = grub.unwrap_or_default();
                let cmdline = format!("linux /slot-a/vmlinuz {} relaybox.slot=a\n", conf["KERNEL_CMDLINE"]);
                if !grub.contains(&cmdline) || !grub.contains("initrd /slot-a/initrd.img") {
                    e(format!("grub.cfg does not boot slot a ({cmdline:?}):\n{grub}"));
                }
            }
            _ => {
                if grub.is_some() {
                    e("a grub.cfg next to systemd-boot".into());
                }
            }
        }
    } else {
        let kinds: Vec<&str> = parts.iter().map(|p| p.kind.as_str()).collect();
        let bootable: Vec<bool> = parts.iter().map(|p| p.bootable).collect();
        if kinds != ["0c", "0c", "0c", "83"] || bootable != [true, false, false, false] {
            e(format!("MBR types should be 0c 0c 0c 83, the first bootable: {parts:?}"));
        }
        let slot_mib = xtask::disk::pi_slot_mib(esp_min, slot_bytes(&part_image(1), ""));
        let sizes: Vec<u64> = parts[..3].iter().map(|p| p.size / MIB).collect();
        if sizes != [xtask::disk::PI_BOOT_MIB, slot_mib, slot_mib] {
            e(format!("partitions 1 to 3 should be {} MiB, {slot_mib} MiB twice: {parts:?}", xtask::disk::PI_BOOT_MIB));
        }
        let labels: Vec<Option<(String, &str)>> = parts[..3].iter().map(|p| fat_label(&slice(p))).collect();
        let [label_a, label_b] = xtask::disk::PI_SLOT_LABELS;
        let want_labels = [
            Some((xtask::disk::BOOT_LABEL.into(), "FAT16")),
            Some((label_a.into(), "FAT32")),
            Some((label_b.into(), "FAT32")),
        ];
        if labels != want_labels {
            e(format!("FAT labels {labels:?}, the xtask's {want_labels:?}"));
        }
        let p1 = part_image(0);
        if fat_names(&p1, "/") != [relaybox_update::pi::AUTOBOOT] {
            e(format!("partition 1 should hold autoboot.txt only: {:?}", fat_names(&p1, "/")));
        }
        let autoboot = relaybox_update::pi::Autoboot::for_good(relaybox_update::Slot::A).render();
        if fat_file(&p1, "/autoboot.txt").as_deref() != Some(autoboot.as_bytes()) {
            e(format!("autoboot.txt is not the xtask's:\n{autoboot}"));
        }
        let mut names = vec!["cmdline.txt", "config.txt", "vmlinuz", "initrd.img"];
        let dtbs: Vec<&str> = conf["DTBS"].split_whitespace().map(|d| d.rsplit('/').next().unwrap()).collect();
        names.extend(dtbs);
        names.extend(["start4.elf", "fixup4.dat", "LICENCE.broadcom"]);
        let slot_a = part_image(1);
        check_slot(e, &slot_a, "/", &names, want);
        let config_name = if want.rpi_kernel { conf["RPI_KERNEL_CONFIG_TXT"].as_str() } else { "config.txt" };
        let config_txt = read(&root().join("board").join(want.board).join(config_name));
        if fat_file(&slot_a, "/config.txt").as_deref() != Some(config_txt.as_bytes()) {
            e(format!("config.txt is not board/<board>/{config_name}"));
        }
        // The firmware's watchdog, for a kernel or an init that hangs.
        if !config_txt.lines().any(|l| l.starts_with("kernel_watchdog_timeout=")) {
            e(format!("board/<board>/{config_name} sets no kernel_watchdog_timeout"));
        }
        if !fat_names(&part_image(2), "/").is_empty() {
            e("slot b should be empty".into());
        }
    }
    let cfg_data = slice(cfg);
    let cfg_img = images.join("check-config.img");
    std::fs::write(&cfg_img, &cfg_data).unwrap();
    match conf.get("CFG_FS").map(String::as_str).unwrap_or("ext4") {
        "vfat" => {
            if fat_label(&cfg_data).map(|l| l.0).as_deref() != Some(xtask::disk::CFG_LABEL_FAT) {
                e(format!("the config partition should be vfat {} (board.conf CFG_FS)", xtask::disk::CFG_LABEL_FAT));
            }
            let listing = ok(Command::new("mdir").arg("-b").arg("-i").arg(&cfg_img).arg("::/"));
            if !listing.trim().is_empty() {
                e(format!("the config partition should be empty: {listing}"));
            }
        }
        _ => {
            if ext4_label(&cfg_data).as_deref() != Some(xtask::disk::CFG_LABEL) {
                e(format!("the config partition should be ext4 {} (board.conf CFG_FS)", xtask::disk::CFG_LABEL));
            }
            let listing = ok(Command::new("debugfs").arg("-R").arg("ls -p /").arg(&cfg_img));
            let names: Vec<&str> =
                listing.lines().filter_map(|l| l.split('/').nth(5)).filter(|n| !n.is_empty()).collect();
            if names.iter().any(|n| ![".", "..", "lost+found"].contains(n)) {
                e(format!("the config partition should be empty: {names:?}"));
            }
        }
    }
    if std::fs::metadata(images.join("disk.img.xz")).map(|m| m.len()).unwrap_or(0) == 0 {
        e("no disk.img.xz".into());
    }
}

/// The words of a shell command line (quotes removed; enough for the
/// commands Buildroot prints: VAR="value" assignments and plain words).
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A cargo step as printvars shows it: `cd DIR && VAR=... cargo ARGS`.
struct CargoStep {
    text: String,
    args: Vec<String>,
}

fn cargo_step(b: &Board, var: &str) -> CargoStep {
    let text = b.var(var).to_string();
    let after_cd = text.split_once("&&").map(|(_, rest)| rest).unwrap_or_else(|| panic!("{var}: no `cd ... &&`"));
    let words = shell_words(after_cd);
    let at = words.iter().position(|w| w == "cargo").unwrap_or_else(|| panic!("{var}: no cargo in {text}"));
    assert!(words[..at].iter().all(|w| w.contains('=')), "{}: {var}: more than assignments before cargo", b.name);
    CargoStep { text, args: words[at + 1..].to_vec() }
}

/// The host programs standing in for the Buildroot toolchain's, by the
/// Rust target (as host-tools/xtask/cross.toml): a C compiler with musl's
/// headers, the linker (rustc brings musl's crt objects and libc.a, so a
/// plain gcc links), the archiver.
fn host_toolchain(rust_target: &str) -> (&'static str, &'static str, &'static str) {
    match rust_target {
        "x86_64-unknown-linux-musl" => ("musl-gcc", "cc", "ar"),
        "aarch64-unknown-linux-musl" => (
            "aarch64-linux-gnu-gcc -isystem /usr/include/aarch64-linux-musl",
            "aarch64-linux-gnu-gcc",
            "aarch64-linux-gnu-ar",
        ),
        other => panic!("no host toolchain for {other}"),
    }
}

/// The toolchain programs the build commands name (TARGET_CROSS gcc, as
/// CC and as the linker, found first in PATH at HOST_DIR/bin, and gcc-ar)
/// as wrappers around the host's tools for the same target.
fn toolchain_wrappers(b: &Board) {
    let cross = b.var("TARGET_CROSS");
    let (cc, ld, ar) = host_toolchain(b.var("RUSTC_TARGET_NAME"));
    let gcc = format!("for a in \"$@\"; do case \"$a\" in -c|-E|-S) exec {cc} \"$@\";; esac; done\nexec {ld} \"$@\"\n");
    use std::os::unix::fs::PermissionsExt;
    for (suffix, body) in [("gcc", gcc), ("gcc-ar", format!("exec {ar} \"$@\"\n"))] {
        let path = PathBuf::from(format!("{cross}{suffix}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n# stands in for Buildroot's toolchain (test)\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs a printed cargo step: in RELAYBOX_SRCDIR, with the printed
/// environment, except CARGO_HOME (a fresh directory: only the vendored
/// crates can serve). CARGO_TARGET_DIR keeps the compiled crates between
/// runs (Buildroot builds in the source's target/), so that a rerun
/// recompiles only the workspace's crates.
fn run_step(b: &Board, step: &CargoStep, srcdir: &str, cargo_home: &Path, extra: &str, log: &Path) -> Output {
    let rest = step.text.split_once("&&").unwrap().1;
    let br_home = b.var("BR_CARGO_HOME");
    assert!(rest.contains(&format!("CARGO_HOME={br_home} ")), "{}: no CARGO_HOME={br_home} in {rest}", b.name);
    let rest = rest.replace(&format!("CARGO_HOME={br_home} "), &format!("CARGO_HOME={} ", cargo_home.display()));
    let script = format!("cd '{srcdir}' && {rest} {extra} > '{}' 2>&1", log.display());
    // The workspace's release profile (one codegen unit, whole-program LTO)
    // takes a CI run minutes more than the firmware builds already spend on
    // it; what this test checks (offline vendored build, features, a static
    // binary installed where Buildroot puts it) does not depend on it.
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("CARGO_TARGET_DIR", work().join("cargo-target"))
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .output()
        .unwrap()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Overrides for a working tree with uncommitted changes: Buildroot fetches
/// HEAD, so the test fetches a commit of the working tree instead (made by
/// `git stash create`, pushed to a scratch repository; the checkout's refs
/// are left alone). Empty for a clean tree: Buildroot's own SITE/VERSION.
fn working_tree_overrides() -> Vec<String> {
    let git = |args: &[&str]| ok(Command::new("git").arg("-C").arg(root()).args(args)).trim().to_string();
    let stash = git(&["stash", "create"]);
    if stash.is_empty() {
        return Vec::new();
    }
    let scratch = work().join("worktree.git");
    if !scratch.join("HEAD").exists() {
        ok(Command::new("git").arg("init").arg("-q").arg("--bare").arg(&scratch));
    }
    git(&["push", "-q", "-f", &scratch.display().to_string(), &format!("{stash}:refs/heads/worktree")]);
    eprintln!("buildroot: uncommitted changes: building the working tree as {stash} (untracked files are not in it)");
    vec![format!("RELAYBOX_SITE={}", scratch.display()), format!("RELAYBOX_VERSION={stash}")]
}

#[test]
#[ignore = "runs Buildroot and cargo: ci/test.sh"]
fn the_package_downloads_builds_and_installs_with_cargo_offline() {
    let p = prepared();
    let t0 = Instant::now();
    let head = ok(Command::new("git").arg("-C").arg(root()).args(["rev-parse", "HEAD"])).trim().to_string();
    let workspace: toml_lite::Cargo = toml_lite::Cargo::read(&root().join("Cargo.toml"));
    let mut errors = Vec::new();

    // What every board's package says.
    let mut lines = BTreeSet::new();
    for b in &p.boards {
        let e = |m: String| format!("{}: {m}", b.label);
        if b.var("RELAYBOX_SITE_METHOD") != "git" {
            errors.push(e(format!(
                "RELAYBOX_SITE_METHOD is {}: only a download gets Buildroot's cargo vendoring",
                b.var("RELAYBOX_SITE_METHOD")
            )));
        }
        if Path::new(b.var("RELAYBOX_SITE")) != root() || b.var("RELAYBOX_VERSION") != head {
            errors.push(e(format!(
                "the package should fetch this checkout's HEAD: SITE {} VERSION {}",
                b.var("RELAYBOX_SITE"),
                b.var("RELAYBOX_VERSION")
            )));
        }
        // (Buildroot's cargo infrastructure appends a note on the vendored crates.)
        if !b.var("RELAYBOX_LICENSE").starts_with("GPL-2.0+") || workspace.license != "GPL-2.0-or-later" {
            errors.push(e(format!("licence {} vs the workspace's {}", b.var("RELAYBOX_LICENSE"), workspace.license)));
        }
        for f in b.var("RELAYBOX_LICENSE_FILES").split_whitespace() {
            let text = std::fs::read_to_string(root().join(f)).unwrap_or_default();
            if !text.contains("GNU GENERAL PUBLIC LICENSE") || !text.contains("Version 2, June 1991") {
                errors.push(e(format!("RELAYBOX_LICENSE_FILES {f} is not the GPL-2.0 text")));
            }
        }
        let build = cargo_step(b, "RELAYBOX_BUILD_CMDS");
        let install = cargo_step(b, "RELAYBOX_INSTALL_TARGET_CMDS");
        for (step, args) in [("build", &build.args), ("install", &install.args)] {
            for flag in ["--offline", "--locked"] {
                if !args.iter().any(|a| a == flag) {
                    errors.push(e(format!("cargo {step} without {flag}: {args:?}")));
                }
            }
            if args.iter().filter(|a| *a == "--path").count() > 1 {
                errors.push(e(format!("cargo {step} gets --path twice (cargo refuses): {args:?}")));
            }
        }
        let features = |args: &[String]| {
            let i = args.iter().position(|a| a == "--features");
            (args.contains(&"--no-default-features".to_string()), i.map(|i| args[i + 1].clone()))
        };
        if features(&build.args) != features(&install.args) {
            errors.push(e(format!("install builds other features than build: {:?} / {:?}", build.args, install.args)));
        }
        lines.insert(format!(
            "{:?} {:?}",
            build.args,
            install.args.iter().filter(|a| !a.starts_with('/')).collect::<Vec<_>>()
        ));
    }
    if lines.len() != 1 {
        errors.push(format!("the boards' cargo command lines differ: {lines:#?}"));
    }
    // The host's cross settings must not reach other cargo builds.
    let cargo_config = read(&root().join(".cargo/config.toml"));
    for line in cargo_config.lines().map(str::trim) {
        if line.starts_with("[target") || line.starts_with("[env") || line.starts_with("[build") {
            errors.push(format!(".cargo/config.toml has {line}: host toolchain settings reach Buildroot's cargo"));
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");

    // Buildroot's download (git clone of the checkout, cargo vendor) and
    // extract steps, for the x86_64 board. host-rustc and host-tar are
    // download dependencies Buildroot would build first: the host's cargo
    // and tar stand in for them.
    let b = p.boards.iter().find(|b| b.name == "qemu-x86_64").unwrap();
    let overrides = working_tree_overrides();
    let vars = if overrides.is_empty() { b.vars.clone() } else { printvars(&p.buildroot, &b.out, VARS, &overrides) };
    let b = Board {
        name: b.name,
        label: b.label.clone(),
        out: b.out.clone(),
        defconfig: BTreeSet::new(),
        saved: BTreeSet::new(),
        config: BTreeMap::new(),
        vars,
    };
    let build_dir = b.out.join("build");
    for old in std::fs::read_dir(&build_dir).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with("relaybox-") && old.path() != Path::new(b.var("RELAYBOX_DIR"))
        {
            std::fs::remove_dir_all(old.path()).unwrap();
        }
    }
    let dl = work().join("dl/relaybox");
    for old in std::fs::read_dir(&dl).into_iter().flatten().flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tar.gz") && name != b.var("RELAYBOX_SOURCE") {
            std::fs::remove_file(old.path()).unwrap();
        }
    }
    let log = work().join("relaybox-extract.log");
    let log_file = std::fs::File::create(&log).unwrap();
    // A build target: make stops without the update key.
    let key = format!("BR2_PACKAGE_RELAYBOX_UPDATE_KEY={}", test_update_key().display());
    let out = run(make(&p.buildroot, &b.out)
        .args(&overrides)
        .arg(key)
        .args(["relaybox-extract", "RELAYBOX_DOWNLOAD_DEPENDENCIES=", "RELAYBOX_EXTRACT_DEPENDENCIES=", "TAR=tar"])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file));
    assert!(out.status.success(), "make relaybox-extract failed:\n{}", tail(&log));
    eprintln!("buildroot: {} downloaded and extracted ({:.0} s)", b.var("RELAYBOX_SOURCE"), t0.elapsed().as_secs_f64());

    let top = PathBuf::from(b.var("RELAYBOX_DIR"));
    let srcdir = b.var("RELAYBOX_SRCDIR").to_string();
    assert!(top.join("VENDOR").is_dir(), "the download has no vendored crates (VENDOR/)");
    let vendored = read(&top.join(".cargo/config.toml"));
    assert!(
        vendored.contains("replace-with = \"vendored-sources\"") && vendored.contains("directory = \"VENDOR\""),
        "{vendored}"
    );
    assert!(!top.join("target").exists(), "the download carries the checkout's target/");
    assert!(top.join("COPYING").is_file(), "the download has no COPYING");

    // Build, then install into TARGET_DIR, as printed.
    toolchain_wrappers(&b);
    let cargo_home = work().join("cargo-home");
    let _ = std::fs::remove_dir_all(&cargo_home);
    std::fs::create_dir_all(&cargo_home).unwrap();
    let target_dir = PathBuf::from(b.var("TARGET_DIR"));
    let _ = std::fs::remove_dir_all(&target_dir);
    std::fs::create_dir_all(target_dir.join("usr")).unwrap();
    for (var, name) in [("RELAYBOX_BUILD_CMDS", "build"), ("RELAYBOX_INSTALL_TARGET_CMDS", "install")] {
        let log = work().join(format!("relaybox-{name}.log"));
        let out = run_step(&b, &cargo_step(&b, var), &srcdir, &cargo_home, "", &log);
        assert!(out.status.success(), "{var} failed:\n{}", tail(&log));
        eprintln!("buildroot: cargo {name} done ({:.0} s)", t0.elapsed().as_secs_f64());
    }
    let bin = target_dir.join("usr/bin/relaybox");
    xtask::build::check_static(&bin).unwrap_or_else(|e| panic!("{e:#}"));
    let version = ok(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("relaybox {}", workspace.version));
    // The package's options: relay, web and clock, no dispatcher.
    for (sub, present) in [("relay", true), ("web", true), ("clock", true), ("dispatcher", false)] {
        let status = run(Command::new(&bin).arg(sub).arg("--help")).status;
        assert_eq!(status.success(), present, "relaybox {sub} --help: {status} (features of the package options)");
    }
    let size = std::fs::metadata(&bin).unwrap().len();
    eprintln!("buildroot: {} static, {} ({:.0} s)", bin.display(), xtask::mib(size), t0.elapsed().as_secs_f64());

    // The aarch64 board's command line, resolved by cargo for its target on
    // the same vendored source (without compiling it again).
    let a = p.boards.iter().find(|b| b.name == "qemu-aarch64").unwrap();
    toolchain_wrappers(a);
    let log = work().join("relaybox-aarch64.log");
    let out = run_step(
        a,
        &cargo_step(a, "RELAYBOX_BUILD_CMDS"),
        &srcdir,
        &cargo_home,
        "-Z unstable-options --unit-graph",
        &log,
    );
    assert!(out.status.success(), "aarch64 build command:\n{}", tail(&log));
    let graph = read(&log);
    let json = graph.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no unit graph:\n{graph}"));
    let graph: serde_json::Value = serde_json::from_str(json).unwrap();
    let units = graph["units"].as_array().unwrap();
    assert!(
        units.iter().any(|u| u["pkg_id"].as_str().is_some_and(|id| id.contains("relaybox"))
            && u["platform"] == a.var("RUSTC_TARGET_NAME")),
        "no relaybox unit for {}",
        a.var("RUSTC_TARGET_NAME")
    );
}

/// Just enough of the workspace's Cargo.toml.
mod toml_lite {
    pub struct Cargo {
        pub version: String,
        pub license: String,
    }
    impl Cargo {
        pub fn read(path: &std::path::Path) -> Cargo {
            let text = std::fs::read_to_string(path).unwrap();
            let get = |key: &str| {
                text.lines()
                    .skip_while(|l| l.trim() != "[workspace.package]")
                    .find_map(|l| l.trim().strip_prefix(&format!("{key} = ")).map(|v| v.trim_matches('"').to_string()))
                    .unwrap_or_else(|| panic!("[workspace.package] {key}"))
            };
            Cargo { version: get("version"), license: get("license") }
        }
    }
}
