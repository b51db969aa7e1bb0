//! Registrations: a node's signed descriptor for an upcoming epoch, and the
//! rules it must pass before it is stored.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use loopmix_core::keys::{NodeId, SphinxPublicKey};
use loopmix_core::pki::api::{self, DescriptorList, RegisterResponse};
use loopmix_core::pki::{Descriptor, DescriptorError, SignedDescriptor, VerifiedDescriptor};

use super::Authority;
use crate::store::StoreError;

/// Why a registration was refused. [`RegisterError::code`] is the `error`
/// string on the wire and the metric label; `crate::http` picks the status.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The descriptor itself is bad (signature, size, fields).
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    #[error(
        "registration for epoch {epoch} is not open; open now: {open:?} (registration closes {lead_s} s before an epoch starts; see GET {})",
        api::PATH_EPOCH
    )]
    EpochNotOpen {
        epoch: u64,
        open: Vec<u64>,
        lead_s: u64,
    },
    #[error(
        "published_at {published_at} is ahead of this authority's clock ({now}) by more than {skew_s} s"
    )]
    PublishedInFuture {
        published_at: u64,
        now: u64,
        skew_s: u64,
    },
    #[error(
        "identity {identity} already registered a newer descriptor for epoch {epoch} (published_at {published_at})"
    )]
    StaleDescriptor {
        identity: NodeId,
        epoch: u64,
        published_at: u64,
    },
    #[error("address {address} is already registered for epoch {epoch} by node {other}")]
    DuplicateAddress {
        address: SocketAddr,
        epoch: u64,
        other: NodeId,
    },
    #[error("Sphinx key {key} is already registered for epoch {epoch} by node {other}")]
    DuplicateSphinxKey {
        key: SphinxPublicKey,
        epoch: u64,
        other: NodeId,
    },
    #[error("epoch {epoch} already has {max} registrations, the configured maximum")]
    EpochFull { epoch: u64, max: usize },
    /// This authority's fault, not the node's.
    #[error("storing the registration: {0}")]
    Store(#[from] StoreError),
    #[error("encoding the registration: {0}")]
    Encode(#[from] serde_json::Error),
}

impl RegisterError {
    /// Short machine-readable code (docs/PROTOCOL.md, the directory API).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Descriptor(e) => e.code(),
            Self::EpochNotOpen { .. } => "epoch_not_open",
            Self::PublishedInFuture { .. } => "published_in_future",
            Self::StaleDescriptor { .. } => "stale_descriptor",
            Self::DuplicateAddress { .. } => "duplicate_address",
            Self::DuplicateSphinxKey { .. } => "duplicate_sphinx_key",
            Self::EpochFull { .. } => "epoch_full",
            Self::Store(_) | Self::Encode(_) => "internal",
        }
    }
}

/// Whether a registration was new, replaced an older one, or repeated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Replaced,
    Unchanged,
}

impl Registered {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One epoch's accepted registrations, indexed by what must be unique.
#[derive(Default)]
pub(super) struct EpochRegs {
    pub by_id: BTreeMap<NodeId, VerifiedDescriptor>,
    by_addr: HashMap<SocketAddr, NodeId>,
    by_key: HashMap<SphinxPublicKey, NodeId>,
}

impl EpochRegs {
    pub fn insert(&mut self, v: VerifiedDescriptor) {
        let id = v.descriptor.identity;
        if let Some(old) = self.by_id.remove(&id) {
            self.by_addr.remove(&old.descriptor.address);
            self.by_key.remove(&old.descriptor.sphinx_key);
        }
        self.by_addr.insert(v.descriptor.address, id);
        self.by_key.insert(v.descriptor.sphinx_key, id);
        self.by_id.insert(id, v);
    }
}

/// Precedence of two descriptors of one identity: the same rule as
/// [`loopmix_core::pki::build_document`] (later `published_at`, then
/// greater JSON bytes).
fn precedence(d: &Descriptor) -> (u64, Vec<u8>) {
    (d.published_at, serde_json::to_vec(d).unwrap_or_default())
}

impl Authority {
    /// Verifies and stores a registration. Blocking (database commit): call
    /// from `spawn_blocking`.
    pub fn register(
        &self,
        signed: &SignedDescriptor,
        now_ms: u64,
    ) -> Result<(Registered, RegisterResponse), RegisterError> {
        let result = self.register_inner(signed, now_ms);
        let label = match &result {
            Ok((r, _)) => r.as_str(),
            Err(e) => e.code(),
        };
        self.metrics.registrations.with_label_values(&[label]).inc();
        if let Err(e) = &result {
            tracing::debug!(identity = %signed.identity, code = e.code(), error = %e, "registration refused");
        }
        result
    }

