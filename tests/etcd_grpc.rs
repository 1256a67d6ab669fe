//! etcd v3's gRPC API and JSON gateway on a real three-node cluster, on
//! each node's client port (the port that also serves the JSON API and the
//! peers' `/raft/*`): the KV calls on the leader and through a follower
//! (forwarded), linearizable and serializable ranges, a follower's watch,
//! member ids, status, HashKV agreement, MoveLeader, and the gateway's
//! JSON (base64, streaming watch, `/version`).
//!
//! The clients are the tonic clients generated from the schema
//! (`raftkv::etcd::pb`), as an etcd client library would use them. Every
//! wait is a bounded condition poll.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use raftkv::etcd::pb::etcdserverpb as rpc;
use raftkv::etcd::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
use raftkv::etcd::pb::mvccpb;

mod common;

use common::{eventually, Cluster, Opts};

const WAIT: Duration = Duration::from_secs(20);

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("connect over HTTP/2")
}

async fn kv(c: &Cluster, i: usize) -> KvClient<Channel> {
    KvClient::new(channel(&c.url(i)).await)
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

fn header(h: &Option<rpc::ResponseHeader>) -> rpc::ResponseHeader {
    (*h).expect("every answer has a header")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Member ids by node index, from a member list (names are `node-N`).
async fn member_ids(c: &Cluster) -> Vec<u64> {
    let mut cl = ClusterClient::new(channel(&c.url(0)).await);
    let list = cl
        .member_list(rpc::MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    (0..c.nodes.len())
        .map(|i| {
            let m = list
                .members
                .iter()
                .find(|m| m.name == c.nodes[i].name)
                .unwrap_or_else(|| panic!("{} is not in {:?}", c.nodes[i].name, list.members));
            m.id
        })
        .collect()
}

#[tokio::test]
async fn kv_calls_on_leader_and_follower_watch_and_read_consistency() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    let ids = member_ids(&c).await;
    let mut kl = kv(&c, leader).await;
    let mut kf = kv(&c, follower).await;

    // A watch on the follower before any write.
    let mut wf = WatchClient::new(channel(&c.url(follower)).await);
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
    req_tx
        .send(rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
                rpc::WatchCreateRequest {
                    key: b"w".to_vec(),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
    let mut watch = wf
        .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await
        .expect("watch stream")
        .into_inner();
    let created = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("created in time")
        .expect("stream ok")
        .expect("a response");
    assert!(created.created, "{created:?}");

    // Writes on the leader and through the follower share one revision
    // sequence; each answer's header names the member that answered.
    let p1 = kl
        .put(put("a", "1"))
        .await
        .expect("put on leader")
        .into_inner();
    let h1 = header(&p1.header);
    assert_eq!(h1.member_id, ids[leader]);
    let p2 = kf
        .put(put("b", "2"))
        .await
        .expect("put via follower")
        .into_inner();
    let h2 = header(&p2.header);
    assert_eq!(h2.member_id, ids[follower]);
    assert_eq!(h2.revision, h1.revision + 1);
    assert_eq!(h1.cluster_id, h2.cluster_id);

    // Linearizable on the follower: the write is visible at once.
    let r = kf.range(get("b")).await.expect("range").into_inner();
    assert_eq!(r.count, 1);
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(r.kvs[0].mod_revision, h2.revision);
    assert!(header(&r.header).revision >= h2.revision);

    // The watch on the follower sees a put made through the leader.
    let pw = kl.put(put("w", "seen")).await.expect("put w").into_inner();
    let wr = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("a response");
    assert_eq!(wr.events.len(), 1, "{wr:?}");
    let ev = &wr.events[0];
    assert_eq!(ev.r#type, mvccpb::event::EventType::Put as i32);
    let kv0 = ev.kv.as_ref().unwrap();
    assert_eq!(
        (kv0.key.as_slice(), kv0.value.as_slice()),
        (&b"w"[..], &b"seen"[..])
    );
    assert_eq!(kv0.mod_revision, header(&pw.header).revision);

    // A transaction through the follower, both branches.
    let txn = |expected: &str, new: &str| rpc::TxnRequest {
        compare: vec![rpc::Compare {
            key: b"a".to_vec(),
            result: rpc::compare::CompareResult::Equal as i32,
            target: rpc::compare::CompareTarget::Value as i32,
            target_union: Some(rpc::compare::TargetUnion::Value(expected.into())),
            ..Default::default()
        }],
        success: vec![rpc::RequestOp {
            request: Some(rpc::request_op::Request::RequestPut(put("a", new))),
        }],
        failure: vec![rpc::RequestOp {
            request: Some(rpc::request_op::Request::RequestRange(get("a"))),
        }],
    };
    let t = kf.txn(txn("1", "3")).await.expect("txn").into_inner();
    assert!(t.succeeded);
    let t = kf.txn(txn("1", "4")).await.expect("txn").into_inner();
    assert!(!t.succeeded);
    match &t.responses[0].response {
        Some(rpc::response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"3"),
        other => panic!("expected the failure branch's range, got {other:?}"),
    }

    // Delete through the follower; the leader's linearizable read agrees.
    let d = kf
        .delete_range(rpc::DeleteRangeRequest {
            key: b"b".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value, b"2");
    let r = kl.range(get("b")).await.expect("range").into_inner();
    assert_eq!(r.count, 0);

    // Compaction through the follower; reads below it are refused as etcd
    // refuses them, on every member.
    let now = header(&d.header).revision;
    kf.compact(rpc::CompactionRequest {
        revision: now,
        physical: false,
    })
    .await
    .expect("compact");
    for client in [&mut kl, &mut kf] {
        let err = client
            .range(rpc::RangeRequest {
                revision: h1.revision,
                ..get("a")
            })
            .await
            .expect_err("compacted");
        assert_eq!(err.code(), Code::OutOfRange);
        assert_eq!(
            err.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let err = client
            .range(rpc::RangeRequest {
                revision: now + 1000,
                ..get("a")
            })
            .await
            .expect_err("future");
        assert_eq!(err.code(), Code::OutOfRange);
        assert_eq!(
            err.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
    }

    // Serializable reads the member's own copy: it converges on the
    // follower...
    let last = kl.put(put("s", "x")).await.expect("put").into_inner();
    let last_rev = header(&last.header).revision;
    let serializable = rpc::RangeRequest {
        serializable: true,
        ..get("s")
    };
    eventually(WAIT, "the follower applies the put", || {
        let mut kf = kf.clone();
        let req = serializable.clone();
        async move {
            let r = kf.range(req).await.ok()?.into_inner();
            (r.count == 1 && r.kvs[0].mod_revision == last_rev).then_some(())
        }
    })
    .await;
    // ...and still answers with no quorum, where a linearizable read
    // cannot: stop the two others.
    let other = (follower + 1) % 3;
    c.nodes[leader].kill9();
    c.nodes[other].kill9();
    let r = kf
        .range(serializable.clone())
        .await
        .expect("serializable without quorum")
        .into_inner();
    assert_eq!(r.kvs[0].value, b"x");
    let err = kf.range(get("s")).await.expect_err("no quorum");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message() == "etcdserver: no leader" || err.message() == "etcdserver: leader changed",
        "{err:?}"
    );
}

#[tokio::test]
async fn members_status_hash_kv_and_move_leader() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(WAIT).await;
    let ids = member_ids(&c).await;
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");

    // Every member lists the same members; its header names itself.
    for (i, &id) in ids.iter().enumerate() {
        let mut cl = ClusterClient::new(channel(&c.url(i)).await);
        let list = cl
            .member_list(rpc::MemberListRequest::default())
            .await
            .expect("member list")
            .into_inner();
        assert_eq!(header(&list.header).member_id, id);
        assert_eq!(list.members.len(), 3);
        let me = list.members.iter().find(|m| m.id == id).unwrap();
        assert_eq!(me.client_ur_ls, vec![c.url(i)]);
        assert_eq!(me.peer_ur_ls, vec![c.url(i)]);
        assert!(!me.is_learner);
    }

    // Status: every member names the leader and one term.
    let mut terms = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let mut m = MaintenanceClient::new(channel(&c.url(i)).await);
        let st = m
            .status(rpc::StatusRequest::default())
            .await
            .expect("status")
            .into_inner();
        assert_eq!(st.version, "3.5.0");
        assert_eq!(st.leader, ids[leader], "member {i}");
        assert_eq!(header(&st.header).member_id, id);
        assert!(st.raft_term >= 1 && st.raft_applied_index >= 1, "{st:?}");
        assert!(st.db_size > 0, "{st:?}");
        terms.push(st.raft_term);
    }
    assert!(terms.iter().all(|&t| t == terms[0]), "{terms:?}");

    // HashKV at one revision is equal on every member (once applied),
    // and changes with the history.
    let mut kl = kv(&c, leader).await;
    for i in 0..20 {
        kl.put(put(&format!("k{}", i % 7), &format!("v{i}")))
            .await
            .expect("put");
    }
    let d = kl
        .delete_range(rpc::DeleteRangeRequest {
            key: b"k3".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    let at = header(&d.header).revision;
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = MaintenanceClient::new(channel(&c.url(i)).await);
        let h = eventually(WAIT, "the member applies the writes", || {
            let mut m = m.clone();
            async move {
                let h = m
                    .hash_kv(rpc::HashKvRequest { revision: at })
                    .await
                    .ok()?
                    .into_inner();
                Some(h.hash)
            }
        })
        .await;
        hashes.push(h);
        let earlier = m
            .hash_kv(rpc::HashKvRequest { revision: at - 1 })
            .await
            .expect("hash")
            .into_inner();
        assert_ne!(earlier.hash, h, "the hash covers the last delete");
        let future = m
            .hash_kv(rpc::HashKvRequest {
                revision: at + 1000,
            })
            .await
            .expect_err("future revision");
        assert_eq!(future.code(), Code::OutOfRange);
    }
    assert!(hashes.iter().all(|&h| h == hashes[0]), "{hashes:?}");

    // MoveLeader: refused by a follower and for an unknown member, then
    // obeyed by the leader.
    let target = (leader + 1) % 3;
    let mut mf = MaintenanceClient::new(channel(&c.url(target)).await);
    let err = mf
        .move_leader(rpc::MoveLeaderRequest {
            target_id: ids[leader],
        })
        .await
        .expect_err("a follower cannot move leadership");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: not leader");
    let mut ml = MaintenanceClient::new(channel(&c.url(leader)).await);
    let err = ml
        .move_leader(rpc::MoveLeaderRequest { target_id: 12345 })
        .await
        .expect_err("unknown member");
    assert_eq!(err.message(), "etcdserver: bad leader transferee");
    ml.move_leader(rpc::MoveLeaderRequest {
        target_id: ids[target],
    })
    .await
    .expect("move leader");
    let new_leader = c.wait_for_leader(WAIT).await;
    assert_eq!(new_leader, target);
    let st = mf
        .status(rpc::StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.leader, ids[target]);
    // Writes keep working under the new leader, through the old one.
    kl.put(put("after", "move"))
        .await
        .expect("put after the move");
}

/// The next `{"result": ...}` line of a gateway watch stream.
async fn next_line(resp: &mut reqwest::Response, buf: &mut Vec<u8>) -> Value {
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            return serde_json::from_slice(&line).expect("one JSON object per line");
        }
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("a watch line in time")
            .expect("the stream is readable")
            .expect("the stream is open");
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn gateway_json_on_the_client_port() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let post = |i: usize, path: &str, body: Value| {
        http.post(format!("{}{path}", c.url(i))).json(&body).send()
    };

    // /version.
    let v: Value = http
        .get(format!("{}/version", c.url(follower)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}));

    // A watch through the gateway on the follower.
    let mut stream = http
        .post(format!("{}/v3/watch", c.url(follower)))
        .json(&json!({"create_request": {"key": b64("g/"), "range_end": b64("g0")}}))
        .send()
        .await
        .expect("watch");
    assert_eq!(stream.status(), 200);
    let mut buf = Vec::new();
    let created = next_line(&mut stream, &mut buf).await;
    assert_eq!(created["result"]["created"], true, "{created}");

    // Put through the follower's gateway, base64 in and out.
    let r = post(
        follower,
        "/v3/kv/put",
        json!({"key": b64("g/one"), "value": b64("héllo")}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let put: Value = r.json().await.unwrap();
    let rev = put["header"]["revision"]
        .as_str()
        .expect("int64 as a string");
    let rev: i64 = rev.parse().unwrap();

    let r = post(leader, "/v3/kv/range", json!({"key": b64("g/one")}))
        .await
        .unwrap();
    let range: Value = r.json().await.unwrap();
    assert_eq!(range["count"], "1", "{range}");
    assert_eq!(range["kvs"][0]["value"], b64("héllo"));
    assert_eq!(range["kvs"][0]["mod_revision"], rev.to_string());

    // The watch line for it.
    let ev = next_line(&mut stream, &mut buf).await;
    let e = &ev["result"]["events"][0];
    assert_eq!(e["kv"]["key"], b64("g/one"), "{ev}");
    assert_eq!(e["kv"]["mod_revision"], rev.to_string());

    // A write through the old JSON API on the same port reaches the same
    // watch (one store, one revision sequence).
    let (status, body) = c.put(leader, "g/two", "2").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ev = next_line(&mut stream, &mut buf).await;
    assert_eq!(ev["result"]["events"][0]["kv"]["key"], b64("g/two"), "{ev}");
    assert_eq!(
        ev["result"]["events"][0]["kv"]["mod_revision"],
        (rev + 1).to_string()
    );

    // Errors as etcd's gateway: gRPC code in the body, mapped HTTP status.
    let r = post(follower, "/v3/kv/put", json!({"value": b64("x")}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(
        err,
        json!({
            "error": "etcdserver: key is not provided",
            "message": "etcdserver: key is not provided",
            "code": 3,
        })
    );

    // Members and status over the gateway.
    let r = post(follower, "/v3/cluster/member/list", json!({}))
        .await
        .unwrap();
    let members: Value = r.json().await.unwrap();
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "{members}"
    );
    let r = post(follower, "/v3/maintenance/status", json!({}))
        .await
        .unwrap();
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["version"], "3.5.0", "{st}");
    assert_ne!(st["leader"], Value::Null);
}
