//! Tests of [`MvccTree`]: random runs against [`MemMvcc`] (answers,
//! revisions, reads at past revisions, events, stale views, versions kept
//! by physical compaction, hash_kv independent of compaction progress), a
//! snapshot copy of the tree, corruption, and golden bytes of every record.

use std::ops::ControlFlow;

use proptest::prelude::*;

use super::keys::{self, by_revision_key, current_key, history_key, META_COMPACT, META_REVISION};
use super::*;
use crate::kv::{
    prefix_end, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    MemMvcc, PutRequest, RequestOp, SortOrder, SortTarget, TxnRequest,
};
use crate::storage::golden_tests::assert_golden;

/// A fresh store on a temporary sled database (kept alive beside it).
fn fresh() -> (sled::Db, MvccTree) {
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .expect("temporary sled db");
    let tree = db.open_tree("kv").expect("tree");
    (db, MvccTree::new(tree))
}

/// The key of a node's applied-index record in its key-value tree.
const APPLIED: &[u8] = b"\xffapplied";

// ------------------------------------------------------- generators --

/// Few keys, so that commands collide; bytes that need escaping included.
const KEYS: &[&[u8]] = &[
    b"a",
    b"a\x00",
    b"a\x00b",
    b"ab",
    b"b",
    b"\x00",
    b"\x00\x00",
    b"\xff",
];
const VALUES: &[&[u8]] = &[b"", b"x", b"y\x00", b"zz"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(<[u8]>::to_vec)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(VALUES).prop_map(<[u8]>::to_vec)
}

/// `(key, range_end)` in every form: single, from, prefix, explicit (maybe
/// inverted), every key.
fn key_range() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        2 => key().prop_map(|k| (k, Vec::new())),
        1 => key().prop_map(|k| (k, vec![0])),
        1 => key().prop_map(|k| { let end = prefix_end(&k); (k, end) }),
        2 => (key(), key()),
        1 => Just((vec![0], vec![0])),
    ]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let order = prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
    let target = prop::sample::select(vec![SortTarget::Key, SortTarget::Mod, SortTarget::Value]);
    (
        key_range(),
        prop_oneof![2 => Just(0i64), 1 => 1i64..4],
        prop_oneof![2 => Just(0i64), 3 => 1i64..24],
        (order, target),
        (any::<bool>(), prop::bool::weighted(0.15)),
    )
        .prop_map(
            |(
                (key, range_end),
                limit,
                revision,
                (sort_order, sort_target),
                (keys_only, count_only),
            )| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    ..RangeRequest::default()
                }
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        0i64..2,
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, value, lease, prev_kv, ignore_value)| PutRequest {
            key,
            value: if ignore_value { Vec::new() } else { value },
            lease,
            prev_kv,
            ignore_value,
            ignore_lease: false,
        })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key_range(), any::<bool>()).prop_map(|((key, range_end), prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..20).prop_map(CompareTarget::ModRevision),
        (0i64..20).prop_map(CompareTarget::CreateRevision),
        value().prop_map(CompareTarget::Value),
    ];
    (
        prop_oneof![3 => key().prop_map(|k| (k, Vec::new())), 1 => key_range()],
        result,
        target,
    )
        .prop_map(|((key, range_end), result, target)| Compare {
            key,
            range_end,
            result,
            target,
        })
}

fn op(depth: u32) -> BoxedStrategy<RequestOp> {
    let leaf = prop_oneof![
        2 => range_request().prop_map(RequestOp::Range),
        3 => put_request().prop_map(RequestOp::Put),
        1 => delete_request().prop_map(RequestOp::DeleteRange),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![4 => leaf, 1 => txn_request(depth - 1).prop_map(RequestOp::Txn)].boxed()
    }
}

