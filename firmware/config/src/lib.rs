//! relaybox configuration (being written): MediaProxy's `config.ini` parsed
//! once into typed settings. Also owns the TLS *passport* (a pattern over a
//! certificate subject), which is pure data and shared by the TLS code.

mod passport;

pub use passport::{Passport, PassportError, SubjectAttr};
