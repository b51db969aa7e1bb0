//! `loopmix-soak`: a long run of a whole localnet under steady SOCKS5
//! traffic, watching every process for growth in memory and open file
//! descriptors and every transfer for lost or damaged data.
//!
//! It starts the real `loopmix-localnet` (next to its own executable) in a
//! fresh directory, serves test payloads from an HTTP server on loopback,
//! and keeps `curl --socks5-hostname` transfers going through the mixnet
//! for the whole run, checking the SHA-256 of each. Every sample interval it
//! reads `VmRSS`, `/proc/PID/fd` and a few `/metrics` of every process;
//! at the end it compares the end with the baseline ("minute 2"), prints a
//! table and a verdict, and writes the samples as CSV. This is a benchmark
//! run by hand (`docs/OPERATING.md`, "Soak benchmark"), not a CI test.
//!
//! * [`network`]: the localnet child, its members, stopping it;
//! * [`traffic`]: the HTTP server and the curl workers;
//! * [`procfs`]: reading `/proc`;
//! * [`report`]: samples, verdicts, tables and CSV.

pub mod network;
pub mod procfs;
pub mod report;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use tokio::sync::watch;

use crate::Preset;
use crate::network::Signals;
use network::{Localnet, Member};
use procfs::Usage;
use report::{Criteria, Sample, Totals};
use traffic::{Direction, Phase, SharedTally, Tally, Worker};

const ABOUT: &str = "Run a whole localnet for minutes under steady SOCKS5 traffic and check \
that no process grows in memory or open files and that no data is lost.";

const LONG_ABOUT: &str = "Run a whole localnet for minutes under steady SOCKS5 traffic and check \
that no process grows in memory or open files and that no data is lost.

Starts loopmix-localnet (next to this executable) in a fresh directory, serves random \
payloads from an HTTP server on 127.0.0.1, and keeps curl downloads (and a few uploads) \
going through the SOCKS5 proxy for the whole run, checking the SHA-256 of every one. \
Every --sample-interval it reads each process's resident memory (VmRSS), open file \
descriptors (/proc/PID/fd) and a few of its metrics.

PASS needs, for every process, mean RSS over a window at the end within --max-rss-ratio \
of its mean over a window around the baseline (by default minutes 1-3 and 8-10 of 10: \
RSS saws with the directory epoch, as every epoch brings a Sphinx key with a fresh \
replay filter), no more file descriptors held throughout the end window than throughout \
the baseline window (give or take one socket per open stream), no process dying, and every transfer started to arrive intact. \
The run directory keeps localnet's files and logs and samples.csv, metrics.csv, \
transfers.csv. Exit status: 0 PASS, 1 FAIL, 130 interrupted.";

/// A range of sizes in KiB, `MIN-MAX` or one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KibRange(pub usize, pub usize);

impl FromStr for KibRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}"));
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if lo == 0 || lo > hi || hi > traffic::MAX_BLOB / 1024 {
            return Err(format!(
                "need 1 <= MIN <= MAX <= {} KiB",
                traffic::MAX_BLOB / 1024
            ));
        }
        Ok(Self(lo, hi))
    }
}

impl KibRange {
    fn bytes(self) -> (usize, usize) {
        (self.0 * 1024, self.1 * 1024)
    }
}