fn txn_request(depth: u32) -> BoxedStrategy<TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op(depth), 0..4),
        prop::collection::vec(op(depth), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

/// One step of a random run.
#[derive(Clone, Debug)]
enum Step {
    /// Apply a command; with `true`, also check that a view opened before
    /// it still reads the state before it.
    Apply(Command, bool),
    /// Compact to a revision between the compact and the current one
    /// (`n` picks which).
    CompactBetween(u8),
    /// A read with random options, often at a past revision.
    Read(RangeRequest),
    /// Catch-up events from a revision (offset from the compact one).
    Events(i64, (Vec<u8>, Vec<u8>), usize),
    /// Some physical compaction.
    Physical(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (put_request(), prop::bool::weighted(0.2)).prop_map(|(p, v)| Step::Apply(Command::Put(p), v)),
        2 => (delete_request(), prop::bool::weighted(0.3)).prop_map(|(d, v)| Step::Apply(Command::DeleteRange(d), v)),
        4 => (txn_request(2), prop::bool::weighted(0.2)).prop_map(|(t, v)| Step::Apply(Command::Txn(t), v)),
        1 => (0i64..16).prop_map(|revision| Step::Apply(Command::Compact(CompactionRequest { revision, physical: false }), false)),
        1 => any::<u8>().prop_map(Step::CompactBetween),
        3 => range_request().prop_map(Step::Read),
        2 => (-1i64..8, key_range(), 1usize..5).prop_map(|(from, r, limit)| Step::Events(from, r, limit)),
        2 => (0usize..4).prop_map(Step::Physical),
    ]
}

// ---------------------------------------------------------- checks --

fn all_at(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    }
}

/// The store's answer with a store failure turned into a test failure.
fn answer<T>(r: Result<T, ExecError<StorageError>>) -> Result<Result<T, KvError>, TestCaseError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(ExecError::Kv(e)) => Ok(Err(e)),
        Err(ExecError::Store(e)) => Err(TestCaseError::fail(format!("store failed: {e}"))),
    }
}

fn fail(e: StorageError) -> TestCaseError {
    TestCaseError::fail(format!("store failed: {e}"))
}

fn mem_versions(mem: &MemMvcc) -> Vec<Version> {
    mem.versions()
        .map(|(k, id, r)| (k.to_vec(), id, r.cloned()))
        .collect()
}

