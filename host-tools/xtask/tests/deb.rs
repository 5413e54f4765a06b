//! The proxy host's Debian package, installed as an operator would: the
//! .deb built by `cargo xtask deb`, `dpkg -i` into a clean Debian bookworm
//! root (debootstrap minbase, cached under target/deb-test), then what the
//! package promises: the relaybox user and group, the proxy's user in it,
//! the conffile, man pages, completions, units that systemd accepts (one
//! enabled). Certificates are made with the packaged relaybox-ca; the units'
//! ExecStart run in the root under a minimal supervisor that applies their
//! User=, Group=, UMask=, RuntimeDirectory=, StateDirectory= and
//! LimitNOFILE= (systemd does not run here); a call goes through the module
//! socket as the proxy's user (another user is refused by the socket's
//! mode), media through the packaged relay, and `relaybox summary`,
//! `sessions` and the metrics port answer. Reinstalling and purging work.
//!
//! Root only (chroot, mounts); ci/test.sh runs it with `--ignored`. The
//! root's /proc and /dev mounts, its processes and the root itself are
//! removed when the test ends, failed or not; roots left by a killed run
//! are removed by the next one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the cached base system and the test roots live.
fn work_dir() -> PathBuf {
    xtask::target_dir().join("deb-test")
}

fn run(cmd: &mut Command) -> String {
    xtask::run(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A pristine bookworm minbase (with adduser, the package's one
/// dependency), made once: debootstrap from this machine's mirror into a
/// tarball, unpacked into a directory the tests copy.
fn base_system() -> PathBuf {
    let base = work_dir().join("bookworm-base");
    if base.join("usr/sbin/adduser").exists() {
        return base;
    }
    std::fs::create_dir_all(work_dir()).unwrap();
    let (mirror, _) = xtask::debs::mirror_and_suite();
    let tarball = work_dir().join("bookworm-minbase.tgz");
    let started = Instant::now();
    if !tarball.exists() {
        let scratch = work_dir().join(format!("make-tarball-{}", std::process::id()));
        let partial = tarball.with_extension(format!("tgz.{}", std::process::id()));
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "--include=adduser"])
            .arg(format!("--make-tarball={}", partial.display()))
            .arg("bookworm")
            .arg(&scratch)
            .arg(&mirror));
        std::fs::rename(&partial, &tarball).unwrap();
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let unpacking = work_dir().join(format!("bookworm-base.{}", std::process::id()));
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=adduser"])
        .arg(format!("--unpack-tarball={}", tarball.display()))
        .arg("bookworm")
        .arg(&unpacking)
        .arg(&mirror));
    if std::fs::rename(&unpacking, &base).is_err() {
        // Another run made it meanwhile.
        let _ = std::fs::remove_dir_all(&unpacking);
    }
    eprintln!("deb: bookworm base made in {:.0} s", started.elapsed().as_secs_f64());
    base
}

/// Whether `pid` is a running process.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Lines of /proc/mounts whose mount point is under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .map(PathBuf::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points
}

fn remove_root(dir: &Path) {
    for point in mounts_under(dir) {
        let _ = Command::new("umount").arg("--lazy").arg(&point).status();
    }
    if mounts_under(dir).is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("deb: {} still has mounts; left in place", dir.display());
    }
}

/// A clean copy of the base system, with /proc and /dev mounted, and the
/// daemons started in it; all of it undone on drop.
struct Root {
    dir: PathBuf,
    daemons: Vec<(String, Child, PathBuf)>,
}

