//! The client's I/O shell around the sans-IO [`Engine`]: the directory, the
//! link to the provider, the three Poisson streams, and the pull loop.
//!
//! ```text
//! λ_P ticker ─► engine.real_or_drop ─┐
//! λ_L ticker ─► engine.loop_packet  ─┼─► Egress (QUIC uni stream) ─► provider
//! λ_D ticker ─► engine.drop_packet  ─┘
//! pull every pull_interval ◄─ provider inbox ─► engine.on_inbox ─► events ─► app
//!   (each pull confirms the previous answer's messages)
//! ```
//! Every stream builds its next packet ahead of its tick on the blocking
//! pool (Sphinx construction plus a SURB costs about a millisecond), so send
//! times stay Poisson under CPU load. An observer of the client's link sees
//! the same rates whether the user is idle or busy: real packets replace
//! drop packets in λ_P slots, they are never added.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::error::ClientError;
use loopmix_core::e2e::ClientAddress;
use loopmix_core::keys::NodeId;
use loopmix_core::message::MessageId;
use loopmix_core::pki::VerifiedTopology;
use loopmix_core::poisson::PoissonTicker;
use loopmix_core::provider_control::{self, MAX_RESPONSE_BODY, Request, Response, SlotLayout};
use loopmix_core::topology::Topology;
use loopmix_net::directory::{DirectoryClient, DirectoryClientConfig};
use loopmix_net::metrics::{MetricError, counter, counter_vec, float_gauge, histogram};
use loopmix_net::provider_control::{ControlError, request as provider_request};
use loopmix_net::routing::RoutingView;
use loopmix_net::sleep_until;
use loopmix_net::transport::egress::{Egress, EgressMetrics, OutPacket};
use loopmix_net::transport::{PeerAllowList, Transport};
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, Registry};
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::engine::{Engine, EngineConfig, Event, OutKind, Outgoing, ReplyHandle, SendError};
use crate::keys::ClientKeys;

/// How long before its tick a packet is built: a Sphinx packet takes well
/// under a millisecond to build, so 10 ms leaves room on a busy machine,
/// and adds at most 10 ms to the wait for a slot.
const BUILD_LEAD: Duration = Duration::from_millis(10);

/// Client metrics (one registry per client).
#[derive(Clone)]
pub struct ClientMetrics {
    pub sent: IntCounterVec,
    pub received: IntCounter,
    pub delivered: IntCounter,
    pub failed: IntCounter,
    pub loop_rtt: Histogram,
    /// Queued message → the λ_P packet carrying its fragment on the link.
    pub slot_wait: Histogram,
    pub loop_return_ratio: Gauge,
    pub loops_lost: IntCounter,
    pub pulls: IntCounterVec,
    pub routes_avoiding: IntCounter,
}

impl ClientMetrics {
    fn new(r: &Registry) -> Result<Self, MetricError> {
        let sent = counter_vec(
            r,
            "loopmix_client_packets_sent_total",
            "Packets handed to the provider link, by stream and kind (real, retransmission, reply, drop, loop)",
            &["kind"],
        )?;
        for k in ["real", "retransmission", "reply", "drop", "loop"] {
            sent.with_label_values(&[k]);
        }
        Ok(Self {
            sent,
            received: counter(
                r,
                "loopmix_client_messages_received_total",
                "Complete messages received",
            )?,
            delivered: counter(
                r,
                "loopmix_client_messages_delivered_total",
                "Sent messages whose every fragment was acknowledged",
            )?,
            failed: counter(
                r,
                "loopmix_client_messages_failed_total",
                "Sent messages given up after max_attempts",
            )?,
            loop_rtt: histogram(
                r,
                "loopmix_client_loop_rtt_seconds",
                "Round trip of returned loop packets (includes the wait for the next pull)",
                vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            )?,
            // Packets are built one tick ahead (module docs), so a message
            // queued just after a build waits for that tick and the next:
            // about two λ_P intervals on average, the first term of the
            // end-to-end latency on top of the mixing delays.
            slot_wait: histogram(
                r,
                "loopmix_client_slot_wait_seconds",
                "Time from queuing a message (send or reply) to handing the packet with its fragment to the provider link (first transmissions)",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
            )?,
            loop_return_ratio: float_gauge(
                r,
                "loopmix_client_loop_return_ratio",
                "Returned / resolved loops; loops that never come back reveal a dead or attacking mix",
            )?,
            loops_lost: counter(
                r,
                "loopmix_client_loops_lost_total",
                "Loop packets not back in time",
            )?,
            pulls: {
                let pulls = counter_vec(
                    r,
                    "loopmix_client_pulls_total",
                    "Inbox pulls by result (ok, refused, failed, unreachable, bad_answer: a wrong-shaped answer, connection dropped)",
                    &["result"],
                )?;
                for k in ["ok", "refused", "failed", "unreachable", "bad_answer"] {
                    pulls.with_label_values(&[k]);
                }
                pulls
            },
            routes_avoiding: counter(
                r,
                "loopmix_client_routes_avoiding_suspects_total",
                "Retransmissions routed around mixes this client's own loops and acks suspect",
            )?,
        })
    }
}

