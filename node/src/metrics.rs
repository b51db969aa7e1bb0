//! The node's Prometheus metrics, all prefixed `loopmix_`, in one registry
//! per node. `docs/OPERATING.md`-level meaning is in the help strings.

use loopmix_net::metrics::{MetricError, counter, counter_vec, float_gauge, gauge, histogram};
use loopmix_net::transport::egress::EgressMetrics;
use std::sync::{Arc, Mutex};

use loopmix_net::routing::RoutingView;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

/// Every `reason` the drop counter uses; pre-registered so dashboards see 0s.
pub const DROP_REASONS: &[&str] = &[
    "replay",
    "malformed",
    "unknown_key",
    "unknown_next_hop",
    "unexpected_final_hop",
    "overload",
    "rate_limited",
    "link_down",
    "late",
    "shutdown",
    "unknown_destination",
    "inbox_full",
    "storage",
    "fault_injected",
];

pub const REFUSAL_REASONS: &[&str] = &[
    "unknown_peer_key",
    "bad_peer_key",
    "server_key_mismatch",
    "too_many_clients",
];

#[derive(Clone)]
pub struct NodeMetrics {
    pub registry: Registry,
    /// Liveness gauges and the route-choice view (`crate::liveness`).
    pub routing: Arc<Mutex<RoutingView>>,
    pub received: IntCounter,
    pub forwarded: IntCounter,
    pub dropped: IntCounterVec,
    pub malformed_frames: IntCounterVec,
    pub ingress_queue: IntGauge,
    /// Peers that had packets dropped as `rate_limited` in the last
    /// limiter interval (10 s).
    pub rate_limited_peers: IntGauge,
    /// Entries in the per-peer rate limiters after forgetting idle ones.
    pub rate_limiter_keys: IntGauge,
    pub delay_queue: IntGauge,
    /// Loopix Eq. 5 entropy of this node's own delay queue (mean per output
    /// over the last window), from `loopmix_core::mixing::entropy`.
    pub entropy_bits: Gauge,
    /// Time-averaged delay-queue (pool) size over the last window.
    pub pool_size_mean: Gauge,
    pub sphinx_seconds: Histogram,
    pub hop_delay_error: Histogram,
    pub delay_clamped: IntCounter,
    pub cover_sent: IntCounter,
    pub cover_returned: IntCounter,
    pub cover_lost: IntCounter,
    pub loop_return_ratio: Gauge,
    pub loop_rtt: Histogram,
    pub refused: IntCounterVec,
    pub topology_epoch: IntGauge,
    pub topology_updates: IntCounter,
    pub topology_rejected: IntCounter,
    pub replay_fill: Gauge,
    pub registration_failures: IntCounter,
    pub registered_epoch: IntGauge,
    pub listed: IntGauge,
    pub sphinx_keys: IntGauge,
    pub delivery_queue: IntGauge,
    /// Final-hop packet queued for storing → durably stored.
    pub store_seconds: Histogram,
    pub delivered: IntCounter,
    pub acks_sent: IntCounter,
    pub acks_failed: IntCounter,
    pub cover_drops_received: IntCounter,
    pub inbox_clients: IntGauge,
    pub inbox_messages: IntGauge,
    pub inbox_bytes: IntGauge,
    pub inbox_expired: IntCounter,
    pub egress: EgressMetrics,
}

