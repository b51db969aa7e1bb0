//! loopmix simulations.
//!
//! * [`localnet`]: a whole loopmix network as separate processes on
//!   loopback (`loopmix-localnet`).
//! * [`sim`]: the anonymity simulator (`loopmix-sim`), a discrete-event
//!   simulation in virtual time over the sans-IO core the nodes run.

pub mod localnet;
pub mod sim;
