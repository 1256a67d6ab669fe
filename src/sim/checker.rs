//! The safety properties the simulation checks, with the bookkeeping they
//! need. Every check is incremental (O(1) or O(new entries) per event), so
//! it can run after every single event.
//!
//! * **Election safety**: at most one leader per term, over the whole run.
//! * **Log matching**: every entry ever persisted by any node is recorded
//!   by `(index, term)` with its payload digest and the term of the entry
//!   before it. Two nodes persisting the same `(index, term)` must agree on
//!   both, which by induction makes their logs identical up to that index.
//! * **Committed entries are never lost / leader completeness**: every
//!   index any node ever counted as committed is recorded with its term
//!   (and the term it was committed in); commit indexes never agree on
//!   different terms, and every new leader's log must hold every entry
//!   committed in an earlier term.
//! * **State machine safety**: the first application of each index
//!   anywhere fixes its payload; every other application must match. A
//!   reference MVCC store ([`MemMvcc`], the data model's model) applies
//!   that canonical sequence; every replica's outcome of every entry (its
//!   answer, the events it persisted, its compaction), the answers clients
//!   are given, every read (at the current or a past revision) and the
//!   final states and histories are compared against it.
//! * **Definite failures stay failed**: a write a client was told was not
//!   applied ([`crate::node::WriteError::NotApplied`]) never appears in the
//!   canonical sequence.

use std::collections::{HashMap, HashSet};

use crate::kv::{
    Applied, Command, CommandResponse, KvError, MemMvcc, RangeRequest, RangeResponse, Revisioned,
};
use crate::raft::{Entry, EntryPayload, NodeId, RaftNode};
use crate::storage::EntryOutcome;

/// A cheap, deterministic digest of an entry's payload (FNV-1a).
pub fn digest(payload: &EntryPayload) -> u64 {
    match payload {
        EntryPayload::Noop => 0x6E6F_6F70,
        EntryPayload::Command(bytes) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h | 1
        }
    }
}

/// What is known about one committed index.
#[derive(Clone, Copy, Debug, Default)]
struct CommittedSlot {
    /// Term of the committed entry (0 = not seen yet).
    term: u64,
    /// Payload digest, once some node applied it (0 = not applied yet).
    digest: u64,
    /// Lowest current term of a node seen counting the entry as committed
    /// (0 = not seen). Never below the term of the leader that committed
    /// it, so every leader of a later term must hold the entry.
    commit_term: u64,
}

/// The run-wide record of what happened, and the checks on it.
#[derive(Debug, Default)]
pub struct Checker {
    /// Term → the node that led it.
    leaders: HashMap<u64, NodeId>,
    /// `(index, term)` → (payload digest, term of the previous entry).
    persisted: HashMap<(u64, u64), (u64, u64)>,
    /// Committed slots by index (position `i - 1`).
    committed: Vec<CommittedSlot>,
    /// Highest index applied anywhere (the canonical sequence's length).
    applied_len: u64,
    /// The reference store, fed the canonical sequence.
    reference: MemMvcc,
    /// The same sequence without its compactions: answers reads at any
    /// past revision (compaction creates no revision, so both agree on
    /// every revision number).
    archive: MemMvcc,
    /// The reference's revision after each canonical index (position
    /// `i - 1`).
    revisions: Vec<i64>,
    /// The reference's outcome for every canonical index (position
    /// `i - 1`; `None` for entries that are not commands).
    results: Vec<Option<Applied>>,
    /// Command digest → canonical index, for commands applied so far.
    applied_commands: HashMap<u64, u64>,
    /// Digests of commands clients were told were definitely not applied.
    not_applied: HashSet<u64>,
}

