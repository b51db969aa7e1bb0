//! The discrete-event engine: one run of one scenario in virtual time.
//!
//! Nothing here re-implements mixing. Every packet is routed by
//! [`Topology::random_mix_path`], gets its per-hop delays from
//! [`sample_delays`], is held by each hop's [`Mix`] (the node's own pool
//! and rules) until its deadline, and every client stream and mix loop stream is a [`PoissonTicker`] — the
//! same sans-IO code `loopmix-client` and `loopmix-node` run, driven here by
//! a virtual clock ([`SimTime`]). Only Sphinx itself is abstracted away: a
//! packet is its route, its delays and a little bookkeeping.
//!
//! Determinism: the scheduler is itself a core [`DelayQueue`] (time, then
//! insertion order), every entity has its own seeded ChaCha8 stream, and
//! nothing iterates a hash map.
//!
//! Anonymity is measured as in Loopix §4.3 / the MiXiM simulator: each
//! packet carries a probability mass over the two challenge senders. An
//! honest mix adds arriving mass to its pool and gives each departing packet
//! the pool average (memorylessness makes every pooled packet equally likely
//! to be the one leaving); a corrupt mix, and every provider (the first one
//! authenticates the sender, the last one is the recipient's), passes mass
//! through unchanged.

use std::ops::{Add, Sub};
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::keys::{IdentityKeypair, SphinxPublicKey};
use loopmix_core::mixing::delay_queue::DelayQueue;
use loopmix_core::mixing::entropy::EntropyWindow;
use loopmix_core::mixing::mix::{Decision, Mix, MixConfig};
use loopmix_core::poisson::PoissonTicker;
use loopmix_core::sphinx::sample_delays;
use loopmix_core::topology::{
    LayerExclusion, MAX_EXCLUDED_FRACTION, NetworkParams, NodeEntry, Role, Topology,
    TopologyDocument, TopologyError,
};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::{SIM_MAX_LAYERS, Scenario};

/// Virtual time: nanoseconds since the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(pub u64);

