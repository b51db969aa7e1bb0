//! The Sphinx payload plaintext (PROTOCOL.md 6.3): what a final hop gets from
//! `payload.recover_plaintext()` for a forward packet (data, drop), and what
//! a SURB's creator gets from [`super::ReplyRecovery::open`] for the sealed
//! payload of an ack, a loop or a reply.
//!
//! ```text
//! payload = kind body, zero-padded to payload_size - 17 bytes
//! kind    = 0x00 drop | 0x01 data | 0x02 ack | 0x03 reply | 0x04 loop
//! data    = ack-len(u16) surb-ack sealed     ; sealed fills the rest
//! reply   = aead-ciphertext                  ; fills the rest
//! drop, ack, loop = zeros
//! ```
//!
//! `sealed` and the reply ciphertext have no length field: they run to the
//! end of the payload. So [`Payload::encode`] requires them to fill exactly
//! the space left ([`data_sealed_len`], [`reply_ciphertext_len`]), instead
//! of padding them into something that could never be opened.
//! [`Payload::decode`] parses bytes from strangers strictly and never panics.

use super::seal::{REPLY_OVERHEAD, SEAL_OVERHEAD};
use super::surb::SURB_LEN;
use crate::sphinx::PAYLOAD_OVERHEAD;

pub const KIND_DROP: u8 = 0x00;
pub const KIND_DATA: u8 = 0x01;
pub const KIND_ACK: u8 = 0x02;
pub const KIND_REPLY: u8 = 0x03;
pub const KIND_LOOP: u8 = 0x04;

/// Bytes of a data payload before the SURB-ACK: kind and ack-len.
pub const DATA_HEADER_LEN: usize = 3;
/// Bytes of a reply payload before the ciphertext: the kind.
pub const REPLY_HEADER_LEN: usize = 1;

/// One decoded Sphinx payload plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Cover traffic; the final hop discards it.
    Drop,
    /// A fragment sealed to the recipient, with the SURB-ACK its provider
    /// sends back once the packet is stored.
    Data { surb_ack: Vec<u8>, sealed: Vec<u8> },
    /// An acknowledgement; its meaning is the Sphinx identifier.
    Ack,
    /// A fragment sent over a reply block, encrypted under the block's key.
    Reply { ciphertext: Vec<u8> },
    /// Loop cover, matched by the Sphinx identifier.
    Loop,
}

/// Why a payload cannot be encoded or decoded. `label()` names it for
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("unknown payload kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{kind} payload has non-zero bytes after its kind")]
    NonZeroPadding { kind: &'static str },
    #[error("data payload of {len} bytes ends inside its header")]
    Truncated { len: usize },
    #[error("SURB-ACK length {ack_len} runs past the {available} bytes that follow")]
    AckBeyondInput { ack_len: usize, available: usize },
    #[error("SURB-ACK length {0} is not the length of a SURB ({SURB_LEN})")]
    BadAckLen(usize),
    #[error("sealed part of {len} bytes is shorter than the {SEAL_OVERHEAD}-byte minimum")]
    SealedTooShort { len: usize },
    #[error("reply ciphertext of {len} bytes is shorter than its {REPLY_OVERHEAD}-byte tag")]
    CiphertextTooShort { len: usize },
    #[error("encoded payload needs {len} bytes, more than the {max} available")]
    TooLong { len: usize, max: usize },
    #[error("{what} is {len} bytes but must fill the {expected} bytes left in the payload")]
    WrongFill {
        what: &'static str,
        len: usize,
        expected: usize,
    },
}

impl PayloadError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::UnknownKind(_) => "unknown_kind",
            Self::NonZeroPadding { .. } => "nonzero_padding",
            Self::Truncated { .. } => "truncated",
            Self::AckBeyondInput { .. } => "ack_beyond_input",
            Self::BadAckLen(_) => "bad_ack_len",
            Self::SealedTooShort { .. } => "sealed_too_short",
            Self::CiphertextTooShort { .. } => "ciphertext_too_short",
            Self::TooLong { .. } => "too_long",
            Self::WrongFill { .. } => "wrong_fill",
        }
    }
}

