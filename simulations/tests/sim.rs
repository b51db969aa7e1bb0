//! The simulator against theory and the Loopix paper: M/M/∞ pool sizes,
//! Gamma latency, Eq. 5 against brute force, determinism, and the direction
//! of ε when delays or corruption change. Sized to run in a few seconds in
//! the debug profile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use loopmix_core::mixing::delay_queue::DelayQueue;
use loopmix_core::mixing::entropy::MixEntropy;
use loopmix_core::poisson::{PoissonTicker, mean_gap, sample_exp_duration};
use loopmix_sim::sim::engine::{self, SimTime};
use loopmix_sim::sim::report::{RunRow, approx_entropy_bits};
use loopmix_sim::sim::scenario::Scenario;
use loopmix_sim::sim::stats::{erlang_cdf, ks_test, mean_sd};
use loopmix_sim::sim::sweep::{Param, Sweep, loopix_base};
use loopmix_sim::sim::{run_sweep, simulate};
use rand::SeedableRng;

fn small() -> Scenario {
    Scenario {
        clients: 200,
        layers: 2,
        mixes_per_layer: 2,
        providers: 2,
        lambda_p: 1.0,
        lambda_l: 0.5,
        lambda_d: 0.5,
        lambda_m: 0.5,
        mu: 4.0,
        real_fraction: 0.5,
        corrupt_fraction: 0.0,
        corrupt_spread: false,
        excluded_honest: 0,
        duration_s: 200.0,
        burn_in_s: 10.0,
        repetitions: 1,
        seed: 7,
    }
}

fn no_progress() -> impl FnMut(f64) {
    |_| {}
}

#[test]
fn pool_size_is_lambda_over_mu() {
    let s = small();
    let r = engine::run(&s, 0, &mut no_progress()).unwrap();
    // Time average of an M/M/∞ occupancy: variance ≈ 2ρ/(μT).
    let rho = s.predicted_pool();
    let se = (2.0 * rho / (s.mu * s.duration_s)).sqrt();
    for m in r.mixes() {
        let from_measured_rate = m.arrival_rate / s.mu;
        assert!(
            (m.mean_pool - from_measured_rate).abs() < 5.0 * se,
            "mix {}: pool {} vs measured λ/μ {} (se {se})",
            m.index,
            m.mean_pool,
            from_measured_rate
        );
        assert!(
            (m.mean_pool - rho).abs() < 5.0 * se + 5.0 * (rho / s.duration_s / s.mu).sqrt(),
            "mix {}: pool {} vs predicted {rho}",
            m.index,
            m.mean_pool
        );
        // Eq. 5's steady state sits near log2(e·λ/μ).
        let h = approx_entropy_bits(rho);
        assert!(
            (m.mean_entropy_bits - h).abs() < 0.03 * h,
            "mix {}: H {} vs ≈{h}",
            m.index,
            m.mean_entropy_bits
        );
    }
}

#[test]
fn latency_is_gamma_k_mu() {
    // 6: beyond what Sphinx routes carry, simulation only; same law.
    for layers in [1u8, 2, 3, 6] {
        let s = Scenario {
            layers,
            mu: 10.0,
            duration_s: 60.0,
            ..small()
        };
        let r = engine::run(&s, 0, &mut no_progress()).unwrap();
        let k = s.delayed_hops();
        assert_eq!(k, u32::from(layers) + 1);
        assert!(r.latency.sample.len() > 5000);
        let ks = ks_test(&r.latency.sample, |x| erlang_cdf(k, s.mu, x));
        assert!(ks.p_value > 1e-3, "L={layers}: {ks:?}");
        // The test has power: one hop too few or too many is rejected.
        let wrong = ks_test(&r.latency.sample, |x| erlang_cdf(k + 1, s.mu, x));
        assert!(wrong.p_value < 1e-6, "L={layers}: {wrong:?}");
        let mean = r.latency.mean();
        assert!(
            (mean - k as f64 / s.mu).abs() < 0.02 * k as f64 / s.mu,
            "{mean}"
        );
    }
}

/// Exact posterior of "which input left at departure t" by enumerating
/// every history (each pooled packet equally likely to leave), merging
/// identical pool states: an independent check of the Eq. 5 recursion.
fn brute_force_entropies(events: &[bool]) -> Vec<f64> {
    let mut states: BTreeMap<Vec<u32>, f64> = BTreeMap::new();
    states.insert(Vec::new(), 1.0);
    let mut next_input = 0u32;
    let mut out = Vec::new();
    for &arrival in events {
        if arrival {
            states = states
                .into_iter()
                .map(|(mut pool, p)| {
                    pool.push(next_input);
                    (pool, p)
                })
                .collect();
            next_input += 1;
            continue;
        }
        let mut output: BTreeMap<u32, f64> = BTreeMap::new();
        let mut after: BTreeMap<Vec<u32>, f64> = BTreeMap::new();
        for (pool, p) in states {
            let n = pool.len() as f64;
            for i in 0..pool.len() {
                *output.entry(pool[i]).or_default() += p / n;
                let mut rest = pool.clone();
                rest.remove(i);
                *after.entry(rest).or_default() += p / n;
            }
        }
        states = after;
        out.push(
            output
                .values()
                .filter(|&&q| q > 0.0)
                .map(|&q| -q * q.log2())
                .sum(),
        );
    }
    out
}

