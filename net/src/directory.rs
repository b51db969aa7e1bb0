//! [`DirectoryClient`]: fetch, verify (k-of-n), cache and refresh topology
//! documents; register descriptors with every authority.
//!
//! One client serves a node or a user client for its whole life:
//!
//! ```text
//! let dir = Arc::new(DirectoryClient::new(cfg, &registry)?);
//! dir.fetch_current().await?;                 // first document, or an error
//! tokio::spawn({ let d = dir.clone(); async move { d.run(cancel).await } });
//! let mut rx = dir.subscribe();               // woken on every new epoch
//! ```
//!
//! A document that fails verification is never adopted: the last valid one
//! stays, the refusal is logged with its reason and counted in
//! `loopmix_directory_documents_rejected_total{reason}`.
//!
//! It also follows the authorities' signed liveness list
//! ([`DirectoryClient::follow_liveness`], [`DirectoryClient::liveness`]):
//! a document is adopted only if it verifies (k-of-n under the liveness
//! context) and its round is newer than the one held, so nobody can roll a
//! client back to an older list; refusals are counted in
//! `loopmix_directory_liveness_rejected_total{reason}` and the last valid
//! list stays until it expires.
//!
//! The client speaks plain HTTP (no TLS in the tree, see the workspace
//! `Cargo.toml`): authenticity comes from the authority signatures, and what
//! a network observer learns (that this host fetches the public topology) is
//! the same with TLS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, MetricError};

use crate::clock::unix_now;
use loopmix_core::pki::TrustError;
use loopmix_core::pki::api::{self, EpochInfo, ErrorBody, RegisterResponse};
use loopmix_core::pki::descriptor::SignedDescriptor;
use loopmix_core::pki::document::{SignedTopology, TrustAnchors, VerifiedTopology, VerifyError};
use loopmix_core::pki::liveness::{MAX_LIVENESS_BYTES, SignedLiveness, VerifiedLiveness};
use loopmix_core::pki::pinned::AuthorityEntry;

/// Poll interval of [`DirectoryClient::follow_liveness`] before any
/// liveness document is held (afterwards: the document's `interval_s`).
const DEFAULT_LIVENESS_POLL: Duration = Duration::from_secs(5);

/// Largest non-document answer read (error bodies, epoch info, ...).
const MAX_SMALL_BODY: usize = 64 * 1024;

/// Where the authorities are and whom to trust.
#[derive(Clone, Debug)]
pub struct DirectoryClientConfig {
    /// Authority base URLs, e.g. `http://192.0.2.1:8700`. Any of them may be
    /// down; documents are accepted only if signed by k pinned keys, so a
    /// URL need not belong to a pinned authority (a mirror works too).
    pub urls: Vec<String>,
    /// Pinned authority keys, threshold k, size limit, clock skew.
    pub trust: TrustAnchors,
    /// Timeout of one HTTP request (connect + answer).
    pub request_timeout: Duration,
    /// How far ahead of its start a next-epoch document is accepted.
    pub max_ahead: Duration,
    /// Start fetching the next epoch's document this fraction of an epoch
    /// before it starts (0.25 = during the last quarter).
    pub prefetch_fraction: f64,
}

impl DirectoryClientConfig {
    pub fn new(urls: Vec<String>, trust: TrustAnchors) -> Self {
        Self {
            urls,
            trust,
            request_timeout: Duration::from_secs(10),
            max_ahead: Duration::from_secs(3600),
            prefetch_fraction: 0.25,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("no authority URL configured")]
    NoUrls,
    #[error("no authority served a valid document at {path}: {reasons}")]
    NoValidDocument { path: String, reasons: String },
    #[error("no authority answered {path}: {reasons}")]
    Unreachable { path: String, reasons: String },
    #[error("HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Metrics(#[from] MetricError),
}

/// Why one authority did not accept a registration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("refused with HTTP {status} ({code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// What [`DirectoryClient::fetch_liveness`] did with a verified document.
#[derive(Debug, Clone)]
pub enum LivenessOutcome {
    /// Newer than the one held: now in force (subscribers are notified).
    Adopted(Arc<VerifiedLiveness>),
    /// The round already held: nothing changed. Not an error (authorities
    /// publish every few seconds and clients poll at about that rate).
    Unchanged(Arc<VerifiedLiveness>),
}

impl LivenessOutcome {
    pub fn document(&self) -> &Arc<VerifiedLiveness> {
        match self {
            Self::Adopted(v) | Self::Unchanged(v) => v,
        }
    }
}

/// One authority's answer to [`DirectoryClient::register`].
#[derive(Debug, Clone)]
pub struct RegistrationOutcome {
    pub url: String,
    pub result: Result<RegisterResponse, RegisterError>,
}

struct ClientMetrics {
    rejected: IntCounterVec,
    fetch_failures: IntCounterVec,
    adopted: IntCounter,
    epoch: IntGauge,
    registrations: IntCounterVec,
    liveness_rejected: IntCounterVec,
    liveness_round: IntGauge,
    liveness_fetch_failures: IntCounter,
}

impl ClientMetrics {
    fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            rejected: metrics::counter_vec(
                r,
                "loopmix_directory_documents_rejected_total",
                "Topology documents refused by verification, by reason; the last valid one stayed in force",
                &["reason"],
            )?,
            fetch_failures: metrics::counter_vec(
                r,
                "loopmix_directory_fetch_failures_total",
                "Directory requests that failed (unreachable, timeout, HTTP error), by authority URL",
                &["authority"],
            )?,
            adopted: metrics::counter(
                r,
                "loopmix_directory_documents_adopted_total",
                "Topology documents verified and adopted as current",
            )?,
            epoch: metrics::gauge(
                r,
                "loopmix_directory_epoch",
                "Epoch of the topology document currently in force",
            )?,
            registrations: metrics::counter_vec(
                r,
                "loopmix_directory_registrations_total",
                "Descriptor registrations per authority answer: accepted, refused, unreachable",
                &["result"],
            )?,
            liveness_rejected: metrics::counter_vec(
                r,
                "loopmix_directory_liveness_rejected_total",
                "Liveness documents refused (verification failure reasons, or stale = an older round than the one held); the last valid one stayed in force",
                &["reason"],
            )?,
            liveness_round: metrics::gauge(
                r,
                "loopmix_directory_liveness_round",
                "Round of the liveness document currently held",
            )?,
            liveness_fetch_failures: metrics::counter(
                r,
                "loopmix_directory_liveness_fetch_failures_total",
                "Liveness requests to an authority that failed (unreachable, timeout, HTTP error other than 404)",
            )?,
        })
    }
}

