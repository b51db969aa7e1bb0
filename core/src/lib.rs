//! loopmix-core: what every loopmix role shares.
//!
//! * [`keys`]: Ed25519 identity and X25519 Sphinx keys, PKCS#8 PEM files.
//! * [`topology`]: the topology document (network parameters, nodes, layers).
//! * [`liveness`]: local liveness evidence from the sender's own probes (sans-IO).
//! * [`sphinx`]: address mapping, seeded delays, packet construction.
//! * [`poisson`]: exponential sampling and Poisson tickers with injected RNGs.
//! * [`wire`]: the byte framing of packets on QUIC streams.
//! * [`mixing`]: the sans-IO packet path (unwrap, replay, delay, loops).
//! * [`message`]: reliable messages: fragmentation, reassembly, acks and
//!   retransmission (sans-IO).
//! * [`transport`]: QUIC with pinned raw public keys, ingress and egress.
//! * [`files`]: files written whole or not at all (`write_atomic`).
//! * [`metrics`]: per-node Prometheus registries and the `/metrics` endpoint.
//! * [`pki`]: signed descriptors and topology documents, k-of-n verification,
//!   deterministic document building, the directory client.

pub mod e2e;
pub mod files;
pub mod keys;
pub mod liveness;
pub mod message;
pub mod metrics;
pub mod mixing;
pub mod pki;
pub mod poisson;
pub mod provider_link;
pub mod routing;
pub mod sphinx;
pub mod topology;
pub mod transport;
pub mod wire;
