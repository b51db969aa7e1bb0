//! A client's X25519 **encryption** key (PROTOCOL.md 6.1): the key senders
//! seal fragments to. It is never a Sphinx key, but it is stored the same way
//! (PKCS#8 v1 PEM with OID 1.3.101.110, mode 0600), so the file format and its
//! strict reader are [`SphinxKeypair`]'s.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x25519_dalek::StaticSecret;

use crate::keys::{KeyError, SphinxKeypair};

/// The public half of a client's encryption key, base58 in addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncryptionPublicKey(pub [u8; 32]);

impl EncryptionPublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionPublicKey({self})")
    }
}

impl FromStr for EncryptionPublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadPublicKey(s.to_string());
        let bytes = bs58::decode(s).into_vec().map_err(|_| bad())?;
        bytes.try_into().map(EncryptionPublicKey).map_err(|_| bad())
    }
}

impl Serialize for EncryptionPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EncryptionPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A client's X25519 encryption key pair. `Debug` never shows the secret.
#[derive(Clone)]
pub struct EncryptionKeypair {
    secret: StaticSecret,
    public: EncryptionPublicKey,
}

impl EncryptionKeypair {
    /// A fresh key from the thread-local CSPRNG.
    pub fn generate() -> Self {
        Self::generate_from_rng(&mut rand::rng())
    }

    pub fn generate_from_rng<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    pub fn from_secret(secret: StaticSecret) -> Self {
        let public = EncryptionPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> EncryptionPublicKey {
        self.public
    }

    /// Writes the key as a PKCS#8 v1 X25519 PEM with mode 0600; refuses to
    /// overwrite an existing file.
    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        SphinxKeypair::from_secret(self.secret.clone()).write_pem(path)
    }

    pub fn read_pem(path: &Path) -> Result<Self, KeyError> {
        let key = SphinxKeypair::read_pem(path)?;
        Ok(Self::from_secret(key.secret().clone()))
    }
}

impl fmt::Debug for EncryptionKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_roundtrip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.pem");
        let k = EncryptionKeypair::generate();
        k.write_pem(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = EncryptionKeypair::read_pem(&path).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(back.secret().to_bytes(), k.secret().to_bytes());
        assert!(matches!(k.write_pem(&path), Err(KeyError::Exists(_))));
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.secret().to_bytes())));
    }

    #[test]
    fn public_key_base58_and_serde() {
        let k = EncryptionKeypair::generate().public();
        assert_eq!(k.to_string().parse::<EncryptionPublicKey>().unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{k}\""));
        assert_eq!(
            serde_json::from_str::<EncryptionPublicKey>(&json).unwrap(),
            k
        );
        assert!("0OIl".parse::<EncryptionPublicKey>().is_err());
        assert!("abc".parse::<EncryptionPublicKey>().is_err());
    }
}
