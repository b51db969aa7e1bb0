//! Stream messages on the wire (PROTOCOL.md 7.2): the body of every
//! one-packet message between a SOCKS5 client and an exit service.
//!
//! ```text
//! message = version(u8 = 1) session(16) grants(u32) held(u16) want(u16) frame*
//! frame   = OPEN    0x01 stream(u32) target
//!         | OPENED  0x02 stream(u32)
//!         | REFUSED 0x03 stream(u32) code(u8)            ; a SOCKS5 reply code
//!         | DATA    0x04 stream(u32) seq(u32) fin(u8) len(u16) bytes
//!         | ACK     0x05 stream(u32) next(u32) sack(u32) window(u16)
//!         | RESET   0x06 stream(u32) code(u8)
//!         | REVOKE  0x07 stream(u32 = 0) count(u8) tag(8)*count
//! target  = 0x01 ipv4(4) port(u16) | 0x04 ipv6(16) port(u16)
//!         | 0x03 len(u8) name(len) port(u16)
//! ```
//!
//! REVOKE (client → exit) names pooled reply blocks the exit must not use:
//! their routes cross a mix the network's signed liveness list now names
//! down. A tag is the first 8 bytes of the block's reply key, which only
//! the block's maker and its holder know (PROTOCOL.md 7.4).
//!
//! Everything comes from strangers: [`Message::decode`] is strict (unknown
//! versions, frame types, flags, empty or non-ASCII names, trailing bytes
//! are errors) and never panics. The message fills only part of a packet;
//! the packet's own padding hides its length (the envelope carries it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 1;
/// Bytes before the first frame.
pub const HEADER_LEN: usize = 1 + 16 + 4 + 2 + 2;
/// Bytes a DATA frame adds to its payload.
pub const DATA_OVERHEAD: usize = 1 + 4 + 4 + 1 + 2;
/// Length of an ACK frame.
pub const ACK_LEN: usize = 1 + 4 + 4 + 4 + 2;
/// Longest OPEN frame (a 255-byte name).
pub const MAX_OPEN_LEN: usize = 1 + 4 + 1 + 1 + 255 + 2;

const T_OPEN: u8 = 0x01;
const T_OPENED: u8 = 0x02;
const T_REFUSED: u8 = 0x03;
const T_DATA: u8 = 0x04;
const T_ACK: u8 = 0x05;
const T_RESET: u8 = 0x06;
const T_REVOKE: u8 = 0x07;

/// Tags one REVOKE frame carries at most (a count byte; fits any packet).
pub const MAX_REVOKE_TAGS: usize = 64;
/// How a reply block is named when it is revoked: the first 8 bytes of its
/// reply key, known only to its maker and its holder.
pub type BlockTag = [u8; 8];
/// Length of a REVOKE frame with `n` tags.
pub const fn revoke_len(n: usize) -> usize {
    1 + 4 + 1 + 8 * n
}

/// A random name for one client's set of streams at one exit. It links
/// the streams of a session together at the exit (as a Tor circuit does),
/// nothing more: the exit answers over reply blocks and never learns who
/// the client is.
pub type SessionId = [u8; 16];

/// Where a stream goes. Names are resolved at the exit, never locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

