//! The etcd-model routes of docs/api.md against the fake node (a
//! `MemMvcc` behind a fake loop): revisions and `?cas=` on mod revisions,
//! ranges and their options, range deletes, transactions, compaction, and
//! watches over SSE and long poll. Expected values come from the data
//! model's rules (revisions count from 1, one per changing command), not
//! from the implementation under test.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{call, leader_fake, membership, Fake};
use crate::kv::{Event, EventKind, KeyValue};
use crate::node::handle::testing::{fake_node, Mode};
use crate::node::membership::id_of;
use crate::node::observer::ApplyObserver;
use crate::server::{router, AppState};

/// Bound on every wait for a message that should come.
const PATIENCE: Duration = Duration::from_secs(5);

fn app_of(f: &Fake) -> axum::Router {
    router(AppState::new(f.handle.clone()))
}

async fn put(app: &axum::Router, key: &str, value: &str) -> i64 {
    let (s, _, v) = call(
        app,
        "PUT",
        &format!("/kv/{key}"),
        json!({ "value": value }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "PUT {key}: {v}");
    v["index"].as_i64().unwrap()
}

async fn post(app: &axum::Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, v) = call(app, "POST", uri, body.to_string()).await;
    (s, v)
}

fn keys(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {v}"))
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_answer_has_the_header_and_records_have_revisions() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    // A fresh store is at revision 1; each put makes the next one.
    let (s, _, v) = call(&app, "PUT", "/kv/a", r#"{"value":"1"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["index"], 2);
    let want_header = json!({
        "cluster_id": membership("n1", 1, &[("n2", 2), ("n3", 3)]).cluster_id_u64(),
        "member_id": id_of("n1"),
        "revision": 2,
        "raft_term": 1,
    });
    assert_eq!(v["header"], want_header);
    assert_eq!(put(&app, "a", "2").await, 3);
    let (s, _, v) = call(&app, "GET", "/kv/a", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"key": "a", "value": "2", "index": 3, "create_revision": 2,
               "mod_revision": 3, "version": 2, "lease": 0,
               "header": {"cluster_id": want_header["cluster_id"], "member_id": id_of("n1"),
                          "revision": 3, "raft_term": 1}})
    );
    // A delete answers with the revision it made.
    let (s, _, v) = call(&app, "DELETE", "/kv/a", Body::empty()).await;
    assert_eq!(
        (s, &v["index"], &v["header"]["revision"]),
        (StatusCode::OK, &json!(4), &json!(4))
    );
}

#[tokio::test]
async fn cas_compares_the_mod_revision() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let ra = put(&app, "a", "1").await;
    let rb = put(&app, "b", "1").await;
    assert_eq!(rb, ra + 1);
    // The store's revision moved on, but `a`'s mod revision did not.
    let (s, _, v) = call(&app, "PUT", &format!("/kv/a?cas={rb}"), r#"{"value":"x"}"#).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(
        (v["index"].as_i64(), v["expected"].as_i64()),
        (Some(ra), Some(rb))
    );
    // A failed CAS changes nothing: no new revision.
    let (_, _, v) = call(&app, "GET", "/kv?prefix=", Body::empty()).await;
    assert_eq!(v["header"]["revision"], rb);
    let (s, _, v) = call(&app, "PUT", &format!("/kv/a?cas={ra}"), r#"{"value":"2"}"#).await;
    assert_eq!((s, v["index"].as_i64()), (StatusCode::OK, Some(rb + 1)));
    // Delete with cas: wrong revision, then right one.
    let (s, _, v) = call(&app, "DELETE", &format!("/kv/a?cas={ra}"), Body::empty()).await;
    assert_eq!(
        (s, v["index"].as_i64()),
        (StatusCode::PRECONDITION_FAILED, Some(rb + 1))
    );
    let (s, _, v) = call(
        &app,
        "DELETE",
        &format!("/kv/a?cas={}", rb + 1),
        Body::empty(),
    )
    .await;
    assert_eq!((s, v["index"].as_i64()), (StatusCode::OK, Some(rb + 2)));
    // cas=0 on an absent key: put succeeds, delete is a 404.
    let (s, _, _) = call(&app, "DELETE", "/kv/a?cas=0", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&app, "PUT", "/kv/a?cas=0", r#"{"value":"new"}"#).await;
    assert_eq!(s, StatusCode::OK);
    // A cas beyond the revision range is bad input, not a mismatch.
    let (s, _, v) = call(
        &app,
        "PUT",
        "/kv/a?cas=9223372036854775808",
        r#"{"value":"x"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["key"], "a");
}

#[tokio::test]
async fn get_at_a_past_revision_and_its_errors() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "old").await;
    let r2 = put(&app, "k", "new").await;
    let (s, _, v) = call(&app, "GET", &format!("/kv/k?revision={r1}"), Body::empty()).await;
    assert_eq!(
        (s, &v["value"], &v["version"]),
        (StatusCode::OK, &json!("old"), &json!(1))
    );
    // The header carries the current revision, as in etcd.
    assert_eq!(v["header"]["revision"], r2);
    let (s, _, v) = call(&app, "GET", "/kv/k?revision=1", Body::empty()).await;
    assert_eq!((s, &v["key"]), (StatusCode::NOT_FOUND, &json!("k")));
    let (s, _, v) = call(&app, "GET", "/kv/k?revision=99", Body::empty()).await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::BAD_REQUEST, &json!("future_revision"))
    );
    for bad in [
        "revision=-1",
        "revision=x",
        "limit=1",
        "revision=1&revision=2",
    ] {
        let (s, _, v) = call(&app, "GET", &format!("/kv/k?{bad}"), Body::empty()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request", "{bad}");
    }
}

