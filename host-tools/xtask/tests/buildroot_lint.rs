//! Offline checks of the BR2_EXTERNAL tree in buildroot/ (Buildroot itself
//! cannot be fetched here): the files Buildroot looks for, Kconfig syntax
//! basics, every defconfig symbol defined in the tree or upstream (list
//! below), and the package .mk's variables. Each checker is also run on
//! broken input, so that it is known to catch what it claims to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64", "pc-x86_64-efi", "rpi4-arm64"];

/// Upstream Buildroot (2024.02 LTS) symbols the defconfigs may use.
const UPSTREAM: &[&str] = &[
    "BR2_x86_64",
    "BR2_x86_corei7",
    "BR2_aarch64",
    "BR2_cortex_a53",
    "BR2_cortex_a72",
    "BR2_TOOLCHAIN_BUILDROOT_MUSL",
    "BR2_TOOLCHAIN_BUILDROOT_GLIBC",
    "BR2_TARGET_GENERIC_HOSTNAME",
    "BR2_TARGET_GENERIC_ISSUE",
    "BR2_TARGET_GENERIC_GETTY",
    "BR2_TARGET_GENERIC_GETTY_PORT",
    "BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW",
    "BR2_INIT_BUSYBOX",
    "BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_DEVTMPFS",
    "BR2_SYSTEM_BIN_SH_BUSYBOX",
    "BR2_ROOTFS_OVERLAY",
    "BR2_ROOTFS_POST_BUILD_SCRIPT",
    "BR2_ROOTFS_POST_IMAGE_SCRIPT",
    "BR2_ROOTFS_POST_SCRIPT_ARGS",
    "BR2_LINUX_KERNEL",
    "BR2_LINUX_KERNEL_CUSTOM_VERSION",
    "BR2_LINUX_KERNEL_CUSTOM_VERSION_VALUE",
    "BR2_LINUX_KERNEL_USE_ARCH_DEFAULT_CONFIG",
    "BR2_LINUX_KERNEL_DEFCONFIG",
    "BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES",
    "BR2_LINUX_KERNEL_BZIMAGE",
    "BR2_LINUX_KERNEL_IMAGE",
    "BR2_LINUX_KERNEL_DTS_SUPPORT",
    "BR2_LINUX_KERNEL_INTREE_DTS_NAME",
    "BR2_LINUX_KERNEL_NEEDS_HOST_OPENSSL",
    "BR2_PACKAGE_RPI_FIRMWARE",
    "BR2_PACKAGE_RPI_FIRMWARE_VARIANT_PI4",
    "BR2_PACKAGE_BUSYBOX",
    "BR2_PACKAGE_HOST_RUSTC",
    "BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS",
    "BR2_PACKAGE_HOST_GENIMAGE",
    "BR2_PACKAGE_HOST_E2FSPROGS",
    "BR2_PACKAGE_HOST_DOSFSTOOLS",
    "BR2_PACKAGE_HOST_MTOOLS",
    "BR2_TARGET_ROOTFS_CPIO",
    "BR2_TARGET_ROOTFS_CPIO_GZIP",
    "BR2_TARGET_ROOTFS_CPIO_XZ",
    "BR2_TARGET_GRUB2",
    "BR2_TARGET_SYSTEMD_BOOT",
];

/// Variables the package infrastructures define or read for a package.
const INFRA_SUFFIXES: &[&str] = &[
    "VERSION",
    "SITE",
    "SITE_METHOD",
    "SOURCE",
    "LICENSE",
    "LICENSE_FILES",
    "DEPENDENCIES",
    "CARGO_ENV",
    "CARGO_BUILD_OPTS",
    "CARGO_INSTALL_OPTS",
    "SUBDIR",
    "POST_INSTALL_TARGET_HOOKS",
    "PRE_BUILD_HOOKS",
    "POST_BUILD_HOOKS",
    "INSTALL_TARGET_CMDS",
];

