//! A provider's final hop, sans-IO: store for the client, **then**
//! acknowledge (PROTOCOL.md 6.4).
//!
//! [`Delivery::deliver`] takes a batch of final-hop packets that are not the
//! provider's own loops ([`super::final_hop`]) and decides, per packet:
//!
//! * undecodable payload: dropped (`malformed`);
//! * addressed to the provider itself: drop cover is counted (its whole
//!   purpose was to be sent), anything else dropped (`unexpected_final_hop`);
//! * a drop payload addressed to a client: dropped (`malformed`, senders
//!   address drop cover to providers only);
//! * data: stored with its SURB-ACK zeroed (the client never needs it, and
//!   keeping it would let a later reader of the inbox send the ack again;
//!   zeroed, not removed, so the item keeps its layout);
//! * a sealed payload (one this hop cannot read: the use of a SURB — an
//!   ack, a loop or a reply, indistinguishable here) addressed to a client:
//!   stored as it is, for the client to open (PROTOCOL.md 6.4); addressed
//!   to the provider itself: dropped (`malformed`);
//! * an ack, reply or loop in the clear: dropped (`malformed`): they only
//!   ever travel over SURBs, sealed.
//!
//! Everything to store goes to the [`InboxStorage`] in **one** commit. Only
//! for an item whose commit returned `Ok` (stored, or already held: a
//! retransmission must be acknowledged) is its SURB-ACK packet built, so a
//! provider that crashes before the commit sends no ack and the sender
//! retransmits. The ack carries a loop payload: the sender's provider, which
//! stores it, cannot tell acks (one per real fragment) from loops.
//!
//! The caller brings the storage, the time and the payload size, and does
//! the I/O: it counts and logs each [`Outcome`] and sends the acks.

use std::fmt;

use crate::e2e::{Payload, PayloadError, payload_plaintext_len, use_surb};
use crate::keys::NodeId;

/// A final-hop packet for this provider or one of its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalPacket {
    pub destination: NodeId,
    pub identifier: [u8; 16],
    /// Key epoch of the frame it arrived in: a SURB-ACK it carries was built
    /// with the same epoch's keys.
    pub key_epoch: u64,
    pub payload: FinalPayload,
}

/// A Sphinx payload after the final hop's processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalPayload {
    /// A forward packet's plaintext.
    Plain(Vec<u8>),
    /// A payload only its SURB's creator can open (all `payload_size`
    /// bytes, as processed).
    Sealed(Vec<u8>),
}

impl FinalPayload {
    /// Recovers the plaintext if this hop can (sphinx-packet's padding
    /// check: a sealed payload fails it, but for 2^-128).
    pub fn of(payload: sphinx_packet::payload::Payload) -> Self {
        let sealed = payload.as_bytes().to_vec();
        match payload.recover_plaintext() {
            Ok(plaintext) => FinalPayload::Plain(plaintext),
            Err(_) => FinalPayload::Sealed(sealed),
        }
    }
}

/// One message to append to a client's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxItem<'a> {
    pub client: NodeId,
    /// The Sphinx identifier: what the client matches acks and loops by, and
    /// what the store recognises a retransmission by.
    pub id: [u8; 16],
    pub message: &'a [u8],
}

/// Why the storage refused one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a client of this provider.
    UnknownClient,
    /// The client's inbox is at its limit (unacknowledged: the sender
    /// retries, by when the client may have pulled).
    Full,
    /// Anything else (too large, a storage error for this item).
    Other,
}

impl Refusal {
    /// The `reason` label of the node's drop counter.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownClient => "unknown_destination",
            Refusal::Full => "inbox_full",
            Refusal::Other => "storage",
        }
    }
}

/// A provider's bounded, durable per-client inboxes.
pub trait InboxStorage {
    type Error: fmt::Display;

    /// Appends `items` in one commit that is durable when this returns,
    /// with one outcome per item (`Ok` also for a message already held).
    /// `Err`: the commit failed and nothing was stored.
    fn store_committed(
        &self,
        items: &[InboxItem<'_>],
        now_unix_ms: u64,
    ) -> Result<Vec<Result<(), Self::Error>>, Self::Error>;

    /// How a refused item is counted.
    fn refusal(error: &Self::Error) -> Refusal;
}

/// A SURB-ACK ready to go: send `packet` to `first_hop` under `key_epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPacket {
    pub first_hop: NodeId,
    pub key_epoch: u64,
    pub packet: Vec<u8>,
}