#[tokio::test]
async fn range_options() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    // Revisions 2..=6.
    for (k, val) in [("a", "3"), ("b", "1"), ("c", "22"), ("d", "0"), ("b", "2")] {
        put(&app, k, val).await;
    }
    let get = |q: &str| {
        let app = app.clone();
        let uri = format!("/kv?{q}");
        async move {
            let (s, _, v) = call(&app, "GET", &uri, Body::empty()).await;
            (s, v)
        }
    };
    let (s, v) = get("start=b&end=d").await;
    assert_eq!(
        (s, keys(&v)),
        (StatusCode::OK, vec!["b".into(), "c".into()])
    );
    assert_eq!((&v["count"], &v["more"]), (&json!(2), &json!(false)));
    assert_eq!(v["header"]["revision"], 6);
    let (_, v) = get("start=b").await;
    assert_eq!(keys(&v), ["b", "c", "d"]);
    let (_, v) = get("end=c").await;
    assert_eq!(keys(&v), ["a", "b"]);
    let (_, v) = get("start=b&end=%00").await;
    assert_eq!(keys(&v), ["b", "c", "d"]);
    // Limit: `count` is the whole range, `more` says there is more.
    let (_, v) = get("limit=2").await;
    assert_eq!(
        (keys(&v), &v["count"], &v["more"]),
        (vec!["a".into(), "b".into()], &json!(4), &json!(true))
    );
    let (_, v) = get("limit=2&after=b").await;
    assert_eq!(
        (keys(&v), &v["more"]),
        (vec!["c".into(), "d".into()], &json!(false))
    );
    // Sorting.
    let (_, v) = get("sort_order=descend").await;
    assert_eq!(keys(&v), ["d", "c", "b", "a"]);
    let (_, v) = get("sort_target=value&sort_order=ascend").await;
    assert_eq!(keys(&v), ["d", "b", "c", "a"]);
    let (_, v) = get("sort_target=mod&sort_order=descend&limit=1").await;
    assert_eq!(keys(&v), ["b"]);
    // Values and counts only.
    let (_, v) = get("keys_only=true&prefix=a").await;
    assert_eq!(
        (keys(&v), v["items"][0].get("value")),
        (vec!["a".into()], Some(&json!("")))
    );
    let (_, v) = get("count_only&prefix=").await;
    assert_eq!(
        (v["items"].as_array().unwrap().len(), &v["count"]),
        (0, &json!(4))
    );
    // Filters on revisions.
    let (_, v) = get("min_mod_revision=5").await;
    assert_eq!(keys(&v), ["b", "d"]);
    let (_, v) = get("max_create_revision=3").await;
    assert_eq!(keys(&v), ["a", "b"]);
    // A past revision: `b` was "1" at revision 3, `c` did not exist.
    let (_, v) = get("revision=3").await;
    assert_eq!(keys(&v), ["a", "b"]);
    assert_eq!(v["items"][1]["value"], "1");
    assert_eq!(v["header"]["revision"], 6);
    // Refused.
    for bad in [
        "prefix=a&start=b",
        "after=b&sort_order=descend",
        "sort_order=sideways",
        "sort_target=size",
        "limit=0",
        "keys_only=maybe",
        "start=b&end=",
        "bogus=1",
        "consistency=eventual",
    ] {
        let (s, v) = get(bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request", "{bad}: {v}");
    }
    let (s, v) = get("revision=7").await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::BAD_REQUEST, &json!("future_revision"))
    );
}

