//! The Rust `etcd-client` crate (etcd's gRPC API as a library) against a
//! RaftKV cluster: KV, transactions, watches (several on one stream,
//! resuming from a revision, cancelled by a compaction), member list,
//! status, hash_kv and move_leader.
//!
//! Each test first runs its body against a real etcd 3.4 cluster when etcd
//! is installed, so an assertion that etcd itself fails is a broken test,
//! not a RaftKV bug; then against a fresh RaftKV cluster. Revisions are
//! checked relative to the revision read at the start.
//!
//! Built only with `--features etcd-client-tests` (etcd-client's build
//! script needs `protoc`); without it this file compiles to nothing.
#![cfg(feature = "etcd-client-tests")]

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchResponse, WatchStream,
};

mod common;
#[path = "common/etcd.rs"]
mod etcd;

use etcd::{say, EtcdCluster, REQUIRE_ENV};

/// Runs `body(system, endpoints)` on etcd (when installed) and on RaftKV.
fn on_both<F, Fut>(test: &str, body: F)
where
    F: Fn(&'static str, Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let _serial = etcd::serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if etcd::on_path("etcd") && etcd::on_path("etcdctl") {
        let cluster = EtcdCluster::start(3);
        rt.block_on(body("etcd", cluster.endpoints.clone()));
    } else if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: etcd not installed, and {REQUIRE_ENV}=1 requires it");
    } else {
        say(&format!(
            "SKIPPED: etcd not installed: {test} runs against RaftKV only, unchecked against etcd"
        ));
    }
    let (_cluster, ctl) = etcd::start_raftkv();
    rt.block_on(body("raftkv", ctl.endpoints.clone()));
    say(&format!("{test}: passed on RaftKV"));
}

async fn connect(who: &str, endpoints: &[String]) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    match Client::connect(endpoints, Some(opts)).await {
        Ok(c) => c,
        Err(e) => panic!("{who}: cannot connect to {endpoints:?}: {e}"),
    }
}

/// The current revision (from an empty range's header).
async fn revision(who: &str, c: &mut Client) -> i64 {
    let r = c
        .get("etcd-client-baseline-probe", None)
        .await
        .unwrap_or_else(|e| panic!("{who}: get: {e}"));
    r.header().map(|h| h.revision()).unwrap_or(0)
}

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

#[test]
fn kv_put_get_delete() {
    on_both("kv_put_get_delete", |who, eps| async move {
        let mut c = connect(who, &eps).await;
        let base = revision(who, &mut c).await;
        for (i, (k, v)) in [("a", "1"), ("ab", "2"), ("b", "3"), ("c", "4"), ("a", "5")]
            .into_iter()
            .enumerate()
        {
            let r = c.put(k, v, None).await.expect("put");
            assert_eq!(
                r.header().map(|h| h.revision()),
                Some(base + i as i64 + 1),
                "{who}: every put makes one revision"
            );
        }
        let r = c.get("a", None).await.expect("get");
        let kv = &r.kvs()[0];
        assert_eq!(
            (
                kv.value(),
                kv.create_revision() - base,
                kv.mod_revision() - base,
                kv.version()
            ),
            (&b"5"[..], 1, 5, 2),
            "{who}: get a"
        );
        let r = c
            .get("a", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get prefix");
        assert_eq!(keys(&r), ["a", "ab"], "{who}: prefix");
        let r = c
            .get("ab", Some(GetOptions::new().with_range("c")))
            .await
            .expect("range");
        assert_eq!(keys(&r), ["ab", "b"], "{who}: [ab, c)");
        let r = c
            .get("b", Some(GetOptions::new().with_from_key()))
            .await
            .expect("from key");
        assert_eq!(keys(&r), ["b", "c"], "{who}: from b");
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
            .await
            .expect("limit");
        assert_eq!(
            (keys(&r), r.more(), r.count()),
            (vec!["a".to_string(), "ab".to_string()], true, 4),
            "{who}: limit 2"
        );
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Mod, SortOrder::Descend),
                ),
            )
            .await
            .expect("sorted");
        assert_eq!(
            keys(&r),
            ["a", "c", "b", "ab"],
            "{who}: by mod revision, descending"
        );
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
            .await
            .expect("keys only");
        assert!(
            r.kvs().iter().all(|kv| kv.value().is_empty()),
            "{who}: keys only"
        );
        let r = c
            .get(
                "",
                Some(GetOptions::new().with_all_keys().with_count_only()),
            )
            .await
            .expect("count only");
        assert_eq!((r.kvs().len(), r.count()), (0, 4), "{who}: count only");
        let r = c
            .get("a", Some(GetOptions::new().with_revision(base + 1)))
            .await
            .expect("old revision");
        assert_eq!(r.kvs()[0].value(), b"1", "{who}: a at base+1");
        let r = c
            .put("b", "3b", Some(PutOptions::new().with_prev_key()))
            .await
            .expect("put prev");
        assert_eq!(
            r.prev_key().map(|kv| kv.value()),
            Some(&b"3"[..]),
            "{who}: prev kv"
        );
        let r = c
            .delete(
                "a",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .expect("delete prefix");
        assert_eq!(r.deleted(), 2, "{who}: deleted a, ab");
        let prev: Vec<&[u8]> = r.prev_kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(prev, [&b"a"[..], &b"ab"[..]], "{who}: prev kvs");
        let r = c.delete("missing", None).await.expect("delete missing");
        assert_eq!(r.deleted(), 0, "{who}: nothing to delete");
        assert_eq!(
            r.header().map(|h| h.revision()),
            Some(base + 7),
            "{who}: deleting nothing makes no revision"
        );
    });
}

