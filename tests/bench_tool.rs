//! `raftkv bench` end to end: bounded runs of every workload against a real
//! 3-node cluster (see `common`), checking that the report's counts add up
//! and that the writes really landed; the etcd target against a fake etcd
//! JSON gateway that checks every request's encoding; error accounting
//! against nodes that are down; option validation; `--protocol grpc`
//! against an in-process etcd v3 gRPC server (the project's
//! `EtcdService` over an in-memory backend that counts what it served).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Parser;
use common::*;
use raftkv::bench::{self, BenchArgs, Report, UsageError};
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// Parses `raftkv bench` options.
fn args(list: &[&str]) -> BenchArgs {
    Cli::try_parse_from(std::iter::once("bench").chain(list.iter().copied()))
        .unwrap_or_else(|e| panic!("bad test arguments {list:?}: {e}"))
        .bench
}

/// Checks what every report must satisfy and returns it as JSON, the form
/// scripts read.
fn check_consistent(r: &Report) -> Value {
    assert_eq!(
        r.ops,
        r.successes + r.conflicts + r.errors,
        "every operation is a success, a conflict or an error: {r:?}"
    );
    assert_eq!(r.ops, r.reads + r.writes, "{r:?}");
    assert_eq!(
        r.errors,
        r.errors_by_kind.values().sum::<u64>(),
        "errors by kind add up: {r:?}"
    );
    assert!(r.successes > 0, "something succeeded: {r:?}");
    let l = &r.latency_ms;
    assert_eq!(l.count, r.successes + r.conflicts, "{r:?}");
    assert!(
        0.0 < l.min
            && l.min <= l.p50
            && l.p50 <= l.p90
            && l.p90 <= l.p99
            && l.p99 <= l.p999
            && l.p999 <= l.max,
        "percentiles in order: {l:?}"
    );
    assert!(r.duration_s > 0.0 && r.throughput_ops_s > 0.0, "{r:?}");
    let expected = (r.successes + r.conflicts) as f64 / r.duration_s;
    assert!((r.throughput_ops_s - expected).abs() < 1e-6 * expected.max(1.0));
    assert_eq!(r.read_latency_ms.count + r.write_latency_ms.count, l.count);

    let v = serde_json::to_value(r).unwrap();
    for field in [
        "target",
        "workload",
        "connections",
        "ops",
        "successes",
        "errors",
        "errors_by_kind",
        "throughput_ops_s",
        "duration_s",
    ] {
        assert!(v.get(field).is_some(), "JSON has {field}: {v}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["latency_ms"][p].is_number(),
            "JSON has latency_ms.{p}: {v}"
        );
    }
    // The JSON line round-trips (what --summarize reads).
    let back: Report = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(&back, r);
    v
}