impl NodeMetrics {
    pub fn new() -> Result<Self, MetricError> {
        let r = Registry::new();
        let dropped = counter_vec(
            &r,
            "loopmix_packets_dropped_total",
            "Packets dropped, by reason",
            &["reason"],
        )?;
        for reason in DROP_REASONS {
            dropped.with_label_values(&[reason]);
        }
        let refused = counter_vec(
            &r,
            "loopmix_connections_refused_total",
            "QUIC handshakes refused because the peer key is not pinned",
            &["reason"],
        )?;
        for reason in REFUSAL_REASONS {
            refused.with_label_values(&[reason]);
        }
        let malformed_frames = counter_vec(
            &r,
            "loopmix_malformed_frames_total",
            "Frames that failed to decode, by error",
            &["error"],
        )?;
        for e in ["bad_preamble", "unknown_kind", "wrong_size"] {
            malformed_frames.with_label_values(&[e]);
        }
        let egress = EgressMetrics {
            sent: counter(
                &r,
                "loopmix_egress_packets_sent_total",
                "Packets written to next-hop streams",
            )?,
            dropped: dropped.clone(),
            links_up: gauge(
                &r,
                "loopmix_egress_links_up",
                "Next-hop links currently connected",
            )?,
        };
        Ok(Self {
            received: counter(
                &r,
                "loopmix_packets_received_total",
                "Sphinx frames received from peers",
            )?,
            forwarded: counter(
                &r,
                "loopmix_packets_forwarded_total",
                "Packets handed to a next-hop link after their delay",
            )?,
            ingress_queue: gauge(
                &r,
                "loopmix_ingress_queue_length",
                "Packets waiting for a Sphinx worker",
            )?,
            rate_limited_peers: gauge(
                &r,
                "loopmix_ingress_rate_limited_peers",
                "Peers (nodes or clients) over their per-peer rate limit in the last 10 s \
                 (their excess is dropped with reason rate_limited)",
            )?,
            rate_limiter_keys: gauge(
                &r,
                "loopmix_ingress_rate_limiter_keys",
                "Peers the per-peer rate limiters hold state for (idle ones are forgotten every 10 s)",
            )?,
            delay_queue: gauge(
                &r,
                "loopmix_delay_queue_length",
                "Packets held for their header delay",
            )?,
            entropy_bits: float_gauge(
                &r,
                "loopmix_node_entropy_bits",
                "Shannon entropy (bits) of the input->output link of this node's delay queue, \
                 Loopix Eq. 5, mean per departure over the last window; more is more anonymity",
            )?,
            pool_size_mean: float_gauge(
                &r,
                "loopmix_node_pool_size_mean",
                "Time-averaged number of packets held for their delay over the last window \
                 (a Poisson mix averages lambda/mu)",
            )?,
            sphinx_seconds: histogram(
                &r,
                "loopmix_sphinx_processing_seconds",
                "Time to unwrap one Sphinx layer (including replay check)",
                vec![
                    25e-6, 50e-6, 75e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 5e-3,
                ],
            )?,
            hop_delay_error: histogram(
                &r,
                "loopmix_hop_delay_error_seconds",
                "Realised minus intended holding time of forwarded packets",
                vec![
                    1e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
                ],
            )?,
            delay_clamped: counter(
                &r,
                "loopmix_delay_clamped_total",
                "Packets whose header delay exceeded max_delay and was clamped",
            )?,
            cover_sent: counter(
                &r,
                "loopmix_cover_loops_sent_total",
                "Loop cover packets sent",
            )?,
            cover_returned: counter(
                &r,
                "loopmix_cover_loops_returned_total",
                "Loop cover packets that came back",
            )?,
            cover_lost: counter(
                &r,
                "loopmix_cover_loops_lost_total",
                "Loop cover packets not back in time",
            )?,
            loop_return_ratio: float_gauge(
                &r,
                "loopmix_cover_loop_return_ratio",
                "Returned / resolved over the last 200 loops; a drop signals an (n-1) attack or a dead hop",
            )?,
            loop_rtt: histogram(
                &r,
                "loopmix_cover_loop_rtt_seconds",
                "Round-trip time of returned loops",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            )?,
            topology_epoch: gauge(
                &r,
                "loopmix_topology_epoch",
                "Epoch of the topology in force",
            )?,
            topology_updates: counter(
                &r,
                "loopmix_topology_updates_total",
                "Topology documents adopted",
            )?,
            topology_rejected: counter(
                &r,
                "loopmix_topology_rejected_total",
                "Topology documents refused (the last valid one stays in force)",
            )?,
            replay_fill: float_gauge(
                &r,
                "loopmix_replay_cache_fill_ratio",
                "Replay tags stored / designed capacity for the newest key (above 1 the FP rate rises)",
            )?,
            registration_failures: counter(
                &r,
                "loopmix_node_registration_failures_total",
                "Registration rounds for an epoch that no authority accepted (the node will not be listed unless a retry succeeds)",
            )?,
            registered_epoch: gauge(
                &r,
                "loopmix_node_registered_epoch",
                "Newest epoch this node's descriptor was accepted for",
            )?,
            listed: gauge(
                &r,
                "loopmix_node_listed",
                "1 if the topology in force lists this node with its current Sphinx key, else 0 (no traffic reaches it)",
            )?,
            sphinx_keys: gauge(
                &r,
                "loopmix_node_sphinx_keys",
                "Sphinx keys held (previous epoch during the overlap, current, registered upcoming ones)",
            )?,
            delivery_queue: gauge(
                &r,
                "loopmix_provider_delivery_queue_length",
                "Final-hop packets waiting to be stored in an inbox",
            )?,
            store_seconds: histogram(
                &r,
                "loopmix_provider_store_seconds",
                "Time from a final-hop packet's Sphinx processing to its durable storage in an inbox (delivery queue and group commit)",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            )?,
            delivered: counter(
                &r,
                "loopmix_provider_delivered_total",
                "Final-hop packets durably stored in a client's inbox",
            )?,
            acks_sent: counter(
                &r,
                "loopmix_provider_acks_sent_total",
                "SURB-ACKs sent after a data packet was stored",
            )?,
            acks_failed: counter(
                &r,
                "loopmix_provider_acks_failed_total",
                "SURB-ACKs that could not be used or queued (malformed, unknown first hop, link down)",
            )?,
            cover_drops_received: counter(
                &r,
                "loopmix_provider_drop_cover_received_total",
                "Drop cover packets that ended here, as designed",
            )?,
            inbox_clients: gauge(
                &r,
                "loopmix_provider_inbox_clients",
                "Registered clients (inboxes) at this provider",
            )?,
            inbox_messages: gauge(
                &r,
                "loopmix_provider_inbox_messages",
                "Messages stored in all inboxes, not yet confirmed by their clients",
            )?,
            inbox_bytes: gauge(
                &r,
                "loopmix_provider_inbox_bytes",
                "Bytes stored in all inboxes",
            )?,
            inbox_expired: counter(
                &r,
                "loopmix_provider_inbox_expired_total",
                "Messages deleted unread after provider.inbox_max_age",
            )?,
            dropped,
            malformed_frames,
            refused,
            egress,
            routing: Arc::new(Mutex::new(RoutingView::new(&r)?)),
            registry: r,
        })
    }
}

#[cfg(test)]
mod entropy_gauge_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use loopmix_core::mixing::entropy::MixEntropy;
    use std::time::{Duration, Instant};

    #[test]
    fn entropy_and_pool_gauges_are_exported() {
        let m = NodeMetrics::new().unwrap();
        // As the delay stage does: two packets pooled, one leaves.
        let t0 = Instant::now();
        let mut e: MixEntropy<Instant> = MixEntropy::new();
        e.arrive(t0);
        e.arrive(t0);
        e.depart(t0 + Duration::from_secs(1));
        let w = e.take_window(t0 + Duration::from_secs(2));
        m.entropy_bits.set(w.mean_entropy_bits.unwrap());
        m.pool_size_mean.set(w.mean_pool_size.unwrap());
        let text = loopmix_net::metrics::render(&m.registry);
        assert!(text.contains("loopmix_node_entropy_bits 1\n"), "{text}");
        assert!(text.contains("loopmix_node_pool_size_mean 1.5\n"), "{text}");
    }
}