#[derive(Debug, Clone, Parser)]
#[command(name = "loopmix-soak", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Options {
    /// Length of the run in minutes, counted from when the network is ready
    /// (fractions allowed, e.g. 1.5 for a quick try).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,

    /// When the baseline is taken, as a fraction of the run (0.2 of 10
    /// minutes: minute 2, after start-up allocations have settled).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2)]
    pub baseline: f64,

    /// The localnet's privacy/speed preset (`loopmix-localnet --help`).
    #[arg(long, value_enum, default_value_t = Preset::Balanced)]
    pub preset: Preset,

    /// Run directory: the localnet's keys, configs and logs (`net/`), its
    /// output (`localnet.log`) and the CSV files. Must be empty or not
    /// exist. Default: a new `loopmix-soak-*` directory under $TMPDIR. Kept.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// How often every process is sampled.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,

    /// Download traffic offered, as a fraction of the preset's goodput bound
    /// (λ_P × ~1990 B/s): downloads start at this average byte rate, one at
    /// a time (a slow one is followed at once by the next).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    pub load: f64,

    /// Upload traffic offered, same unit, by a second curl at a time.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    pub upload_load: f64,

    /// Size of each download, KiB, drawn uniformly from MIN-MAX.
    #[arg(long, value_name = "MIN-MAX", default_value = "128-512")]
    pub download_kib: KibRange,

    /// Size of each upload, KiB (`--upload-load 0` turns uploads off).
    #[arg(long, value_name = "MIN-MAX", default_value = "32-128")]
    pub upload_kib: KibRange,

    /// Largest RSS ratio end/baseline that passes.
    #[arg(long, value_name = "RATIO", default_value_t = 1.10)]
    pub max_rss_ratio: f64,

    /// Length of the two windows compared (around the baseline, and at the
    /// end), rounded up to whole epochs. Default: 2 minutes, shorter if the
    /// run is too short for that.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,

    /// Seed of the payloads and sizes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// More arguments for loopmix-localnet, after `--` (e.g. `-- --mixes-per-layer 3`).
    #[arg(last = true, value_name = "LOCALNET ARGS")]
    pub localnet_args: Vec<String>,
}

impl Options {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.minutes > 0.0 && self.minutes.is_finite()) {
            bail!("--minutes must be positive");
        }
        if !(self.baseline > 0.0 && self.baseline < 1.0) {
            bail!("--baseline must be between 0 and 1");
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(self.load) || !(positive(self.upload_load) || self.upload_load == 0.0) {
            bail!("--load must be positive and --upload-load not negative");
        }
        if self.sample_interval < Duration::from_secs(1) {
            bail!("--sample-interval must be at least 1s");
        }
        if self.localnet_args.iter().any(|a| {
            a.starts_with("--dir") || a.starts_with("--socks-listen") || a.starts_with("--preset")
        }) {
            bail!("--dir, --preset and the SOCKS5 address are set by loopmix-soak itself");
        }
        Ok(())
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.minutes * 60.0)
    }
}

/// Runs `loopmix-soak` with `opts`; returns the process exit code.
pub fn main(opts: Options) -> ExitCode {
    match run(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loopmix-soak: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `loopmix-localnet` next to this executable.
fn localnet_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding our own executable")?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .join("loopmix-localnet");
    if !bin.is_file() {
        bail!(
            "{} not found (loopmix-soak runs the localnet next to it). Build every binary first:\n    \
             cargo build --release\nthen run ./target/release/loopmix-soak",
            bin.display()
        );
    }
    Ok(bin)
}

/// The run directory, kept after the run (its logs and CSV files are the
/// result).
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (path, tmp) = crate::network::prepare_dir(dir, "loopmix-soak-")?;
    Ok(tmp.map_or(path, tempfile::TempDir::keep))
}

fn check_curl() -> anyhow::Result<()> {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("curl not found: the soak drives its SOCKS5 traffic with curl");
    }
    Ok(())
}

/// Reads every member's `/proc` entries and watched metrics.
fn take_sample(members: &[Member], t: f64) -> Sample {
    let usage = members.iter().map(|m| Usage::read(m.id)).collect();
    let metrics = members
        .iter()
        .map(|m| {
            let text = loopmix_net::scrape::scrape(m.metrics?).ok()?;
            Some(report::parse_watched(&text))
        })
        .collect();
    Sample { t, usage, metrics }
}

/// How the timed part of the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Ran its full length.
    Completed,
    /// Ctrl-C (or SIGTERM/SIGHUP).
    Interrupted,
    /// loopmix-localnet exited on its own (a member died, so it stopped
    /// the network).
    NetworkStopped(String),
}

struct Run {
    samples: Vec<Sample>,
    tally: Tally,
    ending: Ending,
    /// Seconds of traffic actually run.
    ran_s: f64,
}

