//! The Raft-log half of [`SledStore`]: reading the log, hard state and
//! snapshot metadata, and [`LogStore`].
//!
//! # Log layout: one record per saved batch
//!
//! The `raft_log` tree holds *batches*: key = big-endian index of the
//! batch's first entry ([`log_key`]), value = one checksummed record
//! ([`record`]) of the entries, contiguous, in order. A [`LogStore::save`]
//! writes its entries as one batch (split into records of at most
//! [`MAX_BATCH_BYTES`] when a save is larger, e.g. a follower catching up,
//! so that reading one entry never decodes more than that), so a save costs
//! one sled insert instead of one per entry. Invariants, checked at open:
//!
//! * every batch is non-empty, its first entry's index is its key and its
//!   entries are contiguous (else [`StorageError::Corruption`] naming the
//!   batch's key);
//! * batches follow each other without gap or overlap, the first starting
//!   at `snapshot.index + 1` (else [`StorageError::Inconsistent`]);
//! * no batch key is ≤ the snapshot index: compaction rewrites a batch that
//!   straddles the snapshot index under the key `snapshot.index + 1`,
//!   keeping only the entries after it (so readers never skip anything, and
//!   clearing the log = deleting every key in `(snapshot, last]`).
//!
//! [`SEQ_KEY`] shares the tree: nine bytes sort after every 8-byte key, so
//! every log scan stops before it.
//!
//! Format of a batch: a checksummed record ([`record`]) under its key,
//! whose payload is the entries as a bincode sequence: the entry count as
//! a varint, then each [`Entry`] (index, term, payload). The count comes
//! first so that a reader can decode entry by entry and stop early
//! ([`BatchEntries`]).

use std::ops::Bound;
use std::sync::atomic::Ordering;

use sled::transaction::Transactional;
use sled::{Batch, IVec};

use super::*;

/// Batches left below the snapshot by a compaction that one later write
/// (`save` or `compact`) deletes along with its own change. A compaction
/// used to delete them all at once — a thousand keys in one transaction
/// and the flush after it, 10–25 ms with the Raft loop waiting — while this
/// costs each write a few removals and no flush of its own.
pub(super) const DEAD_KEYS_PER_WRITE: usize = 64;

/// Largest record a save writes (by [`Entry::approx_size`]); a bigger save
/// is split into several records, all in the same atomic sled write. Bounds
/// what one point read (`term`, a replication read at an arbitrary index)
/// decodes; an ordinary leader save (hundreds of small commands) is one
/// record.
/// It stays below [`durability::BLOB_SAFE_RECORD`] with room for the
/// encoding's per-entry overhead, so ordinary saves never make sled write a
/// blob file.
pub(super) const MAX_BATCH_BYTES: usize = 48 * 1024;

/// How a batch key is named in errors.
fn batch_desc(key: &[u8]) -> String {
    if key.len() == 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(key);
        format!("batch at index {}", u64::from_be_bytes(b))
    } else {
        describe_key(LOG_TREE, key)
    }
}

fn corrupt(key: &[u8], reason: String) -> StorageError {
    StorageError::Corruption {
        tree: LOG_TREE.into(),
        key: batch_desc(key),
        reason,
    }
}

/// The entries of one batch record, verified (checksum, key) up front and
/// decoded one by one: a reader that needs a few entries of a batch stops
/// early. Each entry is checked to be at its place (first = the key,
/// contiguous); the end of the payload is checked when the last entry has
/// been read.
struct BatchEntries<'a> {
    key: &'a [u8],
    payload: &'a [u8],
    next_index: u64,
    left: u64,
}