fn tree() -> PathBuf {
    xtask::workspace_root().join("buildroot")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn defconfig_name(board: &str) -> String {
    format!("relaybox_{}_defconfig", board.replace('-', "_"))
}

/// Kconfig syntax basics; returns the symbols defined, or the errors.
fn lint_kconfig(text: &str, source_root: &Path, errors: &mut Vec<String>) -> BTreeSet<String> {
    let mut symbols = BTreeSet::new();
    let mut stack: Vec<&str> = Vec::new();
    let mut in_help: Option<usize> = None;
    let mut current: Option<(String, bool)> = None; // (symbol, has type)
    let close = |cur: &mut Option<(String, bool)>, errors: &mut Vec<String>| {
        if let Some((sym, typed)) = cur.take() {
            if !typed {
                errors.push(format!("config {sym} has no type"));
            }
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if let Some(help_indent) = in_help {
            if line.is_empty() || indent > help_indent {
                continue;
            }
            in_help = None;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kw, rest) = line.split_once(char::is_whitespace).map(|(k, r)| (k, r.trim())).unwrap_or((line, ""));
        match kw {
            "config" | "menuconfig" => {
                close(&mut current, errors);
                if !rest.starts_with("BR2_") || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    errors.push(format!("line {n}: bad symbol {rest:?}"));
                }
                symbols.insert(rest.to_string());
                current = Some((rest.to_string(), false));
            }
            "bool" | "tristate" | "string" | "int" | "hex" => {
                match current.as_mut() {
                    Some(c) => c.1 = true,
                    None => errors.push(format!("line {n}: {kw} outside a config entry")),
                }
                let quoted = rest.starts_with('"') && rest.matches('"').count() >= 2;
                if !rest.is_empty() && !quoted {
                    errors.push(format!("line {n}: prompt must be quoted: {rest}"));
                }
            }
            "depends" | "select" | "imply" | "default" | "range" | "prompt" | "visible" => {
                if kw == "depends" && !rest.starts_with("on ") {
                    errors.push(format!("line {n}: `depends on`"));
                }
                if (kw == "select" || kw == "imply") && !rest.starts_with("BR2_") {
                    errors.push(format!("line {n}: {kw} needs a symbol"));
                }
                if rest.matches('(').count() != rest.matches(')').count() {
                    errors.push(format!("line {n}: unbalanced parentheses"));
                }
            }
            "help" | "---help---" => in_help = Some(indent),
            "if" | "menu" | "choice" => {
                close(&mut current, errors);
                stack.push(kw);
            }
            "endif" | "endmenu" | "endchoice" => {
                close(&mut current, errors);
                let open = &kw[3..];
                if stack.pop() != Some(open) {
                    errors.push(format!("line {n}: {kw} without {open}"));
                }
            }
            "comment" | "mainmenu" => {
                close(&mut current, errors);
                if !rest.starts_with('"') {
                    errors.push(format!("line {n}: {kw} text must be quoted"));
                }
            }
            "source" | "rsource" | "osource" => {
                close(&mut current, errors);
                let path =
                    rest.trim_matches('"').replace("$BR2_EXTERNAL_RELAYBOX_PATH", &source_root.display().to_string());
                match std::fs::read_to_string(&path) {
                    Ok(t) => symbols.extend(lint_kconfig(&t, source_root, errors)),
                    Err(e) => errors.push(format!("line {n}: source {path}: {e}")),
                }
            }
            _ => errors.push(format!("line {n}: unknown Kconfig keyword {kw:?}")),
        }
    }
    close(&mut current, errors);
    if let Some(open) = stack.pop() {
        errors.push(format!("{open} not closed"));
    }
    symbols
}

/// A defconfig: `BR2_SYM=value` or `# BR2_SYM is not set`, each symbol
/// known, once; paths under $(BR2_EXTERNAL_RELAYBOX_PATH) must exist.
fn lint_defconfig(text: &str, known: &BTreeSet<String>, board: &str, errors: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    let ext = tree();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (sym, value) = if let Some(rest) = line.strip_prefix("# ") {
            match rest.strip_suffix(" is not set") {
                Some(sym) => (sym, None),
                None => continue, // a comment
            }
        } else {
            match line.split_once('=') {
                Some((s, v)) => (s, Some(v)),
                None => {
                    errors.push(format!("line {n}: not SYMBOL=value: {line}"));
                    continue;
                }
            }
        };
        if !known.contains(sym) {
            errors.push(format!("line {n}: {sym} is defined neither in buildroot/ nor in the upstream list"));
        }
        if !seen.insert(sym.to_string()) {
            errors.push(format!("line {n}: {sym} set twice"));
        }
        let Some(v) = value else { continue };
        if v == "n" {
            errors.push(format!("line {n}: write `# {sym} is not set`, not =n"));
        } else if v != "y" && !(v.starts_with('"') && v.ends_with('"') && v.len() >= 2) && v.parse::<i64>().is_err() {
            errors.push(format!("line {n}: {sym}: value must be y, a number or a quoted string: {v}"));
        }
        for word in v.trim_matches('"').split_whitespace() {
            if let Some(rel) = word.strip_prefix("$(BR2_EXTERNAL_RELAYBOX_PATH)/") {
                if !ext.join(rel).exists() {
                    errors.push(format!("line {n}: {sym}: {} does not exist", ext.join(rel).display()));
                }
            }
        }
        if sym == "BR2_ROOTFS_POST_SCRIPT_ARGS" && v.trim_matches('"') != board {
            errors.push(format!("line {n}: BR2_ROOTFS_POST_SCRIPT_ARGS must be the board name {board}"));
        }
    }
    for required in ["BR2_PACKAGE_RELAYBOX", "BR2_LINUX_KERNEL", "BR2_INIT_BUSYBOX", "BR2_ROOTFS_POST_SCRIPT_ARGS"] {
        if !seen.contains(required) {
            errors.push(format!("{required} missing"));
        }
    }
}

