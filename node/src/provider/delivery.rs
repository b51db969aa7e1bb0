//! Final-hop packets at a provider: store for the client, then acknowledge.
//!
//! The Sphinx workers hand every final-hop packet that is not one of our own
//! returning loops to this stage (a bounded queue; overflow drops as
//! `overload`). One thread stores them in the [`InboxStore`]: a write is
//! committed durably before anything else happens, and only then is a data
//! packet's SURB-ACK sent into the network. A provider that crashes between
//! the two sends no ack; the sender retransmits (a new packet, new
//! identifier) and the client's reassembler discards the duplicate.
//! Database latency stays off the Sphinx workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use loopmix_core::e2e::{Payload, payload_plaintext_len, use_surb};
use loopmix_core::keys::NodeId;
use loopmix_core::pki::unix_now;
use loopmix_net::transport::egress::{Egress, OutPacket};
use tracing::{debug, warn};

/// (destination, identifier, bytes to store, SURB-ACK and its key epoch)
type ToStore = (NodeId, [u8; 16], Vec<u8>, Option<(Vec<u8>, u64)>);

/// Packets stored per transaction at most.
const MAX_BATCH: usize = 256;

use super::inbox::{InboxError, InboxStore};
use crate::pipeline::Shared;

/// A final-hop packet for this provider or one of its clients.
pub struct FinalPacket {
    pub destination: NodeId,
    pub identifier: [u8; 16],
    /// Key epoch of the frame it arrived in: a SURB-ACK it carries was built
    /// with the same epoch's keys.
    pub key_epoch: u64,
    pub plaintext: Vec<u8>,
}

/// The workers' handle: queues without blocking.
#[derive(Clone)]
pub struct DeliveryQueue {
    tx: Sender<FinalPacket>,
}

impl DeliveryQueue {
    /// Queues `p`; `false` if the stage is saturated (caller counts `overload`).
    pub fn offer(&self, p: FinalPacket) -> bool {
        match self.tx.try_send(p) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

pub struct DeliveryStage {
    pub inbox: Arc<InboxStore>,
    pub shared: Arc<Shared>,
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

    fn run(self, rx: Receiver<FinalPacket>) {
        let _runtime = self.runtime.enter();
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
                    self.deliver(std::mem::take(&mut batch));
                }
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Relaxed) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.shared.metrics.delivery_queue.set(rx.len() as i64);
        }
    }

    fn deliver(&self, packets: Vec<FinalPacket>) {
        let m = &self.shared.metrics;
        let mut to_store: Vec<ToStore> = Vec::new();
        for p in packets {
            let payload = match Payload::decode(&p.plaintext) {
                Ok(payload) => payload,
                Err(e) => {
                    debug!(error = %e, "undecodable final-hop payload");
                    m.dropped.with_label_values(&["malformed"]).inc();
                    continue;
                }
            };
            if p.destination == self.shared.me {
                // Drop cover addressed to us: its whole purpose was to be sent.
                match payload {
                    Payload::Drop => m.cover_drops_received.inc(),
                    _ => m.dropped.with_label_values(&["unexpected_final_hop"]).inc(),
                }
                continue;
            }
            match payload {
                Payload::Data { surb_ack, sealed } => {
                    // The client never needs the SURB-ACK; keeping it would
                    // let a later reader of the inbox send the ack again.
                    // Zeroed, not removed, so the item keeps its layout.
                    let kept = Payload::Data {
                        surb_ack: vec![0; surb_ack.len()],
                        sealed,
                    };
                    match kept.encode(p.plaintext.len()) {
                        Ok(bytes) => to_store.push((
                            p.destination,
                            p.identifier,
                            bytes,
                            Some((surb_ack, p.key_epoch)),
                        )),
                        Err(_) => m.dropped.with_label_values(&["malformed"]).inc(),
                    }
                }
                // A drop packet must be addressed to a provider, never a client.
                Payload::Drop => m.dropped.with_label_values(&["malformed"]).inc(),
                Payload::Ack | Payload::Reply { .. } | Payload::Loop => {
                    to_store.push((p.destination, p.identifier, p.plaintext, None))
                }
            }
        }
        if to_store.is_empty() {
            return;
        }
        let items: Vec<(NodeId, [u8; 16], &[u8])> = to_store
            .iter()
            .map(|(d, id, bytes, _)| (*d, *id, bytes.as_slice()))
            .collect();
        let results = match self.inbox.store_batch(&items, unix_now() * 1000) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, packets = items.len(), "inbox write failed; packets not stored (senders will retry)");
                m.dropped
                    .with_label_values(&["storage"])
                    .inc_by(items.len() as u64);
                return;
            }
        };
        // Acks only now: the whole batch is durable.
        for ((_, _, _, ack), result) in to_store.iter().zip(results) {
            match result {
                Ok(_) => {
                    m.delivered.inc();
                    if let Some((surb, key_epoch)) = ack
                        && !surb.is_empty()
                    {
                        self.send_ack(surb, *key_epoch);
                    }
                }
                Err(e) => {
                    let label = match e {
                        InboxError::UnknownClient(_) => "unknown_destination",
                        InboxError::Full { .. } => "inbox_full",
                        _ => "storage",
                    };
                    m.dropped.with_label_values(&[label]).inc();
                    debug!(error = %e, "final-hop packet not stored");
                }
            }
        }
    }

    /// Sends the SURB-ACK now (its per-hop delays are in its header).
    fn send_ack(&self, surb: &[u8], key_epoch: u64) {
        let m = &self.shared.metrics;
        let topology = self.shared.topology();
        let size = topology.params().payload_size;
        let plaintext_len = payload_plaintext_len(size);
        // Sent as a loop payload: the sender's provider, which stores it,
        // must not tell acks (one per real fragment) from loops.
        let built = Payload::Loop
            .encode(plaintext_len)
            .ok()
            .and_then(|ack| use_surb(surb, &ack, size).ok());
        let Some((first_hop, packet)) = built else {
            m.acks_failed.inc();
            return;
        };
        let Some(entry) = topology.get(&first_hop) else {
            m.acks_failed.inc();
            return;
        };
        match self
            .egress
            .send(first_hop, entry.address, OutPacket { key_epoch, packet })
        {
            Ok(()) => m.acks_sent.inc(),
            Err(r) => {
                m.acks_failed.inc();
                debug!(reason = r.label(), "SURB-ACK not queued");
            }
        }
    }
}
