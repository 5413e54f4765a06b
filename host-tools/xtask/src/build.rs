//! Cross-building the static `relaybox` binary with the build host's tools
//! (host-tools/xtask/cross.toml holds the C compiler and linker per target,
//! passed with `--config`, so that they apply to these builds only).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

/// The cargo settings of the host's cross toolchains (see cross.toml).
pub fn cross_config() -> PathBuf {
    crate::workspace_root().join("host-tools/xtask/cross.toml")
}

/// `cargo --config cross.toml build -p relaybox --release --target TARGET`;
/// returns the binary.
/// With XTASK_NO_BUILD=1 the binary already in target/ is used as it is.
pub fn relaybox(target: &str) -> Result<PathBuf> {
    Ok(relaybox_for(&[target])?.remove(0))
}

/// The static `relaybox` for each of `targets`, built by one cargo run: the
/// build scripts and proc-macros are compiled once for all, and each
/// target's final (single-unit, LTO) compile runs beside the other's
/// instead of after it.
pub fn relaybox_for(targets: &[&str]) -> Result<Vec<PathBuf>> {
    let bins: Vec<PathBuf> = targets.iter().map(|t| crate::target_dir().join(t).join("release/relaybox")).collect();
    if std::env::var_os("XTASK_NO_BUILD").is_some_and(|v| v == "1") && bins.iter().all(|b| b.exists()) {
        for bin in &bins {
            crate::step(format!("XTASK_NO_BUILD=1: using {} as it is", bin.display()));
        }
    } else {
        let list = targets.join(", ");
        crate::step(format!("building relaybox for {list} (release, static)"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(crate::workspace_root()).arg("--config").arg(cross_config()).args([
            "build",
            "-p",
            "relaybox",
            "--release",
        ]);
        for target in targets {
            cmd.args(["--target", target]);
        }
        if !cmd.status()?.success() {
            bail!("cargo build -p relaybox for {list} failed");
        }
    }
    for (target, bin) in targets.iter().zip(&bins) {
        check_static(bin)?;
        let size = std::fs::metadata(bin)?.len();
        crate::step(format!("relaybox for {target}: {} ({size} bytes), static, stripped", crate::mib(size)));
    }
    Ok(bins)
}

/// Fails unless the ELF file has no interpreter and no dynamic libraries
/// (static or static-pie) and no symbol table (stripped).
pub fn check_static(bin: &std::path::Path) -> Result<()> {
    let data = std::fs::read(bin)?;
    let elf = Elf64::parse(&data)?;
    if elf.has_interp() {
        bail!("{}: has a program interpreter (dynamically linked)", bin.display());
    }
    if elf.has_needed(&data) {
        bail!("{}: needs shared libraries", bin.display());
    }
    if elf.section_types().contains(&2) {
        bail!("{}: not stripped (has .symtab)", bin.display());
    }
    Ok(())
}

/// Just enough of an ELF64 little-endian reader for the checks above.
pub struct Elf64<'a> {
    data: &'a [u8],
    pub machine: u16,
}

impl<'a> Elf64<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
            bail!("not a little-endian ELF64 file");
        }
        Ok(Elf64 { data, machine: u16::from_le_bytes([data[18], data[19]]) })
    }
    fn u16(&self, at: usize) -> usize {
        u16::from_le_bytes([self.data[at], self.data[at + 1]]) as usize
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap())
    }
    fn u64(&self, at: usize) -> usize {
        u64::from_le_bytes(self.data[at..at + 8].try_into().unwrap()) as usize
    }
    fn program_types(&self) -> Vec<(u32, usize, usize)> {
        let (off, size, n) = (self.u64(32), self.u16(54), self.u16(56));
        (0..n).map(|i| off + i * size).map(|p| (self.u32(p), self.u64(p + 8), self.u64(p + 32))).collect()
    }
    pub fn has_interp(&self) -> bool {
        self.program_types().iter().any(|(t, _, _)| *t == 3)
    }
    /// True when the dynamic section has a DT_NEEDED entry.
    pub fn has_needed(&self, data: &[u8]) -> bool {
        self.program_types().iter().filter(|(t, _, _)| *t == 2).any(|&(_, off, len)| {
            data[off..off + len].chunks_exact(16).any(|e| u64::from_le_bytes(e[..8].try_into().unwrap()) == 1)
        })
    }
    pub fn section_types(&self) -> Vec<u32> {
        let (off, size, n) = (self.u64(40), self.u16(58), self.u16(60));
        (0..n).map(|i| self.u32(off + i * size + 4)).collect()
    }
}
