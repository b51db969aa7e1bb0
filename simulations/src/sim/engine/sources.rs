//! Where packets come from and where their measurements go: the run's
//! set-up from the seed (topology, corrupt mixes, every sender's RNG and
//! Poisson streams), the making of each packet (route, delays, the window's
//! tallies), and what a delivery adds to the results.
//!
//! Both the pipeline and the reference event loop use exactly this code,
//! so they start from, and make, the same packets.

use std::collections::BTreeSet;
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::poisson::PoissonTicker;
use loopmix_core::sphinx::sample_delay_nanos_into;
use loopmix_core::topology::{MAX_EXCLUDED_FRACTION, Role, Topology};
use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use rand_chacha::ChaCha8Rng;

use super::{
    EngineError, Exposure, Kind, LATENCY_RESERVOIR, Latency, MAX_NODES, MAX_ROUTE, NO_CHALLENGE,
    Packet, STREAM_FIRST_ENTITY, STREAM_RESERVOIR, STREAM_TOPOLOGY, SimTime, Traffic,
    Unlinkability, build_topology, hop_word, node_index, repetition_seed, stream,
};
use crate::sim::scenario::Scenario;

/// A client: its provider, its RNG and its three Poisson streams.
pub(super) struct Client {
    provider: u32,
    rng: ChaCha8Rng,
    /// λ_P, λ_L, λ_D.
    streams: [PoissonTicker<SimTime>; 3],
    sent: u32,
}

impl Client {
    /// When stream `k` ticks next.
    #[cfg(test)]
    pub(super) fn stream_deadline(&self, k: u8) -> Option<SimTime> {
        self.streams.get(usize::from(k))?.next_deadline()
    }

    /// The stream due first and when (`None`: every stream is off).
    pub(super) fn next_tick(&self) -> Option<(SimTime, u8)> {
        let mut best: Option<(SimTime, u8)> = None;
        for (k, t) in self.streams.iter().enumerate() {
            if let Some(at) = t.next_deadline()
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, k as u8));
            }
        }
        best
    }
}

/// A node as a sender: its RNG and its loop cover stream (λ_M; off for
/// providers).
pub(super) struct LoopSource {
    rng: ChaCha8Rng,
    loops: PoissonTicker<SimTime>,
    sent: u32,
}

impl LoopSource {
    pub(super) fn next_tick(&self) -> Option<SimTime> {
        self.loops.next_deadline()
    }
}

/// A node as the engine sees it.
#[derive(Clone, Copy)]
pub(super) struct NodeInfo {
    /// 0 for providers, else the 1-based mix layer.
    pub layer: u8,
    pub corrupt: bool,
}

impl NodeInfo {
    /// An honest mix mixes the challenge senders' mass; a corrupt one sees
    /// through, and providers do not count.
    pub(super) fn mixes_mass(&self) -> bool {
        self.layer > 0 && !self.corrupt
    }
}

/// What every packet is made with (read-only during the run).
pub(super) struct Ctx {
    pub topology: Topology,
    pub nodes: Vec<NodeInfo>,
    mean_delay: Duration,
    real_fraction: f64,
    providers: u32,
    clients_n: u32,
    pub burn_in: SimTime,
    pub window_end: SimTime,
    pub end: SimTime,
}

/// Everything a run starts from, exactly as the seed makes it.
pub(super) struct Setup {
    pub seed: u64,
    pub ctx: Ctx,
    /// One per node, in node order.
    pub loops: Vec<LoopSource>,
    pub clients: Vec<Client>,
    pub reservoir_rng: ChaCha8Rng,
}

/// Per-entity counts of the window, summed across entities (order-free).
#[derive(Clone, Copy, Default)]
pub(super) struct Tally {
    pub traffic: Traffic,
    pub exposure: Exposure,
    /// Scheduler events: ticks (and, in the stages, releases).
    pub events: u64,
}

