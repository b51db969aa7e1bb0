//! Streams over one-packet messages, sans-IO (PROTOCOL.md 7).
//!
//! One [`Mux`] runs in the SOCKS5 client (role [`Role::Client`], sessions
//! with one exit, one per [`IsolationKey`]) and one in the exit service
//! (role [`Role::Exit`], one session per client session). The I/O shells
//! call in with bytes, frames and the time, and take [`MuxEvent`]s out;
//! the runtime calls [`Mux::fill_client`] / [`Mux::fill_exit`] when a λ_P
//! slot has nothing queued, so a packet carries the freshest
//! acknowledgements and every stream gets its turn.
//!
//! * Client → exit messages are ordinary messages to the exit's address
//!   (acknowledged hop by hop by the engine's SURB-ACKs) that also carry
//!   reply blocks for the session's pool.
//! * Exit → client messages go over those reply blocks, one per packet;
//!   the exit never learns the client's address.
//! * Both directions use the same reliable stream: segments, a window,
//!   cumulative + selective acks, RTT-derived retransmission timeouts.
//! * Optimistic data (Tor's): a client stream does not wait for OPENED
//!   to send. Its first [`OPTIMISTIC_SEGMENTS`] segments may go before the
//!   answer, each in a message that also carries the stream's OPEN, so the
//!   exit never sees such DATA before the OPEN it belongs to. The exit
//!   holds them in the stream's reorder buffer while it connects, hands
//!   them to the target's socket after [`MuxEvent::Connect`] succeeds, and
//!   drops them with the stream if it fails. A request written at once
//!   thus costs one round trip, not two.
//! * Reply-block supply: the exit reports in every message how many blocks
//!   it holds and how many it would like; the client keeps
//!   `held + in flight ≥ want + margin` (at least a small reserve while
//!   streams are open, and a keep-alive grant if the exit falls silent).
//! * Stream isolation (Tor's `IsolateSOCKSAuth`): each isolation key (the
//!   SOCKS5 username and password) gets its own session: its own random
//!   [`SessionId`], its own reply blocks, its own revocations. Nothing in
//!   one session's messages names another, so the exit cannot link them.
//!   A session with no streams for [`StreamConfig::session_idle`] is
//!   closed; the next stream of its key starts a new one. A session
//!   opened [`StreamConfig::session_max_age`] ago takes no new streams
//!   (Tor's `MaxCircuitDirtiness`): the key moves to a new session, and
//!   the old one closes shortly after its last stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use loopmix_core::e2e::{ClientAddress, MAX_REPLY_BLOCKS, ReplyBlock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::frame::{
    ACK_LEN, BlockTag, DATA_OVERHEAD, Frame, HEADER_LEN, MAX_OPEN_LEN, MAX_REVOKE_TAGS, Message,
    SessionId, Target,
};
use super::recv::Receiver;
use super::send::{Rtt, Sender};
use crate::engine::Engine;
use crate::engine::block_tag;

/// SOCKS5 reply codes (RFC 1928 §6), also used as stream error codes.
pub mod code {
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Exit,
}

/// Limits and timers. Defaults suit the presets of loopmix-localnet.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Segments in flight per stream and direction, and the reorder window.
    pub window: u16,
    /// Bytes buffered per stream and direction (unsent + unacknowledged).
    pub buffer: usize,
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Transmissions of one segment before the stream is reset.
    pub max_sends: u32,
    /// A stream with nothing acknowledged or received for this long is reset.
    pub idle_timeout: Duration,
    /// The client gives up on an OPEN unanswered this long.
    pub open_timeout: Duration,
    /// Streams per session at most.
    pub max_streams: usize,
    /// Sessions at most (exit: of all clients; client: isolation keys with
    /// a session at once), and reply blocks held per session at most.
    pub max_sessions: usize,
    pub max_blocks: usize,
    /// Exit: a session not heard from for this long is dropped.
    pub session_timeout: Duration,
    /// Client: reply blocks kept at the exit while streams are open.
    pub reserve_blocks: usize,
    /// Client: a session without streams for this long is closed; its
    /// key's next stream starts a new session (new id, new reply blocks).
    pub session_idle: Duration,
    /// Client: a session opened this long ago takes no new streams: its
    /// key's next stream starts a new session, while the streams already
    /// in it carry on (Tor's `MaxCircuitDirtiness`). Without it a key that
    /// is never idle would keep one session, linkable at the exit, forever.
    pub session_max_age: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            window: 64,
            buffer: 256 * 1024,
            min_rto: Duration::from_millis(1000),
            max_rto: Duration::from_secs(30),
            max_sends: 12,
            idle_timeout: Duration::from_secs(120),
            open_timeout: Duration::from_secs(60),
            max_streams: 256,
            max_sessions: 256,
            max_blocks: 256,
            session_timeout: Duration::from_secs(180),
            reserve_blocks: 4,
            session_idle: DEFAULT_SESSION_IDLE,
            session_max_age: DEFAULT_SESSION_MAX_AGE,
        }
    }
}

/// Client: how long a session may stay without streams before its key's
/// next stream gets a new one (Tor's `MaxCircuitDirtiness` is also ten
/// minutes).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(600);

/// Client: how long a retired session (see `session_max_age`) stays after
/// its last stream, so that the exit's answers to its last frames (a FIN's
/// ACK, a repeated answer) still find it.
const RETIRED_LINGER: Duration = Duration::from_secs(30);

/// Client: how long a session takes new streams (Tor's
/// `MaxCircuitDirtiness`, ten minutes).
pub const DEFAULT_SESSION_MAX_AGE: Duration = Duration::from_secs(600);

/// What separates a SOCKS5 client's streams into sessions: the RFC 1929
/// username and password, taken as they are (never checked, never
/// logged: `Debug` does not show them). No credentials and an empty
/// username with an empty password are the same key, as in Tor.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct IsolationKey(Option<(Vec<u8>, Vec<u8>)>);

impl IsolationKey {
    /// The key of streams without credentials.
    pub const NONE: Self = Self(None);

    pub fn credentials(username: Vec<u8>, password: Vec<u8>) -> Self {
        if username.is_empty() && password.is_empty() {
            Self::NONE
        } else {
            Self(Some((username, password)))
        }
    }
}

