//! The SDK's one error type: every misuse and every failure is a variant,
//! never a panic.

use loopmix_core::e2e::AddressError;
use loopmix_core::keys::NodeId;

use crate::engine::SendError;
use crate::error::ClientError;

/// What an SDK call can fail with.
///
/// | variant | when |
/// |---|---|
/// | [`Start`](Error::Start) | [`connect`](super::MixnetClient::connect) could not start the client (config, keys, directory, provider) |
/// | [`TooLarge`](Error::TooLarge) | a message over `messages.max_message_bytes` |
/// | [`BadAddress`](Error::BadAddress) | a string that is not a loopmix address |
/// | [`UnknownProvider`](Error::UnknownProvider) | an address whose provider is not in the topology in force |
/// | [`Shutdown`](Error::Shutdown) | a call after [`shutdown`](super::MixnetClient::shutdown) (or a handle whose client stopped) |
/// | [`Busy`](Error::Busy) | a bounded queue is full; try again later |
/// | [`NotDelivered`](Error::NotDelivered) | a message given up after `messages.max_attempts` |
/// | [`Send`](Error::Send) | the engine refused a send for another reason (reply blocks, topology) |
/// | [`BadTarget`](Error::BadTarget) | a stream target that is not `host:port` |
/// | [`StreamRefused`](Error::StreamRefused) | the exit service refused the stream (SOCKS5 reply code) |
/// | [`StreamFailed`](Error::StreamFailed) | the stream could not be opened (timeout, no room) |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client did not start.
    #[error("cannot start the client: {0}")]
    Start(#[from] ClientError),
    /// The message is longer than the client's limit.
    #[error("message of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// `messages.max_message_bytes` (or what one reply can carry).
        max: usize,
    },
    /// The text is not an address (`identity.encryption@provider`).
    #[error("not a loopmix address: {0}")]
    BadAddress(#[from] AddressError),
    /// The address's provider is not in the topology in force: nobody
    /// could deliver to it.
    #[error("unknown address: provider {0} is not in the topology in force")]
    UnknownProvider(NodeId),
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
    /// A bounded queue is full (`what` names it); retry later.
    #[error("busy: {what} is full")]
    Busy {
        /// Which queue.
        what: &'static str,
    },
    /// The message was given up after `messages.max_attempts`
    /// transmissions of some fragment.
    #[error("message not delivered: {0}")]
    NotDelivered(String),
    /// The engine refused the message (reply blocks, topology, …).
    #[error("send refused: {0}")]
    Send(SendError),
    /// A stream target that is not `host:port`.
    #[error("not a stream target (host:port): {0:?}")]
    BadTarget(String),
    /// The exit service refused the stream, with a SOCKS5 reply code
    /// (0x02: not allowed by its policy, 0x04: host unreachable, 0x05:
    /// connection refused, …).
    #[error("the exit refused the stream (SOCKS5 code {code:#04x})")]
    StreamRefused {
        /// The SOCKS5 reply code.
        code: u8,
    },
    /// The stream could not be opened: no answer from the exit in time, or
    /// too many streams or sessions.
    #[error("the stream could not be opened: {0}")]
    StreamFailed(&'static str),
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::TooLarge { len, max } => Error::TooLarge { len, max },
            SendError::UnknownProvider(p) => Error::UnknownProvider(p),
            SendError::QueueFull(what) => Error::Busy { what },
            other => Error::Send(other),
        }
    }
}
