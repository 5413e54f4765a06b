//! `cargo xtask provision --image DISK --box BOX.conf`: one box's identity
//! written onto the config partition of its disk image (or of the SD card
//! or USB stick it was flashed to) before the first boot, so that it comes
//! up connected with nobody at its console: host name, network, NTP and
//! remote syslog, dispatchers and any other `[Relay]`/`[Web]`/`[Watchdog]`
//! setting, the relay's certificate and key with the CA (from files, or
//! issued on the spot from a `relaybox-ca` directory), and the web page's
//! password hash (made by the image's own `relaybox web set-password`, the
//! same argon2 parameters as on the box).
//!
//! The box file is `key = value` lines (`#` comments); relative paths are
//! relative to it. The files are checked with the box's own parsers
//! (`relaybox config check`) before anything is written; the config
//! partition is found by its label in the partition table (GPT or MBR)
//! wherever the disk layout puts it, and its contents replaced (ext4 or
//! vfat as it was made). The partition table is not touched.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::disk::{self, CFG_LABEL, CFG_LABEL_FAT, MIB};

/// One box's settings, as read from its file.
#[derive(Debug, Clone, Default)]
pub struct BoxFile {
    /// The directory relative paths are taken from.
    pub base: PathBuf,
    pub values: BTreeMap<String, String>,
}

/// Keys a box file may have besides `relay.*`, `web.*`, `watchdog.*` and
/// `services.*`.
const KEYS: &[&str] = &[
    "hostname",
    "dispatchers",
    "wan",
    "wan_gateway",
    "wan_dns",
    "lan",
    "ntp",
    "syslog",
    "web_password",
    "web_password_file",
    "ca",
    "crl",
    "relay_cert",
    "relay_key",
    "ca_dir",
    "org",
    "days",
];

impl BoxFile {
    pub fn parse(text: &str, base: &Path) -> Result<BoxFile> {
        let mut values = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { bail!("line {}: expected key = value", i + 1) };
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            let prefixed = ["relay.", "web.", "watchdog.", "services."].iter().any(|p| k.starts_with(p));
            if !prefixed && !KEYS.contains(&k.as_str()) {
                bail!(
                    "line {}: unknown key {k:?} (known: {}, relay.*, web.*, watchdog.*, services.*)",
                    i + 1,
                    KEYS.join(" ")
                );
            }
            if values.insert(k.clone(), v).is_some() {
                bail!("line {}: {k} set twice", i + 1);
            }
        }
        for required in ["hostname", "dispatchers"] {
            if values.get(required).is_none_or(|v| v.is_empty()) {
                bail!("{required} is required");
            }
        }
        Ok(BoxFile { base: base.to_path_buf(), values })
    }

    pub fn load(path: &Path) -> Result<BoxFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        BoxFile::parse(&text, &base).with_context(|| path.display().to_string())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.get(key).map(|p| self.base.join(p))
    }

    fn section(&self, prefix: &str) -> Vec<(&str, &str)> {
        self.values.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str()))).collect()
    }
}