/// Every item under `prefix` (one page is enough: the tests use few keys).
async fn list(c: &Cluster, prefix: &str) -> Vec<Value> {
    let (s, v) = c
        .get_json(0, &format!("/kv?prefix={}&limit=1000", encode_key(prefix)))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["more"], false);
    v["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_workload_runs_bounded_against_a_real_cluster() {
    let mut c = Cluster::start(3, &Opts::default());
    c.wait_for_leader(FORM).await;
    let nodes = (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",");
    let pids = c
        .nodes
        .iter()
        .map(|n| n.pid().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let common_args = |workload: &'static str, prefix: &'static str| {
        vec![
            "--nodes".to_string(),
            nodes.clone(),
            "--workload".into(),
            workload.into(),
            "--ops".into(),
            "200".into(),
            "--duration".into(),
            "120".into(),
            "--connections".into(),
            "4".into(),
            "--key-prefix".into(),
            prefix.into(),
            "--value-size".into(),
            "100".into(),
            "--pids".into(),
            pids.clone(),
            "--seed".into(),
            "7".into(),
            "--json".into(),
        ]
    };
    let run = |extra: Vec<String>| async move {
        let list: Vec<&str> = extra.iter().map(String::as_str).collect();
        bench::execute(args(&list)).await.expect("bench runs")
    };

    // Puts: exactly the requested count, all to the leader; the keys exist
    // afterwards with values of the requested size.
    let mut a = common_args("put", "put/");
    a.extend(["--keys".into(), "50".into()]);
    let r = run(a).await;
    let v = check_consistent(&r);
    assert_eq!(v["workload"], "put");
    assert_eq!((r.ops, r.writes, r.reads), (200, 200, 0), "{r:?}");
    assert_eq!(r.stopped_by, "ops");
    assert_eq!(r.endpoints.len(), 1, "leader routing: {r:?}");
    let cpu = r.cpu.as_ref().expect("--pids measures CPU");
    assert_eq!(cpu.per_pid.len(), 3, "{cpu:?}");
    assert!(cpu.errors.is_empty(), "{cpu:?}");
    assert!(
        cpu.cpu_ms > 0.0,
        "200 fsync'd writes cost the nodes CPU: {cpu:?}"
    );
    assert!((cpu.cpu_ms_per_op - cpu.cpu_ms / r.ops as f64).abs() < 1e-9);
    let items = list(&c, "put/").await;
    assert!(
        !items.is_empty() && items.len() <= 50,
        "{} keys",
        items.len()
    );
    assert!(items.len() as u64 <= r.successes);
    for item in &items {
        assert_eq!(item["key"].as_str().unwrap().len(), 16, "{item}");
        assert_eq!(item["value"].as_str().unwrap().len(), 100, "{item}");
    }
    // The report says where the keys are and that they were left there.
    assert_eq!((r.key_prefix.as_str(), r.wrote_keys), ("put/", true));
    assert!(r.cleanup.is_none());
    assert!(
        r.human().contains(r#"up to 50 keys written under the prefix "put/" are left in the cluster; --cleanup deletes them"#),
        "{}",
        r.human()
    );

    // --cleanup deletes every key of the key space after the run (and
    // nothing else), and says so.
    let (s, v) = c.put(0, "clean/other", "keep me").await.unwrap();
    assert_eq!(s, 200, "{v}");
    let mut a = common_args("put", "clean/");
    a.extend(["--keys".into(), "40".into(), "--cleanup".into()]);
    let r = run(a).await;
    check_consistent(&r);
    let cleanup = r.cleanup.as_ref().expect("--cleanup reports");
    assert!(cleanup.complete(), "{cleanup:?}");
    assert_eq!(cleanup.deleted + cleanup.absent, 40, "{cleanup:?}");
    assert!(
        cleanup.deleted >= 1 && cleanup.deleted <= r.successes,
        "{cleanup:?}"
    );
    let left: Vec<String> = list(&c, "clean/")
        .await
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["clean/other"], "only the bench's keys are gone");
    assert!(r.human().contains("cleaned up: deleted"), "{}", r.human());

    // Paced puts: 100 ops/s over 4 connections for 2 s is one request per
    // connection every 40 ms, so at most 51 per connection (an unpaced run
    // does thousands); the machine figures are reported.
    let paced = [
        "--nodes",
        nodes.as_str(),
        "--connections",
        "4",
        "--duration",
        "2",
        "--rate",
        "100",
        "--stall-probe",
        "--key-prefix",
        "paced/",
        "--keys",
        "20",
        "--json",
    ];
    let r = bench::execute(args(&paced))
        .await
        .expect("paced bench runs");
    check_consistent(&r);
    assert!(
        (40..=204).contains(&r.ops),
        "paced to 100 ops/s for 2 s: {r:?}"
    );
    assert_eq!(r.offered_rate_ops_s, Some(100.0));
    let stalls = r.stalls.as_ref().expect("--stall-probe reports");
    assert!(stalls.wakeups > 0, "{stalls:?}");
    assert!(r.steal_pct.is_some(), "Linux has /proc/stat: {r:?}");
    let bad = bench::execute(args(&["--rate", "0", "--nodes", nodes.as_str()])).await;
    assert!(
        bad.as_ref()
            .is_err_and(|e| e.downcast_ref::<UsageError>().is_some()),
        "--rate 0 is a usage error"
    );

    // Gets: every key was pre-populated, so no read misses.
    let mut a = common_args("get", "get/");
    a.extend(["--keys".into(), "30".into()]);
    let r = run(a).await;
    check_consistent(&r);
    assert_eq!((r.ops, r.reads, r.writes), (200, 200, 0), "{r:?}");
    assert!(!r.errors_by_kind.contains_key("not_found"), "{r:?}");
    assert_eq!(list(&c, "get/").await.len(), 30);

    // Stale gets spread over every node.
    let mut a = common_args("get", "get/");
    a.extend([
        "--keys".into(),
        "30".into(),
        "--consistency".into(),
        "stale".into(),
        "--target-nodes".into(),
        "all".into(),
        "--no-populate".into(),
    ]);
    let r = run(a).await;
    check_consistent(&r);
    assert_eq!(r.consistency, "stale");
    assert_eq!(r.endpoints.len(), 3, "{r:?}");

    // Mixed: both kinds, in the requested proportion (roughly).
    let mut a = common_args("mixed", "mixed/");
    a.extend([
        "--keys".into(),
        "20".into(),
        "--read-ratio".into(),
        "0.5".into(),
    ]);
    let r = run(a).await;
    check_consistent(&r);
    assert!(r.reads > 40 && r.writes > 40, "{r:?}");
    assert!(r.read_latency_ms.count > 0 && r.write_latency_ms.count > 0);

    // CAS: read-modify-writes that succeed move the keys' mod index.
    let before: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for i in 0..5 {
            let key = format!("cas/{i:012}");
            let (s, v) = c.put(0, &key, "start").await.unwrap();
            assert_eq!(s, 200, "{v}");
            m.insert(key, v["index"].as_u64().unwrap());
        }
        m
    };
    let mut a = common_args("cas", "cas/");
    a.extend(["--keys".into(), "5".into(), "--no-populate".into()]);
    let r = run(a).await;
    check_consistent(&r);
    assert_eq!(r.writes, 200);
    let after = list(&c, "cas/").await;
    assert_eq!(after.len(), 5);
    let moved = after
        .iter()
        .filter(|item| item["index"].as_u64().unwrap() > before[item["key"].as_str().unwrap()])
        .count();
    assert!(moved >= 1, "some CAS landed: {after:?}");
    for item in &after {
        if item["index"].as_u64().unwrap() > before[item["key"].as_str().unwrap()] {
            assert_eq!(item["value"].as_str().unwrap().len(), 100, "{item}");
        }
    }
    // Every successful CAS changed a key, so the keys moved at most that
    // often, and the last index covers at least that many writes.
    assert!(moved as u64 <= r.successes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_are_down_are_counted_as_connect_errors() {
    let ports = free_ports(2);
    let nodes = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let a = [
        "--nodes",
        &nodes,
        "--target-nodes",
        "all",
        "--ops",
        "20",
        "--duration",
        "30",
        "--connections",
        "2",
        "--timeout-ms",
        "2000",
    ];
    let r = bench::execute(args(&a))
        .await
        .expect("the run itself completes");
    assert_eq!(r.ops, 20, "{r:?}");
    assert_eq!(r.successes, 0);
    assert_eq!(r.errors_by_kind.get("connect"), Some(&20), "{r:?}");
    assert_eq!(r.latency_ms.count, 0);
    // `run` reports the failure (exit code 3 on the command line).
    let err = bench::run(args(&a)).await.unwrap_err();
    assert!(
        err.to_string().contains("no operation succeeded"),
        "{err:#}"
    );
}

#[tokio::test]
async fn bad_options_are_usage_errors() {
    for bad in [
        &["--key-size", "4"][..],
        &["--key-size", "2000"],
        &["--read-ratio", "1.5"],
        &["--duration", "0"],
        &["--duration=-1"],
        &["--value-size", "2000000"],
        &["--workload", "get", "--keys", "2000000"],
        &["--nodes", "https://x:1"],
    ] {
        let mut list = bad.to_vec();
        list.extend(["--target-nodes", "all"]);
        let err = bench::execute(args(&list)).await.unwrap_err();
        assert!(
            err.downcast_ref::<UsageError>().is_some(),
            "{bad:?} is a usage error, got {err:#}"
        );
    }
    assert!(Cli::try_parse_from(["bench", "--connections", "0"]).is_err());
    assert!(Cli::try_parse_from(["bench", "--ops", "0"]).is_err());
    assert!(Cli::try_parse_from(["bench", "--workload", "scan"]).is_err());
}

// ---------------------------------------------------------------------------
// A fake etcd v3 JSON gateway, strict about the request shapes.

#[derive(Default)]
struct FakeEtcd {
    member_id: String,
    leader_id: String,
    revision: i64,
    /// key -> (value, mod_revision)
    data: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    puts: u64,
    linearizable_ranges: u64,
    serializable_ranges: u64,
    txns: u64,
    deletes: u64,
    /// Requests that did not have the expected shape.
    rejected: Vec<String>,
}

type Fake = Arc<Mutex<FakeEtcd>>;

fn decode(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v[field]
        .as_str()
        .ok_or_else(|| format!("{field} is not a string in {v}"))?;
    B64.decode(s)
        .map_err(|e| format!("{field} is not base64: {e}"))
}

fn only_fields(v: &Value, allowed: &[&str]) -> Result<(), String> {
    let obj = v.as_object().ok_or_else(|| format!("not an object: {v}"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unexpected field {k} in {v}")),
        None => Ok(()),
    }
}

fn reject(fake: &Fake, why: String) -> Response {
    fake.lock().unwrap().rejected.push(why.clone());
    (StatusCode::BAD_REQUEST, why).into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))
}

fn header(f: &FakeEtcd) -> Value {
    json!({"cluster_id": "1", "member_id": f.member_id, "revision": f.revision.to_string(), "raft_term": "2"})
}

async fn fake_put(State(fake): State<Fake>, body: Bytes) -> Response {
    let parsed = parse_body(&body).and_then(|v| {
        only_fields(&v, &["key", "value"])?;
        Ok((decode(&v, "key")?, decode(&v, "value")?))
    });
    let (key, value) = match parsed {
        Ok(kv) => kv,
        Err(e) => return reject(&fake, e),
    };
    let mut f = fake.lock().unwrap();
    f.revision += 1;
    let rev = f.revision;
    f.data.insert(key, (value, rev));
    f.puts += 1;
    axum::Json(json!({ "header": header(&f) })).into_response()
}

async fn fake_range(State(fake): State<Fake>, body: Bytes) -> Response {
    let parsed = parse_body(&body).and_then(|v| {
        only_fields(&v, &["key", "serializable"])?;
        let serializable = match v.get("serializable") {
            None => false,
            Some(Value::Bool(true)) => true,
            Some(other) => return Err(format!("serializable is {other}")),
        };
        Ok((decode(&v, "key")?, serializable))
    });
    let (key, serializable) = match parsed {
        Ok(x) => x,
        Err(e) => return reject(&fake, e),
    };
    let answer = {
        let mut f = fake.lock().unwrap();
        if serializable {
            f.serializable_ranges += 1;
        } else {
            f.linearizable_ranges += 1;
        }
        match f.data.get(&key) {
            Some((value, rev)) => json!({
                "header": header(&f),
                "kvs": [{"key": B64.encode(&key), "create_revision": "1",
                         "mod_revision": rev.to_string(), "version": "1",
                         "value": B64.encode(value)}],
                "count": "1"
            }),
            None => json!({ "header": header(&f) }),
        }
    };
    // A streamed body goes out chunked, as a proxy's or gateway's may.
    let text = answer.to_string();
    let (a, b) = text.split_at(text.len() / 2);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(a.to_string())),
        Ok(Bytes::from(b.to_string())),
    ];
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap()
}

