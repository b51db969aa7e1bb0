//! Sweeps: one parameter varied over a list of values, everything else
//! fixed, each point run `repetitions` times. The presets reproduce the
//! shapes of the Loopix paper's anonymity figures (§4.3.1).

use std::fmt::Write as _;

use super::report::{RunRow, Stat};
use super::scenario::{Scenario, ScenarioError};

/// A parameter a sweep can vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Param {
    Mu,
    Layers,
    MixesPerLayer,
    Clients,
    CorruptFraction,
    LambdaP,
    LambdaL,
    LambdaD,
    LambdaM,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Param::Mu => "mu",
            Param::Layers => "layers",
            Param::MixesPerLayer => "mixes_per_layer",
            Param::Clients => "clients",
            Param::CorruptFraction => "corrupt_fraction",
            Param::LambdaP => "lambda_p",
            Param::LambdaL => "lambda_l",
            Param::LambdaD => "lambda_d",
            Param::LambdaM => "lambda_m",
        }
    }

    /// The x-axis label of a sweep over this parameter.
    pub fn axis_label(self) -> &'static str {
        match self {
            Param::Mu => "mu, per second (mean delay per hop 1/mu s)",
            Param::Layers => "mix layers L",
            Param::MixesPerLayer => "mixes per layer W",
            Param::Clients => "clients U",
            Param::CorruptFraction => "fraction of mixes corrupt",
            Param::LambdaP => "lambda_P, per second",
            Param::LambdaL => "lambda_L, per second",
            Param::LambdaD => "lambda_D, per second",
            Param::LambdaM => "lambda_M, per second",
        }
    }

    /// `base` with this parameter set to `v`, validated.
    pub fn apply(self, base: &Scenario, v: f64) -> Result<Scenario, ScenarioError> {
        let name = self.name();
        let int = |max: u64| -> Result<u64, ScenarioError> {
            if v.is_finite() && v.fract() == 0.0 && v >= 0.0 && v <= max as f64 {
                Ok(v as u64)
            } else {
                Err(ScenarioError::OutOfRange {
                    name,
                    value: v.to_string(),
                    allowed: format!("a whole number in 0..={max} for this sweep"),
                })
            }
        };
        let mut s = base.clone();
        match self {
            Param::Mu => s.mu = v,
            Param::Layers => s.layers = int(u8::MAX.into())? as u8,
            Param::MixesPerLayer => s.mixes_per_layer = int(u32::MAX.into())? as u32,
            Param::Clients => s.clients = int(u32::MAX.into())? as u32,
            Param::CorruptFraction => s.corrupt_fraction = v,
            Param::LambdaP => s.lambda_p = v,
            Param::LambdaL => s.lambda_l = v,
            Param::LambdaD => s.lambda_d = v,
            Param::LambdaM => s.lambda_m = v,
        }
        s.validate()?;
        Ok(s)
    }
}

/// A named sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// File stem of its outputs.
    pub name: String,
    pub title: String,
    pub param: Param,
    pub values: Vec<f64>,
    pub base: Scenario,
}

impl Sweep {
    /// The title plus the fixed parameters (the swept one left out), as
    /// resolved: a chart caption that stays true when flags change the base.
    pub fn caption(&self) -> String {
        let b = &self.base;
        let mut parts = Vec::new();
        if self.param != Param::Clients {
            parts.push(format!("U={}", b.clients));
        }
        parts.push(format!("lambda={}/client", b.client_rate()));
        if self.param != Param::Mu {
            parts.push(format!("mu={}", b.mu));
        }
        match self.param {
            Param::Layers => parts.push(format!("{} mixes/layer", b.mixes_per_layer)),
            Param::MixesPerLayer => parts.push(format!("{} layers", b.layers)),
            _ => parts.push(format!("{} x {} mixes", b.layers, b.mixes_per_layer)),
        }
        format!("{} ({})", self.title, parts.join(", "))
    }

    /// Every point's scenario, all validated before any work starts.
    pub fn points(&self) -> Result<Vec<Scenario>, ScenarioError> {
        self.values
            .iter()
            .map(|&v| self.param.apply(&self.base, v))
            .collect()
    }
}

/// The Loopix §4.3 setting: U = 100 senders at λ = 2 per second each
/// (λ_P = 1 plus λ_L = λ_D = 0.5), 3 layers × 3 mixes, no mix loops, 100 s
/// measured after a 100 s burn-in (the paper measured 100 time units after
/// 2500; our pools are at steady state after a few 1/μ).
pub fn loopix_base() -> Scenario {
    Scenario {
        clients: 100,
        layers: 3,
        mixes_per_layer: 3,
        providers: 2,
        lambda_p: 1.0,
        lambda_l: 0.5,
        lambda_d: 0.5,
        lambda_m: 0.0,
        mu: 1.0,
        real_fraction: 0.5,
        corrupt_fraction: 0.0,
        corrupt_spread: false,
        excluded_honest: 0,
        duration_s: 100.0,
        burn_in_s: 100.0,
        repetitions: 50,
        seed: 1,
    }
}