impl Root {
    fn new() -> Root {
        // Roots of runs that were killed before they could clean up.
        if let Ok(entries) = std::fs::read_dir(work_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("root-").and_then(|p| p.parse::<u32>().ok()) {
                    if pid != std::process::id() && !alive(pid) {
                        remove_root(&e.path());
                    }
                }
            }
        }
        let base = base_system();
        let dir = work_dir().join(format!("root-{}", std::process::id()));
        remove_root(&dir);
        run(Command::new("cp").arg("-a").arg(&base).arg(&dir));
        let root = Root { dir, daemons: Vec::new() };
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.dir.join("proc")));
        run(Command::new("mount").arg("--bind").arg("/dev").arg(root.dir.join("dev")));
        root
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.join(inside.trim_start_matches('/'))
    }

    /// A command run in the root (as root), its output; panics on failure.
    fn sh(&self, script: &str) -> String {
        run(Command::new("chroot").arg(&self.dir).args(["/bin/sh", "-c", script]).env("PATH", PATH))
    }

    /// A command run in the root, with its exit status and output.
    fn try_sh(&self, script: &str) -> (bool, String) {
        let out =
            Command::new("chroot").arg(&self.dir).args(["/bin/sh", "-c", script]).env("PATH", PATH).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn id(&self, what: &str, name: &str) -> u32 {
        self.sh(&format!("getent {what} {name} | cut -d: -f3")).trim().parse().unwrap()
    }

    /// Starts `unit`'s ExecStart as its unit file says (see [`Unit`]).
    fn start(&mut self, unit: &str) -> usize {
        let text = std::fs::read_to_string(self.unit_path(unit)).unwrap();
        let u = Unit::parse(&text);
        for condition in u.all("Unit", "ConditionPathExists") {
            assert!(self.path(condition).exists(), "{unit}: ConditionPathExists={condition} does not hold");
        }
        let user = u.get("Service", "User").unwrap_or("root").to_string();
        let group = u.get("Service", "Group").unwrap_or(&user).to_string();
        for (key, parent) in [("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")] {
            if let Some(names) = u.get("Service", key) {
                let mode = u.get("Service", &format!("{key}Mode")).unwrap_or("0755");
                for name in names.split_whitespace() {
                    self.sh(&format!("install -d -o {user} -g {group} -m {mode} {parent}/{name}"));
                }
            }
        }
        let umask = u.get("Service", "UMask").unwrap_or("0022");
        // As systemd would, but at most the hard limit this test has
        // (raising it needs CAP_SYS_RESOURCE, which a container may lack).
        let nofile: u64 = u.get("Service", "LimitNOFILE").expect("LimitNOFILE").parse().unwrap();
        let nofile = nofile.min(hard_nofile());
        let exec = u.get("Service", "ExecStart").expect("ExecStart");
        let log = work_dir().join(format!("{unit}-{}.log", std::process::id()));
        let script = format!("umask {umask}; exec {exec}");
        let child = Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("chroot")
            .arg(&self.dir)
            .args(["setpriv", "--reuid", &user, "--regid", &group, "--init-groups", "--", "/bin/sh", "-c", &script])
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.daemons.push((unit.to_string(), child, log));
        self.daemons.len() - 1
    }

    fn unit_path(&self, unit: &str) -> PathBuf {
        ["lib/systemd/system", "usr/lib/systemd/system"]
            .iter()
            .map(|d| self.path(&format!("{d}/{unit}.service")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{unit}.service is not installed"))
    }

    fn log(&self, daemon: usize) -> String {
        std::fs::read_to_string(&self.daemons[daemon].2).unwrap_or_default()
    }

    fn wait_log(&mut self, daemon: usize, needle: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            if self.log(daemon).contains(needle) {
                return;
            }
            let exited = self.daemons[daemon].1.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < until,
                "{}: no {needle:?} (exit: {exited:?}):\n{}",
                self.daemons[daemon].0,
                self.log(daemon)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_daemons(&mut self) {
        for (_, child, log) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(log);
        }
        self.daemons.clear();
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (unit, _, log) in &self.daemons {
                eprintln!("--- {unit} log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
        }
        self.stop_daemons();
        remove_root(&self.dir);
    }
}

/// This process's hard RLIMIT_NOFILE.
fn hard_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A systemd unit file as `section -> key -> values` (enough for ours).
struct Unit(HashMap<(String, String), Vec<String>>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut map: HashMap<(String, String), Vec<String>> = HashMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                map.entry((section.clone(), k.trim().to_string())).or_default().push(v.trim().to_string());
            }
        }
        Unit(map)
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .get(&(section.to_string(), key.to_string()))
            .map_or(Vec::new(), |v| v.iter().map(String::as_str).collect())
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An even start with `count` free UDP ports on 127.0.0.1, below the
/// ephemeral range.
fn free_udp_range(count: u16) -> (u16, u16) {
    let seed = std::process::id() as u16;
    for i in 0..500u16 {
        let start = 21000 + (seed.wrapping_mul(13).wrapping_add(i * 131) % 5000) * 2;
        if (start..start + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (start, start + count);
        }
    }
    panic!("no free UDP port range");
}

/// One module request sent by `user` from inside the root (perl-base is
/// in every Debian system), as the proxy's workers do; returns the reply
/// line or the error.
fn module_request(root: &Root, user: &str, request: &str) -> (bool, String) {
    const CLIENT: &str = r#"use IO::Socket::UNIX;
my $s = IO::Socket::UNIX->new(Peer => "/var/run/mediaproxy/dispatcher.sock") or die "connect: $!\n";
open(my $f, "<", "/tmp/request") or die "request: $!\n";
my $request = do { local $/; <$f> };
print {$s} $request;
$/ = "\r\n";
my $line = <$s>;
defined $line or die "no answer\n";
print $line;
"#;
    std::fs::write(root.path("/tmp/module.pl"), CLIENT).unwrap();
    std::fs::write(root.path("/tmp/request"), request).unwrap();
    root.try_sh(&format!(
        "chmod 644 /tmp/request /tmp/module.pl; setpriv --reuid {user} --regid {user} --init-groups -- perl /tmp/module.pl"
    ))
}

fn update(party: &str, to_tag: &str, port: u16) -> String {
    format!(
        "update\r\ntype: {party}\r\ndialog_id: 1:2\r\ncall_id: deb-call\r\ncseq: 1 INVITE\r\nfrom_uri: sip:alice@example.com\r\nto_uri: sip:bob@example.com\r\nfrom_tag: ft\r\nto_tag: {to_tag}\r\nuser_agent: deb-test\r\nsignaling_ip: 127.0.0.1\r\nmedia: audio:127.0.0.1:{port}:sendrecv:ice=no\r\n\r\n"
    )
}

fn port_of(reply: &str) -> u16 {
    let mut words = reply.split_whitespace();
    assert_eq!(words.next(), Some("127.0.0.1"), "{reply}");
    words.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {reply:?}"))
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    text
}

/// Replaces `from` (which must be there) with `to` in a file of the root.
fn edit(root: &Root, file: &str, from: &str, to: &str) {
    let path = root.path(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
#[ignore = "root: builds the .deb, installs it in a debootstrap chroot and runs its units"]
fn debian_package_installs_and_carries_a_call() {
    let started = Instant::now();
    let deb = xtask::deb::build().unwrap_or_else(|e| panic!("{e:#}"));
    let built = started.elapsed();
    let mut root = Root::new();
    let prepared = started.elapsed();

    // The proxy is installed first: the package puts its user in the group.
    root.sh("adduser --quiet --system --group --no-create-home kamailio");
    root.sh("adduser --quiet --system --group --no-create-home someone");
    std::fs::copy(&deb, root.path("/tmp/relaybox.deb")).unwrap();
    root.sh("dpkg -i /tmp/relaybox.deb");
    // A second install (an upgrade to the same version) changes nothing.
    root.sh("dpkg -i /tmp/relaybox.deb");
    assert!(root.sh("dpkg-query -W -f '${Status}' relaybox").contains("install ok installed"));

    // The user and group, and the proxy's user in it.
    let passwd = root.sh("getent passwd relaybox");
    assert!(passwd.trim_end().ends_with(":/var/lib/relaybox:/usr/sbin/nologin"), "{passwd}");
    assert!(root.id("passwd", "relaybox") < 1000, "a system user: {passwd}");
    let members = root.sh("id -Gn kamailio");
    assert!(members.split_whitespace().any(|g| g == "relaybox"), "kamailio's groups: {members}");
    assert!(!root.sh("id -Gn someone").split_whitespace().any(|g| g == "relaybox"));
    // The conffile, readable by the daemons only, and the directories.
    let conffiles = root.sh("dpkg-query -W -f '${Conffiles}' relaybox");
    for file in ["/etc/relaybox/config.ini", "/etc/relaybox/radius/dictionary"] {
        assert!(conffiles.contains(file), "{file} not a conffile: {conffiles}");
    }
    let config = std::fs::metadata(root.path("/etc/relaybox/config.ini")).unwrap();
    assert_eq!((config.mode() & 0o777, config.gid()), (0o640, root.id("group", "relaybox")));
    let spool = std::fs::metadata(root.path("/var/spool/relaybox")).unwrap();
    assert_eq!((spool.uid(), spool.mode() & 0o777), (root.id("passwd", "relaybox"), 0o750));
    // The binaries are the static ones and run in a plain Debian system.
    assert!(root.sh("relaybox --version").starts_with("relaybox "));
    assert!(root.sh("relaybox --config /etc/relaybox/config.ini check-config").contains("socket_mode: 432"));
    // Man pages and completions.
    for page in
        ["relaybox", "relaybox-dispatcher", "relaybox-relay", "relaybox-summary", "relaybox-ca", "relaybox-ca-issue"]
    {
        let text = gunzip(&root.path(&format!("/usr/share/man/man1/{page}.1.gz")));
        assert!(text.contains(".TH") && text.contains(&page.replace('-', "\\-")), "{page}.1:\n{text}");
    }
    for (file, needle) in [
        ("/usr/share/bash-completion/completions/relaybox", "_relaybox()"),
        ("/usr/share/bash-completion/completions/relaybox-ca", "relaybox__ca"),
        ("/usr/share/zsh/vendor-completions/_relaybox", "#compdef relaybox"),
        ("/usr/share/fish/vendor_completions.d/relaybox.fish", "complete -c relaybox"),
    ] {
        let text = std::fs::read_to_string(root.path(file)).unwrap_or_default();
        assert!(text.contains(needle), "{file} lacks {needle}");
    }
    assert!(root.path("/usr/share/doc/relaybox/config.ini.sample").exists());
    assert!(root.path("/usr/share/doc/relaybox/examples/grafana-dashboard.json").exists());
    // The units: the dispatcher's enabled, the relay's not; both accepted
    // by systemd (the host's systemd-analyze, the ExecStart binary the
    // root's).
    // (The links are absolute inside the root: read, not followed.)
    let wants = root.path("/etc/systemd/system/multi-user.target.wants");
    let link = std::fs::read_link(wants.join("relaybox-dispatcher.service")).expect("dispatcher unit not enabled");
    assert!(root.path(&link.to_string_lossy()).exists(), "{link:?}");
    assert!(std::fs::read_link(wants.join("relaybox-relay.service")).is_err(), "relay unit enabled");
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let scratch = work_dir().join(format!("units-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let binary = root.path("/usr/bin/relaybox");
        for unit in ["relaybox-dispatcher", "relaybox-relay"] {
            let text = std::fs::read_to_string(root.unit_path(unit)).unwrap();
            let file = scratch.join(format!("{unit}.service"));
            std::fs::write(&file, text.replace("/usr/bin/relaybox", &binary.display().to_string())).unwrap();
            let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&file).output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            let ours: Vec<&str> = said.lines().filter(|l| l.contains(unit)).collect();
            assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify {unit}:\n{said}");
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }

    // Certificates, made with the packaged relaybox-ca as the README says.
    root.sh("set -e; cd /root
         relaybox-ca init --dir ca --cn 'Example CA' --org 'Example Ltd'
         relaybox-ca issue --dir ca --kind dispatcher --cn dispatcher --out /etc/relaybox/tls
         relaybox-ca issue --dir ca --kind relay --cn relay1 --out /etc/relaybox/tls
         relaybox-ca issue --dir ca --kind management --cn ops --out /etc/relaybox/tls
         chgrp relaybox /etc/relaybox/tls/dispatcher.key && chmod 0640 /etc/relaybox/tls/dispatcher.key");
    // Free loopback ports for this run, and a relay on the same host.
    let (relay_port, mgmt_port, metrics_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let media = free_udp_range(20);
    let config = "/etc/relaybox/config.ini";
    edit(&root, config, ";listen = 0.0.0.0:25060", &format!("listen = 127.0.0.1:{relay_port}"));
    edit(&root, config, "listen_management = 127.0.0.1:25061", &format!("listen_management = 127.0.0.1:{mgmt_port}"));
    edit(&root, config, "metrics_listen = 127.0.0.1:9461", &format!("metrics_listen = 127.0.0.1:{metrics_port}"));
    edit(
        &root,
        config,
        ";dispatchers = proxy.example.com",
        &format!(
            "dispatchers = 127.0.0.1:{relay_port}\nrelay_ip = 127.0.0.1\nport_range = {}:{}\ndatapath = userspace",
            media.0, media.1
        ),
    );

    let dispatcher = root.start("relaybox-dispatcher");
    root.wait_log(dispatcher, "dispatcher ready", Duration::from_secs(30));
    let relay = root.start("relaybox-relay");
    root.wait_log(dispatcher, "relay connected", Duration::from_secs(30));
    root.wait_log(dispatcher, "relay sessions adopted", Duration::from_secs(30));
    let daemons_up = started.elapsed();

    // The dispatcher runs as relaybox; its socket is the group's only.
    let pid = root.daemons[dispatcher].1.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = root.id("passwd", "relaybox");
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())));
    let socket = std::fs::metadata(root.path("/run/mediaproxy/dispatcher.sock")).unwrap();
    assert_eq!((socket.mode() & 0o777, socket.gid()), (0o660, root.id("group", "relaybox")));
    let (ok, refused) = module_request(&root, "someone", &update("request", "", 4000));
    assert!(!ok && refused.contains("Permission denied"), "{refused}");

    // A call: offer and answer from the proxy's user, RTP both ways.
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&caller, &callee] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let (ok, offer) = module_request(&root, "kamailio", &update("request", "", caller.local_addr().unwrap().port()));
    assert!(ok, "{offer}");
    let (ok, answer) = module_request(&root, "kamailio", &update("reply", "tt", callee.local_addr().unwrap().port()));
    assert!(ok, "{answer}");
    let to_callee_side: SocketAddr = format!("127.0.0.1:{}", port_of(&offer)).parse().unwrap();
    let to_caller_side: SocketAddr = format!("127.0.0.1:{}", port_of(&answer)).parse().unwrap();
    let mut buf = [0u8; 512];
    let rtp = |seq: u8| [&[0x80u8, 8, 0, seq][..], &[0u8; 8], &[0xd5; 160]].concat();
    let (mut at_callee, mut at_caller) = (0, 0);
    for seq in 0..10u8 {
        caller.send_to(&rtp(seq), to_caller_side).unwrap();
        if matches!(callee.recv_from(&mut buf), Ok((n, from)) if n == 172 && buf[3] == seq && from == to_callee_side) {
            at_callee += 1;
        }
        callee.send_to(&rtp(seq), to_callee_side).unwrap();
        if matches!(caller.recv_from(&mut buf), Ok((n, from)) if n == 172 && buf[3] == seq && from == to_caller_side) {
            at_caller += 1;
        }
    }
    assert!(at_callee >= 9 && at_caller >= 9, "relayed {at_callee}/10 and {at_caller}/10");

    // The packaged CLI over TLS management, with the management certificate.
    let summary = root.sh("relaybox summary --json");
    let relays: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(relays.as_array().map(Vec::len), Some(1), "{summary}");
    assert_eq!(relays[0]["session_count"], 1, "{summary}");
    assert!(root.sh("relaybox sessions").contains("deb-call"));

    let (ok, removed) =
        module_request(&root, "kamailio", "remove\r\ncall_id: deb-call\r\nfrom_tag: ft\r\nto_tag: tt\r\n\r\n");
    assert!(ok && removed.trim() == "removed", "{removed}");
    root.wait_log(dispatcher, "accounted", Duration::from_secs(10));

    let metrics = http_get(metrics_port, "/metrics");
    for line in [
        "relaybox_dispatcher_relays{state=\"active\"} 1",
        "relaybox_dispatcher_module_requests_total{kind=\"update\",result=\"ports\"} 2",
        "relaybox_dispatcher_module_requests_total{kind=\"remove\",result=\"removed\"} 1",
        "relaybox_dispatcher_sessions_accounted_total{how=\"removed\"} 1",
        "relaybox_dispatcher_calls 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}:\n{metrics}");
    }
    assert!(root.log(relay).contains("connected to dispatcher"), "{}", root.log(relay));

    // Removal: stop the daemons, purge; the conffile goes, the user stays.
    root.stop_daemons();
    root.sh("dpkg --purge relaybox");
    assert!(!root.path("/etc/relaybox/config.ini").exists());
    assert!(!root.path("/usr/bin/relaybox").exists());
    assert!(root.try_sh("getent passwd relaybox").0, "the system user stays after purge");
    eprintln!(
        "deb: {} built in {:.0} s, root ready at {:.0} s, installed and daemons up at {:.0} s, done at {:.0} s",
        deb.display(),
        built.as_secs_f64(),
        prepared.as_secs_f64(),
        daemons_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
