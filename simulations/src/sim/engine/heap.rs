//! A four-ary heap on virtual time: the simulated pools' [`DeadlineQueue`].
//!
//! Why not the core's [`DelayQueue`](loopmix_core::mixing::delay_queue::DelayQueue):
//! a Nym-scale run pushes and pops hundreds of millions of packets, and a
//! binary heap of generic entries pays two comparisons and an unpredictable
//! branch per level. Here an entry is 16 bytes whose order is one integer
//! comparison, (deadline, insertion number), and a node has four children
//! (a cache line), so a pop goes half as deep and picks the smallest child
//! without branching. (A radix heap was tried: its bucket moves cost more
//! than they save at pool sizes of hundreds.)
//!
//! The order is exactly the core queue's: deadline, then insertion. The
//! insertion number is 32 bits beside the 32-bit item; when it would wrap
//! (after four billion pushes into one pool) the held entries are
//! renumbered in their order, which changes nothing.

use loopmix_core::mixing::delay_queue::DeadlineQueue;

use super::SimTime;

/// Children per node.
const D: usize = 4;

/// (deadline, insertion number << 32 | item): ordered as one `u128`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    deadline: u64,
    seq_item: u64,
}

impl Entry {
    fn key(self) -> u128 {
        (u128::from(self.deadline) << 64) | u128::from(self.seq_item)
    }
    fn item(self) -> u32 {
        self.seq_item as u32
    }
}

pub struct HeapQueue {
    heap: Vec<Entry>,
    /// The next insertion number.
    seq: u32,
    limit: usize,
}

impl HeapQueue {
    /// A queue holding at most `limit` items.
    pub fn new(limit: usize) -> Self {
        Self {
            heap: Vec::new(),
            seq: 0,
            limit,
        }
    }

    /// Reads every entry in order: a pool is used once per slice of the
    /// run, and by then its heap has left the cache; a stream of reads
    /// costs less than a miss at each level of each pop.
    pub fn warm(&self) {
        let acc = self.heap.iter().fold(0u64, |a, e| a ^ e.deadline);
        std::hint::black_box(acc);
    }

    /// Renumbers the held entries 0, 1, … in their order, so insertion
    /// numbers can start again above them.
    fn renumber(&mut self) {
        self.heap.sort_unstable_by_key(|e| e.key());
        for (n, e) in self.heap.iter_mut().enumerate() {
            e.seq_item = ((n as u64) << 32) | u64::from(e.item());
        }
        // A sorted array is a heap.
        self.seq = self.heap.len() as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        let Some(&e) = self.heap.get(i) else {
            return;
        };
        let key = e.key();
        while i > 0 {
            let parent = (i - 1) / D;
            let p = self.heap[parent];
            if p.key() <= key {
                break;
            }
            self.heap[i] = p;
            i = parent;
        }
        self.heap[i] = e;
    }

    /// Fills the hole at the root with `e`: the hole goes down to a leaf
    /// along the smallest children, then `e` goes up from there (it came
    /// from the bottom, so it rarely goes far). Unlike stopping where `e`
    /// fits, this has no hard-to-predict branch per level.
    fn sift_down_from_root(&mut self, e: Entry) {
        let n = self.heap.len();
        let mut i = 0;
        loop {
            let first = i * D + 1;
            let best = if first + D <= n {
                let k = |c: usize| self.heap[c].key();
                let (a, ka) = pick(first, k(first), first + 1, k(first + 1));
                let (b, kb) = pick(first + 2, k(first + 2), first + 3, k(first + 3));
                pick(a, ka, b, kb).0
            } else if first < n {
                (first + 1..n).fold(first, |b, c| {
                    if self.heap[c].key() < self.heap[b].key() {
                        c
                    } else {
                        b
                    }
                })
            } else {
                break;
            };
            self.heap[i] = self.heap[best];
            i = best;
        }
        self.heap[i] = e;
        self.sift_up(i);
    }
}

/// The smaller of two keyed children (the first on a tie, which cannot
/// happen: keys are unique), as a select rather than a branch.
#[inline(always)]
fn pick(a: usize, ka: u128, b: usize, kb: u128) -> (usize, u128) {
    let less = kb < ka;
    (if less { b } else { a }, if less { kb } else { ka })
}

impl DeadlineQueue<SimTime, u32> for HeapQueue {
    fn len(&self) -> usize {
        self.heap.len()
    }

    fn push(&mut self, deadline: SimTime, item: u32) -> Result<(), u32> {
        if self.heap.len() >= self.limit {
            return Err(item);
        }
        if self.seq == u32::MAX {
            self.renumber();
        }
        self.heap.push(Entry {
            deadline: deadline.0,
            seq_item: (u64::from(self.seq) << 32) | u64::from(item),
        });
        self.seq += 1;
        self.sift_up(self.heap.len() - 1);
        Ok(())
    }

    fn next_deadline(&self) -> Option<SimTime> {
        self.heap.first().map(|e| SimTime(e.deadline))
    }

    fn pop_due(&mut self, now: SimTime) -> Option<(SimTime, u32)> {
        let top = *self.heap.first().filter(|e| e.deadline <= now.0)?;
        let last = self.heap.pop()?;
        if !self.heap.is_empty() {
            self.sift_down_from_root(last);
        }
        Some((SimTime(top.deadline), top.item()))
    }

    fn drain_all(&mut self) -> Vec<(SimTime, u32)> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(e) = self.pop_due(SimTime(u64::MAX)) {
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loopmix_core::mixing::delay_queue::DelayQueue;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Against the core's queue, on workloads like a mix's (deadlines past
    /// the clock, with many ties) and unlike one (pushes into the past):
    /// the same items in the same order, the same refusals at the limit.
    #[test]
    fn pops_exactly_what_the_delay_queue_pops() {
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let limit = if seed % 5 == 0 { 7 } else { usize::MAX };
            let spread: u64 = [4, 1 << 10, 1 << 40][seed as usize % 3];
            let mut want: DelayQueue<SimTime, u32> = DelayQueue::new(limit);
            let mut got = HeapQueue::new(limit);
            // Some runs cross the insertion numbers' wrap.
            if seed % 4 == 1 {
                got.seq = u32::MAX - 300;
            }
            let mut now = 0u64;
            for item in 0..2_000u32 {
                match rng.random_range(0..10) {
                    0..5 => {
                        let ahead = rng.random_range(0..spread);
                        // One push in fifty goes below the clock.
                        let d = if rng.random_range(0..50) == 0 {
                            now.saturating_sub(ahead)
                        } else {
                            now + ahead
                        };
                        assert_eq!(
                            got.push(SimTime(d), item),
                            want.push(SimTime(d), item),
                            "seed {seed}"
                        );
                    }
                    5..9 => {
                        now += rng.random_range(0..spread / 2 + 1);
                        while let Some(w) = want.pop_due(SimTime(now)) {
                            assert_eq!(got.pop_due(SimTime(now)), Some(w), "seed {seed}");
                        }
                        assert_eq!(got.pop_due(SimTime(now)), None);
                    }
                    _ => {}
                }
                assert_eq!(got.len(), want.len());
                assert_eq!(got.next_deadline(), want.next_deadline(), "seed {seed}");
            }
            assert_eq!(got.drain_all(), want.drain_all());
            assert!(got.is_empty());
        }
    }
}
