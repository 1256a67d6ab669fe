use super::*;
use serde_json::json;

fn kv(key: &[u8], value: &[u8], create: i64, m: i64, version: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: create,
        mod_revision: m,
        version,
        value: value.to_vec(),
        lease,
    }
}

fn msg(e: JsonError) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- records

#[test]
fn utf8_record_has_text_fields_and_index_is_mod_revision() {
    let r = JsonRecord::from(&kv(b"k", b"v", 2, 5, 3, 7));
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"key":"k","value":"v","index":5,"create_revision":2,"mod_revision":5,"version":3,"lease":7})
    );
    assert_eq!(KeyValue::try_from(&r).unwrap(), kv(b"k", b"v", 2, 5, 3, 7));
}

#[test]
fn binary_key_and_value_use_base64_fields_and_round_trip() {
    let orig = kv(&[0xff, 0x00], &[0xc3, 0x28], 1, 1, 1, 0);
    let r = JsonRecord::from(&orig);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["key_base64"], "/wA=");
    assert_eq!(v["value_base64"], "wyg=");
    assert!(v.get("key").is_none() && v.get("value").is_none());
    let back: JsonRecord = serde_json::from_value(v).unwrap();
    assert_eq!(KeyValue::try_from(&back).unwrap(), orig);
}

#[test]
fn record_without_key_or_with_both_forms_is_refused() {
    let mut r = JsonRecord::from(&kv(b"k", b"v", 1, 1, 1, 0));
    r.key_base64 = Some("aw==".into());
    assert_eq!(
        msg(KeyValue::try_from(&r).unwrap_err()),
        "`key` and `key_base64` cannot both be given"
    );
    r.key = None;
    r.key_base64 = None;
    assert_eq!(
        msg(KeyValue::try_from(&r).unwrap_err()),
        "`key` is required"
    );
    r.key_base64 = Some("!!".into());
    assert!(
        msg(KeyValue::try_from(&r).unwrap_err()).starts_with("`key_base64` is not valid base64: ")
    );
}

// ------------------------------------------------------------------ range

fn list(q: &str) -> Result<RangeRequest, JsonError> {
    RangeQuery::from_query(Some(q))?.to_request(RangeContext::List)
}

#[test]
fn prefix_becomes_prefix_end_range() {
    let r = list("prefix=ab").unwrap();
    assert_eq!(
        (r.key.as_slice(), r.range_end.as_slice()),
        (&b"ab"[..], &b"ac"[..])
    );
    assert_eq!(r.limit, DEFAULT_LIST_LIMIT as i64);
}

#[test]
fn no_selector_or_empty_prefix_lists_every_key() {
    for q in ["", "prefix="] {
        let r = list(q).unwrap();
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]), "{q}");
    }
}

#[test]
fn start_end_forms_follow_etcd() {
    let r = list("start=a&end=c").unwrap();
    assert_eq!((r.key, r.range_end), (b"a".to_vec(), b"c".to_vec()));
    let r = list("start=a&end=%00").unwrap();
    assert_eq!((r.key, r.range_end), (b"a".to_vec(), vec![0]));
    let r = list("start=a").unwrap();
    assert_eq!((r.key, r.range_end), (b"a".to_vec(), vec![0]));
    let r = list("end=c").unwrap();
    assert_eq!((r.key, r.range_end), (vec![0], b"c".to_vec()));
    assert_eq!(msg(list("start=a&end=").unwrap_err()), "`end` is required");
}

#[test]
fn binary_keys_come_percent_encoded() {
    let r = list("start=%FF%00&end=%FF%01").unwrap();
    assert_eq!((r.key, r.range_end), (vec![0xff, 0], vec![0xff, 1]));
}

#[test]
fn every_option_is_parsed() {
    let r = list(
        "prefix=p&limit=5&revision=9&keys_only=true&count_only=1&sort_order=descend\
         &sort_target=mod&min_create_revision=1&max_create_revision=2&min_mod_revision=3\
         &max_mod_revision=4&consistency=stale",
    )
    .unwrap();
    assert_eq!(
        r,
        RangeRequest {
            key: b"p".to_vec(),
            range_end: b"q".to_vec(),
            limit: 5,
            revision: 9,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 3,
            max_mod_revision: 4,
            min_create_revision: 1,
            max_create_revision: 2,
        }
    );
    for (v, o) in [("none", SortOrder::None), ("ascend", SortOrder::Ascend)] {
        assert_eq!(list(&format!("sort_order={v}")).unwrap().sort_order, o);
    }
    for (v, t) in [
        ("key", SortTarget::Key),
        ("version", SortTarget::Version),
        ("create", SortTarget::Create),
        ("value", SortTarget::Value),
    ] {
        assert_eq!(list(&format!("sort_target={v}")).unwrap().sort_target, t);
    }
}