impl Checker {
    /// A checker with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `node` is leader of `term`; on the first sighting of a
    /// leader, checks that its log holds every committed entry.
    pub fn observe_leader(
        &mut self,
        node: NodeId,
        term: u64,
        core: &RaftNode,
    ) -> Result<(), String> {
        match self.leaders.get(&term) {
            Some(&other) if other != node => {
                return Err(format!(
                    "election safety: nodes {other} and {node} both led term {term}"
                ))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.leaders.insert(term, node);
        let snap = core.snapshot_meta().index;
        for (k, slot) in self.committed.iter().enumerate() {
            let index = k as u64 + 1;
            // Leader completeness (§5.4) binds leaders of *later* terms
            // only: a leader of an older term can still be elected late (a
            // replayed vote) without the entries committed after its term.
            if index <= snap || slot.term == 0 || slot.commit_term == 0 || slot.commit_term >= term
            {
                continue;
            }
            match core.term_at(index) {
                Some(t) if t == slot.term => {}
                other => {
                    return Err(format!(
                        "leader completeness: new leader {node} of term {term} has term {other:?} \
                         at committed index {index} (committed term {})",
                        slot.term
                    ))
                }
            }
        }
        Ok(())
    }

    /// Records entries `node` made durable; `prev_term` is the term of the
    /// entry just before the first one (if known).
    pub fn on_persist(
        &mut self,
        node: NodeId,
        prev_term: Option<u64>,
        entries: &[Entry],
    ) -> Result<(), String> {
        let mut prev = prev_term;
        for e in entries {
            let d = digest(&e.payload);
            match (self.persisted.get(&(e.index, e.term)), prev) {
                (Some(&(d0, p0)), Some(p)) if d0 != d || p0 != p => {
                    return Err(format!(
                        "log matching: node {node} persisted ({}, term {}) with digest {d:x} after \
                         term {p}, another node has digest {d0:x} after term {p0}",
                        e.index, e.term
                    ))
                }
                (Some(&(d0, _)), None) if d0 != d => {
                    return Err(format!(
                        "log matching: node {node} persisted a different entry at ({}, term {})",
                        e.index, e.term
                    ))
                }
                (Some(_), _) => {}
                (None, Some(p)) => {
                    self.persisted.insert((e.index, e.term), (d, p));
                }
                (None, None) => {}
            }
            prev = Some(e.term);
        }
        Ok(())
    }

    fn slot(&mut self, index: u64) -> &mut CommittedSlot {
        let i = (index - 1) as usize;
        if self.committed.len() <= i {
            self.committed.resize(i + 1, CommittedSlot::default());
        }
        &mut self.committed[i]
    }

    /// `node`'s commit index moved from `from` to `to`: records the newly
    /// committed entries' terms and checks them against earlier commits.
    pub fn on_commit(
        &mut self,
        node: NodeId,
        core: &RaftNode,
        from: u64,
        to: u64,
    ) -> Result<(), String> {
        let snap = core.snapshot_meta().index;
        let observed_in = core.term();
        for index in (from + 1).max(snap + 1)..=to {
            let Some(term) = core.term_at(index) else {
                return Err(format!(
                    "node {node} committed index {index} beyond its log ({})",
                    core.last_index()
                ));
            };
            let slot = self.slot(index);
            if slot.commit_term == 0 || observed_in < slot.commit_term {
                slot.commit_term = observed_in;
            }
            if slot.term == 0 {
                slot.term = term;
            } else if slot.term != term {
                return Err(format!(
                    "committed entry lost: node {node} committed index {index} with term {term}, \
                     but term {} was committed there before",
                    slot.term
                ));
            }
        }
        Ok(())
    }

    /// `node` applied `entries` with `outcomes` (entries at or below
    /// `skipped_upto` were already applied there and skipped): checks them
    /// against the canonical sequence, extending it (and the reference
    /// store) on first application, and checks the replica's outcome of
    /// each entry against the reference's.
    pub fn on_apply(
        &mut self,
        node: NodeId,
        entries: &[Entry],
        outcomes: &[EntryOutcome],
        skipped_upto: u64,
    ) -> Result<(), String> {
        if outcomes.len() != entries.len() {
            return Err(format!(
                "node {node} applied {} entries but reported {} outcomes",
                entries.len(),
                outcomes.len()
            ));
        }
        for (e, outcome) in entries.iter().zip(outcomes) {
            let d = digest(&e.payload);
            let slot = self.slot(e.index);
            if slot.term != 0 && slot.term != e.term {
                return Err(format!(
                    "state machine safety: node {node} applied index {} of term {}, committed term is {}",
                    e.index, e.term, slot.term
                ));
            }
            slot.term = e.term;
            if slot.digest != 0 && slot.digest != d {
                return Err(format!(
                    "state machine safety: node {node} applied a different command at index {}",
                    e.index
                ));
            }
            slot.digest = d;
            if e.index == self.applied_len + 1 {
                self.extend(e, d)?;
            } else if e.index > self.applied_len + 1 {
                return Err(format!(
                    "node {node} applied index {} before anyone applied {}",
                    e.index,
                    self.applied_len + 1
                ));
            }
            if e.index <= skipped_upto {
                continue;
            }
            let want = &self.results[(e.index - 1) as usize];
            let same = match (outcome, want) {
                (EntryOutcome::Noop, None) => true,
                (EntryOutcome::Command(got), Some(want)) => got == want,
                _ => false,
            };
            if !same {
                return Err(format!(
                    "state machine safety: node {node} applied index {} with outcome {outcome:?}, \
                     the reference store says {want:?}",
                    e.index
                ));
            }
        }
        Ok(())
    }

    /// Appends `e` (digest `d`) to the canonical sequence.
    fn extend(&mut self, e: &Entry, d: u64) -> Result<(), String> {
        self.applied_len = e.index;
        let result = match &e.payload {
            EntryPayload::Noop => None,
            EntryPayload::Command(bytes) => {
                if self.not_applied.contains(&d) {
                    return Err(format!(
                        "a write a client was told was not applied was applied at {}",
                        e.index
                    ));
                }
                self.applied_commands.insert(d, e.index);
                Some(match Command::decode(bytes) {
                    Ok(cmd) => {
                        if !matches!(cmd, Command::Compact(_)) {
                            self.archive.apply(&cmd);
                        }
                        self.reference.apply(&cmd)
                    }
                    Err(why) => Applied {
                        answer: Err(KvError::MalformedCommand(why.to_string())),
                        events: Vec::new(),
                        compact_revision: None,
                    },
                })
            }
        };
        self.results.push(result);
        self.revisions.push(self.reference.revision());
        if self.archive.revision() != self.reference.revision() {
            return Err(format!(
                "checker: the archive is at revision {} but the reference at {}",
                self.archive.revision(),
                self.reference.revision()
            ));
        }
        Ok(())
    }

    /// The reference's revision after applying the canonical sequence up
    /// to `index` (which must have been applied somewhere).
    pub fn revision_at(&self, index: u64) -> i64 {
        match index.checked_sub(1) {
            None => 1,
            Some(i) => self.revisions[i as usize],
        }
    }

    /// What `req` answers on a replica that has applied the canonical
    /// sequence up to `index`: the reference's answer (reads at any
    /// revision ≤ that point; a revision of 0 means that point). Compaction
    /// is the caller's to check (the archive never compacts).
    pub fn read_at(
        &self,
        req: &RangeRequest,
        index: u64,
    ) -> Result<Revisioned<RangeResponse>, KvError> {
        let current = self.revision_at(index);
        if req.revision > current {
            return Err(KvError::FutureRevision);
        }
        let mut req = req.clone();
        if req.revision == 0 {
            req.revision = current;
        }
        self.archive.range(&req).map(|r| Revisioned {
            revision: current,
            body: r.body,
        })
    }

    /// The newest mod revision of `key` in the canonical sequence so far
    /// (0 = absent).
    pub fn mod_revision_now(&self, key: &[u8]) -> i64 {
        let req = RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.archive
            .range(&req)
            .ok()
            .and_then(|r| r.body.kvs.first().map(|kv| kv.mod_revision))
            .unwrap_or(0)
    }

    /// A client was told its write (command digest `d`) was applied at
    /// `index` with `answer`: checks both against the canonical sequence.
    pub fn check_acknowledged(
        &self,
        d: u64,
        index: u64,
        answer: &Result<Revisioned<CommandResponse>, KvError>,
    ) -> Result<(), String> {
        if index > self.applied_len {
            return Err(format!(
                "a write was acknowledged at index {index}, beyond every replica's applied index"
            ));
        }
        let at = self.committed[(index - 1) as usize].digest;
        if at != d {
            return Err(format!(
                "a write was acknowledged at index {index}, where another command was applied"
            ));
        }
        let want = self.results[(index - 1) as usize]
            .as_ref()
            .map(|a| &a.answer);
        if want != Some(answer) {
            return Err(format!(
                "the write at index {index} was acknowledged with {answer:?}, the reference \
                 store says {want:?}"
            ));
        }
        Ok(())
    }

    /// A client was told its write (digest `d`, of a command no other
    /// client sends) was definitely not applied.
    pub fn check_not_applied(&mut self, d: u64) -> Result<(), String> {
        if let Some(at) = self.applied_commands.get(&d) {
            return Err(format!(
                "a client was told its write was not applied, but it was applied at {at}"
            ));
        }
        self.not_applied.insert(d);
        Ok(())
    }

    /// Where a command (by digest; meaningful for commands no other client
    /// sends) was applied in the canonical sequence.
    pub fn applied_at(&self, d: u64) -> Option<u64> {
        self.applied_commands.get(&d).copied()
    }

    /// The committed term at `index`, once known.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        let slot = self.committed.get(index.checked_sub(1)? as usize)?;
        (slot.term != 0).then_some(slot.term)
    }

    /// Length of the canonical applied sequence.
    pub fn applied_len(&self) -> u64 {
        self.applied_len
    }

    /// The reference store (the canonical sequence applied).
    pub fn reference(&self) -> &MemMvcc {
        &self.reference
    }

    /// Number of terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, term: u64, v: &str) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Command(
                Command::Put(crate::kv::PutRequest {
                    key: b"k".to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .encode(),
            ),
        }
    }

