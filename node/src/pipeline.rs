//! The packet path of a running node:
//!
//! ```text
//! QUIC streams ─► NodeIngress (per-peer rate limit, drop "rate_limited";
//!                 try_send, drop "overload")
//!   ─► Sphinx workers, one thread per core (queued too long: drop "overload";
//!      unwrap, replay, route check)
//!   ─► delay stage (deadline = arrival + header delay, the sans-IO `Mix`)
//!   ─► Egress (one bounded queue + QUIC stream per next hop)
//! ```
//! Each arrow is a bounded channel. Only the first one drops on overflow;
//! the later ones apply back-pressure, which lands as drops at the first.
//!
//! Two things keep an overloaded node useful rather than merely alive:
//! [`PeerLimits`] gives every neighbour (and every client of a provider) its
//! own token bucket before any Sphinx work, so one flooding peer cannot fill
//! the ingress queue that everyone shares; and the workers drop a packet
//! that waited longer than `ingress_max_wait` for them, unread, so under
//! sustained overload the queue cannot turn into seconds of delay that would
//! make every packet `late` after its (expensive) unwrap.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use loopmix_core::keys::NodeId;
use loopmix_core::mixing::delivery::{FinalPacket, FinalPayload};
use loopmix_core::mixing::entropy::EntropyWindow;
use loopmix_core::mixing::final_hop::{FinalHop, OwnLoops};
use loopmix_core::mixing::loops::LoopTracker;
use loopmix_core::mixing::mix::{Decision, Mix, MixConfig};
use loopmix_core::mixing::processor::{Processed, SphinxProcessor};
use loopmix_core::topology::Topology;
use loopmix_core::wire::{Frame, FrameError};
pub use loopmix_net::sleep_until;
use loopmix_net::transport::PeerKind;
use loopmix_net::transport::egress::{Egress, OutPacket};
use loopmix_net::transport::ingress::IngressSink;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::liveness::{NodeLiveness, RouteIds};
use crate::metrics::NodeMetrics;
use crate::provider::delivery::DeliveryQueue;

/// What every stage of a running node reads: its id, the topology in force,
/// metrics, its own loops in flight, liveness, and (providers) the final-hop
/// queue. One per node, behind an `Arc`.
pub struct NodeContext {
    pub me: NodeId,
    topology: RwLock<Arc<Topology>>,
    pub metrics: NodeMetrics,
    /// Our loop cover in flight; tells our returning loops from packets to
    /// deliver.
    pub loops: Mutex<OwnLoops<Instant, RouteIds>>,
    /// The network's down list and this node's own evidence.
    pub liveness: NodeLiveness,
    /// Providers only: where final-hop packets for clients (and drop cover
    /// for us) go. Unset on a mix, which drops them.
    pub final_hop: OnceLock<DeliveryQueue>,
    /// Test-only fault injection (`mixing.fault_drop_rate`); 0 normally.
    pub fault_drop_rate: f64,
    /// A packet that waited longer than this for a worker is dropped as
    /// `overload` without being unwrapped (`mixing.ingress_max_wait`).
    pub ingress_max_wait: Duration,
}

impl NodeContext {
    pub fn new(
        me: NodeId,
        topology: Topology,
        metrics: NodeMetrics,
        loops: LoopTracker<Instant, RouteIds>,
    ) -> Self {
        Self {
            me,
            topology: RwLock::new(Arc::new(topology)),
            metrics,
            loops: Mutex::new(OwnLoops::new(me, loops)),
            liveness: NodeLiveness::default(),
            final_hop: OnceLock::new(),
            fault_drop_rate: 0.0,
            ingress_max_wait: Duration::MAX,
        }
    }

    pub fn topology(&self) -> Arc<Topology> {
        match self.topology.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set_topology(&self, t: Topology) {
        let t = Arc::new(t);
        match self.topology.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }

    pub fn loops(&self) -> std::sync::MutexGuard<'_, OwnLoops<Instant, RouteIds>> {
        match self.loops.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn drop_packet(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }
}

/// A packet waiting for a Sphinx worker.
pub struct Job {
    pub frame: Frame,
    pub received: Instant,
}

/// A processed packet on its way to the delay stage.
pub struct Delayed {
    pub next_hop: NodeId,
    pub key_epoch: u64,
    pub packet: Vec<u8>,
    pub received: Instant,
    pub intended: Duration,
}

/// One token bucket's settings: `rate` packets per second sustained,
/// `burst` at once after being idle. `rate == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const OFF: Self = Self { rate: 0, burst: 0 };

    fn limiter(self) -> Option<DefaultKeyedRateLimiter<NodeId>> {
        let rate = NonZeroU32::new(self.rate)?;
        // A zero burst is refused by the config; never let it mean "nothing passes".
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ))
    }
}

/// How often [`PeerLimits::housekeeping`] runs: idle limiter entries are
/// forgotten and rate-limited peers are logged, once each, at this pace.
pub const LIMITER_INTERVAL: Duration = Duration::from_secs(10);

