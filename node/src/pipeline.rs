//! The packet path of a running node:
//!
//! ```text
//! QUIC streams ─► NodeIngress (try_send, drop "overload")
//!   ─► Sphinx workers, one thread per core (unwrap, replay, route check)
//!   ─► delay stage (deadline = arrival + header delay, sans-IO DelayQueue)
//!   ─► Egress (one bounded queue + QUIC stream per next hop)
//! ```
//! Each arrow is a bounded channel. Only the first one drops on overflow;
//! the later ones apply back-pressure, which lands as drops at the first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use loopmix_core::keys::NodeId;
use loopmix_core::mixing::delay_queue::DelayQueue;
use loopmix_core::mixing::entropy::MixEntropy;
use loopmix_core::mixing::loops::LoopTracker;
use loopmix_core::mixing::processor::{Processed, SphinxProcessor};
pub use loopmix_core::poisson::sleep_until;
use loopmix_core::topology::Topology;
use loopmix_core::transport::egress::{Egress, OutPacket};
use loopmix_core::transport::ingress::IngressSink;
use loopmix_core::wire::{Frame, FrameError};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::metrics::NodeMetrics;
use crate::provider::delivery::{DeliveryQueue, FinalPacket};

/// State shared by the pipeline stages.
pub struct Shared {
    pub me: NodeId,
    topology: RwLock<Arc<Topology>>,
    pub metrics: NodeMetrics,
    pub loops: Mutex<LoopTracker<Instant>>,
    /// Providers only: where final-hop packets for clients (and drop cover
    /// for us) go. Unset on a mix, which drops them.
    pub final_hop: OnceLock<DeliveryQueue>,
    /// Test-only fault injection (`mixing.fault_drop_rate`); 0 normally.
    pub fault_drop_rate: f64,
}

impl Shared {
    pub fn new(
        me: NodeId,
        topology: Topology,
        metrics: NodeMetrics,
        loops: LoopTracker<Instant>,
    ) -> Self {
        Self {
            me,
            topology: RwLock::new(Arc::new(topology)),
            metrics,
            loops: Mutex::new(loops),
            final_hop: OnceLock::new(),
            fault_drop_rate: 0.0,
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

    pub fn loops(&self) -> std::sync::MutexGuard<'_, LoopTracker<Instant>> {
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

/// Receives frames from the transport and queues them for the workers.
pub struct NodeIngress {
    pub tx: Sender<Job>,
    pub shared: Arc<Shared>,
}

impl IngressSink for NodeIngress {
    fn packet(&self, _peer: NodeId, frame: Frame, received: Instant) {
        self.shared.metrics.received.inc();
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
    shared: Arc<Shared>,
    out: mpsc::Sender<Delayed>,
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

fn worker(
    rx: Receiver<Job>,
    processor: Arc<SphinxProcessor>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Delayed>,
    stop: Arc<AtomicBool>,
) {
    loop {
        let job = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let start = Instant::now();
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
                // Back-pressure: if the delay stage is saturated this blocks,
                // the ingress queue fills and the excess drops at the edge.
                if out.blocking_send(item).is_err() {
                    shared.drop_packet("shutdown");
                }
            }
            Ok(Processed::Final {
                destination,
                identifier,
                payload,
            }) => {
                let sent = if destination == shared.me {
                    shared.loops().returned(&identifier)
                } else {
                    None
                };
                if let Some(at) = sent {
                    shared.metrics.cover_returned.inc();
                    shared.metrics.loop_rtt.observe(at.elapsed().as_secs_f64());
                    continue;
                }
                let Some(queue) = shared.final_hop.get() else {
                    shared.drop_packet("unexpected_final_hop");
                    continue;
                };
                let Ok(plaintext) = payload.recover_plaintext() else {
                    shared.drop_packet("malformed");
                    continue;
                };
                let offered = queue.offer(FinalPacket {
                    destination,
                    identifier,
                    key_epoch: job.frame.key_epoch,
                    plaintext,
                });
                if !offered {
                    shared.drop_packet("overload");
                }
            }
        }
    }
}

/// How often the delay stage publishes its Eq. 5 entropy and mean pool
/// size (each gauge is the average over one such window).
pub const ENTROPY_WINDOW: Duration = Duration::from_secs(10);

/// Holds packets until their deadline and hands them to the egress.
pub struct DelayStage {
    pub shared: Arc<Shared>,
    pub egress: Egress,
    pub limit: usize,
    pub late_tolerance: Duration,
    pub drain: Duration,
}

impl DelayStage {
    /// Runs until every worker has exited (the input closes), then keeps
    /// forwarding what is queued at its deadline for at most `drain`.
    pub async fn run(self, mut rx: mpsc::Receiver<Delayed>) {
        let mut queue: DelayQueue<Instant, Delayed> = DelayQueue::new(self.limit);
        // How much anonymity this node provides: O(1) per packet, no history.
        let mut entropy: MixEntropy<Instant> = MixEntropy::new();
        let mut window_start = Instant::now();
        let mut batch = Vec::with_capacity(256);
        loop {
            self.release_due(&mut queue, &mut entropy);
            let next = queue.next_deadline();
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for item in batch.drain(..) {
                        let deadline = item.received + item.intended;
                        if deadline <= now {
                            entropy.arrive(now);
                            entropy.depart(now);
                            self.forward(item, deadline, now);
                        } else if let Err(item) = queue.push(deadline, item) {
                            drop(item);
                            self.shared.drop_packet("overload");
                        } else {
                            entropy.arrive(now);
                        }
                    }
                }
                _ = sleep_until(next), if next.is_some() => {}
            }
            self.shared.metrics.delay_queue.set(queue.len() as i64);
            let now = Instant::now();
            if now.saturating_duration_since(window_start) >= ENTROPY_WINDOW {
                window_start = now;
                self.publish_entropy(&mut entropy, now);
            }
        }
        // Shutdown: honour deadlines for up to `drain`, then count the rest.
        let give_up = Instant::now() + self.drain;
        while let Some(next) = queue.next_deadline() {
            if next > give_up {
                break;
            }
            sleep_until(Some(next)).await;
            self.release_due(&mut queue, &mut entropy);
            self.shared.metrics.delay_queue.set(queue.len() as i64);
        }
        let left = queue.drain_all().len();
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

    fn release_due(
        &self,
        queue: &mut DelayQueue<Instant, Delayed>,
        entropy: &mut MixEntropy<Instant>,
    ) {
        let now = Instant::now();
        while let Some((deadline, item)) = queue.pop_due(now) {
            // A packet leaves the pool whether it is forwarded or dropped.
            entropy.depart(now);
            self.forward(item, deadline, now);
        }
    }

    /// Sets `loopmix_node_entropy_bits` and `loopmix_node_pool_size_mean`
    /// to the averages of the window that ends now. Without departures the
    /// entropy gauge keeps the latest `H_t`.
    fn publish_entropy(&self, entropy: &mut MixEntropy<Instant>, now: Instant) {
        let w = entropy.take_window(now);
        let m = &self.shared.metrics;
        m.entropy_bits
            .set(w.mean_entropy_bits.unwrap_or(entropy.entropy_bits()));
        m.pool_size_mean.set(w.mean_pool_size.unwrap_or(0.0));
    }

    fn forward(&self, item: Delayed, deadline: Instant, now: Instant) {
        let m = &self.shared.metrics;
        if now.saturating_duration_since(deadline) > self.late_tolerance {
            self.shared.drop_packet("late");
            return;
        }
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
