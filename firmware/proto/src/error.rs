use alloc::string::String;
use core::fmt;

/// Why a piece of input was rejected. Every parser in this crate returns this
/// type; none of them panics on any input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The input is not valid UTF-8.
    NotUtf8,
    /// A frame or line exceeded the configured size limit.
    TooLong { limit: usize },
    /// The first line is not a known command.
    UnknownCommand(String),
    /// A header line has no `": "` separator.
    MalformedHeader(String),
    /// A header appeared twice in one request.
    DuplicateHeader(String),
    /// A mandatory header is missing.
    MissingHeader(&'static str),
    /// A header's value could not be parsed.
    InvalidValue { header: &'static str, value: String },
    /// A `media` item is malformed.
    InvalidMedia(String),
    /// The `<command> <seq>` or `<seq> <payload>` framing is broken.
    InvalidFraming(String),
    /// A JSON payload could not be decoded.
    InvalidJson(String),
    /// Too many headers or media items.
    TooMany { what: &'static str, limit: usize },
    /// An NTP reply that does not count, and why.
    Ntp(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotUtf8 => write!(f, "input is not valid UTF-8"),
            ParseError::TooLong { limit } => write!(f, "input longer than {limit} bytes"),
            ParseError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            ParseError::MalformedHeader(l) => write!(f, "malformed header line {l:?}"),
            ParseError::DuplicateHeader(h) => write!(f, "duplicate header {h:?}"),
            ParseError::MissingHeader(h) => write!(f, "missing mandatory header {h:?}"),
            ParseError::InvalidValue { header, value } => {
                write!(f, "invalid value {value:?} for header {header:?}")
            }
            ParseError::InvalidMedia(m) => write!(f, "invalid media item {m:?}"),
            ParseError::InvalidFraming(l) => write!(f, "invalid framing {l:?}"),
            ParseError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            ParseError::TooMany { what, limit } => write!(f, "more than {limit} {what}"),
            ParseError::Ntp(why) => write!(f, "NTP reply refused: {why}"),
        }
    }
}

impl core::error::Error for ParseError {}