#[test]
fn limit_is_clamped_and_zero_refused_on_list_but_unlimited_in_txn() {
    assert_eq!(list("limit=99999999").unwrap().limit, MAX_LIST_LIMIT as i64);
    assert_eq!(
        msg(list("limit=0").unwrap_err()),
        "`limit` must be at least 1"
    );
    let q = RangeQuery {
        key: Some(b"k".to_vec()),
        ..RangeQuery::default()
    };
    assert_eq!(q.to_request(RangeContext::Txn).unwrap().limit, 0);
}

#[test]
fn after_continues_strictly_after_the_key() {
    let r = list("prefix=a&after=ab").unwrap();
    assert_eq!((r.key, r.range_end), (b"ab\0".to_vec(), b"b".to_vec()));
    // An `after` before the range's start does not widen it.
    let r = list("start=m&after=a").unwrap();
    assert_eq!(r.key, b"m".to_vec());
    assert_eq!(
        msg(list("after=a&sort_order=descend").unwrap_err()),
        "`after` needs ascending key order (sort_target=key, sort_order=ascend or none)"
    );
    assert!(list("after=a&sort_target=mod").is_err());
    let q = RangeQuery {
        key: Some(b"k".to_vec()),
        after: Some(b"a".to_vec()),
        ..RangeQuery::default()
    };
    assert_eq!(
        msg(q.to_request(RangeContext::Txn).unwrap_err()),
        "`after` and `key` cannot be combined"
    );
}

#[test]
fn bad_query_values_have_typed_messages() {
    let cases = [
        ("limit=x", "`limit` must be a non-negative integer, got `x`"),
        (
            "revision=-1",
            "`revision` must be a non-negative integer, got `-1`",
        ),
        (
            "revision=9223372036854775808",
            "`revision` must be a non-negative integer, got `9223372036854775808`",
        ),
        (
            "keys_only=yes",
            "`keys_only` must be `true` or `false`, got `yes`",
        ),
        (
            "sort_order=up",
            "`sort_order` must be one of ascend, descend, none, got `up`",
        ),
        (
            "sort_target=size",
            "`sort_target` must be one of key, version, create, mod, value, got `size`",
        ),
        (
            "consistency=weak",
            "`consistency` must be one of linearizable, stale, got `weak`",
        ),
        (
            "prefix=a&prefix=b",
            "query parameter `prefix` given more than once",
        ),
        (
            "prefix=a&start=b",
            "`prefix` and `start/end` cannot be combined",
        ),
    ];
    for (q, want) in cases {
        assert_eq!(msg(list(q).unwrap_err()), want, "{q}");
    }
    let e = msg(list("bogus=1").unwrap_err());
    assert!(
        e.starts_with("unknown query parameter `bogus` (allowed here: prefix, start,"),
        "{e}"
    );
    let e = msg(list("prefix=%ZZ").unwrap_err());
    assert!(e.contains("malformed percent-escape `%ZZ`"), "{e}");
    let long = "a".repeat(MAX_KEY_BYTES + 1);
    assert_eq!(
        msg(list(&format!("prefix={long}")).unwrap_err()),
        format!("`prefix`: the key is 1025 bytes long; at most 1024 are allowed")
    );
}

#[test]
fn json_errors_become_400_with_a_code() {
    let e: ApiError = JsonError::ZeroLimit.into();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.body["error"], "`limit` must be at least 1");
    assert_eq!(e.body["code"], "invalid_request");
}

#[test]
fn range_response_round_trips() {
    let r = RangeResponse {
        kvs: vec![kv(b"a", b"1", 2, 3, 2, 0), kv(b"b", &[0xff], 4, 4, 1, 9)],
        more: true,
        count: 7,
    };
    let j = JsonRangeResponse::from(&r);
    let reply = JsonRangeReply {
        range: j.clone(),
        header: JsonHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 4,
            raft_term: 3,
        },
    };
    let v = serde_json::to_value(&reply).unwrap();
    assert_eq!(v["more"], true);
    assert_eq!(v["count"], 7);
    assert_eq!(v["items"][0]["key"], "a");
    assert_eq!(
        v["header"],
        json!({"cluster_id":1,"member_id":2,"revision":4,"raft_term":3})
    );
    let back: JsonRangeReply = serde_json::from_value(v).unwrap();
    assert_eq!(RangeResponse::try_from(&back.range).unwrap(), r);
}