#[test]
fn txn_compare_branches() {
    on_both("txn_compare_branches", |who, eps| async move {
        let mut c = connect(who, &eps).await;
        let base = revision(who, &mut c).await;
        c.put("k1", "v1", None).await.expect("put");
        c.put("k2", "v2", None).await.expect("put");
        let t = Txn::new()
            .when([
                Compare::value("k1", CompareOp::Equal, "v1"),
                Compare::mod_revision("k2", CompareOp::Equal, base + 2),
                Compare::version("k3", CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put("k1", "v1b", None),
                TxnOp::put("k3", "v3", None),
                TxnOp::get("k", Some(GetOptions::new().with_prefix())),
            ])
            .or_else([TxnOp::put("wrong", "x", None)]);
        let r = c.txn(t).await.expect("txn");
        assert!(r.succeeded(), "{who}: compares hold");
        assert_eq!(
            r.header().map(|h| h.revision()),
            Some(base + 3),
            "{who}: a whole txn is one revision"
        );
        match r.op_responses().get(2) {
            Some(TxnOpResponse::Get(g)) => {
                let seen: Vec<(String, i64)> = g
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.mod_revision() - base,
                        )
                    })
                    .collect();
                assert_eq!(
                    seen,
                    [
                        ("v1b".to_string(), 3),
                        ("v2".to_string(), 2),
                        ("v3".to_string(), 3)
                    ],
                    "{who}: a txn's read sees its own writes"
                );
            }
            other => panic!("{who}: third response is not a range: {other:?}"),
        }
        let t = Txn::new()
            .when([Compare::create_revision("k1", CompareOp::Greater, base + 1)])
            .and_then([TxnOp::put("wrong", "x", None)])
            .or_else([TxnOp::get("k1", None), TxnOp::delete("k3", None)]);
        let r = c.txn(t).await.expect("txn");
        assert!(
            !r.succeeded(),
            "{who}: create revision is base+1, not greater"
        );
        assert_eq!(
            r.header().map(|h| h.revision()),
            Some(base + 4),
            "{who}: failure branch wrote"
        );
        let t = Txn::new()
            .when([Compare::value("k1", CompareOp::NotEqual, "v1b")])
            .or_else([TxnOp::get("k1", None)]);
        let r = c.txn(t).await.expect("read-only txn");
        assert_eq!(
            r.header().map(|h| h.revision()),
            Some(base + 4),
            "{who}: a read-only txn makes no revision"
        );
        let r = c.get("wrong", None).await.expect("get");
        assert!(r.kvs().is_empty(), "{who}: no branch wrote `wrong`");
    });
}

/// Next watch response within a bounded time.
async fn next(who: &str, s: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(15), s.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("{who}: watch stream ended"),
        Ok(Err(e)) => panic!("{who}: watch stream error: {e}"),
        Err(_) => panic!("{who}: no watch response within 15 s"),
    }
}

/// (watch id, type, key, value, mod revision - base, prev value)
type Ev = (i64, &'static str, String, String, i64, Option<String>);

fn events_of(r: &WatchResponse, base: i64) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv();
            (
                r.watch_id(),
                match e.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                },
                kv.map(|k| String::from_utf8_lossy(k.key()).into_owned())
                    .unwrap_or_default(),
                kv.map(|k| String::from_utf8_lossy(k.value()).into_owned())
                    .unwrap_or_default(),
                kv.map(|k| k.mod_revision() - base).unwrap_or(0),
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            )
        })
        .collect()
}