impl std::fmt::Debug for IsolationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("IsolationKey(none)"),
            Some(_) => f.write_str("IsolationKey(credentials)"),
        }
    }
}

/// Client: tags of the reply blocks granted per session that are
/// remembered for revocations (more than a pool holds, by far).
const MAX_GRANTED_TAGS: usize = 1024;

/// Segments of a stream that may be sent before the exit answers its OPEN
/// (sequence numbers `0..OPTIMISTIC_SEGMENTS`), and that the exit holds
/// while it connects; the rest waits for OPENED. Sixteen segments (each at
/// most one packet, under 2 KiB with the default payload) carry any HTTP
/// request head or TLS ClientHello, and bound what a stranger can park at
/// the exit for a stream it will never connect. Part of the protocol
/// (PROTOCOL.md 7.3): both ends must agree.
pub const OPTIMISTIC_SEGMENTS: u32 = 16;

/// Client: targets remembered per session as opened (see
/// [`Mux::opened_before`]).
const MAX_OPENED_TARGETS: usize = 64;

/// One stream, named by its session and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub session: SessionId,
    pub stream: u32,
}

/// What the I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// Client: the exit connected the stream.
    Opened(StreamKey),
    /// Client: the exit refused or failed the stream (a SOCKS5 code).
    Refused(StreamKey, u8),
    /// Exit: connect to `target` and call [`Mux::connected`].
    Connect(StreamKey, Target),
    /// In-order bytes for the application's socket.
    Data(StreamKey, Vec<u8>),
    /// The peer will send no more: shut the socket's write half.
    Fin(StreamKey),
    /// The stream is gone (peer reset, timeout, failure): close the socket.
    Reset(StreamKey, u8),
    /// Send-buffer room freed: the socket reader may push again.
    Room(StreamKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Client: OPEN sent (or to send), no answer yet.
    Opening {
        target: Target,
        last_sent: Option<Instant>,
        since: Instant,
    },
    /// Exit: connecting to the target; DATA that arrives is held.
    Connecting,
    Open,
}

struct Stream {
    state: State,
    sender: Sender,
    receiver: Receiver,
    /// Bytes handed to the application and not yet written by it.
    unwritten: usize,
    last_progress: Instant,
}

impl Stream {
    fn new(cfg: &StreamConfig, state: State, now: Instant) -> Self {
        Self {
            state,
            sender: Sender::new(
                cfg.buffer,
                cfg.window,
                Rtt::new(cfg.min_rto, cfg.max_rto),
                cfg.max_sends,
            ),
            receiver: Receiver::new(cfg.window),
            unwritten: 0,
            last_progress: now,
        }
    }

    /// Client: the exit answered (OPENED, or data that overtook it): new
    /// segments are no longer limited. The target opened, if the stream
    /// was still opening.
    fn mark_open(&mut self, now: Instant) -> Option<Target> {
        if !matches!(self.state, State::Opening { .. }) {
            return None;
        }
        let State::Opening { target, .. } = std::mem::replace(&mut self.state, State::Open) else {
            return None;
        };
        self.sender.lift_limit();
        self.last_progress = now;
        Some(target)
    }

    /// Whether a segment of ours would go now. A stream the exit is still
    /// connecting has nothing of its own to send yet; an opening client
    /// stream sends optimistic data (within its sender's limit).
    fn data_due(&self, now: Instant) -> bool {
        self.state != State::Connecting && self.sender.wants_to_send(now)
    }

    /// Whether an ACK is due. The exit does not acknowledge optimistic data
    /// while it connects: the ACK rides with the OPENED instead of costing
    /// a reply of its own.
    fn ack_due(&self) -> bool {
        self.receiver.ack_due && self.state != State::Connecting
    }

    /// The window we advertise: what the reorder buffer and the
    /// application's unwritten bytes leave free (in ~1 KiB segments).
    fn window(&self) -> u16 {
        let used = self.receiver.held() + self.unwritten.div_ceil(1024);
        let used = u16::try_from(used).unwrap_or(u16::MAX);
        self.receiver.max_window().saturating_sub(used)
    }

    fn ack_frame(&mut self, stream: u32) -> Frame {
        self.receiver.ack_due = false;
        let (next, sack) = self.receiver.ack();
        Frame::Ack {
            stream,
            next,
            sack,
            window: self.window(),
        }
    }
}

struct Session {
    id: SessionId,
    streams: BTreeMap<u32, Stream>,
    /// Frames that are not part of a stream's reliable data.
    control: VecDeque<Frame>,
    /// Round-robin cursor: the stream served last.
    cursor: u32,
    /// Recently closed streams and how they ended, so late or repeated
    /// frames get the same answer again (answers are not reliable; a
    /// repeated OPEN or DATA is how the peer asks again).
    closed: VecDeque<(u32, Tomb)>,
    last_heard: Instant,
    /// Exit: the pool of reply blocks, oldest first; the highest grant
    /// count seen.
    pool: VecDeque<ReplyBlock>,
    grants_seen: u32,
    /// Client: grants sent; the exit's last report.
    grants_sent: u32,
    reported_held: u16,
    reported_want: u16,
    reported_seen: u32,
    last_reply: Option<Instant>,
    last_grant: Option<Instant>,
    refill_turn: bool,
    /// Client: tags of the reply blocks granted in this session, newest
    /// last, so a revocation goes to the session holding the block.
    granted: VecDeque<BlockTag>,
    /// Client: the last time the session had streams (or was opened).
    busy_at: Instant,
    /// Client: when it was opened (it takes new streams for
    /// `session_max_age`), and whether its key has moved on to a newer
    /// session (then it closes once its last stream has).
    opened_at: Instant,
    retired: bool,
    /// Client: targets the exit opened in this session, newest last (only
    /// this session's: another session's would link the two).
    opened_targets: VecDeque<Target>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tomb {
    Refused(u8),
    Reset(u8),
    /// Both FINs delivered; `next` is what we last acknowledged.
    Done {
        next: u32,
    },
}

const MAX_CLOSED: usize = 1024;
const MAX_CONTROL: usize = 1024;

impl Session {
    fn new(id: SessionId, now: Instant) -> Self {
        Self {
            id,
            streams: BTreeMap::new(),
            control: VecDeque::new(),
            cursor: 0,
            closed: VecDeque::new(),
            last_heard: now,
            pool: VecDeque::new(),
            grants_seen: 0,
            grants_sent: 0,
            reported_held: 0,
            reported_want: 0,
            reported_seen: 0,
            last_reply: None,
            last_grant: None,
            refill_turn: false,
            granted: VecDeque::new(),
            busy_at: now,
            opened_at: now,
            retired: false,
            opened_targets: VecDeque::new(),
        }
    }

