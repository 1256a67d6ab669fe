//! [`MvccTree`]: etcd v3's MVCC state machine on one `sled::Tree`.
//!
//! The semantics live in [`crate::kv`] ([`kv::execute`], [`kv::read_range`]
//! over a [`MvccView`]); this module stores what they decide, reads it back
//! verified, and removes compacted history in bounded steps.
//! [`crate::kv::MemMvcc`] keeps the same spaces as maps and is the model
//! the tests check this store against.
//!
//! # Layout (one tree, every key in a slot)
//!
//! | key                                   | value (checksummed [`record`])    |
//! |---------------------------------------|-----------------------------------|
//! | `0x01 ‖ key`                          | the current [`KeyValue`]          |
//! | `0x02 ‖ escaped key ‖ rev BE ‖ sub BE` | `Option<KeyValue>` (`None` = tombstone) |
//! | `0x03 ‖ rev BE ‖ sub BE`              | [`RevEntry`]: the key and the kind of change |
//! | `0xFE 0x01`                           | current revision (`i64`; absent = 1) |
//! | `0xFE 0x02`                           | compact revision (`i64`; absent = 0) |
//! | `0xFE 0x03`                           | pruned-up-to: changes below it are physically removed (`i64`; absent = 0) |
//!
//! The key formats are in `mvcc_tree/keys.rs`; `0xFF…` is left to the
//! store that owns the tree (its applied index), so the tree can be a
//! node's key-value tree and a snapshot image of it carries the MVCC state
//! as it is. Every record's checksum covers its tree key, so a record
//! copied under another key fails verification.
//!
//! # Writing
//!
//! [`MvccTree::stage`] adds one [`Applied`] outcome to a caller's
//! `sled::Batch`, so the node commits it together with its applied index.
//! Outcomes are computed on a view of the committed tree: stage and
//! commit one outcome before executing the next. One thread writes
//! (stage/commit, [`MvccTree::compact_step`]); any thread may read.
//!
//! # Reading while a writer moves on
//!
//! sled has no snapshots, but a batch is atomic with respect to every
//! single read, and history at or below a revision never changes except
//! by physical compaction. A [`MvccTreeView`] reads at the revision it was
//! opened at (`R`):
//! - below `R`, from the history (`0x02`), which later writes only extend;
//! - at `R`, from the current records (`0x01`), the hot path. A current
//!   record is exact if its `mod_revision <= R` and the revision meta is
//!   still `R` after it was read (a later batch moves both at once); if
//!   not, the view finishes the read from the history.
//!
//! Physical compaction removes only history below a compact revision that
//! was committed before; [`MvccTree::range`], [`MvccTree::events`] and
//! [`MvccTree::hash_kv`] re-read the compact revision after reading and
//! refuse the answer if it moved past what they read.
//!
//! # Compaction
//!
//! A compaction moves the compact revision at once (in its batch);
//! [`MvccTree::compact_step`] then walks `0x03` from its oldest change up
//! to the compact revision `C`, and for each key changed there keeps, per
//! the rule of [`crate::kv::view`], every version ≥ `C` and the latest
//! version < `C` unless it is a tombstone; the `0x03` entries below `C`
//! go. So the disk stays bounded by the live keys plus the history since
//! the last compaction.
//!
//! # Watch catch-up
//!
//! [`MvccTree::events`], [`MvccTree::revision`] and
//! [`MvccTree::compact_revision`] are what `crate::node::observer`'s
//! `EventHistory` asks for; the node implements that trait over this type
//! (storage may not depend on node), mapping [`ExecError::Kv`] to its
//! `Kv` cause and [`ExecError::Store`] to its `Storage` cause.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::record;
use super::StorageError;
use crate::kv::{
    self, Applied, Command, Event, EventKind, ExecError, KeyRange, KeyValue, KvError, MvccView,
    RangeRequest, RangeResponse, Revisioned,
};

pub mod keys;
#[cfg(test)]
mod tests;

use keys::{
    by_revision_key, current_key, history_key, history_prefix, parse_change, parse_history_key,
    prefix_successor, slot_bounds, BY_REVISION, CURRENT, HISTORY, META_COMPACT, META_PRUNED,
    META_REVISION,
};

/// A stored (tree key, value) pair, not yet verified.
type RawRecord = (sled::IVec, sled::IVec);

/// Position of a change: (revision, sub-revision).
pub type ChangeId = (i64, i64);

