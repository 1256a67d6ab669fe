//! A watch that survives node failures by resuming from a revision, on real
//! `raftkv start` processes through the JSON API only (see `common::v3`).
//!
//! A watcher follows a prefix over SSE on a follower while a writer puts,
//! deletes, range-deletes and runs transactions under it. The leader is
//! killed with SIGKILL mid-stream, later the watcher's own node; the
//! watcher reconnects to another node and, once its node is back, returns
//! to it, each time with `start_revision` = the last revision it saw + 1.
//! In the end it must have received exactly the committed history: every
//! revision from its start to the final one, once, in order, with the
//! change set that range reads at each revision imply, and the same
//! messages a fresh watch from the start gives. A watch that starts below
//! the compact revision is refused with that revision.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::v3::*;
use common::*;
use serde_json::{json, Value};

const FORM: Duration = Duration::from_secs(20);
const SEL: &str = "prefix=w/";
/// The watch: the prefix, with each event's previous record.
const WQ: &str = "prefix=w/&prev_kv=true";
/// How far (in revisions) the writer may run ahead of the watcher, so the
/// failures happen while the watcher is in the middle of the stream.
const AHEAD: i64 = 40;
/// A bound on the writer, whatever happens.
const MAX_OPS: usize = 3000;
const NONE: usize = usize::MAX;

/// State shared by the test, the watcher and the writer.
struct Shared {
    /// Highest events revision the watcher received.
    last_rev: AtomicI64,
    /// Node the watcher is connected to (`NONE` between connections).
    on_node: AtomicUsize,
    /// False while the watcher's own node is down (set by the test).
    home_up: AtomicBool,
    /// The writer stops when set.
    stop_writing: AtomicBool,
    /// The watcher stops once it has reached this revision (0 = not yet).
    target: AtomicI64,
    /// Highest revision the writer was acknowledged.
    written: AtomicI64,
}

/// What the watcher saw.
#[derive(Default)]
struct WatchLog {
    /// (node, revision, events) of every events message, as received.
    msgs: Vec<(usize, i64, Vec<Value>)>,
    /// (node, start_revision) of every connection.
    connects: Vec<(usize, i64)>,
    /// (node, data) of every cancel.
    cancels: Vec<(usize, Value)>,
    /// Ways a stream ended, for the failure message.
    ends: Vec<String>,
}

async fn watcher(
    bases: Vec<String>,
    home: usize,
    start: i64,
    sh: Arc<Shared>,
    log: Arc<Mutex<WatchLog>>,
) {
    let client = stream_client();
    let deadline = Instant::now() + Duration::from_secs(150);
    let done = |sh: &Shared| {
        let t = sh.target.load(Ordering::SeqCst);
        t != 0 && sh.last_rev.load(Ordering::SeqCst) >= t
    };
    while !done(&sh) && Instant::now() < deadline {
        let last = sh.last_rev.load(Ordering::SeqCst);
        let from = if last == 0 { start } else { last + 1 };
        let query = format!("{WQ}&start_revision={from}");
        // Home first, then the others.
        let mut conn = None;
        for k in 0..bases.len() {
            let n = (home + k) % bases.len();
            match Sse::open(&client, &bases[n], &query).await {
                Ok(Ok(sse)) => {
                    conn = Some((n, sse));
                    break;
                }
                Ok(Err(r)) => log
                    .lock()
                    .unwrap()
                    .ends
                    .push(format!("node {n} refused: {r}")),
                Err(_) => {}
            }
        }
        let Some((n, mut sse)) = conn else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        log.lock().unwrap().connects.push((n, from));
        sh.on_node.store(n, Ordering::SeqCst);
        loop {
            match sse.next(Duration::from_millis(300)).await {
                Next::Msg(WatchMsg::Events { revision, events }) => {
                    log.lock().unwrap().msgs.push((n, revision, events));
                    sh.last_rev.fetch_max(revision, Ordering::SeqCst);
                }
                Next::Msg(WatchMsg::Progress { .. }) | Next::Idle => {}
                Next::Msg(WatchMsg::Canceled(d)) => {
                    let compacted = !d["compact_revision"].is_null();
                    log.lock().unwrap().cancels.push((n, d));
                    if compacted {
                        // Nothing compacts in this phase: a failure the
                        // test reports; resuming would hide a gap.
                        sh.on_node.store(NONE, Ordering::SeqCst);
                        return;
                    }
                    break;
                }
                Next::Ended => {
                    log.lock().unwrap().ends.push(format!("node {n}: ended"));
                    break;
                }
                Next::Failed(e) => {
                    log.lock().unwrap().ends.push(format!("node {n}: {e}"));
                    break;
                }
            }
            if done(&sh) || Instant::now() > deadline {
                break;
            }
            // Back to the home node as soon as it is up again.
            if n != home && sh.home_up.load(Ordering::SeqCst) {
                break;
            }
        }
        sh.on_node.store(NONE, Ordering::SeqCst);
    }
}

