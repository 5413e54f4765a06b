//! One module per page, each with its handlers. A page imports the state
//! (`app`), the extractors (`extract`), the layout and the support modules
//! (`auth`, `html`, `files`, `control`, ...), never another page and never
//! the router; `router` imports the pages. Shared fragments go to `layout`.

pub mod backup;
pub mod certs;
pub mod login;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod settings;
pub mod status;
pub mod system;
pub mod update;

#[cfg(test)]
mod tests {
    /// Each page's source, for the import rule above.
    const PAGES: &[(&str, &str)] = &[
        ("backup", include_str!("backup.rs")),
        ("certs", include_str!("certs.rs")),
        ("login", include_str!("login.rs")),
        ("logs", include_str!("logs.rs")),
        ("metrics", include_str!("metrics.rs")),
        ("network", include_str!("network.rs")),
        ("settings", include_str!("settings.rs")),
        ("status", include_str!("status.rs")),
        ("system", include_str!("system.rs")),
        ("update", include_str!("update.rs")),
    ];

    /// The modules below the pages.
    const BELOW: &[(&str, &str)] = &[
        ("app", include_str!("../app.rs")),
        ("extract", include_str!("../extract.rs")),
        ("layout", include_str!("../layout.rs")),
        ("auth", include_str!("../auth.rs")),
        ("html", include_str!("../html.rs")),
        ("files", include_str!("../files.rs")),
        ("control", include_str!("../control.rs")),
        ("ini_edit", include_str!("../ini_edit.rs")),
        ("conf_form", include_str!("../conf_form.rs")),
        ("firmware", include_str!("../firmware.rs")),
        ("server", include_str!("../server.rs")),
        ("backup", include_str!("../backup.rs")),
    ];

    /// Crude but cheap: the paths a module could use to reach a page or the
    /// router. A page may name another page only through `crate::pages::`
    /// or `super::`, so both are refused in page files.
    #[test]
    fn imports_run_one_way() {
        for (name, text) in PAGES {
            for path in ["crate::router", "crate::pages", "super::"] {
                let hits = text.lines().filter(|l| l.contains(path) && l.trim() != "use super::*;").count();
                assert_eq!(hits, 0, "page {name} names {path}: pages import only the modules below them");
            }
        }
        for (name, text) in BELOW {
            for path in ["crate::router", "crate::pages"] {
                assert!(!text.contains(path), "{name} names {path}: it is below the pages and the router");
            }
        }
        assert_eq!(PAGES.len(), include_str!("mod.rs").lines().filter(|l| l.starts_with("pub mod ")).count());
    }
}