    fn outcome_of(entries: &[Entry]) -> Vec<EntryOutcome> {
        let mut model = MemMvcc::new();
        entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Noop => EntryOutcome::Noop,
                EntryPayload::Command(b) => {
                    EntryOutcome::Command(model.apply(&Command::decode(b).unwrap()))
                }
            })
            .collect()
    }

    fn key_k() -> RangeRequest {
        RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn divergent_application_is_caught() {
        let mut c = Checker::new();
        let a = [put(1, 1, "a")];
        c.on_apply(1, &a, &outcome_of(&a), 0).unwrap();
        let b = [put(1, 1, "b")];
        assert!(c.on_apply(2, &b, &outcome_of(&b), 0).is_err());
        let now = c.read_at(&key_k(), 1).unwrap();
        assert_eq!(now.revision, 2);
        assert_eq!(now.body.kvs[0].value, b"a");
        assert!(c.read_at(&key_k(), 0).unwrap().body.kvs.is_empty());
    }

    #[test]
    fn a_replica_with_a_different_outcome_is_caught() {
        let mut c = Checker::new();
        let a = [put(1, 1, "a"), put(2, 1, "b")];
        c.on_apply(1, &a, &outcome_of(&a), 0).unwrap();
        // Same commands, but the replica claims the second changed nothing.
        let mut wrong = outcome_of(&a);
        if let EntryOutcome::Command(applied) = &mut wrong[1] {
            applied.events.clear();
        }
        assert!(c.on_apply(2, &a, &wrong, 0).is_err());
        // Skipped entries are not compared.
        assert!(c.on_apply(3, &a, &wrong, 2).is_ok());
    }

    #[test]
    fn log_matching_violation_is_caught() {
        let mut c = Checker::new();
        c.on_persist(1, Some(0), &[put(1, 1, "a"), put(2, 1, "b")])
            .unwrap();
        c.on_persist(2, Some(0), &[put(1, 1, "a")]).unwrap();
        assert!(c.on_persist(3, Some(1), &[put(2, 1, "c")]).is_err());
    }
}
