//! Final-hop packets at a provider: store for the client, then acknowledge.
//!
//! The Sphinx workers hand every final-hop packet that is not one of our own
//! returning loops to this stage (a bounded queue; overflow drops as
//! `overload`). One thread runs the core's [`Delivery`] rules over them with
//! the [`InboxStore`]: a write is committed durably before anything else
//! happens, and only then is a data packet's SURB-ACK sent into the network.
//! A provider that crashes between the two sends no ack; the sender
//! retransmits (a new packet, new identifier) and the client's reassembler
//! discards the duplicate. Database latency stays off the Sphinx workers.
//! This file is the I/O: the queue, the thread, the clock, the metrics and
//! logs, and the egress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use loopmix_core::mixing::delivery::{AckPacket, Delivery, Outcome, SurbAck};
use loopmix_net::clock::unix_now_ms;
use loopmix_net::transport::egress::{Egress, OutPacket};
use tracing::{debug, warn};

pub use loopmix_core::mixing::delivery::FinalPacket;

/// Packets stored per transaction at most.
const MAX_BATCH: usize = 256;

use super::inbox::InboxStore;
use crate::pipeline::NodeContext;

/// A final-hop packet and when a worker queued it (for
/// `loopmix_provider_store_seconds`).
type Queued = (FinalPacket, Instant);

/// The workers' handle: queues without blocking.
#[derive(Clone)]
pub struct DeliveryQueue {
    tx: Sender<Queued>,
}

impl DeliveryQueue {
    /// Queues `p`; `false` if the stage is saturated (caller counts `overload`).
    pub fn offer(&self, p: FinalPacket) -> bool {
        match self.tx.try_send((p, Instant::now())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

pub struct DeliveryStage {
    pub inbox: Arc<InboxStore>,
    pub shared: Arc<NodeContext>,
    pub egress: Egress,
    /// Set at shutdown once no more packets can arrive; the thread then
    /// stores what is queued and exits.
    pub stop: Arc<AtomicBool>,
    /// The node's runtime: sending an ack may open a new egress link, which
    /// spawns a task, and this thread is not a runtime thread.
    pub runtime: tokio::runtime::Handle,
}

impl DeliveryStage {
    /// Starts the storing thread with a queue of `limit` packets. The thread
    /// exits once `stop` is set and the queue is empty.
    pub fn spawn(self, limit: usize) -> std::io::Result<(DeliveryQueue, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::bounded(limit);
        let handle = std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || self.run(rx))?;
        Ok((DeliveryQueue { tx }, handle))
    }

    fn run(self, rx: Receiver<Queued>) {
        let _runtime = self.runtime.enter();
        let rules = Delivery::new(self.shared.me);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(p) => {
                    // Group commit: everything already queued goes into the
                    // same transaction, so one fsync covers many packets and
                    // the stage keeps up with bursts.
                    batch.push(p);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    self.deliver(&rules, std::mem::take(&mut batch));
                }
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Relaxed) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.shared.metrics.delivery_queue.set(rx.len() as i64);
        }
    }

    fn deliver(&self, rules: &Delivery, batch: Vec<Queued>) {
        let m = &self.shared.metrics;
        let topology = self.shared.topology();
        let (packets, queued): (Vec<FinalPacket>, Vec<Instant>) = batch.into_iter().unzip();
        // Milliseconds: the inbox times each message's wait for its pull
        // (`loopmix_provider_inbox_wait_seconds`) from this.
        let report = rules.deliver(
            packets,
            &*self.inbox,
            unix_now_ms(),
            topology.params().payload_size,
        );
        let committed = Instant::now();
        for (outcome, at) in report.outcomes.iter().zip(&queued) {
            if matches!(outcome, Outcome::Stored { .. }) {
                m.store_seconds
                    .observe(committed.saturating_duration_since(*at).as_secs_f64());
            }
        }
        if let Some(e) = &report.commit_error {
            warn!(error = %e, packets = report.not_stored, "inbox write failed; packets not stored (senders will retry)");
        }
        for outcome in report.outcomes {
            if let Some(reason) = outcome.drop_reason() {
                m.dropped.with_label_values(&[reason]).inc();
            }
            match outcome {
                Outcome::Stored { ack } => {
                    m.delivered.inc();
                    match ack {
                        Some(SurbAck::Send(ack)) => self.send_ack(ack),
                        Some(SurbAck::Unusable) => m.acks_failed.inc(),
                        None => {}
                    }
                }
                Outcome::CoverDrop => m.cover_drops_received.inc(),
                Outcome::Dropped { error: Some(e), .. } => {
                    debug!(error = %e, "undecodable final-hop payload")
                }
                Outcome::Refused { error, .. } => {
                    debug!(error = %error, "final-hop packet not stored")
                }
                Outcome::Dropped { error: None, .. } | Outcome::NotStored => {}
            }
        }
    }

    /// Sends the SURB-ACK now (its per-hop delays are in its header).
    fn send_ack(&self, ack: AckPacket) {
        let m = &self.shared.metrics;
        let topology = self.shared.topology();
        let Some(entry) = topology.get(&ack.first_hop) else {
            m.acks_failed.inc();
            return;
        };
        let pkt = OutPacket {
            key_epoch: ack.key_epoch,
            packet: ack.packet,
        };
        match self.egress.send(ack.first_hop, entry.address, pkt) {
            Ok(()) => m.acks_sent.inc(),
            Err(r) => {
                m.acks_failed.inc();
                debug!(reason = r.label(), "SURB-ACK not queued");
            }
        }
    }
}