impl Tally {
    pub(super) fn add(&mut self, o: &Tally) {
        let (t, u) = (&mut self.traffic, &o.traffic);
        t.real += u.real;
        t.payload_drop += u.payload_drop;
        t.loops += u.loops;
        t.drops += u.drops;
        t.mix_loops += u.mix_loops;
        let (e, f) = (&mut self.exposure, &o.exposure);
        e.routes += f.routes;
        e.all_corrupt += f.all_corrupt;
        e.any_corrupt += f.any_corrupt;
        self.events += o.events;
    }
}

impl Setup {
    /// Repetition `rep` of `s` (which must be valid).
    pub(super) fn new(s: &Scenario, rep: u32) -> Result<Self, EngineError> {
        let seed = repetition_seed(s.seed, rep);
        let topology = build_topology(s, seed)?;
        if topology.nodes().len() > MAX_NODES {
            return Err(EngineError::TooManyNodes(topology.nodes().len()));
        }
        // 1/μ exactly as the client computes it from the topology.
        let mean_delay = Duration::try_from_secs_f64(topology.params().mean_hop_delay_ms / 1000.0)
            .unwrap_or(Duration::ZERO);
        let corrupt = corrupt_mixes(s, seed);
        let topology = exclude_honest(s, topology, &corrupt);
        let start = SimTime(0);
        let params = topology.params();
        let mut nodes = Vec::with_capacity(topology.nodes().len());
        let mut loops = Vec::with_capacity(topology.nodes().len());
        for (i, e) in topology.nodes().iter().enumerate() {
            let mut rng = stream(seed, STREAM_FIRST_ENTITY + i as u64);
            let rate = if e.role == Role::Mix {
                params.lambda_m_per_s
            } else {
                0.0
            };
            let ticker = PoissonTicker::new(&mut rng, rate, start);
            loops.push(LoopSource {
                rng,
                loops: ticker,
                sent: 0,
            });
            nodes.push(NodeInfo {
                layer: e.layer.unwrap_or(0),
                corrupt: corrupt.contains(&(i as u32)),
            });
        }
        let first_client = STREAM_FIRST_ENTITY + nodes.len() as u64;
        let rates = [
            params.lambda_p_per_s,
            params.lambda_l_per_s,
            params.lambda_d_per_s,
        ];
        let clients = (0..s.clients)
            .map(|c| {
                let mut rng = stream(seed, first_client + u64::from(c));
                let streams = rates.map(|rate| PoissonTicker::new(&mut rng, rate, start));
                Client {
                    provider: c % s.providers,
                    rng,
                    streams,
                    sent: 0,
                }
            })
            .collect();
        Ok(Setup {
            seed,
            ctx: Ctx {
                topology,
                nodes,
                mean_delay,
                real_fraction: s.real_fraction,
                providers: s.providers,
                clients_n: s.clients,
                burn_in: SimTime::from_secs_f64(s.burn_in_s),
                window_end: SimTime::from_secs_f64(s.burn_in_s + s.duration_s),
                end: SimTime::from_secs_f64(s.burn_in_s + s.duration_s + s.cooldown_s()),
            },
            loops,
            clients,
            reservoir_rng: stream(seed, STREAM_RESERVOIR),
        })
    }
}

/// The corrupt mixes (node indexes), drawn from the topology stream.
fn corrupt_mixes(s: &Scenario, seed: u64) -> BTreeSet<u32> {
    let mut topo_rng = stream(seed, STREAM_TOPOLOGY);
    let mut mix_ids: Vec<u32> = (s.providers..s.providers + s.mixes()).collect();
    mix_ids.shuffle(&mut topo_rng);
    if s.corrupt_spread {
        // Round-robin over the layers, in the shuffled order within each.
        let w = s.mixes_per_layer;
        let mut by_layer: Vec<Vec<u32>> = vec![Vec::new(); s.layers as usize];
        for m in mix_ids {
            if let Some(l) = by_layer.get_mut(((m - s.providers) / w) as usize) {
                l.push(m);
            }
        }
        (0..s.mixes_per_layer as usize)
            .flat_map(|i| by_layer.iter().filter_map(move |l| l.get(i).copied()))
            .take(s.corrupt_mixes() as usize)
            .collect()
    } else {
        mix_ids
            .into_iter()
            .take(s.corrupt_mixes() as usize)
            .collect()
    }
}

