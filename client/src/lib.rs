//! loopmix-client: a library first; the binary (`main.rs`) is a thin shell.
//!
//! * [`config`]: the TOML configuration.
//! * [`keys`]: the client's identity and encryption keys, and its address.

pub mod config;
pub mod keys;
