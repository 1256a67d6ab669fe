//! The gateway's JSON: golden texts as etcd 3.4's gateway prints these
//! messages (proto field names, 64-bit integers as strings, bytes as
//! base64, enums by name, defaults left out), and requests as curl users
//! write them.

use crate::etcd::convert::{self, HeaderInfo};
use crate::etcd::pb::etcdserverpb as rpc;
use crate::etcd::pb::mvccpb;
use crate::kv::{self, Revisioned};

fn info() -> HeaderInfo {
    HeaderInfo {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        raft_term: 2,
    }
}

const HEADER: &str = r#""header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"5","raft_term":"2"}"#;

fn foo_bar() -> kv::KeyValue {
    kv::KeyValue {
        key: b"foo".to_vec(),
        create_revision: 2,
        mod_revision: 5,
        version: 4,
        value: b"bar".to_vec(),
        lease: 0,
    }
}

#[test]
fn range_response_as_etcd_prints_it() {
    let resp = convert::range_response(
        info(),
        Revisioned {
            revision: 5,
            body: kv::RangeResponse {
                kvs: vec![foo_bar()],
                more: false,
                count: 1,
            },
        },
    );
    let json = serde_json::to_string(&resp).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{{HEADER},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"5","version":"4","value":"YmFy"}}],"count":"1"}}"#
        )
    );
    let back: rpc::RangeResponse = serde_json::from_str(&json).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn an_empty_range_is_just_the_header() {
    let resp = convert::range_response(
        info(),
        Revisioned {
            revision: 5,
            body: kv::RangeResponse::default(),
        },
    );
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        format!("{{{HEADER}}}")
    );
}

#[test]
fn put_response_with_prev_kv_and_lease() {
    let resp = convert::put_response(
        info(),
        Revisioned {
            revision: 5,
            body: kv::PutResponse {
                prev_kv: Some(kv::KeyValue {
                    lease: 7587862072838789123,
                    ..foo_bar()
                }),
            },
        },
    );
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        format!(
            r#"{{{HEADER},"prev_kv":{{"key":"Zm9v","create_revision":"2","mod_revision":"5","version":"4","value":"YmFy","lease":"7587862072838789123"}}}}"#
        )
    );
}

#[test]
fn txn_response_with_inner_headers() {
    let resp = convert::txn_response(
        info(),
        Revisioned {
            revision: 5,
            body: kv::TxnResponse {
                succeeded: true,
                responses: vec![
                    kv::ResponseOp::Put(Revisioned {
                        revision: 5,
                        body: kv::PutResponse::default(),
                    }),
                    kv::ResponseOp::Txn(kv::TxnResponse::default()),
                ],
            },
        },
    );
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"5"}}}}}},{{"response_txn":{{"header":{{}}}}}}]}}"#
        )
    );
}

#[test]
fn watch_responses_name_event_types_and_leave_put_out() {
    let created = rpc::WatchResponse {
        header: Some(info().header(5)),
        created: true,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&created).unwrap(),
        format!(r#"{{{HEADER},"created":true}}"#)
    );
    let events = rpc::WatchResponse {
        header: Some(info().header(5)),
        watch_id: 1,
        events: vec![
            mvccpb::Event::from(kv::Event {
                kind: kv::EventKind::Put,
                kv: foo_bar(),
                prev_kv: None,
            }),
            mvccpb::Event::from(kv::Event {
                kind: kv::EventKind::Delete,
                kv: kv::Event::delete_marker(b"foo".to_vec(), 6),
                prev_kv: None,
            }),
        ],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&events).unwrap(),
        format!(
            r#"{{{HEADER},"watch_id":"1","events":[{{"kv":{{"key":"Zm9v","create_revision":"2","mod_revision":"5","version":"4","value":"YmFy"}}}},{{"type":"DELETE","kv":{{"key":"Zm9v","mod_revision":"6"}}}}]}}"#
        )
    );
    let compacted = rpc::WatchResponse {
        header: Some(info().header(5)),
        watch_id: 2,
        canceled: true,
        compact_revision: 3,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&compacted).unwrap(),
        format!(r#"{{{HEADER},"watch_id":"2","canceled":true,"compact_revision":"3"}}"#)
    );
}

