//! End-to-end encryption of fragments (PROTOCOL.md 6.3 and 6.5).
//!
//! * [`seal`] / [`open`]: to a client's X25519 encryption key, with a fresh
//!   ephemeral key per packet: `eph-pub(32) ‖ ChaCha20-Poly1305(K, nonce 0,
//!   aad = kind)(zero-padded plaintext) ‖ tag(16)`, where
//!   `K = HKDF-SHA256(ikm = X25519(e, R), salt = eph-pub ‖ R,
//!   info = "loopmix-e2e-v1")`. The nonce can be 0 because every `K` is
//!   derived from a fresh ephemeral key and used exactly once.
//! * [`seal_reply`] / [`open_reply`]: under the 32-byte key of a reply block,
//!   nonce 0, aad `0x03`. A reply block is single use, so its key is too: a
//!   sender that used one block twice would reuse a ChaCha20 key stream.
//!
//! The plaintext is zero-padded so the output has exactly the length the
//! caller asks for: every sealed payload of a network has the same size, and
//! [`open`] returns the padded plaintext (a fragment carries its own length).
//! Nothing here panics on any input; the tag comparison is the AEAD crate's
//! constant-time one.

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use rand::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroizing;

use super::keys::{EncryptionKeypair, EncryptionPublicKey};

/// HKDF `info` of the sealing key.
pub const HKDF_INFO: &[u8] = b"loopmix-e2e-v1";
/// Length of the ephemeral X25519 public key that starts a sealed blob.
pub const EPHEMERAL_KEY_LEN: usize = 32;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes [`seal`] adds to the padded plaintext.
pub const SEAL_OVERHEAD: usize = EPHEMERAL_KEY_LEN + TAG_LEN;
/// Bytes [`seal_reply`] adds to the padded plaintext.
pub const REPLY_OVERHEAD: usize = TAG_LEN;
/// Associated data of reply ciphertexts: the `reply` payload kind.
pub const REPLY_AAD: u8 = 0x03;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed length {len} is below the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
    #[error("plaintext of {len} bytes does not fit; at most {max} bytes")]
    PlaintextTooLong { len: usize, max: usize },
    #[error("recipient key is a low-order point: it yields no shared secret")]
    WeakKey,
    #[error("authentication failed: wrong key, wrong kind or tampered bytes")]
    Authentication,
    #[error("cipher refused the input: {0}")]
    Crypto(&'static str),
}

impl SealError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::PlaintextTooLong { .. } => "plaintext_too_long",
            Self::WeakKey => "weak_key",
            Self::Authentication => "authentication",
            Self::Crypto(_) => "crypto",
        }
    }
}

type SymmetricKey = Zeroizing<[u8; 32]>;

fn derive_key(
    shared: &[u8; 32],
    eph_pub: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<SymmetricKey, SealError> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub);
    salt[32..].copy_from_slice(recipient);
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(HKDF_INFO, okm.as_mut())
        .map_err(|_| SealError::Crypto("HKDF output length"))?;
    Ok(okm)
}

/// Encrypts `buf` in place with nonce 0 and returns the tag.
fn encrypt(key: &SymmetricKey, aad: u8, buf: &mut [u8]) -> Result<Tag, SealError> {
    ChaCha20Poly1305::new(&Key::from(**key))
        .encrypt_inout_detached(&Nonce::default(), &[aad], buf.into())
        .map_err(|_| SealError::Crypto("ChaCha20-Poly1305 length limit"))
}

/// Checks the tag and decrypts `ct` (nonce 0) into a new buffer.
fn decrypt(
    key: &SymmetricKey,
    aad: u8,
    ct: &[u8],
    tag: &[u8; TAG_LEN],
) -> Result<Vec<u8>, SealError> {
    let mut buf = ct.to_vec();
    ChaCha20Poly1305::new(&Key::from(**key))
        .decrypt_inout_detached(
            &Nonce::default(),
            &[aad],
            buf.as_mut_slice().into(),
            &Tag::from(*tag),
        )
        .map_err(|_| SealError::Authentication)?;
    Ok(buf)
}

