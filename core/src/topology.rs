//! The topology document: network-wide parameters and the node list.
//!
//! The same type is read from a JSON file (static testnets) and, signed, served
//! by the directory authorities. Parsing is strict (`deny_unknown_fields`) and
//! every semantic rule is checked in [`Topology::validate`], so a node never
//! runs on a half-understood document.

use std::collections::{BTreeSet, HashMap, HashSet};
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

/// The largest share of one layer the network's liveness list may take out
/// of route choice. More than this listed down in a layer and that layer is
/// routed uniformly over all its mixes again: whoever can make honest mixes
/// look dead (by dropping their packets, or as a rogue authority quorum) can
/// then at most halve a layer, never funnel it into the mixes they run.
pub const MAX_EXCLUDED_FRACTION: f64 = 0.5;

/// How route choice treats one layer under a liveness list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerExclusion {
    /// 1-based layer.
    pub layer: u8,
    /// Mixes the topology lists in the layer.
    pub mixes: usize,
    /// Of those, how many the liveness list names as down.
    pub listed_down: usize,
    /// How many are actually left out of route choice: `listed_down`, or 0
    /// when that is more than the cap allows ([`Self::fallback`]).
    pub excluded: usize,
    /// More than the cap was listed down: the layer is routed uniformly.
    pub fallback: bool,
}

