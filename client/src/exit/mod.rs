//! The exit service (`loopmix-client exit`): a mixnet client like any
//! other, attached to a provider, that opens the TCP connections streams
//! ask for (if its [`Policy`] allows them) and answers over the reply
//! blocks each session supplies — so it never learns who its clients are.
//!
//! A service behind the mixnet (`loopmix-client serve`, [`serve`]) is the
//! same code with one [`Destination::Forward`] address in place of the
//! policy: see `forward.rs` and `docs/SERVICES.md`.

mod forward;
mod own;
pub mod policy;
pub mod reserved;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use self::forward::Forward;
use crate::error::ClientError;
use prometheus::{IntCounterVec, Registry};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use policy::{Policy, Rule, normalize};

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

/// Where an exit connects its streams.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Each stream's own target, if the policy allows it: an exit.
    Policy(Policy),
    /// This one address, whatever target a stream asks for: a service
    /// behind the mixnet. It may be loopback or private (the operator
    /// named it); nothing else is ever reached.
    Forward(SocketAddr),
}

/// Runs the exit until the process is stopped.
pub async fn run(
    cfg: ClientConfig,
    exit: ExitConfig,
    policy: Policy,
    registry: &Registry,
) -> Result<(), ClientError> {
    run_to(cfg, exit, Destination::Policy(policy), registry).await
}

/// Runs a service behind the mixnet until the process is stopped: the exit
/// with every stream connected to `forward`.
pub async fn serve(
    cfg: ClientConfig,
    exit: ExitConfig,
    forward: SocketAddr,
    registry: &Registry,
) -> Result<(), ClientError> {
    run_to(cfg, exit, Destination::Forward(forward), registry).await
}

/// The destination as the running exit holds it.
enum Route {
    /// The policy, kept current with the host's own addresses.
    Policy {
        rx: watch::Receiver<Arc<Policy>>,
        refused: IntCounterVec,
    },
    Forward(Arc<Forward>),
}

/// Runs the exit, to `destination`, until the process is stopped.
pub async fn run_to(
    cfg: ClientConfig,
    exit: ExitConfig,
    destination: Destination,
    registry: &Registry,
) -> Result<(), ClientError> {
    let metrics = StreamMetrics::new(registry)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let route = match destination {
        Destination::Policy(policy) => {
            let refused = loopmix_net::metrics::counter_vec(
                registry,
                "loopmix_exit_policy_refusals_total",
                "Targets the exit policy refused: reason reserved (a private, local or own \
                 address no rule names) or policy (no rule allows it)",
                &["reason"],
            )?;
            // Fail closed at start: without its own addresses the exit
            // could not keep `*` rules off them.
            let own =
                own::addresses().map_err(ClientError::io("listing the exit host's addresses"))?;
            let (tx, rx) = watch::channel(Arc::new(policy.clone().with_own_addresses(own)));
            tokio::spawn(own::refresh(policy, tx, cancel.clone()));
            Route::Policy { rx, refused }
        }
        Destination::Forward(addr) => Route::Forward(Arc::new(Forward::new(addr, registry)?)),
    };
    let shared = Shared::new(Mux::exit(exit.streams.clone(), metrics), Role::Exit);
    let (client, mut events) =
        Client::start_with(cfg, registry, Some(Arc::new(Filler(shared.clone())))).await?;
    match &route {
        Route::Policy { .. } => info!(address = %client.address(), "exit service running"),
        Route::Forward(f) => info!(
            address = %client.address(),
            forward = %f.target(),
            "service running: every stream goes to the forward address"
        ),
    }
    tokio::spawn(shared.clone().housekeeping(cancel.clone()));
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
            let to = match &route {
                Route::Policy { rx, refused } => To::Policy {
                    policy: rx.borrow().clone(),
                    refused: refused.clone(),
                },
                Route::Forward(f) => To::Forward(f.clone()),
            };
            let ctx = Ctx {
                shared: shared.clone(),
                to,
                open: open.clone(),
                exit: exit.clone(),
            };
            tokio::spawn(connect(ctx, key, target));
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

/// Where one stream goes.
enum To {
    /// Its own target, judged by this policy (refusals counted).
    Policy {
        policy: Arc<Policy>,
        refused: IntCounterVec,
    },
    /// The service's address.
    Forward(Arc<Forward>),
}

/// What one connection attempt needs.
struct Ctx {
    shared: Arc<Shared>,
    to: To,
    open: Arc<AtomicUsize>,
    exit: Arc<ExitConfig>,
}

/// Why a target got no connection.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// By the policy; `reserved`: an address it refused is reserved or the
    /// exit's own (someone may be probing the exit's networks).
    Policy { reserved: bool },
    /// Resolution or connection failed: this SOCKS5 reply code.
    Failed(u8),
}

impl Refusal {
    fn code(&self) -> u8 {
        match self {
            Refusal::Policy { .. } => code::NOT_ALLOWED,
            Refusal::Failed(c) => *c,
        }
    }
}

/// Before anything is resolved: may the client ask for `target` (normalised)?
fn admit(policy: &Policy, target: &Target) -> Result<(), Refusal> {
    if policy.allows_target(target) {
        return Ok(());
    }
    let reserved = matches!(target, Target::Ip(a) if policy.is_reserved(a.ip()));
    Err(Refusal::Policy { reserved })
}