/// The window length: `--window` or 2 minutes (at most the time before
/// the baseline twice, so it does not start before the run), at least
/// three samples, rounded up to whole epochs (the period of the RSS saw).
fn window(opts: &Options, epoch_length_s: u64, end_s: f64) -> f64 {
    let interval = opts.sample_interval.as_secs_f64();
    let baseline_s = (end_s * opts.baseline).round();
    let want = match opts.window {
        Some(w) => w.as_secs_f64(),
        None => 120f64.min(2.0 * baseline_s),
    };
    let epoch = (epoch_length_s as f64).max(1.0);
    (want.max(3.0 * interval) / epoch).ceil().max(1.0) * epoch
}

/// Sampling times: every `interval` from 0, plus the baseline and the end.
fn schedule(interval: f64, baseline: f64, end: f64) -> Vec<f64> {
    let mut times: Vec<f64> = (0..)
        .map(|k| k as f64 * interval)
        .take_while(|t| *t < end)
        .collect();
    times.push(baseline);
    times.push(end);
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| (*a - *b).abs() < 0.5);
    times
}

/// The timed part: traffic and sampling until the end (or a signal, or the
/// network stopping), then the transfers in flight finish.
async fn soak(
    opts: &Options,
    net: &mut Localnet,
    socks: std::net::SocketAddr,
    server: std::net::SocketAddr,
    signals: &Signals,
    criteria: &Criteria,
) -> Run {
    let bound = opts.preset.params().goodput_bound();
    let tally: SharedTally = Arc::new(Mutex::new(Tally::default()));
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    let mut specs = vec![(Direction::Down, opts.download_kib, opts.load)];
    if opts.upload_load > 0.0 {
        specs.push((Direction::Up, opts.upload_kib, opts.upload_load));
    }
    for (i, (direction, sizes, load)) in specs.into_iter().enumerate() {
        let w = Worker {
            direction,
            socks,
            server,
            sizes: sizes.bytes(),
            bytes_per_s: load * bound,
            // Generous: a transfer that takes this long is a loss, not a
            // slow network (the bound is the fastest it can be).
            timeout_base: Duration::from_secs(90),
            timeout_floor_bytes_per_s: 0.1 * bound,
            seed: opts.seed.wrapping_mul(1000).wrapping_add(i as u64),
        };
        workers.push(tokio::spawn(w.run(t0, tally.clone(), phase_rx.clone())));
    }

    let interval = opts.sample_interval.as_secs_f64();
    let mut samples = Vec::new();
    let mut ending = Ending::Completed;
    let members = net.members.clone();
    'run: for t in schedule(interval, criteria.baseline_s, criteria.end_s) {
        let due = t0 + Duration::from_secs_f64(t);
        loop {
            if signals.count() > 0 {
                ending = Ending::Interrupted;
                break 'run;
            }
            if let Some(status) = net.exited() {
                ending = Ending::NetworkStopped(format!(
                    "loopmix-localnet exited ({status}); last lines of {}:\n{}",
                    net.log.display(),
                    crate::process::log_tail(&net.log, 30)
                ));
                break 'run;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            tokio::time::sleep((due - now).min(Duration::from_millis(200))).await;
        }
        let m = members.clone();
        // Stamped with the scheduled time (it is taken within milliseconds
        // of it), so the windows hold the samples they were made for.
        let Ok(sample) = tokio::task::spawn_blocking(move || take_sample(&m, t)).await else {
            continue;
        };
        let minute = (t / 60.0).round() * 60.0;
        if (t - minute).abs() < 0.5
            || (t - criteria.baseline_s).abs() < 0.5
            || (t - criteria.end_s).abs() < 0.5
        {
            progress(&sample, &tally, criteria);
        }
        samples.push(sample);
    }
    let ran_s = t0.elapsed().as_secs_f64();

    let _ = phase_tx.send(if ending == Ending::Completed {
        Phase::Drain
    } else {
        Phase::Abort
    });
    let mut said = false;
    while !workers.iter().all(|w| w.is_finished()) {
        if signals.count() > 0 && *phase_tx.borrow() != Phase::Abort {
            eprintln!("loopmix-soak: interrupted: ending the transfers in flight");
            ending = Ending::Interrupted;
            let _ = phase_tx.send(Phase::Abort);
        }
        if !said {
            let n = tally.lock().map(|t| t.in_flight).unwrap_or(0);
            if n > 0 && *phase_tx.borrow() == Phase::Drain {
                eprintln!("loopmix-soak: waiting for {n} transfer(s) in flight to finish");
            }
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tally = match Arc::try_unwrap(tally) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => shared
            .lock()
            .map(|t| Tally {
                done: t.done.clone(),
                in_flight: t.in_flight,
            })
            .unwrap_or_default(),
    };
    Run {
        samples,
        tally,
        ending,
        ran_s,
    }
}

/// One line on stderr: how far, transfers, total memory.
fn progress(s: &Sample, tally: &SharedTally, c: &Criteria) {
    let (done, in_flight) = tally
        .lock()
        .map(|t| (Totals::of(&t.done, 0), t.in_flight))
        .unwrap_or_default();
    let rss: u64 = s.usage.iter().flatten().map(|u| u.rss_kib).sum();
    let fds: u64 = s.usage.iter().flatten().map(|u| u.fds).sum();
    let gone = s.usage.iter().filter(|u| u.is_none()).count();
    let mark = if (s.t - c.baseline_s).abs() < 0.5 {
        " (baseline)"
    } else {
        ""
    };
    eprintln!(
        "loopmix-soak: {}/{}{mark} · transfers {} intact, {} failed, {} corrupted, {in_flight} in flight · \
         RSS of all processes {:.0} MiB · fds {fds}{}",
        report::clock(s.t),
        report::clock(c.end_s),
        done.intact,
        done.failed,
        done.corrupted,
        rss as f64 / 1024.0,
        if gone > 0 {
            format!(" · {gone} PROCESS(ES) GONE")
        } else {
            String::new()
        }
    );
}

/// The whole command.
pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    opts.validate()?;
    let bin = localnet_binary()?;
    check_curl()?;
    let run_dir = prepare_dir(opts.dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let signals = Signals::install(&rt)?;
    let server = rt.block_on(traffic::start_server())?;
    let params = opts.preset.params();
    let bound = params.goodput_bound();
    let end_s = opts.duration().as_secs_f64();

    eprintln!(
        "loopmix-soak: starting loopmix-localnet --preset {} in {}",
        opts.preset.name(),
        run_dir.display()
    );
    let mut args = vec!["--preset".to_string(), opts.preset.name().to_string()];
    args.extend(opts.localnet_args.iter().cloned());
    let mut net = Localnet::spawn(
        &bin,
        &run_dir.join("net"),
        &run_dir.join("localnet.log"),
        &args,
    )?;
    let started = Instant::now();
    // localnet's own --ready-timeout (3 min by default) comes first.
    let json = net.wait_ready(&signals, Duration::from_secs(240))?;
    let names: Vec<String> = net.members.iter().map(|m| m.name.clone()).collect();
    let criteria = Criteria {
        baseline_s: (end_s * opts.baseline).round(),
        end_s,
        max_rss_ratio: opts.max_rss_ratio,
        window_s: window(&opts, json.epoch_length_s, end_s),
    };
    eprintln!(
        "loopmix-soak: network ready after {:.0} s: {} processes ({}); SOCKS5 {}",
        started.elapsed().as_secs_f64(),
        names.len(),
        names.join(" "),
        json.socks5
    );
    eprintln!(
        "loopmix-soak: {} of traffic: downloads {}-{} KiB at {:.1} KB/s, uploads {}-{} KiB at {:.1} KB/s \
         (goodput bound {:.1} KB/s); baseline at {}, samples every {}",
        report::clock(end_s),
        opts.download_kib.0,
        opts.download_kib.1,
        opts.load * bound / 1000.0,
        opts.upload_kib.0,
        opts.upload_kib.1,
        opts.upload_load * bound / 1000.0,
        bound / 1000.0,
        report::clock(criteria.baseline_s),
        humantime::format_duration(opts.sample_interval)
    );

    let run = rt.block_on(soak(
        &opts,
        &mut net,
        json.socks5,
        server,
        &signals,
        &criteria,
    ));
    eprintln!("loopmix-soak: stopping the network");
    let leftovers = net.stop();
    drop(rt);

    // The run may have been cut short: judge what was reached.
    let criteria = Criteria {
        end_s: run.samples.last().map_or(0.0, |s| s.t).min(end_s),
        ..criteria
    };
    let pids: Vec<u32> = net.members.iter().map(|m| m.id.pid).collect();
    let write = |what: &str, r: std::io::Result<()>| {
        if let Err(e) = r {
            eprintln!("loopmix-soak: writing {what}: {e}");
        }
    };
    write(
        "samples.csv",
        report::write_samples_csv(&run_dir.join("samples.csv"), &names, &pids, &run.samples),
    );
    write(
        "metrics.csv",
        report::write_metrics_csv(&run_dir.join("metrics.csv"), &names, &run.samples),
    );
    write(
        "transfers.csv",
        report::write_transfers_csv(&run_dir.join("transfers.csv"), &run.tally.done),
    );

    let results: Vec<report::ProcessResult> = net
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| report::evaluate(&m.name, m.id.pid, i, &run.samples, &criteria))
        .collect();
    let totals = Totals::of(&run.tally.done, run.tally.in_flight);
    let verdict = print_report(
        &opts, &run, &results, &names, &totals, &criteria, &leftovers, bound, &run_dir,
    );
    Ok(match (&run.ending, verdict) {
        (Ending::Interrupted, _) => ExitCode::from(130),
        (_, true) => ExitCode::SUCCESS,
        (_, false) => ExitCode::FAILURE,
    })
}

