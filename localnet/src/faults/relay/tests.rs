#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// An upstream that answers every datagram with `tag` followed by it.
async fn echo(tag: u8) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut out = vec![tag];
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, from).await;
        }
    });
    addr
}

fn relay(upstream: Option<SocketAddr>, cfg: RelayConfig) -> FaultRelay {
    FaultRelay::start(
        &tokio::runtime::Handle::current(),
        "127.0.0.1:0".parse().unwrap(),
        upstream,
        cfg,
    )
    .unwrap()
}

/// A peer with room for every answer of a test (they are read at the end).
async fn client() -> UdpSocket {
    UdpSocket::from_std(bind_std("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap()
}

/// Sends datagrams `from..to` (u32 big-endian) to `to_addr`.
async fn send_range(s: &UdpSocket, to_addr: SocketAddr, from: u32, to: u32) {
    for i in from..to {
        s.send_to(&i.to_be_bytes(), to_addr).await.unwrap();
        // Keep the relay's queues out of the picture.
        if i % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Answers until `quiet` passes without one: (tag, number) each.
async fn collect(s: &UdpSocket, quiet: Duration) -> Vec<(u8, u32)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(Ok((n, _))) = tokio::time::timeout(quiet, s.recv_from(&mut buf)).await {
        assert_eq!(n, 5);
        got.push((buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])));
    }
    got
}

fn numbers(v: &[(u8, u32)]) -> Vec<u32> {
    v.iter().map(|(_, n)| *n).collect()
}

#[tokio::test]
async fn passes_everything_in_order_without_faults() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    let c = client().await;
    send_range(&c, r.public_addr(), 0, 300).await;
    let got = collect(&c, Duration::from_millis(300)).await;
    assert_eq!(numbers(&got), (0..300).collect::<Vec<_>>());
    let s = r.stats();
    assert_eq!((s.inbound.received, s.inbound.forwarded), (300, 300));
    assert_eq!((s.outbound.received, s.outbound.forwarded), (300, 300));
    assert_eq!(s.inbound.dropped + s.outbound.dropped, 0);
    assert_eq!(s.sources, 1);
    assert_eq!(r.sources(), vec![c.local_addr().unwrap()]);
    assert_eq!(
        r.source_stats(c.local_addr().unwrap())
            .unwrap()
            .inbound
            .forwarded,
        300
    );
}

#[tokio::test]
async fn drops_the_asked_share_in_both_directions_and_counts_it() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    r.set_faults(LinkFaults::both(Faults::loss(0.3))).unwrap();
    let c = client().await;
    send_range(&c, r.public_addr(), 0, 2000).await;
    let got = collect(&c, Duration::from_millis(300)).await;
    let s = r.stats();
    assert_eq!(s.inbound.received, 2000);
    assert_eq!(s.inbound.dropped + s.inbound.forwarded, 2000);
    assert_eq!(s.outbound.received, s.inbound.forwarded);
    assert_eq!(s.outbound.forwarded, got.len() as u64);
    for d in [s.inbound, s.outbound] {
        let share = d.dropped as f64 / d.received as f64;
        assert!((0.25..0.35).contains(&share), "{share}: {s:?}");
    }
    // What passed is intact and in order.
    let n = numbers(&got);
    assert!(n.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn a_blackhole_drops_everything_until_healed() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    let c = client().await;
    r.set_faults(LinkFaults::both(Faults::blackhole())).unwrap();
    send_range(&c, r.public_addr(), 0, 50).await;
    assert!(collect(&c, Duration::from_millis(300)).await.is_empty());
    assert_eq!(r.stats().inbound.dropped, 50);
    // Only the way back is cut: the node still gets everything.
    r.set_faults(LinkFaults {
        inbound: Faults::NONE,
        outbound: Faults::blackhole(),
    })
    .unwrap();
    send_range(&c, r.public_addr(), 50, 60).await;
    assert!(collect(&c, Duration::from_millis(300)).await.is_empty());
    assert_eq!(r.stats().inbound.forwarded, 10);
    assert_eq!(r.stats().outbound.dropped, 10);
    r.heal();
    send_range(&c, r.public_addr(), 60, 110).await;
    let got = collect(&c, Duration::from_millis(300)).await;
    assert_eq!(numbers(&got), (60..110).collect::<Vec<_>>());
}

