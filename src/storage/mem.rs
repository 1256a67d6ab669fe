//! In-memory storage, used by the deterministic simulation (and handy in
//! tests): [`MemLogStore`], [`MemStateMachine`], and [`MemStore`], the two
//! together with the snapshot operations of [`SnapshotStore`] — the whole
//! [`NodeStore`] the Raft loop runs on.
//!
//! They model durability explicitly, so that a simulated crash loses
//! exactly what a real one would:
//!
//! * [`MemLogStore`] keeps only durable state: by the [`LogStore`] contract
//!   a `save` is durable when it returns. What a crash loses is whatever
//!   the runtime had not yet saved (the core's memory and the Ready being
//!   handled); the simulation drops those.
//! * [`MemStateMachine`] has a live state and a durable checkpoint, like a
//!   store that flushes its applied data lazily. [`MemStateMachine::crash`]
//!   rolls back to the last [`MemStateMachine::flush`]; on restart the core
//!   hands the lost committed entries out again.
//!
//! * [`MemStore`] follows the sled store where the loop depends on it:
//!   compaction makes the applied state durable before the log prefix goes
//!   (the state machine *is* the snapshot), installing a staged image is
//!   one durable step, images use the same [format](super::image).
//!
//! The key-value semantics are etcd v3's, from [`crate::kv::MemMvcc`]
//! (which runs [`crate::kv::execute`], the code every store runs); physical
//! compaction runs in steps, as on sled.

use super::image::{
    decode_image, encode_image, ImageChunks, ImageDecoder, ImageItem, ImageTrailer,
};
use super::{
    EntryOutcome, LogStore, NodeStore, RecoveredLog, SnapshotSource, SnapshotStore, SnapshotWriter,
    StagedSnapshot, StateMachine, StorageError,
};
use crate::kv::model::MvccRecord;
use crate::kv::{self, Command, ExecError, KeyRange, KvError, MemMvcc};
use crate::raft::{Entry, EntryPayload, HardState, SnapshotMeta};

/// Durable Raft state held in memory.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// Entries after `snapshot.index`, contiguous.
    entries: Vec<Entry>,
}

impl MemLogStore {
    /// An empty store (term 0, no vote, empty log).
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The stored snapshot metadata.
    pub fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }

    /// The stored entries (after the snapshot).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Index of the last stored entry (the snapshot index when empty).
    pub fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Term of the stored entry at `index` (the snapshot's term at its
    /// index); `None` when compacted or beyond the end.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return None;
        }
        self.entries
            .get((index - self.snapshot.index - 1) as usize)
            .map(|e| e.term)
    }
}

impl LogStore for MemLogStore {
    fn load(&self) -> Result<RecoveredLog, StorageError> {
        Ok(RecoveredLog {
            hard_state: self.hard_state,
            snapshot: self.snapshot,
            entries: self.entries.clone(),
        })
    }

    fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if let Some(first) = entries.first() {
            if first.index <= self.snapshot.index || first.index > self.last_index() + 1 {
                return Err(StorageError::Inconsistent(format!(
                    "save of entries from {} does not fit a log of {}..={}",
                    first.index,
                    self.snapshot.index + 1,
                    self.last_index()
                )));
            }
            if entries
                .iter()
                .enumerate()
                .any(|(k, e)| e.index != first.index + k as u64)
            {
                return Err(StorageError::Inconsistent(
                    "entries to save are not contiguous".into(),
                ));
            }
            let keep = (first.index - self.snapshot.index - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        Ok(())
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        if meta.index <= self.snapshot.index {
            return Ok(());
        }
        if meta.index > self.last_index() {
            return Err(StorageError::Inconsistent(format!(
                "compaction to {} beyond the last index {}",
                meta.index,
                self.last_index()
            )));
        }
        if let Some(term) = self.term_at(meta.index).filter(|t| *t != meta.term) {
            return Err(StorageError::Inconsistent(format!(
                "snapshot at {} claims term {}, the log has term {term} there",
                meta.index, meta.term
            )));
        }
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = meta;
        Ok(())
    }

    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.entries.clear();
        self.snapshot = meta;
        Ok(())
    }
}

