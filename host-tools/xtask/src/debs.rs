//! Debian packages as image ingredients: `apt-get download` into
//! target/xtask/debs, `dpkg-deb -x` into a directory per package, both
//! cached so that a second image build does not touch apt at all.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn cache_dir() -> PathBuf {
    crate::target_dir().join("xtask/debs")
}

/// Makes sure dpkg knows the foreign architecture (and apt has its lists).
pub fn ensure_arch(arch: &str) -> Result<()> {
    let native = crate::run(Command::new("dpkg").arg("--print-architecture"))?;
    if native.trim() == arch {
        return Ok(());
    }
    let foreign = crate::run(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if !foreign.split_whitespace().any(|a| a == arch) {
        crate::step(format!("dpkg --add-architecture {arch} && apt-get update"));
        crate::run(Command::new("dpkg").args(["--add-architecture", arch]))?;
        crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    Ok(())
}

/// The Debian mirror and release this machine's apt uses: the first
/// `URIs:`/`deb` line of its sources (deb.debian.org when none) and
/// `VERSION_CODENAME` of /etc/os-release.
pub fn mirror_and_suite() -> (String, String) {
    let suite = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| "bookworm".to_string());
    let mut mirror = None;
    for f in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        mirror = text.lines().find_map(|l| {
            let l = l.trim();
            if let Some(uris) = l.strip_prefix("URIs:") {
                uris.split_whitespace().next().map(str::to_string)
            } else if l.starts_with("deb ") {
                l.split_whitespace().find(|w| w.starts_with("http")).map(str::to_string)
            } else {
                None
            }
        });
        if mirror.is_some() {
            break;
        }
    }
    (mirror.unwrap_or_else(|| "http://deb.debian.org/debian".to_string()), suite)
}

/// Downloads `package` for `arch` from a component of the Debian archive
/// this machine's apt does not list (the Raspberry Pi's GPU firmware is in
/// `non-free-firmware`), through a private apt state under target/ that
/// leaves the system's sources alone. Cached like [`download`].
pub fn download_from_component(package: &str, arch: &str, component: &str) -> Result<PathBuf> {
    fetch(package, arch, || {
        let apt = crate::target_dir().join(format!("xtask/apt-{component}"));
        std::fs::create_dir_all(apt.join("lists/partial"))?;
        std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
        let (mirror, suite) = mirror_and_suite();
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        std::fs::write(apt.join("sources.list"), format!("deb [signed-by={keyring}] {mirror} {suite} {component}\n"))?;
        let opts = vec![
            format!("-oDir::Etc::SourceList={}", apt.join("sources.list").display()),
            "-oDir::Etc::SourceParts=/dev/null".to_string(),
            format!("-oDir::State::Lists={}", apt.join("lists").display()),
            format!("-oDir::Cache={}", apt.join("cache").display()),
            format!("-oAPT::Architectures::={arch}"),
        ];
        crate::step(format!("apt-get update ({mirror} {suite} {component})"));
        crate::run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
        Ok(opts)
    })
}

/// Downloads `package` for `arch` (cached) and returns the .deb path.
pub fn download(package: &str, arch: &str) -> Result<PathBuf> {
    fetch(package, arch, || {
        ensure_arch(arch)?;
        Ok(Vec::new())
    })
}

/// The cached .deb of `package`, or `apt-get download` into the cache with
/// the apt options `apt` prepares (called only on a cache miss).
fn fetch(package: &str, arch: &str, apt: impl FnOnce() -> Result<Vec<String>>) -> Result<PathBuf> {
    let dir = cache_dir().join(arch);
    std::fs::create_dir_all(&dir)?;
    if let Some(p) = find_deb(&dir, package, arch)? {
        return Ok(p);
    }
    let opts = apt()?;
    crate::step(format!("apt-get download {package}:{arch}"));
    // An `Architecture: all` package (firmware) is found by its bare name.
    let mut errors = String::new();
    for name in [format!("{package}:{arch}"), package.to_string()] {
        let out = Command::new("apt-get")
            .current_dir(&dir)
            .args(&opts)
            .args(["download", "-q", &name])
            .output()
            .context("running apt-get download")?;
        if out.status.success() {
            return find_deb(&dir, package, arch)?
                .with_context(|| format!("apt-get download {name} left no .deb in {}", dir.display()));
        }
        errors.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    bail!("apt-get download {package}:{arch} failed:\n{errors}")
}

/// A cached .deb of `package` for `arch` (or `all`).
fn find_deb(dir: &Path, package: &str, arch: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && (n.ends_with(&format!("_{arch}.deb")) || n.ends_with("_all.deb")) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The `Depends:` names of a .deb (versions and alternatives dropped).
pub fn depends(deb: &Path) -> Result<Vec<String>> {
    let text = crate::run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
    Ok(text
        .split(',')
        .filter_map(|d| d.split('|').next())
        .map(|d| d.split_whitespace().next().unwrap_or("").split(':').next().unwrap_or("").to_string())
        .filter(|d| !d.is_empty())
        .collect())
}

/// Downloads and unpacks `package` (cached); returns the unpacked tree.
pub fn unpack(package: &str, arch: &str) -> Result<PathBuf> {
    unpack_with(package, arch, || download(package, arch))
}

/// [`unpack`] from a component the system's apt does not list.
pub fn unpack_from_component(package: &str, arch: &str, component: &str) -> Result<PathBuf> {
    unpack_with(package, arch, || download_from_component(package, arch, component))
}

fn unpack_with(package: &str, arch: &str, download: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
    let out = cache_dir().join(arch).join(format!("{package}.unpacked"));
    if out.join(".done").exists() {
        return Ok(out);
    }
    let deb = download()?;
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out))?;
    std::fs::write(out.join(".done"), deb.file_name().unwrap().to_string_lossy().as_bytes())?;
    Ok(out)
}

/// The kernel: resolves a meta package (linux-image-amd64) to the versioned
/// image package it depends on, and unpacks that.
pub fn kernel(meta: &str, arch: &str) -> Result<PathBuf> {
    let marker = cache_dir().join(arch).join(format!("{meta}.resolved"));
    if let Ok(name) = std::fs::read_to_string(&marker) {
        return unpack(name.trim(), arch);
    }
    let deb = download(meta, arch)?;
    let real = depends(&deb)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d != meta)
        .with_context(|| format!("{meta} depends on no linux-image package"))?;
    let dir = unpack(&real, arch)?;
    std::fs::write(&marker, &real)?;
    Ok(dir)
}
