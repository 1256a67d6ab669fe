//! Tests of the v3 client: query strings checked against the server's own
//! parsers, the SSE parser against the server's own writers, and every
//! call against a mock node that serves the JSON API from a
//! [`MemMvcc`] (the reference model) with the server's serde types, so
//! the client reads exactly what a node writes and its answers can be
//! compared with the model's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;

use super::watch::{parse_sse_message, SseParser};
use super::*;
use crate::client::{ClientConfig, WatchMessage, WatchOptions};
use crate::kv::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, Event, KeyRange, MemMvcc,
    PutRequest, Revisioned,
};
use crate::server::json::{
    delete_query, key_read_request, kv_error, parse_compact_body, parse_txn_body, sse_canceled,
    sse_events, sse_progress, JsonDeleteReply, JsonRecord, JsonTxnResponse, JsonWatchBatch,
    RangeContext, RangeQuery, WatchQuery,
};

// ------------------------------------------------------ query strings ---

fn server_range(path: &str) -> RangeRequest {
    let q = path.strip_prefix("/kv?").expect("a GET /kv path");
    RangeQuery::from_query(Some(q))
        .and_then(|r| r.to_request(RangeContext::List))
        .unwrap_or_else(|e| panic!("the server refuses {path}: {e}"))
}

#[test]
fn range_queries_mean_to_the_server_what_the_request_says() {
    let full = RangeRequest {
        key: b"a&b=c d+%".to_vec(),
        range_end: b"z\xff".to_vec(),
        limit: 7,
        revision: 12,
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Mod,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 2,
        max_mod_revision: 9,
        min_create_revision: 3,
        max_create_revision: 8,
    };
    assert_eq!(server_range(&range_path(&full, None).unwrap()), full);
    for sort_target in [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Value,
    ] {
        for sort_order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
            let r = RangeRequest {
                sort_target,
                sort_order,
                ..full.clone()
            };
            assert_eq!(server_range(&range_path(&r, None).unwrap()), r);
        }
    }
    // Every key; from a key on; up to a key (binary and NUL bytes too).
    for (key, end) in [
        (vec![0], vec![0]),
        (b"m".to_vec(), vec![0]),
        (vec![0, 1], b"q\x00".to_vec()),
    ] {
        let r = RangeRequest {
            key,
            range_end: end,
            limit: 5,
            ..RangeRequest::default()
        };
        assert_eq!(server_range(&range_path(&r, None).unwrap()), r);
    }
    // A single key is the range [k, k\0), which holds only k.
    let one = RangeRequest {
        key: b"k".to_vec(),
        limit: 1,
        ..RangeRequest::default()
    };
    let parsed = server_range(&range_path(&one, None).unwrap());
    assert_eq!(
        (parsed.key, parsed.range_end),
        (b"k".to_vec(), b"k\0".to_vec())
    );
    // limit 0 leaves the page size to the server; `after` continues past.
    let r = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        ..RangeRequest::default()
    };
    let parsed = server_range(&range_path(&r, Some(b"a/2")).unwrap());
    assert_eq!(parsed.key, b"a/2\0".to_vec());
    assert_eq!(parsed.limit, 1000);
    assert!(matches!(
        range_path(&RangeRequest::default(), None),
        Err(ClientError::BadRequest(_))
    ));
}

#[test]
fn delete_queries_mean_to_the_server_what_the_request_says() {
    for (key, end) in [
        (b"tmp/".to_vec(), b"tmp0".to_vec()),
        (vec![0], vec![0]),
        (b"x y".to_vec(), vec![0]),
    ] {
        for prev_kv in [false, true] {
            let d = DeleteRangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                prev_kv,
            };
            let path = delete_path(&d).unwrap();
            let q = path.strip_prefix("/kv?").unwrap();
            assert_eq!(delete_query(Some(q)).unwrap(), d, "{path}");
        }
    }
}

