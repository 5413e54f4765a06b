//! Firmware updates on the qemu-x86_64 board, which boots its disk through
//! OVMF and systemd-boot exactly as the PC does, so that the A/B slots,
//! systemd-boot's boot counting and the health check are the real ones:
//!
//! - bundles that are tampered with, for another board, unsigned, signed
//!   with another key, or older are refused with their reason and nothing
//!   is written (one running box for all of them);
//! - a good update (uploaded on the web page) boots, is marked good once
//!   the relay is back with its dispatcher, and sticks across reboots;
//! - an update whose relay does not start (installed with `relaybox update
//!   install URL`) is tried `boot_tries` times and the box goes back to
//!   the old slot by itself, which says so on its status page;
//! - the power cut in the middle of an install (QEMU killed while it writes,
//!   while it reads back) leaves a box that boots the old slot with its
//!   config partition intact.
//!
//! Test firmware is the image's own slot with a small cpio appended to its
//! initramfs (the kernel unpacks concatenated archives in order): a newer
//! `/etc/relaybox/release`, and for the failing one a `relaybox` that
//! refuses to run the relay.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaybox_ca::{CertificateAuthority, Subject};
use xtask::image::Image;
use xtask::qemu::{Vm, VmConfig, HOST_FROM_GUEST};

mod common;
use common::{free_tcp_port, Dispatcher, WebPage};

const BOOT: Duration = Duration::from_secs(300);
const WEB_PASSWORD: &str = "update-test-password";

/// Serves the files of a directory over HTTP to the guest (10.0.2.2 is the
/// host's loopback under QEMU's user network); stops when dropped.
struct FileServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &dir),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        FileServer { port, stop }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{HOST_FROM_GUEST}:{}/{name}", self.port)
    }
}

