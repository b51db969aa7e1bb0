//! Measured against the model, end to end
//! (`cargo bench -p loopmix-tests --bench presets`; `PRESETS=balanced` or
//! `PRESETS=speed,balanced,privacy` selects, all three by default;
//! `EARLY_REPLY=never,known,always` runs each preset once per SOCKS5
//! `early_reply` setting, the client's default when unset).
//!
//! For each preset: a real localnet (`--preset P`, the exit allowing
//! 127.0.0.1), then, next to what the simulator predicts for the same
//! parameters ([`Preset::prediction`], [`Preset::params`]):
//!
//! * one-way message latency between two in-process clients at different
//!   providers (median, p95), next to the predicted mixing latency;
//! * SOCKS5 time to first byte (`curl --socks5-hostname`, 1 kB): the first
//!   request to the origin, then the median of 5 more (a target the
//!   session has reached, which `early_reply = "known"` answers at once);
//! * goodput of a 1 MiB download as a ratio of λ_P × stream bytes per
//!   packet;
//! * the load time of a fixed 26-resource, 200 KB page in headless
//!   `chromium` through the proxy (installed with apt-get when missing and
//!   root; skipped with a message otherwise), twice: a first load, then a
//!   fresh browser loading it again through the same proxy session;
//! * the gap between measured and predicted latency, term by term, from
//!   the processes' own histograms (`/metrics`) around the latency probes:
//!   slot wait, mixing, per-hop processing, inbox wait, retransmissions and
//!   what is left.
//!
//! Every wait is bounded; a part that fails is reported and the benchmark
//! exits non-zero after printing everything else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use loopmix_client::config::{ClientConfig, EarlyReply};
use loopmix_client::engine::reply_fragment_size;
use loopmix_client::runtime::{Client, ClientEvent};
use loopmix_client::stream::frame::{DATA_OVERHEAD, HEADER_LEN};
use loopmix_core::e2e::envelope::ENVELOPE_HEADER_LEN;
use loopmix_localnet::network::Kind;
use loopmix_localnet::{PAYLOAD_SIZE, Preset};
use loopmix_tests::histogram::{Histogram, mean, quantile};
use loopmix_tests::http::{Framing, Origin, curl_socks, file_bytes, http_get};
use loopmix_tests::network::{Relays, TestNet};
use loopmix_tests::page::{self, PAGE_BYTES, PAGE_RESOURCES, PageResult, PageServer};
use prometheus::Registry;
use tokio::sync::mpsc;

/// One-way latency probes per preset.
const PROBES: usize = 160;

/// Minimum ack timeout of a data fragment (PROTOCOL.md 6.4: 1.5 × the
/// sampled delays + 1.5 s + pull_interval): no message arriving sooner
/// can have needed a retransmission.
const ACK_TIMEOUT_FLOOR: Duration = Duration::from_millis(1500);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let presets = match selected() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let modes = match early_replies() {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let chromium = page::chromium();
    let baseline = chromium.as_ref().ok().map(|c| direct_load(c));
    let mut done = Vec::new();
    for p in presets {
        for &early in &modes {
            let t = Instant::now();
            let r = run_preset(
                p,
                early,
                chromium.as_ref().map_err(Clone::clone),
                baseline.as_ref(),
            );
            println!(
                "preset {} done in {:.0} s\n",
                r.label(),
                t.elapsed().as_secs_f64()
            );
            done.push(r);
        }
    }
    summary(&done, baseline.as_ref());
    let failures: Vec<String> = done.iter().flat_map(|r| r.failures.clone()).collect();
    if !failures.is_empty() {
        eprintln!("FAILED:\n  {}", failures.join("\n  "));
        std::process::exit(1);
    }
}

