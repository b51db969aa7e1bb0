//! `loopmix-node bench --overload`: a real node driven at twice its
//! measured capacity, first with no per-peer limit, then with one.
//!
//! 1. **Capacity.** One `loopmix-node` process (one mix layer, loop cover
//!    off, `peer_rate = 0`) is measured like `bench` phase 2: zero-delay
//!    packets with a bounded window in flight.
//! 2. **Phase A, no per-peer limit.** For `--overload-seconds`, a flooder
//!    and `--light-peers` light peers together offer `--overload-factor` ×
//!    the capacity; each light peer offers `--light-share` of it, the flooder
//!    the rest. Every packet carries an Exp(`--mean-delay-ms`) delay for the
//!    mix, so "on time" means something.
//! 3. **Phase B, per-peer limit.** The node restarts (same key and address,
//!    fresh replay filter) with `peer_rate = --peer-rate-share ×` the rate it
//!    unwrapped in phase A (its capacity while flooded, which on a small
//!    machine shared with this load generator is well below the idle
//!    capacity), and the same load is offered again.
//!
//! For each phase it prints the offered and accepted rates, the drops by
//! reason, the latency of accepted packets beyond the delay their header
//! asked for, the node's memory against its idle size, whether it is still
//! up, and what share of the light peers' packets got through. Rates are
//! also given as multiples of the capacity measured in the same run: the
//! machines are shared and absolute numbers drift.
//!
//! Packets are built before a phase starts (building one costs about two
//! unwraps, so no single machine could build them at twice a node's
//! rate); the flood is built once and replayed against the restarted
//! node, whose replay filter is wiped in between.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use loopmix_core::poisson::sample_exp_duration;
use loopmix_core::sphinx::{build_packet, destination_of};
use loopmix_core::topology::{NetworkParams, NodeEntry};
use sphinx_packet::header::delays::Delay;

use super::procs::{NodeDir, NodeProcess, Peer, edit_config, launch_mixnet};
use super::{BenchArgs, EPOCH, PAYLOAD, build_many, measure_throughput, threads};
use crate::config::{MixingSection, ReplaySection};
use loopmix_net::config::ConfigEdit;
use loopmix_net::scrape::series as parse_metric;

#[derive(clap::Args, Debug, Clone)]
pub struct OverloadArgs {
    /// Run the overload benchmark instead of the default phases: measure a
    /// node's capacity, then offer it `--overload-factor` times that from a
    /// flooder and light peers, without and with the per-peer rate limit.
    #[arg(long)]
    pub overload: bool,
    /// Offered load, as a multiple of the measured capacity.
    #[arg(long, default_value_t = 2.0)]
    pub overload_factor: f64,
    /// How long each overload phase offers that load.
    #[arg(long, default_value_t = 10.0)]
    pub overload_seconds: f64,
    /// Packets pushed through the node to measure its capacity first.
    #[arg(long, default_value_t = 20_000)]
    pub capacity_packets: usize,
    /// Mean of the exponential delay each packet asks the mix for.
    #[arg(long, default_value_t = 50.0)]
    pub mean_delay_ms: f64,
    /// Peers sending beside the flooder, each its own packets' final hop.
    #[arg(long, default_value_t = 2)]
    pub light_peers: usize,
    /// What each light peer offers, as a fraction of the capacity.
    #[arg(long, default_value_t = 0.05)]
    pub light_share: f64,
    /// Phase B's `peer_rate`, as a fraction of the rate the node unwrapped
    /// in phase A (its capacity while flooded); `peer_burst` keeps the
    /// defaults' ratio to it.
    #[arg(long, default_value_t = 0.5)]
    pub peer_rate_share: f64,
    /// The node's `mixing.ingress_max_wait` in both phases ("0s" = none),
    /// to see what shedding stale packets buys.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ingress_max_wait: Option<Duration>,
}

