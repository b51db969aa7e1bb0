//! Client addresses (PROTOCOL.md 6.1): `identity.encryption@provider`, each
//! part the base58 of 32 bytes.
//!
//! People copy these around, so a parse error says which part is wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::keys::EncryptionPublicKey;
use crate::keys::NodeId;

/// Where and how to reach a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddress {
    /// The client's Ed25519 identity: its inbox id and the Sphinx destination
    /// of packets for it.
    pub identity: NodeId,
    /// The client's X25519 key that fragments are sealed to.
    pub encryption: EncryptionPublicKey,
    /// The node id of the provider holding the client's inbox.
    pub provider: NodeId,
}

/// Why a string is not a client address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("missing '@provider'")]
    MissingProvider,
    #[error("more than one '@'")]
    ExtraAt,
    #[error("missing '.encryption' after the identity")]
    MissingEncryption,
    #[error("more than one '.' before the '@'")]
    ExtraDot,
    #[error("{part}: invalid base58")]
    Base58 { part: &'static str },
    #[error("{part}: expected 32 bytes, got {len}")]
    Length { part: &'static str, len: usize },
    #[error("{part}: not an Ed25519 public key")]
    NotEd25519 { part: &'static str },
}

impl ClientAddress {
    pub fn new(identity: NodeId, encryption: EncryptionPublicKey, provider: NodeId) -> Self {
        Self {
            identity,
            encryption,
            provider,
        }
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.identity, self.encryption, self.provider)
    }
}

impl fmt::Debug for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientAddress({self})")
    }
}

fn part_bytes(part: &'static str, s: &str) -> Result<[u8; 32], AddressError> {
    let bytes = bs58::decode(s)
        .into_vec()
        .map_err(|_| AddressError::Base58 { part })?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| AddressError::Length { part, len })
}

/// Identities and providers are Ed25519 keys; a string that is not a point
/// can never be the key of a real client or node.
fn ed25519_part(part: &'static str, s: &str) -> Result<NodeId, AddressError> {
    let id = NodeId(part_bytes(part, s)?);
    match id.verifying_key() {
        Some(_) => Ok(id),
        None => Err(AddressError::NotEd25519 { part }),
    }
}

impl FromStr for ClientAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // base58 has neither '.' nor '@', so splitting cannot cut a key.
        let (local, provider) = s.split_once('@').ok_or(AddressError::MissingProvider)?;
        if provider.contains('@') {
            return Err(AddressError::ExtraAt);
        }
        let (identity, encryption) = local
            .split_once('.')
            .ok_or(AddressError::MissingEncryption)?;
        if encryption.contains('.') {
            return Err(AddressError::ExtraDot);
        }
        Ok(Self {
            identity: ed25519_part("identity", identity)?,
            encryption: EncryptionPublicKey(part_bytes("encryption key", encryption)?),
            provider: ed25519_part("provider", provider)?,
        })
    }
}

impl Serialize for ClientAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::EncryptionKeypair;
    use crate::keys::IdentityKeypair;

    fn address() -> ClientAddress {
        ClientAddress::new(
            IdentityKeypair::generate().node_id(),
            EncryptionKeypair::generate().public(),
            IdentityKeypair::generate().node_id(),
        )
    }

    #[test]
    fn display_parse_and_serde_roundtrip() {
        let a = address();
        let s = a.to_string();
        assert_eq!(s, format!("{}.{}@{}", a.identity, a.encryption, a.provider));
        assert_eq!(s.parse::<ClientAddress>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<ClientAddress>(&json).unwrap(), a);
        assert!(serde_json::from_str::<ClientAddress>("\"x.y\"").is_err());
    }

    #[test]
    fn errors_name_the_wrong_part() {
        let a = address();
        let (id, enc, prov) = (
            a.identity.to_string(),
            a.encryption.to_string(),
            a.provider.to_string(),
        );
        let err = |s: String| s.parse::<ClientAddress>().unwrap_err().to_string();
        assert_eq!(err(format!("{id}.{enc}")), "missing '@provider'");
        assert_eq!(
            err(format!("{id}@{prov}")),
            "missing '.encryption' after the identity"
        );
        assert_eq!(
            err(format!("{id}.{enc}@{prov}@{prov}")),
            "more than one '@'"
        );
        assert_eq!(
            err(format!("{id}.{enc}.{enc}@{prov}")),
            "more than one '.' before the '@'"
        );
        assert_eq!(
            err(format!("{id}.{enc}0@{prov}")),
            "encryption key: invalid base58"
        );
        assert_eq!(
            err(format!("0{id}.{enc}@{prov}")),
            "identity: invalid base58"
        );
        assert_eq!(
            err(format!("{id}.{enc}@{prov}l")),
            "provider: invalid base58"
        );
        assert_eq!(
            err(format!("{id}.11@{prov}")),
            "encryption key: expected 32 bytes, got 2"
        );
        assert_eq!(
            err(format!(".{enc}@{prov}")),
            "identity: expected 32 bytes, got 0"
        );
        assert_eq!(
            err(format!("{id}.{enc}@")),
            "provider: expected 32 bytes, got 0"
        );
        // 32 bytes that do not decompress to a curve point.
        let not_point = (2u8..)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| NodeId(*b).verifying_key().is_none())
            .unwrap();
        let not_point = bs58::encode(not_point).into_string();
        assert_eq!(
            err(format!("{id}.{enc}@{not_point}")),
            "provider: not an Ed25519 public key"
        );
        assert_eq!(
            err(format!(" {id}.{enc}@{prov}")),
            "identity: invalid base58"
        );
    }
}
