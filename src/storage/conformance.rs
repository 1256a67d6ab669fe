//! A conformance suite for the storage traits: one set of checks that every
//! implementation of [`LogStore`] and [`StateMachine`] must pass, run
//! against the in-memory stores of the simulation ([`super::mem`]) and the
//! sled store of a real node ([`super::SledStore`]) by
//! `tests/storage_conformance.rs`. What the simulation proves with the
//! in-memory stores therefore holds for the stores production runs.
//!
//! # Using it
//!
//! An implementation provides a [`StoreFactory`]: how to make a fresh,
//! empty pair of stores, and how to close and reopen a pair (a clean
//! restart). Then
//!
//! ```ignore
//! mod my_store {
//!     raftkv::storage_conformance_tests!(MyFactory::new());
//! }
//! ```
//!
//! expands to one `#[test]` per case; the expression is evaluated afresh
//! for every case. The whole store the Raft loop runs on (the snapshot
//! operations of [`super::SnapshotStore`] with the log and state machine)
//! has its own cases in [`node_store`], with their own factory and macro.
//!
//! # Adding a case
//!
//! Write a `pub fn case_name<F: StoreFactory>(f: &mut F)` below that
//! panics (with an `assert!` naming the rule) when the stores break a
//! rule, and add `case_name` to the list in
//! [`storage_conformance_tests`](crate::storage_conformance_tests).
//! A unit test fails if a case is missing from the list. One function per
//! property, so a failure names the rule that broke.
//!
//! # What the cases assume (where the two stores legitimately differ)
//!
//! The cases drive the stores only with states a Raft node can produce,
//! because the sled store checks more than the traits promise:
//!
//! * Terms never decrease along the log and the hard state's term is at
//!   least the last entry's (sled verifies both when it opens).
//! * A log is compacted only up to the applied index, as the node does:
//!   the sled store is its own snapshot (the key-value tree), so it refuses
//!   to compact beyond what it has applied; the in-memory log store does
//!   not know the state machine and cannot check that.
//! * A snapshot is installed in the documented order, `restore` then
//!   `reset_to_snapshot`. The sled store's `load` also *finishes* an
//!   install interrupted between the two (the trait allows that, it does
//!   not require it), so that case is tested for sled alone
//!   (`tests/storage_snapshot.rs`).
//! * Both stores write the same framed, checksummed image
//!   ([`super::image`]) with their own opaque items (sled: the raw records
//!   of its MVCC tree; memory: its own records), so an image is restored
//!   into a store of the kind that made it; damage is tested here as truncation, an empty
//!   image and an image of another snapshot, and bit flips in streamed
//!   images by [`node_store`].
//! * Crashes are not clean restarts: the in-memory state machine models a
//!   crash explicitly ([`super::mem::MemStateMachine::crash`] loses the
//!   applies since the last flush), the sled store is crash-tested with
//!   real processes (`tests/storage_crash.rs`). [`StoreFactory::reopen`]
//!   is a *clean* restart.

pub mod node_store;

use super::mem::{MemLogStore, MemStateMachine};
use super::{EntryOutcome, LogStore, RecoveredLog, StateMachine, StorageError};
use crate::kv::{self, Command, MemMvcc};
use crate::raft::{Entry, EntryPayload, HardState, SnapshotMeta};

/// A log store and the state machine that goes with it (for the sled
/// store: two handles of the same database).
#[derive(Debug)]
pub struct Stores<L, M> {
    /// The Raft log, hard state and snapshot metadata.
    pub log: L,
    /// The applied key-value data.
    pub sm: M,
}

/// Makes the stores under test.
pub trait StoreFactory {
    /// The log store.
    type Log: LogStore;
    /// The state machine.
    type Sm: StateMachine;

    /// A fresh, empty pair of stores, independent of every other one made
    /// by this factory.
    fn new_store(&mut self) -> Stores<Self::Log, Self::Sm>;

    /// Closes `stores` cleanly and opens them again from what they made
    /// durable, as a node restarting would.
    fn reopen(&mut self, stores: Stores<Self::Log, Self::Sm>) -> Stores<Self::Log, Self::Sm>;
}

/// The in-memory stores of the simulation. A clean restart keeps the log
/// store (it holds only durable state) and the state machine's flushed
/// state, after a flush.
#[derive(Debug, Default)]
pub struct MemFactory;

impl StoreFactory for MemFactory {
    type Log = MemLogStore;
    type Sm = MemStateMachine;

    fn new_store(&mut self) -> Stores<MemLogStore, MemStateMachine> {
        Stores {
            log: MemLogStore::new(),
            sm: MemStateMachine::new(),
        }
    }

    fn reopen(
        &mut self,
        stores: Stores<MemLogStore, MemStateMachine>,
    ) -> Stores<MemLogStore, MemStateMachine> {
        let Stores { log, mut sm } = stores;
        // A clean shutdown flushes; the restart keeps only durable state.
        sm.flush();
        sm.crash();
        Stores { log, sm }
    }
}

/// Expands to one `#[test]` per conformance case, each running the case
/// against stores made by a fresh factory (the expression given).
#[macro_export]
macro_rules! storage_conformance_tests {
    ($factory:expr) => {
        $crate::storage_conformance_tests!(@cases $factory;
            new_stores_are_empty,
            saved_entries_and_hard_state_load_back,
            hard_state_alone_leaves_the_log,
            entries_alone_leave_the_hard_state,
            empty_save_changes_nothing,
            save_truncates_the_conflicting_suffix,
            save_from_the_first_index_replaces_the_whole_log,
            save_refuses_a_gap,
            save_refuses_non_contiguous_entries,
            save_refuses_entries_covered_by_the_snapshot,
            compaction_drops_the_prefix,
            compaction_to_the_last_index_empties_the_log,
            saves_after_compaction_append_and_truncate,
            compaction_inside_one_saved_batch,
            repeated_compactions_keep_the_tail,
            compaction_at_or_below_the_snapshot_is_a_no_op,
            compaction_beyond_the_last_index_is_refused,
            compaction_with_another_term_is_refused,
            install_replaces_log_and_state,
            install_inside_the_log_deletes_every_entry,
            apply_matches_the_reference_model,
            compare_and_swap_outcomes,
            noop_and_undecodable_entries_only_advance_the_applied_index,
            apply_skips_entries_at_or_below_the_applied_index,
            apply_refuses_a_gap_and_changes_nothing,
            data_and_applied_index_survive_reopen_together,
            range_reads_the_present_and_the_past,
            compaction_keeps_reads_exact_and_bounds_history,
            snapshot_carries_history_and_revision,
            snapshot_describes_the_applied_index,
            snapshot_restore_round_trip,
            restore_replaces_other_data_entirely,
            restore_refuses_a_bad_image_and_changes_nothing,
            reopen_recovers_everything,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut factory = $factory;
                $crate::storage::conformance::$case(&mut factory);
            }
        )*
    };
}

// ------------------------------------------------------------ helpers --

fn ok<T>(r: Result<T, StorageError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term }
}

fn command(index: u64, term: u64, cmd: &Command) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(cmd.encode()),
    }
}

fn put(index: u64, term: u64, key: &str, value: &str) -> Entry {
    put_cas(index, term, key, value, None)
}

