//! The authority: registrations, per-epoch document building, signature
//! exchange with the other authorities, publication.
//!
//! Timeline of epoch `e` (start `S`, registration lead `L`):
//!
//! ```text
//! registration for e open ........ S-L ─ vote: S-L+L/4 ─ ... ─ S ───────── S+length
//!                                  │      merge peers' registrations,
//!                                  │      build, sign once, persist,
//!                                  │      then collect peers' signatures
//!                                  closed: 400 epoch_not_open
//! ```
//!
//! A document is *published* (served at `/v1/topology/...`) once it holds k
//! valid signatures. Authorities never sign two different documents for one
//! epoch: the first built is persisted before its signature is served and is
//! reused after a restart. An authority whose own document did not reach k
//! (it missed registrations) adopts a peer's k-signed document instead
//! ("mirrors" it) so it can still serve.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use loopmix_core::keys::{IdentityKeypair, NodeId, SphinxPublicKey};
use loopmix_net::metrics::{self as m, MetricError};
use loopmix_core::pki::api::{self, DescriptorList, EpochInfo, RegisterResponse};
use loopmix_net::directory::{error_chain, read_limited};
use loopmix_core::pki::{
    AuthoritySignature, DOCUMENT_VERSION, Descriptor, EpochDocument, EpochSchedule,
    SignedDescriptor, SignedTopology, TrustAnchors, VerifiedDescriptor, build_document,
};
use loopmix_core::topology::Topology;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DirectoryConfig, PeerConfig};
use crate::store::{Store, StoreError};

/// A refusal, rendered as an `ErrorBody` with this status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "internal error");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the authority's log",
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub struct AuthorityMetrics {
    pub registrations: IntCounterVec,
    pub built: IntCounter,
    pub build_failures: IntCounter,
    pub peer_failures: IntCounterVec,
    pub signature_mismatches: IntCounterVec,
    pub mirrored: IntCounter,
    pub published_epoch: IntGauge,
    pub signatures: IntGauge,
}

impl AuthorityMetrics {
    fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            registrations: m::counter_vec(
                r,
                "loopmix_authority_registrations_total",
                "Descriptor registrations by result (created, replaced, unchanged, or the refusal code)",
                &["result"],
            )?,
            built: m::counter(
                r,
                "loopmix_authority_documents_built_total",
                "Topology documents built and signed by this authority",
            )?,
            build_failures: m::counter(
                r,
                "loopmix_authority_build_failures_total",
                "Epochs for which no valid document could be built (e.g. a layer without mixes)",
            )?,
            peer_failures: m::counter_vec(
                r,
                "loopmix_authority_peer_failures_total",
                "Failed requests to peer authorities, by peer key",
                &["peer"],
            )?,
            signature_mismatches: m::counter_vec(
                r,
                "loopmix_authority_signature_mismatches_total",
                "Peer signatures that do not verify over this authority's document (the peer built different bytes)",
                &["peer"],
            )?,
            mirrored: m::counter(
                r,
                "loopmix_authority_documents_mirrored_total",
                "k-signed peer documents adopted because this authority's own did not reach k",
            )?,
            published_epoch: m::gauge(
                r,
                "loopmix_authority_published_epoch",
                "Newest epoch with a published (k-signed) document",
            )?,
            signatures: m::gauge(
                r,
                "loopmix_authority_document_signatures",
                "Valid signatures on the newest document this authority holds",
            )?,
        })
    }
}

#[derive(Default)]
struct EpochRegs {
    by_id: BTreeMap<NodeId, VerifiedDescriptor>,
    by_addr: HashMap<SocketAddr, NodeId>,
    by_key: HashMap<SphinxPublicKey, NodeId>,
}

impl EpochRegs {
    fn insert(&mut self, v: VerifiedDescriptor) {
        let id = v.descriptor.identity;
        if let Some(old) = self.by_id.remove(&id) {
            self.by_addr.remove(&old.descriptor.address);
            self.by_key.remove(&old.descriptor.sphinx_key);
        }
        self.by_addr.insert(v.descriptor.address, id);
        self.by_key.insert(v.descriptor.sphinx_key, id);
        self.by_id.insert(id, v);
    }
}

