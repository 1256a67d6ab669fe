//! KV, Cluster, Maintenance and the unimplemented services through the real
//! gRPC stack, and one listener serving gRPC and HTTP/1.1 JSON together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;

use crate::etcd::fake::{self, MemBackend};
use crate::etcd::pb::etcdserverpb as rpc;
use crate::etcd::pb::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient,
};
use crate::etcd::{EtcdConfig, EtcdService, ETCD_VERSION};

/// A server on a loopback port over a fresh fake; stops when dropped.
pub(super) struct Served {
    pub backend: MemBackend,
    pub channel: Channel,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on 127.0.0.1 (an OS-chosen port).
pub(super) async fn serve_router(
    router: axum::Router,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

pub(super) async fn serve(config: EtcdConfig) -> Served {
    let backend = MemBackend::new();
    let service = EtcdService::with_config(Arc::new(backend.clone()), config);
    let (addr, task) = serve_router(service.router()).await;
    let channel = within(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    Served {
        backend,
        channel,
        task,
    }
}

/// Every network step of these tests is bounded: a hang fails the test.
pub(super) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("no answer within 10 s")
}

fn put(key: &str, value: &str) -> rpc::PutRequest {
    rpc::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str) -> rpc::RangeRequest {
    rpc::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = r.expect_err("the call must fail");
    assert_eq!((status.code(), status.message()), (code, message));
}

#[tokio::test]
async fn put_range_and_delete_range_end_to_end() {
    let s = serve(EtcdConfig::default()).await;
    let mut kv = KvClient::new(s.channel.clone());

    let first = within(kv.put(put("foo", "bar")))
        .await
        .unwrap()
        .into_inner();
    let h = first.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.revision, h.raft_term),
        (fake::CLUSTER_ID, fake::MEMBER_ID, 2, fake::TERM)
    );
    assert_eq!(first.prev_kv, None);

