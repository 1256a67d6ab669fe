//! The `/raft/*` routes against a fake Raft loop (see
//! `node::handle::testing`): envelope checks, delivery into the loop's
//! inbox, snapshot chunks staged in order, and what the peer state shows.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::wire::{self, MessageBatch, RpcHeader, WIRE_VERSION};
use super::{routes, PeerReceiver, PeerState};
use crate::node::handle::testing::{fake_node_with_peers, Fake, Mode};
use crate::node::{Inbound, Membership, NodeConfig, PeerInfo, PeerSpec};
use crate::raft::{Message, MessageBody};
use crate::storage::{SledStore, StagedImage};

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

/// A fake node n1 (peers n2, n3) in `mode`, with the transport's routes
/// mounted as the process mounts them; snapshots are staged into `store`.
fn peer_app(
    mode: Mode,
    store: Option<SledStore>,
) -> (Fake<StagedImage>, Arc<PeerState>, axum::Router) {
    let m = membership("n1", 1, &[("n2", 2), ("n3", 3)]);
    let peers = PeerState::new(&m);
    let f: Fake<StagedImage> = fake_node_with_peers(m, mode, Duration::from_secs(2), peers.clone());
    let receiver = Arc::new(PeerReceiver::new(
        f.handle.clone(),
        f.inbox.clone(),
        peers.clone(),
        store,
    ));
    let app = crate::server::router_with(
        crate::server::AppState::new(f.handle.clone()),
        routes(receiver),
    );
    (f, peers, app)
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body.into())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, v)
}