/// A put; with `cas`, only if the key's mod revision is `cas` (0 =
/// absent), as the single-key API sends it (a transaction).
fn put_cas(index: u64, term: u64, key: &str, value: &str, cas: Option<i64>) -> Entry {
    let op = kv::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    command(index, term, &cas_or_plain(key, cas, kv::RequestOp::Put(op)))
}

/// A delete of one key, with `cas` as for [`put_cas`].
fn del(index: u64, term: u64, key: &str, cas: Option<i64>) -> Entry {
    let op = kv::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        prev_kv: true,
    };
    command(
        index,
        term,
        &cas_or_plain(key, cas, kv::RequestOp::DeleteRange(op)),
    )
}

fn cas_or_plain(key: &str, cas: Option<i64>, op: kv::RequestOp) -> Command {
    match (cas, op) {
        (None, kv::RequestOp::Put(p)) => Command::Put(p),
        (None, kv::RequestOp::DeleteRange(d)) => Command::DeleteRange(d),
        (None, other) => Command::Txn(kv::TxnRequest {
            success: vec![other],
            ..Default::default()
        }),
        (Some(m), op) => Command::Txn(kv::TxnRequest {
            compare: vec![kv::Compare {
                key: key.as_bytes().to_vec(),
                range_end: Vec::new(),
                result: kv::CompareResult::Equal,
                target: kv::CompareTarget::ModRevision(m),
            }],
            success: vec![op],
            failure: Vec::new(),
        }),
    }
}

/// The revision each outcome created (`None`: a no-op entry or a command
/// that changed nothing).
fn revisions(outcomes: &[EntryOutcome]) -> Vec<Option<i64>> {
    outcomes
        .iter()
        .map(|o| match o {
            EntryOutcome::Noop => None,
            EntryOutcome::Command(a) => a.new_revision(),
        })
        .collect()
}

fn noop(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Noop,
    }
}

/// Entries `lo..=hi` of `term`, each a put of `k{i}` (value names the
/// term, so overwritten entries are told apart).
fn puts(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi)
        .map(|i| put(i, term, &format!("k{i}"), &format!("v{i}-t{term}")))
        .collect()
}

fn load<L: LogStore>(log: &L) -> RecoveredLog {
    ok(log.load(), "load")
}

/// A key, its value and its mod revision.
type Item = (String, String, i64);

/// Every key with value and mod revision, in key order (a range over
/// everything at the current revision).
fn all_items<M: StateMachine>(sm: &M) -> Vec<Item> {
    let every = kv::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let r = sm
        .range(&every)
        .unwrap_or_else(|e| panic!("range of everything failed: {e}"));
    assert!(!r.body.more, "an unlimited range says more keys follow");
    r.body.kvs.iter().map(item_of).collect()
}

fn item_of(kv: &kv::KeyValue) -> Item {
    (
        String::from_utf8_lossy(&kv.key).into_owned(),
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.mod_revision,
    )
}

fn item(key: &str, value: &str, mod_revision: i64) -> Item {
    (key.into(), value.into(), mod_revision)
}

/// One key's value and mod revision.
fn value_of<M: StateMachine>(sm: &M, key: &str) -> Option<(String, i64)> {
    ok(sm.get(key.as_bytes()), "get").map(|kv| {
        let (_, v, m) = item_of(&kv);
        (v, m)
    })
}

/// Checks what `load` returns.
fn assert_log<L: LogStore>(
    log: &L,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: &[Entry],
    when: &str,
) {
    let got = load(log);
    assert_eq!(got.hard_state, hard_state, "hard state {when}");
    assert_eq!(got.snapshot, snapshot, "snapshot metadata {when}");
    assert_eq!(
        got.entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        "indexes and terms of the log {when}"
    );
    assert_eq!(got.entries, entries, "log entries {when}");
}

/// A store whose log holds `entries` (saved with a hard state of their
/// last term) and whose state machine has applied all of them.
fn applied_store<F: StoreFactory>(f: &mut F, entries: &[Entry]) -> Stores<F::Log, F::Sm> {
    store_applied_to(f, entries, entries.len())
}

/// A store whose log holds `entries` and whose state machine has applied
/// the first `n` (the commit index of the hard state). Entries are never
/// overwritten below it, as in Raft.
fn store_applied_to<F: StoreFactory>(
    f: &mut F,
    entries: &[Entry],
    n: usize,
) -> Stores<F::Log, F::Sm> {
    let mut s = f.new_store();
    let term = entries.last().map_or(0, |e| e.term);
    let commit = entries[..n].last().map_or(0, |e| e.index);
    ok(s.log.save(Some(&hs(term, 1, commit)), entries), "save");
    ok(s.sm.apply(&entries[..n]), "apply");
    s
}

/// The reference model: [`MemMvcc`] fed the same entries.
#[derive(Default)]
struct Model {
    data: MemMvcc,
}

impl Model {
    fn apply(&mut self, e: &Entry) -> EntryOutcome {
        let EntryPayload::Command(bytes) = &e.payload else {
            return EntryOutcome::Noop;
        };
        EntryOutcome::Command(match Command::decode(bytes) {
            Ok(cmd) => self.data.apply(&cmd),
            Err(why) => kv::Applied {
                answer: Err(kv::KvError::MalformedCommand(why.to_string())),
                events: Vec::new(),
                compact_revision: None,
            },
        })
    }

    fn items(&self) -> Vec<Item> {
        let every = kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let r = self.data.range(&every).expect("range of the model");
        r.body.kvs.iter().map(item_of).collect()
    }
}

// ------------------------------------------------------ the log store --

/// A new log store loads as term 0, no vote, no snapshot, no entries; a
/// new state machine has applied nothing and holds no key.
pub fn new_stores_are_empty<F: StoreFactory>(f: &mut F) {
    let s = f.new_store();
    assert_log(
        &s.log,
        HardState::default(),
        SnapshotMeta::default(),
        &[],
        "of a new store",
    );
    assert_eq!(s.sm.applied_index(), 0, "applied index of a new store");
    assert_eq!(value_of(&s.sm, "k"), None);
    assert!(all_items(&s.sm).is_empty(), "a new store lists keys");
    assert_eq!(ok(s.sm.revision(), "revision"), 1, "a new store's revision");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        HardState::default(),
        SnapshotMeta::default(),
        &[],
        "of a new store after reopen",
    );
}

/// `save` of a hard state and entries, then of more entries: `load`
/// returns them, in order, before and after a reopen.
pub fn saved_entries_and_hard_state_load_back<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut entries = vec![noop(1, 2)];
    entries.extend(puts(2, 5, 2));
    ok(s.log.save(Some(&hs(2, 3, 1)), &entries), "first save");
    assert_log(&s.log, hs(2, 3, 1), SnapshotMeta::default(), &entries, "");
    let more = puts(6, 8, 2);
    ok(s.log.save(None, &more), "appending save");
    entries.extend(more);
    assert_log(
        &s.log,
        hs(2, 3, 1),
        SnapshotMeta::default(),
        &entries,
        "after an append",
    );
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(2, 3, 1),
        SnapshotMeta::default(),
        &entries,
        "after reopen",
    );
}

