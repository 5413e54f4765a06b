//! Reading the radiusclient-ng style `client.conf` the proxy uses, the way
//! MediaProxy did: `acctserver host[:port]` (port 1813 when none), the secret
//! for that host from the `servers` file, `radius_timeout`,
//! `radius_retries`, `bindaddr`; and the attribute numbers of our SIP
//! attributes from the dictionaries.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::packet::SipAttributes;

/// The accounting port when `acctserver` names none.
pub const DEFAULT_ACCT_PORT: u16 = 1813;
/// radiusclient-ng's defaults.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_RETRIES: u32 = 3;

/// A problem in one of the RADIUS configuration files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn at(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), line, message: message.into() }
    }
}

/// What relaybox takes from `client.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConf {
    pub host: String,
    pub port: u16,
    pub secret: String,
    pub timeout: Duration,
    /// `radius_retries`: sends per record, as MediaProxy (pyrad) used it.
    pub retries: u32,
    /// The main dictionary (`dictionary`), when set.
    pub dictionary: Option<PathBuf>,
    /// `bindaddr`, unless `*`.
    pub bind: Option<IpAddr>,
}

/// Meaningful lines of a config-ish file: (line number, text), without
/// blank lines and `#` comments.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::at(path, None, format!("cannot read the {what}: {e}")))
}

fn relative_to(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl ClientConf {
    /// Reads `path` and the `servers` file it names (relative paths are
    /// taken from `path`'s directory).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path, "RADIUS client configuration")?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut acct: Option<(usize, String, u16, Option<String>)> = None;
        let mut servers: Option<(usize, PathBuf)> = None;
        let mut timeout = Duration::from_secs(DEFAULT_TIMEOUT_SECS);
        let mut retries = DEFAULT_RETRIES;
        let mut dictionary = None;
        let mut bind = None;
        for (n, line) in lines(text) {
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            let need = |v: &str| {
                if v.is_empty() {
                    Err(ConfigError::at(path, Some(n), format!("{key} has no value")))
                } else {
                    Ok(())
                }
            };
            match key {
                "acctserver" => {
                    need(value)?;
                    let (host, port, secret) = parse_server(value).map_err(|m| ConfigError::at(path, Some(n), m))?;
                    acct = Some((n, host, port, secret));
                }
                "servers" => {
                    need(value)?;
                    servers = Some((n, relative_to(path, value)));
                }
                "dictionary" => {
                    need(value)?;
                    dictionary = Some(relative_to(path, value));
                }
                "radius_timeout" => {
                    timeout = match value.parse::<u64>() {
                        Ok(s) if s > 0 => Duration::from_secs(s),
                        _ => {
                            return Err(ConfigError::at(
                                path,
                                Some(n),
                                format!("radius_timeout: expected whole seconds (1 or more), got {value:?}"),
                            ))
                        }
                    }
                }
                "radius_retries" => {
                    retries = value.parse().map_err(|_| {
                        ConfigError::at(
                            path,
                            Some(n),
                            format!("radius_retries: expected a whole number, got {value:?}"),
                        )
                    })?
                }
                "bindaddr" => {
                    need(value)?;
                    bind = if value == "*" {
                        None
                    } else {
                        Some(value.parse().map_err(|_| {
                            ConfigError::at(
                                path,
                                Some(n),
                                format!("bindaddr: expected an IP address or *, got {value:?}"),
                            )
                        })?)
                    }
                }
                // authserver, login_tries, seqfile, ...: not ours.
                _ => {}
            }
        }
        let Some((_, host, port, inline_secret)) = acct else {
            return Err(ConfigError::at(path, None, "no acctserver line: which RADIUS server gets the accounting?"));
        };
        let secret = match inline_secret {
            Some(s) => s,
            None => {
                let Some((_, servers)) = servers else {
                    return Err(ConfigError::at(
                        path,
                        None,
                        "no servers line: the file with the shared secret of each server is needed",
                    ));
                };
                secret_for(&servers, &host)?
            }
        };
        Ok(ClientConf { host, port, secret, timeout, retries, dictionary, bind })
    }
}

