//! Network-wide signed liveness, authority side.
//!
//! * [`prober`]: every `probe_interval`, a pinned QUIC handshake with every
//!   node of the current and the next published topology; hysteresis and
//!   flap damping turn the results into this authority's observation.
//! * [`rounds`]: every `publish_interval`, freeze and sign the observation,
//!   combine it with the peers' (a node is down if ≥ k observations say
//!   so), sign the resulting document, collect the peers' signatures over
//!   the same bytes, publish at k.
//!
//! Nothing is persisted: after a restart an authority has no evidence, so
//! it observes every node up and the others' votes decide. A round that
//! misses k leaves the previous document in service until it expires.
//! docs/ARCHITECTURE.md ("Directory authorities") describes the limits.

pub mod prober;
pub mod rounds;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use loopmix_core::keys::{IdentityKeypair, NodeId};
use loopmix_core::pki::{
    AuthoritySignature, EpochDocument, LIVENESS_CONTEXT, LIVENESS_VERSION, MAX_LIVENESS_BYTES,
    Observation, SignedLiveness, SignedObservation, api,
};
use loopmix_net::metrics::{self as m, MetricError};
use loopmix_net::transport::Transport;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::authority::peers::{PeerResult, ask_peers};
use crate::authority::{Authority, AuthorityError, now_ms};
use crate::config::{LivenessSection, PeerConfig};
use prober::{ProbeParams, ProbeResult, ProbeTable, Transition, probe};
use rounds::{Built, Published, Round, RoundBook, build_document, round_at, round_start_ms};

/// Probes in flight at once: bounds sockets and handshake CPU however large
/// the topology is.
const MAX_PROBES_IN_FLIGHT: usize = 64;
/// Largest observation or document body read from a peer (base64 + JSON).
const MAX_PEER_BODY: usize = MAX_LIVENESS_BYTES.div_ceil(3) * 4 + 64 * 1024;

pub struct LivenessMetrics {
    pub probe_down: IntGaugeVec,
    pub published_down: IntGaugeVec,
    pub probes: IntCounterVec,
    pub transitions: IntCounterVec,
    pub round: IntGauge,
    pub missed: IntCounter,
    pub peer_refused: IntCounterVec,
}

impl LivenessMetrics {
    fn new(r: &prometheus::Registry) -> Result<Self, MetricError> {
        Ok(Self {
            probe_down: m::gauge_vec(
                r,
                "loopmix_authority_probe_down",
                "This authority's own observation of a listed node: 1 down, 0 up",
                &["node"],
            )?,
            published_down: m::gauge_vec(
                r,
                "loopmix_liveness_down",
                "Whether the newest published (k-signed) liveness list has the listed node down: 1 down, 0 up",
                &["node"],
            )?,
            probes: m::counter_vec(
                r,
                "loopmix_authority_probes_total",
                "Node probes (pinned QUIC handshakes) by result: ok, timeout, failed",
                &["result"],
            )?,
            transitions: m::counter_vec(
                r,
                "loopmix_liveness_transitions_total",
                "Nodes entering (down) or leaving (up) the published liveness list",
                &["direction"],
            )?,
            round: m::gauge(
                r,
                "loopmix_authority_liveness_round",
                "Newest liveness round this authority publishes",
            )?,
            missed: m::counter(
                r,
                "loopmix_authority_liveness_missed_rounds_total",
                "Liveness rounds that ended without a k-signed document at this authority (the previous one kept being served)",
            )?,
            peer_refused: m::counter_vec(
                r,
                "loopmix_authority_liveness_peer_refused_total",
                "Peer liveness answers not used, by what (observation, signature, document) and reason",
                &["what", "reason"],
            )?,
        })
    }
}

/// Parsed node lists of published topology documents, keyed by epoch and
/// the exact bytes (re-parsed only when the document changes).
type TargetCache = Vec<(u64, Arc<Vec<u8>>, Arc<Vec<(NodeId, SocketAddr)>>)>;

