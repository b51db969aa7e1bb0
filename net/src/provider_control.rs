//! Moving one client ↔ provider control message (the codec is
//! [`loopmix_core::provider_control`], `docs/PROTOCOL.md` §6.6) over a QUIC
//! stream: a size limit checked before the body is read, a timeout on every
//! exchange, and the end of the stream expected after the message.

use std::time::Duration;

use loopmix_core::provider_control::{
    CodecError, HEADER_LEN, MAX_RESPONSE_BODY, Request, Response,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Failure to move one message over a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("timed out")]
    Timeout,
    #[error("stream: {0}")]
    Stream(String),
    #[error("connection: {0}")]
    Connection(String),
}

impl ControlError {
    pub fn label(&self) -> &'static str {
        match self {
            ControlError::Codec(e) => e.label(),
            ControlError::Timeout => "timeout",
            ControlError::Stream(_) => "stream",
            ControlError::Connection(_) => "connection",
        }
    }
}

/// Reads one whole message (header and body, as `decode` takes it) of at
/// most `max_body` body bytes, then expects the end of the stream. The
/// length field is checked before the body is read, so a peer cannot make
/// us buffer more than `max_body`.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ControlError> {
    match tokio::time::timeout(timeout, read_message_inner(r, max_body)).await {
        Ok(res) => res,
        Err(_) => Err(ControlError::Timeout),
    }
}

async fn read_message_inner<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: usize,
) -> Result<Vec<u8>, ControlError> {
    let mut header = [0u8; HEADER_LEN];
    read_full(r, &mut header, 0).await?;
    let [_, l0, l1, l2, l3] = header;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > max_body {
        return Err(CodecError::TooLong { len, max: max_body }.into());
    }
    let mut msg = vec![0u8; HEADER_LEN + len];
    msg[..HEADER_LEN].copy_from_slice(&header);
    read_full(r, &mut msg[HEADER_LEN..], HEADER_LEN).await?;
    let mut extra = [0u8; 1];
    match r.read(&mut extra).await {
        Ok(0) => Ok(msg),
        Ok(n) => Err(CodecError::Trailing { extra: n }.into()),
        Err(e) => Err(ControlError::Stream(e.to_string())),
    }
}

/// `read_exact` that reports an early end as [`CodecError::Truncated`].
async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    before: usize,
) -> Result<(), ControlError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => {
                return Err(CodecError::Truncated {
                    got: before + got,
                    need: before + buf.len(),
                }
                .into());
            }
            Ok(n) => got += n,
            Err(e) => return Err(ControlError::Stream(e.to_string())),
        }
    }
    Ok(())
}

/// Writes one encoded message and finishes the stream.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ControlError> {
    let write = async {
        w.write_all(bytes).await?;
        w.shutdown().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ControlError::Stream(e.to_string())),
        Err(_) => Err(ControlError::Timeout),
    }
}

/// Client side: one request on a fresh bidirectional stream of `conn`, and
/// its answer (a provider's `error` answer is an `Ok(Response::Error)`).
/// The whole exchange is bounded by `timeout`.
pub async fn request(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let answer = exchange(conn, req, timeout).await?;
    Ok(Response::decode(&answer, MAX_RESPONSE_BODY)?)
}

/// [`request`] returning the answer's bytes undecoded (at most
/// [`MAX_RESPONSE_BODY`] of body), for a caller that checks more than the
/// decoded value (the pull loop compares answers' layouts).
pub async fn exchange(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
) -> Result<Vec<u8>, ControlError> {
    let bytes = req.encode()?;
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| ControlError::Connection(e.to_string()))?;
        write_message(&mut send, &bytes, timeout).await?;
        read_message(&mut recv, MAX_RESPONSE_BODY, timeout).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(res) => res,
        Err(_) => Err(ControlError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopmix_core::provider_control::MAX_REQUEST_BODY;

    #[tokio::test]
    async fn read_message_checks_length_before_reading_and_expects_the_end() {
        let t = Duration::from_secs(5);
        let msg = Request::Pull {
            confirm: vec![1, 2],
        }
        .encode()
        .unwrap();
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_message(&mut a, &msg, t).await.unwrap();
        assert_eq!(
            read_message(&mut b, MAX_REQUEST_BODY, t).await.unwrap(),
            msg
        );

        let (mut a, mut b) = tokio::io::duplex(1024);
        // Declares 1 MB but sends nothing more: refused from the header.
        a.write_all(&[0x14, 0, 0x10, 0, 0]).await.unwrap();
        let e = read_message(&mut b, MAX_REQUEST_BODY, t).await.unwrap_err();
        assert_eq!(e.label(), "too_long");

        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut long = msg.clone();
        long.push(0);
        write_message(&mut a, &long, t).await.unwrap();
        let e = read_message(&mut b, MAX_REQUEST_BODY, t).await.unwrap_err();
        assert_eq!(e.label(), "trailing");

        let (mut a, mut b) = tokio::io::duplex(1024);
        write_message(&mut a, &msg[..7], t).await.unwrap();
        let e = read_message(&mut b, MAX_REQUEST_BODY, t).await.unwrap_err();
        assert_eq!(e.label(), "truncated");

        // A peer that stops sending mid-message times out.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&msg[..3]).await.unwrap();
        let e = read_message(&mut b, MAX_REQUEST_BODY, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.label(), "timeout");
    }
}
