//! One test per etcd rule, on [`MemMvcc`] (which runs the shared
//! execution code). Expected values are worked out from etcd's rules in the
//! comments, not read off the implementation.

use super::*;
use CompareResult::{Equal, Greater, Less, NotEqual};

fn txn_answer(s: &mut MemMvcc, t: TxnRequest) -> Revisioned<TxnResponse> {
    ok(s, Command::Txn(t)).map(|body| match body {
        CommandResponse::Txn(t) => t,
        other => panic!("not a txn answer: {other:?}"),
    })
}

fn range_of(op: &ResponseOp) -> &Revisioned<RangeResponse> {
    match op {
        ResponseOp::Range(r) => r,
        other => panic!("not a range answer: {other:?}"),
    }
}

// ---- revisions and key bookkeeping ----

#[test]
fn a_new_store_is_at_revision_one_and_empty() {
    let s = MemMvcc::new();
    assert_eq!((s.revision(), s.compact_revision()), (1, 0));
    let r = s.range(&all()).unwrap();
    assert_eq!(r.revision, 1);
    assert_eq!(r.body, RangeResponse::default());
}

#[test]
fn a_put_creates_a_revision_and_counts_versions() {
    let mut s = MemMvcc::new();
    let first = ok(&mut s, Command::Put(put("a", "1")));
    assert_eq!(first.revision, 2);
    let second = ok(&mut s, Command::Put(put("a", "2")));
    assert_eq!(second.revision, 3);
    assert_eq!(
        current(&s, "a").unwrap(),
        KeyValue {
            key: b("a"),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b("2"),
            lease: 0,
        }
    );
    assert_eq!(s.revision(), 3);
}

#[test]
fn a_delete_ends_the_key_life_and_the_next_put_starts_at_version_one() {
    let mut s = store_with(&[("a", "1"), ("a", "2")]); // revisions 2, 3
    ok(&mut s, Command::DeleteRange(del("a", b""))); // 4
    assert_eq!(current(&s, "a"), None);
    ok(&mut s, Command::Put(put("a", "3"))); // 5
    let kv = current(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn a_delete_that_finds_nothing_creates_no_revision() {
    let mut s = store_with(&[("a", "1")]); // 2
    for d in [del("b", b""), del("b", b"c"), del("c", b"a")] {
        let applied = s.apply(&Command::DeleteRange(d));
        assert!(applied.events.is_empty());
        assert_eq!(applied.new_revision(), None);
        let answer = applied.answer.unwrap();
        assert_eq!(answer.revision, 2, "the current revision");
        assert_eq!(
            answer.body,
            CommandResponse::DeleteRange(DeleteRangeResponse::default())
        );
    }
    assert_eq!(s.revision(), 2);
}

#[test]
fn a_range_delete_is_one_revision_with_sub_revisions_in_key_order() {
    let mut s = store_with(&[("b", "2"), ("a", "1"), ("c", "3")]); // b@2 a@3 c@4
    let before: Vec<KeyValue> = s.range(&all()).unwrap().body.kvs;
    let applied = s.apply(&Command::DeleteRange(DeleteRangeRequest {
        prev_kv: true,
        ..del("a", b"c")
    }));
    let answer = applied.answer.unwrap();
    assert_eq!(answer.revision, 5);
    assert_eq!(
        answer.body,
        CommandResponse::DeleteRange(DeleteRangeResponse {
            deleted: 2,
            prev_kvs: before[..2].to_vec(),
        })
    );
    let expected: Vec<Event> = before[..2]
        .iter()
        .map(|kv| Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: kv.key.clone(),
                mod_revision: 5,
                ..KeyValue::default()
            },
            prev_kv: Some(kv.clone()),
        })
        .collect();
    assert_eq!(applied.events, expected);
    assert_eq!(keys(&s.range(&all()).unwrap().body), ["c"]);
}

#[test]
fn prev_kv_of_a_put_is_the_previous_record_when_asked() {
    let mut s = MemMvcc::new();
    let asked = PutRequest {
        prev_kv: true,
        ..put("a", "1")
    };
    assert_eq!(
        ok(&mut s, Command::Put(asked.clone())).body,
        CommandResponse::Put(PutResponse { prev_kv: None }),
        "absent key"
    );
    let old = current(&s, "a");
    assert_eq!(
        ok(&mut s, Command::Put(asked)).body,
        CommandResponse::Put(PutResponse { prev_kv: old })
    );
    assert_eq!(
        ok(&mut s, Command::Put(put("a", "3"))).body,
        CommandResponse::Put(PutResponse { prev_kv: None }),
        "not asked"
    );
}

