//! `loopmix-sim liveness`: what liveness routing costs and buys, measured.
//!
//! Two deterministic studies (the same seed gives byte-identical output):
//!
//! * [`EstimatorStudy`]: the core's [`LivenessEstimator`] driven by probes
//!   (loops, and SURB-ACKs of a busy client) over routes drawn by
//!   [`Topology::random_mix_path`], with independent loss on every link and
//!   one mix dead for a while. For each blame rule and threshold `K` it
//!   reports false positives (healthy mixes ever suspected; suspect
//!   node-seconds per node-hour), the detection delay of the dead mix and
//!   how long it stays suspect after it comes back. This is where
//!   `EstimatorConfig::default()` comes from.
//! * [`ExclusionStudy`]: the anonymity engine ([`super::engine`]) with an
//!   active adversary that runs some mixes and has got `k` honest mixes per
//!   layer listed down; reports ε, δ and the share of real messages routed
//!   only through, or through at least one, corrupt mix.

use std::fmt::Write as _;
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::liveness::{Blame, EstimatorConfig, LivenessEstimator};
use loopmix_core::mixing::delay_queue::DelayQueue;
use loopmix_core::mixing::final_hop::{FinalHop, OwnLoops};
use loopmix_core::mixing::loops::{LoopId, LoopTracker};
use loopmix_core::poisson::{PoissonTicker, sample_exp_duration};
use loopmix_core::topology::{MAX_EXCLUDED_FRACTION, Topology};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::engine::{self, SimTime, derive_seed};
use super::report::Stat;
use super::scenario::Scenario;
use super::{Output, Progress, SimError};
use crate::presets::Preset;

/// A stream of probes one sender sees the fate of.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeStream {
    pub name: String,
    /// Probes per second.
    pub rate_per_s: f64,
}

/// The estimator study's parameters. `Default` is the localnet balanced
/// preset (50 ms per hop, λ_L = λ_M = 1/s, λ_P = 20/s) with the node's
/// default loop timeout for it.
#[derive(Clone, Debug, PartialEq)]
pub struct EstimatorStudy {
    pub seed: u64,
    /// Virtual time per observer, seconds.
    pub duration_s: f64,
    /// Independent senders, each with its own estimator and probe stream.
    pub observers: u32,
    /// (layers, mixes per layer).
    pub shapes: Vec<(u8, u32)>,
    pub streams: Vec<ProbeStream>,
    /// Loss probability of each link of a loop (L + 1 links).
    pub losses: Vec<f64>,
    pub ks: Vec<f64>,
    pub rules: Vec<Blame>,
    pub mean_hop_delay: Duration,
    /// When a probe not back counts as lost (its fate is known then).
    pub timeout: Duration,
    /// The first mix of layer 2 (layer 1 if there is one) is dead in
    /// `[dead_from_s, dead_until_s)`.
    pub dead_from_s: f64,
    pub dead_until_s: f64,
}

impl Default for EstimatorStudy {
    fn default() -> Self {
        let p = Preset::Balanced.params();
        let layers = 3u8;
        let hop = Duration::from_secs_f64(p.mean_hop_delay_ms / 1000.0);
        Self {
            seed: 1,
            duration_s: 3600.0,
            observers: 20,
            shapes: vec![(layers, 2), (layers, 10)],
            streams: vec![
                ProbeStream {
                    name: "loops".into(),
                    // A client's λ_L and a mix's λ_M are both 1/s here.
                    rate_per_s: p.lambda_l_per_s.max(p.lambda_m_per_s),
                },
                ProbeStream {
                    name: "loops+acks".into(),
                    // A client sending all the time: every λ_P packet is
                    // real and SURB-ACKed.
                    rate_per_s: p.lambda_l_per_s + p.lambda_p_per_s,
                },
            ],
            losses: vec![0.0, 0.01, 0.05, 0.2],
            ks: vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0],
            rules: vec![Blame::Split, Blame::Whole],
            mean_hop_delay: hop,
            // loopmix-node's default_loop_timeout: 3 × (L + 1) hops + 5 s.
            timeout: hop.mul_f64(3.0 * (f64::from(layers) + 1.0)) + Duration::from_secs(5),
            dead_from_s: 1200.0,
            dead_until_s: 2400.0,
        }
    }
}

