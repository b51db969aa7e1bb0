//! [`Mix`]: what a mix decides about a packet after it is unwrapped, as a
//! state machine with no clock and no sockets of its own.
//!
//! The rules, in one place:
//!
//! * a packet's deadline is its arrival plus the delay its header asks for;
//! * a packet already due when it is handed over (it waited in the ingress
//!   and worker queues longer than its delay) is forwarded at once;
//! * otherwise it joins the pool, unless the pool holds `queue_limit`
//!   packets already (dropped: `overload`);
//! * a packet released more than `late_tolerance` after its deadline is
//!   dropped (`late`): forwarding it would tell an observer how long this
//!   mix really held it, and the sender's timers have given up on it;
//! * the pool's entropy (Eq. 5) and mean size are accounted on every
//!   arrival and departure, dropped or not.
//!
//! The caller brings `now` to every call, so the node drives it with real
//! time and the simulator with virtual time, and both make the same
//! decisions for the same events.

use std::ops::{Add, Sub};
use std::time::Duration;

use super::delay_queue::{DeadlineQueue, DelayQueue};
use super::entropy::{EntropyWindow, MixEntropy};

/// Limits of one mix's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixConfig {
    /// Packets held at most; more are dropped as `overload`.
    pub queue_limit: usize,
    /// How late after its deadline a packet may still leave.
    pub late_tolerance: Duration,
}

/// Why a packet did not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The pool was full.
    Overload,
    /// Released later than `late_tolerance` after its deadline.
    Late,
}

impl DropReason {
    /// The `reason` label of the node's drop counter.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Overload => "overload",
            DropReason::Late => "late",
        }
    }
}

/// What to do with a packet now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<T, I> {
    /// Send it to its next hop; `deadline` is when it was due.
    Forward {
        item: I,
        deadline: T,
    },
    Drop {
        item: I,
        reason: DropReason,
    },
}

/// One mix's pool and the rules above. The pool is a [`DelayQueue`]
/// unless the driver brings another [`DeadlineQueue`] (the simulator
/// does, for speed; the order, hence every decision, is the same).
pub struct Mix<T, I, Q = DelayQueue<T, I>> {
    cfg: MixConfig,
    pool: Q,
    entropy: MixEntropy<T>,
    _item: std::marker::PhantomData<fn(I) -> I>,
}

impl<T, I> Mix<T, I>
where
    T: Copy + Ord + Sub<Output = Duration> + Add<Duration, Output = T>,
{
    pub fn new(cfg: MixConfig) -> Self {
        Self::with_queue(cfg, DelayQueue::new(cfg.queue_limit))
    }
}

