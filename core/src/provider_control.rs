//! The client ↔ provider control protocol (`docs/PROTOCOL.md` §6.6): a
//! sans-IO codec. `loopmix_net::provider_control` moves one framed message over
//! a QUIC stream with a size limit and a timeout.
//!
//! One request and one response per bidirectional stream; each side writes
//! one message and finishes its half of the stream.
//!
//! ```text
//! message  = type:u8 length:u32be body[length]
//! 0x10 register   ()                          -> 0x11 ok
//! 0x12 pull       n:u16 32 × seq:u64          -> 0x13 messages
//! any failure                                 -> 0x1f error code:u16 message:utf-8
//!
//! messages = count:u16 slots:u16 slot-len:u16 slots × slot
//! slot     = seq:u64 identifier[16] len:u16 data[len] zero[slot-len − len]
//! ```
//! A `pull` confirms the first `n` sequence numbers (messages of earlier
//! answers the client now holds; the provider deletes them) and asks for
//! the oldest messages left. The other `32 − n` entries are zero. Every pull
//! is [`PULL_REQUEST_LEN`] bytes, however much the client confirms, and
//! there is no other request after `register`: an observer of the link sees
//! the same request at the same times whether mail arrives or not. (Until
//! issue 17 a separate `0x14 confirm` of 7 + 8n bytes followed every pull
//! that returned something, and the client pulled again at once; that type
//! is gone, and `0x14` is now an unknown type.)
//!
//! The first `count` slots of an answer are real, the rest are dummies and
//! entirely zero.
//! A provider always answers a pull with the same `slots` and `slot-len`, so
//! the answer's size never says how much mail there was. `slots` and
//! `slot-len` are on the wire (an addition to the first draft of §6.6, which
//! left them implicit) so that a client can parse an answer without knowing
//! the provider's settings, and a change of `payload_size` between epochs
//! cannot make stored mail unparseable.
//!
//! Decoding is strict: exact lengths, zero padding, no trailing bytes, so
//! every accepted byte string has exactly one meaning (and re-encodes to
//! itself).

pub const TYPE_REGISTER: u8 = 0x10;
pub const TYPE_OK: u8 = 0x11;
pub const TYPE_PULL: u8 = 0x12;
pub const TYPE_MESSAGES: u8 = 0x13;
pub const TYPE_ERROR: u8 = 0x1f;

/// `type` and `length`.
pub const HEADER_LEN: usize = 5;
/// Confirmation entries in every `pull` (used or zero). A client never has
/// more to confirm than the slots of one answer (it confirms each answer
/// in the next pull), so answers have at most this many slots.
pub const CONFIRM_SLOTS: usize = 32;
/// Most slots a pull answer may have (see [`CONFIRM_SLOTS`]).
pub const MAX_PULL_SLOTS: usize = CONFIRM_SLOTS;
/// Body of every `pull`: `n` and the confirmation entries.
pub const PULL_BODY_LEN: usize = 2 + 8 * CONFIRM_SLOTS;
/// Bytes of every `pull` on the wire (263).
pub const PULL_REQUEST_LEN: usize = HEADER_LEN + PULL_BODY_LEN;
/// Largest request body (a `pull`).
pub const MAX_REQUEST_BODY: usize = PULL_BODY_LEN;
/// Largest response body a client accepts, and a provider may produce.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
/// Longest error message in bytes; longer ones are cut when encoding.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// `count`, `slots`, `slot-len`.
pub const MESSAGES_HEADER_LEN: usize = 6;
/// `seq`, `identifier`, `len`.
pub const SLOT_HEADER_LEN: usize = 8 + 16 + 2;
/// Default number of slots in a pull answer. With the client's default
/// pull interval (250 ms) that is 32 messages/s of receive capacity, the
/// same as the 16 slots every 500 ms before, at half the added delay.
pub const DEFAULT_PULL_SLOTS: usize = 8;

/// Error codes of `0x1f error` answers. Unknown codes are still decoded.
pub mod code {
    /// The request could not be parsed.
    pub const BAD_REQUEST: u16 = 1;
    /// The peer is a topology node, not a client.
    pub const NOT_CLIENT: u16 = 2;
    /// Too many requests from this client; try again later.
    pub const RATE_LIMITED: u16 = 3;
    /// `pull` before `register`.
    pub const NOT_REGISTERED: u16 = 4;
    /// The provider serves the maximum number of clients.
    pub const TOO_MANY_CLIENTS: u16 = 5;
    /// The provider is overloaded; try again later.
    pub const BUSY: u16 = 6;
    /// The provider failed (storage); try again later.
    pub const INTERNAL: u16 = 7;

