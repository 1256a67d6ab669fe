//! The Watch stream through the real gRPC stack against the fake's hub.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::grpc::{serve, within, Served};
use crate::etcd::pb::etcdserverpb as rpc;
use crate::etcd::pb::etcdserverpb::watch_client::WatchClient;
use crate::etcd::pb::etcdserverpb::watch_create_request::FilterType;
use crate::etcd::pb::etcdserverpb::watch_request::RequestUnion;
use crate::etcd::pb::mvccpb::event::EventType;
use crate::etcd::{EtcdConfig, INVALID_WATCH_ID};
use crate::kv::{Command, CompactionRequest, DeleteRangeRequest, PutRequest};

/// One open Watch stream.
struct Stream {
    tx: mpsc::Sender<rpc::WatchRequest>,
    rx: Streaming<rpc::WatchResponse>,
}

impl Stream {
    async fn open(s: &Served) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let mut client = WatchClient::new(s.channel.clone());
        let rx = within(client.watch(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(rpc::WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&self, c: rpc::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await
    }

    async fn next(&mut self) -> rpc::WatchResponse {
        within(self.rx.message())
            .await
            .unwrap()
            .expect("the stream ended")
    }
}

fn watch_key(key: &str) -> rpc::WatchCreateRequest {
    rpc::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn put(s: &Served, key: &str, value: &str) -> i64 {
    s.backend
        .apply(&Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }))
        .unwrap()
        .revision
}

fn delete(s: &Served, key: &str) -> i64 {
    s.backend
        .apply(&Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        }))
        .unwrap()
        .revision
}

#[tokio::test]
async fn create_events_and_cancel() {
    let s = serve(EtcdConfig::default()).await;
    let mut w = Stream::open(&s).await;
    w.create(rpc::WatchCreateRequest {
        range_end: "b".into(),
        ..watch_key("a")
    })
    .await;
    let created = w.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 0, "the first server-chosen id is 0");
    assert_eq!(created.header.unwrap().revision, 1);

    let rev = put(&s, "a/1", "x");
    put(&s, "zzz", "outside the range");
    let rev2 = delete(&s, "a/1");
    let first = w.next().await;
    assert_eq!((first.watch_id, first.header.unwrap().revision), (0, rev));
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].r#type, EventType::Put as i32);
    assert_eq!(first.events[0].kv.as_ref().unwrap().value, b"x");
    assert_eq!(first.events[0].prev_kv, None, "prev_kv was not asked for");
    let second = w.next().await;
    assert_eq!(second.events[0].r#type, EventType::Delete as i32);
    assert_eq!(second.events[0].kv.as_ref().unwrap().mod_revision, rev2);

    // A second watch gets the next id; cancel the first one.
    w.create(watch_key("c")).await;
    assert_eq!(w.next().await.watch_id, 1);
    w.send(RequestUnion::CancelRequest(rpc::WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let canceled = w.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (0, true));
    // Unknown ids get no answer (etcd): the next response is the event.
    w.send(RequestUnion::CancelRequest(rpc::WatchCancelRequest {
        watch_id: 42,
    }))
    .await;
    put(&s, "a/2", "not watched any more");
    put(&s, "c", "watched");
    let next = w.next().await;
    assert_eq!(next.watch_id, 1);
    assert_eq!(next.events[0].kv.as_ref().unwrap().key, b"c");
}

#[tokio::test]
async fn start_revision_prev_kv_filters_and_client_ids() {
    let s = serve(EtcdConfig::default()).await;
    let r1 = put(&s, "k", "1");
    put(&s, "k", "2");
    delete(&s, "k");
    let mut w = Stream::open(&s).await;
    // From the past, with prev_kv, deletes filtered out, client id 7.
    w.create(rpc::WatchCreateRequest {
        start_revision: r1,
        prev_kv: true,
        filters: vec![FilterType::Nodelete as i32],
        watch_id: 7,
        ..watch_key("k")
    })
    .await;
    assert_eq!(w.next().await.watch_id, 7);
    let past = w.next().await;
    let values: Vec<&[u8]> = past
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().value.as_slice())
        .collect();
    assert_eq!(values, [&b"1"[..], b"2"]);
    assert_eq!(past.events[0].prev_kv, None, "k did not exist before");
    assert_eq!(past.events[1].prev_kv.as_ref().unwrap().value, b"1");

    // The same id again is refused, with etcd's answer.
    w.create(rpc::WatchCreateRequest {
        watch_id: 7,
        ..watch_key("other")
    })
    .await;
    let dup = w.next().await;
    assert!(dup.created && dup.canceled);
    assert_eq!(dup.watch_id, INVALID_WATCH_ID);
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // An empty interval and a negative start are refused too.
    w.create(rpc::WatchCreateRequest {
        range_end: "a".into(),
        ..watch_key("b")
    })
    .await;
    assert_eq!(w.next().await.cancel_reason, "mvcc: watcher range is empty");
    w.create(rpc::WatchCreateRequest {
        start_revision: -1,
        ..watch_key("b")
    })
    .await;
    let negative = w.next().await;
    assert_eq!(
        (
            negative.watch_id,
            negative.canceled,
            negative.cancel_reason.as_str()
        ),
        (
            INVALID_WATCH_ID,
            true,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );

    // NOPUT: only the delete comes through.
    w.create(rpc::WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..watch_key("k")
    })
    .await;
    let created = w.next().await;
    assert_eq!(created.watch_id, 0);
    put(&s, "k", "3");
    let rev = delete(&s, "k");
    // Watch 7 sees the put (deletes filtered), watch 0 the delete.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = w.next().await;
        seen.push((r.watch_id, r.events[0].r#type, r.header.unwrap().revision));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, EventType::Delete as i32, rev),
            (7, EventType::Put as i32, rev - 1)
        ]
    );
}

