//! End-to-end messaging: three real authority processes, three layers of
//! two real mix processes, two real provider processes, and two clients
//! (the loopmix-client library) exchanging messages through them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use loopmix_client::config::{CONFIG_FILE, ClientConfig};
use loopmix_client::keys::ClientKeys;
use loopmix_client::runtime::{Client, ClientEvent};
use loopmix_core::keys::NodeId;
use loopmix_core::message::MessageId;
use loopmix_core::pki::AuthorityEntry;
use loopmix_tests::authorities::Authorities;
use loopmix_tests::config::{self, Config, Kind};
use loopmix_tests::node::DirectoryNetwork;
use loopmix_tests::workspace_bin;
use prometheus::Registry;
use tokio::sync::mpsc;

/// Network parameters for tests: fast cover and short delays so a test runs
/// in seconds, the same shape as production.
fn fast_network(c: &mut Config) {
    c.set("network.mean_hop_delay_ms", 20.0)
        .set("network.lambda_p_per_s", 20.0)
        .set("network.lambda_l_per_s", 2.0)
        .set("network.lambda_d_per_s", 2.0)
        .set("network.lambda_m_per_s", 2.0)
        .set("network.payload_size", 2048);
}

fn client_config(dir: &Path, provider: NodeId, auths: &Authorities) -> ClientConfig {
    std::fs::create_dir_all(dir).unwrap();
    ClientKeys::create(dir).unwrap();
    let entries: Vec<AuthorityEntry> = auths
        .auths
        .iter()
        .map(|a| AuthorityEntry {
            key: a.key,
            url: a.url.clone(),
        })
        .collect();
    let text = ClientConfig::template(provider, &entries, auths.k);
    std::fs::write(dir.join(CONFIG_FILE), text).unwrap();
    config::edit(&dir.join(CONFIG_FILE), Kind::Client, |c| {
        c.set("messages.pull_interval", "200ms");
    })
    .unwrap();
    ClientConfig::load(&dir.join(CONFIG_FILE)).unwrap()
}

async fn next_event(
    rx: &mut mpsc::Receiver<ClientEvent>,
    secs: u64,
    what: &str,
    mut want: impl FnMut(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("client stopped while waiting for {what}"),
            Err(_) => panic!("timed out after {secs}s waiting for {what}"),
        }
    }
}

/// A provider's non-zero drop, delivery, ack and request counters.
fn provider_counters(net: &DirectoryNetwork, i: usize) -> Vec<String> {
    let text = net.provider(i).metrics_text().unwrap_or_default();
    text.lines()
        .filter(|l| {
            (l.starts_with("loopmix_packets_dropped_total")
                || l.starts_with("loopmix_provider_delivered")
                || l.starts_with("loopmix_provider_acks")
                || l.starts_with("loopmix_provider_requests_total"))
                && !l.ends_with(" 0")
        })
        .map(|l| l.to_string())
        .collect()
}