    /// Metric label of a code.
    pub fn label(code: u16) -> &'static str {
        match code {
            BAD_REQUEST => "bad_request",
            NOT_CLIENT => "not_client",
            RATE_LIMITED => "rate_limited",
            NOT_REGISTERED => "not_registered",
            TOO_MANY_CLIENTS => "too_many_clients",
            BUSY => "busy",
            INTERNAL => "internal",
            _ => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create this client's inbox (idempotent).
    Register,
    /// Delete the `confirm`ed messages (by `seq`, at most
    /// [`CONFIRM_SLOTS`]; unknown ones are ignored), then hand out the
    /// oldest ones left (they stay until a later pull confirms them).
    Pull { confirm: Vec<u64> },
}

impl Request {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Request::Register => "register",
            Request::Pull { .. } => "pull",
        }
    }
}

/// One message in a pull answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The provider's sequence number, what a pull's `confirm` takes.
    pub seq: u64,
    /// The 16-byte Sphinx identifier the message arrived with.
    pub identifier: [u8; 16],
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok,
    /// The real slots only (the dummies are dropped when decoding).
    Messages {
        slots: Vec<Slot>,
    },
    Error {
        code: u16,
        message: String,
    },
}

/// The fixed shape of a pull answer: `slots` slots of `data_len` data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    slots: u16,
    data_len: u16,
}

impl SlotLayout {
    /// Checks that 1 ≤ `slots` ≤ [`MAX_PULL_SLOTS`], `data_len` fits the
    /// wire format and the whole answer fits [`MAX_RESPONSE_BODY`].
    pub fn new(slots: usize, data_len: usize) -> Result<Self, CodecError> {
        let invalid = CodecError::InvalidLayout { slots, data_len };
        let (Ok(s), Ok(d)) = (u16::try_from(slots), u16::try_from(data_len)) else {
            return Err(invalid);
        };
        if s == 0 || slots > MAX_PULL_SLOTS {
            return Err(invalid);
        }
        let layout = Self {
            slots: s,
            data_len: d,
        };
        if layout.body_len() > MAX_RESPONSE_BODY {
            return Err(invalid);
        }
        Ok(layout)
    }

    pub fn slots(&self) -> usize {
        self.slots as usize
    }

    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }

    /// Bytes of a `messages` body.
    pub fn body_len(&self) -> usize {
        MESSAGES_HEADER_LEN + self.slots() * (SLOT_HEADER_LEN + self.data_len())
    }

    /// Bytes of a whole `messages` answer on the wire, whatever it holds.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// The layout an encoded `messages` answer declares (None for other
    /// types or too few bytes). Of an answer that decoded, it is the shape
    /// its size follows: a client compares it with the answers before.
    pub fn of_answer(bytes: &[u8]) -> Option<SlotLayout> {
        match bytes {
            [TYPE_MESSAGES, _, _, _, _, _, _, s0, s1, d0, d1, ..] => SlotLayout::new(
                u16::from_be_bytes([*s0, *s1]) as usize,
                u16::from_be_bytes([*d0, *d1]) as usize,
            )
            .ok(),
            _ => None,
        }
    }
}

/// Why bytes were not a valid message, or a value could not be encoded.
/// `label()` is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("message truncated: {got} bytes, need {need}")]
    Truncated { got: usize, need: usize },
    #[error("{extra} bytes after the message")]
    Trailing { extra: usize },
    #[error("message body of {len} bytes is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("message type {ty:#04x} has a body of {len} bytes, expected none")]
    UnexpectedBody { ty: u8, len: usize },
    #[error("pull body of {len} bytes, every pull has {PULL_BODY_LEN}")]
    BadPullLength { len: usize },
    #[error("{n} sequence numbers in one pull, at most {CONFIRM_SLOTS}")]
    TooManySeqs { n: usize },
    #[error("answer layout of {slots} slots × {data_len} bytes is not allowed")]
    InvalidLayout { slots: usize, data_len: usize },
    #[error("{count} real slots in an answer of {slots}")]
    CountOverSlots { count: usize, slots: usize },
    #[error("messages body of {len} bytes, layout needs {expected}")]
    BadLayout { len: usize, expected: usize },
    #[error("slot of {len} bytes does not fit the {max}-byte slot")]
    SlotTooLarge { len: usize, max: usize },
    #[error("non-zero padding or dummy slot")]
    NonZeroPadding,
    #[error("error message is not UTF-8")]
    BadUtf8,
}

