//! The authority's Prometheus metrics (its own registry: several
//! authorities may share one test process).

use loopmix_net::metrics::{self as m, MetricError};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

pub struct AuthorityMetrics {
    pub registrations: IntCounterVec,
    pub built: IntCounter,
    pub build_failures: IntCounter,
    pub peer_failures: IntCounterVec,
    pub signature_mismatches: IntCounterVec,
    pub mirrored: IntCounter,
    pub published_epoch: IntGauge,
    pub signatures: IntGauge,
    /// Status page (`/`) views by result: served, rate_limited, error.
    pub status_page: IntCounterVec,
}

impl AuthorityMetrics {
    pub(super) fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            registrations: m::counter_vec(
                r,
                "loopmix_authority_registrations_total",
                "Descriptor registrations by result (created, replaced, unchanged, or the refusal code)",
                &["result"],
            )?,
            built: m::counter(
                r,
                "loopmix_authority_documents_built_total",
                "Topology documents built and signed by this authority",
            )?,
            build_failures: m::counter(
                r,
                "loopmix_authority_build_failures_total",
                "Epochs for which no valid document could be built (e.g. a layer without mixes)",
            )?,
            peer_failures: m::counter_vec(
                r,
                "loopmix_authority_peer_failures_total",
                "Failed requests to peer authorities, by peer key",
                &["peer"],
            )?,
            signature_mismatches: m::counter_vec(
                r,
                "loopmix_authority_signature_mismatches_total",
                "Peer signatures that do not verify over this authority's document (the peer built different bytes)",
                &["peer"],
            )?,
            mirrored: m::counter(
                r,
                "loopmix_authority_documents_mirrored_total",
                "k-signed peer documents adopted because this authority's own did not reach k",
            )?,
            published_epoch: m::gauge(
                r,
                "loopmix_authority_published_epoch",
                "Newest epoch with a published (k-signed) document",
            )?,
            signatures: m::gauge(
                r,
                "loopmix_authority_document_signatures",
                "Valid signatures on the newest document this authority holds",
            )?,
            status_page: m::counter_vec(
                r,
                "loopmix_authority_status_page_views_total",
                "Status page (/) requests by result: served, rate_limited, error",
                &["result"],
            )?,
        })
    }
}