/// One (shape, stream, loss, rule, K) of the estimator study, over all observers.
#[derive(Clone, Debug, PartialEq)]
pub struct EstimatorRow {
    pub layers: u8,
    pub mixes_per_layer: u32,
    pub stream: String,
    pub rate_per_s: f64,
    pub loss: f64,
    pub blame: Blame,
    pub k: f64,
    /// (observer, healthy mix) pairs.
    pub healthy_pairs: u64,
    /// Of those, how many were ever suspected.
    pub fp_pairs: u64,
    /// Suspect time of healthy mixes, seconds per mix-hour.
    pub fp_suspect_s_per_node_h: f64,
    /// Observers that suspected the dead mix while it was dead.
    pub detected: u64,
    pub detect_median_s: f64,
    pub detect_p95_s: f64,
    /// Of the observers that suspected it when it came back, how long until
    /// they stopped (median, p95), and how many never did by the end.
    pub clear_median_s: f64,
    pub clear_p95_s: f64,
    pub not_cleared: u64,
}

impl EstimatorRow {
    pub const CSV_HEADER: &'static str = "layers,mixes_per_layer,stream,probes_per_s,link_loss,\
blame,k,healthy_pairs,fp_pairs,fp_share,fp_suspect_s_per_node_h,observers_detected,\
detect_median_s,detect_p95_s,clear_median_s,clear_p95_s,not_cleared";

    pub fn fp_share(&self) -> f64 {
        self.fp_pairs as f64 / self.healthy_pairs.max(1) as f64
    }

    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.layers,
            self.mixes_per_layer,
            self.stream,
            self.rate_per_s,
            self.loss,
            blame_name(self.blame),
            self.k,
            self.healthy_pairs,
            self.fp_pairs,
            self.fp_share(),
            self.fp_suspect_s_per_node_h,
            self.detected,
            self.detect_median_s,
            self.detect_p95_s,
            self.clear_median_s,
            self.clear_p95_s,
            self.not_cleared
        )
    }
}

pub fn blame_name(b: Blame) -> &'static str {
    match b {
        Blame::Whole => "whole",
        Blame::Split => "split",
    }
}

/// Nearest-rank quantile of sorted values (NaN if empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One estimator and what it has been seen to do.
struct Track {
    est: LivenessEstimator<SimTime>,
    since: Vec<Option<SimTime>>,
    ever: Vec<bool>,
    suspect_ns: Vec<u64>,
    detect: Option<SimTime>,
    /// Suspected the dead mix when it came back.
    suspect_at_revival: bool,
    clear: Option<SimTime>,
}

#[derive(Clone, Copy)]
enum Ev {
    /// Probe `i` is back at its sender (unless it was lost on the way).
    Back {
        probe: u32,
    },
    /// A probe's timeout: what its sender has not seen back is lost.
    Timeout,
    Death,
    Revival,
    Expire,
}

struct Probe {
    sent: SimTime,
    route: Vec<usize>,
}

/// The observing sender's identity: its probes are addressed to itself.
const OBSERVER: NodeId = NodeId([0; 32]);