    /// Client: the exit opened `target` for this session.
    fn remember(&mut self, target: Target) {
        self.opened_targets.retain(|t| *t != target);
        if self.opened_targets.len() >= MAX_OPENED_TARGETS {
            self.opened_targets.pop_front();
        }
        self.opened_targets.push_back(target);
    }

    /// Client: the exit refused `target`: the next stream to it waits for
    /// the answer again.
    fn forget(&mut self, target: &Target) {
        self.opened_targets.retain(|t| t != target);
    }

    fn key(&self, stream: u32) -> StreamKey {
        StreamKey {
            session: self.id,
            stream,
        }
    }

    fn queue_control(&mut self, f: Frame) {
        if self.control.len() < MAX_CONTROL && !self.control.contains(&f) {
            self.control.push_back(f);
        }
    }

    fn close(&mut self, stream: u32, tomb: Tomb) -> bool {
        if self.streams.remove(&stream).is_none() {
            return false;
        }
        if self.closed.len() >= MAX_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((stream, tomb));
        true
    }

    /// Closes `stream` if both directions are finished.
    fn close_if_done(&mut self, stream: u32) {
        if let Some(s) = self.streams.get(&stream)
            && s.sender.done()
            && s.receiver.fin_delivered()
        {
            let next = s.receiver.ack().0;
            self.close(stream, Tomb::Done { next });
        }
    }

    /// A frame for a stream we do not have: answer as the stream ended,
    /// or RESET a stream we never knew.
    fn late_frame(&mut self, f: &Frame) {
        let id = f.stream();
        let tomb = self
            .closed
            .iter()
            .rev()
            .find(|(s, _)| *s == id)
            .map(|(_, t)| *t);
        let answer = match (tomb, f) {
            (_, Frame::Reset { .. }) => None,
            (Some(Tomb::Refused(code)), Frame::Open { .. }) => {
                Some(Frame::Refused { stream: id, code })
            }
            (Some(Tomb::Done { next }), Frame::Data { .. }) => Some(Frame::Ack {
                stream: id,
                next,
                sack: 0,
                window: 0,
            }),
            (Some(Tomb::Done { .. }), _) => None,
            (Some(Tomb::Refused(code) | Tomb::Reset(code)), _) => {
                Some(Frame::Reset { stream: id, code })
            }
            (None, Frame::Data { .. } | Frame::Ack { .. }) => Some(Frame::Reset {
                stream: id,
                code: code::GENERAL_FAILURE,
            }),
            (None, _) => None,
        };
        if let Some(a) = answer {
            self.queue_control(a);
        }
    }

    /// Ids in round-robin order, starting after the cursor.
    fn rr_order(&self) -> Vec<u32> {
        let after = self
            .streams
            .range(self.cursor.saturating_add(1)..)
            .map(|(k, _)| *k);
        let before = self.streams.range(..=self.cursor).map(|(k, _)| *k);
        after.chain(before).collect()
    }

    fn has_something(&self, now: Instant) -> bool {
        !self.control.is_empty()
            || self.streams.values().any(|s| {
                s.ack_due() || s.data_due(now) || matches!(&s.state, State::Opening { .. })
            })
    }

    /// Exit: reply blocks this session could use now.
    fn want(&self, now: Instant, mss: usize, cap: usize) -> usize {
        let mut n = self.control.len().min(4);
        for s in self.streams.values() {
            n += usize::from(s.ack_due());
            if s.state == State::Open {
                n += s.sender.backlog(now, mss);
            }
        }
        n.min(cap)
    }
}

/// Counters and gauges (names in PROTOCOL.md 7.5).
#[derive(Clone)]
pub struct StreamMetrics {
    pub streams_open: IntGauge,
    pub opens: IntCounterVec,
    pub resets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub retransmissions: IntCounter,
    pub bad: IntCounterVec,
    pub sessions: IntGauge,
    /// Sessions started: at the exit, a session id it was not holding; at
    /// the client, a new session for an isolation key.
    pub sessions_opened: IntCounter,
    /// Client: sessions (isolation keys in use) now.
    pub client_sessions: IntGauge,
    pub blocks: IntGauge,
    /// Reply blocks revoked because their routes cross a mix listed down:
    /// `sent` by the client, `dropped` from the exit's pool.
    pub blocks_revoked: IntCounterVec,
}

impl StreamMetrics {
    pub fn new(r: &Registry) -> Result<Self, loopmix_net::metrics::MetricError> {
        use loopmix_net::metrics::{counter, counter_vec, gauge};
        Ok(Self {
            streams_open: gauge(r, "loopmix_streams_open", "Streams open now")?,
            opens: counter_vec(
                r,
                "loopmix_stream_opens_total",
                "Stream open attempts by result (ok, refused, failed, timeout)",
                &["result"],
            )?,
            resets: counter_vec(
                r,
                "loopmix_stream_resets_total",
                "Streams ended abnormally, by reason",
                &["reason"],
            )?,
            bytes: counter_vec(
                r,
                "loopmix_stream_bytes_total",
                "Stream payload bytes, by direction (sent = taken from local sockets)",
                &["direction"],
            )?,
            retransmissions: counter(
                r,
                "loopmix_stream_retransmissions_total",
                "Stream segments sent again after their timeout",
            )?,
            blocks_revoked: counter_vec(
                r,
                "loopmix_stream_reply_blocks_revoked_total",
                "Reply blocks revoked because their route crosses a mix the network lists down: sent (client) or dropped from the pool (exit)",
                &["action"],
            )?,
            bad: counter_vec(
                r,
                "loopmix_stream_bad_messages_total",
                "Stream messages or frames refused, by reason",
                &["reason"],
            )?,
            sessions: gauge(r, "loopmix_exit_sessions", "Client sessions at this exit")?,
            sessions_opened: counter(
                r,
                "loopmix_stream_sessions_opened_total",
                "Stream sessions started (exit: a session id it did not hold; SOCKS5 proxy: a new session for an isolation key)",
            )?,
            client_sessions: gauge(
                r,
                "loopmix_socks_sessions",
                "SOCKS5 proxy: sessions with the exit now (one per isolation key in use)",
            )?,
            blocks: gauge(
                r,
                "loopmix_exit_reply_blocks",
                "Reply blocks held for all sessions",
            )?,
        })
    }
}

pub struct Mux {
    role: Role,
    cfg: StreamConfig,
    sessions: HashMap<SessionId, Session>,
    /// Exit: sessions in round-robin order for reply slots.
    order: VecDeque<SessionId>,
    /// Client: the exit; the session of each isolation key; where new
    /// session ids come from.
    exit: Option<ClientAddress>,
    isolation: HashMap<IsolationKey, SessionId>,
    rng: StdRng,
    next_stream: u32,
    events: Vec<MuxEvent>,
    metrics: StreamMetrics,
}

/// Bytes an OPEN or control frame may need; space kept for them.
const CONTROL_ROOM: usize = 2 * ACK_LEN;

impl Mux {
    /// The SOCKS5 side: sessions with `exit`, their ids drawn from a
    /// generator seeded from `rng` (the caller's randomness, so tests can
    /// replay a run exactly).
    pub fn client<R: rand::Rng + ?Sized>(
        exit: ClientAddress,
        cfg: StreamConfig,
        metrics: StreamMetrics,
        rng: &mut R,
    ) -> Self {
        let mut m = Self::new(Role::Client, cfg, metrics, StdRng::from_seed(rng.random()));
        m.exit = Some(exit);
        m
    }

