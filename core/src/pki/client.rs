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
//! The client speaks plain HTTP (no TLS in the tree, see the workspace
//! `Cargo.toml`): authenticity comes from the authority signatures, and what
//! a network observer learns (that this host fetches the public topology) is
//! the same with TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, MetricError};

use super::api::{self, EpochInfo, ErrorBody, RegisterResponse};
use super::descriptor::SignedDescriptor;
use super::document::{SignedTopology, TrustAnchors, VerifiedTopology, VerifyError};
use super::unix_now;

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
        Ok(Self {
            cfg,
            http,
            current,
            upcoming: Mutex::new(None),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;
    use crate::pki::document::tests::epoch_doc;
    use crate::pki::document::{AuthoritySignature, EpochDocument};
    use crate::pki::{b64_decode, b64_encode};
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;

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
}