impl<'a> BatchEntries<'a> {
    fn new(key: &'a [u8], bytes: &'a [u8]) -> Result<Self, StorageError> {
        let first = match <[u8; 8]>::try_from(key) {
            Ok(b) => u64::from_be_bytes(b),
            Err(_) => return Err(corrupt(key, format!("log key of {} bytes", key.len()))),
        };
        let payload = record::verify(key, bytes).map_err(|e| corrupt(key, e.to_string()))?;
        let (len, used): (u64, usize) =
            bincode::serde::decode_from_slice(payload, bincode::config::standard())
                .map_err(|e| corrupt(key, format!("checksum ok but no entry count: {e}")))?;
        if len == 0 {
            return Err(corrupt(key, "empty batch".into()));
        }
        Ok(BatchEntries {
            key,
            payload: &payload[used..],
            next_index: first,
            left: len,
        })
    }

    /// Index of the batch's first entry (its key).
    fn first_index(key: &[u8]) -> u64 {
        <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes)
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, StorageError> {
        if self.left == 0 {
            if !self.payload.is_empty() {
                return Err(corrupt(
                    self.key,
                    format!("payload has {} trailing bytes", self.payload.len()),
                ));
            }
            return Ok(None);
        }
        let (e, used): (Entry, usize) =
            bincode::serde::decode_from_slice(self.payload, bincode::config::standard()).map_err(
                |e| {
                    corrupt(
                        self.key,
                        format!("checksum ok but entry does not decode: {e}"),
                    )
                },
            )?;
        if e.index != self.next_index {
            return Err(corrupt(
                self.key,
                format!(
                    "holds entry {} where entry {} belongs (batch entries must start at the \
                     key and be contiguous)",
                    e.index, self.next_index
                ),
            ));
        }
        self.payload = &self.payload[used..];
        self.left -= 1;
        self.next_index += 1;
        Ok(Some(e))
    }

    /// Every remaining entry, verified to the end of the record.
    fn rest(mut self) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(self.left.min(4096) as usize);
        while let Some(e) = self.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }
}

impl Inner {
    /// Adds `entries` (contiguous) to `batch` as records of at most
    /// [`MAX_BATCH_BYTES`], reusing `buf`.
    fn push_batches(
        &self,
        batch: &mut Batch,
        entries: &[Entry],
        buf: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut rest = entries;
        while let Some(first) = rest.first() {
            let mut size = 0;
            let n = rest
                .iter()
                .position(|e| {
                    size += e.approx_size();
                    size > MAX_BATCH_BYTES
                })
                .unwrap_or(rest.len())
                .max(1);
            let (chunk, tail) = rest.split_at(n);
            let key = log_key(first.index);
            record::encode_into(&key, chunk, buf).map_err(StorageError::Encode)?;
            self.durability.note_record(buf.len());
            batch.insert(&key, buf.as_slice());
            rest = tail;
        }
        Ok(())
    }

    pub(super) fn read_hard_state(&self) -> Result<HardState, StorageError> {
        match self
            .hard
            .get(HARD_STATE_KEY)
            .map_err(|e| self.sled_err(HARD_STATE_TREE, "\"hard_state\"", e))?
        {
            None => Ok(HardState::default()),
            Some(b) => record::decode(HARD_STATE_KEY, &b)
                .map_err(|e| e.into_storage(HARD_STATE_TREE, "\"hard_state\"")),
        }
    }