    pub fn exit(cfg: StreamConfig, metrics: StreamMetrics) -> Self {
        // The exit draws nothing at random.
        Self::new(Role::Exit, cfg, metrics, StdRng::seed_from_u64(0))
    }

    fn new(role: Role, cfg: StreamConfig, metrics: StreamMetrics, rng: StdRng) -> Self {
        Self {
            role,
            cfg,
            sessions: HashMap::new(),
            order: VecDeque::new(),
            exit: None,
            isolation: HashMap::new(),
            rng,
            next_stream: 1,
            events: Vec::new(),
            metrics,
        }
    }

    pub fn take_events(&mut self) -> Vec<MuxEvent> {
        std::mem::take(&mut self.events)
    }

    fn bad(&self, reason: &str) {
        self.metrics.bad.with_label_values(&[reason]).inc();
    }

    fn update_gauges(&self) {
        let streams: usize = self.sessions.values().map(|s| s.streams.len()).sum();
        self.metrics.streams_open.set(streams as i64);
        if self.role == Role::Exit {
            self.metrics.sessions.set(self.sessions.len() as i64);
            let blocks: usize = self.sessions.values().map(|s| s.pool.len()).sum();
            self.metrics.blocks.set(blocks as i64);
        } else {
            self.metrics.client_sessions.set(self.sessions.len() as i64);
        }
    }

    /// Client: the session of `key`'s streams, started if it has none.
    /// When `max_sessions` keys have one, the longest-idle session without
    /// streams is closed to make room; if every one has streams: `None`.
    pub fn session_for(&mut self, key: &IsolationKey, now: Instant) -> Option<SessionId> {
        if let Some(id) = self.isolation.get(key).copied()
            && let Some(session) = self.sessions.get_mut(&id)
        {
            if now.saturating_duration_since(session.opened_at) < self.cfg.session_max_age {
                return Some(id);
            }
            // Too old for new streams: the key gets a new session below,
            // and this one closes with its last stream.
            session.retired = true;
            self.isolation.remove(key);
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            let victim = self
                .sessions
                .values()
                .filter(|s| s.streams.is_empty())
                .min_by_key(|s| s.busy_at)
                .map(|s| s.id)?;
            self.drop_session(victim);
        }
        let id = loop {
            let id: SessionId = self.rng.random();
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.sessions.insert(id, Session::new(id, now));
        self.order.push_back(id);
        self.isolation.insert(key.clone(), id);
        self.metrics.sessions_opened.inc();
        self.update_gauges();
        Some(id)
    }

    fn drop_session(&mut self, id: SessionId) {
        self.sessions.remove(&id);
        self.order.retain(|x| *x != id);
        self.isolation.retain(|_, s| *s != id);
    }

    /// Whether `id` is one of this mux's sessions (how an application that
    /// shares the client with streams tells their messages from its own).
    pub fn has_session(&self, id: &SessionId) -> bool {
        self.sessions.contains_key(id)
    }

    pub fn streams_open(&self) -> usize {
        self.sessions.values().map(|s| s.streams.len()).sum()
    }

    /// Client: whether `key` is still waiting for the exit's answer and
    /// its session has had its target opened before (and not refused
    /// since). A SOCKS5 proxy may then answer its client at once, so the
    /// request travels with the OPEN as optimistic data; should the exit
    /// refuse this time, the stream fails like one reset.
    pub fn opened_before(&self, key: &StreamKey) -> bool {
        let Some(session) = self.sessions.get(&key.session) else {
            return false;
        };
        match session.streams.get(&key.stream).map(|s| &s.state) {
            Some(State::Opening { target, .. }) => session.opened_targets.contains(target),
            _ => false,
        }
    }

    fn stream_mut(&mut self, key: &StreamKey) -> Option<&mut Stream> {
        self.sessions
            .get_mut(&key.session)?
            .streams
            .get_mut(&key.stream)
    }

    // ---- the application side ----

    /// Client: opens a stream to `target` in `key`'s session; its OPEN
    /// leaves in the next slot.
    pub fn open(
        &mut self,
        key: &IsolationKey,
        target: Target,
        now: Instant,
    ) -> Result<StreamKey, &'static str> {
        if self.exit.is_none() {
            return Err("not a client");
        }
        let id = self.session_for(key, now).ok_or("too many sessions")?;
        let cfg = self.cfg.clone();
        let stream = self.next_stream;
        let session = self.sessions.get_mut(&id).ok_or("no session")?;
        if session.streams.len() >= cfg.max_streams {
            return Err("too many streams");
        }
        session.busy_at = now;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        let state = State::Opening {
            target,
            last_sent: None,
            since: now,
        };
        let mut s = Stream::new(&cfg, state, now);
        // Optimistic data: no more than the exit holds before it connects.
        s.sender
            .limit_new(OPTIMISTIC_SEGMENTS.min(u32::from(cfg.window)));
        session.streams.insert(stream, s);
        self.update_gauges();
        Ok(StreamKey {
            session: id,
            stream,
        })
    }

