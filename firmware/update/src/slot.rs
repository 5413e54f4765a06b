//! The two root slots, what each holds, and what the last update did —
//! the words the CLI and the web page show.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

impl std::str::FromStr for Slot {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("the running slot {0} is on trial (not yet marked good): it may still roll back, and the other slot is then the only good one; install again once it is marked good")]
    RunningOnTrial(Slot),
    #[error("slot {0} is running but has no boot entry of its own")]
    NoEntry(Slot),
    #[error("the running slot is unknown (no relaybox.slot= on the kernel command line, no boot partition from the firmware)")]
    UnknownRunning,
}

/// How a slot stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SlotState {
    /// The slot the box keeps booting.
    Good,
    /// Installed; boots next (tries left, tries done).
    Trial { left: u32, done: u32 },
    /// Tried and never marked good: the box went back to the other slot.
    Failed { tries: u32 },
    /// Nothing bootable (never written, or an install was cut short).
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    pub slot: Slot,
    /// From the slot's manifest (None: empty or unreadable).
    pub version: Option<String>,
    #[serde(flatten)]
    pub state: SlotState,
}

/// The box's slots as the status page and `relaybox update status` show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub board: String,
    pub running: SlotReport,
    pub other: SlotReport,
    /// The version running now (baked into the image).
    pub running_version: String,
}

impl Status {
    /// One line about the last update, or None when there is nothing to say.
    pub fn last_update(&self) -> Option<String> {
        let version = self.other.version.as_deref().unwrap_or("?");
        match (&self.running.state, &self.other.state) {
            (_, SlotState::Failed { tries: 0 }) => Some(format!(
                "update to {version} was not tried: slot {} was not booted to the end of a try (an install cut short, or the boot order changed by hand); slot {} ({}) runs",
                self.other.slot, self.running.slot, self.running_version,
            )),
            (_, SlotState::Failed { tries }) => Some(format!(
                "update to {version} failed, rolled back: slot {} was tried {tries} time{} and never became healthy; slot {} ({}) runs",
                self.other.slot,
                if *tries == 1 { "" } else { "s" },
                self.running.slot,
                self.running_version,
            )),
            (_, SlotState::Trial { done: 0, .. }) => {
                Some(format!("update to {version} installed in slot {}: it boots at the next reboot", self.other.slot))
            }
            (SlotState::Trial { left, .. }, _) => Some(format!(
                "slot {} ({}) is on trial: it is marked good once the box is healthy, else the box goes back to slot {} ({} tr{} left)",
                self.running.slot,
                self.running_version,
                self.other.slot,
                left,
                if *left == 1 { "y" } else { "ies" },
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_update_in_words() {
        let status = |running: SlotState, other: SlotState| Status {
            board: "qemu-x86_64".into(),
            running: SlotReport { slot: Slot::A, version: Some("1.0".into()), state: running },
            other: SlotReport { slot: Slot::B, version: Some("1.1".into()), state: other },
            running_version: "1.0".into(),
        };
        let failed = status(SlotState::Good, SlotState::Failed { tries: 3 }).last_update().unwrap();
        assert!(failed.starts_with("update to 1.1 failed, rolled back"), "{failed}");
        let untried = status(SlotState::Good, SlotState::Failed { tries: 0 }).last_update().unwrap();
        assert!(untried.starts_with("update to 1.1 was not tried"), "{untried}");
        let pending = status(SlotState::Good, SlotState::Trial { left: 3, done: 0 }).last_update().unwrap();
        assert!(pending.contains("boots at the next reboot"), "{pending}");
        assert_eq!(status(SlotState::Good, SlotState::Good).last_update(), None);
        assert_eq!(status(SlotState::Good, SlotState::Empty).last_update(), None);
        let json = serde_json::to_value(status(SlotState::Good, SlotState::Failed { tries: 2 })).unwrap();
        assert_eq!(json["other"]["state"], "failed");
        assert_eq!(json["other"]["tries"], 2);
    }
}