#[test]
fn put_events_carry_the_new_record_and_the_previous_one() {
    let mut s = store_with(&[("a", "1")]);
    let old = current(&s, "a");
    let applied = s.apply(&Command::Put(put("a", "2")));
    assert_eq!(
        applied.events,
        vec![Event {
            kind: EventKind::Put,
            kv: current(&s, "a").unwrap(),
            prev_kv: old,
        }]
    );
    let created = s.apply(&Command::Put(put("b", "1")));
    assert_eq!(created.events[0].prev_kv, None);
}

// ---- ignore_value / ignore_lease / leases ----

#[test]
fn ignore_value_keeps_the_value_and_bumps_the_version() {
    let mut s = store_with(&[("a", "keep")]);
    ok(
        &mut s,
        Command::Put(PutRequest {
            key: b("a"),
            lease: 9,
            ignore_value: true,
            ..PutRequest::default()
        }),
    );
    let kv = current(&s, "a").unwrap();
    assert_eq!((kv.value, kv.version, kv.lease), (b("keep"), 2, 9));
}

#[test]
fn ignore_lease_keeps_the_lease() {
    let mut s = MemMvcc::new();
    ok(
        &mut s,
        Command::Put(PutRequest {
            lease: 42,
            ..put("a", "1")
        }),
    );
    ok(
        &mut s,
        Command::Put(PutRequest {
            ignore_lease: true,
            ..put("a", "2")
        }),
    );
    let kv = current(&s, "a").unwrap();
    assert_eq!((kv.value, kv.lease), (b("2"), 42));
}

#[test]
fn ignore_flags_on_a_missing_key_are_key_not_found_and_change_nothing() {
    let mut s = MemMvcc::new();
    for p in [
        PutRequest {
            key: b("a"),
            ignore_value: true,
            ..PutRequest::default()
        },
        PutRequest {
            ignore_lease: true,
            ..put("a", "1")
        },
    ] {
        let applied = s.apply(&Command::Put(p));
        assert_eq!(applied.answer, Err(KvError::KeyNotFound));
        assert_eq!(KvError::KeyNotFound.to_string(), "key not found");
        assert!(applied.events.is_empty());
    }
    assert_eq!(s.revision(), 1);
}

#[test]
fn ignore_value_with_a_value_is_refused_by_apply_too() {
    let mut s = store_with(&[("a", "1")]);
    let applied = s.apply(&Command::Put(PutRequest {
        ignore_value: true,
        ..put("a", "2")
    }));
    assert_eq!(applied.answer, Err(KvError::ValueProvided));
    assert_eq!(KvError::ValueProvided.to_string(), "value is provided");
    assert_eq!(KvError::LeaseProvided.to_string(), "lease is provided");
    assert_eq!(s.revision(), 2);
}

#[test]
fn lease_ids_are_opaque_for_now_and_comparable() {
    let mut s = MemMvcc::new();
    ok(
        &mut s,
        Command::Put(PutRequest {
            lease: 77,
            ..put("a", "1")
        }),
    );
    let t = txn_answer(
        &mut s,
        txn(
            vec![cmp("a", Equal, CompareTarget::Lease(77))],
            vec![],
            vec![],
        ),
    );
    assert!(t.body.succeeded);
}

// ---- compares ----

#[test]
fn compares_on_a_missing_key_see_zeros_but_never_a_value() {
    let mut s = MemMvcc::new();
    let holds =
        |s: &mut MemMvcc, c: Compare| txn_answer(s, txn(vec![c], vec![], vec![])).body.succeeded;
    for target in [
        CompareTarget::Version(0),
        CompareTarget::CreateRevision(0),
        CompareTarget::ModRevision(0),
        CompareTarget::Lease(0),
    ] {
        assert!(holds(&mut s, cmp("x", Equal, target.clone())), "{target:?}");
        assert!(!holds(&mut s, cmp("x", Greater, target)));
    }
    assert!(!holds(
        &mut s,
        cmp("x", Equal, CompareTarget::Value(Vec::new()))
    ));
    assert!(!holds(
        &mut s,
        cmp("x", NotEqual, CompareTarget::Value(b("v")))
    ));
    assert!(!holds(&mut s, cmp("x", Less, CompareTarget::Value(b("v")))));
}

#[test]
fn value_compares_are_bytewise() {
    let mut s = store_with(&[("a", "m")]);
    let holds = |s: &mut MemMvcc, r, v: &str| {
        txn_answer(
            s,
            txn(
                vec![cmp("a", r, CompareTarget::Value(b(v)))],
                vec![],
                vec![],
            ),
        )
        .body
        .succeeded
    };
    assert!(holds(&mut s, Equal, "m"));
    assert!(holds(&mut s, Greater, "l"));
    assert!(holds(&mut s, Greater, "")); // "m" > ""
    assert!(holds(&mut s, Less, "ma")); // a prefix sorts first
    assert!(holds(&mut s, NotEqual, "M"));
    assert!(!holds(&mut s, Less, "m"));
}

