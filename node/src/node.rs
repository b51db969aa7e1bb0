//! Assembles and runs a mix node: keys, topology source (directory or
//! file), transport, the packet pipeline, loop cover, metrics, and orderly
//! shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
use loopmix_core::mixing::loops::LoopTracker;
use loopmix_core::mixing::processor::SphinxProcessor;
use loopmix_core::pki::VerifiedTopology;
use loopmix_core::topology::Role;
use loopmix_net::directory::{DirectoryClient, DirectoryClientConfig};
use loopmix_net::files::write_atomic;
use loopmix_net::transport::egress::Egress;
use loopmix_net::transport::ingress::{ClientPolicy, Ingress};
use loopmix_net::transport::{PeerAllowList, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{DirectorySection, NodeConfig};
use crate::cover::LoopCover;
use crate::directory_sync::{Follower, Registrar};
use crate::epoch_keys::EpochKeys;
use crate::error::NodeError;
use crate::metrics::NodeMetrics;
use crate::pipeline::{DelayStage, NodeContext, NodeIngress, PeerLimits, RateLimit, spawn_workers};
use crate::provider::control::{ControlConfig, ProviderControl};
use crate::provider::delivery::DeliveryStage;
use crate::provider::inbox::{InboxLimits, InboxStore};
use crate::topology_source::{TopologySink, TopologyWatcher, check_self, read_topology_file};

/// Written to `data_dir/bound.json` once the node listens, so tools (and
/// tests using port 0) learn the real addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundAddresses {
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
}

/// Builds the directory client from `[directory]`.
fn directory_client(
    d: &DirectorySection,
    registry: &prometheus::Registry,
) -> Result<Arc<DirectoryClient>, NodeError> {
    let cfg = DirectoryClientConfig::pinned(&d.authorities, d.threshold, d.request_timeout)?;
    Ok(Arc::new(DirectoryClient::new(cfg, registry)?))
}

