//! Where a setting went wrong: file, line, section and option, then why.

use std::fmt;

/// A configuration file that cannot be used as it is.
///
/// Displays as `config.ini:12: [Relay] port_range: start must be even (got 40001)`;
/// the parts that do not apply (no line for an unreadable file, no option for
/// a bad section header) are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the caller named it (or the `origin` given to `Config::parse`).
    pub origin: String,
    /// 1-based line number.
    pub line: Option<usize>,
    pub section: Option<String>,
    pub option: Option<String>,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn at(origin: &str, line: Option<usize>, reason: impl Into<String>) -> Self {
        ConfigError { origin: origin.to_string(), line, section: None, option: None, reason: reason.into() }
    }

    pub(crate) fn in_section(mut self, section: &str) -> Self {
        self.section = Some(section.to_string());
        self
    }

    pub(crate) fn for_option(mut self, option: &str) -> Self {
        self.option = Some(option.to_string());
        self
    }
}

fn write_location(
    f: &mut fmt::Formatter<'_>,
    origin: &str,
    line: Option<usize>,
    section: Option<&str>,
    option: Option<&str>,
) -> fmt::Result {
    write!(f, "{origin}")?;
    if let Some(line) = line {
        write!(f, ":{line}")?;
    }
    write!(f, ": ")?;
    if let Some(section) = section {
        write!(f, "[{section}] ")?;
    }
    if let Some(option) = option {
        write!(f, "{option}: ")?;
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.origin, self.line, self.section.as_deref(), self.option.as_deref())?;
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Something in the file that relaybox accepted but the operator should hear
/// about (an old MediaProxy option name, for instance). The daemons log these
/// at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub origin: String,
    pub line: usize,
    pub section: String,
    pub option: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.origin, Some(self.line), Some(&self.section), Some(&self.option))?;
        write!(f, "{}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_every_known_part() {
        let e = ConfigError::at("config.ini", Some(12), "start must be even (got 40001)")
            .in_section("Relay")
            .for_option("port_range");
        assert_eq!(e.to_string(), "config.ini:12: [Relay] port_range: start must be even (got 40001)");
        let e = ConfigError::at("/etc/relaybox/config.ini", None, "cannot read the file: No such file");
        assert_eq!(e.to_string(), "/etc/relaybox/config.ini: cannot read the file: No such file");
        let e = ConfigError::at("c.ini", Some(3), "unknown section [Foo]");
        assert_eq!(e.to_string(), "c.ini:3: unknown section [Foo]");
    }
}
