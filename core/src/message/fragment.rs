//! Cutting a message into fragments that each fit one Sphinx payload, and the
//! fragment's byte encoding.
//!
//! ```text
//! message id (16) | index u16 BE | count u16 BE | len u16 BE | data (len) | padding
//! ```
//!
//! The header is 22 bytes. Packets are padded to a fixed size, so `decode`
//! reads `len` data bytes and ignores whatever follows. Everything here parses
//! bytes from strangers: it returns errors, never panics.

use thiserror::Error;

/// Identifies one message end to end; 16 random bytes chosen by the sender,
/// so ids of different senders do not collide and cannot be guessed.
pub type MessageId = [u8; 16];

/// Identifies one fragment: the sender's key for acknowledgements and
/// retransmission ([`super::RetransmitQueue`]).
pub type FragmentKey = (MessageId, u16);

/// Bytes before the data: id (16) + index (2) + count (2) + len (2).
pub const FRAGMENT_HEADER_LEN: usize = 22;

/// The `len` field is 16 bits, so no fragment carries more than this.
pub const MAX_FRAGMENT_DATA: usize = u16::MAX as usize;

/// Why bytes are not a fragment, or a message cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FragmentError {
    #[error("fragment is {len} bytes, shorter than its {FRAGMENT_HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("fragment count is zero")]
    ZeroCount,
    #[error("fragment index {index} is not below the fragment count {count}")]
    IndexOutOfRange { index: u16, count: u16 },
    #[error("fragment claims {len} data bytes but only {available} follow its header")]
    Truncated { len: usize, available: usize },
    #[error(
        "fragment carries {len} data bytes, more than the {MAX_FRAGMENT_DATA} its length field can describe"
    )]
    DataTooLong { len: usize },
    #[error("a message of {len} bytes needs {needed} fragments, more than the limit of {max}")]
    TooManyFragments { len: usize, needed: usize, max: u16 },
    #[error("the maximum fragment data size is zero")]
    ZeroFragmentData,
}

impl FragmentError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ShortHeader { .. } => "short_header",
            Self::ZeroCount => "zero_count",
            Self::IndexOutOfRange { .. } => "index_out_of_range",
            Self::Truncated { .. } => "truncated",
            Self::DataTooLong { .. } => "data_too_long",
            Self::TooManyFragments { .. } => "too_many_fragments",
            Self::ZeroFragmentData => "zero_fragment_data",
        }
    }
}

/// One piece of a message, carried by one Sphinx packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fragment {
    pub message: MessageId,
    /// Position in the message, `0..count`.
    pub index: u16,
    /// How many fragments the message has, at least 1.
    pub count: u16,
    pub data: Vec<u8>,
}

impl Fragment {
    pub fn key(&self) -> FragmentKey {
        (self.message, self.index)
    }

    /// Whether this is the message's last fragment (the only one that may be
    /// shorter than the others).
    pub fn is_last(&self) -> bool {
        self.index.checked_add(1) == Some(self.count)
    }

    /// Encoded size without padding: `FRAGMENT_HEADER_LEN + data.len()`.
    pub fn encoded_len(&self) -> usize {
        FRAGMENT_HEADER_LEN + self.data.len()
    }

    /// The invariants that [`Fragment::decode`] enforces and [`split`] keeps:
    /// `count >= 1`, `index < count`, `data.len() <= MAX_FRAGMENT_DATA`.
    pub fn check(&self) -> Result<(), FragmentError> {
        if self.count == 0 {
            return Err(FragmentError::ZeroCount);
        }
        if self.index >= self.count {
            return Err(FragmentError::IndexOutOfRange {
                index: self.index,
                count: self.count,
            });
        }
        if self.data.len() > MAX_FRAGMENT_DATA {
            return Err(FragmentError::DataTooLong {
                len: self.data.len(),
            });
        }
        Ok(())
    }

