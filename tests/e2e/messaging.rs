//! End-to-end messaging: a localnet (three real authority processes, three
//! layers of two real mix processes, two real provider processes, at the
//! balanced preset) and two clients (the loopmix-client library)
//! exchanging messages through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use loopmix_client::config::ClientConfig;
use loopmix_client::runtime::{Client, ClientEvent};
use loopmix_core::message::MessageId;
use loopmix_localnet::Preset;
use loopmix_tests::http::http_get;
use loopmix_tests::network::{Relays, TestNet};
use prometheus::Registry;
use tokio::sync::mpsc;

/// The localnet preset the test runs: production's shape, test speed.
const PRESET: Preset = Preset::Balanced;

/// A new client of provider number `provider` (`loopmix-client init` by the
/// launcher, the preset's pull interval), loaded as the library loads it.
fn client_config(net: &TestNet, name: &str, provider: usize) -> ClientConfig {
    let path = net.net.add_client(name, provider).unwrap();
    ClientConfig::load(&path).unwrap()
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
fn provider_counters(net: &TestNet, i: usize) -> Vec<String> {
    let text = net
        .addr(&format!("provider{i}"))
        .and_then(|a| http_get(a, "/metrics"))
        .unwrap_or_default();
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

#[test]
fn messages_replies_and_a_provider_crash() {
    let tmp = tempfile::tempdir().unwrap();
    // Short epochs (keys rotate and layers reshuffle during the test); one
    // mix loses 10% of what it processes: loss must cost latency only.
    let mut net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        &[
            "--preset",
            PRESET.name(),
            "--epoch-length",
            "10s",
            "--fault-drop-rate",
            "0.1",
        ],
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(exchange(&mut net));
}

async fn exchange(net: &mut TestNet) {
    let a_cfg = client_config(net, "alice", 0);
    let b_cfg = client_config(net, "bob", 1);
    let a_registry = Registry::new();
    let (a, mut a_rx) = Client::start(a_cfg, &a_registry).await.unwrap();
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
        let drops = |i: usize| provider_counters(net, i);
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
    // Replies are not acknowledged (the application repeats or confirms end
    // to end), and one mix here drops 10 %: about one reply in twenty is
    // lost. B sends the answer once per block it holds, as an application
    // without end-to-end confirmation would; A needs one of the two.
    let reply = reply.expect("reply blocks");
    for _ in 0..2 {
        b.reply(reply, b"pong from someone who does not know you".to_vec())
            .unwrap();
    }
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
    let p = PRESET.params();
    let model_ms = 4.0 * p.mean_hop_delay_ms
        + 1000.0 / p.lambda_p_per_s
        + p.pull_interval.as_secs_f64() * 1000.0;
    eprintln!(
        "latency A->B over 16 messages: mean {:?}, median {:?}, max {:?}; \
         model: Gamma(4 delayed hops, mean {} ms) + lambda_P slot wait {:.0} ms \
         + pull wait {:?} = {model_ms:.0} ms ({:?} total)",
        mean,
        latencies[8],
        latencies[15],
        p.mean_hop_delay_ms,
        1000.0 / p.lambda_p_per_s,
        p.pull_interval,
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
    // (λ_P + λ_L + λ_D) × 10 s per window (220 at the balanced preset). A
    // client that added real packets on top of cover would show about
    // λ_P × 10 s more.
    let expected = (p.lambda_p_per_s + p.lambda_l_per_s + p.lambda_d_per_s) * window.as_secs_f64();
    let tolerance = 5.0 * (2.0 * expected).sqrt();
    eprintln!("packets on A's link per 10 s: idle {idle}, busy {busy} (tolerance {tolerance:.0})");
    assert!(
        (idle - busy).abs() < tolerance,
        "idle {idle} vs busy {busy}"
    );
    assert!(
        idle > expected / 2.0,
        "cover traffic missing: {idle} of {expected}"
    );
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
            net.labelled(
                "provider1",
                "loopmix_packets_dropped_total",
                "reason",
                "inbox_full"
            ),
            net.labelled(
                "provider1",
                "loopmix_packets_dropped_total",
                "reason",
                "unknown_destination"
            ),
            b.stats(),
        );
        assert!(Instant::now() < deadline, "big message not delivered");
    }

    // B goes offline; a message for it is stored at its provider, which is
    // then SIGKILLed and restarted: the message survives.
    b.shutdown();
    drop(b_rx);
    let delivered_at_b = |net: &TestNet| {
        net.metric("provider1", "loopmix_provider_delivered_total")
            .unwrap()
    };
    let stored_before = delivered_at_b(net);
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
    assert!(delivered_at_b(net) > stored_before);
    tokio::task::block_in_place(|| net.crash_and_restart("provider1")).unwrap();
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
