//! Passports: restrictions on a TLS peer's certificate subject, as MediaProxy
//! writes them: `O:Example Ltd, CN:*relay`. A `*` at the start or the end of
//! a value is a wildcard.

use std::fmt;

/// A certificate subject attribute a passport can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectAttr {
    O,
    OU,
    CN,
    C,
    L,
    ST,
    Email,
}

impl SubjectAttr {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "O" => SubjectAttr::O,
            "OU" => SubjectAttr::OU,
            "CN" => SubjectAttr::CN,
            "C" => SubjectAttr::C,
            "L" => SubjectAttr::L,
            "ST" => SubjectAttr::ST,
            "EMAIL" | "E" | "EMAILADDRESS" => SubjectAttr::Email,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectAttr::O => "O",
            SubjectAttr::OU => "OU",
            SubjectAttr::CN => "CN",
            SubjectAttr::C => "C",
            SubjectAttr::L => "L",
            SubjectAttr::ST => "ST",
            SubjectAttr::Email => "EMAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Any,
}

impl Pattern {
    fn parse(v: &str) -> Self {
        let starts = v.starts_with('*');
        let ends = v.len() > 1 && v.ends_with('*');
        let inner = v.trim_start_matches('*').trim_end_matches('*').to_string();
        match (starts, ends) {
            _ if inner.is_empty() && starts => Pattern::Any,
            (true, true) => Pattern::Contains(inner),
            (true, false) => Pattern::Suffix(inner),
            (false, true) => Pattern::Prefix(inner),
            (false, false) => Pattern::Exact(v.to_string()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(p) => value == p,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(p) => value.ends_with(p.as_str()),
            Pattern::Contains(p) => value.contains(p.as_str()),
            Pattern::Any => true,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(p) => write!(f, "{p}"),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Suffix(p) => write!(f, "*{p}"),
            Pattern::Contains(p) => write!(f, "*{p}*"),
            Pattern::Any => write!(f, "*"),
        }
    }
}

/// Splits at commas, except `\,` which (as in MediaProxy) is a comma inside
/// a value: `O:Example\, Inc., CN:relay`.
fn split_items(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let current = items.last_mut().expect("never empty");
        match c {
            '\\' if chars.peek() == Some(&',') => {
                current.push(',');
                chars.next();
            }
            ',' => items.push(String::new()),
            c => current.push(c),
        }
    }
    items
}

/// A parsed passport: every listed attribute must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passport {
    rules: Vec<(SubjectAttr, Pattern)>,
}

/// Why a passport string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassportError {
    #[error("passport item {0:?} is not ATTR:value")]
    Malformed(String),
    #[error("passport attribute {0:?} is not one of O, OU, CN, C, L, ST, EMAIL")]
    UnknownAttribute(String),
    #[error("passport is empty")]
    Empty,
    #[error("passport contains the control character U+{:04X}; a passport is one line of printable text", u32::from(*.0))]
    ControlCharacter(char),
}

impl Passport {
    pub fn parse(s: &str) -> Result<Self, PassportError> {
        // Tabs, line breaks, NUL, DEL and the C1 controls: no certificate
        // subject needs them, a log line or an INI file cannot carry them.
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(PassportError::ControlCharacter(c));
        }
        let mut rules = Vec::new();
        for item in split_items(s).iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let (attr, value) = item.split_once(':').ok_or_else(|| PassportError::Malformed(item.to_string()))?;
            let attr = SubjectAttr::parse(attr).ok_or_else(|| PassportError::UnknownAttribute(attr.trim().into()))?;
            let value = value.trim();
            if value.is_empty() {
                return Err(PassportError::Malformed(item.to_string()));
            }
            rules.push((attr, Pattern::parse(value)));
        }
        if rules.is_empty() {
            return Err(PassportError::Empty);
        }
        Ok(Passport { rules })
    }

    /// `None` when the subject satisfies every rule, else a sentence naming
    /// the first attribute that does not match (for the log line).
    pub fn mismatch(&self, subject: &[(SubjectAttr, String)]) -> Option<String> {
        for (attr, pattern) in &self.rules {
            let values: Vec<&str> = subject.iter().filter(|(a, _)| a == attr).map(|(_, v)| v.as_str()).collect();
            if !values.iter().any(|v| pattern.matches(v)) {
                return Some(if values.is_empty() {
                    format!("subject has no {} attribute, passport wants {}:{}", attr.as_str(), attr.as_str(), pattern)
                } else {
                    format!(
                        "subject {}={:?} does not match passport {}:{}",
                        attr.as_str(),
                        values.join(","),
                        attr.as_str(),
                        pattern
                    )
                });
            }
        }
        None
    }

    pub fn matches(&self, subject: &[(SubjectAttr, String)]) -> bool {
        self.mismatch(subject).is_none()
    }
}

