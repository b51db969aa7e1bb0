//! The in-memory state behind the authority's lock: registrations and
//! documents per epoch (mirrors of the store, read by every HTTP request).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use loopmix_core::keys::NodeId;
use loopmix_core::pki::{AuthoritySignature, SignedTopology};

use super::registration::EpochRegs;

pub(super) struct Doc {
    pub bytes: Arc<Vec<u8>>,
    pub valid_from: u64,
    pub valid_until: u64,
    pub sigs: BTreeMap<NodeId, [u8; 64]>,
}

impl Doc {
    pub fn signed(&self) -> SignedTopology {
        let mut s = SignedTopology::unsigned(&self.bytes);
        for (a, sig) in &self.sigs {
            s.add_signature(AuthoritySignature::from_raw(*a, *sig));
        }
        s
    }
}

#[derive(Default)]
pub(super) struct State {
    pub regs: BTreeMap<u64, EpochRegs>,
    pub docs: BTreeMap<u64, Doc>,
    /// `(epoch, what)` already logged, to warn once per epoch.
    pub warned: HashSet<(u64, String)>,
}
