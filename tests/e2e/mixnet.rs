//! End-to-end tests: real `loopmix-node` processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use loopmix_core::keys::IdentityKeypair;
use loopmix_core::wire::{PREAMBLE, encode_frame};
use loopmix_tests::mixnet::*;
use loopmix_tests::node::{NodeProcess, Peer, init_node, write_topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_crosses_three_mixes_intact_and_holding_times_follow_headers() {
    let net = start_net(params(20.0, 0.0)).await;
    let n = 150;
    let mean = Duration::from_millis(20);
    let mut intended = std::collections::HashMap::new();
    let mut sent_at = std::collections::HashMap::new();
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&(i as u32).to_be_bytes());
        let msg = format!("message number {i}");
        let (pkt, delays) = net.random_packet(msg.as_bytes(), id, mean);
        intended.insert(id, delays.iter().sum::<Duration>());
        sent_at.insert(id, Instant::now());
        net.send(pkt);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = net.peer.wait_deliveries(n, Duration::from_secs(60)).await;
    assert_eq!(got.len(), n, "every packet arrives");
    let mut total_observed = 0.0;
    let mut total_intended = 0.0;
    for d in &got {
        let i = u32::from_be_bytes(d.identifier[..4].try_into().unwrap());
        assert_eq!(
            d.plaintext,
            format!("message number {i}").as_bytes(),
            "payload intact"
        );
        let observed = d.at - sent_at[&d.identifier];
        let want = intended[&d.identifier];
        assert!(
            observed + Duration::from_millis(2) >= want,
            "held at least the header delays"
        );
        total_observed += observed.as_secs_f64();
        total_intended += want.as_secs_f64();
    }
    let mean_obs = total_observed / n as f64;
    let mean_int = total_intended / n as f64;
    // Three hops of Exp(20 ms): 60 ms expected; generous bounds for a noisy box.
    assert!((0.03..0.10).contains(&mean_int), "sampled mean {mean_int}");
    assert!(
        mean_obs - mean_int < 0.05,
        "observed mean {mean_obs:.4}s vs intended {mean_int:.4}s"
    );
    for node in &net.nodes {
        assert!(node.metric("loopmix_packets_forwarded_total").unwrap() >= n as f64);
        let sum = node.metric("loopmix_hop_delay_error_seconds_sum").unwrap();
        let count = node
            .metric("loopmix_hop_delay_error_seconds_count")
            .unwrap();
        assert!(
            sum / count < 0.02,
            "mean per-hop delay error {}",
            sum / count
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_packet_is_dropped_and_counted() {
    let net = start_net(params(1.0, 0.0)).await;
    let pkt = net.packet(b"once", [1; 16], &[Duration::ZERO; 3]);
    net.send(pkt.clone());
    net.peer.wait_deliveries(1, Duration::from_secs(20)).await;
    net.send(pkt);
    net.nodes[0]
        .wait_metric(
            "loopmix_packets_dropped_total{reason=\"replay\"}",
            Duration::from_secs(20),
            |v| v == 1.0,
        )
        .unwrap();
    // A fresh packet still goes through; the replay never did.
    net.send(net.packet(b"fresh", [2; 16], &[Duration::ZERO; 3]));
    let got = net.peer.wait_deliveries(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        net.peer.deliveries().len(),
        2,
        "the replay was not delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_and_the_node_keeps_forwarding() {
    let net = start_net(params(1.0, 0.0)).await;
    let m1 = net.mix(1);
    let conn = net.peer.transport.connect(m1.id, m1.address).await.unwrap();

    // A stream that is not loopmix at all.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    s.finish().unwrap();

    // A loopmix stream with a wrong-size frame, an unknown kind, a packet
    // that fails the Sphinx MAC, a frame for an unknown key, then a good one.
    let mut s = conn.open_uni().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&PREAMBLE);
    encode_frame(EPOCH, &[0u8; 100], &mut buf);
    let mut bad_kind = bytes::BytesMut::new();
    encode_frame(EPOCH, &[0u8; 10], &mut bad_kind);
    bad_kind[0] = 0x42;
    buf.extend_from_slice(&bad_kind);
    let mut tampered = net.packet(b"x", [3; 16], &[Duration::ZERO; 3]);
    tampered[100] ^= 0xff;
    encode_frame(EPOCH, &tampered, &mut buf);
    encode_frame(
        EPOCH + 7,
        &net.packet(b"y", [4; 16], &[Duration::ZERO; 3]),
        &mut buf,
    );
    encode_frame(
        EPOCH,
        &net.packet(b"good", [5; 16], &[Duration::ZERO; 3]),
        &mut buf,
    );
    s.write_all(&buf).await.unwrap();
    s.finish().unwrap();

    let got = net.peer.wait_deliveries(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].plaintext, b"good");
    let node = &net.nodes[0];
    node.wait_metric(
        "loopmix_malformed_frames_total{error=\"bad_preamble\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    )
    .unwrap();
    assert_eq!(
        node.metric("loopmix_malformed_frames_total{error=\"wrong_size\"}")
            .unwrap(),
        1.0
    );
    assert_eq!(
        node.metric("loopmix_malformed_frames_total{error=\"unknown_kind\"}")
            .unwrap(),
        1.0
    );
    // wrong size + unknown kind + failed MAC
    assert_eq!(net.dropped(0, "malformed"), 3.0);
    assert_eq!(net.dropped(0, "unknown_key"), 1.0);

    // And it still forwards after all that.
    net.send(net.packet(b"after", [6; 16], &[Duration::ZERO; 3]));
    assert_eq!(
        net.peer
            .wait_deliveries(2, Duration::from_secs(20))
            .await
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_peer_is_refused() {
    let net = start_net(params(1.0, 0.0)).await;
    let m1 = net.mix(1);
    // A stranger whose key is not in the topology.
    let stranger = Peer::bind(EPOCH, false).unwrap();
    // TLS 1.3: the client may finish its side before the server rejects its
    // certificate, so either the connect fails or the connection is closed.
    if let Ok(conn) = stranger.transport.connect(m1.id, m1.address).await {
        if let Ok(mut s) = conn.open_uni().await {
            let mut buf = bytes::BytesMut::new();
            buf.extend_from_slice(&PREAMBLE);
            encode_frame(
                EPOCH,
                &net.packet(b"sneaky", [9; 16], &[Duration::ZERO; 3]),
                &mut buf,
            );
            let _ = s.write_all(&buf).await;
        }
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the node closes an unpinned peer's connection");
    }
    net.nodes[0]
        .wait_metric(
            "loopmix_connections_refused_total{reason=\"unknown_peer_key\"}",
            Duration::from_secs(10),
            |v| v >= 1.0,
        )
        .unwrap();
    // Dialling a node while expecting a different key fails on our side too.
    let wrong = IdentityKeypair::generate().node_id();
    assert!(net.peer.transport.connect(wrong, m1.address).await.is_err());
    assert_eq!(
        net.nodes[0]
            .metric("loopmix_packets_received_total")
            .unwrap(),
        0.0
    );
    // The network still works, and the stranger's packet never got in.
    net.send(net.packet(b"still fine", [7; 16], &[Duration::ZERO; 3]));
    let got = net.peer.wait_deliveries(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].plaintext, b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixes_send_loop_cover_that_returns() {
    let net = start_net(params(5.0, 5.0)).await;
    for node in &net.nodes {
        node.wait_metric(
            "loopmix_cover_loops_returned_total",
            Duration::from_secs(30),
            |v| v >= 5.0,
        )
        .unwrap();
        assert!(node.metric("loopmix_cover_loops_sent_total").unwrap() >= 5.0);
    }
    let ratio = net.nodes[0]
        .wait_metric(
            "loopmix_cover_loop_return_ratio",
            Duration::from_secs(20),
            |v| v > 0.5,
        )
        .unwrap();
    assert!(ratio <= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_forwards_delayed_packets_then_exits() {
    let mut net = start_net(params(1.0, 0.0)).await;
    // Held 1.5 s at the first mix, then SIGTERM to it while it waits.
    let delays = [Duration::from_millis(1500), Duration::ZERO, Duration::ZERO];
    net.send(net.packet(b"in flight", [8; 16], &delays));
    net.nodes[0]
        .wait_metric("loopmix_delay_queue_length", Duration::from_secs(10), |v| {
            v == 1.0
        })
        .unwrap();
    net.nodes[0].terminate().unwrap();
    let got = net.peer.wait_deliveries(1, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        1,
        "the delayed packet was forwarded during shutdown"
    );
    let status = net.nodes[0].wait_exit(Duration::from_secs(20)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {:?}",
        status
    );
}

#[test]
fn bad_topology_refuses_to_start_and_names_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let nd = init_node(&bin(), &tmp.path().join("m"), 1).unwrap();
    let topo = nd.dir.join("topology.json");

    std::fs::write(&topo, b"{ not json").unwrap();
    let e = NodeProcess::start(&bin(), &nd).err().unwrap().to_string();
    assert!(e.contains("topology.json"), "{e}");

    // A valid document that does not list this node.
    let other = init_node(&bin(), &tmp.path().join("o"), 1).unwrap();
    let mut entry = other.entry.clone().unwrap();
    entry.address = "127.0.0.1:9".parse().unwrap();
    let doc = loopmix_core::topology::TopologyDocument {
        params: params(1.0, 0.0),
        nodes: vec![
            entry.clone(),
            {
                let mut e = entry.clone();
                e.layer = Some(2);
                e.id = IdentityKeypair::generate().node_id();
                e.address = "127.0.0.1:10".parse().unwrap();
                e
            },
            {
                let mut e = entry;
                e.layer = Some(3);
                e.id = IdentityKeypair::generate().node_id();
                e.address = "127.0.0.1:11".parse().unwrap();
                e
            },
        ],
    };
    write_topology(&topo, &doc).unwrap();
    let e = NodeProcess::start(&bin(), &nd).err().unwrap().to_string();
    assert!(e.contains("is not listed") && e.contains("nodes"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_filter_survives_a_restart() {
    let mut net = start_net(params(1.0, 0.0)).await;
    let pkt = net.packet(b"before restart", [10; 16], &[Duration::ZERO; 3]);
    net.send(pkt.clone());
    assert_eq!(
        net.peer
            .wait_deliveries(1, Duration::from_secs(20))
            .await
            .len(),
        1
    );

    // Restart the first mix on the same port with the same keys.
    let port = net.nodes[0].bound.quic.port();
    net.nodes[0].terminate().unwrap();
    assert!(
        net.nodes[0]
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .is_some()
    );
    loopmix_tests::node::edit_config(&net.dirs[0], |c| {
        // QUIC keeps its port; the metrics one stays on port 0.
        c.set("node.listen", format!("127.0.0.1:{port}"));
    })
    .unwrap();
    net.nodes[0] = NodeProcess::start(&bin(), &net.dirs[0]).unwrap();

    net.send(pkt);
    net.send(net.packet(b"after restart", [11; 16], &[Duration::ZERO; 3]));
    let got = net.peer.wait_deliveries(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "the link reconnects and fresh packets flow");
    assert_eq!(got[1].plaintext, b"after restart");
    net.nodes[0]
        .wait_metric(
            "loopmix_packets_dropped_total{reason=\"replay\"}",
            Duration::from_secs(10),
            |v| v == 1.0,
        )
        .unwrap();
    assert!(net.nodes[0].log().contains("replay filter restored"));
}
