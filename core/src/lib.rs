//! loopmix-core: the loopmix protocol, sans-IO. Every rule of the packet
//! path, the message layer and the signed directory lives here as pure code
//! that takes time and randomness from its caller; no tokio, quinn, axum or
//! reqwest is in this crate's dependency tree (Cargo enforces the boundary;
//! the I/O shell is `loopmix-net`). The node, the client and the simulator
//! all drive these same types.
//!
//! * [`keys`]: Ed25519 identity and X25519 Sphinx keys, PKCS#8 PEM files.
//! * [`topology`]: the topology document (network parameters, nodes, layers).
//! * [`liveness`]: local liveness evidence from the sender's own probes (sans-IO).
//! * [`sphinx`]: address mapping, seeded delays, packet construction.
//! * [`poisson`]: exponential sampling and Poisson tickers with injected RNGs.
//! * [`wire`]: the byte framing of packets on QUIC streams.
//! * [`mixing`]: the sans-IO packet path (unwrap, replay, delay, loops, a
//!   provider's final hop: store, then acknowledge).
//! * [`message`]: reliable messages: fragmentation, reassembly, acks and
//!   retransmission (sans-IO).
//! * [`client_engine`]: a client's messaging engine: messages to packets,
//!   acks, retransmission, reply blocks, cover (PROTOCOL.md 6).
//! * [`e2e`]: end-to-end sealing, addresses and reply blocks (SURBs).
//! * [`stream_frame`]: the messages and frames of streams over the mixnet
//!   (SOCKS5 proxy ↔ exit), a strict codec.
//! * [`provider_control`]: the client ↔ provider control protocol codec.
//! * [`pki`]: signed descriptors, topology and liveness documents, k-of-n
//!   verification, deterministic document building.
//! * `testing` (feature `testing`): fixtures for the crates' tests.

pub mod client_engine;
pub mod e2e;
pub mod keys;
pub mod liveness;
pub mod message;
pub mod mixing;
pub mod pki;
pub mod poisson;
pub mod provider_control;
pub mod sphinx;
pub mod stream_frame;
pub mod topology;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
