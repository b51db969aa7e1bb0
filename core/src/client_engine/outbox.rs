//! The send side: messages waiting for λ_P slots and fragments waiting for
//! acknowledgements.
//!
//! * Bounded: at most `send_queue` messages (queued or awaiting acks) and
//!   `send_queue_bytes` bytes of fragments; at most `max_outstanding`
//!   fragments await acks ([`RetransmitQueue`]), new fragments wait while
//!   that many do.
//! * Order: a fragment whose ack timed out goes first; then new fragments,
//!   one per message in turn (round robin), so a long message does not
//!   starve a short one queued after it.
//! * Every copy of a fragment carries its own SURB-ACK with a fresh ack id;
//!   all of a fragment's ack ids count (a late ack for an earlier copy
//!   still acknowledges it) until its message is delivered or failed.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::e2e::{ClientAddress, ReplyBlock};
use crate::message::{Due, FragmentKey, MessageId, RetransmitConfig, RetransmitQueue};

pub(super) type AckId = [u8; 16];

/// Where a message's fragments go.
pub(super) enum Target {
    /// Data packets to this address, each with a SURB-ACK.
    Data(ClientAddress),
    /// Reply packets: fragment `i` over block `i` (taken when used).
    Reply(Vec<Option<ReplyBlock>>),
}

struct OutMessage {
    target: Target,
    /// Encoded fragments; emptied once acknowledged (data) or sent (reply).
    fragments: Vec<Vec<u8>>,
    /// The first fragment not sent yet.
    next_new: usize,
    acked: Vec<bool>,
    unacked: usize,
    /// Every ack id issued for this message's fragments.
    ack_ids: Vec<AckId>,
    /// Bytes of `fragments` still held.
    bytes: usize,
    /// When the message was queued: what its first λ_P slot is timed from
    /// (`loopmix_client_slot_wait_seconds`).
    queued_at: Instant,
}

/// The fragment a λ_P slot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub key: FragmentKey,
    pub retransmission: bool,
    /// When the fragment's message was queued.
    pub queued_at: Instant,
}

/// What an ack id resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckOutcome {
    /// Not an ack id of a message in flight: forged, or for a message
    /// already delivered or failed.
    Unknown,
    /// The fragment was acknowledged before (another copy's ack).
    Duplicate,
    Acked,
    /// The message's last unacknowledged fragment.
    Delivered(MessageId),
}

pub(super) struct Outbox {
    messages: HashMap<MessageId, OutMessage>,
    fresh: VecDeque<MessageId>,
    resend: VecDeque<FragmentKey>,
    retx: RetransmitQueue<FragmentKey, Instant>,
    acks: HashMap<AckId, FragmentKey>,
    bytes: usize,
    max_outstanding: usize,
}

fn index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