#[tokio::test]
async fn a_compacted_start_is_created_then_canceled_with_the_compact_revision() {
    let s = serve(EtcdConfig::default()).await;
    for i in 0..4 {
        put(&s, "k", &i.to_string());
    }
    s.backend
        .apply(&Command::Compact(CompactionRequest {
            revision: 4,
            physical: false,
        }))
        .unwrap();
    let mut w = Stream::open(&s).await;
    w.create(rpc::WatchCreateRequest {
        start_revision: 2,
        ..watch_key("k")
    })
    .await;
    let created = w.next().await;
    assert!(created.created && !created.canceled);
    let canceled = w.next().await;
    assert_eq!(
        (
            canceled.watch_id,
            canceled.canceled,
            canceled.compact_revision
        ),
        (created.watch_id, true, 4)
    );
    assert!(canceled.events.is_empty());
    // The id stays taken until the client cancels it, as in etcd.
    w.send(RequestUnion::CancelRequest(rpc::WatchCancelRequest {
        watch_id: created.watch_id,
    }))
    .await;
    let gone = w.next().await;
    assert_eq!((gone.watch_id, gone.canceled), (created.watch_id, true));
}

#[tokio::test]
async fn progress_requests_and_notifications() {
    let s = serve(EtcdConfig {
        progress_notify_interval: Duration::from_millis(50),
        ..EtcdConfig::default()
    })
    .await;
    let mut w = Stream::open(&s).await;
    // No watches: answered at once, at the current revision.
    let rev = put(&s, "x", "1");
    w.send(RequestUnion::ProgressRequest(rpc::WatchProgressRequest {}))
        .await;
    let p = w.next().await;
    assert_eq!(
        (p.watch_id, p.header.unwrap().revision),
        (INVALID_WATCH_ID, rev)
    );

    // A watch with progress_notify gets empty responses while idle.
    w.create(rpc::WatchCreateRequest {
        progress_notify: true,
        ..watch_key("quiet")
    })
    .await;
    let created = w.next().await;
    let notify = w.next().await;
    assert_eq!(notify.watch_id, created.watch_id);
    assert!(notify.events.is_empty() && !notify.canceled && !notify.created);
    assert_eq!(notify.header.unwrap().revision, rev);

    // With a watch: the stream-wide answer comes once it is synced.
    w.send(RequestUnion::ProgressRequest(rpc::WatchProgressRequest {}))
        .await;
    let all = loop {
        let r = w.next().await;
        if r.watch_id == INVALID_WATCH_ID {
            break r;
        }
    };
    assert_eq!(all.header.unwrap().revision, rev);
}

#[tokio::test]
async fn dropping_the_stream_ends_its_watches() {
    let s = serve(EtcdConfig::default()).await;
    let mut w = Stream::open(&s).await;
    for key in ["a", "b"] {
        w.create(watch_key(key)).await;
        assert!(w.next().await.created);
    }
    assert_eq!(s.backend.subscribers(), 2);
    drop(w);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.backend.subscribers() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watches outlived their stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn closing_the_request_side_keeps_the_watches() {
    let s = serve(EtcdConfig::default()).await;
    let mut w = Stream::open(&s).await;
    w.create(watch_key("k")).await;
    assert!(w.next().await.created);
    let Stream { tx, mut rx } = w;
    drop(tx); // half-close, as etcd allows
    put(&s, "k", "v");
    let r = within(rx.message()).await.unwrap().unwrap();
    assert_eq!(r.events[0].kv.as_ref().unwrap().value, b"v");
}

/// A watch created with `fragment` gets a large revision (a range delete of
/// many keys) in pieces marked `fragment` but the last; one without it gets
/// the same revision whole.
#[tokio::test]
async fn large_responses_are_fragmented_only_when_asked() {
    let s = serve(EtcdConfig {
        watch_fragment_bytes: 2_000,
        ..EtcdConfig::default()
    })
    .await;
    let mut w = Stream::open(&s).await;
    for (id, fragment) in [(1, true), (2, false)] {
        w.create(rpc::WatchCreateRequest {
            range_end: "c".into(),
            watch_id: id,
            fragment,
            // The deleted values come along: the delete revision is large.
            prev_kv: true,
            ..watch_key("b")
        })
        .await;
        assert!(w.next().await.created);
    }
    let value = "v".repeat(200);
    for i in 0..30 {
        put(&s, &format!("b/{i:02}"), &value);
    }
    // Every put is small: whole responses for both watches.
    let mut seen = 0;
    while seen < 60 {
        let r = w.next().await;
        assert!(!r.fragment);
        assert_eq!(r.events.len(), 1);
        seen += 1;
    }
    let rev = s
        .backend
        .apply(&Command::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            range_end: "c".into(),
            prev_kv: true,
        }))
        .unwrap()
        .revision;
    let mut pieces: Vec<rpc::WatchResponse> = Vec::new();
    let mut whole = None;
    while whole.is_none() || pieces.last().is_none_or(|p| p.fragment) {
        let r = w.next().await;
        assert_eq!(r.header.unwrap().revision, rev);
        match r.watch_id {
            1 => pieces.push(r),
            2 => whole = Some(r),
            other => panic!("unexpected watch {other}"),
        }
    }
    let whole = whole.unwrap();
    assert!(!whole.fragment);
    assert_eq!(whole.events.len(), 30);
    assert!(pieces.len() > 1, "{} pieces", pieces.len());
    let joined: Vec<_> = pieces.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(joined, whole.events);
}