/// The SURB-ACK of a data packet that is now stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SurbAck {
    Send(AckPacket),
    /// The sender's SURB cannot be used (counted as a failed ack).
    Unusable,
}

/// What became of one packet.
#[derive(Debug)]
pub enum Outcome<E> {
    /// Durably in its client's inbox; for a data packet, the SURB-ACK to
    /// send now (`None` for other kinds, or a data packet without one).
    Stored { ack: Option<SurbAck> },
    /// Drop cover addressed to this provider.
    CoverDrop,
    /// Dropped before storage: `reason` is the drop counter's label.
    Dropped {
        reason: &'static str,
        /// Why the payload could not be decoded, when that is the reason.
        error: Option<PayloadError>,
    },
    /// The storage refused it.
    Refused { refusal: Refusal, error: E },
    /// The batch's commit failed ([`DeliveryReport::commit_error`]).
    NotStored,
}

impl<E> Outcome<E> {
    /// The drop counter's `reason` if the packet was not delivered.
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Stored { .. } | Outcome::CoverDrop => None,
            Outcome::Dropped { reason, .. } => Some(reason),
            Outcome::Refused { refusal, .. } => Some(refusal.label()),
            Outcome::NotStored => Some(Refusal::Other.label()),
        }
    }
}

/// What one batch came to.
#[derive(Debug)]
pub struct DeliveryReport<E> {
    /// One per packet, in the order given.
    pub outcomes: Vec<Outcome<E>>,
    /// Why the commit failed, if it did (then every packet that was to be
    /// stored is [`Outcome::NotStored`]).
    pub commit_error: Option<E>,
    /// How many packets the failed commit held.
    pub not_stored: usize,
}

/// The final-hop rules of provider `me` (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    me: NodeId,
}

/// A packet on its way to storage: the bytes to keep, and the SURB-ACK with
/// the key epoch it was built for.
struct ToStore {
    client: NodeId,
    id: [u8; 16],
    bytes: Vec<u8>,
    ack: Option<(Vec<u8>, u64)>,
}

impl Delivery {
    pub fn new(me: NodeId) -> Self {
        Self { me }
    }

    /// Delivers `packets` into `store` at `now_unix_ms` (see the module
    /// docs); acks are built for `payload_size`-byte payloads.
    pub fn deliver<S: InboxStorage + ?Sized>(
        &self,
        packets: Vec<FinalPacket>,
        store: &S,
        now_unix_ms: u64,
        payload_size: usize,
    ) -> DeliveryReport<S::Error> {
        // `Err(i)`: the packet is the `i`th of `to_store`, decided after the commit.
        let mut decided: Vec<Result<Outcome<S::Error>, usize>> = Vec::with_capacity(packets.len());
        let mut to_store = Vec::new();
        for p in packets {
            match self.classify(p) {
                Ok(item) => {
                    decided.push(Err(to_store.len()));
                    to_store.push(item);
                }
                Err(outcome) => decided.push(Ok(outcome)),
            }
        }
        let mut report = DeliveryReport {
            outcomes: Vec::with_capacity(decided.len()),
            commit_error: None,
            not_stored: 0,
        };
        let committed = if to_store.is_empty() {
            Ok(Vec::new())
        } else {
            let items: Vec<InboxItem<'_>> = to_store
                .iter()
                .map(|s| InboxItem {
                    client: s.client,
                    id: s.id,
                    message: &s.bytes,
                })
                .collect();
            store.store_committed(&items, now_unix_ms)
        };
        let mut results: Vec<Option<Result<(), S::Error>>> = match committed {
            Ok(r) => r.into_iter().map(Some).collect(),
            Err(e) => {
                report.commit_error = Some(e);
                report.not_stored = to_store.len();
                Vec::new()
            }
        };
        for d in decided {
            let outcome = match d {
                Ok(outcome) => outcome,
                Err(i) => match results.get_mut(i).and_then(Option::take) {
                    // Acks only now: the commit is durable.
                    Some(Ok(())) => Outcome::Stored {
                        ack: to_store
                            .get(i)
                            .and_then(|s| s.ack.as_ref())
                            .filter(|(surb, _)| !surb.is_empty())
                            .map(|(surb, epoch)| surb_ack(surb, *epoch, payload_size)),
                    },
                    Some(Err(error)) => Outcome::Refused {
                        refusal: S::refusal(&error),
                        error,
                    },
                    None => Outcome::NotStored,
                },
            };
            report.outcomes.push(outcome);
        }
        report
    }