async fn fake_txn(State(fake): State<Fake>, body: Bytes) -> Response {
    // Compares on mod_revision only; success: puts; failure: ranges (the
    // bench's CAS and transfer transactions).
    type Parsed = (Vec<(Vec<u8>, i64)>, Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);
    let parsed = parse_body(&body).and_then(|v| -> Result<Parsed, String> {
        only_fields(&v, &["compare", "success", "failure"])?;
        let list = |name: &str| -> Result<Vec<Value>, String> {
            match v.get(name) {
                None => Ok(Vec::new()),
                Some(l) => l
                    .as_array()
                    .cloned()
                    .ok_or_else(|| format!("{name} in {v}")),
            }
        };
        let mut compares = Vec::new();
        for cmp in list("compare")? {
            only_fields(&cmp, &["key", "target", "result", "mod_revision"])?;
            if cmp["target"] != "MOD" || cmp["result"] != "EQUAL" {
                return Err(format!("unexpected compare {cmp}"));
            }
            let rev: i64 = cmp["mod_revision"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("mod_revision in {cmp}"))?;
            compares.push((decode(&cmp, "key")?, rev));
        }
        let mut puts = Vec::new();
        for op in list("success")? {
            only_fields(&op, &["request_put"])?;
            let put = &op["request_put"];
            only_fields(put, &["key", "value"])?;
            puts.push((decode(put, "key")?, decode(put, "value")?));
        }
        let mut reads = Vec::new();
        for op in list("failure")? {
            only_fields(&op, &["request_range"])?;
            let range = &op["request_range"];
            only_fields(range, &["key"])?;
            reads.push(decode(range, "key")?);
        }
        if compares.is_empty() || puts.is_empty() {
            return Err(format!("no compare or no put in {v}"));
        }
        Ok((compares, puts, reads))
    });
    let (compares, puts, reads) = match parsed {
        Ok(x) => x,
        Err(e) => return reject(&fake, e),
    };
    let mut f = fake.lock().unwrap();
    f.txns += 1;
    let holds = compares
        .iter()
        .all(|(key, rev)| f.data.get(key).map_or(0, |(_, r)| *r) == *rev);
    if !holds {
        let responses: Vec<Value> = reads
            .iter()
            .map(|key| match f.data.get(key) {
                Some((_, rev)) => json!({"response_range": {"header": header(&f),
                    "kvs": [{"key": B64.encode(key), "mod_revision": rev.to_string()}], "count": "1"}}),
                // proto3 JSON omits an empty `kvs` and a zero count.
                None => json!({"response_range": {"header": header(&f)}}),
            })
            .collect();
        // proto3 JSON omits `succeeded: false`.
        return axum::Json(json!({ "header": header(&f), "responses": responses })).into_response();
    }
    f.revision += 1;
    let new_rev = f.revision;
    let n = puts.len();
    for (key, value) in puts {
        f.data.insert(key, (value, new_rev));
    }
    let responses = vec![json!({"response_put": {"header": header(&f)}}); n];
    axum::Json(json!({ "header": header(&f), "succeeded": true, "responses": responses }))
        .into_response()
}

async fn fake_delete(State(fake): State<Fake>, body: Bytes) -> Response {
    let parsed = parse_body(&body).and_then(|v| {
        only_fields(&v, &["key"])?;
        decode(&v, "key")
    });
    let key = match parsed {
        Ok(k) => k,
        Err(e) => return reject(&fake, e),
    };
    let mut f = fake.lock().unwrap();
    f.deletes += 1;
    if f.data.remove(&key).is_none() {
        // proto3 JSON omits `deleted: 0`.
        return axum::Json(json!({ "header": header(&f) })).into_response();
    }
    f.revision += 1;
    axum::Json(json!({ "header": header(&f), "deleted": "1" })).into_response()
}

async fn fake_status(State(fake): State<Fake>) -> Response {
    let f = fake.lock().unwrap();
    axum::Json(json!({"header": header(&f), "version": "3.4.23", "dbSize": "20480", "leader": f.leader_id}))
        .into_response()
}

