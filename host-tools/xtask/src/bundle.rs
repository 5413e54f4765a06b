//! `cargo xtask bundle --board NAME --key KEY`: an image's slot files as a
//! signed update bundle (the format is `relaybox-update`'s, the one the box
//! reads).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::image::Image;

/// Writes the bundle of `img`'s slot, signed with the private key at `key`,
/// to `out` (default: `relaybox-BOARD-VERSION.bundle` in the image
/// directory); returns where.
pub fn make(img: &Image, key: &Path, out: Option<PathBuf>) -> Result<PathBuf> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let signing = relaybox_update::SigningKey::from_pem(&text).with_context(|| format!("{}", key.display()))?;
    let trusted = relaybox_update::PublicKey::from_pem(&std::fs::read_to_string(&img.update_key)?)?;
    if signing.public_key() != trusted {
        crate::step(format!(
            "note: {} is not the key this image trusts ({}): boxes running this image will refuse the bundle",
            key.display(),
            trusted.fingerprint()
        ));
    }
    let files = slot_files(img)?;
    let manifest = relaybox_update::bundle::describe(&img.board, &img.version, &files)?;
    let out = out.unwrap_or_else(|| img.dir.join(format!("relaybox-{}-{}.bundle", img.board, img.version)));
    relaybox_update::bundle::write(&out, &manifest, &signing, &files)
        .with_context(|| format!("writing {}", out.display()))?;
    crate::step(format!(
        "{}: {} {} for {}, {} files, signed with key {}",
        out.display(),
        crate::mib(std::fs::metadata(&out)?.len()),
        img.version,
        img.board,
        files.len(),
        signing.public_key().fingerprint()
    ));
    Ok(out)
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