fn delivered(id: MessageId) -> impl FnMut(&ClientEvent) -> bool {
    move |ev| matches!(ev, ClientEvent::Delivered { message } if *message == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_replies_and_a_provider_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir_bin = workspace_bin("loopmix-directory").unwrap();
    let node_bin = workspace_bin("loopmix-node").unwrap();
    let auths = Authorities::launch(
        &dir_bin,
        &tmp.path().join("auth"),
        3,
        2,
        "10s",
        "3s",
        fast_network,
    )
    .unwrap();
    let mut net = DirectoryNetwork::launch(
        &node_bin,
        &tmp.path().join("nodes"),
        &auths.node_init_args(),
        6,
        2,
        // One mix loses 10% of what it processes: loss must cost latency only.
        |i, c| {
            if i == 0 {
                c.set("mixing.fault_drop_rate", 0.1);
            }
        },
    )
    .unwrap();
    net.wait_listed(Duration::from_secs(90)).unwrap();
    let (pa, pb) = (net.provider_dir(0).id, net.provider_dir(1).id);

    let a_registry = Registry::new();
    let (a, mut a_rx) = Client::start(
        client_config(&tmp.path().join("alice"), pa, &auths),
        &a_registry,
    )
    .await
    .unwrap();
    let b_cfg = client_config(&tmp.path().join("bob"), pb, &auths);
    let (b, mut b_rx) = Client::start(b_cfg.clone(), &Registry::new())
        .await
        .unwrap();

    // A message of several payloads, with reply blocks, arrives intact.
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let sent = a.send(&b.address(), body.clone(), 2).unwrap();
    let t_first = Instant::now();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await {
            Ok(Some(ev @ ClientEvent::Received { .. })) => break ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("B stopped"),
            Err(_) => {}
        }
        let drops = |i: usize| provider_counters(&net, i);
        eprintln!(
            "waiting for the first message at {:?}:\n A {:?}\n B {:?}\n PA {:?}\n PB {:?}",
            t_first.elapsed(),
            a.stats(),
            b.stats(),
            drops(0),
            drops(1)
        );
        assert!(
            t_first.elapsed() < Duration::from_secs(60),
            "first message lost"
        );
    };
    let ClientEvent::Received {
        body: got_body,
        reply,
        ..
    } = got
    else {
        unreachable!()
    };
    assert_eq!(got_body, body, "message corrupted");
    next_event(&mut a_rx, 60, "A's delivery confirmation", delivered(sent)).await;

    // B answers over the reply blocks; it never learned A's address.
    let reply = reply.expect("reply blocks");
    b.reply(reply, b"pong from someone who does not know you".to_vec())
        .unwrap();
    let ev = next_event(&mut a_rx, 60, "the reply at A", |ev| {
        matches!(ev, ClientEvent::Received { .. })
    })
    .await;
    let ClientEvent::Received { body, .. } = ev else {
        unreachable!()
    };
    assert_eq!(body, b"pong from someone who does not know you");

    // Latency: one-fragment messages, one every 300 ms, timed as they
    // arrive (sending and receiving interleaved).
    let t0 = Instant::now();
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut latencies = vec![Duration::ZERO; 16];
    let mut got = 0;
    let mut next_send = tokio::time::Instant::now();
    while got < 16 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "latency probes lost"
        );
        tokio::select! {
            _ = tokio::time::sleep_until(next_send), if sent_at.len() < 16 => {
                a.send(&b.address(), vec![sent_at.len() as u8], 0).unwrap();
                sent_at.push(Instant::now());
                next_send += Duration::from_millis(300);
            }
            ev = b_rx.recv() => {
                if let Some(ClientEvent::Received { body, .. }) = ev
                    && let [i] = body[..]
                    && latencies[i as usize].is_zero()
                {
                    latencies[i as usize] = sent_at[i as usize].elapsed();
                    got += 1;
                }
            }
        }
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / 16;
    eprintln!(
        "latency A->B over 16 messages: mean {:?}, median {:?}, max {:?}; \
         model: Gamma(4 delayed hops, mean 20 ms) = 80 ms + lambda_P slot wait 50 ms \
         + pull wait 100 ms = 230 ms ({:?} total)",
        mean,
        latencies[8],
        latencies[15],
        t0.elapsed()
    );
    assert!(mean < Duration::from_secs(3), "mean latency {mean:?}");

    // An observer counting A's packets sees the same rate idle and busy.
    let link_packets = || {
        a_registry
            .gather()
            .iter()
            .find(|f| f.name() == "loopmix_client_link_packets_total")
            .map(|f| f.get_metric()[0].get_counter().get_value())
            .unwrap_or(0.0)
    };
    let window = Duration::from_secs(10);
    let c0 = link_packets();
    tokio::time::sleep(window).await;
    let idle = link_packets() - c0;
    // Enough fragments to fill every λ_P slot of the window.
    let big = a.send(&b.address(), vec![7u8; 1514 * 220], 0).unwrap();
    let c1 = link_packets();
    tokio::time::sleep(window).await;
    let busy = link_packets() - c1;
    // λ_P + λ_L + λ_D = 24/s: about 240 ± 16 per window. A client that added
    // real packets on top of cover would show about 200 more.
    let tolerance = 5.0 * (2.0 * 240.0f64).sqrt();
    eprintln!("packets on A's link per 10 s: idle {idle}, busy {busy} (tolerance {tolerance:.0})");
    assert!(
        (idle - busy).abs() < tolerance,
        "idle {idle} vs busy {busy}"
    );
    assert!(idle > 120.0, "cover traffic missing: {idle}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await {
            Ok(Some(ClientEvent::Delivered { message })) if message == big => break,
            Ok(Some(ClientEvent::Failed { message, reason })) if message == big => {
                panic!("big message failed: {reason}")
            }
            Ok(None) => panic!("client A stopped"),
            Ok(Some(_)) => continue,
            Err(_) => {}
        }
        eprintln!(
            "waiting for the big message at {:?}: {:?} {:?} PB full {:?} PB unknown {:?} B {:?}",
            t0.elapsed(),
            a.topology_state(),
            a.stats(),
            net.provider(1)
                .metric("loopmix_packets_dropped_total{reason=\"inbox_full\"}"),
            net.provider(1)
                .metric("loopmix_packets_dropped_total{reason=\"unknown_destination\"}"),
            b.stats(),
        );
        assert!(Instant::now() < deadline, "big message not delivered");
    }

    // B goes offline; a message for it is stored at its provider, which is
    // then SIGKILLed and restarted: the message survives.
    b.shutdown();
    drop(b_rx);
    let provider_b = net.mixes + 1;
    let stored_before = net.nodes[provider_b]
        .metric("loopmix_provider_delivered_total")
        .unwrap();
    let second = a
        .send(&b.address(), b"kept across a crash".to_vec(), 0)
        .unwrap();
    next_event(
        &mut a_rx,
        60,
        "ack of the stored message",
        delivered(second),
    )
    .await;
    assert!(
        net.nodes[provider_b]
            .metric("loopmix_provider_delivered_total")
            .unwrap()
            > stored_before
    );
    net.nodes[provider_b].kill();
    net.restart(&node_bin, provider_b).unwrap();
    let (_b2, mut b2_rx) = Client::start(b_cfg, &Registry::new()).await.unwrap();
    let ev = next_event(&mut b2_rx, 60, "the stored message after the crash", |ev| {
        matches!(ev, ClientEvent::Received { .. })
    })
    .await;
    let ClientEvent::Received { body, .. } = ev else {
        unreachable!()
    };
    assert_eq!(body, b"kept across a crash");
    a.shutdown();
}