/// The Sphinx identifier of probe `i` (random in the node; unique is enough here).
fn probe_id(i: u32) -> LoopId {
    let mut id = [0; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id
}

/// What the observers of one (shape, stream, loss) configuration saw, per
/// estimator configuration.
struct Tally {
    healthy_pairs: u64,
    fp_pairs: u64,
    fp_ns: u128,
    detect: Vec<f64>,
    clear: Vec<f64>,
    not_cleared: u64,
}

impl EstimatorStudy {
    fn configs(&self) -> Vec<(Blame, f64)> {
        self.rules
            .iter()
            .flat_map(|&b| self.ks.iter().map(move |&k| (b, k)))
            .collect()
    }

    /// Runs every configuration; rows in (shape, stream, loss, rule, K) order.
    pub fn run(&self, progress: Progress<'_>) -> Result<Vec<EstimatorRow>, SimError> {
        let configs = self.configs();
        let total = (self.shapes.len() * self.streams.len() * self.losses.len()) as f64
            * f64::from(self.observers);
        let mut done = 0.0;
        let mut rows = Vec::new();
        for (si, &(layers, w)) in self.shapes.iter().enumerate() {
            let scenario = Scenario {
                layers,
                mixes_per_layer: w,
                providers: 1,
                clients: 2,
                ..Scenario::default()
            };
            let topology = engine::build_topology(&scenario, self.seed)?;
            for (pi, stream) in self.streams.iter().enumerate() {
                for (li, &loss) in self.losses.iter().enumerate() {
                    let mut tallies: Vec<Tally> = configs
                        .iter()
                        .map(|_| Tally {
                            healthy_pairs: 0,
                            fp_pairs: 0,
                            fp_ns: 0,
                            detect: Vec::new(),
                            clear: Vec::new(),
                            not_cleared: 0,
                        })
                        .collect();
                    for o in 0..self.observers {
                        let salt = ((si as u64) << 48)
                            | ((pi as u64) << 40)
                            | ((li as u64) << 32)
                            | u64::from(o);
                        let seed = derive_seed(self.seed, salt);
                        self.observe(&topology, stream, loss, seed, &configs, &mut tallies);
                        done += 1.0;
                        progress(done / total.max(1.0));
                    }
                    for (&(blame, k), t) in configs.iter().zip(&mut tallies) {
                        t.detect.sort_by(f64::total_cmp);
                        t.clear.sort_by(f64::total_cmp);
                        let node_h = t.healthy_pairs as f64 * self.duration_s / 3600.0;
                        rows.push(EstimatorRow {
                            layers,
                            mixes_per_layer: w,
                            stream: stream.name.clone(),
                            rate_per_s: stream.rate_per_s,
                            loss,
                            blame,
                            k,
                            healthy_pairs: t.healthy_pairs,
                            fp_pairs: t.fp_pairs,
                            fp_suspect_s_per_node_h: t.fp_ns as f64 / 1e9 / node_h.max(1e-9),
                            detected: t.detect.len() as u64,
                            detect_median_s: quantile(&t.detect, 0.5),
                            detect_p95_s: quantile(&t.detect, 0.95),
                            clear_median_s: quantile(&t.clear, 0.5),
                            clear_p95_s: quantile(&t.clear, 0.95),
                            not_cleared: t.not_cleared,
                        });
                    }
                }
            }
        }
        Ok(rows)
    }

    /// One observer: its probes, fed to one estimator per configuration.
    fn observe(
        &self,
        topology: &Topology,
        stream: &ProbeStream,
        loss: f64,
        seed: u64,
        configs: &[(Blame, f64)],
        tallies: &mut [Tally],
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mixes: Vec<NodeId> = topology
            .nodes()
            .iter()
            .filter(|n| n.layer.is_some())
            .map(|n| n.id)
            .collect();
        let index = |id: &NodeId| mixes.iter().position(|m| m == id);
        let layers = topology.params().layers;
        let dead_layer = if layers >= 2 { 2 } else { 1 };
        let dead = topology
            .layer(dead_layer)
            .next()
            .and_then(|e| index(&e.id))
            .unwrap_or(0);
        let dead_from = SimTime::from_secs_f64(self.dead_from_s);
        let dead_until = SimTime::from_secs_f64(self.dead_until_s);
        let end = SimTime::from_secs_f64(self.duration_s);

        let mut tracks: Vec<Track> = configs
            .iter()
            .map(|&(blame, k)| Track {
                est: LivenessEstimator::new(EstimatorConfig {
                    suspect_after: k,
                    blame,
                    ..EstimatorConfig::default()
                }),
                since: vec![None; mixes.len()],
                ever: vec![false; mixes.len()],
                suspect_ns: vec![0; mixes.len()],
                detect: None,
                suspect_at_revival: false,
                clear: None,
            })
            .collect();

        let mut sched: DelayQueue<SimTime, Ev> = DelayQueue::new(usize::MAX);
        let _ = sched.push(dead_from, Ev::Death);
        let _ = sched.push(dead_until, Ev::Revival);
        let mut next_expire = SimTime(0) + Duration::from_secs(10);
        let _ = sched.push(next_expire, Ev::Expire);
        let mut probes: Vec<Probe> = Vec::new();
        let mut ticker = PoissonTicker::new(&mut rng, stream.rate_per_s, SimTime(0));
        let is_dead = |t: SimTime| t >= dead_from && t < dead_until;
        let mut route_ids: Vec<NodeId> = Vec::new();
        // The observer's loops, recognised and timed out by the node's own
        // rules (never full: the pending set is bounded by rate × timeout).
        let mut loops: OwnLoops<SimTime, u32> =
            OwnLoops::new(OBSERVER, LoopTracker::new(usize::MAX, self.timeout, 1));
        let mut fates: Vec<(u32, bool)> = Vec::new();

        loop {
            let next_probe = ticker.next_deadline().filter(|&t| t <= end);
            let next_ev = sched.next_deadline().filter(|&t| t <= end);
            let probe_first = match (next_probe, next_ev) {
                (None, None) => break,
                (Some(p), Some(e)) => p < e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if probe_first {
                let Some(now) = ticker.poll(&mut rng, next_probe.unwrap_or(end)) else {
                    break;
                };
                let route: Vec<usize> = topology
                    .random_mix_path(&mut rng)
                    .into_iter()
                    .filter_map(|e| index(&e.id))
                    .collect();
                // L + 1 delayed hops: the sender's provider (or the mix
                // itself) and each mix; L + 1 links that may drop it.
                let mut at = now;
                let mut lost = false;
                for &m in &route {
                    at = at + sample_exp_duration(&mut rng, self.mean_hop_delay);
                    if m == dead && is_dead(at) {
                        lost = true;
                    }
                }
                at = at + sample_exp_duration(&mut rng, self.mean_hop_delay);
                for _ in 0..=route.len() {
                    if loss > 0.0 && rng.random_bool(loss.clamp(0.0, 1.0)) {
                        lost = true;
                    }
                }
                let id = probes.len() as u32;
                probes.push(Probe { sent: now, route });
                loops.track(probe_id(id), now, id);
                // Pushed before its return: one back exactly at its timeout
                // is lost, as the node's tracker rules.
                let _ = sched.push(now + self.timeout, Ev::Timeout);
                if !lost {
                    let _ = sched.push(at, Ev::Back { probe: id });
                }
                continue;
            }
            let Some((now, ev)) = next_ev.and_then(|t| sched.pop_due(t)) else {
                break;
            };
            // The node's rules decide each fate: back in time, or lost.
            fates.clear();
            match ev {
                Ev::Back { probe } => {
                    // Back after its timeout: already counted lost.
                    if let FinalHop::OwnLoop { route, .. } =
                        loops.on_final_hop(&OBSERVER, &probe_id(probe), now)
                    {
                        fates.push((route, true));
                    }
                }
                Ev::Timeout => {
                    fates.extend(
                        loops
                            .expire_routes(now)
                            .into_iter()
                            .map(|(_, p)| (p, false)),
                    );
                }
                Ev::Death => {
                    for t in &mut tracks {
                        if t.est.is_suspect(&mixes[dead]) {
                            t.detect = Some(now);
                        }
                    }
                }
                Ev::Revival => {
                    for t in &mut tracks {
                        t.suspect_at_revival = t.est.is_suspect(&mixes[dead]);
                    }
                }
                Ev::Expire => {
                    for t in &mut tracks {
                        t.est.expire(now);
                        for i in 0..mixes.len() {
                            observe_node(t, &mixes, i, dead, now, dead_from, dead_until);
                        }
                    }
                    next_expire = now + Duration::from_secs(10);
                    let _ = sched.push(next_expire, Ev::Expire);
                }
            }
            for &(probe, returned) in &fates {
                let Some(p) = probes.get(probe as usize) else {
                    continue;
                };
                route_ids.clear();
                route_ids.extend(p.route.iter().map(|&i| mixes[i]));
                for t in &mut tracks {
                    if returned {
                        t.est.on_returned(&route_ids, p.sent);
                    } else {
                        t.est.on_lost(&route_ids, p.sent);
                    }
                    for &i in &p.route {
                        observe_node(t, &mixes, i, dead, now, dead_from, dead_until);
                    }
                }
            }
        }

        for (t, tally) in tracks.iter_mut().zip(tallies.iter_mut()) {
            for i in 0..mixes.len() {
                if let Some(s) = t.since[i].take() {
                    t.suspect_ns[i] += (end - s).as_nanos() as u64;
                }
                if i == dead {
                    continue;
                }
                tally.healthy_pairs += 1;
                tally.fp_pairs += u64::from(t.ever[i]);
                tally.fp_ns += u128::from(t.suspect_ns[i]);
            }
            if let Some(d) = t.detect {
                tally.detect.push((d - dead_from).as_secs_f64());
            }
            if t.suspect_at_revival {
                match t.clear {
                    Some(c) => tally.clear.push((c - dead_until).as_secs_f64()),
                    None => tally.not_cleared += 1,
                }
            }
        }
    }
}

/// Records a change of `i`'s suspicion at `now`.
fn observe_node(
    t: &mut Track,
    mixes: &[NodeId],
    i: usize,
    dead: usize,
    now: SimTime,
    dead_from: SimTime,
    dead_until: SimTime,
) {
    let suspect = t.est.is_suspect(&mixes[i]);
    match (suspect, t.since[i]) {
        (true, None) => {
            t.since[i] = Some(now);
            t.ever[i] = true;
            if i == dead && now >= dead_from && now < dead_until && t.detect.is_none() {
                t.detect = Some(now);
            }
        }
        (false, Some(s)) => {
            t.suspect_ns[i] += (now - s).as_nanos() as u64;
            t.since[i] = None;
            if i == dead && now >= dead_until && t.suspect_at_revival && t.clear.is_none() {
                t.clear = Some(now);
            }
        }
        _ => {}
    }
}

fn fmt_s(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

/// The estimator study as a text table (one line per row).
pub fn estimator_summary(st: &EstimatorStudy, rows: &[EstimatorRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "liveness estimator: {} observers x {} s each, seed {}; mean hop delay {} ms, loop \
         timeout {:.1} s; first mix of layer 2 dead in [{}, {}) s; loss = per link, L + 1 links",
        st.observers,
        st.duration_s,
        st.seed,
        st.mean_hop_delay.as_secs_f64() * 1000.0,
        st.timeout.as_secs_f64(),
        st.dead_from_s,
        st.dead_until_s
    );
    let _ = writeln!(
        o,
        "{:>5} {:>10} {:>5} {:>5} {:>4} | {:>7} {:>10} | {:>6} {:>7} {:>7} | {:>7} {:>7} {:>5}",
        "mixes",
        "probes",
        "loss",
        "blame",
        "K",
        "FP %",
        "FP s/node-h",
        "found",
        "det p50",
        "det p95",
        "clr p50",
        "clr p95",
        "stuck"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:>5} {:>10} {:>5} {:>5} {:>4} | {:>7.2} {:>10.2} | {:>6} {:>7} {:>7} | {:>7} {:>7} {:>5}",
            format!("{}x{}", r.layers, r.mixes_per_layer),
            format!("{} {}/s", r.stream, r.rate_per_s),
            format!("{}%", r.loss * 100.0),
            blame_name(r.blame),
            r.k,
            r.fp_share() * 100.0,
            r.fp_suspect_s_per_node_h,
            format!("{}/{}", r.detected, st.observers),
            fmt_s(r.detect_median_s),
            fmt_s(r.detect_p95_s),
            fmt_s(r.clear_median_s),
            fmt_s(r.clear_p95_s),
            r.not_cleared
        );
    }
    o
}

/// The exclusion study: for each (shape, corrupt fraction), the adversary
/// gets `k` honest mixes per layer listed down, for each `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExclusionStudy {
    /// Rates, clients, durations; layers/mixes/corruption set per case.
    pub base: Scenario,
    /// (layers, mixes per layer, corrupt fraction).
    pub cases: Vec<(u8, u32, f64)>,
}