    /// Exit: the connect for `key` finished (`Err(code)`: a SOCKS5 code).
    /// On success, the optimistic data held for the stream comes out as
    /// [`MuxEvent::Data`] (and [`MuxEvent::Fin`]), in order; on failure it
    /// goes with the stream.
    pub fn connected(&mut self, key: StreamKey, result: Result<(), u8>, now: Instant) {
        let Some(session) = self.sessions.get_mut(&key.session) else {
            return;
        };
        let Some(s) = session.streams.get_mut(&key.stream) else {
            return;
        };
        if s.state != State::Connecting {
            return;
        }
        match result {
            Ok(()) => {
                s.state = State::Open;
                s.last_progress = now;
                let held = s.receiver.release();
                if !held.data.is_empty() {
                    s.unwritten = s.unwritten.saturating_add(held.data.len());
                    self.metrics
                        .bytes
                        .with_label_values(&["received"])
                        .inc_by(held.data.len() as u64);
                    self.events.push(MuxEvent::Data(key, held.data));
                }
                if held.fin {
                    self.events.push(MuxEvent::Fin(key));
                }
                session.queue_control(Frame::Opened { stream: key.stream });
                self.metrics.opens.with_label_values(&["ok"]).inc();
            }
            Err(code) => {
                session.close(key.stream, Tomb::Refused(code));
                session.queue_control(Frame::Refused {
                    stream: key.stream,
                    code,
                });
                self.metrics.opens.with_label_values(&["refused"]).inc();
            }
        }
        self.update_gauges();
    }

    /// Bytes from the local socket; how many were taken (the rest waits
    /// for a [`MuxEvent::Room`]).
    pub fn push(&mut self, key: &StreamKey, bytes: &[u8]) -> Option<usize> {
        let s = self.stream_mut(key)?;
        let n = s.sender.push(bytes);
        self.metrics
            .bytes
            .with_label_values(&["sent"])
            .inc_by(n as u64);
        Some(n)
    }

    /// The local socket reached EOF.
    pub fn finish(&mut self, key: &StreamKey) {
        if let Some(s) = self.stream_mut(key) {
            s.sender.finish();
        }
    }

    /// The application wrote `n` of the bytes it was given.
    pub fn written(&mut self, key: &StreamKey, n: usize) {
        if let Some(s) = self.stream_mut(key) {
            let before = s.window();
            s.unwritten = s.unwritten.saturating_sub(n);
            // Tell the peer when the window reopens from below half.
            let half = s.receiver.max_window() / 2;
            if before < half && s.window() >= half {
                s.receiver.ack_due = true;
            }
        }
    }

    /// The local socket failed or the application gave up: RESET the peer.
    pub fn abort(&mut self, key: &StreamKey, code: u8, reason: &str) {
        let Some(session) = self.sessions.get_mut(&key.session) else {
            return;
        };
        if session.close(key.stream, Tomb::Reset(code)) {
            session.queue_control(Frame::Reset {
                stream: key.stream,
                code,
            });
            self.metrics.resets.with_label_values(&[reason]).inc();
        }
        self.update_gauges();
    }

    // ---- messages from the mixnet ----

    /// A stream message received. `blocks`: reply blocks it carried (exit).
    pub fn on_message(&mut self, body: &[u8], blocks: Vec<ReplyBlock>, now: Instant) {
        let msg = match Message::decode(body) {
            Ok(m) => m,
            Err(e) => {
                self.bad(e.label());
                return;
            }
        };
        match self.role {
            Role::Client => {
                if !self.sessions.contains_key(&msg.session) {
                    self.bad("unknown_session");
                    return;
                }
            }
            Role::Exit => {
                if !self.sessions.contains_key(&msg.session) && !self.admit(msg.session, now) {
                    self.bad("too_many_sessions");
                    return;
                }
            }
        }
        let cfg = self.cfg.clone();
        let role = self.role;
        let Some(session) = self.sessions.get_mut(&msg.session) else {
            return;
        };
        session.last_heard = now;
        match role {
            Role::Exit => {
                session.grants_seen = session.grants_seen.max(msg.grants);
                for b in blocks {
                    if session.pool.len() >= cfg.max_blocks {
                        session.pool.pop_front();
                    }
                    session.pool.push_back(b);
                }
            }
            Role::Client => {
                session.reported_held = msg.held;
                session.reported_want = msg.want;
                session.reported_seen = msg.grants.min(session.grants_sent);
                session.last_reply = Some(now);
            }
        }
        let mut events = Vec::new();
        let mut bad = Vec::new();
        let mut opens = Vec::new();
        for f in msg.frames {
            if let Frame::Revoke { tags } = &f {
                if role == Role::Exit {
                    let before = session.pool.len();
                    session.pool.retain(|b| !tags.contains(&block_tag(&b.key)));
                    self.metrics
                        .blocks_revoked
                        .with_label_values(&["dropped"])
                        .inc_by((before - session.pool.len()) as u64);
                    // Blocks like these carried what is in flight: resend
                    // it now over the blocks left, without waiting out a
                    // backed-off timeout.
                    for s in session.streams.values_mut() {
                        s.sender.reroute(now);
                    }
                } else {
                    bad.push("unexpected_revoke");
                }
                continue;
            }
            Self::on_frame(
                role,
                &cfg,
                session,
                f,
                now,
                &mut events,
                &mut bad,
                &mut opens,
            );
        }
        for reason in bad {
            self.bad(reason);
        }
        for (label, n) in opens {
            self.metrics.opens.with_label_values(&[label]).inc_by(n);
        }
        for e in &events {
            match e {
                MuxEvent::Data(_, d) => self
                    .metrics
                    .bytes
                    .with_label_values(&["received"])
                    .inc_by(d.len() as u64),
                MuxEvent::Reset(_, _) => {
                    self.metrics.resets.with_label_values(&["peer"]).inc();
                }
                _ => {}
            }
        }
        self.events.extend(events);
        self.update_gauges();
    }

