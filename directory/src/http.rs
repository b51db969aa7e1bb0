//! The HTTP API (axum). Paths and bodies: `loopmix_core::pki::api` and
//! docs/PROTOCOL-directory.md.
//!
//! Every request has a timeout (408) and a body limit (413); registrations
//! and views of the status page (`/`, [`crate::status`]) are rate limited
//! per client IP and overall (429). Behind a reverse proxy the per-IP
//! limits see the proxy's address: put the limits in the proxy.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use loopmix_core::pki::SignedDescriptor;
use loopmix_core::pki::api::ErrorBody;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::authority::registration::Registered;
use crate::authority::{Authority, DocumentError, RegisterError, now_ms};
use crate::liveness::Liveness;
use crate::status::{self, StatusPage};

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

    /// A failure of this authority, not of the request: the details go to
    /// the log, not to the client.
    fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the authority's log",
        )
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        use loopmix_core::pki::DescriptorError as D;
        let status = match &e {
            RegisterError::Descriptor(D::BadSignature(_) | D::IdentityMismatch { .. }) => {
                StatusCode::FORBIDDEN
            }
            RegisterError::Descriptor(D::Oversized { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            RegisterError::Descriptor(_)
            | RegisterError::EpochNotOpen { .. }
            | RegisterError::PublishedInFuture { .. } => StatusCode::BAD_REQUEST,
            RegisterError::StaleDescriptor { .. }
            | RegisterError::DuplicateAddress { .. }
            | RegisterError::DuplicateSphinxKey { .. } => StatusCode::CONFLICT,
            RegisterError::EpochFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RegisterError::Store(_) | RegisterError::Encode(_) => return Self::internal(&e),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<DocumentError> for ApiError {
    fn from(e: DocumentError) -> Self {
        Self::new(StatusCode::NOT_FOUND, e.code(), e.to_string())
    }
}

#[derive(Clone)]
pub struct AppState {
    authority: Arc<Authority>,
    liveness: Option<Arc<Liveness>>,
    per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    global: Arc<DefaultDirectRateLimiter>,
    status: Arc<StatusPage>,
}

impl AppState {
    pub fn new(authority: Arc<Authority>) -> Self {
        let l = &authority.config().limits;
        let quota = |rate: u32, burst: u32| {
            let one = NonZeroU32::MIN;
            Quota::per_second(NonZeroU32::new(rate).unwrap_or(one))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
        };
        let per_ip = RateLimiter::keyed(quota(
            l.registrations_per_ip_per_s,
            l.registration_burst_per_ip,
        ));
        let global = RateLimiter::direct(quota(l.registrations_per_s, l.registration_burst));
        let status = StatusPage::new(authority.config().network.clone());
        Self {
            authority,
            liveness: None,
            per_ip: Arc::new(per_ip),
            global: Arc::new(global),
            status: Arc::new(status),
        }
    }

    /// The status page's limits, cache and prediction.
    pub fn status(&self) -> &StatusPage {
        &self.status
    }

    /// Serves the liveness endpoints from `liveness` (404 `liveness_disabled`
    /// without it).
    pub fn with_liveness(mut self, liveness: Option<Arc<Liveness>>) -> Self {
        self.liveness = liveness;
        self
    }

    /// Forgets per-IP limiter entries that are back to a full bucket; call
    /// periodically so a spray of source addresses cannot grow memory.
    pub fn shrink(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.status.shrink();
    }
}

pub fn router(state: AppState) -> Router {
    let limits = state.authority.config().limits.clone();
    Router::new()
        .route("/", get(status_page))
        .route("/v1/descriptors", post(register))
        .route("/v1/descriptors/{epoch}", get(descriptors))
        .route("/v1/topology/current", get(current))
        .route("/v1/topology/{epoch}", get(topology))
        .route("/v1/signature/{epoch}", get(signature))
        .route("/v1/epoch", get(epoch_info))
        .route("/v1/liveness/current", get(liveness_current))
        .route(
            "/v1/liveness/observation/{round}",
            get(liveness_observation),
        )
        .route("/v1/liveness/signature/{round}", get(liveness_signature))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .with_state(state)
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (status, [(CONTENT_TYPE, "application/json")], b).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut r = json(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

fn parse_epoch(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_epoch",
            format!("{s:?} is not an epoch number"),
        )
    })
}

async fn register(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    // Cheapest refusal first: no parsing or signature check for a flood.
    if s.per_ip.check_key(&peer.ip()).is_err() || s.global.check().is_err() {
        s.authority
            .metrics
            .registrations
            .with_label_values(&["rate_limited"])
            .inc();
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many registrations; retry later",
        )
        .into_response();
    }
    let signed: SignedDescriptor = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            s.authority
                .metrics
                .registrations
                .with_label_values(&["malformed_json"])
                .inc();
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("body is not a signed descriptor: {e}"),
            )
            .into_response();
        }
    };
    let a = s.authority.clone();
    match tokio::task::spawn_blocking(move || a.register(&signed, now_ms())).await {
        Ok(Ok((registered, r))) => {
            let status = match registered {
                Registered::Created => StatusCode::CREATED,
                Registered::Replaced | Registered::Unchanged => StatusCode::OK,
            };
            json(status, &r)
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "registration task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn descriptors(State(s): State<AppState>, Path(epoch): Path<String>) -> Response {
    match parse_epoch(&epoch) {
        Ok(e) => json(StatusCode::OK, &s.authority.descriptor_list(e)),
        Err(e) => e.into_response(),
    }
}

async fn current(State(s): State<AppState>) -> Response {
    match s.authority.current(now_ms()) {
        Ok(d) => json(StatusCode::OK, &d),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn topology(State(s): State<AppState>, Path(epoch): Path<String>) -> Response {
    match parse_epoch(&epoch).and_then(|e| Ok(s.authority.published(e)?)) {
        Ok(d) => json(StatusCode::OK, &d),
        Err(e) => e.into_response(),
    }
}

async fn signature(State(s): State<AppState>, Path(epoch): Path<String>) -> Response {
    match parse_epoch(&epoch).and_then(|e| Ok(s.authority.own_signature(e)?)) {
        Ok(sig) => json(StatusCode::OK, &sig),
        Err(e) => e.into_response(),
    }
}

fn liveness_of(s: &AppState) -> Result<&Arc<Liveness>, ApiError> {
    s.liveness.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "liveness_disabled",
            "this authority does not publish liveness lists",
        )
    })
}

