//! The bench's phases besides the max-rate search: call setup rate, memory
//! per held call, CPU per forwarded packet at a fixed rate, and the time
//! from a stream's first packet to its kernel entry. Each runs
//! `--rounds` times and reports min / median / max, and every ratio is taken
//! within a round (both sides measured minutes apart on the same machine).

use super::*;
use crate::setup::{run_generator, SetupRun};

/// `min / median / max` of some values, with `digits` decimals.
fn spread(values: &[f64], digits: usize) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    format!("{:.digits$} / {:.digits$} / {:.digits$}", v[0], median, v[v.len() - 1])
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Waits until an update through the dispatcher gets ports (the relay has
/// linked), then removes the probe call.
fn wait_linked(socket: &Path) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = UnixStream::connect(socket) {
            let mut stream = BufReader::new(s);
            stream.get_ref().set_read_timeout(Some(Duration::from_secs(5)))?;
            let line = module_request(
                &mut stream,
                &update("request", "probe", "", &format!("audio:{CALLER_IP}:{CALLER_PORT}:sendrecv:ice=no")),
            )?;
            if reply_port(&line).is_ok() {
                module_request(&mut stream, "remove\r\ncall_id: probe\r\nfrom_tag: ft\r\nto_tag: \r\n\r\n")?;
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < until, "the relay did not link to the dispatcher in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_path(path: &Path) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        anyhow::ensure!(Instant::now() < until, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sockets a process holds (UDP and others), from its descriptors.
fn socket_count(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count()
}

/// The kernel's slab memory (reclaimable and not), KiB, machine-wide.
fn slab_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The relaybox processes of a [`Setup`] made by `Relaybox::start`: the
/// dispatcher's pid and its module socket.
fn relaybox_parts(setup: &Setup) -> anyhow::Result<(u32, PathBuf)> {
    let dispatcher = setup.procs.first().context("no dispatcher")?;
    let log = &dispatcher.log;
    let name = log.file_name().and_then(|n| n.to_str()).context("log name")?;
    let n = name.trim_start_matches("dispatcher").trim_end_matches(".log");
    Ok((dispatcher.pid(), log.with_file_name(format!("dispatcher{n}.sock"))))
}

/// `[Relay]` settings that keep the relay's descriptor budget under the
/// machine's hard limit for `calls` audio calls (2 pairs each).
fn relay_caps(calls: usize) -> String {
    format!("max_sessions = {calls}\nmax_streams_per_session = 1\n")
}

// ------------------------------------------------------------------ setup

struct SetupRow {
    subject: &'static str,
    held: usize,
    conns: usize,
    runs: Vec<SetupRun>,
}

pub fn setup_phase(rig: &Rig, opts: &Options, exe: &Path, rb: &mut Relaybox) -> anyhow::Result<()> {
    let k = opts.conns;
    let secs = format!("{}", opts.setup_seconds);
    let mut rows: Vec<SetupRow> = Vec::new();
    let mut add = |subject: &'static str, held: usize, conns: usize, run: SetupRun| {
        eprintln!(
            "  {subject} held {held} conns {conns}: {:.0} cycles/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors",
            run.rate(),
            f64::from(run.p50_us) / 1000.0,
            f64::from(run.p99_us) / 1000.0,
            f64::from(run.max_us) / 1000.0,
            run.errors
        );
        match rows.iter_mut().find(|r| r.subject == subject && r.held == held && r.conns == conns) {
            Some(r) => r.runs.push(run),
            None => rows.push(SetupRow { subject, held, conns, runs: vec![run] }),
        }
    };
    let held = opts.held;
    for round in 0..opts.rounds {
        eprintln!("setup rate, round {}", round + 1);
        // The generator against servers that answer at once.
        let fake_sock = rig.dir.join(format!("fake{round}.sock"));
        let fake = Proc::spawn(
            &rig.relay,
            &[&exe.to_string_lossy(), "fake", "module", &fake_sock.to_string_lossy()],
            rig.dir.join("fake-module.log"),
            &[],
        )?;
        wait_path(&fake_sock)?;
        for conns in [1, k] {
            let out = run_generator(
                &rig.relay,
                exe,
                &["module", &fake_sock.to_string_lossy(), &conns.to_string(), &secs, &format!("f{round}")],
            )?;
            add("instant-answer module server", 0, conns, SetupRun::parse(&out)?);
        }
        drop(fake);
        let fake_ng = Proc::spawn(
            &rig.relay,
            &[&exe.to_string_lossy(), "fake", "ng", "127.0.0.1:22299"],
            rig.dir.join("fake-ng.log"),
            &[],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let out =
            run_generator(&rig.relay, exe, &["ng", "127.0.0.1:22299", &k.to_string(), &secs, &format!("g{round}")])?;
        add("instant-answer NG server", 0, k, SetupRun::parse(&out)?);
        drop(fake_ng);

        // relaybox: dispatcher + relay.
        let setup =
            rb.start_with(rig, &opts.relaybox, "userspace", 0, "40000:60000", "warn", &relay_caps(held + 2 * k + 64))?;
        let (_, socket) = relaybox_parts(&setup)?;
        wait_linked(&socket)?;
        let sock = socket.to_string_lossy().to_string();
        for (phase, held_now) in [(0, 0), (1, held)] {
            if phase == 1 {
                let out = run_generator(
                    &rig.relay,
                    exe,
                    &["module-hold", &sock, "16", &held.to_string(), &format!("h{round}")],
                )?;
                let got: usize = out.trim().strip_prefix("HELD ").and_then(|v| v.parse().ok()).unwrap_or(0);
                anyhow::ensure!(got == held, "relaybox held only {got} of {held} calls");
            }
            for conns in [1, k] {
                let tag = format!("r{round}-{phase}-{conns}");
                let out = run_generator(&rig.relay, exe, &["module", &sock, &conns.to_string(), &secs, &tag])?;
                add("relaybox (dispatcher + relay)", held_now, conns, SetupRun::parse(&out)?);
            }
        }
        drop(setup);

        // rtpengine.
        if opts.rtpengine {
            match start_rtpengine(rig, exe, 0) {
                Ok(setup) => {
                    for (phase, held_now) in [(0, 0), (1, held)] {
                        if phase == 1 {
                            let out = run_generator(
                                &rig.relay,
                                exe,
                                &["ng-hold", "127.0.0.1:22222", "16", &held.to_string(), &format!("h{round}")],
                            )?;
                            let got: usize = out.trim().strip_prefix("HELD ").and_then(|v| v.parse().ok()).unwrap_or(0);
                            anyhow::ensure!(got == held, "rtpengine held only {got} of {held} calls");
                        }
                        for conns in [1, k] {
                            let tag = format!("e{round}-{phase}-{conns}");
                            let out = run_generator(
                                &rig.relay,
                                exe,
                                &["ng", "127.0.0.1:22222", &conns.to_string(), &secs, &tag],
                            )?;
                            add("rtpengine (NG offer/answer/delete)", held_now, conns, SetupRun::parse(&out)?);
                        }
                    }
                    drop(setup);
                }
                Err(e) => eprintln!("rtpengine: cannot start: {e:#}"),
            }
        }
    }

    println!(
        "### Setup rate (closed loop, {} s per step, {} rounds; load average {})",
        opts.setup_seconds,
        opts.rounds,
        loadavg()
    );
    println!();
    println!("Per cycle: relaybox `update` (caller) + `update` (callee) + `remove` on the dispatcher's UNIX socket");
    println!("(dispatcher → TLS link → relay, which binds 4 UDP sockets per call); rtpengine NG `offer` + `answer` +");
    println!("`delete` over UDP. Latencies are per request. min / median / max over the rounds.");
    println!();
    println!("| server | calls held | connections | cycles/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let rate: Vec<f64> = r.runs.iter().map(SetupRun::rate).collect();
        let p50: Vec<f64> = r.runs.iter().map(|x| f64::from(x.p50_us) / 1000.0).collect();
        let p99: Vec<f64> = r.runs.iter().map(|x| f64::from(x.p99_us) / 1000.0).collect();
        let errors: u64 = r.runs.iter().map(|x| x.errors).sum();
        println!(
            "| {} | {} | {} | {} | {} | {} | {errors} |",
            r.subject,
            r.held,
            r.conns,
            spread(&rate, 0),
            spread(&p50, 2),
            spread(&p99, 2)
        );
    }
    println!();
    let find = |subject: &str, held: usize, conns: usize| {
        rows.iter().find(|r| r.subject.starts_with(subject) && r.held == held && r.conns == conns)
    };
    for held_now in [0, held] {
        if let (Some(a), Some(b)) = (find("relaybox", held_now, k), find("rtpengine", held_now, k)) {
            let ratios: Vec<f64> = a.runs.iter().zip(&b.runs).map(|(x, y)| x.rate() / y.rate()).collect();
            println!(
                "Ratio relaybox / rtpengine, {k} connections, {held_now} calls held: {} (min / median / max of the rounds)",
                spread(&ratios, 2)
            );
        }
    }
    if let (Some(a), Some(b)) = (find("relaybox", 0, k), find("relaybox", held, k)) {
        let ratios: Vec<f64> = a.runs.iter().zip(&b.runs).map(|(x, y)| y.rate() / x.rate()).collect();
        println!("Ratio relaybox with {held} calls held / with none, {k} connections: {}", spread(&ratios, 2));
    }
    println!();
    Ok(())
}

// ----------------------------------------------------------------- memory

/// One subject's memory at each step of one round.
struct MemoryRun {
    /// (calls held, relay RSS KiB, dispatcher RSS KiB, relay sockets, slab KiB)
    steps: Vec<(usize, u64, u64, usize, u64)>,
}

pub fn memory_phase(rig: &Rig, opts: &Options, exe: &Path, rb: &mut Relaybox) -> anyhow::Result<()> {
    let steps = opts.memory_steps.clone();
    let top = *steps.iter().max().unwrap_or(&1000);
    let subjects: Vec<&'static str> = if opts.rtpengine {
        vec!["relaybox userspace", "relaybox kernel", "rtpengine"]
    } else {
        vec!["relaybox userspace", "relaybox kernel"]
    };
    let mut runs: Vec<(&'static str, Vec<MemoryRun>)> = subjects.iter().map(|s| (*s, Vec::new())).collect();
    for round in 0..opts.rounds {
        for (subject, out) in runs.iter_mut() {
            eprintln!("memory, round {}: {subject}", round + 1);
            let (setup, dispatcher) = match *subject {
                "rtpengine" => (start_rtpengine(rig, exe, 0)?, None),
                other => {
                    let datapath = other.trim_start_matches("relaybox ");
                    let setup =
                        rb.start_with(rig, &opts.relaybox, datapath, 0, "40000:60000", "warn", &relay_caps(top + 8))?;
                    let (pid, socket) = relaybox_parts(&setup)?;
                    wait_linked(&socket)?;
                    (setup, Some((pid, socket)))
                }
            };
            let pid = setup.relay_pid.context("no relay pid")?;
            std::thread::sleep(Duration::from_millis(1500));
            let sockets0 = socket_count(pid);
            let mut run = MemoryRun { steps: Vec::new() };
            let d_rss = |d: &Option<(u32, PathBuf)>| d.as_ref().map_or(0, |(p, _)| rss_kib(*p));
            run.steps.push((0, rss_kib(pid), d_rss(&dispatcher), 0, slab_kib()));
            let mut held = 0;
            for &step in &steps {
                let more = step.saturating_sub(held);
                if more == 0 {
                    continue;
                }
                let tag = format!("m{round}-{step}");
                let out = match &dispatcher {
                    Some((_, socket)) => run_generator(
                        &rig.relay,
                        exe,
                        &["module-hold", &socket.to_string_lossy(), "16", &more.to_string(), &tag],
                    )?,
                    None => {
                        run_generator(&rig.relay, exe, &["ng-hold", "127.0.0.1:22222", "16", &more.to_string(), &tag])?
                    }
                };
                let got: usize = out.trim().strip_prefix("HELD ").and_then(|v| v.parse().ok()).unwrap_or(0);
                held += got;
                std::thread::sleep(Duration::from_millis(1500));
                let sockets = socket_count(pid).saturating_sub(sockets0);
                // Fail loudly: a step that did not hold what it says would
                // make every per-call figure wrong.
                anyhow::ensure!(
                    got == more && sockets >= 4 * held,
                    "{subject}: asked for {step} calls, {held} answered and {sockets} UDP sockets are held \
                     (4 per call expected)"
                );
                run.steps.push((held, rss_kib(pid), d_rss(&dispatcher), sockets, slab_kib()));
            }
            drop(setup);
            let _ = sh(&["ip", "netns", "exec", &rig.relay, "nft", "delete", "table", "inet", "relaybox"]);
            let _ = sh(&["ip", "netns", "exec", &rig.relay, "conntrack", "-F"]);
            out.push(run);
        }
    }

    println!("### Memory per held call ({} rounds; load average {})", opts.rounds, loadavg());
    println!();
    println!("Audio calls set up (offer + answer) and held without media; 4 UDP sockets per call, counted in the");
    println!("process's descriptors after each step. RSS = VmRSS. min / median / max over the rounds.");
    println!();
    let head: Vec<String> = steps.iter().map(|s| format!("RSS at {s} calls, MiB")).collect();
    println!(
        "| server | RSS idle, MiB | {} | KiB per call | KiB per socket | dispatcher KiB per call | slab KiB per socket (machine-wide) | projected RSS, 20 000 sockets, MiB |",
        head.join(" | ")
    );
    println!("|---|---|{}---|---|---|---|---|", "---|".repeat(steps.len()));
    for (subject, rs) in &runs {
        let idle: Vec<f64> = rs.iter().map(|r| r.steps[0].1 as f64 / 1024.0).collect();
        let at: Vec<String> = (1..=steps.len())
            .map(|i| {
                spread(&rs.iter().filter_map(|r| r.steps.get(i)).map(|s| s.1 as f64 / 1024.0).collect::<Vec<_>>(), 1)
            })
            .collect();
        let per_call: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let (first, last) = (r.steps.first()?, r.steps.last()?);
                (last.0 > 0).then(|| (last.1 as f64 - first.1 as f64) / last.0 as f64)
            })
            .collect();
        let per_socket: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let (first, last) = (r.steps.first()?, r.steps.last()?);
                (last.3 > 0).then(|| (last.1 as f64 - first.1 as f64) / last.3 as f64)
            })
            .collect();
        let dispatcher: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let (first, last) = (r.steps.first()?, r.steps.last()?);
                (last.0 > 0 && last.2 > 0).then(|| (last.2 as f64 - first.2 as f64) / last.0 as f64)
            })
            .collect();
        let slab: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                let (first, last) = (r.steps.first()?, r.steps.last()?);
                (last.3 > 0).then(|| (last.4 as f64 - first.4 as f64) / last.3 as f64)
            })
            .collect();
        let projected: Vec<f64> =
            rs.iter().zip(&per_socket).map(|(r, s)| (r.steps[0].1 as f64 + s * 20_000.0) / 1024.0).collect();
        println!(
            "| {subject} | {} | {} | {} | {} | {} | {} | {} |",
            spread(&idle, 1),
            at.join(" | "),
            spread(&per_call, 2),
            spread(&per_socket, 2),
            if dispatcher.is_empty() { "–".into() } else { spread(&dispatcher, 2) },
            spread(&slab, 2),
            spread(&projected, 1)
        );
    }
    println!();
    Ok(())
}

