//! The provider's durable inbox store: one inbox per registered client, in
//! redb (embedded, ACID, crash-safe).
//!
//! # Tables
//!
//! * `inboxes_v1`: client → `(next_seq, messages, bytes, remembered)`. A
//!   row exists exactly for each registered client; the counters make the
//!   limit checks O(1).
//! * `messages_v1`: `(client, seq)` → `(id, stored_at_ms, data)`. `seq` is
//!   assigned by the store and only grows, so key order is arrival order.
//! * `ids_v1`: `(client, id)` → `seq`, the duplicate index. It holds every
//!   message still in the inbox plus the *remembered* confirmed ones.
//! * `confirmed_v1`: `(client, seq)` → `(id, stored_at_ms)`: confirmed
//!   messages whose id is still remembered.
//! * `by_time_v1`: `(stored_at_ms, client, seq)` → `()`: the expiry index
//!   over `messages_v1` and `confirmed_v1` (a `(client, seq)` is in exactly
//!   one of them), so `expire` costs what it deletes, not a full scan.
//! * `meta_v1`: `"bytes"` → total payload bytes over all inboxes (the message
//!   and client counts are table lengths, which redb keeps in O(1)).
//!
//! # Durability
//!
//! [`InboxStore::store`] returns `Ok` only after its write transaction has
//! committed with [`Durability::Immediate`] (fsynced), because the caller
//! acknowledges the packet to the network on `Ok`: a process killed right
//! after that must still have the message. Every commit also uses redb's
//! quick-repair mode (which implies two-phase commit): it saves the allocator
//! state with each commit, so a restart after a crash needs no full-file
//! repair, and a sender cannot craft payload bytes that make a torn commit
//! look valid (see `WriteTransaction::set_two_phase_commit`). If a repair is
//! needed anyway, `open` runs it and logs a warning.
//!
//! # Duplicates
//!
//! A retransmitted packet must not show up twice, but remembering every id
//! forever would grow without bound. An id is remembered while its message
//! is in the inbox, and after confirmation for as long as it is *both* one of
//! the client's `max_messages_per_inbox` most recent confirmations *and*
//! younger than `max_age` (dropped by [`InboxStore::expire`]). So the
//! duplicate index holds at most twice `max_messages_per_inbox` ids per
//! client, and a retransmission within `max_age` is caught unless the client
//! confirmed more than `max_messages_per_inbox` newer messages in between.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::mixing::delivery::{InboxItem, InboxStorage, Refusal};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use tracing::warn;

type Client = [u8; 32];
type MessageId = [u8; 16];

const INBOXES: TableDefinition<Client, (u64, u64, u64, u64)> = TableDefinition::new("inboxes_v1");
const MESSAGES: TableDefinition<(Client, u64), (MessageId, u64, &[u8])> =
    TableDefinition::new("messages_v1");
const IDS: TableDefinition<(Client, MessageId), u64> = TableDefinition::new("ids_v1");
const CONFIRMED: TableDefinition<(Client, u64), (MessageId, u64)> =
    TableDefinition::new("confirmed_v1");
const BY_TIME: TableDefinition<(u64, Client, u64), ()> = TableDefinition::new("by_time_v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
const TOTAL_BYTES: &str = "bytes";

/// Expired rows deleted per transaction, so one `expire` after a long
/// downtime does not build one huge transaction in memory.
const EXPIRE_BATCH: usize = 10_000;

/// Per-inbox and per-provider bounds. Every one of them is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxLimits {
    /// Messages held for one client (default 10 000).
    pub max_messages_per_inbox: usize,
    /// Payload bytes held for one client (default 64 MiB).
    pub max_bytes_per_inbox: u64,
    /// Messages older than this are deleted by `expire` (default 7 days: a
    /// client offline for a week has lost its mail, like most mail systems).
    pub max_age: Duration,
    /// Largest accepted message (default 4096 B: a Sphinx payload with room).
    pub max_message_bytes: usize,
    /// Registered clients (default 100 000).
    pub max_clients: usize,
}

impl Default for InboxLimits {
    fn default() -> Self {
        Self {
            max_messages_per_inbox: 10_000,
            max_bytes_per_inbox: 64 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_message_bytes: 4096,
            max_clients: 100_000,
        }
    }
}

/// Which inbox limit a message ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxLimit {
    Messages(usize),
    Bytes(u64),
}

