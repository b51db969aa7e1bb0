//! Byte streams through an exit service: the SOCKS5 proxy's machinery
//! ([`crate::stream`]), with one client-role [`Mux`] per service address
//! and an in-memory pipe in place of the TCP socket.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use loopmix_core::e2e::ClientAddress;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::engine::Engine;
use crate::exit::normalize;
use crate::runtime::SlotFiller;
use crate::stream::frame::{self, valid_name};
use crate::stream::io::{Attached, Ended, OpenError, Shared, open, pump};
use crate::stream::mux::Role;
use crate::stream::{IsolationKey, Mux, StreamConfig, StreamMetrics, Target};

/// Exit services one client streams through at most (one session and
/// reply-block pool each). Beyond it, [`open_stream`] to a new service is
/// [`Error::Busy`].
///
/// [`open_stream`]: super::MixnetClient::open_stream
pub const MAX_SERVICES: usize = 16;

/// Bytes buffered between a [`MixnetStream`] and its stream, each way,
/// on top of the stream's own window (`StreamConfig::buffer`).
pub const STREAM_PIPE_BYTES: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The client's muxes, one per exit service, and the λ_P hook that lets
/// them take turns at the slots ([`crate::stream::io::Filler`] serves one
/// mux; an SDK client may stream through several services).
///
/// Lock order: the engine's (held by the runtime around [`fill`]), then
/// the list, then a mux.
///
/// [`fill`]: SlotFiller::fill
pub(super) struct Services {
    list: Mutex<Vec<(ClientAddress, Arc<Shared>)>>,
    /// Which service goes first at the next slot (round robin).
    next: AtomicUsize,
    cfg: StreamConfig,
    metrics: StreamMetrics,
    /// Stops the muxes' timers.
    pub(super) cancel: CancellationToken,
}

impl Services {
    pub(super) fn new(cfg: StreamConfig, metrics: StreamMetrics) -> Self {
        Self {
            list: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            cfg,
            metrics,
            cancel: CancellationToken::new(),
        }
    }

    /// The mux for `service`, made (with its timers) on first use.
    fn mux_for(&self, service: ClientAddress) -> Result<Arc<Shared>, Error> {
        let mut list = lock(&self.list);
        if let Some((_, s)) = list.iter().find(|(a, _)| *a == service) {
            return Ok(s.clone());
        }
        if list.len() >= MAX_SERVICES {
            return Err(Error::Busy {
                what: "the list of exit services",
            });
        }
        let mux = Mux::client(
            service,
            self.cfg.clone(),
            self.metrics.clone(),
            &mut rand::rng(),
        );
        let shared = Shared::new(mux, Role::Client);
        tokio::spawn(shared.clone().housekeeping(self.cancel.clone()));
        list.push((service, shared.clone()));
        Ok(shared)
    }

    /// Hands a received message to the mux whose session it belongs to;
    /// `false` if it is no stream message of ours (then it is the
    /// application's). Session ids are 16 random bytes, so an
    /// application's message is never taken for one by accident.
    pub(super) fn claim(&self, body: &[u8]) -> bool {
        let Ok(msg) = frame::Message::decode(body) else {
            return false;
        };
        let owner = lock(&self.list)
            .iter()
            .find(|(_, s)| s.mux().has_session(&msg.session))
            .map(|(_, s)| s.clone());
        match owner {
            Some(s) => {
                s.on_message(body, Vec::new());
                true
            }
            None => false,
        }
    }

    /// Opens a stream to `target` through `service` and starts copying
    /// between it and the returned [`MixnetStream`]. The opening runs in a
    /// task of its own: if the caller stops waiting, the stream it opens is
    /// dropped, which closes it like any dropped [`MixnetStream`].
    pub(super) async fn open(
        &self,
        service: ClientAddress,
        target: Target,
    ) -> Result<MixnetStream, Error> {
        let shared = self.mux_for(service)?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let opened = match open(&shared, &IsolationKey::NONE, target).await {
                Ok(att) => Ok(start(shared, att)),
                Err(OpenError::NoStream(why)) => Err(Error::StreamFailed(why)),
                Err(OpenError::Refused(code)) => Err(Error::StreamRefused { code }),
                Err(OpenError::Failed) => {
                    Err(Error::StreamFailed("no answer from the exit in time"))
                }
            };
            let _ = tx.send(opened);
        });
        rx.await.unwrap_or(Err(Error::Shutdown))
    }
}

