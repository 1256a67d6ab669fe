//! Property tests: random command sequences applied to [`MemMvcc`] (the
//! shared execution code) and to the naive [`Oracle`] give the same
//! answers, events, revisions, reads (with every option) and, at every
//! retained revision, the same state; catch-up events and the versions kept
//! by physical compaction match too.

use proptest::prelude::*;

use super::super::*;
use super::oracle::Oracle;

/// Few keys, so that commands collide; edge bytes included.
const KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"b",
    b"ba",
    b"c",
    b"\x00",
    b"\xff",
    b"\xff\xff",
];
const VALUES: &[&[u8]] = &[b"", b"x", b"y", b"zz"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(<[u8]>::to_vec)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(VALUES).prop_map(<[u8]>::to_vec)
}

/// `(key, range_end)` in every form etcd knows: single key, from key,
/// prefix, explicit end (possibly inverted), and every key.
fn key_range() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        2 => key().prop_map(|k| (k, Vec::new())),
        1 => key().prop_map(|k| (k, vec![0])),
        1 => key().prop_map(|k| { let end = prefix_end(&k); (k, end) }),
        2 => (key(), key()),
        1 => key().prop_map(|k| (k, b"z".to_vec())),
        1 => Just((vec![0], vec![0])),
    ]
}

/// A revision field: mostly 0 (current), else anything up to a little past
/// where a sequence gets, rarely negative (refused).
fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![12 => Just(0i64), 12 => 1i64..16, 1 => Just(-1i64)]
}

fn filter() -> impl Strategy<Value = i64> {
    prop_oneof![12 => Just(0i64), 1 => 1i64..25]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let order = prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
    let target = prop::sample::select(vec![
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ]);
    (
        key_range(),
        prop_oneof![1 => Just(0i64), 2 => 1i64..4],
        revision(),
        (order, target),
        (any::<bool>(), prop::bool::weighted(0.15)),
        (filter(), filter(), filter(), filter()),
    )
        .prop_map(
            |(
                (key, range_end),
                limit,
                revision,
                (sort_order, sort_target),
                (keys_only, count_only),
                f,
            )| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: f.0,
                    max_mod_revision: f.1,
                    min_create_revision: f.2,
                    max_create_revision: f.3,
                }
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        prop_oneof![3 => Just(0i64), 1 => 1i64..3],
        any::<bool>(),
        (prop::bool::weighted(0.1), prop::bool::weighted(0.1)),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(key, value, lease, prev_kv, (ignore_value, ignore_lease), keep_given)| {
                // Mostly valid flag combinations; sometimes the refused ones.
                PutRequest {
                    key,
                    value: if ignore_value && !keep_given {
                        Vec::new()
                    } else {
                        value
                    },
                    lease: if ignore_lease && !keep_given {
                        0
                    } else {
                        lease
                    },
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                }
            },
        )
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    let range = prop_oneof![1 => key().prop_map(|k| (k, Vec::new())), 1 => key_range()];
    (range, any::<bool>()).prop_map(|((key, range_end), prev_kv)| DeleteRangeRequest {
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
        (0i64..20).prop_map(CompareTarget::CreateRevision),
        (0i64..20).prop_map(CompareTarget::ModRevision),
        value().prop_map(CompareTarget::Value),
        (0i64..3).prop_map(CompareTarget::Lease),
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
    /// Apply a command.
    Apply(Command),
    /// Compact to `current revision - n`.
    CompactBack(i64),
    /// A read with random options.
    Read(RangeRequest),
    /// Some physical compaction.
    Physical(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => put_request().prop_map(|p| Step::Apply(Command::Put(p))),
        2 => delete_request().prop_map(|d| Step::Apply(Command::DeleteRange(d))),
        5 => txn_request(2).prop_map(|t| Step::Apply(Command::Txn(t))),
        1 => (0i64..16).prop_map(|revision| Step::Apply(Command::Compact(CompactionRequest { revision, physical: false }))),
        1 => (0i64..6).prop_map(Step::CompactBack),
        3 => range_request().prop_map(Step::Read),
        1 => (0usize..4).prop_map(Step::Physical),
    ]
}

fn all_at(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    }
}

