//! Reading and rewriting the `[Relay]` options of `config.ini` as text, so
//! that everything else in the file (other sections, comments, order) stays
//! as the operator wrote it. Which values are valid is decided only by
//! `relaybox_config`, on the would-be file text.

use std::collections::HashMap;

fn header(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(name, _)| name.trim())
}

fn is_comment(t: &str) -> bool {
    t.starts_with(';') || t.starts_with('#')
}

fn option_name(line: &str) -> Option<String> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let t = line.trim();
    if t.is_empty() || is_comment(t) {
        return None;
    }
    let at = t.find(['=', ':'])?;
    Some(t[..at].trim().to_ascii_lowercase())
}

fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// The options of `[section]` as written (continuation lines joined by a
/// blank, one pair of quotes removed), by lower-case name.
pub fn section_values(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = header(line) {
            inside = name == section;
            current = None;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(name) = option_name(line) {
            let t = line.trim();
            let value = t[t.find(['=', ':']).map_or(t.len(), |i| i + 1)..].trim();
            out.insert(name.clone(), unquote(value).to_string());
            current = Some(name);
        } else if line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            if let Some(name) = &current {
                let v = out.entry(name.clone()).or_default();
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if !line.trim().is_empty() && !is_comment(line.trim()) {
            current = None;
        }
    }
    out
}

/// `text` with the given options of `[section]` set (`Some`) or removed
/// (`None`). Options not in the file are added after the section's last
/// option; a missing section is added at the top.
pub fn set_options(text: &str, section: &str, options: &[(&str, Option<String>)]) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let wanted = |name: &str| options.iter().find(|(n, _)| *n == name);
    let mut out: Vec<String> = Vec::new();
    let mut written: Vec<&str> = Vec::new();
    let mut inside = false;
    let mut skipping = false;
    let mut insert_at: Option<usize> = None;
    for line in &lines {
        if let Some(name) = header(line) {
            inside = name == section;
            skipping = false;
            out.push(line.to_string());
            if inside && insert_at.is_none() {
                insert_at = Some(out.len());
            }
            continue;
        }
        if inside {
            if skipping && line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
                continue; // continuation of a replaced option
            }
            skipping = false;
            if let Some(name) = option_name(line) {
                if let Some((n, value)) = wanted(&name) {
                    skipping = true;
                    if !written.contains(n) {
                        written.push(n);
                        if let Some(v) = value {
                            out.push(format!("{n} = {v}"));
                            insert_at = Some(out.len());
                        }
                    }
                    continue;
                }
                out.push(line.to_string());
                insert_at = Some(out.len());
                continue;
            }
        }
        out.push(line.to_string());
    }
    let missing: Vec<String> = options
        .iter()
        .filter(|(n, v)| v.is_some() && !written.contains(n))
        .map(|(n, v)| format!("{n} = {}", v.as_deref().unwrap_or_default()))
        .collect();
    match insert_at {
        Some(at) => {
            for (i, line) in missing.into_iter().enumerate() {
                out.insert(at + i, line);
            }
        }
        None if !missing.is_empty() => {
            let mut head = vec![format!("[{section}]")];
            head.extend(missing);
            head.push(String::new());
            head.extend(out);
            out = head;
        }
        None => {}
    }
    let mut result = out.join("\n");
    result.push('\n');
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "; top\n[Relay]\n; ports\nport_range = 40000:40100\ndispatchers = a.example\n  b.example\nlog_level: INFO\n\n[TLS]\ncerts_path = tls\nport_range = keep\n";

    #[test]
    fn reads_values() {
        let v = section_values(TEXT, "Relay");
        assert_eq!(v["port_range"], "40000:40100");
        assert_eq!(v["dispatchers"], "a.example b.example");
        assert_eq!(v["log_level"], "INFO");
        assert_eq!(section_values(TEXT, "TLS")["port_range"], "keep");
    }

    #[test]
    fn replaces_removes_and_adds_keeping_the_rest() {
        let new = set_options(
            TEXT,
            "Relay",
            &[
                ("port_range", Some("50000:50100".into())),
                ("dispatchers", None),
                ("relay_ip", Some("192.0.2.1".into())),
            ],
        );
        assert_eq!(
            new,
            "; top\n[Relay]\n; ports\nport_range = 50000:50100\nlog_level: INFO\nrelay_ip = 192.0.2.1\n\n[TLS]\ncerts_path = tls\nport_range = keep\n"
        );
        let fresh = set_options("[TLS]\ncerts_path = x\n", "Relay", &[("relay_ip", Some("192.0.2.1".into()))]);
        assert_eq!(fresh, "[Relay]\nrelay_ip = 192.0.2.1\n\n[TLS]\ncerts_path = x\n");
    }
}
