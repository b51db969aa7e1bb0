//! SOCKS5 through the mixnet, end to end: real `curl --socks5-hostname`
//! against `loopmix-client socks5`, streams through 3 layers of real mix
//! processes (one of which drops 10% of what it processes) to a real
//! `loopmix-client exit`, which fetches from a local HTTP server. The
//! network is the localnet's speed preset, started by the tests' one
//! launcher.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use loopmix_localnet::network::Kind;
use loopmix_tests::http::{Framing, Origin};
use loopmix_tests::network::{Relays, TestNet};
use loopmix_tests::socks::{curl, curl_as, file_bytes, socks_answer, socks_connect_code};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn curl_through_the_mixnet() {
    let tmp = tempfile::tempdir().unwrap();
    let http = Origin::start(Framing::ContentLength);
    let port = http.addr.port();
    let mut net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        &[
            "--preset",
            "speed",
            "--fault-drop-rate",
            "0.1",
            "--exit-allow",
            "localhost:*",
            "--exit-allow",
            "127.0.0.1:*",
        ],
    )
    .unwrap();
    let socks = net.socks;

    // 1 MiB by host name (resolved at the exit), same SHA-256.
    let n = 1 << 20;
    let t = Instant::now();
    let (code, body, err, ttfb, total) = curl(socks, &format!("http://localhost:{port}/{n}"), 300);
    assert_eq!(
        code,
        0,
        "curl failed: {err}\n{}",
        net.tails(&["socks5", "exit"])
    );
    assert_eq!(sha(&body), sha(&file_bytes(n)));
    eprintln!(
        "1 MiB in {:.1} s (first byte {ttfb:.2} s): {:.0} KB/s with 10% loss at one mix",
        t.elapsed().as_secs_f64(),
        n as f64 / total / 1000.0
    );

    // 8 concurrent downloads, all intact.
    let sizes: Vec<usize> = (0..8).map(|i| 40_000 + i * 9_000).collect();
    let handles: Vec<_> = sizes
        .iter()
        .map(|&n| {
            std::thread::spawn(move || {
                (n, curl(socks, &format!("http://127.0.0.1:{port}/{n}"), 300))
            })
        })
        .collect();
    for h in handles {
        let (n, (code, body, err, _, _)) = h.join().unwrap();
        assert_eq!(code, 0, "download of {n} failed: {err}");
        assert_eq!(sha(&body), sha(&file_bytes(n)), "download of {n}");
    }

    // Stream isolation (RFC 1929 credentials as the key, as Tor's
    // IsolateSOCKSAuth): two credentials reach the exit in two sessions,
    // and one credential's second fetch reuses its session.
    let opened = |member: &str| {
        net.metric(member, "loopmix_stream_sessions_opened_total")
            .unwrap()
    };
    let fetch_as = |user: &str| {
        let (code, body, err) = curl_as(
            socks,
            user,
            "pw",
            &format!("http://localhost:{port}/4000"),
            200,
        );
        assert_eq!(code, 0, "curl as {user} failed: {err}");
        assert_eq!(body, file_bytes(4000), "fetch as {user}");
    };
    let before = opened("exit");
    fetch_as("alice");
    let alice = opened("exit") - before;
    fetch_as("bob");
    let bob = opened("exit") - before - alice;
    fetch_as("alice");
    let alice_again = opened("exit") - before - alice - bob;
    eprintln!(
        "isolation: new exit sessions for alice {alice}, bob {bob}, alice again {alice_again}; \
         proxy sessions now {:?}",
        net.metric("socks5", "loopmix_socks_sessions")
    );
    assert_eq!((alice, bob, alice_again), (1.0, 1.0, 0.0));
    // No credentials, alice and bob: three sessions at the proxy.
    assert_eq!(net.metric("socks5", "loopmix_socks_sessions"), Some(3.0));

    // A target the policy refuses: reply 0x02, and curl says so.
    assert_eq!(socks_connect_code(socks, "example.org", 80), 0x02);
    let (code, _, err, _, _) = curl(socks, "http://example.org/", 120);
    assert_ne!(code, 0);
    // curl prints the SOCKS5 reply code: "(2)", connection not allowed.
    assert!(err.contains("(2)"), "{err}");
    // Allowed, but nobody listens there: connection refused (0x05).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(socks_connect_code(socks, "127.0.0.1", closed_port), 0x05);

    // Garbage and unsupported requests get their answers; nothing dies.
    let mut s = TcpStream::connect(socks).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "an HTTP request got {buf:?}");
    let mut s = TcpStream::connect(socks).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80])
        .unwrap(); // BIND
    let mut rep = [0u8; 12];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[..4], [5, 0, 5, 7]);
    let mut s = TcpStream::connect(socks).unwrap();
    s.write_all(&[5, 1, 0, 5, 1, 0, 9]).unwrap(); // unknown address type
    let mut rep = [0u8; 4];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep, [5, 0, 5, 8]);
    // Authentication garbage gets the RFC answers: no acceptable method
    // (05 FF, RFC 1928); a wrong sub-negotiation version or a username
    // longer than what arrives: status 01 01 (RFC 1929), then closed.
    assert_eq!(socks_answer(socks, &[5, 2, 0x01, 0x80], 16), [5, 0xFF]);
    assert_eq!(
        socks_answer(socks, &[5, 1, 2, 5, 1, b'a', 1, b'b'], 16),
        [5, 2, 1, 1]
    );
    let mut long = vec![5, 1, 2, 1, 255];
    long.extend_from_slice(&[b'u'; 200]);
    assert_eq!(socks_answer(socks, &long, 16), [5, 2, 1, 1], "cut short");
    net.all_running().unwrap();

    // The exit restarted mid-stream: the download fails clearly (no hang,
    // no silent truncation), and the next one works.
    let slow =
        std::thread::spawn(move || curl(socks, &format!("http://localhost:{port}/slow"), 200));
    std::thread::sleep(Duration::from_secs(8));
    net.crash_and_restart("exit").unwrap();
    let (code, _, err, _, total) = slow.join().unwrap();
    assert_ne!(code, 0, "a stream through a restarted exit must fail");
    assert!(total < 150.0, "took {total} s to notice: {err}");
    let (code, body, err, _, _) = curl(socks, &format!("http://localhost:{port}/5000"), 200);
    assert_eq!(code, 0, "after the exit restart: {err}");
    assert_eq!(body, file_bytes(5000));

    // Nothing left behind: every stream closed at both ends.
    net.streams_closed(Duration::from_secs(60)).unwrap();
    let dropped: f64 = net
        .names(Kind::Mix)
        .iter()
        .filter_map(|m| {
            net.labelled(
                m,
                "loopmix_packets_dropped_total",
                "reason",
                "fault_injected",
            )
        })
        .sum();
    eprintln!("fault-injected drops: {dropped}");
    assert!(dropped > 0.0, "the faulty mix dropped nothing");
    net.all_running().unwrap();
}
