//! Fixtures for tests in this crate and the crates above it (feature
//! `testing`, never in a release build): small valid documents with fresh
//! keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::keys::{IdentityKeypair, SphinxKeypair};
use crate::pki::{DOCUMENT_VERSION, EpochDocument};
use crate::topology::{NetworkParams, NodeEntry, Role, TopologyDocument};

/// A topology of `layers` layers with `mixes_per_layer` fresh mixes each.
pub fn sample_doc(mixes_per_layer: usize, layers: u8) -> TopologyDocument {
    let mut nodes = Vec::new();
    let mut port = 10_000;
    for l in 1..=layers {
        for _ in 0..mixes_per_layer {
            port += 1;
            nodes.push(NodeEntry {
                id: IdentityKeypair::generate().node_id(),
                sphinx_key: SphinxKeypair::generate().public(),
                address: format!("127.0.0.1:{port}").parse().unwrap(),
                role: Role::Mix,
                layer: Some(l),
            });
        }
    }
    TopologyDocument {
        params: NetworkParams {
            epoch: 1,
            layers,
            mean_hop_delay_ms: 50.0,
            lambda_p_per_s: 2.0,
            lambda_l_per_s: 1.0,
            lambda_d_per_s: 1.0,
            lambda_m_per_s: 1.0,
            payload_size: 1024,
        },
        nodes,
    }
}

/// An epoch document around [`sample_doc`]`(2, 3)` valid in
/// `[valid_from, valid_until)`.
pub fn epoch_doc(valid_from: u64, valid_until: u64) -> EpochDocument {
    EpochDocument {
        version: DOCUMENT_VERSION,
        valid_from,
        valid_until,
        epoch_length_s: 60,
        topology: sample_doc(2, 3),
    }
}