impl Default for ExclusionStudy {
    /// The balanced preset's rates and delay, 100 clients, 300 s measured
    /// after 20 s, 5 repetitions per point: under a minute in release on
    /// one core for all points.
    fn default() -> Self {
        let p = Preset::Balanced.params();
        Self {
            base: Scenario {
                clients: 100,
                providers: 4,
                lambda_p: p.lambda_p_per_s,
                lambda_l: p.lambda_l_per_s,
                lambda_d: p.lambda_d_per_s,
                lambda_m: p.lambda_m_per_s,
                mu: 1000.0 / p.mean_hop_delay_ms,
                real_fraction: 0.5,
                corrupt_spread: true,
                duration_s: 300.0,
                burn_in_s: 20.0,
                repetitions: 5,
                seed: 1,
                ..Scenario::default()
            },
            cases: vec![(3, 2, 0.5), (3, 2, 1.0 / 6.0), (3, 10, 0.2)],
        }
    }
}

/// One point of the exclusion study.
#[derive(Clone, Debug, PartialEq)]
pub struct ExclusionRow {
    pub scenario: Scenario,
    /// Honest mixes per layer listed down.
    pub k: u32,
    /// Per layer as applied: mixes actually excluded (0 if over the cap).
    pub excluded_per_layer: Vec<usize>,
    pub fallback_layers: usize,
    pub epsilon: Stat,
    pub delta: Stat,
    pub all_corrupt: Stat,
    pub any_corrupt: Stat,
    pub messages: u64,
    pub events: u64,
}