impl fmt::Display for InboxLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboxLimit::Messages(n) => write!(f, "{n} messages"),
            InboxLimit::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("no inbox for client {}", .0.short())]
    UnknownClient(NodeId),
    #[error("inbox of {} is full: {limit}", .client.short())]
    Full { client: NodeId, limit: InboxLimit },
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("cannot register another client: already serving the maximum of {max}")]
    TooManyClients { max: usize },
    #[error("inbox storage: {0}")]
    Storage(String),
}

impl InboxError {
    /// Short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            InboxError::UnknownClient(_) => "unknown_client",
            InboxError::Full { .. } => "full",
            InboxError::TooLarge { .. } => "too_large",
            InboxError::TooManyClients { .. } => "too_many_clients",
            InboxError::Storage(_) => "storage",
        }
    }
}

// redb has one error type per operation; `?` converts only one step, so each
// gets its own `From`.
macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for InboxError {
            fn from(e: $t) -> Self {
                InboxError::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Outcome of a successful [`InboxStore::store`]; both mean "durably held".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The `(client, id)` was already stored (or recently confirmed).
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Store-assigned, increasing per client; what `confirm` takes.
    pub seq: u64,
    pub id: [u8; 16],
    pub stored_at_ms: u64,
    pub data: Vec<u8>,
}

/// Totals over all inboxes, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    pub clients: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// A row of `inboxes_v1`.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    next_seq: u64,
    messages: u64,
    bytes: u64,
    /// Confirmed ids still in `confirmed_v1`.
    remembered: u64,
}

impl Counters {
    fn from_row((next_seq, messages, bytes, remembered): (u64, u64, u64, u64)) -> Self {
        Self {
            next_seq,
            messages,
            bytes,
            remembered,
        }
    }

    fn row(self) -> (u64, u64, u64, u64) {
        (self.next_seq, self.messages, self.bytes, self.remembered)
    }
}

/// The inbox store. Synchronous (every write fsyncs): call it from
/// `spawn_blocking`. `Send + Sync`; share it in an `Arc`.
pub struct InboxStore {
    db: Database,
    limits: InboxLimits,
}

