//! A service behind the mixnet (`loopmix-client serve --forward ADDR`):
//! the exit with one destination. Every stream is connected to the address
//! the operator named, whatever target it asked for, so the service is
//! reachable only over reply blocks (its clients never learn where it
//! runs) and can reach nothing else (it is never an open exit).
//!
//! The target a stream names is ignored rather than checked against a
//! conventional name: `curl --socks5-hostname PROXY http://service/` and a
//! browser's `http://anything/` both work, and a request that names another
//! host or port still goes to the forward address, never elsewhere.
//!
//! The forward address may be loopback or private: that is the point, and
//! the operator named it explicitly, so the exit policy's reserved-address
//! protection does not apply. It never leaves this machine: streams are
//! answered with OPENED or a refusal code, never with an address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{IntCounterVec, Registry};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Refusal, io_code};
use crate::error::ClientError;
use crate::stream::code;

/// The one destination of a service, with its failure accounting.
#[derive(Debug)]
pub(super) struct Forward {
    target: SocketAddr,
    /// `loopmix_service_connect_failures_total{reason}`.
    failures: IntCounterVec,
    /// Set by a failed connect, cleared by a working one: a target that
    /// is down is logged once, not once per stream.
    down: AtomicBool,
}

impl Forward {
    pub(super) fn new(target: SocketAddr, registry: &Registry) -> Result<Self, ClientError> {
        let failures = loopmix_net::metrics::counter_vec(
            registry,
            "loopmix_service_connect_failures_total",
            "Service: streams refused because the forward target did not take the \
             connection: reason refused (nothing listens), timeout, or unreachable",
            &["reason"],
        )?;
        Ok(Self {
            target,
            failures,
            down: AtomicBool::new(false),
        })
    }

    pub(super) fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connects to the forward target (the stream's own target plays no
    /// part: there is nothing to resolve and no policy to consult).
    pub(super) async fn dial(&self) -> Result<TcpStream, Refusal> {
        TcpStream::connect(self.target)
            .await
            .map_err(|e| Refusal::Failed(io_code(&e)))
    }

    /// Counts a failure, and logs the target going down or coming back
    /// (each once).
    pub(super) fn record(&self, result: &Result<TcpStream, Refusal>) {
        match result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(target = %self.target, "the service's forward target answers again");
                }
            }
            Err(r) => {
                let reason = match r.code() {
                    code::CONNECTION_REFUSED => "refused",
                    code::TTL_EXPIRED => "timeout",
                    _ => "unreachable",
                };
                self.failures.with_label_values(&[reason]).inc();
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(
                        target = %self.target,
                        reason,
                        "the service's forward target does not take connections; streams are \
                         refused until it does (logged once)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(f: &Forward, reason: &str) -> u64 {
        f.failures.with_label_values(&[reason]).get()
    }

    /// A target that is down is a CONNECTION_REFUSED (SOCKS5 0x05), counted
    /// each time; a target that is up again is reached.
    #[tokio::test]
    async fn a_target_that_is_down_is_refused_and_counted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = Registry::new();
        let f = Forward::new(addr, &r).unwrap();
        for _ in 0..2 {
            let res = f.dial().await;
            f.record(&res);
            assert_eq!(res.err().map(|e| e.code()), Some(code::CONNECTION_REFUSED));
        }
        assert_eq!(failures(&f, "refused"), 2);
        assert!(f.down.load(Ordering::Relaxed));
        let _l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let res = f.dial().await;
        f.record(&res);
        assert!(res.is_ok());
        assert!(!f.down.load(Ordering::Relaxed));
        assert_eq!(failures(&f, "refused"), 2);
    }
}
