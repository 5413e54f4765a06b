//! The update bundle: a newc cpio archive (as SWUpdate's `.swu`), read as a
//! stream from its start:
//!
//! 1. `manifest` — the JSON [`Manifest`] (board, version, each file's size
//!    and SHA-256);
//! 2. `manifest.sig` — the Ed25519 signature of the manifest's bytes;
//! 3. the slot files, in the manifest's order;
//! 4. the cpio trailer.
//!
//! [`open`] reads the first two and checks, in this order, the signature
//! (with the box's public key), the manifest, the board and the version;
//! [`Files::each`] then streams each file and fails at the first one whose
//! size or SHA-256 is not the manifest's. A box reads a bundle through once
//! like this before it writes anything, and again while it writes the slot.
//! `cpio -t < FILE` lists a bundle; `cpio -i` unpacks it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::key::{PublicKey, SigningKey, SIGNATURE_LEN};
use crate::manifest::{FileEntry, Manifest, ManifestError, FORMAT, MAX_MANIFEST};
use crate::version::Version;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const MAX_NAME: usize = 256;
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a relaybox update bundle (it does not start with a newc cpio header)")]
    NotABundle,
    #[error("the bundle ends early (truncated download or upload?)")]
    Truncated,
    #[error("malformed bundle: {0}")]
    Malformed(String),
    #[error("the bundle is not signed: no manifest.sig after its manifest")]
    Unsigned,
    #[error(
        "the manifest's signature does not verify with this box's update key ({key}): \
         the bundle was altered or signed with another key"
    )]
    BadSignature { key: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the bundle is for board {bundle}; this box is {board}")]
    WrongBoard { bundle: String, board: String },
    #[error("version {bundle} is not newer than the running {running} (--force installs it anyway)")]
    NotNewer { bundle: String, running: String },
    #[error("{name} does not match the signed manifest ({why}): the bundle was altered or damaged")]
    FileMismatch { name: String, why: String },
    #[error("the bundle has {0:?} where the manifest names no more files")]
    UnexpectedEntry(String),
    #[error("writing: {0}")]
    Sink(#[source] std::io::Error),
}

/// What a box expects of a bundle before it installs one.
pub struct Expect<'a> {
    pub key: &'a PublicKey,
    /// This box's `BOARD_NAME`.
    pub board: &'a str,
    /// The running firmware's version; the bundle must be newer unless `force`.
    pub running: &'a Version,
    pub force: bool,
    /// Largest total of the slot files (`[Update] max_bundle_size`).
    pub max_total: u64,
    /// Files every slot of this box needs.
    pub required: &'a [&'a str],
}

/// A manifest whose signature, board and version were checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    /// The first line of `cmdline.txt`, once the files were read
    /// (`install::check`).
    pub cmdline: Option<String>,
}

impl Checked {
    pub fn version(&self) -> Version {
        self.manifest.version().expect("checked when parsed")
    }
}

struct Header {
    name: String,
    size: u64,
    mode: u32,
}

