//! Each validation rule, and etcd's duplicate-key rule case by case.

use super::*;
use crate::kv::request::{Compare, CompareResult, CompareTarget};

fn put(key: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    })
}

fn del(key: &str, end: &[u8]) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.to_vec(),
        prev_kv: false,
    })
}

fn get(key: &str) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    })
}

fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp::Txn(TxnRequest {
        compare: Vec::new(),
        success,
        failure,
    })
}

fn txn(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success,
        failure: Vec::new(),
    }
}

fn check(success: Vec<RequestOp>) -> Result<(), KvError> {
    validate_txn(&txn(success))
}

fn cmp(key: &str) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        result: CompareResult::Equal,
        target: CompareTarget::Version(0),
    }
}

#[test]
fn empty_keys_are_refused_everywhere() {
    let e = Err(KvError::EmptyKey);
    assert_eq!(validate_range(&RangeRequest::default()), e);
    assert_eq!(validate_put(&PutRequest::default()), e);
    assert_eq!(validate_delete_range(&DeleteRangeRequest::default()), e);
    assert_eq!(check(vec![get("")]), e);
    assert_eq!(check(vec![nested(vec![], vec![put("")])]), e);
    let mut t = txn(vec![]);
    t.compare.push(cmp(""));
    assert_eq!(validate_txn(&t), e);
}

#[test]
fn put_key_and_value_limits() {
    let mut p = PutRequest {
        key: vec![b'k'; MAX_KEY_BYTES],
        value: vec![0; MAX_VALUE_BYTES],
        ..PutRequest::default()
    };
    assert_eq!(validate_put(&p), Ok(()));
    p.key.push(b'k');
    assert_eq!(
        validate_put(&p),
        Err(KvError::KeyTooLong {
            len: MAX_KEY_BYTES + 1,
            max: MAX_KEY_BYTES
        })
    );
    p.key.pop();
    p.value.push(0);
    assert_eq!(
        validate_put(&p),
        Err(KvError::ValueTooLarge {
            len: MAX_VALUE_BYTES + 1,
            max: MAX_VALUE_BYTES
        })
    );
    // The same limits hold inside transactions.
    assert!(matches!(
        check(vec![RequestOp::Put(p)]),
        Err(KvError::ValueTooLarge { .. })
    ));
}

#[test]
fn range_delete_and_compare_keys_are_bounds_of_any_length() {
    let long = vec![b'k'; MAX_KEY_BYTES + 1];
    let r = RangeRequest {
        key: long.clone(),
        ..RangeRequest::default()
    };
    assert_eq!(validate_range(&r), Ok(()));
    let d = DeleteRangeRequest {
        key: long.clone(),
        ..DeleteRangeRequest::default()
    };
    assert_eq!(validate_delete_range(&d), Ok(()));
    let mut t = txn(vec![]);
    t.compare.push(Compare {
        key: long,
        ..cmp("x")
    });
    assert_eq!(validate_txn(&t), Ok(()));
}

#[test]
fn ignore_flags_refuse_a_given_value_or_lease() {
    let p = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    };
    assert_eq!(validate_put(&p), Err(KvError::ValueProvided));
    let p = PutRequest {
        key: b"k".to_vec(),
        lease: 5,
        ignore_lease: true,
        ..PutRequest::default()
    };
    assert_eq!(validate_put(&p), Err(KvError::LeaseProvided));
    let p = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ignore_lease: true,
        ..PutRequest::default()
    };
    assert_eq!(validate_put(&p), Ok(()));
}