fn parse_round(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_round",
            format!("{s:?} is not a round number"),
        )
    })
}

async fn liveness_current(State(s): State<AppState>) -> Response {
    let r = liveness_of(&s).and_then(|l| {
        l.current(now_ms()).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_liveness_document",
                "no k-signed liveness list is valid now",
            )
        })
    });
    match r {
        Ok(d) => json(StatusCode::OK, &d),
        Err(e) => e.into_response(),
    }
}

async fn liveness_observation(State(s): State<AppState>, Path(round): Path<String>) -> Response {
    let r = liveness_of(&s).and_then(|l| {
        let round = parse_round(&round)?;
        l.observation(round).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_round",
                format!("no observation for round {round}"),
            )
        })
    });
    match r {
        Ok(o) => json(StatusCode::OK, &o),
        Err(e) => e.into_response(),
    }
}

async fn liveness_signature(State(s): State<AppState>, Path(round): Path<String>) -> Response {
    let r = liveness_of(&s).and_then(|l| {
        let round = parse_round(&round)?;
        l.signature(round).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_signed",
                format!("no liveness document signed for round {round}"),
            )
        })
    });
    match r {
        Ok(sig) => json(StatusCode::OK, &sig),
        Err(e) => e.into_response(),
    }
}

async fn epoch_info(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, &s.authority.epoch_info(now_ms()))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = loopmix_net::metrics::render(s.authority.registry());
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

