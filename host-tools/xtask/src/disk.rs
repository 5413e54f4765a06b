//! File system and partition images without loop mounts: mkfs.vfat +
//! mtools for FAT, `mkfs.ext4 -d` for ext4, sgdisk for GPT, and a small MBR
//! writer for the Raspberry Pi's boot partition table.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::run;

pub const MIB: u64 = 1024 * 1024;
pub const CFG_LABEL: &str = "RELAYBOX_CFG";
/// The FAT label of the boot partition (the EFI system partition, or the
/// Raspberry Pi's autoboot.txt partition): init mounts it by this label.
pub const BOOT_LABEL: &str = "RELAYBOX";
/// The GPT name of the EFI system partition.
pub const ESP_NAME: &str = "RELAYBOX_BOOT";
/// The FAT labels of the Raspberry Pi's slot partitions a and b.
pub const PI_SLOT_LABELS: [&str; 2] = ["RBXSLOTA", "RBXSLOTB"];
/// The size of the Raspberry Pi's autoboot.txt partition.
pub const PI_BOOT_MIB: u64 = 16;

/// What each slot makes room for, for a slot of `slot_bytes`: a slot half
/// again as big as this one, and 4 MiB.
pub fn slot_room_mib(slot_bytes: u64) -> u64 {
    let mib = slot_bytes.div_ceil(MIB);
    mib + mib / 2 + 4
}

/// The EFI system partition, which holds both slots: at least `min_mib`.
pub fn esp_mib(min_mib: u64, slot_bytes: u64) -> u64 {
    min_mib.max(2 * slot_room_mib(slot_bytes) + 4)
}

/// Each of the Raspberry Pi's slot partitions: at least `min_mib`.
pub fn pi_slot_mib(min_mib: u64, slot_bytes: u64) -> u64 {
    min_mib.max(slot_room_mib(slot_bytes))
}
/// FAT labels have at most 11 characters: a vfat config partition is
/// labelled without the underscore (rcS looks for both).
pub const CFG_LABEL_FAT: &str = "RELAYBOXCFG";

/// A FAT image of `size_mib` with `files` (destination path in the image,
/// source path on the host); directories are created as needed. FAT32
/// from 64 MiB, FAT16 below (FAT32 needs about 33 MiB at least).
pub fn fat_image(out: &Path, label: &str, size_mib: u64, files: &[(String, PathBuf)]) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let fat = if size_mib >= 64 { "32" } else { "16" };
    run(Command::new("mkfs.vfat").args(["-C", "-F", fat, "-n", label]).arg(out).arg((size_mib * 1024).to_string()))?;
    let mut made = std::collections::BTreeSet::new();
    for (dest, src) in files {
        let parts: Vec<&str> = dest.trim_start_matches('/').split('/').collect();
        let mut acc = String::new();
        for p in &parts[..parts.len() - 1] {
            acc.push('/');
            acc.push_str(p);
            if made.insert(acc.clone()) {
                run(Command::new("mmd").arg("-i").arg(out).arg(format!("::{acc}")))?;
            }
        }
        run(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(out)
            .arg(src)
            .arg(format!("::/{}", dest.trim_start_matches('/'))))?;
    }
    Ok(())
}

/// An ext4 image of `size_mib` holding the tree `from` (or empty).
pub fn ext4_image(out: &Path, label: &str, size_mib: u64, from: Option<&Path>) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", label, "-m", "0", "-T", "small", "-E", "root_owner=0:0"]);
    if let Some(dir) = from {
        cmd.arg("-d").arg(dir);
    }
    run(cmd.arg(out).arg(format!("{size_mib}M")))?;
    Ok(())
}

/// The config partition (label RELAYBOX_CFG), ext4 or vfat, optionally
/// pre-filled from a directory (certificates and settings of one box).
pub fn config_image(out: &Path, fs: &str, size_mib: u64, from: Option<&Path>) -> Result<()> {
    match fs {
        "ext4" => ext4_image(out, CFG_LABEL, size_mib, from),
        "vfat" => {
            let mut files = Vec::new();
            if let Some(dir) = from {
                collect(dir, dir, &mut files)?;
            }
            fat_image(out, CFG_LABEL_FAT, size_mib, &files)
        }
        other => bail!("CFG_FS {other}: ext4 or vfat"),
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else {
            out.push((p.strip_prefix(root)?.display().to_string(), p));
        }
    }
    Ok(())
}

/// One partition of a disk image.
pub struct Part<'a> {
    pub image: &'a Path,
    pub name: &'a str,
    /// GPT type code for sgdisk (ef00 ESP, 8300 Linux) or MBR type byte.
    pub gpt_type: &'a str,
    pub mbr_type: u8,
}

fn aligned(len: u64) -> u64 {
    len.div_ceil(MIB) * MIB
}