/// Distinct rate-limited peers counted per interval; beyond, only their
/// drops are. Bounds this map under a flood of fresh client keys.
const OFFENDERS_TRACKED: usize = 1024;

/// Rate-limited peers named in the log per interval (the heaviest first);
/// the rest are summed up in one line.
pub const OFFENDERS_LOGGED: usize = 16;

/// Who went over their budget since the last housekeeping.
#[derive(Default)]
struct Offenders {
    peers: HashMap<NodeId, (PeerKind, u64)>,
    /// Drops of peers beyond [`OFFENDERS_TRACKED`].
    untracked_drops: u64,
}

/// What one housekeeping round found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LimiterReport {
    /// Peers with rate-limited packets in the interval and their drops,
    /// heaviest first (at most [`OFFENDERS_TRACKED`]).
    pub offenders: Vec<(NodeId, PeerKind, u64)>,
    /// Drops of further peers, when more than [`OFFENDERS_TRACKED`] were limited.
    pub untracked_drops: u64,
    /// Limiter entries left after forgetting idle ones (nodes + clients).
    pub keys: usize,
}

impl LimiterReport {
    /// Rate-limited peers in the interval (a lower bound past
    /// [`OFFENDERS_TRACKED`]).
    pub fn peers(&self) -> usize {
        self.offenders.len() + usize::from(self.untracked_drops > 0)
    }
}

/// Per-peer admission at the ingress, before any Sphinx work: one keyed
/// token bucket (governor GCRA) for topology nodes and one for clients (a
/// client's key is its identity, the same on every connection it makes).
///
/// Memory: governor keeps one small entry per key it has seen. Only peers
/// that completed a QUIC handshake with an accepted key reach this (topology
/// nodes, and at most `provider.max_clients` client connections at a time),
/// and [`housekeeping`](Self::housekeeping) forgets every entry whose bucket
/// is full again (idle for `burst / rate` seconds) every [`LIMITER_INTERVAL`].
/// So the map holds at most the nodes, the connected clients and the keys
/// that handshook within the last interval.
pub struct PeerLimits {
    nodes: Option<DefaultKeyedRateLimiter<NodeId>>,
    clients: Option<DefaultKeyedRateLimiter<NodeId>>,
    offenders: Mutex<Offenders>,
}

impl PeerLimits {
    pub fn new(nodes: RateLimit, clients: RateLimit) -> Self {
        Self {
            nodes: nodes.limiter(),
            clients: clients.limiter(),
            offenders: Mutex::new(Offenders::default()),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(RateLimit::OFF, RateLimit::OFF)
    }

    fn limiter(&self, kind: PeerKind) -> Option<&DefaultKeyedRateLimiter<NodeId>> {
        match kind {
            PeerKind::Node => self.nodes.as_ref(),
            PeerKind::Client => self.clients.as_ref(),
        }
    }

    /// Takes one packet from `peer`'s budget; `false`: over its limit.
    pub fn admit(&self, peer: &NodeId, kind: PeerKind) -> bool {
        let Some(limiter) = self.limiter(kind) else {
            return true;
        };
        if limiter.check_key(peer).is_ok() {
            return true;
        }
        let mut o = match self.offenders.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let o = &mut *o;
        if let Some((_, n)) = o.peers.get_mut(peer) {
            *n += 1;
        } else if o.peers.len() < OFFENDERS_TRACKED {
            o.peers.insert(*peer, (kind, 1));
        } else {
            o.untracked_drops += 1;
        }
        false
    }

    /// Forgets idle limiter entries and returns (and resets) who was
    /// rate-limited since the last call.
    pub fn housekeeping(&self) -> LimiterReport {
        let mut keys = 0;
        for l in [&self.nodes, &self.clients].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
            keys += l.len();
        }
        let taken = {
            let mut o = match self.offenders.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            std::mem::take(&mut *o)
        };
        let mut offenders: Vec<_> = taken
            .peers
            .into_iter()
            .map(|(id, (kind, n))| (id, kind, n))
            .collect();
        offenders.sort_by_key(|o| std::cmp::Reverse(o.2));
        LimiterReport {
            offenders,
            untracked_drops: taken.untracked_drops,
            keys,
        }
    }

    /// Runs [`housekeeping`](Self::housekeeping) every [`LIMITER_INTERVAL`]
    /// until cancelled: one log line per rate-limited peer per interval
    /// (never one per packet), and the limiter gauges.
    pub async fn run_housekeeping(
        self: Arc<Self>,
        metrics: NodeMetrics,
        cancel: CancellationToken,
    ) {
        if self.nodes.is_none() && self.clients.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(LIMITER_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let r = self.housekeeping();
            metrics.rate_limited_peers.set(r.peers() as i64);
            metrics.rate_limiter_keys.set(r.keys as i64);
            for (peer, kind, dropped) in r.offenders.iter().take(OFFENDERS_LOGGED) {
                warn!(
                    peer = %peer.short(),
                    kind = kind.label(),
                    dropped,
                    interval = ?LIMITER_INTERVAL,
                    "peer over its rate limit: excess dropped (reason rate_limited)"
                );
            }
            let rest = &r.offenders[r.offenders.len().min(OFFENDERS_LOGGED)..];
            if !rest.is_empty() || r.untracked_drops > 0 {
                let dropped = rest.iter().map(|o| o.2).sum::<u64>() + r.untracked_drops;
                warn!(
                    peers = rest.len(),
                    more_untracked = r.untracked_drops > 0,
                    dropped,
                    "more peers over their rate limit (not named one by one)"
                );
            }
        }
    }
}

