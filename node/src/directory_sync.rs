//! A node in a directory-run network: it registers for upcoming epochs and
//! follows the verified topology, rotating its Sphinx key per epoch.
//!
//! * [`Registrar`] asks an authority which epochs accept registrations and,
//!   for each, makes (and stores) that epoch's Sphinx key, signs a
//!   descriptor and posts it to every authority, until all accepted it or
//!   registration closes; retries go only to the authorities that have not
//!   accepted it yet (with one authority down, posting again to the others
//!   every round would only run into their rate limits). An epoch no
//!   authority accepted, and a round in which no authority answered at
//!   all, are counted in `loopmix_node_registration_failures_total` and
//!   logged.
//! * [`Follower`] applies each new verified document the directory client
//!   adopts (it refreshes before an epoch ends) and retires the previous
//!   epoch's key `key_overlap` after the boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loopmix_core::keys::{IdentityKeypair, NodeId};
use loopmix_core::pki::{Descriptor, SignedDescriptor, VerifiedTopology};
use loopmix_core::topology::Role;
use loopmix_net::clock::unix_now;
use loopmix_net::directory::DirectoryClient;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::epoch_keys::EpochKeys;
use crate::metrics::NodeMetrics;
use crate::topology_source::{TopologySink, check_self};

/// Registers this node for every epoch that accepts registrations.
pub struct Registrar {
    pub dir: Arc<DirectoryClient>,
    pub identity: Arc<IdentityKeypair>,
    pub keys: EpochKeys,
    pub address: SocketAddr,
    pub role: Role,
    pub metrics: NodeMetrics,
    pub cancel: CancellationToken,
}

struct Registration {
    descriptor: SignedDescriptor,
    /// URLs of the authorities that accepted it.
    accepted: BTreeSet<String>,
}

