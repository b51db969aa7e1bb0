//! The receiver's side: fragments in any order, with duplicates, become
//! messages delivered exactly once, in bounded memory.
//!
//! Memory is bounded whatever arrives. Bytes are counted as encoded
//! fragments (header + data), so a flood of empty fragments is bounded as
//! well as a flood of large ones. Room is reserved for a whole message when
//! its first fragment arrives (an upper bound on its size, tightened as
//! fragments arrive), so a message once admitted can always finish. The
//! numbers of incomplete messages and of remembered completed ids have their
//! own limits. No input grows the state beyond [`ReassemblyLimits`].
//!
//! The caller acknowledges a fragment when `insert` returns `Complete`,
//! `Pending` or `Duplicate` (a duplicate usually means the ack was lost, so it
//! is acknowledged again), and never when it returns `Rejected`: the sender
//! then retransmits it later, when there may be room.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Add;
use std::time::Duration;

use super::fragment::{FRAGMENT_HEADER_LEN, Fragment, MAX_FRAGMENT_DATA, MessageId};

/// Timeouts are capped here so that `now + timeout` cannot overflow the
/// clock (`Instant + Duration::MAX` panics) whatever the configuration.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Bounds on what a [`Reassembler`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest message accepted, in data bytes.
    pub max_message_bytes: usize,
    /// Incomplete messages held at once.
    pub max_pending_messages: usize,
    /// Bytes reserved for incomplete messages, counted as encoded
    /// fragments (`FRAGMENT_HEADER_LEN + data.len()` each). A message whose
    /// last fragment arrives first reserves up to `max_message_bytes` (plus
    /// headers) until a body fragment shows its real size, so this should be
    /// several times `max_message_bytes`.
    pub max_pending_bytes: usize,
    /// An incomplete message that gained no new fragment for this long is
    /// dropped by [`Reassembler::expire`]. Its fragments were acknowledged,
    /// so the sender will not resend them: this must exceed the sender's
    /// retransmission window (attempts × ack timeout, plus time queued
    /// behind other traffic), or loss would cost data instead of latency.
    pub incomplete_timeout: Duration,
    /// How many completed message ids are remembered, so that a
    /// retransmission of a delivered message is recognised as a duplicate
    /// (the oldest is forgotten first).
    pub completed_memory: usize,
    /// How long a completed id is remembered. Like `incomplete_timeout`, it
    /// should cover the sender's retransmission window: a copy arriving
    /// after it is forgotten would be delivered again.
    pub completed_ttl: Duration,
}

impl Default for ReassemblyLimits {
    /// * `max_message_bytes`: 1 MiB (about 1 060 fragments in the default
    ///   1024-byte Sphinx payload);
    /// * `max_pending_messages`: 256, `max_pending_bytes`: 16 MiB (at least
    ///   15 maximal messages at once, hundreds of small ones);
    /// * `incomplete_timeout`: 10 minutes, twice the window of the default
    ///   [`super::RetransmitConfig`] (10 attempts) on routes whose sampled
    ///   delays add up to 20 s;
    /// * `completed_memory`: 16 384 ids (about 0.5 MiB),
    ///   `completed_ttl`: 10 minutes.
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_pending_messages: 256,
            max_pending_bytes: 16 << 20,
            incomplete_timeout: Duration::from_secs(600),
            completed_memory: 16_384,
            completed_ttl: Duration::from_secs(600),
        }
    }
}

/// Why a fragment was refused. The caller must not acknowledge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The message is, or must be, larger than `max_message_bytes`.
    #[error("message larger than the reassembly limit")]
    TooLarge,
    /// Disagrees with the fragments already held for the same message id
    /// (another `count`, or lengths that `split` cannot produce), or with
    /// itself (`count == 0`, `index >= count`; `decode` never yields these).
    #[error("fragment inconsistent with its message")]
    Inconsistent,
    /// Pending limits reached; existing state was kept.
    #[error("reassembly buffers full")]
    Full,
}

impl RejectReason {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Inconsistent => "inconsistent",
            Self::Full => "full",
        }
    }
}

