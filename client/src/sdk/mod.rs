//! The application developer's API: connect, send and receive messages,
//! answer over reply blocks, open byte streams through an exit service.
//!
//! [`MixnetClient`] wraps the I/O shell ([`crate::runtime::Client`]) and
//! the stream machinery the SOCKS5 proxy uses ([`crate::stream`]). A task
//! of its own reads the runtime's events and sorts them: acknowledgements
//! and failures resolve the [`Delivery`] of their message, stream data
//! goes to its stream, and everything else is a [`Message`] for
//! [`Messages`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), loopmix_client::sdk::Error> {
//! use loopmix_client::sdk::MixnetClient;
//!
//! // A directory made by `loopmix-client init`.
//! let client = MixnetClient::connect_dir("/tmp/alice").await?;
//! println!("my address: {}", client.address());
//! let peer = "IDENTITY.ENCRYPTION@PROVIDER"; // the peer's `loopmix-client address`
//! client.send(peer, b"hello".to_vec())?.await?; // acknowledged by the peer's provider
//! let mut inbox = client.messages();
//! if let Some(m) = inbox.recv().await {
//!     println!("got {} bytes", m.body.len());
//! }
//! client.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Bounds
//!
//! | what | bound | when full |
//! |---|---|---|
//! | message size | `messages.max_message_bytes` (1 MiB by default) | [`Error::TooLarge`] |
//! | messages queued for sending | `messages.send_queue` (256) | [`Error::Busy`] |
//! | messages awaiting acknowledgement | [`MAX_PENDING`] | [`Error::Busy`] |
//! | received messages not yet read | [`INCOMING_QUEUE`] | the client waits for the application (nothing is lost) |
//! | exit services streamed through | [`MAX_SERVICES`] | [`Error::Busy`] |
//! | streams per service, buffers | [`StreamConfig`](crate::stream::StreamConfig) (256 streams, 256 KiB per direction) + [`STREAM_PIPE_BYTES`] | [`Error::StreamFailed`]; writes wait |

mod address;
mod delivery;
mod error;
mod messages;
mod stream;

pub use address::ToAddress;
pub use delivery::{Delivery, MAX_PENDING};
pub use error::Error;
pub use messages::{INCOMING_QUEUE, Message, Messages};
pub use stream::{MAX_SERVICES, MixnetStream, STREAM_PIPE_BYTES};

pub use crate::engine::ReplyHandle;
pub use loopmix_core::e2e::ClientAddress;
pub use loopmix_core::message::MessageId;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::mpsc;

use crate::config::{CONFIG_FILE, ClientConfig};
use crate::runtime::{Client, ClientEvent};
use crate::socks5::SocksConfig;
use crate::stream::StreamMetrics;
use delivery::Pending;
use stream::{Services, parse_target};

/// How long [`MixnetClient::shutdown`] waits for the last events after the
/// runtime stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running loopmix client, for applications.
///
/// Cheap to clone: clones share one client (one address, one inbox). It
/// stops on [`shutdown`](Self::shutdown), or when the last clone is
/// dropped (without confirming to the provider the messages of the last
/// pull; `shutdown` does).
#[derive(Clone)]
pub struct MixnetClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    pending: Arc<Pending>,
    services: Arc<Services>,
    messages: Messages,
    closed: AtomicBool,
    /// The task sorting the runtime's events; awaited by `shutdown`.
    sorter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.client.shutdown();
        self.services.cancel.cancel();
    }
}