pub const PRESETS: &[&str] = &["fig5", "fig6", "corrupt"];

/// A preset by name: `fig5` (ε vs μ), `fig6` (ε vs layers), `corrupt`
/// (ε vs the fraction of corrupt mixes).
pub fn preset(name: &str) -> Option<Sweep> {
    let base = loopix_base();
    Some(match name {
        "fig5" => Sweep {
            name: name.into(),
            title: "Loopix Fig. 5 shape: epsilon vs mu".into(),
            param: Param::Mu,
            values: (1..=10).map(|i| i as f64 / 5.0).collect(),
            base,
        },
        "fig6" => Sweep {
            name: name.into(),
            // Past 3 layers: simulation only (a Sphinx route carries 3).
            title: "Loopix Fig. 6 shape: epsilon vs layers (4+ simulation only)".into(),
            param: Param::Layers,
            values: (1..=6).map(f64::from).collect(),
            base,
        },
        "corrupt" => Sweep {
            name: name.into(),
            title: "Loopix Fig. 7 shape: epsilon vs corrupt mixes".into(),
            param: Param::CorruptFraction,
            values: (0..=9).map(|i| i as f64 / 9.0).collect(),
            base,
        },
        _ => return None,
    })
}

/// Aggregates of one sweep point.
#[derive(Clone, Debug, PartialEq)]
pub struct PointSummary {
    pub value: f64,
    pub scenario: Scenario,
    pub epsilon: Stat,
    pub delta: Stat,
    pub pool: Stat,
    pub entropy_bits: Stat,
    pub latency: Stat,
    pub cover_per_real: Stat,
    pub messages: u64,
}

impl PointSummary {
    pub fn new(value: f64, scenario: Scenario, rows: &[RunRow]) -> Self {
        let col = |f: fn(&RunRow) -> f64| Stat::of(rows.iter().map(f));
        PointSummary {
            value,
            scenario,
            epsilon: col(|r| r.epsilon_mean),
            delta: col(|r| r.delta),
            pool: col(|r| r.mean_pool),
            entropy_bits: col(|r| r.mean_entropy_bits),
            latency: col(|r| r.latency_mean_s),
            cover_per_real: col(|r| r.traffic.cover_per_real()),
            messages: rows.iter().map(|r| r.challenge_messages).sum(),
        }
    }

    pub const CSV_HEADER: &'static str = "param,value,repetitions,client_lambda_over_mu,\
predicted_pool,mean_pool,mean_pool_sd,entropy_bits,epsilon_mean,epsilon_sd,delta_mean,delta_sd,\
challenge_messages,latency_mean_s,cover_per_real";

    pub fn csv(&self, param: Param) -> String {
        let s = &self.scenario;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            param.name(),
            self.value,
            s.repetitions,
            s.client_rate() / s.mu,
            s.predicted_pool(),
            self.pool.mean,
            self.pool.sd,
            self.entropy_bits.mean,
            self.epsilon.mean,
            self.epsilon.sd,
            self.delta.mean,
            self.delta.sd,
            self.messages,
            self.latency.mean,
            self.cover_per_real.mean,
        )
    }
}

/// A swept value for a table: whole numbers as such, others to 3 places.
fn short(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.3}")
    }
}

/// The sweep as a text table.
pub fn summary(sw: &Sweep, points: &[PointSummary]) -> String {
    let mut o = String::new();
    let b = &sw.base;
    let _ = writeln!(o, "sweep {}: {}", sw.name, sw.caption());
    let _ = writeln!(
        o,
        "base: {} clients, {} x {} mixes, mu {}, rates/s P {} L {} D {} M {}, corrupt {}, \
         {} s after {} s burn-in, {} repetitions/point, seed {}",
        b.clients,
        b.layers,
        b.mixes_per_layer,
        b.mu,
        b.lambda_p,
        b.lambda_l,
        b.lambda_d,
        b.lambda_m,
        b.corrupt_fraction,
        b.duration_s,
        b.burn_in_s,
        b.repetitions,
        b.seed
    );
    let _ = writeln!(
        o,
        "{:>16} {:>11} {:>15} {:>8} {:>17} {:>8} {:>9}",
        sw.param.name(),
        "lambda/mu",
        "pool (pred)",
        "H bits",
        "epsilon ± sd",
        "delta",
        "latency"
    );
    for p in points {
        let s = &p.scenario;
        let _ = writeln!(
            o,
            "{:>16} {:>11.2} {:>15} {:>8.2} {:>17} {:>8.3} {:>8.2}s",
            short(p.value),
            s.client_rate() / s.mu,
            format!("{:.1} ({:.1})", p.pool.mean, s.predicted_pool()),
            p.entropy_bits.mean,
            if p.epsilon.mean.is_finite() {
                format!("{:.4}", p.epsilon)
            } else {
                "n/a (all linked)".to_string()
            },
            p.delta.mean,
            p.latency.mean
        );
    }
    o
}