struct Doc {
    bytes: Arc<Vec<u8>>,
    valid_from: u64,
    valid_until: u64,
    sigs: BTreeMap<NodeId, [u8; 64]>,
}

impl Doc {
    fn signed(&self) -> SignedTopology {
        let mut s = SignedTopology::unsigned(&self.bytes);
        for (a, sig) in &self.sigs {
            s.add_signature(AuthoritySignature::from_raw(*a, *sig));
        }
        s
    }
}

#[derive(Default)]
struct State {
    regs: BTreeMap<u64, EpochRegs>,
    docs: BTreeMap<u64, Doc>,
    /// `(epoch, what)` already logged, to warn once per epoch.
    warned: HashSet<(u64, String)>,
    /// Epoch → earliest time (ms) of the next build attempt after a failure.
    retry_build_at: HashMap<u64, u64>,
}

/// Precedence of two descriptors of one identity: the same rule as
/// [`build_document`] (later `published_at`, then greater JSON bytes).
fn precedence(d: &Descriptor) -> (u64, Vec<u8>) {
    (d.published_at, serde_json::to_vec(d).unwrap_or_default())
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
            .timeout(peer_timeout(&cfg))
            .connect_timeout(peer_timeout(&cfg))
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

    /// The exact bytes of the document for `epoch` if it is published (holds
    /// k signatures); shared, not copied, so callers can cache by pointer.
    pub fn published_bytes(&self, epoch: u64) -> Option<Arc<Vec<u8>>> {
        let st = self.state();
        st.docs
            .get(&epoch)
            .filter(|d| d.sigs.len() >= self.trust.threshold())
            .map(|d| d.bytes.clone())
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

    // ----- registrations -----

    /// Verifies and stores a registration. Blocking (database commit): call
    /// from `spawn_blocking`.
    pub fn register(
        &self,
        signed: &SignedDescriptor,
        now_ms: u64,
    ) -> Result<(StatusCode, RegisterResponse), ApiError> {
        let result = self.register_inner(signed, now_ms);
        let label = match &result {
            Ok((_, r)) => r.status.clone(),
            Err(e) => e.code.to_string(),
        };
        self.metrics
            .registrations
            .with_label_values(&[label.as_str()])
            .inc();
        if let Err(e) = &result {
            tracing::debug!(identity = %signed.identity, code = e.code, error = %e.message, "registration refused");
        }
        result
    }

    fn register_inner(
        &self,
        signed: &SignedDescriptor,
        now_ms: u64,
    ) -> Result<(StatusCode, RegisterResponse), ApiError> {
        let v = signed.verify().map_err(|e| {
            let status = match e.code() {
                "bad_signature" | "identity_mismatch" => StatusCode::FORBIDDEN,
                "oversized" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.code(), e.to_string())
        })?;
        let d = &v.descriptor;
        let open = self.open_epochs(now_ms);
        if !open.contains(&d.epoch) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "epoch_not_open",
                format!(
                    "registration for epoch {} is not open; open now: {open:?} (registration closes {} s before an epoch starts; see GET {})",
                    d.epoch,
                    self.lead_ms.div_ceil(1000),
                    api::PATH_EPOCH
                ),
            ));
        }
        let skew = self.cfg.limits.clock_skew.as_secs();
        if d.published_at > (now_ms / 1000).saturating_add(skew) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "published_in_future",
                format!(
                    "published_at {} is ahead of this authority's clock ({}) by more than {skew} s",
                    d.published_at,
                    now_ms / 1000
                ),
            ));
        }
        let mut st = self.state();
        let regs = st.regs.entry(d.epoch).or_default();
        let id = d.identity;
        let mut status = "created";
        if let Some(old) = regs.by_id.get(&id) {
            if old.bytes == v.bytes {
                return Ok((
                    StatusCode::OK,
                    RegisterResponse {
                        status: "unchanged".into(),
                        epoch: d.epoch,
                        identity: id,
                    },
                ));
            }
            if precedence(&old.descriptor) >= precedence(d) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "stale_descriptor",
                    format!(
                        "identity {id} already registered a newer descriptor for epoch {} (published_at {})",
                        d.epoch, old.descriptor.published_at
                    ),
                ));
            }
            status = "replaced";
        }
        if let Some(other) = regs.by_addr.get(&d.address).filter(|o| **o != id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_address",
                format!(
                    "address {} is already registered for epoch {} by node {other}",
                    d.address, d.epoch
                ),
            ));
        }
        if let Some(other) = regs.by_key.get(&d.sphinx_key).filter(|o| **o != id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_sphinx_key",
                format!(
                    "Sphinx key {} is already registered for epoch {} by node {other}",
                    d.sphinx_key, d.epoch
                ),
            ));
        }
        if status == "created" && regs.by_id.len() >= self.cfg.limits.max_descriptors_per_epoch {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "epoch_full",
                format!(
                    "epoch {} already has {} registrations, the configured maximum",
                    d.epoch, self.cfg.limits.max_descriptors_per_epoch
                ),
            ));
        }
        let json = serde_json::to_vec(signed).map_err(internal)?;
        // Durable before acknowledged; the lock keeps the checks above and
        // the write atomic with respect to other registrations.
        self.store
            .put_descriptor(d.epoch, *id.as_bytes(), &json)
            .map_err(internal)?;
        let epoch = d.epoch;
        tracing::info!(node = %id, epoch, address = %d.address, role = %d.role, status, "registered");
        regs.insert(v);
        Ok((
            if status == "created" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            RegisterResponse {
                status: status.into(),
                epoch,
                identity: id,
            },
        ))
    }

    pub fn descriptor_list(&self, epoch: u64) -> DescriptorList {
        let st = self.state();
        DescriptorList {
            epoch,
            descriptors: st
                .regs
                .get(&epoch)
                .map(|r| r.by_id.values().map(|v| v.signed.clone()).collect())
                .unwrap_or_default(),
        }
    }

    // ----- publication -----

    /// The document for `epoch` if it holds k signatures.
    pub fn published(&self, epoch: u64) -> Result<SignedTopology, ApiError> {
        let st = self.state();
        match st.docs.get(&epoch) {
            Some(d) if d.sigs.len() >= self.trust.threshold() => Ok(d.signed()),
            Some(d) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_published",
                format!(
                    "epoch {epoch} is built but not published yet: {} of {} signatures",
                    d.sigs.len(),
                    self.trust.threshold()
                ),
            )),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_epoch",
                format!("no document for epoch {epoch}"),
            )),
        }
    }

    /// The newest published document valid at `now_ms`.
    pub fn current(&self, now_ms: u64) -> Result<SignedTopology, ApiError> {
        let now = now_ms / 1000;
        let st = self.state();
        st.docs
            .values()
            .rev()
            .find(|d| {
                d.sigs.len() >= self.trust.threshold() && d.valid_from <= now && now < d.valid_until
            })
            .map(Doc::signed)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_current_document",
                    format!(
                        "no published document is valid now (epoch {})",
                        self.schedule.epoch_at(now)
                    ),
                )
            })
    }

    /// This authority's own signature on its document for `epoch`.
    pub fn own_signature(&self, epoch: u64) -> Result<AuthoritySignature, ApiError> {
        let st = self.state();
        st.docs
            .get(&epoch)
            .and_then(|d| d.sigs.get(&self.id))
            .map(|s| AuthoritySignature::from_raw(self.id, *s))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_signed",
                    format!("this authority has not signed a document for epoch {epoch}"),
                )
            })
    }

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

    // ----- the epoch driver -----

    /// Drives building, signing, signature exchange and pruning until `cancel`.
    pub async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        let tick = Duration::from_millis(
            (self.schedule.length_s.saturating_mul(1000) / 24).clamp(100, 1000),
        );
        let mut last_prune = 0;
        loop {
            let now = now_ms();
            let cur = self.schedule.epoch_at(now / 1000);
            for target in [cur, cur + 1] {
                if target == 0 {
                    continue;
                }
                self.clone().drive_epoch(target, now).await;
            }
            if cur != last_prune {
                last_prune = cur;
                self.prune(cur).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn drive_epoch(self: Arc<Self>, target: u64, now: u64) {
        let start = self.start_ms(target);
        let vote_at = start.saturating_sub(self.lead_ms) + self.lead_ms / 4;
        if now < vote_at || now / 1000 >= self.schedule.end(target) {
            return;
        }
        let sigs = |a: &Self| a.state().docs.get(&target).map(|d| d.sigs.len());
        let retry_at = self
            .state()
            .retry_build_at
            .get(&target)
            .copied()
            .unwrap_or(0);
        if sigs(&self).is_none() && now >= retry_at {
            self.clone().build(target).await;
            if sigs(&self).is_none() {
                // Not enough mixes yet, or peers unreachable: retry, but
                // without hammering the peers every tick.
                let backoff = (self.lead_ms / 4).clamp(1000, 30_000);
                self.state().retry_build_at.insert(target, now + backoff);
            }
        }
        if sigs(&self).is_some_and(|n| n < self.trust.authorities().len()) {
            self.clone().collect_signatures(target).await;
        }
        let published = self.published(target).is_ok();
        if !published && now >= start.saturating_sub(self.lead_ms / 4) {
            self.clone().mirror(target).await;
        }
        self.update_gauges();
    }

    /// Merges registrations (own + peers'), builds, signs and persists.
    async fn build(self: Arc<Self>, target: u64) {
        let mut descriptors: Vec<Descriptor> = {
            let st = self.state();
            st.regs
                .get(&target)
                .map(|r| r.by_id.values().map(|v| v.descriptor.clone()).collect())
                .unwrap_or_default()
        };
        let own = descriptors.len();
        let max = self.cfg.limits.max_descriptors_per_epoch;
        let path = api::path_descriptors(target);
        for (peer, result) in self.ask_peers(&path, max.saturating_mul(1024)).await {
            let list = match result.and_then(|(status, body)| {
                if status != 200 {
                    return Err(format!("HTTP {status}"));
                }
                serde_json::from_slice::<DescriptorList>(&body).map_err(|e| e.to_string())
            }) {
                Ok(l) if l.epoch == target => l,
                Ok(_) => {
                    tracing::warn!(peer = %peer.key, "peer answered for another epoch");
                    continue;
                }
                Err(e) => {
                    self.peer_failed(&peer, target, "descriptors", &e);
                    continue;
                }
            };
            let mut bad = 0;
            for sd in list.descriptors.into_iter().take(max) {
                match sd.verify() {
                    Ok(v) if v.descriptor.epoch == target => descriptors.push(v.descriptor),
                    _ => bad += 1,
                }
            }
            if bad > 0 {
                tracing::warn!(peer = %peer.key, epoch = target, bad, "peer served descriptors that do not verify; ignored");
            }
        }
        let topology = build_document(target, &self.cfg.network.params(target), &descriptors);
        if let Err(e) = Topology::validate(&topology) {
            if self.warn_once(target, "build") {
                self.metrics.build_failures.inc();
                tracing::warn!(
                    epoch = target,
                    registered = own,
                    merged = topology.nodes.len(),
                    error = %e,
                    "cannot build a valid document for this epoch yet; retrying"
                );
            }
            return;
        }
        let doc = EpochDocument {
            version: DOCUMENT_VERSION,
            valid_from: self.schedule.start(target),
            valid_until: self
                .schedule
                .end(target)
                .saturating_add(self.cfg.epoch.validity_grace.as_secs()),
            epoch_length_s: self.schedule.length_s,
            topology,
        };
        let bytes = match doc.canonical_bytes() {
            Ok(b) if b.len() <= self.cfg.limits.max_document_bytes => b,
            Ok(b) => {
                if self.warn_once(target, "size") {
                    self.metrics.build_failures.inc();
                    tracing::error!(
                        epoch = target,
                        len = b.len(),
                        "document exceeds limits.max_document_bytes"
                    );
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "serialising document");
                return;
            }
        };
        let sig = AuthoritySignature::sign(&bytes, &self.identity);
        let Some(raw) = sig.raw() else { return };
        let this = self.clone();
        let stored = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || {
                this.store
                    .put_document(target, &bytes, &[(*this.id.as_bytes(), raw)])
            })
            .await
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "persisting document; not signing");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "persisting document");
                return;
            }
        }
        let nodes = doc.topology.nodes.len();
        {
            let mut st = self.state();
            st.docs.insert(
                target,
                Doc {
                    bytes: Arc::new(bytes),
                    valid_from: doc.valid_from,
                    valid_until: doc.valid_until,
                    sigs: BTreeMap::from([(self.id, raw)]),
                },
            );
        }
        self.metrics.built.inc();
        tracing::info!(
            epoch = target,
            nodes,
            registered_here = own,
            "built and signed topology document"
        );
    }

    /// Fetches each missing peer's signature and keeps those that verify over
    /// our bytes.
    async fn collect_signatures(self: Arc<Self>, target: u64) {
        let (bytes, have) = {
            let st = self.state();
            let Some(d) = st.docs.get(&target) else {
                return;
            };
            (
                d.bytes.clone(),
                d.sigs.keys().copied().collect::<HashSet<_>>(),
            )
        };
        let missing: Vec<PeerConfig> = self
            .cfg
            .peers
            .iter()
            .filter(|p| !have.contains(&p.key))
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        let path = api::path_signature(target);
        for (peer, result) in self.ask(&missing, &path, 4096).await {
            let sig = match result {
                Ok((200, body)) => match serde_json::from_slice::<AuthoritySignature>(&body) {
                    Ok(s) => s,
                    Err(e) => {
                        self.peer_failed(&peer, target, "signature", &e.to_string());
                        continue;
                    }
                },
                // Not signed yet (or it could not build): normal, retry later.
                Ok((404, _)) => continue,
                Ok((status, _)) => {
                    self.peer_failed(&peer, target, "signature", &format!("HTTP {status}"));
                    continue;
                }
                Err(e) => {
                    self.peer_failed(&peer, target, "signature", &e);
                    continue;
                }
            };
            let raw = sig.raw();
            if sig.authority != peer.key || !sig.verify(&bytes) || raw.is_none() {
                self.metrics
                    .signature_mismatches
                    .with_label_values(&[peer.key.to_string().as_str()])
                    .inc();
                if self.warn_once(target, &format!("mismatch {}", peer.key)) {
                    tracing::warn!(
                        epoch = target,
                        peer = %peer.key,
                        "peer's signature does not verify over our document: it built different bytes (different registrations or configuration)"
                    );
                }
                continue;
            }
            let Some(raw) = raw else { continue };
            let this = self.clone();
            let key = *peer.key.as_bytes();
            let stored =
                tokio::task::spawn_blocking(move || this.store.put_signature(target, key, raw))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(epoch = target, "persisting a peer signature failed");
                continue;
            }
            let count = {
                let mut st = self.state();
                let Some(d) = st.docs.get_mut(&target) else {
                    continue;
                };
                // Only if the document was not replaced meanwhile.
                if !Arc::ptr_eq(&d.bytes, &bytes) {
                    continue;
                }
                d.sigs.insert(peer.key, raw);
                d.sigs.len()
            };
            tracing::info!(epoch = target, peer = %peer.key, signatures = count, "peer signature added");
            if count == self.trust.threshold() {
                tracing::info!(
                    epoch = target,
                    signatures = count,
                    "topology document published"
                );
            }
        }
    }

    /// Adopts a peer's k-signed document when ours did not reach k.
    async fn mirror(self: Arc<Self>, target: u64) {
        let path = api::path_topology(target);
        let max = self.cfg.limits.max_document_bytes.div_ceil(3) * 4 + 64 * 1024;
        let peers = self.cfg.peers.clone();
        for (peer, result) in self.ask(&peers, &path, max).await {
            let Ok((200, body)) = result else { continue };
            let Ok(signed) = serde_json::from_slice::<SignedTopology>(&body) else {
                continue;
            };
            let now = now_ms() / 1000;
            let ahead = self.schedule.length_s;
            let v = match self.trust.verify_upcoming(&signed, now, ahead) {
                Ok(v) if v.epoch() == target => v,
                Ok(_) => continue,
                Err(e) => {
                    if self.warn_once(target, &format!("mirror {}", peer.key)) {
                        tracing::warn!(epoch = target, peer = %peer.key, error = %e, "peer's document does not verify; not mirrored");
                    }
                    continue;
                }
            };
            let mut sigs = BTreeMap::new();
            for s in &signed.signatures {
                if v.signers().contains(&s.authority)
                    && let Some(raw) = s.raw()
                {
                    sigs.insert(s.authority, raw);
                }
            }
            let bytes = v.bytes().to_vec();
            let rows: Vec<([u8; 32], [u8; 64])> =
                sigs.iter().map(|(a, s)| (*a.as_bytes(), *s)).collect();
            let this = self.clone();
            let stored = {
                let bytes = bytes.clone();
                tokio::task::spawn_blocking(move || this.store.put_document(target, &bytes, &rows))
                    .await
            };
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(epoch = target, "persisting a mirrored document failed");
                return;
            }
            {
                let mut st = self.state();
                st.docs.insert(
                    target,
                    Doc {
                        bytes: Arc::new(bytes),
                        valid_from: v.valid_from(),
                        valid_until: v.valid_until(),
                        sigs,
                    },
                );
            }
            self.metrics.mirrored.inc();
            tracing::warn!(
                epoch = target,
                from = %peer.key,
                signers = v.signers().len(),
                "our document did not reach the threshold; serving the peers' k-signed document"
            );
            return;
        }
    }

    async fn prune(self: &Arc<Self>, cur: u64) {
        let keep = self.cfg.limits.keep_epochs;
        let before = cur.saturating_sub(keep);
        if before == 0 {
            return;
        }
        {
            let mut st = self.state();
            st.regs = st.regs.split_off(&before);
            st.docs = st.docs.split_off(&before);
            st.warned.retain(|(e, _)| *e >= before);
            st.retry_build_at.retain(|e, _| *e >= before);
        }
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.store.prune_before(before)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the database"),
            Err(e) => tracing::warn!(error = %e, "pruning the database"),
        }
    }

    fn peer_failed(&self, peer: &PeerConfig, epoch: u64, what: &str, error: &str) {
        self.metrics
            .peer_failures
            .with_label_values(&[peer.key.to_string().as_str()])
            .inc();
        if self.warn_once(epoch, &format!("{what} {}", peer.key)) {
            tracing::warn!(epoch, peer = %peer.key, error, "peer authority request failed ({what}); retrying");
        } else {
            tracing::debug!(epoch, peer = %peer.key, error, "peer authority request failed ({what})");
        }
    }

    async fn ask_peers(
        &self,
        path: &str,
        max: usize,
    ) -> Vec<(PeerConfig, Result<(u16, Vec<u8>), String>)> {
        self.ask(&self.cfg.peers, path, max).await
    }

    /// GET `path` from `peers` concurrently.
    async fn ask(
        &self,
        peers: &[PeerConfig],
        path: &str,
        max: usize,
    ) -> Vec<(PeerConfig, Result<(u16, Vec<u8>), String>)> {
        let mut set = JoinSet::new();
        for p in peers {
            let http = self.http.clone();
            let p = p.clone();
            let path = path.to_string();
            set.spawn(async move {
                let r = match p.base_url() {
                    Ok(base) => get_limited(&http, &format!("{base}{path}"), max).await,
                    Err(e) => Err(e),
                };
                (p, r)
            });
        }
        let mut out = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(r) = j {
                out.push(r);
            }
        }
        out
    }
}

/// Peer requests must finish well within the vote phase.
fn peer_timeout(cfg: &DirectoryConfig) -> Duration {
    cfg.limits
        .peer_timeout
        .min((cfg.epoch.registration_lead / 3).max(Duration::from_millis(300)))
}

async fn get_limited(
    http: &reqwest::Client,
    url: &str,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    let resp = http.get(url).send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    Ok((status, read_limited(resp, max).await?))
}
