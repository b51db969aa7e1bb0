//! The anonymity simulator (`loopmix-sim`): a deterministic discrete-event
//! simulation, in virtual time, of a whole Loopix network driven by the
//! sans-IO core the real nodes and clients run. See `docs/SIMULATIONS.md`.
//!
//! * [`scenario`]: the parameters, from TOML and flags, validated up front.
//! * [`engine`]: one repetition in virtual time.
//! * [`stats`], [`report`]: Gamma/KS, per-repetition rows, aggregates,
//!   CSV and the text summary.
//! * [`sweep`]: one parameter varied; presets for Loopix Fig. 5 and 6.
//! * [`frontier`]: a grid of rates and delays, the privacy / latency /
//!   bandwidth frontier, and a recommendation for a budget
//!   (`loopmix-sim frontier`).
//! * [`plot`]: SVG charts.
//! * [`liveness`]: the liveness estimator's thresholds, and what an
//!   adversary who gets honest mixes listed down gains (`loopmix-sim liveness`).
//!
//! [`simulate`] and [`run_sweep`] return every output file in memory, so
//! the binary writes them and the tests compare them byte for byte.

pub mod engine;
pub mod frontier;
pub mod liveness;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod sweep;

use std::path::Path;

use report::{Aggregate, NODES_CSV_HEADER, RunRow, latency_histogram, nodes_csv};
use scenario::{Scenario, ScenarioError};
use sweep::{PointSummary, Sweep};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a simulation produced: files (name, contents) and the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub files: Vec<(String, String)>,
    pub summary: String,
    /// Scheduler events processed (for the events/s figure).
    pub events: u64,
}

impl Output {
    /// Writes every file into `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> Result<(), SimError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| SimError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (name, contents) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// Progress callback: overall fraction done, 0..=1.
pub type Progress<'a> = &'a mut dyn FnMut(f64);

/// Latency samples kept across repetitions for the aggregate KS test.
const AGGREGATE_LATENCY_SAMPLES: usize = 200_000;

/// Runs every repetition of `s` and renders the outputs: `scenario.toml`,
/// `runs.csv` (one row per repetition), `nodes.csv` (per node and
/// repetition), `latency.csv` and `latency.svg`, `summary.txt`.
pub fn simulate(s: &Scenario, progress: Progress<'_>) -> Result<Output, SimError> {
    s.validate()?;
    let reps = s.repetitions;
    let mut rows = Vec::with_capacity(reps as usize);
    let mut nodes = String::from(NODES_CSV_HEADER);
    nodes.push('\n');
    let mut latency = Vec::new();
    let per_rep_cap = AGGREGATE_LATENCY_SAMPLES / reps.max(1) as usize;
    for rep in 0..reps {
        let mut inner = |f: f64| progress((rep as f64 + f) / reps as f64);
        let r = engine::run(s, rep, &mut inner)?;
        rows.push(RunRow::new(s, &r));
        nodes_csv(s, &r, &mut nodes);
        latency.extend(r.latency.sample.iter().take(per_rep_cap.max(1)));
    }
    let agg = Aggregate::new(s, &rows, &latency);
    let summary = report::summary(s, &agg);

    let mut runs = String::from(RunRow::CSV_HEADER);
    runs.push('\n');
    for r in &rows {
        runs.push_str(&r.csv());
        runs.push('\n');
    }
    let bins = latency_histogram(s, &latency, 60);
    let mut lat = String::from("bin_start_s,bin_end_s,count,density,gamma_density\n");
    for b in &bins {
        lat.push_str(&format!("{},{},{},{},{}\n", b.0, b.1, b.2, b.3, b.4));
    }
    let k = s.delayed_hops();
    let svg = plot::latency_svg(
        &format!(
            "End-to-end latency, {} delayed hops, mu = {} (n = {})",
            k,
            s.mu,
            latency.len()
        ),
        k,
        s.mu,
        &bins,
    )?;
    Ok(Output {
        files: vec![
            ("scenario.toml".into(), s.to_toml()),
            ("runs.csv".into(), runs),
            ("nodes.csv".into(), nodes),
            ("latency.csv".into(), lat),
            ("latency.svg".into(), svg),
            ("summary.txt".into(), summary.clone()),
        ],
        summary,
        events: agg.events,
    })
}

/// Runs a sweep (every point validated first) and renders `NAME.csv` (one
/// row per point and repetition), `NAME_points.csv` (aggregates per point),
/// `NAME.svg` and `NAME.txt`.
pub fn run_sweep(sw: &Sweep, progress: Progress<'_>) -> Result<Output, SimError> {
    let scenarios = sw.points()?;
    let total: u64 = scenarios.iter().map(|s| u64::from(s.repetitions)).sum();
    let mut done = 0u64;
    let mut all = format!("param,value,{}\n", RunRow::CSV_HEADER);
    let mut points = Vec::with_capacity(scenarios.len());
    let mut events = 0;
    for (s, &value) in scenarios.iter().zip(&sw.values) {
        let mut rows = Vec::with_capacity(s.repetitions as usize);
        for rep in 0..s.repetitions {
            let mut inner = |f: f64| progress((done as f64 + f) / total.max(1) as f64);
            let r = engine::run(s, rep, &mut inner)?;
            done += 1;
            let row = RunRow::new(s, &r);
            events += row.events;
            all.push_str(&format!("{},{},{}\n", sw.param.name(), value, row.csv()));
            rows.push(row);
        }
        points.push(PointSummary::new(value, s.clone(), &rows));
    }
    let mut pts = format!("{}\n", PointSummary::CSV_HEADER);
    for p in &points {
        pts.push_str(&p.csv(sw.param));
        pts.push('\n');
    }
    let chart: Vec<plot::SweepPoint> = points
        .iter()
        .map(|p| plot::SweepPoint {
            x: p.value,
            epsilon: p.epsilon.mean,
            epsilon_sd: p.epsilon.sd,
            delta: p.delta.mean,
            delta_sd: p.delta.sd,
        })
        .collect();
    let svg = plot::sweep_svg(&sw.caption(), sw.param.axis_label(), &chart)?;
    let summary = sweep::summary(sw, &points);
    Ok(Output {
        files: vec![
            (format!("{}.csv", sw.name), all),
            (format!("{}_points.csv", sw.name), pts),
            (format!("{}.svg", sw.name), svg),
            (format!("{}.txt", sw.name), summary.clone()),
        ],
        summary,
        events,
    })
}
