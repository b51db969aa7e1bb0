//! `loopmix-node demo`: a small mixnet on loopback, one command.
//!
//! Starts one real `loopmix-node` process per layer, writes their topology,
//! then sends a numbered message through all three mixes every second from
//! an in-process provider-like [`Peer`] back to itself, printing each
//! delivery's latency and the mixes' loop-cover counts. Ctrl-C stops it.
//! (The full localnet with directories, providers and SOCKS5 comes later.)

use std::time::{Duration, Instant};

use loopmix_core::sphinx::{applied_delay, build_packet, destination_of, sample_delays};
use loopmix_core::topology::NetworkParams;

use crate::bench::procs::{Peer, launch_mixnet};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Mean per-hop delay (1/μ) in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub mean_delay_ms: f64,
    /// Mix loop cover rate λ_M, packets per second per mix.
    #[arg(long, default_value_t = 2.0)]
    pub mix_loop_rate: f64,
    /// Stop after this many messages (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let peer = Peer::bind(1, true)?;
    let params = NetworkParams {
        epoch: 1,
        layers: 3,
        mean_hop_delay_ms: args.mean_delay_ms,
        lambda_p_per_s: 0.0,
        lambda_l_per_s: 0.0,
        lambda_d_per_s: 0.0,
        lambda_m_per_s: args.mix_loop_rate,
        payload_size: 1024,
    };
    let net = launch_mixnet(&bin, tmp.path(), params, vec![peer.entry()?], |_| {})?;
    let (mut nodes, doc) = (net.nodes, net.doc);
    peer.adopt(&doc);
    println!(
        "loopmix demo: 3 mixes up (files in {})",
        tmp.path().display()
    );
    for (i, n) in nodes.iter().enumerate() {
        println!(
            "  mix layer {}: quic {}  metrics http://{}/metrics",
            i + 1,
            n.bound.quic,
            n.bound.metrics
        );
    }
    println!("sending one message per second through all three layers; Ctrl-C to stop");

    let route = [&doc.nodes[0], &doc.nodes[1], &doc.nodes[2], &doc.nodes[3]];
    let mean = Duration::from_secs_f64(args.mean_delay_ms / 1000.0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        seq += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seq.to_be_bytes());
        let delays = sample_delays(&mut rand::rng(), 4, mean);
        let msg = format!("hello #{seq}");
        let pkt = build_packet(
            msg.as_bytes(),
            &route,
            &destination_of(&doc.nodes[3].id, id),
            &delays,
            1024,
        )?;
        let sent = Instant::now();
        peer.send(&doc.nodes[0], 1, pkt)?;
        let got = peer
            .wait_deliveries(seq as usize, Duration::from_secs(10))
            .await;
        match got.iter().find(|d| d.identifier == id) {
            Some(d) => {
                let loops: f64 = nodes
                    .iter()
                    .map(|n| {
                        n.metric("loopmix_cover_loops_returned_total")
                            .unwrap_or(0.0)
                    })
                    .sum();
                println!(
                    "{:?} delivered in {:>4} ms (header delays {:>4} ms); mix loops returned so far: {loops}",
                    String::from_utf8_lossy(&d.plaintext),
                    (d.at - sent).as_millis(),
                    applied_delay(&delays).as_millis()
                );
            }
            None => println!("message #{seq} not delivered within 10 s"),
        }
        if args.messages > 0 && seq >= args.messages {
            break;
        }
    }
    println!("stopping the mixes");
    for n in &nodes {
        let _ = n.terminate();
    }
    for n in &mut nodes {
        let _ = n.wait_exit(Duration::from_secs(15));
    }
    peer.close().await;
    Ok(())
}
