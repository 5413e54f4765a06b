//! relaybox-ca owns the operator's side of the relay <-> dispatcher PKI (SPEC section 2): a small
//! certificate authority kept in one directory (`ca.pem`, `ca.key` with mode 0600, `index.json` with
//! the issued and revoked serials, `crl.pem`), certificates for relays, dispatchers and management
//! clients (each marked with its role, random serials), signed CRLs, SHA-256 fingerprints, and the
//! `certs_path` layout that MediaProxy-style daemons read (`ca.pem`, `crl.pem`, `relay.crt`/`.key`,
//! `dispatcher.crt`/`.key`, `management.crt`/`.key`). Every certificate it issues carries exactly
//! one relaybox role in its Extended Key Usage (the marks `relaybox-tls` defines and checks), so a
//! relay's certificate cannot act as a dispatcher or a management client. Everything is done in-process with rcgen (ring); it never shells out to
//! openssl. It does not build TLS configurations or check peers: that is `relaybox-tls`, which must
//! not depend on this crate except in its tests.

#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DistinguishedName, DnType,
    DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
pub use relaybox_tls::Role;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How long a CRL written by [`CertificateAuthority::crl_pem`] stays current (its `nextUpdate`).
/// Re-run `relaybox-ca crl` before then; rustls does not enforce it, other TLS stacks may.
pub const CRL_VALIDITY_DAYS: u32 = 365;
/// Default lifetime of a new CA certificate.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of an issued certificate.
pub const DEFAULT_CERT_DAYS: u32 = 825;

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_INDEX_FILE: &str = "index.json";
pub const CRL_FILE: &str = "crl.pem";

const OID_EMAIL: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];
const OID_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];

/// Sets the usages of an end-entity certificate: a role's mark (its TLS purpose and its relaybox
/// key purpose, written as a custom extension because rcgen's OIDs cannot hold the UUID arc), or,
/// with `None`, what other CAs write (serverAuth + clientAuth, no role).
fn set_usages(params: &mut CertificateParams, role: Option<Role>) {
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.custom_extensions.retain(|e| !e.oid_components().eq(OID_EXTENDED_KEY_USAGE.iter().copied()));
    match role {
        Some(role) => {
            params.extended_key_usages = Vec::new();
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(OID_EXTENDED_KEY_USAGE, role.extended_key_usage_der()));
        }
        None => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.use_authority_key_identifier_extension = true;
}
/// Certificates are valid from a little before "now" so that peers with a slow clock accept them.
const BACKDATE: Duration = Duration::hours(1);

/// Everything that can go wrong in the CA. Errors that concern a file name it.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("invalid subject: {0}")]
    Subject(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("serial {0} was not issued by this CA")]
    UnknownSerial(String),
    #[error("{}: a CA already exists there", path.display())]
    AlreadyExists { path: PathBuf },
}

/// A certificate subject. Only `cn` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub cn: String,
    pub o: Option<String>,
    pub ou: Option<String>,
    pub c: Option<String>,
    pub l: Option<String>,
    pub st: Option<String>,
    pub email: Option<String>,
}

impl Subject {
    /// A subject with only a common name.
    pub fn new(cn: impl Into<String>) -> Self {
        Subject { cn: cn.into(), ..Subject::default() }
    }

    /// The same subject with an organization.
    pub fn with_org(mut self, o: impl Into<String>) -> Self {
        self.o = Some(o.into());
        self
    }

    /// The same subject with an organizational unit.
    pub fn with_ou(mut self, ou: impl Into<String>) -> Self {
        self.ou = Some(ou.into());
        self
    }