#[test]
fn negative_numbers_are_refused_by_name() {
    let base = RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    };
    let cases: Vec<(&str, RangeRequest)> = vec![
        (
            "limit",
            RangeRequest {
                limit: -1,
                ..base.clone()
            },
        ),
        (
            "revision",
            RangeRequest {
                revision: -1,
                ..base.clone()
            },
        ),
        (
            "min_mod_revision",
            RangeRequest {
                min_mod_revision: -1,
                ..base.clone()
            },
        ),
        (
            "max_mod_revision",
            RangeRequest {
                max_mod_revision: -1,
                ..base.clone()
            },
        ),
        (
            "min_create_revision",
            RangeRequest {
                min_create_revision: -1,
                ..base.clone()
            },
        ),
        (
            "max_create_revision",
            RangeRequest {
                max_create_revision: -1,
                ..base.clone()
            },
        ),
    ];
    for (field, r) in cases {
        let err = validate_range(&r).unwrap_err();
        assert_eq!(err, KvError::negative(field, -1));
        assert_eq!(
            err.to_string(),
            format!("{field} must not be negative, got -1")
        );
    }
    let p = PutRequest {
        key: b"k".to_vec(),
        lease: -2,
        ..PutRequest::default()
    };
    assert_eq!(validate_put(&p), Err(KvError::negative("lease", -2)));
    let c = CompactionRequest {
        revision: -1,
        physical: false,
    };
    assert_eq!(
        validate_compaction(&c),
        Err(KvError::negative("revision", -1))
    );
    // Compare targets may be any number.
    let mut t = txn(vec![]);
    t.compare.push(Compare {
        target: CompareTarget::ModRevision(-1),
        ..cmp("k")
    });
    assert_eq!(validate_txn(&t), Ok(()));
}

#[test]
fn op_count_limit_counts_compares_and_each_branch() {
    let ops = |n: usize| (0..n).map(|i| put(&format!("k{i}"))).collect::<Vec<_>>();
    assert_eq!(check(ops(MAX_TXN_OPS)), Ok(()));
    assert_eq!(check(ops(MAX_TXN_OPS + 1)), Err(KvError::TooManyOps));
    let both = TxnRequest {
        compare: Vec::new(),
        success: ops(MAX_TXN_OPS),
        failure: ops(MAX_TXN_OPS),
    };
    assert_eq!(validate_txn(&both), Ok(()), "the limit is per branch");
    let mut t = txn(vec![]);
    t.compare = (0..=MAX_TXN_OPS).map(|i| cmp(&format!("k{i}"))).collect();
    assert_eq!(validate_txn(&t), Err(KvError::TooManyOps));
}

#[test]
fn nested_txns_get_the_budget_their_parent_left() {
    // The parent's largest count is 100, so a nested txn may have 28.
    let parent = |child_ops: usize| {
        let mut ops: Vec<RequestOp> = (0..99).map(|i| get(&format!("r{i}"))).collect();
        ops.push(nested(
            (0..child_ops).map(|i| put(&format!("k{i}"))).collect(),
            vec![],
        ));
        check(ops)
    };
    assert_eq!(parent(28), Ok(()));
    assert_eq!(parent(29), Err(KvError::TooManyOps));
}