/// Something the application learns.
#[derive(Debug)]
pub enum ClientEvent {
    Received {
        message: MessageId,
        body: Vec<u8>,
        reply: Option<ReplyHandle>,
    },
    Delivered {
        message: MessageId,
    },
    Failed {
        message: MessageId,
        reason: String,
    },
}

/// An application that makes its own traffic at λ_P slot time (the SOCKS5
/// proxy and the exit service: their stream frames are built when a slot
/// comes, so acknowledgements and window updates are as fresh as possible
/// and all streams share the slots fairly).
pub trait SlotFiller: Send + Sync {
    /// Called under the engine lock when a λ_P packet is about to be built
    /// and no fragment is queued: may queue one one-packet message
    /// ([`Engine::send`] / [`Engine::reply_over`]). Queuing nothing makes
    /// the slot a drop packet, as usual.
    fn fill(&self, engine: &mut Engine, now: Instant);
}

/// A running client. Dropping it does not stop it; call [`Client::shutdown`].
pub struct Client {
    engine: Arc<Mutex<Engine>>,
    address: ClientAddress,
    cancel: CancellationToken,
    /// The pull loop, awaited by [`Client::close`] so that the inbox items
    /// already handed to the application are confirmed before it exits.
    pull: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The local UDP address of the QUIC endpoint (packets and pulls).
    link: Option<SocketAddr>,
    /// True once the provider has answered a registration: it holds our
    /// inbox, so mail sent to us is kept.
    registered: watch::Receiver<bool>,
    pub metrics: ClientMetrics,
}

