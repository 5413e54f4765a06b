//! `cargo xtask provision` on disk images laid out as the boards' are (GPT
//! with an ext4 config partition, MBR with a vfat one): the box's files land
//! on the config partition, found by its label, with a relay certificate
//! issued by the operator's CA and the web password hashed; a box file the
//! box would refuse changes nothing on the disk.
//!
//! Needs the static relaybox of the qemu-x86_64 image (ci/test.sh builds the
//! images before `cargo test -p xtask -- --ignored`).

use std::path::{Path, PathBuf};

use xtask::disk::{self, Part};
use xtask::provision::{find_config_partition, provision, BoxFile};

fn relaybox() -> PathBuf {
    xtask::build::relaybox("x86_64-unknown-linux-musl").unwrap()
}

/// A disk as `cargo xtask image` makes it: a FAT boot partition, then the
/// config partition (ext4 on GPT, vfat on MBR), each empty.
fn disk(dir: &Path, gpt: bool) -> PathBuf {
    let boot = dir.join("boot.part");
    disk::fat_image(&boot, "RELAYBOX", 34, &[]).unwrap();
    let cfg = dir.join("cfg.part");
    // The Pi's vfat partition is 64 MiB (FAT32 needs more clusters than 16 MiB give).
    let (fs, mib) = if gpt { ("ext4", 16) } else { ("vfat", 64) };
    disk::config_image(&cfg, fs, mib, None).unwrap();
    let out = dir.join(if gpt { "gpt.img" } else { "mbr.img" });
    disk::disk_image(
        &out,
        &[
            Part { image: &boot, name: "RELAYBOX_BOOT", gpt_type: "ef00", mbr_type: 0x0c },
            Part { image: &cfg, name: disk::CFG_LABEL, gpt_type: "8300", mbr_type: 0x83 },
        ],
        gpt,
    )
    .unwrap();
    out
}

/// The config partition's bytes, as a file of their own.
fn extract(disk: &Path, out: &Path) -> &'static str {
    let part = find_config_partition(disk).unwrap();
    let data = std::fs::read(disk).unwrap();
    std::fs::write(out, &data[part.offset as usize..(part.offset + part.len) as usize]).unwrap();
    part.fs
}

fn cat(fs: &str, image: &Path, path: &str) -> String {
    if fs == "ext4" {
        disk::ext4_cat(image, path).unwrap()
    } else {
        disk::fat_cat(image, path).unwrap()
    }
}

#[test]
#[ignore = "needs the static relaybox build: run by ci/test.sh"]
fn a_box_file_provisions_the_config_partition_of_gpt_and_mbr_disks() {
    let bin = relaybox();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = relaybox_ca::CertificateAuthority::create(&relaybox_ca::Subject::new("Fleet CA"), 365).unwrap();
    ca.save(&dir.join("ca")).unwrap();
    std::fs::write(
        dir.join("edge-17.conf"),
        "# one box\nhostname = edge-17\ndispatchers = dispatcher.example.net:25060\nwan = 198.51.100.17/24\n\
         wan_gateway = 198.51.100.1\nwan_dns = 9.9.9.9\nlan = 192.168.88.1/24\nntp = 10.0.0.1\nsyslog = 10.0.0.2\n\
         web_password = fleet password 17\nca_dir = ca\norg = Example Ltd\nrelay.advertised_ip = 198.51.100.17\n\
         web.wan_access = no\n",
    )
    .unwrap();
    let b = BoxFile::load(&dir.join("edge-17.conf")).unwrap();
    for gpt in [true, false] {
        let img = disk(dir, gpt);
        let boot_before = std::fs::read(&img).unwrap()[..35 * 1024 * 1024].to_vec();
        let part = provision(&img, &b, &bin).unwrap();
        assert_eq!(part.offset, 35 * 1024 * 1024, "the second partition, after the 34 MiB boot one");
        assert_eq!(&std::fs::read(&img).unwrap()[..35 * 1024 * 1024], &boot_before[..], "nothing else touched");
        let cfg = dir.join("cfg.out");
        let fs = extract(&img, &cfg);
        assert_eq!(fs, if gpt { "ext4" } else { "vfat" });
        let system = cat(fs, &cfg, "/system.conf");
        assert!(system.contains("HOSTNAME=\"edge-17\"") && system.contains("SYSLOG_HOST=\"10.0.0.2\""), "{system}");
        let network = cat(fs, &cfg, "/network.conf");
        assert!(
            network.contains("WAN_MODE=\"static\"") && network.contains("WAN_ADDRESS=\"198.51.100.17/24\""),
            "{network}"
        );
        let ini = cat(fs, &cfg, "/relaybox.ini");
        assert!(
            ini.contains("dispatchers = dispatcher.example.net:25060") && ini.contains("advertised_ip = 198.51.100.17"),
            "{ini}"
        );
        assert!(cat(fs, &cfg, "/web.passwd").starts_with("$argon2id$"), "hashed, never the password");
        let cert = cat(fs, &cfg, "/tls/relay.crt");
        let info = relaybox_ca::cert_info(&cert).unwrap();
        assert!(info.subject.contains("edge-17"), "{}", info.subject);
        assert_eq!(cat(fs, &cfg, "/tls/ca.pem"), ca.cert_pem());
        assert!(cat(fs, &cfg, "/tls/relay.key").contains("PRIVATE KEY"));
    }
    let issued = relaybox_ca::CertificateAuthority::load(&dir.join("ca")).unwrap().issued().len();
    assert_eq!(issued, 2, "the CA records each certificate it issued");

    // What the box would refuse is refused here, and the disk is left alone.
    let img = disk(dir, true);
    let before = std::fs::read(&img).unwrap();
    for (line, why) in [
        ("hostname = edge;reboot", "system.conf"),
        ("dispatchers = ", "dispatchers"),
        ("relay.port_range = 1:2", "port_range"),
        ("lan = 198.51.100.1/24", "LAN_ADDRESS"),
    ] {
        let text = std::fs::read_to_string(dir.join("edge-17.conf")).unwrap();
        let key = line.split(" = ").next().unwrap();
        let text: String =
            text.lines().filter(|l| !l.starts_with(&format!("{key} ="))).map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join("bad.conf"), format!("{text}{line}\n")).unwrap();
        let e = BoxFile::load(&dir.join("bad.conf")).and_then(|b| provision(&img, &b, &bin)).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{line}: {e:#}");
        assert!(std::fs::read(&img).unwrap() == before, "{line}: the disk changed");
    }
}
