//! The built `relaybox-ca` binary, run as an operator would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use relaybox_ca::{cert_info, fingerprint_sha256, CertificateAuthority};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relaybox-ca")).args(args).output().expect("run relaybox-ca")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "relaybox-ca {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "relaybox-ca {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `serial:      X` -> `X`
fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|rest| rest.trim_start_matches(':').trim()))
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
}

#[test]
fn init_issue_revoke_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let out_dir = tmp.path().join("relay-certs");

    ok(&["init", "--dir", s(&ca_dir), "--cn", "Example CA", "--org", "Example Ltd", "--days", "100"]);
    for f in ["ca.pem", "ca.key", "index.json", "crl.pem"] {
        assert!(ca_dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    let again = fails(&["init", "--dir", s(&ca_dir), "--cn", "Example CA"]);
    assert!(again.contains("already exists"), "{again}");

    let stdout = ok(&[
        "issue",
        "--dir",
        s(&ca_dir),
        "--kind",
        "relay",
        "--cn",
        "edge-relay",
        "--ou",
        "Edge",
        "--out",
        s(&out_dir),
    ]);
    for f in ["relay.crt", "relay.key", "ca.pem", "crl.pem"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&out_dir.join("relay.key")), 0o600);
    let crt = fs::read_to_string(out_dir.join("relay.crt")).unwrap();
    let lib_fp = fingerprint_sha256(&crt).unwrap();
    assert_eq!(field(&stdout, "fingerprint"), lib_fp);
    let info = cert_info(&crt).unwrap();
    assert_eq!(field(&stdout, "serial"), info.serial_hex);
    assert_eq!(info.subject, "O=Example Ltd, OU=Edge, CN=edge-relay", "org defaults to the CA's");
    assert_eq!(field(&stdout, "role"), "relay");
    assert_eq!(info.role, "relay");
    assert_eq!(ok(&["fingerprint", s(&out_dir.join("relay.crt"))]).trim(), lib_fp);

    let show = ok(&["show", s(&out_dir.join("relay.crt"))]);
    assert_eq!(field(&show, "issuer"), "O=Example Ltd, CN=Example CA");
    assert_eq!(field(&show, "fingerprint"), lib_fp);
    assert_eq!(field(&show, "role"), "relay");
    assert!(show.contains("not_after"), "{show}");

    // A second certificate, revoked by file; the first by serial.
    ok(&["issue", "--dir", s(&ca_dir), "--kind", "management", "--cn", "ops", "--out", s(&out_dir)]);
    assert_eq!(mode(&out_dir.join("management.key")), 0o600);
    let management = cert_info(&fs::read_to_string(out_dir.join("management.crt")).unwrap()).unwrap();
    assert_eq!(management.role, "management");
    let crl = ok(&["revoke", "--dir", s(&ca_dir), "--cert", s(&out_dir.join("management.crt"))]);
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    assert_eq!(crl, fs::read_to_string(ca_dir.join("crl.pem")).unwrap());
    ok(&["revoke", "--dir", s(&ca_dir), "--serial", &info.serial_hex.to_lowercase()]);
    let ca = CertificateAuthority::load(&ca_dir).unwrap();
    assert_eq!(ca.issued().len(), 2);
    assert_eq!(ca.revoked().len(), 2);
    assert!(ca.revoked().iter().any(|r| r.serial == info.serial_hex));

    let crl_out = tmp.path().join("exported.crl");
    ok(&["crl", "--dir", s(&ca_dir), "--out", s(&crl_out)]);
    assert!(fs::read_to_string(&crl_out).unwrap().contains("X509 CRL"));

    let unknown = fails(&["revoke", "--dir", s(&ca_dir), "--serial", "DEADBEEF"]);
    assert!(unknown.contains("DEADBEEF") && unknown.contains("not issued"), "{unknown}");
    let neither = fails(&["revoke", "--dir", s(&ca_dir)]);
    assert!(neither.contains("--serial") || neither.contains("--cert"), "{neither}");
}

#[test]
fn errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = fails(&["issue", "--dir", s(&missing), "--kind", "relay", "--cn", "r", "--out", s(tmp.path())]);
    assert!(err.contains(&missing.join("ca.pem").display().to_string()), "{err}");
    let junk = tmp.path().join("junk.crt");
    fs::write(&junk, "hello").unwrap();
    let err = fails(&["fingerprint", s(&junk)]);
    assert!(err.contains("junk.crt"), "{err}");
    let err = fails(&["issue", "--dir", s(&missing), "--kind", "toaster", "--cn", "r", "--out", s(tmp.path())]);
    assert!(err.contains("toaster"), "{err}");
}