fn serve(stream: TcpStream, dir: &Path) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    while let Ok(n) = reader.read_line(&mut String::new()) {
        if n <= 2 {
            break;
        }
    }
    let name = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let mut out = stream;
    match std::fs::read(dir.join(&name)).ok().filter(|_| !name.contains('/')) {
        Some(data) => {
            let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
            let _ = out.write_all(&data);
        }
        None => {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A version newer than `v`.
fn newer(v: &str) -> String {
    format!("{v}.1")
}

/// The image's slot as test firmware of `version`: its initramfs with a
/// cpio appended that says so (and `extra` files), signed with `key`.
fn firmware(
    img: &Image,
    dir: &Path,
    name: &str,
    board: &str,
    version: &str,
    key: &relaybox_update::SigningKey,
    extra: &[(&str, u32, Vec<u8>)],
) -> PathBuf {
    let slot = dir.join(format!("{name}.slot"));
    std::fs::create_dir_all(&slot).unwrap();
    let mut files = Vec::new();
    for (n, p) in xtask::bundle::slot_files(img).unwrap() {
        let dst = slot.join(&n);
        std::fs::copy(&p, &dst).unwrap();
        files.push((n, dst));
    }
    let mut overlay = xtask::cpio::Archive::new();
    let release = relaybox_update::Release {
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        scheme: relaybox_update::Scheme::Efi,
    };
    overlay.file("etc/relaybox/release", 0o644, release.render().as_bytes()).unwrap();
    for (path, mode, data) in extra {
        overlay.file(path, *mode, data).unwrap();
    }
    let mut initrd = std::fs::OpenOptions::new().append(true).open(slot.join("initrd.img")).unwrap();
    initrd.write_all(&overlay.finish_xz().unwrap()).unwrap();
    drop(initrd);
    let manifest = relaybox_update::bundle::describe(board, version, &files).unwrap();
    let out = dir.join(format!("{name}.bundle"));
    relaybox_update::bundle::write(&out, &manifest, key, &files).unwrap();
    out
}

/// A provisioned box: its relay certificate, a dispatcher on the host, a
/// web password, short update timeouts, and a marker file on /config.
struct Rig {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    img: Image,
    dispatcher: Dispatcher,
    disk: PathBuf,
    web_port: u16,
}

fn rig(name: &str) -> Rig {
    let img = xtask::image::current("qemu-x86_64").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut ca = CertificateAuthority::create(&Subject::new("update-test CA"), 30).unwrap();
    let relay = ca.issue(relaybox_ca::Role::Relay, &Subject::new("relay"), 30).unwrap();
    let disp = ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher"), 30).unwrap();
    let certs = dir.join("certs");
    relaybox_ca::write_certs_dir(&ca, &certs, &relay, &disp).unwrap();
    let dispatcher = Dispatcher::start(&img.relaybox, &dir, &certs, "INFO", "");
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(cfg.join("tls")).unwrap();
    for f in ["ca.pem", "crl.pem", "relay.crt", "relay.key"] {
        std::fs::copy(certs.join(f), cfg.join("tls").join(f)).unwrap();
    }
    std::fs::write(
        cfg.join("relaybox.ini"),
        format!(
            "[Relay]\ndispatchers = {HOST_FROM_GUEST}:{}\nadvertised_ip = 127.0.0.1\nport_range = 40000:40008\n\
             reconnect_delay = 1\n[TLS]\ncerts_path = tls\n[Update]\nboot_tries = 2\nhealth_timeout = 45\n",
            dispatcher.link
        ),
    )
    .unwrap();
    std::fs::write(cfg.join("system.conf"), "HOSTNAME=relaybox\nNTP_SERVERS=\"\"\n").unwrap();
    std::fs::write(cfg.join("provisioned-by-the-test"), format!("{name}\n")).unwrap();
    let mut setpw = Command::new(&img.relaybox)
        .arg("--config")
        .arg(cfg.join("relaybox.ini"))
        .args(["web", "set-password"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    setpw.stdin.take().unwrap().write_all(format!("{WEB_PASSWORD}\n").as_bytes()).unwrap();
    assert!(setpw.wait().unwrap().success());
    let cfg_img = dir.join("config.img");
    xtask::disk::config_image(&cfg_img, "ext4", 16, Some(&cfg)).unwrap();
    let disk = dir.join("disk.img");
    img.provisioned_disk(&cfg_img, &disk).unwrap();
    Rig { _tmp: tmp, dir, img, dispatcher, disk, web_port: free_tcp_port() }
}

impl Rig {
    fn vm(&self, name: &str, disk_bps: Option<u64>) -> Vm {
        let mut cfg = VmConfig::new("qemu-x86_64", &self.disk);
        cfg.reboot = true;
        // The web page is reachable from the LAN side only (the box's firewall).
        cfg.lan_web_host_port = self.web_port;
        cfg.disk_bps = disk_bps;
        cfg.log = Some(xtask::target_dir().join(format!("update-test-{name}.console.log")));
        Vm::start(&cfg).unwrap()
    }
}

/// Waits for the boot's slot line; returns (slot, on trial).
fn booted(vm: &mut Vm) -> (String, bool) {
    let line = vm.wait_for("relaybox-update: firmware ", BOOT).unwrap();
    let rest = vm.wait_for("\n", Duration::from_secs(10)).unwrap();
    let _ = line;
    let slot = rest.split(", slot ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_string();
    (slot, rest.contains("(on trial: yes)"))
}

fn sh(vm: &mut Vm, command: &str) -> String {
    vm.run(command, Duration::from_secs(120)).unwrap()
}

fn config_intact(vm: &mut Vm, rig_name: &str) {
    let out = sh(vm, "cat /config/provisioned-by-the-test; grep -c dispatchers /config/relaybox.ini; relaybox check-config >/dev/null && echo CONFIG-OK");
    assert!(out.contains(rig_name) && out.contains("CONFIG-OK"), "/config after the power cut: {out}");
}

#[test]
#[ignore = "boots QEMU: run by ci/test.sh"]
fn bad_bundles_are_refused_a_good_update_sticks_and_a_broken_one_rolls_back() {
    let start = Instant::now();
    let rig = rig("updates");
    let v0 = rig.img.version.clone();
    let (v1, v2) = (newer(&v0), newer(&newer(&v0)));
    let (dev_key, _) = xtask::image::dev_update_key().unwrap();
    let key = relaybox_update::SigningKey::from_pem(&std::fs::read_to_string(dev_key).unwrap()).unwrap();
    let (stranger, _) = relaybox_update::SigningKey::generate().unwrap();
    let bundles = rig.dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let good = firmware(&rig.img, &bundles, "good", "qemu-x86_64", &v1, &key, &[]);
    let relaybox = std::fs::read(&rig.img.relaybox).unwrap();
    let broken_wrapper = b"#!/bin/sh\n# test firmware: its relay never starts\nfor a in \"$@\"; do [ \"$a\" = relay ] && { echo 'relaybox: this test firmware does not run a relay' >&2; exit 1; }; done\nexec /usr/bin/relaybox.real \"$@\"\n".to_vec();
    firmware(
        &rig.img,
        &bundles,
        "broken",
        "qemu-x86_64",
        &v2,
        &key,
        &[("usr/bin/relaybox.real", 0o755, relaybox), ("usr/bin/relaybox", 0o755, broken_wrapper)],
    );
    firmware(&rig.img, &bundles, "other-board", "qemu-aarch64", &v1, &key, &[]);
    firmware(&rig.img, &bundles, "stranger", "qemu-x86_64", &v1, &stranger, &[]);
    firmware(&rig.img, &bundles, "older", "qemu-x86_64", "0.0.1", &key, &[]);
    // tampered: one byte of the initramfs changed after signing
    let mut data = std::fs::read(&good).unwrap();
    let at = data.len() - 4096;
    data[at] ^= 0x20;
    std::fs::write(bundles.join("tampered.bundle"), &data).unwrap();
    // unsigned: the same entries without manifest.sig
    {
        let files = xtask::bundle::slot_files(&rig.img).unwrap();
        let manifest = relaybox_update::bundle::describe("qemu-x86_64", &v1, &files).unwrap();
        let mut a = xtask::cpio::Archive::new();
        a.file("manifest", 0o644, &manifest.to_json()).unwrap();
        for (n, p) in &files {
            a.file(n, 0o644, &std::fs::read(p).unwrap()).unwrap();
        }
        std::fs::write(bundles.join("unsigned.bundle"), a.finish()).unwrap();
    }
    let server = FileServer::start(&bundles);

    // 1. The image's slot a boots and is the good slot.
    let mut vm = rig.vm("updates", None);
    assert_eq!(booted(&mut vm), ("a".to_string(), false));
    vm.wait_for(&format!("relaybox-update: slot a ({v0}) is the good slot"), BOOT).unwrap();
    rig.dispatcher.wait_log("relay connected", 1, Duration::from_secs(120));
    let first_boot = vm.started.elapsed().as_secs_f64();
    let before = sh(&mut vm, "ls /boot/loader/entries /boot/slot-b");

    // 2. Every bad bundle is refused with its reason; nothing is written.
    for (name, reason) in [
        ("tampered", "does not match the signed manifest"),
        ("other-board", "the bundle is for board qemu-aarch64; this box is qemu-x86_64"),
        ("unsigned", "the bundle is not signed"),
        ("stranger", "signature does not verify with this box's update key"),
        ("older", "is not newer than the running"),
    ] {
        let out =
            sh(&mut vm, &format!("relaybox update install {}; echo rc=$?", server.url(&format!("{name}.bundle"))));
        assert!(out.contains(reason) && out.contains("nothing was written") && out.contains("rc=1"), "{name}: {out}");
        assert_eq!(sh(&mut vm, "ls /boot/loader/entries /boot/slot-b"), before, "{name} wrote something");
        eprintln!("refused {name}: {}", out.lines().find(|l| l.contains(reason)).unwrap_or("").trim());
    }

    // 3. The good one, uploaded on the web page: installed into slot b.
    let web = WebPage { port: rig.web_port, jar: rig.dir.join("cookies"), password: WEB_PASSWORD };
    let csrf = web.login();
    let (status, body) = web.curl(
        &[
            "-H",
            &format!("x-csrf-token: {csrf}"),
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            &format!("@{}", good.display()),
        ],
        "/update/upload",
    );
    assert_eq!(status, 202, "upload: {body}");
    let until = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let (_, body) = web.curl(&[], "/api/update");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["job"]["running"] == false && !v["job"]["ok"].is_null() {
            break v;
        }
        assert!(Instant::now() < until, "the install never finished: {body}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(job["job"]["ok"], true, "{job}");
    let steps = job["job"]["steps"].to_string();
    assert!(steps.contains("verified") && steps.contains("armed with version"), "{steps}");
    let status = sh(&mut vm, "relaybox update status");
    assert!(status.contains(&format!("slot b, version {v1}: installed, boots next (2 tries)")), "{status}");
    let entries = sh(&mut vm, "ls /boot/loader/entries");
    assert!(entries.contains("relaybox-1-a.conf") && entries.contains("relaybox-2-b+2.conf"), "{entries}");

    // 4. Reboot: slot b on trial, healthy (relay back with its dispatcher), marked good.
    let connections = rig.dispatcher.connections();
    vm.send("reboot").unwrap();
    assert_eq!(booted(&mut vm), ("b".to_string(), true));
    vm.wait_for(&format!("relaybox-update: slot b ({v1}) is healthy: marked good"), BOOT).unwrap();
    rig.dispatcher.wait_log("relay connected", connections + 1, Duration::from_secs(10));
    assert!(sh(&mut vm, "cat /etc/relaybox/release").contains(&format!("VERSION=\"{v1}\"")));
    // ... and it sticks.
    vm.send("reboot").unwrap();
    assert_eq!(booted(&mut vm), ("b".to_string(), false));
    vm.wait_for(&format!("relaybox-update: slot b ({v1}) is the good slot"), BOOT).unwrap();
    let entries = sh(&mut vm, "ls /boot/loader/entries");
    assert!(entries.contains("relaybox-1-a.conf") && entries.contains("relaybox-2-b.conf"), "{entries}");

    // 5. A firmware whose relay does not start: tried twice, then back to b.
    let out = sh(&mut vm, &format!("relaybox update install {}; echo rc=$?", server.url("broken.bundle")));
    assert!(out.contains(&format!("slot a armed with version {v2}")) && out.contains("rc=0"), "{out}");
    vm.send("reboot").unwrap();
    for attempt in 1..=2 {
        assert_eq!(booted(&mut vm), ("a".to_string(), true), "try {attempt}");
        vm.wait_for("this test firmware does not run a relay", BOOT).unwrap();
        vm.wait_for(&format!("relaybox-update: slot a ({v2}) is not healthy after 45 s"), BOOT).unwrap();
    }
    assert_eq!(booted(&mut vm), ("b".to_string(), false), "back on the old slot");
    vm.wait_for(&format!("relaybox-update: slot b ({v1}) is the good slot"), BOOT).unwrap();
    let status = sh(&mut vm, "relaybox update status");
    assert!(status.contains(&format!("update to {v2} failed, rolled back")), "{status}");
    // The status page says so too.
    let web = WebPage { port: rig.web_port, jar: rig.dir.join("cookies2"), password: WEB_PASSWORD };
    web.login();
    let (_, page) = web.curl(&[], "/status");
    assert!(
        page.contains(r#"id="update-failed""#) && page.contains(&format!("update to {v2} failed, rolled back")),
        "{page}"
    );
    config_intact(&mut vm, "updates");
    eprintln!(
        "update test: first boot {first_boot:.0} s; refused 5 bundles, installed, tried, kept, rolled back in {:.0} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "boots QEMU: run by ci/test.sh"]
fn a_power_cut_during_an_install_leaves_the_old_slot_and_config() {
    let start = Instant::now();
    let rig = rig("power-cut");
    let (dev_key, _) = xtask::image::dev_update_key().unwrap();
    let key = relaybox_update::SigningKey::from_pem(&std::fs::read_to_string(dev_key).unwrap()).unwrap();
    let bundles = rig.dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let v0 = rig.img.version.clone();
    firmware(&rig.img, &bundles, "good", "qemu-x86_64", &newer(&v0), &key, &[]);
    let server = FileServer::start(&bundles);
    // The disk at 4 MiB/s: the write and the read-back take seconds each.
    let bps = Some(4 * 1024 * 1024);
    for cut_at in ["slot b is no longer bootable", "slot b: written 4.0 MiB", "slot b: reading back what was written"] {
        let mut vm = rig.vm("power-cut", bps);
        assert_eq!(booted(&mut vm), ("a".to_string(), false), "before the cut at {cut_at:?}");
        vm.wait_for("relaybox-init: boot done", BOOT).unwrap();
        vm.send(&format!("relaybox update install {}", server.url("good.bundle"))).unwrap();
        vm.wait_for(cut_at, Duration::from_secs(300)).unwrap();
        drop(vm); // the power cut: QEMU killed
        let mut vm = rig.vm("power-cut", bps);
        assert_eq!(booted(&mut vm), ("a".to_string(), false), "after the cut at {cut_at:?}");
        vm.wait_for(&format!("relaybox-update: slot a ({v0}) is the good slot"), BOOT).unwrap();
        config_intact(&mut vm, "power-cut");
        // The first boot after the cut was slot a's, and slot b has no boot entry.
        assert_eq!(vm.console().matches("BdsDxe: starting").count(), 1, "{}", vm.console());
        let status = sh(&mut vm, "relaybox update status");
        assert!(
            status.lines().any(|l| l.starts_with("other        slot b") && l.trim_end().ends_with(": empty")),
            "{status}"
        );
        eprintln!("power cut at {cut_at:?}: slot a boots, /config intact");
    }
    // After the cuts an install still completes.
    let mut vm = rig.vm("power-cut", None);
    booted(&mut vm);
    vm.wait_for("relaybox-init: boot done", BOOT).unwrap();
    let out = sh(&mut vm, &format!("relaybox update install {}; echo rc=$?", server.url("good.bundle")));
    assert!(out.contains("slot b armed") && out.contains("rc=0"), "{out}");
    eprintln!("power-cut test: {:.0} s", start.elapsed().as_secs_f64());
}
