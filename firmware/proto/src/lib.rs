//! Wire codecs for relaybox, shared by the dispatcher and the relay.
//!
//! This crate owns every byte format that crosses a socket between relaybox
//! parts and MediaProxy-compatible peers: the proxy module's request/reply
//! protocol ([`module`]), the relay link framing ([`link`]), the management
//! commands ([`mgmt`]), the session-statistics JSON ([`stats`]) and the requests
//! that end a dialog through the proxy's management interface ([`mi`]). It does no
//! I/O, keeps no clocks and never panics on input: every parser returns a
//! typed [`ParseError`]. It is `no_std` + `alloc` so it also fits a fuzzer or
//! a bare-metal build.
#![no_std]
#![forbid(unsafe_code)]
// Requests are built once per SIP message and moved, never stored in bulk.
#![allow(clippy::large_enum_variant)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod error;
pub mod headers;
pub mod link;
pub mod media;
pub mod mgmt;
pub mod mi;
pub mod module;
pub mod sntp;
pub mod stats;

pub use error::ParseError;
pub use headers::{FrameDecoder, Headers};
pub use media::{Direction, MediaItem, MediaType};
pub use module::{
    CSeq, ModuleFrame, ModuleReply, ModuleRequest, PartyType, RemoveRequest, SignalingIp, SignalingJson, UpdateRequest,
};
pub use stats::{RelayStatus, SessionStats, StreamStats, StreamStatus, Summary};

/// Line terminator on every relaybox/MediaProxy text protocol.
pub const CRLF: &str = "\r\n";