/// `save(Some(hs), [])` stores the hard state and leaves the log as it is.
pub fn hard_state_alone_leaves_the_log<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(
        s.log.save(Some(&hs(1, 0, 0)), &[]),
        "hard state on an empty log",
    );
    assert_log(&s.log, hs(1, 0, 0), SnapshotMeta::default(), &[], "");
    let entries = puts(1, 4, 1);
    ok(s.log.save(Some(&hs(1, 2, 0)), &entries), "save");
    ok(s.log.save(Some(&hs(3, 0, 2)), &[]), "hard state alone");
    assert_log(
        &s.log,
        hs(3, 0, 2),
        SnapshotMeta::default(),
        &entries,
        "after a hard-state-only save",
    );
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(3, 0, 2),
        SnapshotMeta::default(),
        &entries,
        "after reopen",
    );
}

/// `save(None, entries)` appends and leaves the hard state as it is.
pub fn entries_alone_leave_the_hard_state<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(s.log.save(Some(&hs(2, 1, 0)), &[]), "hard state");
    let entries = puts(1, 3, 2);
    ok(s.log.save(None, &entries), "entries alone");
    assert_log(&s.log, hs(2, 1, 0), SnapshotMeta::default(), &entries, "");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(2, 1, 0),
        SnapshotMeta::default(),
        &entries,
        "after reopen",
    );
}

/// `save(None, [])` is accepted and changes nothing.
pub fn empty_save_changes_nothing<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(s.log.save(None, &[]), "empty save on a new store");
    assert_log(
        &s.log,
        HardState::default(),
        SnapshotMeta::default(),
        &[],
        "",
    );
    let entries = puts(1, 2, 1);
    ok(s.log.save(Some(&hs(1, 0, 0)), &entries), "save");
    ok(s.log.save(None, &[]), "empty save");
    assert_log(
        &s.log,
        hs(1, 0, 0),
        SnapshotMeta::default(),
        &entries,
        "after an empty save",
    );
}

/// Entries saved from an index the log already holds replace every stored
/// entry from that index on, including the ones after the new entries.
pub fn save_truncates_the_conflicting_suffix<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let old = puts(1, 10, 1);
    ok(s.log.save(Some(&hs(1, 0, 0)), &old), "save 1..=10");
    // A leader of term 2 overwrites from 6 with two entries: 8..=10 go.
    let new = puts(6, 7, 2);
    ok(s.log.save(Some(&hs(2, 0, 5)), &new), "overwrite from 6");
    let mut want = old[..5].to_vec();
    want.extend(new.iter().cloned());
    assert_log(
        &s.log,
        hs(2, 0, 5),
        SnapshotMeta::default(),
        &want,
        "after overwriting 6..=10 with 6..=7",
    );
    // Overwriting just the last entry, and appending behind it.
    let newer = puts(7, 9, 3);
    ok(s.log.save(Some(&hs(3, 0, 5)), &newer), "overwrite from 7");
    want.truncate(6);
    want.extend(newer.iter().cloned());
    assert_log(
        &s.log,
        hs(3, 0, 5),
        SnapshotMeta::default(),
        &want,
        "after overwriting the last entry",
    );
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(3, 0, 5),
        SnapshotMeta::default(),
        &want,
        "after reopen",
    );
}

/// A save starting at index 1 replaces the whole log.
pub fn save_from_the_first_index_replaces_the_whole_log<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(s.log.save(Some(&hs(1, 0, 0)), &puts(1, 5, 1)), "save");
    let new = vec![noop(1, 2)];
    ok(s.log.save(Some(&hs(2, 2, 0)), &new), "overwrite from 1");
    assert_log(&s.log, hs(2, 2, 0), SnapshotMeta::default(), &new, "");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(2, 2, 0),
        SnapshotMeta::default(),
        &new,
        "after reopen",
    );
}

/// Entries that would leave a hole after the last stored one are refused,
/// and the refused save writes nothing (not its hard state either).
pub fn save_refuses_a_gap<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    assert!(
        s.log.save(Some(&hs(1, 0, 0)), &puts(2, 3, 1)).is_err(),
        "a new log accepted entries starting at 2"
    );
    assert_log(
        &s.log,
        HardState::default(),
        SnapshotMeta::default(),
        &[],
        "after a refused save on a new log",
    );
    let entries = puts(1, 3, 1);
    ok(s.log.save(Some(&hs(1, 0, 0)), &entries), "save");
    assert!(
        s.log.save(Some(&hs(2, 0, 0)), &puts(5, 6, 2)).is_err(),
        "a save leaving a hole at 4 was accepted"
    );
    assert_log(
        &s.log,
        hs(1, 0, 0),
        SnapshotMeta::default(),
        &entries,
        "after a refused save",
    );
}

/// Entries whose indexes are not consecutive are refused as a whole.
pub fn save_refuses_non_contiguous_entries<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let entries = puts(1, 3, 1);
    ok(s.log.save(Some(&hs(1, 0, 0)), &entries), "save");
    let mut bad = puts(4, 6, 1);
    bad[2].index = 7;
    assert!(
        s.log.save(None, &bad).is_err(),
        "entries 4, 5, 7 were accepted"
    );
    let mut backwards = puts(4, 5, 1);
    backwards.swap(0, 1);
    assert!(
        s.log.save(None, &backwards).is_err(),
        "entries 5, 4 were accepted"
    );
    assert_log(
        &s.log,
        hs(1, 0, 0),
        SnapshotMeta::default(),
        &entries,
        "after refused saves",
    );
}

/// After a compaction to `n`, a save starting at or below `n` is refused;
/// one starting at `n + 1` overwrites the first live entry.
pub fn save_refuses_entries_covered_by_the_snapshot<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 6, 1);
    let mut s = store_applied_to(f, &entries, 3);
    ok(s.log.compact(meta(3, 1)), "compact to 3");
    for first in [1, 2, 3] {
        assert!(
            s.log.save(None, &puts(first, 6, 1)).is_err(),
            "a save from {first} was accepted below the snapshot at 3"
        );
    }
    assert_log(&s.log, hs(1, 1, 3), meta(3, 1), &entries[3..], "");
    let new = puts(4, 4, 2);
    ok(s.log.save(Some(&hs(2, 0, 3)), &new), "overwrite from 4");
    assert_log(
        &s.log,
        hs(2, 0, 3),
        meta(3, 1),
        &new,
        "after overwriting the first live entry",
    );
}

// --------------------------------------------------------- compaction --

/// Compaction to `n` records the snapshot; `load` no longer returns the
/// entries up to `n` and still returns the ones after it, also after a
/// reopen.
pub fn compaction_drops_the_prefix<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 10, 1);
    let mut s = applied_store(f, &entries);
    ok(s.log.compact(meta(6, 1)), "compact to 6");
    assert_log(&s.log, hs(1, 1, 10), meta(6, 1), &entries[6..], "");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(1, 1, 10),
        meta(6, 1),
        &entries[6..],
        "after reopen",
    );
    assert_eq!(s.sm.applied_index(), 10, "applied index after reopen");
}

