//! Local liveness evidence: which nodes this sender's own probes say are down.
//!
//! Every loop packet is a probe whose route its sender chose (`docs/ARCHITECTURE.md`,
//! "Liveness"). A returned probe proves that **every** node on its route was
//! up when it passed; a lost one is evidence against all of them at once.
//! SURB-ACKs of real traffic count the same way, and a failed connection to
//! a next hop is direct evidence against that one node.
//!
//! The estimator combines overlapping routes by *explaining away*:
//!
//! * A return resets every node on its route (one return clears a suspect).
//! * A loss is charged only to the nodes on its route that nothing explains:
//!   a node with a return of a probe **sent later** than the lost one was up
//!   after it (exonerated), and if any remaining node is already suspect the
//!   loss is put down to that node and nobody else is charged.
//! * A node is suspect once its charge since its last return reaches
//!   `K` ([`EstimatorConfig::suspect_after`]).
//!
//! Evidence is ordered by when probes were *sent*, not when their fate
//! became known: a loss is only known after the loop timeout, by which time
//! younger probes through the other nodes of its route have usually come
//! back and exonerate them. That is what lets a dead node in a layer be told
//! apart from its route-mates, and what keeps stale losses of probes sent
//! before a node came back from suspecting it again.
//!
//! The streak since the last return is the sequential likelihood-ratio test
//! for "dead" against "up but lossy": a dead node never returns a probe, so
//! one return refutes it, and each further loss multiplies the odds by the
//! same factor. `docs/SIMULATIONS.md` ("Liveness estimator") has the
//! measurements behind the default `K` and blame rule.
//!
//! Local suspicion steers only retransmissions
//! ([`crate::topology::Topology::random_mix_path_avoiding`]); first attempts
//! and loops follow the network's signed down list, so probes keep crossing
//! suspects and a single return clears them.
//!
//! Sans-IO and generic over the clock like [`crate::mixing::loops::LoopTracker`]:
//! the client and node pass `Instant`, the simulator its virtual time.
//! State is bounded: at most [`EstimatorConfig::max_nodes`] entries, evidence
//! older than [`EstimatorConfig::forget_after`] is dropped by
//! [`LivenessEstimator::expire`], and [`LivenessEstimator::retain`] drops
//! nodes that left the topology. Iteration is over a `BTreeMap`, so the
//! output is deterministic.

use std::collections::BTreeMap;
use std::ops::Add;
use std::time::Duration;

use crate::keys::NodeId;

/// How a loss is charged to the unexplained nodes of its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Each unexplained node is charged one whole loss.
    Whole,
    /// The loss is split: each of `n` unexplained nodes is charged `1/n`.
    /// A loss only one node can explain charges it in full.
    Split,
}

/// Thresholds of a [`LivenessEstimator`]. `Default` holds the values chosen
/// by `loopmix-sim liveness` (see [`EstimatorConfig::default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EstimatorConfig {
    /// `K`: charge since the node's last return at which it is suspect.
    pub suspect_after: f64,
    /// How losses are charged.
    pub blame: Blame,
    /// What one failed connection to a node charges it (direct evidence,
    /// no route to share it with). `suspect_after` makes one failure enough.
    pub link_failure_charge: f64,
    /// Evidence older than this is forgotten by [`LivenessEstimator::expire`]:
    /// a suspect nobody has routed through for this long is no longer one
    /// (the network's signed list covers nodes that stay down).
    pub forget_after: Duration,
    /// Most nodes tracked; beyond it the entry with the oldest evidence is
    /// dropped. Callers pass only nodes of their topology, so this is a
    /// backstop.
    pub max_nodes: usize,
}

/// The default `K`, measured by `loopmix-sim liveness` (seed 1: 20
/// observers × 1 h per cell, 3 layers of 2 and of 10 mixes, balanced preset:
/// 50 ms per hop, 5.6 s loop timeout, one mix dead for 20 min; loss is per
/// link, so 20 % is a 59 % loss of whole loops). With [`Blame::Split`]:
///
/// * K = 16 keeps false positives ≈ 0 everywhere: at 20 % link loss ≤ 1 %
///   of (observer, healthy mix) pairs are ever suspected, for 0.01–0.11
///   suspect-seconds per mix-hour; at ≤ 5 % loss none.
/// * With the acks of a sending client (λ_L + λ_P = 21 probes/s) it finds a
///   dead mix in 6.8–7.1 s (3×2, median; p95 ≤ 7.8 s) and 12.2–13.0 s
///   (3×10), i.e. one loop timeout plus a few seconds. Only sending clients
///   retransmit, so this is the rate that matters for local avoidance.
/// * Loops alone (1/s) take 44–58 s (3×2) and 5–6 min (3×10): an idle
///   sender has nothing to retransmit, and the authorities' list covers it.
/// * Smaller K trades false positives for speed: K = 4 detects in 5.9 s
///   (3×2, acks) but suspects every healthy mix at 20 % loss with loops
///   alone; K = 20 removes the last false positives for +0.3–1.8 s.
///
/// [`Blame::Whole`] has the same FP/delay frontier at about 1.3–2× the K
/// but suspects more route-mates around a death (K = 1 with no loss at all:
/// 14 % of healthy mixes in 3×2 against 5 % split); split blame keeps `K` a count of losses only
/// this node explains. `docs/SIMULATIONS.md`, "Liveness estimator".
pub const DEFAULT_SUSPECT_AFTER: f64 = 16.0;

