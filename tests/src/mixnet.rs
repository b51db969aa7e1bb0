//! A three-layer mixnet of real `loopmix-node` processes plus a [`Peer`]
//! that plays the provider at both ends.

use std::path::PathBuf;
use std::time::Duration;

use crate::node::{NodeDir, NodeProcess, Peer, launch_mixnet};
use loopmix_core::sphinx::{build_packet, destination_of, sample_delays};
use loopmix_core::topology::{NetworkParams, NodeEntry, TopologyDocument};
use sphinx_packet::header::delays::Delay;

pub const EPOCH: u64 = 1;
pub const PAYLOAD: usize = 1024;

pub fn bin() -> PathBuf {
    crate::workspace_bin("loopmix-node").unwrap()
}

pub struct Net {
    pub nodes: Vec<NodeProcess>,
    pub dirs: Vec<NodeDir>,
    pub peer: Peer,
    pub doc: TopologyDocument,
    pub tmp: tempfile::TempDir,
}

pub fn params(mean_hop_delay_ms: f64, lambda_m_per_s: f64) -> NetworkParams {
    NetworkParams {
        epoch: EPOCH,
        layers: 3,
        mean_hop_delay_ms,
        lambda_p_per_s: 0.0,
        lambda_l_per_s: 0.0,
        lambda_d_per_s: 0.0,
        lambda_m_per_s,
        payload_size: PAYLOAD,
    }
}

/// Starts one mix per layer and a peer, all with the same topology.
pub async fn start_net(params: NetworkParams) -> Net {
    let tmp = tempfile::tempdir().unwrap();
    let peer = Peer::bind(EPOCH, true).unwrap();
    let net = launch_mixnet(
        &bin(),
        tmp.path(),
        params,
        vec![peer.entry().unwrap()],
        |_| {},
    )
    .unwrap();
    peer.adopt(&net.doc);
    Net {
        nodes: net.nodes,
        dirs: net.dirs,
        peer,
        doc: net.doc,
        tmp,
    }
}

impl Net {
    pub fn mix(&self, layer: usize) -> &NodeEntry {
        &self.doc.nodes[layer - 1]
    }

    pub fn peer_entry(&self) -> &NodeEntry {
        &self.doc.nodes[3]
    }

    /// A packet through all three mixes to the peer, with the given delays
    /// (one per mix; the peer's own slot is unused).
    pub fn packet(&self, msg: &[u8], id: [u8; 16], mix_delays: &[Duration]) -> Vec<u8> {
        let route = [self.mix(1), self.mix(2), self.mix(3), self.peer_entry()];
        let mut delays: Vec<Delay> = mix_delays
            .iter()
            .map(|d| Delay::new_from_nanos(d.as_nanos() as u64))
            .collect();
        delays.push(Delay::new_from_nanos(0));
        let dest = destination_of(&self.peer_entry().id, id);
        build_packet(msg, &route, &dest, &delays, PAYLOAD).unwrap()
    }

    /// Same with delays drawn from Exp(mean); returns them too.
    pub fn random_packet(
        &self,
        msg: &[u8],
        id: [u8; 16],
        mean: Duration,
    ) -> (Vec<u8>, Vec<Duration>) {
        let mut rng = rand::rng();
        let d: Vec<Duration> = sample_delays(&mut rng, 3, mean)
            .into_iter()
            .map(|d| d.to_duration())
            .collect();
        (self.packet(msg, id, &d), d)
    }

    pub fn send(&self, packet: Vec<u8>) {
        self.peer.send(self.mix(1), EPOCH, packet).unwrap();
    }

    pub fn dropped(&self, node: usize, reason: &str) -> f64 {
        self.nodes[node]
            .metric(&format!(
                "loopmix_packets_dropped_total{{reason=\"{reason}\"}}"
            ))
            .unwrap()
    }
}
