//! Durable state in redb (embedded, ACID, crash-safe): accepted
//! registrations, built or mirrored documents, and the signatures collected
//! for them. A registration is acknowledged only after its transaction
//! committed, so a crash right after a `201` loses nothing.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// `(epoch, node identity)` → JSON of the `SignedDescriptor` as received.
const DESCRIPTORS: TableDefinition<(u64, [u8; 32]), &[u8]> = TableDefinition::new("descriptors_v1");
/// `epoch` → the exact document bytes this authority serves for it.
const DOCUMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("documents_v1");
/// `(epoch, authority key)` → that authority's signature over the document.
const SIGNATURES: TableDefinition<(u64, [u8; 32]), [u8; 64]> =
    TableDefinition::new("signatures_v1");

#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct StoreError(#[from] redb::Error);

/// A stored document with its signatures.
pub struct StoredDocument {
    pub epoch: u64,
    pub bytes: Vec<u8>,
    pub signatures: Vec<([u8; 32], [u8; 64])>,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::open_inner(path)?)
    }

    fn open_inner(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DESCRIPTORS)?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(SIGNATURES)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Every stored registration: `(epoch, descriptor JSON)`.
    pub fn descriptors(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.descriptors_inner()?)
    }

    fn descriptors_inner(&self) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DESCRIPTORS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().0, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Inserts or replaces one registration (durable when this returns).
    pub fn put_descriptor(&self, epoch: u64, id: [u8; 32], json: &[u8]) -> Result<(), StoreError> {
        Ok(self.put_descriptor_inner(epoch, id, json)?)
    }

    fn put_descriptor_inner(
        &self,
        epoch: u64,
        id: [u8; 32],
        json: &[u8],
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        // Registrations are attacker-chosen bytes: use the commit mode redb
        // documents as robust against crafted data plus a crash.
        txn.set_two_phase_commit(true);
        {
            let mut t = txn.open_table(DESCRIPTORS)?;
            t.insert((epoch, id), json)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn documents(&self) -> Result<Vec<StoredDocument>, StoreError> {
        Ok(self.documents_inner()?)
    }

    fn documents_inner(&self) -> Result<Vec<StoredDocument>, redb::Error> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCUMENTS)?;
        let sigs = txn.open_table(SIGNATURES)?;
        let mut out = Vec::new();
        for row in docs.iter()? {
            let (k, v) = row?;
            let epoch = k.value();
            let mut signatures = Vec::new();
            for s in sigs.range((epoch, [0u8; 32])..=(epoch, [0xffu8; 32]))? {
                let (sk, sv) = s?;
                signatures.push((sk.value().1, sv.value()));
            }
            out.push(StoredDocument {
                epoch,
                bytes: v.value().to_vec(),
                signatures,
            });
        }
        Ok(out)
    }

    /// Stores the document for `epoch` with exactly `signatures`, replacing
    /// whatever was stored for that epoch.
    pub fn put_document(
        &self,
        epoch: u64,
        bytes: &[u8],
        signatures: &[([u8; 32], [u8; 64])],
    ) -> Result<(), StoreError> {
        Ok(self.put_document_inner(epoch, bytes, signatures)?)
    }

    fn put_document_inner(
        &self,
        epoch: u64,
        bytes: &[u8],
        signatures: &[([u8; 32], [u8; 64])],
    ) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut docs = txn.open_table(DOCUMENTS)?;
            docs.insert(epoch, bytes)?;
            let mut sigs = txn.open_table(SIGNATURES)?;
            sigs.retain_in((epoch, [0u8; 32])..=(epoch, [0xffu8; 32]), |_, _| false)?;
            for (a, s) in signatures {
                sigs.insert((epoch, *a), *s)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn put_signature(
        &self,
        epoch: u64,
        authority: [u8; 32],
        sig: [u8; 64],
    ) -> Result<(), StoreError> {
        Ok(self.put_signature_inner(epoch, authority, sig)?)
    }

    fn put_signature_inner(
        &self,
        epoch: u64,
        authority: [u8; 32],
        sig: [u8; 64],
    ) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut sigs = txn.open_table(SIGNATURES)?;
            sigs.insert((epoch, authority), sig)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes everything for epochs before `epoch`.
    pub fn prune_before(&self, epoch: u64) -> Result<(), StoreError> {
        Ok(self.prune_inner(epoch)?)
    }

    fn prune_inner(&self, epoch: u64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut d = txn.open_table(DESCRIPTORS)?;
            d.retain_in(..(epoch, [0u8; 32]), |_, _| false)?;
            let mut docs = txn.open_table(DOCUMENTS)?;
            docs.retain_in(..epoch, |_, _| false)?;
            let mut s = txn.open_table(SIGNATURES)?;
            s.retain_in(..(epoch, [0u8; 32]), |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.redb");
        {
            let s = Store::open(&p).unwrap();
            s.put_descriptor(5, [1; 32], b"a").unwrap();
            s.put_descriptor(6, [2; 32], b"b").unwrap();
            s.put_descriptor(6, [2; 32], b"c").unwrap();
            s.put_document(6, b"doc", &[([9; 32], [8; 64])]).unwrap();
            s.put_signature(6, [7; 32], [6; 64]).unwrap();
            s.put_document(5, b"old", &[]).unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(
            s.descriptors().unwrap(),
            vec![(5, b"a".to_vec()), (6, b"c".to_vec())]
        );
        let docs = s.documents().unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].bytes, b"doc");
        assert_eq!(docs[1].signatures.len(), 2);
        // Replacing a document replaces its signatures.
        s.put_document(6, b"other", &[([3; 32], [3; 64])]).unwrap();
        let docs = s.documents().unwrap();
        assert_eq!(docs[1].signatures, vec![([3; 32], [3; 64])]);
        s.prune_before(6).unwrap();
        assert_eq!(s.descriptors().unwrap().len(), 1);
        assert_eq!(s.documents().unwrap().len(), 1);
    }
}
