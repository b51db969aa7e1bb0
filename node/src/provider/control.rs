//! The provider's end of the client control protocol (`docs/PROTOCOL.md`
//! §6.6, codec in [`loopmix_core::provider_control`]): `register` and
//! `pull` on the client's bidirectional streams, answered from the
//! [`InboxStore`].
//!
//! * Only clients may use it; a topology node gets `not_client` (it cannot
//!   even open a bidirectional stream: the ingress only allows them on
//!   client connections).
//! * A `pull` answer always has [`ControlConfig::pull_slots`] slots of
//!   [`ControlConfig::slot_data_len`] bytes, so its size says nothing about
//!   how much mail was waiting. A pull carries the client's confirmations
//!   of earlier answers; the answer leaves those out and goes back before
//!   they are deleted, so answering takes the same time (a read) whether
//!   the client confirmed something or not.
//! * Each client has a request budget (token bucket); beyond it, requests
//!   get `rate_limited` before touching the database.
//! * Database calls run on the blocking pool, at most
//!   [`ControlConfig::max_concurrent_db`] at a time, so clients cannot take
//!   every blocking thread (the packet path stores into the same database).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use loopmix_core::keys::NodeId;
use loopmix_core::provider_control::{
    CodecError, MAX_REQUEST_BODY, Request, Response, Slot, SlotLayout, code,
};
use loopmix_net::metrics::{MetricError, counter, counter_vec, histogram};
use loopmix_net::provider_control::{ControlError, read_message, write_message};
use loopmix_net::transport::PeerKind;
use loopmix_net::transport::ingress::{ControlFuture, ControlHandler};
use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::inbox::{InboxError, InboxStore};

/// `STOP_SENDING` / `RESET_STREAM` code on a control stream abandoned
/// without an answer (timeout, or the stream broke).
pub const STREAM_ABANDONED: u32 = 3;

/// Settings of the control service. Defaults in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Slots in every pull answer \[8\], at most
    /// [`loopmix_core::provider_control::MAX_PULL_SLOTS`].
    pub pull_slots: usize,
    /// Data bytes per slot \[4096\]. Must be at least the inbox's
    /// `max_message_bytes`, so every stored message fits a slot.
    pub slot_data_len: usize,
    /// Sustained requests per second per client \[50\]: a client pulls once
    /// per pull interval (4/s at the client's default, 40/s at the
    /// localnet's balanced preset), busy or not.
    pub requests_per_second: u32,
    /// Requests a client may make at once after being idle \[100\].
    pub request_burst: u32,
    /// Time for reading a request, and for writing the answer \[10 s\].
    pub request_timeout: Duration,
    /// Database calls in flight from all clients together \[8\].
    pub max_concurrent_db: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            pull_slots: loopmix_core::provider_control::DEFAULT_PULL_SLOTS,
            slot_data_len: 4096,
            requests_per_second: 50,
            request_burst: 100,
            request_timeout: Duration::from_secs(10),
            max_concurrent_db: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlSetupError {
    #[error("pull answer layout: {0}")]
    Layout(#[from] CodecError),
    #[error(
        "slot_data_len {slot} is smaller than the inbox's max_message_bytes {max}: stored messages would not fit a pull answer"
    )]
    SlotTooSmall { slot: usize, max: usize },
    #[error("max_concurrent_db must be at least 1")]
    NoDatabaseCalls,
    #[error(transparent)]
    Metric(#[from] MetricError),
}

/// Request kinds and outcomes, pre-registered so dashboards show zeros.
const REQUEST_TYPES: &[&str] = &["register", "pull", "invalid"];

#[derive(Clone)]
struct ControlMetrics {
    /// `type` (register/pull/invalid) × `result` (ok, an error
    /// code's label, or timeout/stream for abandoned streams).
    requests: IntCounterVec,
    /// `slot` = real/dummy.
    pull_slots: IntCounterVec,
    confirmed: IntCounter,
    seconds: Histogram,
    /// Stored → handed out in a pull answer.
    inbox_wait: Histogram,
}

