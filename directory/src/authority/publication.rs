//! What the authority serves: k-signed documents and its own signatures.

use std::sync::Arc;

use loopmix_core::pki::{AuthoritySignature, SignedTopology};

use super::Authority;
use super::state::Doc;

/// Why a document or signature is not served (all "not found" on the
/// wire; [`DocumentError::code`] says which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("epoch {epoch} is built but not published yet: {have} of {need} signatures")]
    NotPublished {
        epoch: u64,
        have: usize,
        need: usize,
    },
    #[error("no document for epoch {epoch}")]
    UnknownEpoch { epoch: u64 },
    #[error("no published document is valid now (epoch {epoch})")]
    NoCurrentDocument { epoch: u64 },
    #[error("this authority has not signed a document for epoch {epoch}")]
    NotSigned { epoch: u64 },
}

impl DocumentError {
    /// Short machine-readable code (docs/PROTOCOL.md, the directory API).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotPublished { .. } => "not_published",
            Self::UnknownEpoch { .. } => "unknown_epoch",
            Self::NoCurrentDocument { .. } => "no_current_document",
            Self::NotSigned { .. } => "not_signed",
        }
    }
}

impl Authority {
    /// Signatures on the document held for `epoch` (`None`: none held).
    pub fn signatures(&self, epoch: u64) -> Option<usize> {
        self.state().docs.get(&epoch).map(|d| d.sigs.len())
    }

    /// The exact bytes of the document for `epoch` if it is published (holds
    /// k signatures); shared, not copied, so callers can cache by pointer.
    pub fn published_bytes(&self, epoch: u64) -> Option<Arc<Vec<u8>>> {
        let st = self.state();
        st.docs
            .get(&epoch)
            .filter(|d| d.sigs.len() >= self.trust.threshold())
            .map(|d| d.bytes.clone())
    }

    /// The document for `epoch` if it holds k signatures.
    pub fn published(&self, epoch: u64) -> Result<SignedTopology, DocumentError> {
        let st = self.state();
        match st.docs.get(&epoch) {
            Some(d) if d.sigs.len() >= self.trust.threshold() => Ok(d.signed()),
            Some(d) => Err(DocumentError::NotPublished {
                epoch,
                have: d.sigs.len(),
                need: self.trust.threshold(),
            }),
            None => Err(DocumentError::UnknownEpoch { epoch }),
        }
    }

    /// The newest published document valid at `now_ms`.
    pub fn current(&self, now_ms: u64) -> Result<SignedTopology, DocumentError> {
        let now = now_ms / 1000;
        let st = self.state();
        st.docs
            .values()
            .rev()
            .find(|d| {
                d.sigs.len() >= self.trust.threshold() && d.valid_from <= now && now < d.valid_until
            })
            .map(Doc::signed)
            .ok_or(DocumentError::NoCurrentDocument {
                epoch: self.schedule.epoch_at(now),
            })
    }

    /// This authority's own signature on its document for `epoch`.
    pub fn own_signature(&self, epoch: u64) -> Result<AuthoritySignature, DocumentError> {
        let st = self.state();
        st.docs
            .get(&epoch)
            .and_then(|d| d.sigs.get(&self.id))
            .map(|s| AuthoritySignature::from_raw(self.id, *s))
            .ok_or(DocumentError::NotSigned { epoch })
    }
}