impl SimTime {
    pub fn from_secs_f64(s: f64) -> Self {
        SimTime((s.max(0.0) * 1e9).round() as u64)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

impl Add<Duration> for SimTime {
    type Output = SimTime;
    fn add(self, d: Duration) -> SimTime {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        SimTime(self.0.saturating_add(ns))
    }
}

impl Sub for SimTime {
    type Output = Duration;
    fn sub(self, o: SimTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(o.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("building the simulated topology: {0}")]
    Topology(#[from] TopologyError),
}

/// What a packet is; only the simulator knows (on the wire all look alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A real message on the payload stream.
    Real,
    /// A drop sent on a payload tick with nothing queued.
    PayloadDrop,
    /// Client loop cover (λ_L).
    Loop,
    /// Client drop cover (λ_D).
    Drop,
    /// Mix loop cover (λ_M).
    MixLoop,
}

/// The longest route: two providers and [`SIM_MAX_LAYERS`] mixes.
const MAX_HOPS: usize = SIM_MAX_LAYERS as usize + 2;

struct Packet {
    route: [u32; MAX_HOPS],
    delays_ns: [u64; MAX_HOPS],
    len: u8,
    hop: u8,
    kind: Kind,
    origin: u32,
    created: SimTime,
    /// Created inside the measurement window.
    measured: bool,
    /// Probability that this packet is one of challenge sender 0's / 1's.
    mass: [f64; 2],
}

struct Node {
    /// 0 for providers, else the 1-based mix layer.
    layer: u8,
    corrupt: bool,
    pool: MixPool,
    rng: ChaCha8Rng,
    loops: PoissonTicker<SimTime>,
    window: Option<EntropyWindow>,
}

/// One simulated node's pool: the core's [`Mix`] (the rules the node's
/// delay stage runs) and the challenge senders' probability mass it holds.
/// The engine hands it each arrival and, at every deadline, releases what
/// is due, as the node's delay stage does with its wake-ups.
pub struct MixPool {
    mix: Mix<SimTime, u32>,
    /// An honest mix mixes probability mass (a corrupt one sees through,
    /// and providers do not count).
    mixes_mass: bool,
    mass: [f64; 2],
}

/// A packet leaving a [`MixPool`].
#[derive(Debug, PartialEq)]
pub struct Departure {
    pub decision: Decision<SimTime, u32>,
    /// The probability mass a forwarded packet carries on from an honest
    /// mix; `None`: it keeps its own.
    pub mass: Option<[f64; 2]>,
}

impl MixPool {
    pub fn new(cfg: MixConfig, mixes_mass: bool) -> Self {
        Self {
            mix: Mix::new(cfg),
            mixes_mass,
            mass: [0.0; 2],
        }
    }

    /// Packet `id`, carrying `mass`, received at `received` and asking to
    /// be held `delay`, is handed over at `now`: `None` if the pool holds
    /// it (it is due at `received + delay`), else what happens to it at once.
    pub fn arrive(
        &mut self,
        id: u32,
        received: SimTime,
        delay: Duration,
        now: SimTime,
        mass: [f64; 2],
    ) -> Option<Decision<SimTime, u32>> {
        let d = self.mix.on_processed(id, received, delay, now);
        if d.is_none() && self.mixes_mass {
            self.mass[0] += mass[0];
            self.mass[1] += mass[1];
        }
        d
    }

    /// Every packet due at `now`, in deadline order, into `out`.
    pub fn release_due(&mut self, now: SimTime, out: &mut Vec<Departure>) {
        while let Some(decision) = self.mix.poll_due(now) {
            let mass = match decision {
                Decision::Forward { .. } => self.share_mass(),
                Decision::Drop { .. } => None,
            };
            out.push(Departure { decision, mass });
        }
    }

    /// The departing packet's mass: every packet that was in the pool is
    /// equally likely to be this one.
    fn share_mass(&mut self) -> Option<[f64; 2]> {
        if !self.mixes_mass || (self.mass[0] <= 0.0 && self.mass[1] <= 0.0) {
            return None;
        }
        let k = (self.mix.len() + 1) as f64;
        let mut out = [0.0; 2];
        for (pm, m) in self.mass.iter_mut().zip(out.iter_mut()) {
            *m = *pm / k;
            *pm = if self.mix.is_empty() {
                0.0
            } else {
                (*pm - *m).max(0.0)
            };
        }
        Some(out)
    }

    /// Entropy and pool-size averages since the last call.
    pub fn take_entropy_window(&mut self, now: SimTime) -> EntropyWindow {
        self.mix.take_entropy_window(now)
    }

    /// `H_t` after the latest departure, bits.
    pub fn entropy_bits(&self) -> f64 {
        self.mix.entropy_bits()
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.mix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mix.is_empty()
    }
}

struct Client {
    provider: u32,
    rng: ChaCha8Rng,
    /// λ_P, λ_L, λ_D.
    streams: [PoissonTicker<SimTime>; 3],
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    WindowStart,
    WindowEnd,
    Tick { client: u32, stream: u8 },
    MixLoop { node: u32 },
    Release { node: u32 },
}

/// Per-node measurements over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResult {
    pub index: u32,
    /// 0 = provider, else the mix layer.
    pub layer: u8,
    pub corrupt: bool,
    pub arrivals: u64,
    pub departures: u64,
    /// Measured arrival rate, per second.
    pub arrival_rate: f64,
    /// Time-averaged pool size.
    pub mean_pool: f64,
    /// Mean Eq. 5 entropy over the departures, bits.
    pub mean_entropy_bits: f64,
}

/// Packets created in the window, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub real: u64,
    pub payload_drop: u64,
    pub loops: u64,
    pub drops: u64,
    pub mix_loops: u64,
}

impl Traffic {
    pub fn cover(&self) -> u64 {
        self.payload_drop + self.loops + self.drops + self.mix_loops
    }
    /// Cover packets per real packet (∞ without real traffic).
    pub fn cover_per_real(&self) -> f64 {
        if self.real == 0 {
            f64::INFINITY
        } else {
            self.cover() as f64 / self.real as f64
        }
    }
    fn count(&mut self, k: Kind) {
        let c = match k {
            Kind::Real => &mut self.real,
            Kind::PayloadDrop => &mut self.payload_drop,
            Kind::Loop => &mut self.loops,
            Kind::Drop => &mut self.drops,
            Kind::MixLoop => &mut self.mix_loops,
        };
        *c += 1;
    }
}

/// The most latency samples a run keeps (a uniform reservoir); the mean and
/// variance use every sample.
pub const LATENCY_RESERVOIR: usize = 100_000;

/// End-to-end latency of real messages sent in the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// A uniform sample of at most [`LATENCY_RESERVOIR`] latencies, seconds.
    pub sample: Vec<f64>,
}

