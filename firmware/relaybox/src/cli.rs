//! `relaybox sessions|summary|version`: query a dispatcher's management
//! interface and print tables (or the raw JSON with `--json`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use relaybox_config::Config;
use relaybox_proto::mgmt::MgmtCommand;
use relaybox_proto::{SessionStats, Summary};

const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how to reach the management interface.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Target {
    /// From the config: `listen_management` (a wildcard address means this
    /// host) and `management_use_tls`, unless overridden.
    pub fn from_config(config: &Config, addr: Option<SocketAddr>, plain: bool) -> Self {
        let mut a = addr.unwrap_or(config.dispatcher.listen_management);
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Target { addr: a, tls: config.dispatcher.management_use_tls && !plain }
    }
}

/// Sends one command and returns the reply line.
pub fn query(config: &Config, target: &Target, command: MgmtCommand) -> anyhow::Result<String> {
    let tcp = TcpStream::connect_timeout(&target.addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to the management interface at {}", target.addr))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let line = format!("{}\r\n", command.as_str());
    let reply = if target.tls {
        // The management port takes management client certificates
        // (relaybox-ca issue --kind management), and only a dispatcher's
        // certificate is accepted from it.
        let files = relaybox_tls::TlsFiles::for_role(&config.tls.certs_path, relaybox_tls::Role::Management);
        let dispatcher = relaybox_tls::PeerRole {
            role: relaybox_tls::Role::Dispatcher,
            accept_unmarked: config.tls.accept_unmarked_certificates,
        };
        let tls = if files.cert.exists() {
            relaybox_tls::client_config(&files, dispatcher).context("management TLS credentials")?
        } else if config.dispatcher.management_allow_anonymous {
            relaybox_tls::anonymous_client_config(&files, dispatcher).context("management TLS credentials")?
        } else {
            bail!(
                "{} is missing: the management port requires a management client certificate \
                 (relaybox-ca issue --kind management --out {})",
                files.cert.display(),
                config.tls.certs_path.display()
            );
        };
        let name = rustls_pki_types::ServerName::IpAddress(target.addr.ip().into());
        let conn = rustls::ClientConnection::new(Arc::clone(&tls), name)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        stream.write_all(line.as_bytes())?;
        read_line(BufReader::new(stream))?
    } else {
        let mut stream = tcp;
        stream.write_all(line.as_bytes())?;
        read_line(BufReader::new(stream))?
    };
    if reply == "error" {
        bail!("the dispatcher answered error to {}", command.as_str());
    }
    Ok(reply)
}

fn read_line<R: BufRead>(mut r: R) -> anyhow::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line).context("reading the answer")?;
    if line.is_empty() {
        bail!("the management interface closed the connection without answering");
    }
    Ok(line.trim_end().to_string())
}

fn seconds(s: u64) -> String {
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn bps(b: u64) -> String {
    match b {
        b if b >= 1_000_000 => format!("{:.1} Mbit/s", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kbit/s", b as f64 / 1e3),
        b => format!("{b} bit/s"),
    }
}

/// Left-aligned columns sized to their content.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

pub fn summary_table(list: &[Summary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let streams: Vec<String> = s.stream_count.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            vec![
                s.ip.clone(),
                format!("{:?}", s.status).to_lowercase(),
                s.version.clone(),
                seconds(s.uptime),
                s.session_count.to_string(),
                if streams.is_empty() { "-".into() } else { streams.join(",") },
                bps(s.bps_relayed),
                s.datapath.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["RELAY", "STATUS", "VERSION", "UPTIME", "SESSIONS", "STREAMS", "RELAYED", "DATAPATH"], &rows)
}

pub fn sessions_table(list: &[SessionStats]) -> String {
    let mut rows = Vec::new();
    for s in list {
        for (i, st) in s.streams.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first { s.call_id.clone() } else { String::new() },
                if first { format!("{} -> {}", s.from_uri, s.to_uri) } else { String::new() },
                if first { seconds(s.duration) } else { String::new() },
                st.media_type.clone(),
                st.status.as_str().to_string(),
                format!("{} <-> {}", st.caller_remote, st.callee_remote),
                format!("{}/{}", st.caller_codec, st.callee_codec),
                format!("{}/{}", st.caller_packets, st.callee_packets),
                format!("{}/{}", st.caller_bytes, st.callee_bytes),
            ]);
        }
        if s.streams.is_empty() {
            rows.push(vec![
                s.call_id.clone(),
                format!("{} -> {}", s.from_uri, s.to_uri),
                seconds(s.duration),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    table(
        &["CALL-ID", "PARTIES", "DURATION", "MEDIA", "STATUS", "CALLER <-> CALLEE", "CODECS", "PACKETS", "BYTES"],
        &rows,
    )
}

/// Runs one CLI command and prints its result.
pub fn run(config: &Config, target: &Target, command: MgmtCommand, json: bool) -> anyhow::Result<()> {
    let reply = query(config, target, command)?;
    let text = match (command, json) {
        (_, true) | (MgmtCommand::Version, _) | (MgmtCommand::Quit, _) => format!("{reply}\n"),
        (MgmtCommand::Summary, false) => {
            let list: Vec<Summary> = serde_json::from_str(&reply).context("reading the summary")?;
            summary_table(&list)
        }
        (MgmtCommand::Sessions, false) => sessions_table(&SessionStats::list_from_json(&reply)?),
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let t = table(&["A", "BB"], &[vec!["xxxx".into(), "y".into()], vec!["z".into(), "wwwww".into()]]);
        assert_eq!(t, "A     BB\nxxxx  y\nz     wwwww\n");
        assert_eq!(seconds(3725), "1:02:05");
        assert_eq!(bps(64_000), "64.0 kbit/s");
    }
}