/// A package .mk: the mandatory variables, $(eval $(cargo-package)) last,
/// define/endef balanced, every $(PKG_...) used defined, hooks defined.
fn lint_mk(text: &str, pkg: &str, errors: &mut Vec<String>) {
    let upper = pkg.to_uppercase().replace('-', "_");
    let mut defined = BTreeSet::new();
    let mut defines = BTreeSet::new();
    let mut open_define: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix("define ") {
            if open_define.is_some() {
                errors.push(format!("line {n}: define inside define"));
            }
            open_define = Some(name.trim().to_string());
            defines.insert(name.trim().to_string());
            continue;
        }
        if t == "endef" {
            if open_define.take().is_none() {
                errors.push(format!("line {n}: endef without define"));
            }
            continue;
        }
        if open_define.is_some() {
            continue;
        }
        for op in [" += ", " = ", " := ", " ?= "] {
            if let Some((var, _)) = t.split_once(op) {
                let var = var.trim();
                if !var.starts_with(&format!("{upper}_")) {
                    errors.push(format!("line {n}: {var} does not start with {upper}_"));
                }
                if var.ends_with("_HOOKS") {
                    let hook = t.split_once(op).unwrap().1.trim();
                    if !defines.contains(hook) {
                        errors.push(format!("line {n}: hook {hook} is not defined above"));
                    }
                }
                defined.insert(var.to_string());
                break;
            }
        }
    }
    if open_define.is_some() {
        errors.push("define not closed".into());
    }
    for required in ["VERSION", "SITE", "LICENSE"] {
        if !defined.contains(&format!("{upper}_{required}")) {
            errors.push(format!("{upper}_{required} missing"));
        }
    }
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty() && !l.starts_with('#'));
    if last != Some("$(eval $(cargo-package))") {
        errors.push(format!("the last line must be $(eval $(cargo-package)), not {last:?}"));
    }
    // $(RELAYBOX_X) used anywhere must be defined here or by the infrastructure
    let mut rest = text;
    while let Some(at) = rest.find(&format!("$({upper}_")) {
        let after = &rest[at + 2..];
        let var = &after[..after.find(')').unwrap_or(after.len())];
        let suffix = &var[upper.len() + 1..];
        if !defined.contains(var) && !defines.contains(var) && !INFRA_SUFFIXES.contains(&suffix) {
            errors.push(format!("$({var}) used but never defined"));
        }
        rest = &after[var.len()..];
    }
}

fn known_symbols(errors: &mut Vec<String>) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = UPSTREAM.iter().map(|s| s.to_string()).collect();
    let text = read(&tree().join("Config.in"));
    known.extend(lint_kconfig(&text, &tree(), errors));
    known
}

#[test]
fn the_external_tree_has_the_files_buildroot_reads() {
    let t = tree();
    for f in ["external.desc", "Config.in", "external.mk", "package/relaybox/Config.in", "package/relaybox/relaybox.mk"]
    {
        assert!(t.join(f).is_file(), "buildroot/{f} missing");
    }
    for b in BOARDS {
        assert!(t.join("configs").join(defconfig_name(b)).is_file(), "defconfig for {b} missing");
        assert!(xtask::workspace_root().join("board").join(b).join("linux.fragment").is_file(), "{b} fragment");
    }
    use std::os::unix::fs::PermissionsExt;
    for hook in ["board/post-build.sh", "board/post-image.sh"] {
        let mode = std::fs::metadata(t.join(hook)).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{hook} must be executable");
        let status = std::process::Command::new("sh").arg("-n").arg(t.join(hook)).status().unwrap();
        assert!(status.success(), "{hook}: shell syntax");
    }
    let desc = read(&t.join("external.desc"));
    let name = desc.lines().find_map(|l| l.strip_prefix("name: ")).expect("external.desc: name:");
    assert_eq!(name.trim(), "RELAYBOX", "the paths use $BR2_EXTERNAL_RELAYBOX_PATH");
    let mk = read(&t.join("external.mk"));
    assert!(mk.contains("$(BR2_EXTERNAL_RELAYBOX_PATH)/package/"), "external.mk includes the packages: {mk}");
}

