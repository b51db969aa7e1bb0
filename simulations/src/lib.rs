//! loopmix-sim: the anonymity simulator.
//!
//! * [`sim`]: a discrete-event simulation in virtual time over the sans-IO
//!   protocol code (`loopmix-core`) the nodes run: the same `Mix` state
//!   machine, route choice and Poisson tickers (`loopmix-sim run|sweep|
//!   liveness`).
//! * [`presets`]: the network-wide parameter presets `loopmix-localnet`
//!   starts.
//!
//! This crate depends on the protocol crate only (no tokio, no sockets), so
//! a simulation cannot read a clock or touch the network by accident. The
//! tools that run real processes (localnet, soak, the fault relay, the
//! testnet generator) are in `loopmix-localnet`.

pub mod presets;
pub mod sim;