    fn fields(&self) -> [(&'static str, Option<&str>); 7] {
        [
            ("C", self.c.as_deref()),
            ("ST", self.st.as_deref()),
            ("L", self.l.as_deref()),
            ("O", self.o.as_deref()),
            ("OU", self.ou.as_deref()),
            ("CN", Some(self.cn.as_str())),
            ("EMAIL", self.email.as_deref()),
        ]
    }

    fn distinguished_name(&self) -> Result<DistinguishedName, CaError> {
        if self.cn.trim().is_empty() {
            return Err(CaError::Subject("the common name (CN) is empty".into()));
        }
        let mut dn = DistinguishedName::new();
        for (attr, value) in self.fields() {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return Err(CaError::Subject(format!("{attr} is empty")));
            }
            if value.contains(',') && attr != "CN" && attr != "EMAIL" {
                // Passports use ',' to separate items; a value with a comma cannot be matched.
                return Err(CaError::Subject(format!("{attr}={value:?}: a passport cannot match a value with ','")));
            }
            match attr {
                "C" => {
                    if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(CaError::Subject(format!("C={value:?} is not a two-letter country code")));
                    }
                    let v = rcgen::PrintableString::try_from(value.to_ascii_uppercase())
                        .map_err(|e| CaError::Subject(format!("C={value:?}: {e}")))?;
                    dn.push(DnType::CountryName, DnValue::PrintableString(v));
                }
                "ST" => dn.push(DnType::StateOrProvinceName, value),
                "L" => dn.push(DnType::LocalityName, value),
                "O" => dn.push(DnType::OrganizationName, value),
                "OU" => dn.push(DnType::OrganizationalUnitName, value),
                "CN" => dn.push(DnType::CommonName, value),
                _ => {
                    let v = rcgen::Ia5String::try_from(value.to_string())
                        .map_err(|e| CaError::Subject(format!("EMAIL={value:?}: {e}")))?;
                    dn.push(DnType::CustomDnType(OID_EMAIL.to_vec()), DnValue::Ia5String(v));
                }
            }
        }
        Ok(dn)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (attr, value) in self.fields() {
            if let Some(v) = value {
                if !first {
                    write!(f, ", ")?;
                }
                first = false;
                write!(f, "{attr}={v}")?;
            }
        }
        Ok(())
    }
}

/// A certificate issued by the CA, with its private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Upper-case hex, no separators, no leading zero bytes (the form `revoke` takes).
    pub serial_hex: String,
}

/// What `index.json` remembers about an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedRecord {
    pub serial: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    pub fingerprint: String,
}

/// What `index.json` remembers about a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedRecord {
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    issued: Vec<IssuedRecord>,
    revoked: Vec<RevokedRecord>,
}

