//! The in-memory Raft log: a compacted prefix (the snapshot), the entries
//! after it, and the cursors that track how far the runtime has persisted
//! and applied them.
//!
//! ```text
//!   snapshot.index        applied ≤ apply_cursor ≤ commit ≤ last_index
//!   |<- compacted ->|<----------------- entries ----------------->|
//!                   first_index                          last_index
//!                           persisted < unstable_from  (≤ last_index + 1)
//! ```
//!
//! * `unstable_from`: first entry not yet handed to the runtime in a
//!   [`Ready`](super::Ready); everything before it is durable or in the
//!   Ready being handled.
//! * `persisted`: the runtime confirmed (through `advance`) that the log up
//!   to here is durable. Only the leader needs it: it counts its own log
//!   toward a commit majority only up to `persisted`.
//! * `apply_cursor`: highest index handed out for applying (in
//!   `committed_entries`, or by a snapshot); `applied` is the same after the
//!   runtime acknowledged it.
//!
//! All lookups are O(1) (the entry for index `i` sits at
//! `i - snapshot.index - 1`), except the two fast-backtracking searches,
//! which binary-search by term (terms never decrease along a log) and run
//! only on rejections.

use super::types::{Entry, SnapshotMeta};

/// The log of one node, kept in memory from the snapshot on.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The compacted prefix: entries up to `snapshot.index` are gone.
    snapshot: SnapshotMeta,
    /// Entries after the snapshot; `entries[k].index == snapshot.index + 1 + k`.
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub(crate) commit: u64,
    /// Highest index handed out for applying.
    pub(crate) apply_cursor: u64,
    /// Highest index the runtime acknowledged as applied.
    pub(crate) applied: u64,
    /// The log up to here is durable (acknowledged through `advance`).
    pub(crate) persisted: u64,
    /// First index not yet handed out for persisting.
    unstable_from: u64,
    /// Last index of the entries in the Ready being handled, if it carried
    /// any; becomes `persisted` at `advance` (clamped by truncations that
    /// happened meanwhile).
    persist_in_flight: Option<u64>,
}

impl RaftLog {
    /// A log recovered from storage: `entries` follow `snapshot` and are
    /// durable; `commit` and `applied` are already validated.
    pub(crate) fn recovered(
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
        commit: u64,
        applied: u64,
    ) -> Self {
        let last = snapshot.index + entries.len() as u64;
        RaftLog {
            snapshot,
            entries,
            commit,
            apply_cursor: applied,
            applied,
            persisted: last,
            unstable_from: last + 1,
            persist_in_flight: None,
        }
    }