/// One version of a key as stored: key, change, record (`None` = tombstone).
pub type Version = (Vec<u8>, ChangeId, Option<KeyValue>);

/// The value of a `0x03` (history by revision) record: which key a change
/// touched, and how.
///
/// Format: a checksummed record (see [`record`]) whose payload is, in
/// bincode 2 standard: `kind` as a varint variant index (0 `Put`,
/// 1 `Delete`), then `key` as a varint length and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevEntry {
    /// Put or delete.
    pub kind: EventKind,
    /// The key changed.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// etcd's MVCC store over one `sled::Tree` (see the module doc).
#[derive(Clone, Debug)]
pub struct MvccTree {
    tree: sled::Tree,
    /// The tree's name, for error messages.
    name: String,
}

/// A read of an [`MvccTree`] at the revision current when it was opened
/// (see the module doc): what [`kv::execute`] and [`kv::read_range`] run
/// over.
#[derive(Clone, Copy, Debug)]
pub struct MvccTreeView<'a> {
    store: &'a MvccTree,
    revision: i64,
    compact: i64,
}

impl MvccTree {
    /// The MVCC store in `tree` (an empty tree is a store at revision 1,
    /// never compacted).
    pub fn new(tree: sled::Tree) -> MvccTree {
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        MvccTree { tree, name }
    }

    /// The underlying tree (for the owner's own records and for copying).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The current revision (1 for a new store).
    pub fn revision(&self) -> Result<i64, StorageError> {
        Ok(self.meta(META_REVISION)?.unwrap_or(1))
    }

    /// The compact revision (0 if never compacted).
    pub fn compact_revision(&self) -> Result<i64, StorageError> {
        Ok(self.meta(META_COMPACT)?.unwrap_or(0))
    }

    /// The revision below which history is physically removed (0 before
    /// the first [`MvccTree::compact_step`]).
    pub fn pruned_revision(&self) -> Result<i64, StorageError> {
        Ok(self.meta(META_PRUNED)?.unwrap_or(0))
    }