/// One consistent state: the MVCC store plus the index and term it
/// reflects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SmState {
    applied: u64,
    applied_term: u64,
    data: MemMvcc,
}

/// An in-memory key-value state machine with an explicit durability point.
#[derive(Clone, Debug, Default)]
pub struct MemStateMachine {
    live: SmState,
    durable: SmState,
}

const IMAGE_TREE: &str = "memory snapshot";

/// The image items of a state: one per [`MvccRecord`], keyed by position
/// (8 bytes, big-endian), valued by the record's bincode.
fn image_items(data: &MemMvcc) -> Result<Vec<ImageItem>, StorageError> {
    data.records()
        .enumerate()
        .map(|(i, r)| {
            let value =
                bincode::serde::encode_to_vec(&r, bincode::config::standard()).map_err(|e| {
                    StorageError::Inconsistent(format!("encoding a memory image record: {e}"))
                })?;
            Ok(ImageItem {
                key: (i as u64).to_be_bytes().to_vec(),
                value,
            })
        })
        .collect()
}

/// Rebuilds a state from [`image_items`].
fn from_image_items(items: Vec<ImageItem>) -> Result<MemMvcc, StorageError> {
    let bad = |key: &[u8], reason: String| StorageError::Corruption {
        tree: IMAGE_TREE.into(),
        key: format!("{key:02x?}"),
        reason,
    };
    let mut records = Vec::with_capacity(items.len());
    for it in items {
        let (r, _): (MvccRecord, usize) =
            bincode::serde::decode_from_slice(&it.value, bincode::config::standard())
                .map_err(|e| bad(&it.key, e.to_string()))?;
        records.push(r);
    }
    MemMvcc::from_records(records).map_err(|e| bad(b"", e.to_string()))
}

impl MemStateMachine {
    /// An empty state machine (nothing applied).
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the current state durable.
    pub fn flush(&mut self) {
        if self.durable != self.live {
            self.durable = self.live.clone();
        }
    }

    /// Simulates a crash: everything applied since the last flush is lost.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.live.applied_term
    }

    /// The MVCC store.
    pub fn data(&self) -> &MemMvcc {
        &self.live.data
    }

    /// Replaces the whole state by `items` at `meta`, durably (an
    /// installed snapshot).
    fn install(&mut self, meta: SnapshotMeta, items: Vec<ImageItem>) -> Result<(), StorageError> {
        self.live = SmState {
            applied: meta.index,
            applied_term: meta.term,
            data: from_image_items(items)?,
        };
        self.durable = self.live.clone();
        Ok(())
    }

    /// The applied index and the term of the entry at it.
    pub fn applied(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.live.applied,
            term: self.live.applied_term,
        }
    }
}

