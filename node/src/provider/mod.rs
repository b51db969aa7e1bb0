//! Provider role: the node a client talks to, which keeps its inbox.
//!
//! * [`inbox`]: durable per-client inboxes (redb).
//! * [`delivery`]: final-hop packets stored, then acknowledged (SURB-ACKs).
//! * [`control`]: the control protocol clients use to register, pull, confirm.
pub mod control;
pub mod delivery;
pub mod inbox;
