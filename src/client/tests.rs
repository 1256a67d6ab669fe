//! Unit tests of the client, partly against mock nodes.

use super::*;

#[test]
fn node_lists_are_normalised() {
    assert_eq!(
        parse_nodes("127.0.0.1:8001, http://localhost:8002/ ,127.0.0.1:8001").unwrap(),
        vec!["http://127.0.0.1:8001", "http://localhost:8002"]
    );
    assert_eq!(normalize_url("http://h").unwrap(), "http://h:80");
    assert!(parse_nodes("").is_err());
    assert!(parse_nodes("https://h:1").is_err());
    assert!(parse_nodes("http://h:1/kv").is_err());
    assert!(parse_nodes("h:notaport").is_err());
}

#[test]
fn dot_keys_are_escaped_so_no_normaliser_folds_them() {
    assert_eq!(encode_key("."), "%2E");
    assert_eq!(encode_key(".."), "%2E%2E");
    assert_eq!(encode_key("..."), "...");
    assert_eq!(encode_key("a/../b"), "a%2F..%2Fb");
    assert_eq!(encode_key("./x"), ".%2Fx");
    assert_eq!(encode_key("50%"), "50%25");
    // Every key is one segment: no `/` survives.
    for key in [".", "..", "/", "a/b/", "//x", "?#"] {
        assert!(!encode_key(key).contains('/'), "{key}");
    }
}

#[test]
fn keys_are_escaped_as_one_segment() {
    assert_eq!(
        encode_component("a/b c?d%e+f&g"),
        "a%2Fb%20c%3Fd%25e%2Bf%26g"
    );
    assert_eq!(encode_component("plain-key_1.x~"), "plain-key_1.x~");
    assert_eq!(encode_component("ключ"), "%D0%BA%D0%BB%D1%8E%D1%87");
}

#[test]
fn bad_keys_are_refused_locally() {
    assert!(matches!(check_key(""), Err(ClientError::BadRequest(_))));
    assert!(check_key(&"k".repeat(1024)).is_ok());
    assert!(matches!(
        check_key(&"k".repeat(1025)),
        Err(ClientError::BadRequest(_))
    ));
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        url: "http://n:1".into(),
        status: StatusCode::from_u16(status).unwrap(),
        retry_after: None,
        body: Bytes::from(body.to_string()),
    }
}

