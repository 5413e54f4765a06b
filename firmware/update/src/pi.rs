//! The A/B slots of a Raspberry Pi 4, as its firmware sees them: partition
//! 1 (FAT) holds only `autoboot.txt`; partitions 2 and 3 (FAT) are slots a
//! and b, each a complete boot partition (GPU firmware, `config.txt`,
//! `cmdline.txt`, kernel, initramfs, device trees).
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2      <- the slot every normal boot starts
//! [tryboot]
//! boot_partition=3      <- the slot the one boot after `reboot "0 tryboot"` starts
//! ```
//!
//! The firmware tells the kernel which partition it booted and whether it
//! was a tryboot (`/proc/device-tree/chosen/bootloader/partition` and
//! `.../tryboot`). A new slot is tried in one of two ways ([`PiTry`], the
//! release file's `PI_TRY`):
//!
//! - **tryboot**: `[all]` keeps the old slot, `[tryboot]` names the new one,
//!   and a reboot with the tryboot flag boots it once. The flag is set by
//!   `reboot(2)` with `"0 tryboot"`, which only the Raspberry Pi kernel's
//!   firmware driver passes on. Any later reboot, power cut or watchdog
//!   reset boots `[all]` again: the firmware is the boot counter, with one
//!   try, and it goes back even when the new kernel never reaches init.
//! - **counted** (any kernel, the mainline one included): the install
//!   commits the new slot in `[all]` (`[tryboot]` names the old one, so
//!   that the file stays one the firmware reads) and the record below
//!   counts its boots. Init's first step (`relaybox update boot-check`)
//!   takes one try at each boot of it, and once none is left points `[all]`
//!   back at the old slot and reboots. That runs in the new slot's own
//!   init: a new kernel that never gets there is booted again and again.
//!
//! Marking good rewrites `autoboot.txt` so that `[all]` names the running
//! slot, and removes the record.
//!
//! `relaybox-update.json` beside `autoboot.txt` ([`Trial`]) records the
//! slot being tried — and, counted, the slot to go back to and the boots it
//! has left — so that the box can count, go back, and tell "installed, not
//! yet tried" from "tried and failed" on the status page. [`boot_step`]
//! decides what a boot does with it; `crate::install` does the writing.

use serde::{Deserialize, Serialize};

use crate::slot::{Slot, SlotError, SlotState};

pub const AUTOBOOT: &str = "autoboot.txt";
pub const TRIAL: &str = "relaybox-update.json";
/// An unreadable record is moved here (kept to look at), out of the way.
pub const TRIAL_SET_ASIDE: &str = "relaybox-update.bad";

/// How a new slot is tried on a Raspberry Pi (the release file's `PI_TRY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiTry {
    /// The firmware's tryboot: one try, needs the Raspberry Pi kernel.
    Tryboot,
    /// `[all]` names the new slot and init counts its boots: any kernel.
    Counted,
}

impl PiTry {
    pub fn as_str(self) -> &'static str {
        match self {
            PiTry::Tryboot => "tryboot",
            PiTry::Counted => "counted",
        }
    }
}

impl std::str::FromStr for PiTry {
    type Err = String;
    fn from_str(s: &str) -> Result<PiTry, String> {
        match s {
            "tryboot" => Ok(PiTry::Tryboot),
            "counted" => Ok(PiTry::Counted),
            other => Err(format!("PI_TRY {other:?}: tryboot or counted")),
        }
    }
}

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
    /// The file for a box whose good slot is `good`: `[all]` boots it,
    /// `[tryboot]` the other slot.
    pub fn for_good(good: Slot) -> Autoboot {
        Autoboot::boots(good)
    }

    /// `[all]` boots `slot`, `[tryboot]` the other one: a box whose good
    /// slot is `slot`, or (counted) whose slot on trial is `slot`.
    pub fn boots(slot: Slot) -> Autoboot {
        Autoboot { boot: partition(slot), tryboot: partition(slot.other()) }
    }

    /// The slot `[all]` boots (None: not one of the slot partitions).
    pub fn normal_slot(&self) -> Option<Slot> {
        slot_of(self.boot)
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

/// The record of a slot being tried, kept beside autoboot.txt until the
/// slot is marked good or another install replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// The slot on trial.
    pub slot: Slot,
    pub version: String,
    /// Boots of it so far.
    pub tried: u32,
    /// Counted tries (None: the firmware's tryboot armed it, one try).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted: Option<Counted>,
}