    /// What to store for `p`, or why nothing is.
    fn classify<E>(&self, p: FinalPacket) -> Result<ToStore, Outcome<E>> {
        let dropped = |reason| Outcome::Dropped {
            reason,
            error: None,
        };
        let plaintext = match p.payload {
            FinalPayload::Sealed(_) if p.destination == self.me => {
                return Err(dropped("malformed"));
            }
            FinalPayload::Sealed(bytes) => {
                return Ok(ToStore {
                    client: p.destination,
                    id: p.identifier,
                    bytes,
                    ack: None,
                });
            }
            FinalPayload::Plain(plaintext) => plaintext,
        };
        let payload = match Payload::decode(&plaintext) {
            Ok(payload) => payload,
            Err(e) => {
                return Err(Outcome::Dropped {
                    reason: "malformed",
                    error: Some(e),
                });
            }
        };
        if p.destination == self.me {
            return Err(match payload {
                Payload::Drop => Outcome::CoverDrop,
                _ => dropped("unexpected_final_hop"),
            });
        }
        let (bytes, ack) = match payload {
            Payload::Data { surb_ack, sealed } => {
                let kept = Payload::Data {
                    surb_ack: vec![0; surb_ack.len()],
                    sealed,
                };
                match kept.encode(plaintext.len()) {
                    Ok(bytes) => (bytes, Some((surb_ack, p.key_epoch))),
                    Err(_) => return Err(dropped("malformed")),
                }
            }
            Payload::Drop | Payload::Ack | Payload::Reply { .. } | Payload::Loop => {
                return Err(dropped("malformed"));
            }
        };
        Ok(ToStore {
            client: p.destination,
            id: p.identifier,
            bytes,
            ack,
        })
    }
}

