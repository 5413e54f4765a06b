//! The web page's settings form: a urlencoded body (as the browser posts
//! it) rewrites the `[Relay]` options of the operator's config.ini text
//! (`ini_edit::set_options`), which is then read back by the page
//! (`section_values`) and checked by the daemon's parser. No input may
//! panic; a single-line value the form set is read back as it was sent,
//! a removed option is gone, and the other sections stay as they were.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use relaybox_web::ini_edit::{section_values, set_options};

/// Option names the form posts (a subset of `[Relay]`).
const NAMES: [&str; 6] = ["relay_ip", "advertised_ip", "port_range", "dispatchers", "passport", "stream_timeout"];

/// A value the page writes as one `name = value` line and reads back
/// unchanged: the settings page only posts such values (its fields are
/// single-line inputs, and relaybox-config refuses control characters).
fn plain(v: &str) -> bool {
    !v.is_empty() && v.trim() == v && !v.chars().any(char::is_control) && !is_quoted(v)
}

fn is_quoted(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0]
}

fuzz_target!(|input: (String, String)| {
    let (text, body) = input;
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
    let options: Vec<(&str, Option<String>)> =
        NAMES.iter().filter_map(|n| form.get(*n).map(|v| (*n, (!v.is_empty()).then(|| v.clone())))).collect();
    let written = set_options(&text, "Relay", &options);
    let values = section_values(&written, "Relay");
    for (name, value) in &options {
        match value {
            Some(v) if plain(v) => assert_eq!(values.get(*name), Some(v), "{name} in {written:?}"),
            Some(_) => {}
            None => assert!(!values.contains_key(*name), "{name} still in {written:?}"),
        }
    }
    for other in ["Dispatcher", "TLS", "Web"] {
        assert_eq!(section_values(&text, other), section_values(&written, other), "[{other}] changed");
    }
    let _ = relaybox_config::Config::parse(&written, "fuzz.ini", std::path::Path::new("/etc/relaybox"));
});