impl StateMachine for MemStateMachine {
    fn applied_index(&self) -> u64 {
        self.live.applied
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError> {
        // Check the whole batch before changing anything: a refused apply
        // must leave the data and the applied index as they were (the
        // trait's "one atomic step"; the sled store writes one batch).
        let mut applied = self.live.applied;
        for e in entries {
            if e.index <= applied {
                continue;
            }
            if e.index != applied + 1 {
                return Err(StorageError::Inconsistent(format!(
                    "apply of entry {} after applied index {applied}",
                    e.index
                )));
            }
            applied = e.index;
        }
        let mut results = Vec::with_capacity(entries.len());
        for e in entries {
            if e.index <= self.live.applied {
                results.push(EntryOutcome::Noop);
                continue;
            }
            let result = match &e.payload {
                EntryPayload::Noop => EntryOutcome::Noop,
                EntryPayload::Command(bytes) => {
                    EntryOutcome::Command(match Command::decode(bytes) {
                        // An undecodable command changes nothing, on every
                        // replica alike.
                        Err(why) => kv::Applied {
                            answer: Err(KvError::MalformedCommand(why.to_string())),
                            events: Vec::new(),
                            compact_revision: None,
                        },
                        Ok(cmd) => {
                            let outcome = self.live.data.execute(&cmd);
                            self.live.data.commit(&outcome).map_err(|e| {
                                StorageError::Inconsistent(format!("memory state machine: {e}"))
                            })?;
                            outcome
                        }
                    })
                }
            };
            self.live.applied = e.index;
            self.live.applied_term = e.term;
            results.push(result);
        }
        Ok(results)
    }

    fn range(
        &self,
        req: &kv::RangeRequest,
    ) -> Result<kv::Revisioned<kv::RangeResponse>, ExecError<StorageError>> {
        self.live.data.range(req).map_err(ExecError::Kv)
    }

    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<kv::Event>, ExecError<StorageError>> {
        self.live
            .data
            .events(from_revision, range, limit)
            .map_err(ExecError::Kv)
    }

    fn revision(&self) -> Result<i64, StorageError> {
        Ok(self.live.data.revision())
    }

    fn compact_revision(&self) -> Result<i64, StorageError> {
        Ok(self.live.data.compact_revision())
    }

    fn compact_step(&mut self, budget: usize) -> Result<bool, StorageError> {
        Ok(self.live.data.compact_physically(budget))
    }

    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        self.live.data.hash_kv(revision).map_err(ExecError::Kv)
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let meta = self.applied();
        let items = image_items(&self.live.data)?;
        let data = encode_image(
            meta,
            items.iter().map(|i| (i.key.as_slice(), i.value.as_slice())),
        )?;
        Ok((meta, data))
    }

    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let (got, items) = decode_image(data)?;
        if got != meta {
            return Err(StorageError::Corruption {
                tree: IMAGE_TREE.into(),
                key: format!("{}", meta.index),
                reason: format!("image is for {got:?}, expected {meta:?}"),
            });
        }
        // Installing a snapshot is atomic and durable, like the sled one.
        self.install(meta, items)
    }
}

/// A whole node's storage in memory: a [`MemLogStore`] and a
/// [`MemStateMachine`] with the snapshot operations between them.
///
/// Durability: the log is durable when `save` returns; the state machine
/// at its last flush, which compaction and installs do themselves (a
/// crash, [`MemStore::crash`], loses the applies after it).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    log: MemLogStore,
    sm: MemStateMachine,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The log store.
    pub fn log(&self) -> &MemLogStore {
        &self.log
    }

    /// The state machine.
    pub fn state_machine(&self) -> &MemStateMachine {
        &self.sm
    }

    /// Makes the applied state durable.
    pub fn flush_state_machine(&mut self) {
        self.sm.flush();
    }

    /// Simulates a crash: what was applied since the state machine's last
    /// flush is lost; the log (durable at every `save`) is kept.
    pub fn crash(&mut self) {
        self.sm.crash();
    }
}

impl LogStore for MemStore {
    fn load(&self) -> Result<RecoveredLog, StorageError> {
        let rec = self.log.load()?;
        if self.sm.applied_index() < rec.snapshot.index {
            return Err(StorageError::Inconsistent(format!(
                "the state machine has applied up to {} but the log was compacted up to {}",
                self.sm.applied_index(),
                rec.snapshot.index
            )));
        }
        Ok(rec)
    }

    fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.log.save(hard_state, entries)
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        if meta.index <= self.log.snapshot().index {
            return Ok(());
        }
        if meta.index > self.sm.applied_index() {
            return Err(StorageError::Inconsistent(format!(
                "cannot compact the log up to {}: only {} is applied",
                meta.index,
                self.sm.applied_index()
            )));
        }
        // The state machine is the snapshot: durable before the log goes.
        self.sm.flush();
        self.log.compact(meta)
    }

    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.log.reset_to_snapshot(meta)
    }
}

impl StateMachine for MemStore {
    fn applied_index(&self) -> u64 {
        self.sm.applied_index()
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError> {
        self.sm.apply(entries)
    }

    fn range(
        &self,
        req: &kv::RangeRequest,
    ) -> Result<kv::Revisioned<kv::RangeResponse>, ExecError<StorageError>> {
        self.sm.range(req)
    }

    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<kv::Event>, ExecError<StorageError>> {
        self.sm.events(from_revision, range, limit)
    }

    fn revision(&self) -> Result<i64, StorageError> {
        self.sm.revision()
    }

    fn compact_revision(&self) -> Result<i64, StorageError> {
        self.sm.compact_revision()
    }

    fn compact_step(&mut self, budget: usize) -> Result<bool, StorageError> {
        self.sm.compact_step(budget)
    }

    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        self.sm.hash_kv(revision)
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        self.sm.snapshot()
    }

    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.sm.restore(meta, data)
    }
}

