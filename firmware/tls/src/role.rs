//! Certificate roles. `relaybox-ca` marks every certificate it issues with one role in its Extended
//! Key Usage: the TLS purpose the role needs (relay: clientAuth, dispatcher: serverAuth,
//! management client: clientAuth) plus a private key purpose naming the role. Each TLS endpoint
//! accepts only peers of the role it serves; a certificate without any relaybox role (one made by
//! another CA, such as MediaProxy's) only where `[TLS] accept_unmarked_certificates` allows it.
//!
//! The role key purposes live under the UUID arc `2.25.<UUID>` (X.667: anyone may make an OID from
//! a UUID, no registration needed): relaybox's UUID is `142fca40-1408-4015-adc9-0bff257ede58`, and
//! its roles are `.1` relay, `.2` dispatcher, `.3` management.

use std::fmt;

/// The decimal value of relaybox's UUID `142fca40-1408-4015-adc9-0bff257ede58`.
const RELAYBOX_UUID: u128 = 0x142f_ca40_1408_4015_adc9_0bff_257e_de58;

/// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1) and `id-kp-clientAuth` (.2), content octets.
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// A relaybox certificate role; also which files a daemon reads from `certs_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A media relay: the TLS client of the relay link.
    Relay,
    /// A dispatcher: the TLS server of the relay link and of the management port.
    Dispatcher,
    /// A management client (`relaybox sessions`, monitoring): a TLS client of the management port.
    Management,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Relay, Role::Dispatcher, Role::Management];

    /// `relay`, `dispatcher` or `management`: the stem of the `.crt` and `.key` files in
    /// `certs_path`, and the role's name in messages.
    pub fn file_stem(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Dispatcher => "dispatcher",
            Role::Management => "management",
        }
    }

    fn arc(self) -> u128 {
        match self {
            Role::Relay => 1,
            Role::Dispatcher => 2,
            Role::Management => 3,
        }
    }

    /// The role's key purpose OID in dotted form, `2.25.<uuid>.<n>`.
    pub fn oid_text(self) -> String {
        format!("2.25.{RELAYBOX_UUID}.{}", self.arc())
    }

    /// The content octets of the role's key purpose OID (DER without tag and length).
    pub fn oid_der(self) -> Vec<u8> {
        // The first two arcs 2.25 are one subidentifier: 2 * 40 + 25.
        let mut out = Vec::new();
        push_base128(&mut out, 2 * 40 + 25);
        push_base128(&mut out, RELAYBOX_UUID);
        push_base128(&mut out, self.arc());
        out
    }

    /// Whether the role acts as a TLS server (else as a client).
    pub fn is_server(self) -> bool {
        self == Role::Dispatcher
    }

    /// The DER value of the extendedKeyUsage extension (OID 2.5.29.37) for a certificate of this
    /// role: `SEQUENCE { <serverAuth or clientAuth>, <role> }`.
    pub fn extended_key_usage_der(self) -> Vec<u8> {
        let tls = if self.is_server() { SERVER_AUTH } else { CLIENT_AUTH };
        let mut body = der(0x06, tls);
        body.extend(der(0x06, &self.oid_der()));
        der(0x30, &body)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_stem())
    }
}

fn push_base128(out: &mut Vec<u8>, mut v: u128) {
    let mut groups = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        groups.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.extend(groups.iter().rev());
}

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The relaybox role marks a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// Exactly one role.
    Role(Role),
    /// No relaybox role (a certificate made by another CA, e.g. MediaProxy's).
    Unmarked,
    /// More than one role: refused everywhere.
    Several(Vec<Role>),
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Marker::Role(r) => write!(f, "{r}"),
            Marker::Unmarked => f.write_str("unmarked"),
            Marker::Several(roles) => {
                write!(f, "{}", roles.iter().map(|r| r.file_stem()).collect::<Vec<_>>().join("+"))
            }
        }
    }
}