/// Waits for the first verified topology document; `None` on shutdown.
async fn first_document(
    dir: &DirectoryClient,
    shutdown: &CancellationToken,
) -> Option<Arc<VerifiedTopology>> {
    let mut logged = false;
    loop {
        match dir.fetch_current().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if !logged {
                    warn!(error = %e, "no valid topology yet; waiting for the directory");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

struct ProviderParts {
    control: Arc<ProviderControl>,
    delivery: std::thread::JoinHandle<()>,
}

/// Opens the inbox store, starts the delivery stage, lets clients connect.
fn start_provider(
    cfg: &NodeConfig,
    shared: &Arc<NodeContext>,
    egress: &Egress,
    allowed: &PeerAllowList,
    background: &CancellationToken,
    stop: &Arc<AtomicBool>,
) -> Result<ProviderParts, NodeError> {
    let p = &cfg.provider;
    // Inbox entries are at most a whole sealed payload (a SURB's use, kept
    // as it came), so a pull slot fits one.
    let message_len = shared.topology().params().payload_size;
    let limits = InboxLimits {
        max_messages_per_inbox: p.inbox_max_messages,
        max_bytes_per_inbox: p.inbox_max_bytes,
        max_age: p.inbox_max_age,
        max_message_bytes: message_len,
        max_clients: p.max_clients,
    };
    let path = cfg.node.data_dir.join("inbox.redb");
    let inbox = Arc::new(InboxStore::open(&path, limits)?);
    let control = ProviderControl::new(
        inbox.clone(),
        &ControlConfig {
            pull_slots: p.pull_slots,
            slot_data_len: message_len,
            ..ControlConfig::default()
        },
        &shared.metrics.registry,
    )?;
    let (queue, delivery) = DeliveryStage {
        inbox: inbox.clone(),
        shared: shared.clone(),
        egress: egress.clone(),
        stop: stop.clone(),
        runtime: tokio::runtime::Handle::current(),
    }
    .spawn(p.delivery_queue)
    .map_err(NodeError::io("starting the delivery thread"))?;
    let _ = shared.final_hop.set(queue);
    allowed.accept_clients(true);
    // Old mail goes unread after `inbox_max_age` (checked every minute);
    // the inbox totals are sampled every 5 s for the gauges.
    let (cancel, metrics) = (background.clone(), shared.metrics.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            ticks += 1;
            let inbox = inbox.clone();
            let now = loopmix_net::clock::unix_now() * 1000;
            let expire = ticks % 12 == 1;
            let done = tokio::task::spawn_blocking(move || {
                let expired = if expire {
                    Some(inbox.expire(now))
                } else {
                    None
                };
                (expired, inbox.stats())
            })
            .await;
            let Ok((expired, stats)) = done else { continue };
            match expired {
                Some(Ok(n)) if n > 0 => {
                    metrics.inbox_expired.inc_by(n as u64);
                    info!(messages = n, "expired unread messages");
                }
                Some(Err(e)) => warn!(error = %e, "inbox expiry failed"),
                _ => {}
            }
            metrics.inbox_clients.set(stats.clients as i64);
            metrics.inbox_messages.set(stats.messages as i64);
            metrics.inbox_bytes.set(stats.bytes as i64);
        }
    });
    info!(inbox = %path.display(), "provider: accepting clients");
    Ok(ProviderParts {
        control: Arc::new(control),
        delivery,
    })
}

/// How the topology reaches this node.
enum Source {
    File {
        path: PathBuf,
        mtime: Option<SystemTime>,
        reload_interval: Duration,
    },
    Directory {
        dir: Arc<DirectoryClient>,
        first: Arc<VerifiedTopology>,
        key_overlap: Duration,
    },
}

/// Writes `bound.json` (the addresses actually bound, for launchers that
/// asked for port 0).
fn write_bound(data_dir: &std::path::Path, bound: &BoundAddresses) -> Result<(), NodeError> {
    let path = data_dir.join("bound.json");
    let json = serde_json::to_vec_pretty(bound).map_err(|e| NodeError::Io {
        what: format!("writing {}", path.display()),
        source: e.into(),
    })?;
    write_atomic(&path, &json).map_err(NodeError::io(format!("writing {}", path.display())))
}

/// Runs the node until `shutdown` is cancelled.
pub async fn run(cfg: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let identity = Arc::new(IdentityKeypair::read_pem(&cfg.node.identity_key)?);
    let me = identity.node_id();
    std::fs::create_dir_all(&cfg.node.data_dir).map_err(NodeError::io(format!(
        "creating {}",
        cfg.node.data_dir.display()
    )))?;
    let keys =
        EpochKeys::new(&cfg.node.data_dir, cfg.replay.clone()).map_err(NodeError::io(format!(
            "creating key directories in {}",
            cfg.node.data_dir.display()
        )))?;

    // Fixed-topology mode checks the file before binding anything.
    let mut static_topology = None;
    if let (Some(t), Some(sphinx_path)) = (&cfg.topology, &cfg.node.sphinx_key) {
        let sphinx = SphinxKeypair::read_pem(sphinx_path)?;
        let refused = |reason: String| NodeError::BadTopologyFile {
            file: t.file.clone(),
            reason,
        };
        let (topology, mtime) = read_topology_file(&t.file).map_err(|e| refused(e.to_string()))?;
        check_self(&topology, me, sphinx.public(), cfg.node.role)
            .map_err(|e| refused(e.to_string()))?;
        keys.install_static(topology.epoch(), sphinx)?;
        static_topology = Some((topology, t.file.clone(), mtime, t.reload_interval));
    }

    let metrics = NodeMetrics::new()?;
    let allowed = PeerAllowList::default();
    if let Some(d) = &cfg.directory {
        // The pinned authorities probe that our endpoint answers (signed
        // liveness); their connections carry no packets.
        allowed.set_authorities(d.authorities.iter().map(|a| a.key));
    }
    let refused = metrics.refused.clone();
    let transport = Transport::bind(
        cfg.node.listen,
        identity.clone(),
        allowed.clone(),
        Arc::new(move |reason| refused.with_label_values(&[reason]).inc()),
    )?;
    let metrics_listener = loopmix_net::metrics::bind(cfg.metrics.listen)
        .await
        .map_err(NodeError::io(format!(
            "binding metrics on {}",
            cfg.metrics.listen
        )))?;
    let bound = BoundAddresses {
        quic: transport
            .local_addr()
            .map_err(NodeError::io("QUIC address"))?,
        metrics: metrics_listener
            .local_addr()
            .map_err(NodeError::io("metrics address"))?,
        pid: std::process::id(),
    };
    let background = CancellationToken::new();
    tokio::spawn(loopmix_net::metrics::serve(
        metrics.registry.clone(),
        metrics_listener,
        background.clone(),
    ));

    let (topology, source) = match (static_topology, &cfg.directory) {
        (Some((topology, path, mtime, reload_interval)), _) => (
            topology,
            Source::File {
                path,
                mtime,
                reload_interval,
            },
        ),
        (None, Some(d)) => {
            let public = cfg.node.public_address.unwrap_or(bound.quic);
            if public.ip().is_unspecified() {
                return Err(NodeError::Invalid {
                    field: "node.public_address",
                    reason: format!(
                        "required when `node.listen` ({}) is a wildcard address",
                        cfg.node.listen
                    ),
                });
            }
            let dir = directory_client(d, &metrics.registry)?;
            // Keep the verified liveness list current (dir.liveness()) for
            // whoever routes around down nodes.
            tokio::spawn(dir.clone().follow_liveness(background.clone()));
            tokio::spawn(
                Registrar {
                    dir: dir.clone(),
                    identity: identity.clone(),
                    keys: keys.clone(),
                    address: public,
                    role: cfg.node.role,
                    metrics: metrics.clone(),
                    cancel: background.clone(),
                }
                .run(),
            );
            write_bound(&cfg.node.data_dir, &bound)?;
            let Some(first) = first_document(&dir, &shutdown).await else {
                background.cancel();
                transport.close().await;
                return Ok(());
            };
            keys.load_stored(first.epoch().saturating_sub(1))?;
            (
                first.topology().clone(),
                Source::Directory {
                    dir,
                    first,
                    key_overlap: d.key_overlap,
                },
            )
        }
        (None, None) => {
            return Err(NodeError::Invalid {
                field: "topology",
                reason: "no topology source configured ([topology] or [directory])".into(),
            });
        }
    };
    allowed.replace(topology.nodes().iter().map(|n| n.id));
    write_bound(&cfg.node.data_dir, &bound)?;
    info!(id = %me, role = %cfg.node.role, quic = %bound.quic, metrics = %bound.metrics, epoch = topology.epoch(), "node listening");

    let processor = Arc::new(SphinxProcessor::new(
        keys.ring().clone(),
        cfg.mixing.max_delay,
    ));
    metrics.topology_epoch.set(topology.epoch() as i64);
    metrics.topology_updates.inc();
    let packet_size = Arc::new(AtomicUsize::new(topology.params().packet_size()));
    let loop_timeout = if cfg.cover.loop_timeout.is_zero() {
        crate::cover::default_loop_timeout(&topology)
    } else {
        cfg.cover.loop_timeout
    };
    let mut shared = NodeContext::new(
        me,
        topology,
        metrics.clone(),
        LoopTracker::new(cfg.cover.pending_limit, loop_timeout, 200),
    );
    if cfg.mixing.fault_drop_rate > 0.0 {
        warn!(
            rate = cfg.mixing.fault_drop_rate,
            "TEST FAULT INJECTION: dropping this fraction of forwarded packets"
        );
        shared.fault_drop_rate = cfg.mixing.fault_drop_rate;
    }
    if !cfg.mixing.ingress_max_wait.is_zero() {
        shared.ingress_max_wait = cfg.mixing.ingress_max_wait;
    }
    let shared = Arc::new(shared);
    let egress = Egress::new(
        transport.clone(),
        cfg.mixing.egress_queue,
        metrics.egress.clone(),
    )
    .with_link_failure_hook({
        // A next hop we cannot connect to is direct evidence against it.
        let shared = shared.clone();
        Arc::new(move |peer| shared.liveness.link_failed(peer))
    });

    // Pipeline.
    let (job_tx, job_rx) = crossbeam_channel::bounded(cfg.mixing.ingress_queue);
    let (delay_tx, delay_rx) = mpsc::channel(crate::pipeline::DELAY_CHANNEL_BATCHES);
    let stop_workers = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(
        cfg.worker_threads(),
        job_rx.clone(),
        processor.clone(),
        shared.clone(),
        delay_tx,
        stop_workers.clone(),
    )
    .map_err(NodeError::io("starting the Sphinx workers"))?;
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
    // Clients exist only at providers; a mix refuses them at the handshake.
    let client_limit = if cfg.node.role == Role::Provider {
        RateLimit {
            rate: cfg.provider.client_rate,
            burst: cfg.provider.client_burst,
        }
    } else {
        RateLimit::OFF
    };
    let limits = Arc::new(PeerLimits::new(
        RateLimit {
            rate: cfg.mixing.peer_rate,
            burst: cfg.mixing.peer_burst,
        },
        client_limit,
    ));
    if cfg.mixing.peer_rate == 0 {
        warn!(
            "mixing.peer_rate = 0: no per-peer rate limit; one flooding neighbour can take all capacity"
        );
    }
    tokio::spawn(
        limits
            .clone()
            .run_housekeeping(metrics.clone(), background.clone()),
    );
    let sink = Arc::new(NodeIngress {
        tx: job_tx,
        shared: shared.clone(),
        limits,
    });
    let mut ingress = Ingress::new(
        transport.clone(),
        sink,
        packet_size.clone(),
        ingress_cancel.clone(),
    );
    let mut delivery_thread = None;
    if cfg.node.role == Role::Provider {
        let p = start_provider(&cfg, &shared, &egress, &allowed, &background, &stop_workers)?;
        ingress = ingress
            .with_control(p.control)
            .with_client_policy(ClientPolicy {
                max_connections: cfg.provider.max_clients,
                ..ClientPolicy::default()
            });
        delivery_thread = Some(p.delivery);
    }
    tokio::spawn(ingress.run());

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

    let topology_sink = TopologySink {
        shared: shared.clone(),
        allowed,
        egress: egress.clone(),
        packet_size,
    };
    match source {
        Source::File {
            path,
            mtime,
            reload_interval,
        } => {
            tokio::spawn(
                TopologyWatcher {
                    path,
                    seen: mtime,
                    interval: reload_interval,
                    sink: topology_sink,
                    keys: keys.ring().clone(),
                    role: cfg.node.role,
                    cancel: background.clone(),
                }
                .run(),
            );
        }
        Source::Directory {
            dir,
            first,
            key_overlap,
        } => {
            let follower = Follower {
                dir: dir.clone(),
                keys: keys.clone(),
                sink: topology_sink,
                role: cfg.node.role,
                key_overlap,
                cancel: background.clone(),
            };
            follower.apply(&first, None);
            tokio::spawn(follower.run(first));
            tokio::spawn(crate::liveness::follow(
                dir.clone(),
                shared.clone(),
                background.clone(),
            ));
            let cancel = background.clone();
            tokio::spawn(async move { dir.run(cancel).await });
        }
    }

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
                if let Some(newest) = keys.ring().slots().last() {
                    shared.metrics.replay_fill.set(newest.replay.fill_ratio());
                }
            }
        });
    }

    {
        let (keys, cancel) = (keys.clone(), background.clone());
        let every = cfg.replay.flush_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let keys = keys.clone();
                let _ = tokio::task::spawn_blocking(move || keys.save_replays()).await;
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
        let keys = keys.clone();
        let _ = tokio::task::spawn_blocking(move || keys.save_replays()).await;
    }
    if let Err(e) = delay_stage.await {
        error!(error = %e, "delay stage failed");
    }
    if let Some(t) = delivery_thread {
        // The workers (its only senders besides `shared`) are gone; what is
        // queued is stored before we exit.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    egress.flush_and_close(Duration::from_secs(3)).await;
    transport.close().await;
    info!(took = ?started.elapsed(), "stopped");
    Ok(())
}
