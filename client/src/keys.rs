//! The client's two keys and the address made from them.

use std::path::Path;

use loopmix_core::e2e::{ClientAddress, EncryptionKeypair};
use loopmix_core::keys::IdentityKeypair;
use loopmix_core::keys::KeyError;

use crate::config::{ClientConfig, ENCRYPTION_FILE, IDENTITY_FILE};

/// Identity (Ed25519) and encryption (X25519) keys.
pub struct ClientKeys {
    pub identity: IdentityKeypair,
    pub encryption: EncryptionKeypair,
}

impl ClientKeys {
    /// Makes both keys in `dir` (mode 0600); refuses to overwrite.
    pub fn create(dir: &Path) -> Result<Self, KeyError> {
        let keys = Self {
            identity: IdentityKeypair::generate(),
            encryption: EncryptionKeypair::generate(),
        };
        keys.identity.write_pem(&dir.join(IDENTITY_FILE))?;
        keys.encryption.write_pem(&dir.join(ENCRYPTION_FILE))?;
        Ok(keys)
    }

    /// Reads both keys named by `cfg` (a [`KeyError`] names the file).
    pub fn load(cfg: &ClientConfig) -> Result<Self, KeyError> {
        let c = &cfg.client;
        Ok(Self {
            identity: IdentityKeypair::read_pem(&c.identity_key)?,
            encryption: EncryptionKeypair::read_pem(&c.encryption_key)?,
        })
    }

    /// This client's address at `provider`.
    pub fn address(&self, provider: loopmix_core::keys::NodeId) -> ClientAddress {
        ClientAddress::new(self.identity.node_id(), self.encryption.public(), provider)
    }
}