/// Compaction to the last index leaves an empty log after the snapshot,
/// and the log continues at the next index.
pub fn compaction_to_the_last_index_empties_the_log<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 5, 1);
    let mut s = applied_store(f, &entries);
    ok(s.log.compact(meta(5, 1)), "compact to 5");
    assert_log(&s.log, hs(1, 1, 5), meta(5, 1), &[], "");
    let s = f.reopen(s);
    assert_log(&s.log, hs(1, 1, 5), meta(5, 1), &[], "after reopen");
    let mut s = s;
    assert!(
        s.log.save(None, &puts(7, 7, 1)).is_err(),
        "a save leaving a hole after the snapshot was accepted"
    );
    let next = puts(6, 7, 2);
    ok(
        s.log.save(Some(&hs(2, 0, 5)), &next),
        "save after the snapshot",
    );
    assert_log(&s.log, hs(2, 0, 5), meta(5, 1), &next, "after a save");
}

/// After a compaction, saves append, overwrite a suffix and overwrite the
/// first live entry as on a log that was never compacted.
pub fn saves_after_compaction_append_and_truncate<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 10, 1);
    let mut s = store_applied_to(f, &entries, 6);
    ok(s.log.compact(meta(6, 1)), "compact to 6");
    let mut want = entries[6..].to_vec();
    let appended = puts(11, 12, 1);
    ok(s.log.save(None, &appended), "append after compaction");
    want.extend(appended);
    assert_log(&s.log, hs(1, 1, 6), meta(6, 1), &want, "after an append");
    let overwrite = puts(9, 9, 2);
    ok(
        s.log.save(Some(&hs(2, 0, 8)), &overwrite),
        "overwrite from 9",
    );
    want.truncate(2);
    want.extend(overwrite);
    assert_log(&s.log, hs(2, 0, 8), meta(6, 1), &want, "after an overwrite");
    let first = puts(7, 8, 3);
    ok(s.log.save(Some(&hs(3, 0, 6)), &first), "overwrite from 7");
    assert_log(
        &s.log,
        hs(3, 0, 6),
        meta(6, 1),
        &first,
        "after overwriting from the first live entry",
    );
    let s = f.reopen(s);
    assert_log(&s.log, hs(3, 0, 6), meta(6, 1), &first, "after reopen");
}

/// Entries saved by one call may be compacted part-way (a store that
/// keeps a save as one record must split it), then overwritten and
/// compacted again.
pub fn compaction_inside_one_saved_batch<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 10, 1);
    let mut s = store_applied_to(f, &entries, 5);
    ok(s.log.compact(meta(5, 1)), "compact to 5");
    assert_log(&s.log, hs(1, 1, 5), meta(5, 1), &entries[5..], "");
    let mut s = f.reopen(s);
    assert_log(
        &s.log,
        hs(1, 1, 5),
        meta(5, 1),
        &entries[5..],
        "after reopen",
    );
    // Overwrite from 7, inside what was saved together with 1..=6.
    let new = puts(7, 8, 2);
    ok(s.log.save(Some(&hs(2, 0, 6)), &new), "overwrite from 7");
    let mut want = vec![entries[5].clone()];
    want.extend(new.iter().cloned());
    assert_log(&s.log, hs(2, 0, 6), meta(5, 1), &want, "after an overwrite");
    ok(s.sm.apply(&want), "apply 6..=8");
    ok(s.log.compact(meta(7, 2)), "compact to 7");
    assert_log(&s.log, hs(2, 0, 6), meta(7, 2), &want[2..], "");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(2, 0, 6),
        meta(7, 2),
        &want[2..],
        "after the second reopen",
    );
}

/// Many compactions, each followed by saves, keep exactly the entries
/// after the latest snapshot.
pub fn repeated_compactions_keep_the_tail<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut all: Vec<Entry> = Vec::new();
    let mut snapshot = SnapshotMeta::default();
    for round in 0..6u64 {
        let lo = round * 7 + 1;
        let batch = puts(lo, lo + 6, 1);
        ok(s.log.save(Some(&hs(1, 1, lo + 6)), &batch), "save");
        ok(s.sm.apply(&batch), "apply");
        all.extend(batch);
        // Compact to somewhere inside the batch just saved.
        snapshot = meta(lo + round % 7, 1);
        ok(s.log.compact(snapshot), "compact");
        let tail: Vec<Entry> = all
            .iter()
            .filter(|e| e.index > snapshot.index)
            .cloned()
            .collect();
        assert_log(
            &s.log,
            hs(1, 1, lo + 6),
            snapshot,
            &tail,
            &format!("after compaction round {round}"),
        );
    }
    let s = f.reopen(s);
    let tail: Vec<Entry> = all
        .into_iter()
        .filter(|e| e.index > snapshot.index)
        .collect();
    assert_log(&s.log, hs(1, 1, 42), snapshot, &tail, "after reopen");
}

/// Compacting to the current snapshot index or below it is accepted and
/// changes nothing.
pub fn compaction_at_or_below_the_snapshot_is_a_no_op<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 8, 1);
    let mut s = applied_store(f, &entries);
    ok(s.log.compact(meta(5, 1)), "compact to 5");
    ok(s.log.compact(meta(5, 1)), "compact to 5 again");
    ok(s.log.compact(meta(3, 1)), "compact to 3");
    assert_log(&s.log, hs(1, 1, 8), meta(5, 1), &entries[5..], "");
}

/// Compaction beyond the last stored entry is refused and changes
/// nothing.
pub fn compaction_beyond_the_last_index_is_refused<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 5, 1);
    let mut s = applied_store(f, &entries);
    assert!(
        s.log.compact(meta(7, 1)).is_err(),
        "compaction to 7 of a log ending at 5 was accepted"
    );
    assert_log(&s.log, hs(1, 1, 5), SnapshotMeta::default(), &entries, "");
    ok(
        s.log.save(None, &puts(6, 6, 1)),
        "save after a refused compaction",
    );
}

/// A snapshot whose term differs from the log's term at its index would
/// make the log inconsistent: refused, nothing changes.
pub fn compaction_with_another_term_is_refused<F: StoreFactory>(f: &mut F) {
    let mut entries = puts(1, 3, 1);
    entries.extend(puts(4, 6, 2));
    let mut s = applied_store(f, &entries);
    assert!(
        s.log.compact(meta(5, 1)).is_err(),
        "compaction to 5 with term 1 was accepted where the log has term 2"
    );
    assert_log(&s.log, hs(2, 1, 6), SnapshotMeta::default(), &entries, "");
    ok(s.log.compact(meta(5, 2)), "compaction with the right term");
}

// ------------------------------------------------- snapshot install --

