//! `loopmix-faultrelay`: one fault relay by hand, in front of one node.
//!
//! Point a node's `public_address` at `--listen` and its `listen` at
//! `--upstream`; every peer then reaches the node through the relay, which
//! drops, delays, duplicates and reorders datagrams as the flags say. Prints
//! what it did every `--report` and on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use loopmix_localnet::faults::{FaultRelay, Faults, LinkFaults, RelayConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Both directions.
    Both,
    /// Only datagrams towards the node.
    In,
    /// Only datagrams from the node back to its peers.
    Out,
}

/// Relay UDP (QUIC) datagrams to one node and inject faults: loss, delay,
/// jitter, duplication, reordering, or a full partition.
#[derive(Debug, Parser)]
#[command(name = "loopmix-faultrelay", version)]
struct Options {
    /// Address peers send to (the node's `public_address`).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address the node listens on (its `listen`).
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Probability of dropping a datagram (0..=1).
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Delay added to every datagram, e.g. `20ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    delay: Duration,
    /// Extra random delay, uniform in [0, JITTER] (reorders datagrams).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    jitter: Duration,
    /// Probability of sending a datagram twice (0..=1).
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability of holding a datagram back until the next one passed (0..=1).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Drop everything (a partition).
    #[arg(long)]
    blackhole: bool,
    /// Which direction the faults apply to.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    direction: Which,
    /// Sources (peer addresses) served at once at most.
    #[arg(long, default_value_t = 1024)]
    max_sources: usize,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How often to print the counters (0: only at the end).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    report: Duration,
}

fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    let faults = Faults {
        drop: o.drop,
        delay: o.delay,
        jitter: o.jitter,
        duplicate: o.duplicate,
        reorder: o.reorder,
        blackhole: o.blackhole,
    };
    let link = match o.direction {
        Which::Both => LinkFaults::both(faults),
        Which::In => LinkFaults {
            inbound: faults,
            outbound: Faults::NONE,
        },
        Which::Out => LinkFaults {
            inbound: Faults::NONE,
            outbound: faults,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cfg = RelayConfig {
        max_sources: o.max_sources,
        seed: o.seed,
        ..RelayConfig::default()
    };
    let relay = FaultRelay::start(rt.handle(), o.listen, Some(o.upstream), cfg)?;
    relay.set_faults(link)?;
    eprintln!(
        "loopmix-faultrelay: {} -> {} with {link:?}",
        relay.public_addr(),
        o.upstream
    );
    rt.block_on(async {
        let report = async {
            if o.report.is_zero() {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(o.report).await;
                eprintln!("{}", relay.stats());
            }
        };
        tokio::select! {
            () = loopmix_net::process::shutdown_signal() => {}
            () = report => {}
        }
        eprintln!("{}", relay.stats());
        anyhow::Ok(())
    })
}