/// The liveness service of one authority: prober, round driver, and what
/// the HTTP API serves.
pub struct Liveness {
    authority: Arc<Authority>,
    identity: Arc<IdentityKeypair>,
    id: NodeId,
    cfg: LivenessSection,
    interval_s: u64,
    valid_for_s: u64,
    table: Mutex<ProbeTable>,
    book: Mutex<RoundBook>,
    targets: Mutex<TargetCache>,
    /// The nodes probed in the last cycle and their addresses (labels of
    /// the per-node gauges; addresses for the transition logs).
    listed: Mutex<BTreeMap<NodeId, SocketAddr>>,
    transport_v4: Transport,
    transport_v6: Mutex<Option<Transport>>,
    /// A streak of missed rounds is logged once.
    missing_streak: Mutex<u64>,
    pub metrics: LivenessMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent across a panic elsewhere; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Liveness {
    /// Binds the probing endpoint (dial-only: it completes no inbound
    /// handshake) and registers the metrics in the authority's registry.
    /// Must run inside a tokio runtime.
    pub fn new(
        authority: Arc<Authority>,
        identity: Arc<IdentityKeypair>,
    ) -> Result<Self, AuthorityError> {
        let cfg = authority.config().liveness.clone();
        let metrics = LivenessMetrics::new(authority.registry())?;
        let transport_v4 = Transport::dial_only(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            identity.clone(),
            Arc::new(|reason| tracing::debug!(reason, "probe refused the node's key")),
        )?;
        Ok(Self {
            id: identity.node_id(),
            interval_s: cfg.publish_interval.as_secs().max(1),
            valid_for_s: cfg.valid_for.as_secs(),
            table: Mutex::new(ProbeTable::new(ProbeParams {
                down_after: cfg.down_after,
                up_after: cfg.up_after,
            })),
            cfg,
            authority,
            identity,
            book: Mutex::new(RoundBook::default()),
            targets: Mutex::new(Vec::new()),
            listed: Mutex::new(BTreeMap::new()),
            transport_v4,
            transport_v6: Mutex::new(None),
            missing_streak: Mutex::new(0),
            metrics,
        })
    }

    /// Runs the prober and the round driver until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let prober = tokio::spawn(self.clone().probe_loop(cancel.clone()));
        self.clone().round_loop(cancel).await;
        let _ = prober.await;
        self.transport_v4.close().await;
    }

    // ----- what the HTTP API serves -----

    /// The newest published document, while valid.
    pub fn current(&self, now_ms: u64) -> Option<SignedLiveness> {
        lock(&self.book)
            .current(now_ms / 1000)
            .map(|p| p.signed.clone())
    }

    /// This authority's own signed observation for `round`.
    pub fn observation(&self, round: u64) -> Option<SignedObservation> {
        lock(&self.book).get(round).map(|r| r.observation.clone())
    }

    /// This authority's signature over its own document for `round`.
    pub fn signature(&self, round: u64) -> Option<AuthoritySignature> {
        lock(&self.book)
            .get(round)
            .and_then(|r| r.built.as_ref())
            .and_then(|b| b.sigs.get(&self.id).cloned())
    }

    // ----- probing -----

