//! The topology document: network-wide parameters and the node list.
//!
//! The same type is read from a JSON file (static testnets) and, signed, served
//! by the directory authorities. Parsing is strict (`deny_unknown_fields`) and
//! every semantic rule is checked in [`Topology::validate`], so a node never
//! runs on a half-understood document.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::keys::{NodeId, SphinxPublicKey};
use crate::sphinx::{HEADER_SIZE, MAX_PATH_LENGTH, PAYLOAD_OVERHEAD};

/// Sphinx routes are at most 5 hops and a client route is
/// `provider → L mixes → provider`, so at most 3 mix layers fit.
pub const MAX_LAYERS: u8 = (MAX_PATH_LENGTH - 2) as u8;

/// Network-wide parameters every node and client must share. Rates are
/// events per second; delays are milliseconds. Units are in the names on
/// purpose: a rate/mean mix-up is the classic Poisson-mixing bug.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkParams {
    /// Topology epoch this document describes.
    pub epoch: u64,
    /// Number of mix layers (L).
    pub layers: u8,
    /// Mean per-hop delay 1/μ, in milliseconds.
    pub mean_hop_delay_ms: f64,
    /// λ_P: client payload (real-or-drop) rate, packets per second.
    pub lambda_p_per_s: f64,
    /// λ_L: client loop cover rate, packets per second.
    pub lambda_l_per_s: f64,
    /// λ_D: client drop cover rate, packets per second.
    pub lambda_d_per_s: f64,
    /// λ_M: mix loop cover rate, packets per second.
    pub lambda_m_per_s: f64,
    /// Sphinx payload size in bytes (17 bytes of it are Sphinx overhead).
    /// Every packet on the wire is `348 + payload_size` bytes.
    pub payload_size: usize,
}

impl NetworkParams {
    /// Size of every Sphinx packet on the wire.
    pub fn packet_size(&self) -> usize {
        HEADER_SIZE + self.payload_size
    }

    /// Largest plaintext one packet carries.
    pub fn max_plaintext(&self) -> usize {
        self.payload_size - PAYLOAD_OVERHEAD
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mix,
    Provider,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Mix => "mix",
            Role::Provider => "provider",
        })
    }
}

/// One node as the topology lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Ed25519 identity key (base58): node id, Sphinx address and TLS pin.
    pub id: NodeId,
    /// X25519 Sphinx key for this epoch (base58).
    pub sphinx_key: SphinxPublicKey,
    /// Where the node accepts QUIC connections.
    pub address: SocketAddr,
    pub role: Role,
    /// Mix layer, 1-based; absent for providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u8>,
}

