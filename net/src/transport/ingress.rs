//! Inbound connections: accept, authenticate (in the TLS handshake), then
//! read frames from every unidirectional stream the peer opens and hand them
//! to an [`IngressSink`]. Nothing here does Sphinx work: the sink queues
//! packets for the CPU pool, so one peer's burst never runs on this task.
//!
//! A provider's ingress also serves *clients* (peers whose key is not in the
//! topology, accepted when the [`PeerAllowList`](super::PeerAllowList)
//! accepts clients): their unidirectional streams carry Sphinx packets like
//! any peer's, and — if a [`ControlHandler`] is set — each bidirectional
//! stream they open is handed to it. Only client connections may open
//! bidirectional streams at all: the QUIC limit is 0 for every connection
//! and is raised to [`ClientPolicy::control_streams`] per client connection,
//! so node-to-node links look exactly like a mix's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{PeerKind, Transport, peer_id};
use loopmix_core::keys::NodeId;
use loopmix_core::wire::{Frame, FrameDecoder, FrameError};

/// Where inbound frames go.
pub trait IngressSink: Send + Sync + 'static {
    /// A well-formed frame from an authenticated peer, read at `received`.
    fn packet(&self, peer: NodeId, frame: Frame, received: Instant);
    /// A frame (or stream) that failed to decode.
    fn malformed(&self, peer: NodeId, err: FrameError);
    /// Like [`IngressSink::packet`], saying whether the peer is a topology
    /// node or a client (decided when the connection was accepted). The
    /// default forwards to `packet`: a client's packet is processed like any
    /// other first-hop packet.
    fn packet_from(&self, peer: NodeId, kind: PeerKind, frame: Frame, received: Instant) {
        let _ = kind;
        self.packet(peer, frame, received);
    }
}

/// What a [`ControlHandler`] returns: the work for one control stream.
pub type ControlFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves the bidirectional (control) streams clients open. Each call gets
/// one stream; the ingress runs the returned future on its own task, and
/// drops it (resetting the stream) when the ingress is cancelled. The
/// handler must bound its own time per stream.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        peer: NodeId,
        kind: PeerKind,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> ControlFuture;
}

/// Limits for client connections (only used when clients are accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    /// Concurrent client connections (default 10 000); a client connecting
    /// beyond it is closed at once with [`CLOSE_TOO_MANY_CLIENTS`] and
    /// counted by the transport's refusal hook as `too_many_clients`.
    pub max_connections: usize,
    /// Concurrent control streams per client connection (default 4; QUIC
    /// enforces it: a client cannot open more until one is done).
    pub control_streams: u32,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            control_streams: 4,
        }
    }
}

/// Connection close: the peer presented no usable identity.
pub const CLOSE_NO_IDENTITY: u32 = 1;
/// Connection close: the client limit is reached.
pub const CLOSE_TOO_MANY_CLIENTS: u32 = 2;
/// Connection close: the peer's key is no longer accepted.
pub const CLOSE_NOT_ALLOWED: u32 = 3;
/// Connection close: too many authority probe connections at once.
pub const CLOSE_TOO_MANY_PROBES: u32 = 4;
/// Concurrent probe connections from directory authorities. Authorities are
/// few and close each probe at once; the bound only stops a misbehaving
/// (pinned) authority from holding connection state without limit.
const MAX_PROBE_CONNECTIONS: usize = 64;
/// How long a probe connection may stay open: a probe closes right after
/// the handshake, so this only bounds one that does not.
const PROBE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// `STOP_SENDING` on a unidirectional stream that is not loopmix framing.
pub const STOP_BAD_PREAMBLE: u32 = 1;
/// `STOP_SENDING`/`RESET_STREAM` on a bidirectional stream nobody serves.
pub const STOP_REFUSED: u32 = 2;

const READ_CHUNK: usize = 64 * 1024;

