//! Node descriptors: what a node tells the directory about itself, signed
//! with its identity key, for one epoch.

use std::net::SocketAddr;

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::keys::{IdentityKeypair, NodeId, SphinxPublicKey};
use crate::topology::Role;

use super::{DESCRIPTOR_CONTEXT, MAX_DESCRIPTOR_BYTES, b64_decode, b64_encode, signed_message};

/// Longest `software` string.
pub const MAX_SOFTWARE_LEN: usize = 64;

/// A node's registration for one epoch. Serialised as JSON with exactly these
/// fields; parsing refuses unknown ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// Ed25519 identity key (base58); must be the key that signed this.
    pub identity: NodeId,
    /// X25519 Sphinx public key the node will use during `epoch` (base58).
    pub sphinx_key: SphinxPublicKey,
    /// The epoch this descriptor is for (normally the upcoming one).
    pub epoch: u64,
    /// QUIC address (`ip:port`, IPv6 as `[ip]:port`).
    pub address: SocketAddr,
    /// `"mix"` or `"provider"`.
    pub role: Role,
    /// Software name and version, e.g. `loopmix-node/0.1.0` (printable ASCII).
    pub software: String,
    /// When the node made this descriptor, Unix seconds. Of two descriptors
    /// from one identity for one epoch, the later one wins.
    pub published_at: u64,
}

/// Wire form: the exact descriptor bytes, and the identity's signature over
/// `DESCRIPTOR_CONTEXT || bytes`. The identity is repeated outside the bytes
/// so the signature is checked before the bytes are parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDescriptor {
    /// Signer's Ed25519 key (base58); must equal `descriptor.identity`.
    pub identity: NodeId,
    /// base64url (no padding) of the descriptor's JSON bytes.
    pub descriptor: String,
    /// base64url (no padding) of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// A descriptor whose signature and contents have been checked, with the
/// wire form it came in (authorities store and re-serve that exact form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDescriptor {
    pub descriptor: Descriptor,
    pub signed: SignedDescriptor,
    /// The decoded descriptor bytes (what the signature covers).
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DescriptorError {
    #[error("descriptor is {len} bytes, more than the {max} allowed")]
    Oversized { len: usize, max: usize },
    #[error("malformed descriptor: {0}")]
    Malformed(String),
    #[error("signature does not verify for identity {0}")]
    BadSignature(NodeId),
    #[error("descriptor is for identity {inner} but signed by {outer}")]
    IdentityMismatch { outer: NodeId, inner: NodeId },
    #[error("descriptor field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl DescriptorError {
    /// Short machine-readable code (used in HTTP error bodies and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Malformed(_) => "malformed",
            Self::BadSignature(_) => "bad_signature",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::Invalid { .. } => "invalid",
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DescriptorError {
    DescriptorError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Descriptor {
    /// A descriptor for `epoch`, published at `published_at` (Unix seconds,
    /// the caller's clock), naming this build of loopmix as its software.
    pub fn new(
        identity: NodeId,
        sphinx_key: SphinxPublicKey,
        epoch: u64,
        address: SocketAddr,
        role: Role,
        published_at: u64,
    ) -> Self {
        Self {
            identity,
            sphinx_key,
            epoch,
            address,
            role,
            software: concat!("loopmix/", env!("CARGO_PKG_VERSION")).to_string(),
            published_at,
        }
    }

    /// Rules that need no clock and no directory state.
    pub fn validate(&self) -> Result<(), DescriptorError> {
        if self.identity.verifying_key().is_none() {
            return Err(invalid("identity", "not a valid Ed25519 public key"));
        }
        if self.sphinx_key.0 == [0u8; 32] {
            return Err(invalid("sphinx_key", "all-zero X25519 key"));
        }
        if self.epoch == 0 {
            return Err(invalid("epoch", "epoch 0 is never valid"));
        }
        let ip = self.address.ip();
        if self.address.port() == 0 {
            return Err(invalid("address", format!("{}: port 0", self.address)));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(
                "address",
                format!("{}: not a unicast address peers can dial", self.address),
            ));
        }
        if let std::net::IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return Err(invalid("address", format!("{}: broadcast", self.address)));
        }
        if self.software.is_empty()
            || self.software.len() > MAX_SOFTWARE_LEN
            || !self.software.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(invalid(
                "software",
                format!("must be 1..={MAX_SOFTWARE_LEN} printable ASCII characters without spaces"),
            ));
        }
        Ok(())
    }

    /// Validates, serialises and signs. `key` must be this descriptor's identity.
    pub fn sign(&self, key: &IdentityKeypair) -> Result<SignedDescriptor, DescriptorError> {
        if key.node_id() != self.identity {
            return Err(DescriptorError::IdentityMismatch {
                outer: key.node_id(),
                inner: self.identity,
            });
        }
        self.validate()?;
        let bytes =
            serde_json::to_vec(self).map_err(|e| DescriptorError::Malformed(e.to_string()))?;
        Ok(SignedDescriptor::sign_bytes(&bytes, key))
    }
}

impl SignedDescriptor {
    /// Signs arbitrary bytes as a descriptor (tests use it to sign bad ones).
    pub fn sign_bytes(bytes: &[u8], key: &IdentityKeypair) -> Self {
        let sig = key.sign(&signed_message(DESCRIPTOR_CONTEXT, bytes));
        Self {
            identity: key.node_id(),
            descriptor: b64_encode(bytes),
            signature: b64_encode(&sig),
        }
    }

