//! The update signing key: Ed25519 (ring). The operator keeps the private
//! key (PKCS#8 PEM, `PRIVATE KEY`; `relaybox-ca update-key` makes one, and
//! `openssl genpkey -algorithm ed25519` keys work too); every image carries
//! the public key (`PUBLIC KEY`, SubjectPublicKeyInfo PEM, which
//! `openssl pkey -pubin` reads), and a box installs only bundles whose
//! manifest it verifies.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// SubjectPublicKeyInfo of an Ed25519 key, up to the 32 key bytes (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM file: {0}")]
    Pem(String),
    #[error("expected a PEM {expected} block, found {found}")]
    Label { expected: &'static str, found: String },
    #[error("not an Ed25519 public key (SubjectPublicKeyInfo of 44 bytes)")]
    NotEd25519Public,
    #[error("not an Ed25519 private key in PKCS#8: {0}")]
    NotEd25519Private(String),
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A public key the box trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(KeyError::Label { expected: "PUBLIC KEY", found: block.tag().to_string() });
        }
        let der = block.contents();
        if der.len() != SPKI_PREFIX.len() + 32 || der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
            return Err(KeyError::NotEd25519Public);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&der[SPKI_PREFIX.len()..]);
        Ok(PublicKey(key))
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    /// The first 16 hex digits of the key's SHA-256, to name it in messages.
    pub fn fingerprint(&self) -> String {
        crate::hex(&ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref()[..8])
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(message, signature).is_ok()
    }
}

/// The operator's private key (host side: `cargo xtask bundle`).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key pair; returns it with its PKCS#8 PEM (to store, mode 0600).
    pub fn generate() -> Result<(SigningKey, String), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        Ok((SigningKey::from_pem(&pem)?, pem))
    }

    pub fn from_pem(text: &str) -> Result<SigningKey, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::Label { expected: "PRIVATE KEY", found: block.tag().to_string() });
        }
        // v1 PKCS#8 (openssl) has no public key in it; ring derives it.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
            .map(SigningKey)
            .map_err(|e| KeyError::NotEd25519Private(e.to_string()))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(key)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.0.sign(message).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_sign() {
        let (key, pem) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&pem).unwrap();
        let public = PublicKey::from_pem(&key.public_key().to_pem()).unwrap();
        assert_eq!(public, again.public_key());
        let sig = key.sign(b"manifest");
        assert!(public.verifies(b"manifest", &sig));
        assert!(!public.verifies(b"manifesT", &sig));
        let (other, _) = SigningKey::generate().unwrap();
        assert!(!other.public_key().verifies(b"manifest", &sig));
        assert!(matches!(PublicKey::from_pem(&pem), Err(KeyError::Label { .. })));
        assert!(matches!(SigningKey::from_pem(&public.to_pem()), Err(KeyError::Label { .. })));
        assert_eq!(public.fingerprint().len(), 16);
    }

    /// `openssl genpkey -algorithm ed25519` writes PKCS#8 v1 (no public
    /// key inside); such keys sign too.
    #[test]
    fn openssl_v1_private_keys_load() {
        let v1 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pem(v1).unwrap();
        // RFC 8410's example key pair (sections 10.1 and 10.3).
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert_eq!(key.public_key(), PublicKey::from_pem(public).unwrap());
        assert_eq!(crate::hex(&key.public_key().0), "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1");
    }
}
