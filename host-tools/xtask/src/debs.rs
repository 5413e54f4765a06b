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

/// Downloads `package` for `arch` (cached) and returns the .deb path.
pub fn download(package: &str, arch: &str) -> Result<PathBuf> {
    let dir = cache_dir().join(arch);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("{package}_");
    let find = |dir: &Path| -> Result<Option<PathBuf>> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n.ends_with(&format!("_{arch}.deb")) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    if let Some(p) = find(&dir)? {
        return Ok(p);
    }
    ensure_arch(arch)?;
    crate::step(format!("apt-get download {package}:{arch}"));
    let out = Command::new("apt-get")
        .current_dir(&dir)
        .args(["download", "-q", &format!("{package}:{arch}")])
        .output()
        .context("running apt-get download")?;
    if !out.status.success() {
        bail!("apt-get download {package}:{arch} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    find(&dir)?.with_context(|| format!("apt-get download {package}:{arch} left no .deb in {}", dir.display()))
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
    let out = cache_dir().join(arch).join(format!("{package}.unpacked"));
    if out.join(".done").exists() {
        return Ok(out);
    }
    let deb = download(package, arch)?;
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
