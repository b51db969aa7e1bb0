//! Inbound connections: accept, authenticate (in the TLS handshake), then
//! read frames from every unidirectional stream the peer opens and hand them
//! to an [`IngressSink`]. Nothing here does Sphinx work: the sink queues
//! packets for the CPU pool, so one peer's burst never runs on this task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Transport, peer_id};
use crate::keys::NodeId;
use crate::wire::{Frame, FrameDecoder, FrameError};

/// Where inbound frames go.
pub trait IngressSink: Send + Sync + 'static {
    /// A well-formed frame from an authenticated peer, read at `received`.
    fn packet(&self, peer: NodeId, frame: Frame, received: Instant);
    /// A frame (or stream) that failed to decode.
    fn malformed(&self, peer: NodeId, err: FrameError);
}

const READ_CHUNK: usize = 64 * 1024;

pub struct Ingress {
    transport: Transport,
    sink: Arc<dyn IngressSink>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Ingress {
    /// `packet_size` is read for every chunk, so a topology change of the
    /// packet size applies to streams already open.
    pub fn new(
        transport: Transport,
        sink: Arc<dyn IngressSink>,
        packet_size: Arc<AtomicUsize>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            transport,
            sink,
            packet_size,
            cancel,
        }
    }

    /// Accepts connections until cancelled.
    pub async fn run(self) {
        let endpoint = self.transport.endpoint().clone();
        loop {
            let incoming = tokio::select! {
                _ = self.cancel.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let sink = self.sink.clone();
            let size = self.packet_size.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => serve_connection(conn, sink, size, cancel).await,
                    // Key mismatches are counted by the TLS verifier's hook.
                    Err(e) => debug!(%remote, error = %e, "inbound handshake failed"),
                }
            });
        }
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    sink: Arc<dyn IngressSink>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let Some(peer) = peer_id(&conn) else {
        conn.close(1u32.into(), b"no identity");
        return;
    };
    info!(peer = %peer.short(), remote = %conn.remote_address(), "peer connected");
    loop {
        let recv = tokio::select! {
            _ = cancel.cancelled() => break,
            s = conn.accept_uni() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(peer = %peer.short(), error = %e, "peer connection ended");
                    break;
                }
            },
        };
        tokio::spawn(read_stream(
            recv,
            peer,
            sink.clone(),
            packet_size.clone(),
            cancel.clone(),
        ));
    }
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    peer: NodeId,
    sink: Arc<dyn IngressSink>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let mut dec = FrameDecoder::new(packet_size.load(Ordering::Relaxed));
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return,
            c = recv.read_chunk(dec.room().clamp(1, READ_CHUNK), true) => c,
        };
        match chunk {
            Ok(Some(c)) => dec.push(&c.bytes),
            Ok(None) => return,
            Err(e) => {
                debug!(peer = %peer.short(), error = %e, "stream ended");
                return;
            }
        }
        dec.set_packet_size(packet_size.load(Ordering::Relaxed));
        let received = Instant::now();
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => sink.packet(peer, frame, received),
                Ok(None) => break,
                Err(e) => {
                    sink.malformed(peer, e);
                    if e.is_fatal() {
                        let _ = recv.stop(1u32.into());
                        return;
                    }
                }
            }
        }
    }
}
