//! The engine's own liveness evidence (docs/ARCHITECTURE.md, "Liveness").
//!
//! Every loop and every SURB-ACK'd data packet is a probe whose route we
//! chose: when it comes back, every node on its route(s) was up; when it
//! does not come back in time, that counts against all of them. The
//! [`LivenessEstimator`] combines the overlapping routes into a set of
//! *suspects*.
//!
//! What this local evidence may decide: only which mixes a
//! **retransmission** avoids. New routes, SURB-ACK routes and reply blocks
//! follow the network's signed down list alone (applied to the topology),
//! which every client shares; were local evidence to steer first attempts,
//! whoever drops one client's packets could make its routes differ from
//! everyone else's — a fingerprint, and a lever to steer it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::keys::NodeId;
use crate::liveness::{EstimatorConfig, LivenessEstimator};
use crate::mixing::loops::LoopTracker;
use crate::topology::Topology;

use super::build::{RouteIds, mean_delay};

/// SURB-ACK probes awaiting their ack at most (the oldest counts as lost).
const ACK_PROBE_LIMIT: usize = 4096;

/// How long past the expected delays a probe may take before it counts
/// as lost: scheduling, the provider's storage, and slack.
const PROBE_SLACK: Duration = Duration::from_secs(2);

/// Loops and SURB-ACKs in flight, and what their fates say.
pub(super) struct Probes {
    /// Our loops; the return ratio over the last 100 is a metric.
    pub loops: LoopTracker<Instant, RouteIds>,
    acks: LoopTracker<Instant, RouteIds>,
    estimator: LivenessEstimator<Instant>,
    /// Snapshot of the estimator's suspects, rebuilt when evidence comes
    /// in, so building a retransmission does not allocate.
    suspects: HashSet<NodeId>,
    loop_limit: Duration,
    pull_interval: Duration,
}

impl Probes {
    pub fn new(loop_pending_limit: usize, loop_timeout: Duration, pull_interval: Duration) -> Self {
        Self {
            loops: LoopTracker::new(loop_pending_limit, loop_timeout, 100),
            acks: LoopTracker::new(ACK_PROBE_LIMIT, loop_timeout, 100),
            estimator: LivenessEstimator::new(EstimatorConfig::default()),
            suspects: HashSet::new(),
            loop_limit: loop_timeout,
            pull_interval,
        }
    }

    /// A new topology: probe timeouts follow its delays (a loop crosses
    /// layers + 2 delayed hops, a data packet and its ack 2·layers + 3), and
    /// evidence about nodes it no longer lists is forgotten.
    pub fn set_topology(&mut self, t: &Topology) {
        let hops = u32::from(t.params().layers);
        let timeout = |delays: u32| {
            mean_delay(t)
                .saturating_mul(3 * delays)
                .saturating_add(PROBE_SLACK)
                .saturating_add(self.pull_interval)
                .min(self.loop_limit)
        };
        self.loops.set_timeout(timeout(hops + 2));
        self.acks.set_timeout(timeout(2 * hops + 3));
        self.estimator.retain(|id| t.contains(id));
        self.refresh();
    }

    /// A loop left at `now`; returns how many older loops were evicted
    /// (and counted lost) to make room.
    pub fn loop_sent(&mut self, id: [u8; 16], route: RouteIds, now: Instant) -> usize {
        let evicted = self.loops.track(id, now, route);
        let n = evicted.len();
        self.lost(evicted);
        n
    }

    /// A loop came back: when it was sent, if it was ours.
    pub fn loop_returned(&mut self, id: &[u8; 16]) -> Option<Instant> {
        let (sent, route) = self.loops.returned_route(id)?;
        self.estimator.on_returned(&route, sent);
        self.refresh();
        Some(sent)
    }

    /// A data packet left at `now`; its SURB-ACK answers with `ack_id`.
    pub fn data_sent(&mut self, ack_id: [u8; 16], route: RouteIds, now: Instant) {
        let evicted = self.acks.track(ack_id, now, route);
        self.lost(evicted);
    }

    /// An ack arrived. Only a pending probe carries its route; a late or
    /// duplicate ack was already resolved.
    pub fn ack_in(&mut self, ack_id: &[u8; 16]) {
        if let Some((sent, route)) = self.acks.returned_route(ack_id) {
            self.estimator.on_returned(&route, sent);
            self.refresh();
        }
    }

