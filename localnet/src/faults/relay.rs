//! A UDP relay that drops, delays, duplicates and reorders datagrams.
//!
//! ```text
//!  peer A ─┐                    ┌─ upstream socket for A ─┐
//!  peer B ─┼─► public socket R ─┼─ upstream socket for B ─┼─► node (listens at X)
//!  client ─┘   (published)      └─ upstream socket for C ─┘
//! ```
//!
//! The node publishes R (`public_address`), so every peer dials R. For each
//! source address the relay opens its own upstream socket towards X, the way
//! a NAT does: the node sees one distinct address per peer and its answers
//! come back on the socket that belongs to that peer, so the relay knows
//! whom to send them to. QUIC authenticates nodes by their TLS keys, never
//! by addresses, so the relay is invisible to the protocol.
//!
//! Faults are set per direction ([`Direction::Inbound`]: peer → node,
//! [`Direction::Outbound`]: node → peer), for every source or for one, and
//! can be changed at any time through a [`RelayHandle`]. Every datagram the
//! relay handles is counted, per relay and per source, so a test can check
//! that the fault it asked for really happened.
//!
//! Bounded: at most [`RelayConfig::max_sources`] sources (idle ones expire,
//! the least recently active is evicted), at most [`RelayConfig::queue`]
//! datagrams waiting per source, at most [`RelayConfig::max_delayed`] held
//! back per source and direction. Overflow is dropped and counted, like a
//! router's queue.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use loopmix_core::mixing::delay_queue::DelayQueue;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest UDP payload (QUIC never sends more than its path MTU, but a
/// relay must not truncate anything).
const MAX_DATAGRAM: usize = 65_535;

