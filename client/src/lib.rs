//! loopmix-client: a library first; the binary (`main.rs`) is a thin shell.
//!
//! # Quick start
//!
//! An application talks to the mixnet through [`MixnetClient`] ([`sdk`]):
//! connect with a directory made by `loopmix-client init`, send messages
//! (optionally with reply blocks), read incoming ones, answer over reply
//! blocks, and open byte streams through an exit service. `docs/SDK.md`
//! has the whole tour; `client/examples/` has a chat, an echo service and
//! a URL fetcher.
//!
//! ```no_run
//! use loopmix_client::MixnetClient;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = MixnetClient::connect_dir("/tmp/alice").await?;
//! println!("my address: {}", client.address());
//!
//! // A message with two reply blocks: the recipient can answer without
//! // learning who we are. `.await` waits for its acknowledgement.
//! let bob = "IDENTITY.ENCRYPTION@PROVIDER"; // what `loopmix-client address` prints
//! client.send_with_reply_blocks(bob, b"hi Bob".to_vec(), 2)?.await?;
//! let mut inbox = client.messages();
//! if let Some(answer) = inbox.recv().await {
//!     println!("{}", String::from_utf8_lossy(&answer.body));
//! }
//!
//! // A TCP connection made by an exit service, as AsyncRead + AsyncWrite.
//! let exit = "EXIT_IDENTITY.ENCRYPTION@PROVIDER";
//! let mut stream = client.open_stream(exit, "example.org:80").await?;
//! stream.write_all(b"GET / HTTP/1.0\r\nHost: example.org\r\n\r\n").await?;
//! let mut page = Vec::new();
//! stream.read_to_end(&mut page).await?;
//!
//! client.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The modules below are the machinery, for tools and tests:
//!
//! * [`config`]: the TOML configuration.
//! * [`keys`]: the client's identity and encryption keys, and its address.
//! * [`engine`]: the sans-IO messaging engine (fragments, acks, retransmission,
//!   reply blocks, cover packets); it lives in the protocol crate
//!   (`loopmix_core::client_engine`) and is re-exported here.
//! * [`runtime`]: the I/O shell: directory, provider link, Poisson streams.
//! * [`stream`]: reliable byte streams over the mixnet (sans-IO mux + glue).
//! * [`socks5`]: the SOCKS5 proxy; [`exit`]: the exit service.
//! * [`sdk`]: the application developer's API ([`MixnetClient`]).

pub mod config;
pub use loopmix_core::client_engine as engine;
pub mod error;
pub mod exit;
pub mod keys;
pub mod runtime;
pub mod sdk;
pub mod socks5;
pub mod stream;

pub use error::ClientError;
pub use sdk::{Delivery, Error as SdkError, MixnetClient, MixnetStream};