    fn register_inner(
        &self,
        signed: &SignedDescriptor,
        now_ms: u64,
    ) -> Result<(Registered, RegisterResponse), RegisterError> {
        let v = signed.verify()?;
        let d = &v.descriptor;
        let open = self.open_epochs(now_ms);
        if !open.contains(&d.epoch) {
            return Err(RegisterError::EpochNotOpen {
                epoch: d.epoch,
                open,
                lead_s: self.lead_ms.div_ceil(1000),
            });
        }
        let skew_s = self.cfg.limits.clock_skew.as_secs();
        if d.published_at > (now_ms / 1000).saturating_add(skew_s) {
            return Err(RegisterError::PublishedInFuture {
                published_at: d.published_at,
                now: now_ms / 1000,
                skew_s,
            });
        }
        let mut st = self.state();
        let regs = st.regs.entry(d.epoch).or_default();
        let id = d.identity;
        let mut status = Registered::Created;
        if let Some(old) = regs.by_id.get(&id) {
            if old.bytes == v.bytes {
                let r = RegisterResponse {
                    status: Registered::Unchanged.as_str().into(),
                    epoch: d.epoch,
                    identity: id,
                };
                return Ok((Registered::Unchanged, r));
            }
            if precedence(&old.descriptor) >= precedence(d) {
                return Err(RegisterError::StaleDescriptor {
                    identity: id,
                    epoch: d.epoch,
                    published_at: old.descriptor.published_at,
                });
            }
            status = Registered::Replaced;
        }
        if let Some(&other) = regs.by_addr.get(&d.address).filter(|o| **o != id) {
            return Err(RegisterError::DuplicateAddress {
                address: d.address,
                epoch: d.epoch,
                other,
            });
        }
        if let Some(&other) = regs.by_key.get(&d.sphinx_key).filter(|o| **o != id) {
            return Err(RegisterError::DuplicateSphinxKey {
                key: d.sphinx_key,
                epoch: d.epoch,
                other,
            });
        }
        let max = self.cfg.limits.max_descriptors_per_epoch;
        if status == Registered::Created && regs.by_id.len() >= max {
            return Err(RegisterError::EpochFull {
                epoch: d.epoch,
                max,
            });
        }
        let json = serde_json::to_vec(signed)?;
        // Durable before acknowledged; the lock keeps the checks above and
        // the write atomic with respect to other registrations.
        self.store.put_descriptor(d.epoch, *id.as_bytes(), &json)?;
        let epoch = d.epoch;
        tracing::info!(node = %id, epoch, address = %d.address, role = %d.role, status = status.as_str(), "registered");
        regs.insert(v);
        let r = RegisterResponse {
            status: status.as_str().into(),
            epoch,
            identity: id,
        };
        Ok((status, r))
    }

    /// The verified descriptors registered here for `epoch`, by node id
    /// (the status page; bounded by `limits.max_descriptors_per_epoch`).
    pub fn registered(&self, epoch: u64) -> BTreeMap<NodeId, Descriptor> {
        self.state()
            .regs
            .get(&epoch)
            .map(|r| {
                r.by_id
                    .iter()
                    .map(|(id, v)| (*id, v.descriptor.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn descriptor_list(&self, epoch: u64) -> DescriptorList {
        let st = self.state();
        DescriptorList {
            epoch,
            descriptors: st
                .regs
                .get(&epoch)
                .map(|r| r.by_id.values().map(|v| v.signed.clone()).collect())
                .unwrap_or_default(),
        }
    }
}