/// The active adversary of `docs/THREAT_MODEL.md` ("Liveness routing"): it
/// has got `excluded_honest` honest mixes per layer onto the network's down
/// list, and every sender routes with the core's exclusion rules.
fn exclude_honest(s: &Scenario, topology: Topology, corrupt: &BTreeSet<u32>) -> Topology {
    if s.excluded_honest == 0 {
        return topology;
    }
    let mut down = BTreeSet::<NodeId>::new();
    for l in 1..=s.layers {
        down.extend(
            topology
                .layer(l)
                .filter(|e| !corrupt.contains(&node_index(e)))
                .take(s.excluded_honest as usize)
                .map(|e| e.id),
        );
    }
    topology.with_exclusions(&down, MAX_EXCLUDED_FRACTION)
}

impl Ctx {
    pub(super) fn in_window(&self, t: SimTime) -> bool {
        t >= self.burn_in && t < self.window_end
    }

    /// Client `id`'s tick on `stream` at `now`: its Poisson stream moves
    /// on, and the packet it sends with the node it goes to first (`None`
    /// if the tick was not due).
    pub(super) fn client_tick<const H: usize>(
        &self,
        id: u32,
        c: &mut Client,
        stream: u8,
        now: SimTime,
        tally: &mut Tally,
    ) -> Option<(u32, Packet<H>)> {
        let ticker = c.streams.get_mut(stream as usize)?;
        ticker.poll(&mut c.rng, now)?;
        tally.events += 1;
        let own = c.provider;
        let (kind, last) = match stream {
            0 => {
                // Challenge senders (clients 0, 1) always have a message queued.
                let real = id < 2 || c.rng.random_bool(self.real_fraction);
                if real {
                    // A uniformly random other client; its provider is the last hop.
                    let mut to = c.rng.random_range(0..self.clients_n - 1);
                    if to >= id {
                        to += 1;
                    }
                    (Kind::Real, to % self.providers)
                } else {
                    (Kind::PayloadDrop, c.rng.random_range(0..self.providers))
                }
            }
            1 => (Kind::Loop, own),
            _ => (Kind::Drop, c.rng.random_range(0..self.providers)),
        };
        let mut route = Route::default();
        route.push(own);
        self.mix_path(&mut c.rng, &mut route);
        route.push(last);
        let uid = self.uid(self.nodes.len() as u32 + id, &mut c.sent);
        Some(self.launch(&mut c.rng, kind, id, uid, &route, now, tally))
    }

    /// Node `node`'s loop tick at `now` (`None` if it was not due): as
    /// loopmix-node's LoopCover, one mix per layer, then back to itself.
    /// The packet comes with the node it goes to first.
    pub(super) fn loop_tick<const H: usize>(
        &self,
        node: u32,
        src: &mut LoopSource,
        now: SimTime,
        tally: &mut Tally,
    ) -> Option<(u32, Packet<H>)> {
        src.loops.poll(&mut src.rng, now)?;
        tally.events += 1;
        let mut route = Route::default();
        self.mix_path(&mut src.rng, &mut route);
        route.push(node);
        let uid = self.uid(node, &mut src.sent);
        Some(self.launch(&mut src.rng, Kind::MixLoop, node, uid, &route, now, tally))
    }

    fn uid(&self, entity: u32, sent: &mut u32) -> u64 {
        let uid = (u64::from(entity) << 32) | u64::from(*sent);
        *sent = sent.wrapping_add(1);
        uid
    }

    /// The mix layers of a fresh route, as node indexes (core routing).
    fn mix_path(&self, rng: &mut impl Rng, route: &mut Route) {
        for e in self.topology.random_mix_path_iter(rng) {
            route.push(node_index(e));
        }
    }

