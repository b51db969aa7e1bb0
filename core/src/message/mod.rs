//! Reliable messages over a lossy mixnet: an ARQ scheme, sans-IO.
//!
//! Packets get lost (a mix dies, a queue overflows), duplicated, and
//! reordered by the per-hop exponential delays. Loss must cost latency,
//! never data, and nothing may be delivered twice:
//!
//! 1. [`fragment::split`] cuts a message into [`Fragment`]s that each fit one
//!    Sphinx payload, under a random [`MessageId`].
//! 2. The sender sends each fragment and registers it in a
//!    [`RetransmitQueue`] with the sum of the Sphinx delays it sampled for
//!    that packet; the ack timeout is `1.5 × that sum + 1.5 s` (Nym's rule).
//! 3. The receiver feeds fragments to a [`Reassembler`], which holds them
//!    until the message is complete, delivers it once, discards duplicates
//!    (also of messages delivered recently) and refuses what exceeds its
//!    bounded memory. It acknowledges every fragment it holds or has held,
//!    duplicates again (their earlier ack was probably lost), and never a
//!    refused one.
//! 4. An ack removes the fragment from the sender's queue. A timeout hands
//!    it back ([`Due::Retransmit`]) to be sent again over a fresh route;
//!    after `max_attempts` sends the sender gives up ([`Due::GiveUp`]) and
//!    reports an error to the caller.
//!
//! The receiver keeps incomplete messages and the ids of completed ones for
//! longer than the sender keeps retrying, so an acknowledged fragment is
//! never needed again.
//!
//! Everything here takes "now" from the caller and is generic over the
//! clock, like [`crate::mixing`].

pub mod fragment;
pub mod reassembly;
pub mod retransmit;

pub use fragment::{
    FRAGMENT_HEADER_LEN, Fragment, FragmentError, FragmentKey, MAX_FRAGMENT_DATA, MessageId,
    max_fragment_data, split,
};
pub use reassembly::{Inserted, Reassembler, ReassemblyLimits, RejectReason};
pub use retransmit::{AckInfo, Due, Full, MAX_ACK_TIMEOUT, RetransmitConfig, RetransmitQueue};
