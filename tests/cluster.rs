//! End-to-end tests on real `raftkv start` processes (see `common`): a
//! cluster forms and serves on every node, survives kill -9 of its leader
//! and of all its nodes without losing an acknowledged write, answers bad
//! input as the contract says, never loses a CAS update, and refuses a data
//! dir that is not its own.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_linearizable_reads_and_writes_on_every_node() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;

    // A write on every node (followers forward to the leader), then a
    // linearizable read of it on every node.
    for writer in 0..3 {
        let key = format!("k/{writer}");
        let value = format!("written via {}", c.nodes[writer].name);
        let (s, v) = c.put(writer, &key, &value).await.unwrap();
        assert_eq!(s, 200, "write via node {writer}: {v}");
        assert_eq!(v["status"], "committed");
        assert_eq!(v["key"], key);
        let index = v["index"].as_u64().expect("index");
        for reader in 0..3 {
            let (s, v) = get_at(&c.client, &c.url(reader), &key, false)
                .await
                .unwrap();
            assert_eq!(s, 200, "read via node {reader}: {v}");
            assert_eq!(
                (&v["key"], &v["value"], &v["index"], &v["mod_revision"]),
                (&json!(key), &json!(value), &json!(index), &json!(index)),
                "read via node {reader}: {v}"
            );
        }
    }

    // Stale reads are served locally and catch up.
    for i in 0..3 {
        let url = c.url(i);
        let client = c.client.clone();
        eventually(Duration::from_secs(5), "stale read catching up", || {
            let (url, client) = (url.clone(), client.clone());
            async move {
                let (s, v) = get_at(&client, &url, "k/2", true).await.ok()?;
                (s == 200 && v["value"] == "written via node-3").then_some(())
            }
        })
        .await;
    }

    // Listing, sorted with paging.
    let (s, v) = c.get_json(1, "/kv?prefix=k/&limit=2").await.unwrap();
    assert_eq!(s, 200);
    let keys: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k/0", "k/1"]);
    assert_eq!(v["more"], true);
    let (_, v) = c.get_json(2, "/kv?prefix=k/&after=k/1").await.unwrap();
    assert_eq!(v["items"][0]["key"], "k/2");
    assert_eq!(v["more"], false);

    // Status: the leader reports its peers' match index; everyone agrees on
    // the leader and its URL.
    let (s, st) = c.get_json(leader, "/cluster/status").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(st["role"], "leader");
    assert_eq!(st["node_id"], c.nodes[leader].name);
    let peers = st["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert!(p["match_index"].as_u64().unwrap() > 0, "{st}");
    }
    for key in [
        "term",
        "commit_index",
        "applied_index",
        "last_log_index",
        "snapshot_index",
        "first_log_index",
    ] {
        assert!(st[key].is_u64(), "{key} missing: {st}");
    }
    for i in 0..3 {
        let (s, v) = c.get_json(i, "/cluster/leader").await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(v["leader_id"], c.nodes[leader].name);
        assert_eq!(v["leader_url"], c.url(leader));
        let (s, h) = c.get_json(i, "/health").await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(h["status"], "ok");
        assert_eq!(h["node_id"], c.nodes[i].name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bare_peer_form_and_single_node() {
    // The seed's bare `--peers "localhost:8002,localhost:8003"` form.
    let mut c = Cluster::start(
        3,
        &Opts {
            bare_peers: true,
            ..Opts::default()
        },
    );
    let leader = c.wait_for_leader(FORM).await;
    let follower = (leader + 1) % 3;
    let (s, v) = c.put(follower, "bare", "yes").await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, v) = get_at(&c.client, &c.url((leader + 2) % 3), "bare", false)
        .await
        .unwrap();
    assert_eq!((s, v["value"].clone()), (200, json!("yes")));
    // Names are learned from the peers' RPCs.
    let (_, v) = c.get_json(follower, "/cluster/leader").await.unwrap();
    assert_eq!(v["leader_id"], c.nodes[leader].name);

    // No peers: a one-node cluster that commits on its own.
    let mut solo = Cluster::new(1, &Opts::default());
    let args: Vec<String> = solo.nodes[0].args().iter().map(|a| a.to_string()).collect();
    let i = args.iter().position(|a| a == "--peers").unwrap();
    let mut args = args;
    args.drain(i..i + 2);
    solo.nodes[0].set_args(args);
    solo.nodes[0].start();
    solo.wait_for_leader(FORM).await;
    let (s, v) = solo.put(0, "alone", "1").await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, v) = get_at(&solo.client, &solo.url(0), "alone", false)
        .await
        .unwrap();
    assert_eq!((s, v["value"].clone()), (200, json!("1")));
}

