//! The message envelope (PROTOCOL.md 6.5): what is cut into fragments.
//!
//! ```text
//! message     = version(0x01) flags(u8) n-surbs(u8) n-surbs × reply-block body
//! reply-block = surb-len(u16) epoch(u64) surb key(32)
//! ```
//!
//! `body` runs to the end of the reassembled message. No flags are defined
//! in version 1, so a non-zero `flags` byte is an error. Limits:
//! [`MAX_REPLY_BLOCKS`] blocks, each SURB 1 to [`MAX_REPLY_SURB_LEN`] bytes
//! (a version-260 SURB is 396). The SURB's own structure is
//! checked when it is used ([`super::use_surb`]). `epoch` is the key epoch
//! of the topology the SURB was built with: a packet made from the block
//! must travel in frames with that `key_epoch` (PROTOCOL.md D.2).

use std::fmt;

use zeroize::Zeroize;

/// Envelope version this code writes and reads.
pub const ENVELOPE_VERSION: u8 = 0x01;
/// Bytes of a reply block besides its SURB: length, epoch and key.
pub const REPLY_BLOCK_OVERHEAD: usize = 2 + 8 + REPLY_KEY_LEN;
/// Bytes before the first reply block.
pub const ENVELOPE_HEADER_LEN: usize = 3;
/// Most reply blocks one message may carry.
pub const MAX_REPLY_BLOCKS: usize = 16;
/// Longest SURB a reply block may carry.
pub const MAX_REPLY_SURB_LEN: usize = 1024;
/// Length of a reply block's key.
pub const REPLY_KEY_LEN: usize = 32;

/// A SURB the recipient may answer over once, and the key to encrypt the
/// answer with ([`super::seal_reply`]). `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyBlock {
    /// Key epoch of the Sphinx keys the SURB was built with; a packet made
    /// from it is sent with this frame `key_epoch`.
    pub epoch: u64,
    pub surb: Vec<u8>,
    pub key: [u8; REPLY_KEY_LEN],
}

impl ReplyBlock {
    /// Encoded size: `2 + 8 + surb.len() + 32`.
    pub fn encoded_len(&self) -> usize {
        REPLY_BLOCK_OVERHEAD + self.surb.len()
    }
}

impl fmt::Debug for ReplyBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyBlock")
            .field("epoch", &self.epoch)
            .field("surb_len", &self.surb.len())
            .finish_non_exhaustive()
    }
}

impl Drop for ReplyBlock {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// A message: reply blocks for answering it, and the application's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub reply_blocks: Vec<ReplyBlock>,
    pub body: Vec<u8>,
}

/// Why bytes are not an envelope, or an envelope cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "message of {len} bytes is shorter than the {ENVELOPE_HEADER_LEN}-byte envelope header"
    )]
    ShortHeader { len: usize },
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("{0} reply blocks, more than the limit of {MAX_REPLY_BLOCKS}")]
    TooManyReplyBlocks(usize),
    #[error("reply block {index}: SURB of {len} bytes, not 1 to {MAX_REPLY_SURB_LEN}")]
    BadSurbLen { index: usize, len: usize },
    #[error("reply block {index} is truncated")]
    TruncatedReplyBlock { index: usize },
}

impl EnvelopeError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ShortHeader { .. } => "short_header",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnknownFlags(_) => "unknown_flags",
            Self::TooManyReplyBlocks(_) => "too_many_reply_blocks",
            Self::BadSurbLen { .. } => "bad_surb_len",
            Self::TruncatedReplyBlock { .. } => "truncated_reply_block",
        }
    }
}

fn check_surb_len(index: usize, len: usize) -> Result<u16, EnvelopeError> {
    if len == 0 || len > MAX_REPLY_SURB_LEN {
        return Err(EnvelopeError::BadSurbLen { index, len });
    }
    u16::try_from(len).map_err(|_| EnvelopeError::BadSurbLen { index, len })
}