    let second = within(kv.put(rpc::PutRequest {
        prev_kv: true,
        ..put("foo", "baz")
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(second.header.unwrap().revision, 3);
    let prev = second.prev_kv.unwrap();
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"bar"[..], 2));

    within(kv.put(put("fop", "1"))).await.unwrap();
    within(kv.put(put("fox", "2"))).await.unwrap();

    let one = within(kv.range(get("foo"))).await.unwrap().into_inner();
    assert_eq!(one.count, 1);
    let kv0 = &one.kvs[0];
    assert_eq!(
        (
            kv0.value.as_slice(),
            kv0.create_revision,
            kv0.mod_revision,
            kv0.version
        ),
        (&b"baz"[..], 2, 3, 2)
    );

    // Prefix "fo" with a limit, newest first by mod revision.
    let page = within(kv.range(rpc::RangeRequest {
        key: "fo".into(),
        range_end: "fp".into(),
        limit: 2,
        sort_order: rpc::range_request::SortOrder::Descend as i32,
        sort_target: rpc::range_request::SortTarget::Mod as i32,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    let keys: Vec<&[u8]> = page.kvs.iter().map(|k| k.key.as_slice()).collect();
    assert_eq!(keys, [&b"fox"[..], b"fop"]);
    assert_eq!((page.more, page.count), (true, 3));

    // An old revision still reads the old value.
    let old = within(kv.range(rpc::RangeRequest {
        revision: 2,
        ..get("foo")
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(old.kvs[0].value, b"bar");
    assert_eq!(old.header.unwrap().revision, 5);

    let deleted = within(kv.delete_range(rpc::DeleteRangeRequest {
        key: "fo".into(),
        range_end: "fp".into(),
        prev_kv: true,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (3, 3));
    assert_eq!(deleted.header.unwrap().revision, 6);
    let none = within(kv.range(get("foo"))).await.unwrap().into_inner();
    assert_eq!((none.count, none.kvs.len()), (0, 0));
}

#[tokio::test]
async fn txn_compare_and_swap_end_to_end() {
    let s = serve(EtcdConfig::default()).await;
    let mut kv = KvClient::new(s.channel.clone());
    use rpc::compare::{CompareResult, CompareTarget, TargetUnion};
    use rpc::request_op::Request;
    let cas = |expected_mod: i64| rpc::TxnRequest {
        compare: vec![rpc::Compare {
            key: "lock".into(),
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            target_union: Some(TargetUnion::ModRevision(expected_mod)),
            ..Default::default()
        }],
        success: vec![rpc::RequestOp {
            request: Some(Request::RequestPut(put("lock", "me"))),
        }],
        failure: vec![rpc::RequestOp {
            request: Some(Request::RequestRange(get("lock"))),
        }],
    };
    // Create if absent (mod_revision 0): succeeds.
    let created = within(kv.txn(cas(0))).await.unwrap().into_inner();
    assert!(created.succeeded);
    assert_eq!(created.header.unwrap().revision, 2);
    match &created.responses[0].response {
        Some(rpc::response_op::Response::ResponsePut(p)) => {
            assert_eq!(p.header.as_ref().unwrap().revision, 2)
        }
        other => panic!("{other:?}"),
    }
    // Again: fails, the failure branch shows the current holder.
    let taken = within(kv.txn(cas(0))).await.unwrap().into_inner();
    assert!(!taken.succeeded);
    assert_eq!(taken.header.unwrap().revision, 2);
    match &taken.responses[0].response {
        Some(rpc::response_op::Response::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].mod_revision, 2)
        }
        other => panic!("{other:?}"),
    }
    // A duplicate key is refused before proposing, with etcd's text.
    let duplicate = rpc::TxnRequest {
        success: vec![
            rpc::RequestOp {
                request: Some(Request::RequestPut(put("a", "1"))),
            },
            rpc::RequestOp {
                request: Some(Request::RequestPut(put("a", "2"))),
            },
        ],
        ..Default::default()
    };
    assert_status(
        within(kv.txn(duplicate)).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
}

#[tokio::test]
async fn compaction_and_revision_errors_have_etcds_codes_and_texts() {
    let s = serve(EtcdConfig::default()).await;
    let mut kv = KvClient::new(s.channel.clone());
    for i in 0..4 {
        within(kv.put(put("k", &i.to_string()))).await.unwrap();
    }
    // Revision is now 5.
    let compacted = within(kv.compact(rpc::CompactionRequest {
        revision: 4,
        physical: true,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(compacted.header.unwrap().revision, 5);
    assert_status(
        within(kv.range(rpc::RangeRequest {
            revision: 3,
            ..get("k")
        }))
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // Reading at the compact revision is allowed.
    let at = within(kv.range(rpc::RangeRequest {
        revision: 4,
        ..get("k")
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(at.kvs[0].value, b"2");
    assert_status(
        within(kv.compact(rpc::CompactionRequest {
            revision: 4,
            physical: false,
        }))
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        within(kv.range(rpc::RangeRequest {
            revision: 99,
            ..get("k")
        }))
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_status(
        within(kv.put(put("", "v"))).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        within(kv.put(rpc::PutRequest {
            ignore_value: true,
            ..put("absent", "")
        }))
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
}

#[tokio::test]
async fn cluster_and_maintenance_answer_from_the_backend() {
    let s = serve(EtcdConfig::default()).await;
    let mut kv = KvClient::new(s.channel.clone());
    let mut cluster = ClusterClient::new(s.channel.clone());
    let mut maint = MaintenanceClient::new(s.channel.clone());
    within(kv.put(put("a", "1"))).await.unwrap();

    let list = within(cluster.member_list(rpc::MemberListRequest { linearizable: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.header.unwrap().revision, 2);
    let ids: Vec<u64> = list.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, [fake::MEMBER_ID, fake::OTHER_MEMBER]);
    assert_eq!(list.members[0].client_ur_ls, ["http://127.0.0.1:8001"]);

    let status = within(maint.status(rpc::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.version, ETCD_VERSION);
    assert_eq!(
        (status.leader, status.raft_term, status.db_size),
        (fake::MEMBER_ID, fake::TERM, 4096)
    );

    let h1 = within(maint.hash_kv(rpc::HashKvRequest { revision: 2 }))
        .await
        .unwrap()
        .into_inner();
    within(kv.put(put("b", "2"))).await.unwrap();
    let h2 = within(maint.hash_kv(rpc::HashKvRequest { revision: 2 }))
        .await
        .unwrap()
        .into_inner();
    let h3 = within(maint.hash_kv(rpc::HashKvRequest { revision: 3 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h1.hash, h2.hash,
        "a later write does not change an older hash"
    );
    assert_ne!(h2.hash, h3.hash);
    assert_eq!(h3.header.unwrap().revision, 3);

    within(maint.move_leader(rpc::MoveLeaderRequest {
        target_id: fake::OTHER_MEMBER,
    }))
    .await
    .unwrap();
    assert_status(
        within(maint.move_leader(rpc::MoveLeaderRequest { target_id: 999 })).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );

    let alarms = within(maint.alarm(rpc::AlarmRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(alarms.alarms.is_empty());
    assert!(alarms.header.is_some());
    within(maint.defragment(rpc::DefragmentRequest {}))
        .await
        .unwrap();
}

#[tokio::test]
async fn unimplemented_calls_answer_at_once_naming_their_issue() {
    let s = serve(EtcdConfig::default()).await;
    let mut lease = LeaseClient::new(s.channel.clone());
    let mut auth = AuthClient::new(s.channel.clone());
    let mut cluster = ClusterClient::new(s.channel.clone());
    let mut maint = MaintenanceClient::new(s.channel.clone());

    let status = within(lease.lease_grant(rpc::LeaseGrantRequest { ttl: 5, id: 0 }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        status.message(),
        "the Lease service (LeaseGrant) is not implemented by RaftKV yet (issue 17: leases)"
    );
    let keep_alive = futures::stream::iter(vec![rpc::LeaseKeepAliveRequest { id: 1 }]);
    let status = within(lease.lease_keep_alive(keep_alive))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("issue 17"),
        "{}",
        status.message()
    );

    let status = within(auth.auth_status(rpc::AuthStatusRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("AuthStatus") && status.message().contains("issue 19"));
    let status = within(auth.authenticate(rpc::AuthenticateRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    let status = within(cluster.member_add(rpc::MemberAddRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("MemberAdd") && status.message().contains("issue 18"));

    let status = within(maint.snapshot(rpc::SnapshotRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("issue 16"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn one_listener_serves_grpc_and_http1_json() {
    use axum::routing::get as get_route;
    let backend = MemBackend::new();
    let json = axum::Router::new()
        .route(
            "/json",
            get_route(|| async { axum::Json(serde_json::json!({"ok": true})) }),
        )
        // The JSON API has a fallback of its own: the gRPC routes must
        // merge with it.
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such path") });
    let grpc = EtcdService::new(Arc::new(backend.clone())).router();
    let (addr, task) = serve_router(grpc.merge(json)).await;

    // gRPC: HTTP/2 with prior knowledge.
    let channel = within(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let mut kv = KvClient::new(channel);
    within(kv.put(put("shared", "port"))).await.unwrap();
    let got = within(kv.range(get("shared"))).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"port");

    // JSON: HTTP/1.1 on the same port.
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let resp = within(http.get(format!("http://{addr}/json")).send())
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = within(resp.json()).await.unwrap();
    assert_eq!(body, serde_json::json!({"ok": true}));
    let missing = within(http.get(format!("http://{addr}/nope")).send())
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    task.abort();
}