/// A certificate authority: its certificate and key, and the list of what it issued and revoked.
pub struct CertificateAuthority {
    cert_pem: String,
    /// rcgen's view of the CA certificate, used as the issuer when signing.
    issuer: rcgen::Certificate,
    key: KeyPair,
    index: Index,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issued", &self.index.issued.len())
            .field("revoked", &self.index.revoked.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA (ECDSA P-256), valid for `days` days.
    pub fn create(subject: &Subject, days: u32) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = subject.distinguished_name()?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(days.max(1)));
        params.serial_number = Some(random_serial()?);
        let issuer = params.self_signed(&key)?;
        Ok(CertificateAuthority { cert_pem: issuer.pem(), issuer, key, index: Index::default() })
    }

    /// Reads a CA directory written by [`save`](Self::save). `index.json` may be missing (an
    /// imported CA); `ca.key` must not be readable by group or others.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let index_path = dir.join(CA_INDEX_FILE);
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let mode = fs::metadata(&key_path).map_err(|source| io_err(&key_path, source))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(bad(&key_path, format!("is readable by others (mode {:04o}); run chmod 600", mode & 0o777)));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, format!("not a private key: {e}")))?;
        let der = pem_der(&cert_pem, "CERTIFICATE").map_err(|reason| bad(&cert_path, reason))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(&cert_path, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(bad(&cert_path, "is not a CA certificate (basicConstraints CA:FALSE)".into()));
        }
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(bad(&key_path, format!("does not belong to the certificate in {}", cert_path.display())));
        }
        let mut params = CertificateParams::from_ca_cert_der(&der.clone().into())
            .map_err(|e| bad(&cert_path, format!("cannot use as issuer: {e}")))?;
        if params.key_usages.is_empty() {
            // A CA without a keyUsage extension may sign CRLs; tell rcgen so.
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        // Re-signing only gives rcgen an issuer handle (name, key id, key usages); ca.pem is kept as is.
        let issuer = params.self_signed(&key)?;
        let index = match fs::read_to_string(&index_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| bad(&index_path, format!("invalid: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(source) => return Err(io_err(&index_path, source)),
        };
        Ok(CertificateAuthority { cert_pem, issuer, key, index })
    }

    /// Writes `ca.pem`, `ca.key` (0600), `index.json` and the current `crl.pem` into `dir`
    /// (created with mode 0700 when missing). Each file is replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        create_dir(dir, 0o700)?;
        write_file(&dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        let index = serde_json::to_string_pretty(&self.index).map_err(|e| CaError::Parse(e.to_string()))?;
        write_file(&dir.join(CA_INDEX_FILE), format!("{index}\n").as_bytes(), 0o644)?;
        write_file(&dir.join(CRL_FILE), self.crl_pem()?.as_bytes(), 0o644)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's own subject.
    pub fn subject(&self) -> Result<Subject, CaError> {
        Ok(cert_info(&self.cert_pem)?.subject_fields)
    }

    /// Certificates issued so far (from `index.json`).
    pub fn issued(&self) -> &[IssuedRecord] {
        &self.index.issued
    }

    /// Revocations so far.
    pub fn revoked(&self) -> &[RevokedRecord] {
        &self.index.revoked
    }

    /// Issues a certificate of `role` valid from now for `days` days.
    pub fn issue(&mut self, role: Role, subject: &Subject, days: u32) -> Result<IssuedCert, CaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(Some(role), subject, now - BACKDATE, now + Duration::days(i64::from(days.max(1))))
    }

    /// Issues a certificate without a relaybox role (serverAuth + clientAuth, as other CAs make
    /// them, e.g. MediaProxy's): relaybox daemons accept it only with `[TLS]
    /// accept_unmarked_certificates = yes`. For tests of that migration setting.
    pub fn issue_unmarked(&mut self, subject: &Subject, days: u32) -> Result<IssuedCert, CaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(None, subject, now - BACKDATE, now + Duration::days(i64::from(days.max(1))))
    }

    /// Signs a certificate signing request made elsewhere (the box's web
    /// page makes a key and a CSR; the key never leaves the box). The
    /// subject and the public key come from the CSR; validity, serial and
    /// usages (the role's mark, whatever the CSR asks for) are this CA's, as
    /// for [`CertificateAuthority::issue`].
    /// Returns the certificate PEM and its serial.
    pub fn sign_csr(&mut self, csr_pem: &str, role: Role, days: u32) -> Result<(String, String), CaError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Parse(format!("not a certificate signing request: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let not_after = now + Duration::days(i64::from(days.max(1)));
        let serial = random_serial()?;
        let serial_hex = hex_upper(serial.as_ref());
        let params = &mut csr.params;
        set_usages(params, Some(role));
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(serial);
        let cert = csr.signed_by(&self.issuer, &self.key)?;
        let cert_pem = cert.pem();
        let info = cert_info(&cert_pem)?;
        self.index.issued.push(IssuedRecord {
            serial: serial_hex.clone(),
            subject: info.subject,
            not_after: not_after.unix_timestamp(),
            fingerprint: fingerprint_der(cert.der()),
        });
        Ok((cert_pem, serial_hex))
    }

    /// Issues a certificate of `role` that expired yesterday (for tests of expiry handling).
    pub fn issue_expired(&mut self, role: Role, subject: &Subject) -> Result<IssuedCert, CaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(Some(role), subject, now - Duration::days(30), now - Duration::days(1))
    }

    /// Issues a certificate with an explicit validity period, marked with `role` (`None`: no
    /// relaybox role, see [`issue_unmarked`](Self::issue_unmarked)).
    pub fn issue_between(
        &mut self,
        role: Option<Role>,
        subject: &Subject,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        if not_after <= not_before {
            return Err(CaError::Subject("not_after must be later than not_before".into()));
        }
        let key = KeyPair::generate()?;
        let serial = random_serial()?;
        let serial_hex = hex_upper(serial.as_ref());
        let mut params = CertificateParams::default();
        params.distinguished_name = subject.distinguished_name()?;
        params.subject_alt_names = san_for(&subject.cn);
        set_usages(&mut params, role);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let cert_pem = cert.pem();
        self.index.issued.push(IssuedRecord {
            serial: serial_hex.clone(),
            subject: subject.to_string(),
            not_after: not_after.unix_timestamp(),
            fingerprint: fingerprint_der(cert.der()),
        });
        Ok(IssuedCert { cert_pem, key_pem: key.serialize_pem(), serial_hex })
    }

    /// Marks a serial as revoked (hex, any case, `:` separators and leading zeros allowed).
    /// Revoking twice is not an error; a serial this CA never issued is.
    pub fn revoke(&mut self, serial_hex: &str) -> Result<(), CaError> {
        let serial = normalize_serial(serial_hex)?;
        if !self.index.issued.iter().any(|r| r.serial == serial) {
            return Err(CaError::UnknownSerial(serial));
        }
        if !self.index.revoked.iter().any(|r| r.serial == serial) {
            let revoked_at = OffsetDateTime::now_utc().unix_timestamp();
            self.index.revoked.push(RevokedRecord { serial, revoked_at });
        }
        Ok(())
    }

    /// A CRL signed by the CA listing every revoked serial, valid for [`CRL_VALIDITY_DAYS`].
    /// Its CRL number is the current time in milliseconds, so a newer CRL has a larger number.
    pub fn crl_pem(&self) -> Result<String, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(self.index.revoked.len());
        for r in &self.index.revoked {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex_decode(&r.serial)?),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                    .map_err(|e| CaError::Parse(format!("revocation time of {}: {e}", r.serial)))?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let crl_number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(CRL_VALIDITY_DAYS)),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.issuer.params().key_identifier_method.clone(),
        };
        Ok(params.signed_by(&self.issuer, &self.key)?.pem()?)
    }
}

