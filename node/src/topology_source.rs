//! Where the topology in force comes from, and what changes when it does.
//!
//! [`TopologySink::apply`] is the one place a new topology takes effect:
//! the pipeline's routing table, the QUIC allow-list, the links kept open,
//! and the frame size. Two sources feed it: a fixed file
//! ([`TopologyWatcher`], for closed test setups) and the directory
//! authorities (`crate::directory_sync`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use loopmix_core::keys::{NodeId, SphinxPublicKey};
use loopmix_core::mixing::processor::KeyRing;
use loopmix_core::topology::{Role, Topology};
use loopmix_net::transport::PeerAllowList;
use loopmix_net::transport::egress::Egress;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pipeline::NodeContext;

/// Checks that `topology` lists this node with our keys and role.
pub fn check_self(
    topology: &Topology,
    me: NodeId,
    sphinx: SphinxPublicKey,
    role: Role,
) -> Result<(), String> {
    let Some(entry) = topology.get(&me) else {
        return Err(format!("field `nodes`: this node ({me}) is not listed"));
    };
    if entry.sphinx_key != sphinx {
        return Err(format!(
            "field `sphinx_key` of node {me}: lists {}, but our key is {sphinx}",
            entry.sphinx_key
        ));
    }
    if entry.role != role {
        return Err(format!(
            "field `role` of node {me}: lists {}, but we are configured as {role}",
            entry.role
        ));
    }
    Ok(())
}

/// Applies a new topology to the running node.
#[derive(Clone)]
pub struct TopologySink {
    pub shared: Arc<NodeContext>,
    pub allowed: PeerAllowList,
    pub egress: Egress,
    pub packet_size: Arc<AtomicUsize>,
}

impl TopologySink {
    /// Routes with `topology` from now on. Links to nodes it no longer lists
    /// are closed, so they stop receiving traffic; packets already delayed
    /// for them are dropped as `unknown_next_hop`. The allow-list becomes
    /// the listed nodes plus `also_allowed` (neighbours of an adjacent epoch).
    pub fn apply(&self, topology: Topology, also_allowed: impl IntoIterator<Item = NodeId>) {
        let m = &self.shared.metrics;
        self.allowed
            .replace(topology.nodes().iter().map(|n| n.id).chain(also_allowed));
        self.egress.retain(|id| topology.contains(id));
        self.packet_size
            .store(topology.params().packet_size(), Ordering::Relaxed);
        m.topology_epoch.set(topology.epoch() as i64);
        m.topology_updates.inc();
        info!(
            epoch = topology.epoch(),
            nodes = topology.nodes().len(),
            "topology in force"
        );
        let routed = crate::liveness::routed(&self.shared, &topology);
        self.shared.set_topology(routed);
    }
}

fn file_mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the topology file at start; returns it with the modification time
/// taken *before* reading, so a rewrite racing with start-up is reloaded.
pub fn read_topology_file(
    path: &Path,
) -> Result<(Topology, Option<SystemTime>), loopmix_core::topology::TopologyError> {
    let mtime = file_mtime(path);
    Ok((Topology::from_file(path)?, mtime))
}

/// Re-reads the topology file when it changes. A document that does not
/// validate, or no longer lists this node with our key, is refused and the
/// last valid one stays in force.
pub struct TopologyWatcher {
    pub path: PathBuf,
    /// Modification time of the version in force.
    pub seen: Option<SystemTime>,
    pub interval: Duration,
    pub sink: TopologySink,
    pub keys: KeyRing,
    pub role: Role,
    pub cancel: CancellationToken,
}

impl TopologyWatcher {
    pub async fn run(self) {
        let mut seen = self.seen;
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(50)));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = file_mtime(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            self.reload();
        }
    }

    fn reload(&self) {
        let shared = &self.sink.shared;
        let refuse = |e: &dyn std::fmt::Display| {
            shared.metrics.topology_rejected.inc();
            warn!(file = %self.path.display(), error = %e, "topology update refused; keeping the last valid one");
        };
        let topology = match Topology::from_file(&self.path) {
            Ok(t) => t,
            Err(e) => return refuse(&e),
        };
        let Some(slot) = self.keys.slots().last().cloned() else {
            return;
        };
        if let Err(e) = check_self(&topology, shared.me, slot.key.public(), self.role) {
            return refuse(&e);
        }
        let (old_epoch, new_epoch) = (shared.topology().epoch(), topology.epoch());
        if new_epoch != old_epoch {
            // A static key across epochs keeps its one replay cache; packets
            // built for the previous epoch are still accepted (overlap).
            self.keys.alias(new_epoch, slot);
            self.keys.retain(|e| e == new_epoch || e == old_epoch);
        }
        self.sink.apply(topology, []);
    }
}
