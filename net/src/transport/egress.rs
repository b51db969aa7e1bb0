//! Outbound links: one connection and one long-lived stream per next hop.
//!
//! Each peer has a bounded queue drained by its own task, so a slow or dead
//! neighbour only ever fills its own queue; a full queue is a counted drop at
//! the edge, never back-pressure into the mixing pipeline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Transport;
use loopmix_core::keys::NodeId;
use loopmix_core::wire::{PREAMBLE, encode_frame};

/// A packet to send, and the key epoch of the receiver it was built for.
pub struct OutPacket {
    pub key_epoch: u64,
    pub packet: Vec<u8>,
}

/// Counters the egress updates; the owner registers them.
#[derive(Clone)]
pub struct EgressMetrics {
    pub sent: IntCounter,
    /// `reason`-labelled drop counter shared with the rest of the node.
    pub dropped: IntCounterVec,
    pub links_up: IntGauge,
}

/// Why [`Egress::send`] refused a packet (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    /// The peer's queue is full while the link is up.
    Overload,
    /// The peer's queue is full because the link is down.
    LinkDown,
}

impl SendRefused {
    pub fn label(&self) -> &'static str {
        match self {
            SendRefused::Overload => "overload",
            SendRefused::LinkDown => "link_down",
        }
    }
}

struct Link {
    addr: SocketAddr,
    tx: mpsc::Sender<OutPacket>,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Called with the peer whenever connecting to it fails: direct liveness
/// evidence against that one node (`loopmix_core::liveness`).
pub type LinkFailureHook = Arc<dyn Fn(NodeId) + Send + Sync>;

#[derive(Clone)]
pub struct Egress {
    transport: Transport,
    queue_len: usize,
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
    metrics: EgressMetrics,
    on_link_failure: Option<LinkFailureHook>,
}

const BATCH: usize = 256;

impl Egress {
    pub fn new(transport: Transport, queue_len: usize, metrics: EgressMetrics) -> Self {
        Self {
            transport,
            queue_len: queue_len.max(1),
            links: Arc::default(),
            metrics,
            on_link_failure: None,
        }
    }

