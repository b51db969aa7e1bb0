//! The messaging layer between clients (PROTOCOL.md section 6), sans-IO:
//! client addresses and encryption keys, end-to-end sealing, version-260
//! SURBs, the Sphinx payload plaintext and the message envelope.
//!
//! # Packet kinds and who reads what
//!
//! Every packet is one Sphinx packet of `348 + payload_size` bytes; the
//! payload plaintext (`payload_size - 17` bytes, [`payload_plaintext_len`])
//! starts with a kind byte ([`Payload`]). Mixes and every non-final hop see
//! only a header layer (next hop, delay) and a Lioness-encrypted payload. The
//! **final hop** of a forward packet (data, drop) recovers its plaintext, so
//! anything it must not read is sealed inside; the final hop of a SURB's use
//! (ack, loop, reply) reads nothing and stores the payload sealed for the
//! SURB's creator ([`surb`]).
//!
//! | kind | route (A at provider PA, B at PB) | final hop reads | only the client reads |
//! |---|---|---|---|
//! | `drop` | A: PA → L1 → L2 → L3 → random provider P | P: "drop", discards it | — |
//! | `loop` | A uses a SURB of its own: PA → L1 → L2 → L3 → PA | PA: destination A, identifier; a sealed payload it stores in A's inbox | A: opens it with the loop's recovery; the identifier matches a loop it sent |
//! | `data` | A: PA → L1 → L2 → L3 → PB, destination B, random identifier | PB: destination B, "data", the SURB-ACK (its header, first hop L1 and seeds), an opaque sealed blob | B: [`open`]s the blob with its encryption key → one fragment ([`crate::message::Fragment`]) |
//! | `ack` | PB uses the SURB-ACK (loop kind): L1 → L2 → L3 → PA, destination A, identifier = ack id | PA: destination A, identifier; a sealed payload | A: opens it with the ack's recovery; the ack id says which fragment arrived |
//! | `reply` | B uses a reply block: PB → L1 → L2 → L3 → PA, destination A, identifier = the block's | PA: destination A, identifier; a sealed payload | A: opens it with the block's recovery, then [`open_reply`] with the block's key → one fragment |
//!
//! What each party learns beyond that:
//!
//! * PA (the sender's provider, first hop of its packets) learns that A sent
//!   *a* packet, never its kind or destination; A sends at constant Poisson
//!   rates, so not even whether it was real.
//! * PB learns that B received a data packet and when, not from whom; the
//!   SURB-ACK's header names only L1 in the clear.
//! * A recipient's message ([`Envelope`]) may carry reply blocks
//!   ([`ReplyBlock`]): the recipient can answer without learning the
//!   sender's address. The recovery material hides the reply from every hop
//!   and from the block's user (it cannot follow its reply through a mix:
//!   [`surb`]); the block's key hides it from anyone who saw the block.
//! * PA cannot tell A's acks, loops and replies apart: all arrive sealed.
//!
//! Encryption: [`seal()`] is ephemeral-static X25519 → HKDF-SHA256 →
//! ChaCha20-Poly1305 with the payload kind as associated data, so a sealed
//! blob cannot be replayed as another kind; [`seal_reply`] uses the reply
//! block's key with associated data `0x03`.
//!
//! Sizes, with a SURB-ACK of [`SURB_LEN`] (396) bytes for any route: a data
//! packet carries [`data_fragment_capacity`]`(payload_size, 396)` =
//! `payload_size - 464` bytes of encoded fragment (560 for 1024, 1584 for
//! 2048), a reply packet [`reply_fragment_capacity`]`(payload_size)` =
//! `payload_size - 34`.

pub mod address;
pub mod envelope;
pub mod keys;
pub mod payload;
pub mod seal;
pub mod surb;

pub use address::{AddressError, ClientAddress};
pub use envelope::{
    ENVELOPE_VERSION, Envelope, EnvelopeError, MAX_REPLY_BLOCKS, MAX_REPLY_SURB_LEN,
    REPLY_BLOCK_OVERHEAD, REPLY_KEY_LEN, ReplyBlock,
};
pub use keys::{EncryptionKeypair, EncryptionPublicKey};
pub use payload::{
    KIND_ACK, KIND_DATA, KIND_DROP, KIND_LOOP, KIND_REPLY, Payload, PayloadError,
    data_fragment_capacity, data_sealed_len, payload_plaintext_len, reply_ciphertext_len,
    reply_fragment_capacity,
};
pub use seal::{REPLY_OVERHEAD, SEAL_OVERHEAD, SealError, open, open_reply, seal, seal_reply};
pub use surb::{ReplyRecovery, SURB_LEN, SurbError, make_surb, use_surb};

#[cfg(test)]
mod tests;