// -------------------------------------------------------------------- cpu

struct CpuRun {
    /// Machine-wide µs of CPU per forwarded packet, idle baseline removed.
    machine_us: f64,
    /// The relay process's µs per forwarded packet.
    process_us: Option<f64>,
    loss: f64,
}

pub fn cpu_phase(rig: &Rig, opts: &Options, exe: &Path, rb: &mut Relaybox) -> anyhow::Result<()> {
    let pps = opts.cpu_rate;
    let subjects = [Subject::Nft, Subject::Kernel, Subject::Userspace, Subject::Rtpengine];
    let mut runs: Vec<(Subject, Vec<CpuRun>)> = subjects.iter().map(|s| (*s, Vec::new())).collect();
    let mut latencies: Vec<Vec<f64>> = Vec::new();
    let mut ct_latencies: Vec<Vec<f64>> = Vec::new();
    let mut userspace_packets: Vec<Vec<f64>> = Vec::new();
    for round in 0..opts.rounds {
        for (subject, out) in runs.iter_mut() {
            let subject = *subject;
            if subject == Subject::Rtpengine && !opts.rtpengine {
                continue;
            }
            eprintln!("CPU per packet, round {}: {}", round + 1, subject.label());
            let setup = match subject {
                Subject::Nft => start_nft(rig, opts.streams)?,
                Subject::Kernel => rb.start(rig, &opts.relaybox, "kernel", opts.streams, "40000:60000", "debug")?,
                Subject::Userspace => {
                    rb.start(rig, &opts.relaybox, "userspace", opts.streams, "40000:60000", "warn")?
                }
                Subject::Rtpengine => start_rtpengine(rig, exe, opts.streams)?,
            };
            // What the machine does without our traffic, over as long a window.
            let (busy0, total0) = system_cpu();
            std::thread::sleep(Duration::from_secs_f64(opts.seconds as f64 - 0.4));
            let (busy1, total1) = system_cpu();
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
            let idle_cores = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cpus;
            let watch = (subject == Subject::Kernel).then(|| ConntrackWatch::start(&rig.relay)).transpose()?;
            let l = load(rig, exe, &setup, pps, opts.seconds)?;
            let forwarded_per_s = (pps * 2) as f64 * (1.0 - l.loss());
            let machine_us = (l.busy_cores - idle_cores).max(0.0) * 1e6 / forwarded_per_s.max(1.0);
            let process_us = l.relay_cores.map(|c| c * 1e6 / forwarded_per_s.max(1.0));
            eprintln!(
                "  loss {:.3}%, machine {:.2} cores ({:.2} idle), {machine_us:.2} µs/packet, process {:?} µs/packet",
                l.loss() * 100.0,
                l.busy_cores,
                idle_cores,
                process_us
            );
            if subject == Subject::Kernel {
                if let Some(log) = &setup.relay_log {
                    latencies.push(flow_latencies(&std::fs::read_to_string(log).unwrap_or_default(), &setup, &l.first));
                }
                if let Some(watch) = watch {
                    ct_latencies.push(watch.latencies(&setup, &l.first));
                }
                userspace_packets.push(packets_before_kernel(&rig.relay, &setup, &l));
            }
            out.push(CpuRun { machine_us, process_us, loss: l.loss() });
            if subject == Subject::Nft {
                let _ = sh(&["ip", "netns", "exec", &rig.relay, "nft", "delete", "table", "ip", "rbbench"]);
            }
            drop(setup);
            let _ = sh(&["ip", "netns", "exec", &rig.relay, "nft", "delete", "table", "inet", "relaybox"]);
            let _ = sh(&["ip", "netns", "exec", &rig.relay, "conntrack", "-F"]);
        }
    }
    println!(
        "### CPU per forwarded packet at {} packets/s ({} streams, {} s, {} rounds; load average {})",
        pps * 2,
        opts.streams,
        opts.seconds,
        opts.rounds,
        loadavg()
    );
    println!();
    println!("Machine-wide busy time (user + system + irq + softirq, all CPUs, generator included) during the load,");
    println!("minus the same window just before it with the rig idle, ÷ packets forwarded. min / median / max.");
    println!();
    println!("| datapath | µs per packet, machine | µs per packet, relay process | loss % |");
    println!("|---|---|---|---|");
    for (subject, rs) in &runs {
        if rs.is_empty() {
            continue;
        }
        let machine: Vec<f64> = rs.iter().map(|r| r.machine_us).collect();
        let process: Vec<f64> = rs.iter().filter_map(|r| r.process_us).collect();
        let loss: Vec<f64> = rs.iter().map(|r| r.loss * 100.0).collect();
        let process = if process.is_empty() { "–".to_string() } else { spread(&process, 2) };
        println!("| {} | {} | {process} | {} |", subject.label(), spread(&machine, 2), spread(&loss, 3));
    }
    println!();
    let get = |s: Subject| runs.iter().find(|(x, _)| *x == s).map(|(_, r)| r);
    let ratio = |a: Subject, b: Subject, process: bool| -> Option<String> {
        let (a, b) = (get(a)?, get(b)?);
        let v: Vec<f64> =
            a.iter()
                .zip(b)
                .filter_map(|(x, y)| {
                    if process {
                        Some(x.process_us? / y.process_us?)
                    } else {
                        Some(x.machine_us / y.machine_us)
                    }
                })
                .collect();
        (!v.is_empty()).then(|| spread(&v, 2))
    };
    if let Some(r) = ratio(Subject::Kernel, Subject::Nft, false) {
        println!("Ratio relaybox kernel / static nftables NAT (machine): {r}");
    }
    if let Some(r) = ratio(Subject::Userspace, Subject::Rtpengine, false) {
        println!("Ratio relaybox userspace / rtpengine (machine): {r}");
    }
    if let Some(r) = ratio(Subject::Userspace, Subject::Rtpengine, true) {
        println!("Ratio relaybox userspace / rtpengine (relay process): {r}");
    }
    println!();
    let pct = |v: &Vec<f64>, p: f64| percentile(v, p);
    let fmt = |all: &[Vec<f64>], what: &str| {
        let p50: Vec<f64> = all.iter().map(|v| pct(v, 0.5)).collect();
        let p99: Vec<f64> = all.iter().map(|v| pct(v, 0.99)).collect();
        let max: Vec<f64> = all.iter().map(|v| v.last().copied().unwrap_or(f64::NAN)).collect();
        let n: Vec<f64> = all.iter().map(|v| v.len() as f64).collect();
        println!(
            "First packet → kernel entry, {what} ({} of {} streams): p50 {} ms, p99 {} ms, max {} ms",
            spread(&n, 0),
            opts.streams,
            spread(&p50, 2),
            spread(&p99, 2),
            spread(&max, 2)
        );
    };
    if !latencies.is_empty() {
        fmt(&latencies, "relay's log (entry created)");
    }
    if !ct_latencies.is_empty() {
        fmt(&ct_latencies, "as the kernel saw it (`conntrack -E` NEW event of the marked entry)");
    }
    if !userspace_packets.is_empty() {
        let p50: Vec<f64> = userspace_packets.iter().map(|v| pct(v, 0.5)).collect();
        let p99: Vec<f64> = userspace_packets.iter().map(|v| pct(v, 0.99)).collect();
        let max: Vec<f64> = userspace_packets.iter().map(|v| v.last().copied().unwrap_or(f64::NAN)).collect();
        println!(
            "Packets per stream and direction forwarded in userspace before the kernel entry took over (sent − the \
             entry's counter): p50 {}, p99 {}, max {}",
            spread(&p50, 0),
            spread(&p99, 0),
            spread(&max, 0)
        );
    }
    println!();
    Ok(())
}