#[test]
fn revision_compares_use_the_stored_numbers() {
    let mut s = store_with(&[("a", "1"), ("b", "1"), ("a", "2")]); // a: create 2 mod 4 v2
    let holds = |s: &mut MemMvcc, c| txn_answer(s, txn(vec![c], vec![], vec![])).body.succeeded;
    assert!(holds(
        &mut s,
        cmp("a", Equal, CompareTarget::CreateRevision(2))
    ));
    assert!(holds(
        &mut s,
        cmp("a", Equal, CompareTarget::ModRevision(4))
    ));
    assert!(holds(&mut s, cmp("a", Equal, CompareTarget::Version(2))));
    assert!(holds(&mut s, cmp("a", Less, CompareTarget::ModRevision(5))));
    assert!(!holds(&mut s, cmp("a", Greater, CompareTarget::Version(2))));
}

#[test]
fn a_range_compare_needs_every_key_and_an_empty_range_is_a_missing_key() {
    let mut s = store_with(&[("a", "1"), ("b", "1"), ("b", "2")]); // a v1, b v2
    let holds = |s: &mut MemMvcc, end: &[u8], r, t| {
        let c = Compare {
            range_end: end.to_vec(),
            ..cmp("a", r, t)
        };
        txn_answer(s, txn(vec![c], vec![], vec![])).body.succeeded
    };
    assert!(holds(&mut s, b"c", Greater, CompareTarget::Version(0)));
    assert!(
        !holds(&mut s, b"c", Equal, CompareTarget::Version(1)),
        "b has version 2"
    );
    assert!(
        holds(&mut s, b"b", Equal, CompareTarget::Version(1)),
        "[a, b) is just a"
    );
    assert!(
        holds(&mut s, b"\0", Greater, CompareTarget::Version(0)),
        "from a on"
    );
    let empty = |s: &mut MemMvcc, r, t| {
        let c = Compare {
            key: b("x"),
            range_end: b("y"),
            result: r,
            target: t,
        };
        txn_answer(s, txn(vec![c], vec![], vec![])).body.succeeded
    };
    assert!(empty(&mut s, Equal, CompareTarget::Version(0)));
    assert!(!empty(&mut s, Equal, CompareTarget::Value(Vec::new())));
}

#[test]
fn all_compares_must_hold() {
    let mut s = store_with(&[("a", "1")]);
    let t = txn(
        vec![
            cmp("a", Equal, CompareTarget::Version(1)),
            cmp("b", Equal, CompareTarget::Version(1)),
        ],
        vec![RequestOp::Put(put("s", "1"))],
        vec![RequestOp::Put(put("f", "1"))],
    );
    assert!(!txn_answer(&mut s, t).body.succeeded);
    assert!(current(&s, "f").is_some() && current(&s, "s").is_none());
}

#[test]
fn nested_compares_see_the_state_before_the_txn() {
    // etcd evaluates every compare first: the nested one does not see the
    // outer put of `a`.
    let mut s = MemMvcc::new();
    let inner = txn(
        vec![cmp("a", Equal, CompareTarget::Version(0))],
        vec![RequestOp::Put(put("b", "then"))],
        vec![RequestOp::Put(put("c", "else"))],
    );
    let t = txn_answer(
        &mut s,
        txn(
            vec![],
            vec![RequestOp::Put(put("a", "1")), RequestOp::Txn(inner)],
            vec![],
        ),
    );
    match &t.body.responses[1] {
        ResponseOp::Txn(inner) => assert!(inner.succeeded),
        other => panic!("{other:?}"),
    }
    assert!(current(&s, "b").is_some() && current(&s, "c").is_none());
}

// ---- transactions ----

#[test]
fn a_read_only_txn_creates_no_revision() {
    let mut s = store_with(&[("a", "1")]);
    let applied = s.apply(&Command::Txn(txn(
        vec![cmp("a", Equal, CompareTarget::Version(1))],
        vec![RequestOp::Range(rng("a", b""))],
        vec![RequestOp::Put(put("a", "x"))],
    )));
    assert!(applied.events.is_empty());
    let answer = applied.answer.unwrap();
    assert_eq!(answer.revision, 2);
    assert_eq!(s.revision(), 2);
}