    /// Reports every failed connection attempt to `hook`.
    pub fn with_link_failure_hook(mut self, hook: LinkFailureHook) -> Self {
        self.on_link_failure = Some(hook);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Link>> {
        match self.links.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues `pkt` for `peer` at `addr`, starting the link if needed.
    pub fn send(&self, peer: NodeId, addr: SocketAddr, pkt: OutPacket) -> Result<(), SendRefused> {
        let mut links = self.lock();
        let stale = links
            .get(&peer)
            .is_some_and(|l| l.addr != addr || l.tx.is_closed());
        if stale {
            links.remove(&peer);
        }
        let link = links
            .entry(peer)
            .or_insert_with(|| self.spawn_link(peer, addr));
        match link.tx.try_send(pkt) {
            Ok(()) => Ok(()),
            Err(_) if link.up.load(Ordering::Relaxed) => Err(SendRefused::Overload),
            Err(_) => Err(SendRefused::LinkDown),
        }
    }

    /// Closes links to peers for which `keep` is false (e.g. nodes that left
    /// the topology). Their queued packets are still written if possible.
    pub fn retain(&self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }

    /// Total packets queued on all links.
    pub fn queued(&self) -> usize {
        self.lock()
            .values()
            .map(|l| l.tx.max_capacity() - l.tx.capacity())
            .sum()
    }

    /// Closes every link and waits (bounded) until their queues are written.
    pub async fn flush_and_close(&self, timeout: Duration) {
        let links: Vec<Link> = self.lock().drain().map(|(_, l)| l).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for l in links {
            // Dropping the sender lets the task drain its queue and exit.
            drop(l.tx);
            let _ = tokio::time::timeout_at(deadline, l.task).await;
        }
    }

    fn spawn_link(&self, peer: NodeId, addr: SocketAddr) -> Link {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let up = Arc::new(AtomicBool::new(false));
        let task = LinkTask {
            transport: self.transport.clone(),
            peer,
            addr,
            up: up.clone(),
            metrics: self.metrics.clone(),
            on_link_failure: self.on_link_failure.clone(),
        };
        let task = tokio::spawn(task.run(rx));
        Link { addr, tx, up, task }
    }
}

struct LinkTask {
    transport: Transport,
    peer: NodeId,
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    metrics: EgressMetrics,
    on_link_failure: Option<LinkFailureHook>,
}

impl LinkTask {
    fn lose(&self, n: usize) {
        if n > 0 {
            self.metrics
                .dropped
                .with_label_values(&["link_down"])
                .inc_by(n as u64);
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                self.metrics.links_up.inc();
            } else {
                self.metrics.links_up.dec();
            }
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<OutPacket>) {
        let mut pending: Vec<OutPacket> = Vec::with_capacity(BATCH);
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        // A batch whose write failed is retried once on a fresh connection
        // (the peer may simply have restarted), then counted lost.
        let mut retried = false;
        loop {
            if pending.is_empty() && rx.recv_many(&mut pending, BATCH).await == 0 {
                break;
            }
            let conn = match self.transport.connect(self.peer, self.addr).await {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    if let Some(hook) = &self.on_link_failure {
                        hook(self.peer);
                    }
                    // Log the first failure loudly, repeats quietly.
                    if failures == 1 {
                        warn!(peer = %self.peer.short(), addr = %self.addr, error = %e, "link down");
                    } else {
                        debug!(peer = %self.peer.short(), error = %e, failures, "link still down");
                    }
                    self.lose(pending.len());
                    pending.clear();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if failures > 0 {
                info!(peer = %self.peer.short(), after = failures, "link restored");
            }
            failures = 0;
            backoff = Duration::from_millis(100);
            let outcome = self.pump(&conn, &mut rx, &mut pending).await;
            self.set_up(false);
            match outcome {
                Pumped::Finished => {
                    conn.close(0u32.into(), b"done");
                    break;
                }
                Pumped::ConnectionLost => retried = false,
                Pumped::WriteFailed if retried => {
                    self.lose(pending.len());
                    pending.clear();
                    retried = false;
                }
                Pumped::WriteFailed => retried = true,
            }
        }
        self.set_up(false);
    }

    /// Writes batches until the queue closes or the link fails. On failure
    /// the unwritten batch stays in `pending`.
    async fn pump(
        &self,
        conn: &quinn::Connection,
        rx: &mut mpsc::Receiver<OutPacket>,
        pending: &mut Vec<OutPacket>,
    ) -> Pumped {
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %self.peer.short(), error = %e, "cannot open stream");
                return Pumped::WriteFailed;
            }
        };
        if stream.write_all(&PREAMBLE).await.is_err() {
            return Pumped::WriteFailed;
        }
        self.set_up(true);
        let mut buf = BytesMut::with_capacity(BATCH * 1500);
        loop {
            if !pending.is_empty() {
                buf.clear();
                for p in pending.iter() {
                    encode_frame(p.key_epoch, &p.packet, &mut buf);
                }
                if let Err(e) = stream.write_all(&buf).await {
                    debug!(peer = %self.peer.short(), error = %e, "write failed");
                    return Pumped::WriteFailed;
                }
                self.metrics.sent.inc_by(pending.len() as u64);
                pending.clear();
            }
            // Watch the connection while idle, so a peer that went away is
            // noticed before the next packet is written into a dead stream.
            tokio::select! {
                n = rx.recv_many(pending, BATCH) => {
                    if n == 0 {
                        let _ = stream.finish();
                        let _ = tokio::time::timeout(Duration::from_secs(2), stream.stopped()).await;
                        return Pumped::Finished;
                    }
                }
                e = conn.closed() => {
                    debug!(peer = %self.peer.short(), error = %e, "connection closed");
                    return Pumped::ConnectionLost;
                }
            }
        }
    }
}

enum Pumped {
    /// The queue closed and everything was written.
    Finished,
    /// The connection ended while idle; nothing was lost.
    ConnectionLost,
    /// A write failed; `pending` holds the batch.
    WriteFailed,
}
