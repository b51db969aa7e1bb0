//! The receive side: one item pulled from our inbox at a time.
//!
//! Items come from our provider, but their contents come from strangers:
//! everything is parsed strictly, nothing panics, and every refusal is
//! counted by label ([`super::EngineStats::bad_inbox`]).
//!
//! An item is one of two things (PROTOCOL.md 6.3):
//!
//! * **sealed**: the payload of a SURB's use — an ack, a loop or a reply —
//!   exactly as our provider got it, which only we can open, with the
//!   recovery material we kept under the item's identifier. Opened, it is an
//!   ack or a loop (both carry the loop kind) or a reply.
//! * **plain**: a data payload our provider recovered (a forward packet).
//!
//! Nothing else is accepted: an ack, loop or reply that arrives in the clear
//! did not come over a SURB of ours.

use std::time::Instant;

use crate::e2e::{
    Envelope, KIND_DATA, Payload, ReplyBlock, SEAL_OVERHEAD, SURB_LEN, open, open_reply,
};
use crate::message::{Fragment, Inserted};

use super::build::surb_first_hop;
use super::outbox::AckOutcome;
use super::stores::SealedKind;
use super::{Engine, Event, ReplyHandle};

/// The sealed part of a stored data payload. A provider may keep the
/// SURB-ACK, zero it, or strip it (`ack-len` 0, the sealed part running to
/// the end of the item): the client never needs it.
fn data_sealed(data: &[u8]) -> Result<&[u8], &'static str> {
    let body = data.get(1..).ok_or("empty")?;
    let (len, rest) = body.split_first_chunk::<2>().ok_or("truncated")?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len != 0 && len != SURB_LEN {
        return Err("bad_ack_len");
    }
    let sealed = rest.get(len..).ok_or("ack_beyond_input")?;
    if sealed.len() < SEAL_OVERHEAD {
        return Err("sealed_too_short");
    }
    Ok(sealed)
}

