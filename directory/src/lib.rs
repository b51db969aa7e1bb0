//! loopmix-directory: the directory authority.
//!
//! Nodes POST signed descriptors for upcoming epochs; at each epoch boundary
//! every authority merges the registrations it and its peers accepted,
//! builds the topology document deterministically
//! ([`loopmix_core::pki::build_document`]), signs its exact bytes once, and
//! collects the other authorities' signatures over the same bytes. A
//! document is served once it carries k signatures.
//!
//! * [`config`]: the TOML configuration (`init` writes a commented default).
//! * [`store`]: redb persistence of registrations, documents, signatures.
//! * [`authority`]: registration rules, the epoch driver (a sans-IO state
//!   machine, [`authority::driver`]) and the loop that executes it:
//!   signature exchange with peers, mirroring, pruning.
//! * [`liveness`]: probing every listed node and publishing the k-of-n
//!   signed liveness ("down") list every few seconds.
//! * [`http`]: the axum API with body limits, timeouts and rate limits; maps
//!   the authority's typed refusals to status codes and error bodies.
//! * [`status`]: the network status page at `/` (server-rendered HTML,
//!   escaped, rate limited) with the simulator's ε and latency prediction.

pub mod authority;
pub mod config;
pub mod http;
pub mod liveness;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loopmix_core::keys::IdentityKeypair;
use tokio_util::sync::CancellationToken;

use crate::authority::{Authority, AuthorityError};
use crate::config::{ADDR_FILE, DirectoryConfig};

/// Runs the authority until `shutdown` fires.
pub async fn run(cfg: DirectoryConfig, shutdown: CancellationToken) -> Result<(), AuthorityError> {
    let identity = IdentityKeypair::read_pem(&cfg.authority.identity_key)?;
    let authority = Arc::new(Authority::new(cfg.clone(), identity)?);
    let listener = tokio::net::TcpListener::bind(cfg.authority.listen)
        .await
        .map_err(|source| AuthorityError::Listen {
            addr: cfg.authority.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AuthorityError::Listen {
            addr: cfg.authority.listen,
            source,
        })?;
    write_addr_file(&cfg.authority.data_dir, addr)?;
    tracing::info!(
        %addr,
        key = %authority.id(),
        peers = cfg.peers.len(),
        threshold = cfg.authority.threshold,
        epoch_length = %humantime::format_duration(cfg.epoch.length),
        "directory authority listening"
    );

    let scheduler = tokio::spawn(authority.clone().run_scheduler(shutdown.clone()));
    let liveness = if cfg.liveness.enabled {
        // A second copy of the key: the QUIC prober needs it behind an Arc.
        let key = Arc::new(IdentityKeypair::read_pem(&cfg.authority.identity_key)?);
        Some(Arc::new(liveness::Liveness::new(authority.clone(), key)?))
    } else {
        tracing::info!("liveness probing and publishing disabled ([liveness] enabled = false)");
        None
    };
    let liveness_task = liveness
        .clone()
        .map(|l| tokio::spawn(l.run(shutdown.clone())));
    let state = http::AppState::new(authority.clone()).with_liveness(liveness);
    // ε and latency for the status page: one bounded simulation, on its
    // own thread; the page says "computing" until it is done.
    state.status().prediction().start();
    let shrinker = {
        let state = state.clone();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => state.shrink(),
                }
            }
        })
    };
    let app = http::router(state);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .await;
    shutdown.cancel();
    let _ = scheduler.await;
    let _ = shrinker.await;
    if let Some(t) = liveness_task {
        let _ = t.await;
    }
    tracing::info!("directory authority stopped");
    served.map_err(|source| AuthorityError::Listen { addr, source })
}

/// Writes `ip:port` to `data_dir/http.addr` atomically (write + rename), so
/// readers never see a partial address.
fn write_addr_file(data_dir: &Path, addr: SocketAddr) -> Result<(), AuthorityError> {
    let path = data_dir.join(ADDR_FILE);
    loopmix_net::files::write_atomic(&path, format!("{addr}\n").as_bytes())
        .map_err(|source| AuthorityError::Io { path, source })
}
