//! The two bounded, expiring stores of reply state:
//!
//! * [`ReplyKeys`] (sender side): for every reply block we handed out, the
//!   identifier its reply will arrive with and the key to open it. Single
//!   use: forgotten once a reply opened with it.
//! * [`HeldBlocks`] (recipient side): reply blocks that came with received
//!   messages, behind opaque [`ReplyHandle`]s. Blocks leave the store when a
//!   reply takes them, so none is used twice.
//!
//! * [`Recoveries`] (sender side): the [`ReplyRecovery`] of every SURB-ACK
//!   and loop we sent, by the identifier the sealed answer arrives with (a
//!   reply block's recovery lives in its [`ReplyKey`]). Single use.
//!
//! All evict the oldest entry when full and drop entries older than a TTL
//! (a reply block is useless after its sender forgot the key, and after its
//! key epoch ended anyway).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::e2e::{REPLY_KEY_LEN, ReplyBlock, ReplyRecovery};
use crate::keys::NodeId;

use super::build::RouteIds;

pub use crate::stream_frame::BlockTag;

/// The tag of the block whose reply key is `key`.
pub fn block_tag(key: &[u8; REPLY_KEY_LEN]) -> BlockTag {
    let mut t = [0; 8];
    t.copy_from_slice(&key[..8]);
    t
}

/// An insertion-ordered map with a size limit and a time to live. Removing
/// an entry leaves a stale line in `order`, compacted when `order` grows
/// past twice the limit, so memory stays bounded.
struct Expiring<K, V> {
    map: HashMap<K, (V, Instant)>,
    order: VecDeque<(K, Instant)>,
    limit: usize,
    ttl: Duration,
}

impl<K: Copy + Eq + Hash, V> Expiring<K, V> {
    fn new(limit: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            limit: limit.max(1),
            ttl,
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// Inserts, evicting the oldest entries to stay within the limit.
    /// Returns how many were evicted.
    fn insert(&mut self, k: K, v: V, now: Instant) -> usize {
        let mut evicted = 0;
        while self.map.len() >= self.limit {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&old);
                evicted += 1;
            }
        }
        self.map.insert(k, (v, now));
        self.order.push_back((k, now));
        if self.order.len() > self.limit.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, at)| map.get(k).is_some_and(|(_, t)| t == at));
        }
        evicted
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    /// Drops entries inserted `ttl` or longer before `now`; how many.
    fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(k, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&k);
                n += 1;
            }
        }
        n
    }
}

/// What we remember of a reply block we handed out.
pub(super) struct ReplyKey {
    pub key: [u8; REPLY_KEY_LEN],
    /// Opens the sealed payload the block's use delivers.
    pub recovery: ReplyRecovery,
    /// The mixes its route crosses, to revoke it if one goes down.
    pub mixes: RouteIds,
    /// Whom we gave it to (the recipient's identity).
    pub holder: NodeId,
    /// Already named in a revocation.
    pub revoked: bool,
}

/// Reply keys by the identifier their reply arrives with.
pub(super) struct ReplyKeys(Expiring<[u8; 16], ReplyKey>);

impl ReplyKeys {
    pub fn new(limit: usize, ttl: Duration) -> Self {
        Self(Expiring::new(limit, ttl))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn insert(&mut self, id: [u8; 16], key: ReplyKey, now: Instant) -> usize {
        self.0.insert(id, key, now)
    }

    pub fn get(&self, id: &[u8; 16]) -> Option<&[u8; REPLY_KEY_LEN]> {
        self.0.get(id).map(|k| &k.key)
    }

    pub fn recovery(&self, id: &[u8; 16]) -> Option<&ReplyRecovery> {
        self.0.get(id).map(|k| &k.recovery)
    }

    pub fn remove(&mut self, id: &[u8; 16]) {
        if let Some(mut k) = self.0.remove(id) {
            k.key.fill(0);
        }
    }

    /// Marks every unrevoked block whose route crosses a node in `down` as
    /// revoked and returns `(holder, tag)` for each: the holder must be
    /// told not to use it. The key stays until it expires, in case the
    /// holder used the block before it heard.
    pub fn revoke_crossing(&mut self, down: &BTreeSet<NodeId>) -> Vec<(NodeId, BlockTag)> {
        let mut out = Vec::new();
        for (k, _) in self.0.map.values_mut() {
            if !k.revoked && k.mixes.iter().any(|m| down.contains(m)) {
                k.revoked = true;
                out.push((k.holder, block_tag(&k.key)));
            }
        }
        out
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        self.0.expire(now)
    }

    #[cfg(test)]
    pub fn ids(&self) -> Vec<[u8; 16]> {
        self.0.map.keys().copied().collect()
    }
}

/// What a sealed inbox item answers, by which store held its recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SealedKind {
    Ack,
    Loop,
    Reply,
}

/// How long the recovery of a SURB-ACK is kept: well past any ack timeout
/// (an ack that late only confirms a fragment already sent again).
pub(super) const ACK_RECOVERY_TTL: Duration = Duration::from_secs(600);

/// The recoveries of our SURB-ACKs and loops. Two stores, so a burst of
/// one kind never evicts the other.
pub(super) struct Recoveries {
    acks: Expiring<[u8; 16], ReplyRecovery>,
    loops: Expiring<[u8; 16], ReplyRecovery>,
}

impl Recoveries {
    pub fn new(ack_limit: usize, loop_limit: usize, loop_ttl: Duration) -> Self {
        Self {
            acks: Expiring::new(ack_limit, ACK_RECOVERY_TTL),
            loops: Expiring::new(loop_limit, loop_ttl),
        }
    }