#[tokio::test]
async fn binary_keys_and_values_come_back_as_base64() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let (s, v) = post(
        &app,
        "/txn",
        json!({"success": [{"put": {"key_base64": "/wA=", "value_base64": "wyg="}}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, v) = call(&app, "GET", "/kv?start=%FF", Body::empty()).await;
    let item = &v["items"][0];
    assert_eq!(
        (&item["key_base64"], &item["value_base64"]),
        (&json!("/wA="), &json!("wyg="))
    );
    assert!(item.get("key").is_none(), "{item}");
}

#[tokio::test]
async fn delete_range_with_prev_kv() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "p/1", "x").await;
    put(&app, "p/2", "y").await;
    let keep = put(&app, "q", "z").await;
    let (s, _, v) = call(
        &app,
        "DELETE",
        "/kv?prefix=p%2F&prev_kv=true",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["status"], &v["deleted"]),
        (&json!("committed"), &json!(2))
    );
    // One revision for the whole range.
    assert_eq!(
        (&v["index"], &v["header"]["revision"]),
        (&json!(keep + 1), &json!(keep + 1))
    );
    let prev = v["prev_kvs"].as_array().unwrap();
    assert_eq!(prev.len(), 2);
    assert_eq!(
        (&prev[0]["key"], &prev[0]["value"], &prev[0]["mod_revision"]),
        (&json!("p/1"), &json!("x"), &json!(r1))
    );
    let (_, _, v) = call(&app, "GET", "/kv", Body::empty()).await;
    assert_eq!(keys(&v), ["q"]);
    // Nothing to delete: 200, no new revision, no prev_kvs unless asked.
    let (s, _, v) = call(&app, "DELETE", "/kv?start=a&end=b", Body::empty()).await;
    assert_eq!(
        (s, &v["deleted"], &v["index"]),
        (StatusCode::OK, &json!(0), &json!(keep + 1))
    );
    assert_eq!(v["prev_kvs"], json!([]));
    // Every key, spelled out.
    let (s, _, v) = call(&app, "DELETE", "/kv?start=%00&end=%00", Body::empty()).await;
    assert_eq!((s, &v["deleted"]), (StatusCode::OK, &json!(1)));
    assert!(f.reader.is_empty());
    for bad in [
        "",
        "prefix=",
        "prefix=a&start=b",
        "prev_kv=true",
        "prefix=a&prev_kv=2",
    ] {
        let (s, _, v) = call(&app, "DELETE", &format!("/kv?{bad}"), Body::empty()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request");
    }
}