/// Installing a leader's snapshot (`restore`, then `reset_to_snapshot`)
/// replaces the key-value data and the whole log; the hard state stays;
/// saves and applies continue after the snapshot, also after a reopen.
pub fn install_replaces_log_and_state<F: StoreFactory>(f: &mut F) {
    // The leader's state at 8.
    let mut leader_log = vec![noop(1, 1)];
    leader_log.extend(puts(2, 6, 1));
    leader_log.push(put(7, 3, "only-leader", "x"));
    leader_log.push(del(8, 3, "k2", None));
    let leader = applied_store(f, &leader_log);
    let (m, image) = ok(leader.sm.snapshot(), "snapshot");
    assert_eq!(m, meta(8, 3), "snapshot of the leader");

    // A follower with a shorter, partly conflicting log and other data.
    let mut follower_log = puts(1, 3, 1);
    follower_log.push(put(4, 2, "only-follower", "y"));
    let mut s = applied_store(f, &follower_log);
    ok(s.log.save(Some(&hs(3, 2, 4)), &[]), "follower hard state");
    ok(s.sm.restore(m, &image), "restore");
    ok(s.log.reset_to_snapshot(m), "reset_to_snapshot");
    assert_log(&s.log, hs(3, 2, 4), m, &[], "after the install");
    assert_eq!(s.sm.applied_index(), 8, "applied index after the install");
    assert_eq!(all_items(&s.sm), all_items(&leader.sm), "installed data");
    assert_eq!(value_of(&s.sm, "only-follower"), None);
    assert_eq!(
        ok(s.sm.revision(), "revision"),
        ok(leader.sm.revision(), "revision"),
        "the revision comes with the image"
    );

    let s = f.reopen(s);
    assert_log(&s.log, hs(3, 2, 4), m, &[], "after reopen");
    assert_eq!(s.sm.applied_index(), 8, "applied index after reopen");
    assert_eq!(all_items(&s.sm), all_items(&leader.sm), "data after reopen");

    let mut s = s;
    let next = vec![put(9, 3, "after", "z")];
    ok(s.log.save(None, &next), "save after the install");
    // The leader's data: 5 puts, a put and a delete after revision 1.
    assert_eq!(
        revisions(&ok(s.sm.apply(&next), "apply after the install")),
        vec![Some(9)]
    );
    assert_log(&s.log, hs(3, 2, 4), m, &next, "after a save");
    assert_eq!(
        value_of(&s.sm, "after"),
        Some(("z".to_string(), 9)),
        "applied after the install"
    );
}

/// `reset_to_snapshot` deletes every entry, also those after the
/// snapshot's index.
pub fn install_inside_the_log_deletes_every_entry<F: StoreFactory>(f: &mut F) {
    let entries = puts(1, 10, 1);
    let leader = applied_store(f, &entries[..6]);
    let (m, image) = ok(leader.sm.snapshot(), "snapshot");
    assert_eq!(m, meta(6, 1));
    let mut s = applied_store(f, &entries[..4]);
    ok(s.log.save(None, &entries[4..]), "save 5..=10");
    ok(s.sm.restore(m, &image), "restore");
    ok(s.log.reset_to_snapshot(m), "reset_to_snapshot");
    assert_log(&s.log, hs(1, 1, 4), m, &[], "after the install");
    assert_eq!(s.sm.applied_index(), 6);
    let s = f.reopen(s);
    assert_log(&s.log, hs(1, 1, 4), m, &[], "after reopen");
    assert_eq!(all_items(&s.sm), all_items(&leader.sm), "data after reopen");
}

// ---------------------------------------------------- state machine --

/// Outcomes (answers, events, compactions), data, revisions and history
/// equal the reference model's ([`MemMvcc`]) over a deterministic mix of
/// puts, deletes, range deletes, transactions (compares that hold and fail,
/// reads at past revisions inside them) and compactions, applied in
/// batches of varying size; and again after a reopen.
pub fn apply_matches_the_reference_model<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut model = Model::default();
    let entries = mixed_entries(160, 0x2545_F491_4F6C_DD1D);
    let mut start = 0;
    let mut refused = 0;
    for size in [1usize, 2, 7, 30, 80].iter().cycle() {
        if start == entries.len() {
            break;
        }
        let end = (start + size).min(entries.len());
        let got = ok(s.sm.apply(&entries[start..end]), "apply");
        let want: Vec<EntryOutcome> = entries[start..end].iter().map(|e| model.apply(e)).collect();
        assert_eq!(got, want, "outcomes of entries {}..={end}", start + 1);
        refused += want
            .iter()
            .filter(|o| matches!(o, EntryOutcome::Command(a) if a.answer.is_err()))
            .count();
        assert_eq!(s.sm.applied_index(), end as u64, "applied index");
        assert_eq!(all_items(&s.sm), model.items(), "data after entry {end}");
        assert_eq!(
            ok(s.sm.revision(), "revision"),
            model.data.revision(),
            "revision after entry {end}"
        );
        start = end;
    }
    assert!(refused > 0, "the mix never had a command refused");
    let mut s = f.reopen(s);
    assert_same_history(&s.sm, &model.data, "after reopen");
    // Physical compaction changes no read.
    while !ok(s.sm.compact_step(7), "compact_step") {}
    assert_same_history(&s.sm, &model.data, "after physical compaction");
}

/// `n` entries from seed `x`: a mix over five keys of puts, compare-and-
/// swaps, deletes, range deletes, multi-op transactions (with a range at a
/// past revision), no-ops and compactions.
fn mixed_entries(n: u64, mut x: u64) -> Vec<Entry> {
    let mut entries = Vec::new();
    for index in 1..=n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("key{}", x % 5);
        let other = format!("key{}", (x >> 3) % 5);
        // Revisions grow by at most one per entry, so `index` bounds them.
        let rev = ((x >> 20) % index.max(1)) as i64;
        let cas = match (x >> 8) % 4 {
            0 => Some(0),
            1 => Some(rev),
            _ => None,
        };
        entries.push(match (x >> 16) % 10 {
            0 => noop(index, 1),
            1 => del(index, 1, &key, cas),
            2 => command(
                index,
                1,
                &Command::DeleteRange(kv::DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    range_end: b"key4".to_vec(),
                    prev_kv: true,
                }),
            ),
            3 | 4 => command(
                index,
                1,
                &Command::Txn(kv::TxnRequest {
                    compare: vec![kv::Compare {
                        key: key.clone().into_bytes(),
                        range_end: Vec::new(),
                        result: kv::CompareResult::Greater,
                        target: kv::CompareTarget::Version(((x >> 24) % 3) as i64),
                    }],
                    success: vec![
                        kv::RequestOp::Put(kv::PutRequest {
                            key: key.clone().into_bytes(),
                            value: format!("t{index}").into_bytes(),
                            prev_kv: true,
                            ..Default::default()
                        }),
                        kv::RequestOp::Range(kv::RangeRequest {
                            key: b"key".to_vec(),
                            range_end: b"kez".to_vec(),
                            revision: rev,
                            ..Default::default()
                        }),
                        kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                            key: other.clone().into_bytes(),
                            range_end: Vec::new(),
                            prev_kv: false,
                        }),
                    ],
                    failure: vec![kv::RequestOp::Put(kv::PutRequest {
                        key: other.into_bytes(),
                        value: format!("f{index}").into_bytes(),
                        ..Default::default()
                    })],
                }),
            ),
            5 => command(
                index,
                1,
                &Command::Compact(kv::CompactionRequest {
                    revision: rev,
                    physical: false,
                }),
            ),
            _ => put_cas(index, 1, &key, &format!("v{index}"), cas),
        });
    }
    entries
}

