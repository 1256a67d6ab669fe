//! The state-machine half of [`SledStore`]: the active key-value tree as
//! an [`MvccTree`] (etcd's MVCC store, see `super::super::mvcc_tree`) plus
//! the applied index, and [`StateMachine`].
//!
//! # One batch per apply
//!
//! `apply` runs [`kv::execute`] for each command over a [`BatchView`]: the
//! committed tree plus the current records the batch has changed so far,
//! so a burst of entries is still one sled batch (with the applied index)
//! and one write. A command that reads the past (a transaction's range at
//! an explicit revision) while the batch holds changes cannot be served by
//! that view; the batch is committed first and the command executed on the
//! fresh tree.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::Ordering;

use super::*;
use crate::kv::{self, Command, ExecError, KeyRange, KeyValue, KvError, MvccView};
use crate::storage::image::ImageItem;
use crate::storage::mvcc_tree::{MvccTree, MvccTreeView};
use crate::storage::EntryOutcome;

impl Inner {
    /// The active key-value tree and its name. Callers that must not see
    /// an install switch trees under them hold the apply lock (writers) or
    /// use [`Inner::kv`] directly (readers).
    pub(super) fn active_kv(&self) -> (Tree, &'static str) {
        let slots = read(&self.kv);
        (slots.active().clone(), slots.active_name())
    }

    pub(super) fn read_applied(&self) -> Result<SnapshotMeta, StorageError> {
        let (tree, name) = self.active_kv();
        read_applied_in(self, &tree, name)
    }

    /// Verifies the records of key-value tree `tree` (named `name`) that
    /// come after key `after` (from the first one when `None`), at most
    /// `limit` of them: checksum, UTF-8 key, decodable record, and no
    /// reserved key but the applied index. Returns the last key checked
    /// when it stopped at `limit`, `None` once it reached the end, so that
    /// a caller can walk a large tree in chunks without holding an
    /// iterator (see [`KvCheck`]).
    pub(super) fn verify_kv(
        &self,
        tree: &Tree,
        name: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<sled::IVec>, StorageError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.verify_kv_range(tree, name, start, None, limit)
    }

