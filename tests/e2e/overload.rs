//! The per-peer rate limit on a real `loopmix-node` process: a neighbour
//! that floods is cut down to its budget (and named in the log once per
//! interval, not per packet), while a second neighbour's packets all arrive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loopmix_core::sphinx::{build_packet, destination_of};
use loopmix_core::topology::{NetworkParams, NodeEntry};
use loopmix_tests::node::{Peer, launch_mixnet};
use sphinx_packet::header::delays::Delay;

const EPOCH: u64 = 1;
const PAYLOAD: usize = 1024;
const RATE: u64 = 100;
const BURST: u64 = 100;

fn bin() -> PathBuf {
    loopmix_tests::workspace_bin("loopmix-node").unwrap()
}

fn packets(n: usize, mix: &NodeEntry, to: &NodeEntry, tag: u8) -> Vec<Vec<u8>> {
    let zero = [Delay::new_from_nanos(0), Delay::new_from_nanos(0)];
    (0..n)
        .map(|i| {
            let mut id = [tag; 16];
            id[..4].copy_from_slice(&(i as u32).to_be_bytes());
            build_packet(
                b"x",
                &[mix, to],
                &destination_of(&to.id, id),
                &zero,
                PAYLOAD,
            )
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited_while_another_peer_gets_through() {
    let tmp = tempfile::tempdir().unwrap();
    let flooder = Peer::bind(EPOCH, false).unwrap();
    let honest = Peer::bind(EPOCH, true).unwrap();
    let params = NetworkParams {
        epoch: EPOCH,
        layers: 1,
        mean_hop_delay_ms: 0.0,
        lambda_p_per_s: 0.0,
        lambda_l_per_s: 0.0,
        lambda_d_per_s: 0.0,
        lambda_m_per_s: 0.0,
        payload_size: PAYLOAD,
    };
    let net = launch_mixnet(
        &bin(),
        tmp.path(),
        params,
        vec![flooder.entry().unwrap(), honest.entry().unwrap()],
        |c| {
            // A small budget so a test-sized flood exceeds it. Shedding
            // stale packets is off: on a busy test machine the honest
            // packets could wait behind the admitted flood, and this test
            // is about admission, not about speed.
            c.set("mixing.peer_rate", RATE as i64)
                .set("mixing.peer_burst", BURST as i64)
                .set("mixing.ingress_max_wait", "0s")
                .set("cover.enabled", false);
        },
    )
    .unwrap();
    let node = &net.nodes[0];
    let cfg = loopmix_node::config::NodeConfig::load(&net.dirs[0].config).unwrap();
    assert_eq!(
        (
            u64::from(cfg.mixing.peer_rate),
            u64::from(cfg.mixing.peer_burst)
        ),
        (RATE, BURST)
    );
    flooder.adopt(&net.doc);
    honest.adopt(&net.doc);
    let mix = net.doc.nodes[0].clone();
    let (flooder_entry, honest_entry) = (net.doc.nodes[1].clone(), net.doc.nodes[2].clone());

    // The flood ends at the flooder itself (it only counts frames).
    let (m, f, h) = (mix.clone(), flooder_entry.clone(), honest_entry.clone());
    let (flood, fair) =
        tokio::task::spawn_blocking(move || (packets(2000, &m, &f, 1), packets(60, &m, &h, 2)))
            .await
            .unwrap();

    let started = Instant::now();
    for p in flood {
        flooder.send(&mix, EPOCH, p).unwrap();
    }
    // The honest peer stays well inside its own budget: 60 packets at
    // ~50/s, interleaved with the flood.
    for p in fair {
        honest.send(&mix, EPOCH, p).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = honest.wait_deliveries(60, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 60, "every packet of the honest peer arrives");

    let limited = node
        .wait_metric(
            "loopmix_packets_dropped_total{reason=\"rate_limited\"}",
            Duration::from_secs(30),
            |v| v >= 1.0,
        )
        .unwrap();
    // Let the flooder's admitted packets come back, then check the budget:
    // at most the burst plus the rate over the time it has been flooding.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let limited = node
        .metric("loopmix_packets_dropped_total{reason=\"rate_limited\"}")
        .unwrap()
        .max(limited);
    let budget = BURST + RATE * (started.elapsed().as_secs() + 1);
    let admitted = 2000.0 - limited;
    assert!(
        admitted <= budget as f64,
        "flooder got {admitted} packets in, budget {budget}"
    );
    assert!(flooder.frames_received() as f64 <= admitted);
    assert_eq!(
        node.metric("loopmix_packets_dropped_total{reason=\"overload\"}")
            .unwrap(),
        0.0
    );

    // Named once per interval (10 s) with its drop count, not per packet.
    node.wait_metric(
        "loopmix_ingress_rate_limited_peers",
        Duration::from_secs(30),
        |v| v == 1.0,
    )
    .unwrap();
    let short = flooder.id().short();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let log = node.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("over its rate limit"))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "one line per interval: {lines:?}"
    );
    assert!(lines.iter().all(|l| l.contains(&short)), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains(&honest.id().short())),
        "{lines:?}"
    );
    flooder.close().await;
    honest.close().await;
}