/// Prints the tables, the totals and the verdict on stdout; returns PASS.
#[allow(clippy::too_many_arguments)]
fn print_report(
    opts: &Options,
    run: &Run,
    results: &[report::ProcessResult],
    names: &[String],
    totals: &Totals,
    c: &Criteria,
    leftovers: &[String],
    bound: f64,
    run_dir: &Path,
) -> bool {
    let mut failures: Vec<String> = Vec::new();
    println!();
    println!(
        "loopmix soak: {} of {} at preset {}, {} processes, {} samples every {}; run dir {}",
        report::clock(run.ran_s),
        report::clock(opts.duration().as_secs_f64()),
        opts.preset.name(),
        results.len(),
        run.samples.len(),
        humantime::format_duration(opts.sample_interval),
        run_dir.display()
    );
    println!();
    if c.end_s < c.baseline_window().1 {
        println!(
            "the run ended at {}, before its baseline window closed: no growth comparison",
            report::clock(c.end_s)
        );
        failures.push("too short for a growth comparison".into());
    } else {
        let (b0, b1) = c.baseline_window();
        let (e0, e1) = c.end_window();
        println!(
            "memory and open files: \"@{}\" is over the samples in {}-{}, \"@{}\" over {}-{}: \
             RSS the mean (RSS saws with the epoch: a replay filter per Sphinx key), fds the fewest;",
            report::clock(c.baseline_s),
            report::clock(b0.max(0.0)),
            report::clock(b1),
            report::clock(c.end_s),
            report::clock(e0.max(0.0)),
            report::clock(e1),
        );
        println!(
            "RSS passes if end/baseline <= {:.2}, fds if they did not grow by more than the most \
             streams open (one socket each); trend = least-squares \
             RSS slope from the baseline on; Δanon/Δfile = change of its anonymous (heap) and \
             file-backed (executable code paged in) parts",
            c.max_rss_ratio
        );
        print!("{}", report::process_table(results, c));
        for r in results {
            if let Some(t) = r.died_at {
                failures.push(format!("{} died (gone at {})", r.name, report::clock(t)));
            } else {
                if !r.rss_ok(c) {
                    failures.push(format!(
                        "{} RSS end/baseline {}",
                        r.name,
                        r.rss_ratio()
                            .map_or("unknown".into(), |x| format!("{x:.3}"))
                    ));
                }
                if !r.fds_ok() {
                    failures.push(format!(
                        "{} fds {} → {}",
                        r.name,
                        r.fds_base.map_or("-".into(), |x| x.to_string()),
                        r.fds_end.map_or("-".into(), |x| x.to_string())
                    ));
                }
            }
        }
        println!();
        println!(
            "metrics {} → {} (gauges: value then→now; counters: increase in between)",
            report::clock(c.baseline_s),
            report::clock(c.end_s)
        );
        print!("{}", report::metrics_table(names, &run.samples, c));
    }

    println!();
    println!(
        "transfers: {} started: {} intact, {} failed, {} corrupted, {} aborted, {} unfinished",
        totals.started,
        totals.intact,
        totals.failed,
        totals.corrupted,
        totals.aborted,
        run.tally.in_flight
    );
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            format!(
                "{:.1} KB/s = {:.2} × bound",
                bytes as f64 / secs / 1000.0,
                bytes as f64 / secs / bound
            )
        } else {
            "-".into()
        }
    };
    println!(
        "  downloads {}: {:.2} MiB intact, {} while transferring",
        totals.downloads,
        totals.bytes_down as f64 / 1048576.0,
        rate(totals.bytes_down, totals.secs_down)
    );
    println!(
        "  uploads   {}: {:.2} MiB intact, {} while transferring",
        totals.uploads,
        totals.bytes_up as f64 / 1048576.0,
        rate(totals.bytes_up, totals.secs_up)
    );
    for (what, n) in &totals.failures {
        println!("  FAILED ×{n}: {what}");
    }
    for c in &totals.corruptions {
        println!("  CORRUPTED: {c}");
    }
    if totals.failed > 0 {
        failures.push(format!("{} transfer(s) failed", totals.failed));
    }
    if totals.corrupted > 0 {
        failures.push(format!("{} transfer(s) CORRUPTED", totals.corrupted));
    }
    if run.tally.in_flight > 0 || totals.aborted > 0 {
        failures.push(format!(
            "{} transfer(s) did not finish",
            run.tally.in_flight + totals.aborted
        ));
    }
    if totals.started == 0 {
        failures.push("no transfer was started".into());
    }
    if !leftovers.is_empty() {
        // Not one of the soak's criteria, but a bug worth shouting about.
        println!(
            "WARNING: still running after loopmix-localnet stopped (killed now): {}",
            leftovers.join(", ")
        );
    }
    match &run.ending {
        Ending::Completed => {}
        Ending::Interrupted => failures.push("interrupted".into()),
        Ending::NetworkStopped(why) => {
            println!("{why}");
            failures.push("the network stopped during the run".into());
        }
    }
    println!();
    if failures.is_empty() {
        println!(
            "verdict: PASS (memory within {:.0}%, no fd growth, zero data lost)",
            (c.max_rss_ratio - 1.0) * 100.0
        );
        true
    } else {
        println!("verdict: FAIL: {}", failures.join("; "));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_schedules() {
        assert_eq!("128-512".parse::<KibRange>(), Ok(KibRange(128, 512)));
        assert_eq!("64".parse::<KibRange>(), Ok(KibRange(64, 64)));
        assert!("512-128".parse::<KibRange>().is_err());
        assert!("0-1".parse::<KibRange>().is_err());
        let s = schedule(10.0, 120.0, 600.0);
        assert_eq!(s.len(), 61);
        assert_eq!(s[12], 120.0);
        assert_eq!(s.last(), Some(&600.0));
        let s = schedule(10.0, 18.0, 90.0);
        assert!(s.contains(&18.0) && s.contains(&90.0) && s.contains(&80.0));
    }

    #[test]
    fn default_options_are_minute_two_of_ten() {
        let o = Options::try_parse_from(["loopmix-soak"]).unwrap();
        assert_eq!(o.duration(), Duration::from_secs(600));
        assert_eq!((o.duration().as_secs_f64() * o.baseline).round(), 120.0);
        o.validate().unwrap();
        assert_eq!(window(&o, 30, 600.0), 120.0);
        assert_eq!(window(&o, 7, 600.0), 126.0);
        assert_eq!(window(&o, 30, 120.0), 60.0);
        let o = Options::try_parse_from(["loopmix-soak", "--", "--dir", "x"]).unwrap();
        assert!(o.validate().is_err());
    }
}