pub struct Ingress {
    transport: Transport,
    sink: Arc<dyn IngressSink>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
    control: Option<Arc<dyn ControlHandler>>,
    clients: ClientPolicy,
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
            control: None,
            clients: ClientPolicy::default(),
        }
    }

    /// Serves clients' control streams with `handler`. Without one, clients
    /// can open no bidirectional streams.
    pub fn with_control(mut self, handler: Arc<dyn ControlHandler>) -> Self {
        self.control = Some(handler);
        self
    }

    /// Replaces the default [`ClientPolicy`].
    pub fn with_client_policy(mut self, policy: ClientPolicy) -> Self {
        self.clients = policy;
        self
    }

    /// Accepts connections until cancelled.
    pub async fn run(self) {
        let endpoint = self.transport.endpoint().clone();
        let shared = Arc::new(Shared {
            transport: self.transport,
            sink: self.sink,
            packet_size: self.packet_size,
            cancel: self.cancel,
            control: self.control,
            clients: self.clients,
            client_connections: AtomicUsize::new(0),
            probe_connections: AtomicUsize::new(0),
        });
        loop {
            let incoming = tokio::select! {
                _ = shared.cancel.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => serve_connection(conn, shared).await,
                    // Key mismatches are counted by the TLS verifier's hook.
                    Err(e) => debug!(%remote, error = %e, "inbound handshake failed"),
                }
            });
        }
    }
}

/// What every connection task of one ingress shares.
struct Shared {
    transport: Transport,
    sink: Arc<dyn IngressSink>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
    control: Option<Arc<dyn ControlHandler>>,
    clients: ClientPolicy,
    client_connections: AtomicUsize,
    probe_connections: AtomicUsize,
}

/// Holds one of the client connection places until dropped.
struct ClientSlot<'a>(&'a AtomicUsize);

impl<'a> ClientSlot<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let Some(peer) = peer_id(&conn) else {
        conn.close(CLOSE_NO_IDENTITY.into(), b"no identity");
        return;
    };
    // A directory authority probing that we answer: checked first, so an
    // authority key is never treated as a node or client and never reaches
    // the packet path.
    if shared.transport.allow_list().is_authority(&peer) {
        serve_probe(conn, peer, &shared).await;
        return;
    }
    // Decided once per connection: a topology change does not turn a node
    // link into a client link or back.
    let Some(kind) = shared.transport.allow_list().kind_of(&peer) else {
        // Allowed at the handshake, no longer (topology change or clients
        // switched off in between).
        conn.close(CLOSE_NOT_ALLOWED.into(), b"not allowed");
        return;
    };
    let _slot = match kind {
        PeerKind::Node => None,
        PeerKind::Client => {
            match ClientSlot::take(&shared.client_connections, shared.clients.max_connections) {
                Some(slot) => Some(slot),
                None => {
                    (shared.transport.on_refuse)("too_many_clients");
                    conn.close(CLOSE_TOO_MANY_CLIENTS.into(), b"too many clients");
                    return;
                }
            }
        }
    };
    let control = match (kind, &shared.control) {
        (PeerKind::Client, Some(h)) => {
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(shared.clients.control_streams));
            Some(h.clone())
        }
        _ => None,
    };
    info!(
        peer = %peer.short(),
        kind = kind.label(),
        remote = %conn.remote_address(),
        "peer connected"
    );
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    tokio::spawn(read_stream(recv, peer, kind, shared.clone()));
                }
                Err(e) => {
                    debug!(peer = %peer.short(), error = %e, "peer connection ended");
                    break;
                }
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => serve_control(control.clone(), peer, kind, send, recv, &shared),
                Err(e) => {
                    debug!(peer = %peer.short(), error = %e, "peer connection ended");
                    break;
                }
            },
        }
    }
}

/// An authority's liveness probe: the completed handshake was the answer.
/// No stream it opens is ever accepted (their data is dropped with the
/// connection, and no new stream credit is granted), so nothing from it
/// reaches the packet path; waits, bounded, for the authority to close.
async fn serve_probe(conn: quinn::Connection, peer: NodeId, shared: &Shared) {
    let Some(_slot) = ClientSlot::take(&shared.probe_connections, MAX_PROBE_CONNECTIONS) else {
        (shared.transport.on_refuse)("too_many_probes");
        conn.close(CLOSE_TOO_MANY_PROBES.into(), b"too many probes");
        return;
    };
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(0));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
    debug!(authority = %peer.short(), remote = %conn.remote_address(), "authority probe");
    tokio::select! {
        _ = shared.cancel.cancelled() => {}
        _ = conn.closed() => {}
        _ = tokio::time::sleep(PROBE_LINGER) => {}
    }
    conn.close(CLOSE_NOT_ALLOWED.into(), b"probe done");
}