/// A readable summary of a certificate (what `relaybox-ca show` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// The subject's attributes (the first of each kind).
    pub subject_fields: Subject,
    pub issuer: String,
    pub serial_hex: String,
    pub not_before: String,
    pub not_after: String,
    pub is_ca: bool,
    pub fingerprint: String,
    /// The relaybox role marked in it: `relay`, `dispatcher`, `management`, `unmarked`, or
    /// several joined with `+`.
    pub role: String,
}

/// Parses the first certificate of a PEM text.
pub fn cert_info(cert_pem: &str) -> Result<CertInfo, CaError> {
    let der = pem_der(cert_pem, "CERTIFICATE").map_err(CaError::Parse)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::Parse(format!("not an X.509 certificate: {e}")))?;
    Ok(CertInfo {
        subject: x509.subject().to_string(),
        subject_fields: subject_fields(x509.subject()),
        issuer: x509.issuer().to_string(),
        serial_hex: hex_upper(x509.raw_serial()),
        not_before: x509.validity().not_before.to_string(),
        not_after: x509.validity().not_after.to_string(),
        is_ca: x509.is_ca(),
        fingerprint: fingerprint_der(&der),
        role: relaybox_tls::certificate_marker(&der)
            .map(|m| m.to_string())
            .map_err(|e| CaError::Parse(e.to_string()))?,
    })
}

