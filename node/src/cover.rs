//! The mix's own loop cover traffic (Loopix λ_M).
//!
//! At Poisson rate λ_M the node sends a packet through one mix per layer and
//! back to itself. Packets are built one tick ahead on the blocking pool, so
//! a 4-hop build (~0.4 ms) never shifts the Poisson send times. Returning
//! loops are recognised by the Sphinx workers via [`crate::pipeline::NodeContext::loops`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use loopmix_core::keys::NodeId;
use loopmix_core::poisson::PoissonTicker;
use loopmix_core::sphinx::{build_packet, destination_of, sample_delays};
use loopmix_core::topology::{NodeEntry, Topology};
use loopmix_net::transport::egress::{Egress, OutPacket};
use rand::{RngExt, SeedableRng};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::liveness::RouteIds;
use crate::pipeline::{NodeContext, sleep_until};

/// Plaintext of a loop packet; its identifier, not this, is what we check.
const LOOP_PAYLOAD: &[u8] = b"loopmix mix loop";

struct Prepared {
    first_hop: NodeId,
    addr: std::net::SocketAddr,
    key_epoch: u64,
    packet: Vec<u8>,
    loop_id: [u8; 16],
    /// Every node the loop crosses, for the liveness estimator.
    route: RouteIds,
}

fn build_loop(topology: &Topology, me: NodeId) -> Option<Prepared> {
    let mut rng = rand::rng();
    let own: &NodeEntry = topology.get(&me)?;
    let mut route = topology.random_mix_path(&mut rng);
    route.push(own);
    let mean = Duration::from_secs_f64(topology.params().mean_hop_delay_ms / 1000.0);
    let delays = sample_delays(&mut rng, route.len(), mean);
    let loop_id: [u8; 16] = rng.random();
    let dest = destination_of(&me, loop_id);
    match build_packet(
        LOOP_PAYLOAD,
        &route,
        &dest,
        &delays,
        topology.params().payload_size,
    ) {
        Ok(packet) => Some(Prepared {
            first_hop: route[0].id,
            addr: route[0].address,
            key_epoch: topology.epoch(),
            packet,
            loop_id,
            route: route.iter().map(|n| n.id).collect(),
        }),
        Err(e) => {
            warn!(error = %e, "cannot build loop packet");
            None
        }
    }
}

/// Expected time for a loop to come back with this topology.
pub fn default_loop_timeout(topology: &Topology) -> Duration {
    let hops = topology.params().layers as f64 + 1.0;
    Duration::from_secs_f64(3.0 * hops * topology.params().mean_hop_delay_ms / 1000.0)
        + Duration::from_secs(5)
}

pub struct LoopCover {
    pub shared: Arc<NodeContext>,
    pub egress: Egress,
    pub configured_timeout: Duration,
    pub cancel: CancellationToken,
}

impl LoopCover {
    pub async fn run(self) {
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut rate = self.shared.topology().params().lambda_m_per_s;
        let mut ticker = PoissonTicker::new(&mut rng, rate, Instant::now());
        let mut next = self.prepare();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            let due = ticker.next_deadline();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = housekeeping.tick() => {
                    let topology = self.shared.topology();
                    let new_rate = topology.params().lambda_m_per_s;
                    if new_rate != rate {
                        rate = new_rate;
                        ticker.set_rate(&mut rng, rate, Instant::now());
                    }
                    self.expire(&topology);
                }
                _ = sleep_until(due), if due.is_some() => {
                    while ticker.poll(&mut rng, Instant::now()).is_some() {
                        let mut prepared: Option<Prepared> = next.await.unwrap_or_default();
                        next = self.prepare();
                        // Built before an epoch change: its keys may be
                        // retired by the time it reaches a hop. Rebuild now
                        // (one build, well under a millisecond) rather than
                        // skip the tick, so the send times stay Poisson.
                        let topology = self.shared.topology();
                        if prepared.as_ref().is_some_and(|p| p.key_epoch != topology.epoch()) {
                            prepared = build_loop(&topology, self.shared.me);
                        }
                        if let Some(p) = prepared {
                            self.send(p);
                        }
                    }
                }
            }
        }
        next.abort();
    }

    fn prepare(&self) -> tokio::task::JoinHandle<Option<Prepared>> {
        let topology = self.shared.topology();
        let me = self.shared.me;
        tokio::task::spawn_blocking(move || build_loop(&topology, me))
    }

    fn send(&self, p: Prepared) {
        let m = &self.shared.metrics;
        let evicted = self
            .shared
            .loops()
            .track(p.loop_id, Instant::now(), p.route);
        m.cover_lost.inc_by(evicted.len() as u64);
        for (sent, route) in evicted {
            self.shared.liveness.lost(&route, sent);
        }
        let pkt = OutPacket {
            key_epoch: p.key_epoch,
            packet: p.packet,
        };
        match self.egress.send(p.first_hop, p.addr, pkt) {
            Ok(()) => m.cover_sent.inc(),
            Err(r) => {
                // Still counted as sent: from the tracker's view it is simply lost.
                m.cover_sent.inc();
                debug!(reason = r.label(), "loop packet not queued");
            }
        }
    }

    fn expire(&self, topology: &Topology) {
        let timeout = if self.configured_timeout.is_zero() {
            default_loop_timeout(topology)
        } else {
            self.configured_timeout
        };
        let mut loops = self.shared.loops();
        loops.set_timeout(timeout);
        let lost = loops.expire_routes(Instant::now());
        self.shared.metrics.cover_lost.inc_by(lost.len() as u64);
        if let Some(r) = loops.return_ratio() {
            self.shared.metrics.loop_return_ratio.set(r);
        }
        drop(loops);
        for (sent, route) in lost {
            self.shared.liveness.lost(&route, sent);
        }
    }
}
