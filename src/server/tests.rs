//! Route tests against a fake Raft loop (see `node::handle::testing`): the
//! contract's shapes and status codes, and forwarding between two real
//! servers on loopback. The `/raft/*` routes are the transport's (tested
//! in `crate::transport`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState};
use crate::node::handle::testing::{fake_node, fake_node_with_peers, Mode};
use crate::node::{Membership, NodeConfig, NodeStatus, PeerInfo, PeerSpec, ReceiveProgress};
use crate::raft::{NodeId, Role};

/// The fake loop's peer traffic is not looked at here.
type Fake = crate::node::handle::testing::Fake<()>;

mod api;

fn membership(self_name: &str, self_port: u16, peers: &[(&str, u16)]) -> Membership {
    let mut c = NodeConfig::new(self_name);
    c.port = self_port;
    c.peers = peers
        .iter()
        .map(|(n, p)| PeerSpec {
            name: Some(n.to_string()),
            addr: format!("127.0.0.1:{p}"),
        })
        .collect();
    Membership::resolve(&c).unwrap()
}

fn leader_fake(mode: Mode) -> Fake {
    fake_node(
        membership("n1", 1, &[("n2", 2), ("n3", 3)]),
        mode,
        Duration::from_millis(300),
    )
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {uri}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, headers, v)
}

#[tokio::test]
async fn put_get_delete_roundtrip() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let (s, _, v) = call(&app, "PUT", "/kv/a%2Fb/c", r#"{"value":"hello"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "committed");
    assert_eq!(v["key"], "a/b/c");
    let index = v["index"].as_u64().unwrap();
    assert!(index > 0);

    let (s, _, v) = call(&app, "GET", "/kv/a/b/c", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            &v["key"],
            &v["value"],
            &v["index"],
            &v["mod_revision"],
            &v["version"]
        ),
        (
            &json!("a/b/c"),
            &json!("hello"),
            &json!(index),
            &json!(index),
            &json!(1)
        )
    );
    assert_eq!(v["header"]["revision"], json!(index));

    let (s, _, v) = call(&app, "GET", "/kv/a/b/c?consistency=stale", Body::empty()).await;
    assert_eq!((s, v["value"].clone()), (StatusCode::OK, json!("hello")));

    let (s, _, v) = call(&app, "DELETE", "/kv/a/b/c", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "committed");
    assert!(v["index"].as_u64().unwrap() > index);

    let (s, _, v) = call(&app, "GET", "/kv/a/b/c", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"error": "key not found", "key": "a/b/c"}));
    let (s, _, v) = call(&app, "DELETE", "/kv/a/b/c", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["key"], "a/b/c");
}

