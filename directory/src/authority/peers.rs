//! Requests to the peer authorities: concurrent, time- and size-limited
//! GETs, and the bookkeeping of their failures.

use std::collections::HashSet;
use std::time::Duration;

use loopmix_core::keys::NodeId;

use loopmix_net::directory::{error_chain, read_limited};
use tokio::task::JoinSet;

use super::Authority;
use crate::config::{DirectoryConfig, PeerConfig};

/// A peer's answer: HTTP status and body, or why there is none.
pub(crate) type PeerResult = Result<(u16, Vec<u8>), String>;

/// Peer requests must finish well within the vote phase.
pub(super) fn peer_timeout(cfg: &DirectoryConfig) -> Duration {
    cfg.limits
        .peer_timeout
        .min((cfg.epoch.registration_lead / 3).max(Duration::from_millis(300)))
}

impl Authority {
    pub(super) fn peer_failed(&self, peer: &PeerConfig, epoch: u64, what: &str, error: &str) {
        self.metrics
            .peer_failures
            .with_label_values(&[peer.key.to_string().as_str()])
            .inc();
        if self.warn_once(epoch, &format!("{what} {}", peer.key)) {
            tracing::warn!(epoch, peer = %peer.key, error, "peer authority request failed ({what}); retrying");
        } else {
            tracing::debug!(epoch, peer = %peer.key, error, "peer authority request failed ({what})");
        }
    }

    /// GET `path` (at most `max` body bytes) from `peers` concurrently,
    /// within the client's peer timeout.
    pub(super) async fn ask(
        &self,
        peers: &[PeerConfig],
        path: &str,
        max: usize,
    ) -> Vec<(PeerConfig, PeerResult)> {
        ask_peers(&self.http, peers, path, max, None).await
    }

    /// The peers not in `have` (those whose signature is still missing).
    pub(crate) fn peers_missing(&self, have: &HashSet<NodeId>) -> Vec<PeerConfig> {
        self.cfg
            .peers
            .iter()
            .filter(|p| !have.contains(&p.key))
            .cloned()
            .collect()
    }
}

/// GET `path` (at most `max` body bytes) from every peer at once; each
/// request is bounded by `timeout` if given, else by the client's own. The
/// answers come back in completion order; a peer whose task failed is left
/// out (its absence is what the caller sees).
pub(crate) async fn ask_peers(
    http: &reqwest::Client,
    peers: &[PeerConfig],
    path: &str,
    max: usize,
    timeout: Option<Duration>,
) -> Vec<(PeerConfig, PeerResult)> {
    let mut set = JoinSet::new();
    for p in peers {
        let http = http.clone();
        let p = p.clone();
        let path = path.to_string();
        set.spawn(async move {
            let r = match p.base_url() {
                Ok(base) => get_limited(&http, &format!("{base}{path}"), max, timeout).await,
                Err(e) => Err(e),
            };
            (p, r)
        });
    }
    let mut out = Vec::new();
    while let Some(j) = set.join_next().await {
        if let Ok(r) = j {
            out.push(r);
        }
    }
    out
}

async fn get_limited(
    http: &reqwest::Client,
    url: &str,
    max: usize,
    timeout: Option<Duration>,
) -> PeerResult {
    let mut req = http.get(url);
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let resp = req.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    Ok((status, read_limited(resp, max).await?))
}