/// Writes `key` through any node until one acknowledges it, trying the
/// nodes in turn; returns when it succeeded.
async fn write_until_ok(
    c: &Cluster,
    skip: usize,
    key: &str,
    value: &str,
    within: Duration,
) -> Instant {
    let deadline = Instant::now() + within;
    let mut i = 0;
    loop {
        let n = i % c.nodes.len();
        i += 1;
        if n != skip {
            if let Ok((200, _)) = c.put(n, key, value).await {
                return Instant::now();
            }
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no write succeeded within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until a linearizable read on node `i` returns `value`.
async fn wait_old_leader_caught_up(c: &Cluster, i: usize, key: &str, value: &str) {
    let url = c.url(i);
    let client = c.client.clone();
    eventually(Duration::from_secs(20), "old leader catching up", || {
        let (url, client, key) = (url.clone(), client.clone(), key.to_string());
        async move {
            let (s, v) = get_at(&client, &url, &key, true).await.ok()?;
            (s == 200 && v["value"] == value).then_some(())
        }
    })
    .await;
}

/// Kill -9 the leader, measure the time until the first write succeeds
/// again, restart the old leader and check it catches up; five rounds with
/// the default timing flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_failover_and_rejoin() {
    // The binary's default timing flags.
    let opts = Opts::default();
    assert_eq!((opts.heartbeat_ms, opts.election_timeout_ms), (50, 1000));
    let mut c = Cluster::start(3, &opts);
    let mut times = Vec::new();
    for round in 0..5 {
        let leader = c.wait_for_leader(FORM).await;
        let key = format!("round/{round}");
        let (s, v) = c.put(leader, &key, "before").await.unwrap();
        assert_eq!(s, 200, "{v}");

        let killed_at = Instant::now();
        c.nodes[leader].kill9();
        let ok_at = write_until_ok(&c, leader, &key, "after", Duration::from_secs(15)).await;
        let took = ok_at - killed_at;
        eprintln!(
            "round {round}: leader {} killed, first successful write after {took:?}",
            c.nodes[leader].name
        );
        times.push(took);

        // The old leader comes back, rejoins as follower and catches up.
        c.nodes[leader].start();
        wait_old_leader_caught_up(&c, leader, &key, "after").await;
        c.wait_for_leader(FORM).await;
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!("leader kill -> first write: {times:?}; median {median:?}");
    assert!(
        median < Duration::from_secs(3),
        "median failover {median:?} is not under 3 s ({times:?})"
    );
    assert!(
        sorted
            .iter()
            .filter(|t| **t >= Duration::from_secs(3))
            .count()
            <= 1,
        "more than one round took 3 s or longer: {times:?}"
    );
}

/// SIGTERM of the leader: it hands leadership to a peer before it stops, so
/// the others take writes again about a round trip later instead of after
/// an election timeout; it exits 0 and rejoins as a follower. Three rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_the_leader_hands_leadership_over() {
    let opts = Opts::default();
    let mut c = Cluster::start(3, &opts);
    let mut times = Vec::new();
    for round in 0..3 {
        let leader = c.wait_for_leader(FORM).await;
        let key = format!("handover/{round}");
        let (s, v) = c.put(leader, &key, "before").await.unwrap();
        assert_eq!(s, 200, "{v}");
        let log_before = c.nodes[leader].log().len();
        let pid = c.nodes[leader].pid().expect("leader running") as libc::pid_t;
        let signalled = Instant::now();
        // SAFETY: plain kill(2) of a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let ok_at = write_until_ok(&c, leader, &key, "after", Duration::from_secs(15)).await;
        times.push(ok_at - signalled);
        let status = c.nodes[leader].wait_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "{}", c.nodes[leader].log());
        let log = c.nodes[leader].log()[log_before..].to_string();
        assert!(
            log.contains("leadership handed over"),
            "the leader did not hand over: {log}"
        );
        c.nodes[leader].start();
        wait_old_leader_caught_up(&c, leader, &key, "after").await;
    }
    eprintln!("leader SIGTERM -> first write elsewhere: {times:?}");
}

/// Kill -9 all three nodes in the middle of a concurrent write load, restart
/// them: every write that was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_of_all_nodes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &Opts::default());
    c.wait_for_leader(FORM).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (acked, stop, attempts) = (acked.clone(), stop.clone(), attempts.clone());
        let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2000 writes per writer.
            for n in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                attempts.fetch_add(1, Ordering::Relaxed);
                let key = format!("load/{w}/{n}");
                let value = format!("v{w}-{n}");
                let url = &urls[(w + n) % urls.len()];
                if let Ok((200, _)) = put_at(&client, url, &key, &value, None).await {
                    acked.lock().unwrap().insert(key, value);
                }
            }
        }));
    }
    // Let the load run until a good number of writes were acknowledged.
    let a = acked.clone();
    eventually(Duration::from_secs(30), "writes being acknowledged", || {
        let n = a.lock().unwrap().len();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    for n in &mut c.nodes {
        n.kill9();
    }
    let before_stop = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} writes attempted, {} acknowledged ({} when the nodes were killed)",
        attempts.load(Ordering::Relaxed),
        acked.len(),
        before_stop
    );

    for n in &mut c.nodes {
        n.start();
    }
    c.wait_for_leader(FORM).await;
    // A full listing (paged) must contain every acknowledged write.
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/kv?prefix=load/&limit=1000".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_key(a)));
        }
        let (s, v) = c.get_json(0, &path).await.unwrap();
        assert_eq!(s, 200, "{v}");
        for item in v["items"].as_array().unwrap() {
            found.insert(
                item["key"].as_str().unwrap().to_string(),
                item["value"].as_str().unwrap().to_string(),
            );
        }
        if v["more"] != true {
            break;
        }
        after = found.keys().next_back().cloned();
    }
    let missing: Vec<&String> = acked.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (k, v) in &acked {
        assert_eq!(found.get(k), Some(v), "value of {k}");
    }
}