impl ControlMetrics {
    fn new(r: &Registry) -> Result<Self, MetricError> {
        let requests = counter_vec(
            r,
            "loopmix_provider_requests_total",
            "Client control requests, by type and result",
            &["type", "result"],
        )?;
        for t in REQUEST_TYPES {
            requests.with_label_values(&[t, "ok"]);
        }
        let pull_slots = counter_vec(
            r,
            "loopmix_provider_pull_slots_total",
            "Slots in pull answers: real messages and dummy padding",
            &["slot"],
        )?;
        for s in ["real", "dummy"] {
            pull_slots.with_label_values(&[s]);
        }
        Ok(Self {
            requests,
            pull_slots,
            confirmed: counter(
                r,
                "loopmix_provider_confirmed_total",
                "Messages deleted from inboxes because their client confirmed them",
            )?,
            seconds: histogram(
                r,
                "loopmix_provider_request_seconds",
                "Time to answer a client control request (after it was read)",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            )?,
            // Half a pull interval on average for a client that pulls on
            // schedule: the provider's share of the end-to-end latency.
            inbox_wait: histogram(
                r,
                "loopmix_provider_inbox_wait_seconds",
                "Time a message waited in its inbox from being stored until a pull answer handed it out (each time it is handed out)",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            )?,
        })
    }
}

/// Limiter entries are forgotten (when back to a full bucket) every this
/// many requests, so a stream of fresh client keys cannot grow memory.
const SHRINK_EVERY: u64 = 4096;

/// Serves clients' control streams from the inbox store; install with
/// [`loopmix_net::transport::ingress::Ingress::with_control`].
pub struct ProviderControl {
    inbox: Arc<InboxStore>,
    layout: SlotLayout,
    limiter: DefaultKeyedRateLimiter<NodeId>,
    db: Arc<Semaphore>,
    timeout: Duration,
    metrics: ControlMetrics,
    requests: AtomicU64,
}

impl ProviderControl {
    /// Registers the metrics in `registry`.
    pub fn new(
        inbox: Arc<InboxStore>,
        config: &ControlConfig,
        registry: &Registry,
    ) -> Result<Self, ControlSetupError> {
        let layout = SlotLayout::new(config.pull_slots, config.slot_data_len)?;
        let max = inbox.limits().max_message_bytes;
        if config.slot_data_len < max {
            return Err(ControlSetupError::SlotTooSmall {
                slot: config.slot_data_len,
                max,
            });
        }
        if config.max_concurrent_db == 0 {
            return Err(ControlSetupError::NoDatabaseCalls);
        }
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(config.requests_per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(config.request_burst).unwrap_or(one));
        Ok(Self {
            inbox,
            layout,
            limiter: RateLimiter::keyed(quota),
            db: Arc::new(Semaphore::new(config.max_concurrent_db)),
            timeout: config.request_timeout,
            metrics: ControlMetrics::new(registry)?,
            requests: AtomicU64::new(0),
        })
    }

    /// The shape of every pull answer (its wire size is `wire_len()`).
    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// Forgets rate-limiter state of clients that are back to a full
    /// budget. Also done every few thousand requests by itself.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Answers one request from `peer` (the part of a control stream that
    /// does not touch the network). Counts it.
    pub async fn answer(&self, peer: NodeId, kind: PeerKind, request: Request) -> Response {
        let started = Instant::now();
        let response = self.answer_uncounted(peer, kind, &request).await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let result = match &response {
            Response::Error { code: c, .. } => code::label(*c),
            _ => "ok",
        };
        self.metrics
            .requests
            .with_label_values(&[request.label(), result])
            .inc();
        response
    }

