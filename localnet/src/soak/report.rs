//! The soak's samples, its verdicts and what it prints and writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::procfs::Usage;
use super::traffic::{Direction, Outcome, Transfer};

/// Metrics recorded at every sample (every series of each name). Gauges are
/// compared as values, counters (`_total`) as increases.
pub const WATCHED: &[&str] = &[
    "loopmix_delay_queue_length",
    "loopmix_ingress_queue_length",
    "loopmix_node_sphinx_keys",
    "loopmix_egress_links_up",
    "loopmix_provider_delivery_queue_length",
    "loopmix_provider_inbox_messages",
    "loopmix_provider_inbox_bytes",
    "loopmix_streams_open",
    "loopmix_exit_sessions",
    "loopmix_exit_reply_blocks",
    "loopmix_topology_epoch",
    "loopmix_packets_forwarded_total",
    "loopmix_packets_dropped_total",
    "loopmix_stream_retransmissions_total",
    "loopmix_stream_resets_total",
    "loopmix_stream_opens_total",
    "loopmix_client_messages_failed_total",
    "loopmix_client_loops_lost_total",
    "loopmix_cover_loops_lost_total",
];

/// The gauges shown in the metrics table, with their short labels, and
/// whether they are shown when zero at both ends.
const SHOWN_GAUGES: &[(&str, &str, bool)] = &[
    ("loopmix_delay_queue_length", "delay queue", true),
    ("loopmix_ingress_queue_length", "ingress", false),
    ("loopmix_node_sphinx_keys", "sphinx keys", true),
    (
        "loopmix_provider_delivery_queue_length",
        "delivery queue",
        false,
    ),
    ("loopmix_provider_inbox_messages", "inbox msgs", false),
    ("loopmix_streams_open", "streams open", true),
    ("loopmix_exit_sessions", "exit sessions", false),
    ("loopmix_exit_reply_blocks", "reply blocks", false),
];

/// The counters shown (increase between baseline and end), by label.
const SHOWN_COUNTERS: &[(&str, &str)] = &[
    ("loopmix_packets_forwarded_total", "forwarded"),
    ("loopmix_packets_dropped_total", "dropped"),
    ("loopmix_stream_retransmissions_total", "retransmitted"),
    ("loopmix_stream_resets_total", "stream resets"),
    ("loopmix_client_messages_failed_total", "messages failed"),
];

/// `name{labels} value` lines of the watched metrics.
pub type Series = BTreeMap<String, f64>;

/// Keeps the series of the [`WATCHED`] metrics from Prometheus text.
pub fn parse_watched(text: &str) -> Series {
    let mut out = Series::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if WATCHED.contains(&name)
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(series.to_string(), v);
        }
    }
    out
}

/// Sum of the series of `name`, and the value of each by its labels.
fn by_labels(s: &Series, name: &str) -> (Option<f64>, BTreeMap<String, f64>) {
    let mut total = None;
    let mut parts = BTreeMap::new();
    for (series, v) in s {
        let (n, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series.as_str(), ""),
        };
        if n == name {
            *total.get_or_insert(0.0) += v;
            // `reason="late"` → `late`.
            let short = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(_, v)| v.trim_matches('"'))
                .collect::<Vec<_>>()
                .join("/");
            parts.insert(short, *v);
        }
    }
    (total, parts)
}

/// One reading of every member.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since traffic started.
    pub t: f64,
    /// Per member (same order as the members): `None` once it is gone.
    pub usage: Vec<Option<Usage>>,
    /// Per member: the watched metrics, if it answered.
    pub metrics: Vec<Option<Series>>,
}