impl OverloadArgs {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.overload_factor > 0.0 && self.overload_factor <= 10.0,
            "--overload-factor must be in (0, 10]"
        );
        ensure!(
            self.overload_seconds > 0.0 && self.overload_seconds <= 300.0,
            "--overload-seconds must be in (0, 300]"
        );
        ensure!(self.light_peers >= 1, "--light-peers must be at least 1");
        ensure!(
            self.light_share > 0.0
                && self.light_share * (self.light_peers as f64) < self.overload_factor,
            "the light peers together must offer less than --overload-factor"
        );
        ensure!(
            self.peer_rate_share > 0.0,
            "--peer-rate-share must be positive"
        );
        ensure!(
            self.mean_delay_ms >= 0.0 && self.mean_delay_ms <= 5_000.0,
            "--mean-delay-ms must be in [0, 5000]"
        );
        ensure!(self.capacity_packets >= 1000, "--capacity-packets >= 1000");
        Ok(())
    }
}

/// First identifier byte of the light peers' warm-up packets; phases use 1, 2.
const WARMUP_TAG: u8 = 0xff;

/// A packet with the delay its header asks the mix for.
struct Timed {
    packet: Vec<u8>,
    delay: Duration,
}

/// Builds `n` packets `[first, last]` with identifiers `[tag, seq..]` and
/// Exp(`mean`) delays at `first`, on all cores.
fn build_timed(
    n: usize,
    first: &NodeEntry,
    last: &NodeEntry,
    mean: Duration,
    tag: u8,
) -> Vec<Timed> {
    let t = threads();
    let per = n.div_ceil(t);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|i| {
                let lo = (i * per).min(n);
                let hi = ((i + 1) * per).min(n);
                s.spawn(move || {
                    let mut rng = rand::rng();
                    (lo..hi)
                        .filter_map(|seq| {
                            let mut id = [0u8; 16];
                            id[0] = tag;
                            id[1..5].copy_from_slice(&(seq as u32).to_be_bytes());
                            let delay = sample_exp_duration(&mut rng, mean);
                            let delays = [
                                Delay::new_from_nanos(delay.as_nanos() as u64),
                                Delay::new_from_nanos(0),
                            ];
                            let dest = destination_of(&last.id, id);
                            build_packet(b"overload", &[first, last], &dest, &delays, PAYLOAD)
                                .ok()
                                .map(|packet| Timed { packet, delay })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// `(upper bound, cumulative count)` of a histogram's buckets.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound below which a `q` share of the observations made
/// between the two scrapes fall.
pub(crate) fn bucket_quantile(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let b = buckets(before, name);
    let a = buckets(after, name);
    let delta: Vec<(f64, f64)> = a
        .iter()
        .map(|&(le, n)| {
            let was = b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, n - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|d| d.1 >= q * total).map(|d| d.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(s: f64) -> String {
    if s.is_finite() {
        format!("{:.1} ms", s * 1e3)
    } else {
        "n/a".into()
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Everything a phase needs; `lights[i]` is the final hop of its own packets.
struct Rig {
    bin: std::path::PathBuf,
    dir: NodeDir,
    node: NodeProcess,
    mix: NodeEntry,
    flood: Peer,
    sink: Peer,
    sink_entry: NodeEntry,
    lights: Vec<(Peer, NodeEntry)>,
}

/// What one phase measured.
struct PhaseResult {
    seconds: f64,
    offered_at_node: f64,
    /// Packets per second the Sphinx workers unwrapped (accepted or not).
    unwrapped: f64,
    accepted: f64,
    flood_through: f64,
    light_sent: u64,
    light_delivered: u64,
    worst_light: f64,
    dropped: Vec<(&'static str, f64)>,
    received: f64,
    excess_p50: f64,
    excess_p99: f64,
    excess_max: f64,
    node_error_p50: Option<f64>,
    node_error_p99: Option<f64>,
    rss_start: u64,
    rss_max: u64,
    /// Highest RSS in the first and the second half of the load: equal
    /// when memory has levelled off.
    rss_halves: (u64, u64),
    /// Cores' worth of CPU the node used while the load was offered.
    node_cores: Option<f64>,
    up: bool,
}

const REASONS: &[&str] = &[
    "overload",
    "rate_limited",
    "late",
    "replay",
    "malformed",
    "unknown_key",
    "link_down",
];

impl Rig {
    fn metric(text: &str, series: &str) -> f64 {
        parse_metric(text, series).unwrap_or(0.0)
    }

    /// Sends a few zero-delay packets from every peer and waits until they
    /// are through, so links are up before a phase is timed.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let (mix, sink) = (self.mix.clone(), self.sink_entry.clone());
        let flood_pkts =
            tokio::task::spawn_blocking(move || build_many(20, &mix, &sink, Duration::ZERO))
                .await?;
        let sink_before = self.sink.frames_received();
        for p in flood_pkts {
            self.flood.send(&self.mix, EPOCH, p)?;
        }
        let mut want = Vec::new();
        for (peer, entry) in &self.lights {
            let (mix, me) = (self.mix.clone(), entry.clone());
            let pkts = tokio::task::spawn_blocking(move || {
                build_timed(20, &mix, &me, Duration::ZERO, WARMUP_TAG)
            })
            .await?;
            want.push(peer.deliveries().len() + pkts.len());
            for t in pkts {
                peer.send(&self.mix, EPOCH, t.packet)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lights_done = self
                .lights
                .iter()
                .zip(&want)
                .all(|((p, _), &w)| p.deliveries().len() >= w);
            if lights_done && self.sink.frames_received() >= sink_before + 20 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "warm-up packets did not get through; node log:\n{}",
                    self.node.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the node (SIGTERM, so peers see the connection close), wipes
    /// its replay filter (the flood is sent again) and starts it on the same
    /// addresses with `edit` applied to its config.
    async fn restart(&mut self, edit: impl FnOnce(&mut ConfigEdit)) -> anyhow::Result<()> {
        let bound = self.node.bound.clone();
        self.node.terminate()?;
        if self.node.wait_exit(Duration::from_secs(30))?.is_none() {
            self.node.kill();
        }
        let replay = self.dir.dir.join("data").join("replay");
        if replay.exists() {
            std::fs::remove_dir_all(&replay)
                .with_context(|| format!("removing {}", replay.display()))?;
        }
        edit_config(&self.dir, |c| {
            c.set("node.listen", bound.quic.to_string())
                .set("metrics.listen", bound.metrics.to_string());
            edit(c);
        })?;
        self.node = NodeProcess::start(&self.bin, &self.dir)?;
        self.node.wait_metric(
            "loopmix_topology_updates_total",
            Duration::from_secs(30),
            |v| v >= 1.0,
        )?;
        self.warm_up().await
    }

    /// Offers `flood` at `flood_rate` and each light peer's packets at
    /// `light_rate` for `seconds`, then lets the node drain.
    async fn phase(
        &mut self,
        flood: &[Timed],
        lights: &[Vec<Timed>],
        flood_rate: f64,
        light_rate: f64,
        seconds: f64,
        tag: u8,
    ) -> anyhow::Result<PhaseResult> {
        let before = self.node.metrics_text()?;
        let sink_before = self.sink.frames_received();
        let rss_start = self.node.rss_bytes().unwrap_or(0);
        let mut rss_max = rss_start;
        let mut rss_halves = (0u64, 0u64);
        let mut sent_at: Vec<Vec<Instant>> = lights.iter().map(|_| Vec::new()).collect();
        let mut flood_sent = 0usize;
        let cpu_start = self.node.cpu_seconds();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let mut next_sample = start;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let elapsed = (now - start).as_secs_f64();
            let due = ((flood_rate * elapsed) as usize).min(flood.len());
            for t in &flood[flood_sent..due] {
                // A full local queue is the load generator falling behind;
                // the node's own counters say what it was offered.
                let _ = self.flood.send(&self.mix, EPOCH, t.packet.clone());
            }
            flood_sent = flood_sent.max(due);
            for (i, ((peer, _), pkts)) in self.lights.iter().zip(lights).enumerate() {
                let due = ((light_rate * elapsed) as usize).min(pkts.len());
                while sent_at[i].len() < due {
                    let t = &pkts[sent_at[i].len()];
                    sent_at[i].push(Instant::now());
                    let _ = peer.send(&self.mix, EPOCH, t.packet.clone());
                }
            }
            if now >= next_sample {
                let rss = self.node.rss_bytes().unwrap_or(0);
                rss_max = rss_max.max(rss);
                let half = if elapsed < seconds / 2.0 {
                    &mut rss_halves.0
                } else {
                    &mut rss_halves.1
                };
                *half = (*half).max(rss);
                next_sample += Duration::from_millis(200);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let offered_for = start.elapsed().as_secs_f64();
        let node_cores = match (cpu_start, self.node.cpu_seconds()) {
            (Some(a), Some(b)) => Some((b - a) / offered_for),
            _ => None,
        };
        // Drain: the node holds at most ingress_max_wait + the largest
        // header delay; give stragglers a little longer.
        let light_total: usize = sent_at.iter().map(Vec::len).sum();
        let drain_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < drain_until {
            rss_max = rss_max.max(self.node.rss_bytes().unwrap_or(0));
            let delivered: usize = self
                .lights
                .iter()
                .map(|(p, _)| {
                    p.deliveries()
                        .iter()
                        .filter(|d| d.identifier[0] == tag)
                        .count()
                })
                .sum();
            if delivered >= light_total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(self.node.rss_bytes().unwrap_or(0));
        let after = self.node.metrics_text();
        let running = matches!(self.node.child.try_wait(), Ok(None));
        let up = running && after.is_ok();
        let after = after.unwrap_or_default();
        let delta = |series: &str| Self::metric(&after, series) - Self::metric(&before, series);

        // Light peers: share delivered, and latency beyond the header delay.
        let mut excess = Vec::new();
        let (mut delivered, mut worst_light) = (0u64, f64::INFINITY);
        for (i, ((peer, _), pkts)) in self.lights.iter().zip(lights).enumerate() {
            let mut got = 0u64;
            for d in peer.deliveries().iter().filter(|d| d.identifier[0] == tag) {
                let seq = u32::from_be_bytes([
                    d.identifier[1],
                    d.identifier[2],
                    d.identifier[3],
                    d.identifier[4],
                ]) as usize;
                let (Some(at), Some(t)) = (sent_at[i].get(seq), pkts.get(seq)) else {
                    continue;
                };
                got += 1;
                let held = d.at.saturating_duration_since(*at).as_secs_f64();
                excess.push(held - t.delay.as_secs_f64());
            }
            delivered += got;
            if !sent_at[i].is_empty() {
                worst_light = worst_light.min(got as f64 / sent_at[i].len() as f64);
            }
        }
        excess.sort_by(f64::total_cmp);
        let hist = "loopmix_hop_delay_error_seconds";
        Ok(PhaseResult {
            seconds: offered_for,
            offered_at_node: delta("loopmix_packets_received_total") / offered_for,
            unwrapped: delta("loopmix_sphinx_processing_seconds_count") / offered_for,
            accepted: delta("loopmix_packets_forwarded_total") / offered_for,
            flood_through: (self.sink.frames_received() - sink_before) as f64 / offered_for,
            light_sent: light_total as u64,
            light_delivered: delivered,
            worst_light,
            dropped: REASONS
                .iter()
                .map(|r| {
                    (
                        *r,
                        delta(&format!("loopmix_packets_dropped_total{{reason=\"{r}\"}}")),
                    )
                })
                .collect(),
            received: delta("loopmix_packets_received_total"),
            excess_p50: quantile(&excess, 0.5),
            excess_p99: quantile(&excess, 0.99),
            excess_max: excess.last().copied().unwrap_or(f64::NAN),
            node_error_p50: bucket_quantile(&before, &after, hist, 0.5),
            node_error_p99: bucket_quantile(&before, &after, hist, 0.99),
            rss_start,
            rss_max,
            rss_halves,
            node_cores,
            up,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn print_phase(
    name: &str,
    r: &PhaseResult,
    capacity: f64,
    idle_rss: u64,
    replay_bitmap: u64,
    light_rate: f64,
    max_wait: Duration,
    late_tolerance: Duration,
) {
    let x = |v: f64| v / capacity;
    println!("{name}");
    println!(
        "  offered (node received):      {:>8.0} pkt/s = {:.2}x capacity, for {:.1} s",
        r.offered_at_node,
        x(r.offered_at_node),
        r.seconds
    );
    println!(
        "  unwrapped (Sphinx work done): {:>8.0} pkt/s = {:.2}x capacity",
        r.unwrapped,
        x(r.unwrapped)
    );
    println!(
        "  accepted (forwarded):         {:>8.0} pkt/s = {:.2}x capacity",
        r.accepted,
        x(r.accepted)
    );
    let drops: Vec<String> = r
        .dropped
        .iter()
        .filter(|(reason, n)| *n > 0.0 || ["overload", "rate_limited"].contains(reason))
        .map(|(reason, n)| format!("{reason} {:.3}", n / r.received.max(1.0)))
        .collect();
    println!("  dropped / received:           {}", drops.join(", "));
    println!(
        "  flooder through:              {:>8.0} pkt/s = {:.2}x capacity",
        r.flood_through,
        x(r.flood_through)
    );
    println!(
        "  light peers ({:.0} pkt/s each): delivered {}/{} = {:.3} (worst peer {:.3})",
        light_rate,
        r.light_delivered,
        r.light_sent,
        r.light_delivered as f64 / r.light_sent.max(1) as f64,
        r.worst_light
    );
    let bound = |v: Option<f64>| v.map_or("n/a".to_string(), |s| format!("<= {}", ms(s)));
    println!(
        "  held beyond header delay, in the node (all forwarded): p50 {}, p99 {} \
         (ingress_max_wait {}, late_tolerance {})",
        bound(r.node_error_p50),
        bound(r.node_error_p99),
        humantime::format_duration(max_wait),
        humantime::format_duration(late_tolerance),
    );
    println!(
        "  beyond header delay, end to end (light; includes this load generator's queues): \
         p50 {}, p99 {}, max {}",
        ms(r.excess_p50),
        ms(r.excess_p99),
        ms(r.excess_max),
    );
    println!(
        "  RSS: idle {:.1} MB, phase start {:.1} MB, max {:.1} MB = {:.2}x idle \
         (growth {:.1} MB; the replay filter's bitmap alone is {:.1} MB once touched)",
        mb(idle_rss),
        mb(r.rss_start),
        mb(r.rss_max),
        r.rss_max as f64 / idle_rss.max(1) as f64,
        mb(r.rss_max.saturating_sub(idle_rss)),
        mb(replay_bitmap)
    );
    println!(
        "  RSS max, first half vs second half of the load: {:.1} MB vs {:.1} MB (ratio {:.2})",
        mb(r.rss_halves.0),
        mb(r.rss_halves.1),
        r.rss_halves.1 as f64 / r.rss_halves.0.max(1) as f64
    );
    if let Some(c) = r.node_cores {
        println!(
            "  node CPU: {c:.2} cores of {} (the rest: this load generator and the machine's other load)",
            threads()
        );
    }
    println!(
        "  node still up:                {}",
        if r.up {
            "yes (process running, /metrics answers)"
        } else {
            "NO"
        }
    );
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let o = args.overload.clone();
    o.check()?;
    let bin = std::env::current_exe().context("locating loopmix-node")?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let defaults = MixingSection::default();
    let max_wait = o.ingress_max_wait.unwrap_or(defaults.ingress_max_wait);
    let mean = Duration::from_secs_f64(o.mean_delay_ms / 1e3);
    println!(
        "loopmix-node bench --overload: {} cores, payload {PAYLOAD} B, {} light peers + 1 flooder, \
         {:.1}x capacity for {:.0} s per phase, header delays Exp({})",
        threads(),
        o.light_peers,
        o.overload_factor,
        o.overload_seconds,
        humantime::format_duration(mean)
    );

    let flood = Peer::bind(EPOCH, false)?;
    let sink = Peer::bind(EPOCH, false)?;
    let mut lights = Vec::new();
    for _ in 0..o.light_peers {
        lights.push(Peer::bind(EPOCH, true)?);
    }
    let mut others = vec![flood.entry()?, sink.entry()?];
    for l in &lights {
        others.push(l.entry()?);
    }
    let params = NetworkParams {
        epoch: EPOCH,
        layers: 1,
        mean_hop_delay_ms: o.mean_delay_ms,
        lambda_p_per_s: 0.0,
        lambda_l_per_s: 0.0,
        lambda_d_per_s: 0.0,
        lambda_m_per_s: 0.0,
        payload_size: PAYLOAD,
    };
    // Capacity is measured as `bench` does: no admission limit and no
    // shedding (a shed packet never comes back and would stall the window).
    let net = launch_mixnet(&bin, &dir, params, others, |c| {
        c.set("cover.enabled", false)
            .set("mixing.peer_rate", 0)
            .set("mixing.ingress_max_wait", "0s");
    })?;
    let doc = net.doc;
    for p in [&flood, &sink].into_iter().chain(&lights) {
        p.adopt(&doc);
    }
    let (Some(node), Some(nd)) = (net.nodes.into_iter().next(), net.dirs.into_iter().next()) else {
        bail!("no node started");
    };
    let mix = doc.nodes[0].clone();
    let sink_entry = doc.nodes[2].clone();
    let light_entries: Vec<NodeEntry> = doc.nodes[3..].to_vec();
    let mut rig = Rig {
        bin,
        dir: nd,
        node,
        mix: mix.clone(),
        flood,
        sink,
        sink_entry: sink_entry.clone(),
        lights: lights.into_iter().zip(light_entries.clone()).collect(),
    };
    rig.warm_up().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rig.node.rss_bytes().unwrap_or(0);

    // 1. Capacity, exactly as `bench` phase 2 measures it.
    let n = o.capacity_packets;
    let (m2, s2) = (mix.clone(), sink_entry.clone());
    let packets =
        tokio::task::spawn_blocking(move || build_many(n, &m2, &s2, Duration::ZERO)).await?;
    let tp =
        measure_throughput(&rig.node, &rig.flood, &rig.sink, &mix, packets, args.window).await?;
    let capacity = tp.rate;
    println!("capacity (node over QUIC, zero delay): {capacity:>8.0} pkt/s");

    // 2. The load, built up front.
    let light_rate = o.light_share * capacity;
    let flood_rate = o.overload_factor * capacity - light_rate * o.light_peers as f64;
    let flood_n = (flood_rate * o.overload_seconds).ceil() as usize + 1;
    let light_n = (light_rate * o.overload_seconds).ceil() as usize + 1;
    let t0 = Instant::now();
    let (m2, s2) = (mix.clone(), sink_entry.clone());
    let flood_pkts =
        tokio::task::spawn_blocking(move || build_timed(flood_n, &m2, &s2, mean, 0)).await?;
    let mut light_pkts: [Vec<Vec<Timed>>; 2] = [Vec::new(), Vec::new()];
    for (phase, set) in light_pkts.iter_mut().enumerate() {
        for e in &light_entries {
            let (m2, e2) = (mix.clone(), e.clone());
            let tag = phase as u8 + 1;
            set.push(
                tokio::task::spawn_blocking(move || build_timed(light_n, &m2, &e2, mean, tag))
                    .await?,
            );
        }
    }
    println!(
        "(built {} flood + {} light packets in {:.1?}; flooder offers {:.0} pkt/s = {:.2}x capacity)",
        flood_pkts.len(),
        light_pkts.iter().flatten().map(Vec::len).sum::<usize>(),
        t0.elapsed(),
        flood_rate,
        flood_rate / capacity
    );
    let late_tolerance = defaults.late_tolerance;
    // A Bloom filter of m = -n ln(p) / ln(2)^2 bits; its pages become
    // resident as tags set bits in them, so it shows as RSS growth.
    let r = ReplaySection::default();
    let replay_bitmap = (-(r.capacity as f64) * r.fp_rate.ln() / (2f64.ln().powi(2)) / 8.0) as u64;

    // 3. Phase A: no per-peer limit, the configured shedding.
    let wait_text = format!("\"{}\"", humantime::format_duration(max_wait));
    rig.restart(|c| {
        c.set_toml("mixing.ingress_max_wait", &wait_text);
    })
    .await?;
    let a = rig
        .phase(
            &flood_pkts,
            &light_pkts[0],
            flood_rate,
            light_rate,
            o.overload_seconds,
            1,
        )
        .await?;
    print_phase(
        "phase A: no per-peer limit (peer_rate = 0)",
        &a,
        capacity,
        idle_rss,
        replay_bitmap,
        light_rate,
        max_wait,
        late_tolerance,
    );

    // 4. Phase B: the same load against a per-peer limit, sized from what
    // the node unwrapped while flooded (its capacity under attack, with this
    // load generator on the same cores), not from the idle capacity.
    let limit = ((o.peer_rate_share * a.unwrapped).round() as u32).max(1);
    // The same burst-to-rate ratio as the defaults.
    let d = MixingSection::default();
    let burst = ((u64::from(limit) * u64::from(d.peer_burst) / u64::from(d.peer_rate.max(1)))
        as u32)
        .max(1);
    let (limit_text, burst_text) = (limit.to_string(), burst.to_string());
    rig.restart(|c| {
        c.set_toml("mixing.peer_rate", &limit_text)
            .set_toml("mixing.peer_burst", &burst_text);
    })
    .await?;
    let b = rig
        .phase(
            &flood_pkts,
            &light_pkts[1],
            flood_rate,
            light_rate,
            o.overload_seconds,
            2,
        )
        .await?;
    print_phase(
        &format!(
            "phase B: peer_rate = {limit} pkt/s = {:.2} x phase A's unwrap rate \
             = {:.2}x capacity, peer_burst = {burst}",
            o.peer_rate_share,
            limit as f64 / capacity
        ),
        &b,
        capacity,
        idle_rss,
        replay_bitmap,
        light_rate,
        max_wait,
        late_tolerance,
    );

    let light_share = |r: &PhaseResult| r.light_delivered as f64 / r.light_sent.max(1) as f64;
    println!(
        "fair share: light peers delivered {:.3} without the limit, {:.3} with it; \
         flooder through {:.2}x -> {:.2}x capacity (limit {:.2}x)",
        light_share(&a),
        light_share(&b),
        a.flood_through / capacity,
        b.flood_through / capacity,
        limit as f64 / capacity
    );
    rig.flood.close().await;
    rig.sink.close().await;
    for (p, _) in &rig.lights {
        p.close().await;
    }
    if !(a.up && b.up) {
        let log = rig.node.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "the node did not survive the overload; its last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}