impl CodecError {
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::Truncated { .. } => "truncated",
            CodecError::Trailing { .. } => "trailing",
            CodecError::TooLong { .. } => "too_long",
            CodecError::UnknownType(_) => "unknown_type",
            CodecError::UnexpectedBody { .. } => "unexpected_body",
            CodecError::BadPullLength { .. } => "bad_pull_length",
            CodecError::TooManySeqs { .. } => "too_many_seqs",
            CodecError::InvalidLayout { .. } => "invalid_layout",
            CodecError::CountOverSlots { .. } => "count_over_slots",
            CodecError::BadLayout { .. } => "bad_layout",
            CodecError::SlotTooLarge { .. } => "slot_too_large",
            CodecError::NonZeroPadding => "non_zero_padding",
            CodecError::BadUtf8 => "bad_utf8",
        }
    }
}

/// A header with room for the body; `len` ≤ the callers' limits, which are
/// far below `u32::MAX`.
fn with_header(ty: u8, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.push(ty);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    out
}

impl Request {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            Request::Register => with_header(TYPE_REGISTER, 0),
            Request::Pull { confirm } => {
                if confirm.len() > CONFIRM_SLOTS {
                    return Err(CodecError::TooManySeqs { n: confirm.len() });
                }
                let mut out = with_header(TYPE_PULL, PULL_BODY_LEN);
                // ≤ CONFIRM_SLOTS, checked above.
                out.extend_from_slice(&(confirm.len() as u16).to_be_bytes());
                for s in confirm {
                    out.extend_from_slice(&s.to_be_bytes());
                }
                // The unused entries: every pull has the same size.
                out.resize(PULL_REQUEST_LEN, 0);
                out
            }
        })
    }

    /// Decodes exactly one whole request.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (ty, body) = split(bytes, MAX_REQUEST_BODY)?;
        match ty {
            TYPE_REGISTER => empty(ty, body).map(|()| Request::Register),
            TYPE_PULL => {
                if body.len() != PULL_BODY_LEN {
                    return Err(CodecError::BadPullLength { len: body.len() });
                }
                let mut r = Reader(body);
                let n = r.u16()? as usize;
                if n > CONFIRM_SLOTS {
                    return Err(CodecError::TooManySeqs { n });
                }
                let mut confirm = Vec::with_capacity(n);
                for _ in 0..n {
                    confirm.push(r.u64()?);
                }
                if !all_zero(r.0) {
                    return Err(CodecError::NonZeroPadding);
                }
                Ok(Request::Pull { confirm })
            }
            other => Err(CodecError::UnknownType(other)),
        }
    }
}