#[test]
fn watch_queries_mean_to_the_server_what_the_options_say() {
    let cases = [
        WatchOptions::key("a/b"),
        WatchOptions::prefix("user/"),
        WatchOptions::prefix(""),
        WatchOptions {
            key: b"k".to_vec(),
            range_end: vec![0],
            start_revision: 42,
            prev_kv: true,
            no_put: true,
            no_delete: true,
            progress_notify: true,
        },
    ];
    for o in cases {
        let q = o.query(Some(Duration::from_millis(1500))).unwrap();
        let w = WatchQuery::from_query(Some(&q)).unwrap();
        assert_eq!(
            (
                w.key,
                w.range_end,
                w.start_revision,
                w.prev_kv,
                w.no_put,
                w.no_delete,
                w.progress_notify,
                w.wait
            ),
            (
                o.key.clone(),
                o.range_end.clone(),
                o.start_revision,
                o.prev_kv,
                o.no_put,
                o.no_delete,
                o.progress_notify,
                Duration::from_millis(1500)
            ),
            "{q}"
        );
    }
}

#[test]
fn read_only_txns_are_told_apart() {
    let get = RequestOp::Range(RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    });
    let put = RequestOp::Put(PutRequest {
        key: b"k".to_vec(),
        ..PutRequest::default()
    });
    let t = |success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
        compare: vec![],
        success,
        failure,
    };
    assert!(txn_is_read_only(&t(vec![get.clone()], vec![get.clone()])));
    assert!(!txn_is_read_only(&t(vec![get.clone()], vec![put.clone()])));
    let nested = RequestOp::Txn(t(vec![], vec![put]));
    assert!(!txn_is_read_only(&t(vec![nested], vec![])));
}

// ----------------------------------------------------------------- SSE ---

fn put_event(key: &str, value: &str, rev: i64, prev: Option<&str>) -> Event {
    Event {
        kind: crate::kv::EventKind::Put,
        kv: KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: 2,
            mod_revision: rev,
            version: 1,
            lease: 0,
        },
        prev_kv: prev.map(|p| KeyValue {
            key: key.as_bytes().to_vec(),
            value: p.as_bytes().to_vec(),
            create_revision: 2,
            mod_revision: rev - 1,
            version: 1,
            lease: 0,
        }),
    }
}

#[test]
fn sse_messages_parse_back_from_any_chunking() {
    let events = vec![
        put_event("a", "line1\nline2", 5, Some("old")),
        Event {
            kind: crate::kv::EventKind::Delete,
            kv: Event::delete_marker(vec![0xff, 0], 5),
            prev_kv: None,
        },
    ];
    let text = format!(
        ": keep-alive comment\n\n{}{}{}",
        sse_events(5, &events),
        sse_progress(9),
        sse_canceled("compacted", 3)
    );
    let expected = vec![
        WatchMessage::Events(super::watch::WatchBatch {
            revision: 5,
            events: events.clone(),
        }),
        WatchMessage::Progress { revision: 9 },
        WatchMessage::Canceled {
            reason: "compacted".into(),
            compact_revision: Some(3),
        },
    ];
    for chunk in [1, 2, 7, text.len()] {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for piece in text.as_bytes().chunks(chunk) {
            p.push(piece);
            while let Some(m) = p.next_message() {
                got.push(parse_sse_message(&m).unwrap().unwrap());
            }
        }
        assert_eq!(got, expected, "chunks of {chunk}");
    }
    // CRLF line ends, multi-line data, unknown events skipped.
    let mut p = SseParser::default();
    p.push(b"event: hello\r\ndata: x\r\n\r\nid: 7\r\nevent: progress\r\ndata: {\"revision\":\r\ndata: 7}\r\n\r\n");
    let m = p.next_message().unwrap();
    assert_eq!(parse_sse_message(&m), Ok(None));
    let m = p.next_message().unwrap();
    assert_eq!(m.id.as_deref(), Some("7"));
    assert_eq!(
        parse_sse_message(&m),
        Ok(Some(WatchMessage::Progress { revision: 7 }))
    );
    assert!(p.next_message().is_none());
    let bad = super::watch::SseMessage {
        id: None,
        event: "events".into(),
        data: "{not json".into(),
    };
    assert!(parse_sse_message(&bad).is_err());
}

