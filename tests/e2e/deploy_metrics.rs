//! The monitoring files and the operator's guide name only metrics the
//! binaries register, and the guide names every one of them.
//!
//! * Every `loopmix_*` name in `deploy/` (the alert rules, their promtool
//!   unit tests, the Grafana dashboard, the container test script) is
//!   registered by the code (`_bucket`, `_sum` and `_count` of histograms
//!   stripped). An alert on a metric nobody registers never fires, and a
//!   panel on one stays empty: both look healthy.
//! * Every registered name appears in `docs/OPERATING.md`, and every
//!   `loopmix_*` name the guide mentions is registered.
//!
//! **How "registered" is found: by reading the sources, not by scraping.**
//! Starting every binary and scraping `/metrics` looks more real but misses
//! names: a labelled metric (`IntCounterVec`, `IntGaugeVec`) appears in the
//! exposition only once one of its label sets has been used, so a counter of
//! refusals that never happened in the run (exactly the ones alerts watch)
//! is absent, and the test would need every failure to happen first. So
//! the test reads the Rust sources of every workspace crate that goes into
//! a binary and collects the string literal naming the metric in each call
//! of a metric constructor: the `loopmix_net::metrics` helpers every crate
//! registers through (`counter`, `counter_vec`, `gauge`, `gauge_vec`,
//! `float_gauge`, `histogram`, whose first string argument is the name) and
//! the prometheus constructors (`Opts::new`, `HistogramOpts::new`,
//! `IntCounter::new`, ...). Test modules (`#[cfg(test)] mod ...` to the end
//! of a file, and `tests.rs` files) do not count.
//!
//! So that the scan cannot pass by finding nothing, it must find at least
//! [`MIN_REGISTERED`] names, names from each crate that registers metrics,
//! and a few well-known ones by name (one per crate); the `deploy/` scan
//! must find at least [`MIN_DEPLOYED`] names. A broken pattern or a moved
//! directory fails these before it could hide a missing metric.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Workspace crates whose code goes into the binaries (not `tests/`).
const CRATES: &[&str] = &[
    "core",
    "net",
    "node",
    "directory",
    "client",
    "localnet",
    "simulations",
];

/// Crates known to register metrics: each must contribute at least one name.
const REGISTERING_CRATES: &[&str] = &["net", "node", "directory", "client"];

/// Functions whose first string-literal argument is a metric's name.
const CONSTRUCTORS: &[&str] = &[
    "counter",
    "counter_vec",
    "gauge",
    "gauge_vec",
    "float_gauge",
    "histogram",
    "Opts::new",
    "HistogramOpts::new",
    "IntCounter::new",
    "IntGauge::new",
    "Gauge::new",
    "Counter::new",
    "register_int_counter",
    "register_int_counter_vec",
    "register_int_gauge",
    "register_int_gauge_vec",
    "register_gauge",
    "register_histogram",
    "register_histogram_vec",
];

/// Files under `deploy/` that name metrics.
const DEPLOY_FILES: &[&str] = &[
    "deploy/prometheus/alerts.yml",
    "deploy/prometheus/alerts_test.yml",
    "deploy/grafana/loopmix.json",
    "deploy/test.sh",
];

