//! The privacy / latency / bandwidth frontier (`loopmix-sim frontier`): a
//! grid of parameter sets for one network, each simulated, and the sets no
//! other set beats on every count.
//!
//! A point of the grid is (μ, λ_P, cover, λ_M), where cover sets the client
//! cover rates relative to the payload rate, λ_L = λ_D = cover × λ_P (the
//! shape of the directory's defaults, 2 : 1 : 1). Every point is judged on
//! three numbers, each to be minimised:
//!
//! * **ε**, the mean per-message unlinkability of the challenge senders
//!   (as `run` reports it), with δ, the share of messages fully linked,
//!   alongside;
//! * **latency**: the median (and p95) end-to-end time of real messages
//!   through the delayed hops. This is the mixing part only; what the real
//!   network adds (pull interval, slot waits, processing) is not simulated;
//! * **bandwidth**: what every client sends whether or not it has data,
//!   (λ_P + λ_L + λ_D) × packet bytes per second.
//!
//! A point is on the frontier when no other point is at least as good on
//! all three and better on one (values within 5% count as equal: ε and
//! latency are measured, with sampling noise). Given a target ε and a latency and/or
//! bandwidth budget, the recommendation is the frontier point within them
//! that is cheapest on what the budget leaves free (see [`recommend`]).
//! Every point uses the base scenario's seed, so points differ only in
//! their parameters (common random numbers), and the output is
//! byte-identical for the same inputs.

use std::fmt::Write as _;

use super::report::RunRow;
use super::scenario::{Scenario, ScenarioError};
use super::stats::{mean_sd, quantile};
use super::{Output, Progress, SimError, engine, plot};

/// Sphinx header bytes of a packet (the payload is the network's
/// `payload_size`).
pub const SPHINX_HEADER_BYTES: usize = 348;

/// Relative difference below which two measured costs count as equal
/// (see [`Point::dominates`]).
pub const TOLERANCE: f64 = 0.05;

/// The values tried for each parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub mu: Vec<f64>,
    pub lambda_p: Vec<f64>,
    /// λ_L and λ_D as a multiple of λ_P.
    pub cover: Vec<f64>,
    pub lambda_m: Vec<f64>,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            mu: vec![1.0, 2.0, 5.0, 10.0, 20.0],
            lambda_p: vec![1.0, 2.0, 5.0, 10.0, 20.0],
            cover: vec![0.25, 0.5, 1.0],
            lambda_m: vec![1.0],
        }
    }
}

impl Grid {
    /// Points in the grid (what the search costs).
    pub fn len(&self) -> usize {
        self.mu.len() * self.lambda_p.len() * self.cover.len() * self.lambda_m.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the recommendation must meet; `None` = no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    pub target_epsilon: Option<f64>,
    /// On the p95 latency, seconds.
    pub max_latency_s: Option<f64>,
    /// Bytes per second per client.
    pub max_bandwidth: Option<f64>,
}

/// A frontier search: the network (everything in `base` except the
/// searched rates), the grid and the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Frontier {
    pub base: Scenario,
    pub grid: Grid,
    /// Sphinx payload bytes; a packet is [`SPHINX_HEADER_BYTES`] more.
    pub payload_size: usize,
    pub budget: Budget,
}

/// One simulated parameter set.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub mu: f64,
    pub lambda_p: f64,
    pub lambda_l: f64,
    pub lambda_d: f64,
    pub lambda_m: f64,
    /// Mean over repetitions of the per-message mean ε (NaN: no challenge
    /// message was measured, i.e. the window is too short for this point).
    pub epsilon: f64,
    pub delta: f64,
    pub latency_median_s: f64,
    pub latency_p95_s: f64,
    /// Bytes per second every client sends.
    pub bandwidth: f64,
    pub on_frontier: bool,
}

