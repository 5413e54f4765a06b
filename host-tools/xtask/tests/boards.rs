//! Every board directory is complete and its board.conf loads; the init
//! scripts are valid shell.

use std::process::Command;

use xtask::board::{Board, BOARDS};

#[test]
fn every_board_conf_loads_with_its_boot_files() {
    for name in BOARDS {
        let b = Board::load(name).unwrap();
        assert!(b.dir.join("linux.fragment").is_file(), "{name}: linux.fragment");
        match b.get("DISK_LAYOUT").unwrap() {
            "gpt-efi" => assert!(b.dir.join("loader.conf").is_file(), "{name}: loader.conf"),
            "rpi-mbr" => assert!(b.dir.join("config.txt").is_file(), "{name}: config.txt"),
            other => panic!("{name}: layout {other}"),
        }
        assert!(b.get("KERNEL_CMDLINE").unwrap().contains(&format!("console={}", b.get("CONSOLE").unwrap())));
        let mods = b.modules().unwrap();
        assert!(mods.iter().any(|m| m == "nf_conntrack") && mods.iter().any(|m| m == "nf_nat"), "{name}");
    }
    assert!(Board::load("no-such-board").is_err());
    assert!(xtask::board::parse_conf("X=\"$(reboot)\"\n").is_err());
    assert!(xtask::board::parse_conf("X=1\nX=2\n").is_err());
}

#[test]
fn init_scripts_are_valid_shell() {
    let root = xtask::workspace_root().join("rootfs-overlay");
    for s in [
        "etc/init.d/rcS",
        "etc/init.d/rcK",
        "etc/init.d/update",
        "etc/profile",
        "etc/init.d/box.sh",
        "usr/sbin/relaybox-supervise",
        "usr/sbin/relaybox-syslogd",
        "usr/sbin/relaybox-logsave",
        "usr/sbin/relaybox-logsave-once",
        "usr/share/udhcpc/default.script",
    ] {
        let out = Command::new("sh").arg("-n").arg(root.join(s)).output().unwrap();
        assert!(out.status.success(), "{s}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let defaults = std::fs::read_to_string(root.join("etc/relaybox/defaults/relaybox.ini")).unwrap();
    assert!(!defaults.contains("BEGIN"), "no key or certificate in the default config");
    // Every service is a respawn line of init (a killed supervisor comes back).
    let inittab = std::fs::read_to_string(root.join("etc/inittab")).unwrap();
    for role in ["relay", "dispatcher", "web", "watchdog", "clock"] {
        let line = format!("::respawn:/usr/sbin/relaybox-supervise {role}");
        assert!(inittab.lines().any(|l| l.starts_with(&line)), "{line:?} missing from inittab");
    }
    assert!(inittab.contains("::respawn:/usr/sbin/relaybox-syslogd"));
}

/// Each image boots slot a and has room for slot b: on EFI boards one EFI
/// system partition with systemd-boot, `default relaybox-*`, slot a's entry
/// (generation 1, no boot counter: good) and files with their manifest; on
/// the Pi, autoboot.txt alone on the first partition (`[all]` slot a,
/// `[tryboot]` slot b), slot a's boot files on the second, an empty third.
#[test]
#[ignore = "builds every board's image: run by ci/test.sh"]
fn every_board_image_boots_slot_a_and_has_room_for_slot_b() {
    use xtask::disk::{fat_cat, fat_in, fat_ls, partitions};
    for name in BOARDS {
        let img = xtask::image::current(name).unwrap();
        let parts = partitions(&img.disk).unwrap();
        let manifest = |fat: &std::path::Path, path: &str| {
            let m = relaybox_update::Manifest::parse(fat_cat(fat, path).unwrap().as_bytes(), u64::MAX).unwrap();
            assert_eq!((m.board.as_str(), m.version.as_str()), (*name, img.version.as_str()));
            m
        };
        match Board::load(name).unwrap().get("DISK_LAYOUT").unwrap() {
            "gpt-efi" => {
                assert_eq!(parts.len(), 2, "{name}: ESP and config");
                let esp = fat_in(&img.disk, 1).unwrap();
                assert_eq!(fat_ls(&esp, "/loader/entries").unwrap(), ["relaybox-1-a.conf"], "{name}");
                let entry = fat_cat(&esp, "/loader/entries/relaybox-1-a.conf").unwrap();
                assert!(entry.contains("linux /slot-a/vmlinuz") && entry.contains("relaybox.slot=a"), "{entry}");
                assert!(fat_cat(&esp, "/loader/loader.conf").unwrap().contains("default relaybox-*"));
                let m = manifest(&esp, "/slot-a/manifest.json");
                let mut files: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
                files.sort();
                assert_eq!(files, ["cmdline.txt", "initrd.img", "vmlinuz"], "{name}");
                assert!(fat_ls(&esp, "/slot-b").unwrap().is_empty(), "{name}: slot b starts empty");
                // room for two slots half again as big as this one
                assert!(parts[0].1 >= 3 * m.total_size(), "{name}: ESP of {} bytes", parts[0].1);
            }
            "rpi-mbr" => {
                assert_eq!(parts.len(), 4, "{name}: autoboot, slot a, slot b, config");
                let p1 = fat_in(&img.disk, 1).unwrap();
                assert_eq!(fat_ls(&p1, "/").unwrap(), ["autoboot.txt"]);
                let autoboot = relaybox_update::pi::Autoboot::parse(&fat_cat(&p1, "/autoboot.txt").unwrap()).unwrap();
                assert_eq!((autoboot.boot, autoboot.tryboot), (2, 3));
                let m = manifest(&fat_in(&img.disk, 2).unwrap(), "/manifest.json");
                for f in ["config.txt", "cmdline.txt", "vmlinuz", "initrd.img", "bcm2711-rpi-4-b.dtb"] {
                    assert!(m.file(f).is_some(), "{name}: {f} not in slot a");
                }
                assert!(fat_ls(&fat_in(&img.disk, 3).unwrap(), "/").unwrap().is_empty(), "slot b starts empty");
                assert!(parts[2].1 >= parts[1].1, "slot b as big as slot a");
            }
            other => panic!("{name}: layout {other}"),
        }
    }
}