impl InboxStore {
    /// Opens (or creates) the database at `path`, repairing it first if the
    /// last process using it did not shut down cleanly.
    pub fn open(path: &Path, limits: InboxLimits) -> Result<Self, InboxError> {
        let shown = path.display().to_string();
        let warned = AtomicBool::new(false);
        let mut builder = Builder::new();
        builder.set_repair_callback(move |_session| {
            // Called repeatedly while repairing; say it once.
            if !warned.swap(true, Ordering::Relaxed) {
                warn!(path = %shown, "inbox database was not shut down cleanly; repairing");
            }
        });
        let db = builder.create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(INBOXES)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(IDS)?;
        txn.open_table(CONFIRMED)?;
        txn.open_table(BY_TIME)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self { db, limits })
    }

    pub fn limits(&self) -> &InboxLimits {
        &self.limits
    }

    /// A write transaction whose commit is on disk when `commit` returns.
    fn begin_durable(&self) -> Result<WriteTransaction, InboxError> {
        let mut txn = self.db.begin_write()?;
        // redb's default, set anyway: acknowledgements depend on it.
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        Ok(txn)
    }

    /// Creates the inbox if missing (idempotent); `Ok(true)` if it was
    /// created.
    pub fn register(&self, client: &NodeId) -> Result<bool, InboxError> {
        let txn = self.begin_durable()?;
        {
            let mut inboxes = txn.open_table(INBOXES)?;
            if inboxes.get(client.0)?.is_some() {
                return Ok(false);
            }
            if inboxes.len()? >= self.limits.max_clients as u64 {
                return Err(InboxError::TooManyClients {
                    max: self.limits.max_clients,
                });
            }
            // Sequence numbers start at 1, leaving 0 free as "none" for
            // callers.
            let fresh = Counters {
                next_seq: 1,
                ..Counters::default()
            };
            inboxes.insert(client.0, fresh.row())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Whether `client` has an inbox (`false` also if the store cannot be
    /// read; that is logged).
    pub fn is_registered(&self, client: &NodeId) -> bool {
        let found = || -> Result<bool, InboxError> {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(INBOXES)?.get(client.0)?.is_some())
        };
        found().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read inbox registrations");
            false
        })
    }

    /// Durably appends one message (see [`store_batch`](Self::store_batch)).
    pub fn store(
        &self,
        client: &NodeId,
        id: [u8; 16],
        message: &[u8],
        now_unix_ms: u64,
    ) -> Result<Stored, InboxError> {
        self.store_batch(&[(*client, id, message)], now_unix_ms)?
            .pop()
            .unwrap_or(Err(InboxError::Storage("empty batch".into())))
    }

    /// Durably appends several messages in **one** committed transaction
    /// (group commit: one fsync for the batch, not one per message). Each
    /// item gets its own outcome (unknown client, full, too large, or a
    /// duplicate of a message already held, which is safe to acknowledge);
    /// a storage failure fails the whole batch and stores nothing. Every
    /// `Ok` outcome is durable when this returns.
    pub fn store_batch(
        &self,
        items: &[(NodeId, [u8; 16], &[u8])],
        now_unix_ms: u64,
    ) -> Result<Vec<Result<Stored, InboxError>>, InboxError> {
        let txn = self.begin_durable()?;
        let mut out = Vec::with_capacity(items.len());
        for (client, id, message) in items {
            match self.store_in(&txn, client, *id, message, now_unix_ms) {
                Err(InboxError::Storage(e)) => return Err(InboxError::Storage(e)),
                r => out.push(r),
            }
        }
        txn.commit()?;
        Ok(out)
    }

    fn store_in(
        &self,
        txn: &redb::WriteTransaction,
        client: &NodeId,
        id: [u8; 16],
        message: &[u8],
        now_unix_ms: u64,
    ) -> Result<Stored, InboxError> {
        if message.len() > self.limits.max_message_bytes {
            return Err(InboxError::TooLarge {
                size: message.len(),
                max: self.limits.max_message_bytes,
            });
        }
        let c = client.0;
        let len = message.len() as u64;
        let mut inboxes = txn.open_table(INBOXES)?;
        let mut counters = match inboxes.get(c)? {
            Some(row) => Counters::from_row(row.value()),
            None => return Err(InboxError::UnknownClient(*client)),
        };
        let mut ids = txn.open_table(IDS)?;
        // Checked before the limits: a retransmission of a message we hold
        // must be acknowledged even when the inbox is full. Seeing it here
        // means its commit finished (or is this one), hence is durable.
        if ids.get((c, id))?.is_some() {
            return Ok(Stored::Duplicate);
        }
        if counters.messages >= self.limits.max_messages_per_inbox as u64 {
            return Err(InboxError::Full {
                client: *client,
                limit: InboxLimit::Messages(self.limits.max_messages_per_inbox),
            });
        }
        if counters.bytes.saturating_add(len) > self.limits.max_bytes_per_inbox {
            return Err(InboxError::Full {
                client: *client,
                limit: InboxLimit::Bytes(self.limits.max_bytes_per_inbox),
            });
        }
        let seq = counters.next_seq;
        txn.open_table(MESSAGES)?
            .insert((c, seq), (id, now_unix_ms, message))?;
        ids.insert((c, id), seq)?;
        txn.open_table(BY_TIME)?.insert((now_unix_ms, c, seq), ())?;
        counters.next_seq += 1;
        counters.messages += 1;
        counters.bytes += len;
        inboxes.insert(c, counters.row())?;
        adjust_total_bytes(txn, len, 0)?;
        Ok(Stored::New)
    }

    /// Up to `max` messages, oldest first; they stay until confirmed.
    pub fn fetch(&self, client: &NodeId, max: usize) -> Result<Vec<StoredMessage>, InboxError> {
        let c = client.0;
        let txn = self.db.begin_read()?;
        if txn.open_table(INBOXES)?.get(c)?.is_none() {
            return Err(InboxError::UnknownClient(*client));
        }
        let messages = txn.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for row in messages.range((c, 0u64)..=(c, u64::MAX))?.take(max) {
            let (k, v) = row?;
            let (id, stored_at_ms, data) = v.value();
            out.push(StoredMessage {
                seq: k.value().1,
                id,
                stored_at_ms,
                data: data.to_vec(),
            });
        }
        Ok(out)
    }

    /// Deletes the listed messages (the client has them). Unknown seqs are
    /// ignored; returns how many were deleted. Their ids stay remembered
    /// for duplicate detection (see the module docs).
    pub fn confirm(&self, client: &NodeId, seqs: &[u64]) -> Result<usize, InboxError> {
        let c = client.0;
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let txn = self.begin_durable()?;
        let mut deleted = 0usize;
        {
            let mut inboxes = txn.open_table(INBOXES)?;
            let mut counters = match inboxes.get(c)? {
                Some(row) => Counters::from_row(row.value()),
                None => return Err(InboxError::UnknownClient(*client)),
            };
            let mut messages = txn.open_table(MESSAGES)?;
            let mut confirmed = txn.open_table(CONFIRMED)?;
            let mut freed = 0u64;
            for seq in seqs {
                let Some(row) = messages.remove((c, seq))? else {
                    continue;
                };
                let (id, stored_at_ms, data) = row.value();
                let len = data.len() as u64;
                drop(row);
                // The by_time row stays: it now points at confirmed_v1.
                confirmed.insert((c, seq), (id, stored_at_ms))?;
                counters.messages = counters.messages.saturating_sub(1);
                counters.bytes = counters.bytes.saturating_sub(len);
                counters.remembered += 1;
                freed += len;
                deleted += 1;
            }
            if deleted == 0 {
                // Nothing changed: skip the fsync.
                return Ok(0);
            }
            // Forget the oldest confirmations beyond the window.
            let window = self.limits.max_messages_per_inbox as u64;
            let excess = counters.remembered.saturating_sub(window);
            if excess > 0 {
                let mut oldest = Vec::new();
                for row in confirmed
                    .range((c, 0u64)..=(c, u64::MAX))?
                    .take(excess as usize)
                {
                    let (k, v) = row?;
                    oldest.push((k.value().1, v.value()));
                }
                let mut ids = txn.open_table(IDS)?;
                let mut by_time = txn.open_table(BY_TIME)?;
                for (seq, (id, stored_at_ms)) in oldest {
                    confirmed.remove((c, seq))?;
                    ids.remove((c, id))?;
                    by_time.remove((stored_at_ms, c, seq))?;
                    counters.remembered = counters.remembered.saturating_sub(1);
                }
            }
            inboxes.insert(c, counters.row())?;
            adjust_total_bytes(&txn, 0, freed)?;
        }
        txn.commit()?;
        Ok(deleted)
    }

    /// Deletes messages stored more than `max_age` before `now_unix_ms`, and
    /// forgets confirmed ids as old; returns how many messages were deleted.
    pub fn expire(&self, now_unix_ms: u64) -> Result<usize, InboxError> {
        let max_age_ms = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_unix_ms.saturating_sub(max_age_ms);
        let mut total = 0;
        loop {
            let (deleted, more) = self.expire_batch(cutoff)?;
            total += deleted;
            if !more {
                return Ok(total);
            }
        }
    }

    /// One transaction of `expire`: up to [`EXPIRE_BATCH`] index rows
    /// older than `cutoff`. Returns (messages deleted, more rows may be due).
    fn expire_batch(&self, cutoff: u64) -> Result<(usize, bool), InboxError> {
        let txn = self.begin_durable()?;
        let mut deleted = 0usize;
        let more;
        {
            let mut by_time = txn.open_table(BY_TIME)?;
            let mut due = Vec::new();
            for row in by_time
                .range(..(cutoff, [0u8; 32], 0u64))?
                .take(EXPIRE_BATCH + 1)
            {
                due.push(row?.0.value());
            }
            more = due.len() > EXPIRE_BATCH;
            due.truncate(EXPIRE_BATCH);
            if due.is_empty() {
                return Ok((0, false));
            }
            let mut messages = txn.open_table(MESSAGES)?;
            let mut confirmed = txn.open_table(CONFIRMED)?;
            let mut ids = txn.open_table(IDS)?;
            // Per-client decrements, applied once per client at the end.
            let mut changes: BTreeMap<Client, Counters> = BTreeMap::new();
            let mut freed = 0u64;
            for (stored_at_ms, c, seq) in due {
                by_time.remove((stored_at_ms, c, seq))?;
                let change = changes.entry(c).or_default();
                let message = messages.remove((c, seq))?.map(|row| {
                    let (id, _, data) = row.value();
                    (id, data.len() as u64)
                });
                if let Some((id, len)) = message {
                    ids.remove((c, id))?;
                    change.messages += 1;
                    change.bytes += len;
                    freed += len;
                    deleted += 1;
                    continue;
                }
                let forgotten = confirmed.remove((c, seq))?.map(|row| row.value().0);
                if let Some(id) = forgotten {
                    ids.remove((c, id))?;
                    change.remembered += 1;
                }
            }
            let mut inboxes = txn.open_table(INBOXES)?;
            for (c, change) in changes {
                let Some(row) = inboxes.get(c)? else { continue };
                let mut counters = Counters::from_row(row.value());
                drop(row);
                counters.messages = counters.messages.saturating_sub(change.messages);
                counters.bytes = counters.bytes.saturating_sub(change.bytes);
                counters.remembered = counters.remembered.saturating_sub(change.remembered);
                inboxes.insert(c, counters.row())?;
            }
            adjust_total_bytes(&txn, 0, freed)?;
        }
        txn.commit()?;
        Ok((deleted, more))
    }

    /// Totals over all inboxes (zeros, logged, if the store cannot be read).
    pub fn stats(&self) -> InboxStats {
        let read = || -> Result<InboxStats, InboxError> {
            let txn = self.db.begin_read()?;
            let bytes = txn
                .open_table(META)?
                .get(TOTAL_BYTES)?
                .map_or(0, |v| v.value());
            Ok(InboxStats {
                clients: txn.open_table(INBOXES)?.len()?,
                messages: txn.open_table(MESSAGES)?.len()?,
                bytes,
            })
        };
        read().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read inbox stats");
            InboxStats::default()
        })
    }

    /// `(messages, bytes)` held for `client`.
    pub fn inbox_len(&self, client: &NodeId) -> Result<(usize, u64), InboxError> {
        let txn = self.db.begin_read()?;
        let Some(row) = txn.open_table(INBOXES)?.get(client.0)? else {
            return Err(InboxError::UnknownClient(*client));
        };
        let counters = Counters::from_row(row.value());
        Ok((
            usize::try_from(counters.messages).unwrap_or(usize::MAX),
            counters.bytes,
        ))
    }
}