/// Starts a fake member; returns its state and URL.
async fn start_fake(member_id: &str, leader_id: &str) -> (Fake, String) {
    let fake: Fake = Arc::new(Mutex::new(FakeEtcd {
        member_id: member_id.into(),
        leader_id: leader_id.into(),
        ..FakeEtcd::default()
    }));
    let app = Router::new()
        .route("/v3/kv/put", post(fake_put))
        .route("/v3/kv/range", post(fake_range))
        .route("/v3/kv/txn", post(fake_txn))
        .route("/v3/kv/deleterange", post(fake_delete))
        .route("/v3/maintenance/status", post(fake_status))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_target_speaks_the_v3_json_gateway() {
    // Two members; the second is the leader.
    let (follower, follower_url) = start_fake("111", "222").await;
    let (leader, leader_url) = start_fake("222", "222").await;
    let endpoints = format!("{follower_url},{leader_url}");
    let run = |workload: &'static str, extra: &'static [&'static str]| {
        let endpoints = endpoints.clone();
        async move {
            let mut list = vec![
                "--target",
                "etcd",
                "--protocol",
                "json",
                "--endpoints",
                &endpoints,
                "--workload",
                workload,
                "--ops",
                "100",
                "--duration",
                "60",
                "--connections",
                "3",
                "--keys",
                "20",
                "--value-size",
                "37",
                "--json",
            ];
            list.extend_from_slice(extra);
            bench::execute(args(&list)).await.expect("bench runs")
        }
    };

    // Puts go to the leader, base64-encoded.
    let r = run("put", &[]).await;
    check_consistent(&r);
    assert_eq!(r.target, "etcd");
    assert_eq!((r.ops, r.successes, r.errors), (100, 100, 0), "{r:?}");
    assert_eq!(r.endpoints, vec![leader_url.clone()]);
    {
        let l = leader.lock().unwrap();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        assert_eq!(l.puts, 100);
        assert!(!l.data.is_empty() && l.data.len() <= 20);
        for (key, (value, _)) in &l.data {
            let key = String::from_utf8(key.clone()).unwrap();
            assert!(key.starts_with("bench/") && key.len() == 16, "{key}");
            assert_eq!(value.len(), 37);
            assert!(value.iter().all(u8::is_ascii_alphanumeric));
        }
        let f = follower.lock().unwrap();
        assert_eq!(
            f.puts + f.linearizable_ranges + f.txns,
            0,
            "follower untouched"
        );
    }

    // Linearizable gets: the 20 keys are populated first, then read.
    let r = run("get", &[]).await;
    check_consistent(&r);
    assert_eq!((r.ops, r.successes, r.reads), (100, 100, 100), "{r:?}");
    {
        let l = leader.lock().unwrap();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        assert_eq!(l.data.len(), 20);
        assert_eq!(l.linearizable_ranges, 100);
        assert_eq!(l.serializable_ranges, 0);
    }

    // Stale gets over all members are serializable ranges.
    let r = run(
        "get",
        &[
            "--consistency",
            "stale",
            "--target-nodes",
            "all",
            "--no-populate",
        ],
    )
    .await;
    check_consistent(&r);
    assert_eq!(r.endpoints.len(), 2);
    {
        let (l, f) = (leader.lock().unwrap(), follower.lock().unwrap());
        assert_eq!(l.serializable_ranges + f.serializable_ranges, 100);
        assert!(f.serializable_ranges > 0);
        // The follower has no data: its reads are misses.
        assert_eq!(
            r.errors_by_kind.get("not_found").copied().unwrap_or(0),
            f.serializable_ranges
        );
    }

    // CAS: a linearizable range, then a txn on mod_revision.
    let rev_before = leader.lock().unwrap().revision;
    let r = run("cas", &["--no-populate"]).await;
    check_consistent(&r);
    {
        let l = leader.lock().unwrap();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        assert_eq!(l.txns, 100);
        assert_eq!(
            l.revision - rev_before,
            r.successes as i64,
            "each success is one write"
        );
        assert_eq!(r.successes + r.conflicts, 100, "{r:?}");
    }

    // Transfer transactions through the gateway: one txn each; every
    // success is one new revision, every failure refreshed the bench's
    // revisions from the ranges it got back (with 20 keys and 3
    // connections most succeed).
    let rev_before = leader.lock().unwrap().revision;
    let txns_before = leader.lock().unwrap().txns;
    let r = run("txn", &["--no-populate"]).await;
    check_consistent(&r);
    {
        let l = leader.lock().unwrap();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        assert_eq!(l.txns - txns_before, 100);
        assert_eq!(l.revision - rev_before, r.successes as i64, "{r:?}");
        assert_eq!(r.successes + r.conflicts, 100, "{r:?}");
        assert!(r.successes > r.conflicts, "{r:?}");
    }

    // --cleanup deletes the key space with deleterange, one key each.
    let cleaned = run("put", &["--cleanup"]).await;
    check_consistent(&cleaned);
    let cleanup = cleaned.cleanup.clone().expect("--cleanup reports");
    assert!(cleanup.complete(), "{cleanup:?}");
    assert_eq!(cleanup.deleted + cleanup.absent, 20, "{cleanup:?}");
    assert_eq!(cleanup.deleted, 20, "every key existed: {cleanup:?}");
    {
        let l = leader.lock().unwrap();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        assert!(l.data.is_empty(), "nothing left");
        assert_eq!(l.deletes, 20);
    }

    // The JSON lines of both systems make a comparison table.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.jsonl");
    let mut raft = r.clone();
    raft.target = "raftkv".into();
    raft.throughput_ops_s = r.throughput_ops_s * 2.0;
    let lines = [
        serde_json::to_string(&r).unwrap(),
        serde_json::to_string(&raft).unwrap(),
    ]
    .join("\n");
    std::fs::write(&path, lines).unwrap();
    let table = bench::summarize_file(&path).unwrap();
    let row = table.lines().nth(2).expect("one row");
    assert!(row.starts_with("| txn (linearizable) | 3 |"), "{table}");
    assert!(row.contains("| 2.00× |"), "{table}");
}

// ---------------------------------------------------------------------------
// A fake RaftKV JSON API (docs/api.md): puts, the range header, POST /txn
// with mod-revision compares, and SSE watches fed from the puts. It keeps
// its own counts, the oracle the bench's report is checked against, and can
// drop or repeat an event on one watcher to prove the bench notices.

#[derive(Default)]
struct FakeKvState {
    revision: i64,
    /// key -> (value, mod_revision)
    data: BTreeMap<String, (String, i64)>,
    txn_succeeded: u64,
    txn_failed: u64,
    /// Watch requests seen: (prefix or key, start_revision).
    watches: Vec<(String, i64)>,
    rejected: Vec<String>,
}

struct FakeKvInner {
    state: Mutex<FakeKvState>,
    events: tokio::sync::broadcast::Sender<(i64, String)>,
    /// The first watcher misses this revision and gets the next one twice.
    fault_at: Option<i64>,
}

type FakeKv = Arc<FakeKvInner>;

fn fake_header(revision: i64) -> Value {
    json!({"cluster_id": 1, "member_id": 1, "revision": revision, "raft_term": 2})
}

fn fake_record(key: &str, value: &str, rev: i64) -> Value {
    json!({"key": key, "value": value, "index": rev, "create_revision": rev,
           "mod_revision": rev, "version": 1, "lease": 0})
}

async fn fake_kv_put(
    State(fake): State<FakeKv>,
    axum::extract::Path(key): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad JSON").into_response();
    };
    let value = v["value"].as_str().unwrap_or_default().to_string();
    let rev = {
        let mut s = fake.state.lock().unwrap();
        s.revision += 1;
        let rev = s.revision;
        s.data.insert(key.clone(), (value, rev));
        // Sent under the lock, so events go out in revision order.
        let _ = fake.events.send((rev, key.clone()));
        rev
    };
    axum::Json(json!({"status": "committed", "key": key, "index": rev})).into_response()
}