impl<T, I, Q> Mix<T, I, Q>
where
    T: Copy + Ord + Sub<Output = Duration> + Add<Duration, Output = T>,
    Q: DeadlineQueue<T, I>,
{
    /// A mix holding its packets in `pool`, which must be empty and
    /// refuse items beyond `cfg.queue_limit`.
    pub fn with_queue(cfg: MixConfig, pool: Q) -> Self {
        Self {
            cfg,
            pool,
            entropy: MixEntropy::new(),
            _item: std::marker::PhantomData,
        }
    }

    /// An unwrapped packet that arrived at `received` and asks to be held
    /// `intended`: `None` if it joined the pool, else what to do with it
    /// at once.
    pub fn on_processed(
        &mut self,
        item: I,
        received: T,
        intended: Duration,
        now: T,
    ) -> Option<Decision<T, I>> {
        let deadline = received + intended;
        if deadline <= now {
            self.entropy.arrive(now);
            self.entropy.depart(now);
            return Some(self.leave(item, deadline, now));
        }
        match self.pool.push(deadline, item) {
            Ok(()) => {
                self.entropy.arrive(now);
                None
            }
            Err(item) => Some(Decision::Drop {
                item,
                reason: DropReason::Overload,
            }),
        }
    }

    /// The next packet due at `now`, if any (call until `None`).
    pub fn poll_due(&mut self, now: T) -> Option<Decision<T, I>> {
        let (deadline, item) = self.pool.pop_due(now)?;
        // A packet leaves the pool whether it is forwarded or dropped.
        self.entropy.depart(now);
        Some(self.leave(item, deadline, now))
    }

    fn leave(&self, item: I, deadline: T, now: T) -> Decision<T, I> {
        if now > deadline && now - deadline > self.cfg.late_tolerance {
            Decision::Drop {
                item,
                reason: DropReason::Late,
            }
        } else {
            Decision::Forward { item, deadline }
        }
    }

    /// When the next packet is due (what the driver sleeps until).
    pub fn next_deadline(&self) -> Option<T> {
        self.pool.next_deadline()
    }

    /// Packets in the pool.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// The queue holding the pool's packets (read-only: the mix alone
    /// decides what enters and leaves it).
    pub fn queue(&self) -> &Q {
        &self.pool
    }

    /// `H_t` after the latest departure, bits.
    pub fn entropy_bits(&self) -> f64 {
        self.entropy.entropy_bits()
    }

    /// Entropy and pool-size averages since the last call; starts the next
    /// window.
    pub fn take_entropy_window(&mut self, now: T) -> EntropyWindow {
        self.entropy.take_window(now)
    }

    /// Empties the pool (shutdown): every packet still held, in deadline
    /// order.
    pub fn drain_all(&mut self) -> Vec<(T, I)> {
        self.pool.drain_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use std::time::Instant;

    fn mix(limit: usize) -> Mix<Instant, u32> {
        Mix::new(MixConfig {
            queue_limit: limit,
            late_tolerance: Duration::from_millis(500),
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn held_until_arrival_plus_delay_then_forwarded_in_deadline_order() {
        let t0 = Instant::now();
        let mut m = mix(8);
        assert_eq!(m.on_processed(1, t0, 300 * MS, t0 + 5 * MS), None);
        assert_eq!(m.on_processed(2, t0, 100 * MS, t0 + 5 * MS), None);
        assert_eq!(m.next_deadline(), Some(t0 + 100 * MS));
        assert_eq!(m.poll_due(t0 + 99 * MS), None);
        assert_eq!(
            m.poll_due(t0 + 100 * MS),
            Some(Decision::Forward {
                item: 2,
                deadline: t0 + 100 * MS
            })
        );
        assert_eq!(m.poll_due(t0 + 100 * MS), None);
        assert!(matches!(
            m.poll_due(t0 + 301 * MS),
            Some(Decision::Forward { item: 1, .. })
        ));
        assert!(m.is_empty());
    }

    #[test]
    fn already_due_goes_at_once_and_too_late_is_dropped() {
        let t0 = Instant::now();
        let mut m = mix(8);
        // Waited 200 ms in the queues for a 100 ms delay: due, not late.
        assert_eq!(
            m.on_processed(1, t0, 100 * MS, t0 + 200 * MS),
            Some(Decision::Forward {
                item: 1,
                deadline: t0 + 100 * MS
            })
        );
        // 700 ms past its deadline: more than the 500 ms tolerance.
        assert_eq!(
            m.on_processed(2, t0, 100 * MS, t0 + 800 * MS),
            Some(Decision::Drop {
                item: 2,
                reason: DropReason::Late
            })
        );
        // Held, but released (the driver was stalled) too late.
        assert_eq!(m.on_processed(3, t0, 900 * MS, t0 + 800 * MS), None);
        assert_eq!(
            m.poll_due(t0 + 1500 * MS),
            Some(Decision::Drop {
                item: 3,
                reason: DropReason::Late
            })
        );
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_pool_drops_the_newcomer_as_overload() {
        let t0 = Instant::now();
        let mut m = mix(2);
        assert_eq!(m.on_processed(1, t0, 100 * MS, t0), None);
        assert_eq!(m.on_processed(2, t0, 100 * MS, t0), None);
        assert_eq!(
            m.on_processed(3, t0, 100 * MS, t0),
            Some(Decision::Drop {
                item: 3,
                reason: DropReason::Overload
            })
        );
        assert_eq!(DropReason::Overload.label(), "overload");
        assert_eq!(m.len(), 2);
        assert_eq!(m.drain_all().len(), 2);
    }

    #[test]
    fn entropy_counts_every_departure() {
        let t0 = Instant::now();
        let mut m = mix(8);
        for i in 0..4 {
            m.on_processed(i, t0, 100 * MS, t0);
        }
        // Four packets left one pool together: 2 bits for the last.
        while m.poll_due(t0 + 100 * MS).is_some() {}
        assert!(m.entropy_bits() > 0.0);
        let w = m.take_entropy_window(t0 + 200 * MS);
        assert!(w.mean_pool_size.unwrap() > 0.0);
    }
}