impl Outbox {
    pub fn new(retransmit: RetransmitConfig) -> Self {
        Self {
            messages: HashMap::new(),
            fresh: VecDeque::new(),
            resend: VecDeque::new(),
            max_outstanding: retransmit.max_outstanding,
            retx: RetransmitQueue::new(retransmit),
            acks: HashMap::new(),
            bytes: 0,
        }
    }

    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, id: &MessageId) -> bool {
        self.messages.contains_key(id)
    }

    /// Fragments waiting for a λ_P slot: retransmissions and new ones.
    pub fn queued_fragments(&self) -> usize {
        self.resend.len()
            + self
                .messages
                .values()
                .map(|m| m.fragments.len().saturating_sub(m.next_new))
                .sum::<usize>()
    }

    /// Fragments sent and not acknowledged yet.
    pub fn outstanding(&self) -> usize {
        self.retx.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.retx.next_deadline()
    }

    /// Queues a message. The caller checked the limits and that `fragments`
    /// has 1 to `u16::MAX` entries (and, for a reply, as many blocks).
    pub fn push(&mut self, id: MessageId, target: Target, fragments: Vec<Vec<u8>>, now: Instant) {
        let bytes = fragments.iter().map(Vec::len).sum::<usize>();
        let n = fragments.len();
        self.bytes = self.bytes.saturating_add(bytes);
        self.messages.insert(
            id,
            OutMessage {
                target,
                fragments,
                next_new: 0,
                acked: vec![false; n],
                unacked: n,
                ack_ids: Vec::new(),
                bytes,
                queued_at: now,
            },
        );
        self.fresh.push_back(id);
    }

    /// The fragment for the next λ_P slot, if any.
    pub fn next(&mut self) -> Option<Slot> {
        while let Some(key) = self.resend.pop_front() {
            let Some(m) = self.messages.get(&key.0) else {
                continue;
            };
            let waiting = m.acked.get(usize::from(key.1)).is_some_and(|acked| !acked);
            if waiting && self.retx.contains(&key) {
                return Some(Slot {
                    key,
                    retransmission: true,
                    queued_at: m.queued_at,
                });
            }
        }
        let room = self.retx.len() < self.max_outstanding;
        for _ in 0..self.fresh.len() {
            let Some(id) = self.fresh.pop_front() else {
                break;
            };
            let Some(m) = self.messages.get_mut(&id) else {
                continue;
            };
            if matches!(m.target, Target::Data(_)) && !room {
                self.fresh.push_back(id);
                continue;
            }
            let i = m.next_new;
            if i >= m.fragments.len() {
                continue;
            }
            m.next_new += 1;
            if m.next_new < m.fragments.len() {
                self.fresh.push_back(id);
            }
            return Some(Slot {
                key: (id, index(i)),
                retransmission: false,
                queued_at: m.queued_at,
            });
        }
        None
    }

    /// The target and encoded bytes of a fragment, if its message is
    /// still here.
    pub fn fragment(&self, key: &FragmentKey) -> Option<(&Target, &[u8])> {
        let m = self.messages.get(&key.0)?;
        let bytes = m.fragments.get(usize::from(key.1))?;
        Some((&m.target, bytes))
    }

    /// A data fragment left at `now` with a SURB-ACK answering `ack_id`,
    /// on routes whose sampled delays add up to `delays`. Returns the
    /// attempt number, or `None` if the queue refused it (cannot happen
    /// after [`Outbox::next`] chose it).
    pub fn sent_data(
        &mut self,
        key: FragmentKey,
        ack_id: AckId,
        delays: std::time::Duration,
        now: Instant,
    ) -> Option<u32> {
        let m = self.messages.get_mut(&key.0)?;
        let attempts = self.retx.sent(key, delays, now).ok()?;
        m.ack_ids.push(ack_id);
        self.acks.insert(ack_id, key);
        Some(attempts)
    }

    /// Takes the reply block for a reply fragment about to be sent.
    pub fn take_block(&mut self, key: &FragmentKey) -> Option<ReplyBlock> {
        match &mut self.messages.get_mut(&key.0)?.target {
            Target::Reply(blocks) => blocks.get_mut(usize::from(key.1))?.take(),
            Target::Data(_) => None,
        }
    }

    /// A reply fragment left (replies are not acknowledged): frees it, and
    /// the whole message after its last fragment. Whether the message is
    /// finished.
    pub fn sent_reply(&mut self, key: &FragmentKey) -> bool {
        let Some(m) = self.messages.get_mut(&key.0) else {
            return false;
        };
        let i = usize::from(key.1);
        if let (Some(f), Some(a)) = (m.fragments.get_mut(i), m.acked.get_mut(i))
            && !*a
        {
            *a = true;
            m.unacked = m.unacked.saturating_sub(1);
            m.bytes = m.bytes.saturating_sub(f.len());
            self.bytes = self.bytes.saturating_sub(f.len());
            *f = Vec::new();
        }
        if m.unacked == 0 {
            self.remove(&key.0);
            return true;
        }
        false
    }

    pub fn ack(&mut self, ack_id: &AckId, now: Instant) -> AckOutcome {
        let Some(&key) = self.acks.get(ack_id) else {
            return AckOutcome::Unknown;
        };
        let Some(m) = self.messages.get_mut(&key.0) else {
            self.acks.remove(ack_id);
            return AckOutcome::Unknown;
        };
        let i = usize::from(key.1);
        if self.retx.acked(&key, now).is_none() || m.acked.get(i).is_none_or(|a| *a) {
            return AckOutcome::Duplicate;
        }
        if let (Some(a), Some(f)) = (m.acked.get_mut(i), m.fragments.get_mut(i)) {
            *a = true;
            m.bytes = m.bytes.saturating_sub(f.len());
            self.bytes = self.bytes.saturating_sub(f.len());
            *f = Vec::new();
        }
        m.unacked = m.unacked.saturating_sub(1);
        if m.unacked == 0 {
            self.remove(&key.0);
            return AckOutcome::Delivered(key.0);
        }
        AckOutcome::Acked
    }

    /// Ack timeouts at `now`: fragments to retransmit are queued first in
    /// line; messages with a fragment sent `max_attempts` times without an
    /// ack are removed and returned with the reason.
    pub fn due(&mut self, now: Instant, max_attempts: u32) -> Vec<(MessageId, String)> {
        let mut failed = Vec::new();
        for d in self.retx.due(now) {
            match d {
                Due::Retransmit(key) => self.resend.push_back(key),
                Due::GiveUp(key) => {
                    if self.remove(&key.0) {
                        failed.push((
                            key.0,
                            format!(
                                "fragment {} not acknowledged after {max_attempts} attempts",
                                key.1
                            ),
                        ));
                    }
                }
            }
        }
        failed
    }

    /// Forgets a message and everything that refers to it. Whether it was
    /// here.
    pub fn remove(&mut self, id: &MessageId) -> bool {
        let Some(m) = self.messages.remove(id) else {
            return false;
        };
        for i in 0..m.fragments.len() {
            self.retx.cancel(&(*id, index(i)));
        }
        for a in &m.ack_ids {
            self.acks.remove(a);
        }
        self.fresh.retain(|x| x != id);
        self.resend.retain(|k| k.0 != *id);
        self.bytes = self.bytes.saturating_sub(m.bytes);
        true
    }
}
