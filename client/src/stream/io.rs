//! The tokio side of streams: a [`Mux`] behind a lock, the λ_P slot hook,
//! routing of [`MuxEvent`]s to per-stream tasks, and the two copy loops
//! between a TCP socket and a stream.
//!
//! Lock order: the engine's lock (held by the runtime when it calls
//! [`SlotFiller::fill`]) before the mux's. Nothing here takes the engine's
//! lock while holding the mux's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::Target;
use super::mux::{IsolationKey, Mux, MuxEvent, Role, StreamKey, code};
use crate::config::EarlyReply;
use crate::engine::Engine;
use crate::runtime::SlotFiller;

/// What a stream's task hears from the mux.
#[derive(Debug)]
pub enum Down {
    Opened,
    Refused(u8),
    Data(Vec<u8>),
    Fin,
    Reset(u8),
}

struct Handle {
    tx: mpsc::UnboundedSender<Down>,
    room: Arc<Notify>,
}

/// A mux shared by the runtime's slot hook and the I/O tasks.
pub struct Shared {
    mux: Mutex<Mux>,
    handles: Mutex<HashMap<StreamKey, Handle>>,
    role: Role,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One stream's end of the routing: events arrive on `rx`; `room` is
/// notified when the send buffer has space again.
pub struct Attached {
    pub key: StreamKey,
    pub rx: mpsc::UnboundedReceiver<Down>,
    pub room: Arc<Notify>,
    /// Returned before the exit answered ([`open_with`]).
    pub early: bool,
}

impl Shared {
    pub fn new(mux: Mux, role: Role) -> Arc<Self> {
        Arc::new(Self {
            mux: Mutex::new(mux),
            handles: Mutex::new(HashMap::new()),
            role,
        })
    }

    pub fn mux(&self) -> MutexGuard<'_, Mux> {
        lock(&self.mux)
    }

    /// Routes events from the mux to stream tasks. Returns the connects an
    /// exit must make.
    pub fn dispatch(&self, events: Vec<MuxEvent>) -> Vec<(StreamKey, Target)> {
        let mut connects = Vec::new();
        let mut handles = lock(&self.handles);
        for e in events {
            let (key, down, end) = match e {
                MuxEvent::Connect(k, t) => {
                    connects.push((k, t));
                    continue;
                }
                MuxEvent::Room(k) => {
                    if let Some(h) = handles.get(&k) {
                        h.room.notify_one();
                    }
                    continue;
                }
                MuxEvent::Opened(k) => (k, Down::Opened, false),
                MuxEvent::Refused(k, c) => (k, Down::Refused(c), true),
                MuxEvent::Data(k, d) => (k, Down::Data(d), false),
                MuxEvent::Fin(k) => (k, Down::Fin, false),
                MuxEvent::Reset(k, c) => (k, Down::Reset(c), true),
            };
            if let Some(h) = handles.get(&key) {
                let _ = h.tx.send(down);
                if end {
                    // The reader may be parked waiting for room.
                    h.room.notify_one();
                    handles.remove(&key);
                }
            }
        }
        connects
    }

    /// Registers a task for `key`'s events.
    pub fn attach(&self, key: StreamKey) -> Attached {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Notify::new());
        lock(&self.handles).insert(
            key,
            Handle {
                tx,
                room: room.clone(),
            },
        );
        Attached {
            key,
            rx,
            room,
            early: false,
        }
    }

    fn detach(&self, key: &StreamKey) {
        lock(&self.handles).remove(key);
    }

    /// A message from the mixnet: into the mux, events out.
    pub fn on_message(
        &self,
        body: &[u8],
        blocks: Vec<loopmix_core::e2e::ReplyBlock>,
    ) -> Vec<(StreamKey, Target)> {
        let events = {
            let mut m = self.mux();
            m.on_message(body, blocks, Instant::now());
            m.take_events()
        };
        self.dispatch(events)
    }

    /// Exit: the connect for `key` finished. Dispatches at once what it
    /// releases (the optimistic data held for the stream), rather than at
    /// the next message or timer. Attach the stream's task first.
    pub fn connected(&self, key: StreamKey, result: Result<(), u8>) {
        let events = {
            let mut m = self.mux();
            m.connected(key, result, Instant::now());
            m.take_events()
        };
        // Connects come only from messages, and those dispatch their own.
        let _ = self.dispatch(events);
    }

    /// Timers, every 200 ms until cancelled. (Retransmissions themselves
    /// are decided at slot time from each stream's RTO.)
    pub async fn housekeeping(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let events = {
                let mut m = self.mux();
                m.tick(Instant::now());
                m.take_events()
            };
            self.dispatch(events);
        }
    }
}

/// Why [`open`] gave no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The mux has no room for another stream (too many sessions or
    /// streams).
    NoStream(&'static str),
    /// The exit refused the stream, or reset it before it opened, with
    /// this SOCKS5 reply code.
    Refused(u8),
    /// No answer in time (the mux gave up), or the mux went away.
    Failed,
}

/// Opens a client stream to `target` in `isolation`'s session and waits
/// for the exit's answer (the mux answers every OPEN: OPENED, REFUSED, or
/// a timeout). On success the stream's events arrive on the returned
/// [`Attached`], ready for [`pipe`] or [`pump`].
pub async fn open(
    shared: &Shared,
    isolation: &IsolationKey,
    target: Target,
) -> Result<Attached, OpenError> {
    open_with(shared, isolation, target, EarlyReply::Never).await
}