    /// Exit: a new session; evicts the longest-silent one without streams
    /// when full.
    fn admit(&mut self, id: SessionId, now: Instant) -> bool {
        if self.sessions.len() >= self.cfg.max_sessions {
            let victim = self
                .sessions
                .values()
                .filter(|s| s.streams.is_empty())
                .min_by_key(|s| s.last_heard)
                .map(|s| s.id);
            match victim {
                Some(v) => {
                    self.sessions.remove(&v);
                    self.order.retain(|x| *x != v);
                }
                None => return false,
            }
        }
        self.sessions.insert(id, Session::new(id, now));
        self.order.push_back(id);
        self.metrics.sessions_opened.inc();
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        role: Role,
        cfg: &StreamConfig,
        session: &mut Session,
        f: Frame,
        now: Instant,
        events: &mut Vec<MuxEvent>,
        bad: &mut Vec<&'static str>,
        opens: &mut Vec<(&'static str, u64)>,
    ) {
        let id = f.stream();
        let key = session.key(id);
        match (role, f) {
            (Role::Exit, Frame::Open { target, stream }) => {
                if let Some(s) = session.streams.get(&id) {
                    // A retransmitted OPEN: answer again if connected.
                    if s.state == State::Open {
                        session.queue_control(Frame::Opened { stream: id });
                    }
                } else if session.closed.iter().any(|(s, _)| *s == id) {
                    session.late_frame(&Frame::Open { stream, target });
                } else if session.streams.len() >= cfg.max_streams {
                    session.queue_control(Frame::Refused {
                        stream: id,
                        code: code::GENERAL_FAILURE,
                    });
                    opens.push(("too_many_streams", 1));
                } else {
                    session
                        .streams
                        .insert(id, Stream::new(cfg, State::Connecting, now));
                    events.push(MuxEvent::Connect(key, target));
                }
            }
            (Role::Client, Frame::Opened { .. }) => {
                if let Some(target) = session.streams.get_mut(&id).and_then(|s| s.mark_open(now)) {
                    session.remember(target);
                    events.push(MuxEvent::Opened(key));
                    opens.push(("ok", 1));
                }
            }
            (Role::Client, Frame::Refused { code, .. }) => {
                if let Some(State::Opening { target, .. }) =
                    session.streams.get(&id).map(|s| s.state.clone())
                {
                    session.forget(&target);
                }
                // The optimistic data still unacknowledged goes with the
                // stream.
                if session.close(id, Tomb::Refused(code)) {
                    events.push(MuxEvent::Refused(key, code));
                    opens.push(("refused", 1));
                }
            }
            (_, Frame::Data { seq, fin, data, .. }) => {
                if !session.streams.contains_key(&id) {
                    session.late_frame(&Frame::Data {
                        stream: id,
                        seq,
                        fin,
                        data: Vec::new(),
                    });
                    return;
                }
                if role == Role::Client
                    && let Some(target) =
                        session.streams.get_mut(&id).and_then(|s| s.mark_open(now))
                {
                    // Data overtook the OPENED (different routes).
                    session.remember(target);
                    events.push(MuxEvent::Opened(key));
                    opens.push(("ok", 1));
                }
                let Some(s) = session.streams.get_mut(&id) else {
                    return;
                };
                if s.state == State::Connecting {
                    // Optimistic data: held (bounded) until the connect
                    // succeeds, not acknowledged before.
                    let limit = OPTIMISTIC_SEGMENTS.min(u32::from(s.receiver.max_window()));
                    s.receiver.hold(seq, data, fin, limit);
                    return;
                }
                if s.state != State::Open {
                    bad.push("data_before_open");
                    return;
                }
                let window = s.receiver.max_window();
                let d = s.receiver.on_data(seq, data, fin, window);
                if !d.data.is_empty() {
                    s.last_progress = now;
                    s.unwritten = s.unwritten.saturating_add(d.data.len());
                    events.push(MuxEvent::Data(key, d.data));
                }
                if d.fin {
                    s.last_progress = now;
                    events.push(MuxEvent::Fin(key));
                }
                session.close_if_done(id);
            }
            (
                _,
                Frame::Ack {
                    next, sack, window, ..
                },
            ) => {
                let Some(s) = session.streams.get_mut(&id) else {
                    session.late_frame(&Frame::Ack {
                        stream: id,
                        next,
                        sack,
                        window,
                    });
                    return;
                };
                if s.sender.on_ack(next, sack, window, now) {
                    s.last_progress = now;
                    events.push(MuxEvent::Room(key));
                }
                session.close_if_done(id);
            }
            (_, Frame::Reset { code, .. }) => {
                if session.close(id, Tomb::Reset(code)) {
                    events.push(MuxEvent::Reset(key, code));
                }
            }
            _ => bad.push("wrong_direction"),
        }
    }

    // ---- timers ----

    /// Timeouts: failed or idle streams, unanswered OPENs, silent sessions
    /// (exit), sessions idle too long (client).
    pub fn tick(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        let mut resets: Vec<(StreamKey, u8, &'static str)> = Vec::new();
        let mut refused = Vec::new();
        let mut dead_sessions = Vec::new();
        for session in self.sessions.values_mut() {
            if self.role == Role::Exit
                && now.saturating_duration_since(session.last_heard) > cfg.session_timeout
            {
                dead_sessions.push(session.id);
                continue;
            }
            if self.role == Role::Client {
                if !session.streams.is_empty() {
                    session.busy_at = now;
                } else if now.saturating_duration_since(session.busy_at)
                    >= if session.retired {
                        RETIRED_LINGER.min(cfg.session_idle)
                    } else {
                        cfg.session_idle
                    }
                {
                    // No streams to reset: the next stream of its key
                    // starts a new session. The exit forgets this one
                    // after its own timeout.
                    dead_sessions.push(session.id);
                    continue;
                }
            }
            let mut gone = Vec::new();
            for (id, s) in &session.streams {
                let key = session.key(*id);
                if let State::Opening { since, .. } = &s.state {
                    if now.saturating_duration_since(*since) > cfg.open_timeout {
                        refused.push((key, code::TTL_EXPIRED));
                        gone.push((*id, Tomb::Refused(code::TTL_EXPIRED)));
                    }
                    continue;
                }
                if s.sender.failed {
                    resets.push((key, code::TTL_EXPIRED, "retransmissions"));
                    gone.push((*id, Tomb::Reset(code::TTL_EXPIRED)));
                } else if now.saturating_duration_since(s.last_progress) > cfg.idle_timeout {
                    resets.push((key, code::TTL_EXPIRED, "idle"));
                    gone.push((*id, Tomb::Reset(code::TTL_EXPIRED)));
                }
            }
            for (id, tomb) in gone {
                session.close(id, tomb);
            }
            // Expired reply blocks cannot be used (checked at use too).
        }
        for (key, code, reason) in resets {
            if let Some(session) = self.sessions.get_mut(&key.session) {
                session.queue_control(Frame::Reset {
                    stream: key.stream,
                    code,
                });
            }
            self.metrics.resets.with_label_values(&[reason]).inc();
            self.events.push(MuxEvent::Reset(key, code));
        }
        for (key, code) in refused {
            self.metrics.opens.with_label_values(&["timeout"]).inc();
            self.events.push(MuxEvent::Refused(key, code));
        }
        for id in dead_sessions {
            if let Some(s) = self.sessions.remove(&id) {
                for stream in s.streams.keys() {
                    self.metrics
                        .resets
                        .with_label_values(&["session_timeout"])
                        .inc();
                    self.events.push(MuxEvent::Reset(
                        StreamKey {
                            session: id,
                            stream: *stream,
                        },
                        code::TTL_EXPIRED,
                    ));
                }
            }
            self.drop_session(id);
        }
        self.update_gauges();
    }

    // ---- packets ----

    /// Frames for one message of at most `cap` bytes (header included).
    fn build(
        role: Role,
        session: &mut Session,
        cap: usize,
        now: Instant,
        retx: &IntCounter,
    ) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut used = HEADER_LEN;
        while let Some(f) = session.control.front() {
            if used + f.encoded_len() > cap {
                break;
            }
            used += f.encoded_len();
            if let Some(f) = session.control.pop_front() {
                frames.push(f);
            }
        }
        // OPENs (client), sent again after the stream's RTO until answered,
        // and in every message that carries the stream's optimistic data:
        // the exit then reads a stream's OPEN before its DATA, whatever
        // order messages arrive in (data alone for an unknown stream would
        // get a RESET).
        let mut opening = Vec::new();
        if role == Role::Client {
            for (id, s) in session.streams.iter_mut() {
                let rto = s.sender.rtt.rto();
                let data = s.sender.wants_to_send(now);
                if let State::Opening {
                    target, last_sent, ..
                } = &mut s.state
                {
                    let due = data || last_sent.is_none_or(|t| now >= t + rto);
                    let f = Frame::Open {
                        stream: *id,
                        target: target.clone(),
                    };
                    if due && used + f.encoded_len() <= cap {
                        used += f.encoded_len();
                        *last_sent = Some(now);
                        frames.push(f);
                        opening.push(*id);
                    }
                }
            }
        }
        for (id, s) in session.streams.iter_mut() {
            if s.ack_due() && used + ACK_LEN <= cap {
                used += ACK_LEN;
                frames.push(s.ack_frame(*id));
            }
        }
        // Data, one segment per stream per turn, round robin.
        let order = session.rr_order();
        for id in order {
            if cap.saturating_sub(used) < DATA_OVERHEAD + 1 {
                break;
            }
            let Some(s) = session.streams.get_mut(&id) else {
                continue;
            };
            let may = match s.state {
                State::Open => true,
                State::Opening { .. } => opening.contains(&id),
                State::Connecting => false,
            };
            if !may || !s.sender.wants_to_send(now) {
                continue;
            }
            let room = cap - used - DATA_OVERHEAD;
            let before = s.sender.retransmissions;
            if let Some(out) = s.sender.next_segment(now, room) {
                if s.sender.retransmissions > before {
                    retx.inc();
                }
                used += DATA_OVERHEAD + out.data.len();
                // Piggy-back a fresh ack for the same stream if it fits.
                frames.push(Frame::Data {
                    stream: id,
                    seq: out.seq,
                    fin: out.fin,
                    data: out.data,
                });
                session.cursor = id;
            }
        }
        frames
    }

    /// Client: fills one λ_P slot (see [`crate::runtime::SlotFiller`]).
    pub fn fill_client(&mut self, engine: &mut Engine, now: Instant) {
        let Some(exit) = self.exit else { return };
        let tags = engine.take_revocations(&exit.identity, MAX_REVOKE_TAGS);
        if !tags.is_empty() {
            self.revoke(tags, now);
        }
        let cap0 = engine.send_capacity(0);
        let block_len = cap0.saturating_sub(engine.send_capacity(1)).max(1);
        let Some(out) = self.client_message(cap0, block_len, now) else {
            return;
        };
        match engine.send_tagged(&exit, out.body, out.blocks, now) {
            Ok((_, tags)) => self.client_sent(out.session, out.grants, tags, now),
            Err(e) => self.bad(e.label()),
        }
    }

    /// Exit: fills one λ_P slot with a reply for the next session (round
    /// robin) that has something to say and a usable reply block.
    pub fn fill_exit(&mut self, engine: &mut Engine, now: Instant) {
        let Some(epoch) = engine.topology().map(|t| t.epoch()) else {
            return;
        };
        let cap = engine.reply_capacity();
        if let Some((body, block)) = self.exit_message(cap, epoch, now)
            && let Err(e) = engine.reply_over(block, body, now)
        {
            self.bad(e.label());
        }
    }

    /// Client: tells the exit not to use the reply blocks named by `tags`
    /// (their routes cross a mix now listed down), each tag in the session
    /// it was granted in only: a tag in another session's REVOKE would
    /// link the two. Tags of closed sessions are dropped. Our estimate of
    /// what the exit holds drops at once, so fresh blocks are granted
    /// without waiting for its next report.
    pub(crate) fn revoke(&mut self, tags: Vec<BlockTag>, now: Instant) {
        for session in self.sessions.values_mut() {
            let mine: Vec<BlockTag> = tags
                .iter()
                .filter(|t| session.granted.contains(t))
                .copied()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let n = u16::try_from(mine.len()).unwrap_or(u16::MAX);
            session.reported_held = session.reported_held.saturating_sub(n);
            self.metrics
                .blocks_revoked
                .with_label_values(&["sent"])
                .inc_by(u64::from(n));
            session.queue_control(Frame::Revoke { tags: mine });
            // What we sent recently may have crossed the node too.
            for s in session.streams.values_mut() {
                s.sender.reroute(now);
            }
        }
    }

    /// Client: the next message, for packets whose body holds `cap0` bytes
    /// without reply blocks and `block_len` bytes less per block.
    /// Sessions take turns (round robin), like the exit's.
    pub(crate) fn client_message(
        &mut self,
        cap0: usize,
        block_len: usize,
        now: Instant,
    ) -> Option<ClientOut> {
        self.exit?;
        for _ in 0..self.order.len() {
            let id = self.order.pop_front()?;
            self.order.push_back(id);
            if let Some(out) = self.session_message(id, cap0, block_len, now) {
                return Some(out);
            }
        }
        None
    }

    fn session_message(
        &mut self,
        id: SessionId,
        cap0: usize,
        block_len: usize,
        now: Instant,
    ) -> Option<ClientOut> {
        let cfg = self.cfg.clone();
        let retx = self.metrics.retransmissions.clone();
        let session = self.sessions.get_mut(&id)?;
        let open = !session.streams.is_empty();
        if !open && session.control.is_empty() {
            return None;
        }
        // Reply blocks the exit should get.
        let in_flight = session.grants_sent.saturating_sub(session.reported_seen) as usize;
        let estimate = usize::from(session.reported_held) + in_flight;
        let want = usize::from(session.reported_want);
        let target = if open {
            (want + (want / 4).max(8))
                .max(cfg.reserve_blocks)
                .min(cfg.max_blocks)
        } else {
            0
        };
        let mut need = target.saturating_sub(estimate);
        // Keep-alive: the exit has been silent (it may have run dry, or
        // restarted): grant a few blocks regardless of the estimate.
        let quiet = Duration::from_secs(3).max(cfg.min_rto * 2);
        let silent = |t: Option<Instant>| t.is_none_or(|t| now >= t + quiet);
        if open && silent(session.last_reply) && silent(session.last_grant) {
            need = need.max(cfg.reserve_blocks);
        }
        let data_waiting = session.streams.values().any(|s| s.data_due(now));
        let mut blocks = 0;
        // Upload data and grants share the slots: alternate, unless the
        // exit is close to running dry.
        if need > 0 && (!data_waiting || session.refill_turn || need >= target / 2) {
            let fit =
                cap0.saturating_sub(HEADER_LEN + CONTROL_ROOM + MAX_OPEN_LEN) / block_len.max(1);
            blocks = need.min(fit).min(MAX_REPLY_BLOCKS);
        }
        if need > 0 && data_waiting {
            session.refill_turn = !session.refill_turn;
        }
        let cap = cap0.saturating_sub(blocks * block_len);
        let frames = Self::build(Role::Client, session, cap, now, &retx);
        if frames.is_empty() && blocks == 0 {
            return None;
        }
        let grants = session.grants_sent.wrapping_add(blocks as u32);
        let msg = Message {
            session: id,
            grants,
            held: 0,
            want: 0,
            frames,
        };
        match msg.encode() {
            Ok(body) => Some(ClientOut {
                session: id,
                body,
                blocks,
                grants,
            }),
            Err(e) => {
                self.bad(e.label());
                None
            }
        }
    }

    /// Client: the message from [`Mux::client_message`] left, with reply
    /// blocks of these tags.
    pub(crate) fn client_sent(
        &mut self,
        session: SessionId,
        grants: u32,
        tags: Vec<BlockTag>,
        now: Instant,
    ) {
        if let Some(session) = self.sessions.get_mut(&session) {
            session.grants_sent = grants;
            if !tags.is_empty() {
                session.last_grant = Some(now);
            }
            for t in tags {
                if session.granted.len() >= MAX_GRANTED_TAGS {
                    session.granted.pop_front();
                }
                session.granted.push_back(t);
            }
        }
    }

    /// Exit: the next reply (body and the block to send it over), for
    /// reply bodies of `cap` bytes under key epoch `epoch`.
    pub(crate) fn exit_message(
        &mut self,
        cap: usize,
        epoch: u64,
        now: Instant,
    ) -> Option<(Vec<u8>, ReplyBlock)> {
        let mss = cap.saturating_sub(HEADER_LEN + DATA_OVERHEAD + CONTROL_ROOM);
        let retx = self.metrics.retransmissions.clone();
        let max_blocks = self.cfg.max_blocks;
        let mut out = None;
        for _ in 0..self.order.len() {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            self.order.push_back(id);
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            // No node holds keys older than the previous epoch's.
            session.pool.retain(|b| b.epoch.saturating_add(1) >= epoch);
            if session.pool.is_empty() || !session.has_something(now) {
                continue;
            }
            let frames = Self::build(Role::Exit, session, cap, now, &retx);
            if frames.is_empty() {
                continue;
            }
            let Some(block) = session.pool.pop_front() else {
                continue;
            };
            let want = session.want(now, mss.max(1), max_blocks);
            let msg = Message {
                session: id,
                grants: session.grants_seen,
                held: u16::try_from(session.pool.len()).unwrap_or(u16::MAX),
                want: u16::try_from(want).unwrap_or(u16::MAX),
                frames,
            };
            match msg.encode() {
                Ok(body) => out = Some((body, block)),
                Err(e) => self.bad(e.label()),
            }
            break;
        }
        self.update_gauges();
        out
    }
}

/// One client message: its body, the reply blocks to attach, and the
/// grant count it announces.
pub(crate) struct ClientOut {
    pub session: SessionId,
    pub body: Vec<u8>,
    pub blocks: usize,
    pub grants: u32,
}

#[cfg(test)]
mod tests;