fn lock(e: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    match e.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Client {
    pub fn address(&self) -> ClientAddress {
        self.address
    }

    /// The local UDP address both provider connections leave from (what
    /// the provider, or a relay in front of it, sees as the source).
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.link
    }

    /// Queues `body` for `to`; it leaves in the next λ_P slots.
    pub fn send(
        &self,
        to: &ClientAddress,
        body: Vec<u8>,
        reply_blocks: usize,
    ) -> Result<MessageId, SendError> {
        lock(&self.engine).send(to, body, reply_blocks, Instant::now())
    }

    /// Answers a received message over the reply blocks it carried.
    pub fn reply(&self, to: ReplyHandle, body: Vec<u8>) -> Result<MessageId, SendError> {
        lock(&self.engine).reply(to, body, Instant::now())
    }

    /// Takes the reply blocks a received message carried, for an
    /// application that pools them ([`Engine::take_reply_blocks`]).
    pub fn take_reply_blocks(&self, h: ReplyHandle) -> Vec<loopmix_core::e2e::ReplyBlock> {
        lock(&self.engine).take_reply_blocks(&h)
    }

    /// The engine's counters and queue sizes.
    pub fn stats(&self) -> crate::engine::EngineStats {
        lock(&self.engine).stats()
    }

    /// Epoch of the topology the engine builds with, and whether it lists
    /// our provider (nothing can be sent otherwise).
    pub fn topology_state(&self) -> Option<(u64, bool)> {
        let e = lock(&self.engine);
        let provider = self.address.provider;
        e.topology().map(|t| (t.epoch(), t.contains(&provider)))
    }

    /// Waits, at most `timeout`, until the provider has answered our
    /// registration, so that it holds our inbox; returns whether it has.
    /// The pull loop registers in the background after
    /// [`start`](Self::start) and again after every reconnection; only
    /// the first registration of a new client matters here: until the
    /// provider has our inbox, it drops mail sent to us. A client that is
    /// about to give out its address for the first time waits for this.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut rx = self.registered.clone();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    /// Stops every task at once. Inbox items handed to the application
    /// whose confirmation was still under way stay at the provider and come
    /// again next time; [`close`](Self::close) avoids that.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Stops like [`shutdown`](Self::shutdown), but first lets the pull loop
    /// confirm to the provider every inbox item it already put on the event
    /// channel (waiting at most `CLOSE_TIMEOUT`). After it returns, nothing
    /// more arrives on the channel: an application that wants every
    /// message it was given drains the channel then.
    pub async fn close(&self) {
        self.cancel.cancel();
        let pull = self.pull.lock().ok().and_then(|mut p| p.take());
        if let Some(h) = pull
            && tokio::time::timeout(CLOSE_TIMEOUT, h).await.is_err()
        {
            warn!("the provider did not confirm the last messages in time; they may come again");
        }
    }

    /// Starts the client: waits for a verified topology that lists our
    /// provider, then runs until [`shutdown`](Self::shutdown); it connects
    /// to the provider and registers in the background
    /// ([`wait_registered`](Self::wait_registered)), retrying while the
    /// provider is unreachable.
    /// Events arrive on the returned channel; the inbox is confirmed to the
    /// provider only once the events are queued there.
    pub async fn start(
        cfg: ClientConfig,
        registry: &Registry,
    ) -> Result<(Client, mpsc::Receiver<ClientEvent>), ClientError> {
        Self::start_with(cfg, registry, None).await
    }

    /// [`Client::start`] with an application that fills idle λ_P slots.
    pub async fn start_with(
        cfg: ClientConfig,
        registry: &Registry,
        filler: Option<Arc<dyn SlotFiller>>,
    ) -> Result<(Client, mpsc::Receiver<ClientEvent>), ClientError> {
        let ClientKeys {
            identity,
            encryption,
        } = ClientKeys::load(&cfg)?;
        let identity = Arc::new(identity);
        let provider = cfg.client.provider;
        let metrics = ClientMetrics::new(registry)?;
        let dcfg = DirectoryClientConfig::pinned(
            &cfg.directory.authorities,
            cfg.directory.threshold,
            cfg.directory.request_timeout,
        )?;
        let dir = Arc::new(DirectoryClient::new(dcfg, registry)?);
        let first = first_topology(&dir, provider).await?;
        let ecfg = EngineConfig {
            max_message_bytes: cfg.messages.max_message_bytes,
            send_queue: cfg.messages.send_queue,
            max_attempts: cfg.messages.max_attempts,
            pull_interval: cfg.messages.pull_interval,
            ..EngineConfig::default()
        };
        let mut routing = RoutingView::new(registry)?;
        let mut engine = Engine::new(identity.node_id(), encryption, provider, ecfg);
        engine.set_topology(Arc::new(routing.apply(
            first.topology(),
            &Default::default(),
            0,
        )));
        let address = engine.address();
        let engine = Arc::new(Mutex::new(engine));

        let provider_addr = provider_address(first.topology(), provider)?;
        let bind = if provider_addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        // Nobody dials a client: the allow-list stays empty. The provider
        // acknowledges our packets with its pull answers, not alone.
        let transport =
            Transport::bind(bind, identity, PeerAllowList::default(), Arc::new(|_| {}))?
                .with_sparse_acks();
        let link = transport.local_addr().ok();
        let egress = Egress::new(
            transport.clone(),
            1024,
            EgressMetrics {
                sent: counter(
                    registry,
                    "loopmix_client_link_packets_total",
                    "Packets written to the provider link",
                )?,
                dropped: counter_vec(
                    registry,
                    "loopmix_client_link_dropped_total",
                    "Packets the provider link could not take, by reason",
                    &["reason"],
                )?,
                links_up: loopmix_net::metrics::gauge(
                    registry,
                    "loopmix_client_link_up",
                    "1 while the packet link to the provider is connected",
                )?,
            },
        );
        let cancel = CancellationToken::new();
        if let Some(listen) = cfg.metrics.listen {
            let listener = loopmix_net::metrics::bind(listen)
                .await
                .map_err(ClientError::io(format!("binding metrics on {listen}")))?;
            let bound = listener
                .local_addr()
                .map_err(ClientError::io("metrics address"))?;
            info!(metrics = %bound, "serving client metrics");
            // Launchers (loopmix-localnet) read the port from here when the
            // config asked for port 0.
            std::fs::create_dir_all(&cfg.client.data_dir)
                .map_err(ClientError::writing(&cfg.client.data_dir))?;
            write_atomic(
                &cfg.client.data_dir.join(METRICS_ADDR_FILE),
                &format!("{bound}\n"),
            )?;
            tokio::spawn(loopmix_net::metrics::serve(
                registry.clone(),
                listener,
                cancel.clone(),
            ));
        }
        let (events_tx, events_rx) = mpsc::channel(256);
        let (registered_tx, registered) = watch::channel(false);
        let shell = Shell {
            engine: engine.clone(),
            dir: dir.clone(),
            egress,
            transport,
            provider,
            metrics: metrics.clone(),
            events: events_tx,
            pull_interval: cfg.messages.pull_interval,
            cancel: cancel.clone(),
            filler,
            routing: Mutex::new(routing),
            registered: registered_tx,
        };
        let pull = shell.spawn_all();
        info!(%address, "client running");
        Ok((
            Client {
                engine,
                address,
                cancel,
                pull: Mutex::new(Some(pull)),
                link,
                registered,
                metrics,
            },
            events_rx,
        ))
    }
}