/// The contract's error table, row by row, against a follower and the
/// leader of a real cluster; the nodes stay up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_documented_status_and_json() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let (s, _) = c.put(leader, "exists", "v").await.unwrap();
    assert_eq!(s, 200);
    let long_key = "k".repeat(1025);
    let big_value = "x".repeat((1 << 20) + 1);
    let rows: Vec<(&str, String, Option<Vec<u8>>, u16)> = vec![
        ("PUT", "/kv/a".into(), Some(b"{\"value\": ".to_vec()), 400),
        ("PUT", "/kv/a".into(), Some(b"[1,2]".to_vec()), 400),
        ("PUT", "/kv/a".into(), Some(b"{}".to_vec()), 400),
        (
            "PUT",
            "/kv/a".into(),
            Some(b"{\"value\": 42}".to_vec()),
            400,
        ),
        (
            "PUT",
            "/kv/a".into(),
            Some(b"{\"value\": null}".to_vec()),
            400,
        ),
        (
            "PUT",
            "/kv/".into(),
            Some(b"{\"value\": \"v\"}".to_vec()),
            400,
        ),
        ("GET", "/kv/".into(), None, 400),
        (
            "PUT",
            format!("/kv/{long_key}"),
            Some(b"{\"value\": \"v\"}".to_vec()),
            400,
        ),
        ("GET", format!("/kv/{long_key}"), None, 400),
        (
            "PUT",
            "/kv/%C3%28".into(),
            Some(b"{\"value\": \"v\"}".to_vec()),
            400,
        ),
        ("GET", "/kv/%FF".into(), None, 400),
        (
            "PUT",
            "/kv/a?cas=notanumber".into(),
            Some(b"{\"value\": \"v\"}".to_vec()),
            400,
        ),
        ("DELETE", "/kv/exists?cas=-5".into(), None, 400),
        ("GET", "/kv/a?consistency=sometimes".into(), None, 400),
        ("GET", "/kv?limit=zero".into(), None, 400),
        (
            "PUT",
            "/kv/a".into(),
            Some(serde_json::to_vec(&json!({ "value": big_value })).unwrap()),
            413,
        ),
        (
            "PUT",
            "/kv/exists?cas=0".into(),
            Some(b"{\"value\": \"v\"}".to_vec()),
            412,
        ),
        ("DELETE", "/kv/exists?cas=999999".into(), None, 412),
        ("GET", "/no/such/route".into(), None, 404),
        ("GET", "/kv/missing".into(), None, 404),
        ("DELETE", "/kv/missing".into(), None, 404),
    ];
    for node in [leader, (leader + 1) % 3] {
        for (method, path, body, want) in &rows {
            let mut req = c
                .client
                .request(method.parse().unwrap(), format!("{}{path}", c.url(node)));
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            let r = req.send().await.unwrap_or_else(|e| {
                panic!(
                    "{method} {} on node {node}: connection failed: {e}",
                    &path[..path.len().min(40)]
                )
            });
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap_or(Value::Null);
            let short = &path[..path.len().min(40)];
            assert_eq!(status, *want, "{method} {short} on node {node}: {v}");
            assert_eq!(ct.as_deref(), Some("application/json"), "{method} {short}");
            assert!(v["error"].is_string(), "{method} {short}: {v}");
            if *want == 412 {
                assert!(v["index"].as_u64().unwrap() > 0, "{v}");
                assert_eq!(v["key"], "exists");
            }
        }
    }
    // Every node is still up and the data is intact.
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "{} died", c.nodes[i].name);
        let (s, v) = get_at(&c.client, &c.url(i), "exists", false).await.unwrap();
        assert_eq!((s, v["value"].clone()), (200, json!("v")));
        let (s, _) = get_at(&c.client, &c.url(i), "a", false).await.unwrap();
        assert_eq!(s, 404, "a rejected write must not have been applied");
    }
}

