//! Handles on sent messages, and the bounded table that resolves them when
//! the runtime reports an acknowledgement or a failure.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use loopmix_core::message::MessageId;
use tokio::sync::oneshot;

use super::Error;

/// Messages awaiting their acknowledgement at most, per client. A send
/// beyond it is [`Error::Busy`]; every entry leaves when the message is
/// acknowledged or given up (after `messages.max_attempts`), so the table
/// drains by itself.
pub const MAX_PENDING: usize = 4096;

/// A sent message: resolves to `Ok(())` once every fragment has been
/// acknowledged by the recipient's provider (the runtime's
/// [`ClientEvent::Delivered`](crate::runtime::ClientEvent::Delivered)),
/// or to [`Error::NotDelivered`] when the client gave up on it
/// ([`ClientEvent::Failed`](crate::runtime::ClientEvent::Failed)), or to
/// [`Error::Shutdown`] if the client stopped first.
///
/// Dropping it does not cancel the message; it is still sent.
#[derive(Debug)]
#[must_use = "a Delivery does nothing unless awaited; drop it to send without waiting"]
pub struct Delivery {
    id: MessageId,
    rx: oneshot::Receiver<Result<(), Error>>,
}

impl Delivery {
    /// The message's id (as the runtime and the logs name it).
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl Future for Delivery {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            // The table was dropped: the client stopped.
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Shutdown)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The messages whose outcome someone may await.
#[derive(Default)]
pub(super) struct Pending {
    table: Mutex<HashMap<MessageId, oneshot::Sender<Result<(), Error>>>>,
}

impl Pending {
    pub(super) fn lock(
        &self,
    ) -> MutexGuard<'_, HashMap<MessageId, oneshot::Sender<Result<(), Error>>>> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues a message with `send` (called under the table's lock, so an
    /// outcome can never arrive before the entry exists) and returns its
    /// handle.
    pub(super) fn track(
        &self,
        send: impl FnOnce() -> Result<MessageId, Error>,
    ) -> Result<Delivery, Error> {
        let mut table = self.lock();
        if table.len() >= MAX_PENDING {
            return Err(Error::Busy {
                what: "the table of messages awaiting acknowledgement",
            });
        }
        let id = send()?;
        let (tx, rx) = oneshot::channel();
        table.insert(id, tx);
        Ok(Delivery { id, rx })
    }

    /// The runtime's verdict on `id` (nobody may be waiting any more).
    pub(super) fn resolve(&self, id: MessageId, outcome: Result<(), Error>) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    /// The client stopped: every handle resolves to [`Error::Shutdown`].
    pub(super) fn fail_all(&self) {
        for (_, tx) in self.lock().drain() {
            let _ = tx.send(Err(Error::Shutdown));
        }
    }
}
