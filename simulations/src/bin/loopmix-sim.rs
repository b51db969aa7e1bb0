//! `loopmix-sim`: how much unlinkability a Loopix parameter set buys,
//! measured by a deterministic discrete-event simulation in virtual time over
//! the same sans-IO mixing, cover-traffic and routing code the nodes run.
//! See `docs/SIMULATIONS.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use loopmix_sim::sim::frontier::{Budget, Frontier, Grid, run_frontier};
use loopmix_sim::sim::liveness::{EstimatorStudy, ExclusionStudy, Study, run_liveness};
use loopmix_sim::sim::scenario::Scenario;
use loopmix_sim::sim::sweep::{PRESETS, Param, Sweep, preset};
use loopmix_sim::sim::{Output, SimError, run_sweep, simulate};

#[derive(Parser)]
#[command(
    name = "loopmix-sim",
    version,
    about = "Anonymity simulator for loopmix: per-mix entropy (Loopix Eq. 5), pool size, \
             end-to-end unlinkability epsilon, latency and cover overhead, in virtual time",
    long_about = "Anonymity simulator for loopmix. Simulates U clients, L layers of W mixes and \
the providers in virtual time, with the delay queue, Poisson streams, per-hop delays and route \
choice of loopmix-core (Sphinx itself is abstracted away). The same seed gives byte-identical \
output. Parameters come from defaults, then a preset (sweep only), then --scenario FILE, then \
flags. Times are seconds of virtual time, rates are per second."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads each run uses (0: one per core). The output is the same
    /// for any number: only the wall time changes.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one scenario (all repetitions) and write CSV, SVG and a summary.
    Run {
        #[command(flatten)]
        scenario: ScenarioArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Vary one parameter (or run a preset reproducing a Loopix figure).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["preset", "param"])))]
    Sweep {
        /// A preset sweep: fig5 (epsilon vs mu), fig6 (epsilon vs layers),
        /// corrupt (epsilon vs corrupt fraction), or all three.
        #[arg(long, conflicts_with_all = ["param", "values"])]
        preset: Option<String>,
        /// The parameter to vary (with --values).
        #[arg(long, value_enum, requires = "values")]
        param: Option<Param>,
        /// Comma-separated values of --param, e.g. 0.5,1,2.
        #[arg(
            long,
            value_delimiter = ',',
            allow_negative_numbers = true,
            requires = "param"
        )]
        values: Option<Vec<f64>>,
        /// File stem of the outputs of a --param sweep.
        #[arg(long, default_value = "sweep")]
        name: String,
        #[command(flatten)]
        scenario: ScenarioArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Search a grid of (mu, lambda_P, cover, lambda_M) for one network and
    /// report the frontier of epsilon, latency and client bandwidth: the
    /// parameter sets no other set beats on all three. With a budget
    /// (--target-epsilon and --max-latency-s and/or --max-bandwidth-kbps) it
    /// recommends one. The network comes from the scenario flags (--clients,
    /// --layers, --mixes-per-layer, ...); the window defaults to 300 s.
    Frontier {
        /// mu values to try (per second; mean hop delay 1/mu s).
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20")]
        grid_mu: Vec<f64>,
        /// lambda_P values to try (per second).
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20")]
        grid_lambda_p: Vec<f64>,
        /// Client cover as a multiple of lambda_P: lambda_L = lambda_D = this x lambda_P.
        #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1")]
        grid_cover: Vec<f64>,
        /// lambda_M values to try (per mix, per second).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        grid_lambda_m: Vec<f64>,
        /// Sphinx payload bytes (the network's payload_size); a packet is 348 more.
        #[arg(long, default_value_t = 1024)]
        payload_size: usize,
        /// Recommend only sets whose mean epsilon is at most this.
        #[arg(long)]
        target_epsilon: Option<f64>,
        /// Recommend only sets whose p95 latency (delayed hops) is at most this, seconds.
        #[arg(long)]
        max_latency_s: Option<f64>,
        /// Recommend only sets whose client bandwidth is at most this, KB/s.
        #[arg(long)]
        max_bandwidth_kbps: Option<f64>,
        #[command(flatten)]
        scenario: ScenarioArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Liveness routing: the local estimator's false positives and detection
    /// delay for each threshold K (probes over random routes, lossy links, one
    /// dead mix), and the anonymity cost when an adversary gets k honest mixes
    /// per layer listed down.
    Liveness {
        /// Which study: estimator, exclusion or both.
        #[arg(long, value_enum, default_value = "both")]
        study: Study,
        /// Master seed; the same seed gives byte-identical output.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Estimator study: virtual seconds per observer (the dead mix is
        /// down over its middle third).
        #[arg(long)]
        duration_s: Option<f64>,
        /// Estimator study: independent observers per configuration.
        #[arg(long)]
        observers: Option<u32>,
        /// Exclusion study: measured seconds per repetition.
        #[arg(long)]
        exclusion_duration_s: Option<f64>,
        /// Exclusion study: repetitions per point.
        #[arg(long)]
        repetitions: Option<u32>,
        /// Exclusion study: clients.
        #[arg(long)]
        clients: Option<u32>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Write the default scenario as a commented TOML file.
    Init {
        /// Where to write it.
        #[arg(default_value = "scenario.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct OutArgs {
    /// Directory for the output files (created if missing; files overwritten).
    #[arg(long, default_value = "loopmix-sim-out")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Scenario overrides; each is also a key of the scenario TOML.
#[derive(Args)]
struct ScenarioArgs {
    /// Scenario TOML file (keys as the flags below, with underscores).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// U: number of clients (2..); clients 0 and 1 are the challenge senders.
    #[arg(long)]
    clients: Option<u32>,
    /// L: mix layers, 1..=8; more than 3 is simulation only (a 5-hop Sphinx
    /// route carries the two providers and 3 mixes).
    #[arg(long)]
    layers: Option<u8>,
    /// W: mixes per layer.
    #[arg(long)]
    mixes_per_layer: Option<u32>,
    /// Providers; clients are assigned round-robin.
    #[arg(long)]
    providers: Option<u32>,
    /// λ_P, client payload stream (real message or drop), per second (> 0).
    #[arg(long, allow_negative_numbers = true)]
    lambda_p: Option<f64>,
    /// λ_L, client loop cover, per second (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    lambda_l: Option<f64>,
    /// λ_D, client drop cover, per second (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    lambda_d: Option<f64>,
    /// λ_M, mix loop cover per mix, per second (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    lambda_m: Option<f64>,
    /// μ: each hop delays Exp(μ), mean 1/μ seconds.
    #[arg(long, allow_negative_numbers = true)]
    mu: Option<f64>,
    /// Share of ordinary clients' payload ticks that carry a real message, [0, 1].
    #[arg(long, allow_negative_numbers = true)]
    real_fraction: Option<f64>,
    /// Share of mixes that are corrupt (see through), [0, 1].
    #[arg(long, allow_negative_numbers = true)]
    corrupt_fraction: Option<f64>,
    /// Spread corrupt mixes round-robin over the layers (true/false).
    #[arg(long)]
    corrupt_spread: Option<bool>,
    /// Honest mixes per layer on the network's down list (liveness routing
    /// excludes them, at most half of each layer).
    #[arg(long)]
    excluded_honest: Option<u32>,
    /// Measured virtual time after the burn-in, seconds.
    #[arg(long, allow_negative_numbers = true)]
    duration_s: Option<f64>,
    /// Virtual time simulated before measuring, seconds.
    #[arg(long, allow_negative_numbers = true)]
    burn_in_s: Option<f64>,
    /// Independent repetitions.
    #[arg(long)]
    repetitions: Option<u32>,
    /// Master seed; the same seed gives byte-identical output.
    #[arg(long)]
    seed: Option<u64>,
}

impl ScenarioArgs {
    /// `base`, then the file, then the flags; validated.
    fn resolve(&self, base: Scenario) -> Result<Scenario, SimError> {
        let mut s = match &self.scenario {
            Some(path) => {
                // Keys absent from the file keep the base (preset) values.
                let text = std::fs::read_to_string(path).map_err(|source| {
                    loopmix_sim::sim::scenario::ScenarioError::Read {
                        file: path.display().to_string(),
                        source,
                    }
                })?;
                merge_toml(&base, &text, &path.display().to_string())?
            }
            None => base,
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { s.$f = v; } )*};
        }
        set!(
            clients,
            layers,
            mixes_per_layer,
            providers,
            lambda_p,
            lambda_l,
            lambda_d,
            lambda_m,
            mu,
            real_fraction,
            corrupt_fraction,
            corrupt_spread,
            excluded_honest,
            duration_s,
            burn_in_s,
            repetitions,
            seed
        );
        s.validate()?;
        Ok(s)
    }
}

/// Overlays the keys of a TOML scenario on `base` (strictly: unknown keys
/// and wrong types are errors).
fn merge_toml(base: &Scenario, text: &str, file: &str) -> Result<Scenario, SimError> {
    use loopmix_sim::sim::scenario::ScenarioError;
    let parse = |message: String| ScenarioError::Parse {
        file: file.to_string(),
        message,
    };
    // Validate the file on its own first (unknown keys, types).
    Scenario::from_toml_str(text, file)?;
    let overlay: toml::Table = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
    let mut merged = toml::Table::try_from(base).map_err(|e| parse(e.to_string()))?;
    merged.extend(overlay);
    Ok(merged
        .try_into()
        .map_err(|e: toml::de::Error| parse(e.to_string()))?)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1000);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn execute(
    out: &OutArgs,
    work: impl FnOnce(&mut dyn FnMut(f64)) -> Result<Output, SimError>,
) -> Result<(), SimError> {
    let bar = progress_bar(out.quiet);
    let started = Instant::now();
    let output = work(&mut |f| bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64))?;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    output.write_to(&out.out)?;
    // A closed stdout (`| head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{}", output.summary);
    let _ = writeln!(
        stdout,
        "\nwall time {:.2} s on {} threads; {} events, {:.2} M events/s; files in {}",
        wall,
        loopmix_sim::sim::engine::threads(),
        output.events,
        output.events as f64 / wall.max(1e-9) / 1e6,
        out.out.display()
    );
    Ok(())
}

