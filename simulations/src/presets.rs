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

/// Privacy/speed trade-off of the whole network (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// 20 ms per hop, λ_P 50/s: fast, small anonymity sets.
    Speed,
    /// 50 ms per hop, λ_P 20/s.
    Balanced,
    /// 250 ms per hop, λ_P 10/s, more cover: slow, large anonymity sets.
    Privacy,
}

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
            // receive capacity (160, 80, 32 messages/s) stays above what a
            // busy client receives (a peer's λ_P of data, acks for its own
            // λ_P, its loops), and the pull adds half an interval of delay.
            Preset::Speed => (20.0, 50.0, 2.0, 2.0, 2.0, 50),
            Preset::Balanced => (50.0, 20.0, 1.0, 1.0, 1.0, 100),
            Preset::Privacy => (250.0, 10.0, 2.0, 2.0, 2.0, 250),
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
