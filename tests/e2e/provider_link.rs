//! The client ↔ provider link has one shape, busy or idle (issue 17): two
//! clients of the same provider, one receiving nothing and one receiving a
//! stream of messages, measured at the fault relay in front of the provider
//! over the same window: datagrams and bytes per second in both directions
//! and the distribution of datagram sizes. The two must agree within the
//! noise of their Poisson cover traffic.
//!
//! Before issue 17 the busy client sent a `confirm` (7 + 8n bytes) after
//! every pull that brought something and pulled again at once: about three
//! requests per pull interval instead of one, and twice the answer bytes.
//! The checks below fail on that by far (the window's small inbound
//! datagrams and outbound bytes differ by dozens of standard deviations).
//!
//! `LOOPMIX_LINK_WINDOW_S` sets the window (20 s by default, to keep CI
//! short; the figures in the closing note are from 60 s).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use loopmix_client::config::ClientConfig;
use loopmix_client::runtime::Client;
use loopmix_localnet::Preset;
use loopmix_localnet::faults::{DirectionStats, RelayStats, SIZE_BUCKET, SIZE_BUCKETS};
use loopmix_tests::network::{Relays, TestNet};
use prometheus::Registry;

const PRESET: Preset = Preset::Balanced;

/// How many standard deviations two Poisson-driven counts may differ by.
/// At 4σ, a false alarm among the ~50 comparisons is rarer than 1 in 300.
const SIGMAS: f64 = 4.0;

/// A relative difference always allowed: QUIC's acknowledgement-only
/// datagrams (the 0–63-byte bucket) are coalesced depending on timing and
/// scatter more than Poisson counts (10% apart in one 60 s run, 16% in a
/// 20 s one, before every endpoint asked its peer to acknowledge only
/// every 64 packets or 25 ms; now tens per window instead of ~1000). The
/// old link differed by 50–100% in several buckets and in the answer bytes.
const RELATIVE: f64 = 0.15;

/// Whether two counts differ by more than the noise allows.
fn apart(x: f64, y: f64) -> bool {
    (x - y).abs() > (SIGMAS * (x + y).sqrt() + 3.0).max(RELATIVE * x.max(y))
}