// ------------------------------------------------------------ mock node ---

/// A node serving the JSON API from a [`MemMvcc`].
struct MemNode {
    url: String,
    state: Arc<Mutex<MemMvcc>>,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MemNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<MemMvcc>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Each applied revision's events, for live watches.
    changes: tokio::sync::broadcast::Sender<Vec<Event>>,
}

fn header(rev: i64) -> crate::server::json::JsonHeader {
    crate::server::json::JsonHeader {
        cluster_id: 7305931406312154153,
        member_id: 1,
        revision: rev,
        raft_term: 2,
    }
}

fn json(status: StatusCode, v: impl serde::Serialize) -> Response {
    (status, axum::Json(serde_json::to_value(v).unwrap())).into_response()
}

impl Shared {
    /// Applies a write; the answer or the refusal as the server maps it.
    fn apply(&self, cmd: Command) -> Result<Revisioned<CommandResponse>, KvError> {
        let applied = self.state.lock().unwrap().apply(&cmd);
        if !applied.events.is_empty() {
            let _ = self.changes.send(applied.events.clone());
        }
        applied.answer
    }

    fn handle(&self, method: &str, uri: &hyper::Uri, body: &[u8], sse: bool) -> Response {
        let path = uri.path();
        let query = uri.query();
        let bad = |e: crate::server::json::JsonError| {
            crate::server::error::ApiError::from(e).into_response()
        };
        match (method, path) {
            ("GET", "/kv") => {
                let req = match RangeQuery::from_query(query)
                    .and_then(|q| q.to_request(RangeContext::List))
                {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                let state = self.state.lock().unwrap();
                match state.range(&req) {
                    Ok(r) => json(
                        StatusCode::OK,
                        crate::server::json::JsonRangeReply {
                            range: (&r.body).into(),
                            header: header(r.revision),
                        },
                    ),
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            ("DELETE", "/kv") => {
                let req = match delete_query(query) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                match self.apply(Command::DeleteRange(req)) {
                    Ok(Revisioned {
                        revision,
                        body: CommandResponse::DeleteRange(d),
                    }) => json(
                        StatusCode::OK,
                        JsonDeleteReply::new(&d, revision, header(revision)),
                    ),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            ("POST", "/txn") => {
                let req = match parse_txn_body(body) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                match self.apply(Command::Txn(req)) {
                    Ok(Revisioned {
                        revision,
                        body: CommandResponse::Txn(t),
                    }) => json(
                        StatusCode::OK,
                        crate::server::json::JsonTxnReply {
                            txn: (&t).into(),
                            index: revision,
                            header: header(revision),
                        },
                    ),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            ("POST", "/compact") => {
                let req = match parse_compact_body(body) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                let rev = req.revision;
                match self.apply(Command::Compact(req)) {
                    Ok(r) => json(
                        StatusCode::OK,
                        crate::server::json::JsonCompactReply {
                            compact_revision: rev,
                            header: header(r.revision),
                        },
                    ),
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            ("GET", "/watch") => match WatchQuery::from_query(query) {
                Ok(w) if sse => self.watch_sse(w),
                Ok(w) => self.watch_poll(w),
                Err(e) => bad(e),
            },
            ("PUT", p) if p.starts_with("/kv/") => {
                let key = crate::server::input::key_from_path(p).unwrap();
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                let value = v["value"].as_str().unwrap().as_bytes().to_vec();
                match self.apply(Command::Put(PutRequest {
                    key: key.clone().into_bytes(),
                    value,
                    ..PutRequest::default()
                })) {
                    Ok(r) => json(
                        StatusCode::OK,
                        serde_json::json!({"status": "committed", "key": key, "index": r.revision}),
                    ),
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            ("GET", p) if p.starts_with("/kv/") => {
                let key = crate::server::input::key_from_path(p).unwrap();
                let req = match key_read_request(key.as_bytes(), query) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                let state = self.state.lock().unwrap();
                match state.range(&req) {
                    Ok(r) => match r.body.kvs.first() {
                        Some(kv) => json(
                            StatusCode::OK,
                            crate::server::json::JsonGetReply {
                                record: JsonRecord::from(kv),
                                header: header(r.revision),
                            },
                        ),
                        None => crate::server::error::ApiError::key_not_found(&key).into_response(),
                    },
                    Err(e) => kv_error(&e).into_response(),
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "no route"}),
            ),
        }
    }

    /// Past events of `w` from `from` on, grouped by revision.
    fn history(&self, w: &WatchQuery, from: i64) -> Result<Vec<(i64, Vec<Event>)>, KvError> {
        let state = self.state.lock().unwrap();
        let events = state.events(from.max(1), KeyRange::new(&w.key, &w.range_end), usize::MAX)?;
        Ok(group(&w.select(&events)))
    }

    fn watch_sse(&self, w: WatchQuery) -> Response {
        let live = self.changes.subscribe();
        let current = self.state.lock().unwrap().revision();
        let start = if w.start_revision == 0 {
            current + 1
        } else {
            w.start_revision
        };
        let mut first = String::new();
        match self.history(&w, start) {
            Ok(batches) => {
                for (rev, events) in batches {
                    first.push_str(&sse_events(rev, &events));
                }
            }
            Err(KvError::Compacted { compact_revision }) => {
                first.push_str(&sse_canceled("compacted", compact_revision));
                return sse_response(Body::from(first));
            }
            Err(e) => return kv_error(&e).into_response(),
        }
        first.push_str(&sse_progress(current));
        let stream = futures::stream::unfold(
            (Some(first), live, w, current),
            |(first, mut live, w, seen)| async move {
                if let Some(f) = first {
                    return Some((Ok::<_, std::io::Error>(f), (None, live, w, seen)));
                }
                loop {
                    let events = live.recv().await.ok()?;
                    let rev = events[0].kv.mod_revision;
                    if rev <= seen {
                        continue;
                    }
                    let selected = w.select(&events);
                    if selected.is_empty() {
                        continue;
                    }
                    return Some((Ok(sse_events(rev, &selected)), (None, live, w, rev)));
                }
            },
        );
        sse_response(Body::from_stream(stream))
    }

    fn watch_poll(&self, w: WatchQuery) -> Response {
        let start = w.start_revision;
        match self.history(&w, start) {
            Ok(batches) => {
                let rev = self.state.lock().unwrap().revision();
                let batch = match batches.into_iter().next() {
                    Some((r, events)) => JsonWatchBatch::new(r, &events),
                    None => JsonWatchBatch::new(rev, &[]),
                };
                json(StatusCode::OK, batch)
            }
            Err(e) => kv_error(&e).into_response(),
        }
    }
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// Events grouped by revision, in order.
fn group(events: &[Event]) -> Vec<(i64, Vec<Event>)> {
    let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some((r, v)) if *r == e.kv.mod_revision => v.push(e.clone()),
            _ => out.push((e.kv.mod_revision, vec![e.clone()])),
        }
    }
    out
}

impl MemNode {
    async fn start() -> MemNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let shared = Shared {
            state: Arc::new(Mutex::new(MemMvcc::new())),
            log: Arc::new(Mutex::new(Vec::new())),
            changes,
        };
        let s2 = shared.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let shared = s2.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let sse = parts
                    .headers
                    .get("accept")
                    .is_some_and(|v| v.as_bytes() == b"text/event-stream");
                shared
                    .log
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", parts.method, parts.uri));
                shared.handle(parts.method.as_str(), &parts.uri, &body, sse)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MemNode {
            url,
            state: shared.state,
            log: shared.log,
            task,
        }
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig {
            total_timeout: Duration::from_secs(5),
            routing: crate::client::Routing::RoundRobin,
            ..ClientConfig::with_nodes(vec![self.url.clone()])
        })
        .unwrap()
    }

    fn model(&self) -> MemMvcc {
        self.state.lock().unwrap().clone()
    }
}

async fn seeded() -> (MemNode, Client) {
    let node = MemNode::start().await;
    let c = node.client();
    for (k, v) in [
        ("user/1", "ann"),
        ("user/2", "bob"),
        ("user/3", "cy"),
        ("a", "1"),
        ("user/2", "bob2"),
        ("z", "26"),
    ] {
        c.put(k, v).await.unwrap();
    }
    (node, c)
}

fn prefix(p: &str) -> RangeRequest {
    RangeRequest {
        key: p.as_bytes().to_vec(),
        range_end: crate::kv::prefix_end(p.as_bytes()),
        ..RangeRequest::default()
    }
}

#[tokio::test]
async fn ranges_answer_what_the_model_answers() {
    let (node, c) = seeded().await;
    let model = node.model();
    let cases = vec![
        prefix("user/"),
        RangeRequest {
            limit: 2,
            ..prefix("user/")
        },
        RangeRequest {
            revision: 3,
            ..prefix("user/")
        },
        RangeRequest {
            keys_only: true,
            ..prefix("user/")
        },
        RangeRequest {
            count_only: true,
            ..prefix("user/")
        },
        RangeRequest {
            sort_target: SortTarget::Mod,
            sort_order: SortOrder::Descend,
            limit: 3,
            key: vec![0],
            range_end: vec![0],
            ..RangeRequest::default()
        },
        RangeRequest {
            min_mod_revision: 4,
            max_create_revision: 5,
            key: vec![0],
            range_end: vec![0],
            ..RangeRequest::default()
        },
        RangeRequest {
            key: b"a".to_vec(),
            range_end: b"user/3".to_vec(),
            ..RangeRequest::default()
        },
    ];
    for req in cases {
        let got = c.range(&req).await.unwrap();
        let want = model.range(&req).unwrap();
        assert_eq!(got.body, want.body, "{req:?}");
        assert_eq!(got.header.revision, want.revision);
        assert_eq!(got.header.raft_term, 2);
        assert_eq!(got.header.cluster_id, 7305931406312154153);
    }
    // A compacted or future revision is the data model's refusal.
    assert_eq!(
        c.range(&RangeRequest {
            revision: 99,
            ..prefix("user/")
        })
        .await
        .unwrap_err(),
        ClientError::Kv(KvError::FutureRevision)
    );
}

#[tokio::test]
async fn a_paged_listing_reads_every_page_at_the_first_pages_revision() {
    let (node, c) = seeded().await;
    let req = RangeRequest {
        limit: 1,
        ..prefix("user/")
    };
    let before = node.model().range(&prefix("user/")).unwrap();
    let all = c.range_all(&req).await.unwrap();
    assert_eq!(all.body.kvs, before.body.kvs);
    assert_eq!(all.body.count, 3);
    assert!(!all.body.more);
    let log = node.log.lock().unwrap().clone();
    let pages: Vec<&String> = log.iter().filter(|l| l.starts_with("GET /kv?")).collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    let rev = all.header.revision;
    for p in &pages[1..] {
        assert!(p.contains(&format!("revision={rev}")), "{p}");
        assert!(p.contains("after="), "{p}");
    }
    // Sorting by anything but the key cannot be paged.
    assert!(matches!(
        c.range_all(&RangeRequest {
            sort_target: SortTarget::Mod,
            ..req
        })
        .await,
        Err(ClientError::BadRequest(_))
    ));
}

#[tokio::test]
async fn get_at_reads_history_and_reports_compaction() {
    let (node, c) = seeded().await;
    // user/2 was "bob" at revision 3 and "bob2" from revision 6.
    let old = c
        .get_at(b"user/2", 3, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(old.body.value, b"bob");
    assert_eq!(old.body.mod_revision, 3);
    let now = c.get_at(b"user/2", 0, Consistency::Stale).await.unwrap();
    assert_eq!(
        (now.body.value.as_slice(), now.body.version),
        (&b"bob2"[..], 2)
    );
    assert_eq!(now.header.revision, node.model().revision());
    assert_eq!(
        c.get_at(b"z", 3, Consistency::Linearizable)
            .await
            .unwrap_err(),
        ClientError::NotFound { key: "z".into() }
    );
    let compacted = c.compact(5, false).await.unwrap();
    assert_eq!(compacted.body, 5);
    let err = c
        .get_at(b"user/2", 3, Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Kv(KvError::Compacted {
            compact_revision: 5
        })
    );
    assert!(err
        .to_string()
        .contains("required revision has been compacted"));
    assert_eq!(err.kind(), "compacted");
    // Compacting at or below the compact revision again is refused too.
    assert!(matches!(
        c.compact(4, true).await,
        Err(ClientError::Kv(KvError::Compacted { .. }))
    ));
    assert!(matches!(
        c.compact(-1, false).await,
        Err(ClientError::Kv(KvError::NegativeField { .. }))
    ));
}

#[tokio::test]
async fn delete_range_removes_the_range_in_one_revision() {
    let (node, c) = seeded().await;
    let before = node.model();
    let d = c
        .delete_range(&DeleteRangeRequest {
            prev_kv: true,
            ..DeleteRangeRequest {
                key: b"user/".to_vec(),
                range_end: b"user0".to_vec(),
                prev_kv: false,
            }
        })
        .await
        .unwrap();
    assert_eq!(d.body.deleted, 3);
    assert_eq!(
        d.body.prev_kvs,
        before.range(&prefix("user/")).unwrap().body.kvs
    );
    assert_eq!(d.header.revision, before.revision() + 1);
    let after = node.model();
    assert_eq!(after.range(&prefix("user/")).unwrap().body.count, 0);
    // Nothing to delete: not an error, no new revision.
    let none = c
        .delete_range(&DeleteRangeRequest {
            key: b"user/".to_vec(),
            range_end: b"user0".to_vec(),
            prev_kv: false,
        })
        .await
        .unwrap();
    assert_eq!(none.body.deleted, 0);
    assert_eq!(none.header.revision, after.revision());
}

#[tokio::test]
async fn txn_answers_match_the_model_on_both_branches() {
    let (node, c) = seeded().await;
    let rev_of_a = node
        .model()
        .range(&RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        })
        .unwrap()
        .body
        .kvs[0]
        .mod_revision;
    let txn = |expected: i64| TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            range_end: vec![],
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(expected),
        }],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"a".to_vec(),
                value: b"2".to_vec(),
                prev_kv: true,
                ..PutRequest::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"z".to_vec(),
                range_end: vec![],
                prev_kv: true,
            }),
            RequestOp::Range(prefix("user/")),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    ..RangeRequest::default()
                })],
                failure: vec![],
            }),
        ],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        })],
    };
    for (expected, succeeded) in [(rev_of_a + 100, false), (rev_of_a, true)] {
        let req = txn(expected);
        let mut oracle = node.model();
        let want = match oracle.apply(&Command::Txn(req.clone())).answer.unwrap() {
            Revisioned {
                revision,
                body: CommandResponse::Txn(t),
            } => (revision, t),
            other => panic!("{other:?}"),
        };
        let got = c.txn(&req).await.unwrap();
        assert_eq!(got.body.succeeded, succeeded);
        // The JSON has no per-op revisions: compare what it carries.
        assert_eq!(
            JsonTxnResponse::from(&got.body),
            JsonTxnResponse::from(&want.1)
        );
        assert_eq!(got.header.revision, want.0);
        assert_eq!(node.model(), oracle);
    }
    // A refused txn (two puts of one key) is the model's error.
    let dup = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"1".to_vec(),
                ..PutRequest::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"2".to_vec(),
                ..PutRequest::default()
            }),
        ],
        failure: vec![],
    };
    assert_eq!(
        c.txn(&dup).await.unwrap_err(),
        ClientError::Kv(KvError::DuplicateKey)
    );
}

