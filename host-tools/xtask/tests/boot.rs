//! Boots the qemu-x86_64 and qemu-aarch64 images (TCG, through their UEFI
//! firmware and systemd-boot, as the real boards) side by side and
//! drives each like an operator and a SIP proxy would: a dispatcher on the
//! host, the box provisioned through its config partition, a call placed
//! through the module socket, RTP both ways through the box's relay (QEMU
//! host forwards), a killed relay coming back under the supervisor, and
//! settings changed on the box's web page (host name, a static WAN) taking
//! effect after its Reboot button. The box is provisioned with `cargo xtask
//! provision` (nobody types at its console); its web page answers on the
//! LAN NIC and not on the WAN one (the box's firewall); the daemons log to
//! syslog (Logs page) and the log survives the reboot; a killed supervisor
//! is started again by init and adopts the running relay; and a relay that
//! cannot start any more makes the hardware watchdog (QEMU's i6300esb)
//! reset the box.
//!
//! Images are taken from target/images/<board>, rebuilt first when older
//! than their inputs (ci/test.sh runs `cargo xtask image` before).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relaybox_ca::{CertificateAuthority, Subject};
use xtask::image::Image;
use xtask::qemu::{Vm, VmConfig, HOST_FROM_GUEST};

mod common;
use common::{free_tcp_port, Dispatcher, WebPage};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The box's watchdog settings (`[Watchdog]`, provisioned): short, so that
/// the reset comes soon after the relay stops for good.
const WATCHDOG_TIMEOUT: u32 = 15;
const WATCHDOG_GRACE: u32 = 6;

/// An even start with `count` free UDP ports on 127.0.0.1 (per-board
/// offsets keep the two VMs apart).
fn free_udp_range(count: u16, salt: u16) -> (u16, u16) {
    let seed = std::process::id() as u16;
    for i in 0..500u16 {
        let start = 30000 + ((seed.wrapping_mul(7).wrapping_add(i * 97 + salt * 4001)) % 9000) * 2;
        if (start..start + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (start, start + count);
        }
    }
    panic!("no free UDP port range");
}

/// Debian's chronyd on 127.0.0.1 as the box's NTP server (reached from the
/// guest at 10.0.2.2): serves the host's time, never sets the host's clock
/// (`-x`). Killed on drop.
struct NtpServer {
    child: Child,
    port: u16,
}

impl NtpServer {
    fn start(dir: &Path) -> NtpServer {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\npidfile {}\n",
                dir.join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chronyd.log")).unwrap())
            .spawn()
            .expect("chronyd (package chrony)");
        NtpServer { child, port }
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn module_request(socket: &Path, text: &str) -> String {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(stream);
    r.get_mut().write_all(text.as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

fn update(party: &str, call_id: &str, to_tag: &str, port: u16) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: 1:2\r\ncall_id: {call_id}\r\ncseq: 1 INVITE\r\nfrom_uri: sip:alice@example.com\r\n\
         to_uri: sip:bob@example.com\r\nfrom_tag: ft-{call_id}\r\nto_tag: {to_tag}\r\nuser_agent: xtask-boot-test\r\n\
         signaling_ip: {HOST_FROM_GUEST}\r\nmedia: audio:{HOST_FROM_GUEST}:{port}:sendrecv:ice=no\r\n\r\n"
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[0xd5; 160]);
    p
}

fn phone() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf).ok().map(|(n, from)| (buf[..n].to_vec(), from))
}

