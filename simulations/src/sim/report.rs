//! Turning runs into numbers: per-repetition rows, aggregates over
//! repetitions, CSV files and the one-screen summary. Nothing written here
//! depends on wall-clock time, so the same seed gives byte-identical files.

use std::fmt::Write as _;

use super::engine::{RunResult, Traffic};
use super::scenario::Scenario;
use super::stats::{KsTest, erlang_cdf, ks_test, mean_sd, quantile};

/// The numbers of one repetition, as one CSV row.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub repetition: u32,
    pub seed: u64,
    pub events: u64,
    pub mix_arrival_rate: f64,
    pub predicted_arrival_rate: f64,
    pub mean_pool: f64,
    pub predicted_pool: f64,
    pub mean_entropy_bits: f64,
    pub challenge_messages: u64,
    pub epsilon_mean: f64,
    pub epsilon_median: f64,
    pub epsilon_p95: f64,
    pub delta: f64,
    pub latency_n: u64,
    pub latency_mean_s: f64,
    pub latency_sd_s: f64,
    pub ks: KsTest,
    pub traffic: Traffic,
}

impl RunRow {
    pub fn new(s: &Scenario, r: &RunResult) -> Self {
        let k = s.delayed_hops();
        let u = &r.unlinkability;
        RunRow {
            repetition: r.repetition,
            seed: r.seed,
            events: r.events,
            mix_arrival_rate: r.mean_arrival_rate(),
            predicted_arrival_rate: s.mix_arrival_rate(),
            mean_pool: r.mean_pool(),
            predicted_pool: s.predicted_pool(),
            mean_entropy_bits: r.mean_entropy_bits(),
            challenge_messages: u.messages,
            epsilon_mean: u.mean_epsilon(),
            epsilon_median: quantile(&u.epsilons, 0.5),
            epsilon_p95: quantile(&u.epsilons, 0.95),
            delta: u.delta(),
            latency_n: r.latency.count,
            latency_mean_s: r.latency.mean(),
            latency_sd_s: r.latency.sd(),
            ks: ks_test(&r.latency.sample, |x| erlang_cdf(k, s.mu, x)),
            traffic: r.traffic,
        }
    }

    pub const CSV_HEADER: &'static str = "repetition,seed,events,mix_arrival_rate,predicted_arrival_rate,\
mean_pool,predicted_pool,mean_entropy_bits,challenge_messages,epsilon_mean,epsilon_median,epsilon_p95,\
delta,latency_n,latency_mean_s,latency_sd_s,ks_statistic,ks_p_value,real,payload_drop,loops,drops,\
mix_loops,cover_per_real";

    pub fn csv(&self) -> String {
        let t = &self.traffic;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.repetition,
            self.seed,
            self.events,
            self.mix_arrival_rate,
            self.predicted_arrival_rate,
            self.mean_pool,
            self.predicted_pool,
            self.mean_entropy_bits,
            self.challenge_messages,
            self.epsilon_mean,
            self.epsilon_median,
            self.epsilon_p95,
            self.delta,
            self.latency_n,
            self.latency_mean_s,
            self.latency_sd_s,
            self.ks.statistic,
            self.ks.p_value,
            t.real,
            t.payload_drop,
            t.loops,
            t.drops,
            t.mix_loops,
            t.cover_per_real(),
        )
    }
}

/// Per-node rows of one repetition.
pub fn nodes_csv(s: &Scenario, r: &RunResult, out: &mut String) {
    for n in &r.nodes {
        let (role, predicted) = if n.layer == 0 {
            ("provider", f64::NAN)
        } else {
            ("mix", s.predicted_pool())
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{}",
            r.repetition,
            n.index,
            role,
            n.layer,
            n.corrupt,
            n.arrivals,
            n.departures,
            n.arrival_rate,
            n.mean_pool,
            predicted,
            n.mean_entropy_bits,
        );
    }
}
pub const NODES_CSV_HEADER: &str = "repetition,node,role,layer,corrupt,arrivals,departures,\
arrival_rate,mean_pool,predicted_pool,mean_entropy_bits";

/// Mean and sd over repetitions of one column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let (mean, sd, _) = mean_sd(values);
        Stat { mean, sd }
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(3);
        write!(f, "{:.p$} ± {:.p$}", self.mean, self.sd)
    }
}

/// A scenario's repetitions, aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub repetitions: usize,
    pub events: u64,
    pub arrival_rate: Stat,
    pub pool: Stat,
    pub entropy_bits: Stat,
    pub epsilon: Stat,
    pub delta: Stat,
    pub challenge_messages: u64,
    pub latency_mean: Stat,
    pub latency_sd: Stat,
    pub cover_per_real: Stat,
    pub traffic: Traffic,
    /// KS over the latency samples of every repetition together.
    pub ks: KsTest,
}

impl Aggregate {
    pub fn new(s: &Scenario, rows: &[RunRow], latency_samples: &[f64]) -> Self {
        let col = |f: fn(&RunRow) -> f64| Stat::of(rows.iter().map(f));
        let mut traffic = Traffic::default();
        for r in rows {
            let t = &r.traffic;
            traffic.real += t.real;
            traffic.payload_drop += t.payload_drop;
            traffic.loops += t.loops;
            traffic.drops += t.drops;
            traffic.mix_loops += t.mix_loops;
        }
        let k = s.delayed_hops();
        Aggregate {
            repetitions: rows.len(),
            events: rows.iter().map(|r| r.events).sum(),
            arrival_rate: col(|r| r.mix_arrival_rate),
            pool: col(|r| r.mean_pool),
            entropy_bits: col(|r| r.mean_entropy_bits),
            epsilon: col(|r| r.epsilon_mean),
            delta: col(|r| r.delta),
            challenge_messages: rows.iter().map(|r| r.challenge_messages).sum(),
            latency_mean: col(|r| r.latency_mean_s),
            latency_sd: col(|r| r.latency_sd_s),
            cover_per_real: col(|r| r.traffic.cover_per_real()),
            traffic,
            ks: ks_test(latency_samples, |x| erlang_cdf(k, s.mu, x)),
        }
    }
}