/// The items of a [`MemSnapshot`], as its image is built.
pub type MemItems =
    std::iter::Map<std::vec::IntoIter<ImageItem>, fn(ImageItem) -> Result<ImageItem, StorageError>>;

/// A frozen copy of the in-memory state at one applied index.
#[derive(Clone, Debug)]
pub struct MemSnapshot {
    meta: SnapshotMeta,
    items: Vec<ImageItem>,
}

impl SnapshotSource for MemSnapshot {
    type Chunks = ImageChunks<MemItems>;

    fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn chunks(self, chunk_bytes: usize) -> Self::Chunks {
        let ok: fn(ImageItem) -> Result<ImageItem, StorageError> = Ok;
        ImageChunks::new(self.meta, self.items.into_iter().map(ok), chunk_bytes)
    }
}

/// An incoming image being verified and collected in memory.
#[derive(Debug, Default)]
pub struct MemStaging {
    decoder: ImageDecoder,
    items: Vec<ImageItem>,
    crc: crc32fast::Hasher,
}

impl SnapshotWriter for MemStaging {
    type Staged = MemStaged;

    fn write(&mut self, piece: &[u8]) -> Result<(), StorageError> {
        self.crc.update(piece);
        let items = &mut self.items;
        self.decoder.push(piece, |item| {
            items.push(item);
            Ok(())
        })
    }

    fn finish(self, trailer: &ImageTrailer) -> Result<MemStaged, StorageError> {
        let (meta, _) = self.decoder.finish()?;
        let bad = |reason: String| StorageError::Corruption {
            tree: "snapshot image".into(),
            key: "whole image".into(),
            reason,
        };
        if self.decoder.bytes() != trailer.total_len {
            return Err(bad(format!(
                "received {} bytes, the sender announced {}",
                self.decoder.bytes(),
                trailer.total_len
            )));
        }
        let crc = self.crc.finalize();
        if crc != trailer.crc32 {
            return Err(bad(format!(
                "crc32 of the image is {crc:#010x}, the sender announced {:#010x}",
                trailer.crc32
            )));
        }
        Ok(MemStaged {
            meta,
            items: self.items,
            bytes: trailer.total_len,
        })
    }
}

/// A verified image held in memory, waiting to be installed.
#[derive(Clone, Debug)]
pub struct MemStaged {
    meta: SnapshotMeta,
    items: Vec<ImageItem>,
    bytes: u64,
}

