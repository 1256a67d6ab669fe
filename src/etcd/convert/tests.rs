use super::*;
use crate::kv::{
    CompactionRequest, DeleteRangeRequest, Event, EventKind, KeyValue, PutRequest, RangeRequest,
    RequestOp, SortOrder, SortTarget, TxnRequest,
};
use rpc::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};

fn record(key: &str, rev: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: rev - 1,
        mod_revision: rev,
        version: 2,
        value: format!("v{rev}").into_bytes(),
        lease: 7,
    }
}

fn info() -> HeaderInfo {
    HeaderInfo {
        cluster_id: 0xabc,
        member_id: 0xdef,
        raft_term: 4,
    }
}

#[test]
fn header_carries_ids_term_and_revision() {
    assert_eq!(
        info().header(12),
        rpc::ResponseHeader {
            cluster_id: 0xabc,
            member_id: 0xdef,
            revision: 12,
            raft_term: 4
        }
    );
}

#[test]
fn key_value_round_trips_field_by_field() {
    let kv = record("k", 9);
    let pb = mvccpb::KeyValue::from(kv.clone());
    assert_eq!(
        (pb.create_revision, pb.mod_revision, pb.version, pb.lease),
        (8, 9, 2, 7)
    );
    assert_eq!(
        (pb.key.as_slice(), pb.value.as_slice()),
        (&b"k"[..], &b"v9"[..])
    );
    assert_eq!(KeyValue::from(pb), kv);
}

#[test]
fn events_round_trip_with_their_type_and_prev_kv() {
    let put = Event {
        kind: EventKind::Put,
        kv: record("a", 5),
        prev_kv: Some(record("a", 4)),
    };
    let delete = Event {
        kind: EventKind::Delete,
        kv: Event::delete_marker(b"b".to_vec(), 6),
        prev_kv: None,
    };
    for e in [put, delete] {
        let pb = mvccpb::Event::from(e.clone());
        let expected_type = match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        };
        assert_eq!(pb.r#type, expected_type);
        assert_eq!(pb.prev_kv.is_some(), e.prev_kv.is_some());
        assert_eq!(kv::Event::try_from(pb), Ok(e));
    }
    let bad = mvccpb::Event {
        r#type: 7,
        ..Default::default()
    };
    assert_eq!(
        kv::Event::try_from(bad),
        Err(EtcdError::InvalidEnum {
            field: "Event.type",
            value: 7
        })
    );
}

fn range_request(order: SortOrder, target: SortTarget) -> RangeRequest {
    RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        limit: 3,
        revision: 4,
        sort_order: order,
        sort_target: target,
        serializable: true,
        keys_only: true,
        count_only: false,
        min_mod_revision: 5,
        max_mod_revision: 6,
        min_create_revision: 7,
        max_create_revision: 8,
    }
}

#[test]
fn range_requests_round_trip_with_every_sort_option() {
    let orders = [
        (SortOrder::None, 0),
        (SortOrder::Ascend, 1),
        (SortOrder::Descend, 2),
    ];
    let targets = [
        (SortTarget::Key, 0),
        (SortTarget::Version, 1),
        (SortTarget::Create, 2),
        (SortTarget::Mod, 3),
        (SortTarget::Value, 4),
    ];
    for (order, order_wire) in orders {
        for (target, target_wire) in targets {
            let r = range_request(order, target);
            let pb = rpc::RangeRequest::from(r.clone());
            assert_eq!((pb.sort_order, pb.sort_target), (order_wire, target_wire));
            assert_eq!(
                (
                    pb.limit,
                    pb.revision,
                    pb.min_mod_revision,
                    pb.max_create_revision
                ),
                (3, 4, 5, 8)
            );
            assert_eq!(RangeRequest::try_from(pb), Ok(r));
        }
    }
    let bad = rpc::RangeRequest {
        sort_target: 5,
        ..Default::default()
    };
    assert_eq!(
        RangeRequest::try_from(bad),
        Err(EtcdError::Kv(KvError::InvalidSortOption))
    );
}