/// Every record visited by a view's scan.
fn scan_all<V: MvccView>(view: &V, rev: i64) -> Result<Vec<KeyValue>, V::Error> {
    let mut out = Vec::new();
    view.scan(KeyRange::From(&[0]), rev, &mut |kv| {
        out.push(kv);
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Revisions, every retained revision's state, the refusal below the
/// compact revision, the full catch-up and the by-revision index agree.
fn check_same(tree: &MvccTree, mem: &MemMvcc) -> Result<(), TestCaseError> {
    prop_assert_eq!(tree.revision().map_err(fail)?, mem.revision());
    prop_assert_eq!(
        tree.compact_revision().map_err(fail)?,
        mem.compact_revision()
    );
    let compact = mem.compact_revision();
    for rev in (compact - 1).max(1)..=mem.revision() {
        // The view serves `compact - 1` too (what `prev_kv` needs).
        let view = tree.view().map_err(fail)?;
        let got = scan_all(&view, rev).map_err(fail)?;
        let expected = scan_all(mem, rev).unwrap_or_else(|never| match never {});
        prop_assert_eq!(got, expected, "state at revision {}", rev);
        if rev >= compact {
            prop_assert_eq!(answer(tree.range(&all_at(rev)))?, mem.range(&all_at(rev)));
        }
        for key in KEYS {
            let got = view.get(key, rev).map_err(fail)?;
            let expected = MvccView::get(mem, key, rev).unwrap_or_else(|never| match never {});
            prop_assert_eq!(got, expected, "{:?} at {}", key, rev);
        }
    }
    if compact > 1 {
        prop_assert_eq!(
            answer(tree.range(&all_at(compact - 1)))?,
            mem.range(&all_at(compact - 1))
        );
    }
    let from = compact.max(1);
    prop_assert_eq!(
        answer(tree.events(from, KeyRange::From(&[0]), usize::MAX))?,
        mem.events(from, KeyRange::From(&[0]), usize::MAX)
    );
    prop_assert_eq!(tree.log_len().map_err(fail)?, mem.log_len());
    Ok(())
}

/// A copy of every record of `tree` into a fresh tree, as a snapshot image
/// carries it.
fn copy(tree: &MvccTree) -> Result<(sled::Db, MvccTree), TestCaseError> {
    let (db, copy) = fresh();
    for item in tree.tree().iter() {
        let (k, v) = item.map_err(|e| TestCaseError::fail(e.to_string()))?;
        copy.tree()
            .insert(k, v)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    Ok((db, copy))
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    // `tree` is compacted physically like `mem`; `lazy` never is.
    let (_db, tree) = fresh();
    let (_db2, lazy) = fresh();
    let mut mem = MemMvcc::new();
    // The owner's record beside the MVCC slots (a node's applied index):
    // nothing reads, moves or removes it.
    for t in [&tree, &lazy] {
        t.tree()
            .insert(APPLIED, &b"not an mvcc record"[..])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    for step in steps {
        let (cmd, check_view) = match step {
            Step::Apply(cmd, check_view) => (cmd, check_view),
            Step::CompactBetween(n) => {
                let (c, r) = (mem.compact_revision(), mem.revision());
                let revision = if r > c {
                    c + 1 + i64::from(n) % (r - c)
                } else {
                    r
                };
                let cmd = Command::Compact(CompactionRequest {
                    revision,
                    physical: true,
                });
                (cmd, false)
            }
            Step::Read(r) => {
                let expected = mem.range(&r);
                prop_assert_eq!(answer(tree.range(&r))?, expected.clone(), "{:?}", r);
                prop_assert_eq!(answer(lazy.range(&r))?, expected, "{:?}", r);
                continue;
            }
            Step::Events(from, (key, end), limit) => {
                let from = mem.compact_revision() + from;
                let range = KeyRange::new(&key, &end);
                let expected = mem.events(from, range, limit);
                prop_assert_eq!(answer(tree.events(from, range, limit))?, expected.clone());
                prop_assert_eq!(answer(lazy.events(from, range, limit))?, expected);
                continue;
            }
            Step::Physical(budget) => {
                let done = mem.compact_physically(budget);
                let more = tree.compact_step(budget).map_err(fail)?;
                prop_assert_eq!(more, !done);
                // The pruned mark never claims more than was removed.
                let pruned = tree.pruned_revision().map_err(fail)?;
                prop_assert!(pruned <= mem.compact_revision());
                if !more {
                    prop_assert_eq!(pruned, mem.compact_revision());
                }
                let first_left = tree
                    .tree()
                    .range(vec![keys::BY_REVISION]..vec![keys::BY_REVISION + 1])
                    .next()
                    .transpose()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .and_then(|(k, _)| keys::parse_change(&k[1..]));
                if let Some((rev, _)) = first_left {
                    prop_assert!(
                        rev >= pruned,
                        "change {} left below pruned mark {}",
                        rev,
                        pruned
                    );
                }
                prop_assert_eq!(tree.versions().map_err(fail)?, mem_versions(&mem));
                check_same(&tree, &mem)?;
                continue;
            }
        };
        let before = tree.view().map_err(fail)?;
        let before_state = scan_all(&before, before.revision()).map_err(fail)?;
        let applied = mem.execute(&cmd);
        mem.commit(&applied)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = tree.apply(&cmd).map_err(fail)?;
        prop_assert_eq!(&got, &applied, "{:?}", cmd);
        prop_assert_eq!(&lazy.apply(&cmd).map_err(fail)?, &applied, "{:?}", cmd);
        if check_view {
            // The view opened before the write still reads the state it
            // was opened at, from the history where the current records
            // moved on.
            prop_assert_eq!(
                &scan_all(&before, before.revision()).map_err(fail)?,
                &before_state
            );
            // Resuming from the history after a key, as a scan does when a
            // writer commits in the middle of it.
            for after in KEYS {
                let mut got = Vec::new();
                before
                    .scan_history(
                        KeyRange::From(&[0]),
                        before.revision(),
                        Some(after),
                        &mut |kv| {
                            got.push(kv);
                            ControlFlow::Continue(())
                        },
                    )
                    .map_err(fail)?;
                let expected: Vec<KeyValue> = before_state
                    .iter()
                    .filter(|kv| kv.key.as_slice() > *after)
                    .cloned()
                    .collect();
                prop_assert_eq!(got, expected, "after {:?}", after);
            }
            for key in KEYS {
                let expected =
                    MvccView::get(&mem, key, before.revision()).unwrap_or_else(|n| match n {});
                prop_assert_eq!(before.get(key, before.revision()).map_err(fail)?, expected);
            }
        }
        check_same(&tree, &mem)?;
    }
    // The hash does not depend on how far physical compaction has run.
    let (c, r) = (mem.compact_revision(), mem.revision());
    for rev in c.max(1)..=r {
        prop_assert_eq!(
            answer(tree.hash_kv(rev))?,
            answer(lazy.hash_kv(rev))?,
            "hash at {}",
            rev
        );
    }
    // The copy answers like the original, before and after compaction.
    let (_db3, copied) = copy(&tree)?;
    check_same(&copied, &mem)?;
    prop_assert_eq!(answer(copied.hash_kv(0))?, answer(tree.hash_kv(0))?);
    prop_assert!(mem.compact_physically(usize::MAX));
    prop_assert!(!tree.compact_step(usize::MAX).map_err(fail)?);
    while lazy.compact_step(3).map_err(fail)? {}
    let kept = mem_versions(&mem);
    prop_assert_eq!(&tree.versions().map_err(fail)?, &kept);
    prop_assert_eq!(&lazy.versions().map_err(fail)?, &kept);
    check_same(&tree, &mem)?;
    check_same(&lazy, &mem)?;
    prop_assert_eq!(
        tree.pruned_revision().map_err(fail)?,
        mem.compact_revision()
    );
    for t in [&tree, &lazy, &copied] {
        let applied = t
            .tree()
            .get(APPLIED)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(applied.as_deref(), Some(&b"not an mvcc record"[..]));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tree_and_memory_model_agree(steps in prop::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}

/// The generators keep producing runs where every interesting outcome
/// happens, or the property above would pass vacuously.
#[test]
fn generated_runs_exercise_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..64 {
        let steps = prop::collection::vec(step(), 1..40)
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        let mut mem = MemMvcc::new();
        for step in steps {
            let cmd = match step {
                Step::Apply(cmd, view) => {
                    if view {
                        *seen.entry("stale view checked").or_default() += 1;
                    }
                    cmd
                }
                Step::CompactBetween(_) => compact(mem.revision()),
                Step::Read(r) => {
                    let outcome = match mem.range(&r) {
                        Ok(a) if r.revision > 0 && !a.body.kvs.is_empty() => "past read",
                        Ok(_) => "other read",
                        Err(KvError::Compacted { .. }) => "compacted read",
                        Err(_) => "refused read",
                    };
                    *seen.entry(outcome).or_default() += 1;
                    continue;
                }
                Step::Events(from, (key, end), limit) => {
                    let from = mem.compact_revision() + from;
                    let outcome = match mem.events(from, KeyRange::new(&key, &end), limit) {
                        Ok(e) if e.iter().any(|e| e.prev_kv.is_some()) => "events with prev_kv",
                        Ok(_) => "other events",
                        Err(_) => "events refused",
                    };
                    *seen.entry(outcome).or_default() += 1;
                    continue;
                }
                Step::Physical(budget) => {
                    let before = mem.log_len();
                    mem.compact_physically(budget);
                    if mem.log_len() < before {
                        *seen.entry("physical removal").or_default() += 1;
                    }
                    continue;
                }
            };
            let applied = mem.execute(&cmd);
            let outcome = match (&cmd, &applied.answer) {
                (Command::Compact(_), Ok(_)) => "compaction",
                (Command::Txn(_), Ok(r)) => match &r.body {
                    kv::CommandResponse::Txn(t) if t.succeeded => "txn success",
                    _ => "txn failure",
                },
                (Command::DeleteRange(_), Ok(_)) if !applied.events.is_empty() => "delete",
                (_, Ok(_)) => "other write",
                (_, Err(_)) => "refused write",
            };
            *seen.entry(outcome).or_default() += 1;
            mem.commit(&applied).expect("commit");
        }
    }
    for outcome in [
        "stale view checked",
        "past read",
        "compacted read",
        "events with prev_kv",
        "events refused",
        "physical removal",
        "compaction",
        "txn success",
        "txn failure",
        "delete",
    ] {
        assert!(
            seen.get(outcome).copied().unwrap_or(0) > 0,
            "{outcome} never happens: {seen:?}"
        );
    }
}

// ------------------------------------------------- focused tests --

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..PutRequest::default()
    })
}

fn compact(revision: i64) -> Command {
    Command::Compact(CompactionRequest {
        revision,
        physical: false,
    })
}

/// Overwriting one key forever keeps the disk bounded once compactions
/// and their physical steps follow.
#[test]
fn overwrites_stay_bounded_with_compaction() {
    let (_db, tree) = fresh();
    for round in 0..20 {
        for i in 0..50u32 {
            tree.apply(&put(b"k", &i.to_be_bytes())).expect("put");
        }
        let rev = tree.revision().expect("revision");
        let applied = tree.apply(&compact(rev)).expect("compact");
        assert_eq!(applied.compact_revision, Some(rev), "round {round}");
        while tree.compact_step(16).expect("step") {}
        // The current record, the versions at and just below the compact
        // revision, the index entry of the one at it, three meta records.
        assert_eq!(tree.versions().expect("versions").len(), 2);
        assert_eq!(tree.log_len().expect("log_len"), 1);
        assert_eq!(tree.tree().len(), 7, "round {round}");
    }
}

/// A copy of every record (a snapshot image's content) answers exactly
/// like the original, mid-compaction included, and keeps compacting.
#[test]
fn snapshot_copy_answers_identically() {
    let (_db, tree) = fresh();
    let mut mem = MemMvcc::new();
    let mut step = |cmd: Command| {
        let applied = tree.apply(&cmd).expect("apply");
        mem.commit(&applied).expect("commit");
    };
    for i in 0..30u32 {
        let key = KEYS[i as usize % KEYS.len()];
        step(put(key, &i.to_be_bytes()));
        if i % 7 == 6 {
            step(Command::DeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                range_end: vec![0],
                prev_kv: true,
            }));
        }
    }
    step(compact(20));
    assert!(
        tree.compact_step(5).expect("step"),
        "compaction left half done"
    );
    assert!(!mem.compact_physically(5));
    let (_db2, copied) = copy(&tree).expect("copy");
    assert_eq!(copied.versions().expect("versions"), mem_versions(&mem));
    check_same(&copied, &mem).expect("copy answers like the model");
    assert_eq!(
        copied.hash_kv(0).expect("hash"),
        tree.hash_kv(0).expect("hash")
    );
    while copied.compact_step(4).expect("step") {}
    assert!(mem.compact_physically(usize::MAX));
    assert_eq!(copied.versions().expect("versions"), mem_versions(&mem));
    check_same(&copied, &mem).expect("compacted copy answers like the model");
}

/// hash_kv: refused outside the readable revisions, changes with the
/// revision and the content, ignores physical compaction.
#[test]
fn hash_kv_depends_on_content_not_on_compaction_progress() {
    let (_db, a) = fresh();
    let (_db2, b) = fresh();
    for i in 0..10u32 {
        a.apply(&put(b"k", &i.to_be_bytes())).expect("put");
        b.apply(&put(b"k", &i.to_be_bytes())).expect("put");
    }
    assert_eq!(a.hash_kv(0).expect("hash"), b.hash_kv(0).expect("hash"));
    assert_ne!(a.hash_kv(5).expect("hash"), a.hash_kv(6).expect("hash"));
    assert!(matches!(
        a.hash_kv(12),
        Err(ExecError::Kv(KvError::FutureRevision))
    ));
    a.apply(&compact(8)).expect("compact");
    b.apply(&compact(8)).expect("compact");
    while a.compact_step(1).expect("step") {}
    for rev in 8..=11 {
        assert_eq!(
            a.hash_kv(rev).expect("hash"),
            b.hash_kv(rev).expect("hash"),
            "{rev}"
        );
    }
    assert!(matches!(
        a.hash_kv(7),
        Err(ExecError::Kv(KvError::Compacted {
            compact_revision: 8
        }))
    ));
    b.apply(&put(b"k", b"other")).expect("put");
    a.apply(&put(b"k", b"another")).expect("put");
    assert_ne!(a.hash_kv(0).expect("hash"), b.hash_kv(0).expect("hash"));
}

/// Flipping one byte of any record is a typed corruption error naming the
/// tree and the key, never a panic or a wrong answer.
#[test]
fn flipped_bytes_are_corruption_errors() {
    let (_db, tree) = fresh();
    for cmd in [put(b"a", b"1"), put(b"a", b"2"), put(b"b", b"3")] {
        tree.apply(&cmd).expect("apply");
    }
    let records: Vec<(sled::IVec, sled::IVec)> =
        tree.tree().iter().map(|r| r.expect("read")).collect();
    assert_eq!(
        records.len(),
        2 + 3 + 3 + 1,
        "current, history, index, revision"
    );
    for (key, value) in &records {
        for i in [0, value.len() / 2, value.len() - 1] {
            let mut bad = value.to_vec();
            bad[i] ^= 0x10;
            tree.tree().insert(key, bad).expect("insert");
            let errors = [
                tree.range(&all_at(0)).err(),
                tree.range(&all_at(2)).err(),
                tree.events(1, KeyRange::From(&[0]), usize::MAX).err(),
                tree.hash_kv(0).err(),
            ];
            let first = errors.into_iter().flatten().next();
            match first {
                Some(ExecError::Store(StorageError::Corruption {
                    tree: t, key: k, ..
                })) => {
                    assert_eq!(t, "kv");
                    assert_eq!(k, keys::describe(key));
                }
                other => panic!("byte {i} of {}: {other:?}", keys::describe(key)),
            }
            tree.tree().insert(key, value.clone()).expect("restore");
        }
    }
    // Malformed keys in the slots are corruption too.
    let short_index_key = by_revision_key(2, 0)[..9].to_vec();
    for bad_key in [&b"\x02a\x00"[..], &short_index_key] {
        tree.tree().insert(bad_key, &b"x"[..]).expect("insert");
        let err = tree
            .events(1, KeyRange::From(&[0]), usize::MAX)
            .err()
            .or_else(|| tree.range(&all_at(2)).err());
        assert!(
            matches!(err, Some(ExecError::Store(StorageError::Corruption { .. }))),
            "{bad_key:?}: {err:?}"
        );
        tree.tree().remove(bad_key).expect("remove");
    }
    // A record moved under another key fails its checksum.
    let a = tree.tree().get(current_key(b"a")).expect("get").expect("a");
    tree.tree().insert(current_key(b"b"), a).expect("insert");
    assert!(matches!(
        tree.range(&all_at(0)),
        Err(ExecError::Store(StorageError::Corruption { .. }))
    ));
}

/// Readers on other threads see, at every moment, exactly the state of
/// the revision their view was opened at, while a writer commits.
#[test]
fn concurrent_readers_see_whole_revisions() {
    let (_db, tree) = fresh();
    let mut mem = MemMvcc::new();
    let cmds: Vec<Command> = (0..300u32)
        .map(|i| {
            let key = KEYS[(i as usize * 7) % KEYS.len()];
            if i % 5 == 4 {
                Command::DeleteRange(DeleteRangeRequest {
                    key: key.to_vec(),
                    range_end: prefix_end(key),
                    prev_kv: false,
                })
            } else {
                put(key, &i.to_be_bytes())
            }
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let view = tree.view().expect("view");
                let state = scan_all(&view, view.revision()).expect("scan");
                seen.push((view.revision(), state));
            }
            seen
        });
        for cmd in &cmds {
            let applied = tree.apply(cmd).expect("apply");
            mem.commit(&applied).expect("commit");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        reader.join().expect("reader")
    });
    assert!(!seen.is_empty());
    for (rev, state) in seen {
        let expected = scan_all(&mem, rev).unwrap_or_else(|never| match never {});
        assert_eq!(state, expected, "scan at revision {rev}");
    }
}