    pub(super) fn read_snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        match self
            .snap
            .get(SNAPSHOT_META_KEY)
            .map_err(|e| self.sled_err(SNAPSHOT_TREE, "\"meta\"", e))?
        {
            None => Ok(SnapshotMeta::default()),
            Some(b) => record::decode(SNAPSHOT_META_KEY, &b)
                .map_err(|e| e.into_storage(SNAPSHOT_TREE, "\"meta\"")),
        }
    }

    /// The batch holding `index`, if any: the one with the greatest key
    /// ≤ `index` (it may end before `index`).
    fn batch_at(&self, index: u64) -> Result<Option<(IVec, IVec)>, StorageError> {
        self.log
            .range(..=log_key(index))
            .next_back()
            .transpose()
            .map_err(|e| self.sled_err(LOG_TREE, &format!("index {index}"), e))
    }

    pub(super) fn read_entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        let Some((k, v)) = self.batch_at(index)? else {
            return Ok(None);
        };
        let mut batch = BatchEntries::new(&k, &v)?;
        while let Some(e) = batch.next_entry()? {
            if e.index == index {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Entries `[lo, hi)`, stopping once their total
    /// [`Entry::approx_size`] reaches `max_bytes` (see
    /// [`SledStore::entries`], which checks `lo` against the snapshot).
    pub(super) fn read_entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(hi.saturating_sub(lo).min(1024) as usize);
        if lo >= hi {
            return Ok(out);
        }
        let head = self.batch_at(lo)?;
        let from = match &head {
            Some((k, _)) => Bound::Excluded(k.clone()),
            None => Bound::Included(IVec::from(&log_key(lo))),
        };
        let tail = self
            .log
            .range::<IVec, _>((from, Bound::Excluded(IVec::from(&log_key(hi)))));
        let mut size = 0usize;
        let mut expected = lo;
        for kv in head.map(Ok).into_iter().chain(tail) {
            let (k, v) = kv.map_err(|e| self.sled_err(LOG_TREE, "range", e))?;
            let first = BatchEntries::first_index(&k);
            if first > expected {
                // A concurrent compaction removed the head, or a hole.
                if expected == lo {
                    return Err(StorageError::Compacted(lo));
                }
                return Err(StorageError::Inconsistent(format!(
                    "log entry {expected} missing (next stored is {first})"
                )));
            }
            let mut batch = BatchEntries::new(&k, &v)?;
            while let Some(e) = batch.next_entry()? {
                // Entries before `expected`: the head batch's entries before
                // `lo`, or (only with a concurrent suffix overwrite on a
                // follower) an overlap between an old and a new batch.
                if e.index < expected {
                    continue;
                }
                if e.index >= hi {
                    return Ok(out);
                }
                expected += 1;
                size += e.approx_size();
                out.push(e);
                if size >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Reads the whole log after `snapshot`, verifying every record and
    /// contiguity.
    pub(super) fn read_log(&self, snapshot: SnapshotMeta) -> Result<Vec<Entry>, StorageError> {
        self.read_log_and_dead(snapshot).map(|(entries, _)| entries)
    }

    /// The log after `snapshot`, verified, and the keys of the batches that
    /// lie wholly at or below it: a compaction deletes those a few at a time
    /// (see [`DEAD_KEYS_PER_WRITE`]), so some may still be there. A batch
    /// straddling the snapshot index is kept; its entries up to the index are
    /// skipped here.
    pub(super) fn read_log_and_dead(
        &self,
        snapshot: SnapshotMeta,
    ) -> Result<(Vec<Entry>, Vec<IVec>), StorageError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut dead = Vec::new();
        for kv in self.log.range(..SEQ_KEY) {
            let (k, v) = kv.map_err(|e| self.sled_err(LOG_TREE, "scan", e))?;
            let mut batch = BatchEntries::new(&k, &v)?.rest()?;
            if entries.is_empty() && batch[0].index <= snapshot.index {
                batch.retain(|e| e.index > snapshot.index);
                if batch.is_empty() {
                    dead.push(k);
                    continue;
                }
            }
            let expected = snapshot.index + 1 + entries.len() as u64;
            if batch[0].index != expected {
                return Err(StorageError::Inconsistent(format!(
                    "{}: log tree `{LOG_TREE}` has a batch starting at entry {} where entry \
                     {expected} was expected (snapshot index {})",
                    self.path.display(),
                    batch[0].index,
                    snapshot.index
                )));
            }
            for e in batch {
                let (prev_term, what) = match entries.last() {
                    Some(p) => (p.term, format!("the term {} of entry {}", p.term, p.index)),
                    None => (
                        snapshot.term,
                        format!("the snapshot term {}", snapshot.term),
                    ),
                };
                if e.term < prev_term {
                    return Err(StorageError::Inconsistent(format!(
                        "{}: log entry {} has term {} below {what}",
                        self.path.display(),
                        e.index,
                        e.term,
                    )));
                }
                entries.push(e);
            }
        }
        Ok((entries, dead))
    }

    /// Adds the removal of up to [`DEAD_KEYS_PER_WRITE`] batches left below
    /// the snapshot by a compaction to `batch`.
    pub(super) fn push_dead_removals(&self, batch: &mut Batch) {
        let mut dead = lock(&self.dead_log_keys);
        let n = dead.len().min(DEAD_KEYS_PER_WRITE);
        for k in dead.drain(..n) {
            batch.remove(k);
        }
    }

    /// Writes the log-tree `batch` (plus the next change number, which it
    /// returns) and `meta` as the snapshot, in one transaction; no sync.
    fn write_with_snapshot_meta(
        &self,
        st: &LogState,
        mut batch: Batch,
        meta: SnapshotMeta,
    ) -> Result<u64, StorageError> {
        let seq = self.push_seq(st, &mut batch)?;
        let meta_rec = record::encode(SNAPSHOT_META_KEY, &meta).map_err(StorageError::Encode)?;
        let written = (&self.log, &self.snap)
            .transaction(|(log, snap)| {
                log.apply_batch(&batch)?;
                snap.insert(SNAPSHOT_META_KEY, meta_rec.as_slice())?;
                Ok(())
            })
            .map_err(|e| self.tx_err(LOG_TREE, e));
        self.fail(written)?;
        Ok(seq)
    }

    /// Deletes every log entry ≤ `drop_to` and writes `meta` as the
    /// snapshot, in one transaction, then syncs; the log then ends at
    /// `new_last`. Batches entirely ≤ `drop_to` are deleted; a batch
    /// straddling `drop_to` is rewritten under `drop_to + 1` with its later
    /// entries (one record decoded and re-encoded, at most
    /// [`MAX_BATCH_BYTES`]).
    pub(super) fn replace_log_prefix(
        &self,
        st: &mut LogState,
        meta: SnapshotMeta,
        drop_to: u64,
        new_last: u64,
    ) -> Result<(), StorageError> {
        self.healthy()?;
        let mut batch = Batch::default();
        let mut straddling = None;
        for kv in self.log.range(..=log_key(drop_to)) {
            let (k, v) = kv.map_err(|e| self.sled_err(LOG_TREE, "scan", e))?;
            batch.remove(k.clone());
            straddling = Some((k, v));
        }
        if let Some((k, v)) = straddling {
            let mut kept = Vec::new();
            let mut entries = BatchEntries::new(&k, &v)?;
            while let Some(e) = entries.next_entry()? {
                if e.index > drop_to {
                    kept.push(e);
                }
            }
            self.push_batches(&mut batch, &kept, &mut Vec::new())?;
        }
        let seq = self.write_with_snapshot_meta(st, batch, meta)?;
        self.sync()?;
        self.durable(st, seq)?;
        // Everything up to `drop_to` is gone, so are the leftovers.
        lock(&self.dead_log_keys).clear();
        st.snapshot = meta;
        st.last_index = new_last;
        self.snapshot_index.store(meta.index, Ordering::Release);
        self.last_index.store(new_last, Ordering::Release);
        Ok(())
    }

    /// Adds to `batch` the deletion of every stored entry ≥ `from`: the
    /// batch holding `from` is cut to its entries before `from` (or deleted
    /// when it starts at `from`), every later batch is deleted.
    fn push_truncate_from(&self, from: u64, batch: &mut Batch) -> Result<(), StorageError> {
        if let Some((k, v)) = self.batch_at(from)? {
            let first = BatchEntries::first_index(&k);
            if first < from {
                let mut kept = Vec::new();
                let mut entries = BatchEntries::new(&k, &v)?;
                while let Some(e) = entries.next_entry()? {
                    if e.index >= from {
                        break;
                    }
                    kept.push(e);
                }
                // Same key: `kept` starts at the batch's first entry.
                self.push_batches(batch, &kept, &mut Vec::new())?;
            } else {
                batch.remove(k);
            }
        }
        let later = (
            Bound::Excluded(IVec::from(&log_key(from))),
            Bound::Excluded(IVec::from(SEQ_KEY)),
        );
        for kv in self.log.range::<IVec, _>(later) {
            let (k, _) = kv.map_err(|e| self.sled_err(LOG_TREE, "scan", e))?;
            batch.remove(k);
        }
        Ok(())
    }
}

impl LogStore for SledStore {
    fn load(&self) -> Result<RecoveredLog, StorageError> {
        let inner = &*self.inner;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut st = lock(&inner.log_state);
            let hard_state = inner.read_hard_state()?;
            let mut snapshot = inner.read_snapshot_meta()?;
            let mut entries = inner.read_log(snapshot)?;
            let applied = {
                let _g = read_lock(&inner.apply_lock);
                inner.applied_meta()
            };
            if applied.index < snapshot.index {
                return Err(StorageError::Inconsistent(format!(
                    "{}: the state machine has applied up to {} but the log was compacted \
                     up to {}: entries {}..={} are lost",
                    inner.path.display(),
                    applied.index,
                    snapshot.index,
                    applied.index + 1,
                    snapshot.index
                )));
            }
            // A snapshot install (`restore`, then `reset_to_snapshot`)
            // interrupted between its two durable steps leaves a state
            // machine ahead of, or conflicting with, the log: the log has no
            // entry at the applied index with the applied term. Finish the
            // install. The snapshot holds only committed entries, so the
            // dropped log entries were uncommitted or covered by it.
            if applied.index > snapshot.index {
                let matches = applied
                    .index
                    .checked_sub(snapshot.index + 1)
                    .and_then(|off| entries.get(off as usize))
                    .is_some_and(|e| e.term == applied.term);
                if !matches {
                    tracing::warn!(
                        path = %inner.path.display(),
                        applied = applied.index,
                        last_index = st.last_index,
                        "finishing an interrupted snapshot install: resetting the log to the \
                         state machine's snapshot"
                    );
                    let drop_to = st.last_index.max(applied.index);
                    inner.replace_log_prefix(&mut st, applied, drop_to, applied.index)?;
                    snapshot = applied;
                    entries.clear();
                }
            }
            Ok(RecoveredLog {
                hard_state,
                snapshot,
                entries,
            })
        }));
        result.unwrap_or_else(|p| {
            Err(StorageError::Corruption {
                tree: format!("sled database {}", inner.path.join("db").display()),
                key: "-".into(),
                reason: format!("sled panicked while reading it: {}", panic_message(&*p)),
            })
        })
    }

    fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let mut st = lock(&inner.log_state);
        let mut batch = Batch::default();
        let seq = inner.push_seq(&st, &mut batch)?;
        let mut new_last = st.last_index;
        if let Some(first) = entries.first() {
            if first.index <= st.snapshot.index {
                return Err(StorageError::Inconsistent(format!(
                    "cannot store entry {}: the log is compacted up to {}",
                    first.index, st.snapshot.index
                )));
            }
            if first.index > st.last_index + 1 {
                return Err(StorageError::Inconsistent(format!(
                    "cannot store entry {}: the log ends at {} (a hole)",
                    first.index, st.last_index
                )));
            }
            for (i, e) in entries.iter().enumerate() {
                if e.index != first.index + i as u64 {
                    return Err(StorageError::Inconsistent(format!(
                        "entries to save are not contiguous: {} follows {}",
                        e.index,
                        first.index + i as u64 - 1
                    )));
                }
            }
            new_last = first.index + entries.len() as u64 - 1;
            if first.index <= st.last_index {
                // Overwriting a suffix: it goes in the same atomic write.
                inner.push_truncate_from(first.index, &mut batch)?;
            }
            let mut buf = Vec::with_capacity(128 * entries.len().min(1024));
            inner.push_batches(&mut batch, entries, &mut buf)?;
        }
        inner.push_dead_removals(&mut batch);
        inner.healthy()?;
        let written = match hard_state {
            None => inner
                .log
                .apply_batch(batch)
                .map_err(|e| inner.sled_err(LOG_TREE, "batch", e)),
            Some(hs) => {
                let hs_rec = record::encode(HARD_STATE_KEY, hs).map_err(StorageError::Encode)?;
                (&inner.log, &inner.hard)
                    .transaction(|(log, hard)| {
                        log.apply_batch(&batch)?;
                        hard.insert(HARD_STATE_KEY, hs_rec.as_slice())?;
                        Ok(())
                    })
                    .map_err(|e| inner.tx_err(HARD_STATE_TREE, e))
            }
        };
        inner.fail(written)?;
        inner.sync()?;
        inner.durable(&mut st, seq)?;
        st.last_index = new_last;
        inner.last_index.store(new_last, Ordering::Release);
        Ok(())
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let mut st = lock(&inner.log_state);
        if meta.index <= st.snapshot.index {
            return Ok(());
        }
        let applied = inner.applied_index.load(Ordering::Acquire);
        if meta.index > applied {
            return Err(StorageError::Inconsistent(format!(
                "cannot compact the log up to {}: only {applied} is applied",
                meta.index
            )));
        }
        if meta.index <= st.last_index {
            if let Some(e) = inner.read_entry(meta.index)? {
                if e.term != meta.term {
                    return Err(StorageError::Inconsistent(format!(
                        "snapshot at {} claims term {}, the log has term {} there",
                        meta.index, meta.term, e.term
                    )));
                }
            }
        }
        inner.healthy()?;
        // The key-value tree is the snapshot: make it durable at the
        // applied index (≥ meta.index) before any entry it covers can go.
        // (sled recovers a prefix of its writes, so the deletions below
        // could not survive without the applies before it anyway; the
        // explicit sync makes the rule independent of that.)
        inner.sync()?;
        // Record the snapshot; the batches it covers become dead and are
        // deleted a few per write from here on (`DEAD_KEYS_PER_WRITE`).
        // A batch straddling `meta.index` stays: its later entries are live
        // (reads skip the earlier ones). No flush: losing this change in a
        // crash leaves the earlier snapshot with a complete log, and every
        // later write is ordered after it.
        let mut covered: Vec<IVec> = Vec::new();
        for k in inner.log.range(..=log_key(meta.index)).keys() {
            covered.push(k.map_err(|e| inner.sled_err(LOG_TREE, "scan", e))?);
        }
        let next_starts_after = inner
            .log
            .contains_key(log_key(meta.index + 1))
            .map_err(|e| inner.sled_err(LOG_TREE, "lookup", e))?;
        if !covered.is_empty() && meta.index < st.last_index && !next_starts_after {
            covered.pop();
        }
        // Every batch at or below the snapshot that is still there, so the
        // leftovers of an earlier compaction are included exactly once.
        *lock(&inner.dead_log_keys) = covered;
        let mut batch = Batch::default();
        inner.push_dead_removals(&mut batch);
        let seq = inner.write_with_snapshot_meta(&st, batch, meta)?;
        // Written, not yet durable: the next durable write records a
        // higher number in the watermark file.
        st.seq = seq;
        st.snapshot = meta;
        st.last_index = st.last_index.max(meta.index);
        inner.snapshot_index.store(meta.index, Ordering::Release);
        inner.last_index.store(st.last_index, Ordering::Release);
        Ok(())
    }

    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let mut st = lock(&inner.log_state);
        let drop_to = st.last_index.max(meta.index);
        inner.replace_log_prefix(&mut st, meta, drop_to, meta.index)
    }
}
