//! Reliable byte streams over the mixnet (PROTOCOL.md 7): what the SOCKS5
//! proxy and the exit service are made of.
//!
//! * [`frame`]: the message and frame encoding (the codec is in the protocol
//!   crate, `loopmix_core::stream_frame`).
//! * [`send`], [`recv`]: one direction of a stream (window, SACK, RTO;
//!   reorder buffer).
//! * [`mux`]: sessions and streams, reply-block supply, slot scheduling —
//!   sans-IO.
//! * [`io`]: the tokio glue between sockets and the mux.

pub use loopmix_core::stream_frame as frame;
pub mod io;
pub mod mux;
pub mod recv;
pub mod send;

pub use frame::Target;
pub use mux::{IsolationKey, Mux, MuxEvent, StreamConfig, StreamKey, StreamMetrics, code};