/// Like [`open`], but returns without waiting for the exit's answer when
/// `early` says so ([`EarlyReply::Known`]: the session has had the same
/// target opened before, [`Mux::opened_before`]; [`EarlyReply::Always`]):
/// the application's first bytes then travel with the OPEN (optimistic
/// data, PROTOCOL.md 7.3) instead of a round trip later. The price: a
/// refusal after all can no longer be told as a refusal; it arrives as
/// [`Down::Refused`] and [`pump`] ends with [`Ended::Failed`], like a
/// stream reset. Whether it returned early is in [`Attached::early`].
pub async fn open_with(
    shared: &Shared,
    isolation: &IsolationKey,
    target: Target,
    early: EarlyReply,
) -> Result<Attached, OpenError> {
    let (key, known) = {
        let mut m = shared.mux();
        let key = m
            .open(isolation, target, Instant::now())
            .map_err(OpenError::NoStream)?;
        (key, m.opened_before(&key))
    };
    // No answer can come before the OPEN has left in a slot and made its
    // round trip, so attaching now misses nothing.
    let mut att = shared.attach(key);
    att.early = match early {
        EarlyReply::Never => false,
        EarlyReply::Known => known,
        EarlyReply::Always => true,
    };
    if att.early {
        return Ok(att);
    }
    match att.rx.recv().await {
        Some(Down::Opened) => Ok(att),
        Some(Down::Refused(c)) | Some(Down::Reset(c)) => Err(OpenError::Refused(c)),
        _ => Err(OpenError::Failed),
    }
}

/// The runtime's λ_P hook for a mux.
pub struct Filler(pub Arc<Shared>);

impl SlotFiller for Filler {
    fn fill(&self, engine: &mut Engine, now: Instant) {
        let mut m = self.0.mux();
        match self.0.role {
            Role::Client => m.fill_client(engine, now),
            Role::Exit => m.fill_exit(engine, now),
        }
    }
}

/// Copies between `sock` and the stream until both directions are closed
/// or the stream is reset (the SOCKS5 proxy and the exit).
pub async fn pipe(shared: Arc<Shared>, sock: TcpStream, att: Attached) {
    let (rd, mut wr) = sock.into_split();
    if pump(shared, rd, &mut wr, att).await == Ended::Failed {
        // The stream failed: the application must not mistake that for its
        // end. A plain close sends FIN, which reads exactly like a complete
        // stream to anything that ends at EOF (an HTTP/1.0 body, a file
        // copy); with linger 0 the close sends RST, which reads as an error.
        // The write half must not shut down (FIN) on drop either.
        let _ = wr.as_ref().set_zero_linger();
        wr.forget();
    }
    // Dropping the halves closes the socket.
}

/// How a [`pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions finished (or the local side went away).
    Closed,
    /// The stream was reset or refused: what was written to `wr` is not the
    /// whole stream, and the caller must say so to its reader.
    Failed,
}

/// Copies between a local byte stream (`rd`, `wr`: a TCP socket's halves,
/// or one end of an in-memory pipe for the SDK's streams) and the mixnet
/// stream `att` until both directions are closed or the stream is reset.
/// `wr` is shut down on the peer's FIN; the copy from `rd` is cancelled on
/// return (and `rd` dropped with it).
pub async fn pump<R, W>(shared: Arc<Shared>, mut rd: R, wr: &mut W, mut att: Attached) -> Ended
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let key = att.key;
    let reader_shared = shared.clone();
    let room = att.room.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => {
                    reader_shared.mux().finish(&key);
                    return;
                }
                Ok(n) => n,
                Err(e) => {
                    debug!(error = %e, "stream socket read failed");
                    reader_shared
                        .mux()
                        .abort(&key, code::GENERAL_FAILURE, "socket");
                    return;
                }
            };
            let mut off = 0;
            while off < n {
                let taken = reader_shared.mux().push(&key, &buf[off..n]);
                match taken {
                    None => return,
                    Some(0) => room.notified().await,
                    Some(t) => off += t,
                }
            }
        }
    });
    let (mut reader_done, mut fin_in) = (false, false);
    let mut failed = false;
    loop {
        tokio::select! {
            r = &mut reader, if !reader_done => {
                reader_done = true;
                if r.is_err() || fin_in { break; }
                continue;
            }
            d = att.rx.recv() => match d {
                Some(Down::Data(d)) => {
                    if let Err(e) = wr.write_all(&d).await {
                        debug!(error = %e, "stream socket write failed");
                        shared.mux().abort(&key, code::GENERAL_FAILURE, "socket");
                        break;
                    }
                    shared.mux().written(&key, d.len());
                }
                Some(Down::Fin) => {
                    fin_in = true;
                    let _ = wr.shutdown().await;
                    if reader_done {
                        break;
                    }
                    // Wait for our own side to finish (or a reset).
                }
                Some(Down::Reset(_)) | Some(Down::Refused(_)) | None => {
                    failed = true;
                    break;
                }
                Some(Down::Opened) => {}
            }
        }
    }
    reader.abort();
    shared.detach(&key);
    if failed { Ended::Failed } else { Ended::Closed }
}
