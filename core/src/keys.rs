//! Node keys: the long-term Ed25519 identity and the X25519 Sphinx key.
//!
//! Both live on disk as PKCS#8 PEM (RFC 5958 / RFC 8410), the format openssl
//! reads, written with mode 0600. Public keys are shown as base58.
//!
//! The Ed25519 identity public key doubles as the node's *address*: it is the
//! 32-byte `NodeAddressBytes` written into Sphinx headers and the raw public
//! key pinned by QUIC/TLS. One value, three uses, no lookup table to get wrong.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Errors reading, writing or parsing key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what} PEM file: {reason}")]
    Format {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("invalid public key {0:?}: expected 32 bytes in base58")]
    BadPublicKey(String),
}

/// A node's public identity: its Ed25519 verifying key, 32 bytes.
///
/// Used as the node id, as the Sphinx `NodeAddressBytes`, and as the TLS raw
/// public key that peers pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The verifying key, if the bytes are a valid Ed25519 point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// DER SubjectPublicKeyInfo, the form TLS raw public keys carry (RFC 7250).
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        let vk = self.verifying_key()?;
        vk.to_public_key_der().ok().map(|d| d.as_bytes().to_vec())
    }

    /// Short form for logs: the first 8 base58 characters.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s.chars().take(8).collect()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_b58_32(s).map(NodeId)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An X25519 public key used for Sphinx, serialised as base58.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SphinxPublicKey(pub [u8; 32]);

impl SphinxPublicKey {
    pub fn to_x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for SphinxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for SphinxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SphinxPublicKey({self})")
    }
}

impl FromStr for SphinxPublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_b58_32(s).map(SphinxPublicKey)
    }
}

impl Serialize for SphinxPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SphinxPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn decode_b58_32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = bs58::decode(s)
        .into_vec()
        .map_err(|_| KeyError::BadPublicKey(s.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::BadPublicKey(s.to_string()))
}

/// The node's long-term Ed25519 identity key pair.
pub struct IdentityKeypair {
    signing: SigningKey,
}

impl IdentityKeypair {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        Self {
            signing: SigningKey::generate(&mut rng),
        }
    }

    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(bytes),
        }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// PKCS#8 v1 DER of the private key, for rustls' key loader.
    pub fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc = self.signing.to_pkcs8_der().map_err(|e| KeyError::Format {
            path: PathBuf::new(),
            what: "Ed25519",
            reason: e.to_string(),
        })?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Format {
                path: path.to_path_buf(),
                what: "Ed25519",
                reason: e.to_string(),
            })?;
        write_private_file(path, pem.as_bytes())
    }

    pub fn read_pem(path: &Path) -> Result<Self, KeyError> {
        let text = read_private_file(path)?;
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            what: "Ed25519 PKCS#8",
            reason: e.to_string(),
        })?;
        Ok(Self { signing })
    }
}

/// DER prefix of a PKCS#8 v1 X25519 private key (RFC 8410 §7): SEQUENCE,
/// version 0, AlgorithmIdentifier id-X25519 (1.3.101.110), OCTET STRING
/// wrapping an OCTET STRING of 32 bytes.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// An X25519 key pair used to unwrap Sphinx packets.
pub struct SphinxKeypair {
    secret: x25519_dalek::StaticSecret,
    public: SphinxPublicKey,
}

impl SphinxKeypair {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        Self::from_secret(x25519_dalek::StaticSecret::random_from_rng(&mut rng))
    }

    pub fn from_secret(secret: x25519_dalek::StaticSecret) -> Self {
        let public = SphinxPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    pub fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> SphinxPublicKey {
        self.public
    }

    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&X25519_PKCS8_PREFIX);
        der.extend_from_slice(self.secret.as_bytes());
        let pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())));
        write_private_file(path, pem.as_bytes())
    }

    pub fn read_pem(path: &Path) -> Result<Self, KeyError> {
        let text = read_private_file(path)?;
        let bad = |reason: &str| KeyError::Format {
            path: path.to_path_buf(),
            what: "X25519 PKCS#8",
            reason: reason.to_string(),
        };
        let parsed = pem::parse(text.as_bytes()).map_err(|e| bad(&e.to_string()))?;
        if parsed.tag() != "PRIVATE KEY" {
            return Err(bad("PEM label is not PRIVATE KEY"));
        }
        let der = Zeroizing::new(parsed.into_contents());
        if der.len() != 48 || der[..16] != X25519_PKCS8_PREFIX {
            return Err(bad("not an RFC 8410 X25519 private key"));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&der[16..]);
        Ok(Self::from_secret(x25519_dalek::StaticSecret::from(*raw)))
    }
}

/// Writes a private key file (0600) that appears complete or not at all: a
/// reader (a node loading its stored keys while its registrar makes the
/// next one) must never see it empty or half written. Written to a
/// temporary file beside it, synced, then hard-linked into place, which
/// fails if `path` exists: an existing key is never replaced.
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(KeyError::Exists(path.to_path_buf()));
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A leftover of a crash of this very process id: nobody else writes it.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            io(e)
        }
    })
}

fn read_private_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_roundtrips_through_pem_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.pem");
        let k = IdentityKeypair::generate();
        k.write_pem(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = IdentityKeypair::read_pem(&path).unwrap();
        assert_eq!(k.node_id(), back.node_id());
        assert!(matches!(k.write_pem(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn sphinx_key_roundtrips_and_rejects_ed25519_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sphinx.pem");
        let k = SphinxKeypair::generate();
        k.write_pem(&path).unwrap();
        let back = SphinxKeypair::read_pem(&path).unwrap();
        assert_eq!(k.public(), back.public());

        let id_path = dir.path().join("id.pem");
        IdentityKeypair::generate().write_pem(&id_path).unwrap();
        assert!(SphinxKeypair::read_pem(&id_path).is_err());
        assert!(IdentityKeypair::read_pem(&path).is_err());
    }

    #[test]
    fn node_id_base58_roundtrip_and_garbage() {
        let id = IdentityKeypair::generate().node_id();
        let s = id.to_string();
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
        assert!("not-base58-0OIl".parse::<NodeId>().is_err());
        assert!("abc".parse::<NodeId>().is_err());
        assert!(id.spki_der().is_some());
    }
}