    /// [`Self::verify_kv`] from `start`, for the keys before `until` (to
    /// the end when `None`).
    pub(super) fn verify_kv_range(
        &self,
        tree: &Tree,
        name: &str,
        start: Bound<&[u8]>,
        until: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<sled::IVec>, StorageError> {
        let start = start.map(<[u8]>::to_vec);
        let end = until.map_or(Bound::Unbounded, |u| Bound::Excluded(u.to_vec()));
        let mut checked = 0usize;
        for kv in tree.range::<Vec<u8>, _>((start, end)) {
            let (k, v) = kv.map_err(|e| self.sled_err(name, "scan", e))?;
            if k.first() == Some(&0xFF) {
                if &*k != APPLIED_KEY {
                    return Err(StorageError::Corruption {
                        tree: name.into(),
                        key: describe_key(name, &k),
                        reason: "unknown reserved key".into(),
                    });
                }
            } else {
                // The checksum (over key and payload) is what detects
                // damage; decoding every value as well doubled the walk's
                // time at 1M keys and catches nothing the crc misses, since
                // only this code writes the records.
                record::verify(&k, &v).map_err(|e| e.into_storage(name, describe_key(name, &k)))?;
            }
            checked += 1;
            if checked >= limit {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}

/// The applied index recorded in `tree` (default when none).
pub(super) fn read_applied_in(
    inner: &Inner,
    tree: &Tree,
    name: &str,
) -> Result<SnapshotMeta, StorageError> {
    match tree
        .get(APPLIED_KEY)
        .map_err(|e| inner.sled_err(name, &describe_key(name, APPLIED_KEY), e))?
    {
        None => Ok(SnapshotMeta::default()),
        Some(b) => record::decode(APPLIED_KEY, &b)
            .map_err(|e| e.into_storage(name, describe_key(name, APPLIED_KEY))),
    }
}

/// A record of the key-value tree as an image item, verified: a record
/// slot the tree knows (not the applied index, which the image's header
/// carries) and a checksum that matches its key.
pub(in crate::storage) fn raw_item(
    name: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<ImageItem, StorageError> {
    if key.first() == Some(&0xFF) || key.is_empty() {
        return Err(StorageError::Corruption {
            tree: name.into(),
            key: describe_key(name, key),
            reason: "not a record of the key-value state".into(),
        });
    }
    record::verify(key, bytes).map_err(|e| e.into_storage(name, describe_key(name, key)))?;
    Ok(ImageItem {
        key: key.to_vec(),
        value: bytes.to_vec(),
    })
}

/// Why a [`BatchView`] could not answer.
#[derive(Debug)]
enum BatchViewError {
    /// The store failed.
    Store(StorageError),
    /// A read of the past while the batch holds changes: commit the batch
    /// and execute again.
    NeedsFlush,
}

/// The committed tree (at `base_revision`) plus the current records the
/// uncommitted batch changed (see the module doc).
struct BatchView<'a> {
    base: MvccTreeView<'a>,
    base_revision: i64,
    revision: i64,
    compact: i64,
    /// Key → its current record after the batch (`None`: deleted).
    pending: &'a BTreeMap<Vec<u8>, Option<KeyValue>>,
}

impl MvccView for BatchView<'_> {
    type Error = BatchViewError;

    fn revision(&self) -> i64 {
        self.revision
    }

    fn compact_revision(&self) -> i64 {
        self.compact
    }

    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, BatchViewError> {
        if self.pending.is_empty() {
            return self.base.get(key, rev).map_err(BatchViewError::Store);
        }
        if rev < self.revision {
            return Err(BatchViewError::NeedsFlush);
        }
        match self.pending.get(key) {
            Some(record) => Ok(record.clone()),
            None => self
                .base
                .get(key, self.base_revision)
                .map_err(BatchViewError::Store),
        }
    }

    fn scan(
        &self,
        range: KeyRange<'_>,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), BatchViewError> {
        if self.pending.is_empty() {
            return self
                .base
                .scan(range, rev, visit)
                .map_err(BatchViewError::Store);
        }
        if rev < self.revision {
            return Err(BatchViewError::NeedsFlush);
        }
        let mut committed = Vec::new();
        self.base
            .scan(range, self.base_revision, &mut |kv| {
                committed.push(kv);
                ControlFlow::Continue(())
            })
            .map_err(BatchViewError::Store)?;
        let changed: Vec<(&Vec<u8>, &Option<KeyValue>)> = self
            .pending
            .iter()
            .filter(|(k, _)| range.contains(k))
            .collect();
        // Merge by key: a changed key's new record (or nothing) replaces
        // the committed one.
        let (mut i, mut j) = (0, 0);
        loop {
            let next = match (committed.get(i), changed.get(j)) {
                (None, None) => return Ok(()),
                (Some(c), Some((k, _))) if c.key < **k => {
                    i += 1;
                    Some(c.clone())
                }
                (Some(c), Some((k, record))) => {
                    if c.key == **k {
                        i += 1;
                    }
                    j += 1;
                    (*record).clone()
                }
                (Some(c), None) => {
                    i += 1;
                    Some(c.clone())
                }
                (None, Some((_, record))) => {
                    j += 1;
                    (*record).clone()
                }
            };
            if let Some(kv) = next {
                if visit(kv).is_break() {
                    return Ok(());
                }
            }
        }
    }
}

/// Executes `cmd` over the batch view; `None` when the batch must be
/// committed first.
fn execute_in_batch(
    view: &BatchView<'_>,
    cmd: &Command,
) -> Result<Option<kv::Applied>, StorageError> {
    match kv::execute(view, cmd) {
        Ok(applied) => Ok(Some(applied)),
        Err(BatchViewError::NeedsFlush) => Ok(None),
        Err(BatchViewError::Store(e)) => Err(e),
    }
}

impl SledStore {
    /// The active key-value tree as an MVCC store.
    fn mvcc(&self) -> MvccTree {
        let slots = read(&self.inner.kv);
        MvccTree::new(slots.active().clone())
    }
}

/// The outcome of an entry whose command does not decode.
fn malformed(why: impl std::fmt::Display) -> kv::Applied {
    kv::Applied {
        answer: Err(KvError::MalformedCommand(why.to_string())),
        events: Vec::new(),
        compact_revision: None,
    }
}

impl StateMachine for SledStore {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index.load(Ordering::Acquire)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError> {
        let inner = &*self.inner;
        let _g = write_lock(&inner.apply_lock);
        // Stable while the apply lock is held: installs take it too.
        let (tree, name) = inner.active_kv();
        let mvcc = MvccTree::new(tree.clone());
        // Snapshot sessions in progress: each modified record's pre-image
        // goes into their undo maps before the batch reaches sled.
        let sessions: Vec<Arc<snapshot::SessionShared>> = lock(&inner.sessions)
            .iter()
            .filter(|s| !s.is_aborted())
            .cloned()
            .collect();
        let mut applied = inner.applied_meta();
        // Refuse a gap before writing anything (a mid-batch commit below
        // must never leave half of a refused batch applied).
        let mut expect = applied.index;
        for e in entries {
            if e.index <= expect {
                continue;
            }
            if e.index != expect + 1 {
                return Err(StorageError::Inconsistent(format!(
                    "cannot apply entry {}: the state machine has applied only up to {expect}",
                    e.index
                )));
            }
            expect = e.index;
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut batch = Batch::default();
        let mut pending: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let mut base_revision = mvcc.revision()?;
        let mut revision = base_revision;
        let mut compact = mvcc.compact_revision()?;
        let mut buf = Vec::with_capacity(128);
        let mut batch_applied = applied;
        // The committed tree does not change during the batch except at a
        // mid-batch commit (below): one view serves every entry, instead of
        // two meta reads from sled per entry.
        let mut base = mvcc.view()?;
        let commit = |batch: Batch, upto: SnapshotMeta, buf: &mut Vec<u8>| {
            let mut batch = batch;
            record::encode_into(APPLIED_KEY, &upto, buf).map_err(StorageError::Encode)?;
            batch.insert(APPLIED_KEY, buf.as_slice());
            inner.healthy()?;
            let written = tree
                .apply_batch(batch)
                .map_err(|e| inner.sled_err(name, "apply batch", e));
            inner.fail(written)?;
            inner.applied_term.store(upto.term, Ordering::Release);
            inner.applied_index.store(upto.index, Ordering::Release);
            Ok::<(), StorageError>(())
        };
        for e in entries {
            if e.index <= applied.index {
                results.push(EntryOutcome::Noop);
                continue;
            }
            // What a commit before this entry's outcome may record.
            let before = applied;
            applied = SnapshotMeta {
                index: e.index,
                term: e.term,
            };
            let cmd = match &e.payload {
                EntryPayload::Noop => {
                    batch_applied = applied;
                    results.push(EntryOutcome::Noop);
                    continue;
                }
                EntryPayload::Command(bytes) => Command::decode(bytes),
            };
            let outcome = match cmd {
                Err(why) => malformed(why),
                Ok(cmd) => {
                    let view = BatchView {
                        base,
                        base_revision,
                        revision,
                        compact,
                        pending: &pending,
                    };
                    match execute_in_batch(&view, &cmd)? {
                        Some(outcome) => outcome,
                        None => {
                            // Commit what the batch holds, then run the
                            // command on the tree as it then is.
                            commit(std::mem::take(&mut batch), before, &mut buf)?;
                            pending.clear();
                            base_revision = revision;
                            base = mvcc.view()?;
                            let view = BatchView {
                                base,
                                base_revision,
                                revision,
                                compact,
                                pending: &pending,
                            };
                            execute_in_batch(&view, &cmd)?.ok_or_else(|| {
                                StorageError::Inconsistent(
                                    "a command could not run on a committed tree".into(),
                                )
                            })?
                        }
                    }
                }
            };
            if !sessions.is_empty() {
                for key in MvccTree::staged_keys(&outcome) {
                    snapshot::record_pre_images(inner, &sessions, &tree, name, &key)?;
                }
            }
            mvcc.stage_on(&outcome, revision, &mut batch)?;
            for event in &outcome.events {
                // A large value may become a sled blob file, which the
                // next sync must cover.
                inner
                    .durability
                    .note_record(event.kv.key.len() + event.kv.value.len() + 64);
                let record = match event.kind {
                    kv::EventKind::Put => Some(event.kv.clone()),
                    kv::EventKind::Delete => None,
                };
                pending.insert(event.kv.key.clone(), record);
            }
            if let Some(rev) = outcome.new_revision() {
                revision = rev;
            }
            if let Some(c) = outcome.compact_revision {
                compact = c;
            }
            batch_applied = applied;
            results.push(EntryOutcome::Command(outcome));
        }
        if batch_applied.index != inner.applied_index.load(Ordering::Acquire) {
            commit(batch, batch_applied, &mut buf)?;
        }
        Ok(results)
    }

    fn range(
        &self,
        req: &kv::RangeRequest,
    ) -> Result<kv::Revisioned<kv::RangeResponse>, ExecError<StorageError>> {
        self.mvcc().range(req)
    }

    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<kv::Event>, ExecError<StorageError>> {
        self.mvcc().events(from_revision, range, limit)
    }

    fn revision(&self) -> Result<i64, StorageError> {
        self.mvcc().revision()
    }

    fn compact_revision(&self) -> Result<i64, StorageError> {
        self.mvcc().compact_revision()
    }

    fn compact_step(&mut self, budget: usize) -> Result<bool, StorageError> {
        let inner = &*self.inner;
        let _g = write_lock(&inner.apply_lock);
        // A snapshot being read must see the history as it was when it
        // began (physical compaction deletes records without telling its
        // undo map), so the removal waits until no session is open.
        if lock(&inner.sessions).iter().any(|s| !s.is_aborted()) {
            return Ok(false);
        }
        inner.healthy()?;
        let more = self.mvcc().compact_step(budget);
        let more = inner.fail(more)?;
        Ok(!more)
    }

    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        self.mvcc().hash_kv(revision)
    }

    /// The whole image in memory, built by a [`SnapshotSession`] (so it
    /// does not block `apply` either). The node streams images instead.
    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let session = self.begin_snapshot()?;
        let meta = session.meta();
        let mut image = Vec::new();
        for chunk in session.chunks(IMAGE_CHUNK_BYTES) {
            image.extend_from_slice(&chunk?.data);
        }
        Ok((meta, image))
    }

    /// Stages the image in the inactive tree, then makes that tree the
    /// state machine (one durable pointer flip). The log is not touched:
    /// see [`SledStore::install_snapshot`] for the atomic install with the
    /// log reset.
    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let staged = self.stage_whole_image(meta, data)?;
        self.switch_state_machine(staged)
    }
}