/// What the soak checks, with its thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Criteria {
    /// Seconds after the start at which the baseline is taken ("minute 2").
    pub baseline_s: f64,
    pub end_s: f64,
    /// Largest allowed RSS end/baseline ratio (1.10).
    pub max_rss_ratio: f64,
    /// Width of the two windows compared: `[baseline - w/2, baseline +
    /// w/2)` and `(end - w, end]`, a whole number of epochs. Every epoch a
    /// node makes a Sphinx key with a fresh replay filter (resident as
    /// packets touch its pages) and drops an old one, so its RSS is a
    /// sawtooth with the epoch as period, and single samples would compare
    /// phases of the saw, not growth: RSS is compared as the mean of a
    /// window of whole epochs (the level the saw oscillates around).
    /// File descriptors are compared as the fewest open in a window (the
    /// persistent ones), not counting one socket per open stream: a socket
    /// open for a transfer, or a key file being written, is not a leak; a
    /// leaked descriptor raises the floor.
    pub window_s: f64,
}

impl Criteria {
    /// Half-open: `[lo, hi)`.
    pub fn baseline_window(&self) -> (f64, f64) {
        (
            self.baseline_s - self.window_s / 2.0,
            self.baseline_s + self.window_s / 2.0,
        )
    }

    /// Half-open: `(lo, hi]`.
    pub fn end_window(&self) -> (f64, f64) {
        (self.end_s - self.window_s, self.end_s)
    }
}

/// One member's line in the table.
#[derive(Debug, Clone)]
pub struct ProcessResult {
    pub name: String,
    pub pid: u32,
    /// Mean RSS in the baseline window, KiB.
    pub rss_base: Option<u64>,
    /// Mean RSS in the end window, KiB.
    pub rss_end: Option<u64>,
    /// Largest RSS sampled in the whole run, KiB.
    pub rss_peak: Option<u64>,
    /// Least-squares slope of RSS from the baseline on, KiB per minute.
    pub rss_trend: Option<f64>,
    /// Fewest fds open in the baseline window.
    pub fds_base: Option<u64>,
    /// Fewest fds open in the end window.
    pub fds_end: Option<u64>,
    /// Most streams open at a sample of either window (SOCKS5 client and
    /// exit; 0 elsewhere): the end's floor may exceed the baseline's by
    /// this much.
    pub fd_slack: u64,
    pub threads: (Option<u64>, Option<u64>),
    /// Change of the windows' mean anonymous and file-backed RSS, KiB.
    pub anon_delta: Option<f64>,
    pub file_delta: Option<f64>,
    /// Seconds at which it was first seen gone, if it died.
    pub died_at: Option<f64>,
}

impl ProcessResult {
    pub fn rss_ratio(&self) -> Option<f64> {
        Some(self.rss_end? as f64 / self.rss_base?.max(1) as f64)
    }

    pub fn rss_ok(&self, c: &Criteria) -> bool {
        self.rss_ratio().is_some_and(|r| r <= c.max_rss_ratio)
    }

    pub fn fds_ok(&self) -> bool {
        matches!((self.fds_base, self.fds_end), (Some(b), Some(e)) if e <= b + self.fd_slack)
    }

    pub fn ok(&self, c: &Criteria) -> bool {
        self.died_at.is_none() && self.rss_ok(c) && self.fds_ok()
    }
}

/// The sample closest to `t`.
fn nearest(samples: &[Sample], t: f64) -> Option<usize> {
    samples
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1.t - t).abs().total_cmp(&(b.1.t - t).abs()))
        .map(|(i, _)| i)
}