/// The storage of the core's final-hop rules (`Delivery`): one durable
/// group commit per batch.
impl InboxStorage for InboxStore {
    type Error = InboxError;

    fn store_committed(
        &self,
        items: &[InboxItem<'_>],
        now_unix_ms: u64,
    ) -> Result<Vec<Result<(), InboxError>>, InboxError> {
        let items: Vec<(NodeId, [u8; 16], &[u8])> =
            items.iter().map(|i| (i.client, i.id, i.message)).collect();
        let stored = self.store_batch(&items, now_unix_ms)?;
        Ok(stored.into_iter().map(|r| r.map(|_| ())).collect())
    }

    fn refusal(error: &InboxError) -> Refusal {
        match error {
            InboxError::UnknownClient(_) => Refusal::UnknownClient,
            InboxError::Full { .. } => Refusal::Full,
            _ => Refusal::Other,
        }
    }
}

fn adjust_total_bytes(txn: &WriteTransaction, add: u64, sub: u64) -> Result<(), InboxError> {
    let mut meta = txn.open_table(META)?;
    let current = meta.get(TOTAL_BYTES)?.map_or(0, |v| v.value());
    meta.insert(TOTAL_BYTES, current.saturating_add(add).saturating_sub(sub))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const A: NodeId = NodeId([1; 32]);
    const B: NodeId = NodeId([2; 32]);

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn open(dir: &tempfile::TempDir, limits: InboxLimits) -> InboxStore {
        InboxStore::open(&dir.path().join("inbox.redb"), limits).unwrap()
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<InboxStore>();
    }

    #[test]
    fn store_fetch_confirm_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, InboxLimits::default());
        assert!(s.register(&A).unwrap());
        assert!(!s.register(&A).unwrap(), "register is idempotent");
        assert!(s.is_registered(&A));
        assert!(!s.is_registered(&B));
        for n in 0..3u8 {
            let r = s.store(&A, id(n), &[n; 10], 1000 + u64::from(n)).unwrap();
            assert_eq!(r, Stored::New);
        }
        let all = s.fetch(&A, 10).unwrap();
        assert_eq!(all.len(), 3);
        for (n, m) in all.iter().enumerate() {
            assert_eq!(m.id, id(n as u8));
            assert_eq!(m.data, vec![n as u8; 10]);
            assert_eq!(m.stored_at_ms, 1000 + n as u64);
        }
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(s.fetch(&A, 2).unwrap(), all[..2].to_vec());
        assert_eq!(s.fetch(&A, 0).unwrap(), vec![]);
        // Fetching does not delete.
        assert_eq!(s.inbox_len(&A).unwrap(), (3, 30));

