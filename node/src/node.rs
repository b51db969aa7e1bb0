//! Assembles and runs a mix node: keys, topology, transport, the packet
//! pipeline, loop cover, topology reloads, metrics, and orderly shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use loopmix_core::keys::{IdentityKeypair, NodeId, SphinxKeypair, SphinxPublicKey};
use loopmix_core::mixing::loops::LoopTracker;
use loopmix_core::mixing::processor::{KeyRing, KeySlot, SphinxProcessor};
use loopmix_core::mixing::replay::ReplayCache;
use loopmix_core::topology::{Role, Topology};
use loopmix_core::transport::egress::Egress;
use loopmix_core::transport::ingress::Ingress;
use loopmix_core::transport::{PeerAllowList, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::NodeConfig;
use crate::cover::LoopCover;
use crate::metrics::NodeMetrics;
use crate::pipeline::{DelayStage, NodeIngress, Shared, spawn_workers};

/// Written to `data_dir/bound.json` once the node listens, so tools (and
/// tests using port 0) learn the real addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundAddresses {
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
}

/// Checks that `topology` lists this node with our keys and role.
pub fn check_self(
    topology: &Topology,
    me: NodeId,
    sphinx: SphinxPublicKey,
    role: Role,
) -> Result<(), String> {
    let Some(entry) = topology.get(&me) else {
        return Err(format!("field `nodes`: this node ({me}) is not listed"));
    };
    if entry.sphinx_key != sphinx {
        return Err(format!(
            "field `sphinx_key` of node {me}: lists {}, but our key is {sphinx}",
            entry.sphinx_key
        ));
    }
    if entry.role != role {
        return Err(format!(
            "field `role` of node {me}: lists {}, but we are configured as {role}",
            entry.role
        ));
    }
    Ok(())
}

fn file_mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Runs the node until `shutdown` is cancelled.
pub async fn run(cfg: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.node.role != Role::Mix {
        bail!(
            "{}: field `node.role`: only \"mix\" is implemented so far",
            cfg.node.identity_key.display()
        );
    }
    let identity = Arc::new(IdentityKeypair::read_pem(&cfg.node.identity_key)?);
    let sphinx = SphinxKeypair::read_pem(&cfg.node.sphinx_key)?;
    let me = identity.node_id();
    let topo_path = cfg.topology.file.clone();
    // Taken before reading, so a rewrite racing with start-up is reloaded.
    let topo_mtime = file_mtime(&topo_path);
    let topology = Topology::from_file(&topo_path)
        .with_context(|| format!("refusing to start: {}", topo_path.display()))?;
    if let Err(e) = check_self(&topology, me, sphinx.public(), cfg.node.role) {
        bail!("refusing to start: {}: {e}", topo_path.display());
    }
    std::fs::create_dir_all(&cfg.node.data_dir)
        .with_context(|| format!("creating {}", cfg.node.data_dir.display()))?;

    let metrics = NodeMetrics::new()?;
    let allowed = PeerAllowList::default();
    allowed.replace(topology.nodes().iter().map(|n| n.id));
    let refused = metrics.refused.clone();
    let transport = Transport::bind(
        cfg.node.listen,
        identity.clone(),
        allowed.clone(),
        Arc::new(move |reason| refused.with_label_values(&[reason]).inc()),
    )?;
    let metrics_listener = loopmix_core::metrics::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("binding metrics on {}", cfg.metrics.listen))?;
    let bound = BoundAddresses {
        quic: transport.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        pid: std::process::id(),
    };
    write_atomic(
        &cfg.node.data_dir.join("bound.json"),
        &serde_json::to_vec_pretty(&bound)?,
    )?;
    info!(id = %me, quic = %bound.quic, metrics = %bound.metrics, epoch = topology.epoch(), "mix node listening");

    // Keys and replay caches. The filter is reloaded if it was saved for
    // this same key: a restart must not reopen the door to old replays.
    let replay_path = cfg.node.data_dir.join("replay.bloom");
    let sphinx_public = sphinx.public().0;
    let replay = match ReplayCache::load(
        &replay_path,
        &sphinx_public,
        cfg.replay.capacity,
        cfg.replay.fp_rate,
    ) {
        Ok(Some(r)) => {
            info!(fill = r.fill_ratio(), "replay filter restored");
            r
        }
        Ok(None) => ReplayCache::new(cfg.replay.capacity, cfg.replay.fp_rate)?,
        Err(e) => {
            warn!(file = %replay_path.display(), error = %e, "cannot read replay filter; starting empty");
            ReplayCache::new(cfg.replay.capacity, cfg.replay.fp_rate)?
        }
    };
    let keys = KeyRing::default();
    keys.insert(KeySlot {
        epoch: topology.epoch(),
        key: sphinx,
        replay,
    });
    let processor = Arc::new(SphinxProcessor::new(keys.clone(), cfg.mixing.max_delay));

    metrics.topology_epoch.set(topology.epoch() as i64);
    metrics.topology_updates.inc();
    let packet_size = Arc::new(AtomicUsize::new(topology.params().packet_size()));
    let loop_timeout = if cfg.cover.loop_timeout.is_zero() {
        crate::cover::default_loop_timeout(&topology)
    } else {
        cfg.cover.loop_timeout
    };
    let shared = Arc::new(Shared::new(
        me,
        topology,
        metrics.clone(),
        LoopTracker::new(cfg.cover.pending_limit, loop_timeout, 200),
    ));
    let egress = Egress::new(
        transport.clone(),
        cfg.mixing.egress_queue,
        metrics.egress.clone(),
    );

    // Pipeline.
    let (job_tx, job_rx) = crossbeam_channel::bounded(cfg.mixing.ingress_queue);
    let (delay_tx, delay_rx) = mpsc::channel(8192);
    let stop_workers = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(
        cfg.worker_threads(),
        job_rx.clone(),
        processor.clone(),
        shared.clone(),
        delay_tx,
        stop_workers.clone(),
    )?;
    let delay_stage = tokio::spawn(
        DelayStage {
            shared: shared.clone(),
            egress: egress.clone(),
            limit: cfg.mixing.delay_queue_limit,
            late_tolerance: cfg.mixing.late_tolerance,
            drain: cfg.mixing.shutdown_drain,
        }
        .run(delay_rx),
    );
    let ingress_cancel = CancellationToken::new();
    let sink = Arc::new(NodeIngress {
        tx: job_tx,
        shared: shared.clone(),
    });
    tokio::spawn(
        Ingress::new(
            transport.clone(),
            sink,
            packet_size.clone(),
            ingress_cancel.clone(),
        )
        .run(),
    );

    let background = CancellationToken::new();
    tokio::spawn(loopmix_core::metrics::serve(
        metrics.registry.clone(),
        metrics_listener,
        background.clone(),
    ));
    if cfg.cover.enabled {
        tokio::spawn(
            LoopCover {
                shared: shared.clone(),
                egress: egress.clone(),
                configured_timeout: cfg.cover.loop_timeout,
                cancel: background.clone(),
            }
            .run(),
        );
    } else {
        warn!(
            "loop cover disabled: this node gives less anonymity and cannot detect (n-1) attacks"
        );
    }
    tokio::spawn(
        TopologyWatcher {
            path: topo_path,
            seen: topo_mtime,
            interval: cfg.topology.reload_interval,
            shared: shared.clone(),
            keys: keys.clone(),
            allowed,
            egress: egress.clone(),
            packet_size,
            role: cfg.node.role,
            cancel: background.clone(),
        }
        .run(),
    );
    // Gauges that are cheaper to sample than to maintain per packet.
    {
        let (shared, keys, cancel) = (shared.clone(), keys.clone(), background.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                shared.metrics.ingress_queue.set(job_rx.len() as i64);
                if let Some(newest) = keys.slots().last() {
                    shared.metrics.replay_fill.set(newest.replay.fill_ratio());
                }
            }
        });
    }

    {
        let (keys, path, cancel) = (keys.clone(), replay_path.clone(), background.clone());
        let every = cfg.replay.flush_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let (keys, path) = (keys.clone(), path.clone());
                let _ = tokio::task::spawn_blocking(move || save_replay(&keys, &path)).await;
            }
        });
    }

    shutdown.cancelled().await;
    info!("shutting down: no new packets accepted, draining the delay queue");
    let started = Instant::now();
    transport.stop_accepting();
    ingress_cancel.cancel();
    background.cancel();
    stop_workers.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    {
        let (keys, path) = (keys.clone(), replay_path.clone());
        let _ = tokio::task::spawn_blocking(move || save_replay(&keys, &path)).await;
    }
    if let Err(e) = delay_stage.await {
        error!(error = %e, "delay stage failed");
    }
    egress.flush_and_close(Duration::from_secs(3)).await;
    transport.close().await;
    info!(took = ?started.elapsed(), "stopped");
    Ok(())
}

