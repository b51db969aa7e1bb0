//! The topology routes are drawn from: the topology in force with the
//! network's signed liveness list applied, and the metrics that show it.
//!
//! Clients and nodes call [`RoutingView::apply`] whenever the topology or
//! the liveness list changes (or the list expires): it returns the
//! [`Topology`] to build packets with, whose `random_mix_path` leaves out
//! the mixes the authorities listed down, within the per-layer cap
//! ([`MAX_EXCLUDED_FRACTION`]; beyond it that layer is routed uniformly and
//! this logs once and shows it in `loopmix_liveness_fallback_layers`).
//!
//! Every process that routes shows the same gauges, so an operator can see
//! what each one applied:
//! * `loopmix_liveness_down{node}` — 1 for every node the applied list
//!   names (providers included), 0 for every other node of the topology;
//!   the label set is the topology, series of nodes that left are removed;
//! * `loopmix_liveness_excluded` — mixes left out of route choice;
//! * `loopmix_liveness_fallback_layers` — layers routed uniformly because
//!   more than the cap was listed down;
//! * `loopmix_liveness_round` — round of the list applied (0: none valid);
//! * `loopmix_liveness_suspect{node}` — 1 for nodes this process's own
//!   probes (loops, acks, failed connections) say are down: local evidence,
//!   which never changes first-attempt routes;
//! * `loopmix_liveness_transitions_total{direction}` — nodes that went
//!   from listed up to down and back, as this process saw them.

use std::collections::BTreeSet;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::metrics::{self as m, MetricError};
use loopmix_core::keys::NodeId;
use loopmix_core::topology::{MAX_EXCLUDED_FRACTION, Topology};

/// Per-node liveness gauges and route-exclusion counts of one process.
pub struct RoutingView {
    down: IntGaugeVec,
    suspect: IntGaugeVec,
    excluded: IntGauge,
    fallback_layers: IntGauge,
    round: IntGauge,
    transitions: IntCounterVec,
    /// Label values currently exported (the topology's node ids).
    labelled: BTreeSet<NodeId>,
    /// The down set last applied, to count transitions and log changes.
    last_down: BTreeSet<NodeId>,
    /// Layers in fallback at the last apply, to log changes once.
    last_fallback: Vec<u8>,
}