impl Latency {
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
    pub fn sd(&self) -> f64 {
        let n = self.count as f64;
        if n < 2.0 {
            return 0.0;
        }
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0))
            .max(0.0)
            .sqrt()
    }
}

/// Sender–receiver unlinkability of the challenge senders' messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unlinkability {
    /// Challenge messages delivered.
    pub messages: u64,
    /// ε = |ln(p_own / p_other)| of each message where p_other > 0.
    pub epsilons: Vec<f64>,
    /// Messages with p_other = 0: the adversary knows the sender (the δ of
    /// (ε, δ)-unlinkability).
    pub linked: u64,
}

impl Unlinkability {
    pub fn mean_epsilon(&self) -> f64 {
        if self.epsilons.is_empty() {
            f64::NAN
        } else {
            self.epsilons.iter().sum::<f64>() / self.epsilons.len() as f64
        }
    }
    pub fn delta(&self) -> f64 {
        if self.messages == 0 {
            f64::NAN
        } else {
            self.linked as f64 / self.messages as f64
        }
    }
}

/// How many real messages sent in the window crossed corrupt mixes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Exposure {
    /// Real messages (all clients) created in the window.
    pub routes: u64,
    /// Of those, routes whose every mix is corrupt: the adversary links
    /// sender and recipient outright.
    pub all_corrupt: u64,
    /// Routes through at least one corrupt mix.
    pub any_corrupt: u64,
}

impl Exposure {
    pub fn all_share(&self) -> f64 {
        self.all_corrupt as f64 / self.routes.max(1) as f64
    }
    pub fn any_share(&self) -> f64 {
        self.any_corrupt as f64 / self.routes.max(1) as f64
    }
}

/// Everything one repetition measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub repetition: u32,
    pub seed: u64,
    /// Scheduler events processed (ticks and per-hop releases).
    pub events: u64,
    pub nodes: Vec<NodeResult>,
    pub traffic: Traffic,
    pub latency: Latency,
    pub unlinkability: Unlinkability,
    pub exposure: Exposure,
    /// Per layer, how the liveness list of [`Scenario::excluded_honest`]
    /// was applied to route choice.
    pub exclusions: Vec<LayerExclusion>,
}