/// Receives frames from the transport and queues them for the workers.
pub struct NodeIngress {
    pub tx: Sender<Job>,
    pub shared: Arc<NodeContext>,
    pub limits: Arc<PeerLimits>,
}

impl IngressSink for NodeIngress {
    fn packet(&self, peer: NodeId, frame: Frame, received: Instant) {
        self.packet_from(peer, PeerKind::Node, frame, received);
    }

    fn packet_from(&self, peer: NodeId, kind: PeerKind, frame: Frame, received: Instant) {
        self.shared.metrics.received.inc();
        // Before the shared queue: a flooding peer spends its own budget,
        // not everyone's queue places.
        if !self.limits.admit(&peer, kind) {
            self.shared.drop_packet("rate_limited");
            return;
        }
        match self.tx.try_send(Job { frame, received }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.drop_packet("overload")
            }
        }
    }

    fn malformed(&self, peer: NodeId, err: FrameError) {
        let label = match err {
            FrameError::BadPreamble => "bad_preamble",
            FrameError::UnknownKind(_) => "unknown_kind",
            FrameError::WrongSize { .. } => "wrong_size",
        };
        self.shared
            .metrics
            .malformed_frames
            .with_label_values(&[label])
            .inc();
        if !err.is_fatal() {
            self.shared.drop_packet("malformed");
        }
        debug!(peer = %peer.short(), error = %err, "malformed frame");
    }
}

/// Starts `n` Sphinx worker threads. They exit once `stop` is set and the
/// queue is empty, or when every sender is gone.
pub fn spawn_workers(
    n: usize,
    rx: Receiver<Job>,
    processor: Arc<SphinxProcessor>,
    shared: Arc<NodeContext>,
    out: mpsc::Sender<Vec<Delayed>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (rx, p, s, out, stop) = (
                rx.clone(),
                processor.clone(),
                shared.clone(),
                out.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name(format!("sphinx-{i}"))
                .spawn(move || worker(rx, p, s, out, stop))
        })
        .collect()
}

/// Packets a worker hands the delay stage at once, at most. A batch goes
/// as soon as the worker's queue is empty, so batching only happens under
/// load, where it saves a wake-up of the delay stage per packet and holds
/// a packet back by at most this many unwraps of one worker.
pub const DELAY_BATCH: usize = 16;

/// How many batches the worker → delay-stage channel holds: about 8192
/// packets when the batches are full.
pub const DELAY_CHANNEL_BATCHES: usize = 8192 / DELAY_BATCH;

fn worker(
    rx: Receiver<Job>,
    processor: Arc<SphinxProcessor>,
    shared: Arc<NodeContext>,
    out: mpsc::Sender<Vec<Delayed>>,
    stop: Arc<AtomicBool>,
) {
    let mut pending: Vec<Delayed> = Vec::with_capacity(DELAY_BATCH);
    // Back-pressure: if the delay stage is saturated this blocks, the
    // ingress queue fills and the excess drops at the edge.
    let flush = |pending: &mut Vec<Delayed>| {
        let n = pending.len() as u64;
        let batch = std::mem::replace(pending, Vec::with_capacity(DELAY_BATCH));
        if out.blocking_send(batch).is_err() {
            shared
                .metrics
                .dropped
                .with_label_values(&["shutdown"])
                .inc_by(n);
        }
    };
    loop {
        if pending.len() >= DELAY_BATCH {
            flush(&mut pending);
        }
        // With packets pending, only take a job that is already there:
        // otherwise they go now, before this worker waits.
        let job = if pending.is_empty() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => break,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(j) => j,
                Err(_) => {
                    flush(&mut pending);
                    continue;
                }
            }
        };
        let start = Instant::now();
        // Shed what the queue made stale before paying for it: under
        // sustained overload this caps the queueing delay, so what is
        // accepted still leaves at its deadline instead of all turning `late`.
        if start.saturating_duration_since(job.received) > shared.ingress_max_wait {
            shared.drop_packet("overload");
            continue;
        }
        let result = processor.process(job.frame.key_epoch, &job.frame.packet);
        shared
            .metrics
            .sphinx_seconds
            .observe(start.elapsed().as_secs_f64());
        match result {
            Err(rejection) => shared.drop_packet(rejection.label()),
            Ok(Processed::Forward {
                next_hop,
                packet,
                delay,
                clamped,
            }) => {
                if clamped {
                    shared.metrics.delay_clamped.inc();
                }
                if shared.fault_drop_rate > 0.0
                    && rand::RngExt::random_bool(&mut rand::rng(), shared.fault_drop_rate)
                {
                    shared.drop_packet("fault_injected");
                    continue;
                }
                if !shared.topology().contains(&next_hop) {
                    shared.drop_packet("unknown_next_hop");
                    continue;
                }
                let item = Delayed {
                    next_hop,
                    key_epoch: job.frame.key_epoch,
                    packet,
                    received: job.received,
                    intended: delay,
                };
                pending.push(item);
            }
            Ok(Processed::Final {
                destination,
                identifier,
                payload,
            }) => {
                // The lock is released before the estimator's is taken.
                let fate = shared
                    .loops()
                    .on_final_hop(&destination, &identifier, Instant::now());
                if let FinalHop::OwnLoop { sent, rtt, route } = fate {
                    shared.liveness.returned(&route, sent);
                    shared.metrics.cover_returned.inc();
                    shared.metrics.loop_rtt.observe(rtt.as_secs_f64());
                    continue;
                }
                let Some(queue) = shared.final_hop.get() else {
                    shared.drop_packet("unexpected_final_hop");
                    continue;
                };
                // Sealed payloads (SURB uses) go to the delivery rules too:
                // they are stored for the client to open.
                let offered = queue.offer(FinalPacket {
                    destination,
                    identifier,
                    key_epoch: job.frame.key_epoch,
                    payload: FinalPayload::of(payload),
                });
                if !offered {
                    shared.drop_packet("overload");
                }
            }
        }
    }
    if !pending.is_empty() {
        flush(&mut pending);
    }
}

