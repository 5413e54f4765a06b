//! Firmware versions: one to six dot-separated decimal numbers
//! (`0.1.0`, `0.1.0.20250301120000`), compared number by number, a missing
//! number counting as 0 (`1.2` = `1.2.0`). Nothing else: no labels whose
//! order would need rules of their own.

use std::cmp::Ordering;
use std::fmt;

/// Longest version accepted (the manifest and the status page show it).
const MAX_LEN: usize = 64;
const MAX_PARTS: usize = 6;

#[derive(Debug, Clone)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version (1 to 6 dot-separated numbers, e.g. 1.4.0)")]
pub struct BadVersion(pub String);

impl std::str::FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.chars().take(MAX_LEN).collect());
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(bad());
        }
        let parts: Vec<u64> = s
            .split('.')
            .map(|p| if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) { None } else { p.parse().ok() })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        if parts.len() > MAX_PARTS {
            return Err(bad());
        }
        Ok(Version { parts, text: s.to_string() })
    }
}

impl Version {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn part(&self, i: usize) -> u64 {
        self.parts.get(i).copied().unwrap_or(0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        (0..n).map(|i| self.part(i).cmp(&other.part(i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.2") == v("1.2.0"));
        assert!(v("0.1.0.20250301120000") > v("0.1.0.20250228235959"));
        assert!(v("0.1.0.1") > v("0.1.0"));
        assert_eq!(v("2.0").to_string(), "2.0");
        for bad in ["", "1..2", "1.a", "v1.0", "1.0-rc1", "1.2.3.4.5.6.7", " 1.0", "99999999999999999999999"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
