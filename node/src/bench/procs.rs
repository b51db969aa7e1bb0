//! Starting real `loopmix-node` processes on loopback, and a minimal peer
//! that injects and receives Sphinx packets over the real transport.
//!
//! What `loopmix-node bench` and `loopmix-node demo` run: real node
//! processes, so they measure and show exactly what an operator runs. The
//! end-to-end tests in `tests/` start their fixed-topology mixes and peers
//! with this same kit. Nodes listen on port 0 and report their addresses
//! in `bound.json`; the topology file is written afterwards and picked up by
//! the node's topology reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use loopmix_core::keys::{IdentityKeypair, NodeId, SphinxKeypair};
use loopmix_core::mixing::processor::{KeyRing, KeySlot, Processed, SphinxProcessor};
use loopmix_core::mixing::replay::ReplayCache;
use loopmix_core::pki::{Descriptor, SignedDescriptor, VerifiedTopology};
use loopmix_core::topology::{NodeEntry, Role, TopologyDocument};
use loopmix_core::wire::{Frame, FrameError};
use loopmix_net::config::ConfigEdit;
use loopmix_net::scrape::{http_get, series};
use loopmix_net::transport::egress::{Egress, EgressMetrics, OutPacket};
use loopmix_net::transport::ingress::{Ingress, IngressSink};
use loopmix_net::transport::{PeerAllowList, Transport};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::node::BoundAddresses;

/// A node directory made by `loopmix-node init`.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub id: NodeId,
    /// Fixed-topology mode: the node's entry (`address` is filled in once it
    /// runs). `None` for directory-mode nodes, whose Sphinx key is per epoch.
    pub entry: Option<NodeEntry>,
}

/// Runs `loopmix-node init --role role` in `dir`, listening (QUIC and
/// metrics) on port 0, with `extra` flags (for a node that registers with
/// directory authorities: `--authority KEY=URL ... --threshold k`). Returns
/// what `init` printed, JSON.
pub fn init_node_raw(
    bin: &Path,
    dir: &Path,
    role: Role,
    extra: &[String],
) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(["init", "--role", &role.to_string()])
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .with_context(|| format!("running {} init", bin.display()))?;
    if !out.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Runs `loopmix-node init` in `dir` for a mix of `layer` listening on port 0.
pub fn init_node(bin: &Path, dir: &Path, layer: u8) -> anyhow::Result<NodeDir> {
    let stdout = init_node_raw(bin, dir, Role::Mix, &[])?;
    let mut entry: NodeEntry = serde_json::from_slice(&stdout)
        .with_context(|| format!("init printed {:?}", String::from_utf8_lossy(&stdout)))?;
    entry.layer = Some(layer);
    Ok(NodeDir {
        dir: dir.to_path_buf(),
        config: dir.join("node.toml"),
        id: entry.id,
        entry: Some(entry),
    })
}

/// Edits a node's config (benches and tests tune queues, delays, cover):
/// TOML edits that keep the comments, refused (file unchanged) unless the
/// node's own loader accepts the result.
pub fn edit_config(nd: &NodeDir, f: impl FnOnce(&mut ConfigEdit)) -> anyhow::Result<()> {
    let mut c = ConfigEdit::open(&nd.config)?;
    f(&mut c);
    c.save(|p| NodeConfig::load(p).map(|_| ()))?;
    Ok(())
}

/// Writes `doc` atomically to `path`.
pub fn write_topology(path: &Path, doc: &TopologyDocument) -> anyhow::Result<()> {
    loopmix_net::files::write_atomic(path, &serde_json::to_vec_pretty(doc)?)?;
    Ok(())
}

/// A running node process; killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub bound: BoundAddresses,
    pub dir: PathBuf,
}