impl RunResult {
    pub fn mixes(&self) -> impl Iterator<Item = &NodeResult> {
        self.nodes.iter().filter(|n| n.layer > 0)
    }
    pub fn mean_pool(&self) -> f64 {
        mean(self.mixes().map(|m| m.mean_pool))
    }
    pub fn mean_entropy_bits(&self) -> f64 {
        mean(self.mixes().map(|m| m.mean_entropy_bits))
    }
    pub fn mean_arrival_rate(&self) -> f64 {
        mean(self.mixes().map(|m| m.arrival_rate))
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// SplitMix64: derives independent seeds from the master seed.
pub fn derive_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of repetition `rep`.
pub fn repetition_seed(seed: u64, rep: u32) -> u64 {
    derive_seed(seed, u64::from(rep) + 1)
}

/// One independent RNG stream per entity.
fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}
const STREAM_TOPOLOGY: u64 = 0;
const STREAM_RESERVOIR: u64 = 1;
const STREAM_FIRST_ENTITY: u64 = 16;

/// Simulated nodes are named by address: node `i` is `10.0.0.0 + i + 1`,
/// so the hot path maps a routed [`NodeEntry`] back to its index without a
/// hash lookup.
const ADDRESS_BASE: u32 = 0x0A00_0001;

fn node_index(e: &NodeEntry) -> u32 {
    match e.address.ip() {
        std::net::IpAddr::V4(ip) => u32::from(ip).wrapping_sub(ADDRESS_BASE),
        std::net::IpAddr::V6(_) => u32::MAX,
    }
}

/// The topology document of the simulated network: providers first, then
/// the mixes layer by layer, with keys derived from the seed. The core
/// validates it exactly as it would a real one.
pub fn build_topology(s: &Scenario, seed: u64) -> Result<Topology, EngineError> {
    let total = s.providers + s.mixes();
    let nodes = (0..total)
        .map(|i| {
            let key = derive_seed(seed, 0x1D00_0000 + u64::from(i)).to_le_bytes();
            let mut secret = [7u8; 32];
            secret[..8].copy_from_slice(&key);
            secret[8..12].copy_from_slice(&i.to_le_bytes());
            let (role, layer) = if i < s.providers {
                (Role::Provider, None)
            } else {
                let layer = ((i - s.providers) / s.mixes_per_layer) as u8 + 1;
                (Role::Mix, Some(layer))
            };
            NodeEntry {
                id: IdentityKeypair::from_secret_bytes(&secret).node_id(),
                sphinx_key: SphinxPublicKey(secret),
                address: std::net::SocketAddr::new(
                    std::net::Ipv4Addr::from(ADDRESS_BASE.wrapping_add(i)).into(),
                    1,
                ),
                role,
                layer,
            }
        })
        .collect();
    let doc = TopologyDocument {
        params: NetworkParams {
            epoch: 1,
            layers: s.layers,
            mean_hop_delay_ms: 1000.0 / s.mu,
            lambda_p_per_s: s.lambda_p,
            lambda_l_per_s: s.lambda_l,
            lambda_d_per_s: s.lambda_d,
            lambda_m_per_s: s.lambda_m,
            payload_size: 1024,
        },
        nodes,
    };
    Ok(Topology::with_layer_limit(doc, SIM_MAX_LAYERS)?)
}

/// Called every few thousand events with the fraction of virtual time done.
pub type Progress<'a> = &'a mut dyn FnMut(f64);

struct World<'t> {
    topology: &'t Topology,
    mean_delay: Duration,
    real_fraction: f64,
    providers: u32,
    clients_n: u32,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    packets: Vec<Packet>,
    free: Vec<u32>,
    sched: DelayQueue<SimTime, Ev>,
    /// Reused by `release` (one per event would allocate in the hot loop).
    departures: Vec<Departure>,
    in_window: bool,
    traffic: Traffic,
    latency: Latency,
    reservoir_rng: ChaCha8Rng,
    unlinkability: Unlinkability,
    exposure: Exposure,
}