/// A validated topology with the indexes the hot path needs.
///
/// Route choice draws from [`Topology::routable`] mixes: all of each layer,
/// unless [`Topology::with_exclusions`] applied the network's signed liveness
/// list. Every packet, SURB-ACK, reply block and loop is routed through
/// [`Topology::random_mix_path`], so one exclusion reaches all of them.
#[derive(Clone, Debug)]
pub struct Topology {
    doc: TopologyDocument,
    by_id: HashMap<NodeId, usize>,
    /// `layers[i]` holds indexes into `doc.nodes` of layer `i + 1`.
    layers: Vec<Vec<usize>>,
    /// `layers` less the mixes excluded by the liveness list in force.
    routable: Vec<Vec<usize>>,
    excluded: BTreeSet<NodeId>,
    exclusions: Vec<LayerExclusion>,
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
        Self::with_layer_limit(doc, MAX_LAYERS)
    }

    /// [`Topology::new`] allowing up to `max_layers` mix layers instead of
    /// [`MAX_LAYERS`]. Only for the simulator, which studies deeper
    /// networks than a 5-hop Sphinx route can carry; nothing that builds
    /// packets may use it.
    pub fn with_layer_limit(doc: TopologyDocument, max_layers: u8) -> Result<Self, TopologyError> {
        Self::validate_with(&doc, max_layers)?;
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
        let exclusions = layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerExclusion {
                layer: i as u8 + 1,
                mixes: l.len(),
                listed_down: 0,
                excluded: 0,
                fallback: false,
            })
            .collect();
        Ok(Self {
            doc,
            by_id,
            routable: layers.clone(),
            layers,
            excluded: BTreeSet::new(),
            exclusions,
            providers,
        })
    }

    /// The same topology, routing around the mixes in `down` (the network's
    /// signed liveness list; ids it does not list are ignored). Per layer at
    /// most `floor(mixes × max_fraction)` mixes are excluded, and always at
    /// least one mix stays; a layer with more listed down is routed
    /// uniformly over all its mixes ([`LayerExclusion::fallback`]) rather
    /// than over a hand-picked subset. Exclusion only ever removes choices,
    /// it never weights one mix over another. Providers are never excluded
    /// (a client cannot avoid its own or its recipient's provider); they
    /// stay listed in `down` for operators.
    ///
    /// Replaces any earlier exclusion: pass an empty set to route uniformly.
    pub fn with_exclusions(&self, down: &BTreeSet<NodeId>, max_fraction: f64) -> Topology {
        let f = if max_fraction.is_finite() {
            max_fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut t = self.clone();
        t.excluded.clear();
        for (i, layer) in self.layers.iter().enumerate() {
            let listed: Vec<usize> = layer
                .iter()
                .copied()
                .filter(|&n| down.contains(&self.doc.nodes[n].id))
                .collect();
            // floor, and never the whole layer.
            let cap =
                ((layer.len() as f64 * f).floor() as usize).min(layer.len().saturating_sub(1));
            let fallback = listed.len() > cap;
            let routable: Vec<usize> = if fallback {
                layer.clone()
            } else {
                layer
                    .iter()
                    .copied()
                    .filter(|n| !listed.contains(n))
                    .collect()
            };
            if !fallback {
                t.excluded
                    .extend(listed.iter().map(|&n| self.doc.nodes[n].id));
            }
            t.exclusions[i] = LayerExclusion {
                layer: i as u8 + 1,
                mixes: layer.len(),
                listed_down: listed.len(),
                excluded: if fallback { 0 } else { listed.len() },
                fallback,
            };
            t.routable[i] = routable;
        }
        t
    }

    /// Mixes left out of route choice by [`Self::with_exclusions`].
    pub fn excluded(&self) -> &BTreeSet<NodeId> {
        &self.excluded
    }

    /// Whether route choice leaves `id` out.
    pub fn is_excluded(&self, id: &NodeId) -> bool {
        self.excluded.contains(id)
    }

    /// Per layer, how the liveness list in force was applied.
    pub fn exclusions(&self) -> &[LayerExclusion] {
        &self.exclusions
    }

    /// Mixes of a 1-based layer that routes are drawn from.
    pub fn routable(&self, layer: u8) -> impl Iterator<Item = &NodeEntry> {
        let idx = (layer as usize)
            .checked_sub(1)
            .and_then(|l| self.routable.get(l))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        idx.iter().map(|&i| &self.doc.nodes[i])
    }

    /// Every rule a document must satisfy; the error names the field.
    pub fn validate(doc: &TopologyDocument) -> Result<(), TopologyError> {
        Self::validate_with(doc, MAX_LAYERS)
    }

    fn validate_with(doc: &TopologyDocument, max_layers: u8) -> Result<(), TopologyError> {
        let p = &doc.params;
        if p.layers == 0 || p.layers > max_layers {
            return Err(invalid(
                "params.layers",
                format!("must be 1..={max_layers}, got {}", p.layers),
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

    /// One mix per layer, each chosen uniformly at random (Loopix §3.2)
    /// among the layer's [routable](Self::routable) mixes.
    pub fn random_mix_path<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<&NodeEntry> {
        self.routable
            .iter()
            .filter_map(|l| l.choose(rng).map(|&i| &self.doc.nodes[i]))
            .collect()
    }

    /// [`Self::random_mix_path`] without the `Vec`: the same draws in the
    /// same order, one mix per layer as the iterator is advanced (for the
    /// simulator, which routes hundreds of millions of packets).
    pub fn random_mix_path_iter<'a, R: Rng + ?Sized>(
        &'a self,
        rng: &'a mut R,
    ) -> impl Iterator<Item = &'a NodeEntry> + 'a {
        self.routable
            .iter()
            .filter_map(move |l| l.choose(rng).map(|&i| &self.doc.nodes[i]))
    }

    /// Like [`Self::random_mix_path`], but also avoiding the mixes in
    /// `avoid` — this sender's *local* evidence (its own lost loops and
    /// acks), which may steer only retransmissions, never first attempts
    /// (`docs/ARCHITECTURE.md`, "Liveness"). The same cap as the network
    /// list applies per layer to what is left: if avoiding would take out
    /// more than `floor(routable × max_fraction)` mixes of a layer, that
    /// layer ignores `avoid`.
    pub fn random_mix_path_avoiding<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        avoid: &HashSet<NodeId>,
        max_fraction: f64,
    ) -> Vec<&NodeEntry> {
        let f = if max_fraction.is_finite() {
            max_fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut keep = Vec::new();
        self.routable
            .iter()
            .filter_map(|l| {
                keep.clear();
                keep.extend(
                    l.iter()
                        .copied()
                        .filter(|&i| !avoid.contains(&self.doc.nodes[i].id)),
                );
                let cap = ((l.len() as f64 * f).floor() as usize).min(l.len().saturating_sub(1));
                let pool = if l.len() - keep.len() <= cap {
                    keep.as_slice()
                } else {
                    l.as_slice()
                };
                pool.choose(rng).map(|&i| &self.doc.nodes[i])
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;
    pub(crate) use crate::testing::sample_doc;

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
    fn the_path_iterator_makes_the_same_draws_as_the_vec() {
        use rand::SeedableRng;
        let t = Topology::new(sample_doc(5, 3)).unwrap();
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut b = a.clone();
        for _ in 0..50 {
            let want: Vec<NodeId> = t.random_mix_path(&mut a).iter().map(|n| n.id).collect();
            let got: Vec<NodeId> = t.random_mix_path_iter(&mut b).map(|n| n.id).collect();
            assert_eq!(got, want);
        }
        assert_eq!(a.next_u64(), b.next_u64());
    }

    fn layer_ids(t: &Topology, l: u8) -> Vec<NodeId> {
        t.layer(l).map(|n| n.id).collect()
    }

    #[test]
    fn exclusions_leave_down_mixes_out_of_every_route() {
        let t = Topology::new(sample_doc(2, 3)).unwrap();
        let dead = layer_ids(&t, 2)[0];
        let provider_like = IdentityKeypair::generate().node_id(); // not listed: ignored
        let down = BTreeSet::from([dead, provider_like]);
        let x = t.with_exclusions(&down, MAX_EXCLUDED_FRACTION);
        assert!(x.is_excluded(&dead));
        assert_eq!(x.excluded().len(), 1);
        assert_eq!(x.exclusions()[1].excluded, 1);
        assert!(!x.exclusions()[1].fallback);
        let mut rng = rand::rng();
        for _ in 0..200 {
            let p = x.random_mix_path(&mut rng);
            assert_eq!(p.len(), 3);
            assert!(p.iter().all(|n| n.id != dead));
        }
        // The unexcluded topology still uses it; an empty list restores it.
        let back = x.with_exclusions(&BTreeSet::new(), MAX_EXCLUDED_FRACTION);
        assert!(back.excluded().is_empty());
        assert_eq!(back.routable(2).count(), 2);
    }

    #[test]
    fn a_whole_layer_listed_down_falls_back_to_uniform() {
        let t = Topology::new(sample_doc(2, 3)).unwrap();
        let down: BTreeSet<NodeId> = layer_ids(&t, 1).into_iter().collect();
        let x = t.with_exclusions(&down, MAX_EXCLUDED_FRACTION);
        assert!(x.exclusions()[0].fallback);
        assert_eq!(x.exclusions()[0].listed_down, 2);
        assert_eq!(x.exclusions()[0].excluded, 0);
        assert_eq!(x.routable(1).count(), 2);
        assert!(x.excluded().is_empty());
        // Everything listed down (a rogue quorum): uniform everywhere.
        let all: BTreeSet<NodeId> = t.nodes().iter().map(|n| n.id).collect();
        let x = t.with_exclusions(&all, MAX_EXCLUDED_FRACTION);
        assert!(x.exclusions().iter().all(|e| e.fallback));
        assert_eq!(x.random_mix_path(&mut rand::rng()).len(), 3);
    }

    #[test]
    fn the_cap_is_a_share_of_each_layer() {
        let t = Topology::new(sample_doc(10, 3)).unwrap();
        let ids = layer_ids(&t, 3);
        let five: BTreeSet<NodeId> = ids[..5].iter().copied().collect();
        let x = t.with_exclusions(&five, MAX_EXCLUDED_FRACTION);
        assert_eq!(x.routable(3).count(), 5);
        let six: BTreeSet<NodeId> = ids[..6].iter().copied().collect();
        let x = t.with_exclusions(&six, MAX_EXCLUDED_FRACTION);
        assert!(x.exclusions()[2].fallback);
        assert_eq!(x.routable(3).count(), 10);
        // One mix per layer can never be excluded.
        let one = Topology::new(sample_doc(1, 3)).unwrap();
        let down: BTreeSet<NodeId> = one.nodes().iter().map(|n| n.id).collect();
        let x = one.with_exclusions(&down, 1.0);
        assert!(x.exclusions().iter().all(|e| e.fallback));
    }

    #[test]
    fn local_avoidance_is_capped_and_stays_inside_the_network_list() {
        let t = Topology::new(sample_doc(2, 3)).unwrap();
        let mut rng = rand::rng();
        let suspect = layer_ids(&t, 1)[1];
        let avoid = HashSet::from([suspect]);
        for _ in 0..100 {
            let p = t.random_mix_path_avoiding(&mut rng, &avoid, MAX_EXCLUDED_FRACTION);
            assert_ne!(p[0].id, suspect);
        }
        // Avoiding both mixes of a layer is over the cap: uniform there.
        let both: HashSet<NodeId> = layer_ids(&t, 1).into_iter().collect();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.insert(t.random_mix_path_avoiding(&mut rng, &both, 0.5)[0].id);
        }
        assert_eq!(seen.len(), 2);
        // A network-excluded mix is never chosen, whatever `avoid` says.
        let dead = layer_ids(&t, 2)[0];
        let x = t.with_exclusions(&BTreeSet::from([dead]), 0.5);
        let other = layer_ids(&t, 2)[1];
        for _ in 0..100 {
            let p = x.random_mix_path_avoiding(&mut rng, &HashSet::from([other]), 0.5);
            assert_eq!(p[1].id, other);
        }
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