impl NodeProcess {
    /// Starts `loopmix-node run` and waits for `bound.json`. The config's
    /// topology file must already list the node (placeholder addresses are fine).
    pub fn start(bin: &Path, nd: &NodeDir) -> anyhow::Result<Self> {
        let bound_path = nd.dir.join("data").join("bound.json");
        let _ = std::fs::remove_file(&bound_path);
        let log = std::fs::File::create(nd.dir.join("node.log"))?;
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&nd.config)
            .env(
                "RUST_LOG",
                std::env::var("LOOPMIX_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning loopmix-node run")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(bytes) = std::fs::read(&bound_path)
                && let Ok(bound) = serde_json::from_slice::<BoundAddresses>(&bytes)
            {
                return Ok(Self {
                    child,
                    bound,
                    dir: nd.dir.clone(),
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "node exited with {status} before listening; log:\n{}",
                    std::fs::read_to_string(nd.dir.join("node.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not write {}", bound_path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(http_get(self.bound.metrics, "/metrics")?)
    }

    /// Value of one series, e.g. `loopmix_packets_dropped_total{reason="replay"}`.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text()?;
        series(&text, name).ok_or_else(|| anyhow!("no series {name}"))
    }

    /// Polls `series` until `pred` holds or `timeout` passes; returns the last value.
    pub fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let scraped = self.metric(series);
            let v = scraped.as_ref().copied().unwrap_or(f64::NAN);
            if pred(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                // The log's tail says why (a node that exited, or one still
                // waiting for something), which the value alone cannot.
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                bail!(
                    "{series} = {v} after {timeout:?} ({}); last lines of {}:\n{}",
                    scraped
                        .err()
                        .map_or("scraped".to_string(), |e| e.to_string()),
                    self.dir.join("node.log").display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, like a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// CPU time (user + system) the process has used, from /proc. Assumes
    /// the usual 100 clock ticks per second.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.child.id())
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // LOOPMIX_TEST_LOGS=1 shows the logs of passing tests too.
        if std::thread::panicking() || std::env::var_os("LOOPMIX_TEST_LOGS").is_some() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- log of {} ----\n{}",
                self.dir.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// A packet that reached a [`Peer`] as its final hop.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub identifier: [u8; 16],
    pub plaintext: Vec<u8>,
    pub at: Instant,
}

struct PeerSink {
    processor: Option<SphinxProcessor>,
    frames: AtomicU64,
    bad: AtomicU64,
    deliveries: Mutex<Vec<Delivery>>,
}

impl IngressSink for PeerSink {
    fn packet(&self, _peer: NodeId, frame: Frame, received: Instant) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let Some(p) = &self.processor else { return };
        match p.process(frame.key_epoch, &frame.packet) {
            Ok(Processed::Final {
                identifier,
                payload,
                ..
            }) => {
                if let Ok(plaintext) = payload.recover_plaintext()
                    && let Ok(mut d) = self.deliveries.lock()
                {
                    d.push(Delivery {
                        identifier,
                        plaintext,
                        at: received,
                    });
                }
            }
            _ => {
                self.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn malformed(&self, _peer: NodeId, _err: FrameError) {
        self.bad.fetch_add(1, Ordering::Relaxed);
    }
}

/// A provider-like endpoint for tests and benchmarks: listed in the topology
/// as a provider, it injects packets into the mixnet and is the final hop of
/// the packets addressed to it.
pub struct Peer {
    pub identity: Arc<IdentityKeypair>,
    pub sphinx_public: loopmix_core::keys::SphinxPublicKey,
    pub transport: Transport,
    pub egress: Egress,
    pub allowed: PeerAllowList,
    sink: Arc<PeerSink>,
    /// Our key ring when processing final hops (one static key, aliased to
    /// every epoch we adopt).
    ring: Option<KeyRing>,
    packet_size: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Peer {
    /// Binds on 127.0.0.1:0. With `process_final`, packets are unwrapped and
    /// kept as [`Delivery`]s (key epoch `epoch`); otherwise only counted.
    pub fn bind(epoch: u64, process_final: bool) -> anyhow::Result<Self> {
        Self::bind_with(IdentityKeypair::generate(), epoch, process_final)
    }

    pub fn bind_with(
        identity: IdentityKeypair,
        epoch: u64,
        process_final: bool,
    ) -> anyhow::Result<Self> {
        let identity = Arc::new(identity);
        let sphinx = SphinxKeypair::generate();
        let sphinx_public = sphinx.public();
        let ring = if process_final {
            let ring = KeyRing::default();
            ring.insert(KeySlot {
                epoch,
                key: sphinx,
                replay: ReplayCache::new(1_000_000, 1e-6)?,
            });
            Some(ring)
        } else {
            None
        };
        let processor = ring
            .clone()
            .map(|r| SphinxProcessor::new(r, Duration::from_secs(60)));
        let allowed = PeerAllowList::default();
        let transport = Transport::bind(
            "127.0.0.1:0".parse()?,
            identity.clone(),
            allowed.clone(),
            Arc::new(|_| {}),
        )?;
        let metrics = EgressMetrics {
            sent: IntCounter::new("sent", "sent")?,
            dropped: IntCounterVec::new(Opts::new("dropped", "dropped"), &["reason"])?,
            links_up: IntGauge::new("up", "up")?,
        };
        let egress = Egress::new(transport.clone(), 200_000, metrics);
        let sink = Arc::new(PeerSink {
            processor,
            frames: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            deliveries: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        // Until `adopt` sets the real size, every frame counts as malformed.
        let packet_size = Arc::new(AtomicUsize::new(0));
        tokio::spawn(
            Ingress::new(
                transport.clone(),
                sink.clone(),
                packet_size.clone(),
                cancel.clone(),
            )
            .run(),
        );
        Ok(Self {
            identity,
            sphinx_public,
            transport,
            egress,
            allowed,
            sink,
            ring,
            packet_size,
            cancel,
        })
    }

    /// Our descriptor for `epoch` (role provider, our static Sphinx key).
    pub fn descriptor(&self, epoch: u64) -> anyhow::Result<SignedDescriptor> {
        let d = Descriptor::new(
            self.id(),
            self.sphinx_public,
            epoch,
            self.transport.local_addr()?,
            Role::Provider,
            loopmix_net::clock::unix_now(),
        );
        Ok(d.sign(&self.identity)?)
    }

    /// Like [`adopt`](Self::adopt) for a directory document; also accepts
    /// packets built for its epoch.
    pub fn adopt_verified(&self, v: &VerifiedTopology) {
        let t = v.topology();
        self.allowed.replace(t.nodes().iter().map(|n| n.id));
        self.packet_size
            .store(t.params().packet_size(), Ordering::Relaxed);
        if let Some(ring) = &self.ring
            && let Some(slot) = ring.slots().first().cloned()
        {
            ring.alias(v.epoch(), slot);
        }
    }

    pub fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Our entry for the topology (role provider).
    pub fn entry(&self) -> anyhow::Result<NodeEntry> {
        Ok(NodeEntry {
            id: self.id(),
            sphinx_key: self.sphinx_public,
            address: self.transport.local_addr()?,
            role: Role::Provider,
            layer: None,
        })
    }

    /// Sets the packet size the ingress expects and the peers allowed in.
    pub fn adopt(&self, doc: &TopologyDocument) {
        self.allowed.replace(doc.nodes.iter().map(|n| n.id));
        self.packet_size
            .store(doc.params.packet_size(), Ordering::Relaxed);
    }

    pub fn send(&self, to: &NodeEntry, key_epoch: u64, packet: Vec<u8>) -> anyhow::Result<()> {
        self.egress
            .send(to.id, to.address, OutPacket { key_epoch, packet })
            .map_err(|r| anyhow!("send refused: {}", r.label()))
    }

    pub fn frames_received(&self) -> u64 {
        self.sink.frames.load(Ordering::Relaxed)
    }

    pub fn bad_frames(&self) -> u64 {
        self.sink.bad.load(Ordering::Relaxed)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.sink
            .deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `n` deliveries arrived.
    pub async fn wait_deliveries(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.deliveries();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn close(&self) {
        self.cancel.cancel();
        self.egress.flush_and_close(Duration::from_secs(2)).await;
        self.transport.close().await;
    }
}

/// A running set of mixes, one per layer, sharing one topology.
pub struct Mixnet {
    pub nodes: Vec<NodeProcess>,
    pub dirs: Vec<NodeDir>,
    /// The topology in force: mixes first (layer order), then `others`.
    pub doc: TopologyDocument,
}

/// Inits and starts one mix per layer of `params` under `root`, with
/// `others` (e.g. a [`Peer`]'s entry) also in the topology. `tweak` edits each
/// node's config. Returns once every node runs the final topology.
pub fn launch_mixnet(
    bin: &Path,
    root: &Path,
    params: loopmix_core::topology::NetworkParams,
    others: Vec<NodeEntry>,
    tweak: impl Fn(&mut ConfigEdit),
) -> anyhow::Result<Mixnet> {
    let mut dirs = Vec::new();
    for layer in 1..=params.layers {
        let nd = init_node(bin, &root.join(format!("mix{layer}")), layer)?;
        edit_config(&nd, |c| {
            c.set("topology.reload_interval", "100ms");
            tweak(c);
        })?;
        dirs.push(nd);
    }
    let mut doc = TopologyDocument {
        params,
        nodes: dirs.iter().filter_map(|d| d.entry.clone()).collect(),
    };
    // Placeholders (port i + 1 on loopback) until the nodes report their ports.
    for (i, n) in doc.nodes.iter_mut().enumerate() {
        n.address = SocketAddr::from(([127, 0, 0, 1], i as u16 + 1));
    }
    doc.nodes.extend(others);
    for d in &dirs {
        write_topology(&d.dir.join("topology.json"), &doc)?;
    }
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(NodeProcess::start(bin, d)?);
    }
    for (i, n) in nodes.iter().enumerate() {
        doc.nodes[i].address = n.bound.quic;
    }
    for d in &dirs {
        write_topology(&d.dir.join("topology.json"), &doc)?;
    }
    for n in &nodes {
        n.wait_metric(
            "loopmix_topology_updates_total",
            Duration::from_secs(30),
            |v| v >= 2.0,
        )?;
    }
    Ok(Mixnet { nodes, dirs, doc })
}

/// CPU seconds (user + system, all threads) process `pid` has used, from
/// /proc (ticks of 1/100 s).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