/// Fetches, verifies, caches and refreshes the topology; registers
/// descriptors. Cheap to share behind an `Arc`.
pub struct DirectoryClient {
    cfg: DirectoryClientConfig,
    http: reqwest::Client,
    current: watch::Sender<Option<Arc<VerifiedTopology>>>,
    upcoming: Mutex<Option<Arc<VerifiedTopology>>>,
    liveness: watch::Sender<Option<Arc<VerifiedLiveness>>>,
    /// Newest liveness round ever adopted, plus one (0: none yet). Kept
    /// apart from the held document so an expired (dropped) list still
    /// blocks a rollback to an older round.
    liveness_high: AtomicU64,
    metrics: ClientMetrics,
}

impl DirectoryClient {
    /// Registers the client's metrics in `registry` (pass a fresh
    /// `Registry::new()` if nobody scrapes them).
    pub fn new(cfg: DirectoryClientConfig, registry: &Registry) -> Result<Self, DirectoryError> {
        if cfg.urls.is_empty() {
            return Err(DirectoryError::NoUrls);
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout)
            .no_proxy()
            .user_agent(concat!("loopmix/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DirectoryError::Http(e.to_string()))?;
        let (current, _) = watch::channel(None);
        let (liveness, _) = watch::channel(None);
        Ok(Self {
            cfg,
            http,
            current,
            upcoming: Mutex::new(None),
            liveness,
            liveness_high: AtomicU64::new(0),
            metrics: ClientMetrics::new(registry)?,
        })
    }

    pub fn config(&self) -> &DirectoryClientConfig {
        &self.cfg
    }

    /// The document in force: the newest verified one whose epoch has started.
    pub fn current(&self) -> Option<Arc<VerifiedTopology>> {
        self.current.borrow().clone()
    }

    /// Like [`current`](Self::current), but `None` once the document's
    /// validity window (plus the clock-skew allowance) has passed.
    pub fn current_valid(&self) -> Option<Arc<VerifiedTopology>> {
        let skew = self.cfg.trust.clock_skew_s();
        self.current()
            .filter(|c| unix_now() < c.valid_until().saturating_add(skew))
    }

    /// The next epoch's document, verified but not yet in force.
    pub fn upcoming(&self) -> Option<Arc<VerifiedTopology>> {
        self.upcoming.lock().ok().and_then(|u| u.clone())
    }

    /// Notified whenever a newer document comes into force.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<VerifiedTopology>>> {
        self.current.subscribe()
    }

    /// Fetches `GET /v1/topology/current` from the authorities in turn until
    /// one answers with a document that verifies; adopts it if it is newer
    /// than the one in force. Returns the verified document.
    pub async fn fetch_current(&self) -> Result<Arc<VerifiedTopology>, DirectoryError> {
        let trust = self.cfg.trust.clone();
        let v = self
            .fetch_verified(api::PATH_TOPOLOGY_CURRENT, move |s| {
                trust.verify(s, unix_now())
            })
            .await?;
        self.adopt(v.clone());
        Ok(v)
    }

    /// Fetches `GET /v1/topology/{epoch}`; a document up to `max_ahead` in
    /// the future is accepted (and kept as [`upcoming`](Self::upcoming)).
    pub async fn fetch_epoch(&self, epoch: u64) -> Result<Arc<VerifiedTopology>, DirectoryError> {
        let trust = self.cfg.trust.clone();
        let ahead = self.cfg.max_ahead.as_secs();
        let v = self
            .fetch_verified(&api::path_topology(epoch), move |s| {
                let v = trust.verify_upcoming(s, unix_now(), ahead)?;
                if v.epoch() != epoch {
                    return Err(VerifyError::WrongEpoch {
                        expected: epoch,
                        got: v.epoch(),
                    });
                }
                Ok(v)
            })
            .await?;
        self.adopt(v.clone());
        Ok(v)
    }

    /// Verifies `signed` against the pinned keys at `now` and adopts it like
    /// a fetched document (for documents obtained another way, e.g. from a
    /// peer or a file). Refusals are logged and counted like fetched ones.
    pub fn offer(&self, signed: &SignedTopology) -> Result<Arc<VerifiedTopology>, VerifyError> {
        let ahead = self.cfg.max_ahead.as_secs();
        match self.cfg.trust.verify_upcoming(signed, unix_now(), ahead) {
            Ok(v) => {
                let v = Arc::new(v);
                self.adopt(v.clone());
                Ok(v)
            }
            Err(e) => {
                self.refused("offered", &e);
                Err(e)
            }
        }
    }

    /// One refresh step: promote the upcoming document if its epoch started,
    /// fetch the next epoch's document near the end of the current one, and
    /// fall back to `/current` when there is nothing valid or the epoch
    /// passed without a next document.
    pub async fn refresh(&self) {
        self.promote();
        let now = unix_now();
        let Some(cur) = self.current() else {
            if let Err(e) = self.fetch_current().await {
                tracing::debug!(error = %e, "no topology yet");
            }
            return;
        };
        let next_epoch = cur.epoch() + 1;
        let next_start = cur.next_epoch_start();
        let lead =
            (cur.epoch_length_s() as f64 * self.cfg.prefetch_fraction.clamp(0.0, 1.0)) as u64;
        let have_next = self.upcoming().is_some_and(|u| u.epoch() >= next_epoch);
        if now >= next_start {
            // The next epoch started and we have nothing newer: maybe it was
            // never published, maybe epochs were skipped. Ask for the latest.
            if let Err(e) = self.fetch_current().await {
                tracing::debug!(error = %e, "refreshing the current topology");
            }
            if self.current().is_some_and(|c| c.epoch() < next_epoch)
                && let Err(e) = self.fetch_epoch(next_epoch).await
            {
                tracing::debug!(epoch = next_epoch, error = %e, "next topology not available");
            }
        } else if now.saturating_add(lead) >= next_start
            && !have_next
            && let Err(e) = self.fetch_epoch(next_epoch).await
        {
            tracing::debug!(epoch = next_epoch, error = %e, "next topology not published yet");
        }
        self.promote();
    }

    /// Refreshes until `cancel`, polling more often for short epochs
    /// (every epoch/40, between 250 ms and 30 s).
    pub async fn run(&self, cancel: CancellationToken) {
        loop {
            self.refresh().await;
            let poll = match self.current() {
                Some(c) => Duration::from_millis(
                    (c.epoch_length_s().saturating_mul(1000) / 40).clamp(250, 30_000),
                ),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// The liveness document in force: the newest verified round, while it
    /// is valid (`None` once `valid_until` plus the clock-skew allowance has
    /// passed, or before the first one).
    pub fn liveness(&self) -> Option<Arc<VerifiedLiveness>> {
        let skew = self.cfg.trust.clock_skew_s();
        self.liveness
            .borrow()
            .clone()
            .filter(|v| v.is_valid_at(unix_now(), skew))
    }

    /// Notified when a newer liveness document is adopted, and with `None`
    /// when the held one expires ([`follow_liveness`](Self::follow_liveness)
    /// checks expiry on every poll, so the `None` comes at most one poll
    /// interval late: callers that need the exact instant use
    /// [`liveness`](Self::liveness), which checks validity itself).
    pub fn subscribe_liveness(&self) -> watch::Receiver<Option<Arc<VerifiedLiveness>>> {
        self.liveness.subscribe()
    }

    /// Fetches `GET /v1/liveness/current` from the authorities in turn until
    /// one answers with a document that verifies and is not older than the
    /// one held. A newer round is adopted; the same round is
    /// [`LivenessOutcome::Unchanged`]; an older round is refused as `stale`
    /// (counted) and the next authority is asked. A refused document never
    /// replaces the held one.
    pub async fn fetch_liveness(&self) -> Result<LivenessOutcome, DirectoryError> {
        let path = api::PATH_LIVENESS_CURRENT;
        let max_body = MAX_LIVENESS_BYTES.div_ceil(3) * 4 + 64 * 1024;
        let mut reasons = Vec::new();
        let mut any_answer = false;
        for url in self.rotated_urls() {
            let body = match self.get(&url, path, max_body).await {
                Ok((200, body)) => body,
                Ok((status, body)) => {
                    any_answer = true;
                    // 404: the authority has published nothing valid yet
                    // (just started, or liveness switched off): not a fault.
                    if status != 404 {
                        self.metrics.liveness_fetch_failures.inc();
                    }
                    reasons.push(format!("{url}: {}", describe(status, &body)));
                    continue;
                }
                Err(e) => {
                    if e.contains("too large") {
                        any_answer = true;
                        self.liveness_refused(
                            &url,
                            "oversized",
                            &format!("answer over {max_body} bytes"),
                        );
                    }
                    self.metrics.liveness_fetch_failures.inc();
                    reasons.push(format!("{url}: {e}"));
                    continue;
                }
            };
            any_answer = true;
            let verified = serde_json::from_slice::<SignedLiveness>(&body)
                .map_err(|e| VerifyError::Malformed(e.to_string()))
                .and_then(|s| self.cfg.trust.verify_liveness(&s, unix_now()));
            match verified {
                Ok(v) => match self.adopt_liveness(Arc::new(v)) {
                    Ok(outcome) => return Ok(outcome),
                    Err(reason) => {
                        self.liveness_refused(&url, "stale", &reason);
                        reasons.push(format!("{url}: {reason}"));
                    }
                },
                Err(e) => {
                    self.liveness_refused(&url, e.reason(), &e.to_string());
                    reasons.push(format!("{url}: {e}"));
                }
            }
        }
        let reasons = reasons.join("; ");
        let path = path.to_string();
        Err(if any_answer {
            DirectoryError::NoValidDocument { path, reasons }
        } else {
            DirectoryError::Unreachable { path, reasons }
        })
    }

    /// Verifies `signed` and adopts it like a fetched liveness document (for
    /// documents obtained another way). Refusals are counted like fetched ones.
    pub fn offer_liveness(&self, signed: &SignedLiveness) -> Result<LivenessOutcome, VerifyError> {
        let v = match self.cfg.trust.verify_liveness(signed, unix_now()) {
            Ok(v) => v,
            Err(e) => {
                self.liveness_refused("offered", e.reason(), &e.to_string());
                return Err(e);
            }
        };
        self.adopt_liveness(Arc::new(v)).map_err(|reason| {
            self.liveness_refused("offered", "stale", &reason);
            VerifyError::Invalid(reason)
        })
    }

    /// Fetches the liveness list until `cancel`: every `interval_s` of the
    /// held document (5 s before the first), with up to ±10 % jitter so
    /// clients do not poll in lockstep. Failures keep the last valid list;
    /// a streak of failures is logged once when it starts and once when it
    /// ends. Drops the held list (subscribers see `None`) once it expires.
    pub async fn follow_liveness(self: Arc<Self>, cancel: CancellationToken) {
        use rand::RngExt;
        let mut streak: u64 = 0;
        loop {
            match self.fetch_liveness().await {
                Ok(_) => {
                    if streak > 0 {
                        tracing::info!(failed_polls = streak, "liveness list reachable again");
                    }
                    streak = 0;
                }
                Err(e) => {
                    streak = streak.saturating_add(1);
                    if streak == 1 {
                        tracing::warn!(
                            error = %e,
                            "no valid liveness list from any authority; keeping the last valid one until it expires"
                        );
                    } else {
                        tracing::debug!(error = %e, streak, "liveness fetch failed");
                    }
                }
            }
            self.expire_liveness();
            let base = self
                .liveness
                .borrow()
                .as_ref()
                .map(|v| Duration::from_secs(v.interval_s().clamp(1, 300)))
                .unwrap_or(DEFAULT_LIVENESS_POLL);
            let base_ms = u64::try_from(base.as_millis()).unwrap_or(5000);
            let jitter = rand::rng().random_range(0..=base_ms / 5);
            let wait = Duration::from_millis(base_ms - base_ms / 10 + jitter);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Replaces an expired held liveness document with `None` (notifying
    /// subscribers once).
    fn expire_liveness(&self) {
        let skew = self.cfg.trust.clock_skew_s();
        let now = unix_now();
        self.liveness.send_if_modified(|held| {
            if held.as_ref().is_some_and(|v| !v.is_valid_at(now, skew)) {
                tracing::warn!(
                    "liveness list expired; no node is excluded until a fresh one arrives"
                );
                *held = None;
                true
            } else {
                false
            }
        });
    }

    /// Adopts `v` if its round is newer than any adopted before; `Err` with
    /// a description if it is older (a rollback).
    fn adopt_liveness(&self, v: Arc<VerifiedLiveness>) -> Result<LivenessOutcome, String> {
        let mut outcome = Err(String::new());
        self.liveness.send_if_modified(|held| {
            let high = self.liveness_high.load(Ordering::Acquire);
            let round_plus_one = v.round().saturating_add(1);
            if round_plus_one < high {
                outcome = Err(format!(
                    "stale liveness round {} (holding round {})",
                    v.round(),
                    high - 1
                ));
                return false;
            }
            if round_plus_one == high {
                // Same round: keep the first one adopted (with k > n/2 it is
                // the only k-signed one anyway).
                outcome = Ok(LivenessOutcome::Unchanged(
                    held.clone().unwrap_or_else(|| v.clone()),
                ));
                return false;
            }
            self.liveness_high.store(round_plus_one, Ordering::Release);
            self.metrics
                .liveness_round
                .set(i64::try_from(v.round()).unwrap_or(i64::MAX));
            tracing::debug!(
                round = v.round(),
                down = v.down().len(),
                signers = v.signers().len(),
                "liveness list adopted"
            );
            *held = Some(v.clone());
            outcome = Ok(LivenessOutcome::Adopted(v.clone()));
            true
        });
        outcome
    }

    fn liveness_refused(&self, source: &str, reason: &'static str, error: &str) {
        self.metrics
            .liveness_rejected
            .with_label_values(&[reason])
            .inc();
        if reason == "stale" {
            // Normal now and then: authorities publish a round a few hundred
            // ms apart, so one may still serve the previous round. Counted,
            // not shouted about; the next authority is asked.
            tracing::debug!(authority = %source, error, "older liveness round refused");
            return;
        }
        tracing::warn!(
            authority = %source,
            reason,
            error,
            "refusing liveness document; the last valid one stays in force"
        );
    }

    /// POSTs the descriptor to every authority concurrently; one outcome per
    /// URL, in configuration order. Success at k authorities is enough for
    /// the node to be listed (authorities merge each other's registrations).
    pub async fn register(&self, descriptor: &SignedDescriptor) -> Vec<RegistrationOutcome> {
        self.register_at(descriptor, &self.cfg.urls).await
    }

    /// [`register`](Self::register) at `urls` only (e.g. the authorities
    /// that have not accepted it yet: posting again to those that did
    /// only spends their rate limit).
    pub async fn register_at(
        &self,
        descriptor: &SignedDescriptor,
        urls: &[String],
    ) -> Vec<RegistrationOutcome> {
        let body = match serde_json::to_vec(descriptor) {
            Ok(b) => b,
            Err(e) => {
                return urls
                    .iter()
                    .map(|u| RegistrationOutcome {
                        url: u.clone(),
                        result: Err(RegisterError::Unreachable(e.to_string())),
                    })
                    .collect();
            }
        };
        let mut set = JoinSet::new();
        for (i, url) in urls.iter().enumerate() {
            let http = self.http.clone();
            let full = join_url(url, api::PATH_DESCRIPTORS);
            let body = body.clone();
            set.spawn(async move { (i, post_descriptor(&http, &full, body).await) });
        }
        let mut results: Vec<Option<Result<RegisterResponse, RegisterError>>> =
            vec![None; urls.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined
                && let Some(slot) = results.get_mut(i)
            {
                *slot = Some(r);
            }
        }
        let mut out = Vec::with_capacity(results.len());
        for (url, r) in urls.iter().zip(results) {
            let result = r.unwrap_or_else(|| Err(RegisterError::Unreachable("task failed".into())));
            let label = match &result {
                Ok(_) => "accepted",
                Err(RegisterError::Refused { .. }) => "refused",
                Err(RegisterError::Unreachable(_)) => "unreachable",
            };
            self.metrics.registrations.with_label_values(&[label]).inc();
            if let Err(e) = &result {
                tracing::warn!(authority = %url, error = %e, "registration not accepted");
            }
            out.push(RegistrationOutcome {
                url: url.clone(),
                result,
            });
        }
        out
    }

    /// The first answering authority's [`EpochInfo`] (unsigned: use it for
    /// timing registrations, never for trust decisions).
    pub async fn epoch_info(&self) -> Result<EpochInfo, DirectoryError> {
        let mut reasons = Vec::new();
        for url in self.rotated_urls() {
            match self.get(&url, api::PATH_EPOCH, MAX_SMALL_BODY).await {
                Ok((200, body)) => match serde_json::from_slice(&body) {
                    Ok(info) => return Ok(info),
                    Err(e) => reasons.push(format!("{url}: {e}")),
                },
                Ok((status, body)) => reasons.push(format!("{url}: {}", describe(status, &body))),
                Err(e) => reasons.push(format!("{url}: {e}")),
            }
        }
        Err(DirectoryError::Unreachable {
            path: api::PATH_EPOCH.into(),
            reasons: reasons.join("; "),
        })
    }

    /// GET `path` from each authority in turn; the first document that
    /// `verify` accepts wins.
    async fn fetch_verified<F>(
        &self,
        path: &str,
        verify: F,
    ) -> Result<Arc<VerifiedTopology>, DirectoryError>
    where
        F: Fn(&SignedTopology) -> Result<VerifiedTopology, VerifyError>,
    {
        // Signatures and JSON framing on top of the base64 document.
        let max_body = self.cfg.trust.max_document_bytes().div_ceil(3) * 4 + 64 * 1024;
        let mut reasons = Vec::new();
        let mut any_answer = false;
        for url in self.rotated_urls() {
            let body = match self.get(&url, path, max_body).await {
                Ok((200, body)) => body,
                Ok((status, body)) => {
                    any_answer = true;
                    if status != 404 {
                        self.metrics
                            .fetch_failures
                            .with_label_values(&[url.as_str()])
                            .inc();
                    }
                    reasons.push(format!("{url}: {}", describe(status, &body)));
                    continue;
                }
                Err(e) => {
                    if e.contains("too large") {
                        any_answer = true;
                        self.refused(
                            &url,
                            &VerifyError::Oversized {
                                len: max_body + 1,
                                max: self.cfg.trust.max_document_bytes(),
                            },
                        );
                    }
                    self.metrics
                        .fetch_failures
                        .with_label_values(&[url.as_str()])
                        .inc();
                    reasons.push(format!("{url}: {e}"));
                    continue;
                }
            };
            any_answer = true;
            let result = serde_json::from_slice::<SignedTopology>(&body)
                .map_err(|e| VerifyError::Malformed(e.to_string()))
                .and_then(|s| verify(&s));
            match result {
                Ok(v) => return Ok(Arc::new(v)),
                Err(e) => {
                    self.refused(&url, &e);
                    reasons.push(format!("{url}: {e}"));
                }
            }
        }
        let reasons = reasons.join("; ");
        let path = path.to_string();
        Err(if any_answer {
            DirectoryError::NoValidDocument { path, reasons }
        } else {
            DirectoryError::Unreachable { path, reasons }
        })
    }

    fn refused(&self, source: &str, e: &VerifyError) {
        self.metrics.rejected.with_label_values(&[e.reason()]).inc();
        tracing::warn!(
            authority = %source,
            reason = e.reason(),
            error = %e,
            "refusing topology document; the last valid one stays in force"
        );
    }

    /// Adopts a verified document: as current if its epoch has started and
    /// it is newer, as upcoming if it starts later. Older documents are
    /// ignored (no rollback).
    fn adopt(&self, v: Arc<VerifiedTopology>) {
        let now = unix_now();
        let cur_epoch = self.current().map(|c| c.epoch());
        if cur_epoch.is_some_and(|c| v.epoch() <= c) {
            return;
        }
        if v.valid_from() > now {
            if let Ok(mut up) = self.upcoming.lock()
                && up.as_ref().is_none_or(|u| v.epoch() > u.epoch())
            {
                tracing::debug!(
                    epoch = v.epoch(),
                    starts = v.valid_from(),
                    "next topology verified"
                );
                *up = Some(v);
            }
            return;
        }
        tracing::info!(
            epoch = v.epoch(),
            nodes = v.topology().nodes().len(),
            signers = v.signers().len(),
            "topology adopted"
        );
        self.metrics.adopted.inc();
        self.metrics
            .epoch
            .set(i64::try_from(v.epoch()).unwrap_or(i64::MAX));
        if let Ok(mut up) = self.upcoming.lock()
            && up.as_ref().is_some_and(|u| u.epoch() <= v.epoch())
        {
            *up = None;
        }
        self.current.send_replace(Some(v));
    }

    /// Moves the upcoming document in force once its epoch has started.
    fn promote(&self) {
        let due = self.upcoming().filter(|u| u.valid_from() <= unix_now());
        if let Some(u) = due {
            if let Ok(mut up) = self.upcoming.lock() {
                *up = None;
            }
            self.adopt(u);
        }
    }

    /// The URLs starting at a rotating index, to spread load.
    /// All URLs, starting at a random one: spreads load, and no fixed
    /// interleaving of callers can keep one authority (or a bad mirror)
    /// always first or never first.
    fn rotated_urls(&self) -> Vec<String> {
        use rand::RngExt;
        let n = self.cfg.urls.len();
        let start = rand::rng().random_range(0..n.max(1));
        (0..n)
            .filter_map(|i| self.cfg.urls.get((start + i) % n).cloned())
            .collect()
    }

    async fn get(&self, base: &str, path: &str, max: usize) -> Result<(u16, Vec<u8>), String> {
        let resp = self
            .http
            .get(join_url(base, path))
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, max).await?;
        Ok((status, body))
    }
}

async fn post_descriptor(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<RegisterResponse, RegisterError> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| RegisterError::Unreachable(error_chain(&e)))?;
    let status = resp.status().as_u16();
    let body = read_limited(resp, MAX_SMALL_BODY)
        .await
        .map_err(RegisterError::Unreachable)?;
    if (200..300).contains(&status) {
        serde_json::from_slice(&body).map_err(|e| RegisterError::Refused {
            status,
            code: "bad_answer".into(),
            message: e.to_string(),
        })
    } else {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error, b.message),
            Err(_) => (
                "http".into(),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        Err(RegisterError::Refused {
            status,
            code,
            message,
        })
    }
}

/// Reads a response body, refusing more than `max` bytes (an authority
/// must not be able to make us buffer without limit).
pub async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(format!("answer too large (over {max} bytes)"));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if buf.len() + chunk.len() > max {
            return Err(format!("answer too large (over {max} bytes)"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn describe(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => format!("HTTP {status} {}: {}", b.error, b.message),
        Err(_) => format!("HTTP {status}"),
    }
}

/// reqwest's Display hides the cause ("error sending request"); show it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

impl DirectoryClientConfig {
    /// A client config trusting exactly `entries` with threshold `k`.
    pub fn pinned(
        entries: &[AuthorityEntry],
        threshold: usize,
        request_timeout: Duration,
    ) -> Result<Self, TrustError> {
        let trust = TrustAnchors::new(entries.iter().map(|a| a.key), threshold)?;
        let mut cfg = Self::new(entries.iter().map(|a| a.url.clone()).collect(), trust);
        cfg.request_timeout = request_timeout;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use loopmix_core::keys::IdentityKeypair;
    use loopmix_core::pki::document::{AuthoritySignature, EpochDocument};
    use loopmix_core::pki::liveness::LivenessDocument;
    use loopmix_core::pki::{b64_decode, b64_encode};
    use loopmix_core::testing::epoch_doc;

    type Served = Arc<Mutex<Option<SignedTopology>>>;

    async fn serve(doc: Served) -> String {
        async fn current(State(s): State<Served>) -> Result<String, StatusCode> {
            let doc = s.lock().unwrap().clone();
            doc.map(|d| serde_json::to_string(&d).unwrap())
                .ok_or(StatusCode::NOT_FOUND)
        }
        let app = Router::new()
            .route("/v1/topology/current", get(current))
            .route("/v1/topology/{epoch}", get(current))
            .with_state(doc);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    fn sign(doc: &EpochDocument, keys: &[&IdentityKeypair]) -> SignedTopology {
        let bytes = doc.canonical_bytes().unwrap();
        let mut s = SignedTopology::unsigned(&bytes);
        for k in keys {
            s.add_signature(AuthoritySignature::sign(&bytes, k));
        }
        s
    }

    #[tokio::test]
    async fn keeps_last_valid_document_and_counts_refusals() {
        let keys: Vec<_> = (0..3).map(|_| IdentityKeypair::generate()).collect();
        let trust = TrustAnchors::new(keys.iter().map(|k| k.node_id()), 2).unwrap();
        let now = unix_now();
        let mut d1 = epoch_doc(now - 10, now + 100);
        d1.topology.params.epoch = 5;
        let good = sign(&d1, &[&keys[0], &keys[1]]);
        let served: Served = Arc::new(Mutex::new(Some(good.clone())));
        let url = serve(served.clone()).await;
        // A dead authority first: tolerated.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let registry = Registry::new();
        let mut cfg = DirectoryClientConfig::new(vec![dead, url], trust);
        cfg.request_timeout = Duration::from_secs(5);
        let client = DirectoryClient::new(cfg, &registry).unwrap();
        let mut rx = client.subscribe();

        let v = client.fetch_current().await.unwrap();
        assert_eq!(v.epoch(), 5);
        assert_eq!(client.current().unwrap().epoch(), 5);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();

        // Epoch 6, but tampered: one byte changed.
        let mut d2 = d1.clone();
        d2.topology.params.epoch = 6;
        let mut bad = sign(&d2, &[&keys[0], &keys[1], &keys[2]]);
        let mut b = b64_decode(&bad.document).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        bad.document = b64_encode(&b);
        *served.lock().unwrap() = Some(bad);
        assert!(client.fetch_current().await.is_err());
        assert_eq!(client.current().unwrap().epoch(), 5);

        // Epoch 6 with one signature: below k.
        *served.lock().unwrap() = Some(sign(&d2, &[&keys[2]]));
        let e = client.fetch_current().await.unwrap_err().to_string();
        assert!(e.contains("only 1 valid signature"), "{e}");
        assert_eq!(client.current().unwrap().epoch(), 5);
        assert!(!rx.has_changed().unwrap());

        let text = metrics::render(&registry);
        assert!(
            text.contains("loopmix_directory_documents_rejected_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"below_threshold\"} 1"), "{text}");

        // An older (rolled back) but valid document is not adopted.
        let mut d0 = d1.clone();
        d0.topology.params.epoch = 4;
        *served.lock().unwrap() = Some(sign(&d0, &[&keys[0], &keys[2]]));
        client.fetch_current().await.unwrap();
        assert_eq!(client.current().unwrap().epoch(), 5);

        // The genuine epoch 6 is adopted and announced.
        *served.lock().unwrap() = Some(sign(&d2, &[&keys[1], &keys[2]]));
        client.fetch_current().await.unwrap();
        assert_eq!(client.current().unwrap().epoch(), 6);
        assert!(rx.has_changed().unwrap());

        // A future document is held as upcoming until its start.
        let mut d3 = epoch_doc(now + 40, now + 200);
        d3.topology.params.epoch = 7;
        *served.lock().unwrap() = Some(sign(&d3, &[&keys[0], &keys[1]]));
        assert!(
            client.fetch_current().await.is_err(),
            "future-dated for /current"
        );
        let v = client.fetch_epoch(7).await.unwrap();
        assert_eq!(v.epoch(), 7);
        assert_eq!(client.upcoming().unwrap().epoch(), 7);
        assert_eq!(client.current().unwrap().epoch(), 6);
        // Asking for epoch 8 and receiving 7 is refused.
        assert!(client.fetch_epoch(8).await.is_err());
        assert!(metrics::render(&registry).contains("reason=\"wrong_epoch\"} 1"));
    }

    #[tokio::test]
    async fn all_authorities_down_is_an_error() {
        let k = IdentityKeypair::generate();
        let trust = TrustAnchors::new([k.node_id()], 1).unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let client = DirectoryClient::new(
            DirectoryClientConfig::new(vec![dead], trust),
            &Registry::new(),
        )
        .unwrap();
        assert!(matches!(
            client.fetch_current().await,
            Err(DirectoryError::Unreachable { .. })
        ));
        assert!(client.current().is_none());
        assert!(client.epoch_info().await.is_err());
    }

    type ServedLiveness = Arc<Mutex<Option<SignedLiveness>>>;

    async fn serve_liveness(doc: ServedLiveness) -> String {
        async fn current(State(s): State<ServedLiveness>) -> Result<String, StatusCode> {
            let doc = s.lock().unwrap().clone();
            doc.map(|d| serde_json::to_string(&d).unwrap())
                .ok_or(StatusCode::NOT_FOUND)
        }
        let app = Router::new()
            .route("/v1/liveness/current", get(current))
            .with_state(doc);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    fn liveness_doc(
        round: u64,
        now: u64,
        down: Vec<loopmix_core::keys::NodeId>,
    ) -> LivenessDocument {
        LivenessDocument {
            version: loopmix_core::pki::LIVENESS_VERSION,
            round,
            issued_at: now - 1,
            valid_until: now + 30,
            epoch: 1,
            interval_s: 5,
            down,
        }
    }

    fn sign_liveness(doc: &LivenessDocument, keys: &[&IdentityKeypair]) -> SignedLiveness {
        let bytes = doc.canonical_bytes().unwrap();
        let mut s = SignedLiveness::unsigned(&bytes);
        for k in keys {
            s.add_signature(SignedLiveness::sign(&bytes, k));
        }
        s
    }

    #[tokio::test]
    async fn liveness_keeps_the_last_valid_list_and_refuses_rollbacks() {
        let keys: Vec<_> = (0..3).map(|_| IdentityKeypair::generate()).collect();
        let trust = TrustAnchors::new(keys.iter().map(|k| k.node_id()), 2).unwrap();
        let now = unix_now();
        let mut down = vec![
            IdentityKeypair::generate().node_id(),
            IdentityKeypair::generate().node_id(),
        ];
        down.sort();
        let d10 = liveness_doc(10, now, vec![down[0]]);
        let served: ServedLiveness = Arc::new(Mutex::new(None));
        let url = serve_liveness(served.clone()).await;
        let registry = Registry::new();
        let client = Arc::new(
            DirectoryClient::new(DirectoryClientConfig::new(vec![url], trust), &registry).unwrap(),
        );
        let mut rx = client.subscribe_liveness();

        // Nothing published yet: an error, nothing held, not a failure.
        assert!(client.fetch_liveness().await.is_err());
        assert!(client.liveness().is_none());

        *served.lock().unwrap() = Some(sign_liveness(&d10, &[&keys[0], &keys[1]]));
        let out = client.fetch_liveness().await.unwrap();
        assert!(matches!(out, LivenessOutcome::Adopted(_)));
        assert_eq!(client.liveness().unwrap().round(), 10);
        assert!(client.liveness().unwrap().is_down(&down[0]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // The same round again: unchanged, not an error, no notification.
        let out = client.fetch_liveness().await.unwrap();
        assert!(matches!(out, LivenessOutcome::Unchanged(_)));
        assert!(!rx.has_changed().unwrap());

        // Round 11, forged: one byte changed after signing.
        let d11 = liveness_doc(11, now, down.clone());
        let mut forged = sign_liveness(&d11, &[&keys[0], &keys[1], &keys[2]]);
        let mut b = b64_decode(&forged.document).unwrap();
        let i = b.iter().position(|&c| c == b'1').unwrap();
        b[i] = b'2';
        forged.document = b64_encode(&b);
        *served.lock().unwrap() = Some(forged);
        assert!(client.fetch_liveness().await.is_err());
        // Round 11 with one signature: below k.
        *served.lock().unwrap() = Some(sign_liveness(&d11, &[&keys[2]]));
        assert!(client.fetch_liveness().await.is_err());
        // Round 9, genuinely signed: a rollback, refused as stale.
        let d9 = liveness_doc(9, now, vec![]);
        *served.lock().unwrap() = Some(sign_liveness(&d9, &[&keys[0], &keys[2]]));
        let e = client.fetch_liveness().await.unwrap_err().to_string();
        assert!(e.contains("stale"), "{e}");
        // A topology-context signature over the liveness bytes.
        let bytes = d11.canonical_bytes().unwrap();
        let mut cross = SignedLiveness::unsigned(&bytes);
        for k in &keys {
            cross.add_signature(AuthoritySignature::sign(&bytes, k));
        }
        assert!(client.offer_liveness(&cross).is_err());

        // The last valid list stayed, and nobody was told otherwise.
        assert_eq!(client.liveness().unwrap().round(), 10);
        assert!(!rx.has_changed().unwrap());
        let text = metrics::render(&registry);
        for series in [
            "loopmix_directory_liveness_rejected_total{reason=\"bad_signature\"} 2",
            "loopmix_directory_liveness_rejected_total{reason=\"below_threshold\"} 1",
            "loopmix_directory_liveness_rejected_total{reason=\"stale\"} 1",
            "loopmix_directory_liveness_round 10",
            "loopmix_directory_liveness_fetch_failures_total 0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }

        // The genuine round 11 is adopted and announced.
        *served.lock().unwrap() = Some(sign_liveness(&d11, &[&keys[1], &keys[2]]));
        client.fetch_liveness().await.unwrap();
        assert_eq!(client.liveness().unwrap().round(), 11);
        assert_eq!(client.liveness().unwrap().down().len(), 2);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();

        // An expired document: refused; the follower drops the held list
        // once it expires (here: a list that expired while held).
        let mut old = liveness_doc(12, now, vec![]);
        old.issued_at = now - 100;
        old.valid_until = now - 60;
        *served.lock().unwrap() = Some(sign_liveness(&old, &[&keys[0], &keys[1]]));
        assert!(client.fetch_liveness().await.is_err());
        assert!(metrics::render(&registry).contains("reason=\"expired\"} 1"));
        let short = TrustAnchors::new(keys.iter().map(|k| k.node_id()), 2)
            .unwrap()
            .with_clock_skew(0);
        let mut cfg = DirectoryClientConfig::new(vec!["http://127.0.0.1:1".into()], short);
        cfg.request_timeout = Duration::from_secs(2);
        let c2 = Arc::new(DirectoryClient::new(cfg, &Registry::new()).unwrap());
        let mut brief = liveness_doc(20, now, vec![]);
        brief.valid_until = now + 1;
        c2.offer_liveness(&sign_liveness(&brief, &[&keys[0], &keys[1]]))
            .unwrap();
        let mut rx2 = c2.subscribe_liveness();
        rx2.mark_unchanged();
        assert!(c2.liveness().is_some());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(c2.liveness().is_none(), "expired lists are not in force");
        let cancel = CancellationToken::new();
        let follower = tokio::spawn(c2.clone().follow_liveness(cancel.clone()));
        tokio::time::timeout(Duration::from_secs(10), rx2.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(rx2.borrow().is_none());
        cancel.cancel();
        follower.await.unwrap();
    }
}
