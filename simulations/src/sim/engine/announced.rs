//! The pipeline's pool queue: a [`DeadlineQueue`] whose pushes are
//! announced a slice at a time, so it sorts once per slice instead of
//! paying a heap operation per push and per pop.
//!
//! Why a pipeline stage can announce them: it knows, at the start of a
//! slice, every packet that will arrive at its node before the slice ends,
//! in the order it will hand them to the pool, and each packet's deadline
//! (arrival plus the delay its sender chose). A packet with no delay leaves
//! at once and is not announced.
//!
//! Why the order is exactly the core [`DelayQueue`]'s (deadline, then
//! insertion): the held packets of earlier slices were inserted before any
//! of this slice's, so on equal deadlines they go first; among this slice's,
//! insertion order is announcement order. The queue merges the two into one
//! sorted run and pops from its front.
//!
//! Why an announced but not yet pushed entry never leaves early: its
//! deadline is after its arrival, and a stage takes arrivals in time order,
//! so by the time the clock reaches that deadline the packet has been
//! pushed. [`DeadlineQueue::next_deadline`] may name such an entry; a stage
//! compares it with its next arrival, which comes first. If a driver breaks
//! the contract (pushes what it did not announce, or leaves an announced
//! push out), the queue refuses and remembers it: [`AnnouncedQueue::broken`].
//!
//! [`DelayQueue`]: loopmix_core::mixing::delay_queue::DelayQueue

use loopmix_core::mixing::delay_queue::DeadlineQueue;

use super::SimTime;

/// An entry of the sorted run; `item` is [`NOT_PUSHED`] until its push.
#[derive(Clone, Copy, Debug)]
struct Slot {
    deadline: u64,
    item: u32,
}

const NOT_PUSHED: u32 = u32::MAX;

/// An unbounded pool queue for a driver that announces each slice's pushes.
#[derive(Default)]
pub struct AnnouncedQueue {
    /// Held and announced entries in (deadline, insertion) order, from `head`.
    run: Vec<Slot>,
    head: usize,
    /// Where the k-th announced push of this slice sits in `run`.
    at: Vec<u32>,
    /// Announced pushes made so far.
    pushed: usize,
    /// Items held: pushed and not popped.
    len: usize,
    broken: bool,
    /// Working space, kept so that memory is allocated once.
    keys: Vec<u64>,
    merged: Vec<Slot>,
}

impl AnnouncedQueue {
    /// The driver broke the contract (see the module doc) since the last
    /// [`Self::announce`]: the run is not what the core queue would do.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// The pushes of the next slice, in the order they will come, by
    /// deadline. Every push announced before must have been made.
    pub fn announce(&mut self, deadlines: impl Iterator<Item = u64>) {
        if self.pushed != self.at.len() {
            self.broken = true;
        }
        self.keys.clear();
        self.at.clear();
        self.pushed = 0;
        let mut lo = u64::MAX;
        let mut hi = 0;
        self.keys.extend(deadlines.inspect(|&d| {
            lo = lo.min(d);
            hi = hi.max(d);
        }));
        let n = self.keys.len() as u64;
        if n == 0 {
            return;
        }
        // Each key is the deadline's offset above the earliest one, with
        // the announcement index in its low bits: sorting plain integers
        // sorts by (deadline, insertion).
        let bits = u64::BITS - (n - 1).leading_zeros();
        let index = (1u64 << bits) - 1;
        if bits == 0 || hi - lo < 1 << (u64::BITS - bits) {
            for (k, d) in self.keys.iter_mut().enumerate() {
                *d = ((*d - lo) << bits) | k as u64;
            }
            self.keys.sort_unstable();
            self.merge(|key| (lo + (key >> bits), (key & index) as usize));
        } else {
            // Deadlines too far apart to pack: sort the indexes by the pair.
            let deadlines = std::mem::take(&mut self.keys);
            let mut order: Vec<u64> = (0..n).collect();
            order.sort_unstable_by_key(|&k| (deadlines.get(k as usize).copied(), k));
            self.keys = order;
            self.merge(|k| (deadlines.get(k as usize).copied().unwrap_or(0), k as usize));
        }
    }

    /// Merges the held run with `keys` (sorted, decoded by `decode` into
    /// deadline and announcement index); held entries go first on ties.
    fn merge(&mut self, decode: impl Fn(u64) -> (u64, usize)) {
        self.merged.clear();
        self.at.resize(self.keys.len(), 0);
        let held = self.run.get(self.head..).unwrap_or_default();
        let mut h = 0;
        for &key in &self.keys {
            let (deadline, k) = decode(key);
            while let Some(&s) = held.get(h).filter(|s| s.deadline <= deadline) {
                self.merged.push(s);
                h += 1;
            }
            if let Some(at) = self.at.get_mut(k) {
                *at = self.merged.len() as u32;
            }
            self.merged.push(Slot {
                deadline,
                item: NOT_PUSHED,
            });
        }
        self.merged
            .extend_from_slice(held.get(h..).unwrap_or_default());
        std::mem::swap(&mut self.run, &mut self.merged);
        self.head = 0;
    }
}

