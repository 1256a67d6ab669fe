//! Disaster recovery end to end on real processes (`docs/operations.md`):
//! a three-node cluster with overwrites, deletes and a compaction is saved
//! with `raftkv snapshot save`, checked with `raftkv snapshot status`,
//! restored into three new data dirs with `raftkv snapshot restore`, and
//! the new cluster must serve exactly the source's records (value,
//! create/mod revision, version), its revision and its history above the
//! compact revision, and go on at revision + 1.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::v3::*;
use common::*;
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(30);

fn raftkv(args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .args(args)
        .env_remove("RAFTKV_NODES")
        .output()
        .expect("run raftkv")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A write through any node (retried while there is no leader); returns
/// the answer's header revision.
async fn write(
    bases: &[String],
    what: &str,
    make: impl Fn(&str) -> reqwest::RequestBuilder,
) -> i64 {
    let (_, status, body) = send_retry(bases, 0, FORM, what, make).await;
    assert_eq!(status, 200, "{what}: {body}");
    header_revision(&body).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Every record at `revision` (0 = current) as node `base` reads it
/// linearizably; panics on a refusal.
async fn records(
    client: &reqwest::Client,
    base: &str,
    revision: i64,
) -> (i64, BTreeMap<String, Rec>) {
    range_all(client, base, "prefix=", revision, false)
        .await
        .unwrap_or_else(|r| panic!("range at {revision} on {base}: {r}"))
}

fn initial_cluster(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("{}=127.0.0.1:{}", n.name, n.port))
        .collect::<Vec<_>>()
        .join(",")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_status_restore_a_new_cluster() {
    let opts = Opts {
        // Log compaction on the source too: the snapshot is the state
        // machine, whatever the log still holds.
        extra: vec!["--snapshot-threshold".into(), "20".into()],
        ..Opts::default()
    };
    let mut src = Cluster::start(3, &opts);
    src.wait_for_leader(FORM).await;
    let bases: Vec<String> = (0..3).map(|i| src.url(i)).collect();
    let http = src.client.clone();
    let put = |key: String, value: String| {
        let http = http.clone();
        move |b: &str| {
            http.put(format!("{b}/kv/{}", encode_key(&key)))
                .json(&json!({ "value": value }))
        }
    };

    // Keys created, overwritten, deleted; a compaction in the middle of
    // the history, and changes after it.
    for i in 0..30 {
        write(&bases, "put", put(format!("k/{i:02}"), format!("v{i}"))).await;
    }
    for round in 0..3 {
        for i in 0..10 {
            write(
                &bases,
                "overwrite",
                put(format!("k/{i:02}"), format!("r{round}-{i}")),
            )
            .await;
        }
    }
    for i in 20..25 {
        let key = format!("k/{i:02}");
        let h = http.clone();
        write(&bases, "delete", move |b: &str| {
            h.delete(format!("{b}/kv/{}", encode_key(&key)))
        })
        .await;
    }
    let compact_at = write(&bases, "put", put("k/05".into(), "before-compact".into())).await;
    let (_, s, body) = send_retry(&bases, 0, FORM, "compact", |b| {
        http.post(format!("{b}/compact"))
            .json(&json!({"revision": compact_at, "physical": true}))
    })
    .await;
    assert_eq!(s, 200, "compact: {body}");
    for i in 0..5 {
        write(
            &bases,
            "put",
            put(format!("k/{i:02}"), format!("after-{i}")),
        )
        .await;
    }
    // Re-create a deleted key: a new life with version 1.
    let last = write(&bases, "put", put("k/21".into(), "again".into())).await;

    // The source as a linearizable read on the leader sees it; then save
    // from the leader (its applied index covers every acknowledged write).
    let leader = src.wait_for_leader(FORM).await;
    let (src_rev, src_recs) = records(&http, &src.url(leader), 0).await;
    assert_eq!(src_rev, last);
    let (_, src_hist) = records(&http, &src.url(leader), compact_at + 1).await;
    assert_eq!(src_recs.len(), 26);

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("backup.snap");
    let out = raftkv(&[
        "snapshot",
        "save",
        path_str(&file),
        "--endpoint",
        &src.url(leader),
    ]);
    assert!(out.status.success(), "save: {}", text(&out));
    assert!(file.exists(), "save left no file");
    // What `etcdctl snapshot save` requires of a stream it saves.
    assert_eq!(std::fs::metadata(&file).unwrap().len() % 512, 32);
    assert!(
        !tmp.path().join("backup.snap.part").exists(),
        "save left its .part file"
    );

    let out = raftkv(&["snapshot", "status", path_str(&file), "-w", "json"]);
    assert!(out.status.success(), "status: {}", text(&out));
    let st: Value = serde_json::from_slice(&out.stdout).expect("status -w json prints JSON");
    assert_eq!(st["revision"], src_rev, "{st}");
    assert_eq!(st["compact_revision"], compact_at, "{st}");
    assert_eq!(st["total_keys"], src_recs.len(), "{st}");
    assert_eq!(st["hash_ok"], true, "{st}");
    assert_eq!(
        st["total_size"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len()),
        "{st}"
    );

    // A damaged copy is refused with exit 2 by status and restore.
    let mut bad = std::fs::read(&file).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x04;
    let bad_file = tmp.path().join("bad.snap");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = raftkv(&["snapshot", "status", path_str(&bad_file)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "status of a damaged file: {}",
        text(&out)
    );

    // The source can go: the new cluster is built from the file alone.
    for n in &mut src.nodes {
        n.kill9();
    }

    let mut dst = Cluster::new(3, &Opts::default());
    let members = initial_cluster(&dst);
    let dirs: Vec<String> = dst
        .nodes
        .iter()
        .map(|n| n.data_dir.display().to_string())
        .collect();

    // Same member names as the source: the derived cluster id would be
    // the old one, which restore refuses (nothing is written).
    let out = raftkv(&[
        "snapshot",
        "restore",
        path_str(&file),
        "--data-dir",
        &dirs[0],
        "--name",
        "node-1",
        "--initial-cluster",
        &members,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "restore with the old id: {}",
        text(&out)
    );
    assert!(
        !Path::new(&dirs[0]).exists(),
        "a refused restore wrote {}",
        dirs[0]
    );
    let out = raftkv(&[
        "snapshot",
        "restore",
        path_str(&bad_file),
        "--data-dir",
        &dirs[0],
        "--name",
        "node-1",
        "--initial-cluster",
        &members,
        "--cluster-id",
        "restored-1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "restore of a damaged file: {}",
        text(&out)
    );
    assert!(
        !Path::new(&dirs[0]).exists(),
        "a refused restore wrote {}",
        dirs[0]
    );

    for (i, node) in dst.nodes.iter_mut().enumerate() {
        let out = raftkv(&[
            "snapshot",
            "restore",
            path_str(&file),
            "--data-dir",
            &dirs[i],
            "--name",
            &node.name,
            "--initial-cluster",
            &members,
            "--cluster-id",
            "restored-1",
        ]);
        assert!(
            out.status.success(),
            "restore {}: {}",
            node.name,
            text(&out)
        );
        let mut args = node.args().to_vec();
        args.extend(["--cluster-id".to_string(), "restored-1".to_string()]);
        node.set_args(args);
        node.start();
    }
    // A second restore into a dir that now holds data is refused.
    let out = raftkv(&[
        "snapshot",
        "restore",
        path_str(&file),
        "--data-dir",
        &dirs[0],
        "--name",
        "node-1",
        "--initial-cluster",
        &members,
        "--cluster-id",
        "restored-1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "restore into a used dir: {}",
        text(&out)
    );

    let leader = dst.wait_for_leader(FORM).await;
    let (_, cluster) = dst.get_json(leader, "/cluster/status").await.unwrap();
    assert_eq!(cluster["cluster_id"], "restored-1", "{cluster}");

    // Every record, its revisions and version, and the revision itself.
    let (rev, recs) = records(&http, &dst.url(leader), 0).await;
    assert_eq!(rev, src_rev, "the restored revision");
    assert_eq!(recs, src_recs, "the restored records");
    // The history above the compact revision survives; below it is gone.
    let (_, hist) = records(&http, &dst.url(leader), compact_at + 1).await;
    assert_eq!(hist, src_hist, "records at revision {}", compact_at + 1);
    match range_all(&http, &dst.url(leader), "prefix=", compact_at - 1, false).await {
        Err(r) => assert_compacted(
            r.status,
            &r.body,
            compact_at,
            "read below the compact revision",
        ),
        Ok(_) => panic!("a read below the compact revision {compact_at} was served"),
    }
    // Every member serves the same state.
    for i in 0..3 {
        let url = dst.url(i);
        let (rev_i, recs_i) = eventually(FORM, "a member to catch up", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = range_all(&http, &url, "prefix=", 0, true).await.ok()?;
                (r.0 == src_rev).then_some(r)
            }
        })
        .await;
        assert_eq!((rev_i, &recs_i), (src_rev, &src_recs), "member {i}");
    }

    // Writes go on at revision + 1.
    let dst_bases: Vec<String> = (0..3).map(|i| dst.url(i)).collect();
    let next = write(
        &dst_bases,
        "put after restore",
        put("k/new".into(), "x".into()),
    )
    .await;
    assert_eq!(next, src_rev + 1);
    let (_, after) = records(&http, &dst.url(leader), 0).await;
    let rec = &after["k/new"];
    assert_eq!(
        (rec.create_revision, rec.mod_revision, rec.version),
        (next, next, 1)
    );
}