/// The store's revision, compact revision, reads at every readable
/// revision and events from the compact revision equal the model's.
fn assert_same_history<M: StateMachine>(sm: &M, model: &MemMvcc, when: &str) {
    let revision = ok(sm.revision(), "revision");
    let compact = ok(sm.compact_revision(), "compact revision");
    assert_eq!(revision, model.revision(), "revision {when}");
    assert_eq!(compact, model.compact_revision(), "compact revision {when}");
    for rev in compact.max(1)..=revision {
        let req = kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        let got = sm.range(&req).map_err(|e| e.to_string());
        let want = model.range(&req).map_err(|e| e.to_string());
        assert_eq!(got, want, "range at revision {rev} {when}");
    }
    let everything = kv::KeyRange::new(&[0], &[0]);
    let got = sm
        .events(compact.max(1), everything, usize::MAX)
        .map_err(|e| e.to_string());
    let want = model
        .events(compact.max(1), everything, usize::MAX)
        .map_err(|e| e.to_string());
    assert_eq!(got, want, "events {when}");
    assert_eq!(
        sm.hash_kv(0).is_ok(),
        true,
        "hash_kv at the current revision {when}"
    );
}

/// Compare-and-swap as the single-key API sends it: a put or delete that
/// runs only if the key's mod revision is the given one (0 = absent).
pub fn compare_and_swap_outcomes<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    // (entry, revision it creates or None, value of "a" after it)
    let cases: Vec<(Entry, Option<i64>)> = vec![
        (put_cas(1, 1, "a", "1", Some(0)), Some(2)), // absent, cas 0
        (put_cas(2, 1, "a", "2", Some(0)), None),    // present, cas 0
        (put_cas(3, 1, "a", "3", Some(2)), Some(3)), // matching cas
        (put_cas(4, 1, "a", "4", Some(2)), None),    // stale cas
        (put_cas(5, 1, "b", "1", Some(7)), None),    // absent, cas ≠ 0
        (del(6, 1, "b", None), None),                // absent: nothing deleted
        (del(7, 1, "b", Some(0)), None),             // absent, cas 0: nothing to delete
        (del(8, 1, "a", Some(2)), None),             // stale cas
        (del(9, 1, "a", Some(3)), Some(4)),          // matching cas
        (put(10, 1, "a", "5"), Some(5)),             // plain put
        (del(11, 1, "a", None), Some(6)),            // plain delete
        (put_cas(12, 1, "a", "6", Some(0)), Some(7)), // absent again
    ];
    let entries: Vec<Entry> = cases.iter().map(|(e, _)| e.clone()).collect();
    let want: Vec<Option<i64>> = cases.into_iter().map(|(_, r)| r).collect();
    // One apply per entry, then the same again on a second store in one
    // batch: the outcome must not depend on how entries are batched.
    let mut one_by_one = Vec::new();
    for e in &entries {
        one_by_one.extend(ok(s.sm.apply(std::slice::from_ref(e)), "apply"));
    }
    assert_eq!(
        revisions(&one_by_one),
        want,
        "revisions, one entry per apply"
    );
    let mut batched = f.new_store();
    let all = ok(batched.sm.apply(&entries), "apply");
    assert_eq!(all, one_by_one, "outcomes, one apply");
    for sm in [&s.sm, &batched.sm] {
        let a = ok(sm.get(b"a"), "get").expect("a exists");
        assert_eq!((a.value.as_slice(), a.mod_revision), (&b"6"[..], 7));
        assert_eq!((a.create_revision, a.version), (7, 1), "a new life");
        assert_eq!(value_of(sm, "b"), None);
        assert_eq!(sm.applied_index(), 12);
    }
}

/// A no-op entry and a command that does not decode change no key but
/// count as applied.
pub fn noop_and_undecodable_entries_only_advance_the_applied_index<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let entries = vec![
        put(1, 1, "k", "v"),
        noop(2, 2),
        Entry {
            index: 3,
            term: 2,
            payload: EntryPayload::Command(vec![0xde, 0xad, 0xbe, 0xef]),
        },
        Entry {
            index: 4,
            term: 2,
            payload: EntryPayload::Command(Vec::new()),
        },
    ];
    let got = ok(s.sm.apply(&entries), "apply");
    assert_eq!(revisions(&got), vec![Some(2), None, None, None]);
    for undecodable in &got[2..] {
        assert!(
            matches!(undecodable, EntryOutcome::Command(a)
                if matches!(a.answer, Err(kv::KvError::MalformedCommand(_)))),
            "an undecodable command is refused as malformed: {undecodable:?}"
        );
    }
    assert_eq!(s.sm.applied_index(), 4);
    assert_eq!(ok(s.sm.revision(), "revision"), 2);
    assert_eq!(all_items(&s.sm), vec![item("k", "v", 2)]);
    assert_eq!(ok(s.sm.snapshot(), "snapshot").0, meta(4, 2));
}

/// Entries at or below the applied index are skipped (reported as
/// `Noop`), whatever they carry; the rest of the batch is applied.
pub fn apply_skips_entries_at_or_below_the_applied_index<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(s.sm.apply(&puts(1, 3, 1)), "apply 1..=3");
    let again = vec![
        put(2, 1, "k2", "changed"),
        del(3, 1, "k3", None),
        put(4, 1, "k4", "new"),
    ];
    let got = ok(s.sm.apply(&again), "apply 2..=4");
    assert_eq!(got[..2], [EntryOutcome::Noop, EntryOutcome::Noop]);
    assert_eq!(revisions(&got), vec![None, None, Some(5)]);
    assert_eq!(
        ok(s.sm.apply(&puts(1, 4, 9)), "apply 1..=4 again"),
        vec![EntryOutcome::Noop; 4]
    );
    assert_eq!(s.sm.applied_index(), 4);
    assert_eq!(
        all_items(&s.sm),
        vec![
            item("k1", "v1-t1", 2),
            item("k2", "v2-t1", 3),
            item("k3", "v3-t1", 4),
            item("k4", "new", 5)
        ]
    );
    let s = f.reopen(s);
    let mut s = s;
    assert_eq!(
        ok(s.sm.apply(&puts(3, 4, 1)), "re-apply after reopen"),
        vec![EntryOutcome::Noop; 2]
    );
    assert_eq!(s.sm.applied_index(), 4);
}

/// An entry that does not follow the applied index is refused, and the
/// whole `apply` changes nothing: neither the entries before it in the
/// batch nor the applied index.
pub fn apply_refuses_a_gap_and_changes_nothing<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    ok(s.sm.apply(&puts(1, 2, 1)), "apply 1..=2");
    assert!(
        s.sm.apply(&puts(4, 4, 1)).is_err(),
        "entry 4 was applied after 2"
    );
    let with_gap = vec![put(3, 1, "k3", "v"), put(5, 1, "k5", "v")];
    assert!(
        s.sm.apply(&with_gap).is_err(),
        "entries 3, 5 were applied after 2"
    );
    assert_eq!(
        s.sm.applied_index(),
        2,
        "applied index after refused applies"
    );
    assert_eq!(value_of(&s.sm, "k3"), None, "a refused apply changed data");
    assert_eq!(all_items(&s.sm).len(), 2);
    assert_eq!(ok(s.sm.revision(), "revision"), 3);
    assert_eq!(
        revisions(&ok(s.sm.apply(&with_gap[..1]), "apply 3")),
        vec![Some(4)]
    );
}

