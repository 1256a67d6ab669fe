//! [`MemMvcc`]: a complete in-memory MVCC store.
//!
//! It is the in-memory state machine of the simulation and the reference
//! model the sled state machine is checked against. It keeps exactly what
//! the design's sled layout keeps, as maps:
//! - the current records (`0x01` space);
//! - every key's versions by `(revision, sub)`, tombstones included
//!   (`0x02` space);
//! - the revision log: which key each `(revision, sub)` changed (`0x03`
//!   space);
//! - revision and compact revision (meta).
//!
//! Commands run through [`crate::kv::execute`] like on every other store;
//! [`MemMvcc::commit`] persists the outcome. Compaction is logical at once
//! (the compact revision moves in `commit`) and physical afterwards, in
//! steps ([`MemMvcc::compact_physically`]) that walk the revision log from
//! its oldest entry, as the sled store does; reads at or above the compact
//! revision are the same before, during and after the physical part.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::ControlFlow;

use super::command::Command;
use super::error::KvError;
use super::exec::{self, Applied, ExecError};
use super::range::KeyRange;
use super::request::RangeRequest;
use super::response::RangeResponse;
use super::types::{Event, EventKind, KeyValue, Revisioned};
use super::view::MvccView;

/// Position of a change: (revision, sub-revision).
pub type ChangeId = (i64, i64);

/// An in-memory MVCC store (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemMvcc {
    revision: i64,
    compact_revision: i64,
    current: BTreeMap<Vec<u8>, KeyValue>,
    /// key → change → record, or `None` for a tombstone.
    history: BTreeMap<Vec<u8>, BTreeMap<ChangeId, Option<KeyValue>>>,
    /// change → the key it changed and how.
    log: BTreeMap<ChangeId, (Vec<u8>, EventKind)>,
}

/// One record of a [`MemMvcc`]'s serialised form ([`MemMvcc::records`]):
/// what an in-memory snapshot image carries.
///
/// Format: bincode 2 standard of this enum: the variant index as a varint
/// (0 `Meta`, 1 `Version`), then the fields in order (integers as zigzag
/// varints, bytes as a varint length and the bytes, the record as an
/// option of [`KeyValue`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MvccRecord {
    /// Revision and compact revision.
    Meta {
        /// The current revision.
        revision: i64,
        /// The compact revision.
        compact_revision: i64,
    },
    /// One stored version of a key (`None` = tombstone).
    Version {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The change that wrote it.
        change: ChangeId,
        /// The record, or `None` for a tombstone.
        record: Option<KeyValue>,
    },
}

/// [`MemMvcc::from_records`] was given records that do not form a store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an MVCC store image: {0}")]
pub struct BadRecords(pub String);

/// [`MemMvcc::commit`] was given an outcome computed at another revision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("outcome for revision {found} committed to a store at revision {store}")]
pub struct StaleOutcome {
    /// The store's revision.
    pub store: i64,
    /// The revision the outcome would create.
    pub found: i64,
}

impl Default for MemMvcc {
    fn default() -> Self {
        MemMvcc::new()
    }
}

impl MemMvcc {
    /// An empty store at revision 1, never compacted.
    pub fn new() -> MemMvcc {
        MemMvcc {
            revision: 1,
            compact_revision: 0,
            current: BTreeMap::new(),
            history: BTreeMap::new(),
            log: BTreeMap::new(),
        }
    }

