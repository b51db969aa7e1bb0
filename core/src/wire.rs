//! Byte framing of Sphinx packets on a QUIC unidirectional stream.
//!
//! ```text
//! stream  = preamble frame*
//! preamble = "LMX" version:u8                     (4 bytes, version = 1)
//! frame   = kind:u8 key_epoch:u64be len:u16be body[len]   (11-byte header)
//! ```
//! `kind` 0x01 is a Sphinx packet; `key_epoch` names the Sphinx key the sender
//! encrypted to (so the receiver never trial-decrypts); `len` must equal the
//! network's packet size. Because every frame says its length, a malformed
//! frame is skipped and counted without losing the frames after it.
//! `docs/PROTOCOL.md` is the normative description.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const PREAMBLE: [u8; 4] = *b"LMX\x01";
pub const FRAME_HEADER_LEN: usize = 11;
pub const KIND_SPHINX: u8 = 0x01;

/// Upper bound of buffered, not yet parsed bytes per stream: one maximal frame
/// plus a read chunk. Bounded so a peer cannot make us buffer without limit.
pub const MAX_BUFFERED: usize = FRAME_HEADER_LEN + u16::MAX as usize + 64 * 1024;

/// A decoded Sphinx frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub key_epoch: u64,
    pub packet: Bytes,
}

/// Why a frame (or a stream) was refused. The string forms are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with the loopmix preamble: the whole stream is refused.
    #[error("bad stream preamble")]
    BadPreamble,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("packet of {got} bytes, expected {expected}")]
    WrongSize { got: usize, expected: usize },
}

impl FrameError {
    /// Whether the stream can continue after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::BadPreamble)
    }
}

pub fn encode_frame(key_epoch: u64, packet: &[u8], out: &mut BytesMut) {
    out.reserve(FRAME_HEADER_LEN + packet.len());
    out.put_u8(KIND_SPHINX);
    out.put_u64(key_epoch);
    // The topology caps packet sizes at u16::MAX, so this never truncates.
    out.put_u16(packet.len().min(u16::MAX as usize) as u16);
    out.put_slice(packet);
}

/// Incremental decoder for one stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    packet_size: usize,
    preamble_seen: bool,
}

impl FrameDecoder {
    pub fn new(packet_size: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(16 * 1024),
            packet_size,
            preamble_seen: false,
        }
    }

    pub fn set_packet_size(&mut self, packet_size: usize) {
        self.packet_size = packet_size;
    }

    /// Bytes that may still be pushed before the buffer limit.
    pub fn room(&self) -> usize {
        MAX_BUFFERED.saturating_sub(self.buf.len())
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Next complete frame, `Ok(None)` if more bytes are needed. After a
    /// non-fatal error the offending frame has been consumed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if !self.preamble_seen {
            if self.buf.len() < PREAMBLE.len() {
                return Ok(None);
            }
            if self.buf[..PREAMBLE.len()] != PREAMBLE {
                return Err(FrameError::BadPreamble);
            }
            self.buf.advance(PREAMBLE.len());
            self.preamble_seen = true;
        }
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = self.buf[0];
        let key_epoch = u64::from_be_bytes([
            self.buf[1],
            self.buf[2],
            self.buf[3],
            self.buf[4],
            self.buf[5],
            self.buf[6],
            self.buf[7],
            self.buf[8],
        ]);
        let len = u16::from_be_bytes([self.buf[9], self.buf[10]]) as usize;
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        if kind != KIND_SPHINX {
            return Err(FrameError::UnknownKind(kind));
        }
        if len != self.packet_size {
            return Err(FrameError::WrongSize {
                got: len,
                expected: self.packet_size,
            });
        }
        Ok(Some(Frame {
            key_epoch,
            packet: body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(frames: &[(u64, Vec<u8>)]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_slice(&PREAMBLE);
        for (e, p) in frames {
            encode_frame(*e, p, &mut b);
        }
        b
    }

    #[test]
    fn decodes_byte_by_byte() {
        let s = stream_of(&[(7, vec![1; 100]), (8, vec![2; 100])]);
        let mut d = FrameDecoder::new(100);
        let mut got = Vec::new();
        for b in s.iter() {
            d.push(&[*b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key_epoch, 7);
        assert_eq!(&got[1].packet[..], &[2; 100][..]);
    }

    #[test]
    fn wrong_size_and_kind_are_skipped_not_fatal() {
        let mut s = stream_of(&[(1, vec![0; 50])]);
        s.put_u8(0x7f);
        s.put_u64(1);
        s.put_u16(3);
        s.put_slice(&[1, 2, 3]);
        encode_frame(1, &[5; 100], &mut s);
        let mut d = FrameDecoder::new(100);
        d.push(&s);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::WrongSize {
                got: 50,
                expected: 100
            })
        );
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(0x7f)));
        assert_eq!(d.next_frame().unwrap().unwrap().packet.len(), 100);
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn bad_preamble_is_fatal() {
        let mut d = FrameDecoder::new(100);
        d.push(b"GET / HTTP/1.1\r\n");
        let e = d.next_frame().unwrap_err();
        assert!(e.is_fatal());
    }
}