/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max`):
/// QUIC sends bursts of full-size datagrams on loopback, and a datagram the
/// kernel drops because the relay's buffer was full would be a fault nobody
/// asked for.
const SOCKET_BUFFER: usize = 4 << 20;

/// Per-source rules at most (a test names a handful of peers).
const MAX_SOURCE_RULES: usize = 4096;

/// What happens to datagrams in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub drop: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram (so
    /// datagrams also overtake each other).
    pub jitter: Duration,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and released right after
    /// the next one in the same direction (or after
    /// [`RelayConfig::reorder_hold`] if none comes).
    pub reorder: f64,
    /// Drop everything: a partition.
    pub blackhole: bool,
}

impl Faults {
    /// Nothing: every datagram passes at once.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
        reorder: 0.0,
        blackhole: false,
    };

    /// Drops each datagram with probability `p`.
    pub fn loss(p: f64) -> Self {
        Self {
            drop: p,
            ..Self::NONE
        }
    }

    /// Drops everything.
    pub fn blackhole() -> Self {
        Self {
            blackhole: true,
            ..Self::NONE
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    fn validate(&self) -> Result<(), RelayError> {
        for (name, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(RelayError::Probability(name, p));
            }
        }
        Ok(())
    }
}

/// Faults of both directions of a link.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LinkFaults {
    /// Source → node.
    pub inbound: Faults,
    /// Node → source.
    pub outbound: Faults,
}

impl LinkFaults {
    pub const NONE: LinkFaults = LinkFaults {
        inbound: Faults::NONE,
        outbound: Faults::NONE,
    };

    /// The same faults in both directions.
    pub fn both(f: Faults) -> Self {
        Self {
            inbound: f,
            outbound: f,
        }
    }

    fn get(&self, dir: Direction) -> &Faults {
        match dir {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }
}

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a source (a peer dialling the node) to the node.
    Inbound,
    /// From the node back to that source.
    Outbound,
}

/// Limits and timers of a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Sources served at once; beyond, the least recently active one is
    /// forgotten (its next datagram opens a new upstream socket, which the
    /// node sees as a new address — QUIC migrates).
    pub max_sources: usize,
    /// A source silent in both directions this long is forgotten. QUIC
    /// keep-alives (every 3 s) keep a live connection's source.
    pub idle_timeout: Duration,
    /// Datagrams from one source waiting for its task.
    pub queue: usize,
    /// Datagrams held back (delay, jitter) per source and direction.
    pub max_delayed: usize,
    /// The longest a reordered datagram waits for a successor.
    pub reorder_hold: Duration,
    /// Seed of the random choices (each source gets its own stream).
    pub seed: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_sources: 1024,
            idle_timeout: Duration::from_secs(60),
            queue: 4096,
            max_delayed: 16_384,
            reorder_hold: Duration::from_millis(50),
            seed: 0x006c_6f6f_706d_6978, // "loopmix"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0} probability {1} is not in 0..=1")]
    Probability(&'static str, f64),
    #[error("more than {MAX_SOURCE_RULES} per-source rules")]
    TooManyRules,
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Width of a datagram-size bucket in [`DirectionStats::sizes`].
pub const SIZE_BUCKET: usize = 64;
/// Buckets of [`DirectionStats::sizes`]: `[64·i, 64·(i+1))` bytes, the last
/// one everything from 64·24 = 1536 bytes up (above any QUIC datagram on
/// loopback). Fixed, so counting costs no memory per datagram.
pub const SIZE_BUCKETS: usize = 25;

/// The bucket of a datagram of `len` bytes.
pub fn size_bucket(len: usize) -> usize {
    (len / SIZE_BUCKET).min(SIZE_BUCKETS - 1)
}

/// Counters of one direction.
#[derive(Debug, Default)]
struct DirCounters {
    /// Bytes of the datagrams that arrived (UDP payload).
    bytes: AtomicU64,
    /// Datagrams that arrived, by [`size_bucket`].
    sizes: [AtomicU64; SIZE_BUCKETS],
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    reordered: AtomicU64,
    overflow: AtomicU64,
    send_errors: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirectionStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionStats {
            received: g(&self.received),
            forwarded: g(&self.forwarded),
            dropped: g(&self.dropped),
            duplicated: g(&self.duplicated),
            delayed: g(&self.delayed),
            reordered: g(&self.reordered),
            overflow: g(&self.overflow),
            send_errors: g(&self.send_errors),
            bytes: g(&self.bytes),
            sizes: std::array::from_fn(|i| g(&self.sizes[i])),
        }
    }

    /// Counts an arriving datagram's size (before any fault applies).
    fn size(&self, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.sizes[size_bucket(len)].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Counters {
    inbound: DirCounters,
    outbound: DirCounters,
}

impl Counters {
    fn dir(&self, d: Direction) -> &DirCounters {
        match d {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }
}

/// What a relay did in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Datagrams that arrived.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Dropped by a fault (loss or blackhole).
    pub dropped: u64,
    /// Sent a second time.
    pub duplicated: u64,
    /// Held back by a delay.
    pub delayed: u64,
    /// Held back until the next one passed.
    pub reordered: u64,
    /// Dropped because a bounded queue was full (not a fault asked for).
    pub overflow: u64,
    /// Sending failed (e.g. the node is down).
    pub send_errors: u64,
    /// Bytes (UDP payloads) of the datagrams that arrived, overflow
    /// excepted: what an observer of this link would count.
    pub bytes: u64,
    /// Datagrams that arrived by size, in [`SIZE_BUCKET`]-byte buckets
    /// ([`size_bucket`]), overflow excepted.
    pub sizes: [u64; SIZE_BUCKETS],
}

impl std::ops::Add for DirectionStats {
    type Output = DirectionStats;
    fn add(self, o: Self) -> Self {
        DirectionStats {
            received: self.received + o.received,
            forwarded: self.forwarded + o.forwarded,
            dropped: self.dropped + o.dropped,
            duplicated: self.duplicated + o.duplicated,
            delayed: self.delayed + o.delayed,
            reordered: self.reordered + o.reordered,
            overflow: self.overflow + o.overflow,
            send_errors: self.send_errors + o.send_errors,
            bytes: self.bytes + o.bytes,
            sizes: std::array::from_fn(|i| self.sizes[i] + o.sizes[i]),
        }
    }
}

impl std::ops::Sub for DirectionStats {
    type Output = DirectionStats;
    fn sub(self, o: Self) -> Self {
        DirectionStats {
            received: self.received.saturating_sub(o.received),
            forwarded: self.forwarded.saturating_sub(o.forwarded),
            dropped: self.dropped.saturating_sub(o.dropped),
            duplicated: self.duplicated.saturating_sub(o.duplicated),
            delayed: self.delayed.saturating_sub(o.delayed),
            reordered: self.reordered.saturating_sub(o.reordered),
            overflow: self.overflow.saturating_sub(o.overflow),
            send_errors: self.send_errors.saturating_sub(o.send_errors),
            bytes: self.bytes.saturating_sub(o.bytes),
            sizes: std::array::from_fn(|i| self.sizes[i].saturating_sub(o.sizes[i])),
        }
    }
}

/// What a relay (or one of its sources) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    pub inbound: DirectionStats,
    pub outbound: DirectionStats,
    /// Datagrams dropped because no upstream was set yet.
    pub no_upstream: u64,
    /// Sources served right now.
    pub sources: u64,
    /// Sources forgotten to make room (`max_sources`).
    pub evicted: u64,
}

impl std::ops::Add for RelayStats {
    type Output = RelayStats;
    /// Counters of two relays (or sources) together.
    fn add(self, o: Self) -> Self {
        RelayStats {
            inbound: self.inbound + o.inbound,
            outbound: self.outbound + o.outbound,
            no_upstream: self.no_upstream + o.no_upstream,
            sources: self.sources + o.sources,
            evicted: self.evicted + o.evicted,
        }
    }
}

impl std::ops::Sub for RelayStats {
    type Output = RelayStats;
    /// The difference of two snapshots (`sources` is the later one's).
    fn sub(self, o: Self) -> Self {
        RelayStats {
            inbound: self.inbound - o.inbound,
            outbound: self.outbound - o.outbound,
            no_upstream: self.no_upstream.saturating_sub(o.no_upstream),
            sources: self.sources,
            evicted: self.evicted.saturating_sub(o.evicted),
        }
    }
}

impl std::fmt::Display for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |s: &DirectionStats| {
            format!(
                "{} in, {} out, {} dropped, {} duplicated, {} delayed, {} reordered, {} overflow",
                s.received,
                s.forwarded,
                s.dropped,
                s.duplicated,
                s.delayed,
                s.reordered,
                s.overflow
            )
        };
        write!(
            f,
            "inbound [{}]; outbound [{}]",
            d(&self.inbound),
            d(&self.outbound)
        )
    }
}

#[derive(Default)]
struct Rules {
    all: LinkFaults,
    per_source: HashMap<SocketAddr, LinkFaults>,
}

/// State shared by the relay's tasks and its handles.
struct Shared {
    public: SocketAddr,
    upstream: RwLock<Option<SocketAddr>>,
    rules: RwLock<Rules>,
    totals: Counters,
    /// Counters of the sources served now.
    sources: Mutex<HashMap<SocketAddr, Arc<Counters>>>,
    no_upstream: AtomicU64,
    evicted: AtomicU64,
}

impl Shared {
    fn faults(&self, src: SocketAddr, dir: Direction) -> Faults {
        let r = self.rules.read().unwrap_or_else(PoisonError::into_inner);
        *r.per_source.get(&src).unwrap_or(&r.all).get(dir)
    }

    fn upstream(&self) -> Option<SocketAddr> {
        *self.upstream.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Counters>>> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Controls a running relay; cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// The address peers send to (what the node publishes).
    pub fn public_addr(&self) -> SocketAddr {
        self.shared.public
    }

    /// Where the node listens now.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.shared.upstream()
    }

    /// Sets where the node listens (e.g. once it has bound port 0, or after
    /// it restarted elsewhere). Sources already served follow at once.
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self
            .shared
            .upstream
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    /// Faults for every source without a rule of its own.
    pub fn set_faults(&self, f: LinkFaults) -> Result<(), RelayError> {
        f.inbound.validate()?;
        f.outbound.validate()?;
        self.shared
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .all = f;
        Ok(())
    }

    /// Faults for datagrams from (and back to) `src` only.
    pub fn set_source_faults(&self, src: SocketAddr, f: LinkFaults) -> Result<(), RelayError> {
        f.inbound.validate()?;
        f.outbound.validate()?;
        let mut r = self
            .shared
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if r.per_source.len() >= MAX_SOURCE_RULES && !r.per_source.contains_key(&src) {
            return Err(RelayError::TooManyRules);
        }
        r.per_source.insert(src, f);
        Ok(())
    }

    /// Removes every fault: all datagrams pass at once again.
    pub fn heal(&self) {
        let mut r = self
            .shared
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *r = Rules::default();
    }

    /// The sources served now.
    pub fn sources(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.shared.sources().keys().copied().collect();
        v.sort();
        v
    }

    /// Totals since the relay started.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            inbound: s.totals.inbound.snapshot(),
            outbound: s.totals.outbound.snapshot(),
            no_upstream: s.no_upstream.load(Ordering::Relaxed),
            sources: s.sources().len() as u64,
            evicted: s.evicted.load(Ordering::Relaxed),
        }
    }

    /// Counters of one source served now (since it was first seen).
    pub fn source_stats(&self, src: SocketAddr) -> Option<RelayStats> {
        let c = self.shared.sources().get(&src).cloned()?;
        Some(RelayStats {
            inbound: c.inbound.snapshot(),
            outbound: c.outbound.snapshot(),
            ..RelayStats::default()
        })
    }
}

/// A running relay; stops when dropped.
pub struct FaultRelay {
    handle: RelayHandle,
    cancel: CancellationToken,
}

impl FaultRelay {
    /// Binds `listen` and starts relaying on `rt` to `upstream` (which can
    /// be set later: until then datagrams are dropped and counted as
    /// `no_upstream`). Callable from outside and inside a runtime.
    pub fn start(
        rt: &tokio::runtime::Handle,
        listen: SocketAddr,
        upstream: Option<SocketAddr>,
        cfg: RelayConfig,
    ) -> Result<FaultRelay, RelayError> {
        let bind_err = |source| RelayError::Bind {
            addr: listen,
            source,
        };
        let std_sock = bind_std(listen).map_err(bind_err)?;
        let public_addr = std_sock.local_addr().map_err(bind_err)?;
        let public = {
            let _guard = rt.enter();
            UdpSocket::from_std(std_sock).map_err(bind_err)?
        };
        let shared = Arc::new(Shared {
            public: public_addr,
            upstream: RwLock::new(upstream),
            rules: RwLock::new(Rules::default()),
            totals: Counters::default(),
            sources: Mutex::new(HashMap::new()),
            no_upstream: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        rt.spawn(accept_loop(
            Arc::new(public),
            shared.clone(),
            cfg,
            cancel.clone(),
        ));
        Ok(FaultRelay {
            handle: RelayHandle { shared },
            cancel,
        })
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.handle.public_addr()
    }
}

impl std::ops::Deref for FaultRelay {
    type Target = RelayHandle;
    fn deref(&self) -> &RelayHandle {
        &self.handle
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A non-blocking UDP socket with large buffers.
fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only makes overflow more likely.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One source as the accept loop sees it.
struct Source {
    tx: mpsc::Sender<Vec<u8>>,
    last_seen: Instant,
}

/// Reads the public socket and hands each datagram to its source's task.
async fn accept_loop(
    public: Arc<UdpSocket>,
    shared: Arc<Shared>,
    cfg: RelayConfig,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sources: HashMap<SocketAddr, Source> = HashMap::new();
    let mut opened: u64 = 0;
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, src) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sweep.tick() => {
                // Tasks end by themselves when idle; forget them here.
                let before = sources.len();
                sources.retain(|_, s| !s.tx.is_closed());
                if sources.len() != before {
                    let mut live = shared.sources();
                    live.retain(|a, _| sources.contains_key(a));
                }
                continue;
            }
            r = public.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // UDP receive errors are per datagram (e.g. a reported
                    // ICMP error); the socket stays usable.
                    debug!(error = %e, "relay receive failed");
                    continue;
                }
            },
        };
        let Some(upstream) = shared.upstream() else {
            shared.no_upstream.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let datagram = buf[..n].to_vec();
        let now = Instant::now();
        if let Some(s) = sources.get_mut(&src)
            && !s.tx.is_closed()
        {
            s.last_seen = now;
            if s.tx.try_send(datagram).is_err() {
                overflow(&shared, src, Direction::Inbound);
            }
            continue;
        }
        sources.remove(&src);
        if sources.len() >= cfg.max_sources.max(1)
            && let Some(oldest) = sources
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(a, _)| *a)
        {
            // Dropping the sender ends that source's task.
            sources.remove(&oldest);
            shared.sources().remove(&oldest);
            shared.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let upstream_sock = match bind_std(unspecified(upstream)).and_then(UdpSocket::from_std) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "relay cannot open an upstream socket");
                overflow(&shared, src, Direction::Inbound);
                continue;
            }
        };
        let counters = Arc::new(Counters::default());
        shared.sources().insert(src, counters.clone());
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        opened += 1;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(opened));
        let link = Link {
            src,
            public: public.clone(),
            upstream: upstream_sock,
            shared: shared.clone(),
            counters,
            cfg: cfg.clone(),
            rng,
        };
        tokio::spawn(link.run(rx, cancel.child_token()));
        // The channel is new and empty: this cannot fail.
        let _ = tx.try_send(datagram);
        sources.insert(src, Source { tx, last_seen: now });
    }
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    let ip = match like.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

fn overflow(shared: &Shared, src: SocketAddr, dir: Direction) {
    shared
        .totals
        .dir(dir)
        .received
        .fetch_add(1, Ordering::Relaxed);
    shared
        .totals
        .dir(dir)
        .overflow
        .fetch_add(1, Ordering::Relaxed);
    if let Some(c) = shared.sources().get(&src) {
        c.dir(dir).received.fetch_add(1, Ordering::Relaxed);
        c.dir(dir).overflow.fetch_add(1, Ordering::Relaxed);
    }
}

/// The faults of one direction of one source: decides each datagram's
/// fate and holds the delayed and reordered ones (sans-IO: the caller sends
/// what [`Shaper::offer`] and [`Shaper::take_due`] return).
struct Shaper {
    /// The core's deadline queue (the one a mix's pool uses): bounded,
    /// ordered by release time, ties in arrival order.
    delayed: DelayQueue<Instant, Vec<u8>>,
    /// A datagram waiting for the next one to overtake it, and its deadline.
    held: Option<(Instant, Vec<u8>)>,
    reorder_hold: Duration,
}

/// What happened to one offered datagram, for the counters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fate {
    dropped: bool,
    duplicated: bool,
    delayed: u64,
    reordered: bool,
    overflow: u64,
}

impl Shaper {
    fn new(max_delayed: usize, reorder_hold: Duration) -> Self {
        Self {
            delayed: DelayQueue::new(max_delayed.max(1)),
            held: None,
            reorder_hold,
        }
    }

    /// Applies `f` to `data`; datagrams to send now are appended to `out`.
    fn offer(
        &mut self,
        data: Vec<u8>,
        f: &Faults,
        now: Instant,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<Vec<u8>>,
    ) -> Fate {
        let mut fate = Fate::default();
        if f.blackhole || (f.drop > 0.0 && rng.random_bool(f.drop)) {
            fate.dropped = true;
            return fate;
        }
        fate.duplicated = f.duplicate > 0.0 && rng.random_bool(f.duplicate);
        let copies = if fate.duplicated {
            vec![data.clone(), data]
        } else {
            vec![data]
        };
        for copy in copies {
            if self.held.is_none() && f.reorder > 0.0 && rng.random_bool(f.reorder) {
                self.held = Some((now + self.reorder_hold, copy));
                fate.reordered = true;
                continue;
            }
            let jitter = if f.jitter.is_zero() {
                Duration::ZERO
            } else {
                f.jitter.mul_f64(rng.random::<f64>())
            };
            let delay = f.delay + jitter;
            if delay.is_zero() {
                self.emit(copy, out);
            } else if self.delayed.push(now + delay, copy).is_ok() {
                fate.delayed += 1;
            } else {
                fate.overflow += 1;
            }
        }
        fate
    }

    /// Sends `data`, then the datagram it was to overtake, if any.
    fn emit(&mut self, data: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        out.push(data);
        if let Some((_, h)) = self.held.take() {
            out.push(h);
        }
    }

    /// Appends every datagram due at `now` to `out`.
    fn take_due(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        while let Some((_, data)) = self.delayed.pop_due(now) {
            self.emit(data, out);
        }
        if self.held.as_ref().is_some_and(|(due, _)| *due <= now)
            && let Some((_, h)) = self.held.take()
        {
            out.push(h);
        }
    }

    /// When [`take_due`](Self::take_due) next has something.
    fn next_due(&self) -> Option<Instant> {
        let d = self.delayed.next_deadline();
        let h = self.held.as_ref().map(|(due, _)| *due);
        match (d, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Both directions of one source: its own upstream socket and task.
struct Link {
    src: SocketAddr,
    public: Arc<UdpSocket>,
    upstream: UdpSocket,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    cfg: RelayConfig,
    rng: ChaCha8Rng,
}

impl Link {
    async fn run(mut self, mut rx: mpsc::Receiver<Vec<u8>>, cancel: CancellationToken) {
        let mut inbound = Shaper::new(self.cfg.max_delayed, self.cfg.reorder_hold);
        let mut outbound = Shaper::new(self.cfg.max_delayed, self.cfg.reorder_hold);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut to_node: Vec<Vec<u8>> = Vec::new();
        let mut to_src: Vec<Vec<u8>> = Vec::new();
        let idle = tokio::time::sleep(self.cfg.idle_timeout);
        tokio::pin!(idle);
        loop {
            let next = match (inbound.next_due(), outbound.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut idle => return,
                m = rx.recv() => {
                    let Some(d) = m else { return };
                    idle.as_mut().reset(Instant::now() + self.cfg.idle_timeout);
                    let f = self.shared.faults(self.src, Direction::Inbound);
                    self.sized(Direction::Inbound, d.len());
                    let fate = inbound.offer(d, &f, Instant::now(), &mut self.rng, &mut to_node);
                    self.count(Direction::Inbound, &fate);
                }
                r = self.upstream.recv_from(&mut buf) => {
                    // Only the node knows this socket; anything else is
                    // not ours to relay.
                    let Ok((n, from)) = r else { continue };
                    if Some(from) != self.shared.upstream() {
                        continue;
                    }
                    idle.as_mut().reset(Instant::now() + self.cfg.idle_timeout);
                    let f = self.shared.faults(self.src, Direction::Outbound);
                    self.sized(Direction::Outbound, n);
                    let fate = outbound.offer(buf[..n].to_vec(), &f, Instant::now(), &mut self.rng, &mut to_src);
                    self.count(Direction::Outbound, &fate);
                }
                _ = loopmix_net::sleep_until(next.map(Instant::into_std)) => {}
            }
            let now = Instant::now();
            inbound.take_due(now, &mut to_node);
            outbound.take_due(now, &mut to_src);
            if !to_node.is_empty() {
                // Read at send time: a node restarted elsewhere is followed
                // even by datagrams delayed before it moved.
                let target = self.shared.upstream();
                for d in to_node.drain(..) {
                    let ok = match target {
                        Some(t) => self.upstream.send_to(&d, t).await.is_ok(),
                        None => false,
                    };
                    self.sent(Direction::Inbound, ok);
                }
            }
            for d in to_src.drain(..) {
                let ok = self.public.send_to(&d, self.src).await.is_ok();
                self.sent(Direction::Outbound, ok);
            }
        }
    }

    fn both(&self, dir: Direction) -> [&DirCounters; 2] {
        [self.shared.totals.dir(dir), self.counters.dir(dir)]
    }

    fn count(&self, dir: Direction, fate: &Fate) {
        for c in self.both(dir) {
            c.received.fetch_add(1, Ordering::Relaxed);
            c.dropped
                .fetch_add(u64::from(fate.dropped), Ordering::Relaxed);
            c.duplicated
                .fetch_add(u64::from(fate.duplicated), Ordering::Relaxed);
            c.delayed.fetch_add(fate.delayed, Ordering::Relaxed);
            c.reordered
                .fetch_add(u64::from(fate.reordered), Ordering::Relaxed);
            c.overflow.fetch_add(fate.overflow, Ordering::Relaxed);
        }
    }

    fn sized(&self, dir: Direction, len: usize) {
        for c in self.both(dir) {
            c.size(len);
        }
    }

    fn sent(&self, dir: Direction, ok: bool) {
        for c in self.both(dir) {
            if ok {
                c.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                c.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