    /// A new packet from `origin` along `route`, with the core's delays,
    /// and the node it goes to first.
    #[allow(clippy::too_many_arguments)]
    fn launch<const H: usize>(
        &self,
        rng: &mut impl Rng,
        kind: Kind,
        origin: u32,
        uid: u64,
        route: &Route,
        now: SimTime,
        tally: &mut Tally,
    ) -> (u32, Packet<H>) {
        let route = route.as_slice();
        // One delay per hop, drawn whatever `H` (the draws are the output).
        let mut delays = [0u64; MAX_ROUTE];
        let delays = &mut delays[..route.len()];
        sample_delay_nanos_into(rng, delays, self.mean_delay);
        let len = route.len().min(H + 1);
        let measured = self.in_window(now);
        let challenge = match (kind, origin) {
            (Kind::Real, 0 | 1) => origin as u8,
            _ => NO_CHALLENGE,
        };
        let mut p = Packet {
            hops: [0; H],
            mass: [0.0; 2],
            uid,
            len: len as u8,
            hop: 0,
            kind,
            challenge,
            measured,
        };
        // Each holding hop's delay, with the node after it. The first hop
        // is where the packet goes now.
        let next = route.get(1..len).unwrap_or(&[]);
        for ((slot, d), n) in p.hops.iter_mut().zip(delays.iter()).zip(next) {
            *slot = hop_word(*d, *n);
        }
        if measured {
            tally.traffic.count(kind);
            if kind == Kind::Real {
                if let Some(m) = p.mass.get_mut(usize::from(challenge)) {
                    *m = 1.0;
                }
                // Client routes: provider, the mixes, provider.
                let mixes = &route[1..len.saturating_sub(1).max(1)];
                let corrupt = |&m: &u32| self.nodes.get(m as usize).is_some_and(|n| n.corrupt);
                let e = &mut tally.exposure;
                e.routes += 1;
                if !mixes.is_empty() && mixes.iter().all(corrupt) {
                    e.all_corrupt += 1;
                }
                if mixes.iter().any(corrupt) {
                    e.any_corrupt += 1;
                }
            }
        }
        (route.first().copied().unwrap_or(u32::MAX), p)
    }
}

/// A route being built, without allocating.
#[derive(Default)]
struct Route {
    hops: [u32; MAX_ROUTE],
    len: usize,
}

impl Route {
    fn push(&mut self, n: u32) {
        if let Some(slot) = self.hops.get_mut(self.len) {
            *slot = n;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[u32] {
        &self.hops[..self.len]
    }
}

/// What deliveries add up to: latency and the challenge senders'
/// unlinkability. Order matters (float sums, the reservoir's draws), so the
/// engine feeds it deliveries in time order.
pub(super) struct Outcome {
    pub latency: Latency,
    pub unlinkability: Unlinkability,
    reservoir_rng: ChaCha8Rng,
}

impl Outcome {
    pub(super) fn new(reservoir_rng: ChaCha8Rng) -> Self {
        Self {
            latency: Latency::default(),
            unlinkability: Unlinkability::default(),
            reservoir_rng,
        }
    }

    /// Whether a delivery of `p` is measured at all.
    pub(super) fn counts<const H: usize>(p: &Packet<H>) -> bool {
        p.measured && p.kind == Kind::Real
    }

    /// `p` reached its last hop (at a time the caller orders deliveries by).
    pub(super) fn deliver<const H: usize>(&mut self, p: &Packet<H>) {
        if !Self::counts(p) {
            return;
        }
        let latency = p.age_at_delivery().as_secs_f64();
        let l = &mut self.latency;
        l.count += 1;
        l.sum += latency;
        l.sum_sq += latency * latency;
        if l.sample.len() < LATENCY_RESERVOIR {
            l.sample.push(latency);
        } else {
            let j = self.reservoir_rng.random_range(0..l.count);
            if let Some(slot) = l.sample.get_mut(j as usize) {
                *slot = latency;
            }
        }
        if p.challenge < NO_CHALLENGE {
            let own = p.mass[usize::from(p.challenge)];
            let other = p.mass[1 - usize::from(p.challenge)];
            let u = &mut self.unlinkability;
            u.messages += 1;
            if other > 0.0 && own > 0.0 {
                u.epsilons.push((own / other).ln().abs());
            } else {
                u.linked += 1;
            }
        }
    }
}
