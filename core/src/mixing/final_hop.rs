//! [`OwnLoops`]: whose is a packet this node is the final hop of?
//!
//! A node is the final hop of two kinds of packets: its own loop cover
//! coming back (Loopix §4.2), and, at a provider, packets for its clients
//! or drop cover addressed to it. The rule that tells them apart:
//!
//! * a packet is one of our loops if it is addressed to us **and** its
//!   16-byte Sphinx identifier is one we sent and still wait for; it is
//!   counted as returned, its round-trip time is `now − sent`, and its
//!   route is handed back so the liveness estimator can clear every node
//!   on it;
//! * anything else (not addressed to us, an identifier we never sent, or a
//!   loop that already came back or was declared lost) is for delivery: a
//!   provider stores it ([`super::delivery`]), a mix has nothing to deliver.
//!
//! Identifiers are random, so a node that did not see the loop cannot make
//! a packet count as one. The same type keeps the loops in flight: what was
//! sent ([`OwnLoops::track`]) and what is lost ([`OwnLoops::expire_routes`]).
//! Time comes from the caller, so the node runs it on `Instant` and the
//! simulator on virtual time.

use std::ops::{Add, Sub};
use std::time::Duration;

use super::loops::{LoopId, LoopTracker};
use crate::keys::NodeId;

/// What a final-hop packet is to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalHop<T, R> {
    /// One of our loops came back: sent at `sent` along `route`, `rtt` ago.
    OwnLoop { sent: T, rtt: Duration, route: R },
    /// Not one of our pending loops: something to deliver.
    Deliver,
}

/// This node's loop cover in flight, and the recognition of its returns.
pub struct OwnLoops<T, R = ()> {
    me: NodeId,
    loops: LoopTracker<T, R>,
}

impl<T, R> OwnLoops<T, R>
where
    T: Copy + Ord + Add<Duration, Output = T> + Sub<Output = Duration>,
{
    /// The loops of node `me`, tracked by `loops` (its pending limit,
    /// timeout and ratio window).
    pub fn new(me: NodeId, loops: LoopTracker<T, R>) -> Self {
        Self { me, loops }
    }

    /// A packet for `destination` with Sphinx `identifier`, of which this
    /// node is the final hop, arrived at `now`.
    pub fn on_final_hop(
        &mut self,
        destination: &NodeId,
        identifier: &LoopId,
        now: T,
    ) -> FinalHop<T, R> {
        if *destination != self.me {
            return FinalHop::Deliver;
        }
        match self.loops.returned_route(identifier) {
            Some((sent, route)) => FinalHop::OwnLoop {
                sent,
                rtt: now - sent,
                route,
            },
            None => FinalHop::Deliver,
        }
    }

    /// A loop with `id` was sent at `now` along `route`. Returns the older
    /// loops declared lost to make room (when and along which route each
    /// was sent).
    pub fn track(&mut self, id: LoopId, now: T, route: R) -> Vec<(T, R)> {
        self.loops.track(id, now, route)
    }

    /// When a loop not back counts as lost (it follows the topology).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.loops.set_timeout(timeout);
    }

    /// Declares loops older than the timeout lost; returns when and along
    /// which route each was sent.
    pub fn expire_routes(&mut self, now: T) -> Vec<(T, R)> {
        self.loops.expire_routes(now)
    }

    /// Returned / resolved over the recent window; `None` before any.
    pub fn return_ratio(&self) -> Option<f64> {
        self.loops.return_ratio()
    }

    /// Loops sent and not yet resolved.
    pub fn pending(&self) -> usize {
        self.loops.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn own() -> OwnLoops<Duration, &'static str> {
        OwnLoops::new(NodeId([1; 32]), LoopTracker::new(10, 5 * S, 10))
    }

    #[test]
    fn a_pending_loop_addressed_to_us_returns_once_with_its_rtt_and_route() {
        let mut o = own();
        let me = NodeId([1; 32]);
        o.track([7; 16], S, "via L1 L2 L3");
        assert_eq!(
            o.on_final_hop(&me, &[7; 16], 3 * S),
            FinalHop::OwnLoop {
                sent: S,
                rtt: 2 * S,
                route: "via L1 L2 L3"
            }
        );
        // The same identifier again (a replayed or duplicated packet) is
        // not a second return.
        assert_eq!(o.on_final_hop(&me, &[7; 16], 4 * S), FinalHop::Deliver);
        assert_eq!(o.return_ratio(), Some(1.0));
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn other_destinations_unknown_identifiers_and_lost_loops_are_delivered() {
        let mut o = own();
        let me = NodeId([1; 32]);
        o.track([7; 16], Duration::ZERO, "r");
        // A client's packet that happens to carry one of our identifiers.
        assert_eq!(
            o.on_final_hop(&NodeId([2; 32]), &[7; 16], S),
            FinalHop::Deliver
        );
        assert_eq!(o.on_final_hop(&me, &[8; 16], S), FinalHop::Deliver);
        assert_eq!(o.pending(), 1, "still waiting for the real one");
        // Declared lost at its timeout; a late return is not counted.
        assert_eq!(o.expire_routes(5 * S), vec![(Duration::ZERO, "r")]);
        assert_eq!(o.on_final_hop(&me, &[7; 16], 6 * S), FinalHop::Deliver);
        assert_eq!(o.return_ratio(), Some(0.0));
    }
}