#[test]
fn eq5_entropy_of_one_mix_matches_brute_force() {
    // One Poisson mix driven by the core's ticker and delay queue in virtual
    // time, exactly as the engine drives each mix; small λ/μ keeps the
    // enumeration small.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (lambda, mu) = (1.0, 0.8);
    let mean_delay = mean_gap(mu).unwrap();
    let mut arrivals = PoissonTicker::new(&mut rng, lambda, SimTime(0));
    let mut pool: DelayQueue<SimTime, ()> = DelayQueue::new(usize::MAX);
    let mut estimator: MixEntropy<SimTime> = MixEntropy::new();
    let (mut events, mut eq5) = (Vec::new(), Vec::new());
    while events.len() < 48 {
        let next_arrival = arrivals.next_deadline().unwrap();
        match pool.next_deadline() {
            Some(d) if d <= next_arrival => {
                pool.pop_due(d).unwrap();
                eq5.push(estimator.depart(d));
                events.push(false);
            }
            _ => {
                let now = arrivals.poll(&mut rng, next_arrival).unwrap();
                pool.push(now + sample_exp_duration(&mut rng, mean_delay), ())
                    .unwrap();
                estimator.arrive(now);
                events.push(true);
            }
        }
    }
    let brute = brute_force_entropies(&events);
    assert_eq!(brute.len(), eq5.len());
    assert!(eq5.iter().any(|&h| h > 1.0), "case too trivial: {eq5:?}");
    for (t, (a, b)) in eq5.iter().zip(&brute).enumerate() {
        assert!(
            (a - b).abs() < 1e-9,
            "departure {t}: Eq. 5 {a} vs brute force {b}"
        );
    }
}

#[test]
fn same_seed_gives_identical_output() {
    let s = Scenario {
        repetitions: 2,
        duration_s: 30.0,
        corrupt_fraction: 0.25,
        ..small()
    };
    let a = simulate(&s, &mut no_progress()).unwrap();
    let b = simulate(&s, &mut no_progress()).unwrap();
    assert_eq!(a, b);
    assert!(
        a.files
            .iter()
            .any(|(n, c)| n == "latency.svg" && c.contains("<svg"))
    );
    let dir = tempfile::tempdir().unwrap();
    a.write_to(dir.path()).unwrap();
    for (name, contents) in &b.files {
        assert_eq!(
            &std::fs::read_to_string(dir.path().join(name)).unwrap(),
            contents
        );
    }
    let c = simulate(&Scenario { seed: 8, ..s }, &mut no_progress()).unwrap();
    assert_ne!(
        a.files[1], c.files[1],
        "a different seed must change runs.csv"
    );
}

/// Mean ε and δ per point of a quick Loopix-style sweep.
fn sweep(param: Param, values: &[f64], base: Scenario) -> Vec<(f64, f64)> {
    let sw = Sweep {
        name: "t".into(),
        title: "t".into(),
        param,
        values: values.to_vec(),
        base,
    };
    let out = run_sweep(&sw, &mut no_progress()).unwrap();
    let (_, csv) = out.files.iter().find(|(n, _)| n == "t.csv").unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (eps, delta) = (col("epsilon_mean"), col("delta"));
    values
        .iter()
        .map(|v| {
            let rows: Vec<Vec<f64>> = csv
                .lines()
                .skip(1)
                .map(|l| {
                    l.split(',')
                        .skip(1)
                        .map(|x| x.parse().unwrap_or(f64::NAN))
                        .collect()
                })
                .filter(|r: &Vec<f64>| r[0] == *v)
                .collect();
            let e = mean_sd(rows.iter().map(|r| r[eps - 1])).0;
            let d = mean_sd(rows.iter().map(|r| r[delta - 1])).0;
            (e, d)
        })
        .collect()
}

fn quick_loopix() -> Scenario {
    Scenario {
        repetitions: 6,
        burn_in_s: 30.0,
        duration_s: 60.0,
        ..loopix_base()
    }
}

#[test]
fn epsilon_falls_as_delays_grow() {
    // μ falls → mean delay 1/μ and λ/μ grow → ε falls (Loopix Fig. 5).
    let pts = sweep(Param::Mu, &[2.0, 1.0, 0.4], quick_loopix());
    assert!(pts[0].0 < 1.2, "ε at λ/μ = 1 should be below ~1: {pts:?}");
    assert!(
        pts[0].0 > pts[1].0 && pts[1].0 > pts[2].0,
        "ε must fall as μ falls: {pts:?}"
    );
}

#[test]
fn epsilon_rises_with_corruption() {
    // 0, 3 and 6 of the 9 mixes corrupt.
    let pts = sweep(
        Param::CorruptFraction,
        &[0.0, 1.0 / 3.0, 2.0 / 3.0],
        quick_loopix(),
    );
    assert!(
        pts[0].0 < pts[1].0 && pts[1].0 < pts[2].0,
        "ε must rise with corruption: {pts:?}"
    );
    assert!(
        pts[0].1 <= pts[1].1 && pts[1].1 < pts[2].1,
        "δ must rise with corruption: {pts:?}"
    );
}