/// The SURB-ACK packet for `surb` (its per-hop delays are in its header).
fn surb_ack(surb: &[u8], key_epoch: u64, payload_size: usize) -> SurbAck {
    let built = Payload::Loop
        .encode(payload_plaintext_len(payload_size))
        .ok()
        .and_then(|ack| use_surb(surb, &ack, payload_size).ok());
    match built {
        Some((first_hop, packet)) => SurbAck::Send(AckPacket {
            first_hop,
            key_epoch,
            packet,
        }),
        None => SurbAck::Unusable,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::e2e::{data_sealed_len, make_surb};
    use crate::testing::{MemoryInbox, MemoryInboxError};

    const PS: usize = 1024;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn packet(to: NodeId, ident: u8, payload: &Payload) -> FinalPacket {
        FinalPacket {
            destination: to,
            identifier: [ident; 16],
            key_epoch: 3,
            payload: FinalPayload::Plain(payload.encode(payload_plaintext_len(PS)).unwrap()),
        }
    }

    fn sealed(to: NodeId, ident: u8) -> FinalPacket {
        FinalPacket {
            destination: to,
            identifier: [ident; 16],
            key_epoch: 3,
            payload: FinalPayload::Sealed(vec![0xA5; PS]),
        }
    }

    /// A data payload whose SURB-ACK routes through `sample_doc`'s mixes.
    fn data() -> (Payload, NodeId) {
        let doc = crate::testing::sample_doc(1, 3);
        let t = crate::topology::Topology::new(doc).unwrap();
        let route: Vec<_> = t.nodes().iter().collect();
        let delays = vec![sphinx_packet::header::delays::Delay::new_from_nanos(0); route.len()];
        let (surb, _) = make_surb(&route, id(9), [5; 16], &delays).unwrap();
        let sealed = vec![0x5A; data_sealed_len(PS, surb.len())];
        (
            Payload::Data {
                surb_ack: surb,
                sealed,
            },
            route[0].id,
        )
    }

    #[test]
    fn data_is_stored_with_its_surb_zeroed_and_acked_only_after_the_commit() {
        let provider = id(1);
        let (client, stranger) = (id(2), id(3));
        let store = MemoryInbox::new(8);
        store.register(client);
        let (d, first_hop) = data();
        let report = Delivery::new(provider).deliver(
            vec![
                packet(client, 1, &d),
                sealed(client, 2),
                sealed(stranger, 3),
            ],
            &store,
            0,
            PS,
        );
        assert!(report.commit_error.is_none());
        let [data_out, ack_out, stranger_out] = &report.outcomes[..] else {
            panic!("{:?}", report.outcomes);
        };
        match data_out {
            Outcome::Stored {
                ack: Some(SurbAck::Send(a)),
            } => {
                assert_eq!((a.first_hop, a.key_epoch), (first_hop, 3));
                assert_eq!(a.packet.len(), 348 + PS);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ack_out, Outcome::Stored { ack: None }));
        assert!(matches!(
            stranger_out,
            Outcome::Refused {
                refusal: Refusal::UnknownClient,
                error: MemoryInboxError::UnknownClient
            }
        ));
        assert_eq!(stranger_out.drop_reason(), Some("unknown_destination"));
        let held = store.fetch(&client);
        assert_eq!(held.len(), 2);
        match Payload::decode(&held[0].1).unwrap() {
            Payload::Data { surb_ack, .. } => assert!(surb_ack.iter().all(|b| *b == 0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            held[1].1,
            vec![0xA5; PS],
            "sealed items are kept as they came"
        );
    }

    #[test]
    fn no_ack_without_a_commit() {
        let client = id(2);
        let store = MemoryInbox::new(8);
        store.register(client);
        store.fail_commits(true);
        let (d, _) = data();
        let report = Delivery::new(id(1)).deliver(
            vec![
                packet(client, 1, &d),
                packet(id(1), 2, &Payload::Drop),
                packet(client, 3, &d),
            ],
            &store,
            0,
            PS,
        );
        assert!(report.commit_error.is_some());
        assert_eq!(report.not_stored, 2);
        let reasons: Vec<_> = report.outcomes.iter().map(Outcome::drop_reason).collect();
        assert_eq!(reasons, [Some("storage"), None, Some("storage")]);
        assert!(matches!(report.outcomes[1], Outcome::CoverDrop));
        assert!(store.fetch(&client).is_empty());
    }

    #[test]
    fn what_is_dropped_and_why() {
        let (me, client) = (id(1), id(2));
        let store = MemoryInbox::new(1);
        store.register(client);
        let (d, _) = data();
        let mut garbage = packet(client, 9, &Payload::Ack);
        if let FinalPayload::Plain(p) = &mut garbage.payload {
            p[0] = 0x7F;
        }
        let report = Delivery::new(me).deliver(
            vec![
                packet(me, 1, &Payload::Drop),
                packet(me, 2, &Payload::Ack),
                packet(client, 3, &Payload::Drop),
                garbage,
                packet(client, 4, &d),
                // Over the inbox's one-message limit.
                sealed(client, 5),
                // A retransmission of what it holds: stored, so acked again.
                packet(client, 4, &d),
                // Acks, loops and replies travel sealed, never in the clear.
                packet(client, 6, &Payload::Loop),
                packet(client, 7, &Payload::Ack),
                // Nothing sealed is addressed to a provider.
                sealed(me, 8),
            ],
            &store,
            0,
            PS,
        );
        let reasons: Vec<_> = report.outcomes.iter().map(Outcome::drop_reason).collect();
        assert_eq!(
            reasons,
            [
                None,
                Some("unexpected_final_hop"),
                Some("malformed"),
                Some("malformed"),
                None,
                Some("inbox_full"),
                None,
                Some("malformed"),
                Some("malformed"),
                Some("malformed"),
            ]
        );
        assert!(matches!(report.outcomes[0], Outcome::CoverDrop));
        assert!(matches!(
            report.outcomes[3],
            Outcome::Dropped { error: Some(_), .. }
        ));
        assert!(matches!(
            report.outcomes[6],
            Outcome::Stored {
                ack: Some(SurbAck::Send(_))
            }
        ));
        assert_eq!(store.fetch(&client).len(), 1);
    }

    #[test]
    fn an_ack_that_cannot_be_built_is_reported_not_sent() {
        let client = id(2);
        let store = MemoryInbox::new(8);
        store.register(client);
        let (d, _) = data();
        // A payload size with no room for the ack's payload.
        let report = Delivery::new(id(1)).deliver(vec![packet(client, 1, &d)], &store, 0, 16);
        assert!(matches!(
            report.outcomes[..],
            [Outcome::Stored {
                ack: Some(SurbAck::Unusable)
            }]
        ));
        assert_eq!(store.len(), 1, "stored all the same");
    }
}