#[test]
fn a_failed_compare_runs_the_failure_branch_and_writes_only_if_it_writes() {
    let mut s = store_with(&[("a", "1")]);
    let failing = || vec![cmp("a", Equal, CompareTarget::Version(9))];
    let t = txn_answer(
        &mut s,
        txn(failing(), vec![RequestOp::Put(put("a", "x"))], vec![]),
    );
    assert_eq!((t.body.succeeded, t.revision, s.revision()), (false, 2, 2));
    assert!(t.body.responses.is_empty());
    let t = txn_answer(
        &mut s,
        txn(failing(), vec![], vec![RequestOp::Put(put("b", "1"))]),
    );
    assert_eq!((t.body.succeeded, t.revision, s.revision()), (false, 3, 3));
}

#[test]
fn a_txn_is_one_revision_with_sub_revisions_in_execution_order() {
    let mut s = store_with(&[("c", "1")]); // 2
    let applied = s.apply(&Command::Txn(txn(
        vec![],
        vec![
            RequestOp::Put(put("b", "1")),
            RequestOp::Txn(txn(vec![], vec![RequestOp::Put(put("a", "1"))], vec![])),
            RequestOp::DeleteRange(del("c", b"")),
        ],
        vec![],
    )));
    let got: Vec<(EventKind, Vec<u8>, i64)> = applied
        .events
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        vec![
            (EventKind::Put, b("b"), 3),
            (EventKind::Put, b("a"), 3),
            (EventKind::Delete, b("c"), 3),
        ]
    );
    assert_eq!(s.revision(), 3);
    let stored: Vec<ChangeIdAndKey> = s
        .versions()
        .filter(|(_, id, _)| id.0 == 3)
        .map(|(k, id, _)| (id, k.to_vec()))
        .collect();
    let mut expected = vec![((3, 0), b("b")), ((3, 1), b("a")), ((3, 2), b("c"))];
    expected.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(stored, expected, "versions keyed by (revision, sub)");
}

type ChangeIdAndKey = ((i64, i64), Vec<u8>);