/// Evaluates member `i` over `samples`.
pub fn evaluate(name: &str, pid: u32, i: usize, samples: &[Sample], c: &Criteria) -> ProcessResult {
    let at = |t: f64| nearest(samples, t).and_then(|s| samples[s].usage.get(i).copied().flatten());
    let usages = || {
        samples
            .iter()
            .filter_map(|s| Some((s.t, s.usage.get(i).copied().flatten()?)))
    };
    let eps = 1e-6;
    let (b0, b1) = c.baseline_window();
    let (e0, e1) = c.end_window();
    let in_base = |t: f64| t >= b0 - eps && t < b1 - eps;
    let in_end = |t: f64| t > e0 + eps && t <= e1 + eps;
    let values = |within: &dyn Fn(f64) -> bool, f: fn(&Usage) -> u64| -> Vec<u64> {
        usages()
            .filter(|(t, _)| within(*t))
            .map(|(_, u)| f(&u))
            .collect()
    };
    // Streams open (SOCKS5 client and exit), one socket each: with
    // transfers back to back a stream may be open at every sample of a
    // window, and a stream's socket opens and closes a little before or
    // after the mux counts it, so the floors may differ by that many.
    let fd_slack = samples
        .iter()
        .filter(|s| in_base(s.t) || in_end(s.t))
        .filter_map(|s| {
            let m = s.metrics.get(i)?.as_ref()?;
            by_labels(m, "loopmix_streams_open").0
        })
        .fold(0.0f64, f64::max) as u64;
    let died_at = samples
        .iter()
        .find(|s| s.usage.get(i).is_some_and(Option::is_none))
        .map(|s| s.t);
    let delta = |f: fn(&Usage) -> u64| -> Option<f64> {
        Some(mean(&values(&in_end, f))? as f64 - mean(&values(&in_base, f))? as f64)
    };
    let after: Vec<(f64, f64)> = usages()
        .filter(|(t, _)| *t >= c.baseline_s - 1e-6)
        .map(|(t, u)| (t / 60.0, u.rss_kib as f64))
        .collect();
    ProcessResult {
        name: name.to_string(),
        pid,
        rss_base: mean(&values(&in_base, |u| u.rss_kib)),
        rss_end: mean(&values(&in_end, |u| u.rss_kib)),
        rss_peak: usages().map(|(_, u)| u.rss_kib).max(),
        rss_trend: slope(&after),
        fds_base: values(&in_base, |u| u.fds).into_iter().min(),
        fds_end: values(&in_end, |u| u.fds).into_iter().min(),
        fd_slack,
        threads: (
            at(c.baseline_s).map(|u| u.threads),
            at(c.end_s).map(|u| u.threads),
        ),
        anon_delta: delta(|u| u.anon_kib),
        file_delta: delta(|u| u.file_kib),
        died_at,
    }
}

