//! What the simulator predicts for this directory's `[network]` parameters:
//! ε (sender–receiver unlinkability, docs/SIMULATIONS.md) and end-to-end
//! latency, for the status page.
//!
//! One repetition of `loopmix-sim` on a fixed reference network (the
//! Loopix §4.3 setting: 100 clients, 3 mixes per layer) at the configured
//! rates, μ and layer count, with a fixed seed: the same config always
//! shows the same numbers. The real network's size is neither known at
//! start-up nor the whole story (ε depends on how many clients send), so
//! the page says which network was simulated rather than pretend it is
//! this one.
//!
//! Cost is bounded before any work: the measured window shrinks so that
//! the simulator's own event estimate stays under [`EVENT_BUDGET`]
//! (about a second of one core), and parameters that cannot fit even a
//! short window are not simulated at all (the page says so and gives the
//! `loopmix-sim` command). It runs once, on its own thread, never on the
//! async runtime; the page shows "computing" until it is done.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use loopmix_sim::sim::engine;
use loopmix_sim::sim::report::RunRow;
use loopmix_sim::sim::scenario::Scenario;

use crate::config::NetworkSection;

/// Clients of the simulated network (Loopix §4.3 uses 100 senders).
pub const SIM_CLIENTS: u32 = 100;
/// Mixes per layer of the simulated network.
pub const SIM_MIXES_PER_LAYER: u32 = 3;
/// Providers of the simulated network (they do not mix: any count works).
pub const SIM_PROVIDERS: u32 = 3;
/// The simulation's seed: the same parameters give the same prediction.
pub const SIM_SEED: u64 = 1;
/// Most scheduler events one prediction may take (`Scenario::estimated_events`).
pub const EVENT_BUDGET: f64 = 1.0e6;
/// Longest measured window, virtual seconds (the Loopix figures use 100 s).
pub const MAX_WINDOW_S: f64 = 100.0;
/// Shortest measured window worth reporting, virtual seconds.
pub const MIN_WINDOW_S: f64 = 10.0;

/// The outcome of one prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    /// The scenario that ran (network size, rates, window, seed).
    pub scenario: Scenario,
    /// Mean ε over the challenge messages (NaN if none arrived).
    pub epsilon: f64,
    /// Share of challenge messages the adversary links outright.
    pub delta: f64,
    /// Challenge messages delivered in the window.
    pub challenge_messages: u64,
    /// Measured mean end-to-end latency, seconds.
    pub latency_mean_s: f64,
    /// Gamma(L+1, μ)'s mean, (L+1)/μ: what latency must be (no link or
    /// processing time in the simulator).
    pub latency_analytic_s: f64,
    /// Scheduler events processed.
    pub events: u64,
    /// Wall-clock time the simulation took, seconds.
    pub took_s: f64,
}

/// Where the prediction stands.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictionState {
    /// Not done yet (it runs once, in the background, after start-up).
    Computing,
    Done(Box<Predicted>),
    /// Not simulated: why (invalid for the simulator, or over budget).
    NotSimulated(String),
}

/// The shared, computed-once prediction.
#[derive(Clone)]
pub struct Prediction {
    network: NetworkSection,
    state: Arc<Mutex<PredictionState>>,
}

impl Prediction {
    pub fn new(network: NetworkSection) -> Self {
        Self {
            network,
            state: Arc::new(Mutex::new(PredictionState::Computing)),
        }
    }

    pub fn state(&self) -> PredictionState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs the simulation on the calling thread and stores the result.
    pub fn compute(&self) {
        let result = predict(&self.network);
        if let PredictionState::NotSimulated(why) = &result {
            tracing::info!(reason = %why, "status page: no ε prediction");
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = result;
    }

    /// Runs [`Self::compute`] on a thread of its own (detached: a
    /// shutdown never waits for it; it is bounded anyway).
    pub fn start(&self) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("status-prediction".into())
            .spawn(move || me.compute());
        if let Err(e) = spawned {
            *self.state.lock().unwrap_or_else(|p| p.into_inner()) =
                PredictionState::NotSimulated(format!("could not start a thread: {e}"));
        }
    }
}

