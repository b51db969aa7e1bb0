//! Incoming messages, as the application reads them.

use std::sync::Arc;

use loopmix_core::message::MessageId;
use tokio::sync::{Mutex, mpsc};

use crate::engine::ReplyHandle;

/// Received messages waiting for the application at most. When it is
/// full the client stops taking events from the runtime until the
/// application reads one (nothing is dropped: the provider keeps the rest
/// of the inbox), which also holds back delivery reports and stream data.
pub const INCOMING_QUEUE: usize = 256;

/// A message someone sent to this client.
#[derive(Debug)]
#[non_exhaustive]
pub struct Message {
    /// The message's id (unique per sender).
    pub id: MessageId,
    /// The bytes, as sent.
    pub body: Vec<u8>,
    /// Present when the sender included reply blocks: answer with
    /// [`MixnetClient::reply`](super::MixnetClient::reply) without
    /// learning the sender's address. The sender's address is never known.
    pub reply: Option<ReplyHandle>,
}

/// The stream of incoming messages ([`MixnetClient::messages`](super::MixnetClient::messages)).
///
/// Every handle of one client reads the same queue: each message goes to
/// one of them. Messages that carry stream data for
/// [`MixnetClient::open_stream`](super::MixnetClient::open_stream) are
/// never seen here.
#[derive(Clone)]
pub struct Messages {
    pub(super) rx: Arc<Mutex<mpsc::Receiver<Message>>>,
}

impl Messages {
    /// The next message; `None` once the client has shut down and every
    /// message received before has been read.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.lock().await.recv().await
    }

    /// A message if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_lock().ok()?.try_recv().ok()
    }
}