/// A newc reader that knows how far it is (entries are 4-byte aligned).
struct Cpio<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Cpio<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BundleError> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BundleError::Truncated,
            _ => BundleError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<(), BundleError> {
        let pad = (4 - (self.pos % 4) as usize) % 4;
        let mut buf = [0u8; 3];
        self.exact(&mut buf[..pad])
    }

    /// The next entry's header; None at the trailer.
    fn next(&mut self) -> Result<Option<Header>, BundleError> {
        let mut h = [0u8; HEADER_LEN];
        let first = self.pos == 0;
        self.exact(&mut h)?;
        if &h[..6] != MAGIC && &h[..6] != b"070702" {
            return Err(if first {
                BundleError::NotABundle
            } else {
                BundleError::Malformed("bad entry header".into())
            });
        }
        let field = |i: usize| -> Result<u32, BundleError> {
            let text = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap_or("");
            u32::from_str_radix(text, 16).map_err(|_| BundleError::Malformed("bad header field".into()))
        };
        let (mode, size, name_len) = (field(1)?, field(6)?, field(11)? as usize);
        if name_len == 0 || name_len > MAX_NAME {
            return Err(BundleError::Malformed(format!("entry name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        self.exact(&mut name)?;
        if name.pop() != Some(0) {
            return Err(BundleError::Malformed("entry name not NUL-terminated".into()));
        }
        let name = String::from_utf8(name).map_err(|_| BundleError::Malformed("entry name not UTF-8".into()))?;
        self.align()?;
        if name == TRAILER {
            return Ok(None);
        }
        Ok(Some(Header { name, size: size as u64, mode }))
    }

    /// Streams `size` bytes of data to `sink`, then skips the padding.
    fn data(&mut self, size: u64, mut sink: impl FnMut(&[u8]) -> Result<(), BundleError>) -> Result<(), BundleError> {
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.exact(&mut buf[..n])?;
            sink(&buf[..n])?;
            left -= n as u64;
        }
        self.align()
    }

    fn small(&mut self, h: &Header, limit: u64) -> Result<Vec<u8>, BundleError> {
        if h.size > limit {
            return Err(BundleError::Malformed(format!("{} has {} bytes (at most {limit})", h.name, h.size)));
        }
        let mut out = Vec::with_capacity(h.size as usize);
        self.data(h.size, |d| {
            out.extend_from_slice(d);
            Ok(())
        })?;
        Ok(out)
    }
}

fn is_regular(mode: u32) -> bool {
    mode & 0o170000 == 0o100000
}

/// Reads the manifest and its signature from the start of a bundle and
/// checks them against `expect`; returns them with a reader for the files.
pub fn open<R: Read>(r: R, expect: &Expect) -> Result<(Checked, Files<R>), BundleError> {
    let mut cpio = Cpio { r, pos: 0 };
    let first = cpio.next()?.ok_or(BundleError::Malformed("empty archive".into()))?;
    if first.name != "manifest" || !is_regular(first.mode) {
        return Err(BundleError::Malformed(format!("the first entry is {:?}, not the manifest", first.name)));
    }
    let manifest_bytes = cpio.small(&first, MAX_MANIFEST)?;
    let second = match cpio.next()? {
        Some(h) if h.name == "manifest.sig" => h,
        _ => return Err(BundleError::Unsigned),
    };
    let signature = cpio.small(&second, 1024)?;
    if signature.len() != SIGNATURE_LEN || !expect.key.verifies(&manifest_bytes, &signature) {
        return Err(BundleError::BadSignature { key: expect.key.fingerprint() });
    }
    let manifest = Manifest::parse(&manifest_bytes, expect.max_total)?;
    if manifest.board != expect.board {
        return Err(BundleError::WrongBoard { bundle: manifest.board.clone(), board: expect.board.to_string() });
    }
    let version = manifest.version().map_err(ManifestError::from)?;
    if version <= *expect.running && !expect.force {
        return Err(BundleError::NotNewer { bundle: version.to_string(), running: expect.running.to_string() });
    }
    manifest.require(expect.required)?;
    let checked = Checked { manifest, manifest_bytes, signature, cmdline: None };
    Ok((checked.clone(), Files { cpio, files: checked.manifest.files }))
}

/// What [`Files::each`] reports.
pub enum FileEvent<'a> {
    Begin(&'a FileEntry),
    Data(&'a [u8]),
    /// The file was read whole and matches the manifest.
    End(&'a FileEntry),
}

/// The slot files of an opened bundle.
pub struct Files<R> {
    cpio: Cpio<R>,
    files: Vec<FileEntry>,
}

impl<R: Read> Files<R> {
    /// Streams every file to `on` and checks it against the manifest; a
    /// file that does not match fails before its `End`. Anything after the
    /// last file but the trailer is refused.
    pub fn each(mut self, mut on: impl FnMut(FileEvent) -> std::io::Result<()>) -> Result<(), BundleError> {
        let files = std::mem::take(&mut self.files);
        for f in &files {
            let h = self.cpio.next()?.ok_or_else(|| BundleError::FileMismatch {
                name: f.name.clone(),
                why: "missing from the bundle".into(),
            })?;
            if h.name != f.name || !is_regular(h.mode) {
                return Err(BundleError::FileMismatch {
                    name: f.name.clone(),
                    why: format!("the bundle has {:?} in its place", h.name),
                });
            }
            if h.size != f.size {
                return Err(BundleError::FileMismatch {
                    name: f.name.clone(),
                    why: format!("{} bytes, the manifest says {}", h.size, f.size),
                });
            }
            on(FileEvent::Begin(f)).map_err(BundleError::Sink)?;
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            self.cpio.data(h.size, |d| {
                digest.update(d);
                on(FileEvent::Data(d)).map_err(BundleError::Sink)
            })?;
            let got = crate::hex(digest.finish().as_ref());
            if got != f.sha256 {
                return Err(BundleError::FileMismatch { name: f.name.clone(), why: format!("SHA-256 {got}") });
            }
            on(FileEvent::End(f)).map_err(BundleError::Sink)?;
        }
        match self.cpio.next()? {
            None => Ok(()),
            Some(h) => Err(BundleError::UnexpectedEntry(h.name)),
        }
    }
}

/// Host side: the manifest of slot files (name and path each), hashed here.
pub fn describe(board: &str, version: &str, files: &[(String, PathBuf)]) -> std::io::Result<Manifest> {
    let mut entries = Vec::new();
    for (name, path) in files {
        let (size, sha256) = crate::sha256_file(path)?;
        entries.push(FileEntry { name: name.clone(), size, sha256 });
    }
    Ok(Manifest { format: FORMAT, board: board.to_string(), version: version.to_string(), files: entries })
}

fn header(w: &mut impl Write, ino: u32, mode: u32, size: u64, name: &str) -> std::io::Result<u64> {
    let size = u32::try_from(size).map_err(|_| std::io::Error::other(format!("{name}: over 4 GiB")))?;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    let mut h = MAGIC.to_vec();
    for f in fields {
        h.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    h.extend_from_slice(name.as_bytes());
    h.push(0);
    h.resize(h.len().div_ceil(4) * 4, 0);
    w.write_all(&h)?;
    Ok(h.len() as u64)
}

fn pad(w: &mut impl Write, written: u64) -> std::io::Result<()> {
    w.write_all(&[0u8; 3][..((4 - written % 4) % 4) as usize])
}

/// Host side: writes a bundle of `files` (in `manifest`'s order) signed
/// with `key` to `out`.
pub fn write(out: &Path, manifest: &Manifest, key: &SigningKey, files: &[(String, PathBuf)]) -> std::io::Result<()> {
    manifest.check(u64::MAX).map_err(std::io::Error::other)?;
    let json = manifest.to_json();
    let sig = key.sign(&json);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut ino = 1;
    for (name, data) in [("manifest", &json[..]), ("manifest.sig", &sig[..])] {
        header(&mut w, ino, 0o100644, data.len() as u64, name)?;
        w.write_all(data)?;
        pad(&mut w, data.len() as u64)?;
        ino += 1;
    }
    for entry in &manifest.files {
        let path = files
            .iter()
            .find(|(n, _)| *n == entry.name)
            .map(|(_, p)| p)
            .ok_or_else(|| std::io::Error::other(format!("no file for {}", entry.name)))?;
        header(&mut w, ino, 0o100644, entry.size, &entry.name)?;
        let copied = std::io::copy(&mut std::fs::File::open(path)?.take(entry.size), &mut w)?;
        if copied != entry.size {
            return Err(std::io::Error::other(format!("{} changed while the bundle was written", path.display())));
        }
        pad(&mut w, copied)?;
        ino += 1;
    }
    header(&mut w, 0, 0, 0, TRAILER)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::SigningKey;

    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
        pub key: SigningKey,
        pub files: Vec<(String, PathBuf)>,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let mut files = Vec::new();
            for (name, data) in [
                ("vmlinuz", vec![0x4du8; 100_003]),
                ("initrd.img", (0..200_000u32).map(|i| (i * 7) as u8).collect()),
                ("cmdline.txt", b"console=ttyS0 quiet\n".to_vec()),
            ] {
                let p = dir.path().join(name);
                std::fs::write(&p, data).unwrap();
                files.push((name.to_string(), p));
            }
            Fixture { dir, key: SigningKey::generate().unwrap().0, files }
        }

        /// With the files a Raspberry Pi slot also needs.
        pub fn pi() -> Fixture {
            let mut fx = Fixture::new();
            for (name, data) in [
                ("config.txt", &b"arm_64bit=1\nkernel_watchdog_timeout=120\n"[..]),
                ("start4.elf", &[0x7fu8; 5000][..]),
                ("fixup4.dat", &[0x11u8; 700][..]),
            ] {
                let p = fx.dir.path().join(name);
                std::fs::write(&p, data).unwrap();
                fx.files.push((name.to_string(), p));
            }
            fx
        }

        pub fn bundle(&self, board: &str, version: &str) -> PathBuf {
            let m = describe(board, version, &self.files).unwrap();
            let out = self.dir.path().join(format!("{board}-{version}.bundle"));
            write(&out, &m, &self.key, &self.files).unwrap();
            out
        }
    }

    pub(crate) fn expect<'a>(key: &'a PublicKey, running: &'a Version) -> Expect<'a> {
        Expect {
            key,
            board: "qemu-x86_64",
            running,
            force: false,
            max_total: 1 << 20,
            required: &["vmlinuz", "initrd.img", "cmdline.txt"],
        }
    }

    fn check(path: &Path, e: &Expect) -> Result<Checked, BundleError> {
        let (checked, files) = open(std::fs::File::open(path)?, e)?;
        files.each(|_| Ok(()))?;
        Ok(checked)
    }

    #[test]
    fn a_signed_bundle_streams_its_files() {
        let fx = Fixture::new();
        let path = fx.bundle("qemu-x86_64", "1.1");
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let (checked, files) = open(std::fs::File::open(&path).unwrap(), &expect(&key, &running)).unwrap();
        assert_eq!(checked.version().to_string(), "1.1");
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        files
            .each(|ev| {
                match ev {
                    FileEvent::Begin(f) => got.push((f.name.clone(), Vec::new())),
                    FileEvent::Data(d) => got.last_mut().unwrap().1.extend_from_slice(d),
                    FileEvent::End(_) => {}
                }
                Ok(())
            })
            .unwrap();
        for ((name, data), (want, path)) in got.iter().zip(&fx.files) {
            assert_eq!(name, want);
            assert_eq!(data, &std::fs::read(path).unwrap());
        }
        // GNU cpio reads it (the format is the kernel's initramfs one).
        if let Ok(out) =
            std::process::Command::new("cpio").arg("-t").stdin(std::fs::File::open(&path).unwrap()).output()
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                listing.lines().collect::<Vec<_>>(),
                ["manifest", "manifest.sig", "vmlinuz", "initrd.img", "cmdline.txt"]
            );
        }
    }

    #[test]
    fn bad_bundles_are_refused_with_their_reason() {
        let fx = Fixture::new();
        let key = fx.key.public_key();
        let running: Version = "1.0".parse().unwrap();
        let e = expect(&key, &running);
        let good = fx.bundle("qemu-x86_64", "1.1");

        // older, equal, forced
        let old = fx.bundle("qemu-x86_64", "0.9");
        assert!(matches!(check(&old, &e), Err(BundleError::NotNewer { .. })));
        assert!(matches!(check(&fx.bundle("qemu-x86_64", "1.0.0"), &e), Err(BundleError::NotNewer { .. })));
        assert!(check(&old, &Expect { force: true, ..expect(&key, &running) }).is_ok());
        // another board
        let other = fx.bundle("rpi4-arm64", "1.1");
        let err = check(&other, &e).unwrap_err();
        assert_eq!(err.to_string(), "the bundle is for board rpi4-arm64; this box is qemu-x86_64");
        // another key
        let (stranger, _) = SigningKey::generate().unwrap();
        let theirs = stranger.public_key();
        assert!(matches!(check(&good, &expect(&theirs, &running)), Err(BundleError::BadSignature { .. })));
        // a byte of a file changed: found by its hash
        let mut data = std::fs::read(&good).unwrap();
        let at = data.len() - 400;
        data[at] ^= 1;
        let tampered = fx.dir.path().join("tampered");
        std::fs::write(&tampered, &data).unwrap();
        let err = check(&tampered, &e).unwrap_err();
        assert!(matches!(&err, BundleError::FileMismatch { name, .. } if name == "initrd.img"), "{err}");
        // the manifest changed (a version bumped by hand): the signature fails
        let bumped = fx.dir.path().join("bumped");
        let mut data = std::fs::read(&good).unwrap();
        let pos = data.windows(5).position(|w| w == b"\"1.1\"").unwrap();
        data[pos + 1..pos + 4].copy_from_slice(b"9.9");
        std::fs::write(&bumped, &data).unwrap();
        assert!(matches!(check(&bumped, &e), Err(BundleError::BadSignature { .. })));
        // unsigned: the signature entry is missing
        let m = describe("qemu-x86_64", "1.1", &fx.files).unwrap();
        let unsigned = fx.dir.path().join("unsigned");
        {
            let mut w = std::fs::File::create(&unsigned).unwrap();
            let json = m.to_json();
            let n = header(&mut w, 1, 0o100644, json.len() as u64, "manifest").unwrap();
            w.write_all(&json).unwrap();
            pad(&mut w, n + json.len() as u64).unwrap();
            for (name, path) in &fx.files {
                let d = std::fs::read(path).unwrap();
                header(&mut w, 2, 0o100644, d.len() as u64, name).unwrap();
                w.write_all(&d).unwrap();
                pad(&mut w, d.len() as u64).unwrap();
            }
            header(&mut w, 0, 0, 0, TRAILER).unwrap();
        }
        assert!(matches!(check(&unsigned, &e), Err(BundleError::Unsigned)));
        // truncated, and not a bundle at all
        let data = std::fs::read(&good).unwrap();
        let cut = fx.dir.path().join("cut");
        std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
        assert!(matches!(check(&cut, &e), Err(BundleError::Truncated)));
        let junk = fx.dir.path().join("junk");
        std::fs::write(&junk, b"<html>404</html>").unwrap();
        assert!(matches!(check(&junk, &e), Err(BundleError::Truncated | BundleError::NotABundle)));
        std::fs::write(&junk, vec![b'x'; 200]).unwrap();
        assert!(matches!(check(&junk, &e), Err(BundleError::NotABundle)));
        // a file every slot needs is missing
        let files: Vec<_> = fx.files.iter().filter(|(n, _)| n != "cmdline.txt").cloned().collect();
        let m = describe("qemu-x86_64", "1.1", &files).unwrap();
        let partial = fx.dir.path().join("partial");
        write(&partial, &m, &fx.key, &files).unwrap();
        assert!(matches!(check(&partial, &e), Err(BundleError::Manifest(ManifestError::Missing(_)))));
        assert!(check(&good, &e).is_ok());
    }
}