impl DeadlineQueue<SimTime, u32> for AnnouncedQueue {
    fn len(&self) -> usize {
        self.len
    }

    /// The next announced push; anything else is refused (and the queue
    /// marked [`broken`](Self::broken)).
    fn push(&mut self, deadline: SimTime, item: u32) -> Result<(), u32> {
        let slot = self
            .at
            .get(self.pushed)
            .and_then(|&i| self.run.get_mut(i as usize))
            .filter(|s| s.deadline == deadline.0 && item != NOT_PUSHED);
        let Some(slot) = slot else {
            self.broken = true;
            return Err(item);
        };
        slot.item = item;
        self.pushed += 1;
        self.len += 1;
        Ok(())
    }

    /// The earliest deadline held or announced (see the module doc).
    fn next_deadline(&self) -> Option<SimTime> {
        self.run.get(self.head).map(|s| SimTime(s.deadline))
    }

    fn pop_due(&mut self, now: SimTime) -> Option<(SimTime, u32)> {
        let s = *self.run.get(self.head).filter(|s| s.deadline <= now.0)?;
        if s.item == NOT_PUSHED {
            // Due before its arrival was handed over: not a stage's order.
            self.broken = true;
            return None;
        }
        self.head += 1;
        self.len -= 1;
        Some((SimTime(s.deadline), s.item))
    }

    fn drain_all(&mut self) -> Vec<(SimTime, u32)> {
        let out = self
            .run
            .get(self.head..)
            .unwrap_or_default()
            .iter()
            .filter(|s| s.item != NOT_PUSHED)
            .map(|s| (SimTime(s.deadline), s.item))
            .collect();
        self.run.clear();
        self.head = 0;
        self.at.clear();
        self.pushed = 0;
        self.len = 0;
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

    /// Against the core's queue, driven as a stage drives it: per slice,
    /// arrivals in time order with deadlines after them (many ties, some
    /// far apart), each pop at an arrival's time or the slice's end.
    #[test]
    fn pops_exactly_what_the_delay_queue_pops() {
        for seed in 0..300u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let spread: u64 = [4, 1 << 10, 1 << 40, 1 << 56][seed as usize % 4];
            let slice = spread.max(16);
            let mut want: DelayQueue<SimTime, u32> = DelayQueue::new(usize::MAX);
            let mut got = AnnouncedQueue::default();
            let mut item = 0u32;
            let mut t0 = 0u64;
            for _ in 0..20 {
                let t1 = t0 + slice;
                let n = rng.random_range(0..60);
                let mut arrivals: Vec<(u64, u64)> = (0..n)
                    .map(|_| {
                        let a = t0 + rng.random_range(0..slice);
                        (a, a + 1 + rng.random_range(0..spread))
                    })
                    .collect();
                arrivals.sort_by_key(|a| a.0);
                got.announce(arrivals.iter().map(|a| a.1));
                for (a, d) in arrivals {
                    while let Some(w) = want.pop_due(SimTime(a)) {
                        assert_eq!(got.pop_due(SimTime(a)), Some(w), "seed {seed}");
                    }
                    assert_eq!(got.pop_due(SimTime(a)), None, "seed {seed}");
                    assert_eq!(want.push(SimTime(d), item), Ok(()));
                    assert_eq!(got.push(SimTime(d), item), Ok(()), "seed {seed}");
                    item += 1;
                    assert_eq!(got.len(), want.len());
                }
                while let Some(w) = want.pop_due(SimTime(t1 - 1)) {
                    assert_eq!(got.pop_due(SimTime(t1 - 1)), Some(w), "seed {seed}");
                }
                assert_eq!(got.pop_due(SimTime(t1 - 1)), None);
                assert_eq!(got.next_deadline(), want.next_deadline(), "seed {seed}");
                t0 = t1;
            }
            assert!(!got.broken());
            assert_eq!(got.drain_all(), want.drain_all());
            assert!(got.is_empty());
        }
    }

    #[test]
    fn a_push_it_was_not_told_of_is_refused_and_remembered() {
        let mut q = AnnouncedQueue::default();
        q.announce([10, 20].into_iter());
        assert_eq!(q.push(SimTime(10), 1), Ok(()));
        // Not the next announced deadline.
        assert_eq!(q.push(SimTime(25), 2), Err(2));
        assert!(q.broken());

        let mut q = AnnouncedQueue::default();
        q.announce([10].into_iter());
        assert_eq!(q.push(SimTime(10), 1), Ok(()));
        assert_eq!(q.push(SimTime(10), 2), Err(2), "one more than announced");
        assert!(q.broken());

        // An announced push left out, then the next slice.
        let mut q = AnnouncedQueue::default();
        q.announce([10, 20].into_iter());
        assert_eq!(q.push(SimTime(10), 1), Ok(()));
        q.announce([30].into_iter());
        assert!(q.broken());
    }
}
