//! A simulation scenario: the network, its rates, and how long and how often
//! to run it. Read from TOML (strictly: unknown keys are errors) and/or
//! flags, then checked in full by [`Scenario::validate`] before any work.
//!
//! Time is in seconds of virtual time and rates are per second, as in the
//! topology document (`mean_hop_delay_ms` there is `1000 / mu` here). The
//! Loopix paper's figures use abstract "time units"; read them as seconds.

use std::path::Path;

use loopmix_core::topology::MAX_LAYERS;

/// The most mix layers the simulator takes. Beyond [`MAX_LAYERS`] (3) is
/// simulation only: a Sphinx route of 5 hops carries the two providers and
/// 3 mixes, so no loopmix network can run such a scenario today.
pub const SIM_MAX_LAYERS: u8 = 8;
use serde::{Deserialize, Serialize};

/// Every parameter of one simulated network. `Default` is the network
/// defaults of `loopmix-directory` (μ = 20/s, i.e. 50 ms per hop; λ_P = 2,
/// λ_L = λ_D = λ_M = 1 per second) at the scale the issue asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// U: number of clients. Clients 0 and 1 are the challenge senders.
    pub clients: u32,
    /// L: mix layers, 1..=8. A Sphinx route (5 hops) is provider + 3 mixes +
    /// provider: more than 3 layers is simulation only ([`SIM_MAX_LAYERS`]).
    pub layers: u8,
    /// W: mixes per layer.
    pub mixes_per_layer: u32,
    /// Providers (gateways); clients are spread over them round-robin.
    pub providers: u32,
    /// λ_P: client payload stream (a real message if one is queued, else a drop), per second.
    pub lambda_p: f64,
    /// λ_L: client loop cover, per second (0 = off).
    pub lambda_l: f64,
    /// λ_D: client drop cover, per second (0 = off).
    pub lambda_d: f64,
    /// λ_M: mix loop cover, per mix, per second (0 = off).
    pub lambda_m: f64,
    /// μ: per-hop delay rate, per second; each hop holds a packet Exp(μ), mean 1/μ.
    pub mu: f64,
    /// Fraction of payload ticks of ordinary clients that carry a real
    /// message (the challenge senders always send real messages on λ_P).
    pub real_fraction: f64,
    /// Fraction of mixes that are corrupt (the adversary sees through them).
    pub corrupt_fraction: f64,
    /// Spread the corrupt mixes evenly over the layers (round-robin) instead
    /// of drawing them among all mixes.
    pub corrupt_spread: bool,
    /// Honest mixes per layer the adversary has got onto the network's down
    /// list (by dropping their packets); routes then come from
    /// `Topology::with_exclusions` with the core's 50 % cap per layer.
    pub excluded_honest: u32,
    /// Measured virtual time after the burn-in, seconds.
    pub duration_s: f64,
    /// Virtual time simulated before measuring, seconds (pools fill up).
    pub burn_in_s: f64,
    /// Independent repetitions (each with its own seed stream).
    pub repetitions: u32,
    /// Master seed: the same seed gives byte-identical output.
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            clients: 1000,
            layers: 3,
            mixes_per_layer: 10,
            providers: 10,
            lambda_p: 2.0,
            lambda_l: 1.0,
            lambda_d: 1.0,
            lambda_m: 1.0,
            mu: 20.0,
            real_fraction: 0.5,
            corrupt_fraction: 0.0,
            corrupt_spread: false,
            excluded_honest: 0,
            duration_s: 3600.0,
            burn_in_s: 60.0,
            repetitions: 1,
            seed: 1,
        }
    }
}

/// A scenario that cannot run; the message names the parameter and the range.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: malformed scenario: {message}")]
    Parse { file: String, message: String },
    #[error("parameter `{name}` = {value}: must be {allowed}")]
    OutOfRange {
        name: &'static str,
        value: String,
        allowed: String,
    },
}