#[test]
fn kconfig_files_parse_and_define_the_package_symbol() {
    let mut errors = Vec::new();
    let known = known_symbols(&mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(known.contains("BR2_PACKAGE_RELAYBOX"));
}

#[test]
fn every_defconfig_symbol_is_known_and_well_formed() {
    let mut errors = Vec::new();
    let known = known_symbols(&mut errors);
    for b in BOARDS {
        let mut e = Vec::new();
        lint_defconfig(&read(&tree().join("configs").join(defconfig_name(b))), &known, b, &mut e);
        errors.extend(e.into_iter().map(|e| format!("{}: {e}", defconfig_name(b))));
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_package_mk_is_consistent_with_the_workspace() {
    let text = read(&tree().join("package/relaybox/relaybox.mk"));
    let mut errors = Vec::new();
    lint_mk(&text, "relaybox", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    let cargo = read(&xtask::workspace_root().join("Cargo.toml"));
    let version = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .unwrap()
        .trim_matches('"');
    assert!(text.contains(&format!("RELAYBOX_VERSION = {version}\n")), "RELAYBOX_VERSION must be {version}");
}

#[test]
fn the_checkers_catch_broken_input() {
    let known: BTreeSet<String> =
        ["BR2_PACKAGE_RELAYBOX", "BR2_LINUX_KERNEL", "BR2_INIT_BUSYBOX", "BR2_ROOTFS_POST_SCRIPT_ARGS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let good = "BR2_PACKAGE_RELAYBOX=y\nBR2_LINUX_KERNEL=y\nBR2_INIT_BUSYBOX=y\nBR2_ROOTFS_POST_SCRIPT_ARGS=\"b\"\n";
    let mut e = Vec::new();
    lint_defconfig(good, &known, "b", &mut e);
    assert!(e.is_empty(), "{e:?}");
    for bad in [
        format!("{good}BR2_PACKAGE_NOT_A_THING=y\n"),
        format!("{good}BR2_LINUX_KERNEL=y\n"),
        format!("{good}# BR2_MISSPELLED is not set\n"),
        good.replace("BR2_INIT_BUSYBOX=y", "BR2_INIT_BUSYBOX=n"),
        good.replace("\"b\"", "\"other\""),
        good.replace("BR2_PACKAGE_RELAYBOX=y\n", ""),
    ] {
        let mut e = Vec::new();
        lint_defconfig(&bad, &known, "b", &mut e);
        assert!(!e.is_empty(), "not caught:\n{bad}");
    }
    for bad in [
        "config BR2_PACKAGE_X\n\thelp\n\t  no type\n",
        "if BR2_PACKAGE_X\nconfig BR2_PACKAGE_Y\n\tbool \"y\"\n",
        "config BR2_PACKAGE_X\n\tbool \"x\"\n\tdepend on BR2_FOO\n",
        "menu \"m\"\nendif\n",
        "source \"$BR2_EXTERNAL_RELAYBOX_PATH/package/nothing/Config.in\"\n",
    ] {
        let mut e = Vec::new();
        lint_kconfig(bad, &tree(), &mut e);
        assert!(!e.is_empty(), "not caught:\n{bad}");
    }
    let mk = "RELAYBOX_VERSION = 1\nRELAYBOX_SITE = x\nRELAYBOX_LICENSE = GPL\n$(eval $(cargo-package))\n";
    let mut e = Vec::new();
    lint_mk(mk, "relaybox", &mut e);
    assert!(e.is_empty(), "{e:?}");
    for bad in [
        mk.replace("RELAYBOX_LICENSE = GPL\n", ""),
        mk.replace("cargo-package", "generic-package"),
        format!("RELAYBOX_X = $(RELAYBOX_UNDEFINED)\n{mk}"),
        format!("RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_NOPE\n{mk}"),
        format!("define RELAYBOX_A\n{mk}"),
        format!("OTHER_VERSION = 2\n{mk}"),
    ] {
        let mut e = Vec::new();
        lint_mk(&bad, "relaybox", &mut e);
        assert!(!e.is_empty(), "not caught:\n{bad}");
    }
}
