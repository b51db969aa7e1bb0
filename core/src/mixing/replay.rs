//! Replay detection: a Bloom filter of Sphinx replay tags, one per Sphinx key.
//!
//! A replayed packet would make a mix emit the same output twice, letting an
//! observer follow it; so a tag seen before under the same key is dropped.
//! The filter is sized for `capacity` tags at false-positive rate `fp_rate`
//! (a false positive drops one honest packet; it never lets a replay through).
//! It lives and dies with its key: when the key is retired, replays of its
//! packets cannot be decrypted any more, so the filter can go too.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bloomfilter::Bloom;

#[derive(Debug, thiserror::Error)]
#[error("cannot size replay filter: {0}")]
pub struct ReplayCacheError(&'static str);

const FILE_MAGIC: &[u8; 8] = b"LMXRPL1\0";

pub struct ReplayCache {
    // A mutex, not an atomic filter: check-and-set must be one step, or two
    // copies arriving on two cores at once could both pass.
    bloom: Mutex<Bloom<[u8; 32]>>,
    capacity: u64,
    inserted: AtomicU64,
}

impl ReplayCache {
    pub fn new(capacity: usize, fp_rate: f64) -> Result<Self, ReplayCacheError> {
        let bloom = Bloom::new_for_fp_rate(capacity.max(1), fp_rate).map_err(ReplayCacheError)?;
        Ok(Self {
            bloom: Mutex::new(bloom),
            capacity: capacity as u64,
            inserted: AtomicU64::new(0),
        })
    }

    /// Records `tag`; returns `true` if it was (probably) seen before.
    pub fn check_and_insert(&self, tag: &[u8; 32]) -> bool {
        let seen = match self.bloom.lock() {
            Ok(mut b) => b.check_and_set(tag),
            // A poisoned lock means a panic elsewhere mid-insert; the filter
            // bits are still valid (they only ever get set).
            Err(poisoned) => poisoned.into_inner().check_and_set(tag),
        };
        if !seen {
            self.inserted.fetch_add(1, Ordering::Relaxed);
        }
        seen
    }

    /// Fraction of the designed capacity used; above 1.0 the false-positive
    /// rate exceeds the configured one.
    pub fn fill_ratio(&self) -> f64 {
        self.inserted.load(Ordering::Relaxed) as f64 / self.capacity.max(1) as f64
    }

    /// Writes the filter to `path` (atomically: temp file, fsync, rename),
    /// tagged with the public half of the key it belongs to.
    pub fn save(&self, path: &std::path::Path, key: &[u8; 32]) -> std::io::Result<()> {
        use std::io::Write;
        let bits = match self.bloom.lock() {
            Ok(b) => b.to_bytes(),
            Err(p) => p.into_inner().to_bytes(),
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(FILE_MAGIC)?;
        f.write_all(key)?;
        f.write_all(&self.inserted.load(Ordering::Relaxed).to_be_bytes())?;
        f.write_all(&bits)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Loads a filter saved by [`ReplayCache::save`] for `key`. `Ok(None)` if
    /// there is no file, it belongs to another key, or it was sized for a
    /// different capacity / FP rate (then a fresh filter is the right thing).
    pub fn load(
        path: &std::path::Path,
        key: &[u8; 32],
        capacity: usize,
        fp_rate: f64,
    ) -> std::io::Result<Option<Self>> {
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Ok(None);
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let head = FILE_MAGIC.len() + 32 + 8;
        if bytes.len() < head || &bytes[..8] != FILE_MAGIC || &bytes[8..40] != key {
            return Ok(None);
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[40..48]);
        let expected_len = Bloom::<[u8; 32]>::compute_bitmap_size(capacity.max(1), fp_rate);
        let Ok(bloom) = Bloom::from_bytes(bytes[head..].to_vec()) else {
            return Ok(None);
        };
        if bloom.as_slice().len() < expected_len {
            return Ok(None);
        }
        Ok(Some(Self {
            bloom: Mutex::new(bloom),
            capacity: capacity as u64,
            inserted: AtomicU64::new(u64::from_be_bytes(n)),
        }))
    }

    /// Bytes of filter memory.
    pub fn memory_bytes(&self) -> usize {
        match self.bloom.lock() {
            Ok(b) => b.as_slice().len(),
            Err(p) => p.into_inner().as_slice().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_insert_is_a_replay() {
        let c = ReplayCache::new(10_000, 1e-6).unwrap();
        assert!(!c.check_and_insert(&[1; 32]));
        assert!(c.check_and_insert(&[1; 32]));
        assert!(!c.check_and_insert(&[2; 32]));
        assert!(c.fill_ratio() > 0.0);
    }

    #[test]
    fn saved_filter_remembers_tags_for_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.bloom");
        let c = ReplayCache::new(10_000, 1e-6).unwrap();
        c.check_and_insert(&[5; 32]);
        c.save(&path, &[1; 32]).unwrap();
        let back = ReplayCache::load(&path, &[1; 32], 10_000, 1e-6)
            .unwrap()
            .unwrap();
        assert!(back.check_and_insert(&[5; 32]), "tag survives the restart");
        assert!(!back.check_and_insert(&[6; 32]));
        assert!(
            ReplayCache::load(&path, &[2; 32], 10_000, 1e-6)
                .unwrap()
                .is_none()
        );
        assert!(
            ReplayCache::load(&dir.path().join("none"), &[1; 32], 10, 1e-6)
                .unwrap()
                .is_none()
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            ReplayCache::load(&path, &[1; 32], 10_000, 1e-6)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn false_positive_rate_is_near_design() {
        let c = ReplayCache::new(50_000, 1e-3).unwrap();
        let mut fp = 0;
        for i in 0..50_000u64 {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&i.to_le_bytes());
            if c.check_and_insert(&t) {
                fp += 1;
            }
        }
        // Inserting distinct tags up to capacity: the cumulative FP count stays
        // below the design rate times the count (generously).
        assert!(fp < 50, "{fp} false positives");
    }
}
