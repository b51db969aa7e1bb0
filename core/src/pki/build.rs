//! Deterministic topology building.
//!
//! Every authority runs [`build_document`] on the descriptors registered for
//! an epoch. The output depends only on the epoch, the parameters and the
//! *set* of descriptors (not their order, not the authority, not the clock),
//! so authorities that saw the same registrations produce byte-identical
//! documents and can each sign the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use crate::keys::{NodeId, SphinxPublicKey};
use crate::topology::{NetworkParams, NodeEntry, Role, TopologyDocument};

use super::LAYER_CONTEXT;
use super::descriptor::Descriptor;

/// `SHA-256(LAYER_CONTEXT || epoch as u64 big-endian || identity)`: the key
/// mixes are sorted by before being dealt into layers. Hashing with the epoch
/// reshuffles layers every epoch without letting a node choose its layer.
pub fn layer_sort_key(epoch: u64, id: &NodeId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LAYER_CONTEXT);
    h.update(epoch.to_be_bytes());
    h.update(id.as_bytes());
    h.finalize().into()
}

/// Builds the topology for `epoch` from `descriptors`:
///
/// 1. only descriptors with `epoch == epoch` count;
/// 2. per identity, the one with the greatest `published_at` wins (ties: the
///    greater canonical JSON bytes);
/// 3. any address or Sphinx key claimed by more than one identity excludes
///    all of its claimants (no authority can tell which is honest);
/// 4. mixes are sorted by [`layer_sort_key`] and dealt round-robin into
///    layers `1..=params.layers` (so layer sizes differ by at most one);
///    providers get no layer;
/// 5. nodes are listed sorted by identity bytes; `params.epoch = epoch`.
///
/// The result is not validated (a layer may be empty if there are too few
/// mixes): pass it to [`crate::topology::Topology::validate`].
pub fn build_document(
    epoch: u64,
    params_template: &NetworkParams,
    descriptors: &[Descriptor],
) -> TopologyDocument {
    // 1 + 2: one descriptor per identity.
    let mut by_id: BTreeMap<NodeId, (&Descriptor, Vec<u8>)> = BTreeMap::new();
    for d in descriptors.iter().filter(|d| d.epoch == epoch) {
        let bytes = serde_json::to_vec(d).unwrap_or_default();
        let better = match by_id.get(&d.identity) {
            None => true,
            Some((cur, cur_bytes)) => (d.published_at, &bytes) > (cur.published_at, cur_bytes),
        };
        if better {
            by_id.insert(d.identity, (d, bytes));
        }
    }
    // 3: contested addresses and Sphinx keys.
    let mut addr_claims: HashMap<SocketAddr, usize> = HashMap::new();
    let mut key_claims: HashMap<SphinxPublicKey, usize> = HashMap::new();
    for (d, _) in by_id.values() {
        *addr_claims.entry(d.address).or_default() += 1;
        *key_claims.entry(d.sphinx_key).or_default() += 1;
    }
    let chosen: Vec<&Descriptor> = by_id
        .values()
        .map(|(d, _)| *d)
        .filter(|d| addr_claims.get(&d.address) == Some(&1))
        .filter(|d| key_claims.get(&d.sphinx_key) == Some(&1))
        .collect();

    // 4: deal mixes into layers.
    let layers = params_template.layers.max(1);
    let mut mixes: Vec<(&Descriptor, [u8; 32])> = chosen
        .iter()
        .filter(|d| d.role == Role::Mix)
        .map(|d| (*d, layer_sort_key(epoch, &d.identity)))
        .collect();
    mixes.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.identity.cmp(&b.0.identity)));
    let mut layer_of: HashMap<NodeId, u8> = HashMap::new();
    for (i, (d, _)) in mixes.iter().enumerate() {
        // i % layers < layers <= u8::MAX, so the cast is exact.
        layer_of.insert(d.identity, (i % layers as usize) as u8 + 1);
    }

    // 5: sorted node list (`chosen` is already in identity order).
    let nodes = chosen
        .iter()
        .map(|d| NodeEntry {
            id: d.identity,
            sphinx_key: d.sphinx_key,
            address: d.address,
            role: d.role,
            layer: match d.role {
                Role::Mix => layer_of.get(&d.identity).copied(),
                Role::Provider => None,
            },
        })
        .collect();
    TopologyDocument {
        params: NetworkParams {
            epoch,
            ..params_template.clone()
        },
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;
    use crate::pki::descriptor::tests::descriptor;
    use crate::pki::document::EpochDocument;
    use crate::topology::Topology;

    fn params() -> NetworkParams {
        crate::topology::tests::sample_doc(1, 3).params
    }

    fn descriptors(epoch: u64, mixes: usize, providers: usize) -> Vec<Descriptor> {
        let mut v = Vec::new();
        for i in 0..mixes + providers {
            let role = if i < mixes { Role::Mix } else { Role::Provider };
            v.push(descriptor(
                &IdentityKeypair::generate(),
                epoch,
                5000 + i as u16,
                role,
            ));
        }
        v
    }

    fn bytes(epoch: u64, d: &[Descriptor]) -> Vec<u8> {
        EpochDocument {
            version: 1,
            valid_from: 1,
            valid_until: 2,
            epoch_length_s: 1,
            topology: build_document(epoch, &params(), d),
        }
        .canonical_bytes()
        .unwrap()
    }

    #[test]
    fn order_does_not_matter() {
        let mut d = descriptors(9, 7, 2);
        let a = bytes(9, &d);
        d.reverse();
        assert_eq!(a, bytes(9, &d));
        d.swap(1, 5);
        d.rotate_left(3);
        assert_eq!(a, bytes(9, &d));
        // Duplicated input changes nothing either.
        let mut twice = d.clone();
        twice.extend(d.iter().cloned());
        assert_eq!(a, bytes(9, &twice));
        let doc = build_document(9, &params(), &d);
        assert!(doc.nodes.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(doc.params.epoch, 9);
        Topology::validate(&doc).unwrap();
    }

    #[test]
    fn layers_are_balanced() {
        for n in [3usize, 6, 7, 8, 20, 31] {
            let doc = build_document(4, &params(), &descriptors(4, n, 1));
            let mut per = [0usize; 3];
            for e in &doc.nodes {
                match e.role {
                    Role::Mix => per[(e.layer.unwrap() - 1) as usize] += 1,
                    Role::Provider => assert_eq!(e.layer, None),
                }
            }
            let (mn, mx) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(mx - mn <= 1, "{n}: {per:?}");
            assert_eq!(per.iter().sum::<usize>(), n);
        }
        // Too few mixes: built, but does not validate.
        let doc = build_document(4, &params(), &descriptors(4, 2, 1));
        assert!(Topology::validate(&doc).is_err());
    }

    #[test]
    fn layers_reshuffle_per_epoch() {
        let d = descriptors(1, 12, 0);
        let mut d2 = d.clone();
        for x in &mut d2 {
            x.epoch = 2;
        }
        let a = build_document(1, &params(), &d);
        let b = build_document(2, &params(), &d2);
        let la: Vec<_> = a.nodes.iter().map(|n| n.layer).collect();
        let lb: Vec<_> = b.nodes.iter().map(|n| n.layer).collect();
        assert_ne!(la, lb, "12 mixes keeping all layers is ~1e-4 likely");
    }

    #[test]
    fn conflicts_are_resolved_deterministically() {
        let mut d = descriptors(3, 6, 0);
        // Other epochs are ignored.
        let mut stray = d[0].clone();
        stray.epoch = 4;
        stray.address = "127.0.0.1:9999".parse().unwrap();
        d.push(stray);
        // A newer descriptor from the same identity replaces the older one.
        let mut newer = d[1].clone();
        newer.published_at += 10;
        newer.address = "127.0.0.1:7777".parse().unwrap();
        d.push(newer);
        // Two identities claiming one address are both left out.
        d[3].address = d[2].address;
        let doc = build_document(3, &params(), &d);
        assert_eq!(doc.nodes.len(), 4);
        assert!(doc.nodes.iter().any(|n| n.address.port() == 7777));
        assert!(!doc.nodes.iter().any(|n| n.address == d[2].address));
        let mut r = d.clone();
        r.reverse();
        assert_eq!(doc, build_document(3, &params(), &r));
    }
}
