//! QUIC transport between loopmix nodes (quinn 0.11).
//!
//! One UDP socket per process serves both directions. Packets travel on one
//! long-lived unidirectional stream per connection (QUIC datagrams cannot
//! carry a 1.4 KB packet before path-MTU discovery, and are dropped under
//! pacing). Every connection is mutually authenticated with pinned Ed25519
//! raw public keys ([`tls`]).
//!
//! A provider also accepts clients (keys not in the topology, see
//! [`PeerAllowList::accept_clients`]); they send Sphinx packets on the same
//! unidirectional streams and run the control protocol
//! ([`crate::provider_control`]) on bidirectional streams, which only client
//! connections may open ([`ingress::ClientPolicy`]).

pub mod egress;
pub mod ingress;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use loopmix_core::keys::{IdentityKeypair, NodeId};
pub use tls::{PeerAllowList, PeerKind, RefusalHook};

/// Socket buffers sized for bursts of ~1.4 KB packets at high rates; the
/// kernel caps them at `net.core.{r,w}mem_max`.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("QUIC config: {0}")]
    Config(String),
    #[error("connect to {peer:?} at {addr}: {reason}")]
    Connect {
        peer: NodeId,
        addr: SocketAddr,
        reason: String,
    },
}

/// The QUIC settings of every loopmix connection. `sparse_acks` asks the
/// peer to acknowledge our packets sparsely: set on every server (a node's
/// inbound connections carry the dialer's packets, so there it governs
/// only how a client acknowledges its provider's pull answers) and on a
/// client's dialer (how the provider acknowledges the client's packets).
/// A node's own dialer keeps the default: a mix link carries a packet flow
/// whose sender must not wait 25 ms for ACKs while its window opens.
fn transport_config(sparse_acks: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The spin bit lets a passive observer measure RTT per connection.
    t.allow_spin(false);
    // A dead neighbour is noticed within 10 s (mix links are never idle for
    // long: cover traffic flows on them).
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    // No bidirectional streams between nodes. The ingress raises this per
    // connection for clients of a provider (control streams), so the node
    // links of a provider stay exactly like a mix's.
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(8));
    t.stream_receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.datagram_receive_buffer_size(None);
    if sparse_acks {
        // Ask the peer to acknowledge our packets only every 64 of them or
        // after its max_ack_delay (25 ms), so its ACKs ride on what it sends
        // anyway (a client's pull every 25 ms) instead of leaving as ACK-only
        // datagrams, whose number depends on how quickly the peer reads its
        // socket, i.e. on how busy it is. With quinn's default (an ACK every
        // second packet) a busy and an idle client sent their provider
        // measurably different numbers (docs/THREAT_MODEL.md).
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(64));
        t.ack_frequency_config(Some(ack));
    }
    t
}

/// A bound QUIC endpoint with this node's identity.
#[derive(Clone)]
pub struct Transport {
    endpoint: Endpoint,
    identity: Arc<IdentityKeypair>,
    on_refuse: RefusalHook,
    allowed: PeerAllowList,
    /// Whether connections we dial ask for sparse ACKs ([`transport_config`]).
    sparse_acks: bool,
}

impl Transport {
    /// Binds `listen` and accepts connections from identities in `allowed`
    /// (and from clients, if `allowed` accepts them).
    pub fn bind(
        listen: SocketAddr,
        identity: Arc<IdentityKeypair>,
        allowed: PeerAllowList,
        on_refuse: RefusalHook,
    ) -> Result<Self, TransportError> {
        let server_tls = tls::server_config(&identity, allowed.clone(), on_refuse.clone())?;
        let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server_tls))
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        server.transport_config(Arc::new(transport_config(true)));
        let endpoint = endpoint(listen, Some(server))?;
        Ok(Self {
            endpoint,
            identity,
            on_refuse,
            allowed,
            sparse_acks: false,
        })
    }

    /// Binds `listen` for outgoing connections only (a client). With no
    /// server configuration, quinn does no TLS work for inbound handshakes
    /// and never completes one (it answers at most a stateless reset).
    pub fn dial_only(
        listen: SocketAddr,
        identity: Arc<IdentityKeypair>,
        on_refuse: RefusalHook,
    ) -> Result<Self, TransportError> {
        let endpoint = endpoint(listen, None)?;
        Ok(Self {
            endpoint,
            identity,
            on_refuse,
            allowed: PeerAllowList::default(),
            sparse_acks: false,
        })
    }

    /// Connections this endpoint dials ask the peer for sparse ACKs (a
    /// client's link to its provider; see [`transport_config`]).
    pub fn with_sparse_acks(mut self) -> Self {
        self.sparse_acks = true;
        self
    }

    /// The allow-list inbound handshakes are checked against (empty for a
    /// [`Transport::dial_only`] endpoint).
    pub fn allow_list(&self) -> &PeerAllowList {
        &self.allowed
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Dials `peer` at `addr`, refusing any server key but `peer`.
    pub async fn connect(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        let err = |reason: String| TransportError::Connect { peer, addr, reason };
        let tls = tls::client_config(&self.identity, peer, self.on_refuse.clone())?;
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| err(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic_tls));
        cfg.transport_config(Arc::new(transport_config(self.sparse_acks)));
        // The server name is not checked (keys are pinned); it must only parse.
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, "loopmix")
            .map_err(|e| err(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(_) => Err(err("handshake timed out".into())),
        }
    }

    /// Stops accepting new connections; existing ones keep running.
    pub fn stop_accepting(&self) {
        self.endpoint.set_server_config(None);
    }

    /// Closes every connection and waits (bounded) for the peers to learn it.
    pub async fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// A UDP socket with large buffers, wrapped in a quinn endpoint.
fn endpoint(
    listen: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint, TransportError> {
    let bind_err = |source| TransportError::Bind {
        addr: listen,
        source,
    };
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(bind_err)?;
    // Best effort: a smaller buffer only costs drops under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&listen.into()).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Config("no async runtime".into()))?;
    Endpoint::new(EndpointConfig::default(), server, socket.into(), runtime).map_err(bind_err)
}

/// The authenticated identity of the peer of an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::node_id_from_spki(certs.first()?.as_ref())
}