/// Every retained revision reads the same; below the compact revision is
/// refused; the catch-up from the compact revision is the oracle's history.
fn check_history(store: &MemMvcc, oracle: &Oracle) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.revision(), oracle.revision());
    prop_assert_eq!(store.compact_revision(), oracle.compact_revision());
    let compact = store.compact_revision();
    for rev in compact.max(1)..=store.revision() {
        let got = store.range(&all_at(rev)).unwrap().body.kvs;
        let expected: Vec<KeyValue> = oracle.state(rev).values().cloned().collect();
        prop_assert_eq!(got, expected, "state at revision {}", rev);
    }
    if compact > 1 {
        prop_assert_eq!(
            store.range(&all_at(compact - 1)),
            Err(KvError::Compacted {
                compact_revision: compact
            })
        );
    }
    let from = compact.max(1);
    prop_assert_eq!(
        store
            .events(from, KeyRange::From(&[0]), usize::MAX)
            .unwrap(),
        oracle.events(from, &[0], &[0])
    );
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut store = MemMvcc::new();
    let mut oracle = Oracle::new();
    for step in steps {
        let cmd = match step {
            Step::Apply(cmd) => cmd,
            Step::CompactBack(n) => Command::Compact(CompactionRequest {
                revision: store.revision() - n,
                physical: true,
            }),
            Step::Read(r) => {
                prop_assert_eq!(store.range(&r), oracle.range(&r), "{:?}", r);
                continue;
            }
            Step::Physical(budget) => {
                store.compact_physically(budget);
                check_history(&store, &oracle)?;
                continue;
            }
        };
        let applied = store.execute(&cmd);
        let expected = oracle.apply(&cmd);
        prop_assert_eq!(&applied.answer, &expected.answer, "{:?}", cmd);
        prop_assert_eq!(&applied.events, &expected.events, "{:?}", cmd);
        store.commit(&applied).unwrap();
        check_history(&store, &oracle)?;
    }
    prop_assert!(store.compact_physically(usize::MAX));
    check_history(&store, &oracle)?;
    let kept: Vec<_> = store
        .versions()
        .map(|(k, id, r)| (k.to_vec(), id, r.cloned()))
        .collect();
    prop_assert_eq!(kept, oracle.kept_versions());
    Ok(())
}

proptest! {

    #[test]
    fn store_and_naive_model_agree(steps in prop::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}

/// The generators must keep producing runs where every kind of outcome
/// happens, or the property above would pass vacuously.
#[test]
fn generated_runs_exercise_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..100 {
        let steps = prop::collection::vec(step(), 1..60)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut store = MemMvcc::new();
        for step in steps {
            let cmd = match step {
                Step::Apply(cmd) => cmd,
                Step::CompactBack(n) => Command::Compact(CompactionRequest {
                    revision: store.revision() - n,
                    physical: true,
                }),
                Step::Read(r) => {
                    let outcome = match store.range(&r) {
                        Ok(a) if a.body.more => "read with more",
                        Ok(a) if r.revision > 0 && !a.body.kvs.is_empty() => "past read",
                        Ok(_) => "read",
                        Err(KvError::Compacted { .. }) => "compacted read",
                        Err(KvError::FutureRevision) => "future read",
                        Err(_) => "refused read",
                    };
                    *seen.entry(outcome).or_default() += 1;
                    continue;
                }
                Step::Physical(_) => continue,
            };
            let applied = store.apply(&cmd);
            let outcome = match (&cmd, &applied.answer) {
                (Command::Txn(_), Ok(a)) => match &a.body {
                    CommandResponse::Txn(t) if !t.succeeded => "txn failure branch",
                    _ if applied.events.len() > 1 => "txn with several changes",
                    _ => "txn",
                },
                (Command::DeleteRange(_), Ok(_)) if applied.events.len() > 1 => "range delete",
                (Command::Compact(_), Ok(_)) => "compaction",
                (_, Err(KvError::DuplicateKey)) => "duplicate key",
                (_, Err(KvError::KeyNotFound)) => "key not found",
                _ => "other",
            };
            *seen.entry(outcome).or_default() += 1;
        }
    }
    for outcome in [
        "past read",
        "read with more",
        "compacted read",
        "future read",
        "txn failure branch",
        "txn with several changes",
        "range delete",
        "compaction",
        "duplicate key",
        "key not found",
    ] {
        let n = seen.get(outcome).copied().unwrap_or(0);
        assert!(n >= 10, "only {n} × {outcome}: {seen:?}");
    }
}
