//! Server-side HTML: escaping, the page frame with its navigation, and the
//! embedded assets (no CDN, nothing fetched from elsewhere).

pub const STYLE: &str = include_str!("../assets/style.css");
pub const SCRIPT: &str = include_str!("../assets/app.js");

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One labelled form field: `input` (HTML) with its error, if any, and its
/// help (HTML), under the ids the pages and tests use (`field-{id}`,
/// `error-{id}`).
pub fn form_field(id: &str, label: &str, input: &str, error: Option<&str>, help: &str) -> String {
    format!(
        r#"<div class="field{}" id="field-{id}"><label for="{id}">{}</label>{input}{}<p class="help">{help}</p></div>"#,
        if error.is_some() { " field-error" } else { "" },
        esc(label),
        error.map(|e| format!(r#"<p class="err" id="error-{id}">{}</p>"#, esc(e))).unwrap_or_default(),
    )
}

/// A text input named and identified `id`.
pub fn text_input(id: &str, value: &str) -> String {
    format!(r#"<input type="text" id="{id}" name="{id}" value="{}">"#, esc(value))
}

/// A drop-down named and identified `id` with `current` selected; a
/// `current` that is not one of `choices` is shown (selected) as well, so
/// that a form never silently changes a value it does not know.
pub fn select(id: &str, choices: &[&str], current: &str) -> String {
    let mut known = false;
    let mut options: String = choices
        .iter()
        .map(|c| {
            let selected = c.eq_ignore_ascii_case(current);
            known |= selected;
            format!(r#"<option{}>{c}</option>"#, if selected { " selected" } else { "" })
        })
        .collect();
    if !known {
        options.push_str(&format!(r#"<option selected>{}</option>"#, esc(current)));
    }
    format!(r#"<select id="{id}" name="{id}">{options}</select>"#)
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(token: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(token))
}

const NAV: &[(&str, &str)] = &[
    ("/status", "Status"),
    ("/settings", "Relay settings"),
    ("/certs", "Certificates"),
    ("/network", "Network"),
    ("/system", "System"),
    ("/logs", "Logs"),
    ("/backup", "Backup"),
    ("/update", "Update"),
];

/// A whole page. `csrf` is `Some` for a logged-in user (shows the menu and
/// the logout button).
pub fn page(title: &str, active: &str, csrf: Option<&str>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(token) = csrf {
        for (href, label) in NAV {
            let class = if *href == active { r#" class="on""# } else { "" };
            nav.push_str(&format!(r#"<a href="{href}"{class}>{label}</a>"#));
        }
        nav.push_str(&format!(
            r#"<form method="post" action="/logout">{}<button type="submit">Log out</button></form>"#,
            csrf_field(token)
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · relaybox</title><link rel="stylesheet" href="/static/style.css"></head>
<body><header><b>relaybox</b>{nav}</header><main><h1>{title}</h1>
{body}
</main><script src="/static/app.js"></script></body></html>"#,
        title = esc(title)
    )
}

/// A duration in seconds as `1d 02:03:04` / `02:03:04`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Bits per second with a unit.
pub fn bps(v: u64) -> String {
    match v {
        v if v >= 1_000_000 => format!("{:.1} Mbit/s", v as f64 / 1e6),
        v if v >= 1_000 => format!("{:.1} kbit/s", v as f64 / 1e3),
        v => format!("{v} bit/s"),
    }
}

pub fn bytes(v: u64) -> String {
    match v {
        v if v >= 1 << 30 => format!("{:.1} GiB", v as f64 / (1u64 << 30) as f64),
        v if v >= 1 << 20 => format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64),
        v if v >= 1 << 10 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{v} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(duration(3725), "01:02:05");
        assert_eq!(duration(90061), "1d 01:01:01");
        assert_eq!(bps(1500), "1.5 kbit/s");
    }
}
