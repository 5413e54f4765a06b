//! The A/B slots of an EFI box (the PC and both QEMU boards), as
//! systemd-boot sees them: one Boot Loader Specification entry per slot in
//! `loader/entries/` on the EFI system partition, named
//! `relaybox-<generation>-<slot>[+<left>[-<done>]].conf`, and the slot's
//! files in `slot-<slot>/`.
//!
//! - A new slot's entry gets a generation above every other entry's and a
//!   boot counter `+N` (`[Update] boot_tries`). systemd-boot sorts entries
//!   whose counter reached `+0` last and the others by name, highest first
//!   (the generation, compared as a number), and `loader.conf` says
//!   `default relaybox-*`: the new slot boots next. Before each boot of it
//!   systemd-boot itself renames the entry (`+3` → `+2-1` → `+1-2` →
//!   `+0-3`), so a slot that never gets marked good — it hangs, panics,
//!   or its health check fails and reboots — is tried N times and then
//!   sorted last: the old slot boots again.
//! - `relaybox update mark-good`, run by init once the box is healthy,
//!   renames the running slot's entry to drop its counter, which makes it
//!   the slot the box keeps.
//! - A failed update is visible in the entries: the other slot's entry is
//!   newer than the running one's and has no tries left.
//!
//! Everything here works on entry file names; `crate::install` does the
//! file system side.

use std::cmp::Reverse;
use std::fmt;

use crate::slot::{Slot, SlotError};

pub const PREFIX: &str = "relaybox-";
pub const SUFFIX: &str = ".conf";

/// A boot counter: tries left, and tries done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tries {
    pub left: u32,
    pub done: u32,
}

/// One of our loader entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub generation: u64,
    pub slot: Slot,
    /// None: marked good (no counter).
    pub tries: Option<Tries>,
}

