//! The node's Sphinx keys and their replay filters, on disk and in the
//! [`KeyRing`] the Sphinx workers read.
//!
//! With a directory, a node has one X25519 key per epoch, made when it first
//! registers for that epoch and stored as `data_dir/sphinx/epoch-<n>.pem`
//! *before* the descriptor naming it is sent: a restarted node must keep
//! answering to the key the authorities published. Each key owns a replay
//! filter, saved as `data_dir/replay/<public key>.bloom` and deleted with it.
//!
//! Lifetime of the key for epoch `e` (start `S`):
//!
//! ```text
//! registered (S - lead - ...) ── in the ring, accepts early packets
//! S ─ in force ─ S + length ─ previous: kept `key_overlap` more ─ deleted
//! ```
//!
//! Forward secrecy comes from the deletion: once the file and the ring entry
//! are gone, packets recorded during that epoch cannot be unwrapped even if
//! the node is later compromised.

use crate::error::NodeError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use loopmix_core::keys::{SphinxKeypair, SphinxPublicKey};
use loopmix_core::mixing::processor::{KeyRing, KeySlot};
use loopmix_core::mixing::replay::ReplayCache;
use tracing::{info, warn};

use crate::config::ReplaySection;

/// Owns the key ring, the key files and the replay filter files.
#[derive(Clone)]
pub struct EpochKeys {
    ring: KeyRing,
    key_dir: PathBuf,
    replay_dir: PathBuf,
    replay: ReplaySection,
    /// Held while a key is looked up or made: the registrar (next epoch's
    /// key) and the start-up load of stored keys may ask for the same
    /// epoch at once, and must end with one key, the one on disk.
    making: Arc<Mutex<()>>,
}