fn serve_control(
    handler: Option<Arc<dyn ControlHandler>>,
    peer: NodeId,
    kind: PeerKind,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Shared,
) {
    let Some(handler) = handler else {
        // Unreachable while the stream limit is 0; refuse cleanly anyway.
        let _ = recv.stop(STOP_REFUSED.into());
        let _ = send.reset(STOP_REFUSED.into());
        return;
    };
    let cancel = shared.cancel.clone();
    let work = handler.handle(peer, kind, send, recv);
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = work => {}
        }
    });
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    peer: NodeId,
    kind: PeerKind,
    shared: Arc<Shared>,
) {
    let sink = &shared.sink;
    let packet_size = &shared.packet_size;
    let mut dec = FrameDecoder::new(packet_size.load(Ordering::Relaxed));
    loop {
        let chunk = tokio::select! {
            _ = shared.cancel.cancelled() => return,
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
                Ok(Some(frame)) => sink.packet_from(peer, kind, frame, received),
                Ok(None) => break,
                Err(e) => {
                    sink.malformed(peer, e);
                    if e.is_fatal() {
                        let _ = recv.stop(STOP_BAD_PREAMBLE.into());
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::BytesMut;

    use super::*;
    use crate::transport::PeerAllowList;
    use loopmix_core::keys::IdentityKeypair;
    use loopmix_core::wire::{PREAMBLE, encode_frame};

    const SIZE: usize = 100;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(NodeId, PeerKind)>>);

    impl IngressSink for Seen {
        fn packet(&self, _: NodeId, _: Frame, _: Instant) {}
        fn malformed(&self, _: NodeId, _: FrameError) {}
        fn packet_from(&self, peer: NodeId, kind: PeerKind, _: Frame, _: Instant) {
            self.0.lock().unwrap().push((peer, kind));
        }
    }

    /// Echoes the request back, uppercased, and says who asked.
    struct Echo;

    impl ControlHandler for Echo {
        fn handle(
            self: Arc<Self>,
            _peer: NodeId,
            kind: PeerKind,
            mut send: quinn::SendStream,
            mut recv: quinn::RecvStream,
        ) -> ControlFuture {
            Box::pin(async move {
                let mut body = recv.read_to_end(64).await.unwrap_or_default();
                body.make_ascii_uppercase();
                body.extend_from_slice(kind.label().as_bytes());
                let _ = send.write_all(&body).await;
                let _ = send.finish();
            })
        }
    }

    fn server(clients: bool, control: bool) -> (Transport, Arc<Seen>, CancellationToken) {
        let allowed = PeerAllowList::default();
        allowed.accept_clients(clients);
        let t = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(IdentityKeypair::generate()),
            allowed,
            Arc::new(|_| {}),
        )
        .unwrap();
        let seen = Arc::new(Seen::default());
        let cancel = CancellationToken::new();
        let mut ingress = Ingress::new(
            t.clone(),
            seen.clone(),
            Arc::new(AtomicUsize::new(SIZE)),
            cancel.clone(),
        );
        if control {
            ingress = ingress.with_control(Arc::new(Echo));
        }
        tokio::spawn(ingress.run());
        (t, seen, cancel)
    }

    fn dialer() -> Transport {
        Transport::dial_only(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(IdentityKeypair::generate()),
            Arc::new(|_| {}),
        )
        .unwrap()
    }

    async fn send_packet(conn: &quinn::Connection) {
        let mut s = conn.open_uni().await.unwrap();
        let mut b = BytesMut::new();
        b.extend_from_slice(&PREAMBLE);
        encode_frame(1, &[7; SIZE], &mut b);
        s.write_all(&b).await.unwrap();
        s.finish().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.stopped()).await;
    }

    async fn wait_for(seen: &Seen, n: usize) -> Vec<(NodeId, PeerKind)> {
        for _ in 0..100 {
            let v = seen.0.lock().unwrap().clone();
            if v.len() >= n {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn clients_get_control_streams_and_are_told_apart_from_nodes() {
        let (server, seen, cancel) = server(true, true);
        let addr = server.local_addr().unwrap();
        let client = dialer();
        let conn = client.connect(server.node_id(), addr).await.unwrap();

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"PINGclient");

        // A listed node is a node, and may not open bidirectional streams.
        let node = dialer();
        server.allow_list().insert(node.node_id());
        let node_conn = node.connect(server.node_id(), addr).await.unwrap();
        let bi = tokio::time::timeout(Duration::from_millis(300), node_conn.open_bi()).await;
        assert!(bi.is_err(), "node-to-node bidi limit stays 0");

        send_packet(&conn).await;
        send_packet(&node_conn).await;
        let got = wait_for(&seen, 2).await;
        assert!(
            got.contains(&(client.node_id(), PeerKind::Client)),
            "{got:?}"
        );
        assert!(got.contains(&(node.node_id(), PeerKind::Node)), "{got:?}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn without_a_handler_clients_only_send_packets() {
        let (server, seen, cancel) = server(true, false);
        let client = dialer();
        let conn = client
            .connect(server.node_id(), server.local_addr().unwrap())
            .await
            .unwrap();
        let bi = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
        assert!(bi.is_err(), "no control streams without a handler");
        send_packet(&conn).await;
        assert_eq!(
            wait_for(&seen, 1).await,
            vec![(client.node_id(), PeerKind::Client)]
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn mixes_refuse_unknown_keys() {
        let refused = Arc::new(Mutex::new(Vec::new()));
        let log = refused.clone();
        let t = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(IdentityKeypair::generate()),
            PeerAllowList::default(),
            Arc::new(move |r| log.lock().unwrap().push(r)),
        )
        .unwrap();
        let seen = Arc::new(Seen::default());
        let cancel = CancellationToken::new();
        tokio::spawn(
            Ingress::new(
                t.clone(),
                seen.clone(),
                Arc::new(AtomicUsize::new(SIZE)),
                cancel.clone(),
            )
            .with_control(Arc::new(Echo))
            .run(),
        );
        let client = dialer();
        if let Ok(conn) = client.connect(t.node_id(), t.local_addr().unwrap()).await {
            // TLS 1.3 lets the client finish first; the server then closes.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            assert!(conn.open_uni().await.is_err());
        }
        assert_eq!(*refused.lock().unwrap(), vec!["unknown_peer_key"]);
        assert!(seen.0.lock().unwrap().is_empty());
        // A dial-only endpoint completes no inbound handshake (the dialer
        // times out).
        let other = dialer();
        let e = other
            .connect(client.node_id(), client.local_addr().unwrap())
            .await;
        assert!(e.is_err());
        cancel.cancel();
    }

    #[tokio::test]
    async fn authorities_may_probe_a_mix_but_carry_no_packets() {
        let (server, seen, cancel) = server(false, false);
        let addr = server.local_addr().unwrap();
        let authority = dialer();
        server.allow_list().set_authorities([authority.node_id()]);
        assert!(server.allow_list().is_authority(&authority.node_id()));
        assert_eq!(server.allow_list().kind_of(&authority.node_id()), None);
        let conn = authority.connect(server.node_id(), addr).await.unwrap();
        // The server keeps the probe connection (a refused key is closed
        // right after the handshake), but every stream is refused.
        let closed = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
        assert!(closed.is_err(), "probe connection closed early");
        if let Ok(mut s) = conn.open_uni().await {
            let mut b = BytesMut::new();
            b.extend_from_slice(&PREAMBLE);
            encode_frame(1, &[7; SIZE], &mut b);
            let _ = s.write_all(&b).await;
            let _ = s.finish();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(seen.0.lock().unwrap().is_empty(), "no packet from a prober");
        conn.close(0u32.into(), b"done");
        cancel.cancel();
    }
}
