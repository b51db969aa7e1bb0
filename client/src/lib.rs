//! loopmix-client: a library first; the binary (`main.rs`) is a thin shell.
//!
//! * [`config`]: the TOML configuration.
//! * [`keys`]: the client's identity and encryption keys, and its address.
//! * [`engine`]: the sans-IO messaging engine (fragments, acks, retransmission,
//!   reply blocks, cover packets).
//! * [`runtime`]: the I/O shell: directory, provider link, Poisson streams.

pub mod config;
pub mod engine;
pub mod keys;
pub mod runtime;