impl StagedSnapshot for MemStaged {
    fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn items(&self) -> u64 {
        self.items.len() as u64
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl SnapshotStore for MemStore {
    type Source = MemSnapshot;
    type Staged = MemStaged;
    type Writer = MemStaging;

    fn applied(&self) -> SnapshotMeta {
        self.sm.applied()
    }

    fn begin_snapshot(&self) -> Result<MemSnapshot, StorageError> {
        Ok(MemSnapshot {
            meta: self.sm.applied(),
            items: image_items(self.sm.data())?,
        })
    }

    fn stage_snapshot(&self) -> Result<MemStaging, StorageError> {
        Ok(MemStaging::default())
    }

    fn install_staged(&mut self, staged: MemStaged) -> Result<(), StorageError> {
        // One step: nothing can happen between the two in memory.
        self.sm.install(staged.meta, staged.items)?;
        self.log.reset_to_snapshot(staged.meta)
    }
}

impl NodeStore for MemStore {
    fn flush(&self) -> Result<(), StorageError> {
        // The log is durable at every save; the state machine's flush is
        // explicit (`flush_state_machine`) so that the simulation decides
        // when applies become durable.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(index: u64, key: &str, value: &str) -> Entry {
        Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(
                Command::Put(kv::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .encode(),
            ),
        }
    }

    #[test]
    fn save_truncates_conflicting_suffix() {
        let mut s = MemLogStore::new();
        s.save(
            None,
            &[cmd(1, "a", "1"), cmd(2, "a", "2"), cmd(3, "a", "3")],
        )
        .unwrap();
        let mut replacement = cmd(2, "b", "x");
        replacement.term = 2;
        s.save(
            Some(&HardState {
                term: 2,
                vote: 1,
                commit: 1,
            }),
            &[replacement],
        )
        .unwrap();
        let got = s.load().unwrap();
        assert_eq!(got.entries.len(), 2);
        assert_eq!(got.entries[1].term, 2);
        assert_eq!(got.hard_state.term, 2);
        assert!(
            s.save(None, &[cmd(9, "a", "1")]).is_err(),
            "a gap is refused"
        );
    }

    #[test]
    fn compaction_keeps_the_tail() {
        let mut s = MemLogStore::new();
        s.save(
            None,
            &[cmd(1, "a", "1"), cmd(2, "a", "2"), cmd(3, "a", "3")],
        )
        .unwrap();
        s.compact(SnapshotMeta { index: 2, term: 1 }).unwrap();
        assert_eq!(s.term_at(2), Some(1));
        assert_eq!(s.term_at(1), None);
        assert_eq!(s.entries().len(), 1);
        assert!(s.compact(SnapshotMeta { index: 9, term: 1 }).is_err());
    }

    #[test]
    fn crash_loses_unflushed_applies_and_snapshot_roundtrips() {
        let mut sm = MemStateMachine::new();
        sm.apply(&[cmd(1, "a", "1")]).unwrap();
        sm.flush();
        sm.apply(&[cmd(2, "b", "2")]).unwrap();
        assert_eq!(sm.applied_index(), 2);
        let (meta, image) = sm.snapshot().unwrap();
        sm.crash();
        assert_eq!(sm.applied_index(), 1);
        assert_eq!(sm.get(b"b").unwrap(), None);
        sm.restore(meta, &image).unwrap();
        let b = sm.get(b"b").unwrap().unwrap();
        assert_eq!((b.value.as_slice(), b.mod_revision), (&b"2"[..], 3));
        assert_eq!(sm.revision().unwrap(), 3);
        sm.crash();
        assert_eq!(sm.applied_index(), 2, "a restored snapshot is durable");
        assert!(sm.apply(&[cmd(5, "c", "5")]).is_err(), "a gap is refused");
    }

    #[test]
    fn history_survives_an_image_and_compaction_runs_in_steps() {
        let mut sm = MemStateMachine::new();
        let entries: Vec<Entry> = (1..=6).map(|i| cmd(i, "k", &i.to_string())).collect();
        sm.apply(&entries).unwrap();
        let compact = Command::Compact(kv::CompactionRequest {
            revision: 4,
            physical: false,
        });
        sm.apply(&[Entry {
            index: 7,
            term: 1,
            payload: EntryPayload::Command(compact.encode()),
        }])
        .unwrap();
        let past = |sm: &MemStateMachine, rev| {
            sm.range(&kv::RangeRequest {
                key: b"k".to_vec(),
                revision: rev,
                ..Default::default()
            })
        };
        let before = sm.hash_kv(0).unwrap();
        assert!(!sm.compact_step(1).unwrap(), "one step is not enough");
        while !sm.compact_step(1).unwrap() {}
        assert_eq!(
            sm.hash_kv(0).unwrap(),
            before,
            "hash independent of pruning"
        );
        assert_eq!(past(&sm, 5).unwrap().body.kvs[0].value, b"4");
        assert!(matches!(
            past(&sm, 3),
            Err(ExecError::Kv(KvError::Compacted {
                compact_revision: 4
            }))
        ));
        let (meta, image) = sm.snapshot().unwrap();
        let mut other = MemStateMachine::new();
        other.restore(meta, &image).unwrap();
        assert_eq!(past(&other, 5).unwrap(), past(&sm, 5).unwrap());
        assert_eq!(other.hash_kv(0).unwrap(), before);
        let all = |s: &MemStateMachine| s.events(4, KeyRange::new(b"k", b""), 100).unwrap();
        assert_eq!(all(&other), all(&sm));
    }
}