#[test]
fn key_read_takes_revision_and_consistency() {
    let r = key_read_request(b"k", Some("revision=4&consistency=stale")).unwrap();
    assert_eq!(
        r,
        RangeRequest {
            key: b"k".to_vec(),
            revision: 4,
            serializable: true,
            ..RangeRequest::default()
        }
    );
    assert!(msg(key_read_request(b"k", Some("limit=1")).unwrap_err())
        .starts_with("unknown query parameter `limit`"));
    assert_eq!(
        msg(key_read_request(b"", None).unwrap_err()),
        "`key`: the key must not be empty"
    );
}

// ----------------------------------------------------------------- delete

#[test]
fn delete_query_forms() {
    let d = delete_query(Some("prefix=a&prev_kv=true")).unwrap();
    assert_eq!(
        d,
        DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv: true
        }
    );
    let d = delete_query(Some("start=%00&end=%00")).unwrap();
    assert_eq!((d.key, d.range_end, d.prev_kv), (vec![0], vec![0], false));
    assert_eq!(
        msg(delete_query(Some("prefix=")).unwrap_err()),
        "`prefix` must not be empty when deleting (to delete every key, give start=%00&end=%00)"
    );
    assert_eq!(
        msg(delete_query(None).unwrap_err()),
        "one of `prefix`, `start`, `end` is required"
    );
    assert!(delete_query(Some("limit=1")).is_err());
}

#[test]
fn delete_reply_shape() {
    let d = DeleteRangeResponse {
        deleted: 1,
        prev_kvs: vec![kv(b"a", b"x", 1, 2, 2, 0)],
    };
    let v = serde_json::to_value(JsonDeleteReply::new(&d, 9, JsonHeader::default())).unwrap();
    assert_eq!(v["status"], "committed");
    assert_eq!(v["deleted"], 1);
    assert_eq!(v["index"], 9);
    assert_eq!(v["prev_kvs"][0]["value"], "x");
    assert_eq!(v["header"]["revision"], 0);
}

// -------------------------------------------------------------------- txn

fn txn(v: Value) -> Result<TxnRequest, JsonError> {
    parse_txn_body(v.to_string().as_bytes())
}

#[test]
fn txn_body_maps_to_the_data_model() {
    let t = txn(json!({
        "compare": [
            {"key":"a","target":"value","result":"=","value":"1"},
            {"key":"b","target":"version","result":"!=","version":2},
            {"key":"c","target":"create","result":"<","create_revision":3},
            {"key":"d","target":"mod","result":">","mod_revision":4},
            {"key":"e","target":"lease","result":"=","lease":5},
            {"key":"p","prefix":true,"target":"version","result":">","version":0},
            {"key":"r","range_end":"s","target":"mod","result":"<","mod_revision":9}
        ],
        "success": [
            {"put":{"key":"a","value":"2","prev_kv":true,"lease":3}},
            {"delete":{"key":"x","prefix":true,"prev_kv":true}},
            {"range":{"prefix":"a","limit":2,"sort_order":"descend"}},
            {"txn":{"success":[{"put":{"key":"n","value":"v"}}]}}
        ],
        "failure": [
            {"put":{"key":"z","ignore_value":true,"ignore_lease":true}},
            {"delete":{"key":"a","range_end":"c"}},
            {"range":{"key":"a"}}
        ]
    }))
    .unwrap();
    let cmp = |key: &[u8], end: &[u8], result, target| Compare {
        key: key.to_vec(),
        range_end: end.to_vec(),
        result,
        target,
    };
    assert_eq!(
        t.compare,
        vec![
            cmp(
                b"a",
                b"",
                CompareResult::Equal,
                CompareTarget::Value(b"1".to_vec())
            ),
            cmp(
                b"b",
                b"",
                CompareResult::NotEqual,
                CompareTarget::Version(2)
            ),
            cmp(
                b"c",
                b"",
                CompareResult::Less,
                CompareTarget::CreateRevision(3)
            ),
            cmp(
                b"d",
                b"",
                CompareResult::Greater,
                CompareTarget::ModRevision(4)
            ),
            cmp(b"e", b"", CompareResult::Equal, CompareTarget::Lease(5)),
            cmp(
                b"p",
                b"q",
                CompareResult::Greater,
                CompareTarget::Version(0)
            ),
            cmp(
                b"r",
                b"s",
                CompareResult::Less,
                CompareTarget::ModRevision(9)
            ),
        ]
    );
    assert_eq!(
        t.success,
        vec![
            RequestOp::Put(PutRequest {
                key: b"a".to_vec(),
                value: b"2".to_vec(),
                lease: 3,
                prev_kv: true,
                ..PutRequest::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"x".to_vec(),
                range_end: b"y".to_vec(),
                prev_kv: true
            }),
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                limit: 2,
                sort_order: SortOrder::Descend,
                ..RangeRequest::default()
            }),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Put(PutRequest {
                    key: b"n".to_vec(),
                    value: b"v".to_vec(),
                    ..PutRequest::default()
                })],
                failure: vec![],
            }),
        ]
    );
    assert_eq!(
        t.failure,
        vec![
            RequestOp::Put(PutRequest {
                key: b"z".to_vec(),
                ignore_value: true,
                ignore_lease: true,
                ..PutRequest::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: false
            }),
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                ..RangeRequest::default()
            }),
        ]
    );
}

