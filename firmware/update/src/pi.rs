//! The A/B slots of a Raspberry Pi 4, as its firmware sees them: partition
//! 1 (FAT) holds only `autoboot.txt`; partitions 2 and 3 (FAT) are slots a
//! and b, each a complete boot partition (GPU firmware, `config.txt`,
//! `cmdline.txt`, kernel, initramfs, device trees).
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2      <- the good slot
//! [tryboot]
//! boot_partition=3      <- the other slot, booted once after `reboot "0 tryboot"`
//! ```
//!
//! The firmware boots `[tryboot]`'s partition only for the one boot that
//! follows a reboot with the tryboot flag, and tells the kernel which
//! partition it booted and whether it was a tryboot
//! (`/proc/device-tree/chosen/bootloader/partition` and `.../tryboot`).
//! Any later reboot or power cut boots `[all]`'s partition again: the Pi's
//! firmware is the boot counter, with one try. Marking good rewrites
//! `autoboot.txt` so that `[all]` names the running slot.
//!
//! `relaybox-update.json` beside `autoboot.txt` ([`Trial`]) records the
//! slot being tried, so that the old slot can tell "installed, not yet
//! tried" from "tried and failed" and say so on the status page.

use serde::{Deserialize, Serialize};

use crate::slot::{Slot, SlotError, SlotState};

pub const AUTOBOOT: &str = "autoboot.txt";
pub const TRIAL: &str = "relaybox-update.json";

/// The partition number of a slot.
pub fn partition(slot: Slot) -> u32 {
    match slot {
        Slot::A => 2,
        Slot::B => 3,
    }
}

pub fn slot_of(partition: u32) -> Option<Slot> {
    match partition {
        2 => Some(Slot::A),
        3 => Some(Slot::B),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    /// `[all] boot_partition`: the slot booted normally.
    pub boot: u32,
    /// `[tryboot] boot_partition`: the slot booted once after a tryboot reboot.
    pub tryboot: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutobootError {
    #[error("autoboot.txt: line {0}: {1}")]
    Line(usize, String),
    #[error("autoboot.txt does not set tryboot_a_b=1 in [all]")]
    NoAb,
    #[error("autoboot.txt does not name a boot_partition in [{0}]")]
    Missing(&'static str),
}

impl Autoboot {
    /// The file for a box whose good slot is `good`.
    pub fn for_good(good: Slot) -> Autoboot {
        Autoboot { boot: partition(good), tryboot: partition(good.other()) }
    }

    pub fn parse(text: &str) -> Result<Autoboot, AutobootError> {
        let (mut section, mut ab, mut boot, mut tryboot) = ("all".to_string(), false, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| AutobootError::Line(n + 1, "not key=value".into()))?;
            let (k, v) = (k.trim(), v.trim());
            let number = || v.parse::<u32>().map_err(|_| AutobootError::Line(n + 1, format!("{k}: not a number")));
            match (section.as_str(), k) {
                ("all", "tryboot_a_b") => ab = number()? == 1,
                ("all", "boot_partition") => boot = Some(number()?),
                ("tryboot", "boot_partition") => tryboot = Some(number()?),
                _ => {}
            }
        }
        if !ab {
            return Err(AutobootError::NoAb);
        }
        Ok(Autoboot {
            boot: boot.ok_or(AutobootError::Missing("all"))?,
            tryboot: tryboot.ok_or(AutobootError::Missing("tryboot"))?,
        })
    }

    pub fn render(&self) -> String {
        format!(
            "# Raspberry Pi firmware A/B boot (written by relaybox; see board/README.md)\n\
             [all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            self.boot, self.tryboot
        )
    }
}

/// The slot an install wrote, kept beside autoboot.txt until it is marked
/// good or overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    pub slot: Slot,
    pub version: String,
    /// Boots of it so far (the firmware gives it one).
    pub tried: u32,
}

/// How the running Pi booted, from the firmware's device tree values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    pub tryboot: bool,
}