fn out_of_range(name: &'static str, value: impl ToString, allowed: impl ToString) -> ScenarioError {
    ScenarioError::OutOfRange {
        name,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// Rates below this are refused: core caps one exponential draw at an hour,
/// which would visibly truncate a process slower than one event per 100 s.
pub const MIN_RATE: f64 = 0.01;
/// Upper bound for any rate; far beyond what a simulation can finish.
pub const MAX_RATE: f64 = 1.0e6;
/// Upper bound for `duration_s` and `burn_in_s` (about 115 days).
pub const MAX_SECONDS: f64 = 1.0e7;

impl Scenario {
    /// Reads a TOML scenario; missing keys keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<Self, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml_str(&text, &file)
    }

    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Every rule; the first violation is returned.
    /// Whether the scenario has more layers than a real network can route.
    pub fn beyond_sphinx(&self) -> bool {
        self.layers > MAX_LAYERS
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let int = |name: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(out_of_range(name, v, format!("an integer in {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        int("clients", self.clients.into(), 2, 1_000_000)?;
        int("layers", self.layers.into(), 1, SIM_MAX_LAYERS.into()).map_err(|e| match e {
            ScenarioError::OutOfRange { name, value, .. } => ScenarioError::OutOfRange {
                name,
                value,
                allowed: format!(
                    "an integer in 1..={SIM_MAX_LAYERS} (a Sphinx route holds at most \
                     {MAX_LAYERS} mix layers between the two providers; more is \
                     simulation only)"
                ),
            },
            other => other,
        })?;
        int("mixes_per_layer", self.mixes_per_layer.into(), 1, 10_000)?;
        int("providers", self.providers.into(), 1, 10_000)?;
        int("repetitions", self.repetitions.into(), 1, 100_000)?;
        int(
            "excluded_honest",
            self.excluded_honest.into(),
            0,
            self.mixes_per_layer.into(),
        )?;

        let positive_rate = |name: &'static str, v: f64| {
            if v.is_finite() && (MIN_RATE..=MAX_RATE).contains(&v) {
                Ok(())
            } else {
                Err(out_of_range(
                    name,
                    v,
                    format!("a rate per second in [{MIN_RATE}, {MAX_RATE:e}]"),
                ))
            }
        };
        let cover_rate = |name: &'static str, v: f64| {
            if v == 0.0 || (v.is_finite() && (MIN_RATE..=MAX_RATE).contains(&v)) {
                Ok(())
            } else {
                Err(out_of_range(
                    name,
                    v,
                    format!("0 (off) or a rate per second in [{MIN_RATE}, {MAX_RATE:e}]"),
                ))
            }
        };
        positive_rate("lambda_p", self.lambda_p)?;
        cover_rate("lambda_l", self.lambda_l)?;
        cover_rate("lambda_d", self.lambda_d)?;
        cover_rate("lambda_m", self.lambda_m)?;
        positive_rate("mu", self.mu)?;

        let fraction = |name: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(out_of_range(name, v, "a fraction in [0, 1]"))
            }
        };
        fraction("real_fraction", self.real_fraction)?;
        fraction("corrupt_fraction", self.corrupt_fraction)?;

        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= MAX_SECONDS)
        {
            return Err(out_of_range(
                "duration_s",
                self.duration_s,
                format!("seconds in (0, {MAX_SECONDS:e}]"),
            ));
        }
        if !(self.burn_in_s.is_finite() && (0.0..=MAX_SECONDS).contains(&self.burn_in_s)) {
            return Err(out_of_range(
                "burn_in_s",
                self.burn_in_s,
                format!("seconds in [0, {MAX_SECONDS:e}]"),
            ));
        }
        Ok(())
    }

    /// Mixes in the network.
    pub fn mixes(&self) -> u32 {
        self.layers as u32 * self.mixes_per_layer
    }

    /// How many mixes are corrupt (rounded to the nearest whole mix).
    pub fn corrupt_mixes(&self) -> u32 {
        (self.corrupt_fraction * self.mixes() as f64).round() as u32
    }

    /// Packets a client sends per second on all streams.
    pub fn client_rate(&self) -> f64 {
        self.lambda_p + self.lambda_l + self.lambda_d
    }

    /// M/M/∞ arrival rate at one mix: every client packet and every mix
    /// loop crosses each layer once, spread uniformly over its W mixes.
    pub fn mix_arrival_rate(&self) -> f64 {
        let per_layer =
            self.clients as f64 * self.client_rate() + self.mixes() as f64 * self.lambda_m;
        per_layer / self.mixes_per_layer as f64
    }

    /// Lemma 1: the mean pool size λ/μ of one mix.
    pub fn predicted_pool(&self) -> f64 {
        self.mix_arrival_rate() / self.mu
    }

    /// Delayed hops of a client packet: the first provider and every mix
    /// (the last hop's delay is never applied), so latency ~ Gamma(L+1, μ).
    pub fn delayed_hops(&self) -> u32 {
        self.layers as u32 + 1
    }

    /// Virtual time after the window in which messages sent inside it may
    /// still arrive: ten times the mean route delay.
    pub fn cooldown_s(&self) -> f64 {
        10.0 * self.delayed_hops() as f64 / self.mu
    }

    /// Rough count of scheduler events for all repetitions, for a progress
    /// estimate and a warning before a very long run.
    pub fn estimated_events(&self) -> f64 {
        let t = self.burn_in_s + self.duration_s + self.cooldown_s();
        let packets =
            (self.clients as f64 * self.client_rate() + self.mixes() as f64 * self.lambda_m) * t;
        packets * (self.layers as f64 + 2.0) * self.repetitions as f64
    }

    /// The scenario as commented TOML (for `init`).
    pub fn to_toml(&self) -> String {
        let lines: [(&str, String, &str); 17] = [
            (
                "clients",
                self.clients.to_string(),
                "U; clients 0 and 1 are the challenge senders",
            ),
            (
                "layers",
                self.layers.to_string(),
                "L mix layers, 1..=8 (more than 3: simulation only, Sphinx routes carry 3)",
            ),
            ("mixes_per_layer", self.mixes_per_layer.to_string(), "W"),
            (
                "providers",
                self.providers.to_string(),
                "clients are assigned round-robin",
            ),
            (
                "lambda_p",
                format!("{:?}", self.lambda_p),
                "payload stream (real or drop), > 0",
            ),
            (
                "lambda_l",
                format!("{:?}", self.lambda_l),
                "client loop cover (0 = off)",
            ),
            (
                "lambda_d",
                format!("{:?}", self.lambda_d),
                "client drop cover (0 = off)",
            ),
            (
                "lambda_m",
                format!("{:?}", self.lambda_m),
                "mix loop cover, per mix (0 = off)",
            ),
            (
                "mu",
                format!("{:?}", self.mu),
                "per-hop delay Exp(mu): mean 1/mu seconds",
            ),
            (
                "real_fraction",
                format!("{:?}", self.real_fraction),
                "payload ticks with a real message, [0, 1]",
            ),
            (
                "corrupt_fraction",
                format!("{:?}", self.corrupt_fraction),
                "share of corrupt mixes, [0, 1]",
            ),
            (
                "corrupt_spread",
                self.corrupt_spread.to_string(),
                "corrupt mixes round-robin over the layers",
            ),
            (
                "excluded_honest",
                self.excluded_honest.to_string(),
                "honest mixes per layer listed down (liveness)",
            ),
            (
                "duration_s",
                format!("{:?}", self.duration_s),
                "measured time after the burn-in",
            ),
            (
                "burn_in_s",
                format!("{:?}", self.burn_in_s),
                "simulated before measuring",
            ),
            (
                "repetitions",
                self.repetitions.to_string(),
                "independent runs",
            ),
            (
                "seed",
                self.seed.to_string(),
                "same seed, byte-identical output",
            ),
        ];
        let mut out = String::from(
            "# loopmix-sim scenario. Times in seconds of virtual time, rates per second.\n",
        );
        for (key, value, comment) in lines {
            out.push_str(&format!("{:<26}# {comment}\n", format!("{key} = {value}")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn err(s: Scenario) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = Scenario::default();
        s.validate().unwrap();
        let back = Scenario::from_toml_str(&s.to_toml(), "x").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let d = Scenario::default;
        let e = err(Scenario { layers: 9, ..d() });
        assert!(e.contains("`layers`") && e.contains("1..=8"), "{e}");
        Scenario { layers: 8, ..d() }.validate().unwrap();
        let e = err(Scenario { mu: 0.0, ..d() });
        assert!(e.contains("`mu`"), "{e}");
        let e = err(Scenario {
            lambda_p: 0.0,
            ..d()
        });
        assert!(e.contains("`lambda_p`"), "{e}");
        let e = err(Scenario {
            lambda_m: -1.0,
            ..d()
        });
        assert!(e.contains("`lambda_m`") && e.contains("0 (off)"), "{e}");
        let e = err(Scenario {
            duration_s: -5.0,
            ..d()
        });
        assert!(e.contains("`duration_s`"), "{e}");
        let e = err(Scenario {
            burn_in_s: f64::NAN,
            ..d()
        });
        assert!(e.contains("`burn_in_s`"), "{e}");
        let e = err(Scenario {
            corrupt_fraction: 1.5,
            ..d()
        });
        assert!(
            e.contains("`corrupt_fraction`") && e.contains("[0, 1]"),
            "{e}"
        );
        let e = err(Scenario { clients: 1, ..d() });
        assert!(e.contains("`clients`"), "{e}");
    }

    #[test]
    fn malformed_toml_is_refused() {
        let e = Scenario::from_toml_str("mu = \"fast\"", "s.toml").unwrap_err();
        assert!(
            e.to_string().contains("s.toml") && e.to_string().contains("mu"),
            "{e}"
        );
        let e = Scenario::from_toml_str("lambda = 2.0", "s.toml").unwrap_err();
        assert!(e.to_string().contains("lambda"), "{e}");
        let e = Scenario::from_toml_str("layers = 300", "s.toml").unwrap_err();
        assert!(e.to_string().contains("layers"), "{e}");
    }

    #[test]
    fn arrival_rate_counts_clients_and_mix_loops() {
        let s = Scenario {
            clients: 100,
            layers: 3,
            mixes_per_layer: 3,
            lambda_p: 1.0,
            lambda_l: 0.5,
            lambda_d: 0.5,
            lambda_m: 1.0,
            mu: 2.0,
            ..Scenario::default()
        };
        // (100·2 + 9·1) / 3 per mix.
        assert!((s.mix_arrival_rate() - 209.0 / 3.0).abs() < 1e-9);
        assert!((s.predicted_pool() - 209.0 / 6.0).abs() < 1e-9);
    }
}
