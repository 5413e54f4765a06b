//! The Debian kernel in an image: its vmlinuz, and the modules the board
//! needs with their dependencies (read from each module's `.modinfo`
//! `depends=`), in load order, with a modules.dep for modprobe.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    /// Module name (with `_`) to its path relative to modules_dir.
    pub index: BTreeMap<String, PathBuf>,
}

/// `nf_conntrack-foo` and `nf_conntrack_foo` are the same module.
pub fn norm(name: &str) -> String {
    name.replace('-', "_")
}

impl Kernel {
    /// Finds the kernel in an unpacked linux-image package.
    pub fn from_unpacked(root: &Path) -> Result<Kernel> {
        let boot = root.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))
            .context("no vmlinuz in the kernel package")?;
        let version = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let modules_dir = root.join("lib/modules").join(&version);
        let mut index = BTreeMap::new();
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(stem) = p.file_name().unwrap().to_string_lossy().strip_suffix(".ko") {
                    index.insert(norm(stem), p.strip_prefix(&modules_dir).unwrap().to_path_buf());
                }
            }
        }
        if index.is_empty() {
            bail!("no modules under {} (compressed modules are not supported)", modules_dir.display());
        }
        Ok(Kernel { version, vmlinuz, modules_dir, index })
    }

    /// The `depends=` list of a module file.
    pub fn depends_of(&self, name: &str) -> Result<Vec<String>> {
        let path = self.modules_dir.join(&self.index[name]);
        let data = std::fs::read(&path)?;
        let mut deps: Vec<String> = modinfo_field(&data, "depends")
            .map(|d| d.split(',').filter(|s| !s.is_empty()).map(norm).collect())
            .unwrap_or_default();
        // `softdep=pre: a b post: c`: the pre modules that exist by that name
        if let Some(soft) = modinfo_field(&data, "softdep") {
            let pre = soft.split("post:").next().unwrap_or("").trim_start_matches("pre:");
            deps.extend(pre.split_whitespace().map(norm).filter(|m| self.index.contains_key(m) && m != name));
        }
        Ok(deps)
    }

    /// The wanted modules and their dependencies, dependencies first.
    /// Names the kernel does not have are returned separately.
    pub fn closure(&self, wanted: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut missing = Vec::new();
        fn visit(
            k: &Kernel,
            n: &str,
            done: &mut BTreeSet<String>,
            order: &mut Vec<String>,
            depth: usize,
        ) -> Result<()> {
            if depth > 64 {
                bail!("module dependency loop at {n}");
            }
            if done.contains(n) {
                return Ok(());
            }
            for d in k.depends_of(n)? {
                if !k.index.contains_key(&d) {
                    bail!("{n} depends on {d}, which the kernel package does not have");
                }
                visit(k, &d, done, order, depth + 1)?;
            }
            if done.insert(n.to_string()) {
                order.push(n.to_string());
            }
            Ok(())
        }
        for w in wanted {
            let w = norm(w);
            if self.index.contains_key(&w) {
                visit(self, &w, &mut done, &mut order, 0)?;
            } else {
                missing.push(w);
            }
        }
        Ok((order, missing))
    }

    /// modules.dep lines for the given modules (paths relative to the
    /// modules directory, as depmod writes them).
    pub fn modules_dep(&self, modules: &[String]) -> Result<String> {
        let mut out = String::new();
        for m in modules {
            let mut deps = Vec::new();
            let (all, _) = self.closure(std::slice::from_ref(m))?;
            for d in all.iter().rev().filter(|d| *d != m) {
                deps.push(self.index[d].display().to_string());
            }
            out.push_str(&format!("{}: {}\n", self.index[m].display(), deps.join(" ")));
        }
        Ok(out)
    }
}

/// A `key=value` string of an ELF module's .modinfo section (found by
/// scanning for the NUL-separated entry, which is what modinfo prints).
pub fn modinfo_field(data: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    data.split(|&b| b == 0)
        .find(|s| s.starts_with(needle.as_bytes()))
        .map(|s| String::from_utf8_lossy(&s[needle.len()..]).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn modinfo_fields_are_found_between_nuls() {
        let data = b"\x7fELF junk\0license=GPL\0depends=nf_conntrack,nf_defrag_ipv6\0name=nf_nat\0";
        assert_eq!(super::modinfo_field(data, "depends").unwrap(), "nf_conntrack,nf_defrag_ipv6");
        assert_eq!(super::modinfo_field(data, "name").unwrap(), "nf_nat");
        assert!(super::modinfo_field(data, "alias").is_none());
    }
}