impl Booted {
    /// From `chosen/bootloader/partition` and `chosen/bootloader/tryboot`
    /// (big-endian 32-bit cells).
    pub fn from_device_tree(partition: &[u8], tryboot: &[u8]) -> Result<Booted, SlotError> {
        let cell = |b: &[u8]| b.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        let slot = cell(partition).and_then(slot_of).ok_or(SlotError::UnknownRunning)?;
        Ok(Booted { slot, tryboot: cell(tryboot).unwrap_or(0) == 1 })
    }

    /// Installing: refused during a tryboot (the running slot is on trial).
    pub fn plan_install(&self) -> Result<Slot, SlotError> {
        if self.tryboot {
            return Err(SlotError::RunningOnTrial(self.slot));
        }
        Ok(self.slot.other())
    }

    /// The trial record after this boot: a tryboot of the trial's slot
    /// counts one try.
    pub fn count_try(&self, trial: Option<Trial>) -> Option<Trial> {
        match trial {
            Some(mut t) if self.tryboot && t.slot == self.slot => {
                t.tried += 1;
                Some(t)
            }
            other => other,
        }
    }

    /// How the running slot and the other one stand.
    pub fn states(&self, trial: Option<&Trial>, other_has_files: bool) -> (SlotState, SlotState) {
        let running = if self.tryboot { SlotState::Trial { left: 0, done: 1 } } else { SlotState::Good };
        let other = match trial {
            Some(t) if t.slot != self.slot && t.tried == 0 => SlotState::Trial { left: 1, done: 0 },
            Some(t) if t.slot != self.slot => SlotState::Failed { tries: t.tried },
            _ if other_has_files => SlotState::Good,
            _ => SlotState::Empty,
        };
        (running, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoboot_txt_round_trips_and_is_checked() {
        let a = Autoboot::for_good(Slot::A);
        assert_eq!(a, Autoboot { boot: 2, tryboot: 3 });
        let text = a.render();
        assert!(text.contains("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"), "{text}");
        assert_eq!(Autoboot::parse(&text), Ok(a));
        assert_eq!(Autoboot::parse(&Autoboot::for_good(Slot::B).render()), Ok(Autoboot { boot: 3, tryboot: 2 }));
        assert_eq!(Autoboot::parse("[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n"), Err(AutobootError::NoAb));
        assert_eq!(Autoboot::parse("[all]\ntryboot_a_b=1\nboot_partition=2\n"), Err(AutobootError::Missing("tryboot")));
        assert!(matches!(Autoboot::parse("[all]\nboot_partition=x\n"), Err(AutobootError::Line(2, _))));
    }

    #[test]
    fn one_try_then_the_firmware_goes_back() {
        let dt = |p: u32, t: u32| Booted::from_device_tree(&p.to_be_bytes(), &t.to_be_bytes()).unwrap();
        let normal = dt(2, 0);
        assert_eq!(normal, Booted { slot: Slot::A, tryboot: false });
        assert_eq!(normal.plan_install(), Ok(Slot::B));
        let trial = Trial { slot: Slot::B, version: "1.1".into(), tried: 0 };
        assert_eq!(normal.states(Some(&trial), true).1, SlotState::Trial { left: 1, done: 0 });
        // the tryboot of b counts its try; b cannot install while on trial
        let trying = dt(3, 1);
        let counted = trying.count_try(Some(trial.clone())).unwrap();
        assert_eq!(counted.tried, 1);
        assert_eq!(trying.plan_install(), Err(SlotError::RunningOnTrial(Slot::B)));
        // it never got marked good: the next boot is a's, which reports it
        assert_eq!(normal.count_try(Some(counted.clone())), Some(counted.clone()));
        assert_eq!(normal.states(Some(&counted), true), (SlotState::Good, SlotState::Failed { tries: 1 }));
        assert_eq!(normal.states(None, false).1, SlotState::Empty);
        assert!(Booted::from_device_tree(&1u32.to_be_bytes(), &[]).is_err());
        let json = serde_json::to_string(&counted).unwrap();
        assert_eq!(serde_json::from_str::<Trial>(&json).unwrap(), counted);
    }
}