        let n = s.confirm(&A, &[all[1].seq, 9999, all[1].seq]).unwrap();
        assert_eq!(n, 1, "unknown and repeated seqs are ignored");
        assert_eq!(s.confirm(&A, &[all[1].seq]).unwrap(), 0);
        assert_eq!(
            s.fetch(&A, 10).unwrap(),
            vec![all[0].clone(), all[2].clone()]
        );
        assert_eq!(s.inbox_len(&A).unwrap(), (2, 20));

        // New messages come after the old ones, whatever their timestamp.
        s.store(&A, id(9), b"late", 1).unwrap();
        let after = s.fetch(&A, 10).unwrap();
        assert_eq!(after.last().unwrap().id, id(9));
        assert!(after.last().unwrap().seq > all[2].seq);
        assert_eq!(
            s.stats(),
            InboxStats {
                clients: 1,
                messages: 3,
                bytes: 24
            }
        );
    }

    #[test]
    fn duplicates_are_stored_once_even_after_confirm() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_age: Duration::from_secs(10),
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        s.register(&B).unwrap();
        assert_eq!(s.store(&A, id(1), b"x", 0).unwrap(), Stored::New);
        assert_eq!(s.store(&A, id(1), b"x", 5).unwrap(), Stored::Duplicate);
        // Same id, other client: a different message.
        assert_eq!(s.store(&B, id(1), b"x", 0).unwrap(), Stored::New);
        assert_eq!(s.fetch(&A, 10).unwrap().len(), 1);

        let seq = s.fetch(&A, 1).unwrap()[0].seq;
        assert_eq!(s.confirm(&A, &[seq]).unwrap(), 1);
        assert_eq!(
            s.store(&A, id(1), b"x", 6).unwrap(),
            Stored::Duplicate,
            "a retransmission after confirmation is still a duplicate"
        );
        assert!(s.fetch(&A, 10).unwrap().is_empty());

        // Past max_age the id is forgotten (its message would have expired
        // anyway), and B's unconfirmed message expires.
        assert_eq!(s.expire(10_001).unwrap(), 1);
        assert_eq!(s.store(&A, id(1), b"x", 10_002).unwrap(), Stored::New);
        assert_eq!(s.stats().messages, 1);
    }

    #[test]
    fn remembered_confirmations_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_messages_per_inbox: 2,
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        for n in 0..3u8 {
            s.store(&A, id(n), b"m", 0).unwrap();
            let seq = s.fetch(&A, 1).unwrap()[0].seq;
            s.confirm(&A, &[seq]).unwrap();
        }
        // Window of 2: id 0 forgotten, 1 and 2 remembered.
        assert_eq!(s.store(&A, id(2), b"m", 0).unwrap(), Stored::Duplicate);
        assert_eq!(s.store(&A, id(1), b"m", 0).unwrap(), Stored::Duplicate);
        assert_eq!(s.store(&A, id(0), b"m", 0).unwrap(), Stored::New);
        // Expiry cleans up what is left, index rows included.
        let limits_age = s.limits().max_age.as_millis() as u64;
        assert_eq!(s.expire(limits_age + 1).unwrap(), 1);
        assert_eq!(s.store(&A, id(1), b"m", 0).unwrap(), Stored::New);
    }

    #[test]
    fn full_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_messages_per_inbox: 2,
            max_bytes_per_inbox: 25,
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        s.register(&B).unwrap();
        s.store(&A, id(1), &[0; 5], 0).unwrap();
        s.store(&A, id(2), &[0; 5], 0).unwrap();
        let e = s.store(&A, id(3), &[0; 5], 0).unwrap_err();
        assert!(matches!(
            e,
            InboxError::Full {
                limit: InboxLimit::Messages(2),
                ..
            }
        ));
        assert_eq!(e.label(), "full");
        assert!(e.to_string().contains("is full: 2 messages"), "{e}");
        // A retransmission of a held message is still acknowledged.
        assert_eq!(s.store(&A, id(2), &[0; 5], 0).unwrap(), Stored::Duplicate);

        s.store(&B, id(1), &[0; 20], 0).unwrap();
        let e = s.store(&B, id(2), &[0; 6], 0).unwrap_err();
        assert!(matches!(
            e,
            InboxError::Full {
                limit: InboxLimit::Bytes(25),
                ..
            }
        ));
        assert!(e.to_string().contains("is full: 25 bytes"), "{e}");
        assert_eq!(s.store(&B, id(3), &[0; 5], 0).unwrap(), Stored::New);

        // Confirming makes room again.
        let seq = s.fetch(&A, 1).unwrap()[0].seq;
        s.confirm(&A, &[seq]).unwrap();
        assert_eq!(s.store(&A, id(3), &[0; 5], 0).unwrap(), Stored::New);
    }

    #[test]
    fn too_large_unknown_client_and_too_many_clients() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_message_bytes: 8,
            max_clients: 1,
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        s.store(&A, id(1), &[0; 8], 0).unwrap();
        let e = s.store(&A, id(2), &[0; 9], 0).unwrap_err();
        assert!(matches!(e, InboxError::TooLarge { size: 9, max: 8 }));
        assert_eq!(e.label(), "too_large");

        let e = s.store(&B, id(1), b"x", 0).unwrap_err();
        assert!(matches!(e, InboxError::UnknownClient(c) if c == B));
        assert_eq!(e.label(), "unknown_client");
        assert!(e.to_string().contains(&B.short()), "{e}");
        assert!(matches!(s.fetch(&B, 1), Err(InboxError::UnknownClient(_))));
        assert!(matches!(
            s.confirm(&B, &[1]),
            Err(InboxError::UnknownClient(_))
        ));
        assert!(matches!(s.inbox_len(&B), Err(InboxError::UnknownClient(_))));

        let e = s.register(&B).unwrap_err();
        assert!(matches!(e, InboxError::TooManyClients { max: 1 }));
        assert_eq!(e.label(), "too_many_clients");
        assert!(!s.register(&A).unwrap(), "existing clients still register");
        assert_eq!(InboxError::Storage("x".into()).label(), "storage");
    }

    #[test]
    fn expire_deletes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_age: Duration::from_secs(5),
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        s.register(&B).unwrap();
        s.store(&A, id(1), b"old", 1_000).unwrap();
        s.store(&A, id(2), b"new", 10_000).unwrap();
        s.store(&B, id(1), b"old-b", 2_000).unwrap();
        assert_eq!(s.expire(6_000).unwrap(), 0, "exactly max_age is kept");
        assert_eq!(s.expire(12_000).unwrap(), 2);
        assert_eq!(s.expire(12_000).unwrap(), 0);
        let left = s.fetch(&A, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].data, b"new");
        assert_eq!(s.inbox_len(&B).unwrap(), (0, 0));
        assert_eq!(
            s.stats(),
            InboxStats {
                clients: 2,
                messages: 1,
                bytes: 3
            }
        );
    }

    #[test]
    fn expire_works_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboxLimits {
            max_age: Duration::from_millis(1),
            max_messages_per_inbox: EXPIRE_BATCH * 2,
            ..InboxLimits::default()
        };
        let s = open(&dir, limits);
        s.register(&A).unwrap();
        // One transaction for all rows, so the test does not fsync 10k times.
        let n = EXPIRE_BATCH as u64 + 5;
        let txn = s.db.begin_write().unwrap();
        {
            let mut m = txn.open_table(MESSAGES).unwrap();
            let mut ids = txn.open_table(IDS).unwrap();
            let mut t = txn.open_table(BY_TIME).unwrap();
            for seq in 1..=n {
                let mut mid = [0u8; 16];
                mid[..8].copy_from_slice(&seq.to_be_bytes());
                m.insert((A.0, seq), (mid, 0u64, &b"z"[..])).unwrap();
                ids.insert((A.0, mid), seq).unwrap();
                t.insert((0u64, A.0, seq), ()).unwrap();
            }
            let c = Counters {
                next_seq: n + 1,
                messages: n,
                bytes: n,
                remembered: 0,
            };
            txn.open_table(INBOXES)
                .unwrap()
                .insert(A.0, c.row())
                .unwrap();
            adjust_total_bytes(&txn, n, 0).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(s.expire(10).unwrap(), n as usize);
        assert_eq!(s.stats().messages, 0);
        assert_eq!(s.stats().bytes, 0);
        assert_eq!(s.inbox_len(&A).unwrap(), (0, 0));
    }

    #[test]
    fn stats_are_consistent_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let s = open(&dir, InboxLimits::default());
            s.register(&A).unwrap();
            s.register(&B).unwrap();
            for n in 0..5u8 {
                s.store(&A, id(n), &[n; 100], 0).unwrap();
            }
            s.store(&B, id(0), &[0; 7], 0).unwrap();
            let seqs: Vec<u64> = s.fetch(&A, 2).unwrap().iter().map(|m| m.seq).collect();
            s.confirm(&A, &seqs).unwrap();
            s.stats()
        };
        assert_eq!(
            expected,
            InboxStats {
                clients: 2,
                messages: 4,
                bytes: 307
            }
        );
        let s = open(&dir, InboxLimits::default());
        assert_eq!(s.stats(), expected);
        assert_eq!(s.inbox_len(&A).unwrap(), (3, 300));
        // The duplicate index and sequence numbers survive too.
        assert_eq!(s.store(&A, id(0), &[0; 100], 0).unwrap(), Stored::Duplicate);
        s.store(&A, id(9), b"n", 0).unwrap();
        assert_eq!(s.fetch(&A, 10).unwrap().last().unwrap().seq, 6);
    }

    const WRITER_ENV: &str = "LOOPMIX_INBOX_CRASH_WRITER_DB";
    const WRITER_TEST: &str = "provider::inbox::tests::crash_writer";
    const CRASH_MESSAGES: u64 = 5_000;

    fn crash_message(n: u64) -> ([u8; 16], Vec<u8>) {
        let mut mid = [0u8; 16];
        mid[..8].copy_from_slice(&n.to_be_bytes());
        (mid, n.to_be_bytes().repeat(256))
    }

    /// Child half of `stored_messages_survive_sigkill`: stores messages and
    /// reports each one only after `store` returned.
    #[test]
    #[ignore = "run as a child process by stored_messages_survive_sigkill"]
    fn crash_writer() {
        let Some(path) = std::env::var_os(WRITER_ENV) else {
            return;
        };
        let limits = InboxLimits {
            max_messages_per_inbox: usize::MAX,
            max_bytes_per_inbox: u64::MAX,
            ..InboxLimits::default()
        };
        let s = InboxStore::open(Path::new(&path), limits).unwrap();
        for n in 0..CRASH_MESSAGES {
            let (mid, data) = crash_message(n);
            assert_eq!(s.store(&A, mid, &data, n).unwrap(), Stored::New);
            println!("stored {n}");
        }
    }

    #[test]
    fn stored_messages_survive_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.redb");
        InboxStore::open(&path, InboxLimits::default())
            .unwrap()
            .register(&A)
            .unwrap();

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([WRITER_TEST, "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reported = Vec::new();
        for line in BufReader::new(stdout).lines() {
            if let Some(n) = line.unwrap().strip_prefix("stored ") {
                reported.push(n.parse::<u64>().unwrap());
                if reported.len() == 50 {
                    // SIGKILL, most likely in the middle of the next commit.
                    child.kill().unwrap();
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        assert_eq!(reported.len(), 50, "child ended early: {status}");
        assert!(!status.success(), "child was killed, not finished");

        let s = InboxStore::open(&path, InboxLimits::default()).unwrap();
        let held = s.fetch(&A, usize::MAX).unwrap();
        // Everything reported is there, in order, intact; at most the one
        // store in flight at the kill went further.
        assert!(held.len() >= reported.len(), "lost messages");
        for (n, m) in held.iter().enumerate() {
            let (mid, data) = crash_message(n as u64);
            assert_eq!((m.id, &m.data), (mid, &data), "message {n}");
        }
        let stats = s.stats();
        assert_eq!(stats.messages, held.len() as u64);
        assert_eq!(stats.bytes, held.len() as u64 * 2048);
        // And the reopened store keeps working.
        let (mid, data) = crash_message(CRASH_MESSAGES);
        s.store(&A, mid, &data, 0).unwrap();
    }
}