impl Response {
    /// Metric label: `ok`, `messages` or the error code's label.
    pub fn label(&self) -> &'static str {
        match self {
            Response::Ok => "ok",
            Response::Messages { .. } => "messages",
            Response::Error { code: c, .. } => code::label(*c),
        }
    }

    /// An error answer; `message` is cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub fn error(code: u16, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }

    /// Encodes; a `Messages` answer always has `layout.slots()` slots of
    /// `layout.data_len()` bytes (unused ones all zero), so its size is
    /// `layout.wire_len()` however many slots are real.
    pub fn encode(&self, layout: &SlotLayout) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            Response::Ok => with_header(TYPE_OK, 0),
            Response::Messages { slots } => {
                if slots.len() > layout.slots() {
                    return Err(CodecError::CountOverSlots {
                        count: slots.len(),
                        slots: layout.slots(),
                    });
                }
                if let Some(s) = slots.iter().find(|s| s.data.len() > layout.data_len()) {
                    return Err(CodecError::SlotTooLarge {
                        len: s.data.len(),
                        max: layout.data_len(),
                    });
                }
                let mut out = with_header(TYPE_MESSAGES, layout.body_len());
                // All three fit in u16: checked above and by `SlotLayout::new`.
                out.extend_from_slice(&(slots.len() as u16).to_be_bytes());
                out.extend_from_slice(&layout.slots.to_be_bytes());
                out.extend_from_slice(&layout.data_len.to_be_bytes());
                for s in slots {
                    out.extend_from_slice(&s.seq.to_be_bytes());
                    out.extend_from_slice(&s.identifier);
                    out.extend_from_slice(&(s.data.len() as u16).to_be_bytes());
                    out.extend_from_slice(&s.data);
                    out.resize(out.len() + layout.data_len() - s.data.len(), 0);
                }
                let dummies = layout.slots() - slots.len();
                out.resize(
                    out.len() + dummies * (SLOT_HEADER_LEN + layout.data_len()),
                    0,
                );
                out
            }
            Response::Error { code, message } => {
                let message = truncate_utf8(message, MAX_ERROR_MESSAGE);
                let mut out = with_header(TYPE_ERROR, 2 + message.len());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
                out
            }
        })
    }

    /// Decodes exactly one whole response of at most `max_body` body bytes
    /// (at most [`MAX_RESPONSE_BODY`] is ever accepted).
    pub fn decode(bytes: &[u8], max_body: usize) -> Result<Self, CodecError> {
        let (ty, body) = split(bytes, max_body.min(MAX_RESPONSE_BODY))?;
        match ty {
            TYPE_OK => empty(ty, body).map(|()| Response::Ok),
            TYPE_MESSAGES => decode_messages(body),
            TYPE_ERROR => {
                let mut r = Reader(body);
                let code = r.u16()?;
                if r.0.len() > MAX_ERROR_MESSAGE {
                    return Err(CodecError::TooLong {
                        len: body.len(),
                        max: 2 + MAX_ERROR_MESSAGE,
                    });
                }
                let message = std::str::from_utf8(r.0)
                    .map_err(|_| CodecError::BadUtf8)?
                    .to_owned();
                Ok(Response::Error { code, message })
            }
            other => Err(CodecError::UnknownType(other)),
        }
    }
}