#[test]
fn watch_many_on_one_stream() {
    on_both("watch_many_on_one_stream", |who, eps| async move {
        let mut c = connect(who, &eps).await;
        let base = revision(who, &mut c).await;
        c.put("w/a", "1", None).await.expect("put"); // base+1
        c.put("w/b", "2", None).await.expect("put"); // base+2
        let mut s = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(base + 1)
                        .with_prev_key(),
                ),
            )
            .await
            .expect("watch");
        let created = next(who, &mut s).await;
        assert!(created.created(), "{who}: first response creates the watch");
        let id_a = created.watch_id();
        s.watch(
            "w/b",
            Some(WatchOptions::new().with_start_revision(base + 3)),
        )
        .await
        .expect("second watch");
        s.watch(
            "w/a",
            Some(
                WatchOptions::new()
                    .with_range("w/c")
                    .with_start_revision(base + 2),
            ),
        )
        .await
        .expect("third watch");
        c.put("w/b", "3", None).await.expect("put"); // base+3
        c.delete("w/a", None).await.expect("delete"); // base+4
        c.put("x", "0", None).await.expect("put"); // base+5
        c.put("w/c", "5", None).await.expect("put"); // base+6
        let mut ids = vec![id_a];
        let mut got: Vec<Ev> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        // 5 events for the prefix watch, 1 for w/b, 3 for [w/a, w/c).
        while (got.len() < 9 || ids.len() < 3) && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            if r.created() {
                ids.push(r.watch_id());
            }
            got.extend(events_of(&r, base));
        }
        assert_eq!(ids.len(), 3, "{who}: three watches created: {got:?}");
        let (a, b, w3) = (ids[0], ids[1], ids[2]);
        assert!(
            a != b && b != w3 && a != w3,
            "{who}: distinct watch ids {ids:?}"
        );
        let of = |id: i64| -> Vec<Ev> { got.iter().filter(|e| e.0 == id).cloned().collect() };
        let s_ = |x: &str| x.to_string();
        assert_eq!(
            of(a),
            vec![
                (a, "PUT", s_("w/a"), s_("1"), 1, None),
                (a, "PUT", s_("w/b"), s_("2"), 2, None),
                (a, "PUT", s_("w/b"), s_("3"), 3, Some(s_("2"))),
                (a, "DELETE", s_("w/a"), s_(""), 4, Some(s_("1"))),
                (a, "PUT", s_("w/c"), s_("5"), 6, None),
            ],
            "{who}: prefix watch from base+1 with prev kv"
        );
        assert_eq!(
            of(b),
            vec![(b, "PUT", s_("w/b"), s_("3"), 3, None)],
            "{who}: key watch from base+3"
        );
        assert_eq!(
            of(w3),
            vec![
                (w3, "PUT", s_("w/b"), s_("2"), 2, None),
                (w3, "PUT", s_("w/b"), s_("3"), 3, None),
                (w3, "DELETE", s_("w/a"), s_(""), 4, None),
            ],
            "{who}: range watch [w/a, w/c) from base+2"
        );
        s.cancel(b).await.expect("cancel");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut cancelled = false;
        while !cancelled && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            cancelled = r.canceled() && r.watch_id() == b;
        }
        assert!(cancelled, "{who}: cancel is confirmed for its watch id");
        c.put("w/b", "after-cancel", None).await.expect("put"); // base+7
                                                                // Both remaining watches see base+7 (maybe in separate responses).
        let mut evs: Vec<Ev> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while evs.len() < 2 && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            evs.extend(events_of(&r, base));
        }
        let mut ids_seen: Vec<i64> = evs.iter().map(|e| e.0).collect();
        ids_seen.sort();
        let mut want = vec![a, w3];
        want.sort();
        assert!(
            ids_seen == want && evs.iter().all(|e| e.4 == 7),
            "{who}: the cancelled watch gets nothing more, the others go on: {evs:?}"
        );
    });
}

#[test]
fn watch_resume_from_revision() {
    on_both("watch_resume_from_revision", |who, eps| async move {
        let mut c = connect(who, &eps).await;
        let base = revision(who, &mut c).await;
        for i in 1..=6 {
            c.put("r", i.to_string(), None).await.expect("put"); // base+i
        }
        let mut s = c
            .watch("r", Some(WatchOptions::new().with_start_revision(base + 1)))
            .await
            .expect("watch");
        let mut seen: Vec<i64> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while seen.len() < 3 && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            seen.extend(events_of(&r, base).iter().map(|e| e.4));
        }
        // Stop after the third event (and whatever came in the same
        // response), as a client that lost its connection would.
        drop(s);
        let last = *seen.last().expect("some events");
        for i in 7..=8 {
            c.put("r", i.to_string(), None).await.expect("put");
        }
        let mut s = c
            .watch(
                "r",
                Some(WatchOptions::new().with_start_revision(base + last + 1)),
            )
            .await
            .expect("resume");
        let deadline = Instant::now() + Duration::from_secs(15);
        while seen.len() < 8 && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            seen.extend(events_of(&r, base).iter().map(|e| e.4));
        }
        assert_eq!(
            seen,
            (1..=8).collect::<Vec<i64>>(),
            "{who}: every revision exactly once"
        );
    });
}