#[test]
fn ranges_in_a_txn_see_its_earlier_writes_and_report_the_revision_so_far() {
    let mut s = store_with(&[("a", "old")]); // 2
    let t = txn_answer(
        &mut s,
        txn(
            vec![],
            vec![
                RequestOp::Range(rng("a", b"")),
                RequestOp::DeleteRange(del("zz", b"")),
                RequestOp::Put(put("a", "new")),
                RequestOp::Range(rng("a", b"")),
                RequestOp::DeleteRange(del("zz", b"")),
            ],
            vec![],
        ),
    );
    assert_eq!(t.revision, 3);
    let before = range_of(&t.body.responses[0]);
    assert_eq!(
        (before.revision, before.body.kvs[0].value.clone()),
        (2, b("old"))
    );
    match &t.body.responses[1] {
        ResponseOp::DeleteRange(d) => assert_eq!((d.revision, d.body.deleted), (2, 0)),
        other => panic!("{other:?}"),
    }
    match &t.body.responses[2] {
        ResponseOp::Put(p) => assert_eq!(p.revision, 3),
        other => panic!("{other:?}"),
    }
    let after = range_of(&t.body.responses[3]);
    assert_eq!(after.revision, 3);
    let kv = &after.body.kvs[0];
    assert_eq!(
        (kv.value.clone(), kv.mod_revision, kv.version),
        (b("new"), 3, 2)
    );
    match &t.body.responses[4] {
        ResponseOp::DeleteRange(d) => assert_eq!((d.revision, d.body.deleted), (3, 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ranges_in_a_txn_merge_its_writes_with_the_store_in_key_order() {
    let mut s = store_with(&[("b", "1"), ("d", "1")]);
    let t = txn_answer(
        &mut s,
        txn(
            vec![],
            vec![
                RequestOp::Put(put("a", "1")),
                RequestOp::Put(put("c", "1")),
                RequestOp::Put(put("e", "1")),
                RequestOp::Range(all()),
                RequestOp::Range(RangeRequest { limit: 2, ..all() }),
            ],
            vec![],
        ),
    );
    assert_eq!(
        keys(&range_of(&t.body.responses[3]).body),
        ["a", "b", "c", "d", "e"]
    );
    let limited = &range_of(&t.body.responses[4]).body;
    assert_eq!(
        (keys(limited), limited.more, limited.count),
        (vec!["a".to_string(), "b".into()], true, 5)
    );
}

#[test]
fn a_range_in_a_txn_at_an_explicit_revision_sees_history_only() {
    let mut s = store_with(&[("a", "old")]); // 2
    let t = txn_answer(
        &mut s,
        txn(
            vec![],
            vec![
                RequestOp::Put(put("a", "new")),
                RequestOp::Range(RangeRequest {
                    revision: 2,
                    ..rng("a", b"")
                }),
            ],
            vec![],
        ),
    );
    assert_eq!(range_of(&t.body.responses[1]).body.kvs[0].value, b("old"));
}

#[test]
fn a_range_in_a_txn_at_the_txns_own_revision_is_a_future_revision() {
    // etcd checks a txn's ranges against the revision before the txn.
    let mut s = store_with(&[("a", "1")]); // 2
    let applied = s.apply(&Command::Txn(txn(
        vec![],
        vec![
            RequestOp::Put(put("b", "1")),
            RequestOp::Range(RangeRequest {
                revision: 3,
                ..rng("b", b"")
            }),
        ],
        vec![],
    )));
    assert_eq!(applied.answer, Err(KvError::FutureRevision));
    assert!(applied.events.is_empty());
    assert_eq!((s.revision(), current(&s, "b")), (2, None));
}

#[test]
fn a_txn_that_fails_midway_changes_nothing() {
    let mut s = store_with(&[("a", "1")]);
    let applied = s.apply(&Command::Txn(txn(
        vec![],
        vec![
            RequestOp::Put(put("a", "2")),
            RequestOp::Put(PutRequest {
                key: b("missing"),
                ignore_value: true,
                ..PutRequest::default()
            }),
        ],
        vec![],
    )));
    assert_eq!(applied.answer, Err(KvError::KeyNotFound));
    assert!(applied.events.is_empty());
    assert_eq!(current(&s, "a").unwrap().value, b("1"));
    assert_eq!(s.revision(), 2);
}

#[test]
fn duplicate_keys_are_refused_at_apply_and_change_nothing() {
    let mut s = MemMvcc::new();
    let applied = s.apply(&Command::Txn(txn(
        vec![],
        vec![RequestOp::Put(put("a", "1")), RequestOp::Put(put("a", "2"))],
        vec![],
    )));
    assert_eq!(applied.answer, Err(KvError::DuplicateKey));
    assert_eq!(
        KvError::DuplicateKey.to_string(),
        "duplicate key given in txn request"
    );
    assert_eq!(
        KvError::TooManyOps.to_string(),
        "too many operations in txn request"
    );
    assert_eq!(s.revision(), 1);
}

#[test]
fn a_later_nested_delete_of_a_key_an_earlier_nested_txn_put_deletes_it() {
    // Accepted by etcd's duplicate-key rule (see validate). The delete
    // sees the put; its event's prev_kv is the record before the txn, as
    // etcd's watch reads it at mod_revision - 1; the delete's own prev_kvs
    // answer is the record it deleted.
    let mut s = store_with(&[("a", "old")]); // 2
    let old = current(&s, "a").unwrap();
    let applied = s.apply(&Command::Txn(txn(
        vec![],
        vec![
            RequestOp::Txn(txn(vec![], vec![RequestOp::Put(put("a", "new"))], vec![])),
            RequestOp::Txn(txn(
                vec![],
                vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    prev_kv: true,
                    ..del("a", b"")
                })],
                vec![],
            )),
        ],
        vec![],
    )));
    let put_kv = KeyValue {
        key: b("a"),
        create_revision: 2,
        mod_revision: 3,
        version: 2,
        value: b("new"),
        lease: 0,
    };
    assert_eq!(
        applied.events,
        vec![
            Event {
                kind: EventKind::Put,
                kv: put_kv.clone(),
                prev_kv: Some(old.clone()),
            },
            Event {
                kind: EventKind::Delete,
                kv: Event::delete_marker(b("a"), 3),
                prev_kv: Some(old),
            },
        ]
    );
    let answer = match applied.answer.unwrap().body {
        CommandResponse::Txn(t) => t,
        other => panic!("{other:?}"),
    };
    match &answer.responses[1] {
        ResponseOp::Txn(inner) => match &inner.responses[0] {
            ResponseOp::DeleteRange(d) => assert_eq!(d.body.prev_kvs, vec![put_kv]),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(current(&s, "a"), None);
    // Both changes are in the history, in order.
    let a: Vec<_> = s
        .versions()
        .filter(|(k, _, _)| *k == b"a")
        .map(|(_, id, r)| (id, r.is_some()))
        .collect();
    assert_eq!(a, vec![((2, 0), true), ((3, 0), true), ((3, 1), false)]);
}

// ---- ranges ----

fn five() -> MemMvcc {
    store_with(&[("a", "5"), ("b", "4"), ("c", "3"), ("d", "2"), ("e", "1")]) // a@2 … e@6
}

#[test]
fn range_end_conventions_select_the_right_keys() {
    let s = store_with(&[("a", "1"), ("ab", "1"), ("b", "1"), ("\u{7f}", "1")]);
    let k = |r: RangeRequest| keys(&s.range(&r).unwrap().body);
    assert_eq!(k(rng("a", b"")), ["a"]);
    assert_eq!(k(rng("a", &prefix_end(b"a"))), ["a", "ab"]);
    assert_eq!(k(rng("ab", b"\0")), ["ab", "b", "\u{7f}"]);
    assert_eq!(k(all()).len(), 4);
    assert_eq!(k(rng("b", b"a")), Vec::<String>::new());
}

#[test]
fn limit_sets_more_and_count_is_the_whole_range() {
    let s = five();
    let r = |limit| s.range(&RangeRequest { limit, ..all() }).unwrap().body;
    let two = r(2);
    assert_eq!(
        (keys(&two), two.more, two.count),
        (vec!["a".to_string(), "b".into()], true, 5)
    );
    assert!(!r(5).more && !r(6).more && !r(0).more);
    assert_eq!(r(5).kvs.len(), 5);
}

#[test]
fn count_is_taken_before_the_filters_and_more_after_them() {
    let s = five(); // mod revisions 2..=6
    let r = s
        .range(&RangeRequest {
            min_mod_revision: 4,
            limit: 2,
            ..all()
        })
        .unwrap()
        .body;
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["c".to_string(), "d".into()], true, 5)
    );
    let r = s
        .range(&RangeRequest {
            max_mod_revision: 3,
            min_create_revision: 3,
            ..all()
        })
        .unwrap()
        .body;
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["b".to_string()], false, 5)
    );
    let r = s
        .range(&RangeRequest {
            max_create_revision: 4,
            limit: 3,
            ..all()
        })
        .unwrap()
        .body;
    assert_eq!(
        (keys(&r), r.more),
        (vec!["a".to_string(), "b".into(), "c".into()], false)
    );
}