impl Point {
    /// The three costs, NaN as the worst value so an unmeasured point never
    /// dominates.
    fn costs(&self) -> [f64; 3] {
        let worst = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
        [
            worst(self.epsilon),
            worst(self.latency_median_s),
            worst(self.bandwidth),
        ]
    }

    /// At least as good on every count and clearly better on one, where
    /// values within [`TOLERANCE`] of each other count as equal: measured ε
    /// and latency carry sampling noise, and a point must not leave the
    /// frontier because of the third digit of a median.
    fn dominates(&self, other: &Point) -> bool {
        let (a, b) = (self.costs(), other.costs());
        let as_good = |x: f64, y: f64| x <= y * (1.0 + TOLERANCE) || x == y;
        let better = |x: f64, y: f64| x < y * (1.0 - TOLERANCE);
        a.iter().zip(&b).all(|(x, y)| as_good(*x, *y))
            && a.iter().zip(&b).any(|(x, y)| better(*x, *y))
    }

    const CSV_HEADER: &'static str = "mu,mean_hop_delay_s,lambda_p,lambda_l,lambda_d,lambda_m,\
epsilon,delta,latency_median_s,latency_p95_s,bandwidth_bytes_per_s,on_frontier";

    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            self.mu,
            1.0 / self.mu,
            self.lambda_p,
            self.lambda_l,
            self.lambda_d,
            self.lambda_m,
            self.epsilon,
            self.delta,
            self.latency_median_s,
            self.latency_p95_s,
            self.bandwidth,
            self.on_frontier,
        )
    }
}

impl Frontier {
    fn packet_bytes(&self) -> f64 {
        (SPHINX_HEADER_BYTES + self.payload_size) as f64
    }