/// The role marks of a certificate (DER), from its extendedKeyUsage.
pub fn certificate_marker(cert: &[u8]) -> Result<Marker, RoleError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| RoleError::Unreadable(format!("{e}")))?;
    let eku = x509.extended_key_usage().map_err(|e| RoleError::Unreadable(format!("extendedKeyUsage: {e}")))?;
    let Some(eku) = eku else { return Ok(Marker::Unmarked) };
    let roles: Vec<Role> =
        Role::ALL.into_iter().filter(|r| eku.value.other.iter().any(|oid| oid.as_bytes() == r.oid_der())).collect();
    Ok(match roles.as_slice() {
        [] => Marker::Unmarked,
        [one] => Marker::Role(*one),
        _ => Marker::Several(roles),
    })
}

/// Why a certificate is refused for its role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate has the {found} role; this port takes {expected} certificates")]
    OtherRole { expected: Role, found: Marker },
    #[error(
        "the certificate carries no relaybox role (made by another CA?); this port takes {expected} certificates \
         ([TLS] accept_unmarked_certificates = no)"
    )]
    Unmarked { expected: Role },
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
}

/// Which peers a TLS endpoint accepts, by the role marked in their certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRole {
    /// The role a peer must have.
    pub role: Role,
    /// Also accept certificates without any relaybox role (`[TLS] accept_unmarked_certificates`).
    /// A certificate marked with another role is refused either way.
    pub accept_unmarked: bool,
}

impl PeerRole {
    /// Only certificates of `role`.
    pub fn strict(role: Role) -> Self {
        PeerRole { role, accept_unmarked: false }
    }

    /// `Ok` with the peer's marker (`Role` or, when allowed, `Unmarked`), or why it is refused.
    pub fn check(&self, cert: &[u8]) -> Result<Marker, RoleError> {
        match certificate_marker(cert)? {
            Marker::Role(r) if r == self.role => Ok(Marker::Role(r)),
            Marker::Unmarked if self.accept_unmarked => Ok(Marker::Unmarked),
            Marker::Unmarked => Err(RoleError::Unmarked { expected: self.role }),
            other => Err(RoleError::OtherRole { expected: self.role, found: other }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_distinct_and_encoded_as_der_wants() {
        let texts: Vec<String> = Role::ALL.iter().map(|r| r.oid_text()).collect();
        assert_eq!(texts[0], "2.25.26832699991591467141303218907094376024.1");
        let ders: Vec<Vec<u8>> = Role::ALL.iter().map(|r| r.oid_der()).collect();
        assert_ne!(ders[0], ders[1]);
        assert_ne!(ders[1], ders[2]);
        // 2.25 is 0x69; the last subidentifier is the role's arc; no other byte ends one.
        assert_eq!(ders[0][0], 0x69);
        assert_eq!(*ders[2].last().unwrap(), 3);
        assert!(ders[0][1..ders[0].len() - 2].iter().all(|b| b & 0x80 != 0));
        assert!(ders[0][ders[0].len() - 2] & 0x80 == 0);
        // Small values encode as one byte, larger ones with continuation bits.
        let mut v = Vec::new();
        push_base128(&mut v, 113_549);
        assert_eq!(v, [0x86, 0xf7, 0x0d]);
        let long = der(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
    }

    #[test]
    fn extended_key_usage_pairs_the_tls_purpose_with_the_role() {
        let eku = Role::Dispatcher.extended_key_usage_der();
        assert_eq!(eku[0], 0x30);
        assert_eq!(&eku[2..4], &[0x06, 0x08]);
        assert_eq!(&eku[4..12], SERVER_AUTH);
        assert_eq!(&eku[12..14], &[0x06, Role::Dispatcher.oid_der().len() as u8]);
        assert_eq!(&Role::Relay.extended_key_usage_der()[4..12], CLIENT_AUTH);
        assert_eq!(&Role::Management.extended_key_usage_der()[4..12], CLIENT_AUTH);
    }
}
