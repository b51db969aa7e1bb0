//! The discrete-event engine: one run of one scenario in virtual time.
//!
//! Nothing here re-implements mixing. Every packet is routed by
//! [`Topology::random_mix_path`], gets its per-hop delays from
//! [`loopmix_core::sphinx::sample_delays`], is held by each hop's [`Mix`]
//! (the node's own pool and rules) until its deadline, and every client
//! stream and mix loop stream is a [`loopmix_core::poisson::PoissonTicker`]
//! — the same sans-IO code `loopmix-client` and `loopmix-node` run, driven
//! here by a virtual clock ([`SimTime`]). Only Sphinx itself is abstracted
//! away: a packet is its route, its delays and a little bookkeeping.
//!
//! How a run is scheduled: `pipeline` (slices of virtual time; in each,
//! the senders, then each layer's nodes, every stage split across threads),
//! which gives exactly what one plain event loop over all ticks, releases
//! and arrivals gives (`reference`, kept for the tests that show it).
//! `sources` makes every packet for both.
//!
//! Determinism: every entity has its own seeded ChaCha8 stream, nothing
//! iterates a hash map, and events at the same nanosecond follow a fixed
//! order (the window marks, ticks, releases, then arrivals by packet uid),
//! so the same seed gives the same output on any number of threads.
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

use loopmix_core::keys::{IdentityKeypair, SphinxPublicKey};
use loopmix_core::mixing::entropy::EntropyWindow;
use loopmix_core::mixing::mix::{Decision, Mix, MixConfig};
use loopmix_core::topology::{
    LayerExclusion, NetworkParams, NodeEntry, Role, Topology, TopologyDocument, TopologyError,
};
use rand::SeedableRng;
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
    /// A route that does not go provider, layer 1, …, layer L: the
    /// pipeline could not run it exactly (a bug, not bad input).
    #[error("a route does not cross the layers in order")]
    Unordered,
    /// More nodes than a packet can name ([`MAX_NODES`]; the scenario's
    /// limits stay far below).
    #[error("{0} nodes: the simulator names at most {MAX_NODES}")]
    TooManyNodes(usize),
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

/// The most hops that hold a packet: the first provider and
/// [`SIM_MAX_LAYERS`] mixes (the last hop delivers it, holding nothing).
const MAX_HOPS: usize = SIM_MAX_LAYERS as usize + 1;

/// The longest route: two providers and [`SIM_MAX_LAYERS`] mixes.
const MAX_ROUTE: usize = SIM_MAX_LAYERS as usize + 2;

/// Routes of up to 3 layers fit in packets this short (most runs): a
/// smaller packet is less memory to move per hop.
const SHORT_HOPS: usize = 4;

/// A delay fits in this many bits: the core caps one at an hour,
/// 3.6·10¹² ns < 2⁴².
const DELAY_BITS: u32 = 42;
const DELAY_MASK: u64 = (1 << DELAY_BITS) - 1;

/// Node indexes fit in the bits above a delay: far more nodes than a
/// scenario can have (10,000 providers and 8 layers of 10,000 mixes).
const MAX_NODES: usize = 1 << (u64::BITS - DELAY_BITS);

/// [`Packet::challenge`] of a packet that is not a challenge sender's.
const NO_CHALLENGE: u8 = 2;

/// One packet whose route holds it at most `H` times: its route and
/// per-hop delays (fixed by its sender, as in Sphinx), and what the
/// simulator alone knows about it. Only what a later hop reads is kept,
/// since every hop moves the packet through memory: the route without its
/// first hop (where the sender hands it over), each next node packed with
/// the delay before it, the delays without the last (never applied), and
/// no creation time (links take no time, so a packet's age is the sum of
/// its delays so far).
#[derive(Clone, Copy)]
struct Packet<const H: usize> {
    /// `hops[i]`, for each hop `i` that holds it (0 ..= len − 2): how long
    /// it holds it, in ns, in the low [`DELAY_BITS`], and the node of hop
    /// `i + 1` in the bits above.
    hops: [u64; H],
    /// Probability that this packet is one of challenge sender 0's / 1's.
    mass: [f64; 2],
    /// Unique and independent of scheduling: the sender's entity number
    /// and its own packet count. Orders packets due at the same instant.
    uid: u64,
    /// Hops in the whole route.
    len: u8,
    /// The hop the packet is at (0: the first).
    hop: u8,
    kind: Kind,
    /// The challenge sender (0 or 1) whose real message this is, else
    /// [`NO_CHALLENGE`].
    challenge: u8,
    /// Created inside the measurement window.
    measured: bool,
}