/// A counted trial: where to go back to, and how many more boots of the
/// slot on trial are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counted {
    pub fallback: Slot,
    /// Boots of the slot on trial still allowed; at a boot of it with none
    /// left the box goes back to `fallback`.
    pub left: u32,
}

impl Trial {
    /// A counted trial of `slot` with `tries` boots, going back to the other slot.
    pub fn counted(slot: Slot, version: &str, tries: u32) -> Trial {
        Trial {
            slot,
            version: version.to_string(),
            tried: 0,
            counted: Some(Counted { fallback: slot.other(), left: tries }),
        }
    }

    /// The record's bytes (what [`Trial::parse`] reads back).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a trial record serialises")
    }

    /// Reads a record; Err says why it cannot be used (not JSON, unknown
    /// fields, a slot going back to itself).
    pub fn parse(bytes: &[u8]) -> Result<Trial, String> {
        let t: Trial = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if let Some(c) = &t.counted {
            if c.fallback != t.slot.other() {
                return Err(format!("slot {} on trial would go back to slot {}", t.slot, c.fallback));
            }
        }
        Ok(t)
    }

    /// Tries left, as the status page counts them.
    fn left(&self) -> u32 {
        self.counted.map_or(0, |c| c.left)
    }
}

/// How the running Pi booted, from the firmware's device tree values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    pub tryboot: bool,
}

/// What a boot does about a trial: [`boot_step`]'s answer, which
/// `relaybox update boot-check` carries out as the first thing init does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootStep {
    /// No trial, or none that this boot counts: go on.
    Nothing,
    /// Write this record (a try counted) and go on: the running slot is on
    /// trial, its health check keeps it or reboots.
    Count(Trial),
    /// Counted: the slot on trial has no tries left (or the record cannot
    /// be read while the running slot is the one `[all]` boots). Write
    /// `record`, point `[all]` at `to`, reboot.
    RollBack { record: Trial, to: Slot, why: String },
    /// Counted: the fallback slot runs and `[all]` names it (an install cut
    /// short before its last step, or the operator switched back): the
    /// trial is over. Write the record (no tries left), make sure `[all]`
    /// keeps the running slot, go on.
    TrialOver(Trial),
    /// Counted: no tries left, but the other slot holds no firmware to go
    /// back to. The running slot is all there is: keep it (the record is
    /// removed, `[all]` keeps it), go on.
    Keep { why: String },
    /// The record cannot be read and is not acted on: move it aside, go on.
    SetAside { why: String },
}