/// Approximate steady-state mean of the Eq. 5 entropy of a Poisson mix
/// with mean pool `rho` = λ/μ: `log2(e·rho)`. Not from the paper: with about
/// one arrival per departure Eq. 5 has the fixed point `rho·H2(1/rho)`,
/// which tends to `log2(e·rho)`; simulations agree within a few percent
/// for rho ≥ 5 (see docs/SIMULATIONS.md).
pub fn approx_entropy_bits(rho: f64) -> f64 {
    (std::f64::consts::E * rho).max(1.0).log2()
}

/// The one-screen text summary of a run.
pub fn summary(s: &Scenario, a: &Aggregate) -> String {
    let k = s.delayed_hops();
    let gamma_mean = k as f64 / s.mu;
    let gamma_sd = (k as f64).sqrt() / s.mu;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "loopmix-sim: {} clients, {} layer(s) x {} mixes, {} provider(s); mu = {}/s (mean hop delay {:.4} s)",
        s.clients,
        s.layers,
        s.mixes_per_layer,
        s.providers,
        s.mu,
        1.0 / s.mu
    );
    if s.beyond_sphinx() {
        let _ = writeln!(
            o,
            "NOTE: {} layers is beyond what a 5-hop Sphinx route carries today (3): simulation only",
            s.layers
        );
    }
    let _ = writeln!(
        o,
        "rates/s: lambda_P {} lambda_L {} lambda_D {} lambda_M {}; real fraction {}; corrupt {}/{} mixes",
        s.lambda_p,
        s.lambda_l,
        s.lambda_d,
        s.lambda_m,
        s.real_fraction,
        s.corrupt_mixes(),
        s.mixes()
    );
    let _ = writeln!(
        o,
        "window {} s after {} s burn-in; {} repetition(s); seed {}; {} events",
        s.duration_s, s.burn_in_s, a.repetitions, s.seed, a.events
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<44}{:<26}predicted",
        "per mix (mean ± sd over repetitions)", "measured"
    );
    let _ = writeln!(
        o,
        "{:<44}{:<26}{:.3}",
        "  arrival rate lambda (/s)",
        format!("{:.3}", a.arrival_rate),
        s.mix_arrival_rate()
    );
    let _ = writeln!(
        o,
        "{:<44}{:<26}{:.3}  (lambda/mu, M/M/inf)",
        "  pool size (time average)",
        format!("{:.3}", a.pool),
        s.predicted_pool()
    );
    let _ = writeln!(
        o,
        "{:<44}{:<26}~ {:.3}  (log2(e lambda/mu), approx.)",
        "  Eq. 5 entropy H (bits, mean per output)",
        format!("{:.3}", a.entropy_bits),
        approx_entropy_bits(s.predicted_pool())
    );
    let _ = writeln!(o, "end-to-end latency of real messages");
    let _ = writeln!(
        o,
        "{:<44}{:<26}{:.4}  (Gamma({k}, {}))",
        "  mean (s)",
        format!("{:.4}", a.latency_mean),
        gamma_mean,
        s.mu
    );
    let _ = writeln!(
        o,
        "{:<44}{:<26}{:.4}",
        "  sd (s)",
        format!("{:.4}", a.latency_sd),
        gamma_sd
    );
    let _ = writeln!(
        o,
        "  KS vs Gamma({k}, {}): D = {:.5}, p = {:.3} (n = {})",
        s.mu, a.ks.statistic, a.ks.p_value, a.ks.n
    );
    let _ = writeln!(
        o,
        "sender-receiver unlinkability (challenge senders 0 and 1)"
    );
    let _ = writeln!(
        o,
        "  epsilon = |ln(p0/p1)|, mean per message    {:.4}   ({} messages)",
        a.epsilon, a.challenge_messages
    );
    let _ = writeln!(
        o,
        "  delta = share of messages fully linked     {:.4}",
        a.delta
    );
    let t = &a.traffic;
    let _ = writeln!(o, "bandwidth overhead");
    let _ = writeln!(
        o,
        "  cover packets per real packet              {:.3}   (real {}, payload drops {}, loops {}, drops {}, mix loops {})",
        a.cover_per_real, t.real, t.payload_drop, t.loops, t.drops, t.mix_loops
    );
    o
}

/// Histogram of latency samples: `(bin start, bin end, count, density,
/// Gamma density at the bin centre)`.
pub fn latency_histogram(
    s: &Scenario,
    samples: &[f64],
    bins: usize,
) -> Vec<(f64, f64, u64, f64, f64)> {
    let k = s.delayed_hops();
    let gamma_mean = k as f64 / s.mu;
    let gamma_sd = (k as f64).sqrt() / s.mu;
    let hi = gamma_mean + 5.0 * gamma_sd;
    let width = hi / bins.max(1) as f64;
    let mut counts = vec![0u64; bins.max(1)];
    for &x in samples {
        // The tail beyond mean + 5 sd is counted in n but not drawn.
        if x.is_finite()
            && x >= 0.0
            && let Some(c) = counts.get_mut((x / width) as usize)
        {
            *c += 1;
        }
    }
    let n = samples.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let (a, b) = (i as f64 * width, (i + 1) as f64 * width);
            let gamma = super::stats::erlang_pdf(k, s.mu, (a + b) / 2.0);
            (a, b, c, c as f64 / n / width, gamma)
        })
        .collect()
}
