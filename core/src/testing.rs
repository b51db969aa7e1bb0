//! Fixtures for tests in this crate and the crates above it (feature
//! `testing`, never in a release build): small valid documents with fresh
//! keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::keys::{IdentityKeypair, NodeId, SphinxKeypair};
use crate::mixing::delivery::{InboxItem, InboxStorage, Refusal};
use crate::pki::{DOCUMENT_VERSION, EpochDocument};
use crate::topology::{NetworkParams, NodeEntry, Role, TopologyDocument};

/// A topology of `layers` layers with `mixes_per_layer` fresh mixes each.
pub fn sample_doc(mixes_per_layer: usize, layers: u8) -> TopologyDocument {
    let mut nodes = Vec::new();
    let mut port = 10_000;
    for l in 1..=layers {
        for _ in 0..mixes_per_layer {
            port += 1;
            nodes.push(NodeEntry {
                id: IdentityKeypair::generate().node_id(),
                sphinx_key: SphinxKeypair::generate().public(),
                address: format!("127.0.0.1:{port}").parse().unwrap(),
                role: Role::Mix,
                layer: Some(l),
            });
        }
    }
    TopologyDocument {
        params: NetworkParams {
            epoch: 1,
            layers,
            mean_hop_delay_ms: 50.0,
            lambda_p_per_s: 2.0,
            lambda_l_per_s: 1.0,
            lambda_d_per_s: 1.0,
            lambda_m_per_s: 1.0,
            payload_size: 1024,
        },
        nodes,
    }
}

/// An epoch document around [`sample_doc`]`(2, 3)` valid in
/// `[valid_from, valid_until)`.
pub fn epoch_doc(valid_from: u64, valid_until: u64) -> EpochDocument {
    EpochDocument {
        version: DOCUMENT_VERSION,
        valid_from,
        valid_until,
        epoch_length_s: 60,
        topology: sample_doc(2, 3),
    }
}

/// An in-memory [`InboxStorage`] for
/// tests of a provider's final hop: registered clients only, at most
/// `limit` messages per inbox, a message id already held (or fetched) is a
/// duplicate and stored once. A commit is all or nothing, like the node's
/// redb store.
pub struct MemoryInbox {
    limit: usize,
    state: Mutex<MemoryInboxState>,
}

/// A message held: its Sphinx identifier and bytes.
pub type HeldMessage = ([u8; 16], Vec<u8>);

#[derive(Default)]
struct MemoryInboxState {
    inboxes: BTreeMap<NodeId, Vec<HeldMessage>>,
    seen: BTreeSet<(NodeId, [u8; 16])>,
    fail_commits: bool,
}

/// Why a [`MemoryInbox`] refused an item or a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryInboxError {
    #[error("no inbox for this client")]
    UnknownClient,
    #[error("inbox full")]
    Full,
    #[error("commit failed")]
    CommitFailed,
}

impl MemoryInbox {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: Default::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemoryInboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, client: NodeId) {
        self.state().inboxes.entry(client).or_default();
    }

    /// Makes every following commit fail (a full disk) until reset.
    pub fn fail_commits(&self, fail: bool) {
        self.state().fail_commits = fail;
    }

    /// Takes everything in `client`'s inbox, oldest first (a pull and its
    /// confirmation).
    pub fn fetch(&self, client: &NodeId) -> Vec<HeldMessage> {
        self.state()
            .inboxes
            .get_mut(client)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Messages held over all inboxes.
    pub fn len(&self) -> usize {
        self.state().inboxes.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InboxStorage for MemoryInbox {
    type Error = MemoryInboxError;

    fn store_committed(
        &self,
        items: &[InboxItem<'_>],
        _now_unix_ms: u64,
    ) -> Result<Vec<Result<(), MemoryInboxError>>, MemoryInboxError> {
        let mut guard = self.state();
        let s = &mut *guard;
        if s.fail_commits {
            return Err(MemoryInboxError::CommitFailed);
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let outcome = match s.inboxes.get_mut(&item.client) {
                None => Err(MemoryInboxError::UnknownClient),
                Some(_) if s.seen.contains(&(item.client, item.id)) => Ok(()),
                Some(inbox) if inbox.len() >= self.limit => Err(MemoryInboxError::Full),
                Some(inbox) => {
                    inbox.push((item.id, item.message.to_vec()));
                    s.seen.insert((item.client, item.id));
                    Ok(())
                }
            };
            out.push(outcome);
        }
        Ok(out)
    }

    fn refusal(error: &MemoryInboxError) -> Refusal {
        match error {
            MemoryInboxError::UnknownClient => Refusal::UnknownClient,
            MemoryInboxError::Full => Refusal::Full,
            MemoryInboxError::CommitFailed => Refusal::Other,
        }
    }
}