#[tokio::test]
async fn txn_runs_one_branch_in_one_revision() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let rc = put(&app, "counter", "7").await;
    put(&app, "tmp/1", "t").await;
    let body = |expected: i64| {
        json!({
            "compare": [
                {"key": "counter", "target": "mod", "result": "=", "mod_revision": expected},
                {"key": "lock/", "prefix": true, "target": "version", "result": "=", "version": 0}],
            "success": [
                {"put": {"key": "counter", "value": "8", "prev_kv": true}},
                {"delete": {"key": "tmp/", "prefix": true}},
                {"range": {"prefix": "counter"}}],
            "failure": [{"range": {"key": "counter"}}]})
    };
    // Failure branch first: no revision, the range op answers.
    let (s, v) = post(&app, "/txn", body(rc + 100)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["succeeded"], false);
    assert_eq!(
        (&v["index"], &v["header"]["revision"]),
        (&json!(rc + 1), &json!(rc + 1))
    );
    assert_eq!(v["responses"][0]["range"]["items"][0]["value"], "7");
    // Success branch: everything at revision rc + 2.
    let (s, v) = post(&app, "/txn", body(rc)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["index"], rc + 2);
    let r = &v["responses"];
    assert_eq!(r[0]["put"]["prev_kv"]["value"], "7");
    assert_eq!(r[1]["delete"]["deleted"], 1);
    // The range sees the txn's own put.
    assert_eq!(r[2]["range"]["items"][0]["value"], "8");
    assert_eq!(r[2]["range"]["items"][0]["mod_revision"], rc + 2);
    let (_, _, v) = call(&app, "GET", "/kv/tmp/1", Body::empty()).await;
    assert_eq!(v["error"], "key not found");
    // A nested txn answers in place.
    let (s, v) = post(
        &app,
        "/txn",
        json!({"success": [{"txn": {"compare": [{"key": "counter", "target": "value", "result": "=", "value": "8"}],
                                     "success": [{"put": {"key": "n", "value": "1"}}]}}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["responses"][0]["txn"]["succeeded"], true);
    assert_eq!(v["responses"][0]["txn"]["responses"][0], json!({"put": {}}));
}

#[tokio::test]
async fn bad_txns_are_400_and_propose_nothing() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let rev = put(&app, "k", "v").await;
    let many: Vec<Value> = (0..129)
        .map(|i| json!({"put": {"key": format!("k{i}"), "value": "v"}}))
        .collect();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "not json",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            json!({"compare": [], "bogus": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            json!({"success": [{"put": {"key": "k"}}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            json!({"compare": [{"key": "k", "target": "mod", "result": "=", "version": 1}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            json!({"compare": [{"key": "k", "target": "mod", "result": "~", "mod_revision": 1}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            json!({"success": many}),
            StatusCode::BAD_REQUEST,
            "too_many_ops",
        ),
        (
            "",
            json!({"success": [{"put": {"key": "d", "value": "1"}}, {"put": {"key": "d", "value": "2"}}]}),
            StatusCode::BAD_REQUEST,
            "duplicate_key",
        ),
        (
            "",
            json!({"success": [{"range": {"key": "k", "revision": 99}}]}),
            StatusCode::BAD_REQUEST,
            "future_revision",
        ),
        (
            "",
            json!({"success": [{"put": {"key": "k", "value": "x", "ignore_value": true}}]}),
            StatusCode::BAD_REQUEST,
            "value_provided",
        ),
        (
            "",
            json!({"success": [{"put": {"key": "absent", "ignore_value": true}}]}),
            StatusCode::BAD_REQUEST,
            "key_not_found",
        ),
    ];
    for (raw, body, status, code) in cases {
        let text = if raw.is_empty() {
            body.to_string()
        } else {
            raw.to_string()
        };
        let (s, _, v) = call(&app, "POST", "/txn", text.clone()).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{text}: {v}");
    }
    // The message names the element.
    let (_, v) = post(
        &app,
        "/txn",
        json!({"success": [{"range": {"key": "k"}}, {"put": {"key": "k"}}]}),
    )
    .await;
    assert!(
        v["error"].as_str().unwrap().starts_with("success[1].put:"),
        "{v}"
    );
    // Nothing changed.
    let (_, _, v) = call(&app, "GET", "/kv", Body::empty()).await;
    assert_eq!(v["header"]["revision"], rev);
    // Wrong method, query parameters.
    let (s, h, _) = call(&app, "GET", "/txn", Body::empty()).await;
    assert_eq!(
        (s, &h[header::ALLOW]),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            &"POST".parse::<axum::http::HeaderValue>().unwrap()
        )
    );
    let (s, _, _) = call(&app, "POST", "/txn?x=1", "{}").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn compaction_makes_old_revisions_gone() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "1").await;
    let r2 = put(&app, "k", "2").await;
    let r3 = put(&app, "k", "3").await;
    let (s, v) = post(&app, "/compact", json!({"revision": r2})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["compact_revision"], &v["header"]["revision"]),
        (&json!(r2), &json!(r3))
    );
    let (s, _, v) = call(&app, "GET", &format!("/kv/k?revision={r1}"), Body::empty()).await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    assert_eq!(
        (&v["code"], &v["compact_revision"]),
        (&json!("compacted"), &json!(r2))
    );
    let (s, _, _) = call(
        &app,
        "GET",
        &format!("/kv?prefix=&revision={r1}"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::GONE);
    // At the compact revision, reads still work.
    let (s, _, v) = call(&app, "GET", &format!("/kv/k?revision={r2}"), Body::empty()).await;
    assert_eq!((s, &v["value"]), (StatusCode::OK, &json!("2")));
    // Compacting again at or below it, or above the store, is refused.
    let (s, v) = post(&app, "/compact", json!({"revision": r2})).await;
    assert_eq!((s, &v["code"]), (StatusCode::GONE, &json!("compacted")));
    let (s, v) = post(
        &app,
        "/compact",
        json!({"revision": r3 + 5, "physical": true}),
    )
    .await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::BAD_REQUEST, &json!("future_revision"))
    );
    for bad in [
        json!({}),
        json!({"revision": -1}),
        json!({"revision": 3, "x": 1}),
        json!("3"),
    ] {
        let (s, v) = post(&app, "/compact", bad.clone()).await;
        assert_eq!(
            (s, &v["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_request")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn writes_without_a_key_report_unknown_outcome_without_one() {
    let f = leader_fake(Mode::Stuck);
    let app = app_of(&f);
    let (s, h, v) = call(
        &app,
        "POST",
        "/txn",
        r#"{"success":[{"put":{"key":"k","value":"v"}}]}"#,
    )
    .await;
    assert_eq!(
        (s, &v["outcome"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unknown")),
        "{v}"
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    assert!(v.get("key").is_none(), "{v}");
}

#[tokio::test]
async fn followers_forward_txn_delete_range_and_compact() {
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (p1, p2) = (
        l1.local_addr().unwrap().port(),
        l2.local_addr().unwrap().port(),
    );
    let leader: Fake = fake_node(
        membership("n1", p1, &[("n2", p2)]),
        Mode::Leader,
        Duration::from_secs(2),
    );
    let follower: Fake = fake_node(
        membership("n2", p2, &[("n1", p1)]),
        Mode::Follower(id_of("n1")),
        Duration::from_secs(2),
    );
    super::serve(l1, app_of(&leader)).await;
    super::serve(l2, app_of(&follower)).await;
    let client = reqwest::Client::new();
    let f = format!("http://127.0.0.1:{p2}");
    let r = client
        .post(format!("{f}/txn"))
        .body(
            r#"{"success":[{"put":{"key":"a/1","value":"x"}},{"put":{"key":"a/2","value":"y"}}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-raftkv-forwarded"], "1");
    let v: Value = r.json().await.unwrap();
    // The leader answered: its member id is in the header.
    assert_eq!(
        (&v["succeeded"], &v["header"]["member_id"]),
        (&json!(true), &json!(id_of("n1")))
    );
    assert_eq!(leader.reader.value("a/2").as_deref(), Some("y"));
    let r = client
        .delete(format!("{f}/kv?prefix=a/&prev_kv=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 2);
    let r = client
        .post(format!("{f}/compact"))
        .body(r#"{"revision":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(leader.reader.is_empty());
    assert!(follower.reader.is_empty());
}

// ---------------------------------------------------------------- watch ---

/// One SSE message: its fields (`id`, `event`, `data`), comments dropped.
#[derive(Debug, Default, Clone, PartialEq)]
struct Msg {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads a response body as SSE messages.
struct Sse {
    body: Body,
    buf: String,
    /// Comment lines seen (`: …`), in order.
    comments: Vec<String>,
}

impl Sse {
    async fn open(app: &axum::Router, uri: &str) -> Sse {
        Sse::open_after(app, uri, None).await
    }

    /// Opens `uri` as a reconnecting client that last got message `last`.
    async fn open_after(app: &axum::Router, uri: &str, last: Option<&str>) -> Sse {
        let mut req = Request::builder()
            .method("GET")
            .uri(uri)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        let req = req.body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut sse = Sse {
            body: resp.into_body(),
            buf: String::new(),
            comments: Vec::new(),
        };
        // The first thing sent says the watch is registered.
        let first = sse.block().await.expect("the stream ended at once");
        assert!(first.starts_with(": watching from revision"), "{first}");
        sse
    }

    /// The next blank-line-terminated block, or `None` at the end.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("no SSE data within the patience bound");
            match frame {
                None => return None,
                Some(f) => {
                    let f = f.expect("body error");
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    /// The next message (comments are collected, not returned).
    async fn next(&mut self) -> Option<Msg> {
        loop {
            let block = self.block().await?;
            let mut msg = Msg::default();
            let mut any = false;
            for line in block.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    self.comments.push(c.trim().to_string());
                    continue;
                }
                let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                any = true;
                match k {
                    "id" => msg.id = Some(v.to_string()),
                    "event" => msg.event = v.to_string(),
                    "data" => msg.data = serde_json::from_str(v).unwrap(),
                    other => panic!("unexpected SSE field {other}"),
                }
            }
            if any {
                return Some(msg);
            }
        }
    }
}

#[tokio::test]
async fn sse_watch_reports_changes_made_after_it() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r0 = put(&app, "w/0", "before").await;
    let mut sse = Sse::open(&app, "/watch?prefix=w%2F&prev_kv=true").await;
    let r1 = put(&app, "w/1", "a").await;
    put(&app, "x", "outside").await;
    let r3 = put(&app, "w/0", "b").await;
    let (s, _, _) = call(&app, "DELETE", "/kv/w/1", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let m = sse.next().await.unwrap();
    assert_eq!(
        (m.id.as_deref(), m.event.as_str()),
        (Some(r1.to_string().as_str()), "events")
    );
    assert_eq!(m.data["revision"], r1);
    assert_eq!(
        m.data["events"],
        json!([{"type": "put", "kv": {"key": "w/1", "value": "a", "index": r1, "create_revision": r1,
                 "mod_revision": r1, "version": 1, "lease": 0}}])
    );
    let m = sse.next().await.unwrap();
    assert_eq!(
        m.data["revision"], r3,
        "the put outside the prefix is not reported"
    );
    assert_eq!(m.data["events"][0]["prev_kv"]["value"], "before");
    assert_eq!(m.data["events"][0]["prev_kv"]["mod_revision"], r0);
    let m = sse.next().await.unwrap();
    let e = &m.data["events"][0];
    assert_eq!(
        (&e["type"], &e["kv"]["key"], &e["kv"]["mod_revision"]),
        (&json!("delete"), &json!("w/1"), &json!(r3 + 1))
    );
    assert_eq!(e["kv"]["version"], 0);
    assert_eq!(e["prev_kv"]["value"], "a");
}

#[tokio::test]
async fn sse_watch_resumes_from_a_start_revision_with_filters() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "1").await;
    let r2 = put(&app, "k", "2").await;
    call(&app, "DELETE", "/kv/k", Body::empty()).await;
    let r4 = put(&app, "k", "4").await;
    // From r2 on: r2, the delete, r4 — the history first, then live.
    let mut sse = Sse::open(&app, &format!("/watch?key=k&start_revision={r2}")).await;
    let ids: Vec<i64> = [sse.next().await, sse.next().await, sse.next().await]
        .iter()
        .map(|m| m.as_ref().unwrap().data["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [r2, r2 + 1, r4]);
    let r5 = put(&app, "k", "5").await;
    assert_eq!(sse.next().await.unwrap().data["revision"], r5);
    // no_delete drops the delete; no prev_kv unless asked.
    let mut sse = Sse::open(
        &app,
        &format!("/watch?key=k&start_revision={r1}&no_delete=true"),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = sse.next().await.unwrap();
        assert!(m.data["events"][0].get("prev_kv").is_none());
        seen.push(
            m.data["events"][0]["kv"]["value"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["1", "2", "4", "5"]);
}

#[tokio::test]
async fn sse_watch_sends_progress_when_idle() {
    let f = leader_fake(Mode::Leader);
    let mut state = AppState::new(f.handle.clone());
    state.watch_progress_every = Duration::from_millis(50);
    let app = router(state);
    let rev = put(&app, "other", "x").await;
    let mut sse = Sse::open(&app, "/watch?key=quiet&progress_notify=true").await;
    let m = sse.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), &m.data),
        ("progress", &json!({"revision": rev}))
    );
    assert_eq!(m.id, Some(rev.to_string()));
    // Without progress_notify, silence gets keep-alive comments only.
    let mut sse = Sse::open(&app, "/watch?key=quiet").await;
    let r = put(&app, "quiet", "now").await;
    let m = sse.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), &m.data["revision"]),
        ("events", &json!(r))
    );
    assert!(
        sse.comments.iter().all(|c| c == "keep-alive"),
        "{:?}",
        sse.comments
    );
}

#[tokio::test]
async fn watch_below_the_compact_revision_is_canceled() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "1").await;
    put(&app, "k", "2").await;
    let r3 = put(&app, "k", "3").await;
    let (s, _) = post(&app, "/compact", json!({"revision": r3})).await;
    assert_eq!(s, StatusCode::OK);
    // The Raft loop tells the hub about a compaction; the fake loop does
    // not, so do it here.
    f.handle.watch_hub().compacted(r3);
    let mut sse = Sse::open(&app, &format!("/watch?key=k&start_revision={r1}")).await;
    let m = sse.next().await.unwrap();
    assert_eq!(m.event, "canceled");
    assert_eq!(
        m.data,
        json!({"reason": "compacted", "compact_revision": r3})
    );
    assert_eq!(sse.next().await, None, "the stream ends after canceled");
    // The long poll answers 410.
    let (s, _, v) = call(
        &app,
        "GET",
        &format!("/watch?key=k&start_revision={r1}"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, &v["code"], &v["compact_revision"]),
        (StatusCode::GONE, &json!("compacted"), &json!(r3))
    );
    // At the compact revision the history is still there.
    let (s, _, v) = call(
        &app,
        "GET",
        &format!("/watch?key=k&start_revision={r3}"),
        Body::empty(),
    )
    .await;
    assert_eq!((s, &v["revision"]), (StatusCode::OK, &json!(r3)));
}

#[tokio::test]
async fn sse_watch_ends_cleanly_when_the_node_stops() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let mut sse = Sse::open(&app, "/watch?prefix=").await;
    let r = put(&app, "a", "1").await;
    assert_eq!(sse.next().await.unwrap().data["revision"], r);
    f.handle.watch_hub().stop();
    let m = sse.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), &m.data),
        ("canceled", &json!({"reason": "stopped"}))
    );
    assert_eq!(sse.next().await, None);
    // New watches are refused.
    let (s, h, _) = call(&app, "GET", "/watch?key=a", Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn long_poll_returns_the_first_batch() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "1").await;
    put(&app, "k", "2").await;
    // A start in the past: the first revision at or after it.
    let (s, _, v) = call(
        &app,
        "GET",
        &format!("/watch?key=k&start_revision={r1}"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["revision"], r1);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["kv"]["value"], "1");
    // A start in the future: waits for the change.
    let next = r1 + 2;
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/watch?prefix=k&start_revision={next}&wait=30s"),
                Body::empty(),
            )
            .await
        })
    };
    assert_eq!(put(&app, "k", "3").await, next);
    let (s, _, v) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&v["revision"], &v["events"][0]["kv"]["value"]),
        (&json!(next), &json!("3"))
    );
}

#[tokio::test]
async fn long_poll_times_out_with_an_empty_batch_at_the_current_revision() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let rev = put(&app, "other", "x").await;
    for wait in ["0", "50ms"] {
        let (s, _, v) = call(
            &app,
            "GET",
            &format!("/watch?key=quiet&wait={wait}"),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"revision": rev, "events": []}), "wait={wait}");
    }
}