/// The status page (`crate::status`): HTML that may hold node-supplied
/// text (escaped), so it goes out with a CSP that allows no script at all.
async fn status_page(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let views = &s.authority.metrics.status_page;
    if !s.status.admit(peer.ip()) {
        views.with_label_values(&["rate_limited"]).inc();
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many page views; retry later",
        )
        .into_response();
    }
    let (page, authority, liveness) = (s.status.clone(), s.authority.clone(), s.liveness.clone());
    match tokio::task::spawn_blocking(move || page.page(&authority, liveness.as_deref(), now_ms()))
        .await
    {
        Ok(body) => {
            views.with_label_values(&["served"]).inc();
            (
                [
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    ),
                    (
                        CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(status::CONTENT_SECURITY_POLICY),
                    ),
                    (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                    (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                    (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
                    (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => {
            views.with_label_values(&["error"]).inc();
            ApiError::internal(&e).into_response()
        }
    }
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
    use loopmix_core::pki::DescriptorError;

    use super::*;

    /// `/` is HTML under a CSP that allows no script, rate limited per IP
    /// (429 beyond the burst), and the API next to it still answers JSON.
    #[tokio::test]
    async fn status_page_is_strict_html_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(crate::status::tests::authority(dir.path()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(AppState::new(a)).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let get = |path: &str| c.get(format!("http://{addr}{path}")).send();

        let r = get("/").await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[CONTENT_SECURITY_POLICY], status::CONTENT_SECURITY_POLICY);
        assert!(status::CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = r.text().await.unwrap();
        assert!(body.contains("loopmix network status") && !body.contains("<script"));

        let r = get("/v1/epoch").await.unwrap();
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");

        let mut statuses = Vec::new();
        for _ in 0..status::VIEW_BURST_PER_IP + 2 {
            statuses.push(get("/").await.unwrap().status().as_u16());
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        let r = get("/").await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    /// The wire contract of docs/PROTOCOL.md (directory API): status and
    /// `error` code of every refusal the authority's logic returns.
    #[test]
    fn refusals_keep_their_status_and_code() {
        let id = IdentityKeypair::generate().node_id();
        let other = IdentityKeypair::generate().node_id();
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                RegisterError::Descriptor(DescriptorError::BadSignature(id)).into(),
                403,
                "bad_signature",
            ),
            (
                RegisterError::Descriptor(DescriptorError::IdentityMismatch {
                    outer: id,
                    inner: other,
                })
                .into(),
                403,
                "identity_mismatch",
            ),
            (
                RegisterError::Descriptor(DescriptorError::Oversized { len: 9, max: 1 }).into(),
                413,
                "oversized",
            ),
            (
                RegisterError::Descriptor(DescriptorError::Malformed("x".into())).into(),
                400,
                "malformed",
            ),
            (
                RegisterError::Descriptor(DescriptorError::Invalid {
                    field: "f",
                    reason: "r".into(),
                })
                .into(),
                400,
                "invalid",
            ),
            (
                RegisterError::EpochNotOpen {
                    epoch: 3,
                    open: vec![4],
                    lead_s: 2,
                }
                .into(),
                400,
                "epoch_not_open",
            ),
            (
                RegisterError::PublishedInFuture {
                    published_at: 9,
                    now: 1,
                    skew_s: 2,
                }
                .into(),
                400,
                "published_in_future",
            ),
            (
                RegisterError::StaleDescriptor {
                    identity: id,
                    epoch: 3,
                    published_at: 1,
                }
                .into(),
                409,
                "stale_descriptor",
            ),
            (
                RegisterError::DuplicateAddress {
                    address: "127.0.0.1:1".parse().unwrap(),
                    epoch: 3,
                    other,
                }
                .into(),
                409,
                "duplicate_address",
            ),
            (
                RegisterError::DuplicateSphinxKey {
                    key: SphinxKeypair::generate().public(),
                    epoch: 3,
                    other,
                }
                .into(),
                409,
                "duplicate_sphinx_key",
            ),
            (
                RegisterError::EpochFull { epoch: 3, max: 1 }.into(),
                503,
                "epoch_full",
            ),
            (RegisterError::Encode(encode).into(), 500, "internal"),
            (
                DocumentError::NotPublished {
                    epoch: 3,
                    have: 1,
                    need: 2,
                }
                .into(),
                404,
                "not_published",
            ),
            (
                DocumentError::UnknownEpoch { epoch: 3 }.into(),
                404,
                "unknown_epoch",
            ),
            (
                DocumentError::NoCurrentDocument { epoch: 3 }.into(),
                404,
                "no_current_document",
            ),
            (
                DocumentError::NotSigned { epoch: 3 }.into(),
                404,
                "not_signed",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{e:?}");
        }
        // Internal details stay in the log.
        let e: ApiError =
            RegisterError::Encode(serde_json::from_str::<u8>("x").unwrap_err()).into();
        assert_eq!(e.message, "internal error; see the authority's log");
        let e: ApiError = RegisterError::EpochFull { epoch: 3, max: 1 }.into();
        assert!(e.message.contains("epoch 3"), "{}", e.message);
    }
}