impl Envelope {
    /// A message without reply blocks.
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            reply_blocks: Vec::new(),
            body,
        }
    }

    /// Encoded size without encoding.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_HEADER_LEN
            + self
                .reply_blocks
                .iter()
                .map(ReplyBlock::encoded_len)
                .sum::<usize>()
            + self.body.len()
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let n = self.reply_blocks.len();
        let count = u8::try_from(n)
            .ok()
            .filter(|_| n <= MAX_REPLY_BLOCKS)
            .ok_or(EnvelopeError::TooManyReplyBlocks(n))?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&[ENVELOPE_VERSION, 0, count]);
        for (index, block) in self.reply_blocks.iter().enumerate() {
            let len = check_surb_len(index, block.surb.len())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&block.epoch.to_be_bytes());
            out.extend_from_slice(&block.surb);
            out.extend_from_slice(&block.key);
        }
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let ([version, flags, count], mut rest) = bytes
            .split_first_chunk::<ENVELOPE_HEADER_LEN>()
            .map(|(h, r)| (*h, r))
            .ok_or(EnvelopeError::ShortHeader { len: bytes.len() })?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        if flags != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let count = usize::from(count);
        if count > MAX_REPLY_BLOCKS {
            return Err(EnvelopeError::TooManyReplyBlocks(count));
        }
        let mut reply_blocks = Vec::with_capacity(count);
        for index in 0..count {
            let truncated = EnvelopeError::TruncatedReplyBlock { index };
            let (len, after) = rest.split_first_chunk::<2>().ok_or(truncated.clone())?;
            let len = usize::from(u16::from_be_bytes(*len));
            check_surb_len(index, len)?;
            let (epoch, after) = after.split_first_chunk::<8>().ok_or(truncated.clone())?;
            if after.len() < len {
                return Err(truncated);
            }
            let (surb, after) = after.split_at(len);
            let (key, after) = after
                .split_first_chunk::<REPLY_KEY_LEN>()
                .ok_or(truncated)?;
            reply_blocks.push(ReplyBlock {
                epoch: u64::from_be_bytes(*epoch),
                surb: surb.to_vec(),
                key: *key,
            });
            rest = after;
        }
        Ok(Envelope {
            reply_blocks,
            body: rest.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(len: usize, k: u8) -> ReplyBlock {
        ReplyBlock {
            epoch: (u64::from(k) << 32) | 7,
            surb: vec![k; len],
            key: [k; 32],
        }
    }

    #[test]
    fn roundtrip() {
        let e = Envelope {
            reply_blocks: vec![block(460, 1), block(1, 2), block(1024, 3)],
            body: b"hello".to_vec(),
        };
        let bytes = e.encode().unwrap();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(&bytes[..5], &[1, 0, 3, 0x01, 0xcc]);
        assert_eq!(
            &bytes[5..13],
            &[0, 0, 0, 1, 0, 0, 0, 7],
            "epoch after surb-len"
        );
        assert_eq!(&bytes[13..13 + 460], &[1; 460][..]);
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        let plain = Envelope::new(Vec::new());
        assert_eq!(plain.encode().unwrap(), vec![1, 0, 0]);
        assert_eq!(Envelope::decode(&[1, 0, 0]).unwrap(), plain);
        let full = Envelope {
            reply_blocks: (0..16).map(|i| block(444, i)).collect(),
            body: vec![9; 100],
        };
        assert_eq!(Envelope::decode(&full.encode().unwrap()).unwrap(), full);
        assert!(!format!("{:?}", block(3, 0xab)).contains("171"));
        assert!(format!("{:?}", block(3, 0)).contains("epoch: 7"));
    }

    #[test]
    fn limits_and_errors() {
        let label = |b: &[u8]| Envelope::decode(b).unwrap_err().label();
        assert_eq!(label(&[]), "short_header");
        assert_eq!(label(&[1, 0]), "short_header");
        assert_eq!(label(&[2, 0, 0]), "unsupported_version");
        assert_eq!(label(&[1, 1, 0]), "unknown_flags");
        assert_eq!(label(&[1, 0, 17]), "too_many_reply_blocks");
        assert_eq!(label(&[1, 0, 1]), "truncated_reply_block");
        assert_eq!(label(&[1, 0, 1, 0]), "truncated_reply_block");
        assert_eq!(label(&[1, 0, 1, 0, 0]), "bad_surb_len");
        assert_eq!(label(&[1, 0, 1, 0x04, 0x01]), "bad_surb_len");
        assert_eq!(label(&[1, 0, 1, 0, 2, 7, 7]), "truncated_reply_block");
        assert_eq!(
            label(&[1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 7]),
            "truncated_reply_block"
        );
        let mut ok = vec![1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 7, 7];
        ok.extend_from_slice(&[0; 31]);
        assert_eq!(label(&ok), "truncated_reply_block");
        ok.push(0);
        let blocks = Envelope::decode(&ok).unwrap().reply_blocks;
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].epoch, 9);

        let too_many = Envelope {
            reply_blocks: (0..17).map(|i| block(10, i)).collect(),
            body: vec![],
        };
        assert_eq!(
            too_many.encode(),
            Err(EnvelopeError::TooManyReplyBlocks(17))
        );
        let too_long = Envelope {
            reply_blocks: vec![block(10, 0), block(1025, 1)],
            body: vec![],
        };
        assert_eq!(
            too_long.encode(),
            Err(EnvelopeError::BadSurbLen {
                index: 1,
                len: 1025
            })
        );
        let empty = Envelope {
            reply_blocks: vec![block(0, 0)],
            body: vec![],
        };
        assert_eq!(empty.encode().unwrap_err().label(), "bad_surb_len");
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(e) = Envelope::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn structured_roundtrip(
            blocks in proptest::collection::vec((1usize..=1024, any::<u8>()), 0..=16),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let e = Envelope {
                reply_blocks: blocks.into_iter().map(|(l, k)| block(l, k)).collect(),
                body,
            };
            prop_assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
        }
    }
}