/// The mean, rounded.
fn mean(v: &[u64]) -> Option<u64> {
    (!v.is_empty()).then(|| (v.iter().sum::<u64>() as f64 / v.len() as f64).round() as u64)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// `mm:ss` (or `h:mm:ss`).
pub fn clock(secs: f64) -> String {
    let s = secs.round().max(0.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The per-process table.
pub fn process_table(results: &[ProcessResult], c: &Criteria) -> String {
    let b = clock(c.baseline_s);
    let e = clock(c.end_s);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:>7} │ {:>9} {:>9} {:>6} {:<4} {:>9} {:>10} {:>6} {:>6} │ {:>6} {:>6} {:<4} {:>7} │ {:>7}",
        "process",
        "pid",
        format!("RSS@{b}"),
        format!("RSS@{e}"),
        "end/",
        "",
        "peak",
        "trend",
        "Δanon",
        "Δfile",
        format!("fd@{b}"),
        format!("fd@{e}"),
        "",
        "streams",
        "threads"
    );
    let _ = writeln!(
        out,
        "{:<11} {:>7} │ {:>9} {:>9} {:>6} {:<4} {:>9} {:>10} {:>6} {:>6} │ {:>6} {:>6} {:<4} {:>7} │ {:>7}",
        "",
        "",
        "mean MiB",
        "mean MiB",
        "base",
        "",
        "MiB",
        "KiB/min",
        "MiB",
        "MiB",
        "fewest",
        "fewest",
        "",
        "most",
        ""
    );
    for r in results {
        let verdict = |ok: bool| if ok { "ok" } else { "FAIL" };
        let died = r
            .died_at
            .map(|t| format!("  DIED by {}", clock(t)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<11} {:>7} │ {:>9} {:>9} {:>6} {:<4} {:>9} {:>10} {:>6} {:>6} │ {:>6} {:>6} {:<4} {:>7} │ {:>7}{died}",
            r.name,
            r.pid,
            mib(r.rss_base),
            mib(r.rss_end),
            r.rss_ratio().map_or("-".into(), |x| format!("{x:.3}")),
            verdict(r.rss_ok(c)),
            mib(r.rss_peak),
            r.rss_trend.map_or("-".into(), |x| format!("{x:+.0}")),
            r.anon_delta
                .map_or("-".into(), |x| format!("{:+.1}", x / 1024.0)),
            r.file_delta
                .map_or("-".into(), |x| format!("{:+.1}", x / 1024.0)),
            opt(r.fds_base),
            opt(r.fds_end),
            verdict(r.fds_ok()),
            r.fd_slack,
            format!("{}→{}", opt(r.threads.0), opt(r.threads.1)),
        );
    }
    out
}

/// One line per member with its gauges at the baseline and the end and
/// its counters' increase in between.
pub fn metrics_table(names: &[String], samples: &[Sample], c: &Criteria) -> String {
    let (Some(bi), Some(ei)) = (nearest(samples, c.baseline_s), nearest(samples, c.end_s)) else {
        return String::new();
    };
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        let get = |s: usize| samples[s].metrics.get(i).cloned().flatten();
        let (Some(base), Some(end)) = (get(bi), get(ei)) else {
            continue;
        };
        let mut parts = Vec::new();
        for (metric, label, always) in SHOWN_GAUGES {
            let (b, _) = by_labels(&base, metric);
            let (e, _) = by_labels(&end, metric);
            let nonzero = b.is_some_and(|v| v != 0.0) || e.is_some_and(|v| v != 0.0);
            if (b.is_some() || e.is_some()) && (*always || nonzero) {
                parts.push(format!("{label} {}→{}", opt(b), opt(e)));
            }
        }
        for (metric, label) in SHOWN_COUNTERS {
            let (b, bl) = by_labels(&base, metric);
            let (e, el) = by_labels(&end, metric);
            let Some(e) = e else { continue };
            let d = e - b.unwrap_or(0.0);
            let detail: Vec<String> = el
                .iter()
                .filter_map(|(l, v)| {
                    let d = v - bl.get(l).copied().unwrap_or(0.0);
                    (d > 0.0 && !l.is_empty()).then(|| format!("{l} {d}"))
                })
                .collect();
            if d > 0.0 || *metric == "loopmix_packets_dropped_total" {
                if detail.is_empty() || detail.len() == 1 && el.len() == 1 {
                    parts.push(format!("{label} +{d}"));
                } else {
                    parts.push(format!("{label} +{d} ({})", detail.join(", ")));
                }
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  {name:<11} {}", parts.join(" · "));
        }
    }
    out
}

/// Totals of the transfers.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub started: usize,
    pub intact: usize,
    pub failed: usize,
    pub corrupted: usize,
    pub aborted: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub secs_down: f64,
    pub secs_up: f64,
    pub downloads: usize,
    pub uploads: usize,
    /// `curl exit N: message` → count.
    pub failures: BTreeMap<String, usize>,
    pub corruptions: Vec<String>,
}

impl Totals {
    pub fn of(transfers: &[Transfer], in_flight: usize) -> Self {
        let mut t = Totals {
            started: transfers.len() + in_flight,
            ..Default::default()
        };
        for x in transfers {
            match x.direction {
                Direction::Down => t.downloads += 1,
                Direction::Up => t.uploads += 1,
            }
            match &x.outcome {
                Outcome::Intact => {
                    t.intact += 1;
                    match x.direction {
                        Direction::Down => {
                            t.bytes_down += x.bytes as u64;
                            t.secs_down += x.seconds;
                        }
                        Direction::Up => {
                            t.bytes_up += x.bytes as u64;
                            t.secs_up += x.seconds;
                        }
                    }
                }
                Outcome::Failed { curl_exit, error } => {
                    t.failed += 1;
                    let key = format!(
                        "{} curl exit {}: {}",
                        x.direction.name(),
                        opt(*curl_exit),
                        error.lines().next().unwrap_or("")
                    );
                    *t.failures.entry(key).or_default() += 1;
                }
                Outcome::Corrupted { detail } => {
                    t.corrupted += 1;
                    t.corruptions.push(format!(
                        "{} of {} B started at {}: {detail}",
                        x.direction.name(),
                        x.bytes,
                        clock(x.started_s)
                    ));
                }
                Outcome::Aborted => t.aborted += 1,
            }
        }
        t
    }

