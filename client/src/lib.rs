//! loopmix-client: a library first; the binary (`main.rs`) is a thin shell.
//!
//! * [`config`]: the TOML configuration.
//! * [`keys`]: the client's identity and encryption keys, and its address.
//! * [`engine`]: the sans-IO messaging engine (fragments, acks, retransmission,
//!   reply blocks, cover packets); it lives in the protocol crate
//!   (`loopmix_core::client_engine`) and is re-exported here.
//! * [`runtime`]: the I/O shell: directory, provider link, Poisson streams.
//! * [`stream`]: reliable byte streams over the mixnet (sans-IO mux + glue).
//! * [`socks5`]: the SOCKS5 proxy; [`exit`]: the exit service.

pub mod config;
pub use loopmix_core::client_engine as engine;
pub mod error;
pub mod exit;
pub mod keys;
pub mod runtime;
pub mod socks5;
pub mod stream;

pub use error::ClientError;