/// The reference scenario for `network`, its window fitted to the budget.
pub fn scenario(network: &NetworkSection) -> Result<Scenario, String> {
    let mu = if network.mean_hop_delay_ms > 0.0 {
        1000.0 / network.mean_hop_delay_ms
    } else {
        f64::INFINITY
    };
    let mut s = Scenario {
        clients: SIM_CLIENTS,
        layers: network.layers,
        mixes_per_layer: SIM_MIXES_PER_LAYER,
        providers: SIM_PROVIDERS,
        lambda_p: network.lambda_p_per_s,
        lambda_l: network.lambda_l_per_s,
        lambda_d: network.lambda_d_per_s,
        lambda_m: network.lambda_m_per_s,
        mu,
        // Pools fill within a few 1/μ.
        burn_in_s: 20.0 / mu,
        duration_s: MAX_WINDOW_S,
        repetitions: 1,
        seed: SIM_SEED,
        ..Scenario::default()
    };
    s.validate()
        .map_err(|e| format!("the simulator refuses it: {e}"))?;
    // Events grow linearly with the window: fit it to the budget.
    let fixed = Scenario {
        duration_s: 0.0,
        ..s.clone()
    }
    .estimated_events();
    let per_s = (s.estimated_events() - fixed) / MAX_WINDOW_S;
    let window = ((EVENT_BUDGET - fixed) / per_s.max(f64::MIN_POSITIVE)).min(MAX_WINDOW_S);
    if window.is_nan() || window < MIN_WINDOW_S {
        return Err(format!(
            "more than {EVENT_BUDGET:.0} simulator events even for a {MIN_WINDOW_S} s window; \
             run `loopmix-sim run` with these parameters instead"
        ));
    }
    s.duration_s = window.floor();
    Ok(s)
}

/// Simulates `network`'s parameters on the reference network.
pub fn predict(network: &NetworkSection) -> PredictionState {
    let s = match scenario(network) {
        Ok(s) => s,
        Err(why) => return PredictionState::NotSimulated(why),
    };
    let started = Instant::now();
    let r = match engine::run(&s, 0, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => return PredictionState::NotSimulated(format!("the simulation failed: {e}")),
    };
    let row = RunRow::new(&s, &r);
    PredictionState::Done(Box::new(Predicted {
        latency_analytic_s: f64::from(s.delayed_hops()) / s.mu,
        scenario: s,
        epsilon: row.epsilon_mean,
        delta: row.delta,
        challenge_messages: row.challenge_messages,
        latency_mean_s: row.latency_mean_s,
        events: row.events,
        took_s: started.elapsed().as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn preset(delay_ms: f64, p: f64, cover: f64) -> NetworkSection {
        NetworkSection {
            mean_hop_delay_ms: delay_ms,
            lambda_p_per_s: p,
            lambda_l_per_s: cover,
            lambda_d_per_s: cover,
            lambda_m_per_s: cover,
            ..NetworkSection::default()
        }
    }

    #[test]
    fn defaults_are_simulated_within_budget_and_deterministically() {
        let net = NetworkSection::default();
        let s = scenario(&net).unwrap();
        assert_eq!(s.duration_s, MAX_WINDOW_S);
        assert!(
            s.estimated_events() <= EVENT_BUDGET,
            "{}",
            s.estimated_events()
        );
        let PredictionState::Done(a) = predict(&net) else {
            panic!("not simulated")
        };
        // docs/THREAT_MODEL.md: the defaults sit on the floor, ε ≈ 0.5.
        assert!(a.epsilon > 0.2 && a.epsilon < 1.0, "ε = {}", a.epsilon);
        assert!((a.latency_analytic_s - 2.0).abs() < 1e-9);
        assert!((a.latency_mean_s - 2.0).abs() < 0.3, "{}", a.latency_mean_s);
        assert!(a.challenge_messages > 100);
        let PredictionState::Done(b) = predict(&net) else {
            panic!("not simulated")
        };
        assert_eq!((a.epsilon, a.events), (b.epsilon, b.events));
    }

    #[test]
    fn fast_presets_get_a_shorter_window_not_more_work() {
        // localnet's `speed` preset: 20 ms per hop, λ_P 50/s.
        let s = scenario(&preset(20.0, 50.0, 2.0)).unwrap();
        assert!(s.duration_s < MAX_WINDOW_S && s.duration_s >= MIN_WINDOW_S);
        assert!(s.estimated_events() <= EVENT_BUDGET * 1.01);
    }

    #[test]
    fn what_cannot_be_simulated_says_why() {
        let zero = preset(0.0, 2.0, 1.0);
        assert!(
            matches!(predict(&zero), PredictionState::NotSimulated(w) if w.contains("refuses"))
        );
        let huge = preset(500.0, 100_000.0, 1.0);
        assert!(
            matches!(predict(&huge), PredictionState::NotSimulated(w) if w.contains("loopmix-sim"))
        );
    }
}