    pub fn ack_sent(&mut self, id: [u8; 16], r: ReplyRecovery, now: Instant) {
        self.acks.insert(id, r, now);
    }

    pub fn loop_sent(&mut self, id: [u8; 16], r: ReplyRecovery, now: Instant) {
        self.loops.insert(id, r, now);
    }

    pub fn get(&self, id: &[u8; 16]) -> Option<(SealedKind, &ReplyRecovery)> {
        let ack = self.acks.get(id).map(|r| (SealedKind::Ack, r));
        ack.or_else(|| self.loops.get(id).map(|r| (SealedKind::Loop, r)))
    }

    /// Forgets the recovery of `id` once it opened its answer.
    pub fn used(&mut self, kind: SealedKind, id: &[u8; 16]) {
        match kind {
            SealedKind::Ack => drop(self.acks.remove(id)),
            SealedKind::Loop => drop(self.loops.remove(id)),
            SealedKind::Reply => {}
        }
    }

    pub fn len(&self) -> usize {
        self.acks.len() + self.loops.len()
    }

    #[cfg(test)]
    pub fn acks_ids(&self) -> Vec<[u8; 16]> {
        self.acks.map.keys().copied().collect()
    }

    pub fn expire(&mut self, now: Instant) {
        self.acks.expire(now);
        self.loops.expire(now);
    }
}

/// An opaque, copyable token for the reply blocks of one received message.
/// It names an entry in the engine that received the message and nothing
/// else: no address, no route, no key. Blocks are taken out of the engine
/// when a reply uses them, so copying the handle never lets a block be used
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyHandle(pub(super) u64);

/// Reply blocks behind handles.
pub(super) struct HeldBlocks {
    store: Expiring<u64, Vec<ReplyBlock>>,
    next: u64,
}

impl HeldBlocks {
    pub fn new(limit: usize, ttl: Duration) -> Self {
        Self {
            store: Expiring::new(limit, ttl),
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn insert(&mut self, blocks: Vec<ReplyBlock>, now: Instant) -> ReplyHandle {
        self.next = self.next.wrapping_add(1);
        self.store.insert(self.next, blocks, now);
        ReplyHandle(self.next)
    }

    pub fn blocks(&self, h: &ReplyHandle) -> Option<&[ReplyBlock]> {
        self.store.get(&h.0).map(Vec::as_slice)
    }

    /// Keeps only the blocks for which `usable` holds; how many are left.
    pub fn retain(&mut self, h: &ReplyHandle, usable: impl FnMut(&ReplyBlock) -> bool) -> usize {
        let Some(blocks) = self.store.get_mut(&h.0) else {
            return 0;
        };
        blocks.retain(usable);
        let left = blocks.len();
        if left == 0 {
            self.store.remove(&h.0);
        }
        left
    }

    /// Takes `n` blocks (the caller checked there are that many).
    pub fn take(&mut self, h: &ReplyHandle, n: usize) -> Vec<ReplyBlock> {
        let Some(blocks) = self.store.get_mut(&h.0) else {
            return Vec::new();
        };
        let taken: Vec<ReplyBlock> = blocks.drain(..n.min(blocks.len())).collect();
        if blocks.is_empty() {
            self.store.remove(&h.0);
        }
        taken
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        self.store.expire(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_crossing_a_down_mix_are_revoked_once() {
        let t0 = Instant::now();
        let (m1, m2, m3) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let (exit, other) = (NodeId([8; 32]), NodeId([9; 32]));
        let mut k = ReplyKeys::new(10, Duration::from_secs(60));
        let entry = |key: u8, mixes: Vec<NodeId>, holder| ReplyKey {
            key: [key; REPLY_KEY_LEN],
            recovery: ReplyRecovery::for_tests(),
            mixes: mixes.into(),
            holder,
            revoked: false,
        };
        k.insert([1; 16], entry(1, vec![m1, m2], exit), t0);
        k.insert([2; 16], entry(2, vec![m1, m3], exit), t0);
        k.insert([3; 16], entry(3, vec![m2, m3], other), t0);
        let mut got = k.revoke_crossing(&BTreeSet::from([m2]));
        got.sort();
        assert_eq!(got, vec![(exit, [1; 8]), (other, [3; 8])]);
        assert!(k.revoke_crossing(&BTreeSet::from([m2])).is_empty(), "once");
        // The key stays: a reply sent before the holder heard still opens.
        assert!(k.get(&[1; 16]).is_some());
    }

    #[test]
    fn expiring_is_bounded_and_expires_in_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut e: Expiring<u32, u32> = Expiring::new(3, 10 * s);
        for i in 0..3 {
            assert_eq!(e.insert(i, i, t0 + i * s), 0);
        }
        assert_eq!(e.insert(3, 3, t0 + 3 * s), 1, "the oldest is evicted");
        assert!(e.get(&0).is_none() && e.get(&3).is_some());
        assert_eq!(e.remove(&3), Some(3));
        // Used entries leave stale order lines; they stay bounded.
        for i in 10..1000 {
            assert_eq!(e.insert(i, i, t0 + 4 * s), 0);
            e.remove(&i);
        }
        assert!(e.order.len() <= 7, "{}", e.order.len());
        assert_eq!(e.expire(t0 + 11 * s), 1, "entry 1, inserted at 1 s");
        assert_eq!(e.expire(t0 + 14 * s), 1, "entry 2");
        assert_eq!(e.len(), 0);
        // Re-inserting a key restarts its clock.
        e.insert(7, 1, t0);
        e.insert(7, 2, t0 + 5 * s);
        assert_eq!(e.expire(t0 + 12 * s), 0);
        assert_eq!(e.get(&7), Some(&2));
        assert_eq!(e.expire(t0 + 15 * s), 1);
    }
}