async fn fake_kv_range(State(fake): State<FakeKv>) -> Response {
    let rev = fake.state.lock().unwrap().revision;
    axum::Json(json!({"items": [], "more": false, "count": 0, "header": fake_header(rev)}))
        .into_response()
}

async fn fake_kv_txn(State(fake): State<FakeKv>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad JSON").into_response();
    };
    let mut s = fake.state.lock().unwrap();
    let (Some(compare), Some(success), Some(failure)) = (
        v["compare"].as_array(),
        v["success"].as_array(),
        v["failure"].as_array(),
    ) else {
        s.rejected.push(format!("txn shape: {v}"));
        return (StatusCode::BAD_REQUEST, "shape").into_response();
    };
    let mut holds = true;
    for c in compare {
        let ok_shape = c["target"] == "mod" && c["result"] == "=" && c["mod_revision"].is_i64();
        if !ok_shape {
            s.rejected.push(format!("compare: {c}"));
            return (StatusCode::BAD_REQUEST, "compare").into_response();
        }
        let key = c["key"].as_str().unwrap_or_default();
        let have = s.data.get(key).map_or(0, |(_, r)| *r);
        holds &= have == c["mod_revision"].as_i64().unwrap_or(-1);
    }
    let mut responses = Vec::new();
    if holds {
        s.revision += 1;
        let rev = s.revision;
        for op in success {
            let p = &op["put"];
            let (Some(k), Some(val)) = (p["key"].as_str(), p["value"].as_str()) else {
                s.rejected.push(format!("success op: {op}"));
                return (StatusCode::BAD_REQUEST, "op").into_response();
            };
            s.data.insert(k.to_string(), (val.to_string(), rev));
            responses.push(json!({"put": {}}));
        }
        s.txn_succeeded += 1;
    } else {
        for op in failure {
            let Some(k) = op["range"]["key"].as_str() else {
                s.rejected.push(format!("failure op: {op}"));
                return (StatusCode::BAD_REQUEST, "op").into_response();
            };
            let items: Vec<Value> = s
                .data
                .get(k)
                .map(|(val, r)| fake_record(k, val, *r))
                .into_iter()
                .collect();
            let count = items.len();
            responses.push(json!({"range": {"items": items, "more": false, "count": count}}));
        }
        s.txn_failed += 1;
    }
    let rev = s.revision;
    axum::Json(json!({"succeeded": holds, "responses": responses, "index": rev, "header": fake_header(rev)}))
        .into_response()
}

async fn fake_kv_watch(
    State(fake): State<FakeKv>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use axum::response::sse::{Event, Sse};
    let (filter, exact) = match (q.get("prefix"), q.get("key")) {
        (Some(p), None) => (p.clone(), false),
        (None, Some(k)) => (k.clone(), true),
        _ => return (StatusCode::BAD_REQUEST, "one of key, prefix").into_response(),
    };
    let start: i64 = q
        .get("start_revision")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let faulty = {
        let mut s = fake.state.lock().unwrap();
        s.watches.push((filter.clone(), start));
        // The first prefix watcher is the faulty one (when a fault is set).
        !exact && s.watches.iter().filter(|(f, _)| *f == filter).count() == 1
    };
    let fault_at = fake.fault_at.filter(|_| faulty);
    // Subscribed before the answer's head is sent: no event is missed.
    let rx = fake.events.subscribe();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let filter = filter.clone();
        async move {
            loop {
                let (rev, key) = rx.recv().await.ok()?;
                let matches = if exact {
                    key == filter
                } else {
                    key.starts_with(&filter)
                };
                if !matches || rev < start || Some(rev) == fault_at {
                    continue;
                }
                let data = json!({"revision": rev, "events": [{"type": "put", "kv": fake_record(&key, "v", rev)}]});
                let event = || {
                    Event::default()
                        .id(rev.to_string())
                        .event("events")
                        .data(data.to_string())
                };
                let copies = if fault_at.is_some_and(|f| rev == f + 1) {
                    2
                } else {
                    1
                };
                let items: Vec<Result<Event, std::convert::Infallible>> =
                    (0..copies).map(|_| Ok(event())).collect();
                return Some((futures::stream::iter(items), rx));
            }
        }
    });
    use futures::StreamExt;
    Sse::new(stream.flatten()).into_response()
}

