//! Tracks the node's own loop cover packets until they return.
//!
//! Loopix §4.2: a mix expects its loops back. A falling return ratio is the
//! signal of an (n−1) attack (someone blocking traffic selectively) or of a
//! dead node on the path. Identifiers are 16 random bytes, so a returning
//! final-hop packet is recognised with one hash lookup and cannot be forged
//! by a node that did not see it.
//!
//! A loop is also a liveness probe: its sender chose the route, so a return
//! clears every node on it and a loss is evidence against all of them. The
//! tracker carries whatever the caller wants back with each outcome (`R`,
//! the route for the liveness estimator; `()` when nobody needs it).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub type LoopId = [u8; 16];

/// What happened to a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEvent {
    Returned,
    Lost,
}

pub struct LoopTracker<T, R = ()> {
    pending: HashMap<LoopId, (T, R)>,
    order: VecDeque<(LoopId, T)>,
    limit: usize,
    timeout: Duration,
    /// Outcomes of the most recent resolved loops, for the ratio.
    window: VecDeque<LoopEvent>,
    window_len: usize,
}

impl<T, R> LoopTracker<T, R>
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T>,
{
    /// `limit` bounds the pending set; `timeout` is when a loop counts as lost;
    /// the ratio is over the last `window_len` resolved loops.
    pub fn new(limit: usize, timeout: Duration, window_len: usize) -> Self {
        Self {
            pending: HashMap::new(),
            order: VecDeque::new(),
            limit: limit.max(1),
            timeout,
            window: VecDeque::new(),
            window_len: window_len.max(1),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn resolve(&mut self, ev: LoopEvent) {
        if self.window.len() == self.window_len {
            self.window.pop_front();
        }
        self.window.push_back(ev);
    }

    /// Records a loop sent at `now`. Returns how many older loops were
    /// declared lost to make room.
    pub fn sent(&mut self, id: LoopId, now: T) -> usize
    where
        R: Default,
    {
        self.track(id, now, R::default()).len()
    }

    /// Records a loop sent at `now` along `route`. Returns when and along
    /// which route the older loops declared lost to make room were sent.
    pub fn track(&mut self, id: LoopId, now: T, route: R) -> Vec<(T, R)> {
        let mut evicted = Vec::new();
        while self.pending.len() >= self.limit {
            match self.order.pop_front() {
                Some((old, _)) => {
                    if let Some(lost) = self.pending.remove(&old) {
                        self.resolve(LoopEvent::Lost);
                        evicted.push(lost);
                    }
                }
                None => break,
            }
        }
        self.pending.insert(id, (now, route));
        self.order.push_back((id, now));
        evicted
    }

    /// A final-hop packet with `id` arrived. Returns when it was sent if it
    /// was one of ours and still pending.
    pub fn returned(&mut self, id: &LoopId) -> Option<T> {
        self.returned_route(id).map(|(sent, _)| sent)
    }

    /// Like [`Self::returned`], with the route it was sent along.
    pub fn returned_route(&mut self, id: &LoopId) -> Option<(T, R)> {
        let sent = self.pending.remove(id)?;
        self.resolve(LoopEvent::Returned);
        Some(sent)
    }

    /// Declares loops older than the timeout lost; returns how many.
    pub fn expire(&mut self, now: T) -> usize {
        self.expire_routes(now).len()
    }

    /// Declares loops older than the timeout lost; returns when and along
    /// which route each was sent.
    pub fn expire_routes(&mut self, now: T) -> Vec<(T, R)> {
        let mut lost = Vec::new();
        while let Some(&(id, sent)) = self.order.front() {
            if sent + self.timeout > now {
                break;
            }
            self.order.pop_front();
            if let Some(l) = self.pending.remove(&id) {
                self.resolve(LoopEvent::Lost);
                lost.push(l);
            }
        }
        lost
    }

    /// Returned / resolved over the recent window; `None` before any resolved.
    pub fn return_ratio(&self) -> Option<f64> {
        if self.window.is_empty() {
            return None;
        }
        let ok = self
            .window
            .iter()
            .filter(|e| **e == LoopEvent::Returned)
            .count();
        Some(ok as f64 / self.window.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_expiry_and_ratio() {
        let mut t: LoopTracker<Duration> = LoopTracker::new(100, Duration::from_secs(5), 10);
        let s = Duration::ZERO;
        t.sent([1; 16], s);
        t.sent([2; 16], s + Duration::from_secs(1));
        assert_eq!(t.returned(&[1; 16]), Some(s));
        assert_eq!(t.returned(&[1; 16]), None, "a loop returns once");
        assert_eq!(t.returned(&[9; 16]), None);
        assert_eq!(t.expire(Duration::from_secs(5)), 0);
        assert_eq!(t.expire(Duration::from_secs(6)), 1);
        assert_eq!(t.return_ratio(), Some(0.5));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn bounded_pending_evicts_oldest_as_lost() {
        let mut t: LoopTracker<Duration> = LoopTracker::new(2, Duration::from_secs(5), 10);
        t.sent([1; 16], 0u64.into_dur());
        t.sent([2; 16], 0u64.into_dur());
        assert_eq!(t.sent([3; 16], 0u64.into_dur()), 1);
        assert_eq!(t.pending(), 2);
        assert_eq!(t.returned(&[1; 16]), None);
    }

    #[test]
    fn routes_come_back_with_their_outcome() {
        let mut t: LoopTracker<Duration, &str> = LoopTracker::new(2, Duration::from_secs(5), 10);
        let s = Duration::ZERO;
        assert!(t.track([1; 16], s, "a").is_empty());
        t.track([2; 16], s, "b");
        assert_eq!(t.track([3; 16], s, "c"), vec![(s, "a")], "evicted as lost");
        assert_eq!(t.returned_route(&[2; 16]), Some((s, "b")));
        assert_eq!(t.expire_routes(Duration::from_secs(5)), vec![(s, "c")]);
        assert_eq!(t.pending(), 0);
    }

    trait IntoDur {
        fn into_dur(self) -> Duration;
    }
    impl IntoDur for u64 {
        fn into_dur(self) -> Duration {
            Duration::from_secs(self)
        }
    }
}
