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