/// How long [`Client::close`] waits for the last confirmation.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a client with a metrics endpoint writes its bound address.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_atomic(path: &std::path::Path, text: &str) -> Result<(), ClientError> {
    loopmix_net::files::write_atomic(path, text.as_bytes()).map_err(ClientError::writing(path))
}

/// What a pull's outcome means to the pull loop.
#[derive(Debug)]
enum Answer {
    /// A well-formed answer of the connection's shape.
    Messages {
        slots: Vec<provider_control::Slot>,
        layout: SlotLayout,
    },
    /// An error answer (rate limited, busy, not registered).
    Refused(Response),
    /// Broken shape or codec: the provider is at fault.
    Bad(String),
    /// The exchange failed (timeout, connection).
    Failed(ControlError),
}

/// Sorts a pull's outcome; `shape` is the layout of the connection's
/// earlier answers (None before the first).
fn judge(
    outcome: Result<(Response, Option<SlotLayout>), ControlError>,
    shape: Option<SlotLayout>,
) -> Answer {
    match outcome {
        Ok((Response::Messages { slots }, Some(layout))) => match shape {
            Some(s) if s != layout => {
                Answer::Bad(format!("answer layout changed from {s:?} to {layout:?}"))
            }
            _ => Answer::Messages { slots, layout },
        },
        // Unreachable for an answer that decoded; refused all the same.
        Ok((Response::Messages { .. }, None)) => Answer::Bad("answer without a layout".into()),
        Ok((Response::Ok, _)) => Answer::Bad("a pull answered with ok".into()),
        Ok((refused @ Response::Error { .. }, _)) => Answer::Refused(refused),
        Err(ControlError::Codec(e)) => Answer::Bad(format!("malformed answer: {e}")),
        Err(e) => Answer::Failed(e),
    }
}

/// QUIC close code for a provider whose pull answer had the wrong shape.
const BAD_ANSWER: u32 = 17;

