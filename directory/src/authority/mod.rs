//! The authority: registrations, per-epoch document building, signature
//! exchange with the other authorities, publication.
//!
//! * [`driver`]: *when* — the sans-IO epoch state machine (timeline of an
//!   epoch, retry pacing), tested on a fake clock.
//! * [`scheduler`]: *how* — the thin async loop that executes the driver's
//!   actions: HTTP to peer authorities and the store.
//! * [`registration`]: the rules a node's registration must pass.
//! * [`publication`]: what the HTTP API serves (k-signed documents, own
//!   signatures).
//! * `peers`: concurrent, size-limited GETs to peer authorities.
//!
//! A document is *published* (served at `/v1/topology/...`) once it holds k
//! valid signatures. Authorities never sign two different documents for one
//! epoch: the first built is persisted before its signature is served and is
//! reused after a restart. An authority whose own document did not reach k
//! (it missed registrations) adopts a peer's k-signed document instead
//! ("mirrors" it) so it can still serve.
//!
//! Refusals are typed ([`RegisterError`], [`DocumentError`]); `crate::http`
//! maps them to status codes and error bodies.

pub mod driver;
mod metrics;
pub(crate) mod peers;
pub mod publication;
pub mod registration;
pub mod scheduler;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use loopmix_core::keys::{IdentityKeypair, NodeId};
use loopmix_core::pki::api::EpochInfo;
use loopmix_core::pki::{
    AuthoritySignature, EpochDocument, EpochSchedule, SignedDescriptor, TrustAnchors,
};
use loopmix_net::metrics::MetricError;
use prometheus::Registry;

use crate::config::DirectoryConfig;
use crate::store::{Store, StoreError};
pub use metrics::AuthorityMetrics;
pub use publication::DocumentError;
pub use registration::RegisterError;
use state::{Doc, State};

/// Milliseconds since the Unix epoch: the one clock read of this crate
/// (the scheduler reads it once per round, the HTTP handlers once per
/// request). Milliseconds, not `loopmix_net::clock::unix_now`'s whole seconds:
/// the vote falls `L/4` after registration closes and liveness rounds act
/// at fifths of a few seconds, both finer than a second.
pub fn now_ms() -> u64 {
    loopmix_net::clock::unix_now_ms()
}