fn warn_if_long(s: &Scenario) {
    let events = s.estimated_events();
    if events > 5e8 {
        eprintln!(
            "note: about {:.1e} events to simulate (a few million per second on one core)",
            events
        );
    }
}

fn real_main(cli: Cli) -> Result<(), SimError> {
    loopmix_sim::sim::engine::set_threads(cli.threads);
    match cli.command {
        Command::Run { scenario, out } => {
            let s = scenario.resolve(Scenario::default())?;
            warn_if_long(&s);
            execute(&out, |p| simulate(&s, p))
        }
        Command::Sweep {
            preset: name,
            param,
            values,
            name: stem,
            scenario,
            out,
        } => {
            let mut sweeps: Vec<Sweep> = Vec::new();
            match (name.as_deref(), param, values) {
                (Some("all"), _, _) => {
                    sweeps.extend(PRESETS.iter().filter_map(|p| preset(p)));
                }
                (Some(n), _, _) => match preset(n) {
                    Some(sw) => sweeps.push(sw),
                    None => {
                        return Err(loopmix_sim::sim::scenario::ScenarioError::OutOfRange {
                            name: "preset",
                            value: n.to_string(),
                            allowed: format!("one of {}, all", PRESETS.join(", ")),
                        }
                        .into());
                    }
                },
                (None, Some(param), Some(values)) => sweeps.push(Sweep {
                    title: format!("Epsilon vs {}", param.name()),
                    name: stem,
                    param,
                    values,
                    base: Scenario::default(),
                }),
                _ => {
                    return Err(loopmix_sim::sim::scenario::ScenarioError::OutOfRange {
                        name: "sweep",
                        value: "nothing".into(),
                        allowed: "given --preset NAME or --param P --values V1,V2,...".into(),
                    }
                    .into());
                }
            }
            // Resolve and validate every sweep and every point before any work.
            for sw in &mut sweeps {
                sw.base = scenario.resolve(sw.base.clone())?;
                for s in sw.points()? {
                    warn_if_long(&s);
                }
            }
            for sw in &sweeps {
                execute(&out, |p| run_sweep(sw, p))?;
                let _ = writeln!(std::io::stdout());
            }
            Ok(())
        }
        Command::Frontier {
            grid_mu,
            grid_lambda_p,
            grid_cover,
            grid_lambda_m,
            payload_size,
            target_epsilon,
            max_latency_s,
            max_bandwidth_kbps,
            scenario,
            out,
        } => {
            let base = scenario.resolve(Scenario {
                duration_s: 300.0,
                ..Scenario::default()
            })?;
            let f = Frontier {
                base,
                grid: Grid {
                    mu: grid_mu,
                    lambda_p: grid_lambda_p,
                    cover: grid_cover,
                    lambda_m: grid_lambda_m,
                },
                payload_size,
                budget: Budget {
                    target_epsilon,
                    max_latency_s,
                    max_bandwidth: max_bandwidth_kbps.map(|k| k * 1000.0),
                },
            };
            for s in f.scenarios()? {
                warn_if_long(&s);
            }
            execute(&out, |p| run_frontier(&f, p))
        }
        Command::Liveness {
            study,
            seed,
            duration_s,
            observers,
            exclusion_duration_s,
            repetitions,
            clients,
            out,
        } => {
            let mut est = EstimatorStudy {
                seed,
                ..EstimatorStudy::default()
            };
            if let Some(d) = duration_s {
                if !(d.is_finite() && d > 0.0 && d <= 1.0e7) {
                    return Err(loopmix_sim::sim::scenario::ScenarioError::OutOfRange {
                        name: "duration_s",
                        value: d.to_string(),
                        allowed: "seconds in (0, 1e7]".into(),
                    }
                    .into());
                }
                est.duration_s = d;
                est.dead_from_s = d / 3.0;
                est.dead_until_s = 2.0 * d / 3.0;
            }
            if let Some(o) = observers {
                est.observers = o.max(1);
            }
            let mut excl = ExclusionStudy::default();
            excl.base.seed = seed;
            if let Some(d) = exclusion_duration_s {
                excl.base.duration_s = d;
            }
            if let Some(r) = repetitions {
                excl.base.repetitions = r;
            }
            if let Some(c) = clients {
                excl.base.clients = c;
            }
            excl.points()?;
            execute(&out, |p| run_liveness(study, &est, &excl, p))
        }
        Command::Init { path, force } => {
            if path.exists() && !force {
                eprintln!("{} exists; use --force to overwrite", path.display());
                return Ok(());
            }
            std::fs::write(&path, Scenario::default().to_toml()).map_err(|source| {
                SimError::Write {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let _ = writeln!(std::io::stdout(), "wrote {}", path.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