#[test]
fn txn_body_errors_name_the_element() {
    let cases = [
        (
            json!({"compare":[{"key":"a","target":"value","result":"=","version":1}]}),
            "compare[0]: a `value` compare needs `value` and no other value field (found version)",
        ),
        (
            json!({"compare":[{"key":"a","target":"mod","result":"="}]}),
            "compare[0]: a `mod` compare needs `mod_revision` and no other value field (found none)",
        ),
        (
            json!({"compare":[{"key":"a","target":"lease","result":"=","lease":1,"value":"x"}]}),
            "compare[0]: a `lease` compare needs `lease` and no other value field (found value, lease)",
        ),
        (
            json!({"compare":[{"target":"version","result":"=","version":1}]}),
            "compare[0]: `key` is required",
        ),
        (
            json!({"compare":[{"key":"a","prefix":true,"range_end":"b","target":"version","result":"=","version":1}]}),
            "compare[0]: `prefix` and `range_end` cannot be combined",
        ),
        (
            json!({"success":[{"range":{"key":"a"}},{"put":{"key":"a"}}]}),
            "success[1].put: `value` is required",
        ),
        (
            json!({"failure":[{"put":{"key":"","value":"v"}}]}),
            "failure[0].put: `key`: the key must not be empty",
        ),
        (
            json!({"success":[{"put":{"key":"a","key_base64":"YQ==","value":"v"}}]}),
            "success[0].put: `key` and `key_base64` cannot both be given",
        ),
        (
            json!({"success":[{"range":{}}]}),
            "success[0].range: one of `key`, `prefix`, `start`, `end` is required",
        ),
        (
            json!({"success":[{"range":{"key":"a","sort_target":"size"}}]}),
            "success[0].range: `sort_target` must be one of key, version, create, mod, value, got `size`",
        ),
        (
            json!({"success":[{"txn":{"failure":[{"delete":{}}]}}]}),
            "success[0].txn: failure[0].delete: `key` is required",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(msg(txn(body.clone()).unwrap_err()), want, "{body}");
    }
}

#[test]
fn txn_body_shape_errors_are_malformed_json() {
    for body in [
        r#"{"compare":[{"key":"a","target":"size","result":"=","version":1}]}"#,
        r#"{"compare":[{"key":"a","target":"version","result":"~","version":1}]}"#,
        r#"{"success":[{"bogus":{}}]}"#,
        r#"{"success":[{"put":{"key":"a","value":"v","extra":1}}]}"#,
        r#"{"sucess":[]}"#,
        r#"{"success":[{"range":{"key":"a","limit":-1}}]}"#,
        "not json",
    ] {
        let e = msg(parse_txn_body(body.as_bytes()).unwrap_err());
        assert!(e.starts_with("malformed JSON: "), "{body}: {e}");
    }
}

#[test]
fn txn_base64_fields_decode() {
    let t = txn(json!({
        "compare":[{"key_base64":"/w==","target":"value","result":"=","value_base64":"AA=="}],
        "success":[{"put":{"key_base64":"/w==","value_base64":"AAE="}}]
    }))
    .unwrap();
    assert_eq!(t.compare[0].key, vec![0xff]);
    assert_eq!(t.compare[0].target, CompareTarget::Value(vec![0]));
    assert_eq!(
        t.success[0],
        RequestOp::Put(PutRequest {
            key: vec![0xff],
            value: vec![0, 1],
            ..PutRequest::default()
        })
    );
}

fn rich_txn() -> TxnRequest {
    TxnRequest {
        compare: vec![
            Compare {
                key: vec![0xff, 1],
                range_end: vec![0],
                result: CompareResult::Greater,
                target: CompareTarget::ModRevision(3),
            },
            Compare {
                key: b"k".to_vec(),
                range_end: vec![],
                result: CompareResult::Equal,
                target: CompareTarget::Value(vec![0xc3, 0x28]),
            },
            Compare {
                key: b"l".to_vec(),
                range_end: vec![],
                result: CompareResult::NotEqual,
                target: CompareTarget::Lease(-1),
            },
            Compare {
                key: b"c".to_vec(),
                range_end: vec![],
                result: CompareResult::Less,
                target: CompareTarget::CreateRevision(1),
            },
            Compare {
                key: b"v".to_vec(),
                range_end: b"w".to_vec(),
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
            },
        ],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"".to_vec(),
                lease: 4,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: false,
            }),
            RequestOp::Put(PutRequest {
                key: b"k2".to_vec(),
                ignore_value: true,
                ignore_lease: true,
                ..PutRequest::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: vec![0xfe],
                range_end: vec![0xff],
                prev_kv: true,
            }),
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                limit: 3,
                revision: 2,
                sort_order: SortOrder::Ascend,
                sort_target: SortTarget::Value,
                keys_only: true,
                count_only: false,
                min_mod_revision: 1,
                max_mod_revision: 2,
                min_create_revision: 3,
                max_create_revision: 4,
                serializable: false,
            }),
        ],
        failure: vec![
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Range(RangeRequest {
                    key: b"only".to_vec(),
                    ..RangeRequest::default()
                })],
                failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"d".to_vec(),
                    ..DeleteRangeRequest::default()
                })],
            }),
            RequestOp::Range(RangeRequest {
                key: vec![0],
                range_end: vec![0],
                sort_order: SortOrder::Descend,
                count_only: true,
                ..RangeRequest::default()
            }),
        ],
    }
}