#[tokio::test]
async fn bad_watch_requests_are_400() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    for bad in [
        "",
        "start_revision=1",
        "key=a&prefix=b",
        "key=",
        "key=a&start_revision=-1",
        "key=a&start_revision=x",
        "key=a&wait=2h",
        "key=a&wait=61s",
        "key=a&wait=soon",
        "key=a&progress_notify=perhaps",
        "start=b&end=a",
        "key=a&bogus=1",
    ] {
        let (s, _, v) = call(&app, "GET", &format!("/watch?{bad}"), Body::empty()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request", "{bad}: {v}");
    }
}

#[tokio::test]
async fn followers_serve_watches_from_their_own_state() {
    // The follower's leader does not listen: a forwarded watch would fail.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let f: Fake = fake_node(
        membership("n2", 2, &[("n1", dead_port)]),
        Mode::Follower(id_of("n1")),
        Duration::from_millis(300),
    );
    let app = app_of(&f);
    let mut sse = Sse::open(&app, "/watch?key=k").await;
    // The follower's loop applies a revision replicated from the leader.
    let rev = f.handle.watch_hub().revision() + 1;
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        value: b"v".to_vec(),
        lease: 0,
    };
    f.handle.watch_hub().applied(
        rev,
        &[Event {
            kind: EventKind::Put,
            kv,
            prev_kv: None,
        }],
    );
    let m = sse.next().await.unwrap();
    assert_eq!(
        (&m.data["revision"], &m.data["events"][0]["kv"]["value"]),
        (&json!(rev), &json!("v"))
    );
    let (s, _, v) = call(&app, "GET", "/watch?key=k&wait=0", Body::empty()).await;
    assert_eq!((s, &v["revision"]), (StatusCode::OK, &json!(rev)));
}