    async fn answer_uncounted(&self, peer: NodeId, kind: PeerKind, request: &Request) -> Response {
        if kind != PeerKind::Client {
            return Response::error(code::NOT_CLIENT, "control requests are for clients only");
        }
        if self.requests.fetch_add(1, Ordering::Relaxed) % SHRINK_EVERY == SHRINK_EVERY - 1 {
            self.shrink();
        }
        if self.limiter.check_key(&peer).is_err() {
            return Response::error(code::RATE_LIMITED, "too many requests; slow down");
        }
        match request {
            Request::Register => match self.db(move |inbox| inbox.register(&peer)).await {
                Ok(_) => Response::Ok,
                Err(e) => e,
            },
            Request::Pull { confirm } => match self.pull(peer, confirm.clone()).await {
                Ok(messages) => self.pull_answer(peer, messages),
                Err(e) => e,
            },
        }
    }

    /// The oldest `slots` messages of `peer` that are not in `confirm`;
    /// the confirmed ones are deleted after the answer is handed back, in
    /// the same blocking call (so under the same database permit).
    /// Deleting costs a durable commit: done first, it would make answers
    /// to a client that confirmed something measurably slower, and an
    /// observer of the link could time that. A deletion that fails leaves
    /// the messages stored: they come again and the client confirms them
    /// again (durability first).
    async fn pull(
        &self,
        peer: NodeId,
        confirm: Vec<u64>,
    ) -> Result<Vec<super::inbox::StoredMessage>, Response> {
        let n = self.layout.slots();
        let permit = match tokio::time::timeout(self.timeout, self.db.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Response::error(
                    code::BUSY,
                    "provider busy; try again later",
                ));
            }
        };
        let inbox = self.inbox.clone();
        let confirmed = self.metrics.confirmed.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Detached: the deletion finishes after the answer has gone.
        drop(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let fresh = inbox.fetch(&peer, n + confirm.len()).map(|all| {
                all.into_iter()
                    .filter(|m| !confirm.contains(&m.seq))
                    .take(n)
                    .collect::<Vec<_>>()
            });
            let fetched = fresh.is_ok();
            // The receiver is gone only if the request was abandoned; the
            // deletion is still due.
            let _ = tx.send(fresh);
            if fetched && !confirm.is_empty() {
                match inbox.confirm(&peer, &confirm) {
                    Ok(deleted) => confirmed.inc_by(deleted as u64),
                    Err(e) => {
                        warn!(client = %peer.short(), error = %e,
                            "confirmed messages not deleted; they come again");
                    }
                }
            }
        }));
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(inbox_error(e)),
            Err(_) => {
                warn!("inbox task failed");
                Err(Response::error(code::INTERNAL, "internal error"))
            }
        }
    }

    fn pull_answer(&self, peer: NodeId, messages: Vec<super::inbox::StoredMessage>) -> Response {
        let max = self.layout.data_len();
        let now_ms = loopmix_net::clock::unix_now_ms();
        let mut slots = Vec::with_capacity(messages.len());
        for m in messages {
            if m.data.len() > max {
                // Only possible if the store was written under a larger
                // `max_message_bytes`; it expires with the inbox's max_age.
                warn!(client = %peer.short(), seq = m.seq, len = m.data.len(), max,
                    "stored message does not fit a pull slot; not handed out");
                continue;
            }
            self.metrics
                .inbox_wait
                .observe(now_ms.saturating_sub(m.stored_at_ms) as f64 / 1000.0);
            slots.push(Slot {
                seq: m.seq,
                identifier: m.id,
                data: m.data,
            });
        }
        let real = slots.len() as u64;
        let dummy = self.layout.slots() as u64 - real;
        self.metrics
            .pull_slots
            .with_label_values(&["real"])
            .inc_by(real);
        self.metrics
            .pull_slots
            .with_label_values(&["dummy"])
            .inc_by(dummy);
        Response::Messages { slots }
    }

    /// Runs `f` on the blocking pool, bounded by the database semaphore and
    /// the request timeout; store errors become error answers.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&InboxStore) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, Response> {
        let busy = || Response::error(code::BUSY, "provider busy; try again later");
        let permit = match tokio::time::timeout(self.timeout, self.db.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(busy()),
        };
        let inbox = self.inbox.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&inbox)
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(inbox_error(e)),
            Err(e) => {
                warn!(error = %e, "inbox task failed");
                Err(Response::error(code::INTERNAL, "internal error"))
            }
        }
    }

    /// One control stream: read the request, answer, finish.
    async fn serve(
        self: Arc<Self>,
        peer: NodeId,
        kind: PeerKind,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let read = read_message(&mut recv, MAX_REQUEST_BODY, self.timeout).await;
        let decoded = read.and_then(|bytes| Ok(Request::decode(&bytes)?));
        let response = match decoded {
            Ok(request) => self.answer(peer, kind, request).await,
            Err(ControlError::Codec(e)) => {
                // Nothing more is read from this stream.
                let _ = recv.stop(STREAM_ABANDONED.into());
                self.count_invalid(code::label(code::BAD_REQUEST));
                debug!(client = %peer.short(), error = %e, "malformed control request");
                Response::error(code::BAD_REQUEST, e.to_string())
            }
            Err(e) => {
                self.count_invalid(e.label());
                debug!(client = %peer.short(), error = %e, "control stream abandoned");
                let _ = recv.stop(STREAM_ABANDONED.into());
                let _ = send.reset(STREAM_ABANDONED.into());
                return;
            }
        };
        let bytes = match response.encode(&self.layout) {
            Ok(b) => b,
            Err(e) => {
                // Unreachable: the layout and slot sizes are checked.
                warn!(error = %e, "cannot encode a control answer");
                let fallback = Response::error(code::INTERNAL, "internal error");
                match fallback.encode(&self.layout) {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = write_message(&mut send, &bytes, self.timeout).await {
            debug!(client = %peer.short(), error = %e, "control answer not written");
            let _ = send.reset(STREAM_ABANDONED.into());
        }
    }

    fn count_invalid(&self, result: &str) {
        self.metrics
            .requests
            .with_label_values(&["invalid", result])
            .inc();
    }
}

impl ControlHandler for ProviderControl {
    fn handle(
        self: Arc<Self>,
        peer: NodeId,
        kind: PeerKind,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> ControlFuture {
        Box::pin(self.serve(peer, kind, send, recv))
    }
}

fn inbox_error(e: InboxError) -> Response {
    match e {
        InboxError::UnknownClient(_) => {
            Response::error(code::NOT_REGISTERED, "not registered: send register first")
        }
        InboxError::TooManyClients { .. } => Response::error(code::TOO_MANY_CLIENTS, e.to_string()),
        other => {
            // Storage details (paths, redb messages) stay in the log.
            warn!(error = %other, "inbox store failed");
            Response::error(code::INTERNAL, "storage unavailable; try again later")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use loopmix_core::keys::IdentityKeypair;
    use loopmix_core::provider_control::{MAX_RESPONSE_BODY, TYPE_MESSAGES};
    use loopmix_core::wire::{Frame, FrameError};
    use loopmix_net::provider_control;
    use loopmix_net::transport::ingress::{ClientPolicy, Ingress, IngressSink};
    use loopmix_net::transport::{PeerAllowList, RefusalHook, Transport};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::provider::inbox::InboxLimits;

    const T: Duration = Duration::from_secs(5);

    struct NoPackets;
    impl IngressSink for NoPackets {
        fn packet(&self, _: NodeId, _: Frame, _: Instant) {}
        fn malformed(&self, _: NodeId, _: FrameError) {}
    }

    struct Provider {
        transport: Transport,
        inbox: Arc<InboxStore>,
        registry: Registry,
        refused: Arc<std::sync::Mutex<Vec<&'static str>>>,
        cancel: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Provider {
        fn addr(&self) -> SocketAddr {
            self.transport.local_addr().unwrap()
        }

        fn metric(&self, needle: &str) -> bool {
            loopmix_net::metrics::render(&self.registry).contains(needle)
        }
    }

    impl Drop for Provider {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    fn start_provider(
        accept_clients: bool,
        config: ControlConfig,
        policy: ClientPolicy,
    ) -> Provider {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_message_bytes: config.slot_data_len,
            ..InboxLimits::default()
        };
        let inbox = Arc::new(InboxStore::open(&dir.path().join("inbox.redb"), limits).unwrap());
        let registry = Registry::new();
        let control = Arc::new(ProviderControl::new(inbox.clone(), &config, &registry).unwrap());
        let allowed = PeerAllowList::default();
        allowed.accept_clients(accept_clients);
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = refused.clone();
        let hook: RefusalHook = Arc::new(move |r| log.lock().unwrap().push(r));
        let transport = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(IdentityKeypair::generate()),
            allowed,
            hook,
        )
        .unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(
            Ingress::new(
                transport.clone(),
                Arc::new(NoPackets),
                Arc::new(AtomicUsize::new(1372)),
                cancel.clone(),
            )
            .with_control(control)
            .with_client_policy(policy)
            .run(),
        );
        Provider {
            transport,
            inbox,
            registry,
            refused,
            cancel,
            _dir: dir,
        }
    }

    fn small_config() -> ControlConfig {
        ControlConfig {
            pull_slots: 4,
            slot_data_len: 64,
            ..ControlConfig::default()
        }
    }

    fn client() -> Transport {
        Transport::dial_only(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(IdentityKeypair::generate()),
            Arc::new(|_| {}),
        )
        .unwrap()
    }

    /// Sends raw request bytes on a fresh stream; returns the raw answer.
    async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_message(&mut send, bytes, T).await.unwrap();
        read_message(&mut recv, MAX_RESPONSE_BODY, T).await.unwrap()
    }

    async fn req(conn: &quinn::Connection, r: Request) -> Response {
        provider_control::request(conn, &r, T).await.unwrap()
    }

    #[tokio::test]
    async fn register_and_pulls_that_confirm_over_quic() {
        let p = start_provider(true, small_config(), ClientPolicy::default());
        let c = client();
        let me = c.node_id();
        let conn = c.connect(p.transport.node_id(), p.addr()).await.unwrap();

        // Pull before register: a typed error, and the connection lives on.
        let pull = |confirm: Vec<u64>| Request::Pull { confirm };
        match req(&conn, pull(vec![])).await {
            Response::Error { code: c, .. } => assert_eq!(c, code::NOT_REGISTERED),
            other => panic!("{other:?}"),
        }
        assert_eq!(req(&conn, Request::Register).await, Response::Ok);
        assert_eq!(
            req(&conn, Request::Register).await,
            Response::Ok,
            "idempotent"
        );
        assert!(p.inbox.is_registered(&me));

        let empty = raw_exchange(&conn, &pull(vec![]).encode().unwrap()).await;
        let wire_len = SlotLayout::new(4, 64).unwrap().wire_len();
        assert_eq!(empty.len(), wire_len);
        assert_eq!(empty[0], TYPE_MESSAGES);

        // Stored 2 s ago: the answer times their wait in the inbox.
        let stored_at = loopmix_net::clock::unix_now_ms() - 2000;
        for n in 0..3u8 {
            p.inbox
                .store(&me, [n; 16], &vec![n; 10 + n as usize], stored_at)
                .unwrap();
        }
        let three = raw_exchange(&conn, &pull(vec![]).encode().unwrap()).await;
        assert_eq!(three.len(), wire_len, "same size with 0 and 3 messages");
        let Response::Messages { slots } = Response::decode(&three, MAX_RESPONSE_BODY).unwrap()
        else {
            panic!("not messages");
        };
        assert_eq!(slots.len(), 3);
        assert!(
            p.metric("loopmix_provider_inbox_wait_seconds_bucket{le=\"1\"} 0\n")
                && p.metric("loopmix_provider_inbox_wait_seconds_bucket{le=\"2.5\"} 3\n"),
            "{}",
            loopmix_net::metrics::render(&p.registry)
        );
        for (n, s) in slots.iter().enumerate() {
            assert_eq!(s.identifier, [n as u8; 16]);
            assert_eq!(s.data, vec![n as u8; 10 + n]);
        }

        // The next pull confirms two: the answer already leaves them out.
        let first_two = vec![slots[0].seq, slots[1].seq];
        let Response::Messages { slots: left } = req(&conn, pull(first_two.clone())).await else {
            panic!("not messages");
        };
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].identifier, [2; 16]);
        // The deletion follows the answer; then they are gone for good.
        let mut gone = false;
        for _ in 0..100 {
            if p.inbox.inbox_len(&me).unwrap().0 == 1 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "confirmed messages deleted");
        // Unconfirmed, the third comes again; confirming unknown seqs is fine.
        let Response::Messages { slots: again } = req(&conn, pull(first_two)).await else {
            panic!("not messages");
        };
        assert_eq!(again, left);

        assert!(p.metric(r#"loopmix_provider_pull_slots_total{slot="real"} 5"#));
        assert!(p.metric(r#"loopmix_provider_pull_slots_total{slot="dummy"} 11"#));
        assert!(
            p.metric(r#"loopmix_provider_requests_total{result="not_registered",type="pull"} 1"#)
        );
        assert!(p.metric(r#"loopmix_provider_requests_total{result="ok",type="register"} 2"#));
        assert!(p.metric(r#"loopmix_provider_requests_total{result="ok",type="pull"} 4"#));
        assert!(p.metric("loopmix_provider_confirmed_total 2"));
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_provider_keeps_serving() {
        let p = start_provider(true, small_config(), ClientPolicy::default());
        let c = client();
        let conn = c.connect(p.transport.node_id(), p.addr()).await.unwrap();
        let garbage: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n\r\n",
            &[0x12, 0, 0, 0, 1, 0],
            &[0x14, 0xff, 0xff, 0xff, 0xff],
            // The old separate confirm, gone with issue 17.
            &[0x14, 0, 0, 0, 2, 0, 0],
            &[],
        ];
        for g in garbage {
            let answer = raw_exchange(&conn, g).await;
            match Response::decode(&answer, MAX_RESPONSE_BODY).unwrap() {
                Response::Error { code: c, message } => {
                    assert_eq!(c, code::BAD_REQUEST, "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        // A stream abandoned mid-request is reset, not answered.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x14, 0, 0]).await.unwrap();
        send.reset(9u32.into()).unwrap();
        assert!(read_message(&mut recv, MAX_RESPONSE_BODY, T).await.is_err());
        // More streams than the per-connection limit, one after another, and
        // the same connection still works.
        for _ in 0..10 {
            assert_eq!(req(&conn, Request::Register).await, Response::Ok);
        }
        assert!(
            p.metric(r#"loopmix_provider_requests_total{result="bad_request",type="invalid"} 5"#)
        );
    }

    #[tokio::test]
    async fn mix_mode_refuses_unknown_keys_and_nodes_get_no_control_streams() {
        let mix = start_provider(false, small_config(), ClientPolicy::default());
        let c = client();
        // TLS 1.3: the client may finish its side of the handshake before
        // the server has checked the client's key, so the refusal shows as
        // either a failed connect or a connection closed right after.
        if let Ok(conn) = c.connect(mix.transport.node_id(), mix.addr()).await {
            let closed = tokio::time::timeout(T, conn.closed()).await.unwrap();
            assert!(
                matches!(closed, quinn::ConnectionError::ConnectionClosed(_)),
                "{closed:?}"
            );
            assert!(
                provider_control::request(&conn, &Request::Register, T)
                    .await
                    .is_err()
            );
        }
        assert_eq!(*mix.refused.lock().unwrap(), vec!["unknown_peer_key"]);

        // A listed node reaches a provider, but cannot open control streams.
        let p = start_provider(true, small_config(), ClientPolicy::default());
        let node = client();
        p.transport.allow_list().insert(node.node_id());
        let conn = node.connect(p.transport.node_id(), p.addr()).await.unwrap();
        let r =
            provider_control::request(&conn, &Request::Register, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(ControlError::Timeout)), "{r:?}");
        assert!(!p.inbox.is_registered(&node.node_id()));
    }

    #[tokio::test]
    async fn client_connections_are_bounded() {
        let policy = ClientPolicy {
            max_connections: 1,
            ..ClientPolicy::default()
        };
        let p = start_provider(true, small_config(), policy);
        let (a, b) = (client(), client());
        let ca = a.connect(p.transport.node_id(), p.addr()).await.unwrap();
        assert_eq!(req(&ca, Request::Register).await, Response::Ok);
        let cb = b.connect(p.transport.node_id(), p.addr()).await.unwrap();
        let r = provider_control::request(&cb, &Request::Register, T).await;
        assert!(r.is_err(), "second client is closed: {r:?}");
        assert!(p.refused.lock().unwrap().contains(&"too_many_clients"));
        // When the first leaves, its place is free again.
        ca.close(0u32.into(), b"bye");
        drop(ca);
        let mut ok = false;
        for _ in 0..50 {
            let cb = b.connect(p.transport.node_id(), p.addr()).await.unwrap();
            if let Ok(Response::Ok) = provider_control::request(&cb, &Request::Register, T).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "place freed after the first client left");
    }

    fn control(config: ControlConfig) -> (ProviderControl, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_message_bytes: 64,
            max_clients: 1,
            ..InboxLimits::default()
        };
        let inbox = Arc::new(InboxStore::open(&dir.path().join("i.redb"), limits).unwrap());
        let c = ProviderControl::new(inbox, &config, &Registry::new()).unwrap();
        (c, dir)
    }

    #[tokio::test]
    async fn rate_limit_node_refusal_and_client_limit() {
        let config = ControlConfig {
            requests_per_second: 1,
            request_burst: 3,
            ..small_config()
        };
        let (c, _dir) = control(config);
        let a = IdentityKeypair::generate().node_id();
        let b = IdentityKeypair::generate().node_id();
        let err_code = |r: Response| match r {
            Response::Error { code: c, .. } => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err_code(c.answer(a, PeerKind::Node, Request::Register).await),
            code::NOT_CLIENT
        );
        assert_eq!(
            c.answer(a, PeerKind::Client, Request::Register).await,
            Response::Ok
        );
        assert_eq!(
            err_code(c.answer(b, PeerKind::Client, Request::Register).await),
            code::TOO_MANY_CLIENTS
        );
        let pull = |confirm: Vec<u64>| Request::Pull { confirm };
        assert!(matches!(
            c.answer(a, PeerKind::Client, pull(vec![])).await,
            Response::Messages { .. }
        ));
        assert!(matches!(
            c.answer(a, PeerKind::Client, pull(vec![42])).await,
            Response::Messages { .. }
        ));
        assert_eq!(
            err_code(c.answer(a, PeerKind::Client, pull(vec![])).await),
            code::RATE_LIMITED
        );
        // Another client has its own budget.
        assert_eq!(
            err_code(c.answer(b, PeerKind::Client, pull(vec![])).await),
            code::NOT_REGISTERED
        );
    }

    #[test]
    fn setup_checks_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let inbox =
            Arc::new(InboxStore::open(&dir.path().join("i.redb"), InboxLimits::default()).unwrap());
        let r = Registry::new();
        let small = ControlConfig {
            slot_data_len: 1024,
            ..ControlConfig::default()
        };
        assert!(matches!(
            ProviderControl::new(inbox.clone(), &small, &r),
            Err(ControlSetupError::SlotTooSmall {
                slot: 1024,
                max: 4096
            })
        ));
        let none = ControlConfig {
            pull_slots: 0,
            ..ControlConfig::default()
        };
        assert!(matches!(
            ProviderControl::new(inbox.clone(), &none, &r),
            Err(ControlSetupError::Layout(_))
        ));
        let c = ProviderControl::new(inbox.clone(), &ControlConfig::default(), &r).unwrap();
        assert_eq!(c.layout().wire_len(), 5 + 6 + 8 * (26 + 4096));
        let many = ControlConfig {
            pull_slots: loopmix_core::provider_control::MAX_PULL_SLOTS + 1,
            ..ControlConfig::default()
        };
        assert!(matches!(
            ProviderControl::new(inbox, &many, &r),
            Err(ControlSetupError::Layout(_))
        ));
    }
}