#[test]
fn put_delete_and_compaction_requests_round_trip() {
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 3,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: true,
    };
    assert_eq!(PutRequest::from(rpc::PutRequest::from(put.clone())), put);
    let del = DeleteRangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        prev_kv: true,
    };
    assert_eq!(
        DeleteRangeRequest::from(rpc::DeleteRangeRequest::from(del.clone())),
        del
    );
    let compact = CompactionRequest {
        revision: 9,
        physical: true,
    };
    assert_eq!(
        CompactionRequest::from(rpc::CompactionRequest::from(compact.clone())),
        compact
    );
}

#[test]
fn compares_round_trip_for_every_result_and_target() {
    let results = [
        (CompareResult::Equal, R::Equal),
        (CompareResult::Greater, R::Greater),
        (CompareResult::Less, R::Less),
        (CompareResult::NotEqual, R::NotEqual),
    ];
    let targets = [
        (CompareTarget::Version(2), T::Version),
        (CompareTarget::CreateRevision(3), T::Create),
        (CompareTarget::ModRevision(4), T::Mod),
        (CompareTarget::Value(b"x".to_vec()), T::Value),
        (CompareTarget::Lease(5), T::Lease),
    ];
    for (result, result_wire) in results {
        for (target, target_wire) in &targets {
            let c = Compare {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                result,
                target: target.clone(),
            };
            let pb = rpc::Compare::from(c.clone());
            assert_eq!(pb.result, result_wire as i32);
            assert_eq!(pb.target, *target_wire as i32);
            assert_eq!(Compare::try_from(pb), Ok(c));
        }
    }
}

#[test]
fn a_compare_reads_the_operand_its_target_names_or_zero() {
    let wire = |target: T, union: Option<U>| rpc::Compare {
        result: R::Equal as i32,
        target: target as i32,
        key: b"k".to_vec(),
        target_union: union,
        range_end: Vec::new(),
    };
    let cases = [
        (
            wire(T::Mod, Some(U::Version(5))),
            CompareTarget::ModRevision(0),
        ),
        (wire(T::Version, None), CompareTarget::Version(0)),
        (wire(T::Value, None), CompareTarget::Value(Vec::new())),
        (wire(T::Lease, Some(U::Lease(8))), CompareTarget::Lease(8)),
        (
            wire(T::Create, Some(U::Value(b"v".to_vec()))),
            CompareTarget::CreateRevision(0),
        ),
    ];
    for (pb, target) in cases {
        assert_eq!(Compare::try_from(pb).unwrap().target, target);
    }
    let bad_result = rpc::Compare {
        result: 4,
        ..wire(T::Mod, None)
    };
    assert_eq!(
        Compare::try_from(bad_result),
        Err(EtcdError::InvalidEnum {
            field: "Compare.result",
            value: 4
        })
    );
}

fn nested_txn() -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            result: CompareResult::Greater,
            target: CompareTarget::Version(0),
        }],
        success: vec![
            RequestOp::Range(range_request(SortOrder::Descend, SortTarget::Mod)),
            RequestOp::Put(PutRequest {
                key: b"p".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            }),
            RequestOp::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: b"e".to_vec(),
                    prev_kv: true,
                })],
                failure: Vec::new(),
            }),
        ],
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })],
    }
}

#[test]
fn transactions_round_trip_with_nested_operations() {
    let t = nested_txn();
    let pb = rpc::TxnRequest::from(t.clone());
    assert_eq!(pb.success.len(), 3);
    assert!(matches!(
        pb.success[2].request,
        Some(rpc::request_op::Request::RequestTxn(_))
    ));
    assert_eq!(TxnRequest::try_from(pb), Ok(t));
}

#[test]
fn an_empty_operation_is_etcds_key_not_found() {
    let pb = rpc::TxnRequest {
        success: vec![rpc::RequestOp { request: None }],
        ..Default::default()
    };
    assert_eq!(
        TxnRequest::try_from(pb),
        Err(EtcdError::Kv(KvError::KeyNotFound))
    );
}