/// A stage for another revision is refused; a staged batch changes
/// nothing until committed.
#[test]
fn stage_refuses_stale_outcomes_and_waits_for_commit() {
    let (_db, tree) = fresh();
    let applied = kv::execute(&tree.view().expect("view"), &put(b"a", b"1")).expect("execute");
    let mut batch = sled::Batch::default();
    tree.stage(&applied, &mut batch).expect("stage");
    assert_eq!(tree.revision().expect("revision"), 1);
    assert_eq!(tree.tree().len(), 0);
    tree.tree().apply_batch(batch).expect("commit");
    assert_eq!(tree.revision().expect("revision"), 2);
    let mut again = sled::Batch::default();
    assert!(matches!(
        tree.stage(&applied, &mut again),
        Err(StorageError::Inconsistent(_))
    ));
}

// ---------------------------------------------------- golden bytes --

fn golden_kv() -> KeyValue {
    KeyValue {
        key: b"a\x00".to_vec(),
        create_revision: 2,
        mod_revision: 300,
        version: 3,
        value: b"v".to_vec(),
        lease: 0,
    }
}

// slot 01 | key 61 00
const CURRENT_KEY: &str = "016100";
// slot 02 | escaped 61 00ff | terminator 0000 | rev 300 BE | sub 1 BE
const HISTORY_KEY: &str = "02 6100ff 0000 000000000000012c 0000000000000001";
// slot 03 | rev 300 BE | sub 1 BE
const BY_REVISION_KEY: &str = "03 000000000000012c 0000000000000001";
// version 01 | crc32 LE | key 02 6100 | create 04 (2, zigzag) | mod fb5802 (300) | version 06 (3) | value 01 76 | lease 00
const CURRENT_RECORD: &str = "01 95bee963 02 6100 04 fb5802 06 0176 00";
// version | crc32 | Some 01 | the KeyValue as above
const HISTORY_PUT_RECORD: &str = "01 8f289815 01 026100 04 fb5802 06 0176 00";
// version | crc32 | None 00
const HISTORY_TOMBSTONE_RECORD: &str = "01 c0cfd3cf 00";
// version | crc32 | kind 01 Delete | key 02 6100
const REV_ENTRY_RECORD: &str = "01 e6846a8a 01 026100";
// version | crc32 over fe01 | i64 300 zigzag fb5802
const META_REVISION_RECORD: &str = "01 1ed1db10 fb5802";
// version | crc32 over fe02 | i64 7 zigzag 0e
const META_COMPACT_RECORD: &str = "01 26a92cf3 0e";