impl EpochKeys {
    pub fn new(data_dir: &Path, replay: ReplaySection) -> std::io::Result<Self> {
        let key_dir = data_dir.join("sphinx");
        let replay_dir = data_dir.join("replay");
        std::fs::create_dir_all(&key_dir)?;
        std::fs::create_dir_all(&replay_dir)?;
        Ok(Self {
            ring: KeyRing::default(),
            key_dir,
            replay_dir,
            replay,
            making: Arc::default(),
        })
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    fn key_path(&self, epoch: u64) -> PathBuf {
        self.key_dir.join(format!("epoch-{epoch}.pem"))
    }

    fn replay_path(&self, key: &SphinxPublicKey) -> PathBuf {
        self.replay_dir.join(format!("{key}.bloom"))
    }

    /// A replay filter for `key`: the saved one if it belongs to this key,
    /// else an empty one. A restart must not reopen the door to old replays.
    fn replay_for(&self, key: &SphinxPublicKey) -> Result<ReplayCache, NodeError> {
        let path = self.replay_path(key);
        let (capacity, fp) = (self.replay.capacity, self.replay.fp_rate);
        let saved = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read replay filter; starting empty");
                None
            }
        };
        match saved.and_then(|b| ReplayCache::from_bytes(&b, &key.0, capacity, fp)) {
            Some(r) => {
                info!(key = %key, fill = r.fill_ratio(), "replay filter restored");
                Ok(r)
            }
            // Another key's, another size's, or garbage: a fresh filter.
            None => Ok(ReplayCache::new(capacity, fp)?),
        }
    }

    /// Installs a static key (fixed-topology mode) for `epoch`.
    pub fn install_static(&self, epoch: u64, key: SphinxKeypair) -> Result<(), NodeError> {
        let replay = self.replay_for(&key.public())?;
        self.ring.insert(KeySlot { epoch, key, replay });
        Ok(())
    }

    /// The key for `epoch`: loaded from disk, or made and written (0600)
    /// first. Either way it is in the ring when this returns.
    pub fn ensure(&self, epoch: u64) -> Result<SphinxPublicKey, NodeError> {
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = self.ring.get(epoch) {
            return Ok(slot.key.public());
        }
        let path = self.key_path(epoch);
        let key = if path.exists() {
            SphinxKeypair::read_pem(&path)?
        } else {
            let k = SphinxKeypair::generate();
            k.write_pem(&path)?;
            info!(epoch, key = %k.public(), "new Sphinx key");
            k
        };
        let public = key.public();
        let replay = self.replay_for(&public)?;
        self.ring.insert(KeySlot { epoch, key, replay });
        Ok(public)
    }

    /// The public key for `epoch` if the node holds it (in the ring or on disk).
    pub fn public(&self, epoch: u64) -> Option<SphinxPublicKey> {
        if let Some(slot) = self.ring.get(epoch) {
            return Some(slot.key.public());
        }
        SphinxKeypair::read_pem(&self.key_path(epoch))
            .ok()
            .map(|k| k.public())
    }

    /// Loads every stored key for an epoch `>= oldest` into the ring (after
    /// a restart) and deletes older ones.
    pub fn load_stored(&self, oldest: u64) -> Result<(), NodeError> {
        let stored = self
            .stored_epochs()
            .map_err(NodeError::io(format!("listing {}", self.key_dir.display())))?;
        for epoch in stored {
            if epoch >= oldest {
                self.ensure(epoch)?;
            } else {
                self.delete_files(epoch);
            }
        }
        Ok(())
    }

    fn stored_epochs(&self) -> std::io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.key_dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(e) = name
                .strip_prefix("epoch-")
                .and_then(|r| r.strip_suffix(".pem"))
                .and_then(|n| n.parse().ok())
            {
                out.push(e);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Drops every key for an epoch below `oldest` from the ring and deletes
    /// its key and replay files. Returns the epochs retired.
    pub fn retire_below(&self, oldest: u64) -> Vec<u64> {
        let gone: Vec<u64> = self
            .ring
            .epochs()
            .into_iter()
            .filter(|&e| e < oldest)
            .collect();
        if gone.is_empty() {
            return gone;
        }
        self.ring.retain(|e| e >= oldest);
        for &e in &gone {
            self.delete_files(e);
            info!(epoch = e, "Sphinx key and replay filter retired");
        }
        gone
    }

    fn delete_files(&self, epoch: u64) {
        let path = self.key_path(epoch);
        if let Ok(k) = SphinxKeypair::read_pem(&path) {
            let _ = std::fs::remove_file(self.replay_path(&k.public()));
        }
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(file = %path.display(), error = %e, "cannot delete retired Sphinx key");
        }
    }

    /// Saves every held key's replay filter (each once, even if aliased).
    pub fn save_replays(&self) {
        let mut seen: Vec<*const KeySlot> = Vec::new();
        for slot in self.ring.slots() {
            let ptr = Arc::as_ptr(&slot);
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            let public = slot.key.public();
            let path = self.replay_path(&public);
            if let Err(e) =
                loopmix_net::files::write_atomic(&path, &slot.replay.to_bytes(&public.0))
            {
                warn!(file = %path.display(), error = %e, "cannot save replay filter");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ReplaySection {
        ReplaySection {
            capacity: 1000,
            fp_rate: 1e-6,
            ..ReplaySection::default()
        }
    }

    #[test]
    fn keys_persist_and_retire_with_their_filters() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EpochKeys::new(dir.path(), small()).unwrap();
        let k5 = keys.ensure(5).unwrap();
        let k6 = keys.ensure(6).unwrap();
        assert_ne!(k5, k6);
        assert_eq!(keys.ensure(5).unwrap(), k5, "idempotent");
        keys.ring()
            .get(5)
            .unwrap()
            .replay
            .check_and_insert(&[7u8; 32]);
        keys.save_replays();

        // A restart finds the same keys and the saved replay tag.
        let again = EpochKeys::new(dir.path(), small()).unwrap();
        again.load_stored(5).unwrap();
        assert_eq!(again.ring().epochs(), vec![5, 6]);
        assert_eq!(again.public(5), Some(k5));
        assert!(
            again
                .ring()
                .get(5)
                .unwrap()
                .replay
                .check_and_insert(&[7u8; 32]),
            "tag remembered across restart"
        );

        // Retiring deletes the key file and its filter.
        assert_eq!(again.retire_below(6), vec![5]);
        assert_eq!(again.ring().epochs(), vec![6]);
        assert!(again.public(5).is_none());
        assert!(!dir.path().join("sphinx/epoch-5.pem").exists());
        assert!(!dir.path().join(format!("replay/{k5}.bloom")).exists());
        assert!(dir.path().join("sphinx/epoch-6.pem").exists());
    }

    /// The registrar makes epoch e's key while start-up loads the stored
    /// ones (CI once lost a node to this: it read a key file still empty).
    /// Every caller must end with the one key on disk, and none may fail.
    #[test]
    fn a_key_made_while_stored_keys_load_is_one_key() {
        for epoch in 0..40u64 {
            let dir = tempfile::tempdir().unwrap();
            let keys = EpochKeys::new(dir.path(), small()).unwrap();
            let made: Vec<SphinxPublicKey> = std::thread::scope(|s| {
                let makers: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| keys.ensure(epoch).unwrap()))
                    .collect();
                let loader = s.spawn(|| {
                    for _ in 0..50 {
                        keys.load_stored(epoch).unwrap();
                    }
                });
                loader.join().unwrap();
                makers.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = EpochKeys::new(dir.path(), small())
                .unwrap()
                .public(epoch)
                .unwrap();
            assert!(
                made.iter().all(|k| *k == on_disk),
                "epoch {epoch}: {made:?}"
            );
            assert_eq!(keys.ring().get(epoch).unwrap().key.public(), on_disk);
            let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sphinx"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        }
    }
}