#[test]
fn write_answers_map_to_typed_results() {
    assert_eq!(
        write_answer(
            "k",
            None,
            answer(200, r#"{"status":"committed","key":"k","index":7}"#)
        ),
        Ok(WriteResult {
            key: "k".into(),
            index: 7
        })
    );
    assert_eq!(
        write_answer(
            "k",
            Some(2),
            answer(412, r#"{"error":"cas","key":"k","index":4}"#)
        ),
        Err(ClientError::CasMismatch {
            key: "k".into(),
            expected: 2,
            current: 4
        })
    );
    assert_eq!(
        write_answer(
            "k",
            None,
            answer(404, r#"{"error":"key not found","key":"k"}"#)
        ),
        Err(ClientError::NotFound { key: "k".into() })
    );
    assert_eq!(
        write_answer("k", None, answer(413, r#"{"error":"body too large"}"#)),
        Err(ClientError::BadRequest("body too large".into()))
    );
    assert!(matches!(
        write_answer("k", None, answer(200, "not json")),
        Err(ClientError::InvalidResponse { .. })
    ));
    assert!(matches!(
        write_answer("k", None, answer(500, "oops")),
        Err(ClientError::Http { status: 500, .. })
    ));
}

#[test]
fn cas_mismatch_names_both_indexes() {
    let e = ClientError::CasMismatch {
        key: "lock".into(),
        expected: 17,
        current: 19,
    };
    assert_eq!(
        e.to_string(),
        "precondition failed: key lock was expected at index 17, but it is at index 19"
    );
    let absent = ClientError::CasMismatch {
        key: "lock".into(),
        expected: 0,
        current: 4,
    };
    assert_eq!(
        absent.to_string(),
        "precondition failed: key lock was expected at index 0 (absent), but it is at index 4"
    );
    let gone = ClientError::CasMismatch {
        key: "lock".into(),
        expected: 4,
        current: 0,
    };
    assert!(
        gone.to_string().ends_with("but it is absent (index 0)"),
        "{gone}"
    );
}

#[test]
fn give_up_messages_say_what_happened() {
    let t = Duration::from_millis(4000);
    let took = Duration::from_millis(4012);
    assert_eq!(
        give_up_message(3, took, t, Some("http://n:1: cannot connect (refused)")),
        "gave up after 3 attempt(s) in 4.0s; last error: http://n:1: cannot connect (refused)"
    );
    let none_sent = give_up_message(0, took, t, Some("http://n:1: timed out"));
    assert_eq!(
        none_sent,
        "no request could be sent within the 4000 ms timeout (4.0s); last error: http://n:1: timed out"
    );
    let nothing = give_up_message(0, took, t, None);
    assert!(
        nothing.contains("before any node could be tried"),
        "{nothing}"
    );
    for m in [none_sent, nothing] {
        assert!(!m.contains("attempt(s)"), "{m}");
    }
}

/// Ports from listeners bound and dropped: nothing listens there.
fn dead_nodes(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port()))
        .collect()
}

#[tokio::test]
async fn all_nodes_down_retries_until_the_deadline() {
    let timeout = Duration::from_millis(1500);
    let client = Client::new(ClientConfig {
        total_timeout: timeout,
        ..ClientConfig::with_nodes(dead_nodes(2))
    })
    .unwrap();
    let started = Instant::now();
    let err = client.put("k", "v").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            ClientError::Unavailable {
                outcome_unknown: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "unavailable");
    // It kept trying (a restarting cluster comes back within the budget),
    // and stopped at the deadline, not long after.
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
    let msg = err.to_string();
    let attempts: u32 = msg
        .split("gave up after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(attempts >= 6, "backoff rounds until the deadline: {msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
}

#[tokio::test]
async fn discovery_that_eats_the_budget_is_reported_truthfully() {
    // A node that accepts connections but never answers: leader discovery
    // waits on it until the deadline, and no request is ever sent.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let client = Client::new(ClientConfig {
        total_timeout: Duration::from_millis(600),
        ..ClientConfig::with_nodes(vec![url.clone()])
    })
    .unwrap();
    let started = Instant::now();
    let err = client
        .get("k", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the deadline"
    );
    let msg = err.to_string();
    assert!(!msg.contains("no attempt made"), "{msg}");
    assert!(
        msg.contains("no request could be sent within the 600 ms timeout"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{url}: timed out")), "{msg}");
    drop(silent);
}

/// What a mock node answers: (status, JSON body) for a method and a path
/// with query; `n` is how many requests this node had seen before.
type Script = dyn Fn(&str, &str, usize) -> (u16, String) + Send + Sync;

/// A scripted HTTP node on a loopback port that records every request.
struct MockNode {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockNode {
    async fn start(
        script: impl Fn(&str, &str, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log2 = log.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let script = script.clone();
            let log = log2.clone();
            async move {
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(format!("{method} {uri}"));
                    log.len() - 1
                };
                let (status, body) = script(&method, &uri, n);
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockNode { url, log, task }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

impl Drop for MockNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn leader_body(id: &str, url: &str) -> (u16, String) {
    (
        200,
        format!(r#"{{"leader_id":"{id}","leader_url":"{url}","term":2}}"#),
    )
}

fn committed(index: u64) -> (u16, String) {
    (
        200,
        format!(r#"{{"status":"committed","key":"k","index":{index}}}"#),
    )
}

fn fast_client(nodes: Vec<String>) -> Client {
    Client::new(ClientConfig {
        total_timeout: Duration::from_secs(5),
        ..ClientConfig::with_nodes(nodes)
    })
    .unwrap()
}

#[tokio::test]
async fn writes_go_straight_to_the_discovered_leader() {
    let leader = MockNode::start(|m, p, _| match (m, p) {
        ("PUT", "/kv/k") => committed(9),
        ("GET", "/cluster/leader") => (200, String::new()), // replaced below
        _ => (404, r#"{"error":"unknown route"}"#.into()),
    })
    .await;
    let leader_url = leader.url.clone();
    let follower = MockNode::start(move |m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => leader_body("node-2", &leader_url),
        _ => (500, r#"{"error":"the follower must not be used"}"#.into()),
    })
    .await;
    let client = fast_client(vec![follower.url.clone(), leader.url.clone()]);
    for _ in 0..3 {
        assert_eq!(client.put("k", "v").await.unwrap().index, 9);
    }
    assert_eq!(leader.count("PUT /kv/k"), 3);
    assert_eq!(follower.count("PUT"), 0);
    // Discovery ran once for the three puts.
    assert_eq!(follower.count("GET /cluster/leader"), 1);
}

#[tokio::test]
async fn a_503_moves_the_request_to_another_node() {
    let no_leader = || (503, r#"{"error":"no leader known"}"#.to_string());
    let a = MockNode::start(move |_, _, _| no_leader()).await;
    let b = MockNode::start(|m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => (503, r#"{"error":"no leader known"}"#.into()),
        ("GET", "/kv/k") => (200, r#"{"key":"k","value":"v","index":4}"#.into()),
        _ => (404, "{}".into()),
    })
    .await;
    let client = fast_client(vec![a.url.clone(), b.url.clone()]);
    let item = client.get("k", Consistency::Linearizable).await.unwrap();
    assert_eq!((item.value.as_str(), item.index), ("v", 4));
    assert!(b.count("GET /kv/k") >= 1);
}

#[tokio::test]
async fn unknown_outcome_is_retried_for_puts_only() {
    // The first write attempt "times out" on the server (503 with
    // outcome unknown); later ones succeed.
    let writes = Arc::new(AtomicUsize::new(0));
    let w = writes.clone();
    let node = MockNode::start(move |m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => (503, r#"{"error":"no leader"}"#.into()),
        _ if w.fetch_add(1, Ordering::SeqCst) == 0 => (
            503,
            r#"{"error":"not committed in time","outcome":"unknown"}"#.into(),
        ),
        _ => committed(12),
    })
    .await;
    let client = fast_client(vec![node.url.clone()]);

    // A plain put is repeated: repeating it cannot change the outcome.
    assert_eq!(client.put("k", "v").await.unwrap().index, 12);
    assert_eq!(node.count("PUT /kv/k"), 2);

    // A delete is not: it might have been applied.
    writes.store(0, Ordering::SeqCst);
    let err = client.delete("k", None).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.kind(), "outcome_unknown");
    assert_eq!(node.count("DELETE"), 1);

    // A CAS put neither.
    writes.store(0, Ordering::SeqCst);
    let err = client.put_cas("k", "v", Some(3)).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(node.count("PUT /kv/k?cas=3"), 1);
}

#[tokio::test]
async fn cas_mismatch_and_not_found_are_typed() {
    let node = MockNode::start(|m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => (503, r#"{"error":"no leader"}"#.into()),
        ("PUT", "/kv/a%2Fb?cas=3") => (
            412,
            r#"{"error":"cas mismatch","key":"a/b","index":8}"#.into(),
        ),
        ("DELETE", "/kv/missing") => (404, r#"{"error":"key not found","key":"missing"}"#.into()),
        ("GET", "/kv/missing?consistency=stale") => {
            (404, r#"{"error":"key not found","key":"missing"}"#.into())
        }
        _ => (400, r#"{"error":"unexpected request"}"#.into()),
    })
    .await;
    let client = fast_client(vec![node.url.clone()]);
    assert_eq!(
        client.put_cas("a/b", "v", Some(3)).await,
        Err(ClientError::CasMismatch {
            key: "a/b".into(),
            expected: 3,
            current: 8
        })
    );
    assert_eq!(
        client.delete("missing", None).await,
        Err(ClientError::NotFound {
            key: "missing".into()
        })
    );
    assert_eq!(
        client.get("missing", Consistency::Stale).await,
        Err(ClientError::NotFound {
            key: "missing".into()
        })
    );
    assert_eq!(
        client.put("x", "v").await,
        Err(ClientError::BadRequest("unexpected request".into()))
    );
}

#[tokio::test]
async fn unreachable_leader_url_falls_back_to_forwarding() {
    // The leader advertises a name that does not resolve here (as a
    // container name would not, seen from the host).
    let node = MockNode::start(|m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => {
            leader_body("node-1", "http://raftkv-no-such-host.invalid:8001")
        }
        ("PUT", "/kv/k") => committed(3),
        _ => (404, "{}".into()),
    })
    .await;
    let client = fast_client(vec![node.url.clone()]);
    assert_eq!(client.put("k", "v").await.unwrap().index, 3);
    assert_eq!(client.put("k", "v").await.unwrap().index, 3);
    assert_eq!(node.count("GET /cluster/leader"), 1);
}

#[tokio::test]
async fn list_all_pages_through_with_after() {
    let node = MockNode::start(|m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => (503, r#"{"error":"no leader"}"#.into()),
        ("GET", p) if p == format!("/kv?prefix=u%2F&limit={LIST_PAGE_SIZE}") => (
            200,
            r#"{"items":[{"key":"u/1","value":"a","index":1},{"key":"u/2","value":"b","index":2}],"more":true}"#.into(),
        ),
        ("GET", p) if p == format!("/kv?prefix=u%2F&limit={LIST_PAGE_SIZE}&after=u%2F2") => (
            200,
            r#"{"items":[{"key":"u/3","value":"c","index":3}],"more":false}"#.into(),
        ),
        _ => (400, r#"{"error":"unexpected request"}"#.into()),
    })
    .await;
    let client = fast_client(vec![node.url.clone()]);
    let items = client
        .list_all("u/", Consistency::Linearizable)
        .await
        .unwrap();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, vec!["u/1", "u/2", "u/3"]);
}

#[tokio::test]
async fn a_listing_that_does_not_advance_is_an_error() {
    let node = MockNode::start(|m, p, _| match (m, p) {
        ("GET", "/cluster/leader") => (503, r#"{"error":"no leader"}"#.into()),
        _ => (
            200,
            r#"{"items":[{"key":"a","value":"x","index":1}],"more":true}"#.into(),
        ),
    })
    .await;
    let client = fast_client(vec![node.url.clone()]);
    let err = client
        .list_all("", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cluster_without_leader_gives_up_at_the_deadline() {
    let node = MockNode::start(|_, _, _| (503, r#"{"error":"no leader known"}"#.into())).await;
    let client = Client::new(ClientConfig {
        total_timeout: Duration::from_millis(800),
        ..ClientConfig::with_nodes(vec![node.url.clone()])
    })
    .unwrap();
    let started = Instant::now();
    let err = client.leader().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unavailable {
                outcome_unknown: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("no leader known"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // It retried, with backoff, rather than hammering the node.
    let n = node.count("GET /cluster/leader");
    assert!((2..=20).contains(&n), "{n} attempts");
}