fn save_replay(keys: &KeyRing, path: &Path) {
    if let Some(slot) = keys.slots().last()
        && let Err(e) = slot.replay.save(path, &slot.key.public().0)
    {
        warn!(file = %path.display(), error = %e, "cannot save replay filter");
    }
}

/// Re-reads the topology file when it changes. A document that does not
/// validate, or no longer lists this node with our key, is refused and the
/// last valid one stays in force.
struct TopologyWatcher {
    path: std::path::PathBuf,
    /// Modification time of the version in force.
    seen: Option<SystemTime>,
    interval: Duration,
    shared: Arc<Shared>,
    keys: KeyRing,
    allowed: PeerAllowList,
    egress: Egress,
    packet_size: Arc<AtomicUsize>,
    role: Role,
    cancel: CancellationToken,
}

impl TopologyWatcher {
    async fn run(self) {
        let mut seen = self.seen;
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(50)));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = file_mtime(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            self.reload();
        }
    }

    fn reload(&self) {
        let m = &self.shared.metrics;
        let topology = match Topology::from_file(&self.path) {
            Ok(t) => t,
            Err(e) => {
                m.topology_rejected.inc();
                warn!(file = %self.path.display(), error = %e, "topology update refused; keeping the last valid one");
                return;
            }
        };
        let current = self.shared.topology();
        let Some(slot) = self.keys.slots().last().cloned() else {
            return;
        };
        if let Err(e) = check_self(&topology, self.shared.me, slot.key.public(), self.role) {
            m.topology_rejected.inc();
            warn!(file = %self.path.display(), error = %e, "topology update refused; keeping the last valid one");
            return;
        }
        let (old_epoch, new_epoch) = (current.epoch(), topology.epoch());
        if new_epoch != old_epoch {
            // A static key across epochs keeps its one replay cache; packets
            // built for the previous epoch are still accepted (overlap).
            self.keys.alias(new_epoch, slot);
            self.keys.retain(|e| e == new_epoch || e == old_epoch);
        }
        self.allowed.replace(topology.nodes().iter().map(|n| n.id));
        self.egress.retain(|id| topology.contains(id));
        self.packet_size
            .store(topology.params().packet_size(), Ordering::Relaxed);
        m.topology_epoch.set(new_epoch as i64);
        m.topology_updates.inc();
        info!(
            epoch = new_epoch,
            nodes = topology.nodes().len(),
            "topology updated"
        );
        self.shared.set_topology(topology);
    }
}