async fn start_fake_kv(fault_at: Option<i64>) -> (FakeKv, String) {
    let fake: FakeKv = Arc::new(FakeKvInner {
        state: Mutex::new(FakeKvState::default()),
        events: tokio::sync::broadcast::channel(100_000).0,
        fault_at,
    });
    let app = Router::new()
        .route("/kv/{*key}", axum::routing::put(fake_kv_put))
        .route("/kv", axum::routing::get(fake_kv_range))
        .route("/txn", post(fake_kv_txn))
        .route("/watch", axum::routing::get(fake_kv_watch))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_workload_counts_both_branches_as_the_server_ran_them() {
    let (fake, url) = start_fake_kv(None).await;
    let list = [
        "--nodes",
        &url,
        "--target-nodes",
        "all",
        "--workload",
        "txn",
        "--ops",
        "300",
        "--duration",
        "60",
        "--connections",
        "4",
        "--keys",
        "40",
        "--key-prefix",
        "t/",
        "--value-size",
        "10",
        "--json",
    ];
    let r = bench::execute(args(&list)).await.expect("bench runs");
    check_consistent(&r);
    let s = fake.state.lock().unwrap();
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(r.ops, 300);
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_kind);
    // The server's own counts are the oracle.
    assert_eq!(r.successes, s.txn_succeeded);
    assert_eq!(r.conflicts, s.txn_failed);
    assert_eq!(
        s.revision as u64, s.txn_succeeded,
        "one revision per success"
    );
    // 40 keys, 4 connections: few collide, and the shared cache of mod
    // revisions makes the rest succeed.
    assert!(r.successes > 2 * r.conflicts, "{r:?}");
    assert!(r.human().contains("took the failure branch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_every_put_and_the_report_says_so() {
    let (fake, url) = start_fake_kv(None).await;
    let list = [
        "--nodes",
        &url,
        "--target-nodes",
        "all",
        "--workload",
        "put",
        "--ops",
        "200",
        "--duration",
        "60",
        "--connections",
        "4",
        "--keys",
        "50",
        "--key-prefix",
        "w/",
        "--watchers",
        "3",
        "--idle-watchers",
        "5",
        "--idle-watch-prefix",
        "idle/",
        "--watch-node",
        &url,
        "--warmup",
        "0.2",
        "--json",
    ];
    let pid = std::process::id().to_string();
    let mut list = list.to_vec();
    list.extend(["--rss-pids", &pid]);
    let r = bench::execute(args(&list)).await.expect("bench runs");
    check_consistent(&r);
    let w = r.watch.as_ref().expect("a watch report");
    let s = fake.state.lock().unwrap();
    let puts = s.revision as u64; // warm-up puts included: every put is one revision
    assert_eq!((w.active_open, w.idle_open), (3, 5), "{w:?}");
    assert!(w.drained && w.errors.is_empty(), "{w:?}");
    let f = &w.fanout;
    assert_eq!(f.acked_puts, puts, "{f:?}");
    assert_eq!(f.expected_events, puts * 3);
    assert_eq!(f.received_events, puts * 3);
    assert_eq!((f.mismatches(), f.complete_watchers), (0, 3), "{f:?}");
    assert_eq!(f.latency_from_ack_ms.count, puts * 3);
    assert!(f.latency_from_send_ms.p50 >= f.latency_from_ack_ms.p50);
    assert_eq!(w.idle_messages, 0);
    // What was watched: the prefix from the revision after the start, and
    // five distinct idle keys.
    let prefix: Vec<_> = s.watches.iter().filter(|(k, _)| k == "w/").collect();
    assert_eq!(prefix.len(), 3);
    assert!(
        prefix.iter().all(|(_, start)| *start == 1),
        "{:?}",
        s.watches
    );
    let idle: std::collections::BTreeSet<_> = s
        .watches
        .iter()
        .filter(|(k, _)| k.starts_with("idle/"))
        .collect();
    assert_eq!(idle.len(), 5);
    // RSS of this process was read at the three points.
    assert!(
        r.rss[0].before_kib.is_some()
            && r.rss[0].watching_kib.is_some()
            && r.rss[0].end_kib.is_some()
    );
    // Through a JSON value: serde_json's text parser (without its
    // float_roundtrip feature) may read a float back one ulp off, which
    // made this comparison fail now and then on latency means.
    let back: Report = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_and_a_repeated_event_are_reported() {
    // The first watcher misses revision 10 and gets revision 11 twice.
    let (_fake, url) = start_fake_kv(Some(10)).await;
    let list = [
        "--nodes",
        &url,
        "--target-nodes",
        "all",
        "--workload",
        "put",
        "--ops",
        "50",
        "--duration",
        "60",
        "--connections",
        "2",
        "--keys",
        "10",
        "--key-prefix",
        "f/",
        "--watchers",
        "2",
        "--watch-node",
        &url,
        "--watch-drain",
        "5",
        "--json",
    ];
    let r = bench::execute(args(&list)).await.expect("bench runs");
    let f = &r.watch.as_ref().unwrap().fanout;
    assert_eq!(f.expected_events, 100);
    assert_eq!(
        (f.missing, f.duplicates, f.out_of_order),
        (1, 1, 1),
        "{f:?}"
    );
    assert_eq!(f.complete_watchers, 1);
    assert!(r.human().contains("missing 1, duplicated 1"));
}

#[tokio::test]
async fn watch_and_txn_options_are_checked() {
    for bad in [
        &["--workload", "txn", "--keys", "1"][..],
        &["--workload", "get", "--watchers", "1"],
        &["--watchers", "1", "--target", "etcd", "--protocol", "json"],
        &["--grpc-conns", "2"],
        &[
            "--watch-streams",
            "2",
            "--target",
            "etcd",
            "--protocol",
            "json",
        ],
        &[
            "--idle-watchers",
            "1",
            "--idle-watch-prefix",
            "bench/x",
            "--key-prefix",
            "bench/",
        ],
        &["--watchers", "1", "--watch-drain=-1"],
    ] {
        let mut list = bad.to_vec();
        list.extend(["--target-nodes", "all", "--nodes", "http://127.0.0.1:1"]);
        let err = bench::execute(args(&list)).await.unwrap_err();
        assert!(
            err.downcast_ref::<UsageError>().is_some(),
            "{bad:?} is a usage error, got {err:#}"
        );
    }
}

// --- --protocol grpc -----------------------------------------------------

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use raftkv::etcd::{
    EtcdBackend, EtcdError, EtcdService, HashKvInfo, HeaderInfo, MemberInfo, StatusInfo,
    WatchCancel, WatchFeed, WatchUpdate,
};
use raftkv::kv::{
    Command, CommandResponse, Event, KeyRange, KvError, MemMvcc, RangeRequest, RangeResponse,
    Revisioned,
};
use tokio::sync::mpsc;

/// What the in-memory etcd served, by kind.
#[derive(Debug, Default, Clone, PartialEq)]
struct Served {
    puts: u64,
    deletes: u64,
    txns: u64,
    txns_succeeded: u64,
    linearizable_ranges: u64,
    serializable_ranges: u64,
    watches: u64,
}

type Subscriber = (Vec<u8>, Vec<u8>, mpsc::UnboundedSender<(i64, Vec<Event>)>);

#[derive(Default)]
struct MemState {
    store: MemMvcc,
    subscribers: Vec<Subscriber>,
    served: Served,
}

/// An etcd backend over the project's reference MVCC model: every
/// proposal applied at once, watches caught up from its history then fed
/// live (published under the lock, so in revision order), and a count of
/// every request it served.
#[derive(Clone, Default)]
struct MemEtcd(Arc<Mutex<MemState>>);

const MEMBER_ID: u64 = 0x11;

impl MemEtcd {
    fn served(&self) -> Served {
        self.0.lock().unwrap().served.clone()
    }

    /// Every key under `prefix` with its version.
    fn versions(&self, prefix: &str) -> Vec<(String, i64)> {
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: raftkv::kv::prefix_end(prefix.as_bytes()),
            ..RangeRequest::default()
        };
        let st = self.0.lock().unwrap();
        st.store
            .range(&req)
            .unwrap()
            .body
            .kvs
            .iter()
            .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.version))
            .collect()
    }
}

struct MemFeed {
    queue: VecDeque<WatchUpdate>,
    rx: mpsc::UnboundedReceiver<(i64, Vec<Event>)>,
}

impl futures::Stream for MemFeed {
    type Item = WatchUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchUpdate>> {
        if let Some(u) = self.queue.pop_front() {
            return Poll::Ready(Some(u));
        }
        self.rx
            .poll_recv(cx)
            .map(|b| b.map(|(revision, events)| WatchUpdate::Events { revision, events }))
    }
}

impl WatchFeed for MemFeed {
    // The bench never asks for progress.
    fn request_progress(&mut self) {}
}