/// `text` with shell variable `key` set to `"value"` (the first assignment
/// replaced, later ones dropped, or one added). `relaybox config check`
/// refuses anything the shell would interpret.
fn set_var(text: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        if line.trim().strip_prefix(key).is_some_and(|r| r.starts_with('=')) {
            if !done {
                out.push_str(&format!("{key}=\"{value}\"\n"));
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str(&format!("{key}=\"{value}\"\n"));
    }
    out
}

fn defaults(name: &str) -> Result<String> {
    let path = crate::workspace_root().join("rootfs-overlay/etc/relaybox/defaults").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Lays out the box's configuration directory in `out` (empty or missing).
pub fn stage(b: &BoxFile, out: &Path, relaybox: &Path) -> Result<()> {
    let host = b.get("hostname").unwrap_or_default();
    std::fs::create_dir_all(out.join("tls"))?;
    // relaybox.ini
    let mut ini = format!(
        "; relaybox settings of {host}, written by `cargo xtask provision`. Every option: config.ini.sample.\n\n[Relay]\ndispatchers = {}\n",
        b.get("dispatchers").unwrap_or_default()
    );
    let relay = b.section("relay.");
    if !relay.iter().any(|(k, _)| *k == "port_range") {
        ini.push_str("port_range = 40000:60000\n");
    }
    for (k, v) in &relay {
        ini.push_str(&format!("{k} = {v}\n"));
    }
    ini.push_str("\n[TLS]\ncerts_path = tls\n");
    for (section, prefix) in [("Web", "web."), ("Watchdog", "watchdog.")] {
        let opts = b.section(prefix);
        if !opts.is_empty() {
            ini.push_str(&format!("\n[{section}]\n"));
            for (k, v) in opts {
                ini.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    std::fs::write(out.join("relaybox.ini"), ini)?;
    // system.conf
    let mut system = set_var(&defaults("system.conf")?, "HOSTNAME", host);
    if let Some(ntp) = b.get("ntp") {
        system = set_var(&system, "NTP_SERVERS", ntp);
    }
    if let Some(syslog) = b.get("syslog") {
        system = set_var(&system, "SYSLOG_HOST", syslog);
    }
    std::fs::write(out.join("system.conf"), system)?;
    // network.conf
    let mut network = defaults("network.conf")?;
    match b.get("wan") {
        None | Some("dhcp") => network = set_var(&network, "WAN_MODE", "dhcp"),
        Some(address) => {
            network = set_var(&network, "WAN_MODE", "static");
            network = set_var(&network, "WAN_ADDRESS", address);
        }
    }
    for (key, var) in [("wan_gateway", "WAN_GATEWAY"), ("wan_dns", "WAN_DNS")] {
        if let Some(v) = b.get(key) {
            network = set_var(&network, var, v);
        }
    }
    if let Some(lan) = b.get("lan") {
        network = set_var(&network, "LAN_ADDRESS", if lan == "none" { "" } else { lan });
    }
    std::fs::write(out.join("network.conf"), network)?;
    // services.conf
    let mut services = defaults("services.conf")?;
    for (k, v) in b.section("services.") {
        services = set_var(&services, &k.to_ascii_uppercase(), v);
    }
    std::fs::write(out.join("services.conf"), services)?;
    // Certificates: from files, or issued now by the operator's CA.
    let tls = out.join("tls");
    if let Some(ca_dir) = b.path("ca_dir") {
        let mut ca = relaybox_ca::CertificateAuthority::load(&ca_dir)
            .with_context(|| format!("loading the CA in {}", ca_dir.display()))?;
        let mut subject = relaybox_ca::Subject::new(host);
        if let Some(org) = b.get("org") {
            subject = subject.with_org(org);
        }
        let days: u32 = b.get("days").unwrap_or("825").parse().context("days")?;
        let cert = ca.issue(relaybox_ca::Role::Relay, &subject, days)?;
        ca.save(&ca_dir)?;
        relaybox_ca::write_issued(&tls, "relay", &cert)?;
        std::fs::write(tls.join("ca.pem"), ca.cert_pem())?;
        std::fs::write(tls.join("crl.pem"), ca.crl_pem()?)?;
    } else {
        for (key, name) in [("ca", "ca.pem"), ("relay_cert", "relay.crt"), ("relay_key", "relay.key")] {
            let src = b.path(key).with_context(|| format!("{key} is required (or ca_dir)"))?;
            std::fs::copy(&src, tls.join(name)).with_context(|| format!("{key}: {}", src.display()))?;
        }
        if let Some(crl) = b.path("crl") {
            std::fs::copy(&crl, tls.join("crl.pem")).with_context(|| format!("crl: {}", crl.display()))?;
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tls.join("relay.key"), std::fs::Permissions::from_mode(0o600))?;
    // The web password, hashed by the image's own binary.
    let password = match (b.get("web_password"), b.path("web_password_file")) {
        (Some(p), None) => Some(p.to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("web_password_file {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
        (Some(_), Some(_)) => bail!("web_password and web_password_file: one of them"),
    };
    if let Some(password) = password {
        let mut child = Command::new(relaybox)
            .arg("--config")
            .arg(out.join("relaybox.ini"))
            .args(["web", "set-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", relaybox.display()))?;
        child.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
        let result = child.wait_with_output()?;
        if !result.status.success() {
            bail!("web password not set: {}", String::from_utf8_lossy(&result.stderr).trim());
        }
    }
    // As the box will read it.
    let check = Command::new(relaybox).arg("config").arg("check").arg(out).output()?;
    if !check.status.success() {
        bail!("{}", String::from_utf8_lossy(&check.stderr).trim());
    }
    Ok(())
}

/// Where a config partition lies in a disk image or device, and its file
/// system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigPartition {
    pub offset: u64,
    pub len: u64,
    pub fs: &'static str,
}

fn read_at(f: &mut std::fs::File, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(b[..4].try_into().unwrap()))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// The file system and label at `offset`, if it is ext4 or FAT.
fn label_at(f: &mut std::fs::File, offset: u64) -> Option<(&'static str, String)> {
    let sb = read_at(f, offset + 1024, 256).ok()?;
    if sb[56..58] == [0x53, 0xef] {
        let label = String::from_utf8_lossy(&sb[120..136]).trim_end_matches('\0').to_string();
        return Some(("ext4", label));
    }
    let boot = read_at(f, offset, 512).ok()?;
    if boot[510..512] == [0x55, 0xaa] && &boot[82..87] == b"FAT32" {
        return Some(("vfat", String::from_utf8_lossy(&boot[71..82]).trim_end().to_string()));
    }
    None
}

/// The partitions of a disk: (offset, length) from its GPT or MBR.
fn partitions(f: &mut std::fs::File) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let gpt = read_at(f, 512, 92)?;
    if &gpt[..8] == b"EFI PART" {
        let (entries_lba, count, size) = (le64(&gpt[72..]), le32(&gpt[80..]), le32(&gpt[84..]));
        let table = read_at(f, entries_lba * 512, (count * size) as usize)?;
        for e in table.chunks(size as usize) {
            let (first, last) = (le64(&e[32..]), le64(&e[40..]));
            if e[..16].iter().any(|b| *b != 0) && last >= first {
                out.push((first * 512, (last - first + 1) * 512));
            }
        }
        return Ok(out);
    }
    let mbr = read_at(f, 0, 512)?;
    if mbr[510..512] == [0x55, 0xaa] {
        for i in 0..4 {
            let e = &mbr[446 + 16 * i..462 + 16 * i];
            let (start, count) = (le32(&e[8..]), le32(&e[12..]));
            if e[4] != 0 && count != 0 {
                out.push((start * 512, count * 512));
            }
        }
    }
    Ok(out)
}

/// The partition labelled RELAYBOX_CFG (RELAYBOXCFG on vfat) on `disk`, or
/// `disk` itself when it is a bare config partition image.
pub fn find_config_partition(disk: &Path) -> Result<ConfigPartition> {
    let mut f = std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    let is_cfg = |label: &str| label == CFG_LABEL || label == CFG_LABEL_FAT;
    for (offset, len) in partitions(&mut f)? {
        if let Some((fs, label)) = label_at(&mut f, offset) {
            if is_cfg(&label) {
                return Ok(ConfigPartition { offset, len, fs });
            }
        }
    }
    if let Some((fs, label)) = label_at(&mut f, 0) {
        if is_cfg(&label) {
            return Ok(ConfigPartition { offset: 0, len: size, fs });
        }
    }
    bail!("{}: no partition labelled {CFG_LABEL} or {CFG_LABEL_FAT}", disk.display())
}

/// Provisions `disk` (an image file or a block device) from the box file:
/// stages and checks the configuration, then replaces the config
/// partition's contents. Returns the partition found.
pub fn provision(disk: &Path, box_file: &BoxFile, relaybox: &Path) -> Result<ConfigPartition> {
    let part = find_config_partition(disk)?;
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = crate::target_dir().join("xtask").join(format!("provision-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let staged = scratch.join("config");
        stage(box_file, &staged, relaybox)?;
        let image = scratch.join("config.img");
        let size_mib = part.len / MIB;
        disk::config_image(&image, part.fs, size_mib, Some(&staged))?;
        let data = std::fs::read(&image)?;
        if data.len() as u64 > part.len {
            bail!("the config partition image is larger than the partition");
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
        f.seek(SeekFrom::Start(part.offset))?;
        f.write_all(&data)?;
        f.sync_all()?;
        Ok(part)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_files_name_their_keys() {
        let b = BoxFile::parse(
            "# edge 17\nhostname = edge-17\ndispatchers = d.example:25060\nrelay.advertised_ip = 192.0.2.17\nservices.watchdog = no\n",
            Path::new("/boxes"),
        )
        .unwrap();
        assert_eq!(b.get("hostname"), Some("edge-17"));
        assert_eq!(b.section("relay."), [("advertised_ip", "192.0.2.17")]);
        assert_eq!(b.path("ca"), None);
        assert!(BoxFile::parse("hostname = a\n", Path::new(".")).unwrap_err().to_string().contains("dispatchers"));
        assert!(BoxFile::parse("hostname = a\ndispatcher = x\n", Path::new("."))
            .unwrap_err()
            .to_string()
            .contains("unknown key"));
        assert!(BoxFile::parse("hostname = a\nhostname = b\n", Path::new(".")).is_err());
        assert_eq!(set_var("A=1\n# c\nB=2\nA=3\n", "A", "x"), "A=\"x\"\n# c\nB=2\n");
        assert_eq!(set_var("", "A", "x"), "A=\"x\"\n");
    }
}
