//! History compaction and snapshots of the history, on real `raftkv start`
//! processes through the JSON API only (see `common::v3`):
//!
//! * a watcher consuming slowly from an old revision while `POST /compact`
//!   moves past what it has read gets either the whole history or a cancel
//!   carrying the compact revision, never a gap; reads below the compact
//!   revision fail with "required revision has been compacted" on every
//!   node, and compactions at or below it, or above the current revision,
//!   are refused;
//! * a follower that comes back through InstallSnapshot (its log was
//!   compacted away while it was down) serves past-revision reads and
//!   watches from an old revision exactly like the leader, and refuses
//!   the compacted ones with the same compact revision.
//!
//! * with `--auto-compaction-retention`, sustained overwrites do not grow
//!   the data dir without bound.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::v3::*;
use common::*;
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(20);

async fn status(c: &Cluster, i: usize) -> Option<Value> {
    match c.get_json(i, "/cluster/status").await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

fn field(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no `{name}`: {v}"))
}

/// `n` PUTs of `{prefix}{i % keys}` with values of `len` bytes through node
/// `base`, `parallel` at a time; returns revision → (key, value) of each
/// acknowledged put.
async fn put_many(
    bases: &[String],
    node: usize,
    prefix: &str,
    n: usize,
    keys: usize,
    len: usize,
    parallel: usize,
) -> BTreeMap<i64, (String, String)> {
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (next, acked, bases) = (next.clone(), acked.clone(), bases.to_vec());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let key = format!("{prefix}{:03}", i % keys);
                let mut value = format!("{i}=");
                while value.len() < len {
                    value.push((b'a' + (i + value.len()) as u8 % 26) as char);
                }
                let (_, s, v) = send_retry(&bases, node, FORM, &format!("put {key}"), |b| {
                    http.put(format!("{b}/kv/{}", encode_key(&key)))
                        .json(&json!({ "value": value }))
                })
                .await;
                assert_eq!(s, 200, "put {key}: {v}");
                let rev = v["index"].as_i64().expect("index");
                acked.lock().unwrap().insert(rev, (key, value));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let out = std::mem::take(&mut *acked.lock().unwrap());
    out
}

/// Waits until node `i` has applied a compaction at `at` (a stale read
/// just below it is refused).
async fn wait_compacted(c: &Cluster, i: usize, selector: &str, at: i64) {
    let (client, url) = (c.client.clone(), c.url(i));
    let selector = selector.to_string();
    eventually(FORM, "the node applying the compaction", || {
        let (client, url, selector) = (client.clone(), url.clone(), selector.clone());
        async move {
            match range_all(&client, &url, &selector, at - 1, true).await {
                Err(r) if r.status == 410 => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_while_a_slow_watcher_reads_never_leaves_a_gap() {
    const SEL: &str = "prefix=c/";
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let follower = (leader + 1) % 3;
    let bases: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    // 1,000 revisions of 16 KB: far more than the sockets between the
    // paused watcher and the server hold (about 4 MB on Linux loopback),
    // so the server must go on reading the history after the compaction.
    let t = Instant::now();
    let acked = put_many(&bases, leader, "c/", 1000, 40, 16 * 1024, 8).await;
    eprintln!("1000 puts in {:?}", t.elapsed());
    let (&start, &fin) = (
        acked.keys().next().unwrap(),
        acked.keys().next_back().unwrap(),
    );
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (start..=fin).collect::<Vec<_>>(),
        "every put made one revision"
    );

    // Restart the follower so that its in-memory ring of recent revisions
    // is empty: the watch below is served from the stored history.
    c.nodes[follower].kill9();
    c.nodes[follower].start();
    {
        let (client, url) = (c.client.clone(), bases[follower].clone());
        eventually(FORM, "the restarted follower catching up", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (rev, _) = range_all(&client, &url, SEL, 0, true).await.ok()?;
                (rev >= fin).then_some(())
            }
        })
        .await;
    }
    // The slow watcher, on that follower, from the first revision.
    let sc = stream_client();
    let mut sse = Sse::open(
        &sc,
        &bases[follower],
        &format!("{SEL}&start_revision={start}"),
    )
    .await
    .expect("watch")
    .expect("watch accepted");
    let mut got = Vec::new();
    while got.len() < 20 {
        match sse.next(Duration::from_secs(10)).await {
            Next::Msg(m) => got.push(m),
            other => panic!("watch from {start}: {other:?}"),
        }
    }
    // Compact well beyond what it has read, and let every node apply it.
    let at = start + (fin - start) * 3 / 4;
    let (s, v) = compact(&c.client, &bases[leader], at)
        .await
        .expect("compact");
    assert_eq!(s, 200, "compact at {at}: {v}");
    assert_eq!(v["compact_revision"], at, "{v}");
    assert!(header_revision(&v).unwrap() >= fin, "{v}");
    for i in 0..3 {
        wait_compacted(&c, i, SEL, at).await;
    }
    // Now read the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match got.last() {
            Some(WatchMsg::Events { revision, .. }) => *revision,
            Some(WatchMsg::Canceled(_)) => break,
            _ => 0,
        };
        if last >= fin {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the watch stalled at revision {last}");
        match sse.next(left).await {
            Next::Msg(m) => got.push(m),
            Next::Idle => {}
            other => panic!("watch from {start} after {last}: {other:?}"),
        }
    }
    drop(sse);
    // Whole revisions from the start, in order, no gap, each exactly the
    // put acknowledged at it; then maybe a cancel with the compact revision.
    let mut expect = start;
    let mut canceled = None;
    for m in &got {
        match m {
            WatchMsg::Events { revision, events } => {
                assert!(canceled.is_none(), "events after the cancel: {m:?}");
                assert_eq!(*revision, expect, "a gap or repeat in the watch");
                let evs = sorted_events(*revision, events).unwrap();
                let (key, value) = &acked[revision];
                assert_eq!(evs.len(), 1, "{events:?}");
                assert_eq!(
                    (evs[0].kind, &evs[0].kv.key, &evs[0].kv.value),
                    (Kind::Put, key, value),
                    "revision {revision}"
                );
                expect += 1;
            }
            WatchMsg::Progress { .. } => {}
            WatchMsg::Canceled(d) => {
                assert_eq!(d["compact_revision"], at, "cancel: {d}");
                canceled = Some(d.clone());
            }
        }
    }
    eprintln!(
        "slow watcher: revisions {start}..{expect} of ..={fin}, compacted at {at}, canceled: {canceled:?}"
    );
    if canceled.is_none() {
        assert_eq!(expect, fin + 1, "the watch ended early without a cancel");
    } else {
        assert!(expect <= at, "canceled although it had read past {at}");
    }

    // Reads below the compact revision are refused on every node; at it
    // and above they work and agree.
    for i in 0..3 {
        for stale in [false, true] {
            match range_all(&c.client, &bases[i], SEL, at - 1, stale).await {
                Err(r) => {
                    assert_compacted(r.status, &r.body, at, &format!("node {i} at {}", at - 1))
                }
                Ok(x) => panic!("node {i} read below the compact revision: {x:?}"),
            }
        }
        let (s, v) = send(c.client.get(format!(
            "{}/kv/{}?revision={}",
            bases[i],
            encode_key(&acked[&start].0),
            start
        )))
        .await
        .unwrap();
        assert_compacted(s, &v, at, &format!("GET one key at {start} on node {i}"));
        let (_, here) = range_all(&c.client, &bases[i], SEL, at, true)
            .await
            .unwrap();
        let (_, there) = range_all(&c.client, &bases[leader], SEL, at, false)
            .await
            .unwrap();
        assert_eq!(here, there, "node {i} at the compact revision");
        assert_watch_compacted(&sc, &bases[i], &format!("{SEL}&start_revision={start}"), at).await;
    }
    // Compacting again at or below it is refused; above the current
    // revision too.
    for rev in [at, at - 1] {
        let (s, v) = compact(&c.client, &bases[leader], rev).await.unwrap();
        assert_compacted(s, &v, at, &format!("compact at {rev}"));
    }
    let (s, v) = compact(&c.client, &bases[follower], fin + 100)
        .await
        .unwrap();
    assert_eq!((s, &v["code"]), (400, &json!("future_revision")), "{v}");
}

/// The history this test writes under `s/`: puts, deletes and
/// transactions, through node `node`.
async fn write_mixed(bases: &[String], node: usize, from: usize, n: usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in from..from + n {
        let k = |j: usize| format!("s/{:02}", j % 16);
        let (_, s, v) = send_retry(bases, node, FORM, &format!("write {i}"), |b| match i % 6 {
            0..=2 => http
                .put(format!("{b}/kv/{}", k(i * 5)))
                .json(&json!({"value": format!("v{i}")})),
            3 => http.delete(format!("{b}/kv/{}", k(i * 3))),
            4 => http.post(format!("{b}/txn")).json(&json!({
                "compare": [{"key": k(i), "target": "version", "result": ">", "version": 1}],
                "success": [{"put": {"key": k(i), "value": format!("t{i}")}},
                            {"delete": {"key": k(i + 1)}}],
                "failure": [{"put": {"key": k(i + 2), "value": format!("f{i}")}}]
            })),
            _ => http.delete(format!("{b}/kv?start={}&end={}", k(i), k(i + 3))),
        })
        .await;
        assert!(s == 200 || (s == 404 && i % 6 == 3), "write {i}: {s} {v}");
    }
}

async fn watch_all(sc: &reqwest::Client, base: &str, query: &str, until: i64) -> Vec<WatchMsg> {
    let mut sse = Sse::open(sc, base, query)
        .await
        .unwrap_or_else(|e| panic!("watch {query} on {base}: {e}"))
        .unwrap_or_else(|r| panic!("watch {query} on {base}: {r}"));
    read_until(&mut sse, until, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_restored_from_a_snapshot_serves_history_like_the_leader() {
    const SEL: &str = "prefix=s/";
    const THRESHOLD: u64 = 50;
    let mut c = Cluster::start(
        3,
        &Opts {
            extra: vec!["--snapshot-threshold".into(), THRESHOLD.to_string()],
            ..Opts::default()
        },
    );
    let leader = c.wait_for_leader(FORM).await;
    let bases: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    let (r0, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .unwrap();
    write_mixed(&bases, leader, 0, 30).await;
    let f = (leader + 1) % 3;
    let target = field(&status(&c, leader).await.unwrap(), "commit_index");
    {
        let c = &c;
        eventually(
            FORM,
            "the follower applying the first writes",
            || async move {
                let st = status(c, f).await?;
                (field(&st, "applied_index") >= target).then_some(())
            },
        )
        .await;
    }
    let f_last = field(&status(&c, f).await.unwrap(), "last_log_index");
    assert!(c.nodes[f].terminate(Duration::from_secs(10)).success());

    // While it is down: more history, a compaction in the middle of it,
    // and enough entries after that for the log to be compacted past it.
    write_mixed(&bases, leader, 30, 120).await;
    let (mid, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .unwrap();
    let at = r0 + (mid - r0) / 2;
    let (s, v) = compact(&c.client, &bases[leader], at).await.unwrap();
    assert_eq!(s, 200, "compact: {v}");
    // Some bulk outside the watched prefix, so that the snapshot takes a
    // moment to send (the watches opened below race with its install).
    put_many(&bases, leader, "big/", 150, 150, 16 * 1024, 8).await;
    write_mixed(&bases, leader, 150, 3 * THRESHOLD as usize).await;
    let (fin, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .unwrap();
    let st = status(&c, leader).await.unwrap();
    assert!(
        field(&st, "snapshot_index") > f_last + THRESHOLD,
        "the leader compacted its log past the follower ({f_last}): {st}"
    );

    c.nodes[f].start();
    // As soon as it answers, before it has caught up: one watch from just
    // above the compact revision (above its own revision too, which only
    // the snapshot will bring), one from the start of the history (compacted away by
    // the snapshot it is about to install).
    {
        let (client, url) = (c.client.clone(), bases[f].clone());
        eventually(FORM, "the follower answering", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(format!("{url}/health")).send().await.ok()?;
                (r.status().as_u16() == 200).then_some(())
            }
        })
        .await;
    }
    let sc = stream_client();
    let mut early_new = Sse::open(
        &sc,
        &bases[f],
        &format!("{SEL}&start_revision={}&prev_kv=true", at + 1),
    )
    .await
    .expect("early watch")
    .expect("early watch accepted");
    let mut early_old = Sse::open(&sc, &bases[f], &format!("{SEL}&start_revision={}", r0 + 1))
        .await
        .expect("early watch")
        .expect("early watch accepted");
    let f_rev = range_all(&c.client, &bases[f], SEL, 0, true)
        .await
        .map(|x| x.0);
    eprintln!("the early watches were opened when the follower was at revision {f_rev:?} (the leader at {fin})");
    {
        let node = &c.nodes[f];
        eventually(FORM, "the follower installing a snapshot", || {
            let found = node.log().contains("installed snapshot from the leader");
            async move { found.then_some(()) }
        })
        .await;
    }
    {
        let (client, url) = (c.client.clone(), bases[f].clone());
        eventually(FORM, "the follower catching up", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (rev, _) = range_all(&client, &url, SEL, 0, true).await.ok()?;
                (rev >= fin).then_some(())
            }
        })
        .await;
    }

    // Past-revision reads, served by each node itself.
    let mut compared = 0;
    for rev in r0 + 1..=fin {
        let here = range_all(&c.client, &bases[f], SEL, rev, true).await;
        let there = range_all(&c.client, &bases[leader], SEL, rev, true).await;
        if rev < at {
            for (who, r) in [("follower", &here), ("leader", &there)] {
                match r {
                    Err(e) => assert_compacted(e.status, &e.body, at, &format!("{who} at {rev}")),
                    Ok(x) => panic!("the {who} read revision {rev} below {at}: {x:?}"),
                }
            }
        } else {
            let (here, there) = (here.unwrap().1, there.unwrap().1);
            assert_eq!(here, there, "revision {rev}");
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared}");

    // Watches from an old revision, with and without previous records.
    for extra in ["", "&prev_kv=true"] {
        let q = format!("{SEL}&start_revision={at}{extra}");
        let here = watch_all(&sc, &bases[f], &q, fin).await;
        let there = watch_all(&sc, &bases[leader], &q, fin).await;
        assert!(
            matches!(here.last(), Some(WatchMsg::Events { revision, .. }) if *revision == fin),
            "follower watch {q}: {:?}",
            here.last()
        );
        assert_eq!(here, there, "watch {q}");
        let q = format!("{SEL}&start_revision={}{extra}", at - 1);
        assert_watch_compacted(&sc, &bases[f], &q, at).await;
        assert_watch_compacted(&sc, &bases[leader], &q, at).await;
    }

    // The early watches: the one from the compact revision gives exactly
    // what the leader gives; the one from before it reports only history
    // the follower had, then is canceled with the compact revision.
    let old = read_until(&mut early_old, fin, Duration::from_secs(20)).await;
    let mut last = r0;
    for (k, m) in old.iter().enumerate() {
        match m {
            WatchMsg::Events { revision, .. } => {
                assert!(
                    *revision > last && *revision < at,
                    "early watch from {}: {m:?} after {last}",
                    r0 + 1
                );
                last = *revision;
            }
            WatchMsg::Canceled(d) => {
                assert_eq!(k, old.len() - 1);
                assert_eq!(d["compact_revision"], at, "{d}");
            }
            WatchMsg::Progress { .. } => {}
        }
    }
    assert!(
        matches!(old.last(), Some(WatchMsg::Canceled(_))),
        "the early watch from {} was not canceled: {:?}",
        r0 + 1,
        old.last()
    );
    let here = read_until(&mut early_new, fin, Duration::from_secs(20)).await;
    let there = watch_all(
        &sc,
        &bases[leader],
        &format!("{SEL}&start_revision={}&prev_kv=true", at + 1),
        fin,
    )
    .await;
    // Its start is above the compact revision, and was in the follower's
    // future when the watch was registered: nothing it needs is compacted.
    assert_eq!(
        here, there,
        "a watch from {}, above the compact revision {at}, opened on the follower at revision {f_rev:?} \
         before its snapshot install, differs from the leader's",
        at + 1
    );
}

/// Disk space taken by the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                // Allocated blocks, not the length: sled's files are sparse.
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Waits (bounded) until the node's compact revision is above `behind`,
/// and returns it (a read at revision 2 answers 410 with it).
async fn compacted_beyond(client: &reqwest::Client, url: &str, behind: i64) -> i64 {
    let (client, url) = (client.clone(), url.to_string());
    eventually(FORM, "auto-compaction passing a revision", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            match range_all(&client, &url, "prefix=g/", 2, false).await {
                Err(r) if r.status == 410 => {
                    let at = r.body["compact_revision"].as_i64()?;
                    (at > behind).then_some(at)
                }
                _ => None,
            }
        }
    })
    .await
}

/// Under sustained overwrites of a few keys with auto-compaction on, the
/// history is compacted behind the writes and the data dir levels off
/// instead of growing with every byte written. (With
/// `RAFTKV_TEST_NO_AUTO=1` the nodes run without the flag, and the test
/// fails: the data dir grows by about what is written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_compaction_bounds_disk_growth_under_overwrites() {
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 300;
    const VALUE: usize = 16 * 1024;
    let auto = std::env::var("RAFTKV_TEST_NO_AUTO").is_err();
    let mut extra = vec!["--snapshot-threshold".to_string(), "200".to_string()];
    if auto {
        // Periodic mode (the default) keeping one second of history.
        extra.extend(["--auto-compaction-retention".to_string(), "1s".to_string()]);
    }
    let mut c = Cluster::new(
        1,
        &Opts {
            extra,
            ..Opts::default()
        },
    );
    // A one-node cluster: no --peers.
    let mut args = c.nodes[0].args().to_vec();
    let i = args.iter().position(|a| a == "--peers").unwrap();
    args.drain(i..i + 2);
    c.nodes[0].set_args(args);
    c.nodes[0].start();
    c.wait_for_leader(FORM).await;
    let bases = vec![c.url(0)];
    let mut sizes = Vec::new();
    let mut revs = Vec::new();
    for round in 0..ROUNDS {
        // Eight keys overwritten again and again.
        put_many(&bases, 0, "g/", PER_ROUND, 8, VALUE, 8).await;
        if auto && round > 0 {
            // Let the 1 s retention pass the previous round before
            // measuring, so the figure does not depend on how fast this
            // machine wrote the round (a fast run otherwise measures
            // history that is simply not a second old yet).
            let previous = revs[round - 1];
            compacted_beyond(&c.client, &bases[0], previous).await;
        }
        sizes.push(dir_size(&c.nodes[0].data_dir));
        revs.push(
            range_all(&c.client, &bases[0], "prefix=g/", 0, false)
                .await
                .unwrap()
                .0,
        );
    }
    eprintln!("revisions {revs:?}, data dir sizes {sizes:?}");
    // After the first rounds the data dir stops growing with the writes:
    // over the second half of the run (the median, as sled grows and
    // shrinks its file in steps of 8 MiB) it has grown by less than half
    // of what was written after the second round. Without compaction it
    // grows by more than all of it (about 50 MB of 29.5 MB here).
    let mut later: Vec<u64> = sizes[ROUNDS / 2..].to_vec();
    later.sort_unstable();
    let median = later[later.len() / 2];
    let written_later = ((ROUNDS - 2) * PER_ROUND * VALUE) as u64;
    let growth = median.saturating_sub(sizes[1]);
    assert!(
        growth < written_later / 2,
        "the data dir grew by {growth} bytes while {written_later} were written over 8 keys: {sizes:?}"
    );
    // The history is compacted behind the writes.
    let fin = revs[ROUNDS - 1];
    let behind = revs[ROUNDS - 2];
    let compacted_to = compacted_beyond(&c.client, &bases[0], behind).await;
    assert!(
        compacted_to <= fin,
        "compacted to {compacted_to} beyond {fin}"
    );
    // What is left still reads: the last value of every key.
    let (_, live) = range_all(&c.client, &bases[0], "prefix=g/", 0, false)
        .await
        .unwrap();
    assert_eq!(live.len(), 8);
}