#[test]
fn txn_request_round_trips_through_json_text() {
    let t = rich_txn();
    let text = serde_json::to_string(&JsonTxnRequest::from_request(&t)).unwrap();
    assert_eq!(parse_txn_body(text.as_bytes()).unwrap(), t, "{text}");
}

fn rich_txn_response() -> TxnResponse {
    TxnResponse {
        succeeded: true,
        responses: vec![
            ResponseOp::Put(Revisioned {
                revision: 8,
                body: PutResponse {
                    prev_kv: Some(kv(b"k", b"old", 2, 5, 3, 0)),
                },
            }),
            ResponseOp::Put(Revisioned {
                revision: 8,
                body: PutResponse { prev_kv: None },
            }),
            ResponseOp::DeleteRange(Revisioned {
                revision: 8,
                body: DeleteRangeResponse {
                    deleted: 2,
                    prev_kvs: vec![kv(&[0xfe], &[0xff], 1, 1, 1, 0)],
                },
            }),
            ResponseOp::Range(Revisioned {
                revision: 8,
                body: RangeResponse {
                    kvs: vec![kv(b"a", b"", 1, 1, 1, 0)],
                    more: true,
                    count: 4,
                },
            }),
            ResponseOp::Txn(TxnResponse {
                succeeded: false,
                responses: vec![ResponseOp::DeleteRange(Revisioned {
                    revision: 8,
                    body: DeleteRangeResponse::default(),
                })],
            }),
        ],
    }
}

#[test]
fn txn_response_shape_and_round_trip() {
    let t = rich_txn_response();
    let reply = JsonTxnReply {
        txn: (&t).into(),
        index: 8,
        header: JsonHeader::default(),
    };
    let v = serde_json::to_value(&reply).unwrap();
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["index"], 8);
    assert_eq!(v["responses"][0]["put"]["prev_kv"]["value"], "old");
    assert_eq!(v["responses"][1], json!({"put":{}}));
    assert_eq!(v["responses"][2]["delete"]["deleted"], 2);
    assert_eq!(v["responses"][3]["range"]["count"], 4);
    assert_eq!(v["responses"][4]["txn"]["succeeded"], false);
    let back: JsonTxnReply = serde_json::from_value(v).unwrap();
    assert_eq!(back.txn.to_response(back.index).unwrap(), t);
}

#[test]
fn txn_response_with_bad_record_names_where() {
    let j = JsonTxnResponse {
        succeeded: true,
        responses: vec![JsonResponseOp::Range(JsonRangeResponse {
            items: vec![JsonRecord::default()],
            more: false,
            count: 1,
        })],
    };
    assert_eq!(
        msg(j.to_response(1).unwrap_err()),
        "responses[0]: items: [0]: `key` is required"
    );
}

// ---------------------------------------------------------------- compact