#[test]
fn one_layer_is_much_weaker_than_three() {
    let pts = sweep(Param::Layers, &[1.0, 3.0], quick_loopix());
    assert!(pts[0].0 > 2.0 * pts[1].0, "Loopix Fig. 6 shape: {pts:?}");
}

#[test]
fn rows_report_cover_overhead() {
    let s = Scenario {
        duration_s: 30.0,
        ..small()
    };
    let r = engine::run(&s, 0, &mut no_progress()).unwrap();
    let row = RunRow::new(&s, &r);
    // Per client: λ_P·(1 − real) + λ_L + λ_D cover per λ_P·real real, plus mix loops.
    let clients = f64::from(s.clients);
    let expected =
        (clients * (0.5 + 0.5 + 0.5) + f64::from(s.mixes()) * s.lambda_m) / (clients * 0.5);
    let got = row.traffic.cover_per_real();
    assert!(
        (got - expected).abs() < 0.05 * expected,
        "{got} vs {expected}"
    );
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loopmix-sim"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (vec!["run", "--layers", "9"], "`layers`"),
        (vec!["run", "--mu", "0"], "`mu`"),
        (vec!["run", "--lambda-p", "0"], "`lambda_p`"),
        (vec!["run", "--duration-s", "-5"], "`duration_s`"),
        (
            vec!["run", "--corrupt-fraction", "1.5"],
            "`corrupt_fraction`",
        ),
        (
            vec!["sweep", "--param", "layers", "--values", "1,9"],
            "`layers`",
        ),
        (vec!["sweep", "--preset", "fig9"], "`preset`"),
    ] {
        let mut a = args.clone();
        a.extend(["--out", o]);
        let (code, err) = cli(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} started work");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mu = \"fast\"\n").unwrap();
    let (code, err) = cli(&["run", "--scenario", bad.to_str().unwrap(), "--out", o]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("mu"), "{err}");
    std::fs::write(&bad, "layers = 3\nlamda_p = 2.0\n").unwrap();
    let (code, err) = cli(&["run", "--scenario", bad.to_str().unwrap(), "--out", o]);
    assert_eq!(code, 2);
    assert!(err.contains("lamda_p"), "{err}");
    let _ = Duration::ZERO;
}

#[test]
fn liveness_estimator_study_finds_the_dead_mix_deterministically() {
    use loopmix_core::liveness::Blame;
    use loopmix_sim::sim::liveness::{EstimatorStudy, ProbeStream};
    let st = EstimatorStudy {
        observers: 3,
        duration_s: 300.0,
        dead_from_s: 100.0,
        dead_until_s: 200.0,
        shapes: vec![(3, 2)],
        streams: vec![ProbeStream {
            name: "acks".into(),
            rate_per_s: 10.0,
        }],
        losses: vec![0.0, 0.05],
        ks: vec![4.0, 16.0],
        rules: vec![Blame::Split],
        ..EstimatorStudy::default()
    };
    let a = st.run(&mut no_progress()).unwrap();
    assert_eq!(a, st.run(&mut no_progress()).unwrap());
    assert_eq!(a.len(), 4);
    for r in &a {
        assert_eq!(r.detected, 3, "{r:?}");
        assert_eq!(r.fp_pairs, 0, "{r:?}");
        // One loop timeout (5.6 s) plus a few probes through the dead mix.
        assert!(r.detect_median_s > 5.0 && r.detect_median_s < 15.0, "{r:?}");
        assert_eq!(r.not_cleared, 0, "{r:?}");
    }
}

#[test]
fn excluding_the_only_honest_mix_of_each_layer_links_every_route() {
    let base = Scenario {
        layers: 3,
        mixes_per_layer: 2,
        corrupt_fraction: 0.5,
        corrupt_spread: true,
        duration_s: 30.0,
        ..small()
    };
    let r0 = engine::run(&base, 0, &mut no_progress()).unwrap();
    assert!(r0.exposure.routes > 0);
    assert!(r0.exposure.all_share() < 0.3, "{:?}", r0.exposure);
    assert!(r0.exclusions.iter().all(|e| e.excluded == 0));
    let s1 = Scenario {
        excluded_honest: 1,
        ..base.clone()
    };
    let r1 = engine::run(&s1, 0, &mut no_progress()).unwrap();
    assert!(r1.exclusions.iter().all(|e| e.excluded == 1 && !e.fallback));
    assert_eq!(r1.exposure.all_corrupt, r1.exposure.routes);
    assert_eq!(r1.unlinkability.delta(), 1.0);
    // Over the cap a layer is routed uniformly again.
    let s = Scenario {
        mixes_per_layer: 4,
        corrupt_fraction: 0.25,
        excluded_honest: 3,
        ..base
    };
    s.validate().unwrap();
    let r = engine::run(&s, 0, &mut no_progress()).unwrap();
    assert!(r.exclusions.iter().all(|e| e.fallback && e.excluded == 0));
}