async fn connect(ctx: Ctx, key: StreamKey, target: Target) {
    let Ctx {
        shared,
        to,
        open,
        exit,
    } = ctx;
    // "127.0.0.1" sent as a name is the address 127.0.0.1, here as at the
    // SOCKS side: the exit does not trust the client to have normalised it.
    let target = normalize(target);
    let refuse = |r: Refusal| {
        if let (Refusal::Policy { reserved }, To::Policy { refused, .. }) = (&r, &to) {
            // The target is the user's destination: debug only.
            debug!(%target, reserved, "target refused by the exit policy");
            let reason = if *reserved { "reserved" } else { "policy" };
            refused.with_label_values(&[reason]).inc();
        }
        shared.mux().connected(key, Err(r.code()), Instant::now())
    };
    if let To::Policy { policy, .. } = &to
        && let Err(r) = admit(policy, &target)
    {
        refuse(r);
        return;
    }
    if open.fetch_add(1, Ordering::Relaxed) >= exit.max_connections {
        open.fetch_sub(1, Ordering::Relaxed);
        warn!(
            limit = exit.max_connections,
            "exit connection limit reached; refusing"
        );
        refuse(Refusal::Failed(code::GENERAL_FAILURE));
        return;
    }
    let slot = Slot(open);
    let dialing = async {
        match &to {
            To::Policy { policy, .. } => dial(policy, &target).await,
            To::Forward(f) => f.dial().await,
        }
    };
    let result = tokio::time::timeout(exit.connect_timeout, dialing)
        .await
        .unwrap_or(Err(Refusal::Failed(code::TTL_EXPIRED)));
    if let To::Forward(f) = &to {
        f.record(&result);
    }
    let sock = match result {
        Ok(s) => s,
        Err(r) => {
            // A service's failures are its target's, logged by `record`.
            if let (Refusal::Failed(c), To::Policy { .. }) = (&r, &to) {
                debug!(%target, code = c, "connect failed");
            }
            refuse(r);
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    // Attach before announcing: the optimistic data held for the stream
    // comes out at once.
    let att = shared.attach(key);
    shared.connected(key, Ok(()));
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
/// address that the policy allows and that answers. `target` is
/// normalised: an address is connected to exactly as the policy judged it.
async fn dial(policy: &Policy, target: &Target) -> Result<TcpStream, Refusal> {
    let addrs: Vec<SocketAddr> = match target {
        Target::Ip(a) => vec![*a],
        Target::Name(n, p) => {
            let Ok(found) = tokio::net::lookup_host((n.as_str(), *p)).await else {
                // Only an address rule could have allowed the name: a name
                // that does not resolve is then simply not allowed.
                return Err(if policy.allows_name(n, *p) {
                    Refusal::Failed(code::HOST_UNREACHABLE)
                } else {
                    Refusal::Policy { reserved: false }
                });
            };
            // Every address is checked, and only checked ones (in the form
            // they were checked in) are connected to.
            let mut reserved = false;
            let allowed: Vec<SocketAddr> = found
                .map(|a| SocketAddr::new(reserved::canonical(a.ip()), a.port()))
                .filter(|a| {
                    let ok = policy.allows_resolved(n, a.ip(), *p);
                    reserved |= !ok && policy.is_reserved(a.ip());
                    ok
                })
                .collect();
            if allowed.is_empty() {
                return Err(Refusal::Policy { reserved });
            }
            allowed
        }
    };
    let mut last = code::HOST_UNREACHABLE;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = io_code(&e),
        }
    }
    Err(Refusal::Failed(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    async fn dial_normalized(p: &Policy, t: Target) -> Result<TcpStream, Refusal> {
        let t = normalize(t);
        admit(p, &t)?;
        dial(p, &t).await
    }

    /// The test, through the real resolver: `localhost` resolves to
    /// 127.0.0.1 (and perhaps ::1); `*` does not reach it, an explicit
    /// `127.0.0.0/8` rule does.
    #[tokio::test]
    async fn a_name_resolving_to_loopback_at_the_exit() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let localhost = || Target::Name("localhost".into(), port);

        let any = policy(&[&format!("*:{port}")]);
        let r = dial_normalized(&any, localhost()).await;
        assert_eq!(r.err(), Some(Refusal::Policy { reserved: true }));

        let lo = policy(&[&format!("127.0.0.0/8:{port}")]);
        let s = dial_normalized(&lo, localhost()).await.unwrap();
        assert_eq!(s.peer_addr().unwrap().ip().to_string(), "127.0.0.1");

        // The name "127.0.0.1" fares as the address does, both ways.
        let one = policy(&["127.0.0.1:*"]);
        let lit = Target::Name("127.0.0.1".into(), port);
        assert!(dial_normalized(&one, lit.clone()).await.is_ok());
        assert!(dial_normalized(&any, lit).await.is_err());
        let mapped = Target::Ip(format!("[::ffff:127.0.0.1]:{port}").parse().unwrap());
        assert!(dial_normalized(&one, mapped.clone()).await.is_ok());
        assert_eq!(
            dial_normalized(&any, mapped).await.err(),
            Some(Refusal::Policy { reserved: true })
        );
    }

    #[tokio::test]
    async fn unresolvable_names() {
        // `.invalid` never resolves (RFC 6761).
        let t = Target::Name("nothing.invalid".into(), 80);
        let p = policy(&["*:80"]);
        let r = dial_normalized(&p, t.clone()).await.err().unwrap();
        assert_eq!(r.code(), code::HOST_UNREACHABLE);
        // Only an address rule could have allowed it: not allowed.
        let p = policy(&["10.0.0.0/8:80"]);
        let r = dial_normalized(&p, t).await.err().unwrap();
        assert_eq!(r, Refusal::Policy { reserved: false });
    }
}
