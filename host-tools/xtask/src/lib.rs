//! relaybox's project chores as a library, so that `cargo xtask` and the
//! integration tests share one implementation: cross-building the static
//! `relaybox` binary, the proxy host's Debian package, reading `board/*/board.conf`, fetching the Debian
//! kernel and busybox, writing the initramfs (newc cpio) and the disk
//! images, signing update bundles, provisioning a box's config partition
//! (`provision`), and booting images in QEMU (through UEFI firmware, as the
//! real boards) with a scriptable serial console.
//!
//! Owns the image layout (board/, rootfs-overlay/, the A/B slots on the
//! boot partitions) and makes update bundles; it must not reach into the
//! firmware crates beyond building and running the `relaybox` binary
//! (provisioning hashes the web password and checks the files with it) and
//! using `relaybox-update`'s bundle format, keys and slot names (the format
//! lives there once, for the box and for this builder); certificates come
//! from the `relaybox-ca` host tool's library.

pub mod board;
pub mod build;
pub mod bundle;
pub mod cpio;
pub mod deb;
pub mod debs;
pub mod disk;
pub mod image;
pub mod kernel;
pub mod provision;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the directory holding `board/` and `Cargo.lock`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("host-tools/xtask is two levels down").to_path_buf()
}

/// `target/` of the workspace (respects CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs a command, failing with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Human-readable size.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Prints a progress line (flushed, so that long steps show up at once).
pub fn step(msg: impl std::fmt::Display) {
    use std::io::Write;
    println!("xtask: {msg}");
    let _ = std::io::stdout().flush();
}