/// The plaintext length one packet carries for a Sphinx `payload_size`:
/// `payload_size - 17`. This is what [`Payload::encode`] must be given and
/// what `build_packet` / [`super::use_surb`] accept at most.
pub fn payload_plaintext_len(payload_size: usize) -> usize {
    payload_size.saturating_sub(PAYLOAD_OVERHEAD)
}

/// The `sealed_len` to pass to [`super::seal()`] for a data payload carrying a
/// SURB-ACK of `surb_ack_len` bytes. Zero if the SURB-ACK does not fit.
pub fn data_sealed_len(payload_size: usize, surb_ack_len: usize) -> usize {
    payload_plaintext_len(payload_size).saturating_sub(DATA_HEADER_LEN.saturating_add(surb_ack_len))
}

/// The `ct_len` to pass to [`super::seal_reply`] for a reply payload.
pub fn reply_ciphertext_len(payload_size: usize) -> usize {
    payload_plaintext_len(payload_size).saturating_sub(REPLY_HEADER_LEN)
}

/// The longest encoded fragment a data packet carries next to a SURB-ACK of
/// `surb_ack_len` bytes: `payload_size - 17 - 3 - surb_ack_len - 48`.
pub fn data_fragment_capacity(payload_size: usize, surb_ack_len: usize) -> usize {
    data_sealed_len(payload_size, surb_ack_len).saturating_sub(SEAL_OVERHEAD)
}

/// The longest encoded fragment a reply packet carries:
/// `payload_size - 17 - 1 - 16`.
pub fn reply_fragment_capacity(payload_size: usize) -> usize {
    reply_ciphertext_len(payload_size).saturating_sub(REPLY_OVERHEAD)
}

impl Payload {
    pub fn kind(&self) -> u8 {
        match self {
            Payload::Drop => KIND_DROP,
            Payload::Data { .. } => KIND_DATA,
            Payload::Ack => KIND_ACK,
            Payload::Reply { .. } => KIND_REPLY,
            Payload::Loop => KIND_LOOP,
        }
    }

    /// A short snake_case name, for logs and metrics.
    pub fn label(&self) -> &'static str {
        kind_label(self.kind())
    }

    /// Exactly `plaintext_len` bytes ([`payload_plaintext_len`] of the
    /// network's payload size), zero-padded. A data payload's `sealed` part
    /// and a reply's ciphertext must fill the rest exactly.
    pub fn encode(&self, plaintext_len: usize) -> Result<Vec<u8>, PayloadError> {
        let mut out = Vec::with_capacity(plaintext_len);
        out.push(self.kind());
        match self {
            Payload::Drop | Payload::Ack | Payload::Loop => {}
            Payload::Data { surb_ack, sealed } => {
                let ack_len = u16::try_from(surb_ack.len())
                    .ok()
                    .filter(|l| usize::from(*l) == SURB_LEN)
                    .ok_or(PayloadError::BadAckLen(surb_ack.len()))?;
                out.extend_from_slice(&ack_len.to_be_bytes());
                out.extend_from_slice(surb_ack);
                fill(
                    &mut out,
                    "sealed part",
                    sealed,
                    SEAL_OVERHEAD,
                    plaintext_len,
                )?;
            }
            Payload::Reply { ciphertext } => {
                fill(
                    &mut out,
                    "reply ciphertext",
                    ciphertext,
                    REPLY_OVERHEAD,
                    plaintext_len,
                )?;
            }
        }
        if out.len() > plaintext_len {
            return Err(PayloadError::TooLong {
                len: out.len(),
                max: plaintext_len,
            });
        }
        out.resize(plaintext_len, 0);
        Ok(out)
    }

    /// Parses a payload plaintext. Strict: unknown kinds, non-zero bytes
    /// after a contentless kind, a SURB-ACK that is not a SURB's length or
    /// runs past the input, and sealed parts or ciphertexts too short to
    /// hold their tag are all errors.
    pub fn decode(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let (&kind, body) = bytes.split_first().ok_or(PayloadError::Empty)?;
        match kind {
            KIND_DROP => zeros(body, "drop").map(|()| Payload::Drop),
            KIND_ACK => zeros(body, "ack").map(|()| Payload::Ack),
            KIND_LOOP => zeros(body, "loop").map(|()| Payload::Loop),
            KIND_DATA => {
                let (ack_len, rest) = body
                    .split_first_chunk::<2>()
                    .ok_or(PayloadError::Truncated { len: bytes.len() })?;
                let ack_len = usize::from(u16::from_be_bytes(*ack_len));
                if rest.len() < ack_len {
                    return Err(PayloadError::AckBeyondInput {
                        ack_len,
                        available: rest.len(),
                    });
                }
                if ack_len != SURB_LEN {
                    return Err(PayloadError::BadAckLen(ack_len));
                }
                let (surb_ack, sealed) = rest.split_at(ack_len);
                if sealed.len() < SEAL_OVERHEAD {
                    return Err(PayloadError::SealedTooShort { len: sealed.len() });
                }
                Ok(Payload::Data {
                    surb_ack: surb_ack.to_vec(),
                    sealed: sealed.to_vec(),
                })
            }
            KIND_REPLY => {
                if body.len() < REPLY_OVERHEAD {
                    return Err(PayloadError::CiphertextTooShort { len: body.len() });
                }
                Ok(Payload::Reply {
                    ciphertext: body.to_vec(),
                })
            }
            other => Err(PayloadError::UnknownKind(other)),
        }
    }
}

