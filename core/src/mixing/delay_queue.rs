//! A bounded queue of items ordered by deadline (then by insertion order).
//!
//! Generic over the clock so the node uses `Instant` and the simulator uses
//! virtual time. Ties break by insertion sequence, which keeps simulations
//! deterministic (a bare `BinaryHeap` leaves equal keys in unspecified order).
//!
//! [`DeadlineQueue`] is what a [`Mix`](super::mix::Mix) needs of its pool, so
//! a driver with a cheaper clock can bring a faster queue with the same
//! order (the simulator's integer virtual time allows a radix heap).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

struct Entry<T, I> {
    deadline: T,
    seq: u64,
    item: I,
}

impl<T: Ord, I> PartialEq for Entry<T, I> {
    fn eq(&self, o: &Self) -> bool {
        self.deadline == o.deadline && self.seq == o.seq
    }
}
impl<T: Ord, I> Eq for Entry<T, I> {}
impl<T: Ord, I> PartialOrd for Entry<T, I> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Ord, I> Ord for Entry<T, I> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.deadline.cmp(&o.deadline).then(self.seq.cmp(&o.seq))
    }
}

/// A pool ordered by deadline, then insertion: what [`DelayQueue`] does,
/// as a trait so a [`Mix`](super::mix::Mix) can hold its packets in
/// another structure that keeps exactly this order.
pub trait DeadlineQueue<T, I> {
    /// Items held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Queues `item` until `deadline`; gives it back if the queue is full.
    fn push(&mut self, deadline: T, item: I) -> Result<(), I>;
    /// The earliest deadline held.
    fn next_deadline(&self) -> Option<T>;
    /// The earliest item (first inserted among equal deadlines) whose
    /// deadline is at or before `now`.
    fn pop_due(&mut self, now: T) -> Option<(T, I)>;
    /// Removes everything, earliest first.
    fn drain_all(&mut self) -> Vec<(T, I)>;
}

pub struct DelayQueue<T, I> {
    heap: BinaryHeap<Reverse<Entry<T, I>>>,
    seq: u64,
    limit: usize,
}

impl<T: Ord + Copy, I> DelayQueue<T, I> {
    /// A queue holding at most `limit` items.
    pub fn new(limit: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queues `item` until `deadline`; gives it back if the queue is full.
    pub fn push(&mut self, deadline: T, item: I) -> Result<(), I> {
        if self.heap.len() >= self.limit {
            return Err(item);
        }
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            item,
        }));
        Ok(())
    }

    pub fn next_deadline(&self) -> Option<T> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// The earliest item whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: T) -> Option<(T, I)> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.deadline, e.item))
    }

    /// Removes everything, earliest first.
    pub fn drain_all(&mut self) -> Vec<(T, I)> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(Reverse(e)) = self.heap.pop() {
            out.push((e.deadline, e.item));
        }
        out
    }
}

impl<T: Ord + Copy, I> DeadlineQueue<T, I> for DelayQueue<T, I> {
    fn len(&self) -> usize {
        DelayQueue::len(self)
    }
    fn push(&mut self, deadline: T, item: I) -> Result<(), I> {
        DelayQueue::push(self, deadline, item)
    }
    fn next_deadline(&self) -> Option<T> {
        DelayQueue::next_deadline(self)
    }
    fn pop_due(&mut self, now: T) -> Option<(T, I)> {
        DelayQueue::pop_due(self, now)
    }
    fn drain_all(&mut self) -> Vec<(T, I)> {
        DelayQueue::drain_all(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut q = DelayQueue::new(10);
        q.push(5u64, "b").unwrap();
        q.push(3, "a").unwrap();
        q.push(5, "c").unwrap();
        assert_eq!(q.pop_due(2), None);
        assert_eq!(q.pop_due(10), Some((3, "a")));
        assert_eq!(q.pop_due(10), Some((5, "b")));
        assert_eq!(q.pop_due(10), Some((5, "c")));
        assert!(q.is_empty());
    }

    #[test]
    fn refuses_beyond_limit() {
        let mut q = DelayQueue::new(2);
        q.push(1u64, 1).unwrap();
        q.push(1, 2).unwrap();
        assert_eq!(q.push(1, 3), Err(3));
        assert_eq!(q.drain_all().len(), 2);
    }

    /// One step of a random workload against the queue and the model.
    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        /// Advance the clock by this much, then pop one due item.
        Pop(u8),
        Drain,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => any::<u8>().prop_map(Op::Push),
            3 => (0u8..8).prop_map(Op::Pop),
            1 => Just(Op::Drain),
        ]
    }

    proptest::proptest! {
        /// The heap against the obvious model: a list kept sorted by
        /// (deadline, insertion number), scanned from the front. Same items,
        /// same order, same refusals at the limit, same `next_deadline`.
        #[test]
        fn matches_a_sorted_list(
            limit in 0usize..12,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut q = DelayQueue::new(limit);
            let mut model: Vec<(u64, u64, u32)> = Vec::new(); // (deadline, seq, item)
            let (mut now, mut seq, mut next_item) = (0u64, 0u64, 0u32);
            for op in ops {
                match op {
                    Op::Push(d) => {
                        let deadline = now + u64::from(d % 16);
                        let item = next_item;
                        next_item += 1;
                        let got = q.push(deadline, item);
                        if model.len() >= limit {
                            proptest::prop_assert_eq!(got, Err(item));
                        } else {
                            proptest::prop_assert_eq!(got, Ok(()));
                            seq += 1;
                            let at = model.partition_point(|&(d2, s2, _)| (d2, s2) < (deadline, seq));
                            model.insert(at, (deadline, seq, item));
                        }
                    }
                    Op::Pop(dt) => {
                        now += u64::from(dt);
                        let want = match model.first() {
                            Some(&(d, _, item)) if d <= now => {
                                model.remove(0);
                                Some((d, item))
                            }
                            _ => None,
                        };
                        proptest::prop_assert_eq!(q.pop_due(now), want);
                    }
                    Op::Drain => {
                        let want: Vec<(u64, u32)> = model.drain(..).map(|(d, _, i)| (d, i)).collect();
                        proptest::prop_assert_eq!(q.drain_all(), want);
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
                proptest::prop_assert_eq!(q.next_deadline(), model.first().map(|e| e.0));
                proptest::prop_assert!(q.len() <= limit);
            }
        }
    }
}