    /// Executes and commits `cmd`, and finishes any physical compaction:
    /// the whole apply step of an in-memory state machine.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        let applied = self.execute(cmd);
        self.commit(&applied)
            .expect("an outcome executed on this store matches its revision");
        self.compact_physically(usize::MAX);
        applied
    }

    /// Computes what `cmd` does to this store, without changing it.
    pub fn execute(&self, cmd: &Command) -> Applied {
        match exec::execute(self, cmd) {
            Ok(applied) => applied,
            Err(never) => match never {},
        }
    }

    /// Persists an outcome of [`MemMvcc::execute`] on this store's current
    /// state: its changes as the next revision, and a new compact revision
    /// (the physical part is left to [`MemMvcc::compact_physically`]).
    pub fn commit(&mut self, applied: &Applied) -> Result<(), StaleOutcome> {
        if let Some(rev) = applied.new_revision() {
            if rev != self.revision + 1 {
                return Err(StaleOutcome {
                    store: self.revision,
                    found: rev,
                });
            }
            for (sub, event) in applied.events.iter().enumerate() {
                let id = (rev, sub as i64);
                let key = &event.kv.key;
                let record = match event.kind {
                    EventKind::Put => {
                        self.current.insert(key.clone(), event.kv.clone());
                        Some(event.kv.clone())
                    }
                    EventKind::Delete => {
                        self.current.remove(key);
                        None
                    }
                };
                self.history
                    .entry(key.clone())
                    .or_default()
                    .insert(id, record);
                self.log.insert(id, (key.clone(), event.kind));
            }
            self.revision = rev;
        }
        if let Some(c) = applied.compact_revision {
            self.compact_revision = c;
        }
        Ok(())
    }

    /// Removes history below the compact revision, at most `budget` log
    /// entries' worth, oldest first. Returns whether nothing is left to
    /// remove. Per key it keeps what the compaction rule of
    /// [`crate::kv::view`] requires.
    pub fn compact_physically(&mut self, budget: usize) -> bool {
        let below = self.compact_revision;
        for _ in 0..budget {
            match self.log.first_key_value() {
                Some((&(rev, _), _)) if rev < below => {}
                _ => return true,
            }
            if let Some((_, (key, _))) = self.log.pop_first() {
                self.prune_key(&key, below);
            }
        }
        self.log
            .first_key_value()
            .is_none_or(|(&(rev, _), _)| rev >= below)
    }

    /// Drops the key's versions below `below`, except the latest one if it
    /// is a put.
    fn prune_key(&mut self, key: &[u8], below: i64) {
        let Some(versions) = self.history.get_mut(key) else {
            return;
        };
        let old: Vec<ChangeId> = versions.range(..(below, 0)).map(|(id, _)| *id).collect();
        if let Some((latest, older)) = old.split_last() {
            for id in older {
                versions.remove(id);
            }
            if versions.get(latest).is_some_and(Option::is_none) {
                versions.remove(latest);
            }
        }
        if versions.is_empty() {
            self.history.remove(key);
        }
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The store's compact revision (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Serves a range read (see [`crate::kv::read_range`]).
    pub fn range(&self, req: &RangeRequest) -> Result<Revisioned<RangeResponse>, KvError> {
        exec::read_range(self, req).map_err(|e| match e {
            ExecError::Kv(e) => e,
            ExecError::Store(never) => match never {},
        })
    }

    /// The events of revisions `from_revision..` on keys of `range`, in
    /// order, with `prev_kv` (the key's record before the event's revision)
    /// filled: a watcher's catch-up. Stops at the end of the revision in
    /// which the count reached `limit`, so a revision is never split and
    /// at least one revision comes back if there is one. A start below the
    /// compact revision is refused; a start at it is complete.
    pub fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, KvError> {
        if from_revision < self.compact_revision {
            return Err(KvError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let mut out: Vec<Event> = Vec::new();
        for (&(rev, sub), (key, kind)) in self.log.range((from_revision, 0)..) {
            if out.len() >= limit && out.last().is_some_and(|e| e.kv.mod_revision != rev) {
                break;
            }
            if !range.contains(key) {
                continue;
            }
            let kv = match kind {
                EventKind::Put => self
                    .history
                    .get(key)
                    .and_then(|versions| versions.get(&(rev, sub)))
                    .cloned()
                    .flatten()
                    .expect("every put at or above the compact revision is kept"),
                EventKind::Delete => Event::delete_marker(key.clone(), rev),
            };
            out.push(Event {
                kind: *kind,
                kv,
                prev_kv: self.record_at(key, rev - 1),
            });
        }
        Ok(out)
    }

    /// Every stored version, by key then change: `None` is a tombstone.
    /// For comparing replicas' histories and checking compaction.
    pub fn versions(&self) -> impl Iterator<Item = (&[u8], ChangeId, Option<&KeyValue>)> {
        self.history.iter().flat_map(|(key, versions)| {
            versions
                .iter()
                .map(move |(id, record)| (key.as_slice(), *id, record.as_ref()))
        })
    }

    /// The whole store as records: the meta first, then every version by
    /// key and change ([`MemMvcc::from_records`] reads them back).
    pub fn records(&self) -> impl Iterator<Item = MvccRecord> + '_ {
        let meta = MvccRecord::Meta {
            revision: self.revision,
            compact_revision: self.compact_revision,
        };
        std::iter::once(meta).chain(self.versions().map(|(key, change, record)| {
            MvccRecord::Version {
                key: key.to_vec(),
                change,
                record: record.cloned(),
            }
        }))
    }

    /// Rebuilds a store from [`MemMvcc::records`]: current records from
    /// each key's latest version, the revision log from every version
    /// (physical compaction re-examines what it had already kept, and keeps
    /// it again).
    pub fn from_records(
        records: impl IntoIterator<Item = MvccRecord>,
    ) -> Result<MemMvcc, BadRecords> {
        let mut store = MemMvcc::new();
        let mut meta = false;
        for r in records {
            match r {
                MvccRecord::Meta {
                    revision,
                    compact_revision,
                } => {
                    if meta {
                        return Err(BadRecords("two meta records".into()));
                    }
                    meta = true;
                    store.revision = revision;
                    store.compact_revision = compact_revision;
                }
                MvccRecord::Version {
                    key,
                    change,
                    record,
                } => {
                    if change.0 > store.revision || !meta {
                        return Err(BadRecords(format!(
                            "version at revision {} of a store at {}",
                            change.0, store.revision
                        )));
                    }
                    let kind = if record.is_some() {
                        EventKind::Put
                    } else {
                        EventKind::Delete
                    };
                    store.log.insert(change, (key.clone(), kind));
                    store.history.entry(key).or_default().insert(change, record);
                }
            }
        }
        if !meta {
            return Err(BadRecords("no meta record".into()));
        }
        for (key, versions) in &store.history {
            if let Some((_, Some(kv))) = versions.last_key_value() {
                store.current.insert(key.clone(), kv.clone());
            }
        }
        Ok(store)
    }

    /// etcd's HashKV over this store: a crc32 of, per key, its versions in
    /// `compact..=revision` and its latest version below the compact
    /// revision unless a tombstone (what physical compaction keeps, so the
    /// hash does not depend on how far it ran). `revision` 0 = current.
    pub fn hash_kv(&self, revision: i64) -> Result<u32, KvError> {
        let rev = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        if rev > self.revision {
            return Err(KvError::FutureRevision);
        }
        if rev < self.compact_revision {
            return Err(KvError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut hash = |key: &[u8], id: &ChangeId, record: &Option<KeyValue>| {
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update(&id.0.to_be_bytes());
            hasher.update(&id.1.to_be_bytes());
            let bytes = bincode::serde::encode_to_vec(record, bincode::config::standard())
                .unwrap_or_default();
            hasher.update(&bytes);
        };
        for (key, versions) in &self.history {
            let below = versions.range(..(self.compact_revision, 0)).next_back();
            if let Some((id, record @ Some(_))) = below {
                hash(key, id, record);
            }
            for (id, record) in versions.range((self.compact_revision, 0)..=(rev, i64::MAX)) {
                hash(key, id, record);
            }
        }
        Ok(hasher.finalize())
    }

    /// Number of entries in the revision log (all changes not yet removed
    /// by physical compaction).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The key's record at `rev`, from the current map when `rev` is the
    /// current revision, else from its history.
    fn record_at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        if rev >= self.revision {
            return self.current.get(key).cloned();
        }
        self.history
            .get(key)?
            .range(..=(rev, i64::MAX))
            .next_back()
            .and_then(|(_, record)| record.clone())
    }
}

impl MvccView for MemMvcc {
    type Error = Infallible;

    fn revision(&self) -> i64 {
        self.revision
    }

    fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, Infallible> {
        Ok(self.record_at(key, rev))
    }

    fn scan(
        &self,
        range: KeyRange<'_>,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), Infallible> {
        let Some(bounds) = range.bounds() else {
            return Ok(());
        };
        if rev >= self.revision {
            for kv in self.current.range::<[u8], _>(bounds).map(|(_, kv)| kv) {
                if visit(kv.clone()).is_break() {
                    break;
                }
            }
            return Ok(());
        }
        for versions in self.history.range::<[u8], _>(bounds).map(|(_, v)| v) {
            let at_rev = versions.range(..=(rev, i64::MAX)).next_back();
            if let Some((_, Some(kv))) = at_rev {
                if visit(kv.clone()).is_break() {
                    break;
                }
            }
        }
        Ok(())
    }
}