/// Places a call through the box and counts RTP packets each way.
fn call_through_the_box(d: &Dispatcher, call_id: &str, range: (u16, u16)) -> (u32, u32) {
    let (caller, callee) = (phone(), phone());
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let offer = module_request(&d.socket, &update("request", call_id, "", port(&caller)));
    let answer = module_request(&d.socket, &update("reply", call_id, "tt", port(&callee)));
    let parse = |reply: &str| -> (String, u16) {
        let mut it = reply.split_whitespace();
        let ip = it.next().unwrap_or_default().to_string();
        (ip, it.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {reply:?}")))
    };
    let (ip, offer_port) = parse(&offer);
    let (_, answer_port) = parse(&answer);
    assert_eq!(ip, "127.0.0.1", "advertised_ip: {offer}");
    for p in [offer_port, answer_port] {
        assert!((range.0..range.1).contains(&p), "{p} outside {range:?}");
    }
    let to_callee_side: SocketAddr = format!("127.0.0.1:{offer_port}").parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{answer_port}").parse().unwrap();
    let (mut at_callee, mut at_caller) = (0, 0);
    for seq in 0..20u16 {
        caller.send_to(&rtp(seq), to_caller_side).unwrap();
        if let Some((data, from)) = recv(&callee) {
            assert_eq!(data, rtp(seq));
            assert_eq!(from, to_callee_side, "media must come from the relay port the callee was given");
            at_callee += 1;
        }
        callee.send_to(&rtp(seq), to_callee_side).unwrap();
        if let Some((data, from)) = recv(&caller) {
            assert_eq!(data, rtp(seq));
            assert_eq!(from, to_caller_side);
            at_caller += 1;
        }
    }
    let removed = module_request(
        &d.socket,
        &format!("remove\r\ncall_id: {call_id}\r\nfrom_tag: ft-{call_id}\r\nto_tag: tt\r\n\r\n"),
    );
    assert_eq!(removed, "removed\r\n");
    (at_callee, at_caller)
}

const WEB_PASSWORD: &str = "boot-test-password";

/// The output of a one-line shell command on the console (daemons' log
/// lines may reach the console in between: the value is marked).
fn shell_value(vm: &mut Vm, command: &str) -> String {
    let out = vm.run(&format!("echo \"value=$({command})\""), Duration::from_secs(20)).unwrap();
    out.lines()
        .find_map(|l| l.trim().strip_prefix("value="))
        .unwrap_or_else(|| panic!("no value of {command:?} in {out:?}"))
        .to_string()
}

/// A file of the config partition of `disk` (extracted, then read with debugfs).
fn config_file(disk: &Path, path: &str) -> String {
    let part = xtask::provision::find_config_partition(disk).unwrap();
    let data = std::fs::read(disk).unwrap();
    let out = disk.with_extension("cfg");
    std::fs::write(&out, &data[part.offset as usize..(part.offset + part.len) as usize]).unwrap();
    xtask::disk::ext4_cat(&out, path).unwrap()
}

/// The relay's pid from its pid file (the digits-only line of the output:
/// log lines may reach the console in between).
fn relay_pid(vm: &mut Vm) -> String {
    let out = vm.run("echo pid=$(cat /run/relaybox/relay.pid)", Duration::from_secs(20)).unwrap();
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("pid="))
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no relay pid in {out:?}"))
        .to_string()
}

fn image(board: &str) -> Image {
    xtask::image::current(board).unwrap()
}

struct Report {
    board: String,
    ready_secs: f64,
    reboot_ready_secs: f64,
    caller_to_callee: u32,
    callee_to_caller: u32,
}

