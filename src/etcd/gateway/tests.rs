//! The gateway over the in-memory fake backend, request by request
//! (axum's router as a tower service: no listener).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::router;
use crate::etcd::fake::{MemBackend, MEMBER_ID};
use crate::etcd::EtcdService;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn app(backend: &MemBackend) -> axum::Router {
    router(EtcdService::new(Arc::new(backend.clone())))
}

async fn post(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn put_then_range_round_trips_base64_and_string_integers() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let (status, put) = post(
        &app,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["header"]["revision"], "2");
    assert_eq!(put["header"]["member_id"], MEMBER_ID.to_string());

    let (status, range) = post(&app, "/v3/kv/range", json!({"key": b64("foo")})).await;
    assert_eq!(status, StatusCode::OK, "{range}");
    assert_eq!(range["count"], "1");
    let kv = &range["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("bar"));
    assert_eq!(kv["mod_revision"], "2");
    assert_eq!(kv["create_revision"], "2");
    assert_eq!(kv["version"], "1");

    // A missing key: no kvs, no count (defaults are left out).
    let (_, none) = post(&app, "/v3/kv/range", json!({"key": b64("nope")})).await;
    assert!(
        none.get("kvs").is_none() && none.get("count").is_none(),
        "{none}"
    );
}

#[tokio::test]
async fn txn_delete_and_compaction_through_the_gateway() {
    let backend = MemBackend::new();
    let app = app(&backend);
    post(
        &app,
        "/v3/kv/put",
        json!({"key": b64("a"), "value": b64("1")}),
    )
    .await;
    let (status, txn) = post(
        &app,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": b64("a"), "target": "VALUE", "result": "EQUAL", "value": b64("1")}],
            "success": [{"request_put": {"key": b64("a"), "value": b64("2")}}],
            "failure": [],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{txn}");
    assert_eq!(txn["succeeded"], true);
    let (_, del) = post(&app, "/v3/kv/deleterange", json!({"key": b64("a")})).await;
    assert_eq!(del["deleted"], "1", "{del}");
    let (status, c) = post(&app, "/v3/kv/compaction", json!({"revision": "3"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    // Reading below the compact revision: etcd's error object.
    let (status, err) = post(
        &app,
        "/v3/kv/range",
        json!({"key": b64("a"), "revision": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        err,
        json!({
            "error": "etcdserver: mvcc: required revision has been compacted",
            "message": "etcdserver: mvcc: required revision has been compacted",
            "code": 11,
        })
    );
}

#[tokio::test]
async fn bad_json_is_invalid_argument_and_empty_body_is_the_empty_message() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let req = Request::post("/v3/kv/put")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["code"], 3);
    // An empty put: etcd's "key is not provided".
    let req = Request::post("/v3/kv/put").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"], "etcdserver: key is not provided", "{v}");
    // Unimplemented services: 501.
    let (status, v) = post(&app, "/v3/lease/grant", json!({"TTL": "5"})).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{v}");
    assert_eq!(v["code"], 12);
}

#[tokio::test]
async fn version_members_status_and_hash() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let resp = app
        .clone()
        .oneshot(Request::get("/version").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v, json!({"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}));

    let (_, members) = post(&app, "/v3/cluster/member/list", json!({})).await;
    assert_eq!(
        members["members"][0]["ID"],
        MEMBER_ID.to_string(),
        "{members}"
    );
    assert_eq!(
        members["members"][0]["peerURLs"][0],
        "http://127.0.0.1:9001"
    );
    let (_, status) = post(&app, "/v3/maintenance/status", json!({})).await;
    assert_eq!(status["version"], "3.5.0", "{status}");
    assert_eq!(status["leader"], MEMBER_ID.to_string());
    // etcd maps both Hash and HashKV here; the gateway serves HashKV.
    post(
        &app,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("v")}),
    )
    .await;
    let (code, hash) = post(&app, "/v3/maintenance/hash", json!({"revision": "2"})).await;
    assert_eq!(code, StatusCode::OK, "{hash}");
    assert!(hash["hash"].as_u64().is_some_and(|h| h != 0), "{hash}");
    assert_eq!(hash["header"]["revision"], "2");
}

#[tokio::test]
async fn watch_streams_one_result_line_per_response() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let req = Request::post("/v3/watch")
        .body(Body::from(
            json!({"create_request": {"key": b64("w"), "prev_kv": true}}).to_string(),
        ))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut lines: Vec<Value> = Vec::new();
    let mut put_done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lines.len() < 2 {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("watch lines in time")
            .expect("stream open")
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            lines.push(serde_json::from_slice(&line).unwrap());
        }
        if !lines.is_empty() && !put_done {
            put_done = true;
            post(
                &app,
                "/v3/kv/put",
                json!({"key": b64("w"), "value": b64("x")}),
            )
            .await;
        }
    }
    assert_eq!(lines[0]["result"]["created"], true, "{}", lines[0]);
    let ev = &lines[1]["result"]["events"][0];
    assert_eq!(ev["kv"]["key"], b64("w"), "{}", lines[1]);
    assert_eq!(ev["kv"]["value"], b64("x"));
    // PUT is the enum's default: left out.
    assert!(ev.get("type").is_none(), "{ev}");
}

/// Reads the next line of a gateway stream.
async fn next_line(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    buf: &mut Vec<u8>,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("a line in time")
            .expect("stream open")
            .unwrap();
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn watch_reads_later_requests_from_the_open_body() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let req = Request::post("/v3/watch")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    // The first request arrives in two pieces.
    let create = json!({"create_request": {"key": b64("k")}}).to_string();
    let (a, b) = create.split_at(7);
    tx.send(Ok(a.to_string().into())).await.unwrap();
    let answer = tokio::spawn(app.clone().oneshot(req));
    tx.send(Ok(b.to_string().into())).await.unwrap();
    let resp = answer.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let created = next_line(&mut body, &mut buf).await;
    assert_eq!(created["result"]["created"], true, "{created}");
    // The first watch id, 0, is the default: left out.
    assert!(created["result"].get("watch_id").is_none(), "{created}");

    post(
        &app,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("1")}),
    )
    .await;
    let ev = next_line(&mut body, &mut buf).await;
    assert_eq!(ev["result"]["events"][0]["kv"]["value"], b64("1"), "{ev}");

    // A cancel on the same body ends that watch.
    let cancel = json!({"cancel_request": {"watch_id": "0"}}).to_string();
    tx.send(Ok(cancel.into())).await.unwrap();
    let canceled = next_line(&mut body, &mut buf).await;
    assert_eq!(canceled["result"]["canceled"], true, "{canceled}");
    post(
        &app,
        "/v3/kv/put",
        json!({"key": b64("k"), "value": b64("2")}),
    )
    .await;
    // Nothing more for the canceled watch: a progress request answers next.
    tx.send(Ok(json!({"progress_request": {}}).to_string().into()))
        .await
        .unwrap();
    let progress = next_line(&mut body, &mut buf).await;
    assert!(progress["result"].get("events").is_none(), "{progress}");
    assert_eq!(progress["result"]["header"]["revision"], "3", "{progress}");

    // A malformed request ends the stream with an error line.
    tx.send(Ok("{\"cancel_request\": 7}".to_string().into()))
        .await
        .unwrap();
    let err = next_line(&mut body, &mut buf).await;
    assert_eq!(err["error"]["grpc_code"], 3, "{err}");
    let end = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn a_malformed_first_watch_request_is_a_400() {
    let backend = MemBackend::new();
    let app = app(&backend);
    let req = Request::post("/v3/watch")
        .body(Body::from("{\"create_request\": {\"key\": 5}}"))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let req = Request::post("/v3/watch")
        .body(Body::from("{\"create_request\": "))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
