//! The one launcher of the end-to-end tests' networks: [`TestNet`], a
//! [`Localnet`] of real authority, mix, provider, exit and SOCKS5 processes
//! (the same code `loopmix-localnet` runs), optionally with a fault relay in
//! front of every mix and provider; an HTTP origin whose bodies end only
//! when the connection closes; and `curl --socks5-hostname` downloads
//! checked byte for byte.
//!
//! Nodes are otherwise started one at a time: by the fixed-topology
//! fixture in [`crate::mixnet`] (no directory at all), and by the
//! directory tests that register single nodes with [`crate::authorities`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::bins::workspace_bin;
use crate::http::{Framing, Origin, curl_socks, http_get};
use anyhow::{anyhow, bail, ensure};
use clap::Parser;
use loopmix_core::pki::{EpochDocument, SignedTopology};
use loopmix_core::topology::Role;
use loopmix_localnet::Options;
use loopmix_localnet::faults::{RelayConfig, RelayHandle, RelaySet, RelayStats};
use loopmix_localnet::network::{Binaries, Kind, Localnet, Signals};
use loopmix_localnet::process::log_tail;
pub use loopmix_localnet::soak::traffic::sha256_hex as sha;
use loopmix_net::scrape as metrics;

pub use crate::http::file_bytes;

/// How a download through the mixnet ended.
#[derive(Debug)]
pub enum Download {
    /// Every byte, in order (SHA-256 checked).
    Intact { secs: f64 },
    /// curl reported an error; what arrived until then was a correct prefix.
    Failed {
        code: i32,
        stderr: String,
        got: usize,
    },
}

/// Unix time in seconds with millisecond resolution (the project's one
/// wall clock, `loopmix_net::clock::unix_now_ms`).
pub fn unix_now_f64() -> f64 {
    loopmix_net::clock::unix_now_ms() as f64 / 1000.0
}

