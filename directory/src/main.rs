//! `loopmix-directory`: a loopmix directory authority. See `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loopmix_core::keys::{IdentityKeypair, NodeId};
use loopmix_directory::config::{
    CONFIG_FILE, DirectoryConfig, EpochSection, IDENTITY_FILE, PeerConfig,
};
use loopmix_net::process::{cancel_on_signal, init_logging};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "loopmix-directory",
    version,
    about = "A loopmix directory authority: accepts signed node descriptors, assigns mixes to \
             layers, and publishes one topology document per epoch, signed by k of the n \
             authorities.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an authority directory: an Ed25519 identity key (PKCS#8 PEM,
    /// mode 0600; kept if it already exists) and a commented config
    /// `directory.toml`. Prints the authority's public key (base58) on stdout:
    /// nodes, clients and the other authorities pin it.
    Init {
        /// Directory to create the files in (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// HTTP listen address (port 0 = any free port, written to data/http.addr).
        #[arg(long, default_value = "0.0.0.0:8700")]
        listen: SocketAddr,
        /// Another authority of this network, as KEY=URL (e.g.
        /// `5Hb...=http://192.0.2.7:8700`) or KEY=file:PATH, PATH being that
        /// authority's data/http.addr (local testnets). Repeat for each peer.
        #[arg(long = "peer", value_name = "KEY=URL", value_parser = parse_peer)]
        peers: Vec<PeerConfig>,
        /// k: signatures a document needs. Default: a majority of 1 + peers.
        #[arg(long)]
        threshold: Option<usize>,
        /// Epoch length (humantime, whole seconds, e.g. `20m`, `6s`).
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
        epoch_length: Duration,
        /// Registration for an epoch closes this long before it starts
        /// (default: a tenth of the epoch, between 1 s and 2 min).
        #[arg(long, value_parser = humantime::parse_duration)]
        registration_lead: Option<Duration>,
        /// Unix seconds at which epoch 1 starts (same at every authority).
        #[arg(long, default_value_t = 0)]
        genesis: u64,
        /// Overwrite an existing directory.toml (the identity key is kept).
        #[arg(long)]
        force: bool,
    },
    /// Run the authority until SIGINT or SIGTERM.
    Run {
        /// Path to directory.toml.
        #[arg(long)]
        config: PathBuf,
        /// Log as JSON lines instead of text (level from RUST_LOG, default info).
        #[arg(long)]
        json_logs: bool,
    },
}

fn parse_peer(s: &str) -> Result<PeerConfig, String> {
    let (key, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=URL or KEY=file:PATH"))?;
    let key: NodeId = key.parse().map_err(|e| format!("{key:?}: {e}"))?;
    if let Some(path) = target.strip_prefix("file:") {
        let path = std::path::absolute(path).map_err(|e| format!("{path}: {e}"))?;
        Ok(PeerConfig {
            key,
            url: None,
            addr_file: Some(path),
        })
    } else if target.starts_with("http://") {
        Ok(PeerConfig {
            key,
            url: Some(target.to_string()),
            addr_file: None,
        })
    } else {
        Err(format!(
            "{target:?}: expected http://HOST:PORT or file:PATH"
        ))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            dir,
            listen,
            peers,
            threshold,
            epoch_length,
            registration_lead,
            genesis,
            force,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = dir.join(CONFIG_FILE);
            if config.exists() && !force {
                anyhow::bail!(
                    "{} exists; refusing to overwrite (use --force; the key is kept)",
                    config.display()
                );
            }
            let key_path = dir.join(IDENTITY_FILE);
            let key = if key_path.exists() {
                IdentityKeypair::read_pem(&key_path)?
            } else {
                let k = IdentityKeypair::generate();
                k.write_pem(&key_path)?;
                k
            };
            let n = 1 + peers.len();
            let threshold = threshold.unwrap_or(n / 2 + 1);
            let mut epoch = EpochSection::with_length(epoch_length, registration_lead);
            epoch.genesis = genesis;
            let text = DirectoryConfig::template(listen, threshold, &epoch, &peers);
            // Validate before writing, so a bad flag leaves no broken file.
            let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
            std::fs::write(&tmp, &text)?;
            if let Err(e) = DirectoryConfig::load(&tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, &config)?;
            eprintln!(
                "wrote {} and {}; the authority's public key:",
                config.display(),
                key_path.display()
            );
            println!("{}", key.node_id());
            Ok(())
        }
        Cmd::Run { config, json_logs } => {
            init_logging("info", json_logs);
            let cfg = DirectoryConfig::load(&config)?;
            for w in cfg.privacy_warnings() {
                tracing::warn!("weak network parameters: {w}");
            }
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                Ok(loopmix_directory::run(cfg, shutdown).await?)
            })
        }
    }
}
