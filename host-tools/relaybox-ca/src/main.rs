//! `relaybox-ca`: the operator's certificate tool (see the library for what it owns).

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use relaybox_ca::{
    cert_info, fingerprint_sha256, write_certs_dir, write_file, write_issued, CertificateAuthority, Role, Subject,
    CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS,
};

#[derive(Parser)]
#[command(
    name = "relaybox-ca",
    version,
    about = "Certificate authority for relaybox relays, dispatchers and management clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new CA in DIR (ca.pem, ca.key, index.json, crl.pem).
    Init {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA.
        #[arg(long)]
        cn: String,
        /// Organization (O) of the CA.
        #[arg(long)]
        org: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issue a certificate; writes OUT/<kind>.crt and OUT/<kind>.key and copies ca.pem and crl.pem.
    /// The certificate carries its kind as its role: relaybox accepts a relay certificate only from
    /// relays, a dispatcher certificate only from dispatchers, a management certificate only from
    /// management clients.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        cn: String,
        /// Organization (O); defaults to the CA's organization.
        #[arg(long)]
        org: Option<String>,
        /// Organizational unit (OU).
        #[arg(long)]
        ou: Option<String>,
        #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
        /// Output directory (a daemon's certs_path).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a CSR made on a box (its web page's Certificates tab); writes the certificate to OUT.
    Sign {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate signing request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// The role the certificate gets (whatever the CSR asks for).
        #[arg(long, value_enum, default_value = "relay")]
        kind: Kind,
        #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a certificate by serial or by file; rewrites DIR/crl.pem and prints it.
    Revoke(RevokeArgs),
    /// Write the current CRL to FILE.
    Crl {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the SHA-256 fingerprint of a certificate.
    Fingerprint { file: PathBuf },
    /// Print subject, issuer, serial, validity and fingerprint of a certificate.
    Show { file: PathBuf },
    /// Make the Ed25519 key pair that signs firmware update bundles: OUT/update.key (keep it
    /// secret, off the boxes; `cargo xtask bundle --key`) and OUT/update.pub (built into every
    /// image with `cargo xtask image --update-key`; boxes install only bundles it verifies).
    UpdateKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a demo CA in OUT/ca and a ready certs_path in OUT/certs (relay, dispatcher and
    /// management).
    Demo {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "relaybox demo")]
        org: String,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell) on standard output.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (relaybox-ca.1 and one per command) into DIR.
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

#[derive(Args)]
struct RevokeArgs {
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    target: RevokeTarget,
}

/// Exactly one of `--serial` and `--cert`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct RevokeTarget {
    /// Serial number in hex (as printed by `issue` or `show`).
    #[arg(long)]
    serial: Option<String>,
    /// A certificate file issued by this CA.
    #[arg(long)]
    cert: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Relay,
    Dispatcher,
    Management,
}

impl Kind {
    fn role(self) -> Role {
        match self {
            Kind::Relay => Role::Relay,
            Kind::Dispatcher => Role::Dispatcher,
            Kind::Management => Role::Management,
        }
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("relaybox-ca: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "relaybox-ca", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).context("writing the script")?;
        }
        Command::ManPages { dir } => {
            use clap::CommandFactory;
            fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
        }
        Command::Init { dir, cn, org, days } => {
            if dir.join(CA_KEY_FILE).exists() || dir.join(CA_CERT_FILE).exists() {
                bail!("{}: a CA already exists there; refusing to overwrite it", dir.display());
            }
            let subject = Subject { o: org, ..Subject::new(cn) };
            let ca = CertificateAuthority::create(&subject, days).context("creating the CA")?;
            ca.save(&dir).context("saving the CA")?;
            println!("CA created in {}", dir.display());
            println!("subject:     {subject}");
            println!("fingerprint: {}", fingerprint_sha256(&ca.cert_pem())?);
        }
        Command::Issue { dir, kind, cn, org, ou, days, out } => {
            let mut ca = load(&dir)?;
            let org = match org {
                Some(o) => Some(o),
                None => ca.subject()?.o,
            };
            let subject = Subject { o: org, ou, ..Subject::new(cn) };
            let role = kind.role();
            let cert =
                ca.issue(role, &subject, days).with_context(|| format!("issuing a certificate for {subject}"))?;
            ca.save(&dir).context("recording the certificate in the CA index")?;
            let (crt, key) = write_issued(&out, role.file_stem(), &cert)?;
            write_file(&out.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
            fs::copy(dir.join(CRL_FILE), out.join(CRL_FILE))
                .with_context(|| format!("copying {} to {}", dir.join(CRL_FILE).display(), out.display()))?;
            println!("subject:     {subject}");
            println!("role:        {role}");
            println!("serial:      {}", cert.serial_hex);
            println!("fingerprint: {}", fingerprint_sha256(&cert.cert_pem)?);
            println!("wrote {}, {}, ca.pem and crl.pem", crt.display(), key.display());
        }
        Command::Sign { dir, csr, kind, days, out } => {
            let mut ca = load(&dir)?;
            let request = read(&csr)?;
            let (pem, serial) =
                ca.sign_csr(&request, kind.role(), days).with_context(|| format!("signing {}", csr.display()))?;
            ca.save(&dir).context("recording the certificate in the CA index")?;
            write_file(&out, pem.as_bytes(), 0o644)?;
            println!("subject:     {}", cert_info(&pem)?.subject);
            println!("role:        {}", kind.role());
            println!("serial:      {serial}");
            println!("fingerprint: {}", fingerprint_sha256(&pem)?);
            println!("wrote {}", out.display());
        }
        Command::Revoke(RevokeArgs { dir, target: RevokeTarget { serial, cert } }) => {
            let mut ca = load(&dir)?;
            let serial = match (serial, cert) {
                (Some(s), _) => s,
                (None, Some(file)) => {
                    let pem = read(&file)?;
                    let info = cert_info(&pem).with_context(|| format!("{}", file.display()))?;
                    info.serial_hex
                }
                (None, None) => bail!("give --serial or --cert"),
            };
            ca.revoke(&serial)?;
            ca.save(&dir).context("saving the CA")?;
            eprintln!("revoked {serial}; {} rewritten", dir.join(CRL_FILE).display());
            print!("{}", read(&dir.join(CRL_FILE))?);
        }
        Command::Crl { dir, out } => {
            let ca = load(&dir)?;
            let crl = ca.crl_pem()?;
            write_file(&out, crl.as_bytes(), 0o644)?;
            eprintln!("wrote {} ({} revoked)", out.display(), ca.revoked().len());
        }
        Command::Fingerprint { file } => {
            let pem = read(&file)?;
            println!("{}", fingerprint_sha256(&pem).with_context(|| format!("{}", file.display()))?);
        }
        Command::Show { file } => {
            let pem = read(&file)?;
            let info = cert_info(&pem).with_context(|| format!("{}", file.display()))?;
            println!("subject:     {}", info.subject);
            println!("issuer:      {}", info.issuer);
            println!("serial:      {}", info.serial_hex);
            println!("not_before:  {}", info.not_before);
            println!("not_after:   {}", info.not_after);
            println!("ca:          {}", if info.is_ca { "yes" } else { "no" });
            println!("role:        {}", info.role);
            println!("fingerprint: {}", info.fingerprint);
        }
        Command::UpdateKey { out } => {
            let (key, public) = (out.join("update.key"), out.join("update.pub"));
            if key.exists() || public.exists() {
                bail!("{}: an update key already exists there; refusing to overwrite it", out.display());
            }
            fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (signing, pem) = relaybox_update::SigningKey::generate()?;
            write_file(&key, pem.as_bytes(), 0o600)?;
            write_file(&public, signing.public_key().to_pem().as_bytes(), 0o644)?;
            println!("fingerprint: {}", signing.public_key().fingerprint());
            println!("wrote {} (secret: keep it off the boxes) and {}", key.display(), public.display());
        }
        Command::Demo { out, org } => {
            let ca_dir = out.join("ca");
            if ca_dir.join(CA_KEY_FILE).exists() {
                bail!("{}: a CA already exists there; refusing to overwrite it", ca_dir.display());
            }
            let mut ca = CertificateAuthority::create(&Subject::new("relaybox demo CA").with_org(org.as_str()), 3650)?;
            let subject = |cn: &str| Subject::new(cn).with_org(org.as_str());
            let relay = ca.issue(Role::Relay, &subject("relay"), DEFAULT_CERT_DAYS)?;
            let dispatcher = ca.issue(Role::Dispatcher, &subject("dispatcher"), DEFAULT_CERT_DAYS)?;
            let management = ca.issue(Role::Management, &subject("management"), DEFAULT_CERT_DAYS)?;
            ca.save(&ca_dir).context("saving the demo CA")?;
            let certs = out.join("certs");
            write_certs_dir(&ca, &certs, &relay, &dispatcher)?;
            write_issued(&certs, Role::Management.file_stem(), &management)?;
            println!("CA in {}; certs_path {}", ca_dir.display(), certs.display());
            println!("relay       serial {} fingerprint {}", relay.serial_hex, fingerprint_sha256(&relay.cert_pem)?);
            println!(
                "dispatcher  serial {} fingerprint {}",
                dispatcher.serial_hex,
                fingerprint_sha256(&dispatcher.cert_pem)?
            );
            println!(
                "management  serial {} fingerprint {}",
                management.serial_hex,
                fingerprint_sha256(&management.cert_pem)?
            );
            println!("passport for relays: O:{org}, CN:relay");
        }
    }
    Ok(())
}

fn load(dir: &Path) -> Result<CertificateAuthority> {
    CertificateAuthority::load(dir).with_context(|| format!("loading the CA from {}", dir.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