/// The applied index and the data it reflects come back together after a
/// reopen.
pub fn data_and_applied_index_survive_reopen_together<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut model = Model::default();
    for lo in [1u64, 5, 9] {
        let mut batch = puts(lo, lo + 2, 2);
        batch.push(del(lo + 3, 2, &format!("k{lo}"), None));
        if lo == 9 {
            batch.push(noop(lo + 4, 3));
        }
        for e in &batch {
            model.apply(e);
        }
        ok(s.sm.apply(&batch), "apply");
    }
    assert_eq!(s.sm.applied_index(), 13);
    let s = f.reopen(s);
    assert_eq!(s.sm.applied_index(), 13, "applied index after reopen");
    assert_eq!(ok(s.sm.snapshot(), "snapshot").0, meta(13, 3));
    assert_eq!(all_items(&s.sm), model.items(), "data after reopen");
}

/// Range reads: one key, a prefix, `[start, end)`, limit with `more` and
/// `count`, at the current revision and at past ones; a revision above the
/// current one is refused.
pub fn range_reads_the_present_and_the_past<F: StoreFactory>(f: &mut F) {
    let entries = vec![
        put(1, 1, "user/1", "alice"),  // rev 2
        put(2, 1, "user/10", "bob"),   // rev 3
        put(3, 1, "user/2", "carol"),  // rev 4
        put(4, 1, "users", "no"),      // rev 5
        put(5, 1, "user/1", "alice2"), // rev 6
        del(6, 1, "user/10", None),    // rev 7
        put(7, 1, "user/3", "dave"),   // rev 8
    ];
    let s = applied_store(f, &entries);
    let read = |key: &str, end: &[u8], rev: i64, limit: i64| {
        s.sm.range(&kv::RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
            revision: rev,
            limit,
            ..Default::default()
        })
    };
    let items = |r: Result<kv::Revisioned<kv::RangeResponse>, kv::ExecError<StorageError>>| {
        let r = r.unwrap_or_else(|e| panic!("range failed: {e}"));
        (
            r.body.kvs.iter().map(item_of).collect::<Vec<_>>(),
            r.body.more,
            r.body.count,
            r.revision,
        )
    };
    let prefix = kv::prefix_end(b"user/");
    assert_eq!(
        items(read("user/", &prefix, 0, 0)),
        (
            vec![
                item("user/1", "alice2", 6),
                item("user/2", "carol", 4),
                item("user/3", "dave", 8)
            ],
            false,
            3,
            8
        ),
        "prefix now"
    );
    assert_eq!(
        items(read("user/", &prefix, 5, 2)),
        (
            vec![item("user/1", "alice", 2), item("user/10", "bob", 3)],
            true,
            3,
            8
        ),
        "prefix at revision 5, two of three"
    );
    assert_eq!(
        items(read("user/10", b"", 6, 0)).0,
        vec![item("user/10", "bob", 3)],
        "a deleted key before its delete"
    );
    assert!(items(read("user/10", b"", 7, 0)).0.is_empty());
    assert_eq!(
        items(read("user/2", b"users", 0, 0)).0,
        vec![item("user/2", "carol", 4), item("user/3", "dave", 8)],
        "[start, end)"
    );
    let kv = ok(s.sm.get(b"user/1"), "get").expect("user/1");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 6, 2));
    assert_eq!(value_of(&s.sm, "user"), None, "keys are exact");
    assert!(matches!(
        read("user/", &prefix, 9, 0),
        Err(kv::ExecError::Kv(kv::KvError::FutureRevision))
    ));
}

/// A compaction refuses reads below its revision and keeps every read at
/// or above it exact, before and after the physical removal; overwrites
/// followed by compactions keep the history bounded.
pub fn compaction_keeps_reads_exact_and_bounds_history<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut model = Model::default();
    let mut index = 0;
    let mut next = |cmd: Command| {
        index += 1;
        command(index, 1, &cmd)
    };
    let overwrite = |i: usize| {
        Command::Put(kv::PutRequest {
            key: format!("k{}", i % 3).into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        })
    };
    for round in 0..4 {
        let mut batch: Vec<Entry> = (0..30).map(|i| next(overwrite(round * 30 + i))).collect();
        let rev = model.data.revision() + 30 - 5;
        batch.push(next(Command::Compact(kv::CompactionRequest {
            revision: rev,
            physical: false,
        })));
        let want: Vec<EntryOutcome> = batch.iter().map(|e| model.apply(e)).collect();
        assert_eq!(ok(s.sm.apply(&batch), "apply"), want, "round {round}");
        assert_same_history(&s.sm, &model.data, "before the physical removal");
        while !ok(s.sm.compact_step(10), "compact_step") {}
        assert_same_history(&s.sm, &model.data, "after the physical removal");
        let below = kv::RangeRequest {
            key: b"k0".to_vec(),
            revision: rev - 1,
            ..Default::default()
        };
        assert!(
            matches!(
                s.sm.range(&below),
                Err(kv::ExecError::Kv(kv::KvError::Compacted { compact_revision })) if compact_revision == rev
            ),
            "a read below the compact revision is refused"
        );
    }
    let s = f.reopen(s);
    assert_same_history(&s.sm, &model.data, "after reopen");
    // Bounded: after 120 overwrites of 3 keys, what is left is the last 6
    // revisions (compacted 5 below the end) and one version below them per
    // key.
    let versions = model.data.versions().count();
    assert!(versions <= 9, "the model keeps {versions} versions");
}

/// An image carries the revision, the compact revision and the history:
/// the restored store answers past reads and events exactly as the
/// source, and continues at the next revision.
pub fn snapshot_carries_history_and_revision<F: StoreFactory>(f: &mut F) {
    let entries = mixed_entries(60, 0x9E37_79B9_7F4A_7C15);
    let source = applied_store(f, &entries);
    let mut model = Model::default();
    for e in &entries {
        model.apply(e);
    }
    assert_same_history(&source.sm, &model.data, "on the source");
    let (m, image) = ok(source.sm.snapshot(), "snapshot");
    let mut s = f.new_store();
    ok(s.sm.restore(m, &image), "restore");
    assert_same_history(&s.sm, &model.data, "after restore");
    assert_eq!(
        s.sm.hash_kv(0).map_err(|e| e.to_string()),
        source.sm.hash_kv(0).map_err(|e| e.to_string()),
        "HashKV after restore"
    );
    let mut s = f.reopen(s);
    assert_same_history(&s.sm, &model.data, "after reopen");
    let more = put(m.index + 1, m.term, "after", "x");
    let want = model.apply(&more);
    assert_eq!(ok(s.sm.apply(&[more]), "apply after restore"), vec![want]);
}

/// `snapshot` describes the applied index and the term of the entry at it
/// (index 0, term 0 for a new store).
pub fn snapshot_describes_the_applied_index<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    assert_eq!(ok(s.sm.snapshot(), "snapshot").0, SnapshotMeta::default());
    ok(s.sm.apply(&puts(1, 2, 1)), "apply");
    ok(s.sm.apply(&[noop(3, 4), put(4, 4, "x", "y")]), "apply");
    assert_eq!(ok(s.sm.snapshot(), "snapshot").0, meta(4, 4));
}