/// The name of a payload kind byte (`"unknown"` for others).
pub fn kind_label(kind: u8) -> &'static str {
    match kind {
        KIND_DROP => "drop",
        KIND_DATA => "data",
        KIND_ACK => "ack",
        KIND_REPLY => "reply",
        KIND_LOOP => "loop",
        _ => "unknown",
    }
}

/// Appends `part`, which must be at least `min` bytes and fill `out` up to
/// exactly `total` bytes.
fn fill(
    out: &mut Vec<u8>,
    what: &'static str,
    part: &[u8],
    min: usize,
    total: usize,
) -> Result<(), PayloadError> {
    let expected =
        total
            .checked_sub(out.len())
            .filter(|e| *e >= min)
            .ok_or(PayloadError::TooLong {
                len: out.len().saturating_add(part.len().max(min)),
                max: total,
            })?;
    if part.len() != expected {
        return Err(PayloadError::WrongFill {
            what,
            len: part.len(),
            expected,
        });
    }
    out.extend_from_slice(part);
    Ok(())
}

fn zeros(body: &[u8], kind: &'static str) -> Result<(), PayloadError> {
    if body.iter().all(|b| *b == 0) {
        Ok(())
    } else {
        Err(PayloadError::NonZeroPadding { kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::SURB_LEN;
    use proptest::prelude::*;

    #[test]
    fn usable_lengths() {
        assert_eq!(payload_plaintext_len(1024), 1007);
        assert_eq!(data_sealed_len(1024, SURB_LEN), 1007 - 3 - 396);
        assert_eq!(data_fragment_capacity(1024, SURB_LEN), 560);
        assert_eq!(data_fragment_capacity(2048, SURB_LEN), 1584);
        assert_eq!(reply_ciphertext_len(1024), 1006);
        assert_eq!(reply_fragment_capacity(1024), 990);
        assert_eq!(reply_fragment_capacity(2048), 2014);
        assert_eq!(data_fragment_capacity(49, SURB_LEN), 0);
        assert_eq!(reply_fragment_capacity(10), 0);
    }

    #[test]
    fn contentless_kinds_roundtrip() {
        for p in [Payload::Drop, Payload::Ack, Payload::Loop] {
            let bytes = p.encode(1007).unwrap();
            assert_eq!(bytes.len(), 1007);
            assert_eq!(bytes[0], p.kind());
            assert!(bytes[1..].iter().all(|b| *b == 0));
            assert_eq!(Payload::decode(&bytes).unwrap(), p);
            assert_eq!(Payload::decode(&bytes[..1]).unwrap(), p);
            let mut bad = bytes.clone();
            bad[500] = 1;
            assert_eq!(
                Payload::decode(&bad).unwrap_err().label(),
                "nonzero_padding"
            );
        }
        assert_eq!(
            Payload::Drop.encode(0),
            Err(PayloadError::TooLong { len: 1, max: 0 })
        );
    }

    #[test]
    fn data_and_reply_roundtrip_and_must_fill() {
        let surb_ack = vec![5u8; SURB_LEN];
        let sealed = vec![6u8; data_sealed_len(1024, surb_ack.len())];
        let p = Payload::Data {
            surb_ack: surb_ack.clone(),
            sealed,
        };
        let bytes = p.encode(1007).unwrap();
        assert_eq!(bytes.len(), 1007);
        assert_eq!(&bytes[..3], &[1, 1, 0x8c]);
        assert_eq!(Payload::decode(&bytes).unwrap(), p);

        let short = Payload::Data {
            surb_ack: surb_ack.clone(),
            sealed: vec![6u8; 100],
        };
        assert_eq!(short.encode(1007).unwrap_err().label(), "wrong_fill");
        let bad_ack = Payload::Data {
            surb_ack: vec![5u8; 400],
            sealed: vec![6u8; 100],
        };
        assert_eq!(bad_ack.encode(1007), Err(PayloadError::BadAckLen(400)));
        assert_eq!(p.encode(400).unwrap_err().label(), "too_long");

        let r = Payload::Reply {
            ciphertext: vec![7u8; reply_ciphertext_len(1024)],
        };
        let bytes = r.encode(1007).unwrap();
        assert_eq!(Payload::decode(&bytes).unwrap(), r);
        let r_short = Payload::Reply {
            ciphertext: vec![7u8; 20],
        };
        assert_eq!(r_short.encode(1007).unwrap_err().label(), "wrong_fill");
        assert_eq!(r.encode(10).unwrap_err().label(), "too_long");
    }

    #[test]
    fn decode_errors() {
        let label = |b: &[u8]| Payload::decode(b).unwrap_err().label();
        assert_eq!(label(&[]), "empty");
        assert_eq!(label(&[5]), "unknown_kind");
        assert_eq!(label(&[0xff, 0, 0]), "unknown_kind");
        assert_eq!(label(&[1]), "truncated");
        assert_eq!(label(&[1, 0]), "truncated");
        assert_eq!(label(&[1, 0xff, 0xff, 0]), "ack_beyond_input");
        assert_eq!(label(&[1, 0, 0, 0]), "bad_ack_len");
        let mut data = vec![1, 0x01, 0x8c];
        data.extend_from_slice(&[0; SURB_LEN]);
        assert_eq!(label(&data), "sealed_too_short");
        data.extend_from_slice(&[0; 47]);
        assert_eq!(label(&data), "sealed_too_short");
        data.push(0);
        assert!(Payload::decode(&data).is_ok());
        assert_eq!(label(&[3; 16]), "ciphertext_too_short");
        assert!(Payload::decode(&[3; 17]).is_ok());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(p) = Payload::decode(&bytes) {
                // Whatever decodes re-encodes to the same bytes.
                prop_assert_eq!(p.encode(bytes.len()).unwrap(), bytes);
            }
        }

        #[test]
        fn decode_data_headers_never_panic(ack_len in any::<u16>(), rest in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let mut bytes = vec![KIND_DATA];
            bytes.extend_from_slice(&ack_len.to_be_bytes());
            bytes.extend_from_slice(&rest);
            let _ = Payload::decode(&bytes);
        }
    }
}
