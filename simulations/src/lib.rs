//! loopmix simulations.
//!
//! * [`localnet`]: a whole loopmix network as separate processes on
//!   loopback (`loopmix-localnet`).
//! * [`faults`]: fault injection without root: a UDP relay that drops,
//!   delays, duplicates and reorders datagrams in front of chosen nodes
//!   (`loopmix-faultrelay`, `tests/faults.rs`).
//! * [`sim`]: the anonymity simulator (`loopmix-sim`), a discrete-event
//!   simulation in virtual time over the sans-IO core the nodes run.
//! * [`soak`]: a long localnet run under SOCKS5 traffic that checks every
//!   process for memory and file-descriptor growth and every transfer for
//!   lost data (`loopmix-soak`).

pub mod faults;
pub mod localnet;
pub mod sim;
pub mod soak;