pub struct Authority {
    cfg: DirectoryConfig,
    identity: IdentityKeypair,
    id: NodeId,
    schedule: EpochSchedule,
    lead_ms: u64,
    trust: TrustAnchors,
    store: Store,
    state: Mutex<State>,
    http: reqwest::Client,
    registry: Registry,
    pub metrics: AuthorityMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metric(#[from] MetricError),
    #[error("trust anchors: {0}")]
    Trust(#[from] loopmix_core::pki::TrustError),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("peer key {0} is this authority's own key")]
    SelfPeer(NodeId),
    #[error("identity key: {0}")]
    Key(#[from] loopmix_core::keys::KeyError),
    /// The liveness prober's QUIC endpoint.
    #[error("probe transport: {0}")]
    Transport(#[from] loopmix_net::transport::TransportError),
    /// The HTTP listener: binding it, or serving on it.
    #[error("HTTP listener {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Authority {
    /// Opens the database and restores registrations and documents.
    pub fn new(cfg: DirectoryConfig, identity: IdentityKeypair) -> Result<Self, AuthorityError> {
        let id = identity.node_id();
        if let Some(p) = cfg.peers.iter().find(|p| p.key == id) {
            return Err(AuthorityError::SelfPeer(p.key));
        }
        let trust = TrustAnchors::new(
            std::iter::once(id).chain(cfg.peers.iter().map(|p| p.key)),
            cfg.authority.threshold,
        )?
        .with_max_document_bytes(cfg.limits.max_document_bytes)
        .with_clock_skew(cfg.limits.clock_skew.as_secs());
        let schedule = EpochSchedule {
            genesis: cfg.epoch.genesis,
            length_s: cfg.epoch.length.as_secs(),
        };
        let lead_ms = u64::try_from(cfg.epoch.registration_lead.as_millis()).unwrap_or(u64::MAX);
        std::fs::create_dir_all(&cfg.authority.data_dir).map_err(|source| AuthorityError::Io {
            path: cfg.authority.data_dir.clone(),
            source,
        })?;
        let store = Store::open(&cfg.authority.data_dir.join("directory.redb"))?;
        let http = reqwest::Client::builder()
            .timeout(peers::peer_timeout(&cfg))
            .connect_timeout(peers::peer_timeout(&cfg))
            .no_proxy()
            .build()
            .map_err(|e| AuthorityError::Http(e.to_string()))?;
        let registry = Registry::new();
        let metrics = AuthorityMetrics::new(&registry)?;
        let a = Self {
            cfg,
            identity,
            id,
            schedule,
            lead_ms,
            trust,
            store,
            state: Mutex::new(State::default()),
            http,
            registry,
            metrics,
        };
        a.restore()?;
        Ok(a)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.cfg
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The pinned authorities (this one and its peers) and threshold k.
    pub fn trust(&self) -> &TrustAnchors {
        &self.trust
    }

    pub fn schedule(&self) -> EpochSchedule {
        self.schedule
    }

    /// The HTTP client for peer requests (bounded by `limits.peer_timeout`).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later requests could not cope with; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn restore(&self) -> Result<(), AuthorityError> {
        let mut st = self.state();
        let mut n = 0;
        for (epoch, json) in self.store.descriptors()? {
            let verified = serde_json::from_slice::<SignedDescriptor>(&json)
                .map_err(|e| e.to_string())
                .and_then(|s| s.verify().map_err(|e| e.to_string()));
            match verified {
                Ok(v) if v.descriptor.epoch == epoch => {
                    st.regs.entry(epoch).or_default().insert(v);
                    n += 1;
                }
                Ok(_) => tracing::warn!(epoch, "stored descriptor for another epoch; ignored"),
                Err(e) => {
                    tracing::warn!(epoch, error = %e, "stored descriptor does not verify; ignored")
                }
            }
        }
        let mut docs = 0;
        for d in self.store.documents()? {
            let Ok(doc) = serde_json::from_slice::<EpochDocument>(&d.bytes) else {
                tracing::warn!(epoch = d.epoch, "stored document does not parse; ignored");
                continue;
            };
            let mut sigs = BTreeMap::new();
            for (a, s) in d.signatures {
                let sig = AuthoritySignature::from_raw(NodeId(a), s);
                if sig.verify(&d.bytes) {
                    sigs.insert(NodeId(a), s);
                }
            }
            st.docs.insert(
                d.epoch,
                Doc {
                    bytes: Arc::new(d.bytes),
                    valid_from: doc.valid_from,
                    valid_until: doc.valid_until,
                    sigs,
                },
            );
            docs += 1;
        }
        drop(st);
        self.update_gauges();
        tracing::info!(registrations = n, documents = docs, "state restored");
        Ok(())
    }

    // ----- time -----

    fn start_ms(&self, epoch: u64) -> u64 {
        self.schedule.start(epoch).saturating_mul(1000)
    }

    /// Epochs accepting registrations at `now_ms`.
    pub fn open_epochs(&self, now_ms: u64) -> Vec<u64> {
        let cur = self.schedule.epoch_at(now_ms / 1000);
        (cur + 1..=cur + self.cfg.epoch.register_ahead)
            .filter(|&e| now_ms < self.start_ms(e).saturating_sub(self.lead_ms))
            .collect()
    }

    pub fn epoch_info(&self, now_ms: u64) -> EpochInfo {
        let now = now_ms / 1000;
        let epoch = self.schedule.epoch_at(now);
        EpochInfo {
            now,
            epoch,
            epoch_start: self.schedule.start(epoch),
            epoch_length_s: self.schedule.length_s,
            genesis: self.schedule.genesis,
            registration_lead_s: self.lead_ms.div_ceil(1000),
            open_epochs: self.open_epochs(now_ms),
        }
    }

    // ----- bookkeeping -----

    fn warn_once(&self, epoch: u64, what: &str) -> bool {
        self.state().warned.insert((epoch, what.to_string()))
    }

    fn update_gauges(&self) {
        let st = self.state();
        let k = self.trust.threshold();
        if let Some((e, _)) = st.docs.iter().rev().find(|(_, d)| d.sigs.len() >= k) {
            self.metrics
                .published_epoch
                .set(i64::try_from(*e).unwrap_or(i64::MAX));
        }
        if let Some(d) = st.docs.values().next_back() {
            self.metrics.signatures.set(d.sigs.len() as i64);
        }
    }
}