#[test]
fn watch_cancelled_by_compaction() {
    on_both("watch_cancelled_by_compaction", |who, eps| async move {
        let mut c = connect(who, &eps).await;
        let base = revision(who, &mut c).await;
        for i in 1..=5 {
            c.put("c", i.to_string(), None).await.expect("put");
        }
        c.compact(base + 3, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact");
        let err = c
            .get("c", Some(GetOptions::new().with_revision(base + 2)))
            .await
            .expect_err("a compacted revision is refused");
        assert!(
            err.to_string()
                .contains("mvcc: required revision has been compacted"),
            "{who}: {err}"
        );
        let mut s = c
            .watch("c", Some(WatchOptions::new().with_start_revision(base + 1)))
            .await
            .expect("watch");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut cancel = None;
        while cancel.is_none() && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            if r.canceled() {
                cancel = Some((r.compact_revision() - base, r.events().len()));
            }
        }
        assert_eq!(
            cancel,
            Some((3, 0)),
            "{who}: cancelled with the compact revision, no events"
        );
        let mut s = c
            .watch("c", Some(WatchOptions::new().with_start_revision(base + 3)))
            .await
            .expect("watch");
        let mut revs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while revs.len() < 3 && Instant::now() < deadline {
            let r = next(who, &mut s).await;
            assert!(!r.canceled(), "{who}: base+3 is still watchable");
            revs.extend(events_of(&r, base).iter().map(|e| e.4));
        }
        assert_eq!(revs, [3, 4, 5], "{who}: from the compact revision on");
    });
}

/// Every member's (endpoint, member id, leader id), each asked directly.
async fn statuses(who: &str, eps: &[String]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for ep in eps {
        let mut c = connect(who, std::slice::from_ref(ep)).await;
        let s = c
            .status()
            .await
            .unwrap_or_else(|e| panic!("{who}: status {ep}: {e}"));
        out.push((
            ep.clone(),
            s.header().map(|h| h.member_id()).unwrap_or(0),
            s.leader(),
        ));
    }
    out
}

#[test]
fn cluster_members_status_hash_move_leader() {
    on_both(
        "cluster_members_status_hash_move_leader",
        |who, eps| async move {
            let mut c = connect(who, &eps).await;
            let base = revision(who, &mut c).await;
            for i in 1..=3 {
                c.put(format!("h/{i}"), "v", None).await.expect("put");
            }
            let m = c.member_list().await.expect("member list");
            let mut ids: Vec<u64> = m.members().iter().map(|m| m.id()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3, "{who}: three distinct members");
            let mut urls: Vec<String> = m
                .members()
                .iter()
                .flat_map(|m| m.client_urls().to_vec())
                .collect();
            urls.sort();
            let mut want: Vec<String> = eps.iter().map(|e| format!("http://{e}")).collect();
            want.sort();
            assert_eq!(urls, want, "{who}: client URLs are the endpoints");
            let st = statuses(who, &eps).await;
            let leader = st[0].2;
            assert!(
                st.iter().all(|s| s.2 == leader),
                "{who}: one leader: {st:?}"
            );
            assert!(ids.contains(&leader), "{who}: the leader is a member");
            assert!(
                st.iter().all(|s| ids.contains(&s.1)),
                "{who}: headers name members"
            );
            // Hash of the same revision: equal on every member.
            let mut hashes = Vec::new();
            for ep in &eps {
                let mut one = connect(who, std::slice::from_ref(ep)).await;
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    match one.hash_kv(base + 3).await {
                        Ok(h) => {
                            hashes.push(h.hash());
                            break;
                        }
                        // A follower may not have applied base+3 yet.
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("{who}: hash_kv on {ep}: {e}"),
                    }
                }
            }
            assert!(
                hashes.windows(2).all(|w| w[0] == w[1]),
                "{who}: hash_kv(base+3) equal on all members: {hashes:?}"
            );
            // Move leadership to a follower, through the leader.
            let (leader_ep, target) = {
                let l = st.iter().find(|s| s.1 == leader).expect("leader's status");
                let f = st.iter().find(|s| s.1 != leader).expect("a follower");
                (l.0.clone(), f.1)
            };
            let mut lc = connect(who, &[leader_ep]).await;
            lc.move_leader(target).await.expect("move leader");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let st = statuses(who, &eps).await;
                if st.iter().all(|s| s.2 == target) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{who}: leader never became {target:x}: {st:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let r = c
                .put("after-move", "1", None)
                .await
                .expect("put after move");
            assert_eq!(
                r.header().map(|h| h.revision()),
                Some(base + 4),
                "{who}: writes go on"
            );
        },
    );
}
