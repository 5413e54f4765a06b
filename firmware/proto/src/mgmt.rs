//! The dispatcher's management interface: one command per line, one line
//! back.

use alloc::string::{String, ToString};

use crate::ParseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgmtCommand {
    /// JSON array, one summary object per connected relay.
    Summary,
    /// JSON array of all sessions of all relays.
    Sessions,
    Version,
    /// `quit` or `exit`: close the connection.
    Quit,
}

impl MgmtCommand {
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        match line.trim() {
            "summary" => Ok(MgmtCommand::Summary),
            "sessions" => Ok(MgmtCommand::Sessions),
            "version" => Ok(MgmtCommand::Version),
            "quit" | "exit" => Ok(MgmtCommand::Quit),
            other => Err(ParseError::UnknownCommand(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MgmtCommand::Summary => "summary",
            MgmtCommand::Sessions => "sessions",
            MgmtCommand::Version => "version",
            MgmtCommand::Quit => "quit",
        }
    }
}

/// The reply to anything the interface does not understand.
pub const MGMT_ERROR: &str = "error\r\n";

/// Frames a one-line reply.
pub fn reply_line(body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 2);
    s.push_str(body);
    s.push_str(crate::CRLF);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(MgmtCommand::parse("summary").unwrap(), MgmtCommand::Summary);
        assert_eq!(MgmtCommand::parse("sessions\r").unwrap(), MgmtCommand::Sessions);
        assert_eq!(MgmtCommand::parse("exit").unwrap(), MgmtCommand::Quit);
        assert_eq!(MgmtCommand::parse("version").unwrap().as_str(), "version");
        assert!(MgmtCommand::parse("rm -rf").is_err());
        assert_eq!(reply_line("[]"), "[]\r\n");
    }
}