impl ExclusionRow {
    pub const CSV_HEADER: &'static str = "layers,mixes_per_layer,corrupt_fraction,\
corrupt_mixes,k,excluded_per_layer,fallback_layers,repetitions,challenge_messages,epsilon_mean,\
epsilon_sd,delta_mean,delta_sd,all_corrupt_share,all_corrupt_sd,any_corrupt_share,any_corrupt_sd";

    pub fn csv(&self) -> String {
        let s = &self.scenario;
        let per: Vec<String> = self
            .excluded_per_layer
            .iter()
            .map(|x| x.to_string())
            .collect();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.layers,
            s.mixes_per_layer,
            s.corrupt_fraction,
            s.corrupt_mixes(),
            self.k,
            per.join("/"),
            self.fallback_layers,
            s.repetitions,
            self.messages,
            self.epsilon.mean,
            self.epsilon.sd,
            self.delta.mean,
            self.delta.sd,
            self.all_corrupt.mean,
            self.all_corrupt.sd,
            self.any_corrupt.mean,
            self.any_corrupt.sd
        )
    }
}

impl ExclusionStudy {
    /// Every point's scenario (k = 0 ..= mixes per layer − corrupt per
    /// layer + 1, i.e. up to one past excluding every honest mix), validated.
    pub fn points(&self) -> Result<Vec<Scenario>, SimError> {
        let mut out = Vec::new();
        for &(layers, w, f) in &self.cases {
            let s = Scenario {
                layers,
                mixes_per_layer: w,
                corrupt_fraction: f,
                ..self.base.clone()
            };
            s.validate()?;
            let honest = w - (s.corrupt_mixes() / u32::from(layers)).min(w);
            // Past the cap nothing changes (uniform), so stop one beyond it.
            let cap = (f64::from(w) * MAX_EXCLUDED_FRACTION).floor() as u32;
            for k in 0..=honest.min(cap + 1) {
                let p = Scenario {
                    excluded_honest: k,
                    ..s.clone()
                };
                p.validate()?;
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn run(&self, progress: Progress<'_>) -> Result<Vec<ExclusionRow>, SimError> {
        let points = self.points()?;
        let total: u64 = points.iter().map(|s| u64::from(s.repetitions)).sum();
        let mut done = 0u64;
        let mut rows = Vec::new();
        for s in points {
            let mut results = Vec::new();
            for rep in 0..s.repetitions {
                let mut inner = |f: f64| progress((done as f64 + f) / total.max(1) as f64);
                results.push(engine::run(&s, rep, &mut inner)?);
                done += 1;
            }
            let col = |f: &dyn Fn(&engine::RunResult) -> f64| Stat::of(results.iter().map(f));
            let first = results.first();
            rows.push(ExclusionRow {
                k: s.excluded_honest,
                excluded_per_layer: first
                    .map(|r| r.exclusions.iter().map(|e| e.excluded).collect())
                    .unwrap_or_default(),
                fallback_layers: first
                    .map(|r| r.exclusions.iter().filter(|e| e.fallback).count())
                    .unwrap_or(0),
                epsilon: col(&|r| r.unlinkability.mean_epsilon()),
                delta: col(&|r| r.unlinkability.delta()),
                all_corrupt: col(&|r| r.exposure.all_share()),
                any_corrupt: col(&|r| r.exposure.any_share()),
                messages: results.iter().map(|r| r.unlinkability.messages).sum(),
                events: results.iter().map(|r| r.events).sum(),
                scenario: s,
            });
        }
        Ok(rows)
    }
}

/// The exclusion study as a text table.
pub fn exclusion_summary(st: &ExclusionStudy, rows: &[ExclusionRow]) -> String {
    let b = &st.base;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "liveness exclusion: {} clients, mu {}, rates/s P {} L {} D {} M {}, {} s after {} s \
         burn-in, {} repetitions/point, seed {}; corrupt mixes spread over the layers; cap {} \
         of each layer",
        b.clients,
        b.mu,
        b.lambda_p,
        b.lambda_l,
        b.lambda_d,
        b.lambda_m,
        b.duration_s,
        b.burn_in_s,
        b.repetitions,
        b.seed,
        MAX_EXCLUDED_FRACTION
    );
    let _ = writeln!(
        o,
        "{:>6} {:>8} {:>3} {:>10} | {:>17} {:>13} | {:>15} {:>15}",
        "mixes",
        "corrupt",
        "k",
        "excluded",
        "epsilon ± sd",
        "delta",
        "all-corrupt %",
        ">=1 corrupt %"
    );
    for r in rows {
        let s = &r.scenario;
        let per: Vec<String> = r.excluded_per_layer.iter().map(|x| x.to_string()).collect();
        let excluded = if r.fallback_layers > 0 {
            format!("{} ({} unif.)", per.join("/"), r.fallback_layers)
        } else {
            per.join("/")
        };
        let _ = writeln!(
            o,
            "{:>6} {:>8} {:>3} {:>10} | {:>17} {:>13} | {:>15} {:>15}",
            format!("{}x{}", s.layers, s.mixes_per_layer),
            format!("{}/{}", s.corrupt_mixes(), s.mixes()),
            r.k,
            excluded,
            if r.epsilon.mean.is_finite() {
                format!("{:.3}", r.epsilon)
            } else {
                "n/a (all linked)".into()
            },
            format!("{:.3}", r.delta.mean),
            format!(
                "{:.1} ± {:.1}",
                r.all_corrupt.mean * 100.0,
                r.all_corrupt.sd * 100.0
            ),
            format!(
                "{:.1} ± {:.1}",
                r.any_corrupt.mean * 100.0,
                r.any_corrupt.sd * 100.0
            ),
        );
    }
    o
}

/// Which parts of `loopmix-sim liveness` to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Study {
    Estimator,
    Exclusion,
    Both,
}

/// Runs the studies and renders `liveness_estimator.csv`,
/// `liveness_exclusion.csv` and `liveness.txt`.
pub fn run_liveness(
    which: Study,
    est: &EstimatorStudy,
    excl: &ExclusionStudy,
    progress: Progress<'_>,
) -> Result<Output, SimError> {
    let mut files = Vec::new();
    let mut summary = String::new();
    let mut events = 0;
    let (w_est, w_excl) = match which {
        Study::Estimator => (1.0, 0.0),
        Study::Exclusion => (0.0, 1.0),
        Study::Both => (0.3, 0.7),
    };
    if which != Study::Exclusion {
        let rows = est.run(&mut |f| progress(f * w_est))?;
        let mut csv = format!("{}\n", EstimatorRow::CSV_HEADER);
        for r in &rows {
            csv.push_str(&r.csv());
            csv.push('\n');
        }
        files.push(("liveness_estimator.csv".to_string(), csv));
        summary.push_str(&estimator_summary(est, &rows));
    }
    if which != Study::Estimator {
        if !summary.is_empty() {
            summary.push('\n');
        }
        let rows = excl.run(&mut |f| progress(w_est + f * w_excl))?;
        let mut csv = format!("{}\n", ExclusionRow::CSV_HEADER);
        for r in &rows {
            csv.push_str(&r.csv());
            csv.push('\n');
            events += r.events;
        }
        files.push(("liveness_exclusion.csv".to_string(), csv));
        summary.push_str(&exclusion_summary(excl, &rows));
    }
    files.push(("liveness.txt".to_string(), summary.clone()));
    Ok(Output {
        files,
        summary,
        events,
    })
}