/// `conntrack -E` in the relay namespace for the NEW events of relaybox's
/// entries, with the kernel's timestamps.
struct ConntrackWatch {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ConntrackWatch {
    fn start(ns: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "conntrack", "-E", "-e", "NEW", "-o", "timestamp", "--mark", RELAYBOX_MARK])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("conntrack -E")?;
        let mut stdout = child.stdout.take().context("conntrack stdout")?;
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        Ok(ConntrackWatch { child, out })
    }

    /// Per stream, from its first packet to the kernel's NEW event of its
    /// RTP entry, ms, sorted.
    fn latencies(mut self, setup: &Setup, first: &[u64]) -> Vec<f64> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = self.out.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let by_port: HashMap<u16, usize> = setup.ports.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                // `[1701234567.123456]	    [NEW] udp ... dport=40000 ...`
                let ts = l.trim_start().strip_prefix('[')?.split(']').next()?;
                let (s, us) = ts.split_once('.')?;
                let at = s.parse::<u64>().ok()? * 1_000_000 + format!("{us:0<6}")[..6].parse::<u64>().ok()?;
                let port = l.split("dport=").nth(1)?.split_whitespace().next()?.parse::<u16>().ok()?;
                let i = *by_port.get(&port)?;
                let started = *first.get(i)?;
                seen.insert(i).then(|| at.saturating_sub(started) as f64 / 1000.0)
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
}

/// Per stream and direction: packets a phone sent minus what the stream's
/// kernel entry counted, i.e. what userspace forwarded (or dropped) before
/// the entry took over; sorted.
fn packets_before_kernel(ns: &str, setup: &Setup, l: &Load) -> Vec<f64> {
    let Ok(list) = sh(&["ip", "netns", "exec", ns, "conntrack", "-L", "-m", RELAYBOX_MARK]) else { return Vec::new() };
    let index: HashMap<u16, usize> = setup.ports.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
    let mut out = Vec::new();
    for line in list.lines().filter(|l| l.starts_with("udp")) {
        let field = |name: &str, nth: usize| -> Option<u64> {
            line.split(&format!("{name}=")).nth(nth)?.split_whitespace().next()?.parse().ok()
        };
        let (Some(dport), Some(orig), Some(reply)) = (field("dport", 1), field("packets", 1), field("packets", 2))
        else {
            continue;
        };
        let Some(&i) = index.get(&(dport as u16)) else { continue };
        if let (Some(a), Some(b)) = (l.caller_sent.get(i), l.callee_sent.get(i)) {
            out.push(a.saturating_sub(orig) as f64);
            out.push(b.saturating_sub(reply) as f64);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}