    /// A view at the current revision.
    pub fn view(&self) -> Result<MvccTreeView<'_>, StorageError> {
        // Compact first: it moves only with or after the revision, so the
        // pair read this way is one the store has been in (or the compact
        // is older, which only refuses less — and reads re-check it).
        let compact = self.compact_revision()?;
        let revision = self.revision()?;
        Ok(MvccTreeView {
            store: self,
            revision,
            compact,
        })
    }

    /// Adds the writes of `applied` (an outcome computed on a view of this
    /// tree at its current revision) to `batch`: current records, history,
    /// the by-revision index, the revision and the compact revision. The
    /// caller commits the batch (with its own records); until then the
    /// store is unchanged. An outcome for another revision is refused
    /// ([`StorageError::Inconsistent`]).
    pub fn stage(&self, applied: &Applied, batch: &mut sled::Batch) -> Result<(), StorageError> {
        self.stage_on(applied, self.revision()?, batch)
    }

    /// [`MvccTree::stage`] for an outcome computed on a store at revision
    /// `current`, which may be ahead of the tree by outcomes staged
    /// earlier into the same (not yet committed) batch.
    pub fn stage_on(
        &self,
        applied: &Applied,
        current: i64,
        batch: &mut sled::Batch,
    ) -> Result<(), StorageError> {
        if let Some(rev) = applied.new_revision() {
            if rev != current.saturating_add(1) {
                return Err(StorageError::Inconsistent(format!(
                    "tree `{}`: outcome for revision {rev} staged on a store at revision {current}",
                    self.name
                )));
            }
            for (sub, event) in applied.events.iter().enumerate() {
                let sub = sub as i64;
                let key = &event.kv.key;
                let version = match event.kind {
                    EventKind::Put => {
                        let ck = current_key(key);
                        let value = encode(&ck, &event.kv)?;
                        batch.insert(ck, value);
                        Some(&event.kv)
                    }
                    EventKind::Delete => {
                        batch.remove(current_key(key));
                        None
                    }
                };
                let hk = history_key(key, rev, sub);
                let value = encode(&hk, &version)?;
                batch.insert(hk, value);
                let bk = by_revision_key(rev, sub);
                let entry = RevEntry {
                    kind: event.kind,
                    key: key.clone(),
                };
                let value = encode(&bk, &entry)?;
                batch.insert(bk, value);
            }
            batch.insert(META_REVISION, encode(META_REVISION, &rev)?);
        }
        if let Some(c) = applied.compact_revision {
            batch.insert(META_COMPACT, encode(META_COMPACT, &c)?);
        }
        Ok(())
    }

    /// The tree keys [`MvccTree::stage`] writes or removes for `applied`
    /// (a snapshot being read records their values before they change).
    pub fn staged_keys(applied: &Applied) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        if let Some(rev) = applied.new_revision() {
            for (sub, event) in applied.events.iter().enumerate() {
                let sub = sub as i64;
                keys.push(current_key(&event.kv.key));
                keys.push(history_key(&event.kv.key, rev, sub));
                keys.push(by_revision_key(rev, sub));
            }
            keys.push(META_REVISION.to_vec());
        }
        if applied.compact_revision.is_some() {
            keys.push(META_COMPACT.to_vec());
        }
        keys
    }

    /// Executes `cmd` on the current state and commits its outcome as one
    /// batch (tests and tools; a node stages into its own batch instead).
    /// Physical compaction is left to [`MvccTree::compact_step`].
    pub fn apply(&self, cmd: &Command) -> Result<Applied, StorageError> {
        let applied = kv::execute(&self.view()?, cmd)?;
        let mut batch = sled::Batch::default();
        self.stage(&applied, &mut batch)?;
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.sled_err(b"batch", e))?;
        Ok(applied)
    }

    /// Serves a range read at the current revision (see
    /// [`kv::read_range`]).
    pub fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<Revisioned<RangeResponse>, ExecError<StorageError>> {
        let view = self.view().map_err(ExecError::Store)?;
        let answer = kv::read_range(&view, req)?;
        if req.revision > 0 {
            self.still_readable(req.revision)?;
        }
        Ok(answer)
    }

    /// The events of revisions `from_revision..` on keys of `range`, in
    /// order, `prev_kv` filled; the contract of
    /// [`crate::kv::MemMvcc::events`]: stops at the end of the revision in
    /// which the count reached `limit` (a revision is never split), a start
    /// below the compact revision is [`KvError::Compacted`].
    pub fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, ExecError<StorageError>> {
        let view = self.view().map_err(ExecError::Store)?;
        if from_revision < view.compact {
            return Err(KvError::Compacted {
                compact_revision: view.compact,
            }
            .into());
        }
        let out = self
            .read_events(&view, from_revision, range, limit)
            .map_err(ExecError::Store)?;
        self.still_readable(from_revision)?;
        Ok(out)
    }

    /// The store's part of [`MvccTree::events`], at the view's revision.
    fn read_events(
        &self,
        view: &MvccTreeView<'_>,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        let mut out: Vec<Event> = Vec::new();
        if from_revision > view.revision {
            return Ok(out);
        }
        // Changes of revisions after the view's are not read: a batch
        // being committed may be half visible to an iterator.
        let start = by_revision_key(from_revision.max(0), 0);
        let end = by_revision_key(view.revision.saturating_add(1), 0);
        for item in self.tree.range(start..end) {
            let (k, v) = item.map_err(|e| self.sled_err(b"\x03", e))?;
            let (rev, sub) = k
                .get(1..)
                .and_then(parse_change)
                .ok_or_else(|| self.corrupt(&k, "malformed by-revision key"))?;
            if out.len() >= limit && out.last().is_some_and(|e| e.kv.mod_revision != rev) {
                break;
            }
            let entry: RevEntry = self.decode(&k, &v)?;
            if !range.contains(&entry.key) {
                continue;
            }
            let kv = match entry.kind {
                EventKind::Put => {
                    let hk = history_key(&entry.key, rev, sub);
                    let raw = self
                        .get_raw(&hk)?
                        .ok_or_else(|| self.corrupt(&k, "its put has no history record"))?;
                    let version: Option<KeyValue> = self.decode(&hk, &raw)?;
                    version.ok_or_else(|| self.corrupt(&k, "its put is a tombstone in history"))?
                }
                EventKind::Delete => Event::delete_marker(entry.key.clone(), rev),
            };
            let prev_kv = view.history_get(&entry.key, rev.saturating_sub(1))?;
            out.push(Event {
                kind: entry.kind,
                kv,
                prev_kv,
            });
        }
        Ok(out)
    }

    /// Removes history below the compact revision: at most `budget` changes
    /// of the `0x03` index, oldest first, each with the versions of its key
    /// the compaction rule of [`crate::kv::view`] lets go, in one batch.
    /// Returns whether more is left to remove.
    pub fn compact_step(&self, budget: usize) -> Result<bool, StorageError> {
        let compact = self.compact_revision()?;
        let pruned = self.pruned_revision()?;
        let mut batch = sled::Batch::default();
        let mut pruned_keys = BTreeSet::new();
        let (mut taken, mut more, mut last_rev) = (0usize, false, None);
        let end = by_revision_key(compact.max(0), 0);
        for item in self.tree.range(vec![BY_REVISION]..end) {
            let (k, v) = item.map_err(|e| self.sled_err(b"\x03", e))?;
            if taken == budget {
                more = true;
                break;
            }
            let (rev, _) = k
                .get(1..)
                .and_then(parse_change)
                .ok_or_else(|| self.corrupt(&k, "malformed by-revision key"))?;
            let entry: RevEntry = self.decode(&k, &v)?;
            if pruned_keys.insert(entry.key.clone()) {
                self.prune_key(&entry.key, compact, &mut batch)?;
            }
            batch.remove(k);
            taken += 1;
            last_rev = Some(rev);
        }
        // Every change below the new mark has been processed: all of them
        // below the compact revision when none is left, else those below
        // the last one processed (changes of one revision may straddle).
        let mark = match (more, last_rev) {
            (false, _) => compact,
            (true, Some(rev)) => rev,
            (true, None) => pruned,
        };
        if taken == 0 && mark <= pruned {
            return Ok(more);
        }
        if mark > pruned {
            batch.insert(META_PRUNED, encode(META_PRUNED, &mark)?);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.sled_err(b"batch", e))?;
        Ok(more)
    }

    /// Adds to `batch` the removal of `key`'s versions below `compact`,
    /// except the latest one if it is a put.
    fn prune_key(
        &self,
        key: &[u8],
        compact: i64,
        batch: &mut sled::Batch,
    ) -> Result<(), StorageError> {
        let lo = history_prefix(key);
        let hi = history_key(key, compact, 0);
        let mut below = Vec::new();
        for item in self.tree.range(lo..hi) {
            below.push(item.map_err(|e| self.sled_err(key, e))?);
        }
        if let Some(((latest_key, latest), older)) = below.split_last() {
            for (k, _) in older {
                batch.remove(k.clone());
            }
            let version: Option<KeyValue> = self.decode(latest_key, latest)?;
            if version.is_none() {
                batch.remove(latest_key.clone());
            }
        }
        Ok(())
    }

    /// A crc32 over the history every replica keeps for revisions up to
    /// `revision` (0 = current): per key, its versions in
    /// `compact..=revision` and its latest version below the compact
    /// revision unless a tombstone — exactly what physical compaction
    /// leaves, so the hash does not depend on how far it has run. Each
    /// version contributes its tree key and its stored record. etcd's
    /// HashKV.
    pub fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        let view = self.view().map_err(ExecError::Store)?;
        let rev = if revision <= 0 {
            view.revision
        } else {
            revision
        };
        if rev > view.revision {
            return Err(KvError::FutureRevision.into());
        }
        if rev < view.compact {
            return Err(KvError::Compacted {
                compact_revision: view.compact,
            }
            .into());
        }
        let hash = self
            .hash_versions(view.compact, rev)
            .map_err(ExecError::Store)?;
        self.still_readable(rev)?;
        Ok(hash)
    }

    /// The store's part of [`MvccTree::hash_kv`].
    fn hash_versions(&self, compact: i64, rev: i64) -> Result<u32, StorageError> {
        let mut hasher = crc32fast::Hasher::new();
        // The latest version below the compact revision of the key being
        // walked: hashed (unless a tombstone) once the key's versions below
        // the compact revision are behind.
        let mut pending: Option<(sled::IVec, sled::IVec, usize)> = None;
        for item in self.tree.range(vec![HISTORY]..vec![HISTORY + 1]) {
            let (k, v) = item.map_err(|e| self.sled_err(b"\x02", e))?;
            let h =
                parse_history_key(&k).ok_or_else(|| self.corrupt(&k, "malformed history key"))?;
            if pending
                .as_ref()
                .is_some_and(|(pk, _, plen)| pk[..*plen] != k[..h.prefix_len])
            {
                self.hash_kept(pending.take(), &mut hasher)?;
            }
            if h.rev < compact {
                pending = Some((k, v, h.prefix_len));
            } else {
                self.hash_kept(pending.take(), &mut hasher)?;
                if h.rev <= rev {
                    // Verify what is hashed.
                    let _: Option<KeyValue> = self.decode(&k, &v)?;
                    hasher.update(&k);
                    hasher.update(&v);
                }
            }
        }
        self.hash_kept(pending.take(), &mut hasher)?;
        Ok(hasher.finalize())
    }

    /// Hashes a key's latest version below the compact revision unless it
    /// is a tombstone (what compaction keeps of the key's old history).
    fn hash_kept(
        &self,
        latest: Option<(sled::IVec, sled::IVec, usize)>,
        hasher: &mut crc32fast::Hasher,
    ) -> Result<(), StorageError> {
        if let Some((k, v, _)) = latest {
            let version: Option<KeyValue> = self.decode(&k, &v)?;
            if version.is_some() {
                hasher.update(&k);
                hasher.update(&v);
            }
        }
        Ok(())
    }

    /// Every stored version, by key then change (for comparing replicas
    /// and checking compaction against [`crate::kv::MemMvcc::versions`]).
    pub fn versions(&self) -> Result<Vec<Version>, StorageError> {
        let mut out = Vec::new();
        for item in self.tree.range(vec![HISTORY]..vec![HISTORY + 1]) {
            let (k, v) = item.map_err(|e| self.sled_err(b"\x02", e))?;
            let h =
                parse_history_key(&k).ok_or_else(|| self.corrupt(&k, "malformed history key"))?;
            let version: Option<KeyValue> = self.decode(&k, &v)?;
            out.push((h.key, (h.rev, h.sub), version));
        }
        Ok(out)
    }

    /// Number of changes in the by-revision index (those not yet removed
    /// by physical compaction).
    pub fn log_len(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for item in self.tree.range(vec![BY_REVISION]..vec![BY_REVISION + 1]) {
            item.map_err(|e| self.sled_err(b"\x03", e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Fails with [`KvError::Compacted`] if the compact revision has moved
    /// above `rev` (physical compaction may have removed what was read).
    fn still_readable(&self, rev: i64) -> Result<(), ExecError<StorageError>> {
        let compact = self.compact_revision().map_err(ExecError::Store)?;
        if rev < compact {
            return Err(KvError::Compacted {
                compact_revision: compact,
            }
            .into());
        }
        Ok(())
    }

    fn meta(&self, key: &[u8]) -> Result<Option<i64>, StorageError> {
        self.get_raw(key)?
            .map(|raw| self.decode(key, &raw))
            .transpose()
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<sled::IVec>, StorageError> {
        self.tree.get(key).map_err(|e| self.sled_err(key, e))
    }

    /// Verifies and decodes the record stored under `key`.
    fn decode<T: DeserializeOwned>(&self, key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
        record::decode(key, bytes).map_err(|e| e.into_storage(&self.name, keys::describe(key)))
    }

    /// Verifies and decodes a current record, whose key must be its own.
    fn decode_current(&self, key: &[u8], bytes: &[u8]) -> Result<KeyValue, StorageError> {
        let kv: KeyValue = self.decode(key, bytes)?;
        if key.get(1..) != Some(kv.key.as_slice()) {
            return Err(self.corrupt(key, "current record holds another key"));
        }
        Ok(kv)
    }

    fn corrupt(&self, key: &[u8], reason: impl Display) -> StorageError {
        StorageError::Corruption {
            tree: self.name.clone(),
            key: keys::describe(key),
            reason: reason.to_string(),
        }
    }

    fn sled_err(&self, key: &[u8], e: sled::Error) -> StorageError {
        match e {
            sled::Error::Corruption { at, .. } => StorageError::Corruption {
                tree: self.name.clone(),
                key: keys::describe(key),
                reason: format!("sled found a damaged page at {at:?}"),
            },
            sled::Error::Io(io) => StorageError::io(format!("tree `{}`", self.name), io),
            other => StorageError::Sled {
                context: format!("tree `{}`", self.name),
                source: Arc::new(other),
            },
        }
    }
}

/// Encodes a record stored under `key`.
fn encode<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<Vec<u8>, StorageError> {
    record::encode(key, value).map_err(StorageError::Encode)
}

impl MvccTreeView<'_> {
    /// The key's record at `rev` from the history: its latest version at or
    /// below `rev`.
    fn history_get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StorageError> {
        if rev < 0 {
            return Ok(None);
        }
        let lo = history_prefix(key);
        let hi = history_key(key, rev, i64::MAX);
        match self.store.tree.range(lo..=hi).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.store.sled_err(key, e))?;
                self.store.decode(&k, &v)
            }
        }
    }

    /// Whether no batch has been committed since the view was opened.
    fn unchanged(&self) -> Result<bool, StorageError> {
        Ok(self.store.revision()? == self.revision)
    }

    /// The records of `range` at the view's revision, from the current
    /// records; finishes from the history if a writer moved on.
    fn scan_current(
        &self,
        range: KeyRange<'_>,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        if let KeyRange::Single(key) = range {
            if let Some(kv) = self.get(key, self.revision)? {
                let _ = visit(kv);
            }
            return Ok(());
        }
        let Some((lo, hi)) = slot_bounds(range, CURRENT, current_key) else {
            return Ok(());
        };
        let mut last: Option<Vec<u8>> = None;
        for item in self.store.tree.range(lo..hi) {
            let (k, v) = item.map_err(|e| self.store.sled_err(b"\x01", e))?;
            let kv = self.store.decode_current(&k, &v)?;
            // Checked after the read: a batch committed before it shows.
            if kv.mod_revision > self.revision || !self.unchanged()? {
                return self.scan_history(range, self.revision, last.as_deref(), visit);
            }
            last = Some(kv.key.clone());
            if visit(kv).is_break() {
                return Ok(());
            }
        }
        if !self.unchanged()? {
            // Keys after the last one visited may have been deleted.
            return self.scan_history(range, self.revision, last.as_deref(), visit);
        }
        Ok(())
    }

    /// The records of `range` at `rev` from the history, skipping keys up
    /// to `after`.
    fn scan_history(
        &self,
        range: KeyRange<'_>,
        rev: i64,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let Some((mut lo, hi)) = slot_bounds(range, HISTORY, history_prefix) else {
            return Ok(());
        };
        if let Some(next) = after.and_then(|a| prefix_successor(&history_prefix(a))) {
            lo = lo.max(next);
        }
        if lo >= hi {
            return Ok(());
        }
        // The latest version ≤ rev of the key being walked.
        let mut group: Option<(Vec<u8>, Option<RawRecord>)> = None;
        let emit = |candidate: Option<RawRecord>,
                    visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>|
         -> Result<ControlFlow<()>, StorageError> {
            if let Some((k, v)) = candidate {
                let version: Option<KeyValue> = self.store.decode(&k, &v)?;
                if let Some(kv) = version {
                    return Ok(visit(kv));
                }
            }
            Ok(ControlFlow::Continue(()))
        };
        for item in self.store.tree.range(lo..hi) {
            let (k, v) = item.map_err(|e| self.store.sled_err(b"\x02", e))?;
            let h = parse_history_key(&k)
                .ok_or_else(|| self.store.corrupt(&k, "malformed history key"))?;
            let prefix = &k[..h.prefix_len];
            if group.as_ref().is_none_or(|(p, _)| p.as_slice() != prefix) {
                if let Some((_, candidate)) = group.take() {
                    if emit(candidate, visit)?.is_break() {
                        return Ok(());
                    }
                }
                group = Some((prefix.to_vec(), None));
            }
            if h.rev <= rev && range.contains(&h.key) {
                if let Some((_, candidate)) = group.as_mut() {
                    *candidate = Some((k, v));
                }
            }
        }
        if let Some((_, candidate)) = group {
            let _ = emit(candidate, visit)?;
        }
        Ok(())
    }
}

impl MvccView for MvccTreeView<'_> {
    type Error = StorageError;

    fn revision(&self) -> i64 {
        self.revision
    }

    fn compact_revision(&self) -> i64 {
        self.compact
    }

    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StorageError> {
        if rev >= self.revision {
            let ck = current_key(key);
            let found = match self.store.get_raw(&ck)? {
                Some(raw) => Some(self.store.decode_current(&ck, &raw)?),
                None => None,
            };
            match found {
                // Not changed since: a later put would have moved
                // `mod_revision`, a later delete removed the record.
                Some(kv) if kv.mod_revision <= self.revision => return Ok(Some(kv)),
                None if self.unchanged()? => return Ok(None),
                _ => {}
            }
        }
        self.history_get(key, rev.min(self.revision))
    }

    fn scan(
        &self,
        range: KeyRange<'_>,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        if rev >= self.revision {
            self.scan_current(range, visit)
        } else {
            self.scan_history(range, rev, None, visit)
        }
    }
}