/// Sleeps until Unix time `t` (returns at once if it has passed).
pub fn sleep_until_unix(t: f64) {
    let left = t - unix_now_f64();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// Sleeps until half a second into the next epoch; its document.
pub fn wait_epoch_start(f: &TestNet) -> anyhow::Result<EpochDocument> {
    let now = f.current_topology()?;
    sleep_until_unix((now.valid_from + now.epoch_length_s) as f64 + 0.5);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc = f.current_topology()?;
        if doc.epoch() > now.epoch() {
            return Ok(doc);
        }
        ensure!(
            Instant::now() < deadline,
            "epoch {} did not end on time",
            now.epoch()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a [`TestNet`] puts a fault relay in front of every mix and
/// provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relays {
    On,
    Off,
}

/// The network under test. Field order matters: the localnet (its
/// processes, then its relays) stops before the runtime the relays run on.
pub struct TestNet {
    pub net: Localnet,
    /// Runs the relays (with [`Relays::On`]).
    _rt: Option<tokio::runtime::Runtime>,
    pub socks: SocketAddr,
    /// The origin downloads come from (bodies end when the connection
    /// closes: only the stream's own end-of-data completes them).
    pub origin: Origin,
}

impl TestNet {
    /// A localnet of `preset` with `epoch`-long epochs (`"15s"`, `"20m"`)
    /// behind fault relays.
    pub fn start(root: &Path, preset: &str, epoch: &str) -> anyhow::Result<Self> {
        Self::start_with(
            root,
            Relays::On,
            &["--preset", preset, "--epoch-length", epoch],
        )
    }

    /// A localnet configured by `loopmix-localnet` command-line `args`
    /// (checked by its own parser, hidden test knobs included: e.g.
    /// `--fault-drop-rate`, `--exit-allow`), the SOCKS5 proxy on a free
    /// port.
    pub fn start_with(root: &Path, relays: Relays, args: &[&str]) -> anyhow::Result<Self> {
        let bins = Binaries {
            node: workspace_bin("loopmix-node")?,
            directory: workspace_bin("loopmix-directory")?,
            client: workspace_bin("loopmix-client")?,
        };
        let opts = Options::try_parse_from(
            [
                "loopmix-localnet",
                "--socks-listen",
                "127.0.0.1:0",
                "--ready-timeout",
                "200s",
            ]
            .iter()
            .chain(args),
        )?;
        opts.validate()?;
        let mut net = Localnet::new(opts, bins, root.to_path_buf(), Signals::default());
        let rt = match relays {
            Relays::On => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                net.use_fault_relays(RelaySet::new(rt.handle().clone(), RelayConfig::default()));
                Some(rt)
            }
            Relays::Off => None,
        };
        let ready = net.start()?;
        Ok(Self {
            net,
            _rt: rt,
            socks: ready.socks5,
            origin: Origin::start(Framing::UntilClose),
        })
    }

    pub fn addr(&self, member: &str) -> anyhow::Result<SocketAddr> {
        self.net
            .member(member)
            .and_then(|m| m.metrics)
            .ok_or_else(|| anyhow!("no metrics address for {member}"))
    }

    /// Sum of every series of `name` at `member`; None if unreachable or absent.
    pub fn metric(&self, member: &str, name: &str) -> Option<f64> {
        let text = http_get(self.addr(member).ok()?, "/metrics").ok()?;
        metrics::sum(&text, name)
    }

    /// The value of the series of `name` whose `label` is `value` at
    /// `member`; None if unreachable or absent.
    pub fn labelled(&self, member: &str, name: &str, label: &str, value: &str) -> Option<f64> {
        let text = http_get(self.addr(member).ok()?, "/metrics").ok()?;
        metrics::by_label(&text, name, label)
            .into_iter()
            .find(|(v, _)| v == value)
            .map(|(_, x)| x)
    }

    /// Kills member `name` (SIGKILL) and starts it again on the same
    /// addresses with the same keys and data; waits until it listens.
    pub fn crash_and_restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.net.kill(name)?;
        self.net.restart(name, Duration::from_secs(120))
    }

    /// Fails if any member exited, with its log.
    pub fn all_running(&mut self) -> anyhow::Result<()> {
        Ok(self.net.check()?)
    }

    pub fn relay(&self, name: &str) -> anyhow::Result<RelayHandle> {
        self.net
            .relays()
            .and_then(|r| r.get(name))
            .ok_or_else(|| anyhow!("no relay for {name}"))
    }

    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.net
            .members
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.name.clone())
            .collect()
    }

    /// The member that publishes `addr`.
    pub fn by_public(&self, addr: SocketAddr) -> anyhow::Result<String> {
        self.net
            .members
            .iter()
            .find(|m| m.public == Some(addr))
            .map(|m| m.name.clone())
            .ok_or_else(|| anyhow!("no member publishes {addr}"))
    }

    /// The topology document in force, from the first authority that answers.
    pub fn current_topology(&self) -> anyhow::Result<EpochDocument> {
        let mut last = anyhow!("no authority");
        for a in self.names(Kind::Authority) {
            let Ok(addr) = self.addr(&a) else { continue };
            match http_get(addr, "/v1/topology/current").and_then(|body| {
                let signed: SignedTopology = serde_json::from_str(&body)?;
                Ok(serde_json::from_slice::<EpochDocument>(
                    &signed.document_bytes()?,
                )?)
            }) {
                Ok(doc) => return Ok(doc),
                Err(e) => last = e.context(a),
            }
        }
        Err(last)
    }

    /// Names of the mixes of `layer` in `doc`.
    pub fn layer(&self, doc: &EpochDocument, layer: u8) -> anyhow::Result<Vec<String>> {
        doc.topology
            .nodes
            .iter()
            .filter(|n| n.role == Role::Mix && n.layer == Some(layer))
            .map(|n| self.by_public(n.address))
            .collect()
    }

    /// `curl --socks5-hostname` for `GET /<n>`, checked byte for byte.
    /// Err only for what must never happen: curl content with wrong bytes.
    pub fn download(&self, n: usize, max_secs: u64) -> anyhow::Result<Download> {
        download(self.socks, self.origin.addr, n, max_secs)
    }

    pub fn download_intact(&self, n: usize, max_secs: u64) -> anyhow::Result<f64> {
        match self.download(n, max_secs)? {
            Download::Intact { secs } => Ok(secs),
            Download::Failed { code, stderr, got } => {
                bail!("download of {n} bytes failed (curl {code}, {got} bytes): {stderr}")
            }
        }
    }

    /// Until no stream is open at the proxy and the exit.
    pub fn streams_closed(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.metric("socks5", "loopmix_streams_open");
            let e = self.metric("exit", "loopmix_streams_open");
            if s == Some(0.0) && e == Some(0.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("streams still open after {timeout:?}: proxy {s:?}, exit {e:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `loopmix-client ARGS`, quiet logs.
    pub fn client(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.net.binaries().client)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()?)
    }

    pub fn client_address(&self, config: &Path) -> anyhow::Result<String> {
        let out = self.client(&["address", "--config", &config.display().to_string()])?;
        ensure!(
            out.status.success(),
            "address: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// The last lines of each named member's log.
    pub fn tails(&self, names: &[&str]) -> String {
        let mut out = String::new();
        for n in names {
            if let Some(m) = self.net.member(n) {
                out.push_str(&format!(
                    "---- {n} ({}) ----\n{}\n",
                    m.log.display(),
                    log_tail(&m.log, 25)
                ));
            }
        }
        out
    }

    /// Every relay's counters since `before`, for the report.
    pub fn relay_deltas(&self, before: &[(String, RelayStats)]) -> String {
        let now = self.net.relays().map(RelaySet::stats).unwrap_or_default();
        before
            .iter()
            .filter_map(|(n, b)| now.get(n).map(|s| format!("  {n}: {}", *s - *b)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn relay_snapshot(&self) -> Vec<(String, RelayStats)> {
        self.net
            .relays()
            .map(RelaySet::stats)
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
}

pub fn download(
    socks: SocketAddr,
    http: SocketAddr,
    n: usize,
    max_secs: u64,
) -> anyhow::Result<Download> {
    download_path(socks, http, &format!("/{n}"), n, max_secs)
}

/// [`download`] of any path whose complete answer is `/<n>`'s.
pub fn download_path(
    socks: SocketAddr,
    http: SocketAddr,
    path: &str,
    n: usize,
    max_secs: u64,
) -> anyhow::Result<Download> {
    let t = Instant::now();
    let out = curl_socks(
        socks,
        &format!("http://127.0.0.1:{}{path}", http.port()),
        max_secs,
    )?;
    let want = file_bytes(n);
    let got = out.body;
    let code = out.code;
    if code == 0 {
        ensure!(
            got.len() == want.len() && sha(&got) == sha(&want),
            "SILENT LOSS: curl succeeded with {} of {n} bytes, SHA-256 {} (want {})",
            got.len(),
            sha(&got),
            sha(&want)
        );
        return Ok(Download::Intact {
            secs: t.elapsed().as_secs_f64(),
        });
    }
    let stderr = out.stderr.trim().to_string();
    ensure!(
        !stderr.is_empty(),
        "curl failed ({code}) without saying why"
    );
    ensure!(
        got.len() <= want.len() && got == want[..got.len()],
        "CORRUPTION: the {} bytes before curl's error are not a prefix of the file",
        got.len()
    );
    Ok(Download::Failed {
        code,
        stderr,
        got: got.len(),
    })
}

pub fn describe(d: &Download, n: usize) -> String {
    match d {
        Download::Intact { secs } => format!("{} KiB intact in {secs:.1} s", n / 1024),
        Download::Failed { code, stderr, got } => {
            format!("failed clearly after {got} of {n} bytes (curl {code}: {stderr})")
        }
    }
}

/// Starts a download on a thread (to fault the network under it).
pub fn download_in_background(
    f: &TestNet,
    n: usize,
    max_secs: u64,
) -> std::thread::JoinHandle<anyhow::Result<Download>> {
    let (socks, http) = (f.socks, f.origin.addr);
    std::thread::spawn(move || download(socks, http, n, max_secs))
}

/// Waits until the proxy has received at least `bytes` more stream bytes
/// than `base` (the download is under way).
pub fn wait_stream_bytes(
    f: &TestNet,
    base: f64,
    bytes: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = f
            .metric("socks5", "loopmix_stream_bytes_total")
            .unwrap_or(0.0);
        if v - base >= bytes {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "download did not start: {v} stream bytes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the scenarios' summary; if any failed, stops the network (`net`
/// is dropped first) and panics with the failures, keeping `tmp`'s logs.
pub fn summarize<N>(
    t0: Instant,
    report: &[String],
    failed: &[String],
    tmp: tempfile::TempDir,
    net: N,
) {
    eprintln!(
        "\n==== summary ({:.0} s) ====\n{}",
        t0.elapsed().as_secs_f64(),
        report.join("\n")
    );
    if !failed.is_empty() {
        let kept = tmp.keep();
        drop(net);
        panic!(
            "scenarios failed (logs kept in {}):\n{}",
            kept.display(),
            failed.join("\n")
        );
    }
}
