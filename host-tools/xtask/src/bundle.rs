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
