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

    /// The filter as bytes, tagged with the public half of the key it
    /// belongs to: `magic[8] key[32] inserted:u64be bloom`. The node writes
    /// them to disk (it owns the file I/O) so a restart keeps refusing
    /// replays of packets it already mixed.
    pub fn to_bytes(&self, key: &[u8; 32]) -> Vec<u8> {
        let bits = match self.bloom.lock() {
            Ok(b) => b.to_bytes(),
            Err(p) => p.into_inner().to_bytes(),
        };
        let mut out = Vec::with_capacity(FILE_MAGIC.len() + 32 + 8 + bits.len());
        out.extend_from_slice(FILE_MAGIC);
        out.extend_from_slice(key);
        out.extend_from_slice(&self.inserted.load(Ordering::Relaxed).to_be_bytes());
        out.extend_from_slice(&bits);
        out
    }

    /// A filter saved by [`ReplayCache::to_bytes`] for `key`, or `None` if the
    /// bytes belong to another key, are malformed, or were sized for a
    /// different capacity / FP rate (then a fresh filter is the right thing).
    pub fn from_bytes(bytes: &[u8], key: &[u8; 32], capacity: usize, fp_rate: f64) -> Option<Self> {
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return None;
        }
        let head = FILE_MAGIC.len() + 32 + 8;
        if bytes.len() < head || &bytes[..8] != FILE_MAGIC || &bytes[8..40] != key {
            return None;
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[40..48]);
        let expected_len = Bloom::<[u8; 32]>::compute_bitmap_size(capacity.max(1), fp_rate);
        let bloom = Bloom::from_bytes(bytes[head..].to_vec()).ok()?;
        if bloom.as_slice().len() < expected_len {
            return None;
        }
        Some(Self {
            bloom: Mutex::new(bloom),
            capacity: capacity as u64,
            inserted: AtomicU64::new(u64::from_be_bytes(n)),
        })
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
        let c = ReplayCache::new(10_000, 1e-6).unwrap();
        c.check_and_insert(&[5; 32]);
        let bytes = c.to_bytes(&[1; 32]);
        let back = ReplayCache::from_bytes(&bytes, &[1; 32], 10_000, 1e-6).unwrap();
        assert!(back.check_and_insert(&[5; 32]), "tag survives the restart");
        assert!(!back.check_and_insert(&[6; 32]));
        assert!(ReplayCache::from_bytes(&bytes, &[2; 32], 10_000, 1e-6).is_none());
        assert!(ReplayCache::from_bytes(&bytes, &[1; 32], 10_000_000, 1e-6).is_none());
        assert!(ReplayCache::from_bytes(b"garbage", &[1; 32], 10_000, 1e-6).is_none());
        assert!(ReplayCache::from_bytes(&bytes[..40], &[1; 32], 10_000, 1e-6).is_none());
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