impl EtcdBackend for MemEtcd {
    type Feed = MemFeed;

    fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: 0xc1,
            member_id: MEMBER_ID,
            raft_term: 2,
        }
    }

    fn revision(&self) -> i64 {
        self.0.lock().unwrap().store.revision()
    }

    async fn propose(&self, cmd: Command) -> Result<Revisioned<CommandResponse>, EtcdError> {
        let mut st = self.0.lock().unwrap();
        match &cmd {
            Command::Put(_) => st.served.puts += 1,
            Command::DeleteRange(_) => st.served.deletes += 1,
            Command::Txn(_) => st.served.txns += 1,
            Command::Compact(_) => {}
        }
        let applied = st.store.apply(&cmd);
        if let Some(rev) = applied.new_revision() {
            st.subscribers.retain(|(key, end, tx)| {
                let range = KeyRange::new(key, end);
                let mine: Vec<Event> = applied
                    .events
                    .iter()
                    .filter(|e| range.contains(&e.kv.key))
                    .cloned()
                    .collect();
                mine.is_empty() || tx.send((rev, mine)).is_ok()
            });
        }
        if let Ok(Revisioned {
            body: CommandResponse::Txn(t),
            ..
        }) = &applied.answer
        {
            if t.succeeded {
                st.served.txns_succeeded += 1;
            }
        }
        Ok(applied.answer?)
    }

    async fn range(&self, req: RangeRequest) -> Result<Revisioned<RangeResponse>, EtcdError> {
        let mut st = self.0.lock().unwrap();
        if req.serializable {
            st.served.serializable_ranges += 1;
        } else {
            st.served.linearizable_ranges += 1;
        }
        Ok(st.store.range(&req)?)
    }

    fn watch(&self, spec: raftkv::etcd::WatchSpec) -> Result<MemFeed, EtcdError> {
        let mut st = self.0.lock().unwrap();
        st.served.watches += 1;
        let current = st.store.revision();
        let mut queue = VecDeque::new();
        if spec.start_revision > 0 && spec.start_revision <= current {
            let range = KeyRange::new(&spec.key, &spec.range_end);
            match st.store.events(spec.start_revision, range, usize::MAX) {
                Ok(events) if !events.is_empty() => queue.push_back(WatchUpdate::Events {
                    revision: current,
                    events,
                }),
                Ok(_) => {}
                Err(KvError::Compacted { compact_revision }) => {
                    queue.push_back(WatchUpdate::Canceled(WatchCancel::Compacted {
                        compact_revision,
                    }))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        st.subscribers.push((spec.key, spec.range_end, tx));
        Ok(MemFeed { queue, rx })
    }

    async fn members(&self, _linearizable: bool) -> Result<Vec<MemberInfo>, EtcdError> {
        Ok(Vec::new())
    }

    async fn status(&self) -> Result<StatusInfo, EtcdError> {
        Ok(StatusInfo {
            leader: MEMBER_ID,
            raft_term: 2,
            ..StatusInfo::default()
        })
    }

    async fn hash_kv(&self, _revision: i64) -> Result<HashKvInfo, EtcdError> {
        Err(EtcdError::NotLeader)
    }

    async fn move_leader(&self, _target: u64) -> Result<(), EtcdError> {
        Err(EtcdError::NotLeader)
    }
}

/// Serves etcd's gRPC API over `backend` on a loopback port (h2c, as
/// etcd without TLS); returns its URL.
async fn start_grpc_etcd(backend: MemEtcd) -> String {
    let app = EtcdService::new(Arc::new(backend)).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_runs_count_exactly_what_the_server_served() {
    let etcd = MemEtcd::default();
    let url = start_grpc_etcd(etcd.clone()).await;
    let run = |workload: &'static str, prefix: &'static str, extra: &[&str]| {
        let mut list = vec![
            "--target",
            "etcd",
            "--endpoints",
            &url,
            "--workload",
            workload,
            "--key-prefix",
            prefix,
            "--ops",
            "300",
            "--duration",
            "60",
            "--connections",
            "8",
            "--grpc-conns",
            "2",
            "--value-size",
            "33",
            "--json",
        ];
        list.extend_from_slice(extra);
        let a = args(&list);
        async move { bench::execute(a).await.expect("bench runs") }
    };

    // Puts: gRPC is etcd's default; every counted put is one the server
    // applied, no more, and the values are the requested size.
    let r = run("put", "p/", &["--keys", "40"]).await;
    check_consistent(&r);
    assert_eq!((r.protocol.as_str(), r.grpc_conns), ("grpc", Some(2)));
    assert_eq!((r.ops, r.successes, r.errors), (300, 300, 0), "{r:?}");
    assert_eq!(r.endpoints, vec![url.clone()]);
    let served = etcd.served();
    assert_eq!(served.puts, 300, "{served:?}");
    let keys = etcd.versions("p/");
    assert!(!keys.is_empty() && keys.len() <= 40, "{keys:?}");
    assert_eq!(
        keys.iter().map(|(_, v)| v).sum::<i64>(),
        300,
        "every put is a version"
    );
    assert!(keys.iter().all(|(k, _)| k.len() == 16), "{keys:?}");
    assert!(
        r.human()
            .contains("over gRPC, sharing 2 HTTP/2 connection(s)"),
        "{}",
        r.human()
    );

    // Linearizable gets after pre-populating every key once (over gRPC).
    let before = etcd.served();
    let r = run("get", "g/", &["--keys", "30"]).await;
    check_consistent(&r);
    assert_eq!((r.ops, r.reads, r.successes), (300, 300, 300), "{r:?}");
    let s = etcd.served();
    assert_eq!(s.puts - before.puts, 30, "pre-population: one put per key");
    assert_eq!(s.linearizable_ranges - before.linearizable_ranges, 300);
    assert_eq!(s.serializable_ranges, before.serializable_ranges);

    // Serializable gets.
    let before = etcd.served();
    let r = run(
        "get",
        "g/",
        &["--keys", "30", "--consistency", "stale", "--no-populate"],
    )
    .await;
    check_consistent(&r);
    assert_eq!(r.successes, 300, "{r:?}");
    let s = etcd.served();
    assert_eq!(s.serializable_ranges - before.serializable_ranges, 300);
    assert_eq!(s.linearizable_ranges, before.linearizable_ranges);
    assert_eq!(s.puts, before.puts);

    // Transactions: one Txn each; the report's successes are the server's
    // successes, and each success wrote both its keys (versions add up).
    let before = etcd.served();
    let r = run("txn", "t/", &["--keys", "5"]).await;
    check_consistent(&r);
    assert_eq!(r.ops, 300, "{r:?}");
    let s = etcd.served();
    assert_eq!(s.txns - before.txns, 300, "{s:?}");
    assert_eq!(
        s.txns_succeeded - before.txns_succeeded,
        r.successes,
        "{r:?}"
    );
    assert_eq!(r.conflicts, 300 - r.successes);
    let written: i64 = etcd.versions("t/").iter().map(|(_, v)| v).sum();
    assert_eq!(
        written as u64,
        2 * r.successes,
        "two puts per successful txn"
    );

    // Compare-and-swap: a linearizable range and a txn per operation.
    let before = etcd.served();
    let r = run("cas", "c/", &["--keys", "10"]).await;
    check_consistent(&r);
    let s = etcd.served();
    assert_eq!(s.txns - before.txns, 300);
    assert_eq!(s.txns_succeeded - before.txns_succeeded, r.successes);
    assert_eq!(s.linearizable_ranges - before.linearizable_ranges, 300);

    // --cleanup deletes the key space over gRPC.
    let before = etcd.served();
    let r = run("put", "d/", &["--keys", "25", "--cleanup"]).await;
    let c = r.cleanup.as_ref().expect("cleanup report");
    assert!(c.complete(), "{c:?}");
    assert_eq!(etcd.served().deletes - before.deletes, 25);
    assert_eq!(c.deleted as usize + c.absent as usize, 25);
    assert!(etcd.versions("d/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_watchers_over_shared_streams_get_every_put_once() {
    let etcd = MemEtcd::default();
    let url = start_grpc_etcd(etcd.clone()).await;
    // Writes before the run are not expected by the watchers (they start
    // at the current revision + 1).
    for i in 0..3 {
        etcd.propose(Command::Put(raftkv::kv::PutRequest {
            key: format!("w/{i:014}").into_bytes(),
            value: b"old".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let r = bench::execute(args(&[
        "--target",
        "etcd",
        "--endpoints",
        &url,
        "--key-prefix",
        "w/",
        "--keys",
        "20",
        "--ops",
        "200",
        "--duration",
        "60",
        "--connections",
        "4",
        "--watchers",
        "6",
        "--idle-watchers",
        "4",
        "--watch-streams",
        "3",
        "--json",
    ]))
    .await
    .expect("bench runs");
    check_consistent(&r);
    assert_eq!(r.successes, 200, "{r:?}");
    let w = r.watch.as_ref().expect("watch report");
    assert_eq!((w.streams, w.active_open, w.idle_open), (3, 6, 4), "{w:?}");
    // A new store is at revision 1 (as etcd's); three puts took it to 4.
    assert_eq!(w.start_revision, 5, "{w:?}");
    assert!(
        w.drained && w.errors.is_empty() && w.canceled.is_empty(),
        "{w:?}"
    );
    assert_eq!(w.idle_messages, 0);
    let f = &w.fanout;
    assert_eq!((f.acked_puts, f.watchers), (200, 6), "{f:?}");
    assert_eq!(
        (f.expected_events, f.received_events),
        (1200, 1200),
        "{f:?}"
    );
    assert_eq!(f.mismatches() + f.unexpected_events, 0, "{f:?}");
    assert_eq!(f.complete_watchers, 6);
    assert_eq!(f.latency_from_send_ms.count, 1200);
    assert_eq!(etcd.served().watches, 10, "one watch per watcher");
    assert!(
        r.human().contains("over 3 gRPC Watch stream(s)"),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_nodes_that_are_down_are_counted_as_connect_errors() {
    let ports = free_ports(1);
    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    let r = bench::execute(args(&[
        "--target",
        "etcd",
        "--endpoints",
        &endpoint,
        "--target-nodes",
        "all",
        "--ops",
        "10",
        "--duration",
        "30",
        "--connections",
        "2",
        "--timeout-ms",
        "2000",
    ]))
    .await
    .expect("the run itself completes");
    assert_eq!((r.ops, r.successes), (10, 0), "{r:?}");
    assert_eq!(r.errors_by_kind.get("connect"), Some(&10), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_runs_against_a_real_cluster_land_and_are_watched() {
    let mut c = Cluster::start(3, &Opts::default());
    c.wait_for_leader(FORM).await;
    let nodes = (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",");
    let run = |workload: &'static str, prefix: &'static str, extra: &[&str]| {
        let mut list = vec![
            "--nodes",
            &nodes,
            "--protocol",
            "grpc",
            "--workload",
            workload,
            "--key-prefix",
            prefix,
            "--ops",
            "200",
            "--duration",
            "120",
            "--connections",
            "8",
            "--grpc-conns",
            "2",
            "--json",
        ];
        list.extend_from_slice(extra);
        let a = args(&list);
        async move { bench::execute(a).await.expect("bench runs") }
    };

    // Puts through RaftKV's etcd gRPC API land in the store.
    let r = run("put", "gput/", &["--keys", "50"]).await;
    check_consistent(&r);
    assert_eq!((r.target.as_str(), r.protocol.as_str()), ("raftkv", "grpc"));
    assert_eq!((r.ops, r.successes, r.errors), (200, 200, 0), "{r:?}");
    let items = list(&c, "gput/").await;
    assert!(!items.is_empty() && items.len() <= 50, "{}", items.len());
    let versions: u64 = items.iter().map(|i| i["version"].as_u64().unwrap()).sum();
    assert_eq!(versions, 200, "every counted put is a version");

    // Linearizable gets of pre-populated keys.
    let r = run("get", "gget/", &["--keys", "20"]).await;
    check_consistent(&r);
    assert_eq!((r.successes, r.errors), (200, 0), "{r:?}");
    assert_eq!(list(&c, "gget/").await.len(), 20);

    // Transactions: each success wrote both its keys.
    let r = run("txn", "gtxn/", &["--keys", "6"]).await;
    check_consistent(&r);
    assert_eq!((r.ops, r.errors), (200, 0), "{r:?}");
    let versions: u64 = list(&c, "gtxn/")
        .await
        .iter()
        .map(|i| i["version"].as_u64().unwrap())
        .sum();
    assert_eq!(versions, 2 * r.successes, "{r:?}");

    // Watchers over two gRPC Watch streams on a follower get every put once.
    let r = run(
        "put",
        "gwatch/",
        &[
            "--keys",
            "30",
            "--watchers",
            "5",
            "--idle-watchers",
            "3",
            "--watch-streams",
            "2",
            "--watch-node",
            "follower",
        ],
    )
    .await;
    check_consistent(&r);
    let w = r.watch.as_ref().expect("watch report");
    assert_eq!((w.active_open, w.idle_open, w.streams), (5, 3, 2), "{w:?}");
    assert!(w.drained && w.errors.is_empty(), "{w:?}");
    assert_eq!(w.fanout.acked_puts, r.successes);
    assert_eq!(w.fanout.mismatches(), 0, "{w:?}");
    assert_eq!(w.fanout.complete_watchers, 5, "{w:?}");
    assert_eq!(w.idle_messages, 0);
}