/// `host`, `host:port`, `[v6]:port`, `host:port:secret` (radcli); of a
/// comma separated list, the first.
fn parse_server(value: &str) -> Result<(String, u16, Option<String>), String> {
    let first = value.split(',').next().unwrap_or("").trim();
    let (host, rest) = if let Some(v6) = first.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or_else(|| format!("acctserver {first:?}: missing ]"))?;
        (h, rest.strip_prefix(':'))
    } else if first.parse::<std::net::Ipv6Addr>().is_ok() {
        (first, None) // a bare IPv6 address
    } else {
        match first.split_once(':') {
            Some((h, rest)) => (h, Some(rest)),
            None => (first, None),
        }
    };
    if host.is_empty() {
        return Err(format!("acctserver {first:?}: no host"));
    }
    let (port, secret) = match rest {
        None => (DEFAULT_ACCT_PORT, None),
        Some(rest) => {
            let (port, secret) = match rest.split_once(':') {
                Some((p, s)) => (p, Some(s.to_string())),
                None => (rest, None),
            };
            let port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("acctserver {first:?}: the port must be a number from 1 to 65535")),
            };
            (port, secret.filter(|s| !s.is_empty()))
        }
    };
    Ok((host.to_string(), port, secret))
}

/// The secret of `host` in a radiusclient `servers` file (`host secret`).
fn secret_for(servers: &Path, host: &str) -> Result<String, ConfigError> {
    let text = read(servers, "RADIUS servers file")?;
    let mut found = None;
    for (n, line) in lines(&text) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(secret)) = (words.next(), words.next()) else {
            return Err(ConfigError::at(servers, Some(n), "expected \"host secret\""));
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.eq_ignore_ascii_case(host) && found.is_none() {
            found = Some(secret.to_string());
        }
    }
    found.ok_or_else(|| {
        ConfigError::at(servers, None, format!("no secret for the acctserver {host:?} (a line \"{host} <secret>\")"))
    })
}

/// Reads the numbers of our SIP attributes from a dictionary file (FreeRADIUS
/// or radiusclient syntax), following `$INCLUDE`. Attributes the files do
/// not define keep their number in `sip`.
pub fn read_dictionary(path: &Path, sip: &mut SipAttributes) -> Result<(), ConfigError> {
    read_dictionary_at(path, sip, 0)
}

