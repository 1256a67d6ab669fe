//! The Raft-log half of [`SledStore`]: reading the log, hard state and
//! snapshot metadata, and [`LogStore`].

use std::sync::atomic::Ordering;

use sled::transaction::Transactional;
use sled::Batch;

use super::*;

impl Inner {
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

    pub(super) fn decode_entry(&self, key: &[u8], bytes: &[u8]) -> Result<Entry, StorageError> {
        let desc = || describe_key(LOG_TREE, key);
        let e: Entry = record::decode(key, bytes).map_err(|e| e.into_storage(LOG_TREE, desc()))?;
        if key.len() != 8 || log_key(e.index) != key {
            return Err(StorageError::Corruption {
                tree: LOG_TREE.into(),
                key: desc(),
                reason: format!("holds entry {}", e.index),
            });
        }
        Ok(e)
    }

    pub(super) fn read_entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        let key = log_key(index);
        match self
            .log
            .get(key)
            .map_err(|e| self.sled_err(LOG_TREE, &format!("index {index}"), e))?
        {
            None => Ok(None),
            Some(b) => self.decode_entry(&key, &b).map(Some),
        }
    }

    /// Reads the whole log after `snapshot`, verifying every record and
    /// contiguity.
    pub(super) fn read_log(&self, snapshot: SnapshotMeta) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        for kv in self.log.range(..SEQ_KEY) {
            let (k, v) = kv.map_err(|e| self.sled_err(LOG_TREE, "scan", e))?;
            let e = self.decode_entry(&k, &v)?;
            let expected = snapshot.index + 1 + entries.len() as u64;
            if e.index != expected {
                return Err(StorageError::Inconsistent(format!(
                    "{}: log tree `{LOG_TREE}` has entry {} where entry {expected} was expected \
                     (snapshot index {})",
                    self.path.display(),
                    e.index,
                    snapshot.index
                )));
            }
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                if e.term < prev.term {
                    return Err(StorageError::Inconsistent(format!(
                        "{}: log entry {} has term {} below the term {} of entry {}",
                        self.path.display(),
                        e.index,
                        e.term,
                        prev.term,
                        prev.index
                    )));
                }
            } else if e.term < snapshot.term {
                return Err(StorageError::Inconsistent(format!(
                    "{}: log entry {} has term {} below the snapshot term {}",
                    self.path.display(),
                    e.index,
                    e.term,
                    snapshot.term
                )));
            }
            entries.push(e);
        }
        Ok(entries)
    }

    /// Deletes log entries `[from, to]` and writes `meta` as the snapshot,
    /// in one transaction, then syncs; the log then ends at `new_last`.
    pub(super) fn replace_log_prefix(
        &self,
        st: &mut LogState,
        meta: SnapshotMeta,
        (from, to): (u64, u64),
        new_last: u64,
    ) -> Result<(), StorageError> {
        self.healthy()?;
        let mut batch = Batch::default();
        for i in from..=to {
            batch.remove(&log_key(i));
        }
        let seq = self.push_seq(st, &mut batch)?;
        let meta_rec =
            record::encode(SNAPSHOT_META_KEY, &meta).map_err(|e| StorageError::Io(e.0))?;
        let written = (&self.log, &self.snap)
            .transaction(|(log, snap)| {
                log.apply_batch(&batch)?;
                snap.insert(SNAPSHOT_META_KEY, meta_rec.as_slice())?;
                Ok(())
            })
            .map_err(|e| self.tx_err(LOG_TREE, e));
        self.fail(written)?;
        self.sync()?;
        self.durable(st, seq)?;
        st.snapshot = meta;
        st.last_index = new_last;
        self.snapshot_index.store(meta.index, Ordering::Release);
        self.last_index.store(new_last, Ordering::Release);
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
                    let range = (st.snapshot.index + 1, st.last_index);
                    inner.replace_log_prefix(&mut st, applied, range, applied.index)?;
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
            // The new entries overwrite their own keys; only the part of the
            // old suffix beyond them needs explicit deletion.
            for i in new_last + 1..=st.last_index {
                batch.remove(&log_key(i));
            }
            let mut buf = Vec::with_capacity(128);
            for e in entries {
                let key = log_key(e.index);
                record::encode_into(&key, e, &mut buf).map_err(|err| StorageError::Io(err.0))?;
                inner.durability.note_record(buf.len());
                batch.insert(&key, buf.as_slice());
            }
        }
        inner.healthy()?;
        let written = match hard_state {
            None => inner
                .log
                .apply_batch(batch)
                .map_err(|e| inner.sled_err(LOG_TREE, "batch", e)),
            Some(hs) => {
                let hs_rec =
                    record::encode(HARD_STATE_KEY, hs).map_err(|e| StorageError::Io(e.0))?;
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
        // The key-value tree is the snapshot: make it durable at the
        // applied index (≥ meta.index) before any entry it covers can go.
        // (sled recovers a prefix of its writes, so the deletion below
        // could not survive without the applies before it anyway; the
        // explicit sync makes the rule independent of that.)
        inner.sync()?;
        let range = (st.snapshot.index + 1, meta.index.min(st.last_index));
        let new_last = st.last_index.max(meta.index);
        inner.replace_log_prefix(&mut st, meta, range, new_last)
    }

    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let mut st = lock(&inner.log_state);
        let range = (st.snapshot.index + 1, st.last_index);
        inner.replace_log_prefix(&mut st, meta, range, meta.index)
    }
}