#[tokio::test]
async fn cas_semantics() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let (s, _, v) = call(&app, "PUT", "/kv/c?cas=0", r#"{"value":"1"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let i1 = v["index"].as_u64().unwrap();
    let (s, _, v) = call(&app, "PUT", "/kv/c?cas=0", r#"{"value":"2"}"#).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_eq!(v["index"], i1);
    assert_eq!(v["key"], "c");
    assert!(v["error"].is_string());
    let (s, _, _) = call(&app, "PUT", &format!("/kv/c?cas={i1}"), r#"{"value":"2"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = call(&app, "DELETE", &format!("/kv/c?cas={i1}"), Body::empty()).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert!(v["index"].as_u64().unwrap() > i1);
}

#[tokio::test]
async fn listing_pages_with_more_flag() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    for k in ["p/1", "p/2", "p/3", "q/1"] {
        let (s, _, _) = call(&app, "PUT", &format!("/kv/{k}"), r#"{"value":"v"}"#).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _, v) = call(&app, "GET", "/kv?prefix=p%2F&limit=2", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p/1", "p/2"]);
    assert_eq!(v["more"], true);
    assert!(v["items"][0]["index"].is_u64());
    assert_eq!(v["items"][0]["value"], "v");
    let (_, _, v) = call(
        &app,
        "GET",
        "/kv?prefix=p/&limit=2&after=p/2",
        Body::empty(),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["more"], false);
    let (_, _, v) = call(&app, "GET", "/kv?consistency=stale", Body::empty()).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn bad_input_table() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let long_key = format!("/kv/{}", "k".repeat(1025));
    let big = format!(r#"{{"value":"{}"}}"#, "x".repeat((1 << 20) + 1));
    let huge = vec![b' '; 7 << 20];
    let cases: Vec<(&str, &str, Body, StatusCode)> = vec![
        (
            "PUT",
            "/kv/k",
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        ("PUT", "/kv/k", Body::from(""), StatusCode::BAD_REQUEST),
        (
            "PUT",
            "/kv/k",
            Body::from(r#"{"v":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/k",
            Body::from(r#"{"value":5}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/k",
            Body::from(r#"{"value":["a"]}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/",
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv",
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/kv/", Body::empty(), StatusCode::BAD_REQUEST),
        (
            "PUT",
            &long_key,
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", &long_key, Body::empty(), StatusCode::BAD_REQUEST),
        (
            "PUT",
            "/kv/%FF%FE",
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/k?cas=abc",
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/k?cas=-1",
            Body::from(r#"{"value":"x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/kv/k?cas=x",
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/kv/k?consistency=bogus",
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/kv?limit=0", Body::empty(), StatusCode::BAD_REQUEST),
        (
            "GET",
            "/kv?limit=many",
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/kv/k",
            Body::from(big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "PUT",
            "/kv/k",
            Body::from(huge),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("GET", "/nope", Body::empty(), StatusCode::NOT_FOUND),
        ("GET", "/kvx/a", Body::empty(), StatusCode::NOT_FOUND),
        (
            "POST",
            "/kv/k",
            Body::empty(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("GET", "/kv/missing", Body::empty(), StatusCode::NOT_FOUND),
    ];
    for (method, uri, body, want) in cases {
        let (s, _, v) = call(&app, method, uri, body).await;
        assert_eq!(s, want, "{method} {}", &uri[..uri.len().min(60)]);
        assert!(v["error"].is_string(), "{method} {uri}: {v}");
    }
    // Nothing bad was written, and the node still serves.
    let (s, _, _) = call(&app, "GET", "/kv/k", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&app, "PUT", "/kv/k", r#"{"value":"ok"}"#).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn max_sizes_are_accepted() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let key = "k".repeat(1024);
    let value = "\"".repeat(1 << 20); // escapes to 2 MiB of JSON
    let body = serde_json::to_vec(&json!({ "value": value })).unwrap();
    let (s, _, v) = call(&app, "PUT", &format!("/kv/{key}"), body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = call(&app, "GET", &format!("/kv/{key}"), Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["value"].as_str().unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn uncommitted_write_is_503_outcome_unknown() {
    let f = leader_fake(Mode::Stuck);
    let app = router(AppState::new(f.handle.clone()));
    let (s, h, v) = call(&app, "PUT", "/kv/k", r#"{"value":"x"}"#).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "1");
    assert_eq!(v["outcome"], "unknown");
    assert_eq!(v["key"], "k");
}

#[tokio::test]
async fn no_leader_is_503_with_retry_after() {
    let f = leader_fake(Mode::Leader);
    f.status_tx.send_modify(|s| {
        s.leader = None;
        s.role = Role::Candidate;
    });
    let app = router(AppState::new(f.handle.clone()));
    let (s, h, v) = call(&app, "PUT", "/kv/k", r#"{"value":"x"}"#).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "1");
    assert!(v.get("outcome").is_none(), "nothing was proposed: {v}");
    let (s, _, _) = call(&app, "GET", "/kv/k", Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, h, v) = call(&app, "GET", "/cluster/leader", Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key(header::RETRY_AFTER));
    assert!(v["error"].is_string());
    // Stale reads and health never wait for a leader.
    let (s, _, _) = call(&app, "GET", "/kv/k?consistency=stale", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, v) = call(&app, "GET", "/health", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["role"], "candidate");
    assert_eq!(v["node_id"], "n1");
}

#[tokio::test]
async fn status_and_leader_shapes() {
    let f = leader_fake(Mode::Leader);
    f.status_tx.send_modify(|s| {
        *s = NodeStatus {
            role: Role::Leader,
            term: 4,
            leader: Some(s.leader.unwrap()),
            commit_index: 10,
            applied_index: 9,
            first_index: 3,
            last_index: 11,
            snapshot_index: 2,
            peers: vec![crate::raft::PeerStatus {
                id: crate::node::membership::id_of("n2"),
                match_index: 8,
                next_index: 9,
            }],
            running: true,
        }
    });
    let app = router(AppState::new(f.handle.clone()));
    let (s, _, v) = call(&app, "GET", "/cluster/status", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    for (k, want) in [
        ("node_id", json!("n1")),
        ("role", json!("leader")),
        ("term", json!(4)),
        ("leader_id", json!("n1")),
        ("leader_url", json!("http://127.0.0.1:1")),
        ("commit_index", json!(10)),
        ("applied_index", json!(9)),
        ("last_log_index", json!(11)),
        ("first_log_index", json!(3)),
        ("snapshot_index", json!(2)),
    ] {
        assert_eq!(v[k], want, "{k}");
    }
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    let n2 = peers.iter().find(|p| p["id"] == "n2").unwrap();
    assert_eq!(n2["match_index"], 8);
    assert_eq!(n2["url"], "http://127.0.0.1:2");
    let (s, _, v) = call(&app, "GET", "/cluster/leader", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"leader_id": "n1", "leader_url": "http://127.0.0.1:1", "term": 4})
    );
}

/// Serves `app` on a loopback listener.
async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

#[tokio::test]
async fn followers_forward_writes_and_reads_to_the_leader() {
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
        Mode::Follower(crate::node::membership::id_of("n1")),
        Duration::from_secs(2),
    );
    serve(l1, router(AppState::new(leader.handle.clone()))).await;
    serve(l2, router(AppState::new(follower.handle.clone()))).await;
    let client = reqwest::Client::new();
    let f = format!("http://127.0.0.1:{p2}");

    let r = client
        .put(format!("{f}/kv/fw%2Fkey?cas=0"))
        .body(r#"{"value":"via follower"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-raftkv-forwarded"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key"], "fw/key");
    // It landed in the leader's state machine, not the follower's.
    assert_eq!(leader.reader.value("fw/key").unwrap(), "via follower");
    assert!(follower.reader.is_empty());

    // Linearizable reads go to the leader; stale reads stay local.
    let r = client.get(format!("{f}/kv/fw/key")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["value"], "via follower");
    let r = client
        .get(format!("{f}/kv/fw/key?consistency=stale"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Errors found by the leader come back unchanged.
    let r = client
        .put(format!("{f}/kv/fw/key?cas=0"))
        .body(r#"{"value":"again"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // A request that already made its hops is not passed on again.
    let r = client
        .get(format!("{f}/kv/fw/key"))
        .header("x-raftkv-hops", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn forwarding_loops_end_in_503() {
    // Two followers that each believe the other leads.
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (p1, p2) = (
        l1.local_addr().unwrap().port(),
        l2.local_addr().unwrap().port(),
    );
    let a: Fake = fake_node(
        membership("n1", p1, &[("n2", p2)]),
        Mode::Follower(crate::node::membership::id_of("n2")),
        Duration::from_millis(500),
    );
    let b: Fake = fake_node(
        membership("n2", p2, &[("n1", p1)]),
        Mode::Follower(crate::node::membership::id_of("n1")),
        Duration::from_millis(500),
    );
    serve(l1, router(AppState::new(a.handle.clone()))).await;
    serve(l2, router(AppState::new(b.handle.clone()))).await;
    let r = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{p1}/kv/x"))
        .body(r#"{"value":"v"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("forwarded"), "{v}");
}

#[tokio::test]
async fn dead_leader_write_is_503_not_applied() {
    // The follower's leader does not listen: nothing was sent, so the
    // answer is a plain 503 without "outcome": "unknown".
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let f: Fake = fake_node(
        membership("n2", 2, &[("n1", dead_port)]),
        Mode::Follower(crate::node::membership::id_of("n1")),
        Duration::from_millis(300),
    );
    let app = router(AppState::new(f.handle.clone()));
    let (s, h, v) = call(&app, "PUT", "/kv/k", r#"{"value":"x"}"#).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key(header::RETRY_AFTER));
    assert!(v.get("outcome").is_none(), "{v}");
}

/// A transport's view in which n2 is unreachable and sends a snapshot.
struct FakePeers(NodeId);

impl PeerInfo for FakePeers {
    fn peer_reachable(&self, id: NodeId) -> Option<bool> {
        (id == self.0).then_some(false)
    }
    fn learned_name(&self, _: NodeId) -> Option<String> {
        None
    }
    fn snapshot_receiving(&self) -> Option<ReceiveProgress> {
        Some(ReceiveProgress {
            from: self.0,
            index: 40,
            term: 2,
            bytes: 1234,
            chunks: 3,
        })
    }
}

#[tokio::test]
async fn status_shows_what_the_transport_knows() {
    let n2 = crate::node::membership::id_of("n2");
    let f: Fake = fake_node_with_peers(
        membership("n1", 1, &[("n2", 2), ("n3", 3)]),
        Mode::Follower(n2),
        Duration::from_millis(300),
        std::sync::Arc::new(FakePeers(n2)),
    );
    let app = router(AppState::new(f.handle.clone()));
    let (s, _, v) = call(&app, "GET", "/cluster/status", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["snapshot_receiving"]["from"], "n2", "{v}");
    assert_eq!(v["snapshot_receiving"]["index"], 40, "{v}");
    assert_eq!(v["snapshot_receiving"]["bytes"], 1234, "{v}");
    let peers = v["peers"].as_array().unwrap();
    let p2 = peers.iter().find(|p| p["id"] == "n2").unwrap();
    assert_eq!(p2["reachable"], false, "{v}");
    let p3 = peers.iter().find(|p| p["id"] == "n3").unwrap();
    assert!(p3["reachable"].is_null(), "{v}");
}

/// Paths as a client may really send them (raw, or encoded in any of the
/// ways URL encoders do) and the key each one names.
const AWKWARD_PATHS: &[(&str, &str)] = &[
    ("/kv/.", "."),
    ("/kv/%2E", "."),
    ("/kv/%2e", "."),
    ("/kv/..", ".."),
    ("/kv/%2E%2E", ".."),
    ("/kv/.%2e", ".."),
    ("/kv/...", "..."),
    ("/kv/./x", "./x"),
    ("/kv/a/../b", "a/../b"),
    ("/kv/a%2F..%2Fb", "a/../b"),
    ("/kv//lead", "/lead"),
    ("/kv/trail/", "trail/"),
    ("/kv/%2F", "/"),
    ("/kv/sp%20ace%20", "sp ace "),
    ("/kv/q%3Fx%3D1%26y", "q?x=1&y"),
    ("/kv/frag%23ment", "frag#ment"),
    ("/kv/100%25", "100%"),
    ("/kv/%2541", "%41"),
    ("/kv/a+b", "a+b"),
    ("/kv/%D0%BA%D0%BB%D1%8E%D1%87", "ключ"),
    ("/kv/%F0%9F%A6%80", "🦀"),
    ("/kv/nul%00byte", "nul\u{0}byte"),
];

#[tokio::test]
async fn awkward_keys_round_trip_through_the_router() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    for &(path, key) in AWKWARD_PATHS {
        let (s, _, v) = call(&app, "PUT", path, r#"{"value":"v"}"#).await;
        assert_eq!(s, StatusCode::OK, "PUT {path}: {v}");
        assert_eq!(v["key"], key, "PUT {path}");
        // Read back under the client's own encoding of the key.
        let encoded = format!("/kv/{}", crate::client::encode_key(key));
        let (s, _, v) = call(&app, "GET", &encoded, Body::empty()).await;
        assert_eq!(s, StatusCode::OK, "GET {encoded} (written as {path}): {v}");
        assert_eq!(
            (v["key"].as_str(), v["value"].as_str()),
            (Some(key), Some("v"))
        );
        let (s, _, v) = call(&app, "DELETE", path, Body::empty()).await;
        assert_eq!((s, v["key"].as_str()), (StatusCode::OK, Some(key)), "{v}");
    }
    assert!(f.reader.is_empty());
}

#[test]
fn any_key_round_trips_through_the_router() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let ch = prop_oneof![
        3 => prop::sample::select(vec!['.', '/', '%', '?', '#', ' ', '+', '&', '\\']),
        1 => any::<char>(),
    ];
    let keys = prop::collection::vec(ch, 1..300)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("1-1024 bytes", |k| k.len() <= crate::kv::MAX_KEY_BYTES);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&keys, |key| {
            let path = format!("/kv/{}", crate::client::encode_key(&key));
            let value = serde_json::to_string(&json!({ "value": key })).unwrap();
            let (s, _, v) = rt.block_on(call(&app, "PUT", &path, value));
            prop_assert_eq!(s, StatusCode::OK, "{}", v);
            prop_assert_eq!(v["key"].as_str(), Some(key.as_str()));
            let (s, _, v) = rt.block_on(call(&app, "GET", &path, Body::empty()));
            prop_assert_eq!(s, StatusCode::OK, "{}", v);
            prop_assert_eq!(v["value"].as_str(), Some(key.as_str()));
            let (s, _, _) = rt.block_on(call(&app, "DELETE", &path, Body::empty()));
            prop_assert_eq!(s, StatusCode::OK);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn malformed_percent_escapes_are_400_and_store_nothing() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    for path in ["/kv/bad%ZZ", "/kv/%", "/kv/%4", "/kv/ok%2", "/kv/%G0"] {
        for method in ["PUT", "GET", "DELETE"] {
            let (s, _, v) = call(&app, method, path, r#"{"value":"v"}"#).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
            let msg = v["error"].as_str().unwrap();
            assert!(msg.contains("malformed percent-escape"), "{msg}");
        }
    }
    let (s, _, v) = call(&app, "GET", "/kv?prefix=bad%Z", Body::empty()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(f.reader.is_empty(), "nothing stored");
}

#[tokio::test]
async fn cas_mismatch_names_the_expected_and_the_current_index() {
    let f = leader_fake(Mode::Leader);
    let app = router(AppState::new(f.handle.clone()));
    let (_, _, v) = call(&app, "PUT", "/kv/c", r#"{"value":"1"}"#).await;
    let current = v["index"].as_u64().unwrap();
    let wrong = current + 40;
    let (s, _, v) = call(
        &app,
        "PUT",
        &format!("/kv/c?cas={wrong}"),
        r#"{"value":"2"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        v["error"],
        format!("cas mismatch: expected index {wrong} (cas={wrong}), but the key's current index is {current}")
    );
    assert_eq!(
        (v["index"].as_u64(), v["expected"].as_u64()),
        (Some(current), Some(wrong))
    );
    let (_, _, v) = call(&app, "PUT", "/kv/c?cas=0", r#"{"value":"2"}"#).await;
    assert_eq!(
        v["error"],
        format!("cas mismatch: expected the key to be absent (cas=0), but the key's current index is {current}")
    );
    let (_, _, v) = call(&app, "DELETE", "/kv/absent?cas=3", Body::empty()).await;
    assert_eq!(
        v["error"],
        "cas mismatch: expected index 3 (cas=3), but the key does not exist"
    );
    assert_eq!(v["index"], 0);
}

#[tokio::test]
async fn followers_forward_dot_keys_unchanged() {
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
        Mode::Follower(crate::node::membership::id_of("n1")),
        Duration::from_secs(2),
    );
    serve(l1, router(AppState::new(leader.handle.clone()))).await;
    serve(l2, router(AppState::new(follower.handle.clone()))).await;
    // A client that sends paths as given (reqwest would fold `..` itself).
    let http = crate::http_client::HttpClient::new(Default::default());
    for (path, key) in [
        ("/kv/%2E%2E", ".."),
        ("/kv/..", ".."),
        ("/kv/.", "."),
        ("/kv/a/../b", "a/../b"),
    ] {
        let r = http
            .request(
                axum::http::Method::PUT,
                &format!("http://127.0.0.1:{p2}{path}"),
                Default::default(),
                Some(bytes::Bytes::from_static(br#"{"value":"fw"}"#)),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
        assert_eq!(r.headers["x-raftkv-forwarded"], "1");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["key"], key, "{path}");
        assert_eq!(leader.reader.value(key).unwrap(), "fw");
    }
    assert!(follower.reader.is_empty());
}