/// How often the delay stage publishes its Eq. 5 entropy and mean pool
/// size (each gauge is the average over one such window).
pub const ENTROPY_WINDOW: Duration = Duration::from_secs(10);

/// What the delay stage reacts to.
pub enum DelayEvent<'a> {
    /// Packets from the workers, all handed over at one `now` (drained).
    Processed(&'a mut Vec<Delayed>),
    /// The stage woke up (a deadline passed, or before it waits again):
    /// release what is due.
    Wake,
}

/// The delay stage without its I/O: the core's `Mix` fed the stage's
/// events at the stage's clock, and the entropy window it publishes.
/// [`DelayStage::run`] is this plus a channel, a timer and the egress; a
/// test feeds it the simulator's event sequence.
pub struct DelayPool {
    mix: Mix<Instant, Delayed>,
    window_start: Instant,
}

impl DelayPool {
    pub fn new(cfg: MixConfig, now: Instant) -> Self {
        Self {
            mix: Mix::new(cfg),
            window_start: now,
        }
    }

    /// Handles `event` at `now`: its decisions, in order, go to `decided`.
    pub fn step(
        &mut self,
        event: DelayEvent<'_>,
        now: Instant,
        decided: &mut Vec<Decision<Instant, Delayed>>,
    ) {
        match event {
            DelayEvent::Processed(batch) => {
                for item in batch.drain(..) {
                    let (received, intended) = (item.received, item.intended);
                    decided.extend(self.mix.on_processed(item, received, intended, now));
                }
            }
            DelayEvent::Wake => {
                while let Some(d) = self.mix.poll_due(now) {
                    decided.push(d);
                }
            }
        }
    }

    /// When the next packet is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.mix.next_deadline()
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.mix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mix.is_empty()
    }

    /// Once [`ENTROPY_WINDOW`] has passed since the last window: the one
    /// that ends now, and the latest `H_t` (what the entropy gauge keeps
    /// through a window without departures).
    pub fn entropy_window(&mut self, now: Instant) -> Option<(EntropyWindow, f64)> {
        if now.saturating_duration_since(self.window_start) < ENTROPY_WINDOW {
            return None;
        }
        self.window_start = now;
        Some((self.mix.take_entropy_window(now), self.mix.entropy_bits()))
    }

    /// Empties the pool (shutdown); returns how many packets it held.
    pub fn drain_all(&mut self) -> usize {
        self.mix.drain_all().len()
    }
}

/// Holds packets until their deadline and hands them to the egress.
pub struct DelayStage {
    pub shared: Arc<NodeContext>,
    pub egress: Egress,
    pub limit: usize,
    pub late_tolerance: Duration,
    pub drain: Duration,
}