impl Default for EstimatorConfig {
    /// `K` = [`DEFAULT_SUSPECT_AFTER`] with [`Blame::Split`], chosen by
    /// `loopmix-sim liveness` (numbers at [`DEFAULT_SUSPECT_AFTER`]).
    fn default() -> Self {
        Self {
            suspect_after: DEFAULT_SUSPECT_AFTER,
            blame: Blame::Split,
            link_failure_charge: DEFAULT_SUSPECT_AFTER,
            forget_after: Duration::from_secs(120),
            max_nodes: 4096,
        }
    }
}

/// What the estimator knows about one node.
#[derive(Clone, Copy, Debug)]
struct NodeState<T> {
    /// Unexplained losses charged since the last return.
    charge: f64,
    suspect: bool,
    /// Send time of the youngest probe through it that returned.
    last_return: Option<T>,
    /// Send time of the youngest evidence charged (or explained away) to it.
    last_loss: Option<T>,
}

impl<T: Copy + Ord> NodeState<T> {
    fn new() -> Self {
        Self {
            charge: 0.0,
            suspect: false,
            last_return: None,
            last_loss: None,
        }
    }

    fn newest(&self) -> Option<T> {
        self.last_return.max(self.last_loss)
    }

    /// A return of a probe sent at `at` is newer than everything against it.
    fn returned_after(&self, at: T) -> bool {
        self.last_return.is_some_and(|r| r > at)
    }
}

/// Per-node liveness suspicion from this sender's own probes.
pub struct LivenessEstimator<T> {
    cfg: EstimatorConfig,
    nodes: BTreeMap<NodeId, NodeState<T>>,
}

impl<T> LivenessEstimator<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    pub fn new(cfg: EstimatorConfig) -> Self {
        let cfg = EstimatorConfig {
            suspect_after: if cfg.suspect_after.is_finite() {
                cfg.suspect_after.max(f64::MIN_POSITIVE)
            } else {
                DEFAULT_SUSPECT_AFTER
            },
            link_failure_charge: if cfg.link_failure_charge.is_finite() {
                cfg.link_failure_charge.max(0.0)
            } else {
                0.0
            },
            max_nodes: cfg.max_nodes.max(1),
            ..cfg
        };
        Self {
            cfg,
            nodes: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &EstimatorConfig {
        &self.cfg
    }

    /// Nodes with any evidence on record.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn entry(&mut self, node: NodeId) -> &mut NodeState<T> {
        if !self.nodes.contains_key(&node) && self.nodes.len() >= self.cfg.max_nodes {
            // Drop the entry with the oldest evidence (ties: smallest id).
            let oldest = self
                .nodes
                .iter()
                .min_by_key(|(id, s)| (s.newest(), **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.nodes.remove(&id);
            }
        }
        self.nodes.entry(node).or_insert_with(NodeState::new)
    }

    /// A probe sent at `sent` along `route` came back: every node on it was
    /// up. Clears them unless younger evidence already stands against one.
    pub fn on_returned(&mut self, route: &[NodeId], sent: T) {
        for &id in route {
            let s = self.entry(id);
            if s.last_return.is_none_or(|r| sent > r) {
                s.last_return = Some(sent);
            }
            if s.last_loss.is_none_or(|l| sent >= l) {
                s.charge = 0.0;
                s.suspect = false;
            }
        }
    }

    /// A probe sent at `sent` along `route` did not come back in time.
    /// Charged only to nodes nothing explains (see the module docs).
    /// Returns how many nodes it made suspect.
    pub fn on_lost(&mut self, route: &[NodeId], sent: T) -> usize {
        // Nodes a younger return shows were up after this probe passed.
        let mut open: Vec<NodeId> = Vec::with_capacity(route.len());
        for id in route {
            let exonerated = self.nodes.get(id).is_some_and(|s| s.returned_after(sent));
            if !exonerated && !open.contains(id) {
                open.push(*id);
            }
        }
        if open.is_empty() {
            // Everyone on the route was seen up since: background loss.
            return 0;
        }
        let explained = open
            .iter()
            .any(|id| self.nodes.get(id).is_some_and(|s| s.suspect));
        if explained {
            // The loss is the suspect's; keep its evidence fresh so it is
            // not forgotten while probes through it keep failing.
            for id in &open {
                if let Some(s) = self.nodes.get_mut(id)
                    && s.suspect
                {
                    s.last_loss = s.last_loss.max(Some(sent));
                }
            }
            return 0;
        }
        let charge = match self.cfg.blame {
            Blame::Whole => 1.0,
            Blame::Split => 1.0 / open.len() as f64,
        };
        self.charge(&open, charge, sent)
    }

    /// Connecting to `node` failed at `now`: direct evidence against it alone.
    /// Returns whether this made it suspect.
    pub fn on_link_failure(&mut self, node: NodeId, now: T) -> bool {
        if self.nodes.get(&node).is_some_and(|s| s.returned_after(now)) {
            return false;
        }
        let charge = self.cfg.link_failure_charge;
        self.charge(&[node], charge, now) > 0
    }

    fn charge(&mut self, ids: &[NodeId], amount: f64, at: T) -> usize {
        let k = self.cfg.suspect_after;
        let mut newly = 0;
        for &id in ids {
            let s = self.entry(id);
            s.charge += amount;
            s.last_loss = s.last_loss.max(Some(at));
            // A small tolerance so that, e.g., three thirds reach 1.
            if !s.suspect && s.charge + 1e-9 >= k {
                s.suspect = true;
                newly += 1;
            }
        }
        newly
    }

    pub fn is_suspect(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|s| s.suspect)
    }

