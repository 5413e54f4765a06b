//! The box's firmware slots for the pages: relaybox-update's view of the
//! box (from the `[Update]` settings), the slots as HTML (the Status page
//! shows a failed update, the Update page everything), and the one
//! install job the Update page runs at a time.

use relaybox_config::UpdateConfig;
use relaybox_update::{Progress, SlotReport, SlotState, Status, Updater};
use serde::Serialize;

use crate::html::esc;

/// The slots now, or why they cannot be read (a box booted without the
/// slot loader, a development machine).
pub fn status(config: &UpdateConfig) -> Result<Status, String> {
    let updater = Updater::load(config).map_err(|e| e.to_string())?;
    updater.status().map_err(|e| e.to_string())
}

fn state_html(state: &SlotState) -> String {
    match state {
        SlotState::Good => r#"<span class="pill up">good</span>"#.into(),
        SlotState::Trial { left, done: 0 } => {
            format!(r#"<span class="pill">installed: boots at the next reboot ({left} tries)</span>"#)
        }
        SlotState::Trial { left, done } => {
            format!(r#"<span class="pill">on trial: tried {done}, {left} left; marked good once healthy</span>"#)
        }
        SlotState::Failed { tries: 0 } => r#"<span class="pill down">not tried</span>"#.into(),
        SlotState::Failed { tries } => format!(r#"<span class="pill down">failed after {tries} tries</span>"#),
        SlotState::Empty => r#"<span class="pill">empty</span>"#.into(),
    }
}

fn row(name: &str, r: &SlotReport) -> String {
    format!(
        r#"<tr><th>{name}</th><td id="slot-{}">slot {} · version <span class="mono">{}</span> · {}</td></tr>"#,
        r.slot,
        r.slot,
        esc(r.version.as_deref().unwrap_or("-")),
        state_html(&r.state)
    )
}

/// A warning about the last update when it failed, for the Status page
/// (empty otherwise).
pub fn failed_banner(status: &Result<Status, String>) -> String {
    match status {
        Ok(s) if matches!(s.other.state, SlotState::Failed { .. }) => format!(
            r#"<section><p class="bad" id="update-failed">{}. <a href="/update">Update page</a></p></section>"#,
            esc(&s.last_update().unwrap_or_default())
        ),
        _ => String::new(),
    }
}

/// The slots as a table, with the last update's line.
pub fn slots_html(status: &Result<Status, String>) -> String {
    match status {
        Ok(s) => {
            let last = match s.last_update() {
                Some(line) => {
                    let class = if matches!(s.other.state, SlotState::Failed { .. }) { "bad" } else { "warn" };
                    format!(r#"<p class="{class}" id="last-update">{}</p>"#, esc(&line))
                }
                None => String::new(),
            };
            format!(
                r#"<table class="kv" id="slots"><tr><th>Board</th><td class="mono">{}</td></tr><tr><th>Running version</th><td class="mono" id="running-version">{}</td></tr>{}{}</table>{last}"#,
                esc(&s.board),
                esc(&s.running_version),
                row("Running", &s.running),
                row("Other", &s.other),
            )
        }
        Err(e) => format!(r#"<p class="warn" id="slots-unknown">The firmware slots cannot be read: {}</p>"#, esc(e)),
    }
}

/// The Update page's install job (one at a time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Job {
    /// An install is running now.
    pub running: bool,
    /// Bytes written of the slot so far, and in all.
    pub done: u64,
    pub total: u64,
    /// What happened, in order (the console lines of `relaybox update`).
    pub steps: Vec<String>,
    /// Once finished: None while running; `ok` and the last line.
    pub ok: Option<bool>,
    pub message: String,
}

impl Job {
    pub fn record(&mut self, p: &Progress, line: String) {
        if let Progress::Written { done, total, .. } = p {
            self.done = *done;
            self.total = *total;
        }
        if let Progress::Checked { bytes, .. } = p {
            self.total = *bytes;
        }
        self.steps.push(line);
    }
}