/// The writer's request number `i`: puts, deletes, range deletes and
/// transactions (with a nested one), all under `w/`.
fn op(client: &reqwest::Client, base: &str, i: usize) -> reqwest::RequestBuilder {
    let k = |j: usize| format!("w/k{}", j % 12);
    match i % 10 {
        0..=3 => client
            .put(format!("{base}/kv/{}", k(i * 7)))
            .json(&json!({ "value": format!("v{i}") })),
        4 => client.delete(format!("{base}/kv/{}", k(i * 5))),
        5 => client.post(format!("{base}/txn")).json(&json!({
            "compare": [{"key": k(i), "target": "version", "result": ">", "version": 0}],
            "success": [
                {"put": {"key": k(i), "value": format!("t{i}")}},
                {"put": {"key": format!("w/t/{}", i % 5), "value": format!("t{i}")}},
                {"delete": {"key": k(i + 3)}}],
            "failure": [
                {"put": {"key": format!("w/f/{}", i % 3), "value": format!("f{i}")}},
                {"range": {"prefix": "w/"}}]
        })),
        6 => client.delete(format!("{base}/kv?prefix=w/t/")),
        7 => client.post(format!("{base}/txn")).json(&json!({
            "compare": [],
            "success": [
                {"txn": {"compare": [{"key": k(i), "target": "mod", "result": ">", "mod_revision": 0}],
                         "success": [{"put": {"key": format!("w/n/{}", i % 4), "value": format!("n{i}")}}],
                         "failure": [{"delete": {"key": "w/n/", "prefix": true}}]}},
                {"put": {"key": k(i + 6), "value": format!("o{i}")}}],
            "failure": []
        })),
        8 => client
            .put(format!("{base}/kv/{}", k(i * 7)))
            .json(&json!({ "value": "same" })),
        _ => client.delete(format!("{base}/kv?start=w/k0&end=w/k2")),
    }
}

async fn writer(bases: Vec<String>, sh: Arc<Shared>) -> usize {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut i = 0;
    while !sh.stop_writing.load(Ordering::SeqCst) && i < MAX_OPS {
        // Stay within AHEAD revisions of the watcher (bounded: the test's
        // own deadlines fail first if the watcher stops progressing).
        while sh.written.load(Ordering::SeqCst) - sh.last_rev.load(Ordering::SeqCst) > AHEAD
            && !sh.stop_writing.load(Ordering::SeqCst)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (n, status, body) = send_retry(&bases, i, FORM, &format!("write #{i}"), |b| {
            op(&client, b, i)
        })
        .await;
        match status {
            200 => {
                let rev = header_revision(&body)
                    .unwrap_or_else(|e| panic!("write #{i} via node {n}: {e}"));
                sh.written.fetch_max(rev, Ordering::SeqCst);
            }
            // Deleting an absent key.
            404 if matches!(i % 10, 4) => {}
            _ => panic!("write #{i} via node {n}: {status} {body}"),
        }
        i += 1;
    }
    i
}