/// An image taken by `snapshot` restores into a new store as the same
/// data at the same applied index, survives a reopen, and applies
/// continue after it.
pub fn snapshot_restore_round_trip<F: StoreFactory>(f: &mut F) {
    let mut entries = puts(1, 6, 1);
    entries.push(del(7, 2, "k3", None));
    entries.push(put(8, 2, "ключ ✓", &"long value ".repeat(500)));
    entries.push(put(9, 2, "empty", ""));
    let source = applied_store(f, &entries);
    let (m, image) = ok(source.sm.snapshot(), "snapshot");
    assert_eq!(m, meta(9, 2));
    let want = all_items(&source.sm);
    assert_eq!(want.len(), 7);

    let mut s = f.new_store();
    ok(s.sm.restore(m, &image), "restore");
    assert_eq!(s.sm.applied_index(), 9, "applied index after restore");
    assert_eq!(all_items(&s.sm), want, "data after restore");
    assert_eq!(
        ok(s.sm.snapshot(), "snapshot").0,
        m,
        "snapshot after restore"
    );
    let mut s = f.reopen(s);
    assert_eq!(s.sm.applied_index(), 9, "applied index after reopen");
    assert_eq!(all_items(&s.sm), want, "data after reopen");
    // Revisions: 6 puts, a delete, 2 puts = revision 10 at the image.
    assert_eq!(
        revisions(&ok(
            s.sm.apply(&[put(10, 2, "k1", "next")]),
            "apply after restore"
        )),
        vec![Some(11)]
    );
    assert_eq!(value_of(&s.sm, "k1"), Some(("next".to_string(), 11)));

    // The source is unchanged by having been read.
    assert_eq!(all_items(&source.sm), want);
}

/// `restore` onto a store holding other data replaces it entirely: keys
/// missing from the image are gone, shared keys take the image's value
/// and index, and the applied index becomes the image's (even if lower).
pub fn restore_replaces_other_data_entirely<F: StoreFactory>(f: &mut F) {
    let source = applied_store(
        f,
        &[
            put(1, 1, "shared", "from-image"),
            put(2, 1, "image-only", "i"),
        ],
    );
    let (m, image) = ok(source.sm.snapshot(), "snapshot");
    let mut entries = puts(1, 5, 1);
    entries.push(put(6, 1, "shared", "local"));
    let mut s = applied_store(f, &entries);
    assert_eq!(s.sm.applied_index(), 6);
    ok(s.sm.restore(m, &image), "restore");
    let want = vec![item("image-only", "i", 3), item("shared", "from-image", 2)];
    assert_eq!(all_items(&s.sm), want, "data after restore");
    assert_eq!(s.sm.applied_index(), 2, "applied index after restore");
    let s = f.reopen(s);
    assert_eq!(all_items(&s.sm), want, "data after reopen");
    assert_eq!(s.sm.applied_index(), 2, "applied index after reopen");

    // An image of an empty state (only no-ops applied) empties the store.
    let blank = applied_store(f, &[noop(1, 1), noop(2, 1), noop(3, 1)]);
    let (m, image) = ok(blank.sm.snapshot(), "snapshot of no keys");
    let mut s = s;
    ok(s.sm.restore(m, &image), "restore of no keys");
    assert!(
        all_items(&s.sm).is_empty(),
        "keys left after restoring none"
    );
    assert_eq!(s.sm.applied_index(), 3);
}

/// `restore` of an image that is empty, truncated or of another snapshot
/// than announced fails and leaves the state as it was.
pub fn restore_refuses_a_bad_image_and_changes_nothing<F: StoreFactory>(f: &mut F) {
    let source = applied_store(f, &puts(1, 4, 1));
    let (m, image) = ok(source.sm.snapshot(), "snapshot");
    let entries = vec![put(1, 1, "mine", "1"), put(2, 1, "also-mine", "2")];
    let mut s = applied_store(f, &entries);
    let before = all_items(&s.sm);
    let bad: [(&str, SnapshotMeta, &[u8]); 4] = [
        ("an empty image", m, &[]),
        ("a truncated image", m, &image[..image.len() - 1]),
        ("an image of another index", meta(5, 1), &image),
        ("an image of another term", meta(4, 2), &image),
    ];
    for (what, announced, data) in bad {
        assert!(
            s.sm.restore(announced, data).is_err(),
            "{what} was restored"
        );
        assert_eq!(all_items(&s.sm), before, "data after {what}");
        assert_eq!(s.sm.applied_index(), 2, "applied index after {what}");
    }
    ok(s.sm.restore(m, &image), "restore of the good image");
    assert_eq!(all_items(&s.sm), all_items(&source.sm));
}

// ------------------------------------------------------------ restart --

/// Hard state, snapshot, log, applied index and data all come back after
/// a reopen, and again after a second one with more writes between.
pub fn reopen_recovers_everything<F: StoreFactory>(f: &mut F) {
    let mut s = f.new_store();
    let mut entries = vec![noop(1, 1)];
    entries.extend(puts(2, 12, 1));
    ok(s.log.save(Some(&hs(1, 1, 12)), &entries), "save");
    ok(s.sm.apply(&entries[..9]), "apply 1..=9");
    ok(s.log.compact(meta(7, 1)), "compact to 7");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(1, 1, 12),
        meta(7, 1),
        &entries[7..],
        "after reopen",
    );
    assert_eq!(s.sm.applied_index(), 9);
    // Entry 1 is a no-op: entry i (a put) created revision i.
    assert_eq!(value_of(&s.sm, "k9"), Some(("v9-t1".to_string(), 9)));
    assert_eq!(value_of(&s.sm, "k10"), None);

    let mut s = s;
    let more = puts(11, 14, 2);
    ok(s.log.save(Some(&hs(2, 2, 13)), &more), "overwrite from 11");
    let mut want = entries[7..10].to_vec();
    want.extend(more.iter().cloned());
    ok(s.sm.apply(&want[2..6]), "apply 10..=13");
    let s = f.reopen(s);
    assert_log(
        &s.log,
        hs(2, 2, 13),
        meta(7, 1),
        &want,
        "after the second reopen",
    );
    assert_eq!(s.sm.applied_index(), 13);
    assert_eq!(ok(s.sm.snapshot(), "snapshot").0, meta(13, 2));
    assert_eq!(value_of(&s.sm, "k11"), Some(("v11-t2".to_string(), 11)));
}

#[cfg(test)]
mod tests {
    /// Every `pub fn` case in this file is listed in
    /// [`storage_conformance_tests`], so none is silently skipped.
    #[test]
    fn every_case_is_listed_in_the_macro() {
        let src = include_str!("conformance.rs");
        let (macro_part, rest) = src
            .split_once(
                "// ------------------------------------------------------------ helpers --",
            )
            .expect("helpers marker");
        let cases: Vec<&str> = rest
            .lines()
            .filter_map(|l| l.strip_prefix("pub fn "))
            .filter(|l| l.contains("<F: StoreFactory>"))
            .filter_map(|l| l.split('<').next())
            .collect();
        assert!(cases.len() >= 30, "found only {} cases", cases.len());
        for case in &cases {
            assert!(
                macro_part.contains(&format!("            {case},\n")),
                "case `{case}` is missing from storage_conformance_tests!"
            );
        }
        let listed = macro_part
            .lines()
            .skip_while(|l| !l.contains("@cases $factory;"))
            .skip(1)
            .take_while(|l| !l.trim().starts_with(");"))
            .count();
        assert_eq!(
            listed,
            cases.len(),
            "the macro lists cases that do not exist"
        );
    }
}
