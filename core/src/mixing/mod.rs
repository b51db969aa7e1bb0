//! The mixing logic, free of sockets and clocks (sans-IO, like quinn-proto).
//!
//! Everything here takes "now" and randomness from the caller. `loopmix-node`
//! drives it with tokio and real time; the simulator drives the same code in
//! virtual time. The packet path through a mix is, in order:
//!
//! 1. [`processor::SphinxProcessor`]: key by epoch → header MAC → replay tag
//!    check in that key's [`replay::ReplayCache`] → full unwrap.
//! 2. [`mix::Mix`]: the pool ([`delay_queue::DelayQueue`]) and its rules:
//!    hold until arrival + header delay, forward at once what is already
//!    due, drop on overload or when released too late, account entropy.
//! 3. The driver forwards to the next hop.
//!
//! A packet this node is the final hop of goes instead to:
//!
//! 4. [`final_hop::OwnLoops`]: one of the node's own loop cover packets
//!    coming back (counted, its route a liveness probe), or something to
//!    deliver ([`loops::LoopTracker`] keeps the loops in flight).
//! 5. [`delivery::Delivery`], at a provider: decode, store for the client in
//!    one commit, and only then the SURB-ACK.

pub mod delay_queue;
pub mod delivery;
pub mod entropy;
pub mod final_hop;
pub mod loops;
pub mod mix;
pub mod processor;
pub mod replay;
