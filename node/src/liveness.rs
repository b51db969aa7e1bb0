//! What a node knows about which nodes are down, and how it routes with it.
//!
//! * **The network's signed list** (`DirectoryClient::follow_liveness`,
//!   k-of-n like the topology): applied to the node's route choice — its
//!   loop cover — through [`RoutingView`], exactly as clients apply it.
//!   Forwarding is not affected: a packet whose sender chose a listed-down
//!   next hop is still forwarded there (the sender decided, and the list
//!   may be a few seconds behind).
//! * **Its own evidence**: returned and lost loops, and failed connections
//!   to next hops, feed a [`LivenessEstimator`]. A mix has no
//!   retransmissions to steer, so this only shows in
//!   `loopmix_liveness_suspect{node}` for the operator: it is the mix's
//!   view of its neighbours, which the authorities' probes do not see.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use loopmix_core::keys::NodeId;
use loopmix_core::liveness::{EstimatorConfig, LivenessEstimator};
use loopmix_core::topology::Topology;
use loopmix_net::directory::DirectoryClient;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::pipeline::NodeContext;

/// The route of a loop, for the estimator.
pub type RouteIds = Box<[NodeId]>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's liveness state (see the module docs).
pub struct NodeLiveness {
    estimator: Mutex<LivenessEstimator<Instant>>,
    /// The signed list in force: down nodes and its round (0: none).
    network: Mutex<(BTreeSet<NodeId>, u64)>,
}

impl Default for NodeLiveness {
    fn default() -> Self {
        Self {
            estimator: Mutex::new(LivenessEstimator::new(EstimatorConfig::default())),
            network: Mutex::new((BTreeSet::new(), 0)),
        }
    }
}

impl NodeLiveness {
    pub fn returned(&self, route: &[NodeId], sent: Instant) {
        lock(&self.estimator).on_returned(route, sent);
    }

    pub fn lost(&self, route: &[NodeId], sent: Instant) {
        lock(&self.estimator).on_lost(route, sent);
    }

    pub fn link_failed(&self, node: NodeId) {
        lock(&self.estimator).on_link_failure(node, Instant::now());
    }

    fn suspects(&self, now: Instant) -> Vec<NodeId> {
        let mut e = lock(&self.estimator);
        e.expire(now);
        e.suspects().collect()
    }

    fn forget_unlisted(&self, t: &Topology) {
        lock(&self.estimator).retain(|id| t.contains(id));
    }

    /// The network's list in force: (down, round).
    pub fn network(&self) -> (BTreeSet<NodeId>, u64) {
        lock(&self.network).clone()
    }

    fn set_network(&self, down: BTreeSet<NodeId>, round: u64) -> bool {
        let mut n = lock(&self.network);
        if n.1 == round && n.0 == down {
            return false;
        }
        *n = (down, round);
        true
    }
}

/// `topology` with the network's list applied: what [`NodeContext`] routes
/// loops with. Every topology the node adopts goes through here.
pub fn routed(shared: &NodeContext, topology: &Topology) -> Topology {
    shared.liveness.forget_unlisted(topology);
    let (down, round) = shared.liveness.network();
    lock(&shared.metrics.routing).apply(topology, &down, round)
}

/// Applies the authorities' signed liveness list (kept current by
/// `DirectoryClient::follow_liveness`) until `cancel`: each new round, and
/// the expiry of the last one, reaches route choice; and exports the
/// node's own suspects.
pub async fn follow(
    dir: Arc<DirectoryClient>,
    shared: Arc<NodeContext>,
    cancel: CancellationToken,
) {
    let mut rx = dir.subscribe_liveness();
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            _ = every.tick() => {}
        }
        let (down, round) = dir
            .liveness()
            .map(|l| (l.down().clone(), l.round()))
            .unwrap_or_default();
        if shared.liveness.set_network(down, round) {
            let t = routed(&shared, &shared.topology());
            shared.set_topology(t);
            debug!(round, "liveness list applied to loop routes");
        }
        let suspects = shared.liveness.suspects(Instant::now());
        lock(&shared.metrics.routing).set_suspects(&suspects);
    }
}