impl MixnetClient {
    /// Starts a client from its configuration: waits for a verified
    /// topology listing its provider; the client then connects to the
    /// provider and registers in the background, retrying while it is
    /// unreachable ([`wait_registered`](Self::wait_registered)). Needs a
    /// tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        Self::connect_with(config, &Registry::new()).await
    }

    /// [`connect`](Self::connect) with the client's metrics in `registry`
    /// (served at `metrics.listen` if the config sets it).
    pub async fn connect_with(config: ClientConfig, registry: &Registry) -> Result<Self, Error> {
        // The same stream settings as `loopmix-client socks5`.
        let streams = SocksConfig::from_section(&config.socks).streams;
        let metrics = StreamMetrics::new(registry).map_err(crate::ClientError::from)?;
        let services = Arc::new(Services::new(streams, metrics));
        let (client, events) = Client::start_with(config, registry, Some(services.clone())).await?;
        let pending = Arc::new(Pending::default());
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let sorter = tokio::spawn(sort_events(events, pending.clone(), services.clone(), tx));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                pending,
                services,
                messages: Messages {
                    rx: Arc::new(tokio::sync::Mutex::new(rx)),
                },
                closed: AtomicBool::new(false),
                sorter: Mutex::new(Some(sorter)),
            }),
        })
    }

    /// Starts the client of a directory made by `loopmix-client init`
    /// (its `client.toml`; relative paths in it are relative to `dir`).
    pub async fn connect_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let config = ClientConfig::load(&dir.as_ref().join(CONFIG_FILE))
            .map_err(crate::ClientError::from)?;
        Self::connect(config).await
    }

    /// This client's address, to give to whoever should write to it.
    /// A new client gives it out after
    /// [`wait_registered`](Self::wait_registered): mail that arrives
    /// before its provider holds its inbox is dropped.
    pub fn address(&self) -> ClientAddress {
        self.inner.client.address()
    }

    /// Waits, at most `timeout`, until the provider has answered this
    /// client's registration (it then holds the inbox, and keeps mail sent
    /// to it); returns whether it has. Only a client's first registration
    /// matters: the provider keeps the inbox across restarts of either.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        self.inner.client.wait_registered(timeout).await
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Queues `body` for `to`; it leaves in the next λ_P slots. The
    /// returned [`Delivery`] resolves once the recipient's provider has
    /// acknowledged every fragment, or fails. The recipient learns nothing
    /// about who sent it.
    ///
    /// ```no_run
    /// # async fn demo(client: loopmix_client::MixnetClient) -> Result<(), loopmix_client::SdkError> {
    /// let delivery = client.send("IDENTITY.ENCRYPTION@PROVIDER", b"hello".to_vec())?;
    /// println!("queued message {:?}", delivery.id());
    /// delivery.await?; // acknowledged
    /// # Ok(()) }
    /// ```
    pub fn send(&self, to: impl ToAddress, body: impl Into<Vec<u8>>) -> Result<Delivery, Error> {
        self.send_with_reply_blocks(to, body, 0)
    }

    /// [`send`](Self::send), with `reply_blocks` single-use reply blocks
    /// (at most `loopmix_core::e2e::MAX_REPLY_BLOCKS`) so the recipient can
    /// [`reply`](Self::reply) without learning this client's address. A
    /// reply of `n` packets needs `n` blocks; each block takes room in the
    /// message's packets.
    pub fn send_with_reply_blocks(
        &self,
        to: impl ToAddress,
        body: impl Into<Vec<u8>>,
        reply_blocks: usize,
    ) -> Result<Delivery, Error> {
        self.check_open()?;
        let to = to.to_address()?;
        let body = body.into();
        let client = &self.inner.client;
        self.inner
            .pending
            .track(|| Ok(client.send(&to, body, reply_blocks)?))
    }

    /// Answers a received message over the reply blocks it carried
    /// ([`Message::reply`]). Replies are not acknowledged (a reply block
    /// has no room for an acknowledgement's route), so this returns the
    /// reply's id once it is queued; it leaves in the next λ_P slots.
    ///
    /// ```no_run
    /// # async fn demo(client: loopmix_client::MixnetClient) -> Result<(), loopmix_client::SdkError> {
    /// // An echo service: it never learns who writes to it.
    /// let mut inbox = client.messages();
    /// while let Some(m) = inbox.recv().await {
    ///     if let Some(handle) = m.reply {
    ///         client.reply(handle, m.body)?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn reply(&self, handle: ReplyHandle, body: impl Into<Vec<u8>>) -> Result<MessageId, Error> {
        self.check_open()?;
        Ok(self.inner.client.reply(handle, body.into())?)
    }

    /// The incoming messages. Every handle reads the same queue (see
    /// [`Messages`]).
    pub fn messages(&self) -> Messages {
        self.inner.messages.clone()
    }

    /// Opens a reliable byte stream through the exit service at `service`
    /// (e.g. the `exit_address` in a localnet's `localnet.json`) to
    /// `target` (`host:port`; names are resolved by the exit, never
    /// locally), and waits until the exit has connected it. The exit never
    /// learns this client's address: it answers over reply blocks.
    /// Dropping the future before it resolves closes the stream once the
    /// exit has answered (at most the open timeout, 60 s, later).
    ///
    /// ```no_run
    /// # async fn demo(client: loopmix_client::MixnetClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let exit = "EXIT_IDENTITY.ENCRYPTION@PROVIDER";
    /// let mut s = client.open_stream(exit, "127.0.0.1:8000").await?;
    /// s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    /// let mut answer = Vec::new();
    /// s.read_to_end(&mut answer).await?; // an error, not a short body, if the stream broke
    /// # Ok(()) }
    /// ```
    pub async fn open_stream(
        &self,
        service: impl ToAddress,
        target: &str,
    ) -> Result<MixnetStream, Error> {
        self.check_open()?;
        let service = service.to_address()?;
        let target = parse_target(target)?;
        self.inner.services.open(service, target).await
    }

    /// Stops the client gracefully: confirms to the provider the messages
    /// already received (so they do not come again), stops every task and
    /// stream, and resolves every unresolved [`Delivery`] to
    /// [`Error::Shutdown`]. Messages received before stay readable from
    /// [`Messages`]; after them it ends. Every later call is
    /// [`Error::Shutdown`]. Calling it twice is harmless.
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.client.close().await;
        self.inner.services.cancel.cancel();
        let sorter = self.inner.sorter.lock().ok().and_then(|mut s| s.take());
        if let Some(mut h) = sorter
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut h).await.is_err()
        {
            h.abort();
        }
        self.inner.pending.fail_all();
    }
}

/// Sorts the runtime's events until it stops: outcomes to their
/// [`Delivery`], stream messages to their stream, the rest to the
/// application. Waits when the application's queue is full.
async fn sort_events(
    mut events: mpsc::Receiver<ClientEvent>,
    pending: Arc<Pending>,
    services: Arc<Services>,
    incoming: mpsc::Sender<Message>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            ClientEvent::Received {
                message,
                body,
                reply,
            } => {
                if services.claim(&body) {
                    continue;
                }
                // Nobody reads any more only when every handle was
                // dropped; the message is then dropped too.
                let _ = incoming
                    .send(Message {
                        id: message,
                        body,
                        reply,
                    })
                    .await;
            }
            ClientEvent::Delivered { message } => pending.resolve(message, Ok(())),
            ClientEvent::Failed { message, reason } => {
                pending.resolve(message, Err(Error::NotDelivered(reason)))
            }
        }
    }
    pending.fail_all();
}