    /// Zero data lost: something was transferred and every transfer
    /// started arrived intact.
    pub fn ok(&self) -> bool {
        self.started > 0 && self.intact == self.started
    }
}

/// `samples.csv`: one row per member per sample.
pub fn write_samples_csv(
    path: &Path,
    names: &[String],
    pids: &[u32],
    samples: &[Sample],
) -> std::io::Result<()> {
    let mut out = String::from("t_s,process,pid,rss_kib,rss_anon_kib,rss_file_kib,fds,threads\n");
    for s in samples {
        for (i, name) in names.iter().enumerate() {
            let u = s.usage.get(i).copied().flatten();
            let _ = writeln!(
                out,
                "{:.1},{name},{},{},{},{},{},{}",
                s.t,
                pids.get(i).copied().unwrap_or(0),
                opt(u.map(|u| u.rss_kib)),
                opt(u.map(|u| u.anon_kib)),
                opt(u.map(|u| u.file_kib)),
                opt(u.map(|u| u.fds)),
                opt(u.map(|u| u.threads)),
            );
        }
    }
    std::fs::write(path, out)
}

/// `metrics.csv`: one row per watched series per member per sample.
pub fn write_metrics_csv(path: &Path, names: &[String], samples: &[Sample]) -> std::io::Result<()> {
    let mut out = String::from("t_s,process,series,value\n");
    for s in samples {
        for (i, name) in names.iter().enumerate() {
            for (series, v) in s.metrics.get(i).into_iter().flatten().flatten() {
                // Series hold commas and quotes inside `{}`: quote them.
                let _ = writeln!(
                    out,
                    "{:.1},{name},\"{}\",{v}",
                    s.t,
                    series.replace('"', "\"\"")
                );
            }
        }
    }
    std::fs::write(path, out)
}