#[test]
fn top_level_responses_get_the_full_header_and_round_trip() {
    let range = Revisioned {
        revision: 5,
        body: kv::RangeResponse {
            kvs: vec![record("a", 3), record("b", 5)],
            more: true,
            count: 7,
        },
    };
    let pb = range_response(info(), range.clone());
    assert_eq!(pb.header, Some(info().header(5)));
    assert_eq!((pb.kvs.len(), pb.more, pb.count), (2, true, 7));
    assert_eq!(Revisioned::<kv::RangeResponse>::from(pb), range);

    let put = Revisioned {
        revision: 6,
        body: kv::PutResponse {
            prev_kv: Some(record("a", 3)),
        },
    };
    let pb = put_response(info(), put.clone());
    assert_eq!(pb.header, Some(info().header(6)));
    assert_eq!(Revisioned::<kv::PutResponse>::from(pb), put);

    let del = Revisioned {
        revision: 7,
        body: kv::DeleteRangeResponse {
            deleted: 2,
            prev_kvs: vec![record("a", 3), record("b", 5)],
        },
    };
    let pb = delete_range_response(info(), del.clone());
    assert_eq!(pb.header, Some(info().header(7)));
    assert_eq!(Revisioned::<kv::DeleteRangeResponse>::from(pb), del);

    let compact = Revisioned {
        revision: 8,
        body: kv::CompactionResponse {},
    };
    let pb = compaction_response(info(), compact.clone());
    assert_eq!(pb.header, Some(info().header(8)));
    assert_eq!(Revisioned::<kv::CompactionResponse>::from(pb), compact);
}

#[test]
fn txn_operation_answers_carry_etcds_inner_headers() {
    let txn = Revisioned {
        revision: 10,
        body: kv::TxnResponse {
            succeeded: true,
            responses: vec![
                kv::ResponseOp::Range(Revisioned {
                    revision: 9,
                    body: kv::RangeResponse {
                        kvs: vec![record("a", 9)],
                        more: false,
                        count: 1,
                    },
                }),
                kv::ResponseOp::Put(Revisioned {
                    revision: 10,
                    body: kv::PutResponse { prev_kv: None },
                }),
                kv::ResponseOp::Txn(kv::TxnResponse {
                    succeeded: false,
                    responses: vec![kv::ResponseOp::DeleteRange(Revisioned {
                        revision: 10,
                        body: kv::DeleteRangeResponse {
                            deleted: 1,
                            prev_kvs: Vec::new(),
                        },
                    })],
                }),
            ],
        },
    };
    let pb = txn_response(info(), txn.clone());
    assert_eq!(pb.header, Some(info().header(10)));
    use rpc::response_op::Response;
    let only_revision = |revision| {
        Some(rpc::ResponseHeader {
            revision,
            ..Default::default()
        })
    };
    match &pb.responses[0].response {
        Some(Response::ResponseRange(r)) => assert_eq!(r.header, only_revision(9)),
        other => panic!("{other:?}"),
    }
    match &pb.responses[1].response {
        Some(Response::ResponsePut(p)) => assert_eq!(p.header, only_revision(10)),
        other => panic!("{other:?}"),
    }
    match &pb.responses[2].response {
        Some(Response::ResponseTxn(t)) => {
            assert_eq!(t.header, Some(rpc::ResponseHeader::default()));
            match &t.responses[0].response {
                Some(Response::ResponseDeleteRange(d)) => {
                    assert_eq!(d.header, only_revision(10))
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(Revisioned::<kv::TxnResponse>::try_from(pb), Ok(txn));
}

#[test]
fn an_answer_of_the_wrong_kind_is_an_internal_error() {
    let put = Revisioned {
        revision: 2,
        body: CommandResponse::Put(kv::PutResponse::default()),
    };
    assert!(expect_put(put.clone()).is_ok());
    for err in [
        expect_txn(put.clone()).unwrap_err(),
        expect_compact(put.clone()).unwrap_err(),
        expect_delete_range(put).unwrap_err(),
    ] {
        assert!(matches!(err, EtcdError::Internal(_)), "{err:?}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
    }
}