/// Concurrent CAS increments of one counter from several clients through
/// different nodes: the final value equals the number of successful CAS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_lose_no_update() {
    let mut c = Cluster::start(3, &Opts::default());
    c.wait_for_leader(FORM).await;
    let (s, v) = put_at(&c.client, &c.url(0), "counter", "0", Some(0))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let successes = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for w in 0..6 {
        let url = c.url(w % 3);
        let client = c.client.clone();
        let (successes, unknown, conflicts) =
            (successes.clone(), unknown.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            // Bounded: 15 increments per client, 500 attempts at most.
            for _ in 0..500 {
                if mine == 15 || Instant::now() > deadline {
                    break;
                }
                let Ok((200, cur)) = get_at(&client, &url, "counter", false).await else {
                    continue;
                };
                let n: u64 = cur["value"].as_str().unwrap().parse().unwrap();
                let index = cur["index"].as_u64().unwrap();
                match put_at(&client, &url, "counter", &(n + 1).to_string(), Some(index)).await {
                    Ok((200, _)) => {
                        mine += 1;
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((412, _)) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((503, v)) if v["outcome"] == "unknown" => {
                        unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (s, v) = get_at(&c.client, &c.url(1), "counter", false)
        .await
        .unwrap();
    assert_eq!(s, 200);
    let final_value: u64 = v["value"].as_str().unwrap().parse().unwrap();
    let (ok, unk) = (
        successes.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    eprintln!(
        "final {final_value}, {ok} successful CAS, {} conflicts, {unk} unknown outcomes",
        conflicts.load(Ordering::Relaxed)
    );
    assert_eq!(ok, 90, "every client should finish its increments");
    // A write with an unknown outcome may have applied; none should occur
    // on a healthy cluster, but the invariant must hold either way.
    assert!(
        final_value >= ok && final_value <= ok + unk,
        "final value {final_value} vs {ok} successes (+{unk} unknown)"
    );
    assert_eq!(unk, 0, "unexpected unknown outcomes on a healthy cluster");
}

/// SIGTERM stops a node with exit 0; a data dir of another node, another
/// cluster or with a damaged record stops the process with exit code ≠ 0
/// and a message naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean_shutdown_and_refused_data_dirs() {
    let mut c = Cluster::new(1, &Opts::default());
    let args: Vec<String> = c.nodes[0].args().to_vec();
    let peers_at = args.iter().position(|a| a == "--peers").unwrap();
    let mut base = args.clone();
    base.drain(peers_at..peers_at + 2);
    c.nodes[0].set_args(base.clone());
    c.nodes[0].start();
    c.wait_for_leader(FORM).await;
    for i in 0..20 {
        let (s, _) = c.put(0, &format!("d/{i}"), "v").await.unwrap();
        assert_eq!(s, 200);
    }
    let status = c.nodes[0].terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {}", c.nodes[0].log());

    // Restart: recovered.
    c.nodes[0].start();
    c.wait_for_leader(FORM).await;
    let (s, v) = get_at(&c.client, &c.url(0), "d/19", false).await.unwrap();
    assert_eq!((s, v["value"].clone()), (200, json!("v")));
    let status = c.nodes[0].terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));

    let replace = |args: &[String], flag: &str, value: &str| -> Vec<String> {
        let mut a = args.to_vec();
        match a.iter().position(|x| x == flag) {
            Some(i) => a[i + 1] = value.to_string(),
            None => {
                a.push(flag.to_string());
                a.push(value.to_string());
            }
        }
        a
    };
    let refused = |node: &mut Node, what: &str, needles: &[&str]| {
        let before = node.log().len();
        node.start();
        let status = node.wait_exit(Duration::from_secs(15));
        let log = node.log()[before..].to_string();
        assert_ne!(status.code(), Some(0), "{what}: started anyway: {log}");
        for n in needles {
            assert!(
                log.to_lowercase().contains(&n.to_lowercase()),
                "{what}: message should mention {n:?}: {log}"
            );
        }
    };

    // Another node's data dir.
    c.nodes[0].set_args(replace(&base, "--node-id", "intruder"));
    refused(&mut c.nodes[0], "foreign node id", &["node-1", "intruder"]);
    // Another cluster's data dir.
    c.nodes[0].set_args(replace(&base, "--cluster-id", "elsewhere"));
    refused(&mut c.nodes[0], "foreign cluster id", &["elsewhere"]);

    // A damaged record in the Raft log tree.
    {
        let db = raftkv::storage::sled_store::sled_config(&c.nodes[0].data_dir)
            .open()
            .expect("open the node's sled db");
        let log = db.open_tree("raft_log").unwrap();
        let (k, v) = log.iter().next().unwrap().unwrap();
        let mut bad = v.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        log.insert(k, bad).unwrap();
        db.flush().unwrap();
    }
    c.nodes[0].set_args(base.clone());
    refused(&mut c.nodes[0], "damaged log record", &["raft_log"]);
}

/// With a small `--snapshot-threshold`, a follower that was down while the
/// log was compacted past its position catches up through InstallSnapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_through_a_snapshot() {
    let mut c = Cluster::start(
        3,
        &Opts {
            extra: vec!["--snapshot-threshold".into(), "20".into()],
            ..Opts::default()
        },
    );
    let leader = c.wait_for_leader(FORM).await;
    let lagging = (leader + 1) % 3;
    c.nodes[lagging].kill9();
    for i in 0..100 {
        let key = format!("s/{i:03}");
        write_until_ok(&c, lagging, &key, &format!("v{i}"), Duration::from_secs(10)).await;
    }
    let leader = c.wait_for_leader(FORM).await;
    let (_, st) = c.get_json(leader, "/cluster/status").await.unwrap();
    let snap = st["snapshot_index"].as_u64().unwrap();
    assert!(snap >= 60, "the leader compacted its log: {st}");
    assert_eq!(st["first_log_index"].as_u64().unwrap(), snap + 1, "{st}");

    c.nodes[lagging].start();
    let url = c.url(lagging);
    let client = c.client.clone();
    eventually(Duration::from_secs(20), "the follower catching up", || {
        let (url, client) = (url.clone(), client.clone());
        async move {
            let (s, v) = get_at(&client, &url, "s/099", true).await.ok()?;
            (s == 200 && v["value"] == "v99").then_some(())
        }
    })
    .await;
    // The data becomes visible a moment before the log line is written.
    let node = &c.nodes[lagging];
    eventually(
        Duration::from_secs(5),
        "the snapshot install log line",
        || {
            let installed = node.log().contains("installed snapshot");
            async move { installed.then_some(()) }
        },
    )
    .await;
    let list = |i: usize| {
        let c = &c;
        async move {
            let (s, v) = c
                .get_json(i, "/kv?prefix=s/&limit=1000&consistency=stale")
                .await
                .unwrap();
            assert_eq!(s, 200);
            v["items"].clone()
        }
    };
    let expected = list(leader).await;
    assert_eq!(expected.as_array().unwrap().len(), 100);
    eventually(Duration::from_secs(10), "identical listings", || {
        let expected = expected.clone();
        let l = list(lagging);
        async move { (l.await == expected).then_some(()) }
    })
    .await;
}
