//! The exit host's own addresses, kept current: the policy treats them as
//! reserved, so `*:80` cannot reach a service the exit host itself runs on
//! its public address. Interfaces change (DHCP, a cloud address moved), so
//! the list is read again every [`REFRESH`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Policy;

/// How often the interface addresses are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Every address of every interface of this host.
pub fn addresses() -> std::io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .iter()
        .map(if_addrs::Interface::ip)
        .collect())
}

/// Publishes `rules` with the host's current addresses whenever they
/// change, until cancelled. If the list cannot be read, the last one stays.
pub async fn refresh(rules: Policy, tx: watch::Sender<Arc<Policy>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = match tokio::task::spawn_blocking(addresses).await {
            Ok(Ok(a)) => rules.clone().with_own_addresses(a),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list the host's addresses; keeping the last list");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "address listing task failed; keeping the last list");
                continue;
            }
        };
        if now.own_addresses() != tx.borrow().own_addresses() {
            info!(
                addresses = now.own_addresses().len(),
                "the exit host's addresses changed; the policy reserves the new ones"
            );
            tx.send_replace(Arc::new(now));
        }
    }
}
