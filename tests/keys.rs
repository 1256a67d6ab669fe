//! Awkward keys end to end on a real 3-node cluster: every 1–1024-byte
//! UTF-8 key (dots, slashes, `%`, `?`, `#`, spaces, unicode, control
//! characters) must round-trip through the Rust client (leader-routed and
//! through a follower that forwards), through raw HTTP requests whose path
//! is sent byte for byte (what `curl --path-as-is` does), and through the
//! CLI. Malformed percent-escapes are a 400 and store nothing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use hyper::header::HeaderMap;
use hyper::Method;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use raftkv::client::{encode_key, Client, ClientConfig, ClientError, Consistency};
use raftkv::http_client::{HttpClient, HttpClientConfig};
use serde_json::Value;

const FORM: Duration = Duration::from_secs(20);

/// Keys that URL handling likes to rewrite, split or reject.
fn table() -> Vec<String> {
    let mut keys: Vec<String> = [
        ".",
        "..",
        "...",
        "./x",
        "x/.",
        "x/..",
        "a/../b",
        "a/./b",
        "/",
        "//",
        "/leading",
        "trailing/",
        "/both/",
        " spaced key ",
        "100%",
        "%41",
        "%2E%2E",
        "%",
        "q?x=1&y=2",
        "frag#ment",
        "plus+sign",
        "semi;colon,comma=eq:colon@at!$'()*",
        "back\\slash",
        "ключ/значение",
        "🦀 crab",
        "-starts-with-dash",
        "~tilde",
        "tab\there",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("k".repeat(1024));
    keys.push("é".repeat(512)); // 1024 bytes, 512 characters
    keys
}

/// Random keys built mostly from the characters that cause trouble.
fn random_keys(n: usize) -> Vec<String> {
    use proptest::prelude::*;
    let ch = prop_oneof![
        4 => prop::sample::select(vec!['.', '/', '%', '?', '#', ' ', '+', '&', '=', '\\']),
        2 => prop::char::range('a', 'z'),
        1 => any::<char>(),
    ];
    let strategy = prop::collection::vec(ch, 1..24)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("1-1024 bytes", |k| !k.is_empty() && k.len() <= 1024);
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

fn client(nodes: Vec<String>) -> Client {
    Client::new(ClientConfig {
        total_timeout: Duration::from_secs(20),
        ..ClientConfig::with_nodes(nodes)
    })
    .unwrap()
}

async fn round_trip(c: &Client, key: &str, value: &str) {
    let w = c
        .put(key, value)
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    assert_eq!(w.key, key, "the node names the key it wrote");
    let item = c
        .get(key, Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
    assert_eq!(
        (item.key.as_str(), item.value.as_str(), item.index),
        (key, value, w.index),
        "{key:?}"
    );
    let listed = c
        .list_all(key, Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("list {key:?}: {e}"));
    assert_eq!(
        listed.first().map(|i| i.key.as_str()),
        Some(key),
        "a listing with the key as prefix starts with it"
    );
    let d = c
        .delete(key, Some(w.index))
        .await
        .unwrap_or_else(|e| panic!("delete {key:?}: {e}"));
    assert_eq!(d.key, key);
    assert_eq!(
        c.get(key, Consistency::Linearizable).await,
        Err(ClientError::NotFound { key: key.into() }),
        "{key:?} is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_round_trip_through_the_client_and_raw_http() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let follower = (leader + 1) % 3;
    let all = client((0..3).map(|i| c.url(i)).collect());
    let via_follower = client(vec![c.url(follower)]);

    for key in table() {
        round_trip(&all, &key, &format!("value of {key}")).await;
        round_trip(&via_follower, &key, "forwarded").await;
    }
    for key in random_keys(48) {
        round_trip(&all, &key, &key).await;
    }

    // Raw HTTP, path as sent (curl --path-as-is), on the follower: dot
    // segments raw and encoded name the same key, and nothing rewrites them.
    let http = HttpClient::new(HttpClientConfig::default());
    let send = |method: Method, node: usize, path: &str, body: Option<&str>| {
        let url = format!("{}{path}", c.url(node));
        let http = http.clone();
        let body = body.map(|b| bytes::Bytes::from(b.to_string()));
        async move {
            let r = http
                .request(method, &url, HeaderMap::new(), body, FORM)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.status.as_u16(), v)
        }
    };
    for (write_path, read_path, key) in [
        ("/kv/%2E%2E", "/kv/..", ".."),
        ("/kv/.", "/kv/%2e", "."),
        ("/kv/a/../b", "/kv/a%2F..%2Fb", "a/../b"),
        ("/kv/./x", "/kv/%2E%2Fx", "./x"),
    ] {
        let (s, v) = send(
            Method::PUT,
            follower,
            write_path,
            Some(r#"{"value":"raw"}"#),
        )
        .await;
        assert_eq!(
            (s, v["key"].as_str()),
            (200, Some(key)),
            "{write_path}: {v}"
        );
        for node in 0..3 {
            let (s, v) = send(Method::GET, node, read_path, None).await;
            assert_eq!(s, 200, "{read_path} on node {node}: {v}");
            assert_eq!(
                (v["key"].as_str(), v["value"].as_str()),
                (Some(key), Some("raw"))
            );
        }
        let (s, v) = send(Method::DELETE, follower, read_path, None).await;
        assert_eq!((s, v["key"].as_str()), (200, Some(key)), "{v}");
    }
    // The client encodes exactly the forms shown above.
    assert_eq!(encode_key(".."), "%2E%2E");
    assert_eq!(encode_key("a/../b"), "a%2F..%2Fb");

    // Malformed escapes: 400 naming the problem, on leader and follower
    // alike, and no key was stored under any spelling.
    for path in ["/kv/bad%ZZ", "/kv/%", "/kv/%4", "/kv/x%2"] {
        for node in [leader, follower] {
            let (s, v) = send(Method::PUT, node, path, Some(r#"{"value":"v"}"#)).await;
            assert_eq!(s, 400, "{path}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains("malformed percent-escape"), "{path}: {msg}");
        }
    }
    let (s, v) = send(Method::GET, leader, "/kv?limit=10000", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"], serde_json::json!([]), "nothing was stored: {v}");
}

/// Runs the CLI against `nodes`, bounded in time.
fn cli(nodes: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftkv"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFTKV_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .env("RAFTKV_NODES", nodes)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not finish in 40 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_round_trip_through_the_cli() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let nodes = (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",");
    let follower = c.url((leader + 1) % 3);
    for (i, key) in table().iter().enumerate() {
        // Half of them through a follower alone.
        let at = if i % 2 == 0 {
            nodes.as_str()
        } else {
            follower.as_str()
        };
        let (code, out, err) = cli(at, &["put", key, "v"]);
        assert_eq!(code, Some(0), "put {key:?}: {out}{err}");
        assert!(out.starts_with("OK (index "), "{out}");
        let (code, out, err) = cli(at, &["get", key]);
        assert_eq!(code, Some(0), "get {key:?}: {err}");
        assert_eq!(out, format!("{key} = v\n"));
        let (code, out, err) = cli(at, &["list", "--prefix", key]);
        assert_eq!(code, Some(0), "list {key:?}: {err}");
        assert!(out.starts_with(&format!("{key} = v\n")), "{key:?}: {out}");
        let (code, _, err) = cli(at, &["delete", key]);
        assert_eq!(code, Some(0), "delete {key:?}: {err}");
        let (code, _, err) = cli(at, &["get", key]);
        assert_eq!(code, Some(1), "{key:?} is gone: {err}");
    }
}