fn subject_fields(name: &x509_parser::x509::X509Name<'_>) -> Subject {
    use x509_parser::oid_registry as oids;
    let first = |oid: &x509_parser::der_parser::Oid<'_>| {
        name.iter_attributes().find(|a| a.attr_type() == oid).and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    Subject {
        cn: first(&oids::OID_X509_COMMON_NAME).unwrap_or_default(),
        o: first(&oids::OID_X509_ORGANIZATION_NAME),
        ou: first(&oids::OID_X509_ORGANIZATIONAL_UNIT),
        c: first(&oids::OID_X509_COUNTRY_NAME),
        l: first(&oids::OID_X509_LOCALITY_NAME),
        st: first(&oids::OID_X509_STATE_OR_PROVINCE_NAME),
        email: first(&oids::OID_PKCS9_EMAIL_ADDRESS),
    }
}

/// SHA-256 over the DER of the first certificate in `cert_pem`, as `AB:CD:...`.
pub fn fingerprint_sha256(cert_pem: &str) -> Result<String, CaError> {
    pem_der(cert_pem, "CERTIFICATE").map(|der| fingerprint_der(&der)).map_err(CaError::Parse)
}

/// Writes a complete `certs_path` for MediaProxy-style daemons into `out`: `ca.pem`, `crl.pem`,
/// `relay.crt`, `relay.key`, `dispatcher.crt`, `dispatcher.key` (keys 0600).
pub fn write_certs_dir(
    ca: &CertificateAuthority,
    out: &Path,
    relay: &IssuedCert,
    dispatcher: &IssuedCert,
) -> Result<(), CaError> {
    create_dir(out, 0o755)?;
    write_file(&out.join("ca.pem"), ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&out.join(CRL_FILE), ca.crl_pem()?.as_bytes(), 0o644)?;
    write_issued(out, "relay", relay)?;
    write_issued(out, "dispatcher", dispatcher)?;
    Ok(())
}

/// Writes `out/<name>.crt` (0644) and `out/<name>.key` (0600); returns their paths.
pub fn write_issued(out: &Path, name: &str, cert: &IssuedCert) -> Result<(PathBuf, PathBuf), CaError> {
    create_dir(out, 0o755)?;
    let crt = out.join(format!("{name}.crt"));
    let key = out.join(format!("{name}.key"));
    write_file(&key, cert.key_pem.as_bytes(), 0o600)?;
    write_file(&crt, cert.cert_pem.as_bytes(), 0o644)?;
    Ok((crt, key))
}

/// Writes `contents` to `path` with `mode` through a temporary file and a rename, so a reader
/// never sees half a key and a key is never readable by others, not even for a moment.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let name = path.file_name().ok_or_else(|| bad(path, "not a file name".into()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io_err(path, source)
    })
}

/// Turns `"0a:BC"`, `"0x00abc"` and the like into the canonical form (upper-case hex, no leading
/// zero bytes).
pub fn normalize_serial(serial: &str) -> Result<String, CaError> {
    let s = serial.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':' && *c != ' ').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CaError::Parse(format!("serial {serial:?} is not hexadecimal")));
    }
    let padded = if digits.len() & 1 == 1 { format!("0{digits}") } else { digits };
    Ok(hex_upper(&hex_decode(&padded)?))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Parse("the system random generator failed".into()))?;
    // Positive, and exactly 16 bytes in DER: no sign padding, no stripped zero byte.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

/// A subjectAltName equal to the CN when the CN is a host name or an IP address, so that tools
/// that do check names still work. relaybox itself identifies peers by passport, not by name.
fn san_for(cn: &str) -> Vec<SanType> {
    if let Ok(ip) = cn.parse::<IpAddr>() {
        return vec![SanType::IpAddress(ip)];
    }
    let hostname = !cn.is_empty()
        && cn.len() <= 253
        && cn.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    match rcgen::Ia5String::try_from(cn.to_string()) {
        Ok(name) if hostname => vec![SanType::DnsName(name)],
        _ => Vec::new(),
    }
}

fn fingerprint_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Upper-case hex without leading zero bytes (how serials are written everywhere in relaybox).
fn hex_upper(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02X}")).collect()
}

fn hex_decode(s: &str) -> Result<Vec<u8>, CaError> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| match (pair, std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok())) {
            ([_, _], Some(byte)) => Ok(byte),
            _ => Err(CaError::Parse(format!("{s:?} is not an even number of hex digits"))),
        })
        .collect()
}

