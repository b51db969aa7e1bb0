//! `loopmix-client`: see `loopmix-client --help`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use loopmix_client::config::{CONFIG_FILE, ClientConfig};
use loopmix_client::exit::{self, ExitConfig, Policy, Rule};
use loopmix_client::keys::ClientKeys;
use loopmix_client::runtime::{Client, ClientEvent};
use loopmix_client::socks5::{self, SocksConfig};
use loopmix_core::e2e::ClientAddress;
use loopmix_core::keys::NodeId;
use loopmix_core::pki::AuthorityEntry;
use loopmix_net::process::{init_logging, shutdown_signal};
use prometheus::Registry;
use std::time::Duration;

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
    /// Send one message and wait until every fragment is acknowledged.
    Send {
        #[arg(long)]
        config: PathBuf,
        /// Recipient address (identity.encryption@provider).
        #[arg(long)]
        to: ClientAddress,
        /// The message text (or use --file).
        #[arg(long, conflicts_with = "file")]
        message: Option<String>,
        /// Send this file's bytes.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Reply blocks to include, so the recipient can answer without
        /// learning this client's address.
        #[arg(long, default_value_t = 0)]
        reply_blocks: usize,
        /// After delivery, wait this many seconds for an answer and print it.
        #[arg(long)]
        wait_reply: Option<u64>,
    },
    /// Run a SOCKS5 proxy (RFC 1928, CONNECT): each connection becomes a
    /// stream through the mixnet to an exit service. Host names are
    /// resolved at the exit, never locally. Use `curl --socks5-hostname`
    /// (not `--socks5`, which resolves locally). Any username/password
    /// (RFC 1929, never checked) is an isolation key: streams with
    /// different ones use different, unlinkable sessions at the exit
    /// (`curl --socks5-hostname user:pass@127.0.0.1:1080`); see `[socks]`
    /// in the config for the idle time after which a key's session is
    /// replaced.
    Socks5 {
        #[arg(long)]
        config: PathBuf,
        /// Address to accept SOCKS5 clients on. Port 0 picks one; the bound
        /// address is written to `<data_dir>/socks5.addr`.
        #[arg(long, default_value = "127.0.0.1:1080")]
        listen: std::net::SocketAddr,
        /// The exit service's address (identity.encryption@provider).
        #[arg(long)]
        exit: ClientAddress,
    },
    /// Run an exit service: opens the TCP connections that SOCKS5 clients'
    /// streams ask for, if the policy allows them, and answers over the
    /// reply blocks the clients supply (it never learns who they are).
    Exit {
        #[arg(long)]
        config: PathBuf,
        /// A target the exit may connect to, as HOST:PORTS — `*`,
        /// `*.example.org`, `example.org`, `127.0.0.1`, `[::1]`,
        /// `10.0.0.0/8`; ports `*`, `443`, `8000-8100`, `80,443`. Repeat
        /// for more. `*` and names never reach loopback, private,
        /// link-local, multicast or the exit host's own addresses: name
        /// those explicitly (`127.0.0.1:8000`, `10.0.0.0/8:80`) to allow
        /// them. Refused targets get SOCKS5 reply 0x02.
        #[arg(long = "allow", required = true)]
        allow: Vec<Rule>,
    },
    /// Publish a local TCP service under this client's mixnet address:
    /// every stream that reaches it, whatever host and port it names, is
    /// connected to --forward and answered over its client's reply blocks,
    /// so neither side learns where the other is. Reach it with `socks5
    /// --exit <this address>` and, for example, `curl --socks5-hostname
    /// 127.0.0.1:1080 http://service/` (see docs/SERVICES.md).
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// The local service, as IP:PORT (`127.0.0.1:8080`). Loopback and
        /// private addresses are fine; nothing but this address is ever
        /// reached, and it never leaves this machine.
        #[arg(long, value_name = "IP:PORT")]
        forward: std::net::SocketAddr,
    },
    /// Receive messages and print each on stdout (one per line).
    Receive {
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many messages (messages that arrived in the same
        /// pull as the last one are printed too: they are confirmed to the
        /// provider, so dropping them would lose them).
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Answer every message that carries reply blocks with this text.
        #[arg(long)]
        reply: Option<String>,
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
        Cmd::Send {
            config,
            to,
            message,
            file,
            reply_blocks,
            wait_reply,
        } => {
            init_logging("warn", false);
            let body = match (message, file) {
                (Some(m), None) => m.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                _ => bail!("give --message or --file"),
            };
            let cfg = ClientConfig::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(async move {
                let (client, mut events) = Client::start(cfg, &Registry::new()).await?;
                let id = client.send(&to, body, reply_blocks)?;
                loop {
                    match events.recv().await {
                        Some(ClientEvent::Delivered { message }) if message == id => break,
                        Some(ClientEvent::Failed { message, reason }) if message == id => {
                            bail!("message not delivered: {reason}")
                        }
                        Some(_) => {}
                        None => bail!("client stopped"),
                    }
                }
                eprintln!("delivered to {to}'s provider");
                if let Some(secs) = wait_reply {
                    let wait = tokio::time::timeout(Duration::from_secs(secs), async {
                        while let Some(ev) = events.recv().await {
                            if let ClientEvent::Received { body, .. } = ev {
                                return Some(body);
                            }
                        }
                        None
                    });
                    match wait.await {
                        Ok(Some(body)) => print_message(&body)?,
                        _ => bail!("no answer within {secs} s"),
                    }
                }
                client.shutdown();
                Ok(())
            })
        }
        Cmd::Socks5 {
            config,
            listen,
            exit,
        } => {
            let cfg = ClientConfig::load(&config)?;
            let socks = SocksConfig::from_section(&cfg.socks);
            serve_logs_and_runtime()?.block_on(async move {
                let registry = Registry::new();
                tokio::select! {
                    r = socks5::run(cfg, socks, listen, exit, &registry) => {
                        r.context("SOCKS5 proxy")
                    }
                    _ = shutdown_signal() => Ok(()),
                }
            })
        }
        Cmd::Exit { config, allow } => {
            let cfg = ClientConfig::load(&config)?;
            serve_logs_and_runtime()?.block_on(async move {
                let registry = Registry::new();
                tokio::select! {
                    r = exit::run(cfg, ExitConfig::default(), Policy::new(allow), &registry) => {
                        r.context("exit service")
                    }
                    _ = shutdown_signal() => Ok(()),
                }
            })
        }
        Cmd::Serve { config, forward } => {
            let cfg = ClientConfig::load(&config)?;
            serve_logs_and_runtime()?.block_on(async move {
                let registry = Registry::new();
                tokio::select! {
                    r = exit::serve(cfg, ExitConfig::default(), forward, &registry) => {
                        r.context("service")
                    }
                    _ = shutdown_signal() => Ok(()),
                }
            })
        }
        Cmd::Receive {
            config,
            count,
            timeout,
            reply,
        } => {
            init_logging("warn", false);
            let cfg = ClientConfig::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(async move {
                let (client, mut events) = Client::start(cfg, &Registry::new()).await?;
                // "receiving" means the provider holds the inbox: mail sent
                // to us from then on is kept (scripts wait for this line).
                if !client.wait_registered(REGISTER_WAIT).await {
                    eprintln!(
                        "the provider has not confirmed the inbox after {} s; mail sent \
                         before it does is dropped (still trying)",
                        REGISTER_WAIT.as_secs()
                    );
                    client.wait_registered(Duration::MAX).await;
                }
                eprintln!("receiving as {}", client.address());
                let deadline =
                    timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
                let mut got = 0usize;
                while count.is_none_or(|c| got < c) {
                    let ev = match deadline {
                        Some(d) => match tokio::time::timeout_at(d, events.recv()).await {
                            Ok(ev) => ev,
                            Err(_) => break,
                        },
                        None => events.recv().await,
                    };
                    let Some(ev) = ev else { break };
                    if let ClientEvent::Received {
                        body,
                        reply: handle,
                        ..
                    } = ev
                    {
                        got += 1;
                        print_message(&body)?;
                        if let (Some(text), Some(h)) = (&reply, handle)
                            && let Err(e) = client.reply(h, text.clone().into_bytes())
                        {
                            eprintln!("cannot reply: {e}");
                        }
                    }
                }
                // Give queued replies their λ_P slots before stopping.
                if reply.is_some() {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                // Confirms what was received; messages that came in the same
                // pull as the last one counted are confirmed too, so they are
                // printed rather than lost.
                client.close().await;
                while let Ok(ev) = events.try_recv() {
                    if let ClientEvent::Received { body, .. } = ev {
                        print_message(&body)?;
                    }
                }
                Ok(())
            })
        }
    }
}

/// How long `receive` waits for the provider to confirm the inbox before
/// it says so (it goes on waiting).
const REGISTER_WAIT: Duration = Duration::from_secs(30);

fn serve_logs_and_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    init_logging("info", false);
    Ok(tokio::runtime::Runtime::new()?)
}

fn print_message(body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(body)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}