/// One pull on a fresh bidirectional stream of `conn`, confirming
/// `confirm` (the first [`provider_control::CONFIRM_SLOTS`]): the answer and
/// the layout it declares, which the caller compares with earlier answers.
/// Bounded by `timeout`.
async fn pull(
    conn: &quinn::Connection,
    confirm: &[u64],
    timeout: Duration,
) -> Result<(Response, Option<SlotLayout>), ControlError> {
    let confirm = confirm
        .iter()
        .copied()
        .take(provider_control::CONFIRM_SLOTS)
        .collect();
    let answer =
        loopmix_net::provider_control::exchange(conn, &Request::Pull { confirm }, timeout).await?;
    let response = Response::decode(&answer, MAX_RESPONSE_BODY)?;
    Ok((response, SlotLayout::of_answer(&answer)))
}

fn provider_address(t: &Topology, provider: NodeId) -> Result<SocketAddr, ClientError> {
    match t.get(&provider) {
        Some(e) => Ok(e.address),
        None => Err(ClientError::ProviderNotListed {
            provider,
            epoch: t.epoch(),
        }),
    }
}

/// Waits (up to a minute) for a verified document that lists our provider.
async fn first_topology(
    dir: &DirectoryClient,
    provider: NodeId,
) -> Result<Arc<VerifiedTopology>, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match dir.fetch_current().await {
            Ok(v) if v.topology().contains(&provider) => return Ok(v),
            Ok(v) => format!("provider {provider} not listed in epoch {}", v.epoch()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(ClientError::NoTopology(last));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Shell {
    engine: Arc<Mutex<Engine>>,
    dir: Arc<DirectoryClient>,
    egress: Egress,
    transport: Transport,
    provider: NodeId,
    metrics: ClientMetrics,
    events: mpsc::Sender<ClientEvent>,
    pull_interval: Duration,
    cancel: CancellationToken,
    filler: Option<Arc<dyn SlotFiller>>,
    routing: Mutex<RoutingView>,
    /// Set once a registration is answered ([`Client::wait_registered`]).
    registered: watch::Sender<bool>,
}

#[derive(Clone, Copy)]
enum Stream {
    Payload,
    Loop,
    Drop,
}

impl Stream {
    fn rate(self, t: &Topology) -> f64 {
        let p = t.params();
        match self {
            Stream::Payload => p.lambda_p_per_s,
            Stream::Loop => p.lambda_l_per_s,
            Stream::Drop => p.lambda_d_per_s,
        }
    }
}

impl Shell {
    /// Spawns every task; returns the pull loop's handle.
    fn spawn_all(self) -> tokio::task::JoinHandle<()> {
        let me = Arc::new(self);
        {
            let (dir, cancel) = (me.dir.clone(), me.cancel.clone());
            tokio::spawn(async move { dir.run(cancel).await });
        }
        tokio::spawn(me.dir.clone().follow_liveness(me.cancel.clone()));
        tokio::spawn(me.clone().follow_topology());
        for s in [Stream::Payload, Stream::Loop, Stream::Drop] {
            tokio::spawn(me.clone().poisson(s));
        }
        tokio::spawn(me.clone().ticks());
        tokio::spawn(me.pull_loop())
    }

    fn topology(&self) -> Option<Arc<VerifiedTopology>> {
        self.dir.current()
    }

    /// Applies every new topology and every new (or expired) signed
    /// liveness list to route choice: the engine gets the topology less the
    /// mixes the network lists down (`RoutingView`, capped per layer).
    async fn follow_topology(self: Arc<Self>) {
        let mut rx = self.dir.subscribe();
        let mut lrx = self.dir.subscribe_liveness();
        // Expiry is checked here too, so a list that stopped coming is
        // dropped on time even between polls; suspects are exported.
        let mut every = tokio::time::interval(Duration::from_secs(2));
        let mut applied: Option<(u64, u64)> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
                r = lrx.changed() => if r.is_err() { return },
                _ = every.tick() => {}
            }
            let Some(doc) = self.dir.current() else {
                continue;
            };
            let live = self.dir.liveness();
            let key = (doc.epoch(), live.as_ref().map_or(0, |l| l.round()));
            let mut routing = match self.routing.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if applied != Some(key) {
                applied = Some(key);
                let down = live.as_ref().map(|l| l.down().clone()).unwrap_or_default();
                let t = routing.apply(doc.topology(), &down, key.1);
                lock(&self.engine).set_topology(Arc::new(t));
                debug!(
                    epoch = key.0,
                    liveness_round = key.1,
                    "routing with topology and liveness list"
                );
            }
            let stats = lock(&self.engine).stats();
            routing.set_suspects(&stats.suspects);
            let avoided = stats
                .routes_avoiding
                .saturating_sub(self.metrics.routes_avoiding.get());
            self.metrics.routes_avoiding.inc_by(avoided);
        }
    }

    /// One Poisson stream. Each packet is built [`BUILD_LEAD`] before its
    /// tick, so it leaves exactly on the tick (the build's cost, which
    /// differs between a drop and a real message, never shows in the
    /// timing) and yet carries whatever was queued until just before it.
    /// (Building right after the previous tick, as before, made a queued
    /// message wait for the tick after next: 2/λ_P on average, not 1/λ_P.)
    async fn poisson(self: Arc<Self>, stream: Stream) {
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut rate = self.topology().map_or(0.0, |t| stream.rate(t.topology()));
        let mut ticker = PoissonTicker::new(&mut rng, rate, Instant::now());
        let mut next: Option<tokio::task::JoinHandle<Option<Outgoing>>> = None;
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let due = ticker.next_deadline();
            let build_at = due.map(|d| d.checked_sub(BUILD_LEAD).unwrap_or(d));
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = check.tick() => {
                    let r = self.topology().map_or(0.0, |t| stream.rate(t.topology()));
                    if r != rate {
                        rate = r;
                        ticker.set_rate(&mut rng, rate, Instant::now());
                    }
                }
                _ = sleep_until(build_at), if build_at.is_some() && next.is_none() => {
                    next = Some(self.clone().build(stream));
                }
                _ = sleep_until(due), if due.is_some() && next.is_some() => {
                    while ticker.poll(&mut rng, Instant::now()).is_some() {
                        let building = next.take().unwrap_or_else(|| self.clone().build(stream));
                        if let Some(out) = building.await.ok().flatten() {
                            self.send(out);
                        }
                    }
                }
            }
        }
        if let Some(n) = next {
            n.abort();
        }
    }

    fn build(self: Arc<Self>, stream: Stream) -> tokio::task::JoinHandle<Option<Outgoing>> {
        tokio::task::spawn_blocking(move || {
            let mut e = lock(&self.engine);
            match stream {
                Stream::Payload => {
                    let now = Instant::now();
                    if let Some(f) = self.filler.as_ref().filter(|_| !e.has_queued()) {
                        f.fill(&mut e, now);
                    }
                    e.real_or_drop(now)
                }
                Stream::Loop => e.loop_packet(Instant::now()),
                Stream::Drop => e.drop_packet(),
            }
        })
    }

    fn send(&self, out: Outgoing) {
        let label = match out.kind {
            OutKind::Real => "real",
            OutKind::Retransmission => "retransmission",
            OutKind::Reply => "reply",
            OutKind::Drop => "drop",
            OutKind::Loop => "loop",
        };
        self.metrics.sent.with_label_values(&[label]).inc();
        // Every packet enters the mixnet at our provider, whatever its
        // Sphinx first hop says (a reply block's first hop is our provider).
        let Some(addr) = self
            .topology()
            .and_then(|t| t.topology().get(&self.provider).map(|e| e.address))
        else {
            return;
        };
        if out.first_hop != self.provider {
            debug!(first_hop = %out.first_hop.short(), "packet not starting at our provider; dropped");
            return;
        }
        if let Some(queued) = out.queued_at {
            self.metrics
                .slot_wait
                .observe(queued.elapsed().as_secs_f64());
        }
        let pkt = OutPacket {
            key_epoch: out.key_epoch,
            packet: out.packet,
        };
        if let Err(r) = self.egress.send(self.provider, addr, pkt) {
            debug!(reason = r.label(), "provider link refused a packet");
        }
    }

    async fn ticks(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let events = lock(&self.engine).tick(Instant::now());
            if !self.forward(events).await {
                return;
            }
        }
    }

    /// Hands engine events to the application; `false` once it has gone.
    async fn forward(&self, events: Vec<Event>) -> bool {
        for ev in events {
            let out = match ev {
                Event::Received {
                    message,
                    body,
                    reply,
                } => {
                    self.metrics.received.inc();
                    ClientEvent::Received {
                        message,
                        body,
                        reply,
                    }
                }
                Event::Delivered { message } => {
                    self.metrics.delivered.inc();
                    ClientEvent::Delivered { message }
                }
                Event::Failed { message, reason } => {
                    self.metrics.failed.inc();
                    ClientEvent::Failed { message, reason }
                }
                Event::LoopReturned { rtt } => {
                    self.metrics.loop_rtt.observe(rtt.as_secs_f64());
                    continue;
                }
                Event::LoopLost => {
                    self.metrics.loops_lost.inc();
                    continue;
                }
            };
            if self.events.send(out).await.is_err() {
                return false;
            }
        }
        if let Some(r) = lock(&self.engine).stats().loop_return_ratio {
            self.metrics.loop_return_ratio.set(r);
        }
        true
    }

    /// Keeps a control connection to the provider, registers, and pulls
    /// once every `pull_interval`, whether mail comes or not. Each pull
    /// carries the confirmations of what the previous answer brought (once
    /// the application has it): no separate confirm, no extra pull after a
    /// full answer, so every request on the link has the same size and the
    /// same schedule (`docs/PROTOCOL.md` §6.6). An answer of another shape
    /// than the connection's first (or not a pull answer at all) drops the
    /// connection, is counted as `bad_answer`, and the next tick reconnects.
    async fn pull_loop(self: Arc<Self>) {
        let timeout = Duration::from_secs(10);
        let mut conn: Option<quinn::Connection> = None;
        // The shape of this connection's answers, from its first answer.
        let mut shape: Option<SlotLayout> = None;
        let mut every = tokio::time::interval(self.pull_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        // A provider that keeps answering wrongly is logged once, until it
        // answers well again (the metric counts every time).
        let mut warned_bad = false;
        // Seqs the application has and the provider has not yet been told
        // of. A pull that is answered confirms them all, so this holds one
        // answer's slots at most (≤ CONFIRM_SLOTS); after a failed pull the
        // same seqs go again.
        let mut unconfirmed: Vec<u64> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    // Items the application already has must not come
                    // again: one more regular pull carries their
                    // confirmation (bounded by `timeout`). What it brings
                    // stays at the provider for next time.
                    if let (Some(c), false) = (conn.as_ref(), unconfirmed.is_empty()) {
                        let _ = pull(c, &unconfirmed, timeout).await;
                    }
                    return;
                }
                _ = every.tick() => {}
            }
            if conn.as_ref().is_none_or(|c| c.close_reason().is_some()) {
                shape = None;
                conn = match self.connect_and_register(timeout).await {
                    Ok(c) => {
                        self.registered.send_replace(true);
                        warned = false;
                        Some(c)
                    }
                    Err(e) => {
                        self.metrics.pulls.with_label_values(&["unreachable"]).inc();
                        if !warned {
                            warn!(error = %e, "provider unreachable; retrying");
                            warned = true;
                        }
                        None
                    }
                };
            }
            let Some(c) = conn.clone() else { continue };
            let bad = match judge(pull(&c, &unconfirmed, timeout).await, shape) {
                Answer::Bad(why) => Some(why),
                Answer::Messages { slots, layout } => {
                    shape = Some(layout);
                    warned_bad = false;
                    self.metrics.pulls.with_label_values(&["ok"]).inc();
                    // The provider deletes what this pull confirmed.
                    unconfirmed.clear();
                    if slots.is_empty() {
                        continue;
                    }
                    let mut events = Vec::new();
                    {
                        let mut e = lock(&self.engine);
                        let now = Instant::now();
                        for s in &slots {
                            // Items seen before (a confirmation was
                            // lost) are duplicates to the engine;
                            // confirm them again.
                            events.extend(e.on_inbox(s.identifier, &s.data, now));
                            if !unconfirmed.contains(&s.seq)
                                && unconfirmed.len() < provider_control::CONFIRM_SLOTS
                            {
                                unconfirmed.push(s.seq);
                            }
                        }
                    }
                    // Confirmed by the next pull only: by then the
                    // events are with the application.
                    if !self.forward(events).await {
                        return;
                    }
                    None
                }
                Answer::Refused(other) => {
                    // Refused (rate limited, busy): keep the connection and
                    // try again at the next tick; re-register if the
                    // provider no longer knows us.
                    self.metrics.pulls.with_label_values(&["refused"]).inc();
                    debug!(answer = ?other, "pull refused");
                    if matches!(other, Response::Error { code, .. } if code == provider_control::code::NOT_REGISTERED)
                    {
                        conn = None;
                    }
                    None
                }
                Answer::Failed(e) => {
                    self.metrics.pulls.with_label_values(&["failed"]).inc();
                    debug!(error = %e, "pull failed");
                    conn = None;
                    None
                }
            };
            if let Some(why) = bad {
                // A provider that breaks the constant shape (or the codec)
                // is not talked to on that connection again.
                self.metrics.pulls.with_label_values(&["bad_answer"]).inc();
                if !warned_bad {
                    warn!(reason = %why, "provider sent a wrong-shaped answer; disconnecting");
                    warned_bad = true;
                }
                c.close(BAD_ANSWER.into(), b"wrong-shaped answer");
                conn = None;
            }
        }
    }

    async fn connect_and_register(&self, timeout: Duration) -> anyhow::Result<quinn::Connection> {
        let addr = self
            .topology()
            .and_then(|t| t.topology().get(&self.provider).map(|e| e.address))
            .context("provider not in the topology")?;
        let conn = self.transport.connect(self.provider, addr).await?;
        match provider_request(&conn, &Request::Register, timeout).await? {
            Response::Ok => Ok(conn),
            other => bail!("registration refused: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopmix_core::provider_control::{CodecError, Slot};

    fn layout(slots: usize) -> SlotLayout {
        SlotLayout::new(slots, 32).unwrap()
    }

    fn messages(n: u64) -> Response {
        Response::Messages {
            slots: (0..n)
                .map(|seq| Slot {
                    seq,
                    identifier: [0; 16],
                    data: vec![1],
                })
                .collect(),
        }
    }

    #[test]
    fn answers_of_another_shape_or_kind_are_bad() {
        // The first answer sets the shape; the same shape is fine.
        assert!(matches!(
            judge(Ok((messages(2), Some(layout(8)))), None),
            Answer::Messages { slots, layout: l } if slots.len() == 2 && l == layout(8)
        ));
        assert!(matches!(
            judge(Ok((messages(0), Some(layout(8)))), Some(layout(8))),
            Answer::Messages { .. }
        ));
        // Another layout on the same connection: a provider that could
        // signal something through the size.
        assert!(matches!(
            judge(Ok((messages(1), Some(layout(9)))), Some(layout(8))),
            Answer::Bad(_)
        ));
        assert!(matches!(
            judge(Ok((Response::Ok, None)), Some(layout(8))),
            Answer::Bad(_)
        ));
        assert!(matches!(
            judge(
                Err(ControlError::Codec(CodecError::NonZeroPadding)),
                Some(layout(8))
            ),
            Answer::Bad(_)
        ));
        // Error answers and broken exchanges are not the provider's shape.
        assert!(matches!(
            judge(
                Ok((Response::error(provider_control::code::BUSY, "busy"), None)),
                Some(layout(8))
            ),
            Answer::Refused(_)
        ));
        assert!(matches!(
            judge(Err(ControlError::Timeout), None),
            Answer::Failed(_)
        ));
    }
}
