//! SOCKS5 goodput and time to first byte through a real local mixnet
//! (`cargo bench -p loopmix-tests --bench socks`).
//!
//! Prints goodput as a ratio of the bound the parameters allow: the exit
//! sends at most λ_P packets per second, each carrying at most
//! `reply body − stream header − DATA header` bytes of a stream. Ratios,
//! not absolute speeds, are what to compare between runs on a shared VM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use loopmix_client::engine::reply_fragment_size;
use loopmix_client::stream::frame::{DATA_OVERHEAD, HEADER_LEN};
use loopmix_core::e2e::envelope::ENVELOPE_HEADER_LEN;
use loopmix_localnet::{PAYLOAD_SIZE as PAYLOAD, Preset};
use loopmix_tests::http::{Framing, Origin};
use loopmix_tests::network::{Relays, TestNet};
use loopmix_tests::socks::{curl, file_bytes};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let http = Origin::start(Framing::ContentLength);
    let port = http.addr.port();
    let net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        &["--preset", "speed", "--exit-allow", "127.0.0.1:*"],
    )
    .unwrap();
    let socks = net.socks;
    let lambda_p = Preset::Speed.params().lambda_p_per_s;
    let per_packet =
        reply_fragment_size(PAYLOAD) - ENVELOPE_HEADER_LEN - HEADER_LEN - DATA_OVERHEAD;
    let bound = lambda_p * per_packet as f64;
    println!(
        "preset speed: λ_P {lambda_p}/s, payload {PAYLOAD} B, {per_packet} stream bytes per reply packet \
         → bound {:.1} KB/s",
        bound / 1000.0
    );

    // Warm-up, then time to first byte of small requests.
    let mut ttfb = Vec::new();
    for _ in 0..6 {
        let (code, body, err, t, _) = curl(socks, &format!("http://127.0.0.1:{port}/1000"), 120);
        assert_eq!(code, 0, "{err}");
        assert_eq!(body, file_bytes(1000));
        ttfb.push(t);
    }
    ttfb.remove(0);
    ttfb.sort_by(f64::total_cmp);
    println!(
        "time to first byte (5 requests): median {:.2} s, min {:.2} s, max {:.2} s",
        ttfb[2], ttfb[0], ttfb[4]
    );

    // One bulk download: goodput after the first byte.
    for n in [2usize << 20, 2 << 20] {
        let (code, body, err, t0, total) =
            curl(socks, &format!("http://127.0.0.1:{port}/{n}"), 600);
        assert_eq!(code, 0, "{err}");
        assert_eq!(body, file_bytes(n));
        let goodput = n as f64 / (total - t0);
        println!(
            "download {} MiB: {:.1} s, goodput {:.1} KB/s = {:.2} × bound ({:.2} × λ_P × payload_size)",
            n >> 20,
            total,
            goodput / 1000.0,
            goodput / bound,
            goodput / (lambda_p * PAYLOAD as f64)
        );
    }
    let retx = net
        .metric("exit", "loopmix_stream_retransmissions_total")
        .unwrap_or(0.0);
    let sent = net
        .labelled("exit", "loopmix_client_packets_sent_total", "kind", "reply")
        .unwrap_or(0.0);
    let drops = net
        .labelled("exit", "loopmix_client_packets_sent_total", "kind", "drop")
        .unwrap_or(0.0);
    println!("exit: {sent} reply packets, {retx} stream retransmissions, {drops} drop packets");
}