/// What this boot does about the record (`record`: Err says why it cannot
/// be read), given `autoboot.txt` (None: unreadable) and whether the other
/// slot holds firmware (its manifest reads). A pure function of its
/// arguments; the rules:
///
/// - A tryboot record counts the one try of a tryboot of its slot.
/// - A counted record, at a boot of its slot that `[all]` chose (no
///   tryboot flag): one try less and go on while tries are left; with none
///   left, back to the fallback ([`BootStep::RollBack`]) — or, when the
///   fallback holds no firmware, keep the running slot rather than point
///   the firmware at an empty partition. A boot of its slot that `[all]`
///   did not choose (a tryboot, a hand edit) counts nothing: the next
///   normal boot is `[all]`'s anyway.
/// - A counted record at a boot of the fallback: nothing while `[all]`
///   still names the slot on trial (a one-off boot of the fallback: the
///   trial goes on at the next reboot); once `[all]` names the fallback the
///   trial is over. Never a reboot: the fallback is the good slot, so this
///   cannot loop.
/// - An unreadable record is treated as a trial with no tries left: it is
///   only ever written during an install and while a slot is on trial,
///   so the trial is the likely one, and the safe side of a trial is the
///   slot that ran before it. So when the running slot is `[all]`'s and
///   the other slot holds firmware, back to it (a readable record, with no
///   tries left, replaces the bad one, so the next boot does not decide
///   again); otherwise it is moved aside and the running slot goes on.
pub fn boot_step(
    booted: Booted,
    record: Result<Option<Trial>, String>,
    autoboot: Option<Autoboot>,
    other_has_firmware: bool,
    running_version: &str,
) -> BootStep {
    let running = booted.slot;
    let all = autoboot.and_then(|a| a.normal_slot());
    let chosen_by_all = !booted.tryboot && all.is_none_or(|s| s == running);
    let mut t = match record {
        Ok(None) => return BootStep::Nothing,
        Ok(Some(t)) => t,
        Err(why) if chosen_by_all && other_has_firmware => {
            return BootStep::RollBack {
                record: Trial {
                    slot: running,
                    version: running_version.to_string(),
                    tried: 0,
                    counted: Some(Counted { fallback: running.other(), left: 0 }),
                },
                to: running.other(),
                why: format!("the trial record cannot be read ({why}): treated as a trial with no tries left"),
            }
        }
        Err(why) => return BootStep::SetAside { why },
    };
    let Some(mut c) = t.counted else {
        // Tryboot: the firmware gives the one try.
        if booted.tryboot && t.slot == running {
            t.tried = t.tried.saturating_add(1);
            return BootStep::Count(t);
        }
        return BootStep::Nothing;
    };
    if t.slot == running {
        if !chosen_by_all {
            return BootStep::Nothing;
        }
        if c.left > 0 {
            c.left -= 1;
            t.tried = t.tried.saturating_add(1);
            t.counted = Some(c);
            return BootStep::Count(t);
        }
        let tries = t.tried;
        if !other_has_firmware {
            return BootStep::Keep {
                why: format!(
                    "slot {running} used up its tries ({tries}) but slot {} holds no firmware to go back to",
                    c.fallback
                ),
            };
        }
        let to = c.fallback;
        return BootStep::RollBack {
            record: t,
            to,
            why: format!("slot {running} was tried {tries} times without being marked good"),
        };
    }
    if c.left > 0 && all != Some(t.slot) {
        c.left = 0;
        t.counted = Some(c);
        return BootStep::TrialOver(t);
    }
    BootStep::Nothing
}

/// Whether the running slot still has to prove itself (its health check
/// marks it good, or reboots): named by a counted record, or booted by the
/// firmware's tryboot (unless a counted record names the other slot: the
/// running one is then the slot to go back to).
pub fn on_trial(booted: Booted, record: Option<&Trial>) -> bool {
    match record {
        Some(t) if t.counted.is_some() => t.slot == booted.slot,
        _ => booted.tryboot,
    }
}

impl Booted {
    /// From `chosen/bootloader/partition` and `chosen/bootloader/tryboot`
    /// (big-endian 32-bit cells).
    pub fn from_device_tree(partition: &[u8], tryboot: &[u8]) -> Result<Booted, SlotError> {
        let cell = |b: &[u8]| b.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        let slot = cell(partition).and_then(slot_of).ok_or(SlotError::UnknownRunning)?;
        Ok(Booted { slot, tryboot: cell(tryboot).unwrap_or(0) == 1 })
    }

    /// Installing: refused while the running slot is on trial.
    pub fn plan_install(&self, record: Option<&Trial>) -> Result<Slot, SlotError> {
        if on_trial(*self, record) {
            return Err(SlotError::RunningOnTrial(self.slot));
        }
        Ok(self.slot.other())
    }

    /// How the running slot and the other one stand.
    pub fn states(
        &self,
        record: Option<&Trial>,
        autoboot: Option<Autoboot>,
        other_has_files: bool,
    ) -> (SlotState, SlotState) {
        let running = match record {
            _ if !on_trial(*self, record) => SlotState::Good,
            Some(t) if t.counted.is_some() && t.slot == self.slot => SlotState::Trial { left: t.left(), done: t.tried },
            _ => SlotState::Trial { left: 0, done: 1 },
        };
        let boots_next = |t: &Trial| autoboot.is_none_or(|a| a.normal_slot() == Some(t.slot));
        let other = match record {
            Some(t) if t.slot != self.slot => match t.counted {
                None if t.tried == 0 => SlotState::Trial { left: 1, done: 0 },
                None => SlotState::Failed { tries: t.tried },
                Some(c) if c.left > 0 && boots_next(t) => SlotState::Trial { left: c.left, done: t.tried },
                Some(_) => SlotState::Failed { tries: t.tried },
            },
            _ if other_has_files => SlotState::Good,
            _ => SlotState::Empty,
        };
        (running, other)
    }