/// Runs repetition `rep` of `s` (which must be valid).
pub fn run(s: &Scenario, rep: u32, progress: Progress<'_>) -> Result<RunResult, EngineError> {
    let seed = repetition_seed(s.seed, rep);
    let topology = build_topology(s, seed)?;
    // 1/μ exactly as the client computes it from the topology.
    let mean_delay = Duration::try_from_secs_f64(topology.params().mean_hop_delay_ms / 1000.0)
        .unwrap_or(Duration::ZERO);
    let burn_in = SimTime::from_secs_f64(s.burn_in_s);
    let window_end = SimTime::from_secs_f64(s.burn_in_s + s.duration_s);
    let end = SimTime::from_secs_f64(s.burn_in_s + s.duration_s + s.cooldown_s());
    let start = SimTime(0);

    let mut sched = DelayQueue::new(usize::MAX);
    // Pushed first, so they run before anything else due at the same time.
    let _ = sched.push(burn_in, Ev::WindowStart);
    let _ = sched.push(window_end, Ev::WindowEnd);

    let mut topo_rng = stream(seed, STREAM_TOPOLOGY);
    let mut mix_ids: Vec<u32> = (s.providers..s.providers + s.mixes()).collect();
    mix_ids.shuffle(&mut topo_rng);
    let corrupt: std::collections::BTreeSet<u32> = if s.corrupt_spread {
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
    };
    // The active adversary of `docs/THREAT_MODEL.md` ("Liveness routing"):
    // it has got `excluded_honest` honest mixes per layer onto the network's
    // down list, and every sender routes with the core's exclusion rules.
    let topology = if s.excluded_honest > 0 {
        let mut down = std::collections::BTreeSet::<NodeId>::new();
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
    } else {
        topology
    };

    let params = topology.params();
    let mut nodes = Vec::with_capacity(topology.nodes().len());
    for (i, e) in topology.nodes().iter().enumerate() {
        let i = i as u32;
        let mut rng = stream(seed, STREAM_FIRST_ENTITY + u64::from(i));
        let rate = if e.role == Role::Mix {
            params.lambda_m_per_s
        } else {
            0.0
        };
        let loops = PoissonTicker::new(&mut rng, rate, start);
        if let Some(t) = loops.next_deadline() {
            let _ = sched.push(t, Ev::MixLoop { node: i });
        }
        let layer = e.layer.unwrap_or(0);
        let corrupt = corrupt.contains(&i);
        nodes.push(Node {
            layer,
            corrupt,
            // Unbounded and never late: the simulator models the mixing,
            // not overload (virtual time has no processing backlog).
            pool: MixPool::new(
                MixConfig {
                    queue_limit: usize::MAX,
                    late_tolerance: Duration::MAX,
                },
                layer > 0 && !corrupt,
            ),
            rng,
            loops,
            window: None,
        });
    }
    let first_client = STREAM_FIRST_ENTITY + nodes.len() as u64;
    let mut clients = Vec::with_capacity(s.clients as usize);
    for c in 0..s.clients {
        let mut rng = stream(seed, first_client + u64::from(c));
        let streams = [
            params.lambda_p_per_s,
            params.lambda_l_per_s,
            params.lambda_d_per_s,
        ]
        .map(|rate| PoissonTicker::new(&mut rng, rate, start));
        for (k, t) in streams.iter().enumerate() {
            if let Some(at) = t.next_deadline() {
                let _ = sched.push(
                    at,
                    Ev::Tick {
                        client: c,
                        stream: k as u8,
                    },
                );
            }
        }
        clients.push(Client {
            provider: c % s.providers,
            rng,
            streams,
        });
    }

    let mut w = World {
        topology: &topology,
        mean_delay,
        real_fraction: s.real_fraction,
        providers: s.providers,
        clients_n: s.clients,
        nodes,
        clients,
        packets: Vec::new(),
        free: Vec::new(),
        sched,
        departures: Vec::new(),
        in_window: false,
        traffic: Traffic::default(),
        latency: Latency::default(),
        reservoir_rng: stream(seed, STREAM_RESERVOIR),
        unlinkability: Unlinkability::default(),
        exposure: Exposure::default(),
    };

    let mut events = 0u64;
    let end_secs = end.as_secs_f64().max(1e-9);
    while let Some(due) = w.sched.next_deadline() {
        if due > end {
            break;
        }
        let Some((now, ev)) = w.sched.pop_due(due) else {
            break;
        };
        events += 1;
        if events & 0xFFFF == 0 {
            progress(now.as_secs_f64() / end_secs);
        }
        match ev {
            Ev::WindowStart => {
                w.in_window = true;
                for n in &mut w.nodes {
                    n.pool.take_entropy_window(now);
                }
            }
            Ev::WindowEnd => {
                w.in_window = false;
                for n in &mut w.nodes {
                    n.window = Some(n.pool.take_entropy_window(now));
                }
            }
            Ev::Tick { client, stream } => w.client_tick(client, stream, now),
            Ev::MixLoop { node } => w.mix_loop(node, now),
            Ev::Release { node } => w.release(node, now),
        }
    }
    progress(1.0);

    let measured = (window_end - burn_in).as_secs_f64();
    let nodes = w
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let win = n.window.unwrap_or_default();
            NodeResult {
                index: i as u32,
                layer: n.layer,
                corrupt: n.corrupt,
                arrivals: win.arrivals,
                departures: win.departures,
                arrival_rate: win.arrivals as f64 / measured,
                mean_pool: win.mean_pool_size.unwrap_or(0.0),
                mean_entropy_bits: win.mean_entropy_bits.unwrap_or(0.0),
            }
        })
        .collect();
    Ok(RunResult {
        repetition: rep,
        seed,
        events,
        nodes,
        traffic: w.traffic,
        latency: w.latency,
        unlinkability: w.unlinkability,
        exposure: w.exposure,
        exclusions: topology.exclusions().to_vec(),
    })
}