#[test]
fn demo_makes_a_ready_certs_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let stdout = ok(&["demo", "--out", s(&out), "--org", "Example Ltd"]);
    let certs = out.join("certs");
    for f in [
        "ca.pem",
        "crl.pem",
        "relay.crt",
        "relay.key",
        "dispatcher.crt",
        "dispatcher.key",
        "management.crt",
        "management.key",
    ] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
    for role in ["relay", "dispatcher", "management"] {
        let info = cert_info(&fs::read_to_string(certs.join(format!("{role}.crt"))).unwrap()).unwrap();
        assert_eq!(info.role, role);
    }
    assert_eq!(mode(&certs.join("relay.key")), 0o600);
    assert_eq!(mode(&certs.join("dispatcher.key")), 0o600);
    assert_eq!(mode(&out.join("ca/ca.key")), 0o600);
    let relay = cert_info(&fs::read_to_string(certs.join("relay.crt")).unwrap()).unwrap();
    assert_eq!(relay.subject, "O=Example Ltd, CN=relay");
    assert!(stdout.contains(&relay.fingerprint), "{stdout}");
    let dispatcher = cert_info(&fs::read_to_string(certs.join("dispatcher.crt")).unwrap()).unwrap();
    assert_eq!(dispatcher.subject, "O=Example Ltd, CN=dispatcher");
    assert_eq!(fs::read_to_string(certs.join("ca.pem")).unwrap(), fs::read_to_string(out.join("ca/ca.pem")).unwrap());
    // The demo CA can be used afterwards.
    assert_eq!(CertificateAuthority::load(&out.join("ca")).unwrap().issued().len(), 3);
    let again = fails(&["demo", "--out", s(&out)]);
    assert!(again.contains("already exists"), "{again}");
}

#[test]
fn sign_a_csr_made_on_the_box() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    ok(&["init", "--dir", s(&ca_dir), "--cn", "Box CA", "--org", "Example Ltd"]);
    // What the box's web page does: a key that stays on the box, and a CSR.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "edge-relay");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example Ltd");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr_file = tmp.path().join("relay.csr");
    fs::write(&csr_file, &csr).unwrap();
    let out = tmp.path().join("relay.crt");
    let printed = ok(&["sign", "--dir", s(&ca_dir), "--csr", s(&csr_file), "--out", s(&out)]);
    let pem = fs::read_to_string(&out).unwrap();
    let info = cert_info(&pem).unwrap();
    assert!(info.subject.contains("CN=edge-relay") && info.subject.contains("O=Example Ltd"), "{}", info.subject);
    assert!(info.issuer.contains("Box CA"), "{}", info.issuer);
    assert!(!info.is_ca);
    assert_eq!(field(&printed, "serial"), info.serial_hex);
    assert_eq!(info.role, "relay", "a box's certificate is a relay's unless the operator says otherwise");
    assert_eq!(field(&printed, "role"), "relay");
    // The certificate carries the box's public key, not a new one.
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    // The CA knows it: it can be revoked like any other.
    ok(&["revoke", "--dir", s(&ca_dir), "--cert", s(&out)]);
    let other = tmp.path().join("ops.crt");
    fs::write(&csr_file, &csr).unwrap();
    ok(&["sign", "--dir", s(&ca_dir), "--csr", s(&csr_file), "--kind", "management", "--out", s(&other)]);
    assert_eq!(cert_info(&fs::read_to_string(&other).unwrap()).unwrap().role, "management");
    // Garbage is refused with a reason.
    fs::write(&csr_file, "not a csr").unwrap();
    let err = fails(&["sign", "--dir", s(&ca_dir), "--csr", s(&csr_file), "--out", s(&out)]);
    assert!(err.contains("signing"), "{err}");
}

/// The firmware update key pair: the private key private, the public key
/// readable by the boxes' code, never overwritten.
#[test]
fn update_key_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("keys");
    let stdout = ok(&["update-key", "--out", s(&out)]);
    assert_eq!(mode(&out.join("update.key")), 0o600);
    assert_eq!(mode(&out.join("update.pub")), 0o644);
    let key = relaybox_update::SigningKey::from_pem(&fs::read_to_string(out.join("update.key")).unwrap()).unwrap();
    let public = relaybox_update::PublicKey::from_pem(&fs::read_to_string(out.join("update.pub")).unwrap()).unwrap();
    assert_eq!(key.public_key(), public);
    assert_eq!(field(&stdout, "fingerprint"), public.fingerprint());
    assert!(public.verifies(b"m", &key.sign(b"m")));
    let again = fails(&["update-key", "--out", s(&out)]);
    assert!(again.contains("already exists"), "{again}");
}