impl DelayStage {
    /// Runs until every worker has exited (the input closes), then keeps
    /// forwarding what is queued at its deadline for at most `drain`.
    pub async fn run(self, mut rx: mpsc::Receiver<Vec<Delayed>>) {
        // The rules (deadline, due-at-once, overload, late, entropy) are
        // the sans-IO `Mix` the simulator drives too; this is its I/O.
        let mut pool = DelayPool::new(
            MixConfig {
                queue_limit: self.limit,
                late_tolerance: self.late_tolerance,
            },
            Instant::now(),
        );
        let mut batches = Vec::with_capacity(64);
        let mut batch = Vec::with_capacity(256);
        let mut decided = Vec::with_capacity(256);
        loop {
            self.step(&mut pool, DelayEvent::Wake, &mut decided);
            let next = pool.next_deadline();
            tokio::select! {
                n = rx.recv_many(&mut batches, 64) => {
                    if n == 0 {
                        break;
                    }
                    for b in batches.drain(..) {
                        batch.extend(b);
                    }
                    self.step(&mut pool, DelayEvent::Processed(&mut batch), &mut decided);
                }
                _ = sleep_until(next), if next.is_some() => {}
            }
            self.shared.metrics.delay_queue.set(pool.len() as i64);
            if let Some((window, latest)) = pool.entropy_window(Instant::now()) {
                self.publish_entropy(window, latest);
            }
        }
        // Shutdown: honour deadlines for up to `drain`, then count the rest.
        let give_up = Instant::now() + self.drain;
        while let Some(next) = pool.next_deadline() {
            if next > give_up {
                break;
            }
            sleep_until(Some(next)).await;
            self.step(&mut pool, DelayEvent::Wake, &mut decided);
            self.shared.metrics.delay_queue.set(pool.len() as i64);
        }
        let left = pool.drain_all();
        if left > 0 {
            warn!(packets = left, "shutdown: delayed packets not forwarded");
            self.shared
                .metrics
                .dropped
                .with_label_values(&["shutdown"])
                .inc_by(left as u64);
        }
        self.shared.metrics.delay_queue.set(0);
    }

    /// `event` now, and what its decisions mean: a send or a drop.
    fn step(
        &self,
        pool: &mut DelayPool,
        event: DelayEvent<'_>,
        decided: &mut Vec<Decision<Instant, Delayed>>,
    ) {
        let now = Instant::now();
        pool.step(event, now, decided);
        for d in decided.drain(..) {
            match d {
                Decision::Forward { item, .. } => self.forward(item, now),
                Decision::Drop { reason, .. } => self.shared.drop_packet(reason.label()),
            }
        }
    }

    /// Sets `loopmix_node_entropy_bits` and `loopmix_node_pool_size_mean`
    /// to the averages of the window that ends now. Without departures the
    /// entropy gauge keeps the latest `H_t`.
    fn publish_entropy(&self, w: EntropyWindow, latest_bits: f64) {
        let m = &self.shared.metrics;
        m.entropy_bits
            .set(w.mean_entropy_bits.unwrap_or(latest_bits));
        m.pool_size_mean.set(w.mean_pool_size.unwrap_or(0.0));
    }

