//! `cargo xtask bundle --board NAME --key KEY`: an image's slot files as a
//! signed update bundle (the format is `relaybox-update`'s, the one the box
//! reads); `--slot DIR` instead of `--board`: the slot another builder
//! (Buildroot) made.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::image::Image;

/// Writes the bundle of `img`'s slot, signed with the private key at `key`,
/// to `out` (default: `relaybox-BOARD-VERSION.bundle` in the image
/// directory); returns where.
pub fn make(img: &Image, key: &Path, out: Option<PathBuf>) -> Result<PathBuf> {
    let trusted = relaybox_update::PublicKey::from_pem(&std::fs::read_to_string(&img.update_key)?)?;
    let files = slot_files(img)?;
    let out = out.unwrap_or_else(|| img.dir.join(format!("relaybox-{}-{}.bundle", img.board, img.version)));
    write(&img.board, &img.version, &files, key, Some(&trusted), &out)?;
    Ok(out)
}

/// Writes the bundle of a slot directory as another builder left it (the
/// Buildroot tree's post-image.sh: slot a's files and their
/// `manifest.json`, board and version included), signed with the private
/// key at `key`, to `out` (default: `relaybox-BOARD-VERSION.bundle` in the
/// current directory); returns where. Each file must still be what the
/// manifest lists.
pub fn make_from_slot(slot: &Path, key: &Path, out: Option<PathBuf>) -> Result<PathBuf> {
    let path = slot.join(relaybox_update::install::SLOT_MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest = relaybox_update::Manifest::parse(&bytes, u64::MAX).with_context(|| format!("{}", path.display()))?;
    let mut files = Vec::new();
    for f in &manifest.files {
        let file = slot.join(&f.name);
        let (size, sha256) =
            relaybox_update::sha256_file(&file).with_context(|| format!("reading {}", file.display()))?;
        if size != f.size || sha256 != f.sha256 {
            anyhow::bail!("{}: not the file {} lists (changed since the build?)", file.display(), path.display());
        }
        files.push((f.name.clone(), file));
    }
    let out = out.unwrap_or_else(|| PathBuf::from(format!("relaybox-{}-{}.bundle", manifest.board, manifest.version)));
    write(&manifest.board, &manifest.version, &files, key, None, &out)?;
    Ok(out)
}

fn write(
    board: &str,
    version: &str,
    files: &[(String, PathBuf)],
    key: &Path,
    trusted: Option<&relaybox_update::PublicKey>,
    out: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let signing = relaybox_update::SigningKey::from_pem(&text).with_context(|| format!("{}", key.display()))?;
    if let Some(trusted) = trusted.filter(|t| **t != signing.public_key()) {
        crate::step(format!(
            "note: {} is not the key this image trusts ({}): boxes running this image will refuse the bundle",
            key.display(),
            trusted.fingerprint()
        ));
    }
    let manifest = relaybox_update::bundle::describe(board, version, files)?;
    relaybox_update::bundle::write(out, &manifest, &signing, files)
        .with_context(|| format!("writing {}", out.display()))?;
    crate::step(format!(
        "{}: {} {version} for {board}, {} files, signed with key {}",
        out.display(),
        crate::mib(std::fs::metadata(out)?.len()),
        files.len(),
        signing.public_key().fingerprint()
    ));
    Ok(())
}

/// The slot files of an image, in the order the manifest lists them:
/// the kernel command line first, then the rest by name.
pub fn slot_files(img: &Image) -> Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&img.slot)
        .with_context(|| format!("reading {}", img.slot.display()))?
        .map(|e| e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())))
        .collect::<std::io::Result<_>>()?;
    files.sort_by_key(|(n, _)| (n != "cmdline.txt", n.clone()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot as the Buildroot tree's post-image.sh leaves it, and a signing key.
    fn slot(dir: &Path) -> (PathBuf, relaybox_update::PublicKey) {
        let slot = dir.join("slot-a");
        std::fs::create_dir_all(&slot).unwrap();
        let mut files = Vec::new();
        for (name, data) in [("cmdline.txt", "console=ttyS0\n"), ("vmlinuz", "kernel"), ("initrd.img", "initramfs")] {
            std::fs::write(slot.join(name), data).unwrap();
            files.push((name.to_string(), slot.join(name)));
        }
        let manifest = relaybox_update::bundle::describe("qemu-x86_64", "1.4.0", &files).unwrap();
        std::fs::write(slot.join(relaybox_update::install::SLOT_MANIFEST), manifest.to_json()).unwrap();
        let (signing, pem) = relaybox_update::SigningKey::generate().unwrap();
        std::fs::write(dir.join("update.key"), pem).unwrap();
        (slot, signing.public_key())
    }

    #[test]
    fn a_slot_with_its_manifest_makes_a_bundle_the_box_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, public) = slot(dir.path());
        let out = dir.path().join("b.bundle");
        make_from_slot(&slot, &dir.path().join("update.key"), Some(out.clone())).unwrap();
        let running: relaybox_update::Version = "1.3".parse().unwrap();
        let expect = relaybox_update::Expect {
            key: &public,
            board: "qemu-x86_64",
            running: &running,
            force: false,
            max_total: 1 << 20,
            required: relaybox_update::Scheme::Efi.required_files(),
        };
        let (checked, files) = relaybox_update::bundle::open(std::fs::File::open(&out).unwrap(), &expect).unwrap();
        files.each(|_| Ok(())).unwrap();
        assert_eq!(checked.manifest.version, "1.4.0");
        let names: Vec<&str> = checked.manifest.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["cmdline.txt", "vmlinuz", "initrd.img"]);
    }

    #[test]
    fn a_slot_file_changed_since_the_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, _) = slot(dir.path());
        std::fs::write(slot.join("vmlinuz"), "another kernel").unwrap();
        let err = make_from_slot(&slot, &dir.path().join("update.key"), Some(dir.path().join("b.bundle")));
        assert!(format!("{:#}", err.unwrap_err()).contains("vmlinuz: not the file"));
        assert!(!dir.path().join("b.bundle").exists());
    }
}