impl Entry {
    /// `relaybox-7-b+2-1.conf` → generation 7, slot b, 2 left, 1 done.
    /// Other names (files that are not ours) give None.
    pub fn parse(file_name: &str) -> Option<Entry> {
        let stem = file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (generation, slot) = base.split_once('-')?;
        if generation.is_empty() || !generation.bytes().all(|b| b.is_ascii_digit()) || generation.len() > 18 {
            return None;
        }
        let slot: Slot = slot.parse().ok()?;
        let number = |s: &str| -> Option<u32> {
            if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        let tries = match counter {
            None => None,
            Some(c) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (number(l)?, number(d)?),
                    None => (number(c)?, 0),
                };
                Some(Tries { left, done })
            }
        };
        Some(Entry { generation: generation.parse().ok()?, slot, tries })
    }

    pub fn file_name(&self) -> String {
        let counter = match self.tries {
            None => String::new(),
            Some(Tries { left, done: 0 }) => format!("+{left}"),
            Some(Tries { left, done }) => format!("+{left}-{done}"),
        };
        format!("{PREFIX}{}-{}{counter}{SUFFIX}", self.generation, self.slot)
    }

    /// No tries left: systemd-boot sorts it last and never picks it while
    /// another entry is there.
    pub fn is_bad(&self) -> bool {
        matches!(self.tries, Some(Tries { left: 0, .. }))
    }

    /// Has a counter: not yet marked good.
    pub fn on_trial(&self) -> bool {
        self.tries.is_some()
    }

    /// The entry's text: the slot's kernel and initramfs, the command line
    /// from the slot's `cmdline.txt` plus `relaybox.slot=`, which tells
    /// the running system which slot it is.
    pub fn text(&self, version: &str, cmdline: &str) -> String {
        let s = self.slot;
        format!(
            "title relaybox {version} (slot {s})\nversion {version}\nlinux /slot-{s}/vmlinuz\ninitrd /slot-{s}/initrd.img\noptions {} relaybox.slot={s}\n",
            cmdline.trim()
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The entries found in `loader/entries/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries(pub Vec<Entry>);

/// What marking the running slot good takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkGood {
    /// Rename `from` to `to`.
    Rename {
        from: String,
        to: String,
    },
    AlreadyGood,
}

/// What an install does to the entries, in this order: remove `remove`
/// (the target slot stops being bootable before a byte of it changes),
/// write the slot's files, then write `entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    pub target: Slot,
    pub remove: Vec<String>,
    pub entry: Entry,
}

impl Entries {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Entries {
        Entries(names.into_iter().filter_map(Entry::parse).collect())
    }

    /// The order systemd-boot (252 and later) puts our entries in: entries
    /// with no tries left last, the rest by name from the highest (the
    /// generation is compared as a number, then the slot letter, then the
    /// counter: more tries left first, fewer done first).
    pub fn boot_order(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.0.iter().collect();
        v.sort_by_key(|e| {
            let (left, done) = e.tries.map_or((u32::MAX, 0), |t| (t.left, t.done));
            (e.is_bad(), Reverse(e.generation), Reverse(e.slot), Reverse(left), done)
        });
        v
    }

    /// The entry systemd-boot boots next.
    pub fn next_boot(&self) -> Option<&Entry> {
        self.boot_order().into_iter().next()
    }

    /// The newest entry of a slot (there is one, unless an install was cut
    /// short or someone copied files by hand).
    pub fn of(&self, slot: Slot) -> Option<&Entry> {
        self.0.iter().filter(|e| e.slot == slot).max_by_key(|e| e.generation)
    }

    /// Installing into the slot that is not running: refused while the
    /// running slot is itself on trial (it may still roll back, and the
    /// other slot is then the only good one).
    pub fn plan_install(&self, running: Slot, tries: u32) -> Result<InstallPlan, SlotError> {
        let current = self.of(running).ok_or(SlotError::NoEntry(running))?;
        if current.on_trial() {
            return Err(SlotError::RunningOnTrial(running));
        }
        let target = running.other();
        let remove = self.0.iter().filter(|e| e.slot == target).map(Entry::file_name).collect();
        let generation = self.0.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        Ok(InstallPlan {
            target,
            remove,
            entry: Entry { generation, slot: target, tries: Some(Tries { left: tries, done: 0 }) },
        })
    }

    /// Marking the running slot good: its entry loses its counter.
    pub fn plan_mark_good(&self, running: Slot) -> Result<MarkGood, SlotError> {
        let current = self.of(running).ok_or(SlotError::NoEntry(running))?;
        match current.tries {
            None => Ok(MarkGood::AlreadyGood),
            Some(_) => Ok(MarkGood::Rename {
                from: current.file_name(),
                to: Entry { tries: None, ..current.clone() }.file_name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str) -> Entry {
        Entry::parse(name).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn names_round_trip() {
        for name in ["relaybox-1-a.conf", "relaybox-12-b+3.conf", "relaybox-7-b+2-1.conf", "relaybox-7-b+0-3.conf"] {
            assert_eq!(e(name).file_name(), name);
        }
        assert_eq!(e("relaybox-7-b+2-1.conf").tries, Some(Tries { left: 2, done: 1 }));
        assert!(e("relaybox-7-b+0-3.conf").is_bad());
        for other in [
            "relaybox.conf",
            "relaybox-a.conf",
            "relaybox-1-c.conf",
            "relaybox-1-a+x.conf",
            "debian.conf",
            "relaybox-1-a.conf.tmp",
            "relaybox--1-a.conf",
        ] {
            assert_eq!(Entry::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_new_slot_boots_first_until_its_tries_run_out() {
        let good = Entries::from_names(["relaybox-1-a.conf"]);
        let plan = good.plan_install(Slot::A, 3).unwrap();
        assert_eq!(plan.target, Slot::B);
        assert_eq!(plan.entry.file_name(), "relaybox-2-b+3.conf");
        // systemd-boot's renames, one per boot of slot b
        for (names, next) in [
            (["relaybox-1-a.conf", "relaybox-2-b+3.conf"], "relaybox-2-b+3.conf"),
            (["relaybox-1-a.conf", "relaybox-2-b+2-1.conf"], "relaybox-2-b+2-1.conf"),
            (["relaybox-1-a.conf", "relaybox-2-b+1-2.conf"], "relaybox-2-b+1-2.conf"),
            (["relaybox-1-a.conf", "relaybox-2-b+0-3.conf"], "relaybox-1-a.conf"),
        ] {
            assert_eq!(Entries::from_names(names).next_boot().unwrap().file_name(), next);
        }
        // generations compare as numbers, not as text
        let order = Entries::from_names(["relaybox-9-a.conf", "relaybox-10-b.conf"]);
        assert_eq!(order.next_boot().unwrap().file_name(), "relaybox-10-b.conf");
    }

    #[test]
    fn mark_good_and_the_rules_of_an_install() {
        let trial = Entries::from_names(["relaybox-1-a.conf", "relaybox-2-b+2-1.conf"]);
        assert_eq!(
            trial.plan_mark_good(Slot::B).unwrap(),
            MarkGood::Rename { from: "relaybox-2-b+2-1.conf".into(), to: "relaybox-2-b.conf".into() }
        );
        assert_eq!(trial.plan_mark_good(Slot::A).unwrap(), MarkGood::AlreadyGood);
        // the running slot on trial: the other one is the only good one
        assert_eq!(trial.plan_install(Slot::B, 3), Err(SlotError::RunningOnTrial(Slot::B)));
        // back on a after a failed b: b is overwritten with a newer generation
        let failed = Entries::from_names(["relaybox-1-a.conf", "relaybox-2-b+0-3.conf"]);
        let plan = failed.plan_install(Slot::A, 3).unwrap();
        assert_eq!(plan.remove, vec!["relaybox-2-b+0-3.conf".to_string()]);
        assert_eq!(plan.entry.file_name(), "relaybox-3-b+3.conf");
        // a slot booted without an entry of its own (files copied by hand)
        assert_eq!(
            Entries::from_names(["relaybox-1-a.conf"]).plan_install(Slot::B, 3),
            Err(SlotError::NoEntry(Slot::B))
        );
        // entries of one generation are for one slot only; the text names it
        let text = plan.entry.text("1.2.0", "console=ttyS0 quiet\n");
        assert!(
            text.contains("linux /slot-b/vmlinuz\n") && text.ends_with("options console=ttyS0 quiet relaybox.slot=b\n"),
            "{text}"
        );
    }
}