/// Waits (bounded) until the fake loop has received `n` inbound events.
async fn wait_inbound(f: &Fake<StagedImage>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while f.inbound.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn batch(cluster: &str, from: &str, to: &str) -> Vec<u8> {
    let from_id = crate::node::membership::id_of(from);
    let to_id = crate::node::membership::id_of(to);
    wire::encode(&MessageBatch {
        header: RpcHeader {
            version: WIRE_VERSION,
            cluster_id: cluster.into(),
            from: from_id,
            to: to_id,
            from_name: from.into(),
            from_addr: "127.0.0.1:2".into(),
        },
        messages: vec![Message {
            from: from_id,
            to: to_id,
            term: 1,
            body: MessageBody::RequestVote {
                last_log_index: 0,
                last_log_term: 0,
                transfer: false,
            },
        }],
    })
}

#[tokio::test]
async fn rpc_envelopes_are_checked() {
    let (f, _, app) = peer_app(Mode::Leader, None);
    let cluster = f.handle.membership().cluster_id.clone();
    let (s, _) = call(&app, "POST", "/raft/vote", batch(&cluster, "n2", "n1")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, "POST", "/raft/append", batch(&cluster, "n2", "n1")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Both batches reached the loop's inbox, as messages from n2.
    wait_inbound(&f, 2).await;
    for ev in f.inbound.lock().unwrap().iter() {
        let Inbound::Messages(msgs) = ev else {
            panic!("not a message batch: {ev:?}")
        };
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].from, crate::node::membership::id_of("n2"));
    }
    let (s, v) = call(&app, "POST", "/raft/vote", batch("other", "n2", "n1")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(v["error"].as_str().unwrap().contains("cluster id"));
    let (s, _) = call(&app, "POST", "/raft/vote", batch(&cluster, "n9", "n1")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(&app, "POST", "/raft/vote", batch(&cluster, "n2", "n3")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(&app, "POST", "/raft/message", Body::from("garbage")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].is_string());
    let (s, _) = call(&app, "GET", "/raft/vote", Body::empty()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

/// One chunk of a transfer from n2 to n1 in term 3.
fn chunk(cluster: &str, transfer_id: u64, c: &crate::storage::ImageChunk) -> Vec<u8> {
    chunk_in_term(cluster, transfer_id, c, 3)
}

fn chunk_in_term(
    cluster: &str,
    transfer_id: u64,
    c: &crate::storage::ImageChunk,
    term: u64,
) -> Vec<u8> {
    let from = crate::node::membership::id_of("n2");
    let to = crate::node::membership::id_of("n1");
    wire::encode(&wire::SnapshotChunk {
        header: RpcHeader {
            version: WIRE_VERSION,
            cluster_id: cluster.into(),
            from,
            to,
            from_name: "n2".into(),
            from_addr: "127.0.0.1:2".into(),
        },
        message: Message {
            from,
            to,
            term,
            body: MessageBody::InstallSnapshot {
                meta: crate::raft::SnapshotMeta { index: 40, term: 2 },
            },
        },
        transfer_id,
        seq: c.seq,
        offset: c.offset,
        crc32: c.crc32,
        trailer: c.trailer,
        data: c.data.clone(),
    })
}

/// An image of 40 keys at index 40, term 2, in small chunks.
fn image_chunks() -> (tempfile::TempDir, Vec<crate::storage::ImageChunk>) {
    use crate::storage::{LogStore, StateMachine};
    let dir = tempfile::tempdir().unwrap();
    let mut src = crate::storage::SledStore::open(dir.path(), "n2", "c").unwrap();
    let entries: Vec<crate::raft::Entry> = (1..=40)
        .map(|i| crate::raft::Entry {
            index: i,
            term: 2,
            payload: crate::raft::EntryPayload::Command(
                crate::kv::Command::Put(crate::kv::PutRequest {
                    key: format!("k{i:03}").into_bytes(),
                    value: "v".repeat(200).into_bytes(),
                    ..Default::default()
                })
                .encode(),
            ),
        })
        .collect();
    let hs = crate::raft::HardState {
        term: 2,
        vote: 0,
        commit: 40,
    };
    src.save(Some(&hs), &entries).unwrap();
    src.apply(&entries).unwrap();
    let chunks: Vec<_> = src
        .begin_snapshot()
        .unwrap()
        .chunks(2048)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(chunks.len() >= 4);
    (dir, chunks)
}

#[tokio::test]
async fn snapshot_chunks_are_checked_and_staged_in_order() {
    let (_src_dir, chunks) = image_chunks();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::storage::SledStore::open(dir.path(), "n1", "c").unwrap();
    let (f, peers, app) = peer_app(
        Mode::Follower(crate::node::membership::id_of("n2")),
        Some(store),
    );
    let cluster = f.handle.membership().cluster_id.clone();
    let post = |body: Vec<u8>| {
        let app = app.clone();
        async move { call(&app, "POST", "/raft/snapshot", body).await }
    };

    let (s, v) = post(b"garbage".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = post(chunk("other", 1, &chunks[0])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // From a leader of an older term than this node's (1).
    let (s, v) = post(chunk_in_term(&cluster, 1, &chunks[0], 0)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("term"), "{v}");
    // A chunk that is not the start of a transfer.
    let (s, v) = post(chunk(&cluster, 1, &chunks[1])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Damaged in transit.
    let mut bad = chunks[0].clone();
    bad.data[3] ^= 1;
    let (s, v) = post(chunk(&cluster, 1, &bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("crc32"), "{v}");

    // A transfer: start, skip a chunk (refused), continue in order.
    let (s, v) = post(chunk(&cluster, 7, &chunks[0])).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let receiving = peers.snapshot_receiving().expect("transfer in progress");
    assert_eq!(receiving.index, 40);
    assert_eq!(receiving.bytes, chunks[0].data.len() as u64);
    let (s, v) = call(&app, "GET", "/cluster/status", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["snapshot_receiving"]["index"], 40, "{v}");
    assert_eq!(v["snapshot_receiving"]["from"], "n2", "{v}");
    let (s, v) = post(chunk(&cluster, 7, &chunks[2])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Another transfer's chunk does not mix in.
    let (s, v) = post(chunk(&cluster, 8, &chunks[1])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for c in &chunks[1..] {
        let (s, v) = post(chunk(&cluster, 7, c)).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "chunk {}: {v}", c.seq);
    }
    assert!(peers.snapshot_receiving().is_none());
    // The staged image reached the loop with its InstallSnapshot message.
    wait_inbound(&f, 1).await;
    match &f.inbound.lock().unwrap()[0] {
        Inbound::Snapshot(s) => {
            assert_eq!(s.staged.meta().index, 40);
            assert!(matches!(
                s.message.body,
                MessageBody::InstallSnapshot { .. }
            ));
        }
        other => panic!("not a snapshot: {other:?}"),
    }
    // The loop dropping the image frees the staging tree for the next one.
    f.inbound.lock().unwrap().clear();
    let (_, v) = call(&app, "GET", "/cluster/status", Body::empty()).await;
    assert!(v["snapshot_receiving"].is_null(), "{v}");

    // A complete transfer whose trailer does not match is refused.
    let mut last = chunks.last().unwrap().clone();
    if let Some(t) = &mut last.trailer {
        t.crc32 ^= 1;
    }
    for c in &chunks[..chunks.len() - 1] {
        let (s, v) = post(chunk(&cluster, 9, c)).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    let (s, v) = post(chunk(&cluster, 9, &last)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("crc32"), "{v}");
}

#[tokio::test]
async fn a_node_without_a_store_refuses_snapshots_with_503() {
    let (_src_dir, chunks) = image_chunks();
    let (f, _, app) = peer_app(Mode::Leader, None);
    let cluster = f.handle.membership().cluster_id.clone();
    let (s, v) = call(
        &app,
        "POST",
        "/raft/snapshot",
        chunk(&cluster, 1, &chunks[0]),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}