    /// The latest snapshot (compacted prefix).
    pub(crate) fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }

    /// First index still held as an entry.
    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// Index of the last entry (the snapshot index when the log is empty).
    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Term of the last entry (the snapshot's term when the log is empty).
    pub(crate) fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// Term of the entry at `index`; `None` when compacted away or beyond
    /// the end. Index 0 has term 0.
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
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

    /// Position of `index` in `entries` (caller checks the range).
    fn pos(&self, index: u64) -> usize {
        (index - self.snapshot.index - 1) as usize
    }

    /// Up to `max_count` entries from `from` on, stopping once `max_bytes`
    /// is reached (always at least one entry when any exists). `from` must
    /// be > the snapshot index.
    pub(crate) fn entries_from(&self, from: u64, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        if from > self.last_index() || from <= self.snapshot.index {
            return Vec::new();
        }
        let start = self.pos(from);
        let end = (start + max_count.max(1)).min(self.entries.len());
        let mut bytes = 0usize;
        let mut take = 0usize;
        for e in &self.entries[start..end] {
            bytes += e.approx_size();
            if take > 0 && bytes > max_bytes {
                break;
            }
            take += 1;
        }
        self.entries[start..start + take].to_vec()
    }

    /// Appends entries created by this node as leader (contiguous after the
    /// last index).
    pub(crate) fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Follower side of AppendEntries (§5.3). Returns `None` when the
    /// consistency check at `prev` fails; otherwise stores the entries
    /// (truncating a conflicting uncommitted suffix) and returns the index
    /// of the last entry the message vouches for, `prev + entries.len()`.
    ///
    /// Entries at or below `commit` are never compared or rewritten: a
    /// committed prefix matches every later leader's log (leader
    /// completeness), which also covers the compacted prefix.
    pub(crate) fn maybe_append(
        &mut self,
        prev: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Option<u64> {
        let matched = prev <= self.commit || self.term_at(prev) == Some(prev_term);
        if !matched {
            return None;
        }
        let last_new = prev + entries.len() as u64;
        let mut first_new = None;
        for (k, e) in entries.iter().enumerate() {
            if e.index <= self.commit {
                continue;
            }
            match self.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    // A conflicting suffix: it was never committed (it is
                    // above `commit`), so the leader's version wins.
                    self.truncate_from(e.index);
                    first_new = Some(k);
                    break;
                }
                None => {
                    first_new = Some(k);
                    break;
                }
            }
        }
        if let Some(k) = first_new {
            let mut entries = entries;
            self.entries.extend(entries.drain(k..));
        }
        Some(last_new)
    }

    /// Drops every entry from `index` on (never a committed one).
    fn truncate_from(&mut self, index: u64) {
        debug_assert!(index > self.commit, "truncating committed entry {index}");
        let keep = self.pos(index);
        self.entries.truncate(keep);
        // Whatever was durable or in flight beyond this point is now stale:
        // the runtime rewrites from `index` with the next Ready.
        self.persisted = self.persisted.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
        self.persist_in_flight = self.persist_in_flight.map(|t| t.min(index - 1));
    }

    /// Fast-backtracking hint for a rejected AppendEntries at `prev`
    /// (§5.3): `(term at prev, first index of that term)`, or
    /// `(0, last_index + 1)` when the log is shorter than `prev`.
    pub(crate) fn conflict_hint(&self, prev: u64) -> (u64, u64) {
        let Some(term) = self.term_at(prev).filter(|_| prev <= self.last_index()) else {
            return (0, self.last_index() + 1);
        };
        // First entry (≤ prev) whose term is ≥ `term`; terms are sorted.
        let upto = self.pos(prev) + 1;
        let k = self.entries[..upto].partition_point(|e| e.term < term);
        (term, self.snapshot.index + 1 + k as u64)
    }

    /// Leader side of fast backtracking: the last index ≤ `upto` whose
    /// entry has term `term`, if this log holds any such entry.
    pub(crate) fn last_index_of_term(&self, term: u64, upto: u64) -> Option<u64> {
        let upto = upto.min(self.last_index());
        if upto <= self.snapshot.index {
            return (upto == self.snapshot.index && self.snapshot.term == term).then_some(upto);
        }
        let n = self.pos(upto) + 1;
        let k = self.entries[..n].partition_point(|e| e.term <= term);
        if k == 0 {
            return (self.snapshot.term == term).then_some(self.snapshot.index);
        }
        let i = self.snapshot.index + k as u64;
        (self.entries[k - 1].term == term).then_some(i)
    }

    /// Raises the commit index (never lowers it, never beyond the log).
    pub(crate) fn commit_to(&mut self, index: u64) -> bool {
        let index = index.min(self.last_index());
        if index > self.commit {
            self.commit = index;
            true
        } else {
            false
        }
    }

    /// True when entries wait to be handed out for persisting.
    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Hands out the entries not yet given to the runtime for persisting and
    /// remembers where they end, for `advance`.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        if !self.has_unstable() {
            return Vec::new();
        }
        let start = self.pos(self.unstable_from);
        let out = self.entries[start..].to_vec();
        self.unstable_from = self.last_index() + 1;
        self.persist_in_flight = Some(self.last_index());
        out
    }

    /// True when committed entries wait to be handed out for applying.
    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.commit > self.apply_cursor
    }

    /// Hands out the next committed entries to apply (at most `max_count`
    /// and about `max_bytes`). Every one of them has already been handed out
    /// for persisting (`commit ≤ last_index`, and a Ready hands out all
    /// unstable entries), so the runtime persists before it applies.
    pub(crate) fn take_committed(&mut self, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        if !self.has_committed_to_apply() {
            return Vec::new();
        }
        let from = self.apply_cursor + 1;
        let n = (self.commit - self.apply_cursor) as usize;
        let out = self.entries_from(from, n.min(max_count), max_bytes);
        if let Some(e) = out.last() {
            self.apply_cursor = e.index;
        }
        out
    }

    /// The Ready that carried entries up to `persist_in_flight` is durable.
    pub(crate) fn persisted_in_flight(&mut self) {
        if let Some(t) = self.persist_in_flight.take() {
            self.persisted = self.persisted.max(t);
        }
    }

    /// Drops the log prefix up to `meta.index` (already validated: it lies
    /// within the applied, persisted part of the log).
    pub(crate) fn compact(&mut self, meta: SnapshotMeta) {
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = meta;
    }

    /// A follower installs the leader's snapshot: the whole log is replaced
    /// by it, and everything up to it counts as committed and applied (the
    /// runtime installs the state machine image before anything else in the
    /// next Ready).
    pub(crate) fn reset_to_snapshot(&mut self, meta: SnapshotMeta) {
        self.entries.clear();
        self.snapshot = meta;
        self.commit = meta.index;
        self.apply_cursor = meta.index;
        self.persisted = meta.index;
        self.unstable_from = meta.index + 1;
        self.persist_in_flight = self.persist_in_flight.map(|t| t.min(meta.index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryPayload;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &t)| ent(k as u64 + 1, t))
            .collect();
        RaftLog::recovered(SnapshotMeta::default(), entries, 0, 0)
    }

    #[test]
    fn term_lookup_respects_snapshot_and_end() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(5), None);
        log.commit = 4;
        log.applied = 4;
        log.compact(SnapshotMeta { index: 2, term: 1 });
        assert_eq!(log.term_at(1), None);
        assert_eq!(log.term_at(2), Some(1));
        assert_eq!(log.term_at(4), Some(3));
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn conflicting_suffix_is_truncated_and_replaced() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 2]);
        let got = log.maybe_append(2, 1, vec![ent(3, 3), ent(4, 3)]);
        assert_eq!(got, Some(4));
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term_at(3), Some(3));
        assert_eq!(
            log.persisted, 2,
            "durable suffix past the conflict is stale"
        );
        assert!(log.has_unstable());
    }

    #[test]
    fn duplicate_append_does_not_truncate() {
        let mut log = log_with_terms(&[1, 1, 1, 1]);
        assert_eq!(log.maybe_append(1, 1, vec![ent(2, 1)]), Some(2));
        assert_eq!(log.last_index(), 4, "a stale shorter append keeps the tail");
    }

    #[test]
    fn conflict_hint_points_at_first_index_of_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.conflict_hint(5), (2, 3));
        assert_eq!(log.conflict_hint(9), (0, 7));
        assert_eq!(log.last_index_of_term(2, 6), Some(5));
        assert_eq!(log.last_index_of_term(3, 6), None);
        assert_eq!(log.last_index_of_term(1, 6), Some(2));
    }

    #[test]
    fn entries_from_honours_count_and_bytes() {
        let log = log_with_terms(&[1; 10]);
        assert_eq!(log.entries_from(3, 4, usize::MAX).len(), 4);
        assert_eq!(log.entries_from(3, 100, 50).len(), 2);
        assert_eq!(log.entries_from(3, 100, 1).len(), 1, "at least one entry");
        assert!(log.entries_from(11, 4, 100).is_empty());
    }
}
