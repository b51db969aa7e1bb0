//! `loopmix-client`: see `loopmix-client --help`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use loopmix_client::config::{CONFIG_FILE, ClientConfig};
use loopmix_client::keys::ClientKeys;
use loopmix_core::keys::NodeId;
use loopmix_core::pki::AuthorityEntry;

#[derive(Parser)]
#[command(
    name = "loopmix-client",
    version,
    about = "A loopmix client: sends and receives messages through the mixnet \
             so that no node or observer learns who talks to whom."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a client directory: identity and encryption keys (PKCS#8 PEM,
    /// mode 0600) and a commented `client.toml`. Prints the client's address.
    Init {
        /// Directory to create the files in (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node id (base58) of the provider that will hold this client's inbox.
        #[arg(long)]
        provider: NodeId,
        /// A directory authority to trust, as KEY=URL. Repeat for each.
        #[arg(long = "authority", required = true)]
        authorities: Vec<AuthorityEntry>,
        /// k: signatures from pinned authorities a topology needs
        /// (default: a majority).
        #[arg(long)]
        threshold: Option<usize>,
    },
    /// Print this client's address (identity.encryption@provider).
    Address {
        /// Path to client.toml.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            dir,
            provider,
            authorities,
            threshold,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = dir.join(CONFIG_FILE);
            if config.exists() {
                bail!("{} exists; refusing to overwrite", config.display());
            }
            let k = threshold.unwrap_or(authorities.len() / 2 + 1);
            let keys = ClientKeys::create(&dir)?;
            std::fs::write(&config, ClientConfig::template(provider, &authorities, k))?;
            ClientConfig::load(&config)?;
            println!("{}", keys.address(provider));
            Ok(())
        }
        Cmd::Address { config } => {
            let cfg = ClientConfig::load(&config)?;
            let keys = ClientKeys::load(&cfg)?;
            println!("{}", keys.address(cfg.client.provider));
            Ok(())
        }
    }
}