impl Registrar {
    pub async fn run(self) {
        let mut done: BTreeMap<u64, Registration> = BTreeMap::new();
        let mut unreachable_logged = false;
        loop {
            let poll = match self.dir.epoch_info().await {
                Ok(info) => {
                    unreachable_logged = false;
                    for &epoch in &info.open_epochs {
                        self.register(epoch, &mut done).await;
                    }
                    done.retain(|&e, _| e + 1 >= info.epoch);
                    Duration::from_millis(
                        (info.epoch_length_s.saturating_mul(1000) / 8).clamp(500, 30_000),
                    )
                }
                Err(e) => {
                    self.metrics.registration_failures.inc();
                    if !unreachable_logged {
                        warn!(error = %e, "no authority reachable; will keep trying to register");
                        unreachable_logged = true;
                    }
                    Duration::from_secs(2)
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn register(&self, epoch: u64, done: &mut BTreeMap<u64, Registration>) {
        let urls = &self.dir.config().urls;
        let authorities = urls.len();
        let pending: Vec<String> = match done.get(&epoch) {
            Some(r) => urls
                .iter()
                .filter(|u| !r.accepted.contains(*u))
                .cloned()
                .collect(),
            None => urls.clone(),
        };
        if pending.is_empty() {
            return;
        }
        let descriptor = match done.get(&epoch) {
            Some(r) => r.descriptor.clone(),
            None => {
                // The key is on disk before any authority hears of it.
                let keys = self.keys.clone();
                let key = match tokio::task::spawn_blocking(move || keys.ensure(epoch)).await {
                    Ok(Ok(k)) => k,
                    Ok(Err(e)) => {
                        error!(epoch, error = %e, "cannot make the Sphinx key for this epoch; not registering");
                        self.metrics.registration_failures.inc();
                        return;
                    }
                    Err(e) => {
                        error!(epoch, error = %e, "key task failed");
                        return;
                    }
                };
                let d = Descriptor::new(
                    self.identity.node_id(),
                    key,
                    epoch,
                    self.address,
                    self.role,
                    unix_now(),
                );
                match d.sign(&self.identity) {
                    Ok(sd) => sd,
                    Err(e) => {
                        error!(epoch, error = %e, "cannot sign our descriptor");
                        self.metrics.registration_failures.inc();
                        return;
                    }
                }
            }
        };
        let outcomes = self.dir.register_at(&descriptor, &pending).await;
        let before = done.get(&epoch).map_or(0, |r| r.accepted.len());
        let mut accepted = done.remove(&epoch).map(|r| r.accepted).unwrap_or_default();
        accepted.extend(
            outcomes
                .iter()
                .filter(|o| o.result.is_ok())
                .map(|o| o.url.clone()),
        );
        let accepted_by = accepted.len();
        if accepted_by == 0 {
            self.metrics.registration_failures.inc();
            let reasons: Vec<String> = outcomes
                .iter()
                .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.url)))
                .collect();
            error!(epoch, reasons = %reasons.join("; "), "registration refused or unreachable at every authority; this node will not be listed unless a retry succeeds");
        } else {
            if before == 0 {
                info!(epoch, accepted_by, authorities, "registered");
            }
            if self.metrics.registered_epoch.get() < epoch as i64 {
                self.metrics.registered_epoch.set(epoch as i64);
            }
        }
        done.insert(
            epoch,
            Registration {
                descriptor,
                accepted,
            },
        );
    }
}

/// Applies verified documents as they come into force and rotates keys.
pub struct Follower {
    pub dir: Arc<DirectoryClient>,
    pub keys: EpochKeys,
    pub sink: TopologySink,
    pub role: Role,
    pub key_overlap: Duration,
    pub cancel: CancellationToken,
}

impl Follower {
    /// `current` is the document the node started with (already applied).
    pub async fn run(self, mut current: Arc<VerifiedTopology>) {
        let mut rx = self.dir.subscribe();
        let mut previous: Option<Arc<VerifiedTopology>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = rx.borrow_and_update().clone();
                    if let Some(next) = next
                        && next.epoch() > current.epoch()
                    {
                        previous = Some(std::mem::replace(&mut current, next));
                        self.apply(&current, previous.as_deref());
                    }
                }
                _ = tick.tick() => {}
            }
            self.housekeeping(&current, &mut previous);
        }
    }

    /// Whether the previous epoch is still within its overlap.
    fn in_overlap(&self, current: &VerifiedTopology) -> bool {
        unix_now()
            < current
                .valid_from()
                .saturating_add(self.key_overlap.as_secs())
    }

    pub fn apply(&self, doc: &VerifiedTopology, previous: Option<&VerifiedTopology>) {
        self.check_listed(doc);
        let keep_prev = previous.filter(|_| self.in_overlap(doc));
        self.sink
            .apply(doc.topology().clone(), self.neighbours(keep_prev));
    }

    fn check_listed(&self, doc: &VerifiedTopology) {
        let m = &self.sink.shared.metrics;
        let epoch = doc.epoch();
        let verdict = match self.keys.public(epoch) {
            Some(key) => check_self(doc.topology(), self.sink.shared.me, key, self.role),
            None => Err(format!("this node holds no Sphinx key for epoch {epoch}")),
        };
        match verdict {
            Ok(()) => m.listed.set(1),
            Err(reason) => {
                m.listed.set(0);
                warn!(epoch, %reason, "not listed in the topology in force: no traffic reaches this node this epoch");
            }
        }
    }

    /// Nodes of the adjacent epochs may still (previous) or already
    /// (upcoming, clock skew) send to us: keep accepting their connections.
    fn neighbours(&self, previous: Option<&VerifiedTopology>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = Vec::new();
        for doc in previous.into_iter().chain(self.dir.upcoming().as_deref()) {
            ids.extend(doc.topology().nodes().iter().map(|n| n.id));
        }
        ids
    }

    fn housekeeping(
        &self,
        current: &VerifiedTopology,
        previous: &mut Option<Arc<VerifiedTopology>>,
    ) {
        let overlap = self.in_overlap(current);
        if !overlap && previous.take().is_some() {
            debug!(
                epoch = current.epoch(),
                "overlap with the previous epoch ended"
            );
        }
        self.sink.allowed.replace(
            current
                .topology()
                .nodes()
                .iter()
                .map(|n| n.id)
                .chain(self.neighbours(previous.as_deref())),
        );
        let oldest = if overlap {
            current.epoch().saturating_sub(1)
        } else {
            current.epoch()
        };
        self.keys.retire_below(oldest);
        self.sink
            .shared
            .metrics
            .sphinx_keys
            .set(self.keys.ring().epochs().len() as i64);
    }
}