impl World<'_> {
    fn alloc(&mut self, p: Packet) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.packets[i as usize] = p;
                i
            }
            None => {
                self.packets.push(p);
                (self.packets.len() - 1) as u32
            }
        }
    }

    /// A new packet from `origin` along `route`, with the core's delays.
    fn launch(
        &mut self,
        rng_owner: RngOwner,
        kind: Kind,
        origin: u32,
        route: &[u32],
        now: SimTime,
    ) {
        let rng = match rng_owner {
            RngOwner::Client(c) => &mut self.clients[c as usize].rng,
            RngOwner::Node(n) => &mut self.nodes[n as usize].rng,
        };
        let delays = sample_delays(rng, route.len(), self.mean_delay);
        let len = route.len().min(MAX_HOPS);
        let mut p = Packet {
            route: [0; MAX_HOPS],
            delays_ns: [0; MAX_HOPS],
            len: len as u8,
            hop: 0,
            kind,
            origin,
            created: now,
            measured: self.in_window,
            mass: [0.0; 2],
        };
        p.route[..len].copy_from_slice(&route[..len]);
        for (slot, d) in p.delays_ns.iter_mut().zip(&delays) {
            *slot = d.to_nanos();
        }
        if self.in_window {
            self.traffic.count(kind);
            if kind == Kind::Real && origin < 2 {
                p.mass[origin as usize] = 1.0;
            }
            if kind == Kind::Real {
                // Client routes: provider, the mixes, provider.
                let mixes = &route[1..len.saturating_sub(1).max(1)];
                let corrupt = |&m: &u32| self.nodes.get(m as usize).is_some_and(|n| n.corrupt);
                let e = &mut self.exposure;
                e.routes += 1;
                if !mixes.is_empty() && mixes.iter().all(corrupt) {
                    e.all_corrupt += 1;
                }
                if mixes.iter().any(corrupt) {
                    e.any_corrupt += 1;
                }
            }
        }
        let first = p.route[0];
        let id = self.alloc(p);
        self.arrive(first, id, now);
    }

    /// The mix layers of a fresh route, as node indexes (core routing).
    fn mix_path(&mut self, owner: RngOwner, out: &mut Vec<u32>) {
        let rng = match owner {
            RngOwner::Client(c) => &mut self.clients[c as usize].rng,
            RngOwner::Node(n) => &mut self.nodes[n as usize].rng,
        };
        out.extend(
            self.topology
                .random_mix_path(rng)
                .into_iter()
                .map(node_index),
        );
    }

    fn client_tick(&mut self, client: u32, stream: u8, now: SimTime) {
        let c = &mut self.clients[client as usize];
        let Some(ticker) = c.streams.get_mut(stream as usize) else {
            return;
        };
        if ticker.poll(&mut c.rng, now).is_none() {
            return;
        }
        if let Some(next) = ticker.next_deadline() {
            let _ = self.sched.push(next, Ev::Tick { client, stream });
        }
        let own = c.provider;
        let (kind, last) = match stream {
            0 => {
                // Challenge senders (clients 0, 1) always have a message queued.
                let real = client < 2 || c.rng.random_bool(self.real_fraction);
                if real {
                    // A uniformly random other client; its provider is the last hop.
                    let mut to = c.rng.random_range(0..self.clients_n - 1);
                    if to >= client {
                        to += 1;
                    }
                    (Kind::Real, self.clients[to as usize].provider)
                } else {
                    (Kind::PayloadDrop, c.rng.random_range(0..self.providers))
                }
            }
            1 => (Kind::Loop, own),
            _ => (Kind::Drop, c.rng.random_range(0..self.providers)),
        };
        let mut route = Vec::with_capacity(MAX_HOPS);
        route.push(own);
        self.mix_path(RngOwner::Client(client), &mut route);
        route.push(last);
        self.launch(RngOwner::Client(client), kind, client, &route, now);
    }

    fn mix_loop(&mut self, node: u32, now: SimTime) {
        let n = &mut self.nodes[node as usize];
        if n.loops.poll(&mut n.rng, now).is_none() {
            return;
        }
        if let Some(next) = n.loops.next_deadline() {
            let _ = self.sched.push(next, Ev::MixLoop { node });
        }
        // As loopmix-node's LoopCover: one mix per layer, then back to us.
        let mut route = Vec::with_capacity(MAX_HOPS);
        self.mix_path(RngOwner::Node(node), &mut route);
        route.push(node);
        self.launch(RngOwner::Node(node), Kind::MixLoop, node, &route, now);
    }

    /// Packet `id` reaches `node` at `now`: delivered if this is its last
    /// hop, else queued for its header delay.
    fn arrive(&mut self, node: u32, id: u32, now: SimTime) {
        let p = &self.packets[id as usize];
        if p.hop + 1 >= p.len {
            self.deliver(id, now);
            return;
        }
        let delay = Duration::from_nanos(p.delays_ns[p.hop as usize]);
        let mass = p.mass;
        let Some(n) = self.nodes.get_mut(node as usize) else {
            self.free.push(id);
            return;
        };
        // Virtual time has no queue in front of the pool: received now.
        match n.pool.arrive(id, now, delay, now, mass) {
            None => {
                let _ = self.sched.push(now + delay, Ev::Release { node });
            }
            // A zero delay: the node would forward it at once, unmixed.
            Some(Decision::Forward { .. }) => self.hop(id, now),
            Some(Decision::Drop { .. }) => self.free.push(id),
        }
    }

    /// A deadline of `node` passed: forward what is due to its next hops.
    fn release(&mut self, node: u32, now: SimTime) {
        let mut out = std::mem::take(&mut self.departures);
        self.nodes[node as usize].pool.release_due(now, &mut out);
        for d in out.drain(..) {
            match d.decision {
                Decision::Forward { item, .. } => {
                    if let Some(mass) = d.mass {
                        self.packets[item as usize].mass = mass;
                    }
                    self.hop(item, now);
                }
                Decision::Drop { item, .. } => self.free.push(item),
            }
        }
        self.departures = out;
    }

    /// Packet `id` leaves `node` for its next hop.
    fn hop(&mut self, id: u32, now: SimTime) {
        let p = &mut self.packets[id as usize];
        p.hop += 1;
        let next = p.route[p.hop as usize];
        self.arrive(next, id, now);
    }

    fn deliver(&mut self, id: u32, now: SimTime) {
        self.free.push(id);
        let p = &self.packets[id as usize];
        if !p.measured || p.kind != Kind::Real {
            return;
        }
        let latency = (now - p.created).as_secs_f64();
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
        if p.origin < 2 {
            let own = p.mass[p.origin as usize];
            let other = p.mass[1 - p.origin as usize];
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

#[derive(Clone, Copy)]
enum RngOwner {
    Client(u32),
    Node(u32),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    // That the node's delay stage and `MixPool` decide alike for the same
    // events is shown in loopmix-node (`pipeline.rs`), which can see both.

    #[test]
    fn an_honest_pool_gives_each_departure_the_pool_average_mass() {
        let cfg = MixConfig {
            queue_limit: 8,
            late_tolerance: Duration::MAX,
        };
        let ms = Duration::from_millis;
        let t0 = SimTime::default();
        for honest in [true, false] {
            let mut pool = MixPool::new(cfg, honest);
            assert_eq!(pool.arrive(0, t0, ms(10), t0, [1.0, 0.0]), None);
            assert_eq!(pool.arrive(1, t0, ms(20), t0, [0.0, 1.0]), None);
            assert_eq!(pool.arrive(2, t0, ms(30), t0, [0.0, 0.0]), None);
            let mut out = Vec::new();
            pool.release_due(t0 + ms(20), &mut out);
            pool.release_due(t0 + ms(30), &mut out);
            let masses: Vec<_> = out.iter().map(|d| d.mass).collect();
            let items: Vec<_> = out
                .iter()
                .map(|d| match d.decision {
                    Decision::Forward { item, .. } => item,
                    Decision::Drop { .. } => panic!("{d:?}"),
                })
                .collect();
            assert_eq!(items, [0, 1, 2]);
            if honest {
                // A third of each sender's mass leaves with the first packet,
                // then half of the rest with each of the other two.
                let third = 1.0 / 3.0;
                let rest = (1.0 - third) / 2.0;
                assert_eq!(
                    masses,
                    [Some([third, third]), Some([rest, rest]), Some([rest, rest])]
                );
            } else {
                assert_eq!(masses, [None, None, None], "a corrupt mix sees through");
            }
            assert!(pool.is_empty());
        }
    }

    #[test]
    fn node_index_round_trips_through_the_topology() {
        let s = Scenario {
            clients: 10,
            providers: 2,
            ..Scenario::default()
        };
        let t = build_topology(&s, 1).unwrap();
        for (i, e) in t.nodes().iter().enumerate() {
            assert_eq!(node_index(e), i as u32);
        }
        assert_eq!(t.layer(3).count(), 10);
    }
}
