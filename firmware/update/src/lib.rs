//! relaybox-update owns the box's firmware updates: the update bundle (a
//! newc cpio of a JSON manifest, its Ed25519 signature and the slot files),
//! the signing key formats, firmware versions, the A/B slot state machines
//! of the two boot schemes — systemd-boot's boot counting on EFI boxes
//! (`efi`) and the Raspberry Pi firmware's `autoboot.txt`, a new slot tried
//! with the firmware's tryboot or counted at each boot (`pi`) — which are
//! pure functions of file names and file contents, and the file-system
//! side (`install`): checking a bundle whole before a byte is written,
//! writing and reading back the inactive slot, arming it, counting a try
//! or going back at boot, marking the running slot good, reporting both
//! slots; and the box as an update
//! sees it (`system`: the release file, the trusted key, the running slot,
//! one install at a time). It does not download,
//! reboot, parse the settings file or serve the web page: `relaybox update`
//! and the web page's Update page call it.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod efi;
pub mod install;
pub mod key;
pub mod manifest;
pub mod pi;
pub mod slot;
pub mod system;
pub mod version;

pub use bundle::{BundleError, Checked, Expect};
pub use install::{BootCheck, Efi, InstallError, Pi, PiSlots, Progress};
pub use key::{KeyError, PublicKey, SigningKey};
pub use manifest::{Manifest, ManifestError};
pub use pi::{BootStep, PiTry};
pub use slot::{Slot, SlotError, SlotReport, SlotState, Status};
pub use system::{Release, Running, Scheme, SystemError, Updater};
pub use version::{BadVersion, Version};

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 (hex) of a file.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((size, hex(ctx.finish().as_ref())))
}