fn boot_scenario(board: &str, salt: u16, host_relaybox: &Path) -> Report {
    let img = image(board);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The operator's CA: a dispatcher certificate for the host, a relay one for the box.
    let mut ca =
        CertificateAuthority::create(&Subject::new("relaybox boot-test CA").with_org("Example Ltd"), 30).unwrap();
    let relay = ca
        .issue(relaybox_ca::Role::Relay, &Subject::new(format!("relay-{board}")).with_org("Example Ltd"), 30)
        .unwrap();
    let disp =
        ca.issue(relaybox_ca::Role::Dispatcher, &Subject::new("dispatcher").with_org("Example Ltd"), 30).unwrap();
    let certs = dir.join("certs");
    relaybox_ca::write_certs_dir(&ca, &certs, &relay, &disp).unwrap();
    let d = Dispatcher::start(host_relaybox, dir, &certs, "DEBUG", "relay_timeout = 3\nmodule_timeout = 3\n");
    let ntp = NtpServer::start(dir);

    // The operator's box file, provisioned onto a copy of the board's disk
    // image (`cargo xtask provision`): this box's settings, its own
    // certificates and the web password's hash only. The VM boots the
    // image's kernel directly and finds the config partition on the disk
    // (/dev/vda2) by its label.
    let range = free_udp_range(8, salt);
    let disk = dir.join("disk.img");
    std::fs::copy(&img.disk, &disk).unwrap();
    std::fs::write(
        dir.join("box.conf"),
        format!(
            "hostname = relaybox\ndispatchers = {HOST_FROM_GUEST}:{}\nntp = {HOST_FROM_GUEST}:{}\n\
             web_password = {WEB_PASSWORD}\nca = certs/ca.pem\ncrl = certs/crl.pem\nrelay_cert = certs/relay.crt\n\
             relay_key = certs/relay.key\nrelay.advertised_ip = 127.0.0.1\nrelay.port_range = {}:{}\n\
             relay.reconnect_delay = 1\nrelay.log_level = INFO\n\
             watchdog.timeout = {WATCHDOG_TIMEOUT}\nwatchdog.interval = 2\nwatchdog.grace = {WATCHDOG_GRACE}\n",
            d.link, ntp.port, range.0, range.1
        ),
    )
    .unwrap();
    let provisioned = std::time::Instant::now();
    let box_file = xtask::provision::BoxFile::load(&dir.join("box.conf")).unwrap();
    let part = xtask::provision::provision(&disk, &box_file, host_relaybox).unwrap();
    eprintln!("{board}: provisioned in {:.1} s ({} config partition)", provisioned.elapsed().as_secs_f64(), part.fs);

    let cfg_part = img.config_partition().unwrap();
    let mut vm_cfg = VmConfig::new(board, &disk);
    vm_cfg.udp_ports = (range.0..range.1).collect();
    vm_cfg.web_host_port = free_tcp_port();
    vm_cfg.lan_web_host_port = free_tcp_port();
    vm_cfg.watchdog = true;
    vm_cfg.log = Some(xtask::target_dir().join(format!("boot-test-{board}.console.log")));
    // Powered on in 2001, as a board without a real-time clock (or a flat
    // battery): the dispatcher's certificate is "not yet valid" until NTP
    // sets the time.
    vm_cfg.rtc_base = Some("2001-01-01T00:00:00".to_string());

    // 1. first boot, nobody at the console: the relay connects to the host's dispatcher.
    let mut vm = Vm::start(&vm_cfg).unwrap();
    vm.wait_for("relaybox-init: boot done", BOOT_TIMEOUT).unwrap();
    // The relay starts just before "boot done" and may connect before it is
    // printed: the dispatcher's side is the one to wait for.
    d.wait_log("relay connected", 1, Duration::from_secs(60));
    let ready_secs = vm.started.elapsed().as_secs_f64();
    let console = vm.console();
    assert!(console.contains(&format!("config partition /dev/vda{cfg_part} mounted on /config")), "{console}");
    assert!(!console.contains("first boot: writing the default relaybox.ini"), "provisioned:\n{console}");
    assert!(console.contains("web page: made a self-signed certificate for relaybox"), "{console}");
    assert!(console.contains("relaybox-init: web page certificate SHA-256 "), "fingerprint on the console:\n{console}");
    let firewall = format!(
        "relaybox-init: firewall: WAN eth0 accepts UDP {}-{},68 (DHCP), TCP none; LAN eth1 also TCP 443,80",
        range.0,
        range.1 - 1
    );
    assert!(console.contains(&firewall), "{firewall:?} not on the console:\n{console}");
    assert!(!console.contains("failed:"), "every shipped kernel module loads:\n{console}");
    assert!(console.contains("relaybox-init: clock set over NTP"), "{console}");
    vm.wait_for("watchdog: feeding every 2 s while the relay answers", Duration::from_secs(60)).unwrap();
    // The clock daemon reads system.conf itself and is the process the web
    // page's System settings restart: its pid file names `relaybox ... clock`.
    let cmdline =
        vm.run("tr '\\0' ' ' < /proc/$(cat /run/relaybox/clock.pid)/cmdline; echo", Duration::from_secs(20)).unwrap();
    assert!(
        cmdline.contains("relaybox --config /config/relaybox.ini clock --servers-from /config/system.conf"),
        "{cmdline}"
    );
    let guest_now: u64 = shell_value(&mut vm, "date +%s").parse().unwrap();
    assert!(guest_now.abs_diff(unix_now()) <= 10, "guest clock {guest_now}, host {}", unix_now());
    eprintln!("{board}: clock went from 2001 to {guest_now} over NTP (host {})", unix_now());
    assert_eq!(d.relays(), 1, "summary lists the box's relay");
    // The image's kernel forwards media: conntrack, NAT and nftables modules
    // load, and behind QEMU's NAT (advertised_ip only) each entry takes the
    // local address of the route towards its party.
    let summary: serde_json::Value = serde_json::from_str(&d.management("summary")).unwrap();
    assert_eq!(summary[0]["datapath"], "kernel", "{summary}");

    // The kernel side the relay needs, and a read-only root.
    let out = vm
        .run(
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/netfilter/nf_conntrack_acct; \
             grep -c -E '^(nf_conntrack|nf_nat|nf_tables|virtio_net) ' /proc/modules; \
             touch /rootfs-write-test 2>/dev/null && echo ROOT-RW || echo ROOT-RO",
            Duration::from_secs(30),
        )
        .unwrap();
    let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert!(lines.ends_with(&["1", "1", "4", "ROOT-RO"]), "sysctls, modules, read-only root: {out:?}");

    // The web page: from the LAN (the box's default 192.168.88.1) it answers
    // and takes the provisioned password; from the WAN it is not reachable.
    let web = WebPage { port: vm_cfg.lan_web_host_port, jar: dir.join("cookies"), password: WEB_PASSWORD };
    let csrf = web.login();
    let wan = Command::new("curl")
        .args(["-sk", "--max-time", "8", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/login", vm_cfg.web_host_port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&wan.stdout), "000", "the web page answered on the WAN");
    // The daemons log to syslog: the Logs page shows the relay's lines.
    let (status, logs) = web.request("GET", "/logs", &[]);
    assert_eq!(status, 200);
    assert!(logs.contains("relaybox-relay: ") && logs.contains("connected to dispatcher"), "{logs}");
    // 2. a call through the box's relay, RTP both ways through the host forwards.
    let (to_callee, to_caller) = call_through_the_box(&d, &format!("boot-{board}"), range);
    eprintln!("{board}: relayed {to_callee}/20 caller->callee, {to_caller}/20 callee->caller");
    assert!(to_callee >= 18 && to_caller >= 18, "{board}: {to_callee} and {to_caller} of 20 relayed");
    // The kernel forwarded all but the packets that latched each side.
    vm.wait_for("session removed", Duration::from_secs(20)).unwrap();
    let console = vm.console();
    let removed = console.lines().find(|l| l.contains("session removed")).unwrap();
    let userspace: u32 = removed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("userspace_packets="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no userspace_packets in {removed}"));
    eprintln!("{board}: userspace saw {userspace} of 40 datagrams");
    assert!(userspace <= 4, "{board}: the kernel did not take over: {removed}");

    // 3. the relay dies: the supervisor starts it again and it reconnects.
    // The supervisor's lines may reach the console before the shell's end
    // of the kill command, so they are looked for in the whole console, and
    // the dispatcher's side is the one to wait for.
    let old_pid = relay_pid(&mut vm);
    vm.run("kill -9 $(cat /run/relaybox/relay.pid)", Duration::from_secs(20)).unwrap();
    d.wait_log("relay connected", 2, Duration::from_secs(90));
    let console = vm.console();
    let exited = format!("relaybox-supervise: relaybox relay (pid {old_pid}) exited with status 137");
    assert!(console.contains(&exited), "{exited:?} not on the console:\n{console}");
    let new_pid = relay_pid(&mut vm);
    assert_ne!(new_pid, old_pid, "the relay was not restarted");
    assert!(console.contains(&format!("started relaybox relay (pid {new_pid})")), "{console}");

    // The supervisor dies: init starts it again, and it adopts the running
    // relay (the relay keeps its link and its calls) instead of starting a
    // second one; when that relay dies later, it is restarted as before.
    vm.run("kill -9 $(cat /run/relaybox/relay.supervisor)", Duration::from_secs(20)).unwrap();
    vm.wait_for(&format!("relaybox relay (pid {new_pid}) is still running: watching it"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(relay_pid(&mut vm), new_pid, "the adopted relay runs on");
    assert_eq!(d.log_text().matches("relay connected").count(), 2, "no reconnect: the relay was left alone");
    vm.run("kill -9 $(cat /run/relaybox/relay.pid)", Duration::from_secs(20)).unwrap();
    d.wait_log("relay connected", 3, Duration::from_secs(90));
    vm.wait_for(&format!("relaybox relay (pid {new_pid}) ended"), Duration::from_secs(30)).unwrap();
    assert_ne!(relay_pid(&mut vm), new_pid, "the relay was not restarted by the new supervisor");

    // 4. on the web page: a new host name (set at once) and a static WAN
    // (QEMU's user network: 10.0.2.15/24 via 10.0.2.2), then the Reboot
    // button; both hold after the reboot and the relay reaches the
    // dispatcher over the static route.
    let host = format!("edge-{}", board.replace('_', "-"));
    let ntp_servers = format!("{HOST_FROM_GUEST}:{}", ntp.port);
    let (status, body) =
        web.request("POST", "/system", &[("csrf", &csrf), ("hostname", &host), ("ntp_servers", &ntp_servers)]);
    assert_eq!(status, 303, "System page: {body}");
    assert_eq!(shell_value(&mut vm, "hostname"), host, "set at once, before the reboot");
    let static_wan = [
        ("csrf", csrf.as_str()),
        ("wan_mode", "static"),
        ("wan_address", "10.0.2.15/24"),
        ("wan_gateway", "10.0.2.2"),
        ("wan_dns", "10.0.2.3"),
        ("lan_address", "192.168.88.1/24"),
    ];
    let (status, body) = web.request("POST", "/network", &static_wan);
    assert_eq!(status, 303, "Network page: {body}");
    let (status, body) = web.request("POST", "/system/reboot", &[("csrf", &csrf)]);
    assert_eq!(status, 200, "Reboot: {body}");
    assert!(body.contains("The box is rebooting"), "{body}");
    vm.wait_exit(Duration::from_secs(90)).unwrap();
    drop(vm);
    let on_disk = config_file(&disk, "/system.conf");
    assert!(on_disk.contains(&format!("HOSTNAME=\"{host}\"")), "{on_disk}");
    let on_disk = config_file(&disk, "/network.conf");
    assert!(on_disk.contains("WAN_MODE=\"static\"") && on_disk.contains("WAN_ADDRESS=\"10.0.2.15/24\""), "{on_disk}");
    let mut vm = Vm::start(&vm_cfg).unwrap();
    vm.wait_for(&format!("relaybox-init: hostname {host}"), BOOT_TIMEOUT).unwrap();
    vm.wait_for("connected to dispatcher", Duration::from_secs(120)).unwrap();
    let reboot_ready_secs = vm.started.elapsed().as_secs_f64();
    let console = vm.console();
    assert!(!console.contains("first boot"), "second boot keeps the partition's files:\n{console}");
    assert!(console.contains("WAN eth0: 10.0.2.15/24"), "{console}");
    assert_eq!(shell_value(&mut vm, "hostname"), host);
    let net = vm
        .run("ip route show default; cat /etc/resolv.conf; pidof udhcpc || echo no-dhcp", Duration::from_secs(20))
        .unwrap();
    assert!(net.contains("default via 10.0.2.2"), "{net}");
    assert!(net.contains("nameserver 10.0.2.3") && net.contains("no-dhcp"), "static WAN, no DHCP client: {net}");
    d.wait_log("relay connected", 4, Duration::from_secs(30));
    // The last boot's log was kept on the config partition (rcK at the
    // reboot, rcS moved it to previous.log).
    let kept = shell_value(&mut vm, "grep -c 'connected to dispatcher' /config/log/previous.log");
    if kept.parse::<u32>().unwrap_or(0) == 0 {
        let listing = vm.run("ls -la /config/log; tail -5 /config/log/previous.log", Duration::from_secs(20)).unwrap();
        panic!("previous.log has no relay line ({kept:?}):\n{listing}");
    }

    // 5. the relay cannot start any more (a broken setting): once it has
    // been unhealthy for the watchdog's grace, the feeder stops and the
    // hardware watchdog resets the box (QEMU exits: -no-reboot); no clean
    // shutdown runs. The feeder counts only after it saw the relay healthy.
    // (Anywhere on this boot's console: it may come before the lines waited for above.)
    let until = Instant::now() + Duration::from_secs(60);
    while !vm.console().contains("watchdog: the relay answers") {
        assert!(Instant::now() < until, "the watchdog never saw the relay healthy:\n{}", vm.console());
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.run(
        "sed -i 's/^port_range = .*/port_range = 1:2/' /config/relaybox.ini && kill $(cat /run/relaybox/relay.pid)",
        Duration::from_secs(20),
    )
    .unwrap();
    vm.wait_for("no longer feeding /dev/watchdog", Duration::from_secs(120)).unwrap();
    let starved = Instant::now();
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let reset_secs = starved.elapsed().as_secs_f64();
    let after = vm.console();
    let after = &after[after.rfind("no longer feeding").unwrap()..];
    assert!(!after.contains("shutdown done"), "a reset, not a reboot:\n{after}");
    eprintln!("{board}: the watchdog reset the box {reset_secs:.1} s after the feeder stopped");
    Report {
        board: board.into(),
        ready_secs,
        reboot_ready_secs,
        caller_to_callee: to_callee,
        callee_to_caller: to_caller,
    }
}

#[test]
#[ignore = "boots QEMU: run by ci/test.sh"]
fn both_qemu_boards_boot_relay_media_restart_the_relay_and_keep_settings() {
    let start = Instant::now();
    // Build (or reuse) both images first: cargo must not run twice at once.
    for b in ["qemu-x86_64", "qemu-aarch64"] {
        image(b);
    }
    let host_relaybox = image("qemu-x86_64").relaybox;
    let reports: Vec<Report> = std::thread::scope(|s| {
        let hs: Vec<_> = ["qemu-x86_64", "qemu-aarch64"]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bin = host_relaybox.clone();
                s.spawn(move || boot_scenario(b, i as u16, &bin))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("boot scenario failed")).collect()
    });
    for r in &reports {
        eprintln!(
            "{}: boot to relay-connected {:.1} s (after reboot {:.1} s); RTP {}/20 and {}/20",
            r.board, r.ready_secs, r.reboot_ready_secs, r.caller_to_callee, r.callee_to_caller
        );
    }
    eprintln!("boot test: {:.0} s for both boards", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots QEMU: run by ci/test.sh"]
fn the_pc_disk_image_boots_through_uefi_and_systemd_boot() {
    let img = image("pc-x86_64-efi");
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::copy(&img.disk, &disk).unwrap();
    let cfg = VmConfig::new("pc-x86_64-efi", &disk);
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for("config partition /dev/vda2 mounted on /config", BOOT_TIMEOUT).unwrap();
    vm.wait_for("relaybox-init: boot done", Duration::from_secs(60)).unwrap();
    eprintln!("pc-x86_64-efi: UEFI -> systemd-boot -> boot done in {:.1} s", vm.started.elapsed().as_secs_f64());
}

/// What a user downloads per board, the compressed disk image, stays within
/// 16 MiB (the initramfs is xz-compressed for this: gzip put the PC image
/// at 16.4 MiB).
#[test]
#[ignore = "builds every board's image: run by ci/test.sh"]
fn every_board_image_downloads_in_at_most_16_mib() {
    let mut over = Vec::new();
    for board in ["qemu-x86_64", "qemu-aarch64", "pc-x86_64-efi", "rpi4-arm64"] {
        let size = std::fs::metadata(image(board).disk_xz).unwrap().len();
        eprintln!("{board}: disk.img.xz {:.1} MiB", size as f64 / 1048576.0);
        if size > 16 * 1024 * 1024 {
            over.push(format!("{board}: {size} bytes"));
        }
    }
    assert!(over.is_empty(), "over 16 MiB: {over:?}");
}

/// The Raspberry Pi image boots on a real Pi only with the GPU firmware on
/// its FAT boot partition (QEMU has no Pi 4 to prove it): start4.elf and
/// fixup4.dat from Debian's raspi-firmware, beside config.txt, the kernel,
/// the initramfs and the Pi 4 device tree.
#[test]
#[ignore = "builds the rpi4-arm64 image: run by ci/test.sh"]
fn the_pi_image_carries_the_gpu_firmware_and_its_boot_files() {
    let img = image("rpi4-arm64");
    // Slot a's boot partition is the second (the first holds autoboot.txt).
    let part = xtask::disk::fat_in(&img.disk, 2).unwrap().display().to_string();
    let out = Command::new("mdir").args(["-b", "-i", &part, "::"]).output().unwrap();
    assert!(out.status.success(), "mdir: {}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let files = [
        "start4.elf",
        "fixup4.dat",
        "licence.broadcom",
        "config.txt",
        "cmdline.txt",
        "vmlinuz",
        "initrd.img",
        "bcm2711-rpi-4-b.dtb",
    ];
    for f in files {
        assert!(listing.contains(&format!("::/{f}")), "{f} missing from the boot partition:\n{listing}");
    }
    let size = |f: &str| {
        let out = Command::new("mtype").args(["-i", &part, &format!("::/{f}")]).output().unwrap();
        out.stdout.len()
    };
    assert!(size("start4.elf") > 1_000_000, "start4.elf is the real firmware");
    assert!(size("fixup4.dat") > 1_000);
    let config = xtask::disk::fat_cat(&std::path::PathBuf::from(&part), "/config.txt").unwrap();
    assert!(config.contains("arm_64bit=1") && config.contains("initramfs initrd.img followkernel"), "{config}");
    // The firmware starts the watchdog for the kernel: a hang resets the board.
    assert!(config.lines().any(|l| l.starts_with("kernel_watchdog_timeout=")), "{config}");
}