impl Engine {
    /// One message pulled from the inbox: its Sphinx `identifier` and what
    /// our provider stored (a sealed payload or a data plaintext). Returns
    /// what it completed (and events found since the last call).
    pub fn on_inbox(&mut self, identifier: [u8; 16], data: &[u8], now: Instant) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.events);
        match self.unseal(&identifier, data) {
            Some(Ok((kind, plaintext))) => {
                self.sealed_in(kind, &identifier, &plaintext, now, &mut events)
            }
            Some(Err(label)) => self.bad("sealed", label),
            None => self.plain_in(data, now, &mut events),
        }
        events
    }

    /// Opens `data` with the recovery kept under `id`, and forgets it once
    /// it opened (single use). `None`: no recovery is kept under `id`.
    fn unseal(
        &mut self,
        id: &[u8; 16],
        data: &[u8],
    ) -> Option<Result<(SealedKind, Vec<u8>), &'static str>> {
        let (kind, recovery) = match self.reply_keys.recovery(id) {
            Some(r) => (SealedKind::Reply, r),
            None => self.recoveries.get(id)?,
        };
        // A failure keeps the recovery: a forgery must not burn the
        // genuine answer.
        let plaintext = match recovery.open(data) {
            Ok(p) => p,
            Err(e) => return Some(Err(e.label())),
        };
        self.recoveries.used(kind, id);
        Some(Ok((kind, plaintext)))
    }

    fn sealed_in(
        &mut self,
        kind: SealedKind,
        id: &[u8; 16],
        plaintext: &[u8],
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        match (kind, Payload::decode(plaintext)) {
            (_, Err(e)) => self.bad("payload", e.label()),
            // Providers send acks with the loop kind, so our own provider
            // could not count our real fragments by counting acks even if
            // it could read them.
            (SealedKind::Ack, Ok(Payload::Loop | Payload::Ack)) => self.ack_in(id, now, events),
            (SealedKind::Loop, Ok(Payload::Loop)) => match self.probes.loop_returned(id) {
                Some(sent) => events.push(Event::LoopReturned {
                    rtt: now.saturating_duration_since(sent),
                }),
                None => self.bad("loop", "late"),
            },
            (SealedKind::Reply, Ok(Payload::Reply { ciphertext })) => {
                self.reply_in(id, &ciphertext, now, events)
            }
            (_, Ok(other)) => self.bad("sealed", other.label()),
        }
    }

    fn plain_in(&mut self, data: &[u8], now: Instant, events: &mut Vec<Event>) {
        match data.first().copied() {
            None => self.bad("payload", "empty"),
            Some(KIND_DATA) => match data_sealed(data) {
                Ok(sealed) => match open(&self.encryption, KIND_DATA, sealed) {
                    Ok(plaintext) => self.fragment_in(&plaintext, now, events),
                    Err(_) => self.bad("data", "open"),
                },
                Err(label) => self.bad("payload", label),
            },
            // Acks, loops and replies come sealed: one in the clear was not
            // sent over a SURB of ours (or its recovery expired).
            Some(_) => match Payload::decode(data) {
                Err(e) => self.bad("payload", e.label()),
                Ok(other) => self.bad("unsealed", other.label()),
            },
        }
    }

    pub(super) fn bad(&mut self, what: &'static str, label: &'static str) {
        let n = self.counters.bad.entry((what, label)).or_default();
        *n = n.saturating_add(1);
    }

    fn ack_in(&mut self, id: &[u8; 16], now: Instant, events: &mut Vec<Event>) {
        self.probes.ack_in(id);
        match self.outbox.ack(id, now) {
            AckOutcome::Unknown => self.bad("ack", "unknown"),
            AckOutcome::Duplicate => self.counters.duplicate_acks += 1,
            AckOutcome::Acked => {}
            AckOutcome::Delivered(message) => events.push(Event::Delivered { message }),
        }
    }

    fn reply_in(&mut self, id: &[u8; 16], ct: &[u8], now: Instant, events: &mut Vec<Event>) {
        let Some(key) = self.reply_keys.get(id).copied() else {
            self.bad("reply", "unknown");
            return;
        };
        match open_reply(&key, ct) {
            Ok(plaintext) => {
                // Single use: a second copy finds no key.
                self.reply_keys.remove(id);
                self.fragment_in(&plaintext, now, events);
            }
            // Keep the key: a forgery must not burn a genuine reply.
            Err(_) => self.bad("reply", "open"),
        }
    }

    fn fragment_in(&mut self, plaintext: &[u8], now: Instant, events: &mut Vec<Event>) {
        let fragment = match Fragment::decode(plaintext) {
            Ok(f) => f,
            Err(e) => return self.bad("fragment", e.label()),
        };
        match self.reassembler.insert(fragment, now) {
            Inserted::Complete { message, bytes } => match Envelope::decode(&bytes) {
                Ok(envelope) => {
                    let Envelope { reply_blocks, body } = envelope;
                    let reply = self.hold(reply_blocks, now);
                    events.push(Event::Received {
                        message,
                        body,
                        reply,
                    });
                }
                Err(e) => self.bad("envelope", e.label()),
            },
            Inserted::Pending { .. } => {}
            Inserted::Duplicate => self.counters.duplicate_fragments += 1,
            Inserted::Rejected(r) => self.bad("reassembly", r.label()),
        }
    }

    /// Keeps the reply blocks we can use: those whose SURB starts at our
    /// provider (where every packet of ours enters the network).
    fn hold(&mut self, blocks: Vec<ReplyBlock>, now: Instant) -> Option<ReplyHandle> {
        let total = blocks.len();
        let provider = self.me.provider;
        let usable: Vec<ReplyBlock> = blocks
            .into_iter()
            .filter(|b| surb_first_hop(&b.surb) == Some(provider))
            .collect();
        for _ in usable.len()..total {
            self.bad("envelope", "unusable_reply_block");
        }
        if usable.is_empty() {
            return None;
        }
        Some(self.held.insert(usable, now))
    }
}