impl RoutingView {
    pub fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            down: m::gauge_vec(
                r,
                "loopmix_liveness_down",
                "1 if the network's signed liveness list applied by this process names the node down (label set: the topology's nodes)",
                &["node"],
            )?,
            suspect: m::gauge_vec(
                r,
                "loopmix_liveness_suspect",
                "1 if this process's own loops, acks or connection failures say the node is down (local evidence; label set: the topology's nodes)",
                &["node"],
            )?,
            excluded: m::gauge(
                r,
                "loopmix_liveness_excluded",
                "Mixes left out of route choice because the signed liveness list names them down",
            )?,
            fallback_layers: m::gauge(
                r,
                "loopmix_liveness_fallback_layers",
                "Layers routed uniformly because more than the cap of their mixes were listed down",
            )?,
            round: m::gauge(
                r,
                "loopmix_liveness_round",
                "Round of the signed liveness list applied (0: none valid)",
            )?,
            transitions: m::counter_vec(
                r,
                "loopmix_liveness_transitions_total",
                "Nodes that the applied liveness list moved to down or back up",
                &["direction"],
            )?,
            labelled: BTreeSet::new(),
            last_down: BTreeSet::new(),
            last_fallback: Vec::new(),
        })
    }

    /// The topology to route with: `topology` less the mixes in `down`
    /// (the verified list's node ids; `round` 0 when no valid list is
    /// held, i.e. route uniformly).
    pub fn apply(&mut self, topology: &Topology, down: &BTreeSet<NodeId>, round: u64) -> Topology {
        let t = topology.with_exclusions(down, MAX_EXCLUDED_FRACTION);
        // Gauges: exactly the topology's nodes.
        let ids: BTreeSet<NodeId> = topology.nodes().iter().map(|n| n.id).collect();
        for gone in self.labelled.difference(&ids) {
            let _ = self.down.remove_label_values(&[&gone.to_string()]);
            let _ = self.suspect.remove_label_values(&[&gone.to_string()]);
        }
        for id in &ids {
            let listed = i64::from(down.contains(id));
            self.down.with_label_values(&[&id.to_string()]).set(listed);
        }
        self.labelled = ids;
        let listed: BTreeSet<NodeId> = down
            .iter()
            .filter(|id| topology.contains(id))
            .copied()
            .collect();
        for id in listed.difference(&self.last_down) {
            self.transitions.with_label_values(&["down"]).inc();
            tracing::warn!(node = %id, address = ?topology.get(id).map(|n| n.address), "the network lists node down; routing around it");
        }
        for id in self.last_down.difference(&listed) {
            self.transitions.with_label_values(&["up"]).inc();
            tracing::info!(node = %id, "the network lists node up again");
        }
        self.last_down = listed;
        let fallback: Vec<u8> = t
            .exclusions()
            .iter()
            .filter(|e| e.fallback)
            .map(|e| e.layer)
            .collect();
        if fallback != self.last_fallback {
            for e in t.exclusions().iter().filter(|e| e.fallback) {
                tracing::warn!(
                    layer = e.layer,
                    listed_down = e.listed_down,
                    mixes = e.mixes,
                    "more of this layer listed down than the cap allows; routing it uniformly"
                );
            }
            self.last_fallback = fallback;
        }
        self.excluded.set(t.excluded().len() as i64);
        self.fallback_layers.set(self.last_fallback.len() as i64);
        self.round.set(i64::try_from(round).unwrap_or(i64::MAX));
        t
    }

    /// Exports this process's local suspects (nodes outside the topology
    /// last applied are ignored, keeping the label set bounded).
    pub fn set_suspects<'a>(&self, suspects: impl IntoIterator<Item = &'a NodeId>) {
        let s: BTreeSet<&NodeId> = suspects.into_iter().collect();
        for id in &self.labelled {
            self.suspect
                .with_label_values(&[&id.to_string()])
                .set(i64::from(s.contains(id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopmix_core::keys::IdentityKeypair;
    use loopmix_core::testing::sample_doc;

    #[test]
    fn gauges_follow_the_list_and_the_topology() {
        let r = Registry::new();
        let mut v = RoutingView::new(&r).unwrap();
        let t = Topology::new(sample_doc(2, 3)).unwrap();
        let dead = t.layer(2).next().unwrap().id;
        let routed = v.apply(&t, &BTreeSet::from([dead]), 7);
        assert!(routed.is_excluded(&dead));
        let text = m::render(&r);
        assert!(text.contains(&format!("loopmix_liveness_down{{node=\"{dead}\"}} 1")));
        assert!(text.contains("loopmix_liveness_excluded 1"));
        assert!(text.contains("loopmix_liveness_round 7"));
        assert!(text.contains("loopmix_liveness_transitions_total{direction=\"down\"} 1"));
        let stranger = IdentityKeypair::generate().node_id();
        v.set_suspects([&dead, &stranger]);
        let text = m::render(&r);
        assert!(text.contains(&format!("loopmix_liveness_suspect{{node=\"{dead}\"}} 1")));
        assert!(
            !text.contains(&stranger.to_string()),
            "bounded by the topology"
        );
        // Back up; then a new topology without that node drops its series.
        v.apply(&t, &BTreeSet::new(), 8);
        assert!(m::render(&r).contains("direction=\"up\"} 1"));
        let other = Topology::new(sample_doc(2, 3)).unwrap();
        v.apply(&other, &BTreeSet::new(), 9);
        assert!(!m::render(&r).contains(&dead.to_string()));
        assert_eq!(
            m::render(&r).matches("loopmix_liveness_down{").count(),
            other.nodes().len()
        );
    }
}