/// The padded plaintext length that gives `total` output bytes after
/// `overhead`, checking that `plaintext_len` fits.
fn padded_len(total: usize, overhead: usize, plaintext_len: usize) -> Result<usize, SealError> {
    let padded = total.checked_sub(overhead).ok_or(SealError::TooShort {
        len: total,
        min: overhead,
    })?;
    if plaintext_len > padded {
        return Err(SealError::PlaintextTooLong {
            len: plaintext_len,
            max: padded,
        });
    }
    Ok(padded)
}

/// Seals `plaintext` to `recipient` for a payload of kind `kind` (the AEAD's
/// associated data), zero-padded so the result is exactly `sealed_len` bytes.
/// The plaintext may be at most `sealed_len - SEAL_OVERHEAD` bytes.
pub fn seal<R: CryptoRng + ?Sized>(
    recipient: &EncryptionPublicKey,
    kind: u8,
    plaintext: &[u8],
    sealed_len: usize,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let padded = padded_len(sealed_len, SEAL_OVERHEAD, plaintext.len())?;
    let eph = EphemeralSecret::random_from_rng(rng);
    let eph_pub = PublicKey::from(&eph);
    let shared = eph.diffie_hellman(&recipient.to_x25519());
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let key = derive_key(shared.as_bytes(), eph_pub.as_bytes(), recipient.as_bytes())?;

    let mut out = Vec::with_capacity(sealed_len);
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(plaintext);
    out.resize(EPHEMERAL_KEY_LEN + padded, 0);
    let (_, body) = out.split_at_mut(EPHEMERAL_KEY_LEN);
    let tag = encrypt(&key, kind, body)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a blob made by [`seal`] for `kind`, returning the padded plaintext
/// (`sealed.len() - SEAL_OVERHEAD` bytes).
pub fn open(key: &EncryptionKeypair, kind: u8, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let too_short = SealError::TooShort {
        len: sealed.len(),
        min: SEAL_OVERHEAD,
    };
    let (eph_pub, rest) = sealed
        .split_first_chunk::<EPHEMERAL_KEY_LEN>()
        .ok_or(too_short.clone())?;
    let (ct, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(too_short)?;
    let shared = key.secret().diffie_hellman(&PublicKey::from(*eph_pub));
    if !shared.was_contributory() {
        // Only a forger picks a low-order ephemeral key.
        return Err(SealError::Authentication);
    }
    let sym = derive_key(shared.as_bytes(), eph_pub, key.public().as_bytes())?;
    decrypt(&sym, kind, ct, tag)
}

/// Encrypts `plaintext` under a reply block's key, zero-padded so the
/// ciphertext (with its tag) is exactly `ct_len` bytes.
pub fn seal_reply(key: &[u8; 32], plaintext: &[u8], ct_len: usize) -> Result<Vec<u8>, SealError> {
    let padded = padded_len(ct_len, REPLY_OVERHEAD, plaintext.len())?;
    let mut out = Vec::with_capacity(ct_len);
    out.extend_from_slice(plaintext);
    out.resize(padded, 0);
    let tag = encrypt(&Zeroizing::new(*key), REPLY_AAD, &mut out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a reply ciphertext, returning the padded plaintext.
pub fn open_reply(key: &[u8; 32], ct: &[u8]) -> Result<Vec<u8>, SealError> {
    let (body, tag) = ct
        .split_last_chunk::<TAG_LEN>()
        .ok_or(SealError::TooShort {
            len: ct.len(),
            min: REPLY_OVERHEAD,
        })?;
    decrypt(&Zeroizing::new(*key), REPLY_AAD, body, tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_open_roundtrip_pads_to_the_requested_length() {
        let k = EncryptionKeypair::generate();
        let sealed = seal(&k.public(), 1, b"fragment", 200, &mut rand::rng()).unwrap();
        assert_eq!(sealed.len(), 200);
        let opened = open(&k, 1, &sealed).unwrap();
        assert_eq!(opened.len(), 200 - SEAL_OVERHEAD);
        assert_eq!(&opened[..8], b"fragment");
        assert!(opened[8..].iter().all(|b| *b == 0));
        // The exact fit and the minimum.
        let full = vec![7u8; 152];
        assert_eq!(
            open(
                &k,
                1,
                &seal(&k.public(), 1, &full, 200, &mut rand::rng()).unwrap()
            )
            .unwrap(),
            full
        );
        assert_eq!(
            open(
                &k,
                1,
                &seal(&k.public(), 1, b"", 48, &mut rand::rng()).unwrap()
            )
            .unwrap(),
            b""
        );
    }

    #[test]
    fn seal_rejects_what_does_not_fit() {
        let k = EncryptionKeypair::generate().public();
        assert_eq!(
            seal(&k, 1, &[0; 153], 200, &mut rand::rng()),
            Err(SealError::PlaintextTooLong { len: 153, max: 152 })
        );
        assert_eq!(
            seal(&k, 1, b"", 47, &mut rand::rng()),
            Err(SealError::TooShort { len: 47, min: 48 })
        );
        // The identity point and other low-order points give no secret.
        assert_eq!(
            seal(
                &EncryptionPublicKey([0; 32]),
                1,
                b"x",
                100,
                &mut rand::rng()
            ),
            Err(SealError::WeakKey)
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            seal(&EncryptionPublicKey(one), 1, b"x", 100, &mut rand::rng()),
            Err(SealError::WeakKey)
        );
    }

    #[test]
    fn tampering_wrong_key_and_wrong_kind_fail() {
        let k = EncryptionKeypair::generate();
        let sealed = seal(&k.public(), 1, b"secret", 120, &mut rand::rng()).unwrap();
        for i in [0, 31, 32, 60, 103, 104, 119] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&k, 1, &bad),
                Err(SealError::Authentication),
                "byte {i}"
            );
        }
        assert_eq!(open(&k, 2, &sealed), Err(SealError::Authentication));
        let other = EncryptionKeypair::generate();
        assert_eq!(open(&other, 1, &sealed), Err(SealError::Authentication));
        assert_eq!(open(&k, 1, &sealed[..119]), Err(SealError::Authentication));
        assert!(matches!(
            open(&k, 1, &sealed[..47]),
            Err(SealError::TooShort { .. })
        ));
        let mut low_order = sealed.clone();
        low_order[..32].fill(0);
        assert_eq!(open(&k, 1, &low_order), Err(SealError::Authentication));
    }

    #[test]
    fn reply_roundtrip_and_tampering() {
        let key = [42u8; 32];
        let ct = seal_reply(&key, b"reply", 100).unwrap();
        assert_eq!(ct.len(), 100);
        let pt = open_reply(&key, &ct).unwrap();
        assert_eq!(pt.len(), 84);
        assert_eq!(&pt[..5], b"reply");
        let mut bad = ct.clone();
        bad[3] ^= 0x80;
        assert_eq!(open_reply(&key, &bad), Err(SealError::Authentication));
        assert_eq!(open_reply(&[43; 32], &ct), Err(SealError::Authentication));
        assert!(matches!(
            open_reply(&key, &ct[..15]),
            Err(SealError::TooShort { .. })
        ));
        assert!(matches!(
            seal_reply(&key, &[1; 85], 100),
            Err(SealError::PlaintextTooLong { len: 85, max: 84 })
        ));
        assert!(matches!(
            seal_reply(&key, b"", 15),
            Err(SealError::TooShort { .. })
        ));
        // A reply ciphertext is not a sealed blob of another kind and vice versa.
        let k = EncryptionKeypair::generate();
        let sealed = seal(&k.public(), REPLY_AAD, b"x", 100, &mut rand::rng()).unwrap();
        assert_eq!(open_reply(&key, &sealed), Err(SealError::Authentication));
    }

    proptest! {
        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300), kind in any::<u8>()) {
            let k = EncryptionKeypair::generate();
            prop_assert!(open(&k, kind, &bytes).is_err());
            prop_assert!(open_reply(&[1; 32], &bytes).is_err());
        }

        #[test]
        fn seal_open_roundtrip(pt in proptest::collection::vec(any::<u8>(), 0..200), extra in 0usize..64, kind in any::<u8>()) {
            let k = EncryptionKeypair::generate();
            let len = pt.len() + SEAL_OVERHEAD + extra;
            let sealed = seal(&k.public(), kind, &pt, len, &mut rand::rng()).unwrap();
            prop_assert_eq!(sealed.len(), len);
            let opened = open(&k, kind, &sealed).unwrap();
            prop_assert_eq!(&opened[..pt.len()], &pt[..]);
            prop_assert!(opened[pt.len()..].iter().all(|b| *b == 0));
        }
    }
}