    async fn probe_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.clone().probe_all() => {}
            }
        }
    }

    /// One probe cycle over every node of the current and next published
    /// topology, at most [`MAX_PROBES_IN_FLIGHT`] at once.
    async fn probe_all(self: Arc<Self>) {
        let targets = self.targets(now_ms());
        let ids: HashSet<NodeId> = targets.keys().copied().collect();
        let gone = lock(&self.table).retain(&ids);
        for id in &gone {
            let label = id.to_string();
            let _ = self.metrics.probe_down.remove_label_values(&[&label]);
            let _ = self.metrics.published_down.remove_label_values(&[&label]);
        }
        *lock(&self.listed) = targets.clone();
        self.refresh_published_gauges();

        let permits = Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT));
        let mut set = JoinSet::new();
        for (id, addr) in targets {
            let Some(transport) = self.transport_for(addr) else {
                self.record(id, addr, ProbeResult::Failed("no IPv6 endpoint".into()));
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let timeout = self.cfg.probe_timeout;
            set.spawn(async move {
                let _permit = permit;
                (id, addr, probe(&transport, id, addr, timeout).await)
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok((id, addr, result)) = joined {
                self.record(id, addr, result);
            }
        }
    }

    fn record(&self, id: NodeId, addr: SocketAddr, result: ProbeResult) {
        self.metrics
            .probes
            .with_label_values(&[result.label()])
            .inc();
        let (transition, down) = {
            let mut t = lock(&self.table);
            let tr = t.record(id, result.is_ok(), now_ms());
            (tr, t.is_down(&id))
        };
        self.metrics
            .probe_down
            .with_label_values(&[id.to_string().as_str()])
            .set(i64::from(down));
        match (transition, &result) {
            (Some(Transition::Down), ProbeResult::Failed(e)) => tracing::info!(
                node = %id, address = %addr, error = %e,
                "probe: node observed down (own observation)"
            ),
            (Some(Transition::Down), _) => tracing::info!(
                node = %id, address = %addr, result = result.label(),
                "probe: node observed down (own observation)"
            ),
            (Some(Transition::Up), _) => tracing::info!(
                node = %id, address = %addr,
                "probe: node observed up again (own observation)"
            ),
            (None, _) => {}
        }
    }

    /// The endpoint to dial `addr` from: IPv4 always; IPv6 bound on first
    /// need (a host without IPv6 then fails those probes, logged once).
    fn transport_for(&self, addr: SocketAddr) -> Option<Transport> {
        if addr.is_ipv4() {
            return Some(self.transport_v4.clone());
        }
        let mut v6 = lock(&self.transport_v6);
        if v6.is_none() {
            let bound = "[::]:0".parse().map_err(|e| format!("{e}")).and_then(|a| {
                Transport::dial_only(a, self.identity.clone(), Arc::new(|_| {}))
                    .map_err(|e| e.to_string())
            });
            match bound {
                Ok(t) => *v6 = Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bind an IPv6 probe endpoint");
                    return None;
                }
            }
        }
        v6.clone()
    }

    /// `id → address` of every node in the current and the next published
    /// topology (the current epoch's address wins for a node in both).
    fn targets(&self, now_ms: u64) -> BTreeMap<NodeId, SocketAddr> {
        let cur = self.authority.schedule().epoch_at(now_ms / 1000);
        let mut out = BTreeMap::new();
        let mut cache = lock(&self.targets);
        let wanted = [cur.saturating_add(1), cur];
        cache.retain(|(e, _, _)| wanted.contains(e));
        for e in wanted {
            if e == 0 {
                continue;
            }
            let Some(bytes) = self.authority.published_bytes(e) else {
                continue;
            };
            let cached = cache
                .iter()
                .find(|(ce, cb, _)| *ce == e && Arc::ptr_eq(cb, &bytes))
                .map(|(_, _, nodes)| nodes.clone());
            let nodes = match cached {
                Some(n) => n,
                None => {
                    let Ok(doc) = serde_json::from_slice::<EpochDocument>(&bytes) else {
                        tracing::error!(epoch = e, "own published document does not parse");
                        continue;
                    };
                    let nodes: Arc<Vec<(NodeId, SocketAddr)>> = Arc::new(
                        doc.topology
                            .nodes
                            .iter()
                            .map(|n| (n.id, n.address))
                            .collect(),
                    );
                    cache.retain(|(ce, _, _)| *ce != e);
                    cache.push((e, bytes.clone(), nodes.clone()));
                    nodes
                }
            };
            out.extend(nodes.iter().copied());
        }
        out
    }

    // ----- rounds -----

    async fn round_loop(self: Arc<Self>, cancel: CancellationToken) {
        let tick = Duration::from_millis((self.interval_s * 1000 / 10).clamp(100, 1000));
        loop {
            self.clone().round_tick(now_ms()).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn round_tick(self: Arc<Self>, now: u64) {
        let r = round_at(now, self.interval_s);
        self.freeze(r);
        let start = round_start_ms(r, self.interval_s);
        let len = self.interval_s * 1000;
        let (attempted, built, published, mirrored) = match lock(&self.book).get(r) {
            Some(x) => (
                x.build_attempted,
                x.built.is_some(),
                x.published,
                x.mirror_attempted,
            ),
            None => return,
        };
        if now >= start + len / 5 && !attempted {
            self.clone().build(r).await;
        }
        if now >= start + 2 * len / 5 && built && !published {
            self.clone().collect(r).await;
        }
        let published = lock(&self.book).get(r).is_some_and(|x| x.published);
        if now >= start + 3 * len / 5 && !published && !mirrored {
            self.clone().mirror(r).await;
        }
    }

    /// Freezes and signs our observation for round `r` (once), and settles
    /// round `r - 1`: if it never reached k it is counted as missed.
    fn freeze(&self, r: u64) {
        if lock(&self.book).get(r).is_some() {
            return;
        }
        let own = Observation {
            version: LIVENESS_VERSION,
            round: r,
            authority: self.id,
            down: lock(&self.table).down(),
        };
        let observation = match own.sign(&self.identity) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "serialising our observation");
                return;
            }
        };
        let prev_missed = {
            let mut book = lock(&self.book);
            let prev = r
                .checked_sub(1)
                .and_then(|p| book.get(p))
                .map(|p| !p.published);
            book.insert(
                r,
                Round {
                    observation,
                    own,
                    built: None,
                    build_attempted: false,
                    mirror_attempted: false,
                    published: false,
                },
            );
            prev
        };
        let mut streak = lock(&self.missing_streak);
        match prev_missed {
            Some(true) => {
                self.metrics.missed.inc();
                *streak += 1;
                if *streak == 1 {
                    tracing::warn!(
                        round = r - 1,
                        "liveness round ended without k signatures; serving the previous list until it expires"
                    );
                }
            }
            Some(false) => {
                if *streak > 0 {
                    tracing::info!(missed = *streak, "liveness rounds reach k again");
                }
                *streak = 0;
            }
            None => {}
        }
    }

    /// Fetches the peers' observations for `r` (one attempt: a late
    /// observation must not make us sign a second document for the round),
    /// combines them with ours, signs the document.
    async fn build(self: Arc<Self>, r: u64) {
        let own = {
            let mut book = lock(&self.book);
            let Some(round) = book.get_mut(r) else { return };
            round.build_attempted = true;
            round.own.clone()
        };
        let peers = self.authority.config().peers.clone();
        let path = api::path_liveness_observation(r);
        let mut observations = vec![own];
        for (peer, result) in self
            .ask(&peers, &path, MAX_PEER_BODY, self.peer_timeout())
            .await
        {
            let verified = match result {
                Ok((200, body)) => serde_json::from_slice::<SignedObservation>(&body)
                    .map_err(|e| ("malformed", e.to_string()))
                    .and_then(|s| {
                        s.verify(&peer.key, r)
                            .map_err(|e| (e.reason(), e.to_string()))
                    }),
                Ok((404, _)) => Err(("missing", "no observation for this round".into())),
                Ok((status, _)) => Err(("http", format!("HTTP {status}"))),
                Err(e) => Err(("unreachable", e)),
            };
            match verified {
                Ok(o) => observations.push(o),
                Err((reason, error)) => {
                    self.peer_refused("observation", reason);
                    tracing::debug!(round = r, peer = %peer.key, reason, error, "peer observation not used");
                }
            }
        }
        let k = self.authority.trust().threshold();
        let issued_at = r.saturating_mul(self.interval_s);
        let epoch = self.authority.schedule().epoch_at(issued_at);
        let document = build_document(
            r,
            self.interval_s,
            self.valid_for_s,
            epoch,
            &observations,
            k,
        );
        let bytes = match document.canonical_bytes() {
            Ok(b) if b.len() <= MAX_LIVENESS_BYTES => b,
            Ok(b) => {
                tracing::error!(round = r, len = b.len(), "liveness document too large");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "serialising liveness document");
                return;
            }
        };
        let sig = SignedLiveness::sign(&bytes, &self.identity);
        tracing::debug!(
            round = r,
            observations = observations.len(),
            down = document.down.len(),
            "liveness document built and signed"
        );
        {
            let mut book = lock(&self.book);
            let Some(round) = book.get_mut(r) else { return };
            round.built = Some(Built {
                document,
                bytes: Arc::new(bytes),
                sigs: BTreeMap::from([(self.id, sig)]),
            });
        }
        self.try_publish(r);
    }

    /// Fetches the missing peers' signatures for round `r` and keeps those
    /// that verify over our bytes; publishes at k.
    async fn collect(self: Arc<Self>, r: u64) {
        let (bytes, have) = {
            let book = lock(&self.book);
            let Some(b) = book.get(r).and_then(|x| x.built.as_ref()) else {
                return;
            };
            (
                b.bytes.clone(),
                b.sigs.keys().copied().collect::<HashSet<_>>(),
            )
        };
        let missing = self.authority.peers_missing(&have);
        if missing.is_empty() {
            return;
        }
        let path = api::path_liveness_signature(r);
        for (peer, result) in self.ask(&missing, &path, 4096, self.peer_timeout()).await {
            let sig = match result {
                Ok((200, body)) => match serde_json::from_slice::<AuthoritySignature>(&body) {
                    Ok(s) => s,
                    Err(_) => {
                        self.peer_refused("signature", "malformed");
                        continue;
                    }
                },
                // Not built yet: normal early in the window; retried.
                Ok((404, _)) => continue,
                Ok(_) => {
                    self.peer_refused("signature", "http");
                    continue;
                }
                Err(_) => {
                    self.peer_refused("signature", "unreachable");
                    continue;
                }
            };
            if sig.authority != peer.key || !sig.verify_with(LIVENESS_CONTEXT, &bytes) {
                // The peer combined different observations (one was late or
                // unreachable for one of us): its document differs.
                self.peer_refused("signature", "mismatch");
                tracing::debug!(round = r, peer = %peer.key, "peer's liveness signature is over different bytes");
                continue;
            }
            let mut book = lock(&self.book);
            if let Some(b) = book.get_mut(r).and_then(|x| x.built.as_mut())
                && Arc::ptr_eq(&b.bytes, &bytes)
            {
                b.sigs.insert(peer.key, sig);
            }
        }
        self.try_publish(r);
    }

    /// Publishes our document for `r` once it holds k signatures.
    fn try_publish(&self, r: u64) {
        let k = self.authority.trust().threshold();
        let (signed, document) = {
            let book = lock(&self.book);
            let Some(round) = book.get(r) else { return };
            let Some(b) = round.built.as_ref() else {
                return;
            };
            if round.published || b.sigs.len() < k {
                return;
            }
            (b.signed(), b.document.clone())
        };
        // Our own verifier must accept what we serve (catches a config that
        // makes documents expire before clients could use them).
        if let Err(e) = self
            .authority
            .trust()
            .verify_liveness(&signed, now_ms() / 1000)
        {
            tracing::error!(round = r, error = %e, "our k-signed liveness document does not verify; not publishing");
            return;
        }
        self.publish(
            r,
            Published {
                round: r,
                valid_until: document.valid_until,
                down: document.down.iter().copied().collect(),
                signed,
            },
            "signed",
        );
    }

    /// Serves a peer's k-signed document for `r` when ours did not reach k.
    async fn mirror(self: Arc<Self>, r: u64) {
        if let Some(round) = lock(&self.book).get_mut(r) {
            round.mirror_attempted = true;
        }
        let peers = self.authority.config().peers.clone();
        let answers = self
            .ask(
                &peers,
                api::PATH_LIVENESS_CURRENT,
                MAX_PEER_BODY,
                self.peer_timeout(),
            )
            .await;
        for (peer, result) in answers {
            let Ok((200, body)) = result else { continue };
            let verified = serde_json::from_slice::<SignedLiveness>(&body)
                .map_err(|e| loopmix_core::pki::VerifyError::Malformed(e.to_string()))
                .and_then(|s| self.authority.trust().verify_liveness(&s, now_ms() / 1000));
            match verified {
                Ok(v) if v.round() == r => {
                    tracing::debug!(round = r, from = %peer.key, "serving the peers' k-signed liveness list");
                    self.publish(
                        r,
                        Published {
                            round: r,
                            valid_until: v.valid_until(),
                            down: v.down().clone(),
                            signed: v.signed().clone(),
                        },
                        "mirrored",
                    );
                    return;
                }
                Ok(_) => {}
                Err(e) => self.peer_refused("document", e.reason()),
            }
        }
    }

    fn publish(&self, r: u64, p: Published, how: &'static str) {
        let down = p.down.clone();
        let previous: Option<BTreeSet<NodeId>> = {
            let mut book = lock(&self.book);
            let previous = book.published().map(|x| x.down.clone());
            if !book.publish(p) {
                return;
            }
            if let Some(round) = book.get_mut(r) {
                round.published = true;
            }
            previous
        };
        self.metrics.round.set(i64::try_from(r).unwrap_or(i64::MAX));
        let previous = previous.unwrap_or_default();
        let listed = lock(&self.listed).clone();
        let addr = |id: &NodeId| {
            listed
                .get(id)
                .map_or_else(|| "unlisted".to_string(), |a| a.to_string())
        };
        for id in down.difference(&previous) {
            self.metrics.transitions.with_label_values(&["down"]).inc();
            tracing::info!(node = %id, address = %addr(id), round = r, "liveness: node listed down");
        }
        for id in previous.difference(&down) {
            self.metrics.transitions.with_label_values(&["up"]).inc();
            tracing::info!(node = %id, address = %addr(id), round = r, "liveness: node listed up again");
        }
        tracing::debug!(round = r, down = down.len(), how, "liveness list published");
        self.refresh_published_gauges();
    }

    /// `loopmix_liveness_down{node}` for every listed node (only those: the
    /// label set stays bounded by the topology).
    fn refresh_published_gauges(&self) {
        let down = lock(&self.book)
            .published()
            .map(|p| p.down.clone())
            .unwrap_or_default();
        for id in lock(&self.listed).keys() {
            self.metrics
                .published_down
                .with_label_values(&[id.to_string().as_str()])
                .set(i64::from(down.contains(id)));
        }
    }

    fn peer_refused(&self, what: &str, reason: &str) {
        self.metrics
            .peer_refused
            .with_label_values(&[what, reason])
            .inc();
    }

    /// Peer requests must fit in a fifth of a round.
    fn peer_timeout(&self) -> Duration {
        let fifth = Duration::from_millis(self.interval_s * 1000 / 5);
        fifth
            .max(Duration::from_millis(200))
            .min(self.authority.config().limits.peer_timeout)
    }

    /// GET `path` from `peers` concurrently, each bounded by `timeout`
    /// (shorter than the authority's: a liveness round is seconds long).
    async fn ask(
        &self,
        peers: &[PeerConfig],
        path: &str,
        max: usize,
        timeout: Duration,
    ) -> Vec<(PeerConfig, PeerResult)> {
        ask_peers(self.authority.http(), peers, path, max, Some(timeout)).await
    }
}

/// Counts per node, for tests and status pages: how many nodes this
/// authority probes and how many it observes down.
impl Liveness {
    pub fn probed(&self) -> (usize, usize) {
        let t = lock(&self.table);
        (t.len(), t.down().len())
    }

    /// The node → address map probed in the last cycle.
    pub fn listed(&self) -> HashMap<NodeId, SocketAddr> {
        lock(&self.listed).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The newest published list while valid at `now_ms`: its round, end
    /// of validity (Unix s) and the nodes it lists down.
    pub fn published_down(&self, now_ms: u64) -> Option<(u64, u64, BTreeSet<NodeId>)> {
        lock(&self.book)
            .current(now_ms / 1000)
            .map(|p| (p.round, p.valid_until, p.down.clone()))
    }

    /// This authority's own observation of each of `ids` (the status page;
    /// `None` for a node it does not probe).
    pub fn observed(&self, ids: &[NodeId]) -> Vec<Option<prober::Observed>> {
        let t = lock(&self.table);
        ids.iter().map(|id| t.observed(id)).collect()
    }
}