fn read_dictionary_at(path: &Path, sip: &mut SipAttributes, depth: usize) -> Result<(), ConfigError> {
    if depth > 8 {
        return Err(ConfigError::at(path, None, "$INCLUDE nested too deep (a loop?)"));
    }
    let text = read(path, "RADIUS dictionary")?;
    let mut in_vendor = false;
    for (n, line) in lines(&text) {
        let line = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["$INCLUDE" | "$INCLUDE-", file, ..] => read_dictionary_at(&relative_to(path, file), sip, depth + 1)?,
            ["BEGIN-VENDOR", ..] => in_vendor = true,
            ["END-VENDOR", ..] => in_vendor = false,
            ["ATTRIBUTE", name, number, kind, ..] if !in_vendor => {
                let Some((_, slot)) = sip.slots().into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
                    continue;
                };
                let number: u8 = match number.parse() {
                    Ok(v) if v > 0 => v,
                    _ => {
                        return Err(ConfigError::at(
                            path,
                            Some(n),
                            format!("{name}: relaybox sends it as a standard attribute, so its number must be 1 to 255, not {number}"),
                        ))
                    }
                };
                if !matches!(kind.to_ascii_lowercase().as_str(), "string" | "text" | "octets") {
                    return Err(ConfigError::at(
                        path,
                        Some(n),
                        format!("{name}: relaybox sends text, the type must be string, not {kind}"),
                    ));
                }
                *slot = number;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(client: &str, servers: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("servers"), servers).unwrap();
        let conf = dir.path().join("client.conf");
        std::fs::write(&conf, client).unwrap();
        (dir, conf)
    }

    #[test]
    fn reads_a_radiusclient_ng_client_conf() {
        let (dir, conf) = setup(
            "# radiusclient-ng\nauth_order radius\nauthserver localhost\nacctserver radius.example.net:1646\n\
             servers servers\ndictionary /etc/radiusclient-ng/dictionary\nradius_timeout 2\nradius_retries 5\nbindaddr *\n",
            "# host secret\nlocalhost  abc\nradius.example.net\tv3ry-s3cret\n",
        );
        let c = ClientConf::load(&conf).unwrap();
        assert_eq!(
            c,
            ClientConf {
                host: "radius.example.net".into(),
                port: 1646,
                secret: "v3ry-s3cret".into(),
                timeout: Duration::from_secs(2),
                retries: 5,
                dictionary: Some(PathBuf::from("/etc/radiusclient-ng/dictionary")),
                bind: None,
            }
        );
        let _ = dir;
    }

    #[test]
    fn defaults_and_server_forms() {
        let (_dir, conf) = setup("acctserver 127.0.0.1\nservers servers\nbindaddr 127.0.0.1\n", "127.0.0.1 k\n");
        let c = ClientConf::load(&conf).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.secret.as_str()), ("127.0.0.1", 1813, "k"));
        assert_eq!((c.timeout, c.retries), (Duration::from_secs(10), 3));
        assert_eq!(c.bind, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_server("[::1]:1700").unwrap(), ("::1".into(), 1700, None));
        assert_eq!(parse_server("::1").unwrap(), ("::1".into(), 1813, None));
        assert_eq!(parse_server("a:1813:s3c, b").unwrap(), ("a".into(), 1813, Some("s3c".into())));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "acctserver host:x\n",
                "",
                "client.conf:1: acctserver \"host:x\": the port must be a number from 1 to 65535",
            ),
            ("\nacctserver\n", "", "client.conf:2: acctserver has no value"),
            (
                "acctserver h\nradius_timeout soon\n",
                "",
                "client.conf:2: radius_timeout: expected whole seconds (1 or more), got \"soon\"",
            ),
            (
                "acctserver h\nradius_retries -1\n",
                "",
                "client.conf:2: radius_retries: expected a whole number, got \"-1\"",
            ),
            ("servers servers\n", "", "client.conf: no acctserver line: which RADIUS server gets the accounting?"),
            (
                "acctserver h\n",
                "",
                "client.conf: no servers line: the file with the shared secret of each server is needed",
            ),
            ("acctserver h\nservers servers\n", "# x\nlonely\n", "servers:2: expected \"host secret\""),
            (
                "acctserver h\nservers servers\n",
                "other k\n",
                "servers: no secret for the acctserver \"h\" (a line \"h <secret>\")",
            ),
        ];
        for (client, servers, want) in cases {
            let (dir, conf) = setup(client, servers);
            let err = ClientConf::load(&conf).unwrap_err().to_string();
            let err = err.replace(&format!("{}/", dir.path().display()), "");
            assert_eq!(err, want, "for {client:?}");
        }
        let (dir, conf) = setup("acctserver h\nservers missing\n", "");
        let err = ClientConf::load(&conf).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read the RADIUS servers file", dir.path().join("missing").display())),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_dictionary_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("radius/dictionary");
        let mut sip = SipAttributes {
            sip_from_tag: 1,
            sip_to_tag: 1,
            sip_user_agents: 1,
            sip_applications: 1,
            media_codecs: 1,
            media_info: 1,
        };
        read_dictionary(&path, &mut sip).unwrap();
        assert_eq!(sip, SipAttributes::default());
    }

    #[test]
    fn dictionaries_are_followed_through_includes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main"),
            "$INCLUDE sub\nVENDOR X 9\nBEGIN-VENDOR X\nATTRIBUTE Media-Info 9 string\nEND-VENDOR X\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sub"), "ATTRIBUTE\tMedia-Codecs\t200\tstring # ours\n").unwrap();
        let mut sip = SipAttributes::default();
        read_dictionary(&dir.path().join("main"), &mut sip).unwrap();
        assert_eq!(sip, SipAttributes { media_codecs: 200, ..SipAttributes::default() });
        std::fs::write(dir.path().join("sub"), "\nATTRIBUTE Media-Codecs 300 string\n").unwrap();
        let err = read_dictionary(&dir.path().join("main"), &mut sip).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.file.ends_with("sub"));
    }
}
