//! The network-wide parameter presets (per-hop delay, Poisson rates, pull
//! interval) that `loopmix-localnet --preset` starts and the simulator
//! studies. They live with the simulator because it is what predicts what
//! each one buys (ε, latency, bandwidth).

use std::time::Duration;

use clap::ValueEnum;

/// Payload bytes one Sphinx packet carries for a stream after the payload
/// and fragment overheads, with `payload_size = 2048` (approximate).
pub const STREAM_BYTES_PER_PACKET: f64 = 1990.0;

/// The Sphinx payload size of every preset: room for a forward packet
/// carrying three reply blocks.
pub const PAYLOAD_SIZE: usize = 2048;

/// Privacy/speed trade-off of the whole network (see `--help`). The ε and
/// latencies are the simulator's for localnet's shape with 100 clients
/// ([`Preset::prediction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// 20 ms per hop, λ_P 50/s: ε 0.53, mixing latency median 73 ms (p95 155 ms).
    Speed,
    /// 60 ms per hop, λ_P 30/s, pull every 25 ms: ε 0.38, median 220 ms
    /// (p95 465 ms).
    Balanced,
    /// 250 ms per hop, λ_P 30/s, pull every 100 ms: ε 0.18, median 0.92 s
    /// (p95 1.94 s).
    Privacy,
}

/// What the simulator predicts for a preset on localnet's shape (3 layers
/// × 2 mixes, 2 providers) with 100 clients: ε (mean per-message sender
/// unlinkability of the challenge senders) and the one-way mixing latency
/// of a message (4 delayed hops; slot waits, pulls and processing come on
/// top). ε from `loopmix-sim run --clients 100 --mixes-per-layer 2
/// --providers 2 --mu M --lambda-p P --lambda-l L --lambda-d D --lambda-m X
/// --duration-s 300` (seed 1); the latency is Gamma(4, μ), which that run
/// confirms (KS p > 0.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub epsilon: f64,
    pub median_s: f64,
    pub p95_s: f64,
}

/// Median and 95th percentile of Gamma(4, 1): the sum of 4 unit
/// exponential hop delays.
const GAMMA4_MEDIAN: f64 = 3.672;
const GAMMA4_P95: f64 = 7.754;

/// What a preset sets: the directory's `[network]` rates and delay, and the
/// clients' inbox pull interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresetParams {
    pub mean_hop_delay_ms: f64,
    pub lambda_p_per_s: f64,
    pub lambda_l_per_s: f64,
    pub lambda_d_per_s: f64,
    pub lambda_m_per_s: f64,
    pub pull_interval: Duration,
}

impl Preset {
    pub fn params(self) -> PresetParams {
        let (d, p, l, dr, m, pull) = match self {
            // Pull intervals: with the providers' 8 slots per answer the
            // receive capacity (160, 320, 80 messages/s) stays above what a
            // busy client receives (a peer's λ_P of data, acks for its own
            // λ_P, its loops), and the pull adds half an interval of delay.
            // Each follows a rule on the simulator's frontier
            // (docs/SIMULATIONS.md, "The presets"). Speed: the least mixing
            // latency at the threat model's floor ε ≤ 0.55 for ≤ 130 KB/s
            // sent per client. Balanced: the least bandwidth whose
            // predicted non-mixing share is at most 20 % without a longer
            // mean latency than the 50 ms / λ_P 20 it replaces. Privacy:
            // the least ε with a mixing p95 ≤ 2 s for no more bandwidth
            // than balanced.
            Preset::Speed => (20.0, 50.0, 2.0, 2.0, 2.0, 50),
            Preset::Balanced => (60.0, 30.0, 1.0, 1.0, 1.0, 25),
            Preset::Privacy => (250.0, 30.0, 1.0, 1.0, 1.0, 100),
        };
        PresetParams {
            mean_hop_delay_ms: d,
            lambda_p_per_s: p,
            lambda_l_per_s: l,
            lambda_d_per_s: dr,
            lambda_m_per_s: m,
            pull_interval: Duration::from_millis(pull),
        }
    }

    /// The simulator's prediction (see [`Prediction`]).
    pub fn prediction(self) -> Prediction {
        let epsilon = match self {
            Preset::Speed => 0.526,
            Preset::Balanced => 0.384,
            Preset::Privacy => 0.178,
        };
        let mean_hop_s = self.params().mean_hop_delay_ms / 1000.0;
        Prediction {
            epsilon,
            median_s: GAMMA4_MEDIAN * mean_hop_s,
            p95_s: GAMMA4_P95 * mean_hop_s,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Speed => "speed",
            Preset::Balanced => "balanced",
            Preset::Privacy => "privacy",
        }
    }
}

impl PresetParams {
    /// Upper bound of one client's goodput, bytes per second.
    pub fn goodput_bound(&self) -> f64 {
        self.lambda_p_per_s * STREAM_BYTES_PER_PACKET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help text and the prediction say the same.
    #[test]
    fn predicted_latency_follows_the_hop_delay() {
        let p = Preset::Balanced.prediction();
        assert!((p.median_s - 0.2203).abs() < 1e-3, "{p:?}");
        assert!((p.p95_s - 0.4652).abs() < 1e-3, "{p:?}");
        assert!(Preset::Privacy.prediction().epsilon < Preset::Speed.prediction().epsilon);
    }

    /// Gamma(4, 1)'s quantiles, by its CDF 1 - e^-x (1 + x + x²/2 + x³/6).
    #[test]
    fn gamma4_quantiles() {
        let cdf = |x: f64| 1.0 - (-x).exp() * (1.0 + x + x * x / 2.0 + x * x * x / 6.0);
        assert!((cdf(GAMMA4_MEDIAN) - 0.5).abs() < 1e-3);
        assert!((cdf(GAMMA4_P95) - 0.95).abs() < 1e-3);
    }
}
