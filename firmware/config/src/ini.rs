//! The INI layer: turns text into sections of `name = value` entries with
//! their line numbers, following the dialect MediaProxy reads (Python's
//! `configparser`):
//!
//! - `[Section]` headers; section names are case-sensitive;
//! - `name = value` or `name: value`, split at the first `=` or `:`; option
//!   names are case-insensitive (stored lower-case);
//! - whole-line comments starting with `;` or `#` (after optional blanks);
//!   a `;` or `#` later in a line is part of the value, as in MediaProxy;
//! - an indented line right after an option continues its value (joined
//!   with a newline);
//! - values are trimmed; one pair of matching quotes around a whole value is
//!   removed (MediaProxy's own sample writes `socket_path = '/var/run/...'`).
//!
//! Knows nothing about which sections or options exist.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Lower-cased option name.
    pub name: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// A structural error: the line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub section: Option<String>,
    pub reason: String,
}

fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with(';') || trimmed.starts_with('#')
}

fn unquote(value: &str) -> &str {
    let b = value.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

/// Linear in the size of the text (section names are looked up in a map).
pub(crate) fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<Section> = Vec::new();
    // Section name -> the line of its header, to refuse a second one.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    // Whether the last non-blank, non-comment line was an option, so that an
    // indented line continues it.
    let mut open_entry = false;

    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || is_comment(trimmed) {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if indented && open_entry {
            let entry = sections.last_mut().and_then(|s| s.entries.last_mut()).expect("open entry exists");
            if entry.value.is_empty() {
                entry.value = trimmed.to_string();
            } else {
                entry.value.push('\n');
                entry.value.push_str(trimmed);
            }
            continue;
        }
        open_entry = false;
        let current = || sections.last().map(|s| s.name.clone());

        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(SyntaxError {
                    line,
                    section: current(),
                    reason: "section header has no closing `]`".into(),
                });
            };
            let name = rest[..close].trim();
            let after = rest[close + 1..].trim();
            if !after.is_empty() && !is_comment(after) {
                return Err(SyntaxError {
                    line,
                    section: current(),
                    reason: format!("unexpected text {after:?} after section header"),
                });
            }
            if name.is_empty() {
                return Err(SyntaxError { line, section: current(), reason: "empty section name `[]`".into() });
            }
            if let Some(first) = seen.insert(name, line) {
                return Err(SyntaxError {
                    line,
                    section: None,
                    reason: format!("section [{name}] appears twice (first at line {first})"),
                });
            }
            sections.push(Section { name: name.to_string(), line, entries: Vec::new() });
            continue;
        }

        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(SyntaxError {
                line,
                section: current(),
                reason: format!("expected `name = value` or a `[Section]` header, got {trimmed:?}"),
            });
        };
        let name = trimmed[..split].trim();
        let value = unquote(trimmed[split + 1..].trim());
        if name.is_empty() {
            return Err(SyntaxError { line, section: current(), reason: "option name missing before `=`".into() });
        }
        let Some(section) = sections.last_mut() else {
            return Err(SyntaxError {
                line,
                section: None,
                reason: format!("option `{name}` is outside any section; put it under a header such as [Relay]"),
            });
        };
        section.entries.push(Entry { name: name.to_ascii_lowercase(), value: value.to_string(), line });
        open_entry = true;
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String, String, usize)> {
        parse(text)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.entries.into_iter().map(move |e| (s.name.clone(), e.name, e.value, e.line)))
            .collect()
    }

    #[test]
    fn dialect() {
        let text = "\u{feff}; top comment\n\n[Relay]\n  # indented comment\nPort_Range = 40000:60000\r\n\
                    passport: O:Example Ltd, CN:*relay\nstream_timeout=90 ; not a comment\n\
                    [Dispatcher] ; trailing comment\nsocket_path = '/run/x.sock'\naccounting =\n\
                    dispatchers = a.example\n    b.example\n\n\tc.example\n";
        assert_eq!(
            entries(text),
            vec![
                ("Relay".into(), "port_range".into(), "40000:60000".into(), 5),
                ("Relay".into(), "passport".into(), "O:Example Ltd, CN:*relay".into(), 6),
                ("Relay".into(), "stream_timeout".into(), "90 ; not a comment".into(), 7),
                ("Dispatcher".into(), "socket_path".into(), "/run/x.sock".into(), 9),
                ("Dispatcher".into(), "accounting".into(), "".into(), 10),
                ("Dispatcher".into(), "dispatchers".into(), "a.example\nb.example\nc.example".into(), 11),
            ]
        );
    }

    #[test]
    fn first_delimiter_wins() {
        let e = entries("[Dispatcher]\nlisten = [::1]:25060\nlisten_management: 127.0.0.1:25061\n");
        assert_eq!(e[0].2, "[::1]:25060");
        assert_eq!(e[1].2, "127.0.0.1:25061");
    }

    #[test]
    fn structural_errors() {
        let err = |t: &str| parse(t).unwrap_err();
        assert_eq!(err("stream_timeout = 90\n").line, 1);
        assert!(err("stream_timeout = 90\n").reason.contains("outside any section"));
        assert_eq!(err("[Relay\n").line, 1);
        assert_eq!(err("[Relay]\n\njust words\n").line, 3);
        assert_eq!(err("[Relay]\n= 5\n").line, 2);
        let dup = err("[Relay]\n[TLS]\n[Relay]\n");
        assert_eq!((dup.line, dup.reason.as_str()), (3, "section [Relay] appears twice (first at line 1)"));
        assert_eq!(err("[Relay] x\n").line, 1);
    }

    /// 200 000 sections of 2 options each. The parser was quadratic in the
    /// number of sections (100 000 took 24.6 s; 200 000 would take about
    /// 100 s), linear now (well under a second even unoptimised); the bound
    /// only catches the quadratic version.
    #[test]
    fn many_sections_parse_in_linear_time() {
        let mut text = String::new();
        for i in 0..200_000 {
            text.push_str(&format!("[s{i}]\na = {i}\nb: x\n"));
        }
        text.push_str("[s17]\n");
        let started = std::time::Instant::now();
        let err = parse(&text).unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.reason, "section [s17] appears twice (first at line 52)");
        assert!(took < std::time::Duration::from_secs(15), "parsing took {took:?}");
    }
}