#[test]
fn sorting_by_each_target_and_order() {
    let s = five(); // values descend as keys ascend
    let sorted = |order, target| {
        keys(
            &s.range(&RangeRequest {
                sort_order: order,
                sort_target: target,
                ..all()
            })
            .unwrap()
            .body,
        )
    };
    let asc = ["a", "b", "c", "d", "e"];
    let desc = ["e", "d", "c", "b", "a"];
    assert_eq!(sorted(SortOrder::None, SortTarget::Key), asc);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), desc);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Value), desc);
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Value),
        desc,
        "None means Ascend"
    );
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), desc);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Create), asc);
}

#[test]
fn sort_ties_keep_key_order_in_both_directions() {
    // Versions: a 1, b 2, c 1, d 2.
    let s = store_with(&[
        ("a", "1"),
        ("b", "1"),
        ("c", "1"),
        ("d", "1"),
        ("b", "2"),
        ("d", "2"),
    ]);
    let sorted = |order| {
        keys(
            &s.range(&RangeRequest {
                sort_order: order,
                sort_target: SortTarget::Version,
                ..all()
            })
            .unwrap()
            .body,
        )
    };
    assert_eq!(sorted(SortOrder::Ascend), ["a", "c", "b", "d"]);
    assert_eq!(sorted(SortOrder::Descend), ["b", "d", "a", "c"]);
}

#[test]
fn etcd_quirk_a_target_without_an_order_sorts_only_the_first_limit_plus_one_keys() {
    // Versions: a 3, b 2, c 1, d 1. With no order, etcd fetches limit + 1 = 3
    // keys (a, b, c), sorts them by version (c, b, a) and keeps 2.
    let s = store_with(&[
        ("a", "1"),
        ("a", "2"),
        ("a", "3"),
        ("b", "1"),
        ("b", "2"),
        ("c", "1"),
        ("d", "1"),
    ]);
    let r = |order| {
        s.range(&RangeRequest {
            sort_order: order,
            sort_target: SortTarget::Version,
            limit: 2,
            ..all()
        })
        .unwrap()
        .body
    };
    let none = r(SortOrder::None);
    assert_eq!(
        (keys(&none), none.more),
        (vec!["c".to_string(), "b".into()], true)
    );
    let asc = r(SortOrder::Ascend);
    assert_eq!(
        (keys(&asc), asc.more),
        (vec!["c".to_string(), "d".into()], true)
    );
}

#[test]
fn keys_only_drops_values_after_sorting_and_keeps_the_rest() {
    let mut s = five();
    ok(
        &mut s,
        Command::Put(PutRequest {
            lease: 3,
            ..put("a", "9")
        }),
    );
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            limit: 1,
            ..all()
        })
        .unwrap()
        .body;
    assert_eq!(
        r.kvs,
        vec![KeyValue {
            key: b("a"),
            create_revision: 2,
            mod_revision: 7,
            version: 2,
            value: Vec::new(),
            lease: 3,
        }]
    );
    assert!(r.more);
}