/// The document as it is written on disk or served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyDocument {
    pub params: NetworkParams,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("topology does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("topology field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TopologyError {
    TopologyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated topology with the indexes the hot path needs.
#[derive(Clone, Debug)]
pub struct Topology {
    doc: TopologyDocument,
    by_id: HashMap<NodeId, usize>,
    /// `layers[i]` holds indexes into `doc.nodes` of layer `i + 1`.
    layers: Vec<Vec<usize>>,
    providers: Vec<usize>,
}

impl Topology {
    pub fn from_json(bytes: &[u8]) -> Result<Self, TopologyError> {
        let doc: TopologyDocument = serde_json::from_slice(bytes)?;
        Self::new(doc)
    }

    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let bytes = std::fs::read(path).map_err(|source| TopologyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    pub fn new(doc: TopologyDocument) -> Result<Self, TopologyError> {
        Self::validate(&doc)?;
        let mut by_id = HashMap::new();
        let mut layers = vec![Vec::new(); doc.params.layers as usize];
        let mut providers = Vec::new();
        for (i, n) in doc.nodes.iter().enumerate() {
            by_id.insert(n.id, i);
            match (n.role, n.layer) {
                (Role::Mix, Some(l)) => layers[(l - 1) as usize].push(i),
                (Role::Provider, _) => providers.push(i),
                (Role::Mix, None) => {}
            }
        }
        Ok(Self {
            doc,
            by_id,
            layers,
            providers,
        })
    }

    /// Every rule a document must satisfy; the error names the field.
    pub fn validate(doc: &TopologyDocument) -> Result<(), TopologyError> {
        let p = &doc.params;
        if p.layers == 0 || p.layers > MAX_LAYERS {
            return Err(invalid(
                "params.layers",
                format!("must be 1..={MAX_LAYERS}, got {}", p.layers),
            ));
        }
        if !(p.mean_hop_delay_ms.is_finite() && p.mean_hop_delay_ms >= 0.0) {
            return Err(invalid(
                "params.mean_hop_delay_ms",
                "must be a finite number >= 0",
            ));
        }
        for (name, v) in [
            ("params.lambda_p_per_s", p.lambda_p_per_s),
            ("params.lambda_l_per_s", p.lambda_l_per_s),
            ("params.lambda_d_per_s", p.lambda_d_per_s),
            ("params.lambda_m_per_s", p.lambda_m_per_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(name, "must be a finite rate >= 0 (per second)"));
            }
        }
        // Lioness needs 32 bytes; the frame length field is a u16.
        let max_payload = u16::MAX as usize - HEADER_SIZE;
        if p.payload_size < 32 + PAYLOAD_OVERHEAD || p.payload_size > max_payload {
            return Err(invalid(
                "params.payload_size",
                format!("must be {}..={max_payload}", 32 + PAYLOAD_OVERHEAD),
            ));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut per_layer = vec![0usize; p.layers as usize];
        for (i, n) in doc.nodes.iter().enumerate() {
            let field = |f: &str| format!("nodes[{i}].{f}");
            if !ids.insert(n.id) {
                return Err(invalid(field("id"), format!("duplicate node id {}", n.id)));
            }
            if n.id.verifying_key().is_none() {
                return Err(invalid(field("id"), "not a valid Ed25519 public key"));
            }
            if !addrs.insert(n.address) {
                return Err(invalid(
                    field("address"),
                    format!("duplicate address {}", n.address),
                ));
            }
            if n.address.port() == 0 || n.address.ip().is_unspecified() {
                return Err(invalid(
                    field("address"),
                    format!("{} is not a reachable address", n.address),
                ));
            }
            match (n.role, n.layer) {
                (Role::Mix, Some(l)) if l >= 1 && l <= p.layers => per_layer[(l - 1) as usize] += 1,
                (Role::Mix, _) => {
                    return Err(invalid(
                        field("layer"),
                        format!("a mix needs a layer in 1..={}", p.layers),
                    ));
                }
                (Role::Provider, Some(_)) => {
                    return Err(invalid(field("layer"), "providers have no layer"));
                }
                (Role::Provider, None) => {}
            }
        }
        if let Some(empty) = per_layer.iter().position(|&c| c == 0) {
            return Err(invalid("nodes", format!("layer {} has no mix", empty + 1)));
        }
        Ok(())
    }

    pub fn document(&self) -> &TopologyDocument {
        &self.doc
    }

    pub fn params(&self) -> &NetworkParams {
        &self.doc.params
    }

    pub fn epoch(&self) -> u64 {
        self.doc.params.epoch
    }

    pub fn nodes(&self) -> &[NodeEntry] {
        &self.doc.nodes
    }

    pub fn get(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.by_id.get(id).map(|&i| &self.doc.nodes[i])
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Mixes of a 1-based layer.
    pub fn layer(&self, layer: u8) -> impl Iterator<Item = &NodeEntry> {
        let idx = (layer as usize)
            .checked_sub(1)
            .and_then(|l| self.layers.get(l))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        idx.iter().map(|&i| &self.doc.nodes[i])
    }

    pub fn providers(&self) -> impl Iterator<Item = &NodeEntry> {
        self.providers.iter().map(|&i| &self.doc.nodes[i])
    }

    /// One mix per layer, each chosen uniformly at random (Loopix §3.2).
    pub fn random_mix_path<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<&NodeEntry> {
        self.layers
            .iter()
            .filter_map(|l| l.choose(rng).map(|&i| &self.doc.nodes[i]))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{IdentityKeypair, SphinxKeypair};

    pub(crate) fn sample_doc(mixes_per_layer: usize, layers: u8) -> TopologyDocument {
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

    #[test]
    fn valid_document_indexes_layers() {
        let t = Topology::new(sample_doc(2, 3)).unwrap();
        assert_eq!(t.layer(1).count(), 2);
        assert_eq!(t.layer(4).count(), 0);
        let mut rng = rand::rng();
        let path = t.random_mix_path(&mut rng);
        assert_eq!(path.len(), 3);
        for (i, n) in path.iter().enumerate() {
            assert_eq!(n.layer, Some(i as u8 + 1));
        }
        assert_eq!(t.params().packet_size(), 1372);
    }

    #[test]
    fn errors_name_the_field() {
        let mut d = sample_doc(1, 3);
        d.nodes[1].id = d.nodes[0].id;
        let e = Topology::new(d).unwrap_err().to_string();
        assert!(e.contains("nodes[1].id"), "{e}");

        let mut d = sample_doc(1, 3);
        d.nodes[2].layer = None;
        assert!(
            Topology::new(d)
                .unwrap_err()
                .to_string()
                .contains("nodes[2].layer")
        );

        let mut d = sample_doc(1, 3);
        d.params.layers = 4;
        assert!(
            Topology::new(d)
                .unwrap_err()
                .to_string()
                .contains("params.layers")
        );

        let mut d = sample_doc(1, 3);
        d.params.lambda_m_per_s = f64::NAN;
        assert!(Topology::new(d).is_err());

        let mut d = sample_doc(1, 3);
        d.nodes.retain(|n| n.layer != Some(2));
        assert!(
            Topology::new(d)
                .unwrap_err()
                .to_string()
                .contains("layer 2")
        );

        assert!(Topology::from_json(b"{\"params\":{}}").is_err());
        assert!(Topology::from_json(b"\xff\xfe").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let d = sample_doc(1, 1);
        let mut v = serde_json::to_value(&d).unwrap();
        v["params"]["surprise"] = serde_json::json!(1);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(Topology::from_json(&bytes).is_err());
    }
}