/// One word of [`Packet::hops`]: a holding hop's delay (capped at
/// [`DELAY_MASK`], above the core's one-hour cap) and the node after it.
fn hop_word(delay_ns: u64, next: u32) -> u64 {
    delay_ns.min(DELAY_MASK) | (u64::from(next) << DELAY_BITS)
}

impl<const H: usize> Packet<H> {
    /// The packet is at its last hop: it is delivered there, not pooled.
    #[cfg(test)]
    fn last_leg(&self) -> bool {
        self.hop + 1 >= self.len
    }

    /// Leaving the hop it is at, the packet is delivered at the next.
    fn leaving_last_leg(&self) -> bool {
        self.hop + 2 >= self.len
    }

    /// The node of the hop after the one it is at.
    fn next_node(&self) -> Option<u32> {
        let word = self.hops.get(usize::from(self.hop))?;
        Some((word >> DELAY_BITS) as u32)
    }

    /// The delay of the hop it is at.
    fn delay(&self) -> Duration {
        let word = self.hops.get(usize::from(self.hop)).copied();
        Duration::from_nanos(word.map_or(0, |w| w & DELAY_MASK))
    }

    /// Time since it was sent, at its last hop: every delay it was held.
    fn age_at_delivery(&self) -> Duration {
        let held = usize::from(self.len.saturating_sub(1));
        Duration::from_nanos(self.hops.iter().take(held).map(|w| w & DELAY_MASK).sum())
    }
}

/// One simulated node's pool: the core's [`Mix`] (the rules the node's
/// delay stage runs) and the challenge senders' probability mass it holds.
/// Its packets wait in a [`HeapQueue`], which releases them in the core
/// queue's order at a fraction of a binary heap's cost.
/// The engine hands it each arrival and, at every deadline, releases what
/// is due, as the node's delay stage does with its wake-ups.
pub struct MixPool {
    mix: Mix<SimTime, u32, HeapQueue>,
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
            mix: Mix::with_queue(cfg, HeapQueue::new(cfg.queue_limit)),
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

    /// A simulated node's pool: unbounded and never late, because the
    /// simulator models the mixing, not overload (virtual time has no
    /// processing backlog).
    fn simulated(mixes_mass: bool) -> Self {
        Self::new(
            MixConfig {
                queue_limit: usize::MAX,
                late_tolerance: Duration::MAX,
            },
            mixes_mass,
        )
    }

    /// When the next held packet is due.
    pub fn next_deadline(&self) -> Option<SimTime> {
        self.mix.next_deadline()
    }

    /// Every packet due at `now`, in deadline order, into `out`.
    pub fn release_due(&mut self, now: SimTime, out: &mut Vec<Departure>) {
        while let Some(d) = self.release_next(now) {
            out.push(d);
        }
    }