#[test]
fn count_only_returns_the_count_and_no_keys() {
    let s = five();
    let r = s
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            min_mod_revision: 6,
            ..all()
        })
        .unwrap()
        .body;
    assert_eq!(
        r,
        RangeResponse {
            kvs: vec![],
            more: false,
            count: 5
        }
    );
}

#[test]
fn ranges_at_past_revisions_see_history() {
    let mut s = store_with(&[("a", "1"), ("b", "1")]); // 2, 3
    ok(&mut s, Command::Put(put("a", "2"))); // 4
    ok(&mut s, Command::DeleteRange(del("b", b""))); // 5
    let at = |rev| {
        let r = s
            .range(&RangeRequest {
                revision: rev,
                ..all()
            })
            .unwrap();
        assert_eq!(r.revision, 5, "the header revision is the current one");
        r.body
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.clone(),
                    kv.version,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(at(1), vec![]);
    assert_eq!(at(2), vec![("a".into(), b("1"), 1)]);
    assert_eq!(
        at(3),
        vec![("a".into(), b("1"), 1), ("b".into(), b("1"), 1)]
    );
    assert_eq!(
        at(4),
        vec![("a".into(), b("2"), 2), ("b".into(), b("1"), 1)]
    );
    assert_eq!(at(5), vec![("a".into(), b("2"), 2)]);
    assert_eq!(at(0), at(5));
}

// ---- revisions out of reach, compaction ----

#[test]
fn future_and_compacted_revisions_are_refused_and_the_compact_revision_is_readable() {
    let mut s = store_with(&[("a", "1"), ("a", "2"), ("a", "3"), ("a", "4")]); // 2..=5
    let compact = s.apply(&Command::Compact(CompactionRequest {
        revision: 3,
        physical: false,
    }));
    assert_eq!(
        compact.answer.unwrap().revision,
        5,
        "compaction makes no revision"
    );
    assert_eq!((s.revision(), s.compact_revision()), (5, 3));
    let at = |rev| {
        s.range(&RangeRequest {
            revision: rev,
            ..rng("a", b"")
        })
    };
    assert_eq!(
        at(3).unwrap().body.kvs[0].value,
        b("2"),
        "reading at the compact revision"
    );
    assert_eq!(
        at(2),
        Err(KvError::Compacted {
            compact_revision: 3
        })
    );
    assert_eq!(at(6), Err(KvError::FutureRevision));
    assert_eq!(at(5).unwrap().body.kvs[0].value, b("4"));
    assert_eq!(
        KvError::Compacted {
            compact_revision: 3
        }
        .to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        KvError::FutureRevision.to_string(),
        "mvcc: required revision is a future revision"
    );
}

#[test]
fn compaction_refuses_the_past_and_the_future() {
    let mut s = store_with(&[("a", "1"), ("a", "2")]); // 2, 3
    let compact = |s: &mut MemMvcc, revision| {
        s.apply(&Command::Compact(CompactionRequest {
            revision,
            physical: true,
        }))
        .answer
        .map(|r| r.revision)
    };
    assert_eq!(compact(&mut s, 4), Err(KvError::FutureRevision));
    assert_eq!(
        compact(&mut s, 0),
        Err(KvError::Compacted {
            compact_revision: 0
        })
    );
    assert_eq!(compact(&mut s, 2), Ok(3));
    assert_eq!(
        compact(&mut s, 2),
        Err(KvError::Compacted {
            compact_revision: 2
        })
    );
    assert_eq!(
        compact(&mut s, 1),
        Err(KvError::Compacted {
            compact_revision: 2
        })
    );
    assert_eq!(compact(&mut s, 3), Ok(3), "up to the current revision");
    assert_eq!(s.compact_revision(), 3);
}

#[test]
fn physical_compaction_keeps_exactly_what_reads_at_or_after_it_need() {
    let mut s = MemMvcc::new();
    ok(&mut s, Command::Put(put("a", "1"))); // 2
    ok(&mut s, Command::Put(put("a", "2"))); // 3
    ok(&mut s, Command::Put(put("b", "1"))); // 4
    ok(&mut s, Command::DeleteRange(del("b", b""))); // 5
    ok(&mut s, Command::Put(put("c", "1"))); // 6
    ok(&mut s, Command::Put(put("a", "3"))); // 7
    ok(&mut s, Command::DeleteRange(del("c", b""))); // 8
    let before: Vec<_> = (6..=8)
        .map(|rev| {
            s.range(&RangeRequest {
                revision: rev,
                ..all()
            })
            .unwrap()
        })
        .collect();
    let catch_up = s.events(6, KeyRange::From(b"\0"), usize::MAX).unwrap();
    ok(
        &mut s,
        Command::Compact(CompactionRequest {
            revision: 6,
            physical: true,
        }),
    );
    // a: the latest below 6 (rev 3) and 7; b: deleted below 6, nothing; c: 6 and 8.
    let kept: Vec<_> = s
        .versions()
        .map(|(k, id, r)| (String::from_utf8_lossy(k).into_owned(), id, r.is_some()))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("a".into(), (3, 0), true),
            ("a".into(), (7, 0), true),
            ("c".into(), (6, 0), true),
            ("c".into(), (8, 0), false),
        ]
    );
    assert_eq!(s.log_len(), 3, "log entries below 6 are gone");
    for (rev, r) in (6..=8).zip(before) {
        assert_eq!(
            s.range(&RangeRequest {
                revision: rev,
                ..all()
            })
            .unwrap(),
            r
        );
    }
    assert_eq!(
        s.events(6, KeyRange::From(b"\0"), usize::MAX).unwrap(),
        catch_up
    );
    assert_eq!(
        s.events(5, KeyRange::From(b"\0"), usize::MAX),
        Err(KvError::Compacted {
            compact_revision: 6
        })
    );
}