/// `PRESETS` (comma-separated names), all three by default.
fn selected() -> anyhow::Result<Vec<Preset>> {
    let Ok(list) = std::env::var("PRESETS") else {
        return Ok(vec![Preset::Speed, Preset::Balanced, Preset::Privacy]);
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            [Preset::Speed, Preset::Balanced, Preset::Privacy]
                .into_iter()
                .find(|p| p.name() == s)
                .ok_or_else(|| anyhow!("PRESETS: unknown preset {s:?} (speed, balanced, privacy)"))
        })
        .collect()
}

/// `EARLY_REPLY` (comma-separated `never`, `known`, `always`); unset: one
/// run with the client's default.
fn early_replies() -> anyhow::Result<Vec<Option<EarlyReply>>> {
    let Ok(list) = std::env::var("EARLY_REPLY") else {
        return Ok(vec![None]);
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            [EarlyReply::Never, EarlyReply::Known, EarlyReply::Always]
                .into_iter()
                .find(|e| e.name() == s)
                .map(Some)
                .ok_or_else(|| anyhow!("EARLY_REPLY: unknown {s:?} (never, known, always)"))
        })
        .collect()
}

/// The page loaded without the mixnet: what the browser itself costs.
fn direct_load(chromium: &Path) -> Result<(PageResult, f64), String> {
    let server = PageServer::start().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    page::load(
        chromium,
        dir.path(),
        None,
        &server.url(),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("{e:#}"))
}

/// Everything measured at one preset.
struct Run {
    preset: Preset,
    /// The proxy's `early_reply`, when set for this run.
    early: Option<EarlyReply>,
    latency: Option<Latency>,
    /// The first request's, then the next five.
    ttfb: Option<(f64, Vec<f64>)>,
    /// Seconds, bytes/s, ratio of the bound.
    goodput: Option<(f64, f64, f64)>,
    /// The first load, then a fresh browser's through the same session.
    page: Result<(PageResult, f64), String>,
    page_again: Result<(PageResult, f64), String>,
    failures: Vec<String>,
}

impl Run {
    fn label(&self) -> String {
        match self.early {
            Some(e) => format!("{}/{}", self.preset.name(), e.name()),
            None => self.preset.name().to_string(),
        }
    }
}

/// The latency probes and the decomposition of their mean.
struct Latency {
    /// Seconds, in arrival order.
    samples: Vec<f64>,
    lost: usize,
    terms: Vec<Term>,
    retransmissions: f64,
}

/// One term of the decomposition, seconds.
struct Term {
    name: &'static str,
    mean: f64,
    median: Option<f64>,
}