#[tokio::test]
async fn sse_over_a_socket_streams_then_closes_when_the_node_stops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = leader_fake(Mode::Leader);
    super::serve(listener, app_of(&f)).await;
    let client = reqwest::Client::new();
    let mut resp = client
        .get(format!("http://127.0.0.1:{port}/watch?key=k"))
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    // Reads until `want` arrived (bounded), returning false at the end.
    async fn until(resp: &mut reqwest::Response, text: &mut String, want: &str) -> bool {
        while !text.contains(want) {
            match tokio::time::timeout(PATIENCE, resp.chunk()).await {
                Ok(Ok(Some(c))) => text.push_str(std::str::from_utf8(&c).unwrap()),
                Ok(Ok(None)) => return false,
                Ok(Err(e)) => panic!("stream error: {e}"),
                Err(_) => panic!("nothing within {PATIENCE:?}; got {text:?}"),
            }
        }
        true
    }
    // Registered before the client sees anything: the put is reported.
    assert!(until(&mut resp, &mut text, ": watching from revision 2\n\n").await);
    let app = app_of(&f);
    let r = put(&app, "k", "v").await;
    assert!(until(&mut resp, &mut text, &format!("id: {r}\nevent: events\n")).await);
    f.handle.watch_hub().stop();
    assert!(until(&mut resp, &mut text, "event: canceled\n").await);
    // Then the body ends: the connection is not held open.
    assert!(!until(&mut resp, &mut text, "never sent").await);
    assert!(
        text.ends_with("data: {\"reason\":\"stopped\"}\n\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reconnecting_event_source_continues_after_its_last_event_id() {
    let f = leader_fake(Mode::Leader);
    let app = app_of(&f);
    let r1 = put(&app, "k", "1").await;
    let r2 = put(&app, "k", "2").await;
    let r3 = put(&app, "k", "3").await;
    let uri = format!("/watch?key=k&start_revision={r1}");
    let mut sse = Sse::open_after(&app, &uri, Some(&r2.to_string())).await;
    assert_eq!(sse.next().await.unwrap().data["revision"], r3);
    // An id below the start changes nothing.
    let mut sse = Sse::open_after(&app, &uri, Some("0")).await;
    assert_eq!(sse.next().await.unwrap().data["revision"], r1);
    for bad in ["x", "-3"] {
        let req = Request::builder()
            .uri(&uri)
            .header(header::ACCEPT, "text/event-stream")
            .header("last-event-id", bad)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}