    /// Timeouts; returns how many loops were lost.
    pub fn expire(&mut self, now: Instant) -> usize {
        let loops = self.loops.expire_routes(now);
        let n = loops.len();
        self.lost(loops);
        let acks = self.acks.expire_routes(now);
        self.lost(acks);
        if self.estimator.expire(now) > 0 {
            self.refresh();
        }
        n
    }

    fn lost(&mut self, probes: Vec<(Instant, RouteIds)>) {
        if probes.is_empty() {
            return;
        }
        // Oldest first: the estimator orders evidence by send time.
        for (sent, route) in &probes {
            self.estimator.on_lost(route, *sent);
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        self.suspects.clear();
        self.suspects.extend(self.estimator.suspects());
    }

    /// Nodes our own evidence says are down.
    pub fn suspects(&self) -> &HashSet<NodeId> {
        &self.suspects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{IdentityKeypair, SphinxKeypair};
    use crate::topology::{
        MAX_EXCLUDED_FRACTION, NetworkParams, NodeEntry, Role, TopologyDocument,
    };
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Two providers and 3 layers × 2 mixes, 50 ms per hop.
    fn topology() -> Topology {
        let mut nodes = Vec::new();
        for (i, layer) in [
            None,
            None,
            Some(1),
            Some(1),
            Some(2),
            Some(2),
            Some(3),
            Some(3),
        ]
        .into_iter()
        .enumerate()
        {
            nodes.push(NodeEntry {
                id: IdentityKeypair::generate().node_id(),
                sphinx_key: SphinxKeypair::generate().public(),
                address: format!("127.0.0.1:{}", 5000 + i).parse().unwrap(),
                role: if layer.is_some() {
                    Role::Mix
                } else {
                    Role::Provider
                },
                layer,
            });
        }
        let params = NetworkParams {
            epoch: 1,
            layers: 3,
            mean_hop_delay_ms: 50.0,
            lambda_p_per_s: 10.0,
            lambda_l_per_s: 1.0,
            lambda_d_per_s: 1.0,
            lambda_m_per_s: 1.0,
            payload_size: 1024,
        };
        Topology::new(TopologyDocument { params, nodes }).unwrap()
    }

    #[test]
    fn a_dead_mix_becomes_the_only_suspect_and_retransmissions_avoid_it() {
        let t = topology();
        let provider = t.providers().next().unwrap().id;
        let dead = t.layer(2).nth(1).unwrap().id;
        let mut p = Probes::new(1024, Duration::from_secs(60), Duration::from_millis(500));
        p.set_topology(&t);
        let mut rng = StdRng::seed_from_u64(3);
        let start = Instant::now();
        // One loop a second for a minute; those through the dead mix never
        // come back, the others return after 400 ms.
        for i in 0..60u64 {
            let now = start + Duration::from_secs(i);
            let mut route = vec![provider];
            route.extend(t.random_mix_path(&mut rng).iter().map(|n| n.id));
            route.push(provider);
            let through_dead = route.contains(&dead);
            let id = [i as u8; 16];
            p.loop_sent(id, route.into(), now);
            if !through_dead {
                assert!(p.loop_returned(&id).is_some());
            }
            p.expire(now);
        }
        assert_eq!(
            p.suspects().iter().copied().collect::<Vec<_>>(),
            vec![dead],
            "only the dead mix is suspected"
        );
        for _ in 0..100 {
            let r = t.random_mix_path_avoiding(&mut rng, p.suspects(), MAX_EXCLUDED_FRACTION);
            assert!(r.iter().all(|n| n.id != dead));
        }
        // One return through it clears it (it came back).
        let now = start + Duration::from_secs(61);
        let route: RouteIds = vec![provider, dead, provider].into();
        p.data_sent([200; 16], route, now);
        p.ack_in(&[200; 16]);
        assert!(p.suspects().is_empty());
    }

    #[test]
    fn probe_timeouts_follow_the_topology_and_stay_bounded() {
        let t = topology();
        let mut p = Probes::new(2, Duration::from_secs(60), Duration::from_millis(500));
        p.set_topology(&t);
        let now = Instant::now();
        let route: RouteIds = vec![t.nodes()[0].id].into();
        assert_eq!(p.loop_sent([1; 16], route.clone(), now), 0);
        p.loop_sent([2; 16], route.clone(), now);
        assert_eq!(
            p.loop_sent([3; 16], route, now),
            1,
            "oldest evicted as lost"
        );
        // 3 × 5 hops × 50 ms + 2 s + 500 ms = 3.25 s.
        assert_eq!(p.expire(now + Duration::from_millis(3200)), 0);
        assert_eq!(p.expire(now + Duration::from_millis(3300)), 2);
    }
}