    /// Every grid point as a validated scenario, before any work.
    pub fn scenarios(&self) -> Result<Vec<Scenario>, ScenarioError> {
        if self.grid.is_empty() {
            return Err(ScenarioError::OutOfRange {
                name: "grid",
                value: "empty".into(),
                allowed: "at least one value for each of mu, lambda_p, cover, lambda_m".into(),
            });
        }
        let mut out = Vec::with_capacity(self.grid.len());
        for &mu in &self.grid.mu {
            for &lambda_p in &self.grid.lambda_p {
                for &cover in &self.grid.cover {
                    for &lambda_m in &self.grid.lambda_m {
                        let s = Scenario {
                            mu,
                            lambda_p,
                            lambda_l: cover * lambda_p,
                            lambda_d: cover * lambda_p,
                            lambda_m,
                            ..self.base.clone()
                        };
                        s.validate()?;
                        out.push(s);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Marks the points no other point dominates.
pub fn mark_frontier(points: &mut [Point]) {
    let on: Vec<bool> = points
        .iter()
        .map(|p| !points.iter().any(|q| q.dominates(p)))
        .collect();
    for (p, on) in points.iter_mut().zip(on) {
        p.on_frontier = on;
    }
}

/// The frontier point that meets `budget` (ε ≤ target, p95 latency and
/// bandwidth within their limits) and is cheapest on what the budget
/// leaves free: with only a latency limit, the least bandwidth; otherwise
/// the lowest median latency; ties go to the lower ε. `None` if no point
/// meets it.
pub fn recommend(points: &[Point], budget: &Budget) -> Option<usize> {
    let meets = |p: &Point| {
        p.on_frontier
            && budget.target_epsilon.is_none_or(|t| p.epsilon <= t)
            && budget.max_latency_s.is_none_or(|t| p.latency_p95_s <= t)
            && budget.max_bandwidth.is_none_or(|t| p.bandwidth <= t)
    };
    let by_bandwidth = budget.max_latency_s.is_some() && budget.max_bandwidth.is_none();
    let key = |p: &Point| {
        let c = p.costs();
        if by_bandwidth {
            (c[2], c[0])
        } else {
            (c[1], c[0])
        }
    };
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| meets(p))
        .min_by(|(_, a), (_, b)| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i)
}

/// Simulates every point and renders `frontier.csv` (every point, with
/// `on_frontier`), `frontier.svg` (ε against median latency) and
/// `frontier.txt` (the one-screen summary).
pub fn run_frontier(f: &Frontier, progress: Progress<'_>) -> Result<Output, SimError> {
    let scenarios = f.scenarios()?;
    let total: u64 = scenarios.iter().map(|s| u64::from(s.repetitions)).sum();
    let mut done = 0u64;
    let mut events = 0;
    let mut points = Vec::with_capacity(scenarios.len());
    for s in &scenarios {
        let mut rows = Vec::with_capacity(s.repetitions as usize);
        let mut latency = Vec::new();
        for rep in 0..s.repetitions {
            let mut inner = |x: f64| progress((done as f64 + x) / total.max(1) as f64);
            let r = engine::run(s, rep, &mut inner)?;
            done += 1;
            events += r.events;
            latency.extend_from_slice(&r.latency.sample);
            rows.push(RunRow::new(s, &r));
        }
        let (epsilon, _, _) = mean_sd(rows.iter().map(|r| r.epsilon_mean));
        let (delta, _, _) = mean_sd(rows.iter().map(|r| r.delta));
        points.push(Point {
            mu: s.mu,
            lambda_p: s.lambda_p,
            lambda_l: s.lambda_l,
            lambda_d: s.lambda_d,
            lambda_m: s.lambda_m,
            epsilon,
            delta,
            latency_median_s: quantile(&latency, 0.5),
            latency_p95_s: quantile(&latency, 0.95),
            bandwidth: (s.lambda_p + s.lambda_l + s.lambda_d) * f.packet_bytes(),
            on_frontier: false,
        });
    }
    mark_frontier(&mut points);
    let pick = recommend(&points, &f.budget);

    let mut csv = format!("{}\n", Point::CSV_HEADER);
    for p in &points {
        csv.push_str(&p.csv());
        csv.push('\n');
    }
    let chart: Vec<plot::FrontierPoint> = points
        .iter()
        .filter(|p| p.epsilon.is_finite() && p.latency_median_s.is_finite())
        .map(|p| plot::FrontierPoint {
            latency_s: p.latency_median_s,
            epsilon: p.epsilon,
            on_frontier: p.on_frontier,
        })
        .collect();
    let svg = plot::frontier_svg(
        &format!(
            "Frontier: {} clients, {} layer(s) x {} mixes, {} points",
            f.base.clients,
            f.base.layers,
            f.base.mixes_per_layer,
            points.len()
        ),
        &chart,
    )?;
    let summary = summary(f, &points, pick);
    Ok(Output {
        files: vec![
            ("frontier.csv".into(), csv),
            ("frontier.svg".into(), svg),
            ("frontier.txt".into(), summary.clone()),
        ],
        summary,
        events,
    })
}

/// Frontier rows the summary shows per hop delay.
const PER_DELAY: usize = 4;

/// The frontier, grouped by μ (shortest delay first), each group sorted by
/// bandwidth and thinned to [`PER_DELAY`] rows spread evenly over it (its
/// cheapest and its most private always included), so the summary fits
/// one screen however large the grid.
fn summary_rows(points: &[Point]) -> Vec<&Point> {
    let mut mus: Vec<f64> = points
        .iter()
        .filter(|p| p.on_frontier)
        .map(|p| p.mu)
        .collect();
    mus.sort_by(|a, b| b.total_cmp(a));
    mus.dedup();
    let mut out = Vec::new();
    for mu in mus {
        let mut group: Vec<&Point> = points
            .iter()
            .filter(|p| p.on_frontier && p.mu == mu)
            .collect();
        group.sort_by(|a, b| a.bandwidth.total_cmp(&b.bandwidth));
        let n = group.len();
        if n <= PER_DELAY {
            out.extend(group);
        } else {
            let mut picks: Vec<usize> = (0..PER_DELAY)
                .map(|i| i * (n - 1) / (PER_DELAY - 1))
                .collect();
            picks.dedup();
            out.extend(picks.into_iter().map(|i| group[i]));
        }
    }
    out
}

fn row(p: &Point) -> String {
    format!(
        "{:>7.0} {:>6.1} {:>6.2} {:>6.2} {:>6.2} {:>7.3} {:>6.3} {:>7.2} {:>7.2} {:>8.1}",
        1000.0 / p.mu,
        p.lambda_p,
        p.lambda_l,
        p.lambda_d,
        p.lambda_m,
        p.epsilon,
        p.delta,
        p.latency_median_s,
        p.latency_p95_s,
        p.bandwidth / 1000.0,
    )
}

/// The one-screen summary: the network, the frontier sorted by latency,
/// and the recommendation.
pub fn summary(f: &Frontier, points: &[Point], pick: Option<usize>) -> String {
    let b = &f.base;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "loopmix-sim frontier: {} clients, {} layer(s) x {} mixes, {} provider(s); {} points \
         ({} mu x {} lambda_P x {} cover x {} lambda_M)",
        b.clients,
        b.layers,
        b.mixes_per_layer,
        b.providers,
        points.len(),
        f.grid.mu.len(),
        f.grid.lambda_p.len(),
        f.grid.cover.len(),
        f.grid.lambda_m.len(),
    );
    let _ = writeln!(
        s,
        "window {} s after {} s burn-in; {} repetition(s); seed {}; packet {} B; latency is the \
         mixing part only (delayed hops)",
        b.duration_s,
        b.burn_in_s,
        b.repetitions,
        b.seed,
        SPHINX_HEADER_BYTES + f.payload_size
    );
    let on = points.iter().filter(|p| p.on_frontier).count();
    let _ = writeln!(
        s,
        "\non the frontier: {on} of {} (all in frontier.csv); for each hop delay, up to {PER_DELAY} \
         of them from the least bandwidth to the lowest epsilon:",
        points.len()
    );
    let header = "hop ms    l_P    l_L    l_D    l_M     eps  delta  p50 s   p95 s   KB/s";
    let _ = writeln!(s, "  {header}");
    for p in summary_rows(points) {
        let _ = writeln!(s, "  {}", row(p));
    }
    let budget = &f.budget;
    let asked = [
        budget.target_epsilon.map(|t| format!("epsilon <= {t}")),
        budget
            .max_latency_s
            .map(|t| format!("p95 latency <= {t} s")),
        budget
            .max_bandwidth
            .map(|t| format!("bandwidth <= {:.1} KB/s", t / 1000.0)),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    if asked.is_empty() {
        let _ = writeln!(
            s,
            "\nno budget given (--target-epsilon, --max-latency-s, --max-bandwidth-kbps): no \
             recommendation"
        );
    } else {
        match pick.and_then(|i| points.get(i)) {
            Some(p) => {
                let _ = writeln!(s, "\nrecommended for {}:", asked.join(", "));
                let _ = writeln!(s, "  {header}\n  {}", row(p));
                let _ = writeln!(
                    s,
                    "  directory.toml [network]: mean_hop_delay_ms = {}, lambda_p_per_s = {}, \
                     lambda_l_per_s = {}, lambda_d_per_s = {}, lambda_m_per_s = {}",
                    1000.0 / p.mu,
                    p.lambda_p,
                    p.lambda_l,
                    p.lambda_d,
                    p.lambda_m
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "\nno point of the grid meets {}: widen the grid or the budget",
                    asked.join(", ")
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn point(epsilon: f64, latency: f64, bandwidth: f64) -> Point {
        Point {
            mu: 1.0,
            lambda_p: 1.0,
            lambda_l: 0.5,
            lambda_d: 0.5,
            lambda_m: 1.0,
            epsilon,
            delta: 0.0,
            latency_median_s: latency,
            latency_p95_s: latency * 2.0,
            bandwidth,
            on_frontier: false,
        }
    }

    #[test]
    fn the_frontier_keeps_exactly_the_undominated_points() {
        let mut ps = vec![
            point(0.5, 2.0, 1000.0),     // frontier: best epsilon
            point(1.0, 1.0, 1000.0),     // frontier: faster
            point(1.0, 2.0, 1000.0),     // dominated by both above
            point(2.0, 1.0, 500.0),      // frontier: cheapest
            point(f64::NAN, 0.1, 100.0), // unmeasured epsilon: frontier only on other counts
            point(f64::NAN, 0.2, 200.0), // dominated by the one above
        ];
        mark_frontier(&mut ps);
        let on: Vec<bool> = ps.iter().map(|p| p.on_frontier).collect();
        assert_eq!(on, [true, true, false, true, true, false]);
    }

    #[test]
    fn the_recommendation_meets_the_budget_and_spends_least() {
        let mut ps = vec![
            point(0.5, 4.0, 4000.0),
            point(0.8, 2.0, 2000.0),
            point(1.5, 1.0, 1000.0),
            point(0.4, 3.0, 8000.0),
        ];
        mark_frontier(&mut ps);
        // ε ≤ 1 and a bandwidth cap: the fastest point within both.
        let b = Budget {
            target_epsilon: Some(1.0),
            max_bandwidth: Some(5000.0),
            ..Budget::default()
        };
        assert_eq!(recommend(&ps, &b), Some(1));
        // ε ≤ 1 and p95 ≤ 8 s: the least bandwidth within both.
        let b = Budget {
            target_epsilon: Some(1.0),
            max_latency_s: Some(8.0),
            ..Budget::default()
        };
        assert_eq!(recommend(&ps, &b), Some(1));
        // Only ε: the fastest point that reaches it.
        let b = Budget {
            target_epsilon: Some(0.45),
            ..Budget::default()
        };
        assert_eq!(recommend(&ps, &b), Some(3));
        // Out of reach.
        let b = Budget {
            target_epsilon: Some(0.1),
            ..Budget::default()
        };
        assert_eq!(recommend(&ps, &b), None);
    }

    fn small() -> Frontier {
        Frontier {
            base: Scenario {
                clients: 40,
                layers: 2,
                mixes_per_layer: 2,
                providers: 4,
                duration_s: 40.0,
                burn_in_s: 10.0,
                ..Scenario::default()
            },
            grid: Grid {
                mu: vec![2.0, 10.0],
                lambda_p: vec![1.0, 4.0],
                cover: vec![0.5],
                lambda_m: vec![1.0],
            },
            payload_size: 1024,
            budget: Budget {
                target_epsilon: Some(5.0),
                ..Budget::default()
            },
        }
    }

    #[test]
    fn a_search_is_deterministic_and_trades_latency_for_mixing() {
        let f = small();
        let a = run_frontier(&f, &mut |_| {}).unwrap();
        let b = run_frontier(&f, &mut |_| {}).unwrap();
        assert_eq!(a, b, "same inputs, byte-identical outputs");
        let csv = &a.files[0].1;
        assert_eq!(csv.lines().count(), 1 + f.grid.len(), "{csv}");
        // Longer hop delays (mu 2) are slower than short ones (mu 10).
        let lat = |mu: &str| -> f64 {
            csv.lines()
                .skip(1)
                .filter(|l| l.starts_with(&format!("{mu},")))
                .map(|l| l.split(',').nth(8).unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
        };
        assert!(lat("2") > lat("10"), "{csv}");
        assert!(a.summary.contains("on the frontier"), "{}", a.summary);
        assert!(a.files[1].1.starts_with("<svg"), "an SVG chart");
    }

    #[test]
    fn an_empty_grid_is_refused() {
        let mut f = small();
        f.grid.cover.clear();
        assert!(f.scenarios().is_err());
        let mut f = small();
        f.grid.mu = vec![-1.0];
        assert!(f.scenarios().is_err());
    }
}