/// The DER of the first PEM block labelled `label`.
fn pem_der(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let mut rest = text.as_bytes();
    loop {
        match x509_parser::pem::parse_x509_pem(rest) {
            Ok((next, pem)) => {
                if pem.label == label {
                    return Ok(pem.contents);
                }
                rest = next;
            }
            Err(_) => return Err(format!("no PEM block \"{label}\" found")),
        }
    }
}

fn read_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| io_err(path, source))
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), CaError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|source| io_err(dir, source))
}

fn io_err(path: &Path, source: io::Error) -> CaError {
    CaError::Io { path: path.to_path_buf(), source }
}

fn bad(path: &Path, reason: String) -> CaError {
    CaError::BadFile { path: path.to_path_buf(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_ca() -> CertificateAuthority {
        CertificateAuthority::create(&Subject::new("Example CA").with_org("Example Ltd"), 30).unwrap()
    }

    #[test]
    fn issue_sets_subject_serial_and_eku() {
        let mut ca = example_ca();
        let subject = Subject::new("edge-relay").with_org("Example Ltd").with_ou("Edge");
        let cert = ca.issue(Role::Relay, &subject, 10).unwrap();
        let der = pem_der(&cert.cert_pem, "CERTIFICATE").unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x509.subject().to_string(), "O=Example Ltd, OU=Edge, CN=edge-relay");
        assert_eq!(x509.issuer().to_string(), "O=Example Ltd, CN=Example CA");
        assert_eq!(hex_upper(x509.raw_serial()), cert.serial_hex);
        assert_eq!(cert.serial_hex.len(), 32);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth, "a relay is a TLS client only");
        assert_eq!(eku.other.len(), 1);
        assert_eq!(eku.other[0].as_bytes(), Role::Relay.oid_der());
        assert_eq!(cert_info(&cert.cert_pem).unwrap().role, "relay");
        assert!(!x509.is_ca());
        assert_eq!(ca.issued().len(), 1);
        let other = ca.issue(Role::Relay, &subject, 10).unwrap();
        assert_ne!(other.serial_hex, cert.serial_hex, "serials are random");
    }

    fn eku_of(pem: &str) -> (bool, bool, Vec<Vec<u8>>) {
        let der = pem_der(pem, "CERTIFICATE").unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth, eku.other.iter().map(|o| o.as_bytes().to_vec()).collect())
    }

    #[test]
    fn each_role_gets_its_tls_purpose_and_its_mark() {
        let mut ca = example_ca();
        for (role, server, client) in
            [(Role::Relay, false, true), (Role::Dispatcher, true, false), (Role::Management, false, true)]
        {
            let cert = ca.issue(role, &Subject::new("x"), 1).unwrap();
            assert_eq!(eku_of(&cert.cert_pem), (server, client, vec![role.oid_der()]), "{role}");
            assert_eq!(cert_info(&cert.cert_pem).unwrap().role, role.file_stem());
        }
        let unmarked = ca.issue_unmarked(&Subject::new("old"), 1).unwrap();
        assert_eq!(eku_of(&unmarked.cert_pem), (true, true, vec![]));
        assert_eq!(cert_info(&unmarked.cert_pem).unwrap().role, "unmarked");
        assert_eq!(cert_info(&ca.cert_pem()).unwrap().role, "unmarked", "the CA itself has no role");
    }

    #[test]
    fn a_signed_csr_gets_the_role_the_ca_gives_whatever_it_asks_for() {
        let mut ca = example_ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["box.example".to_string()]).unwrap();
        params.distinguished_name = Subject::new("edge-box").distinguished_name().unwrap();
        // The request asks to be a TLS server.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, serial) = ca.sign_csr(&csr, Role::Relay, 10).unwrap();
        assert_eq!(eku_of(&pem), (false, true, vec![Role::Relay.oid_der()]));
        assert_eq!(cert_info(&pem).unwrap().serial_hex, serial);
        assert_eq!(cert_info(&pem).unwrap().subject, "CN=edge-box");
        // A request that names a role itself is refused, not signed.
        params.custom_extensions =
            vec![CustomExtension::from_oid_content(OID_EXTENDED_KEY_USAGE, Role::Dispatcher.extended_key_usage_der())];
        params.extended_key_usages = Vec::new();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(ca.sign_csr(&csr, Role::Relay, 10).is_err());
    }

    #[test]
    fn save_load_round_trip_keeps_the_ca_and_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = example_ca();
        let first = ca.issue(Role::Relay, &Subject::new("relay"), 10).unwrap();
        ca.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.issued(), ca.issued());
        let second = loaded.issue(Role::Relay, &Subject::new("dispatcher"), 10).unwrap();
        // Issued by the loaded CA: same issuer name and authority key id as before.
        let ext = |pem: &str| {
            let der = pem_der(pem, "CERTIFICATE").unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
            let aki = x
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .unwrap();
            (x.issuer().as_raw().to_vec(), aki)
        };
        assert_eq!(ext(&first.cert_pem), ext(&second.cert_pem));
        loaded.revoke(&first.serial_hex.to_lowercase()).unwrap();
        loaded.save(dir.path()).unwrap();
        assert_eq!(CertificateAuthority::load(dir.path()).unwrap().revoked().len(), 1);
    }

    #[test]
    fn load_refuses_a_key_readable_by_others_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        example_ca().save(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&key.display().to_string()) && err.contains("chmod 600"), "{err}");
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }

    #[test]
    fn crl_lists_revoked_serials() {
        let mut ca = example_ca();
        let empty = ca.crl_pem().unwrap();
        let der = pem_der(&empty, "X509 CRL").unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        assert_eq!(crl.issuer().to_string(), "O=Example Ltd, CN=Example CA");

        let a = ca.issue(Role::Relay, &Subject::new("a"), 1).unwrap();
        let _b = ca.issue(Role::Relay, &Subject::new("b"), 1).unwrap();
        ca.revoke(&a.serial_hex).unwrap();
        ca.revoke(&a.serial_hex).unwrap();
        let der = pem_der(&ca.crl_pem().unwrap(), "X509 CRL").unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = crl.iter_revoked_certificates().map(|r| hex_upper(r.raw_serial())).collect();
        assert_eq!(serials, vec![a.serial_hex.clone()]);
        assert!(matches!(ca.revoke("01:02"), Err(CaError::UnknownSerial(s)) if s == "0102"));
    }

    #[test]
    fn fingerprints_and_serials() {
        let ca = example_ca();
        let fp = fingerprint_sha256(&ca.cert_pem()).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert!(fingerprint_sha256("hello").is_err());
        assert_eq!(normalize_serial("00:0a:bc").unwrap(), "0ABC");
        assert_eq!(normalize_serial("0xABC").unwrap(), "0ABC");
        assert!(normalize_serial("xyz").is_err());
        assert_eq!(cert_info(&ca.cert_pem()).unwrap().fingerprint, fp);
    }

    #[test]
    fn subjects_are_validated() {
        assert!(CertificateAuthority::create(&Subject::new(""), 1).is_err());
        let s = Subject { c: Some("Germany".into()), ..Subject::new("x") };
        assert!(matches!(CertificateAuthority::create(&s, 1), Err(CaError::Subject(_))));
        let s = Subject { c: Some("de".into()), email: Some("ops@example.com".into()), ..Subject::new("x") };
        let ca = CertificateAuthority::create(&s, 1).unwrap();
        let info = cert_info(&ca.cert_pem()).unwrap();
        assert!(info.subject.starts_with("C=DE, CN=x"), "{}", info.subject);
        assert_eq!(s.to_string(), "C=de, CN=x, EMAIL=ops@example.com");
        let parsed = ca.subject().unwrap();
        assert_eq!(parsed, Subject { c: Some("DE".into()), ..s });
    }
}
