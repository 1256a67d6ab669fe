//! In-memory [`LogStore`] and [`StateMachine`], used by the deterministic
//! simulation (and handy in tests).
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
//! The key-value semantics come from [`crate::kv::decide`], the same
//! function the sled state machine uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LogStore, RecoveredLog, StateMachine, StorageError};
use crate::kv::{decide, ApplyResult, Effect, KvCommand, KvItem};
use crate::raft::{Entry, EntryPayload, HardState, SnapshotMeta};

/// Durable Raft state held in memory.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// Entries after `snapshot.index`, contiguous.
    entries: Vec<Entry>,
    /// The state-machine image matching `snapshot` (index 0 = none), kept
    /// durable next to the log so the node can restart from it and serve
    /// it to lagging followers.
    image: Option<(SnapshotMeta, Vec<u8>)>,
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

    /// Stores the state-machine image for `meta` (durably).
    pub fn set_snapshot_image(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        self.image = Some((meta, data));
    }

    /// The stored state-machine image, if any.
    pub fn snapshot_image(&self) -> Option<&(SnapshotMeta, Vec<u8>)> {
        self.image.as_ref()
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

/// Applied key-value state: key → (value, mod index).
type KvMap = BTreeMap<String, (String, u64)>;

/// One consistent state: data plus the index and term it reflects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SmState {
    applied: u64,
    applied_term: u64,
    data: KvMap,
}

/// The serialised form of a snapshot image.
///
/// Format: plain bincode of `meta` then `items` — no version, no checksum.
/// It lives only in the memory of a simulated cluster, never on disk or on
/// the wire, so it is not pinned by golden tests.
#[derive(Serialize, Deserialize)]
struct Image {
    meta: SnapshotMeta,
    items: Vec<KvItem>,
}

/// An in-memory key-value state machine with an explicit durability point.
#[derive(Clone, Debug, Default)]
pub struct MemStateMachine {
    live: SmState,
    durable: SmState,
}

impl MemStateMachine {
    /// An empty state machine (nothing applied).
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the current state durable.
    pub fn flush(&mut self) {
        self.durable = self.live.clone();
    }

    /// Simulates a crash: everything applied since the last flush is lost.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.live.applied_term
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.live.data.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.live.data.is_empty()
    }

    /// Every key with its value and mod index, sorted (for comparing
    /// replicas).
    pub fn items(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.live
            .data
            .iter()
            .map(|(k, (v, i))| (k.as_str(), v.as_str(), *i))
    }
}

impl StateMachine for MemStateMachine {
    fn applied_index(&self) -> u64 {
        self.live.applied
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, StorageError> {
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
                results.push(ApplyResult::Noop);
                continue;
            }
            let result = match &e.payload {
                EntryPayload::Noop => ApplyResult::Noop,
                EntryPayload::Command(bytes) => match KvCommand::decode(bytes) {
                    // An undecodable command changes nothing, on every
                    // replica alike.
                    Err(_) => ApplyResult::Noop,
                    Ok(cmd) => {
                        let current = self.live.data.get(cmd.key()).map(|(_, i)| *i);
                        let (effect, result) = decide(&cmd, e.index, current);
                        match effect {
                            Effect::Set { value, index } => {
                                self.live.data.insert(cmd.key().to_string(), (value, index));
                            }
                            Effect::Remove => {
                                self.live.data.remove(cmd.key());
                            }
                            Effect::None => {}
                        }
                        result
                    }
                },
            };
            self.live.applied = e.index;
            self.live.applied_term = e.term;
            results.push(result);
        }
        Ok(results)
    }

    fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
        Ok(self.live.data.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KvItem>, bool), StorageError> {
        let mut out = Vec::new();
        let mut more = false;
        for (k, (v, i)) in self.live.data.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| k.as_str() <= a) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(KvItem {
                key: k.clone(),
                value: v.clone(),
                index: *i,
            });
        }
        Ok((out, more))
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let meta = SnapshotMeta {
            index: self.live.applied,
            term: self.live.applied_term,
        };
        let image = Image {
            meta,
            items: self
                .live
                .data
                .iter()
                .map(|(k, (v, i))| KvItem {
                    key: k.clone(),
                    value: v.clone(),
                    index: *i,
                })
                .collect(),
        };
        let data = bincode::serde::encode_to_vec(&image, bincode::config::standard())
            .map_err(|e| StorageError::Io(format!("encoding snapshot: {e}")))?;
        Ok((meta, data))
    }

    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let corrupt = |reason: String| StorageError::Corruption {
            tree: "memory snapshot".into(),
            key: format!("{}", meta.index),
            reason,
        };
        let (image, _): (Image, usize) =
            bincode::serde::decode_from_slice(data, bincode::config::standard())
                .map_err(|e| corrupt(format!("undecodable image: {e}")))?;
        if image.meta != meta {
            return Err(corrupt(format!(
                "image is for {:?}, expected {meta:?}",
                image.meta
            )));
        }
        self.live = SmState {
            applied: meta.index,
            applied_term: meta.term,
            data: image
                .items
                .into_iter()
                .map(|it| (it.key, (it.value, it.index)))
                .collect(),
        };
        // Installing a snapshot is atomic and durable, like the sled one.
        self.flush();
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
                KvCommand::Put {
                    key: key.into(),
                    value: value.into(),
                    cas: None,
                }
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
        assert_eq!(sm.get("b").unwrap(), None);
        sm.restore(meta, &image).unwrap();
        assert_eq!(sm.get("b").unwrap(), Some(("2".into(), 2)));
        sm.crash();
        assert_eq!(sm.applied_index(), 2, "a restored snapshot is durable");
        assert!(sm.apply(&[cmd(5, "c", "5")]).is_err(), "a gap is refused");
    }

    #[test]
    fn scan_pages_by_prefix() {
        let mut sm = MemStateMachine::new();
        let entries: Vec<Entry> = ["p1", "p2", "p3", "q1"]
            .iter()
            .enumerate()
            .map(|(k, key)| cmd(k as u64 + 1, key, "v"))
            .collect();
        sm.apply(&entries).unwrap();
        let (page, more) = sm.scan("p", None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(more);
        let (page, more) = sm.scan("p", Some("p2"), 2).unwrap();
        assert_eq!(
            page.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["p3"]
        );
        assert!(!more);
    }
}