impl Target {
    pub fn port(&self) -> u16 {
        match self {
            Target::Ip(a) => a.port(),
            Target::Name(_, p) => *p,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Target::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Target::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Target::Name(n, _) => 1 + 1 + n.len() + 2,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "{a}"),
            Target::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

/// A host name as SOCKS5 and the exit accept it: 1–255 bytes of printable
/// ASCII without spaces.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open {
        stream: u32,
        target: Target,
    },
    Opened {
        stream: u32,
    },
    Refused {
        stream: u32,
        code: u8,
    },
    Data {
        stream: u32,
        seq: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Ack {
        stream: u32,
        next: u32,
        sack: u32,
        window: u16,
    },
    Reset {
        stream: u32,
        code: u8,
    },
    /// Session-level: drop these pooled reply blocks (stream is 0).
    Revoke {
        tags: Vec<BlockTag>,
    },
}

impl Frame {
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open { stream, .. }
            | Frame::Opened { stream }
            | Frame::Refused { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Ack { stream, .. }
            | Frame::Reset { stream, .. } => *stream,
            Frame::Revoke { .. } => 0,
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Open { target, .. } => 1 + 4 + target.encoded_len(),
            Frame::Opened { .. } => 1 + 4,
            Frame::Refused { .. } | Frame::Reset { .. } => 1 + 4 + 1,
            Frame::Data { data, .. } => DATA_OVERHEAD + data.len(),
            Frame::Ack { .. } => ACK_LEN,
            Frame::Revoke { tags } => revoke_len(tags.len()),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let (t, stream) = match self {
            Frame::Open { stream, .. } => (T_OPEN, stream),
            Frame::Opened { stream } => (T_OPENED, stream),
            Frame::Refused { stream, .. } => (T_REFUSED, stream),
            Frame::Data { stream, .. } => (T_DATA, stream),
            Frame::Ack { stream, .. } => (T_ACK, stream),
            Frame::Reset { stream, .. } => (T_RESET, stream),
            Frame::Revoke { .. } => (T_REVOKE, &0),
        };
        out.push(t);
        out.extend_from_slice(&stream.to_be_bytes());
        match self {
            Frame::Open { target, .. } => match target {
                Target::Ip(SocketAddr::V4(a)) => {
                    out.push(0x01);
                    out.extend_from_slice(&a.ip().octets());
                    out.extend_from_slice(&a.port().to_be_bytes());
                }
                Target::Ip(SocketAddr::V6(a)) => {
                    out.push(0x04);
                    out.extend_from_slice(&a.ip().octets());
                    out.extend_from_slice(&a.port().to_be_bytes());
                }
                Target::Name(n, p) => {
                    out.push(0x03);
                    // valid_name() bounds it to 255 bytes; encode() checks.
                    out.push(n.len() as u8);
                    out.extend_from_slice(n.as_bytes());
                    out.extend_from_slice(&p.to_be_bytes());
                }
            },
            Frame::Opened { .. } => {}
            Frame::Refused { code, .. } | Frame::Reset { code, .. } => out.push(*code),
            Frame::Data { seq, fin, data, .. } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(u8::from(*fin));
                // Bounded by the packet size (< 64 KiB); encode() checks.
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::Ack {
                next, sack, window, ..
            } => {
                out.extend_from_slice(&next.to_be_bytes());
                out.extend_from_slice(&sack.to_be_bytes());
                out.extend_from_slice(&window.to_be_bytes());
            }
            Frame::Revoke { tags } => {
                // At most MAX_REVOKE_TAGS; encode() checks.
                out.push(tags.len() as u8);
                for t in tags {
                    out.extend_from_slice(t);
                }
            }
        }
    }
}

/// One stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub session: SessionId,
    /// Client → exit: reply blocks given to the session so far, this
    /// message's included. Exit → client: the highest such count seen.
    pub grants: u32,
    /// Exit → client: reply blocks the exit holds for the session (after
    /// the one this message used). Zero from the client.
    pub held: u16,
    /// Exit → client: reply blocks the exit would like to hold. Zero from
    /// the client.
    pub want: u16,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unsupported stream protocol version {0}")]
    Version(u8),
    #[error("unknown frame type {0:#04x}")]
    UnknownFrame(u8),
    #[error("frame runs past the end of the message")]
    Truncated,
    #[error("unknown address type {0:#04x}")]
    AddressType(u8),
    #[error("invalid host name")]
    Name,
    #[error("invalid flag byte {0:#04x}")]
    Flag(u8),
    #[error("frame too large to encode")]
    TooLarge,
}

impl FrameError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Short(_) => "short",
            Self::Version(_) => "version",
            Self::UnknownFrame(_) => "unknown_frame",
            Self::Truncated => "truncated",
            Self::AddressType(_) => "address_type",
            Self::Name => "name",
            Self::Flag(_) => "flag",
            Self::TooLarge => "too_large",
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.take(N)?.try_into().map_err(|_| FrameError::Truncated)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
}

fn decode_target(r: &mut Reader<'_>) -> Result<Target, FrameError> {
    match r.u8()? {
        0x01 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            Ok(Target::Ip(SocketAddr::new(IpAddr::V4(ip), r.u16()?)))
        }
        0x04 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            Ok(Target::Ip(SocketAddr::new(IpAddr::V6(ip), r.u16()?)))
        }
        0x03 => {
            let len = usize::from(r.u8()?);
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| FrameError::Name)?;
            if !valid_name(name) {
                return Err(FrameError::Name);
            }
            Ok(Target::Name(name.to_owned(), r.u16()?))
        }
        t => Err(FrameError::AddressType(t)),
    }
}

fn decode_frame(r: &mut Reader<'_>) -> Result<Frame, FrameError> {
    let t = r.u8()?;
    let stream = r.u32()?;
    Ok(match t {
        T_OPEN => Frame::Open {
            stream,
            target: decode_target(r)?,
        },
        T_OPENED => Frame::Opened { stream },
        T_REFUSED => Frame::Refused {
            stream,
            code: r.u8()?,
        },
        T_DATA => {
            let seq = r.u32()?;
            let fin = match r.u8()? {
                0 => false,
                1 => true,
                f => return Err(FrameError::Flag(f)),
            };
            let len = usize::from(r.u16()?);
            Frame::Data {
                stream,
                seq,
                fin,
                data: r.take(len)?.to_vec(),
            }
        }
        T_ACK => Frame::Ack {
            stream,
            next: r.u32()?,
            sack: r.u32()?,
            window: r.u16()?,
        },
        T_RESET => Frame::Reset {
            stream,
            code: r.u8()?,
        },
        T_REVOKE => {
            let n = usize::from(r.u8()?);
            if stream != 0 || n > MAX_REVOKE_TAGS {
                return Err(FrameError::Flag(n as u8));
            }
            let mut tags = Vec::with_capacity(n);
            for _ in 0..n {
                tags.push(r.array::<8>()?);
            }
            Frame::Revoke { tags }
        }
        t => return Err(FrameError::UnknownFrame(t)),
    })
}