    fn forward(&self, item: Delayed, now: Instant) {
        let m = &self.shared.metrics;
        let held = now.saturating_duration_since(item.received);
        m.hop_delay_error
            .observe(held.saturating_sub(item.intended).as_secs_f64());
        let topology = self.shared.topology();
        let Some(entry) = topology.get(&item.next_hop) else {
            // The next hop left the topology while the packet was delayed.
            self.shared.drop_packet("unknown_next_hop");
            return;
        };
        let pkt = OutPacket {
            key_epoch: item.key_epoch,
            packet: item.packet,
        };
        match self.egress.send(item.next_hop, entry.address, pkt) {
            Ok(()) => m.forwarded.inc(),
            Err(refused) => self.shared.drop_packet(refused.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bytes::Bytes;
    use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
    use loopmix_core::mixing::processor::KeyRing;
    use loopmix_core::topology::{NetworkParams, NodeEntry, Role, TopologyDocument};

    fn id() -> NodeId {
        IdentityKeypair::generate().node_id()
    }

    fn shared() -> Arc<NodeContext> {
        shared_with(&SphinxKeypair::generate())
    }

    /// A mix alone in its topology, with Sphinx key `key`.
    fn shared_with(key: &SphinxKeypair) -> Arc<NodeContext> {
        let mix = NodeEntry {
            id: id(),
            sphinx_key: key.public(),
            address: ([127, 0, 0, 1], 1).into(),
            role: Role::Mix,
            layer: Some(1),
        };
        let me = mix.id;
        let doc = TopologyDocument {
            params: NetworkParams {
                epoch: 1,
                layers: 1,
                mean_hop_delay_ms: 50.0,
                lambda_p_per_s: 0.0,
                lambda_l_per_s: 0.0,
                lambda_d_per_s: 0.0,
                lambda_m_per_s: 0.0,
                payload_size: 1024,
            },
            nodes: vec![mix],
        };
        Arc::new(NodeContext::new(
            me,
            Topology::new(doc).unwrap(),
            NodeMetrics::new().unwrap(),
            LoopTracker::new(10, Duration::from_secs(1), 10),
        ))
    }

    /// A mix alone in its topology and a processor holding its epoch-1
    /// Sphinx key, so packets built for it unwrap.
    fn keyed_node() -> (Arc<NodeContext>, Arc<SphinxProcessor>) {
        use loopmix_core::mixing::processor::KeySlot;
        use loopmix_core::mixing::replay::ReplayCache;
        let key = SphinxKeypair::generate();
        let s = shared_with(&key);
        let ring = KeyRing::default();
        ring.insert(KeySlot {
            epoch: 1,
            key: SphinxKeypair::from_secret(key.secret().clone()),
            replay: ReplayCache::new(1000, 1e-6).unwrap(),
        });
        (
            s,
            Arc::new(SphinxProcessor::new(ring, Duration::from_secs(10))),
        )
    }

    fn frame() -> Frame {
        Frame {
            key_epoch: 1,
            packet: Bytes::from_static(&[0; 64]),
        }
    }

    fn dropped(s: &NodeContext, reason: &str) -> u64 {
        s.metrics.dropped.with_label_values(&[reason]).get()
    }

    /// Sends `n` frames from `peer` and returns how many reached the queue.
    fn flood(
        ingress: &NodeIngress,
        rx: &Receiver<Job>,
        peer: NodeId,
        kind: PeerKind,
        n: usize,
    ) -> usize {
        let before = rx.len();
        for _ in 0..n {
            ingress.packet_from(peer, kind, frame(), Instant::now());
        }
        rx.len() - before
    }

    #[test]
    fn a_flooding_peer_spends_its_own_budget_not_the_shared_queue() {
        let shared = shared();
        let (tx, rx) = crossbeam_channel::bounded(100);
        // 1 packet/s: only a few tokens accrue while the test runs, even
        // on a slow machine.
        let limits = Arc::new(PeerLimits::new(
            RateLimit { rate: 1, burst: 50 },
            RateLimit { rate: 1, burst: 5 },
        ));
        let ingress = NodeIngress {
            tx,
            shared: shared.clone(),
            limits: limits.clone(),
        };
        let (flooder, honest, client) = (id(), id(), id());

        let flooded = flood(&ingress, &rx, flooder, PeerKind::Node, 1000);
        assert!((50..=55).contains(&flooded), "flooder got {flooded} in");
        let limited = dropped(&shared, "rate_limited");
        assert_eq!(limited, 1000 - flooded as u64);
        // The queue (100) still has room: the honest node gets all 20 in.
        assert_eq!(flood(&ingress, &rx, honest, PeerKind::Node, 20), 20);
        // Clients have their own, smaller bucket, per client key.
        let c = flood(&ingress, &rx, client, PeerKind::Client, 20);
        assert!((5..=10).contains(&c), "client got {c} in");
        assert_eq!(dropped(&shared, "overload"), 0);
        assert_eq!(shared.metrics.received.get(), 1040);

        // Logged once per peer per interval, heaviest first, then reset.
        let r = limits.housekeeping();
        let named: Vec<(NodeId, PeerKind)> = r.offenders.iter().map(|o| (o.0, o.1)).collect();
        assert_eq!(
            named,
            vec![(flooder, PeerKind::Node), (client, PeerKind::Client)]
        );
        assert_eq!(r.offenders[0].2, limited);
        assert_eq!(r.peers(), 2);
        assert!(limits.housekeeping().offenders.is_empty());
    }

    #[test]
    fn without_a_limit_one_flooder_fills_the_queue_for_everyone() {
        // The failure the limit exists for: same flood, no per-peer limit.
        let shared = shared();
        let (tx, rx) = crossbeam_channel::bounded(100);
        let ingress = NodeIngress {
            tx,
            shared: shared.clone(),
            limits: Arc::new(PeerLimits::unlimited()),
        };
        assert_eq!(flood(&ingress, &rx, id(), PeerKind::Node, 1000), 100);
        assert_eq!(flood(&ingress, &rx, id(), PeerKind::Node, 20), 0);
        assert_eq!(dropped(&shared, "overload"), 920);
        assert_eq!(dropped(&shared, "rate_limited"), 0);
    }

    #[test]
    fn idle_limiter_entries_are_forgotten() {
        // Fresh keys (clients can make any number) must not grow the map.
        let limits = PeerLimits::new(
            RateLimit {
                rate: 1000,
                burst: 1,
            },
            RateLimit {
                rate: 1000,
                burst: 1,
            },
        );
        for _ in 0..200 {
            assert!(limits.admit(&id(), PeerKind::Client));
        }
        std::thread::sleep(Duration::from_millis(50));
        let r = limits.housekeeping();
        assert_eq!(r.keys, 0, "idle buckets are full again and dropped");
        assert!(r.offenders.is_empty());
    }

    #[test]
    fn offenders_beyond_the_tracked_number_are_still_counted() {
        let limits = PeerLimits::new(RateLimit { rate: 1, burst: 1 }, RateLimit::OFF);
        for _ in 0..OFFENDERS_TRACKED + 10 {
            let peer = id();
            assert!(limits.admit(&peer, PeerKind::Node));
            assert!(!limits.admit(&peer, PeerKind::Node));
        }
        // Clients are not limited when their limit is off.
        assert!((0..100).all(|_| limits.admit(&NodeId([9; 32]), PeerKind::Client)));
        let r = limits.housekeeping();
        assert_eq!(r.offenders.len(), OFFENDERS_TRACKED);
        assert_eq!(r.untracked_drops, 10);
    }

    #[test]
    fn workers_shed_stale_packets_without_unwrapping_them() {
        let mut s = shared();
        Arc::get_mut(&mut s).unwrap().ingress_max_wait = Duration::from_millis(100);
        let (tx, rx) = crossbeam_channel::bounded(10);
        let (out, _delayed) = mpsc::channel(10);
        let stop = Arc::new(AtomicBool::new(false));
        let processor = Arc::new(SphinxProcessor::new(
            KeyRing::default(),
            Duration::from_secs(10),
        ));
        let stale = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        tx.send(Job {
            frame: frame(),
            received: stale,
        })
        .unwrap();
        tx.send(Job {
            frame: frame(),
            received: Instant::now(),
        })
        .unwrap();
        drop(tx);
        let workers = spawn_workers(1, rx, processor, s.clone(), out, stop).unwrap();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(dropped(&s, "overload"), 1, "the stale packet");
        // The fresh one was processed: no key for it here.
        assert_eq!(dropped(&s, "unknown_key") + dropped(&s, "malformed"), 1);
        assert_eq!(s.metrics.sphinx_seconds.get_sample_count(), 1);
    }

    #[test]
    fn a_returning_loop_is_counted_and_anything_else_goes_to_delivery() {
        use loopmix_core::sphinx::{build_packet, destination_of};
        use sphinx_packet::header::delays::Delay;

        let (s, processor) = keyed_node();
        // One-hop packets to ourselves: the final hop is this node.
        let topology = s.topology();
        let me = topology.get(&s.me).unwrap();
        let to_me = |identifier: [u8; 16]| Job {
            frame: Frame {
                key_epoch: 1,
                packet: Bytes::from(
                    build_packet(
                        b"loop",
                        &[me],
                        &destination_of(&s.me, identifier),
                        &[Delay::new_from_nanos(0)],
                        1024,
                    )
                    .unwrap(),
                ),
            },
            received: Instant::now(),
        };
        let route: RouteIds = vec![s.me].into();
        assert!(s.loops().track([1; 16], Instant::now(), route).is_empty());

        let (tx, rx) = crossbeam_channel::bounded(10);
        tx.send(to_me([1; 16])).unwrap();
        // Not a loop of ours: for delivery, which a mix does not do.
        tx.send(to_me([2; 16])).unwrap();
        drop(tx);
        let (out, _delayed) = mpsc::channel(10);
        let stop = Arc::new(AtomicBool::new(false));
        for w in spawn_workers(1, rx, processor, s.clone(), out, stop).unwrap() {
            w.join().unwrap();
        }
        assert_eq!(s.metrics.cover_returned.get(), 1);
        assert_eq!(s.metrics.loop_rtt.get_sample_count(), 1);
        assert_eq!(s.loops().pending(), 0);
        assert_eq!(dropped(&s, "unexpected_final_hop"), 1);
    }

    #[test]
    fn workers_hand_over_what_is_queued_in_batches_and_a_lone_packet_at_once() {
        use loopmix_core::sphinx::{build_packet, destination_of};
        use sphinx_packet::header::delays::Delay;

        let (s, processor) = keyed_node();
        let topology = s.topology();
        let me = topology.get(&s.me).unwrap();
        // Two hops through this node: the first unwrap forwards (to itself).
        let job = || Job {
            frame: Frame {
                key_epoch: 1,
                packet: Bytes::from(
                    build_packet(
                        b"hop",
                        &[me, me],
                        &destination_of(&s.me, [7; 16]),
                        &[Delay::new_from_nanos(0), Delay::new_from_nanos(0)],
                        1024,
                    )
                    .unwrap(),
                ),
            },
            received: Instant::now(),
        };
        let (tx, rx) = crossbeam_channel::bounded(100);
        let queued = 3 * DELAY_BATCH + 1;
        for _ in 0..queued {
            tx.send(job()).unwrap();
        }
        let (out, mut delayed) = mpsc::channel(100);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = spawn_workers(1, rx, processor, s.clone(), out, stop.clone()).unwrap();
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < queued {
            let b = delayed.blocking_recv().unwrap();
            sizes.push(b.len());
        }
        assert!(
            sizes.iter().all(|&n| (1..=DELAY_BATCH).contains(&n)),
            "{sizes:?}"
        );
        assert!(
            sizes.len() < queued,
            "a queue is handed over in batches: {sizes:?}"
        );
        // An idle worker sends a lone packet by itself, without waiting
        // for more.
        tx.send(job()).unwrap();
        assert_eq!(delayed.blocking_recv().unwrap().len(), 1);
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(dropped(&s, "shutdown"), 0);
    }

    mod like_the_simulator {
        use super::*;
        use loopmix_sim::sim::engine::{MixPool, SimTime};
        use rand::{RngExt, SeedableRng};

        /// One thing that happens to a delay stage, at an offset from the start.
        enum Event {
            /// Packets handed over together: (id, queueing wait, header delay).
            Batch(Vec<(u32, Duration, Duration)>),
            Wake,
        }

        /// ~50 s of a loaded mix: batches of 1–4 packets every few ms, each
        /// having waited up to 300 ms in the queues and asking for up to
        /// 400 ms; wake-ups now and then; and stalls of a second after which
        /// everything that queued meanwhile comes at once.
        fn events(seed: u64) -> Vec<(Duration, Event)> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let us = Duration::from_micros;
            let (mut at, mut id, mut out) = (Duration::ZERO, 0u32, Vec::new());
            while at < Duration::from_secs(50) {
                let stalled = rng.random_bool(0.002);
                at += if stalled {
                    Duration::from_secs(1)
                } else {
                    us(rng.random_range(0..8_000))
                };
                let max_wait = if stalled { 1_300_000 } else { 300_000 };
                let batch = (0..rng.random_range(1..=4))
                    .map(|_| {
                        id += 1;
                        let waited = us(rng.random_range(0..max_wait)).min(at);
                        (id, waited, us(rng.random_range(0..400_000)))
                    })
                    .collect();
                out.push((at, Event::Batch(batch)));
                if rng.random_bool(0.3) {
                    out.push((at, Event::Wake));
                }
            }
            out
        }

        fn describe<T: Copy + std::ops::Sub<Output = Duration>>(
            d: &Decision<T, u32>,
            start: T,
        ) -> String {
            match d {
                Decision::Forward { item, deadline } => {
                    format!("fwd {item} due {:?}", *deadline - start)
                }
                Decision::Drop { item, reason } => format!("drop {item} {}", reason.label()),
            }
        }

        fn id_of(d: Decision<Instant, Delayed>) -> Decision<Instant, u32> {
            let id = |p: &Delayed| u32::from_le_bytes(p.packet[..4].try_into().unwrap());
            match d {
                Decision::Forward { item, deadline } => Decision::Forward {
                    item: id(&item),
                    deadline,
                },
                Decision::Drop { item, reason } => Decision::Drop {
                    item: id(&item),
                    reason,
                },
            }
        }

        /// The node's delay stage ([`DelayPool`], what `DelayStage::run`
        /// steps, on real `Instant`s) and the simulator's pool
        /// (`MixPool`, what its engine drives, on virtual time) fed the
        /// same events make the same decisions, in the same order, due at
        /// the same offsets, and account the same entropy. This is what
        /// makes the simulator's numbers the network's.
        #[test]
        fn the_node_and_the_simulator_decide_alike() {
            let cfg = MixConfig {
                queue_limit: 64,
                late_tolerance: Duration::from_millis(500),
            };
            let t0 = Instant::now();
            let s0 = SimTime::default();
            let mut node = DelayPool::new(cfg, t0);
            let mut sim = MixPool::new(cfg, true);
            let (mut node_log, mut sim_log) = (Vec::new(), Vec::new());
            let (mut node_windows, mut sim_windows) = (Vec::new(), Vec::new());
            let (mut decided, mut departed) = (Vec::new(), Vec::new());
            for (at, event) in events(16) {
                let (now, sim_now) = (t0 + at, s0 + at);
                match event {
                    Event::Batch(items) => {
                        let mut batch = items
                            .iter()
                            .map(|&(id, waited, delay)| Delayed {
                                next_hop: NodeId([0; 32]),
                                key_epoch: 1,
                                packet: id.to_le_bytes().to_vec(),
                                received: t0 + (at - waited),
                                intended: delay,
                            })
                            .collect();
                        node.step(DelayEvent::Processed(&mut batch), now, &mut decided);
                        for (id, waited, delay) in items {
                            let d = sim.arrive(id, s0 + (at - waited), delay, sim_now, [0.0; 2]);
                            sim_log.extend(d.map(|d| describe(&d, s0)));
                        }
                    }
                    Event::Wake => {
                        node.step(DelayEvent::Wake, now, &mut decided);
                        sim.release_due(sim_now, &mut departed);
                        sim_log.extend(departed.drain(..).map(|d| describe(&d.decision, s0)));
                    }
                }
                node_log.extend(decided.drain(..).map(|d| describe(&id_of(d), t0)));
                // The stage publishes a window every ENTROPY_WINDOW; the
                // simulator closes its own at the same moments here.
                if let Some(w) = node.entropy_window(now) {
                    node_windows.push(w);
                    sim_windows.push((sim.take_entropy_window(sim_now), sim.entropy_bits()));
                }
            }
            assert_eq!(node_log.len(), sim_log.len());
            for (i, (n, s)) in node_log.iter().zip(&sim_log).enumerate() {
                assert_eq!(n, s, "decision {i}");
            }
            assert_eq!(node_windows, sim_windows);
            assert_eq!(node.len(), sim.len());
            // The sequence reached every rule, so agreement means something.
            for kind in ["fwd", "late", "overload"] {
                let n = node_log.iter().filter(|l| l.contains(kind)).count();
                assert!(n > 10, "only {n} {kind} decisions");
            }
            assert!(node_windows.len() >= 4, "{} windows", node_windows.len());
            assert!(node_windows.iter().all(|(w, _)| w.departures > 0));
        }
    }
}