/// Reads messages until `n` events have arrived (bounded by a timeout).
async fn events_of(stream: &mut crate::client::WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < n {
            match stream.next().await {
                Some(Ok(WatchMessage::Events(b))) => {
                    assert!(b.events.iter().all(|e| e.kv.mod_revision == b.revision));
                    out.extend(b.events)
                }
                Some(Ok(_)) => {}
                other => panic!("watch ended early: {other:?}"),
            }
        }
    })
    .await
    .expect("the events arrive in time");
    out
}

#[tokio::test]
async fn watch_streams_history_then_live_changes() {
    let (node, c) = seeded().await;
    let mut opts = WatchOptions::prefix("user/");
    opts.start_revision = 1;
    opts.prev_kv = true;
    let mut stream = c.watch(&opts).await.unwrap();
    let past = events_of(&mut stream, 4).await;
    let model = node.model();
    let want = model
        .events(1, KeyRange::new(&opts.key, &opts.range_end), usize::MAX)
        .unwrap();
    assert_eq!(past, want);
    // Live: a put and a range delete made by another call.
    c.put("user/9", "new").await.unwrap();
    c.put("other", "x").await.unwrap();
    c.delete_range(&DeleteRangeRequest {
        key: b"user/1".to_vec(),
        range_end: vec![],
        prev_kv: false,
    })
    .await
    .unwrap();
    let live = events_of(&mut stream, 2).await;
    let model = node.model();
    let want = model
        .events(
            want.last().unwrap().kv.mod_revision + 1,
            KeyRange::new(&opts.key, &opts.range_end),
            usize::MAX,
        )
        .unwrap();
    assert_eq!(live, want);
    assert_eq!(stream.last_revision(), model.revision());
}