#[tokio::test]
async fn duplicates_and_reorders() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    let c = client().await;
    r.set_faults(LinkFaults {
        inbound: Faults {
            duplicate: 1.0,
            ..Faults::NONE
        },
        outbound: Faults::NONE,
    })
    .unwrap();
    send_range(&c, r.public_addr(), 0, 3).await;
    let got = collect(&c, Duration::from_millis(300)).await;
    assert_eq!(numbers(&got), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(r.stats().inbound.duplicated, 3);

    // Every datagram that finds no other held back is held until the next
    // one passed: 0 waits for 1, 2 for 3, and 4 for its hold time.
    r.set_faults(LinkFaults {
        inbound: Faults {
            reorder: 1.0,
            ..Faults::NONE
        },
        outbound: Faults::NONE,
    })
    .unwrap();
    send_range(&c, r.public_addr(), 0, 5).await;
    let got = collect(&c, Duration::from_millis(300)).await;
    assert_eq!(numbers(&got), vec![1, 0, 3, 2, 4]);
    assert_eq!(r.stats().inbound.reordered, 3);
}

#[tokio::test]
async fn delays_and_jitter() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    let c = client().await;
    r.set_faults(LinkFaults {
        inbound: Faults {
            delay: Duration::from_millis(100),
            ..Faults::NONE
        },
        outbound: Faults {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(50),
            ..Faults::NONE
        },
    })
    .unwrap();
    let t = Instant::now();
    send_range(&c, r.public_addr(), 0, 200).await;
    let got = collect(&c, Duration::from_millis(400)).await;
    let mut n = numbers(&got);
    assert!(t.elapsed() >= Duration::from_millis(150));
    // Jitter lets datagrams overtake each other; none is lost.
    assert!(
        n.windows(2).any(|w| w[0] > w[1]),
        "jitter reordered nothing"
    );
    n.sort();
    assert_eq!(n, (0..200).collect::<Vec<_>>());
    let s = r.stats();
    assert_eq!((s.inbound.delayed, s.outbound.delayed), (200, 200));
}

#[tokio::test]
async fn rules_per_source() {
    let r = relay(Some(echo(1).await), RelayConfig::default());
    let (a, b) = (client().await, client().await);
    r.set_source_faults(
        a.local_addr().unwrap(),
        LinkFaults::both(Faults::blackhole()),
    )
    .unwrap();
    send_range(&a, r.public_addr(), 0, 20).await;
    send_range(&b, r.public_addr(), 0, 20).await;
    assert!(collect(&a, Duration::from_millis(200)).await.is_empty());
    assert_eq!(collect(&b, Duration::from_millis(200)).await.len(), 20);
    let sa = r.source_stats(a.local_addr().unwrap()).unwrap();
    let sb = r.source_stats(b.local_addr().unwrap()).unwrap();
    assert_eq!((sa.inbound.dropped, sb.inbound.dropped), (20, 0));
    // A rule for every source does not override a source's own.
    r.set_faults(LinkFaults::both(Faults::loss(1.0))).unwrap();
    send_range(&b, r.public_addr(), 20, 30).await;
    assert!(collect(&b, Duration::from_millis(200)).await.is_empty());
    assert!(r.set_faults(LinkFaults::both(Faults::loss(1.5))).is_err());
}

#[tokio::test]
async fn sources_are_bounded_and_the_upstream_can_move() {
    let cfg = RelayConfig {
        max_sources: 2,
        ..RelayConfig::default()
    };
    let r = relay(None, cfg);
    let c = client().await;
    send_range(&c, r.public_addr(), 0, 5).await;
    assert!(collect(&c, Duration::from_millis(200)).await.is_empty());
    assert_eq!(r.stats().no_upstream, 5);

    r.set_upstream(echo(1).await);
    let clients = [client().await, client().await, client().await];
    for (i, k) in clients.iter().enumerate() {
        send_range(k, r.public_addr(), 0, 1).await;
        assert_eq!(
            collect(k, Duration::from_millis(200)).await,
            vec![(1, 0)],
            "{i}"
        );
    }
    let s = r.stats();
    assert_eq!((s.sources, s.evicted), (2, 1));

    // The node moved (restarted on another port): sources follow it.
    r.set_upstream(echo(2).await);
    send_range(&clients[2], r.public_addr(), 7, 8).await;
    assert_eq!(
        collect(&clients[2], Duration::from_millis(200)).await,
        vec![(2, 7)]
    );
}

#[test]
fn the_shaper_bounds_what_it_holds() {
    let mut s = Shaper::new(3, Duration::from_millis(10));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let f = Faults {
        delay: Duration::from_secs(1),
        ..Faults::NONE
    };
    let now = Instant::now();
    let mut out = Vec::new();
    let fates: Vec<Fate> = (0..5u8)
        .map(|i| s.offer(vec![i], &f, now, &mut rng, &mut out))
        .collect();
    assert!(out.is_empty());
    assert_eq!(fates.iter().map(|f| f.delayed).sum::<u64>(), 3);
    assert_eq!(fates.iter().map(|f| f.overflow).sum::<u64>(), 2);
    assert_eq!(s.next_due(), Some(now + Duration::from_secs(1)));
    s.take_due(now + Duration::from_secs(1), &mut out);
    assert_eq!(out, vec![vec![0], vec![1], vec![2]]);
    assert_eq!(s.next_due(), None);
}
