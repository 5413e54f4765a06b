//! `relaybox config` and `relaybox web certificate` as the box's init and
//! an operator's shell run them: a backup restored over a changed
//! configuration at the next "boot", a broken backup refused with the file
//! and the reason, a factory reset emptying the directory, a certificate
//! replacement a power cut interrupted finished at boot, and the web page's
//! certificate made for the host name with its fingerprint.

// Needs the relay and web features (all are on by default).
#![cfg(all(feature = "relay", feature = "web"))]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn relaybox(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--config").arg(dir.join("relaybox.ini")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn sample(dir: &Path) {
    std::fs::write(dir.join("relaybox.ini"), "[Relay]\nport_range = 40000:40100\n[TLS]\ncerts_path = tls\n").unwrap();
    std::fs::write(dir.join("system.conf"), "HOSTNAME=\"edge-1\"\nNTP_SERVERS=\"\"\n").unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
}

#[test]
fn backup_restore_at_boot_and_factory_reset_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sample(dir);
    let file = dir.join("backup.tar");
    let out = relaybox(dir, &["config", "backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // The box changes, even its config file breaks: the backup still restores.
    std::fs::write(dir.join("relaybox.ini"), "[Relay]\nport_range = nonsense\n").unwrap();
    std::fs::write(dir.join("system.conf"), "HOSTNAME=\"changed\"\n").unwrap();
    let out = relaybox(dir, &["config", "restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reboot to apply it"), "{}", text(&out));
    assert!(std::fs::read_to_string(dir.join("system.conf")).unwrap().contains("changed"), "applied only at boot");
    let out = relaybox(dir, &["config", "boot"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("restored a backup: relaybox.ini system.conf"), "{}", text(&out));
    assert!(std::fs::read_to_string(dir.join("relaybox.ini")).unwrap().contains("40000:40100"));
    assert!(std::fs::read_to_string(dir.join("system.conf")).unwrap().contains("edge-1"));

    // A backup the box would refuse: nothing staged, the file and the reason said.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("services.conf"), "RELAY=yes\nWEB=$(reboot)\n").unwrap();
    let bad_tar = dir.join("bad.tar");
    let out = Command::new("tar").arg("cf").arg(&bad_tar).arg("-C").arg(&bad).arg("services.conf").output().unwrap();
    assert!(out.status.success());
    let out = relaybox(dir, &["config", "restore", bad_tar.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("services.conf: line 2"), "{}", text(&out));
    assert!(!dir.join(".restore").exists());
    let out = relaybox(dir, &["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("services.conf"), "{}", text(&out));

    // Factory reset: the next boot empties the directory.
    let out = relaybox(dir, &["config", "factory-reset"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("relaybox.ini").exists());
    let out = relaybox(dir, &["config", "boot"]);
    assert!(text(&out).contains("factory reset"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

#[test]
fn an_interrupted_certificate_replacement_is_finished_at_boot_and_the_web_certificate_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sample(dir);
    let tls = dir.join("tls");
    // A power cut after the commit point: relay.crt renamed, relay.key not yet.
    std::fs::write(tls.join("relay.crt"), "new cert").unwrap();
    std::fs::write(tls.join("relay.key"), "old key").unwrap();
    std::fs::write(tls.join("relay.key.new"), "new key").unwrap();
    std::fs::write(tls.join(".replace"), "relay.crt\nrelay.key\n").unwrap();
    let out = relaybox(dir, &["config", "boot"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("finished an interrupted certificate replacement: relay.key"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(tls.join("relay.key")).unwrap(), "new key");

    let out = relaybox(dir, &["web", "certificate"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = text(&out);
    assert!(lines.contains("web page: made a self-signed certificate for "), "{lines}");
    let fingerprint = lines.lines().find_map(|l| l.strip_prefix("web page certificate SHA-256 ")).unwrap().to_string();
    let pem = std::fs::read_to_string(tls.join("web.crt")).unwrap();
    assert_eq!(fingerprint, relaybox_ca::fingerprint_sha256(&pem).unwrap());
    let info = relaybox_ca::cert_info(&pem).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert!(info.subject.contains(&host), "CN is the host name {host}: {}", info.subject);
    // The next boot keeps it and prints the same fingerprint.
    let again = text(&relaybox(dir, &["web", "certificate"]));
    assert_eq!(again.trim(), format!("web page certificate SHA-256 {fingerprint}"));
}
