//! `loopmix-node`: a loopmix mix node. See `loopmix-node --help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
use loopmix_core::pki::AuthorityEntry;
use loopmix_core::topology::{NodeEntry, Role};
use loopmix_net::process::{cancel_on_signal, init_logging};
use loopmix_node::config::{DirectorySection, NodeConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "loopmix-node",
    version,
    about = "A loopmix mix node: receives Sphinx packets over QUIC, unwraps one layer, \
             holds each for the delay its sender chose, and forwards it; sends loop cover."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a node directory: a fresh identity key (PKCS#8 PEM, mode 0600)
    /// and a commented default config `node.toml`. With `--authority` the
    /// node registers with those directory authorities and makes a Sphinx key
    /// per epoch; without, it uses a fixed `topology.json` and a static
    /// Sphinx key. Prints the node's entry (id, role, ...) as JSON on stdout.
    Init {
        /// Directory to create the files in (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node role: `mix` or `provider`.
        #[arg(long, default_value = "mix", value_parser = parse_role)]
        role: Role,
        /// UDP address QUIC listens on (port 0 = any free port).
        #[arg(long, default_value = "0.0.0.0:1789")]
        listen: SocketAddr,
        /// HTTP address for GET /metrics.
        #[arg(long, default_value = "127.0.0.1:9189")]
        metrics: SocketAddr,
        /// A directory authority to register with and trust, as
        /// `KEY=URL` (base58 Ed25519 key, e.g. `…=http://192.0.2.1:8700`).
        /// Repeat for each authority.
        #[arg(long = "authority")]
        authorities: Vec<AuthorityEntry>,
        /// k: signatures from pinned authorities a topology needs
        /// (default: a majority of the authorities given).
        #[arg(long)]
        threshold: Option<usize>,
    },
    /// Print this node's topology entry (identity, Sphinx key, address, role).
    Show {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the node until SIGINT or SIGTERM.
    Run {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Log as JSON lines instead of text (log level from RUST_LOG, default info).
        #[arg(long)]
        json_logs: bool,
    },
    /// Measure this machine: raw Sphinx unwrap rate on all cores, the rate a
    /// real node process sustains over QUIC on loopback, their ratio, and the
    /// node's memory with 100,000 packets in its delay queue. With
    /// `--overload`: a node's capacity, then the node driven at twice that
    /// by a flooder and light peers, without and with the per-peer limit.
    Bench(loopmix_node::bench::BenchArgs),
    /// Start a small demo mixnet on loopback (one real node process per
    /// layer) and send a message through it every second.
    Demo(loopmix_node::demo::DemoArgs),
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "mix" => Ok(Role::Mix),
        "provider" => Ok(Role::Provider),
        other => Err(format!("unknown role {other:?}: expected mix or provider")),
    }
}

/// The node's topology entry (fixed-topology mode), or its identity and
/// role (directory mode, where the Sphinx key changes every epoch).
fn entry_for(cfg: &NodeConfig) -> anyhow::Result<serde_json::Value> {
    let id = IdentityKeypair::read_pem(&cfg.node.identity_key)?;
    Ok(match &cfg.node.sphinx_key {
        Some(path) => serde_json::to_value(NodeEntry {
            id: id.node_id(),
            sphinx_key: SphinxKeypair::read_pem(path)?.public(),
            address: cfg.node.listen,
            role: cfg.node.role,
            layer: None,
        })?,
        None => serde_json::json!({ "id": id.node_id(), "role": cfg.node.role }),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            dir,
            role,
            listen,
            metrics,
            authorities,
            threshold,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = dir.join("node.toml");
            if config.exists() {
                anyhow::bail!("{} exists; refusing to overwrite", config.display());
            }
            let directory = (!authorities.is_empty()).then(|| DirectorySection {
                threshold: threshold.unwrap_or(authorities.len() / 2 + 1),
                authorities,
                ..DirectorySection::default()
            });
            if directory.is_none() && threshold.is_some() {
                anyhow::bail!("--threshold needs at least one --authority");
            }
            IdentityKeypair::generate().write_pem(&dir.join("identity.pem"))?;
            if directory.is_none() {
                SphinxKeypair::generate().write_pem(&dir.join("sphinx.pem"))?;
            }
            std::fs::write(
                &config,
                NodeConfig::template(role, listen, metrics, directory.as_ref()),
            )?;
            let cfg = NodeConfig::load(&config)?;
            println!("{}", serde_json::to_string_pretty(&entry_for(&cfg)?)?);
            Ok(())
        }
        Cmd::Show { config } => {
            let cfg = NodeConfig::load(&config)?;
            println!("{}", serde_json::to_string_pretty(&entry_for(&cfg)?)?);
            Ok(())
        }
        Cmd::Run { config, json_logs } => {
            init_logging("info", json_logs);
            let cfg = NodeConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.io_threads())
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                Ok(loopmix_node::node::run(cfg, shutdown).await?)
            })
        }
        Cmd::Bench(args) => {
            // The report is on stdout; the in-process peers' connection
            // logs would drown it (RUST_LOG still wins).
            init_logging("warn", false);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(loopmix_node::bench::run(args))
        }
        Cmd::Demo(args) => {
            init_logging("info", false);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(loopmix_node::demo::run(args))
        }
    }
}