fn run_preset(
    p: Preset,
    early: Option<EarlyReply>,
    chromium: Result<&std::path::PathBuf, String>,
    baseline: Option<&Result<(PageResult, f64), String>>,
) -> Run {
    let mut run = Run {
        preset: p,
        early,
        latency: None,
        ttfb: None,
        goodput: None,
        page: Err("not run".into()),
        page_again: Err("not run".into()),
        failures: Vec::new(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start(Framing::ContentLength);
    let pages = PageServer::start().unwrap();
    let t = Instant::now();
    let mut args = vec!["--preset", p.name(), "--exit-allow", "127.0.0.1:*"];
    if let Some(e) = early {
        args.extend(["--socks-early-reply", e.name()]);
    }
    let net = match TestNet::start_with(tmp.path(), Relays::Off, &args) {
        Ok(n) => n,
        Err(e) => {
            run.failures
                .push(format!("{}: localnet did not start: {e:#}", p.name()));
            return run;
        }
    };
    eprintln!(
        "[{}] localnet up in {:.0} s",
        p.name(),
        t.elapsed().as_secs_f64()
    );
    let fail = |what: &str, e: anyhow::Error| {
        let msg = format!("{}: {what}: {e:#}", p.name());
        eprintln!("[{}] FAILED {msg}", p.name());
        msg
    };
    let t = Instant::now();
    match latency(&net, p) {
        Ok(l) => run.latency = Some(l),
        Err(e) => run.failures.push(fail("message latency", e)),
    }
    eprintln!(
        "[{}] latency probes: {:.0} s",
        p.name(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    match ttfb(net.socks, &origin) {
        Ok(v) => run.ttfb = Some(v),
        Err(e) => run.failures.push(fail("time to first byte", e)),
    }
    eprintln!(
        "[{}] time to first byte: {:.0} s",
        p.name(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    match goodput(net.socks, &origin, p) {
        Ok(g) => run.goodput = Some(g),
        Err(e) => run.failures.push(fail("1 MiB download", e)),
    }
    eprintln!(
        "[{}] 1 MiB download: {:.0} s",
        p.name(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    // The page twice: a first load (no target known to the session yet),
    // then a fresh browser (new connections, empty cache) through the
    // same proxy session, whose targets it has reached by then.
    let load = || match &chromium {
        Err(why) => Err(format!("SKIPPED: {why}")),
        Ok(c) => match baseline {
            Some(Err(e)) => Err(format!(
                "SKIPPED: the page does not load even directly: {e}"
            )),
            _ => page::load(
                c,
                tmp.path(),
                Some(net.socks),
                &pages.url(),
                Duration::from_secs(150),
            )
            .and_then(|(r, wall)| {
                ensure!(
                    r.complete(),
                    "not every resource arrived: {r:?} (want {} loaded)",
                    PAGE_RESOURCES - 1
                );
                Ok((r, wall))
            })
            .map_err(|e| format!("{e:#}")),
        },
    };
    run.page = load();
    run.page_again = load();
    eprintln!(
        "[{}] page loads: {:.0} s",
        p.name(),
        t.elapsed().as_secs_f64()
    );
    for (what, r) in [
        ("page load", &run.page),
        ("page load again", &run.page_again),
    ] {
        if let Err(e) = r
            && !e.starts_with("SKIPPED")
        {
            run.failures.push(format!("{}: {what}: {e}", p.name()));
        }
    }
    print_preset(&run);
    drop(net);
    run
}

/// Every mix's and provider's `/metrics`, and the in-process sender's.
type Snapshot = BTreeMap<String, String>;

fn snapshot(net: &TestNet, sender: &Registry) -> Snapshot {
    let mut out: Snapshot = net
        .names(Kind::Mix)
        .into_iter()
        .chain(net.names(Kind::Provider))
        .filter_map(|n| {
            let text = http_get(net.addr(&n).ok()?, "/metrics").ok()?;
            Some((n, text))
        })
        .collect();
    out.insert("alice".into(), loopmix_net::metrics::render(sender));
    out
}

/// Histogram `name` observed at `members` between the snapshots.
fn observed(before: &Snapshot, after: &Snapshot, members: &[&str], name: &str) -> Histogram {
    let mut h = Histogram::default();
    for m in members {
        let parse = |s: &Snapshot| s.get(*m).and_then(|t| Histogram::parse(t, name));
        if let (Some(a), Some(b)) = (parse(after), parse(before)) {
            h.merge(&a.since(&b));
        }
    }
    h
}

fn counter(s: &Snapshot, member: &str, series: &str) -> f64 {
    s.get(member)
        .and_then(|t| loopmix_net::scrape::series(t, series))
        .unwrap_or(0.0)
}

/// One-way latency of [`PROBES`] one-packet messages from alice (at
/// provider0) to bob (at provider1), sent a few λ_P slots apart so that
/// they do not queue behind each other, and the decomposition.
fn latency(net: &TestNet, p: Preset) -> anyhow::Result<Latency> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sender = Registry::new();
    let (samples, lost, before, after) = rt.block_on(probe(net, p, &sender))?;
    let retransmissions = counter(
        &after,
        "alice",
        "loopmix_client_packets_sent_total{kind=\"retransmission\"}",
    ) - counter(
        &before,
        "alice",
        "loopmix_client_packets_sent_total{kind=\"retransmission\"}",
    );
    let terms = decompose(p, &samples, &before, &after, retransmissions);
    Ok(Latency {
        samples,
        lost,
        terms,
        retransmissions,
    })
}

type Probed = (Vec<f64>, usize, Snapshot, Snapshot);

async fn probe(net: &TestNet, p: Preset, sender: &Registry) -> anyhow::Result<Probed> {
    let config = |name: &str, provider: usize| -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::load(&net.net.add_client(name, provider)?)?)
    };
    let start = |cfg: ClientConfig, r: Registry| async move {
        tokio::time::timeout(Duration::from_secs(60), Client::start(cfg, &r))
            .await
            .map_err(|_| anyhow!("client did not start within 60 s"))?
            .map_err(anyhow::Error::from)
    };
    let (a, _a_rx) = start(config("alice", 0)?, sender.clone()).await?;
    let (b, mut b_rx) = start(config("bob", 1)?, Registry::new()).await?;
    let result = probe_with(net, p, sender, &a, &b, &mut b_rx).await;
    a.shutdown();
    b.shutdown();
    result
}

async fn probe_with(
    net: &TestNet,
    p: Preset,
    sender: &Registry,
    a: &Client,
    b: &Client,
    b_rx: &mut mpsc::Receiver<ClientEvent>,
) -> anyhow::Result<Probed> {
    // Warm-up: bob's inbox exists and both links carry traffic.
    a.send(&b.address(), b"warm-up".to_vec(), 0)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        match tokio::time::timeout_at(deadline, b_rx.recv()).await {
            Ok(Some(ClientEvent::Received { body, .. })) if body == b"warm-up" => break,
            Ok(Some(_)) => {}
            Ok(None) => bail!("bob's client stopped"),
            Err(_) => bail!("the warm-up message did not arrive within 90 s"),
        }
    }
    let params = p.params();
    let gap = Duration::from_secs_f64((4.0 / params.lambda_p_per_s).max(0.25));
    let before = snapshot(net, sender);
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut latencies = vec![None; PROBES];
    let mut next_send = tokio::time::Instant::now();
    let limit = gap * PROBES as u32 + Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + limit;
    while latencies.iter().any(Option::is_none) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep_until(next_send), if sent_at.len() < PROBES => {
                let i = sent_at.len() as u16;
                a.send(&b.address(), i.to_le_bytes().to_vec(), 0)?;
                sent_at.push(Instant::now());
                next_send += gap;
            }
            ev = b_rx.recv() => match ev {
                Some(ClientEvent::Received { body, .. }) => {
                    if let [x, y] = body[..]
                        && let Some(slot) = latencies.get_mut(usize::from(u16::from_le_bytes([x, y])))
                        && slot.is_none()
                        && let Some(t) = sent_at.get(usize::from(u16::from_le_bytes([x, y])))
                    {
                        *slot = Some(t.elapsed().as_secs_f64());
                    }
                }
                Some(_) => {}
                None => bail!("bob's client stopped"),
            }
        }
    }
    let samples: Vec<f64> = latencies.iter().flatten().copied().collect();
    let lost = PROBES - samples.len();
    ensure!(
        samples.len() * 2 >= PROBES,
        "only {} of {PROBES} probes arrived within {limit:?}",
        samples.len()
    );
    // The last pull answers and acks are counted by now.
    tokio::time::sleep(params.pull_interval * 2).await;
    Ok((samples, lost, before, snapshot(net, sender)))
}

/// The mean one-way latency, term by term (seconds):
///
/// * slot wait: the sender's `loopmix_client_slot_wait_seconds`;
/// * mixing: the model's 4 delayed hops, Gamma(4, μ) (mean 4/μ);
/// * processing: each of the 4 forwarding hops' `hop_delay_error`
///   (ingress queue, Sphinx, lateness of the delay queue) at the sender's
///   provider and the mixes, plus the last hop's Sphinx unwrap and durable
///   store at the recipient's provider;
/// * inbox wait: the recipient's provider's
///   `loopmix_provider_inbox_wait_seconds` (stored → handed out in a pull);
/// * retransmissions: for the probes that arrived after the ack-timeout
///   floor (only those can have needed one), their excess over the median,
///   spread over all probes; 0 when the sender retransmitted nothing;
/// * residual: the rest (links, the pull's round trip, the clients' own
///   processing, and the sampling error of the mixing term).
fn decompose(
    p: Preset,
    samples: &[f64],
    before: &Snapshot,
    after: &Snapshot,
    retransmissions: f64,
) -> Vec<Term> {
    let params = p.params();
    let hop = params.mean_hop_delay_ms / 1000.0;
    let total = mean(samples).unwrap_or(0.0);
    let slot = observed(
        before,
        after,
        &["alice"],
        "loopmix_client_slot_wait_seconds",
    );
    let forwarders: Vec<String> = std::iter::once("provider0".to_string())
        .chain(after.keys().filter(|k| k.starts_with("mix")).cloned())
        .collect();
    let forwarders: Vec<&str> = forwarders.iter().map(String::as_str).collect();
    let hop_error = observed(
        before,
        after,
        &forwarders,
        "loopmix_hop_delay_error_seconds",
    );
    let last = |name| {
        observed(before, after, &["provider1"], name)
            .mean()
            .unwrap_or(0.0)
    };
    let processing = 4.0 * hop_error.mean().unwrap_or(0.0)
        + last("loopmix_sphinx_processing_seconds")
        + last("loopmix_provider_store_seconds");
    let inbox = observed(
        before,
        after,
        &["provider1"],
        "loopmix_provider_inbox_wait_seconds",
    );
    let retx = if retransmissions > 0.0 {
        let floor = (ACK_TIMEOUT_FLOOR + params.pull_interval).as_secs_f64();
        let median = quantile(samples, 0.5).unwrap_or(0.0);
        samples
            .iter()
            .filter(|&&x| x > floor)
            .map(|x| x - median)
            .sum::<f64>()
            / samples.len().max(1) as f64
    } else {
        0.0
    };
    let mut terms = vec![
        Term {
            name: "slot wait (queued -> sender's λ_P slot)",
            mean: slot.mean().unwrap_or(0.0),
            median: slot.quantile(0.5),
        },
        Term {
            name: "mixing (4 hops, model Gamma(4, μ))",
            mean: 4.0 * hop,
            median: Some(p.prediction().median_s),
        },
        Term {
            name: "processing (5 hops: queues, Sphinx, store)",
            mean: processing,
            median: None,
        },
        Term {
            name: "inbox wait (stored -> recipient's pull)",
            mean: inbox.mean().unwrap_or(0.0),
            median: inbox.quantile(0.5),
        },
        Term {
            name: "retransmissions (est.)",
            mean: retx,
            median: None,
        },
    ];
    let explained: f64 = terms.iter().map(|t| t.mean).sum();
    terms.push(Term {
        name: "residual (links, pull round trip, clients)",
        mean: total - explained,
        median: None,
    });
    terms
}

/// Time to first byte of `GET /1000`: the first request, then 5 more.
fn ttfb(socks: SocketAddr, origin: &Origin) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut first = 0.0;
    let mut out = Vec::new();
    for i in 0..6 {
        let f = curl_socks(socks, &origin.url("/1000"), 90)?;
        ensure!(
            f.code == 0,
            "request {i}: curl {} (90 s limit): {}",
            f.code,
            f.stderr
        );
        ensure!(f.body == file_bytes(1000), "request {i}: wrong bytes");
        if i > 0 {
            out.push(f.ttfb);
        } else {
            first = f.ttfb;
        }
    }
    Ok((first, out))
}

/// Stream bytes one reply packet carries (what the exit sends back in).
fn stream_bytes_per_packet() -> usize {
    reply_fragment_size(PAYLOAD_SIZE) - ENVELOPE_HEADER_LEN - HEADER_LEN - DATA_OVERHEAD
}

/// A 1 MiB download: seconds, goodput after the first byte (bytes/s), and
/// its ratio to λ_P × stream bytes per packet.
fn goodput(socks: SocketAddr, origin: &Origin, p: Preset) -> anyhow::Result<(f64, f64, f64)> {
    let n = 1 << 20;
    let f = curl_socks(socks, &origin.url(&format!("/{n}")), 200)?;
    ensure!(f.code == 0, "curl {} (200 s limit): {}", f.code, f.stderr);
    ensure!(f.body == file_bytes(n), "wrong bytes");
    let g = n as f64 / (f.total - f.ttfb).max(1e-3);
    let bound = p.params().lambda_p_per_s * stream_bytes_per_packet() as f64;
    Ok((f.total, g, g / bound))
}

fn ms(s: f64) -> String {
    format!("{:.0} ms", s * 1000.0)
}

fn print_preset(run: &Run) {
    let p = run.preset;
    let q = p.params();
    let pred = p.prediction();
    println!(
        "\n=== preset {}: 1/μ {} ms per hop, λ_P {}/s, λ_L {}/s, λ_D {}/s, λ_M {}/s, pull every {:?}, payload {} B, early_reply {} ===",
        p.name(),
        q.mean_hop_delay_ms,
        q.lambda_p_per_s,
        q.lambda_l_per_s,
        q.lambda_d_per_s,
        q.lambda_m_per_s,
        q.pull_interval,
        PAYLOAD_SIZE,
        run.early.map_or("default", EarlyReply::name)
    );
    println!(
        "{:<34} {:<28} simulator predicts (100 clients)",
        "", "measured"
    );
    match &run.latency {
        Some(l) => {
            let s = &l.samples;
            println!(
                "{:<34} {:<28} mixing median {}",
                format!("message latency, one way (N={})", s.len()),
                format!("median {}", ms(quantile(s, 0.5).unwrap_or(0.0))),
                ms(pred.median_s)
            );
            println!(
                "{:<34} {:<28} mixing p95    {}",
                "",
                format!("p95    {}", ms(quantile(s, 0.95).unwrap_or(0.0))),
                ms(pred.p95_s)
            );
            println!(
                "{:<34} {:<28} mixing mean   {}",
                "",
                format!("mean   {}", ms(mean(s).unwrap_or(0.0))),
                ms(4.0 * q.mean_hop_delay_ms / 1000.0)
            );
            if l.lost > 0 {
                println!("{:<34} {} probes not arrived in time", "", l.lost);
            }
        }
        None => println!("message latency: FAILED (see above)"),
    }
    match &run.ttfb {
        Some((first, t)) => println!(
            "{:<34} {:<28} –",
            "SOCKS5 time to first byte",
            format!(
                "first {first:.2} s, then median {:.2} s (min {:.2}, max {:.2})",
                quantile(t, 0.5).unwrap_or(0.0),
                quantile(t, 0.0).unwrap_or(0.0),
                quantile(t, 1.0).unwrap_or(0.0)
            )
        ),
        None => println!("SOCKS5 time to first byte: FAILED"),
    }
    let bound = q.lambda_p_per_s * stream_bytes_per_packet() as f64;
    match run.goodput {
        Some((secs, g, ratio)) => println!(
            "{:<34} {:<28} bound λ_P × {} B = {:.1} KB/s",
            "1 MiB download",
            format!("{secs:.1} s, {:.1} KB/s = {ratio:.2} × bound", g / 1000.0),
            stream_bytes_per_packet(),
            bound / 1000.0
        ),
        None => println!("1 MiB download: FAILED"),
    }
    for (what, page) in [
        ("page", &run.page),
        ("page again, new browser", &run.page_again),
    ] {
        match page {
            Ok((r, wall)) => println!(
                "{:<34} {:<28} –",
                format!("{what}, {PAGE_RESOURCES} res., {} KB", PAGE_BYTES / 1000),
                format!(
                    "load {:.2} s, wall {wall:.2} s, {}/{} ok",
                    r.load_ms / 1000.0,
                    r.loaded + 1,
                    PAGE_RESOURCES
                )
            ),
            Err(e) => println!("{what} load: {e}"),
        }
    }
    println!(
        "{:<34} {:<28} ε {:.2}",
        "sender unlinkability", "–", pred.epsilon
    );
    let Some(l) = &run.latency else { return };
    let total = mean(&l.samples).unwrap_or(0.0);
    println!(
        "\nwhere the mean one-way latency goes ({} retransmissions during the probes):",
        l.retransmissions
    );
    println!(
        "{:<46} {:>9} {:>10} {:>7}",
        "term", "mean ms", "median ms", "share"
    );
    for t in &l.terms {
        println!(
            "{:<46} {:>9.1} {:>10} {:>6.1}%",
            t.name,
            t.mean * 1000.0,
            t.median
                .map_or("–".to_string(), |m| format!("{:.1}", m * 1000.0)),
            100.0 * t.mean / total
        );
    }
    println!(
        "{:<46} {:>9.1} {:>10.1} {:>6.1}%",
        "total (measured)",
        total * 1000.0,
        quantile(&l.samples, 0.5).unwrap_or(0.0) * 1000.0,
        100.0
    );
    let (share, dominant) = non_mixing(l);
    println!(
        "non-mixing share (total − mixing) / total: {:.1}%, largest part: {dominant}",
        share * 100.0
    );
}

/// (total − mixing) / total, and the largest non-mixing term.
fn non_mixing(l: &Latency) -> (f64, &'static str) {
    let total = mean(&l.samples).unwrap_or(0.0);
    let mixing = l
        .terms
        .iter()
        .find(|t| t.name.starts_with("mixing"))
        .map_or(0.0, |t| t.mean);
    let dominant = l
        .terms
        .iter()
        .filter(|t| !t.name.starts_with("mixing"))
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .map_or("–", |t| t.name);
    ((total - mixing) / total, dominant)
}

fn summary(runs: &[Run], baseline: Option<&Result<(PageResult, f64), String>>) {
    println!("=== summary: measured against the model ===");
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12} {:>7} {:>12}  largest non-mixing term",
        "preset",
        "pred med",
        "meas med",
        "pred p95",
        "meas p95",
        "non-mix",
        "TTFB 1st/med",
        "goodput",
        "page 1st/2nd"
    );
    for r in runs {
        let pred = r.preset.prediction();
        let (med, p95, share, dominant) = match &r.latency {
            Some(l) => {
                let (share, dominant) = non_mixing(l);
                (
                    ms(quantile(&l.samples, 0.5).unwrap_or(0.0)),
                    ms(quantile(&l.samples, 0.95).unwrap_or(0.0)),
                    format!("{:.0}%", share * 100.0),
                    dominant,
                )
            }
            None => ("–".into(), "–".into(), "–".into(), "–"),
        };
        let page = |r: &Result<(PageResult, f64), String>| {
            r.as_ref()
                .map_or("–".into(), |(p, _)| format!("{:.1}", p.load_ms / 1000.0))
        };
        println!(
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12} {:>7} {:>12}  {dominant}",
            r.label(),
            ms(pred.median_s),
            med,
            ms(pred.p95_s),
            p95,
            share,
            r.ttfb.as_ref().map_or("–".into(), |(first, t)| format!(
                "{first:.2}/{:.2} s",
                quantile(t, 0.5).unwrap_or(0.0)
            )),
            r.goodput
                .map_or("–".into(), |(_, _, ratio)| format!("{ratio:.2}×")),
            format!("{}/{} s", page(&r.page), page(&r.page_again)),
        );
    }
    println!(
        "(goodput: ratio of λ_P × stream bytes per packet; page: load event of the {PAGE_RESOURCES}-resource page)"
    );
    match baseline {
        Some(Ok((r, wall))) => println!(
            "page without the mixnet: load {:.2} s, chromium wall {wall:.2} s",
            r.load_ms / 1000.0
        ),
        Some(Err(e)) => println!("page without the mixnet: FAILED: {e}"),
        None => {}
    }
}