/// What [`Reassembler::insert`] did with a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// This fragment completed the message: deliver `bytes`, acknowledge.
    Complete { message: MessageId, bytes: Vec<u8> },
    /// Held; `have` of `count` fragments so far. Acknowledge.
    Pending { have: u16, count: u16 },
    /// Already held, or the message was delivered recently. Acknowledge
    /// again (the earlier ack was probably lost), deliver nothing.
    Duplicate,
    /// Refused; do not acknowledge, so the sender retransmits.
    Rejected(RejectReason),
}

struct Pending<T> {
    count: u16,
    fragments: BTreeMap<u16, Vec<u8>>,
    /// Data bytes held (for `max_message_bytes`).
    data_bytes: usize,
    /// Encoded bytes held.
    held: usize,
    /// Encoded bytes reserved: the most the message can still grow to.
    reserved: usize,
    /// Length of the non-last fragments once one arrived: `split` makes
    /// them all equal, and the last one no longer.
    body_len: Option<usize>,
    /// Length of the last fragment once it arrived.
    last_len: Option<usize>,
    /// Key in `by_progress`: when the message last gained a fragment.
    progress: (T, u64),
}

impl<T> Pending<T> {
    /// An upper bound on the encoded size of the whole message, from what
    /// is known of its fragment lengths. It only shrinks as fragments
    /// arrive (the length checks in `insert` ensure that).
    fn bound(&self, max_message_bytes: usize) -> usize {
        let n = usize::from(self.count);
        let rest = n.saturating_sub(1);
        let data = match (self.body_len, self.last_len) {
            (Some(body), Some(last)) => rest.saturating_mul(body).saturating_add(last),
            (Some(body), None) => n.saturating_mul(body),
            (None, Some(last)) => rest.saturating_mul(MAX_FRAGMENT_DATA).saturating_add(last),
            (None, None) => max_message_bytes,
        };
        data.min(max_message_bytes)
            .saturating_add(n.saturating_mul(FRAGMENT_HEADER_LEN))
    }
}

/// Reassembles messages from fragments. Sans-IO: the caller passes `now`
/// (non-decreasing) and calls [`Reassembler::expire`] periodically.
pub struct Reassembler<T> {
    limits: ReassemblyLimits,
    pending: BTreeMap<MessageId, Pending<T>>,
    /// Incomplete messages by last progress (ties by arrival sequence), so
    /// expiry is in order and deterministic.
    by_progress: BTreeMap<(T, u64), MessageId>,
    seq: u64,
    /// Sum of `Pending::reserved`: what `max_pending_bytes` bounds.
    reserved_bytes: usize,
    /// Sum of `Pending::held`.
    held_bytes: usize,
    completed: HashSet<MessageId>,
    /// Completion order, oldest first; same ids as `completed`.
    completed_order: VecDeque<(MessageId, T)>,
}

fn cost(data_len: usize) -> usize {
    FRAGMENT_HEADER_LEN.saturating_add(data_len)
}