    /// The suspects, in id order.
    pub fn suspects(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, s)| s.suspect)
            .map(|(id, _)| *id)
    }

    /// Charge standing against `node` since its last return (0 if none).
    pub fn charge_of(&self, node: &NodeId) -> f64 {
        self.nodes.get(node).map_or(0.0, |s| s.charge)
    }

    /// Forgets nodes whose newest evidence is older than `forget_after`
    /// before `now`; returns how many suspects that cleared.
    pub fn expire(&mut self, now: T) -> usize {
        let horizon = self.cfg.forget_after;
        let before = self.suspects().count();
        self.nodes
            .retain(|_, s| s.newest().is_some_and(|t| t + horizon > now));
        before - self.suspects().count()
    }

    /// Keeps only nodes `keep` accepts (call with the new topology's
    /// membership when it changes).
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.nodes.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| {
                let mut b = [9u8; 32];
                b[0] = i as u8;
                IdentityKeypair::from_secret_bytes(&b).node_id()
            })
            .collect()
    }

    fn est(k: f64, blame: Blame) -> LivenessEstimator<Duration> {
        LivenessEstimator::new(EstimatorConfig {
            suspect_after: k,
            blame,
            ..EstimatorConfig::default()
        })
    }

    /// 3 layers × 2 mixes; probes every 0.25 s over seeded random routes,
    /// their fate known 5 s later; mix `dead` drops everything.
    fn run_3x2(
        blame: Blame,
        dead: usize,
        probes: usize,
    ) -> (LivenessEstimator<Duration>, Vec<NodeId>) {
        let mixes = ids(6);
        let mut e = est(DEFAULT_SUSPECT_AFTER, blame);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut pending: std::collections::VecDeque<(Duration, Vec<NodeId>)> = Default::default();
        for i in 0..probes {
            let now = secs(i as f64 * 0.25);
            let route: Vec<NodeId> = (0..3)
                .map(|l| mixes[l * 2 + rng.random_range(0..2usize)])
                .collect();
            // Returns are known at once, losses after the 5 s timeout.
            if route.contains(&mixes[dead]) {
                pending.push_back((now, route));
            } else {
                e.on_returned(&route, now);
            }
            while pending
                .front()
                .is_some_and(|(sent, _)| *sent + secs(5.0) <= now)
            {
                if let Some((sent, r)) = pending.pop_front() {
                    e.on_lost(&r, sent);
                }
            }
        }
        (e, mixes)
    }

    #[test]
    fn a_dead_mix_is_suspected_and_nobody_else() {
        for blame in [Blame::Whole, Blame::Split] {
            for dead in 0..6 {
                let (e, mixes) = run_3x2(blame, dead, 400);
                assert!(e.is_suspect(&mixes[dead]), "{blame:?} dead {dead}");
                let others: Vec<_> = e.suspects().filter(|id| *id != mixes[dead]).collect();
                assert!(others.is_empty(), "{blame:?} dead {dead}: {others:?}");
            }
        }
    }

    #[test]
    fn one_return_clears_a_suspect() {
        let n = ids(3);
        let mut e = est(2.0, Blame::Whole);
        e.on_lost(&n, secs(1.0));
        assert!(!e.is_suspect(&n[0]));
        e.on_lost(&n, secs(2.0));
        assert!(n.iter().all(|id| e.is_suspect(id)));
        assert_eq!(e.suspects().count(), 3);
        e.on_returned(&n[..1], secs(3.0));
        assert!(!e.is_suspect(&n[0]));
        assert_eq!(e.charge_of(&n[0]), 0.0);
        assert!(e.is_suspect(&n[1]));
    }

    #[test]
    fn a_stale_return_does_not_clear_younger_evidence() {
        let n = ids(1);
        let mut e = est(1.0, Blame::Whole);
        assert!(e.on_link_failure(n[0], secs(10.0)));
        // A probe sent before the failure comes back afterwards.
        e.on_returned(&n, secs(9.0));
        assert!(e.is_suspect(&n[0]));
        e.on_returned(&n, secs(11.0));
        assert!(!e.is_suspect(&n[0]));
    }

    #[test]
    fn a_loss_older_than_a_return_is_not_charged() {
        let n = ids(3);
        let mut e = est(1.0, Blame::Whole);
        e.on_returned(&n[..2], secs(5.0));
        // Lost probe sent at 4 s: nodes 0 and 1 were seen up since; only 2 is charged.
        assert_eq!(e.on_lost(&n, secs(4.0)), 1);
        assert!(e.is_suspect(&n[2]));
        assert!(!e.is_suspect(&n[0]) && !e.is_suspect(&n[1]));
        // Every node seen up since: nobody charged.
        e.on_returned(&n, secs(6.0));
        assert_eq!(e.on_lost(&n, secs(5.5)), 0);
        assert!(e.suspects().next().is_none());
    }

    #[test]
    fn a_suspect_explains_away_losses_of_its_route_mates() {
        let n = ids(3);
        let mut e = est(2.0, Blame::Whole);
        e.on_link_failure(n[0], secs(0.0));
        e.on_link_failure(n[0], secs(0.1));
        assert!(e.is_suspect(&n[0]));
        for i in 0..10 {
            assert_eq!(e.on_lost(&n, secs(1.0 + i as f64)), 0);
        }
        assert_eq!(e.charge_of(&n[1]), 0.0);
        assert!(!e.is_suspect(&n[1]) && !e.is_suspect(&n[2]));
    }

    #[test]
    fn split_blame_charges_the_only_unexplained_node_in_full() {
        let n = ids(3);
        let mut e = est(1.0, Blame::Split);
        e.on_lost(&n, secs(1.0));
        assert!((e.charge_of(&n[0]) - 1.0 / 3.0).abs() < 1e-12);
        e.on_lost(&n, secs(2.0));
        e.on_lost(&n, secs(3.0));
        assert!(n.iter().all(|id| e.is_suspect(id)), "three thirds make one");
        let mut e = est(1.0, Blame::Split);
        e.on_returned(&n[1..], secs(5.0));
        e.on_lost(&n, secs(4.0));
        assert!(e.is_suspect(&n[0]));
    }

    #[test]
    fn state_is_bounded() {
        let n = ids(20);
        let mut e = LivenessEstimator::new(EstimatorConfig {
            max_nodes: 8,
            forget_after: secs(60.0),
            ..EstimatorConfig::default()
        });
        for (i, id) in n.iter().enumerate() {
            e.on_returned(&[*id], secs(i as f64));
        }
        assert_eq!(e.len(), 8);
        // The oldest were dropped.
        assert!(e.charge_of(&n[0]) == 0.0 && !e.is_suspect(&n[0]));
        e.retain(|id| n[..15].contains(id));
        assert_eq!(e.len(), 3);
        e.on_link_failure(n[14], secs(20.0));
        assert!(e.is_suspect(&n[14]));
        assert_eq!(e.expire(secs(70.0)), 0);
        assert_eq!(e.len(), 3);
        assert_eq!(e.expire(secs(80.0)), 1);
        assert!(e.is_empty());
    }
}