impl fmt::Display for Passport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, p)) in self.rules.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{}:{}", a.as_str(), p.to_string().replace(',', "\\,"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subj(o: &str, cn: &str) -> Vec<(SubjectAttr, String)> {
        vec![(SubjectAttr::O, o.into()), (SubjectAttr::CN, cn.into())]
    }

    #[test]
    fn spec_example() {
        let p = Passport::parse("O:Example Ltd, CN:*relay").unwrap();
        assert!(p.matches(&subj("Example Ltd", "edge-relay")));
        assert!(p.matches(&subj("Example Ltd", "relay")));
        assert!(!p.matches(&subj("Example Ltd", "relay-2")));
        assert!(!p.matches(&subj("Other", "relay")));
        let why = p.mismatch(&subj("Other", "relay")).unwrap();
        assert!(why.contains("O=") && why.contains("Example Ltd"), "{why}");
        assert_eq!(p.to_string(), "O:Example Ltd, CN:*relay");
    }

    #[test]
    fn wildcards_and_errors() {
        let p = Passport::parse("CN:relay*").unwrap();
        assert!(p.matches(&subj("x", "relay7")));
        assert!(!p.matches(&subj("x", "myrelay")));
        assert!(Passport::parse("CN:*lay*").unwrap().matches(&subj("x", "relay7")));
        assert!(Passport::parse("CN:*").unwrap().matches(&subj("x", "anything")));
        assert!(!Passport::parse("OU:*").unwrap().matches(&subj("x", "y")), "a missing attribute never matches");
        assert_eq!(Passport::parse(""), Err(PassportError::Empty));
        assert!(matches!(Passport::parse("XX:y"), Err(PassportError::UnknownAttribute(_))));
        assert!(matches!(Passport::parse("CN"), Err(PassportError::Malformed(_))));
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["CN:re\nlay", "CN:relay\r", "CN:re\0lay", "O:a,\tCN:b", "CN:\u{7f}", "CN:x\u{85}", "CN:\u{1b}[31m"]
        {
            let c = bad.chars().find(|c| c.is_control()).unwrap();
            assert_eq!(Passport::parse(bad), Err(PassportError::ControlCharacter(c)), "{bad:?}");
        }
        let e = Passport::parse("CN:a\u{7}b").unwrap_err().to_string();
        assert_eq!(e, "passport contains the control character U+0007; a passport is one line of printable text");
        assert!(Passport::parse("O:Zürich AG, CN:*relay").is_ok(), "non-ASCII letters are fine");
    }

    #[test]
    fn escaped_comma_is_part_of_the_value() {
        let p = Passport::parse(r"O:Example\, Inc., CN:relay*").unwrap();
        assert!(p.matches(&subj("Example, Inc.", "relay1")));
        assert!(!p.matches(&subj("Example", "relay1")));
        assert_eq!(p.to_string(), r"O:Example\, Inc., CN:relay*");
        assert_eq!(Passport::parse(&p.to_string()).unwrap(), p);
    }
}