fn decode_messages(body: &[u8]) -> Result<Response, CodecError> {
    let mut r = Reader(body);
    let count = r.u16()? as usize;
    let slots = r.u16()? as usize;
    let data_len = r.u16()? as usize;
    if count > slots {
        return Err(CodecError::CountOverSlots { count, slots });
    }
    let layout = SlotLayout::new(slots, data_len)?;
    if body.len() != layout.body_len() {
        return Err(CodecError::BadLayout {
            len: body.len(),
            expected: layout.body_len(),
        });
    }
    let mut real = Vec::with_capacity(count);
    for _ in 0..count {
        let seq = r.u64()?;
        let identifier = r.array::<16>()?;
        let len = r.u16()? as usize;
        let padded = r.take(data_len)?;
        if len > data_len {
            return Err(CodecError::SlotTooLarge { len, max: data_len });
        }
        let (data, padding) = padded.split_at(len);
        if !all_zero(padding) {
            return Err(CodecError::NonZeroPadding);
        }
        real.push(Slot {
            seq,
            identifier,
            data: data.to_vec(),
        });
    }
    if !all_zero(r.0) {
        return Err(CodecError::NonZeroPadding);
    }
    Ok(Response::Messages { slots: real })
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Splits one whole message into type and body, checking the length field.
fn split(bytes: &[u8], max_body: usize) -> Result<(u8, &[u8]), CodecError> {
    let mut r = Reader(bytes);
    let ty = r.u8()?;
    let len = r.u32()? as usize;
    if len > max_body {
        return Err(CodecError::TooLong { len, max: max_body });
    }
    let body = r.take(len).map_err(|_| CodecError::Truncated {
        got: bytes.len(),
        need: HEADER_LEN + len,
    })?;
    if !r.0.is_empty() {
        return Err(CodecError::Trailing { extra: r.0.len() });
    }
    Ok((ty, body))
}

fn empty(ty: u8, body: &[u8]) -> Result<(), CodecError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(CodecError::UnexpectedBody {
            ty,
            len: body.len(),
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated {
                got: self.0.len(),
                need: n,
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout() -> SlotLayout {
        SlotLayout::new(4, 32).unwrap()
    }

    fn slot(seq: u64, data: &[u8]) -> Slot {
        Slot {
            seq,
            identifier: [seq as u8; 16],
            data: data.to_vec(),
        }
    }

    #[test]
    fn requests_have_the_documented_bytes() {
        assert_eq!(Request::Register.encode().unwrap(), [0x10, 0, 0, 0, 0]);
        let empty = Request::Pull { confirm: vec![] }.encode().unwrap();
        assert_eq!(&empty[..7], [0x12, 0, 0, 1, 2, 0, 0]);
        assert!(empty[7..].iter().all(|&b| b == 0));
        let two = Request::Pull {
            confirm: vec![1, 0x0102],
        }
        .encode()
        .unwrap();
        assert_eq!(
            &two[..23],
            [
                0x12, 0, 0, 1, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2
            ]
        );
        assert!(two[23..].iter().all(|&b| b == 0));
        let full = Request::Pull {
            confirm: vec![7; CONFIRM_SLOTS],
        }
        .encode()
        .unwrap();
        // One size whatever is confirmed: the point of the format.
        for r in [&empty, &two, &full] {
            assert_eq!(r.len(), PULL_REQUEST_LEN);
        }
        assert_eq!(PULL_REQUEST_LEN, 263);
        assert_eq!(full.len(), HEADER_LEN + MAX_REQUEST_BODY);
        assert_eq!(
            Request::decode(&full).unwrap(),
            Request::Pull {
                confirm: vec![7; CONFIRM_SLOTS]
            }
        );
        assert_eq!(
            Request::Pull {
                confirm: vec![0; CONFIRM_SLOTS + 1]
            }
            .encode(),
            Err(CodecError::TooManySeqs {
                n: CONFIRM_SLOTS + 1
            })
        );
    }

    #[test]
    fn messages_answer_has_constant_size_and_zero_dummies() {
        let l = layout();
        let empty = Response::Messages { slots: vec![] }.encode(&l).unwrap();
        let full = Response::Messages {
            slots: vec![slot(1, b"hello"), slot(2, &[9; 32]), slot(3, b"")],
        }
        .encode(&l)
        .unwrap();
        assert_eq!(empty.len(), l.wire_len());
        assert_eq!(full.len(), l.wire_len());
        assert_eq!(l.wire_len(), 5 + 6 + 4 * (26 + 32));
        assert_eq!(&empty[..11], &[0x13, 0, 0, 0, 238, 0, 0, 0, 4, 0, 32]);
        assert!(empty[11..].iter().all(|&b| b == 0));
        assert_eq!(&full[5..7], &[0, 3]);
        // The fourth slot is a dummy: all zero.
        assert!(full[11 + 3 * 58..].iter().all(|&b| b == 0));
        match Response::decode(&full, MAX_RESPONSE_BODY).unwrap() {
            Response::Messages { slots } => {
                assert_eq!(slots.len(), 3);
                assert_eq!(slots[0], slot(1, b"hello"));
                assert_eq!(slots[2].data, b"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let l = layout();
        let big = Response::Messages {
            slots: vec![slot(1, &[0; 33])],
        };
        assert_eq!(
            big.encode(&l),
            Err(CodecError::SlotTooLarge { len: 33, max: 32 })
        );
        let many = Response::Messages {
            slots: vec![slot(1, b""); 5],
        };
        assert!(matches!(
            many.encode(&l),
            Err(CodecError::CountOverSlots { count: 5, slots: 4 })
        ));
        assert!(SlotLayout::new(0, 10).is_err());
        assert!(SlotLayout::new(70_000, 10).is_err());
        assert!(SlotLayout::new(10, 70_000).is_err());
        assert!(
            SlotLayout::new(1000, 65_535).is_err(),
            "over MAX_RESPONSE_BODY"
        );
        assert!(SlotLayout::new(16, 65_535).is_ok());
        assert!(SlotLayout::new(MAX_PULL_SLOTS, 10).is_ok());
        assert!(
            SlotLayout::new(MAX_PULL_SLOTS + 1, 10).is_err(),
            "more slots than a pull can confirm"
        );
    }

    #[test]
    fn of_answer_reads_the_declared_layout() {
        let l = layout();
        let bytes = Response::Messages {
            slots: vec![slot(1, b"x")],
        }
        .encode(&l)
        .unwrap();
        assert_eq!(SlotLayout::of_answer(&bytes), Some(l));
        assert_eq!(SlotLayout::of_answer(&bytes[..10]), None);
        let ok = Response::Ok.encode(&l).unwrap();
        assert_eq!(SlotLayout::of_answer(&ok), None);
    }

    #[test]
    fn error_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let bytes = Response::error(code::INTERNAL, long)
            .encode(&layout())
            .unwrap();
        match Response::decode(&bytes, MAX_RESPONSE_BODY).unwrap() {
            Response::Error { code: c, message } => {
                assert_eq!(c, code::INTERNAL);
                assert_eq!(message.len(), MAX_ERROR_MESSAGE);
            }
            other => panic!("{other:?}"),
        }
        let mut bad = Response::error(1, "ab").encode(&layout()).unwrap();
        bad[7] = 0xff;
        assert_eq!(
            Response::decode(&bad, MAX_RESPONSE_BODY),
            Err(CodecError::BadUtf8)
        );
        assert_eq!(code::label(code::RATE_LIMITED), "rate_limited");
        assert_eq!(code::label(999), "other");
    }

    #[test]
    fn malformed_inputs_get_typed_errors() {
        let l = layout();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (vec![0x10, 0, 0], "truncated"),
            (vec![0x10, 0, 0, 0, 1], "truncated"),
            (vec![0x10, 0, 0, 0, 0, 0], "trailing"),
            (vec![0x10, 0, 0, 0, 1, 0], "unexpected_body"),
            (vec![0x42, 0, 0, 0, 0], "unknown_type"),
            (vec![0x11, 0, 0, 0, 0], "unknown_type"),
            // The old separate confirm is gone.
            (vec![0x14, 0, 0, 0, 2, 0, 0], "unknown_type"),
            (vec![0x12, 0xff, 0xff, 0xff, 0xff], "too_long"),
            (vec![0x12, 0, 0, 0, 0], "bad_pull_length"),
            (
                vec![0x12, 0, 0, 0, 10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
                "bad_pull_length",
            ),
            (pull_with(&[0, 33]), "too_many_seqs"),
            (
                pull_with(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9]),
                "non_zero_padding",
            ),
        ];
        for (bytes, label) in cases {
            let e = Request::decode(&bytes).unwrap_err();
            assert_eq!(e.label(), label, "{bytes:?}: {e}");
        }
        let good = Response::Messages {
            slots: vec![slot(1, b"x")],
        }
        .encode(&l)
        .unwrap();
        let mut count_over = good.clone();
        count_over[6] = 5;
        let mut padding = good.clone();
        padding[11 + 26 + 5] = 1;
        let mut dummy = good.clone();
        *dummy.last_mut().unwrap() = 1;
        let mut slot_len = good.clone();
        slot_len[11 + 24..11 + 26].copy_from_slice(&33u16.to_be_bytes());
        let mut layout_lie = good.clone();
        layout_lie[10] = 31;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (count_over, "count_over_slots"),
            (padding, "non_zero_padding"),
            (dummy, "non_zero_padding"),
            (slot_len, "slot_too_large"),
            (layout_lie, "bad_layout"),
            (vec![0x13, 0, 0, 0, 6, 0, 0, 0, 0, 0, 1], "invalid_layout"),
            (vec![0x12, 0, 0, 0, 0], "unknown_type"),
            (vec![0x11, 0, 0, 0, 1, 0], "unexpected_body"),
            (vec![0x1f, 0, 0, 0, 1, 0], "truncated"),
        ];
        for (bytes, label) in cases {
            let e = Response::decode(&bytes, MAX_RESPONSE_BODY).unwrap_err();
            assert_eq!(e.label(), label, "{e}");
        }
        assert_eq!(
            Response::decode(&good, 10).unwrap_err().label(),
            "too_long",
            "the caller's limit applies"
        );
    }

    /// A pull whose body starts with `head` (zero after it).
    fn pull_with(head: &[u8]) -> Vec<u8> {
        let mut v = Request::Pull { confirm: vec![] }.encode().unwrap();
        v[HEADER_LEN..HEADER_LEN + head.len()].copy_from_slice(head);
        v
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Register),
            prop::collection::vec(any::<u64>(), 0..=CONFIRM_SLOTS)
                .prop_map(|confirm| Request::Pull { confirm }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = (Response, SlotLayout)> {
        (1usize..8, 0usize..64).prop_flat_map(|(slots, data_len)| {
            let layout = SlotLayout::new(slots, data_len).unwrap();
            let slot = (
                any::<u64>(),
                any::<[u8; 16]>(),
                prop::collection::vec(any::<u8>(), 0..=data_len),
            )
                .prop_map(|(seq, identifier, data)| Slot {
                    seq,
                    identifier,
                    data,
                });
            prop_oneof![
                Just(Response::Ok),
                prop::collection::vec(slot, 0..=slots)
                    .prop_map(|slots| Response::Messages { slots }),
                (any::<u16>(), ".{0,40}")
                    .prop_map(|(code, message)| Response::Error { code, message }),
            ]
            .prop_map(move |r| (r, layout))
        })
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in arb_request()) {
            let bytes = req.encode().unwrap();
            if matches!(req, Request::Pull { .. }) {
                prop_assert_eq!(bytes.len(), PULL_REQUEST_LEN);
            }
            prop_assert_eq!(Request::decode(&bytes).unwrap(), req);
        }

        #[test]
        fn structured_pulls_never_panic(
            n in 0u16..40,
            // Mostly the right length, so the entry checks run.
            rest in prop_oneof![
                3 => prop::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 8 * CONFIRM_SLOTS),
                1 => prop::collection::vec(any::<u8>(), 0..300),
            ],
        ) {
            let mut bytes = vec![TYPE_PULL];
            bytes.extend_from_slice(&((2 + rest.len()) as u32).to_be_bytes());
            bytes.extend_from_slice(&n.to_be_bytes());
            bytes.extend_from_slice(&rest);
            if let Ok(req) = Request::decode(&bytes) {
                prop_assert_eq!(req.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn responses_round_trip((resp, layout) in arb_response()) {
            let bytes = resp.encode(&layout).unwrap();
            if matches!(resp, Response::Messages { .. }) {
                prop_assert_eq!(bytes.len(), layout.wire_len());
            }
            prop_assert_eq!(Response::decode(&bytes, MAX_RESPONSE_BODY).unwrap(), resp);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_ones_are_canonical(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            ty in prop::sample::select(vec![0x10u8, 0x11, 0x12, 0x13, 0x14, 0x1f, 0x00]),
            fix_header in any::<bool>(),
        ) {
            // Half the cases get a plausible header so the body parsers run.
            let mut bytes = bytes;
            if fix_header && bytes.len() >= HEADER_LEN {
                bytes[0] = ty;
                let len = (bytes.len() - HEADER_LEN) as u32;
                bytes[1..5].copy_from_slice(&len.to_be_bytes());
            }
            if let Ok(req) = Request::decode(&bytes) {
                prop_assert_eq!(req.encode().unwrap(), bytes.clone());
            }
            if let Ok(resp) = Response::decode(&bytes, MAX_RESPONSE_BODY) {
                // Re-encode with the layout found on the wire.
                let layout = if bytes.len() >= 11 && bytes[0] == TYPE_MESSAGES {
                    let s = u16::from_be_bytes([bytes[7], bytes[8]]) as usize;
                    let d = u16::from_be_bytes([bytes[9], bytes[10]]) as usize;
                    SlotLayout::new(s, d).unwrap()
                } else {
                    layout()
                };
                prop_assert_eq!(resp.encode(&layout).unwrap(), bytes);
            }
        }

        #[test]
        fn structured_messages_answers_never_panic(
            count in 0u16..6, slots in 0u16..6, data_len in 0u16..20,
            rest in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..200),
        ) {
            let mut bytes = vec![TYPE_MESSAGES];
            bytes.extend_from_slice(&((6 + rest.len()) as u32).to_be_bytes());
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.extend_from_slice(&slots.to_be_bytes());
            bytes.extend_from_slice(&data_len.to_be_bytes());
            bytes.extend_from_slice(&rest);
            if let Ok(resp) = Response::decode(&bytes, MAX_RESPONSE_BODY) {
                let layout = SlotLayout::new(slots as usize, data_len as usize).unwrap();
                prop_assert_eq!(resp.encode(&layout).unwrap(), bytes);
            }
        }
    }
}