    /// Tryboot: the slot a reboot with the tryboot flag would try now (a
    /// tryboot record of the other slot, not tried yet, that `[tryboot]`
    /// names).
    pub fn tryboot_waiting(&self, record: Option<&Trial>, autoboot: Option<Autoboot>) -> Option<Slot> {
        let t = record?;
        let armed = autoboot.is_some_and(|a| slot_of(a.tryboot) == Some(t.slot));
        (t.counted.is_none() && t.slot != self.slot && t.tried == 0 && armed).then_some(t.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(p: u32, t: u32) -> Booted {
        Booted::from_device_tree(&p.to_be_bytes(), &t.to_be_bytes()).unwrap()
    }

    #[test]
    fn autoboot_txt_round_trips_and_is_checked() {
        let a = Autoboot::for_good(Slot::A);
        assert_eq!(a, Autoboot { boot: 2, tryboot: 3 });
        assert_eq!(Autoboot::boots(Slot::B), Autoboot { boot: 3, tryboot: 2 });
        assert_eq!(Autoboot::boots(Slot::B).normal_slot(), Some(Slot::B));
        assert_eq!(Autoboot { boot: 1, tryboot: 3 }.normal_slot(), None);
        let text = a.render();
        assert!(text.contains("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"), "{text}");
        assert_eq!(Autoboot::parse(&text), Ok(a));
        assert_eq!(Autoboot::parse(&Autoboot::for_good(Slot::B).render()), Ok(Autoboot { boot: 3, tryboot: 2 }));
        assert_eq!(Autoboot::parse("[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n"), Err(AutobootError::NoAb));
        assert_eq!(Autoboot::parse("[all]\ntryboot_a_b=1\nboot_partition=2\n"), Err(AutobootError::Missing("tryboot")));
        assert!(matches!(Autoboot::parse("[all]\nboot_partition=x\n"), Err(AutobootError::Line(2, _))));
        assert_eq!("counted".parse::<PiTry>(), Ok(PiTry::Counted));
        assert_eq!("tryboot".parse::<PiTry>(), Ok(PiTry::Tryboot));
        assert!("both".parse::<PiTry>().is_err());
    }

    #[test]
    fn tryboot_gives_one_try_then_the_firmware_goes_back() {
        let normal = dt(2, 0);
        assert_eq!(normal, Booted { slot: Slot::A, tryboot: false });
        let trial = Trial { slot: Slot::B, version: "1.1".into(), tried: 0, counted: None };
        assert_eq!(normal.plan_install(Some(&trial)), Ok(Slot::B));
        let armed = Autoboot::for_good(Slot::A);
        assert_eq!(normal.states(Some(&trial), Some(armed), true).1, SlotState::Trial { left: 1, done: 0 });
        assert_eq!(normal.tryboot_waiting(Some(&trial), Some(armed)), Some(Slot::B));
        // the tryboot of b counts its try; b cannot install while on trial
        let trying = dt(3, 1);
        let counted = match boot_step(trying, Ok(Some(trial.clone())), Some(armed), true, "1.1") {
            BootStep::Count(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(counted.tried, 1);
        assert!(on_trial(trying, Some(&counted)));
        assert_eq!(trying.plan_install(Some(&counted)), Err(SlotError::RunningOnTrial(Slot::B)));
        assert_eq!(trying.tryboot_waiting(Some(&counted), Some(armed)), None);
        // it never got marked good: the next boot is a's, which reports it
        assert_eq!(boot_step(normal, Ok(Some(counted.clone())), Some(armed), true, "1.0"), BootStep::Nothing);
        assert_eq!(normal.states(Some(&counted), Some(armed), true), (SlotState::Good, SlotState::Failed { tries: 1 }));
        assert_eq!(normal.tryboot_waiting(Some(&counted), Some(armed)), None);
        assert_eq!(normal.states(None, Some(armed), false).1, SlotState::Empty);
        assert!(Booted::from_device_tree(&1u32.to_be_bytes(), &[]).is_err());
        assert_eq!(Trial::parse(&counted.to_json()), Ok(counted));
    }

    #[test]
    fn a_record_reads_back_and_a_bad_one_says_why() {
        let t = Trial::counted(Slot::B, "1.1", 3);
        assert_eq!(t.counted, Some(Counted { fallback: Slot::A, left: 3 }));
        let json = String::from_utf8(t.to_json()).unwrap();
        assert_eq!(json, r#"{"slot":"b","version":"1.1","tried":0,"counted":{"fallback":"a","left":3}}"#);
        assert_eq!(Trial::parse(json.as_bytes()), Ok(t.clone()));
        // a tryboot record has no "counted"
        let tryboot = Trial { counted: None, ..t.clone() };
        assert_eq!(String::from_utf8(tryboot.to_json()).unwrap(), r#"{"slot":"b","version":"1.1","tried":0}"#);
        for bad in [
            &b""[..],
            b"{\"slot\":\"b\",\"version\":\"1.1\",\"tried\":0,\"counted\":{\"fallback\":\"a\",\"le",
            b"{\"slot\":\"c\",\"version\":\"1.1\",\"tried\":0}",
            b"{\"slot\":\"b\",\"version\":\"1.1\",\"tried\":-1}",
            b"{\"slot\":\"b\",\"version\":\"1.1\",\"tried\":0,\"extra\":1}",
            b"{\"slot\":\"b\",\"version\":\"1.1\",\"tried\":0,\"counted\":{\"fallback\":\"b\",\"left\":3}}",
            b"{\"slot\":\"b\",\"version\":\"1.1\",\"tried\":0,\"counted\":{\"fallback\":\"a\",\"left\":99999999999}}",
            b"\xff\xfe\x00",
        ] {
            assert!(Trial::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let e = Trial::parse(br#"{"slot":"b","version":"1.1","tried":0,"counted":{"fallback":"b","left":3}}"#);
        assert_eq!(e, Err("slot b on trial would go back to slot b".into()));
    }

    /// Counted: N boots of the new slot, each one try less; the boot after
    /// the last goes back. autoboot.txt as the install leaves it: [all] the
    /// slot on trial, [tryboot] the old one.
    #[test]
    fn counted_tries_run_out_then_the_box_goes_back() {
        let (b, a) = (dt(3, 0), dt(2, 0));
        let committed = Some(Autoboot::boots(Slot::B));
        let mut t = Trial::counted(Slot::B, "1.1", 3);
        assert_eq!(a.states(Some(&t), committed, true), (SlotState::Good, SlotState::Trial { left: 3, done: 0 }));
        assert!(!on_trial(a, Some(&t)));
        for n in 1..=3 {
            t = match boot_step(b, Ok(Some(t.clone())), committed, true, "1.1") {
                BootStep::Count(t) => t,
                other => panic!("boot {n}: {other:?}"),
            };
            assert_eq!((t.tried, t.left()), (n, 3 - n));
            assert!(on_trial(b, Some(&t)));
            assert_eq!(b.states(Some(&t), committed, true).0, SlotState::Trial { left: 3 - n, done: n });
            assert_eq!(b.plan_install(Some(&t)), Err(SlotError::RunningOnTrial(Slot::B)));
        }
        match boot_step(b, Ok(Some(t.clone())), committed, true, "1.1") {
            BootStep::RollBack { record, to: Slot::A, why } => {
                assert_eq!(record, t);
                assert!(why.contains("tried 3 times"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // back on a ([all] now names it): nothing more to do, b failed
        let back = Some(Autoboot::boots(Slot::A));
        assert_eq!(boot_step(a, Ok(Some(t.clone())), back, true, "1.0"), BootStep::Nothing);
        assert_eq!(a.states(Some(&t), back, true), (SlotState::Good, SlotState::Failed { tries: 3 }));
        assert_eq!(a.plan_install(Some(&t)), Ok(Slot::B));
        // a tryboot of the failed slot ([tryboot] names it now) counts nothing,
        // and its health check decides: the next normal boot is a's anyway
        let tried_again = dt(3, 1);
        assert_eq!(boot_step(tried_again, Ok(Some(t.clone())), back, true, "1.1"), BootStep::Nothing);
        assert!(on_trial(tried_again, Some(&t)));
    }

    #[test]
    fn counted_with_nothing_to_go_back_to_keeps_the_running_slot() {
        let b = dt(3, 0);
        let t = Trial {
            tried: 3,
            counted: Some(Counted { fallback: Slot::A, left: 0 }),
            ..Trial::counted(Slot::B, "1.1", 3)
        };
        match boot_step(b, Ok(Some(t)), Some(Autoboot::boots(Slot::B)), false, "1.1") {
            BootStep::Keep { why } => assert!(why.contains("holds no firmware"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// The fallback slot boots while a counted trial has tries left: no
    /// reboot ever (no loop). [all] still naming the slot on trial (a one-off
    /// boot of the fallback): the trial goes on at the next reboot. [all]
    /// naming the fallback (switched back by hand, or an install cut before
    /// its last step): the trial is over.
    #[test]
    fn a_boot_of_the_fallback_never_loops() {
        let a = dt(2, 0);
        let t = Trial {
            tried: 1,
            counted: Some(Counted { fallback: Slot::A, left: 2 }),
            ..Trial::counted(Slot::B, "1.1", 3)
        };
        let committed = Some(Autoboot::boots(Slot::B));
        assert_eq!(boot_step(a, Ok(Some(t.clone())), committed, true, "1.0"), BootStep::Nothing);
        assert_eq!(boot_step(dt(2, 1), Ok(Some(t.clone())), committed, true, "1.0"), BootStep::Nothing);
        assert!(!on_trial(dt(2, 1), Some(&t)), "the fallback is the good slot, tryboot or not");
        assert_eq!(a.states(Some(&t), committed, true).1, SlotState::Trial { left: 2, done: 1 });
        for switched in [Some(Autoboot::boots(Slot::A)), None] {
            let over = match boot_step(a, Ok(Some(t.clone())), switched, true, "1.0") {
                BootStep::TrialOver(over) => over,
                other => panic!("{other:?}"),
            };
            assert_eq!((over.tried, over.left()), (1, 0));
            assert_eq!(a.states(Some(&over), switched, true), (SlotState::Good, SlotState::Failed { tries: 1 }));
            // and the next boot does nothing more
            assert_eq!(boot_step(a, Ok(Some(over)), switched, true, "1.0"), BootStep::Nothing);
        }
        // the install wrote the record but not yet autoboot.txt: never tried
        let cut = Trial::counted(Slot::B, "1.1", 3);
        let still_a = Some(Autoboot::boots(Slot::A));
        match boot_step(a, Ok(Some(cut)), still_a, true, "1.0") {
            BootStep::TrialOver(over) => {
                assert_eq!(a.states(Some(&over), still_a, true).1, SlotState::Failed { tries: 0 })
            }
            other => panic!("{other:?}"),
        }
    }

    /// An unreadable record is treated as a trial of the running slot with no
    /// tries left — when the running slot is [all]'s and the other slot holds
    /// firmware; otherwise it is moved aside. Either way, once.
    #[test]
    fn an_unreadable_record_is_treated_as_exhausted_once() {
        let b = dt(3, 0);
        let committed = Some(Autoboot::boots(Slot::B));
        let bad = Trial::parse(b"{\"slot\":\"b\"");
        let record = match boot_step(b, bad.clone().map(Some), committed, true, "1.1") {
            BootStep::RollBack { record, to: Slot::A, why } => {
                assert!(why.contains("cannot be read"), "{why}");
                record
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(record.counted, Some(Counted { fallback: Slot::A, left: 0 }));
        let back = Some(Autoboot::boots(Slot::A));
        assert_eq!(boot_step(dt(2, 0), Ok(Some(record.clone())), back, true, "1.0"), BootStep::Nothing);
        assert_eq!(dt(2, 0).states(Some(&record), back, true).1, SlotState::Failed { tries: 0 });
        // nothing to go back to, a slot [all] does not name, a tryboot: set aside
        for (booted, autoboot, other) in [(b, committed, false), (b, back, true), (dt(3, 1), committed, true)] {
            assert!(
                matches!(boot_step(booted, bad.clone().map(Some), autoboot, other, "1.1"), BootStep::SetAside { .. }),
                "{booted:?} {autoboot:?} {other}"
            );
        }
        assert_eq!(boot_step(b, Ok(None), committed, true, "1.1"), BootStep::Nothing);
    }
}