    /// Size check, signature check (`verify_strict`) over the exact bytes,
    /// then strict parsing and [`Descriptor::validate`] — in that order.
    pub fn verify(&self) -> Result<VerifiedDescriptor, DescriptorError> {
        // base64 is 4/3 of the bytes; refuse before decoding anything large.
        if self.descriptor.len() > MAX_DESCRIPTOR_BYTES.div_ceil(3) * 4 {
            return Err(DescriptorError::Oversized {
                len: self.descriptor.len() / 4 * 3,
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        let bytes = b64_decode(&self.descriptor)
            .map_err(|e| DescriptorError::Malformed(format!("descriptor: not base64url: {e}")))?;
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::Oversized {
                len: bytes.len(),
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        let sig = b64_decode(&self.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
            .ok_or_else(|| {
                DescriptorError::Malformed("signature: not 64 bytes of base64url".into())
            })?;
        let vk = self
            .identity
            .verifying_key()
            .ok_or_else(|| invalid("identity", "not a valid Ed25519 public key"))?;
        vk.verify_strict(
            &signed_message(DESCRIPTOR_CONTEXT, &bytes),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| DescriptorError::BadSignature(self.identity))?;
        let descriptor: Descriptor = serde_json::from_slice(&bytes)
            .map_err(|e| DescriptorError::Malformed(e.to_string()))?;
        if descriptor.identity != self.identity {
            return Err(DescriptorError::IdentityMismatch {
                outer: self.identity,
                inner: descriptor.identity,
            });
        }
        descriptor.validate()?;
        Ok(VerifiedDescriptor {
            descriptor,
            signed: self.clone(),
            bytes,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::SphinxKeypair;

    pub(crate) fn descriptor(
        key: &IdentityKeypair,
        epoch: u64,
        port: u16,
        role: Role,
    ) -> Descriptor {
        Descriptor {
            identity: key.node_id(),
            sphinx_key: SphinxKeypair::generate().public(),
            epoch,
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            role,
            software: "loopmix-node/0.1.0".into(),
            published_at: 1_700_000_000,
        }
    }

    #[test]
    fn sign_verify_roundtrip() {
        let k = IdentityKeypair::generate();
        let d = descriptor(&k, 7, 4000, Role::Mix);
        let s = d.sign(&k).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: SignedDescriptor = serde_json::from_str(&json).unwrap();
        let v = back.verify().unwrap();
        assert_eq!(v.descriptor, d);
        assert_eq!(v.signed, s);

        let d = Descriptor::new(
            k.node_id(),
            SphinxKeypair::generate().public(),
            8,
            "[2001:db8::1]:1789".parse().unwrap(),
            Role::Provider,
            1_700_000_000,
        );
        assert_eq!(d.sign(&k).unwrap().verify().unwrap().descriptor, d);
    }

    #[test]
    fn one_changed_byte_is_rejected() {
        let k = IdentityKeypair::generate();
        let s = descriptor(&k, 7, 4000, Role::Mix).sign(&k).unwrap();
        let mut bytes = b64_decode(&s.descriptor).unwrap();
        let i = bytes.iter().position(|&b| b == b'4').unwrap();
        bytes[i] = b'5';
        let t = SignedDescriptor {
            descriptor: b64_encode(&bytes),
            ..s.clone()
        };
        assert_eq!(t.verify(), Err(DescriptorError::BadSignature(k.node_id())));

        let mut sig = b64_decode(&s.signature).unwrap();
        sig[3] ^= 1;
        let t = SignedDescriptor {
            signature: b64_encode(&sig),
            ..s
        };
        assert_eq!(t.verify().unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn signed_by_someone_else_is_rejected() {
        let k = IdentityKeypair::generate();
        let other = IdentityKeypair::generate();
        let d = descriptor(&k, 7, 4000, Role::Mix);
        assert!(matches!(
            d.sign(&other),
            Err(DescriptorError::IdentityMismatch { .. })
        ));
        // Inner identity k, signed (and labelled) by `other`.
        let bytes = serde_json::to_vec(&d).unwrap();
        let s = SignedDescriptor::sign_bytes(&bytes, &other);
        assert!(matches!(
            s.verify(),
            Err(DescriptorError::IdentityMismatch { .. })
        ));
        // Labelled k but signed by `other`.
        let s = SignedDescriptor {
            identity: k.node_id(),
            ..s
        };
        assert_eq!(s.verify().unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn bad_contents_are_named() {
        let k = IdentityKeypair::generate();
        let mut d = descriptor(&k, 7, 4000, Role::Mix);
        d.address = "0.0.0.0:4000".parse().unwrap();
        let bytes = serde_json::to_vec(&d).unwrap();
        let e = SignedDescriptor::sign_bytes(&bytes, &k)
            .verify()
            .unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");

        d.address = "127.0.0.1:0".parse().unwrap();
        assert!(d.validate().unwrap_err().to_string().contains("port 0"));

        let mut d = descriptor(&k, 7, 4000, Role::Mix);
        d.software = "has space".into();
        assert!(d.validate().is_err());

        let mut v = serde_json::to_value(descriptor(&k, 7, 4000, Role::Mix)).unwrap();
        v["role"] = serde_json::json!("dragon");
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = SignedDescriptor::sign_bytes(&bytes, &k)
            .verify()
            .unwrap_err();
        assert!(e.to_string().contains("dragon"), "{e}");

        let mut v = serde_json::to_value(descriptor(&k, 7, 4000, Role::Mix)).unwrap();
        v["extra"] = serde_json::json!(1);
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = SignedDescriptor::sign_bytes(&bytes, &k)
            .verify()
            .unwrap_err();
        assert_eq!(e.code(), "malformed");

        let big = vec![b' '; MAX_DESCRIPTOR_BYTES + 1];
        let e = SignedDescriptor::sign_bytes(&big, &k).verify().unwrap_err();
        assert_eq!(e.code(), "oversized");
    }
}
