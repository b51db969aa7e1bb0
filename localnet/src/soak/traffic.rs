//! The soak's traffic: an HTTP server on loopback and `curl` clients that
//! fetch from it (and post to it) through the SOCKS5 proxy, checking the
//! SHA-256 of every byte that comes back.
//!
//! Downloads are `GET /blob/SEED/LEN`: LEN bytes of a ChaCha8 stream seeded
//! with SEED, so the soak knows what must arrive without keeping a copy.
//! Uploads are `POST /sha256` and the server answers with the digest of what
//! it received.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Largest blob the server makes or accepts.
pub const MAX_BLOB: usize = 16 << 20;

/// The test payload `seed` of `len` bytes.
pub fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn get_blob(Path((seed, len)): Path<(u64, usize)>) -> Response {
    if len > MAX_BLOB {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too large\n").into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        blob(seed, len),
    )
        .into_response()
}

async fn post_sha256(body: Bytes) -> String {
    sha256_hex(&body)
}

/// Starts the test HTTP server on `127.0.0.1:0` (on the current runtime);
/// returns its address.
pub async fn start_server() -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/blob/{seed}/{len}", get(get_blob))
        .route("/sha256", post(post_sha256))
        .layer(DefaultBodyLimit::max(MAX_BLOB));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the test HTTP server")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("loopmix-soak: test HTTP server stopped: {e}");
        }
    });
    Ok(addr)
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Exit → SOCKS5 client (GET).
    Down,
    /// SOCKS5 client → exit (POST).
    Up,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Down => "download",
            Direction::Up => "upload",
        }
    }
}

/// How one transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte arrived and the digest matches.
    Intact,
    /// curl failed (its exit code; `None` if killed by a signal) and said
    /// this on stderr.
    Failed {
        curl_exit: Option<i32>,
        error: String,
    },
    /// curl succeeded but the bytes differ from what was sent.
    Corrupted { detail: String },
    /// Stopped by the soak itself (Ctrl-C), not a verdict on the network.
    Aborted,
}

/// One transfer, for the totals and `transfers.csv`.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub direction: Direction,
    /// Seconds since the soak started, when it began.
    pub started_s: f64,
    pub bytes: usize,
    pub seconds: f64,
    pub outcome: Outcome,
}

/// Every transfer so far, plus how many are in flight.
#[derive(Debug, Default)]
pub struct Tally {
    pub done: Vec<Transfer>,
    pub in_flight: usize,
}

pub type SharedTally = Arc<Mutex<Tally>>;

/// What the traffic workers should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start transfers at the configured pace.
    Run,
    /// Start no more; finish the ones in flight.
    Drain,
    /// Kill the transfers in flight (Ctrl-C).
    Abort,
}

/// One traffic worker: transfers one way, one at a time, paced to
/// `bytes_per_s` on average.
#[derive(Debug, Clone)]
pub struct Worker {
    pub direction: Direction,
    pub socks: SocketAddr,
    pub server: SocketAddr,
    /// Sizes drawn uniformly from this range (bytes).
    pub sizes: (usize, usize),
    pub bytes_per_s: f64,
    /// curl's `--max-time` for a transfer of `n` bytes: `base + n / floor`.
    pub timeout_base: Duration,
    pub timeout_floor_bytes_per_s: f64,
    pub seed: u64,
}

impl Worker {
    fn timeout(&self, n: usize) -> Duration {
        self.timeout_base + Duration::from_secs_f64(n as f64 / self.timeout_floor_bytes_per_s)
    }