/// Waits until `cond` holds, or panics with `what` and the watcher's state.
async fn wait_for(sh: &Shared, within: Duration, what: &str, cond: impl Fn(&Shared) -> bool) {
    let deadline = Instant::now() + within;
    while !cond(sh) {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what} (watcher at revision {}, on node {}, writer at {})",
            sh.last_rev.load(Ordering::SeqCst),
            sh.on_node.load(Ordering::SeqCst) as isize,
            sh.written.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the watcher has gone `more` revisions beyond where it is now.
async fn advance(sh: &Shared, more: i64, what: &str) {
    let from = sh.last_rev.load(Ordering::SeqCst);
    wait_for(sh, Duration::from_secs(30), what, |s| {
        s.last_rev.load(Ordering::SeqCst) >= from + more
    })
    .await;
}

async fn wait_healthy(c: &Cluster, i: usize) {
    let (client, url) = (c.client.clone(), c.url(i));
    eventually(FORM, "the restarted node answering", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.get(format!("{url}/health")).send().await.ok()?;
            (r.status().as_u16() == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_on_a_follower_resumes_across_kill9_and_sees_exactly_the_committed_history() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let home = (leader + 1) % 3;
    let bases: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    let (r0, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .expect("initial range");
    let start = r0 + 1;

    let sh = Arc::new(Shared {
        last_rev: AtomicI64::new(0),
        on_node: AtomicUsize::new(NONE),
        home_up: AtomicBool::new(true),
        stop_writing: AtomicBool::new(false),
        target: AtomicI64::new(0),
        written: AtomicI64::new(r0),
    });
    let log = Arc::new(Mutex::new(WatchLog::default()));
    let watch_task = tokio::spawn(watcher(bases.clone(), home, start, sh.clone(), log.clone()));
    wait_for(&sh, FORM, "the watcher connecting to its node", |s| {
        s.on_node.load(Ordering::SeqCst) == home
    })
    .await;
    // The watcher tracks `last_rev` from its first event on; until then the
    // writer's throttle uses the start.
    sh.last_rev.store(r0, Ordering::SeqCst);
    let write_task = tokio::spawn(writer(bases.clone(), sh.clone()));

    advance(&sh, 60, "the first events").await;
    c.nodes[leader].kill9();
    advance(&sh, 60, "events after the leader's kill -9").await;
    c.nodes[leader].start();
    advance(&sh, 30, "events after the old leader's restart").await;

    sh.home_up.store(false, Ordering::SeqCst);
    c.nodes[home].kill9();
    let at_kill = sh.last_rev.load(Ordering::SeqCst);
    wait_for(
        &sh,
        Duration::from_secs(30),
        "the watcher resuming on another node",
        |s| {
            let n = s.on_node.load(Ordering::SeqCst);
            n != home && n != NONE && s.last_rev.load(Ordering::SeqCst) >= at_kill + 30
        },
    )
    .await;
    c.nodes[home].start();
    wait_healthy(&c, home).await;
    sh.home_up.store(true, Ordering::SeqCst);
    let at_back = sh.last_rev.load(Ordering::SeqCst);
    wait_for(
        &sh,
        Duration::from_secs(30),
        "the watcher back on its node",
        |s| {
            s.on_node.load(Ordering::SeqCst) == home
                && s.last_rev.load(Ordering::SeqCst) >= at_back + 40
        },
    )
    .await;

    sh.stop_writing.store(true, Ordering::SeqCst);
    let ops = write_task.await.expect("writer");
    let leader = c.wait_for_leader(FORM).await;
    let (fin, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .expect("final range");
    sh.target.store(fin, Ordering::SeqCst);
    let reached = Instant::now() + Duration::from_secs(20);
    while !watch_task.is_finished() && Instant::now() < reached {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        watch_task.is_finished(),
        "the watcher did not reach the final revision {fin} (at {}); connects {:?}, ends {:?}",
        sh.last_rev.load(Ordering::SeqCst),
        log.connects,
        log.ends
    );
    watch_task.await.expect("watcher");
    assert!(
        log.cancels
            .iter()
            .all(|(_, d)| d["compact_revision"].is_null()),
        "a watch was canceled as compacted although nothing was compacted: {:?}",
        log.cancels
    );
    eprintln!(
        "{ops} writes, revisions {start}..={fin}, {} messages, connects {:?}, cancels {:?}, ends {:?}",
        log.msgs.len(),
        log.connects,
        log.cancels,
        log.ends
    );

    // Exactly once, in order.
    let revs: Vec<i64> = log.msgs.iter().map(|m| m.1).collect();
    for w in revs.windows(2) {
        assert!(
            w[0] < w[1],
            "revision {} received after {}: {revs:?}",
            w[1],
            w[0]
        );
    }
    // Every revision from the start to the end: all writes are under the
    // prefix, and each one that changed something made one revision.
    let expected: Vec<i64> = (start..=fin).collect();
    assert_eq!(revs, expected, "the watcher's revisions");

    // The oracle: each revision's change set from range reads.
    let states = states_by_ranges(&c.client, &bases[leader], SEL, start, fin, false)
        .await
        .expect("range reads of the history");
    let oracle = history_from_states(&states);
    for (n, r, evs) in &log.msgs {
        check_prev_kv(*r, evs, &states[&(r - 1)]).unwrap_or_else(|e| panic!("from node {n}: {e}"));
    }
    let got: BTreeMap<i64, Vec<Ev>> = log
        .msgs
        .iter()
        .map(|(n, r, evs)| {
            let evs = sorted_events(*r, evs).unwrap_or_else(|e| panic!("from node {n}: {e}"));
            (*r, evs)
        })
        .collect();
    for (rev, want) in &oracle {
        assert_eq!(got.get(rev), Some(want), "events of revision {rev}");
    }
    assert_eq!(got.len(), oracle.len());

    // A fresh watch from the start on the leader gives the same messages,
    // in the same order within each revision.
    let sc = stream_client();
    let mut sse = Sse::open(&sc, &bases[leader], &format!("{WQ}&start_revision={start}"))
        .await
        .expect("fresh watch")
        .expect("fresh watch accepted");
    let fresh: Vec<(i64, Vec<Value>)> = read_until(&mut sse, fin, Duration::from_secs(20))
        .await
        .into_iter()
        .filter_map(|m| match m {
            WatchMsg::Events { revision, events } => Some((revision, events)),
            _ => None,
        })
        .collect();
    drop(sse);
    let mine: Vec<(i64, Vec<Value>)> = log.msgs.iter().map(|m| (m.1, m.2.clone())).collect();
    assert_eq!(mine, fresh, "the resumed watch and a fresh watch differ");

    // It really moved: away from its node while that was down, then back.
    let kill_conn = log
        .connects
        .iter()
        .position(|(n, _)| *n != home)
        .expect("the watcher never connected to another node");
    assert!(
        log.connects[kill_conn..].iter().any(|(n, _)| *n == home),
        "the watcher never went back to its node: {:?}",
        log.connects
    );
    assert!(
        log.msgs.iter().any(|(n, _, _)| *n != home),
        "no events came from another node"
    );
    // A watch from below the compact revision is refused with it, on the
    // leader and on a follower once it has applied the compaction.
    let at = start + (fin - start) / 2;
    let (s, v) = compact(&c.client, &bases[leader], at)
        .await
        .expect("compact");
    assert_eq!(s, 200, "compact: {v}");
    assert_eq!(v["compact_revision"], at, "{v}");
    let follower = (leader + 1) % 3;
    for i in [leader, follower] {
        let (client, url) = (c.client.clone(), bases[i].clone());
        eventually(FORM, "the node applying the compaction", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                match range_all(&client, &url, SEL, at - 1, true).await {
                    Err(r) if r.status == 410 => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        assert_watch_compacted(
            &sc,
            &bases[i],
            &format!("{WQ}&start_revision={}", at - 1),
            at,
        )
        .await;
        // From the compact revision itself the history is still there.
        let mut sse = Sse::open(&sc, &bases[i], &format!("{WQ}&start_revision={at}"))
            .await
            .expect("watch at the compact revision")
            .expect("watch at the compact revision accepted");
        let msgs: Vec<(i64, Vec<Value>)> = read_until(&mut sse, fin, Duration::from_secs(20))
            .await
            .into_iter()
            .filter_map(|m| match m {
                WatchMsg::Events { revision, events } => Some((revision, events)),
                _ => None,
            })
            .collect();
        let want: Vec<(i64, Vec<Value>)> = mine.iter().filter(|m| m.0 >= at).cloned().collect();
        assert_eq!(msgs, want, "watch from the compact revision on node {i}");
    }
}

/// What the long-poll watcher saw.
#[derive(Default)]
struct PollLog {
    /// (revision, events) of every non-empty answer.
    batches: Vec<(i64, Vec<Value>)>,
    /// Empty answers (the wait ran out).
    empties: usize,
    /// The next start revision.
    next: i64,
    /// Refusals and transport errors, for the failure message.
    errors: Vec<String>,
}

/// Long polls `GET /watch` (no SSE) on `home`, or another node while it
/// does not answer, continuing each time from the answer's revision + 1,
/// until `stop` is set and it has passed `target`.
async fn long_poller(
    bases: Vec<String>,
    home: usize,
    log: Arc<Mutex<PollLog>>,
    stop: Arc<AtomicI64>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut node = home;
    while Instant::now() < deadline {
        let next = log.lock().unwrap().next;
        let target = stop.load(Ordering::SeqCst);
        if target != 0 && next > target {
            return;
        }
        let url = format!(
            "{}/watch?{WQ}&start_revision={next}&wait=300ms",
            bases[node]
        );
        match send(http.get(url)).await {
            Ok((200, v)) => {
                let rev = v["revision"].as_i64().expect("revision");
                let events = v["events"].as_array().cloned().expect("events");
                let mut l = log.lock().unwrap();
                if events.is_empty() {
                    l.empties += 1;
                    assert!(
                        rev + 1 >= next,
                        "an empty answer at {rev} for a poll from {next}"
                    );
                } else {
                    l.batches.push((rev, events));
                }
                l.next = rev + 1;
                node = home;
            }
            other => {
                log.lock()
                    .unwrap()
                    .errors
                    .push(format!("node {node}: {other:?}"));
                node = (node + 1) % bases.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The long-poll form of the watch: each answer is one revision's events
/// or, when the wait runs out, an empty batch whose revision says where to
/// continue. A poller following a follower across bursts of writes (each
/// burst ends with the poller timing out at least once) and a kill -9 of
/// the leader gets every revision exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_watcher_continues_by_revision_and_sees_exactly_the_history() {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let home = (leader + 1) % 3;
    let bases: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    let (r0, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .expect("initial range");
    let start = r0 + 1;
    let log = Arc::new(Mutex::new(PollLog {
        next: start,
        ..PollLog::default()
    }));
    let stop = Arc::new(AtomicI64::new(0));
    let poller = tokio::spawn(long_poller(bases.clone(), home, log.clone(), stop.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut i = 0;
    for burst in 0..8 {
        if burst == 3 {
            c.nodes[leader].kill9();
        }
        if burst == 6 {
            c.nodes[leader].start();
        }
        for _ in 0..15 {
            let (n, s, v) =
                send_retry(&bases, i, FORM, &format!("write #{i}"), |b| op(&http, b, i)).await;
            assert!(
                s == 200 || (s == 404 && i % 10 == 4),
                "write #{i} via node {n}: {s} {v}"
            );
            i += 1;
        }
        // Let the poller run dry: at least one empty answer after the burst.
        let empties = log.lock().unwrap().empties;
        let deadline = Instant::now() + FORM;
        while log.lock().unwrap().empties < empties + 2 {
            assert!(
                Instant::now() < deadline,
                "the long poller stopped answering"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let leader = c.wait_for_leader(FORM).await;
    let (fin, _) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .expect("final range");
    stop.store(fin, Ordering::SeqCst);
    let deadline = Instant::now() + FORM;
    while !poller.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        poller.is_finished(),
        "the long poller did not pass the final revision {fin} (next {}); errors {:?}",
        log.next,
        log.errors
    );
    poller.await.expect("poller");
    eprintln!(
        "{i} writes, revisions {start}..={fin}, {} batches, {} empty answers, errors {:?}",
        log.batches.len(),
        log.empties,
        log.errors
    );
    let revs: Vec<i64> = log.batches.iter().map(|b| b.0).collect();
    assert_eq!(
        revs,
        (start..=fin).collect::<Vec<_>>(),
        "the long poller's revisions"
    );
    let states = states_by_ranges(&c.client, &bases[leader], SEL, start, fin, false)
        .await
        .expect("range reads of the history");
    let oracle = history_from_states(&states);
    for (r, evs) in &log.batches {
        assert_eq!(
            Some(&sorted_events(*r, evs).unwrap()),
            oracle.get(r),
            "events of revision {r}"
        );
        check_prev_kv(*r, evs, &states[&(r - 1)]).unwrap();
    }
}