#[test]
fn too_many_ops_is_found_before_an_empty_key() {
    let mut ops: Vec<RequestOp> = (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect();
    ops.push(put(""));
    assert_eq!(check(ops), Err(KvError::TooManyOps));
}

#[test]
fn shape_errors_come_before_duplicate_keys() {
    assert_eq!(
        check(vec![put("a"), put("a"), get("")]),
        Err(KvError::EmptyKey)
    );
}

#[test]
fn duplicate_puts_are_refused() {
    let dup = Err(KvError::DuplicateKey);
    assert_eq!(check(vec![put("a"), put("a")]), dup);
    assert_eq!(check(vec![put("a"), nested(vec![put("a")], vec![])]), dup);
    assert_eq!(check(vec![nested(vec![put("a")], vec![]), put("a")]), dup);
    assert_eq!(
        check(vec![
            nested(vec![put("a")], vec![]),
            nested(vec![], vec![put("a")])
        ]),
        dup
    );
    assert_eq!(
        check(vec![
            nested(vec![nested(vec![put("a")], vec![])], vec![]),
            put("a")
        ]),
        dup,
        "two levels deep"
    );
    assert_eq!(check(vec![put("a"), put("b"), get("a"), get("a")]), Ok(()));
}

#[test]
fn the_two_branches_of_a_nested_txn_may_put_the_same_key() {
    assert_eq!(check(vec![nested(vec![put("a")], vec![put("a")])]), Ok(()));
    // ... and so may the two branches of the outer txn.
    let t = TxnRequest {
        compare: Vec::new(),
        success: vec![put("a")],
        failure: vec![put("a")],
    };
    assert_eq!(validate_txn(&t), Ok(()));
}

#[test]
fn a_put_inside_a_delete_range_is_refused() {
    let dup = Err(KvError::DuplicateKey);
    assert_eq!(check(vec![del("a", b""), put("a")]), dup);
    assert_eq!(check(vec![put("a"), del("a", b"")]), dup, "in either order");
    assert_eq!(check(vec![del("a", b"c"), put("b")]), dup);
    assert_eq!(
        check(vec![del("a", b"c"), put("c")]),
        Ok(()),
        "end is exclusive"
    );
    assert_eq!(check(vec![del("a", b""), put("a\0")]), Ok(()));
    assert_eq!(
        check(vec![del("a", b"c"), nested(vec![put("b")], vec![])]),
        dup
    );
    assert_eq!(
        check(vec![nested(vec![], vec![put("b")]), del("a", b"c")]),
        dup
    );
    assert_eq!(
        check(vec![nested(vec![del("a", b"c")], vec![]), put("b")]),
        dup
    );
    assert_eq!(
        check(vec![
            nested(vec![del("a", b"c")], vec![]),
            nested(vec![put("b")], vec![])
        ]),
        dup,
        "a delete in an earlier nested txn"
    );
}

#[test]
fn deletes_may_overlap() {
    assert_eq!(
        check(vec![del("a", b"c"), del("b", b"d"), del("b", b"")]),
        Ok(())
    );
}

#[test]
fn etcd_quirk_a_later_nested_delete_does_not_conflict_with_an_earlier_nested_put() {
    assert_eq!(
        check(vec![
            nested(vec![put("b")], vec![]),
            nested(vec![del("a", b"c")], vec![])
        ]),
        Ok(())
    );
}

#[test]
fn etcd_quirk_from_key_and_inverted_deletes_conflict_with_nothing() {
    assert_eq!(check(vec![del("a", b"\0"), put("b")]), Ok(()));
    assert_eq!(check(vec![del("\0", b"\0"), put("b")]), Ok(()));
    assert_eq!(check(vec![del("c", b"a"), put("b")]), Ok(()));
}

#[test]
fn branches_of_the_outer_txn_are_checked_separately() {
    let t = TxnRequest {
        compare: Vec::new(),
        success: vec![del("a", b"z")],
        failure: vec![put("b")],
    };
    assert_eq!(validate_txn(&t), Ok(()));
    let t = TxnRequest {
        compare: Vec::new(),
        success: vec![],
        failure: vec![put("b"), put("b")],
    };
    assert_eq!(validate_txn(&t), Err(KvError::DuplicateKey));
}

#[test]
fn commands_are_validated_by_kind() {
    assert_eq!(
        validate_command(&Command::Put(PutRequest::default())),
        Err(KvError::EmptyKey)
    );
    assert_eq!(
        validate_command(&Command::DeleteRange(DeleteRangeRequest::default())),
        Err(KvError::EmptyKey)
    );
    assert_eq!(
        validate_command(&Command::Txn(txn(vec![put("a"), put("a")]))),
        Err(KvError::DuplicateKey)
    );
    assert_eq!(
        validate_command(&Command::Compact(CompactionRequest {
            revision: -5,
            physical: true
        })),
        Err(KvError::negative("revision", -5))
    );
    assert_eq!(
        validate_command(&Command::Compact(CompactionRequest::default())),
        Ok(())
    );
}

#[test]
fn sort_options_from_wire_values() {
    use crate::kv::request::{SortOrder, SortTarget};
    assert_eq!(SortOrder::try_from(2), Ok(SortOrder::Descend));
    assert_eq!(SortTarget::try_from(4), Ok(SortTarget::Value));
    assert_eq!(SortOrder::try_from(3), Err(KvError::InvalidSortOption));
    assert_eq!(SortTarget::try_from(-1), Err(KvError::InvalidSortOption));
    assert_eq!(
        KvError::InvalidSortOption.to_string(),
        "invalid sort option"
    );
}

#[test]
fn a_key_both_branches_of_a_nested_txn_put_counts_once_further_up() {
    // The inner txn's two branches put the same key; the key must not then
    // count as put twice by the levels above.
    let inner = nested(vec![put("a")], vec![put("a")]);
    assert_eq!(check(vec![nested(vec![], vec![inner.clone()])]), Ok(()));
    assert_eq!(
        check(vec![nested(vec![inner], vec![]), put("a")]),
        Err(KvError::DuplicateKey)
    );
}