    /// Runs until `phase` leaves [`Phase::Run`] (and the transfer in flight
    /// has ended), recording every transfer in `tally`.
    pub async fn run(self, t0: Instant, tally: SharedTally, mut phase: watch::Receiver<Phase>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut next_start = Instant::now();
        loop {
            if *phase.borrow() != Phase::Run {
                return;
            }
            let len = rng.random_range(self.sizes.0..=self.sizes.1);
            let seed: u64 = rng.random();
            let started = Instant::now();
            // Pace by start times: a slow transfer is followed at once by the
            // next, a fast one by a pause.
            next_start = next_start.max(started)
                + Duration::from_secs_f64(len as f64 / self.bytes_per_s.max(1.0));
            if let Ok(mut t) = tally.lock() {
                t.in_flight += 1;
            }
            let outcome = tokio::select! {
                o = self.transfer(seed, len) => o,
                () = wait_for(&mut phase, Phase::Abort) => Outcome::Aborted,
            };
            if let Ok(mut t) = tally.lock() {
                t.in_flight -= 1;
                t.done.push(Transfer {
                    direction: self.direction,
                    started_s: (started - t0).as_secs_f64(),
                    bytes: len,
                    seconds: started.elapsed().as_secs_f64(),
                    outcome,
                });
            }
            tokio::select! {
                () = tokio::time::sleep_until(next_start.into()) => {}
                () = wait_for_not(&mut phase, Phase::Run) => return,
            }
        }
    }

    /// One curl run through the proxy; the child is killed if this future
    /// is dropped.
    async fn transfer(&self, seed: u64, len: usize) -> Outcome {
        let expected = blob(seed, len);
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["--silent", "--show-error", "--fail", "--output", "-"])
            .arg("--socks5-hostname")
            .arg(self.socks.to_string())
            .arg("--max-time")
            .arg(format!("{:.0}", self.timeout(len).as_secs_f64()));
        let body = match self.direction {
            Direction::Down => {
                cmd.arg(format!("http://{}/blob/{seed}/{len}", self.server));
                None
            }
            Direction::Up => {
                // No `Expect: 100-continue` round trip before the body.
                cmd.args(["-H", "Expect:"])
                    .args(["-H", "Content-Type: application/octet-stream"])
                    .args(["--data-binary", "@-"])
                    .arg(format!("http://{}/sha256", self.server));
                Some(expected.clone())
            }
        };
        cmd.stdin(if body.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal reaches the soak,
        // which ends its transfers itself (and counts them as aborted).
        .process_group(0)
        .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failed {
                    curl_exit: None,
                    error: format!("cannot run curl: {e}"),
                };
            }
        };
        if let (Some(body), Some(mut stdin)) = (body, child.stdin.take()) {
            tokio::spawn(async move {
                // A write error shows up as curl's own failure.
                let _ = stdin.write_all(&body).await;
            });
        }
        let out = match child.wait_with_output().await {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Failed {
                    curl_exit: None,
                    error: format!("waiting for curl: {e}"),
                };
            }
        };
        if !out.status.success() {
            return Outcome::Failed {
                curl_exit: out.status.code(),
                error: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            };
        }
        match self.direction {
            Direction::Down => {
                if out.stdout.len() != len {
                    Outcome::Corrupted {
                        detail: format!("{} bytes instead of {len}", out.stdout.len()),
                    }
                } else if sha256_hex(&out.stdout) != sha256_hex(&expected) {
                    Outcome::Corrupted {
                        detail: "SHA-256 differs".into(),
                    }
                } else {
                    Outcome::Intact
                }
            }
            Direction::Up => {
                let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if got == sha256_hex(&expected) {
                    Outcome::Intact
                } else {
                    Outcome::Corrupted {
                        detail: format!("server received a body with SHA-256 {got:.16}…"),
                    }
                }
            }
        }
    }
}

async fn wait_for(phase: &mut watch::Receiver<Phase>, want: Phase) {
    // A closed channel never changes again: wait forever.
    if phase.wait_for(|p| *p == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_for_not(phase: &mut watch::Receiver<Phase>, not: Phase) {
    if phase.wait_for(|p| *p != not).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_deterministic_and_distinct() {
        assert_eq!(blob(1, 1000), blob(1, 1000));
        assert_ne!(blob(1, 1000), blob(2, 1000));
        assert_eq!(&blob(1, 2000)[..1000], &blob(1, 1000)[..]);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn server_serves_blobs_and_digests() {
        let addr = start_server().await.unwrap();
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "-o", "-"])
            .arg(format!("http://{addr}/blob/7/300000"))
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, blob(7, 300_000));
        let mut child = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "-H", "Expect:", "--data-binary", "@-"])
            .arg(format!("http://{addr}/sha256"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&blob(8, 200_000)).await.unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            sha256_hex(&blob(8, 200_000))
        );
    }
}