fn window() -> Duration {
    let secs = std::env::var("LOOPMIX_LINK_WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

fn client_config(net: &TestNet, name: &str, provider: usize) -> ClientConfig {
    let path = net.net.add_client(name, provider).unwrap();
    ClientConfig::load(&path).unwrap()
}

/// What the relay sees as the client's source address: the client binds
/// the unspecified address and dials the relay on loopback.
fn source(c: &Client) -> SocketAddr {
    let local = c.link_addr().expect("client link address");
    SocketAddr::from((Ipv4Addr::LOCALHOST, local.port()))
}

/// Midpoint of a size bucket (the last is open; its lower bound is used).
fn bucket_mid(i: usize) -> f64 {
    if i + 1 == SIZE_BUCKETS {
        (i * SIZE_BUCKET) as f64
    } else {
        (i * SIZE_BUCKET) as f64 + SIZE_BUCKET as f64 / 2.0
    }
}

fn histogram(d: &DirectionStats) -> String {
    d.sizes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            if i + 1 == SIZE_BUCKETS {
                format!("{}+:{n}", i * SIZE_BUCKET)
            } else {
                format!("{}-{}:{n}", i * SIZE_BUCKET, (i + 1) * SIZE_BUCKET - 1)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares one direction of the two clients; returns the failures.
fn compare(dir: &str, idle: &DirectionStats, busy: &DirectionStats, secs: f64) -> Vec<String> {
    let mut failed = Vec::new();
    let (a, b) = (idle.received as f64, busy.received as f64);
    eprintln!(
        "{dir}: idle {:.1} datagrams/s {:.0} B/s | busy {:.1} datagrams/s {:.0} B/s",
        a / secs,
        idle.bytes as f64 / secs,
        b / secs,
        busy.bytes as f64 / secs
    );
    eprintln!("  idle sizes: {}", histogram(idle));
    eprintln!("  busy sizes: {}", histogram(busy));
    if apart(a, b) {
        failed.push(format!("{dir} datagrams: idle {a} vs busy {b}"));
    }
    // Bytes: a sum of datagram sizes; its variance is at most the sum of
    // the squared sizes (a compound Poisson count), estimated from both
    // histograms.
    let var: f64 = (0..SIZE_BUCKETS)
        .map(|i| (idle.sizes[i] + busy.sizes[i]) as f64 * bucket_mid(i).powi(2))
        .sum();
    let (ba, bb) = (idle.bytes as f64, busy.bytes as f64);
    if (ba - bb).abs() > SIGMAS * var.sqrt() + 3.0 * SIZE_BUCKET as f64 {
        failed.push(format!(
            "{dir} bytes: idle {ba} vs busy {bb} (σ {:.0})",
            var.sqrt()
        ));
    }
    for i in 0..SIZE_BUCKETS {
        let (x, y) = (idle.sizes[i] as f64, busy.sizes[i] as f64);
        if apart(x, y) {
            failed.push(format!(
                "{dir} datagrams of {}..{} bytes: idle {x} vs busy {y}",
                i * SIZE_BUCKET,
                (i + 1) * SIZE_BUCKET
            ));
        }
    }
    failed
}

#[test]
fn idle_and_busy_receivers_look_the_same_on_the_provider_link() {
    let tmp = tempfile::tempdir().unwrap();
    let net = TestNet::start_with(
        tmp.path(),
        Relays::On,
        &["--preset", PRESET.name(), "--epoch-length", "60s"],
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(measure(&net));
}

async fn measure(net: &TestNet) {
    let p = PRESET.params();
    let window = window();
    // The idle client and the busy receiver share provider 0 (so one
    // relay sees both); the sender is a client of provider 1.
    let (idle, _idle_rx) = Client::start(client_config(net, "idle", 0), &Registry::new())
        .await
        .unwrap();
    let (busy, mut busy_rx) = Client::start(client_config(net, "busy", 0), &Registry::new())
        .await
        .unwrap();
    let (sender, _sender_rx) = Client::start(client_config(net, "sender", 1), &Registry::new())
        .await
        .unwrap();
    let provider = net.names(loopmix_localnet::network::Kind::Provider)[0].clone();
    let relay = net.relay(&provider).unwrap();

    // Enough fragments to fill every one of the sender's λ_P slots until
    // the window ends (a message of at most ~690 fragments each).
    let warmup = Duration::from_secs(15);
    let fragments = (p.lambda_p_per_s * (warmup + window).as_secs_f64() * 1.2) as usize + 100;
    let per_message = 600;
    for _ in 0..fragments.div_ceil(per_message) {
        sender
            .send(&busy.address(), vec![7u8; 1514 * per_message], 0)
            .unwrap();
    }
    // Drain the busy receiver's events, as an application does.
    tokio::spawn(async move { while busy_rx.recv().await.is_some() {} });
    let real_slots = || {
        net.labelled(
            &provider,
            "loopmix_provider_pull_slots_total",
            "slot",
            "real",
        )
        .unwrap_or(0.0)
    };

    // Until the stream flows (the first fragments reach the inbox).
    let t0 = Instant::now();
    let start = real_slots();
    while real_slots() - start < 20.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no messages reach the busy receiver: idle {:?} busy {:?} sender {:?}",
            idle.stats(),
            busy.stats(),
            sender.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let snap = || {
        (
            relay
                .source_stats(source(&idle))
                .expect("idle client at the relay"),
            relay
                .source_stats(source(&busy))
                .expect("busy client at the relay"),
            real_slots(),
        )
    };
    let (i0, b0, r0) = snap();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (i1, b1, r1) = snap();
    let secs = started.elapsed().as_secs_f64();
    let (di, db): (RelayStats, RelayStats) = (i1 - i0, b1 - b0);
    let received = (r1 - r0) / secs;

    eprintln!(
        "\n==== provider link, {} preset, {:.0} s window: pull every {:?}, \
         messages handed out at provider {provider}: {received:.1}/s \
         (the busy receiver's stream plus both clients' loops)",
        PRESET.name(),
        secs,
        p.pull_interval
    );
    let mut failed = compare("client -> provider", &di.inbound, &db.inbound, secs);
    failed.extend(compare(
        "provider -> client",
        &di.outbound,
        &db.outbound,
        secs,
    ));
    // The busy receiver really received a stream: at least half the
    // sender's λ_P on top of the loops.
    assert!(
        received >= p.lambda_p_per_s / 2.0,
        "the busy receiver got only {received:.1} messages/s"
    );
    assert!(
        failed.is_empty(),
        "an observer tells the busy receiver from the idle client:\n{}",
        failed.join("\n")
    );
    idle.shutdown();
    busy.shutdown();
    sender.shutdown();
}