impl<T> Reassembler<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: BTreeMap::new(),
            by_progress: BTreeMap::new(),
            seq: 0,
            reserved_bytes: 0,
            held_bytes: 0,
            completed: HashSet::new(),
            completed_order: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Incomplete messages held.
    pub fn pending_messages(&self) -> usize {
        self.pending.len()
    }

    /// Bytes reserved for incomplete messages: for each, an upper bound on
    /// its encoded size (header + data per fragment) given what has
    /// arrived. Never above `max_pending_bytes`; at least
    /// [`Reassembler::held_bytes`].
    pub fn pending_bytes(&self) -> usize {
        self.reserved_bytes
    }

    /// Bytes actually held by incomplete messages, as encoded fragments.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Completed message ids remembered for duplicate detection.
    pub fn completed_remembered(&self) -> usize {
        self.completed_order.len()
    }

    /// Takes one fragment that arrived at `now`.
    ///
    /// Room is reserved per message, not per fragment: a message is
    /// admitted (on its first fragment) only if the most it can grow to fits
    /// in `max_pending_bytes`, so a message once started never runs out of
    /// room and no set of half-finished messages can wedge the buffer.
    ///
    /// When the limits are reached the *new* message is refused and the
    /// state kept, rather than older partial messages evicted. Fragments
    /// already held were acknowledged, so their senders will not send them
    /// again: evicting them would turn overload into data loss, and would let
    /// anyone who floods fresh message ids wipe out every honest message in
    /// progress. A refused fragment is not acknowledged and comes back by
    /// retransmission, so refusing costs only latency.
    pub fn insert(&mut self, f: Fragment, now: T) -> Inserted {
        if f.count == 0 || f.index >= f.count {
            return Inserted::Rejected(RejectReason::Inconsistent);
        }
        if self.completed.contains(&f.message) {
            return Inserted::Duplicate;
        }
        let max = self.limits.max_message_bytes;
        let len = f.data.len();
        // Longer than MAX_FRAGMENT_DATA: not from `decode`, and it would
        // break the length bound that reservations rest on.
        if len > max || len > MAX_FRAGMENT_DATA {
            return Inserted::Rejected(RejectReason::TooLarge);
        }
        if !f.is_last() {
            // `split` fills every fragment but the last, which holds at least
            // one byte: the message has at least (count - 1) * len + 1 bytes.
            let least = usize::from(f.count - 1)
                .checked_mul(len)
                .and_then(|n| n.checked_add(1));
            if least.is_none_or(|n| n > max) {
                return Inserted::Rejected(RejectReason::TooLarge);
            }
        }
        if f.count == 1 {
            // Complete on its own: needs no room, so it is never `Full`.
            self.remember(f.message, now);
            return Inserted::Complete {
                message: f.message,
                bytes: f.data,
            };
        }
        let Some(p) = self.pending.get_mut(&f.message) else {
            return self.admit(f, now);
        };

        if p.count != f.count {
            return Inserted::Rejected(RejectReason::Inconsistent);
        }
        if p.fragments.contains_key(&f.index) {
            return Inserted::Duplicate;
        }
        let consistent = if f.is_last() {
            p.body_len.is_none_or(|b| len <= b)
        } else {
            p.body_len.is_none_or(|b| len == b) && p.last_len.is_none_or(|l| l <= len)
        };
        if !consistent {
            return Inserted::Rejected(RejectReason::Inconsistent);
        }
        if p.data_bytes.checked_add(len).is_none_or(|n| n > max) {
            return Inserted::Rejected(RejectReason::TooLarge);
        }

        if f.is_last() {
            p.last_len = Some(len);
        } else {
            p.body_len = Some(len);
        }
        p.fragments.insert(f.index, f.data);
        p.data_bytes += len;
        p.held += cost(len);
        self.held_bytes += cost(len);
        // The bound only shrinks; `min` keeps that true whatever happens.
        let reserved = p.bound(max).min(p.reserved);
        self.reserved_bytes -= p.reserved - reserved;
        p.reserved = reserved;
        // Progress: the message's expiry clock restarts.
        self.by_progress.remove(&p.progress);
        self.seq += 1;
        p.progress = (now, self.seq);
        self.by_progress.insert(p.progress, f.message);

        if p.fragments.len() < usize::from(p.count) {
            return Inserted::Pending {
                // Fewer than `count` (a u16) fragments are held here.
                have: u16::try_from(p.fragments.len()).unwrap_or(u16::MAX),
                count: p.count,
            };
        }
        let message = f.message;
        let Some(done) = self.remove_pending(&message) else {
            // Unreachable: `p` was just found under this id.
            return Inserted::Rejected(RejectReason::Inconsistent);
        };
        let mut bytes = Vec::with_capacity(done.data_bytes);
        for data in done.fragments.into_values() {
            bytes.extend_from_slice(&data);
        }
        self.remember(message, now);
        Inserted::Complete { message, bytes }
    }

    /// The first fragment of a multi-fragment message: admit the message
    /// whole, reserving its bound, or refuse it.
    fn admit(&mut self, f: Fragment, now: T) -> Inserted {
        if self.pending.len() >= self.limits.max_pending_messages {
            return Inserted::Rejected(RejectReason::Full);
        }
        let len = f.data.len();
        let is_last = f.is_last();
        let mut p = Pending {
            count: f.count,
            fragments: BTreeMap::new(),
            data_bytes: len,
            held: cost(len),
            reserved: 0,
            body_len: (!is_last).then_some(len),
            last_len: is_last.then_some(len),
            progress: (now, self.seq + 1),
        };
        p.reserved = p.bound(self.limits.max_message_bytes);
        let fits = self
            .reserved_bytes
            .checked_add(p.reserved)
            .is_some_and(|n| n <= self.limits.max_pending_bytes);
        if !fits {
            return Inserted::Rejected(RejectReason::Full);
        }
        self.seq += 1;
        self.reserved_bytes += p.reserved;
        self.held_bytes += p.held;
        self.by_progress.insert(p.progress, f.message);
        p.fragments.insert(f.index, f.data);
        let count = p.count;
        self.pending.insert(f.message, p);
        Inserted::Pending { have: 1, count }
    }

    /// Drops incomplete messages that gained no fragment for
    /// `incomplete_timeout` and forgets completed ids older than
    /// `completed_ttl`. Returns how many incomplete messages were dropped.
    pub fn expire(&mut self, now: T) -> usize {
        let timeout = self.limits.incomplete_timeout.min(MAX_TIMEOUT);
        let mut dropped = 0;
        while let Some((&(at, _), &id)) = self.by_progress.first_key_value() {
            if at + timeout > now {
                break;
            }
            if self.remove_pending(&id).is_some() {
                dropped += 1;
            } else {
                self.by_progress.pop_first();
            }
        }
        let ttl = self.limits.completed_ttl.min(MAX_TIMEOUT);
        while let Some(&(id, at)) = self.completed_order.front() {
            if at + ttl > now {
                break;
            }
            self.completed_order.pop_front();
            self.completed.remove(&id);
        }
        dropped
    }

    fn remove_pending(&mut self, id: &MessageId) -> Option<Pending<T>> {
        let p = self.pending.remove(id)?;
        self.by_progress.remove(&p.progress);
        self.reserved_bytes -= p.reserved;
        self.held_bytes -= p.held;
        Some(p)
    }

    fn remember(&mut self, id: MessageId, now: T) {
        if self.limits.completed_memory == 0 {
            return;
        }
        while self.completed_order.len() >= self.limits.completed_memory {
            if let Some((old, _)) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
        // A remembered id never completes again, so it is not in the queue.
        if self.completed.insert(id) {
            self.completed_order.push_back((id, now));
        }
    }

    /// Recomputes every counter from scratch and checks the limits.
    #[cfg(test)]
    fn check_invariants(&self) {
        let (mut held, mut reserved) = (0, 0);
        for (id, p) in &self.pending {
            let data: usize = p.fragments.values().map(Vec::len).sum();
            let c: usize = p.fragments.values().map(|d| cost(d.len())).sum();
            assert_eq!(p.data_bytes, data);
            assert_eq!(p.held, c);
            assert!(p.held <= p.reserved, "holds more than it reserved");
            // Bounds only shrink, so the reservation is the current bound.
            assert_eq!(p.reserved, p.bound(self.limits.max_message_bytes));
            assert!(p.data_bytes <= self.limits.max_message_bytes);
            assert!(!p.fragments.is_empty() && p.fragments.len() < usize::from(p.count));
            assert_eq!(self.by_progress.get(&p.progress), Some(id));
            held += c;
            reserved += p.reserved;
        }
        assert_eq!(self.by_progress.len(), self.pending.len());
        assert_eq!(self.held_bytes, held);
        assert_eq!(self.reserved_bytes, reserved);
        assert!(self.reserved_bytes <= self.limits.max_pending_bytes);
        assert!(self.pending.len() <= self.limits.max_pending_messages);
        assert_eq!(self.completed.len(), self.completed_order.len());
        assert!(self.completed.len() <= self.limits.completed_memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::fragment::split;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn frag(id: u8, index: u16, count: u16, data: &[u8]) -> Fragment {
        Fragment {
            message: [id; 16],
            index,
            count,
            data: data.to_vec(),
        }
    }

    fn big() -> ReassemblyLimits {
        ReassemblyLimits {
            max_message_bytes: 1 << 20,
            max_pending_messages: 1000,
            max_pending_bytes: 1 << 24,
            incomplete_timeout: 10 * S,
            completed_memory: 1000,
            completed_ttl: 10 * S,
        }
    }

    #[test]
    fn reassembles_out_of_order_and_discards_duplicates() {
        let mut r = Reassembler::new(big());
        let t = Duration::ZERO;
        assert_eq!(
            r.insert(frag(1, 2, 3, b"c"), t),
            Inserted::Pending { have: 1, count: 3 }
        );
        assert_eq!(r.insert(frag(1, 2, 3, b"c"), t), Inserted::Duplicate);
        assert_eq!(
            r.insert(frag(1, 0, 3, b"aa"), t),
            Inserted::Pending { have: 2, count: 3 }
        );
        assert_eq!(r.pending_messages(), 1);
        assert_eq!(r.held_bytes(), 2 * FRAGMENT_HEADER_LEN + 3);
        // Body fragments are 2 bytes, the last 1: 5 bytes in 3 fragments.
        assert_eq!(r.pending_bytes(), 3 * FRAGMENT_HEADER_LEN + 5);
        assert_eq!(
            r.insert(frag(1, 1, 3, b"bb"), t),
            Inserted::Complete {
                message: [1; 16],
                bytes: b"aabbc".to_vec()
            }
        );
        assert_eq!(r.pending_messages(), 0);
        assert_eq!(r.pending_bytes(), 0);
        // A retransmission of a delivered message is a duplicate, not a
        // second delivery.
        assert_eq!(r.insert(frag(1, 1, 3, b"bb"), t), Inserted::Duplicate);
        assert_eq!(r.pending_messages(), 0);
        r.check_invariants();
    }

    #[test]
    fn single_fragment_and_empty_messages() {
        let mut r = Reassembler::new(big());
        assert_eq!(
            r.insert(frag(1, 0, 1, b""), S),
            Inserted::Complete {
                message: [1; 16],
                bytes: vec![]
            }
        );
        assert_eq!(r.insert(frag(1, 0, 1, b""), S), Inserted::Duplicate);
        assert_eq!(r.completed_remembered(), 1);
    }

    #[test]
    fn completed_ids_are_forgotten_after_ttl_and_beyond_memory() {
        let mut r = Reassembler::new(ReassemblyLimits {
            completed_memory: 2,
            ..big()
        });
        for id in 1..=3 {
            assert!(matches!(
                r.insert(frag(id, 0, 1, b"x"), S),
                Inserted::Complete { .. }
            ));
        }
        assert_eq!(r.completed_remembered(), 2);
        // The oldest id was forgotten to make room: delivered again.
        assert!(matches!(
            r.insert(frag(1, 0, 1, b"x"), S),
            Inserted::Complete { .. }
        ));
        assert_eq!(r.insert(frag(3, 0, 1, b"x"), S), Inserted::Duplicate);
        r.expire(S + 10 * S);
        assert_eq!(r.completed_remembered(), 0);
        assert!(matches!(
            r.insert(frag(3, 0, 1, b"x"), 20 * S),
            Inserted::Complete { .. }
        ));
        r.check_invariants();
    }

    #[test]
    fn rejects_inconsistent_fragments() {
        let mut r = Reassembler::new(big());
        let inconsistent = Inserted::Rejected(RejectReason::Inconsistent);
        assert_eq!(r.insert(frag(1, 0, 0, b""), S), inconsistent);
        assert_eq!(r.insert(frag(1, 3, 3, b""), S), inconsistent);
        assert!(matches!(
            r.insert(frag(1, 0, 3, b"aaaa"), S),
            Inserted::Pending { .. }
        ));
        // Another count under the same id.
        assert_eq!(r.insert(frag(1, 1, 4, b"aaaa"), S), inconsistent);
        // Body fragments of different lengths.
        assert_eq!(r.insert(frag(1, 1, 3, b"aaa"), S), inconsistent);
        // A last fragment longer than the body.
        assert_eq!(r.insert(frag(1, 2, 3, b"aaaaa"), S), inconsistent);
        assert_eq!(
            r.insert(frag(2, 2, 3, b"aa"), S),
            Inserted::Pending { have: 1, count: 3 }
        );
        // A body fragment shorter than the last one already held.
        assert_eq!(r.insert(frag(2, 0, 3, b"a"), S), inconsistent);
        assert_eq!(RejectReason::Inconsistent.label(), "inconsistent");
        r.check_invariants();
    }

    #[test]
    fn rejects_too_large() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_message_bytes: 10,
            ..big()
        });
        let too_large = Inserted::Rejected(RejectReason::TooLarge);
        assert_eq!(r.insert(frag(1, 0, 1, &[0; 11]), S), too_large);
        // Three full 5-byte fragments and a last one: at least 16 bytes.
        assert_eq!(r.insert(frag(1, 0, 4, &[0; 5]), S), too_large);
        // 2 × 5 + 1 > 10 too: a 10-byte message splits into exactly two.
        assert_eq!(r.insert(frag(1, 0, 3, &[0; 5]), S), too_large);
        assert!(matches!(
            r.insert(frag(1, 0, 2, &[0; 5]), S),
            Inserted::Pending { .. }
        ));
        assert!(matches!(
            r.insert(frag(1, 1, 2, &[0; 5]), S),
            Inserted::Complete { .. }
        ));
        // Only last fragments seen: the sum is what exceeds.
        assert!(matches!(
            r.insert(frag(2, 0, 2, &[]), S),
            Inserted::Pending { .. }
        ));
        assert!(matches!(
            r.insert(frag(3, 1, 2, &[0; 10]), S),
            Inserted::Pending { .. }
        ));
        assert_eq!(r.insert(frag(3, 0, 2, &[0; 10]), S), too_large);
        assert_eq!(RejectReason::TooLarge.label(), "too_large");
        r.check_invariants();
    }

    #[test]
    fn full_refuses_new_and_keeps_existing() {
        let h = FRAGMENT_HEADER_LEN;
        let mut r = Reassembler::new(ReassemblyLimits {
            max_message_bytes: 20,
            max_pending_messages: 3,
            max_pending_bytes: 140,
            ..big()
        });
        let full = Inserted::Rejected(RejectReason::Full);
        // Body first: the message is at most 2 × 4 bytes.
        assert!(matches!(
            r.insert(frag(1, 0, 2, b"aaaa"), S),
            Inserted::Pending { .. }
        ));
        assert_eq!(r.pending_bytes(), 2 * h + 8);
        // Last first: the body length is unknown, reserve up to the limit.
        assert!(matches!(
            r.insert(frag(2, 2, 3, b"bb"), S),
            Inserted::Pending { .. }
        ));
        assert_eq!(r.pending_bytes(), 2 * h + 8 + 3 * h + 20);
        // A third message does not fit: refused, the two held untouched.
        assert_eq!(r.insert(frag(3, 0, 2, b"cccc"), S), full);
        assert_eq!(r.pending_messages(), 2);
        // Learning the body length shrinks the reservation (to 4 + 4 + 2)…
        assert!(matches!(
            r.insert(frag(2, 0, 3, b"bbbb"), S),
            Inserted::Pending { .. }
        ));
        assert_eq!(r.pending_bytes(), 2 * h + 8 + 3 * h + 10);
        assert_eq!(r.held_bytes(), 3 * h + 10);
        // …but not enough for message 3 yet.
        assert_eq!(r.insert(frag(3, 0, 2, b"cccc"), S), full);
        // Duplicates are still recognised when full, so they are acked,
        assert_eq!(r.insert(frag(2, 0, 3, b"bbbb"), S), Inserted::Duplicate);
        // single-fragment messages need no room,
        assert!(matches!(
            r.insert(frag(4, 0, 1, b"dddd"), S),
            Inserted::Complete { .. }
        ));
        // and admitted messages always have room to finish.
        assert_eq!(
            r.insert(frag(2, 1, 3, b"bbbb"), S),
            Inserted::Complete {
                message: [2; 16],
                bytes: b"bbbbbbbbbb".to_vec()
            }
        );
        assert!(matches!(
            r.insert(frag(3, 0, 2, b"cccc"), S),
            Inserted::Pending { .. }
        ));
        // 104 reserved: an empty two-fragment message (44) does not fit.
        assert_eq!(r.insert(frag(5, 0, 2, b""), S), full);
        assert_eq!(RejectReason::Full.label(), "full");
        r.check_invariants();
        assert_eq!(r.expire(S + 10 * S), 2);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.held_bytes(), 0);
        r.check_invariants();
    }

    #[test]
    fn full_by_message_count() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_pending_messages: 1,
            ..big()
        });
        assert!(matches!(
            r.insert(frag(1, 0, 2, b"a"), S),
            Inserted::Pending { .. }
        ));
        assert_eq!(
            r.insert(frag(2, 0, 2, b"a"), S),
            Inserted::Rejected(RejectReason::Full)
        );
        assert!(matches!(
            r.insert(frag(1, 1, 2, b"a"), S),
            Inserted::Complete { .. }
        ));
        assert!(matches!(
            r.insert(frag(2, 0, 2, b"a"), S),
            Inserted::Pending { .. }
        ));
    }

    #[test]
    fn expiry_counts_from_last_progress() {
        let mut r = Reassembler::new(big());
        assert!(matches!(
            r.insert(frag(1, 0, 3, b"a"), Duration::ZERO),
            Inserted::Pending { .. }
        ));
        assert!(matches!(
            r.insert(frag(2, 0, 3, b"a"), 2 * S),
            Inserted::Pending { .. }
        ));
        // Message 1 makes progress at 5 s: its clock restarts.
        assert!(matches!(
            r.insert(frag(1, 1, 3, b"a"), 5 * S),
            Inserted::Pending { .. }
        ));
        assert_eq!(r.expire(11 * S), 0);
        assert_eq!(r.expire(12 * S), 1, "message 2 expires 10 s after 2 s");
        assert_eq!(r.pending_messages(), 1);
        // A duplicate is not progress.
        assert_eq!(r.insert(frag(1, 1, 3, b"a"), 14 * S), Inserted::Duplicate);
        assert_eq!(r.expire(15 * S), 1);
        assert_eq!(r.pending_messages(), 0);
        assert_eq!(r.pending_bytes(), 0);
        // An expired message starts over if its fragments come back.
        assert_eq!(
            r.insert(frag(1, 1, 3, b"a"), 16 * S),
            Inserted::Pending { have: 1, count: 3 }
        );
        r.check_invariants();
    }

    #[test]
    fn huge_timeouts_do_not_overflow_instant() {
        let mut r = Reassembler::new(ReassemblyLimits {
            incomplete_timeout: Duration::MAX,
            completed_ttl: Duration::MAX,
            ..big()
        });
        let now = std::time::Instant::now();
        assert!(matches!(
            r.insert(frag(1, 0, 2, b"a"), now),
            Inserted::Pending { .. }
        ));
        assert!(matches!(
            r.insert(frag(2, 0, 1, b"a"), now),
            Inserted::Complete { .. }
        ));
        assert_eq!(r.expire(now + S), 0);
        assert_eq!(r.completed_remembered(), 1);
    }

    #[test]
    fn default_limits_hold_a_maximal_message() {
        let limits = ReassemblyLimits::default();
        let data = 985; // default 1024-byte payload, less Sphinx and header
        let msg = vec![3u8; limits.max_message_bytes];
        let frags = split([1; 16], &msg, data, u16::MAX).unwrap();
        let mut r = Reassembler::new(limits);
        let mut out = None;
        for f in frags {
            if let Inserted::Complete { bytes, .. } = r.insert(f, S) {
                out = Some(bytes);
            }
        }
        assert_eq!(out, Some(msg));
    }

    fn shuffled_with_duplicates() -> impl Strategy<Value = (Vec<u8>, usize, Vec<Fragment>)> {
        (proptest::collection::vec(any::<u8>(), 0..4000), 1usize..300)
            .prop_flat_map(|(bytes, size)| {
                let frags = split([9; 16], &bytes, size, u16::MAX).unwrap();
                let n = frags.len();
                let dups = proptest::collection::vec(0..n, 0..=n);
                (Just(bytes), Just(size), Just(frags), dups)
            })
            .prop_flat_map(|(bytes, size, frags, dups)| {
                let mut all = frags.clone();
                all.extend(dups.iter().map(|&i| frags[i].clone()));
                (Just(bytes), Just(size), Just(all).prop_shuffle())
            })
    }

    /// One step of an arbitrary (hostile) fragment stream.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(Fragment),
        Wait(u64),
        Expire,
    }

    fn step() -> impl Strategy<Value = Step> {
        // Mostly well-formed messages (a few ids, each with a fixed count and
        // body length, so they can complete), mixed with arbitrary ones.
        let fragment =
            (0u8..12, any::<u16>(), 0usize..40, 0u8..10).prop_map(|(id, index, len, kind)| {
                let (count, len) = match kind {
                    0..=6 => {
                        let count = u16::from(id % 4) + 1;
                        let body = usize::from(id) * 3;
                        let last = index % count == count - 1;
                        (count, if last { body / 2 } else { body })
                    }
                    _ => (u16::from(id % 7) + 1, len),
                };
                Fragment {
                    message: [id; 16],
                    index: index % (count + 1), // sometimes out of range
                    count,
                    data: vec![id; len],
                }
            });
        prop_oneof![
            8 => fragment.prop_map(Step::Insert),
            1 => (0u64..4).prop_map(Step::Wait),
            1 => Just(Step::Expire),
        ]
    }

    proptest! {
        /// (a) Split, duplicate some, shuffle, insert: exactly one `Complete`
        /// with the original bytes; every other answer is `Pending` or
        /// `Duplicate`.
        #[test]
        fn reassembles_any_order_exactly_once((bytes, _size, frags) in shuffled_with_duplicates()) {
            let mut r = Reassembler::new(big());
            let mut completed = Vec::new();
            for f in frags {
                match r.insert(f, S) {
                    Inserted::Complete { message, bytes } => completed.push((message, bytes)),
                    Inserted::Pending { .. } | Inserted::Duplicate => {}
                    Inserted::Rejected(why) => prop_assert!(false, "rejected: {why}"),
                }
            }
            prop_assert_eq!(completed, vec![([9; 16], bytes)]);
            prop_assert_eq!(r.pending_messages(), 0);
            prop_assert_eq!(r.pending_bytes(), 0);
        }

        /// (c) Whatever arrives, the state stays within the limits (and
        /// every counter matches a recount, and nothing held exceeds what
        /// was reserved for it).
        #[test]
        fn memory_stays_within_limits(
            steps in proptest::collection::vec(step(), 0..300),
            max_pending_messages in 0usize..8,
            max_pending_bytes in 0usize..600,
            max_message_bytes in 0usize..200,
            completed_memory in 0usize..5,
        ) {
            let mut r = Reassembler::new(ReassemblyLimits {
                max_message_bytes,
                max_pending_messages,
                max_pending_bytes,
                incomplete_timeout: 5 * S,
                completed_memory,
                completed_ttl: 3 * S,
            });
            let mut now = Duration::ZERO;
            for s in steps {
                match s {
                    Step::Insert(f) => {
                        if let Inserted::Complete { bytes, .. } = r.insert(f, now) {
                            prop_assert!(bytes.len() <= max_message_bytes);
                        }
                    }
                    Step::Wait(secs) => now += Duration::from_secs(secs),
                    Step::Expire => {
                        r.expire(now);
                    }
                }
                prop_assert!(r.pending_bytes() <= max_pending_bytes);
                prop_assert!(r.pending_messages() <= max_pending_messages);
                prop_assert!(r.completed_remembered() <= completed_memory);
                r.check_invariants();
            }
        }
    }
}