#[test]
fn golden_keys_and_records() {
    let kv = golden_kv();
    let hk = history_key(&kv.key, 300, 1);
    let bk = by_revision_key(300, 1);
    assert_golden("current key", &current_key(&kv.key), CURRENT_KEY);
    assert_golden("history key", &hk, HISTORY_KEY);
    assert_golden("by-revision key", &bk, BY_REVISION_KEY);
    assert_golden("meta revision key", META_REVISION, "fe01");
    assert_golden("meta compact key", META_COMPACT, "fe02");
    assert_golden("meta pruned key", keys::META_PRUNED, "fe03");
    let ck = current_key(&kv.key);
    assert_golden("current record", &encode(&ck, &kv).unwrap(), CURRENT_RECORD);
    assert_golden(
        "history put record",
        &encode(&hk, &Some(&kv)).unwrap(),
        HISTORY_PUT_RECORD,
    );
    assert_golden(
        "history tombstone record",
        &encode(&hk, &None::<KeyValue>).unwrap(),
        HISTORY_TOMBSTONE_RECORD,
    );
    let entry = RevEntry {
        kind: EventKind::Delete,
        key: kv.key.clone(),
    };
    assert_golden(
        "by-revision record",
        &encode(&bk, &entry).unwrap(),
        REV_ENTRY_RECORD,
    );
    assert_golden(
        "meta revision record",
        &encode(META_REVISION, &300i64).unwrap(),
        META_REVISION_RECORD,
    );
    assert_golden(
        "meta compact record",
        &encode(META_COMPACT, &7i64).unwrap(),
        META_COMPACT_RECORD,
    );
    // And what a commit actually writes is these records.
    let (_db, tree) = fresh();
    tree.apply(&put(b"a\x00", b"v")).expect("put");
    let stored = tree
        .tree()
        .get(current_key(b"a\x00"))
        .expect("get")
        .expect("record");
    let expected = KeyValue {
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        ..golden_kv()
    };
    assert_eq!(
        stored.to_vec(),
        encode(&current_key(b"a\x00"), &expected).unwrap()
    );
}