/// Copies between an open stream and a new [`MixnetStream`] until both
/// directions end (the SOCKS5 proxy's copy loop, with an in-memory pipe in
/// place of the socket).
fn start(shared: Arc<Shared>, att: Attached) -> MixnetStream {
    let (mine, theirs) = tokio::io::duplex(STREAM_PIPE_BYTES);
    let failed = Arc::new(AtomicBool::new(false));
    let flag = failed.clone();
    tokio::spawn(async move {
        let (rd, mut wr) = tokio::io::split(theirs);
        if pump(shared, rd, &mut wr, att).await == Ended::Failed {
            // Set before our end of the pipe closes, so the reader sees
            // the reset, not an end of stream.
            flag.store(true, Ordering::Release);
        }
        drop(wr);
    });
    MixnetStream { io: mine, failed }
}

impl SlotFiller for Services {
    fn fill(&self, engine: &mut Engine, now: Instant) {
        let list: Vec<Arc<Shared>> = lock(&self.list).iter().map(|(_, s)| s.clone()).collect();
        let n = list.len();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            list[(start + i) % n].mux().fill_client(engine, now);
            // One message per slot, as with one mux.
            if engine.has_queued() {
                return;
            }
        }
    }
}

/// `host:port` as a stream target: an IP address (`127.0.0.1:80`,
/// `[::1]:80`) or a name, resolved at the exit, never locally.
pub(super) fn parse_target(s: &str) -> Result<Target, Error> {
    let bad = || Error::BadTarget(s.to_string());
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(normalize(Target::Ip(a)));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.contains(':') || !valid_name(host) {
        return Err(bad());
    }
    // As the SOCKS5 proxy: an IP literal given as a name travels as the
    // address it is.
    Ok(normalize(Target::Name(host.to_string(), port)))
}

/// A reliable, ordered byte stream through an exit service to a TCP
/// target ([`MixnetClient::open_stream`](super::MixnetClient::open_stream)),
/// implementing tokio's [`AsyncRead`] and [`AsyncWrite`].
///
/// * Reading returns `Ok(0)` (end of stream) only when the target closed
///   its side cleanly; a stream that was reset or broken reads as an error
///   of kind [`ConnectionReset`](io::ErrorKind::ConnectionReset), so a
///   truncated body is never mistaken for a whole one.
/// * `shutdown()` closes our sending side (the target reads end of
///   stream); reading goes on until the target closes.
/// * Dropping it ends both directions.
#[derive(Debug)]
pub struct MixnetStream {
    io: DuplexStream,
    failed: Arc<AtomicBool>,
}

impl AsyncRead for MixnetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(()))
                if buf.filled().len() == before
                    && buf.remaining() > 0
                    && this.failed.load(Ordering::Acquire) =>
            {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the mixnet stream was reset",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for MixnetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_the_socks5_proxy_sends_them() {
        assert_eq!(
            parse_target("127.0.0.1:8000").unwrap(),
            Target::Ip("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            parse_target("[::1]:22").unwrap(),
            Target::Ip("[::1]:22".parse().unwrap())
        );
        assert_eq!(
            parse_target("example.org:80").unwrap(),
            Target::Name("example.org".into(), 80)
        );
        for bad in [
            "",
            "example.org",
            "example.org:",
            ":80",
            "a b:80",
            "x:0",
            "x:70000",
            "::1:80",
        ] {
            assert!(
                matches!(parse_target(bad), Err(Error::BadTarget(_))),
                "{bad}"
            );
        }
    }
}