#[tokio::test]
async fn a_watch_below_the_compact_revision_is_canceled_with_it() {
    let (_node, c) = seeded().await;
    c.compact(4, false).await.unwrap();
    let mut opts = WatchOptions::key("a");
    opts.start_revision = 2;
    let mut stream = c.watch(&opts).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    assert_eq!(
        msg,
        Some(Ok(WatchMessage::Canceled {
            reason: "compacted".into(),
            compact_revision: Some(4)
        }))
    );
    assert_eq!(stream.next().await, None);
}

#[tokio::test]
async fn a_stream_that_ends_without_cancel_is_an_error_naming_the_resume_point() {
    // A node whose SSE answer ends after one batch.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = "id: 3\nevent: events\ndata: {\"revision\":3,\"events\":[]}\n\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    let c = Client::new(ClientConfig::with_nodes(vec![url])).unwrap();
    let mut s = c.watch(&WatchOptions::key("k")).await.unwrap();
    assert!(matches!(s.next().await, Some(Ok(WatchMessage::Events(_)))));
    match s.next().await {
        Some(Err(ClientError::Unavailable { message, .. })) => {
            assert!(message.contains("start revision 4"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.next().await, None);
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /watch?key=k HTTP/1.1"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("accept: text/event-stream"),
        "{request}"
    );
}

#[tokio::test]
async fn long_poll_returns_the_first_batch_at_or_after_the_start() {
    let (node, c) = seeded().await;
    let mut opts = WatchOptions::prefix("user/");
    opts.start_revision = 4;
    let b = c
        .watch_poll(&opts, Duration::from_millis(200))
        .await
        .unwrap();
    let want = node
        .model()
        .events(4, KeyRange::new(&opts.key, &opts.range_end), usize::MAX)
        .unwrap();
    let first_rev = want[0].kv.mod_revision;
    assert_eq!(b.revision, first_rev);
    let want_first: Vec<Event> = want
        .into_iter()
        .filter(|e| e.kv.mod_revision == first_rev)
        .map(|e| Event { prev_kv: None, ..e })
        .collect();
    assert_eq!(b.events, want_first);
    // Nothing after the current revision: an empty batch at it.
    opts.start_revision = node.model().revision() + 1;
    let empty = c
        .watch_poll(&opts, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.revision, node.model().revision());
}