    /// The next packet due at `now`, if any (call until `None`): what
    /// [`Self::release_due`] gives one at a time, without the buffer.
    pub fn release_next(&mut self, now: SimTime) -> Option<Departure> {
        let decision = self.mix.poll_due(now)?;
        let mass = match decision {
            Decision::Forward { .. } => self.share_mass(),
            Decision::Drop { .. } => None,
        };
        Some(Departure { decision, mass })
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

    /// Brings the pool's queue into cache (see `HeapQueue::warm`).
    fn warm(&self) {
        self.mix.queue().warm();
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.mix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mix.is_empty()
    }
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
mod heap;
mod pipeline;
#[cfg(test)]
mod reference;
mod sources;

use heap::HeapQueue;

/// Threads a run uses; 0: one per core. Set once by the binary's
/// `--threads`; the output never depends on it (the pipeline is exact).
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the threads every later run uses (0: one per core).
pub fn set_threads(n: usize) {
    THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The threads a run will use.
pub fn threads() -> usize {
    match THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs repetition `rep` of `s` (which must be valid).
pub fn run(s: &Scenario, rep: u32, progress: Progress<'_>) -> Result<RunResult, EngineError> {
    run_on(s, rep, threads(), progress)
}

/// [`run`] on `threads` threads.
pub fn run_on(
    s: &Scenario,
    rep: u32,
    threads: usize,
    progress: Progress<'_>,
) -> Result<RunResult, EngineError> {
    let setup = sources::Setup::new(s, rep)?;
    let seed = setup.seed;
    let nodes = setup.ctx.nodes.clone();
    let exclusions = setup.ctx.topology.exclusions().to_vec();
    let measured = (setup.ctx.window_end - setup.ctx.burn_in).as_secs_f64();
    let m = if usize::from(s.layers) < SHORT_HOPS {
        pipeline::run::<SHORT_HOPS>(setup, threads, progress)?
    } else {
        pipeline::run::<MAX_HOPS>(setup, threads, progress)?
    };
    Ok(result(rep, seed, &nodes, measured, m, exclusions))
}

fn result(
    rep: u32,
    seed: u64,
    nodes: &[sources::NodeInfo],
    measured: f64,
    m: pipeline::Measured,
    exclusions: Vec<LayerExclusion>,
) -> RunResult {
    let nodes = nodes
        .iter()
        .zip(&m.windows)
        .enumerate()
        .map(|(i, (n, win))| NodeResult {
            index: i as u32,
            layer: n.layer,
            corrupt: n.corrupt,
            arrivals: win.arrivals,
            departures: win.departures,
            arrival_rate: win.arrivals as f64 / measured,
            mean_pool: win.mean_pool_size.unwrap_or(0.0),
            mean_entropy_bits: win.mean_entropy_bits.unwrap_or(0.0),
        })
        .collect();
    RunResult {
        repetition: rep,
        seed,
        events: m.tally.events,
        nodes,
        traffic: m.tally.traffic,
        latency: m.outcome.latency,
        unlinkability: m.outcome.unlinkability,
        exposure: m.tally.exposure,
        exclusions,
    }
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

    /// The pipeline on any number of threads and with any slice length
    /// gives exactly what one plain event loop gives: every count, every
    /// float, every latency sample.
    #[test]
    fn the_pipeline_is_the_event_loop_on_any_threads() {
        let base = Scenario {
            clients: 60,
            mixes_per_layer: 3,
            providers: 3,
            mu: 5.0,
            lambda_p: 2.0,
            lambda_l: 1.0,
            lambda_d: 0.5,
            lambda_m: 1.0,
            burn_in_s: 10.0,
            duration_s: 30.0,
            ..Scenario::default()
        };
        let scenarios = [
            base.clone(),
            Scenario {
                corrupt_fraction: 0.34,
                excluded_honest: 1,
                seed: 7,
                ..base.clone()
            },
            Scenario {
                layers: 5,
                lambda_m: 0.0,
                seed: 3,
                ..base.clone()
            },
        ];
        for s in &scenarios {
            s.validate().unwrap();
            let nodes = sources::Setup::new(s, 0).unwrap().ctx.nodes.clone();
            let measured = s.duration_s;
            let want = {
                let m = reference::run::<MAX_HOPS>(sources::Setup::new(s, 0).unwrap());
                result(0, 0, &nodes, measured, m, Vec::new())
            };
            assert!(want.unlinkability.messages > 10, "{:?}", want.unlinkability);
            assert!(want.events > 10_000, "{}", want.events);
            // One slice for the whole run, 0.7 s and 37 ms slices.
            for (threads, slice) in [
                (1, None),
                (2, None),
                (3, Some(700_000_000)),
                (2, Some(37_000_000)),
            ] {
                let setup = sources::Setup::new(s, 0).unwrap();
                let m = if s.layers == 3 {
                    pipeline::run_sliced::<SHORT_HOPS>(setup, threads, slice, &mut |_| {})
                } else {
                    pipeline::run_sliced::<MAX_HOPS>(setup, threads, slice, &mut |_| {})
                }
                .unwrap();
                let got = result(0, 0, &nodes, measured, m, Vec::new());
                assert!(
                    got == want,
                    "{threads} threads, slice {slice:?}: events {} vs {}, latency {:?} vs {:?}",
                    got.events,
                    want.events,
                    (got.latency.count, got.latency.sum),
                    (want.latency.count, want.latency.sum)
                );
            }
        }
    }

    /// A packet packs each delay with the next node in one word: the
    /// core's longest delay and the scenario's most nodes both fit.
    #[test]
    fn delays_and_node_indexes_fit_their_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut delays = [0u64; 64];
        // A mean far beyond the core's one-hour cap on a single delay.
        let mean = Duration::from_secs(1_000_000);
        loopmix_core::sphinx::sample_delay_nanos_into(&mut rng, &mut delays, mean);
        assert!(
            delays.iter().all(|&d| d > 0 && d <= DELAY_MASK),
            "{delays:?}"
        );
        let most = 10_000 + usize::from(SIM_MAX_LAYERS) * 10_000;
        assert!(most < MAX_NODES);
        // And a packed word reads back both.
        let p = Packet::<SHORT_HOPS> {
            hops: [hop_word(DELAY_MASK, most as u32), 0, 0, 0],
            mass: [0.0; 2],
            uid: 0,
            len: 5,
            hop: 0,
            kind: Kind::Real,
            challenge: NO_CHALLENGE,
            measured: false,
        };
        assert_eq!(p.delay(), Duration::from_nanos(DELAY_MASK));
        assert_eq!(p.next_node(), Some(most as u32));
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