#[test]
fn physical_compaction_runs_in_bounded_steps() {
    let mut s = MemMvcc::new();
    for i in 0..10 {
        s.commit(&s.execute(&Command::Put(put("k", &i.to_string()))))
            .unwrap();
    }
    let c = s.execute(&Command::Compact(CompactionRequest {
        revision: 11,
        physical: false,
    }));
    s.commit(&c).unwrap();
    assert_eq!(s.log_len(), 10);
    assert!(!s.compact_physically(4));
    assert_eq!(s.log_len(), 6);
    assert_eq!(current(&s, "k").unwrap().value, b("9"));
    assert!(s.compact_physically(100));
    assert_eq!(s.log_len(), 1);
    // The version at 11 and the latest below it, at 10.
    let kept: Vec<_> = s.versions().map(|(_, id, _)| id).collect();
    assert_eq!(kept, vec![(10, 0), (11, 0)]);
}

// ---- events for watchers ----

#[test]
fn catch_up_events_equal_the_live_events_and_never_split_a_revision() {
    let mut s = MemMvcc::new();
    let mut live = Vec::new();
    for cmd in [
        Command::Put(put("a", "1")),
        Command::Put(put("b", "1")),
        Command::Txn(txn(
            vec![],
            vec![
                RequestOp::Put(put("a", "2")),
                RequestOp::DeleteRange(del("b", b"")),
            ],
            vec![],
        )),
        Command::Put(put("x", "1")),
    ] {
        live.extend(s.apply(&cmd).events);
    }
    assert_eq!(
        s.events(1, KeyRange::From(b"\0"), usize::MAX).unwrap(),
        live
    );
    let only_a: Vec<Event> = live.iter().filter(|e| e.kv.key == b"a").cloned().collect();
    assert_eq!(
        s.events(0, KeyRange::Single(b"a"), usize::MAX).unwrap(),
        only_a
    );
    // A limit of 3 reaches into revision 4, which comes whole.
    let limited = s.events(2, KeyRange::From(b"\0"), 3).unwrap();
    assert_eq!(limited, live[..4].to_vec());
    assert_eq!(
        s.events(6, KeyRange::From(b"\0"), usize::MAX).unwrap(),
        vec![]
    );
}

#[test]
fn invalid_commands_are_refused_at_apply_without_a_revision() {
    let mut s = MemMvcc::new();
    for (cmd, err) in [
        (Command::Put(put("", "v")), KvError::EmptyKey),
        (Command::DeleteRange(del("", b"")), KvError::EmptyKey),
        (
            Command::Compact(CompactionRequest {
                revision: -1,
                physical: false,
            }),
            KvError::negative("revision", -1),
        ),
    ] {
        let applied = s.apply(&cmd);
        assert_eq!(applied.answer, Err(err));
        assert!(applied.events.is_empty() && applied.compact_revision.is_none());
    }
    assert_eq!(s.range(&RangeRequest::default()), Err(KvError::EmptyKey));
    assert_eq!(KvError::EmptyKey.to_string(), "key is not provided");
    assert_eq!(s.revision(), 1);
}

#[test]
fn a_stale_outcome_is_not_committed() {
    let mut s = MemMvcc::new();
    let first = s.execute(&Command::Put(put("a", "1")));
    let second = s.execute(&Command::Put(put("b", "1")));
    s.commit(&first).unwrap();
    assert_eq!(
        s.commit(&second),
        Err(model::StaleOutcome { store: 2, found: 2 })
    );
    assert_eq!(current(&s, "b"), None);
}
