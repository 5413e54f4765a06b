//! `cargo xtask deb`: the proxy host's Debian package. Builds the static
//! `relaybox` and `relaybox-ca` (x86_64 musl, release), writes their manual
//! pages (clap_mangen, gzipped) and shell completions (clap_complete) under
//! target/deb/ by running the binaries' own `man-pages` and `completions`
//! commands, and packs everything with cargo-deb from
//! `[package.metadata.deb]` in firmware/relaybox/Cargo.toml (units,
//! maintainer scripts and config.ini from packaging/). cargo-deb is
//! installed into target/tools when it is not there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The target the package is built for (its Debian architecture: amd64).
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The cargo-deb release the package is built with.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where the generated manual pages and completions go (the paths
/// `[package.metadata.deb] assets` names).
pub fn generated_dir() -> PathBuf {
    crate::target_dir().join("deb")
}

/// Builds the package; returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    if crate::target_dir() != crate::workspace_root().join("target") {
        bail!("cargo xtask deb needs the target directory at target/ (the package's assets name it); unset CARGO_TARGET_DIR");
    }
    let relaybox = crate::build::relaybox(TARGET)?;
    let ca = relaybox_ca()?;
    let dir = generated_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    for bin in [&relaybox, &ca] {
        let name = bin.file_name().and_then(|n| n.to_str()).context("binary name")?;
        manual_pages(bin, &dir.join("man"))?;
        for (shell, file) in
            [("bash", format!("bash/{name}")), ("zsh", format!("zsh/_{name}")), ("fish", format!("fish/{name}.fish"))]
        {
            let script = crate::run(Command::new(bin).args(["completions", shell]))?;
            let path = dir.join("completions").join(file);
            std::fs::create_dir_all(path.parent().context("completion dir")?)?;
            std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let cargo_deb = cargo_deb()?;
    crate::step("packing with cargo-deb");
    let out = crate::target_dir().join("debian");
    let printed = crate::run(
        Command::new(&cargo_deb)
            .current_dir(crate::workspace_root())
            .args(["deb", "-p", "relaybox", "--no-build", "--no-strip", "--target", TARGET, "--output"])
            .arg(&out),
    )?;
    let deb = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo-deb printed no package path:\n{printed}"))?;
    let size = std::fs::metadata(&deb)?.len();
    crate::step(format!("{} ({})", deb.display(), crate::mib(size)));
    Ok(deb)
}

/// `relaybox-ca` for [`TARGET`], static like `relaybox`.
fn relaybox_ca() -> Result<PathBuf> {
    let bin = crate::target_dir().join(TARGET).join("release/relaybox-ca");
    if std::env::var_os("XTASK_NO_BUILD").is_some_and(|v| v == "1") && bin.exists() {
        crate::step(format!("XTASK_NO_BUILD=1: using {} as it is", bin.display()));
    } else {
        crate::step(format!("building relaybox-ca for {TARGET} (release, static)"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(crate::workspace_root())
            .args(["build", "-p", "relaybox-ca", "--release", "--target", TARGET])
            .status()?;
        if !status.success() {
            bail!("cargo build -p relaybox-ca --target {TARGET} failed");
        }
    }
    crate::build::check_static(&bin)?;
    Ok(bin)
}

/// `BIN man-pages`, each page gzipped (`-n`: no name or time inside, so
/// that the package is the same for the same sources).
fn manual_pages(bin: &Path, dir: &Path) -> Result<()> {
    let raw = dir.join("raw");
    crate::run(Command::new(bin).arg("man-pages").arg(&raw))?;
    for entry in std::fs::read_dir(&raw)? {
        let page = entry?.path();
        let name = page.file_name().and_then(|n| n.to_str()).context("page name")?.to_string();
        let text = std::fs::read(&page)?;
        let file = std::fs::File::create(dir.join(format!("{name}.gz")))?;
        let mut gz = flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::best());
        gz.write_all(&text)?;
        gz.finish()?;
    }
    std::fs::remove_dir_all(&raw)?;
    Ok(())
}

/// cargo-deb from target/tools (installed there, pinned, when missing) or
/// from PATH when it is that version.
fn cargo_deb() -> Result<PathBuf> {
    let root = crate::target_dir().join("tools");
    let local = root.join("bin/cargo-deb");
    let version_of = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    };
    if version_of(&local) {
        return Ok(local);
    }
    if version_of(Path::new("cargo-deb")) {
        return Ok(PathBuf::from("cargo-deb"));
    }
    crate::step(format!("installing cargo-deb {CARGO_DEB_VERSION} into {}", root.display()));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION, "--root"])
        .arg(&root)
        .status()?;
    if !status.success() || !version_of(&local) {
        bail!("installing cargo-deb {CARGO_DEB_VERSION} failed");
    }
    Ok(local)
}
