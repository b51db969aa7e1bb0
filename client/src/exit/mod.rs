//! The exit service (`loopmix-client exit`): a mixnet client like any
//! other, attached to a provider, that opens the TCP connections streams
//! ask for (if its [`Policy`] allows them) and answers over the reply
//! blocks each session supplies — so it never learns who its clients are.

pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::ClientError;
use prometheus::Registry;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

pub use policy::{Policy, Rule};

use crate::config::ClientConfig;
use crate::runtime::{Client, ClientEvent};
use crate::stream::io::{Filler, Shared, pipe};
use crate::stream::mux::Role;
use crate::stream::{Mux, StreamConfig, StreamKey, StreamMetrics, Target, code};

/// Exit limits beyond the per-session ones of [`StreamConfig`].
#[derive(Debug, Clone)]
pub struct ExitConfig {
    pub streams: StreamConfig,
    /// TCP connections open at once, over all sessions.
    pub max_connections: usize,
    /// Name resolution plus TCP connect, at most.
    pub connect_timeout: Duration,
}

impl Default for ExitConfig {
    fn default() -> Self {
        Self {
            streams: StreamConfig::default(),
            max_connections: 512,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs the exit until the process is stopped.
pub async fn run(
    cfg: ClientConfig,
    exit: ExitConfig,
    policy: Policy,
    registry: &Registry,
) -> Result<(), ClientError> {
    let metrics = StreamMetrics::new(registry)?;
    let shared = Shared::new(Mux::exit(exit.streams.clone(), metrics), Role::Exit);
    let (client, mut events) =
        Client::start_with(cfg, registry, Some(Arc::new(Filler(shared.clone())))).await?;
    info!(address = %client.address(), "exit service running");
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shared.clone().housekeeping(cancel.clone()));
    let policy = Arc::new(policy);
    let open = Arc::new(AtomicUsize::new(0));
    let exit = Arc::new(exit);
    while let Some(ev) = events.recv().await {
        let ClientEvent::Received { body, reply, .. } = ev else {
            continue;
        };
        let blocks = reply
            .map(|h| client.take_reply_blocks(h))
            .unwrap_or_default();
        for (key, target) in shared.on_message(&body, blocks) {
            let (shared, policy, open, exit) =
                (shared.clone(), policy.clone(), open.clone(), exit.clone());
            tokio::spawn(async move { connect(shared, policy, open, exit, key, target).await });
        }
    }
    cancel.cancel();
    Ok(())
}

/// Counts an open connection until dropped.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connect(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    open: Arc<AtomicUsize>,
    exit: Arc<ExitConfig>,
    key: StreamKey,
    target: Target,
) {
    let refuse = |code: u8| shared.mux().connected(key, Err(code), Instant::now());
    if !policy.allows_target(&target) {
        debug!(%target, "target refused by the exit policy");
        refuse(code::NOT_ALLOWED);
        return;
    }
    if open.fetch_add(1, Ordering::Relaxed) >= exit.max_connections {
        open.fetch_sub(1, Ordering::Relaxed);
        warn!(
            limit = exit.max_connections,
            "exit connection limit reached; refusing"
        );
        refuse(code::GENERAL_FAILURE);
        return;
    }
    let slot = Slot(open);
    let result = tokio::time::timeout(exit.connect_timeout, dial(&policy, &target)).await;
    let sock = match result {
        Ok(Ok(s)) => s,
        Ok(Err(c)) => {
            debug!(%target, code = c, "connect failed");
            refuse(c);
            return;
        }
        Err(_) => {
            debug!(%target, "connect timed out");
            refuse(code::TTL_EXPIRED);
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    // Attach before announcing: the client sends data only after OPENED.
    let att = shared.attach(key);
    shared.mux().connected(key, Ok(()), Instant::now());
    pipe(shared, sock, att).await;
    drop(slot);
}

fn io_code(e: &std::io::Error) -> u8 {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => code::CONNECTION_REFUSED,
        TimedOut => code::TTL_EXPIRED,
        NetworkUnreachable => code::NETWORK_UNREACHABLE,
        HostUnreachable | AddrNotAvailable => code::HOST_UNREACHABLE,
        _ => code::GENERAL_FAILURE,
    }
}

/// Resolves (names only, here at the exit) and connects to the first
/// allowed address that answers.
async fn dial(policy: &Policy, target: &Target) -> Result<TcpStream, u8> {
    let addrs: Vec<std::net::SocketAddr> = match target {
        Target::Ip(a) => vec![*a],
        Target::Name(n, p) => {
            let found = tokio::net::lookup_host((n.as_str(), *p))
                .await
                .map_err(|_| code::HOST_UNREACHABLE)?;
            found
                .filter(|a| policy.allows_resolved(n, a.ip(), *p))
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(code::NOT_ALLOWED);
    }
    let mut last = code::HOST_UNREACHABLE;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = io_code(&e),
        }
    }
    Err(last)
}
