//! `board/<name>/board.conf`: shell-style `KEY="value"` lines, read here by
//! the image builder and by `/etc/init.d/rcS` on the box.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

pub const BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64", "pc-x86_64-efi", "rpi4-arm64"];

#[derive(Debug, Clone)]
pub struct Board {
    pub name: String,
    pub dir: PathBuf,
    pub conf: BTreeMap<String, String>,
}

/// The CPU side of a board, as the Rust target and Debian see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
}

/// Parses board.conf text: comments, blank lines, `KEY="value"` or `KEY=value`.
pub fn parse_conf(text: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| anyhow!("line {}: not KEY=value: {line}", n + 1))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            bail!("line {}: bad key {k:?}", n + 1);
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        if v.contains('$') || v.contains('`') {
            bail!("line {}: no expansions allowed in {k}", n + 1);
        }
        if map.insert(k.to_string(), v.to_string()).is_some() {
            bail!("line {}: {k} set twice", n + 1);
        }
    }
    Ok(map)
}

impl Board {
    pub fn load(name: &str) -> Result<Board> {
        if !BOARDS.contains(&name) {
            bail!("unknown board {name:?}; one of {}", BOARDS.join(", "));
        }
        let dir = crate::workspace_root().join("board").join(name);
        let path = dir.join("board.conf");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let conf = parse_conf(&text).with_context(|| format!("in {}", path.display()))?;
        let board = Board { name: name.to_string(), dir, conf };
        for key in
            ["BOARD_NAME", "RUST_TARGET", "DEBIAN_ARCH", "KERNEL_PACKAGE", "CONSOLE", "KERNEL_CMDLINE", "DISK_LAYOUT"]
        {
            board.get(key)?;
        }
        if board.get("BOARD_NAME")? != name {
            bail!("{}: BOARD_NAME is not {name}", path.display());
        }
        if board.arch()?.rust_target() != board.get("RUST_TARGET")? {
            bail!("{}: RUST_TARGET does not match DEBIAN_ARCH", path.display());
        }
        Ok(board)
    }

    pub fn get(&self, key: &str) -> Result<&str> {
        self.conf
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("board {}: {key} missing in board.conf", self.name))
    }

    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.conf.get(key).map(String::as_str).unwrap_or(default)
    }

    pub fn mib(&self, key: &str, default: u64) -> Result<u64> {
        self.get_or(key, "").parse().or_else(|_| {
            if self.conf.contains_key(key) {
                bail!("{key}: not a number")
            } else {
                Ok(default)
            }
        })
    }

    pub fn arch(&self) -> Result<Arch> {
        match self.get("DEBIAN_ARCH")? {
            "amd64" => Ok(Arch::X86_64),
            "arm64" => Ok(Arch::Aarch64),
            other => bail!("board {}: unsupported DEBIAN_ARCH {other}", self.name),
        }
    }

    /// Module names: board/common/modules.list plus the board's MODULES.
    pub fn modules(&self) -> Result<Vec<String>> {
        let common = crate::workspace_root().join("board/common/modules.list");
        let text = std::fs::read_to_string(&common).with_context(|| format!("reading {}", common.display()))?;
        let mut out: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
        out.extend(self.get_or("MODULES", "").split_whitespace().map(str::to_string));
        Ok(out)
    }
}