/// `transfers.csv`: one row per transfer.
pub fn write_transfers_csv(path: &Path, transfers: &[Transfer]) -> std::io::Result<()> {
    let mut out = String::from("started_s,direction,bytes,seconds,outcome,curl_exit,detail\n");
    for x in transfers {
        let (outcome, code, detail) = match &x.outcome {
            Outcome::Intact => ("intact", String::new(), String::new()),
            Outcome::Failed { curl_exit, error } => ("failed", opt(*curl_exit), error.clone()),
            Outcome::Corrupted { detail } => ("corrupted", String::new(), detail.clone()),
            Outcome::Aborted => ("aborted", String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:.1},{},{},{:.2},{outcome},{code},\"{}\"",
            x.started_s,
            x.direction.name(),
            x.bytes,
            x.seconds,
            detail.replace('"', "'").replace('\n', " ")
        );
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: u64, fds: u64) -> Sample {
        Sample {
            t,
            usage: vec![Some(Usage {
                rss_kib: rss,
                anon_kib: rss,
                file_kib: 0,
                fds,
                threads: 4,
            })],
            metrics: vec![None],
        }
    }

    #[test]
    fn parses_watched_series() {
        let t = "# HELP x\nloopmix_packets_dropped_total{reason=\"late\"} 3\n\
                 loopmix_packets_dropped_total{reason=\"overload\"} 0\n\
                 loopmix_delay_queue_length 12\nloopmix_other 5\n";
        let s = parse_watched(t);
        assert_eq!(s.len(), 3);
        let (total, parts) = by_labels(&s, "loopmix_packets_dropped_total");
        assert_eq!(total, Some(3.0));
        assert_eq!(parts.get("late"), Some(&3.0));
        assert_eq!(by_labels(&s, "loopmix_delay_queue_length").0, Some(12.0));
    }

    #[test]
    fn judges_growth() {
        let c = Criteria {
            baseline_s: 120.0,
            end_s: 600.0,
            max_rss_ratio: 1.10,
            window_s: 20.0,
        };
        // Flat memory; a transient extra fd at the end, matched by one
        // around the baseline.
        let flat: Vec<Sample> = (0..=60)
            .map(|i| {
                let t = i as f64 * 10.0;
                let fds = if i == 11 || i == 59 { 21 } else { 20 };
                sample(t, 10_000 + (i % 3) as u64, fds)
            })
            .collect();
        let r = evaluate("mix0", 1, 0, &flat, &c);
        assert_eq!(r.rss_base, Some(10_001));
        assert_eq!(r.fds_base, Some(20));
        assert_eq!(mean(&[3, 1, 2, 3]), Some(2));
        assert_eq!(mean(&[]), None);
        assert!(r.ok(&c), "{r:?}");
        assert!(r.rss_trend.unwrap().abs() < 5.0);

        // 20% growth and one more fd every minute.
        let leaky: Vec<Sample> = (0..=60)
            .map(|i| sample(i as f64 * 10.0, 10_000 + i as u64 * 50, 20 + i as u64 / 6))
            .collect();
        let r = evaluate("mix0", 1, 0, &leaky, &c);
        assert!(!r.rss_ok(&c) && !r.fds_ok(), "{r:?}");
        assert!((r.rss_trend.unwrap() - 300.0).abs() < 1.0);

        // A sawtooth (a replay filter made and dropped every 30 s epoch)
        // with no growth passes; on top of 10% growth it fails.
        let saw = |grow: f64| -> Vec<Sample> {
            (0..=60)
                .map(|i| {
                    let rss = 40_000.0 + 3_000.0 * (i % 3) as f64 + grow * i as f64 / 60.0;
                    sample(i as f64 * 10.0, rss as u64, 20)
                })
                .collect()
        };
        let c60 = Criteria {
            window_s: 60.0,
            ..c
        };
        assert!(evaluate("mix0", 1, 0, &saw(0.0), &c60).ok(&c60));
        assert!(!evaluate("mix0", 1, 0, &saw(8_000.0), &c60).ok(&c60));

        // One socket per open stream does not count.
        let mut busy = flat.clone();
        for x in busy.iter_mut().filter(|x| x.t > 580.0) {
            if let Some(u) = x.usage[0].as_mut() {
                u.fds = 25;
            }
            x.metrics[0] = Some(parse_watched("loopmix_streams_open 5\n"));
        }
        assert!(evaluate("socks5", 1, 0, &busy, &c).fds_ok());
        if let Some(u) = busy[60].usage[0].as_mut() {
            u.fds = 26;
        }
        for x in busy.iter_mut().filter(|x| x.t > 580.0) {
            if let Some(u) = x.usage[0].as_mut() {
                u.fds = u.fds.max(26);
            }
        }
        assert!(!evaluate("socks5", 1, 0, &busy, &c).fds_ok());

        let mut dead = flat.clone();
        dead[40].usage[0] = None;
        assert_eq!(evaluate("mix0", 1, 0, &dead, &c).died_at, Some(400.0));
    }

    #[test]
    fn totals_require_every_transfer_intact() {
        let ok = Transfer {
            direction: Direction::Down,
            started_s: 1.0,
            bytes: 100,
            seconds: 2.0,
            outcome: Outcome::Intact,
        };
        let t = Totals::of(&[ok.clone(), ok.clone()], 0);
        assert!(t.ok());
        assert_eq!(t.bytes_down, 200);
        assert!(
            !Totals::of(std::slice::from_ref(&ok), 1).ok(),
            "one still in flight"
        );
        let failed = Transfer {
            outcome: Outcome::Failed {
                curl_exit: Some(28),
                error: "timeout".into(),
            },
            ..ok.clone()
        };
        let t = Totals::of(&[ok, failed], 0);
        assert!(!t.ok());
        assert_eq!(t.failures.len(), 1);
        assert!(!Totals::of(&[], 0).ok());
    }
}