#[test]
fn compact_body() {
    assert_eq!(
        parse_compact_body(br#"{"revision":5,"physical":true}"#).unwrap(),
        CompactionRequest {
            revision: 5,
            physical: true
        }
    );
    assert_eq!(
        parse_compact_body(br#"{"revision":5}"#).unwrap(),
        CompactionRequest {
            revision: 5,
            physical: false
        }
    );
    for bad in [r#"{}"#, r#"{"revision":-1}"#, r#"{"revision":1,"x":2}"#] {
        assert!(
            msg(parse_compact_body(bad.as_bytes()).unwrap_err()).starts_with("malformed JSON: ")
        );
    }
    assert_eq!(
        msg(parse_compact_body(br#"{"revision":9223372036854775808}"#).unwrap_err()),
        "`revision` must be a non-negative integer, got `9223372036854775808`"
    );
}

// ------------------------------------------------------------------ watch

#[test]
fn watch_query_forms() {
    let w = WatchQuery::from_query(Some(
        "prefix=a&start_revision=3&prev_kv=true&no_put&progress_notify=1&wait=5s",
    ))
    .unwrap();
    assert_eq!(
        w,
        WatchQuery {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            start_revision: 3,
            prev_kv: true,
            no_put: true,
            no_delete: false,
            progress_notify: true,
            wait: Duration::from_secs(5),
        }
    );
    let w = WatchQuery::from_query(Some("key=k")).unwrap();
    assert_eq!(
        (w.key, w.range_end, w.wait),
        (b"k".to_vec(), vec![], DEFAULT_WATCH_WAIT)
    );
    let w = WatchQuery::from_query(Some("start=a&end=%00")).unwrap();
    assert_eq!((w.key, w.range_end), (b"a".to_vec(), vec![0]));
    assert_eq!(
        msg(WatchQuery::from_query(None).unwrap_err()),
        "one of `key`, `prefix`, `start`, `end` is required"
    );
    assert_eq!(
        msg(WatchQuery::from_query(Some("key=a&prefix=b")).unwrap_err()),
        "`key` and `prefix` cannot be combined"
    );
    assert_eq!(
        msg(WatchQuery::from_query(Some("key=a&wait=2h")).unwrap_err()),
        "`wait` must be a duration like `30s`, `500ms` or `2m`, got `2h`"
    );
}

#[test]
fn wait_durations() {
    assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_wait("1m").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
    assert_eq!(parse_wait("0s").unwrap(), Duration::ZERO);
    for bad in ["", "s", "-1s", "1.5s", "ms", "1 s", "99999999999999999999m"] {
        assert_eq!(
            parse_wait(bad).unwrap_err(),
            JsonError::BadDuration(bad.into()),
            "{bad}"
        );
    }
    assert_eq!(
        msg(parse_wait("61s").unwrap_err()),
        "`wait` is 61s, longer than the maximum of 60s"
    );
    assert!(parse_wait("2m").is_err());
}

fn events() -> Vec<Event> {
    vec![
        Event {
            kind: EventKind::Put,
            kv: kv(b"a1", b"x", 2, 6, 2, 0),
            prev_kv: Some(kv(b"a1", b"w", 2, 2, 1, 0)),
        },
        Event {
            kind: EventKind::Delete,
            kv: Event::delete_marker(b"a2".to_vec(), 6),
            prev_kv: Some(kv(b"a2", b"y", 3, 3, 1, 0)),
        },
        Event {
            kind: EventKind::Put,
            kv: kv(b"b", b"z", 6, 6, 1, 0),
            prev_kv: None,
        },
    ]
}

#[test]
fn watch_select_filters_range_kinds_and_prev_kv() {
    let all = events();
    let w = WatchQuery::from_query(Some("prefix=a")).unwrap();
    let got = w.select(&all);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.prev_kv.is_none()));
    let w = WatchQuery::from_query(Some("prefix=a&prev_kv=true&no_delete=true")).unwrap();
    assert_eq!(w.select(&all), vec![all[0].clone()]);
    let w = WatchQuery::from_query(Some("start=a2&no_put=true&prev_kv=1")).unwrap();
    assert_eq!(w.select(&all), vec![all[1].clone()]);
}

#[test]
fn sse_framing_is_exact() {
    let e = &events()[..2];
    let s = sse_events(6, e);
    let (head, data) = s.split_once("data: ").unwrap();
    assert_eq!(head, "id: 6\nevent: events\n");
    assert!(data.ends_with("\n\n") && !data.trim_end().contains('\n'));
    let v: Value = serde_json::from_str(data.trim_end()).unwrap();
    assert_eq!(v["revision"], 6);
    assert_eq!(v["events"][0]["type"], "put");
    assert_eq!(v["events"][0]["prev_kv"]["value"], "w");
    assert_eq!(
        v["events"][1],
        json!({"type":"delete",
            "kv":{"key":"a2","value":"","index":6,"create_revision":0,"mod_revision":6,"version":0,"lease":0},
            "prev_kv":{"key":"a2","value":"y","index":3,"create_revision":3,"mod_revision":3,"version":1,"lease":0}})
    );
    let batch: JsonWatchBatch = serde_json::from_value(v).unwrap();
    let back: Vec<Event> = batch
        .events
        .iter()
        .map(|e| Event::try_from(e).unwrap())
        .collect();
    assert_eq!(back, e);

    assert_eq!(
        sse_progress(9),
        "id: 9\nevent: progress\ndata: {\"revision\":9}\n\n"
    );
    assert_eq!(
        sse_canceled("compacted", 4),
        "event: canceled\ndata: {\"compact_revision\":4,\"reason\":\"compacted\"}\n\n"
    );
    assert_eq!(
        sse_canceled("line\nbreak", 0),
        "event: canceled\ndata: {\"reason\":\"line\\nbreak\"}\n\n"
    );
}

// ----------------------------------------------------------------- errors

#[test]
fn kv_errors_map_to_status_code_text_and_back() {
    let cases = [
        (
            KvError::Compacted {
                compact_revision: 5,
            },
            410,
            "mvcc: required revision has been compacted",
        ),
        (
            KvError::FutureRevision,
            400,
            "mvcc: required revision is a future revision",
        ),
        (KvError::EmptyKey, 400, "key is not provided"),
        (
            KvError::KeyTooLong {
                len: 2000,
                max: 1024,
            },
            400,
            "key is too long: 2000 bytes, at most 1024 allowed",
        ),
        (
            KvError::ValueTooLarge { len: 9, max: 8 },
            413,
            "value is too large: 9 bytes, at most 8 allowed",
        ),
        (KvError::ValueProvided, 400, "value is provided"),
        (KvError::LeaseProvided, 400, "lease is provided"),
        (KvError::KeyNotFound, 400, "key not found"),
        (
            KvError::TooManyOps,
            400,
            "too many operations in txn request",
        ),
        (
            KvError::DuplicateKey,
            400,
            "duplicate key given in txn request",
        ),
        (KvError::InvalidSortOption, 400, "invalid sort option"),
        (
            KvError::NegativeField {
                field: "limit".into(),
                value: -3,
            },
            400,
            "limit must not be negative, got -3",
        ),
        (KvError::LeaseNotFound, 404, "requested lease not found"),
    ];
    for (err, status, text) in cases {
        let api = kv_error(&err);
        assert_eq!(api.status.as_u16(), status, "{err:?}");
        assert_eq!(api.body["error"], text);
        assert_eq!(api.body["code"], kv_error_code(&err));
        let body = Value::Object(api.body.clone());
        assert_eq!(kv_error_from_body(&body), Some(err.clone()), "{body}");
    }
    assert_eq!(
        kv_error(&KvError::Compacted {
            compact_revision: 5
        })
        .body["compact_revision"],
        5
    );
    assert_eq!(kv_error_from_body(&json!({"error":"x"})), None);
    assert_eq!(kv_error_from_body(&json!({"code":"invalid_request"})), None);
    assert_eq!(kv_error_from_body(&json!({"code":"compacted"})), None);
}

// ------------------------------------------------------------------- docs

/// The ```json blocks of docs/api.md: (info string, body).
fn doc_blocks() -> Vec<(String, String)> {
    let doc = include_str!("../../../docs/api.md");
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut cur, line.strip_prefix("```")) {
            (None, Some(info)) if info.starts_with("json") => {
                cur = Some((info.to_string(), String::new()))
            }
            (Some(_), Some(_)) => out.extend(cur.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn docs_examples_parse_with_these_types() {
    let blocks = doc_blocks();
    assert!(blocks.len() >= 12, "only {} json blocks", blocks.len());
    let (mut txns, mut compacts, mut replies, mut records) = (0, 0, 0, 0);
    for (info, body) in &blocks {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        match info.as_str() {
            "json request=txn" => {
                parse_txn_body(body.as_bytes()).unwrap();
                txns += 1;
            }
            "json request=compact" => {
                parse_compact_body(body.as_bytes()).unwrap();
                compacts += 1;
            }
            _ if v.get("succeeded").is_some() => {
                let r: JsonTxnReply = serde_json::from_value(v).unwrap();
                r.txn.to_response(r.index).unwrap();
                replies += 1;
            }
            _ if v.get("mod_revision").is_some() && v.get("header").is_none() => {
                let r: JsonRecord = serde_json::from_value(v).unwrap();
                KeyValue::try_from(&r).unwrap();
                records += 1;
            }
            _ => {}
        }
    }
    assert_eq!((txns, compacts, replies, records), (1, 1, 1, 2));
}

// ------------------------------------------------------- property tests

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Keys: mostly text, sometimes binary (to exercise `_base64`).
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z/]{1,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 1..6),
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[ -~]{0,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    fn end() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![Just(vec![]), Just(vec![0]), key()]
    }

    fn compare() -> impl Strategy<Value = Compare> {
        let target = prop_oneof![
            bytes().prop_map(CompareTarget::Value),
            any::<i64>().prop_map(CompareTarget::Version),
            any::<i64>().prop_map(CompareTarget::CreateRevision),
            any::<i64>().prop_map(CompareTarget::ModRevision),
            any::<i64>().prop_map(CompareTarget::Lease),
        ];
        let result = prop_oneof![
            Just(CompareResult::Equal),
            Just(CompareResult::NotEqual),
            Just(CompareResult::Less),
            Just(CompareResult::Greater),
        ];
        (key(), end(), result, target).prop_map(|(key, range_end, result, target)| Compare {
            key,
            range_end,
            result,
            target,
        })
    }

    fn range() -> impl Strategy<Value = RangeRequest> {
        let order = prop_oneof![
            Just(SortOrder::None),
            Just(SortOrder::Ascend),
            Just(SortOrder::Descend)
        ];
        let target = prop_oneof![
            Just(SortTarget::Key),
            Just(SortTarget::Version),
            Just(SortTarget::Create),
            Just(SortTarget::Mod),
            Just(SortTarget::Value),
        ];
        (
            (key(), end(), 0..i64::MAX, 0..100i64, order, target),
            (
                any::<bool>(),
                any::<bool>(),
                [0..50i64, 0..50, 0..50, 0..50],
            ),
        )
            .prop_map(
                |(
                    (key, range_end, limit, revision, sort_order, sort_target),
                    (keys_only, count_only, r),
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
                        min_mod_revision: r[0],
                        max_mod_revision: r[1],
                        min_create_revision: r[2],
                        max_create_revision: r[3],
                    }
                },
            )
    }

    fn leaf_op() -> BoxedStrategy<RequestOp> {
        prop_oneof![
            (key(), bytes(), any::<i64>(), any::<[bool; 3]>()).prop_map(
                |(key, value, lease, f)| {
                    RequestOp::Put(PutRequest {
                        key,
                        value,
                        lease,
                        prev_kv: f[0],
                        ignore_value: f[1],
                        ignore_lease: f[2],
                    })
                }
            ),
            (key(), end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv,
                })
            }),
            range().prop_map(RequestOp::Range),
        ]
        .boxed()
    }

    fn txn_of(op: BoxedStrategy<RequestOp>) -> impl Strategy<Value = TxnRequest> {
        (
            proptest::collection::vec(compare(), 0..3),
            proptest::collection::vec(op.clone(), 0..3),
            proptest::collection::vec(op, 0..3),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    }

    fn txn() -> impl Strategy<Value = TxnRequest> {
        txn_of(
            prop_oneof![
                3 => leaf_op(),
                1 => txn_of(leaf_op()).prop_map(RequestOp::Txn),
            ]
            .boxed(),
        )
    }

    fn record() -> impl Strategy<Value = KeyValue> {
        (key(), bytes(), any::<[i64; 4]>()).prop_map(|(key, value, n)| KeyValue {
            key,
            create_revision: n[0],
            mod_revision: n[1],
            version: n[2],
            value,
            lease: n[3],
        })
    }

    proptest! {
        #[test]
        fn txn_requests_round_trip(t in txn()) {
            let text = serde_json::to_string(&JsonTxnRequest::from_request(&t)).unwrap();
            prop_assert_eq!(parse_txn_body(text.as_bytes()).unwrap(), t);
        }

        #[test]
        fn records_and_events_round_trip(kv in record(), prev in proptest::option::of(record()), put in any::<bool>()) {
            let e = Event { kind: if put { EventKind::Put } else { EventKind::Delete }, kv, prev_kv: prev };
            let text = serde_json::to_string(&JsonEvent::from(&e)).unwrap();
            let back: JsonEvent = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Event::try_from(&back).unwrap(), e);
        }
    }
}

#[test]
fn get_reply_round_trips_with_the_record_flattened() {
    let reply = JsonGetReply {
        record: JsonRecord::from(&kv(b"k", &[0xff], 1, 2, 2, 0)),
        header: JsonHeader {
            cluster_id: u64::MAX,
            member_id: 3,
            revision: 2,
            raft_term: 1,
        },
    };
    let v = serde_json::to_value(&reply).unwrap();
    assert_eq!(v["key"], "k");
    assert_eq!(v["value_base64"], "/w==");
    assert_eq!(v["header"]["cluster_id"], u64::MAX);
    let back: JsonGetReply = serde_json::from_value(v).unwrap();
    assert_eq!(back, reply);
}