/// About 90 names are registered today.
const MIN_REGISTERED: usize = 80;
/// About 45 names are used by the alerts and the dashboard today.
const MIN_DEPLOYED: usize = 35;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// The source without its test module: from a `#[cfg(test)]` line followed
/// by `mod` to the end of the file (the workspace's convention).
fn without_tests(src: &str) -> &str {
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]" {
            let rest = src[offset + line.len()..].trim_start();
            if rest.starts_with("mod ") || rest.starts_with("pub mod ") {
                return &src[..offset];
            }
        }
        offset += line.len();
    }
    src
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A metric name: `loopmix_` then lower-case letters, digits, underscores.
fn is_metric_name(s: &str) -> bool {
    s.strip_prefix("loopmix_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The first string literal in the argument list that starts at `args`
/// (just after the opening parenthesis), if there is one before its
/// closing parenthesis.
fn first_literal(args: &str) -> Option<&str> {
    let mut depth = 1usize;
    for (i, c) in args.char_indices() {
        match c {
            '"' => {
                let end = args[i + 1..].find('"')? + i + 1;
                return Some(&args[i + 1..end]);
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    None
}

/// Metric names registered in `src` (test modules excluded).
fn registered_in(src: &str) -> BTreeSet<String> {
    let src = without_tests(src);
    let mut names = BTreeSet::new();
    for ctor in CONSTRUCTORS {
        let mut from = 0;
        while let Some(at) = src[from..].find(ctor) {
            let start = from + at;
            from = start + ctor.len();
            // A whole identifier (a path before it is fine: `m::counter(`).
            if src[..start].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let after = src[from..].trim_start();
            let Some(args) = after.strip_prefix('(').or_else(|| after.strip_prefix("!(")) else {
                continue;
            };
            if let Some(lit) = first_literal(args)
                && is_metric_name(lit)
            {
                names.insert(lit.to_string());
            }
        }
    }
    names
}

/// Every registered name, with the crates that register it.
fn registered() -> BTreeMap<String, BTreeSet<&'static str>> {
    let root = workspace();
    let mut all: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "no Rust sources under {krate}/src");
        for f in files {
            let src = std::fs::read_to_string(&f).unwrap();
            for n in registered_in(&src) {
                all.entry(n).or_default().insert(krate);
            }
        }
    }
    all
}

/// Every `loopmix_*` name in `text`, histogram suffixes stripped; prefixes
/// (a token ending in `_`, as in `loopmix_directory_*`) are not names.
fn named_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("loopmix_") {
        let start = from + at;
        let len = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len() - start);
        from = start + len;
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let mut name = &text[start..start + len];
        // A prefix in a pattern (`loopmix_directory_*`, `^loopmix_(a|b)`).
        if name.ends_with('_') {
            continue;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
            }
        }
        if is_metric_name(name) {
            out.insert(name.to_string());
        }
    }
    out
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_scan_finds_what_is_known_to_be_registered() {
    let reg = registered();
    assert!(
        reg.len() >= MIN_REGISTERED,
        "only {} registered names found (expected at least {MIN_REGISTERED}): is the scan broken? {:?}",
        reg.len(),
        reg.keys().collect::<Vec<_>>()
    );
    for krate in REGISTERING_CRATES {
        assert!(
            reg.values().any(|c| c.contains(krate)),
            "no metric found in {krate}/src: is the scan broken?"
        );
    }
    for (name, krate) in [
        ("loopmix_packets_dropped_total", "node"),
        ("loopmix_provider_requests_total", "node"),
        ("loopmix_directory_documents_rejected_total", "net"),
        ("loopmix_liveness_down", "net"),
        ("loopmix_authority_published_epoch", "directory"),
        ("loopmix_authority_peer_failures_total", "directory"),
        ("loopmix_client_link_up", "client"),
        ("loopmix_stream_resets_total", "client"),
    ] {
        assert!(
            reg.get(name).is_some_and(|c| c.contains(krate)),
            "{name} not found as registered in {krate}/src: is the scan broken?"
        );
    }
    // Names used only by tests are not registrations.
    assert!(
        !reg.contains_key("loopmix_x_total"),
        "a test module's metric was counted"
    );
    // The scanner itself, on a known snippet.
    let snippet = r#"
        let a = m::counter_vec(r, "loopmix_a_total", "help", &["x"])?;
        let b = histogram(
            &r,
            "loopmix_b_seconds",
            "help",
            vec![0.1],
        )?;
        let c = IntGauge::new("loopmix_c", "help");
        let not = text.contains("loopmix_d_total");
        let helper = counter(r, name, help);
        #[cfg(test)]
        mod tests { fn t() { counter(&r, "loopmix_e_total", "x"); } }
    "#;
    assert_eq!(
        registered_in(snippet),
        ["loopmix_a_total", "loopmix_b_seconds", "loopmix_c"]
            .map(String::from)
            .into()
    );
}

#[test]
fn every_metric_in_deploy_is_registered() {
    let reg = registered();
    let mut deployed = BTreeSet::new();
    let mut missing = Vec::new();
    for file in DEPLOY_FILES {
        let names = named_in(&read(file));
        assert!(!names.is_empty(), "{file} names no loopmix_ metric");
        for n in names {
            if !reg.contains_key(&n) {
                missing.push(format!("{file}: {n}"));
            }
            deployed.insert(n);
        }
    }
    assert!(
        deployed.len() >= MIN_DEPLOYED,
        "only {} metric names found in deploy/ (expected at least {MIN_DEPLOYED}): is the scan broken? {deployed:?}",
        deployed.len()
    );
    // Histogram suffixes are stripped; the alerts' own names are not metrics.
    assert!(deployed.contains("loopmix_hop_delay_error_seconds"));
    assert!(deployed.contains("loopmix_directory_documents_rejected_total"));
    assert!(!deployed.iter().any(|n| n.ends_with("_bucket")));
    assert!(
        missing.is_empty(),
        "metrics named in deploy/ that no binary registers (an alert on them never fires, a panel stays empty):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn operating_md_documents_every_registered_metric() {
    let reg = registered();
    let doc = read("docs/OPERATING.md");
    let documented = named_in(&doc);
    let undocumented: Vec<&String> = reg.keys().filter(|n| !documented.contains(*n)).collect();
    assert!(
        undocumented.is_empty(),
        "registered metrics not named (in full) in docs/OPERATING.md:\n  {}",
        undocumented
            .iter()
            .map(|n| format!(
                "{n} ({})",
                reg[*n].iter().copied().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|n| !reg.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/OPERATING.md names metrics no binary registers: {unknown:?}"
    );
}