impl Message {
    pub fn new(session: SessionId) -> Self {
        Self {
            session,
            grants: 0,
            held: 0,
            want: 0,
            frames: Vec::new(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.frames.iter().map(Frame::encoded_len).sum::<usize>()
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(VERSION);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&self.grants.to_be_bytes());
        out.extend_from_slice(&self.held.to_be_bytes());
        out.extend_from_slice(&self.want.to_be_bytes());
        for f in &self.frames {
            match f {
                Frame::Data { data, .. } if data.len() > usize::from(u16::MAX) => {
                    return Err(FrameError::TooLarge);
                }
                Frame::Open {
                    target: Target::Name(n, _),
                    ..
                } if !valid_name(n) => return Err(FrameError::Name),
                Frame::Revoke { tags } if tags.len() > MAX_REVOKE_TAGS => {
                    return Err(FrameError::TooLarge);
                }
                _ => {}
            }
            f.encode_into(&mut out);
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Short(bytes.len()));
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let mut m = Message::new(r.array()?);
        m.grants = r.u32()?;
        m.held = r.u16()?;
        m.want = r.u16()?;
        while !r.0.is_empty() {
            m.frames.push(decode_frame(&mut r)?);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Message {
        let mut m = Message::new([7; 16]);
        m.grants = 9;
        m.held = 3;
        m.want = 40;
        m.frames = vec![
            Frame::Open {
                stream: 1,
                target: Target::Name("example.org".into(), 443),
            },
            Frame::Open {
                stream: 2,
                target: Target::Ip("[::1]:80".parse().unwrap()),
            },
            Frame::Open {
                stream: 3,
                target: Target::Ip("10.1.2.3:8080".parse().unwrap()),
            },
            Frame::Opened { stream: 4 },
            Frame::Refused { stream: 5, code: 2 },
            Frame::Data {
                stream: 6,
                seq: 77,
                fin: true,
                data: b"hello".to_vec(),
            },
            Frame::Ack {
                stream: 7,
                next: 12,
                sack: 0b1011,
                window: 64,
            },
            Frame::Reset { stream: 8, code: 1 },
            Frame::Revoke {
                tags: vec![[1; 8], [2; 8]],
            },
        ];
        m
    }

    #[test]
    fn round_trip_and_lengths() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn strict_decoding() {
        let bytes = sample().encode().unwrap();
        assert_eq!(Message::decode(&bytes[..10]), Err(FrameError::Short(10)));
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(Message::decode(&v), Err(FrameError::Version(2)));
        let mut v = bytes.clone();
        v.push(0x77);
        assert!(Message::decode(&v).is_err());
        // A truncation is an error, or (cut at a frame boundary) a prefix
        // of the frames; never a panic or a different frame.
        let full = sample();
        for cut in HEADER_LEN + 1..bytes.len() {
            if let Ok(m) = Message::decode(&bytes[..cut]) {
                assert!(m.frames.len() < full.frames.len(), "cut {cut}");
                assert_eq!(m.frames[..], full.frames[..m.frames.len()], "cut {cut}");
            }
        }
        let mut m = Message::new([0; 16]);
        m.frames.push(Frame::Open {
            stream: 1,
            target: Target::Name("bad name".into(), 1),
        });
        assert_eq!(m.encode(), Err(FrameError::Name));
        // REVOKE: at most MAX_REVOKE_TAGS, always on stream 0.
        let mut m = Message::new([0; 16]);
        m.frames.push(Frame::Revoke {
            tags: vec![[0; 8]; MAX_REVOKE_TAGS + 1],
        });
        assert_eq!(m.encode(), Err(FrameError::TooLarge));
        let mut v = Message::new([0; 16]).encode().unwrap();
        v.extend_from_slice(&[T_REVOKE, 0, 0, 0, 1, 1]);
        v.extend_from_slice(&[9; 8]);
        assert!(Message::decode(&v).is_err(), "REVOKE on a stream");
        let mut v = Message::new([0; 16]).encode().unwrap();
        v.extend_from_slice(&[T_REVOKE, 0, 0, 0, 0, 2]);
        v.extend_from_slice(&[9; 8]);
        assert_eq!(Message::decode(&v), Err(FrameError::Truncated));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Message::decode(&bytes);
            let mut v = vec![VERSION];
            v.extend_from_slice(&bytes);
            if let Ok(m) = Message::decode(&v) {
                prop_assert_eq!(m.encode().unwrap(), v);
            }
        }
    }
}