/// Lays the partition images one after the other from 1 MiB, in a GPT
/// (sgdisk) or MBR partition table.
pub fn disk_image(out: &Path, parts: &[Part], gpt: bool) -> Result<()> {
    let mut offsets = Vec::new();
    let mut at = MIB;
    for p in parts {
        let len = aligned(std::fs::metadata(p.image)?.len());
        offsets.push((at, len));
        at += len;
    }
    let total = at + MIB;
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out)?;
    f.set_len(total)?;
    drop(f);
    if gpt {
        let mut cmd = Command::new("sgdisk");
        cmd.arg("-o");
        for (i, (p, (off, len))) in parts.iter().zip(&offsets).enumerate() {
            let n = i + 1;
            cmd.arg(format!("-n{n}:{}:{}", off / 512, (off + len) / 512 - 1));
            cmd.arg(format!("-t{n}:{}", p.gpt_type));
            cmd.arg(format!("-c{n}:{}", p.name));
        }
        run(cmd.arg(out))?;
    } else {
        let mut mbr = vec![0u8; 512];
        // a disk signature, so that the kernel can name partitions by PARTUUID
        mbr[440..444].copy_from_slice(&0x7265_6c61u32.to_le_bytes());
        for (i, (p, (off, len))) in parts.iter().zip(&offsets).enumerate() {
            let e = 446 + 16 * i;
            mbr[e] = if i == 0 { 0x80 } else { 0 };
            mbr[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            mbr[e + 4] = p.mbr_type;
            mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            mbr[e + 8..e + 12].copy_from_slice(&((off / 512) as u32).to_le_bytes());
            mbr[e + 12..e + 16].copy_from_slice(&((len / 512) as u32).to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        write_at(out, 0, &mbr)?;
    }
    for (p, (off, _)) in parts.iter().zip(&offsets) {
        write_at(out, *off, &std::fs::read(p.image)?)?;
    }
    Ok(())
}

/// The partitions of a disk image (GPT or MBR), as (byte offset, byte
/// length), in table order.
pub fn partitions(disk: &Path) -> Result<Vec<(u64, u64)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(disk)?;
    let mut head = vec![0u8; 1024];
    f.read_exact(&mut head)?;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let mut out = Vec::new();
    if &head[512..520] == b"EFI PART" {
        let (lba, count, size) = (u64_at(&head, 512 + 72), u32_at(&head, 512 + 80), u32_at(&head, 512 + 84));
        let mut entries = vec![0u8; (count * size) as usize];
        f.seek(SeekFrom::Start(lba * 512))?;
        f.read_exact(&mut entries)?;
        for e in entries.chunks_exact(size as usize) {
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            out.push((first * 512, (last + 1 - first) * 512));
        }
    } else if head[510..512] == [0x55, 0xaa] {
        for i in 0..4 {
            let e = &head[446 + 16 * i..462 + 16 * i];
            if e[4] != 0 {
                out.push((u32_at(e, 8) * 512, u32_at(e, 12) * 512));
            }
        }
    } else {
        bail!("{}: no GPT or MBR partition table", disk.display());
    }
    Ok(out)
}

/// Partition `n` (1-based) of a disk image as (offset, length).
pub fn partition(disk: &Path, n: usize) -> Result<(u64, u64)> {
    let parts = partitions(disk)?;
    parts.get(n.wrapping_sub(1)).copied().ok_or_else(|| anyhow::anyhow!("{}: no partition {n}", disk.display()))
}

/// Writes a file system image into partition `n` of a disk image.
pub fn write_partition(disk: &Path, n: usize, image: &Path) -> Result<()> {
    let (off, len) = partition(disk, n)?;
    let data = std::fs::read(image)?;
    if data.len() as u64 > len {
        bail!("{} ({} bytes) does not fit partition {n} ({len} bytes)", image.display(), data.len());
    }
    write_at(disk, off, &data)
}

/// Copies partition `n` of a disk image to a file.
pub fn read_partition(disk: &Path, n: usize, out: &Path) -> Result<()> {
    use std::io::Read;
    let (off, len) = partition(disk, n)?;
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(off))?;
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data)?;
    std::fs::write(out, data)?;
    Ok(())
}

/// mtools' name for partition `n` of a disk image (`disk@@offset`).
pub fn fat_in(disk: &Path, n: usize) -> Result<PathBuf> {
    let (off, _) = partition(disk, n)?;
    Ok(PathBuf::from(format!("{}@@{off}", disk.display())))
}

/// The names in a directory of a FAT image (mtools; no mount).
pub fn fat_ls(image: &Path, dir: &str) -> Result<Vec<String>> {
    let out = run(Command::new("mdir").args(["-b", "-i"]).arg(image).arg(format!("::{dir}")))?;
    Ok(out.lines().filter_map(|l| l.trim().rsplit('/').next()).filter(|n| !n.is_empty()).map(str::to_string).collect())
}

fn write_at(path: &Path, off: u64, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(off))?;
    f.write_all(data)?;
    Ok(())
}

/// Reads a file from an ext4 image (debugfs; no mount).
pub fn ext4_cat(image: &Path, path: &str) -> Result<String> {
    run(Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(image))
}

/// Reads a file from a FAT image (mtools; no mount).
pub fn fat_cat(image: &Path, path: &str) -> Result<String> {
    run(Command::new("mtype").arg("-i").arg(image).arg(format!("::{path}")))
}