#[test]
fn member_list_and_status_keep_the_schemas_odd_names() {
    let members = rpc::MemberListResponse {
        header: Some(info().header(5)),
        members: vec![rpc::Member {
            id: 10276657743932975437,
            name: "node-1".into(),
            peer_ur_ls: vec!["http://127.0.0.1:9001".into()],
            client_ur_ls: vec!["http://127.0.0.1:8001".into()],
            is_learner: false,
        }],
    };
    assert_eq!(
        serde_json::to_string(&members).unwrap(),
        format!(
            r#"{{{HEADER},"members":[{{"ID":"10276657743932975437","name":"node-1","peerURLs":["http://127.0.0.1:9001"],"clientURLs":["http://127.0.0.1:8001"]}}]}}"#
        )
    );
    let status = rpc::StatusResponse {
        header: Some(info().header(5)),
        version: "3.5.0".into(),
        db_size: 4096,
        leader: 10276657743932975437,
        raft_index: 9,
        raft_term: 2,
        raft_applied_index: 9,
        errors: Vec::new(),
        db_size_in_use: 2048,
        is_learner: false,
    };
    assert_eq!(
        serde_json::to_string(&status).unwrap(),
        format!(
            r#"{{{HEADER},"version":"3.5.0","dbSize":"4096","leader":"10276657743932975437","raftIndex":"9","raftTerm":"2","raftAppliedIndex":"9","dbSizeInUse":"2048"}}"#
        )
    );
    let hash = rpc::HashKvResponse {
        header: Some(info().header(5)),
        hash: 3_000_000_000,
        compact_revision: 0,
    };
    // uint32 is a JSON number.
    assert_eq!(
        serde_json::to_string(&hash).unwrap(),
        format!(r#"{{{HEADER},"hash":3000000000}}"#)
    );
}

#[test]
fn requests_parse_as_curl_users_write_them() {
    // etcd's documented style: base64 bytes, strings for numbers, enum
    // names, proto field names.
    let r: rpc::RangeRequest = serde_json::from_str(
        r#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","sort_order":"DESCEND","sort_target":"MOD","keys_only":true}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        rpc::RangeRequest {
            key: b"foo".to_vec(),
            range_end: b"fop".to_vec(),
            limit: 10,
            sort_order: rpc::range_request::SortOrder::Descend as i32,
            sort_target: rpc::range_request::SortTarget::Mod as i32,
            keys_only: true,
            ..Default::default()
        }
    );
    // Numbers as numbers, enums as numbers and lowerCamel names work too.
    let same: rpc::RangeRequest = serde_json::from_str(
        r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":10,"sortOrder":2,"sortTarget":3,"keysOnly":true}"#,
    )
    .unwrap();
    assert_eq!(same, r);
    let txn: rpc::TxnRequest = serde_json::from_str(
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"MOD","mod_revision":"0"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        kv::TxnRequest::try_from(txn).unwrap(),
        kv::TxnRequest {
            compare: vec![kv::Compare {
                key: b"foo".to_vec(),
                range_end: Vec::new(),
                result: kv::CompareResult::Equal,
                target: kv::CompareTarget::ModRevision(0),
            }],
            success: vec![kv::RequestOp::Put(kv::PutRequest {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                ..Default::default()
            })],
            failure: Vec::new(),
        }
    );
    let watch: rpc::WatchRequest = serde_json::from_str(
        r#"{"create_request":{"key":"Zm9v","start_revision":"3","filters":["NODELETE"],"prev_kv":true}}"#,
    )
    .unwrap();
    match watch.request_union {
        Some(rpc::watch_request::RequestUnion::CreateRequest(c)) => {
            assert_eq!((c.start_revision, c.filters, c.prev_kv), (3, vec![1], true))
        }
        other => panic!("{other:?}"),
    }
}
