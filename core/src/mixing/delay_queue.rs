//! A bounded queue of items ordered by deadline (then by insertion order).
//!
//! Generic over the clock so the node uses `Instant` and the simulator uses
//! virtual time. Ties break by insertion sequence, which keeps simulations
//! deterministic (a bare `BinaryHeap` leaves equal keys in unspecified order).

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
}