    /// The wire bytes, unpadded (the caller pads to the packet size).
    ///
    /// Fragments made by [`split`] or [`Fragment::decode`] always encode
    /// whole. A hand-built fragment with more than [`MAX_FRAGMENT_DATA`]
    /// bytes cannot be described by the 16-bit length field: only its first
    /// `MAX_FRAGMENT_DATA` bytes are encoded (and debug builds assert). Use
    /// [`Fragment::check`] first when the fragment did not come from here.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(
            self.data.len() <= MAX_FRAGMENT_DATA,
            "fragment data longer than its length field"
        );
        let len = self.data.len().min(MAX_FRAGMENT_DATA);
        let data = self.data.get(..len).unwrap_or_default();
        let mut out = Vec::with_capacity(FRAGMENT_HEADER_LEN + len);
        out.extend_from_slice(&self.message);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        // `len` <= u16::MAX by the `min` above.
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Parses a fragment, ignoring padding after its data. Rejects short
    /// input, `count == 0`, `index >= count`, and a `len` longer than the
    /// bytes that follow the header.
    pub fn decode(bytes: &[u8]) -> Result<Fragment, FragmentError> {
        let short = || FragmentError::ShortHeader { len: bytes.len() };
        let (message, rest) = bytes.split_first_chunk::<16>().ok_or_else(short)?;
        let (index, rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
        let (count, rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
        let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
        let index = u16::from_be_bytes(*index);
        let count = u16::from_be_bytes(*count);
        let len = usize::from(u16::from_be_bytes(*len));
        if count == 0 {
            return Err(FragmentError::ZeroCount);
        }
        if index >= count {
            return Err(FragmentError::IndexOutOfRange { index, count });
        }
        let data = rest.get(..len).ok_or(FragmentError::Truncated {
            len,
            available: rest.len(),
        })?;
        Ok(Fragment {
            message: *message,
            index,
            count,
            data: data.to_vec(),
        })
    }
}

/// The most data a fragment can carry in a Sphinx payload of
/// `payload_plaintext` usable bytes (after Sphinx's own overhead and any
/// envelope the caller adds): what is left after the header, at most
/// [`MAX_FRAGMENT_DATA`]. Zero if the header does not even fit.
pub fn max_fragment_data(payload_plaintext: usize) -> usize {
    payload_plaintext
        .saturating_sub(FRAGMENT_HEADER_LEN)
        .min(MAX_FRAGMENT_DATA)
}

/// Cuts `bytes` into fragments of `max_fragment_data` bytes (the last one
/// may be shorter). An empty message is one fragment with empty data, so
/// every message has at least one fragment and its arrival is observable.
///
/// `max_fragment_data` above [`MAX_FRAGMENT_DATA`] is clamped to it. Errors
/// if `max_fragment_data` is zero or the message would need more than
/// `max_fragments` fragments.
pub fn split(
    message: MessageId,
    bytes: &[u8],
    max_fragment_data: usize,
    max_fragments: u16,
) -> Result<Vec<Fragment>, FragmentError> {
    if max_fragment_data == 0 {
        return Err(FragmentError::ZeroFragmentData);
    }
    let size = max_fragment_data.min(MAX_FRAGMENT_DATA);
    let needed = bytes.len().div_ceil(size).max(1);
    let count = match u16::try_from(needed) {
        Ok(count) if count <= max_fragments => count,
        _ => {
            return Err(FragmentError::TooManyFragments {
                len: bytes.len(),
                needed,
                max: max_fragments,
            });
        }
    };
    if bytes.is_empty() {
        return Ok(vec![Fragment {
            message,
            index: 0,
            count,
            data: Vec::new(),
        }]);
    }
    Ok(bytes
        .chunks(size)
        .zip(0..count)
        .map(|(chunk, index)| Fragment {
            message,
            index,
            count,
            data: chunk.to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: MessageId = [7; 16];

    #[test]
    fn encoding_layout() {
        let f = Fragment {
            message: ID,
            index: 2,
            count: 5,
            data: b"abc".to_vec(),
        };
        let bytes = f.encode();
        assert_eq!(bytes.len(), FRAGMENT_HEADER_LEN + 3);
        assert_eq!(f.encoded_len(), bytes.len());
        assert_eq!(&bytes[..16], &ID);
        assert_eq!(&bytes[16..22], &[0, 2, 0, 5, 0, 3]);
        assert_eq!(&bytes[22..], b"abc");
        assert_eq!(Fragment::decode(&bytes), Ok(f));
    }

    #[test]
    fn decode_ignores_padding() {
        let f = Fragment {
            message: ID,
            index: 0,
            count: 1,
            data: b"hi".to_vec(),
        };
        let mut bytes = f.encode();
        bytes.resize(1000, 0xAA);
        assert_eq!(Fragment::decode(&bytes), Ok(f));
    }

    #[test]
    fn decode_rejects_malformed() {
        let good = Fragment {
            message: ID,
            index: 1,
            count: 3,
            data: vec![1; 10],
        }
        .encode();
        assert_eq!(
            Fragment::decode(&good[..21]),
            Err(FragmentError::ShortHeader { len: 21 })
        );
        assert_eq!(
            Fragment::decode(&[]),
            Err(FragmentError::ShortHeader { len: 0 })
        );
        assert_eq!(
            Fragment::decode(&good[..25]),
            Err(FragmentError::Truncated {
                len: 10,
                available: 3
            })
        );
        let mut zero = good.clone();
        zero[18..20].copy_from_slice(&[0, 0]);
        assert_eq!(Fragment::decode(&zero), Err(FragmentError::ZeroCount));
        let mut past = good.clone();
        past[16..18].copy_from_slice(&[0, 3]);
        assert_eq!(
            Fragment::decode(&past),
            Err(FragmentError::IndexOutOfRange { index: 3, count: 3 })
        );
        // A bare header with len 0 is a valid, empty fragment.
        let mut bare = good[..FRAGMENT_HEADER_LEN].to_vec();
        bare[20..22].copy_from_slice(&[0, 0]);
        assert_eq!(Fragment::decode(&bare).unwrap().data, Vec::<u8>::new());
    }

    #[test]
    fn split_sizes() {
        let frags = split(ID, &[9; 10], 4, 10).unwrap();
        let lens: Vec<_> = frags.iter().map(|f| f.data.len()).collect();
        assert_eq!(lens, [4, 4, 2]);
        assert!(frags.iter().all(|f| f.count == 3 && f.message == ID));
        assert_eq!(frags.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(frags[2].is_last() && !frags[1].is_last());

        let exact = split(ID, &[9; 8], 4, 10).unwrap();
        assert_eq!(exact.len(), 2);
        assert!(exact.iter().all(|f| f.data.len() == 4));
    }

    #[test]
    fn split_empty_message_is_one_empty_fragment() {
        let frags = split(ID, &[], 100, 1).unwrap();
        assert_eq!(
            frags,
            vec![Fragment {
                message: ID,
                index: 0,
                count: 1,
                data: vec![]
            }]
        );
    }

    #[test]
    fn split_errors() {
        assert_eq!(
            split(ID, b"abc", 0, 10),
            Err(FragmentError::ZeroFragmentData)
        );
        let err = split(ID, &[0; 11], 5, 2).unwrap_err();
        assert_eq!(
            err,
            FragmentError::TooManyFragments {
                len: 11,
                needed: 3,
                max: 2
            }
        );
        assert_eq!(err.label(), "too_many_fragments");
        assert!(err.to_string().contains("needs 3 fragments"));
        assert!(split(ID, &[], 5, 0).is_err());
        // More fragments than a u16 can count.
        assert!(matches!(
            split(ID, &[0; 70_000], 1, u16::MAX),
            Err(FragmentError::TooManyFragments { needed: 70_000, .. })
        ));
    }

    #[test]
    fn split_clamps_fragment_size_to_length_field() {
        let frags = split(ID, &vec![1; MAX_FRAGMENT_DATA + 1], usize::MAX, 10).unwrap();
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].data.len(), MAX_FRAGMENT_DATA);
        for f in &frags {
            assert_eq!(Fragment::decode(&f.encode()).as_ref(), Ok(f));
        }
    }

    #[test]
    fn check_and_helpers() {
        let mut f = Fragment {
            message: ID,
            index: 0,
            count: 1,
            data: vec![],
        };
        assert_eq!(f.check(), Ok(()));
        assert_eq!(f.key(), (ID, 0));
        f.count = 0;
        assert_eq!(f.check(), Err(FragmentError::ZeroCount));
        f.count = 1;
        f.index = 1;
        assert_eq!(f.check().unwrap_err().label(), "index_out_of_range");
        assert_eq!(max_fragment_data(1007), 985);
        assert_eq!(max_fragment_data(10), 0);
        assert_eq!(max_fragment_data(usize::MAX), MAX_FRAGMENT_DATA);
    }

    fn fragment_strategy() -> impl Strategy<Value = Fragment> {
        (
            any::<MessageId>(),
            1..=u16::MAX,
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(message, count, index, data)| Fragment {
                message,
                index: index % count,
                count,
                data,
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = Fragment::decode(&bytes) {
                prop_assert!(f.check().is_ok());
                // What decodes re-encodes to a prefix of the input.
                let enc = f.encode();
                prop_assert_eq!(&bytes[..enc.len()], &enc[..]);
            }
        }

        #[test]
        fn decode_inverts_encode(f in fragment_strategy(), pad in 0usize..64) {
            let mut bytes = f.encode();
            prop_assert_eq!(bytes.len(), f.encoded_len());
            prop_assert_eq!(Fragment::decode(&bytes), Ok(f.clone()));
            bytes.extend(std::iter::repeat_n(0x5A, pad));
            prop_assert_eq!(Fragment::decode(&bytes), Ok(f));
        }

        #[test]
        fn split_concatenates_back(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            size in 1usize..400,
        ) {
            let frags = split(ID, &bytes, size, u16::MAX).unwrap();
            prop_assert_eq!(frags.len(), bytes.len().div_ceil(size).max(1));
            let mut joined = Vec::new();
            for (i, f) in frags.iter().enumerate() {
                prop_assert_eq!(usize::from(f.index), i);
                prop_assert_eq!(usize::from(f.count), frags.len());
                prop_assert!(f.data.len() <= size);
                if !f.is_last() {
                    prop_assert_eq!(f.data.len(), size);
                }
                joined.extend_from_slice(&f.data);
            }
            prop_assert_eq!(joined, bytes);
        }
    }
}
